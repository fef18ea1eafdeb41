/*
 * gateway/ingest_grpc — see ingest_grpc.h.
 *
 * Answers (DESIGN.md): OK with Export*ServiceResponse (partial_success summed) · INVALID_ARGUMENT bad protobuf or
 * gzip · RESOURCE_EXHAUSTED over server.max_request_bytes (no RetryInfo) · UNIMPLEMENTED unknown service/method or
 * grpc-encoding · UNAUTHENTICATED bearer token missing/wrong · UNAVAILABLE with RetryInfo when no backend is up,
 * a queue is full or memory_limit is reached · INTERNAL for a broken framing (flag 1 without grpc-encoding, a
 * second message, a stream that ends inside one) · DEADLINE_EXCEEDED when server.read_timeout passes before the
 * message is complete · HTTP 415 for a content-type other than application/grpc[+proto].
 * Errors found before anything is forwarded are trailers-only answers. grpc.health.v1.Health/Check needs no token
 * (probes carry none): SERVING while a backend is in the ring, else NOT_SERVING.
 */
#include "gateway/ingest_grpc.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "gateway/grpc.h"
#include "gateway/memory.h"
#include "gateway/otlp_http.h"

#define MEMORY_RETRY_AFTER_S 1

struct ig {
  uv_loop_t *loop;
  fw_t *fw;
  gw_metrics_t *metrics;
  h2s_server_t *server;
};

/* One call, from its HEADERS to its answer (h2s_request_t.user). */
typedef struct ig_call {
  ig_t *ig;
  h2s_stream_t *st;
  h2s_request_t *req;
  int svc;                 /* GRPC_SVC_* */
  int gzip_ok;             /* grpc-encoding: gzip (else identity, or absent) */
  int has_encoding;        /* a grpc-encoding header was sent */
  grpc_deframer_t df;
  uint64_t reserved;       /* charged to gm_process for this call, given back at its answer */
  int forwarding;          /* handed to forward: the message buffer is forward's until done */
  uv_timer_t *deadline;    /* grpc-timeout shorter than server.read_timeout: until the message is complete */
} ig_call_t;

static int signal_label(const ig_call_t *c) {
  return c && c->svc >= GRPC_SVC_TRACES && c->svc <= GRPC_SVC_METRICS ? c->svc : GW_SIGNAL_NONE;
}

static void timer_freed(uv_handle_t *h) { free(h); }

static void stop_deadline(ig_call_t *c) {
  if (!c->deadline) return;
  c->deadline->data = NULL;
  uv_close((uv_handle_t *)c->deadline, timer_freed);
  c->deadline = NULL;
}

static void call_free(ig_call_t *c) {
  if (!c) return;
  stop_deadline(c);
  free(c->df.buf);
  if (c->reserved) gm_release(&gm_process, c->reserved);
  free(c);
}

/* Appends header name: value to hs (cap entries). */
static void hdr(hs_header_t *hs, size_t *n, const char *name, const char *value) {
  hs[*n].name = (hs_slice_t){name, strlen(name)};
  hs[*n].value = (hs_slice_t){value, strlen(value)};
  (*n)++;
}

/* A trailers-only answer: one HEADERS frame with :status 200 and the status. retry_s > 0 adds RetryInfo. Counted
 * (health checks are not ingest requests and are not). Consumes the stream and frees the call. */
static void answer_status(ig_t *ig, h2s_stream_t *st, h2s_request_t *req, ig_call_t *c, int code, const char *msg,
                          unsigned retry_s) {
  char code_s[8], enc_msg[600], details[512];
  hs_header_t hs[6];
  size_t n = 0;
  snprintf(code_s, sizeof code_s, "%d", code);
  hdr(hs, &n, "content-type", "application/grpc");
  hdr(hs, &n, "grpc-status", code_s);
  if (msg && *msg) {
    grpc_percent_encode(msg, enc_msg, sizeof enc_msg);
    hdr(hs, &n, "grpc-message", enc_msg);
  }
  if (retry_s > 0 && grpc_status_details_bin(code, msg ? msg : "", retry_s, details, sizeof details) > 0)
    hdr(hs, &n, "grpc-status-details-bin", details);
  if (code == GRPC_UNIMPLEMENTED && c && c->has_encoding && !c->gzip_ok) hdr(hs, &n, "grpc-accept-encoding", "identity,gzip");
  if (!c || c->svc != GRPC_SVC_HEALTH_CHECK)
    gw_metrics_grpc_request(ig->metrics, signal_label(c), code, (double)(uv_hrtime() - req->start_ns) / 1e9);
  h2s_respond(st, 200, hs, n, NULL, 0, NULL, 0);
  call_free(c);
}

