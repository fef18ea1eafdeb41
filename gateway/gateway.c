/*
 * gateway/gateway — the ingest and telemetry listeners wired to the config and to gateway/upstream (the
 * backends, their health, the ring and the retry queues).
 *
 * Ingest answers, in this order: 404 unknown path, 405 not POST, 401 missing/wrong bearer token, 411 no
 * body framing, 415 unsupported Content-Type / Content-Encoding (all from the headers, before the body is
 * read), then 413 body too large (decompressed), 400 bad gzip / malformed protobuf (with the byte offset),
 * 200 for an empty request, 503 when no backend is up, 503 when a target backend's queue budget is full
 * (nothing forwarded). Every other request is split by balancer/ over the ring and its parts are sent to
 * their backends; the client is answered once every part is delivered (2xx), refused as bad (400/413:
 * dropped, reported in partial_success) or, after any other answer or a transport failure, handed to the
 * upstream's retry queues: 200.
 * Shutdown: stop accepting, answer what is in flight, drain the retry queues, then close telemetry.
 */
#include "gateway/gateway.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "balancer/ring.h"
#include "balancer/splice.h"
#include "gateway/admission.h"
#include "gateway/backend.h"
#include "gateway/http_server.h"
#include "gateway/log.h"
#include "gateway/memory.h"
#include "gateway/metrics.h"
#include "gateway/otlp_http.h"
#include "gateway/otlp_json.h"
#include "gateway/retry_queue.h"
#include "gateway/telemetry.h"
#include "gateway/upstream.h"

#define NO_BACKEND_RETRY_AFTER_S 5
#define BACKEND_RETRY_AFTER_S 1
#define QUEUE_FULL_RETRY_AFTER_S 1
#define MEMORY_RETRY_AFTER_S 1 /* server.memory_limit reached */
#define TRIM_CHECK_MS 1000
#define DRAIN_POLL_MS 20
/* What a gRPC client (HTTP/2 with prior knowledge) is told on the OTLP/HTTP port. When OTLP/gRPC is served
 * (server.grpc_listen), this is where the answer names that address instead. */
#define INGEST_H2_ANSWER                                                                                          \
  "this port speaks OTLP/HTTP/1.1 (POST /v1/traces, /v1/logs, /v1/metrics); OTLP/gRPC over HTTP/2 is not served " \
  "by this version"

struct gw_app {
  uv_loop_t *loop;
  gw_app_opts_t opts;
  const cfg_t *cfg;      /* snap's: read-only, the same snapshot as every other worker loop's */
  cfg_snapshot_t *snap;  /* one reference, dropped when a reload replaces it or at destroy */
  us_set_t *up;          /* backends, health, ring, retry queues */
  bl_ring_t *validation_ring; /* one stand-in member: validates requests while no backend is up */
  hs_server_t *ingest;
  hs_server_t *telemetry;
  gw_metrics_t metrics; /* one worker for now */
  uv_timer_t shutdown_timer; /* server.shutdown_timeout */
  uv_timer_t drain_timer;    /* polls the retry queues while draining */
  uv_timer_t trim_timer;     /* gives memory back to the kernel after a burst (on_trim_timer) */
  uv_work_t trim_work;
  int trimming;
  int timers_live;
  int shutting_down;
  int ingest_closed;
  int deadline_passed;
  int finished;
  void (*done)(void *);
  void *done_ud;
};

/* Request facts decided from the headers, packed into hs_request_t.user. */
typedef union {
  void *ptr;
  struct {
    uint8_t signal;
    uint8_t encoding;
    uint8_t content_encoding;
  } f;
} req_facts_t;

