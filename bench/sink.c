/*
 * otlp-sink — a fast OTLP/HTTP receiver for tests and benchmarks, built on the gateway's own server code.
 *
 * Answers POST /v1/{traces,logs,metrics} with 200 and an empty Export*ServiceResponse (or a configured
 * status), optionally after a delay; counts requests, items and bytes per signal; can append every
 * received trace_id with its span count to a file ("<32 hex> <count>" per trace per request), so tests can
 * check where each trace went; --log-file does the same for log records that carry a trace_id ("<32 hex>
 * <record count>"), so tests can check that logs go where their trace's spans went. GET / is a health check
 * (200); GET /stats returns the counters as JSON (items: spans, log records, metric data points).
 * Trace (and log) records are written and flushed before the 200 is sent, so a kill -9 never loses an
 * acknowledged one.
 *
 * GET /control?status=CODE&retry_after=S&hang=0|1 changes the behaviour while running (for fault-injection
 * tests) and answers the new state as JSON; GET /control alone just reports it. status is answered to every
 * OTLP POST (200 = normal); retry_after adds Retry-After: S to non-200 answers (0 = none). hang=1 turns the
 * sink into a black hole: OTLP POSTs and health checks (any GET but /control and /stats) are accepted but
 * never answered (nor recorded); hang=0 answers every held request with 503. A 500 ms sweep answers (and so
 * frees) held requests whose client is gone as far as hs_request_gone() knows; SIGTERM/SIGINT answer all held
 * requests before the server shuts down. /control and /stats are always answered at once.
 * Also for tests: partial=N answers accepted requests 200 with an Export*ServiceResponse whose partial_success
 * rejects min(N, items) items (a collector that dropped some); health=CODE is the status of health checks;
 * delay=MS the answer delay; reset=1 restarts the high-water marks of /stats. --times-file records the arrival
 * (first byte, CLOCK_MONOTONIC seconds) of every OTLP POST with the status it was answered, so tests can
 * check retry timing; /stats reports the most connections and OTLP POSTs in flight seen at once and the
 * GETs per path (so tests can see which health-check path was asked).
 * --grpc / --grpc-listen: the same receiver over OTLP/gRPC too (gateway/h2_server + gateway/grpc), beside the
 * HTTP listener that keeps /stats and /control: Export calls go through the same counting, recording and fault
 * options, their HTTP answer mapped to a gRPC status (see the usage text); grpc.health.v1.Health/Check is the
 * health check.
 * --tls CERT,KEY: both listeners speak TLS with that certificate (gateway/transport; ALPN http/1.1 on the HTTP
 * listener, h2 on the gRPC one); --control-listen adds a plaintext listener that answers /stats and /control only,
 * so a test reads the counters of a TLS sink as of any other. --prefix P: the OTLP paths are P/v1/{traces,...}
 * (an endpoint with a path prefix, as Grafana Cloud's); requests to any other path but GETs are counted
 * (unknown_paths) and answered 404, as are gRPC calls to unknown methods.
 */
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "config/config.h"
#include "gateway/grpc.h"
#include "gateway/h2_server.h"
#include "gateway/http_server.h"
#include "gateway/otlp_http.h"
#include "gateway/transport.h"
#include "opentelemetry/proto/collector/logs/v1/logs_service.pb-c.h"
#include "opentelemetry/proto/collector/trace/v1/trace_service.pb-c.h"

#define MAX_GET_PATHS 16

typedef struct sink {
  uv_loop_t *loop;
  hs_server_t *srv;
  h2s_server_t *gsrv;    /* --grpc / --grpc-listen: OTLP/gRPC beside the HTTP listener (NULL when off) */
  hs_server_t *ctl;      /* --control-listen: plaintext /stats and /control (NULL when off) */
  const char *prefix;    /* --prefix: the OTLP paths are prefix + /v1/<signal> ("" = none) */
  uint64_t unknown_paths; /* requests (not GET) to a path that is no OTLP path, and gRPC calls to unknown methods */
  uint64_t unauthorized; /* answered 401: --require-header missing or wrong */
  uint64_t grpc_requests; /* OTLP Export calls over gRPC that reached the counting code */
  uint64_t grpc_health;   /* grpc.health.v1.Health/Check calls */
  int shutdowns;          /* servers still shutting down */
  int status;
  unsigned retry_after;
  uint64_t delay_ms;
  uint64_t max_body;
  int no_decode;         /* answer 200 without decoding: benchmarks of the HTTP layer alone */
  const char *require_name;   /* --require-header: requests without it are answered 401 */
  const char *require_value;
  char require_lname[64];     /* require_name lower-case, for gRPC metadata */
  FILE *trace_file;
  FILE *log_file;        /* --log-file: "<trace_id hex> <records>" per trace per logs request */
  uint64_t requests[OTLP_N_SIGNALS];
  uint64_t items[OTLP_N_SIGNALS];
  uint64_t bytes[OTLP_N_SIGNALS];
  uint64_t rejected;     /* answered with a non-200 status */
  uint64_t invalid;      /* 400: bad gzip or protobuf */
  int hang;              /* 1: hold OTLP POSTs and health checks unanswered (GET /control?hang=1) */
  int stopping;          /* a signal arrived: nothing more is held */
  struct held *held;     /* requests held by hang mode, answered by hang=0, the sweep or shutdown */
  size_t n_held, cap_held;
  uint64_t held_total;   /* requests ever held */
  int64_t partial;       /* > 0: accepted requests get a partial_success rejecting this many items (at most all) */
  uint64_t partial_rejected; /* items reported rejected that way */
  int health_status;     /* answer to health checks (GETs but /stats and /control) */
  FILE *times_file;      /* --times-file: "<monotonic s> <status> <signal>" per OTLP POST (status 0: held) */
  uint64_t in_flight;    /* OTLP POSTs received and not answered yet (delayed or held) */
  uint64_t max_in_flight;
  uint64_t max_connections; /* most connections open at once, sampled at each OTLP POST and health check */
  struct get_count {     /* GETs per path (health checks), the first MAX_GET_PATHS distinct paths */
    char path[64];
    uint64_t n;
  } gets[MAX_GET_PATHS];
  size_t n_gets;
  uint64_t gets_other;   /* GETs to paths beyond the table */
  uv_timer_t sweep;      /* every SWEEP_MS: answers held requests whose client is gone, so they are freed */
  uv_signal_t sig_term, sig_int;
} sink_t;

#define SWEEP_MS 500

/* Whom an answer goes to: an HTTP request (req) or a gRPC call (st); start_ns is when it arrived. */
typedef struct reply {
  hs_request_t *req;
  h2s_stream_t *st;
  uint64_t start_ns;
} reply_t;

typedef struct held {
  reply_t r;
  int otlp;              /* 1: an OTLP POST (answered with a Status body), 0: a health check */
  otlp_encoding_t enc;
} held_t;

typedef struct delayed {
  uv_timer_t timer;
  reply_t r;
  sink_t *sink;
  int status;
  otlp_signal_t sig;
  otlp_encoding_t enc;
  int64_t rejected;      /* partial_success */
} delayed_t;

