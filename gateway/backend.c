/* gateway/backend — see backend.h. */
#include "gateway/backend.h"

#include <llhttp.h>
#include <strings.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gateway/version.h"
#include "gateway/wire_text.h"

#define BE_MAX_RESPONSE_BODY (64 * 1024)

typedef struct be_conn be_conn_t;
typedef struct be_req be_req_t;
typedef struct be_tclass be_tclass_t;

/* One allocation per request: the struct, its iovecs (the head, then the caller's), then the head's bytes. */
struct be_req {
  be_req_t *next;          /* queue link */
  be_req_t *dl_prev, *dl_next; /* its deadline class's list */
  be_tclass_t *tclass;     /* the request_timeout it was sent with; NULL = none */
  uint64_t deadline;       /* uv_now at be_send + that timeout */
  be_pool_t *pool;
  be_conn_t *conn;         /* while on a connection */
  be_done_cb cb;
  void *ud;
  int retried;
  size_t n_bufs;
  size_t body_len;
  uv_buf_t bufs[];         /* n_bufs; the head's bytes follow them */
};

/* The live requests sent with one request_timeout value, in be_send order: with the same timeout and a loop clock
 * that never goes back, that is deadline order, so the pool's one timer only ever looks at each class's head. A
 * reload that changes the timeout starts a new class (or takes up the one of that value again); the old one keeps
 * its requests and their deadlines, and is freed once it is empty. */
struct be_tclass {
  be_tclass_t *next;
  uint64_t timeout_ms;
  be_req_t *head, *tail;
};

/* The request head's constant parts, built per config (be_pool_create, be_pool_update) in one allocation:
 * "POST <prefix>" | <path> | " HTTP/1.1\r\nHost: ..\r\nUser-Agent: ..\r\nContent-Type: " | <content type>
 * "\r\n" [Content-Encoding] "Content-Length: <n>\r\n" | <extra headers> "\r\n". Only the unmarked parts are
 * per request. */
typedef struct be_head {
  char *buf;               /* pre, mid, end back to back */
  size_t pre_len, mid_len, end_len;
} be_head_t;

enum { CONN_RESOLVING, CONN_CONNECTING, CONN_IDLE, CONN_BUSY, CONN_CLOSED };

struct be_conn {
  tp_t tp;                 /* the stream, plain or TLS (gateway/transport); tp.tcp.data is the connection */
  uv_connect_t connect_req;
  dns_wait_t wait;         /* for the name's first answer (CONN_RESOLVING) */
  uv_write_t write_req;
  be_pool_t *pool;
  be_conn_t *prev, *next;  /* all connections */
  be_conn_t *idle_next;
  llhttp_t parser;
  be_req_t *req;
  int state;
  int reused;              /* carried a request before: a failure may be a stale keep-alive */
  int got_bytes;           /* response bytes seen for the current request */
  int writing;             /* write_req is libuv's until on_write runs: never reuse it before */
  int pool_after_write;    /* response done and keep-alive, request written: idle once on_write runs */
  int tcp_inited;
  int tls_seen;            /* its completed TLS handshake was counted */
  int open_err;            /* uv_tcp_connect failed at once: reported from the handle's close callback */
  uint32_t retry_after;    /* Retry-After of the current response, seconds */
  int in_retry_after;      /* parsing the Retry-After header's value */
  uint8_t *body;
  size_t body_len;
  char read_buf[16384];
};

struct be_pool {
  uv_loop_t *loop;
  char *host;
  dns_name_t *name;        /* host's cached address (be_pool_config_t.name, or own_name) */
  dns_name_t *own_name;    /* made by the pool when the config gave none; destroyed with the pool */
  uint16_t port;
  tls_ctx_t *tls;          /* NULL = plaintext; referenced; new connections take the current one */
  char *server_name;       /* TLS: SNI + verified name */
  tls_session_cache_t *session;     /* be_pool_config_t.session_cache, or own_session */
  tls_session_cache_t *own_session; /* made by the pool (on its first TLS connect) when the config gave none */
  be_tls_error_cb on_tls_error;
  void *tls_error_ud;
  char tls_error[256];     /* the last failed handshake's reason, "" when none */
  be_head_t head;          /* what every request head starts and ends with (path prefix, Host, extra headers) */
  char host_header[300];
  uint32_t max_connections;
  be_tclass_t *tclasses;   /* every deadline class with requests, and the current one */
  be_tclass_t *tclass;     /* the current request_timeout's; NULL = 0 (no deadline) */
  uint64_t n_timed;        /* live requests with a deadline: the timer runs only while there are some */
  uv_timer_t timer;        /* fires at the earliest deadline (or earlier: it is not moved when that request ends) */
  uint64_t timer_due;      /* when it fires, while timer_armed */
  int timer_armed;
  be_conn_t *conns;
  be_conn_t *idle;
  be_req_t *q_head, *q_tail;
  size_t q_len;
  uint32_t n_conns, n_opening;
  be_stats_t stats;
  int destroying;
  int cancelling;
  int refs;                /* live conns + 1 until destroy; at 0 the timer closes, and its callback frees the pool */
  llhttp_settings_t settings;
};

