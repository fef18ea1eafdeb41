/*
 * gateway/batcher: group commit by loop turn against a fake bt_send_fn that records each backend request (path,
 * content type and encoding, body, iovec count) and answers it later from the loop (a uv_async callback, in the
 * turn's I/O phase as a pool's callback runs) with any status, body and Retry-After, or fails it synchronously.
 * Idle -> sent in the same turn with no timer; busy -> what waits leaves as one request when an answer frees a
 * slot; parts of one turn coalesce; max_parts / max_bytes; signals apart; per-part outcomes exactly as alone
 * (400 and partial_success re-sent member by member, 413 split in halves); other answers to every part; the
 * request callback once per backend request; gzip and pass-through alternatives; cancel, destroy, synchronous
 * send failures, a reloaded config; and seeded random runs checking each part's outcome against what it would
 * have got alone. Every test counts each part's done callbacks: exactly one per accepted bt_submit, none inside
 * bt_submit. Each test has its own loop, which must close with nothing left on it.
 */
#include <libdeflate.h>
#include <uv.h>

#include "gateway/batcher.h"
#include "gateway/otlp_http.h"
#include "opentelemetry/proto/collector/logs/v1/logs_service.pb-c.h"
#include "opentelemetry/proto/collector/metrics/v1/metrics_service.pb-c.h"
#include "opentelemetry/proto/collector/trace/v1/trace_service.pb-c.h"
#include "test.h"

typedef Opentelemetry__Proto__Common__V1__AnyValue AnyValue;
typedef Opentelemetry__Proto__Trace__V1__Span Span;
typedef Opentelemetry__Proto__Trace__V1__ScopeSpans ScopeSpans;
typedef Opentelemetry__Proto__Trace__V1__ResourceSpans ResourceSpans;
typedef Opentelemetry__Proto__Logs__V1__LogRecord LogRecord;
typedef Opentelemetry__Proto__Logs__V1__ScopeLogs ScopeLogs;
typedef Opentelemetry__Proto__Logs__V1__ResourceLogs ResourceLogs;
typedef Opentelemetry__Proto__Metrics__V1__NumberDataPoint NumberDataPoint;
typedef Opentelemetry__Proto__Metrics__V1__Gauge Gauge;
typedef Opentelemetry__Proto__Metrics__V1__Metric Metric;
typedef Opentelemetry__Proto__Metrics__V1__ScopeMetrics ScopeMetrics;
typedef Opentelemetry__Proto__Metrics__V1__ResourceMetrics ResourceMetrics;
typedef Opentelemetry__Proto__Collector__Trace__V1__ExportTraceServiceRequest TraceRequest;
typedef Opentelemetry__Proto__Collector__Trace__V1__ExportTraceServiceResponse TraceResponse;
typedef Opentelemetry__Proto__Collector__Trace__V1__ExportTracePartialSuccess TracePartial;
typedef Opentelemetry__Proto__Collector__Logs__V1__ExportLogsServiceRequest LogsRequest;
typedef Opentelemetry__Proto__Collector__Metrics__V1__ExportMetricsServiceRequest MetricsRequest;

#define MAX_REQS 4096
#define MAX_PARTS 1024
#define MAX_ANSWERS 512
#define MAX_ITEMS 256
#define DESC_CAP 512

typedef struct fx fx_t;

typedef struct tpart {
  bt_part_t p; /* first: done recovers the tpart from its bt_part_t */
  fx_t *fx;
  int idx;
  uint8_t *bytes; /* the plain Export*ServiceRequest */
  size_t len;
  struct iovec iov[4];
  uint8_t *alone; /* the pass-through alternative, or NULL */
  size_t alone_len;
  struct iovec alone_iov[1];
  int accepted, done_calls;
  bt_outcome_t out;
  char msg[128];
  int reqcbs_at_done;        /* request callbacks that had run when done ran */
  struct tpart *then_submit; /* submitted to the batcher from this part's done callback */
  int then_rc;
  int bad;        /* random runs: the fake backend answers 400 to any request holding this part */
  int64_t reject; /* ... and counts these items as rejected in a 2xx partial_success */
} tpart_t;

typedef struct fk_req {
  char path[32], ct[64], ce[32];
  int ce_null;
  uint8_t *body; /* the request's bytes as sent (iovecs gathered at send time) */
  size_t len, n_iov;
  be_done_cb cb;
  void *cb_ud;
  int answered, queued;
  char desc[DESC_CAP];
} fk_req_t;

typedef struct fk_answer {
  int req, status;
  uint8_t body[256];
  size_t len;
  uint32_t retry_after;
} fk_answer_t;

typedef struct reqcb {
  int sig, status;
  size_t n_parts;
  uint64_t items;
  size_t bytes;
  uint64_t start_ns;
  int final;
} reqcb_t;

struct fx {
  uv_loop_t loop;
  uv_async_t answerer; /* answers queued requests from the loop; also keeps it alive, as a gateway's listeners do */
  bt_group_t *g;
  bt_t *b;
  fk_req_t reqs[MAX_REQS];
  int n_reqs;
  int fail_sends, fail_status, n_failed_sends; /* the next fail_sends sends fail synchronously with fail_status */
  int in_submit, sends_in_submit, dones_in_submit;
  fk_answer_t answers[MAX_ANSWERS];
  int n_answers, n_answered;
  reqcb_t reqcbs[MAX_REQS];
  int n_reqcbs;
  tpart_t *parts[MAX_PARTS];
  int n_parts;
  int dones;
};

/* ------------------------------------------------------------------------------------ requests */

static uint8_t *pack_msg(const ProtobufCMessage *m, size_t *len) {
  *len = protobuf_c_message_get_packed_size(m);
  uint8_t *b = malloc(*len ? *len : 1);
  protobuf_c_message_pack(m, b);
  return b;
}

/* One ResourceSpans, one ScopeSpans, n spans named "<prefix><tag>-s<i>" (fixed width: equal n, equal length). */
static uint8_t *make_traces(const char *prefix, int tag, int n, size_t *len) {
  Span *spans = calloc((size_t)n, sizeof *spans);
  Span **ps = calloc((size_t)n, sizeof *ps);
  char (*names)[32] = calloc((size_t)n, sizeof *names);
  uint8_t (*sids)[8] = calloc((size_t)n, sizeof *sids);
  uint8_t tid[16];
  for (int b = 0; b < 16; b++) tid[b] = (uint8_t)(tag * 31 + b + 1);
  for (int i = 0; i < n; i++) {
    spans[i] = (Span)OPENTELEMETRY__PROTO__TRACE__V1__SPAN__INIT;
    snprintf(names[i], sizeof names[i], "%s%03d-s%03d", prefix, tag, i);
    for (int b = 0; b < 8; b++) sids[i][b] = (uint8_t)(i * 7 + b + 1);
    spans[i].trace_id = (ProtobufCBinaryData){16, tid};
    spans[i].span_id = (ProtobufCBinaryData){8, sids[i]};
    spans[i].name = names[i];
    spans[i].start_time_unix_nano = 1000 + (uint64_t)i;
    spans[i].end_time_unix_nano = 2000 + (uint64_t)i;
    ps[i] = &spans[i];
  }
  ScopeSpans ss = OPENTELEMETRY__PROTO__TRACE__V1__SCOPE_SPANS__INIT, *pss[1] = {&ss};
  ss.spans = ps;
  ss.n_spans = (size_t)n;
  ResourceSpans rs = OPENTELEMETRY__PROTO__TRACE__V1__RESOURCE_SPANS__INIT, *prs[1] = {&rs};
  rs.scope_spans = pss;
  rs.n_scope_spans = 1;
  TraceRequest req = OPENTELEMETRY__PROTO__COLLECTOR__TRACE__V1__EXPORT_TRACE_SERVICE_REQUEST__INIT;
  req.resource_spans = prs;
  req.n_resource_spans = 1;
  uint8_t *out = pack_msg(&req.base, len);
  free(spans);
  free(ps);
  free(names);
  free(sids);
  return out;
}

static uint8_t *make_logs(int tag, int n, size_t *len) {
  LogRecord *recs = calloc((size_t)n, sizeof *recs);
  LogRecord **pr = calloc((size_t)n, sizeof *pr);
  AnyValue *vals = calloc((size_t)n, sizeof *vals);
  char (*texts)[32] = calloc((size_t)n, sizeof *texts);
  for (int i = 0; i < n; i++) {
    recs[i] = (LogRecord)OPENTELEMETRY__PROTO__LOGS__V1__LOG_RECORD__INIT;
    vals[i] = (AnyValue)OPENTELEMETRY__PROTO__COMMON__V1__ANY_VALUE__INIT;
    snprintf(texts[i], sizeof texts[i], "l%03d-r%03d", tag, i);
    vals[i].value_case = OPENTELEMETRY__PROTO__COMMON__V1__ANY_VALUE__VALUE_STRING_VALUE;
    vals[i].string_value = texts[i];
    recs[i].time_unix_nano = 1000 + (uint64_t)i;
    recs[i].body = &vals[i];
    pr[i] = &recs[i];
  }
  ScopeLogs sl = OPENTELEMETRY__PROTO__LOGS__V1__SCOPE_LOGS__INIT, *psl[1] = {&sl};
  sl.log_records = pr;
  sl.n_log_records = (size_t)n;
  ResourceLogs rl = OPENTELEMETRY__PROTO__LOGS__V1__RESOURCE_LOGS__INIT, *prl[1] = {&rl};
  rl.scope_logs = psl;
  rl.n_scope_logs = 1;
  LogsRequest req = OPENTELEMETRY__PROTO__COLLECTOR__LOGS__V1__EXPORT_LOGS_SERVICE_REQUEST__INIT;
  req.resource_logs = prl;
  req.n_resource_logs = 1;
  uint8_t *out = pack_msg(&req.base, len);
  free(recs);
  free(pr);
  free(vals);
  free(texts);
  return out;
}

static uint8_t *make_metrics(int tag, int n, size_t *len) {
  NumberDataPoint *dps = calloc((size_t)n, sizeof *dps);
  NumberDataPoint **pd = calloc((size_t)n, sizeof *pd);
  for (int i = 0; i < n; i++) {
    dps[i] = (NumberDataPoint)OPENTELEMETRY__PROTO__METRICS__V1__NUMBER_DATA_POINT__INIT;
    dps[i].time_unix_nano = 1000 + (uint64_t)i;
    dps[i].value_case = OPENTELEMETRY__PROTO__METRICS__V1__NUMBER_DATA_POINT__VALUE_AS_INT;
    dps[i].as_int = tag * 1000 + i;
    pd[i] = &dps[i];
  }
  char name[32];
  snprintf(name, sizeof name, "m%03d", tag);
  Gauge g = OPENTELEMETRY__PROTO__METRICS__V1__GAUGE__INIT;
  g.data_points = pd;
  g.n_data_points = (size_t)n;
  Metric m = OPENTELEMETRY__PROTO__METRICS__V1__METRIC__INIT, *pm[1] = {&m};
  m.name = name;
  m.data_case = OPENTELEMETRY__PROTO__METRICS__V1__METRIC__DATA_GAUGE;
  m.gauge = &g;
  ScopeMetrics sm = OPENTELEMETRY__PROTO__METRICS__V1__SCOPE_METRICS__INIT, *psm[1] = {&sm};
  sm.metrics = pm;
  sm.n_metrics = 1;
  ResourceMetrics rm = OPENTELEMETRY__PROTO__METRICS__V1__RESOURCE_METRICS__INIT, *prm[1] = {&rm};
  rm.scope_metrics = psm;
  rm.n_scope_metrics = 1;
  MetricsRequest req = OPENTELEMETRY__PROTO__COLLECTOR__METRICS__V1__EXPORT_METRICS_SERVICE_REQUEST__INIT;
  req.resource_metrics = prm;
  req.n_resource_metrics = 1;
  uint8_t *out = pack_msg(&req.base, len);
  free(dps);
  free(pd);
  return out;
}

