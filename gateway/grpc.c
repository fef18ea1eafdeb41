/* gateway/grpc — see grpc.h. Protobuf and base64 are written by hand here: the messages are tiny and fixed, and
 * the deframer and trailer paths must not allocate. */
#include "gateway/grpc.h"

#include <stdlib.h>
#include <string.h>

static const char *const code_names[GRPC_N_CODES] = {
    "OK",           "CANCELLED",      "UNKNOWN",           "INVALID_ARGUMENT",    "DEADLINE_EXCEEDED",
    "NOT_FOUND",    "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED",  "FAILED_PRECONDITION",
    "ABORTED",      "OUT_OF_RANGE",   "UNIMPLEMENTED",     "INTERNAL",            "UNAVAILABLE",
    "DATA_LOSS",    "UNAUTHENTICATED"};

const char *grpc_code_name(int code) {
  if (code < 0 || code >= GRPC_N_CODES) return "UNKNOWN";
  return code_names[code];
}

/* ---- message framing ------------------------------------------------------------------------------------ */

enum { DF_PREFIX = 0, DF_AWAIT_BUFFER, DF_BODY, DF_DONE, DF_ERROR };

void grpc_deframer_init(grpc_deframer_t *d) { memset(d, 0, sizeof *d); }

int grpc_deframer_feed(grpc_deframer_t *d, const uint8_t *data, size_t len, size_t *used) {
  size_t off = 0;
  *used = 0;
  for (;;) {
    switch (d->state) {
    case DF_PREFIX:
      while (off < len && d->n_prefix < 5) d->prefix[d->n_prefix++] = data[off++];
      *used = off;
      if (d->n_prefix < 5) return GRPC_DF_MORE;
      d->compressed = d->prefix[0];
      d->length = (uint32_t)d->prefix[1] << 24 | (uint32_t)d->prefix[2] << 16 | (uint32_t)d->prefix[3] << 8 |
                  (uint32_t)d->prefix[4];
      d->have = 0;
      d->state = DF_AWAIT_BUFFER;
      return GRPC_DF_NEED_BUFFER;
    case DF_AWAIT_BUFFER:
      /* The caller has had its chance to set d->buf; without one only an empty message can be read. */
      if (d->length > 0 && !d->buf) {
        d->state = DF_ERROR;
        return GRPC_DF_ERROR;
      }
      d->state = d->length > 0 ? DF_BODY : DF_DONE;
      continue;
    case DF_BODY: {
      size_t want = (size_t)(d->length - d->have), n = len - off < want ? len - off : want;
      if (n) memcpy(d->buf + d->have, data + off, n);
      d->have += (uint32_t)n;
      off += n;
      *used = off;
      if (d->have < d->length) return GRPC_DF_MORE;
      d->state = DF_DONE;
      continue;
    }
    case DF_DONE:
      if (off < len) {
        d->state = DF_ERROR;
        return GRPC_DF_ERROR;
      }
      return GRPC_DF_DONE;
    default:
      return GRPC_DF_ERROR;
    }
  }
}

int grpc_deframer_finish(const grpc_deframer_t *d) {
  switch (d->state) {
  case DF_PREFIX: return d->n_prefix == 0 ? 0 : -1;
  case DF_AWAIT_BUFFER: return d->length == 0 ? 1 : -1;
  case DF_DONE: return 1;
  default: return -1;
  }
}

void grpc_frame_prefix(uint8_t out[5], int compressed, uint32_t len) {
  out[0] = compressed ? 1 : 0;
  out[1] = (uint8_t)(len >> 24);
  out[2] = (uint8_t)(len >> 16);
  out[3] = (uint8_t)(len >> 8);
  out[4] = (uint8_t)len;
}

/* ---- metadata --------------------------------------------------------------------------------------------- */

int64_t grpc_parse_timeout_ms(hs_slice_t v) {
  if (v.len < 2 || v.len > 9) return -1;
  int64_t n = 0;
  for (size_t i = 0; i + 1 < v.len; i++) {
    if (v.base[i] < '0' || v.base[i] > '9') return -1;
    n = n * 10 + (v.base[i] - '0'); /* at most 8 digits: no overflow below, even for hours */
  }
  switch (v.base[v.len - 1]) {
  case 'H': return n * 3600000;
  case 'M': return n * 60000;
  case 'S': return n * 1000;
  case 'm': return n;
  case 'u': return (n + 999) / 1000;
  case 'n': return (n + 999999) / 1000000;
  default: return -1;
  }
}

static const char hex_upper[] = "0123456789ABCDEF";

