/*
 * health/dns — see dns.h.
 *
 * The loop integration (dns_chan) is shared by watches and names: one c-ares channel per watch or name,
 * driven by the loop: c-ares reports each socket it wants watched through sock_state_cb and we keep one
 * uv_poll_t per socket; the channel's timer fires at ares_timeout() so c-ares can run its retries and
 * timeouts. The channel counts its handles in its owner's count and tells the owner when one closed.
 *
 * Watches: a round is two ares_search() queries (A, then AAAA) rather than one ares_getaddrinfo(): each
 * query's status is seen on its own, so a timeout on one family is a FAILED round instead of a silently
 * partial answer, and /etc/hosts is never consulted. The user's callback only ever runs from round_timer
 * (a zero-delay start when the round is complete), never from inside c-ares: c-ares may complete a query
 * synchronously inside ares_search() (so inside dns_watch_start), and a callback that stops the watch must
 * not ares_destroy() the channel while ares_process_fd() is still walking it. The same timer then waits
 * interval_ms for the next round.
 *
 * Names: a round is one ares_getaddrinfo() (hosts file, then DNS), whose answer updates the cached address
 * at once, inside c-ares (that touches nothing of the user's); the report and the waiters are served from
 * notify_timer (zero delay), never from inside c-ares or a dns_name_ call, for the same reasons as above.
 * round_timer waits for the next round. An IP literal has no channel and no handle at all.
 *
 * Lifetime: handles counts the timers and every poll handle; stop/destroy destroys the channel (c-ares
 * answers pending queries with ARES_EDESTRUCTION, ignored once stopped, and reports every socket closed,
 * which closes its poll) and closes the timers; the object is freed by the last close callback (a name
 * first tells its remaining waiters UV_ECANCELED).
 */
#include "health/dns.h"

#include <arpa/inet.h>
#include <ares.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- the c-ares channel on the loop ------------------------------------------------------------------ */

typedef struct dns_chan dns_chan_t;

typedef struct dns_sock {
  uv_poll_t poll;
  dns_chan_t *ch;
  ares_socket_t fd;
  struct dns_sock *next;
} dns_sock_t;

struct dns_chan {
  uv_loop_t *loop;
  ares_channel channel;
  uv_timer_t timer;             /* c-ares' next timeout, armed only while queries are in flight */
  dns_sock_t *socks;
  int *handles;                 /* the owner's count of open handles: the timer and every poll count in it */
  void (*release)(void *owner); /* one of them closed (the count is already down) */
  void *owner;
};

static uv_once_t lib_once = UV_ONCE_INIT;
static int lib_status;

/* ares_library_init is process-wide and never undone: on Unix it allocates nothing. */
static void lib_init(void) { lib_status = ares_library_init(ARES_LIB_INIT_ALL); }

static void chan_on_timer(uv_timer_t *t);

static void chan_timer_closed(uv_handle_t *h) {
  dns_chan_t *ch = h->data;
  --*ch->handles;
  ch->release(ch->owner);
}

static void chan_sock_closed(uv_handle_t *h) {
  dns_sock_t *s = h->data;
  dns_chan_t *ch = s->ch;
  free(s);
  --*ch->handles;
  ch->release(ch->owner);
}

/* Re-arms the timer at c-ares' next deadline; called after anything that may have changed it. */
static void chan_update_timer(dns_chan_t *ch) {
  struct timeval tv;
  if (ares_timeout(ch->channel, NULL, &tv) == NULL) {
    uv_timer_stop(&ch->timer);
    return;
  }
  uint64_t ms = (uint64_t)tv.tv_sec * 1000 + ((uint64_t)tv.tv_usec + 999) / 1000;
  uv_timer_start(&ch->timer, chan_on_timer, ms, 0);
}

static void chan_on_timer(uv_timer_t *t) {
  dns_chan_t *ch = t->data;
  ares_process_fd(ch->channel, ARES_SOCKET_BAD, ARES_SOCKET_BAD);
  chan_update_timer(ch);
}

static void chan_on_poll(uv_poll_t *p, int status, int events) {
  dns_sock_t *s = p->data;
  dns_chan_t *ch = s->ch;
  /* On a poll error let c-ares try both directions: its read/write fails and it handles the socket. */
  ares_socket_t rfd = (status < 0 || (events & UV_READABLE)) ? s->fd : ARES_SOCKET_BAD;
  ares_socket_t wfd = (status < 0 || (events & UV_WRITABLE)) ? s->fd : ARES_SOCKET_BAD;
  ares_process_fd(ch->channel, rfd, wfd); /* may close s (through chan_on_sock_state): not touched after */
  chan_update_timer(ch);
}

