/*
 * gateway/grpc — the gRPC layer over HTTP/2 that OTLP/gRPC needs, as pure functions on bytes (no I/O): the
 * 5-byte length-prefixed message framing across DATA frames, status codes and their names, the trailers
 * (grpc-status, percent-encoded grpc-message, grpc-status-details-bin with google.rpc.Status and
 * google.rpc.RetryInfo), grpc-timeout, the OTLP service paths and grpc.health.v1 messages.
 * Used by gateway/ingest_grpc, bench/otlp-sink --grpc and bench/otlp-load --grpc. Wire facts: OTLP-WIRE.md.
 */
#ifndef OTLPGW_GRPC_H
#define OTLPGW_GRPC_H

#include <stddef.h>
#include <stdint.h>

#include "gateway/http_server.h" /* hs_slice_t */

/* Status codes (the numbers are the wire's). */
typedef enum {
  GRPC_OK = 0,
  GRPC_CANCELLED = 1,
  GRPC_UNKNOWN = 2,
  GRPC_INVALID_ARGUMENT = 3,
  GRPC_DEADLINE_EXCEEDED = 4,
  GRPC_NOT_FOUND = 5,
  GRPC_ALREADY_EXISTS = 6,
  GRPC_PERMISSION_DENIED = 7,
  GRPC_RESOURCE_EXHAUSTED = 8,
  GRPC_FAILED_PRECONDITION = 9,
  GRPC_ABORTED = 10,
  GRPC_OUT_OF_RANGE = 11,
  GRPC_UNIMPLEMENTED = 12,
  GRPC_INTERNAL = 13,
  GRPC_UNAVAILABLE = 14,
  GRPC_DATA_LOSS = 15,
  GRPC_UNAUTHENTICATED = 16,
  GRPC_N_CODES
} grpc_code_t;

/* "OK", "INVALID_ARGUMENT", ... ("UNKNOWN" for numbers out of range). */
const char *grpc_code_name(int code);

/* ---- message framing: 1 byte compressed-flag, 4 bytes big-endian length, the message ------------------------ */

/* A deframer for one unary call: fed a stream's DATA bytes in any split, it collects exactly one message.
 * The caller owns the buffer it hands over once the length is known (see grpc_deframer_feed), so it can charge
 * it to a memory budget first. */
typedef struct grpc_deframer {
  uint8_t prefix[5];
  uint8_t n_prefix;      /* prefix bytes seen */
  uint8_t compressed;    /* the flag byte as sent: 1 = compressed, anything but 0 or 1 is a protocol error */
  uint32_t length;       /* message length, once n_prefix == 5 */
  uint8_t *buf;          /* the message, set by the caller at GRPC_DF_NEED_BUFFER */
  uint32_t have;         /* message bytes in buf */
  int state;             /* internal */
} grpc_deframer_t;

enum {
  GRPC_DF_MORE = 0,        /* consumed everything, wants more */
  GRPC_DF_NEED_BUFFER = 1, /* the prefix is complete: the caller checks d->length (and d->compressed), sets d->buf
                            * to a buffer of d->length bytes (may be NULL when length is 0), and feeds the rest
                            * again (*used says how many bytes of this call were consumed). Returned for an empty
                            * message (length 0) too, so the flag and length are checked in one place; the next
                            * feed (even of 0 bytes) then says DONE, and finish() already counts it complete. */
  GRPC_DF_DONE = 2,        /* the message is complete and every byte given was consumed; d->buf holds it */
  GRPC_DF_ERROR = -1,      /* bytes past a complete message (a unary call carries one message; *used counts the
                            * bytes up to its end), or a message of length > 0 fed without a buffer. Sticky. */
};

void grpc_deframer_init(grpc_deframer_t *d);
/* Feeds len bytes (data may be NULL when len is 0); *used = bytes consumed. Never reads past data + len nor
 * writes past d->buf + d->length; any split of the input gives the same result. */
