/*
 * health/check: the rise/fall counter, and the active checker against in-process servers on 127.0.0.1.
 *
 * Each checker test runs its own loop in the test thread: the checkers (probes) under test, an
 * http_server answering a set status, and/or a raw server that captures the request and then stays silent,
 * closes, or writes canned bytes. A probe stops its checker from the result callback after N results, or
 * when the event a test waits for happens (the raw server has the request, the silent DNS server a query);
 * once every probe stopped, a grace period catches late callbacks before the servers go. A watchdog bounds
 * each run, and every run must end with uv_loop_close() == 0: no handle of the checker left behind.
 *
 * No assertion measures time: that a check waits its interval or its timeout is asserted as an order of
 * timers on the same loop (a marker timer shorter than the checker's, started no later, fires first:
 * libuv runs timers by due time), which a slow machine cannot reorder.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include "gateway/http_server.h"
#include "health/check.h"
#include "health/dns.h"
#include "test.h"
#include "test_certs.h"

/* ---- state machine ------------------------------------------------------------------------------------ */

/* Feeds results ("s"/"f" per char) and returns the transitions as a string of '+', '-', '.'. */
static const char *feed(hc_state_t *s, const char *results) {
  static char out[64];
  size_t i = 0;
  for (; results[i] && i < sizeof out - 1; i++) {
    int t = hc_state_observe(s, results[i] == 's');
    out[i] = t > 0 ? '+' : t < 0 ? '-' : '.';
  }
  out[i] = 0;
  return out;
}

TEST(state_init) {
  hc_state_t s;
  hc_state_init(&s, 2, 3, 1);
  CHECK_EQ_INT(s.up, 1);
  CHECK_EQ_INT(s.health, 4);
  hc_state_init(&s, 2, 3, 0);
  CHECK_EQ_INT(s.up, 0);
  CHECK_EQ_INT(s.health, 0);
}

TEST(state_fall_from_up) {
  hc_state_t s;
  hc_state_init(&s, 2, 3, 1);
  CHECK_EQ_STR(feed(&s, "ff"), "..");
  CHECK_EQ_INT(s.up, 1);
  CHECK_EQ_INT(s.health, 2);
  CHECK_EQ_STR(feed(&s, "f"), "-");
  CHECK_EQ_INT(s.up, 0);
  CHECK_EQ_INT(s.health, 0);
  CHECK_EQ_STR(feed(&s, "ff"), ".."); /* stays down at 0 */
  CHECK_EQ_INT(s.health, 0);
}

TEST(state_rise_needs_consecutive_successes) {
  hc_state_t s;
  hc_state_init(&s, 2, 3, 0);
  CHECK_EQ_STR(feed(&s, "sfs"), "...");
  CHECK_EQ_INT(s.health, 1);
  CHECK_EQ_STR(feed(&s, "s"), "+");
  CHECK_EQ_INT(s.up, 1);
  CHECK_EQ_INT(s.health, 4); /* jumps to the top */
  /* rise=3: a failure in between undoes the partial rise (s s f s s is not enough) */
  hc_state_init(&s, 3, 1, 0);
  CHECK_EQ_STR(feed(&s, "ssfss"), ".....");
  CHECK_EQ_INT(s.up, 0);
  CHECK_EQ_STR(feed(&s, "s"), "+");
  CHECK_EQ_INT(s.health, 3);
}

TEST(state_success_while_up_saturates) {
  hc_state_t s;
  hc_state_init(&s, 2, 3, 1);
  CHECK_EQ_STR(feed(&s, "sss"), "...");
  CHECK_EQ_INT(s.health, 4);
  /* f f s leaves health 3 (one success adds one, no jump): the next down needs two failures */
  CHECK_EQ_STR(feed(&s, "ffs"), "...");
  CHECK_EQ_INT(s.health, 3);
  CHECK_EQ_STR(feed(&s, "f"), ".");
  CHECK_EQ_STR(feed(&s, "f"), "-");
}

TEST(state_force_down) {
  hc_state_t s;
  hc_state_init(&s, 2, 3, 1);
  CHECK_EQ_INT(hc_state_force_down(&s), -1);
  CHECK_EQ_INT(s.up, 0);
  CHECK_EQ_INT(s.health, 0);
  CHECK_EQ_INT(hc_state_force_down(&s), 0); /* already down */
  CHECK_EQ_STR(feed(&s, "ss"), ".+");       /* back after rise successes */
  CHECK_EQ_STR(feed(&s, "ff"), "..");       /* health 2: one more failure takes it down */
  CHECK_EQ_INT(hc_state_force_down(&s), -1);
  CHECK_EQ_INT(s.health, 0);
}

