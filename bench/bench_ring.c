/*
 * bench_ring — cost of balancer/ring lookups and builds, against a same-run peer: `hash % n`, the cheapest
 * possible (and not consistent) way to pick a backend. Machines here are noisy; read the ratios.
 *
 *   bench_ring [keys]     (default 4M keys; each figure is the best of 5 passes)
 *
 * "hash included" hashes a 16-byte trace ID with bl_hash (XXH3) per lookup, as the gateway does;
 * "hash excluded" looks up precomputed hashes. Keys are random, so table loads are random too.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "balancer/ring.h"

#define PASSES 5

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static uint64_t splitmix64(uint64_t *s) {
  uint64_t z = (*s += UINT64_C(0x9e3779b97f4a7c15));
  z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
  z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
  return z ^ (z >> 31);
}

static volatile uint64_t sink; /* keeps results alive */

/* Best-of-PASSES ns per key for each kind of loop. */
enum { K_RING_HASH, K_RING, K_MOD_HASH, K_MOD, K_N };

static double run(int kind, const bl_ring_t *r, uint32_t n, const uint8_t (*ids)[16], const uint64_t *h,
                  size_t nk) {
  double best = 1e30;
  for (int p = 0; p < PASSES; p++) {
    uint64_t acc = 0, t0 = now_ns();
    switch (kind) {
      case K_RING_HASH:
        for (size_t i = 0; i < nk; i++) acc += bl_ring_lookup(r, bl_hash(ids[i], 16));
        break;
      case K_RING:
        for (size_t i = 0; i < nk; i++) acc += bl_ring_lookup(r, h[i]);
        break;
      case K_MOD_HASH:
        for (size_t i = 0; i < nk; i++) acc += bl_hash(ids[i], 16) % n;
        break;
      case K_MOD:
        for (size_t i = 0; i < nk; i++) acc += h[i] % n;
        break;
    }
    double ns = (double)(now_ns() - t0) / (double)nk;
    sink += acc;
    if (ns < best) best = ns;
  }
  return best;
}

int main(int argc, char **argv) {
  size_t nk = argc > 1 ? strtoull(argv[1], NULL, 10) : 4000000;
  if (nk == 0) nk = 1;
  uint8_t (*ids)[16] = malloc(nk * sizeof *ids);
  uint64_t *h = malloc(nk * sizeof *h);
  if (!ids || !h) return 1;
  uint64_t seed = 1;
  for (size_t i = 0; i < nk; i++) {
    uint64_t a = splitmix64(&seed), b = splitmix64(&seed);
    memcpy(ids[i], &a, 8);
    memcpy(ids[i] + 8, &b, 8);
    h[i] = bl_hash(ids[i], 16);
  }

  static const uint32_t sizes[] = {3, 30, 300};
  static char names[300][48];
  bl_ring_member_t m[300];
  for (int i = 0; i < 300; i++) {
    snprintf(names[i], sizeof names[i], "backend-%d.otlp.svc:4318", i);
    m[i] = (bl_ring_member_t){names[i], 1, NULL};
  }

  printf("keys %zu, best of %d passes; ratios are against hash %% n in the same run\n", nk, PASSES);
  printf("%8s %12s %14s %14s %8s %14s %14s %8s\n", "backends", "build_ms", "ring+hash_ns", "mod+hash_ns", "ratio",
         "ring_ns", "mod_ns", "ratio");
  for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
    uint32_t n = sizes[s];
    double build = 1e30;
    for (int p = 0; p < PASSES; p++) {
      uint64_t t0 = now_ns();
      bl_ring_t *r = bl_ring_create(m, n);
      double ms = (double)(now_ns() - t0) / 1e6;
      if (!r) return 1;
      bl_ring_unref(r);
      if (ms < build) build = ms;
    }
    bl_ring_t *r = bl_ring_create(m, n);
    if (!r) return 1;
    double t[K_N];
    for (int k = 0; k < K_N; k++) t[k] = run(k, r, n, (const uint8_t(*)[16])ids, h, nk);
    printf("%8u %12.2f %14.2f %14.2f %8.2f %14.2f %14.2f %8.2f\n", n, build, t[K_RING_HASH], t[K_MOD_HASH],
           t[K_RING_HASH] / t[K_MOD_HASH], t[K_RING], t[K_MOD], t[K_RING] / t[K_MOD]);
    bl_ring_unref(r);
  }
  free(ids);
  free(h);
  return 0;
}