static int bearer_ok(const gw_app_t *app, const hs_request_t *req) {
  size_t n = app->cfg->server.auth.n_bearer_tokens;
  if (n == 0) return 1;
  const hs_slice_t *h = hs_request_header(req, "Authorization");
  if (!h || h->len < 7 || strncasecmp(h->base, "Bearer ", 7) != 0) return 0;
  const char *tok = h->base + 7;
  size_t tl = h->len - 7;
  int ok = 0;
  for (size_t i = 0; i < n; i++) {
    const char *want = app->cfg->server.auth.bearer_tokens[i];
    size_t wl = strlen(want);
    /* Constant time in the token's content for equal lengths. */
    unsigned char diff = (unsigned char)(wl != tl);
    for (size_t k = 0; k < tl && k < wl; k++) diff |= (unsigned char)(tok[k] ^ want[k]);
    ok |= diff == 0;
  }
  return ok;
}

static void answer(gw_app_t *app, hs_request_t *req, int signal, otlp_encoding_t enc, int status, const char *msg,
                   unsigned retry_after, const hs_header_t *extra, size_t n_extra) {
  double secs = (double)(uv_hrtime() - req->start_ns) / 1e9;
  gw_metrics_request(&app->metrics, signal, status, secs);
  if (status == 200) otlp_respond_success(req, enc);
  else otlp_respond_status(req, enc, status, msg, retry_after, extra, n_extra);
}

static int ingest_on_headers(hs_request_t *req, void *ud) {
  gw_app_t *app = ud;
  int sig = otlp_signal_from_path(req->path);
  int enc = otlp_encoding_from_content_type(hs_request_header(req, "Content-Type"));
  otlp_encoding_t reply_enc = enc == OTLP_ENC_JSON ? OTLP_ENC_JSON : OTLP_ENC_PROTOBUF;
  int label = sig < 0 ? GW_SIGNAL_NONE : sig;
  char msg[256];
  if (sig < 0) {
    snprintf(msg, sizeof msg, "unknown path \"%.*s\": OTLP/HTTP paths are /v1/traces, /v1/logs and /v1/metrics",
             (int)(req->path.len > 100 ? 100 : req->path.len), req->path.base);
    answer(app, req, label, reply_enc, 404, msg, 0, NULL, 0);
    return 1;
  }
  if (req->method != HTTP_POST) {
    static const hs_header_t allow = {{"Allow", 5}, {"POST", 4}};
    answer(app, req, label, reply_enc, 405, "method not allowed: OTLP/HTTP uses POST", 0, &allow, 1);
    return 1;
  }
  if (!bearer_ok(app, req)) {
    static const hs_header_t www = {{"WWW-Authenticate", 16}, {"Bearer", 6}};
    answer(app, req, label, reply_enc, 401, "missing or invalid bearer token", 0, &www, 1);
    return 1;
  }
  if (req->content_length == HS_LEN_NONE) {
    answer(app, req, label, reply_enc, 411, "Content-Length or chunked Transfer-Encoding required", 0, NULL, 0);
    return 1;
  }
  if (enc < 0) {
    answer(app, req, label, reply_enc, 415,
           "unsupported Content-Type: use application/x-protobuf or application/json", 0, NULL, 0);
    return 1;
  }
  int ce = otlp_content_encoding(hs_request_header(req, "Content-Encoding"));
  if (ce < 0) {
    answer(app, req, label, reply_enc, 415, "unsupported Content-Encoding: use gzip or none", 0, NULL, 0);
    return 1;
  }
  req_facts_t f = {.ptr = NULL};
  f.f.signal = (uint8_t)sig;
  f.f.encoding = (uint8_t)enc;
  f.f.content_encoding = (uint8_t)ce;
  req->user = f.ptr;
  return 0;
}

/* One client request being forwarded: its parts are in flight to their backends. */
typedef struct fwd fwd_t;
typedef struct fwd_part {
  fwd_t *f;
  us_backend_t *be;
  uint32_t idx;          /* in f->split.parts: the plain bytes, for the retry queue */
  uint64_t items;
  uint64_t start_ns;
  uint8_t *gz;           /* backends.compression: gzip, the part compressed */
  struct iovec gz_iov;
} fwd_part_t;