/* ExportTraceServiceResponse{partial_success{rejected, msg}} (the same field numbers for every signal). */
static size_t partial_body(int64_t rejected, const char *msg, uint8_t *out, size_t cap) {
  TracePartial ps = OPENTELEMETRY__PROTO__COLLECTOR__TRACE__V1__EXPORT_TRACE_PARTIAL_SUCCESS__INIT;
  ps.rejected_spans = rejected;
  ps.error_message = (char *)msg;
  TraceResponse resp = OPENTELEMETRY__PROTO__COLLECTOR__TRACE__V1__EXPORT_TRACE_SERVICE_RESPONSE__INIT;
  resp.partial_success = &ps;
  size_t n = protobuf_c_message_get_packed_size(&resp.base);
  CHECK(n > 0 && n <= cap);
  if (n > cap) return 0;
  protobuf_c_message_pack(&resp.base, out);
  return n;
}

/* gzip at level 9: not the bytes the batcher's own level-1 gzip makes, so the two can be told apart. */
static uint8_t *gzip9(const uint8_t *in, size_t n, size_t *out_len) {
  struct libdeflate_compressor *c = libdeflate_alloc_compressor(9);
  size_t cap = libdeflate_gzip_compress_bound(c, n);
  uint8_t *out = malloc(cap);
  *out_len = libdeflate_gzip_compress(c, in, n, out, cap);
  libdeflate_free_compressor(c);
  CHECK(*out_len > 0);
  return out;
}

/* ------------------------------------------------------------------------------------ the fake send */

static int fk_send(void *ud, const char *path, const char *content_type, const char *content_encoding,
                   const struct iovec *iov, size_t n_iov, be_done_cb cb, void *cb_ud) {
  fx_t *fx = ud;
  if (fx->in_submit) fx->sends_in_submit++;
  if (fx->fail_sends > 0) {
    fx->fail_sends--;
    fx->n_failed_sends++;
    return fx->fail_status;
  }
  CHECK(fx->n_reqs < MAX_REQS);
  if (fx->n_reqs >= MAX_REQS) return UV_ENOMEM;
  fk_req_t *r = &fx->reqs[fx->n_reqs++];
  snprintf(r->path, sizeof r->path, "%s", path ? path : "(null)");
  snprintf(r->ct, sizeof r->ct, "%s", content_type ? content_type : "(null)");
  r->ce_null = content_encoding == NULL;
  snprintf(r->ce, sizeof r->ce, "%s", content_encoding ? content_encoding : "");
  size_t len = 0;
  for (size_t i = 0; i < n_iov; i++) len += iov[i].iov_len;
  r->body = malloc(len ? len : 1);
  r->len = 0;
  for (size_t i = 0; i < n_iov; i++) {
    if (iov[i].iov_len) memcpy(r->body + r->len, iov[i].iov_base, iov[i].iov_len);
    r->len += iov[i].iov_len;
  }
  r->n_iov = n_iov;
  r->cb = cb;
  r->cb_ud = cb_ud;
  return 0;
}

static void deliver(fx_t *fx, const fk_answer_t *a) {
  fk_req_t *r = &fx->reqs[a->req];
  CHECK(!r->answered);
  if (r->answered) return;
  r->answered = 1;
  fx->n_answered++;
  /* A transport failure has no body; an HTTP answer a (possibly empty) one. */
  if (a->status < 0) r->cb(r->cb_ud, a->status, NULL, 0, 0);
  else r->cb(r->cb_ud, a->status, a->body, a->len, a->retry_after);
}

static void on_answerer(uv_async_t *h) {
  fx_t *fx = h->data;
  int n = fx->n_answers;
  fk_answer_t *batch = malloc(sizeof *batch * (size_t)(n ? n : 1));
  memcpy(batch, fx->answers, sizeof *batch * (size_t)n);
  fx->n_answers = 0;
  for (int i = 0; i < n; i++) deliver(fx, &batch[i]);
  free(batch);
}

/* Queues an answer to request ri, delivered from the loop in the next turn(). */
static void answer(fx_t *fx, int ri, int status, const void *body, size_t len, uint32_t retry_after) {
  CHECK(ri >= 0 && ri < fx->n_reqs);
  CHECK(fx->n_answers < MAX_ANSWERS);
  CHECK(len <= sizeof fx->answers[0].body);
  if (ri < 0 || ri >= fx->n_reqs || fx->n_answers >= MAX_ANSWERS || len > sizeof fx->answers[0].body) return;
  CHECK(!fx->reqs[ri].queued);
  fx->reqs[ri].queued = 1;
  fk_answer_t *a = &fx->answers[fx->n_answers++];
  a->req = ri;
  a->status = status;
  if (len) memcpy(a->body, body, len);
  a->len = len;
  a->retry_after = retry_after;
}

static void answer_partial(fx_t *fx, int ri, int64_t rejected, const char *msg) {
  uint8_t body[256];
  size_t n = partial_body(rejected, msg, body, sizeof body);
  answer(fx, ri, 200, body, n, 0);
}

/* Answers request ri now, outside any loop callback (as be_pool_cancel does inside its call). */
static void answer_now(fx_t *fx, int ri, int status) {
  CHECK(!fx->reqs[ri].queued);
  fx->reqs[ri].queued = 1;
  fk_answer_t a = {.req = ri, .status = status};
  deliver(fx, &a);
}

static int unanswered(const fx_t *fx) {
  int n = 0;
  for (int i = 0; i < fx->n_reqs; i++) n += !fx->reqs[i].answered;
  return n;
}

/* One loop turn: the queued answers arrive in its I/O phase, the batcher's check handle runs after them. */
static void turn(fx_t *fx) {
  if (fx->n_answers) uv_async_send(&fx->answerer);
  uv_run(&fx->loop, UV_RUN_NOWAIT);
  CHECK_EQ_INT(fx->n_answers, 0);
  /* The request callback runs exactly once per backend request: answered, or failed by the send itself. */
  CHECK_EQ_INT(fx->n_reqcbs, fx->n_answered + fx->n_failed_sends);
  if (fx->b) CHECK_EQ_INT(bt_in_flight(fx->b), unanswered(fx));
}

static void walk_timers(uv_handle_t *h, void *arg) {
  if (h->type == UV_TIMER && uv_is_active(h)) (*(int *)arg)++;
}

static int active_timers(uv_loop_t *loop) {
  int n = 0;
  uv_walk(loop, walk_timers, &n);
  return n;
}

static void walk_idles(uv_handle_t *h, void *arg) {
  if (h->type == UV_IDLE && uv_is_active(h)) (*(int *)arg)++;
}

/* An idle handle left active with nothing waiting would make the loop spin instead of sleeping in poll. */
static int active_idles(uv_loop_t *loop) {
  int n = 0;
  uv_walk(loop, walk_idles, &n);
  return n;
}

/* ------------------------------------------------------------------------------------ parts */

static void on_request(void *ud, int sig, int status, size_t n_parts, uint64_t items, size_t bytes,
                       uint64_t start_ns, int final) {
  fx_t *fx = ud;
  CHECK(fx->n_reqcbs < MAX_REQS);
  if (fx->n_reqcbs >= MAX_REQS) return;
  fx->reqcbs[fx->n_reqcbs++] = (reqcb_t){sig, status, n_parts, items, bytes, start_ns, final};
}

static int submit(fx_t *fx, tpart_t *tp);

static void on_done(bt_part_t *p, const bt_outcome_t *o) {
  tpart_t *tp = (tpart_t *)p;
  fx_t *fx = tp->fx;
  tp->done_calls++;
  if (tp->done_calls > 1) {
    fprintf(stderr, "part %d: done ran %d times (status %d)\n", tp->idx, tp->done_calls, o->status);
    CHECK(tp->done_calls == 1);
  }
  if (fx->in_submit) fx->dones_in_submit++;
  fx->dones++;
  tp->out = *o;
  CHECK(o->message != NULL);
  snprintf(tp->msg, sizeof tp->msg, "%s", o->message ? o->message : "(null)");
  tp->out.message = tp->msg;
  tp->reqcbs_at_done = fx->n_reqcbs;
  if (tp->then_submit) {
    tp->then_rc = submit(fx, tp->then_submit);
    tp->then_submit = NULL;
  }
}

/* A part of signal sig with n_items items, its plain bytes in n_iov iovecs (split unevenly). */
static tpart_t *mk_part(fx_t *fx, int sig, int n_items, int n_iov) {
  CHECK(fx->n_parts < MAX_PARTS);
  CHECK(n_items >= 1 && n_items <= MAX_ITEMS && n_iov >= 1 && n_iov <= 4);
  tpart_t *tp = calloc(1, sizeof *tp);
  tp->fx = fx;
  tp->idx = fx->n_parts;
  fx->parts[fx->n_parts++] = tp;
  if (sig == OTLP_TRACES) tp->bytes = make_traces("p", tp->idx, n_items, &tp->len);
  else if (sig == OTLP_LOGS) tp->bytes = make_logs(tp->idx, n_items, &tp->len);
  else tp->bytes = make_metrics(tp->idx, n_items, &tp->len);
  size_t off = 0;
  for (int i = 0; i < n_iov; i++) {
    size_t left = tp->len - off, take = i == n_iov - 1 ? left : left / 3 + 1;
    tp->iov[i] = (struct iovec){tp->bytes + off, take};
    off += take;
  }
  tp->p.sig = sig;
  tp->p.iov = tp->iov;
  tp->p.n_iov = (size_t)n_iov;
  tp->p.len = tp->len;
  tp->p.items = (uint64_t)n_items;
  tp->p.done = on_done;
  return tp;
}

/* Gives tp a pass-through alternative: bytes (owned by tp from now on) in encoding (NULL = identity). */
static void set_alone(tpart_t *tp, uint8_t *bytes, size_t len, const char *encoding) {
  tp->alone = bytes;
  tp->alone_len = len;
  tp->alone_iov[0] = (struct iovec){bytes, len};
  tp->p.alone_iov = tp->alone_iov;
  tp->p.n_alone_iov = 1;
  tp->p.alone_encoding = encoding;
}

static int submit(fx_t *fx, tpart_t *tp) {
  int outer = fx->in_submit;
  int dones = fx->dones;
  fx->in_submit = 1;
  int r = bt_submit(fx->b, &tp->p);
  fx->in_submit = outer;
  tp->accepted = r == 0;
  CHECK_EQ_INT(fx->dones, dones); /* never a callback inside bt_submit */
  return r;
}

static fx_t *fx_new(const bt_config_t *cfg) {
  fx_t *fx = calloc(1, sizeof *fx);
  CHECK_EQ_INT(uv_loop_init(&fx->loop), 0);
  CHECK_EQ_INT(uv_async_init(&fx->loop, &fx->answerer, on_answerer), 0);
  fx->answerer.data = fx;
  CHECK_EQ_INT(bt_group_create(&fx->loop, &fx->g), 0);
  fx->b = bt_create(fx->g, cfg, fk_send, fx, on_request, fx);
  CHECK(fx->b != NULL);
  return fx;
}

static void walk_print(uv_handle_t *h, void *arg) {
  fprintf(stderr, "left on the loop: %s handle, active %d, closing %d\n", uv_handle_type_name(h->type),
          uv_is_active(h), uv_is_closing(h));
}

