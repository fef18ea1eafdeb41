/*
 * Unit tests for gateway/otlp_json: OTLP/JSON -> protobuf transcoding.
 *
 * Round trips: bench/payload.h builds the same request (same options, fixed base time => same message: the
 * generator draws everything from its seeded RNG before choosing the encoding) as protobuf and as OTLP/JSON; the
 * transcoded JSON must be byte-identical to the generator's protobuf (both are packed by protobuf-c, in
 * field-number order). Then hand-written bodies for each rule, and error cases checking the field path.
 */
#include "test.h"

#include <math.h>

#include "bench/payload.h"
#include "gateway/otlp_json.h"
#include "opentelemetry/proto/collector/logs/v1/logs_service.pb-c.h"
#include "opentelemetry/proto/collector/metrics/v1/metrics_service.pb-c.h"
#include "opentelemetry/proto/collector/trace/v1/trace_service.pb-c.h"

typedef Opentelemetry__Proto__Collector__Trace__V1__ExportTraceServiceRequest TraceRequest;
typedef Opentelemetry__Proto__Collector__Logs__V1__ExportLogsServiceRequest LogsRequest;
typedef Opentelemetry__Proto__Collector__Metrics__V1__ExportMetricsServiceRequest MetricsRequest;
typedef Opentelemetry__Proto__Trace__V1__Span Span;
typedef Opentelemetry__Proto__Logs__V1__LogRecord LogRecord;
typedef Opentelemetry__Proto__Metrics__V1__Metric Metric;
typedef Opentelemetry__Proto__Common__V1__AnyValue AnyValue;

static const ProtobufCMessageDescriptor *const descs[3] = {
    &opentelemetry__proto__collector__trace__v1__export_trace_service_request__descriptor,
    &opentelemetry__proto__collector__logs__v1__export_logs_service_request__descriptor,
    &opentelemetry__proto__collector__metrics__v1__export_metrics_service_request__descriptor,
};

static char err[512];

/* Transcodes a NUL-terminated body; returns rc and the unpacked message (NULL unless rc == 0). */
static int transcode(int sig, const char *json, ProtobufCMessage **msg) {
  uint8_t *out = (uint8_t *)"x";
  size_t n = 12345;
  err[0] = '\0';
  int rc = oj_to_protobuf(sig, (const uint8_t *)json, strlen(json), &out, &n, err, sizeof err);
  if (msg) *msg = NULL;
  if (rc != 0) {
    CHECK(out == NULL);
    CHECK_EQ_INT(n, 0);
    CHECK(err[0] != '\0');
    CHECK(strchr(err, '\n') == NULL);
    return rc;
  }
  CHECK(out != NULL);
  ProtobufCMessage *m = protobuf_c_message_unpack(descs[sig], NULL, n, out);
  CHECK(m != NULL);
  free(out);
  if (msg) *msg = m;
  else if (m) protobuf_c_message_free_unpacked(m, NULL);
  return rc;
}

/* Transcodes and returns the raw bytes (malloc'd) or NULL on error. */
static uint8_t *transcode_bytes(int sig, const char *json, size_t *n) {
  uint8_t *out;
  if (oj_to_protobuf(sig, (const uint8_t *)json, strlen(json), &out, n, err, sizeof err) != 0) return NULL;
  return out;
}

/* Expects rc -1 and an error message containing want. */
static void expect_error(int sig, const char *json, const char *want) {
  int rc = transcode(sig, json, NULL);
  CHECK_EQ_INT(rc, -1);
  CHECK_CONTAINS(err, want);
}

/* The single span of a one-span traces body, or NULL. */
static Span *only_span(ProtobufCMessage *m) {
  TraceRequest *r = (TraceRequest *)m;
  if (!r || r->n_resource_spans != 1 || r->resource_spans[0]->n_scope_spans != 1 ||
      r->resource_spans[0]->scope_spans[0]->n_spans != 1)
    return NULL;
  return r->resource_spans[0]->scope_spans[0]->spans[0];
}

static LogRecord *only_log(ProtobufCMessage *m) {
  LogsRequest *r = (LogsRequest *)m;
  if (!r || r->n_resource_logs != 1 || r->resource_logs[0]->n_scope_logs != 1 ||
      r->resource_logs[0]->scope_logs[0]->n_log_records != 1)
    return NULL;
  return r->resource_logs[0]->scope_logs[0]->log_records[0];
}

static Metric *only_metric(ProtobufCMessage *m) {
  MetricsRequest *r = (MetricsRequest *)m;
  if (!r || r->n_resource_metrics != 1 || r->resource_metrics[0]->n_scope_metrics != 1 ||
      r->resource_metrics[0]->scope_metrics[0]->n_metrics != 1)
    return NULL;
  return r->resource_metrics[0]->scope_metrics[0]->metrics[0];
}

#define SPAN_BODY(fields) "{\"resourceSpans\":[{\"scopeSpans\":[{\"spans\":[{" fields "}]}]}]}"
#define LOG_BODY(fields) "{\"resourceLogs\":[{\"scopeLogs\":[{\"logRecords\":[{" fields "}]}]}]}"
#define METRIC_BODY(fields) "{\"resourceMetrics\":[{\"scopeMetrics\":[{\"metrics\":[{" fields "}]}]}]}"
#define TID "5b8efff798038103d269b633813fc60c"
#define SID "eee19b7ec3c1b174"

/* The log record body of LOG_BODY("\"body\":" value), or NULL. */
static AnyValue *log_body(const char *value, ProtobufCMessage **m) {
  char json[4096];
  snprintf(json, sizeof json, LOG_BODY("\"body\":%s"), value);
  if (transcode(1, json, m) != 0) return NULL;
  LogRecord *l = only_log(*m);
  return l ? l->body : NULL;
}

/* ---------------------------------------------------------------------------------------------- round trips */

