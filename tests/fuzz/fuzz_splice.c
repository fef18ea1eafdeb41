/*
 * libFuzzer driver for balancer/splice: the first input byte picks the shape (traces, logs, metrics), the ring
 * size (1..8) and the route (trace_id, service, resource, metric: every route on every shape); the rest is the
 * request body. Checks, beyond no crash / no sanitizer report: validation does not depend on the route; on
 * success every part's len is the sum of its iovecs and the part item counts add up to split.items; when the
 * body itself is a valid request for protobuf-c, every part is too, the items decoded from the parts (spans,
 * log records, metric data points) are exactly split.items, and the item records decoded from the parts are
 * those of the body (each went to exactly one part, none was dropped; by metric, each Metric alone).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "balancer/splice.h"
#include "gateway/otlp_http.h"
#include "opentelemetry/proto/collector/logs/v1/logs_service.pb-c.h"
#include "opentelemetry/proto/collector/metrics/v1/metrics_service.pb-c.h"
#include "opentelemetry/proto/collector/trace/v1/trace_service.pb-c.h"

static bl_ring_t *rings[8];

static void init_rings(void) {
  static const char *names[8] = {"http://a:4318", "http://b:4318", "http://c:4318", "http://d:4318",
                                 "http://e:4318", "http://f:4318", "http://g:4318", "http://h:4318"};
  for (size_t n = 1; n <= 8; n++) {
    bl_ring_member_t m[8];
    for (size_t i = 0; i < n; i++) m[i] = (bl_ring_member_t){names[i], (uint32_t)(1 + i % 3), NULL};
    rings[n - 1] = bl_ring_create(m, n);
    if (!rings[n - 1]) abort();
  }
}

static const ProtobufCMessageDescriptor *const descs[3] = {
    &opentelemetry__proto__collector__trace__v1__export_trace_service_request__descriptor,
    &opentelemetry__proto__collector__logs__v1__export_logs_service_request__descriptor,
    &opentelemetry__proto__collector__metrics__v1__export_metrics_service_request__descriptor,
};


/* Items of an unpacked request of shape s (spans, log records, metric data points); *recs: item records
 * (spans, log records, Metrics). */
static uint64_t count_items(int s, const ProtobufCMessage *m, uint64_t *recs) {
  uint64_t n = 0;
  *recs = 0;
  if (s == 0) {
    const Opentelemetry__Proto__Collector__Trace__V1__ExportTraceServiceRequest *q = (const void *)m;
    for (size_t r = 0; r < q->n_resource_spans; r++)
      for (size_t k = 0; k < q->resource_spans[r]->n_scope_spans; k++) n += q->resource_spans[r]->scope_spans[k]->n_spans;
    *recs = n;
  } else if (s == 1) {
    const Opentelemetry__Proto__Collector__Logs__V1__ExportLogsServiceRequest *q = (const void *)m;
    for (size_t r = 0; r < q->n_resource_logs; r++)
      for (size_t k = 0; k < q->resource_logs[r]->n_scope_logs; k++)
        n += q->resource_logs[r]->scope_logs[k]->n_log_records;
    *recs = n;
  } else {
    const Opentelemetry__Proto__Collector__Metrics__V1__ExportMetricsServiceRequest *q = (const void *)m;
    for (size_t r = 0; r < q->n_resource_metrics; r++)
      for (size_t k = 0; k < q->resource_metrics[r]->n_scope_metrics; k++) {
        const Opentelemetry__Proto__Metrics__V1__ScopeMetrics *sm = q->resource_metrics[r]->scope_metrics[k];
        *recs += sm->n_metrics;
        for (size_t i = 0; i < sm->n_metrics; i++) n += otlp_metric_points(sm->metrics[i]);
      }
  }
  return n;
}

#define REQUIRE(c)                                                       \
  do {                                                                   \
    if (!(c)) {                                                          \
      fprintf(stderr, "fuzz_splice: %s failed at line %d\n", #c, __LINE__); \
      abort();                                                           \
    }                                                                    \
  } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (!rings[0]) init_rings();
  if (size < 1) return 0;
  int s = data[0] % 3;
  const bl_shape_t *shape = s == 0 ? &bl_shape_traces : s == 1 ? &bl_shape_logs : &bl_shape_metrics;
  const bl_ring_t *ring = rings[(data[0] / 3) % 8];
  bl_route_t route = (bl_route_t)((data[0] / 24) % 4);
  const uint8_t *body = data + 1;
  size_t len = size - 1;

  bl_split_t sp;
  bl_error_t err;
  int rc = bl_split(shape, route, body, len, ring, &sp, &err);
  REQUIRE(rc == 0 || rc == -1);
  {
    bl_split_t sp2;
    bl_error_t err2;
    int rc2 = bl_split(shape, (bl_route_t)((route + 1) % 4), body, len, ring, &sp2, &err2);
    REQUIRE(rc2 == rc);
    if (rc2 == 0) {
      REQUIRE(sp2.items == sp.items);
      bl_split_dispose(&sp2);
    } else {
      REQUIRE(err2.offset == err.offset);
    }
  }
  if (rc == -1) {
    REQUIRE(err.offset <= len);
    REQUIRE(memchr(err.msg, '\0', sizeof err.msg) != NULL && err.msg[0]);
    return 0;
  }
  ProtobufCMessage *whole = protobuf_c_message_unpack(descs[s], NULL, len, body);
  uint64_t items = 0, decoded = 0, decoded_recs = 0;
  uint32_t targets = 0;
  for (size_t b = 0; b < sp.n_parts; b++) {
    const bl_part_t *p = &sp.parts[b];
    size_t sum = 0;
    for (size_t i = 0; i < p->n_iov; i++) sum += p->iov[i].iov_len;
    REQUIRE(sum == p->len);
    REQUIRE(p->len <= len);
    items += p->items;
    if (!p->len) continue;
    targets++;
    if (!whole) continue;
    uint8_t *d = malloc(p->len);
    size_t off = 0;
    for (size_t i = 0; i < p->n_iov; i++) {
      memcpy(d + off, p->iov[i].iov_base, p->iov[i].iov_len);
      off += p->iov[i].iov_len;
    }
    ProtobufCMessage *m = protobuf_c_message_unpack(descs[s], NULL, p->len, d);
    REQUIRE(m != NULL);
    uint64_t recs;
    uint64_t n = count_items(s, m, &recs);
    REQUIRE(n == p->items);
    REQUIRE(recs > 0);
    decoded += n;
    decoded_recs += recs;
    protobuf_c_message_free_unpacked(m, NULL);
    free(d);
  }
  REQUIRE(items == sp.items);
  REQUIRE(targets == sp.n_targets);
  if (s != 2) REQUIRE((sp.n_targets == 0) == (sp.items == 0)); /* a Metric without points is still sent */
  else REQUIRE(sp.n_targets > 0 || sp.items == 0);
  if (whole) {
    uint64_t recs;
    REQUIRE(count_items(s, whole, &recs) == sp.items);
    REQUIRE(decoded == sp.items);
    REQUIRE((sp.n_targets == 0) == (recs == 0));
    REQUIRE(decoded_recs == recs);
    protobuf_c_message_free_unpacked(whole, NULL);
  }
  bl_split_dispose(&sp);
  return 0;
}
