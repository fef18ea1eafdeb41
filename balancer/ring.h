/*
 * balancer/ring — consistent hashing of routing keys onto backends.
 *
 * A ring is an immutable snapshot built from a set of (endpoint, weight) members. It is a pure function
 * of that set: members are sorted by endpoint (config order never matters), so every gateway replica with
 * the same backends routes every key identically. Lookups are O(1), allocate nothing and may run on any
 * thread while another thread builds the next snapshot; snapshots are shared by reference count and
 * swapped by their owner (gateway/) with an atomic pointer exchange.
 */
#ifndef OTLPGW_BALANCER_RING_H
#define OTLPGW_BALANCER_RING_H

#include <stddef.h>
#include <stdint.h>

typedef struct bl_ring bl_ring_t;

typedef struct bl_ring_member {
  const char *endpoint; /* identity of the backend; copied */
  uint32_t weight;      /* >= 1; share of keys is proportional to weight */
  void *ud;             /* caller's pointer, returned by bl_ring_member_ud; not owned */
} bl_ring_member_t;

/* XXH3 64-bit of a routing key (trace_id bytes, service.name, ...). */
uint64_t bl_hash(const void *key, size_t len);

/* Builds a snapshot from n members (n may be 0: every lookup then returns BL_RING_NONE). Duplicate
 * endpoints are an error. Returns NULL on error or out of memory. Reference count starts at 1. */
bl_ring_t *bl_ring_create(const bl_ring_member_t *members, size_t n);

void bl_ring_ref(bl_ring_t *r);   /* atomic */
void bl_ring_unref(bl_ring_t *r); /* atomic; frees at zero; NULL is fine */

#define BL_RING_NONE UINT32_MAX

/* Index (in endpoint-sorted order, 0..size-1) of the member owning hash, or BL_RING_NONE when empty. */
uint32_t bl_ring_lookup(const bl_ring_t *r, uint64_t hash);

size_t bl_ring_size(const bl_ring_t *r);
const char *bl_ring_endpoint(const bl_ring_t *r, uint32_t idx);
uint32_t bl_ring_weight(const bl_ring_t *r, uint32_t idx);
void *bl_ring_member_ud(const bl_ring_t *r, uint32_t idx);

#endif
