/*
 * gateway/workers — server.workers event loops in one process.
 *
 * Each worker is a thread running a whole gw_app on its own loop: its own ingest listener on the shared
 * port (SO_REUSEPORT: the kernel spreads connections over the workers), its own backend connection pools,
 * health checks, ring and retry queues, its own counters. Nothing on the hot path is shared, so nothing is
 * locked. The rings agree because a ring is a pure function of the healthy backend set (while a backend
 * changes state, workers may see it a health-check interval apart, as separate gateway replicas would).
 *
 * The main thread runs the telemetry listener and the signals. A scrape (/metrics) asks every worker for a copy
 * of its counters (through its loop, so nothing is read while it is written) and answers their sum. The probes
 * never wait on a worker: /healthz is answered by the main loop itself, /readyz from a flag each worker
 * publishes atomically (its ring has a backend and it is not shutting down; refreshed from its own loop every
 * 100 ms and at once on reload and shutdown), so a worker busy in a 64 MiB gunzip delays neither.
 * The config is parsed and validated once, by the main thread: every worker runs on the same read-only,
 * reference-counted snapshot (config.h), at start and after each SIGHUP, so workers cannot diverge when the
 * file changes between two reads. SIGTERM is forwarded to every worker; the main loop ends when every worker
 * has drained and exited.
 */
#ifndef OTLPGW_WORKERS_H
#define OTLPGW_WORKERS_H

#include <uv.h>

#include "config/config.h"

typedef struct gw_workers gw_workers_t;

/* Starts n >= 2 workers and the telemetry listener (snap's telemetry.listen) on main_loop. Every worker's app
 * takes its own reference to snap; the caller keeps its reference. config_path is named in the workers'
 * reload log lines (NULL: running on defaults). Returns 0, or -1 with a reason. */
int gw_workers_start(uv_loop_t *main_loop, unsigned n, cfg_snapshot_t *snap, const char *config_path,
                     gw_workers_t **out, char *err, size_t errlen);

/* SIGHUP, once the caller has parsed and validated the file: hands every running worker a reference to next
 * (the caller keeps its own), which each adopts on its own loop (gw_app_reload). A worker that has not yet
 * adopted an earlier snapshot drops it unapplied and goes straight to next. Returns how many workers were
 * handed it (0 once they are shutting down). */
unsigned gw_workers_reload(gw_workers_t *w, cfg_snapshot_t *next);

/* SIGTERM: every worker stops accepting, answers what is in flight and drains its retry queues (each within
 * server.shutdown_timeout); then telemetry closes and done(ud) runs on the main loop. */
void gw_workers_shutdown(gw_workers_t *w, void (*done)(void *ud), void *ud);

/* After the main loop has ended: joins the threads and frees everything. */
void gw_workers_destroy(gw_workers_t *w);

/* The worker count server.workers asks for: 0 = one per CPU core (at most 64). */
unsigned gw_workers_count(unsigned configured);

#endif
