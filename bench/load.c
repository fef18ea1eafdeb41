/*
 * otlp-load: an OTLP/HTTP load generator on one libuv loop.
 *
 * N keep-alive connections, one request in flight on each. Every connection owns a pre-built payload
 * (bench/payload.h) whose trace IDs are re-randomised in place before each send, plus one reusable gzip buffer,
 * so the steady state allocates nothing. Requests are claimed from a global budget (--requests and/or
 * --duration) and optionally paced to --rate by absolute send slots. Responses are parsed with llhttp; transport
 * failures (connect, reset/EOF, timeout, protocol) are counted apart from HTTP status codes. The run ends when the
 * budget is spent and every connection is idle, or on SIGINT/SIGTERM; either way a summary and one
 * machine-readable "RESULT k=v ..." line go to stdout.
 * --tls / --ca / --insecure (or an https:// URL): every connection is TLS through gateway/transport (the gateway's
 * own transport; ALPN http/1.1, or h2 with --grpc), verified against the system bundle or --ca, SNI and name check
 * from the URL's host; a failed handshake counts as a connect error (its reason printed once on stderr).
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <llhttp.h>
#include <nghttp2/nghttp2.h>
#include <uv.h>

#include "bench/payload.h"
#include "gateway/grpc.h"
#include "gateway/transport.h"

#define HEAD_CAP_EXTRA 32          /* room for "<content length>\r\n\r\n" after the shared header prefix */
#define USER_HEADERS_MAX 8192      /* bytes of --header lines */
#define READ_BUF_SIZE 16384       /* responses are small; one buffer per connection */
#define CONNECTIONS_MAX 10000
#define CONNECT_BACKOFF_MS 10      /* after a failed connect, so a dead peer is not spun on */
#define STATUS_MAX 1000

/* ---------------------------------------------------------------------------------------------- config */

typedef struct load_cfg {
  char host[256];          /* for getaddrinfo (brackets stripped) */
  char authority[300];     /* Host header: host[:port] as written in the URL */
  char port[8];
  char path[1024];         /* URL path prefix + /v1/<signal> */
  pl_options payload;
  uint32_t connections;
  uint64_t requests;       /* 0 = unlimited (then duration bounds the run) */
  uint64_t duration_ns;    /* 0 = unlimited (then requests bounds the run) */
  double rate;             /* requests/s in total; 0 = as fast as possible */
  bool gzip;
  int gzip_level;
  const char *trace_file;
  char headers[USER_HEADERS_MAX]; /* "K: V\r\n" lines */
  size_t headers_len;
  bool user_host;          /* a --header Host: replaces ours */
  uint64_t timeout_ns;
  bool progress, quiet;
  bool grpc;               /* --grpc: OTLP/gRPC over HTTP/2 instead of OTLP/HTTP */
  uint32_t streams;        /* --streams: concurrent calls per gRPC connection */
  bool tls;                /* --tls, --ca, --insecure or an https:// URL */
  const char *ca_file;     /* --ca: verify against this bundle instead of the system's */
  bool insecure;           /* --insecure: no verification at all */
} load_cfg;

/* ---------------------------------------------------------------------------------------------- latency */

/*
 * Log-linear histogram of nanoseconds: exact below 256, then 128 sub-buckets per power of two (<= 0.8% error).
 * Fixed size, so latency accounting never allocates however long the run.
 */
#define HIST_SUB 128
#define HIST_BUCKETS (256 + 56 * HIST_SUB)

typedef struct lat_hist {
  uint64_t b[HIST_BUCKETS];
  uint64_t n, max;
} lat_hist;

static size_t hist_index(uint64_t v) {
  if (v < 256) return (size_t)v;
  int msb = 63 - __builtin_clzll(v);
  int shift = msb - 7;
  return 256 + (size_t)(shift - 1) * HIST_SUB + (size_t)((v >> shift) - HIST_SUB);
}

/* Midpoint of bucket i's value range. */
static uint64_t hist_value(size_t i) {
  if (i < 256) return i;
  int shift = (int)((i - 256) / HIST_SUB) + 1;
  uint64_t sub = (i - 256) % HIST_SUB + HIST_SUB;
  return (sub << shift) + ((1ull << shift) >> 1);
}

static void hist_add(lat_hist *h, uint64_t v) {
  h->b[hist_index(v)]++;
  h->n++;
  if (v > h->max) h->max = v;
}

/* The q-quantile (0..1) in ns, never above the exact maximum; 0 for an empty histogram. */
static uint64_t hist_quantile(const lat_hist *h, double q) {
  if (!h->n) return 0;
  uint64_t rank = (uint64_t)ceil(q * (double)h->n);
  if (rank < 1) rank = 1;
  uint64_t seen = 0;
  for (size_t i = 0; i < HIST_BUCKETS; i++) {
    seen += h->b[i];
    if (seen >= rank) {
      uint64_t v = hist_value(i);
      return v < h->max ? v : h->max;
    }
  }
  return h->max;
}

/* ---------------------------------------------------------------------------------------------- state */

enum err_kind { ERR_CONNECT, ERR_RESET, ERR_TIMEOUT, ERR_PROTOCOL, ERR_KINDS };
static const char *const err_names[ERR_KINDS] = {"connect", "reset", "timeout", "protocol"};

/* What a connection does once its TCP handle has closed. */
enum after_close { AC_NONE, AC_NEXT, AC_GO, AC_BACKOFF };
/* What the connection's one timer is currently for. */
enum timer_mode { TM_NONE, TM_PACE, TM_TIMEOUT, TM_BACKOFF };

typedef struct load load;

typedef struct conn {
  load *ld;
  uint32_t idx;
  tp_t tp;               /* plain or TLS (gateway/transport); tp.tcp.data = the conn */
  uv_timer_t timer;
  uv_connect_t connect_req;
  uv_write_t write_req;
  llhttp_t parser;
  bool tcp_open;         /* tcp initialised and not yet closed (close callback pending counts as open) */
  bool closing;
  bool connected;
  bool busy;             /* holds a claimed request that has not completed */
  uint64_t req_no;       /* global number of the claimed request: seeds its trace IDs */
  bool sent;             /* ... and it has been written on the current connection */
  bool writing;          /* write_req in use */
  bool next_after_write; /* response came before the write callback: continue from there */
  bool finished;
  bool msg_done, keep_alive;
  int status;
  enum after_close after;
  enum timer_mode tmode;
  uint64_t sent_ns;
  pl_payload payload;
  pl_gzip gz;
  char *head;            /* shared prefix + this request's Content-Length */
  size_t head_len;
  char rbuf[READ_BUF_SIZE];
} conn;

struct load {
  load_cfg cfg;
  uv_loop_t *loop;
  struct sockaddr_storage addr;
  const char *prefix;    /* request head up to "Content-Length: " */
  size_t prefix_len;
  llhttp_settings_t settings;
  conn *conns;
  uint32_t finished;
  bool stopping, done;
  uv_signal_t sigint, sigterm;
  uv_timer_t progress;
  FILE *trace_fp;
  uint64_t start_ns, end_ns, deadline_ns;
  /* counters */
  uint64_t issued, completed, ok, aborted;
  uint64_t spans_sent, spans_acked, traces_acked, bytes;
  uint64_t errors[ERR_KINDS];
  uint64_t status[STATUS_MAX];
  uint64_t last_completed, last_progress_ns;
  lat_hist lat;
  /* --grpc */
  struct gconn *gconns;
  uint64_t g_built;      /* slots whose payload was built */
  nghttp2_session_callbacks *h2_callbacks;
  nghttp2_nv *nva;       /* the request headers every call shares */
  size_t n_nva;
  char *hdr_copy;        /* --header lines split into metadata (nva points into it) */
  uint64_t codes[GRPC_N_CODES];
  uint64_t retry_info;   /* answers that carried RetryInfo */
  char first_error[200]; /* "CODE: grpc-message" of the first non-OK answer */
  tls_ctx_t *tls;        /* the client context, NULL when plain */
  bool tls_error_told;   /* the first handshake failure's reason went to stderr */
};

static void conn_next(conn *c);
static void conn_go(conn *c);
static void start_timer(conn *c, enum timer_mode m, uint64_t ms);
static void g_stop(load *ld);

static void die_usage(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));
static void die_usage(const char *fmt, ...) {
  va_list ap;
  fputs("otlp-load: ", stderr);
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fputs(" (see --help)\n", stderr);
  exit(2);
}

/* ---------------------------------------------------------------------------------------------- lifecycle */

static void on_handle_closed(uv_handle_t *h) { (void)h; }

static void load_finish(load *ld) {
  if (ld->done) return;
  ld->done = true;
  ld->end_ns = uv_hrtime();
  uv_close((uv_handle_t *)&ld->sigint, on_handle_closed);
  uv_close((uv_handle_t *)&ld->sigterm, on_handle_closed);
  uv_close((uv_handle_t *)&ld->progress, on_handle_closed);
}

static void on_tcp_closed(uv_handle_t *h) {
  conn *c = h->data;
  c->tcp_open = c->closing = c->connected = false;
  if (c->finished) return;
  enum after_close a = c->after;
  c->after = AC_NONE;
  switch (a) {
  case AC_NEXT: conn_next(c); break;
  case AC_GO: conn_go(c); break;
  case AC_BACKOFF: start_timer(c, TM_BACKOFF, CONNECT_BACKOFF_MS); break;
  case AC_NONE: break;
  }
}

