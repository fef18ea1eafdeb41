/*
 * balancer/splice — see splice.h for the contract.
 *
 * Pass 1 (scan_*) walks the request once, the only pass over its bytes: it validates every field of the scanned
 * levels, and records for each resource entry, scope entry and routing unit its byte range, plus each unit's
 * owner (ring index), in three growable arrays (offsets are uint32: requests are capped far below 4 GiB). Items
 * are walked field by field at their top level only (to find the last key field and reject bad wire types);
 * everything below is skipped by length. The usual field (a one-byte tag, a one-byte length, or a fixed-size or
 * one-byte varint value) takes a fast path that applies the same checks without the varint loops; anything
 * else, every error included, goes through the general path, so messages and offsets do not depend on it.
 * Trace ids are looked up in the ring through a small per-split cache. If every unit has the same owner, the
 * split is that one target and the whole buffer: nothing else is built.
 *
 * Otherwise pass 2 (count_*) walks the records (not the bytes) and sizes every (scope entry, backend) and
 * (resource entry, backend) envelope and every part, and pass 3 (fill_*) walks them again and writes the iovecs:
 * a new tag+length header per emitted envelope, and verbatim slices for the rest. The bytes of an envelope that
 * are not units or child envelopes ("gaps": resource, scope, schema_url, unknown fields, wherever they sit) are
 * copied to every backend that gets the envelope, in their original order, so each part parses as the merge
 * protobuf defines. Pass 2 cannot fold into pass 3 (a header's length precedes its content) nor into pass 1
 * (it would cost the single-target case, which needs none of it).
 *
 * Memory: the records, the emits and the per-part sums live in the call's scratch, a bump allocator whose first
 * chunk is a buffer on bl_split's stack (heap chunks only past it, freed before returning). What the split
 * keeps is one allocation, made once its size is known (after pass 2): the parts, their iovecs and the new
 * headers. So a usual request costs one malloc, and a usual malformed one none.
 *
 * Choices the header leaves open: service.name is the first attribute with key "service.name" and a string
 * value (several resource fields in one entry are searched in order, as their merge would list them; the
 * fallback hash is over the last one's bytes); a key field is checked (wire type 2, length 0 or 16) at every
 * occurrence and the last one routes. Error offsets point at the tag of the offending field, or at the varint
 * (length, value) that is bad.
 *
 * Metrics: Metric.name is scanned as the item's key field (no length rule). By metric, a Metric whose resource
 * entry has shown its service.name already is routed at once (the first service.name is final); otherwise it
 * waits like a trace-less span and its name is found again, by a walk of its already validated top-level
 * fields, when the entry ends. Each unit carries its weight (1, or the Metric's data points), so parts count
 * points while their iovec bound still counts units.
 */
#include "balancer/splice.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const metric_fields[32] = {[1] = "name", [2] = "description", [3] = "unit", [5] = "gauge",
                                              [7] = "sum", [9] = "histogram", [10] = "exponential_histogram",
                                              [11] = "summary", [12] = "metadata"};

const bl_shape_t bl_shape_traces = {.name = "ExportTraceServiceRequest", .item_key_field = 1,
                                    .resources_name = "resource_spans", .scopes_name = "scope_spans",
                                    .items_name = "spans", .key_name = "trace_id"};
const bl_shape_t bl_shape_logs = {.name = "ExportLogsServiceRequest", .item_key_field = 9,
                                  .resources_name = "resource_logs", .scopes_name = "scope_logs",
                                  .items_name = "log_records", .key_name = "trace_id"};
const bl_shape_t bl_shape_metrics = {.name = "ExportMetricsServiceRequest", .item_name_field = 1,
                                     .item_points = 1u << 5 | 1u << 7 | 1u << 9 | 1u << 10 | 1u << 11,
                                     .route_resource = 1, .resources_name = "resource_metrics",
                                     .scopes_name = "scope_metrics", .items_name = "metrics", .key_name = "name",
                                     .item_field_names = metric_fields, .points_name = "data_points"};

enum { WT_VARINT = 0, WT_I64 = 1, WT_LEN = 2, WT_I32 = 5 };

/* Where a field sits, for error paths. L_DATA: an item's data container (Metric.gauge, ...). */
enum level { L_REQ, L_RES, L_SCOPE, L_ITEM, L_DATA, L_RESOURCE, L_KV, L_ANY };

/* What is routed and by which key, from (shape, route); see splice.h. */
enum mode {
  M_ITEM_TRACE,   /* items by trace_id, else by the resource's service key */
  M_ITEM_SERVICE, /* items by the resource's service key */
  M_ITEM_METRIC,  /* items by (service key, item name) */
  M_RES_SERVICE,  /* whole resource entries by the service key */
  M_RES_ATTRS     /* whole resource entries by the attribute-set key */
};

typedef struct unit {
  uint32_t start, end; /* the item's whole record: tag .. end of value */
  uint32_t owner;
  uint32_t items;      /* weight: 1, or the Metric's data points */
} unit_t;

typedef struct scope_rec {
  uint32_t start, cstart, end; /* record start, content start, end */
  uint32_t first_unit, n_units;
  uint32_t n_other;            /* non-item fields: an upper bound on gap slices */
  uint32_t first_emit, n_emits;
} scope_rec;

typedef struct res_rec {
  uint32_t start, cstart, end;
  uint32_t first_scope, n_scopes;
  uint32_t n_other;
  uint32_t first_emit, n_emits;
  uint32_t owner;              /* BL_RING_NONE until the service key was looked up */
  uint32_t svc_off, svc_len;   /* service.name string, when has_svc */
  uint32_t rb_off, rb_len;     /* the (last) resource message, hashed when there is no service.name */
  uint8_t has_svc;
  uint8_t pending;             /* some units wait for the resource's owner */
  uint32_t units;              /* item records (Metric records decide whether a whole entry is sent) */
  uint64_t items;              /* their weight */
  uint64_t attr_sum;           /* M_RES_ATTRS: sum of bl_hash(KeyValue) over every resource field's attributes */
} res_rec;

typedef struct emit {
  uint32_t part;
  uint32_t clen; /* content length of the rebuilt envelope for that part */
} emit_t;

/* Scratch memory of one bl_split call: a bump allocator whose first chunk is a buffer on bl_split's stack, with
 * heap chunks (freed before bl_split returns) only past it. The scan's record arrays, the emits and the per-part
 * scratch live here; nothing in it outlives the call. */
enum { SCRATCH_INLINE = 12 * 1024 };

typedef struct chunk {
  struct chunk *next;
  size_t size;
} chunk_t;

typedef struct scratch {
  uint8_t *top, *lim; /* the free space of the current chunk */
  chunk_t *heap;      /* heap chunks, newest first */
} scratch_t;

