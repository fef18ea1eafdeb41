/*
 * health/check — see check.h.
 *
 * One check at a time, so a checker embeds everything one check needs (a DNS waiter, TCP handle,
 * connect/write requests, parser) and reuses it. A single timer serves both purposes: between checks it
 * waits for the next one, during a check it is the deadline. The address comes from the name's cache at
 * once; only a name without a first answer is waited for (dns_name_wait), and the wait is cancelled
 * synchronously when the check ends first. A check is over once its result is reported (or dropped after
 * hc_checker_stop) and the TCP handle has closed. Only then is the next check scheduled, so checks never
 * overlap and the embedded requests are never reused while libuv still holds them.
 *
 * TLS: the stream is a gateway/transport tp_t; after connect, tp_start_client with the checker's context, then
 * the request is written at once (the transport holds it until the handshake is done) and reading starts, which
 * drives the handshake. A read or write error while the handshake is unfinished is a TLS failure (UV_EPROTO).
 *
 * Lifetime: refs counts the timer (until stop closes it) and an inited TCP handle; the checker is freed
 * when the last of them is released, always from a libuv callback, never inside the user's callback. A
 * name the checker made for itself (no hc_config_t.name) is destroyed by hc_checker_stop.
 */
#include "health/check.h"

#include <llhttp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

enum { HC_TCP_NONE, HC_TCP_OPEN, HC_TCP_CLOSING };

struct hc_checker {
  uv_loop_t *loop;
  hc_result_cb cb;
  void *ud;
  char *host;
  uint16_t port;
  uint64_t interval_ms;
  uint64_t timeout_ms;
  uint64_t rng;            /* splitmix64 state, seeded once at start */
  uv_timer_t timer;        /* next check, or the deadline of the current one */
  dns_name_t *name;        /* host's address */
  dns_name_t *own_name;    /* the same, when the checker made it itself */
  dns_wait_t wait;         /* for the name's first answer */
  tp_t tp;                 /* the stream, plain or TLS (gateway/transport); tp.tcp.data is the checker */
  tls_ctx_t *tls;          /* NULL = plaintext; referenced */
  char *server_name;       /* TLS: SNI + verified name */
  tls_session_cache_t *session;
  char tls_error[256];     /* the current check's handshake failure, "" when none */
  tls_fail_t tls_reason;
  uv_connect_t connect_req;
  uv_write_t write_req;
  llhttp_t parser;
  llhttp_settings_t settings;
  int refs;
  int stopped;
  int in_check;            /* a check began and has not given everything back yet */
  int reported;            /* the current check's result is known (or dropped) */
  int waiting;             /* wait is queued on name */
  int tcp_state;
  char read_buf[4096];
  size_t request_len;
  char request[];          /* the GET request, built once */
};

static void on_timer(uv_timer_t *t);

