/* Unit tests for bench/payload.{c,h}: bodies unpack, counts match, re-randomisation, JSON shape, gzip. */
#include "test.h"

#include <errno.h>

#include <libdeflate.h>

#include "bench/payload.h"
#include "opentelemetry/proto/collector/logs/v1/logs_service.pb-c.h"
#include "opentelemetry/proto/collector/metrics/v1/metrics_service.pb-c.h"
#include "opentelemetry/proto/collector/trace/v1/trace_service.pb-c.h"

typedef Opentelemetry__Proto__Collector__Trace__V1__ExportTraceServiceRequest TraceRequest;
typedef Opentelemetry__Proto__Collector__Logs__V1__ExportLogsServiceRequest LogsRequest;
typedef Opentelemetry__Proto__Collector__Metrics__V1__ExportMetricsServiceRequest MetricsRequest;

static pl_options opts(pl_signal s, pl_encoding e, uint32_t items, uint32_t traces, uint64_t seed) {
  pl_options o;
  pl_options_default(&o);
  o.signal = s;
  o.encoding = e;
  o.items = items;
  o.traces = traces;
  o.seed = seed;
  return o;
}

/* Collected (trace_id, count) pairs of an unpacked body, in first-seen order. */
typedef struct seen {
  pl_trace t[1024];
  size_t n;
  size_t zero_ids;
} seen;

static void seen_add(seen *s, ProtobufCBinaryData id) {
  if (id.len != 16) {
    s->zero_ids++;
    return;
  }
  static const uint8_t zero[16];
  if (memcmp(id.data, zero, 16) == 0) s->zero_ids++;
  for (size_t i = 0; i < s->n; i++) {
    if (memcmp(s->t[i].id, id.data, 16) == 0) {
      s->t[i].count++;
      return;
    }
  }
  if (s->n < 1024) {
    memcpy(s->t[s->n].id, id.data, 16);
    s->t[s->n++].count = 1;
  }
}

/* Every reported trace appears in seen with the same count, and nothing else does. */
static void check_matches(const pl_payload *p, const seen *s) {
  CHECK_EQ_INT(s->n, p->n_traces);
  CHECK_EQ_INT(s->zero_ids, 0);
  for (size_t i = 0; i < p->n_traces; i++) {
    int found = 0;
    for (size_t k = 0; k < s->n; k++) {
      if (memcmp(s->t[k].id, p->traces[i].id, 16) == 0) {
        found = 1;
        CHECK_EQ_INT(s->t[k].count, p->traces[i].count);
      }
    }
    CHECK(found);
  }
}

static size_t unpack_traces(const pl_payload *p, seen *s, size_t *n_resources) {
  TraceRequest *req = opentelemetry__proto__collector__trace__v1__export_trace_service_request__unpack(NULL, p->len, p->body);
  CHECK(req != NULL);
  if (!req) return 0;
  size_t spans = 0;
  *n_resources = req->n_resource_spans;
  for (size_t r = 0; r < req->n_resource_spans; r++) {
    CHECK(req->resource_spans[r]->resource != NULL);
    for (size_t k = 0; k < req->resource_spans[r]->n_scope_spans; k++) {
      Opentelemetry__Proto__Trace__V1__ScopeSpans *ss = req->resource_spans[r]->scope_spans[k];
      for (size_t i = 0; i < ss->n_spans; i++) {
        seen_add(s, ss->spans[i]->trace_id);
        CHECK_EQ_INT(ss->spans[i]->span_id.len, 8);
        CHECK(ss->spans[i]->n_attributes >= 10);
        spans++;
      }
    }
  }
  opentelemetry__proto__collector__trace__v1__export_trace_service_request__free_unpacked(req, NULL);
  return spans;
}

TEST(traces_protobuf_counts) {
  pl_options o = opts(PL_TRACES, PL_PROTOBUF, 100, 10, 42);
  pl_payload p;
  CHECK_EQ_INT(pl_payload_init(&p, &o), 0);
  CHECK_EQ_INT(p.items, 100);
  CHECK_EQ_INT(p.n_traces, 10);
  seen s = {0};
  size_t nres = 0;
  CHECK_EQ_INT(unpack_traces(&p, &s, &nres), 100);
  CHECK_EQ_INT(nres, 3);
  check_matches(&p, &s);
  uint32_t total = 0;
  for (size_t i = 0; i < p.n_traces; i++) total += p.traces[i].count;
  CHECK_EQ_INT(total, 100);
  pl_payload_dispose(&p);
}

