/*
 * health/dns — see dns.h.
 *
 * One c-ares channel per watch, driven by the loop: c-ares reports each socket it wants watched through
 * sock_state_cb and we keep one uv_poll_t per socket; ares_timer fires at ares_timeout() so c-ares can run
 * its retries and timeouts. A round is two ares_search() queries (A, then AAAA) rather than one
 * ares_getaddrinfo(): each query's status is seen on its own, so a timeout on one family is a FAILED round
 * instead of a silently partial answer, and /etc/hosts is never consulted.
 *
 * The user's callback only ever runs from round_timer (a zero-delay start when the round is complete), never
 * from inside c-ares: c-ares may complete a query synchronously inside ares_search() (so inside
 * dns_watch_start), and a callback that stops the watch must not ares_destroy() the channel while
 * ares_process_fd() is still walking it. The same timer then waits interval_ms for the next round.
 *
 * Lifetime: handles counts the two timers and every poll handle; dns_watch_stop destroys the channel
 * (c-ares answers pending queries with ARES_EDESTRUCTION, ignored once stopped, and reports every socket
 * closed, which closes its poll) and closes the timers; the watch is freed by the last close callback.
 */
#include "health/dns.h"

#include <arpa/inet.h>
#include <ares.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct dns_sock {
  uv_poll_t poll;
  dns_watch_t *w;
  ares_socket_t fd;
  struct dns_sock *next;
} dns_sock_t;

typedef struct dns_addr {
  char s[INET6_ADDRSTRLEN];
} dns_addr_t;

typedef struct dns_query {
  dns_watch_t *w;
  int type; /* 1 = A, 28 = AAAA (ns_t_a / ns_t_aaaa) */
} dns_query_t;

struct dns_watch {
  uv_loop_t *loop;
  ares_channel channel;
  char *hostname;
  uint64_t interval_ms;
  dns_result_cb cb;
  void *ud;
  uv_timer_t ares_timer;  /* c-ares' next timeout, armed only while queries are in flight */
  uv_timer_t round_timer; /* delivers a finished round, then waits for the next one */
  dns_sock_t *socks;
  dns_query_t queries[2];
  int handles;
  int stopped;
  /* the current round */
  int pending;            /* queries not answered yet */
  int fail_status;        /* first hard failure (timeout, SERVFAIL...), ARES_SUCCESS if none */
  int empty_status;       /* ARES_ENOTFOUND / ARES_ENODATA seen for a query, ARES_SUCCESS if none */
  dns_addr_t *addrs;      /* bounded by what one DNS message can carry (64 KiB over TCP) */
  const char **view;      /* addrs as the pointer array handed to cb */
  size_t n, cap;
};

enum { DNS_T_A = 1, DNS_T_AAAA = 28, DNS_C_IN = 1 };

static uv_once_t lib_once = UV_ONCE_INIT;
static int lib_status;

/* ares_library_init is process-wide and never undone: on Unix it allocates nothing. */
static void lib_init(void) { lib_status = ares_library_init(ARES_LIB_INIT_ALL); }

static void start_round(dns_watch_t *w);
static void on_ares_timer(uv_timer_t *t);
static void on_round_done(uv_timer_t *t);

static void free_watch(dns_watch_t *w) {
  free(w->addrs);
  free(w->view);
  free(w->hostname);
  free(w);
}

/* Close callbacks of every handle: the watch goes with the last one once it is stopped. */
static void release_handle(dns_watch_t *w) {
  if (--w->handles == 0 && w->stopped) free_watch(w);
}
static void on_timer_closed(uv_handle_t *h) { release_handle(h->data); }
static void on_sock_closed(uv_handle_t *h) {
  dns_sock_t *s = h->data;
  dns_watch_t *w = s->w;
  free(s);
  release_handle(w);
}