struct fwd {
  gw_app_t *app;
  hs_request_t *req;
  int sig;
  otlp_encoding_t enc;
  uint8_t *plain;         /* decompressed body, when the client sent gzip */
  bl_split_t split;
  bl_ring_t *ring;        /* the snapshot the split was made on (referenced) */
  struct iovec whole;     /* pass-through: the body exactly as received */
  uint32_t pending;
  int retryable_failure;
  char failure[200];
  int64_t rejected;
  char message[256];
  fwd_part_t parts[];
};

static void fwd_free(fwd_t *f) {
  size_t n = f->ring ? bl_ring_size(f->ring) : 0;
  for (size_t i = 0; i < n; i++) free(f->parts[i].gz);
  bl_split_dispose(&f->split);
  bl_ring_unref(f->ring);
  free(f->plain);
  free(f);
}

static void fwd_finish(fwd_t *f) {
  gw_app_t *app = f->app;
  if (f->retryable_failure) {
    answer(app, f->req, f->sig, f->enc, 503, f->failure, BACKEND_RETRY_AFTER_S, NULL, 0);
  } else {
    double secs = (double)(uv_hrtime() - f->req->start_ns) / 1e9;
    gw_metrics_request(&app->metrics, f->sig, 200, secs);
    otlp_respond_partial(f->req, f->sig, f->enc, f->rejected, f->message);
  }
  fwd_free(f);
}

static void on_part_done(void *ud, int status, const uint8_t *body, size_t len, uint32_t retry_after) {
  fwd_part_t *p = ud;
  fwd_t *f = p->f;
  us_backend_t *be = p->be;
  bl_part_t *part = &f->split.parts[p->idx];
  int outcome = gw_outcome(status);
  us_part_end(be, f->sig, part->len, p->items, status, p->start_ns);
  if (outcome == GW_OUTCOME_SUCCESS) {
    int64_t rej = 0;
    char msg[200];
    if (len && otlp_parse_partial_success(body, len, &rej, msg, sizeof msg) == 0 && (rej > 0 || msg[0])) {
      f->rejected += rej;
      if (!f->message[0]) snprintf(f->message, sizeof f->message, "%s", msg);
    }
  } else if (outcome == GW_OUTCOME_REJECTED) {
    /* The backend refused the part as bad: retrying cannot help. Dropped, counted, reported. */
    f->rejected += (int64_t)p->items;
    f->app->metrics.dropped_items[f->sig][GW_DROP_REJECTED] += p->items;
    if (!f->message[0])
      snprintf(f->message, sizeof f->message, "backend %s rejected %llu %s with HTTP %d", us_backend_endpoint(be),
               (unsigned long long)p->items, otlp_signal(f->sig)->items, status);
  } else if (rq_part_failed(f->app->up, be, f->sig, part->iov, part->n_iov, p->items, retry_after) != 0) {
    /* Retryable, but it could not be queued (out of memory, or shutting down past the deadline): the
     * client must send it again. */
    if (!f->retryable_failure) {
      f->retryable_failure = 1;
      if (status < 0)
        snprintf(f->failure, sizeof f->failure, "backend %s unavailable: %s", us_backend_endpoint(be),
                 uv_strerror(status));
      else
        snprintf(f->failure, sizeof f->failure, "backend %s answered HTTP %d", us_backend_endpoint(be), status);
    }
  }
  if (--f->pending == 0) fwd_finish(f);
}

static const bl_shape_t *const shapes[OTLP_N_SIGNALS] = {&bl_shape_traces, &bl_shape_logs, &bl_shape_metrics};

/* otlp_gunzip_ex's reserve: a decompressed body is charged to its request, given back when it is answered. */
static int reserve_for_request(void *req, size_t bytes) { return hs_request_reserve(req, bytes, 0); }

/* The memory budget refused a decompressed or transcoded copy (stage): 503 + Retry-After, and a warn line at most
 * every 10 s per worker, as the HTTP server logs the bodies it refuses itself (stage=body). */
