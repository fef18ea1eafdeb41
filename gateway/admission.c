/*
 * gateway/admission — see admission.h. Owns the admission decision against each backend's queue budget
 * (backends.queue.max_bytes) and its "queue full" line; the bytes it weighs are counted elsewhere: queued and
 * retrying by gateway/retry_queue (q_bytes), client parts in flight by us_part_begin/end (inflight_bytes). While
 * the spool fails, a request whose part would need it (its backend has a retry queue, or is out of the ring) is
 * refused too: the rest keep flowing.
 */
#include "gateway/admission.h"

#include "gateway/log.h"
#include "gateway/upstream_internal.h"

int ad_admit(us_set_t *s, const bl_ring_t *ring, const bl_split_t *split, const us_backend_t **full) {
  uint64_t max = s->cfg->backends.queue.max_bytes;
  int spool_failing = rq_spool_failing(s, NULL);
  for (size_t i = 0; i < split->n_parts; i++) {
    if (!split->parts[i].len) continue;
    us_backend_t *b = bl_ring_member_ud(ring, (uint32_t)i);
    if (spool_failing && (b->q_bytes || !b->in_ring)) { /* "spool write failed" said why, rate-limited */
      *full = b;
      return -2;
    }
    if (b->q_bytes + b->inflight_bytes + split->parts[i].len <= max) continue;
    uint64_t held;
    if (gw_log_limit_take(&b->log_full, uv_hrtime(), LOG_REPEAT_NS, &held))
      gw_log(GW_LOG_WARN, "queue full", "backend", b->endpoint, "queued_bytes", gw_log_u64(b->q_bytes),
             "in_flight_bytes", gw_log_u64(b->inflight_bytes), "max_bytes", gw_log_u64(max), "client_answer", "503",
             "suppressed_since_last", gw_log_u64(held), NULL);
    *full = b;
    return -1;
  }
  return 0;
}
