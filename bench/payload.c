/*
 * OTLP payload generator: see payload.h for the contract.
 *
 * The request is built as protobuf-c structs in an arena (one free at the end), packed by protobuf-c or written
 * as OTLP/JSON by the small encoder below. Trace-ID positions come from a wire walk over the packed bytes (the
 * JSON encoder records them while writing), and are checked against the IDs before the payload is handed out.
 */
#include "bench/payload.h"

#include <errno.h>
#include <inttypes.h>
#include <stdalign.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <libdeflate.h>

#include "opentelemetry/proto/collector/logs/v1/logs_service.pb-c.h"
#include "opentelemetry/proto/collector/metrics/v1/metrics_service.pb-c.h"
#include "opentelemetry/proto/collector/trace/v1/trace_service.pb-c.h"

/* Short names for the generated types. */
typedef Opentelemetry__Proto__Common__V1__AnyValue AnyValue;
typedef Opentelemetry__Proto__Common__V1__KeyValue KeyValue;
typedef Opentelemetry__Proto__Common__V1__ArrayValue ArrayValue;
typedef Opentelemetry__Proto__Common__V1__KeyValueList KeyValueList;
typedef Opentelemetry__Proto__Common__V1__InstrumentationScope Scope;
typedef Opentelemetry__Proto__Resource__V1__Resource Resource;
typedef Opentelemetry__Proto__Trace__V1__ResourceSpans ResourceSpans;
typedef Opentelemetry__Proto__Trace__V1__ScopeSpans ScopeSpans;
typedef Opentelemetry__Proto__Trace__V1__Span Span;
typedef Opentelemetry__Proto__Trace__V1__Span__Event SpanEvent;
typedef Opentelemetry__Proto__Trace__V1__Status Status;
typedef Opentelemetry__Proto__Logs__V1__ResourceLogs ResourceLogs;
typedef Opentelemetry__Proto__Logs__V1__ScopeLogs ScopeLogs;
typedef Opentelemetry__Proto__Logs__V1__LogRecord LogRecord;
typedef Opentelemetry__Proto__Metrics__V1__ResourceMetrics ResourceMetrics;
typedef Opentelemetry__Proto__Metrics__V1__ScopeMetrics ScopeMetrics;
typedef Opentelemetry__Proto__Metrics__V1__Metric Metric;
typedef Opentelemetry__Proto__Metrics__V1__Gauge Gauge;
typedef Opentelemetry__Proto__Metrics__V1__Sum Sum;
typedef Opentelemetry__Proto__Metrics__V1__Histogram Histogram;
typedef Opentelemetry__Proto__Metrics__V1__NumberDataPoint NumberDataPoint;
typedef Opentelemetry__Proto__Metrics__V1__HistogramDataPoint HistogramDataPoint;
typedef Opentelemetry__Proto__Collector__Trace__V1__ExportTraceServiceRequest TraceRequest;
typedef Opentelemetry__Proto__Collector__Logs__V1__ExportLogsServiceRequest LogsRequest;
typedef Opentelemetry__Proto__Collector__Metrics__V1__ExportMetricsServiceRequest MetricsRequest;

/* ---------------------------------------------------------------------------------------------- names */

static const char *const signal_names[PL_SIGNAL_COUNT] = {"traces", "logs", "metrics"};
static const char *const signal_paths[PL_SIGNAL_COUNT] = {"/v1/traces", "/v1/logs", "/v1/metrics"};

const char *pl_signal_name(pl_signal s) { return (unsigned)s < PL_SIGNAL_COUNT ? signal_names[s] : NULL; }
const char *pl_signal_path(pl_signal s) { return (unsigned)s < PL_SIGNAL_COUNT ? signal_paths[s] : NULL; }

int pl_signal_parse(const char *name, pl_signal *out) {
  for (int i = 0; i < PL_SIGNAL_COUNT; i++) {
    if (strcmp(name, signal_names[i]) == 0) {
      *out = (pl_signal)i;
      return 0;
    }
  }
  return -EINVAL;
}

const char *pl_content_type(pl_encoding e) {
  return e == PL_JSON ? "application/json" : "application/x-protobuf";
}

/* ---------------------------------------------------------------------------------------------- rng */

uint64_t pl_mix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

void pl_rng_seed(pl_rng *rng, uint64_t seed) {
  for (int i = 0; i < 4; i++) {
    seed = pl_mix64(seed);
    rng->s[i] = seed;
  }
  if ((rng->s[0] | rng->s[1] | rng->s[2] | rng->s[3]) == 0) rng->s[0] = 1; /* the one state xoshiro can't leave */
}

static inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

uint64_t pl_rng_next(pl_rng *rng) {
  uint64_t *s = rng->s;
  uint64_t result = rotl(s[1] * 5, 7) * 9;
  uint64_t t = s[1] << 17;
  s[2] ^= s[0];
  s[3] ^= s[1];
  s[1] ^= s[2];
  s[0] ^= s[3];
  s[2] ^= t;
  s[3] = rotl(s[3], 45);
  return result;
}

static uint32_t rng_below(pl_rng *rng, uint32_t n) { return (uint32_t)(((pl_rng_next(rng) >> 32) * n) >> 32); }

/* n random bytes, never all zero (an all-zero trace or span ID is invalid in OTLP). */
static void rng_id(pl_rng *rng, uint8_t *out, size_t n) {
  bool nz;
  do {
    nz = false;
    for (size_t i = 0; i < n; i += 8) {
      uint64_t v = pl_rng_next(rng);
      memcpy(out + i, &v, n - i < 8 ? n - i : 8);
    }
    for (size_t i = 0; i < n; i++) nz |= out[i] != 0;
  } while (!nz);
}

static const char hexdig[16] = "0123456789abcdef";

void pl_trace_hex(const uint8_t id[16], char out[33]) {
  for (int i = 0; i < 16; i++) {
    out[2 * i] = hexdig[id[i] >> 4];
    out[2 * i + 1] = hexdig[id[i] & 15];
  }
  out[32] = '\0';
}

/* ---------------------------------------------------------------------------------------------- arena */

/* Bump allocator for the protobuf-c structs of one build; everything is released by arena_free(). */
typedef struct arena_chunk {
  struct arena_chunk *next;
  size_t used, cap;
  alignas(16) unsigned char data[];
} arena_chunk;

typedef struct arena {
  arena_chunk *head;
  bool failed;
} arena;

static void *arena_alloc(arena *a, size_t n) {
  n = (n + 15) & ~(size_t)15;
  if (!a->head || a->head->cap - a->head->used < n) {
    size_t cap = n > 65536 ? n : 65536;
    arena_chunk *c = malloc(sizeof(*c) + cap);
    if (!c) {
      a->failed = true;
      return NULL;
    }
    c->next = a->head;
    c->used = 0;
    c->cap = cap;
    a->head = c;
  }
  void *p = a->head->data + a->head->used;
  a->head->used += n;
  memset(p, 0, n);
  return p;
}

static void arena_free(arena *a) {
  while (a->head) {
    arena_chunk *next = a->head->next;
    free(a->head);
    a->head = next;
  }
}

