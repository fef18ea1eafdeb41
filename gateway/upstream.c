/*
 * gateway/upstream — see upstream.h. Owns the backend set: backends' lifetime (created, removed, freed once
 * nothing refers to them), static + DNS backends and reconciling them with a reloaded config, each backend's
 * pool, name and checker, health (active checks, passive ejection with refusal hold-downs, readmission), the
 * ring snapshots and their rebuilds (where a backend that left the ring has its in-flight parts cancelled and
 * its queue handed to gateway/retry_queue for re-routing), the client parts' accounting and the /metrics views.
 */
#include "gateway/upstream.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gateway/log.h"
#include "gateway/otlp_http.h"
#include "gateway/tls_config.h"
#include "gateway/upstream_internal.h"
#include "health/check.h"
#include "health/dns.h"

#define HOLD_DOWN_CHECKS 10                      /* refusal ejection: first hold-down, in check intervals */
#define HOLD_DOWN_MAX_NS (300ull * 1000 * MS_NS) /* ... doubling per ejection up to 5 minutes */

static void schedule_rebuild(us_set_t *s);
static void on_readmit(uv_timer_t *t);
static int pool_send(void *ud, const char *path, const char *content_type, const char *content_encoding,
                     const struct iovec *iov, size_t n_iov, be_done_cb cb, void *cb_ud);
static void on_backend_request(void *ud, int sig, int status, size_t n_parts, uint64_t items, size_t bytes,
                               uint64_t start_ns, int final);

bl_route_t us_route(const cfg_t *c, int sig) {
  if (sig == OTLP_TRACES && c->routing.traces == CFG_ROUTE_SERVICE) return BL_ROUTE_SERVICE;
  if (sig == OTLP_LOGS && c->routing.logs == CFG_ROUTE_SERVICE) return BL_ROUTE_SERVICE;
  if (sig == OTLP_METRICS) {
    if (c->routing.metrics == CFG_ROUTE_RESOURCE) return BL_ROUTE_RESOURCE;
    if (c->routing.metrics == CFG_ROUTE_METRIC) return BL_ROUTE_METRIC;
    return BL_ROUTE_SERVICE;
  }
  return BL_ROUTE_TRACE_ID;
}

/* ---- backend lifetime ---------------------------------------------------------------------------------- */

static void backend_handle_closed(uv_handle_t *h) {
  us_backend_t *b = h->data;
  if (--b->handles_open > 0) return;
  us_set_t *s = b->set;
  /* The pool's and the checker's streams were all closed before these timers (tp_close lets go of the cache at
   * once), so the session cache can go. */
  tls_session_cache_destroy(b->tls_session);
  free(b->endpoint);
  free(b->host);
  free(b->path);
  free(b->sni);
  free(b);
  if (--s->handles_open == 0 && s->destroyed) free(s);
}

static void backend_unlink_and_close(us_backend_t *b) {
  us_set_t *s = b->set;
  for (us_backend_t **pp = &s->backends; *pp; pp = &(*pp)->next)
    if (*pp == b) {
      *pp = b->next;
      break;
    }
  if (b->checker) hc_checker_stop(b->checker);
  b->checker = NULL;
  bt_cancel(b->batch); /* nothing waits once nothing refers to b; at us_destroy, what waits is dropped */
  be_pool_destroy(b->pool);
  b->pool = NULL;
  bt_destroy(b->batch);
  b->batch = NULL;
  /* After its users: connections of the pool still waiting for a first answer hear UV_ECANCELED from the
   * loop and go (they hold the pool, not b). The name frees itself once its handles close; it calls
   * nothing of b's after this. */
  dns_name_destroy(b->name);
  b->name = NULL;
  uv_close((uv_handle_t *)&b->retry_timer, backend_handle_closed);
  uv_close((uv_handle_t *)&b->readmit_timer, backend_handle_closed);
}

/* A removed backend leaves once nothing refers to it and nothing waits in its queue (checked by rebuild,
 * never inside a callback of its own pool). */
static void backend_maybe_free(us_backend_t *b) {
  if (b->origin || b->refs || b->q_head || b->retry_inflight || b->set->destroyed) return;
  backend_unlink_and_close(b);
}

void us__release(us_backend_t *b) {
  if (!b->origin) schedule_rebuild(b->set);
}

static void on_check(void *ud, int ok, int detail);

/* The name b's TLS verifies (and sends as SNI): backends.tls.server_name, else b's own. */
static const char *server_name(const cfg_t *c, const us_backend_t *b) {
  return c->backends.tls.server_name && c->backends.tls.server_name[0] ? c->backends.tls.server_name : b->sni;
}

/* c's client context for b: NULL for a plaintext backend, and for an https one whose config has no context
 * (the caller refuses that rather than talk plaintext to it). */
