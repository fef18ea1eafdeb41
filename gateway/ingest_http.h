/*
 * gateway/ingest_http — the OTLP/HTTP front-end: POST /v1/{traces,logs,metrics} on gateway/http_server, checked
 * from the headers (path, method, bearer token, framing, Content-Type, Content-Encoding) before the body is read,
 * then handed to gateway/forward; the outcome becomes an HTTP status with a google.rpc.Status body or an
 * Export*ServiceResponse in the request's encoding.
 *
 * Answers, in this order: 404 unknown path, 405 not POST, 401 missing/wrong bearer token, 411 no body framing,
 * 415 unsupported Content-Type / Content-Encoding (all from the headers), then forward's: 413 too big after
 * decompression, 400 bad gzip / JSON / protobuf, 200 (an empty request too), 503 + Retry-After (no backend up, a
 * queue full, the memory limit, or a part that could not be queued), 500 out of memory.
 */
#ifndef OTLPGW_INGEST_HTTP_H
#define OTLPGW_INGEST_HTTP_H

#include <stdatomic.h>
#include <stdint.h>
#include <uv.h>

#include "gateway/forward.h"
#include "gateway/http_server.h"

typedef struct ih ih_t;

/* A front-end on loop feeding fw, counting into metrics. shared_connections: server.max_connections' count,
 * shared with the other workers' and the gRPC front-end's listeners (NULL: its own). h2_answer: what an HTTP/2
 * preface is told (hs_config_t.h2_answer). */
int ih_create(uv_loop_t *loop, fw_t *fw, gw_metrics_t *metrics, atomic_uint_least64_t *shared_connections,
              const char *h2_answer, ih_t **out);
hs_server_t *ih_server(ih_t *ih); /* listen, stats, shutdown, abort through gateway/http_server */
void ih_destroy(ih_t *ih);        /* after the server's shutdown callback */

#endif
