/*
 * gateway/gateway — process wiring for one loop (an "app"): the upstream (backends, health, ring, retry queues),
 * the forwarder over it, the two front-ends that feed it (OTLP/HTTP on server.listen, OTLP/gRPC on
 * server.grpc_listen) and, on one loop, the telemetry listener (/metrics, /healthz, /readyz).
 *   front-ends (ingest_http, ingest_grpc) -> forward -> upstream (pools, retry queues, admission)
 * With backends.queue.directory, the app opens its loop's spool (gateway/spool) right after the upstream and hands
 * it to the retry queues, which replay the previous run's records onto the first ring.
 * Shutdown: stop accepting on both front-ends (gRPC connections get a GOAWAY), answer what is in flight, drain the
 * retry queues (or, at the deadline, leave what is spooled on disk), close the spool, then close telemetry.
 */
#include "gateway/gateway.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "balancer/ring.h"
#include "gateway/forward.h"
#include "gateway/h2_server.h"
#include "gateway/http_server.h"
#include "gateway/ingest_grpc.h"
#include "gateway/ingest_http.h"
#include "gateway/log.h"
#include "gateway/memory.h"
#include "gateway/metrics.h"
#include "gateway/retry_queue.h"
#include "gateway/spool.h"
#include "gateway/telemetry.h"
#include "gateway/tls_config.h"
#include "gateway/upstream.h"

#define TRIM_CHECK_MS 1000
#define DRAIN_POLL_MS 20

struct gw_app {
  uv_loop_t *loop;
  gw_app_opts_t opts;
  const cfg_t *cfg;      /* snap's: read-only, the same snapshot as every other worker loop's */
  cfg_snapshot_t *snap;  /* one reference, dropped when a reload replaces it or at destroy */
  us_set_t *up;          /* backends, health, ring, retry queues */
  sp_t *spool;           /* backends.queue.directory: this loop's on-disk log, used by up's retry queues */
  fw_t *fw;              /* the ingest path both front-ends call */
  ih_t *http;            /* OTLP/HTTP front-end */
  ig_t *grpc;            /* OTLP/gRPC front-end; NULL when server.grpc_listen is "" */
  hs_server_t *telemetry;
  gw_metrics_t metrics;
  char h2_answer[200];       /* what an HTTP/2 preface on the OTLP/HTTP port is told */
  uv_timer_t shutdown_timer; /* server.shutdown_timeout */
  uv_timer_t drain_timer;    /* polls the retry queues while draining */
  uv_timer_t trim_timer;     /* gives memory back to the kernel after a burst (on_trim_timer) */
  uv_work_t trim_work;
  int trimming;
  int timers_live;
  int shutting_down;
  int ingest_open;           /* front-end servers not yet closed */
  int ingest_closed;
  int deadline_passed;
  int finished;
  void (*done)(void *);
  void *done_ud;
};

/* ---- telemetry listener ---------------------------------------------------------------------------------- */