/* The working state of one split (in its scratch). */
typedef struct arena {
  scratch_t mem;
  unit_t *units;
  size_t n_units, cap_units;
  scope_rec *scopes;
  size_t n_scopes, cap_scopes;
  res_rec *res;
  size_t n_res, cap_res;
  emit_t *emits;            /* pass 2: per scope entry then per resource entry, one per part it goes to */
  size_t n_emits;
  size_t hdr_bytes;         /* pass 2: the new headers' bytes (1 + varint_size(clen) per emit) */
  uint64_t top_gaps;        /* bytes of the request's own non-resource fields, copied to every part */
  uint8_t *hdr;             /* pass 3: where the next new header is written (in the result) */
  /* per-part scratch (n_parts of each) */
  bl_part_t *parts;         /* pass 2 sizes them here; bl_split copies them into the result */
  bl_part_t *out_parts;     /* pass 3: the result's parts, whose iovecs are written */
  uint64_t *acc_s, *acc_r;  /* byte counts of the current scope / resource per part */
  uint32_t *stamp_s, *stamp_r, *list_s, *list_r, *targets, *iov_cap;
  int overflow;             /* pass 3 met a slice beyond a part's iov_cap (see put): the split is refused */
  emit_t *targets_emit;     /* the targets as an emit list, for the request's own fields */
} arena_t;

/* What a successful split owns, one allocation (bl_split_t.arena): the parts, then every part's iovecs, then the
 * new headers. */
typedef struct result {
  struct iovec one; /* the single-target iovec */
  bl_part_t parts[];
} result_t;

/* Trace-id -> owner cache of one split: direct-mapped, TID_CACHE entries, valid bits in one word. Spans of a few
 * traces interleave in a request (SDKs batch by end time), so a one-entry cache of the previous trace misses. */
enum { TID_CACHE = 64 };
typedef struct tid_slot {
  uint8_t id[16];
  uint32_t owner;
} tid_slot;

typedef struct scan {
  const bl_shape_t *shape;
  enum mode mode;
  const uint8_t *buf;
  const bl_ring_t *ring;
  arena_t *a;
  bl_error_t *err;
  uint32_t key_field;      /* the item's trace_id or name field */
  uint32_t ri, si, ii, ai; /* indices for error paths: current resource entry, scope entry, item, attribute */
  uint32_t df, pi;         /* and the current data container's field number and data point */
  uint32_t first_owner;
  int mixed;
  int oom;
  uint64_t items;
  uint64_t tid_valid;      /* bit i: tid[i] holds a looked-up trace id */
  tid_slot *tid;           /* TID_CACHE slots (not zeroed: tid_valid says which hold something) */
} scan_t;

/* ------------------------------------------------------------------------------------------- errors */

/* snprintf at out+*n, never past cap; *n stays <= cap - 1. */
__attribute__((format(printf, 4, 5))) static void appendf(char *out, size_t cap, size_t *n, const char *fmt, ...) {
  if (*n + 1 >= cap) return;
  va_list ap;
  va_start(ap, fmt);
  int k = vsnprintf(out + *n, cap - *n, fmt, ap);
  va_end(ap);
  if (k > 0) *n = *n + (size_t)k < cap ? *n + (size_t)k : cap - 1;
}

/* "ExportTraceServiceRequest.resource_spans[2].scope_spans[0].spans[5]" for the message at level lv. */
static size_t path(const scan_t *sc, enum level lv, char *out, size_t cap) {
  const bl_shape_t *s = sc->shape;
  size_t n = 0;
  out[0] = '\0';
  appendf(out, cap, &n, "%s", s->name);
  if (lv >= L_RES) appendf(out, cap, &n, ".%s[%u]", s->resources_name, sc->ri);
  if (lv >= L_RESOURCE) {
    appendf(out, cap, &n, ".resource");
    if (lv >= L_KV) appendf(out, cap, &n, ".attributes[%u]", sc->ai);
    if (lv >= L_ANY) appendf(out, cap, &n, ".value");
    return n;
  }
  if (lv >= L_SCOPE) appendf(out, cap, &n, ".%s[%u]", s->scopes_name, sc->si);
  if (lv >= L_ITEM) appendf(out, cap, &n, ".%s[%u]", s->items_name, sc->ii);
  if (lv >= L_DATA) {
    const char *d = sc->df < 32 && s->item_field_names ? s->item_field_names[sc->df] : NULL;
    if (d) appendf(out, cap, &n, ".%s", d);
    else appendf(out, cap, &n, ".(field %u)", sc->df);
  }
  return n;
}

/* Name of field num of a message at level lv, for "parent.child: ..." messages. */
static void child_name(const scan_t *sc, enum level lv, uint64_t num, char *out, size_t cap) {
  const bl_shape_t *s = sc->shape;
  const char *n = NULL;
  switch (lv) {
  case L_REQ: if (num == 1) { snprintf(out, cap, "%s[%u]", s->resources_name, sc->ri); return; } break;
  case L_RES:
    if (num == 1) n = "resource";
    else if (num == 2) { snprintf(out, cap, "%s[%u]", s->scopes_name, sc->si); return; }
    else if (num == 3) n = "schema_url";
    break;
  case L_SCOPE:
    if (num == 1) n = "scope";
    else if (num == 2) { snprintf(out, cap, "%s[%u]", s->items_name, sc->ii); return; }
    else if (num == 3) n = "schema_url";
    break;
  case L_ITEM:
    if (num == sc->key_field) n = s->key_name;
    else if (num < 32 && s->item_field_names) n = s->item_field_names[num];
    break;
  case L_DATA: if (num == 1) { snprintf(out, cap, "%s[%u]", s->points_name, sc->pi); return; } break;
  case L_RESOURCE: if (num == 1) { snprintf(out, cap, "attributes[%u]", sc->ai); return; } break;
  case L_KV: n = num == 1 ? "key" : num == 2 ? "value" : NULL; break;
  case L_ANY: if (num == 1) n = "string_value"; break;
  }
  if (n) snprintf(out, cap, "%s", n);
  else snprintf(out, cap, "(field %llu)", (unsigned long long)num);
}

/* Fills sc->err with "<path of lv><fmt> at byte N" and returns -1. Cold: only malformed requests get here. */
__attribute__((cold, noinline, format(printf, 4, 5))) static int fail(scan_t *sc, enum level lv, const uint8_t *at,
                                                                     const char *fmt, ...) {
  char *m = sc->err->msg;
  size_t cap = sizeof sc->err->msg;
  size_t n = path(sc, lv, m, cap);
  if (n + 1 < cap) {
    va_list ap;
    va_start(ap, fmt);
    int k = vsnprintf(m + n, cap - n, fmt, ap);
    va_end(ap);
    if (k > 0) n = n + (size_t)k < cap ? n + (size_t)k : cap - 1;
  }
  size_t off = (size_t)(at - sc->buf);
  appendf(m, cap, &n, " at byte %zu", off);
  sc->err->offset = off;
  return -1;
}

__attribute__((cold, noinline)) static int fail_field(scan_t *sc, enum level lv, uint64_t num, const uint8_t *at,
                                                      const char *what) {
  char c[64];
  child_name(sc, lv, num, c, sizeof c);
  return fail(sc, lv, at, ".%s: %s", c, what);
}

__attribute__((cold, noinline)) static int fail_len(scan_t *sc, enum level lv, uint64_t num, const uint8_t *at,
                                                    uint64_t len, const uint8_t *end) {
  char c[64];
  child_name(sc, lv, num, c, sizeof c);
  return fail(sc, lv, at, ".%s: length %llu runs past its parent (ends at %zu)", c, (unsigned long long)len,
              (size_t)(end - sc->buf));
}