static void refuse_memory(gw_app_t *app, hs_request_t *req, int sig, otlp_encoding_t enc, const char *stage) {
  static _Thread_local gw_log_limit_t lim;
  uint64_t held = 0;
  if (gw_log_limit_take(&lim, uv_hrtime(), 10ull * 1000 * 1000 * 1000, &held))
    gw_log(GW_LOG_WARN, "memory limit reached, request refused", "server", "ingest", "stage", stage, "client_answer",
           "503", "suppressed_since_last", gw_log_u64(held), NULL);
  answer(app, req, sig, enc, 503, "memory limit reached: retry later", MEMORY_RETRY_AFTER_S, NULL, 0);
}

static void ingest_on_request(hs_request_t *req, void *ud) {
  gw_app_t *app = ud;
  req_facts_t facts = {.ptr = req->user};
  int sig = facts.f.signal;
  otlp_encoding_t enc = facts.f.encoding;
  int gzipped = facts.f.content_encoding == OTLP_CE_GZIP;
  app->metrics.received_bytes[sig][facts.f.content_encoding] += req->body_len;

  const uint8_t *body = req->body;
  size_t len = req->body_len;
  uint8_t *plain = NULL;
  if (gzipped) {
    int rc = otlp_gunzip_ex(req->body, req->body_len, app->cfg->server.max_request_bytes, reserve_for_request, req,
                            &plain, &len);
    if (rc == OTLP_EMEMORY) {
      refuse_memory(app, req, sig, enc, "gunzip");
      return;
    }
    if (rc == OTLP_ETOOBIG) {
      answer(app, req, sig, enc, 413, "decompressed body exceeds server.max_request_bytes", 0, NULL, 0);
      return;
    }
    if (rc != OTLP_OK) {
      answer(app, req, sig, enc, rc == OTLP_ENOMEM ? 500 : 400,
             rc == OTLP_ENOMEM ? "out of memory" : "body is not valid gzip", 0, NULL, 0);
      return;
    }
    body = plain;
  }
  if (enc == OTLP_ENC_JSON) {
    /* Transcoded once into the equivalent protobuf request, which takes the protobuf path from here (the
     * client's answer stays JSON). */
    uint8_t *pb = NULL;
    size_t pb_len = 0;
    char jerr[300];
    int jr = oj_to_protobuf(sig, body, len, &pb, &pb_len, jerr, sizeof jerr);
    free(plain);
    plain = NULL;
    if (jr != 0) {
      answer(app, req, sig, enc, jr == -1 ? 400 : 500, jr == -1 ? jerr : "out of memory", 0, NULL, 0);
      return;
    }
    if (hs_request_reserve(req, pb_len, 0) != 0) { /* the transcoded copy is charged like a decompressed one */
      free(pb);
      refuse_memory(app, req, sig, enc, "json");
      return;
    }
    plain = pb;
    body = pb;
    len = pb_len;
  }
  /* With no backend up, the request is still validated and counted (on a one-member stand-in ring): an
   * empty request is a 200 and a malformed one a 400 whatever the backends' state. */
  bl_ring_t *ring = us_ring(app->up);
  int no_backend = bl_ring_size(ring) == 0;
  if (no_backend) ring = app->validation_ring;
  bl_route_t route = us_route(app->cfg, sig);

  size_t n = bl_ring_size(ring);
  fwd_t *f = calloc(1, sizeof *f + n * sizeof(fwd_part_t));
  if (!f) {
    free(plain);
    answer(app, req, sig, enc, 500, "out of memory", 0, NULL, 0);
    return;
  }
  f->app = app;
  f->req = req;
  f->sig = sig;
  f->enc = enc;
  f->plain = plain;
  f->ring = ring;
  bl_ring_ref(f->ring);
  bl_error_t err;
  int rc = bl_split(shapes[sig], route, body, len, f->ring, &f->split, &err);
  if (rc != 0) {
    char msg[300];
    if (rc != -2) snprintf(msg, sizeof msg, "%s", err.msg); /* -1 malformed, -3 internal error */
    memset(&f->split, 0, sizeof f->split); /* nothing to dispose after a failed split */
    bl_ring_unref(f->ring);
    f->ring = NULL;
    fwd_free(f);
    answer(app, req, sig, enc, rc == -1 ? 400 : 500, rc == -2 ? "out of memory" : msg, 0, NULL, 0);
    return;
  }
  app->metrics.received_items[sig] += f->split.items;
  if (f->split.n_targets == 0) { /* an empty request is a success (OTLP/HTTP) */
    fwd_free(f);
    answer(app, req, sig, enc, 200, NULL, 0, NULL, 0);
    return;
  }
  if (no_backend) {
    fwd_free(f);
    answer(app, req, sig, enc, 503, "no backends available", NO_BACKEND_RETRY_AFTER_S, NULL, 0);
    return;
  }
  const us_backend_t *full;
  if (ad_admit(app->up, f->ring, &f->split, &full) != 0) {
    /* Refused whole before anything is forwarded, so the client's retry duplicates nothing. */
    char msg[300];
    snprintf(msg, sizeof msg, "queue full for backend %s: retry later", us_backend_endpoint(full));
    fwd_free(f);
    answer(app, req, sig, enc, 503, msg, QUEUE_FULL_RETRY_AFTER_S, NULL, 0);
    return;
  }
  const char *path = otlp_signal(sig)->path;
  const char *ctype = otlp_content_type(OTLP_ENC_PROTOBUF);
  uint64_t now = uv_hrtime();
  f->pending = 1; /* held while sending, so a synchronous failure cannot finish f under our feet */
  for (uint32_t i = 0; i < n; i++) {
    bl_part_t *part = &f->split.parts[i];
    if (part->len == 0) continue;
    fwd_part_t *fp = &f->parts[i];
    fp->f = f;
    fp->be = bl_ring_member_ud(f->ring, i);
    fp->idx = i;
    fp->items = part->items;
    fp->start_ns = now;
    const struct iovec *iov = part->iov;
    size_t n_iov = part->n_iov;
    const char *ce = NULL;
    if (f->split.n_targets == 1 && gzipped && enc == OTLP_ENC_PROTOBUF) {
      /* Pass-through: every item has one owner, so the body goes on exactly as it came, still gzip. */
      f->whole.iov_base = req->body;
      f->whole.iov_len = req->body_len;
      iov = &f->whole;
      n_iov = 1;
      ce = "gzip";
    } else if (f->split.n_targets > 1 && app->cfg->backends.compression == CFG_COMPRESSION_GZIP) {
      /* A re-assembled part follows backends.compression. */
      size_t zl;
      if (otlp_gzip_iov(iov, n_iov, &fp->gz, &zl) == OTLP_OK) {
        hs_request_reserve(req, zl, 1); /* freed with the request (fwd_free): charged to it, never refused */
        fp->gz_iov.iov_base = fp->gz;
        fp->gz_iov.iov_len = zl;
        iov = &fp->gz_iov;
        n_iov = 1;
        ce = "gzip";
      }
    }
    f->pending++;
    us_part_begin(fp->be, part->len);
    int src = be_send(us_backend_pool(fp->be), path, ctype, ce, iov, n_iov, on_part_done, fp);
    if (src < 0) on_part_done(fp, src, NULL, 0, 0);
  }
  if (--f->pending == 0) fwd_finish(f);
}