/* For count seeds: random sizes and shapes; the transcoded JSON body equals the generator's protobuf body. */
static void roundtrip(pl_signal sig, int count) {
  int mismatches = 0;
  for (int i = 0; i < count; i++) {
    pl_rng rng;
    pl_rng_seed(&rng, 1000u * (unsigned)sig + (unsigned)i);
    pl_options o;
    pl_options_default(&o);
    o.signal = sig;
    o.items = 1 + (uint32_t)(pl_rng_next(&rng) % (i % 10 == 0 ? 400 : 60));
    o.traces = 1 + (uint32_t)(pl_rng_next(&rng) % o.items);
    o.resources = (uint32_t)(pl_rng_next(&rng) % (o.items < 6 ? o.items + 1 : 6));
    o.seed = pl_rng_next(&rng);
    o.base_time_ns = 1600000000000000000ull + pl_rng_next(&rng) % 400000000000000000ull;
    pl_payload pb, js;
    o.encoding = PL_PROTOBUF;
    CHECK_EQ_INT(pl_payload_init(&pb, &o), 0);
    o.encoding = PL_JSON;
    CHECK_EQ_INT(pl_payload_init(&js, &o), 0);
    uint8_t *out = NULL;
    size_t n = 0;
    int rc = oj_to_protobuf((int)sig, js.body, js.len, &out, &n, err, sizeof err);
    CHECK_EQ_INT(rc, 0);
    if (rc != 0) fprintf(stderr, "seed %d: %s\n", i, err);
    if (rc == 0 && (n != pb.len || memcmp(out, pb.body, n) != 0)) {
      if (mismatches++ < 3) fprintf(stderr, "%s seed %d: %zu bytes, want %zu\n", pl_signal_name(sig), i, n, pb.len);
    }
    free(out);
    pl_payload_dispose(&pb);
    pl_payload_dispose(&js);
  }
  CHECK_EQ_INT(mismatches, 0);
}

TEST(roundtrip_traces) { roundtrip(PL_TRACES, 300); }
TEST(roundtrip_logs) { roundtrip(PL_LOGS, 300); }
TEST(roundtrip_metrics) { roundtrip(PL_METRICS, 300); }

/* The round trip would pass vacuously if the generator's JSON carried nothing: check a body's content. */
TEST(roundtrip_content) {
  pl_options o;
  pl_options_default(&o);
  o.encoding = PL_JSON;
  o.items = 20;
  o.traces = 4;
  o.base_time_ns = 1700000000000000000ull;
  pl_payload js;
  CHECK_EQ_INT(pl_payload_init(&js, &o), 0);
  ProtobufCMessage *m;
  CHECK_EQ_INT(transcode(0, (const char *)js.body, &m), 0);
  TraceRequest *r = (TraceRequest *)m;
  size_t spans = 0, with_trace = 0;
  for (size_t i = 0; r && i < r->n_resource_spans; i++)
    for (size_t k = 0; k < r->resource_spans[i]->n_scope_spans; k++)
      for (size_t s = 0; s < r->resource_spans[i]->scope_spans[k]->n_spans; s++) {
        Span *sp = r->resource_spans[i]->scope_spans[k]->spans[s];
        spans++;
        with_trace += sp->trace_id.len == 16 && sp->span_id.len == 8 && sp->start_time_unix_nano >= o.base_time_ns &&
                      sp->n_attributes == 10 && sp->name[0];
      }
  CHECK_EQ_INT(spans, 20);
  CHECK_EQ_INT(with_trace, 20);
  if (m) protobuf_c_message_free_unpacked(m, NULL);
  pl_payload_dispose(&js);
}

/* ---------------------------------------------------------------------------------------------- accepted forms */

TEST(empty_object) {
  uint8_t *out = NULL;
  size_t n = 99;
  for (int sig = 0; sig < 3; sig++) {
    CHECK_EQ_INT(oj_to_protobuf(sig, (const uint8_t *)"{}", 2, &out, &n, err, sizeof err), 0);
    CHECK(out != NULL);
    CHECK_EQ_INT(n, 0);
    free(out);
    out = NULL;
    CHECK_EQ_INT(oj_to_protobuf(sig, (const uint8_t *)" \n{ }\t", 6, &out, &n, NULL, 0), 0);
    CHECK_EQ_INT(n, 0);
    free(out);
  }
}

TEST(empty_arrays) {
  size_t n = 99;
  uint8_t *out = transcode_bytes(0, "{\"resourceSpans\":[]}", &n);
  CHECK(out != NULL);
  CHECK_EQ_INT(n, 0);
  free(out);
  /* one ResourceSpans with no scopes: field 1, length 0 */
  out = transcode_bytes(0, "{\"resourceSpans\":[{\"scopeSpans\":[]}]}", &n);
  CHECK(out != NULL);
  CHECK_EQ_INT(n, 2);
  if (out && n == 2) CHECK(out[0] == 0x0a && out[1] == 0x00);
  free(out);
  ProtobufCMessage *m;
  CHECK_EQ_INT(transcode(0, SPAN_BODY("\"attributes\":[],\"events\":[],\"links\":[]"), &m), 0);
  Span *s = only_span(m);
  CHECK(s != NULL);
  if (s) CHECK(s->n_attributes == 0 && s->n_events == 0 && s->n_links == 0);
  if (m) protobuf_c_message_free_unpacked(m, NULL);
}

TEST(snake_case_keys_match_camel_case) {
  const char *camel = "{\"resourceSpans\":[{\"schemaUrl\":\"s\",\"scopeSpans\":[{\"spans\":[{\"traceId\":\"" TID
                      "\",\"spanId\":\"" SID "\",\"parentSpanId\":\"" SID "\",\"startTimeUnixNano\":\"12\","
                      "\"droppedAttributesCount\":3,\"traceState\":\"k=v\"}]}]}]}";
  const char *snake = "{\"resource_spans\":[{\"schema_url\":\"s\",\"scope_spans\":[{\"spans\":[{\"trace_id\":\"" TID
                      "\",\"span_id\":\"" SID "\",\"parent_span_id\":\"" SID "\",\"start_time_unix_nano\":\"12\","
                      "\"dropped_attributes_count\":3,\"trace_state\":\"k=v\"}]}]}]}";
  size_t n1 = 0, n2 = 0;
  uint8_t *a = transcode_bytes(0, camel, &n1), *b = transcode_bytes(0, snake, &n2);
  CHECK(a != NULL && b != NULL);
  CHECK(n1 > 40);
  CHECK(n1 == n2 && a && b && memcmp(a, b, n1) == 0);
  free(a);
  free(b);
  ProtobufCMessage *m;
  CHECK_EQ_INT(transcode(0, snake, &m), 0);
  Span *s = only_span(m);
  CHECK(s != NULL);
  if (s) {
    CHECK_EQ_INT(s->start_time_unix_nano, 12);
    CHECK_EQ_INT(s->dropped_attributes_count, 3);
    CHECK_EQ_STR(s->trace_state, "k=v");
    CHECK_EQ_INT(s->parent_span_id.len, 8);
  }
  if (m) protobuf_c_message_free_unpacked(m, NULL);
}

