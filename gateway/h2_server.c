/*
 * gateway/h2_server — HTTP/2 (h2c, prior knowledge) server on libuv + nghttp2. See h2_server.h for the contract.
 *
 * One nghttp2 server session per connection, driven with nghttp2_session_mem_recv / nghttp2_session_mem_send:
 * received bytes go to mem_recv, whose callbacks build streams and hand them to the handler; output is gathered
 * from mem_send into write buffers and uv_write'n, at most H2S_OUT_MAX bytes in flight per connection (past it
 * the connection neither produces output nor reads, so a client that does not read cannot make us queue).
 *
 * Re-entrancy: nothing calls back into nghttp2's recv/send from inside its callbacks. Every entry into a
 * connection (a read, a write completion, the timer, h2s_respond from a handler, shutdown) brackets its work
 * with conn->depth; at depth 0 (conn_leave) the deferred work runs: flushing output, freeing streams that died
 * meanwhile (zombies: never freed while a list walk or an nghttp2 call may still see them), closing. So a
 * handler may answer from on_headers / on_data / on_end / on_abort, from a timer, or after its backends replied.
 *
 * Stream lifetime: a stream is freed once nghttp2 no longer knows it (ng_open == 0) and the handler no longer
 * owns it (never handed, or answered). Each stream holds a reference on its connection, so a connection that
 * closed stays in memory (detached: no session, no handles) until its last unanswered stream is answered.
 *
 * Deadlines: one uv_timer per connection, armed for the earliest of the streams' read deadlines and the idle
 * deadline; it sweeps the streams when it fires.
 */
#include "gateway/h2_server.h"

#include <errno.h>
#include <nghttp2/nghttp2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "gateway/log.h"

#define H2S_READ_BUF_SIZE (64 * 1024)
#define H2S_OUT_MAX (1024 * 1024)   /* output bytes in flight per connection before we stop producing and reading */
#define H2S_WRITE_CHUNK (64 * 1024) /* mem_send output is gathered into writes of about this size */
#define H2S_LINGER_MS 1000          /* after our last frame, how long we drain the client's bytes before closing */
#define H2S_LOG_REPEAT_NS (10ull * 1000 * 1000 * 1000) /* one warn line per kind per server per 10 s */
#define H2S_NS_PER_MS 1000000ull
/* Flood bounds, per connection per one-second window. A gRPC client sends a handful of PINGs and SETTINGS per
 * minute and resets only the calls it cancels; these are far above that and far below what hurts us. */
#define H2S_FLOOD_RST 200      /* RST_STREAM received (rapid reset, CVE-2023-44487) */
#define H2S_FLOOD_PING 100     /* PING (not ACK) */
#define H2S_FLOOD_SETTINGS 100 /* SETTINGS (not ACK) */
#define H2S_FLOOD_EMPTY 500    /* DATA frames with no payload and no END_STREAM, PRIORITY frames */
/* nghttp2's own bounds: queued SETTINGS/PING ACKs, entries per SETTINGS, CONTINUATIONs per header block, and its
 * token bucket for RST_STREAM (a backstop for a slow steady reset stream under our per-second bound). */
#define H2S_MAX_OUTBOUND_ACK 1000
#define H2S_MAX_SETTINGS 32
#define H2S_MAX_CONTINUATIONS 8
#define H2S_RST_BURST 1000
#define H2S_RST_RATE 100
#define H2S_HTTP1_ANSWER "this port speaks HTTP/2 (gRPC)"

typedef struct h2s_conn h2s_conn_t;

struct h2s_server {
  uv_loop_t *loop;
  h2s_config_t cfg;
  uv_tcp_t listener;
  int listening;
  int shutting_down;
  void (*shutdown_done)(void *);
  void *shutdown_ud;
  char addr[80];
  uint16_t port;
  h2s_stats_t stats;
  h2s_conn_t *conns; /* every connection not yet closed */
  nghttp2_session_callbacks *cbs;
  nghttp2_option *opt;
  char *read_buf;    /* H2S_READ_BUF_SIZE; libuv calls alloc_cb and read_cb back to back, so one per server */
  gw_log_limit_t log_proto, log_flood, log_http1, log_tls;
};

struct h2s_conn {
  tp_t tp;                  /* the connection (plain or TLS); tp.tcp.data = the conn. An adopted fd is opened on it */
  uv_timer_t timer;
  uv_shutdown_t shutdown_req;
  h2s_server_t *srv;
  h2s_conn_t *prev, *next;
  nghttp2_session *ng;      /* NULL once the connection died (conn_kill) */
  h2s_stream_t *st_head, *st_tail; /* streams referencing this connection, oldest first */
  size_t n_streams;
  int refs;                 /* 2 handles + 1 per stream */
  int depth;                /* nesting of entries into this connection (see the top of the file) */
  int writes;               /* uv_writes in flight */
  size_t out_pending;       /* their bytes */
  uint64_t timer_due;       /* hrtime the timer is armed for; 0 = not armed */
  uint64_t idle_since;      /* hrtime the last stream went away */
  uint64_t handshake_due;   /* TLS: hrtime the handshake must be complete by; 0 = plain, or it completed */
  uint64_t win_start;       /* flood window */
  uint32_t n_rst, n_ping, n_settings, n_empty;
  uint8_t head[16];         /* the first bytes received, to recognise an HTTP/1.x client */
  size_t head_len;
  char why[96];             /* nghttp2's last error text, for the log line */
  unsigned closed : 1;      /* handles closing; unlinked from the server */
  unsigned killed : 1;      /* session and streams torn down */
  unsigned lingering : 1;   /* FIN sent, draining the client's bytes until EOF or the timer */
  unsigned reading : 1;
  unsigned want_flush : 1;  /* nghttp2 may have output: run mem_send at depth 0 */
  unsigned close_now : 1;   /* close at depth 0 */
  unsigned finish : 1;      /* no more input processing: linger once the writes are done */
  unsigned hold_output : 1; /* nothing sent before the client's first bytes (an HTTP/1.x client gets a clean 400) */
  unsigned draining : 1;    /* shutdown notice sent */
  unsigned ping_acked : 1;  /* the PING sent with the notice came back: one round trip passed */
  unsigned final_goaway : 1;
  unsigned verdict : 1;     /* counted as a flood or a protocol error (once) */
  unsigned zombies : 1;     /* streams to free at depth 0 */
};