/* A formatted string in the arena; "" (static) on failure with a->failed set. */
static char *arena_printf(arena *a, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static char *arena_printf(arena *a, const char *fmt, ...) {
  char tmp[256];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
  va_end(ap);
  if (n < 0) n = 0;
  if ((size_t)n >= sizeof(tmp)) n = sizeof(tmp) - 1;
  char *s = arena_alloc(a, (size_t)n + 1);
  if (!s) return (char *)"";
  memcpy(s, tmp, (size_t)n + 1);
  return s;
}

/* Typed allocation that runs the protobuf-c initialiser; returns NULL (a->failed) when out of memory. */
#define ARENA_NEW(a, T, INIT)                   \
  ({                                            \
    T *arena_new__ = arena_alloc((a), sizeof(T)); \
    if (arena_new__) *arena_new__ = (T)INIT;    \
    arena_new__;                                \
  })
#define ARENA_ARRAY(a, T, n) ((T *)arena_alloc((a), sizeof(T) * ((n) ? (n) : 1)))

/* ---------------------------------------------------------------------------------------------- attributes */

typedef struct kvs {
  KeyValue **v;
  size_t n, cap;
} kvs;

static void kvs_init(arena *a, kvs *k, size_t cap) {
  k->v = ARENA_ARRAY(a, KeyValue *, cap);
  k->n = 0;
  k->cap = k->v ? cap : 0;
}

static AnyValue *kv_add(arena *a, kvs *k, const char *key) {
  if (k->n >= k->cap) return NULL;
  KeyValue *kv = ARENA_NEW(a, KeyValue, OPENTELEMETRY__PROTO__COMMON__V1__KEY_VALUE__INIT);
  AnyValue *v = ARENA_NEW(a, AnyValue, OPENTELEMETRY__PROTO__COMMON__V1__ANY_VALUE__INIT);
  if (!kv || !v) return NULL;
  kv->key = (char *)key;
  kv->value = v;
  k->v[k->n++] = kv;
  return v;
}

static void kv_str(arena *a, kvs *k, const char *key, char *val) {
  AnyValue *v = kv_add(a, k, key);
  if (!v) return;
  v->value_case = OPENTELEMETRY__PROTO__COMMON__V1__ANY_VALUE__VALUE_STRING_VALUE;
  v->string_value = val;
}

static void kv_int(arena *a, kvs *k, const char *key, int64_t val) {
  AnyValue *v = kv_add(a, k, key);
  if (!v) return;
  v->value_case = OPENTELEMETRY__PROTO__COMMON__V1__ANY_VALUE__VALUE_INT_VALUE;
  v->int_value = val;
}

static void kv_double(arena *a, kvs *k, const char *key, double val) {
  AnyValue *v = kv_add(a, k, key);
  if (!v) return;
  v->value_case = OPENTELEMETRY__PROTO__COMMON__V1__ANY_VALUE__VALUE_DOUBLE_VALUE;
  v->double_value = val;
}

static void kv_bool(arena *a, kvs *k, const char *key, bool val) {
  AnyValue *v = kv_add(a, k, key);
  if (!v) return;
  v->value_case = OPENTELEMETRY__PROTO__COMMON__V1__ANY_VALUE__VALUE_BOOL_VALUE;
  v->bool_value = val;
}

static Resource *make_resource(arena *a, uint32_t idx, pl_rng *rng) {
  static const char *const envs[] = {"production", "staging", "canary"};
  Resource *r = ARENA_NEW(a, Resource, OPENTELEMETRY__PROTO__RESOURCE__V1__RESOURCE__INIT);
  if (!r) return NULL;
  kvs k;
  kvs_init(a, &k, 8);
  kv_str(a, &k, "service.name", arena_printf(a, "svc-%" PRIu32, idx));
  kv_str(a, &k, "service.version", arena_printf(a, "1.%" PRIu32 ".%" PRIu32, idx % 7, rng_below(rng, 20)));
  kv_str(a, &k, "service.instance.id", arena_printf(a, "%016" PRIx64, pl_rng_next(rng)));
  kv_str(a, &k, "host.name", arena_printf(a, "node-%02" PRIu32 ".cluster.local", rng_below(rng, 64)));
  kv_str(a, &k, "deployment.environment", (char *)envs[idx % 3]);
  kv_str(a, &k, "telemetry.sdk.name", "opentelemetry");
  kv_str(a, &k, "telemetry.sdk.language", "cpp");
  kv_str(a, &k, "telemetry.sdk.version", "1.16.1");
  r->attributes = k.v;
  r->n_attributes = k.n;
  return r;
}

static Scope *make_scope(arena *a, const char *name) {
  Scope *s = ARENA_NEW(a, Scope, OPENTELEMETRY__PROTO__COMMON__V1__INSTRUMENTATION_SCOPE__INIT);
  if (!s) return NULL;
  s->name = (char *)name;
  s->version = "0.42.0";
  return s;
}

/* Index range [*lo, *hi) of the items that resource r of nres owns: contiguous, near-equal blocks. */
static void resource_block(uint32_t items, uint32_t nres, uint32_t r, uint32_t *lo, uint32_t *hi) {
  *lo = (uint32_t)((uint64_t)items * r / nres);
  *hi = (uint32_t)((uint64_t)items * (r + 1) / nres);
}

static const char *const http_methods[] = {"GET", "GET", "GET", "POST", "PUT", "DELETE"};
static const char *const http_routes[] = {"/api/v1/orders/{id}", "/api/v1/cart", "/api/v1/users/{id}/profile",
                                          "/api/v1/checkout", "/healthz", "/api/v1/search"};
static const char *const db_ops[] = {"SELECT orders", "SELECT users", "INSERT order_items", "UPDATE carts",
                                     "redis GET", "kafka.produce checkout"};

static int http_status(pl_rng *rng) {
  uint32_t x = rng_below(rng, 100);
  return x < 90 ? 200 : x < 95 ? 404 : x < 98 ? 500 : 503;
}

/* ---------------------------------------------------------------------------------------------- build */

/* What a build leaves for encoding: the message, and for each routed record in encoding order its trace index. */
typedef struct build {
  arena a;
  ProtobufCMessage *msg;
  uint32_t *rec_trace; /* items entries (traces, logs); NULL for metrics */
} build;

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static int build_traces(build *b, pl_payload *p, const pl_options *o, uint32_t nres, uint64_t t0) {
  arena *a = &b->a;
  pl_rng *rng = &p->rng;
  uint32_t S = o->items, T = o->traces;
  /* Last span ID emitted per trace: children point at it, so each trace is a chain under its root. */
  uint8_t (*last)[8] = calloc(T, 8);
  if (!last) return -ENOMEM;
  TraceRequest *req = ARENA_NEW(a, TraceRequest, OPENTELEMETRY__PROTO__COLLECTOR__TRACE__V1__EXPORT_TRACE_SERVICE_REQUEST__INIT);
  ResourceSpans **rs = ARENA_ARRAY(a, ResourceSpans *, nres);
  if (!req || !rs) goto oom;
  req->resource_spans = rs;
  req->n_resource_spans = nres;
  for (uint32_t r = 0; r < nres; r++) {
    uint32_t lo, hi;
    resource_block(S, nres, r, &lo, &hi);
    ResourceSpans *x = ARENA_NEW(a, ResourceSpans, OPENTELEMETRY__PROTO__TRACE__V1__RESOURCE_SPANS__INIT);
    ScopeSpans *ss = ARENA_NEW(a, ScopeSpans, OPENTELEMETRY__PROTO__TRACE__V1__SCOPE_SPANS__INIT);
    ScopeSpans **ssv = ARENA_ARRAY(a, ScopeSpans *, 1);
    Span **spans = ARENA_ARRAY(a, Span *, hi - lo);
    if (!x || !ss || !ssv || !spans) goto oom;
    rs[r] = x;
    x->resource = make_resource(a, r, rng);
    x->schema_url = "https://opentelemetry.io/schemas/1.24.0";
    x->scope_spans = ssv;
    x->n_scope_spans = 1;
    ssv[0] = ss;
    ss->scope = make_scope(a, "io.opentelemetry.instrumentation.http");
    ss->spans = spans;
    ss->n_spans = hi - lo;
    for (uint32_t j = lo; j < hi; j++) {
      /* Interleave traces (span j belongs to trace j % T) so a body is not pre-sorted by trace. */
      uint32_t t = j % T;
      bool root = j < T;
      Span *s = ARENA_NEW(a, Span, OPENTELEMETRY__PROTO__TRACE__V1__SPAN__INIT);
      uint8_t *sid = arena_alloc(a, 8);
      if (!s || !sid) goto oom;
      spans[j - lo] = s;
      b->rec_trace[j] = t;
      p->traces[t].count++;
      rng_id(rng, sid, 8);
      s->trace_id = (ProtobufCBinaryData){16, p->traces[t].id};
      s->span_id = (ProtobufCBinaryData){8, sid};
      if (!root) {
        uint8_t *parent = arena_alloc(a, 8);
        if (!parent) goto oom;
        memcpy(parent, last[t], 8);
        s->parent_span_id = (ProtobufCBinaryData){8, parent};
      }
      memcpy(last[t], sid, 8);
      s->flags = 0x101; /* sampled, with the "has is-remote" bit as SDKs send it */
      int status = http_status(rng);
      const char *method = http_methods[rng_below(rng, 6)];
      const char *route = http_routes[rng_below(rng, 6)];
      if (root) {
        s->kind = OPENTELEMETRY__PROTO__TRACE__V1__SPAN__SPAN_KIND__SPAN_KIND_SERVER;
        s->name = arena_printf(a, "%s %s", method, route);
      } else {
        s->kind = rng_below(rng, 3) ? OPENTELEMETRY__PROTO__TRACE__V1__SPAN__SPAN_KIND__SPAN_KIND_CLIENT
                                    : OPENTELEMETRY__PROTO__TRACE__V1__SPAN__SPAN_KIND__SPAN_KIND_INTERNAL;
        s->name = (char *)db_ops[rng_below(rng, 6)];
      }
      uint64_t dur = 50000 + (uint64_t)rng_below(rng, 250000000);
      s->start_time_unix_nano = t0 + (uint64_t)j * 1000000 + rng_below(rng, 1000000);
      s->end_time_unix_nano = s->start_time_unix_nano + dur;
      kvs k;
      kvs_init(a, &k, 10);
      kv_str(a, &k, "http.method", (char *)method);
      kv_str(a, &k, "http.route", (char *)route);
      kv_int(a, &k, "http.status_code", status);
      kv_str(a, &k, "net.peer.name", arena_printf(a, "db-%" PRIu32 ".internal", rng_below(rng, 8)));
      kv_str(a, &k, "db.system", j % 2 ? "postgresql" : "redis");
      kv_str(a, &k, "enduser.id", arena_printf(a, "user-%08" PRIx32, rng_below(rng, 0xffffffffu)));
      kv_str(a, &k, "session.id", arena_printf(a, "%016" PRIx64, pl_rng_next(rng)));
      kv_double(a, &k, "app.cache.hit_ratio", (double)rng_below(rng, 1000) / 1000.0);
      kv_bool(a, &k, "app.cache.hit", rng_below(rng, 2));
      kv_int(a, &k, "thread.id", 1000 + rng_below(rng, 64));
      s->attributes = k.v;
      s->n_attributes = k.n;
      Status *st = ARENA_NEW(a, Status, OPENTELEMETRY__PROTO__TRACE__V1__STATUS__INIT);
      if (!st) goto oom;
      if (status >= 500) {
        st->code = OPENTELEMETRY__PROTO__TRACE__V1__STATUS__STATUS_CODE__STATUS_CODE_ERROR;
        st->message = "upstream failure";
      } else {
        st->code = rng_below(rng, 2) ? OPENTELEMETRY__PROTO__TRACE__V1__STATUS__STATUS_CODE__STATUS_CODE_OK
                                     : OPENTELEMETRY__PROTO__TRACE__V1__STATUS__STATUS_CODE__STATUS_CODE_UNSET;
      }
      s->status = st;
      if (j % 8 == 3 || status >= 500) {
        SpanEvent *ev = ARENA_NEW(a, SpanEvent, OPENTELEMETRY__PROTO__TRACE__V1__SPAN__EVENT__INIT);
        SpanEvent **evs = ARENA_ARRAY(a, SpanEvent *, 1);
        if (!ev || !evs) goto oom;
        ev->time_unix_nano = s->start_time_unix_nano + dur / 2;
        kvs ek;
        kvs_init(a, &ek, 2);
        if (status >= 500) {
          ev->name = "exception";
          kv_str(a, &ek, "exception.type", "TimeoutError");
          kv_str(a, &ek, "exception.message", "deadline exceeded after 250ms");
        } else {
          ev->name = "cache.miss";
          kv_str(a, &ek, "cache.key", arena_printf(a, "order:%" PRIu32, rng_below(rng, 100000)));
        }
        ev->attributes = ek.v;
        ev->n_attributes = ek.n;
        evs[0] = ev;
        s->events = evs;
        s->n_events = 1;
      }
    }
  }
  free(last);
  if (a->failed) return -ENOMEM;
  b->msg = &req->base;
  return 0;
oom:
  free(last);
  return -ENOMEM;
}

static int build_logs(build *b, pl_payload *p, const pl_options *o, uint32_t nres, uint64_t t0) {
  static const struct { int num; const char *text; } sev[] = {{9, "INFO"}, {9, "INFO"}, {9, "INFO"},
                                                              {5, "DEBUG"}, {13, "WARN"}, {17, "ERROR"}};
  arena *a = &b->a;
  pl_rng *rng = &p->rng;
  uint32_t S = o->items, T = o->traces;
  LogsRequest *req = ARENA_NEW(a, LogsRequest, OPENTELEMETRY__PROTO__COLLECTOR__LOGS__V1__EXPORT_LOGS_SERVICE_REQUEST__INIT);
  ResourceLogs **rl = ARENA_ARRAY(a, ResourceLogs *, nres);
  if (!req || !rl) return -ENOMEM;
  req->resource_logs = rl;
  req->n_resource_logs = nres;
  for (uint32_t r = 0; r < nres; r++) {
    uint32_t lo, hi;
    resource_block(S, nres, r, &lo, &hi);
    ResourceLogs *x = ARENA_NEW(a, ResourceLogs, OPENTELEMETRY__PROTO__LOGS__V1__RESOURCE_LOGS__INIT);
    ScopeLogs *sl = ARENA_NEW(a, ScopeLogs, OPENTELEMETRY__PROTO__LOGS__V1__SCOPE_LOGS__INIT);
    ScopeLogs **slv = ARENA_ARRAY(a, ScopeLogs *, 1);
    LogRecord **recs = ARENA_ARRAY(a, LogRecord *, hi - lo);
    if (!x || !sl || !slv || !recs) return -ENOMEM;
    rl[r] = x;
    x->resource = make_resource(a, r, rng);
    x->schema_url = "https://opentelemetry.io/schemas/1.24.0";
    x->scope_logs = slv;
    x->n_scope_logs = 1;
    slv[0] = sl;
    sl->scope = make_scope(a, "io.opentelemetry.logs.appender");
    sl->log_records = recs;
    sl->n_log_records = hi - lo;
    for (uint32_t j = lo; j < hi; j++) {
      uint32_t t = j % T;
      LogRecord *l = ARENA_NEW(a, LogRecord, OPENTELEMETRY__PROTO__LOGS__V1__LOG_RECORD__INIT);
      AnyValue *body = ARENA_NEW(a, AnyValue, OPENTELEMETRY__PROTO__COMMON__V1__ANY_VALUE__INIT);
      uint8_t *sid = arena_alloc(a, 8);
      if (!l || !body || !sid) return -ENOMEM;
      recs[j - lo] = l;
      b->rec_trace[j] = t;
      p->traces[t].count++;
      rng_id(rng, sid, 8);
      int status = http_status(rng);
      int si = status >= 500 ? 5 : (int)rng_below(rng, 5);
      const char *method = http_methods[rng_below(rng, 6)];
      const char *route = http_routes[rng_below(rng, 6)];
      l->time_unix_nano = t0 + (uint64_t)j * 1000000 + rng_below(rng, 1000000);
      l->observed_time_unix_nano = l->time_unix_nano + 1000000;
      l->severity_number = (Opentelemetry__Proto__Logs__V1__SeverityNumber)sev[si].num;
      l->severity_text = (char *)sev[si].text;
      body->value_case = OPENTELEMETRY__PROTO__COMMON__V1__ANY_VALUE__VALUE_STRING_VALUE;
      body->string_value = arena_printf(a, "%s %s -> %d in %" PRIu32 "ms (user-%08" PRIx32 ")", method, route,
                                        status, 1 + rng_below(rng, 900), rng_below(rng, 0xffffffffu));
      l->body = body;
      l->flags = 1;
      l->trace_id = (ProtobufCBinaryData){16, p->traces[t].id};
      l->span_id = (ProtobufCBinaryData){8, sid};
      kvs k;
      kvs_init(a, &k, 4);
      kv_str(a, &k, "code.function", "handle_request");
      kv_str(a, &k, "http.route", (char *)route);
      kv_int(a, &k, "http.status_code", status);
      kv_str(a, &k, "enduser.id", arena_printf(a, "user-%08" PRIx32, rng_below(rng, 0xffffffffu)));
      l->attributes = k.v;
      l->n_attributes = k.n;
    }
  }
  if (a->failed) return -ENOMEM;
  b->msg = &req->base;
  return 0;
}

static const double hist_bounds[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5};
#define HIST_NB (sizeof(hist_bounds) / sizeof(hist_bounds[0]))

static void point_attrs(arena *a, pl_rng *rng, KeyValue ***out, size_t *n) {
  kvs k;
  kvs_init(a, &k, 3);
  kv_str(a, &k, "http.route", (char *)http_routes[rng_below(rng, 6)]);
  kv_str(a, &k, "http.method", (char *)http_methods[rng_below(rng, 6)]);
  kv_int(a, &k, "http.status_code", http_status(rng));
  *out = k.v;
  *n = k.n;
}

/* Per resource: a histogram, a gauge and a sum; the resource's data points are dealt round-robin over them. */
static int build_metrics(build *b, pl_payload *p, const pl_options *o, uint32_t nres, uint64_t t0) {
  arena *a = &b->a;
  pl_rng *rng = &p->rng;
  uint32_t S = o->items;
  MetricsRequest *req =
      ARENA_NEW(a, MetricsRequest, OPENTELEMETRY__PROTO__COLLECTOR__METRICS__V1__EXPORT_METRICS_SERVICE_REQUEST__INIT);
  ResourceMetrics **rm = ARENA_ARRAY(a, ResourceMetrics *, nres);
  if (!req || !rm) return -ENOMEM;
  req->resource_metrics = rm;
  req->n_resource_metrics = nres;
  for (uint32_t r = 0; r < nres; r++) {
    uint32_t lo, hi;
    resource_block(S, nres, r, &lo, &hi);
    uint32_t npts = hi - lo, nm = npts < 3 ? npts : 3;
    ResourceMetrics *x = ARENA_NEW(a, ResourceMetrics, OPENTELEMETRY__PROTO__METRICS__V1__RESOURCE_METRICS__INIT);
    ScopeMetrics *sm = ARENA_NEW(a, ScopeMetrics, OPENTELEMETRY__PROTO__METRICS__V1__SCOPE_METRICS__INIT);
    ScopeMetrics **smv = ARENA_ARRAY(a, ScopeMetrics *, 1);
    Metric **ms = ARENA_ARRAY(a, Metric *, nm);
    if (!x || !sm || !smv || !ms) return -ENOMEM;
    rm[r] = x;
    x->resource = make_resource(a, r, rng);
    x->schema_url = "https://opentelemetry.io/schemas/1.24.0";
    x->scope_metrics = smv;
    x->n_scope_metrics = 1;
    smv[0] = sm;
    sm->scope = make_scope(a, "io.opentelemetry.runtime-metrics");
    sm->metrics = ms;
    sm->n_metrics = nm;
    for (uint32_t m = 0; m < nm; m++) {
      uint32_t n = npts / nm + (m < npts % nm);
      Metric *me = ARENA_NEW(a, Metric, OPENTELEMETRY__PROTO__METRICS__V1__METRIC__INIT);
      if (!me) return -ENOMEM;
      ms[m] = me;
      if (m == 0) {
        me->name = "http.server.request.duration";
        me->description = "Duration of HTTP server requests.";
        me->unit = "s";
        Histogram *h = ARENA_NEW(a, Histogram, OPENTELEMETRY__PROTO__METRICS__V1__HISTOGRAM__INIT);
        HistogramDataPoint **dps = ARENA_ARRAY(a, HistogramDataPoint *, n);
        if (!h || !dps) return -ENOMEM;
        h->aggregation_temporality = OPENTELEMETRY__PROTO__METRICS__V1__AGGREGATION_TEMPORALITY__AGGREGATION_TEMPORALITY_CUMULATIVE;
        h->data_points = dps;
        h->n_data_points = n;
        for (uint32_t i = 0; i < n; i++) {
          HistogramDataPoint *dp = ARENA_NEW(a, HistogramDataPoint, OPENTELEMETRY__PROTO__METRICS__V1__HISTOGRAM_DATA_POINT__INIT);
          uint64_t *bc = ARENA_ARRAY(a, uint64_t, HIST_NB + 1);
          if (!dp || !bc) return -ENOMEM;
          dps[i] = dp;
          point_attrs(a, rng, &dp->attributes, &dp->n_attributes);
          dp->start_time_unix_nano = t0 - 60000000000ull;
          dp->time_unix_nano = t0 + i * 1000000ull;
          uint64_t count = 0;
          for (size_t k = 0; k <= HIST_NB; k++) count += bc[k] = rng_below(rng, 50);
          dp->count = count;
          dp->sum = (double)count * 0.042;
          dp->bucket_counts = bc;
          dp->n_bucket_counts = HIST_NB + 1;
          dp->explicit_bounds = (double *)hist_bounds;
          dp->n_explicit_bounds = HIST_NB;
          dp->min = 0.001;
          dp->max = 7.5;
        }
        me->data_case = OPENTELEMETRY__PROTO__METRICS__V1__METRIC__DATA_HISTOGRAM;
        me->histogram = h;
        continue;
      }
      NumberDataPoint **dps = ARENA_ARRAY(a, NumberDataPoint *, n);
      if (!dps) return -ENOMEM;
      for (uint32_t i = 0; i < n; i++) {
        NumberDataPoint *dp = ARENA_NEW(a, NumberDataPoint, OPENTELEMETRY__PROTO__METRICS__V1__NUMBER_DATA_POINT__INIT);
        if (!dp) return -ENOMEM;
        dps[i] = dp;
        point_attrs(a, rng, &dp->attributes, &dp->n_attributes);
        dp->time_unix_nano = t0 + i * 1000000ull;
        if (m == 1) {
          dp->value_case = OPENTELEMETRY__PROTO__METRICS__V1__NUMBER_DATA_POINT__VALUE_AS_DOUBLE;
          dp->as_double = (double)rng_below(rng, 100000) / 100.0;
        } else {
          dp->start_time_unix_nano = t0 - 60000000000ull;
          dp->value_case = OPENTELEMETRY__PROTO__METRICS__V1__NUMBER_DATA_POINT__VALUE_AS_INT;
          dp->as_int = (int64_t)rng_below(rng, 1u << 30) * 4096; /* large enough to need a string in JSON */
        }
      }
      if (m == 1) {
        me->name = "process.cpu.utilization";
        me->description = "CPU utilisation of the process.";
        me->unit = "1";
        Gauge *g = ARENA_NEW(a, Gauge, OPENTELEMETRY__PROTO__METRICS__V1__GAUGE__INIT);
        if (!g) return -ENOMEM;
        g->data_points = dps;
        g->n_data_points = n;
        me->data_case = OPENTELEMETRY__PROTO__METRICS__V1__METRIC__DATA_GAUGE;
        me->gauge = g;
      } else {
        me->name = "http.server.request.body.size";
        me->description = "Bytes received in request bodies.";
        me->unit = "By";
        Sum *su = ARENA_NEW(a, Sum, OPENTELEMETRY__PROTO__METRICS__V1__SUM__INIT);
        if (!su) return -ENOMEM;
        su->data_points = dps;
        su->n_data_points = n;
        su->aggregation_temporality = OPENTELEMETRY__PROTO__METRICS__V1__AGGREGATION_TEMPORALITY__AGGREGATION_TEMPORALITY_CUMULATIVE;
        su->is_monotonic = 1;
        me->data_case = OPENTELEMETRY__PROTO__METRICS__V1__METRIC__DATA_SUM;
        me->sum = su;
      }
    }
  }
  if (a->failed) return -ENOMEM;
  b->msg = &req->base;
  return 0;
}

/* ---------------------------------------------------------------------------------------------- wire walk */

static bool read_varint(const uint8_t *buf, size_t end, size_t *pos, uint64_t *out) {
  uint64_t v = 0;
  for (int shift = 0; shift < 70 && *pos < end; shift += 7) {
    uint8_t c = buf[(*pos)++];
    v |= (uint64_t)(c & 0x7f) << shift;
    if (!(c & 0x80)) {
      *out = v;
      return true;
    }
  }
  return false;
}

/*
 * Records, in wire order, the offset of every 16-byte value of the field path[depth..last] inside [pos, end).
 * Returns false for malformed input or more matches than p can hold.
 */
static bool walk(const uint8_t *buf, size_t pos, size_t end, const uint32_t *path, int depth, int last,
                 pl_payload *p, size_t cap) {
  while (pos < end) {
    uint64_t tag, len;
    if (!read_varint(buf, end, &pos, &tag)) return false;
    switch (tag & 7) {
    case 0:
      if (!read_varint(buf, end, &pos, &len)) return false;
      break;
    case 1:
      if (end - pos < 8) return false;
      pos += 8;
      break;
    case 5:
      if (end - pos < 4) return false;
      pos += 4;
      break;
    case 2:
      if (!read_varint(buf, end, &pos, &len) || len > end - pos) return false;
      if ((tag >> 3) == path[depth]) {
        if (depth == last) {
          if (len != 16 || p->n_ids >= cap) return false;
          p->id_off[p->n_ids++] = pos;
        } else if (!walk(buf, pos, pos + len, path, depth + 1, last, p, cap)) {
          return false;
        }
      }
      pos += len;
      break;
    default:
      return false;
    }
  }
  return true;
}

/* ---------------------------------------------------------------------------------------------- JSON */

/* Growable output buffer; after an allocation failure every append is a no-op and err stays set. */
typedef struct jbuf {
  char *p;
  size_t len, cap;
  bool err;
  pl_payload *pl; /* where trace-ID offsets are recorded */
  size_t id_cap;
} jbuf;

static bool jb_reserve(jbuf *j, size_t n) {
  if (j->err) return false;
  if (j->cap - j->len > n) return true;
  size_t cap = j->cap ? j->cap : 4096;
  while (cap - j->len <= n) cap *= 2;
  char *q = realloc(j->p, cap);
  if (!q) {
    j->err = true;
    return false;
  }
  j->p = q;
  j->cap = cap;
  return true;
}

static void jb_mem(jbuf *j, const char *s, size_t n) {
  if (!jb_reserve(j, n)) return;
  memcpy(j->p + j->len, s, n);
  j->len += n;
}

static void jb_raw(jbuf *j, const char *s) { jb_mem(j, s, strlen(s)); }

static void jb_fmt(jbuf *j, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void jb_fmt(jbuf *j, const char *fmt, ...) {
  char tmp[64];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
  va_end(ap);
  if (n > 0) jb_mem(j, tmp, (size_t)n < sizeof(tmp) ? (size_t)n : sizeof(tmp) - 1);
}

/* A JSON string literal with the escapes RFC 8259 requires. */
static void jb_str(jbuf *j, const char *s) {
  jb_mem(j, "\"", 1);
  for (const unsigned char *c = (const unsigned char *)s; *c; c++) {
    if (*c == '"' || *c == '\\') {
      char e[2] = {'\\', (char)*c};
      jb_mem(j, e, 2);
    } else if (*c < 0x20) {
      jb_fmt(j, "\\u%04x", *c);
    } else {
      jb_mem(j, (const char *)c, 1);
    }
  }
  jb_mem(j, "\"", 1);
}

/* "key": as the start of a member; first is cleared after the first member of an object. */
static void jb_key(jbuf *j, bool *first, const char *key) {
  if (!*first) jb_mem(j, ",", 1);
  *first = false;
  jb_str(j, key);
  jb_mem(j, ":", 1);
}

static void jb_hex(jbuf *j, const uint8_t *d, size_t n, bool record) {
  if (!jb_reserve(j, 2 * n + 2)) return;
  j->p[j->len++] = '"';
  if (record) {
    if (j->pl->n_ids < j->id_cap) j->pl->id_off[j->pl->n_ids++] = j->len;
    else j->err = true;
  }
  for (size_t i = 0; i < n; i++) {
    j->p[j->len++] = hexdig[d[i] >> 4];
    j->p[j->len++] = hexdig[d[i] & 15];
  }
  j->p[j->len++] = '"';
}

static void jb_base64(jbuf *j, const uint8_t *d, size_t n) {
  static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  jb_mem(j, "\"", 1);
  for (size_t i = 0; i < n; i += 3) {
    uint32_t v = (uint32_t)d[i] << 16 | (i + 1 < n ? (uint32_t)d[i + 1] << 8 : 0) | (i + 2 < n ? d[i + 2] : 0);
    char o[4] = {b64[v >> 18], b64[(v >> 12) & 63], i + 1 < n ? b64[(v >> 6) & 63] : '=', i + 2 < n ? b64[v & 63] : '='};
    jb_mem(j, o, 4);
  }
  jb_mem(j, "\"", 1);
}

/* proto3 JSON: 64-bit integers as strings; non-finite doubles as the strings "NaN", "Infinity", "-Infinity". */
static void jb_u64(jbuf *j, uint64_t v) { jb_fmt(j, "\"%" PRIu64 "\"", v); }
static void jb_i64(jbuf *j, int64_t v) { jb_fmt(j, "\"%" PRId64 "\"", v); }
static void jb_double(jbuf *j, double v) {
  if (v != v) jb_raw(j, "\"NaN\"");
  else if (v > 1.7976931348623157e308) jb_raw(j, "\"Infinity\"");
  else if (v < -1.7976931348623157e308) jb_raw(j, "\"-Infinity\"");
  else jb_fmt(j, "%.17g", v);
}

static void jb_kvs(jbuf *j, KeyValue *const *kv, size_t n);

static void jb_anyvalue(jbuf *j, const AnyValue *v) {
  bool first = true;
  jb_mem(j, "{", 1);
  if (v) {
    switch (v->value_case) {
    case OPENTELEMETRY__PROTO__COMMON__V1__ANY_VALUE__VALUE_STRING_VALUE:
      jb_key(j, &first, "stringValue");
      jb_str(j, v->string_value);
      break;
    case OPENTELEMETRY__PROTO__COMMON__V1__ANY_VALUE__VALUE_BOOL_VALUE:
      jb_key(j, &first, "boolValue");
      jb_raw(j, v->bool_value ? "true" : "false");
      break;
    case OPENTELEMETRY__PROTO__COMMON__V1__ANY_VALUE__VALUE_INT_VALUE:
      jb_key(j, &first, "intValue");
      jb_i64(j, v->int_value);
      break;
    case OPENTELEMETRY__PROTO__COMMON__V1__ANY_VALUE__VALUE_DOUBLE_VALUE:
      jb_key(j, &first, "doubleValue");
      jb_double(j, v->double_value);
      break;
    case OPENTELEMETRY__PROTO__COMMON__V1__ANY_VALUE__VALUE_ARRAY_VALUE:
      jb_key(j, &first, "arrayValue");
      jb_raw(j, "{\"values\":[");
      for (size_t i = 0; v->array_value && i < v->array_value->n_values; i++) {
        if (i) jb_mem(j, ",", 1);
        jb_anyvalue(j, v->array_value->values[i]);
      }
      jb_raw(j, "]}");
      break;
    case OPENTELEMETRY__PROTO__COMMON__V1__ANY_VALUE__VALUE_KVLIST_VALUE:
      jb_key(j, &first, "kvlistValue");
      jb_raw(j, "{\"values\":");
      jb_kvs(j, v->kvlist_value ? v->kvlist_value->values : NULL, v->kvlist_value ? v->kvlist_value->n_values : 0);
      jb_raw(j, "}");
      break;
    case OPENTELEMETRY__PROTO__COMMON__V1__ANY_VALUE__VALUE_BYTES_VALUE:
      jb_key(j, &first, "bytesValue");
      jb_base64(j, v->bytes_value.data, v->bytes_value.len);
      break;
    default:
      break;
    }
  }
  jb_mem(j, "}", 1);
}

/* A JSON array of {"key":..,"value":{..}}. */
static void jb_kvs(jbuf *j, KeyValue *const *kv, size_t n) {
  jb_mem(j, "[", 1);
  for (size_t i = 0; i < n; i++) {
    if (i) jb_mem(j, ",", 1);
    jb_raw(j, "{\"key\":");
    jb_str(j, kv[i]->key);
    jb_raw(j, ",\"value\":");
    jb_anyvalue(j, kv[i]->value);
    jb_mem(j, "}", 1);
  }
  jb_mem(j, "]", 1);
}

/* "attributes":[..] member, omitted when empty (proto3 JSON drops defaults). */
static void jb_attrs(jbuf *j, bool *first, const char *key, KeyValue *const *kv, size_t n) {
  if (!n) return;
  jb_key(j, first, key);
  jb_kvs(j, kv, n);
}

static void jb_str_member(jbuf *j, bool *first, const char *key, const char *s) {
  if (!s || !*s) return;
  jb_key(j, first, key);
  jb_str(j, s);
}

static void jb_u64_member(jbuf *j, bool *first, const char *key, uint64_t v) {
  if (!v) return;
  jb_key(j, first, key);
  jb_u64(j, v);
}

static void jb_uint_member(jbuf *j, bool *first, const char *key, uint64_t v) {
  if (!v) return;
  jb_key(j, first, key);
  jb_fmt(j, "%" PRIu64, v);
}

static void jb_resource(jbuf *j, bool *first, const Resource *r) {
  if (!r) return;
  bool f = true;
  jb_key(j, first, "resource");
  jb_mem(j, "{", 1);
  jb_attrs(j, &f, "attributes", r->attributes, r->n_attributes);
  jb_uint_member(j, &f, "droppedAttributesCount", r->dropped_attributes_count);
  jb_mem(j, "}", 1);
}

static void jb_scope(jbuf *j, bool *first, const Scope *s) {
  if (!s) return;
  bool f = true;
  jb_key(j, first, "scope");
  jb_mem(j, "{", 1);
  jb_str_member(j, &f, "name", s->name);
  jb_str_member(j, &f, "version", s->version);
  jb_attrs(j, &f, "attributes", s->attributes, s->n_attributes);
  jb_uint_member(j, &f, "droppedAttributesCount", s->dropped_attributes_count);
  jb_mem(j, "}", 1);
}

static void jb_id_member(jbuf *j, bool *first, const char *key, ProtobufCBinaryData d, bool record) {
  if (!d.len) return;
  jb_key(j, first, key);
  jb_hex(j, d.data, d.len, record);
}

static void jb_span(jbuf *j, const Span *s) {
  bool f = true;
  jb_mem(j, "{", 1);
  jb_id_member(j, &f, "traceId", s->trace_id, true);
  jb_id_member(j, &f, "spanId", s->span_id, false);
  jb_str_member(j, &f, "traceState", s->trace_state);
  jb_id_member(j, &f, "parentSpanId", s->parent_span_id, false);
  jb_uint_member(j, &f, "flags", s->flags);
  jb_str_member(j, &f, "name", s->name);
  jb_uint_member(j, &f, "kind", (uint64_t)s->kind);
  jb_u64_member(j, &f, "startTimeUnixNano", s->start_time_unix_nano);
  jb_u64_member(j, &f, "endTimeUnixNano", s->end_time_unix_nano);
  jb_attrs(j, &f, "attributes", s->attributes, s->n_attributes);
  jb_uint_member(j, &f, "droppedAttributesCount", s->dropped_attributes_count);
  if (s->n_events) {
    jb_key(j, &f, "events");
    jb_mem(j, "[", 1);
    for (size_t i = 0; i < s->n_events; i++) {
      const SpanEvent *e = s->events[i];
      bool ef = true;
      jb_raw(j, i ? ",{" : "{");
      jb_u64_member(j, &ef, "timeUnixNano", e->time_unix_nano);
      jb_str_member(j, &ef, "name", e->name);
      jb_attrs(j, &ef, "attributes", e->attributes, e->n_attributes);
      jb_uint_member(j, &ef, "droppedAttributesCount", e->dropped_attributes_count);
      jb_mem(j, "}", 1);
    }
    jb_mem(j, "]", 1);
  }
  jb_uint_member(j, &f, "droppedEventsCount", s->dropped_events_count);
  jb_uint_member(j, &f, "droppedLinksCount", s->dropped_links_count); /* the generator emits no links */
  if (s->status) {
    bool sf = true;
    jb_key(j, &f, "status");
    jb_mem(j, "{", 1);
    jb_str_member(j, &sf, "message", s->status->message);
    jb_uint_member(j, &sf, "code", (uint64_t)s->status->code);
    jb_mem(j, "}", 1);
  }
  jb_mem(j, "}", 1);
}

static void jb_log(jbuf *j, const LogRecord *l) {
  bool f = true;
  jb_mem(j, "{", 1);
  jb_u64_member(j, &f, "timeUnixNano", l->time_unix_nano);
  jb_u64_member(j, &f, "observedTimeUnixNano", l->observed_time_unix_nano);
  jb_uint_member(j, &f, "severityNumber", (uint64_t)l->severity_number);
  jb_str_member(j, &f, "severityText", l->severity_text);
  if (l->body) {
    jb_key(j, &f, "body");
    jb_anyvalue(j, l->body);
  }
  jb_attrs(j, &f, "attributes", l->attributes, l->n_attributes);
  jb_uint_member(j, &f, "droppedAttributesCount", l->dropped_attributes_count);
  jb_uint_member(j, &f, "flags", l->flags);
  jb_id_member(j, &f, "traceId", l->trace_id, true);
  jb_id_member(j, &f, "spanId", l->span_id, false);
  jb_str_member(j, &f, "eventName", l->event_name);
  jb_mem(j, "}", 1);
}

static void jb_point_common(jbuf *j, bool *f, KeyValue *const *attrs, size_t n, uint64_t start, uint64_t t) {
  jb_attrs(j, f, "attributes", attrs, n);
  jb_u64_member(j, f, "startTimeUnixNano", start);
  jb_u64_member(j, f, "timeUnixNano", t);
}

static void jb_number_points(jbuf *j, bool *f, NumberDataPoint *const *dps, size_t n) {
  jb_key(j, f, "dataPoints");
  jb_mem(j, "[", 1);
  for (size_t i = 0; i < n; i++) {
    const NumberDataPoint *dp = dps[i];
    bool pf = true;
    jb_raw(j, i ? ",{" : "{");
    jb_point_common(j, &pf, dp->attributes, dp->n_attributes, dp->start_time_unix_nano, dp->time_unix_nano);
    if (dp->value_case == OPENTELEMETRY__PROTO__METRICS__V1__NUMBER_DATA_POINT__VALUE_AS_DOUBLE) {
      jb_key(j, &pf, "asDouble");
      jb_double(j, dp->as_double);
    } else if (dp->value_case == OPENTELEMETRY__PROTO__METRICS__V1__NUMBER_DATA_POINT__VALUE_AS_INT) {
      jb_key(j, &pf, "asInt");
      jb_i64(j, dp->as_int);
    }
    jb_uint_member(j, &pf, "flags", dp->flags);
    jb_mem(j, "}", 1);
  }
  jb_mem(j, "]", 1);
}

static void jb_metric(jbuf *j, const Metric *m) {
  bool f = true;
  jb_mem(j, "{", 1);
  jb_str_member(j, &f, "name", m->name);
  jb_str_member(j, &f, "description", m->description);
  jb_str_member(j, &f, "unit", m->unit);
  bool df = true;
  switch (m->data_case) {
  case OPENTELEMETRY__PROTO__METRICS__V1__METRIC__DATA_GAUGE:
    jb_key(j, &f, "gauge");
    jb_mem(j, "{", 1);
    jb_number_points(j, &df, m->gauge->data_points, m->gauge->n_data_points);
    jb_mem(j, "}", 1);
    break;
  case OPENTELEMETRY__PROTO__METRICS__V1__METRIC__DATA_SUM:
    jb_key(j, &f, "sum");
    jb_mem(j, "{", 1);
    jb_number_points(j, &df, m->sum->data_points, m->sum->n_data_points);
    jb_uint_member(j, &df, "aggregationTemporality", (uint64_t)m->sum->aggregation_temporality);
    if (m->sum->is_monotonic) {
      jb_key(j, &df, "isMonotonic");
      jb_raw(j, "true");
    }
    jb_mem(j, "}", 1);
    break;
  case OPENTELEMETRY__PROTO__METRICS__V1__METRIC__DATA_HISTOGRAM: {
    const Histogram *h = m->histogram;
    jb_key(j, &f, "histogram");
    jb_mem(j, "{", 1);
    jb_key(j, &df, "dataPoints");
    jb_mem(j, "[", 1);
    for (size_t i = 0; i < h->n_data_points; i++) {
      const HistogramDataPoint *dp = h->data_points[i];
      bool pf = true;
      jb_raw(j, i ? ",{" : "{");
      jb_point_common(j, &pf, dp->attributes, dp->n_attributes, dp->start_time_unix_nano, dp->time_unix_nano);
      jb_u64_member(j, &pf, "count", dp->count);
      jb_key(j, &pf, "sum");
      jb_double(j, dp->sum);
      jb_key(j, &pf, "bucketCounts");
      jb_mem(j, "[", 1);
      for (size_t k = 0; k < dp->n_bucket_counts; k++) {
        if (k) jb_mem(j, ",", 1);
        jb_u64(j, dp->bucket_counts[k]);
      }
      jb_raw(j, "]");
      jb_key(j, &pf, "explicitBounds");
      jb_mem(j, "[", 1);
      for (size_t k = 0; k < dp->n_explicit_bounds; k++) {
        if (k) jb_mem(j, ",", 1);
        jb_double(j, dp->explicit_bounds[k]);
      }
      jb_raw(j, "]");
      jb_uint_member(j, &pf, "flags", dp->flags);
      jb_key(j, &pf, "min");
      jb_double(j, dp->min);
      jb_key(j, &pf, "max");
      jb_double(j, dp->max);
      jb_mem(j, "}", 1);
    }
    jb_mem(j, "]", 1);
    jb_uint_member(j, &df, "aggregationTemporality", (uint64_t)h->aggregation_temporality);
    jb_mem(j, "}", 1);
    break;
  }
  default:
    break; /* the generator emits no exponential histograms or summaries */
  }
  jb_mem(j, "}", 1);
}

/*
 * The three request shapes differ only in names and the leaf record type, so one loop walks
 * resource -> scope -> records for all of them, driven by this table.
 */
typedef struct json_shape {
  const char *resources_key, *scopes_key, *records_key;
  void (*record)(jbuf *, const void *);
} json_shape;

static void jb_span_v(jbuf *j, const void *r) { jb_span(j, r); }
static void jb_log_v(jbuf *j, const void *r) { jb_log(j, r); }
static void jb_metric_v(jbuf *j, const void *r) { jb_metric(j, r); }

static const json_shape json_shapes[PL_SIGNAL_COUNT] = {
    {"resourceSpans", "scopeSpans", "spans", jb_span_v},
    {"resourceLogs", "scopeLogs", "logRecords", jb_log_v},
    {"resourceMetrics", "scopeMetrics", "metrics", jb_metric_v},
};

/* The envelope fields every signal shares, extracted per signal so the writer below stays generic. */
typedef struct json_scope { const Scope *scope; const char *schema_url; void *const *recs; size_t n; } json_scope;

static void jb_request(jbuf *j, pl_signal sig, const ProtobufCMessage *msg) {
  const json_shape *sh = &json_shapes[sig];
  size_t nres = 0;
  if (sig == PL_TRACES) nres = ((const TraceRequest *)msg)->n_resource_spans;
  else if (sig == PL_LOGS) nres = ((const LogsRequest *)msg)->n_resource_logs;
  else nres = ((const MetricsRequest *)msg)->n_resource_metrics;
  jb_raw(j, "{");
  bool f = true;
  jb_key(j, &f, sh->resources_key);
  jb_mem(j, "[", 1);
  for (size_t r = 0; r < nres; r++) {
    const Resource *res;
    const char *schema;
    size_t nscope;
    if (sig == PL_TRACES) {
      const ResourceSpans *x = ((const TraceRequest *)msg)->resource_spans[r];
      res = x->resource, schema = x->schema_url, nscope = x->n_scope_spans;
    } else if (sig == PL_LOGS) {
      const ResourceLogs *x = ((const LogsRequest *)msg)->resource_logs[r];
      res = x->resource, schema = x->schema_url, nscope = x->n_scope_logs;
    } else {
      const ResourceMetrics *x = ((const MetricsRequest *)msg)->resource_metrics[r];
      res = x->resource, schema = x->schema_url, nscope = x->n_scope_metrics;
    }
    bool rf = true;
    jb_raw(j, r ? ",{" : "{");
    jb_resource(j, &rf, res);
    jb_key(j, &rf, sh->scopes_key);
    jb_mem(j, "[", 1);
    for (size_t s = 0; s < nscope; s++) {
      json_scope js;
      if (sig == PL_TRACES) {
        const ScopeSpans *x = ((const TraceRequest *)msg)->resource_spans[r]->scope_spans[s];
        js = (json_scope){x->scope, x->schema_url, (void *const *)x->spans, x->n_spans};
      } else if (sig == PL_LOGS) {
        const ScopeLogs *x = ((const LogsRequest *)msg)->resource_logs[r]->scope_logs[s];
        js = (json_scope){x->scope, x->schema_url, (void *const *)x->log_records, x->n_log_records};
      } else {
        const ScopeMetrics *x = ((const MetricsRequest *)msg)->resource_metrics[r]->scope_metrics[s];
        js = (json_scope){x->scope, x->schema_url, (void *const *)x->metrics, x->n_metrics};
      }
      bool sf = true;
      jb_raw(j, s ? ",{" : "{");
      jb_scope(j, &sf, js.scope);
      jb_key(j, &sf, sh->records_key);
      jb_mem(j, "[", 1);
      for (size_t i = 0; i < js.n; i++) {
        if (i) jb_mem(j, ",", 1);
        sh->record(j, js.recs[i]);
      }
      jb_mem(j, "]", 1);
      jb_str_member(j, &sf, "schemaUrl", js.schema_url);
      jb_mem(j, "}", 1);
    }
    jb_mem(j, "]", 1);
    jb_str_member(j, &rf, "schemaUrl", schema);
    jb_mem(j, "}", 1);
  }
  jb_raw(j, "]}");
}

/* ---------------------------------------------------------------------------------------------- payload */

void pl_options_default(pl_options *o) {
  *o = (pl_options){.signal = PL_TRACES, .encoding = PL_PROTOBUF, .items = 100, .traces = 10, .resources = 0,
                    .seed = 1, .base_time_ns = 0};
}

void pl_payload_dispose(pl_payload *p) {
  free(p->body);
  free(p->traces);
  free(p->id_off);
  free(p->id_trace);
  memset(p, 0, sizeof(*p));
}

/* Writes every trace's current ID at each of its recorded positions (raw bytes, or hex for JSON). */
static void patch_all(pl_payload *p) {
  for (size_t i = 0; i < p->n_ids; i++) {
    const uint8_t *id = p->traces[p->id_trace[i]].id;
    uint8_t *dst = p->body + p->id_off[i];
    if (p->encoding == PL_JSON) {
      for (int k = 0; k < 16; k++) {
        dst[2 * k] = (uint8_t)hexdig[id[k] >> 4];
        dst[2 * k + 1] = (uint8_t)hexdig[id[k] & 15];
      }
    } else {
      memcpy(dst, id, 16);
    }
  }
}

/* True when every recorded position holds its trace's ID: the scan and the build agree. */
static bool ids_consistent(const pl_payload *p) {
  for (size_t i = 0; i < p->n_ids; i++) {
    const uint8_t *id = p->traces[p->id_trace[i]].id;
    const uint8_t *at = p->body + p->id_off[i];
    if (p->encoding == PL_JSON) {
      char hex[33];
      pl_trace_hex(id, hex);
      if (memcmp(at, hex, 32) != 0) return false;
    } else if (memcmp(at, id, 16) != 0) {
      return false;
    }
  }
  return true;
}

int pl_payload_init(pl_payload *p, const pl_options *o) {
  memset(p, 0, sizeof(*p));
  if ((unsigned)o->signal >= PL_SIGNAL_COUNT || o->items == 0 || o->resources > o->items) return -EINVAL;
  bool routed = o->signal != PL_METRICS;
  if (routed && (o->traces == 0 || o->traces > o->items)) return -EINVAL;
  uint32_t nres = o->resources ? o->resources : (o->items < 3 ? o->items : 3);
  uint64_t t0 = o->base_time_ns ? o->base_time_ns : now_ns();
  int rc = -ENOMEM;
  build b = {0};

  p->signal = o->signal;
  p->encoding = o->encoding;
  p->items = o->items;
  pl_rng_seed(&p->rng, o->seed);
  if (routed) {
    p->n_traces = o->traces;
    p->traces = calloc(p->n_traces, sizeof(*p->traces));
    p->id_off = calloc(o->items, sizeof(*p->id_off));
    p->id_trace = calloc(o->items, sizeof(*p->id_trace));
    b.rec_trace = p->id_trace; /* records are encoded in build order, so build order is the id order */
    if (!p->traces || !p->id_off || !p->id_trace) goto fail;
    for (size_t t = 0; t < p->n_traces; t++) rng_id(&p->rng, p->traces[t].id, 16);
  }

  if (o->signal == PL_TRACES) rc = build_traces(&b, p, o, nres, t0);
  else if (o->signal == PL_LOGS) rc = build_logs(&b, p, o, nres, t0);
  else rc = build_metrics(&b, p, o, nres, t0);
  if (rc) goto fail;

  if (o->encoding == PL_JSON) {
    jbuf j = {.pl = p, .id_cap = routed ? o->items : 0};
    jb_request(&j, o->signal, b.msg);
    jb_mem(&j, "", 1); /* NUL for callers that print it; not part of len */
    if (j.err) {
      free(j.p);
      rc = -ENOMEM;
      goto fail;
    }
    p->body = (uint8_t *)j.p;
    p->len = j.len - 1;
  } else {
    size_t n = protobuf_c_message_get_packed_size(b.msg);
    p->body = malloc(n ? n : 1);
    if (!p->body) goto fail;
    p->len = protobuf_c_message_pack(b.msg, p->body);
    if (routed) {
      static const uint32_t trace_path[] = {1, 2, 2, 1}; /* request.resource_spans.scope_spans.spans.trace_id */
      static const uint32_t logs_path[] = {1, 2, 2, 9};  /* request.resource_logs.scope_logs.log_records.trace_id */
      if (!walk(p->body, 0, p->len, o->signal == PL_TRACES ? trace_path : logs_path, 0, 3, p, o->items)) {
        rc = -EPROTO;
        goto fail;
      }
    }
  }
  if (routed && (p->n_ids != o->items || !ids_consistent(p))) {
    rc = -EPROTO;
    goto fail;
  }
  arena_free(&b.a);
  return 0;
fail:
  arena_free(&b.a);
  pl_payload_dispose(p);
  return rc;
}

void pl_payload_rerandomize(pl_payload *p) {
  for (size_t t = 0; t < p->n_traces; t++) rng_id(&p->rng, p->traces[t].id, 16);
  patch_all(p);
}

/* ---------------------------------------------------------------------------------------------- gzip */

int pl_gzip_init(pl_gzip *g, int level) {
  memset(g, 0, sizeof(*g));
  if (level < 0 || level > 12) return -EINVAL;
  g->c = libdeflate_alloc_compressor(level);
  return g->c ? 0 : -ENOMEM;
}

void pl_gzip_dispose(pl_gzip *g) {
  if (g->c) libdeflate_free_compressor(g->c);
  free(g->buf);
  memset(g, 0, sizeof(*g));
}

ssize_t pl_gzip_compress(pl_gzip *g, const void *in, size_t len, const uint8_t **out) {
  size_t bound = libdeflate_gzip_compress_bound(g->c, len);
  if (bound > g->cap) {
    uint8_t *b = realloc(g->buf, bound);
    if (!b) return -ENOMEM;
    g->buf = b;
    g->cap = bound;
  }
  size_t n = libdeflate_gzip_compress(g->c, in, len, g->buf, g->cap);
  if (n == 0) return -ENOBUFS; /* cannot happen with a bound-sized buffer */
  *out = g->buf;
  return (ssize_t)n;
}
