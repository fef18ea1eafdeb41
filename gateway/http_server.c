/*
 * gateway/http_server — HTTP/1.1 server on libuv + llhttp. See http_server.h for the contract.
 *
 * Per connection the parser runs over the bytes as they arrive. When a request is complete the parser is
 * paused (HPE_PAUSED from on_message_complete), reading stops, and the request is handed to the handler.
 * Bytes that arrived after it (pipelined requests) are kept in conn->leftover and parsed once the response
 * is written. So a connection has at most one request at the handler, responses leave in request order,
 * and a pipelining client is held back by TCP flow control instead of by our memory.
 *
 * Reads land in one 64 KiB buffer per server (libuv calls alloc_cb and read_cb back to back for one
 * stream), except the body of a Content-Length request, which is read straight into the request's body
 * buffer: one copy fewer on the hot path.
 */
#include "gateway/http_server.h"

#include <errno.h>
#include <unistd.h>
#include <llhttp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "gateway/log.h"
#include "gateway/wire_text.h"

#define HS_READ_BUF_SIZE (64 * 1024)
/* A Content-Length body that arrived whole in one read of at least this size is not copied: the request takes
 * the read buffer and the server reads on into a fresh one (smaller bodies are copied, so a request never
 * holds more than 4x its body). */
#define HS_ADOPT_MIN (HS_READ_BUF_SIZE / 4)
#define HS_LINGER_MS 2000 /* after a closing response, how long we keep draining the client's bytes */
#define HS_MEMORY_LOG_REPEAT_NS (10ull * 1000 * 1000 * 1000) /* memory refusals: one warn line per server per 10 s */
/* What an HTTP/2 client (prior knowledge: it opens with the connection preface "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
 * gets on a server whose config names no answer of its own (hs_config_t.h2_answer). */
#define HS_H2_PREFACE_ANSWER "this port speaks HTTP/1.1; HTTP/2 is not served here"
#define HS_H2_LOG_REPEAT_NS (10ull * 1000 * 1000 * 1000) /* at most one such warn line per server per 10 s */
#define HS_TLS_LOG_REPEAT_NS (10ull * 1000 * 1000 * 1000) /* failed TLS handshakes: one warn line per server per 10 s */

typedef struct hs_req hs_req_t;

struct hs_server {
  uv_loop_t *loop;
  hs_config_t cfg;
  uv_tcp_t listener;
  int listening;
  int shutting_down;
  void (*shutdown_done)(void *);
  void *shutdown_ud;
  char addr[80];
  uint16_t port;
  hs_stats_t stats;
  hs_conn_t *conns;     /* every live connection, for shutdown */
  llhttp_settings_t settings;
  char date[40];        /* cached "Date: ..." value */
  time_t date_at;
  char *read_buf;       /* HS_READ_BUF_SIZE bytes; handed to a request whose body it holds whole */
  gw_log_limit_t log_memory; /* bodies the memory budget refused */
  gw_log_limit_t log_h2; /* HTTP/2 prefaces seen (the server runs on one loop: no lock needed) */
  gw_log_limit_t log_tls; /* failed TLS handshakes */
};

/* TIMER_HANDSHAKE: a TLS connection whose handshake has not completed (closed when it fires). */
enum { TIMER_NONE, TIMER_IDLE, TIMER_READ, TIMER_LINGER, TIMER_HANDSHAKE };

struct hs_conn {
  tp_t tp;              /* the connection (plain or TLS); tp.tcp.data = the conn. An adopted fd is opened on it too */
  uv_timer_t timer;
  uv_shutdown_t shutdown_req;
  hs_server_t *srv;
  hs_conn_t *prev, *next;
  llhttp_t parser;
  hs_req_t *req;        /* being parsed */
  hs_req_t *pending;    /* at the handler, not yet answered */
  char *leftover;       /* bytes after the pending request, parsed once it is answered */
  size_t leftover_len;
  int refs;             /* 2 handles + 1 per request still referencing the conn */
  int writes;           /* writes in flight */
  int timer_mode;
  int err_status;       /* status to answer when a callback stopped the parser */
  unsigned closed : 1;      /* uv_close called */
  unsigned close_after : 1; /* close once the pending writes are done */
  unsigned lingering : 1;   /* shutdown sent, draining input until EOF or timer */
  unsigned paused : 1;      /* parser paused on a complete request */
  unsigned stop_quiet : 1;  /* a callback stopped the parser after an answer that ends the connection */
  unsigned handshaking : 1; /* TLS, handshake not seen complete yet */
};

struct hs_req {
  hs_request_t pub;
  hs_conn_t *conn;      /* NULL once the connection is gone */
  size_t body_cap;
  char *owned_buf;      /* the read buffer the body lies in, when it was adopted rather than copied */
  size_t discarded;     /* body bytes dropped after an early answer */
  uint64_t reserved;    /* bytes charged to the memory budget (cfg.mem_reserve), given back in req_free */
  int (*mem_reserve)(uint64_t bytes, uint64_t total, int force, void *mem_ud); /* copied from the config: */
  void (*mem_release)(uint64_t bytes, void *mem_ud); /* a request may outlive its server (answered late) */
  void *mem_ud;
  int answered;         /* hs_respond called */
  int complete;         /* parser finished the message */
  int expect_continue;
  int keep_alive;
  int in_field;
  char *field_start;
  size_t hdr_len;
  char hdr[HS_MAX_HEADER_BYTES];
};

typedef struct hs_write {
  uv_write_t w;
  hs_conn_t *conn;
  size_t len;
  char data[];
} hs_write_t;

static void conn_close(hs_conn_t *c);
static void conn_execute(hs_conn_t *c, const char *data, size_t len);
static void conn_answer_error(hs_conn_t *c, int status, const char *msg);

/* ---- small helpers ------------------------------------------------------------------------------------ */

/* The statuses with a reason phrase of their own (any other is "Unknown"): one list for hs_status_reason and the
 * precomputed status lines of format_head. */