struct h2s_stream {
  h2s_request_t req;        /* its slices point into arena (after the header block completed) */
  h2s_conn_t *conn;
  h2s_stream_t *prev, *next;
  int32_t id;
  char *arena;              /* header names and values, NUL-terminated each */
  size_t arena_len, arena_cap;
  size_t hdr_bytes;
  uint64_t body_bytes;
  uint64_t deadline_ns;     /* read_timeout: END_STREAM due; 0 = none */
  uint8_t *resp_body;
  size_t resp_len, resp_off;
  nghttp2_nv *trailers;     /* one block: the array, then the strings */
  size_t n_trailers;
  unsigned handed : 1;      /* on_headers was called: the handler owns the stream until it answers */
  unsigned ended : 1;       /* END_STREAM received */
  unsigned answered : 1;
  unsigned aborted : 1;     /* on_abort was called */
  unsigned gone : 1;        /* reset, or its connection died: an answer is discarded */
  unsigned ng_open : 1;     /* nghttp2 knows the stream, with this as its user data */
  unsigned rst_after : 1;   /* answered before END_STREAM: RST_STREAM(NO_ERROR) once the answer is out */
  unsigned zombie : 1;
};

typedef struct h2s_write {
  uv_write_t w;
  h2s_conn_t *conn;
  size_t len, cap;
  uint8_t data[];
} h2s_write_t;

static void conn_leave(h2s_conn_t *c);
static void conn_close(h2s_conn_t *c);

/* ---- small helpers ------------------------------------------------------------------------------------- */

const h2s_stats_t *h2s_server_stats(const h2s_server_t *s) { return &s->stats; }
const char *h2s_server_address(const h2s_server_t *s) { return s->addr; }
uint16_t h2s_server_port(const h2s_server_t *s) { return s->port; }

const hs_slice_t *h2s_request_header(const h2s_request_t *req, const char *name) {
  size_t n = strlen(name);
  for (size_t i = 0; i < req->n_headers; i++)
    if (req->headers[i].name.len == n && memcmp(req->headers[i].name.base, name, n) == 0)
      return &req->headers[i].value;
  return NULL;
}

int h2s_stream_gone(const h2s_stream_t *st) {
  return st->gone || !st->conn || st->conn->killed;
}


/* Counts c as a flood or a protocol error, once, with a rate-limited warn line. */
static void conn_verdict(h2s_conn_t *c, int flood, const char *what) {
  h2s_server_t *s = c->srv;
  if (c->verdict) return;
  c->verdict = 1;
  gw_log_limit_t *lim = flood ? &s->log_flood : &s->log_proto;
  if (flood) s->stats.floods++;
  else s->stats.protocol_errors++;
  uint64_t held = 0;
  if (gw_log_limit_take(lim, uv_hrtime(), H2S_LOG_REPEAT_NS, &held)) {
    char peer[80];
    gw_log(GW_LOG_WARN, flood ? "HTTP/2 flood, connection closed" : "HTTP/2 protocol error, connection closed",
           "server", s->cfg.name, "peer", tp_peer_name(&c->tp, peer, sizeof peer), "reason", what,
           "suppressed_since_last", gw_log_u64(held), NULL);
  }
}

static void maybe_shutdown_done(h2s_server_t *s) {
  if (s->shutting_down && s->stats.connections_open == 0 && !s->listening && s->shutdown_done) {
    void (*done)(void *) = s->shutdown_done;
    s->shutdown_done = NULL;
    done(s->shutdown_ud);
  }
}

/* ---- streams ------------------------------------------------------------------------------------------- */

static void conn_unref(h2s_conn_t *c) {
  if (--c->refs > 0) return;
  free(c);
}

static void conn_timer_at(h2s_conn_t *c, uint64_t due_ns);

static void st_free(h2s_stream_t *st) {
  h2s_conn_t *c = st->conn;
  if (st->prev) st->prev->next = st->next;
  else c->st_head = st->next;
  if (st->next) st->next->prev = st->prev;
  else c->st_tail = st->prev;
  c->n_streams--;
  if (c->n_streams == 0 && !c->killed) {
    c->idle_since = uv_hrtime();
    if (c->srv->cfg.idle_timeout_ms) conn_timer_at(c, c->idle_since + c->srv->cfg.idle_timeout_ms * H2S_NS_PER_MS);
  }
  free(st->arena);
  free(st->resp_body);
  free(st->trailers);
  free(st);
  conn_unref(c);
}

/* Frees st once neither nghttp2 nor the handler holds it; inside a connection entry it is only marked. */
static void st_maybe_free(h2s_stream_t *st) {
  if (st->ng_open || (st->handed && !st->answered)) return;
  if (st->conn->depth > 0) {
    st->zombie = 1;
    st->conn->zombies = 1;
    return;
  }
  st_free(st);
}

static void conn_reap(h2s_conn_t *c) {
  c->zombies = 0;
  h2s_stream_t *next;
  for (h2s_stream_t *st = c->st_head; st; st = next) {
    next = st->next;
    if (st->zombie) st_free(st);
  }
}

/* Tells the handler st ended abnormally; without an on_abort the server answers 500 itself. */
static void stream_abort(h2s_stream_t *st, int why) {
  h2s_server_t *s = st->conn->srv;
  st->aborted = 1;
  if (s->cfg.on_abort) s->cfg.on_abort(st, &st->req, why, s->cfg.ud);
  else h2s_respond(st, 500, NULL, 0, NULL, 0, NULL, 0);
}

static void stream_end(h2s_conn_t *c, h2s_stream_t *st) {
  st->ended = 1;
  if (st->handed && !st->answered && !st->aborted) c->srv->cfg.on_end(st, &st->req, c->srv->cfg.ud);
}

/* Appends a NUL-terminated copy of p to st's arena; returns its offset, or -1 out of memory. */
static long arena_add(h2s_stream_t *st, const uint8_t *p, size_t len) {
  if (st->arena_len + len + 1 > st->arena_cap) {
    size_t cap = st->arena_cap ? st->arena_cap : 512;
    while (cap < st->arena_len + len + 1) cap *= 2;
    char *na = realloc(st->arena, cap);
    if (!na) return -1;
    st->arena = na;
    st->arena_cap = cap;
  }
  long off = (long)st->arena_len;
  memcpy(st->arena + off, p, len);
  st->arena[off + (long)len] = '\0';
  st->arena_len += len + 1;
  return off;
}