static const char usage[] =
    "usage: otlp-sink [--listen HOST:PORT] [--status CODE] [--retry-after SECONDS] [--delay MS]\n"
    "                 [--trace-file PATH] [--log-file PATH] [--max-body SIZE] [--no-decode]\n"
    "                 [--require-header 'NAME: VALUE'] [--partial N] [--times-file PATH]\n"
    "                 [--health-status CODE] [--grpc | --grpc-listen HOST:PORT] [--tls CERT,KEY[,CLIENT_CA]]\n"
    "                 [--control-listen HOST:PORT] [--prefix /PATH]\n"
    "  --listen       address to listen on (default 127.0.0.1:0 = ephemeral; the bound address is printed)\n"
    "  --status       answer every OTLP request with this status instead of 200 (e.g. 503); initial value of\n"
    "                 the control endpoint's status\n"
    "  --retry-after  add Retry-After: SECONDS to non-200 answers (initial value of retry_after)\n"
    "  --delay        answer after MS milliseconds\n"
    "  --trace-file   append \"<trace_id hex> <span count>\" for every trace of every accepted traces request\n"
    "  --log-file     append \"<trace_id hex> <record count>\" for every trace of every accepted logs request\n"
    "                 (log records without a trace_id are counted in /stats only)\n"
    "  --max-body     largest request body accepted (default 64MiB)\n"
    "  --no-decode    count requests and bytes only; answer 200 without decoding (HTTP-layer benchmarks)\n"
    "  --require-header 'NAME: VALUE'  answer 401 to requests without exactly this header\n"
    "  --partial N    answer accepted requests 200 with partial_success rejecting min(N, items) items and a\n"
    "                 message naming this sink (initial value of partial)\n"
    "  --times-file   append \"<CLOCK_MONOTONIC seconds> <status> <signal>\" for every OTLP POST: when its first\n"
    "                 byte arrived and what it was answered (0: held by hang mode)\n"
    "  --health-status  answer health checks (GETs but /stats, /control) with this status (default 200)\n"
    "  --grpc-listen  also serve OTLP/gRPC (HTTP/2 cleartext) on HOST:PORT; printed as \"otlp-sink grpc listening\n"
    "                 on HOST:PORT\" after the HTTP line (the HTTP listener keeps /stats and /control)\n"
    "  --grpc         the same on the --listen host, ephemeral port\n"
    "  --tls CERT,KEY both listeners speak TLS with this certificate chain and key (PEM files): ALPN http/1.1 on\n"
    "                 the HTTP listener, h2 on the gRPC one; /stats and /control are then https (or see below);\n"
    "                 with CLIENT_CA, clients must present a certificate that CA signed (mTLS)\n"
    "  --control-listen HOST:PORT  a plaintext HTTP listener for GET /stats and GET /control only (anything else\n"
    "                 404), printed as \"otlp-sink control listening on HOST:PORT\" after the other lines\n"
    "  --prefix /PATH the OTLP paths are /PATH/v1/{traces,logs,metrics} (an endpoint with a path prefix)\n"
    "HTTP: POST /v1/{traces,logs,metrics}; GET any other path (health, 200); GET /stats (counters, JSON:\n"
    "  per signal, rejected, invalid, partial_rejected, connections, max_connections, in_flight, max_in_flight,\n"
    "  the partial, health and delay settings, grpc_*, gets per path, gets_other, unknown_paths (requests but\n"
    "  GETs to other paths, answered 404/405; gRPC calls to unknown methods), unauthorized (401 answers),\n"
    "  tls_handshake_failures (--tls, both listeners));\n"
    "  GET /control[?status=CODE][&retry_after=S][&hang=0|1][&partial=N][&health=CODE][&delay=MS][&reset=1]\n"
    "  change behaviour while running, answers the state as JSON (status, retry_after, hang, held, held_total):\n"
    "  status for every OTLP POST (200..599), Retry-After for non-200 answers (0 = none), hang=1 holds OTLP\n"
    "  POSTs and health checks unanswered (a black hole), hang=0 answers the held ones with 503, partial as\n"
    "  --partial, health as --health-status, delay as --delay, reset=1 restarts max_connections and\n"
    "  max_in_flight from the current values.\n"
    "  Unknown parameters or bad values -> 400. SIGTERM/SIGINT answer held requests (503) and exit.\n"
    "gRPC: {Trace,Logs,Metrics}Service/Export and grpc.health.v1.Health/Check (SERVING when the health status\n"
    "  is 200, else NOT_SERVING). Calls are counted with the HTTP requests (per signal in /stats, plus\n"
    "  grpc_requests, grpc_health, grpc_connections) and get the same fault options (--status, --retry-after,\n"
    "  --delay, --partial, --require-header on the metadata, hang): 200 -> OK with the Export*ServiceResponse\n"
    "  (partial_success with --partial); as a gRPC status (trailers-only): 400 -> INVALID_ARGUMENT,\n"
    "  401 -> UNAUTHENTICATED, 413 -> RESOURCE_EXHAUSTED, 415 -> UNIMPLEMENTED, 503 -> UNAVAILABLE with\n"
    "  RetryInfo (retry_delay = retry_after, 1 s when 0), 429/502/504 -> UNAVAILABLE (RetryInfo only when\n"
    "  retry_after > 0), any other -> INTERNAL. A message flagged compressed needs grpc-encoding gzip.\n";

static int cmp_id16(const void *a, const void *b) { return memcmp(a, b, 16); }

/* Sorts the n trace IDs, writes "<hex> <count>" per distinct one to f, flushes, and frees ids. */
static void write_ids(FILE *f, uint8_t (*ids)[16], size_t n) {
  if (!ids) return;
  qsort(ids, n, 16, cmp_id16);
  for (size_t a = 0; a < n;) {
    size_t b = a + 1;
    while (b < n && memcmp(ids[a], ids[b], 16) == 0) b++;
    char hex[33];
    for (int q = 0; q < 16; q++) snprintf(hex + 2 * q, 3, "%02x", ids[a][q]);
    fprintf(f, "%s %zu\n", hex, b - a);
    a = b;
  }
  fflush(f);
  free(ids);
}

/* Writes one line per distinct trace_id of the request with its span count. */
static void record_traces(sink_t *s, const uint8_t *body, size_t len) {
  Opentelemetry__Proto__Collector__Trace__V1__ExportTraceServiceRequest *r =
      opentelemetry__proto__collector__trace__v1__export_trace_service_request__unpack(NULL, len, body);
  if (!r) return;
  size_t n = 0;
  for (size_t i = 0; i < r->n_resource_spans; i++)
    for (size_t j = 0; j < r->resource_spans[i]->n_scope_spans; j++) n += r->resource_spans[i]->scope_spans[j]->n_spans;
  uint8_t(*ids)[16] = n ? calloc(n, 16) : NULL;
  size_t k = 0;
  for (size_t i = 0; ids && i < r->n_resource_spans; i++)
    for (size_t j = 0; j < r->resource_spans[i]->n_scope_spans; j++) {
      Opentelemetry__Proto__Trace__V1__ScopeSpans *ss = r->resource_spans[i]->scope_spans[j];
      for (size_t x = 0; x < ss->n_spans; x++, k++) {
        ProtobufCBinaryData t = ss->spans[x]->trace_id;
        memcpy(ids[k], t.data, t.len < 16 ? t.len : 16);
      }
    }
  write_ids(s->trace_file, ids, n);
  opentelemetry__proto__collector__trace__v1__export_trace_service_request__free_unpacked(r, NULL);
}

/* Writes one line per distinct trace_id of the log records of the request with its record count; records
 * without a trace_id (absent or all zero) are not written. */