/* Errors the HTTP server answers itself (framing, timeouts, limits) get a google.rpc.Status body in the
 * request's encoding too, and are counted like every other answer. */
static size_t ingest_error_body(const hs_request_t *req, int status, const char *msg, char *out, size_t cap,
                                const char **content_type, void *ud) {
  gw_app_t *app = ud;
  int enc = req ? otlp_encoding_from_content_type(hs_request_header(req, "Content-Type")) : -1;
  int sig = req && req->path.base ? otlp_signal_from_path(req->path) : -1;
  otlp_encoding_t e = enc == OTLP_ENC_JSON ? OTLP_ENC_JSON : OTLP_ENC_PROTOBUF;
  double secs = req ? (double)(uv_hrtime() - req->start_ns) / 1e9 : 0;
  gw_metrics_request(&app->metrics, sig < 0 ? GW_SIGNAL_NONE : sig, status, secs);
  *content_type = otlp_content_type(e);
  return otlp_status_body(e, status, msg, out, cap);
}

/* ---- telemetry listener ---------------------------------------------------------------------------------- */

int gw_app_scrape(gw_app_t *app, gw_scrape_t *out) {
  memset(out, 0, sizeof *out);
  out->metrics = app->metrics;
  gw_metrics_gauges_t *g = &out->gauges;
  if (app->ingest) {
    g->client_connections = hs_server_stats(app->ingest)->connections_open;
    g->client_connections_rejected = hs_server_stats(app->ingest)->connections_rejected;
  }
  if (!app->up) return 0;
  size_t nb = us_backend_count(app->up);
  gw_backend_view_t *views = calloc(nb ? nb : 1, sizeof *views);
  if (!views) return -1;
  uint64_t backend_connections = 0;
  size_t n = us_backend_views(app->up, views, nb, &backend_connections);
  int rc = gw_scrape_set_views(out, views, n);
  free(views);
  g->backend_connections = backend_connections;
  g->ring_backends = bl_ring_size(us_ring(app->up));
  g->ring_rebuilds = us_ring_rebuilds(app->up);
  return rc;
}

