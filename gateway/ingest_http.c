/* gateway/ingest_http — see ingest_http.h. */
#include "gateway/ingest_http.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gateway/memory.h"
#include "gateway/otlp_http.h"

#define MEMORY_RETRY_AFTER_S 1 /* server.memory_limit reached while a body is read */

struct ih {
  fw_t *fw;
  gw_metrics_t *metrics;
  hs_server_t *server;
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

static void answer(ih_t *ih, hs_request_t *req, int signal, otlp_encoding_t enc, int status, const char *msg,
                   unsigned retry_after, const hs_header_t *extra, size_t n_extra) {
  double secs = (double)(uv_hrtime() - req->start_ns) / 1e9;
  gw_metrics_request(ih->metrics, signal, status, secs);
  if (status == 200) otlp_respond_success(req, enc);
  else otlp_respond_status(req, enc, status, msg, retry_after, extra, n_extra);
}

static int on_headers(hs_request_t *req, void *ud) {
  ih_t *ih = ud;
  int sig = otlp_signal_from_path(req->path);
  int enc = otlp_encoding_from_content_type(hs_request_header(req, "Content-Type"));
  otlp_encoding_t reply_enc = enc == OTLP_ENC_JSON ? OTLP_ENC_JSON : OTLP_ENC_PROTOBUF;
  int label = sig < 0 ? GW_SIGNAL_NONE : sig;
  char msg[256];
  if (sig < 0) {
    snprintf(msg, sizeof msg, "unknown path \"%.*s\": OTLP/HTTP paths are /v1/traces, /v1/logs and /v1/metrics",
             (int)(req->path.len > 100 ? 100 : req->path.len), req->path.base);
    answer(ih, req, label, reply_enc, 404, msg, 0, NULL, 0);
    return 1;
  }
  if (req->method != HTTP_POST) {
    static const hs_header_t allow = {{"Allow", 5}, {"POST", 4}};
    answer(ih, req, label, reply_enc, 405, "method not allowed: OTLP/HTTP uses POST", 0, &allow, 1);
    return 1;
  }
  if (!fw_authorized(ih->fw, hs_request_header(req, "Authorization"))) {
    static const hs_header_t www = {{"WWW-Authenticate", 16}, {"Bearer", 6}};
    answer(ih, req, label, reply_enc, 401, "missing or invalid bearer token", 0, &www, 1);
    return 1;
  }
  if (req->content_length == HS_LEN_NONE) {
    answer(ih, req, label, reply_enc, 411, "Content-Length or chunked Transfer-Encoding required", 0, NULL, 0);
    return 1;
  }
  if (enc < 0) {
    answer(ih, req, label, reply_enc, 415,
           "unsupported Content-Type: use application/x-protobuf or application/json", 0, NULL, 0);
    return 1;
  }
  int ce = otlp_content_encoding(hs_request_header(req, "Content-Encoding"));
  if (ce < 0) {
    answer(ih, req, label, reply_enc, 415, "unsupported Content-Encoding: use gzip or none", 0, NULL, 0);
    return 1;
  }
  req_facts_t f = {.ptr = NULL};
  f.f.signal = (uint8_t)sig;
  f.f.encoding = (uint8_t)enc;
  f.f.content_encoding = (uint8_t)ce;
  req->user = f.ptr;
  return 0;
}

/* A request between fw_submit and its outcome. */
typedef struct ih_call {
  hs_request_t *req;
  ih_t *ih;
  int sig;
  otlp_encoding_t enc;
} ih_call_t;

/* What forward holds for the request (decompressed, transcoded, re-compressed copies) is charged to it and given
 * back with its body when it is answered. */
static int reserve(void *ud, uint64_t bytes, int force) {
  ih_call_t *c = ud;
  return hs_request_reserve(c->req, bytes, force);
}

static int http_status(fw_status_t st) {
  switch (st) {
    case FW_OK: return 200;
    case FW_INVALID: return 400;
    case FW_TOO_BIG: return 413;
    case FW_UNAVAILABLE: return 503;
    case FW_INTERNAL: break;
  }
  return 500;
}

static void on_forwarded(void *ud, const fw_result_t *r) {
  ih_call_t *c = ud;
  hs_request_t *req = c->req;
  int status = http_status(r->status);
  if (status == 200) {
    double secs = (double)(uv_hrtime() - req->start_ns) / 1e9;
    gw_metrics_request(c->ih->metrics, c->sig, 200, secs);
    otlp_respond_partial(req, c->sig, c->enc, r->rejected, r->partial);
  } else {
    answer(c->ih, req, c->sig, c->enc, status, r->message, r->retry_after_s, NULL, 0);
  }
  free(c);
}

static void on_request(hs_request_t *req, void *ud) {
  ih_t *ih = ud;
  req_facts_t facts = {.ptr = req->user};
  ih_call_t *c = malloc(sizeof *c);
  if (!c) {
    answer(ih, req, facts.f.signal, facts.f.encoding, 500, "out of memory", 0, NULL, 0);
    return;
  }
  *c = (ih_call_t){.req = req, .ih = ih, .sig = facts.f.signal, .enc = facts.f.encoding};
  fw_request_t fr = {
      .protocol = GW_PROTO_HTTP,
      .signal = facts.f.signal,
      .encoding = facts.f.encoding,
      .compression = facts.f.content_encoding,
      .body = req->body,
      .len = req->body_len,
      .reserve = reserve,
      .done = on_forwarded,
      .ud = c,
  };
  fw_submit(ih->fw, &fr);
}

/* Errors the HTTP server answers itself (framing, timeouts, limits) get a google.rpc.Status body in the
 * request's encoding too, and are counted like every other answer. */
static size_t error_body(const hs_request_t *req, int status, const char *msg, char *out, size_t cap,
                         const char **content_type, void *ud) {
  ih_t *ih = ud;
  int enc = req ? otlp_encoding_from_content_type(hs_request_header(req, "Content-Type")) : -1;
  int sig = req && req->path.base ? otlp_signal_from_path(req->path) : -1;
  otlp_encoding_t e = enc == OTLP_ENC_JSON ? OTLP_ENC_JSON : OTLP_ENC_PROTOBUF;
  double secs = req ? (double)(uv_hrtime() - req->start_ns) / 1e9 : 0;
  gw_metrics_request(ih->metrics, sig < 0 ? GW_SIGNAL_NONE : sig, status, secs);
  *content_type = otlp_content_type(e);
  return otlp_status_body(e, status, msg, out, cap);
}

int ih_create(uv_loop_t *loop, fw_t *fw, gw_metrics_t *metrics, atomic_uint_least64_t *shared_connections,
              const char *h2_answer, ih_t **out) {
  ih_t *ih = calloc(1, sizeof *ih);
  if (!ih) return UV_ENOMEM;
  ih->fw = fw;
  ih->metrics = metrics;
  const cfg_t *cfg = fw_config(fw);
  hs_config_t ic = {
      .name = "ingest",
      .max_body_bytes = cfg->server.max_request_bytes,
      .max_connections = cfg->server.max_connections,
      .read_timeout_ms = cfg->server.read_timeout_ms,
      .idle_timeout_ms = cfg->server.idle_timeout_ms,
      .on_headers = on_headers,
      .on_request = on_request,
      .error_body = error_body,
      .ud = ih,
      .shared_connections = shared_connections,
      .mem_reserve = gm_reserve_cb, /* server.memory_limit: one budget for the process, all workers */
      .mem_release = gm_release_cb,
      .mem_ud = &gm_process,
      .mem_retry_after_s = MEMORY_RETRY_AFTER_S,
      .h2_answer = h2_answer,
  };
  int rc = hs_server_create(loop, &ic, &ih->server);
  if (rc != 0) {
    free(ih);
    return rc;
  }
  *out = ih;
  return 0;
}

hs_server_t *ih_server(ih_t *ih) { return ih->server; }

void ih_destroy(ih_t *ih) {
  if (!ih) return;
  hs_server_destroy(ih->server);
  free(ih);
}
