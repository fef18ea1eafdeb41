/*
 * gateway/upstream — the set of backend collectors: their lifetime (static backends and DNS discovery,
 * applying a reloaded backend list), per-backend connection pools, health (active checks + passive ejection),
 * and the routing ring built over the healthy backends, rebuilt as they come and go. What keeps failed data
 * flowing is gateway/retry_queue (per-backend retry queues, re-routing), what refuses a request before it is
 * sent is gateway/admission: both work on the backends of this set, whose structs only the three modules see
 * (gateway/upstream_internal.h); this header names neither.
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
#include "gateway/batcher.h"
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

const char *us_backend_endpoint(const us_backend_t *b);
be_pool_t *us_backend_pool(us_backend_t *b);

/* Where parts for b are sent (gateway/batcher: coalesced with others bound for b). Each backend request it makes
 * is counted once by the upstream (backend_requests_total, durations, backend_batch_parts, passive health). */
bt_t *us_backend_batcher(us_backend_t *b);

/* A client part of len bytes is being sent to b / has its answer: b is referenced and the bytes count as in
 * flight (gateway/admission) in between. us_part_end releases b; a retryable failure then goes to
 * rq_part_failed (gateway/retry_queue). */
void us_part_begin(us_backend_t *b, size_t len);
void us_part_end(us_backend_t *b, size_t len);

/* Applies a reloaded config (backends added/removed/re-weighted, health-check, retry, queue, DNS
 * settings). Connections and in-flight requests are kept; removed backends' queues are re-routed. */
void us_apply_config(us_set_t *s, const cfg_t *cfg);

/* Views for /metrics (non-removed backends). Returns the count written (<= cap). */
size_t us_backend_views(const us_set_t *s, gw_backend_view_t *out, size_t cap, uint64_t *backend_connections);
size_t us_backend_count(const us_set_t *s);
uint64_t us_ring_rebuilds(const us_set_t *s);

/* Drops what is still queued (as rq_abandon), stops checks, DNS and timers, destroys pools; the memory is freed
 * once handles close (run the loop). */
void us_destroy(us_set_t *s);

#endif
