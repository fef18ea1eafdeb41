/*
 * gateway/gateway — ingest and telemetry listeners wired to the config.
 *
 * Ingest answers, in this order: 404 unknown path, 405 not POST, 401 missing/wrong bearer token, 411 no
 * body framing, 415 unsupported Content-Type / Content-Encoding (all from the headers, before the body is
 * read), then 413 body too large (decompressed), 400 bad gzip / bad protobuf, 200 for an empty request.
 * Routing to backends is not built yet (balancer/ issue), so every other valid request is 503
 * "no backends" with Retry-After: the gateway never acknowledges data it cannot deliver.
 */
#include "gateway/gateway.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "gateway/http_server.h"
#include "gateway/log.h"
#include "gateway/metrics.h"
#include "gateway/otlp_http.h"

#define NO_BACKEND_RETRY_AFTER_S 5

struct gw_app {
  uv_loop_t *loop;
  cfg_t cfg;
  hs_server_t *ingest;
  hs_server_t *telemetry;
  gw_metrics_t metrics; /* one worker for now */
  uv_timer_t shutdown_timer;
  int shutdown_timer_live;
  int pending_servers;
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
  size_t n = app->cfg.server.auth.n_bearer_tokens;
  if (n == 0) return 1;
  const hs_slice_t *h = hs_request_header(req, "Authorization");
  if (!h || h->len < 7 || strncasecmp(h->base, "Bearer ", 7) != 0) return 0;
  const char *tok = h->base + 7;
  size_t tl = h->len - 7;
  int ok = 0;
  for (size_t i = 0; i < n; i++) {
    const char *want = app->cfg.server.auth.bearer_tokens[i];
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

static void ingest_on_request(hs_request_t *req, void *ud) {
  gw_app_t *app = ud;
  req_facts_t f = {.ptr = req->user};
  int sig = f.f.signal;
  otlp_encoding_t enc = f.f.encoding;
  app->metrics.received_bytes[sig][f.f.content_encoding] += req->body_len;

  const uint8_t *body = req->body;
  size_t len = req->body_len;
  uint8_t *plain = NULL;
  if (f.f.content_encoding == OTLP_CE_GZIP) {
    int rc = otlp_gunzip(req->body, req->body_len, app->cfg.server.max_request_bytes, &plain, &len);
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
    free(plain);
    answer(app, req, sig, enc, 415, "OTLP/JSON is not routed yet: send application/x-protobuf", 0, NULL, 0);
    return;
  }
  uint64_t items = 0, resources = 0;
  int rc = otlp_count_items(sig, body, len, &items, &resources);
  free(plain);
  if (rc != OTLP_OK) {
    char msg[160];
    snprintf(msg, sizeof msg, "body is not a valid protobuf %s", otlp_signal(sig)->request->name);
    answer(app, req, sig, enc, 400, msg, 0, NULL, 0);
    return;
  }
  app->metrics.received_items[sig] += items;
  if (resources == 0) {
    answer(app, req, sig, enc, 200, NULL, 0, NULL, 0); /* an empty request is a success (OTLP/HTTP) */
    return;
  }
  answer(app, req, sig, enc, 503, "no backends: routing to collectors is not available", NO_BACKEND_RETRY_AFTER_S,
         NULL, 0);
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

static void telemetry_on_request(hs_request_t *req, void *ud) {
  gw_app_t *app = ud;
  if (req->method != HTTP_GET && req->method != HTTP_HEAD) {
    static const hs_header_t allow = {{"Allow", 5}, {"GET, HEAD", 9}};
    hs_respond(req, 405, "text/plain", &allow, 1, "method not allowed\n", 19);
    return;
  }
  if (hs_slice_eq(req->path, "/healthz")) {
    hs_respond(req, 200, "text/plain", NULL, 0, "ok\n", 3);
  } else if (hs_slice_eq(req->path, "/readyz")) {
    /* Ready means "can accept data": with no routing there is no backend to deliver to. */
    static const char nr[] = "not ready: no backend is up\n";
    hs_respond(req, 503, "text/plain", NULL, 0, nr, sizeof nr - 1);
  } else if (hs_slice_eq(req->path, "/metrics")) {
    gw_metrics_gauges_t g = {0};
    g.client_connections = hs_server_stats(app->ingest)->connections_open;
    char *text = NULL;
    size_t len = gw_metrics_render(&app->metrics, 1, &g, &text);
    if (!len) {
      hs_respond(req, 500, "text/plain", NULL, 0, "out of memory\n", 14);
      return;
    }
    hs_respond(req, 200, "text/plain; version=0.0.4; charset=utf-8", NULL, 0, text, len);
    free(text);
  } else {
    hs_respond(req, 404, "text/plain", NULL, 0, "not found: try /metrics, /healthz or /readyz\n", 45);
  }
}

/* ---- lifecycle ------------------------------------------------------------------------------------------- */

static int listen_on(hs_server_t *s, const char *hostport, const char *what, char *err, size_t errlen) {
  char *host = NULL;
  uint16_t port = 0;
  if (cfg_parse_hostport(hostport, &host, &port) != 0) {
    snprintf(err, errlen, "%s: invalid address \"%s\"", what, hostport);
    return -1;
  }
  int rc = hs_server_listen(s, host, port);
  free(host);
  if (rc != 0) {
    snprintf(err, errlen, "%s: cannot listen on %s: %s", what, hostport, uv_strerror(rc));
    return -1;
  }
  return 0;
}

int gw_app_start(uv_loop_t *loop, cfg_t *cfg, gw_app_t **out, char *err, size_t errlen) {
  gw_app_t *app = calloc(1, sizeof *app);
  if (!app) {
    cfg_dispose(cfg);
    snprintf(err, errlen, "out of memory");
    return -1;
  }
  app->loop = loop;
  app->cfg = *cfg;
  memset(cfg, 0, sizeof *cfg);
  hs_config_t ic = {
      .name = "ingest",
      .max_body_bytes = app->cfg.server.max_request_bytes,
      .max_connections = app->cfg.server.max_connections,
      .read_timeout_ms = app->cfg.server.read_timeout_ms,
      .idle_timeout_ms = app->cfg.server.idle_timeout_ms,
      .on_headers = ingest_on_headers,
      .on_request = ingest_on_request,
      .error_body = ingest_error_body,
      .ud = app,
  };
  hs_config_t tc = {
      .name = "telemetry",
      .max_body_bytes = 64 * 1024,
      .max_connections = 256,
      .read_timeout_ms = 10000,
      .idle_timeout_ms = 60000,
      .on_request = telemetry_on_request,
      .ud = app,
  };
  if (hs_server_create(loop, &ic, &app->ingest) != 0 || hs_server_create(loop, &tc, &app->telemetry) != 0) {
    snprintf(err, errlen, "out of memory");
    goto fail;
  }
  if (listen_on(app->ingest, app->cfg.server.listen, "server.listen", err, errlen) != 0) goto fail;
  if (listen_on(app->telemetry, app->cfg.telemetry.listen, "telemetry.listen", err, errlen) != 0) goto fail;
  gw_log(GW_LOG_INFO, "listening", "server", "ingest", "addr", hs_server_address(app->ingest), NULL);
  gw_log(GW_LOG_INFO, "listening", "server", "telemetry", "addr", hs_server_address(app->telemetry), NULL);
  if (app->cfg.server.workers != 1)
    gw_log(GW_LOG_INFO, "running one event loop", "workers_configured", gw_log_u64(app->cfg.server.workers),
           "note", "multi-loop workers are not built yet", NULL);
  *out = app;
  return 0;
fail:
  /* Listeners that were opened are closed by running the loop once through the shutdown path. */
  gw_app_shutdown(app, NULL, NULL);
  uv_run(loop, UV_RUN_DEFAULT);
  gw_app_destroy(app);
  return -1;
}

static void server_done(void *ud) {
  gw_app_t *app = ud;
  if (--app->pending_servers > 0) return;
  if (app->shutdown_timer_live) {
    uv_timer_stop(&app->shutdown_timer);
    uv_close((uv_handle_t *)&app->shutdown_timer, NULL);
    app->shutdown_timer_live = 0;
  }
  if (app->done) app->done(app->done_ud);
}

static void on_shutdown_deadline(uv_timer_t *t) {
  gw_app_t *app = t->data;
  gw_log(GW_LOG_WARN, "shutdown deadline reached, closing open connections", NULL);
  if (app->ingest) hs_server_abort(app->ingest);
  if (app->telemetry) hs_server_abort(app->telemetry);
}

void gw_app_shutdown(gw_app_t *app, void (*done)(void *ud), void *ud) {
  app->done = done;
  app->done_ud = ud;
  app->pending_servers = (app->ingest != NULL) + (app->telemetry != NULL);
  if (app->pending_servers == 0) {
    if (done) done(ud);
    return;
  }
  uv_timer_init(app->loop, &app->shutdown_timer);
  app->shutdown_timer.data = app;
  app->shutdown_timer_live = 1;
  uv_timer_start(&app->shutdown_timer, on_shutdown_deadline, app->cfg.server.shutdown_timeout_ms + 1, 0);
  uv_unref((uv_handle_t *)&app->shutdown_timer);
  if (app->ingest) hs_server_shutdown(app->ingest, server_done, app);
  if (app->telemetry) hs_server_shutdown(app->telemetry, server_done, app);
}

void gw_app_reload(gw_app_t *app, const char *path) {
  if (!path) {
    gw_log(GW_LOG_WARN, "SIGHUP ignored: no config file to reload", NULL);
    return;
  }
  cfg_t next;
  char err[512];
  if (cfg_load_file(&next, path, err, sizeof err) != 0) {
    gw_log(GW_LOG_ERROR, "config reload failed, keeping the running config", "error", err, NULL);
    cfg_dispose(&next);
    return;
  }
  /* Only the log settings apply live for now; listeners and backends are applied by the resilience issue. */
  gw_log_setup((gw_log_level_t)next.telemetry.log_level, (gw_log_format_t)next.telemetry.log_format);
  gw_log(GW_LOG_INFO, "config reloaded", "path", path, "applied", "telemetry.log_level,telemetry.log_format", NULL);
  cfg_dispose(&next);
}

void gw_app_destroy(gw_app_t *app) {
  if (!app) return;
  hs_server_destroy(app->ingest);
  hs_server_destroy(app->telemetry);
  cfg_dispose(&app->cfg);
  free(app);
}
