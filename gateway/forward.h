/*
 * gateway/forward — the one ingest path that both front-ends call (gateway/ingest_http for OTLP/HTTP,
 * gateway/ingest_grpc for OTLP/gRPC): decompress → transcode JSON → validate and split over the ring (balancer/)
 * → admit → forward each part to its backend (gateway/upstream's pools) → acknowledge. The Export message is the
 * same bytes whichever protocol carried it, so a front-end hands over (signal, encoding, compression, body) and
 * learns the outcome as a protocol-neutral fw_result_t, which it maps to an HTTP status or a gRPC code.
 *
 * Acknowledgement (DESIGN.md): done is called once every part was delivered (2xx), refused as bad (400/413:
 * dropped, counted, reported as rejected) or handed to the upstream's retry queues; or at once when the request
 * is refused before anything is forwarded (malformed, too big, no backend up, a queue full, the memory limit).
 */
#ifndef OTLPGW_FORWARD_H
#define OTLPGW_FORWARD_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "config/config.h"
#include "gateway/metrics.h"
#include "gateway/otlp_http.h"
#include "gateway/upstream.h"

typedef struct fw fw_t;

/* The outcome, protocol-neutral. */
typedef enum {
  FW_OK = 0,       /* delivered or queued: HTTP 200 / gRPC OK (rejected > 0: partial_success) */
  FW_INVALID,      /* not valid protobuf/JSON/gzip: HTTP 400 / INVALID_ARGUMENT */
  FW_TOO_BIG,      /* decompressed past server.max_request_bytes: HTTP 413 / RESOURCE_EXHAUSTED (no RetryInfo) */
  FW_UNAVAILABLE,  /* no backend up, a queue full, memory_limit, or not queueable: HTTP 503 / UNAVAILABLE,
                    * with retry_after_s (Retry-After / RetryInfo) */
  FW_INTERNAL,     /* out of memory: HTTP 500 / INTERNAL */
} fw_status_t;

typedef struct fw_result {
  fw_status_t status;
  unsigned retry_after_s;   /* FW_UNAVAILABLE */
  const char *message;      /* errors: one line for the client; valid during the callback */
  int64_t rejected;         /* FW_OK: items the backends rejected (partial_success) */
  const char *partial;      /* FW_OK: the first rejection's message, "" when none */
} fw_result_t;

typedef struct fw_request {
  int protocol;                         /* GW_PROTO_* (metrics) */
  int signal;                           /* otlp_signal_t */
  otlp_encoding_t encoding;             /* protobuf or JSON (gRPC: always protobuf) */
  otlp_content_encoding_t compression;  /* identity or gzip */
  const uint8_t *body;                  /* as received; the front-end keeps it valid until done */
  size_t len;
  /* Charges memory that forward holds for this request (a decompressed or transcoded copy, re-compressed parts)
   * to the front-end's share of the budget; force != 0 must charge. 0, or non-zero to refuse (-> FW_UNAVAILABLE).
   * The front-end gives it all back when it frees the request, which it does no earlier than done. */
  int (*reserve)(void *ud, uint64_t bytes, int force);
  void (*done)(void *ud, const fw_result_t *r);
  void *ud;
} fw_request_t;

/* A forwarder on one loop, over the upstream up; counts into metrics. cfg is the current snapshot's. */
fw_t *fw_create(us_set_t *up, gw_metrics_t *metrics, const cfg_t *cfg);
/* After a reload (the upstream switched to cfg already). */
void fw_set_config(fw_t *fw, const cfg_t *cfg);
/* The config the forwarder runs on now (the front-ends read their limits from it, request by request). */
const cfg_t *fw_config(const fw_t *fw);
/* server.auth.bearer_tokens: 1 when none is configured, or authorization (the Authorization header or gRPC
 * metadata value, NULL when absent) is "Bearer <one of them>"; compared in constant time for equal lengths. */
int fw_authorized(const fw_t *fw, const hs_slice_t *authorization);
/* Forwards req (copied: the struct, not the body). done is called exactly once, possibly before this returns. */
void fw_submit(fw_t *fw, const fw_request_t *req);
/* 1 while at least one backend is in the ring (grpc.health.v1 SERVING, /readyz). */
int fw_backends_up(const fw_t *fw);
/* Requests submitted and not yet done. */
uint64_t fw_in_flight(const fw_t *fw);
void fw_destroy(fw_t *fw);

#endif
