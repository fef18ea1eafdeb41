/*
 * gateway/metrics — the gateway's own counters and their Prometheus text exposition (format 0.0.4).
 *
 * Counters live in one gw_metrics_t per worker loop, written only by that loop (no atomics, no locks on the
 * hot path); a scrape sums the workers' structs. Reads may see a counter mid-update on another thread; a
 * 64-bit aligned load is atomic on the platforms we build for, so a scrape can at worst lag by one event.
 */
#ifndef OTLPGW_METRICS_H
#define OTLPGW_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include "gateway/otlp_http.h"
#include "gateway/transport.h" /* TLS_N_FAIL_REASONS */

#define GW_SIGNAL_NONE OTLP_N_SIGNALS /* requests to no OTLP path */

/* The ingest protocol (label protocol="http|grpc" on every ingest series). */
enum { GW_PROTO_HTTP = 0, GW_PROTO_GRPC, GW_N_PROTOCOLS };
#define GW_N_GRPC_CODES 17 /* gRPC status codes 0..16, counted by name (gateway/grpc's grpc_code_name) */
#define GW_N_SIGNAL_LABELS (OTLP_N_SIGNALS + 1)

/* The status codes we count one by one; anything else is counted as "other". */
#define GW_STATUS_CODES(X) X(200) X(400) X(401) X(404) X(405) X(408) X(411) X(413) X(415) X(429) X(431) X(500) X(503)
enum {
#define GW_X(c) GW_CODE_##c,
  GW_STATUS_CODES(GW_X)
#undef GW_X
  GW_CODE_OTHER,
  GW_N_CODES
};

#define GW_HIST_BUCKETS 16
extern const double gw_duration_buckets[GW_HIST_BUCKETS];

typedef struct gw_histogram {
  uint64_t buckets[GW_HIST_BUCKETS]; /* non-cumulative; rendered cumulative */
  uint64_t count;
  double sum;
} gw_histogram_t;

/* A histogram of counts (backend_batch_parts: parts per backend request), buckets le 1, 2, 4, ... 1024. */
#define GW_COUNT_BUCKETS 11
typedef struct gw_count_histogram {
  uint64_t buckets[GW_COUNT_BUCKETS]; /* non-cumulative */
  uint64_t count;
  uint64_t sum;
} gw_count_histogram_t;

/* Outcome of one request to a backend (backend_requests_total{outcome}): success 2xx; retryable 429, 502,
 * 503, 504 (retried on the same backend); rejected 400, 413 (the data's fault: dropped, partial_success);
 * error a transport failure (retried); refused every other answer (401, 403, 404, 405, 407, 421, other 5xx,
 * ...): the backend refuses the gateway itself, so the part stays queued, the backend counts as failing and
 * what it holds is re-routed once it is ejected. */
enum {
  GW_OUTCOME_SUCCESS = 0,
  GW_OUTCOME_RETRYABLE,
  GW_OUTCOME_REJECTED,
  GW_OUTCOME_ERROR,
  GW_OUTCOME_REFUSED,
  GW_N_OUTCOMES
};
/* Why items were dropped (dropped_items_total{reason}). */
enum { GW_DROP_REJECTED = 0, GW_DROP_EXPIRED, GW_DROP_SHUTDOWN, GW_DROP_MALFORMED, GW_N_DROP_REASONS };

typedef struct gw_backend_metrics {
  uint64_t items[OTLP_N_SIGNALS];  /* items delivered (2xx) */
  uint64_t requests[GW_N_OUTCOMES];
  gw_histogram_t duration;
  /* Failed TLS handshakes of the gateway's connections to this backend (requests and health checks), by
   * tls_fail_t: tls_handshake_failures_total{side="backend"} sums them over backends and workers. */
  uint64_t tls_backend_failures[TLS_N_FAIL_REASONS];
} gw_backend_metrics_t;

/* What a scrape shows of one backend: its endpoint, counters (summed over workers by the caller), state. */
typedef struct gw_backend_view {
  const char *endpoint;
  const gw_backend_metrics_t *m;
  int up;
  uint64_t queue_bytes;   /* bytes held for this backend: retry queue (incl. retries in flight) + waiting for a connection */
  uint64_t retries;
  uint64_t spool_bytes;   /* of queue_bytes, parts with a spool record (backends.queue.directory) */
} gw_backend_view_t;

typedef struct gw_metrics {
  uint64_t requests[GW_N_SIGNAL_LABELS][GW_N_CODES];            /* OTLP/HTTP, by HTTP status */
  uint64_t grpc_requests[GW_N_SIGNAL_LABELS][GW_N_GRPC_CODES];  /* OTLP/gRPC, by gRPC status */
  uint64_t grpc_http_refusals;     /* gRPC streams answered with an HTTP error status (415), counted as "other" */
  uint64_t dropped_items[OTLP_N_SIGNALS][GW_N_DROP_REASONS];
  uint64_t received_items[GW_N_PROTOCOLS][OTLP_N_SIGNALS];
  uint64_t received_bytes[GW_N_PROTOCOLS][OTLP_N_SIGNALS][OTLP_N_CONTENT_ENCODINGS]; /* bytes on the wire */
  gw_histogram_t request_duration[GW_N_PROTOCOLS];
  gw_count_histogram_t backend_batch_parts; /* parts per backend request (gateway/batcher), all backends */
} gw_metrics_t;

/* Gauges owned by other modules, read at scrape time. */
typedef struct gw_metrics_gauges {
  uint64_t client_connections[GW_N_PROTOCOLS];
  uint64_t client_connections_rejected;
  uint64_t tls_client_failures[TLS_N_FAIL_REASONS]; /* failed TLS handshakes on the ingest listeners, by tls_fail_t */
  uint64_t backend_connections;
  uint64_t ring_backends;
  uint64_t ring_rebuilds;
  uint64_t spool_segments;        /* gateway/spool, summed over workers (0 without backends.queue.directory) */
  uint64_t spool_replayed_items;
  uint64_t spool_corrupt_records;
  uint64_t spool_write_errors;
  const gw_backend_view_t *backends;
  size_t n_backends;
} gw_metrics_gauges_t;

int gw_outcome(int status); /* HTTP status or negative transport error -> GW_OUTCOME_* */

int gw_status_index(int status);
void gw_histogram_observe(gw_histogram_t *h, double seconds);
void gw_count_histogram_observe(gw_count_histogram_t *h, uint64_t n);

/* Records one answered OTLP/HTTP request: signal may be GW_SIGNAL_NONE. */
void gw_metrics_request(gw_metrics_t *m, int signal, int status, double seconds);
/* Records one answered OTLP/gRPC call by its gRPC status code (0..16). */
void gw_metrics_grpc_request(gw_metrics_t *m, int signal, int grpc_code, double seconds);

/* "http" / "grpc". */
const char *gw_protocol_label(int protocol);

/* Renders the exposition of n workers' counters plus process_* metrics into a malloc'd string *out
 * (caller frees). Returns its length, or 0 on out of memory. */
size_t gw_metrics_render(const gw_metrics_t *workers, size_t n, const gw_metrics_gauges_t *g, char **out);

#endif