static void pump(be_pool_t *p);
static void conn_close(be_conn_t *c);
static void conn_close_finish(be_conn_t *c, int status, const uint8_t *body, size_t len, uint32_t retry_after);

const be_stats_t *be_pool_stats(const be_pool_t *p) { return &p->stats; }
const char *be_pool_last_tls_error(const be_pool_t *p) { return p->tls_error; }

static void pool_free(be_pool_t *p) {
  free(p->host);
  free(p->head.buf);
  free(p->server_name);
  tls_ctx_unref(p->tls);
  while (p->tclasses) {
    be_tclass_t *t = p->tclasses;
    p->tclasses = t->next;
    free(t);
  }
  free(p);
}

static void on_pool_timer_closed(uv_handle_t *h) {
  be_pool_t *p = h->data;
  tls_session_cache_destroy(p->own_session);
  pool_free(p);
}

/* The last reference goes once every connection's handle has closed: only then is the own session cache, which
 * their TLS state may use until it is freed, destroyed. The memory goes from the timer's close callback, never
 * inside a call that may still use the pool (a done callback that destroyed it). */
static void pool_unref(be_pool_t *p) {
  if (--p->refs > 0) return;
  uv_close((uv_handle_t *)&p->timer, on_pool_timer_closed);
}

/* ---- deadlines ------------------------------------------------------------------------------------------ */

static void on_deadline(uv_timer_t *t);

/* Makes the timer fire by deadline at the latest (it may already be due earlier: a request that has ended since). */
static void deadline_arm(be_pool_t *p, uint64_t deadline) {
  if (p->destroying || (p->timer_armed && p->timer_due <= deadline)) return;
  uint64_t now = uv_now(p->loop);
  p->timer_armed = 1;
  p->timer_due = deadline;
  uv_timer_start(&p->timer, on_deadline, deadline > now ? deadline - now : 0, 0);
}

/* r's deadline counts from now (be_send), with the current request_timeout. */
static void deadline_add(be_pool_t *p, be_req_t *r) {
  be_tclass_t *t = p->tclass;
  r->tclass = t;
  if (!t) return;
  r->deadline = uv_now(p->loop) + t->timeout_ms;
  r->dl_next = NULL;
  r->dl_prev = t->tail;
  if (t->tail) t->tail->dl_next = r;
  else t->head = r;
  t->tail = r;
  p->n_timed++;
  deadline_arm(p, r->deadline);
}

static void tclass_unlink(be_pool_t *p, be_tclass_t *t) {
  for (be_tclass_t **pp = &p->tclasses; *pp; pp = &(*pp)->next)
    if (*pp == t) {
      *pp = t->next;
      return;
    }
}

/* r ended: off its class (freed when empty and no longer current); the timer stops with the last one. */
static void deadline_remove(be_pool_t *p, be_req_t *r) {
  be_tclass_t *t = r->tclass;
  if (!t) return;
  r->tclass = NULL;
  if (r->dl_prev) r->dl_prev->dl_next = r->dl_next;
  else t->head = r->dl_next;
  if (r->dl_next) r->dl_next->dl_prev = r->dl_prev;
  else t->tail = r->dl_prev;
  if (!t->head && t != p->tclass) {
    tclass_unlink(p, t);
    free(t);
  }
  if (--p->n_timed == 0 && p->timer_armed) {
    p->timer_armed = 0;
    uv_timer_stop(&p->timer);
  }
}

/* The request with the earliest deadline, NULL when none has one. */
static be_req_t *deadline_first(const be_pool_t *p) {
  be_req_t *first = NULL;
  for (const be_tclass_t *t = p->tclasses; t; t = t->next)
    if (t->head && (!first || t->head->deadline < first->deadline)) first = t->head;
  return first;
}

/* ---- requests ----------------------------------------------------------------------------------------- */

/* Completes r: off its connection and its deadline list, freed, then the callback. Nothing refers to r after. */
static void req_finish_ra(be_req_t *r, int status, const uint8_t *body, size_t len, uint32_t retry_after) {
  be_done_cb cb = r->cb;
  void *ud = r->ud;
  if (r->conn) r->conn->req = NULL;
  deadline_remove(r->pool, r);
  free(r);
  cb(ud, status, body, len, retry_after);
}

static void req_finish(be_req_t *r, int status, const uint8_t *body, size_t len) {
  req_finish_ra(r, status, body, len, 0);
}