TEST(state_rise1_fall1) {
  hc_state_t s;
  hc_state_init(&s, 1, 1, 1);
  CHECK_EQ_INT(s.health, 1);
  CHECK_EQ_STR(feed(&s, "sfsfs"), ".-+-+");
  CHECK_EQ_STR(feed(&s, "ffss"), "-.+.");
  CHECK_EQ_INT(s.health, 1);
}

/* ---- checker harness ---------------------------------------------------------------------------------- */

#define MAX_RESULTS 16
#define MAX_PROBES 8

typedef struct probe {
  hc_checker_t *hc;
  int stop_after; /* stop from the callback after this many results; 0 = the test stops it */
  int stop_on_ok; /* or at the first ok result */
  int n, late, stopped;
  int ok[MAX_RESULTS], detail[MAX_RESULTS], blockers[MAX_RESULTS];
  int seq[MAX_RESULTS];   /* order of arrival among all the run's results, from 1 */
  int early[MAX_RESULTS]; /* 1: came before the marker (probe_mark) started at the previous result had fired */
  uv_timer_t mark;
  uint64_t mark_ms;       /* 0: no marker */
  char tls_error[MAX_RESULTS][128]; /* hc_checker_tls_error during each result */
  tls_fail_t tls_reason[MAX_RESULTS];
} probe_t;

typedef struct sconn {
  uv_tcp_t tcp;
  uv_write_t w;
  struct sconn *prev, *next;
  char buf[4096];
  size_t len;
  int closing;
} sconn_t;

/* Raw server: collects the request up to the blank line, then: answer == NULL: stays silent until the
 * client goes; "": closes; else writes answer and closes. */
typedef struct raw {
  uv_tcp_t listener;
  int on;
  const char *answer;
  sconn_t *conns;
  int accepted, open, max_open;
  char request[4096];
  struct probe *stop_on_request; /* stopped once a whole request has arrived: its check waits for an answer */
} raw_t;

static struct {
  uv_loop_t loop;
  uv_timer_t watchdog, grace;
  int timed_out;
  probe_t *probes[MAX_PROBES];
  int n_probes, active, results;
  uint64_t grace_ms;
  hs_server_t *srv;
  int srv_status, srv_requests, srv_done;
  char srv_path[256], srv_host[64], srv_ua[64], srv_conn[64];
  raw_t raw;
  int open_at_grace; /* raw server connections still open when the grace period ended */
  int blockers;      /* threadpool work items still running */
  int blocking;      /* blockers_go is initialised: the blockers wait on it until every probe stopped */
  uv_sem_t blockers_go;
  dns_name_t *name;  /* a name shared by the probes (destroyed after they stopped), or NULL */
  int dns_fd;        /* a DNS server that never answers, or -1 */
  uv_poll_t dns_poll; /* watches dns_fd for the first query, for dns_stop_probe */
  probe_t *dns_stop_probe;
} L;

static void probe_stop(probe_t *p);

static void copy_slice(char *dst, size_t cap, const hs_slice_t *s) {
  size_t n = s ? (s->len < cap - 1 ? s->len : cap - 1) : 0;
  if (n) memcpy(dst, s->base, n);
  dst[n] = 0;
}

static void srv_on_request(hs_request_t *req, void *ud) {
  L.srv_requests++;
  copy_slice(L.srv_path, sizeof L.srv_path, &req->path);
  copy_slice(L.srv_host, sizeof L.srv_host, hs_request_header(req, "Host"));
  copy_slice(L.srv_ua, sizeof L.srv_ua, hs_request_header(req, "User-Agent"));
  copy_slice(L.srv_conn, sizeof L.srv_conn, hs_request_header(req, "Connection"));
  int status = req->method == HTTP_GET ? L.srv_status : 405;
  hs_respond(req, status, "text/plain", NULL, 0, "x", 1);
}

static void srv_done(void *ud) { L.srv_done = 1; }

static uint16_t srv_start(int status) {
  hs_config_t cfg = {.name = "health-test", .max_body_bytes = 1024, .on_request = srv_on_request};
  L.srv_status = status;
  CHECK_EQ_INT(hs_server_create(&L.loop, &cfg, &L.srv), 0);
  CHECK_EQ_INT(hs_server_listen(L.srv, "127.0.0.1", 0), 0);
  return hs_server_port(L.srv);
}

static void sconn_closed(uv_handle_t *h) {
  sconn_t *c = h->data;
  L.raw.open--;
  if (c->prev) c->prev->next = c->next; else L.raw.conns = c->next;
  if (c->next) c->next->prev = c->prev;
  free(c);
}

static void sconn_close(sconn_t *c) {
  if (c->closing) return;
  c->closing = 1;
  uv_close((uv_handle_t *)&c->tcp, sconn_closed);
}

