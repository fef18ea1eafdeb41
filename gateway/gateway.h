/*
 * gateway/gateway — the running gateway: ingest listener (OTLP/HTTP), telemetry listener (/metrics,
 * /healthz, /readyz), wired to the configuration. main.c is a thin CLI around it.
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
  unsigned worker;      /* index, for logs; only worker 0 logs the ingest "listening" line */
  atomic_uint_least64_t *client_connections; /* shared by the workers: server.max_connections is for all */
} gw_app_opts_t;

/* Starts listening on cfg's addresses. Takes ownership of *cfg (zeroes it) on success and on failure.
 * Returns 0, or -1 with a one-line reason in err. opts may be NULL. */
int gw_app_start(uv_loop_t *loop, cfg_t *cfg, const gw_app_opts_t *opts, gw_app_t **out, char *err, size_t errlen);

/* The port the ingest listener is bound to. */
uint16_t gw_app_ingest_port(const gw_app_t *app);

/* Copies the app's counters and gauges (call on the app's loop). 0, or -1 out of memory (dispose anyway). */
int gw_app_scrape(gw_app_t *app, gw_scrape_t *out);

/* Stops accepting, lets in-flight requests finish for up to server.shutdown_timeout, then closes
 * everything and calls done(ud). */
void gw_app_shutdown(gw_app_t *app, void (*done)(void *ud), void *ud);

/* Re-reads the config file the app was started with (SIGHUP). A bad file is logged and ignored. */
void gw_app_reload(gw_app_t *app, const char *path);

void gw_app_destroy(gw_app_t *app);

#endif