/* Re-arms ares_timer at c-ares' next deadline; called after anything that may have changed it. */
static void update_timer(dns_watch_t *w) {
  struct timeval tv;
  if (ares_timeout(w->channel, NULL, &tv) == NULL) {
    uv_timer_stop(&w->ares_timer);
    return;
  }
  uint64_t ms = (uint64_t)tv.tv_sec * 1000 + ((uint64_t)tv.tv_usec + 999) / 1000;
  uv_timer_start(&w->ares_timer, on_ares_timer, ms, 0);
}

static void on_ares_timer(uv_timer_t *t) {
  dns_watch_t *w = t->data;
  ares_process_fd(w->channel, ARES_SOCKET_BAD, ARES_SOCKET_BAD);
  update_timer(w);
}

static void on_poll(uv_poll_t *p, int status, int events) {
  dns_sock_t *s = p->data;
  dns_watch_t *w = s->w;
  /* On a poll error let c-ares try both directions: its read/write fails and it handles the socket. */
  ares_socket_t rfd = (status < 0 || (events & UV_READABLE)) ? s->fd : ARES_SOCKET_BAD;
  ares_socket_t wfd = (status < 0 || (events & UV_WRITABLE)) ? s->fd : ARES_SOCKET_BAD;
  ares_process_fd(w->channel, rfd, wfd); /* may close s (through on_sock_state): not touched after */
  update_timer(w);
}

/* c-ares' ARES_OPT_SOCK_STATE_CB: start, change or stop watching one of its sockets. If a poll cannot be
 * set up the socket is simply not watched and its query ends by timeout. */
static void on_sock_state(void *data, ares_socket_t fd, int readable, int writable) {
  dns_watch_t *w = data;
  dns_sock_t **link = &w->socks;
  while (*link && (*link)->fd != fd) link = &(*link)->next;
  dns_sock_t *s = *link;
  if (!readable && !writable) {
    if (!s) return;
    *link = s->next;
    uv_close((uv_handle_t *)&s->poll, on_sock_closed);
    return;
  }
  if (!s) {
    s = calloc(1, sizeof *s);
    if (!s) return;
    if (uv_poll_init_socket(w->loop, &s->poll, fd) != 0) {
      free(s);
      return;
    }
    s->poll.data = s;
    s->w = w;
    s->fd = fd;
    s->next = w->socks;
    w->socks = s;
    w->handles++;
  }
  uv_poll_start(&s->poll, (readable ? UV_READABLE : 0) | (writable ? UV_WRITABLE : 0), on_poll);
}

/* Appends the addresses of one answer. Returns an ARES_* status: ARES_ENODATA when it holds none. */
static int collect(dns_watch_t *w, int type, const unsigned char *abuf, int alen) {
  struct hostent *h = NULL;
  int rc = type == DNS_T_A ? ares_parse_a_reply(abuf, alen, &h, NULL, NULL)
                           : ares_parse_aaaa_reply(abuf, alen, &h, NULL, NULL);
  if (rc != ARES_SUCCESS) return rc;
  for (char **a = h->h_addr_list; *a && rc == ARES_SUCCESS; a++) {
    if (w->n == w->cap) {
      size_t cap = w->cap ? 2 * w->cap : 8;
      dns_addr_t *addrs = realloc(w->addrs, cap * sizeof *addrs);
      if (addrs) w->addrs = addrs;
      const char **view = addrs ? realloc(w->view, cap * sizeof *view) : NULL;
      if (view) w->view = view;
      if (!addrs || !view) {
        rc = ARES_ENOMEM;
        break;
      }
      w->cap = cap;
    }
    if (inet_ntop(h->h_addrtype, *a, w->addrs[w->n].s, sizeof w->addrs[w->n].s)) w->n++;
  }
  ares_free_hostent(h);
  return rc;
}