static void queue_push(be_pool_t *p, be_req_t *r, int front) {
  r->next = NULL;
  p->stats.queued_bytes += r->body_len;
  if (!p->q_head) {
    p->q_head = p->q_tail = r;
  } else if (front) {
    r->next = p->q_head;
    p->q_head = r;
  } else {
    p->q_tail->next = r;
    p->q_tail = r;
  }
  p->q_len++;
}

static be_req_t *queue_pop(be_pool_t *p) {
  be_req_t *r = p->q_head;
  if (!r) return NULL;
  p->q_head = r->next;
  if (!p->q_head) p->q_tail = NULL;
  p->q_len--;
  p->stats.queued_bytes -= r->body_len;
  r->next = NULL;
  return r;
}

static int queue_remove(be_pool_t *p, be_req_t *r) {
  be_req_t **pp = &p->q_head, *prev = NULL;
  for (; *pp; prev = *pp, pp = &(*pp)->next) {
    if (*pp == r) {
      *pp = r->next;
      if (p->q_tail == r) p->q_tail = prev;
      p->q_len--;
      p->stats.queued_bytes -= r->body_len;
      return 1;
    }
  }
  return 0;
}

/* Every request whose deadline has come fails with UV_ETIMEDOUT, queued or on a connection; then the timer is set
 * for the next deadline. */
static void on_deadline(uv_timer_t *t) {
  be_pool_t *p = t->data;
  p->timer_armed = 0;
  uint64_t now = uv_now(p->loop);
  int expired = 0;
  for (be_req_t *r; !p->destroying && (r = deadline_first(p)) != NULL && r->deadline <= now; expired = 1) {
    if (r->conn) {
      /* The response may still come, and the body may still be being written: this connection's stream
       * position is unknown, so it closes (before r's owner may free what it was writing). */
      conn_close_finish(r->conn, UV_ETIMEDOUT, NULL, 0, 0);
    } else {
      queue_remove(p, r);
      req_finish(r, UV_ETIMEDOUT, NULL, 0);
    }
  }
  if (expired) pump(p);
  be_req_t *next = deadline_first(p);
  if (next) deadline_arm(p, next->deadline);
}

/* ---- connections -------------------------------------------------------------------------------------- */

static void idle_remove(be_pool_t *p, be_conn_t *c) {
  for (be_conn_t **pp = &p->idle; *pp; pp = &(*pp)->idle_next)
    if (*pp == c) {
      *pp = c->idle_next;
      c->idle_next = NULL;
      return;
    }
}

static void on_conn_closed(uv_handle_t *h) {
  be_conn_t *c = h->data;
  be_pool_t *p = c->pool;
  free(c->body);
  free(c);
  pool_unref(p);
}

static void conn_free_unopened(be_conn_t *c) {
  be_pool_t *p = c->pool;
  free(c->body);
  free(c);
  pool_unref(p);
}

/* Closes c. A request still on it fails with UV_ECONNRESET, after the handle is closed: once tp_close has
 * run, nothing more is written from the request's buffers, so its owner may free them in the callback. */
static void conn_close(be_conn_t *c) {
  be_pool_t *p = c->pool;
  if (c->state == CONN_CLOSED) return;
  int was_open = c->state == CONN_IDLE || c->state == CONN_BUSY;
  int was_opening = c->state == CONN_RESOLVING || c->state == CONN_CONNECTING;
  if (c->state == CONN_IDLE) idle_remove(p, c);
  c->state = CONN_CLOSED;
  c->pool_after_write = 0;
  if (c->prev) c->prev->next = c->next; else p->conns = c->next;
  if (c->next) c->next->prev = c->prev;
  p->n_conns--;
  if (was_opening) p->n_opening--;
  if (was_open) p->stats.connections_open--;
  be_req_t *r = c->req;
  c->req = NULL;
  if (r) r->conn = NULL;
  /* A connection without a TCP handle is still waiting for its address: on_resolved frees it when the name
   * answers (or is destroyed), on_connect_error_closed when its connect failed at once. */
  if (c->tcp_inited) tp_close(&c->tp, on_conn_closed);
  if (r) req_finish(r, UV_ECONNRESET, NULL, 0);
}

/* Takes r off c and closes c, then completes r with status: the order that keeps r's buffers out of
 * libuv's hands before its owner hears of the outcome. */
static void conn_close_finish(be_conn_t *c, int status, const uint8_t *body, size_t len, uint32_t retry_after) {
  be_req_t *r = c->req;
  c->req = NULL;
  if (r) r->conn = NULL;
  conn_close(c);
  if (r) req_finish_ra(r, status, body, len, retry_after);
}