/* One loop (server.workers: 1): probes from the app's own state, /metrics from a scrape of it. */
static void telemetry_on_request(hs_request_t *req, void *ud) {
  gw_app_t *app = ud;
  if (gw_telemetry_answer_probe(req, gw_app_ready(app), app->shutting_down)) return;
  gw_scrape_t sc;
  if (gw_app_scrape(app, &sc) != 0) hs_respond(req, 500, "text/plain", NULL, 0, "out of memory\n", 14);
  else gw_telemetry_answer_metrics(req, &sc, 1);
  gw_scrape_dispose(&sc);
}

/* ---- lifecycle ------------------------------------------------------------------------------------------- */

/* After a burst (usage fell a lot), malloc_trim gives the freed heap pages back to the kernel. It takes
 * ~100-250 ms after a 1.5 GB burst: it runs on libuv's thread pool, not on the ingest loop. Every worker's
 * timer checks; gm_trim_due lets one of them run it per drop. */
static void trim_work(uv_work_t *w) { gm_trim(); }
static void trim_done(uv_work_t *w, int status) { ((gw_app_t *)w->data)->trimming = 0; }
static void on_trim_timer(uv_timer_t *t) {
  gw_app_t *app = t->data;
  if (app->trimming || !gm_trim_due(&gm_process)) return;
  app->trim_work.data = app;
  app->trimming = uv_queue_work(app->loop, &app->trim_work, trim_work, trim_done) == 0;
}

/* port_override: the port another worker already bound (its "host:0" resolved), else 0. */
static int listen_on(hs_server_t *s, const char *hostport, uint16_t port_override, int reuseport, const char *what,
                     char *err, size_t errlen) {
  char *host = NULL;
  uint16_t port = 0;
  if (cfg_parse_hostport(hostport, &host, &port) != 0) {
    snprintf(err, errlen, "%s: invalid address \"%s\"", what, hostport);
    return -1;
  }
  int rc = hs_server_listen_ex(s, host, port_override ? port_override : port, reuseport);
  free(host);
  if (rc != 0) {
    snprintf(err, errlen, "%s: cannot listen on %s: %s", what, hostport, uv_strerror(rc));
    return -1;
  }
  return 0;
}

