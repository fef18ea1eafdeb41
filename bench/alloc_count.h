/*
 * bench/alloc_count.h — allocation counting for a benchmark program: include it in exactly one file of the program.
 * Its malloc / calloc / realloc count into n_allocs and forward to glibc's own entry points (free needs no wrapper;
 * calls from libraries land here too). Not under a sanitizer, whose runtime owns the allocator:
 * BENCH_COUNT_ALLOCS says whether counting is on (0: n_allocs stays 0).
 */
#ifndef OTLPGW_BENCH_ALLOC_COUNT_H
#define OTLPGW_BENCH_ALLOC_COUNT_H

#include <stddef.h>
#include <stdint.h>

#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#define BENCH_ASAN 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__)
#define BENCH_ASAN 1
#endif

static uint64_t n_allocs;
#if defined(__GLIBC__) && !defined(BENCH_ASAN)
#define BENCH_COUNT_ALLOCS 1
extern void *__libc_malloc(size_t n);
extern void *__libc_calloc(size_t k, size_t n);
extern void *__libc_realloc(void *p, size_t n);
void *malloc(size_t n) {
  n_allocs++;
  return __libc_malloc(n);
}
void *calloc(size_t k, size_t n) {
  n_allocs++;
  return __libc_calloc(k, n);
}
void *realloc(void *p, size_t n) {
  n_allocs++;
  return __libc_realloc(p, n);
}
#else
#define BENCH_COUNT_ALLOCS 0
#endif

#endif
