/*
 * gateway/retry_queue — what the upstream owns after a client part failed: per-backend retry queues (FIFO, a
 * few retries in flight per backend) with exponential backoff and jitter, Retry-After, retry.max_elapsed, the
 * re-routing of queued parts onto the current ring when their backend goes down or leaves, drops (counted in
 * dropped_items_total{reason}), the bytes still pending for the SIGTERM drain, and the shutdown deadline.
 * The queues live on the backends of gateway/upstream (one loop, same set).
 *
 * Acknowledgement contract (DESIGN.md): a part handed to rq_part_failed() is owned by the upstream from
 * then on and is delivered at least once, or dropped and counted (rejected, retry.max_elapsed, shutdown
 * deadline; with backends.queue.directory the part stays in the spool for the next start instead).
 * With a spool (gateway/spool), a part is acknowledged only once its record is durable, and keeps that record
 * (shared by its re-split pieces) until it is delivered, rejected or expired. Memory: queued bytes count
 * against queue.max_bytes with what is in flight (gateway/admission); parts re-routed from a backend that went
 * down may take a queue past it (they were acknowledged already), and new requests are refused until it drains.
 * The spool holds no more than the queues do: its bytes on disk are bounded by the same queue.max_bytes.
 */
#ifndef OTLPGW_RETRY_QUEUE_H
#define OTLPGW_RETRY_QUEUE_H

#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#include "gateway/spool.h"
#include "gateway/upstream.h"

/* A client part failed retryably: copies the bytes (plain protobuf, the part as split) and takes over
 * delivery: b's retry queue while b is in the ring, else re-split onto the current ring. The queue backs off
 * from this failure as from a failed retry, and never for less than retry_after_s (the answer's Retry-After,
 * 0 = none).
 * Returns 0 when it took the part; queued(ud, status) is then called exactly once: without a spool synchronously,
 * before rq_part_failed returns, with status 0; with one (rq_use_spool) from the loop, later, once the part's
 * record is durable (0: queued, the client may be acknowledged) or could not be stored (a negative libuv error:
 * nothing was queued, the client must be told to send it again). Returns -1 when it cannot take the part at all
 * (out of memory, past the shutdown deadline, the spool refusing at once): queued is never called and the
 * caller must refuse the client's request. */
int rq_part_failed(us_set_t *s, us_backend_t *b, int sig, const struct iovec *iov, size_t n_iov, uint64_t items,
                   uint32_t retry_after_s, void (*queued)(void *ud, int status), void *ud);

/* backends.queue.directory: from now on every part the retry queues take is appended to sp first (the set does
 * not own sp: the caller closes it after rq_spool_detach). Then hands every live record of the previous run
 * (sp_replay) to the retry queues, re-split onto the current ring (parts wait, as re-routed ones do, while no
 * backend is up), and logs "spool replayed" with the counts. Call once, right after us_create. */
void rq_use_spool(us_set_t *s, sp_t *sp);

/* Shutdown, after rq_abandon (or once drained): the set lets go of its spool; nothing of it is touched after. */
void rq_spool_detach(us_set_t *s);

/* The spool's last append failed and new ones fail until one succeeds (0 without a spool); err: its reason. */
int rq_spool_failing(const us_set_t *s, const char **err);

/* Bytes of parts with a spool record queued for b (spool_bytes{backend}). */
uint64_t rq_spool_bytes(const us_backend_t *b);

/* Bytes still queued or in flight on the retry path, summed over backends (0 = drained). */
uint64_t rq_pending_bytes(const us_set_t *s);

/* Shutdown deadline: drops everything still queued (counted, reason "shutdown"; with a spool its records stay on
 * disk, sp_rec_abandon, and nothing is counted as dropped) and cancels every request in flight; later failures
 * are dropped too, never queued. */
void rq_abandon(us_set_t *s);

#endif
