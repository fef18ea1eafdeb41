/*
 * gateway/memory — one byte budget for everything the process holds for telemetry (server.memory_limit):
 * request bodies being read, decompressed or transcoded, parts compressed for backends, and every retry
 * queue, across all worker threads. Lock-free: one atomic counter that any thread may move.
 *
 * Two kinds of charges:
 *   gm_reserve  data not yet accepted (a request body about to be read, its gunzip output): refused when it
 *               would cross the budget; the caller then answers 503 + Retry-After before reading further.
 *   gm_force    data already acknowledged to a client (retry queues), or whose refusal would help nothing
 *               (the gzip copy of a part being sent): always counted, never refused, so queues may take the
 *               count past the limit; new requests are refused until they drain.
 *
 * Small requests are not starved by large ones: the last 1/GM_SMALL_SLICE_DIV of the budget is kept for
 * requests that hold less than limit/GM_SMALL_REQ_DIV in all. A stream of large requests can fill at most
 * 7/8 of the budget, and requests below limit/64 (the common SDK batch) still fit in the rest. There is no
 * queue: whoever asks while there is room gets it, the others are refused at once and retry (Retry-After).
 *
 * The process has one budget, gm_process (unlimited until gm_set_limit); others can be made for tests.
 */
#ifndef OTLPGW_MEMORY_H
#define OTLPGW_MEMORY_H

#include <stdatomic.h>
#include <stdint.h>

#define GM_SMALL_SLICE_DIV 8 /* the last 1/8 of the budget is for small requests only */
#define GM_SMALL_REQ_DIV 64  /* small: holding less than limit/64 in all */

typedef struct gm_budget {
  atomic_uint_least64_t used;    /* bytes charged now */
  atomic_uint_least64_t limit;
  atomic_uint_least64_t peak;    /* highest used since gm_trim_due last claimed a drop */
  atomic_uint_least64_t refused; /* reservations refused, ever */
} gm_budget_t;

extern gm_budget_t gm_process;

void gm_init(gm_budget_t *b, uint64_t limit);
/* Changes the limit; what is charged stays charged (a lower limit just refuses more until usage falls). */
void gm_set_limit(gm_budget_t *b, uint64_t limit);
uint64_t gm_limit(const gm_budget_t *b);
uint64_t gm_used(const gm_budget_t *b);
uint64_t gm_refused(const gm_budget_t *b);

/* Charges bytes for a request that holds total bytes in all once they are charged (total >= bytes), unless
 * that would cross the budget: the whole limit for a small request (total < limit/GM_SMALL_REQ_DIV), the
 * limit less its last 1/GM_SMALL_SLICE_DIV for a larger one. Returns 0 (charged) or -1 (nothing charged). */
int gm_reserve(gm_budget_t *b, uint64_t bytes, uint64_t total);
/* Charges bytes whatever the budget says (acknowledged data). */
void gm_force(gm_budget_t *b, uint64_t bytes);
/* Gives back bytes charged by gm_reserve or gm_force. */
void gm_release(gm_budget_t *b, uint64_t bytes);

/* The same as callbacks with the budget as user data (gateway/http_server's hs_config_t.mem_reserve and
 * mem_release): force non-zero charges with gm_force. */
int gm_reserve_cb(uint64_t bytes, uint64_t total, int force, void *budget);
void gm_release_cb(uint64_t bytes, void *budget);

/* Giving memory back after a burst. glibc keeps freed heap memory resident: after the first large free it
 * raises its mmap threshold (up to 32 MiB), so multi-MB bodies come from the heaps, and what a burst freed
 * stays in them (measured: 1.4 GB resident after 1.5 GB of queued parts drained). malloc_trim(0) returns
 * the free pages of every heap. It walks them all (~100-250 ms after a 1.5 GB burst), so it is run after a
 * large drop only, from a timer and off the ingest loops (gateway: libuv's thread pool). A fixed small mmap
 * threshold would return large buffers at free time, but costs a page fault per 4 KiB of every large body
 * (measured: +80% CPU per 1.5 MB request); it is not set.
 *
 * gm_trim_due: for a periodic timer. When usage has fallen by limit/16 (clamped to 16..64 MiB) since its
 * peak, claims the drop (a new peak starts from now; one caller wins among concurrent ones) and returns 1:
 * the caller then runs gm_trim. Else 0. */
int gm_trim_due(gm_budget_t *b);
/* malloc_trim(0) where glibc has it, else nothing. Any thread. */
void gm_trim(void);

#endif
