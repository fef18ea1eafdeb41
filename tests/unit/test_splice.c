/*
 * Unit tests for balancer/splice.{c,h}.
 *
 * The property tests build random requests whose envelopes are written by hand around protobuf-c-packed
 * messages (so fields can come in any order, interleave and carry unknown fields at every level), split them
 * over random rings, decode every part with protobuf-c and check: each item exactly once, in the part of the
 * owner computed here from the decoded item and resource, under its original resource and scope entry
 * (compared as packed bytes, schema_url and unknown-field counts), in order, with no empty envelopes, and
 * with exact part lengths and item counts. Metrics are checked under every route: whole resource entries on
 * the owner of their service (service) or attribute set (resource), or each Metric on the owner of
 * hash(service, 0, name) (metric); items are data points, counted here from the decoded metrics.
 */
#include "test.h"

#include "balancer/ring.h"
#include "balancer/splice.h"
#include "gateway/otlp_http.h"
#include "bench/payload.h"
#include "opentelemetry/proto/collector/logs/v1/logs_service.pb-c.h"
#include "opentelemetry/proto/collector/metrics/v1/metrics_service.pb-c.h"
#include "opentelemetry/proto/collector/trace/v1/trace_service.pb-c.h"

typedef Opentelemetry__Proto__Common__V1__AnyValue AnyValue;
typedef Opentelemetry__Proto__Common__V1__KeyValue KeyValue;
typedef Opentelemetry__Proto__Common__V1__InstrumentationScope Scope;
typedef Opentelemetry__Proto__Resource__V1__Resource Resource;
typedef Opentelemetry__Proto__Trace__V1__Span Span;
typedef Opentelemetry__Proto__Trace__V1__Span__Link Link;
typedef Opentelemetry__Proto__Trace__V1__Span__Event Event;
typedef Opentelemetry__Proto__Logs__V1__LogRecord LogRecord;
typedef Opentelemetry__Proto__Metrics__V1__Metric Metric;
typedef Opentelemetry__Proto__Metrics__V1__Gauge Gauge;
typedef Opentelemetry__Proto__Metrics__V1__NumberDataPoint NumberDataPoint;
typedef Opentelemetry__Proto__Metrics__V1__Sum Sum;
typedef Opentelemetry__Proto__Metrics__V1__Histogram Histogram;
typedef Opentelemetry__Proto__Metrics__V1__HistogramDataPoint HistogramDataPoint;
typedef Opentelemetry__Proto__Metrics__V1__ExponentialHistogram ExpHistogram;
typedef Opentelemetry__Proto__Metrics__V1__ExponentialHistogramDataPoint ExpHistogramDataPoint;
typedef Opentelemetry__Proto__Metrics__V1__ExponentialHistogramDataPoint__Buckets ExpBuckets;
typedef Opentelemetry__Proto__Metrics__V1__Summary Summary;
typedef Opentelemetry__Proto__Metrics__V1__SummaryDataPoint SummaryDataPoint;
typedef Opentelemetry__Proto__Metrics__V1__SummaryDataPoint__ValueAtQuantile Quantile;
typedef Opentelemetry__Proto__Collector__Trace__V1__ExportTraceServiceRequest TraceRequest;
typedef Opentelemetry__Proto__Collector__Logs__V1__ExportLogsServiceRequest LogsRequest;
typedef Opentelemetry__Proto__Collector__Metrics__V1__ExportMetricsServiceRequest MetricsRequest;

/* ------------------------------------------------------------------------------------ byte writer */

typedef struct wb {
  uint8_t *p;
  size_t n, cap;
} wb;

static void wb_put(wb *w, const void *d, size_t n) {
  if (w->n + n > w->cap) {
    w->cap = (w->n + n) * 2 + 64;
    w->p = realloc(w->p, w->cap);
  }
  if (n) memcpy(w->p + w->n, d, n);
  w->n += n;
}
static void wb_varint(wb *w, uint64_t v) {
  uint8_t b[10];
  size_t n = 0;
  while (v >= 0x80) {
    b[n++] = (uint8_t)(v | 0x80);
    v >>= 7;
  }
  b[n++] = (uint8_t)v;
  wb_put(w, b, n);
}
static void wb_tag(wb *w, uint32_t field, unsigned wt) { wb_varint(w, ((uint64_t)field << 3) | wt); }
static void wb_lenfield(wb *w, uint32_t field, const void *d, size_t n) {
  wb_tag(w, field, 2);
  wb_varint(w, n);
  wb_put(w, d, n);
}

static pl_rng rng;
static uint32_t rnd(uint32_t n) { return (uint32_t)(pl_rng_next(&rng) % n); }

/* Appends one random unknown field (number >= 100) of wire type 0, 1, 2 or 5. */
static void wb_unknown(wb *w) {
  uint32_t f = 100 + rnd(30);
  switch (rnd(4)) {
  case 0: wb_tag(w, f, 0); wb_varint(w, pl_rng_next(&rng) >> rnd(64)); break;
  case 1: { uint64_t x = pl_rng_next(&rng); wb_tag(w, f, 1); wb_put(w, &x, 8); break; }
  case 2: { uint8_t d[7]; size_t n = rnd(8); for (size_t i = 0; i < n; i++) d[i] = (uint8_t)rnd(256); wb_lenfield(w, f, d, n); break; }
  default: { uint32_t x = (uint32_t)pl_rng_next(&rng); wb_tag(w, f, 5); wb_put(w, &x, 4); break; }
  }
}

static void wb_pack(wb *w, const ProtobufCMessage *m) {
  size_t n = protobuf_c_message_get_packed_size(m);
  uint8_t *tmp = malloc(n + 1);
  protobuf_c_message_pack(m, tmp);
  wb_put(w, tmp, n);
  free(tmp);
}

static int bytes_eq_packed(const ProtobufCMessage *m, const uint8_t *d, size_t n) {
  size_t k = protobuf_c_message_get_packed_size(m);
  if (k != n) return 0;
  uint8_t *tmp = malloc(k + 1);
  protobuf_c_message_pack(m, tmp);
  int eq = n == 0 || memcmp(tmp, d, n) == 0;
  free(tmp);
  return eq;
}

/* -------------------------------------------------------------------------------------- rings */

static bl_ring_t *make_ring(size_t n) {
  bl_ring_member_t m[16];
  char names[16][48];
  for (size_t i = 0; i < n; i++) {
    snprintf(names[i], sizeof names[i], "http://collector-%zu:4318", i);
    m[i] = (bl_ring_member_t){names[i], 1 + rnd(3), NULL};
  }
  return bl_ring_create(m, n);
}

/* The owner as the contract defines it, from decoded data. */
static uint32_t expected_owner(const bl_ring_t *ring, bl_route_t route, ProtobufCBinaryData tid, const Resource *res) {
  static const uint8_t zero[16];
  if (route == BL_ROUTE_TRACE_ID && tid.len == 16 && memcmp(tid.data, zero, 16) != 0)
    return bl_ring_lookup(ring, bl_hash(tid.data, 16));
  if (res) {
    for (size_t i = 0; i < res->n_attributes; i++) {
      const KeyValue *kv = res->attributes[i];
      if (strcmp(kv->key, "service.name") == 0 && kv->value &&
          kv->value->value_case == OPENTELEMETRY__PROTO__COMMON__V1__ANY_VALUE__VALUE_STRING_VALUE)
        return bl_ring_lookup(ring, bl_hash(kv->value->string_value, strlen(kv->value->string_value)));
    }
    size_t n = protobuf_c_message_get_packed_size(&res->base);
    uint8_t *tmp = malloc(n + 1);
    protobuf_c_message_pack(&res->base, tmp);
    uint32_t o = bl_ring_lookup(ring, bl_hash(tmp, n));
    free(tmp);
    return o;
  }
  return bl_ring_lookup(ring, bl_hash(NULL, 0));
}

static uint64_t packed_hash(const ProtobufCMessage *m) {
  size_t n = protobuf_c_message_get_packed_size(m);
  uint8_t *tmp = malloc(n + 1);
  protobuf_c_message_pack(m, tmp);
  uint64_t h = bl_hash(tmp, n);
  free(tmp);
  return h;
}

static void le64(uint8_t *o, uint64_t v) {
  for (int i = 0; i < 8; i++) o[i] = (uint8_t)(v >> (8 * i));
}

/* The first string-valued service.name of a decoded resource, or NULL. */
static const char *service_of(const Resource *res) {
  for (size_t i = 0; res && i < res->n_attributes; i++) {
    const KeyValue *kv = res->attributes[i];
    if (strcmp(kv->key, "service.name") == 0 && kv->value &&
        kv->value->value_case == OPENTELEMETRY__PROTO__COMMON__V1__ANY_VALUE__VALUE_STRING_VALUE)
      return kv->value->string_value;
  }
  return NULL;
}

/* Resource route: bl_hash(le64(sum of bl_hash(packed KeyValue))); NULL resource: the sum is 0. */
static uint32_t expected_attrs_owner(const bl_ring_t *ring, const Resource *res) {
  uint64_t sum = 0;
  for (size_t i = 0; res && i < res->n_attributes; i++) sum += packed_hash(&res->attributes[i]->base);
  uint8_t b[8];
  le64(b, sum);
  return bl_ring_lookup(ring, bl_hash(b, 8));
}

/* Metric route: hash(service.name, 0, name), or hash(le64(hash(resource bytes)), 0, name). */
static uint32_t expected_metric_owner(const bl_ring_t *ring, const Resource *res, const char *name) {
  const char *svc = service_of(res);
  uint8_t k[512];
  size_t n = 0;
  if (svc) {
    n = strlen(svc);
    memcpy(k, svc, n);
  } else {
    le64(k, res ? packed_hash(&res->base) : bl_hash(NULL, 0));
    n = 8;
  }
  k[n++] = 0;
  memcpy(k + n, name, strlen(name));
  n += strlen(name);
  return bl_ring_lookup(ring, bl_hash(k, n));
}


/* ------------------------------------------------------------------------------ the generated model */

enum kind { K_TRACES, K_LOGS, K_METRICS };

typedef struct m_item {
  uint8_t *bytes;
  size_t len;
  uint32_t r, s;
  uint32_t points; /* metrics: data points (spans, log records: 1) */
  int nocmp;       /* metrics with two data fields: protobuf-c keeps the last, so it repacks differently */
  int seen;
} m_item;

typedef struct m_scope {
  wb bytes; /* packed InstrumentationScope, when has */
  int has;
  char schema[16];
  unsigned n_unknown;
} m_scope;

typedef struct m_res {
  wb bytes; /* packed Resource (+ unknown fields), when has */
  int has;
  char schema[16];
  unsigned n_unknown;
  m_scope scopes[4];
  uint32_t n_scopes;
  uint32_t recs;   /* item records */
  uint32_t points; /* their data points (metrics) */
  int seen;
} m_res;

typedef struct model {
  m_item items[64];
  uint32_t n_items;
  m_res res[5];
  uint32_t n_res;
  unsigned top_unknown;
  uint8_t tids[4][16];
} model;

static void model_free(model *m) {
  for (uint32_t i = 0; i < m->n_items; i++) free(m->items[i].bytes);
  for (uint32_t r = 0; r < m->n_res; r++) {
    free(m->res[r].bytes.p);
    for (uint32_t s = 0; s < m->res[r].n_scopes; s++) free(m->res[r].scopes[s].bytes.p);
  }
}

static char *rstr(char *buf, size_t cap, const char *prefix) {
  snprintf(buf, cap, "%s%u", prefix, rnd(1000));
  return buf;
}

/* A Resource with 0..3 plain attributes, maybe service.name (string) at a random place, maybe a decoy
 * service.name with an int value before it; sometimes an unknown field appended. */