static tls_ctx_t *tls_context(const cfg_t *c, const us_backend_t *b) { return b->tls ? tc_get(c)->backends : NULL; }

static void start_checker(us_backend_t *b) {
  const cfg_t *c = b->set->cfg;
  if (!c->backends.health_check.enabled) return;
  /* Over the same TLS settings as the data (a context, the name, the session cache), on its own absolute path. */
  hc_config_t hc = {
      .tls = tls_context(c, b),
      .server_name = server_name(c, b),
      .session_cache = b->tls_session,
      .host = b->host,
      .name = b->name,
      .port = c->backends.health_check.port ? (uint16_t)c->backends.health_check.port : b->port,
      .path = c->backends.health_check.path,
      .interval_ms = c->backends.health_check.interval_ms,
      .timeout_ms = c->backends.health_check.timeout_ms,
  };
  if (hc_checker_start(b->set->loop, &hc, on_check, b, &b->checker) != 0) {
    b->checker = NULL;
    gw_log(GW_LOG_ERROR, "cannot start health checks", "backend", b->endpoint, NULL);
  }
}

/* Each lookup round of b's host (never for an IP literal): a new address is logged; a failed round (one
 * line per backend per 10 s) says whether b keeps its last address or has none, i.e. fails its sends. */
static void on_name(void *ud, const dns_name_report_t *r) {
  us_backend_t *b = ud;
  uint64_t held;
  if (r->status == DNS_OK) {
    if (r->prev)
      gw_log(GW_LOG_INFO, "backend name resolved", "backend", b->endpoint, "address", r->addr, "previous",
             r->prev[0] ? r->prev : "none", NULL);
  } else if (gw_log_limit_take(&b->log_dns, uv_hrtime(), LOG_REPEAT_NS, &held)) {
    if (r->addr[0])
      gw_log(GW_LOG_WARN, "backend name resolution failed, keeping the last address", "backend", b->endpoint,
             "address", r->addr, "error", r->err, "suppressed_since_last", gw_log_u64(held), NULL);
    else
      gw_log(GW_LOG_WARN, "backend name does not resolve", "backend", b->endpoint, "error", r->err,
             "action", "connections and checks fail until it does", "suppressed_since_last", gw_log_u64(held),
             NULL);
  }
}

/* Test hook, config-independent: OTLP_GATEWAY_TEST_RESOLVERS="IP:port[,IP:port...]" sends the lookups of
 * backend host names to these servers instead of the system's (backends.dns.servers are DNS discovery's).
 * The integration tests run their own DNS server this way. Returns the count (<= cap), pointers into buf. */
static size_t test_resolvers(char *buf, size_t len, const char **out, size_t cap) {
  const char *env = getenv("OTLP_GATEWAY_TEST_RESOLVERS");
  size_t n = 0;
  if (!env || !*env || strlen(env) >= len) return 0;
  strcpy(buf, env);
  for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok && n < cap; tok = strtok_r(NULL, ",", &save))
    out[n++] = tok;
  return n;
}

static void on_pool_tls_error(void *ud, tls_fail_t reason, const char *error);

/* The connection settings of c for b's pool. */
static be_pool_config_t pool_config(const cfg_t *c, us_backend_t *b) {
  return (be_pool_config_t){
      .host = b->host,
      .name = b->name,
      .port = b->port,
      .max_connections = c->backends.max_connections_per_backend,
      .request_timeout_ms = c->backends.request_timeout_ms,
      .headers = c->backends.headers,
      .n_headers = c->backends.n_headers,
      .path_prefix = b->path,
      .tls = tls_context(c, b),
      .server_name = server_name(c, b),
      .session_cache = b->tls_session,
      .on_tls_error = on_pool_tls_error,
      .tls_error_ud = b,
  };
}

static void backend_free_unstarted(us_backend_t *b) {
  tls_session_cache_destroy(b->tls_session);
  free(b->endpoint);
  free(b->host);
  free(b->path);
  free(b->sni);
  free(b);
}

/* A backend: its host's name (resolved in the background, every backends.dns.interval), its pool and its
 * checker, both of which take the name's cached address, and for TLS share one session cache. tls: https;
 * path: the endpoint's path prefix; sni: the name verified unless backends.tls.server_name. */
