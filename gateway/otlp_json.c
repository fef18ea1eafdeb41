/*
 * gateway/otlp_json — see otlp_json.h for the contract.
 *
 * json-c parses the body into a tree (its tokener is iterative and depth-limited). One walk then fills a
 * protobuf-c message tree, driven only by the descriptors: each JSON key is mapped to its field by converting
 * lowerCamelCase to snake_case (which leaves proto names as they are) and a binary search over the descriptor's
 * fields sorted by name. Messages, arrays and decoded bytes live in one arena freed at the end; strings point
 * into the json-c tree, which outlives the pack. Nothing is freed field by field, so no error path can leak.
 *
 * Why the raw-text scan: json-c saturates integer literals outside [INT64_MIN, UINT64_MAX] to those bounds.
 * When a field reads exactly a bound, the body is scanned once for an out-of-range integer literal, and if it
 * holds one the field is refused, so a saturated value is never taken as exact.
 */
#include "gateway/otlp_json.h"

#include <float.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>

#include "opentelemetry/proto/collector/logs/v1/logs_service.pb-c.h"
#include "opentelemetry/proto/collector/metrics/v1/metrics_service.pb-c.h"
#include "opentelemetry/proto/collector/trace/v1/trace_service.pb-c.h"

static const ProtobufCMessageDescriptor *const oj__requests[3] = {
    &opentelemetry__proto__collector__trace__v1__export_trace_service_request__descriptor,
    &opentelemetry__proto__collector__logs__v1__export_logs_service_request__descriptor,
    &opentelemetry__proto__collector__metrics__v1__export_metrics_service_request__descriptor,
};

/* ---------------------------------------------------------------------------------------------- arena */

typedef struct oj__chunk {
  struct oj__chunk *next;
  size_t used, cap;
  _Alignas(16) unsigned char data[];
} oj__chunk;

typedef struct oj__arena {
  oj__chunk *head;
  size_t next_cap;
} oj__arena;

/* n zeroed bytes aligned to 16, or NULL when out of memory. Chunks grow 4 KiB .. 1 MiB; big blocks get their own. */
static void *oj__alloc(oj__arena *a, size_t n) {
  n = (n + 15) & ~(size_t)15;
  if (!a->head || a->head->cap - a->head->used < n) {
    size_t cap = a->next_cap ? a->next_cap : 4096;
    if (cap < n) cap = n;
    if (n > SIZE_MAX / 2 - sizeof(oj__chunk)) return NULL;
    oj__chunk *c = malloc(sizeof(*c) + cap);
    if (!c) return NULL;
    c->next = a->head;
    c->used = 0;
    c->cap = cap;
    a->head = c;
    if (a->next_cap < (1u << 20)) a->next_cap = a->next_cap ? a->next_cap * 2 : 8192;
  }
  void *p = a->head->data + a->head->used;
  a->head->used += n;
  memset(p, 0, n);
  return p;
}

static void oj__arena_free(oj__arena *a) {
  while (a->head) {
    oj__chunk *next = a->head->next;
    free(a->head);
    a->head = next;
  }
}

/* ---------------------------------------------------------------------------------------------- context */

/* One path segment: a field key as the client wrote it, or an array index (key NULL). */
typedef struct oj__seg {
  const char *key;
  size_t idx;
} oj__seg;

typedef struct oj__ctx {
  oj__arena arena;
  const char *json; /* the raw body, for the out-of-range scan */
  size_t len;
  int range_scan;   /* 0 not yet, 1 body clean, 2 body has an out-of-range integer literal */
  int any_depth;
  size_t n_seg;     /* may exceed the array: deeper segments are not recorded (cannot happen within the depth limit) */
  oj__seg seg[OJ_MAX_JSON_DEPTH + 4];
  char *err;
  size_t errlen;
} oj__ctx;

static void oj__push_key(oj__ctx *c, const char *key) {
  if (c->n_seg < sizeof(c->seg) / sizeof(c->seg[0])) c->seg[c->n_seg] = (oj__seg){key, 0};
  c->n_seg++;
}

