/* gateway/telemetry — see telemetry.h. */
#include "gateway/telemetry.h"

#include <stdlib.h>
#include <string.h>

hs_config_t gw_telemetry_server_config(void (*on_request)(hs_request_t *req, void *ud), void *ud) {
  return (hs_config_t){
      .name = "telemetry",
      .max_body_bytes = 64 * 1024,
      .max_connections = 256,
      .read_timeout_ms = 10000,
      .idle_timeout_ms = 60000,
      .on_request = on_request,
      .ud = ud,
  };
}

int gw_scrape_set_views(gw_scrape_t *s, const gw_backend_view_t *views, size_t n) {
  s->views = calloc(n ? n : 1, sizeof *s->views);
  s->view_metrics = calloc(n ? n : 1, sizeof *s->view_metrics);
  if (!s->views || !s->view_metrics) return -1;
  for (size_t i = 0; i < n; i++) {
    s->views[i] = views[i];
    s->view_metrics[i] = *views[i].m;
    s->views[i].m = &s->view_metrics[i];
    if (!(s->views[i].endpoint = strdup(views[i].endpoint))) return -1;
  }
  s->gauges.backends = s->views;
  s->gauges.n_backends = n;
  return 0;
}

void gw_scrape_dispose(gw_scrape_t *s) {
  for (size_t i = 0; s->views && i < s->gauges.n_backends; i++) free((char *)s->views[i].endpoint);
  free(s->views);
  free(s->view_metrics);
  memset(s, 0, sizeof *s);
}

static void histogram_add(gw_histogram_t *to, const gw_histogram_t *h) {
  for (int i = 0; i < GW_HIST_BUCKETS; i++) to->buckets[i] += h->buckets[i];
  to->count += h->count;
  to->sum += h->sum;
}

static void backend_metrics_add(gw_backend_metrics_t *to, const gw_backend_metrics_t *m) {
  for (int i = 0; i < OTLP_N_SIGNALS; i++) to->items[i] += m->items[i];
  for (int i = 0; i < GW_N_OUTCOMES; i++) to->requests[i] += m->requests[i];
  for (int i = 0; i < TLS_N_FAIL_REASONS; i++) to->tls_backend_failures[i] += m->tls_backend_failures[i];
  histogram_add(&to->duration, &m->duration);
}

/* Sums n scrapes' gauges and per-backend series (by endpoint) into *g, views and view metrics into the
 * caller's arrays (sized for every view of every scrape). */
static void merge(const gw_scrape_t *sc, size_t n, gw_metrics_gauges_t *g, gw_backend_view_t *views,
                  gw_backend_metrics_t *vm) {
  size_t nv = 0;
  for (size_t k = 0; k < n; k++) {
    const gw_metrics_gauges_t *x = &sc[k].gauges;
    for (int p = 0; p < GW_N_PROTOCOLS; p++) g->client_connections[p] += x->client_connections[p];
    g->client_connections_rejected += x->client_connections_rejected;
    for (int r = 0; r < TLS_N_FAIL_REASONS; r++) g->tls_client_failures[r] += x->tls_client_failures[r];
    g->backend_connections += x->backend_connections;
    if (x->ring_backends > g->ring_backends) g->ring_backends = x->ring_backends;
    if (x->ring_rebuilds > g->ring_rebuilds) g->ring_rebuilds = x->ring_rebuilds;
    g->spool_segments += x->spool_segments;
    g->spool_replayed_items += x->spool_replayed_items;
    g->spool_corrupt_records += x->spool_corrupt_records;
    g->spool_write_errors += x->spool_write_errors;
    for (size_t i = 0; i < x->n_backends; i++) {
      const gw_backend_view_t *v = &x->backends[i];
      size_t j = 0;
      while (j < nv && strcmp(views[j].endpoint, v->endpoint) != 0) j++;
      if (j == nv) {
        memset(&vm[nv], 0, sizeof vm[nv]);
        views[nv] = (gw_backend_view_t){v->endpoint, &vm[nv], 1, 0, 0, 0};
        nv++;
      }
      backend_metrics_add(&vm[j], v->m);
      views[j].up &= v->up;
      views[j].queue_bytes += v->queue_bytes;
      views[j].retries += v->retries;
      views[j].spool_bytes += v->spool_bytes;
    }
  }
  g->backends = views;
  g->n_backends = nv;
}

void gw_telemetry_answer_metrics(hs_request_t *req, const gw_scrape_t *sc, size_t n) {
  size_t total = 0;
  for (size_t k = 0; k < n; k++) total += sc[k].gauges.n_backends;
  gw_backend_view_t *views = calloc(total ? total : 1, sizeof *views);
  gw_backend_metrics_t *vm = calloc(total ? total : 1, sizeof *vm);
  gw_metrics_t *workers = calloc(n, sizeof *workers);
  char *text = NULL;
  size_t len = 0;
  if (views && vm && workers) {
    gw_metrics_gauges_t g = {0};
    merge(sc, n, &g, views, vm);
    for (size_t k = 0; k < n; k++) workers[k] = sc[k].metrics;
    len = gw_metrics_render(workers, n, &g, &text);
  }
  free(views);
  free(vm);
  free(workers);
  if (!len) {
    hs_respond(req, 500, "text/plain", NULL, 0, "out of memory\n", 14);
    return;
  }
  hs_respond(req, 200, "text/plain; version=0.0.4; charset=utf-8", NULL, 0, text, len);
  free(text);
}

int gw_telemetry_answer_probe(hs_request_t *req, int ready, int stopping) {
  if (req->method != HTTP_GET && req->method != HTTP_HEAD) {
    static const hs_header_t allow = {{"Allow", 5}, {"GET, HEAD", 9}};
    hs_respond(req, 405, "text/plain", &allow, 1, "method not allowed\n", 19);
  } else if (hs_slice_eq(req->path, "/healthz")) {
    hs_respond(req, 200, "text/plain", NULL, 0, "ok\n", 3);
  } else if (hs_slice_eq(req->path, "/readyz")) {
    /* Ready means "can accept data": some worker has a backend in its ring, and nobody is shutting down. */
    static const char nr_backend[] = "not ready: no backend is up\n", nr_stop[] = "not ready: shutting down\n";
    if (ready && !stopping) hs_respond(req, 200, "text/plain", NULL, 0, "ready\n", 6);
    else if (stopping) hs_respond(req, 503, "text/plain", NULL, 0, nr_stop, sizeof nr_stop - 1);
    else hs_respond(req, 503, "text/plain", NULL, 0, nr_backend, sizeof nr_backend - 1);
  } else if (hs_slice_eq(req->path, "/metrics")) {
    return 0;
  } else {
    hs_respond(req, 404, "text/plain", NULL, 0, "not found: try /metrics, /healthz or /readyz\n", 45);
  }
  return 1;
}
