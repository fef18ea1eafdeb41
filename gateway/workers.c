/* gateway/workers — see workers.h. */
#define _GNU_SOURCE /* pthread_setname_np */
#include "gateway/workers.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gateway/gateway.h"
#include "gateway/http_server.h"
#include "gateway/log.h"
#include "gateway/otlp_http.h"
#include "gateway/telemetry.h"

#define MAX_WORKERS 64
#define SCRAPE_WAIT_MS 2000
#define READY_POLL_MS 100 /* how often a worker republishes its readiness (a ring change is seen this late) */

enum { CMD_SCRAPE = 1, CMD_RELOAD = 2, CMD_STOP = 4 };

typedef struct worker {
  gw_workers_t *g;
  unsigned idx;
  uv_loop_t loop;
  uv_async_t cmd;        /* main -> worker: the CMD_* bits in cmds */
  atomic_uint cmds;
  _Atomic(cfg_snapshot_t *) next; /* main -> worker with CMD_RELOAD: one reference, taken by the worker */
  atomic_int ready;      /* worker -> main: gw_app_ready(), what /readyz answers from */
  uv_timer_t ready_timer; /* republishes ready every READY_POLL_MS */
  gw_app_t *app;
  pthread_t thread;
  int thread_started;
  int closing;           /* under g->mu: cmd is being closed, send nothing more */
  int asked;             /* under g->mu: owes an answer to the current scrape */
  int scraped;           /* under g->mu: scrape holds its answer */
  gw_scrape_t scrape;
} worker_t;

struct gw_workers {
  uv_loop_t *main;
  unsigned n;
  worker_t *w;
  char *config_path;
  hs_server_t *telemetry;
  uv_async_t exited;     /* worker -> main: one more worker has finished */
  atomic_uint n_exited;
  atomic_uint_least64_t client_connections; /* every worker's ingest connections: one server.max_connections */
  pthread_mutex_t mu;
  unsigned answers;      /* under mu: scrape answers received in the round in flight */
  /* /metrics, on the main loop only. A round asks every worker and ends when all have answered or after
   * SCRAPE_WAIT_MS; the main loop never waits for it, so the probes are answered meanwhile. */
  uv_async_t scraped;    /* worker -> main: an answer to the round arrived */
  uv_timer_t scrape_timer;
  int round;             /* a round is in flight */
  unsigned round_asked;  /* workers asked in it */
  hs_request_t **waiting; /* /metrics requests not answered yet; the first round_reqs are the round's */
  size_t n_waiting, cap_waiting, round_reqs;
  int stopping;
  void (*done)(void *);
  void *done_ud;
};

unsigned gw_workers_count(unsigned configured) {
  unsigned n = configured ? configured : uv_available_parallelism();
  if (n < 1) n = 1;
  return n > MAX_WORKERS ? MAX_WORKERS : n;
}

/* ---- on a worker's thread -------------------------------------------------------------------------------- */

static void answer_scrape(worker_t *w) {
  gw_scrape_t s;
  int rc = gw_app_scrape(w->app, &s);
  gw_workers_t *g = w->g;
  pthread_mutex_lock(&g->mu);
  if (w->asked) {
    w->asked = 0;
    if (rc == 0) {
      w->scrape = s;
      w->scraped = 1;
    } else {
      gw_scrape_dispose(&s);
    }
    g->answers++;
  } else {
    gw_scrape_dispose(&s); /* the round ended without this worker */
  }
  pthread_mutex_unlock(&g->mu);
  uv_async_send(&g->scraped); /* open until every worker has exited */
}

static void publish_ready(worker_t *w) {
  atomic_store_explicit(&w->ready, w->app && gw_app_ready(w->app), memory_order_relaxed);
}

static void on_ready_timer(uv_timer_t *t) { publish_ready(t->data); }

static void on_app_done(void *ud) {
  worker_t *w = ud;
  gw_workers_t *g = w->g;
  pthread_mutex_lock(&g->mu);
  w->closing = 1;
  int owed = w->asked;
  if (owed) { /* a scrape it can no longer answer: count it answered, empty */
    w->asked = 0;
    g->answers++;
  }
  pthread_mutex_unlock(&g->mu);
  if (owed) uv_async_send(&g->scraped);
  uv_close((uv_handle_t *)&w->cmd, NULL);
  uv_close((uv_handle_t *)&w->ready_timer, NULL);
}