#define HS_STATUSES(X)                                                                                        \
  X(100, "Continue") X(200, "OK") X(202, "Accepted") X(204, "No Content") X(400, "Bad Request")               \
  X(401, "Unauthorized") X(403, "Forbidden") X(404, "Not Found") X(405, "Method Not Allowed")                  \
  X(408, "Request Timeout") X(411, "Length Required") X(413, "Content Too Large")                             \
  X(415, "Unsupported Media Type") X(429, "Too Many Requests") X(431, "Request Header Fields Too Large")       \
  X(500, "Internal Server Error") X(501, "Not Implemented") X(502, "Bad Gateway")                             \
  X(503, "Service Unavailable") X(504, "Gateway Timeout")

const char *hs_status_reason(int status) {
  switch (status) {
#define HS_REASON(code, reason) \
  case code: return reason;
    HS_STATUSES(HS_REASON)
#undef HS_REASON
    default: return "Unknown";
  }
}

int hs_slice_eq(hs_slice_t s, const char *lit) {
  size_t n = strlen(lit);
  return s.len == n && strncasecmp(s.base, lit, n) == 0;
}

const hs_slice_t *hs_request_header(const hs_request_t *req, const char *name) {
  for (size_t i = 0; i < req->n_headers; i++)
    if (hs_slice_eq(req->headers[i].name, name)) return &req->headers[i].value;
  return NULL;
}

int hs_request_gone(const hs_request_t *req) {
  const hs_req_t *r = (const hs_req_t *)req;
  return r->conn == NULL || r->conn->closed;
}

static const char *date_header(hs_server_t *s) {
  time_t now = time(NULL);
  if (now != s->date_at) {
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(s->date, sizeof s->date, "%a, %d %b %Y %H:%M:%S GMT", &tm);
    s->date_at = now;
  }
  return s->date;
}

static void req_free(hs_req_t *r) {
  if (!r) return;
  if (r->owned_buf) free(r->owned_buf);
  else free(r->pub.body);
  if (r->reserved) r->mem_release(r->reserved, r->mem_ud);
  free(r);
}

/* Charges bytes more to r's share of the memory budget; 0, or -1 refused (nothing charged). */
static int req_reserve(hs_req_t *r, uint64_t bytes, int force) {
  if (!r->mem_reserve || bytes == 0) return 0;
  if (r->mem_reserve(bytes, r->reserved + bytes, force, r->mem_ud) != 0) return -1;
  r->reserved += bytes;
  return 0;
}

static void req_unreserve(hs_req_t *r, uint64_t bytes) {
  if (!r->mem_reserve || bytes == 0) return;
  r->mem_release(bytes, r->mem_ud);
  r->reserved -= bytes;
}

int hs_request_reserve(hs_request_t *req, uint64_t bytes, int force) {
  return req_reserve((hs_req_t *)req, bytes, force);
}

/* Drops r's reference on its connection, freeing the connection when it was the last one. */
static void conn_unref(hs_conn_t *c) {
  if (--c->refs > 0) return;
  free(c->leftover);
  free(c);
}

static void req_release(hs_req_t *r) {
  hs_conn_t *c = r->conn;
  if (c && c->req == r) c->req = NULL;
  if (c && c->pending == r) c->pending = NULL;
  req_free(r);
  if (c) conn_unref(c);
}

/* ---- timers ------------------------------------------------------------------------------------------- */

/* How long a TLS handshake may take: it is the start of a request on a connection that has none yet, so the
 * earlier of the two deadlines that are set (a client that connects and sends nothing, or half a handshake). */
static uint64_t handshake_timeout_ms(const hs_config_t *cfg) {
  uint64_t r = cfg->read_timeout_ms, i = cfg->idle_timeout_ms;
  return r && i ? (r < i ? r : i) : r ? r : i;
}

static void timer_arm(hs_conn_t *c, int mode, uint64_t ms);

static void on_timer(uv_timer_t *t) {
  hs_conn_t *c = t->data;
  int mode = c->timer_mode;
  c->timer_mode = TIMER_NONE;
  if (mode == TIMER_READ && c->req && !c->req->answered) {
    conn_answer_error(c, 408, "request not received within read_timeout");
  } else if (mode == TIMER_HANDSHAKE && !c->closed && !c->close_after && !c->req && tp_handshake_done(&c->tp)) {
    /* The handshake completed but no byte followed (the transport reports no completion of its own): idle since
     * accept, for what is left of idle_timeout. */
    uint64_t hs = handshake_timeout_ms(&c->srv->cfg), idle = c->srv->cfg.idle_timeout_ms;
    if (idle > hs) timer_arm(c, TIMER_IDLE, idle - hs);
    else conn_close(c);
  } else {
    conn_close(c);
  }
}

static void timer_arm(hs_conn_t *c, int mode, uint64_t ms) {
  if (c->closed) return;
  if (ms == 0) {
    uv_timer_stop(&c->timer);
    c->timer_mode = TIMER_NONE;
    return;
  }
  c->timer_mode = mode;
  uv_timer_start(&c->timer, on_timer, ms, 0);
}

static void timer_stop(hs_conn_t *c) {
  if (c->closed) return;
  c->timer_mode = TIMER_NONE;
  uv_timer_stop(&c->timer);
}

/* ---- closing ------------------------------------------------------------------------------------------ */

static void maybe_shutdown_done(hs_server_t *s) {
  if (s->shutting_down && s->stats.connections_open == 0 && !s->listening && s->shutdown_done) {
    void (*done)(void *) = s->shutdown_done;
    s->shutdown_done = NULL;
    done(s->shutdown_ud);
  }
}

static void on_handle_closed(uv_handle_t *h) {
  hs_conn_t *c = h->data;
  conn_unref(c);
}

static void conn_close(hs_conn_t *c) {
  if (c->closed) return;
  hs_server_t *s = c->srv;
  c->closed = 1;
  if (c->prev) c->prev->next = c->next; else s->conns = c->next;
  if (c->next) c->next->prev = c->prev;
  s->stats.connections_open--;
  if (s->cfg.shared_connections) atomic_fetch_sub(s->cfg.shared_connections, 1);
  /* A request being parsed is ours alone; one at the handler stays until it is answered. */
  if (c->req) {
    hs_req_t *r = c->req;
    c->req = NULL;
    req_release(r);
  }
  tp_close(&c->tp, on_handle_closed);
  uv_close((uv_handle_t *)&c->timer, on_handle_closed);
  maybe_shutdown_done(s);
}