/* Opening c failed: one queued request learns of it now; the others get their own attempts via pump. */
static void conn_open_failed(be_conn_t *c, int err) {
  be_pool_t *p = c->pool;
  be_req_t *r = queue_pop(p);
  if (r) req_finish(r, err, NULL, 0);
  int unopened = !c->tcp_inited;
  conn_close(c);
  if (unopened) conn_free_unopened(c); /* no handle to close: resolving is over or never started */
}

/* c's TLS handshake failed (err: what the read or write reported): the reason is kept and the owner hears of it,
 * then the request on c fails with UV_EPROTO. Never a stale keep-alive: a handshake runs on fresh connections
 * only, so there is no retry here. */
static void conn_tls_failed(be_conn_t *c, int err) {
  be_pool_t *p = c->pool;
  const char *why = tp_error(&c->tp);
  tls_fail_t reason = TLS_FAIL_RESET;
  if (why && *why) {
    reason = tp_fail_reason(&c->tp);
    snprintf(p->tls_error, sizeof p->tls_error, "%s", why);
  } else {
    snprintf(p->tls_error, sizeof p->tls_error, "connection closed during the TLS handshake: %s", uv_strerror(err));
  }
  p->stats.tls_failures++;
  if (p->on_tls_error) p->on_tls_error(p->tls_error_ud, reason, p->tls_error);
  conn_close_finish(c, UV_EPROTO, NULL, 0, 0);
  pump(p);
}

/* Counts c's handshake once it is done (its first write completed, or its first bytes arrived). */
static void conn_tls_seen(be_conn_t *c) {
  if (c->tls_seen || !tp_is_tls(&c->tp) || !tp_handshake_done(&c->tp)) return;
  c->tls_seen = 1;
  c->pool->stats.tls_handshakes++;
  if (tp_session_reused(&c->tp)) c->pool->stats.tls_resumed++;
}

/* A failure that is TLS's: during the handshake (a reset included), or a TLS alert right after it before any
 * response byte (TLS 1.3 clients finish first: a server refusing our client certificate says so then). */
static int conn_tls_failure(const be_conn_t *c, int err) {
  if (!tp_is_tls(&c->tp)) return 0;
  if (!tp_handshake_done(&c->tp)) return 1;
  return err == UV_EPROTO && !c->reused && !c->got_bytes && *tp_error(&c->tp);
}

/* A request failed on c before any response byte: retry once on a fresh connection if c was a reused
 * keep-alive connection (the backend may have closed it while idle), else fail it. */
static void conn_fail(be_conn_t *c, int err) {
  be_pool_t *p = c->pool;
  be_req_t *r = c->req;
  if (r && c->reused && !c->got_bytes && !r->retried && !p->destroying) {
    r->retried = 1;
    p->stats.retries++;
    c->req = NULL;
    r->conn = NULL;
    queue_push(p, r, 1);
    conn_close(c);
  } else {
    conn_close_finish(c, err == UV_EOF ? UV_ECONNRESET : err, NULL, 0, 0);
  }
  pump(p);
}

static int on_body(llhttp_t *h, const char *at, size_t len) {
  be_conn_t *c = h->data;
  if (c->body_len + len > BE_MAX_RESPONSE_BODY) len = BE_MAX_RESPONSE_BODY - c->body_len;
  if (!len) return 0;
  if (!c->body && !(c->body = malloc(BE_MAX_RESPONSE_BODY))) return 0;
  memcpy(c->body + c->body_len, at, len);
  c->body_len += len;
  return 0;
}

static int on_message_complete(llhttp_t *h) { return HPE_PAUSED; }

static int on_header_field(llhttp_t *h, const char *at, size_t len) {
  be_conn_t *c = h->data;
  c->in_retry_after = len == 11 && strncasecmp(at, "Retry-After", 11) == 0;
  return 0;
}

/* Retry-After in its delta-seconds form; an HTTP-date is ignored (0), as are absurd values (capped). */
static int on_header_value(llhttp_t *h, const char *at, size_t len) {
  be_conn_t *c = h->data;
  if (!c->in_retry_after) return 0;
  uint32_t v = 0;
  size_t i = 0;
  while (i < len && at[i] == ' ') i++;
  for (; i < len && at[i] >= '0' && at[i] <= '9'; i++) v = v > 86400 ? v : v * 10 + (uint32_t)(at[i] - '0');
  c->retry_after = v > 86400 ? 86400 : v;
  return 0;
}

static void conn_make_idle(be_conn_t *c) {
  be_pool_t *p = c->pool;
  c->state = CONN_IDLE;
  c->reused = 1;
  c->idle_next = p->idle;
  p->idle = c;
}

/* The response to c->req is complete (keep: it allows keep-alive and nothing followed it). The connection
 * goes back to the pool only once the whole request was written too (PATTERNS.md 1): a response that
 * arrives while body bytes are still unsent is an early answer (413, 429, 503, 401 after the head), and
 * the connection closes, which stops the write, before the request's owner hears of the answer. A request
 * whose bytes are all out but whose write callback has not run yet is answered now, and the connection
 * waits for that callback (write_req is libuv's until then) before it is reused. */
