/* gateway/metrics — see metrics.h. */
#include "gateway/metrics.h"

#include <dirent.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "gateway/grpc.h"
#include "gateway/memory.h"
#include "gateway/version.h"

/* Sub-millisecond to seconds: a pass-through request is ~100us, a backend round trip ms to seconds. */
const double gw_duration_buckets[GW_HIST_BUCKETS] = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                                                     0.05,   0.1,     0.25,   0.5,   1,      2.5,   5,     10};

static const int status_codes[] = {
#define GW_X(c) c,
    GW_STATUS_CODES(GW_X)
#undef GW_X
};

static const char *const signal_labels[GW_N_SIGNAL_LABELS] = {"traces", "logs", "metrics", "none"};
static const char *const ce_labels[OTLP_N_CONTENT_ENCODINGS] = {"identity", "gzip"};
static const char *const outcome_labels[GW_N_OUTCOMES] = {"success", "retryable", "rejected", "error", "refused"};
static const char *const drop_labels[GW_N_DROP_REASONS] = {"rejected", "expired", "shutdown", "malformed"};

int gw_outcome(int status) {
  if (status < 0) return GW_OUTCOME_ERROR;
  if (status >= 200 && status < 300) return GW_OUTCOME_SUCCESS;
  if (status == 429 || status == 502 || status == 503 || status == 504) return GW_OUTCOME_RETRYABLE;
  if (status == 400 || status == 413) return GW_OUTCOME_REJECTED;
  return GW_OUTCOME_REFUSED;
}

int gw_status_index(int status) {
  for (int i = 0; i < GW_CODE_OTHER; i++)
    if (status_codes[i] == status) return i;
  return GW_CODE_OTHER;
}

void gw_count_histogram_observe(gw_count_histogram_t *h, uint64_t n) {
  int i = 0;
  while (i < GW_COUNT_BUCKETS && n > (1ull << i)) i++;
  if (i < GW_COUNT_BUCKETS) h->buckets[i]++;
  h->count++;
  h->sum += n;
}

void gw_histogram_observe(gw_histogram_t *h, double seconds) {
  int i = 0;
  while (i < GW_HIST_BUCKETS && seconds > gw_duration_buckets[i]) i++;
  if (i < GW_HIST_BUCKETS) h->buckets[i]++;
  h->count++;
  h->sum += seconds;
}

void gw_metrics_request(gw_metrics_t *m, int signal, int status, double seconds) {
  m->requests[signal][gw_status_index(status)]++;
  gw_histogram_observe(&m->request_duration[GW_PROTO_HTTP], seconds);
}

void gw_metrics_grpc_request(gw_metrics_t *m, int signal, int grpc_code, double seconds) {
  if (grpc_code < 0 || grpc_code >= GW_N_GRPC_CODES) grpc_code = 2; /* UNKNOWN */
  m->grpc_requests[signal][grpc_code]++;
  gw_histogram_observe(&m->request_duration[GW_PROTO_GRPC], seconds);
}

static const char *const protocol_labels[GW_N_PROTOCOLS] = {"http", "grpc"};
const char *gw_protocol_label(int protocol) {
  return protocol >= 0 && protocol < GW_N_PROTOCOLS ? protocol_labels[protocol] : "unknown";
}

typedef struct sb {
  char *buf;
  size_t len, cap;
  int oom;
} sb_t;

static void sb_printf(sb_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(sb_t *b, const char *fmt, ...) {
  if (b->oom) return;
  for (;;) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(b->buf + b->len, b->cap - b->len, fmt, ap);
    va_end(ap);
    if (n < 0) { b->oom = 1; return; }
    if ((size_t)n < b->cap - b->len) { b->len += (size_t)n; return; }
    size_t ncap = b->cap * 2 + (size_t)n;
    char *nb = realloc(b->buf, ncap);
    if (!nb) { b->oom = 1; return; }
    b->buf = nb;
    b->cap = ncap;
  }
}

static void header(sb_t *b, const char *name, const char *type, const char *help) {
  sb_printf(b, "# HELP otlp_gateway_%s %s\n# TYPE otlp_gateway_%s %s\n", name, help, name, type);
}