TEST(ids_hex_any_case_or_empty) {
  ProtobufCMessage *m;
  CHECK_EQ_INT(transcode(0, SPAN_BODY("\"traceId\":\"5B8EFFF798038103D269B633813FC60C\",\"spanId\":\"EEE19b7ec3c1b174\","
                                      "\"parentSpanId\":\"\""),
                         &m),
               0);
  Span *s = only_span(m);
  CHECK(s != NULL);
  if (s) {
    static const uint8_t tid[16] = {0x5b, 0x8e, 0xff, 0xf7, 0x98, 0x03, 0x81, 0x03,
                                    0xd2, 0x69, 0xb6, 0x33, 0x81, 0x3f, 0xc6, 0x0c};
    static const uint8_t sid[8] = {0xee, 0xe1, 0x9b, 0x7e, 0xc3, 0xc1, 0xb1, 0x74};
    CHECK(s->trace_id.len == 16 && memcmp(s->trace_id.data, tid, 16) == 0);
    CHECK(s->span_id.len == 8 && memcmp(s->span_id.data, sid, 8) == 0);
    CHECK_EQ_INT(s->parent_span_id.len, 0);
  }
  if (m) protobuf_c_message_free_unpacked(m, NULL);
  /* Span.Link, LogRecord and Exemplar IDs are hex too */
  CHECK_EQ_INT(transcode(0, SPAN_BODY("\"links\":[{\"traceId\":\"" TID "\",\"spanId\":\"" SID "\",\"flags\":1}]"), &m), 0);
  s = only_span(m);
  CHECK(s && s->n_links == 1 && s->links[0]->trace_id.len == 16 && s->links[0]->span_id.len == 8 &&
        s->links[0]->trace_id.data[0] == 0x5b && s->links[0]->flags == 1);
  if (m) protobuf_c_message_free_unpacked(m, NULL);
  CHECK_EQ_INT(transcode(1, LOG_BODY("\"traceId\":\"" TID "\",\"spanId\":\"" SID "\""), &m), 0);
  LogRecord *l = only_log(m);
  CHECK(l && l->trace_id.len == 16 && l->span_id.len == 8 && l->span_id.data[7] == 0x74);
  if (m) protobuf_c_message_free_unpacked(m, NULL);
  CHECK_EQ_INT(transcode(2, METRIC_BODY("\"gauge\":{\"dataPoints\":[{\"asInt\":\"1\",\"exemplars\":[{\"traceId\":\"" TID
                                        "\",\"spanId\":\"" SID "\",\"asDouble\":0.5,\"filteredAttributes\":"
                                        "[{\"key\":\"k\",\"value\":{\"boolValue\":true}}]}]}]}"),
                         &m),
               0);
  Metric *me = only_metric(m);
  CHECK(me && me->gauge && me->gauge->n_data_points == 1 && me->gauge->data_points[0]->n_exemplars == 1);
  if (me && me->gauge && me->gauge->n_data_points == 1 && me->gauge->data_points[0]->n_exemplars == 1) {
    Opentelemetry__Proto__Metrics__V1__Exemplar *e = me->gauge->data_points[0]->exemplars[0];
    CHECK(e->trace_id.len == 16 && e->span_id.len == 8 && e->as_double == 0.5);
    CHECK(e->n_filtered_attributes == 1 && e->filtered_attributes[0]->value->bool_value);
  }
  if (m) protobuf_c_message_free_unpacked(m, NULL);
}

TEST(enum_by_number_or_name) {
  ProtobufCMessage *m;
  CHECK_EQ_INT(transcode(0, SPAN_BODY("\"kind\":\"SPAN_KIND_CLIENT\",\"status\":{\"code\":\"STATUS_CODE_ERROR\"}"), &m),
               0);
  Span *s = only_span(m);
  CHECK(s && s->kind == OPENTELEMETRY__PROTO__TRACE__V1__SPAN__SPAN_KIND__SPAN_KIND_CLIENT && s->status &&
        s->status->code == OPENTELEMETRY__PROTO__TRACE__V1__STATUS__STATUS_CODE__STATUS_CODE_ERROR);
  if (m) protobuf_c_message_free_unpacked(m, NULL);
  CHECK_EQ_INT(transcode(0, SPAN_BODY("\"kind\":2"), &m), 0);
  s = only_span(m);
  CHECK(s && s->kind == 2);
  if (m) protobuf_c_message_free_unpacked(m, NULL);
  CHECK_EQ_INT(transcode(1, LOG_BODY("\"severityNumber\":\"SEVERITY_NUMBER_WARN\""), &m), 0);
  LogRecord *l = only_log(m);
  CHECK(l && l->severity_number == 13);
  if (m) protobuf_c_message_free_unpacked(m, NULL);
  CHECK_EQ_INT(transcode(2, METRIC_BODY("\"sum\":{\"aggregationTemporality\":\"AGGREGATION_TEMPORALITY_DELTA\","
                                        "\"isMonotonic\":true}"),
                         &m),
               0);
  Metric *me = only_metric(m);
  CHECK(me && me->sum && me->sum->aggregation_temporality == 1 && me->sum->is_monotonic);
  if (m) protobuf_c_message_free_unpacked(m, NULL);
  /* proto3 enums are open: an unknown number is kept */
  CHECK_EQ_INT(transcode(0, SPAN_BODY("\"kind\":77"), &m), 0);
  s = only_span(m);
  CHECK(s && (int)s->kind == 77);
  if (m) protobuf_c_message_free_unpacked(m, NULL);
}

