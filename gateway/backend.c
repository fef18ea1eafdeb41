/* gateway/backend — see backend.h. */
#include "gateway/backend.h"

#include <llhttp.h>
#include <strings.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gateway/version.h"

#define BE_MAX_RESPONSE_BODY (64 * 1024)
#define BE_INLINE_BUFS 8

typedef struct be_conn be_conn_t;
typedef struct be_req be_req_t;

struct be_req {
  be_req_t *next;          /* queue link */
  be_pool_t *pool;
  be_conn_t *conn;         /* while on a connection */
  uv_timer_t timer;        /* request_timeout from be_send */
  be_done_cb cb;
  void *ud;
  int done;
  int retried;
  uv_buf_t *bufs;
  size_t n_bufs;
  uv_buf_t inline_bufs[BE_INLINE_BUFS];
  size_t head_len;
  size_t body_len;
  char head[];             /* request line + headers */
};

enum { CONN_RESOLVING, CONN_CONNECTING, CONN_IDLE, CONN_BUSY, CONN_CLOSED };

struct be_conn {
  uv_tcp_t tcp;
  uv_connect_t connect_req;
  uv_getaddrinfo_t gai;
  uv_write_t write_req;
  be_pool_t *pool;
  be_conn_t *prev, *next;  /* all connections */
  be_conn_t *idle_next;
  llhttp_t parser;
  be_req_t *req;
  int state;
  int reused;              /* carried a request before: a failure may be a stale keep-alive */
  int got_bytes;           /* response bytes seen for the current request */
  int tcp_inited;
  uint32_t retry_after;    /* Retry-After of the current response, seconds */
  int in_retry_after;      /* parsing the Retry-After header's value */
  uint8_t *body;
  size_t body_len;
  char read_buf[16384];
};

struct be_pool {
  uv_loop_t *loop;
  char *host;
  uint16_t port;
  char *extra_headers;     /* preformatted "Name: value\r\n"... */
  char host_header[300];
  uint32_t max_connections;
  uint64_t request_timeout_ms;
  be_conn_t *conns;
  be_conn_t *idle;
  be_req_t *q_head, *q_tail;
  size_t q_len;
  uint32_t n_conns, n_opening;
  be_stats_t stats;
  int destroying;
  int cancelling;
  int refs;                /* live conns + live requests + 1 until destroy */
  llhttp_settings_t settings;
};

static void pump(be_pool_t *p);
static void conn_close(be_conn_t *c);

int be_status_retryable(int status) {
  return status < 0 || status == 429 || status == 502 || status == 503 || status == 504;
}

const be_stats_t *be_pool_stats(const be_pool_t *p) { return &p->stats; }

static void pool_unref(be_pool_t *p) {
  if (--p->refs > 0) return;
  free(p->host);
  free(p->extra_headers);
  free(p);
}

/* ---- requests ----------------------------------------------------------------------------------------- */

static void on_req_timer_closed(uv_handle_t *h) {
  be_req_t *r = h->data;
  be_pool_t *p = r->pool;
  if (r->bufs != r->inline_bufs) free(r->bufs);
  free(r);
  pool_unref(p);
}