static void gen_resource(m_res *mr) {
  KeyValue kvs[6], *pkv[6];
  AnyValue vals[6];
  char keys[6][16], svals[6][16];
  size_t n = 0;
  size_t plain = rnd(4);
  int svc = rnd(100) < 65, decoy = rnd(100) < 15;
  size_t svc_at = rnd((uint32_t)plain + 1);
  for (size_t i = 0; i <= plain; i++) {
    if (i == svc_at && decoy) {
      kvs[n] = (KeyValue)OPENTELEMETRY__PROTO__COMMON__V1__KEY_VALUE__INIT;
      vals[n] = (AnyValue)OPENTELEMETRY__PROTO__COMMON__V1__ANY_VALUE__INIT;
      vals[n].value_case = OPENTELEMETRY__PROTO__COMMON__V1__ANY_VALUE__VALUE_INT_VALUE;
      vals[n].int_value = 7;
      kvs[n].key = "service.name";
      kvs[n].value = &vals[n];
      n++;
    }
    if (i == svc_at && svc) {
      kvs[n] = (KeyValue)OPENTELEMETRY__PROTO__COMMON__V1__KEY_VALUE__INIT;
      vals[n] = (AnyValue)OPENTELEMETRY__PROTO__COMMON__V1__ANY_VALUE__INIT;
      vals[n].value_case = OPENTELEMETRY__PROTO__COMMON__V1__ANY_VALUE__VALUE_STRING_VALUE;
      vals[n].string_value = rnd(10) ? rstr(svals[n], 16, "svc-") : "";
      kvs[n].key = "service.name";
      kvs[n].value = &vals[n];
      n++;
    }
    if (i == plain) break;
    kvs[n] = (KeyValue)OPENTELEMETRY__PROTO__COMMON__V1__KEY_VALUE__INIT;
    vals[n] = (AnyValue)OPENTELEMETRY__PROTO__COMMON__V1__ANY_VALUE__INIT;
    vals[n].value_case = OPENTELEMETRY__PROTO__COMMON__V1__ANY_VALUE__VALUE_STRING_VALUE;
    vals[n].string_value = rstr(svals[n], 16, "v");
    kvs[n].key = rstr(keys[n], 16, "host.");
    kvs[n].value = &vals[n];
    n++;
  }
  for (size_t i = 0; i < n; i++) pkv[i] = &kvs[i];
  Resource res = OPENTELEMETRY__PROTO__RESOURCE__V1__RESOURCE__INIT;
  res.attributes = pkv;
  res.n_attributes = n;
  res.dropped_attributes_count = rnd(3);
  wb_pack(&mr->bytes, &res.base);
  if (rnd(5) == 0) wb_unknown(&mr->bytes);
}

static void gen_scope(m_scope *ms) {
  Scope sc = OPENTELEMETRY__PROTO__COMMON__V1__INSTRUMENTATION_SCOPE__INIT;
  char name[16];
  sc.name = rstr(name, sizeof name, "lib-");
  sc.version = rnd(2) ? "1.2.3" : "";
  wb_pack(&ms->bytes, &sc.base);
  if (rnd(5) == 0) wb_unknown(&ms->bytes);
}

/* One span or log record; its span_id carries the item's index so parts can be matched to the model. */
static void gen_item(enum kind k, model *m, wb *out) {
  uint8_t sid[8] = {0};
  uint32_t id = m->n_items;
  memcpy(sid, &id, 4);
  uint8_t zero[16] = {0};
  ProtobufCBinaryData tid = {0, NULL};
  uint32_t c = rnd(100);
  if (c < 10) tid = (ProtobufCBinaryData){0, NULL};
  else if (c < 17) tid = (ProtobufCBinaryData){16, zero};
  else tid = (ProtobufCBinaryData){16, m->tids[rnd(4)]};
  KeyValue kv = OPENTELEMETRY__PROTO__COMMON__V1__KEY_VALUE__INIT, *pkv[1] = {&kv};
  AnyValue v = OPENTELEMETRY__PROTO__COMMON__V1__ANY_VALUE__INIT;
  v.value_case = OPENTELEMETRY__PROTO__COMMON__V1__ANY_VALUE__VALUE_STRING_VALUE;
  char sv[16];
  v.string_value = rstr(sv, sizeof sv, "GET /x");
  kv.key = "http.route";
  kv.value = &v;
  wb w = {0};
  if (k == K_TRACES) {
    Span s = OPENTELEMETRY__PROTO__TRACE__V1__SPAN__INIT;
    s.trace_id = tid;
    s.span_id = (ProtobufCBinaryData){8, sid};
    s.name = "op";
    s.kind = rnd(5);
    s.start_time_unix_nano = pl_rng_next(&rng);
    s.end_time_unix_nano = s.start_time_unix_nano + rnd(1000);
    if (rnd(2)) {
      s.attributes = pkv;
      s.n_attributes = 1;
    }
    /* Links carry other trace IDs (field 13 > 1): they must never route the span. */
    uint8_t ltid[2][16];
    Link links[2], *pl[2];
    s.n_links = rnd(3);
    for (size_t i = 0; i < s.n_links; i++) {
      for (int b = 0; b < 16; b++) ltid[i][b] = (uint8_t)rnd(256);
      links[i] = (Link)OPENTELEMETRY__PROTO__TRACE__V1__SPAN__LINK__INIT;
      links[i].trace_id = (ProtobufCBinaryData){16, ltid[i]};
      links[i].span_id = (ProtobufCBinaryData){8, sid};
      pl[i] = &links[i];
    }
    s.links = pl;
    Event ev = OPENTELEMETRY__PROTO__TRACE__V1__SPAN__EVENT__INIT, *pev[1] = {&ev};
    ev.name = "exception";
    if (rnd(3) == 0) {
      s.events = pev;
      s.n_events = 1;
    }
    wb_pack(&w, &s.base);
  } else {
    LogRecord l = OPENTELEMETRY__PROTO__LOGS__V1__LOG_RECORD__INIT;
    l.time_unix_nano = pl_rng_next(&rng);
    l.severity_number = rnd(20);
    l.severity_text = "INFO";
    l.body = &v;
    if (rnd(2)) {
      l.attributes = pkv;
      l.n_attributes = 1;
    }
    l.trace_id = tid;
    l.span_id = (ProtobufCBinaryData){8, sid};
    wb_pack(&w, &l.base);
  }
  if (rnd(6) == 0) wb_unknown(&w);
  m->items[m->n_items].bytes = w.p;
  m->items[m->n_items].len = w.n;
  m->items[m->n_items].points = 1;
  m->n_items++;
  wb_lenfield(out, 2, w.p, w.n);
}

/* The packed data container of kind 0 gauge, 1 sum, 2 histogram, 3 exponential_histogram, 4 summary, with
 * n points (some of them all-default, which pack to zero bytes); returns its Metric field number. */
static uint32_t gen_container(int kind, uint32_t n, wb *out) {
  NumberDataPoint nd[8], *pnd[8];
  HistogramDataPoint hd[8], *phd[8];
  ExpHistogramDataPoint ed[8], *ped[8];
  SummaryDataPoint sd[8], *psd[8];
  ExpBuckets eb = OPENTELEMETRY__PROTO__METRICS__V1__EXPONENTIAL_HISTOGRAM_DATA_POINT__BUCKETS__INIT;
  Quantile q = OPENTELEMETRY__PROTO__METRICS__V1__SUMMARY_DATA_POINT__VALUE_AT_QUANTILE__INIT, *pq[1] = {&q};
  uint64_t bc[3] = {1, 2, 3};
  double bounds[2] = {0.5, 1.0};
  eb.bucket_counts = bc;
  eb.n_bucket_counts = 3;
  q.quantile = 0.99;
  q.value = 1.5;
  int empty = rnd(4) == 0;
  for (uint32_t i = 0; i < n; i++) {
    uint64_t t = empty ? 0 : pl_rng_next(&rng);
    nd[i] = (NumberDataPoint)OPENTELEMETRY__PROTO__METRICS__V1__NUMBER_DATA_POINT__INIT;
    nd[i].time_unix_nano = t;
    nd[i].value_case = OPENTELEMETRY__PROTO__METRICS__V1__NUMBER_DATA_POINT__VALUE_AS_INT;
    nd[i].as_int = rnd(100);
    if (empty) nd[i].value_case = OPENTELEMETRY__PROTO__METRICS__V1__NUMBER_DATA_POINT__VALUE__NOT_SET;
    pnd[i] = &nd[i];
    hd[i] = (HistogramDataPoint)OPENTELEMETRY__PROTO__METRICS__V1__HISTOGRAM_DATA_POINT__INIT;
    hd[i].time_unix_nano = t;
    if (!empty) {
      hd[i].count = 6;
      hd[i].bucket_counts = bc;
      hd[i].n_bucket_counts = 3;
      hd[i].explicit_bounds = bounds;
      hd[i].n_explicit_bounds = 2;
    }
    phd[i] = &hd[i];
    ed[i] = (ExpHistogramDataPoint)OPENTELEMETRY__PROTO__METRICS__V1__EXPONENTIAL_HISTOGRAM_DATA_POINT__INIT;
    ed[i].time_unix_nano = t;
    if (!empty) {
      ed[i].scale = 3;
      ed[i].count = 6;
      ed[i].positive = &eb;
    }
    ped[i] = &ed[i];
    sd[i] = (SummaryDataPoint)OPENTELEMETRY__PROTO__METRICS__V1__SUMMARY_DATA_POINT__INIT;
    sd[i].time_unix_nano = t;
    if (!empty) {
      sd[i].count = 4;
      sd[i].quantile_values = pq;
      sd[i].n_quantile_values = 1;
    }
    psd[i] = &sd[i];
  }
  switch (kind) {
  case 0: {
    Gauge g = OPENTELEMETRY__PROTO__METRICS__V1__GAUGE__INIT;
    g.data_points = pnd;
    g.n_data_points = n;
    wb_pack(out, &g.base);
    return 5;
  }
  case 1: {
    Sum m = OPENTELEMETRY__PROTO__METRICS__V1__SUM__INIT;
    m.data_points = pnd;
    m.n_data_points = n;
    m.aggregation_temporality = rnd(3);
    m.is_monotonic = rnd(2);
    wb_pack(out, &m.base);
    return 7;
  }
  case 2: {
    Histogram m = OPENTELEMETRY__PROTO__METRICS__V1__HISTOGRAM__INIT;
    m.data_points = phd;
    m.n_data_points = n;
    m.aggregation_temporality = rnd(3);
    wb_pack(out, &m.base);
    return 9;
  }
  case 3: {
    ExpHistogram m = OPENTELEMETRY__PROTO__METRICS__V1__EXPONENTIAL_HISTOGRAM__INIT;
    m.data_points = ped;
    m.n_data_points = n;
    m.aggregation_temporality = rnd(3);
    wb_pack(out, &m.base);
    return 10;
  }
  default: {
    Summary m = OPENTELEMETRY__PROTO__METRICS__V1__SUMMARY__INIT;
    m.data_points = psd;
    m.n_data_points = n;
    wb_pack(out, &m.base);
    return 11;
  }
  }
}

static const char *const metric_names[] = {"m.a", "m.b", "m.c", "m.d", "http.server.request.duration", ""};

/* One Metric of a random kind (or none) with 0..4 points and a name from a small set (so names repeat
 * across resources); its description "#N" carries the item's index. Sometimes a second data field follows
 * (the last one is the metric's data), sometimes an unknown field. */
static void gen_metric(model *m, wb *out) {
  Metric me = OPENTELEMETRY__PROTO__METRICS__V1__METRIC__INIT;
  char desc[16];
  snprintf(desc, sizeof desc, "#%u", m->n_items);
  me.name = (char *)metric_names[rnd(6)];
  me.description = desc;
  me.unit = rnd(2) ? "s" : "";
  wb w = {0};
  wb_pack(&w, &me.base); /* fields 1-3, then the data field: protobuf-c's own order */
  uint32_t points = 0;
  int kind = (int)rnd(6), nocmp = 0;
  if (kind < 5) {
    wb c = {0};
    points = rnd(5);
    uint32_t f = gen_container(kind, points, &c);
    wb_lenfield(&w, f, c.p, c.n);
    free(c.p);
    if (rnd(8) == 0) {
      wb c2 = {0};
      points = rnd(5);
      f = gen_container((int)rnd(5), points, &c2);
      wb_lenfield(&w, f, c2.p, c2.n);
      free(c2.p);
      nocmp = 1;
    }
  }
  if (rnd(6) == 0) wb_unknown(&w);
  m_item *it = &m->items[m->n_items++];
  it->bytes = w.p;
  it->len = w.n;
  it->points = points;
  it->nocmp = nocmp;
  wb_lenfield(out, 2, w.p, w.n);
}

/* Field order of an envelope: the canonical one (message, children, schema_url, unknown) most of the time,
 * otherwise shuffled so children interleave with the other fields. 'M' message, 'C' child, 'Z' schema_url,
 * 'U' unknown field. */
