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
#include <uv.h>

#include "bench/payload.h"

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
  uv_tcp_t tcp;
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
};

static void conn_next(conn *c);
static void conn_go(conn *c);
static void start_timer(conn *c, enum timer_mode m, uint64_t ms);

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
    if (!c->finished) on_tcp_closed((uv_handle_t *)&c->tcp);
    return;
  }
  if (c->closing) return;
  c->closing = true;
  uv_close((uv_handle_t *)&c->tcp, on_tcp_closed);
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
    uv_close((uv_handle_t *)&c->tcp, on_tcp_closed);
  }
  if (++ld->finished == ld->cfg.connections) load_finish(ld);
}

static void load_stop(load *ld) {
  if (ld->stopping) return;
  ld->stopping = true;
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

static void on_write(uv_write_t *req, int status) {
  conn *c = req->data;
  c->writing = false;
  if (status < 0) {
    c->next_after_write = false;
    if (status == UV_ECANCELED || c->finished) return; /* closed by us; whoever closed accounted for it */
    conn_fail(c, ERR_RESET);
    conn_close(c, AC_NEXT);
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
  int rc = uv_write(&c->write_req, (uv_stream_t *)&c->tcp, bufs, 2, on_write);
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
  llhttp_init(&c->parser, HTTP_RESPONSE, &c->ld->settings);
  c->parser.data = c;
  int rc = uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
  if (rc < 0) {
    conn_fail(c, ERR_CONNECT);
    conn_close(c, AC_BACKOFF);
    return;
  }
  conn_send(c);
}

static void conn_connect(conn *c) {
  load *ld = c->ld;
  int rc = uv_tcp_init(ld->loop, &c->tcp);
  if (rc < 0) {
    conn_fail(c, ERR_CONNECT);
    start_timer(c, TM_BACKOFF, CONNECT_BACKOFF_MS);
    return;
  }
  c->tcp.data = c;
  c->tcp_open = true;
  uv_tcp_nodelay(&c->tcp, 1);
  c->connect_req.data = c;
  rc = uv_tcp_connect(&c->connect_req, &c->tcp, (const struct sockaddr *)&ld->addr, on_connect);
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
    printf("otlp-load: %s %s%s to http://%s%s, %" PRIu32 " connections, %" PRIu32 " %s/request in %" PRIu32
           " traces\n",
           pl_signal_name(cfg->payload.signal), cfg->payload.encoding == PL_JSON ? "json" : "protobuf",
           cfg->gzip ? "+gzip" : "", cfg->authority, cfg->path, cfg->connections, cfg->payload.items,
           cfg->payload.signal == PL_TRACES ? "spans" : cfg->payload.signal == PL_LOGS ? "log records" : "data points",
           cfg->payload.signal == PL_METRICS ? 0 : cfg->payload.traces);
    printf("  requests   %" PRIu64 " in %.3fs (%.1f req/s), %" PRIu64 " ok (2xx)%s\n", ld->completed, el, rps, ld->ok,
           ld->aborted ? ", some aborted by the stop" : "");
    printf("  status    ");
    bool any = false;
    for (int s = 0; s < STATUS_MAX; s++) {
      if (ld->status[s]) {
        printf(" %d=%" PRIu64, s, ld->status[s]);
        any = true;
      }
    }
    printf("%s\n", any ? "" : " (none)");
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
  printf("\n");
  fflush(stdout);
}

/* ---------------------------------------------------------------------------------------------- CLI */

static void usage(FILE *f) {
  fputs(
      "usage: otlp-load [options]\n"
      "Sends OTLP/HTTP export requests over keep-alive connections and reports throughput and latency.\n"
      "\n"
      "  --url URL            base URL, http only (default http://127.0.0.1:4318); /v1/<signal> is appended\n"
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
      "every completed request; spans_per_s counts acknowledged items). Exit 0 when it ran, 2 on bad usage.\n",
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
  if (strncasecmp(p, "http://", 7) != 0) {
    if (strncasecmp(p, "https://", 8) == 0) die_usage("--url: https is not supported");
    die_usage("--url: '%s' must start with http://", url);
  }
  p += 7;
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
  uint64_t port = colon ? parse_u64("--url port", colon + 1, 1, 65535) : 80;
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
         O_SEED, O_TFILE, O_HEADER, O_TIMEOUT, O_PROGRESS, O_QUIET, O_HELP };
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
      {"help", no_argument, NULL, O_HELP},               {NULL, 0, NULL, 0}};
  const char *url = "http://127.0.0.1:4318";
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
    case O_HELP:
      usage(stdout);
      exit(0);
    default:
      if (optopt) die_usage("option '%s' needs a value or takes none", argv[optind - 1]);
      die_usage("unknown option '%s'", argv[optind - 1]);
    }
  }
  if (optind < argc) die_usage("unexpected argument '%s'", argv[optind]);
  parse_url(cfg, url);
  strcat(cfg->path, pl_signal_path(cfg->payload.signal));
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
  char *prefix = build_prefix(&ld.cfg, &ld.prefix_len);
  ld.conns = calloc(ld.cfg.connections, sizeof(conn));
  if (!prefix || !ld.conns) {
    fprintf(stderr, "otlp-load: out of memory\n");
    goto out;
  }
  ld.prefix = prefix;
  llhttp_settings_init(&ld.settings);
  ld.settings.on_message_complete = on_message_complete;

  for (; built < ld.cfg.connections; built++) {
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
  for (uint32_t i = 0; i < ld.cfg.connections; i++) {
    conn *c = &ld.conns[i];
    uv_timer_init(ld.loop, &c->timer);
    c->timer.data = c;
    c->write_req.data = c;
  }
  for (uint32_t i = 0; i < ld.cfg.connections; i++) conn_next(&ld.conns[i]);
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
  free(prefix);
  if (uv_loop_close(ld.loop) != 0 && rc == 0) fprintf(stderr, "otlp-load: warning: handles left open at exit\n");
  return rc;
}