static void conn_response_done(be_conn_t *c, int keep) {
  be_pool_t *p = c->pool;
  int status = llhttp_get_status_code(&c->parser);
  if (c->writing && tp_write_queue_size(&c->tp) > 0) {
    conn_close_finish(c, status, c->body, c->body_len, c->retry_after);
    c->body_len = 0;
    pump(p);
    return;
  }
  be_req_t *r = c->req;
  c->req = NULL;
  r->conn = NULL;
  keep = keep && !p->destroying && !p->cancelling;
  if (!keep) conn_close(c);
  else if (c->writing) c->pool_after_write = 1;
  else conn_make_idle(c);
  req_finish_ra(r, status, c->body, c->body_len, c->retry_after);
  c->body_len = 0;
  pump(p);
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
  be_conn_t *c = s->data;
  if (nread == 0) return;
  if (nread < 0 && conn_tls_failure(c, (int)nread)) {
    conn_tls_failed(c, (int)nread);
    return;
  }
  conn_tls_seen(c);
  if (nread == UV_EOF && c->req && c->got_bytes && llhttp_finish(&c->parser) == HPE_PAUSED &&
      llhttp_get_status_code(&c->parser) >= 200) {
    conn_response_done(c, 0); /* a response delimited by the end of the connection */
    return;
  }
  if (nread < 0) {
    conn_fail(c, (int)nread);
    return;
  }
  if (!c->req) { /* bytes nobody asked for: the stream is out of step */
    conn_close(c);
    return;
  }
  c->got_bytes = 1;
  llhttp_errno_t err = llhttp_execute(&c->parser, buf->base, (size_t)nread);
  if (err == HPE_OK) return;
  if (err != HPE_PAUSED) {
    conn_fail(c, UV_EPROTO);
    return;
  }
  /* A complete response. Anything after it on a non-pipelined connection is a protocol error. */
  const char *pos = llhttp_get_error_pos(&c->parser);
  int clean = pos == buf->base + nread;
  if (llhttp_get_status_code(&c->parser) < 200) { /* 1xx interim: llhttp treats it as a message */
    llhttp_resume(&c->parser);
    c->body_len = 0;
    if (!clean) {
      size_t rest = (size_t)(buf->base + nread - pos);
      uv_buf_t more = uv_buf_init((char *)pos, (unsigned)rest);
      on_read(s, (ssize_t)rest, &more);
    }
    return;
  }
  conn_response_done(c, clean && llhttp_should_keep_alive(&c->parser));
}

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  be_conn_t *c = h->data;
  *buf = uv_buf_init(c->read_buf, sizeof c->read_buf);
}

static void on_write(uv_write_t *w, int status) {
  be_conn_t *c = w->data;
  c->writing = 0;
  if (c->state != CONN_BUSY) return; /* closed meanwhile: the write was cancelled */
  if (status < 0 && conn_tls_failure(c, status) && !c->pool_after_write) {
    conn_tls_failed(c, status);
    return;
  }
  if (status == 0) conn_tls_seen(c);
  if (c->pool_after_write) {          /* answered already: now the connection is free */
    c->pool_after_write = 0;
    if (status < 0) conn_close(c);
    else conn_make_idle(c);
    pump(c->pool);
    return;
  }
  if (status < 0) conn_fail(c, status);
}

static void conn_assign(be_conn_t *c, be_req_t *r) {
  be_pool_t *p = c->pool;
  c->state = CONN_BUSY;
  c->req = r;
  c->got_bytes = 0;
  c->body_len = 0;
  c->retry_after = 0;
  c->in_retry_after = 0;
  c->pool_after_write = 0;
  r->conn = c;
  llhttp_init(&c->parser, HTTP_RESPONSE, &p->settings);
  c->parser.data = c;
  c->write_req.data = c;
  p->stats.requests++;
  int rc = tp_write(&c->write_req, &c->tp, r->bufs, (unsigned)r->n_bufs, on_write);
  if (rc < 0) conn_fail(c, rc);
  else c->writing = 1;
}

static void on_connect(uv_connect_t *cr, int status) {
  be_conn_t *c = cr->data;
  be_pool_t *p = c->pool;
  if (c->state == CONN_CLOSED) return; /* closed meanwhile (destroy) */
  /* TLS: the handshake starts now and completes within reads; requests written meanwhile are held by the
   * transport until it is done. The session cache is made on the first TLS connect of a pool given none. */
  if (status == 0 && p->tls && !p->session && !(p->session = p->own_session = tls_session_cache_create()))
    status = UV_ENOMEM;
  if (status == 0 && p->tls) status = tp_start_client(&c->tp, p->tls, p->server_name, p->session);
  if (status < 0) {
    conn_open_failed(c, status);
    pump(p);
    return;
  }
  p->n_opening--;
  p->stats.connections_open++;
  c->state = CONN_IDLE;
  uv_tcp_nodelay(&c->tp.tcp, 1);
  int rc = tp_read_start(&c->tp, alloc_cb, on_read);
  if (rc < 0) {
    conn_close(c);
    pump(p);
    return;
  }
  c->idle_next = p->idle;
  p->idle = c;
  pump(p);
}