static void oj__push_idx(oj__ctx *c, size_t i) {
  if (c->n_seg < sizeof(c->seg) / sizeof(c->seg[0])) c->seg[c->n_seg] = (oj__seg){NULL, i};
  c->n_seg++;
}

static void oj__pop(oj__ctx *c) { c->n_seg--; }

/* Segment i as text ("resourceSpans", ".spans", "[3]") into buf; returns its length. */
static size_t oj__seg_text(const oj__ctx *c, size_t i, char *buf, size_t cap) {
  int w = c->seg[i].key ? snprintf(buf, cap, "%s%s", i ? "." : "", c->seg[i].key)
                        : snprintf(buf, cap, "[%zu]", c->seg[i].idx);
  return w > 0 ? (size_t)w : 0;
}

/*
 * Writes "path: message" into the error buffer and returns -1. When the whole line does not fit, the middle of
 * the path gives way ("resourceLogs[0].scopeLogs[0]...values[0].arrayValue: ...") so the message survives.
 */
static int oj__fail(oj__ctx *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int oj__fail(oj__ctx *c, const char *fmt, ...) {
  if (!c->err || !c->errlen) return -1;
  char msg[160], seg[96];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  size_t n = c->n_seg < sizeof(c->seg) / sizeof(c->seg[0]) ? c->n_seg : sizeof(c->seg) / sizeof(c->seg[0]);
  size_t total = 0;
  for (size_t i = 0; i < n; i++) total += oj__seg_text(c, i, seg, sizeof seg);
  size_t room = c->errlen - 1, mlen = strlen(msg) + 2;
  size_t budget = room > mlen ? room - mlen : 0; /* for the path */
  size_t pos = 0, head = n, tail = n;          /* segments [0, head) and [tail, n) are printed */
  if (total > budget) {
    size_t used = 0, half = budget > 3 ? (budget - 3) / 2 : 0;
    head = 0;
    while (head < n && used + oj__seg_text(c, head, seg, sizeof seg) <= half) used += oj__seg_text(c, head++, seg, sizeof seg);
    size_t left = budget > 3 + used ? budget - 3 - used : 0;
    used = 0;
    while (tail > head && used + oj__seg_text(c, tail - 1, seg, sizeof seg) <= left)
      used += oj__seg_text(c, --tail, seg, sizeof seg);
  }
  for (size_t i = 0; i < n && pos < c->errlen; i++) {
    if (i == head && head < tail) {
      pos += (size_t)snprintf(c->err + pos, c->errlen - pos, "...");
      i = tail - 1;
      continue;
    }
    oj__seg_text(c, i, seg, sizeof seg);
    pos += (size_t)snprintf(c->err + pos, c->errlen - pos, "%s", seg);
  }
  if (pos < c->errlen) snprintf(c->err + pos, c->errlen - pos, "%s%s", n ? ": " : "top level: ", msg);
  return -1;
}

static int oj__oom(oj__ctx *c) {
  if (c->err && c->errlen) snprintf(c->err, c->errlen, "out of memory");
  return -2;
}

static const char *oj__type_name(json_type t) {
  switch (t) {
    case json_type_null: return "null";
    case json_type_boolean: return "boolean";
    case json_type_double:
    case json_type_int: return "number";
    case json_type_object: return "object";
    case json_type_array: return "array";
    case json_type_string: return "string";
  }
  return "?";
}

static int oj__want(oj__ctx *c, json_object *v, const char *what) {
  return oj__fail(c, "expected %s, got %s", what, oj__type_name(json_object_get_type(v)));
}

/* The start of a client string for an error message: printable ASCII only (err stays one clean line). */
static const char *oj__quote(char out[32], const char *s, size_t n) {
  size_t k = 0;
  for (; k < n && k < 24; k++) out[k] = s[k] >= 0x20 && s[k] < 0x7f ? s[k] : '?';
  if (k < n) out[k++] = '.', out[k++] = '.', out[k++] = '.';
  out[k] = '\0';
  return out;
}

/* ---------------------------------------------------------------------------------------------- integers */

/* An integer as sign and magnitude: every value of every 64-bit type fits. */
typedef struct oj__int {
  bool neg;
  uint64_t mag;
} oj__int;

/* True when the raw body holds an integer literal (outside strings) below INT64_MIN or above UINT64_MAX. */
static bool oj__has_out_of_range_literal(const char *s, size_t n) {
  size_t i = 0;
  while (i < n) {
    char ch = s[i];
    if (ch == '"' || ch == '\'') { /* json-c also takes single-quoted strings */
      for (i++; i < n && s[i] != ch; i++)
        if (s[i] == '\\') i++;
      i++;
      continue;
    }
    if (ch != '-' && (ch < '0' || ch > '9')) {
      i++;
      continue;
    }
    bool neg = ch == '-';
    if (neg) i++;
    size_t d0 = i;
    while (i < n && s[i] >= '0' && s[i] <= '9') i++;
    size_t digits = i - d0;
    if (i < n && (s[i] == '.' || s[i] == 'e' || s[i] == 'E')) { /* a double: json-c keeps those as doubles */
      i++;
      while (i < n && ((s[i] >= '0' && s[i] <= '9') || s[i] == '+' || s[i] == '-' || s[i] == 'e' || s[i] == 'E'))
        i++;
      continue;
    }
    while (digits > 1 && s[d0] == '0') d0++, digits--; /* strict JSON has no leading zeros; be safe anyway */
    const char *bound = neg ? "9223372036854775808" : "18446744073709551615";
    size_t blen = strlen(bound);
    if (digits > blen || (digits == blen && memcmp(s + d0, bound, blen) > 0)) return true;
  }
  return false;
}

/* The exact value of a JSON number for an integer field; -1 (with err) for fractions and non-finite numbers. */
static int oj__number_int(oj__ctx *c, json_object *v, oj__int *out) {
  if (json_object_get_type(v) == json_type_int) {
    int64_t i = json_object_get_int64(v);
    if (i < 0) *out = (oj__int){true, (uint64_t)0 - (uint64_t)i};
    else *out = (oj__int){false, json_object_get_uint64(v)};
    if (i == INT64_MIN || out->mag == UINT64_MAX) { /* maybe saturated by json-c: look at the literals */
      if (!c->range_scan) c->range_scan = oj__has_out_of_range_literal(c->json, c->len) ? 2 : 1;
      if (c->range_scan == 2) return oj__fail(c, "integer out of 64-bit range");
    }
    return 0;
  }
  double d = json_object_get_double(v);
  if (!isfinite(d)) return oj__fail(c, "expected a finite number");
  if (d != trunc(d)) return oj__fail(c, "expected an integer, got a fractional number");
  if (fabs(d) >= 18446744073709551616.0) return oj__fail(c, "integer out of 64-bit range");
  *out = d < 0 ? (oj__int){true, (uint64_t)-d} : (oj__int){false, (uint64_t)d};
  return 0;
}

/* A decimal integer string: -?[0-9]+, exact to 64 bits. */
static int oj__string_int(oj__ctx *c, const char *s, size_t n, oj__int *out) {
  size_t i = 0;
  out->neg = n > 0 && s[0] == '-';
  if (out->neg) i++;
  char q[32];
  if (i == n) return oj__fail(c, "expected an integer, got the string \"%s\"", oj__quote(q, s, n));
  uint64_t v = 0;
  for (; i < n; i++) {
    if (s[i] < '0' || s[i] > '9')
      return oj__fail(c, "expected an integer, got the string \"%s\"", oj__quote(q, s, n));
    unsigned d = (unsigned)(s[i] - '0');
    if (v > (UINT64_MAX - d) / 10) return oj__fail(c, "integer out of 64-bit range");
    v = v * 10 + d;
  }
  out->mag = v;
  return 0;
}

/* A JSON number or decimal string as an exact integer. */
static int oj__read_int(oj__ctx *c, json_object *v, oj__int *out) {
  json_type t = json_object_get_type(v);
  if (t == json_type_int || t == json_type_double) return oj__number_int(c, v, out);
  if (t == json_type_string) return oj__string_int(c, json_object_get_string(v), (size_t)json_object_get_string_len(v), out);
  return oj__want(c, v, "an integer");
}

/* Range check of x against a signed type of the given bit width (32 or 64); *out is the value. */
static int oj__signed(oj__ctx *c, oj__int x, int bits, int64_t *out) {
  uint64_t pos_max = bits == 32 ? INT32_MAX : INT64_MAX;
  if (x.neg ? x.mag > pos_max + 1 : x.mag > pos_max)
    return oj__fail(c, "integer out of range for int%d", bits);
  *out = x.neg ? (int64_t)(0 - x.mag) : (int64_t)x.mag;
  return 0;
}

static int oj__unsigned(oj__ctx *c, oj__int x, int bits, uint64_t *out) {
  if ((x.neg && x.mag) || (bits == 32 && x.mag > UINT32_MAX))
    return oj__fail(c, "integer out of range for uint%d", bits);
  *out = x.mag;
  return 0;
}

/* ---------------------------------------------------------------------------------------------- floats */

/* True when s[0..n) is a JSON number (RFC 8259 grammar). */
static bool oj__is_json_number(const char *s, size_t n) {
  size_t i = 0;
  if (i < n && s[i] == '-') i++;
  if (i >= n) return false;
  if (s[i] == '0') i++;
  else if (s[i] >= '1' && s[i] <= '9') while (i < n && s[i] >= '0' && s[i] <= '9') i++;
  else return false;
  if (i < n && s[i] == '.') {
    size_t d = ++i;
    while (i < n && s[i] >= '0' && s[i] <= '9') i++;
    if (i == d) return false;
  }
  if (i < n && (s[i] == 'e' || s[i] == 'E')) {
    i++;
    if (i < n && (s[i] == '+' || s[i] == '-')) i++;
    size_t d = i;
    while (i < n && s[i] >= '0' && s[i] <= '9') i++;
    if (i == d) return false;
  }
  return i == n;
}

static int oj__read_double(oj__ctx *c, json_object *v, double *out) {
  json_type t = json_object_get_type(v);
  if (t == json_type_int) {
    int64_t i = json_object_get_int64(v);
    *out = i < 0 ? (double)i : (double)json_object_get_uint64(v);
    return 0;
  }
  if (t == json_type_double) {
    *out = json_object_get_double(v);
    if (!isfinite(*out)) return oj__fail(c, "expected a finite number (write \"NaN\" or \"Infinity\" as strings)");
    return 0;
  }
  if (t != json_type_string) return oj__want(c, v, "a number");
  const char *s = json_object_get_string(v);
  size_t n = (size_t)json_object_get_string_len(v);
  if (strcmp(s, "NaN") == 0) *out = NAN;
  else if (strcmp(s, "Infinity") == 0) *out = INFINITY;
  else if (strcmp(s, "-Infinity") == 0) *out = -INFINITY;
  else if (oj__is_json_number(s, n)) { /* json-c strings are NUL-terminated: strtod stops at the end */
    *out = strtod(s, NULL);
    if (!isfinite(*out)) return oj__fail(c, "number out of range for double");
  } else {
    char q[32];
    return oj__fail(c, "expected a number, got the string \"%s\"", oj__quote(q, s, n));
  }
  return 0;
}

/* ---------------------------------------------------------------------------------------------- bytes */

static int oj__hexval(unsigned char ch) {
  if (ch >= '0' && ch <= '9') return ch - '0';
  if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
  if (ch >= 'A' && ch <= 'F') return ch - 'A' + 10;
  return -1;
}

/* Hex of exactly 2*want digits (or "" for no ID) into dst. */
static int oj__hex(oj__ctx *c, const char *s, size_t n, size_t want, ProtobufCBinaryData *dst) {
  if (n == 0) return 0;
  if (n != 2 * want) return oj__fail(c, "expected %zu hex digits, got %zu", 2 * want, n);
  uint8_t *p = oj__alloc(&c->arena, want);
  if (!p) return oj__oom(c);
  for (size_t i = 0; i < want; i++) {
    int hi = oj__hexval((unsigned char)s[2 * i]), lo = oj__hexval((unsigned char)s[2 * i + 1]);
    if (hi < 0 || lo < 0) return oj__fail(c, "invalid hex digit at position %zu", hi < 0 ? 2 * i : 2 * i + 1);
    p[i] = (uint8_t)(hi << 4 | lo);
  }
  *dst = (ProtobufCBinaryData){want, p};
  return 0;
}

static int oj__b64val(unsigned char ch) {
  if (ch >= 'A' && ch <= 'Z') return ch - 'A';
  if (ch >= 'a' && ch <= 'z') return ch - 'a' + 26;
  if (ch >= '0' && ch <= '9') return ch - '0' + 52;
  if (ch == '+' || ch == '-') return 62;
  if (ch == '/' || ch == '_') return 63;
  return -1;
}

/* Base64, standard or URL-safe alphabet, with or without '=' padding. */
static int oj__base64(oj__ctx *c, const char *s, size_t n, ProtobufCBinaryData *dst) {
  size_t pad = 0;
  while (pad < 2 && n > pad && s[n - 1 - pad] == '=') pad++;
  size_t m = n - pad; /* data characters */
  if ((pad && n % 4) || m % 4 == 1) return oj__fail(c, "invalid base64 length %zu", n);
  size_t out_len = m / 4 * 3 + (m % 4 ? m % 4 - 1 : 0);
  uint8_t *p = out_len ? oj__alloc(&c->arena, out_len) : NULL;
  if (out_len && !p) return oj__oom(c);
  size_t o = 0;
  uint32_t acc = 0;
  for (size_t i = 0; i < m; i++) {
    int v = oj__b64val((unsigned char)s[i]);
    if (v < 0) return oj__fail(c, "invalid base64 character at position %zu", i);
    acc = acc << 6 | (uint32_t)v;
    if (i % 4 == 3) {
      p[o++] = (uint8_t)(acc >> 16);
      p[o++] = (uint8_t)(acc >> 8);
      p[o++] = (uint8_t)acc;
      acc = 0;
    }
  }
  if (m % 4 == 2) {
    p[o++] = (uint8_t)(acc >> 4);
  } else if (m % 4 == 3) {
    p[o++] = (uint8_t)(acc >> 10);
    p[o++] = (uint8_t)(acc >> 2);
  }
  *dst = (ProtobufCBinaryData){out_len, p};
  return 0;
}

/* Bytes of the OTLP ID fields, hex in OTLP/JSON: their decoded size, or 0 for an ordinary (base64) field. */
static size_t oj__id_size(const ProtobufCFieldDescriptor *f) {
  if (strcmp(f->name, "trace_id") == 0) return 16;
  if (strcmp(f->name, "span_id") == 0 || strcmp(f->name, "parent_span_id") == 0) return 8;
  return 0;
}

/* ---------------------------------------------------------------------------------------------- walk */

static int oj__message(oj__ctx *c, const ProtobufCMessageDescriptor *d, json_object *obj, ProtobufCMessage *msg);

/* Size of one element of a repeated field of type t. */
static size_t oj__elem_size(ProtobufCType t) {
  switch (t) {
    case PROTOBUF_C_TYPE_INT32:
    case PROTOBUF_C_TYPE_SINT32:
    case PROTOBUF_C_TYPE_SFIXED32:
    case PROTOBUF_C_TYPE_UINT32:
    case PROTOBUF_C_TYPE_FIXED32:
    case PROTOBUF_C_TYPE_ENUM: return 4;
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64:
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64: return 8;
    case PROTOBUF_C_TYPE_FLOAT: return sizeof(float);
    case PROTOBUF_C_TYPE_DOUBLE: return sizeof(double);
    case PROTOBUF_C_TYPE_BOOL: return sizeof(protobuf_c_boolean);
    case PROTOBUF_C_TYPE_STRING: return sizeof(char *);
    case PROTOBUF_C_TYPE_BYTES: return sizeof(ProtobufCBinaryData);
    case PROTOBUF_C_TYPE_MESSAGE: return sizeof(ProtobufCMessage *);
  }
  return 0;
}

/* One value of field f (a repeated field's element, or the field itself) from v into dst. v is not null. */
static int oj__value(oj__ctx *c, const ProtobufCFieldDescriptor *f, json_object *v, void *dst) {
  json_type t = json_object_get_type(v);
  switch (f->type) {
    case PROTOBUF_C_TYPE_MESSAGE: {
      const ProtobufCMessageDescriptor *d = f->descriptor;
      if (t != json_type_object) return oj__want(c, v, "an object");
      ProtobufCMessage *m = oj__alloc(&c->arena, d->sizeof_message);
      if (!m) return oj__oom(c);
      protobuf_c_message_init(d, m);
      *(ProtobufCMessage **)dst = m;
      return oj__message(c, d, v, m);
    }
    case PROTOBUF_C_TYPE_STRING: {
      if (t != json_type_string) return oj__want(c, v, "a string");
      const char *s = json_object_get_string(v);
      if (strlen(s) != (size_t)json_object_get_string_len(v)) return oj__fail(c, "string contains U+0000");
      *(const char **)dst = s; /* owned by the json-c tree, which outlives the pack */
      return 0;
    }
    case PROTOBUF_C_TYPE_BYTES: {
      if (t != json_type_string) return oj__want(c, v, "a string");
      const char *s = json_object_get_string(v);
      size_t n = (size_t)json_object_get_string_len(v), id = oj__id_size(f);
      return id ? oj__hex(c, s, n, id, dst) : oj__base64(c, s, n, dst);
    }
    case PROTOBUF_C_TYPE_BOOL:
      if (t != json_type_boolean) return oj__want(c, v, "true or false");
      *(protobuf_c_boolean *)dst = json_object_get_boolean(v) ? 1 : 0;
      return 0;
    case PROTOBUF_C_TYPE_FLOAT:
    case PROTOBUF_C_TYPE_DOUBLE: {
      double d = 0;
      if (oj__read_double(c, v, &d)) return -1;
      if (f->type == PROTOBUF_C_TYPE_DOUBLE) {
        *(double *)dst = d;
      } else {
        if (isfinite(d) && fabs(d) > FLT_MAX) return oj__fail(c, "number out of range for float");
        *(float *)dst = (float)d;
      }
      return 0;
    }
    case PROTOBUF_C_TYPE_ENUM: {
      if (t == json_type_string) {
        const char *s = json_object_get_string(v);
        size_t n = (size_t)json_object_get_string_len(v);
        const ProtobufCEnumValue *ev = protobuf_c_enum_descriptor_get_value_by_name(f->descriptor, s);
        if (ev && strlen(s) == n) {
          *(int32_t *)dst = ev->value;
          return 0;
        }
        char q[32];
        if (!oj__is_json_number(s, n))
          return oj__fail(c, "unknown %s value \"%s\"", ((const ProtobufCEnumDescriptor *)f->descriptor)->short_name,
                          oj__quote(q, s, n));
      }
      oj__int x = {0};
      int64_t i = 0;
      if (oj__read_int(c, v, &x) || oj__signed(c, x, 32, &i)) return -1;
      *(int32_t *)dst = (int32_t)i; /* proto3 enums are open: unknown numbers are kept */
      return 0;
    }
    default: {
      oj__int x = {0};
      if (oj__read_int(c, v, &x)) return -1;
      int64_t i = 0;
      uint64_t u = 0;
      switch (f->type) {
        case PROTOBUF_C_TYPE_INT32:
        case PROTOBUF_C_TYPE_SINT32:
        case PROTOBUF_C_TYPE_SFIXED32:
          if (oj__signed(c, x, 32, &i)) return -1;
          *(int32_t *)dst = (int32_t)i;
          return 0;
        case PROTOBUF_C_TYPE_UINT32:
        case PROTOBUF_C_TYPE_FIXED32:
          if (oj__unsigned(c, x, 32, &u)) return -1;
          *(uint32_t *)dst = (uint32_t)u;
          return 0;
        case PROTOBUF_C_TYPE_INT64:
        case PROTOBUF_C_TYPE_SINT64:
        case PROTOBUF_C_TYPE_SFIXED64:
          if (oj__signed(c, x, 64, &i)) return -1;
          *(int64_t *)dst = i;
          return 0;
        case PROTOBUF_C_TYPE_UINT64:
        case PROTOBUF_C_TYPE_FIXED64:
          if (oj__unsigned(c, x, 64, &u)) return -1;
          *(uint64_t *)dst = u;
          return 0;
        default:
          return oj__fail(c, "unsupported field type %d", (int)f->type);
      }
    }
  }
}

/* Field f of msg from v (not null): a repeated field from an array, a oneof member, or a singular field. */
static int oj__field(oj__ctx *c, const ProtobufCMessageDescriptor *d, const ProtobufCFieldDescriptor *f,
                     json_object *v, ProtobufCMessage *msg) {
  char *base = (char *)msg;
  if (f->label == PROTOBUF_C_LABEL_REPEATED) {
    if (json_object_get_type(v) != json_type_array) return oj__want(c, v, "an array");
    size_t n = json_object_array_length(v), es = oj__elem_size(f->type);
    if (n == 0) return 0;
    char *arr = oj__alloc(&c->arena, n * es);
    if (!arr) return oj__oom(c);
    for (size_t i = 0; i < n; i++) {
      json_object *e = json_object_array_get_idx(v, i);
      oj__push_idx(c, i);
      int rc = e ? oj__value(c, f, e, arr + i * es) : oj__fail(c, "null is not allowed in an array");
      oj__pop(c);
      if (rc) return rc;
    }
    *(size_t *)(base + f->quantifier_offset) = n;
    *(void **)(base + f->offset) = arr;
    return 0;
  }
  if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) {
    uint32_t *which = (uint32_t *)(base + f->quantifier_offset);
    if (*which && *which != f->id) {
      const ProtobufCFieldDescriptor *other = protobuf_c_message_descriptor_get_field(d, *which);
      return oj__fail(c, "a oneof already has %s set", other ? other->name : "another member");
    }
    int rc = oj__value(c, f, v, base + f->offset);
    if (rc) return rc;
    *which = f->id;
    return 0;
  }
  int rc = oj__value(c, f, v, base + f->offset);
  if (rc) return rc;
  /* proto2 / proto3-optional scalars and bytes carry a has_ flag; strings and messages are pointers. */
  if (f->label == PROTOBUF_C_LABEL_OPTIONAL && f->type != PROTOBUF_C_TYPE_STRING && f->type != PROTOBUF_C_TYPE_MESSAGE)
    *(protobuf_c_boolean *)(base + f->quantifier_offset) = 1;
  return 0;
}