/* While the header block is read, slices hold arena offsets (the arena may move); this makes them pointers. */
static void slice_fix(h2s_stream_t *st, hs_slice_t *sl) {
  sl->base = sl->len ? st->arena + (uintptr_t)sl->base : "";
}

static void stream_start(h2s_conn_t *c, h2s_stream_t *st) {
  h2s_server_t *s = c->srv;
  h2s_request_t *q = &st->req;
  slice_fix(st, &q->method);
  slice_fix(st, &q->path);
  slice_fix(st, &q->authority);
  slice_fix(st, &q->scheme);
  for (size_t i = 0; i < q->n_headers; i++) {
    slice_fix(st, &q->headers[i].name);
    slice_fix(st, &q->headers[i].value);
  }
  st->handed = 1;
  s->stats.streams++;
  if (s->cfg.on_headers) s->cfg.on_headers(st, q, s->cfg.ud);
}

/* ---- nghttp2 callbacks ----------------------------------------------------------------------------------- */

static void conn_count(h2s_conn_t *c, uint32_t *counter, uint32_t limit, const char *what) {
  uint64_t now = uv_hrtime();
  if (now - c->win_start >= 1000 * H2S_NS_PER_MS) {
    c->win_start = now;
    c->n_rst = c->n_ping = c->n_settings = c->n_empty = 0;
  }
  if (++*counter <= limit || c->verdict) return;
  conn_verdict(c, 1, what);
  nghttp2_session_terminate_session(c->ng, NGHTTP2_ENHANCE_YOUR_CALM);
}

static int on_begin_headers(nghttp2_session *ng, const nghttp2_frame *f, void *ud) {
  h2s_conn_t *c = ud;
  if (f->hd.type != NGHTTP2_HEADERS || f->headers.cat != NGHTTP2_HCAT_REQUEST || c->verdict) return 0;
  h2s_stream_t *st = calloc(1, sizeof *st);
  if (!st) return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE; /* the stream is reset */
  st->conn = c;
  st->id = f->hd.stream_id;
  st->ng_open = 1;
  st->req.start_ns = uv_hrtime();
  if (c->srv->cfg.read_timeout_ms) st->deadline_ns = st->req.start_ns + c->srv->cfg.read_timeout_ms * H2S_NS_PER_MS;
  st->prev = c->st_tail;
  if (c->st_tail) c->st_tail->next = st;
  else c->st_head = st;
  c->st_tail = st;
  c->n_streams++;
  c->refs++;
  nghttp2_session_set_stream_user_data(ng, st->id, st);
  if (st->deadline_ns) conn_timer_at(c, st->deadline_ns);
  return 0;
}

static int on_header(nghttp2_session *ng, const nghttp2_frame *f, const uint8_t *name, size_t namelen,
                     const uint8_t *value, size_t valuelen, uint8_t flags, void *ud) {
  if (f->hd.type != NGHTTP2_HEADERS || f->headers.cat != NGHTTP2_HCAT_REQUEST) return 0; /* trailers: ignored */
  h2s_stream_t *st = nghttp2_session_get_stream_user_data(ng, f->hd.stream_id);
  if (!st || st->handed) return 0;
  h2s_request_t *q = &st->req;
  st->hdr_bytes += namelen + valuelen;
  if (st->hdr_bytes > H2S_MAX_HEADER_BYTES) return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE; /* RST_STREAM */
  hs_slice_t *nm = NULL, *val;
  if (namelen && name[0] == ':') {
    if (namelen == 7 && memcmp(name, ":method", 7) == 0) val = &q->method;
    else if (namelen == 5 && memcmp(name, ":path", 5) == 0) val = &q->path;
    else if (namelen == 10 && memcmp(name, ":authority", 10) == 0) val = &q->authority;
    else if (namelen == 7 && memcmp(name, ":scheme", 7) == 0) val = &q->scheme;
    else return 0; /* nghttp2 already refused unknown pseudo headers */
  } else {
    if (q->n_headers == H2S_MAX_HEADERS) return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    nm = &q->headers[q->n_headers].name;
    val = &q->headers[q->n_headers].value;
    q->n_headers++;
  }
  if (nm) {
    long off = arena_add(st, name, namelen);
    if (off < 0) return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    nm->base = (const char *)(uintptr_t)off;
    nm->len = namelen;
  }
  long off = arena_add(st, value, valuelen);
  if (off < 0) return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
  val->base = (const char *)(uintptr_t)off;
  val->len = valuelen;
  return 0;
}

static int on_data_chunk(nghttp2_session *ng, uint8_t flags, int32_t id, const uint8_t *data, size_t len,
                         void *ud) {
  h2s_conn_t *c = ud;
  h2s_server_t *s = c->srv;
  h2s_stream_t *st = nghttp2_session_get_stream_user_data(ng, id);
  if (st && st->handed && !st->answered && !st->aborted && !c->verdict) {
    st->body_bytes += len;
    if (s->cfg.max_body_bytes && st->body_bytes > s->cfg.max_body_bytes) stream_abort(st, H2S_ABORT_TOO_BIG);
    else if (s->cfg.on_data) s->cfg.on_data(st, &st->req, data, len, s->cfg.ud);
  }
  /* The handler copied the bytes (or they are discarded): open the windows again, for every stream alike. */
  nghttp2_session_consume(ng, id, len);
  return 0;
}