/* A connect that libuv refused at once (no socket: EMFILE; no route: ENETUNREACH) is reported from here,
 * the close callback of the handle, because conn_open runs inside be_send. Until then c is still RESOLVING
 * with tcp_inited 0, so conn_close leaves it to this callback. */
static void on_connect_error_closed(uv_handle_t *h) {
  be_conn_t *c = h->data;
  be_pool_t *p = c->pool;
  if (c->state == CONN_CLOSED) { /* closed meanwhile (cancel, destroy) */
    conn_free_unopened(c);
    return;
  }
  conn_open_failed(c, c->open_err);
  pump(p);
}

/* Connects c to addr. One address per attempt, the name's choice: IPv4 first, so "localhost" reaches a
 * collector bound to 127.0.0.1 on hosts whose resolver lists ::1 first. Trying each address in turn is left
 * for DNS discovery. */
static void conn_connect(be_conn_t *c, const struct sockaddr_storage *addr) {
  be_pool_t *p = c->pool;
  tp_init(p->loop, &c->tp); /* AF_UNSPEC: no socket yet, nothing that can fail */
  c->tp.tcp.data = c;
  c->connect_req.data = c;
  int rc = uv_tcp_connect(&c->connect_req, &c->tp.tcp, (const struct sockaddr *)addr, on_connect);
  if (rc == 0) {
    c->tcp_inited = 1;
    c->state = CONN_CONNECTING;
    return;
  }
  c->open_err = rc;
  tp_close(&c->tp, on_connect_error_closed);
}

/* The pool's name has its first answer, or failed to get one (UV_EAI_NONAME, UV_EAI_AGAIN), or was
 * destroyed (UV_ECANCELED). Runs for every wait, also one whose connection was closed meanwhile: it frees
 * that connection. */
static void on_resolved(dns_wait_t *w, int status) {
  be_conn_t *c = w->data;
  be_pool_t *p = c->pool;
  if (c->state == CONN_CLOSED) { /* closed while resolving */
    conn_free_unopened(c);
    return;
  }
  struct sockaddr_storage addr;
  if (status == 0) status = dns_name_addr(p->name, p->port, &addr);
  if (status != 0) {
    conn_open_failed(c, status < 0 ? status : UV_EAI_AGAIN);
    pump(p);
    return;
  }
  conn_connect(c, &addr);
}

/* Opens one more connection to the pool's cached address: at once when the name has one, else after its
 * first answer (bounded by the requests' own deadlines); a name that does not resolve fails it on the next
 * loop turn with the name's error. Never looks anything up itself. */
static void conn_open(be_pool_t *p) {
  be_conn_t *c = calloc(1, sizeof *c);
  if (!c) return;
  c->pool = p;
  c->state = CONN_RESOLVING;
  c->next = p->conns;
  if (p->conns) p->conns->prev = c;
  p->conns = c;
  p->n_conns++;
  p->n_opening++;
  p->refs++;
  p->stats.connects++;
  c->wait.data = c;
  struct sockaddr_storage addr;
  int rc = dns_name_addr(p->name, p->port, &addr);
  if (rc == 0) conn_connect(c, &addr);
  else if ((rc = dns_name_wait(p->name, &c->wait, on_resolved)) < 0) conn_open_failed(c, rc); /* cannot happen */
}

/* Hands queued requests to idle connections, opening new ones (up to the limit) for the rest. */
static void pump(be_pool_t *p) {
  if (p->destroying) return;
  while (p->q_head && p->idle) {
    be_conn_t *c = p->idle;
    p->idle = c->idle_next;
    c->idle_next = NULL;
    conn_assign(c, queue_pop(p));
  }
  while (p->q_len > p->n_opening && p->n_conns < p->max_connections) conn_open(p);
}

/* ---- public ------------------------------------------------------------------------------------------- */