/* Closes the TCP handle (if open) and says what to do once it is closed. Never frees anything. */
static void conn_close(conn *c, enum after_close after) {
  c->after = after;
  c->connected = false;
  if (!c->tcp_open) {
    if (!c->finished) on_tcp_closed((uv_handle_t *)&c->tp.tcp);
    return;
  }
  if (c->closing) return;
  c->closing = true;
  tp_close(&c->tp, on_tcp_closed);
}

/* The connection takes no more requests: its handles close and the run ends with the last one. */
static void conn_finish(conn *c) {
  if (c->finished) return;
  c->finished = true;
  load *ld = c->ld;
  if (c->busy) ld->aborted++;
  c->busy = c->sent = false;
  uv_timer_stop(&c->timer);
  uv_close((uv_handle_t *)&c->timer, on_handle_closed);
  if (c->tcp_open && !c->closing) {
    c->closing = true;
    tp_close(&c->tp, on_tcp_closed);
  }
  if (++ld->finished == ld->cfg.connections) load_finish(ld);
}

static void load_stop(load *ld) {
  if (ld->stopping) return;
  ld->stopping = true;
  if (ld->cfg.grpc) {
    g_stop(ld);
    return;
  }
  for (uint32_t i = 0; i < ld->cfg.connections; i++) conn_finish(&ld->conns[i]);
}

/* ---------------------------------------------------------------------------------------------- accounting */

/* Counts the connection's request as a transport failure; false if it had none to fail. */
static bool conn_fail(conn *c, enum err_kind kind) {
  if (!c->busy) return false;
  load *ld = c->ld;
  c->busy = c->sent = false;
  ld->completed++;
  ld->errors[kind]++;
  uv_timer_stop(&c->timer);
  c->tmode = TM_NONE;
  return true;
}

static void write_traces(load *ld, const pl_payload *p) {
  char line[48];
  for (size_t i = 0; i < p->n_traces; i++) {
    pl_trace_hex(p->traces[i].id, line);
    int n = snprintf(line + 32, sizeof(line) - 32, " %" PRIu32 "\n", p->traces[i].count);
    fwrite(line, 1, 32 + (size_t)n, ld->trace_fp);
  }
}

/* An HTTP response completed the connection's request. */
static void conn_complete(conn *c) {
  load *ld = c->ld;
  uint64_t now = uv_hrtime();
  c->busy = c->sent = false;
  uv_timer_stop(&c->timer);
  c->tmode = TM_NONE;
  ld->completed++;
  hist_add(&ld->lat, now - c->sent_ns);
  if (c->status >= 0 && c->status < STATUS_MAX) ld->status[c->status]++;
  if (c->status >= 200 && c->status < 300) {
    ld->ok++;
    ld->spans_acked += c->payload.items;
    ld->traces_acked += c->payload.n_traces;
    if (ld->trace_fp) write_traces(ld, &c->payload);
  }
}

/* ---------------------------------------------------------------------------------------------- requests */

/* Takes one request from the budget and its send time (ns, uv_hrtime clock); false when the budget is spent. */
static bool claim(load *ld, uint64_t *slot) {
  if (ld->stopping) return false;
  if (ld->cfg.requests && ld->issued >= ld->cfg.requests) return false;
  uint64_t now = uv_hrtime();
  uint64_t s = now;
  if (ld->cfg.rate > 0) s = ld->start_ns + (uint64_t)((double)ld->issued * 1e9 / ld->cfg.rate);
  if (ld->deadline_ns && (now >= ld->deadline_ns || s >= ld->deadline_ns)) return false;
  ld->issued++;
  *slot = s;
  return true;
}

static void on_timer(uv_timer_t *t);

/* The connection has one timer; m says what its expiry means (pacing slot, timeout, connect backoff). */
static void start_timer(conn *c, enum timer_mode m, uint64_t ms) {
  c->tmode = m;
  uv_timer_start(&c->timer, on_timer, ms, 0);
}

/* A read or write error on a TLS connection whose handshake had not completed: a connect error (a write held for
 * the handshake fails with it too); the first one's reason goes to stderr. */
static bool tls_failed(load *ld, const tp_t *tp, int err) {
  if (!tp_is_tls(tp) || tp_handshake_done(tp)) return false;
  if (!ld->tls_error_told) {
    ld->tls_error_told = true;
    fprintf(stderr, "otlp-load: TLS handshake with %s failed: %s\n", ld->cfg.authority,
            tp_error(tp)[0] ? tp_error(tp) : uv_strerror(err));
  }
  return true;
}

static void on_write(uv_write_t *req, int status) {
  conn *c = req->data;
  c->writing = false;
  if (status < 0) {
    c->next_after_write = false;
    if (status == UV_ECANCELED || c->finished) return; /* closed by us; whoever closed accounted for it */
    bool handshake = tls_failed(c->ld, &c->tp, status);
    conn_fail(c, handshake ? ERR_CONNECT : ERR_RESET);
    conn_close(c, handshake ? AC_BACKOFF : AC_NEXT);
    return;
  }
  if (c->next_after_write) {
    c->next_after_write = false;
    conn_next(c);
  }
}

static void conn_send(conn *c) {
  load *ld = c->ld;
  pl_payload *p = &c->payload;
  /* Trace IDs depend on the request's global number, not on which connection carries it, so equal seeds
   * give equal trace IDs whatever the connection count and timing (tests rely on it). */
  pl_rng_seed(&p->rng, pl_mix64(ld->cfg.payload.seed ^ pl_mix64(c->req_no + 1)));
  pl_payload_rerandomize(p);
  const uint8_t *body = p->body;
  size_t len = p->len;
  if (ld->cfg.gzip) {
    ssize_t n = pl_gzip_compress(&c->gz, p->body, p->len, &body);
    if (n < 0) {
      fprintf(stderr, "otlp-load: gzip: %s\n", strerror((int)-n));
      conn_fail(c, ERR_PROTOCOL);
      load_stop(ld);
      return;
    }
    len = (size_t)n;
  }
  int n = snprintf(c->head + ld->prefix_len, HEAD_CAP_EXTRA, "%zu\r\n\r\n", len);
  c->head_len = ld->prefix_len + (size_t)n;
  uv_buf_t bufs[2] = {uv_buf_init(c->head, (unsigned)c->head_len), uv_buf_init((char *)body, (unsigned)len)};
  c->msg_done = false;
  c->sent = true;
  c->writing = true;
  c->sent_ns = uv_hrtime();
  ld->spans_sent += p->items;
  ld->bytes += len;
  int rc = tp_write(&c->write_req, &c->tp, bufs, 2, on_write);
  if (rc < 0) {
    c->writing = false;
    conn_fail(c, ERR_RESET);
    conn_close(c, AC_NEXT);
  }
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  conn *c = h->data;
  *buf = uv_buf_init(c->rbuf, sizeof(c->rbuf));
}

/* The response is complete: account for it, then reuse the connection or reconnect. */
static void conn_response_done(conn *c, bool reusable) {
  bool expected = c->sent;
  if (expected) conn_complete(c);
  if (!expected || !reusable || !c->keep_alive || c->ld->stopping) {
    /* A response nobody asked for is the peer's protocol error; the connection cannot be trusted after it. */
    if (!expected) c->ld->errors[ERR_PROTOCOL]++;
    conn_close(c, c->busy ? AC_NONE : AC_NEXT);
  } else if (c->writing) {
    c->next_after_write = true;
  } else {
    conn_next(c);
  }
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
  conn *c = s->data;
  if (nread == 0 || c->finished) return;
  if (nread < 0) {
    if (tls_failed(c->ld, &c->tp, (int)nread)) {
      conn_fail(c, ERR_CONNECT);
      conn_close(c, AC_BACKOFF); /* as a refused connect: no spinning on a peer that fails every handshake */
      return;
    }
    if (c->sent && nread == UV_EOF) {
      llhttp_finish(&c->parser); /* a body delimited by EOF completes here */
      if (c->msg_done) {
        conn_response_done(c, false);
        return;
      }
    }
    if (c->sent) conn_fail(c, ERR_RESET);
    conn_close(c, c->busy ? AC_NONE : AC_NEXT);
    return;
  }
  llhttp_errno_t err = llhttp_execute(&c->parser, buf->base, (size_t)nread);
  if (err == HPE_PAUSED && c->msg_done) {
    /* Paused right after the message: anything behind it was not asked for (one request in flight). */
    bool trailing = llhttp_get_error_pos(&c->parser) != buf->base + nread;
    llhttp_resume(&c->parser);
    conn_response_done(c, !trailing);
    return;
  }
  if (err != HPE_OK) {
    if (!conn_fail(c, ERR_PROTOCOL)) c->ld->errors[ERR_PROTOCOL]++;
    conn_close(c, c->busy ? AC_NONE : AC_NEXT);
  }
}

static int on_message_complete(llhttp_t *p) {
  conn *c = p->data;
  c->msg_done = true;
  c->status = llhttp_get_status_code(p);
  c->keep_alive = llhttp_should_keep_alive(p);
  return HPE_PAUSED;
}

static void on_connect(uv_connect_t *req, int status) {
  conn *c = req->data;
  if (status == UV_ECANCELED || c->finished) return;
  if (status < 0) {
    conn_fail(c, ERR_CONNECT);
    conn_close(c, AC_BACKOFF);
    return;
  }
  c->connected = true;
  if (c->ld->tls && tp_start_client(&c->tp, c->ld->tls, c->ld->cfg.host, NULL) < 0) {
    conn_fail(c, ERR_CONNECT);
    conn_close(c, AC_BACKOFF);
    return;
  }
  llhttp_init(&c->parser, HTTP_RESPONSE, &c->ld->settings);
  c->parser.data = c;
  int rc = tp_read_start(&c->tp, on_alloc, on_read);
  if (rc < 0) {
    conn_fail(c, ERR_CONNECT);
    conn_close(c, AC_BACKOFF);
    return;
  }
  conn_send(c);
}

