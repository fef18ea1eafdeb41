/*
 * gateway/gateway — the running gateway: ingest listener (OTLP/HTTP), telemetry listener (/metrics,
 * /healthz, /readyz), wired to the configuration. main.c is a thin CLI around it.
 */
#ifndef OTLPGW_GATEWAY_H
#define OTLPGW_GATEWAY_H

#include <stddef.h>
#include <uv.h>

#include "config/config.h"

typedef struct gw_app gw_app_t;

/* Starts listening on cfg's addresses. Takes ownership of *cfg (zeroes it) on success and on failure.
 * Returns 0, or -1 with a one-line reason in err. */
int gw_app_start(uv_loop_t *loop, cfg_t *cfg, gw_app_t **out, char *err, size_t errlen);

/* Stops accepting, lets in-flight requests finish for up to server.shutdown_timeout, then closes
 * everything and calls done(ud). */
void gw_app_shutdown(gw_app_t *app, void (*done)(void *ud), void *ud);

/* Re-reads the config file the app was started with (SIGHUP). A bad file is logged and ignored. */
void gw_app_reload(gw_app_t *app, const char *path);

void gw_app_destroy(gw_app_t *app);

#endif
