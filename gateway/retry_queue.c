/*
 * gateway/retry_queue — see retry_queue.h. Owns the parts the upstream took over (qpart_t): copying a failed
 * client part, each backend's FIFO queue and its backoff, the retries in flight (RETRY_CONCURRENCY per
 * backend, optionally gzipped), the sweep past retry.max_elapsed, re-splitting queued parts onto the current
 * ring, drops and their counting, the pending bytes, and giving everything up at the shutdown deadline. With a
 * spool (backends.queue.directory): appending a failed part before it is queued (the client's acknowledgement
 * waits for the record to be durable), each part's record reference (re-split pieces share it; delivery, a
 * rejection or an expiry retires it; the shutdown deadline keeps it on disk) and the replay at start.
 * Backend health, the ring and backend lifetime are gateway/upstream's (reached through upstream_internal.h).
 */
#include "gateway/retry_queue.h"

#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "gateway/spool.h"

#include "gateway/log.h"
#include "gateway/memory.h"
#include "gateway/otlp_http.h"
#include "gateway/upstream_internal.h"

#define RETRY_CONCURRENCY 8 /* retry-queue parts in flight per backend */

static const bl_shape_t *const shapes[OTLP_N_SIGNALS] = {&bl_shape_traces, &bl_shape_logs, &bl_shape_metrics};

static uint64_t rng_next(us_set_t *s) { /* xorshift64*: jitter only */
  s->rng ^= s->rng >> 12;
  s->rng ^= s->rng << 25;
  s->rng ^= s->rng >> 27;
  return s->rng * 0x2545F4914F6CDD1Dull;
}

/* ---- retry queues ------------------------------------------------------------------------------------- */

static void q_push(us_backend_t *b, qpart_t *q, int front) {
  q->be = b;
  b->q_bytes += q->len;
  if (q->rec) b->sp_bytes += q->len;
  if (!b->q_head) {
    q->next = NULL;
    b->q_head = b->q_tail = q;
  } else if (front) {
    q->next = b->q_head;
    b->q_head = q;
  } else {
    q->next = NULL;
    b->q_tail->next = q;
    b->q_tail = q;
  }
}

static qpart_t *q_pop(us_backend_t *b) {
  qpart_t *q = b->q_head;
  if (!q) return NULL;
  b->q_head = q->next;
  if (!b->q_head) b->q_tail = NULL;
  q->next = NULL;
  return q; /* its bytes stay counted in q_bytes while it is in flight */
}

/* q (popped, or finished in flight) no longer counts towards b's queue. */
static void q_unaccount(us_backend_t *b, const qpart_t *q) {
  b->q_bytes -= q->len;
  if (q->rec) b->sp_bytes -= q->len;
}

/* Replayed parts while the set has no backend at all to hold them (DNS discovery not answered yet): they wait
 * here until a ring exists (rq__reroute_stranded), expire, or stay in the spool at the shutdown deadline. */
static void stray_push(us_set_t *s, qpart_t *q) {
  q->be = NULL;
  q->next = NULL;
  s->stray_bytes += q->len;
  if (s->stray_tail) s->stray_tail->next = q;
  else s->stray_head = q;
  s->stray_tail = q;
}

/* Where q waits while it cannot be re-split: the backend it came from, else (replayed) the set's strays. */
static void hold(us_set_t *s, us_backend_t *from, qpart_t *q) {
  if (from) q_push(from, q, 0);
  else stray_push(s, q);
}

static qpart_t *qpart_new(us_set_t *s, int sig, const struct iovec *iov, size_t n_iov, uint64_t items,
                          uint64_t first_fail_ns) {
  size_t len = 0;
  for (size_t i = 0; i < n_iov; i++) len += iov[i].iov_len;
  qpart_t *q = malloc(sizeof *q + len);
  if (!q) return NULL;
  gm_force(&gm_process, sizeof *q + len); /* acknowledged data: charged to server.memory_limit, never refused */
  memset(q, 0, sizeof *q);
  q->set = s;
  q->sig = sig;
  q->items = items;
  q->first_fail_ns = first_fail_ns;
  q->len = len;
  size_t off = 0;
  for (size_t i = 0; i < n_iov; i++) {
    memcpy(q->data + off, iov[i].iov_base, iov[i].iov_len);
    off += iov[i].iov_len;
  }
  return q;
}