TEST(int64_as_number_and_string) {
  ProtobufCMessage *m;
  /* 1700000000000000123 > 2^53: a double would round it */
  CHECK_EQ_INT(transcode(0, SPAN_BODY("\"startTimeUnixNano\":1700000000000000123,\"endTimeUnixNano\":\"1700000000000000125\""),
                         &m),
               0);
  Span *s = only_span(m);
  CHECK(s && s->start_time_unix_nano == 1700000000000000123ull && s->end_time_unix_nano == 1700000000000000125ull);
  if (m) protobuf_c_message_free_unpacked(m, NULL);
  static const struct { const char *json; int64_t want; } cases[] = {
      {"{\"intValue\":42}", 42},
      {"{\"intValue\":\"42\"}", 42},
      {"{\"intValue\":-7}", -7},
      {"{\"intValue\":\"-7\"}", -7},
      {"{\"intValue\":9223372036854775807}", INT64_MAX},
      {"{\"intValue\":\"-9223372036854775808\"}", INT64_MIN},
      {"{\"intValue\":-9223372036854775808}", INT64_MIN},
      {"{\"intValue\":1e3}", 1000},
      {"{\"intValue\":-5.0}", -5},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    AnyValue *v = log_body(cases[i].json, &m);
    CHECK(v && v->value_case == OPENTELEMETRY__PROTO__COMMON__V1__ANY_VALUE__VALUE_INT_VALUE);
    if (v) CHECK_EQ_INT(v->int_value, cases[i].want);
    if (m) protobuf_c_message_free_unpacked(m, NULL);
  }
}

TEST(uint64_max) {
  ProtobufCMessage *m;
  CHECK_EQ_INT(transcode(0, SPAN_BODY("\"startTimeUnixNano\":\"18446744073709551615\","
                                      "\"endTimeUnixNano\":18446744073709551615"),
                         &m),
               0);
  Span *s = only_span(m);
  CHECK(s && s->start_time_unix_nano == UINT64_MAX && s->end_time_unix_nano == UINT64_MAX);
  if (m) protobuf_c_message_free_unpacked(m, NULL);
  CHECK_EQ_INT(transcode(2, METRIC_BODY("\"histogram\":{\"dataPoints\":[{\"bucketCounts\":[18446744073709551615,\"1\",0,"
                                        "9223372036854775808],\"explicitBounds\":[0.5,1,\"2.5\"],\"count\":\"7\"}]}"),
                         &m),
               0);
  Metric *me = only_metric(m);
  CHECK(me && me->histogram && me->histogram->n_data_points == 1);
  if (me && me->histogram && me->histogram->n_data_points == 1) {
    Opentelemetry__Proto__Metrics__V1__HistogramDataPoint *dp = me->histogram->data_points[0];
    CHECK_EQ_INT(dp->n_bucket_counts, 4);
    if (dp->n_bucket_counts == 4) {
      CHECK(dp->bucket_counts[0] == UINT64_MAX);
      CHECK(dp->bucket_counts[1] == 1 && dp->bucket_counts[2] == 0);
      CHECK(dp->bucket_counts[3] == 9223372036854775808ull);
    }
    CHECK(dp->n_explicit_bounds == 3 && dp->explicit_bounds[0] == 0.5 && dp->explicit_bounds[2] == 2.5);
    CHECK(dp->count == 7);
  }
  if (m) protobuf_c_message_free_unpacked(m, NULL);
}

TEST(doubles_and_specials) {
  static const struct { const char *json; double want; } cases[] = {
      {"{\"doubleValue\":1.5}", 1.5},         {"{\"doubleValue\":\"1.5\"}", 1.5},
      {"{\"doubleValue\":2}", 2.0},           {"{\"doubleValue\":-2.5e-3}", -2.5e-3},
      {"{\"doubleValue\":\"Infinity\"}", INFINITY}, {"{\"doubleValue\":\"-Infinity\"}", -INFINITY},
      {"{\"doubleValue\":0.1}", 0.1},
  };
  ProtobufCMessage *m;
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    AnyValue *v = log_body(cases[i].json, &m);
    CHECK(v && v->value_case == OPENTELEMETRY__PROTO__COMMON__V1__ANY_VALUE__VALUE_DOUBLE_VALUE);
    if (v) CHECK(v->double_value == cases[i].want);
    if (m) protobuf_c_message_free_unpacked(m, NULL);
  }
  AnyValue *v = log_body("{\"doubleValue\":\"NaN\"}", &m);
  CHECK(v && isnan(v->double_value));
  if (m) protobuf_c_message_free_unpacked(m, NULL);
}

TEST(strings_bools_and_bom) {
  ProtobufCMessage *m;
  AnyValue *v = log_body("{\"stringValue\":\"caf\\u00e9 \\\"q\\\" \\ud83d\\ude00\"}", &m);
  CHECK(v && v->value_case == OPENTELEMETRY__PROTO__COMMON__V1__ANY_VALUE__VALUE_STRING_VALUE);
  if (v) CHECK_EQ_STR(v->string_value, "caf\xc3\xa9 \"q\" \xf0\x9f\x98\x80");
  if (m) protobuf_c_message_free_unpacked(m, NULL);
  v = log_body("{\"boolValue\":false}", &m);
  CHECK(v && v->value_case == OPENTELEMETRY__PROTO__COMMON__V1__ANY_VALUE__VALUE_BOOL_VALUE && !v->bool_value);
  if (m) protobuf_c_message_free_unpacked(m, NULL);
  v = log_body("{\"stringValue\":\"\"}", &m); /* a oneof member set to its default is still set */
  CHECK(v && v->value_case == OPENTELEMETRY__PROTO__COMMON__V1__ANY_VALUE__VALUE_STRING_VALUE);
  if (m) protobuf_c_message_free_unpacked(m, NULL);
  CHECK_EQ_INT(transcode(0, "\xef\xbb\xbf{\"resourceSpans\":[{}]}", &m), 0);
  CHECK(m && ((TraceRequest *)m)->n_resource_spans == 1);
  if (m) protobuf_c_message_free_unpacked(m, NULL);
}

