/*
 * gateway/telemetry — the telemetry listener's answers (/healthz, /readyz, /metrics) from scrapes: copies
 * of one worker's counters and gauges taken on that worker's loop. With several worker loops the main
 * thread collects one scrape per worker and answers /metrics from their sum; with one, the worker answers
 * itself. The probes (/healthz, /readyz) never wait for a scrape: they are answered from state the answering
 * loop already has (with several workers: flags each worker publishes atomically), so a worker busy for
 * seconds (a 64 MiB gunzip) cannot make a liveness probe time out.
 */
#ifndef OTLPGW_TELEMETRY_H
#define OTLPGW_TELEMETRY_H

#include <stddef.h>

#include "gateway/http_server.h"
#include "gateway/metrics.h"

/* One worker's state at one moment; owns its views, their endpoints and metrics copies. */
typedef struct gw_scrape {
  gw_metrics_t metrics;
  gw_metrics_gauges_t gauges; /* backends points to owned views */
  gw_backend_view_t *views;
  gw_backend_metrics_t *view_metrics;
} gw_scrape_t;

/* Copies n views (endpoint strings and metrics included) into s->gauges. 0 or -1 (out of memory). */
int gw_scrape_set_views(gw_scrape_t *s, const gw_backend_view_t *views, size_t n);
void gw_scrape_dispose(gw_scrape_t *s);

/* The telemetry listener's server settings (small bodies, few connections), answering with on_request. */
hs_config_t gw_telemetry_server_config(void (*on_request)(hs_request_t *req, void *ud), void *ud);

/* Answers every telemetry request that needs no scrape, from the caller's own state, at once: 405 for a method
 * other than GET/HEAD; /healthz 200 "ok" (liveness: the loop calling this is running and answering, whatever
 * the worker loops are busy with); /readyz 200 "ready" while ready (some worker's ring has a backend), else
 * 503 "not ready: shutting down" once stopping, else 503 "not ready: no backend is up"; 404 for other paths.
 * Returns 1 when it answered, 0 for /metrics: the caller then scrapes and calls gw_telemetry_answer_metrics. */
int gw_telemetry_answer_probe(hs_request_t *req, int ready, int stopping);

/* Answers /metrics from n scrapes (n >= 1): counters and per-backend series are summed over the workers, a
 * backend is up only while every worker has it in its ring. */
void gw_telemetry_answer_metrics(hs_request_t *req, const gw_scrape_t *scrapes, size_t n);

#endif
