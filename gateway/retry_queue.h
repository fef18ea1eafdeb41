/*
 * gateway/retry_queue — what the upstream owns after a client part failed: per-backend retry queues (FIFO, a
 * few retries in flight per backend) with exponential backoff and jitter, Retry-After, retry.max_elapsed, the
 * re-routing of queued parts onto the current ring when their backend goes down or leaves, drops (counted in
 * dropped_items_total{reason}), the bytes still pending for the SIGTERM drain, and the shutdown deadline.
 * The queues live on the backends of gateway/upstream (one loop, same set).
 *
 * Acknowledgement contract (DESIGN.md): a part handed to rq_part_failed() is owned by the upstream from
 * then on and is delivered at least once, or dropped and counted (rejected, retry.max_elapsed, shutdown
 * deadline). Memory: queued bytes count against queue.max_bytes with what is in flight (gateway/admission);
 * parts re-routed from a backend that went down may take a queue past it (they were acknowledged already),
 * and new requests are refused until it drains.
 */
#ifndef OTLPGW_RETRY_QUEUE_H
#define OTLPGW_RETRY_QUEUE_H

#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#include "gateway/upstream.h"

/* A client part failed retryably: copies the bytes (plain protobuf, the part as split) and takes over
 * delivery: b's retry queue while b is in the ring, else re-split onto the current ring. The queue backs off
 * from this failure as from a failed retry, and never for less than retry_after_s (the answer's Retry-After,
 * 0 = none). Returns 0, or -1 when out of memory (the caller must then refuse the client's request). */
int rq_part_failed(us_set_t *s, us_backend_t *b, int sig, const struct iovec *iov, size_t n_iov, uint64_t items,
                   uint32_t retry_after_s);

/* Bytes still queued or in flight on the retry path, summed over backends (0 = drained). */
uint64_t rq_pending_bytes(const us_set_t *s);

/* Shutdown deadline: drops everything still queued (counted, reason "shutdown") and cancels every
 * request in flight; later failures are dropped too, never queued. */
void rq_abandon(us_set_t *s);

#endif