/* Frees q; its record reference goes with it (the last one retires the record: delivered, rejected, expired, or
 * re-split into pieces that hold their own references). */
static void qpart_free(qpart_t *q) {
  if (q->rec) sp_rec_unref(q->rec);
  gm_release(&gm_process, sizeof *q + q->len);
  free(q);
}

/* Gives q up: counted in dropped_items_total{reason} and logged (rate-limited per backend). */
static void drop(us_set_t *s, qpart_t *q, int reason, const char *detail) {
  static const char *const reasons[GW_N_DROP_REASONS] = {"rejected", "expired", "shutdown", "malformed"};
  us_backend_t *b = q->be;
  gw_log_limit_t *lim = b ? &b->log_dropped : &s->log_stray;
  uint64_t held = 0;
  if (reason == GW_DROP_SHUTDOWN && q->rec) { /* not lost: its record stays live on disk for the next start */
    sp_rec_abandon(q->rec);
    q->rec = NULL;
    if (gw_log_limit_take(lim, uv_hrtime(), LOG_REPEAT_NS, &held))
      gw_log(GW_LOG_WARN, "items kept in the spool for the next start", "backend", b ? b->endpoint : "", "signal",
             otlp_signal(q->sig)->name, "items", gw_log_u64(q->items), "detail", detail, "suppressed_since_last",
             gw_log_u64(held), NULL);
    qpart_free(q);
    return;
  }
  s->metrics->dropped_items[q->sig][reason] += q->items;
  if (gw_log_limit_take(lim, uv_hrtime(), LOG_REPEAT_NS, &held))
    gw_log(GW_LOG_WARN, "items dropped", "reason", reasons[reason], "backend", b ? b->endpoint : "", "signal",
           otlp_signal(q->sig)->name, "items", gw_log_u64(q->items), "detail", detail, "suppressed_since_last",
           gw_log_u64(held), NULL);
  qpart_free(q);
}

/* Hands q to its owner on the current ring. With no ring, it waits on the backend it came from (a replayed part,
 * from none: with the strays). Re-split pieces share q's spool record (one reference each). */
static void reroute(us_set_t *s, qpart_t *q) {
  us_backend_t *from = q->be;
  if (s->abandoned) {
    drop(s, q, GW_DROP_SHUTDOWN, "still queued at the shutdown deadline");
    return;
  }
  if (bl_ring_size(s->ring) == 0) {
    hold(s, from, q);
    return;
  }
  bl_split_t split;
  bl_error_t err;
  int rc = bl_split(shapes[q->sig], us_route(s->cfg, q->sig), q->data, q->len, s->ring, &split, &err);
  if (rc == -2) { /* out of memory: it waits where it was (re-routed again at the next rebuild, or expires) */
    hold(s, from, q);
    return;
  }
  if (rc != 0) { /* cannot happen for bytes that split once already; never lose them silently */
    drop(s, q, GW_DROP_MALFORMED, err.msg); /* -1 malformed, -3 internal error */
    return;
  }
  if (split.n_targets == 0) { /* nothing routable in it: nothing to deliver (its record is retired) */
    bl_split_dispose(&split);
    qpart_free(q);
    return;
  }
  if (split.n_targets == 1) {
    us_backend_t *to = bl_ring_member_ud(s->ring, split.single_target);
    bl_split_dispose(&split);
    q_push(to, q, 0);
    if (to->in_ring) rq__pump(to);
    return;
  }
  for (size_t i = 0; i < split.n_parts; i++) {
    bl_part_t *p = &split.parts[i];
    if (!p->len) continue;
    us_backend_t *to = bl_ring_member_ud(s->ring, (uint32_t)i);
    qpart_t *n = qpart_new(s, q->sig, p->iov, p->n_iov, p->items, q->first_fail_ns);
    if (!n) { /* out of memory: keep the whole part where it was (pieces already handed on may repeat) */
      bl_split_dispose(&split);
      hold(s, from, q);
      return;
    }
    if ((n->rec = q->rec)) sp_rec_ref(n->rec);
    q_push(to, n, 0);
    if (to->in_ring) rq__pump(to);
  }
  bl_split_dispose(&split);
  qpart_free(q);
}