int gw_app_start(uv_loop_t *loop, cfg_snapshot_t *snap, const gw_app_opts_t *opts, gw_app_t **out, char *err,
                 size_t errlen) {
  static const gw_app_opts_t defaults = {.telemetry = 1};
  if (!opts) opts = &defaults;
  gw_app_t *app = calloc(1, sizeof *app);
  if (!app) {
    cfg_snapshot_unref(snap);
    snprintf(err, errlen, "out of memory");
    return -1;
  }
  app->loop = loop;
  app->opts = *opts;
  app->snap = snap;
  app->cfg = cfg_snapshot_cfg(snap);
  uv_timer_init(loop, &app->shutdown_timer);
  uv_timer_init(loop, &app->drain_timer);
  app->shutdown_timer.data = app->drain_timer.data = app;
  app->timers_live = 1;
  uv_timer_init(loop, &app->trim_timer); /* closed with the other two in finish() */
  app->trim_timer.data = app;
  uv_timer_start(&app->trim_timer, on_trim_timer, TRIM_CHECK_MS, TRIM_CHECK_MS);
  uv_unref((uv_handle_t *)&app->trim_timer);
  hs_config_t ic = {
      .name = "ingest",
      .max_body_bytes = app->cfg->server.max_request_bytes,
      .max_connections = app->cfg->server.max_connections,
      .read_timeout_ms = app->cfg->server.read_timeout_ms,
      .idle_timeout_ms = app->cfg->server.idle_timeout_ms,
      .on_headers = ingest_on_headers,
      .on_request = ingest_on_request,
      .error_body = ingest_error_body,
      .ud = app,
      .shared_connections = opts->client_connections,
      .mem_reserve = gm_reserve_cb, /* server.memory_limit: one budget for the process, all workers */
      .mem_release = gm_release_cb,
      .mem_ud = &gm_process,
      .mem_retry_after_s = MEMORY_RETRY_AFTER_S,
      .h2_answer = INGEST_H2_ANSWER,
  };
  gm_set_limit(&gm_process, app->cfg->server.memory_limit); /* every worker sets the same value */
  hs_config_t tc = gw_telemetry_server_config(telemetry_on_request, app);
  static const bl_ring_member_t stand_in = {"validation", 1, NULL};
  if (!(app->validation_ring = bl_ring_create(&stand_in, 1))) {
    snprintf(err, errlen, "out of memory");
    goto fail;
  }
  if (us_create(loop, app->cfg, &app->metrics, &app->up, err, errlen) != 0) goto fail;
  if (hs_server_create(loop, &ic, &app->ingest) != 0 ||
      (opts->telemetry && hs_server_create(loop, &tc, &app->telemetry) != 0)) {
    snprintf(err, errlen, "out of memory");
    goto fail;
  }
  if (listen_on(app->ingest, app->cfg->server.listen, opts->ingest_port, opts->reuseport, "server.listen", err,
                errlen) != 0)
    goto fail;
  if (app->telemetry &&
      listen_on(app->telemetry, app->cfg->telemetry.listen, 0, 0, "telemetry.listen", err, errlen) != 0)
    goto fail;
  if (opts->worker == 0) gw_log(GW_LOG_INFO, "listening", "server", "ingest", "addr", hs_server_address(app->ingest), NULL);
  if (app->telemetry)
    gw_log(GW_LOG_INFO, "listening", "server", "telemetry", "addr", hs_server_address(app->telemetry), NULL);
  *out = app;
  return 0;
fail:
  /* Whatever was opened is closed by running the loop once through the shutdown path. */
  app->deadline_passed = 1;
  gw_app_shutdown(app, NULL, NULL);
  uv_run(loop, UV_RUN_DEFAULT);
  gw_app_destroy(app);
  return -1;
}

/* ---- shutdown: stop accepting, answer in-flight requests, drain the retry queues, then close ----------- */

static void telemetry_closed(void *ud) {
  gw_app_t *app = ud;
  if (app->done) app->done(app->done_ud);
}