__attribute__((cold, noinline)) static int fail_wt(scan_t *sc, enum level lv, uint64_t num, const uint8_t *at,
                                                   unsigned wt) {
  char c[64];
  child_name(sc, lv, num, c, sizeof c);
  if (wt == 3 || wt == 4) return fail(sc, lv, at, ".%s: wire type %u (group) is not allowed", c, wt);
  if (wt == 6 || wt == 7) return fail(sc, lv, at, ".%s: invalid wire type %u", c, wt);
  return fail(sc, lv, at, ".%s: wire type %u (must be 2, length-delimited)", c, wt);
}

/* ---------------------------------------------------------------------------------------------- wire */

/* Slow path of rd_varint: returns 0, -1 (runs past end) or -2 (more than 10 bytes). */
static int rd_varint_slow(const uint8_t **pp, const uint8_t *end, uint64_t *v) {
  const uint8_t *p = *pp;
  uint64_t x = 0;
  for (unsigned i = 0; i < 10; i++) {
    if (p + i >= end) return -1;
    uint8_t b = p[i];
    x |= (uint64_t)(b & 0x7f) << (7 * i);
    if (!(b & 0x80)) {
      *v = x;
      *pp = p + i + 1;
      return 0;
    }
  }
  return -2;
}

/* Reads the varint at *pp (which may equal end) and advances. Tags and lengths are 1-2 bytes almost always. */
static inline int rd_varint(const uint8_t **pp, const uint8_t *end, uint64_t *v) {
  const uint8_t *p = *pp;
  if (__builtin_expect(p < end && p[0] < 0x80, 1)) {
    *v = p[0];
    *pp = p + 1;
    return 0;
  }
  if (end - p >= 2 && p[1] < 0x80) {
    *v = (uint64_t)(p[0] & 0x7f) | ((uint64_t)p[1] << 7);
    *pp = p + 2;
    return 0;
  }
  return rd_varint_slow(pp, end, v);
}

/* p[0] | p[1] << 8, in one load (gcc does not always merge the two byte loads). */
static inline unsigned ld16le(const uint8_t *p) {
  uint16_t v;
  memcpy(&v, p, 2);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
  v = __builtin_bswap16(v);
#endif
  return v;
}

static inline int skip_varint(const uint8_t **pp, const uint8_t *end) {
  const uint8_t *p = *pp;
  if (__builtin_expect(p < end && p[0] < 0x80, 1)) {
    *pp = p + 1;
    return 0;
  }
  uint64_t v;
  return rd_varint_slow(pp, end, &v);
}

__attribute__((cold, noinline)) static int fail_varint(scan_t *sc, enum level lv, const uint8_t *at, int rc,
                                                       const char *what) {
  return fail(sc, lv, at, ": %s %s", rc == -2 ? "varint longer than 10 bytes in" : "truncated", what);
}

typedef struct field {
  uint64_t num;
  unsigned wt;
  const uint8_t *tag;
  const uint8_t *val; /* WT_LEN: the payload */
  size_t len;
} field_t;

/* Reads one field of a message at level lv ending at end, validating tag, wire type and bounds, and advances
 * *pp past it. Returns 0 or -1 with sc->err filled. *f is fully written on every path (val NULL and len 0
 * unless WT_LEN): the error paths return through cold out-of-line functions whose -1 the compiler cannot see,
 * so without it -O3 reports the callers' reads of f as maybe-uninitialized. */
static __attribute__((noinline)) int next_field_any(scan_t *sc, enum level lv, const uint8_t **pp,
                                                    const uint8_t *end, field_t *f) {
  const uint8_t *p = *pp;
  uint64_t t;
  int rc;
  *f = (field_t){.tag = p};
  if ((rc = rd_varint(&p, end, &t))) return fail_varint(sc, lv, f->tag, rc, "field tag");
  if (__builtin_expect(t < 8 || t > 0xffffffffu, 0)) return fail(sc, lv, f->tag, ": invalid field number %llu", (unsigned long long)(t >> 3));
  f->num = t >> 3;
  f->wt = (unsigned)(t & 7);
  switch (f->wt) {
  case WT_VARINT:
    if ((rc = skip_varint(&p, end))) return fail_varint(sc, lv, p, rc, "varint field");
    break;
  case WT_I64:
    if (end - p < 8) return fail_field(sc, lv, f->num, f->tag, "truncated fixed64");
    p += 8;
    break;
  case WT_I32:
    if (end - p < 4) return fail_field(sc, lv, f->num, f->tag, "truncated fixed32");
    p += 4;
    break;
  case WT_LEN: {
    uint64_t len;
    const uint8_t *lp = p;
    if ((rc = rd_varint(&p, end, &len))) return fail_varint(sc, lv, lp, rc, "length");
    if (len > (uint64_t)(end - p)) return fail_len(sc, lv, f->num, lp, len, end);
    f->val = p;
    f->len = (size_t)len;
    p += len;
    break;
  }
  default: return fail_wt(sc, lv, f->num, f->tag, f->wt);
  }
  *pp = p;
  return 0;
}

/* next_field, inline for the usual field: a one-byte tag (field 1..15) of wire type 2 with a length inside end
 * (tags, lengths and checks as next_field_any reads them); anything else goes to next_field_any. */
static inline __attribute__((always_inline)) int next_field(scan_t *sc, enum level lv, const uint8_t **pp,
                                                            const uint8_t *end, field_t *f) {
  const uint8_t *p = *pp, *q = p + 1;
  uint64_t len;
  if (__builtin_expect(p < end && (p[0] & 0x87) == WT_LEN && (p[0] & 0x78) && !rd_varint(&q, end, &len) &&
                           len <= (uint64_t)(end - q), 1)) {
    *f = (field_t){.num = p[0] >> 3, .wt = WT_LEN, .tag = p, .val = q, .len = (size_t)len};
    *pp = q + len;
    return 0;
  }
  return next_field_any(sc, lv, pp, end, f);
}

/* Appends a tag byte (field 1 or 2, wire type 2) and a varint length to out; returns bytes written (<= 11). */
static size_t put_header(uint8_t *out, uint8_t tag, uint64_t len) {
  size_t n = 0;
  out[n++] = tag;
  while (len >= 0x80) {
    out[n++] = (uint8_t)(len | 0x80);
    len >>= 7;
  }
  out[n++] = (uint8_t)len;
  return n;
}

static inline size_t varint_size(uint64_t v) {
  size_t n = 1;
  while (v >= 0x80) {
    v >>= 7;
    n++;
  }
  return n;
}

/* ------------------------------------------------------------------------------------- pass 1: scan */

/* n bytes of scratch, 16-aligned; NULL when out of memory. A heap chunk is at least twice the previous one (or
 * the inline buffer), so a large request takes a few chunks, not one per array growth. */
static void *scratch_alloc(scratch_t *m, size_t n) {
  n = (n + 15) & ~(size_t)15;
  if ((size_t)(m->lim - m->top) < n) {
    size_t sz = m->heap ? 2 * m->heap->size : 4 * (size_t)SCRATCH_INLINE;
    if (sz < n + sizeof(chunk_t) + 16) sz = n + sizeof(chunk_t) + 16;
    chunk_t *c = malloc(sz);
    if (!c) return NULL;
    c->next = m->heap;
    c->size = sz;
    m->heap = c;
    m->top = (uint8_t *)(((uintptr_t)(c + 1) + 15) & ~(uintptr_t)15);
    m->lim = (uint8_t *)c + sz;
  }
  void *p = m->top;
  m->top += n;
  return p;
}