static us_backend_t *backend_create(us_set_t *s, const char *endpoint, const char *host, uint16_t port,
                                    uint32_t weight, unsigned origin, int tls, const char *path, const char *sni) {
  const cfg_t *c = s->cfg;
  if (tls && !tc_get(c)->backends) { /* never plaintext to an https endpoint */
    gw_log(GW_LOG_ERROR, "cannot add backend: no TLS client context for an https endpoint", "backend", endpoint,
           NULL);
    return NULL;
  }
  us_backend_t *b = calloc(1, sizeof *b);
  if (!b) return NULL;
  b->set = s;
  b->endpoint = strdup(endpoint);
  b->host = strdup(host);
  b->tls = tls;
  b->path = strdup(path ? path : "");
  b->sni = strdup(sni && *sni ? sni : host);
  if (tls && !(b->tls_session = tls_session_cache_create())) {
    backend_free_unstarted(b);
    return NULL;
  }
  if (!b->path || !b->sni) {
    backend_free_unstarted(b);
    return NULL;
  }
  b->port = port;
  b->weight = weight ? weight : 1;
  b->origin = origin;
  char servers_buf[256], err[256] = "";
  const char *servers[4];
  dns_name_config_t nc = {
      .host = host,
      .interval_ms = c->backends.dns.interval_ms,
      .servers = servers,
      .n_servers = test_resolvers(servers_buf, sizeof servers_buf, servers, 4),
      .cb = on_name,
      .ud = b,
  };
  if (b->endpoint && b->host && dns_name_create(s->loop, &nc, &b->name, err, sizeof err) != 0)
    gw_log(GW_LOG_ERROR, "cannot set up the lookups of a backend host", "backend", endpoint, "error", err, NULL);
  be_pool_config_t pc = pool_config(c, b);
  if (!b->endpoint || !b->host || !b->name || be_pool_create(s->loop, &pc, &b->pool) != 0) {
    dns_name_destroy(b->name); /* no callback after this: b may go now */
    backend_free_unstarted(b);
    return NULL;
  }
  bt_config_t bc = us__batch_config(c);
  if (!(b->batch = bt_create(s->batch_group, &bc, pool_send, b->pool, on_backend_request, b))) {
    be_pool_destroy(b->pool);
    dns_name_destroy(b->name);
    backend_free_unstarted(b);
    return NULL;
  }
  /* Up from the start: a dead backend is found by its first failed sends or checks, and what they held is
   * queued and re-routed, so nothing is lost while we learn. */
  hc_state_init(&b->health, c->backends.health_check.rise, c->backends.health_check.fall, 1);
  uv_timer_init(s->loop, &b->retry_timer);
  uv_timer_init(s->loop, &b->readmit_timer);
  b->retry_timer.data = b->readmit_timer.data = b;
  b->handles_open = 2;
  s->handles_open++;
  b->next = s->backends;
  s->backends = b;
  start_checker(b);
  gw_log(GW_LOG_INFO, "backend added", "backend", b->endpoint, "source", origin & ORIGIN_DNS ? "dns" : "static",
         NULL);
  return b;
}

static void backend_remove(us_backend_t *b) {
  b->origin = 0;
  if (b->checker) hc_checker_stop(b->checker);
  b->checker = NULL;
  gw_log(GW_LOG_INFO, "backend removed", "backend", b->endpoint, NULL);
  schedule_rebuild(b->set);
}

/* ---- health ------------------------------------------------------------------------------------------- */

/* Without active checks nothing would bring b back: it is tried again after one check interval, or at the
 * end of its hold-down. */
static void mark_down(us_backend_t *b) {
  if (!b->set->cfg->backends.health_check.enabled) {
    uint64_t ms = b->set->cfg->backends.health_check.interval_ms, now = uv_hrtime();
    if (!ms) ms = 1000;
    if (b->hold_until_ns > now && (b->hold_until_ns - now) / MS_NS > ms) ms = (b->hold_until_ns - now) / MS_NS;
    uv_timer_start(&b->readmit_timer, on_readmit, ms, 0);
  }
  schedule_rebuild(b->set);
}

static void set_down(us_backend_t *b, const char *reason, const char *detail) {
  gw_log(GW_LOG_WARN, "backend down", "backend", b->endpoint, "reason", reason, "error", detail, "queued_bytes",
         gw_log_u64(b->q_bytes), NULL);
  mark_down(b);
}

/* A TLS handshake with b failed, its pool's or its checker's: counted by reason. A close or reset during the
 * handshake is a transport failure like any other (passive health and the checks decide). Anything else (the
 * certificate did not verify: unknown CA, expired, name mismatch; no common protocol) is a setting no retry
 * mends: b goes down at once, so nothing is sent to it and what it held is re-routed, with one line per
 * backend per 10 s naming the reason while it keeps failing. The checks (over the same TLS settings) bring it
 * back once a handshake verifies, e.g. after a reload with the right CA. */