/* Every request must have been answered and every accepted part's done run exactly once. */
static void fx_free(fx_t *fx) {
  CHECK_EQ_INT(fx->sends_in_submit, 0);
  CHECK_EQ_INT(fx->dones_in_submit, 0);
  for (int i = 0; i < fx->n_reqs; i++)
    if (!fx->reqs[i].answered) {
      fprintf(stderr, "request %d (%s) never answered by the test\n", i, fx->reqs[i].path);
      CHECK(fx->reqs[i].answered);
      fx->reqs[i].queued = 0;
      answer_now(fx, i, UV_ECANCELED);
    }
  if (fx->b) {
    uint64_t bytes = 0;
    CHECK_EQ_INT(bt_waiting(fx->b, &bytes), 0);
    CHECK_EQ_INT(bytes, 0);
    CHECK_EQ_INT(bt_in_flight(fx->b), 0);
    bt_destroy(fx->b);
  }
  for (int i = 0; i < fx->n_parts; i++) {
    tpart_t *tp = fx->parts[i];
    int want = tp->accepted ? 1 : 0;
    if (tp->done_calls != want) fprintf(stderr, "part %d (accepted %d): done ran %d times\n", i, tp->accepted,
                                        tp->done_calls);
    CHECK_EQ_INT(tp->done_calls, want);
  }
  bt_group_destroy(fx->g);
  uv_close((uv_handle_t *)&fx->answerer, NULL);
  uv_run(&fx->loop, UV_RUN_DEFAULT);
  int rc = uv_loop_close(&fx->loop);
  if (rc != 0) uv_walk(&fx->loop, walk_print, NULL);
  CHECK_EQ_INT(rc, 0);
  for (int i = 0; i < fx->n_reqs; i++) free(fx->reqs[i].body);
  for (int i = 0; i < fx->n_parts; i++) {
    free(fx->parts[i]->bytes);
    free(fx->parts[i]->alone);
    free(fx->parts[i]);
  }
  free(fx);
}

/* ------------------------------------------------------------------------------------ what was sent */

static int is_plain(const fk_req_t *r) { return r->ce_null || r->ce[0] == 0 || strcmp(r->ce, "identity") == 0; }
static int is_gzip(const fk_req_t *r) { return !r->ce_null && strcmp(r->ce, "gzip") == 0; }

/* The parts whose plain bytes, concatenated in order, are exactly the request's plain (gunzipped) body, into
 * out; -1 when it is no such concatenation. A request that is exactly one part's alternative is that part with
 * *alone set. */
static int req_parts(const fx_t *fx, const fk_req_t *r, int *out, int cap, int *alone) {
  *alone = 0;
  for (int j = 0; j < fx->n_parts; j++) {
    const tpart_t *tp = fx->parts[j];
    if (tp->alone && tp->alone_len == r->len && memcmp(tp->alone, r->body, r->len) == 0) {
      *alone = 1;
      out[0] = j;
      return 1;
    }
  }
  const uint8_t *plain = r->body;
  size_t plen = r->len;
  uint8_t *tmp = NULL;
  if (is_gzip(r)) {
    if (otlp_gunzip(r->body, r->len, 64u << 20, &tmp, &plen) != OTLP_OK) return -1;
    plain = tmp;
  } else if (!is_plain(r)) {
    return -1;
  }
  int n = 0;
  size_t off = 0;
  while (off < plen) {
    int found = -1;
    for (int j = 0; j < fx->n_parts && found < 0; j++) {
      const tpart_t *tp = fx->parts[j];
      if (tp->len <= plen - off && memcmp(tp->bytes, plain + off, tp->len) == 0) found = j;
    }
    if (found < 0 || n >= cap) {
      n = -1;
      break;
    }
    out[n++] = found;
    off += fx->parts[found]->len;
  }
  free(tmp);
  return n;
}

/* "0,1,2": the parts the request carries (plain or gzipped), "a3": part 3's alternative, "?" otherwise. */
static const char *req_desc(fx_t *fx, int ri) {
  CHECK(ri >= 0 && ri < fx->n_reqs);
  if (ri < 0 || ri >= fx->n_reqs) return "(no such request)";
  fk_req_t *r = &fx->reqs[ri];
  int idx[MAX_PARTS], alone;
  int n = req_parts(fx, r, idx, MAX_PARTS, &alone);
  if (n < 0) {
    snprintf(r->desc, sizeof r->desc, "?");
    return r->desc;
  }
  size_t o = 0;
  r->desc[0] = 0;
  for (int i = 0; i < n && o < sizeof r->desc; i++)
    o += (size_t)snprintf(r->desc + o, sizeof r->desc - o, "%s%s%d", i ? "," : "", alone ? "a" : "", idx[i]);
  return r->desc;
}

/* Index of the request whose description is desc, or -1. */
static int find_req(fx_t *fx, int from, const char *desc) {
  for (int i = from; i < fx->n_reqs; i++)
    if (strcmp(req_desc(fx, i), desc) == 0) return i;
  return -1;
}

/* The request decodes with protobuf-c as the merged ExportTraceServiceRequest: the spans of parts idx, in order. */
static void check_merged_traces(fx_t *fx, int ri, const int *idx, size_t n) {
  const fk_req_t *r = &fx->reqs[ri];
  const uint8_t *plain = r->body;
  size_t plen = r->len;
  uint8_t *tmp = NULL;
  if (is_gzip(r)) {
    CHECK_EQ_INT(otlp_gunzip(r->body, r->len, 64u << 20, &tmp, &plen), OTLP_OK);
    plain = tmp;
  }
  TraceRequest *m = opentelemetry__proto__collector__trace__v1__export_trace_service_request__unpack(NULL, plen, plain);
  CHECK(m != NULL);
  char got[8192] = "", want[8192] = "";
  size_t go = 0, wo = 0;
  if (m) {
    CHECK_EQ_INT(m->n_resource_spans, n);
    for (size_t i = 0; i < m->n_resource_spans; i++)
      for (size_t j = 0; j < m->resource_spans[i]->n_scope_spans; j++) {
        const ScopeSpans *ss = m->resource_spans[i]->scope_spans[j];
        for (size_t k = 0; k < ss->n_spans && go < sizeof got; k++)
          go += (size_t)snprintf(got + go, sizeof got - go, "%s,", ss->spans[k]->name);
      }
    opentelemetry__proto__collector__trace__v1__export_trace_service_request__free_unpacked(m, NULL);
  }
  for (size_t i = 0; i < n; i++) {
    const tpart_t *tp = fx->parts[idx[i]];
    for (uint64_t k = 0; k < tp->p.items && wo < sizeof want; k++)
      wo += (size_t)snprintf(want + wo, sizeof want - wo, "p%03d-s%03d,", tp->idx, (int)k);
  }
  CHECK_EQ_STR(got, want);
  free(tmp);
}

static const char *sig_path(int sig) { return otlp_signal((otlp_signal_t)sig)->path; }

/* Every request: a concatenation of parts of its path's signal, at most max_parts (1 when 0) of them, at most
 * max_bytes plain bytes unless it carries one part. */
static void check_requests(fx_t *fx, uint32_t max_parts, size_t max_bytes) {
  uint32_t cap = max_parts ? max_parts : 1;
  for (int i = 0; i < fx->n_reqs; i++) {
    fk_req_t *r = &fx->reqs[i];
    int idx[MAX_PARTS], alone;
    int n = req_parts(fx, r, idx, MAX_PARTS, &alone);
    if (n <= 0) fprintf(stderr, "request %d: not a concatenation of parts (%zu bytes, ce '%s')\n", i, r->len, r->ce);
    CHECK(n > 0);
    CHECK_EQ_STR(r->ct, "application/x-protobuf");
    size_t plain = 0;
    for (int k = 0; k < n; k++) {
      CHECK_EQ_STR(r->path, sig_path(fx->parts[idx[k]]->p.sig));
      plain += fx->parts[idx[k]]->len;
    }
    if (n > (int)cap || (n > 1 && plain > max_bytes))
      fprintf(stderr, "request %d: %d parts, %zu bytes (max_parts %u, max_bytes %zu): %s\n", i, n, plain, max_parts,
              max_bytes, req_desc(fx, i));
    CHECK(n <= (int)cap);
    CHECK(n == 1 || plain <= max_bytes);
  }
}

#define CHECK_OUT(tp, st, rej, m)               \
  do {                                          \
    CHECK_EQ_INT((tp)->done_calls, 1);          \
    CHECK_EQ_INT((tp)->out.status, (st));       \
    CHECK_EQ_INT((tp)->out.rejected, (rej));    \
    CHECK_EQ_STR((tp)->msg, (m));               \
  } while (0)

#define CHECK_REQCB(q, sg, st, np, it, fin)     \
  do {                                          \
    CHECK_EQ_INT((q)->sig, (sg));               \
    CHECK_EQ_INT((q)->status, (st));            \
    CHECK_EQ_INT((q)->n_parts, (np));           \
    CHECK_EQ_INT((q)->items, (it));             \
    CHECK_EQ_INT((q)->final, (fin));            \
  } while (0)

static bt_config_t config(uint32_t max_in_flight, size_t max_bytes, uint32_t max_parts, int compress) {
  bt_config_t c = {max_in_flight, max_bytes, max_parts, compress, 0, 0, 0};
  return c;
}

/* ------------------------------------------------------------------------------------ tests */

TEST(idle_part_leaves_in_its_turn_without_timer) {
  bt_config_t cfg = config(2, 1 << 20, 16, 0);
  fx_t *fx = fx_new(&cfg);
  tpart_t *p0 = mk_part(fx, OTLP_TRACES, 3, 2);
  CHECK_EQ_INT(submit(fx, p0), 0);
  CHECK_EQ_INT(fx->n_reqs, 0); /* at the end of the turn, not inside bt_submit */
  uint64_t bytes = 0;
  CHECK_EQ_INT(bt_waiting(fx->b, &bytes), 1);
  CHECK_EQ_INT(bytes, p0->len);
  CHECK_EQ_INT(bt_in_flight(fx->b), 0);
  uint64_t t0 = uv_hrtime();
  turn(fx);
  CHECK_EQ_INT(fx->n_reqs, 1);
  CHECK_EQ_INT(active_timers(&fx->loop), 0);
  fk_req_t *r = &fx->reqs[0];
  CHECK_EQ_STR(r->path, "/v1/traces");
  CHECK_EQ_STR(r->ct, "application/x-protobuf");
  CHECK(is_plain(r));
  CHECK_EQ_STR(req_desc(fx, 0), "0");
  CHECK_EQ_INT(r->n_iov, 2);
  check_merged_traces(fx, 0, (int[]){0}, 1);
  bytes = 1;
  CHECK_EQ_INT(bt_waiting(fx->b, &bytes), 0);
  CHECK_EQ_INT(bytes, 0);
  CHECK_EQ_INT(bt_in_flight(fx->b), 1);
  CHECK_EQ_INT(fx->dones, 0);
  CHECK_EQ_INT(fx->n_reqcbs, 0);

  answer(fx, 0, 200, NULL, 0, 0);
  turn(fx);
  CHECK_OUT(p0, 200, 0, "");
  CHECK_EQ_INT(p0->out.retry_after_s, 0);
  CHECK_EQ_INT(fx->n_reqcbs, 1);
  CHECK_REQCB(&fx->reqcbs[0], OTLP_TRACES, 200, 1, 3, 1);
  CHECK_EQ_INT(fx->reqcbs[0].bytes, p0->len);
  CHECK(fx->reqcbs[0].start_ns >= t0 && fx->reqcbs[0].start_ns <= uv_hrtime());
  CHECK_EQ_INT(p0->reqcbs_at_done, 1); /* the request callback before the part's */
  CHECK_EQ_INT(bt_in_flight(fx->b), 0);
  CHECK_EQ_INT(active_timers(&fx->loop), 0);
  turn(fx);
  CHECK_EQ_INT(fx->n_reqs, 1);
  CHECK_EQ_INT(active_timers(&fx->loop), 0);
  CHECK_EQ_INT(active_idles(&fx->loop), 0);
  fx_free(fx);
}

