/*
 * gateway/forward — decompress, transcode, validate + split, admit, forward, acknowledge: the one ingest path
 * (see forward.h). Front-ends call in; this module calls the upstream (pools, retry queues, admission) and never
 * a front-end, except through the request's done callback.
 *
 * Order of the refusals (each before anything is forwarded): too big after decompression, bad gzip, bad JSON,
 * malformed protobuf (with the byte offset), then an empty request is a success, then no backend up, then a
 * target backend's queue full. Every other request is split by balancer/ over the ring and its parts are sent to
 * their backends; the request is done once every part is delivered (2xx), refused as bad (400/413: dropped,
 * reported as rejected) or, after any other answer or a transport failure, handed to the retry queues (with
 * backends.queue.directory: once the retry queues report the part's spool record durable; a part that cannot be
 * stored turns the whole answer into 503 / UNAVAILABLE: nothing is acknowledged that was not stored).
 */
#include "gateway/forward.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "balancer/ring.h"
#include "balancer/splice.h"
#include "gateway/admission.h"
#include "gateway/backend.h"
#include "gateway/batcher.h"
#include "gateway/log.h"
#include "gateway/otlp_json.h"
#include "gateway/retry_queue.h"

#define NO_BACKEND_RETRY_AFTER_S 5
#define BACKEND_RETRY_AFTER_S 1
#define QUEUE_FULL_RETRY_AFTER_S 1
#define MEMORY_RETRY_AFTER_S 1 /* server.memory_limit reached */
#define SPOOL_RETRY_AFTER_S 1  /* the spool cannot store a part */

struct fw {
  us_set_t *up;
  gw_metrics_t *metrics;
  const cfg_t *cfg;
  bl_ring_t *validation_ring; /* one stand-in member: validates requests while no backend is up */
  uint64_t in_flight;
};

/* One request being forwarded: its parts are in flight to their backends. */
typedef struct fwd fwd_t;
typedef struct fwd_part {
  bt_part_t bp;  /* submitted to the backend's batcher (first: the callback's part is the fwd_part) */
  fwd_t *f;
  us_backend_t *be;
  uint32_t idx;  /* in f->split.parts: the plain bytes, for the retry queue */
} fwd_part_t;

struct fwd {
  fw_t *fw;
  fw_request_t req;
  uint8_t *plain;      /* decompressed or transcoded body */
  bl_split_t split;
  bl_ring_t *ring;     /* the snapshot the split was made on (referenced) */
  struct iovec whole;  /* pass-through: the body exactly as received */
  uint32_t pending;
  int retryable_failure;
  unsigned retry_after_s; /* of the failure's answer */
  char failure[200];
  int64_t rejected;
  char message[256];
  fwd_part_t parts[];
};

static const bl_shape_t *const shapes[OTLP_N_SIGNALS] = {&bl_shape_traces, &bl_shape_logs, &bl_shape_metrics};

fw_t *fw_create(us_set_t *up, gw_metrics_t *metrics, const cfg_t *cfg) {
  fw_t *fw = calloc(1, sizeof *fw);
  if (!fw) return NULL;
  static const bl_ring_member_t stand_in = {"validation", 1, NULL};
  if (!(fw->validation_ring = bl_ring_create(&stand_in, 1))) {
    free(fw);
    return NULL;
  }
  fw->up = up;
  fw->metrics = metrics;
  fw->cfg = cfg;
  return fw;
}

void fw_set_config(fw_t *fw, const cfg_t *cfg) { fw->cfg = cfg; }
const cfg_t *fw_config(const fw_t *fw) { return fw->cfg; }

int fw_authorized(const fw_t *fw, const hs_slice_t *h) {
  size_t n = fw->cfg->server.auth.n_bearer_tokens;
  if (n == 0) return 1;
  if (!h || h->len < 7 || strncasecmp(h->base, "Bearer ", 7) != 0) return 0;
  const char *tok = h->base + 7;
  size_t tl = h->len - 7;
  int ok = 0;
  for (size_t i = 0; i < n; i++) {
    const char *want = fw->cfg->server.auth.bearer_tokens[i];
    size_t wl = strlen(want);
    /* Constant time in the token's content for equal lengths. */
    unsigned char diff = (unsigned char)(wl != tl);
    for (size_t k = 0; k < tl && k < wl; k++) diff |= (unsigned char)(tok[k] ^ want[k]);
    ok |= diff == 0;
  }
  return ok;
}
uint64_t fw_in_flight(const fw_t *fw) { return fw->in_flight; }
int fw_backends_up(const fw_t *fw) { return bl_ring_size(us_ring(fw->up)) > 0; }

