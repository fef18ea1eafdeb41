/*
 * balancer/splice — routes the items of an OTLP Export*ServiceRequest by scanning its protobuf wire bytes,
 * and builds, per target backend, a sub-request as an iovec list that points into the request buffer plus a
 * few freshly written tag+length headers. Nothing is decoded into structs; nothing is re-encoded.
 *
 * One table-driven path serves every signal (bl_shape_t): Request{1: repeated Resource-entry{1: resource,
 * 2: repeated Scope-entry{1: scope, 2: repeated Item, 3: schema_url}, 3: schema_url}}. The shape names the
 * item's key field (Span.trace_id = 1, LogRecord.trace_id = 9), or (metrics) the item's name field and its
 * data-point containers, and whether service/resource routing moves whole resource entries.
 *
 * Routes (bl_route_t) and the unit each one moves:
 *   traces, logs  TRACE_ID  each item by its trace_id (16 bytes, not all zero); an item without one falls back
 *                           to its resource's service key (below).
 *                 SERVICE   each item by its resource's service key. RESOURCE and METRIC mean nothing for
 *                           items that carry no name: they are treated as SERVICE.
 *   metrics       SERVICE   each whole resource entry by its service key. TRACE_ID (metrics have no trace_id)
 *                           is treated as SERVICE, which keeps the default of callers that pass TRACE_ID.
 *                 RESOURCE  each whole resource entry by its attribute-set key (below).
 *                 METRIC    each Metric (the item) by hash(service.name bytes, one 0 byte, Metric.name bytes),
 *                           so one series always reaches the same backend; with no service.name the first part
 *                           is the 8 little-endian bytes of the resource-bytes hash. The last Metric.name field
 *                           counts (absent: empty). Envelopes are rebuilt as for spans.
 * Service key: the resource's service.name string (Resource.attributes[key=="service.name"]
 * .value.string_value); with no service.name, the whole resource message bytes.
 * Attribute-set key: bl_hash of the 8 little-endian bytes of the wrapping 64-bit SUM of bl_hash(KeyValue
 * bytes) over the Resource's attributes, so any order of the same attributes gives the same key. Sum, not
 * xor: a duplicated attribute does not cancel out (xor would make {A, A} collide with {}); the attributes are a
 * multiset, {A, A} and {A} are different keys. Only the attributes count: dropped_attributes_count and unknown
 * Resource fields do not; each KeyValue counts as its encoded bytes (the same attribute encoded differently,
 * e.g. with its fields swapped, is another attribute; SDKs encode canonically). Several resource fields in one
 * entry merge, so their attributes all count. No resource or no attributes: the sum is 0, a fixed key.
 * Collisions only co-locate two resources (2^-64 for unrelated sets); routing needs no collision resistance.
 * Every key is hashed with bl_hash (or is a bl_hash output) and looked up in the ring.
 *
 * Items (bl_part_t.items, bl_split_t.items): spans, log records, and for metrics DATA POINTS (what OTLP's
 * partial_success.rejected_data_points counts): a Metric's points are the field-1 records (data_points) of its
 * gauge (5), sum (7), histogram (9), exponential_histogram (10) or summary (11), counted by scanning the
 * container and skipping each point by length (points are not decoded). When a Metric holds several data
 * fields, the last one counts, alone (protobuf-c keeps only the last oneof member, even the same member twice).
 * A Metric without data is 0 points but is still routed and forwarded like any other; so a part may have
 * len > 0 and items == 0.
 *
 * Validation (a malformed request is refused whole, with the byte offset and what was wrong): every varint
 * at most 10 bytes and inside its buffer; every length inside its parent message; wire types 3/4 (groups)
 * and 6/7 rejected anywhere in the scanned levels; trace_id of length 0 or 16 only; Metric.name and the data
 * containers of wire type 2, and a container's data_points of wire type 2 (a bad container is refused with its
 * path, e.g. "...metrics[3].sum.data_points[2]: ..."). Messages below the item level (attributes, events, data
 * points, ...) are skipped by length, not validated. The scanner never reads past the buffer.
 *
 * Splicing (item units): for each backend, each resource entry that has items for it is emitted with its
 * non-scope fields (resource, schema_url, unknown fields) copied verbatim, and each scope entry with items for
 * it with its non-item fields copied verbatim and only the backend's items; only the enclosing length
 * prefixes are new. Entries without items for a backend are not emitted to it (no empty envelopes).
 * Whole-entry units (metrics by service/resource) are copied verbatim, one slice each; an entry without any
 * Metric record is not emitted (unless the whole body goes to one backend as is). Unknown top-level fields of
 * the request are copied to every part.
 */