static void conn_connect(conn *c) {
  load *ld = c->ld;
  int rc = tp_init(ld->loop, &c->tp);
  if (rc < 0) {
    conn_fail(c, ERR_CONNECT);
    start_timer(c, TM_BACKOFF, CONNECT_BACKOFF_MS);
    return;
  }
  c->tp.tcp.data = c;
  c->tcp_open = true;
  uv_tcp_nodelay(&c->tp.tcp, 1);
  c->connect_req.data = c;
  rc = uv_tcp_connect(&c->connect_req, &c->tp.tcp, (const struct sockaddr *)&ld->addr, on_connect);
  if (rc < 0) {
    conn_fail(c, ERR_CONNECT);
    conn_close(c, AC_BACKOFF);
  }
}

/* Sends the claimed request now, connecting first when needed; the timeout covers connect + response. */
static void conn_go(conn *c) {
  if (c->closing) {
    c->after = AC_GO;
    return;
  }
  start_timer(c, TM_TIMEOUT, (c->ld->cfg.timeout_ns + 999999) / 1000000);
  if (c->connected) conn_send(c);
  else conn_connect(c);
}

/* The connection is free: claim the next request and send it at its slot, or finish. */
static void conn_next(conn *c) {
  load *ld = c->ld;
  uint64_t slot;
  if (c->finished) return;
  c->req_no = ld->issued;
  if (!claim(ld, &slot)) {
    conn_finish(c);
    return;
  }
  c->busy = true;
  uint64_t now = uv_hrtime();
  if (slot > now + 500000) start_timer(c, TM_PACE, (slot - now + 999999) / 1000000);
  else conn_go(c);
}

static void on_timer(uv_timer_t *t) {
  conn *c = t->data;
  enum timer_mode m = c->tmode;
  c->tmode = TM_NONE;
  switch (m) {
  case TM_PACE: conn_go(c); break;
  case TM_BACKOFF: conn_next(c); break;
  case TM_TIMEOUT:
    conn_fail(c, ERR_TIMEOUT);
    conn_close(c, AC_NEXT);
    break;
  case TM_NONE: break;
  }
}

/* ---------------------------------------------------------------------------------------------- OTLP/gRPC */

/*
 * --grpc: N connections (--connections), each an nghttp2 client session carrying M calls at once (--streams).
 * Each stream slot works like an HTTP connection above: it claims a request, waits for its pacing slot, submits
 * one Export call (HEADERS + the 5-byte prefix and the message as DATA), and counts the answer by its
 * grpc-status once the stream closes. nghttp2 is driven with mem_recv/mem_send: what mem_send produces is
 * gathered into one buffer per connection and written with one uv_write at a time. nghttp2 must not be re-entered
 * from its callbacks (in_h2), so a call completed there only submits the next one, and the connection flushes
 * once mem_recv / mem_send has returned.
 */

#define GRPC_WBUF_FLUSH (256 * 1024) /* stop gathering frames past this and write */
#define GRPC_STREAMS_MAX 1000

typedef struct gconn gconn;

typedef struct gslot {
  gconn *gc;
  uv_timer_t timer;
  enum timer_mode tmode;
  bool busy;             /* holds a claimed request that has not completed */
  bool ready;            /* ... waiting for the connection to submit it */
  bool sent;             /* ... submitted: stream_id is its stream */
  bool finished;
  int32_t stream_id;
  uint64_t req_no, sent_ns;
  const uint8_t *msg;    /* the message of the call in flight (the payload's body or the gzip buffer) */
  size_t msg_len, off;   /* off: bytes of prefix + message handed to nghttp2 */
  uint8_t prefix[5];
  int http_status;       /* :status of the answer, 0 until seen */
  int grpc_status;       /* -1 until the trailers (or a trailers-only answer) carried one */
  int64_t retry_s;       /* RetryInfo retry_delay of the answer, -1 when none */
  char message[160];     /* grpc-message, percent-decoded */
  pl_payload payload;
  pl_gzip gz;
} gslot;

struct gconn {
  load *ld;
  tp_t tp;               /* tp.tcp.data = the gconn */
  uv_timer_t backoff;
  uv_connect_t connect_req;
  uv_write_t write_req;
  nghttp2_session *session;
  bool tcp_open, closing, connected, writing, in_h2, goaway, connect_failed, backoff_on, finished;
  uint32_t n_finished;   /* slots finished */
  uint8_t *wbuf;
  size_t wlen, wcap;
  gslot *slots;
  char rbuf[READ_BUF_SIZE];
};

static void g_slot_next(gslot *sl);
static void g_kick(gconn *gc);
static void g_flush(gconn *gc);
static void g_on_tcp_closed(uv_handle_t *h);

/* The gRPC code a client assumes for an answer without grpc-status (gRPC's "HTTP to gRPC status mapping"). */
static int g_code_from_http(int http_status) {
  switch (http_status) {
  case 400: return GRPC_INTERNAL;
  case 401: return GRPC_UNAUTHENTICATED;
  case 403: return GRPC_PERMISSION_DENIED;
  case 404: return GRPC_UNIMPLEMENTED;
  case 429: case 502: case 503: case 504: return GRPC_UNAVAILABLE;
  default: return GRPC_UNKNOWN;
  }
}

static void g_conn_finish(gconn *gc) {
  if (gc->finished) return;
  gc->finished = true;
  load *ld = gc->ld;
  uv_timer_stop(&gc->backoff);
  uv_close((uv_handle_t *)&gc->backoff, on_handle_closed);
  if (gc->tcp_open && !gc->closing) {
    gc->closing = true;
    tp_close(&gc->tp, g_on_tcp_closed);
  }
  if (++ld->finished == ld->cfg.connections) load_finish(ld);
}

/* The slot takes no more requests; the connection finishes with its last slot. */
static void g_slot_finish(gslot *sl) {
  if (sl->finished) return;
  gconn *gc = sl->gc;
  sl->finished = true;
  if (sl->busy) gc->ld->aborted++;
  if (sl->sent && gc->session) nghttp2_session_set_stream_user_data(gc->session, sl->stream_id, NULL);
  sl->busy = sl->ready = sl->sent = false;
  uv_timer_stop(&sl->timer);
  uv_close((uv_handle_t *)&sl->timer, on_handle_closed);
  if (++gc->n_finished == gc->ld->cfg.streams) g_conn_finish(gc);
}

static void g_stop(load *ld) {
  for (uint32_t i = 0; i < ld->cfg.connections; i++)
    for (uint32_t j = 0; j < ld->cfg.streams; j++) g_slot_finish(&ld->gconns[i].slots[j]);
}

/* Counts the slot's request as a transport failure; false if it had none. */
static bool g_fail(gslot *sl, enum err_kind kind) {
  if (!sl->busy) return false;
  gconn *gc = sl->gc;
  if (sl->sent && gc->session) nghttp2_session_set_stream_user_data(gc->session, sl->stream_id, NULL);
  sl->busy = sl->ready = sl->sent = false;
  gc->ld->completed++;
  gc->ld->errors[kind]++;
  uv_timer_stop(&sl->timer);
  sl->tmode = TM_NONE;
  return true;
}

/* The call's stream closed with an answer: count it by its gRPC code. */
static void g_complete(gslot *sl, int code) {
  load *ld = sl->gc->ld;
  uint64_t now = uv_hrtime();
  sl->busy = sl->sent = false;
  uv_timer_stop(&sl->timer);
  sl->tmode = TM_NONE;
  ld->completed++;
  hist_add(&ld->lat, now - sl->sent_ns);
  if (code < 0 || code >= GRPC_N_CODES) code = GRPC_UNKNOWN;
  ld->codes[code]++;
  if (sl->retry_s >= 0) ld->retry_info++;
  if (code == GRPC_OK) {
    ld->ok++;
    ld->spans_acked += sl->payload.items;
    ld->traces_acked += sl->payload.n_traces;
    if (ld->trace_fp) write_traces(ld, &sl->payload);
  } else if (!ld->first_error[0]) {
    snprintf(ld->first_error, sizeof ld->first_error, "%s: %s", grpc_code_name(code), sl->message);
  }
}

static ssize_t g_read_data(nghttp2_session *session, int32_t stream_id, uint8_t *buf, size_t length,
                           uint32_t *data_flags, nghttp2_data_source *source, void *user_data) {
  gslot *sl = source->ptr;
  if (!sl->sent || sl->stream_id != stream_id) return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE; /* a stale stream */
  size_t total = 5 + sl->msg_len, n = 0;
  while (n < length && sl->off < total) {
    if (sl->off < 5) {
      buf[n++] = sl->prefix[sl->off++];
      continue;
    }
    size_t k = total - sl->off < length - n ? total - sl->off : length - n;
    memcpy(buf + n, sl->msg + (sl->off - 5), k);
    n += k;
    sl->off += k;
  }
  if (sl->off == total) *data_flags |= NGHTTP2_DATA_FLAG_EOF;
  return (ssize_t)n;
}