/* Grows the array p of old bytes (the last scratch allocation, or any) to n > old bytes: in place when p is the
 * last allocation and its chunk has room, else copied to new space (the old space stays unused until the call
 * ends: bounded by the geometric growth). */
static void *scratch_grow(scratch_t *m, void *p, size_t old, size_t n) {
  size_t old16 = (old + 15) & ~(size_t)15, n16 = (n + 15) & ~(size_t)15;
  if (p && (uint8_t *)p + old16 == m->top && (size_t)(m->lim - (uint8_t *)p) >= n16) {
    m->top = (uint8_t *)p + n16;
    return p;
  }
  void *q = scratch_alloc(m, n);
  if (q && old) memcpy(q, p, old);
  return q;
}

static void scratch_free(scratch_t *m) {
  for (chunk_t *c = m->heap, *nx; c; c = nx) {
    nx = c->next;
    free(c);
  }
  m->heap = NULL;
}

#define GROW(sc, arr, n, cap)                                                                       \
  do {                                                                                              \
    if ((n) == (cap)) {                                                                             \
      size_t nc_ = (cap) ? (cap) * 2 : 16;                                                          \
      void *np_ = scratch_grow(&(sc)->a->mem, (arr), (cap) * sizeof *(arr), nc_ * sizeof *(arr));   \
      if (!np_) {                                                                                   \
        (sc)->oom = 1;                                                                              \
        return -1;                                                                                  \
      }                                                                                             \
      (arr) = np_;                                                                                  \
      (cap) = nc_;                                                                                  \
    }                                                                                               \
  } while (0)

static const char SERVICE_NAME[] = "service.name";

/* AnyValue: sets *str to its string_value when the last oneof member (protobuf merge semantics) is one. */
static int scan_anyvalue(scan_t *sc, const uint8_t *p, const uint8_t *end, int *last, const uint8_t **str,
                         size_t *slen) {
  field_t f;
  while (p < end) {
    if (next_field(sc, L_ANY, &p, end, &f)) return -1;
    if (f.num == 1) {
      if (f.wt != WT_LEN) return fail_wt(sc, L_ANY, 1, f.tag, f.wt);
      *str = f.val;
      *slen = f.len;
    }
    if (f.num >= 1 && f.num <= 7) *last = (int)f.num;
  }
  return 0;
}

/* KeyValue: returns 1 (service.name found, *svc set), 0 (some other attribute) or -1 (malformed). */
static int scan_kv(scan_t *sc, const uint8_t *p, const uint8_t *end, const uint8_t **svc, size_t *svc_len) {
  const uint8_t *key = NULL, *str = NULL;
  size_t klen = 0, slen = 0;
  int last = 0;
  field_t f;
  while (p < end) {
    if (next_field(sc, L_KV, &p, end, &f)) return -1;
    if (f.num == 1 || f.num == 2) {
      if (f.wt != WT_LEN) return fail_wt(sc, L_KV, f.num, f.tag, f.wt);
      if (f.num == 1) {
        key = f.val;
        klen = f.len;
      } else if (scan_anyvalue(sc, f.val, f.val + f.len, &last, &str, &slen)) {
        return -1;
      }
    }
  }
  if (key && klen == sizeof SERVICE_NAME - 1 && memcmp(key, SERVICE_NAME, klen) == 0 && last == 1) {
    *svc = str;
    *svc_len = slen;
    return 1;
  }
  return 0;
}

/* Resource: finds the first string-valued service.name attribute (once found, later attributes are only
 * skipped); validates the Resource's own fields; by attribute set, adds each attribute's hash to r->attr_sum. */
static int scan_resource(scan_t *sc, res_rec *r, const uint8_t *p, const uint8_t *end) {
  field_t f;
  while (p < end) {
    if (next_field(sc, L_RESOURCE, &p, end, &f)) return -1;
    if (f.num != 1) continue;
    if (f.wt != WT_LEN) return fail_wt(sc, L_RESOURCE, 1, f.tag, f.wt);
    if (sc->mode == M_RES_ATTRS) r->attr_sum += bl_hash(f.val, f.len);
    if (!r->has_svc) {
      const uint8_t *svc = NULL;
      size_t slen = 0;
      int rc = scan_kv(sc, f.val, f.val + f.len, &svc, &slen);
      if (rc < 0) return -1;
      if (rc == 1) {
        r->has_svc = 1;
        r->svc_off = svc ? (uint32_t)(svc - sc->buf) : 0;
        r->svc_len = (uint32_t)slen;
      }
    }
    sc->ai++;
  }
  return 0;
}

static inline void put_le64(uint8_t *o, uint64_t v) {
  for (int i = 0; i < 8; i++) o[i] = (uint8_t)(v >> (8 * i));
}

/* The owner of units routed by the resource (attribute-set key, or service.name, else resource bytes); looked
 * up once per entry. */
static uint32_t resource_owner(scan_t *sc, res_rec *r) {
  if (r->owner == BL_RING_NONE) {
    uint64_t h;
    if (sc->mode == M_RES_ATTRS) {
      uint8_t b[8];
      put_le64(b, r->attr_sum);
      h = bl_hash(b, 8);
    } else {
      h = r->has_svc ? bl_hash(sc->buf + r->svc_off, r->svc_len) : bl_hash(sc->buf + r->rb_off, r->rb_len);
    }
    r->owner = bl_ring_lookup(sc->ring, h);
  }
  return r->owner;
}

/* M_ITEM_METRIC: the owner of an item named name in resource entry r, keyed by hash(P, 0, name) where P is the
 * service.name bytes, else the 8 little-endian bytes of the resource-bytes hash. Returns BL_RING_NONE only when
 * out of memory (sc->oom set). */
static uint32_t metric_owner(scan_t *sc, const res_rec *r, const uint8_t *name, size_t nlen) {
  uint8_t stack[256], rb[8];
  const uint8_t *pre = rb;
  size_t plen = 8;
  if (r->has_svc) {
    pre = sc->buf + r->svc_off;
    plen = r->svc_len;
  } else {
    put_le64(rb, bl_hash(sc->buf + r->rb_off, r->rb_len));
  }
  size_t n = plen + 1 + nlen;
  uint8_t *k = n <= sizeof stack ? stack : malloc(n);
  if (!k) {
    sc->oom = 1;
    return BL_RING_NONE;
  }
  if (plen) memcpy(k, pre, plen);
  k[plen] = 0;
  if (nlen) memcpy(k + plen + 1, name, nlen);
  uint32_t o = bl_ring_lookup(sc->ring, bl_hash(k, n));
  if (k != stack) free(k);
  return o;
}

/* The last field nf (wire type 2) of an item record [p, end) (tag .. end of value) that scan_item accepted:
 * the walk needs no checks beyond staying in bounds. *v is NULL when absent. */
static void item_field(const uint8_t *p, const uint8_t *end, uint32_t nf, const uint8_t **v, size_t *vlen) {
  uint64_t t, len;
  *v = NULL;
  *vlen = 0;
  if (rd_varint(&p, end, &t) || rd_varint(&p, end, &len) || len > (uint64_t)(end - p)) return;
  end = p + len;
  while (p < end) {
    if (rd_varint(&p, end, &t)) return;
    switch (t & 7) {
    case WT_LEN:
      if (rd_varint(&p, end, &len) || len > (uint64_t)(end - p)) return;
      if ((t >> 3) == nf) {
        *v = p;
        *vlen = (size_t)len;
      }
      p += len;
      break;
    case WT_VARINT:
      if (skip_varint(&p, end)) return;
      break;
    case WT_I64: p += 8; break;
    case WT_I32: p += 4; break;
    default: return;
    }
  }
}