/* labels: "" or e.g. "backend=\"http://a:1\"," (with the trailing comma). */
static void render_histogram(sb_t *b, const char *name, const char *labels, const gw_histogram_t *h) {
  uint64_t cum = 0;
  size_t ll = strlen(labels);
  for (int i = 0; i < GW_HIST_BUCKETS; i++) {
    cum += h->buckets[i];
    sb_printf(b, "otlp_gateway_%s_bucket{%sle=\"%g\"} %" PRIu64 "\n", name, labels, gw_duration_buckets[i], cum);
  }
  sb_printf(b, "otlp_gateway_%s_bucket{%sle=\"+Inf\"} %" PRIu64 "\n", name, labels, h->count);
  if (ll) {
    sb_printf(b, "otlp_gateway_%s_sum{%.*s} %.9g\n", name, (int)ll - 1, labels, h->sum);
    sb_printf(b, "otlp_gateway_%s_count{%.*s} %" PRIu64 "\n", name, (int)ll - 1, labels, h->count);
  } else {
    sb_printf(b, "otlp_gateway_%s_sum %.9g\notlp_gateway_%s_count %" PRIu64 "\n", name, h->sum, name, h->count);
  }
}

static void render_count_histogram(sb_t *b, const char *name, const gw_count_histogram_t *h) {
  uint64_t cum = 0;
  for (int i = 0; i < GW_COUNT_BUCKETS; i++) {
    cum += h->buckets[i];
    sb_printf(b, "otlp_gateway_%s_bucket{le=\"%llu\"} %" PRIu64 "\n", name, 1ull << i, cum);
  }
  sb_printf(b, "otlp_gateway_%s_bucket{le=\"+Inf\"} %" PRIu64 "\n", name, h->count);
  sb_printf(b, "otlp_gateway_%s_sum %" PRIu64 "\notlp_gateway_%s_count %" PRIu64 "\n", name, h->sum, name, h->count);
}

static void render_backends(sb_t *b, const gw_metrics_gauges_t *g) {
  size_t n = g ? g->n_backends : 0;
  header(b, "backend_up", "gauge", "1 while the backend is healthy and in the routing ring, 0 while it is down (active checks failed `fall` times, or passively ejected).");
  for (size_t i = 0; i < n; i++)
    sb_printf(b, "otlp_gateway_backend_up{backend=\"%s\"} %d\n", g->backends[i].endpoint, g->backends[i].up);
  header(b, "backend_items_total", "counter", "Items delivered to a backend (answered 2xx), by signal.");
  for (size_t i = 0; i < n; i++)
    for (int s = 0; s < OTLP_N_SIGNALS; s++)
      sb_printf(b, "otlp_gateway_backend_items_total{backend=\"%s\",signal=\"%s\"} %" PRIu64 "\n",
                g->backends[i].endpoint, signal_labels[s], g->backends[i].m->items[s]);
  header(b, "backend_requests_total", "counter",
         "Requests to a backend by outcome: success (2xx), retryable (429/502/503/504), rejected (400/413), "
         "error (transport), refused (any other answer: the backend refuses the gateway).");
  for (size_t i = 0; i < n; i++)
    for (int o = 0; o < GW_N_OUTCOMES; o++)
      sb_printf(b, "otlp_gateway_backend_requests_total{backend=\"%s\",outcome=\"%s\"} %" PRIu64 "\n",
                g->backends[i].endpoint, outcome_labels[o], g->backends[i].m->requests[o]);
  header(b, "backend_request_duration_seconds", "histogram", "Time from sending a part to its backend's answer.");
  for (size_t i = 0; i < n; i++) {
    char labels[400];
    snprintf(labels, sizeof labels, "backend=\"%s\",", g->backends[i].endpoint);
    render_histogram(b, "backend_request_duration_seconds", labels, &g->backends[i].m->duration);
  }
  header(b, "backend_queue_bytes", "gauge", "Bytes held for the backend: its retry queue (retries in flight included) plus parts waiting for a connection.");
  for (size_t i = 0; i < n; i++)
    sb_printf(b, "otlp_gateway_backend_queue_bytes{backend=\"%s\"} %" PRIu64 "\n", g->backends[i].endpoint,
              g->backends[i].queue_bytes);
  header(b, "retries_total", "counter", "Parts sent again to the backend: from its retry queue (after a retryable failure, or re-routed from a backend that went down), plus resends after a stale keep-alive connection failed.");
  for (size_t i = 0; i < n; i++)
    sb_printf(b, "otlp_gateway_retries_total{backend=\"%s\"} %" PRIu64 "\n", g->backends[i].endpoint,
              g->backends[i].retries);
  header(b, "spool_bytes", "gauge", "Of backend_queue_bytes, the bytes of parts that have a record in the on-disk spool (backends.queue.directory; 0 without it).");
  for (size_t i = 0; i < n; i++)
    sb_printf(b, "otlp_gateway_spool_bytes{backend=\"%s\"} %" PRIu64 "\n", g->backends[i].endpoint,
              g->backends[i].spool_bytes);
  header(b, "spool_segments", "gauge", "Segment files of the on-disk spool, summed over workers.");
  sb_printf(b, "otlp_gateway_spool_segments %" PRIu64 "\n", g ? g->spool_segments : 0);
  header(b, "spool_replayed_items_total", "counter", "Items of the previous run's live spool records replayed at start.");
  sb_printf(b, "otlp_gateway_spool_replayed_items_total %" PRIu64 "\n", g ? g->spool_replayed_items : 0);
  header(b, "spool_corrupt_records_total", "counter", "Spool records skipped at replay: a torn tail, a CRC mismatch or a bad length.");
  sb_printf(b, "otlp_gateway_spool_corrupt_records_total %" PRIu64 "\n", g ? g->spool_corrupt_records : 0);
  header(b, "spool_write_errors_total", "counter", "Spool appends that failed (disk full, I/O error): their parts were not acknowledged.");
  sb_printf(b, "otlp_gateway_spool_write_errors_total %" PRIu64 "\n", g ? g->spool_write_errors : 0);
  header(b, "ring_backends", "gauge", "Backends in the current routing ring.");
  sb_printf(b, "otlp_gateway_ring_backends %" PRIu64 "\n", g ? g->ring_backends : 0);
  header(b, "ring_rebuilds_total", "counter", "Routing ring snapshots built.");
  sb_printf(b, "otlp_gateway_ring_rebuilds_total %" PRIu64 "\n", g ? g->ring_rebuilds : 0);
}