static void on_cmd(uv_async_t *a) {
  worker_t *w = a->data;
  unsigned c = atomic_exchange(&w->cmds, 0);
  if (c & CMD_SCRAPE) answer_scrape(w);
  if (c & CMD_RELOAD) {
    /* Only the newest snapshot handed over is applied: each main-thread reload replaced the one before. */
    cfg_snapshot_t *next = atomic_exchange(&w->next, NULL);
    if (next) gw_app_reload(w->app, next, w->g->config_path);
    publish_ready(w);
  }
  if (c & CMD_STOP) {
    uv_timer_stop(&w->ready_timer);
    atomic_store(&w->ready, 0);
    gw_app_shutdown(w->app, on_app_done, w);
  }
}

static void *worker_main(void *arg) {
  worker_t *w = arg;
  char name[16];
  snprintf(name, sizeof name, "otlpgw-w%u", w->idx); /* top -H, /proc/PID/task/TID/comm */
  pthread_setname_np(pthread_self(), name);
  gw_log_set_worker((int)w->idx);
  uv_run(&w->loop, UV_RUN_DEFAULT);
  atomic_store(&w->ready, 0);
  gw_app_destroy(w->app);
  w->app = NULL;
  /* Handed over after the last reload this worker applied, before it stopped taking commands. */
  cfg_snapshot_unref(atomic_exchange(&w->next, NULL));
  if (uv_loop_close(&w->loop) != 0) gw_log(GW_LOG_WARN, "worker stopped with handles still open", NULL);
  otlp_thread_cleanup();
  atomic_fetch_add(&w->g->n_exited, 1);
  uv_async_send(&w->g->exited);
  return NULL;
}

/* ---- on the main thread ---------------------------------------------------------------------------------- */

/* Sends cmd to every worker still listening. */
static void send_all(gw_workers_t *g, unsigned cmd) {
  pthread_mutex_lock(&g->mu);
  for (unsigned i = 0; i < g->n; i++) {
    worker_t *w = &g->w[i];
    if (w->closing || !w->thread_started) continue;
    atomic_fetch_or(&w->cmds, cmd);
    uv_async_send(&w->cmd);
  }
  pthread_mutex_unlock(&g->mu);
}

static void scrape_start(gw_workers_t *g);

/* Ends the round in flight: answers its requests from the workers that answered (none at all at the very end
 * of a shutdown: an empty scrape), then starts the next round for requests that came meanwhile (hs_respond
 * only queues a write: no handler runs from inside it). */
static void scrape_finish(gw_workers_t *g) {
  uv_timer_stop(&g->scrape_timer);
  g->round = 0;
  gw_scrape_t *got = calloc(g->n, sizeof *got);
  size_t k = 0;
  pthread_mutex_lock(&g->mu);
  for (unsigned i = 0; i < g->n; i++) {
    worker_t *w = &g->w[i];
    w->asked = 0; /* a late answer is dropped by the worker */
    if (w->scraped) {
      if (got) got[k++] = w->scrape;
      else gw_scrape_dispose(&w->scrape);
      w->scraped = 0;
      memset(&w->scrape, 0, sizeof w->scrape);
    }
  }
  pthread_mutex_unlock(&g->mu);
  gw_scrape_t none;
  memset(&none, 0, sizeof none);
  for (size_t r = 0; r < g->round_reqs; r++) {
    if (!got) hs_respond(g->waiting[r], 500, "text/plain", NULL, 0, "out of memory\n", 14);
    else gw_telemetry_answer_metrics(g->waiting[r], k ? got : &none, k ? k : 1);
  }
  for (size_t i = 0; i < k; i++) gw_scrape_dispose(&got[i]);
  free(got);
  g->n_waiting -= g->round_reqs;
  memmove(g->waiting, g->waiting + g->round_reqs, g->n_waiting * sizeof *g->waiting);
  g->round_reqs = 0;
  if (g->n_waiting) scrape_start(g);
}

static void on_scrape_timeout(uv_timer_t *t) { scrape_finish(t->data); } /* answers from those that did */

/* Asks every worker still running for a scrape, for the requests waiting now. */
static void scrape_start(gw_workers_t *g) {
  g->round = 1;
  g->round_reqs = g->n_waiting;
  unsigned asked = 0;
  pthread_mutex_lock(&g->mu);
  g->answers = 0;
  for (unsigned i = 0; i < g->n; i++) {
    worker_t *w = &g->w[i];
    if (w->closing || !w->thread_started) continue;
    w->asked = 1;
    w->scraped = 0;
    atomic_fetch_or(&w->cmds, CMD_SCRAPE);
    uv_async_send(&w->cmd);
    asked++;
  }
  g->round_asked = asked;
  pthread_mutex_unlock(&g->mu);
  if (asked == 0) scrape_finish(g);
  else uv_timer_start(&g->scrape_timer, on_scrape_timeout, SCRAPE_WAIT_MS, 0);
}