static size_t gen_order(char *o, int has_msg, uint32_t children, int schema, uint32_t unknown) {
  size_t n = 0;
  if (has_msg) o[n++] = 'M';
  for (uint32_t i = 0; i < children; i++) o[n++] = 'C';
  if (schema) o[n++] = 'Z';
  for (uint32_t i = 0; i < unknown; i++) o[n++] = 'U';
  if (rnd(10) < 3) {
    for (size_t i = n; i > 1; i--) {
      size_t j = rnd((uint32_t)i);
      char t = o[i - 1];
      o[i - 1] = o[j];
      o[j] = t;
    }
  }
  return n;
}

static void gen_request(enum kind k, model *m, wb *out) {
  memset(m, 0, sizeof *m);
  for (int t = 0; t < 4; t++)
    for (int b = 0; b < 16; b++) m->tids[t][b] = (uint8_t)rnd(256);
  m->n_res = rnd(5);
  for (uint32_t r = 0; r < m->n_res; r++) {
    if (rnd(7) == 0) {
      wb_unknown(out);
      m->top_unknown++;
    }
    m_res *mr = &m->res[r];
    mr->has = rnd(5) != 0;
    if (mr->has) gen_resource(mr);
    int schema = k == K_METRICS || rnd(2);
    if (schema) snprintf(mr->schema, sizeof mr->schema, "res-%u", r);
    mr->n_unknown = rnd(4) == 0 ? 1 + rnd(2) : 0;
    mr->n_scopes = rnd(4);
    wb e = {0};
    char order[16];
    size_t no = gen_order(order, mr->has, mr->n_scopes, schema, mr->n_unknown);
    uint32_t si = 0;
    for (size_t i = 0; i < no; i++) {
      switch (order[i]) {
      case 'M': wb_lenfield(&e, 1, mr->bytes.p, mr->bytes.n); break;
      case 'Z': wb_lenfield(&e, 3, mr->schema, strlen(mr->schema)); break;
      case 'U': wb_unknown(&e); break;
      case 'C': {
        m_scope *ms = &mr->scopes[si];
        ms->has = rnd(5) != 0;
        if (ms->has) gen_scope(ms);
        int sschema = rnd(2);
        if (sschema) snprintf(ms->schema, sizeof ms->schema, "sc-%u", si);
        ms->n_unknown = rnd(4) == 0 ? 1 + rnd(2) : 0;
        uint32_t n_items = rnd(7);
        if (m->n_items + n_items > 64) n_items = 64 - m->n_items;
        wb s = {0};
        char so[16];
        size_t nso = gen_order(so, ms->has, n_items, sschema, ms->n_unknown);
        for (size_t j = 0; j < nso; j++) {
          switch (so[j]) {
          case 'M': wb_lenfield(&s, 1, ms->bytes.p, ms->bytes.n); break;
          case 'Z': wb_lenfield(&s, 3, ms->schema, strlen(ms->schema)); break;
          case 'U': wb_unknown(&s); break;
          case 'C':
            m->items[m->n_items].r = r;
            m->items[m->n_items].s = si;
            if (k == K_METRICS) gen_metric(m, &s);
            else gen_item(k, m, &s);
            mr->recs++;
            mr->points += m->items[m->n_items - 1].points;
            break;
          }
        }
        wb_lenfield(&e, 2, s.p, s.n);
        free(s.p);
        si++;
        break;
      }
      }
    }
    wb_lenfield(out, 1, e.p, e.n);
    free(e.p);
  }
  if (rnd(7) == 0) {
    wb_unknown(out);
    m->top_unknown++;
  }
}

/* ------------------------------------------------------------------------- decoded views of a part */

typedef struct vscope {
  const ProtobufCMessage *scope;
  const char *schema;
  unsigned n_unknown;
  ProtobufCMessage **items;
  size_t n;
} vscope;

typedef struct vres {
  const Resource *res;
  const char *schema;
  unsigned n_unknown;
  vscope scopes[8];
  size_t n;
} vres;

typedef struct vreq {
  vres res[8];
  size_t n;
  unsigned n_unknown;
  ProtobufCMessage *msg;
} vreq;

/* Unpacks a part of kind k into a view; 0 when protobuf-c rejects it. */
static int view(enum kind k, const uint8_t *d, size_t n, vreq *v) {
  memset(v, 0, sizeof *v);
  if (k == K_TRACES) {
    TraceRequest *q = opentelemetry__proto__collector__trace__v1__export_trace_service_request__unpack(NULL, n, d);
    if (!q) return 0;
    v->msg = &q->base;
    v->n_unknown = q->base.n_unknown_fields;
    v->n = q->n_resource_spans;
    for (size_t r = 0; r < q->n_resource_spans && r < 8; r++) {
      const Opentelemetry__Proto__Trace__V1__ResourceSpans *rs = q->resource_spans[r];
      v->res[r] = (vres){rs->resource, rs->schema_url, rs->base.n_unknown_fields, {{0}}, rs->n_scope_spans};
      for (size_t s = 0; s < rs->n_scope_spans && s < 8; s++) {
        const Opentelemetry__Proto__Trace__V1__ScopeSpans *ss = rs->scope_spans[s];
        v->res[r].scopes[s] = (vscope){ss->scope ? &ss->scope->base : NULL, ss->schema_url,
                                       ss->base.n_unknown_fields, (ProtobufCMessage **)ss->spans, ss->n_spans};
      }
    }
  } else if (k == K_LOGS) {
    LogsRequest *q = opentelemetry__proto__collector__logs__v1__export_logs_service_request__unpack(NULL, n, d);
    if (!q) return 0;
    v->msg = &q->base;
    v->n_unknown = q->base.n_unknown_fields;
    v->n = q->n_resource_logs;
    for (size_t r = 0; r < q->n_resource_logs && r < 8; r++) {
      const Opentelemetry__Proto__Logs__V1__ResourceLogs *rs = q->resource_logs[r];
      v->res[r] = (vres){rs->resource, rs->schema_url, rs->base.n_unknown_fields, {{0}}, rs->n_scope_logs};
      for (size_t s = 0; s < rs->n_scope_logs && s < 8; s++) {
        const Opentelemetry__Proto__Logs__V1__ScopeLogs *ss = rs->scope_logs[s];
        v->res[r].scopes[s] = (vscope){ss->scope ? &ss->scope->base : NULL, ss->schema_url,
                                       ss->base.n_unknown_fields, (ProtobufCMessage **)ss->log_records,
                                       ss->n_log_records};
      }
    }
  } else {
    MetricsRequest *q =
        opentelemetry__proto__collector__metrics__v1__export_metrics_service_request__unpack(NULL, n, d);
    if (!q) return 0;
    v->msg = &q->base;
    v->n_unknown = q->base.n_unknown_fields;
    v->n = q->n_resource_metrics;
    for (size_t r = 0; r < q->n_resource_metrics && r < 8; r++) {
      const Opentelemetry__Proto__Metrics__V1__ResourceMetrics *rs = q->resource_metrics[r];
      v->res[r] = (vres){rs->resource, rs->schema_url, rs->base.n_unknown_fields, {{0}}, rs->n_scope_metrics};
      for (size_t s = 0; s < rs->n_scope_metrics && s < 8; s++) {
        const Opentelemetry__Proto__Metrics__V1__ScopeMetrics *ss = rs->scope_metrics[s];
        v->res[r].scopes[s] = (vscope){ss->scope ? &ss->scope->base : NULL, ss->schema_url,
                                       ss->base.n_unknown_fields, (ProtobufCMessage **)ss->metrics,
                                       ss->n_metrics};
      }
    }
  }
  CHECK(v->n <= 8);
  return 1;
}

static ProtobufCBinaryData item_tid(enum kind k, const ProtobufCMessage *m) {
  return k == K_TRACES ? ((const Span *)m)->trace_id : ((const LogRecord *)m)->trace_id;
}
static uint32_t item_id(enum kind k, const ProtobufCMessage *m) {
  if (k == K_METRICS) {
    unsigned id = UINT32_MAX;
    if (sscanf(((const Metric *)m)->description, "#%u", &id) != 1) return UINT32_MAX;
    return id;
  }
  ProtobufCBinaryData s = k == K_TRACES ? ((const Span *)m)->span_id : ((const LogRecord *)m)->span_id;
  uint32_t id = UINT32_MAX;
  if (s.len == 8) memcpy(&id, s.data, 4);
  return id;
}

static uint8_t *gather(const bl_part_t *p) {
  uint8_t *d = malloc(p->len + 1);
  size_t off = 0;
  for (size_t i = 0; i < p->n_iov; i++) {
    CHECK(p->iov[i].iov_len > 0);
    CHECK(off + p->iov[i].iov_len <= p->len);
    if (off + p->iov[i].iov_len > p->len) break;
    memcpy(d + off, p->iov[i].iov_base, p->iov[i].iov_len);
    off += p->iov[i].iov_len;
  }
  CHECK_EQ_INT(off, p->len);
  return d;
}

static void check_res_matches(const vres *vr, const m_res *mr) {
  CHECK_EQ_INT(vr->res != NULL, mr->has);
  if (vr->res && mr->has) CHECK(bytes_eq_packed(&vr->res->base, mr->bytes.p, mr->bytes.n));
  CHECK_EQ_STR(vr->schema, mr->schema);
  CHECK_EQ_INT(vr->n_unknown, mr->n_unknown);
}

static const bl_shape_t *shape_of(enum kind k) {
  return k == K_TRACES ? &bl_shape_traces : k == K_LOGS ? &bl_shape_logs : &bl_shape_metrics;
}

