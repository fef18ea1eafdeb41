/*
 * Benchmark of balancer/splice (the gateway's hot path): bl_split + bl_split_dispose on realistic trace
 * requests from bench/payload.h, against protobuf-c unpack + free of the same body in the same run.
 *
 * Cases: 100 spans / 10 traces over 3 backends (a real split), 100 spans / 1 trace over 3 backends (one
 * target: pass-through), 1000 spans / 100 traces over 30 backends. Each case cycles over 8 bodies with
 * different trace IDs (same bytes otherwise) so the routing is not one memorised pattern. Metrics: 300 data
 * points over 100 resources (each: a histogram, a gauge and a sum of one point) over 3 backends, routed by
 * service, resource (whole entries) and metric (each Metric); "ns/item" is then per Metric. Every figure is the
 * best of 5 timed runs of about 0.2 s.
 *
 * Usage: bench_splice [SECONDS_PER_RUN]   (default 0.2)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "balancer/ring.h"
#include "balancer/splice.h"
#include "bench/payload.h"
#include "opentelemetry/proto/collector/metrics/v1/metrics_service.pb-c.h"
#include "opentelemetry/proto/collector/trace/v1/trace_service.pb-c.h"

#define COPIES 8

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static bl_ring_t *make_ring(size_t n) {
  bl_ring_member_t *m = calloc(n, sizeof *m);
  char (*names)[48] = calloc(n, sizeof *names);
  for (size_t i = 0; i < n; i++) {
    snprintf(names[i], sizeof names[i], "http://collector-%zu.otel:4318", i);
    m[i] = (bl_ring_member_t){names[i], 1, NULL};
  }
  bl_ring_t *r = bl_ring_create(m, n);
  free(m);
  free(names);
  return r;
}

static volatile uint64_t sink;

typedef struct bcase {
  const char *name;
  pl_signal signal;
  bl_route_t route;
  uint32_t items, traces, resources;
  size_t backends;
} bcase;

static const bl_shape_t *shape_of(pl_signal s) { return s == PL_METRICS ? &bl_shape_metrics : &bl_shape_traces; }
static const ProtobufCMessageDescriptor *desc_of(pl_signal s) {
  return s == PL_METRICS ? &opentelemetry__proto__collector__metrics__v1__export_metrics_service_request__descriptor
                         : &opentelemetry__proto__collector__trace__v1__export_trace_service_request__descriptor;
}

/* Spans, or Metric records, of a body. */
static uint32_t count_units(pl_signal sig, const uint8_t *b, size_t len) {
  ProtobufCMessage *m = protobuf_c_message_unpack(desc_of(sig), NULL, len, b);
  uint32_t n = 0;
  if (!m) return 0;
  if (sig == PL_METRICS) {
    const Opentelemetry__Proto__Collector__Metrics__V1__ExportMetricsServiceRequest *q = (const void *)m;
    for (size_t r = 0; r < q->n_resource_metrics; r++)
      for (size_t k = 0; k < q->resource_metrics[r]->n_scope_metrics; k++)
        n += (uint32_t)q->resource_metrics[r]->scope_metrics[k]->n_metrics;
  } else {
    const Opentelemetry__Proto__Collector__Trace__V1__ExportTraceServiceRequest *q = (const void *)m;
    for (size_t r = 0; r < q->n_resource_spans; r++)
      for (size_t k = 0; k < q->resource_spans[r]->n_scope_spans; k++)
        n += (uint32_t)q->resource_spans[r]->scope_spans[k]->n_spans;
  }
  protobuf_c_message_free_unpacked(m, NULL);
  return n;
}