static void on_scraped(uv_async_t *a) {
  gw_workers_t *g = a->data;
  if (!g->round) return;
  pthread_mutex_lock(&g->mu);
  int all = g->answers >= g->round_asked;
  pthread_mutex_unlock(&g->mu);
  if (all) scrape_finish(g);
}

/* Probes from the main thread's own state and the workers' published flags, at once, whatever the workers
 * are doing; /metrics waits (without blocking the loop) for a scrape round. */
static void telemetry_on_request(hs_request_t *req, void *ud) {
  gw_workers_t *g = ud;
  int ready = 0;
  for (unsigned i = 0; i < g->n; i++) ready |= atomic_load_explicit(&g->w[i].ready, memory_order_relaxed);
  if (gw_telemetry_answer_probe(req, ready, g->stopping)) return;
  if (g->n_waiting == g->cap_waiting) {
    size_t cap = g->cap_waiting ? 2 * g->cap_waiting : 16;
    hs_request_t **grown = realloc(g->waiting, cap * sizeof *grown);
    if (!grown) {
      hs_respond(req, 500, "text/plain", NULL, 0, "out of memory\n", 14);
      return;
    }
    g->waiting = grown;
    g->cap_waiting = cap;
  }
  g->waiting[g->n_waiting++] = req;
  if (!g->round) scrape_start(g); /* else it waits for the next round: answers are never older than it */
}

static void telemetry_closed(void *ud) {
  gw_workers_t *g = ud;
  /* Every worker has exited (none sends any more) and every telemetry request was answered (no round). */
  uv_close((uv_handle_t *)&g->exited, NULL);
  uv_close((uv_handle_t *)&g->scraped, NULL);
  uv_close((uv_handle_t *)&g->scrape_timer, NULL);
  if (g->done) g->done(g->done_ud);
}

static void on_exited(uv_async_t *a) {
  gw_workers_t *g = a->data;
  if (atomic_load(&g->n_exited) < g->n) return;
  if (g->telemetry) hs_server_shutdown(g->telemetry, telemetry_closed, g);
  else telemetry_closed(g);
}

unsigned gw_workers_reload(gw_workers_t *g, cfg_snapshot_t *next) {
  unsigned handed = 0;
  pthread_mutex_lock(&g->mu); /* under mu: a worker that is closing takes nothing more (it sets closing under mu) */
  for (unsigned i = 0; i < g->n; i++) {
    worker_t *w = &g->w[i];
    if (w->closing || !w->thread_started) continue;
    cfg_snapshot_unref(atomic_exchange(&w->next, cfg_snapshot_ref(next))); /* one it has not taken yet */
    atomic_fetch_or(&w->cmds, CMD_RELOAD);
    uv_async_send(&w->cmd);
    handed++;
  }
  pthread_mutex_unlock(&g->mu);
  return handed;
}

void gw_workers_shutdown(gw_workers_t *g, void (*done)(void *ud), void *ud) {
  if (g->stopping) return;
  g->stopping = 1;
  g->done = done;
  g->done_ud = ud;
  send_all(g, CMD_STOP);
}

/* Stops apps that were started but whose threads never ran (a later worker failed to start). */
static void stop_unstarted(gw_workers_t *g) {
  for (unsigned i = 0; i < g->n; i++) {
    worker_t *w = &g->w[i];
    if (!w->app || w->thread_started) continue;
    atomic_store(&w->ready, 0);
    gw_app_shutdown(w->app, NULL, NULL);
    uv_close((uv_handle_t *)&w->cmd, NULL);
    uv_close((uv_handle_t *)&w->ready_timer, NULL);
    uv_run(&w->loop, UV_RUN_DEFAULT);
    gw_app_destroy(w->app);
    w->app = NULL;
    uv_loop_close(&w->loop);
  }
}