/* Bytes of the UTF-8 sequence starting at s (1 for ASCII and for anything malformed), so that truncation never
 * splits a character: a cut character would make the decoded message invalid UTF-8. */
static size_t utf8_seq_len(const unsigned char *s) {
  size_t want = s[0] >= 0xF0 ? 4 : s[0] >= 0xE0 ? 3 : s[0] >= 0xC0 ? 2 : 1, n = 1;
  while (n < want && (s[n] & 0xC0) == 0x80) n++;
  return n;
}

size_t grpc_percent_encode(const char *msg, char *out, size_t cap) {
  if (cap == 0) return 0;
  const unsigned char *s = (const unsigned char *)(msg ? msg : "");
  size_t o = 0;
  while (*s) {
    size_t n = utf8_seq_len(s), need = 0;
    for (size_t i = 0; i < n; i++) need += (s[i] < 0x20 || s[i] > 0x7E || s[i] == '%') ? 3 : 1;
    if (o + need > cap - 1) break;
    for (size_t i = 0; i < n; i++) {
      if (s[i] < 0x20 || s[i] > 0x7E || s[i] == '%') {
        out[o++] = '%';
        out[o++] = hex_upper[s[i] >> 4];
        out[o++] = hex_upper[s[i] & 15];
      } else {
        out[o++] = (char)s[i];
      }
    }
    s += n;
  }
  out[o] = '\0';
  return o;
}

static int hex_val(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}

size_t grpc_percent_decode(hs_slice_t in, char *out, size_t cap) {
  if (cap == 0) return 0;
  size_t o = 0;
  for (size_t i = 0; i < in.len && o < cap - 1; i++) {
    int hi, lo;
    /* The spec: a malformed escape must not lose the message, so it is kept as it is. */
    if (in.base[i] == '%' && i + 2 < in.len && (hi = hex_val(in.base[i + 1])) >= 0 &&
        (lo = hex_val(in.base[i + 2])) >= 0) {
      out[o++] = (char)(hi << 4 | lo);
      i += 2;
    } else {
      out[o++] = in.base[i];
    }
  }
  out[o] = '\0';
  return o;
}

/* ---- protobuf by hand ------------------------------------------------------------------------------------- */

#define RETRY_INFO_URL "type.googleapis.com/google.rpc.RetryInfo"

/* A bounded writer; with p == NULL it only counts (the sizing pass). */
typedef struct pbw {
  uint8_t *p;
  size_t n, cap;
  int overflow;
} pbw_t;

static void pbw_byte(pbw_t *w, uint8_t b) {
  if (w->p) {
    if (w->n >= w->cap) {
      w->overflow = 1;
      return;
    }
    w->p[w->n] = b;
  }
  w->n++;
}

static void pbw_varint(pbw_t *w, uint64_t v) {
  while (v >= 0x80) {
    pbw_byte(w, (uint8_t)(v | 0x80));
    v >>= 7;
  }
  pbw_byte(w, (uint8_t)v);
}

static void pbw_bytes(pbw_t *w, const void *d, size_t n) {
  if (w->p) {
    if (w->n > w->cap || n > w->cap - w->n) {
      w->overflow = 1;
      return;
    }
    memcpy(w->p + w->n, d, n);
  }
  w->n += n;
}

static size_t varint_size(uint64_t v) {
  size_t n = 1;
  while (v >= 0x80) v >>= 7, n++;
  return n;
}

/* Status{code=1, message=2, details=3: Any{type_url=1, value=2: RetryInfo{retry_delay=1: Duration{seconds=1}}}},
 * proto3 style: fields with their default value are left out. */
static void status_write(pbw_t *w, int code, const char *message, uint32_t retry_delay_s) {
  size_t mlen = message ? strlen(message) : 0;
  if (code != 0) {
    pbw_byte(w, 0x08);
    pbw_varint(w, (uint64_t)(int64_t)code); /* int32: negative numbers sign-extend to 10 bytes */
  }
  if (mlen) {
    pbw_byte(w, 0x12);
    pbw_varint(w, mlen);
    pbw_bytes(w, message, mlen);
  }
  if (retry_delay_s > 0) {
    size_t dur = 1 + varint_size(retry_delay_s);
    size_t ri = 1 + varint_size(dur) + dur;
    size_t url = sizeof RETRY_INFO_URL - 1;
    size_t any = 1 + varint_size(url) + url + 1 + varint_size(ri) + ri;
    pbw_byte(w, 0x1a);
    pbw_varint(w, any);
    pbw_byte(w, 0x0a);
    pbw_varint(w, url);
    pbw_bytes(w, RETRY_INFO_URL, url);
    pbw_byte(w, 0x12);
    pbw_varint(w, ri);
    pbw_byte(w, 0x0a);
    pbw_varint(w, dur);
    pbw_byte(w, 0x08);
    pbw_varint(w, retry_delay_s);
  }
}