static void linger_alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  hs_conn_t *c = h->data;
  *buf = uv_buf_init(c->srv->read_buf, HS_READ_BUF_SIZE);
}

static void on_linger_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf) {
  if (nread < 0) conn_close(st->data);
}

static void on_shutdown(uv_shutdown_t *sr, int status) {
  hs_conn_t *c = sr->data;
  if (status < 0) conn_close(c);
}

/* Half-closes after the last response and drains what the client still sends, so that a client that is
 * still writing its body reads our response instead of a connection reset. */
static void conn_linger(hs_conn_t *c) {
  if (c->closed || c->lingering) return;
  c->lingering = 1;
  c->shutdown_req.data = c;
  if (tp_shutdown(&c->shutdown_req, &c->tp, on_shutdown) != 0) {
    conn_close(c);
    return;
  }
  tp_read_stop(&c->tp);
  tp_read_start(&c->tp, linger_alloc_cb, on_linger_read);
  timer_arm(c, TIMER_LINGER, HS_LINGER_MS);
}

/* ---- writing ------------------------------------------------------------------------------------------ */

static void resume_reading(hs_conn_t *c);

static void on_write(uv_write_t *w, int status) {
  hs_write_t *hw = (hs_write_t *)w;
  hs_conn_t *c = hw->conn;
  free(hw);
  c->writes--;
  if (status < 0) {
    conn_close(c);
  } else if (!c->closed && c->writes == 0) {
    if (c->close_after) conn_linger(c);
    else if (c->paused && !c->pending) resume_reading(c);
  }
  conn_unref(c);
}

static int conn_write(hs_conn_t *c, const char *head, size_t head_len, const void *body, size_t body_len) {
  hs_write_t *hw = malloc(sizeof *hw + head_len + body_len);
  if (!hw) return UV_ENOMEM;
  memcpy(hw->data, head, head_len);
  if (body_len) memcpy(hw->data + head_len, body, body_len);
  hw->len = head_len + body_len;
  hw->conn = c;
  uv_buf_t buf = uv_buf_init(hw->data, (unsigned)hw->len);
  int rc = tp_write(&hw->w, &c->tp, &buf, 1, on_write);
  if (rc < 0) {
    free(hw);
    return rc;
  }
  c->writes++;
  c->refs++;
  return 0;
}

