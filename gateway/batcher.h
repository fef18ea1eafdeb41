/*
 * gateway/batcher — coalescing of the parts bound for one backend (one batcher per backend per worker), between
 * the fan-out (gateway/forward, gateway/retry_queue) and the backend's connection pool (gateway/backend).
 *
 * Group commit, no timer: a submitted part waits in its signal's queue until the end of the current loop turn
 * (the group's uv_check handle, which runs right after the turn's I/O callbacks). There, the waiting parts of one
 * signal leave together as one POST, up to max_bytes / max_parts: concatenated Export*ServiceRequests are one
 * valid merged request (OTLP-WIRE.md), so a batch is just the parts' iovecs, nothing is copied. A batch leaves at
 * once when nothing is in flight to the backend; while a request is, a second one starts only when enough waits
 * (open_parts / open_bytes) or the newest request in flight is older than open_after_ns, and never more than
 * max_in_flight (one per connection: max_connections_per_backend).
 * So at low load a part leaves in the turn it was made in (nothing is delayed); under load, what comes while the
 * backend works on a request leaves together when it answers. A part larger than max_bytes leaves alone.
 *
 * Outcomes, per part, exactly what the part would have got alone:
 *   - 2xx without partial_success rejections: every part succeeded (a partial_success message without a
 *     rejection, a warning, is handed to every part);
 *   - a batch of several parts answered 400, or 2xx with partial_success rejecting > 0 items: each part is sent
 *     again alone (first in its queue), and gets that answer (a 2xx batch's accepted items may so arrive twice:
 *     at-least-once, the price of exact per-client counts);
 *   - a batch of several parts answered 413: split in two halves, each sent again as its own batch (recursively
 *     down to single parts; a single part answered 413 is rejected);
 *   - any other answer or a transport failure (status as be_done_cb): every part gets it.
 * The owner's request callback runs once per backend request (metrics, passive health: a failed batch counts
 * once), before the parts' callbacks.
 *
 * Encodings: a batch of several parts, and a part without an alternative, goes as plain protobuf, or gzipped once
 * per request with compress set (backends.compression: gzip). A part sent alone with an alternative (alone_iov:
 * a pass-through body exactly as the client sent it, e.g. still gzip) goes as that instead.
 *
 * Everything runs on the group's loop. Callbacks run from the loop (the check handle, a pool's callback, or
 * bt_cancel), never inside bt_submit.
 */
#ifndef OTLPGW_BATCHER_H
#define OTLPGW_BATCHER_H

#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>
#include <uv.h>

#include "gateway/backend.h"

typedef struct bt_group bt_group_t;
typedef struct bt bt_t;
typedef struct bt_part bt_part_t;

/* What decided one part: the answer of the backend request that carried it last. */
typedef struct bt_outcome {
  int status;             /* HTTP status (>= 100) or a negative libuv error, as be_done_cb */
  uint32_t retry_after_s; /* the answer's Retry-After, 0 when absent */
  int64_t rejected;       /* partial_success rejections of this part (> 0 only from an answer to it alone) */
  const char *message;    /* partial_success.error_message ("" when none); valid during the callback */
} bt_outcome_t;

/* A part: a complete Export*ServiceRequest in protobuf. Filled by the caller (embedded in its own struct), which
 * keeps it and the bytes its iovecs point to valid until done runs (exactly once per accepted bt_submit). */
struct bt_part {
  int sig;                       /* otlp signal: the path, and only parts of one signal share a batch */
  const struct iovec *iov;       /* plain protobuf */
  size_t n_iov;
  size_t len;                    /* total bytes of iov */
  uint64_t items;
  const struct iovec *alone_iov; /* NULL, or the bytes to send when the part leaves alone (pass-through) */
  size_t n_alone_iov;
  const char *alone_encoding;    /* Content-Encoding of alone_iov, NULL = identity */
  int queued;                    /* its bytes are counted as queued by the owner already (a retry): left out of
                                  * bt_unqueued_bytes */
  void (*done)(bt_part_t *p, const bt_outcome_t *o);
  /* the batcher's own: */
  bt_part_t *next;
  uint64_t seq;
  uint64_t seal;                 /* != 0: re-sent; leaves only with the parts of the same seal */
};

/* One backend request, once, before its parts' callbacks: sig, status (as be_done_cb), n_parts carried,
 * items in them, bytes sent (after compression), start_ns (uv_hrtime at send), final: the parts get this answer
 * (0: they are sent again alone or in halves, see above). */
typedef void (*bt_request_cb)(void *ud, int sig, int status, size_t n_parts, uint64_t items, size_t bytes,
                              uint64_t start_ns, int final);

/* How a batch is sent: be_send's contract (0 and cb runs once from the loop, or a negative error and it won't). */
typedef int (*bt_send_fn)(void *send_ud, const char *path, const char *content_type, const char *content_encoding,
                          const struct iovec *iov, size_t n_iov, be_done_cb cb, void *cb_ud);

typedef struct bt_config {
  uint32_t max_in_flight; /* backend requests in flight at once (max_connections_per_backend); 0 = 1 */
  size_t max_bytes;       /* backends.batch.max_bytes: plain bytes of one batch */
  uint32_t max_parts;     /* backends.batch.max_parts; 0 or 1 = no coalescing */
  int compress;           /* backends.compression: gzip */
  /* While a request is in flight already, another one starts only once open_parts parts (or open_bytes bytes)
   * wait: below that, what comes coalesces behind the one in flight and leaves when it is answered; above it, a
   * backend that is slow per request gets more connections, up to max_in_flight. 0 = at once (any free slot). */
  uint32_t open_parts;
  size_t open_bytes;
  /* ... and only while the newest request in flight is younger than this: a backend that has not answered within
   * it is slow (or a black hole), and what comes gets another connection at once. 0 = no age limit. */
  uint64_t open_after_ns;
} bt_config_t;

/* One per loop: the check handle that flushes the batchers with waiting parts at the end of each turn. */
int bt_group_create(uv_loop_t *loop, bt_group_t **out);
/* Closes the handle (run the loop to free it); every batcher of the group must be destroyed first. */
void bt_group_destroy(bt_group_t *g);

/* send/send_ud: where batches go (be_send on the backend's pool, through a wrapper); on_request/ud: the owner's
 * per-request callback (may be NULL). */
bt_t *bt_create(bt_group_t *g, const bt_config_t *cfg, bt_send_fn send, void *send_ud, bt_request_cb on_request,
                void *ud);
/* A reloaded config: applies to batches built from now on. */
void bt_set_config(bt_t *b, const bt_config_t *cfg);

/* Queues p (filled as above). 0, or UV_ECANCELED while bt_cancel runs (done will not run). */
int bt_submit(bt_t *b, bt_part_t *p);

/* Fails every waiting part now with UV_ECANCELED (callbacks run inside this call; bt_submit to b from them
 * fails). Batches in flight are the pool's: cancel it next (be_pool_cancel) and they fail the same way. */
void bt_cancel(bt_t *b);

/* Waiting parts and their bytes (not those in flight), backend requests in flight. */
size_t bt_waiting(const bt_t *b, uint64_t *bytes);
uint32_t bt_in_flight(const bt_t *b);
/* Bytes of the waiting parts not marked queued (client parts waiting for a connection: backend_queue_bytes). */
uint64_t bt_unqueued_bytes(const bt_t *b);

/* Fails what waits (as bt_cancel) and frees b. Requests in flight must have finished or been cancelled with
 * the pool before (their callbacks refer to b). */
void bt_destroy(bt_t *b);

#endif