/* A data container (Metric.gauge, ...): validates its fields and counts its points (field 1, wire type 2),
 * skipping each by length. */
static __attribute__((noinline)) int count_points(scan_t *sc, uint32_t df, const uint8_t *p, const uint8_t *end,
                                                  uint64_t *n) {
  uint64_t c = 0;
  field_t f;
  sc->df = df;
  sc->pi = 0;
  while (p < end) {
    if (next_field(sc, L_DATA, &p, end, &f)) return -1;
    if (f.num != 1) continue;
    if (f.wt != WT_LEN) return fail_wt(sc, L_DATA, 1, f.tag, f.wt);
    c++;
    sc->pi++;
  }
  *n = c;
  return 0;
}

static inline void note_owner(scan_t *sc, uint32_t o) {
  if (sc->first_owner == BL_RING_NONE) sc->first_owner = o;
  else if (o != sc->first_owner) sc->mixed = 1;
}

/* One item's top-level fields (the hot loop): validates them and returns the last key field (trace_id, or
 * the name with pts) in *key and *klen (*key NULL when absent), and in *w the item's weight: 1, or with pts
 * (a constant at each call site, so each variant compiles on its own) the data points of its last data field. */
static inline __attribute__((always_inline)) int scan_item(scan_t *sc, const uint8_t *p, const uint8_t *end,
                                                           const uint8_t **key, size_t *klen, uint64_t *w,
                                                           const int pts) {
  const uint32_t kf = sc->key_field;
  const uint32_t pf = pts ? sc->shape->item_points : 0;
  const uint8_t *k = NULL;
  size_t kl = 0;
  uint64_t points = 0;
  /* Fast paths for one-byte tags (fields 1..15), the checks of the general path below without its varint loops:
   * kt is the key field's tag when it is one byte (field < 16, wire type 2), else 0 (never a fast-path tag);
   * bit f of len_only: field f < 16 must be of wire type 2 (the key field, data containers), which the general
   * path reports. */
  const uint8_t kt = kf < 16 ? (uint8_t)(kf << 3 | WT_LEN) : 0;
  const uint32_t len_only = (kf < 16 ? 1u << kf : 0) | (pf & 0xffff);
  for (;;) {
    const uint8_t *tag = p;
    if (__builtin_expect(p + 1 < end, 1)) {
      const unsigned tl = ld16le(p); /* the tag byte and the next */
      if (__builtin_expect((tl & 0x8087) != WT_LEN || (tl & 0x78) == 0, 0)) {
        /* Wire types 0 (a one-byte value), 1 and 5 of a field that may have them; the rest: the general path. */
        unsigned f = (tl >> 3) & 15, wt = tl & 7;
        if (!(tl & 0x80) && f && !(len_only >> f & 1)) {
          if (wt == WT_I64 && end - p >= 9) {
            p += 9;
            continue;
          }
          if (wt == WT_I32 && end - p >= 5) {
            p += 5;
            continue;
          }
          if (wt == WT_VARINT && !(tl & 0x8000)) {
            p += 2;
            continue;
          }
        }
      } else {
        /* Wire type 2 with a one-byte length, as most fields have. */
        size_t len = p[1];
        p += 2;
        if (__builtin_expect(len > (size_t)(end - p), 0))
          return fail_len(sc, L_ITEM, (tl >> 3) & 15, tag + 1, len, end);
        if (*tag == kt) {
          if (!pts && len != 16 && len != 0)
            return fail(sc, L_ITEM, tag, ".%s: length %llu (must be 16 or empty)", sc->shape->key_name,
                        (unsigned long long)len);
          k = p;
          kl = len;
        } else if (pts && (pf >> ((tl >> 3) & 15) & 1)) {
          if (count_points(sc, (tl >> 3) & 15, p, p + len, &points)) return -1;
        }
        p += len;
        continue;
      }
    } else if (p >= end) {
      break;
    }
    /* The general path: any tag, length or wire type, and every error. */
    uint64_t t;
    int rc;
    if (__builtin_expect((rc = rd_varint(&p, end, &t)) != 0, 0)) return fail_varint(sc, L_ITEM, tag, rc, "field tag");
    if (__builtin_expect(t < 8 || t > 0xffffffffu, 0))
      return fail(sc, L_ITEM, tag, ": invalid field number %llu", (unsigned long long)(t >> 3));
    uint32_t num = (uint32_t)(t >> 3);
    if ((t & 7) != WT_LEN) {
      switch (t & 7) {
      case WT_VARINT:
        if (__builtin_expect((rc = skip_varint(&p, end)) != 0, 0))
          return fail_varint(sc, L_ITEM, p, rc, "varint field");
        break;
      case WT_I64:
        if (end - p < 8) return fail_field(sc, L_ITEM, num, tag, "truncated fixed64");
        p += 8;
        break;
      case WT_I32:
        if (end - p < 4) return fail_field(sc, L_ITEM, num, tag, "truncated fixed32");
        p += 4;
        break;
      default: return fail_wt(sc, L_ITEM, num, tag, (unsigned)(t & 7));
      }
      if (__builtin_expect(num == kf, 0)) return fail_wt(sc, L_ITEM, num, tag, (unsigned)(t & 7));
      if (pts && num < 32 && (pf >> num & 1)) return fail_wt(sc, L_ITEM, num, tag, (unsigned)(t & 7));
      continue;
    }
    const uint8_t *lp = p;
    uint64_t len;
    if (__builtin_expect((rc = rd_varint(&p, end, &len)) != 0, 0)) return fail_varint(sc, L_ITEM, lp, rc, "length");
    if (__builtin_expect(len > (uint64_t)(end - p), 0)) return fail_len(sc, L_ITEM, num, lp, len, end);
    if (num == kf) {
      if (!pts && len != 16 && len != 0)
        return fail(sc, L_ITEM, tag, ".%s: length %llu (must be 16 or empty)", sc->shape->key_name,
                    (unsigned long long)len);
      k = p;
      kl = (size_t)len;
    } else if (pts && num < 32 && (pf >> num & 1)) {
      /* Oneof: the last data field is the metric's data, alone (as protobuf-c decodes it). */
      if (count_points(sc, num, p, p + len, &points)) return -1;
    }
    p += len;
  }
  *key = k;
  *klen = kl;
  *w = pts ? points : 1;
  return 0;
}

static inline int all_zero16(const uint8_t *k) {
  uint64_t a, b;
  memcpy(&a, k, 8);
  memcpy(&b, k + 8, 8);
  return (a | b) == 0;
}

/* The ring owner of a trace id, through the split's cache (a slot per few bits of the id: ids are random, and
 * legacy 64-bit ids have 8 zero bytes, so both halves are mixed in). */
static inline uint32_t tid_owner(scan_t *sc, const uint8_t *key) {
  uint64_t lo, hi;
  memcpy(&lo, key, 8);
  memcpy(&hi, key + 8, 8);
  uint64_t x = lo ^ hi;
  unsigned i = (unsigned)((x ^ (x >> 29) ^ (x >> 47)) & (TID_CACHE - 1));
  tid_slot *t = &sc->tid[i];
  if (sc->tid_valid >> i & 1 && memcmp(t->id, key, 16) == 0) return t->owner;
  uint32_t o = bl_ring_lookup(sc->ring, bl_hash(key, 16));
  memcpy(t->id, key, 16);
  t->owner = o;
  sc->tid_valid |= (uint64_t)1 << i;
  return o;
}