static void record_logs(sink_t *s, const uint8_t *body, size_t len) {
  Opentelemetry__Proto__Collector__Logs__V1__ExportLogsServiceRequest *r =
      opentelemetry__proto__collector__logs__v1__export_logs_service_request__unpack(NULL, len, body);
  if (!r) return;
  size_t n = 0;
  for (size_t i = 0; i < r->n_resource_logs; i++)
    for (size_t j = 0; j < r->resource_logs[i]->n_scope_logs; j++) n += r->resource_logs[i]->scope_logs[j]->n_log_records;
  uint8_t(*ids)[16] = n ? calloc(n, 16) : NULL;
  static const uint8_t zero[16];
  size_t k = 0;
  for (size_t i = 0; ids && i < r->n_resource_logs; i++)
    for (size_t j = 0; j < r->resource_logs[i]->n_scope_logs; j++) {
      Opentelemetry__Proto__Logs__V1__ScopeLogs *sl = r->resource_logs[i]->scope_logs[j];
      for (size_t x = 0; x < sl->n_log_records; x++) {
        ProtobufCBinaryData t = sl->log_records[x]->trace_id;
        if (t.len == 0) continue;
        memcpy(ids[k], t.data, t.len < 16 ? t.len : 16);
        if (memcmp(ids[k], zero, 16) != 0) k++;
      }
    }
  write_ids(s->log_file, ids, k);
  opentelemetry__proto__collector__logs__v1__export_logs_service_request__free_unpacked(r, NULL);
}

/* The message of a partial_success: names this sink, so a test can tell which backend's message a client got. */
static void partial_message(const sink_t *s, otlp_signal_t sig, int64_t rejected, char *out, size_t cap) {
  snprintf(out, cap, "otlp-sink %s rejected %lld %s", hs_server_address(s->srv), (long long)rejected,
           otlp_signal(sig)->items);
}

/* ---- gRPC answers ---------------------------------------------------------------------------------- */

/* The gRPC status the sink answers for the HTTP status it would answer (see the usage text). */
static int sink_grpc_code(int http_status) {
  switch (http_status) {
    case 200: return GRPC_OK;
    case 400: return GRPC_INVALID_ARGUMENT;
    case 401: return GRPC_UNAUTHENTICATED;
    case 413: return GRPC_RESOURCE_EXHAUSTED;
    case 415: return GRPC_UNIMPLEMENTED;
    case 429: case 502: case 503: case 504: return GRPC_UNAVAILABLE;
    default: return GRPC_INTERNAL;
  }
}

static const hs_header_t grpc_ct = {{"content-type", 12}, {"application/grpc", 16}};

/* A trailers-only answer: one HEADERS frame with :status 200, grpc-status, grpc-message and, when
 * retry_delay_s > 0, grpc-status-details-bin with RetryInfo. */
static void grpc_fail(h2s_stream_t *st, int code, const char *msg, uint32_t retry_delay_s) {
  char num[8], pmsg[512], details[768];
  hs_header_t h[4];
  size_t n = 0;
  h[n++] = grpc_ct;
  int nl = snprintf(num, sizeof num, "%d", code);
  h[n++] = (hs_header_t){{"grpc-status", 11}, {num, (size_t)nl}};
  size_t ml = grpc_percent_encode(msg, pmsg, sizeof pmsg);
  if (ml) h[n++] = (hs_header_t){{"grpc-message", 12}, {pmsg, ml}};
  if (retry_delay_s > 0) {
    size_t dl = grpc_status_details_bin(code, msg, retry_delay_s, details, sizeof details);
    if (dl) h[n++] = (hs_header_t){{"grpc-status-details-bin", 23}, {details, dl}};
  }
  h2s_respond(st, 200, h, n, NULL, 0, NULL, 0);
}

/* OK with one framed message (an Export*ServiceResponse or a HealthCheckResponse), then trailers grpc-status 0. */
static void grpc_ok(h2s_stream_t *st, const uint8_t *msg, size_t len) {
  uint8_t body[5 + 1200];
  if (len > sizeof body - 5) len = 0; /* cannot happen: the callers' messages are small */
  grpc_frame_prefix(body, 0, (uint32_t)len);
  if (len) memcpy(body + 5, msg, len);
  static const hs_header_t ok[1] = {{{"grpc-status", 11}, {"0", 1}}};
  h2s_respond(st, 200, &grpc_ct, 1, body, 5 + len, ok, 1);
}

/* The gRPC answer to an Export call the HTTP path would answer with http_status. */
static void grpc_answer(sink_t *s, h2s_stream_t *st, int http_status, otlp_signal_t sig, int64_t rejected,
                        const char *msg) {
  int code = sink_grpc_code(http_status);
  if (code == GRPC_OK) {
    char pm[160] = "";
    uint8_t out[1200];
    if (rejected > 0) partial_message(s, sig, rejected, pm, sizeof pm);
    grpc_ok(st, out, rejected > 0 ? otlp_partial_body(rejected, pm, out, sizeof out) : 0);
    return;
  }
  uint32_t delay = 0;
  if (code == GRPC_UNAVAILABLE) delay = s->retry_after ? s->retry_after : http_status == 503 ? 1 : 0;
  grpc_fail(st, code, msg, delay);
}

/* ---- answers over either protocol ------------------------------------------------------------------ */

static void answer(sink_t *s, reply_t r, int status, otlp_signal_t sig, otlp_encoding_t enc, int64_t rejected) {
  s->in_flight--;
  if (r.st) {
    grpc_answer(s, r.st, status, sig, rejected, "otlp-sink configured status");
  } else if (status == 200 && rejected > 0) {
    char msg[160];
    partial_message(s, sig, rejected, msg, sizeof msg);
    otlp_respond_partial(r.req, sig, enc, rejected, msg);
  } else if (status == 200) {
    otlp_respond_success(r.req, enc);
  } else {
    otlp_respond_status(r.req, enc, status, "otlp-sink configured status", s->retry_after, NULL, 0);
  }
}

/* One --times-file line for an OTLP POST: when its first byte arrived, and the status it gets (0 = held). */
static void record_time(sink_t *s, reply_t r, int status, int sig) {
  if (!s->times_file) return;
  fprintf(s->times_file, "%" PRIu64 ".%06" PRIu64 " %d %s\n", r.start_ns / 1000000000u,
          r.start_ns % 1000000000u / 1000u, status, sig >= 0 ? otlp_signal(sig)->name : "none");
  fflush(s->times_file);
}

static void on_delay_closed(uv_handle_t *h) { free(h->data); }

static void on_delay(uv_timer_t *t) {
  delayed_t *d = t->data;
  answer(d->sink, d->r, d->status, d->sig, d->enc, d->rejected);
  d->timer.data = d;
  uv_close((uv_handle_t *)&d->timer, on_delay_closed);
}

/* Answers an OTLP POST (now, or after --delay); rejected > 0 makes a 200 a partial_success. */
static void respond(sink_t *s, reply_t r, int status, int sig, otlp_encoding_t enc, int64_t rejected) {
  if (status != 200) s->rejected++;
  record_time(s, r, status, sig);
  if (s->delay_ms == 0) {
    answer(s, r, status, sig, enc, rejected);
    return;
  }
  delayed_t *d = calloc(1, sizeof *d);
  if (!d) {
    answer(s, r, 500, sig, enc, 0);
    return;
  }
  d->r = r;
  d->sink = s;
  d->status = status;
  d->sig = sig;
  d->enc = enc;
  d->rejected = rejected;
  uv_timer_init(s->loop, &d->timer);
  d->timer.data = d;
  uv_timer_start(&d->timer, on_delay, s->delay_ms, 0);
}