TEST(traces_service_name_and_parents) {
  pl_options o = opts(PL_TRACES, PL_PROTOBUF, 12, 3, 7);
  o.resources = 2;
  pl_payload p;
  CHECK_EQ_INT(pl_payload_init(&p, &o), 0);
  TraceRequest *req = opentelemetry__proto__collector__trace__v1__export_trace_service_request__unpack(NULL, p.len, p.body);
  CHECK(req != NULL);
  if (req) {
    CHECK_EQ_INT(req->n_resource_spans, 2);
    Opentelemetry__Proto__Common__V1__KeyValue *kv = req->resource_spans[1]->resource->attributes[0];
    CHECK_EQ_STR(kv->key, "service.name");
    CHECK_EQ_STR(kv->value->string_value, "svc-1");
    size_t roots = 0;
    for (size_t r = 0; r < req->n_resource_spans; r++) {
      Opentelemetry__Proto__Trace__V1__ScopeSpans *ss = req->resource_spans[r]->scope_spans[0];
      CHECK_EQ_STR(ss->scope->name, "io.opentelemetry.instrumentation.http");
      for (size_t i = 0; i < ss->n_spans; i++) roots += ss->spans[i]->parent_span_id.len == 0;
    }
    CHECK_EQ_INT(roots, 3); /* one root per trace */
    opentelemetry__proto__collector__trace__v1__export_trace_service_request__free_unpacked(req, NULL);
  }
  pl_payload_dispose(&p);
}

TEST(same_seed_same_ids) {
  pl_options o = opts(PL_TRACES, PL_PROTOBUF, 20, 4, 99);
  pl_payload a, b;
  CHECK_EQ_INT(pl_payload_init(&a, &o), 0);
  CHECK_EQ_INT(pl_payload_init(&b, &o), 0);
  CHECK(memcmp(a.traces[0].id, b.traces[0].id, 16) == 0);
  pl_payload_rerandomize(&a);
  pl_payload_rerandomize(&b);
  CHECK(memcmp(a.traces[3].id, b.traces[3].id, 16) == 0);
  pl_payload_dispose(&a);
  pl_payload_dispose(&b);
}

TEST(rerandomize_traces) {
  pl_options o = opts(PL_TRACES, PL_PROTOBUF, 250, 17, 5);
  pl_payload p;
  CHECK_EQ_INT(pl_payload_init(&p, &o), 0);
  size_t len = p.len;
  for (int round = 0; round < 5; round++) {
    uint8_t before[16];
    memcpy(before, p.traces[0].id, 16);
    pl_payload_rerandomize(&p);
    CHECK(memcmp(before, p.traces[0].id, 16) != 0);
    CHECK_EQ_INT(p.len, len);
    seen s = {0};
    size_t nres = 0;
    CHECK_EQ_INT(unpack_traces(&p, &s, &nres), 250);
    check_matches(&p, &s);
  }
  pl_payload_dispose(&p);
}

TEST(logs_protobuf_rerandomize) {
  pl_options o = opts(PL_LOGS, PL_PROTOBUF, 60, 7, 3);
  pl_payload p;
  CHECK_EQ_INT(pl_payload_init(&p, &o), 0);
  pl_payload_rerandomize(&p);
  LogsRequest *req = opentelemetry__proto__collector__logs__v1__export_logs_service_request__unpack(NULL, p.len, p.body);
  CHECK(req != NULL);
  if (req) {
    seen s = {0};
    size_t n = 0;
    for (size_t r = 0; r < req->n_resource_logs; r++) {
      for (size_t k = 0; k < req->resource_logs[r]->n_scope_logs; k++) {
        Opentelemetry__Proto__Logs__V1__ScopeLogs *sl = req->resource_logs[r]->scope_logs[k];
        for (size_t i = 0; i < sl->n_log_records; i++, n++) {
          seen_add(&s, sl->log_records[i]->trace_id);
          CHECK(sl->log_records[i]->body && sl->log_records[i]->body->string_value[0]);
        }
      }
    }
    CHECK_EQ_INT(n, 60);
    check_matches(&p, &s);
    opentelemetry__proto__collector__logs__v1__export_logs_service_request__free_unpacked(req, NULL);
  }
  pl_payload_dispose(&p);
}

