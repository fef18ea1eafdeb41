/*
 * otlp-gateway — CLI. Config from --config FILE, else $OTLP_GATEWAY_CONFIG, else the embedded defaults
 * with backends from $OTLP_GATEWAY_BACKENDS. See docs/DESIGN.md.
 */
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

#include "config/config.h"
#include "gateway/gateway.h"
#include "gateway/log.h"
#include "gateway/otlp_http.h"
#include "gateway/spool.h"
#include "gateway/tls_config.h"
#include "gateway/version.h"
#include "gateway/workers.h"

static const char usage[] =
    "usage: otlp-gateway [--config FILE] [--check-config] [--version] [--help]\n"
    "\n"
    "An OTLP/HTTP load balancer that keeps every span of a trace on the same backend collector.\n"
    "\n"
    "  -c, --config FILE   YAML config (default: $OTLP_GATEWAY_CONFIG; without either, the embedded\n"
    "                      defaults with backends from $OTLP_GATEWAY_BACKENDS, comma-separated URLs)\n"
    "      --check-config  validate the config and exit: 0 valid, 1 with FILE:LINE:COL: message\n"
    "      --print-config-reference  print every config key with its type and default (markdown)\n"
    "  -V, --version       print the version\n"
    "  -h, --help          this text\n"
    "\n"
    "Signals: SIGTERM/SIGINT stop accepting, finish in-flight requests and exit 0; SIGHUP reloads the config.\n";

typedef struct {
  uv_loop_t *loop;
  gw_app_t *app;         /* server.workers = 1: the app runs on the main loop */
  gw_workers_t *workers; /* more: worker threads, telemetry and signals here */
  const char *config_path;
  cfg_snapshot_t *snap;  /* the running config (one reference); every app runs on this same snapshot */
  unsigned n_workers;
  uv_signal_t sig_term, sig_int, sig_hup;
  int stopping;
} main_t;

/* Parses and validates the config the CLI names: the file, else the embedded defaults with backends from
 * $OTLP_GATEWAY_BACKENDS, and builds its TLS contexts (gateway/tls_config: certificate and key files are read
 * here, so a missing or mismatched one is a config error like any other, at start, on SIGHUP and for
 * --check-config). The one place a config is loaded, by the main thread only. Returns 0, or -1 with the reason in
 * err (*cfg must be disposed either way). */
static int load_config(const char *path, cfg_t *cfg, char *err, size_t errlen) {
  if (path) {
    if (cfg_load_file(cfg, path, err, errlen) != 0) return -1;
  } else {
    if (cfg_init_defaults(cfg) != 0) {
      snprintf(err, errlen, "out of memory");
      return -1;
    }
    const char *list = getenv("OTLP_GATEWAY_BACKENDS");
    char why[768];
    if (list && cfg_add_backends_from_list(cfg, list, why, sizeof why) != 0) {
      snprintf(err, errlen, "OTLP_GATEWAY_BACKENDS: %s", why);
      return -1;
    }
  }
  if (cfg->backends.n_statics == 0 && (!cfg->backends.dns.hostname || !cfg->backends.dns.hostname[0])) {
    if (path)
      snprintf(err, errlen, "%s: no backends: set backends.static or backends.dns.hostname", path);
    else
      snprintf(err, errlen, "no backends: pass --config FILE, or set OTLP_GATEWAY_BACKENDS=http://collector:4318,...");
    return -1;
  }
  /* The reason names the key and the file; with a config file, say which one it is in ("PATH: server.tls..."). */
  int at = path ? snprintf(err, errlen, "%s: ", path) : 0;
  if (at < 0 || (size_t)at >= errlen) at = 0;
  if (tc_attach(cfg, err + at, errlen - (size_t)at) != 0) return -1;
  err[0] = '\0';
  return 0;
}

/* SIGHUP: the file is parsed and validated here, once; a bad one is logged once and nothing changes. A good
 * one becomes the next generation's snapshot, and the app (or every worker) adopts that same snapshot. */