static void sconn_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  sconn_t *c = h->data;
  *buf = uv_buf_init(c->buf + c->len, (unsigned)(sizeof c->buf - 1 - c->len));
}

static void sconn_written(uv_write_t *w, int status) { sconn_close(w->data); }

static void sconn_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
  sconn_t *c = s->data;
  if (nread < 0 || c->len + (size_t)nread >= sizeof c->buf - 1) {
    sconn_close(c);
    return;
  }
  int had = c->len && strstr(c->buf, "\r\n\r\n") != NULL;
  c->len += (size_t)nread;
  c->buf[c->len] = 0;
  if (had || !strstr(c->buf, "\r\n\r\n")) return;
  memcpy(L.raw.request, c->buf, c->len + 1);
  if (L.raw.stop_on_request) probe_stop(L.raw.stop_on_request);
  if (!L.raw.answer) return;
  if (!*L.raw.answer) {
    sconn_close(c);
    return;
  }
  uv_buf_t b = uv_buf_init((char *)L.raw.answer, (unsigned)strlen(L.raw.answer));
  c->w.data = c;
  if (uv_write(&c->w, s, &b, 1, sconn_written) < 0) sconn_close(c);
}

static void raw_on_connection(uv_stream_t *l, int status) {
  if (status < 0) return;
  sconn_t *c = calloc(1, sizeof *c);
  uv_tcp_init(&L.loop, &c->tcp);
  c->tcp.data = c;
  c->next = L.raw.conns;
  if (c->next) c->next->prev = c;
  L.raw.conns = c;
  L.raw.open++;
  if (L.raw.open > L.raw.max_open) L.raw.max_open = L.raw.open;
  if (uv_accept(l, (uv_stream_t *)&c->tcp) == 0) {
    L.raw.accepted++;
    uv_read_start((uv_stream_t *)&c->tcp, sconn_alloc, sconn_read);
  } else {
    sconn_close(c);
  }
}

static uint16_t raw_start(const char *answer) {
  struct sockaddr_in a;
  struct sockaddr_storage bound;
  int len = sizeof bound;
  uv_ip4_addr("127.0.0.1", 0, &a);
  L.raw.answer = answer;
  uv_tcp_init(&L.loop, &L.raw.listener);
  L.raw.on = 1;
  CHECK_EQ_INT(uv_tcp_bind(&L.raw.listener, (const struct sockaddr *)&a, 0), 0);
  CHECK_EQ_INT(uv_listen((uv_stream_t *)&L.raw.listener, 16, raw_on_connection), 0);
  uv_tcp_getsockname(&L.raw.listener, (struct sockaddr *)&bound, &len);
  return ntohs(((struct sockaddr_in *)&bound)->sin_port);
}

static void servers_stop(void) {
  if (L.srv && !L.srv_done) hs_server_shutdown(L.srv, srv_done, NULL);
  if (L.dns_stop_probe && !uv_is_closing((uv_handle_t *)&L.dns_poll)) /* no query came (the test fails) */
    uv_close((uv_handle_t *)&L.dns_poll, NULL);
  if (L.raw.on) {
    L.raw.on = 0;
    uv_close((uv_handle_t *)&L.raw.listener, NULL);
    for (sconn_t *c = L.raw.conns; c; c = c->next) sconn_close(c);
  }
}

/* A port nothing listens on: bind one, read it, close it. */
static uint16_t refused_port(void) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET};
  socklen_t len = sizeof a;
  inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
  CHECK_EQ_INT(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
  CHECK_EQ_INT(getsockname(fd, (struct sockaddr *)&a, &len), 0);
  close(fd);
  return ntohs(a.sin_port);
}

static void grace_closed(uv_handle_t *h) {
  dns_name_destroy(L.name); /* after its checkers: they stopped */
  L.name = NULL;
  servers_stop();
}
static void grace_fire(uv_timer_t *t) {
  L.open_at_grace = L.raw.open;
  uv_close((uv_handle_t *)t, grace_closed);
}

static void probe_stop(probe_t *p) {
  if (p->stopped) return;
  p->stopped = 1;
  hc_checker_stop(p->hc);
  if (p->mark_ms) uv_close((uv_handle_t *)&p->mark, NULL);
  if (--L.active > 0) return;
  if (L.blocking)
    for (int i = 0; i < 4; i++) uv_sem_post(&L.blockers_go);
  uv_timer_start(&L.grace, grace_fire, L.grace_ms, 0);
}

static void mark_fire(uv_timer_t *t) {}

/* From now on, each result records whether it came before mark_ms of loop time had passed since the previous
 * result (the first: since this call), as early[]. */
static void probe_mark(probe_t *p, uint64_t mark_ms) {
  p->mark_ms = mark_ms;
  uv_timer_init(&L.loop, &p->mark);
  uv_timer_start(&p->mark, mark_fire, mark_ms, 0);
}