TEST(base64_bytes) {
  static const struct { const char *json; const char *want; size_t n; } cases[] = {
      {"{\"bytesValue\":\"AQID\"}", "\x01\x02\x03", 3},
      {"{\"bytesValue\":\"AQI=\"}", "\x01\x02", 2},
      {"{\"bytesValue\":\"AQI\"}", "\x01\x02", 2},
      {"{\"bytesValue\":\"AQ==\"}", "\x01", 1},
      {"{\"bytesValue\":\"AQ\"}", "\x01", 1},
      {"{\"bytesValue\":\"-_8=\"}", "\xfb\xff", 2},
      {"{\"bytesValue\":\"+/8\"}", "\xfb\xff", 2},
      {"{\"bytesValue\":\"aGVsbG8gd29ybGQ=\"}", "hello world", 11},
      {"{\"bytesValue\":\"\"}", "", 0},
  };
  ProtobufCMessage *m;
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    AnyValue *v = log_body(cases[i].json, &m);
    CHECK(v && v->value_case == OPENTELEMETRY__PROTO__COMMON__V1__ANY_VALUE__VALUE_BYTES_VALUE);
    if (v) {
      CHECK_EQ_INT(v->bytes_value.len, cases[i].n);
      CHECK(v->bytes_value.len == cases[i].n && (cases[i].n == 0 || memcmp(v->bytes_value.data, cases[i].want, cases[i].n) == 0));
    }
    if (m) protobuf_c_message_free_unpacked(m, NULL);
  }
}

TEST(nested_anyvalue) {
  ProtobufCMessage *m;
  AnyValue *v = log_body("{\"kvlistValue\":{\"values\":[{\"key\":\"a\",\"value\":{\"arrayValue\":{\"values\":["
                         "{\"intValue\":\"1\"},{\"kvlistValue\":{\"values\":[{\"key\":\"b\",\"value\":{\"stringValue\":\"x\"}}]}},"
                         "{}]}}},{\"key\":\"c\",\"value\":{\"arrayValue\":{}}}]}}",
                         &m);
  CHECK(v && v->value_case == OPENTELEMETRY__PROTO__COMMON__V1__ANY_VALUE__VALUE_KVLIST_VALUE);
  if (v && v->kvlist_value && v->kvlist_value->n_values == 2) {
    AnyValue *a = v->kvlist_value->values[0]->value;
    CHECK_EQ_STR(v->kvlist_value->values[0]->key, "a");
    CHECK(a && a->value_case == OPENTELEMETRY__PROTO__COMMON__V1__ANY_VALUE__VALUE_ARRAY_VALUE);
    if (a && a->array_value && a->array_value->n_values == 3) {
      CHECK_EQ_INT(a->array_value->values[0]->int_value, 1);
      AnyValue *k = a->array_value->values[1];
      CHECK(k->value_case == OPENTELEMETRY__PROTO__COMMON__V1__ANY_VALUE__VALUE_KVLIST_VALUE && k->kvlist_value &&
            k->kvlist_value->n_values == 1 && strcmp(k->kvlist_value->values[0]->value->string_value, "x") == 0);
      CHECK(a->array_value->values[2]->value_case == OPENTELEMETRY__PROTO__COMMON__V1__ANY_VALUE__VALUE__NOT_SET);
    } else {
      CHECK(!"array of 3 values");
    }
    AnyValue *c = v->kvlist_value->values[1]->value;
    CHECK(c && c->value_case == OPENTELEMETRY__PROTO__COMMON__V1__ANY_VALUE__VALUE_ARRAY_VALUE && c->array_value &&
          c->array_value->n_values == 0);
  } else {
    CHECK(!"kvlist of 2 values");
  }
  if (m) protobuf_c_message_free_unpacked(m, NULL);
}

/* Builds an AnyValue nested depth arrayValues deep into buf. */
static void nested_arrays(char *buf, size_t cap, int depth) {
  size_t n = 0;
  for (int i = 0; i < depth - 1 && n + 40 < cap; i++) n += (size_t)snprintf(buf + n, cap - n, "{\"arrayValue\":{\"values\":[");
  n += (size_t)snprintf(buf + n, cap - n, "{\"intValue\":1}");
  for (int i = 0; i < depth - 1 && n + 8 < cap; i++) n += (size_t)snprintf(buf + n, cap - n, "]}}");
}

TEST(anyvalue_depth_limit) {
  static char inner[16384], json[20000];
  ProtobufCMessage *m;
  nested_arrays(inner, sizeof inner, OJ_MAX_ANY_DEPTH);
  snprintf(json, sizeof json, LOG_BODY("\"body\":%s"), inner);
  CHECK_EQ_INT(transcode(1, json, &m), 0);
  if (m) protobuf_c_message_free_unpacked(m, NULL);
  nested_arrays(inner, sizeof inner, OJ_MAX_ANY_DEPTH + 1);
  snprintf(json, sizeof json, LOG_BODY("\"body\":%s"), inner);
  CHECK_EQ_INT(transcode(1, json, NULL), -1);
  /* the path is too long for err: its middle gives way, its ends and the message stay */
  static const char head[] = "resourceLogs[0].scopeLogs[0].logRecords[0].body.arrayValue.values[0].arrayValue";
  CHECK(strncmp(err, head, sizeof head - 1) == 0);
  CHECK_CONTAINS(err, "...");
  CHECK_CONTAINS(err, ".values[0].arrayValue.values[0]: AnyValue nested deeper than 32");
  CHECK(strlen(err) < sizeof err);
  /* kvlists nest 4 JSON levels per AnyValue: 32 of them still fit the parser's depth limit */
  size_t n = 0;
  for (int i = 0; i < OJ_MAX_ANY_DEPTH - 1; i++) n += (size_t)snprintf(inner + n, sizeof inner - n, "{\"kvlistValue\":{\"values\":[{\"key\":\"k\",\"value\":");
  n += (size_t)snprintf(inner + n, sizeof inner - n, "{\"intValue\":1}");
  for (int i = 0; i < OJ_MAX_ANY_DEPTH - 1; i++) n += (size_t)snprintf(inner + n, sizeof inner - n, "}]}}");
  snprintf(json, sizeof json, METRIC_BODY("\"histogram\":{\"dataPoints\":[{\"exemplars\":[{\"filteredAttributes\":[{\"key\":\"k\",\"value\":%s}]}]}]}"), inner);
  CHECK_EQ_INT(transcode(2, json, &m), 0);
  if (m) protobuf_c_message_free_unpacked(m, NULL);
}