/* The field a JSON key names: its lowerCamelCase JSON name or its proto name. NULL for unknown keys. */
static const ProtobufCFieldDescriptor *oj__lookup(const ProtobufCMessageDescriptor *d, const char *key) {
  char name[64];
  size_t n = 0;
  for (const char *k = key; *k; k++) {
    if (n + 2 >= sizeof(name)) return NULL; /* longer than any field name */
    if (*k >= 'A' && *k <= 'Z') {
      name[n++] = '_';
      name[n++] = (char)(*k - 'A' + 'a');
    } else {
      name[n++] = *k;
    }
  }
  name[n] = '\0';
  return protobuf_c_message_descriptor_get_field_by_name(d, name);
}

static int oj__message(oj__ctx *c, const ProtobufCMessageDescriptor *d, json_object *obj, ProtobufCMessage *msg) {
  bool any = d == &opentelemetry__proto__common__v1__any_value__descriptor;
  if (any && ++c->any_depth > OJ_MAX_ANY_DEPTH) return oj__fail(c, "AnyValue nested deeper than %d", OJ_MAX_ANY_DEPTH);
  uint64_t seen[4] = {0}; /* field indexes set so far; generated OTLP messages have < 20 fields */
  if (d->n_fields > 256) return oj__fail(c, "message %s has too many fields", d->name);
  json_object_object_foreach(obj, key, val) {
    const ProtobufCFieldDescriptor *f = oj__lookup(d, key);
    if (!f || !val) continue; /* unknown key, or null: the default */
    size_t fi = (size_t)(f - d->fields);
    oj__push_key(c, key);
    int rc;
    if (seen[fi / 64] & (1ull << (fi % 64))) rc = oj__fail(c, "field given twice (as %s and another name)", key);
    else rc = oj__field(c, d, f, val, msg);
    seen[fi / 64] |= 1ull << (fi % 64);
    oj__pop(c);
    if (rc) return rc;
  }
  if (any) c->any_depth--;
  return 0;
}