/* Submits the slot's claimed request on the connection's session. */
static void g_submit(gslot *sl) {
  gconn *gc = sl->gc;
  load *ld = gc->ld;
  pl_payload *p = &sl->payload;
  pl_rng_seed(&p->rng, pl_mix64(ld->cfg.payload.seed ^ pl_mix64(sl->req_no + 1))); /* as conn_send */
  pl_payload_rerandomize(p);
  sl->msg = p->body;
  sl->msg_len = p->len;
  if (ld->cfg.gzip) {
    const uint8_t *z;
    ssize_t n = pl_gzip_compress(&sl->gz, p->body, p->len, &z);
    if (n < 0) {
      fprintf(stderr, "otlp-load: gzip: %s\n", strerror((int)-n));
      g_fail(sl, ERR_PROTOCOL);
      load_stop(ld);
      return;
    }
    sl->msg = z;
    sl->msg_len = (size_t)n;
  }
  grpc_frame_prefix(sl->prefix, ld->cfg.gzip, (uint32_t)sl->msg_len);
  sl->off = 0;
  sl->http_status = 0;
  sl->grpc_status = -1;
  sl->retry_s = -1;
  sl->message[0] = '\0';
  nghttp2_data_provider dp = {.source = {.ptr = sl}, .read_callback = g_read_data};
  int32_t id = nghttp2_submit_request(gc->session, NULL, ld->nva, ld->n_nva, &dp, sl);
  if (id < 0) {
    if (id == NGHTTP2_ERR_START_STREAM_NOT_ALLOWED) {
      gc->goaway = true; /* the server sent GOAWAY: the slot stays ready for the next connection */
      return;
    }
    g_fail(sl, ERR_PROTOCOL);
    return;
  }
  sl->ready = false;
  sl->sent = true;
  sl->stream_id = id;
  sl->sent_ns = uv_hrtime();
  ld->spans_sent += p->items;
  ld->bytes += 5 + sl->msg_len;
}

static void g_on_timer(uv_timer_t *t);

static void g_start_timer(gslot *sl, enum timer_mode m, uint64_t ms) {
  sl->tmode = m;
  uv_timer_start(&sl->timer, g_on_timer, ms, 0);
}

/* The slot's request is due: it waits for the connection (connected or not), its timeout running. */
static void g_slot_go(gslot *sl) {
  g_start_timer(sl, TM_TIMEOUT, (sl->gc->ld->cfg.timeout_ns + 999999) / 1000000);
  sl->ready = true;
  g_kick(sl->gc);
}

/* The slot is free: claim the next request and send it at its slot, or finish. */
static void g_slot_next(gslot *sl) {
  load *ld = sl->gc->ld;
  uint64_t slot;
  if (sl->finished) return;
  sl->req_no = ld->issued;
  if (!claim(ld, &slot)) {
    g_slot_finish(sl);
    return;
  }
  sl->busy = true;
  uint64_t now = uv_hrtime();
  if (slot > now + 500000) g_start_timer(sl, TM_PACE, (slot - now + 999999) / 1000000);
  else g_slot_go(sl);
}

static void g_on_timer(uv_timer_t *t) {
  gslot *sl = t->data;
  gconn *gc = sl->gc;
  enum timer_mode m = sl->tmode;
  sl->tmode = TM_NONE;
  if (m == TM_PACE) {
    g_slot_go(sl);
  } else if (m == TM_TIMEOUT) {
    if (sl->sent && gc->session)
      nghttp2_submit_rst_stream(gc->session, NGHTTP2_FLAG_NONE, sl->stream_id, NGHTTP2_CANCEL);
    g_fail(sl, ERR_TIMEOUT);
    g_slot_next(sl);
    g_flush(gc);
  }
}

/* ---- the connection */

/* Closes the connection (if open); connect_failed chooses a backoff before the next connect. Requests sent on it
 * fail as kind; ready ones wait for the next connection (with a failed connect they fail as ERR_CONNECT). Never
 * called from nghttp2's callbacks. */
static void g_drop(gconn *gc, enum err_kind kind) {
  load *ld = gc->ld;
  gc->connected = false;
  if (gc->tcp_open && !gc->closing) {
    gc->closing = true;
    tp_close(&gc->tp, g_on_tcp_closed);
  }
  for (uint32_t j = 0; j < ld->cfg.streams; j++) {
    gslot *sl = &gc->slots[j];
    if (sl->sent) g_fail(sl, kind);
    else if (sl->ready && gc->connect_failed) g_fail(sl, ERR_CONNECT);
    else continue;
    g_slot_next(sl); /* claims the next request: it waits until the connection is closed and reopened */
  }
}

static void g_on_backoff(uv_timer_t *t) {
  gconn *gc = t->data;
  gc->backoff_on = false;
  g_kick(gc);
}

static void g_on_tcp_closed(uv_handle_t *h) {
  gconn *gc = h->data;
  gc->tcp_open = gc->closing = gc->connected = gc->writing = gc->goaway = false;
  gc->wlen = 0;
  if (gc->session) {
    nghttp2_session_del(gc->session);
    gc->session = NULL;
  }
  if (gc->finished) return;
  if (gc->connect_failed) {
    gc->backoff_on = true;
    uv_timer_start(&gc->backoff, g_on_backoff, CONNECT_BACKOFF_MS, 0);
    return;
  }
  g_kick(gc);
}

static void g_on_write(uv_write_t *req, int status) {
  gconn *gc = req->data;
  gc->writing = false;
  gc->wlen = 0;
  if (status < 0) {
    if (status == UV_ECANCELED || gc->finished) return;
    if (tls_failed(gc->ld, &gc->tp, status)) {
      gc->connect_failed = true;
      g_drop(gc, ERR_CONNECT);
      return;
    }
    g_drop(gc, ERR_RESET);
    return;
  }
  g_flush(gc);
}

/* Gathers what nghttp2 has to send and writes it; closes a connection that is done (after a GOAWAY). */
static void g_flush(gconn *gc) {
  if (gc->writing || gc->in_h2 || !gc->session || gc->closing || !gc->connected) return;
  for (;;) {
    const uint8_t *data;
    gc->in_h2 = true; /* a stream closed while sending completes a call, which may submit the next one */
    ssize_t n = nghttp2_session_mem_send(gc->session, &data);
    gc->in_h2 = false;
    if (gc->closing) return; /* its last slot finished meanwhile */
    if (n < 0) {
      g_drop(gc, ERR_PROTOCOL);
      return;
    }
    if (n == 0) break;
    if (gc->wlen + (size_t)n > gc->wcap) {
      size_t cap = gc->wcap ? gc->wcap : 65536;
      while (cap < gc->wlen + (size_t)n) cap *= 2;
      uint8_t *nb = realloc(gc->wbuf, cap);
      if (!nb) {
        g_drop(gc, ERR_PROTOCOL);
        return;
      }
      gc->wbuf = nb;
      gc->wcap = cap;
    }
    memcpy(gc->wbuf + gc->wlen, data, (size_t)n);
    gc->wlen += (size_t)n;
    if (gc->wlen >= GRPC_WBUF_FLUSH) break;
  }
  if (gc->wlen) {
    uv_buf_t b = uv_buf_init((char *)gc->wbuf, (unsigned)gc->wlen);
    gc->writing = true;
    if (tp_write(&gc->write_req, &gc->tp, &b, 1, g_on_write) < 0) {
      gc->writing = false;
      g_drop(gc, ERR_RESET);
    }
    return;
  }
  if (!nghttp2_session_want_read(gc->session) && !nghttp2_session_want_write(gc->session)) {
    gc->connect_failed = false;
    g_drop(gc, ERR_RESET); /* nothing is in flight: a GOAWAY'd connection closes, the next one opens */
  }
}

static void g_on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  gconn *gc = h->data;
  *buf = uv_buf_init(gc->rbuf, sizeof(gc->rbuf));
}

static void g_on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
  gconn *gc = s->data;
  if (nread == 0 || gc->finished || gc->closing) return;
  if (nread < 0) {
    if (tls_failed(gc->ld, &gc->tp, (int)nread)) {
      gc->connect_failed = true;
      g_drop(gc, ERR_CONNECT);
      return;
    }
    g_drop(gc, ERR_RESET);
    return;
  }
  gc->in_h2 = true;
  ssize_t rv = nghttp2_session_mem_recv(gc->session, (const uint8_t *)buf->base, (size_t)nread);
  gc->in_h2 = false;
  if (rv < 0) {
    g_drop(gc, ERR_PROTOCOL);
    return;
  }
  g_flush(gc);
}

static int g_on_header(nghttp2_session *session, const nghttp2_frame *frame, const uint8_t *name, size_t namelen,
                       const uint8_t *value, size_t valuelen, uint8_t flags, void *user_data) {
  if (frame->hd.type != NGHTTP2_HEADERS) return 0;
  gslot *sl = nghttp2_session_get_stream_user_data(session, frame->hd.stream_id);
  if (!sl || !sl->sent || sl->stream_id != frame->hd.stream_id) return 0;
  hs_slice_t v = {(const char *)value, valuelen};
  if (namelen == 7 && !memcmp(name, ":status", 7)) {
    sl->http_status = atoi((const char *)value); /* nghttp2 NUL-terminates values */
  } else if (namelen == 11 && !memcmp(name, "grpc-status", 11)) {
    char *end;
    long c = strtol((const char *)value, &end, 10);
    sl->grpc_status = valuelen && *end == '\0' && c >= 0 && c < 1000 ? (int)c : GRPC_UNKNOWN;
  } else if (namelen == 12 && !memcmp(name, "grpc-message", 12)) {
    size_t n = grpc_percent_decode(v, sl->message, sizeof sl->message);
    if (n >= sizeof sl->message) n = sizeof sl->message - 1;
    sl->message[n] = '\0';
  } else if (namelen == 23 && !memcmp(name, "grpc-status-details-bin", 23)) {
    sl->retry_s = grpc_retry_delay_from_details(v);
  }
  return 0;
}