static uint64_t rng_next(hc_checker_t *c) {
  uint64_t z = (c->rng += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

/* Interval jittered to [0.9, 1.1] * interval_ms, computed without overflow. */
static uint64_t next_delay(hc_checker_t *c) {
  uint64_t i = c->interval_ms;
  return i - i / 10 + rng_next(c) % (i / 5 + 1);
}

static void checker_free(hc_checker_t *c) {
  free(c->host);
  free(c->server_name);
  tls_ctx_unref(c->tls);
  free(c);
}

static void unref(hc_checker_t *c) {
  if (--c->refs > 0) return;
  checker_free(c);
}

/* Ends the current check once its result is out and its resources are back; schedules the next. */
static void check_maybe_over(hc_checker_t *c) {
  if (!c->in_check || !c->reported || c->waiting || c->tcp_state != HC_TCP_NONE) return;
  c->in_check = 0;
  if (!c->stopped) uv_timer_start(&c->timer, on_timer, next_delay(c), 0);
}

static void on_tcp_closed(uv_handle_t *h) {
  hc_checker_t *c = h->data;
  c->tcp_state = HC_TCP_NONE;
  check_maybe_over(c);
  unref(c);
}

/* Reports the current check's result once (not after stop), then gives back what the check holds: a
 * queued wait for the name is cancelled (no callback comes), the TCP handle closes. */
static void check_finish(hc_checker_t *c, int ok, int detail) {
  if (c->reported) return;
  c->reported = 1;
  uv_timer_stop(&c->timer);
  if (!c->stopped) c->cb(c->ud, ok, detail); /* may call hc_checker_stop: c stays valid (timer close is async) */
  if (c->waiting) {
    dns_name_cancel(&c->wait);
    c->waiting = 0;
  }
  if (c->tcp_state == HC_TCP_OPEN) {
    c->tcp_state = HC_TCP_CLOSING;
    tp_close(&c->tp, on_tcp_closed);
  }
  check_maybe_over(c);
}

static int on_headers_complete(llhttp_t *p) {
  hc_checker_t *c = p->data;
  int status = llhttp_get_status_code(p);
  if (status >= 100 && status < 200 && status != 101) return 0; /* interim: the final status follows */
  check_finish(c, status >= 200 && status <= 299, status);
  return HPE_PAUSED;
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  hc_checker_t *c = h->data;
  *buf = uv_buf_init(c->read_buf, sizeof c->read_buf);
}

/* The handshake failed (err: what the read or write reported): a failed check, with the reason kept. */
static void check_tls_failed(hc_checker_t *c, int err) {
  const char *why = tp_error(&c->tp);
  if (why && *why) {
    c->tls_reason = tp_fail_reason(&c->tp);
    snprintf(c->tls_error, sizeof c->tls_error, "%s", why);
  } else {
    c->tls_reason = TLS_FAIL_RESET;
    snprintf(c->tls_error, sizeof c->tls_error, "connection closed during the TLS handshake: %s", uv_strerror(err));
  }
  check_finish(c, 0, UV_EPROTO);
}

static int in_handshake(const hc_checker_t *c) { return tp_is_tls(&c->tp) && !tp_handshake_done(&c->tp); }

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
  hc_checker_t *c = s->data;
  if (c->reported || nread == 0) return;
  /* A TLS failure: during the handshake, or a TLS alert before any answer (a TLS 1.3 client finishes its handshake
   * first: a backend refusing our client certificate says so right after). */
  if (nread < 0 && (in_handshake(c) || (nread == UV_EPROTO && tp_is_tls(&c->tp) && *tp_error(&c->tp)))) {
    check_tls_failed(c, (int)nread);
    return;
  }
  if (nread < 0) {
    check_finish(c, 0, (int)nread); /* UV_EOF, UV_ECONNRESET... before a status */
    return;
  }
  llhttp_errno_t err = llhttp_execute(&c->parser, buf->base, (size_t)nread);
  if (err != HPE_OK && err != HPE_PAUSED) check_finish(c, 0, UV_EPROTO);
}

static void on_write(uv_write_t *w, int status) {
  hc_checker_t *c = w->data;
  if (status < 0 && !c->reported && in_handshake(c)) check_tls_failed(c, status);
  else if (status < 0 && !c->reported) check_finish(c, 0, status);
}

static void on_connect(uv_connect_t *req, int status) {
  hc_checker_t *c = req->data;
  if (c->reported || status == UV_ECANCELED) return; /* the handle is closing */
  if (status < 0) {
    check_finish(c, 0, status);
    return;
  }
  llhttp_init(&c->parser, HTTP_RESPONSE, &c->settings);
  c->parser.data = c;
  int rc = c->tls ? tp_start_client(&c->tp, c->tls, c->server_name, c->session) : 0;
  if (rc == 0) rc = tp_read_start(&c->tp, on_alloc, on_read);
  uv_buf_t b = uv_buf_init(c->request, (unsigned)c->request_len);
  if (rc == 0) rc = tp_write(&c->write_req, &c->tp, &b, 1, on_write);
  if (rc < 0) check_finish(c, 0, rc);
}

/* Connects to addr (the name's choice: IPv4 first, as gateway/backend, so "localhost" reaches a backend
 * bound to 127.0.0.1). */
static void check_connect(hc_checker_t *c, const struct sockaddr_storage *addr) {
  int rc = tp_init(c->loop, &c->tp);
  if (rc == 0) {
    c->tp.tcp.data = c;
    c->tcp_state = HC_TCP_OPEN;
    c->refs++;
    rc = uv_tcp_connect(&c->connect_req, &c->tp.tcp, (const struct sockaddr *)addr, on_connect);
  }
  if (rc < 0) check_finish(c, 0, rc);
}

/* The name has its first answer (or failed, or was destroyed): only while the check waits for it. */
static void on_name(dns_wait_t *w, int status) {
  hc_checker_t *c = w->data;
  struct sockaddr_storage addr;
  c->waiting = 0;
  if (status == 0) status = dns_name_addr(c->name, c->port, &addr);
  if (status != 0) check_finish(c, 0, status < 0 ? status : UV_EAI_AGAIN);
  else check_connect(c, &addr);
}

static void check_begin(hc_checker_t *c) {
  c->in_check = 1;
  c->reported = 0;
  c->tls_error[0] = 0;
  uv_timer_start(&c->timer, on_timer, c->timeout_ms, 0);
  struct sockaddr_storage addr;
  int rc = dns_name_addr(c->name, c->port, &addr);
  if (rc == 0) {
    check_connect(c, &addr);
    return;
  }
  /* No address yet: wait for the first answer within the check's deadline, or learn at once (next loop
   * turn) that the name does not resolve. */
  c->wait.data = c;
  rc = dns_name_wait(c->name, &c->wait, on_name);
  if (rc < 0) check_finish(c, 0, rc);
  else c->waiting = 1;
}

/* Between checks: time for the next one. During a check: its deadline passed. */
static void on_timer(uv_timer_t *t) {
  hc_checker_t *c = t->data;
  if (c->in_check) check_finish(c, 0, UV_ETIMEDOUT);
  else check_begin(c);
}

static void on_timer_closed(uv_handle_t *h) { unref(h->data); }

/* Host and path go into the request verbatim: refuse anything that would break the request line. */
static int bad_token(const char *s) {
  if (!s || !*s) return 1;
  for (; *s; s++)
    if ((unsigned char)*s <= ' ' || *s == 0x7f) return 1;
  return 0;
}

int hc_checker_start(uv_loop_t *loop, const hc_config_t *cfg, hc_result_cb cb, void *ud, hc_checker_t **out) {
  if (!cb || bad_token(cfg->host) || bad_token(cfg->path) || !cfg->interval_ms || !cfg->timeout_ms)
    return UV_EINVAL;
#define HC_REQUEST(host) \
  "GET %s HTTP/1.1\r\nHost: " host "\r\nUser-Agent: otlp-gateway-health\r\nConnection: close\r\n\r\n"
  const char *fmt = strchr(cfg->host, ':') ? HC_REQUEST("[%s]:%u") : HC_REQUEST("%s:%u"); /* IPv6 literal */
#undef HC_REQUEST
  int n = snprintf(NULL, 0, fmt, cfg->path, cfg->host, cfg->port);
  if (n < 0) return UV_EINVAL;
  hc_checker_t *c = calloc(1, sizeof *c + (size_t)n + 1);
  if (!c) return UV_ENOMEM;
  c->host = strdup(cfg->host);
  c->server_name = strdup(cfg->server_name && *cfg->server_name ? cfg->server_name : cfg->host);
  c->tls = cfg->tls ? tls_ctx_ref(cfg->tls) : NULL;
  c->session = cfg->session_cache;
  if (!c->host || !c->server_name) {
    checker_free(c);
    return UV_ENOMEM;
  }
  c->name = cfg->name;
  if (!c->name) {
    char err[128];
    dns_name_config_t nc = {.host = cfg->host};
    if (dns_name_create(loop, &nc, &c->own_name, err, sizeof err) != 0) {
      checker_free(c);
      return UV_EINVAL;
    }
    c->name = c->own_name;
  }
  c->request_len = (size_t)snprintf(c->request, (size_t)n + 1, fmt, cfg->path, cfg->host, cfg->port);
  c->loop = loop;
  c->cb = cb;
  c->ud = ud;
  c->port = cfg->port;
  c->interval_ms = cfg->interval_ms;
  c->timeout_ms = cfg->timeout_ms;
  c->rng = uv_hrtime() ^ ((uint64_t)getpid() << 32) ^ (uint64_t)(uintptr_t)c;
  llhttp_settings_init(&c->settings);
  c->settings.on_headers_complete = on_headers_complete;
  c->tp.tcp.data = c;
  c->connect_req.data = c;
  c->write_req.data = c;
  c->timer.data = c;
  uv_timer_init(loop, &c->timer);
  c->refs = 1;
  uv_timer_start(&c->timer, on_timer, rng_next(c) % c->interval_ms, 0);
  *out = c;
  return 0;
}

void hc_checker_stop(hc_checker_t *c) {
  if (!c || c->stopped) return;
  c->stopped = 1;
  if (c->in_check) check_finish(c, 0, UV_ECANCELED); /* not reported: stopped is set; the wait is cancelled */
  dns_name_destroy(c->own_name);
  c->own_name = NULL;
  uv_close((uv_handle_t *)&c->timer, on_timer_closed);
}

const char *hc_checker_tls_error(const hc_checker_t *c, tls_fail_t *reason) {
  if (reason) *reason = c->tls_error[0] ? c->tls_reason : TLS_FAIL_PROTOCOL;
  return c->tls_error;
}

int hc_checker_set_tls(hc_checker_t *c, tls_ctx_t *tls, const char *server_name) {
  char *sn = strdup(server_name && *server_name ? server_name : c->host);
  if (!sn) return UV_ENOMEM;
  free(c->server_name);
  c->server_name = sn;
  if (tls != c->tls) { /* a check under way keeps the reference its stream took */
    tls_ctx_unref(c->tls);
    c->tls = tls ? tls_ctx_ref(tls) : NULL;
  }
  return 0;
}

/* ---- hysteresis ---------------------------------------------------------------------------------------- */

void hc_state_init(hc_state_t *s, uint32_t rise, uint32_t fall, int up) {
  s->rise = rise ? rise : 1;
  s->fall = fall ? fall : 1;
  s->up = !!up;
  s->health = s->up ? s->rise + s->fall - 1 : 0;
}

int hc_state_observe(hc_state_t *s, int ok) {
  uint32_t top = s->rise + s->fall - 1;
  if (ok) {
    if (s->health < top) s->health++;
    if (!s->up && s->health >= s->rise) {
      s->up = 1;
      s->health = top;
      return 1;
    }
    return 0;
  }
  if (!s->up) { /* a rise needs consecutive successes: a failure undoes it */
    s->health = 0;
    return 0;
  }
  s->health--;
  if (s->health < s->rise) {
    s->up = 0;
    s->health = 0;
    return -1;
  }
  return 0;
}

int hc_state_force_down(hc_state_t *s) {
  int was_up = s->up;
  s->up = 0;
  s->health = 0;
  return was_up ? -1 : 0;
}