TEST(metrics_protobuf) {
  pl_options o = opts(PL_METRICS, PL_PROTOBUF, 30, 0, 3);
  pl_payload p;
  CHECK_EQ_INT(pl_payload_init(&p, &o), 0);
  CHECK_EQ_INT(p.n_traces, 0);
  pl_payload_rerandomize(&p); /* no-op for metrics */
  MetricsRequest *req = opentelemetry__proto__collector__metrics__v1__export_metrics_service_request__unpack(NULL, p.len, p.body);
  CHECK(req != NULL);
  if (req) {
    size_t points = 0, gauges = 0, sums = 0, hists = 0;
    for (size_t r = 0; r < req->n_resource_metrics; r++) {
      Opentelemetry__Proto__Metrics__V1__ScopeMetrics *sm = req->resource_metrics[r]->scope_metrics[0];
      for (size_t m = 0; m < sm->n_metrics; m++) {
        Opentelemetry__Proto__Metrics__V1__Metric *me = sm->metrics[m];
        switch (me->data_case) {
        case OPENTELEMETRY__PROTO__METRICS__V1__METRIC__DATA_GAUGE: gauges++; points += me->gauge->n_data_points; break;
        case OPENTELEMETRY__PROTO__METRICS__V1__METRIC__DATA_SUM: sums++; points += me->sum->n_data_points; break;
        case OPENTELEMETRY__PROTO__METRICS__V1__METRIC__DATA_HISTOGRAM:
          hists++;
          points += me->histogram->n_data_points;
          CHECK_EQ_INT(me->histogram->data_points[0]->n_bucket_counts, me->histogram->data_points[0]->n_explicit_bounds + 1);
          break;
        default: CHECK(0);
        }
      }
    }
    CHECK_EQ_INT(points, 30);
    CHECK_EQ_INT(gauges, 3);
    CHECK_EQ_INT(sums, 3);
    CHECK_EQ_INT(hists, 3);
    opentelemetry__proto__collector__metrics__v1__export_metrics_service_request__free_unpacked(req, NULL);
  }
  pl_payload_dispose(&p);
}

TEST(bad_options) {
  pl_payload p;
  pl_options o = opts(PL_TRACES, PL_PROTOBUF, 0, 0, 1);
  CHECK_EQ_INT(pl_payload_init(&p, &o), -EINVAL);
  o = opts(PL_TRACES, PL_PROTOBUF, 5, 6, 1);
  CHECK_EQ_INT(pl_payload_init(&p, &o), -EINVAL);
  o = opts(PL_LOGS, PL_PROTOBUF, 5, 0, 1);
  CHECK_EQ_INT(pl_payload_init(&p, &o), -EINVAL);
  o = opts(PL_TRACES, PL_PROTOBUF, 5, 1, 1);
  o.resources = 6;
  CHECK_EQ_INT(pl_payload_init(&p, &o), -EINVAL);
  o = opts(PL_TRACES, PL_PROTOBUF, 1, 1, 1); /* smallest valid */
  CHECK_EQ_INT(pl_payload_init(&p, &o), 0);
  CHECK_EQ_INT(p.n_traces, 1);
  pl_payload_dispose(&p);
}

/* Counts non-overlapping occurrences of needle in the NUL-terminated body. */
static size_t count_str(const char *hay, const char *needle) {
  size_t n = 0;
  for (const char *q = strstr(hay, needle); q; q = strstr(q + strlen(needle), needle)) n++;
  return n;
}

TEST(traces_json_shape) {
  pl_options o = opts(PL_TRACES, PL_JSON, 4, 2, 11);
  o.resources = 1;
  o.base_time_ns = 1700000000000000000ull;
  pl_payload p;
  CHECK_EQ_INT(pl_payload_init(&p, &o), 0);
  const char *js = (const char *)p.body;
  CHECK_EQ_INT(strlen(js), p.len);
  const char *head = "{\"resourceSpans\":[{\"resource\":{\"attributes\":[";
  CHECK(strncmp(js, head, strlen(head)) == 0);
  CHECK_CONTAINS(js, "{\"key\":\"service.name\",\"value\":{\"stringValue\":\"svc-0\"}}");
  CHECK_CONTAINS(js, "\"scopeSpans\":[{\"scope\":{\"name\":\"io.opentelemetry.instrumentation.http\"");
  CHECK_CONTAINS(js, "\"key\":\"http.status_code\",\"value\":{\"intValue\":\"");
  CHECK_CONTAINS(js, "\"doubleValue\":");
  CHECK_CONTAINS(js, "\"boolValue\":");
  CHECK_CONTAINS(js, "\"startTimeUnixNano\":\"17000000000");
  CHECK_CONTAINS(js, "\"kind\":2");
  CHECK_CONTAINS(js, "\"parentSpanId\":\"");
  CHECK_EQ_INT(count_str(js, "\"traceId\":\""), 4);
  CHECK_EQ_INT(count_str(js, "\"spanId\":\""), 4);
  for (int round = 0; round < 2; round++) {
    for (size_t t = 0; t < p.n_traces; t++) {
      char hex[33], key[48];
      pl_trace_hex(p.traces[t].id, hex);
      snprintf(key, sizeof(key), "\"traceId\":\"%s\"", hex);
      CHECK_EQ_INT(count_str(js, key), p.traces[t].count);
    }
    pl_payload_rerandomize(&p);
    CHECK_EQ_INT(strlen(js), p.len);
  }
  pl_payload_dispose(&p);
}