/* A GOAWAY: no new stream on this connection; it closes once its streams are done, and the next one opens. */
static int g_on_frame_recv(nghttp2_session *session, const nghttp2_frame *frame, void *user_data) {
  if (frame->hd.type == NGHTTP2_GOAWAY) ((gconn *)user_data)->goaway = true;
  return 0;
}

static int g_on_stream_close(nghttp2_session *session, int32_t stream_id, uint32_t error_code, void *user_data) {
  gconn *gc = user_data;
  gslot *sl = nghttp2_session_get_stream_user_data(session, stream_id);
  if (!sl || !sl->sent || sl->stream_id != stream_id) return 0;
  if (error_code == NGHTTP2_REFUSED_STREAM && gc->goaway && sl->grpc_status < 0) {
    /* past the GOAWAY's last stream: never processed, so it goes again on the next connection (as gRPC clients
     * retry refused streams transparently); its timeout keeps running */
    sl->sent = false;
    sl->ready = true;
    gc->ld->spans_sent -= sl->payload.items;
    gc->ld->bytes -= 5 + sl->msg_len;
    return 0;
  }
  if (sl->grpc_status >= 0) g_complete(sl, sl->grpc_status);
  else if (error_code != NGHTTP2_NO_ERROR) g_fail(sl, ERR_RESET);
  else if (sl->http_status && sl->http_status != 200) g_complete(sl, g_code_from_http(sl->http_status));
  else g_fail(sl, ERR_PROTOCOL); /* ended without grpc-status */
  g_slot_next(sl);
  return 0;
}