TEST(unknown_keys_ignored) {
  ProtobufCMessage *m;
  CHECK_EQ_INT(transcode(0, "{\"foo\":{\"a\":[1,2,{\"b\":null}],\"c\":\"d\"},\"resourceSpans\":[{\"bar\":[1,[2],{}],"
                            "\"scopeSpans\":[{\"spans\":[{\"baz\":{\"x\":1},\"name\":\"n\",\"qux\":true,\"n\":1.5,"
                            "\"big\":123456789012345678901234567890,\"traceid\":5}]}]}],\"zz\":null}",
                         &m),
               0);
  Span *s = only_span(m);
  CHECK(s && strcmp(s->name, "n") == 0 && s->trace_id.len == 0);
  if (m) protobuf_c_message_free_unpacked(m, NULL);
}

TEST(nulls_mean_default) {
  ProtobufCMessage *m;
  CHECK_EQ_INT(transcode(0, "{\"resourceSpans\":null}", &m), 0);
  CHECK(m && ((TraceRequest *)m)->n_resource_spans == 0);
  if (m) protobuf_c_message_free_unpacked(m, NULL);
  CHECK_EQ_INT(transcode(0, "{\"resourceSpans\":[{\"resource\":null,\"schemaUrl\":null,\"scopeSpans\":[{\"scope\":null,"
                            "\"spans\":[{\"name\":null,\"kind\":null,\"traceId\":null,\"attributes\":null,\"status\":null}]}]}]}",
                         &m),
               0);
  Span *s = only_span(m);
  CHECK(s && s->name[0] == '\0' && s->kind == 0 && s->trace_id.len == 0 && s->status == NULL);
  if (m) protobuf_c_message_free_unpacked(m, NULL);
  AnyValue *v = log_body("{\"stringValue\":null,\"intValue\":3}", &m); /* a null member does not take the oneof */
  CHECK(v && v->value_case == OPENTELEMETRY__PROTO__COMMON__V1__ANY_VALUE__VALUE_INT_VALUE && v->int_value == 3);
  if (m) protobuf_c_message_free_unpacked(m, NULL);
}

TEST(metric_oneofs) {
  ProtobufCMessage *m;
  CHECK_EQ_INT(transcode(2, METRIC_BODY("\"name\":\"m\",\"gauge\":{\"dataPoints\":[{\"asInt\":\"-5\"},{\"asDouble\":2.5},"
                                        "{\"asDouble\":\"-Infinity\"}]},\"metadata\":[{\"key\":\"k\",\"value\":{}}]"),
                         &m),
               0);
  Metric *me = only_metric(m);
  CHECK(me && me->data_case == OPENTELEMETRY__PROTO__METRICS__V1__METRIC__DATA_GAUGE && me->gauge &&
        me->gauge->n_data_points == 3 && me->n_metadata == 1);
  if (me && me->gauge && me->gauge->n_data_points == 3) {
    CHECK(me->gauge->data_points[0]->value_case == OPENTELEMETRY__PROTO__METRICS__V1__NUMBER_DATA_POINT__VALUE_AS_INT);
    CHECK_EQ_INT(me->gauge->data_points[0]->as_int, -5);
    CHECK(me->gauge->data_points[1]->value_case == OPENTELEMETRY__PROTO__METRICS__V1__NUMBER_DATA_POINT__VALUE_AS_DOUBLE);
    CHECK(me->gauge->data_points[1]->as_double == 2.5);
    CHECK(isinf(me->gauge->data_points[2]->as_double) && me->gauge->data_points[2]->as_double < 0);
  }
  if (m) protobuf_c_message_free_unpacked(m, NULL);
  CHECK_EQ_INT(transcode(2, METRIC_BODY("\"summary\":{\"dataPoints\":[{\"quantileValues\":[{\"quantile\":0.5,\"value\":3}],"
                                        "\"count\":\"2\",\"sum\":6}]}"),
                         &m),
               0);
  me = only_metric(m);
  CHECK(me && me->data_case == OPENTELEMETRY__PROTO__METRICS__V1__METRIC__DATA_SUMMARY && me->summary &&
        me->summary->n_data_points == 1 && me->summary->data_points[0]->n_quantile_values == 1 &&
        me->summary->data_points[0]->quantile_values[0]->value == 3.0);
  if (m) protobuf_c_message_free_unpacked(m, NULL);
  CHECK_EQ_INT(transcode(2, METRIC_BODY("\"exponentialHistogram\":{\"dataPoints\":[{\"scale\":-3,\"zeroCount\":\"4\","
                                        "\"positive\":{\"offset\":-2,\"bucketCounts\":[\"1\",2]}}]}"),
                         &m),
               0);
  me = only_metric(m);
  CHECK(me && me->exponential_histogram && me->exponential_histogram->n_data_points == 1);
  if (me && me->exponential_histogram && me->exponential_histogram->n_data_points == 1) {
    Opentelemetry__Proto__Metrics__V1__ExponentialHistogramDataPoint *dp = me->exponential_histogram->data_points[0];
    CHECK(dp->scale == -3 && dp->zero_count == 4 && dp->positive && dp->positive->offset == -2 &&
          dp->positive->n_bucket_counts == 2 && dp->positive->bucket_counts[1] == 2);
  }
  if (m) protobuf_c_message_free_unpacked(m, NULL);
}

TEST(large_array_linear) {
  /* 200k spans: a quadratic walk would take minutes here */
  size_t n = 200000, cap = n * 12 + 128, len = 0;
  char *json = malloc(cap);
  len += (size_t)snprintf(json, cap, "{\"resourceSpans\":[{\"scopeSpans\":[{\"spans\":[");
  for (size_t i = 0; i < n; i++) len += (size_t)snprintf(json + len, cap - len, "%s{\"kind\":1}", i ? "," : "");
  snprintf(json + len, cap - len, "]}]}]}");
  ProtobufCMessage *m;
  CHECK_EQ_INT(transcode(0, json, &m), 0);
  TraceRequest *r = (TraceRequest *)m;
  CHECK(r && r->n_resource_spans == 1 && r->resource_spans[0]->scope_spans[0]->n_spans == n);
  if (m) protobuf_c_message_free_unpacked(m, NULL);
  free(json);
}