static int on_frame_recv(nghttp2_session *ng, const nghttp2_frame *f, void *ud) {
  h2s_conn_t *c = ud;
  h2s_stream_t *st;
  switch (f->hd.type) {
    case NGHTTP2_HEADERS:
      st = nghttp2_session_get_stream_user_data(ng, f->hd.stream_id);
      if (!st || c->verdict) break;
      if (f->headers.cat == NGHTTP2_HCAT_REQUEST && !st->handed) stream_start(c, st);
      if (f->hd.flags & NGHTTP2_FLAG_END_STREAM) stream_end(c, st);
      break;
    case NGHTTP2_DATA:
      if (f->hd.length == 0 && !(f->hd.flags & NGHTTP2_FLAG_END_STREAM))
        conn_count(c, &c->n_empty, H2S_FLOOD_EMPTY, "empty frames");
      st = nghttp2_session_get_stream_user_data(ng, f->hd.stream_id);
      if (st && !c->verdict && (f->hd.flags & NGHTTP2_FLAG_END_STREAM)) stream_end(c, st);
      break;
    case NGHTTP2_RST_STREAM:
      conn_count(c, &c->n_rst, H2S_FLOOD_RST, "RST_STREAM flood (rapid reset)");
      break;
    case NGHTTP2_PING:
      if (f->hd.flags & NGHTTP2_FLAG_ACK) c->ping_acked = 1;
      else conn_count(c, &c->n_ping, H2S_FLOOD_PING, "PING flood");
      break;
    case NGHTTP2_SETTINGS:
      if (!(f->hd.flags & NGHTTP2_FLAG_ACK)) conn_count(c, &c->n_settings, H2S_FLOOD_SETTINGS, "SETTINGS flood");
      break;
    case NGHTTP2_PRIORITY:
      conn_count(c, &c->n_empty, H2S_FLOOD_EMPTY, "empty frames");
      break;
    default:
      break;
  }
  return 0;
}

static int on_frame_send(nghttp2_session *ng, const nghttp2_frame *f, void *ud) {
  h2s_conn_t *c = ud;
  if (f->hd.type == NGHTTP2_GOAWAY && f->goaway.error_code != NGHTTP2_NO_ERROR) {
    /* nghttp2 ended the session for a malformed frame, an HPACK error or a flood of its own finding. */
    conn_verdict(c, f->goaway.error_code == NGHTTP2_ENHANCE_YOUR_CALM,
                 c->why[0] ? c->why : nghttp2_http2_strerror(f->goaway.error_code));
    return 0;
  }
  if ((f->hd.type == NGHTTP2_HEADERS || f->hd.type == NGHTTP2_DATA) && (f->hd.flags & NGHTTP2_FLAG_END_STREAM)) {
    h2s_stream_t *st = nghttp2_session_get_stream_user_data(ng, f->hd.stream_id);
    /* The answer is out but the client is still sending: tell it to stop (RFC 9113 8.1). */
    if (st && st->rst_after && !st->ended) nghttp2_submit_rst_stream(ng, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_NO_ERROR);
  }
  return 0;
}

static int on_stream_close(nghttp2_session *ng, int32_t id, uint32_t error_code, void *ud) {
  h2s_conn_t *c = ud;
  h2s_stream_t *st = nghttp2_session_get_stream_user_data(ng, id);
  if (!st) return 0;
  nghttp2_session_set_stream_user_data(ng, id, NULL);
  st->ng_open = 0;
  if (st->handed && !st->answered) {
    /* Closed before our answer: the client reset it (or nghttp2 did, for a malformed request). */
    st->gone = 1;
    c->srv->stats.streams_reset++;
    if (!st->ended && !st->aborted) stream_abort(st, H2S_ABORT_GONE);
  }
  st_maybe_free(st);
  return 0;
}

static int on_error(nghttp2_session *ng, int code, const char *msg, size_t len, void *ud) {
  h2s_conn_t *c = ud;
  snprintf(c->why, sizeof c->why, "%.*s", (int)len, msg);
  return 0;
}

static ssize_t read_body(nghttp2_session *ng, int32_t id, uint8_t *buf, size_t length, uint32_t *data_flags,
                         nghttp2_data_source *source, void *ud) {
  h2s_stream_t *st = source->ptr;
  size_t n = st->resp_len - st->resp_off;
  if (n > length) n = length;
  if (n) memcpy(buf, st->resp_body + st->resp_off, n);
  st->resp_off += n;
  if (st->resp_off == st->resp_len) {
    *data_flags |= NGHTTP2_DATA_FLAG_EOF;
    if (st->n_trailers && nghttp2_submit_trailer(ng, id, st->trailers, st->n_trailers) == 0)
      *data_flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
  }
  return (ssize_t)n;
}

/* ---- writing --------------------------------------------------------------------------------------------- */

static void on_write(uv_write_t *w, int status) {
  h2s_write_t *hw = (h2s_write_t *)w;
  h2s_conn_t *c = hw->conn;
  c->writes--;
  c->out_pending -= hw->len;
  free(hw);
  if (c->closed) return;
  if (status < 0) {
    conn_close(c);
    return;
  }
  if (c->lingering) return;
  c->depth++;
  c->want_flush = 1; /* output may have waited for room */
  conn_leave(c);
}

/* Hands hw to libuv; on failure the connection is closed at depth 0. */
static void conn_write(h2s_conn_t *c, h2s_write_t *hw) {
  hw->conn = c;
  uv_buf_t buf = uv_buf_init((char *)hw->data, (unsigned)hw->len);
  if (tp_write(&hw->w, &c->tp, &buf, 1, on_write) < 0) {
    c->out_pending -= hw->len;
    free(hw);
    c->close_now = 1;
    return;
  }
  c->writes++;
}

/* Runs mem_send until nghttp2 has nothing more or H2S_OUT_MAX bytes are in flight. Caller is at depth 0. */
static void conn_flush(h2s_conn_t *c) {
  if (!c->ng || c->hold_output || c->lingering) return;
  h2s_write_t *hw = NULL;
  c->depth++;
  while (c->out_pending < H2S_OUT_MAX) {
    const uint8_t *p;
    ssize_t n = nghttp2_session_mem_send(c->ng, &p); /* p is valid until the next nghttp2 call: copied now */
    if (n < 0) {
      c->close_now = 1;
      break;
    }
    if (n == 0) break;
    if (hw && hw->len + (size_t)n > hw->cap) {
      conn_write(c, hw);
      hw = NULL;
    }
    if (!hw) {
      size_t cap = (size_t)n > H2S_WRITE_CHUNK ? (size_t)n : H2S_WRITE_CHUNK;
      if (!(hw = malloc(sizeof *hw + cap))) {
        c->close_now = 1;
        break;
      }
      hw->len = 0;
      hw->cap = cap;
    }
    memcpy(hw->data + hw->len, p, (size_t)n);
    hw->len += (size_t)n;
    c->out_pending += (size_t)n;
  }
  if (hw && hw->len) conn_write(c, hw);
  else free(hw);
  c->depth--;
}

