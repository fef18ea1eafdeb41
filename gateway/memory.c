/* gateway/memory — see memory.h. */
#include "gateway/memory.h"

#ifdef __GLIBC__
#include <malloc.h>
#endif

/* gm_trim_due: after usage fell by limit/16, clamped to [16 MiB, 64 MiB]. */
#define GM_TRIM_MIN_DROP (16ull << 20)
#define GM_TRIM_MAX_DROP (64ull << 20)

gm_budget_t gm_process = {.limit = UINT64_MAX};

void gm_init(gm_budget_t *b, uint64_t limit) {
  atomic_init(&b->used, 0);
  atomic_init(&b->limit, limit);
  atomic_init(&b->peak, 0);
  atomic_init(&b->refused, 0);
}

void gm_set_limit(gm_budget_t *b, uint64_t limit) { atomic_store_explicit(&b->limit, limit, memory_order_relaxed); }
uint64_t gm_limit(const gm_budget_t *b) { return atomic_load_explicit(&b->limit, memory_order_relaxed); }
uint64_t gm_used(const gm_budget_t *b) { return atomic_load_explicit(&b->used, memory_order_relaxed); }
uint64_t gm_refused(const gm_budget_t *b) { return atomic_load_explicit(&b->refused, memory_order_relaxed); }

/* Raises the peak to now; a lost race only makes the trim check see a slightly lower peak. */
static void note_peak(gm_budget_t *b, uint64_t now) {
  uint64_t p = atomic_load_explicit(&b->peak, memory_order_relaxed);
  while (now > p && !atomic_compare_exchange_weak_explicit(&b->peak, &p, now, memory_order_relaxed,
                                                            memory_order_relaxed)) {
  }
}

int gm_reserve(gm_budget_t *b, uint64_t bytes, uint64_t total) {
  uint64_t limit = gm_limit(b);
  if (total < bytes) total = bytes;
  uint64_t cap = limit;
  if (total >= limit / GM_SMALL_REQ_DIV) cap = limit - limit / GM_SMALL_SLICE_DIV;
  uint64_t cur = atomic_load_explicit(&b->used, memory_order_relaxed);
  do {
    if (bytes > cap || cur > cap - bytes) {
      atomic_fetch_add_explicit(&b->refused, 1, memory_order_relaxed);
      return -1;
    }
  } while (!atomic_compare_exchange_weak_explicit(&b->used, &cur, cur + bytes, memory_order_relaxed,
                                                  memory_order_relaxed));
  note_peak(b, cur + bytes);
  return 0;
}

void gm_force(gm_budget_t *b, uint64_t bytes) {
  uint64_t now = atomic_fetch_add_explicit(&b->used, bytes, memory_order_relaxed) + bytes;
  note_peak(b, now);
}

void gm_release(gm_budget_t *b, uint64_t bytes) { atomic_fetch_sub_explicit(&b->used, bytes, memory_order_relaxed); }

int gm_reserve_cb(uint64_t bytes, uint64_t total, int force, void *budget) {
  if (force) {
    gm_force(budget, bytes);
    return 0;
  }
  return gm_reserve(budget, bytes, total);
}

void gm_release_cb(uint64_t bytes, void *budget) { gm_release(budget, bytes); }

int gm_trim_due(gm_budget_t *b) {
  uint64_t used = gm_used(b), peak = atomic_load_explicit(&b->peak, memory_order_relaxed);
  uint64_t drop = gm_limit(b) / 16;
  if (drop > GM_TRIM_MAX_DROP) drop = GM_TRIM_MAX_DROP;
  if (drop < GM_TRIM_MIN_DROP) drop = GM_TRIM_MIN_DROP;
  if (peak < used || peak - used < drop) return 0;
  return atomic_compare_exchange_strong_explicit(&b->peak, &peak, used, memory_order_relaxed, memory_order_relaxed);
}

void gm_trim(void) {
#ifdef __GLIBC__
  malloc_trim(0);
#endif
}