static uint64_t backoff_ms(us_set_t *s, us_backend_t *b, uint32_t retry_after_s) {
  const cfg_t *c = s->cfg;
  uint64_t d = c->backends.retry.initial_interval_ms ? c->backends.retry.initial_interval_ms : 1;
  for (uint32_t i = 1; i < b->attempt && d < c->backends.retry.max_interval_ms; i++) d *= 2;
  if (d > c->backends.retry.max_interval_ms) d = c->backends.retry.max_interval_ms;
  d = d / 2 + rng_next(s) % (d / 2 + 1); /* jitter: [d/2, d] */
  uint64_t ra = (uint64_t)retry_after_s * 1000;
  if (ra > d) d = ra < c->backends.retry.max_elapsed_ms ? ra : c->backends.retry.max_elapsed_ms;
  return d ? d : 1;
}

/* A retry's own outcome (gateway/batcher: also when it left in a batch; the request itself, metrics and passive
 * health, was counted by the upstream). */
static void on_retry_done(bt_part_t *bp, const bt_outcome_t *o) {
  qpart_t *q = (qpart_t *)((char *)bp - offsetof(qpart_t, bp));
  us_set_t *s = q->set;
  us_backend_t *b = q->be;
  int status = o->status;
  uint64_t now = uv_hrtime();
  b->refs--;
  b->retry_inflight--;
  q_unaccount(b, q);
  int outcome = gw_outcome(status);
  if (outcome == GW_OUTCOME_SUCCESS) {
    b->attempt = 0;
    b->next_try_ns = 0;
    qpart_free(q);
  } else if (outcome == GW_OUTCOME_REJECTED) {
    drop(s, q, GW_DROP_REJECTED, "refused by the backend on retry");
  } else if (s->abandoned) {
    drop(s, q, GW_DROP_SHUTDOWN, "still queued at the shutdown deadline");
  } else if (now - q->first_fail_ns > s->cfg->backends.retry.max_elapsed_ms * MS_NS) {
    drop(s, q, GW_DROP_EXPIRED, "undelivered after backends.retry.max_elapsed");
  } else if (b->in_ring && status != UV_ECANCELED) {
    /* One failed request backs off once, however many retries it carried: the first of them sets the time. */
    if (b->next_try_ns <= now) {
      b->attempt++;
      b->next_try_ns = now + backoff_ms(s, b, o->retry_after_s) * MS_NS;
    }
    q_push(b, q, 1);
  } else {
    q->be = b;
    reroute(s, q);
  }
  if (b->in_ring) rq__pump(b);
  else us__release(b);
}

static void on_retry_timer(uv_timer_t *t) { rq__pump(t->data); }

/* Every second: parts that waited past retry.max_elapsed are dropped wherever they wait, also in the queue
 * of a backend that is down while no ring exists to re-route them to (retry_pump checks only what it sends). */