/* Scope entry: records it and its units (item modes), or only counts items (whole-entry modes). */
static int scan_scope(scan_t *sc, size_t ridx, const uint8_t *tag, const uint8_t *p, const uint8_t *end) {
  arena_t *a = sc->a;
  const enum mode mode = sc->mode;
  const int by_unit = mode <= M_ITEM_METRIC;
  const int pts = sc->shape->item_points != 0;
  size_t sidx = a->n_scopes;
  if (by_unit) {
    GROW(sc, a->scopes, a->n_scopes, a->cap_scopes);
    scope_rec *s = &a->scopes[a->n_scopes++];
    memset(s, 0, sizeof *s);
    s->start = (uint32_t)(tag - sc->buf);
    s->cstart = (uint32_t)(p - sc->buf);
    s->end = (uint32_t)(end - sc->buf);
    s->first_unit = (uint32_t)a->n_units;
  }
  uint32_t n_other = 0, n_recs = 0;
  uint64_t n_items = 0;
  sc->ii = 0;
  while (p < end) {
    const uint8_t *rec = p, *val;
    size_t vlen;
    uint64_t l;
    const uint8_t *q = p + 1;
    if (__builtin_expect(p[0] == 0x12 && !rd_varint(&q, end, &l) && l <= (uint64_t)(end - q), 1)) {
      /* An item record (field 2, wire type 2) whose length fits: what next_field would accept, more cheaply. */
      val = q;
      vlen = (size_t)l;
      p = q + l;
    } else {
      field_t f;
      if (next_field(sc, L_SCOPE, &p, end, &f)) return -1;
      if (f.num > 3) {
        n_other++;
        continue;
      }
      if (f.wt != WT_LEN) return fail_wt(sc, L_SCOPE, f.num, f.tag, f.wt);
      if (f.num != 2) {
        n_other++;
        continue;
      }
      val = f.val;
      vlen = f.len;
    }
    const uint8_t *key = NULL;
    size_t klen = 0;
    uint64_t w;
    if (pts ? scan_item(sc, val, val + vlen, &key, &klen, &w, 1) : scan_item(sc, val, val + vlen, &key, &klen, &w, 0))
      return -1;
    n_items += w;
    n_recs++;
    sc->ii++;
    if (!by_unit) continue;
    uint32_t owner;
    if (mode == M_ITEM_TRACE && klen == 16 && !all_zero16(key)) {
      owner = tid_owner(sc, key);
      note_owner(sc, owner);
    } else if (mode == M_ITEM_METRIC && a->res[ridx].has_svc) {
      /* The first service.name is final: no need to wait for the end of the entry. */
      owner = metric_owner(sc, &a->res[ridx], key, klen);
      if (owner == BL_RING_NONE) return -1;
      note_owner(sc, owner);
    } else {
      owner = BL_RING_NONE; /* resolved at the end of the resource entry */
      a->res[ridx].pending = 1;
    }
    GROW(sc, a->units, a->n_units, a->cap_units);
    unit_t *u = &a->units[a->n_units++];
    u->start = (uint32_t)(rec - sc->buf);
    u->end = (uint32_t)(p - sc->buf);
    u->owner = owner;
    u->items = (uint32_t)w; /* < 2^32: each point takes >= 2 bytes of a request < 4 GiB */
  }
  sc->items += n_items;
  a->res[ridx].items += n_items;
  a->res[ridx].units += n_recs;
  if (by_unit) {
    scope_rec *s = &a->scopes[sidx];
    s->n_units = (uint32_t)(a->n_units - s->first_unit);
    s->n_other = n_other;
  }
  return 0;
}

/* Resource entry. Units without a usable trace_id are routed by the resource, whose field may come after the
 * scope entries: they are recorded as pending (BL_RING_NONE) and resolved once the entry is walked. */
static int scan_res_entry(scan_t *sc, const uint8_t *tag, const uint8_t *p, const uint8_t *end) {
  arena_t *a = sc->a;
  GROW(sc, a->res, a->n_res, a->cap_res);
  size_t ridx = a->n_res++;
  res_rec *r = &a->res[ridx];
  memset(r, 0, sizeof *r);
  r->start = (uint32_t)(tag - sc->buf);
  r->cstart = (uint32_t)(p - sc->buf);
  r->end = (uint32_t)(end - sc->buf);
  r->first_scope = (uint32_t)a->n_scopes;
  r->owner = BL_RING_NONE;
  r->rb_off = r->cstart; /* no resource field: hash of zero bytes */
  size_t first_unit = a->n_units;
  uint32_t n_other = 0;
  sc->ai = 0;
  sc->si = 0;
  while (p < end) {
    field_t f;
    if (next_field(sc, L_RES, &p, end, &f)) return -1;
    if (f.num > 3) {
      n_other++;
      continue;
    }
    if (f.wt != WT_LEN) return fail_wt(sc, L_RES, f.num, f.tag, f.wt);
    if (f.num == 2) {
      if (scan_scope(sc, ridx, f.tag, f.val, f.val + f.len)) return -1;
      sc->si++;
    } else if (f.num == 1) {
      /* Several resource fields merge: service.name is the first across them, the hashed bytes the last. */
      if (scan_resource(sc, &a->res[ridx], f.val, f.val + f.len)) return -1;
      a->res[ridx].rb_off = (uint32_t)(f.val - sc->buf);
      a->res[ridx].rb_len = (uint32_t)f.len;
      n_other++;
    } else {
      n_other++;
    }
  }
  r = &a->res[ridx];
  r->n_scopes = (uint32_t)(a->n_scopes - r->first_scope);
  r->n_other = n_other;
  if (sc->mode >= M_RES_SERVICE) {
    if (r->units > 0) note_owner(sc, resource_owner(sc, r));
  } else if (r->pending && sc->mode == M_ITEM_METRIC) {
    for (size_t i = first_unit; i < a->n_units; i++) {
      unit_t *u = &a->units[i];
      if (u->owner != BL_RING_NONE) continue;
      const uint8_t *name;
      size_t nlen;
      item_field(sc->buf + u->start, sc->buf + u->end, sc->key_field, &name, &nlen);
      u->owner = metric_owner(sc, r, name, nlen);
      if (u->owner == BL_RING_NONE) return -1;
      note_owner(sc, u->owner);
    }
  } else if (r->pending) {
    uint32_t o = resource_owner(sc, r);
    note_owner(sc, o);
    for (size_t i = first_unit; i < a->n_units; i++)
      if (a->units[i].owner == BL_RING_NONE) a->units[i].owner = o;
  }
  return 0;
}

static int scan_request(scan_t *sc, const uint8_t *p, const uint8_t *end, uint32_t *n_other) {
  while (p < end) {
    field_t f;
    if (next_field(sc, L_REQ, &p, end, &f)) return -1;
    if (f.num != 1) {
      (*n_other)++;
      continue;
    }
    if (f.wt != WT_LEN) return fail_wt(sc, L_REQ, 1, f.tag, f.wt);
    if (scan_res_entry(sc, f.tag, f.val, f.val + f.len)) return -1;
    sc->ri++;
  }
  return 0;
}