static void on_result(void *ud, int ok, int detail) {
  probe_t *p = ud;
  if (p->stopped) {
    p->late++;
    return;
  }
  if (p->n < MAX_RESULTS) {
    p->ok[p->n] = ok;
    p->detail[p->n] = detail;
    p->blockers[p->n] = L.blockers;
    p->seq[p->n] = ++L.results;
    p->early[p->n] = p->mark_ms && uv_is_active((uv_handle_t *)&p->mark);
    snprintf(p->tls_error[p->n], sizeof p->tls_error[p->n], "%s", hc_checker_tls_error(p->hc, &p->tls_reason[p->n]));
  }
  if (p->mark_ms) uv_timer_start(&p->mark, mark_fire, p->mark_ms, 0);
  if (++p->n == p->stop_after || (ok && p->stop_on_ok)) probe_stop(p);
}

/* The TLS settings probe_start gives its checkers (NULL: plaintext). */
static struct {
  tls_ctx_t *ctx;
  const char *server_name;
  tls_session_cache_t *session;
} g_tls;

static void probe_start(probe_t *p, const char *host, uint16_t port, const char *path, uint64_t interval_ms,
                        uint64_t timeout_ms, int stop_after) {
  memset(p, 0, sizeof *p);
  p->stop_after = stop_after;
  hc_config_t cfg = {.host = host, .name = L.name, .port = port, .path = path, .interval_ms = interval_ms,
                     .timeout_ms = timeout_ms, .tls = g_tls.ctx, .server_name = g_tls.server_name,
                     .session_cache = g_tls.session};
  CHECK_EQ_INT(hc_checker_start(&L.loop, &cfg, on_result, p, &p->hc), 0);
  L.probes[L.n_probes++] = p;
  L.active++;
}

static void watchdog_fire(uv_timer_t *t) {
  if (L.timed_out++) { /* cleanup did not finish either */
    uv_stop(&L.loop);
    return;
  }
  fprintf(stderr, "watchdog: run still going after 10 s\n");
  for (int i = 0; i < L.n_probes; i++) probe_stop(L.probes[i]);
  uv_timer_start(t, watchdog_fire, 5000, 0);
}

static void run_begin(uint64_t grace_ms) {
  memset(&L, 0, sizeof L);
  L.dns_fd = -1;
  uv_loop_init(&L.loop);
  L.grace_ms = grace_ms;
  uv_timer_init(&L.loop, &L.grace);
  uv_timer_init(&L.loop, &L.watchdog);
  uv_timer_start(&L.watchdog, watchdog_fire, 10000, 0); /* a bound for a loaded machine, never reached */
  uv_unref((uv_handle_t *)&L.watchdog); /* the run ends when everything else has closed */
}

/* Runs until every probe stopped, the grace period passed and the servers closed. */
static void run_end(void) {
  uv_run(&L.loop, UV_RUN_DEFAULT);
  CHECK_EQ_INT(L.timed_out, 0);
  for (int i = 0; i < L.n_probes; i++) CHECK_EQ_INT(L.probes[i]->late, 0);
  uv_close((uv_handle_t *)&L.watchdog, NULL);
  uv_run(&L.loop, UV_RUN_NOWAIT);
  CHECK_EQ_INT(uv_loop_close(&L.loop), 0);
  if (L.srv) hs_server_destroy(L.srv);
  if (L.blocking) uv_sem_destroy(&L.blockers_go);
}

/* Probes started after this share a name for host whose only DNS server never answers (L.dns_fd). */
static void silent_name(const char *host) {
  struct sockaddr_in a = {.sin_family = AF_INET};
  socklen_t len = sizeof a;
  inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
  L.dns_fd = socket(AF_INET, SOCK_DGRAM, 0);
  CHECK_EQ_INT(bind(L.dns_fd, (struct sockaddr *)&a, sizeof a), 0);
  CHECK_EQ_INT(getsockname(L.dns_fd, (struct sockaddr *)&a, &len), 0);
  char server[32], err[256] = "";
  snprintf(server, sizeof server, "127.0.0.1:%u", ntohs(a.sin_port));
  const char *servers[] = {server};
  dns_name_config_t nc = {.host = host, .servers = servers, .n_servers = 1};
  CHECK_EQ_INT(dns_name_create(&L.loop, &nc, &L.name, err, sizeof err), 0);
}

static void dns_query_seen(uv_poll_t *h, int status, int events) {
  probe_stop(L.dns_stop_probe);
  uv_close((uv_handle_t *)h, NULL);
}

