/*
 * gateway/upstream — the pool of backend collectors and everything that keeps data flowing to it:
 * per-backend connection pools, health (active checks + passive ejection), the routing ring built over the
 * healthy backends, per-backend retry queues with backoff, re-routing of queued data when a backend goes
 * down or leaves, DNS discovery, and applying a reloaded backend list.
 *
 * Acknowledgement contract (DESIGN.md): a part handed to us_part_failed() is owned by the upstream from
 * then on and is delivered at least once, or dropped and counted (rejected, retry.max_elapsed, shutdown
 * deadline). Memory: admission (us_admit) keeps bytes in flight plus queued per backend under
 * queue.max_bytes; parts re-routed from a backend that went down may take a queue past it (they were
 * acknowledged already), and new requests are refused until it drains.
 *
 * Everything runs on one loop. Ring snapshots are reference-counted: a request keeps the one it was split
 * on; members' ud are us_backend_t*, kept alive by the parts that refer to them (us_part_begin/end).
 */
#ifndef OTLPGW_UPSTREAM_H
#define OTLPGW_UPSTREAM_H

#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>
#include <uv.h>

#include "balancer/ring.h"
#include "balancer/splice.h"
#include "config/config.h"
#include "gateway/backend.h"
#include "gateway/metrics.h"

typedef struct us_set us_set_t;
typedef struct us_backend us_backend_t;

/* Builds the backends of cfg (static now, DNS as answers come) and the first ring. cfg must outlive the
 * set until us_apply_config() hands it a new one. metrics: where dropped items are counted. */
int us_create(uv_loop_t *loop, const cfg_t *cfg, gw_metrics_t *metrics, us_set_t **out, char *err, size_t errlen);

/* How items of signal sig are routed under config c (routing.traces / logs / metrics). */
bl_route_t us_route(const cfg_t *c, int sig);

/* The current ring (not referenced: take a reference to keep it). Never NULL; may have 0 members. */
bl_ring_t *us_ring(const us_set_t *s);

/* Admission: 0 when every target of split (made on ring) has room for its part in its queue budget, else
 * -1 with *full set to the first backend without room (and a rate-limited "queue full" line logged). */
int us_admit(us_set_t *s, const bl_ring_t *ring, const bl_split_t *split, const us_backend_t **full);

const char *us_backend_endpoint(const us_backend_t *b);
be_pool_t *us_backend_pool(us_backend_t *b);

/* A client part of len bytes is being sent to b / has its answer (status as be_done_cb). us_part_end
 * counts the outcome (metrics, passive health) and releases b. */
void us_part_begin(us_backend_t *b, size_t len);
void us_part_end(us_backend_t *b, int sig, size_t len, uint64_t items, int status, uint64_t start_ns);

/* A client part failed retryably: copies the bytes (plain protobuf, the part as split) and takes over
 * delivery: b's retry queue while b is in the ring, else re-split onto the current ring. The queue backs off
 * from this failure as from a failed retry, and never for less than retry_after_s (the answer's Retry-After,
 * 0 = none). Returns 0, or -1 when out of memory (the caller must then refuse the client's request). */
int us_part_failed(us_set_t *s, us_backend_t *b, int sig, const struct iovec *iov, size_t n_iov, uint64_t items,
                   uint32_t retry_after_s);

/* Applies a reloaded config (backends added/removed/re-weighted, health-check, retry, queue, DNS
 * settings). Connections and in-flight requests are kept; removed backends' queues are re-routed. */
void us_apply_config(us_set_t *s, const cfg_t *cfg);

/* Bytes still queued or in flight on the retry path, summed over backends (0 = drained). */
uint64_t us_pending_bytes(const us_set_t *s);

/* Shutdown deadline: drops everything still queued (counted, reason "shutdown") and cancels every
 * request in flight; later failures are dropped too, never queued. */
void us_abandon(us_set_t *s);

/* Views for /metrics (non-removed backends). Returns the count written (<= cap). */
size_t us_backend_views(const us_set_t *s, gw_backend_view_t *out, size_t cap, uint64_t *backend_connections);
size_t us_backend_count(const us_set_t *s);
uint64_t us_ring_rebuilds(const us_set_t *s);

/* Stops checks, DNS and timers, destroys pools; the memory is freed once handles close (run the loop). */
void us_destroy(us_set_t *s);

#endif
