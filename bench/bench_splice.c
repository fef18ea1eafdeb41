/*
 * Benchmark of balancer/splice (the gateway's hot path): bl_split + bl_split_dispose on realistic requests from
 * bench/payload.h, against protobuf-c unpack + free of the same body in the same run.
 *
 * Cases: 100 spans / 10 traces over 3 backends (a real split), 100 spans / 1 trace over 3 backends (one
 * target: pass-through), 1000 spans / 100 traces over 30 backends. Each case cycles over 8 bodies with
 * different trace IDs (same bytes otherwise) so the routing is not one memorised pattern. Metrics: 300 data
 * points over 100 resources (each: a histogram, a gauge and a sum of one point) over 3 backends, routed by
 * service, resource (whole entries) and metric (each Metric); "ns/item" is then per Metric. Then bench/compare's
 * S1 (100 items from 10 traces, 3 resources, 3 backends) and S4 (the same over 30 backends) payloads for
 * traces, logs and metrics (by service, the default, and by metric). Every figure is the best of 5 timed runs of
 * about 0.2 s; "allocs" is malloc + calloc + realloc calls per split + dispose (counted by wrapping glibc's
 * allocator in this program; "-" where that is not possible, e.g. under a sanitizer).
 *
 * Usage: bench_splice [SECONDS_PER_RUN [CASE_PREFIX]]  (default 0.2 s, every case) the cases whose name starts
 *                                                     with CASE_PREFIX
 *        bench_splice --count N [CASE_PREFIX]         no timing: N splits + disposes of each case, in split_loop(),
 *                                                     and their allocations; for `valgrind --tool=callgrind
 *                                                     --toggle-collect=split_loop`, whose instruction total
 *                                                     divided by N is instructions per split
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "balancer/ring.h"
#include "balancer/splice.h"
#include "bench/payload.h"
#include "opentelemetry/proto/collector/logs/v1/logs_service.pb-c.h"
#include "opentelemetry/proto/collector/metrics/v1/metrics_service.pb-c.h"
#include "opentelemetry/proto/collector/trace/v1/trace_service.pb-c.h"

#define COPIES 8

#include "bench/alloc_count.h" /* n_allocs, BENCH_COUNT_ALLOCS */

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

static const bl_shape_t *shape_of(pl_signal s) {
  return s == PL_METRICS ? &bl_shape_metrics : s == PL_LOGS ? &bl_shape_logs : &bl_shape_traces;
}
static const ProtobufCMessageDescriptor *desc_of(pl_signal s) {
  return s == PL_METRICS ? &opentelemetry__proto__collector__metrics__v1__export_metrics_service_request__descriptor
         : s == PL_LOGS  ? &opentelemetry__proto__collector__logs__v1__export_logs_service_request__descriptor
                         : &opentelemetry__proto__collector__trace__v1__export_trace_service_request__descriptor;
}

/* Spans, log records, or Metric records, of a body. */
static uint32_t count_units(pl_signal sig, const uint8_t *b, size_t len) {
  ProtobufCMessage *m = protobuf_c_message_unpack(desc_of(sig), NULL, len, b);
  uint32_t n = 0;
  if (!m) return 0;
  if (sig == PL_METRICS) {
    const Opentelemetry__Proto__Collector__Metrics__V1__ExportMetricsServiceRequest *q = (const void *)m;
    for (size_t r = 0; r < q->n_resource_metrics; r++)
      for (size_t k = 0; k < q->resource_metrics[r]->n_scope_metrics; k++)
        n += (uint32_t)q->resource_metrics[r]->scope_metrics[k]->n_metrics;
  } else if (sig == PL_LOGS) {
    const Opentelemetry__Proto__Collector__Logs__V1__ExportLogsServiceRequest *q = (const void *)m;
    for (size_t r = 0; r < q->n_resource_logs; r++)
      for (size_t k = 0; k < q->resource_logs[r]->n_scope_logs; k++)
        n += (uint32_t)q->resource_logs[r]->scope_logs[k]->n_log_records;
  } else {
    const Opentelemetry__Proto__Collector__Trace__V1__ExportTraceServiceRequest *q = (const void *)m;
    for (size_t r = 0; r < q->n_resource_spans; r++)
      for (size_t k = 0; k < q->resource_spans[r]->n_scope_spans; k++)
        n += (uint32_t)q->resource_spans[r]->scope_spans[k]->n_spans;
  }
  protobuf_c_message_free_unpacked(m, NULL);
  return n;
}

/* iters split + dispose of the bodies in turn; the only code `--toggle-collect=split_loop` counts. */
__attribute__((noinline)) static void split_loop(const bcase *c, uint8_t *const *bodies, size_t len,
                                                 const bl_ring_t *ring, uint64_t iters) {
  for (uint64_t i = 0; i < iters; i++) {
    bl_split_t sp;
    bl_error_t err;
    if (bl_split(shape_of(c->signal), c->route, bodies[i % COPIES], len, ring, &sp, &err) != 0) {
      fprintf(stderr, "bl_split: %s\n", err.msg);
      exit(1);
    }
    sink += sp.n_targets;
    bl_split_dispose(&sp);
  }
}