TEST(parts_of_one_turn_leave_as_one_request) {
  bt_config_t cfg = config(4, 1 << 20, 16, 0);
  fx_t *fx = fx_new(&cfg);
  tpart_t *p[3] = {mk_part(fx, OTLP_TRACES, 2, 1), mk_part(fx, OTLP_TRACES, 1, 2), mk_part(fx, OTLP_TRACES, 3, 3)};
  for (int i = 0; i < 3; i++) CHECK_EQ_INT(submit(fx, p[i]), 0);
  uint64_t bytes = 0;
  CHECK_EQ_INT(bt_waiting(fx->b, &bytes), 3);
  CHECK_EQ_INT(bytes, p[0]->len + p[1]->len + p[2]->len);
  turn(fx);
  CHECK_EQ_INT(fx->n_reqs, 1);
  CHECK_EQ_STR(req_desc(fx, 0), "0,1,2");
  CHECK(is_plain(&fx->reqs[0]));
  CHECK_EQ_INT(fx->reqs[0].n_iov, 6); /* the parts' own iovecs, nothing copied */
  check_merged_traces(fx, 0, (int[]){0, 1, 2}, 3);
  CHECK_EQ_INT(bt_waiting(fx->b, &bytes), 0);
  CHECK_EQ_INT(bt_in_flight(fx->b), 1);
  answer(fx, 0, 200, NULL, 0, 0);
  turn(fx);
  for (int i = 0; i < 3; i++) {
    CHECK_OUT(p[i], 200, 0, "");
    CHECK_EQ_INT(p[i]->reqcbs_at_done, 1);
  }
  CHECK_EQ_INT(fx->n_reqcbs, 1);
  CHECK_REQCB(&fx->reqcbs[0], OTLP_TRACES, 200, 3, 6, 1);
  CHECK_EQ_INT(fx->reqcbs[0].bytes, p[0]->len + p[1]->len + p[2]->len);
  CHECK_EQ_INT(fx->n_reqs, 1);
  fx_free(fx);
}

TEST(busy_parts_wait_and_leave_as_one_request_when_a_slot_frees) {
  bt_config_t cfg = config(2, 1 << 20, 16, 0);
  fx_t *fx = fx_new(&cfg);
  tpart_t *p[5];
  for (int i = 0; i < 5; i++) p[i] = mk_part(fx, OTLP_TRACES, i + 1, 1 + i % 3);
  CHECK_EQ_INT(submit(fx, p[0]), 0);
  turn(fx);
  CHECK_EQ_INT(submit(fx, p[1]), 0);
  turn(fx);
  CHECK_EQ_INT(fx->n_reqs, 2);
  CHECK_EQ_STR(req_desc(fx, 0), "0");
  CHECK_EQ_STR(req_desc(fx, 1), "1");
  CHECK_EQ_INT(bt_in_flight(fx->b), 2);
  for (int i = 2; i < 5; i++) {
    CHECK_EQ_INT(submit(fx, p[i]), 0);
    turn(fx);
    turn(fx);
  }
  CHECK_EQ_INT(fx->n_reqs, 2); /* every slot busy: they wait */
  uint64_t bytes = 0;
  CHECK_EQ_INT(bt_waiting(fx->b, &bytes), 3);
  CHECK_EQ_INT(bytes, p[2]->len + p[3]->len + p[4]->len);
  CHECK_EQ_INT(bt_unqueued_bytes(fx->b), bytes); /* none marked queued */
  CHECK_EQ_INT(bt_in_flight(fx->b), 2);
  CHECK_EQ_INT(fx->dones, 0);
  CHECK_EQ_INT(active_timers(&fx->loop), 0);

  answer(fx, 0, 200, NULL, 0, 0);
  turn(fx); /* the answer frees a slot: what waited leaves in this turn, together */
  CHECK_OUT(p[0], 200, 0, "");
  CHECK_EQ_INT(fx->n_reqs, 3);
  CHECK_EQ_STR(req_desc(fx, 2), "2,3,4");
  CHECK_EQ_INT(fx->reqs[2].n_iov, p[2]->p.n_iov + p[3]->p.n_iov + p[4]->p.n_iov);
  check_merged_traces(fx, 2, (int[]){2, 3, 4}, 3);
  CHECK_EQ_INT(bt_waiting(fx->b, &bytes), 0);
  CHECK_EQ_INT(bytes, 0);
  CHECK_EQ_INT(bt_in_flight(fx->b), 2);
  CHECK_EQ_INT(p[2]->done_calls + p[3]->done_calls + p[4]->done_calls, 0);

  answer(fx, 1, 200, NULL, 0, 0);
  answer(fx, 2, 200, NULL, 0, 0);
  turn(fx);
  for (int i = 0; i < 5; i++) CHECK_OUT(p[i], 200, 0, "");
  CHECK_EQ_INT(fx->n_reqcbs, 3);
  CHECK_REQCB(&fx->reqcbs[2], OTLP_TRACES, 200, 3, 3 + 4 + 5, 1);
  CHECK_EQ_INT(bt_in_flight(fx->b), 0);
  CHECK_EQ_INT(fx->n_reqs, 3);
  fx_free(fx);
}

TEST(behind_a_request_in_flight_parts_wait_until_enough_open_another) {
  /* open_parts 3: with one request in flight, 1 or 2 waiting parts wait for its answer; the third opens a second
   * request (all three in it); open_bytes opens one for fewer, larger parts */
  bt_config_t cfg = config(4, 1 << 20, 16, 0);
  cfg.open_parts = 3;
  cfg.open_bytes = 1 << 20;
  fx_t *fx = fx_new(&cfg);
  tpart_t *p[7];
  for (int i = 0; i < 7; i++) p[i] = mk_part(fx, OTLP_TRACES, 1, 1);
  CHECK_EQ_INT(submit(fx, p[0]), 0);
  turn(fx);
  CHECK_EQ_INT(fx->n_reqs, 1); /* nothing in flight: at once */
  p[1]->p.queued = 1; /* counted by its owner (a retry): not in bt_unqueued_bytes */
  CHECK_EQ_INT(submit(fx, p[1]), 0);
  turn(fx);
  CHECK_EQ_INT(submit(fx, p[2]), 0);
  turn(fx);
  CHECK_EQ_INT(fx->n_reqs, 1); /* two wait behind the one in flight */
  CHECK_EQ_INT(bt_waiting(fx->b, NULL), 2);
  CHECK_EQ_INT(bt_unqueued_bytes(fx->b), p[2]->len);
  CHECK_EQ_INT(active_timers(&fx->loop), 0);
  CHECK_EQ_INT(submit(fx, p[3]), 0);
  turn(fx);
  CHECK_EQ_INT(fx->n_reqs, 2); /* three: another request */
  CHECK_EQ_STR(req_desc(fx, 1), "1,2,3");
  CHECK_EQ_INT(bt_in_flight(fx->b), 2);
  CHECK_EQ_INT(submit(fx, p[4]), 0);
  turn(fx);
  CHECK_EQ_INT(fx->n_reqs, 2);
  answer(fx, 0, 200, NULL, 0, 0);
  turn(fx); /* an answer: what waited leaves (one still in flight, but a slot is its own) */
  CHECK_EQ_INT(fx->n_reqs, 2);
  CHECK_EQ_INT(bt_waiting(fx->b, NULL), 1);
  answer(fx, 1, 200, NULL, 0, 0);
  turn(fx); /* nothing in flight: the waiting part leaves */
  CHECK_EQ_INT(fx->n_reqs, 3);
  CHECK_EQ_STR(req_desc(fx, 2), "4");
  /* bytes: a part of open_bytes or more opens another request at once */
  bt_config_t big = cfg;
  big.open_bytes = p[5]->len;
  bt_set_config(fx->b, &big);
  CHECK_EQ_INT(submit(fx, p[5]), 0);
  turn(fx);
  CHECK_EQ_INT(fx->n_reqs, 4);
  CHECK_EQ_STR(req_desc(fx, 3), "5");
  /* age: behind requests in flight older than open_after_ns (1 ns: all of them), a part leaves at once */
  bt_config_t aged = cfg;
  aged.open_after_ns = 1;
  bt_set_config(fx->b, &aged);
  CHECK_EQ_INT(submit(fx, p[6]), 0);
  turn(fx);
  CHECK_EQ_INT(fx->n_reqs, 5);
  CHECK_EQ_STR(req_desc(fx, 4), "6");
  answer(fx, 2, 200, NULL, 0, 0);
  answer(fx, 3, 200, NULL, 0, 0);
  answer(fx, 4, 200, NULL, 0, 0);
  turn(fx);
  for (int i = 0; i < 7; i++) CHECK_OUT(p[i], 200, 0, "");
  CHECK_EQ_INT(bt_in_flight(fx->b), 0);
  fx_free(fx);
}

TEST(max_parts_limits_a_batch) {
  /* one slot: batches of at most 3 leave one at a time, in order */
  bt_config_t cfg = config(1, 1 << 20, 3, 0);
  fx_t *fx = fx_new(&cfg);
  tpart_t *p[8];
  for (int i = 0; i < 8; i++) p[i] = mk_part(fx, OTLP_TRACES, 1, 1);
  CHECK_EQ_INT(submit(fx, p[0]), 0);
  turn(fx);
  for (int i = 1; i < 8; i++) CHECK_EQ_INT(submit(fx, p[i]), 0);
  turn(fx);
  CHECK_EQ_INT(fx->n_reqs, 1);
  const char *want[] = {"0", "1,2,3", "4,5,6", "7"};
  for (int k = 1; k < 4; k++) {
    answer(fx, k - 1, 200, NULL, 0, 0);
    turn(fx);
    CHECK_EQ_INT(fx->n_reqs, k + 1);
    CHECK_EQ_STR(req_desc(fx, k), want[k]);
  }
  uint64_t bytes;
  CHECK_EQ_INT(bt_waiting(fx->b, &bytes), 0);
  answer(fx, 3, 200, NULL, 0, 0);
  turn(fx);
  for (int i = 0; i < 8; i++) CHECK_OUT(p[i], 200, 0, "");
  CHECK_EQ_INT(fx->reqcbs[1].n_parts, 3);
  CHECK_EQ_INT(fx->reqcbs[3].n_parts, 1);
  check_requests(fx, 3, 1 << 20);
  fx_free(fx);

  /* free slots: 7 parts of one turn leave in that turn as 3 + 3 + 1 */
  cfg = config(3, 1 << 20, 3, 0);
  fx = fx_new(&cfg);
  for (int i = 0; i < 7; i++) {
    p[i] = mk_part(fx, OTLP_TRACES, 2, 2);
    CHECK_EQ_INT(submit(fx, p[i]), 0);
  }
  turn(fx);
  CHECK_EQ_INT(fx->n_reqs, 3);
  CHECK_EQ_STR(req_desc(fx, 0), "0,1,2");
  CHECK_EQ_STR(req_desc(fx, 1), "3,4,5");
  CHECK_EQ_STR(req_desc(fx, 2), "6");
  for (int i = 0; i < 3; i++) answer(fx, i, 200, NULL, 0, 0);
  turn(fx);
  for (int i = 0; i < 7; i++) CHECK_OUT(p[i], 200, 0, "");
  check_requests(fx, 3, 1 << 20);
  fx_free(fx);
}