static void backend_tls_failed(us_backend_t *b, tls_fail_t reason, const char *error) {
  if ((unsigned)reason < TLS_N_FAIL_REASONS) b->m.tls_backend_failures[reason]++;
  if (reason == TLS_FAIL_RESET || !b->origin) return;
  b->tls_failing = 1;
  uint64_t held;
  if (gw_log_limit_take(&b->log_tls, uv_hrtime(), LOG_REPEAT_NS, &held))
    gw_log(GW_LOG_WARN, "backend TLS handshake failed", "backend", b->endpoint, "reason", tls_fail_label(reason),
           "error", error, "action", b->health.up ? "backend down, data re-routed" : "backend stays down",
           "suppressed_since_last", gw_log_u64(held), NULL);
  if (hc_state_force_down(&b->health) < 0) mark_down(b);
}

/* From b's pool, before the request on that connection fails with UV_EPROTO. */
static void on_pool_tls_error(void *ud, tls_fail_t reason, const char *error) { backend_tls_failed(ud, reason, error); }

static void readmit(us_backend_t *b) {
  if (!b->origin || b->health.up) return;
  hc_state_init(&b->health, b->health.rise, b->health.fall, 1);
  b->consecutive_failures = 0;
  b->refusals = 0;
  gw_log(GW_LOG_INFO, "backend up", "backend", b->endpoint, "reason", "readmitted after passive ejection", NULL);
  schedule_rebuild(b->set);
}

static void on_readmit(uv_timer_t *t) { readmit(t->data); }

static void on_check(void *ud, int ok, int detail) {
  us_backend_t *b = ud;
  /* The default check (GET / on the backend's own port) reaches an OTLP receiver, which has no page at "/"
   * and answers 404 or 405: any answer below 500 there means the collector is serving. A dedicated health
   * port or path must answer 2xx. */
  const __typeof__(b->set->cfg->backends.health_check) *hc = &b->set->cfg->backends.health_check;
  if (!ok && detail == UV_EPROTO && b->checker) {
    tls_fail_t reason;
    const char *why = hc_checker_tls_error(b->checker, &reason);
    if (*why) {
      backend_tls_failed(b, reason, why);
      if (reason != TLS_FAIL_RESET) return; /* down already, with its line */
    }
  }
  if (ok) b->tls_failing = 0;
  if (!ok && hc->port == 0 && strcmp(hc->path, "/") == 0 && detail >= 300 && detail < 500) ok = 1;
  /* A backend ejected for refusing the gateway (401, 404, ...) still passes a check that cannot see why:
   * it stays out for its hold-down, so a wrong token or path costs a retry now and then, not a flap. */
  if (ok && !b->health.up && uv_hrtime() < b->hold_until_ns) return;
  int change = hc_state_observe(&b->health, ok);
  if (change > 0) {
    b->consecutive_failures = 0;
    b->refusals = 0;
    gw_log(GW_LOG_INFO, "backend up", "backend", b->endpoint, "reason", "health check passed", "rise",
           gw_log_u64(b->health.rise), NULL);
    schedule_rebuild(b->set);
  } else if (change < 0) {
    set_down(b, "health check failed", detail < 0 ? uv_err_name(detail) : gw_log_i64(detail));
  }
}

/* Passive health: consecutive failed sends (transport errors, timeouts, 5xx, and answers that refuse the
 * gateway itself) eject at once. A delivery, or an answer that blames the data (400, 413), says the backend
 * works; 429 says neither. An ejection with refusals among its failures starts a hold-down that doubles
 * with each such ejection in a row (first HOLD_DOWN_CHECKS check intervals, at most HOLD_DOWN_MAX_NS). */
void us__passive_observe(us_backend_t *b, int status) {
  if (status == UV_ECANCELED) return; /* we cancelled it */
  int outcome = gw_outcome(status);
  if (outcome == GW_OUTCOME_SUCCESS || outcome == GW_OUTCOME_REJECTED) {
    b->tls_failing = 0;
    b->consecutive_failures = 0;
    b->refusals = 0;
    if (outcome == GW_OUTCOME_SUCCESS) b->refusal_ejections = 0;
    return;
  }
  if (status == 429) return;
  if (outcome == GW_OUTCOME_REFUSED) b->refusals++;
  uint32_t limit = b->set->cfg->backends.health_check.eject_after_failures;
  if (++b->consecutive_failures >= limit && limit > 0 && b->health.up && b->origin) {
    hc_state_force_down(&b->health);
    if (b->refusals) {
      uint64_t interval = b->set->cfg->backends.health_check.interval_ms * MS_NS;
      uint64_t hold = (interval ? interval : 1000 * MS_NS) * HOLD_DOWN_CHECKS;
      for (uint32_t i = 0; i < b->refusal_ejections && hold < HOLD_DOWN_MAX_NS; i++) hold *= 2;
      if (hold > HOLD_DOWN_MAX_NS) hold = HOLD_DOWN_MAX_NS;
      b->refusal_ejections++;
      b->hold_until_ns = uv_hrtime() + hold;
    }
    set_down(b, b->refusals ? "passive ejection: the backend refuses the gateway" : "passive ejection",
             status < 0 ? uv_err_name(status) : gw_log_i64(status));
  }
}