/* Stops p once the first query has reached L.dns_fd (not reading it: silent_queries counts it later). */
static void stop_at_first_query(probe_t *p) {
  L.dns_stop_probe = p;
  CHECK_EQ_INT(uv_poll_init_socket(&L.loop, &L.dns_poll, L.dns_fd), 0);
  CHECK_EQ_INT(uv_poll_start(&L.dns_poll, UV_READABLE, dns_query_seen), 0);
}

/* Queries that reached L.dns_fd (after run_end), which it then closes. */
static int silent_queries(void) {
  char q[512];
  int n = 0;
  while (recv(L.dns_fd, q, sizeof q, MSG_DONTWAIT) > 0) n++;
  close(L.dns_fd);
  L.dns_fd = -1;
  return n;
}

/* ---- checker tests ------------------------------------------------------------------------------------ */

TEST(checker_rejects_bad_config) {
  uv_loop_t loop;
  uv_loop_init(&loop);
  hc_checker_t *hc = NULL;
  hc_config_t ok = {.host = "127.0.0.1", .port = 1, .path = "/", .interval_ms = 50, .timeout_ms = 50};
  hc_config_t cfgs[5] = {ok, ok, ok, ok, ok};
  cfgs[0].host = "";
  cfgs[1].path = "/a\r\nX-Injected: 1";
  cfgs[2].path = "/a b";
  cfgs[3].interval_ms = 0;
  cfgs[4].timeout_ms = 0;
  for (int i = 0; i < 5; i++) CHECK_EQ_INT(hc_checker_start(&loop, &cfgs[i], on_result, NULL, &hc), UV_EINVAL);
  CHECK(hc == NULL);
  hc_checker_stop(NULL);
  CHECK_EQ_INT(uv_loop_close(&loop), 0);
}

TEST(checker_200_ok_and_request) {
  probe_t p;
  run_begin(200);
  uint16_t port = srv_start(200);
  probe_start(&p, "127.0.0.1", port, "/health/deep?probe=1", 50, 1000, 3);
  probe_mark(&p, 40); /* below 0.9 x interval, the shortest jittered gap */
  run_end();
  CHECK_EQ_INT(p.n, 3);
  for (int i = 0; i < 3; i++) {
    CHECK_EQ_INT(p.ok[i], 1);
    CHECK_EQ_INT(p.detail[i], 200);
  }
  CHECK_EQ_INT(L.srv_requests, 3); /* nothing after the stop either */
  CHECK_EQ_STR(L.srv_path, "/health/deep");
  char host[32];
  snprintf(host, sizeof host, "127.0.0.1:%u", port);
  CHECK_EQ_STR(L.srv_host, host);
  CHECK_EQ_STR(L.srv_ua, "otlp-gateway-health");
  CHECK_EQ_STR(L.srv_conn, "close");
  /* each check waits its interval after the previous one: a 40 ms marker started at a result has fired
   * before the next result (the first check lands anywhere in the first interval: not asserted) */
  for (int i = 1; i < 3; i++) CHECK_EQ_INT(p.early[i], 0);
}

TEST(checker_exact_request_bytes) {
  probe_t p;
  run_begin(100);
  uint16_t port = raw_start("HTTP/1.1 204 No Content\r\n\r\n");
  probe_start(&p, "127.0.0.1", port, "/a/b?c=d&e", 20, 1000, 2);
  run_end();
  char want[256];
  snprintf(want, sizeof want,
           "GET /a/b?c=d&e HTTP/1.1\r\nHost: 127.0.0.1:%u\r\nUser-Agent: otlp-gateway-health\r\n"
           "Connection: close\r\n\r\n", port);
  CHECK_EQ_STR(L.raw.request, want);
  CHECK_EQ_INT(p.n, 2);
  CHECK_EQ_INT(p.ok[0], 1);
  CHECK_EQ_INT(p.detail[0], 204);
}

TEST(checker_localhost_resolves) {
  probe_t p;
  run_begin(100);
  uint16_t port = srv_start(200); /* bound to 127.0.0.1 only: needs the IPv4 address of "localhost" */
  probe_start(&p, "localhost", port, "/", 20, 1000, 2);
  run_end();
  CHECK_EQ_INT(p.n, 2);
  CHECK_EQ_INT(p.ok[0] + p.ok[1], 2);
  CHECK_EQ_INT(p.detail[1], 200);
}

TEST(checker_503_fails) {
  probe_t p;
  run_begin(100);
  uint16_t port = srv_start(503);
  probe_start(&p, "127.0.0.1", port, "/ready", 20, 1000, 3);
  run_end();
  CHECK_EQ_INT(p.n, 3);
  for (int i = 0; i < 3; i++) {
    CHECK_EQ_INT(p.ok[i], 0);
    CHECK_EQ_INT(p.detail[i], 503);
  }
  CHECK_EQ_STR(L.srv_path, "/ready");
}