/* ---- hang mode: held requests -------------------------------------------------------------------- */

static void answer_held(sink_t *s, const held_t *h) {
  s->rejected += h->otlp;
  s->in_flight -= h->otlp;
  if (h->r.st) grpc_fail(h->r.st, GRPC_UNAVAILABLE, "otlp-sink: released from hang mode", s->retry_after);
  else if (h->otlp)
    otlp_respond_status(h->r.req, h->enc, 503, "otlp-sink: released from hang mode", s->retry_after, NULL, 0);
  else hs_respond(h->r.req, 503, "text/plain", NULL, 0, "hang\n", 5);
}

/* Holds the request unanswered; 0, or -1 when out of memory (the caller answers it then). */
static int hold(sink_t *s, reply_t r, int otlp, otlp_encoding_t enc) {
  if (s->n_held == s->cap_held) {
    size_t cap = s->cap_held ? 2 * s->cap_held : 64;
    held_t *n = realloc(s->held, cap * sizeof *n);
    if (!n) return -1;
    s->held = n;
    s->cap_held = cap;
  }
  s->held[s->n_held++] = (held_t){r, otlp, enc};
  s->held_total++;
  return 0;
}

static int reply_gone(reply_t r) { return r.st ? h2s_stream_gone(r.st) : hs_request_gone(r.req); }

/* Answers held requests: all of them (all != 0) or only those whose client is gone. */
static void release_held(sink_t *s, int all) {
  size_t keep = 0;
  for (size_t i = 0; i < s->n_held; i++) {
    held_t h = s->held[i];
    if (all || reply_gone(h.r)) answer_held(s, &h);
    else s->held[keep++] = h;
  }
  s->n_held = keep;
}
static void on_sweep(uv_timer_t *t) { release_held(t->data, 0); }

/* ---- GET /control ---------------------------------------------------------------------------------- */

/* The fault-injection state (its keys are fixed: tests compare it whole); the other settings are in /stats. */
static void state_json(const sink_t *s, char *out, size_t cap) {
  snprintf(out, cap, "{\"status\":%d,\"retry_after\":%u,\"hang\":%d,\"held\":%zu,\"held_total\":%" PRIu64 "}\n",
           s->status, s->retry_after, s->hang, s->n_held, s->held_total);
}

/* Decimal digits only, value <= max; returns 0 and sets *v, or -1. */
static int parse_uint(const char *p, size_t len, unsigned long max, unsigned long *v) {
  unsigned long x = 0;
  if (len == 0 || len > 9) return -1;
  for (size_t i = 0; i < len; i++) {
    if (p[i] < '0' || p[i] > '9') return -1;
    x = x * 10 + (unsigned long)(p[i] - '0');
  }
  if (x > max) return -1;
  *v = x;
  return 0;
}

static void control_error(hs_request_t *req, const char *fmt, size_t len, const char *arg) {
  char msg[400], buf[512];
  snprintf(msg, sizeof msg, fmt, (int)(len > 200 ? 200 : len), arg);
  for (char *c = msg; *c; c++)  /* keep the JSON valid whatever the client sent */
    if (*c == '"' || *c == '\\' || (unsigned char)*c < 0x20 || (unsigned char)*c >= 0x7f) *c = '?';
  snprintf(buf, sizeof buf, "{\"error\":\"%s\"}\n", msg);
  hs_respond(req, 400, "application/json", NULL, 0, buf, strlen(buf));
}

/* own_conn: the request came over an OTLP listener (its connection is counted there), not --control-listen. */
static void on_control(sink_t *s, hs_request_t *req, int own_conn) {
  size_t qlen = req->query.len;
  const char *q = req->query.base;
  long status = -1, retry_after = -1, hang = -1, partial = -1, health = -1, delay = -1, reset = -1;
  for (size_t i = 0; i < qlen;) {
    size_t j = i;
    while (j < qlen && q[j] != '&') j++;
    const char *kv = q + i, *eq = memchr(kv, '=', j - i);
    size_t klen = eq ? (size_t)(eq - kv) : j - i, vlen = eq ? (size_t)(q + j - eq - 1) : 0;
    const char *v = eq ? eq + 1 : "";
    unsigned long x;
    if (j == i) {
      /* empty pair ("a=1&&b=2"): ignored */
    } else if (klen == 6 && memcmp(kv, "status", 6) == 0) {
      if (parse_uint(v, vlen, 599, &x) != 0 || x < 200) {
        control_error(req, "status wants 200..599, not '%.*s'", vlen, v);
        return;
      }
      status = (long)x;
    } else if (klen == 11 && memcmp(kv, "retry_after", 11) == 0) {
      if (parse_uint(v, vlen, 86400, &x) != 0) {
        control_error(req, "retry_after wants seconds 0..86400, not '%.*s'", vlen, v);
        return;
      }
      retry_after = (long)x;
    } else if (klen == 4 && memcmp(kv, "hang", 4) == 0) {
      if (parse_uint(v, vlen, 1, &x) != 0) {
        control_error(req, "hang wants 0 or 1, not '%.*s'", vlen, v);
        return;
      }
      hang = (long)x;
    } else if (klen == 7 && memcmp(kv, "partial", 7) == 0) {
      if (parse_uint(v, vlen, 1000000000, &x) != 0) {
        control_error(req, "partial wants items 0..1000000000, not '%.*s'", vlen, v);
        return;
      }
      partial = (long)x;
    } else if (klen == 6 && memcmp(kv, "health", 6) == 0) {
      if (parse_uint(v, vlen, 599, &x) != 0 || x < 200) {
        control_error(req, "health wants 200..599, not '%.*s'", vlen, v);
        return;
      }
      health = (long)x;
    } else if (klen == 5 && memcmp(kv, "delay", 5) == 0) {
      if (parse_uint(v, vlen, 600000, &x) != 0) {
        control_error(req, "delay wants milliseconds 0..600000, not '%.*s'", vlen, v);
        return;
      }
      delay = (long)x;
    } else if (klen == 5 && memcmp(kv, "reset", 5) == 0) {
      if (parse_uint(v, vlen, 1, &x) != 0) {
        control_error(req, "reset wants 0 or 1, not '%.*s'", vlen, v);
        return;
      }
      reset = (long)x;
    } else {
      control_error(req, "unknown parameter '%.*s' (status, retry_after, hang, partial, health, delay, reset)", klen,
                    kv);
      return;
    }
    i = j + 1;
  }
  /* every parameter was valid: apply them together */
  if (status >= 0) s->status = (int)status;
  if (retry_after >= 0) s->retry_after = (unsigned)retry_after;
  if (partial >= 0) s->partial = partial;
  if (health >= 0) s->health_status = (int)health;
  if (delay >= 0) s->delay_ms = (uint64_t)delay;
  if (reset == 1) { /* the connection of this request is not counted */
    uint64_t open = hs_server_stats(s->srv)->connections_open +
                    (s->gsrv ? h2s_server_stats(s->gsrv)->connections_open : 0);
    s->max_in_flight = s->in_flight;
    s->max_connections = open && own_conn ? open - 1 : open;
  }
  if (hang == 0 && s->hang) {
    s->hang = 0;
    release_held(s, 1);
  } else if (hang == 1) {
    s->hang = 1;
  }
  char buf[256];
  state_json(s, buf, sizeof buf);
  hs_respond(req, 200, "application/json", NULL, 0, buf, strlen(buf));
}