/* One line per backend per 10 s for an answer that refuses the gateway itself: the operator's to fix
 * (backends.headers, the endpoint's path), nothing a retry mends. */
static void log_refusal(us_backend_t *b, int status) {
  uint64_t held;
  if (gw_log_limit_take(&b->log_refused, uv_hrtime(), LOG_REPEAT_NS, &held))
    gw_log(GW_LOG_WARN, "backend refuses the gateway", "backend", b->endpoint, "status", gw_log_i64(status),
           "action", "kept queued, backend counted as failing, re-routed once ejected", "suppressed_since_last",
           gw_log_u64(held), NULL);
}

/* ---- ring --------------------------------------------------------------------------------------------- */

static int cmp_member(const void *a, const void *b) {
  return strcmp(((const bl_ring_member_t *)a)->endpoint, ((const bl_ring_member_t *)b)->endpoint);
}

/* Is ring made of exactly these members (sorted by endpoint)? */
static int ring_equals(const bl_ring_t *r, const bl_ring_member_t *m, size_t n) {
  if (!r || bl_ring_size(r) != n) return 0;
  for (size_t i = 0; i < n; i++)
    if (bl_ring_member_ud(r, (uint32_t)i) != m[i].ud || bl_ring_weight(r, (uint32_t)i) != m[i].weight) return 0;
  return 1;
}

static void rebuild(us_set_t *s) {
  size_t n = 0;
  for (us_backend_t *b = s->backends; b; b = b->next) n += b->origin && b->health.up;
  bl_ring_member_t *m = calloc(n ? n : 1, sizeof *m);
  if (!m) {
    schedule_rebuild(s); /* try again */
    return;
  }
  size_t k = 0;
  for (us_backend_t *b = s->backends; b; b = b->next)
    if (b->origin && b->health.up) m[k++] = (bl_ring_member_t){b->endpoint, b->weight, b};
  qsort(m, n, sizeof *m, cmp_member);
  if (!ring_equals(s->ring, m, n)) {
    bl_ring_t *r = bl_ring_create(m, n);
    if (!r) {
      free(m);
      schedule_rebuild(s);
      return;
    }
    bl_ring_unref(s->ring);
    s->ring = r;
    s->ring_rebuilds++;
    gw_log(GW_LOG_INFO, "ring rebuilt", "backends", gw_log_u64(n), NULL);
  }
  free(m);
  /* Who is in the ring now; backends that just left it lose what they had in flight (cancelled and
   * re-routed: at-least-once), backends that joined it send what waited in their own queue. */
  for (us_backend_t *b = s->backends; b; b = b->next) {
    int now_in = b->origin && b->health.up;
    if (b->in_ring && !now_in) {
      rq__left_ring(b);
      b->cancel = b->origin != 0; /* down, not removed: what is in flight to it is cancelled and re-routed */
    }
    b->in_ring = now_in;
  }
  rq__reroute_stranded(s);
  for (us_backend_t *b = s->backends; b; b = b->next)
    if (b->cancel) {
      b->cancel = 0;
      bt_cancel(b->batch); /* what waits for a connection, then what is on one */
      be_pool_cancel(b->pool);
    }
  for (us_backend_t *b = s->backends, *next; b; b = next) {
    next = b->next;
    if (b->in_ring) rq__pump(b);
    else backend_maybe_free(b);
  }
}

static void on_rebuild_timer(uv_timer_t *t) { rebuild(t->data); }

static void schedule_rebuild(us_set_t *s) {
  if (!s->destroyed) uv_timer_start(&s->rebuild_timer, on_rebuild_timer, 0, 0);
}

/* ---- client parts ------------------------------------------------------------------------------------- */

const char *us_backend_endpoint(const us_backend_t *b) { return b->endpoint; }
be_pool_t *us_backend_pool(us_backend_t *b) { return b->pool; }

void us_part_begin(us_backend_t *b, size_t len) {
  b->refs++;
  b->inflight_bytes += len;
}

void us_part_end(us_backend_t *b, size_t len) {
  b->refs--;
  b->inflight_bytes -= len;
}

bt_t *us_backend_batcher(us_backend_t *b) { return b->batch; }

bt_config_t us__batch_config(const cfg_t *c) {
  /* Another connection once a quarter of a batch waits behind the request in flight (bt_config_t.open_parts), or
   * once that request is 2 ms old. */
  uint32_t parts = c->backends.batch.max_parts;
  return (bt_config_t){
      .max_in_flight = c->backends.max_connections_per_backend,
      .max_bytes = (size_t)c->backends.batch.max_bytes,
      .max_parts = parts,
      .compress = c->backends.compression == CFG_COMPRESSION_GZIP,
      .open_parts = parts > 1 ? (parts / 4 > 2 ? parts / 4 : 2) : 0,
      .open_bytes = (size_t)c->backends.batch.max_bytes / 4,
      .open_after_ns = 2 * MS_NS, /* a collector that has not answered in 2 ms is busy: use another connection */
  };
}