/* ------------------------------------------------------------------------------ pass 2: envelope sizes */

/* Item modes: one emit per (scope entry, part) and per (resource entry, part) that has units; sizes every
 * envelope and part, counts each part's items, and bounds its iovec count (before coalescing).
 * Why the bound holds for every input: fill gives a part one slice per unit it owns, one header per envelope
 * emitted to it, and gap slices of envelopes emitted to it. A message's content is a sequence of whole field
 * records; the children (units, scope entries, resource entries) are records of it, so every non-empty gap is
 * one or more whole non-child fields, and gaps are disjoint: an envelope has at most n_other non-empty gaps
 * (its non-child fields; the request: top_other). So per emit 1 + n_other, per unit 1, per target top_other
 * (+1 spare), as counted here, in count_resources and in bl_split; coalescing only lowers the count. */
static int count_units(scan_t *sc, size_t len) {
  arena_t *a = sc->a;
  bl_part_t *parts = a->parts;
  a->emits = scratch_alloc(&a->mem, 2 * a->n_units * sizeof *a->emits);
  if (!a->emits) return -2;
  size_t ne = 0, hdr = 0;
  uint64_t res_bytes = 0;
  for (size_t ri = 0; ri < a->n_res; ri++) {
    res_rec *r = &a->res[ri];
    res_bytes += r->end - r->start;
    uint32_t nr = 0;
    uint64_t scope_bytes = 0;
    for (size_t si = r->first_scope; si < (size_t)r->first_scope + r->n_scopes; si++) {
      scope_rec *s = &a->scopes[si];
      scope_bytes += s->end - s->start;
      if (!s->n_units) continue;
      uint32_t ns = 0;
      uint64_t unit_bytes = 0;
      for (const unit_t *u = &a->units[s->first_unit], *ue = u + s->n_units; u < ue; u++) {
        uint32_t b = u->owner, ul = u->end - u->start;
        unit_bytes += ul;
        if (a->stamp_s[b] != si + 1) {
          a->stamp_s[b] = (uint32_t)si + 1;
          a->acc_s[b] = 0;
          a->list_s[ns++] = b;
        }
        a->acc_s[b] += ul;
        parts[b].items += u->items;
        a->iov_cap[b]++;
      }
      uint64_t gaps = (uint64_t)(s->end - s->cstart) - unit_bytes;
      s->first_emit = (uint32_t)ne;
      s->n_emits = ns;
      for (uint32_t k = 0; k < ns; k++) {
        uint32_t b = a->list_s[k];
        uint64_t clen = gaps + a->acc_s[b];
        a->emits[ne++] = (emit_t){b, (uint32_t)clen};
        hdr += 1 + varint_size(clen);
        a->iov_cap[b] += 1 + s->n_other;
        if (a->stamp_r[b] != ri + 1) {
          a->stamp_r[b] = (uint32_t)ri + 1;
          a->acc_r[b] = 0;
          a->list_r[nr++] = b;
        }
        a->acc_r[b] += 1 + varint_size(clen) + clen;
      }
    }
    uint64_t gaps = (uint64_t)(r->end - r->cstart) - scope_bytes;
    r->first_emit = (uint32_t)ne;
    r->n_emits = nr;
    for (uint32_t k = 0; k < nr; k++) {
      uint32_t b = a->list_r[k];
      uint64_t clen = gaps + a->acc_r[b];
      a->emits[ne++] = (emit_t){b, (uint32_t)clen};
      hdr += 1 + varint_size(clen);
      parts[b].len += 1 + varint_size(clen) + clen;
      a->iov_cap[b] += 1 + r->n_other;
    }
  }
  a->n_emits = ne;
  a->hdr_bytes = hdr;
  a->top_gaps = len - res_bytes;
  return 0;
}

/* Whole-entry modes: one slice per entry that has item records. */
static void count_resources(scan_t *sc, size_t len) {
  arena_t *a = sc->a;
  uint64_t res_bytes = 0;
  for (size_t ri = 0; ri < a->n_res; ri++) {
    const res_rec *r = &a->res[ri];
    res_bytes += r->end - r->start;
    if (!r->units) continue;
    a->parts[r->owner].len += r->end - r->start;
    a->parts[r->owner].items += r->items;
    a->iov_cap[r->owner] += 1;
  }
  a->n_emits = 0;
  a->top_gaps = len - res_bytes;
}

/* ---------------------------------------------------------------------------------- pass 3: iovecs */

/* Appends a slice to part b, merged into the previous iovec when the bytes are adjacent. Never writes past the
 * iov_cap[b] iovecs pass 2 sized for the part: a slice that would not fit sets a->overflow instead, and
 * bl_split refuses the split. The bound cannot be exceeded by any input (why: at count_units), so this is a
 * guard against a future counting mistake, kept in every build (an assert would vanish under -DNDEBUG and
 * would only run after the write past the array). */
static inline void put(arena_t *a, uint32_t b, const uint8_t *base, size_t n) {
  if (!n) return;
  bl_part_t *pt = &a->out_parts[b];
  if (pt->n_iov) {
    struct iovec *l = &pt->iov[pt->n_iov - 1];
    if ((const uint8_t *)l->iov_base + l->iov_len == base) {
      l->iov_len += n;
      return;
    }
  }
  if (__builtin_expect(pt->n_iov >= a->iov_cap[b], 0)) {
    a->overflow = 1;
    return;
  }
  pt->iov[pt->n_iov++] = (struct iovec){(void *)base, n};
}

static inline void put_emits(arena_t *a, const emit_t *e, uint32_t ne, const uint8_t *base, size_t n) {
  if (!n) return;
  for (uint32_t k = 0; k < ne; k++) put(a, e[k].part, base, n);
}

static uint8_t *put_headers(arena_t *a, const emit_t *e, uint32_t ne, uint8_t tag, uint8_t *h) {
  for (uint32_t k = 0; k < ne; k++) {
    size_t n = put_header(h, tag, e[k].clen);
    put(a, e[k].part, h, n);
    h += n;
  }
  return h;
}

static void fill(scan_t *sc, size_t len, uint32_t nt) {
  arena_t *a = sc->a;
  const uint8_t *buf = sc->buf;
  const emit_t *all = a->targets_emit;
  uint8_t *h = a->hdr;
  uint32_t prev = 0;
  for (size_t ri = 0; ri < a->n_res; ri++) {
    const res_rec *r = &a->res[ri];
    put_emits(a, all, nt, buf + prev, r->start - prev);
    prev = r->end;
    if (sc->mode >= M_RES_SERVICE) {
      if (r->units) put(a, r->owner, buf + r->start, r->end - r->start);
      continue;
    }
    if (!r->n_emits) continue;
    const emit_t *er = &a->emits[r->first_emit];
    h = put_headers(a, er, r->n_emits, 0x0a, h);
    uint32_t pr = r->cstart;
    for (size_t si = r->first_scope; si < (size_t)r->first_scope + r->n_scopes; si++) {
      const scope_rec *s = &a->scopes[si];
      put_emits(a, er, r->n_emits, buf + pr, s->start - pr);
      pr = s->end;
      if (!s->n_units) continue;
      const emit_t *es = &a->emits[s->first_emit];
      h = put_headers(a, es, s->n_emits, 0x12, h);
      uint32_t ps = s->cstart;
      for (const unit_t *u = &a->units[s->first_unit], *ue = u + s->n_units; u < ue; u++) {
        put_emits(a, es, s->n_emits, buf + ps, u->start - ps);
        put(a, u->owner, buf + u->start, u->end - u->start);
        ps = u->end;
      }
      put_emits(a, es, s->n_emits, buf + ps, s->end - ps);
    }
    put_emits(a, er, r->n_emits, buf + pr, r->end - pr);
  }
  put_emits(a, all, nt, buf + prev, len - prev);
}