/* Completes r once: runs the callback, then frees r when its timer handle has closed. */
static void req_finish_ra(be_req_t *r, int status, const uint8_t *body, size_t len, uint32_t retry_after) {
  if (r->done) return;
  r->done = 1;
  if (r->conn) r->conn->req = NULL;
  r->conn = NULL;
  uv_timer_stop(&r->timer);
  r->cb(r->ud, status, body, len, retry_after);
  uv_close((uv_handle_t *)&r->timer, on_req_timer_closed);
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

static void on_req_timeout(uv_timer_t *t) {
  be_req_t *r = t->data;
  be_pool_t *p = r->pool;
  if (r->conn) {
    be_conn_t *c = r->conn;
    req_finish(r, UV_ETIMEDOUT, NULL, 0);
    conn_close(c); /* the response may still come: this connection's stream position is unknown */
  } else {
    queue_remove(p, r);
    req_finish(r, UV_ETIMEDOUT, NULL, 0);
  }
  pump(p);
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

static void conn_close(be_conn_t *c) {
  be_pool_t *p = c->pool;
  if (c->state == CONN_CLOSED) return;
  int was_open = c->state == CONN_IDLE || c->state == CONN_BUSY;
  int was_opening = c->state == CONN_RESOLVING || c->state == CONN_CONNECTING;
  if (c->state == CONN_IDLE) idle_remove(p, c);
  c->state = CONN_CLOSED;
  if (c->prev) c->prev->next = c->next; else p->conns = c->next;
  if (c->next) c->next->prev = c->prev;
  p->n_conns--;
  if (was_opening) p->n_opening--;
  if (was_open) p->stats.connections_open--;
  if (c->req) {
    be_req_t *r = c->req;
    c->req = NULL;
    r->conn = NULL;
    req_finish(r, UV_ECONNRESET, NULL, 0);
  }
  /* A connection without a TCP handle is still resolving: on_resolved frees it once getaddrinfo returns
   * (or the caller does, when resolving never started). */
  if (c->tcp_inited) uv_close((uv_handle_t *)&c->tcp, on_conn_closed);
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
  } else if (r) {
    c->req = NULL;
    r->conn = NULL;
    req_finish(r, err == UV_EOF ? UV_ECONNRESET : err, NULL, 0);
  }
  conn_close(c);
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

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
  be_conn_t *c = s->data;
  be_pool_t *p = c->pool;
  if (nread == 0) return;
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
  int keep = clean && llhttp_should_keep_alive(&c->parser);
  int status = llhttp_get_status_code(&c->parser);
  if (status < 200) { /* 1xx interim: llhttp treats it as a message; keep reading for the final one */
    llhttp_resume(&c->parser);
    if (!clean) {
      size_t rest = (size_t)(buf->base + nread - pos);
      uv_buf_t more = uv_buf_init((char *)pos, (unsigned)rest);
      on_read(s, (ssize_t)rest, &more);
    }
    return;
  }
  be_req_t *r = c->req;
  req_finish_ra(r, status, c->body, c->body_len, c->retry_after);
  c->body_len = 0;
  if (!keep || p->destroying) {
    conn_close(c);
  } else {
    c->state = CONN_IDLE;
    c->reused = 1;
    c->idle_next = p->idle;
    p->idle = c;
  }
  pump(p);
}

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  be_conn_t *c = h->data;
  *buf = uv_buf_init(c->read_buf, sizeof c->read_buf);
}

static void on_write(uv_write_t *w, int status) {
  be_conn_t *c = w->data;
  if (status < 0 && c->state == CONN_BUSY) conn_fail(c, status);
}

static void conn_assign(be_conn_t *c, be_req_t *r) {
  be_pool_t *p = c->pool;
  c->state = CONN_BUSY;
  c->req = r;
  c->got_bytes = 0;
  c->body_len = 0;
  c->retry_after = 0;
  c->in_retry_after = 0;
  r->conn = c;
  llhttp_init(&c->parser, HTTP_RESPONSE, &p->settings);
  c->parser.data = c;
  c->write_req.data = c;
  p->stats.requests++;
  int rc = uv_write(&c->write_req, (uv_stream_t *)&c->tcp, r->bufs, (unsigned)r->n_bufs, on_write);
  if (rc < 0) conn_fail(c, rc);
}

static void on_connect(uv_connect_t *cr, int status) {
  be_conn_t *c = cr->data;
  be_pool_t *p = c->pool;
  if (c->state == CONN_CLOSED) return; /* closed meanwhile (destroy) */
  if (status < 0) {
    conn_open_failed(c, status);
    pump(p);
    return;
  }
  p->n_opening--;
  p->stats.connections_open++;
  c->state = CONN_IDLE;
  uv_tcp_nodelay(&c->tcp, 1);
  uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, on_read);
  c->idle_next = p->idle;
  p->idle = c;
  pump(p);
}

static void on_resolved(uv_getaddrinfo_t *g, int status, struct addrinfo *res) {
  be_conn_t *c = g->data;
  be_pool_t *p = c->pool;
  if (c->state == CONN_CLOSED) { /* closed while resolving */
    uv_freeaddrinfo(res);
    conn_free_unopened(c);
    return;
  }
  if (status < 0 || !res) {
    uv_freeaddrinfo(res);
    conn_open_failed(c, status < 0 ? status : UV_EAI_NONAME);
    pump(p);
    return;
  }
  uv_tcp_init(p->loop, &c->tcp);
  c->tcp.data = c;
  c->tcp_inited = 1;
  c->state = CONN_CONNECTING;
  c->connect_req.data = c;
  /* One address per attempt; IPv4 first, so "localhost" reaches a collector bound to 127.0.0.1 on hosts
   * whose resolver lists ::1 first. Trying each address in turn is left for DNS discovery. */
  const struct addrinfo *ai = res;
  for (const struct addrinfo *x = res; x; x = x->ai_next)
    if (x->ai_family == AF_INET) {
      ai = x;
      break;
    }
  int rc = uv_tcp_connect(&c->connect_req, &c->tcp, ai->ai_addr, on_connect);
  uv_freeaddrinfo(res);
  if (rc < 0) {
    conn_open_failed(c, rc);
    pump(p);
  }
}

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
  c->gai.data = c;
  char port[8];
  snprintf(port, sizeof port, "%u", p->port);
  struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
  int rc = uv_getaddrinfo(p->loop, &c->gai, on_resolved, p->host, port, &hints);
  if (rc < 0) conn_open_failed(c, rc); /* no callback will come: free it here (pump called us) */
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