/* OK with a message: headers, the framed reply, trailers grpc-status 0. */
static void answer_ok(ig_t *ig, ig_call_t *c, const uint8_t *msg, size_t len) {
  uint8_t buf[5 + OTLP_PARTIAL_MSG_MAX + 40];
  if (len > sizeof buf - 5) len = 0; /* never: the replies are small */
  grpc_frame_prefix(buf, 0, (uint32_t)len);
  memcpy(buf + 5, msg, len);
  hs_header_t hs[2], tr[1];
  size_t n = 0, nt = 0;
  hdr(hs, &n, "content-type", "application/grpc");
  hdr(hs, &n, "grpc-accept-encoding", "identity,gzip");
  hdr(tr, &nt, "grpc-status", "0");
  if (c->svc != GRPC_SVC_HEALTH_CHECK)
    gw_metrics_grpc_request(ig->metrics, signal_label(c), GRPC_OK, (double)(uv_hrtime() - c->req->start_ns) / 1e9);
  h2s_respond(c->st, 200, hs, n, buf, 5 + len, tr, nt);
  call_free(c);
}

static void on_forwarded(void *ud, const fw_result_t *r) {
  ig_call_t *c = ud;
  ig_t *ig = c->ig;
  switch (r->status) {
    case FW_OK: {
      uint8_t msg[OTLP_PARTIAL_MSG_MAX + 40];
      answer_ok(ig, c, msg, otlp_partial_body(r->rejected, r->partial, msg, sizeof msg));
      return;
    }
    case FW_INVALID: answer_status(ig, c->st, c->req, c, GRPC_INVALID_ARGUMENT, r->message, 0); return;
    case FW_TOO_BIG: answer_status(ig, c->st, c->req, c, GRPC_RESOURCE_EXHAUSTED, r->message, 0); return;
    case FW_UNAVAILABLE:
      answer_status(ig, c->st, c->req, c, GRPC_UNAVAILABLE, r->message, r->retry_after_s ? r->retry_after_s : 1);
      return;
    case FW_INTERNAL: break;
  }
  answer_status(ig, c->st, c->req, c, GRPC_INTERNAL, r->message, 0);
}

/* forward's memory for this call (decompressed copy, re-compressed parts), charged with the message's. */
static int reserve(void *ud, uint64_t bytes, int force) {
  ig_call_t *c = ud;
  if (force) gm_force(&gm_process, bytes);
  else if (gm_reserve(&gm_process, bytes, c->reserved + bytes) != 0) return -1;
  c->reserved += bytes;
  return 0;
}

static int content_type_ok(const hs_slice_t *ct) {
  if (!ct || ct->len < 16 || strncasecmp(ct->base, "application/grpc", 16) != 0) return 0;
  if (ct->len == 16) return 1;
  char next = ct->base[16];
  if (next == ';') return 1;
  return ct->len >= 22 && strncasecmp(ct->base + 16, "+proto", 6) == 0 && (ct->len == 22 || ct->base[22] == ';');
}

static void on_deadline(uv_timer_t *t) {
  ig_call_t *c = t->data;
  if (!c) return;
  answer_status(c->ig, c->st, c->req, c, GRPC_DEADLINE_EXCEEDED,
                "grpc-timeout passed before the message was complete", 0);
}