/* "HTTP/1.1 <status> <reason>\r\n": a constant for the statuses HS_STATUSES names, else built in tmp (48 bytes). */
static hs_slice_t status_line(int status, char *tmp) {
  switch (status) {
#define HS_LINE(code, reason) \
  case code: return (hs_slice_t){"HTTP/1.1 " #code " " reason "\r\n", sizeof "HTTP/1.1 " #code " " reason "\r\n" - 1};
    HS_STATUSES(HS_LINE)
#undef HS_LINE
    default: break;
  }
  size_t n = WT_LIT(tmp, "HTTP/1.1 ");
  if (status < 0) tmp[n++] = '-';
  n += wt_u64(tmp + n, status < 0 ? -(uint64_t)status : (uint64_t)status);
  n += WT_LIT(tmp + n, " Unknown\r\n");
  return (hs_slice_t){tmp, n};
}

/* The response head "HTTP/1.1 <status> <reason>\r\nDate: ..\r\nContent-Length: <n>\r\n[Content-Type: ..\r\n]
 * [<extra>: ..\r\n]...[Connection: close\r\n]\r\n" into out, with memcpy; its length, or -1 when it does not fit
 * in cap - 1 bytes. */
static int format_head(hs_server_t *s, char *out, size_t cap, int status, const char *content_type,
                       const hs_header_t *extra, size_t n_extra, size_t body_len, int close) {
  static const char date[] = "Date: ", length[] = "\r\nContent-Length: ", type[] = "Content-Type: ",
                    closing[] = "Connection: close\r\n";
  char tmp[48], num[20];
  hs_slice_t line = status_line(status, tmp);
  const char *d = date_header(s);
  size_t d_len = strlen(d), num_len = wt_u64(num, body_len), ct_len = content_type ? strlen(content_type) : 0;
  size_t len = line.len + sizeof date - 1 + d_len + sizeof length - 1 + num_len + 2 +
               (content_type ? sizeof type - 1 + ct_len + 2 : 0) + (close ? sizeof closing - 1 : 0) + 2;
  for (size_t i = 0; i < n_extra; i++) len += extra[i].name.len + extra[i].value.len + 4;
  if (len >= cap) return -1;
  char *o = out;
  o += wt_cat(o, line.base, line.len);
  o += WT_LIT(o, date);
  o += wt_cat(o, d, d_len);
  o += WT_LIT(o, length);
  o += wt_cat(o, num, num_len);
  o += WT_LIT(o, "\r\n");
  if (content_type) {
    o += WT_LIT(o, type);
    o += wt_cat(o, content_type, ct_len);
    o += WT_LIT(o, "\r\n");
  }
  for (size_t i = 0; i < n_extra; i++) {
    o += wt_cat(o, extra[i].name.base, extra[i].name.len);
    o += WT_LIT(o, ": ");
    o += wt_cat(o, extra[i].value.base, extra[i].value.len);
    o += WT_LIT(o, "\r\n");
  }
  if (close) o += WT_LIT(o, closing);
  WT_LIT(o, "\r\n");
  return (int)len;
}

int hs_respond(hs_request_t *req, int status, const char *content_type, const hs_header_t *extra,
               size_t n_extra, const void *body, size_t body_len) {
  hs_req_t *r = (hs_req_t *)req;
  hs_conn_t *c = r->conn;
  if (r->answered) return UV_EINVAL; /* a handler bug: never answer twice */
  r->answered = 1;
  if (!c || c->closed) {
    req_release(r);
    return UV_ECANCELED;
  }
  hs_server_t *s = c->srv;
  /* An early answer before the body: with Expect: 100-continue the client will not send the body, so
   * the connection cannot be reused; otherwise the body is read and dropped. */
  if (!r->complete && r->expect_continue) c->close_after = 1;
  if (r->complete && !r->keep_alive) c->close_after = 1;
  if (s->shutting_down) c->close_after = 1;
  char head[2048];
  int hl = format_head(s, head, sizeof head, status, content_type, extra, n_extra, body_len, c->close_after);
  int rc = hl < 0 ? UV_EINVAL : conn_write(c, head, (size_t)hl, body, body_len);
  if (rc < 0) {
    if (r->complete) req_release(r); /* else it is c->req, released by conn_close */
    conn_close(c);
    return rc;
  }
  if (r->complete) {
    req_release(r);    /* the write owns copies of everything */
  }
  /* else: still parsing its body (discarding); released in on_message_complete */
  return 0;
}

/* Answers a framing error detected by the server itself and closes the connection. */
static void conn_answer_error(hs_conn_t *c, int status, const char *msg) {
  hs_server_t *s = c->srv;
  s->stats.framing_errors++;
  c->close_after = 1;
  timer_stop(c);
  if (c->req && c->req->answered) {
    /* The request already has its (early) answer: never a second response, just end the connection. */
    hs_req_t *r = c->req;
    c->req = NULL;
    req_release(r);
    tp_read_stop(&c->tp);
    if (c->writes == 0) conn_linger(c);
    return;
  }
  char body[1200];
  const char *ctype = "text/plain";
  size_t bl = 0;
  if (s->cfg.error_body)
    bl = s->cfg.error_body(c->req ? &c->req->pub : NULL, status, msg, body, sizeof body, &ctype, s->cfg.ud);
  if (bl == 0) {
    ctype = "text/plain";
    int n = snprintf(body, sizeof body, "%s\n", msg);
    bl = n < 0 ? 0 : (size_t)n >= sizeof body ? sizeof body - 1 : (size_t)n;
  }
  if (c->req) {
    hs_req_t *r = c->req;
    c->req = NULL;
    req_release(r);
  }
  char head[512];
  int hl = format_head(s, head, sizeof head, status, ctype, NULL, 0, bl, 1);
  if (hl < 0 || conn_write(c, head, (size_t)hl, body, bl) < 0) conn_close(c);
  else tp_read_stop(&c->tp);
}

/* ---- llhttp callbacks ----------------------------------------------------------------------------------- */

#define CONN(p) ((hs_conn_t *)(p)->data)

static int hdr_append(hs_conn_t *c, const char *at, size_t len) {
  hs_req_t *r = c->req;
  if (len > sizeof r->hdr - r->hdr_len) {
    c->err_status = 431;
    return HPE_USER;
  }
  memcpy(r->hdr + r->hdr_len, at, len);
  r->hdr_len += len;
  return 0;
}

static int on_message_begin(llhttp_t *p) {
  hs_conn_t *c = CONN(p);
  hs_req_t *r = malloc(sizeof *r);
  if (!r) {
    c->err_status = 500;
    return HPE_USER;
  }
  memset(r, 0, offsetof(hs_req_t, hdr));
  r->conn = c;
  if (c->srv->cfg.mem_reserve && c->srv->cfg.mem_release) {
    r->mem_reserve = c->srv->cfg.mem_reserve;
    r->mem_release = c->srv->cfg.mem_release;
    r->mem_ud = c->srv->cfg.mem_ud;
  }
  r->pub.start_ns = uv_hrtime();
  r->pub.content_length = HS_LEN_NONE;
  r->pub.path.base = r->hdr; /* the URL is the first thing stored; its length grows in on_url */
  c->req = r;
  c->refs++;
  timer_arm(c, TIMER_READ, c->srv->cfg.read_timeout_ms);
  return 0;
}

static int on_url(llhttp_t *p, const char *at, size_t len) {
  hs_conn_t *c = CONN(p);
  int rc = hdr_append(c, at, len);
  if (rc == 0) c->req->pub.path.len += len;
  return rc;
}

static int on_header_field(llhttp_t *p, const char *at, size_t len) {
  hs_conn_t *c = CONN(p);
  hs_req_t *r = c->req;
  if (!r->in_field) {
    if (r->pub.n_headers == HS_MAX_HEADERS) {
      c->err_status = 431;
      return HPE_USER;
    }
    r->in_field = 1;
    r->field_start = r->hdr + r->hdr_len;
  }
  return hdr_append(c, at, len);
}

static int on_header_field_complete(llhttp_t *p) {
  hs_req_t *r = CONN(p)->req;
  hs_header_t *h = &r->pub.headers[r->pub.n_headers];
  h->name.base = r->field_start ? r->field_start : r->hdr + r->hdr_len;
  h->name.len = (size_t)(r->hdr + r->hdr_len - h->name.base);
  h->value.base = r->hdr + r->hdr_len;
  h->value.len = 0;
  r->in_field = 0;
  r->field_start = NULL;
  return 0;
}

static int on_header_value(llhttp_t *p, const char *at, size_t len) {
  hs_conn_t *c = CONN(p);
  int rc = hdr_append(c, at, len);
  if (rc == 0) c->req->pub.headers[c->req->pub.n_headers].value.len += len;
  return rc;
}

static int on_header_value_complete(llhttp_t *p) {
  CONN(p)->req->pub.n_headers++;
  return 0;
}

/* The memory budget refused r's body (before or while it is read): 503 + Retry-After now, like an early answer
 * from on_headers, so the rest of the body is read and discarded and the client reads the answer instead of a
 * reset. What r holds is given back at once. Returns 0 to go on parsing, or HPE_USER when the connection ends
 * (Expect: 100-continue, or the write failed). */
static int refuse_body(hs_conn_t *c, hs_req_t *r, uint64_t wanted) {
  hs_server_t *s = c->srv;
  hs_request_t *q = &r->pub;
  s->stats.memory_refused++;
  uint64_t held = 0;
  if (gw_log_limit_take(&s->log_memory, uv_hrtime(), HS_MEMORY_LOG_REPEAT_NS, &held))
    gw_log(GW_LOG_WARN, "memory limit reached, request refused", "server", s->cfg.name, "stage", "body",
           "request_bytes", gw_log_u64(r->reserved + wanted), "client_answer", "503", "suppressed_since_last",
           gw_log_u64(held), NULL);
  if (!r->owned_buf) free(q->body);
  q->body = NULL;
  q->body_len = 0;
  r->body_cap = 0;
  req_unreserve(r, r->reserved);
  static const char msg[] = "memory limit reached: retry later";
  char body[1200];
  const char *ctype = "text/plain";
  size_t bl = 0;
  if (s->cfg.error_body) bl = s->cfg.error_body(q, 503, msg, body, sizeof body, &ctype, s->cfg.ud);
  if (bl == 0) {
    ctype = "text/plain";
    bl = (size_t)snprintf(body, sizeof body, "%s\n", msg);
  }
  char ra[16];
  int n = snprintf(ra, sizeof ra, "%u", s->cfg.mem_retry_after_s ? s->cfg.mem_retry_after_s : 1);
  hs_header_t retry_after = {{"Retry-After", 11}, {ra, (size_t)n}};
  hs_respond(q, 503, ctype, &retry_after, 1, body, bl);
  if (c->closed || c->close_after) {
    c->stop_quiet = 1;
    return HPE_USER; /* as after an early answer from on_headers: nothing more is read */
  }
  return 0;
}

static int on_headers_complete(llhttp_t *p) {
  hs_conn_t *c = CONN(p);
  hs_server_t *s = c->srv;
  hs_req_t *r = c->req;
  hs_request_t *q = &r->pub;
  q->path.base = r->hdr;
  size_t target_len = q->path.len;
  q->query = (hs_slice_t){NULL, 0};
  for (size_t i = 0; i < target_len; i++)
    if (r->hdr[i] == '?' || r->hdr[i] == '#') {
      q->path.len = i;
      if (r->hdr[i] == '?') {
        size_t e = i + 1;
        while (e < target_len && r->hdr[e] != '#') e++;
        q->query = (hs_slice_t){r->hdr + i + 1, e - i - 1};
      }
      break;
    }
  q->method = llhttp_get_method(p);
  if (p->flags & F_CHUNKED) q->content_length = HS_LEN_CHUNKED;
  else if (p->flags & F_CONTENT_LENGTH) q->content_length = p->content_length;
  if (q->content_length != HS_LEN_CHUNKED && q->content_length != HS_LEN_NONE &&
      q->content_length > s->cfg.max_body_bytes) {
    c->err_status = 413;
    return HPE_USER;
  }
  const hs_slice_t *expect = hs_request_header(q, "Expect");
  r->expect_continue = expect && hs_slice_eq(*expect, "100-continue");
  if (s->cfg.on_headers && s->cfg.on_headers(q, s->cfg.ud)) {
    /* Answered from the headers; the body (if any) is discarded. With 100-continue the client sends
     * no body and hs_respond marked the connection to close. If the answer could not be written, hs_respond
     * closed the connection and released the request: nothing may be parsed into it. */
    if (c->close_after || c->closed) {
      c->stop_quiet = 1;
      return HPE_USER; /* stop parsing: nothing more is read on this connection */
    }
    return 0;
  }
  /* A Content-Length body is charged in full before its first byte is read (a chunked one as it grows). */
  if (q->content_length < HS_LEN_CHUNKED && req_reserve(r, q->content_length, 0) != 0)
    return refuse_body(c, r, q->content_length);
  if (r->expect_continue && q->content_length != 0) {
    static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
    if (conn_write(c, cont, sizeof cont - 1, NULL, 0) < 0) {
      c->err_status = 500;
      return HPE_USER;
    }
  }
  /* A Content-Length body is allocated when its first bytes arrive (on_body), so a body that came whole in
   * the current read can take the read buffer instead of being copied. */
  return 0;
}

static int on_body(llhttp_t *p, const char *at, size_t len) {
  hs_conn_t *c = CONN(p);
  hs_req_t *r = c->req;
  hs_request_t *q = &r->pub;
  if (r->answered) {
    r->discarded += len;
    return 0;
  }
  if (q->body && (const uint8_t *)at == q->body + q->body_len && q->body_len + len <= r->body_cap) {
    q->body_len += len; /* read straight into the body buffer (see alloc_cb) */
    return 0;
  }
  if (!q->body && q->content_length < HS_LEN_CHUNKED) { /* the first bytes of a Content-Length body */
    hs_server_t *s = c->srv;
    /* All of it is in this read: the request keeps the buffer (charged whole), the server reads into a new one. */
    if (len == q->content_length && len >= HS_ADOPT_MIN && at >= s->read_buf &&
        at + len <= s->read_buf + HS_READ_BUF_SIZE && req_reserve(r, HS_READ_BUF_SIZE - len, 0) == 0) {
      char *fresh = malloc(HS_READ_BUF_SIZE);
      if (fresh) {
        r->owned_buf = s->read_buf;
        s->read_buf = fresh;
        q->body = (uint8_t *)at;
        q->body_len = len;
        r->body_cap = len;
        return 0;
      }
      req_unreserve(r, HS_READ_BUF_SIZE - len);
    }
    if (!(q->body = malloc(q->content_length))) {
      c->err_status = 500;
      return HPE_USER;
    }
    r->body_cap = q->content_length;
  }
  if (len > c->srv->cfg.max_body_bytes - q->body_len) {
    c->err_status = 413;
    return HPE_USER;
  }
  if (q->body_len + len > r->body_cap) {
    size_t cap = r->body_cap ? r->body_cap : 16 * 1024;
    while (cap < q->body_len + len) cap *= 2;
    if (cap > c->srv->cfg.max_body_bytes) cap = c->srv->cfg.max_body_bytes;
    if (req_reserve(r, cap - r->body_cap, 0) != 0) { /* a chunked body outgrew the memory budget */
      int rc = refuse_body(c, r, cap - r->body_cap);
      if (rc == 0) r->discarded += len;
      return rc;
    }
    uint8_t *nb = realloc(q->body, cap);
    if (!nb) {
      req_unreserve(r, cap - r->body_cap);
      c->err_status = 500;
      return HPE_USER;
    }
    q->body = nb;
    r->body_cap = cap;
  }
  memcpy(q->body + q->body_len, at, len);
  q->body_len += len;
  return 0;
}

static int on_message_complete(llhttp_t *p) {
  hs_conn_t *c = CONN(p);
  hs_req_t *r = c->req;
  timer_stop(c);
  r->complete = 1;
  r->keep_alive = llhttp_should_keep_alive(p);
  c->req = NULL;
  if (r->answered) {
    if (!r->keep_alive) c->close_after = 1;
    req_free(r);
    conn_unref(c);
    if (c->close_after) {
      c->stop_quiet = 1;
      return HPE_USER;
    }
    return 0;
  }
  c->pending = r;
  c->srv->stats.requests++;
  return HPE_PAUSED;
}

/* ---- reading ------------------------------------------------------------------------------------------ */

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  hs_conn_t *c = h->data;
  hs_req_t *r = c->req;
  if (r && !r->answered && r->pub.content_length < HS_LEN_CHUNKED && r->pub.body &&
      r->pub.body_len < r->body_cap && !c->lingering &&
      llhttp_get_errno(&c->parser) == HPE_OK) {
    /* Body of a Content-Length request: read in place. The parser sees exactly these bytes and
     * on_body recognises them by address. */
    *buf = uv_buf_init((char *)r->pub.body + r->pub.body_len, (unsigned)(r->body_cap - r->pub.body_len));
    return;
  }
  *buf = uv_buf_init(c->srv->read_buf, HS_READ_BUF_SIZE);
}