static void finish(gw_app_t *app) {
  if (app->finished) return;
  app->finished = 1;
  if (app->up) {
    uint64_t left = rq_pending_bytes(app->up);
    if (left) gw_log(GW_LOG_WARN, "retry queues not drained by the shutdown deadline", "bytes", gw_log_u64(left), NULL);
    us_destroy(app->up);
    app->up = NULL;
  }
  if (app->timers_live) {
    uv_close((uv_handle_t *)&app->shutdown_timer, NULL);
    uv_close((uv_handle_t *)&app->drain_timer, NULL);
    uv_close((uv_handle_t *)&app->trim_timer, NULL);
    app->timers_live = 0;
  }
  if (app->telemetry) hs_server_shutdown(app->telemetry, telemetry_closed, app);
  else telemetry_closed(app);
}

static void on_drain_poll(uv_timer_t *t);

/* Once every client request is answered, waits for the retry queues to empty (or the deadline). */
static void check_drained(gw_app_t *app) {
  if (app->finished || !app->ingest_closed) return;
  if (!app->up || app->deadline_passed || rq_pending_bytes(app->up) == 0) {
    finish(app);
    return;
  }
  uv_timer_start(&app->drain_timer, on_drain_poll, DRAIN_POLL_MS, 0);
}

static void on_drain_poll(uv_timer_t *t) { check_drained(t->data); }

static void ingest_closed(void *ud) {
  gw_app_t *app = ud;
  app->ingest_closed = 1;
  if (app->up && rq_pending_bytes(app->up))
    gw_log(GW_LOG_INFO, "draining retry queues", "bytes", gw_log_u64(rq_pending_bytes(app->up)), NULL);
  check_drained(app);
}

static void on_shutdown_deadline(uv_timer_t *t) {
  gw_app_t *app = t->data;
  gw_log(GW_LOG_WARN, "shutdown deadline reached, closing open connections and dropping what is still queued", NULL);
  app->deadline_passed = 1;
  if (app->up) rq_abandon(app->up);
  if (app->ingest && !app->ingest_closed) hs_server_abort(app->ingest);
  if (app->telemetry) hs_server_abort(app->telemetry);
  check_drained(app);
}

void gw_app_shutdown(gw_app_t *app, void (*done)(void *ud), void *ud) {
  if (app->shutting_down) return;
  app->shutting_down = 1;
  app->done = done;
  app->done_ud = ud;
  if (app->timers_live && !app->deadline_passed) {
    uv_timer_start(&app->shutdown_timer, on_shutdown_deadline, app->cfg->server.shutdown_timeout_ms + 1, 0);
    uv_unref((uv_handle_t *)&app->shutdown_timer);
  }
  if (app->ingest) hs_server_shutdown(app->ingest, ingest_closed, app);
  else ingest_closed(app);
}

/* ---- reload ---------------------------------------------------------------------------------------------- */

void gw_app_reload(gw_app_t *app, cfg_snapshot_t *next, const char *path) {
  if (app->shutting_down || !app->up) {
    cfg_snapshot_unref(next);
    return;
  }
  /* Backends, health checks, retry, queue, routing and DNS settings apply now; the listeners' settings
   * apply at restart; backends' connection settings (headers, request_timeout, max_connections_per_backend)
   * apply to what they send from now on. */
  cfg_snapshot_t *old = app->snap;
  us_apply_config(app->up, cfg_snapshot_cfg(next));
  app->snap = next;
  app->cfg = cfg_snapshot_cfg(next);
  cfg_snapshot_unref(old); /* the upstream let go of it in us_apply_config */
  gw_log(GW_LOG_INFO, "config reloaded", "path", path ? path : "(defaults)", "backends",
         gw_log_u64(us_backend_count(app->up)), "generation", gw_log_u64(cfg_snapshot_generation(next)), NULL);
}

int gw_app_ready(const gw_app_t *app) {
  return !app->shutting_down && app->up && bl_ring_size(us_ring(app->up)) > 0;
}

uint16_t gw_app_ingest_port(const gw_app_t *app) { return hs_server_port(app->ingest); }

void gw_app_destroy(gw_app_t *app) {
  if (!app) return;
  hs_server_destroy(app->ingest);
  hs_server_destroy(app->telemetry);
  bl_ring_unref(app->validation_ring);
  cfg_snapshot_unref(app->snap);
  free(app);
}