TEST(logs_and_metrics_json_keys) {
  pl_options o = opts(PL_LOGS, PL_JSON, 5, 5, 2);
  pl_payload p;
  CHECK_EQ_INT(pl_payload_init(&p, &o), 0);
  CHECK_CONTAINS((const char *)p.body, "{\"resourceLogs\":[");
  CHECK_CONTAINS((const char *)p.body, "\"logRecords\":[{\"timeUnixNano\":\"");
  CHECK_CONTAINS((const char *)p.body, "\"severityNumber\":");
  CHECK_CONTAINS((const char *)p.body, "\"body\":{\"stringValue\":\"");
  CHECK_EQ_INT(count_str((const char *)p.body, "\"traceId\":\""), 5);
  pl_payload_dispose(&p);

  o = opts(PL_METRICS, PL_JSON, 9, 0, 2);
  CHECK_EQ_INT(pl_payload_init(&p, &o), 0);
  CHECK_CONTAINS((const char *)p.body, "{\"resourceMetrics\":[");
  CHECK_CONTAINS((const char *)p.body, "\"histogram\":{\"dataPoints\":[");
  CHECK_CONTAINS((const char *)p.body, "\"bucketCounts\":[\"");
  CHECK_CONTAINS((const char *)p.body, "\"gauge\":{\"dataPoints\":[");
  CHECK_CONTAINS((const char *)p.body, "\"isMonotonic\":true");
  CHECK_CONTAINS((const char *)p.body, "\"asInt\":\"");
  pl_payload_dispose(&p);
}

TEST(gzip_roundtrip) {
  pl_options o = opts(PL_TRACES, PL_PROTOBUF, 200, 20, 8);
  pl_payload p;
  CHECK_EQ_INT(pl_payload_init(&p, &o), 0);
  pl_gzip g;
  CHECK_EQ_INT(pl_gzip_init(&g, 13), -EINVAL);
  CHECK_EQ_INT(pl_gzip_init(&g, 1), 0);
  struct libdeflate_decompressor *d = libdeflate_alloc_decompressor();
  uint8_t *back = malloc(p.len);
  for (int round = 0; round < 3; round++) {
    const uint8_t *z = NULL;
    ssize_t n = pl_gzip_compress(&g, p.body, p.len, &z);
    CHECK(n > 0 && (size_t)n < p.len);
    CHECK(z[0] == 0x1f && z[1] == 0x8b);
    size_t got = 0;
    CHECK_EQ_INT(libdeflate_gzip_decompress(d, z, (size_t)n, back, p.len, &got), LIBDEFLATE_SUCCESS);
    CHECK_EQ_INT(got, p.len);
    CHECK(memcmp(back, p.body, p.len) == 0);
    pl_payload_rerandomize(&p);
  }
  free(back);
  libdeflate_free_decompressor(d);
  pl_gzip_dispose(&g);
  pl_payload_dispose(&p);
}

TEST(signal_names) {
  pl_signal s;
  CHECK_EQ_INT(pl_signal_parse("logs", &s), 0);
  CHECK_EQ_INT(s, PL_LOGS);
  CHECK_EQ_INT(pl_signal_parse("spans", &s), -EINVAL);
  CHECK_EQ_STR(pl_signal_path(PL_METRICS), "/v1/metrics");
  CHECK_EQ_STR(pl_signal_name(PL_TRACES), "traces");
  CHECK_EQ_STR(pl_content_type(PL_JSON), "application/json");
  char hex[33];
  uint8_t id[16] = {0x00, 0x01, 0xab, 0xff};
  pl_trace_hex(id, hex);
  CHECK_EQ_STR(hex, "0001abff000000000000000000000000");
}

TEST_MAIN()