#ifndef OTLPGW_BALANCER_SPLICE_H
#define OTLPGW_BALANCER_SPLICE_H

#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#include "balancer/ring.h"

typedef enum { BL_ROUTE_TRACE_ID = 0, BL_ROUTE_SERVICE = 1, BL_ROUTE_RESOURCE = 2, BL_ROUTE_METRIC = 3 } bl_route_t;

typedef struct bl_shape {
  const char *name;          /* "ExportTraceServiceRequest" for messages */
  uint32_t item_key_field;   /* field number of the trace_id in the item (1 spans, 9 log records); 0 = none */
  uint32_t item_name_field;  /* field of the item's name, keyed by BL_ROUTE_METRIC (Metric.name = 1); 0 = none */
  uint32_t item_points;      /* bit f set: item field f (< 32) is a data container whose field-1 records are the
                              * counted points (metrics: 5, 7, 9, 10, 11); 0: each item counts 1 */
  int route_resource;        /* 1: service/resource routing moves whole resource entries (metrics) */
  /* Field names for error messages: the request's repeated resource entries, their scope entries and the
   * scope entries' items ("resource_spans", "scope_spans", "spans"), the item's key (or name) field
   * ("trace_id", "name"), the item's fields below 32 by number (NULL, or NULL entries: "(field N)"), and a data
   * container's points ("data_points"). */
  const char *resources_name;
  const char *scopes_name;
  const char *items_name;
  const char *key_name;
  const char *const *item_field_names;
  const char *points_name;
} bl_shape_t;

extern const bl_shape_t bl_shape_traces;
extern const bl_shape_t bl_shape_logs;
extern const bl_shape_t bl_shape_metrics;

typedef struct bl_part {
  struct iovec *iov;  /* into the request buffer and the split's header storage */
  size_t n_iov;
  size_t len;         /* total bytes */
  uint64_t items;     /* spans / log records / metric data points routed here (may be 0 with len > 0) */
} bl_part_t;

/* The result of one split. Owns its memory (one arena); the iovecs point into the request buffer, which
 * must outlive the split. */
typedef struct bl_split {
  bl_part_t *parts;       /* indexed by ring member index; parts[i].len == 0: nothing for member i */
  size_t n_parts;         /* == bl_ring_size(ring) */
  uint32_t n_targets;     /* members with len > 0 */
  uint32_t single_target; /* when n_targets == 1: that member, and the original body can be forwarded as is */
  uint64_t items;         /* all items of the request (spans / log records / data points) */
  uint64_t resources;     /* resource entries in the request */
  void *arena;            /* private */
} bl_split_t;

typedef struct bl_error {
  size_t offset;          /* byte offset in the request of the problem */
  char msg[160];          /* e.g. "ResourceSpans.scope_spans: length 4000 runs past its parent (ends at 120)" */
} bl_error_t;

/* Scans buf and splits it over ring (which must have >= 1 member). route selects the key and the unit as
 * above (a route that means nothing for the shape is treated as BL_ROUTE_SERVICE; never an error). Returns 0,
 * or -1 with *err filled (malformed request), or -2 (out of memory), or -3 with *err filled (internal error: a
 * part needed more iovecs than the split sized for it; refused instead of written past its array). -3 is a bug
 * in this module, never the request's fault, and no input is known to reach it (why: splice.c, count_units);
 * callers answer it like an internal error (500), not like a malformed request. On success bl_split_dispose
 * must be called. An empty request (no resource entries) succeeds with n_targets == 0. */
int bl_split(const bl_shape_t *shape, bl_route_t route, const uint8_t *buf, size_t len, const bl_ring_t *ring,
             bl_split_t *out, bl_error_t *err);

void bl_split_dispose(bl_split_t *s);

#endif