int be_pool_create(uv_loop_t *loop, const be_pool_config_t *cfg, be_pool_t **out) {
  be_pool_t *p = calloc(1, sizeof *p);
  if (!p) return UV_ENOMEM;
  p->loop = loop;
  p->host = strdup(cfg->host);
  p->port = cfg->port;
  p->max_connections = cfg->max_connections ? cfg->max_connections : 1;
  p->request_timeout_ms = cfg->request_timeout_ms;
  p->refs = 1;
  if (strchr(cfg->host, ':')) snprintf(p->host_header, sizeof p->host_header, "[%s]:%u", cfg->host, cfg->port);
  else snprintf(p->host_header, sizeof p->host_header, "%s:%u", cfg->host, cfg->port);
  size_t n = 1;
  for (size_t i = 0; i < cfg->n_headers; i++) n += strlen(cfg->headers[i].name) + strlen(cfg->headers[i].value) + 4;
  p->extra_headers = malloc(n);
  if (!p->host || !p->extra_headers) {
    free(p->host);
    free(p->extra_headers);
    free(p);
    return UV_ENOMEM;
  }
  size_t off = 0;
  for (size_t i = 0; i < cfg->n_headers; i++)
    off += (size_t)sprintf(p->extra_headers + off, "%s: %s\r\n", cfg->headers[i].name, cfg->headers[i].value);
  p->extra_headers[off] = 0;
  llhttp_settings_init(&p->settings);
  p->settings.on_body = on_body;
  p->settings.on_message_complete = on_message_complete;
  p->settings.on_header_field = on_header_field;
  p->settings.on_header_value = on_header_value;
  *out = p;
  return 0;
}

int be_send(be_pool_t *p, const char *path, const char *content_type, const char *content_encoding,
            const struct iovec *iov, size_t n_iov, be_done_cb cb, void *ud) {
  if (p->destroying || p->cancelling) return UV_ECANCELED;
  size_t body_len = 0;
  for (size_t i = 0; i < n_iov; i++) body_len += iov[i].iov_len;
  size_t cap = 256 + strlen(path) + strlen(p->host_header) + strlen(content_type) +
               (content_encoding ? strlen(content_encoding) : 0) + strlen(p->extra_headers);
  be_req_t *r = malloc(sizeof *r + cap);
  if (!r) return UV_ENOMEM;
  memset(r, 0, sizeof *r);
  int hl = snprintf(r->head, cap,
                    "POST %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: otlp-gateway/%s\r\nContent-Type: %s\r\n"
                    "%s%s%sContent-Length: %zu\r\n%s\r\n",
                    path, p->host_header, OTLPGW_VERSION, content_type, content_encoding ? "Content-Encoding: " : "",
                    content_encoding ? content_encoding : "", content_encoding ? "\r\n" : "", body_len,
                    p->extra_headers);
  if (hl < 0 || (size_t)hl >= cap) {
    free(r);
    return UV_EINVAL;
  }
  r->head_len = (size_t)hl;
  r->body_len = body_len;
  r->n_bufs = n_iov + 1;
  r->bufs = r->n_bufs <= BE_INLINE_BUFS ? r->inline_bufs : malloc(r->n_bufs * sizeof *r->bufs);
  if (!r->bufs) {
    free(r);
    return UV_ENOMEM;
  }
  r->bufs[0] = uv_buf_init(r->head, (unsigned)r->head_len);
  for (size_t i = 0; i < n_iov; i++) r->bufs[i + 1] = uv_buf_init(iov[i].iov_base, (unsigned)iov[i].iov_len);
  r->pool = p;
  r->cb = cb;
  r->ud = ud;
  uv_timer_init(p->loop, &r->timer);
  r->timer.data = r;
  if (p->request_timeout_ms) uv_timer_start(&r->timer, on_req_timeout, p->request_timeout_ms, 0);
  p->refs++;
  queue_push(p, r, 0);
  pump(p);
  return 0;
}

/* Fails everything queued and in flight with UV_ECANCELED and closes every connection. */
static void fail_all(be_pool_t *p) {
  for (be_req_t *r; (r = queue_pop(p)) != NULL;) req_finish(r, UV_ECANCELED, NULL, 0);
  while (p->conns) {
    be_conn_t *c = p->conns;
    if (c->req) {
      be_req_t *r = c->req;
      c->req = NULL;
      r->conn = NULL;
      req_finish(r, UV_ECANCELED, NULL, 0);
    }
    conn_close(c);
  }
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
  pool_unref(p);
}