/* Appends to out[*n..cap) like snprintf, never past cap. */
static void append(char *out, size_t cap, size_t *n, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static void append(char *out, size_t cap, size_t *n, const char *fmt, ...) {
  if (*n >= cap) return;
  va_list ap;
  va_start(ap, fmt);
  int k = vsnprintf(out + *n, cap - *n, fmt, ap);
  va_end(ap);
  *n = k < 0 ? cap : *n + (size_t)k;
}

static void stats_json(sink_t *s, char *out, size_t cap) {
  size_t n = 0;
  append(out, cap, &n, "{");
  for (int i = 0; i < OTLP_N_SIGNALS; i++)
    append(out, cap, &n, "\"%s\":{\"requests\":%" PRIu64 ",\"items\":%" PRIu64 ",\"bytes\":%" PRIu64 "},",
           otlp_signal(i)->name, s->requests[i], s->items[i], s->bytes[i]);
  append(out, cap, &n,
         "\"rejected\":%" PRIu64 ",\"invalid\":%" PRIu64 ",\"partial_rejected\":%" PRIu64 ",\"connections\":%" PRIu64
         ",\"max_connections\":%" PRIu64 ",\"in_flight\":%" PRIu64 ",\"max_in_flight\":%" PRIu64
         ",\"partial\":%lld,\"health\":%d,\"delay\":%" PRIu64 ",\"grpc_requests\":%" PRIu64
         ",\"grpc_health\":%" PRIu64 ",\"grpc_connections\":%" PRIu64 ",\"gets\":{",
         s->rejected, s->invalid, s->partial_rejected, s->srv ? hs_server_stats(s->srv)->connections_open : 0,
         s->max_connections, s->in_flight, s->max_in_flight, (long long)s->partial, s->health_status, s->delay_ms,
         s->grpc_requests, s->grpc_health, s->gsrv ? h2s_server_stats(s->gsrv)->connections_open : 0);
  for (size_t i = 0; i < s->n_gets; i++)
    append(out, cap, &n, "%s\"%s\":%" PRIu64, i ? "," : "", s->gets[i].path, s->gets[i].n);
  uint64_t hs_fail = 0;
  for (int i = 0; i < TLS_N_FAIL_REASONS; i++)
    hs_fail += (s->srv ? hs_server_stats(s->srv)->tls_handshake_failures[i] : 0) +
               (s->gsrv ? h2s_server_stats(s->gsrv)->tls_handshake_failures[i] : 0);
  append(out, cap, &n,
         "},\"gets_other\":%" PRIu64 ",\"unknown_paths\":%" PRIu64 ",\"unauthorized\":%" PRIu64
         ",\"tls_handshake_failures\":%" PRIu64 "}\n",
         s->gets_other, s->unknown_paths, s->unauthorized, hs_fail);
  if (n >= cap && cap > 2) snprintf(out + cap - 3, 3, "}\n"); /* cannot happen with the fixed-size table */
}

/* Counts a GET by path (at most 63 bytes of it; '"', '\\' and control bytes shown as '?', so the JSON stays valid). */
static void count_get(sink_t *s, hs_slice_t path) {
  char p[64];
  size_t l = path.len < sizeof p - 1 ? path.len : sizeof p - 1;
  for (size_t i = 0; i < l; i++) {
    unsigned char ch = (unsigned char)path.base[i];
    p[i] = ch == '"' || ch == '\\' || ch < 0x20 || ch >= 0x7f ? '?' : (char)ch;
  }
  p[l] = 0;
  for (size_t i = 0; i < s->n_gets; i++)
    if (strcmp(s->gets[i].path, p) == 0) {
      s->gets[i].n++;
      return;
    }
  if (s->n_gets == MAX_GET_PATHS) {
    s->gets_other++;
    return;
  }
  memcpy(s->gets[s->n_gets].path, p, l + 1);
  s->gets[s->n_gets++].n = 1;
}

/* Open connections now, over both listeners. */
static uint64_t open_connections(const sink_t *s) {
  return hs_server_stats(s->srv)->connections_open + (s->gsrv ? h2s_server_stats(s->gsrv)->connections_open : 0);
}

/* High-water mark of open connections, sampled when the headers of an OTLP POST or a health check are
 * complete: every connection a client opens carries a request, so one over its limit is seen. Not sampled for
 * /stats and /control, so reading the mark does not raise it (a test's own connection open meanwhile counts). */
static int on_headers(hs_request_t *req, void *ud) {
  sink_t *s = ud;
  if (req->method == HTTP_GET && (hs_slice_eq(req->path, "/stats") || hs_slice_eq(req->path, "/control"))) return 0;
  uint64_t open = open_connections(s);
  if (open > s->max_connections) s->max_connections = open;
  return 0;
}

/* Answers an OTLP POST at once with an error of the sink's own (not the configured status), recorded like others. */
static void refuse(sink_t *s, reply_t r, int sig, otlp_encoding_t enc, int status, const char *msg) {
  record_time(s, r, status, sig);
  s->in_flight--;
  if (r.st) grpc_fail(r.st, sink_grpc_code(status), msg, 0);
  else otlp_respond_status(r.req, enc, status, msg, 0, NULL, 0);
}

/* The common tail of an OTLP request over either protocol, once the sink is to decode it: gunzip, count, record
 * the trace IDs, answer (200 with the partial_success of --partial, or 400). wire/wire_len: the body as received
 * (the HTTP body, the gRPC message). */
static void accept_otlp(sink_t *s, reply_t r, int sig, otlp_encoding_t renc, const uint8_t *wire, size_t wire_len,
                        int gzip) {
  const uint8_t *body = wire;
  size_t len = wire_len;
  uint8_t *plain = NULL;
  if (gzip) {
    if (otlp_gunzip(wire, wire_len, s->max_body, &plain, &len) != OTLP_OK) {
      s->invalid++;
      respond(s, r, 400, sig, renc, 0);
      return;
    }
    body = plain;
  }
  uint64_t items = 0;
  if (otlp_count_items(sig, body, len, &items, NULL) != OTLP_OK) {
    free(plain);
    s->invalid++;
    respond(s, r, 400, sig, renc, 0);
    return;
  }
  s->requests[sig]++;
  s->items[sig] += items;
  s->bytes[sig] += wire_len;
  if (r.st) s->grpc_requests++;
  if (sig == OTLP_TRACES && s->trace_file) record_traces(s, body, len);
  if (sig == OTLP_LOGS && s->log_file) record_logs(s, body, len);
  free(plain);
  int64_t rejected = s->partial > 0 ? (s->partial < (int64_t)items ? s->partial : (int64_t)items) : 0;
  s->partial_rejected += (uint64_t)rejected;
  respond(s, r, 200, sig, renc, rejected);
}

/* --require-header: 0 when the value is there (or nothing is required). */
static int check_required(const sink_t *s, const hs_slice_t *h) {
  if (!s->require_name) return 0;
  size_t vl = strlen(s->require_value);
  return h && h->len == vl && memcmp(h->base, s->require_value, vl) == 0 ? 0 : -1;
}

/* The signal of an OTLP path under --prefix, or -1. */
static int sink_signal_from_path(const sink_t *s, hs_slice_t path) {
  size_t pl = strlen(s->prefix);
  if (path.len < pl || memcmp(path.base, s->prefix, pl) != 0) return -1;
  return otlp_signal_from_path((hs_slice_t){path.base + pl, path.len - pl});
}

/* --control-listen: /stats and /control only. */
static void on_control_request(hs_request_t *req, void *ud) {
  sink_t *s = ud;
  if (req->method == HTTP_GET && hs_slice_eq(req->path, "/stats")) {
    char buf[4096];
    stats_json(s, buf, sizeof buf);
    hs_respond(req, 200, "application/json", NULL, 0, buf, strlen(buf));
  } else if (req->method == HTTP_GET && hs_slice_eq(req->path, "/control")) {
    on_control(s, req, 0);
  } else {
    hs_respond(req, 404, "text/plain", NULL, 0, "control listener: GET /stats or /control\n", 41);
  }
}

static void on_request(hs_request_t *req, void *ud) {
  sink_t *s = ud;
  reply_t r = {req, NULL, req->start_ns};
  if (req->method == HTTP_GET) {
    if (hs_slice_eq(req->path, "/stats")) {
      char buf[4096];
      stats_json(s, buf, sizeof buf);
      hs_respond(req, 200, "application/json", NULL, 0, buf, strlen(buf));
    } else if (hs_slice_eq(req->path, "/control")) {
      on_control(s, req, 1);
    } else {
      count_get(s, req->path);
      if (s->hang && !s->stopping && hold(s, r, 0, OTLP_ENC_PROTOBUF) == 0) return; /* black hole: never answered */
      if (s->health_status == 200) hs_respond(req, 200, "text/plain", NULL, 0, "ok\n", 3);
      else hs_respond(req, s->health_status, "text/plain", NULL, 0, "configured health status\n", 25);
    }
    return;
  }
  int sig = sink_signal_from_path(s, req->path);
  int enc = otlp_encoding_from_content_type(hs_request_header(req, "Content-Type"));
  otlp_encoding_t renc = enc == OTLP_ENC_JSON ? OTLP_ENC_JSON : OTLP_ENC_PROTOBUF;
  if (sig < 0 || req->method != HTTP_POST) {
    s->unknown_paths += sig < 0;
    otlp_respond_status(req, renc, sig < 0 ? 404 : 405, "otlp-sink: POST /v1/{traces,logs,metrics}", 0, NULL, 0);
    return;
  }
  if (++s->in_flight > s->max_in_flight) s->max_in_flight = s->in_flight;
  if (s->hang && !s->stopping && hold(s, r, 1, renc) == 0) { /* black hole: neither answered nor recorded */
    record_time(s, r, 0, sig);
    return;
  }
  if (s->require_name && check_required(s, hs_request_header(req, s->require_name)) != 0) {
    s->rejected++;
    s->unauthorized++;
    refuse(s, r, sig, renc, 401, "otlp-sink: required header missing");
    return;
  }
  if (s->status != 200) {
    respond(s, r, s->status, sig, renc, 0);
    return;
  }
  if (s->no_decode) {
    s->requests[sig]++;
    s->bytes[sig] += req->body_len;
    respond(s, r, 200, sig, renc, 0);
    return;
  }
  if (enc != OTLP_ENC_PROTOBUF) {
    refuse(s, r, sig, renc, 415, "otlp-sink decodes application/x-protobuf only");
    return;
  }
  int ce = otlp_content_encoding(hs_request_header(req, "Content-Encoding"));
  if (ce < 0) {
    refuse(s, r, sig, renc, 415, "unsupported Content-Encoding");
    return;
  }
  accept_otlp(s, r, sig, renc, req->body, req->body_len, ce == OTLP_CE_GZIP);
}

/* ---- OTLP/gRPC ------------------------------------------------------------------------------------- */

/* One gRPC call while its message arrives (h2s_request_t.user). */
typedef struct gcall {
  grpc_deframer_t df;
  uint8_t *msg;          /* df.length bytes, allocated when the prefix is complete */
  int svc;               /* GRPC_SVC_* */
} gcall_t;

static void gcall_free(h2s_request_t *req) {
  gcall_t *c = req->user;
  req->user = NULL;
  if (!c) return;
  free(c->msg);
  free(c);
}

static int g_on_headers(h2s_stream_t *st, h2s_request_t *req, void *ud) {
  sink_t *s = ud;
  uint64_t open = open_connections(s);
  if (open > s->max_connections) s->max_connections = open;
  int svc = grpc_service_from_path(req->path);
  if (svc < 0) {
    s->unknown_paths++;
    grpc_fail(st, GRPC_UNIMPLEMENTED, "otlp-sink: unknown service or method", 0);
    return 1;
  }
  const hs_slice_t *ct = h2s_request_header(req, "content-type");
  if (!ct || ct->len < 16 || memcmp(ct->base, "application/grpc", 16) != 0 ||
      (ct->len > 16 && ct->base[16] != '+' && ct->base[16] != ';')) {
    static const hs_header_t plain = {{"content-type", 12}, {"text/plain", 10}};
    h2s_respond(st, 415, &plain, 1, "otlp-sink: content-type application/grpc\n", 41, NULL, 0);
    return 1;
  }
  gcall_t *c = calloc(1, sizeof *c);
  if (!c) {
    grpc_fail(st, GRPC_RESOURCE_EXHAUSTED, "otlp-sink: out of memory", 0);
    return 1;
  }
  grpc_deframer_init(&c->df);
  c->svc = svc;
  req->user = c;
  return 0;
}

static int g_on_data(h2s_stream_t *st, h2s_request_t *req, const uint8_t *data, size_t len, void *ud) {
  sink_t *s = ud;
  gcall_t *c = req->user;
  /* NEED_BUFFER is answered by feeding the rest again, also when nothing is left (a 0-length message). */
  for (int need = 0;;) {
    size_t used = 0;
    int rc = grpc_deframer_feed(&c->df, data, len, &used);
    data += used;
    len -= used;
    if (rc == GRPC_DF_NEED_BUFFER && !need++) {
      if (c->df.length > s->max_body) {
        gcall_free(req);
        grpc_fail(st, GRPC_RESOURCE_EXHAUSTED, "otlp-sink: message larger than --max-body", 0);
        return 1;
      }
      if (c->df.length && !(c->msg = malloc(c->df.length))) {
        gcall_free(req);
        grpc_fail(st, GRPC_RESOURCE_EXHAUSTED, "otlp-sink: out of memory", 0);
        return 1;
      }
      c->df.buf = c->msg;
      continue;
    }
    if (rc == GRPC_DF_ERROR || (len > 0 && used == 0)) {
      gcall_free(req);
      grpc_fail(st, GRPC_INTERNAL, "otlp-sink: a unary call carries one message", 0);
      return 1;
    }
    if (len == 0) return 0;
  }
}

static void g_on_end(h2s_stream_t *st, h2s_request_t *req, void *ud) {
  sink_t *s = ud;
  gcall_t *c = req->user;
  reply_t r = {NULL, st, req->start_ns};
  int fin = grpc_deframer_finish(&c->df);
  if (fin <= 0) {
    gcall_free(req);
    grpc_fail(st, GRPC_INTERNAL, fin < 0 ? "otlp-sink: the stream ended inside a message" : "otlp-sink: no message",
              0);
    return;
  }
  const hs_slice_t *enc = h2s_request_header(req, "grpc-encoding");
  int gzip = 0;
  if (c->df.compressed) {
    if (!enc || hs_slice_eq(*enc, "identity")) {
      gcall_free(req);
      grpc_fail(st, GRPC_INTERNAL, "otlp-sink: compressed flag without grpc-encoding", 0);
      return;
    }
    if (!hs_slice_eq(*enc, "gzip")) {
      gcall_free(req);
      grpc_fail(st, GRPC_UNIMPLEMENTED, "otlp-sink: grpc-encoding gzip or identity only", 0);
      return;
    }
    gzip = 1;
  }
  if (c->svc == GRPC_SVC_HEALTH_CHECK) {
    gcall_free(req);
    s->grpc_health++;
    if (s->hang && !s->stopping && hold(s, r, 0, OTLP_ENC_PROTOBUF) == 0) return;
    uint8_t out[8];
    grpc_ok(st, out, grpc_health_response(s->health_status == 200 ? 1 : 2, out));
    return;
  }
  int sig = c->svc; /* GRPC_SVC_TRACES.. are otlp_signal_t */
  if (++s->in_flight > s->max_in_flight) s->max_in_flight = s->in_flight;
  if (s->hang && !s->stopping && hold(s, r, 1, OTLP_ENC_PROTOBUF) == 0) {
    gcall_free(req);
    record_time(s, r, 0, sig);
    return;
  }
  if (s->require_name && check_required(s, h2s_request_header(req, s->require_lname)) != 0) {
    gcall_free(req);
    s->rejected++;
    s->unauthorized++;
    refuse(s, r, sig, OTLP_ENC_PROTOBUF, 401, "otlp-sink: required header missing");
    return;
  }
  if (s->status != 200) {
    gcall_free(req);
    respond(s, r, s->status, sig, OTLP_ENC_PROTOBUF, 0);
    return;
  }
  if (s->no_decode) {
    s->requests[sig]++;
    s->bytes[sig] += c->df.length;
    s->grpc_requests++;
    gcall_free(req);
    respond(s, r, 200, sig, OTLP_ENC_PROTOBUF, 0);
    return;
  }
  accept_otlp(s, r, sig, OTLP_ENC_PROTOBUF, c->msg, c->df.length, gzip);
  gcall_free(req);
}

static void g_on_abort(h2s_stream_t *st, h2s_request_t *req, int why, void *ud) {
  (void)ud;
  gcall_free(req);
  if (why == H2S_ABORT_TIMEOUT) grpc_fail(st, GRPC_DEADLINE_EXCEEDED, "otlp-sink: request timeout", 0);
  else if (why == H2S_ABORT_TOO_BIG) grpc_fail(st, GRPC_RESOURCE_EXHAUSTED, "otlp-sink: message too large", 0);
  else grpc_fail(st, GRPC_CANCELLED, "cancelled", 0); /* discarded: only releases the stream */
}

/* ---- shutdown -------------------------------------------------------------------------------------- */

static void on_closed_done(void *ud) {
  sink_t *s = ud;
  if (--s->shutdowns > 0) return;
  uv_close((uv_handle_t *)&s->sweep, NULL);
  uv_close((uv_handle_t *)&s->sig_term, NULL);
  uv_close((uv_handle_t *)&s->sig_int, NULL);
}

static void on_signal(uv_signal_t *h, int signum) {
  sink_t *s = h->data;
  uv_signal_stop(&s->sig_term);
  uv_signal_stop(&s->sig_int);
  s->stopping = 1;
  s->hang = 0;
  uv_timer_stop(&s->sweep);
  release_held(s, 1); /* else their connections would keep the shutdown waiting forever */
  s->shutdowns = 1 + (s->gsrv != NULL) + (s->ctl != NULL);
  hs_server_shutdown(s->srv, on_closed_done, s);
  if (s->gsrv) h2s_server_shutdown(s->gsrv, on_closed_done, s);
  if (s->ctl) hs_server_shutdown(s->ctl, on_closed_done, s);
}

/* hs_config_t / h2s_config_t .tls_ctx: the one context of the listener (--tls), never replaced. */
static tls_ctx_t *sink_tls_ctx(void *tls_ud) { return tls_ud; }

int main(int argc, char **argv) {
  static const struct option opts[] = {
      {"listen", required_argument, NULL, 'l'},      {"status", required_argument, NULL, 's'},
      {"retry-after", required_argument, NULL, 'r'}, {"delay", required_argument, NULL, 'd'},
      {"trace-file", required_argument, NULL, 't'},  {"max-body", required_argument, NULL, 'm'},
      {"no-decode", no_argument, NULL, 'n'},         {"help", no_argument, NULL, 'h'},
      {"require-header", required_argument, NULL, 'q'}, {"log-file", required_argument, NULL, 'L'},
      {"partial", required_argument, NULL, 'p'},     {"times-file", required_argument, NULL, 'T'},
      {"health-status", required_argument, NULL, 'H'}, {"grpc-listen", required_argument, NULL, 'g'},
      {"grpc", no_argument, NULL, 'G'},              {"tls", required_argument, NULL, 'S'},
      {"control-listen", required_argument, NULL, 'C'}, {"prefix", required_argument, NULL, 'P'},
      {NULL, 0, NULL, 0},
  };
  sink_t s = {0};
  s.status = 200;
  s.health_status = 200;
  s.max_body = 64u << 20;
  const char *listen = "127.0.0.1:0", *trace_path = NULL, *log_path = NULL, *times_path = NULL;
  const char *grpc_listen = NULL, *control_listen = NULL;
  char *tls_cert = NULL, *tls_key = NULL, *tls_client_ca = NULL;
  int grpc_same_host = 0;
  s.prefix = "";
  for (int o; (o = getopt_long(argc, argv, "h", opts, NULL)) != -1;) {
    switch (o) {
      case 'l': listen = optarg; break;
      case 's': s.status = atoi(optarg); break;
      case 'r': s.retry_after = (unsigned)atoi(optarg); break;
      case 'd': s.delay_ms = strtoull(optarg, NULL, 10); break;
      case 't': trace_path = optarg; break;
      case 'L': log_path = optarg; break;
      case 'T': times_path = optarg; break;
      case 'p': s.partial = atoll(optarg); break;
      case 'H': s.health_status = atoi(optarg); break;
      case 'm':
        if (cfg_parse_size(optarg, &s.max_body) != 0) {
          fprintf(stderr, "otlp-sink: bad --max-body \"%s\"\n", optarg);
          return 2;
        }
        break;
      case 'n': s.no_decode = 1; break;
      case 'g': grpc_listen = optarg; break;
      case 'G': grpc_same_host = 1; break;
      case 'C': control_listen = optarg; break;
      case 'S': {
        char *comma = strchr(optarg, ',');
        if (!comma || comma == optarg || !comma[1]) {
          fprintf(stderr, "otlp-sink: --tls wants CERT,KEY[,CLIENT_CA]\n");
          return 2;
        }
        *comma = 0;
        tls_cert = optarg;
        tls_key = comma + 1;
        char *ca = strchr(tls_key, ',');
        if (ca) {
          *ca = 0;
          tls_client_ca = ca + 1;
        }
        break;
      }
      case 'P': {
        size_t pl = strlen(optarg);
        while (pl && optarg[pl - 1] == '/') optarg[--pl] = 0; /* "/otlp/" = "/otlp" */
        if (pl && optarg[0] != '/') {
          fprintf(stderr, "otlp-sink: --prefix wants /PATH\n");
          return 2;
        }
        s.prefix = optarg;
        break;
      }
      case 'q': {
        char *colon = strchr(optarg, ':');
        if (!colon) {
          fprintf(stderr, "otlp-sink: --require-header wants 'NAME: VALUE'\n");
          return 2;
        }
        *colon = 0;
        s.require_name = optarg;
        s.require_value = colon + 1;
        while (*s.require_value == ' ') s.require_value++;
        size_t nl = strlen(optarg);
        if (nl >= sizeof s.require_lname) {
          fprintf(stderr, "otlp-sink: --require-header name too long\n");
          return 2;
        }
        for (size_t i = 0; i <= nl; i++)
          s.require_lname[i] = (char)(optarg[i] >= 'A' && optarg[i] <= 'Z' ? optarg[i] + 32 : optarg[i]);
        break;
      }
      case 'h': fputs(usage, stdout); return 0;
      default: fputs(usage, stderr); return 2;
    }
  }
  if (s.status < 200 || s.status > 599 || s.health_status < 200 || s.health_status > 599) {
    fprintf(stderr, "otlp-sink: --status and --health-status must be 200..599\n");
    return 2;
  }
  if (s.partial < 0) {
    fprintf(stderr, "otlp-sink: --partial must be >= 0\n");
    return 2;
  }
  char *host = NULL;
  uint16_t port = 0;
  if (cfg_parse_hostport(listen, &host, &port) != 0) {
    fprintf(stderr, "otlp-sink: bad --listen \"%s\"\n", listen);
    return 2;
  }
  if (trace_path && !(s.trace_file = fopen(trace_path, "a"))) {
    perror(trace_path);
    free(host);
    return 1;
  }
  if (log_path && !(s.log_file = fopen(log_path, "a"))) {
    perror(log_path);
    if (s.trace_file) fclose(s.trace_file);
    free(host);
    return 1;
  }
  if (times_path && !(s.times_file = fopen(times_path, "a"))) {
    perror(times_path);
    if (s.trace_file) fclose(s.trace_file);
    if (s.log_file) fclose(s.log_file);
    free(host);
    return 1;
  }
  signal(SIGPIPE, SIG_IGN);
  tls_ctx_t *tls_http = NULL, *tls_grpc = NULL;
  if (tls_cert) {
    char err[512];
    tls_server_opts_t to = {.cert_file = tls_cert, .key_file = tls_key, .client_ca_file = tls_client_ca,
                            .min_version = 12, .alpn = "http/1.1"};
    int trc = tls_server_ctx_create(&to, "otlp-sink --tls", &tls_http, err, sizeof err);
    to.alpn = "h2";
    if (trc == 0 && (grpc_listen || grpc_same_host))
      trc = tls_server_ctx_create(&to, "otlp-sink --tls", &tls_grpc, err, sizeof err);
    if (trc != 0) {
      fprintf(stderr, "otlp-sink: %s\n", err);
      tls_ctx_unref(tls_http);
      free(host);
      return 1;
    }
  }
  s.loop = uv_default_loop();
  hs_config_t hc = {.name = "sink", .max_body_bytes = s.max_body, .read_timeout_ms = 30000,
                    .idle_timeout_ms = 120000, .on_headers = on_headers, .on_request = on_request, .ud = &s,
                    .tls_ctx = tls_http ? sink_tls_ctx : NULL, .tls_ud = tls_http};
  int rc = hs_server_create(s.loop, &hc, &s.srv);
  if (rc == 0) rc = hs_server_listen(s.srv, host, port);
  free(host);
  if (rc != 0) {
    fprintf(stderr, "otlp-sink: cannot listen on %s: %s\n", listen, uv_strerror(rc));
    return 1;
  }
  printf("otlp-sink listening on %s\n", hs_server_address(s.srv));
  if (grpc_listen || grpc_same_host) {
    char *ghost = NULL;
    uint16_t gport = 0;
    if (grpc_listen ? cfg_parse_hostport(grpc_listen, &ghost, &gport) != 0
                    : cfg_parse_hostport(listen, &ghost, &gport) != 0) {
      fprintf(stderr, "otlp-sink: bad --grpc-listen \"%s\"\n", grpc_listen ? grpc_listen : listen);
      return 2;
    }
    if (!grpc_listen) gport = 0;
    h2s_config_t gc = {.name = "sink-grpc", .max_concurrent_streams = 1000, .max_body_bytes = s.max_body + 5,
                       .read_timeout_ms = 30000, .idle_timeout_ms = 120000, .on_headers = g_on_headers,
                       .on_data = g_on_data, .on_end = g_on_end, .on_abort = g_on_abort, .ud = &s,
                       .tls_ctx = tls_grpc ? sink_tls_ctx : NULL, .tls_ud = tls_grpc};
    rc = h2s_server_create(s.loop, &gc, &s.gsrv);
    if (rc == 0) rc = h2s_server_listen(s.gsrv, ghost, gport, 0);
    free(ghost);
    if (rc != 0) {
      fprintf(stderr, "otlp-sink: cannot listen for gRPC on %s: %s\n", grpc_listen ? grpc_listen : listen,
              uv_strerror(rc));
      return 1;
    }
    printf("otlp-sink grpc listening on %s\n", h2s_server_address(s.gsrv));
  }
  if (control_listen) {
    char *chost = NULL;
    uint16_t cport = 0;
    if (cfg_parse_hostport(control_listen, &chost, &cport) != 0) {
      fprintf(stderr, "otlp-sink: bad --control-listen \"%s\"\n", control_listen);
      return 2;
    }
    hs_config_t cc = {.name = "sink-control", .max_body_bytes = 4096, .read_timeout_ms = 30000,
                      .idle_timeout_ms = 120000, .on_request = on_control_request, .ud = &s};
    rc = hs_server_create(s.loop, &cc, &s.ctl);
    if (rc == 0) rc = hs_server_listen(s.ctl, chost, cport);
    free(chost);
    if (rc != 0) {
      fprintf(stderr, "otlp-sink: cannot listen on %s: %s\n", control_listen, uv_strerror(rc));
      return 1;
    }
    printf("otlp-sink control listening on %s\n", hs_server_address(s.ctl));
  }
  fflush(stdout);
  uv_signal_init(s.loop, &s.sig_term);
  uv_signal_init(s.loop, &s.sig_int);
  s.sig_term.data = s.sig_int.data = &s;
  uv_signal_start(&s.sig_term, on_signal, SIGTERM);
  uv_signal_start(&s.sig_int, on_signal, SIGINT);
  uv_timer_init(s.loop, &s.sweep);
  s.sweep.data = &s;
  uv_timer_start(&s.sweep, on_sweep, SWEEP_MS, SWEEP_MS);
  uv_run(s.loop, UV_RUN_DEFAULT);
  char buf[4096];
  stats_json(&s, buf, sizeof buf);
  printf("%s", buf);
  hs_server_destroy(s.srv);
  if (s.gsrv) h2s_server_destroy(s.gsrv);
  if (s.ctl) hs_server_destroy(s.ctl);
  tls_ctx_unref(tls_http); /* after the servers that used them */
  tls_ctx_unref(tls_grpc);
  if (s.trace_file) fclose(s.trace_file);
  if (s.log_file) fclose(s.log_file);
  if (s.times_file) fclose(s.times_file);
  free(s.held);
  uv_loop_close(s.loop);
  return 0;
}