/* A TLS handshake failed (or settled on an ALPN protocol other than ours): counted by reason, a rate-limited warn
 * line; the caller closes the connection. */
static void conn_tls_failed(hs_conn_t *c, tls_fail_t why, const char *detail) {
  hs_server_t *s = c->srv;
  if ((unsigned)why >= TLS_N_FAIL_REASONS) why = TLS_FAIL_PROTOCOL;
  s->stats.tls_handshake_failures[why]++;
  uint64_t held = 0;
  if (gw_log_limit_take(&s->log_tls, uv_hrtime(), HS_TLS_LOG_REPEAT_NS, &held)) {
    char peer[80];
    gw_log(GW_LOG_WARN, "TLS handshake failed", "server", s->cfg.name, "peer", tp_peer_name(&c->tp, peer, sizeof peer),
           "reason", tls_fail_label(why), "detail", detail, "suppressed_since_last", gw_log_u64(held), NULL);
  }
}

/* The handshake completed: the client must speak HTTP/1.1 if it negotiated anything. Returns 0 to go on. */
static int conn_handshake_done(hs_conn_t *c) {
  c->handshaking = 0;
  const char *alpn = tp_alpn(&c->tp);
  if (alpn[0] && strcmp(alpn, "http/1.1") != 0) {
    char detail[96];
    snprintf(detail, sizeof detail, "negotiated ALPN \"%s\", this port speaks http/1.1", alpn);
    conn_tls_failed(c, TLS_FAIL_ALPN, detail);
    conn_close(c);
    return -1;
  }
  /* Still no request: from here the connection is idle, as a plaintext one after accept. */
  if (!c->req && c->timer_mode == TIMER_HANDSHAKE) timer_arm(c, TIMER_IDLE, c->srv->cfg.idle_timeout_ms);
  return 0;
}

