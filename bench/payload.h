/*
 * OTLP payload generator for the load tool, tests and benchmarks (prefix pl_).
 *
 * pl_payload_init() builds one Export{Trace,Logs,Metrics}ServiceRequest with protobuf-c, encodes it as protobuf
 * or OTLP/JSON, and records where every routing trace_id sits in the encoded body (span.trace_id, or
 * log_record.trace_id). pl_payload_rerandomize() then gives the same body fresh random trace IDs by overwriting
 * those bytes (or hex digits) in place: the body length never changes, so callers may keep buffers sized for it.
 *
 * Everything is a pure function of pl_options (seed included) except the timestamps (base_time_ns = 0 means now).
 * Functions return 0 or a negative errno; the payload owns its body and trace table until pl_payload_dispose().
 */
#ifndef OTLPGW_BENCH_PAYLOAD_H
#define OTLPGW_BENCH_PAYLOAD_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

typedef enum pl_signal { PL_TRACES = 0, PL_LOGS = 1, PL_METRICS = 2 } pl_signal;
#define PL_SIGNAL_COUNT 3

typedef enum pl_encoding { PL_PROTOBUF = 0, PL_JSON = 1 } pl_encoding;

/* "traces" | "logs" | "metrics"; "/v1/traces" ...; NULL for an out-of-range value. */
const char *pl_signal_name(pl_signal s);
const char *pl_signal_path(pl_signal s);
/* Parses a signal name; 0 or -EINVAL. */
int pl_signal_parse(const char *name, pl_signal *out);
/* "application/x-protobuf" | "application/json". */
const char *pl_content_type(pl_encoding e);

/* xoshiro256** seeded through splitmix64: fast, reproducible, not cryptographic. */
typedef struct pl_rng { uint64_t s[4]; } pl_rng;
void pl_rng_seed(pl_rng *rng, uint64_t seed);
uint64_t pl_rng_next(pl_rng *rng);
/* One splitmix64 step of x: derive independent seeds (e.g. one per connection) from one CLI seed. */
uint64_t pl_mix64(uint64_t x);

typedef struct pl_options {
  pl_signal signal;
  pl_encoding encoding;
  uint32_t items;        /* spans | log records | metric data points per request, >= 1 */
  uint32_t traces;       /* distinct trace IDs, 1..items (traces, logs); ignored for metrics */
  uint32_t resources;    /* resource entries, 1..items; 0 = min(3, items) */
  uint64_t seed;
  uint64_t base_time_ns; /* start of the generated time range; 0 = now */
} pl_options;

/* traces, protobuf, 100 items, 10 traces, 0 resources (auto), seed 1, now. */
void pl_options_default(pl_options *o);

/* One trace in a body: its current ID and how many spans (log records) carry it. */
typedef struct pl_trace {
  uint8_t id[16];
  uint32_t count;
} pl_trace;

typedef struct pl_payload {
  pl_signal signal;
  pl_encoding encoding;
  uint32_t items;          /* spans / log records / data points in the body */
  uint8_t *body;           /* owned, len bytes; JSON is also NUL-terminated (not counted in len) */
  size_t len;
  pl_trace *traces;        /* owned; the IDs in the body right now (empty for metrics) */
  size_t n_traces;
  /* private: where each trace_id is encoded (byte offset of the 16 bytes or the 32 hex digits) and whose it is */
  size_t *id_off;
  uint32_t *id_trace;
  size_t n_ids;
  pl_rng rng;
} pl_payload;

/*
 * Builds the body described by o into p (p need not be initialised). Returns 0, -EINVAL for bad options (items 0,
 * traces outside 1..items for traces/logs, resources > items), -ENOMEM, or -EPROTO if the encoded body does not
 * hold the IDs where the scan expected them (a bug). On failure p is left disposed.
 */
int pl_payload_init(pl_payload *p, const pl_options *o);
void pl_payload_dispose(pl_payload *p);
/* Gives every trace a fresh random non-zero ID, patched into the body in place; p->traces reflects the new IDs. */
void pl_payload_rerandomize(pl_payload *p);

/* 32 lowercase hex digits + NUL. */
void pl_trace_hex(const uint8_t id[16], char out[33]);

/*
 * Reusable gzip compressor with one output buffer (libdeflate). pl_gzip_compress() returns the compressed size
 * and points *out at g's buffer (valid until the next call or dispose), or a negative errno; the buffer only grows.
 */
typedef struct pl_gzip {
  struct libdeflate_compressor *c;
  uint8_t *buf;
  size_t cap;
} pl_gzip;

/* level 0..12 (libdeflate scale, 6 = default); 0, -EINVAL or -ENOMEM. */
int pl_gzip_init(pl_gzip *g, int level);
void pl_gzip_dispose(pl_gzip *g);
ssize_t pl_gzip_compress(pl_gzip *g, const void *in, size_t len, const uint8_t **out);

#endif
