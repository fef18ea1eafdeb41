/* gateway/workers — see workers.h. */
#define _GNU_SOURCE /* pthread_setname_np */
#include "gateway/workers.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "gateway/gateway.h"
#include "gateway/http_server.h"
#include "gateway/log.h"
#include "gateway/otlp_http.h"
#include "gateway/telemetry.h"

#define MAX_WORKERS 64
#define SCRAPE_WAIT_MS 2000

enum { CMD_SCRAPE = 1, CMD_RELOAD = 2, CMD_STOP = 4 };

typedef struct worker {
  gw_workers_t *g;
  unsigned idx;
  uv_loop_t loop;
  uv_async_t cmd;        /* main -> worker: the CMD_* bits in cmds */
  atomic_uint cmds;
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
  pthread_cond_t cv;
  unsigned answers;      /* under mu: scrape answers received */
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
    pthread_cond_broadcast(&g->cv);
  } else {
    gw_scrape_dispose(&s); /* the main thread stopped waiting */
  }
  pthread_mutex_unlock(&g->mu);
}

static void on_app_done(void *ud) {
  worker_t *w = ud;
  gw_workers_t *g = w->g;
  pthread_mutex_lock(&g->mu);
  w->closing = 1;
  if (w->asked) { /* a scrape it can no longer answer: count it answered, empty */
    w->asked = 0;
    g->answers++;
    pthread_cond_broadcast(&g->cv);
  }
  pthread_mutex_unlock(&g->mu);
  uv_close((uv_handle_t *)&w->cmd, NULL);
}

static void on_cmd(uv_async_t *a) {
  worker_t *w = a->data;
  unsigned c = atomic_exchange(&w->cmds, 0);
  if (c & CMD_SCRAPE) answer_scrape(w);
  if (c & CMD_RELOAD) gw_app_reload(w->app, w->g->config_path);
  if (c & CMD_STOP) gw_app_shutdown(w->app, on_app_done, w);
}

static void *worker_main(void *arg) {
  worker_t *w = arg;
  char name[16];
  snprintf(name, sizeof name, "otlpgw-w%u", w->idx); /* top -H, /proc/PID/task/TID/comm */
  pthread_setname_np(pthread_self(), name);
  gw_log_set_worker((int)w->idx);
  uv_run(&w->loop, UV_RUN_DEFAULT);
  gw_app_destroy(w->app);
  w->app = NULL;
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

/* Asks every worker for a scrape and waits (bounded) for the answers; answers from the ones that did. */
static void telemetry_on_request(hs_request_t *req, void *ud) {
  gw_workers_t *g = ud;
  gw_scrape_t *got = calloc(g->n, sizeof *got);
  if (!got) {
    hs_respond(req, 500, "text/plain", NULL, 0, "out of memory\n", 14);
    return;
  }
  struct timespec until;
  clock_gettime(CLOCK_REALTIME, &until);
  until.tv_sec += SCRAPE_WAIT_MS / 1000;
  until.tv_nsec += (long)(SCRAPE_WAIT_MS % 1000) * 1000000L;
  if (until.tv_nsec >= 1000000000L) {
    until.tv_sec++;
    until.tv_nsec -= 1000000000L;
  }
  pthread_mutex_lock(&g->mu);
  unsigned asked = 0;
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
  while (g->answers < asked)
    if (pthread_cond_timedwait(&g->cv, &g->mu, &until) == ETIMEDOUT) break;
  size_t k = 0;
  for (unsigned i = 0; i < g->n; i++) {
    worker_t *w = &g->w[i];
    w->asked = 0; /* a late answer is dropped by the worker */
    if (w->scraped) {
      got[k++] = w->scrape;
      w->scraped = 0;
      memset(&w->scrape, 0, sizeof w->scrape);
    }
  }
  pthread_mutex_unlock(&g->mu);
  if (k == 0) {
    /* Every worker has exited (the very end of a shutdown): healthy process, nothing to route with. */
    gw_scrape_t none;
    memset(&none, 0, sizeof none);
    gw_telemetry_answer(req, &none, 1);
  } else {
    gw_telemetry_answer(req, got, k);
  }
  for (size_t i = 0; i < k; i++) gw_scrape_dispose(&got[i]);
  free(got);
}

static void telemetry_closed(void *ud) {
  gw_workers_t *g = ud;
  uv_close((uv_handle_t *)&g->exited, NULL);
  if (g->done) g->done(g->done_ud);
}

static void on_exited(uv_async_t *a) {
  gw_workers_t *g = a->data;
  if (atomic_load(&g->n_exited) < g->n) return;
  if (g->telemetry) hs_server_shutdown(g->telemetry, telemetry_closed, g);
  else telemetry_closed(g);
}

void gw_workers_reload(gw_workers_t *g) { send_all(g, CMD_RELOAD); }

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
    gw_app_shutdown(w->app, NULL, NULL);
    uv_close((uv_handle_t *)&w->cmd, NULL);
    uv_run(&w->loop, UV_RUN_DEFAULT);
    gw_app_destroy(w->app);
    w->app = NULL;
    uv_loop_close(&w->loop);
  }
}

int gw_workers_start(uv_loop_t *main_loop, unsigned n, gw_config_loader load, void *load_ud, const char *config_path,
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
  pthread_cond_init(&g->cv, NULL);
  char *telemetry_listen = NULL;
  uint16_t port = 0;
  unsigned started = 0;
  for (; started < n; started++) {
    worker_t *w = &g->w[started];
    w->g = g;
    w->idx = started;
    cfg_t cfg;
    if (load(load_ud, &cfg) != 0) {
      cfg_dispose(&cfg);
      snprintf(err, errlen, "worker %u: cannot load the config", started);
      break;
    }
    if (started == 0 && !(telemetry_listen = strdup(cfg.telemetry.listen))) {
      cfg_dispose(&cfg);
      snprintf(err, errlen, "out of memory");
      break;
    }
    uv_loop_init(&w->loop);
    gw_app_opts_t opts = {.telemetry = 0,
                          .reuseport = started == 0 ? HS_LISTEN_REUSEPORT_FIRST : HS_LISTEN_REUSEPORT,
                          .ingest_port = port,
                          .worker = started,
                          .client_connections = &g->client_connections};
    gw_log_set_worker((int)started); /* the start-up lines say whose they are */
    int rc = gw_app_start(&w->loop, &cfg, &opts, &w->app, err, errlen);
    gw_log_set_worker(-1);
    if (rc != 0) {
      w->app = NULL;
      uv_loop_close(&w->loop);
      break;
    }
    if (started == 0) port = gw_app_ingest_port(w->app); /* server.listen may say port 0: share the real one */
    uv_async_init(&w->loop, &w->cmd, on_cmd);
    w->cmd.data = w;
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
    free(telemetry_listen);
    pthread_mutex_destroy(&g->mu);
    pthread_cond_destroy(&g->cv);
    free(g->config_path);
    free(g->w);
    free(g);
    return -1;
  }
  gw_log(GW_LOG_INFO, "listening", "server", "telemetry", "addr", hs_server_address(g->telemetry), NULL);
  free(telemetry_listen);
  uv_async_init(main_loop, &g->exited, on_exited);
  g->exited.data = g;
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
  for (unsigned i = 0; i < g->n; i++)
    if (g->w[i].thread_started) pthread_join(g->w[i].thread, NULL);
  hs_server_destroy(g->telemetry);
  pthread_mutex_destroy(&g->mu);
  pthread_cond_destroy(&g->cv);
  free(g->config_path);
  free(g->w);
  free(g);
}