int gw_app_scrape(gw_app_t *app, gw_scrape_t *out) {
  memset(out, 0, sizeof *out);
  out->metrics = app->metrics;
  gw_metrics_gauges_t *g = &out->gauges;
  if (app->http) {
    g->client_connections[GW_PROTO_HTTP] = hs_server_stats(ih_server(app->http))->connections_open;
    g->client_connections_rejected += hs_server_stats(ih_server(app->http))->connections_rejected;
  }
  if (app->grpc) {
    g->client_connections[GW_PROTO_GRPC] = h2s_server_stats(ig_server(app->grpc))->connections_open;
    g->client_connections_rejected += h2s_server_stats(ig_server(app->grpc))->connections_rejected;
  }
  for (int r = 0; r < TLS_N_FAIL_REASONS; r++) {
    if (app->http) g->tls_client_failures[r] += hs_server_stats(ih_server(app->http))->tls_handshake_failures[r];
    if (app->grpc) g->tls_client_failures[r] += h2s_server_stats(ig_server(app->grpc))->tls_handshake_failures[r];
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
  if (app->spool) {
    const sp_stats_t *st = sp_stats(app->spool);
    g->spool_segments = st->segments;
    g->spool_replayed_items = st->replayed_items;
    g->spool_corrupt_records = st->corrupt_records;
    g->spool_write_errors = st->write_errors;
  }
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

/* server.tls for each new ingest connection: the running config's contexts (NULL: plaintext). After a SIGHUP that is
 * the new config's certificate pair; connections already open hold a reference on the old contexts. */
static tls_ctx_t *tls_for_http(void *ud) { return tc_get(((gw_app_t *)ud)->cfg)->http; }
static tls_ctx_t *tls_for_grpc(void *ud) { return tc_get(((gw_app_t *)ud)->cfg)->grpc; }

/* port_override: the port another worker already bound (its "host:0" resolved), else 0. One of hs / h2 is set. */
static int listen_on(hs_server_t *hs, h2s_server_t *h2, const char *hostport, uint16_t port_override, int reuseport,
                     const char *what, char *err, size_t errlen) {
  char *host = NULL;
  uint16_t port = 0;
  if (cfg_parse_hostport(hostport, &host, &port) != 0) {
    snprintf(err, errlen, "%s: invalid address \"%s\"", what, hostport);
    return -1;
  }
  if (port_override) port = port_override;
  int rc = hs ? hs_server_listen_ex(hs, host, port, reuseport) : h2s_server_listen(h2, host, port, reuseport);
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
  gm_set_limit(&gm_process, app->cfg->server.memory_limit); /* every worker sets the same value */
  hs_config_t tc = gw_telemetry_server_config(telemetry_on_request, app);
  const char *grpc_listen = app->cfg->server.grpc_listen;
  /* Completed once the gRPC listener is bound (its real address); the HTTP server reads it per answer. */
  snprintf(app->h2_answer, sizeof app->h2_answer,
           "this port speaks OTLP/HTTP/1.1 (POST /v1/traces, /v1/logs, /v1/metrics); OTLP/gRPC is off "
           "(server.grpc_listen is \"\")");
  if (us_create(loop, app->cfg, &app->metrics, &app->up, err, errlen) != 0) goto fail;
  const char *spool_dir = app->cfg->backends.queue.directory;
  if (spool_dir && *spool_dir) {
    /* The bytes on disk follow the retry queues', which queue.max_bytes bounds per backend: no bound of its own. */
    sp_config_t spc = {.directory = spool_dir,
                       .worker = opts->worker,
                       .n_workers = opts->n_workers ? opts->n_workers : 1,
                       .fsync = (sp_fsync_t)app->cfg->backends.queue.fsync};
    char why[512];
    if (sp_open(loop, &spc, &app->spool, why, sizeof why) != 0) {
      app->spool = NULL;
      snprintf(err, errlen, "backends.queue.directory %s: %s", spool_dir, why);
      goto fail;
    }
    rq_use_spool(app->up, app->spool);
  }
  if (!(app->fw = fw_create(app->up, &app->metrics, app->cfg)) ||
      ih_create(loop, app->fw, &app->metrics, opts->client_connections, app->h2_answer, &app->http) != 0 ||
      (grpc_listen && *grpc_listen && ig_create(loop, app->fw, &app->metrics, opts->client_connections, &app->grpc) != 0) ||
      (opts->telemetry && hs_server_create(loop, &tc, &app->telemetry) != 0)) {
    snprintf(err, errlen, "out of memory");
    goto fail;
  }
  hs_server_set_tls(ih_server(app->http), tls_for_http, app);
  if (app->grpc) h2s_server_set_tls(ig_server(app->grpc), tls_for_grpc, app);
  if (listen_on(ih_server(app->http), NULL, app->cfg->server.listen, opts->ingest_port, opts->reuseport,
                "server.listen", err, errlen) != 0)
    goto fail;
  if (app->grpc) {
    if (listen_on(NULL, ig_server(app->grpc), grpc_listen, opts->grpc_port, opts->reuseport, "server.grpc_listen",
                  err, errlen) != 0)
      goto fail;
    snprintf(app->h2_answer, sizeof app->h2_answer,
             "this port speaks OTLP/HTTP/1.1 (POST /v1/traces, /v1/logs, /v1/metrics); OTLP/gRPC is served on %s "
             "(server.grpc_listen)", h2s_server_address(ig_server(app->grpc)));
  }
  if (app->telemetry &&
      listen_on(app->telemetry, NULL, app->cfg->telemetry.listen, 0, 0, "telemetry.listen", err, errlen) != 0)
    goto fail;
  if (opts->worker == 0) {
    gw_log(GW_LOG_INFO, "listening", "server", "ingest", "addr", hs_server_address(ih_server(app->http)), NULL);
    if (app->grpc)
      gw_log(GW_LOG_INFO, "listening", "server", "grpc", "addr", h2s_server_address(ig_server(app->grpc)), NULL);
  }
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

static void finish_closed(gw_app_t *app);

/* The spool has closed (every append it had in flight answered, with the set still alive): the upstream goes. */
static void spool_closed(void *ud) {
  gw_app_t *app = ud;
  app->spool = NULL;
  rq_spool_detach(app->up);
  finish_closed(app);
}

static void finish(gw_app_t *app) {
  if (app->finished) return;
  app->finished = 1;
  if (app->up) {
    uint64_t left = rq_pending_bytes(app->up);
    if (left)
      gw_log(GW_LOG_WARN, app->spool ? "retry queues not drained by the shutdown deadline, kept in the spool"
                                     : "retry queues not drained by the shutdown deadline",
             "bytes", gw_log_u64(left), NULL);
  }
  if (app->up && app->spool) {
    /* Everything still queued lets go of its record (kept on disk), no new part is taken, then the spool closes:
     * the appends it still has in flight answer meanwhile (their parts kept on disk too). */
    rq_abandon(app->up);
    sp_close(app->spool, spool_closed, app);
    return;
  }
  finish_closed(app);
}

static void finish_closed(gw_app_t *app) {
  if (app->up) {
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
  if (app->ingest_open > 0 && --app->ingest_open > 0) return; /* the other front-end is still closing */
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
  if (!app->ingest_closed) {
    if (app->http) hs_server_abort(ih_server(app->http));
    if (app->grpc) h2s_server_abort(ig_server(app->grpc));
  }
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
  app->ingest_open = (app->http != NULL) + (app->grpc != NULL);
  if (!app->ingest_open) {
    ingest_closed(app);
    return;
  }
  /* Both are counted before either starts: a server with no connection may call back at once. */
  hs_server_t *http = app->http ? ih_server(app->http) : NULL;
  h2s_server_t *grpc = app->grpc ? ig_server(app->grpc) : NULL;
  if (http) hs_server_shutdown(http, ingest_closed, app);
  if (grpc) h2s_server_shutdown(grpc, ingest_closed, app);
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
  fw_set_config(app->fw, app->cfg);
  cfg_snapshot_unref(old); /* the upstream let go of it in us_apply_config */
  gw_log(GW_LOG_INFO, "config reloaded", "path", path ? path : "(defaults)", "backends",
         gw_log_u64(us_backend_count(app->up)), "generation", gw_log_u64(cfg_snapshot_generation(next)), NULL);
}

int gw_app_ready(const gw_app_t *app) {
  return !app->shutting_down && app->up && bl_ring_size(us_ring(app->up)) > 0;
}

uint16_t gw_app_ingest_port(const gw_app_t *app) { return hs_server_port(ih_server(app->http)); }
uint16_t gw_app_grpc_port(const gw_app_t *app) { return app->grpc ? h2s_server_port(ig_server(app->grpc)) : 0; }

void gw_app_destroy(gw_app_t *app) {
  if (!app) return;
  ih_destroy(app->http);
  ig_destroy(app->grpc);
  hs_server_destroy(app->telemetry);
  fw_destroy(app->fw);
  cfg_snapshot_unref(app->snap);
  free(app);
}
