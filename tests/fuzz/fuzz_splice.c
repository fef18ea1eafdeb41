/*
 * libFuzzer driver for balancer/splice: the first input byte picks the shape (traces, logs, metrics), the ring
 * size (1..8) and the route; the rest is the request body. Checks, beyond no crash / no sanitizer report: on
 * success every part's len is the sum of its iovecs and the part item counts add up to split.items; when the
 * body itself is a valid request for protobuf-c, every part is too, and the items decoded from the parts are
 * exactly split.items (each item went to exactly one part).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "balancer/splice.h"
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

/* Items of an unpacked request of shape s (spans, log records, metrics). */
static uint64_t count_items(int s, const ProtobufCMessage *m) {
  uint64_t n = 0;
  if (s == 0) {
    const Opentelemetry__Proto__Collector__Trace__V1__ExportTraceServiceRequest *q = (const void *)m;
    for (size_t r = 0; r < q->n_resource_spans; r++)
      for (size_t k = 0; k < q->resource_spans[r]->n_scope_spans; k++) n += q->resource_spans[r]->scope_spans[k]->n_spans;
  } else if (s == 1) {
    const Opentelemetry__Proto__Collector__Logs__V1__ExportLogsServiceRequest *q = (const void *)m;
    for (size_t r = 0; r < q->n_resource_logs; r++)
      for (size_t k = 0; k < q->resource_logs[r]->n_scope_logs; k++)
        n += q->resource_logs[r]->scope_logs[k]->n_log_records;
  } else {
    const Opentelemetry__Proto__Collector__Metrics__V1__ExportMetricsServiceRequest *q = (const void *)m;
    for (size_t r = 0; r < q->n_resource_metrics; r++)
      for (size_t k = 0; k < q->resource_metrics[r]->n_scope_metrics; k++)
        n += q->resource_metrics[r]->scope_metrics[k]->n_metrics;
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
  bl_route_t route = (data[0] / 24) & 1 ? BL_ROUTE_SERVICE : BL_ROUTE_TRACE_ID;
  const uint8_t *body = data + 1;
  size_t len = size - 1;

  bl_split_t sp;
  bl_error_t err;
  int rc = bl_split(shape, route, body, len, ring, &sp, &err);
  REQUIRE(rc == 0 || rc == -1);
  if (rc == -1) {
    REQUIRE(err.offset <= len);
    REQUIRE(memchr(err.msg, '\0', sizeof err.msg) != NULL && err.msg[0]);
    return 0;
  }
  ProtobufCMessage *whole = protobuf_c_message_unpack(descs[s], NULL, len, body);
  uint64_t items = 0, decoded = 0;
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
    uint64_t n = count_items(s, m);
    REQUIRE(n == p->items);
    decoded += n;
    protobuf_c_message_free_unpacked(m, NULL);
    free(d);
  }
  REQUIRE(items == sp.items);
  REQUIRE(targets == sp.n_targets);
  REQUIRE((sp.n_targets == 0) == (sp.items == 0));
  if (whole) {
    REQUIRE(count_items(s, whole) == sp.items);
    REQUIRE(decoded == sp.items);
    protobuf_c_message_free_unpacked(whole, NULL);
  }
  bl_split_dispose(&sp);
  return 0;
}