TEST(max_bytes_limits_a_batch_and_a_larger_part_goes_alone) {
  bt_config_t cfg = config(8, 1 << 20, 100, 0);
  fx_t *fx = fx_new(&cfg);
  tpart_t *p[8];
  for (int i = 0; i < 5; i++) p[i] = mk_part(fx, OTLP_TRACES, 2, 1);
  size_t L = p[0]->len;
  for (int i = 1; i < 5; i++) CHECK_EQ_INT(p[i]->len, L); /* the test's own premise */
  cfg.max_bytes = 2 * L; /* "up to max_bytes": two parts fit exactly, a third does not */
  bt_set_config(fx->b, &cfg);
  for (int i = 0; i < 5; i++) CHECK_EQ_INT(submit(fx, p[i]), 0);
  turn(fx);
  CHECK_EQ_INT(fx->n_reqs, 3);
  CHECK_EQ_STR(req_desc(fx, 0), "0,1");
  CHECK_EQ_STR(req_desc(fx, 1), "2,3");
  CHECK_EQ_STR(req_desc(fx, 2), "4");
  for (int i = 0; i < 3; i++) answer(fx, i, 200, NULL, 0, 0);
  turn(fx);

  /* small, big (more than max_bytes alone), small */
  p[5] = mk_part(fx, OTLP_TRACES, 2, 1);
  p[6] = mk_part(fx, OTLP_TRACES, 40, 3);
  p[7] = mk_part(fx, OTLP_TRACES, 2, 1);
  CHECK(p[6]->len > cfg.max_bytes);
  for (int i = 5; i < 8; i++) CHECK_EQ_INT(submit(fx, p[i]), 0);
  turn(fx);
  CHECK(find_req(fx, 3, "6") >= 0); /* the big one alone */
  int n5 = -1, n7 = -1;
  for (int i = 3; i < fx->n_reqs; i++) {
    const char *d = req_desc(fx, i);
    if (strcmp(d, "5") == 0 || strcmp(d, "5,7") == 0) n5 = i;
    if (strcmp(d, "7") == 0 || strcmp(d, "5,7") == 0) n7 = i;
  }
  CHECK(n5 >= 0 && n7 >= 0 && n5 <= n7); /* both sent in this turn, in order */
  int sent = fx->n_reqs;
  CHECK(sent == 5 || sent == 6);
  for (int i = 3; i < sent; i++) answer(fx, i, 200, NULL, 0, 0);
  turn(fx);
  for (int i = 0; i < 8; i++) CHECK_OUT(p[i], 200, 0, "");
  check_requests(fx, 100, cfg.max_bytes);
  fx_free(fx);
}

TEST(max_parts_one_or_zero_never_coalesces) {
  for (uint32_t mp = 0; mp < 2; mp++) {
    bt_config_t cfg = config(1, 1 << 20, mp, 0);
    fx_t *fx = fx_new(&cfg);
    tpart_t *p[4];
    for (int i = 0; i < 4; i++) p[i] = mk_part(fx, OTLP_TRACES, 1, 1);
    CHECK_EQ_INT(submit(fx, p[0]), 0);
    turn(fx);
    for (int i = 1; i < 4; i++) CHECK_EQ_INT(submit(fx, p[i]), 0);
    turn(fx);
    for (int k = 0; k < 4; k++) {
      CHECK_EQ_INT(fx->n_reqs, k + 1);
      char want[8];
      snprintf(want, sizeof want, "%d", k);
      CHECK_EQ_STR(req_desc(fx, k), want);
      answer(fx, k, 200, NULL, 0, 0);
      turn(fx);
    }
    CHECK_EQ_INT(fx->n_reqs, 4);
    for (int i = 0; i < 4; i++) CHECK_OUT(p[i], 200, 0, "");
    fx_free(fx);

    /* free slots: one request each, in the same turn */
    cfg = config(4, 1 << 20, mp, 0);
    fx = fx_new(&cfg);
    for (int i = 0; i < 3; i++) {
      p[i] = mk_part(fx, OTLP_TRACES, 1, 1);
      CHECK_EQ_INT(submit(fx, p[i]), 0);
    }
    turn(fx);
    CHECK_EQ_INT(fx->n_reqs, 3);
    for (int i = 0; i < 3; i++) {
      char want[8];
      snprintf(want, sizeof want, "%d", i);
      CHECK_EQ_STR(req_desc(fx, i), want);
      answer(fx, i, 200, NULL, 0, 0);
    }
    turn(fx);
    for (int i = 0; i < 3; i++) CHECK_OUT(p[i], 200, 0, "");
    fx_free(fx);
  }
}

TEST(signals_never_share_a_request) {
  bt_config_t cfg = config(8, 1 << 20, 16, 0);
  fx_t *fx = fx_new(&cfg);
  int sigs[6] = {OTLP_TRACES, OTLP_LOGS, OTLP_TRACES, OTLP_METRICS, OTLP_LOGS, OTLP_METRICS};
  tpart_t *p[6];
  for (int i = 0; i < 6; i++) {
    p[i] = mk_part(fx, sigs[i], i + 1, 1);
    CHECK_EQ_INT(submit(fx, p[i]), 0);
  }
  turn(fx);
  CHECK_EQ_INT(fx->n_reqs, 3);
  int t = find_req(fx, 0, "0,2"), l = find_req(fx, 0, "1,4"), m = find_req(fx, 0, "3,5");
  CHECK(t >= 0 && l >= 0 && m >= 0);
  if (t >= 0 && l >= 0 && m >= 0) {
    CHECK_EQ_STR(fx->reqs[t].path, "/v1/traces");
    CHECK_EQ_STR(fx->reqs[l].path, "/v1/logs");
    CHECK_EQ_STR(fx->reqs[m].path, "/v1/metrics");
    check_merged_traces(fx, t, (int[]){0, 2}, 2);
    uint64_t items = 0, res = 0;
    CHECK_EQ_INT(otlp_count_items(OTLP_LOGS, fx->reqs[l].body, fx->reqs[l].len, &items, &res), OTLP_OK);
    CHECK_EQ_INT(items, 2 + 5);
    CHECK_EQ_INT(res, 2);
    CHECK_EQ_INT(otlp_count_items(OTLP_METRICS, fx->reqs[m].body, fx->reqs[m].len, &items, &res), OTLP_OK);
    CHECK_EQ_INT(items, 4 + 6);
    CHECK_EQ_INT(res, 2);
  }
  for (int i = 0; i < 3; i++) answer(fx, i, 200, NULL, 0, 0);
  turn(fx);
  for (int i = 0; i < 6; i++) CHECK_OUT(p[i], 200, 0, "");
  CHECK_EQ_INT(fx->n_reqcbs, 3);
  for (int i = 0; i < 3; i++) {
    /* each request callback names its request's signal and counts */
    const reqcb_t *q = &fx->reqcbs[i];
    CHECK_EQ_INT(q->n_parts, 2);
    CHECK_EQ_INT(q->items, q->sig == OTLP_TRACES ? 1 + 3 : q->sig == OTLP_LOGS ? 2 + 5 : 4 + 6);
  }
  check_requests(fx, 16, 1 << 20);
  fx_free(fx);

  /* one slot shared by the signals: what waits leaves one signal per request */
  cfg = config(1, 1 << 20, 16, 0);
  fx = fx_new(&cfg);
  int sigs2[4] = {OTLP_TRACES, OTLP_LOGS, OTLP_TRACES, OTLP_LOGS};
  for (int i = 0; i < 4; i++) p[i] = mk_part(fx, sigs2[i], 1, 1);
  CHECK_EQ_INT(submit(fx, p[0]), 0);
  turn(fx);
  for (int i = 1; i < 4; i++) CHECK_EQ_INT(submit(fx, p[i]), 0);
  turn(fx);
  for (int k = 0; k < 3; k++) {
    CHECK_EQ_INT(fx->n_reqs, k + 1);
    answer(fx, k, 200, NULL, 0, 0);
    turn(fx);
  }
  CHECK_EQ_INT(fx->n_reqs, 3);
  CHECK(find_req(fx, 1, "1,3") >= 0);
  CHECK(find_req(fx, 1, "2") >= 0);
  for (int i = 0; i < 4; i++) CHECK_OUT(p[i], 200, 0, "");
  check_requests(fx, 16, 1 << 20);
  fx_free(fx);
}

TEST(success_and_partial_warning_reach_every_part) {
  bt_config_t cfg = config(4, 1 << 20, 16, 0);
  fx_t *fx = fx_new(&cfg);
  tpart_t *p[6];
  for (int i = 0; i < 3; i++) {
    p[i] = mk_part(fx, OTLP_TRACES, 2, 1);
    CHECK_EQ_INT(submit(fx, p[i]), 0);
  }
  turn(fx);
  answer(fx, 0, 202, NULL, 0, 0); /* any 2xx */
  turn(fx);
  for (int i = 0; i < 3; i++) CHECK_OUT(p[i], 202, 0, "");
  CHECK_REQCB(&fx->reqcbs[0], OTLP_TRACES, 202, 3, 6, 1);

  /* a partial_success without rejections (a warning): to every part, nothing re-sent */
  for (int i = 3; i < 6; i++) {
    p[i] = mk_part(fx, OTLP_TRACES, 2, 1);
    CHECK_EQ_INT(submit(fx, p[i]), 0);
  }
  turn(fx);
  CHECK_EQ_INT(fx->n_reqs, 2);
  CHECK_EQ_STR(req_desc(fx, 1), "3,4,5");
  answer_partial(fx, 1, 0, "deprecated attribute");
  turn(fx);
  turn(fx);
  CHECK_EQ_INT(fx->n_reqs, 2);
  for (int i = 3; i < 6; i++) CHECK_OUT(p[i], 200, 0, "deprecated attribute");
  CHECK_REQCB(&fx->reqcbs[1], OTLP_TRACES, 200, 3, 6, 1);
  fx_free(fx);
}

TEST(partial_rejection_of_a_batch_resends_each_part_alone) {
  bt_config_t cfg = config(4, 1 << 20, 16, 0);
  fx_t *fx = fx_new(&cfg);
  tpart_t *p[3] = {mk_part(fx, OTLP_TRACES, 2, 1), mk_part(fx, OTLP_TRACES, 3, 2), mk_part(fx, OTLP_TRACES, 1, 1)};
  for (int i = 0; i < 3; i++) CHECK_EQ_INT(submit(fx, p[i]), 0);
  turn(fx);
  CHECK_EQ_STR(req_desc(fx, 0), "0,1,2");
  answer_partial(fx, 0, 2, "batch rejects");
  turn(fx);
  CHECK_EQ_INT(fx->dones, 0); /* nobody gets the batch's count */
  CHECK_EQ_INT(fx->n_reqcbs, 1);
  CHECK_REQCB(&fx->reqcbs[0], OTLP_TRACES, 200, 3, 6, 0);
  CHECK_EQ_INT(fx->n_reqs, 4); /* re-sent alone, in this turn (free slots) */
  int r0 = find_req(fx, 1, "0"), r1 = find_req(fx, 1, "1"), r2 = find_req(fx, 1, "2");
  CHECK(r0 > 0 && r1 > 0 && r2 > 0);
  if (r0 > 0 && r1 > 0 && r2 > 0) {
    answer_partial(fx, r0, 1, "r0");
    answer_partial(fx, r1, 3, "r1");
    answer(fx, r2, 200, NULL, 0, 0);
    turn(fx);
  }
  CHECK_OUT(p[0], 200, 1, "r0");
  CHECK_OUT(p[1], 200, 3, "r1");
  CHECK_OUT(p[2], 200, 0, "");
  CHECK_EQ_INT(fx->n_reqcbs, 4);
  for (int i = 1; i < 4; i++) {
    CHECK_EQ_INT(fx->reqcbs[i].n_parts, 1);
    CHECK_EQ_INT(fx->reqcbs[i].final, 1);
    CHECK_EQ_INT(fx->reqcbs[i].status, 200);
  }
  CHECK_EQ_INT(fx->n_reqs, 4);

  /* a single part's rejection is its own: no re-send */
  tpart_t *q = mk_part(fx, OTLP_TRACES, 5, 1);
  CHECK_EQ_INT(submit(fx, q), 0);
  turn(fx);
  CHECK_EQ_INT(fx->n_reqs, 5);
  answer_partial(fx, 4, 5, "all bad");
  turn(fx);
  turn(fx);
  CHECK_EQ_INT(fx->n_reqs, 5);
  CHECK_OUT(q, 200, 5, "all bad");
  CHECK_REQCB(&fx->reqcbs[4], OTLP_TRACES, 200, 1, 5, 1);
  fx_free(fx);
}