/* Writes bytes of our own (not nghttp2's: the HTTP/1.x answer). */
static void conn_write_raw(h2s_conn_t *c, const char *data, size_t len) {
  h2s_write_t *hw = malloc(sizeof *hw + len);
  if (!hw) {
    c->close_now = 1;
    return;
  }
  memcpy(hw->data, data, len);
  hw->len = hw->cap = len;
  c->out_pending += len;
  conn_write(c, hw);
}

/* ---- closing --------------------------------------------------------------------------------------------- */

/* Tears down the session: unanswered streams become gone (on_abort(GONE) for those before their end), streams
 * nobody owns are freed. Idempotent. */
static void conn_kill(h2s_conn_t *c) {
  if (c->killed) return;
  c->killed = 1;
  c->depth++;
  for (h2s_stream_t *st = c->st_head; st; st = st->next) {
    st->ng_open = 0;
    if (st->handed && !st->answered) {
      st->gone = 1;
      if (!st->ended && !st->aborted) stream_abort(st, H2S_ABORT_GONE);
    }
    st_maybe_free(st);
  }
  nghttp2_session_del(c->ng); /* calls no callbacks */
  c->ng = NULL;
  c->depth--;
  conn_reap(c);
}

static void on_handle_closed(uv_handle_t *h) { conn_unref(h->data); }

static void conn_close(h2s_conn_t *c) {
  if (c->closed) return;
  if (c->depth > 0) {
    c->close_now = 1;
    return;
  }
  h2s_server_t *s = c->srv;
  conn_kill(c);
  c->closed = 1;
  if (c->prev) c->prev->next = c->next;
  else s->conns = c->next;
  if (c->next) c->next->prev = c->prev;
  s->stats.connections_open--;
  if (s->cfg.shared_connections) atomic_fetch_sub(s->cfg.shared_connections, 1);
  tp_close(&c->tp, on_handle_closed);
  uv_close((uv_handle_t *)&c->timer, on_handle_closed);
  maybe_shutdown_done(s);
}

static void linger_alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  h2s_conn_t *c = h->data;
  *buf = uv_buf_init(c->srv->read_buf, H2S_READ_BUF_SIZE);
}

static void on_linger_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf) {
  if (nread < 0) conn_close(st->data);
}

static void on_shutdown(uv_shutdown_t *sr, int status) {
  if (status < 0) conn_close(sr->data);
}

static void on_timer(uv_timer_t *t);

/* After our last frame (written): FIN, then drain what the client still sends until its EOF or H2S_LINGER_MS,
 * so the client reads our GOAWAY instead of a connection reset. */
static void conn_linger(h2s_conn_t *c) {
  if (c->lingering || c->closed) return;
  conn_kill(c);
  c->lingering = 1;
  tp_read_stop(&c->tp);
  c->reading = 0;
  c->shutdown_req.data = c;
  if (tp_shutdown(&c->shutdown_req, &c->tp, on_shutdown) != 0) {
    conn_close(c);
    return;
  }
  tp_read_start(&c->tp, linger_alloc_cb, on_linger_read);
  c->timer_due = 0;
  uv_timer_start(&c->timer, on_timer, H2S_LINGER_MS, 0);
}

/* ---- the connection's state machine, run at depth 0 ------------------------------------------------------- */

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf);
static void on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf);

/* Decides what follows the work just done; returns 1 when it queued more output. */
static int conn_check(h2s_conn_t *c) {
  if (c->closed || c->lingering || !c->ng) return 0;
  if (c->draining && !c->final_goaway && !c->finish && (c->n_streams == 0 || c->ping_acked)) {
    /* One round trip after the notice (or nothing in flight): the GOAWAY with the last stream we process. */
    c->final_goaway = 1;
    c->hold_output = 0;
    nghttp2_submit_goaway(c->ng, NGHTTP2_FLAG_NONE, nghttp2_session_get_last_proc_stream_id(c->ng),
                          NGHTTP2_NO_ERROR, NULL, 0);
    c->want_flush = 1;
    return 1;
  }
  if (!c->finish && !nghttp2_session_want_read(c->ng) && !nghttp2_session_want_write(c->ng)) c->finish = 1;
  if (c->finish) {
    if (c->reading) tp_read_stop(&c->tp);
    c->reading = 0;
    if (c->writes == 0) conn_linger(c);
    return 0;
  }
  if (c->out_pending >= H2S_OUT_MAX) {
    if (c->reading) tp_read_stop(&c->tp); /* backpressure: the client is not reading our output */
    c->reading = 0;
  } else if (!c->reading) {
    c->reading = tp_read_start(&c->tp, alloc_cb, on_read) == 0;
  }
  return 0;
}

static void conn_leave(h2s_conn_t *c) {
  if (--c->depth > 0) return;
  for (;;) {
    if (c->closed) return;
    if (c->close_now) {
      c->close_now = 0;
      conn_close(c);
      return;
    }
    if (c->zombies) conn_reap(c);
    if (c->want_flush) {
      c->want_flush = 0;
      conn_flush(c);
      continue;
    }
    if (!conn_check(c)) break;
  }
}

static void conn_timer_at(h2s_conn_t *c, uint64_t due_ns) {
  if (c->closed || c->lingering) return;
  if (c->timer_due && c->timer_due <= due_ns) return;
  uint64_t now = uv_hrtime();
  uint64_t ms = due_ns > now ? (due_ns - now + H2S_NS_PER_MS - 1) / H2S_NS_PER_MS : 0;
  c->timer_due = due_ns;
  uv_timer_start(&c->timer, on_timer, ms, 0);
}

