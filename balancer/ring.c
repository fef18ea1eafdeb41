/*
 * balancer/ring — Maglev consistent hashing (Eisenbud et al., "Maglev: A Fast and Reliable Software Network
 * Load Balancer", NSDI 2016, section 3.4).
 *
 * Why Maglev and not a ring of virtual nodes (measured over 1M random trace IDs; tests/unit/test_ring.c and
 * bench/bench_ring.c re-measure the Maglev side):
 *  - balance: a Maglev table gives every member floor or ceil of its exact share of M slots (max/mean 1.0002
 *    at 300 backends with M = 655373). A virtual-node ring's share per member has relative sigma
 *    1/sqrt(vnodes): 1000 vnodes gave max/mean 1.098 at 300 backends, 10000 vnodes still 1.024 with a 680 ms
 *    build and ~300 ns binary-search lookups. Lookups here are one multiply and one table load.
 *  - disruption: a ring moves nothing between survivors; Maglev does move a little, because survivors' turns
 *    come earlier when a member is gone. That falls as M/n grows (remove 1 of 300: 0.83% of keys moved
 *    between survivors at M = 65537, 0.19% at M = 655373), so M is chosen >= ~2000 slots per member rather
 *    than the paper's minimum of 100, up to a table of 4194301 slots (8 MiB).
 *
 * The table is a pure function of the member set: members are sorted by endpoint, each member's permutation
 * of the slots comes from two seeded XXH3 hashes of its endpoint, and the fill order is fixed. The seeds and
 * the prime list below are part of the routing contract: every gateway replica must use the same ones.
 */
#include "balancer/ring.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include <xxhash.h>

#define RING_EMPTY_SLOT UINT16_MAX
#define RING_SEED_OFFSET UINT64_C(0x6f746c7067772d6f) /* "otlpgw-o" */
#define RING_SEED_SKIP UINT64_C(0x6f746c7067772d73)   /* "otlpgw-s" */
#define RING_SLOTS_PER_MEMBER 2000u                   /* target M/n; see the disruption note above */
#define RING_SCAN_MAX_COST 8u                       /* scan rounds while that costs <= 8 m steps */
#define RING_MIN_SLOTS_PER_MEMBER 100u                /* Maglev's balance bound: max/mean <= 1 + n/M */

/* Table sizes: primes, so that every skip in 1..M-1 walks all M slots. */
static const uint32_t ring_primes[] = {65537, 131071, 262139, 655373, 1048573, 2097143, 4194301};
#define RING_N_PRIMES (sizeof ring_primes / sizeof ring_primes[0])
#define RING_MAX_MEMBERS (4194301u / RING_MIN_SLOTS_PER_MEMBER) /* 41943; also < RING_EMPTY_SLOT */

typedef struct ring_member {
  const char *endpoint; /* points into the ring's own allocation */
  uint32_t weight;
  void *ud;
} ring_member_t;

struct bl_ring {
  atomic_size_t refs;
  uint32_t n;       /* members */
  uint32_t m;       /* table slots (prime), 0 when n == 0 */
  ring_member_t *members;
  uint16_t *table;  /* m entries: member index per slot */
  /* members, then table, then endpoint strings follow in the same allocation */
};

uint64_t bl_hash(const void *key, size_t len) { return XXH3_64bits(key, len); }

static int ring_cmp_member(const void *a, const void *b) {
  const bl_ring_member_t *x = *(const bl_ring_member_t *const *)a;
  const bl_ring_member_t *y = *(const bl_ring_member_t *const *)b;
  return strcmp(x->endpoint, y->endpoint);
}

/* Smallest listed prime giving >= RING_SLOTS_PER_MEMBER slots per member, else the largest. */
static uint32_t ring_table_size(size_t n) {
  for (size_t i = 0; i < RING_N_PRIMES; i++)
    if ((uint64_t)ring_primes[i] >= (uint64_t)n * RING_SLOTS_PER_MEMBER) return ring_primes[i];
  return ring_primes[RING_N_PRIMES - 1];
}

/* Restores the min-heap property from the root down. */
static void ring_sift_down(uint64_t *heap, uint32_t n) {
  uint32_t i = 0;
  uint64_t x = heap[0];
  for (;;) {
    uint32_t c = 2 * i + 1;
    if (c >= n) break;
    if (c + 1 < n && heap[c + 1] < heap[c]) c++;
    if (heap[c] >= x) break;
    heap[i] = heap[c];
    i = c;
  }
  heap[i] = x;
}

/*
 * Fills r->table (r->m slots, r->n >= 1 sorted members). Member i's permutation is
 * offset_i, offset_i + skip_i, offset_i + 2 skip_i, ... (mod m). Members take turns in rounds t = 1, 2, ...
 * in sorted order; in round t member i takes a turn only while count_i * wmax < t * weight_i, so counts end
 * proportional to weights within one slot (with equal weights this is the paper's plain round robin). A turn
 * claims the next slot of the member's permutation that is still empty.
 * Scanning every member every round costs n * rounds = m * wmax / mean weight, fine for similar weights but
 * 2.8 s for 1000 members with one of weight 10^6. Such sets draw turns from a min-heap keyed
 * (round << 16 | index) instead: the same order (so the same table), O(m log n). Returns 0, or -1 out of
 * memory.
 */