/* The constant parts of cfg's request heads for host_header into *h (see be_head_t); 0 or UV_ENOMEM. */
static int head_build(const be_pool_config_t *cfg, const char *host_header, be_head_t *h) {
  static const char post[] = "POST ", http[] = " HTTP/1.1\r\nHost: ",
                    ua[] = "\r\nUser-Agent: otlp-gateway/" OTLPGW_VERSION "\r\nContent-Type: ";
  const char *prefix = cfg->path_prefix ? cfg->path_prefix : "";
  size_t prefix_len = strlen(prefix), host_len = strlen(host_header), extra = 2;
  for (size_t i = 0; i < cfg->n_headers; i++) extra += strlen(cfg->headers[i].name) + strlen(cfg->headers[i].value) + 4;
  h->pre_len = sizeof post - 1 + prefix_len;
  h->mid_len = sizeof http - 1 + host_len + sizeof ua - 1;
  h->end_len = extra;
  if (!(h->buf = malloc(h->pre_len + h->mid_len + h->end_len))) return UV_ENOMEM;
  char *o = h->buf;
  o += WT_LIT(o, post);
  o += wt_cat(o, prefix, prefix_len);
  o += WT_LIT(o, http);
  o += wt_cat(o, host_header, host_len);
  o += WT_LIT(o, ua);
  for (size_t i = 0; i < cfg->n_headers; i++) {
    o += wt_cat(o, cfg->headers[i].name, strlen(cfg->headers[i].name));
    o += WT_LIT(o, ": ");
    o += wt_cat(o, cfg->headers[i].value, strlen(cfg->headers[i].value));
    o += WT_LIT(o, "\r\n");
  }
  WT_LIT(o, "\r\n");
  return 0;
}

/* The deadline class for timeout_ms: the pool's class of that value if it has one, else a new one (not linked
 * yet: *fresh). NULL for 0 (no deadline), or out of memory (*fresh = 0 then too; check timeout_ms). */
static be_tclass_t *tclass_for(be_pool_t *p, uint64_t timeout_ms, int *fresh) {
  *fresh = 0;
  if (!timeout_ms) return NULL;
  for (be_tclass_t *t = p->tclasses; t; t = t->next)
    if (t->timeout_ms == timeout_ms) return t;
  be_tclass_t *t = calloc(1, sizeof *t);
  if (t) {
    t->timeout_ms = timeout_ms;
    *fresh = 1;
  }
  return t;
}

/* Makes t (possibly NULL) the current class; the one it replaces goes if no request is left in it. */
static void tclass_set(be_pool_t *p, be_tclass_t *t, int fresh) {
  be_tclass_t *old = p->tclass;
  if (fresh) {
    t->next = p->tclasses;
    p->tclasses = t;
  }
  p->tclass = t;
  if (old && old != t && !old->head) {
    tclass_unlink(p, old);
    free(old);
  }
}

static char *dup_or(const char *s, const char *dflt) { return strdup(s && *s ? s : dflt); }

int be_pool_create(uv_loop_t *loop, const be_pool_config_t *cfg, be_pool_t **out) {
  be_pool_t *p = calloc(1, sizeof *p);
  if (!p) return UV_ENOMEM;
  p->loop = loop;
  p->host = strdup(cfg->host);
  p->server_name = dup_or(cfg->server_name, cfg->host);
  p->tls = cfg->tls ? tls_ctx_ref(cfg->tls) : NULL;
  p->session = cfg->session_cache;
  p->on_tls_error = cfg->on_tls_error;
  p->tls_error_ud = cfg->tls_error_ud;
  p->port = cfg->port;
  p->max_connections = cfg->max_connections ? cfg->max_connections : 1;
  p->refs = 1;
  if (strchr(cfg->host, ':')) snprintf(p->host_header, sizeof p->host_header, "[%s]:%u", cfg->host, cfg->port);
  else snprintf(p->host_header, sizeof p->host_header, "%s:%u", cfg->host, cfg->port);
  int fresh;
  be_tclass_t *t = tclass_for(p, cfg->request_timeout_ms, &fresh);
  if (t) tclass_set(p, t, fresh);
  char err[128];
  dns_name_config_t nc = {.host = cfg->host};
  p->name = cfg->name;
  int rc = !p->host || !p->server_name || (cfg->request_timeout_ms && !t) ? UV_ENOMEM : 0;
  if (rc == 0) rc = head_build(cfg, p->host_header, &p->head);
  if (rc == 0 && !p->name && dns_name_create(loop, &nc, &p->own_name, err, sizeof err) != 0) rc = UV_EINVAL;
  if (rc != 0) {
    pool_free(p);
    return rc;
  }
  if (!p->name) p->name = p->own_name;
  uv_timer_init(loop, &p->timer); /* cannot fail; closed when the last reference goes */
  p->timer.data = p;
  llhttp_settings_init(&p->settings);
  p->settings.on_body = on_body;
  p->settings.on_message_complete = on_message_complete;
  p->settings.on_header_field = on_header_field;
  p->settings.on_header_value = on_header_value;
  *out = p;
  return 0;
}