/* Splits one generated request and checks every property in the header comment. */
static void check_split(enum kind k, bl_route_t route, const model *cm, const uint8_t *body, size_t len,
                        const bl_ring_t *ring) {
  model *m = (model *)cm;
  bl_split_t sp;
  bl_error_t err;
  int rc = bl_split(shape_of(k), route, body, len, ring, &sp, &err);
  CHECK_EQ_INT(rc, 0);
  if (rc) {
    fprintf(stderr, "error: %s\n", err.msg);
    return;
  }
  /* Metrics move whole resource entries except by metric; other routes mean service where they mean nothing. */
  const int whole_entries = k == K_METRICS && route != BL_ROUTE_METRIC;
  CHECK_EQ_INT(sp.n_parts, bl_ring_size(ring));
  CHECK_EQ_INT(sp.resources, m->n_res);
  uint64_t want_items = 0;
  for (uint32_t r = 0; r < m->n_res; r++) want_items += m->res[r].points;
  CHECK_EQ_INT(sp.items, want_items);
  uint32_t n_targets = 0;
  uint64_t items_sum = 0;
  for (size_t b = 0; b < sp.n_parts; b++) {
    const bl_part_t *p = &sp.parts[b];
    if (!p->len) {
      CHECK_EQ_INT(p->items, 0);
      continue;
    }
    n_targets++;
    items_sum += p->items;
    uint8_t *d = gather(p);
    vreq v;
    int ok = view(k, d, p->len, &v);
    CHECK(ok);
    if (!ok) {
      vreq whole_v;
      fprintf(stderr, "part %zu of %u (len %zu, %zu iov) does not unpack; whole body (%zu) unpacks: %d\n", b,
              sp.n_targets, p->len, p->n_iov, len, view(k, body, len, &whole_v));
      FILE *f = fopen("/tmp/splice_fail.bin", "wb");
      if (f) { fwrite(body, 1, len, f); fclose(f); }
      f = fopen("/tmp/splice_part.bin", "wb");
      if (f) { fwrite(d, 1, p->len, f); fclose(f); }
      free(d);
      continue;
    }
    int whole = sp.n_targets == 1;
    if (whole) {
      CHECK_EQ_INT(p->len, len);
      CHECK_EQ_INT(p->n_iov, 1);
      CHECK(p->iov[0].iov_base == (const void *)body);
      CHECK_EQ_INT(sp.single_target, b);
    }
    CHECK_EQ_INT(v.n_unknown, m->top_unknown);
    uint64_t got = 0;
    int64_t last_id = -1, last_r = -1, last_rs = -1;
    for (size_t r = 0; r < v.n; r++) {
      const vres *vr = &v.res[r];
      int64_t env_r = -1;
      if (!whole) CHECK(vr->n > 0 || whole_entries);
      if (whole_entries) {
        /* Whole entries: identified by their schema_url "res-N". */
        unsigned idx = 0;
        CHECK(sscanf(vr->schema, "res-%u", &idx) == 1);
        if (idx >= m->n_res) continue;
        m_res *mr = &m->res[idx];
        CHECK(!mr->seen);
        mr->seen = 1;
        check_res_matches(vr, mr);
        CHECK_EQ_INT(vr->n, mr->n_scopes);
        uint64_t n_metrics = 0, n_points = 0;
        for (size_t s = 0; s < vr->n; s++) {
          n_metrics += vr->scopes[s].n;
          for (size_t i = 0; i < vr->scopes[s].n; i++) n_points += otlp_metric_points((const Metric *)vr->scopes[s].items[i]);
        }
        CHECK_EQ_INT(n_metrics, mr->recs);
        CHECK_EQ_INT(n_points, mr->points);
        got += n_points;
        if (!whole) {
          CHECK(mr->recs > 0);
          CHECK((int64_t)idx > last_r);
          last_r = idx;
        }
        if (mr->recs)
          CHECK_EQ_INT(b, route == BL_ROUTE_RESOURCE
                              ? expected_attrs_owner(ring, vr->res)
                              : expected_owner(ring, BL_ROUTE_SERVICE, (ProtobufCBinaryData){0, NULL}, vr->res));
        continue;
      }
      for (size_t s = 0; s < vr->n; s++) {
        const vscope *vs = &vr->scopes[s];
        if (!whole) CHECK(vs->n > 0);
        int64_t env_s = -1;
        for (size_t i = 0; i < vs->n; i++) {
          uint32_t id = item_id(k, vs->items[i]);
          CHECK(id < m->n_items);
          if (id >= m->n_items) continue;
          m_item *it = &m->items[id];
          CHECK(!it->seen);
          it->seen = 1;
          CHECK((int64_t)id > last_id);
          last_id = id;
          if (!it->nocmp) CHECK(bytes_eq_packed(vs->items[i], it->bytes, it->len));
          if (k == K_METRICS) {
            const Metric *me = (const Metric *)vs->items[i];
            CHECK_EQ_INT(otlp_metric_points(me), it->points);
            got += otlp_metric_points(me);
            CHECK_EQ_INT(b, expected_metric_owner(ring, vr->res, me->name));
          } else {
            got++;
            CHECK_EQ_INT(b, expected_owner(ring, route, item_tid(k, vs->items[i]), vr->res));
          }
          if (env_r < 0) {
            env_r = it->r;
            if (!whole) CHECK(env_r > last_r);
            last_r = env_r;
            check_res_matches(vr, &m->res[it->r]);
          }
          CHECK_EQ_INT(it->r, env_r);
          if (env_s < 0) {
            env_s = it->s;
            int64_t rs = (int64_t)it->r * 16 + it->s;
            if (!whole) CHECK(rs > last_rs);
            last_rs = rs;
            const m_scope *ms = &m->res[it->r].scopes[it->s];
            CHECK_EQ_INT(vs->scope != NULL, ms->has);
            if (vs->scope && ms->has) CHECK(bytes_eq_packed(vs->scope, ms->bytes.p, ms->bytes.n));
            CHECK_EQ_STR(vs->schema, ms->schema);
            CHECK_EQ_INT(vs->n_unknown, ms->n_unknown);
          }
          CHECK_EQ_INT(it->s, env_s);
        }
      }
    }
    CHECK_EQ_INT(got, p->items);
    protobuf_c_message_free_unpacked(v.msg, NULL);
    free(d);
  }
  CHECK_EQ_INT(n_targets, sp.n_targets);
  CHECK_EQ_INT(items_sum, sp.items);
  if (whole_entries) {
    for (uint32_t r = 0; r < m->n_res; r++) CHECK(m->res[r].seen || m->res[r].recs == 0 || sp.n_targets == 1);
  } else {
    for (uint32_t i = 0; i < m->n_items; i++) CHECK(m->items[i].seen);
  }
  /* Nothing to send exactly when there is no item record (a Metric without points is still sent). */
  CHECK_EQ_INT(sp.n_targets == 0, m->n_items == 0);
  bl_split_dispose(&sp);
}

static void property(enum kind k, int rounds, uint64_t seed) {
  pl_rng_seed(&rng, seed);
  int before = test__failed_checks;
  for (int i = 0; i < rounds && test__failed_checks == before; i++) {
    model *m = calloc(1, sizeof *m);
    wb body = {0};
    gen_request(k, m, &body);
    bl_ring_t *ring = make_ring(1 + rnd(7));
    /* Traces and logs: mostly trace_id, sometimes service, rarely the metric-only routes (= service). Metrics:
     * every route, trace_id meaning service. */
    uint32_t c = rnd(16);
    bl_route_t route = k == K_METRICS ? (bl_route_t)(c % 4)
                       : c < 11       ? BL_ROUTE_TRACE_ID
                       : c < 14       ? BL_ROUTE_SERVICE
                                      : (bl_route_t)(BL_ROUTE_RESOURCE + c % 2);
    check_split(k, route, m, body.p, body.n, ring);
    if (test__failed_checks != before) fprintf(stderr, "round %d of seed %llu failed\n", i, (unsigned long long)seed);
    bl_ring_unref(ring);
    model_free(m);
    free(m);
    free(body.p);
  }
}

TEST(traces_property) { property(K_TRACES, 4000, 1); }
TEST(logs_property) { property(K_LOGS, 3000, 2); }
TEST(metrics_property) { property(K_METRICS, 6000, 3); }

/* ------------------------------------------------------------------------------- targeted cases */

static bl_ring_t *ring3(void) {
  bl_ring_member_t m[3] = {{"http://a:4318", 1, NULL}, {"http://b:4318", 1, NULL}, {"http://c:4318", 1, NULL}};
  return bl_ring_create(m, 3);
}

/* A trace request with one resource (service.name = svc) and one scope of raw span bodies. */
static void one_scope_request(wb *out, const char *svc, wb *spans, size_t n) {
  wb res = {0}, kv = {0}, any = {0}, scope = {0}, rs = {0};
  wb_lenfield(&any, 1, svc, strlen(svc));
  wb_lenfield(&kv, 1, "service.name", 12);
  wb_lenfield(&kv, 2, any.p, any.n);
  wb_lenfield(&res, 1, kv.p, kv.n);
  for (size_t i = 0; i < n; i++) wb_lenfield(&scope, 2, spans[i].p, spans[i].n);
  wb_lenfield(&rs, 1, res.p, res.n);
  wb_lenfield(&rs, 2, scope.p, scope.n);
  wb_lenfield(out, 1, rs.p, rs.n);
  free(res.p);
  free(kv.p);
  free(any.p);
  free(scope.p);
  free(rs.p);
}

static void tid_of(uint8_t t[16], uint32_t x) {
  memset(t, 0, 16);
  memcpy(t, &x, 4);
  t[15] = 1;
}

TEST(empty_request_and_single_member) {
  bl_ring_t *r = ring3();
  bl_split_t sp;
  bl_error_t err;
  CHECK_EQ_INT(bl_split(&bl_shape_traces, BL_ROUTE_TRACE_ID, NULL, 0, r, &sp, &err), 0);
  CHECK_EQ_INT(sp.n_targets, 0);
  CHECK_EQ_INT(sp.n_parts, 3);
  CHECK_EQ_INT(sp.items, 0);
  bl_split_dispose(&sp);
  bl_ring_unref(r);
  bl_ring_member_t one = {"http://only:4318", 1, NULL};
  r = bl_ring_create(&one, 1);
  wb sp1 = {0}, body = {0};
  uint8_t t[16];
  tid_of(t, 1);
  wb_lenfield(&sp1, 1, t, 16);
  one_scope_request(&body, "svc", &sp1, 1);
  CHECK_EQ_INT(bl_split(&bl_shape_traces, BL_ROUTE_TRACE_ID, body.p, body.n, r, &sp, &err), 0);
  CHECK_EQ_INT(sp.n_targets, 1);
  CHECK_EQ_INT(sp.single_target, 0);
  CHECK_EQ_INT(sp.parts[0].len, body.n);
  CHECK(sp.parts[0].iov[0].iov_base == body.p);
  bl_split_dispose(&sp);
  bl_ring_unref(r);
  free(sp1.p);
  free(body.p);
}

/* Two trace_id fields in one span: the last one routes it (protobuf: last wins); a link's trace_id never. */
TEST(last_key_wins_and_links_ignored) {
  bl_ring_t *r = ring3();
  uint8_t a[16], b[16];
  uint32_t x = 1;
  tid_of(a, x);
  uint32_t oa = bl_ring_lookup(r, bl_hash(a, 16));
  do tid_of(b, ++x); while (bl_ring_lookup(r, bl_hash(b, 16)) == oa);
  uint32_t ob = bl_ring_lookup(r, bl_hash(b, 16));
  wb spans[2] = {{0}, {0}}, link = {0}, body = {0};
  wb_lenfield(&spans[0], 1, a, 16);
  wb_lenfield(&spans[0], 5, "x", 1);
  wb_lenfield(&spans[0], 1, b, 16); /* routes span 0 to ob */
  wb_lenfield(&link, 1, b, 16);
  wb_lenfield(&spans[1], 13, link.p, link.n); /* span 1: a link to b first, then its own trace a */
  wb_lenfield(&spans[1], 1, a, 16);
  one_scope_request(&body, "svc", spans, 2);
  bl_split_t sp;
  bl_error_t err;
  CHECK_EQ_INT(bl_split(&bl_shape_traces, BL_ROUTE_TRACE_ID, body.p, body.n, r, &sp, &err), 0);
  CHECK_EQ_INT(sp.n_targets, 2);
  CHECK_EQ_INT(sp.parts[ob].items, 1);
  CHECK_EQ_INT(sp.parts[oa].items, 1);
  /* Each part: resource-entry header, resource, scope header, one span (coalescing keeps it at 4). */
  CHECK(sp.parts[oa].n_iov <= 4);
  bl_split_dispose(&sp);
  /* By service: both spans go to the service's owner: one target, the whole body. */
  CHECK_EQ_INT(bl_split(&bl_shape_traces, BL_ROUTE_SERVICE, body.p, body.n, r, &sp, &err), 0);
  CHECK_EQ_INT(sp.n_targets, 1);
  CHECK_EQ_INT(sp.single_target, bl_ring_lookup(r, bl_hash("svc", 3)));
  bl_split_dispose(&sp);
  bl_ring_unref(r);
  free(spans[0].p);
  free(spans[1].p);
  free(link.p);
  free(body.p);
}

/* Adjacent items of one backend become one iovec. */
TEST(coalescing) {
  bl_ring_t *r = ring3();
  uint8_t a[16], b[16];
  uint32_t x = 1;
  tid_of(a, x);
  uint32_t oa = bl_ring_lookup(r, bl_hash(a, 16));
  do tid_of(b, ++x); while (bl_ring_lookup(r, bl_hash(b, 16)) == oa);
  wb spans[6] = {{0}}, body = {0};
  for (int i = 0; i < 6; i++) wb_lenfield(&spans[i], 1, i < 3 ? a : b, 16);
  one_scope_request(&body, "svc", spans, 6);
  bl_split_t sp;
  bl_error_t err;
  CHECK_EQ_INT(bl_split(&bl_shape_traces, BL_ROUTE_TRACE_ID, body.p, body.n, r, &sp, &err), 0);
  CHECK_EQ_INT(sp.parts[oa].items, 3);
  /* header, resource field, header, 3 spans as one slice */
  CHECK_EQ_INT(sp.parts[oa].n_iov, 4);
  bl_split_dispose(&sp);
  bl_ring_unref(r);
  for (int i = 0; i < 6; i++) free(spans[i].p);
  free(body.p);
}

/* The iovec bound of each part (splice.c, count_units) at its tightest. Every envelope has unknown fields
 * between its children, and each scope entry is T groups [unknown][span x][span y][span z] with x, y, z
 * the three members: member y never gets a slice adjacent to its previous one (x's or z's bytes always lie
 * between), so nothing of its part coalesces and its iovec count is exactly the bound (less the one spare).
 * An empty scope entry (not emitted) splits a run of resource-level fields. If pass 2 counted one slice too
 * few anywhere, bl_split would refuse this request with -3 (it used to write past the iovec array, with the
 * assert compiled out by -DNDEBUG). Every part must also decode with every span once and every unknown field
 * copied. */
static void wb_unknown_fixed(wb *w) {
  wb_tag(w, 100, 0);
  wb_varint(w, 7);
}