TEST(checker_interim_1xx_then_final) {
  probe_t p;
  run_begin(100);
  uint16_t port = raw_start("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 299 Odd\r\nContent-Length: 0\r\n\r\n");
  probe_start(&p, "127.0.0.1", port, "/", 20, 1000, 1);
  run_end();
  CHECK_EQ_INT(p.n, 1);
  CHECK_EQ_INT(p.ok[0], 1);
  CHECK_EQ_INT(p.detail[0], 299);
}

TEST(checker_300_is_not_ok) {
  probe_t p;
  run_begin(100);
  uint16_t port = raw_start("HTTP/1.1 301 Moved Permanently\r\nLocation: /x\r\nContent-Length: 0\r\n\r\n");
  probe_start(&p, "127.0.0.1", port, "/", 20, 1000, 1);
  run_end();
  CHECK_EQ_INT(p.n, 1);
  CHECK_EQ_INT(p.ok[0], 0);
  CHECK_EQ_INT(p.detail[0], 301);
}

TEST(checker_garbage_is_eproto) {
  probe_t p;
  run_begin(100);
  uint16_t port = raw_start("SSH-2.0-OpenSSH_9.6\r\n\r\n");
  probe_start(&p, "127.0.0.1", port, "/", 20, 1000, 1);
  run_end();
  CHECK_EQ_INT(p.n, 1);
  CHECK_EQ_INT(p.ok[0], 0);
  CHECK_EQ_INT(p.detail[0], UV_EPROTO);
}

TEST(checker_eof_before_status) {
  probe_t p;
  run_begin(100);
  uint16_t port = raw_start(""); /* reads the whole request, then closes */
  probe_start(&p, "127.0.0.1", port, "/", 20, 1000, 2);
  run_end();
  CHECK_EQ_INT(p.n, 2);
  for (int i = 0; i < 2; i++) {
    CHECK_EQ_INT(p.ok[i], 0);
    CHECK_EQ_INT(p.detail[i], UV_EOF);
  }
}

TEST(checker_refused) {
  probe_t p;
  run_begin(100);
  probe_start(&p, "127.0.0.1", refused_port(), "/", 20, 1000, 3);
  run_end();
  CHECK_EQ_INT(p.n, 3);
  for (int i = 0; i < 3; i++) {
    CHECK_EQ_INT(p.ok[i], 0);
    CHECK_EQ_INT(p.detail[i], UV_ECONNREFUSED);
  }
}

/* A server that accepts and never answers: each check times out after 200 ms and closes its connection
 * (the server sees it go), and checks never overlap. */
TEST(checker_timeout_and_one_at_a_time) {
  probe_t p;
  run_begin(100);
  uint16_t port = raw_start(NULL);
  probe_start(&p, "127.0.0.1", port, "/", 10, 200, 2);
  probe_mark(&p, 190); /* before the first check begins, and at the first result, before the second begins */
  run_end();
  CHECK_EQ_INT(p.n, 2);
  for (int i = 0; i < 2; i++) {
    CHECK_EQ_INT(p.ok[i], 0);
    CHECK_EQ_INT(p.detail[i], UV_ETIMEDOUT);
    CHECK_EQ_INT(p.early[i], 0); /* the timeout, not earlier: a shorter marker started first fired first */
  }
  CHECK_EQ_INT(L.raw.accepted, 2);
  CHECK_EQ_INT(L.raw.max_open, 1);
  CHECK_CONTAINS(L.raw.request, "GET / HTTP/1.1\r\n");
}

/* The first check lands at a random point of the first interval, different per checker: the first results
 * do not come in the order the checkers started, as they would for one fixed first delay (libuv fires timers
 * due at the same time in start order). Eight uniform draws in creation order: p = 1/8! < 3e-5. */
TEST(checker_first_check_spread) {
  enum { N = MAX_PROBES };
  probe_t p[N];
  run_begin(50);
  uint16_t port = srv_start(200);
  for (int i = 0; i < N; i++) probe_start(&p[i], "127.0.0.1", port, "/", 600, 1000, 1);
  run_end();
  int in_start_order = 1;
  for (int i = 0; i < N; i++) {
    CHECK_EQ_INT(p[i].n, 1);
    CHECK_EQ_INT(p[i].ok[0], 1);
    if (i && p[i].seq[0] < p[i - 1].seq[0]) in_start_order = 0;
  }
  CHECK(!in_start_order);
}

/* Stops a checker whose check is waiting for an answer: no callback, the connection is closed, the loop
 * ends clean. */