static void reload(main_t *m) {
  if (!m->config_path) {
    gw_log(GW_LOG_WARN, "SIGHUP ignored: no config file to reload", NULL);
    return;
  }
  cfg_t cfg;
  char err[1024];
  if (load_config(m->config_path, &cfg, err, sizeof err) != 0) {
    cfg_dispose(&cfg);
    gw_log(GW_LOG_ERROR, "config reload failed, keeping the running config", "error", err, NULL);
    return;
  }
  cfg_snapshot_t *next = cfg_snapshot_create(&cfg, cfg_snapshot_generation(m->snap) + 1);
  if (!next) {
    gw_log(GW_LOG_ERROR, "config reload failed, keeping the running config", "error", "out of memory", NULL);
    return;
  }
  const cfg_t *old = cfg_snapshot_cfg(m->snap), *c = cfg_snapshot_cfg(next);
  if (strcmp(old->server.listen, c->server.listen) || strcmp(old->telemetry.listen, c->telemetry.listen))
    gw_log(GW_LOG_WARN, "listen addresses changed: they apply at the next restart", NULL);
  if (strcmp(old->backends.queue.directory ? old->backends.queue.directory : "",
             c->backends.queue.directory ? c->backends.queue.directory : "") ||
      old->backends.queue.fsync != c->backends.queue.fsync)
    gw_log(GW_LOG_WARN, "backends.queue.directory / fsync changed: they apply at the next restart", NULL);
  gw_log_setup((gw_log_level_t)c->telemetry.log_level, (gw_log_format_t)c->telemetry.log_format);
  if (m->workers) {
    /* One line here, before any worker has it, then one per worker (worker=N) as each runs on it: all with
     * the same generation. */
    gw_log(GW_LOG_INFO, "config reloaded", "path", m->config_path, "generation",
           gw_log_u64(cfg_snapshot_generation(next)), "workers", gw_log_u64(m->n_workers), NULL);
    gw_workers_reload(m->workers, next);
  } else {
    gw_app_reload(m->app, cfg_snapshot_ref(next), m->config_path);
  }
  cfg_snapshot_unref(m->snap);
  m->snap = next;
}

static void on_app_done(void *ud) {
  main_t *m = ud;
  uv_close((uv_handle_t *)&m->sig_term, NULL);
  uv_close((uv_handle_t *)&m->sig_int, NULL);
  uv_close((uv_handle_t *)&m->sig_hup, NULL);
}

static void on_signal(uv_signal_t *h, int signum) {
  main_t *m = h->data;
  if (signum == SIGHUP) {
    if (!m->stopping) reload(m);
    return;
  }
  if (m->stopping) return;
  m->stopping = 1;
  gw_log(GW_LOG_INFO, "shutting down", "signal", signum == SIGTERM ? "SIGTERM" : "SIGINT", NULL);
  if (m->workers) gw_workers_shutdown(m->workers, on_app_done, m);
  else gw_app_shutdown(m->app, on_app_done, m);
}

