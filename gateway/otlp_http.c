/* gateway/otlp_http — see otlp_http.h. */
#include "gateway/otlp_http.h"

#include <libdeflate.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "google/rpc/status.pb-c.h"
#include "opentelemetry/proto/collector/logs/v1/logs_service.pb-c.h"
#include "opentelemetry/proto/collector/metrics/v1/metrics_service.pb-c.h"
#include "opentelemetry/proto/collector/trace/v1/trace_service.pb-c.h"

/* JSON names of the partial_success count, per signal. */
static const char *const rejected_json[OTLP_N_SIGNALS] = {"rejectedSpans", "rejectedLogRecords",
                                                           "rejectedDataPoints"};

static const otlp_signal_info_t signals[OTLP_N_SIGNALS] = {
    [OTLP_TRACES] = {"traces", "/v1/traces", "spans",
                     &opentelemetry__proto__collector__trace__v1__export_trace_service_request__descriptor,
                     &opentelemetry__proto__collector__trace__v1__export_trace_service_response__descriptor},
    [OTLP_LOGS] = {"logs", "/v1/logs", "log_records",
                   &opentelemetry__proto__collector__logs__v1__export_logs_service_request__descriptor,
                   &opentelemetry__proto__collector__logs__v1__export_logs_service_response__descriptor},
    [OTLP_METRICS] = {"metrics", "/v1/metrics", "data_points",
                      &opentelemetry__proto__collector__metrics__v1__export_metrics_service_request__descriptor,
                      &opentelemetry__proto__collector__metrics__v1__export_metrics_service_response__descriptor},
};

const otlp_signal_info_t *otlp_signal(otlp_signal_t sig) { return &signals[sig]; }

int otlp_signal_from_path(hs_slice_t path) {
  /* A trailing slash is tolerated: some SDK configurations produce "/v1/traces/". */
  if (path.len > 1 && path.base[path.len - 1] == '/') path.len--;
  for (int i = 0; i < OTLP_N_SIGNALS; i++) {
    size_t n = strlen(signals[i].path);
    if (path.len == n && memcmp(path.base, signals[i].path, n) == 0) return i;
  }
  return -1;
}

static hs_slice_t trim(hs_slice_t s) {
  while (s.len && (s.base[0] == ' ' || s.base[0] == '\t')) s.base++, s.len--;
  while (s.len && (s.base[s.len - 1] == ' ' || s.base[s.len - 1] == '\t')) s.len--;
  return s;
}

int otlp_encoding_from_content_type(const hs_slice_t *ct) {
  if (!ct) return -1;
  hs_slice_t t = *ct;
  const char *semi = memchr(t.base, ';', t.len);
  if (semi) t.len = (size_t)(semi - t.base);
  t = trim(t);
  if (hs_slice_eq(t, "application/x-protobuf") || hs_slice_eq(t, "application/protobuf")) return OTLP_ENC_PROTOBUF;
  if (hs_slice_eq(t, "application/json")) return OTLP_ENC_JSON;
  return -1;
}

const char *otlp_content_type(otlp_encoding_t enc) {
  return enc == OTLP_ENC_JSON ? "application/json" : "application/x-protobuf";
}

int otlp_content_encoding(const hs_slice_t *ce) {
  if (!ce) return OTLP_CE_IDENTITY;
  hs_slice_t t = trim(*ce);
  if (t.len == 0 || hs_slice_eq(t, "identity")) return OTLP_CE_IDENTITY;
  if (hs_slice_eq(t, "gzip") || hs_slice_eq(t, "x-gzip")) return OTLP_CE_GZIP;
  return -1;
}

/* One decompressor per thread: allocating it costs more than decompressing a small body. */
static _Thread_local struct libdeflate_decompressor *tl_decompressor;

int otlp_gunzip(const uint8_t *in, size_t in_len, size_t max_out, uint8_t **out, size_t *out_len) {
  return otlp_gunzip_ex(in, in_len, max_out, NULL, NULL, out, out_len);
}