TEST(checker_stop_while_waiting_for_answer) {
  probe_t p;
  run_begin(100);
  uint16_t port = raw_start(NULL);
  probe_start(&p, "127.0.0.1", port, "/", 1, 5000, 0);
  L.raw.stop_on_request = &p; /* the request is out: the check waits for an answer */
  run_end();
  CHECK_EQ_INT(p.n, 0);
  CHECK_EQ_INT(L.raw.accepted, 1);
  CHECK_CONTAINS(L.raw.request, "\r\n\r\n"); /* the request was out: the check was waiting */
  CHECK_EQ_INT(L.open_at_grace, 0);          /* and stop closed its connection */
}

/* Stops after k loop iterations, for growing k: before the first check, while connecting,
 * writing, reading. Against a silent server (the check is in flight whenever stopped) and an answering
 * one (also right after a result, while the TCP handle closes). */
static void count_iter(uv_idle_t *h) {
  int *left = h->data;
  if ((*left)-- > 0) return;
  probe_stop(L.probes[0]);
  uv_close((uv_handle_t *)h, NULL);
}

TEST(checker_stop_at_every_stage) {
  int connected_runs = 0;
  for (int answer = 0; answer < 2; answer++) {
    for (int k = 0; k <= 4096; k = k ? k * 2 : 1) {
      probe_t p;
      uv_idle_t idle;
      int left = k;
      run_begin(20);
      uint16_t port = answer ? srv_start(200) : raw_start(NULL);
      probe_start(&p, "127.0.0.1", port, "/", 1, 2000, 0);
      if (k == 0) {
        probe_stop(&p); /* before the loop ran at all */
      } else {
        uv_idle_init(&L.loop, &idle);
        idle.data = &left;
        uv_idle_start(&idle, count_iter);
      }
      run_end();
      if (!answer) {
        CHECK_EQ_INT(p.n, 0);
        CHECK_EQ_INT(L.open_at_grace, 0);
        connected_runs += L.raw.accepted > 0;
      }
      for (int i = 0; i < p.n && i < MAX_RESULTS; i++) CHECK_EQ_INT(p.detail[i], 200);
    }
  }
  CHECK(connected_runs > 0); /* some stops did land after the connect */
}

/* Threadpool work that holds every thread (4) until every probe of the run has stopped (probe_stop). */
static void block_work(uv_work_t *w) { uv_sem_wait(&L.blockers_go); }
static void block_done(uv_work_t *w, int status) {
  L.blockers--;
  free(w);
}

static void block_threadpool(void) {
  CHECK_EQ_INT(uv_sem_init(&L.blockers_go, 0), 0);
  L.blocking = 1;
  for (int i = 0; i < 4; i++) { /* UV_THREADPOOL_SIZE is set to 4 in main's setup */
    uv_work_t *w = calloc(1, sizeof *w);
    CHECK_EQ_INT(uv_queue_work(&L.loop, w, block_work, block_done), 0);
    L.blockers++;
  }
}

/* An IP literal needs no lookup: checks go out while every threadpool thread is busy (they used to queue a
 * getaddrinfo there, behind the blockers, and time out). */
TEST(checker_ip_literal_ignores_a_busy_threadpool) {
  probe_t p;
  run_begin(20);
  uint16_t port = srv_start(200);
  block_threadpool();
  probe_start(&p, "127.0.0.1", port, "/", 1, 2000, 2);
  run_end();
  CHECK_EQ_INT(p.n, 2);
  for (int i = 0; i < 2; i++) {
    CHECK_EQ_INT(p.ok[i], 1);
    CHECK_EQ_INT(p.blockers[i], 4); /* answered while the threadpool was still blocked */
  }
  CHECK_EQ_INT(L.blockers, 0);
}

/* A name whose resolver never answers: each check waits for the first answer until its own deadline
 * (UV_ETIMEDOUT), and the checks share the name's one round of queries instead of each looking up. */
TEST(checker_timeout_waiting_for_the_first_answer) {
  probe_t p;
  run_begin(20);
  uint16_t port = srv_start(200);
  silent_name("slow.test");
  probe_start(&p, "slow.test", port, "/", 1, 100, 3);
  run_end();
  CHECK_EQ_INT(p.n, 3);
  for (int i = 0; i < 3 && i < p.n; i++) {
    CHECK_EQ_INT(p.ok[i], 0);
    CHECK_EQ_INT(p.detail[i], UV_ETIMEDOUT);
  }
  CHECK_EQ_INT(L.srv_requests, 0);
  int q = silent_queries();
  CHECK(q >= 1 && q <= 4); /* A + AAAA of one round (and their retry), not one lookup per check */
}

TEST(checker_stop_while_waiting_for_the_first_answer) {
  probe_t p;
  run_begin(20);
  uint16_t port = srv_start(200);
  silent_name("slow.test");
  probe_start(&p, "slow.test", port, "/", 1, 5000, 0);
  stop_at_first_query(&p); /* the name was asked and never answers: the check waits for it */
  run_end();
  CHECK_EQ_INT(p.n, 0);
  CHECK_EQ_INT(L.srv_requests, 0);
  CHECK(silent_queries() >= 1);
}