/* Sweeps the streams for passed read deadlines and the connection for its idle deadline. */
static void on_timer(uv_timer_t *t) {
  h2s_conn_t *c = t->data;
  h2s_server_t *s = c->srv;
  c->timer_due = 0;
  if (c->lingering) {
    conn_close(c);
    return;
  }
  if (c->closed || !c->ng) return;
  uint64_t now = uv_hrtime(), next = 0;
  if (c->handshake_due && !tp_handshake_done(&c->tp)) {
    /* A TLS client that connected and sent nothing, or half a handshake: nothing can be said to it (no GOAWAY
     * goes out before the handshake), so the connection goes. Output it holds never gets out: no linger. */
    if (c->handshake_due <= now) {
      conn_close(c);
      return;
    }
    if (c->handshake_due != UINT64_MAX) conn_timer_at(c, c->handshake_due);
    return;
  }
  c->handshake_due = 0;
  c->depth++;
  for (h2s_stream_t *st = c->st_head; st; st = st->next) {
    if (!st->deadline_ns || st->ended || st->answered || st->aborted || st->gone) continue;
    if (st->deadline_ns > now) {
      if (!next || st->deadline_ns < next) next = st->deadline_ns;
    } else if (!st->handed) {
      /* A header block that did not complete within read_timeout holds the whole connection (nothing else
       * may come between its CONTINUATION frames): the connection goes. */
      c->close_now = 1;
      break;
    } else {
      stream_abort(st, H2S_ABORT_TIMEOUT);
    }
  }
  if (c->n_streams == 0 && s->cfg.idle_timeout_ms && !c->finish && !c->draining) {
    uint64_t due = c->idle_since + s->cfg.idle_timeout_ms * H2S_NS_PER_MS;
    if (due <= now) {
      nghttp2_submit_goaway(c->ng, NGHTTP2_FLAG_NONE, nghttp2_session_get_last_proc_stream_id(c->ng),
                            NGHTTP2_NO_ERROR, (const uint8_t *)"idle", 4);
      c->hold_output = 0;
      c->finish = 1;
      c->want_flush = 1;
    } else if (!next || due < next) {
      next = due;
    }
  }
  if (next) conn_timer_at(c, next);
  conn_leave(c);
}

/* ---- reading --------------------------------------------------------------------------------------------- */

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  h2s_conn_t *c = h->data;
  *buf = uv_buf_init(c->srv->read_buf, H2S_READ_BUF_SIZE);
}

/* An upper-case token and a space: the start of an HTTP/1.x request line ("POST /v1/traces HTTP/1.1"). */
static int looks_http1(const uint8_t *p, size_t len) {
  size_t k = 0;
  while (k < len && p[k] >= 'A' && p[k] <= 'Z') k++;
  return k >= 3 && k <= 10 && k < len && p[k] == ' ';
}

static void conn_bad_magic(h2s_conn_t *c) {
  h2s_server_t *s = c->srv;
  c->finish = 1;
  if (!looks_http1(c->head, c->head_len)) {
    conn_verdict(c, 0, "no HTTP/2 connection preface");
    return;
  }
  c->verdict = 1;
  s->stats.protocol_errors++;
  uint64_t held = 0;
  if (gw_log_limit_take(&s->log_http1, uv_hrtime(), H2S_LOG_REPEAT_NS, &held)) {
    char peer[80];
    gw_log(GW_LOG_WARN, "HTTP/1.x client on the HTTP/2 port, answered 400", "server", s->cfg.name, "peer",
           tp_peer_name(&c->tp, peer, sizeof peer), "suppressed_since_last", gw_log_u64(held), NULL);
  }
  char msg[256];
  int n = snprintf(msg, sizeof msg,
                   "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: %zu\r\n"
                   "Connection: close\r\n\r\n%s\n",
                   sizeof H2S_HTTP1_ANSWER, H2S_HTTP1_ANSWER);
  conn_write_raw(c, msg, (size_t)n);
}

/* A TLS handshake failed (or settled on an ALPN protocol other than h2): counted by reason, a rate-limited warn
 * line; the caller closes the connection. */
static void conn_tls_failed(h2s_conn_t *c, tls_fail_t why, const char *detail) {
  h2s_server_t *s = c->srv;
  if ((unsigned)why >= TLS_N_FAIL_REASONS) why = TLS_FAIL_PROTOCOL;
  s->stats.tls_handshake_failures[why]++;
  c->verdict = 1; /* no protocol error on top */
  uint64_t held = 0;
  if (gw_log_limit_take(&s->log_tls, uv_hrtime(), H2S_LOG_REPEAT_NS, &held)) {
    char peer[80];
    gw_log(GW_LOG_WARN, "TLS handshake failed", "server", s->cfg.name, "peer", tp_peer_name(&c->tp, peer, sizeof peer),
           "reason", tls_fail_label(why), "detail", detail, "suppressed_since_last", gw_log_u64(held), NULL);
  }
}

static void on_read(uv_stream_t *h, ssize_t nread, const uv_buf_t *buf) {
  h2s_conn_t *c = h->data;
  if (c->handshake_due && nread >= 0 && tp_handshake_done(&c->tp)) {
    c->handshake_due = 0;
    /* The context selects h2 when the client offers ALPN; one that negotiated nothing is served (h2 by prior
     * knowledge); anything else cannot be gRPC. */
    const char *alpn = tp_alpn(&c->tp);
    if (alpn[0] && strcmp(alpn, "h2") != 0) {
      char detail[96];
      snprintf(detail, sizeof detail, "negotiated ALPN \"%s\", this port speaks h2", alpn);
      conn_tls_failed(c, TLS_FAIL_ALPN, detail);
      conn_close(c);
      return;
    }
  }
  if (nread == 0) return;
  if (nread < 0) {
    /* EOF or error: streams not answered yet are gone. A failed TLS handshake (not TLS at all, a certificate
     * refused, ...) is counted and logged first. */
    if (nread == UV_EPROTO && c->handshake_due && !tp_handshake_done(&c->tp))
      conn_tls_failed(c, tp_fail_reason(&c->tp), tp_error(&c->tp));
    conn_close(c);
    return;
  }
  if (c->finish || !c->ng) return;
  if (c->head_len < sizeof c->head) {
    size_t n = sizeof c->head - c->head_len;
    if (n > (size_t)nread) n = (size_t)nread;
    memcpy(c->head + c->head_len, buf->base, n);
    c->head_len += n;
  }
  c->depth++;
  ssize_t rv = nghttp2_session_mem_recv(c->ng, (const uint8_t *)buf->base, (size_t)nread);
  if (rv >= 0) {
    c->hold_output = 0;
    c->want_flush = 1;
  } else if (rv == NGHTTP2_ERR_BAD_CLIENT_MAGIC) {
    conn_bad_magic(c);
  } else if (rv == NGHTTP2_ERR_FLOODED) {
    conn_verdict(c, 1, "nghttp2: outbound queue flooded");
    c->close_now = 1;
  } else {
    conn_verdict(c, 0, c->why[0] ? c->why : nghttp2_strerror((int)rv));
    c->close_now = 1;
  }
  conn_leave(c);
}

/* ---- accepting ------------------------------------------------------------------------------------------- */

