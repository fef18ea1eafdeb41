/*
 * gateway/otlp_http — the OTLP/HTTP layer over http_server: which signal a path is, which encodings a
 * request uses, gzip bodies, google.rpc.Status error bodies and Export*ServiceResponse success bodies.
 * One table drives all three signals. Used by the gateway's ingest handler and by bench/otlp-sink.
 */
#ifndef OTLPGW_OTLP_HTTP_H
#define OTLPGW_OTLP_HTTP_H

#include <protobuf-c/protobuf-c.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#include "gateway/http_server.h"

typedef enum { OTLP_TRACES = 0, OTLP_LOGS, OTLP_METRICS, OTLP_N_SIGNALS } otlp_signal_t;
typedef enum { OTLP_ENC_PROTOBUF = 0, OTLP_ENC_JSON, OTLP_N_ENCODINGS } otlp_encoding_t;
typedef enum { OTLP_CE_IDENTITY = 0, OTLP_CE_GZIP, OTLP_N_CONTENT_ENCODINGS } otlp_content_encoding_t;

typedef struct otlp_signal_info {
  const char *name;  /* "traces" */
  const char *path;  /* "/v1/traces" */
  const char *items; /* "spans", "log_records", "data_points" */
  const ProtobufCMessageDescriptor *request;
  const ProtobufCMessageDescriptor *response;
} otlp_signal_info_t;

enum {
  OTLP_OK = 0,
  OTLP_ETOOBIG = -1,  /* decompressed body over the limit -> 413 */
  OTLP_EBADGZIP = -2, /* -> 400 */
  OTLP_ENOMEM = -3,   /* -> 500 */
  OTLP_EINVALID = -4, /* not a valid Export*ServiceRequest -> 400 */
  OTLP_EMEMORY = -5,  /* the memory budget refused the output -> 503 + Retry-After */
};

const otlp_signal_info_t *otlp_signal(otlp_signal_t sig);

/* Signal for a request path ("/v1/traces"), or -1. */
int otlp_signal_from_path(hs_slice_t path);

/* Encoding from a Content-Type value (parameters ignored, case-insensitive), or -1 if missing/unsupported. */
int otlp_encoding_from_content_type(const hs_slice_t *content_type);
const char *otlp_content_type(otlp_encoding_t enc);

/* Content-Encoding: absent/"identity" -> OTLP_CE_IDENTITY, "gzip" (also "x-gzip") -> OTLP_CE_GZIP, else -1. */
int otlp_content_encoding(const hs_slice_t *content_encoding);

/* Decompresses a gzip body (one or more members) into a new buffer of at most max_out bytes, which
 * *out owns (free()). A body that would decompress past max_out fails with OTLP_ETOOBIG after having
 * allocated at most max_out bytes, whatever the gzip header claims. */
int otlp_gunzip(const uint8_t *in, size_t in_len, size_t max_out, uint8_t **out, size_t *out_len);
/* The same, charging the output to a memory budget as it grows: reserve(ud, bytes) is asked before the output
 * buffer is allocated (bytes = its size) and before each growth (bytes = the growth); non-zero fails with
 * OTLP_EMEMORY, the buffer freed. What was reserved (the final buffer's size on success) is the caller's to
 * give back. reserve may be NULL. */
int otlp_gunzip_ex(const uint8_t *in, size_t in_len, size_t max_out, int (*reserve)(void *ud, size_t bytes), void *ud,
                   uint8_t **out, size_t *out_len);

/* Gathers iov into one buffer and gzips it (libdeflate level 1: backend links favour speed) into a new
 * buffer *out owns (free()). Returns OTLP_OK or OTLP_ENOMEM. */
int otlp_gzip_iov(const struct iovec *iov, size_t n_iov, uint8_t **out, size_t *out_len);

/* Validates body as the signal's Export*ServiceRequest by decoding it with protobuf-c and counts its items
 * (spans, log records, data points) and resource entries. Returns OTLP_OK or OTLP_EINVALID. For otlp-sink
 * and tests: a full decode costs ~30x the gateway's wire scan (balancer/splice), which the gateway uses. */
int otlp_count_items(otlp_signal_t sig, const uint8_t *body, size_t len, uint64_t *items, uint64_t *resources);

/* Frees this thread's gzip (de)compressor (kept per thread for reuse); call before a worker thread ends. */
void otlp_thread_cleanup(void);

/* Data points of a decoded Metric: its one data member's (protobuf-c keeps the last one on the wire). */
struct Opentelemetry__Proto__Metrics__V1__Metric;
uint64_t otlp_metric_points(const struct Opentelemetry__Proto__Metrics__V1__Metric *m);

/* gRPC status code that goes into google.rpc.Status for an HTTP status. */
int otlp_grpc_code(int http_status);

/* Answers req with http_status and a google.rpc.Status{code, message} body in enc.
 * retry_after_s > 0 adds "Retry-After". Consumes req like hs_respond. */
int otlp_respond_status(hs_request_t *req, otlp_encoding_t enc, int http_status, const char *message,
                        unsigned retry_after_s, const hs_header_t *extra, size_t n_extra);

/* Answers req 200 with an empty Export*ServiceResponse in enc (zero bytes for protobuf, "{}" for JSON). */
int otlp_respond_success(hs_request_t *req, otlp_encoding_t enc);

/* Reads Export*ServiceResponse.partial_success from a backend's protobuf response body: rejected count and
 * error message (truncated to msg_cap). Returns 0 (absent fields are 0/""), or -1 when the body is not a
 * valid response. */
int otlp_parse_partial_success(const uint8_t *body, size_t len, int64_t *rejected, char *msg, size_t msg_cap);

/* Export*ServiceResponse{partial_success{rejected, message}} as protobuf bytes (the same field numbers for all three
 * signals; the message cut at OTLP_PARTIAL_MSG_MAX bytes) into out (cap bytes): its length, 0 when rejected <= 0 and
 * message is empty (an empty response) or when it does not fit. For OTLP/gRPC replies and otlp-sink. */
#define OTLP_PARTIAL_MSG_MAX 1000
size_t otlp_partial_body(int64_t rejected, const char *message, uint8_t *out, size_t cap);

/* Answers req 200 with Export*ServiceResponse{partial_success{rejected, message}} in enc (an empty
 * response when rejected == 0 and message is empty). */
int otlp_respond_partial(hs_request_t *req, otlp_signal_t sig, otlp_encoding_t enc, int64_t rejected,
                         const char *message);

/* Writes the Status body into out (cap bytes); returns its length, or 0 when it does not fit. */
size_t otlp_status_body(otlp_encoding_t enc, int http_status, const char *message, char *out, size_t cap);

#endif