int otlp_gunzip_ex(const uint8_t *in, size_t in_len, size_t max_out, int (*reserve)(void *ud, size_t bytes), void *ud,
                   uint8_t **out, size_t *out_len) {
  *out = NULL;
  *out_len = 0;
  if (in_len < 18) return OTLP_EBADGZIP; /* 10-byte header + 8-byte trailer at least */
  if (!tl_decompressor && !(tl_decompressor = libdeflate_alloc_decompressor())) return OTLP_ENOMEM;
  if (in[0] != 0x1f || in[1] != 0x8b) return OTLP_EBADGZIP;
  /* ISIZE (last 4 bytes) is the last member's size mod 2^32: a good first guess for the output size, but
   * it may lie (or be garbage in a truncated body), so it only sizes the first try, clamped to max_out. */
  uint32_t isize = (uint32_t)in[in_len - 4] | (uint32_t)in[in_len - 3] << 8 | (uint32_t)in[in_len - 2] << 16 |
                   (uint32_t)in[in_len - 1] << 24;
  size_t cap = isize ? isize : 4 * in_len;
  if (cap < 4096) cap = 4096;
  if (cap > max_out) cap = max_out;
  if (reserve && reserve(ud, cap) != 0) return OTLP_EMEMORY;
  uint8_t *buf = malloc(cap ? cap : 1);
  if (!buf) return OTLP_ENOMEM;
  size_t in_off = 0, len = 0;
  while (in_off < in_len) {
    size_t used_in = 0, produced = 0;
    enum libdeflate_result r = libdeflate_gzip_decompress_ex(tl_decompressor, in + in_off, in_len - in_off,
                                                             buf + len, cap - len, &used_in, &produced);
    if (r == LIBDEFLATE_SUCCESS) {
      in_off += used_in;
      len += produced;
      continue;
    }
    if (r == LIBDEFLATE_INSUFFICIENT_SPACE) {
      if (cap >= max_out) {
        free(buf);
        return OTLP_ETOOBIG;
      }
      size_t ncap = cap > max_out / 4 ? max_out : cap * 4;
      if (reserve && reserve(ud, ncap - cap) != 0) {
        free(buf);
        return OTLP_EMEMORY;
      }
      uint8_t *nb = realloc(buf, ncap);
      if (!nb) {
        free(buf);
        return OTLP_ENOMEM;
      }
      buf = nb;
      cap = ncap;
      continue; /* the same member again, with more room */
    }
    free(buf);
    return OTLP_EBADGZIP;
  }
  *out = buf;
  *out_len = len;
  return OTLP_OK;
}

static _Thread_local struct libdeflate_compressor *tl_compressor;

int otlp_gzip_iov(const struct iovec *iov, size_t n_iov, uint8_t **out, size_t *out_len) {
  *out = NULL;
  *out_len = 0;
  if (!tl_compressor && !(tl_compressor = libdeflate_alloc_compressor(1))) return OTLP_ENOMEM;
  size_t len = 0;
  for (size_t i = 0; i < n_iov; i++) len += iov[i].iov_len;
  uint8_t *plain = malloc(len ? len : 1);
  size_t cap = libdeflate_gzip_compress_bound(tl_compressor, len);
  uint8_t *z = malloc(cap);
  if (!plain || !z) {
    free(plain);
    free(z);
    return OTLP_ENOMEM;
  }
  size_t off = 0;
  for (size_t i = 0; i < n_iov; i++) {
    memcpy(plain + off, iov[i].iov_base, iov[i].iov_len);
    off += iov[i].iov_len;
  }
  size_t zl = libdeflate_gzip_compress(tl_compressor, plain, len, z, cap);
  free(plain);
  if (zl == 0) { /* cannot happen with the bound, but never send a truncated body */
    free(z);
    return OTLP_ENOMEM;
  }
  *out = z;
  *out_len = zl;
  return OTLP_OK;
}