static int pool_send(void *ud, const char *path, const char *content_type, const char *content_encoding,
                     const struct iovec *iov, size_t n_iov, be_done_cb cb, void *cb_ud) {
  return be_send(ud, path, content_type, content_encoding, iov, n_iov, cb, cb_ud);
}

/* One backend request of b's batcher (client parts and retries alike): counted once, whatever it carried.
 * final: its parts take this answer (else they are sent again, alone or in halves, and counted then). */
static void on_backend_request(void *ud, int sig, int status, size_t n_parts, uint64_t items, size_t bytes,
                               uint64_t start_ns, int final) {
  (void)bytes;
  us_backend_t *b = ud;
  int outcome = gw_outcome(status);
  b->m.requests[outcome]++;
  gw_histogram_observe(&b->m.duration, (double)(uv_hrtime() - start_ns) / 1e9);
  gw_count_histogram_observe(&b->set->metrics->backend_batch_parts, n_parts);
  if (outcome == GW_OUTCOME_SUCCESS && final) b->m.items[sig] += items;
  us__passive_observe(b, status);
  if (outcome == GW_OUTCOME_REFUSED) {
    log_refusal(b, status);
  } else if (status == UV_EPROTO && b->tls_failing) {
    /* its handshake failed: backend_tls_failed logged why */
  } else if (outcome == GW_OUTCOME_RETRYABLE || outcome == GW_OUTCOME_ERROR) {
    uint64_t held;
    if (gw_log_limit_take(&b->log_failed, uv_hrtime(), LOG_REPEAT_NS, &held))
      gw_log(GW_LOG_WARN, "backend request failed", "backend", b->endpoint, "error",
             status < 0 ? uv_err_name(status) : gw_log_i64(status), "action", "queued for retry",
             "suppressed_since_last", gw_log_u64(held), NULL);
  } else if (outcome == GW_OUTCOME_REJECTED && final) {
    uint64_t held;
    if (gw_log_limit_take(&b->log_rejected, uv_hrtime(), LOG_REPEAT_NS, &held))
      gw_log(GW_LOG_WARN, "items dropped", "reason", "rejected", "backend", b->endpoint, "signal",
             otlp_signal(sig)->name, "status", gw_log_i64(status), "items", gw_log_u64(items), "suppressed_since_last",
             gw_log_u64(held), NULL);
  }
}

/* ---- configuration: static + DNS backends -------------------------------------------------------------- */

static us_backend_t *find_live(us_set_t *s, const char *endpoint) {
  for (us_backend_t *b = s->backends; b; b = b->next)
    if (b->origin && strcmp(b->endpoint, endpoint) == 0) return b;
  return NULL;
}

/* Makes the set of live backends equal to static ∪ DNS. */
static void reconcile(us_set_t *s) {
  const cfg_t *c = s->cfg;
  for (us_backend_t *b = s->backends; b; b = b->next) b->want = 0;
  for (size_t i = 0; i < c->backends.n_statics; i++) {
    const cfg_backend_t *cb = &c->backends.statics[i];
    us_backend_t *b = find_live(s, cb->endpoint);
    if (!b) b = backend_create(s, cb->endpoint, cb->host, cb->port, cb->weight, ORIGIN_STATIC, cb->tls, cb->path, NULL);
    if (!b) {
      gw_log(GW_LOG_ERROR, "cannot add backend: out of memory", "backend", cb->endpoint, NULL);
      continue;
    }
    b->want |= ORIGIN_STATIC;
    if (b->weight != cb->weight) {
      b->weight = cb->weight;
      schedule_rebuild(s);
    }
  }
  for (size_t i = 0; i < s->n_dns_addrs; i++) {
    char ep[128];
    const char *a = s->dns_addrs[i];
    int tls = c->backends.dns.scheme == CFG_SCHEME_HTTPS;
    snprintf(ep, sizeof ep, strchr(a, ':') ? "%s://[%s]:%u" : "%s://%s:%u", tls ? "https" : "http", a,
             (unsigned)c->backends.dns.port);
    us_backend_t *b = find_live(s, ep);
    /* TLS to a discovered address verifies the name it was discovered by (or backends.tls.server_name). */
    if (!b)
      b = backend_create(s, ep, a, (uint16_t)c->backends.dns.port, 1, ORIGIN_DNS, tls, "", c->backends.dns.hostname);
    if (!b) {
      gw_log(GW_LOG_ERROR, "cannot add backend: out of memory", "backend", ep, NULL);
      continue;
    }
    b->want |= ORIGIN_DNS;
  }
  for (us_backend_t *b = s->backends; b; b = b->next) {
    if (!b->origin) continue; /* removed earlier, draining */
    if (!b->want) backend_remove(b);
    else b->origin = b->want;
  }
  schedule_rebuild(s);
}