static void render_process(sb_t *b) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  double cpu = (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
               (double)ru.ru_stime.tv_usec / 1e6;
  sb_printf(b, "# HELP process_cpu_seconds_total Total user and system CPU time spent in seconds.\n"
               "# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total %.3f\n", cpu);
  long rss_pages = 0, vm_pages = 0;
  FILE *f = fopen("/proc/self/statm", "r");
  if (f) {
    if (fscanf(f, "%ld %ld", &vm_pages, &rss_pages) != 2) rss_pages = vm_pages = 0;
    fclose(f);
  }
  long page = sysconf(_SC_PAGESIZE);
  sb_printf(b, "# HELP process_resident_memory_bytes Resident memory size in bytes.\n"
               "# TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes %ld\n", rss_pages * page);
  sb_printf(b, "# HELP process_virtual_memory_bytes Virtual memory size in bytes.\n"
               "# TYPE process_virtual_memory_bytes gauge\nprocess_virtual_memory_bytes %ld\n", vm_pages * page);
  long fds = 0;
  DIR *d = opendir("/proc/self/fd");
  if (d) {
    for (struct dirent *e; (e = readdir(d)) != NULL;)
      if (e->d_name[0] != '.') fds++;
    closedir(d);
    fds--; /* the directory handle itself */
  }
  struct rlimit rl;
  getrlimit(RLIMIT_NOFILE, &rl);
  sb_printf(b, "# HELP process_open_fds Number of open file descriptors.\n"
               "# TYPE process_open_fds gauge\nprocess_open_fds %ld\n", fds);
  sb_printf(b, "# HELP process_max_fds Maximum number of open file descriptors.\n"
               "# TYPE process_max_fds gauge\nprocess_max_fds %llu\n", (unsigned long long)rl.rlim_cur);
  /* Start time: /proc/self/stat field 22 (clock ticks after boot) plus the boot time from /proc/stat. */
  static double start_time;
  if (start_time == 0) {
    char buf[1024];
    unsigned long long ticks = 0, btime = 0;
    FILE *st = fopen("/proc/self/stat", "r");
    if (st) {
      size_t n = fread(buf, 1, sizeof buf - 1, st);
      buf[n] = 0;
      fclose(st);
      const char *p = strrchr(buf, ')'); /* the command name may hold spaces; fields restart after it */
      for (int field = 2; p && *p && field < 22; p++)
        if (*p == ' ') field++;
      if (p) ticks = strtoull(p, NULL, 10);
    }
    FILE *ps = fopen("/proc/stat", "r");
    if (ps) {
      while (fgets(buf, sizeof buf, ps))
        if (sscanf(buf, "btime %llu", &btime) == 1) break;
      fclose(ps);
    }
    start_time = (double)btime + (double)ticks / (double)sysconf(_SC_CLK_TCK);
  }
  sb_printf(b, "# HELP process_start_time_seconds Start time of the process since unix epoch in seconds.\n"
               "# TYPE process_start_time_seconds gauge\nprocess_start_time_seconds %.0f\n", start_time);
}