int main(int argc, char **argv) {
  /* Until the loop's handlers are in place (after the listeners are up), a SIGHUP must not kill the process
   * (its default action): a reload asked for that early is ignored. SIGPIPE: a peer that goes away is a write
   * error on its connection. */
  signal(SIGHUP, SIG_IGN);
  signal(SIGPIPE, SIG_IGN);
  static const struct option opts[] = {
      {"config", required_argument, NULL, 'c'},
      {"check-config", no_argument, NULL, 'k'},
      {"print-config-reference", no_argument, NULL, 'r'},
      {"version", no_argument, NULL, 'V'},
      {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0},
  };
  const char *path = NULL;
  int check = 0;
  for (int o; (o = getopt_long(argc, argv, "c:Vh", opts, NULL)) != -1;) {
    switch (o) {
      case 'c': path = optarg; break;
      case 'k': check = 1; break;
      case 'r': cfg_print_reference(stdout); return 0;
      case 'V': printf("otlp-gateway %s\n", OTLPGW_VERSION); return 0;
      case 'h': fputs(usage, stdout); return 0;
      default: fputs(usage, stderr); return 2;
    }
  }
  if (optind < argc) {
    fprintf(stderr, "otlp-gateway: unexpected argument \"%s\"\n%s", argv[optind], usage);
    return 2;
  }
  if (!path) {
    const char *env = getenv("OTLP_GATEWAY_CONFIG");
    if (env && *env) path = env;
  }

  cfg_t cfg;
  char err[1024];
  if (load_config(path, &cfg, err, sizeof err) != 0) {
    fprintf(stderr, "%s\n", err);
    cfg_dispose(&cfg);
    return 1;
  }
  /* The spool directory: created if needed, writable, and held by no other running gateway (its lock stays taken
   * for the process's life; --check-config lets go of it at once). */
  const char *spool_dir = cfg.backends.queue.directory;
  if (spool_dir && *spool_dir) {
    char why[768];
    int fd = sp_lock_dir(spool_dir, why, sizeof why);
    if (fd < 0) {
      if (path) fprintf(stderr, "%s: %s\n", path, why);
      else fprintf(stderr, "%s\n", why);
      cfg_dispose(&cfg);
      return 1;
    }
    if (check) close(fd);
  }
  if (check) {
    printf("%s: ok (%zu static backends)\n", path ? path : "(defaults)", cfg.backends.n_statics);
    cfg_dispose(&cfg);
    return 0;
  }
  gw_log_setup((gw_log_level_t)cfg.telemetry.log_level, (gw_log_format_t)cfg.telemetry.log_format);
  if (tc_get(&cfg)->insecure)
    gw_log(GW_LOG_WARN, "backends.tls.insecure_skip_verify is true: backend certificates are not verified", NULL);

  main_t m = {0};
  m.loop = uv_default_loop();
  m.config_path = path;
  unsigned n_workers = m.n_workers = gw_workers_count(cfg.server.workers);
  if (!(m.snap = cfg_snapshot_create(&cfg, 1))) {
    fprintf(stderr, "out of memory\n");
    return 1;
  }
  /* SIGTERM / SIGINT while the listeners come up (a supervisor that stops us right away) must not kill the
   * process with the default action: they wait, blocked, until the loop's handlers are in place, and are handled
   * then. The worker threads started meanwhile inherit the mask and keep it: the main loop handles signals. */
  sigset_t stop_signals, old_mask;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop_signals, &old_mask);
  int rc = n_workers > 1 ? gw_workers_start(m.loop, n_workers, m.snap, path, &m.workers, err, sizeof err)
                         : gw_app_start(m.loop, cfg_snapshot_ref(m.snap), NULL, &m.app, err, sizeof err);
  if (rc != 0) {
    gw_log(GW_LOG_ERROR, "cannot start", "error", err, NULL);
    cfg_snapshot_unref(m.snap);
    return 1;
  }
  uv_signal_init(m.loop, &m.sig_term);
  uv_signal_init(m.loop, &m.sig_int);
  uv_signal_init(m.loop, &m.sig_hup);
  m.sig_term.data = m.sig_int.data = m.sig_hup.data = &m;
  uv_signal_start(&m.sig_term, on_signal, SIGTERM);
  uv_signal_start(&m.sig_int, on_signal, SIGINT);
  uv_signal_start(&m.sig_hup, on_signal, SIGHUP);
  pthread_sigmask(SIG_SETMASK, &old_mask, NULL); /* a stop signal that came meanwhile is handled now */
  gw_log(GW_LOG_INFO, "started", "version", OTLPGW_VERSION, "config", path ? path : "(defaults)", NULL);

  uv_run(m.loop, UV_RUN_DEFAULT);
  gw_app_destroy(m.app);
  gw_workers_destroy(m.workers);
  cfg_snapshot_unref(m.snap);
  otlp_thread_cleanup();
  if (uv_loop_close(m.loop) != 0) gw_log(GW_LOG_WARN, "stopped with handles still open", NULL);
  else gw_log(GW_LOG_INFO, "stopped", NULL);
  return 0;
}