void otlp_thread_cleanup(void) {
  libdeflate_free_decompressor(tl_decompressor);
  libdeflate_free_compressor(tl_compressor);
  tl_decompressor = NULL;
  tl_compressor = NULL;
}

uint64_t otlp_metric_points(const Opentelemetry__Proto__Metrics__V1__Metric *m) {
  switch (m->data_case) {
    case OPENTELEMETRY__PROTO__METRICS__V1__METRIC__DATA_GAUGE: return m->gauge->n_data_points;
    case OPENTELEMETRY__PROTO__METRICS__V1__METRIC__DATA_SUM: return m->sum->n_data_points;
    case OPENTELEMETRY__PROTO__METRICS__V1__METRIC__DATA_HISTOGRAM: return m->histogram->n_data_points;
    case OPENTELEMETRY__PROTO__METRICS__V1__METRIC__DATA_EXPONENTIAL_HISTOGRAM:
      return m->exponential_histogram->n_data_points;
    case OPENTELEMETRY__PROTO__METRICS__V1__METRIC__DATA_SUMMARY: return m->summary->n_data_points;
    default: return 0;
  }
}

int otlp_count_items(otlp_signal_t sig, const uint8_t *body, size_t len, uint64_t *items, uint64_t *resources) {
  ProtobufCMessage *msg = protobuf_c_message_unpack(signals[sig].request, NULL, len, body);
  if (!msg) return OTLP_EINVALID;
  uint64_t n = 0, nres = 0;
  if (sig == OTLP_TRACES) {
    Opentelemetry__Proto__Collector__Trace__V1__ExportTraceServiceRequest *r = (void *)msg;
    nres = r->n_resource_spans;
    for (size_t i = 0; i < r->n_resource_spans; i++)
      for (size_t j = 0; j < r->resource_spans[i]->n_scope_spans; j++) n += r->resource_spans[i]->scope_spans[j]->n_spans;
  } else if (sig == OTLP_LOGS) {
    Opentelemetry__Proto__Collector__Logs__V1__ExportLogsServiceRequest *r = (void *)msg;
    nres = r->n_resource_logs;
    for (size_t i = 0; i < r->n_resource_logs; i++)
      for (size_t j = 0; j < r->resource_logs[i]->n_scope_logs; j++) n += r->resource_logs[i]->scope_logs[j]->n_log_records;
  } else {
    Opentelemetry__Proto__Collector__Metrics__V1__ExportMetricsServiceRequest *r = (void *)msg;
    nres = r->n_resource_metrics;
    for (size_t i = 0; i < r->n_resource_metrics; i++)
      for (size_t j = 0; j < r->resource_metrics[i]->n_scope_metrics; j++) {
        Opentelemetry__Proto__Metrics__V1__ScopeMetrics *sm = r->resource_metrics[i]->scope_metrics[j];
        for (size_t k = 0; k < sm->n_metrics; k++) n += otlp_metric_points(sm->metrics[k]);
      }
  }
  protobuf_c_message_free_unpacked(msg, NULL);
  if (items) *items = n;
  if (resources) *resources = nres;
  return OTLP_OK;
}

int otlp_grpc_code(int http_status) {
  switch (http_status) {
    case 200: return 0;   /* OK */
    case 400: return 3;   /* INVALID_ARGUMENT */
    case 401: return 16;  /* UNAUTHENTICATED */
    case 403: return 7;   /* PERMISSION_DENIED */
    case 404: return 5;   /* NOT_FOUND */
    case 405: return 12;  /* UNIMPLEMENTED */
    case 408: return 4;   /* DEADLINE_EXCEEDED */
    case 411: return 3;
    case 413: return 8;   /* RESOURCE_EXHAUSTED */
    case 415: return 3;
    case 429: return 8;
    case 431: return 3;
    case 502: case 503: case 504: return 14; /* UNAVAILABLE */
    default: return 13;   /* INTERNAL */
  }
}