TEST(gaps_everywhere_fill_the_iovec_bound_exactly) {
  bl_ring_t *r = ring3();
  enum { T = 10 }; /* groups per scope entry */
  uint8_t tids[3][16];
  uint32_t found = 0;
  for (uint32_t x = 1; found != 7 && x < 10000; x++) { /* one trace id per member */
    uint8_t t[16];
    tid_of(t, x);
    uint32_t o = bl_ring_lookup(r, bl_hash(t, 16));
    if (found >> o & 1) continue;
    memcpy(tids[o], t, 16);
    found |= 1u << o;
  }
  CHECK_EQ_INT(found, 7);
  wb body = {0};
  wb_unknown_fixed(&body);
  for (int ri = 0; ri < 2; ri++) {
    /* [resource][empty scope entry][unknown][scope entry][unknown][scope entry] */
    wb rs = {0}, res = {0}, kv = {0}, any = {0}, empty = {0};
    wb_lenfield(&any, 1, "svc", 3);
    wb_lenfield(&kv, 1, "service.name", 12);
    wb_lenfield(&kv, 2, any.p, any.n);
    wb_lenfield(&res, 1, kv.p, kv.n);
    wb_lenfield(&rs, 1, res.p, res.n);
    wb_lenfield(&empty, 1, "", 0); /* a scope entry with a scope and no span */
    wb_lenfield(&rs, 2, empty.p, empty.n);
    for (int si = 0; si < 2; si++) {
      wb scope = {0};
      for (int k = 0; k < T; k++) {
        wb_unknown_fixed(&scope);
        for (int m = 0; m < 3; m++) {
          wb span = {0};
          wb_lenfield(&span, 1, tids[m], 16);
          wb_lenfield(&scope, 2, span.p, span.n);
          free(span.p);
        }
      }
      wb_unknown_fixed(&rs);
      wb_lenfield(&rs, 2, scope.p, scope.n);
      free(scope.p);
    }
    wb_lenfield(&body, 1, rs.p, rs.n);
    wb_unknown_fixed(&body);
    free(rs.p);
    free(res.p);
    free(kv.p);
    free(any.p);
    free(empty.p);
  }
  bl_split_t sp;
  bl_error_t err;
  int rc = bl_split(&bl_shape_traces, BL_ROUTE_TRACE_ID, body.p, body.n, r, &sp, &err);
  CHECK_EQ_INT(rc, 0);
  if (rc != 0) fprintf(stderr, "  error: %s\n", err.msg);
  if (rc == 0) {
    CHECK_EQ_INT(sp.n_targets, 3);
    CHECK_EQ_INT(sp.items, 2 * 2 * 3 * T);
    /* Member 1 (y): 3 request-level gaps; per resource entry a header and 3 gaps (resource, 2 unknown
     * fields); per scope entry a header, T gaps and T spans. */
    CHECK_EQ_INT(sp.parts[1].n_iov, 3 + 2 * (4 + 2 * (1 + 2 * T)));
    for (uint32_t b = 0; b < 3; b++) {
      const bl_part_t *pt = &sp.parts[b];
      CHECK(pt->n_iov <= sp.parts[1].n_iov);
      CHECK_EQ_INT(pt->items, 2 * 2 * T);
      uint8_t *d = gather(pt);
      TraceRequest *q =
          opentelemetry__proto__collector__trace__v1__export_trace_service_request__unpack(NULL, pt->len, d);
      CHECK(q != NULL);
      if (q) {
        CHECK_EQ_INT(q->base.n_unknown_fields, 3);
        CHECK_EQ_INT(q->n_resource_spans, 2);
        for (size_t i = 0; i < q->n_resource_spans; i++) {
          const Opentelemetry__Proto__Trace__V1__ResourceSpans *e = q->resource_spans[i];
          CHECK_EQ_INT(e->base.n_unknown_fields, 2);
          CHECK(e->resource != NULL);
          CHECK_EQ_INT(e->n_scope_spans, 2); /* the empty scope entry is not emitted */
          for (size_t j = 0; j < e->n_scope_spans; j++) {
            CHECK_EQ_INT(e->scope_spans[j]->base.n_unknown_fields, T);
            CHECK_EQ_INT(e->scope_spans[j]->n_spans, T);
            for (size_t k = 0; k < e->scope_spans[j]->n_spans; k++)
              CHECK_EQ_INT(bl_ring_lookup(r, bl_hash(e->scope_spans[j]->spans[k]->trace_id.data, 16)), b);
          }
        }
        opentelemetry__proto__collector__trace__v1__export_trace_service_request__free_unpacked(q, NULL);
      }
      free(d);
    }
    bl_split_dispose(&sp);
  }
  bl_ring_unref(r);
  free(body.p);
}

static void expect_error_as(const bl_shape_t *shape, bl_route_t route, const uint8_t *d, size_t n, const char *want,
                            long long off) {
  bl_ring_t *r = ring3();
  bl_split_t sp;
  bl_error_t err;
  int rc = bl_split(shape, route, d, n, r, &sp, &err);
  CHECK_EQ_INT(rc, -1);
  CHECK_CONTAINS(err.msg, want);
  if (off >= 0) CHECK_EQ_INT(err.offset, off);
  if (rc == 0) bl_split_dispose(&sp);
  bl_ring_unref(r);
}

static void expect_error(const uint8_t *d, size_t n, const char *want, long long off) {
  expect_error_as(&bl_shape_traces, BL_ROUTE_TRACE_ID, d, n, want, off);
}

TEST(malformed) {
  wb sp = {0}, body = {0};
  uint8_t t[16];
  tid_of(t, 9);
  /* trace_id of 15 bytes in the second span: message with the full path, offset of its tag */
  wb spans[2] = {{0}, {0}};
  wb_lenfield(&spans[0], 1, t, 16);
  wb_lenfield(&spans[1], 5, "n", 1);
  wb_lenfield(&spans[1], 1, t, 15);
  one_scope_request(&body, "svc", spans, 2);
  size_t at = body.n - 17; /* span 1's trace_id tag */
  char want[160];
  snprintf(want, sizeof want,
           "ExportTraceServiceRequest.resource_spans[0].scope_spans[0].spans[1].trace_id: length 15 (must be 16 or "
           "empty) at byte %zu", at);
  expect_error(body.p, body.n, want, (long long)at);
  free(body.p);
  body = (wb){0};
  /* trace_id with wire type 0 */
  free(spans[1].p);
  spans[1] = (wb){0};
  wb_tag(&spans[1], 1, 0);
  wb_varint(&spans[1], 5);
  one_scope_request(&body, "svc", spans, 2);
  expect_error(body.p, body.n, "spans[1].trace_id: wire type 0 (must be 2", (long long)body.n - 2);
  free(body.p);
  body = (wb){0};
  /* a group (wire type 3) at each scanned level */
  static const uint8_t req_group[] = {0x0b};
  expect_error(req_group, 1, "ExportTraceServiceRequest.resource_spans[0]: wire type 3 (group)", 0);
  static const uint8_t res_group[] = {0x0a, 0x01, 0x14};
  expect_error(res_group, 3, "resource_spans[0].scope_spans[0]: wire type 4 (group)", 2);
  static const uint8_t scope_group[] = {0x0a, 0x03, 0x12, 0x01, 0x0b};
  expect_error(scope_group, 5, "resource_spans[0].scope_spans[0].scope: wire type 3", 4);
  static const uint8_t item_group[] = {0x0a, 0x06, 0x12, 0x04, 0x12, 0x02, 0xa3, 0x01};
  expect_error(item_group, 8, "scope_spans[0].spans[0].(field 20): wire type 3", 6);
  static const uint8_t item_wt6[] = {0x0a, 0x05, 0x12, 0x03, 0x12, 0x01, 0x0e};
  expect_error(item_wt6, 7, "invalid wire type 6", 6);
  static const uint8_t resource_wt7[] = {0x0a, 0x03, 0x0a, 0x01, 0x0f};
  expect_error(resource_wt7, 5, "resource_spans[0].resource.attributes[0]: invalid wire type 7", 4);
  static const uint8_t kv_group[] = {0x0a, 0x05, 0x0a, 0x03, 0x0a, 0x01, 0x1b};
  expect_error(kv_group, 7, "resource_spans[0].resource.attributes[0].(field 3): wire type 3", 6);
  static const uint8_t any_group[] = {0x0a, 0x07, 0x0a, 0x05, 0x0a, 0x03, 0x12, 0x01, 0x0b};
  expect_error(any_group, 9, "resource.attributes[0].value.string_value: wire type 3", 8);
  /* an 11-byte varint, a truncated varint, a length past its parent, field number 0 */
  static const uint8_t long_varint[] = {0x08, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01};
  expect_error(long_varint, sizeof long_varint, "varint longer than 10 bytes", 1);
  static const uint8_t trunc_varint[] = {0x0a, 0x80};
  expect_error(trunc_varint, 2, "truncated length", 1);
  static const uint8_t past_parent[] = {0x0a, 0x04, 0x12, 0x05, 0x00, 0x00};
  expect_error(past_parent, 6, "resource_spans[0].scope_spans[0]: length 5 runs past its parent (ends at 6)", 3);
  static const uint8_t past_end[] = {0x0a, 0x09, 0x00};
  expect_error(past_end, 3, "ExportTraceServiceRequest.resource_spans[0]: length 9 runs past its parent (ends at 3)", 1);
  static const uint8_t field0[] = {0x02, 0x00};
  expect_error(field0, 2, "invalid field number 0", 0);
  static const uint8_t res_entry_varint[] = {0x08, 0x01};
  expect_error(res_entry_varint, 2, "resource_spans[0]: wire type 0 (must be 2", 0);
  free(sp.p);
  free(spans[0].p);
  free(spans[1].p);
}

/* Every prefix and many one-byte corruptions of valid requests of each signal, under every route: -1 or a
 * consistent split, never a crash or a read past the buffer (each prefix is copied into an exact-size
 * allocation for ASan). */
TEST(truncation_and_corruption) {
  pl_rng_seed(&rng, 99);
  bl_ring_t *ring = ring3();
  for (int round = 0; round < 60; round++) {
    model *m = calloc(1, sizeof *m);
    wb body = {0};
    enum kind k = round % 3 == 0 ? K_LOGS : round % 3 == 1 ? K_TRACES : K_METRICS;
    gen_request(k, m, &body);
    for (size_t cut = 0; cut <= body.n; cut++) {
      for (int corrupt = 0; corrupt < 2; corrupt++) {
        uint8_t *d = malloc(cut ? cut : 1);
        if (cut) memcpy(d, body.p, cut);
        if (corrupt && cut) d[rnd((uint32_t)cut)] ^= (uint8_t)(1 + rnd(255));
        int rc0 = 2;
        for (bl_route_t route = BL_ROUTE_TRACE_ID; route <= BL_ROUTE_METRIC; route++) {
          bl_split_t sp;
          bl_error_t err;
          int rc = bl_split(shape_of(k), route, d, cut, ring, &sp, &err);
          CHECK(rc == 0 || rc == -1);
          /* Validation does not depend on the route. */
          if (rc0 == 2) rc0 = rc;
          CHECK_EQ_INT(rc, rc0);
          if (rc == -1) {
            CHECK(err.offset <= cut);
            CHECK(err.msg[0] != '\0');
          } else if (rc == 0) {
            uint64_t items = 0;
            uint32_t targets = 0;
            for (size_t b = 0; b < sp.n_parts; b++) {
              size_t sum = 0;
              for (size_t i = 0; i < sp.parts[b].n_iov; i++) sum += sp.parts[b].iov[i].iov_len;
              CHECK_EQ_INT(sum, sp.parts[b].len);
              CHECK(sp.parts[b].len <= cut);
              items += sp.parts[b].items;
              targets += sp.parts[b].len > 0;
            }
            CHECK_EQ_INT(items, sp.items);
            CHECK_EQ_INT(targets, sp.n_targets);
            bl_split_dispose(&sp);
          }
        }
        free(d);
      }
    }
    model_free(m);
    free(m);
    free(body.p);
  }
  bl_ring_unref(ring);
}

/* ------------------------------------------------------------------------------------ metrics */

/* A KeyValue with a string value, encoded. */
static void kv_str(wb *out, const char *k, const char *v) {
  wb any = {0}, kv = {0};
  wb_lenfield(&any, 1, v, strlen(v));
  wb_lenfield(&kv, 1, k, strlen(k));
  wb_lenfield(&kv, 2, any.p, any.n);
  wb_put(out, kv.p, kv.n);
  free(any.p);
  free(kv.p);
}