/* Best ns per request over 5 runs of about secs each; op 0 = split, 1 = protobuf-c unpack + free. */
static double time_op(int op, const bcase *c, uint8_t *const *bodies, size_t len, const bl_ring_t *ring,
                      double secs) {
  double best = 1e30;
  for (int run = 0; run < 5; run++) {
    uint64_t iters = 0;
    double t0 = now(), t1;
    do {
      for (int k = 0; k < 64; k++, iters++) {
        const uint8_t *b = bodies[iters % COPIES];
        if (op == 0) {
          bl_split_t sp;
          bl_error_t err;
          if (bl_split(shape_of(c->signal), c->route, b, len, ring, &sp, &err) != 0) {
            fprintf(stderr, "bl_split: %s\n", err.msg);
            exit(1);
          }
          sink += sp.n_targets;
          bl_split_dispose(&sp);
        } else {
          ProtobufCMessage *q = protobuf_c_message_unpack(desc_of(c->signal), NULL, len, b);
          if (!q) {
            fprintf(stderr, "unpack failed\n");
            exit(1);
          }
          sink += q->descriptor->n_fields;
          protobuf_c_message_free_unpacked(q, NULL);
        }
      }
      t1 = now();
    } while (t1 - t0 < secs);
    double ns = (t1 - t0) * 1e9 / (double)iters;
    if (ns < best) best = ns;
  }
  return best;
}

static int run_case(const bcase *c, double secs) {
  pl_options o;
  pl_options_default(&o);
  o.signal = c->signal;
  o.items = c->items;
  o.traces = c->traces;
  o.resources = c->resources;
  o.seed = 42;
  o.base_time_ns = 1700000000000000000ull;
  pl_payload p;
  if (pl_payload_init(&p, &o) != 0) return 1;
  uint8_t *bodies[COPIES];
  for (int i = 0; i < COPIES; i++) {
    bodies[i] = malloc(p.len);
    memcpy(bodies[i], p.body, p.len);
    pl_payload_rerandomize(&p);
  }
  uint32_t units = count_units(c->signal, bodies[0], p.len);
  bl_ring_t *ring = make_ring(c->backends);
  bl_split_t sp;
  bl_error_t err;
  if (units == 0 || bl_split(shape_of(c->signal), c->route, bodies[0], p.len, ring, &sp, &err) != 0) {
    fprintf(stderr, "%s: %s\n", c->name, units ? err.msg : "unpack failed");
    return 1;
  }
  size_t iov = 0;
  for (size_t i = 0; i < sp.n_parts; i++) iov += sp.parts[i].n_iov;
  uint32_t targets = sp.n_targets;
  bl_split_dispose(&sp);

  double split_ns = time_op(0, c, bodies, p.len, ring, secs);
  double unpack_ns = time_op(1, c, bodies, p.len, ring, secs);
  printf("%-32s %7zu %6u %8zu %8u %6zu %10.0f %8.1f %12.1f %8.1fx\n", c->name, p.len, units, c->backends, targets,
         iov, split_ns, split_ns / units, unpack_ns / units, unpack_ns / split_ns);
  for (int i = 0; i < COPIES; i++) free(bodies[i]);
  bl_ring_unref(ring);
  pl_payload_dispose(&p);
  return 0;
}

int main(int argc, char **argv) {
  double secs = argc > 1 ? atof(argv[1]) : 0.2;
  if (secs <= 0) secs = 0.2;
  static const bcase cases[] = {
      {"100 spans, 10 traces", PL_TRACES, BL_ROUTE_TRACE_ID, 100, 10, 0, 3},
      {"100 spans, 1 trace (pass)", PL_TRACES, BL_ROUTE_TRACE_ID, 100, 1, 0, 3},
      {"1000 spans, 100 traces", PL_TRACES, BL_ROUTE_TRACE_ID, 1000, 100, 0, 30},
      {"300 metrics/100 res, service", PL_METRICS, BL_ROUTE_SERVICE, 300, 1, 100, 3},
      {"300 metrics/100 res, resource", PL_METRICS, BL_ROUTE_RESOURCE, 300, 1, 100, 3},
      {"300 metrics/100 res, metric", PL_METRICS, BL_ROUTE_METRIC, 300, 1, 100, 3},
  };
  printf("%-32s %7s %6s %8s %8s %6s %10s %8s %12s %9s\n", "case", "bytes", "items", "backends", "targets", "iovs",
         "split ns", "ns/item", "unpack ns/it", "unpack/split");
  int rc = 0;
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) rc |= run_case(&cases[i], secs);
  return rc;
}