/* A name that cannot resolve (its resolver refuses) fails each check with the name's error, not a
 * timeout. */
TEST(checker_name_that_does_not_resolve_fails_with_its_error) {
  probe_t p;
  run_begin(20);
  uint16_t port = srv_start(200);
  char server[32], err[256] = "";
  snprintf(server, sizeof server, "127.0.0.1:%u", refused_port());
  const char *servers[] = {server};
  dns_name_config_t nc = {.host = "gone.test", .servers = servers, .n_servers = 1};
  CHECK_EQ_INT(dns_name_create(&L.loop, &nc, &L.name, err, sizeof err), 0);
  probe_start(&p, "gone.test", port, "/", 1, 5000, 3);
  run_end();
  CHECK_EQ_INT(p.n, 3);
  for (int i = 0; i < 3 && i < p.n; i++) {
    CHECK_EQ_INT(p.ok[i], 0);
    CHECK_EQ_INT(p.detail[i], UV_EAI_AGAIN);
  }
  CHECK_EQ_INT(L.srv_requests, 0);
}

/* ---- TLS ---------------------------------------------------------------------------------------------- */

static test_certs_t g_tc; /* the setup's test certificates and contexts (tests/unit/test_certs.h) */

static tls_ctx_t *srv_tls(void *ud) { return g_tc.server; }

static uint16_t srv_start_tls(int status) {
  hs_config_t cfg = {.name = "health-test", .max_body_bytes = 1024, .on_request = srv_on_request,
                     .tls_ctx = srv_tls};
  L.srv_status = status;
  CHECK_EQ_INT(hs_server_create(&L.loop, &cfg, &L.srv), 0);
  CHECK_EQ_INT(hs_server_listen(L.srv, "127.0.0.1", 0), 0);
  return hs_server_port(L.srv);
}

/* Checks of an https backend: over TLS with the name verified (or the IP literal), with a shared session cache
 * or none, on the check's own absolute path; a certificate that does not verify (an unknown CA, the wrong name)
 * is a failed check with UV_EPROTO and the reason. */
TEST(checker_over_tls) {
  CHECK(g_tc.server && g_tc.ca && g_tc.other);
  if (!g_tc.server || !g_tc.ca || !g_tc.other) return;
  tls_session_cache_t *cache = tls_session_cache_create();
  probe_t ok, by_ip, bad_ca, bad_name;
  run_begin(50);
  uint16_t port = srv_start_tls(204);
  g_tls.ctx = g_tc.ca, g_tls.server_name = "localhost", g_tls.session = cache;
  probe_start(&ok, "127.0.0.1", port, "/healthz", 20, 1000, 3);
  g_tls.server_name = NULL, g_tls.session = NULL;
  probe_start(&by_ip, "127.0.0.1", port, "/healthz", 20, 1000, 1);
  g_tls.ctx = g_tc.other, g_tls.server_name = "localhost";
  probe_start(&bad_ca, "127.0.0.1", port, "/healthz", 20, 1000, 1);
  g_tls.ctx = g_tc.ca, g_tls.server_name = "collector.example";
  probe_start(&bad_name, "127.0.0.1", port, "/healthz", 20, 1000, 1);
  memset(&g_tls, 0, sizeof g_tls);
  run_end();
  for (int i = 0; i < 3; i++) {
    CHECK_EQ_INT(ok.ok[i], 1);
    CHECK_EQ_INT(ok.detail[i], 204);
    CHECK_EQ_STR(ok.tls_error[i], "");
  }
  CHECK_EQ_INT(by_ip.ok[0], 1);
  CHECK_EQ_STR(L.srv_path, "/healthz");
  CHECK_EQ_INT(L.srv_requests, 4);
  CHECK_EQ_INT(bad_ca.ok[0], 0);
  CHECK_EQ_INT(bad_ca.detail[0], UV_EPROTO);
  CHECK_EQ_STR(bad_ca.tls_error[0], "certificate verify failed: unable to get local issuer certificate");
  CHECK_EQ_INT(bad_ca.tls_reason[0], TLS_FAIL_CERTIFICATE);
  CHECK_EQ_INT(bad_name.detail[0], UV_EPROTO);
  CHECK_EQ_STR(bad_name.tls_error[0], "certificate verify failed: hostname mismatch");
  tls_session_cache_destroy(cache);
}

static void setup(void) {
  setenv("UV_THREADPOOL_SIZE", "4", 1);
  test_certs_make(&g_tc, "health");
}

static void teardown(void) { test_certs_dispose(&g_tc); }

TEST_MAIN_WITH(setup, teardown)