/* ---------------------------------------------------------------------------------------------- errors */

TEST(error_invalid_json) {
  expect_error(0, "{\"resourceSpans\": [}", "invalid JSON at byte 19");
  expect_error(0, "{\"resourceSpans\": [", "invalid JSON at byte");
  expect_error(0, "", "invalid JSON at byte 0");
  expect_error(0, "{\"a\":1,}", "invalid JSON");
  expect_error(0, "{} {}", "invalid JSON");
  expect_error(0, "{\"a\":\"\xff\"}", "invalid JSON");
  uint8_t *out;
  size_t n;
  CHECK_EQ_INT(oj_to_protobuf(0, (const uint8_t *)"{\"a\":1}", 4, &out, &n, err, sizeof err), -1); /* cut short */
  CHECK_CONTAINS(err, "invalid JSON");
}

TEST(error_top_level_not_object) {
  expect_error(0, "[]", "top level: expected an object, got array");
  expect_error(1, "\"x\"", "top level: expected an object, got string");
  expect_error(2, "42", "top level: expected an object, got number");
  expect_error(2, "null", "top level: expected an object, got null");
}

TEST(error_wrong_container_types) {
  expect_error(0, "{\"resourceSpans\":{}}", "resourceSpans: expected an array, got object");
  expect_error(1, "{\"resourceLogs\":[{\"scopeLogs\":[{\"logRecords\":[1]}]}]}",
               "resourceLogs[0].scopeLogs[0].logRecords[0]: expected an object, got number");
  expect_error(0, "{\"resourceSpans\":[{\"resource\":[]}]}", "resourceSpans[0].resource: expected an object, got array");
  expect_error(0, SPAN_BODY("\"name\":\"a\"},null,{\"name\":\"b\""), "resourceSpans[0].scopeSpans[0].spans[1]: null is not allowed");
}

TEST(error_ids) {
  expect_error(0, SPAN_BODY("\"traceId\":\"5b8efff798038103d269b633813fc60\""),
               "resourceSpans[0].scopeSpans[0].spans[0].traceId: expected 32 hex digits, got 31");
  expect_error(0, SPAN_BODY("\"traceId\":\"zb8efff798038103d269b633813fc60c\""),
               "resourceSpans[0].scopeSpans[0].spans[0].traceId: invalid hex digit at position 0");
  expect_error(0, SPAN_BODY("\"spanId\":\"eee19b7ec3c1b1745\""),
               "resourceSpans[0].scopeSpans[0].spans[0].spanId: expected 16 hex digits, got 17");
  expect_error(0, SPAN_BODY("\"parentSpanId\":\"eee19b7ec3c1b17g\""), "spans[0].parentSpanId: invalid hex digit at position 15");
  expect_error(0, SPAN_BODY("\"links\":[{},{\"traceId\":\"AAAA\"}]"), "spans[0].links[1].traceId: expected 32 hex digits, got 4");
  expect_error(1, LOG_BODY("\"span_id\":\"" TID "\""), "logRecords[0].span_id: expected 16 hex digits, got 32");
  /* base64 of 16 bytes is not accepted for an ID */
  expect_error(0, SPAN_BODY("\"traceId\":\"W47/95gDgQPSabYzgT/GDA==\""), "traceId: expected 32 hex digits, got 24");
  expect_error(0, SPAN_BODY("\"traceId\":16"), "traceId: expected a string, got number");
}

TEST(error_scalar_types) {
  expect_error(0, SPAN_BODY("\"name\":5"), "resourceSpans[0].scopeSpans[0].spans[0].name: expected a string, got number");
  expect_error(0, SPAN_BODY("\"name\":{}"), "spans[0].name: expected a string, got object");
  expect_error(0, SPAN_BODY("\"droppedAttributesCount\":1.5"),
               "spans[0].droppedAttributesCount: expected an integer, got a fractional number");
  expect_error(0, SPAN_BODY("\"startTimeUnixNano\":\"12.5\""), "startTimeUnixNano: expected an integer, got the string \"12.5\"");
  expect_error(0, SPAN_BODY("\"startTimeUnixNano\":\" 12\""), "expected an integer");
  expect_error(0, SPAN_BODY("\"startTimeUnixNano\":true"), "startTimeUnixNano: expected an integer, got boolean");
  expect_error(0, SPAN_BODY("\"kind\":\"SPAN_KIND_NOPE\""), "spans[0].kind: unknown SpanKind value \"SPAN_KIND_NOPE\"");
  expect_error(0, SPAN_BODY("\"kind\":2.5"), "spans[0].kind: expected an integer");
  /* client text echoed in err is cut and kept to printable ASCII */
  expect_error(0, SPAN_BODY("\"kind\":\"a\\nb\\u0001c\xc3\xa9 and a long tail of text\""),
               "spans[0].kind: unknown SpanKind value \"a?b?c?? and a long tail ...\"");
  expect_error(2, METRIC_BODY("\"sum\":{\"isMonotonic\":\"true\"}"), "metrics[0].sum.isMonotonic: expected true or false, got string");
  expect_error(2, METRIC_BODY("\"gauge\":{\"dataPoints\":[{\"asDouble\":\"fast\"}]}"),
               "gauge.dataPoints[0].asDouble: expected a number, got the string \"fast\"");
  expect_error(2, METRIC_BODY("\"gauge\":{\"dataPoints\":[{\"asDouble\":NaN}]}"), "asDouble: expected a finite number");
  expect_error(2, METRIC_BODY("\"gauge\":{\"dataPoints\":[{\"asDouble\":1e999}]}"), "asDouble: expected a finite number");
  expect_error(1, LOG_BODY("\"severityText\":\"a\\u0000b\""), "logRecords[0].severityText: string contains U+0000");
  expect_error(0, SPAN_BODY("\"attributes\":{}"), "spans[0].attributes: expected an array, got object");
}