static void on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf) {
  hs_conn_t *c = st->data;
  if (c->handshaking && nread >= 0 && tp_handshake_done(&c->tp) && conn_handshake_done(c) != 0) return;
  if (nread == 0) return;
  if (nread < 0) {
    /* EOF or error. A request cut short gets no answer: the client is gone. A TLS handshake that failed (not
     * TLS at all, a certificate refused, ...) is counted and logged first. */
    if (nread == UV_EPROTO && c->handshaking && !tp_handshake_done(&c->tp))
      conn_tls_failed(c, tp_fail_reason(&c->tp), tp_error(&c->tp));
    conn_close(c);
    return;
  }
  if (c->lingering || c->close_after) return; /* draining */
  /* The idle timer keeps running until a request begins (on_message_begin swaps it for the read
   * deadline), so bytes that start no request, such as CRLFs, do not keep a connection alive. */
  conn_execute(c, buf->base, (size_t)nread);
}

static void resume_reading(hs_conn_t *c) {
  hs_server_t *s = c->srv;
  c->paused = 0;
  llhttp_resume(&c->parser);
  if (c->leftover_len) {
    /* Parse what arrived behind the last request. conn_execute copies any new remainder itself. */
    char *lo = c->leftover;
    size_t n = c->leftover_len;
    c->leftover = NULL;
    c->leftover_len = 0;
    c->refs++; /* conn_execute may close c */
    conn_execute(c, lo, n);
    free(lo);
    int closed = c->closed;
    conn_unref(c);
    if (closed || c->paused) return;
  }
  if (c->closed || c->close_after) return;
  if (s->shutting_down && !c->req) {
    conn_close(c);
    return;
  }
  tp_read_start(&c->tp, alloc_cb, on_read);
  if (!c->req) timer_arm(c, TIMER_IDLE, s->cfg.idle_timeout_ms);
}


/* An HTTP/2 connection preface: a client that speaks HTTP/2 with prior knowledge (gRPC) reached this HTTP/1.1
 * port, so it is misconfigured. It gets an HTTP/1.1 400 with the one-line answer (the client cannot read it as
 * HTTP/2, but its error shows the bytes looked like HTTP/1.1; a curl or a proxy shows the line), counted like
 * the other framing errors, and the operator gets a rate-limited warn line naming the peer. */