/* ------------------------------------------------------------------------------------------ public */

static enum mode mode_of(const bl_shape_t *shape, bl_route_t route) {
  if (shape->route_resource) {
    if (route == BL_ROUTE_METRIC && shape->item_name_field) return M_ITEM_METRIC;
    if (route == BL_ROUTE_RESOURCE) return M_RES_ATTRS;
    return M_RES_SERVICE; /* SERVICE, and TRACE_ID (no trace_id in these items) */
  }
  if (route == BL_ROUTE_TRACE_ID && shape->item_key_field) return M_ITEM_TRACE;
  return M_ITEM_SERVICE; /* SERVICE, and RESOURCE / METRIC, which mean nothing for these items */
}

void bl_split_dispose(bl_split_t *s) {
  if (!s) return;
  free(s->arena);
  memset(s, 0, sizeof *s);
}

/* Carves the per-part scratch and the first record arrays out of the scratch (in the inline buffer unless the
 * ring or the request is large), units last: the unit array then grows in place to the end of its chunk. Item
 * records are a few hundred bytes: len / 256 units to start with, not the worst case (a unit is >= 2 bytes). */
static int arena_init(arena_t *a, size_t np, size_t len) {
  size_t per_part = sizeof(bl_part_t) + 2 * sizeof(uint64_t) + 6 * sizeof(uint32_t) + sizeof(emit_t);
  uint8_t *p = scratch_alloc(&a->mem, np * per_part);
  if (!p) return -1;
  a->parts = (bl_part_t *)p;
  a->acc_s = (uint64_t *)(a->parts + np);
  a->acc_r = a->acc_s + np;
  a->stamp_s = (uint32_t *)(a->acc_r + np);
  a->stamp_r = a->stamp_s + np;
  a->list_s = a->stamp_r + np;
  a->list_r = a->list_s + np;
  a->targets = a->list_r + np;
  a->iov_cap = a->targets + np;
  a->targets_emit = (emit_t *)(a->iov_cap + np);
  /* Read before written: the parts' sums, the stamps and the iovec bounds. */
  memset(a->parts, 0, np * sizeof *a->parts);
  memset(a->stamp_s, 0, 2 * np * sizeof *a->stamp_s);
  memset(a->iov_cap, 0, np * sizeof *a->iov_cap);
  a->cap_scopes = a->cap_res = 8;
  a->scopes = scratch_alloc(&a->mem, a->cap_scopes * sizeof *a->scopes);
  a->res = scratch_alloc(&a->mem, a->cap_res * sizeof *a->res);
  a->cap_units = len / 256 + 16;
  a->units = scratch_alloc(&a->mem, a->cap_units * sizeof *a->units);
  return a->scopes && a->res && a->units ? 0 : -1;
}

int bl_split(const bl_shape_t *shape, bl_route_t route, const uint8_t *buf, size_t len, const bl_ring_t *ring,
             bl_split_t *out, bl_error_t *err) {
  memset(out, 0, sizeof *out);
  err->offset = 0;
  err->msg[0] = '\0';
  size_t np = ring ? bl_ring_size(ring) : 0;
  if (np == 0) {
    snprintf(err->msg, sizeof err->msg, "%s: no backend to split over", shape->name);
    return -1;
  }
  if (len > UINT32_MAX - 1) {
    snprintf(err->msg, sizeof err->msg, "%s: request of %zu bytes is too large to split", shape->name, len);
    return -1;
  }
  _Alignas(16) uint8_t inline_mem[SCRATCH_INLINE];
  arena_t arena = {.mem = {.top = inline_mem, .lim = inline_mem + sizeof inline_mem}};
  arena_t *a = &arena;
  int rc = -2;
  if (arena_init(a, np, len)) goto fail;
  tid_slot tid[TID_CACHE];
  scan_t sc = {.shape = shape, .mode = mode_of(shape, route), .buf = buf, .ring = ring, .a = a, .err = err,
               .key_field = shape->item_key_field ? shape->item_key_field : shape->item_name_field,
               .first_owner = BL_RING_NONE, .tid = tid};
  uint32_t top_other = 0;
  if (len && scan_request(&sc, buf, buf + len, &top_other)) {
    rc = sc.oom ? -2 : -1;
    goto fail;
  }
  out->n_parts = np;
  out->items = sc.items;
  out->resources = a->n_res;
  if (!sc.mixed) { /* no units (nothing to send), or one target and the whole body */
    result_t *r = malloc(sizeof *r + np * sizeof(bl_part_t));
    if (!r) goto fail;
    memset(r->parts, 0, np * sizeof(bl_part_t));
    if (sc.first_owner != BL_RING_NONE) {
      bl_part_t *pt = &r->parts[sc.first_owner];
      r->one = (struct iovec){(void *)buf, len};
      *pt = (bl_part_t){.iov = &r->one, .n_iov = 1, .len = len, .items = sc.items};
      out->n_targets = 1;
      out->single_target = sc.first_owner;
    }
    scratch_free(&a->mem);
    out->arena = r;
    out->parts = r->parts;
    return 0;
  }

  if (sc.mode >= M_RES_SERVICE) count_resources(&sc, len);
  else if (count_units(&sc, len)) goto fail;
  uint32_t nt = 0;
  size_t total_iov = 0;
  for (uint32_t b = 0; b < np; b++) {
    if (!a->parts[b].len) continue; /* not items: a part of point-less metrics is still a part */
    a->targets[nt] = b;
    a->targets_emit[nt++] = (emit_t){b, 0};
    a->parts[b].len += a->top_gaps;
    a->iov_cap[b] += top_other + 1;
    total_iov += a->iov_cap[b];
  }
  result_t *r = malloc(sizeof *r + np * sizeof(bl_part_t) + total_iov * sizeof(struct iovec) + a->hdr_bytes);
  if (!r) goto fail;
  memcpy(r->parts, a->parts, np * sizeof *a->parts);
  struct iovec *iov = (struct iovec *)(r->parts + np);
  a->hdr = (uint8_t *)(iov + total_iov);
  for (uint32_t k = 0; k < nt; k++) {
    r->parts[a->targets[k]].iov = iov;
    iov += a->iov_cap[a->targets[k]];
  }
  a->out_parts = r->parts;
  out->arena = r;
  out->parts = r->parts;
  fill(&sc, len, nt);
  uint32_t first = a->targets[0];
  scratch_free(&a->mem);
  if (a->overflow) {
    snprintf(err->msg, sizeof err->msg,
             "%s: internal error: a part needs more iovecs than were counted for it; request refused", shape->name);
    bl_split_dispose(out);
    return -3;
  }
  out->n_targets = nt;
  out->single_target = first;
  return 0;
fail:
  scratch_free(&a->mem);
  memset(out, 0, sizeof *out);
  return rc;
}