static int ring_fill(bl_ring_t *r) {
  const uint32_t n = r->n, m = r->m;
  uint64_t *heap = malloc((size_t)n * (sizeof(uint64_t) + 3 * sizeof(uint32_t)));
  if (!heap) return -1;
  uint32_t *next = (uint32_t *)(heap + n), *skip = next + n, *count = skip + n;
  uint64_t wmax = 0, wsum = 0;
  for (uint32_t i = 0; i < n; i++) {
    const char *ep = r->members[i].endpoint;
    size_t len = strlen(ep);
    next[i] = (uint32_t)(XXH3_64bits_withSeed(ep, len, RING_SEED_OFFSET) % m);
    skip[i] = (uint32_t)(XXH3_64bits_withSeed(ep, len, RING_SEED_SKIP) % (m - 1)) + 1;
    count[i] = 0;
    heap[i] = UINT64_C(1) << 16 | i; /* everyone's first turn is in round 1; sorted, so already a heap */
    wsum += r->members[i].weight;
    if (r->members[i].weight > wmax) wmax = r->members[i].weight;
  }
  const int use_heap = (uint64_t)n * wmax > RING_SCAN_MAX_COST * wsum;
  memset(r->table, 0xff, (size_t)m * sizeof r->table[0]);
  uint32_t filled = 0;
  for (uint64_t t = 1; filled < m; t++) {
    for (uint32_t k = 0; k < n && filled < m; k++) {
      uint32_t i = k;
      if (use_heap) { /* t and k only count turns here: the heap says whose turn it is */
        i = (uint32_t)(heap[0] & 0xffff);
      } else if ((uint64_t)count[i] * wmax >= t * r->members[i].weight) {
        continue; /* not i's turn this round */
      }
      uint32_t p = next[i];
      while (r->table[p] != RING_EMPTY_SLOT) {
        p += skip[i];
        if (p >= m) p -= m;
      }
      r->table[p] = (uint16_t)i;
      filled++;
      p += skip[i];
      if (p >= m) p -= m;
      next[i] = p;
      count[i]++;
      if (use_heap) {
        /* i's next turn: the first round u with count * wmax < u * weight. Rounds past 2^40 never come (the
         * heaviest member alone fills the table by round m), so clamping keeps the key in 56 bits. */
        uint64_t u = (uint64_t)count[i] * wmax / r->members[i].weight + 1;
        if (u > (UINT64_C(1) << 40)) u = UINT64_C(1) << 40;
        heap[0] = u << 16 | i;
        ring_sift_down(heap, n);
      }
    }
  }
  free(heap);
  return 0;
}

bl_ring_t *bl_ring_create(const bl_ring_member_t *members, size_t n) {
  if (n > RING_MAX_MEMBERS || (n && !members)) return NULL;
  const bl_ring_member_t **sorted = NULL;
  bl_ring_t *r = NULL;
  size_t strings = 0;
  for (size_t i = 0; i < n; i++) {
    if (!members[i].endpoint || members[i].weight == 0) return NULL;
    strings += strlen(members[i].endpoint) + 1;
  }
  uint32_t m = n ? ring_table_size(n) : 0;
  if (n) {
    sorted = malloc(n * sizeof *sorted);
    if (!sorted) return NULL;
    for (size_t i = 0; i < n; i++) sorted[i] = &members[i];
    qsort(sorted, n, sizeof *sorted, ring_cmp_member);
    for (size_t i = 1; i < n; i++)
      if (strcmp(sorted[i - 1]->endpoint, sorted[i]->endpoint) == 0) goto fail;
  }

  /* One allocation: header, members, table (uint16, after the pointer-aligned members), strings. */
  size_t off_members = sizeof *r;
  size_t off_table = off_members + n * sizeof(ring_member_t);
  size_t off_strings = off_table + (size_t)m * sizeof(uint16_t);
  r = malloc(off_strings + strings);
  if (!r) goto fail;
  atomic_init(&r->refs, 1);
  r->n = (uint32_t)n;
  r->m = m;
  r->members = (ring_member_t *)((char *)r + off_members);
  r->table = (uint16_t *)((char *)r + off_table);
  char *s = (char *)r + off_strings;
  for (size_t i = 0; i < n; i++) {
    size_t len = strlen(sorted[i]->endpoint) + 1;
    memcpy(s, sorted[i]->endpoint, len);
    r->members[i] = (ring_member_t){s, sorted[i]->weight, sorted[i]->ud};
    s += len;
  }
  if (n && ring_fill(r) != 0) goto fail;
  free(sorted);
  return r;

fail:
  free(r);
  free(sorted);
  return NULL;
}

void bl_ring_ref(bl_ring_t *r) {
  if (r) atomic_fetch_add_explicit(&r->refs, 1, memory_order_relaxed);
}

void bl_ring_unref(bl_ring_t *r) {
  if (!r) return;
  if (atomic_fetch_sub_explicit(&r->refs, 1, memory_order_release) == 1) {
    atomic_thread_fence(memory_order_acquire);
    free(r);
  }
}

/* Slot = high 32 bits of hash scaled to [0, m): one multiply, no division. m < 2^23, so the product fits in
 * 64 bits; each slot covers floor or ceil of 2^32/m hash prefixes (relative skew <= m/2^32 < 0.1%). */
uint32_t bl_ring_lookup(const bl_ring_t *r, uint64_t hash) {
  if (r->n == 0) return BL_RING_NONE;
  return r->table[((hash >> 32) * r->m) >> 32];
}

size_t bl_ring_size(const bl_ring_t *r) { return r ? r->n : 0; }

const char *bl_ring_endpoint(const bl_ring_t *r, uint32_t idx) { return idx < r->n ? r->members[idx].endpoint : NULL; }

uint32_t bl_ring_weight(const bl_ring_t *r, uint32_t idx) { return idx < r->n ? r->members[idx].weight : 0; }

void *bl_ring_member_ud(const bl_ring_t *r, uint32_t idx) { return idx < r->n ? r->members[idx].ud : NULL; }