/* JSON string escaping per RFC 8259 for a message we wrote ourselves (ASCII and UTF-8 pass through). */
static size_t json_escape(const char *s, char *out, size_t cap) {
  size_t n = 0;
  for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
    char tmp[8];
    const char *e = tmp;
    size_t el;
    if (*p == '"' || *p == '\\') { tmp[0] = '\\'; tmp[1] = (char)*p; el = 2; }
    else if (*p < 0x20) el = (size_t)snprintf(tmp, sizeof tmp, "\\u%04x", *p);
    else { tmp[0] = (char)*p; el = 1; }
    if (n + el >= cap) return (size_t)-1;
    memcpy(out + n, e, el);
    n += el;
  }
  return n;
}

size_t otlp_status_body(otlp_encoding_t enc, int http_status, const char *message, char *out, size_t cap) {
  int code = otlp_grpc_code(http_status);
  if (enc == OTLP_ENC_JSON) {
    char esc[1024];
    size_t el = json_escape(message ? message : "", esc, sizeof esc);
    if (el == (size_t)-1) return 0;
    int n = snprintf(out, cap, "{\"code\":%d,\"message\":\"%.*s\"}", code, (int)el, esc);
    return n < 0 || (size_t)n >= cap ? 0 : (size_t)n;
  }
  Google__Rpc__Status st = GOOGLE__RPC__STATUS__INIT;
  st.code = code;
  st.message = (char *)(message ? message : "");
  size_t need = google__rpc__status__get_packed_size(&st);
  if (need > cap) return 0;
  return google__rpc__status__pack(&st, (uint8_t *)out);
}

int otlp_respond_status(hs_request_t *req, otlp_encoding_t enc, int http_status, const char *message,
                        unsigned retry_after_s, const hs_header_t *extra, size_t n_extra) {
  char body[1200];
  size_t len = otlp_status_body(enc, http_status, message, body, sizeof body);
  hs_header_t hdrs[8];
  size_t n = 0;
  char ra[16];
  if (retry_after_s) {
    int l = snprintf(ra, sizeof ra, "%u", retry_after_s);
    hdrs[n++] = (hs_header_t){{"Retry-After", 11}, {ra, (size_t)l}};
  }
  for (size_t i = 0; i < n_extra && n < 8; i++) hdrs[n++] = extra[i];
  return hs_respond(req, http_status, otlp_content_type(enc), hdrs, n, body, len);
}

int otlp_respond_success(hs_request_t *req, otlp_encoding_t enc) {
  if (enc == OTLP_ENC_JSON) return hs_respond(req, 200, "application/json", NULL, 0, "{}", 2);
  return hs_respond(req, 200, "application/x-protobuf", NULL, 0, NULL, 0);
}

/* Minimal protobuf reading for the two-level partial_success message. Returns bytes used, 0 on error. */
static size_t read_varint(const uint8_t *p, const uint8_t *end, uint64_t *v) {
  uint64_t x = 0;
  for (size_t i = 0; i < 10 && p + i < end; i++) {
    x |= (uint64_t)(p[i] & 0x7f) << (7 * i);
    if (!(p[i] & 0x80)) {
      *v = x;
      return i + 1;
    }
  }
  return 0;
}

/* Skips one field of wire type wt at p; returns the new position or NULL when malformed. */
static const uint8_t *skip_field(const uint8_t *p, const uint8_t *end, unsigned wt, const uint8_t **val,
                                 uint64_t *num) {
  uint64_t v = 0;
  size_t n;
  switch (wt) {
    case 0:
      if (!(n = read_varint(p, end, &v))) return NULL;
      *num = v;
      return p + n;
    case 1: return end - p >= 8 ? p + 8 : NULL;
    case 5: return end - p >= 4 ? p + 4 : NULL;
    case 2:
      if (!(n = read_varint(p, end, &v)) || v > (uint64_t)(end - p - (ptrdiff_t)n)) return NULL;
      *val = p + n;
      *num = v;
      return p + n + v;
    default: return NULL;
  }
}