int be_pool_update(be_pool_t *p, const be_pool_config_t *cfg) {
  be_head_t h;
  int fresh;
  be_tclass_t *t = tclass_for(p, cfg->request_timeout_ms, &fresh);
  char *sn = dup_or(cfg->server_name, p->host);
  int rc = head_build(cfg, p->host_header, &h);
  if (rc != 0 || !sn || (cfg->request_timeout_ms && !t)) {
    if (rc == 0) free(h.buf);
    free(sn);
    if (fresh) free(t);
    return UV_ENOMEM;
  }
  free(p->head.buf);
  p->head = h;
  free(p->server_name);
  p->server_name = sn;
  if (cfg->tls != p->tls) { /* open connections hold their own reference */
    tls_ctx_unref(p->tls);
    p->tls = cfg->tls ? tls_ctx_ref(cfg->tls) : NULL;
  }
  p->max_connections = cfg->max_connections ? cfg->max_connections : 1;
  tclass_set(p, t, fresh); /* requests queued or in flight keep their deadlines */
  pump(p); /* a higher limit may open connections for what waits */
  return 0;
}

/* The head is "POST <prefix><path> HTTP/1.1\r\nHost: <host:port>\r\nUser-Agent: otlp-gateway/<version>\r\n
 * Content-Type: <type>\r\n[Content-Encoding: <enc>\r\n]Content-Length: <n>\r\n<extra headers>\r\n", laid out from
 * the pool's prebuilt parts with memcpy: one allocation holds the request, its iovecs and its head. */
int be_send(be_pool_t *p, const char *path, const char *content_type, const char *content_encoding,
            const struct iovec *iov, size_t n_iov, be_done_cb cb, void *ud) {
  static const char ce_name[] = "Content-Encoding: ", cl_name[] = "Content-Length: ";
  if (p->destroying || p->cancelling) return UV_ECANCELED;
  size_t body_len = 0;
  for (size_t i = 0; i < n_iov; i++) body_len += iov[i].iov_len;
  char cl[20];
  size_t cl_len = wt_u64(cl, body_len);
  size_t path_len = strlen(path), ct_len = strlen(content_type);
  size_t ce_len = content_encoding ? strlen(content_encoding) : 0;
  const be_head_t *h = &p->head;
  size_t head_len = h->pre_len + path_len + h->mid_len + ct_len + 2 +
                    (content_encoding ? sizeof ce_name - 1 + ce_len + 2 : 0) + sizeof cl_name - 1 + cl_len + 2 +
                    h->end_len;
  size_t n_bufs = n_iov + 1;
  be_req_t *r = malloc(sizeof *r + n_bufs * sizeof(uv_buf_t) + head_len);
  if (!r) return UV_ENOMEM;
  memset(r, 0, sizeof *r);
  char *head = (char *)(r->bufs + n_bufs), *o = head;
  o += wt_cat(o, h->buf, h->pre_len);
  o += wt_cat(o, path, path_len);
  o += wt_cat(o, h->buf + h->pre_len, h->mid_len);
  o += wt_cat(o, content_type, ct_len);
  o += WT_LIT(o, "\r\n");
  if (content_encoding) {
    o += WT_LIT(o, ce_name);
    o += wt_cat(o, content_encoding, ce_len);
    o += WT_LIT(o, "\r\n");
  }
  o += WT_LIT(o, cl_name);
  o += wt_cat(o, cl, cl_len);
  o += WT_LIT(o, "\r\n");
  wt_cat(o, h->buf + h->pre_len + h->mid_len, h->end_len);
  r->body_len = body_len;
  r->n_bufs = n_bufs;
  r->bufs[0] = (uv_buf_t){.base = head, .len = head_len};
  for (size_t i = 0; i < n_iov; i++) r->bufs[i + 1] = (uv_buf_t){.base = iov[i].iov_base, .len = iov[i].iov_len};
  r->pool = p;
  r->cb = cb;
  r->ud = ud;
  deadline_add(p, r);
  queue_push(p, r, 0);
  pump(p);
  return 0;
}

/* Fails everything queued and in flight with UV_ECANCELED and closes every connection. */
static void fail_all(be_pool_t *p) {
  for (be_req_t *r; (r = queue_pop(p)) != NULL;) req_finish(r, UV_ECANCELED, NULL, 0);
  while (p->conns) conn_close_finish(p->conns, UV_ECANCELED, NULL, 0, 0);
}

void be_pool_cancel(be_pool_t *p) {
  if (!p || p->destroying || p->cancelling) return;
  p->cancelling = 1;
  fail_all(p);
  p->cancelling = 0;
}

void be_pool_destroy(be_pool_t *p) {
  if (!p || p->destroying) return;
  p->destroying = 1;
  fail_all(p);
  dns_name_destroy(p->own_name); /* connections still waiting for it hear UV_ECANCELED later and go */
  p->own_name = NULL;
  pool_unref(p);
}
