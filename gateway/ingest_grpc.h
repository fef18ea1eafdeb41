/*
 * gateway/ingest_grpc — the OTLP/gRPC front-end: {Trace,Logs,Metrics}Service/Export and grpc.health.v1.Health/Check
 * on gateway/h2_server, with gateway/grpc's framing and trailers. A call is checked from its headers (service and
 * method, content-type, bearer token in the authorization metadata, grpc-encoding, grpc-timeout), its one message
 * is collected (charged to server.memory_limit as soon as its length prefix is read, refused past
 * server.max_request_bytes), then handed to gateway/forward exactly as an OTLP/HTTP protobuf body would be; the
 * outcome becomes a gRPC status (DESIGN.md's gRPC answers).
 */
#ifndef OTLPGW_INGEST_GRPC_H
#define OTLPGW_INGEST_GRPC_H

#include <stdatomic.h>
#include <uv.h>

#include "gateway/forward.h"
#include "gateway/h2_server.h"

typedef struct ig ig_t;

/* A front-end on loop feeding fw, counting into metrics; shared_connections as ingest_http's. */
int ig_create(uv_loop_t *loop, fw_t *fw, gw_metrics_t *metrics, atomic_uint_least64_t *shared_connections,
              ig_t **out);
h2s_server_t *ig_server(ig_t *ig); /* listen, stats, shutdown, abort through gateway/h2_server */
void ig_destroy(ig_t *ig);         /* after the server's shutdown callback */

#endif