static int on_headers(h2s_stream_t *st, h2s_request_t *req, void *ud) {
  ig_t *ig = ud;
  ig_call_t *c = calloc(1, sizeof *c);
  if (!c) {
    answer_status(ig, st, req, NULL, GRPC_INTERNAL, "out of memory", 0);
    return 1;
  }
  c->ig = ig;
  c->st = st;
  c->req = req;
  c->svc = grpc_service_from_path(req->path);
  grpc_deframer_init(&c->df);
  req->user = c;
  if (!content_type_ok(h2s_request_header(req, "content-type"))) {
    static const char body[] = "content-type must be application/grpc or application/grpc+proto\n";
    hs_header_t hs[1] = {{{"content-type", 12}, {"text/plain", 10}}};
    ig->metrics->grpc_http_refusals++;
    h2s_respond(st, 415, hs, 1, body, sizeof body - 1, NULL, 0);
    call_free(c);
    return 1;
  }
  if (c->svc < 0 || !hs_slice_eq(req->method, "POST")) {
    char msg[300];
    snprintf(msg, sizeof msg,
             "unknown service or method \"%.*s\": OTLP/gRPC serves opentelemetry.proto.collector.{trace,logs,metrics}"
             ".v1.*Service/Export and grpc.health.v1.Health/Check",
             (int)(req->path.len > 120 ? 120 : req->path.len), req->path.base);
    c->svc = -1;
    answer_status(ig, st, req, c, GRPC_UNIMPLEMENTED, msg, 0);
    return 1;
  }
  const hs_slice_t *enc = h2s_request_header(req, "grpc-encoding");
  if (enc) {
    c->has_encoding = 1;
    if (hs_slice_eq(*enc, "gzip")) c->gzip_ok = 1;
    else if (!hs_slice_eq(*enc, "identity")) {
      char msg[160];
      snprintf(msg, sizeof msg, "grpc-encoding \"%.*s\" is not supported: use gzip or identity",
               (int)(enc->len > 40 ? 40 : enc->len), enc->base);
      answer_status(ig, st, req, c, GRPC_UNIMPLEMENTED, msg, 0);
      return 1;
    }
  }
  if (c->svc != GRPC_SVC_HEALTH_CHECK && !fw_authorized(ig->fw, h2s_request_header(req, "authorization"))) {
    answer_status(ig, st, req, c, GRPC_UNAUTHENTICATED, "missing or invalid bearer token (authorization metadata)", 0);
    return 1;
  }
  /* grpc-timeout bounds the time to receive the message when it is shorter than server.read_timeout (which the
   * HTTP/2 server enforces); once forwarded, a call is answered by its outcome (a client past its deadline resets
   * the stream and the answer is discarded). A malformed value is ignored, as a missing one. */
  const hs_slice_t *to = h2s_request_header(req, "grpc-timeout");
  int64_t ms = to ? grpc_parse_timeout_ms(*to) : -1;
  if (ms >= 0 && (uint64_t)ms < fw_config(ig->fw)->server.read_timeout_ms) {
    if (ms == 0) {
      answer_status(ig, st, req, c, GRPC_DEADLINE_EXCEEDED, "grpc-timeout is 0", 0);
      return 1;
    }
    if ((c->deadline = malloc(sizeof *c->deadline))) {
      uv_timer_init(ig->loop, c->deadline);
      c->deadline->data = c;
      uv_timer_start(c->deadline, on_deadline, (uint64_t)ms, 0);
    }
  }
  return 0;
}

static int on_data(h2s_stream_t *st, h2s_request_t *req, const uint8_t *data, size_t len, void *ud) {
  ig_t *ig = ud;
  ig_call_t *c = req->user;
  while (len > 0) {
    size_t used = 0;
    int rc = grpc_deframer_feed(&c->df, data, len, &used);
    data += used;
    len -= used;
    if (rc == GRPC_DF_ERROR) {
      answer_status(ig, st, req, c, GRPC_INTERNAL, "a unary call carries exactly one message: a second one was sent",
                    0);
      return 1;
    }
    if (rc == GRPC_DF_NEED_BUFFER) {
      if (c->df.compressed && !c->has_encoding) {
        answer_status(ig, st, req, c, GRPC_INTERNAL, "compressed flag set without a grpc-encoding header", 0);
        return 1;
      }
      if (c->df.compressed && !c->gzip_ok) {
        answer_status(ig, st, req, c, GRPC_INTERNAL, "compressed flag set with grpc-encoding identity", 0);
        return 1;
      }
      uint64_t max = fw_config(ig->fw)->server.max_request_bytes;
      if (c->df.length > max) {
        char msg[160];
        snprintf(msg, sizeof msg, "message of %u bytes exceeds server.max_request_bytes (%llu)", c->df.length,
                 (unsigned long long)max);
        answer_status(ig, st, req, c, GRPC_RESOURCE_EXHAUSTED, msg, 0);
        return 1;
      }
      if (c->df.length > 0) {
        if (gm_reserve(&gm_process, c->df.length, c->df.length) != 0) {
          answer_status(ig, st, req, c, GRPC_UNAVAILABLE, "memory limit reached: retry later", MEMORY_RETRY_AFTER_S);
          return 1;
        }
        c->reserved += c->df.length;
        if (!(c->df.buf = malloc(c->df.length))) {
          answer_status(ig, st, req, c, GRPC_INTERNAL, "out of memory", 0);
          return 1;
        }
      }
    }
  }
  return 0;
}