/* ---------------------------------------------------------------------------------------------- entry */

int oj_to_protobuf(int signal, const uint8_t *json, size_t len, uint8_t **out, size_t *out_len, char *err,
                   size_t errlen) {
  *out = NULL;
  *out_len = 0;
  if (err && errlen) err[0] = '\0';
  oj__ctx *c = calloc(1, sizeof(*c)); /* the path stack is a few KiB: keep it off the caller's stack */
  if (!c) {
    if (err && errlen) snprintf(err, errlen, "out of memory");
    return -2;
  }
  c->err = err;
  c->errlen = errlen;
  int rc = -1;
  struct json_tokener *tok = NULL;
  json_object *root = NULL;

  if (signal < 0 || signal > 2) {
    rc = oj__fail(c, "unknown signal %d", signal);
    goto done;
  }
  if (len >= 3 && memcmp(json, "\xef\xbb\xbf", 3) == 0) { /* RFC 8259 lets parsers skip a BOM */
    json += 3;
    len -= 3;
  }
  if (len > INT_MAX) {
    rc = oj__fail(c, "body of %zu bytes is too large", len);
    goto done;
  }
  c->json = (const char *)json;
  c->len = len;
  tok = json_tokener_new_ex(OJ_MAX_JSON_DEPTH);
  if (!tok) {
    rc = oj__oom(c);
    goto done;
  }
  json_tokener_set_flags(tok, JSON_TOKENER_STRICT | JSON_TOKENER_VALIDATE_UTF8);
  root = json_tokener_parse_ex(tok, (const char *)json, (int)len);
  enum json_tokener_error jerr = json_tokener_get_error(tok);
  size_t at = json_tokener_get_parse_end(tok);
  if (!root && jerr == json_tokener_continue) { /* the input ended inside a value: a NUL ends it */
    root = json_tokener_parse_ex(tok, "", 1);
    jerr = json_tokener_get_error(tok);
    at = len;
  }
  if (!root && jerr == json_tokener_success) { /* the body is the literal null */
    rc = oj__fail(c, "expected an object, got null");
    goto done;
  }
  if (!root) { /* json-c 0.16 has no distinct out-of-memory error: an allocation failure reads as invalid JSON */
    if (err && errlen) snprintf(err, errlen, "invalid JSON at byte %zu: %s", at, json_tokener_error_desc(jerr));
    goto done;
  }
  if (at < len) { /* strict mode refuses trailing data itself; this is the documented belt and braces */
    if (err && errlen) snprintf(err, errlen, "invalid JSON at byte %zu: unexpected data after the value", at);
    goto done;
  }
  if (json_object_get_type(root) != json_type_object) {
    rc = oj__want(c, root, "an object");
    goto done;
  }
  const ProtobufCMessageDescriptor *d = oj__requests[signal];
  ProtobufCMessage *msg = oj__alloc(&c->arena, d->sizeof_message);
  if (!msg) {
    rc = oj__oom(c);
    goto done;
  }
  protobuf_c_message_init(d, msg);
  rc = oj__message(c, d, root, msg);
  if (rc) goto done;
  size_t n = protobuf_c_message_get_packed_size(msg);
  *out = malloc(n ? n : 1);
  if (!*out) {
    rc = oj__oom(c);
    goto done;
  }
  *out_len = protobuf_c_message_pack(msg, *out);
  rc = 0;
done:
  if (root) json_object_put(root);
  if (tok) json_tokener_free(tok);
  oj__arena_free(&c->arena);
  free(c);
  return rc;
}