static void conn_answer_h2_preface(hs_conn_t *c) {
  hs_server_t *s = c->srv;
  const char *answer = s->cfg.h2_answer ? s->cfg.h2_answer : HS_H2_PREFACE_ANSWER;
  uint64_t held = 0;
  if (gw_log_limit_take(&s->log_h2, uv_hrtime(), HS_H2_LOG_REPEAT_NS, &held)) {
    char peer[80];
    gw_log(GW_LOG_WARN, "HTTP/2 client on the HTTP/1.1 port, answered 400", "server", s->cfg.name, "peer",
           tp_peer_name(&c->tp, peer, sizeof peer), "answer", answer, "suppressed_since_last",
           gw_log_u64(held), NULL);
  }
  conn_answer_error(c, 400, answer);
}

static void conn_execute(hs_conn_t *c, const char *data, size_t len) {
  hs_server_t *s = c->srv;
  llhttp_errno_t err = llhttp_execute(&c->parser, data, len);
  while (err == HPE_PAUSED_UPGRADE) {
    /* The request before asked for an Upgrade (h2c, websocket) or was a CONNECT. It was answered as plain
     * HTTP/1.1, never 101, which declines the upgrade (RFC 9110 7.8: a server may ignore Upgrade): what follows
     * it is the next HTTP/1.1 request. */
    const char *pos = llhttp_get_error_pos(&c->parser);
    size_t used = pos ? (size_t)(pos - data) : len;
    llhttp_resume_after_upgrade(&c->parser);
    data += used;
    len -= used;
    err = len ? llhttp_execute(&c->parser, data, len) : HPE_OK;
  }
  if (err == HPE_OK) return;
  if (err == HPE_PAUSED) {
    const char *pos = llhttp_get_error_pos(&c->parser);
    size_t used = pos ? (size_t)(pos - data) : len;
    if (used < len) {
      char *lo = malloc(len - used);
      if (!lo) {
        conn_close(c);
        return;
      }
      memcpy(lo, data + used, len - used);
      c->leftover = lo;
      c->leftover_len = len - used;
    }
    c->paused = 1;
    tp_read_stop(&c->tp);
    hs_req_t *r = c->pending;
    s->cfg.on_request(&r->pub, s->cfg.ud);
    return;
  }
  /* A callback that stops the parser returns HPE_USER, which llhttp reports as that or, from
   * on_headers_complete, as HPE_CB_HEADERS_COMPLETE; the flags say what happened. */
  if (c->stop_quiet) {
    /* An early answer that ends the connection: its write is queued; drain until it is out. */
    tp_read_stop(&c->tp);
    if (c->writes == 0) conn_linger(c);
    return;
  }
  if (c->err_status) {
    int st = c->err_status;
    conn_answer_error(c, st,
                      st == 431 ? "request header fields too large"
                      : st == 413 ? "request body too large"
                                  : "internal error");
    return;
  }
  if (err == HPE_PAUSED_H2_UPGRADE) {
    conn_answer_h2_preface(c);
    return;
  }
  char msg[160];
  snprintf(msg, sizeof msg, "malformed HTTP request: %s", llhttp_get_error_reason(&c->parser));
  conn_answer_error(c, 400, msg);
}

/* ---- accepting ------------------------------------------------------------------------------------------ */

static hs_conn_t *conn_new(hs_server_t *s) {
  hs_conn_t *c = calloc(1, sizeof *c);
  if (!c) return NULL;
  c->srv = s;
  c->refs = 2;
  uv_timer_init(s->loop, &c->timer);
  c->timer.data = c;
  c->next = s->conns;
  if (s->conns) s->conns->prev = c;
  s->conns = c;
  s->stats.connections_open++;
  if (s->cfg.shared_connections) atomic_fetch_add(s->cfg.shared_connections, 1);
  return c;
}

/* Starts serving an accepted connection (TLS when the config's hook gives a context), or turns it away when over
 * max_connections (a TLS client gets that 503 once its handshake completed). */
static void conn_start(hs_conn_t *c) {
  hs_server_t *s = c->srv;
  c->tp.tcp.data = c;
  s->stats.connections_accepted++;
  llhttp_init(&c->parser, HTTP_REQUEST, &s->settings);
  c->parser.data = c;
  tls_ctx_t *ctx = s->cfg.tls_ctx ? s->cfg.tls_ctx(s->cfg.tls_ud) : NULL;
  if (ctx) {
    if (tp_start_server(&c->tp, ctx) != 0) {
      conn_close(c);
      return;
    }
    c->handshaking = 1;
  }
  uint64_t open = s->cfg.shared_connections ? atomic_load(s->cfg.shared_connections) : s->stats.connections_open;
  if (s->cfg.max_connections && open > s->cfg.max_connections) {
    s->stats.connections_rejected++;
    c->close_after = 1;
    static const char busy[] = "too many connections\n";
    char head[256];
    int hl = format_head(s, head, sizeof head, 503, "text/plain", NULL, 0, sizeof busy - 1, 1);
    tp_read_start(&c->tp, linger_alloc_cb, on_read);
    if (c->handshaking) timer_arm(c, TIMER_HANDSHAKE, handshake_timeout_ms(&s->cfg));
    if (conn_write(c, head, (size_t)hl, busy, sizeof busy - 1) < 0) conn_close(c);
    return;
  }
  tp_read_start(&c->tp, alloc_cb, on_read);
  if (c->handshaking) timer_arm(c, TIMER_HANDSHAKE, handshake_timeout_ms(&s->cfg));
  else timer_arm(c, TIMER_IDLE, s->cfg.idle_timeout_ms);
}

static void on_connection(uv_stream_t *ls, int status) {
  hs_server_t *s = ls->data;
  if (status < 0) return;
  hs_conn_t *c = conn_new(s);
  if (!c) return;
  tp_init(s->loop, &c->tp);
  c->tp.tcp.data = c;
  if (uv_accept(ls, (uv_stream_t *)&c->tp.tcp) != 0) {
    conn_close(c);
    return;
  }
  uv_tcp_nodelay(&c->tp.tcp, 1);
  conn_start(c);
}