/* Appends data field df (0: none) holding n points to an encoded Metric. */
static void data_field(wb *me, uint32_t df, uint32_t n) {
  wb c = {0};
  for (uint32_t i = 0; i < n; i++) {
    uint8_t pt[10] = {0x19, (uint8_t)i, 0, 0, 0, 0, 0, 0, 0, 0}; /* time_unix_nano (fixed64, field 3) */
    wb_lenfield(&c, 1, pt, i % 3 == 2 ? 0 : 9); /* some points are empty */
    if (df == 7 && i == 0) {
      wb_tag(&c, 2, 0); /* aggregation_temporality, between points */
      wb_varint(&c, 2);
    }
  }
  if (df) wb_lenfield(me, df, c.p, c.n);
  free(c.p);
}

/* An encoded Metric named name (NULL: no name field) with the description "#id" that identifies it. */
static void metric_head(wb *me, const char *name, uint32_t id) {
  char desc[16];
  snprintf(desc, sizeof desc, "#%u", id);
  if (name) wb_lenfield(me, 1, name, strlen(name));
  wb_lenfield(me, 2, desc, strlen(desc));
}

/* Appends a ScopeMetrics.metrics record: a Metric whose data field df holds n points. */
static void metric_raw(wb *out, const char *name, uint32_t df, uint32_t n, uint32_t id) {
  wb me = {0};
  metric_head(&me, name, id);
  data_field(&me, df, n);
  wb_lenfield(out, 2, me.p, me.n);
  free(me.p);
}

/* A metrics request with one resource entry: resource attributes attrs (already encoded KeyValue records,
 * NULL: no resource field), written before or after the one scope entry of metrics (encoded items). */
static void metrics_request(wb *out, const wb *attrs, size_t n_attrs, int res_after, const wb *metrics) {
  wb res = {0}, rm = {0};
  for (size_t i = 0; i < n_attrs; i++) wb_lenfield(&res, 1, attrs[i].p, attrs[i].n);
  if (attrs && !res_after) wb_lenfield(&rm, 1, res.p, res.n);
  wb_lenfield(&rm, 2, metrics->p, metrics->n);
  if (attrs && res_after) wb_lenfield(&rm, 1, res.p, res.n);
  wb_lenfield(out, 1, rm.p, rm.n);
  free(res.p);
  free(rm.p);
}

static uint32_t single_owner(bl_route_t route, const wb *body, const bl_ring_t *r) {
  bl_split_t sp;
  bl_error_t err;
  int rc = bl_split(&bl_shape_metrics, route, body->p, body->n, r, &sp, &err);
  CHECK_EQ_INT(rc, 0);
  if (rc) return BL_RING_NONE;
  CHECK_EQ_INT(sp.n_targets, 1);
  uint32_t o = sp.single_target;
  bl_split_dispose(&sp);
  return o;
}

/* By resource: the same attribute set in any order, with any dropped_attributes_count, unknown Resource
 * fields, split over two resource fields, before or after the scopes, routes the same; the key is the one
 * splice.h defines; different sets spread over the members. */
TEST(resource_route_order_independent) {
  pl_rng_seed(&rng, 7);
  bl_ring_member_t mem[5] = {{"http://a:4318", 1, NULL}, {"http://b:4318", 1, NULL}, {"http://c:4318", 2, NULL},
                             {"http://d:4318", 1, NULL}, {"http://e:4318", 1, NULL}};
  bl_ring_t *r = bl_ring_create(mem, 5);
  wb metrics = {0};
  metric_raw(&metrics, "m.a", 5, 2, 0);
  metric_raw(&metrics, "m.b", 7, 1, 1);
  uint32_t hits[5] = {0};
  for (int set = 0; set < 200; set++) {
    size_t n = 1 + rnd(6);
    wb kvs[7] = {{0}};
    char k[16], v[16];
    for (size_t i = 0; i < n; i++) {
      if (i == 0 && rnd(2)) kv_str(&kvs[i], "service.name", rstr(v, sizeof v, "svc-"));
      else kv_str(&kvs[i], rstr(k, sizeof k, "k"), rstr(v, sizeof v, "v"));
    }
    if (rnd(4) == 0) { /* a duplicated attribute: a multiset, so it still must route by the same rule */
      kvs[n] = (wb){0};
      wb_put(&kvs[n], kvs[0].p, kvs[0].n);
      n++;
    }
    uint32_t owner = BL_RING_NONE;
    for (int perm = 0; perm < 8; perm++) {
      size_t ord[7];
      for (size_t i = 0; i < n; i++) ord[i] = i;
      for (size_t i = n; i > 1; i--) {
        size_t j = rnd((uint32_t)i), t = ord[i - 1];
        ord[i - 1] = ord[j];
        ord[j] = t;
      }
      /* Resource fields: attributes in this order, maybe split in two fields, with noise. */
      wb res1 = {0}, res2 = {0}, rm = {0}, body = {0};
      size_t cut = rnd(3) == 0 ? rnd((uint32_t)n + 1) : n;
      for (size_t i = 0; i < n; i++) wb_lenfield(i < cut ? &res1 : &res2, 1, kvs[ord[i]].p, kvs[ord[i]].n);
      if (rnd(2)) { wb_tag(&res1, 2, 0); wb_varint(&res1, rnd(9)); } /* dropped_attributes_count */
      if (rnd(3) == 0) wb_unknown(&res1);
      int after = rnd(2);
      if (!after) wb_lenfield(&rm, 1, res1.p, res1.n);
      wb sm = {0};
      wb_put(&sm, metrics.p, metrics.n);
      wb_lenfield(&rm, 2, sm.p, sm.n);
      if (after) wb_lenfield(&rm, 1, res1.p, res1.n);
      if (cut < n) wb_lenfield(&rm, 1, res2.p, res2.n);
      wb_lenfield(&rm, 3, "s", 1);
      wb_lenfield(&body, 1, rm.p, rm.n);
      uint32_t o = single_owner(BL_ROUTE_RESOURCE, &body, r);
      if (perm == 0) {
        owner = o;
        /* The key as splice.h defines it, from the decoded resource (protobuf-c merges the two fields). */
        MetricsRequest *q =
            opentelemetry__proto__collector__metrics__v1__export_metrics_service_request__unpack(NULL, body.n, body.p);
        CHECK(q != NULL);
        if (q) {
          CHECK_EQ_INT(q->resource_metrics[0]->resource->n_attributes, n);
          CHECK_EQ_INT(o, expected_attrs_owner(r, q->resource_metrics[0]->resource));
          protobuf_c_message_free_unpacked(&q->base, NULL);
        }
        if (o < 5) hits[o]++;
      }
      CHECK_EQ_INT(o, owner);
      free(res1.p);
      free(res2.p);
      free(rm.p);
      free(sm.p);
      free(body.p);
    }
    for (size_t i = 0; i < n; i++) free(kvs[i].p);
  }
  for (int i = 0; i < 5; i++) CHECK(hits[i] > 10);
  /* No resource, an empty one, one with only dropped_attributes_count or an unknown field: the fixed key. */
  uint8_t zero8[8] = {0};
  uint32_t fixed = bl_ring_lookup(r, bl_hash(zero8, 8));
  static const uint8_t no_res[] = {0x0a, 0x04, 0x12, 0x02, 0x12, 0x00};
  static const uint8_t empty_res[] = {0x0a, 0x06, 0x0a, 0x00, 0x12, 0x02, 0x12, 0x00};
  static const uint8_t dropped_res[] = {0x0a, 0x08, 0x0a, 0x02, 0x10, 0x05, 0x12, 0x02, 0x12, 0x00};
  static const uint8_t unknown_res[] = {0x0a, 0x09, 0x12, 0x02, 0x12, 0x00, 0x0a, 0x03, 0xa0, 0x06, 0x01};
  const uint8_t *fx[4] = {no_res, empty_res, dropped_res, unknown_res};
  size_t fxn[4] = {sizeof no_res, sizeof empty_res, sizeof dropped_res, sizeof unknown_res};
  for (int i = 0; i < 4; i++) {
    wb b = {(uint8_t *)fx[i], fxn[i], fxn[i]};
    CHECK_EQ_INT(single_owner(BL_ROUTE_RESOURCE, &b, r), fixed);
  }
  free(metrics.p);
  bl_ring_unref(r);
}

/* By metric: every (service, name) reaches one member across many requests with different layouts
 * (resource before or after the metrics, several entries, other metrics around it); without service.name the
 * same resource bytes and name do too. */
TEST(metric_route_stable) {
  pl_rng_seed(&rng, 11);
  bl_ring_t *r = ring3();
  static const char *const svcs[4] = {"checkout", "cart", "ads", NULL};
  static const char *const names[6] = {"m.a", "m.b", "m.c", "rpc.duration", "x", NULL};
  uint32_t seen_owner[4][6];
  uint32_t targets_hist[4] = {0};
  memset(seen_owner, 0xff, sizeof seen_owner);
  for (int round = 0; round < 400; round++) {
    wb body = {0};
    uint32_t n_res = 1 + rnd(3), id = 0;
    uint64_t want_points = 0;
    uint32_t res_svc[3];
    for (uint32_t e = 0; e < n_res; e++) {
      uint32_t si = rnd(4);
      res_svc[e] = si;
      wb attrs[2] = {{0}, {0}};
      kv_str(&attrs[0], "host.name", "node-1");
      size_t na = 1;
      if (svcs[si]) kv_str(&attrs[na++], "service.name", svcs[si]);
      wb ms = {0};
      uint32_t nm = 1 + rnd(6);
      for (uint32_t i = 0; i < nm; i++) {
        uint32_t pts = rnd(4);
        static const uint32_t dfs[5] = {5, 7, 9, 10, 11};
        metric_raw(&ms, names[rnd(6)], dfs[rnd(5)], pts, id++);
        want_points += pts;
      }
      metrics_request(&body, attrs, na, rnd(2), &ms);
      free(attrs[0].p);
      free(attrs[1].p);
      free(ms.p);
    }
    bl_split_t sp;
    bl_error_t err;
    int rc = bl_split(&bl_shape_metrics, BL_ROUTE_METRIC, body.p, body.n, r, &sp, &err);
    CHECK_EQ_INT(rc, 0);
    if (rc) {
      free(body.p);
      continue;
    }
    CHECK_EQ_INT(sp.items, want_points);
    CHECK_EQ_INT(sp.resources, n_res);
    if (sp.n_targets < 4) targets_hist[sp.n_targets]++;
    uint64_t pts_sum = 0;
    uint32_t got = 0;
    for (size_t b = 0; b < sp.n_parts; b++) {
      if (!sp.parts[b].len) continue;
      uint8_t *d = gather(&sp.parts[b]);
      MetricsRequest *q =
          opentelemetry__proto__collector__metrics__v1__export_metrics_service_request__unpack(NULL, sp.parts[b].len, d);
      CHECK(q != NULL);
      uint64_t part_pts = 0;
      for (size_t e = 0; q && e < q->n_resource_metrics; e++) {
        const Opentelemetry__Proto__Metrics__V1__ResourceMetrics *rm = q->resource_metrics[e];
        const char *svc = service_of(rm->resource);
        uint32_t si = 3;
        for (uint32_t i = 0; i < 3; i++)
          if (svc && strcmp(svc, svcs[i]) == 0) si = i;
        if (sp.n_targets > 1) CHECK(rm->n_scope_metrics == 1 && rm->scope_metrics[0]->n_metrics > 0);
        for (size_t s2 = 0; s2 < rm->n_scope_metrics; s2++) {
          for (size_t i = 0; i < rm->scope_metrics[s2]->n_metrics; i++) {
            const Metric *me = rm->scope_metrics[s2]->metrics[i];
            uint32_t ni = 5;
            for (uint32_t j = 0; j < 5; j++)
              if (strcmp(me->name, names[j]) == 0) ni = j;
            if (seen_owner[si][ni] == UINT32_MAX) seen_owner[si][ni] = (uint32_t)b;
            CHECK_EQ_INT(b, seen_owner[si][ni]);
            CHECK_EQ_INT(b, expected_metric_owner(r, rm->resource, me->name));
            part_pts += otlp_metric_points(me);
            got++;
          }
        }
      }
      CHECK_EQ_INT(part_pts, sp.parts[b].items);
      pts_sum += part_pts;
      if (q) protobuf_c_message_free_unpacked(&q->base, NULL);
      free(d);
    }
    CHECK_EQ_INT(got, id);
    CHECK_EQ_INT(pts_sum, want_points);
    (void)res_svc;
    bl_split_dispose(&sp);
    free(body.p);
  }
  /* The layouts did split: some requests went to 2 and 3 members. */
  CHECK(targets_hist[2] > 0 && targets_hist[3] > 0);
  bl_ring_unref(r);
}