static h2s_conn_t *conn_new(h2s_server_t *s) {
  h2s_conn_t *c = calloc(1, sizeof *c);
  if (!c) return NULL;
  c->srv = s;
  c->refs = 2;
  c->hold_output = 1;
  uv_timer_init(s->loop, &c->timer);
  c->timer.data = c;
  c->next = s->conns;
  if (s->conns) s->conns->prev = c;
  s->conns = c;
  s->stats.connections_open++;
  if (s->cfg.shared_connections) atomic_fetch_add(s->cfg.shared_connections, 1);
  return c;
}

/* How long a TLS handshake may take: the earlier of the two deadlines that are set (it is the start of a stream on
 * a connection that has none yet). */
static uint64_t handshake_timeout_ms(const h2s_config_t *cfg) {
  uint64_t r = cfg->read_timeout_ms, i = cfg->idle_timeout_ms;
  return r && i ? (r < i ? r : i) : r ? r : i;
}

static void conn_start(h2s_conn_t *c) {
  h2s_server_t *s = c->srv;
  c->tp.tcp.data = c;
  s->stats.connections_accepted++;
  c->idle_since = c->win_start = uv_hrtime();
  if (nghttp2_session_server_new2(&c->ng, s->cbs, c, s->opt) != 0) {
    c->ng = NULL;
    conn_close(c);
    return;
  }
  tls_ctx_t *ctx = s->cfg.tls_ctx ? s->cfg.tls_ctx(s->cfg.tls_ud) : NULL;
  if (ctx) {
    if (tp_start_server(&c->tp, ctx) != 0) {
      conn_close(c);
      return;
    }
    uint64_t ms = handshake_timeout_ms(&s->cfg);
    /* Without any deadline configured a handshake is still not waited for forever (UINT64_MAX: never due). */
    c->handshake_due = ms ? c->idle_since + ms * H2S_NS_PER_MS : UINT64_MAX;
    if (ms) conn_timer_at(c, c->handshake_due);
  }
  uint64_t open = s->cfg.shared_connections ? atomic_load(s->cfg.shared_connections) : s->stats.connections_open;
  c->depth++;
  if ((s->cfg.max_connections && open > s->cfg.max_connections) || s->shutting_down) {
    /* Our preface, then GOAWAY with last stream 0: no stream was processed, the client may retry elsewhere. */
    s->stats.connections_rejected++;
    c->verdict = 1; /* its GOAWAY is no protocol error */
    static const char why[] = "too many connections";
    nghttp2_submit_settings(c->ng, NGHTTP2_FLAG_NONE, NULL, 0);
    nghttp2_submit_goaway(c->ng, NGHTTP2_FLAG_NONE, 0, NGHTTP2_REFUSED_STREAM, (const uint8_t *)why,
                          sizeof why - 1);
    c->hold_output = 0;
    c->finish = 1;
  } else {
    nghttp2_settings_entry iv[] = {
        {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, s->cfg.max_concurrent_streams},
        {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, H2S_STREAM_WINDOW},
        /* HPACK's size counts 32 bytes per field on top of name and value (RFC 9113 6.5.2). */
        {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, H2S_MAX_HEADER_BYTES + 32 * (H2S_MAX_HEADERS + 4)},
    };
    if (nghttp2_submit_settings(c->ng, NGHTTP2_FLAG_NONE, iv, sizeof iv / sizeof iv[0]) != 0 ||
        nghttp2_session_set_local_window_size(c->ng, NGHTTP2_FLAG_NONE, 0, (int32_t)H2S_CONNECTION_WINDOW) != 0)
      c->close_now = 1;
    if (s->cfg.idle_timeout_ms) conn_timer_at(c, c->idle_since + s->cfg.idle_timeout_ms * H2S_NS_PER_MS);
    c->reading = tp_read_start(&c->tp, alloc_cb, on_read) == 0;
    if (!c->reading) c->close_now = 1;
  }
  c->want_flush = 1;
  conn_leave(c);
}

static void on_connection(uv_stream_t *ls, int status) {
  h2s_server_t *s = ls->data;
  if (status < 0) return;
  h2s_conn_t *c = conn_new(s);
  if (!c) return;
  tp_init(s->loop, &c->tp);
  c->tp.tcp.data = c;
  if (uv_accept(ls, (uv_stream_t *)&c->tp.tcp) != 0) {
    c->killed = 1;
    conn_close(c);
    return;
  }
  uv_tcp_nodelay(&c->tp.tcp, 1);
  conn_start(c);
}

int h2s_server_adopt_fd(h2s_server_t *s, int fd) {
  h2s_conn_t *c = conn_new(s);
  if (!c) return UV_ENOMEM;
  tp_init(s->loop, &c->tp);
  c->tp.tcp.data = c;
  int rc = uv_tcp_open(&c->tp.tcp, fd); /* any connected stream socket, AF_UNIX too (libuv does not check) */
  if (rc != 0) {
    c->killed = 1;
    conn_close(c);
    return rc;
  }
  conn_start(c);
  return 0;
}

void h2s_server_set_tls(h2s_server_t *s, tls_ctx_t *(*tls_ctx)(void *tls_ud), void *tls_ud) {
  s->cfg.tls_ctx = tls_ctx;
  s->cfg.tls_ud = tls_ud;
}

int h2s_server_create(uv_loop_t *loop, const h2s_config_t *cfg, h2s_server_t **out) {
  h2s_server_t *s = calloc(1, sizeof *s);
  if (!s) return UV_ENOMEM;
  s->loop = loop;
  s->cfg = *cfg;
  if (!s->cfg.name) s->cfg.name = "h2";
  if (!s->cfg.max_concurrent_streams) s->cfg.max_concurrent_streams = 100;
  if (!(s->read_buf = malloc(H2S_READ_BUF_SIZE)) || nghttp2_session_callbacks_new(&s->cbs) != 0 ||
      nghttp2_option_new(&s->opt) != 0) {
    h2s_server_destroy(s);
    return UV_ENOMEM;
  }
  nghttp2_session_callbacks_set_on_begin_headers_callback(s->cbs, on_begin_headers);
  nghttp2_session_callbacks_set_on_header_callback(s->cbs, on_header);
  nghttp2_session_callbacks_set_on_data_chunk_recv_callback(s->cbs, on_data_chunk);
  nghttp2_session_callbacks_set_on_frame_recv_callback(s->cbs, on_frame_recv);
  nghttp2_session_callbacks_set_on_frame_send_callback(s->cbs, on_frame_send);
  nghttp2_session_callbacks_set_on_stream_close_callback(s->cbs, on_stream_close);
  nghttp2_session_callbacks_set_error_callback2(s->cbs, on_error);
  nghttp2_option_set_no_auto_window_update(s->opt, 1);
  nghttp2_option_set_max_outbound_ack(s->opt, H2S_MAX_OUTBOUND_ACK);
  nghttp2_option_set_max_settings(s->opt, H2S_MAX_SETTINGS);
  nghttp2_option_set_max_continuations(s->opt, H2S_MAX_CONTINUATIONS);
  nghttp2_option_set_stream_reset_rate_limit(s->opt, H2S_RST_BURST, H2S_RST_RATE);
  *out = s;
  return 0;
}