TEST(bad_request_on_a_batch_resends_member_by_member) {
  bt_config_t cfg = config(4, 1 << 20, 16, 0);
  fx_t *fx = fx_new(&cfg);
  tpart_t *p[3];
  for (int i = 0; i < 3; i++) {
    p[i] = mk_part(fx, OTLP_LOGS, 2, 1);
    CHECK_EQ_INT(submit(fx, p[i]), 0);
  }
  turn(fx);
  CHECK_EQ_STR(req_desc(fx, 0), "0,1,2");
  CHECK_EQ_STR(fx->reqs[0].path, "/v1/logs");
  answer(fx, 0, 400, "bad", 3, 0);
  turn(fx);
  CHECK_EQ_INT(fx->dones, 0);
  CHECK_REQCB(&fx->reqcbs[0], OTLP_LOGS, 400, 3, 6, 0);
  CHECK_EQ_INT(fx->n_reqs, 4);
  int r[3];
  for (int i = 0; i < 3; i++) {
    char d[8];
    snprintf(d, sizeof d, "%d", i);
    r[i] = find_req(fx, 1, d);
    CHECK(r[i] > 0);
    if (r[i] > 0) CHECK_EQ_STR(fx->reqs[r[i]].path, "/v1/logs");
  }
  if (r[0] > 0 && r[1] > 0 && r[2] > 0) {
    answer(fx, r[0], 200, NULL, 0, 0);
    answer(fx, r[1], 400, "bad", 3, 0);
    answer(fx, r[2], 200, NULL, 0, 0);
    turn(fx);
  }
  CHECK_OUT(p[0], 200, 0, "");
  CHECK_EQ_INT(p[1]->done_calls, 1);
  CHECK_EQ_INT(p[1]->out.status, 400);
  CHECK_EQ_INT(p[1]->out.rejected, 0);
  CHECK_OUT(p[2], 200, 0, "");
  CHECK_EQ_INT(fx->n_reqcbs, 4);
  for (int i = 1; i < 4; i++) CHECK_EQ_INT(fx->reqcbs[i].final, 1);
  CHECK_EQ_INT(fx->n_reqs, 4);

  /* a single part's 400 is its own */
  tpart_t *q = mk_part(fx, OTLP_LOGS, 1, 1);
  CHECK_EQ_INT(submit(fx, q), 0);
  turn(fx);
  answer(fx, 4, 400, NULL, 0, 0);
  turn(fx);
  turn(fx);
  CHECK_EQ_INT(fx->n_reqs, 5);
  CHECK_EQ_INT(q->done_calls, 1);
  CHECK_EQ_INT(q->out.status, 400);
  CHECK_REQCB(&fx->reqcbs[4], OTLP_LOGS, 400, 1, 1, 1);
  fx_free(fx);
}

TEST(resent_parts_go_first_and_alone) {
  /* one slot: after a batch's 400, its members leave one by one, before what waited, never joined to it */
  bt_config_t cfg = config(1, 1 << 20, 16, 0);
  fx_t *fx = fx_new(&cfg);
  tpart_t *p[4];
  for (int i = 0; i < 4; i++) p[i] = mk_part(fx, OTLP_TRACES, 1, 1);
  CHECK_EQ_INT(submit(fx, p[0]), 0);
  CHECK_EQ_INT(submit(fx, p[1]), 0);
  turn(fx);
  CHECK_EQ_STR(req_desc(fx, 0), "0,1");
  CHECK_EQ_INT(submit(fx, p[2]), 0);
  CHECK_EQ_INT(submit(fx, p[3]), 0);
  turn(fx);
  CHECK_EQ_INT(fx->n_reqs, 1);
  answer(fx, 0, 400, NULL, 0, 0);
  turn(fx);
  const char *want[] = {"0,1", "0", "1", "2,3"};
  const int waiting[] = {0, 3, 2, 0}; /* after request k left */
  for (int k = 1; k < 4; k++) {
    CHECK_EQ_INT(fx->n_reqs, k + 1);
    CHECK_EQ_STR(req_desc(fx, k), want[k]);
    uint64_t bytes;
    CHECK_EQ_INT(bt_waiting(fx->b, &bytes), waiting[k]);
    answer(fx, k, 200, NULL, 0, 0);
    turn(fx);
  }
  CHECK_EQ_INT(fx->n_reqs, 4);
  for (int i = 0; i < 4; i++) CHECK_OUT(p[i], 200, 0, "");
  fx_free(fx);
}

TEST(too_large_batch_splits_in_halves_down_to_single_parts) {
  bt_config_t cfg = config(8, 1 << 20, 16, 0);
  fx_t *fx = fx_new(&cfg);
  tpart_t *p[4];
  for (int i = 0; i < 4; i++) {
    p[i] = mk_part(fx, OTLP_TRACES, i + 1, 1);
    CHECK_EQ_INT(submit(fx, p[i]), 0);
  }
  turn(fx);
  CHECK_EQ_STR(req_desc(fx, 0), "0,1,2,3");
  answer(fx, 0, 413, NULL, 0, 0);
  turn(fx);
  CHECK_EQ_INT(fx->dones, 0);
  CHECK_REQCB(&fx->reqcbs[0], OTLP_TRACES, 413, 4, 10, 0);
  CHECK_EQ_INT(fx->n_reqs, 3); /* two halves, both in this turn */
  int h1 = find_req(fx, 1, "0,1"), h2 = find_req(fx, 1, "2,3");
  CHECK(h1 > 0 && h2 > 0);
  if (h1 > 0 && h2 > 0) {
    answer(fx, h1, 413, NULL, 0, 0);
    answer(fx, h2, 200, NULL, 0, 0);
    turn(fx);
  }
  CHECK_OUT(p[2], 200, 0, "");
  CHECK_OUT(p[3], 200, 0, "");
  CHECK_EQ_INT(p[0]->done_calls + p[1]->done_calls, 0);
  CHECK_EQ_INT(fx->n_reqcbs, 3);
  for (int i = 1; i < 3; i++) {
    const reqcb_t *q = &fx->reqcbs[i];
    CHECK_EQ_INT(q->n_parts, 2);
    CHECK_EQ_INT(q->final, q->status == 413 ? 0 : 1);
  }
  CHECK_EQ_INT(fx->n_reqs, 5);
  int s0 = find_req(fx, 3, "0"), s1 = find_req(fx, 3, "1");
  CHECK(s0 > 0 && s1 > 0);
  if (s0 > 0 && s1 > 0) {
    answer(fx, s0, 413, NULL, 0, 0);
    answer(fx, s1, 200, NULL, 0, 0);
    turn(fx);
  }
  turn(fx);
  CHECK_EQ_INT(fx->n_reqs, 5);
  CHECK_EQ_INT(p[0]->done_calls, 1);
  CHECK_EQ_INT(p[0]->out.status, 413); /* a single part answered 413 is rejected */
  CHECK_OUT(p[1], 200, 0, "");
  CHECK_EQ_INT(fx->n_reqcbs, 5);
  for (int i = 3; i < 5; i++) {
    CHECK_EQ_INT(fx->reqcbs[i].n_parts, 1);
    CHECK_EQ_INT(fx->reqcbs[i].final, 1);
  }
  fx_free(fx);

  /* one slot: the halves leave one after the other, never joined to a part that waited meanwhile */
  cfg = config(1, 1 << 20, 16, 0);
  fx = fx_new(&cfg);
  for (int i = 0; i < 4; i++) {
    p[i] = mk_part(fx, OTLP_TRACES, 1, 1);
    CHECK_EQ_INT(submit(fx, p[i]), 0);
  }
  turn(fx);
  tpart_t *late = mk_part(fx, OTLP_TRACES, 1, 1);
  CHECK_EQ_INT(submit(fx, late), 0);
  turn(fx);
  answer(fx, 0, 413, NULL, 0, 0);
  turn(fx);
  const char *want[] = {"0,1,2,3", "0,1", "2,3", "4"};
  for (int k = 1; k < 4; k++) {
    CHECK_EQ_INT(fx->n_reqs, k + 1);
    CHECK_EQ_STR(req_desc(fx, k), want[k]);
    answer(fx, k, 200, NULL, 0, 0);
    turn(fx);
  }
  CHECK_EQ_INT(fx->n_reqs, 4);
  for (int i = 0; i < 4; i++) CHECK_OUT(p[i], 200, 0, "");
  CHECK_OUT(late, 200, 0, "");
  fx_free(fx);

  /* an odd batch: halves of 1 and 2 (either way round) */
  cfg = config(8, 1 << 20, 16, 0);
  fx = fx_new(&cfg);
  for (int i = 0; i < 3; i++) {
    p[i] = mk_part(fx, OTLP_TRACES, 1, 1);
    CHECK_EQ_INT(submit(fx, p[i]), 0);
  }
  turn(fx);
  answer(fx, 0, 413, NULL, 0, 0);
  turn(fx);
  CHECK_EQ_INT(fx->n_reqs, 3);
  CHECK((find_req(fx, 1, "0") > 0 && find_req(fx, 1, "1,2") > 0) ||
        (find_req(fx, 1, "0,1") > 0 && find_req(fx, 1, "2") > 0));
  answer(fx, 1, 200, NULL, 0, 0);
  answer(fx, 2, 200, NULL, 0, 0);
  turn(fx);
  for (int i = 0; i < 3; i++) CHECK_OUT(p[i], 200, 0, "");
  fx_free(fx);
}

TEST(retryable_answers_and_transport_failures_reach_every_part_once) {
  bt_config_t cfg = config(4, 1 << 20, 16, 0);
  fx_t *fx = fx_new(&cfg);
  tpart_t *p[8];
  for (int i = 0; i < 3; i++) {
    p[i] = mk_part(fx, OTLP_METRICS, 2, 1);
    CHECK_EQ_INT(submit(fx, p[i]), 0);
  }
  turn(fx);
  CHECK_EQ_STR(req_desc(fx, 0), "0,1,2");
  answer(fx, 0, 503, "busy", 4, 7);
  turn(fx);
  for (int i = 0; i < 3; i++) {
    CHECK_EQ_INT(p[i]->done_calls, 1);
    CHECK_EQ_INT(p[i]->out.status, 503);
    CHECK_EQ_INT(p[i]->out.retry_after_s, 7);
    CHECK_EQ_INT(p[i]->out.rejected, 0);
  }
  CHECK_EQ_INT(fx->n_reqcbs, 1);
  CHECK_REQCB(&fx->reqcbs[0], OTLP_METRICS, 503, 3, 6, 1);

  for (int i = 3; i < 5; i++) {
    p[i] = mk_part(fx, OTLP_METRICS, 1, 1);
    CHECK_EQ_INT(submit(fx, p[i]), 0);
  }
  turn(fx);
  CHECK_EQ_STR(req_desc(fx, 1), "3,4");
  answer(fx, 1, UV_ECONNRESET, NULL, 0, 0);
  turn(fx);
  for (int i = 3; i < 5; i++) {
    CHECK_EQ_INT(p[i]->done_calls, 1);
    CHECK_EQ_INT(p[i]->out.status, UV_ECONNRESET);
    CHECK_EQ_INT(p[i]->out.rejected, 0);
  }
  CHECK_REQCB(&fx->reqcbs[1], OTLP_METRICS, UV_ECONNRESET, 2, 2, 1);

  for (int i = 5; i < 8; i++) {
    p[i] = mk_part(fx, OTLP_METRICS, 1, 1);
    CHECK_EQ_INT(submit(fx, p[i]), 0);
  }
  turn(fx);
  answer(fx, 2, 500, NULL, 0, 0); /* any other answer: to every part */
  turn(fx);
  for (int i = 5; i < 8; i++) {
    CHECK_EQ_INT(p[i]->done_calls, 1);
    CHECK_EQ_INT(p[i]->out.status, 500);
  }
  for (int i = 0; i < 3; i++) turn(fx);
  CHECK_EQ_INT(fx->n_reqs, 3); /* nothing re-sent */
  CHECK_EQ_INT(fx->n_reqcbs, 3);
  fx_free(fx);
}