/* Best ns per request over 5 runs of about secs each; op 0 = split, 1 = protobuf-c unpack + free. */
static double time_op(int op, const bcase *c, uint8_t *const *bodies, size_t len, const bl_ring_t *ring,
                      double secs) {
  double best = 1e30;
  for (int run = 0; run < 5; run++) {
    uint64_t iters = 0;
    double t0 = now(), t1;
    do {
      if (op == 0) {
        split_loop(c, bodies, len, ring, 64);
        iters += 64;
      } else {
        for (int k = 0; k < 64; k++, iters++) {
          ProtobufCMessage *q = protobuf_c_message_unpack(desc_of(c->signal), NULL, len, bodies[iters % COPIES]);
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

/* count > 0: no timing, count splits in split_loop and the allocations they made. */
static int run_case(const bcase *c, double secs, uint64_t count) {
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

  uint64_t a0 = n_allocs, n = count ? count : 4096;
  split_loop(c, bodies, p.len, ring, n);
  char allocs[32] = "-";
  if (BENCH_COUNT_ALLOCS) snprintf(allocs, sizeof allocs, "%.2f", (double)(n_allocs - a0) / (double)n);
  if (count) {
    printf("%-36s %7zu %6u %8zu %8u %6zu %8llu %7s\n", c->name, p.len, units, c->backends, targets, iov,
           (unsigned long long)count, allocs);
  } else {
    double split_ns = time_op(0, c, bodies, p.len, ring, secs);
    double unpack_ns = time_op(1, c, bodies, p.len, ring, secs);
    printf("%-36s %7zu %6u %8zu %8u %6zu %7s %10.0f %8.1f %12.1f %8.1fx\n", c->name, p.len, units, c->backends,
           targets, iov, allocs, split_ns, split_ns / units, unpack_ns / units, unpack_ns / split_ns);
  }
  for (int i = 0; i < COPIES; i++) free(bodies[i]);
  bl_ring_unref(ring);
  pl_payload_dispose(&p);
  return 0;
}

int main(int argc, char **argv) {
  double secs = 0.2;
  uint64_t count = 0;
  const char *only = "";
  if (argc > 2 && strcmp(argv[1], "--count") == 0) {
    count = strtoull(argv[2], NULL, 10);
    if (argc > 3) only = argv[3];
    if (count == 0) {
      fprintf(stderr, "usage: bench_splice [SECONDS_PER_RUN [CASE_PREFIX]] | --count N [CASE_PREFIX]\n");
      return 2;
    }
  } else if (argc > 1) {
    secs = atof(argv[1]);
    if (secs <= 0) secs = 0.2;
    if (argc > 2) only = argv[2];
  }
  static const bcase cases[] = {
      {"100 spans, 10 traces", PL_TRACES, BL_ROUTE_TRACE_ID, 100, 10, 0, 3},
      {"100 spans, 1 trace (pass)", PL_TRACES, BL_ROUTE_TRACE_ID, 100, 1, 0, 3},
      {"1000 spans, 100 traces", PL_TRACES, BL_ROUTE_TRACE_ID, 1000, 100, 0, 30},
      {"300 metrics/100 res, service", PL_METRICS, BL_ROUTE_SERVICE, 300, 1, 100, 3},
      {"300 metrics/100 res, resource", PL_METRICS, BL_ROUTE_RESOURCE, 300, 1, 100, 3},
      {"300 metrics/100 res, metric", PL_METRICS, BL_ROUTE_METRIC, 300, 1, 100, 3},
      {"S1 traces", PL_TRACES, BL_ROUTE_TRACE_ID, 100, 10, 0, 3},
      {"S1 logs", PL_LOGS, BL_ROUTE_TRACE_ID, 100, 10, 0, 3},
      {"S1 metrics, service", PL_METRICS, BL_ROUTE_SERVICE, 100, 10, 0, 3},
      {"S1 metrics, metric", PL_METRICS, BL_ROUTE_METRIC, 100, 10, 0, 3},
      {"S4 traces", PL_TRACES, BL_ROUTE_TRACE_ID, 100, 10, 0, 30},
      {"S4 logs", PL_LOGS, BL_ROUTE_TRACE_ID, 100, 10, 0, 30},
      {"S4 metrics, service", PL_METRICS, BL_ROUTE_SERVICE, 100, 10, 0, 30},
      {"S4 metrics, metric", PL_METRICS, BL_ROUTE_METRIC, 100, 10, 0, 30},
  };
  if (count)
    printf("%-36s %7s %6s %8s %8s %6s %8s %7s\n", "case", "bytes", "items", "backends", "targets", "iovs", "splits",
           "allocs");
  else
    printf("%-36s %7s %6s %8s %8s %6s %7s %10s %8s %12s %9s\n", "case", "bytes", "items", "backends", "targets",
           "iovs", "allocs", "split ns", "ns/item", "unpack ns/it", "unpack/split");
  int rc = 0, ran = 0;
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    if (strncmp(cases[i].name, only, strlen(only)) != 0) continue;
    rc |= run_case(&cases[i], secs, count);
    ran++;
  }
  if (!ran) fprintf(stderr, "no case starts with \"%s\"\n", only);
  return rc || !ran;
}