void rq__sweep(us_set_t *s) {
  uint64_t now = uv_hrtime(), max = s->cfg->backends.retry.max_elapsed_ms * MS_NS;
  for (qpart_t **pp = &s->stray_head, *prev = NULL; *pp;) {
    qpart_t *q = *pp;
    if (now - q->first_fail_ns <= max) {
      prev = q;
      pp = &q->next;
      continue;
    }
    *pp = q->next;
    if (s->stray_tail == q) s->stray_tail = prev;
    s->stray_bytes -= q->len;
    q->next = NULL;
    drop(s, q, GW_DROP_EXPIRED, "undelivered after backends.retry.max_elapsed");
  }
  for (us_backend_t *b = s->backends; b; b = b->next) {
    qpart_t **pp = &b->q_head, *prev = NULL;
    while (*pp) {
      qpart_t *q = *pp;
      if (now - q->first_fail_ns <= max) {
        prev = q;
        pp = &q->next;
        continue;
      }
      *pp = q->next;
      if (b->q_tail == q) b->q_tail = prev;
      q_unaccount(b, q);
      q->next = NULL;
      drop(s, q, GW_DROP_EXPIRED, "undelivered after backends.retry.max_elapsed");
    }
    if (!b->in_ring) us__release(b);
  }
}

/* Sends what waits in b's queue, a few at a time, once its backoff has passed. */
void rq__pump(us_backend_t *b) {
  us_set_t *s = b->set;
  if (!b->in_ring || s->destroyed) return;
  uint64_t now = uv_hrtime();
  if (b->q_head && b->next_try_ns > now) {
    uint64_t ms = (b->next_try_ns - now) / MS_NS + 1;
    if (!uv_is_active((uv_handle_t *)&b->retry_timer) || uv_timer_get_due_in(&b->retry_timer) > ms)
      uv_timer_start(&b->retry_timer, on_retry_timer, ms, 0);
    return;
  }
  /* Retries in flight (handed to the batcher, which sends them coalesced with each other and with client parts,
   * as many requests at once as the pool has connections): a batch's worth, at least RETRY_CONCURRENCY. */
  uint32_t cap = s->cfg->backends.batch.max_parts;
  if (cap < RETRY_CONCURRENCY) cap = RETRY_CONCURRENCY;
  while (b->q_head && b->retry_inflight < cap) {
    qpart_t *q = q_pop(b);
    if (now - q->first_fail_ns > s->cfg->backends.retry.max_elapsed_ms * MS_NS) {
      q_unaccount(b, q);
      drop(s, q, GW_DROP_EXPIRED, "undelivered after backends.retry.max_elapsed");
      continue;
    }
    q->iov.iov_base = q->data;
    q->iov.iov_len = q->len;
    q->start_ns = now;
    q->bp = (bt_part_t){.sig = q->sig, .iov = &q->iov, .n_iov = 1, .len = q->len, .items = q->items,
                        .queued = 1, .done = on_retry_done};
    int rc = bt_submit(b->batch, &q->bp);
    if (rc < 0) { /* the batcher is cancelling (b just left the ring): back off and try again */
      q_unaccount(b, q);
      q_push(b, q, 1);
      b->attempt++;
      uint64_t d = backoff_ms(s, b, 0);
      b->next_try_ns = now + d * MS_NS;
      uv_timer_start(&b->retry_timer, on_retry_timer, d, 0);
      return;
    }
    b->refs++;
    b->retry_inflight++;
    b->retries++;
  }
}

void rq__left_ring(us_backend_t *b) {
  uv_timer_stop(&b->retry_timer);
  b->attempt = 0;
  b->next_try_ns = 0;
}

/* Moves every part queued on a backend outside the ring to its new owners (retries in flight follow
 * when they fail). */
void rq__reroute_stranded(us_set_t *s) {
  if (bl_ring_size(s->ring) == 0) return;
  qpart_t *sq = s->stray_head;
  s->stray_head = s->stray_tail = NULL;
  s->stray_bytes = 0;
  while (sq) {
    qpart_t *next = sq->next;
    sq->next = NULL;
    reroute(s, sq);
    sq = next;
  }
  for (us_backend_t *b = s->backends; b; b = b->next) {
    if (b->in_ring || !b->q_head) continue;
    qpart_t *q = b->q_head;
    b->q_head = b->q_tail = NULL;
    while (q) {
      qpart_t *next = q->next;
      q_unaccount(b, q);
      q->next = NULL;
      reroute(s, q);
      q = next;
    }
  }
}