size_t grpc_status_proto(int code, const char *message, uint32_t retry_delay_s, uint8_t *out, size_t cap) {
  pbw_t w = {out, 0, cap, 0};
  status_write(&w, code, message, retry_delay_s);
  return w.overflow ? 0 : w.n;
}

static const char b64_alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

size_t grpc_status_details_bin(int code, const char *message, uint32_t retry_delay_s, char *out, size_t cap) {
  pbw_t sizing = {NULL, 0, 0, 0};
  status_write(&sizing, code, message, retry_delay_s);
  size_t n = sizing.n, groups = (n + 2) / 3, b64 = groups * 4;
  if (b64 >= cap) return 0;
  /* No scratch buffer: the proto goes at the end of the base64's room (src = out + b64 - n) and is encoded
   * forwards in place. Group k is read before it is written; its 4 bytes end at 4k + 3, before the next group's
   * source at src + 3k + 3 as long as k < b64 - n, which holds for every k < groups because n <= 3 * groups. */
  uint8_t *src = (uint8_t *)out + (b64 - n);
  pbw_t w = {src, 0, n, 0};
  status_write(&w, code, message, retry_delay_s);
  if (w.overflow || w.n != n) return 0;
  size_t o = 0;
  for (size_t i = 0; i < n; i += 3) {
    uint32_t b0 = src[i], b1 = i + 1 < n ? src[i + 1] : 0, b2 = i + 2 < n ? src[i + 2] : 0;
    uint32_t v = b0 << 16 | b1 << 8 | b2;
    out[o++] = b64_alphabet[v >> 18 & 63];
    out[o++] = b64_alphabet[v >> 12 & 63];
    out[o++] = i + 1 < n ? b64_alphabet[v >> 6 & 63] : '=';
    out[o++] = i + 2 < n ? b64_alphabet[v & 63] : '=';
  }
  out[o] = '\0';
  return o;
}

static int b64_val(char c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '+') return 62;
  if (c == '/') return 63;
  return -1;
}

/* Standard base64, padded or not, into out (room for in.len / 4 * 3 + 2 bytes); -1 when malformed. */
static ptrdiff_t b64_decode(hs_slice_t in, uint8_t *out) {
  size_t len = in.len;
  if (len % 4 == 0 && len >= 1 && in.base[len - 1] == '=') len--;
  if (len % 4 == 3 && len >= 1 && in.base[len - 1] == '=') len--;
  if (len % 4 == 1) return -1;
  size_t o = 0;
  uint32_t acc = 0;
  int bits = 0;
  for (size_t i = 0; i < len; i++) {
    int v = b64_val(in.base[i]);
    if (v < 0) return -1;
    acc = acc << 6 | (uint32_t)v;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out[o++] = (uint8_t)(acc >> bits);
      acc &= (1u << bits) - 1;
    }
  }
  return (ptrdiff_t)o;
}

/* A protobuf reader over [p, end): fields as (number, wire type, varint value or LEN slice). */
typedef struct pbr {
  const uint8_t *p, *end;
} pbr_t;

static int pbr_varint(pbr_t *r, uint64_t *v) {
  uint64_t x = 0;
  for (int shift = 0; shift < 70; shift += 7) {
    if (r->p >= r->end) return -1;
    uint8_t b = *r->p++;
    x |= (uint64_t)(b & 0x7F) << shift;
    if (!(b & 0x80)) {
      *v = x;
      return 0;
    }
  }
  return -1;
}

/* Next field: 1 and its number, wire type and value (varint in *v; LEN in *sub); 0 at the end; -1 malformed. */
static int pbr_next(pbr_t *r, uint32_t *field, int *wt, uint64_t *v, pbr_t *sub) {
  if (r->p >= r->end) return 0;
  uint64_t tag;
  if (pbr_varint(r, &tag) < 0 || tag >> 3 == 0 || tag >> 3 > 0x1FFFFFFF) return -1;
  *field = (uint32_t)(tag >> 3);
  *wt = (int)(tag & 7);
  switch (*wt) {
  case 0: return pbr_varint(r, v) < 0 ? -1 : 1;
  case 1:
  case 5: {
    size_t n = *wt == 1 ? 8 : 4;
    if ((size_t)(r->end - r->p) < n) return -1;
    r->p += n;
    return 1;
  }
  case 2: {
    uint64_t n;
    if (pbr_varint(r, &n) < 0 || n > (uint64_t)(r->end - r->p)) return -1;
    sub->p = r->p;
    sub->end = r->p + n;
    r->p += n;
    return 1;
  }
  default: return -1; /* groups are not used by these messages */
  }
}