static void free_dns_addrs(us_set_t *s) {
  for (size_t i = 0; i < s->n_dns_addrs; i++) free(s->dns_addrs[i]);
  free(s->dns_addrs);
  s->dns_addrs = NULL;
  s->n_dns_addrs = 0;
}

static void on_dns(void *ud, int status, const char *const *addrs, size_t n, const char *err) {
  us_set_t *s = ud;
  if (status == DNS_FAILED) { /* keep what we had: a resolver outage is not a pool change */
    uint64_t held;
    if (gw_log_limit_take(&s->log_dns, uv_hrtime(), LOG_REPEAT_NS, &held))
      gw_log(GW_LOG_WARN, "dns resolution failed, keeping the current backends", "hostname",
             s->cfg->backends.dns.hostname, "error", err, "suppressed_since_last", gw_log_u64(held), NULL);
    return;
  }
  int same = n == s->n_dns_addrs;
  for (size_t i = 0; same && i < n; i++) same = strcmp(addrs[i], s->dns_addrs[i]) == 0;
  if (same) return;
  char **copy = calloc(n ? n : 1, sizeof *copy);
  if (!copy) return;
  for (size_t i = 0; i < n; i++)
    if (!(copy[i] = strdup(addrs[i]))) {
      for (size_t j = 0; j < i; j++) free(copy[j]);
      free(copy);
      return;
    }
  free_dns_addrs(s);
  s->dns_addrs = copy;
  s->n_dns_addrs = n;
  gw_log(GW_LOG_INFO, "dns answer changed", "hostname", s->cfg->backends.dns.hostname, "addresses", gw_log_u64(n),
         NULL);
  reconcile(s);
}

static int start_dns(us_set_t *s, char *err, size_t errlen) {
  const cfg_t *c = s->cfg;
  if (!c->backends.dns.hostname || !c->backends.dns.hostname[0]) return 0;
  return dns_watch_start(s->loop, c->backends.dns.hostname, (const char *const *)c->backends.dns.servers,
                         c->backends.dns.n_servers, c->backends.dns.interval_ms, on_dns, s, &s->dns, err, errlen);
}

static int dns_settings_equal(const cfg_t *a, const cfg_t *b) {
  const char *ha = a->backends.dns.hostname ? a->backends.dns.hostname : "";
  const char *hb = b->backends.dns.hostname ? b->backends.dns.hostname : "";
  if (strcmp(ha, hb) || a->backends.dns.interval_ms != b->backends.dns.interval_ms ||
      a->backends.dns.n_servers != b->backends.dns.n_servers)
    return 0;
  for (size_t i = 0; i < a->backends.dns.n_servers; i++)
    if (strcmp(a->backends.dns.servers[i], b->backends.dns.servers[i])) return 0;
  return 1;
}

static int health_settings_equal(const cfg_t *a, const cfg_t *b) {
  const __typeof__(a->backends.health_check) *x = &a->backends.health_check, *y = &b->backends.health_check;
  return x->enabled == y->enabled && strcmp(x->path, y->path) == 0 && x->port == y->port &&
         x->interval_ms == y->interval_ms && x->timeout_ms == y->timeout_ms && x->rise == y->rise &&
         x->fall == y->fall;
}

static void on_sweep(uv_timer_t *t) { rq__sweep(t->data); }

int us_create(uv_loop_t *loop, const cfg_t *cfg, gw_metrics_t *metrics, us_set_t **out, char *err, size_t errlen) {
  us_set_t *s = calloc(1, sizeof *s);
  if (!s) {
    snprintf(err, errlen, "out of memory");
    return -1;
  }
  s->loop = loop;
  s->cfg = cfg;
  s->metrics = metrics;
  s->rng = uv_hrtime() | 1;
  s->ring = bl_ring_create(NULL, 0);
  if (bt_group_create(loop, &s->batch_group) != 0) {
    bl_ring_unref(s->ring);
    free(s);
    snprintf(err, errlen, "out of memory");
    *out = NULL;
    return -1;
  }
  uv_timer_init(loop, &s->rebuild_timer);
  uv_timer_init(loop, &s->sweep_timer);
  s->rebuild_timer.data = s->sweep_timer.data = s;
  s->handles_open = 2;
  uv_timer_start(&s->sweep_timer, on_sweep, 1000, 1000);
  uv_unref((uv_handle_t *)&s->sweep_timer);
  if (!s->ring) {
    snprintf(err, errlen, "out of memory");
    *out = s;
    return -1;
  }
  *out = s;
  reconcile(s);
  rebuild(s); /* the first ring now, before listening */
  uv_timer_stop(&s->rebuild_timer);
  if (start_dns(s, err, errlen) != 0) return -1;
  return 0;
}