TEST(compress_gzips_each_request_once) {
  bt_config_t cfg = config(4, 1 << 20, 16, 1);
  fx_t *fx = fx_new(&cfg);
  tpart_t *p[4];
  for (int i = 0; i < 3; i++) {
    p[i] = mk_part(fx, OTLP_TRACES, 4, 2);
    CHECK_EQ_INT(submit(fx, p[i]), 0);
  }
  turn(fx);
  CHECK_EQ_INT(fx->n_reqs, 1);
  CHECK_EQ_STR(fx->reqs[0].ce, "gzip");
  CHECK_EQ_STR(fx->reqs[0].ct, "application/x-protobuf");
  uint8_t *plain = NULL;
  size_t plen = 0;
  CHECK_EQ_INT(otlp_gunzip(fx->reqs[0].body, fx->reqs[0].len, 1 << 20, &plain, &plen), OTLP_OK);
  CHECK_EQ_INT(plen, p[0]->len + p[1]->len + p[2]->len);
  if (plen == p[0]->len + p[1]->len + p[2]->len) {
    CHECK(memcmp(plain, p[0]->bytes, p[0]->len) == 0);
    CHECK(memcmp(plain + p[0]->len, p[1]->bytes, p[1]->len) == 0);
    CHECK(memcmp(plain + p[0]->len + p[1]->len, p[2]->bytes, p[2]->len) == 0);
  }
  free(plain);
  check_merged_traces(fx, 0, (int[]){0, 1, 2}, 3);
  answer(fx, 0, 200, NULL, 0, 0);
  turn(fx);
  CHECK_EQ_INT(fx->reqcbs[0].bytes, fx->reqs[0].len); /* bytes sent: after compression */
  CHECK_EQ_INT(fx->reqcbs[0].n_parts, 3);

  /* a single part without an alternative: gzipped too */
  p[3] = mk_part(fx, OTLP_TRACES, 2, 1);
  CHECK_EQ_INT(submit(fx, p[3]), 0);
  turn(fx);
  CHECK_EQ_INT(fx->n_reqs, 2);
  CHECK_EQ_STR(fx->reqs[1].ce, "gzip");
  CHECK_EQ_STR(req_desc(fx, 1), "3");
  answer(fx, 1, 200, NULL, 0, 0);
  turn(fx);
  CHECK_EQ_INT(fx->reqcbs[1].bytes, fx->reqs[1].len);
  for (int i = 0; i < 4; i++) CHECK_OUT(p[i], 200, 0, "");
  fx_free(fx);
}

TEST(alternative_bytes_only_when_a_part_leaves_alone) {
  bt_config_t cfg = config(4, 1 << 20, 16, 0);
  fx_t *fx = fx_new(&cfg);
  size_t zl;
  /* alone: the gzip pass-through body as is */
  tpart_t *a = mk_part(fx, OTLP_TRACES, 3, 2);
  uint8_t *z = gzip9(a->bytes, a->len, &zl);
  set_alone(a, z, zl, "gzip");
  CHECK_EQ_INT(submit(fx, a), 0);
  turn(fx);
  CHECK_EQ_INT(fx->n_reqs, 1);
  CHECK_EQ_STR(fx->reqs[0].ce, "gzip");
  CHECK_EQ_STR(req_desc(fx, 0), "a0");
  answer(fx, 0, 200, NULL, 0, 0);
  turn(fx);
  CHECK_OUT(a, 200, 0, "");
  CHECK_EQ_INT(fx->reqcbs[0].bytes, zl);

  /* batched: its plain iovecs, the batch plain */
  tpart_t *b = mk_part(fx, OTLP_TRACES, 2, 1), *c = mk_part(fx, OTLP_TRACES, 1, 1);
  z = gzip9(b->bytes, b->len, &zl);
  set_alone(b, z, zl, "gzip");
  CHECK_EQ_INT(submit(fx, b), 0);
  CHECK_EQ_INT(submit(fx, c), 0);
  turn(fx);
  CHECK_EQ_INT(fx->n_reqs, 2);
  CHECK(is_plain(&fx->reqs[1]));
  CHECK_EQ_STR(req_desc(fx, 1), "1,2");
  CHECK_EQ_INT(fx->reqs[1].n_iov, b->p.n_iov + c->p.n_iov);
  /* the batch's 400: re-sent alone, the part with an alternative as that again */
  answer(fx, 1, 400, NULL, 0, 0);
  turn(fx);
  CHECK_EQ_INT(fx->n_reqs, 4);
  int rb = find_req(fx, 2, "a1"), rc = find_req(fx, 2, "2");
  CHECK(rb > 0 && rc > 0);
  if (rb > 0) CHECK_EQ_STR(fx->reqs[rb].ce, "gzip");
  if (rc > 0) CHECK(is_plain(&fx->reqs[rc]));
  answer(fx, 2, 200, NULL, 0, 0);
  answer(fx, 3, 200, NULL, 0, 0);
  turn(fx);
  CHECK_OUT(b, 200, 0, "");
  CHECK_OUT(c, 200, 0, "");
  fx_free(fx);

  /* compress set: an identity alternative alone goes as is (not gzipped); batched, the plain bytes gzipped */
  cfg = config(4, 1 << 20, 16, 1);
  fx = fx_new(&cfg);
  tpart_t *f = mk_part(fx, OTLP_TRACES, 2, 1);
  size_t al;
  uint8_t *alt = make_traces("alt", f->idx, 2, &al);
  set_alone(f, alt, al, NULL);
  CHECK_EQ_INT(submit(fx, f), 0);
  turn(fx);
  CHECK_EQ_INT(fx->n_reqs, 1);
  CHECK(is_plain(&fx->reqs[0]));
  CHECK_EQ_STR(req_desc(fx, 0), "a0");
  answer(fx, 0, 200, NULL, 0, 0);
  turn(fx);
  tpart_t *g = mk_part(fx, OTLP_TRACES, 2, 1), *h = mk_part(fx, OTLP_TRACES, 2, 1);
  z = gzip9(g->bytes, g->len, &zl);
  set_alone(g, z, zl, "gzip");
  CHECK_EQ_INT(submit(fx, g), 0);
  CHECK_EQ_INT(submit(fx, h), 0);
  turn(fx);
  CHECK_EQ_INT(fx->n_reqs, 2);
  CHECK_EQ_STR(fx->reqs[1].ce, "gzip");
  CHECK_EQ_STR(req_desc(fx, 1), "1,2");
  check_merged_traces(fx, 1, (int[]){1, 2}, 2);
  answer(fx, 1, 200, NULL, 0, 0);
  turn(fx);
  CHECK_OUT(f, 200, 0, "");
  CHECK_OUT(g, 200, 0, "");
  CHECK_OUT(h, 200, 0, "");
  fx_free(fx);
}

TEST(cancel_fails_waiting_parts_inside_the_call) {
  bt_config_t cfg = config(1, 1 << 20, 16, 0);
  fx_t *fx = fx_new(&cfg);
  tpart_t *p[5];
  for (int i = 0; i < 5; i++) p[i] = mk_part(fx, OTLP_TRACES, 1, 1);
  CHECK_EQ_INT(submit(fx, p[0]), 0);
  turn(fx);
  CHECK_EQ_INT(submit(fx, p[1]), 0);
  CHECK_EQ_INT(submit(fx, p[2]), 0);
  turn(fx);
  p[1]->then_submit = p[3]; /* bt_submit from a done callback during the cancel */
  p[1]->then_rc = 12345;
  uint64_t bytes;
  CHECK_EQ_INT(bt_waiting(fx->b, &bytes), 2);
  bt_cancel(fx->b);
  CHECK_EQ_INT(p[1]->done_calls, 1);
  CHECK_EQ_INT(p[1]->out.status, UV_ECANCELED);
  CHECK_EQ_INT(p[2]->done_calls, 1);
  CHECK_EQ_INT(p[2]->out.status, UV_ECANCELED);
  CHECK_EQ_INT(p[1]->then_rc, UV_ECANCELED);
  CHECK(!p[3]->accepted);
  CHECK_EQ_INT(p[0]->done_calls, 0); /* in flight: the pool's */
  CHECK_EQ_INT(bt_waiting(fx->b, &bytes), 0);
  CHECK_EQ_INT(bytes, 0);
  CHECK_EQ_INT(bt_in_flight(fx->b), 1);
  CHECK_EQ_INT(fx->n_reqcbs, 0); /* no backend request for them */
  /* after the call, submitting works again */
  CHECK_EQ_INT(submit(fx, p[4]), 0);
  turn(fx);
  CHECK_EQ_INT(fx->n_reqs, 1);
  answer(fx, 0, 200, NULL, 0, 0);
  turn(fx);
  CHECK_OUT(p[0], 200, 0, "");
  CHECK_EQ_INT(fx->n_reqs, 2);
  CHECK_EQ_STR(req_desc(fx, 1), "4");
  answer(fx, 1, 200, NULL, 0, 0);
  turn(fx);
  CHECK_OUT(p[4], 200, 0, "");
  CHECK_EQ_INT(p[3]->done_calls, 0);
  fx_free(fx);
}

TEST(synchronous_send_failure_fails_the_parts_from_the_loop) {
  bt_config_t cfg = config(2, 1 << 20, 16, 0);
  fx_t *fx = fx_new(&cfg);
  tpart_t *p[3];
  for (int i = 0; i < 3; i++) p[i] = mk_part(fx, OTLP_LOGS, 1, 1);
  fx->fail_sends = 1;
  fx->fail_status = UV_ENOMEM;
  CHECK_EQ_INT(submit(fx, p[0]), 0);
  CHECK_EQ_INT(submit(fx, p[1]), 0);
  CHECK_EQ_INT(fx->dones, 0);
  turn(fx);
  CHECK_EQ_INT(fx->n_failed_sends, 1);
  CHECK_EQ_INT(fx->n_reqs, 0);
  for (int i = 0; i < 2; i++) {
    CHECK_EQ_INT(p[i]->done_calls, 1);
    CHECK_EQ_INT(p[i]->out.status, UV_ENOMEM);
  }
  CHECK_EQ_INT(bt_in_flight(fx->b), 0);
  uint64_t bytes;
  CHECK_EQ_INT(bt_waiting(fx->b, &bytes), 0);
  /* a failed batch counts once: one request callback, with the error, before the parts' */
  CHECK_EQ_INT(fx->n_reqcbs, 1);
  CHECK_REQCB(&fx->reqcbs[0], OTLP_LOGS, UV_ENOMEM, 2, 2, 1);
  CHECK_EQ_INT(p[0]->reqcbs_at_done, 1);
  int reqcbs = fx->n_reqcbs;
  /* the next part goes normally */
  CHECK_EQ_INT(submit(fx, p[2]), 0);
  turn(fx);
  CHECK_EQ_INT(fx->n_reqs, 1);
  CHECK_EQ_STR(req_desc(fx, 0), "2");
  answer(fx, 0, 200, NULL, 0, 0);
  turn(fx);
  CHECK_OUT(p[2], 200, 0, "");
  CHECK_EQ_INT(fx->n_reqcbs, reqcbs + 1);
  fx_free(fx);
}

static void on_watchdog(uv_timer_t *t) { *(int *)t->data = 1; }

static void on_submit_timer(uv_timer_t *t) {
  tpart_t *tp = t->data;
  CHECK_EQ_INT(submit(tp->fx, tp), 0);
}