void fw_destroy(fw_t *fw) {
  if (!fw) return;
  bl_ring_unref(fw->validation_ring);
  free(fw);
}

/* The request's outcome, once; the caller frees what it holds afterwards (nothing of req is used after done). */
static void done(fw_t *fw, const fw_request_t *req, fw_status_t st, const char *msg, unsigned retry_after) {
  fw_result_t r = {.status = st, .retry_after_s = retry_after, .message = msg ? msg : "", .partial = ""};
  fw->in_flight--;
  req->done(req->ud, &r);
}

static void fwd_free(fwd_t *f) {
  bl_split_dispose(&f->split);
  bl_ring_unref(f->ring);
  free(f->plain);
  free(f);
}

static void fwd_finish(fwd_t *f) {
  fw_t *fw = f->fw;
  fw_request_t req = f->req;
  if (f->retryable_failure) {
    char msg[sizeof f->failure];
    memcpy(msg, f->failure, sizeof msg);
    unsigned ra = f->retry_after_s ? f->retry_after_s : BACKEND_RETRY_AFTER_S;
    fwd_free(f); /* before done: the front-end may free the body in it */
    done(fw, &req, FW_UNAVAILABLE, msg, ra);
    return;
  }
  char partial[sizeof f->message];
  memcpy(partial, f->message, sizeof partial);
  fw_result_t r = {.status = FW_OK, .message = "", .rejected = f->rejected, .partial = partial};
  fwd_free(f);
  fw->in_flight--;
  req.done(req.ud, &r);
}

/* rq_part_failed's answer for part p: queued (its record durable, with a spool), or not stored. */
static void on_part_queued(void *ud, int status) {
  fwd_part_t *p = ud;
  fwd_t *f = p->f;
  if (status < 0 && !f->retryable_failure) {
    f->retryable_failure = 1;
    f->retry_after_s = SPOOL_RETRY_AFTER_S;
    snprintf(f->failure, sizeof f->failure, "cannot store the part durably: %s", uv_strerror(status));
  }
  if (--f->pending == 0) fwd_finish(f);
}

/* The part's own outcome (gateway/batcher: what it would have got alone, also when it left in a batch). */
static void on_part_done(bt_part_t *bp, const bt_outcome_t *o) {
  fwd_part_t *p = (fwd_part_t *)bp;
  fwd_t *f = p->f;
  fw_t *fw = f->fw;
  int sig = f->req.signal;
  us_backend_t *be = p->be;
  bl_part_t *part = &f->split.parts[p->idx];
  int status = o->status;
  int outcome = gw_outcome(status);
  us_part_end(be, part->len);
  if (outcome == GW_OUTCOME_SUCCESS) {
    if (o->rejected > 0 || o->message[0]) {
      f->rejected += o->rejected;
      if (!f->message[0]) snprintf(f->message, sizeof f->message, "%s", o->message);
    }
  } else if (outcome == GW_OUTCOME_REJECTED) {
    /* The backend refused the part as bad: retrying cannot help. Dropped, counted, reported. */
    f->rejected += (int64_t)bp->items;
    fw->metrics->dropped_items[sig][GW_DROP_REJECTED] += bp->items;
    if (!f->message[0])
      snprintf(f->message, sizeof f->message, "backend %s rejected %llu %s with HTTP %d", us_backend_endpoint(be),
               (unsigned long long)bp->items, otlp_signal(sig)->items, status);
  } else {
    f->pending++; /* taken, the part holds f until on_part_queued reports it queued (or not stored) */
    if (rq_part_failed(fw->up, be, sig, part->iov, part->n_iov, bp->items, o->retry_after_s, on_part_queued, p) !=
        0) {
      /* Retryable, but it could not be queued (out of memory, the spool refusing, or shutting down past the
       * deadline): the client must send it again. */
      f->pending--;
      const char *why = NULL;
      if (!f->retryable_failure) {
        f->retryable_failure = 1;
        if (rq_spool_failing(fw->up, &why))
          snprintf(f->failure, sizeof f->failure, "cannot store the part durably: %s", why);
        else if (status < 0)
          snprintf(f->failure, sizeof f->failure, "backend %s unavailable: %s", us_backend_endpoint(be),
                   uv_strerror(status));
        else
          snprintf(f->failure, sizeof f->failure, "backend %s answered HTTP %d", us_backend_endpoint(be), status);
      }
    }
  }
  if (--f->pending == 0) fwd_finish(f);
}