int hs_server_adopt_fd(hs_server_t *s, int fd) {
  hs_conn_t *c = conn_new(s);
  if (!c) return UV_ENOMEM;
  tp_init(s->loop, &c->tp);
  c->tp.tcp.data = c;
  int rc = uv_tcp_open(&c->tp.tcp, fd); /* any connected stream socket, AF_UNIX too (libuv does not check) */
  if (rc != 0) {
    conn_close(c);
    return rc;
  }
  conn_start(c);
  return 0;
}

void hs_server_set_tls(hs_server_t *s, tls_ctx_t *(*tls_ctx)(void *tls_ud), void *tls_ud) {
  s->cfg.tls_ctx = tls_ctx;
  s->cfg.tls_ud = tls_ud;
}

int hs_server_create(uv_loop_t *loop, const hs_config_t *cfg, hs_server_t **out) {
  hs_server_t *s = calloc(1, sizeof *s);
  if (!s) return UV_ENOMEM;
  if (!(s->read_buf = malloc(HS_READ_BUF_SIZE))) {
    free(s);
    return UV_ENOMEM;
  }
  s->loop = loop;
  s->cfg = *cfg;
  if (!s->cfg.name) s->cfg.name = "http";
  llhttp_settings_init(&s->settings);
  s->settings.on_message_begin = on_message_begin;
  s->settings.on_url = on_url;
  s->settings.on_header_field = on_header_field;
  s->settings.on_header_field_complete = on_header_field_complete;
  s->settings.on_header_value = on_header_value;
  s->settings.on_header_value_complete = on_header_value_complete;
  s->settings.on_headers_complete = on_headers_complete;
  s->settings.on_body = on_body;
  s->settings.on_message_complete = on_message_complete;
  *out = s;
  return 0;
}

int hs_server_listen(hs_server_t *s, const char *host, uint16_t port) {
  return hs_server_listen_ex(s, host, port, 0);
}

/* SO_REUSEPORT lets any process of the same user share a port; the first worker makes sure nobody listens
 * there yet with a plain bind (SO_REUSEADDR, as libuv binds, so TIME_WAIT does not count). */
static int probe_port_free(const struct sockaddr_storage *ss) {
  int fd = socket(ss->ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return uv_translate_sys_error(errno);
  int one = 1, rc = 0;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  socklen_t len = ss->ss_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
  if (bind(fd, (const struct sockaddr *)ss, len) != 0) rc = uv_translate_sys_error(errno);
  close(fd);
  return rc;
}

int hs_tcp_listen(uv_loop_t *loop, uv_tcp_t *listener, void *data, int *initialised, const char *host, uint16_t port,
                  int reuseport, uv_connection_cb on_conn, char *addr, size_t addr_cap, uint16_t *bound_port) {
  struct sockaddr_storage ss;
  int rc;
  if (strchr(host, ':')) rc = uv_ip6_addr(host, port, (struct sockaddr_in6 *)&ss);
  else rc = uv_ip4_addr(host, port, (struct sockaddr_in *)&ss);
  if (rc) return rc;
  /* With reuseport the socket exists before bind (uv_tcp_init_ex), so SO_REUSEPORT can be set on it: each
   * worker loop then has its own listener on the same port and the kernel spreads connections over them. */
  if ((rc = uv_tcp_init_ex(loop, listener, ss.ss_family)) != 0) return rc;
  listener->data = data;
  *initialised = 1;
  if (reuseport == HS_LISTEN_REUSEPORT_FIRST && port != 0 && (rc = probe_port_free(&ss)) != 0) return rc;
  if (reuseport) {
    uv_os_fd_t fd;
    int one = 1;
    if ((rc = uv_fileno((uv_handle_t *)listener, &fd)) != 0) return rc;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) != 0) return uv_translate_sys_error(errno);
  }
  if ((rc = uv_tcp_bind(listener, (struct sockaddr *)&ss, 0)) != 0 ||
      (rc = uv_listen((uv_stream_t *)listener, 1024, on_conn)) != 0) {
    return rc;
  }
  int namelen = sizeof ss;
  uv_tcp_getsockname(listener, (struct sockaddr *)&ss, &namelen);
  char ip[64] = "";
  if (ss.ss_family == AF_INET6) {
    uv_ip6_name((struct sockaddr_in6 *)&ss, ip, sizeof ip);
    *bound_port = ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
    snprintf(addr, addr_cap, "[%s]:%u", ip, *bound_port);
  } else {
    uv_ip4_name((struct sockaddr_in *)&ss, ip, sizeof ip);
    *bound_port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
    snprintf(addr, addr_cap, "%s:%u", ip, *bound_port);
  }
  return 0;
}

int hs_server_listen_ex(hs_server_t *s, const char *host, uint16_t port, int reuseport) {
  return hs_tcp_listen(s->loop, &s->listener, s, &s->listening, host, port, reuseport, on_connection, s->addr,
                       sizeof s->addr, &s->port);
}

const char *hs_server_address(const hs_server_t *s) { return s->addr; }
uint16_t hs_server_port(const hs_server_t *s) { return s->port; }
const hs_stats_t *hs_server_stats(const hs_server_t *s) { return &s->stats; }

static void on_listener_closed(uv_handle_t *h) {
  hs_server_t *s = h->data;
  s->listening = 0;
  maybe_shutdown_done(s);
}

void hs_server_shutdown(hs_server_t *s, void (*done)(void *ud), void *ud) {
  s->shutting_down = 1;
  s->shutdown_done = done;
  s->shutdown_ud = ud;
  if (s->listening && !uv_is_closing((uv_handle_t *)&s->listener))
    uv_close((uv_handle_t *)&s->listener, on_listener_closed);
  /* Idle connections go now; busy ones after their response (hs_respond sees shutting_down). */
  hs_conn_t *next;
  for (hs_conn_t *c = s->conns; c; c = next) {
    next = c->next;
    if (!c->req && !c->pending && c->writes == 0) conn_close(c);
  }
  maybe_shutdown_done(s);
}

void hs_server_abort(hs_server_t *s) {
  hs_conn_t *next;
  for (hs_conn_t *c = s->conns; c; c = next) {
    next = c->next;
    conn_close(c);
  }
}

void hs_server_destroy(hs_server_t *s) {
  if (!s) return;
  free(s->read_buf);
  free(s);
}