/* Runs the loop a turn at a time (UV_RUN_ONCE: it may block in poll) until want requests were sent; a watchdog
 * far beyond any scheduling noise tells a loop that blocked waiting for I/O that never comes (the answerer keeps
 * it alive, as a gateway's listeners do). */
static void run_once_until_sent(fx_t *fx, int want) {
  uv_timer_t wd;
  int fired = 0;
  uv_timer_init(&fx->loop, &wd);
  wd.data = &fired;
  uv_timer_start(&wd, on_watchdog, 20000, 0);
  for (int i = 0; i < 1000 && fx->n_reqs < want && !fired; i++) uv_run(&fx->loop, UV_RUN_ONCE);
  CHECK(!fired);
  CHECK_EQ_INT(fx->n_reqs, want);
  uv_close((uv_handle_t *)&wd, NULL);
  uv_run(&fx->loop, UV_RUN_NOWAIT);
}

TEST(parts_submitted_outside_the_io_phase_do_not_wait_for_io) {
  bt_config_t cfg = config(2, 1 << 20, 16, 0);
  fx_t *fx = fx_new(&cfg);
  /* from a timer's callback */
  tpart_t *a = mk_part(fx, OTLP_TRACES, 1, 1);
  uv_timer_t t;
  uv_timer_init(&fx->loop, &t);
  t.data = a;
  uv_timer_start(&t, on_submit_timer, 0, 0);
  run_once_until_sent(fx, 1);
  CHECK_EQ_STR(req_desc(fx, 0), "0");
  uv_close((uv_handle_t *)&t, NULL);
  answer(fx, 0, 200, NULL, 0, 0);
  turn(fx);
  CHECK_OUT(a, 200, 0, "");
  /* from a part's callback run by the check itself (a synchronous send failure re-routing its part) */
  tpart_t *b = mk_part(fx, OTLP_TRACES, 1, 1), *c = mk_part(fx, OTLP_TRACES, 1, 1);
  b->then_submit = c;
  fx->fail_sends = 1;
  fx->fail_status = UV_ENOMEM;
  CHECK_EQ_INT(submit(fx, b), 0);
  turn(fx);
  CHECK_EQ_INT(b->out.status, UV_ENOMEM);
  CHECK_EQ_INT(b->then_rc, 0);
  run_once_until_sent(fx, 2);
  CHECK_EQ_STR(req_desc(fx, 1), "2");
  answer(fx, 1, 200, NULL, 0, 0);
  turn(fx);
  CHECK_OUT(c, 200, 0, "");
  fx_free(fx);
}

TEST(destroy_fails_waiting_parts) {
  bt_config_t cfg = config(2, 1 << 20, 16, 0);
  fx_t *fx = fx_new(&cfg);
  tpart_t *p[4];
  for (int i = 0; i < 2; i++) {
    p[i] = mk_part(fx, OTLP_TRACES, 1, 1);
    CHECK_EQ_INT(submit(fx, p[i]), 0);
  }
  bt_destroy(fx->b); /* before the turn ends: both still wait */
  fx->b = NULL;
  for (int i = 0; i < 2; i++) {
    CHECK_EQ_INT(p[i]->done_calls, 1);
    CHECK_EQ_INT(p[i]->out.status, UV_ECANCELED);
  }
  CHECK_EQ_INT(fx->n_reqs, 0);
  turn(fx);
  CHECK_EQ_INT(fx->n_reqs, 0);
  fx_free(fx);

  /* the shutdown order: cancel the batcher, then the pool (its callbacks inside its call), then destroy */
  cfg = config(1, 1 << 20, 16, 0);
  fx = fx_new(&cfg);
  for (int i = 0; i < 4; i++) p[i] = mk_part(fx, OTLP_TRACES, 1, 1);
  CHECK_EQ_INT(submit(fx, p[0]), 0);
  CHECK_EQ_INT(submit(fx, p[1]), 0);
  turn(fx);
  CHECK_EQ_INT(submit(fx, p[2]), 0);
  CHECK_EQ_INT(submit(fx, p[3]), 0);
  turn(fx);
  bt_cancel(fx->b);
  CHECK_EQ_INT(p[2]->out.status, UV_ECANCELED);
  CHECK_EQ_INT(p[3]->out.status, UV_ECANCELED);
  answer_now(fx, 0, UV_ECANCELED);
  for (int i = 0; i < 4; i++) {
    CHECK_EQ_INT(p[i]->done_calls, 1);
    CHECK_EQ_INT(p[i]->out.status, UV_ECANCELED);
  }
  CHECK_EQ_INT(fx->n_reqcbs, 1);
  CHECK_REQCB(&fx->reqcbs[0], OTLP_TRACES, UV_ECANCELED, 2, 2, 1);
  CHECK_EQ_INT(bt_in_flight(fx->b), 0);
  bt_destroy(fx->b);
  fx->b = NULL;
  turn(fx);
  CHECK_EQ_INT(fx->n_reqs, 1);
  fx_free(fx);
}

TEST(reloaded_config_applies_to_later_batches) {
  bt_config_t cfg = config(1, 1 << 20, 1, 0);
  fx_t *fx = fx_new(&cfg);
  tpart_t *p[4];
  for (int i = 0; i < 4; i++) p[i] = mk_part(fx, OTLP_TRACES, 1, 1);
  CHECK_EQ_INT(submit(fx, p[0]), 0);
  turn(fx);
  for (int i = 1; i < 4; i++) CHECK_EQ_INT(submit(fx, p[i]), 0);
  turn(fx);
  cfg.max_parts = 8;
  bt_set_config(fx->b, &cfg);
  answer(fx, 0, 200, NULL, 0, 0);
  turn(fx);
  CHECK_EQ_INT(fx->n_reqs, 2);
  CHECK_EQ_STR(req_desc(fx, 1), "1,2,3");
  answer(fx, 1, 200, NULL, 0, 0);
  turn(fx);
  for (int i = 0; i < 4; i++) CHECK_OUT(p[i], 200, 0, "");
  fx_free(fx);
}

/* ------------------------------------------------------------------------------------ random runs */

static uint64_t rng_state;
static uint32_t rnd(uint32_t n) {
  rng_state ^= rng_state >> 12;
  rng_state ^= rng_state << 25;
  rng_state ^= rng_state >> 27;
  return (uint32_t)((rng_state * 0x2545F4914F6CDD1Dull) >> 33) % n;
}

/* The fake backend: 413 over limit413 plain bytes, else 400 when a bad part is in it, else 2xx with the sum of
 * its parts' rejections. */
static void auto_answer(fx_t *fx, int ri, size_t limit413) {
  fk_req_t *r = &fx->reqs[ri];
  int idx[MAX_PARTS], alone;
  int n = req_parts(fx, r, idx, MAX_PARTS, &alone);
  CHECK(n > 0);
  if (n <= 0) {
    answer(fx, ri, 500, NULL, 0, 0);
    return;
  }
  size_t plain = 0;
  int bad = 0;
  int64_t rej = 0;
  for (int k = 0; k < n; k++) {
    const tpart_t *tp = fx->parts[idx[k]];
    plain += tp->len;
    bad |= tp->bad;
    rej += tp->reject;
  }
  if (plain > limit413) answer(fx, ri, 413, NULL, 0, 0);
  else if (bad) answer(fx, ri, 400, "bad", 3, 0);
  else if (rej > 0) answer_partial(fx, ri, rej, "rej");
  else answer(fx, ri, 200, NULL, 0, 0);
}

TEST(random_runs_every_part_gets_its_alone_outcome) {
  static const uint32_t parts_choice[] = {0, 1, 2, 3, 5, 8, 256};
  for (int round = 0; round < 30; round++) {
    int failed_before = test__failed_checks;
    rng_state = 0x9E3779B97F4A7C15ull * (uint64_t)(round + 1);
    bt_config_t cfg = config(rnd(5), 100 + rnd(1500), parts_choice[rnd(7)], 0);
    cfg.open_parts = rnd(2) ? rnd(5) : 0; /* with a request in flight, wait for this many before another */
    cfg.open_bytes = 200 + rnd(2000);
    cfg.open_after_ns = rnd(2) ? 0 : 1 + rnd(200000);
    size_t limit413 = rnd(3) == 0 ? SIZE_MAX : 150 + rnd(1200);
    fx_t *fx = fx_new(&cfg);
    const int n_total = 150;
    int submitted = 0, it;
    uint64_t total_items = 0;
    for (it = 0; it < 100000; it++) {
      uint64_t wbytes;
      if (submitted == n_total && unanswered(fx) == 0 && bt_waiting(fx->b, &wbytes) == 0) break;
      for (uint32_t k = rnd(4); k > 0 && submitted < n_total; k--) {
        int items = rnd(12) == 0 ? 20 + (int)rnd(20) : 1 + (int)rnd(6);
        tpart_t *tp = mk_part(fx, (int)rnd(3), items, 1 + (int)rnd(3));
        tp->bad = rnd(10) == 0;
        tp->reject = rnd(8) == 0 ? 1 + (int64_t)rnd((uint32_t)items) : 0;
        CHECK_EQ_INT(submit(fx, tp), 0);
        submitted++;
        total_items += (uint64_t)items;
      }
      for (int i = 0; i < fx->n_reqs; i++)
        if (!fx->reqs[i].queued && (submitted == n_total || rnd(2) == 0)) auto_answer(fx, i, limit413);
      turn(fx);
      CHECK(unanswered(fx) <= (int)(cfg.max_in_flight ? cfg.max_in_flight : 1));
    }
    CHECK(it < 100000);
    int wrong = 0;
    for (int i = 0; i < fx->n_parts; i++) {
      const tpart_t *tp = fx->parts[i];
      int want_status = tp->len > limit413 ? 413 : tp->bad ? 400 : 200;
      int64_t want_rej = want_status == 200 ? tp->reject : 0;
      const char *want_msg = want_status == 200 && tp->reject ? "rej" : "";
      if (tp->done_calls != 1 || tp->out.status != want_status || tp->out.rejected != want_rej ||
          (want_status == 200 && strcmp(tp->msg, want_msg) != 0)) {
        if (wrong++ < 5)
          fprintf(stderr, "round %d part %d (%zu bytes, bad %d, reject %" PRId64 "): done %d, status %d, rejected %"
                  PRId64 " '%s'; want %d, %" PRId64 " '%s'\n", round, i, tp->len, tp->bad, tp->reject,
                  tp->done_calls, tp->out.status, tp->out.rejected, tp->msg, want_status, want_rej, want_msg);
      }
    }
    CHECK_EQ_INT(wrong, 0);
    check_requests(fx, cfg.max_parts, cfg.max_bytes);
    /* every part got exactly one final answer: the final request callbacks carry every part and item once */
    uint64_t final_parts = 0, final_items = 0;
    for (int i = 0; i < fx->n_reqcbs; i++)
      if (fx->reqcbs[i].final) {
        final_parts += fx->reqcbs[i].n_parts;
        final_items += fx->reqcbs[i].items;
      }
    CHECK_EQ_INT(final_parts, n_total);
    CHECK_EQ_INT(final_items, total_items);
    for (int i = 0; i < fx->n_reqs; i++) {
      int idx[MAX_PARTS], alone;
      int n = req_parts(fx, &fx->reqs[i], idx, MAX_PARTS, &alone);
      size_t n_iov = 0;
      for (int k = 0; k < n; k++) n_iov += fx->parts[idx[k]]->p.n_iov;
      if (n > 0) CHECK_EQ_INT(fx->reqs[i].n_iov, n_iov);
    }
    if (test__failed_checks != failed_before)
      fprintf(stderr, "round %d: max_in_flight %u max_bytes %zu max_parts %u limit413 %zu\n", round, cfg.max_in_flight,
              cfg.max_bytes, cfg.max_parts, limit413);
    fx_free(fx);
    if (test__failed_checks != failed_before) break;
  }
}

TEST_MAIN()