/* ---- client parts, drain, shutdown -------------------------------------------------------------------- */

/* Queues q, a client part of b's that failed (and whose record, with a spool, is durable). */
static void place(us_set_t *s, us_backend_t *b, qpart_t *q, uint32_t retry_after_s, uint64_t now) {
  q->be = b;
  if (b->in_ring) {
    /* The first failure with nothing queued starts a backoff (attempt 1) as a failed retry would; later ones
     * leave the exponent to the retries, so a burst of failing client parts does not jump to max_interval.
     * The backend's Retry-After holds either way. */
    if (!b->q_head && !b->retry_inflight) {
      b->attempt = 1;
      b->next_try_ns = now + backoff_ms(s, b, retry_after_s) * MS_NS;
    } else if (retry_after_s) {
      uint64_t ms = (uint64_t)retry_after_s * 1000, max = s->cfg->backends.retry.max_elapsed_ms;
      uint64_t until = now + (ms < max ? ms : max) * MS_NS;
      if (until > b->next_try_ns) b->next_try_ns = until;
    }
    q_push(b, q, 0);
    rq__pump(b);
  } else {
    reroute(s, q);
  }
}

/* ---- the spool ---------------------------------------------------------------------------------------- */

/* A failed part waiting for its record to be durable: counted in b's q_bytes (admission, the drain) and holding
 * b (refs) meanwhile, queued only once the record is durable. */
typedef struct pending_append {
  qpart_t *q;
  us_backend_t *b;
  uint32_t retry_after_s;
  void (*queued)(void *ud, int status);
  void *ud;
} pending_append_t;

static void spool_write_failed(us_set_t *s, int status) {
  s->spool_error = status;
  uint64_t held = 0;
  if (gw_log_limit_take(&s->log_spool, uv_hrtime(), LOG_REPEAT_NS, &held))
    gw_log(GW_LOG_WARN, "spool write failed", "error", uv_strerror(status), "path", s->cfg->backends.queue.directory,
           "client_answer", "503 for requests that need the spool", "suppressed_since_last", gw_log_u64(held), NULL);
}

static void spool_write_ok(us_set_t *s) {
  if (!s->spool_error) return;
  s->spool_error = 0;
  gw_log(GW_LOG_INFO, "spool writes succeed again", "path", s->cfg->backends.queue.directory, NULL);
}

static void on_durable(void *ud, int status, sp_rec_t *rec) {
  pending_append_t *pa = ud;
  qpart_t *q = pa->q;
  us_backend_t *b = pa->b;
  us_set_t *s = q->set;
  void (*queued)(void *, int) = pa->queued;
  void *qud = pa->ud;
  uint32_t retry_after_s = pa->retry_after_s;
  free(pa);
  b->refs--;
  b->q_bytes -= q->len;
  if (status < 0) { /* not stored: not queued either, the client is told to send it again */
    spool_write_failed(s, status);
    qpart_free(q);
    us__release(b);
    queued(qud, status);
    return;
  }
  spool_write_ok(s);
  q->rec = rec;
  if (s->abandoned) { /* the shutdown deadline passed meanwhile: durable, so kept for the next start */
    q->be = b;
    drop(s, q, GW_DROP_SHUTDOWN, "still queued at the shutdown deadline");
  } else {
    place(s, b, q, retry_after_s, uv_hrtime());
  }
  us__release(b);
  queued(qud, 0);
}

