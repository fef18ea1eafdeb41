/*
 * Benchmark of the per-request costs of gateway/backend and gateway/http_server: N POSTs through a be_pool
 * (request_timeout set, as in the gateway) to an hs_server sink that answers each with an empty 200
 * (application/x-protobuf, as a collector does), both on one loop in one thread over 127.0.0.1. One process and one
 * thread, so every instruction of a round trip (be_send's head and deadline, the writev, the sink's parse and
 * response head, the pool's response parse and completion) is this program's, and callgrind counts all of it.
 *
 * Each request carries a body of --body bytes in --iov pieces (the splicer's parts are several iovecs); --inflight
 * requests are kept in flight over --conns connections (each done callback sends the next). Warm-up: the first
 * --inflight * 4 requests (connections opened, buffers grown) are not measured.
 *
 * Usage: bench_backend [--requests N] [--inflight W] [--conns C] [--body BYTES] [--iov K]
 *        prints requests/s of the measured phase (wall clock), its user / system CPU and allocations per request;
 *        under `valgrind --tool=callgrind --collect-atstart=no bench_backend ...` only the measured phase is
 *        collected (CALLGRIND_TOGGLE_COLLECT around it), so the total Ir divided by N is instructions per round
 *        trip, and callgrind_annotate --inclusive=yes gives be_send's and hs_respond's shares.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <uv.h>

#include "gateway/backend.h"
#include "gateway/http_server.h"

#if defined(__has_include)
#if __has_include(<valgrind/callgrind.h>)
#include <valgrind/callgrind.h>
#endif
#endif
#ifndef CALLGRIND_TOGGLE_COLLECT
#define CALLGRIND_TOGGLE_COLLECT
#endif

#include "bench/alloc_count.h" /* n_allocs, BENCH_COUNT_ALLOCS */

typedef struct bench {
  uv_loop_t loop;
  hs_server_t *srv;
  be_pool_t *pool;
  uint8_t *body;
  struct iovec iov[64];
  size_t n_iov;
  uint64_t target, sent, done, warmup, failed;
  uint64_t t0, allocs0;
  struct rusage ru0;
} bench_t;

static double cpu_us(const struct timeval *a, const struct timeval *b) {
  return (double)(b->tv_sec - a->tv_sec) * 1e6 + (double)(b->tv_usec - a->tv_usec);
}

static void sink_request(hs_request_t *req, void *ud) {
  hs_respond(req, 200, "application/x-protobuf", NULL, 0, NULL, 0);
}

static void send_one(bench_t *b);

static void on_done(void *ud, int status, const uint8_t *body, size_t len, uint32_t retry_after) {
  bench_t *b = ud;
  if (status != 200) b->failed++;
  b->done++;
  if (b->done == b->warmup) {
    CALLGRIND_TOGGLE_COLLECT;
    b->t0 = uv_hrtime();
    getrusage(RUSAGE_SELF, &b->ru0);
    b->allocs0 = n_allocs;
  }
  if (b->done == b->target) {
    CALLGRIND_TOGGLE_COLLECT;
    double s = (double)(uv_hrtime() - b->t0) / 1e9;
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    uint64_t n = b->target - b->warmup;
    printf("requests %llu: %.0f requests/s (%.3f s), CPU us/request user %.3f sys %.3f, allocations/request %.2f, "
           "failed %llu\n",
           (unsigned long long)n, (double)n / s, s, cpu_us(&b->ru0.ru_utime, &ru.ru_utime) / (double)n,
           cpu_us(&b->ru0.ru_stime, &ru.ru_stime) / (double)n, (double)(n_allocs - b->allocs0) / (double)n,
           (unsigned long long)b->failed);
    be_pool_destroy(b->pool);
    b->pool = NULL;
    hs_server_shutdown(b->srv, NULL, NULL); /* the pool's connections are closing: the sink's follow */
    return;
  }
  if (b->sent < b->target) send_one(b);
}

static void send_one(bench_t *b) {
  b->sent++;
  if (be_send(b->pool, "/v1/traces", "application/x-protobuf", NULL, b->iov, b->n_iov, on_done, b) != 0) {
    fprintf(stderr, "be_send failed\n");
    exit(1);
  }
}

static uint64_t arg_u64(int argc, char **argv, const char *name, uint64_t dflt) {
  for (int i = 1; i + 1 < argc; i++)
    if (strcmp(argv[i], name) == 0) return strtoull(argv[i + 1], NULL, 10);
  return dflt;
}

int main(int argc, char **argv) {
  static bench_t b;
  uint64_t n = arg_u64(argc, argv, "--requests", 200000), inflight = arg_u64(argc, argv, "--inflight", 8);
  uint64_t conns = arg_u64(argc, argv, "--conns", 8), body = arg_u64(argc, argv, "--body", 1024);
  b.n_iov = arg_u64(argc, argv, "--iov", 3);
  if (b.n_iov < 1 || b.n_iov > 64 || inflight < 1 || n < 1) {
    fprintf(stderr, "usage: bench_backend [--requests N] [--inflight W] [--conns C] [--body BYTES] [--iov 1..64]\n");
    return 2;
  }
  uv_loop_init(&b.loop);
  hs_config_t hc = {.name = "bench-sink", .max_body_bytes = 64u << 20, .on_request = sink_request};
  if (hs_server_create(&b.loop, &hc, &b.srv) != 0 || hs_server_listen(b.srv, "127.0.0.1", 0) != 0) {
    fprintf(stderr, "sink: cannot listen\n");
    return 1;
  }
  be_pool_config_t pc = {.host = "127.0.0.1", .port = hs_server_port(b.srv), .max_connections = (uint32_t)conns,
                         .request_timeout_ms = 10000};
  if (be_pool_create(&b.loop, &pc, &b.pool) != 0) return 1;
  b.body = calloc(1, body ? body : 1);
  for (size_t i = 0, off = 0; i < b.n_iov; i++) {
    size_t k = i + 1 == b.n_iov ? body - off : body / b.n_iov;
    b.iov[i] = (struct iovec){b.body + off, k};
    off += k;
  }
  b.warmup = inflight * 4;
  b.target = n + b.warmup;
  for (uint64_t i = 0; i < inflight && b.sent < b.target; i++) send_one(&b);
  uv_run(&b.loop, UV_RUN_DEFAULT);
  hs_server_destroy(b.srv);
  int rc = uv_loop_close(&b.loop);
  free(b.body);
  return rc != 0 || b.failed != 0;
}