/* RetryInfo bytes -> seconds, rounded up when nanos are set; -1 when malformed or absent. */
static int64_t retry_info_seconds(pbr_t r) {
  uint32_t f;
  int wt, rc;
  uint64_t v;
  pbr_t sub;
  int64_t result = -1;
  while ((rc = pbr_next(&r, &f, &wt, &v, &sub)) == 1) {
    if (f != 1) continue;
    if (wt != 2) return -1;
    int64_t seconds = 0, nanos = 0;
    pbr_t dr = sub;
    while ((rc = pbr_next(&dr, &f, &wt, &v, &sub)) == 1) {
      if (f == 1 || f == 2) {
        if (wt != 0) return -1;
        if (f == 1) seconds = (int64_t)v;
        else nanos = (int64_t)(int32_t)(uint32_t)v;
      }
    }
    if (rc < 0 || seconds < 0 || nanos < 0 || nanos > 999999999) return -1;
    result = seconds + (nanos > 0 && seconds < INT64_MAX ? 1 : 0);
  }
  return rc < 0 ? -1 : result;
}

static int64_t status_retry_delay(pbr_t r) {
  uint32_t f;
  int wt, rc;
  uint64_t v;
  pbr_t any;
  int64_t result = -1;
  while ((rc = pbr_next(&r, &f, &wt, &v, &any)) == 1) {
    if (f != 3) continue;
    if (wt != 2) return -1;
    pbr_t url = {NULL, NULL}, value = {NULL, NULL}, sub;
    int have_url = 0;
    while ((rc = pbr_next(&any, &f, &wt, &v, &sub)) == 1) {
      if (f != 1 && f != 2) continue;
      if (wt != 2) return -1;
      if (f == 1) url = sub, have_url = 1;
      else value = sub;
    }
    if (rc < 0) return -1;
    size_t ulen = have_url ? (size_t)(url.end - url.p) : 0;
    if (ulen == sizeof RETRY_INFO_URL - 1 && memcmp(url.p, RETRY_INFO_URL, ulen) == 0) {
      int64_t s = value.p ? retry_info_seconds(value) : -1;
      if (s < 0) return -1;
      result = s;
    }
  }
  return rc < 0 ? -1 : result;
}

int64_t grpc_retry_delay_from_details(hs_slice_t b64) {
  uint8_t stack[1024];
  size_t room = b64.len / 4 * 3 + 3;
  uint8_t *buf = room <= sizeof stack ? stack : malloc(room);
  if (!buf) return -1;
  ptrdiff_t n = b64_decode(b64, buf);
  int64_t result = n < 0 ? -1 : status_retry_delay((pbr_t){buf, buf + n});
  if (buf != stack) free(buf);
  return result;
}

/* ---- services --------------------------------------------------------------------------------------------- */

static const char *const service_paths[] = {
    [GRPC_SVC_TRACES] = "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
    [GRPC_SVC_LOGS] = "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
    [GRPC_SVC_METRICS] = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
    [GRPC_SVC_HEALTH_CHECK] = "/grpc.health.v1.Health/Check",
};
#define N_SERVICES ((int)(sizeof service_paths / sizeof service_paths[0]))

const char *grpc_service_path(int svc) { return svc >= 0 && svc < N_SERVICES ? service_paths[svc] : NULL; }

int grpc_service_from_path(hs_slice_t path) {
  for (int i = 0; i < N_SERVICES; i++) {
    size_t n = strlen(service_paths[i]);
    if (path.len == n && memcmp(path.base, service_paths[i], n) == 0) return i;
  }
  return -1;
}

int grpc_health_parse_request(const uint8_t *msg, size_t len, hs_slice_t *service) {
  service->base = "";
  service->len = 0;
  if (len == 0) return 0; /* msg may be NULL then: the deframer's buffer for an empty message */
  pbr_t r = {msg, msg + len}, sub;
  uint32_t f;
  int wt, rc;
  uint64_t v;
  while ((rc = pbr_next(&r, &f, &wt, &v, &sub)) == 1) {
    if (f != 1) continue;
    if (wt != 2) return -1;
    service->base = (const char *)sub.p; /* proto3: the last occurrence wins */
    service->len = (size_t)(sub.end - sub.p);
  }
  return rc < 0 ? -1 : 0;
}

size_t grpc_health_response(int serving, uint8_t out[8]) {
  out[0] = 0x08;
  out[1] = serving ? 1 : 2;
  return 2;
}