/* A record of the previous run: a part as any other re-routed one (max_elapsed counts from now). */
static void on_replayed(void *ud, int sig, const uint8_t *bytes, size_t len, uint64_t items, sp_rec_t *rec) {
  us_set_t *s = ud;
  struct iovec iov = {(void *)bytes, len};
  qpart_t *q = sig >= 0 && sig < OTLP_N_SIGNALS ? qpart_new(s, sig, &iov, 1, items, uv_hrtime()) : NULL;
  if (!q) { /* out of memory (or a signal this build does not know): it stays on disk for the next start */
    gw_log(GW_LOG_ERROR, "cannot replay a spool record, kept for the next start", "signal", gw_log_i64(sig),
           "items", gw_log_u64(items), NULL);
    sp_rec_abandon(rec);
    return;
  }
  q->rec = rec;
  reroute(s, q);
}

void rq_use_spool(us_set_t *s, sp_t *sp) {
  s->spool = sp;
  size_t n = sp_replay(sp, on_replayed, s);
  const sp_stats_t *st = sp_stats(sp);
  gw_log(GW_LOG_INFO, "spool replayed", "path", s->cfg->backends.queue.directory, "records", gw_log_u64(n), "items",
         gw_log_u64(st->replayed_items), "corrupt", gw_log_u64(st->corrupt_records), "segments",
         gw_log_u64(st->segments), NULL);
}

void rq_spool_detach(us_set_t *s) { s->spool = NULL; }

int rq_spool_failing(const us_set_t *s, const char **err) {
  if (!s->spool || !sp_stats(s->spool)->failing) return 0;
  if (err) *err = uv_strerror(s->spool_error ? s->spool_error : UV_EIO);
  return 1;
}

uint64_t rq_spool_bytes(const us_backend_t *b) { return b->sp_bytes; }

/* ---- client parts, drain, shutdown -------------------------------------------------------------------- */

int rq_part_failed(us_set_t *s, us_backend_t *b, int sig, const struct iovec *iov, size_t n_iov, uint64_t items,
                   uint32_t retry_after_s, void (*queued)(void *ud, int status), void *ud) {
  if (s->abandoned) return -1;
  uint64_t now = uv_hrtime();
  qpart_t *q = qpart_new(s, sig, iov, n_iov, items, now);
  if (!q) return -1;
  if (!s->spool) {
    place(s, b, q, retry_after_s, now);
    us__release(b);
    queued(ud, 0);
    return 0;
  }
  pending_append_t *pa = malloc(sizeof *pa);
  if (!pa) {
    qpart_free(q);
    return -1;
  }
  *pa = (pending_append_t){q, b, retry_after_s, queued, ud};
  b->refs++;
  b->q_bytes += q->len;
  struct iovec whole = {q->data, q->len};
  int rc = sp_append(s->spool, sig, &whole, 1, items, on_durable, pa);
  if (rc < 0) {
    b->refs--;
    b->q_bytes -= q->len;
    free(pa);
    qpart_free(q);
    spool_write_failed(s, rc);
    us__release(b);
    return -1;
  }
  return 0;
}

uint64_t rq_pending_bytes(const us_set_t *s) {
  uint64_t n = s->stray_bytes;
  for (const us_backend_t *b = s->backends; b; b = b->next) n += b->q_bytes;
  return n;
}

void rq_abandon(us_set_t *s) {
  s->abandoned = 1;
  while (s->stray_head) {
    qpart_t *q = s->stray_head;
    if (!(s->stray_head = q->next)) s->stray_tail = NULL;
    s->stray_bytes -= q->len;
    q->next = NULL;
    drop(s, q, GW_DROP_SHUTDOWN, "still queued at the shutdown deadline");
  }
  for (us_backend_t *b = s->backends; b; b = b->next) {
    for (qpart_t *q; (q = q_pop(b)) != NULL;) {
      q_unaccount(b, q);
      q->be = b;
      drop(s, q, GW_DROP_SHUTDOWN, "still queued at the shutdown deadline");
    }
  }
  for (us_backend_t *b = s->backends; b; b = b->next) {
    bt_cancel(b->batch);
    be_pool_cancel(b->pool);
  }
}
