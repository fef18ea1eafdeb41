/*
 * gateway/upstream_internal — PRIVATE to gateway/upstream.c, gateway/retry_queue.c and gateway/admission.c: the
 * structs they share (the set, a backend, a queued part) and the few calls between them. Nothing else includes
 * this; the rest of the gateway sees gateway/upstream.h, gateway/retry_queue.h and gateway/admission.h.
 *
 * Who owns which fields: upstream.c the set's backends, ring, timers, DNS and each backend's identity, pool,
 * health and refs; retry_queue.c the queue (q_head/q_tail, q_bytes, sp_bytes, retry_inflight, attempt, next_try_ns,
 * the retry_timer once it is initialised, retries) and set->rng, set->abandoned, set->spool*, set->stray*;
 * inflight_bytes is counted by us_part_begin/end and read by admission. Functions named xx__name are these
 * internal calls (libuv's uv__).
 */
#ifndef OTLPGW_UPSTREAM_INTERNAL_H
#define OTLPGW_UPSTREAM_INTERNAL_H

#include <stdint.h>
#include <sys/uio.h>
#include <uv.h>

#include "gateway/batcher.h"
#include "gateway/log.h"
#include "gateway/retry_queue.h"
#include "gateway/spool.h"
#include "gateway/transport.h"
#include "gateway/upstream.h"
#include "health/check.h"
#include "health/dns.h"

#define LOG_REPEAT_NS (10ull * 1000 * 1000 * 1000) /* one line per backend and event kind per 10 s */
#define MS_NS (1000ull * 1000)

enum { ORIGIN_STATIC = 1, ORIGIN_DNS = 2 };

typedef struct qpart qpart_t;

/* A part the upstream owns: failed once (or re-routed), waiting in a backend's retry queue or in flight
 * from it. The bytes are a complete Export*ServiceRequest in protobuf. */
struct qpart {
  qpart_t *next;
  us_set_t *set;
  us_backend_t *be;       /* the queue it is in, or the backend it is in flight to */
  int sig;
  uint64_t items;
  uint64_t first_fail_ns; /* retry.max_elapsed counts from here; re-routing keeps it */
  uint64_t start_ns;      /* of the current attempt */
  bt_part_t bp;           /* while submitted to the batcher of be (an attempt) */
  sp_rec_t *rec;          /* its on-disk record (one reference), NULL without backends.queue.directory */
  struct iovec iov;
  size_t len;
  uint8_t data[];
};

struct us_backend {
  us_set_t *set;
  us_backend_t *next;       /* every backend, removed ones too until they are freed */
  char *endpoint;
  char *host;
  uint16_t port;
  int tls;                  /* https:// (static) or backends.dns.scheme https (DNS) */
  char *path;               /* the endpoint's path prefix, "" or "/otlp" */
  char *sni;                /* the name TLS verifies unless backends.tls.server_name: the host, or for DNS backends
                             * backends.dns.hostname */
  tls_session_cache_t *tls_session; /* TLS resumption, shared by the pool and the checker; freed with b */
  int tls_failing;          /* its handshakes fail (not by a reset): requests failing with it log nothing more */
  uint32_t weight;
  unsigned origin;          /* ORIGIN_* that want it; 0 = removed */
  unsigned want;            /* reconcile's scratch */
  int in_ring;
  int cancel;               /* just left the ring, down: fail what is in flight to it */
  be_pool_t *pool;
  bt_t *batch;              /* coalesces what is sent to pool: client parts and retries */
  dns_name_t *name;         /* host's cached address, for the pool and the checker (health/dns) */
  hc_checker_t *checker;
  hc_state_t health;
  uint32_t consecutive_failures;
  uint32_t refusals;        /* refusals among the consecutive failures */
  uint32_t refusal_ejections; /* in a row, without a delivery in between: the hold-down's exponent */
  uint64_t hold_until_ns;   /* ejected for refusing us: checks cannot readmit it before this */
  uint32_t refs;            /* parts in flight to it (client parts and retries) */
  qpart_t *q_head, *q_tail; /* retry queue, FIFO */
  uint64_t q_bytes;         /* queued + retries in flight + parts waiting for their spool record to be durable */
  uint64_t sp_bytes;        /* the part of q_bytes that has a spool record (spool_bytes{backend}) */
  uint64_t inflight_bytes;  /* client parts in flight */
  uint32_t retry_inflight;
  uint32_t attempt;         /* consecutive failed retries: the backoff exponent */
  uint64_t next_try_ns;
  uv_timer_t retry_timer;   /* backoff */
  uv_timer_t readmit_timer; /* passive ejection without active checks: try again after an interval */
  int handles_open;
  uint64_t retries;
  gw_backend_metrics_t m;
  gw_log_limit_t log_failed, log_rejected, log_refused, log_full, log_dropped;
  gw_log_limit_t log_dns;   /* the host's lookups failing */
  gw_log_limit_t log_tls;   /* its TLS handshakes failing */
};

struct us_set {
  uv_loop_t *loop;
  const cfg_t *cfg;
  gw_metrics_t *metrics;
  us_backend_t *backends;
  bl_ring_t *ring;
  uint64_t ring_rebuilds;
  uv_timer_t rebuild_timer; /* state changes are applied from here, never inside a backend callback */
  uv_timer_t sweep_timer;   /* drops queued parts past retry.max_elapsed, also where no retry runs */
  dns_watch_t *dns;
  char **dns_addrs;         /* last DNS answer */
  size_t n_dns_addrs;
  gw_log_limit_t log_dns;
  uint64_t rng;
  bt_group_t *batch_group;  /* flushes the backends' batchers at the end of each loop turn */
  sp_t *spool;              /* backends.queue.directory: this loop's spool (the app's; NULL without one) */
  int spool_error;          /* the last failed append's error while the spool is failing, else 0 */
  gw_log_limit_t log_spool;  /* "spool write failed" */
  gw_log_limit_t log_stray;  /* drops of strays (they have no backend's limit) */
  qpart_t *stray_head, *stray_tail; /* replayed parts while no backend exists to hold them (re-routed later) */
  uint64_t stray_bytes;
  int abandoned;
  int destroyed;
  int handles_open;
};

/* ---- gateway/upstream.c, for the retry queues ---------------------------------------------------------- */

/* A part of b's ended or left its queue: a removed b is freed by the next rebuild once nothing refers to it
 * (never inside a callback of its own pool). */
void us__release(us_backend_t *b);
/* Passive health: counts the answer (status as be_done_cb) towards ejecting b, or resets the count. */
void us__passive_observe(us_backend_t *b, int status);
/* The batcher's settings under config c. */
bt_config_t us__batch_config(const cfg_t *c);

/* ---- gateway/retry_queue.c, for the backend set -------------------------------------------------------- */

/* Sends what waits in b's queue, a few at a time, once its backoff has passed (nothing while b is out of the
 * ring or the set is destroyed). */
void rq__pump(us_backend_t *b);
/* b just left the ring: its backoff stops and starts over when it returns. */
void rq__left_ring(us_backend_t *b);
/* Moves every part queued on a backend outside the ring to its new owners (retries in flight follow when they
 * fail). Nothing moves while the ring is empty. */
void rq__reroute_stranded(us_set_t *s);
/* The every-second sweep: drops parts queued past retry.max_elapsed, wherever they wait. */
void rq__sweep(us_set_t *s);

#endif