int otlp_parse_partial_success(const uint8_t *body, size_t len, int64_t *rejected, char *msg, size_t msg_cap) {
  *rejected = 0;
  if (msg_cap) msg[0] = 0;
  const uint8_t *p = body, *end = body + len;
  while (p < end) {
    uint64_t tag, num = 0;
    const uint8_t *val = NULL;
    size_t n = read_varint(p, end, &tag);
    if (!n || !(p = skip_field(p + n, end, (unsigned)(tag & 7), &val, &num))) return -1;
    if (tag != ((1 << 3) | 2)) continue; /* partial_success = 1, length-delimited */
    const uint8_t *q = val, *qend = val + num;
    while (q < qend) {
      uint64_t t2, n2 = 0;
      const uint8_t *v2 = NULL;
      size_t m = read_varint(q, qend, &t2);
      if (!m || !(q = skip_field(q + m, qend, (unsigned)(t2 & 7), &v2, &n2))) return -1;
      if (t2 == ((1 << 3) | 0)) *rejected = (int64_t)n2;
      else if (t2 == ((2 << 3) | 2) && msg_cap) {
        size_t k = n2 < msg_cap - 1 ? (size_t)n2 : msg_cap - 1;
        memcpy(msg, v2, k);
        msg[k] = 0;
      }
    }
  }
  return 0;
}

static size_t write_varint(uint8_t *out, uint64_t v) {
  size_t n = 0;
  while (v >= 0x80) {
    out[n++] = (uint8_t)(v | 0x80);
    v >>= 7;
  }
  out[n++] = (uint8_t)v;
  return n;
}

size_t otlp_partial_body(int64_t rejected, const char *message, uint8_t *out, size_t cap) {
  size_t ml = message ? strlen(message) : 0;
  if (ml > OTLP_PARTIAL_MSG_MAX) ml = OTLP_PARTIAL_MSG_MAX;
  if (rejected <= 0 && ml == 0) return 0;
  uint8_t inner[OTLP_PARTIAL_MSG_MAX + 24];
  size_t il = 0;
  if (rejected > 0) {
    inner[il++] = 0x08; /* rejected_spans / rejected_log_records / rejected_data_points = 1 */
    il += write_varint(inner + il, (uint64_t)rejected);
  }
  if (ml) {
    inner[il++] = 0x12; /* error_message = 2 */
    il += write_varint(inner + il, ml);
    memcpy(inner + il, message, ml);
    il += ml;
  }
  if (il + 11 > cap) return 0;
  size_t len = 0;
  out[len++] = 0x0a; /* partial_success = 1 */
  len += write_varint(out + len, il);
  memcpy(out + len, inner, il);
  return len + il;
}

int otlp_respond_partial(hs_request_t *req, otlp_signal_t sig, otlp_encoding_t enc, int64_t rejected,
                         const char *message) {
  if (rejected == 0 && (!message || !*message)) return otlp_respond_success(req, enc);
  char out[1400];
  size_t len = 0;
  size_t ml = message ? strlen(message) : 0;
  if (ml > OTLP_PARTIAL_MSG_MAX) ml = OTLP_PARTIAL_MSG_MAX;
  if (enc == OTLP_ENC_JSON) {
    char esc[1024] = "", tmp[OTLP_PARTIAL_MSG_MAX + 1];
    memcpy(tmp, message ? message : "", ml);
    tmp[ml] = 0;
    size_t el = json_escape(tmp, esc, sizeof esc);
    if (el == (size_t)-1) el = 0;
    int n = snprintf(out, sizeof out, "{\"partialSuccess\":{\"%s\":\"%lld\",\"errorMessage\":\"%.*s\"}}",
                     rejected_json[sig], (long long)rejected, (int)el, esc);
    len = n < 0 ? 0 : (size_t)n;
  } else {
    len = otlp_partial_body(rejected, message, (uint8_t *)out, sizeof out);
  }
  return hs_respond(req, 200, otlp_content_type(enc), NULL, 0, out, len);
}