/* Data points of every kind are counted, whatever the route; a Metric without data counts 0 but is sent;
 * with two data fields the last one counts. */
TEST(metric_data_points) {
  bl_ring_t *r = ring3();
  static const uint32_t dfs[5] = {5, 7, 9, 10, 11};
  for (int kind = 0; kind < 5; kind++) {
    for (uint32_t n = 0; n < 5; n++) {
      wb ms = {0}, body = {0}, attrs = {0};
      kv_str(&attrs, "service.name", "svc");
      metric_raw(&ms, "m", dfs[kind], n, 0);
      metrics_request(&body, &attrs, 1, 0, &ms);
      for (bl_route_t route = BL_ROUTE_TRACE_ID; route <= BL_ROUTE_METRIC; route++) {
        bl_split_t sp;
        bl_error_t err;
        CHECK_EQ_INT(bl_split(&bl_shape_metrics, route, body.p, body.n, r, &sp, &err), 0);
        CHECK_EQ_INT(sp.items, n);
        CHECK_EQ_INT(sp.n_targets, 1); /* sent even with 0 points */
        CHECK_EQ_INT(sp.parts[sp.single_target].items, n);
        bl_split_dispose(&sp);
      }
      free(ms.p);
      free(body.p);
      free(attrs.p);
    }
  }
  /* A mix over several members: gauge 3, sum 2, histogram 1, exponential 4, summary 5, no data, empty gauge,
   * then gauge 3 followed by sum 2 in one Metric (2 count). */
  wb ms = {0}, body = {0}, attrs = {0};
  kv_str(&attrs, "service.name", "svc");
  const char *nm[8] = {"a", "b", "c", "d", "e", "f", "g", "h"};
  uint32_t pts[7] = {3, 2, 1, 4, 5, 0, 0};
  for (int i = 0; i < 7; i++) metric_raw(&ms, nm[i], i < 5 ? dfs[i] : i == 5 ? 0 : 5, pts[i], (uint32_t)i);
  wb two = {0};
  metric_head(&two, "h", 7);
  data_field(&two, 5, 3);
  data_field(&two, 7, 2);
  wb_lenfield(&ms, 2, two.p, two.n);
  metrics_request(&body, &attrs, 1, 0, &ms);
  MetricsRequest *q =
      opentelemetry__proto__collector__metrics__v1__export_metrics_service_request__unpack(NULL, body.n, body.p);
  CHECK(q != NULL);
  if (q) {
    const Opentelemetry__Proto__Metrics__V1__ScopeMetrics *sm = q->resource_metrics[0]->scope_metrics[0];
    CHECK_EQ_INT(sm->n_metrics, 8);
    if (sm->n_metrics == 8) CHECK_EQ_INT(otlp_metric_points(sm->metrics[7]), 2);
    protobuf_c_message_free_unpacked(&q->base, NULL);
  }
  bl_split_t sp;
  bl_error_t err;
  CHECK_EQ_INT(bl_split(&bl_shape_metrics, BL_ROUTE_METRIC, body.p, body.n, r, &sp, &err), 0);
  CHECK_EQ_INT(sp.items, 17);
  CHECK(sp.n_targets >= 2);
  uint64_t sum = 0;
  for (size_t b = 0; b < sp.n_parts; b++) {
    sum += sp.parts[b].items;
    if (!sp.parts[b].len) continue;
    uint8_t *d = gather(&sp.parts[b]);
    MetricsRequest *pq =
        opentelemetry__proto__collector__metrics__v1__export_metrics_service_request__unpack(NULL, sp.parts[b].len, d);
    CHECK(pq != NULL);
    uint64_t n = 0;
    for (size_t i = 0; pq && i < pq->resource_metrics[0]->scope_metrics[0]->n_metrics; i++) {
      const Metric *me = pq->resource_metrics[0]->scope_metrics[0]->metrics[i];
      n += otlp_metric_points(me);
      CHECK_EQ_INT(b, bl_ring_lookup(r, bl_hash((char[8]){'s', 'v', 'c', 0, me->name[0]}, 5)));
    }
    CHECK_EQ_INT(n, sp.parts[b].items);
    if (pq) protobuf_c_message_free_unpacked(&pq->base, NULL);
    free(d);
  }
  CHECK_EQ_INT(sum, 17);
  bl_split_dispose(&sp);
  free(ms.p);
  free(body.p);
  free(attrs.p);
  free(two.p);
  bl_ring_unref(r);
}