/* c-ares' ARES_OPT_SOCK_STATE_CB: start, change or stop watching one of its sockets. If a poll cannot be
 * set up the socket is simply not watched and its query ends by timeout. */
static void chan_on_sock_state(void *data, ares_socket_t fd, int readable, int writable) {
  dns_chan_t *ch = data;
  dns_sock_t **link = &ch->socks;
  while (*link && (*link)->fd != fd) link = &(*link)->next;
  dns_sock_t *s = *link;
  if (!readable && !writable) {
    if (!s) return;
    *link = s->next;
    uv_close((uv_handle_t *)&s->poll, chan_sock_closed);
    return;
  }
  if (!s) {
    s = calloc(1, sizeof *s);
    if (!s) return;
    if (uv_poll_init_socket(ch->loop, &s->poll, fd) != 0) {
      free(s);
      return;
    }
    s->poll.data = s;
    s->ch = ch;
    s->fd = fd;
    s->next = ch->socks;
    ch->socks = s;
    ++*ch->handles;
  }
  uv_poll_start(&s->poll, (readable ? UV_READABLE : 0) | (writable ? UV_WRITABLE : 0), chan_on_poll);
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

/* Opens the channel (1 s per try, 2 tries; lookups: c-ares' "fb" order for ares_getaddrinfo, or NULL) and
 * inits its timer, counted in *handles. Nothing is on the loop yet when this fails. Returns 0, or -1 with
 * err. */
static int chan_init(dns_chan_t *ch, uv_loop_t *loop, const char *const *servers, size_t n_servers,
                     const char *lookups, int *handles, void (*release)(void *), void *owner, char *err,
                     size_t errlen) {
  uv_once(&lib_once, lib_init);
  if (lib_status != ARES_SUCCESS) {
    snprintf(err, errlen, "c-ares library init: %s", ares_strerror(lib_status));
    return -1;
  }
  ch->loop = loop;
  ch->socks = NULL;
  ch->handles = handles;
  ch->release = release;
  ch->owner = owner;
  struct ares_options opts = {.sock_state_cb = chan_on_sock_state, .sock_state_cb_data = ch, .timeout = 1000,
                              .tries = 2, .lookups = (char *)lookups};
  int mask = ARES_OPT_SOCK_STATE_CB | ARES_OPT_TIMEOUTMS | ARES_OPT_TRIES | (lookups ? ARES_OPT_LOOKUPS : 0);
  if (n_servers) {
    /* Explicit servers: the name is asked as given; the system's search domains belong to its resolver. */
    opts.flags = ARES_FLAG_NOSEARCH | ARES_FLAG_NOALIASES;
    mask |= ARES_OPT_FLAGS;
  }
  int rc = ares_init_options(&ch->channel, &opts, mask);
  if (rc != ARES_SUCCESS) {
    snprintf(err, errlen, "c-ares init: %s", ares_strerror(rc));
    return -1;
  }
  if (n_servers && set_servers(ch->channel, servers, n_servers, err, errlen) != 0) {
    ares_destroy(ch->channel); /* no query yet, so no socket and no callback */
    return -1;
  }
  uv_timer_init(loop, &ch->timer);
  ch->timer.data = ch;
  ++*handles;
  return 0;
}

/* Destroys the channel (pending queries end with ARES_EDESTRUCTION, inside this call) and closes its
 * handles; release runs for each. */
static void chan_close(dns_chan_t *ch) {
  ares_destroy(ch->channel); /* sockets close via chan_on_sock_state */
  while (ch->socks) {        /* belt and braces: c-ares reports every close, nothing should be left */
    dns_sock_t *s = ch->socks;
    ch->socks = s->next;
    uv_close((uv_handle_t *)&s->poll, chan_sock_closed);
  }
  uv_close((uv_handle_t *)&ch->timer, chan_timer_closed);
}

/* ---- watches ------------------------------------------------------------------------------------------ */

typedef struct dns_addr {
  char s[INET6_ADDRSTRLEN];
} dns_addr_t;

typedef struct dns_query {
  dns_watch_t *w;
  int type; /* 1 = A, 28 = AAAA (ns_t_a / ns_t_aaaa) */
} dns_query_t;

struct dns_watch {
  uv_loop_t *loop;
  dns_chan_t chan;
  char *hostname;
  uint64_t interval_ms;
  dns_result_cb cb;
  void *ud;
  uv_timer_t round_timer; /* delivers a finished round, then waits for the next one */
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

static void start_round(dns_watch_t *w);
static void on_round_done(uv_timer_t *t);

static void free_watch(dns_watch_t *w) {
  free(w->addrs);
  free(w->view);
  free(w->hostname);
  free(w);
}

/* Close callbacks of every handle (the count is down already): the watch goes with the last one once it is
 * stopped. */
static void watch_release(void *owner) {
  dns_watch_t *w = owner;
  if (w->handles == 0 && w->stopped) free_watch(w);
}
static void on_watch_timer_closed(uv_handle_t *h) {
  dns_watch_t *w = h->data;
  w->handles--;
  watch_release(w);
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
  ares_search(w->chan.channel, w->hostname, DNS_C_IN, DNS_T_A, on_answer, &w->queries[0]);
  ares_search(w->chan.channel, w->hostname, DNS_C_IN, DNS_T_AAAA, on_answer, &w->queries[1]);
  chan_update_timer(&w->chan);
}

int dns_watch_start(uv_loop_t *loop, const char *hostname, const char *const *servers, size_t n_servers,
                    uint64_t interval_ms, dns_result_cb cb, void *ud, dns_watch_t **out, char *err, size_t errlen) {
  *out = NULL;
  if (!hostname || !hostname[0] || strlen(hostname) > 254) {
    snprintf(err, errlen, "bad DNS name \"%s\"", hostname ? hostname : "(null)");
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
  if (chan_init(&w->chan, loop, servers, n_servers, NULL, &w->handles, watch_release, w, err, errlen) != 0) {
    free_watch(w);
    return -1;
  }
  uv_timer_init(loop, &w->round_timer);
  w->round_timer.data = w;
  w->handles++;
  start_round(w);
  *out = w;
  return 0;
}

void dns_watch_stop(dns_watch_t *w) {
  if (!w || w->stopped) return;
  w->stopped = 1;
  chan_close(&w->chan);
  uv_close((uv_handle_t *)&w->round_timer, on_watch_timer_closed);
}

/* ---- names -------------------------------------------------------------------------------------------- */

#define NAME_RETRY_MS 1000 /* first retry of a name without an address; doubles up to the interval */

struct dns_name {
  uv_loop_t *loop;
  char *host;
  int literal;                   /* an IP literal: addr is set, no channel, no handles */
  dns_chan_t chan;
  uv_timer_t round_timer;        /* the next round */
  uv_timer_t notify_timer;       /* serves the report and the waiters from the loop */
  int handles;
  int stopped;
  int in_flight;                 /* an ares_getaddrinfo is pending */
  uint64_t interval_ms;
  uint64_t retry_ms;             /* the last retry delay while the name has no address; 0 after an answer */
  dns_name_cb cb;
  void *ud;
  int has_addr;
  struct sockaddr_storage addr;  /* port 0 */
  int err;                       /* while !has_addr: the last round's error; 0 = no round finished yet */
  char addr_str[INET6_ADDRSTRLEN];
  char prev_str[INET6_ADDRSTRLEN];
  int report_due;                /* a round finished: notify_timer reports it */
  dns_name_report_t report;
  dns_wait_t *waiters;           /* LIFO: they are interchangeable */
  dns_wait_t *delivering;        /* taken off waiters by the delivery under way */
};

static void name_start_round(dns_name_t *n);
static void on_notify(uv_timer_t *t);
static void on_next_name_round(uv_timer_t *t);

static void name_free(dns_name_t *n) {
  /* Waiters left at destroy hear of it now, from the last close callback. A callback may cancel others. */
  for (;;) {
    dns_wait_t *w = n->waiters ? n->waiters : n->delivering;
    if (!w) break;
    if (w == n->waiters) n->waiters = w->next;
    else n->delivering = w->next;
    w->name = NULL;
    w->next = NULL;
    w->cb(w, UV_ECANCELED);
  }
  free(n->host);
  free(n);
}

static void name_release(void *owner) {
  dns_name_t *n = owner;
  if (n->handles == 0 && n->stopped) name_free(n);
}
static void on_name_timer_closed(uv_handle_t *h) {
  dns_name_t *n = h->data;
  n->handles--;
  name_release(n);
}

static int same_ip(const struct sockaddr *a, const struct sockaddr_storage *b) {
  if (a->sa_family != b->ss_family) return 0;
  if (a->sa_family == AF_INET)
    return memcmp(&((const struct sockaddr_in *)a)->sin_addr, &((const struct sockaddr_in *)b)->sin_addr,
                  sizeof(struct in_addr)) == 0;
  return memcmp(&((const struct sockaddr_in6 *)a)->sin6_addr, &((const struct sockaddr_in6 *)b)->sin6_addr,
                sizeof(struct in6_addr)) == 0 &&
         ((const struct sockaddr_in6 *)a)->sin6_scope_id == ((const struct sockaddr_in6 *)b)->sin6_scope_id;
}

static void addr_to_str(const struct sockaddr_storage *ss, char *out, size_t len) {
  const void *a = ss->ss_family == AF_INET ? (const void *)&((const struct sockaddr_in *)ss)->sin_addr
                                           : (const void *)&((const struct sockaddr_in6 *)ss)->sin6_addr;
  if (!inet_ntop(ss->ss_family, a, out, (socklen_t)len)) snprintf(out, len, "?");
}

/* The address to use from an answer: the one in use if the answer still holds it, else the first IPv4,
 * else the first IPv6. NULL when it has neither. */
static const struct ares_addrinfo_node *pick(const dns_name_t *n, const struct ares_addrinfo *res) {
  const struct ares_addrinfo_node *v4 = NULL, *v6 = NULL;
  for (const struct ares_addrinfo_node *x = res ? res->nodes : NULL; x; x = x->ai_next) {
    if (x->ai_family == AF_INET && x->ai_addrlen >= (ares_socklen_t)sizeof(struct sockaddr_in)) {
      if (n->has_addr && same_ip(x->ai_addr, &n->addr)) return x;
      if (!v4) v4 = x;
    } else if (x->ai_family == AF_INET6 && x->ai_addrlen >= (ares_socklen_t)sizeof(struct sockaddr_in6)) {
      if (n->has_addr && same_ip(x->ai_addr, &n->addr)) return x;
      if (!v6) v6 = x;
    }
  }
  return v4 ? v4 : v6;
}

/* The reply to a round: updates the cache now (possibly inside ares_getaddrinfo, or inside ares_destroy);
 * the report, the waiters and the next round go through the timers. */
static void on_addrinfo(void *arg, int status, int timeouts, struct ares_addrinfo *res) {
  dns_name_t *n = arg;
  n->in_flight = 0;
  if (n->stopped) { /* ARES_EDESTRUCTION from dns_name_destroy */
    if (res) ares_freeaddrinfo(res);
    return;
  }
  const struct ares_addrinfo_node *x = status == ARES_SUCCESS ? pick(n, res) : NULL;
  dns_name_report_t r = {.addr = "", .err = ""};
  if (x) {
    int changed = !n->has_addr || !same_ip(x->ai_addr, &n->addr);
    if (changed) {
      memcpy(n->prev_str, n->has_addr ? n->addr_str : "", n->has_addr ? sizeof n->prev_str : 1);
      memset(&n->addr, 0, sizeof n->addr);
      memcpy(&n->addr, x->ai_addr, x->ai_family == AF_INET ? sizeof(struct sockaddr_in) : sizeof(struct sockaddr_in6));
      addr_to_str(&n->addr, n->addr_str, sizeof n->addr_str);
      r.prev = n->prev_str;
    }
    n->has_addr = 1;
    n->err = 0;
    n->retry_ms = 0;
    r.status = DNS_OK;
  } else {
    if (status == ARES_SUCCESS) status = ARES_ENODATA; /* only records of no use (cannot happen for A/AAAA) */
    int notfound = status == ARES_ENOTFOUND || status == ARES_ENODATA;
    r.status = notfound ? DNS_NOTFOUND : DNS_FAILED;
    r.err = ares_strerror(status);
    if (!n->has_addr) n->err = notfound ? UV_EAI_NONAME : status == ARES_ENOMEM ? UV_EAI_MEMORY : UV_EAI_AGAIN;
  }
  if (res) ares_freeaddrinfo(res);
  r.addr = n->has_addr ? n->addr_str : "";
  n->report = r;
  n->report_due = 1;
  uint64_t next = n->interval_ms;
  if (!n->has_addr) {
    n->retry_ms = n->retry_ms ? 2 * n->retry_ms : NAME_RETRY_MS;
    if (n->retry_ms < next) next = n->retry_ms;
  }
  uv_timer_start(&n->notify_timer, on_notify, 0, 0);
  uv_timer_start(&n->round_timer, on_next_name_round, next, 0);
}

static void on_next_name_round(uv_timer_t *t) { name_start_round(t->data); }

static void name_start_round(dns_name_t *n) {
  struct ares_addrinfo_hints hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                                      .ai_flags = ARES_AI_NOSORT | ARES_AI_ENVHOSTS};
  n->in_flight = 1;
  ares_getaddrinfo(n->chan.channel, n->host, NULL, &hints, on_addrinfo, n); /* may answer at once */
  if (!n->stopped) chan_update_timer(&n->chan);
}

/* Serves the waiters once the name can answer dns_name_addr. Waiters queued by the callbacks (a failed
 * connection trying again) wait for the next turn, so one delivery cannot loop. */
static void deliver(dns_name_t *n) {
  if (!n->has_addr && !n->err) return;
  int status = n->has_addr ? 0 : n->err;
  n->delivering = n->waiters;
  n->waiters = NULL;
  while (n->delivering && !n->stopped) {
    dns_wait_t *w = n->delivering;
    n->delivering = w->next;
    w->next = NULL;
    w->name = NULL;
    w->cb(w, status);
  }
  /* Destroyed from a callback: whoever is left hears UV_ECANCELED from name_free. */
}

static void on_notify(uv_timer_t *t) {
  dns_name_t *n = t->data;
  if (n->report_due) {
    n->report_due = 0;
    if (n->cb) n->cb(n->ud, &n->report);
    if (n->stopped) return;
  }
  deliver(n);
}

int dns_name_create(uv_loop_t *loop, const dns_name_config_t *cfg, dns_name_t **out, char *err, size_t errlen) {
  *out = NULL;
  const char *host = cfg->host;
  if (!host || !host[0] || strlen(host) > 254) {
    snprintf(err, errlen, "bad host name \"%s\"", host ? host : "(null)");
    return -1;
  }
  dns_name_t *n = calloc(1, sizeof *n);
  if (!n || !(n->host = strdup(host))) {
    free(n);
    snprintf(err, errlen, "out of memory");
    return -1;
  }
  n->loop = loop;
  n->interval_ms = cfg->interval_ms ? cfg->interval_ms : DNS_NAME_INTERVAL_MS;
  n->cb = cfg->cb;
  n->ud = cfg->ud;
  if (uv_ip4_addr(host, 0, (struct sockaddr_in *)&n->addr) == 0 ||
      (strchr(host, ':') && uv_ip6_addr(host, 0, (struct sockaddr_in6 *)&n->addr) == 0)) {
    n->literal = 1;
    n->has_addr = 1;
    addr_to_str(&n->addr, n->addr_str, sizeof n->addr_str);
    *out = n;
    return 0;
  }
  memset(&n->addr, 0, sizeof n->addr);
  if (chan_init(&n->chan, loop, cfg->servers, cfg->n_servers, "fb", &n->handles, name_release, n, err, errlen)) {
    free(n->host);
    free(n);
    return -1;
  }
  uv_timer_init(loop, &n->round_timer);
  uv_timer_init(loop, &n->notify_timer);
  n->round_timer.data = n->notify_timer.data = n;
  n->handles += 2;
  name_start_round(n);
  *out = n;
  return 0;
}

void dns_name_destroy(dns_name_t *n) {
  if (!n || n->stopped) return;
  n->stopped = 1;
  if (n->literal) {
    name_free(n); /* never has waiters: dns_name_wait refuses literals */
    return;
  }
  chan_close(&n->chan);
  uv_close((uv_handle_t *)&n->round_timer, on_name_timer_closed);
  uv_close((uv_handle_t *)&n->notify_timer, on_name_timer_closed);
}

int dns_name_addr(const dns_name_t *n, uint16_t port, struct sockaddr_storage *out) {
  if (!n->has_addr) return n->err ? n->err : 1;
  *out = n->addr;
  if (out->ss_family == AF_INET) ((struct sockaddr_in *)out)->sin_port = htons(port);
  else ((struct sockaddr_in6 *)out)->sin6_port = htons(port);
  return 0;
}

int dns_name_wait(dns_name_t *n, dns_wait_t *w, dns_wait_cb cb) {
  if (n->literal) return UV_EINVAL;
  w->cb = cb;
  w->name = n;
  w->next = n->waiters;
  n->waiters = w;
  if (n->stopped) return 0; /* name_free tells it */
  if (n->has_addr || n->err) uv_timer_start(&n->notify_timer, on_notify, 0, 0);
  return 0;
}

void dns_name_cancel(dns_wait_t *w) {
  dns_name_t *n = w->name;
  if (!n) return;
  dns_wait_t **lists[2] = {&n->waiters, &n->delivering};
  for (int i = 0; i < 2; i++)
    for (dns_wait_t **pp = lists[i]; *pp; pp = &(*pp)->next)
      if (*pp == w) {
        *pp = w->next;
        w->next = NULL;
        w->name = NULL;
        return;
      }
}

const char *dns_name_host(const dns_name_t *n) { return n->host; }