int grpc_deframer_feed(grpc_deframer_t *d, const uint8_t *data, size_t len, size_t *used);
/* At END_STREAM: 1 when exactly one complete message was read, 0 when there was none at all (an empty body),
 * -1 when the stream ended inside a prefix or a message. */
int grpc_deframer_finish(const grpc_deframer_t *d);

/* Writes the 5-byte prefix for a message of len bytes. */
void grpc_frame_prefix(uint8_t out[5], int compressed, uint32_t len);

/* ---- metadata --------------------------------------------------------------------------------------------- */

/* grpc-timeout ("10S", "500m", "100u", "3n", "1H", "2M": 1 to 8 ASCII digits and a unit, nothing else, no
 * whitespace) in ms, u and n rounded up; -1 when malformed. "0S" is accepted (0: already expired). At most
 * 99999999 H, so no overflow. */
int64_t grpc_parse_timeout_ms(hs_slice_t v);

/* Percent-encodes msg for grpc-message (the spec's: bytes outside 0x20-0x7E and '%' as %XX) into out (cap bytes,
 * NUL-terminated, truncated at a whole escape). Returns the length written. */
size_t grpc_percent_encode(const char *msg, char *out, size_t cap);
/* The reverse, for clients and tests: %XX (either case) decoded, a malformed escape kept as it is (the spec says
 * not to lose the message); into out (cap bytes, NUL-terminated, truncated). Returns the length written. */
size_t grpc_percent_decode(hs_slice_t in, char *out, size_t cap);

/* google.rpc.Status{code, message, details: [Any{type.googleapis.com/google.rpc.RetryInfo, RetryInfo{
 * retry_delay: Duration{seconds}}}]} (details only when retry_delay_s > 0), base64 (no padding is needed by
 * gRPC, but padded is accepted; we write padded) for grpc-status-details-bin, into out (cap bytes, NUL-terminated).
 * Returns the length, or 0 when it does not fit (or when the Status is all defaults: code 0, no message, no
 * retry). Needs no scratch memory: the proto is built inside out and encoded in place. */
size_t grpc_status_details_bin(int code, const char *message, uint32_t retry_delay_s, char *out, size_t cap);
/* The unencoded google.rpc.Status bytes of the same (for tests and clients); 0 when it does not fit. */
size_t grpc_status_proto(int code, const char *message, uint32_t retry_delay_s, uint8_t *out, size_t cap);
/* Reads retry_delay seconds back from a grpc-status-details-bin value (base64 of google.rpc.Status, padded or
 * not), rounded up when it has nanos; -1 when no RetryInfo is among the details or anything is malformed.
 * Unknown fields and other details are skipped. For clients (otlp-load) and tests; mallocs only for values
 * over about 1 KiB. */
int64_t grpc_retry_delay_from_details(hs_slice_t b64);

/* ---- services --------------------------------------------------------------------------------------------- */

enum { GRPC_SVC_TRACES = 0, GRPC_SVC_LOGS = 1, GRPC_SVC_METRICS = 2, GRPC_SVC_HEALTH_CHECK = 3 };
/* The OTLP Export paths (index = otlp_signal_t) and grpc.health.v1.Health/Check; NULL out of range. */
const char *grpc_service_path(int svc);
/* GRPC_SVC_* for a :path (exact match), or -1 when the path names an unknown service or method. */
int grpc_service_from_path(hs_slice_t path);

/* grpc.health.v1: HealthCheckRequest{string service = 1} -> 0 and the service name (slice into the bytes), -1
 * when malformed (msg may be NULL when len is 0: service is then ""); HealthCheckResponse{status = 1} (serving
 * != 0: SERVING = 1, else NOT_SERVING = 2) written into out[8], returns its length (2). */
int grpc_health_parse_request(const uint8_t *msg, size_t len, hs_slice_t *service);
size_t grpc_health_response(int serving, uint8_t out[8]);

#endif
