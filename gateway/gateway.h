/*
 * gateway/gateway — the running gateway on one loop: ingest listeners (OTLP/HTTP, OTLP/gRPC), telemetry listener
 * (/metrics, /healthz, /readyz), wired to the configuration. main.c is a thin CLI around it.
 */
#ifndef OTLPGW_GATEWAY_H
#define OTLPGW_GATEWAY_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "config/config.h"

typedef struct gw_app gw_app_t;
typedef struct gw_scrape gw_scrape_t;

/* How an app runs: alone (telemetry = 1, the defaults with opts NULL), or as one of several worker loops
 * (gateway/workers), which share the ingest port through SO_REUSEPORT and leave telemetry to the main
 * thread. */
typedef struct gw_app_opts {
  int telemetry;        /* serve telemetry.listen from this app */
  int reuseport;        /* HS_LISTEN_* of gateway/http_server.h for the ingest listener */
  uint16_t ingest_port; /* non-zero: listen on this port instead of server.listen's (worker 0's real port) */
  uint16_t grpc_port;   /* the same for server.grpc_listen */
  unsigned worker;      /* index, for logs (only worker 0 logs the ingest "listening" line) and the spool's w<N> */
  unsigned n_workers;   /* worker loops in the process (0 = 1): worker 0 replays spool directories past it */
  atomic_uint_least64_t *client_connections; /* shared by the workers: server.max_connections is for all */
} gw_app_opts_t;

/* Starts listening on the addresses of snap (a validated config, see config.h's snapshots). Takes over the
 * caller's reference to snap, on success and on failure: the app runs on it, and its upstream keeps pointers
 * into it (us_create), until gw_app_reload hands it a newer one or the app is destroyed. Several apps (worker
 * loops) may run on one snapshot: none of them writes to it. Returns 0, or -1 with a one-line reason in err.
 * opts may be NULL. */
int gw_app_start(uv_loop_t *loop, cfg_snapshot_t *snap, const gw_app_opts_t *opts, gw_app_t **out, char *err,
                 size_t errlen);

/* The ports the OTLP/HTTP and OTLP/gRPC listeners are bound to (gRPC: 0 when off). */
uint16_t gw_app_ingest_port(const gw_app_t *app);
uint16_t gw_app_grpc_port(const gw_app_t *app);

/* Copies the app's counters and gauges (call on the app's loop). 0, or -1 out of memory (dispose anyway). */
int gw_app_scrape(gw_app_t *app, gw_scrape_t *out);

/* Stops accepting, lets in-flight requests finish for up to server.shutdown_timeout, then closes
 * everything and calls done(ud). */
void gw_app_shutdown(gw_app_t *app, void (*done)(void *ud), void *ud);

/* SIGHUP, on the app's loop: adopts next, a config the caller has already parsed and validated once (every
 * worker loop gets the same snapshot, so they cannot diverge). Takes over the caller's reference to next. The
 * upstream switches to next (us_apply_config) and the app then drops its reference to the previous snapshot:
 * nothing in the app refers to it after that, and it is freed by whichever thread drops the last reference.
 * Ignored (the reference dropped) while shutting down. Logs "config reloaded" with path, the backend count and
 * next's generation. The listener settings and the log settings are the caller's to handle (once). */
void gw_app_reload(gw_app_t *app, cfg_snapshot_t *next, const char *path);

/* Readiness, on the app's loop: 1 while it is not shutting down and its ring has at least one backend. */
int gw_app_ready(const gw_app_t *app);

/* Frees the app (after its shutdown's done callback) and drops its reference to its config snapshot. */
void gw_app_destroy(gw_app_t *app);

#endif