static void on_answer(void *arg, int status, int timeouts, unsigned char *abuf, int alen) {
  dns_query_t *q = arg;
  dns_watch_t *w = q->w;
  w->pending--;
  if (w->stopped) return; /* ARES_EDESTRUCTION from dns_watch_stop */
  if (status == ARES_SUCCESS) status = collect(w, q->type, abuf, alen);
  if (status == ARES_ENOTFOUND || status == ARES_ENODATA) {
    if (w->empty_status == ARES_SUCCESS) w->empty_status = status;
  } else if (status != ARES_SUCCESS && w->fail_status == ARES_SUCCESS) {
    w->fail_status = status;
  }
  if (w->pending == 0) uv_timer_start(&w->round_timer, on_round_done, 0, 0); /* cb from the loop only */
}

static int cmp_addr(const void *a, const void *b) {
  return strcmp(((const dns_addr_t *)a)->s, ((const dns_addr_t *)b)->s);
}

static void on_next_round(uv_timer_t *t) { start_round(t->data); }

/* round_timer at 0 ms after both answers: report the round, then wait interval_ms for the next one. */
static void on_round_done(uv_timer_t *t) {
  dns_watch_t *w = t->data;
  int status = DNS_OK;
  const char *err = "";
  size_t n = 0;
  if (w->fail_status != ARES_SUCCESS) {
    status = DNS_FAILED;
    err = ares_strerror(w->fail_status);
  } else if (w->n == 0) {
    status = DNS_NOTFOUND;
    err = ares_strerror(w->empty_status != ARES_SUCCESS ? w->empty_status : ARES_ENODATA);
  } else {
    qsort(w->addrs, w->n, sizeof *w->addrs, cmp_addr);
    for (size_t i = 0; i < w->n; i++)
      if (n == 0 || strcmp(w->view[n - 1], w->addrs[i].s) != 0) w->view[n++] = w->addrs[i].s;
  }
  w->cb(w->ud, status, n ? w->view : NULL, n, err);
  if (w->stopped) return; /* stopped from cb: the close callbacks free w */
  uv_timer_start(&w->round_timer, on_next_round, w->interval_ms, 0);
}

static void start_round(dns_watch_t *w) {
  w->n = 0;
  w->fail_status = ARES_SUCCESS;
  w->empty_status = ARES_SUCCESS;
  w->pending = 2;
  /* Either answer may arrive synchronously (e.g. ARES_EBADNAME): on_answer defers the report anyway. */
  ares_search(w->channel, w->hostname, DNS_C_IN, DNS_T_A, on_answer, &w->queries[0]);
  ares_search(w->channel, w->hostname, DNS_C_IN, DNS_T_AAAA, on_answer, &w->queries[1]);
  update_timer(w);
}

/* Parses "1.2.3.4[:port]" or "[v6][:port]" (port defaults to 53) into node. Returns 0 or -1. */
static int parse_server(const char *s, struct ares_addr_port_node *node) {
  char host[INET6_ADDRSTRLEN];
  const char *end, *port = NULL;
  int v6 = s[0] == '[';
  if (v6) {
    s++;
    end = strchr(s, ']');
    if (!end || (end[1] != '\0' && end[1] != ':')) return -1;
    if (end[1] == ':') port = end + 2;
  } else {
    end = strchr(s, ':');
    if (end) port = end + 1;
    else end = s + strlen(s);
  }
  size_t len = (size_t)(end - s);
  if (len == 0 || len >= sizeof host) return -1;
  memcpy(host, s, len);
  host[len] = '\0';

  long p = 53;
  if (port) {
    char *pend;
    if (*port < '0' || *port > '9') return -1;
    p = strtol(port, &pend, 10);
    if (*pend != '\0' || p < 1 || p > 65535) return -1;
  }
  memset(node, 0, sizeof *node);
  node->family = v6 ? AF_INET6 : AF_INET;
  if (inet_pton(node->family, host, v6 ? (void *)&node->addr.addr6 : (void *)&node->addr.addr4) != 1) return -1;
  node->udp_port = node->tcp_port = (int)p;
  return 0;
}

