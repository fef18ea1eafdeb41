/*
 * gateway/admission — whether a split request may be forwarded: every part must fit its backend's queue
 * budget (backends.queue.max_bytes over the bytes queued for retry plus the client parts in flight, as
 * gateway/upstream and gateway/retry_queue count them). A request that does not fit is refused (503) before
 * anything is sent, so memory stays bounded by what was admitted plus what was re-routed after acknowledging.
 */
#ifndef OTLPGW_ADMISSION_H
#define OTLPGW_ADMISSION_H

#include "balancer/ring.h"
#include "balancer/splice.h"
#include "gateway/upstream.h"

/* Admission: 0 when every target of split (made on ring) has room for its part in its queue budget, else
 * -1 with *full set to the first backend without room (and a rate-limited "queue full" line logged), or -2
 * while the spool fails (rq_spool_failing) with *full set to a target whose part would need it (a non-empty
 * retry queue, or out of the ring). */
int ad_admit(us_set_t *s, const bl_ring_t *ring, const bl_split_t *split, const us_backend_t **full);

#endif
