/*
 * gateway/workers — server.workers event loops in one process.
 *
 * Each worker is a thread running a whole gw_app on its own loop: its own ingest listener on the shared
 * port (SO_REUSEPORT: the kernel spreads connections over the workers), its own backend connection pools,
 * health checks, ring and retry queues, its own counters. Nothing on the hot path is shared, so nothing is
 * locked. The rings agree because a ring is a pure function of the healthy backend set (while a backend
 * changes state, workers may see it a health-check interval apart, as separate gateway replicas would).
 *
 * The main thread runs the telemetry listener and the signals. A scrape asks every worker for a copy of its
 * counters (through its loop, so nothing is read while it is written) and answers their sum; SIGHUP and
 * SIGTERM are forwarded to every worker; the main loop ends when every worker has drained and exited.
 */
#ifndef OTLPGW_WORKERS_H
#define OTLPGW_WORKERS_H

#include <uv.h>

#include "config/config.h"

typedef struct gw_workers gw_workers_t;

/* Loads a fresh copy of the running config (one per worker); 0 or -1. */
typedef int (*gw_config_loader)(void *ud, cfg_t *out);

/* Starts n >= 2 workers, each with a config from load, and the telemetry listener on main_loop.
 * config_path is what SIGHUP re-reads (NULL: running on defaults). Returns 0, or -1 with a reason. */
int gw_workers_start(uv_loop_t *main_loop, unsigned n, gw_config_loader load, void *load_ud, const char *config_path,
                     gw_workers_t **out, char *err, size_t errlen);

/* SIGHUP: every worker re-reads the config file. */
void gw_workers_reload(gw_workers_t *w);

/* SIGTERM: every worker stops accepting, answers what is in flight and drains its retry queues (each within
 * server.shutdown_timeout); then telemetry closes and done(ud) runs on the main loop. */
void gw_workers_shutdown(gw_workers_t *w, void (*done)(void *ud), void *ud);

/* After the main loop has ended: joins the threads and frees everything. */
void gw_workers_destroy(gw_workers_t *w);

/* The worker count server.workers asks for: 0 = one per CPU core (at most 64). */
unsigned gw_workers_count(unsigned configured);

#endif