/* Points the channel at servers. Returns 0, or -1 with err. */
static int set_servers(ares_channel channel, const char *const *servers, size_t n, char *err, size_t errlen) {
  struct ares_addr_port_node *nodes = calloc(n, sizeof *nodes);
  if (!nodes) {
    snprintf(err, errlen, "out of memory");
    return -1;
  }
  int rc = 0;
  for (size_t i = 0; i < n && rc == 0; i++) {
    if (!servers[i] || parse_server(servers[i], &nodes[i]) != 0) {
      snprintf(err, errlen, "bad DNS server \"%s\": want a numeric IP, \"10.0.0.53:53\" or \"[fd00::53]:53\"",
               servers[i] ? servers[i] : "(null)");
      rc = -1;
    }
    nodes[i].next = i + 1 < n ? &nodes[i + 1] : NULL;
  }
  if (rc == 0 && (rc = ares_set_servers_ports(channel, nodes)) != ARES_SUCCESS) {
    snprintf(err, errlen, "c-ares set servers: %s", ares_strerror(rc));
    rc = -1;
  }
  free(nodes);
  return rc;
}

int dns_watch_start(uv_loop_t *loop, const char *hostname, const char *const *servers, size_t n_servers,
                    uint64_t interval_ms, dns_result_cb cb, void *ud, dns_watch_t **out, char *err, size_t errlen) {
  *out = NULL;
  if (!hostname || !hostname[0] || strlen(hostname) > 254) {
    snprintf(err, errlen, "bad DNS name \"%s\"", hostname ? hostname : "(null)");
    return -1;
  }
  uv_once(&lib_once, lib_init);
  if (lib_status != ARES_SUCCESS) {
    snprintf(err, errlen, "c-ares library init: %s", ares_strerror(lib_status));
    return -1;
  }
  dns_watch_t *w = calloc(1, sizeof *w);
  if (!w || !(w->hostname = strdup(hostname))) {
    free(w);
    snprintf(err, errlen, "out of memory");
    return -1;
  }
  w->loop = loop;
  w->interval_ms = interval_ms;
  w->cb = cb;
  w->ud = ud;
  w->queries[0] = (dns_query_t){w, DNS_T_A};
  w->queries[1] = (dns_query_t){w, DNS_T_AAAA};

  struct ares_options opts = {.sock_state_cb = on_sock_state, .sock_state_cb_data = w, .timeout = 1000,
                              .tries = 2};
  int mask = ARES_OPT_SOCK_STATE_CB | ARES_OPT_TIMEOUTMS | ARES_OPT_TRIES;
  if (n_servers) {
    /* Explicit servers: the name is asked as given; the system's search domains belong to its resolver. */
    opts.flags = ARES_FLAG_NOSEARCH | ARES_FLAG_NOALIASES;
    mask |= ARES_OPT_FLAGS;
  }
  int rc = ares_init_options(&w->channel, &opts, mask);
  if (rc != ARES_SUCCESS) {
    snprintf(err, errlen, "c-ares init: %s", ares_strerror(rc));
    free_watch(w);
    return -1;
  }
  if (n_servers && set_servers(w->channel, servers, n_servers, err, errlen) != 0) {
    ares_destroy(w->channel); /* no query yet, so no socket and no callback */
    free_watch(w);
    return -1;
  }

  uv_timer_init(loop, &w->ares_timer);
  uv_timer_init(loop, &w->round_timer);
  w->ares_timer.data = w->round_timer.data = w;
  w->handles = 2;
  start_round(w);
  *out = w;
  return 0;
}

void dns_watch_stop(dns_watch_t *w) {
  if (!w || w->stopped) return;
  w->stopped = 1;
  ares_destroy(w->channel); /* pending queries end with ARES_EDESTRUCTION; sockets close via on_sock_state */
  while (w->socks) {        /* belt and braces: c-ares reports every close, nothing should be left */
    dns_sock_t *s = w->socks;
    w->socks = s->next;
    uv_close((uv_handle_t *)&s->poll, on_sock_closed);
  }
  uv_close((uv_handle_t *)&w->ares_timer, on_timer_closed);
  uv_close((uv_handle_t *)&w->round_timer, on_timer_closed);
}