int h2s_server_listen(h2s_server_t *s, const char *host, uint16_t port, int reuseport) {
  return hs_tcp_listen(s->loop, &s->listener, s, &s->listening, host, port, reuseport, on_connection, s->addr,
                       sizeof s->addr, &s->port); /* as gateway/http_server's listeners */
}

/* ---- stopping -------------------------------------------------------------------------------------------- */

static void on_listener_closed(uv_handle_t *h) {
  h2s_server_t *s = h->data;
  s->listening = 0;
  maybe_shutdown_done(s);
}

/* Shutdown notice (GOAWAY with the highest stream id) and a PING: when its ACK is back, or no stream is left,
 * conn_check sends the final GOAWAY with the last stream id processed (RFC 9113 6.8). */
static void conn_drain(h2s_conn_t *c) {
  if (c->closed || c->lingering || c->draining || c->finish || !c->ng) return;
  c->draining = 1;
  c->hold_output = 0;
  c->depth++;
  nghttp2_submit_shutdown_notice(c->ng);
  nghttp2_submit_ping(c->ng, NGHTTP2_FLAG_NONE, NULL);
  c->want_flush = 1;
  conn_leave(c);
}

void h2s_server_shutdown(h2s_server_t *s, void (*done)(void *ud), void *ud) {
  s->shutting_down = 1;
  s->shutdown_done = done;
  s->shutdown_ud = ud;
  if (s->listening && !uv_is_closing((uv_handle_t *)&s->listener))
    uv_close((uv_handle_t *)&s->listener, on_listener_closed);
  h2s_conn_t *next;
  for (h2s_conn_t *c = s->conns; c; c = next) {
    next = c->next;
    conn_drain(c);
  }
  maybe_shutdown_done(s);
}

void h2s_server_abort(h2s_server_t *s) {
  h2s_conn_t *next;
  for (h2s_conn_t *c = s->conns; c; c = next) {
    next = c->next;
    conn_close(c);
  }
}

void h2s_server_destroy(h2s_server_t *s) {
  if (!s) return;
  if (s->cbs) nghttp2_session_callbacks_del(s->cbs);
  if (s->opt) nghttp2_option_del(s->opt);
  free(s->read_buf);
  free(s);
}

/* ---- answering ------------------------------------------------------------------------------------------- */

/* Copies n headers into one block: the nghttp2_nv array followed by the strings. */
static nghttp2_nv *nv_copy(const hs_header_t *h, size_t n) {
  size_t bytes = n * sizeof(nghttp2_nv);
  for (size_t i = 0; i < n; i++) bytes += h[i].name.len + h[i].value.len;
  nghttp2_nv *nv = malloc(bytes ? bytes : 1);
  if (!nv) return NULL;
  uint8_t *p = (uint8_t *)(nv + n);
  for (size_t i = 0; i < n; i++) {
    nv[i].name = p;
    memcpy(p, h[i].name.base, h[i].name.len);
    p += h[i].name.len;
    nv[i].value = p;
    memcpy(p, h[i].value.base, h[i].value.len);
    p += h[i].value.len;
    nv[i].namelen = h[i].name.len;
    nv[i].valuelen = h[i].value.len;
    nv[i].flags = NGHTTP2_NV_FLAG_NONE;
  }
  return nv;
}

int h2s_respond(h2s_stream_t *st, int status, const hs_header_t *headers, size_t n_headers, const void *body,
                size_t body_len, const hs_header_t *trailers, size_t n_trailers) {
  if (st->answered) return UV_EINVAL; /* a handler bug: never answer twice */
  st->answered = 1;
  h2s_conn_t *c = st->conn;
  if (h2s_stream_gone(st) || !st->ng_open || c->lingering) {
    st->gone = 1;
    st_maybe_free(st);
    return UV_ECANCELED;
  }
  int rc = 0;
  nghttp2_nv *nva = malloc((n_headers + 1) * sizeof *nva);
  char code[16];
  snprintf(code, sizeof code, "%d", status);
  if (!nva || (body_len && !(st->resp_body = malloc(body_len))) ||
      (n_trailers && !(st->trailers = nv_copy(trailers, n_trailers)))) {
    rc = UV_ENOMEM;
  } else {
    nva[0] = (nghttp2_nv){(uint8_t *)":status", (uint8_t *)code, 7, strlen(code), NGHTTP2_NV_FLAG_NONE};
    for (size_t i = 0; i < n_headers; i++)
      nva[i + 1] = (nghttp2_nv){(uint8_t *)headers[i].name.base, (uint8_t *)headers[i].value.base,
                                headers[i].name.len, headers[i].value.len, NGHTTP2_NV_FLAG_NONE};
    if (body_len) memcpy(st->resp_body, body, body_len);
    st->resp_len = body_len;
    st->n_trailers = n_trailers;
  }
  c->depth++;
  if (rc == 0) {
    nghttp2_data_provider dp = {.source.ptr = st, .read_callback = read_body};
    /* nghttp2 copies the header array; the body and trailers are read from st as the frames go out. */
    int nrv = nghttp2_submit_response(c->ng, st->id, nva, n_headers + 1, body || n_trailers ? &dp : NULL);
    if (nrv != 0) rc = nrv == NGHTTP2_ERR_NOMEM ? UV_ENOMEM : UV_EINVAL;
  }
  free(nva);
  if (rc != 0) nghttp2_submit_rst_stream(c->ng, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_INTERNAL_ERROR);
  else if (!st->ended) st->rst_after = 1;
  c->want_flush = 1;
  conn_leave(c); /* st may be freed from here on */
  return rc;
}