int gw_workers_start(uv_loop_t *main_loop, unsigned n, cfg_snapshot_t *snap, const char *config_path,
                     gw_workers_t **out, char *err, size_t errlen) {
  gw_workers_t *g = calloc(1, sizeof *g);
  if (!g || !(g->w = calloc(n, sizeof *g->w)) || (config_path && !(g->config_path = strdup(config_path)))) {
    if (g) free(g->w);
    free(g);
    snprintf(err, errlen, "out of memory");
    return -1;
  }
  g->main = main_loop;
  g->n = n;
  pthread_mutex_init(&g->mu, NULL);
  const char *telemetry_listen = cfg_snapshot_cfg(snap)->telemetry.listen;
  uint16_t port = 0, grpc_port = 0;
  unsigned started = 0;
  for (; started < n; started++) {
    worker_t *w = &g->w[started];
    w->g = g;
    w->idx = started;
    atomic_init(&w->next, NULL);
    atomic_init(&w->ready, 0);
    uv_loop_init(&w->loop);
    gw_app_opts_t opts = {.telemetry = 0,
                          .reuseport = started == 0 ? HS_LISTEN_REUSEPORT_FIRST : HS_LISTEN_REUSEPORT,
                          .ingest_port = port,
                          .grpc_port = grpc_port,
                          .worker = started,
                          .n_workers = n,
                          .client_connections = &g->client_connections};
    gw_log_set_worker((int)started); /* the start-up lines say whose they are */
    int rc = gw_app_start(&w->loop, cfg_snapshot_ref(snap), &opts, &w->app, err, errlen);
    gw_log_set_worker(-1);
    if (rc != 0) {
      w->app = NULL;
      uv_loop_close(&w->loop);
      break;
    }
    if (started == 0) { /* server.listen / grpc_listen may say port 0: share the real ones */
      port = gw_app_ingest_port(w->app);
      grpc_port = gw_app_grpc_port(w->app);
    }
    uv_async_init(&w->loop, &w->cmd, on_cmd);
    w->cmd.data = w;
    uv_timer_init(&w->loop, &w->ready_timer);
    w->ready_timer.data = w;
    uv_timer_start(&w->ready_timer, on_ready_timer, READY_POLL_MS, READY_POLL_MS);
    publish_ready(w); /* the first ring is built before the app listens */
  }
  hs_config_t tc = gw_telemetry_server_config(telemetry_on_request, g);
  char *host = NULL;
  uint16_t tport = 0;
  int ok = started == n;
  if (ok && (hs_server_create(main_loop, &tc, &g->telemetry) != 0 ||
             cfg_parse_hostport(telemetry_listen, &host, &tport) != 0)) {
    snprintf(err, errlen, "out of memory");
    ok = 0;
  }
  int rc;
  if (ok && (rc = hs_server_listen(g->telemetry, host, tport)) != 0) {
    snprintf(err, errlen, "telemetry.listen: cannot listen on %s: %s", telemetry_listen, uv_strerror(rc));
    ok = 0;
  }
  free(host);
  if (!ok) {
    stop_unstarted(g);
    if (g->telemetry) {
      hs_server_shutdown(g->telemetry, NULL, NULL);
      uv_run(main_loop, UV_RUN_DEFAULT);
      hs_server_destroy(g->telemetry);
    }
    pthread_mutex_destroy(&g->mu);
    free(g->config_path);
    free(g->w);
    free(g);
    return -1;
  }
  gw_log(GW_LOG_INFO, "listening", "server", "telemetry", "addr", hs_server_address(g->telemetry), NULL);
  uv_async_init(main_loop, &g->exited, on_exited);
  uv_async_init(main_loop, &g->scraped, on_scraped);
  uv_timer_init(main_loop, &g->scrape_timer);
  g->exited.data = g->scraped.data = g->scrape_timer.data = g;
  for (unsigned i = 0; i < n; i++) {
    worker_t *w = &g->w[i];
    pthread_mutex_lock(&g->mu);
    w->thread_started = pthread_create(&w->thread, NULL, worker_main, w) == 0;
    pthread_mutex_unlock(&g->mu);
    if (!w->thread_started) { /* cannot happen short of resource exhaustion: run with fewer workers */
      gw_log(GW_LOG_ERROR, "cannot start a worker thread", "worker", gw_log_u64(i), NULL);
      atomic_fetch_add(&g->n_exited, 1);
    }
  }
  stop_unstarted(g);
  gw_log(GW_LOG_INFO, "workers running", "workers", gw_log_u64(n), "ingest_port", gw_log_u64(port), NULL);
  *out = g;
  return 0;
}

void gw_workers_destroy(gw_workers_t *g) {
  if (!g) return;
  for (unsigned i = 0; i < g->n; i++) {
    if (g->w[i].thread_started) pthread_join(g->w[i].thread, NULL);
    cfg_snapshot_unref(atomic_exchange(&g->w[i].next, NULL));
  }
  hs_server_destroy(g->telemetry);
  pthread_mutex_destroy(&g->mu);
  free(g->waiting);
  free(g->config_path);
  free(g->w);
  free(g);
}