/* The memory budget refused a decompressed or transcoded copy (stage): unavailable + retry, and a warn line at
 * most every 10 s per worker, as the HTTP server logs the bodies it refuses itself (stage=body). */
static void refuse_memory(fw_t *fw, const fw_request_t *req, const char *stage) {
  static _Thread_local gw_log_limit_t lim;
  uint64_t held = 0;
  if (gw_log_limit_take(&lim, uv_hrtime(), 10ull * 1000 * 1000 * 1000, &held))
    gw_log(GW_LOG_WARN, "memory limit reached, request refused", "server",
           req->protocol == GW_PROTO_GRPC ? "grpc" : "ingest", "stage", stage, "client_answer",
           req->protocol == GW_PROTO_GRPC ? "UNAVAILABLE" : "503", "suppressed_since_last", gw_log_u64(held), NULL);
  done(fw, req, FW_UNAVAILABLE, "memory limit reached: retry later", MEMORY_RETRY_AFTER_S);
}

/* otlp_gunzip_ex's reserve, through the front-end's. */
static int reserve_plain(void *ud, size_t bytes) {
  const fw_request_t *req = ud;
  return req->reserve ? req->reserve(req->ud, bytes, 0) : 0;
}

void fw_submit(fw_t *fw, const fw_request_t *reqp) {
  const fw_request_t *req = reqp;
  int sig = req->signal;
  int gzipped = req->compression == OTLP_CE_GZIP;
  fw->in_flight++;
  fw->metrics->received_bytes[req->protocol][sig][req->compression] += req->len;

  const uint8_t *body = req->body;
  size_t len = req->len;
  uint8_t *plain = NULL;
  if (gzipped) {
    int rc = otlp_gunzip_ex(req->body, req->len, fw->cfg->server.max_request_bytes, reserve_plain, (void *)req,
                            &plain, &len);
    if (rc == OTLP_EMEMORY) {
      refuse_memory(fw, req, "gunzip");
      return;
    }
    if (rc == OTLP_ETOOBIG) {
      done(fw, req, FW_TOO_BIG, "decompressed body exceeds server.max_request_bytes", 0);
      return;
    }
    if (rc != OTLP_OK) {
      done(fw, req, rc == OTLP_ENOMEM ? FW_INTERNAL : FW_INVALID,
           rc == OTLP_ENOMEM ? "out of memory" : "body is not valid gzip", 0);
      return;
    }
    body = plain;
  }
  if (req->encoding == OTLP_ENC_JSON) {
    /* Transcoded once into the equivalent protobuf request, which takes the protobuf path from here (the
     * client's answer stays JSON). */
    uint8_t *pb = NULL;
    size_t pb_len = 0;
    char jerr[300];
    int jr = oj_to_protobuf(sig, body, len, &pb, &pb_len, jerr, sizeof jerr);
    free(plain);
    plain = NULL;
    if (jr != 0) {
      done(fw, req, jr == -1 ? FW_INVALID : FW_INTERNAL, jr == -1 ? jerr : "out of memory", 0);
      return;
    }
    if (req->reserve && req->reserve(req->ud, pb_len, 0) != 0) { /* charged like a decompressed copy */
      free(pb);
      refuse_memory(fw, req, "json");
      return;
    }
    plain = pb;
    body = pb;
    len = pb_len;
  }
  /* With no backend up, the request is still validated and counted (on a one-member stand-in ring): an
   * empty request is a success and a malformed one invalid whatever the backends' state. */
  bl_ring_t *ring = us_ring(fw->up);
  int no_backend = bl_ring_size(ring) == 0;
  if (no_backend) ring = fw->validation_ring;
  bl_route_t route = us_route(fw->cfg, sig);

  size_t n = bl_ring_size(ring);
  fwd_t *f = calloc(1, sizeof *f + n * sizeof(fwd_part_t));
  if (!f) {
    free(plain);
    done(fw, req, FW_INTERNAL, "out of memory", 0);
    return;
  }
  f->fw = fw;
  f->req = *req;
  req = &f->req; /* the caller's struct may go away */
  f->plain = plain;
  f->ring = ring;
  bl_ring_ref(f->ring);
  bl_error_t err;
  int rc = bl_split(shapes[sig], route, body, len, f->ring, &f->split, &err);
  if (rc != 0) {
    char msg[300];
    snprintf(msg, sizeof msg, "%s", rc == -2 ? "out of memory" : err.msg); /* -1 malformed, -3 internal error */
    memset(&f->split, 0, sizeof f->split); /* nothing to dispose after a failed split */
    fw_request_t r = *req;
    fwd_free(f);
    done(fw, &r, rc == -1 ? FW_INVALID : FW_INTERNAL, msg, 0);
    return;
  }
  fw->metrics->received_items[req->protocol][sig] += f->split.items;
  if (f->split.n_targets == 0 || no_backend) { /* an empty request is a success (OTLP) */
    fw_request_t r = *req;
    int empty = f->split.n_targets == 0;
    fwd_free(f);
    if (empty) done(fw, &r, FW_OK, NULL, 0);
    else done(fw, &r, FW_UNAVAILABLE, "no backends available", NO_BACKEND_RETRY_AFTER_S);
    return;
  }
  const us_backend_t *full;
  int adm = ad_admit(fw->up, f->ring, &f->split, &full);
  if (adm != 0) {
    /* Refused whole before anything is forwarded, so the client's retry duplicates nothing. */
    char msg[300];
    const char *why = "write failed";
    if (adm == -2 && rq_spool_failing(fw->up, &why))
      snprintf(msg, sizeof msg, "spool unavailable: %s (backend %s needs it): retry later", why,
               us_backend_endpoint(full));
    else
      snprintf(msg, sizeof msg, "queue full for backend %s: retry later", us_backend_endpoint(full));
    fw_request_t r = *req;
    fwd_free(f);
    done(fw, &r, FW_UNAVAILABLE, msg, QUEUE_FULL_RETRY_AFTER_S);
    return;
  }
  f->pending = 1; /* held while submitting, so a synchronous failure cannot finish f under our feet */
  for (uint32_t i = 0; i < n; i++) {
    bl_part_t *part = &f->split.parts[i];
    if (part->len == 0) continue;
    fwd_part_t *fp = &f->parts[i];
    fp->f = f;
    fp->be = bl_ring_member_ud(f->ring, i);
    fp->idx = i;
    fp->bp = (bt_part_t){.sig = sig, .iov = part->iov, .n_iov = part->n_iov, .len = part->len,
                         .items = part->items, .done = on_part_done};
    if (f->split.n_targets == 1) {
      /* Pass-through: every item has one owner, so alone it goes on exactly as it came (a gzip body still gzip);
       * in a batch with other parts, as its plain bytes. A re-assembled part follows backends.compression. */
      if (gzipped && req->encoding == OTLP_ENC_PROTOBUF) {
        f->whole = (struct iovec){(void *)req->body, req->len};
        fp->bp.alone_iov = &f->whole;
        fp->bp.n_alone_iov = 1;
        fp->bp.alone_encoding = "gzip";
      } else {
        fp->bp.alone_iov = part->iov;
        fp->bp.n_alone_iov = part->n_iov;
      }
    }
    f->pending++;
    us_part_begin(fp->be, part->len);
    int src = bt_submit(us_backend_batcher(fp->be), &fp->bp);
    if (src < 0) {
      bt_outcome_t o = {.status = src, .message = ""};
      on_part_done(&fp->bp, &o);
    }
  }
  if (--f->pending == 0) fwd_finish(f);
}
