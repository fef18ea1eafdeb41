/*
 * balancer/splice — routes the items of an OTLP Export*ServiceRequest by scanning its protobuf wire bytes,
 * and builds, per target backend, a sub-request as an iovec list that points into the request buffer plus a
 * few freshly written tag+length headers. Nothing is decoded into structs; nothing is re-encoded.
 *
 * One table-driven path serves every signal (bl_shape_t): Request{1: repeated Resource-entry{1: resource,
 * 2: repeated Scope-entry{1: scope, 2: repeated Item, 3: schema_url}, 3: schema_url}}; the shape names the
 * item's key field (Span.trace_id = 1, LogRecord.trace_id = 9) or routes whole resource entries (metrics).
 *
 * Routing key per unit: the item's trace_id (16 bytes, not all zero); otherwise (empty/all-zero trace_id,
 * or route-by-service) the resource's service.name string (Resource.attributes[key=="service.name"]
 * .value.string_value); with no service.name, the whole resource message bytes. The key is hashed with
 * bl_hash and looked up in the ring.
 *
 * Validation (a malformed request is refused whole, with the byte offset and what was wrong): every varint
 * at most 10 bytes and inside its buffer; every length inside its parent message; wire types 3/4 (groups)
 * and 6/7 rejected anywhere in the scanned levels; trace_id of length 0 or 16 only. Messages below the
 * item level (attributes, events, ...) are skipped by length, not validated. The scanner never reads past
 * the buffer.
 *
 * Splicing: for each backend, each resource entry that has items for it is emitted with its non-scope
 * fields (resource, schema_url, unknown fields) copied verbatim, and each scope entry with items for it
 * with its non-item fields copied verbatim and only the backend's items; only the enclosing length
 * prefixes are new. Entries without items for a backend are not emitted to it (no empty envelopes).
 * Unknown top-level fields of the request are copied to every part.
 */
#ifndef OTLPGW_BALANCER_SPLICE_H
#define OTLPGW_BALANCER_SPLICE_H

#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#include "balancer/ring.h"

typedef enum { BL_ROUTE_TRACE_ID = 0, BL_ROUTE_SERVICE = 1 } bl_route_t;

typedef struct bl_shape {
  const char *name;          /* "ExportTraceServiceRequest" for messages */
  uint32_t item_key_field;   /* field number of the trace_id in the item (1 spans, 9 log records); 0 = none */
  int route_resource;        /* 1: the unit is the whole resource entry (metrics by service/resource) */
  /* Field names for error messages: the request's repeated resource entries, their scope entries and the
   * scope entries' items ("resource_spans", "scope_spans", "spans"), and the item's key field ("trace_id"). */
  const char *resources_name;
  const char *scopes_name;
  const char *items_name;
  const char *key_name;
} bl_shape_t;

extern const bl_shape_t bl_shape_traces;
extern const bl_shape_t bl_shape_logs;
extern const bl_shape_t bl_shape_metrics;

typedef struct bl_part {
  struct iovec *iov;  /* into the request buffer and the split's header storage */
  size_t n_iov;
  size_t len;         /* total bytes */
  uint64_t items;     /* spans / log records / data-point-bearing units routed here */
} bl_part_t;

/* The result of one split. Owns its memory (one arena); the iovecs point into the request buffer, which
 * must outlive the split. */
typedef struct bl_split {
  bl_part_t *parts;       /* indexed by ring member index; parts[i].len == 0: nothing for member i */
  size_t n_parts;         /* == bl_ring_size(ring) */
  uint32_t n_targets;     /* members with len > 0 */
  uint32_t single_target; /* when n_targets == 1: that member, and the original body can be forwarded as is */
  uint64_t items;         /* all items of the request */
  uint64_t resources;     /* resource entries in the request */
  void *arena;            /* private */
} bl_split_t;

typedef struct bl_error {
  size_t offset;          /* byte offset in the request of the problem */
  char msg[160];          /* e.g. "ResourceSpans.scope_spans: length 4000 runs past its parent (ends at 120)" */
} bl_error_t;

/* Scans buf and splits it over ring (which must have >= 1 member). route selects trace_id or service
 * routing for item-level shapes. Returns 0, or -1 with *err filled (malformed request), or -2 (out of
 * memory). On success bl_split_dispose must be called. An empty request (no resource entries) succeeds
 * with n_targets == 0. */
int bl_split(const bl_shape_t *shape, bl_route_t route, const uint8_t *buf, size_t len, const bl_ring_t *ring,
             bl_split_t *out, bl_error_t *err);

void bl_split_dispose(bl_split_t *s);

#endif