static void g_on_connect(uv_connect_t *req, int status) {
  gconn *gc = req->data;
  load *ld = gc->ld;
  if (status == UV_ECANCELED || gc->finished) return;
  gc->connect_failed = status < 0;
  if (status < 0) {
    g_drop(gc, ERR_CONNECT);
    return;
  }
  if (ld->tls && tp_start_client(&gc->tp, ld->tls, ld->cfg.host, NULL) < 0) {
    gc->connect_failed = true;
    g_drop(gc, ERR_CONNECT);
    return;
  }
  if (nghttp2_session_client_new(&gc->session, ld->h2_callbacks, gc) != 0) {
    gc->connect_failed = true;
    g_drop(gc, ERR_CONNECT);
    return;
  }
  nghttp2_settings_entry iv[2] = {{NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
                                  {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, 1u << 20}};
  nghttp2_submit_settings(gc->session, NGHTTP2_FLAG_NONE, iv, 2);
  if (tp_read_start(&gc->tp, g_on_alloc, g_on_read) < 0) {
    gc->connect_failed = true;
    g_drop(gc, ERR_CONNECT);
    return;
  }
  gc->connected = true;
  g_kick(gc);
}

static void g_connect(gconn *gc) {
  load *ld = gc->ld;
  if (tp_init(ld->loop, &gc->tp) < 0) {
    gc->connect_failed = true;
    gc->backoff_on = true;
    uv_timer_start(&gc->backoff, g_on_backoff, CONNECT_BACKOFF_MS, 0);
    return;
  }
  gc->tp.tcp.data = gc;
  gc->tcp_open = true;
  uv_tcp_nodelay(&gc->tp.tcp, 1);
  gc->connect_req.data = gc;
  if (uv_tcp_connect(&gc->connect_req, &gc->tp.tcp, (const struct sockaddr *)&ld->addr, g_on_connect) < 0) {
    gc->connect_failed = true;
    g_drop(gc, ERR_CONNECT);
  }
}

/* Submits every ready slot on an open connection and flushes, or opens the connection. */
static void g_kick(gconn *gc) {
  if (gc->finished || gc->closing) return; /* the close callback kicks again */
  if (!gc->tcp_open) {
    if (gc->backoff_on) return;
    bool any = false;
    for (uint32_t j = 0; j < gc->ld->cfg.streams && !any; j++) any = gc->slots[j].ready;
    if (any) g_connect(gc);
    return;
  }
  if (!gc->connected) return; /* connecting: g_on_connect kicks */
  for (uint32_t j = 0; j < gc->ld->cfg.streams && !gc->goaway; j++)
    if (gc->slots[j].ready) g_submit(&gc->slots[j]);
  g_flush(gc);
}

/* Builds the request headers every call shares (names lower-case, as HTTP/2 wants). */
static int g_build_headers(load *ld) {
  const load_cfg *cfg = &ld->cfg;
  static char timeout[24];
  snprintf(timeout, sizeof timeout, "%" PRIu64 "m", (cfg->timeout_ns + 999999) / 1000000);
  size_t cap = 16 + 64;
  ld->nva = calloc(cap, sizeof *ld->nva);
  ld->hdr_copy = malloc(cfg->headers_len + 1);
  if (!ld->nva || !ld->hdr_copy) return -ENOMEM;
  size_t n = 0;
  const char *authority = cfg->authority;
  /* --header lines: "Name: value\r\n"; a Host header becomes :authority */
  memcpy(ld->hdr_copy, cfg->headers, cfg->headers_len);
  ld->hdr_copy[cfg->headers_len] = '\0';
  nghttp2_nv meta[64];
  size_t n_meta = 0;
  for (char *line = ld->hdr_copy; *line && n_meta < 64;) {
    char *eol = strstr(line, "\r\n");
    if (!eol) break;
    *eol = '\0';
    char *colon = strchr(line, ':');
    *colon = '\0';
    for (char *q = line; *q; q++) *q = (char)(*q >= 'A' && *q <= 'Z' ? *q + 32 : *q);
    const char *v = colon + 2; /* add_header wrote "Name: value" */
    if (!strcmp(line, "host")) authority = v;
    else meta[n_meta++] = (nghttp2_nv){(uint8_t *)line, (uint8_t *)v, strlen(line), strlen(v), NGHTTP2_NV_FLAG_NONE};
    line = eol + 2;
  }
#define NV(k, v) (nghttp2_nv){(uint8_t *)(k), (uint8_t *)(v), strlen(k), strlen(v), NGHTTP2_NV_FLAG_NONE}
  ld->nva[n++] = NV(":method", "POST");
  ld->nva[n++] = NV(":scheme", cfg->tls ? "https" : "http");
  ld->nva[n++] = NV(":path", cfg->path);
  ld->nva[n++] = NV(":authority", authority);
  ld->nva[n++] = NV("content-type", "application/grpc");
  ld->nva[n++] = NV("te", "trailers");
  ld->nva[n++] = NV("grpc-timeout", timeout);
  if (cfg->gzip) ld->nva[n++] = NV("grpc-encoding", "gzip");
  ld->nva[n++] = NV("user-agent", "otlp-load/grpc");
#undef NV
  for (size_t i = 0; i < n_meta; i++) ld->nva[n++] = meta[i];
  ld->n_nva = n;
  return 0;
}

/* Sets up connections and slots for --grpc; returns 0 or a negative errno (what was built is disposed by
 * g_dispose). */
static int g_init(load *ld) {
  int err;
  if ((err = g_build_headers(ld)) < 0) return err;
  nghttp2_session_callbacks *cb;
  if (nghttp2_session_callbacks_new(&cb) != 0) return -ENOMEM;
  nghttp2_session_callbacks_set_on_header_callback(cb, g_on_header);
  nghttp2_session_callbacks_set_on_stream_close_callback(cb, g_on_stream_close);
  nghttp2_session_callbacks_set_on_frame_recv_callback(cb, g_on_frame_recv);
  ld->h2_callbacks = cb;
  ld->gconns = calloc(ld->cfg.connections, sizeof(gconn));
  if (!ld->gconns) return -ENOMEM;
  for (uint32_t i = 0; i < ld->cfg.connections; i++) {
    gconn *gc = &ld->gconns[i];
    gc->ld = ld;
    gc->slots = calloc(ld->cfg.streams, sizeof(gslot));
    if (!gc->slots) return -ENOMEM;
    for (uint32_t j = 0; j < ld->cfg.streams; j++) {
      gslot *sl = &gc->slots[j];
      sl->gc = gc;
      pl_options po = ld->cfg.payload;
      po.seed = pl_mix64(ld->cfg.payload.seed + i * ld->cfg.streams + j);
      if ((err = pl_payload_init(&sl->payload, &po)) < 0) return err;
      ld->g_built++;
      if (ld->cfg.gzip && (err = pl_gzip_init(&sl->gz, ld->cfg.gzip_level)) < 0) return err;
    }
  }
  return 0;
}

static void g_start(load *ld) {
  for (uint32_t i = 0; i < ld->cfg.connections; i++) {
    gconn *gc = &ld->gconns[i];
    uv_timer_init(ld->loop, &gc->backoff);
    gc->backoff.data = gc;
    gc->write_req.data = gc;
    for (uint32_t j = 0; j < ld->cfg.streams; j++) {
      uv_timer_init(ld->loop, &gc->slots[j].timer);
      gc->slots[j].timer.data = &gc->slots[j];
    }
  }
  for (uint32_t i = 0; i < ld->cfg.connections; i++)
    for (uint32_t j = 0; j < ld->cfg.streams; j++) g_slot_next(&ld->gconns[i].slots[j]);
}

static void g_dispose(load *ld) {
  uint64_t left = ld->g_built;
  for (uint32_t i = 0; ld->gconns && i < ld->cfg.connections; i++) {
    gconn *gc = &ld->gconns[i];
    for (uint32_t j = 0; gc->slots && j < ld->cfg.streams && left; j++, left--) {
      pl_gzip_dispose(&gc->slots[j].gz);
      pl_payload_dispose(&gc->slots[j].payload);
    }
    free(gc->slots);
    free(gc->wbuf);
  }
  free(ld->gconns);
  if (ld->h2_callbacks) nghttp2_session_callbacks_del(ld->h2_callbacks);
  free(ld->nva);
  free(ld->hdr_copy);
}

/* ---------------------------------------------------------------------------------------------- signals, progress */

static void on_signal(uv_signal_t *s, int signum) {
  load *ld = s->data;
  if (!ld->cfg.quiet) fprintf(stderr, "otlp-load: %s, stopping\n", signum == SIGINT ? "SIGINT" : "SIGTERM");
  load_stop(ld);
}

static void on_progress(uv_timer_t *t) {
  load *ld = t->data;
  uint64_t now = uv_hrtime();
  double dt = (double)(now - ld->last_progress_ns) / 1e9;
  uint64_t errs = 0;
  for (int i = 0; i < ERR_KINDS; i++) errs += ld->errors[i];
  fprintf(stderr, "[%6.1fs] requests=%" PRIu64 " ok=%" PRIu64 " errors=%" PRIu64 " rps=%.0f p99_ms=%.2f\n",
          (double)(now - ld->start_ns) / 1e9, ld->completed, ld->ok, errs,
          dt > 0 ? (double)(ld->completed - ld->last_completed) / dt : 0.0, hist_quantile(&ld->lat, 0.99) / 1e6);
  ld->last_completed = ld->completed;
  ld->last_progress_ns = now;
}

/* ---------------------------------------------------------------------------------------------- summary */

static void print_summary(const load *ld) {
  const load_cfg *cfg = &ld->cfg;
  double el = (double)(ld->end_ns - ld->start_ns) / 1e9;
  if (el <= 0) el = 1e-9;
  uint64_t errs = 0;
  for (int i = 0; i < ERR_KINDS; i++) errs += ld->errors[i];
  double p50 = hist_quantile(&ld->lat, 0.50) / 1e6, p90 = hist_quantile(&ld->lat, 0.90) / 1e6;
  double p99 = hist_quantile(&ld->lat, 0.99) / 1e6, pmax = (double)ld->lat.max / 1e6;
  double rps = (double)ld->completed / el, sps = (double)ld->spans_acked / el, mbps = (double)ld->bytes / el / 1e6;
  if (!cfg->quiet) {
    char conns[64];
    if (cfg->grpc) snprintf(conns, sizeof conns, "%" PRIu32 " connections x %" PRIu32 " streams", cfg->connections,
                            cfg->streams);
    else snprintf(conns, sizeof conns, "%" PRIu32 " connections", cfg->connections);
    printf("otlp-load: %s %s%s %sto %s://%s%s, %s, %" PRIu32 " %s/request in %" PRIu32 " traces\n",
           pl_signal_name(cfg->payload.signal), cfg->payload.encoding == PL_JSON ? "json" : "protobuf",
           cfg->gzip ? "+gzip" : "", cfg->grpc ? "over gRPC " : "", cfg->tls ? "https" : "http", cfg->authority,
           cfg->path, conns,
           cfg->payload.items,
           cfg->payload.signal == PL_TRACES ? "spans" : cfg->payload.signal == PL_LOGS ? "log records" : "data points",
           cfg->payload.signal == PL_METRICS ? 0 : cfg->payload.traces);
    printf("  requests   %" PRIu64 " in %.3fs (%.1f req/s), %" PRIu64 " ok (%s)%s\n", ld->completed, el, rps, ld->ok,
           cfg->grpc ? "OK" : "2xx", ld->aborted ? ", some aborted by the stop" : "");
    printf("  status    ");
    bool any = false;
    for (int s = 0; !cfg->grpc && s < STATUS_MAX; s++) {
      if (ld->status[s]) {
        printf(" %d=%" PRIu64, s, ld->status[s]);
        any = true;
      }
    }
    for (int s = 0; cfg->grpc && s < GRPC_N_CODES; s++) {
      if (ld->codes[s]) {
        printf(" %s=%" PRIu64, grpc_code_name(s), ld->codes[s]);
        any = true;
      }
    }
    printf("%s\n", any ? "" : " (none)");
    if (cfg->grpc && ld->retry_info) printf("  retry      %" PRIu64 " answers carried RetryInfo\n", ld->retry_info);
    if (ld->first_error[0]) printf("  first error %s\n", ld->first_error);
    printf("  errors     %" PRIu64 " (connect %" PRIu64 ", reset %" PRIu64 ", timeout %" PRIu64 ", protocol %" PRIu64
           ")\n",
           errs, ld->errors[ERR_CONNECT], ld->errors[ERR_RESET], ld->errors[ERR_TIMEOUT], ld->errors[ERR_PROTOCOL]);
    printf("  items      %" PRIu64 " sent, %" PRIu64 " acked (%.0f/s), %" PRIu64 " traces acked\n", ld->spans_sent,
           ld->spans_acked, sps, ld->traces_acked);
    printf("  bytes      %" PRIu64 " body bytes sent (%.2f MB/s)\n", ld->bytes, mbps);
    printf("  latency    p50 %.3f ms  p90 %.3f ms  p99 %.3f ms  max %.3f ms\n", p50, p90, p99, pmax);
  }
  printf("RESULT requests=%" PRIu64 " ok=%" PRIu64 " spans_sent=%" PRIu64 " spans_acked=%" PRIu64
         " traces_acked=%" PRIu64 " bytes=%" PRIu64 " elapsed_s=%.3f rps=%.1f spans_per_s=%.1f mb_per_s=%.3f"
         " p50_ms=%.3f p90_ms=%.3f p99_ms=%.3f max_ms=%.3f errors=%" PRIu64,
         ld->completed, ld->ok, ld->spans_sent, ld->spans_acked, ld->traces_acked, ld->bytes, el, rps, sps, mbps, p50,
         p90, p99, pmax, errs);
  for (int i = 0; i < ERR_KINDS; i++) printf(" errors_%s=%" PRIu64, err_names[i], ld->errors[i]);
  printf(" aborted=%" PRIu64, ld->aborted);
  for (int s = 0; s < STATUS_MAX; s++) {
    if (ld->status[s]) printf(" status_%d=%" PRIu64, s, ld->status[s]);
  }
  for (int s = 0; cfg->grpc && s < GRPC_N_CODES; s++) {
    if (ld->codes[s]) printf(" status_%s=%" PRIu64, grpc_code_name(s), ld->codes[s]);
  }
  if (cfg->grpc) printf(" retry_info=%" PRIu64, ld->retry_info);
  printf("\n");
  fflush(stdout);
}

/* ---------------------------------------------------------------------------------------------- CLI */

static void usage(FILE *f) {
  fputs(
      "usage: otlp-load [options]\n"
      "Sends OTLP/HTTP export requests over keep-alive connections (or OTLP/gRPC calls, --grpc) and reports\n"
      "throughput and latency.\n"
      "\n"
      "  --url URL            base URL (default http://127.0.0.1:4318); /v1/<signal> is appended; https:// means\n"
      "                       --tls (default port 443)\n"
      "                       (--grpc: default http://127.0.0.1:4317; the path is the service's, the URL's unused)\n"
      "  --tls                TLS on every connection (gateway/transport, OpenSSL), verified against the system CA\n"
      "                       bundle with SNI and the URL's host checked against the certificate; ALPN http/1.1,\n"
      "                       or h2 with --grpc. A failed handshake counts as a connect error (reason on stderr)\n"
      "  --ca FILE            --tls, verified against the CA certificates in FILE (PEM) instead\n"
      "  --insecure           --tls without verifying the server's certificate\n"
      "  --grpc               OTLP/gRPC: HTTP/2 (cleartext with prior knowledge, or ALPN h2 with --tls), one\n"
      "                       Export call per request,\n"
      "                       --streams calls in flight per connection; --gzip sends grpc-encoding gzip;\n"
      "                       --header lines become metadata (names lower-cased; Host becomes :authority);\n"
      "                       --timeout is also sent as grpc-timeout. Answers count by grpc-status name\n"
      "  --streams M          --grpc: concurrent calls per connection (default 1)\n"
      "  --signal S           traces | logs | metrics (default traces)\n"
      "  --connections N      keep-alive connections, one request in flight each (default 8)\n"
      "  --spans N            spans (log records, metric data points) per request (default 100)\n"
      "  --traces N           distinct trace IDs per request, 1..spans (default 10; ignored for metrics)\n"
      "  --resources N        resource entries per request, 1..spans (default min(3, spans))\n"
      "  --requests N         total requests (default: bounded by --duration only)\n"
      "  --duration D         stop claiming requests after D, e.g. 500ms, 10s, 2m (default 10s when\n"
      "                       --requests is not given); in-flight requests still finish\n"
      "  --rate R             requests/s in total, 0 = as fast as possible (default 0)\n"
      "  --gzip               gzip every body (compressed per request after the trace IDs change)\n"
      "  --gzip-level L       libdeflate level 0..12 (default 6; implies --gzip)\n"
      "  --json               OTLP/JSON instead of protobuf\n"
      "  --seed N             PRNG seed; equal seeds and options give equal trace IDs (default 1)\n"
      "  --trace-file PATH    append \"<32 hex trace_id> <span count>\" for every trace of every request\n"
      "                       answered 2xx (log records per trace for logs; nothing for metrics)\n"
      "  --header 'K: V'      extra request header, repeatable (e.g. 'Authorization: Bearer x')\n"
      "  --timeout D          per request, connect included (default 10s); a timeout closes the connection\n"
      "  --progress           one status line per second on stderr\n"
      "  --quiet              print only the RESULT line\n"
      "  --help               this text\n"
      "\n"
      "Output: a summary and one line \"RESULT requests=.. ok=.. spans_sent=.. spans_acked=.. traces_acked=..\n"
      "bytes=.. elapsed_s=.. rps=.. spans_per_s=.. mb_per_s=.. p50_ms=.. p90_ms=.. p99_ms=.. max_ms=..\n"
      "errors=.. errors_<kind>=.. aborted=.. status_<code>=..\" (bytes are request bodies as sent; rps counts\n"
      "every completed request; spans_per_s counts acknowledged items). With --grpc, status_<NAME>=.. per gRPC\n"
      "code (status_OK, status_UNAVAILABLE, ...; ok = OK answers), then retry_info=.. (answers with RetryInfo);\n"
      "bytes include the 5-byte message prefix; a stream reset or closed without grpc-status is an error\n"
      "(reset, protocol). Exit 0 when it ran, 2 on bad usage.\n",
      f);
}

static uint64_t parse_u64(const char *opt, const char *s, uint64_t min, uint64_t max) {
  char *end;
  errno = 0;
  if (!*s || *s == '-') die_usage("%s: '%s' is not a non-negative integer", opt, s);
  unsigned long long v = strtoull(s, &end, 10);
  if (errno || *end) die_usage("%s: '%s' is not a non-negative integer", opt, s);
  if (v < min || v > max) die_usage("%s: %llu is outside %" PRIu64 "..%" PRIu64, opt, v, min, max);
  return v;
}

/* "250ms", "10s", "2m", "1h", "1.5s", or a bare number of seconds; returns ns (> 0). */
static uint64_t parse_duration(const char *opt, const char *s) {
  char *end;
  errno = 0;
  double v = strtod(s, &end);
  if (errno || end == s || !(v > 0)) die_usage("%s: '%s' is not a positive duration", opt, s);
  double mul;
  if (!*end || !strcmp(end, "s")) mul = 1e9;
  else if (!strcmp(end, "ms")) mul = 1e6;
  else if (!strcmp(end, "us")) mul = 1e3;
  else if (!strcmp(end, "m")) mul = 60e9;
  else if (!strcmp(end, "h")) mul = 3600e9;
  else die_usage("%s: '%s' has an unknown unit (ms, s, m, h)", opt, s);
  double ns = v * mul;
  if (ns < 1e6 || ns > 1e9 * 86400 * 365) die_usage("%s: '%s' is out of range (1ms..1 year)", opt, s);
  return (uint64_t)ns;
}

static void parse_url(load_cfg *cfg, const char *url) {
  const char *p = url;
  bool https = strncasecmp(p, "https://", 8) == 0;
  if (!https && strncasecmp(p, "http://", 7) != 0) die_usage("--url: '%s' must start with http:// or https://", url);
  p += https ? 8 : 7;
  if (https) cfg->tls = true;
  const char *auth_end = p + strcspn(p, "/?#");
  size_t alen = (size_t)(auth_end - p);
  if (alen == 0 || alen >= sizeof(cfg->authority)) die_usage("--url: '%s' has no usable host", url);
  if (memchr(p, '@', alen)) die_usage("--url: credentials in the URL are not supported (use --header)");
  memcpy(cfg->authority, p, alen);
  cfg->authority[alen] = '\0';
  const char *host = cfg->authority, *colon;
  size_t hlen;
  if (*host == '[') {
    const char *rb = strchr(host, ']');
    if (!rb) die_usage("--url: unterminated IPv6 literal in '%s'", url);
    host++;
    hlen = (size_t)(rb - host);
    colon = rb[1] == ':' ? rb + 1 : NULL;
    if (rb[1] && !colon) die_usage("--url: junk after ']' in '%s'", url);
  } else {
    colon = strchr(host, ':');
    hlen = colon ? (size_t)(colon - host) : strlen(host);
  }
  if (hlen == 0 || hlen >= sizeof(cfg->host)) die_usage("--url: '%s' has no usable host", url);
  memcpy(cfg->host, host, hlen);
  cfg->host[hlen] = '\0';
  uint64_t port = colon ? parse_u64("--url port", colon + 1, 1, 65535) : https ? 443 : 80;
  snprintf(cfg->port, sizeof(cfg->port), "%" PRIu64, port);
  /* Path prefix: everything after the authority up to a query, without a trailing '/'. */
  size_t plen = strcspn(auth_end, "?#");
  while (plen && auth_end[plen - 1] == '/') plen--;
  if (plen + 16 >= sizeof(cfg->path)) die_usage("--url: path too long");
  memcpy(cfg->path, auth_end, plen);
  cfg->path[plen] = '\0';
}

static void add_header(load_cfg *cfg, const char *h) {
  const char *colon = strchr(h, ':');
  if (!colon || colon == h) die_usage("--header: '%s' is not 'Name: value'", h);
  for (const char *q = h; q < colon; q++) {
    if (*q <= ' ' || *q >= 127) die_usage("--header: bad character in the name of '%s'", h);
  }
  if (strpbrk(h, "\r\n")) die_usage("--header: '%s' contains a line break", h);
  size_t nlen = (size_t)(colon - h);
  if ((nlen == 14 && !strncasecmp(h, "Content-Length", 14)) || (nlen == 12 && !strncasecmp(h, "Content-Type", 12)) ||
      (nlen == 16 && !strncasecmp(h, "Content-Encoding", 16)) ||
      (nlen == 17 && !strncasecmp(h, "Transfer-Encoding", 17)))
    die_usage("--header: %.*s is set by otlp-load itself (use --json / --gzip)", (int)nlen, h);
  if (nlen == 4 && !strncasecmp(h, "Host", 4)) cfg->user_host = true;
  const char *v = colon + 1;
  while (*v == ' ' || *v == '\t') v++;
  int n = snprintf(cfg->headers + cfg->headers_len, sizeof(cfg->headers) - cfg->headers_len, "%.*s: %s\r\n",
                   (int)nlen, h, v);
  if (n < 0 || (size_t)n >= sizeof(cfg->headers) - cfg->headers_len)
    die_usage("--header: more than %d bytes of headers", USER_HEADERS_MAX);
  cfg->headers_len += (size_t)n;
}

static void parse_args(load_cfg *cfg, int argc, char **argv) {
  enum { O_URL = 256, O_SIGNAL, O_CONN, O_SPANS, O_TRACES, O_RES, O_REQ, O_DUR, O_RATE, O_GZIP, O_GZLEVEL, O_JSON,
         O_SEED, O_TFILE, O_HEADER, O_TIMEOUT, O_PROGRESS, O_QUIET, O_HELP, O_GRPC, O_STREAMS, O_TLS, O_CA,
         O_INSECURE };
  static const struct option longopts[] = {
      {"url", required_argument, NULL, O_URL},           {"signal", required_argument, NULL, O_SIGNAL},
      {"connections", required_argument, NULL, O_CONN},  {"spans", required_argument, NULL, O_SPANS},
      {"traces", required_argument, NULL, O_TRACES},     {"resources", required_argument, NULL, O_RES},
      {"requests", required_argument, NULL, O_REQ},      {"duration", required_argument, NULL, O_DUR},
      {"rate", required_argument, NULL, O_RATE},         {"gzip", no_argument, NULL, O_GZIP},
      {"gzip-level", required_argument, NULL, O_GZLEVEL}, {"json", no_argument, NULL, O_JSON},
      {"seed", required_argument, NULL, O_SEED},         {"trace-file", required_argument, NULL, O_TFILE},
      {"header", required_argument, NULL, O_HEADER},     {"timeout", required_argument, NULL, O_TIMEOUT},
      {"progress", no_argument, NULL, O_PROGRESS},       {"quiet", no_argument, NULL, O_QUIET},
      {"help", no_argument, NULL, O_HELP},               {"grpc", no_argument, NULL, O_GRPC},
      {"streams", required_argument, NULL, O_STREAMS},   {"tls", no_argument, NULL, O_TLS},
      {"ca", required_argument, NULL, O_CA},             {"insecure", no_argument, NULL, O_INSECURE},
      {NULL, 0, NULL, 0}};
  const char *url = NULL;
  bool streams_set = false;
  bool traces_set = false;
  pl_options_default(&cfg->payload);
  cfg->connections = 8;
  cfg->gzip_level = 6;
  cfg->timeout_ns = 10000000000ull;
  opterr = 0;
  int o;
  while ((o = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
    switch (o) {
    case O_URL: url = optarg; break;
    case O_SIGNAL:
      if (pl_signal_parse(optarg, &cfg->payload.signal) < 0)
        die_usage("--signal: '%s' is not traces, logs or metrics", optarg);
      break;
    case O_CONN: cfg->connections = (uint32_t)parse_u64("--connections", optarg, 1, CONNECTIONS_MAX); break;
    case O_SPANS: cfg->payload.items = (uint32_t)parse_u64("--spans", optarg, 1, 10000000); break;
    case O_TRACES:
      cfg->payload.traces = (uint32_t)parse_u64("--traces", optarg, 1, 10000000);
      traces_set = true;
      break;
    case O_RES: cfg->payload.resources = (uint32_t)parse_u64("--resources", optarg, 1, 10000000); break;
    case O_REQ: cfg->requests = parse_u64("--requests", optarg, 1, UINT64_MAX / 2); break;
    case O_DUR: cfg->duration_ns = parse_duration("--duration", optarg); break;
    case O_RATE: {
      char *end;
      errno = 0;
      cfg->rate = strtod(optarg, &end);
      if (errno || end == optarg || *end || !(cfg->rate >= 0) || cfg->rate > 1e9)
        die_usage("--rate: '%s' is not a number of requests/s >= 0", optarg);
      break;
    }
    case O_GZIP: cfg->gzip = true; break;
    case O_GZLEVEL:
      cfg->gzip_level = (int)parse_u64("--gzip-level", optarg, 0, 12);
      cfg->gzip = true;
      break;
    case O_JSON: cfg->payload.encoding = PL_JSON; break;
    case O_SEED: cfg->payload.seed = parse_u64("--seed", optarg, 0, UINT64_MAX); break;
    case O_TFILE: cfg->trace_file = optarg; break;
    case O_HEADER: add_header(cfg, optarg); break;
    case O_TIMEOUT: cfg->timeout_ns = parse_duration("--timeout", optarg); break;
    case O_PROGRESS: cfg->progress = true; break;
    case O_QUIET: cfg->quiet = true; break;
    case O_GRPC: cfg->grpc = true; break;
    case O_STREAMS:
      cfg->streams = (uint32_t)parse_u64("--streams", optarg, 1, GRPC_STREAMS_MAX);
      streams_set = true;
      break;
    case O_TLS: cfg->tls = true; break;
    case O_CA:
      cfg->ca_file = optarg;
      cfg->tls = true;
      break;
    case O_INSECURE:
      cfg->insecure = true;
      cfg->tls = true;
      break;
    case O_HELP:
      usage(stdout);
      exit(0);
    default:
      if (optopt) die_usage("option '%s' needs a value or takes none", argv[optind - 1]);
      die_usage("unknown option '%s'", argv[optind - 1]);
    }
  }
  if (optind < argc) die_usage("unexpected argument '%s'", argv[optind]);
  if (streams_set && !cfg->grpc) die_usage("--streams needs --grpc");
  if (!cfg->streams) cfg->streams = 1;
  if (cfg->grpc && cfg->payload.encoding == PL_JSON) die_usage("--json: OTLP/gRPC carries protobuf only");
  parse_url(cfg, url ? url : cfg->grpc ? "http://127.0.0.1:4317" : "http://127.0.0.1:4318");
  if (cfg->grpc) snprintf(cfg->path, sizeof cfg->path, "%s", grpc_service_path((int)cfg->payload.signal));
  else strcat(cfg->path, pl_signal_path(cfg->payload.signal));
  if (!cfg->requests && !cfg->duration_ns) cfg->duration_ns = 10000000000ull;
  pl_options *po = &cfg->payload;
  if (po->signal != PL_METRICS && po->traces > po->items) {
    if (traces_set) die_usage("--traces %" PRIu32 " exceeds --spans %" PRIu32, po->traces, po->items);
    po->traces = po->items; /* only the default was too large */
  }
  if (po->resources > po->items) die_usage("--resources %" PRIu32 " exceeds --spans %" PRIu32, po->resources, po->items);
  if (po->signal == PL_METRICS) po->traces = 0;
}

/* ---------------------------------------------------------------------------------------------- main */

static int resolve(load *ld) {
  uv_getaddrinfo_t req;
  struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_protocol = IPPROTO_TCP};
  int rc = uv_getaddrinfo(ld->loop, &req, NULL, ld->cfg.host, ld->cfg.port, &hints);
  if (rc < 0) return rc;
  memcpy(&ld->addr, req.addrinfo->ai_addr, req.addrinfo->ai_addrlen);
  uv_freeaddrinfo(req.addrinfo);
  return 0;
}

/* The request head every connection shares, up to and including "Content-Length: "; caller frees. */
static char *build_prefix(const load_cfg *cfg, size_t *len) {
  size_t cap = 512 + strlen(cfg->path) + strlen(cfg->authority) + cfg->headers_len;
  char *s = malloc(cap);
  if (!s) return NULL;
  int n = snprintf(s, cap, "POST %s HTTP/1.1\r\n%s%s%sContent-Type: %s\r\n%s%sContent-Length: ", cfg->path,
                   cfg->user_host ? "" : "Host: ", cfg->user_host ? "" : cfg->authority, cfg->user_host ? "" : "\r\n",
                   pl_content_type(cfg->payload.encoding), cfg->gzip ? "Content-Encoding: gzip\r\n" : "", cfg->headers);
  *len = (size_t)n;
  return s;
}

int main(int argc, char **argv) {
  static load ld; /* large (latency histogram); static keeps it off the stack */
  int rc = 1;
  uint32_t built = 0;
  parse_args(&ld.cfg, argc, argv);
  signal(SIGPIPE, SIG_IGN);

  ld.loop = uv_default_loop();
  int err = resolve(&ld);
  if (err < 0) {
    fprintf(stderr, "otlp-load: cannot resolve %s:%s: %s\n", ld.cfg.host, ld.cfg.port, uv_strerror(err));
    return 2;
  }
  if (ld.cfg.tls) {
    char terr[512];
    tls_client_opts_t to = {.ca_file = ld.cfg.ca_file, .insecure_skip_verify = ld.cfg.insecure,
                            .alpn = ld.cfg.grpc ? "h2" : "http/1.1"};
    if (tls_client_ctx_create(&to, "otlp-load", &ld.tls, terr, sizeof terr) != 0) {
      fprintf(stderr, "otlp-load: %s\n", terr);
      return 2;
    }
    if (ld.cfg.insecure && !ld.cfg.quiet)
      fprintf(stderr, "otlp-load: --insecure: the server's certificate is not verified\n");
  }
  char *prefix = build_prefix(&ld.cfg, &ld.prefix_len);
  ld.conns = ld.cfg.grpc ? NULL : calloc(ld.cfg.connections, sizeof(conn));
  if (!prefix || (!ld.conns && !ld.cfg.grpc)) {
    fprintf(stderr, "otlp-load: out of memory\n");
    goto out;
  }
  ld.prefix = prefix;
  llhttp_settings_init(&ld.settings);
  ld.settings.on_message_complete = on_message_complete;

  if (ld.cfg.grpc && (err = g_init(&ld)) < 0) {
    fprintf(stderr, "otlp-load: cannot set up gRPC connections: %s\n", strerror(-err));
    goto out;
  }
  for (; !ld.cfg.grpc && built < ld.cfg.connections; built++) {
    conn *c = &ld.conns[built];
    c->ld = &ld;
    c->idx = built;
    pl_options po = ld.cfg.payload;
    po.seed = pl_mix64(ld.cfg.payload.seed + built); /* one independent, reproducible stream per connection */
    if ((err = pl_payload_init(&c->payload, &po)) < 0) {
      fprintf(stderr, "otlp-load: cannot build payload: %s\n", strerror(-err));
      goto out;
    }
    if (ld.cfg.gzip && (err = pl_gzip_init(&c->gz, ld.cfg.gzip_level)) < 0) {
      fprintf(stderr, "otlp-load: gzip init: %s\n", strerror(-err));
      pl_payload_dispose(&c->payload);
      goto out;
    }
    c->head = malloc(ld.prefix_len + HEAD_CAP_EXTRA);
    if (!c->head) {
      pl_gzip_dispose(&c->gz);
      pl_payload_dispose(&c->payload);
      fprintf(stderr, "otlp-load: out of memory\n");
      goto out;
    }
    memcpy(c->head, prefix, ld.prefix_len);
  }
  if (ld.cfg.trace_file) {
    ld.trace_fp = fopen(ld.cfg.trace_file, "a");
    if (!ld.trace_fp) {
      fprintf(stderr, "otlp-load: %s: %s\n", ld.cfg.trace_file, strerror(errno));
      goto out;
    }
    setvbuf(ld.trace_fp, NULL, _IOFBF, 1 << 20);
  }

  uv_signal_init(ld.loop, &ld.sigint);
  uv_signal_init(ld.loop, &ld.sigterm);
  ld.sigint.data = ld.sigterm.data = &ld;
  uv_signal_start(&ld.sigint, on_signal, SIGINT);
  uv_signal_start(&ld.sigterm, on_signal, SIGTERM);
  uv_timer_init(ld.loop, &ld.progress);
  ld.progress.data = &ld;
  ld.start_ns = ld.last_progress_ns = uv_hrtime();
  if (ld.cfg.duration_ns) ld.deadline_ns = ld.start_ns + ld.cfg.duration_ns;
  if (ld.cfg.progress) uv_timer_start(&ld.progress, on_progress, 1000, 1000);
  for (uint32_t i = 0; !ld.cfg.grpc && i < ld.cfg.connections; i++) {
    conn *c = &ld.conns[i];
    uv_timer_init(ld.loop, &c->timer);
    c->timer.data = c;
    c->write_req.data = c;
  }
  if (ld.cfg.grpc) g_start(&ld);
  for (uint32_t i = 0; !ld.cfg.grpc && i < ld.cfg.connections; i++) conn_next(&ld.conns[i]);
  uv_run(ld.loop, UV_RUN_DEFAULT);
  if (!ld.done) ld.end_ns = uv_hrtime();

  if (ld.trace_fp && fclose(ld.trace_fp) != 0) fprintf(stderr, "otlp-load: %s: %s\n", ld.cfg.trace_file, strerror(errno));
  ld.trace_fp = NULL;
  print_summary(&ld);
  rc = 0;
out:
  if (ld.trace_fp) fclose(ld.trace_fp);
  for (uint32_t i = 0; i < built; i++) {
    free(ld.conns[i].head);
    pl_gzip_dispose(&ld.conns[i].gz);
    pl_payload_dispose(&ld.conns[i].payload);
  }
  free(ld.conns);
  g_dispose(&ld);
  free(prefix);
  tls_ctx_unref(ld.tls);
  if (uv_loop_close(ld.loop) != 0 && rc == 0) fprintf(stderr, "otlp-load: warning: handles left open at exit\n");
  return rc;
}