size_t gw_metrics_render(const gw_metrics_t *w, size_t n, const gw_metrics_gauges_t *g, char **out) {
  gw_metrics_t sum;
  memset(&sum, 0, sizeof sum);
  for (size_t k = 0; k < n; k++) {
    for (int s = 0; s < GW_N_SIGNAL_LABELS; s++) {
      for (int c = 0; c < GW_N_CODES; c++) sum.requests[s][c] += w[k].requests[s][c];
      for (int c = 0; c < GW_N_GRPC_CODES; c++) sum.grpc_requests[s][c] += w[k].grpc_requests[s][c];
    }
    sum.grpc_http_refusals += w[k].grpc_http_refusals;
    for (int s = 0; s < OTLP_N_SIGNALS; s++)
      for (int r = 0; r < GW_N_DROP_REASONS; r++) sum.dropped_items[s][r] += w[k].dropped_items[s][r];
    for (int p = 0; p < GW_N_PROTOCOLS; p++) {
      for (int s = 0; s < OTLP_N_SIGNALS; s++) {
        sum.received_items[p][s] += w[k].received_items[p][s];
        for (int e = 0; e < OTLP_N_CONTENT_ENCODINGS; e++)
          sum.received_bytes[p][s][e] += w[k].received_bytes[p][s][e];
      }
      gw_histogram_t *h = &sum.request_duration[p];
      for (int i = 0; i < GW_HIST_BUCKETS; i++) h->buckets[i] += w[k].request_duration[p].buckets[i];
      h->count += w[k].request_duration[p].count;
      h->sum += w[k].request_duration[p].sum;
    }
    for (int i = 0; i < GW_COUNT_BUCKETS; i++) sum.backend_batch_parts.buckets[i] += w[k].backend_batch_parts.buckets[i];
    sum.backend_batch_parts.count += w[k].backend_batch_parts.count;
    sum.backend_batch_parts.sum += w[k].backend_batch_parts.sum;
  }
  sb_t b = {malloc(16384), 0, 16384, 0};
  if (!b.buf) return 0;

  header(&b, "build_info", "gauge", "Build information; the value is always 1.");
  sb_printf(&b, "otlp_gateway_build_info{version=\"%s\"} 1\n", OTLPGW_VERSION);

  header(&b, "requests_total", "counter",
         "Ingest requests answered, by protocol, signal and code (OTLP/HTTP: the HTTP status; OTLP/gRPC: the gRPC "
         "status name).");
  for (int s = 0; s < GW_N_SIGNAL_LABELS; s++)
    for (int c = 0; c < GW_N_CODES; c++) {
      /* Zero series exist from the start for 200 / OK of each signal, so rate() sees the first request. */
      if (!sum.requests[s][c] && !(c == GW_CODE_200 && s != GW_SIGNAL_NONE)) continue;
      if (c == GW_CODE_OTHER)
        sb_printf(&b, "otlp_gateway_requests_total{protocol=\"http\",signal=\"%s\",code=\"other\"} %" PRIu64 "\n",
                  signal_labels[s], sum.requests[s][c]);
      else
        sb_printf(&b, "otlp_gateway_requests_total{protocol=\"http\",signal=\"%s\",code=\"%d\"} %" PRIu64 "\n",
                  signal_labels[s], status_codes[c], sum.requests[s][c]);
    }
  for (int s = 0; s < GW_N_SIGNAL_LABELS; s++)
    for (int c = 0; c < GW_N_GRPC_CODES; c++) {
      if (!sum.grpc_requests[s][c] && !(c == 0 && s != GW_SIGNAL_NONE)) continue;
      sb_printf(&b, "otlp_gateway_requests_total{protocol=\"grpc\",signal=\"%s\",code=\"%s\"} %" PRIu64 "\n",
                signal_labels[s], grpc_code_name(c), sum.grpc_requests[s][c]);
    }
  if (sum.grpc_http_refusals)
    sb_printf(&b, "otlp_gateway_requests_total{protocol=\"grpc\",signal=\"none\",code=\"other\"} %" PRIu64 "\n",
              sum.grpc_http_refusals);

  header(&b, "received_items_total", "counter",
         "Items received in valid requests, by protocol and signal: spans, log records, and for metrics data points.");
  for (int p = 0; p < GW_N_PROTOCOLS; p++)
    for (int s = 0; s < OTLP_N_SIGNALS; s++)
      sb_printf(&b, "otlp_gateway_received_items_total{protocol=\"%s\",signal=\"%s\"} %" PRIu64 "\n",
                protocol_labels[p], signal_labels[s], sum.received_items[p][s]);

  header(&b, "received_bytes_total", "counter",
         "Request body bytes received on the wire, by protocol, signal and compression (Content-Encoding or "
         "grpc-encoding).");
  for (int p = 0; p < GW_N_PROTOCOLS; p++)
    for (int s = 0; s < OTLP_N_SIGNALS; s++)
      for (int e = 0; e < OTLP_N_CONTENT_ENCODINGS; e++)
        sb_printf(&b, "otlp_gateway_received_bytes_total{protocol=\"%s\",signal=\"%s\",encoding=\"%s\"} %" PRIu64 "\n",
                  protocol_labels[p], signal_labels[s], ce_labels[e], sum.received_bytes[p][s][e]);

  header(&b, "request_duration_seconds", "histogram",
         "Time from a request's first byte (gRPC: its HEADERS frame) to its answer, by protocol.");
  render_histogram(&b, "request_duration_seconds", "protocol=\"http\",", &sum.request_duration[GW_PROTO_HTTP]);
  render_histogram(&b, "request_duration_seconds", "protocol=\"grpc\",", &sum.request_duration[GW_PROTO_GRPC]);

  header(&b, "dropped_items_total", "counter", "Items dropped, by signal and reason (rejected: a backend refused them as bad; expired: still failing after backends.retry.max_elapsed; shutdown: still queued at the shutdown deadline; malformed: a queued part could not be re-split).");
  for (int s = 0; s < OTLP_N_SIGNALS; s++)
    for (int r = 0; r < GW_N_DROP_REASONS; r++)
      sb_printf(&b, "otlp_gateway_dropped_items_total{signal=\"%s\",reason=\"%s\"} %" PRIu64 "\n", signal_labels[s],
                drop_labels[r], sum.dropped_items[s][r]);
  render_backends(&b, g);
  header(&b, "backend_batch_parts", "histogram",
         "Client parts (and retried parts) carried by one backend request: parts bound for a backend while its "
         "connections are busy leave together (backends.batch).");
  render_count_histogram(&b, "backend_batch_parts", &sum.backend_batch_parts);

  header(&b, "connections", "gauge",
         "Open connections, by side (client: ingest; backend: to collectors) and protocol (backends: HTTP/1.1).");
  for (int p = 0; p < GW_N_PROTOCOLS; p++)
    sb_printf(&b, "otlp_gateway_connections{side=\"client\",protocol=\"%s\"} %" PRIu64 "\n", protocol_labels[p],
              g ? g->client_connections[p] : 0);
  sb_printf(&b, "otlp_gateway_connections{side=\"backend\",protocol=\"http\"} %" PRIu64 "\n",
            g ? g->backend_connections : 0);
  header(&b, "connections_rejected_total", "counter", "Client connections turned away over server.max_connections.");
  sb_printf(&b, "otlp_gateway_connections_rejected_total %" PRIu64 "\n", g ? g->client_connections_rejected : 0);
  /* Every reason of both sides exists from the start, TLS configured or not, so rate() and alerts see the first. */
  header(&b, "tls_handshake_failures_total", "counter",
         "Failed TLS handshakes, by side (client: ingest connections from applications; backend: the gateway's "
         "connections to https backends, health checks included) and reason (protocol, certificate, "
         "no_certificate, alpn, reset).");
  for (int r = 0; r < TLS_N_FAIL_REASONS; r++) {
    uint64_t be = 0;
    for (size_t i = 0; g && i < g->n_backends; i++) be += g->backends[i].m->tls_backend_failures[r];
    sb_printf(&b, "otlp_gateway_tls_handshake_failures_total{side=\"client\",reason=\"%s\"} %" PRIu64 "\n",
              tls_fail_label((tls_fail_t)r), g ? g->tls_client_failures[r] : 0);
    sb_printf(&b, "otlp_gateway_tls_handshake_failures_total{side=\"backend\",reason=\"%s\"} %" PRIu64 "\n",
              tls_fail_label((tls_fail_t)r), be);
  }

  /* Process-wide, not per worker: read from the one budget every worker charges (gateway/memory). */
  header(&b, "memory_bytes", "gauge", "Bytes held for telemetry now, all workers: request bodies being read, decompressed, transcoded or forwarded, parts compressed for backends, and every retry queue (server.memory_limit counts these).");
  sb_printf(&b, "otlp_gateway_memory_bytes %" PRIu64 "\n", gm_used(&gm_process));
  header(&b, "memory_limit_bytes", "gauge", "server.memory_limit: above it new requests get 503 with Retry-After before their body is read.");
  sb_printf(&b, "otlp_gateway_memory_limit_bytes %" PRIu64 "\n", gm_limit(&gm_process));

  render_process(&b);
  if (b.oom) {
    free(b.buf);
    return 0;
  }
  *out = b.buf;
  return b.len;
}