static void on_end(h2s_stream_t *st, h2s_request_t *req, void *ud) {
  ig_t *ig = ud;
  ig_call_t *c = req->user;
  int fin = grpc_deframer_finish(&c->df);
  if (fin < 0) {
    answer_status(ig, st, req, c, GRPC_INTERNAL, "the stream ended inside a message", 0);
    return;
  }
  if (fin == 0) {
    answer_status(ig, st, req, c, GRPC_INTERNAL, "no request message: a unary call carries exactly one", 0);
    return;
  }
  stop_deadline(c); /* the message is complete */
  if (c->svc == GRPC_SVC_HEALTH_CHECK) {
    hs_slice_t service = {"", 0};
    uint8_t *plain = NULL;
    size_t plain_len = 0;
    const uint8_t *m = c->df.buf;
    size_t ml = c->df.length;
    if (c->df.compressed) { /* a HealthCheckRequest is a service name: 4 KiB is plenty */
      if (otlp_gunzip(m, ml, 4096, &plain, &plain_len) != OTLP_OK) {
        answer_status(ig, st, req, c, GRPC_INVALID_ARGUMENT, "HealthCheckRequest is not valid gzip", 0);
        return;
      }
      m = plain;
      ml = plain_len;
    }
    int bad = grpc_health_parse_request(m, ml, &service) != 0;
    char name[160] = "";
    size_t nl = bad ? 0 : service.len < sizeof name ? service.len : sizeof name - 1;
    if (nl) memcpy(name, service.base, nl); /* service points into plain, freed next */
    name[nl] = 0;
    service = (hs_slice_t){name, nl};
    free(plain);
    if (bad) {
      answer_status(ig, st, req, c, GRPC_INVALID_ARGUMENT, "malformed HealthCheckRequest", 0);
      return;
    }
    int known = service.len == 0;
    for (int s = GRPC_SVC_TRACES; s <= GRPC_SVC_METRICS && !known; s++) {
      /* "opentelemetry.proto.collector.trace.v1.TraceService": the path without '/' and "/Export". */
      const char *p = grpc_service_path(s);
      size_t pl = strlen(p) - strlen("/Export") - 1;
      known = service.len == pl && memcmp(service.base, p + 1, pl) == 0;
    }
    if (!known) {
      answer_status(ig, st, req, c, GRPC_NOT_FOUND, "unknown service", 0);
      return;
    }
    uint8_t msg[8];
    size_t n = grpc_health_response(fw_backends_up(ig->fw), msg);
    answer_ok(ig, c, msg, n);
    return;
  }
  c->forwarding = 1;
  fw_request_t fr = {
      .protocol = GW_PROTO_GRPC,
      .signal = c->svc,
      .encoding = OTLP_ENC_PROTOBUF,
      .compression = c->df.compressed ? OTLP_CE_GZIP : OTLP_CE_IDENTITY,
      .body = c->df.buf,
      .len = c->df.length,
      .reserve = reserve,
      .done = on_forwarded,
      .ud = c,
  };
  fw_submit(ig->fw, &fr);
}

static void on_abort(h2s_stream_t *st, h2s_request_t *req, int why, void *ud) {
  ig_t *ig = ud;
  ig_call_t *c = req->user;
  if (why == H2S_ABORT_TIMEOUT)
    answer_status(ig, st, req, c, GRPC_DEADLINE_EXCEEDED, "server.read_timeout passed before the message was complete",
                  0);
  else if (why == H2S_ABORT_TOO_BIG)
    answer_status(ig, st, req, c, GRPC_RESOURCE_EXHAUSTED, "request exceeds server.max_request_bytes", 0);
  else
    answer_status(ig, st, req, c, GRPC_CANCELLED, "the client reset the call", 0);
}

int ig_create(uv_loop_t *loop, fw_t *fw, gw_metrics_t *metrics, atomic_uint_least64_t *shared_connections,
              ig_t **out) {
  ig_t *ig = calloc(1, sizeof *ig);
  if (!ig) return UV_ENOMEM;
  ig->loop = loop;
  ig->fw = fw;
  ig->metrics = metrics;
  const cfg_t *cfg = fw_config(fw);
  h2s_config_t hc = {
      .name = "grpc",
      .max_concurrent_streams = 100,
      .max_body_bytes = cfg->server.max_request_bytes + 5, /* the message and its prefix */
      .max_connections = cfg->server.max_connections,
      .read_timeout_ms = cfg->server.read_timeout_ms,
      .idle_timeout_ms = cfg->server.idle_timeout_ms,
      .on_headers = on_headers,
      .on_data = on_data,
      .on_end = on_end,
      .on_abort = on_abort,
      .ud = ig,
      .shared_connections = shared_connections,
  };
  int rc = h2s_server_create(loop, &hc, &ig->server);
  if (rc != 0) {
    free(ig);
    return rc;
  }
  *out = ig;
  return 0;
}

h2s_server_t *ig_server(ig_t *ig) { return ig->server; }

void ig_destroy(ig_t *ig) {
  if (!ig) return;
  h2s_server_destroy(ig->server);
  free(ig);
}