TEST(error_integer_ranges) {
  expect_error(1, LOG_BODY("\"body\":{\"intValue\":\"9223372036854775808\"}"),
               "logRecords[0].body.intValue: integer out of range for int64");
  expect_error(1, LOG_BODY("\"body\":{\"intValue\":9223372036854775808}"), "body.intValue: integer out of range for int64");
  expect_error(1, LOG_BODY("\"body\":{\"intValue\":\"-9223372036854775809\"}"), "body.intValue: integer out of range for int64");
  /* json-c saturates these literals: the raw-text scan catches them */
  expect_error(1, LOG_BODY("\"body\":{\"intValue\":-9223372036854775809}"), "body.intValue: integer out of 64-bit range");
  expect_error(0, SPAN_BODY("\"startTimeUnixNano\":18446744073709551616"), "startTimeUnixNano: integer out of 64-bit range");
  expect_error(0, SPAN_BODY("\"startTimeUnixNano\":\"18446744073709551616\""), "startTimeUnixNano: integer out of 64-bit range");
  expect_error(0, SPAN_BODY("\"startTimeUnixNano\":1e20"), "startTimeUnixNano: integer out of 64-bit range");
  expect_error(0, SPAN_BODY("\"startTimeUnixNano\":-1"), "startTimeUnixNano: integer out of range for uint64");
  expect_error(0, SPAN_BODY("\"droppedAttributesCount\":4294967296"), "droppedAttributesCount: integer out of range for uint32");
  expect_error(0, SPAN_BODY("\"flags\":-1"), "spans[0].flags: integer out of range for uint32");
  expect_error(0, SPAN_BODY("\"kind\":2147483648"), "spans[0].kind: integer out of range for int32");
  expect_error(2, METRIC_BODY("\"exponentialHistogram\":{\"dataPoints\":[{\"scale\":\"-2147483649\"}]}"),
               "dataPoints[0].scale: integer out of range for int32");
}

TEST(error_depth) {
  /* far past the parser's limit, inside an unknown key: refused by the parser, no recursion */
  size_t n = 100000;
  char *json = malloc(n + 16);
  memcpy(json, "{\"x\":", 5);
  memset(json + 5, '[', n);
  json[5 + n] = '\0';
  expect_error(0, json, "nesting too deep");
  /* just past the limit with a complete body */
  size_t d = OJ_MAX_JSON_DEPTH;
  memset(json + 5, '[', d);
  memset(json + 5 + d, ']', d);
  strcpy(json + 5 + 2 * d, "}");
  expect_error(0, json, "nesting too deep");
  /* just under it: an unknown key is ignored */
  memset(json + 5, '[', d - 2);
  memset(json + 5 + d - 2, ']', d - 2);
  strcpy(json + 5 + 2 * (d - 2), "}");
  CHECK_EQ_INT(transcode(0, json, NULL), 0);
  free(json);
}

TEST(error_base64) {
  expect_error(1, LOG_BODY("\"body\":{\"bytesValue\":\"A\"}"), "logRecords[0].body.bytesValue: invalid base64 length 1");
  expect_error(1, LOG_BODY("\"body\":{\"bytesValue\":\"AQ!D\"}"), "body.bytesValue: invalid base64 character at position 2");
  expect_error(1, LOG_BODY("\"body\":{\"bytesValue\":\"AQ=D\"}"), "body.bytesValue: invalid base64 character at position 2");
  expect_error(1, LOG_BODY("\"body\":{\"bytesValue\":\"AQI==\"}"), "body.bytesValue: invalid base64 length 5");
  expect_error(1, LOG_BODY("\"body\":{\"bytesValue\":\"AQ ID\"}"), "body.bytesValue: invalid base64");
}

TEST(error_duplicates_and_oneofs) {
  expect_error(0, "{\"resourceSpans\":[],\"resource_spans\":[]}", "resource_spans: field given twice");
  expect_error(1, LOG_BODY("\"body\":{\"stringValue\":\"a\",\"intValue\":1}"),
               "logRecords[0].body.intValue: a oneof already has string_value set");
  expect_error(2, METRIC_BODY("\"gauge\":{},\"sum\":{}"), "metrics[0].sum: a oneof already has gauge set");
}

TEST(error_signal_and_nulls) {
  uint8_t *out = (uint8_t *)"x";
  size_t n = 5;
  CHECK_EQ_INT(oj_to_protobuf(3, (const uint8_t *)"{}", 2, &out, &n, err, sizeof err), -1);
  CHECK(out == NULL && n == 0);
  CHECK_CONTAINS(err, "unknown signal 3");
  CHECK_EQ_INT(oj_to_protobuf(-1, (const uint8_t *)"{}", 2, &out, &n, NULL, 0), -1);
  /* a tiny err buffer is cut, still NUL-terminated */
  char small[8];
  CHECK_EQ_INT(oj_to_protobuf(0, (const uint8_t *)SPAN_BODY("\"name\":5"), strlen(SPAN_BODY("\"name\":5")), &out, &n,
                              small, sizeof small),
               -1);
  CHECK_EQ_INT(strlen(small), 7);
}

/* The same error on the signal's own wrapper key: every signal's path is walked generically. */
TEST(error_paths_all_signals) {
  expect_error(1, "{\"resourceLogs\":[{},{\"scopeLogs\":[{\"logRecords\":[{},{},{\"body\":{\"kvlistValue\":{\"values\":"
                  "[{\"key\":\"k\",\"value\":{\"intValue\":\"x\"}}]}}}]}]}]}",
               "resourceLogs[1].scopeLogs[0].logRecords[2].body.kvlistValue.values[0].value.intValue: expected an integer, "
               "got the string \"x\"");
  expect_error(2, "{\"resourceMetrics\":[{\"resource\":{\"attributes\":[{\"key\":5}]}}]}",
               "resourceMetrics[0].resource.attributes[0].key: expected a string, got number");
  expect_error(0, "{\"resourceSpans\":[{\"scopeSpans\":[{\"scope\":{\"droppedAttributesCount\":\"-1\"}}]}]}",
               "resourceSpans[0].scopeSpans[0].scope.droppedAttributesCount: integer out of range for uint32");
}

TEST_MAIN()