/* Malformed Metric data: refused with the field path, under every metrics route. */
TEST(metric_malformed) {
  struct {
    const uint8_t *d;
    size_t n;
    const char *want;
    long long off;
  } cases[] = {
      /* metrics[0].gauge.data_points[1] of wire type 0 */
      {(const uint8_t[]){0x0a, 0x0b, 0x12, 0x09, 0x12, 0x07, 0x2a, 0x05, 0x0a, 0x01, 0x00, 0x08, 0x01}, 13,
       "ExportMetricsServiceRequest.resource_metrics[0].scope_metrics[0].metrics[0].gauge.data_points[1]: wire "
       "type 0 (must be 2, length-delimited) at byte 11",
       11},
      /* metrics[0].sum.data_points[0] whose length runs past the sum */
      {(const uint8_t[]){0x0a, 0x0a, 0x12, 0x08, 0x12, 0x06, 0x3a, 0x04, 0x0a, 0x05, 0x00, 0x00}, 12,
       "metrics[0].sum.data_points[0]: length 5 runs past its parent (ends at 12)", 9},
      /* a group inside a histogram */
      {(const uint8_t[]){0x0a, 0x07, 0x12, 0x05, 0x12, 0x03, 0x4a, 0x01, 0x13}, 9,
       "metrics[0].histogram.(field 2): wire type 3 (group) is not allowed", 8},
      /* exponential_histogram and summary of wire type 0 */
      {(const uint8_t[]){0x0a, 0x06, 0x12, 0x04, 0x12, 0x02, 0x50, 0x01}, 8,
       "metrics[0].exponential_histogram: wire type 0 (must be 2", 6},
      {(const uint8_t[]){0x0a, 0x06, 0x12, 0x04, 0x12, 0x02, 0x58, 0x01}, 8,
       "metrics[0].summary: wire type 0 (must be 2", 6},
      /* a truncated varint inside a summary (as the second metric) */
      {(const uint8_t[]){0x0a, 0x0a, 0x12, 0x08, 0x12, 0x00, 0x12, 0x04, 0x5a, 0x02, 0x10, 0x80}, 12,
       "metrics[1].summary: truncated varint field", 11},
      /* Metric.name of wire type 0 */
      {(const uint8_t[]){0x0a, 0x06, 0x12, 0x04, 0x12, 0x02, 0x08, 0x01}, 8, "metrics[0].name: wire type 0", 6},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
    for (bl_route_t route = BL_ROUTE_TRACE_ID; route <= BL_ROUTE_METRIC; route++)
      expect_error_as(&bl_shape_metrics, route, cases[i].d, cases[i].n, cases[i].want, cases[i].off);
}

/* ------------------------------------------------------------- the scanner's fast paths (issue 16) */

/* An item-level field at each edge of the scanner's fast paths (one-byte tags and lengths, fixed-size and one-byte
 * varint values, first-field checks) is accepted or refused exactly as the general rules say: the same message
 * and offset as a field the general path reads. Each case is one span (after a good one) in one scope entry. */
TEST(item_fields_at_the_fast_path_edges) {
  bl_ring_t *r = ring3();
  uint8_t t[16], t2[16];
  tid_of(t, 5);
  tid_of(t2, 6);
  static const char pre[] = "ExportTraceServiceRequest.resource_spans[0].scope_spans[0].spans[1]";
  struct {
    const char *what;
    uint8_t span[24];
    size_t n;
    const char *want; /* NULL: accepted */
    size_t at;        /* offset of the error in the span */
  } cases[] = {
      {"trace_id as fixed64", {0x09, 1, 2, 3, 4, 5, 6, 7, 8}, 9, ".trace_id: wire type 1 (must be 2", 0},
      {"trace_id as fixed32", {0x0d, 1, 2, 3, 4}, 5, ".trace_id: wire type 5 (must be 2", 0},
      {"trace_id as varint", {0x08, 0x01}, 2, ".trace_id: wire type 0 (must be 2", 0},
      {"trace_id of 15 bytes", {0x0a, 15, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}, 17,
       ".trace_id: length 15 (must be 16 or empty)", 0},
      {"field 0, wire type 2", {0x02, 0x00}, 2, ": invalid field number 0", 0},
      {"field 0, wire type 1", {0x01, 1, 2, 3, 4, 5, 6, 7, 8}, 9, ": invalid field number 0", 0},
      {"fixed64 exactly at the end", {0x39, 1, 2, 3, 4, 5, 6, 7, 8}, 9, NULL, 0},
      {"fixed64 one byte short", {0x39, 1, 2, 3, 4, 5, 6, 7}, 8, ".(field 7): truncated fixed64", 0},
      {"fixed32 exactly at the end", {0x6d, 1, 2, 3, 4}, 5, NULL, 0},
      {"fixed32 one byte short", {0x6d, 1, 2, 3}, 4, ".(field 13): truncated fixed32", 0},
      {"one-byte varint", {0x30, 0x7f}, 2, NULL, 0},
      {"two-byte varint", {0x30, 0x96, 0x01}, 3, NULL, 0},
      {"varint truncated", {0x30, 0x80}, 2, ": truncated varint field", 1},
      {"a tag alone", {0x30}, 1, ": truncated varint field", 1},
      {"a one-byte length past the span", {0x2a, 0x05, 'a', 'b'}, 4, ".(field 5): length 5 runs past its parent", 1},
      {"a length byte missing", {0x2a}, 1, ": truncated length", 1},
      {"a two-byte tag (field 16, fixed32)", {0x85, 0x01, 1, 2, 3, 4}, 6, NULL, 0},
      {"a two-byte tag of wire type 2", {0x82, 0x01, 0x01, 'x'}, 4, NULL, 0},
      {"a tag truncated after its first byte", {0x82}, 1, ": truncated field tag", 0},
      {"wire type 3 with a one-byte tag", {0x2b}, 1, ".(field 5): wire type 3 (group) is not allowed", 0},
      {"wire type 6 after a good field", {0x30, 0x01, 0x2e}, 3, ".(field 5): invalid wire type 6", 2},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    int before = test__failed_checks;
    wb spans[2] = {{0}, {0}}, body = {0};
    wb_lenfield(&spans[0], 1, t, 16);
    wb_put(&spans[1], cases[i].span, cases[i].n);
    one_scope_request(&body, "svc", spans, 2);
    size_t span_at = body.n - cases[i].n; /* the second span's content ends the body */
    bl_split_t sp;
    bl_error_t err;
    int rc = bl_split(&bl_shape_traces, BL_ROUTE_TRACE_ID, body.p, body.n, r, &sp, &err);
    if (cases[i].want) {
      char want[200];
      snprintf(want, sizeof want, "%s%s", pre, cases[i].want);
      CHECK_EQ_INT(rc, -1);
      CHECK_CONTAINS(err.msg, want);
      CHECK_EQ_INT(err.offset, span_at + cases[i].at);
      if (rc == -1) {
        char end[40];
        snprintf(end, sizeof end, " at byte %zu", span_at + cases[i].at);
        CHECK_CONTAINS(err.msg, end);
      }
    } else {
      CHECK_EQ_INT(rc, 0);
      CHECK_EQ_INT(sp.items, 2);
    }
    if (test__failed_checks != before) fprintf(stderr, "  case: %s\n", cases[i].what);
    if (rc == 0) bl_split_dispose(&sp);
    free(spans[0].p);
    free(spans[1].p);
    free(body.p);
  }
  /* A trace_id with a two-byte (non-minimal) length varint still routes by its 16 bytes; an empty one falls back
   * to the service. */
  for (int empty = 0; empty < 2; empty++) {
    wb spans[1] = {{0}}, body = {0};
    static const uint8_t l16[] = {0x0a, 0x90, 0x00};
    if (empty) wb_lenfield(&spans[0], 1, "", 0);
    else wb_put(&spans[0], l16, 3), wb_put(&spans[0], t2, 16);
    wb_lenfield(&spans[0], 5, "n", 1);
    one_scope_request(&body, "svc", spans, 1);
    bl_split_t sp;
    bl_error_t err;
    CHECK_EQ_INT(bl_split(&bl_shape_traces, BL_ROUTE_TRACE_ID, body.p, body.n, r, &sp, &err), 0);
    uint32_t want = empty ? bl_ring_lookup(r, bl_hash("svc", 3)) : bl_ring_lookup(r, bl_hash(t2, 16));
    CHECK_EQ_INT(sp.n_targets, 1);
    CHECK_EQ_INT(sp.single_target, want);
    bl_split_dispose(&sp);
    free(spans[0].p);
    free(body.p);
  }
  bl_ring_unref(r);
}

/* Records at the scope, resource and attribute levels at the edges of their fast paths: a span record with a
 * three-byte length, record lengths that run past their parent, and truncated length varints. */
TEST(envelope_fields_at_the_fast_path_edges) {
  bl_ring_t *r = ring3();
  uint8_t t[16];
  tid_of(t, 7);
  /* a 20000-byte span (a three-byte record length) between two small ones */
  wb spans[3] = {{0}, {0}, {0}}, body = {0};
  uint8_t *big = calloc(1, 20000);
  for (int i = 0; i < 3; i++) wb_lenfield(&spans[i], 1, t, 16);
  wb_lenfield(&spans[1], 5, big, 20000);
  one_scope_request(&body, "svc", spans, 3);
  bl_split_t sp;
  bl_error_t err;
  CHECK_EQ_INT(bl_split(&bl_shape_traces, BL_ROUTE_TRACE_ID, body.p, body.n, r, &sp, &err), 0);
  CHECK_EQ_INT(sp.items, 3);
  CHECK_EQ_INT(sp.n_targets, 1);
  bl_split_dispose(&sp);
  free(body.p);
  free(big);
  for (int i = 0; i < 3; i++) free(spans[i].p);
  struct {
    const uint8_t *d;
    size_t n;
    const char *want;
    long long off;
  } cases[] = {
      /* a span record whose one-byte length runs past its scope entry */
      {(const uint8_t[]){0x0a, 0x04, 0x12, 0x02, 0x12, 0x05}, 6,
       "resource_spans[0].scope_spans[0].spans[0]: length 5 runs past its parent (ends at 6)", 5},
      /* a span record whose length varint is cut by the end of its scope entry */
      {(const uint8_t[]){0x0a, 0x04, 0x12, 0x02, 0x12, 0x80}, 6, "scope_spans[0]: truncated length", 5},
      /* a span record (tag 0x12) whose two-byte length runs past */
      {(const uint8_t[]){0x0a, 0x05, 0x12, 0x03, 0x12, 0x80, 0x01}, 7,
       "scope_spans[0].spans[0]: length 128 runs past its parent (ends at 7)", 5},
      /* an attribute's key whose length runs past the KeyValue */
      {(const uint8_t[]){0x0a, 0x06, 0x0a, 0x04, 0x0a, 0x02, 0x0a, 0x09}, 8,
       "resource.attributes[0].key: length 9 runs past its parent (ends at 8)", 7},
      /* a resource field of wire type 2 under a two-byte tag, then a group */
      {(const uint8_t[]){0x0a, 0x06, 0x0a, 0x04, 0xa2, 0x01, 0x00, 0x0b}, 8,
       "resource_spans[0].resource.attributes[0]: wire type 3 (group) is not allowed", 7},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
    expect_error(cases[i].d, cases[i].n, cases[i].want, cases[i].off);
  bl_ring_unref(r);
}

/* ----------------------------------------------- large requests against protobuf-c (issue 16) */

/* Requests far larger than the splitter's inline scratch (every record array grows, in heap chunks), rings larger
 * than it (their per-part scratch alone overflows it), more traces than its trace-id cache has slots: each part
 * must be byte for byte what protobuf-c packs for the same request with only that member's items (entries and
 * scope entries left without items dropped; by service on metrics, whole entries). The bench payloads are
 * packed by protobuf-c, so a correct splice of one is exactly that packing. */

static const ProtobufCFieldDescriptor *field_of(const ProtobufCMessage *m, unsigned num) {
  const ProtobufCFieldDescriptor *f = protobuf_c_message_descriptor_get_field(m->descriptor, num);
  CHECK(f != NULL);
  return f;
}

/* The repeated message field num of m: its count and array. */
static size_t *rep_n(ProtobufCMessage *m, const ProtobufCFieldDescriptor *f) {
  return (size_t *)((char *)m + f->quantifier_offset);
}
static ProtobufCMessage ***rep_v(ProtobufCMessage *m, const ProtobufCFieldDescriptor *f) {
  return (ProtobufCMessage ***)((char *)m + f->offset);
}

/* The member that owns an item of the resource res under route (the contract, as in check_split). */
static uint32_t item_owner(enum kind k, bl_route_t route, const bl_ring_t *ring, const Resource *res,
                           const ProtobufCMessage *item) {
  if (k == K_METRICS) return expected_metric_owner(ring, res, ((const Metric *)item)->name);
  return expected_owner(ring, route, item_tid(k, item), res);
}

/* protobuf-c's packing of whole with only member b's items; whole-entry routes (metrics, not by metric) keep
 * the entries of b's service. Shallow copies: the items are whole's own. */
static wb reference_part(enum kind k, bl_route_t route, ProtobufCMessage *whole, const bl_ring_t *ring, uint32_t b) {
  const int entries = k == K_METRICS && route != BL_ROUTE_METRIC;
  const ProtobufCFieldDescriptor *fr = field_of(whole, 1);
  size_t nr = *rep_n(whole, fr);
  ProtobufCMessage **res_in = *rep_v(whole, fr);
  ProtobufCMessage **res_out = calloc(nr + 1, sizeof *res_out);
  void **to_free = calloc(4 * nr + 4, sizeof *to_free);
  size_t n_out = 0, n_free = 0;
  for (size_t i = 0; i < nr; i++) {
    ProtobufCMessage *e = res_in[i];
    const Resource *res = *(const Resource **)((char *)e + field_of(e, 1)->offset);
    if (entries) {
      if (expected_owner(ring, BL_ROUTE_SERVICE, (ProtobufCBinaryData){0, NULL}, res) == b) res_out[n_out++] = e;
      continue;
    }
    const ProtobufCFieldDescriptor *fs = field_of(e, 2);
    size_t ns = *rep_n(e, fs);
    ProtobufCMessage **sc_in = *rep_v(e, fs), **sc_out = calloc(ns + 1, sizeof *sc_out);
    size_t nso = 0;
    for (size_t j = 0; j < ns; j++) {
      ProtobufCMessage *s = sc_in[j];
      const ProtobufCFieldDescriptor *fi = field_of(s, 2);
      size_t ni = *rep_n(s, fi);
      ProtobufCMessage **it_in = *rep_v(s, fi), **it_out = calloc(ni + 1, sizeof *it_out);
      size_t nio = 0;
      for (size_t x = 0; x < ni; x++)
        if (item_owner(k, route, ring, res, it_in[x]) == b) it_out[nio++] = it_in[x];
      if (!nio) {
        free(it_out);
        continue;
      }
      ProtobufCMessage *sc = malloc(s->descriptor->sizeof_message);
      memcpy(sc, s, s->descriptor->sizeof_message);
      *rep_n(sc, fi) = nio;
      *rep_v(sc, fi) = it_out;
      sc_out[nso++] = sc;
      to_free[n_free++] = sc;
      to_free[n_free++] = it_out;
    }
    if (!nso) {
      free(sc_out);
      continue;
    }
    ProtobufCMessage *ec = malloc(e->descriptor->sizeof_message);
    memcpy(ec, e, e->descriptor->sizeof_message);
    *rep_n(ec, fs) = nso;
    *rep_v(ec, fs) = sc_out;
    res_out[n_out++] = ec;
    to_free[n_free++] = ec;
    to_free[n_free++] = sc_out;
    to_free = realloc(to_free, (n_free + 4 * nr + 4) * sizeof *to_free);
  }
  ProtobufCMessage *req = malloc(whole->descriptor->sizeof_message);
  memcpy(req, whole, whole->descriptor->sizeof_message);
  *rep_n(req, fr) = n_out;
  *rep_v(req, fr) = res_out;
  wb out = {0};
  if (n_out) wb_pack(&out, req);
  free(req);
  free(res_out);
  for (size_t i = 0; i < n_free; i++) free(to_free[i]);
  free(to_free);
  return out;
}

static bl_ring_t *big_ring(size_t n) {
  bl_ring_member_t *m = calloc(n, sizeof *m);
  char (*names)[48] = calloc(n, sizeof *names);
  for (size_t i = 0; i < n; i++) {
    snprintf(names[i], sizeof names[i], "http://collector-%zu:4318", i);
    m[i] = (bl_ring_member_t){names[i], 1 + (uint32_t)(i % 3), NULL};
  }
  bl_ring_t *r = bl_ring_create(m, n);
  free(m);
  free(names);
  return r;
}

static const ProtobufCMessageDescriptor *desc_of_kind(enum kind k) {
  return k == K_TRACES   ? &opentelemetry__proto__collector__trace__v1__export_trace_service_request__descriptor
         : k == K_LOGS   ? &opentelemetry__proto__collector__logs__v1__export_logs_service_request__descriptor
                         : &opentelemetry__proto__collector__metrics__v1__export_metrics_service_request__descriptor;
}

TEST(large_requests_match_protobuf_c) {
  static const struct {
    enum kind k;
    pl_signal sig;
    uint32_t items, traces, resources;
    bl_route_t route;
  } cases[] = {
      {K_TRACES, PL_TRACES, 3000, 500, 40, BL_ROUTE_TRACE_ID},
      {K_TRACES, PL_TRACES, 3000, 500, 40, BL_ROUTE_SERVICE},
      {K_TRACES, PL_TRACES, 100, 10, 0, BL_ROUTE_TRACE_ID},
      {K_LOGS, PL_LOGS, 2000, 300, 30, BL_ROUTE_TRACE_ID},
      {K_METRICS, PL_METRICS, 3000, 1, 200, BL_ROUTE_METRIC},
      {K_METRICS, PL_METRICS, 3000, 1, 200, BL_ROUTE_SERVICE},
  };
  static const size_t ring_sizes[] = {1, 3, 300};
  for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
    pl_options o;
    pl_options_default(&o);
    o.signal = cases[c].sig;
    o.items = cases[c].items;
    o.traces = cases[c].traces;
    o.resources = cases[c].resources;
    o.seed = 16 + c;
    o.base_time_ns = 1700000000000000000ull;
    pl_payload p;
    CHECK_EQ_INT(pl_payload_init(&p, &o), 0);
    ProtobufCMessage *whole = protobuf_c_message_unpack(desc_of_kind(cases[c].k), NULL, p.len, p.body);
    CHECK(whole != NULL);
    if (!whole) continue;
    for (size_t ri = 0; ri < sizeof ring_sizes / sizeof ring_sizes[0]; ri++) {
      int before = test__failed_checks;
      bl_ring_t *ring = big_ring(ring_sizes[ri]);
      bl_split_t sp;
      bl_error_t err;
      int rc = bl_split(shape_of(cases[c].k), cases[c].route, p.body, p.len, ring, &sp, &err);
      CHECK_EQ_INT(rc, 0);
      if (rc) {
        fprintf(stderr, "  case %zu ring %zu: %s\n", c, ring_sizes[ri], err.msg);
        bl_ring_unref(ring);
        continue;
      }
      CHECK_EQ_INT(sp.items, cases[c].items);
      uint32_t targets = 0;
      for (uint32_t b = 0; b < sp.n_parts; b++) {
        wb want = reference_part(cases[c].k, cases[c].route, whole, ring, b);
        CHECK_EQ_INT(sp.parts[b].len, want.n);
        targets += want.n > 0;
        if (sp.parts[b].len == want.n && want.n) {
          uint8_t *got = gather(&sp.parts[b]);
          CHECK(memcmp(got, want.p, want.n) == 0);
          free(got);
        }
        free(want.p);
      }
      CHECK_EQ_INT(sp.n_targets, targets);
      if (ring_sizes[ri] == 1) CHECK_EQ_INT(sp.parts[0].n_iov, 1);
      if (test__failed_checks != before) fprintf(stderr, "  case %zu ring %zu\n", c, ring_sizes[ri]);
      bl_split_dispose(&sp);
      bl_ring_unref(ring);
    }
    protobuf_c_message_free_unpacked(whole, NULL);
    pl_payload_dispose(&p);
  }
}

TEST_MAIN()