void us_apply_config(us_set_t *s, const cfg_t *cfg) {
  const cfg_t *old = s->cfg;
  int dns_same = dns_settings_equal(old, cfg);
  int health_same = health_settings_equal(old, cfg);
  s->cfg = cfg;
  if (!dns_same) {
    if (s->dns) dns_watch_stop(s->dns);
    s->dns = NULL;
    free_dns_addrs(s);
    char err[256];
    if (start_dns(s, err, sizeof err) != 0) gw_log(GW_LOG_ERROR, "cannot start DNS discovery", "error", err, NULL);
  }
  if (!health_same) {
    for (us_backend_t *b = s->backends; b; b = b->next) {
      if (!b->origin) continue;
      if (b->checker) hc_checker_stop(b->checker);
      b->checker = NULL;
      b->health.rise = cfg->backends.health_check.rise;
      b->health.fall = cfg->backends.health_check.fall;
      if (b->health.up) hc_state_init(&b->health, b->health.rise, b->health.fall, 1);
      else if (!cfg->backends.health_check.enabled) readmit(b);
      start_checker(b);
    }
  }
  /* Headers (a renewed credential), request_timeout and max_connections_per_backend reach the backends that
   * stay too, for the requests they send from now on; the new config's TLS context and server name, for the
   * connections and checks they open from now on (open ones keep theirs). */
  for (us_backend_t *b = s->backends; b; b = b->next) {
    if (!b->origin) continue;
    be_pool_config_t pc = pool_config(cfg, b);
    if (b->tls && !pc.tls) { /* cannot happen once the config's contexts are attached: keep the old ones */
      gw_log(GW_LOG_ERROR, "no TLS client context in the new config, keeping the previous settings", "backend",
             b->endpoint, NULL);
      continue;
    }
    tls_session_cache_clear(b->tls_session); /* new verification settings: no resuming the old sessions */
    bt_config_t bc = us__batch_config(cfg);
    bt_set_config(b->batch, &bc);
    if (be_pool_update(b->pool, &pc) != 0 ||
        (b->checker && hc_checker_set_tls(b->checker, pc.tls, pc.server_name) != 0))
      gw_log(GW_LOG_ERROR, "cannot apply the new connection settings: out of memory", "backend", b->endpoint, NULL);
  }
  reconcile(s);
}

/* ---- views, shutdown --------------------------------------------------------------------------------- */

bl_ring_t *us_ring(const us_set_t *s) { return s->ring; }
uint64_t us_ring_rebuilds(const us_set_t *s) { return s->ring_rebuilds; }

size_t us_backend_count(const us_set_t *s) {
  size_t n = 0;
  for (const us_backend_t *b = s->backends; b; b = b->next) n += b->origin != 0;
  return n;
}

size_t us_backend_views(const us_set_t *s, gw_backend_view_t *out, size_t cap, uint64_t *backend_connections) {
  size_t n = 0;
  for (const us_backend_t *b = s->backends; b; b = b->next) {
    const be_stats_t *bs = be_pool_stats(b->pool);
    *backend_connections += bs->connections_open;
    if (!b->origin || n == cap) continue;
    uint64_t waiting = bt_unqueued_bytes(b->batch); /* retries waiting there are in q_bytes already */
    out[n++] = (gw_backend_view_t){b->endpoint,         &b->m, b->health.up && b->in_ring,
                                   b->q_bytes + bs->queued_bytes + waiting, b->retries + bs->retries, b->sp_bytes};
  }
  return n;
}

static void set_timer_closed(uv_handle_t *h) {
  us_set_t *s = h->data;
  if (--s->handles_open == 0) free(s);
}

void us_destroy(us_set_t *s) {
  if (!s) return;
  if (s->dns) dns_watch_stop(s->dns);
  s->dns = NULL;
  free_dns_addrs(s);
  /* What is queued is dropped and pools fail what is in flight (callbacks drop it: abandoned), then every
   * backend closes. */
  rq_abandon(s);
  s->destroyed = 1;
  while (s->backends) backend_unlink_and_close(s->backends);
  bt_group_destroy(s->batch_group);
  s->batch_group = NULL;
  bl_ring_unref(s->ring);
  s->ring = NULL;
  /* The set is freed by whichever close callback comes last: its timer's or its last backend's. */
  uv_close((uv_handle_t *)&s->rebuild_timer, set_timer_closed);
  uv_close((uv_handle_t *)&s->sweep_timer, set_timer_closed);
}
