/*
 * Unit tests for balancer/splice.{c,h}.
 *
 * The property tests build random requests whose envelopes are written by hand around protobuf-c-packed
 * messages (so fields can come in any order, interleave and carry unknown fields at every level), split them
 * over random rings, decode every part with protobuf-c and check: each item exactly once, in the part of the
 * owner computed here from the decoded item and resource, under its original resource and scope entry
 * (compared as packed bytes, schema_url and unknown-field counts), in order, with no empty envelopes, and
 * with exact part lengths and item counts.
 */
#include "test.h"

#include "balancer/ring.h"
#include "balancer/splice.h"
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

/* ------------------------------------------------------------------------------ the generated model */

enum kind { K_TRACES, K_LOGS, K_METRICS };

typedef struct m_item {
  uint8_t *bytes;
  size_t len;
  uint32_t r, s;
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
  uint32_t items; /* metrics: Metric records */
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
  m->n_items++;
  wb_lenfield(out, 2, w.p, w.n);
}

static void gen_metric(wb *out) {
  Metric me = OPENTELEMETRY__PROTO__METRICS__V1__METRIC__INIT;
  Gauge g = OPENTELEMETRY__PROTO__METRICS__V1__GAUGE__INIT;
  NumberDataPoint dp = OPENTELEMETRY__PROTO__METRICS__V1__NUMBER_DATA_POINT__INIT, *pdp[1] = {&dp};
  dp.value_case = OPENTELEMETRY__PROTO__METRICS__V1__NUMBER_DATA_POINT__VALUE_AS_INT;
  dp.as_int = rnd(100);
  g.data_points = pdp;
  g.n_data_points = 1;
  char name[16];
  me.name = rstr(name, sizeof name, "m.");
  me.data_case = OPENTELEMETRY__PROTO__METRICS__V1__METRIC__DATA_GAUGE;
  me.gauge = &g;
  wb w = {0};
  wb_pack(&w, &me.base);
  wb_lenfield(out, 2, w.p, w.n);
  free(w.p);
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
            if (k == K_METRICS) {
              gen_metric(&s);
              mr->items++;
            } else {
              m->items[m->n_items].r = r;
              m->items[m->n_items].s = si;
              gen_item(k, m, &s);
            }
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
  CHECK_EQ_INT(sp.n_parts, bl_ring_size(ring));
  CHECK_EQ_INT(sp.resources, m->n_res);
  uint64_t want_items = m->n_items;
  if (k == K_METRICS) {
    want_items = 0;
    for (uint32_t r = 0; r < m->n_res; r++) want_items += m->res[r].items;
  }
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
      if (!whole) CHECK(vr->n > 0 || k == K_METRICS);
      if (k == K_METRICS) {
        /* Whole entries: identified by their schema_url "res-N". */
        unsigned idx = 0;
        CHECK(sscanf(vr->schema, "res-%u", &idx) == 1);
        if (idx >= m->n_res) continue;
        m_res *mr = &m->res[idx];
        CHECK(!mr->seen);
        mr->seen = 1;
        check_res_matches(vr, mr);
        CHECK_EQ_INT(vr->n, mr->n_scopes);
        uint64_t n_metrics = 0;
        for (size_t s = 0; s < vr->n; s++) n_metrics += vr->scopes[s].n;
        CHECK_EQ_INT(n_metrics, mr->items);
        got += n_metrics;
        if (!whole) {
          CHECK(mr->items > 0);
          CHECK((int64_t)idx > last_r);
          last_r = idx;
        }
        if (mr->items) CHECK_EQ_INT(b, expected_owner(ring, BL_ROUTE_SERVICE, (ProtobufCBinaryData){0, NULL}, vr->res));
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
          got++;
          CHECK((int64_t)id > last_id);
          last_id = id;
          CHECK(bytes_eq_packed(vs->items[i], it->bytes, it->len));
          CHECK_EQ_INT(b, expected_owner(ring, route, item_tid(k, vs->items[i]), vr->res));
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
  if (k == K_METRICS) {
    for (uint32_t r = 0; r < m->n_res; r++) CHECK(m->res[r].seen || m->res[r].items == 0 || sp.n_targets == 1);
  } else {
    for (uint32_t i = 0; i < m->n_items; i++) CHECK(m->items[i].seen);
  }
  CHECK_EQ_INT(sp.n_targets == 0, want_items == 0);
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
    bl_route_t route = k == K_METRICS || rnd(4) == 0 ? BL_ROUTE_SERVICE : BL_ROUTE_TRACE_ID;
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
TEST(metrics_property) { property(K_METRICS, 2000, 3); }

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

static void expect_error(const uint8_t *d, size_t n, const char *want, long long off) {
  bl_ring_t *r = ring3();
  bl_split_t sp;
  bl_error_t err;
  int rc = bl_split(&bl_shape_traces, BL_ROUTE_TRACE_ID, d, n, r, &sp, &err);
  CHECK_EQ_INT(rc, -1);
  CHECK_CONTAINS(err.msg, want);
  if (off >= 0) CHECK_EQ_INT(err.offset, off);
  if (rc == 0) bl_split_dispose(&sp);
  bl_ring_unref(r);
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

/* Every prefix and many one-byte corruptions of valid requests: -1 or a consistent split, never a crash or a
 * read past the buffer (each prefix is copied into an exact-size allocation for ASan). */
TEST(truncation_and_corruption) {
  pl_rng_seed(&rng, 99);
  bl_ring_t *ring = ring3();
  for (int round = 0; round < 40; round++) {
    model *m = calloc(1, sizeof *m);
    wb body = {0};
    gen_request(round % 3 == 0 ? K_LOGS : K_TRACES, m, &body);
    for (size_t cut = 0; cut <= body.n; cut++) {
      for (int corrupt = 0; corrupt < 2; corrupt++) {
        uint8_t *d = malloc(cut ? cut : 1);
        if (cut) memcpy(d, body.p, cut);
        if (corrupt && cut) d[rnd((uint32_t)cut)] ^= (uint8_t)(1 + rnd(255));
        bl_split_t sp;
        bl_error_t err;
        int rc = bl_split(&bl_shape_traces, BL_ROUTE_TRACE_ID, d, cut, ring, &sp, &err);
        CHECK(rc == 0 || rc == -1);
        if (rc == -1) {
          CHECK(err.offset <= cut);
          CHECK(err.msg[0] != '\0');
        } else if (rc == 0) {
          uint64_t items = 0;
          for (size_t b = 0; b < sp.n_parts; b++) {
            size_t sum = 0;
            for (size_t i = 0; i < sp.parts[b].n_iov; i++) sum += sp.parts[b].iov[i].iov_len;
            CHECK_EQ_INT(sum, sp.parts[b].len);
            CHECK(sp.parts[b].len <= cut);
            items += sp.parts[b].items;
          }
          CHECK_EQ_INT(items, sp.items);
          bl_split_dispose(&sp);
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

TEST_MAIN()
