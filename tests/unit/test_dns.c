/*
 * health/dns against a real dnsmasq on 127.0.0.1 (started once for the binary, answering .test names from
 * two hosts files), plus a tiny in-loop UDP responder for answers dnsmasq will not give (duplicate records,
 * SERVFAIL on one family only, an answer that turns into SERVFAIL, NXDOMAIN or silence), and a bound UDP
 * socket that never answers. Watches (discovery) and names (a backend host's cached address), the latter
 * also through a gateway/backend pool. Each test runs its own loop with a watchdog and ends by checking
 * that the loop closes with no handle left.
 */
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "gateway/backend.h"
#include "gateway/http_server.h"
#include "health/dns.h"
#include "test.h"

#define MAX_ADDRS 16

static char tmpdir[] = "/tmp/test_dns.XXXXXX";
static char hosts_path[256], moving_path[256], log_path[256];
static pid_t dnsmasq_pid = -1;
static uint16_t dnsmasq_port;
static char dnsmasq_server[32]; /* "127.0.0.1:PORT" */
static int in_start;            /* set around dns_watch_start: cb must never run inside it */

static const char *static_hosts = "127.0.0.2 backends.test\n"
                                  "fd00::5 backends.test\n"
                                  "127.0.0.11 backends.test\n"
                                  "::1 backends.test\n"
                                  "127.0.0.7 v4only.test\n"
                                  "fd00::7 v6only.test\n";

/* ---- fixtures ---------------------------------------------------------------------------------------- */

static int write_file(const char *path, const char *text) {
  char tmp[300];
  snprintf(tmp, sizeof tmp, "%s.tmp", path);
  FILE *f = fopen(tmp, "w");
  if (!f) return -1;
  fputs(text, f);
  if (fclose(f) != 0) return -1;
  return rename(tmp, path); /* dnsmasq never sees half a file */
}

/* A port free for both UDP and TCP on 127.0.0.1 right now (0 if none found). */
static uint16_t free_port(void) {
  for (int attempt = 0; attempt < 20; attempt++) {
    int u = socket(AF_INET, SOCK_DGRAM, 0), t = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    uint16_t port = 0;
    if (bind(u, (struct sockaddr *)&a, sizeof a) == 0 && getsockname(u, (struct sockaddr *)&a, &len) == 0 &&
        bind(t, (struct sockaddr *)&a, sizeof a) == 0)
      port = ntohs(a.sin_port);
    close(u);
    close(t);
    if (port) return port;
  }
  return 0;
}

/* 1 once something accepts TCP on 127.0.0.1:port. */
static int tcp_listening(uint16_t port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  int ok = connect(fd, (struct sockaddr *)&a, sizeof a) == 0;
  close(fd);
  return ok;
}

static void print_dnsmasq_log(void) {
  FILE *f = fopen(log_path, "r");
  char line[512];
  while (f && fgets(line, sizeof line, f)) fprintf(stderr, "  dnsmasq: %s", line);
  if (f) fclose(f);
}

/* Starts dnsmasq in the foreground (--no-daemon also keeps it from changing user), only on 127.0.0.1,
 * with no system config, no upstream and .test answered locally: unknown .test names are NXDOMAIN. */
static void setup(void) {
  if (!mkdtemp(tmpdir)) {
    perror("mkdtemp");
    return;
  }
  snprintf(hosts_path, sizeof hosts_path, "%s/hosts", tmpdir);
  snprintf(moving_path, sizeof moving_path, "%s/moving", tmpdir);
  snprintf(log_path, sizeof log_path, "%s/dnsmasq.log", tmpdir);
  dnsmasq_port = free_port();
  if (write_file(hosts_path, static_hosts) != 0 || write_file(moving_path, "127.0.0.21 moving.test\n") != 0 ||
      dnsmasq_port == 0) {
    fprintf(stderr, "test_dns: cannot prepare %s\n", tmpdir);
    return;
  }
  snprintf(dnsmasq_server, sizeof dnsmasq_server, "127.0.0.1:%u", dnsmasq_port);

  char port_arg[32], hosts_arg[300], moving_arg[300];
  snprintf(port_arg, sizeof port_arg, "--port=%u", dnsmasq_port);
  snprintf(hosts_arg, sizeof hosts_arg, "--addn-hosts=%s", hosts_path);
  snprintf(moving_arg, sizeof moving_arg, "--addn-hosts=%s", moving_path);
  char *argv[] = {"dnsmasq", "--no-daemon", "--conf-file=/dev/null", port_arg, "--listen-address=127.0.0.1",
                  "--bind-interfaces", "--no-resolv", "--no-hosts", hosts_arg, moving_arg, "--local=/test/",
                  "--txt-record=txtonly.test,no-address", "--pid-file=", "--log-facility=-", "--log-queries", NULL};
  const char *bin = access("/usr/sbin/dnsmasq", X_OK) == 0 ? "/usr/sbin/dnsmasq" : "dnsmasq";
  /* fork + exec rather than posix_spawn, for PR_SET_PDEATHSIG: dnsmasq dies with this process even when a
   * crash (abort, sanitizer report) skips teardown. Only async-signal-safe calls in the child. */
  pid_t parent = getpid();
  int log_fd = open(log_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  dnsmasq_pid = fork();
  if (dnsmasq_pid == 0) {
    int null_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || getppid() != parent || null_fd < 0 || log_fd < 0 ||
        dup2(null_fd, 0) < 0 || dup2(log_fd, 1) < 0 || dup2(log_fd, 2) < 0)
      _exit(126);
    execvp(bin, argv);
    _exit(127);
  }
  if (log_fd >= 0) close(log_fd);
  if (dnsmasq_pid < 0) {
    perror("test_dns: fork");
    return;
  }
  for (int i = 0; i < 300; i++) { /* up to 3 s */
    int st;
    if (waitpid(dnsmasq_pid, &st, WNOHANG) == dnsmasq_pid) {
      if (WIFEXITED(st) && WEXITSTATUS(st) == 127)
        fprintf(stderr, "test_dns: %s not found: apt-get install dnsmasq-base\n", bin);
      else
        fprintf(stderr, "test_dns: dnsmasq exited at start (status %d)\n", st);
      print_dnsmasq_log();
      dnsmasq_pid = -1;
      return;
    }
    if (tcp_listening(dnsmasq_port)) return;
    usleep(10000);
  }
  fprintf(stderr, "test_dns: dnsmasq not listening on port %u after 3 s\n", dnsmasq_port);
  print_dnsmasq_log();
  kill(dnsmasq_pid, SIGKILL);
  waitpid(dnsmasq_pid, NULL, 0);
  dnsmasq_pid = -1;
}

static void teardown(void) {
  if (dnsmasq_pid > 0) {
    int st;
    CHECK_EQ_INT(waitpid(dnsmasq_pid, &st, WNOHANG), 0); /* still running: it did not die under the tests */
    kill(dnsmasq_pid, SIGTERM);
    int i = 0;
    while (waitpid(dnsmasq_pid, &st, WNOHANG) == 0 && i++ < 200) usleep(10000);
    if (i > 200) {
      kill(dnsmasq_pid, SIGKILL);
      waitpid(dnsmasq_pid, &st, 0);
    }
  }
  char path[300];
  const char *names[] = {"hosts", "moving", "dnsmasq.log"};
  for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
    snprintf(path, sizeof path, "%s/%s", tmpdir, names[i]);
    unlink(path);
  }
  rmdir(tmpdir);
}

/* Every test that talks to dnsmasq starts with this: a missing dnsmasq fails it with a clear reason. */
#define NEED_DNSMASQ()                                                              \
  do {                                                                              \
    if (dnsmasq_pid <= 0) {                                                         \
      fprintf(stderr, "%s:%d: dnsmasq is not running (see above)\n", __FILE__, __LINE__); \
      test__failed_checks++;                                                        \
      return;                                                                       \
    }                                                                               \
  } while (0)

/* ---- a watch on its own loop ------------------------------------------------------------------------- */

typedef struct ctx ctx_t;
struct ctx {
  uv_loop_t loop;
  uv_timer_t watchdog;
  uv_timer_t aux; /* aux_linger: keeps the loop alive for a while after a stop */
  uv_udp_t fake;  /* in-loop DNS responder, when used */
  uv_timer_t mark; /* ctx_mark: restarted at each result */
  uv_poll_t query_poll; /* a silent server's socket: readable once a query reached it */
  int fake_used, aux_used, mark_used, poll_used, finished, timed_out;
  dns_watch_t *w;
  int calls, stop_after;
  void (*hook)(ctx_t *c); /* replaces "stop after stop_after calls" */
  int phase;
  uint64_t mark_ms;
  int early; /* results that came before the marker started at the previous result had fired */
  int status;
  size_t n;
  char addrs[MAX_ADDRS][INET6_ADDRSTRLEN];
  char err[256];
};

static void on_handle_closed(uv_handle_t *h) {}

static void close_ctx_handles(ctx_t *c) {
  if (c->finished) return;
  c->finished = 1;
  uv_close((uv_handle_t *)&c->watchdog, on_handle_closed);
  if (c->aux_used && !uv_is_closing((uv_handle_t *)&c->aux)) uv_close((uv_handle_t *)&c->aux, on_handle_closed);
  if (c->fake_used) uv_close((uv_handle_t *)&c->fake, on_handle_closed);
  if (c->mark_used) uv_close((uv_handle_t *)&c->mark, on_handle_closed);
  if (c->poll_used && !uv_is_closing((uv_handle_t *)&c->query_poll))
    uv_close((uv_handle_t *)&c->query_poll, on_handle_closed);
}

/* Stops the watch and lets the loop end. */
static void finish(ctx_t *c) {
  dns_watch_stop(c->w);
  c->w = NULL;
  close_ctx_handles(c);
}

static void on_watchdog(uv_timer_t *t) {
  ctx_t *c = t->data;
  c->timed_out = 1;
  finish(c);
}

static void on_mark(uv_timer_t *t) {}

static void on_result(void *ud, int status, const char *const *addrs, size_t n, const char *err) {
  ctx_t *c = ud;
  CHECK(!in_start);   /* never from inside dns_watch_start */
  CHECK(c->w != NULL); /* never after dns_watch_stop */
  if (c->mark_used) {
    if (c->calls > 0 && uv_is_active((uv_handle_t *)&c->mark)) c->early++;
    uv_timer_start(&c->mark, on_mark, c->mark_ms, 0);
  }
  c->calls++;
  c->status = status;
  c->n = n;
  CHECK(err != NULL);
  snprintf(c->err, sizeof c->err, "%s", err ? err : "");
  CHECK_EQ_INT(status == DNS_OK, n >= 1);
  if (status == DNS_OK) CHECK_EQ_STR(err, "");
  else CHECK(err && err[0]);
  for (size_t i = 0; i < n && i < MAX_ADDRS; i++) {
    snprintf(c->addrs[i], sizeof c->addrs[i], "%s", addrs[i]);
    if (i > 0) CHECK(strcmp(addrs[i - 1], addrs[i]) < 0); /* sorted and unique */
  }
  if (!c->w) return;
  if (c->hook) c->hook(c);
  else if (c->calls >= c->stop_after) finish(c);
}

static void ctx_init(ctx_t *c, uint64_t watchdog_ms) {
  memset(c, 0, sizeof *c);
  uv_loop_init(&c->loop);
  uv_timer_init(&c->loop, &c->watchdog);
  c->watchdog.data = c;
  uv_timer_start(&c->watchdog, on_watchdog, watchdog_ms, 0);
  c->stop_after = 1;
}

/* From now on each result after the first counts in c->early when it came before mark_ms had passed since
 * the previous one: with mark_ms below the watch's interval, a round that did not wait for it. An order of two
 * timers on one loop (the marker, started first and due first, fires first), not a measured time. */
static void ctx_mark(ctx_t *c, uint64_t mark_ms) {
  c->mark_ms = mark_ms;
  c->mark_used = 1;
  uv_timer_init(&c->loop, &c->mark);
}

static int ctx_start(ctx_t *c, const char *name, const char *server, uint64_t interval_ms, char *err,
                     size_t errlen) {
  const char *servers[] = {server};
  in_start = 1;
  int rc = dns_watch_start(&c->loop, name, servers, server ? 1 : 0, interval_ms, on_result, c, &c->w, err, errlen);
  in_start = 0;
  return rc;
}

/* Runs the loop to the end; every handle (the watch's included) must be closed by then. */
static void ctx_run(ctx_t *c) {
  uv_run(&c->loop, UV_RUN_DEFAULT);
  CHECK(c->finished);
  CHECK_EQ_INT(uv_loop_close(&c->loop), 0);
}

/* One round against server; the result is left in c. */
static void resolve_once(ctx_t *c, const char *name, const char *server) {
  char err[256] = "";
  ctx_init(c, 6000);
  int rc = ctx_start(c, name, server, 1000, err, sizeof err);
  CHECK_EQ_INT(rc, 0);
  if (rc != 0) {
    fprintf(stderr, "  dns_watch_start: %s\n", err);
    close_ctx_handles(c);
  }
  ctx_run(c);
  CHECK(!c->timed_out);
  CHECK_EQ_INT(c->calls, rc == 0 ? 1 : 0);
}

/* ---- in-loop DNS responder ----------------------------------------------------------------------------
 * dup.test: A 10.0.0.2, 10.0.0.1, 10.0.0.2 and AAAA fd00::1 twice; half.test: A 10.0.0.1, AAAA SERVFAIL;
 * flip.test: per flip_mode, A 10.0.0.9 and no AAAA (FLIP_ANSWER), SERVFAIL, NXDOMAIN, or no answer;
 * anything else: no answer at all. */

enum { FLIP_ANSWER, FLIP_SERVFAIL, FLIP_NXDOMAIN, FLIP_SILENT };
static int flip_mode;
static int flip_queries; /* queries for flip.test seen */
static void (*flip_on_silent)(void *ud); /* called at the first query left unanswered (FLIP_SILENT), once */
static void *flip_on_silent_ud;

static size_t add_rr(uint8_t *p, uint16_t type, const char *addr) {
  uint8_t rdata[16];
  size_t rdlen = type == 1 ? 4 : 16;
  inet_pton(type == 1 ? AF_INET : AF_INET6, addr, rdata);
  uint8_t head[12] = {0xc0, 0x0c, 0, (uint8_t)type, 0, 1, 0, 0, 0, 0, 0, (uint8_t)rdlen};
  memcpy(p, head, sizeof head);
  memcpy(p + sizeof head, rdata, rdlen);
  return sizeof head + rdlen;
}

static void fake_alloc(uv_handle_t *h, size_t size, uv_buf_t *buf) {
  static char mem[1500];
  *buf = uv_buf_init(mem, sizeof mem);
}

static void fake_recv(uv_udp_t *u, ssize_t nread, const uv_buf_t *buf, const struct sockaddr *from, unsigned flags) {
  if (nread < 12 + 5 || !from) return;
  const uint8_t *q = (const uint8_t *)buf->base;
  size_t qend = 12;
  while (qend < (size_t)nread && q[qend] != 0) qend += (size_t)q[qend] + 1;
  qend += 5; /* root label, QTYPE, QCLASS */
  if (qend > (size_t)nread) return;
  uint16_t qtype = (uint16_t)(q[qend - 4] << 8 | q[qend - 3]);
  const char *name = (const char *)q + 12;
  uint8_t r[512];
  memcpy(r, q, qend);
  r[2] = 0x81; /* QR, RD */
  r[3] = 0x80; /* RA, NOERROR */
  memset(r + 6, 0, 6);
  size_t len = qend, an = 0;
  if (strcmp(name, "\3dup\4test") == 0) {
    const char *v4[] = {"10.0.0.2", "10.0.0.1", "10.0.0.2"}, *v6[] = {"fd00::1", "fd00::1"};
    size_t k = qtype == 1 ? 3 : 2;
    for (an = 0; an < k; an++) len += add_rr(r + len, qtype, qtype == 1 ? v4[an] : v6[an]);
  } else if (strcmp(name, "\4flip\4test") == 0) {
    flip_queries++;
    if (flip_mode == FLIP_SILENT) {
      void (*cb)(void *) = flip_on_silent;
      flip_on_silent = NULL;
      if (cb) cb(flip_on_silent_ud);
      return;
    }
    if (flip_mode == FLIP_SERVFAIL) r[3] = 0x82;
    if (flip_mode == FLIP_NXDOMAIN) r[3] = 0x83;
    if (flip_mode == FLIP_ANSWER && qtype == 1) {
      len += add_rr(r + len, qtype, "10.0.0.9");
      an = 1;
    }
  } else if (strcmp(name, "\4half\4test") == 0) {
    if (qtype == 1) {
      len += add_rr(r + len, qtype, "10.0.0.1");
      an = 1;
    } else {
      r[3] = 0x82; /* SERVFAIL */
    }
  } else {
    return;
  }
  r[7] = (uint8_t)an;
  uv_buf_t out = uv_buf_init((char *)r, (unsigned)len);
  uv_udp_try_send(u, &out, 1, from);
}

/* Binds a responder on 127.0.0.1 on loop and writes its "host:port" into server. */
static void fake_bind(uv_loop_t *loop, uv_udp_t *u, char *server, size_t len) {
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  int alen = sizeof a;
  uv_udp_init(loop, u);
  CHECK_EQ_INT(uv_udp_bind(u, (struct sockaddr *)&a, 0), 0);
  uv_udp_getsockname(u, (struct sockaddr *)&a, &alen);
  uv_udp_recv_start(u, fake_alloc, fake_recv);
  snprintf(server, len, "127.0.0.1:%u", ntohs(a.sin_port));
}

static void fake_start(ctx_t *c, char *server, size_t len) {
  fake_bind(&c->loop, &c->fake, server, len);
  c->fake_used = 1;
}

/* ---- tests ------------------------------------------------------------------------------------------- */

TEST(resolves_a_and_aaaa_sorted_unique) {
  NEED_DNSMASQ();
  ctx_t c;
  char err[256] = "";
  ctx_init(&c, 5000);
  c.stop_after = 2; /* and a second round gives the same answer */
  ctx_mark(&c, 45);
  CHECK_EQ_INT(ctx_start(&c, "backends.test", dnsmasq_server, 50, err, sizeof err), 0);
  CHECK_EQ_INT(c.calls, 0);
  ctx_run(&c);
  CHECK(!c.timed_out);
  CHECK_EQ_INT(c.calls, 2);
  CHECK_EQ_INT(c.status, DNS_OK);
  CHECK_EQ_INT(c.n, 4);
  CHECK_EQ_STR(c.addrs[0], "127.0.0.11"); /* strcmp order, not numeric */
  CHECK_EQ_STR(c.addrs[1], "127.0.0.2");
  CHECK_EQ_STR(c.addrs[2], "::1");
  CHECK_EQ_STR(c.addrs[3], "fd00::5");
  CHECK_EQ_INT(c.early, 0); /* the second round waited for the interval */
}

TEST(one_family_only_is_ok) {
  NEED_DNSMASQ();
  ctx_t c;
  resolve_once(&c, "v4only.test", dnsmasq_server);
  CHECK_EQ_INT(c.status, DNS_OK);
  CHECK_EQ_INT(c.n, 1);
  CHECK_EQ_STR(c.addrs[0], "127.0.0.7");
  resolve_once(&c, "v6only.test", dnsmasq_server);
  CHECK_EQ_INT(c.status, DNS_OK);
  CHECK_EQ_INT(c.n, 1);
  CHECK_EQ_STR(c.addrs[0], "fd00::7");
}

TEST(missing_name_is_notfound) {
  NEED_DNSMASQ();
  ctx_t c;
  resolve_once(&c, "missing.test", dnsmasq_server); /* NXDOMAIN */
  CHECK_EQ_INT(c.status, DNS_NOTFOUND);
  CHECK_EQ_INT(c.n, 0);
  CHECK_CONTAINS(c.err, "not found");
  resolve_once(&c, "txtonly.test", dnsmasq_server); /* exists, NODATA for A and AAAA */
  CHECK_EQ_INT(c.status, DNS_NOTFOUND);
  CHECK_EQ_INT(c.n, 0);
  CHECK_CONTAINS(c.err, "no data");
}

TEST(refused_is_failed) {
  NEED_DNSMASQ();
  ctx_t c;
  /* No upstream: dnsmasq answers REFUSED; c-ares 1.18 treats that as a server failure, tries again and
   * reports "Could not contact DNS servers". */
  resolve_once(&c, "outside.example", dnsmasq_server);
  CHECK_EQ_INT(c.status, DNS_FAILED);
  CHECK_EQ_INT(c.n, 0);
}

/* moving.test changes in its hosts file; SIGHUP makes dnsmasq re-read it; a later round must show it. */
static void sighup_hook(ctx_t *c) {
  CHECK_EQ_INT(c->status, DNS_OK);
  if (c->phase == 0) {
    CHECK_EQ_INT(c->n, 1);
    CHECK_EQ_STR(c->addrs[0], "127.0.0.21");
    CHECK_EQ_INT(write_file(moving_path, "127.0.0.22 moving.test\nfd00::22 moving.test\n"), 0);
    CHECK_EQ_INT(kill(dnsmasq_pid, SIGHUP), 0);
    c->phase = 1;
    uv_timer_start(&c->watchdog, on_watchdog, 3000, 0);
  } else if (c->n == 2) {
    CHECK_EQ_STR(c->addrs[0], "127.0.0.22");
    CHECK_EQ_STR(c->addrs[1], "fd00::22");
    c->phase = 2;
    finish(c);
  } else { /* dnsmasq has not reloaded yet */
    CHECK_EQ_INT(c->n, 1);
    CHECK_EQ_STR(c->addrs[0], "127.0.0.21");
  }
}

TEST(hosts_change_after_sighup_shows_next_round) {
  NEED_DNSMASQ();
  ctx_t c;
  char err[256] = "";
  ctx_init(&c, 3000);
  c.hook = sighup_hook;
  ctx_mark(&c, 195);
  CHECK_EQ_INT(ctx_start(&c, "moving.test", dnsmasq_server, 200, err, sizeof err), 0);
  ctx_run(&c);
  CHECK(!c.timed_out);
  CHECK_EQ_INT(c.phase, 2);
  CHECK(c.calls >= 2);
  CHECK_EQ_INT(c.early, 0); /* rounds are interval_ms apart */
  write_file(moving_path, "127.0.0.21 moving.test\n");
  kill(dnsmasq_pid, SIGHUP);
}

TEST(unreachable_server_fails) {
  ctx_t c;
  char server[32];
  snprintf(server, sizeof server, "127.0.0.1:%u", free_port()); /* nothing listens there */
  resolve_once(&c, "backends.test", server);
  CHECK_EQ_INT(c.status, DNS_FAILED);
  CHECK_EQ_INT(c.n, 0); /* reported (resolve_once: before its watchdog), not left pending */
}

TEST(second_server_answers_when_first_is_down) {
  NEED_DNSMASQ();
  ctx_t c;
  char err[256] = "", down[32];
  snprintf(down, sizeof down, "127.0.0.1:%u", free_port());
  const char *servers[] = {down, dnsmasq_server};
  ctx_init(&c, 5000);
  CHECK_EQ_INT(dns_watch_start(&c.loop, "v4only.test", servers, 2, 1000, on_result, &c, &c.w, err, sizeof err), 0);
  ctx_run(&c);
  CHECK(!c.timed_out);
  CHECK_EQ_INT(c.status, DNS_OK);
  CHECK_EQ_STR(c.addrs[0], "127.0.0.7");
}

TEST(duplicate_records_reported_once) {
  ctx_t c;
  char err[256] = "", server[32];
  ctx_init(&c, 5000);
  fake_start(&c, server, sizeof server);
  CHECK_EQ_INT(ctx_start(&c, "dup.test", server, 1000, err, sizeof err), 0);
  ctx_run(&c);
  CHECK(!c.timed_out);
  CHECK_EQ_INT(c.status, DNS_OK);
  CHECK_EQ_INT(c.n, 3);
  CHECK_EQ_STR(c.addrs[0], "10.0.0.1");
  CHECK_EQ_STR(c.addrs[1], "10.0.0.2");
  CHECK_EQ_STR(c.addrs[2], "fd00::1");
}

TEST(one_family_failing_fails_the_round) {
  ctx_t c;
  char err[256] = "", server[32];
  ctx_init(&c, 5000);
  fake_start(&c, server, sizeof server);
  CHECK_EQ_INT(ctx_start(&c, "half.test", server, 1000, err, sizeof err), 0);
  ctx_run(&c);
  CHECK(!c.timed_out);
  CHECK_EQ_INT(c.status, DNS_FAILED); /* not a partial answer that would drop the IPv6 backends */
  CHECK_EQ_INT(c.n, 0);
}

TEST(bad_arguments_rejected) {
  const char *bad[] = {"localhost:53", "127.0.0.1:99999", "127.0.0.1:", "127.0.0.1:0", "127.0.0.1:-5",
                       "[::1",         "[::1]x",          "::1",         "[127.0.0.1]:53", "1.2.3.4:5x", ""};
  uv_loop_t loop;
  uv_loop_init(&loop);
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    char err[256] = "";
    dns_watch_t *w = (dns_watch_t *)&loop; /* must be reset */
    const char *servers[] = {"127.0.0.1:53", bad[i]};
    int rc = dns_watch_start(&loop, "backends.test", servers, 2, 1000, on_result, NULL, &w, err, sizeof err);
    CHECK_EQ_INT(rc, -1);
    CHECK(w == NULL);
    CHECK_CONTAINS(err, "bad DNS server");
    if (bad[i][0]) CHECK_CONTAINS(err, bad[i]);
  }
  char err[256] = "";
  dns_watch_t *w = NULL;
  CHECK_EQ_INT(dns_watch_start(&loop, "", NULL, 0, 1000, on_result, NULL, &w, err, sizeof err), -1);
  CHECK_CONTAINS(err, "bad DNS name");
  CHECK_EQ_INT(uv_run(&loop, UV_RUN_NOWAIT), 0); /* nothing was left on the loop */
  CHECK_EQ_INT(uv_loop_close(&loop), 0);
}

static void on_aux_done(uv_timer_t *t) { close_ctx_handles(t->data); }

static void aux_linger(ctx_t *c, uint64_t ms) {
  uv_timer_init(&c->loop, &c->aux);
  c->aux.data = c;
  c->aux_used = 1;
  uv_timer_start(&c->aux, on_aux_done, ms, 0);
}

/* Starts against servers, stops at once (queries in flight, answers due within ms), then waits 300 ms. */
static void start_and_stop_at_once(const char *server) {
  ctx_t c;
  char err[256] = "";
  ctx_init(&c, 5000);
  int rc = ctx_start(&c, "backends.test", server, 0, err, sizeof err);
  CHECK_EQ_INT(rc, 0);
  if (rc != 0) fprintf(stderr, "  %s: %s\n", server, err);
  dns_watch_stop(c.w);
  c.w = NULL;
  aux_linger(&c, 300);
  ctx_run(&c);
  CHECK_EQ_INT(c.calls, 0);
}

TEST(good_server_forms_accepted_and_stop_at_once) {
  NEED_DNSMASQ();
  start_and_stop_at_once(dnsmasq_server);
  start_and_stop_at_once("127.0.0.1");
  start_and_stop_at_once("[::1]:5353");
  start_and_stop_at_once("[::1]");
}

static void stop_and_linger(ctx_t *c) {
  dns_watch_stop(c->w);
  c->w = NULL;
  aux_linger(c, 400); /* time for more rounds, were they to run */
}

TEST(stop_inside_callback) {
  NEED_DNSMASQ();
  ctx_t c;
  char err[256] = "";
  ctx_init(&c, 5000);
  c.hook = stop_and_linger;
  CHECK_EQ_INT(ctx_start(&c, "backends.test", dnsmasq_server, 0, err, sizeof err), 0); /* back-to-back rounds */
  ctx_run(&c);
  CHECK_EQ_INT(c.calls, 1);
  CHECK_EQ_INT(c.status, DNS_OK);
}

/* The silent server has a query: the watch stops with it in flight, and the loop lingers past c-ares' own
 * give-up time (1 s + 2 s) for a callback that must not come. */
static void on_stop_in_flight(uv_poll_t *h, int status, int events) {
  ctx_t *c = h->data;
  uv_close((uv_handle_t *)h, on_handle_closed);
  dns_watch_stop(c->w);
  c->w = NULL;
  aux_linger(c, 3500);
}

TEST(stop_while_query_in_flight) {
  /* A UDP socket that never answers: the queries stay in flight until stopped. */
  int fd = socket(AF_INET, SOCK_DGRAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t alen = sizeof a;
  CHECK_EQ_INT(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
  getsockname(fd, (struct sockaddr *)&a, &alen);
  char server[32], err[256] = "";
  snprintf(server, sizeof server, "127.0.0.1:%u", ntohs(a.sin_port));
  ctx_t c;
  ctx_init(&c, 10000);
  CHECK_EQ_INT(uv_poll_init_socket(&c.loop, &c.query_poll, fd), 0); /* not reading: the query stays for below */
  c.query_poll.data = &c;
  c.poll_used = 1;
  CHECK_EQ_INT(uv_poll_start(&c.query_poll, UV_READABLE, on_stop_in_flight), 0);
  CHECK_EQ_INT(ctx_start(&c, "backends.test", server, 1000, err, sizeof err), 0);
  ctx_run(&c);
  CHECK(!c.timed_out);
  CHECK_EQ_INT(c.calls, 0);
  char q[512];
  CHECK(recv(fd, q, sizeof q, MSG_DONTWAIT) > 0); /* a query had been sent */
  close(fd);
}

TEST(synchronous_failure_reported_from_loop) {
  ctx_t c;
  char name[128];
  memset(name, 'a', 70); /* a 70-byte label: c-ares fails the query inside ares_search */
  strcpy(name + 70, ".test");
  resolve_once(&c, name, "127.0.0.1:53"); /* on_result checks it is not called inside dns_watch_start */
  CHECK_EQ_INT(c.status, DNS_FAILED);
  CHECK(c.err[0] != '\0');
}

/* ---- names: a backend host's cached address ---------------------------------------------------------- */

/* A UDP socket bound on 127.0.0.1 that never answers; its "host:port" goes into server. Returns the fd. */
static int silent_server(char *server, size_t len) {
  int fd = socket(AF_INET, SOCK_DGRAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t alen = sizeof a;
  CHECK_EQ_INT(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
  getsockname(fd, (struct sockaddr *)&a, &alen);
  snprintf(server, len, "127.0.0.1:%u", ntohs(a.sin_port));
  return fd;
}

/* Queries that reached a silent server (read and dropped). */
static int silent_count(int fd) {
  char q[512];
  int n = 0;
  while (recv(fd, q, sizeof q, MSG_DONTWAIT) > 0) n++;
  return n;
}

#define N_WAITS 4

typedef struct nctx nctx_t;
struct nctx {
  uv_loop_t loop;
  uv_timer_t watchdog, aux;
  uv_udp_t fake;
  int fake_used, aux_used, closed, timed_out;
  dns_name_t *n;
  int in_call;                  /* inside a dns_name_ / be_ call: no callback of theirs may run */
  int reports, status;          /* reports so far; the last one's status */
  int has_prev;
  char addr[INET6_ADDRSTRLEN], prev[INET6_ADDRSTRLEN], err[128];
  void (*on_report)(nctx_t *c); /* after each report; NULL: finish once a report came and no wait is left */
  int manual;                   /* the test finishes by itself (pool tests) */
  int phase;
  dns_wait_t waits[N_WAITS];
  int queued[N_WAITS], calls[N_WAITS], wait_status[N_WAITS], reports_at_call[N_WAITS];
  char wait_addr[N_WAITS][INET6_ADDRSTRLEN];
  /* pool tests */
  be_pool_t *pool;
  hs_server_t *srv;
  int srv_stopping;
  int sent, done, done_status[8];
};

static void n_closed(uv_handle_t *h) {}
static void n_srv_done(void *ud) {}

static void n_srv_stop(nctx_t *c) {
  if (!c->srv || c->srv_stopping) return;
  c->srv_stopping = 1;
  hs_server_shutdown(c->srv, n_srv_done, NULL);
}

/* Destroys the name (and the pool first), stops the server, closes the test's handles: the loop may end. */
static void n_finish(nctx_t *c) {
  if (c->closed) return;
  c->closed = 1;
  n_srv_stop(c);
  c->in_call = 1;
  be_pool_destroy(c->pool);
  c->pool = NULL;
  dns_name_destroy(c->n);
  c->n = NULL;
  c->in_call = 0;
  uv_close((uv_handle_t *)&c->watchdog, n_closed);
  if (c->aux_used) uv_close((uv_handle_t *)&c->aux, n_closed);
  if (c->fake_used) uv_close((uv_handle_t *)&c->fake, n_closed);
}

static void n_on_watchdog(uv_timer_t *t) {
  nctx_t *c = t->data;
  c->timed_out = 1;
  fprintf(stderr, "  watchdog: phase %d, %d reports\n", c->phase, c->reports);
  n_finish(c);
}

static int n_waits_left(const nctx_t *c) {
  int left = 0;
  for (int i = 0; i < N_WAITS; i++) left += c->queued[i] && !c->calls[i];
  return left;
}

static void n_maybe_done(nctx_t *c) {
  if (!c->manual && !c->on_report && c->reports >= 1 && n_waits_left(c) == 0) n_finish(c);
}

static void n_on_report(void *ud, const dns_name_report_t *r) {
  nctx_t *c = ud;
  CHECK(!c->in_call);
  CHECK(c->n != NULL); /* never after dns_name_destroy */
  c->reports++;
  c->status = r->status;
  c->has_prev = r->prev != NULL;
  snprintf(c->addr, sizeof c->addr, "%s", r->addr);
  snprintf(c->prev, sizeof c->prev, "%s", r->prev ? r->prev : "");
  snprintf(c->err, sizeof c->err, "%s", r->err);
  CHECK_EQ_INT(r->status == DNS_OK, r->err[0] == '\0');
  if (r->status != DNS_OK) CHECK(r->prev == NULL);
  if (c->on_report) c->on_report(c);
  else n_maybe_done(c);
}

static void n_init(nctx_t *c, uint64_t watchdog_ms) {
  memset(c, 0, sizeof *c);
  uv_loop_init(&c->loop);
  uv_timer_init(&c->loop, &c->watchdog);
  c->watchdog.data = c;
  uv_timer_start(&c->watchdog, n_on_watchdog, watchdog_ms, 0);
}

static int n_create(nctx_t *c, const char *host, const char *server, uint64_t interval_ms) {
  const char *servers[] = {server};
  char err[256] = "";
  dns_name_config_t nc = {.host = host, .interval_ms = interval_ms, .servers = servers, .n_servers = server ? 1 : 0,
                          .cb = n_on_report, .ud = c};
  c->in_call = 1;
  int rc = dns_name_create(&c->loop, &nc, &c->n, err, sizeof err);
  c->in_call = 0;
  if (rc != 0) fprintf(stderr, "  dns_name_create(%s): %s\n", host, err);
  return rc;
}

/* The name's address as a string ("" unless dns_name_addr returned 0); returns dns_name_addr's result. */
static int n_addr(const dns_name_t *n, uint16_t port, char *out, size_t len) {
  struct sockaddr_storage ss;
  memset(&ss, 0xa5, sizeof ss);
  out[0] = '\0';
  int rc = dns_name_addr(n, port, &ss);
  if (rc != 0) return rc;
  const void *a = ss.ss_family == AF_INET ? (void *)&((struct sockaddr_in *)&ss)->sin_addr
                                          : (void *)&((struct sockaddr_in6 *)&ss)->sin6_addr;
  uint16_t p = ss.ss_family == AF_INET ? ((struct sockaddr_in *)&ss)->sin_port
                                       : ((struct sockaddr_in6 *)&ss)->sin6_port;
  CHECK(ss.ss_family == AF_INET || ss.ss_family == AF_INET6);
  CHECK_EQ_INT(ntohs(p), port);
  inet_ntop(ss.ss_family, a, out, (socklen_t)len);
  return 0;
}

static void n_on_wait(dns_wait_t *w, int status) {
  nctx_t *c = w->data;
  int i = (int)(w - c->waits);
  CHECK(!c->in_call);
  c->calls[i]++;
  c->wait_status[i] = status;
  c->reports_at_call[i] = c->reports;
  if (status == 0) CHECK_EQ_INT(n_addr(c->n, 4318, c->wait_addr[i], sizeof c->wait_addr[i]), 0);
  else if (status != UV_ECANCELED) CHECK_EQ_INT(n_addr(c->n, 4318, c->wait_addr[i], sizeof c->wait_addr[i]), status);
  n_maybe_done(c);
}

static void n_wait(nctx_t *c, int i) {
  c->waits[i].data = c;
  c->queued[i] = 1;
  c->in_call = 1;
  CHECK_EQ_INT(dns_name_wait(c->n, &c->waits[i], n_on_wait), 0);
  c->in_call = 0;
}

static void n_run(nctx_t *c) {
  uv_run(&c->loop, UV_RUN_DEFAULT);
  CHECK(c->closed);
  CHECK(!c->timed_out);
  CHECK_EQ_INT(uv_loop_close(&c->loop), 0);
}

static int never_called;
static void never_report(void *ud, const dns_name_report_t *r) { never_called++; }
static void never_wait(dns_wait_t *w, int status) { never_called++; }

TEST(name_ip_literal_needs_no_lookup) {
  char server[32], err[256] = "", got[INET6_ADDRSTRLEN];
  int fd = silent_server(server, sizeof server);
  const char *servers[] = {server};
  const char *literals[] = {"127.0.0.1", "10.1.2.3", "::1", "fd00::5"};
  never_called = 0;
  for (size_t i = 0; i < sizeof literals / sizeof literals[0]; i++) {
    uv_loop_t loop;
    uv_loop_init(&loop);
    dns_name_t *n = NULL;
    dns_name_config_t nc = {.host = literals[i], .servers = servers, .n_servers = 1, .cb = never_report};
    CHECK_EQ_INT(dns_name_create(&loop, &nc, &n, err, sizeof err), 0);
    CHECK_EQ_INT(uv_loop_alive(&loop), 0); /* no handle at all: nothing to look up, nothing to refresh */
    CHECK_EQ_INT(n_addr(n, 4318, got, sizeof got), 0);
    CHECK_EQ_STR(got, literals[i]);
    CHECK_EQ_STR(dns_name_host(n), literals[i]);
    dns_wait_t w;
    CHECK_EQ_INT(dns_name_wait(n, &w, never_wait), UV_EINVAL);
    dns_name_destroy(n);
    CHECK_EQ_INT(uv_run(&loop, UV_RUN_NOWAIT), 0);
    CHECK_EQ_INT(uv_loop_close(&loop), 0);
  }
  CHECK_EQ_INT(never_called, 0);
  CHECK_EQ_INT(silent_count(fd), 0); /* no query went out */
  close(fd);
}

TEST(name_bad_arguments_rejected) {
  uv_loop_t loop;
  uv_loop_init(&loop);
  char err[256] = "", longname[300];
  memset(longname, 'a', sizeof longname - 1);
  longname[sizeof longname - 1] = '\0';
  dns_name_t *n = (dns_name_t *)&loop; /* must be reset */
  dns_name_config_t nc = {.host = ""};
  CHECK_EQ_INT(dns_name_create(&loop, &nc, &n, err, sizeof err), -1);
  CHECK(n == NULL);
  CHECK_CONTAINS(err, "bad host name");
  nc.host = longname;
  CHECK_EQ_INT(dns_name_create(&loop, &nc, &n, err, sizeof err), -1);
  const char *bad[] = {"localhost:53"};
  nc = (dns_name_config_t){.host = "x.test", .servers = bad, .n_servers = 1};
  CHECK_EQ_INT(dns_name_create(&loop, &nc, &n, err, sizeof err), -1);
  CHECK_CONTAINS(err, "bad DNS server");
  dns_name_destroy(NULL);
  CHECK_EQ_INT(uv_run(&loop, UV_RUN_NOWAIT), 0);
  CHECK_EQ_INT(uv_loop_close(&loop), 0);
}

/* One name served by dnsmasq: pending until the first answer, then the address the waiter and the report
 * see. IPv4 is preferred when both families answer. */
static void resolve_name(const char *host, const char *want1, const char *want2) {
  nctx_t c;
  char got[INET6_ADDRSTRLEN];
  n_init(&c, 5000);
  CHECK_EQ_INT(n_create(&c, host, dnsmasq_server, 10000), 0);
  CHECK_EQ_INT(n_addr(c.n, 1, got, sizeof got), 1); /* a DNS answer cannot be in yet */
  n_wait(&c, 0);
  n_run(&c);
  CHECK_EQ_INT(c.reports, 1);
  CHECK_EQ_INT(c.status, DNS_OK);
  CHECK(c.has_prev);
  CHECK_EQ_STR(c.prev, ""); /* the first answer */
  CHECK(strcmp(c.addr, want1) == 0 || (want2 && strcmp(c.addr, want2) == 0));
  if (strcmp(c.addr, want1) != 0 && (!want2 || strcmp(c.addr, want2) != 0))
    fprintf(stderr, "  %s: got %s, want %s%s%s\n", host, c.addr, want1, want2 ? " or " : "", want2 ? want2 : "");
  CHECK_EQ_INT(c.calls[0], 1);
  CHECK_EQ_INT(c.wait_status[0], 0);
  CHECK_EQ_STR(c.wait_addr[0], c.addr);
}

TEST(name_resolves_from_dnsmasq_ipv4_first) {
  NEED_DNSMASQ();
  resolve_name("v4only.test", "127.0.0.7", NULL);
  resolve_name("v6only.test", "fd00::7", NULL);
  resolve_name("backends.test", "127.0.0.2", "127.0.0.11"); /* also ::1 and fd00::5: IPv4 first */
}

/* Five rounds of a name with two IPv4 addresses: the address in use stays while the answer holds it. */
static void stable_hook(nctx_t *c) {
  CHECK_EQ_INT(c->status, DNS_OK);
  if (c->reports == 1) snprintf(c->wait_addr[3], sizeof c->wait_addr[3], "%s", c->addr);
  else CHECK(!c->has_prev);
  CHECK_EQ_STR(c->addr, c->wait_addr[3]);
  if (c->reports == 5) n_finish(c);
}

TEST(name_keeps_its_address_while_answered) {
  NEED_DNSMASQ();
  nctx_t c;
  n_init(&c, 5000);
  c.on_report = stable_hook;
  CHECK_EQ_INT(n_create(&c, "backends.test", dnsmasq_server, 20), 0);
  n_run(&c);
  CHECK_EQ_INT(c.reports, 5);
}

/* moving.test changes in dnsmasq's hosts file: a later refresh must switch to the new address. */
static void moving_hook(nctx_t *c) {
  char got[INET6_ADDRSTRLEN];
  CHECK_EQ_INT(c->status, DNS_OK);
  if (c->phase == 0) {
    CHECK_EQ_STR(c->addr, "127.0.0.21");
    CHECK_EQ_INT(write_file(moving_path, "fd00::22 moving.test\n127.0.0.22 moving.test\n"), 0);
    CHECK_EQ_INT(kill(dnsmasq_pid, SIGHUP), 0);
    c->phase = 1;
  } else if (strcmp(c->addr, "127.0.0.22") == 0) {
    CHECK(c->has_prev);
    CHECK_EQ_STR(c->prev, "127.0.0.21");
    CHECK_EQ_INT(n_addr(c->n, 80, got, sizeof got), 0);
    CHECK_EQ_STR(got, "127.0.0.22"); /* what connections get from now on */
    c->phase = 2;
    n_finish(c);
  } else { /* dnsmasq has not reloaded yet */
    CHECK_EQ_STR(c->addr, "127.0.0.21");
    CHECK(!c->has_prev);
  }
}

TEST(name_refresh_picks_up_a_changed_answer) {
  NEED_DNSMASQ();
  nctx_t c;
  n_init(&c, 4000);
  c.on_report = moving_hook;
  CHECK_EQ_INT(n_create(&c, "moving.test", dnsmasq_server, 100), 0);
  n_run(&c);
  CHECK_EQ_INT(c.phase, 2);
  CHECK(c.reports >= 2);
  write_file(moving_path, "127.0.0.21 moving.test\n");
  kill(dnsmasq_pid, SIGHUP);
}

/* flip.test answers 10.0.0.9, then SERVFAIL, then NXDOMAIN, then nothing at all: every failed refresh keeps
 * the address, and while the resolver is silent the address is still there at once. */
static void on_silent_probe(void *ud) {
  nctx_t *c = ud;
  CHECK_EQ_INT(c->phase, 3); /* the silent round is running: its query just went unanswered */
  c->in_call = 1;
  CHECK_EQ_INT(n_addr(c->n, 4318, c->wait_addr[2], sizeof c->wait_addr[2]), 0);
  c->in_call = 0;
  c->calls[2] = flip_queries; /* queries sent so far, for the check below */
}

static void flip_hook(nctx_t *c) {
  char got[INET6_ADDRSTRLEN];
  CHECK_EQ_STR(c->addr, "10.0.0.9");
  CHECK_EQ_INT(n_addr(c->n, 4318, got, sizeof got), 0);
  CHECK_EQ_STR(got, "10.0.0.9");
  switch (c->phase++) {
  case 0:
    CHECK_EQ_INT(c->status, DNS_OK);
    flip_mode = FLIP_SERVFAIL;
    break;
  case 1:
    CHECK_EQ_INT(c->status, DNS_FAILED);
    flip_mode = FLIP_NXDOMAIN;
    break;
  case 2:
    CHECK_EQ_INT(c->status, DNS_NOTFOUND);
    CHECK_CONTAINS(c->err, "not found");
    flip_mode = FLIP_SILENT;
    c->in_call = 0;
    flip_on_silent = on_silent_probe; /* within the silent round (it takes 3 s to give up) */
    flip_on_silent_ud = c;
    break;
  default:
    CHECK_EQ_INT(c->status, DNS_FAILED); /* the timeout */
    CHECK_CONTAINS(c->err, "Timeout");
    n_finish(c);
  }
}

TEST(name_failed_refresh_keeps_the_address) {
  nctx_t c;
  char server[32];
  n_init(&c, 10000);
  flip_mode = FLIP_ANSWER;
  flip_queries = 0;
  flip_on_silent = NULL;
  fake_bind(&c.loop, &c.fake, server, sizeof server);
  c.fake_used = 1;
  c.on_report = flip_hook;
  CHECK_EQ_INT(n_create(&c, "flip.test", server, 100), 0);
  n_run(&c);
  CHECK_EQ_INT(c.phase, 4);
  CHECK_EQ_STR(c.wait_addr[2], "10.0.0.9"); /* asked while the resolver was silent */
  CHECK(c.calls[2] > 0);
}

/* A name that does not resolve: the waiter learns UV_EAI_NONAME; after that dns_name_addr says so at once,
 * and a new waiter is answered on the next loop turn, without waiting for another round. */
static void fail_fast_wait(dns_wait_t *w, int status) {
  nctx_t *c = w->data;
  if (w == &c->waits[0] && status != UV_ECANCELED) n_wait(c, 1); /* before n_on_wait may finish */
  n_on_wait(w, status);
}

static void fail_fast(const char *host, const char *server, int want) {
  nctx_t c;
  n_init(&c, 6000);
  CHECK_EQ_INT(n_create(&c, host, server, 10000), 0);
  c.waits[0].data = &c;
  c.queued[0] = 1;
  c.in_call = 1;
  CHECK_EQ_INT(dns_name_wait(c.n, &c.waits[0], fail_fast_wait), 0);
  c.in_call = 0;
  n_run(&c);
  CHECK_EQ_INT(c.calls[0], 1);
  CHECK_EQ_INT(c.wait_status[0], want);
  CHECK_EQ_INT(c.calls[1], 1);
  CHECK_EQ_INT(c.wait_status[1], want);
  CHECK_EQ_INT(c.reports_at_call[1], 1); /* served from the first round's answer */
  CHECK_EQ_INT(c.reports, 1);
  CHECK_EQ_STR(c.addr, "");
  CHECK_EQ_INT(c.status, want == UV_EAI_NONAME ? DNS_NOTFOUND : DNS_FAILED);
}

TEST(name_that_does_not_resolve_fails_fast) {
  NEED_DNSMASQ();
  fail_fast("missing.test", dnsmasq_server, UV_EAI_NONAME);
  fail_fast("txtonly.test", dnsmasq_server, UV_EAI_NONAME); /* exists, no A/AAAA */
  char server[32];
  snprintf(server, sizeof server, "127.0.0.1:%u", free_port()); /* nothing listens: refused */
  fail_fast("backends.test", server, UV_EAI_AGAIN);
}

/* A hosts file entry resolves inside dns_name_create, with no DNS query (the server given never answers);
 * IPv4 first although the file lists IPv6 first. CARES_HOSTS points c-ares at the test's file. */
TEST(name_from_hosts_file_without_dns) {
  char path[256], server[32], got[INET6_ADDRSTRLEN];
  snprintf(path, sizeof path, "%s/hosts.local", tmpdir);
  CHECK_EQ_INT(write_file(path, "fd00::9 hostsonly.test\n127.0.0.9 hostsonly.test other.test\n"), 0);
  int fd = silent_server(server, sizeof server);
  setenv("CARES_HOSTS", path, 1);
  nctx_t c;
  n_init(&c, 5000);
  CHECK_EQ_INT(n_create(&c, "hostsonly.test", server, 10000), 0);
  CHECK_EQ_INT(n_addr(c.n, 4318, got, sizeof got), 0); /* answered already */
  CHECK_EQ_STR(got, "127.0.0.9");
  n_run(&c);
  CHECK_EQ_INT(c.reports, 1); /* still reported, from the loop */
  CHECK_EQ_INT(c.status, DNS_OK);
  CHECK_EQ_STR(c.addr, "127.0.0.9");
  unsetenv("CARES_HOSTS");
  CHECK_EQ_INT(silent_count(fd), 0);
  close(fd);
  unlink(path);
}

/* The system's resolver config: "localhost" and the names of /etc/hosts resolve (from the file: the first
 * IPv4 address it lists for the name), whatever the DNS servers of /etc/resolv.conf do. */
static void resolve_system(const char *host, const char *want) {
  nctx_t c;
  char got[INET6_ADDRSTRLEN];
  n_init(&c, 5000);
  CHECK_EQ_INT(n_create(&c, host, NULL, 10000), 0);
  int rc = n_addr(c.n, 4318, got, sizeof got);
  CHECK_EQ_INT(rc, 0);
  if (rc == 0 && strcmp(got, want) != 0) fprintf(stderr, "  %s: got %s, want %s\n", host, got, want);
  CHECK_EQ_STR(got, want);
  n_finish(&c);
  n_run(&c);
}

TEST(name_localhost_and_etc_hosts_with_the_system_resolver) {
  resolve_system("localhost", "127.0.0.1");
  FILE *f = fopen("/etc/hosts", "r");
  char line[512], seen[8][256];
  int n_seen = 0;
  while (f && n_seen < 8 && fgets(line, sizeof line, f)) {
    char *save = NULL, *addr = strtok_r(line, " \t\r\n", &save);
    struct in_addr a4;
    if (!addr || addr[0] == '#' || inet_pton(AF_INET, addr, &a4) != 1) continue;
    for (char *name = strtok_r(NULL, " \t\r\n", &save); name && name[0] != '#' && n_seen < 8;
         name = strtok_r(NULL, " \t\r\n", &save)) {
      int dup = strcmp(name, "localhost") == 0;
      for (int i = 0; i < n_seen; i++) dup |= strcmp(seen[i], name) == 0;
      if (dup) continue;
      snprintf(seen[n_seen++], sizeof seen[0], "%s", name);
      resolve_system(name, addr); /* the first IPv4 line naming it */
    }
  }
  if (f) fclose(f);
  fprintf(stderr, "  /etc/hosts: %d names besides localhost checked\n", n_seen);
}

/* Waiters: a cancelled one is never called; the others hear UV_ECANCELED after dns_name_destroy, from the
 * loop, never inside the destroy. */
TEST(name_wait_cancel_and_destroy) {
  char server[32];
  int fd = silent_server(server, sizeof server);
  nctx_t c;
  n_init(&c, 5000);
  c.manual = 1;
  CHECK_EQ_INT(n_create(&c, "slow.test", server, 10000), 0); /* destroyed before any round can finish */
  for (int i = 0; i < 3; i++) n_wait(&c, i);
  dns_name_cancel(&c.waits[1]);
  dns_name_cancel(&c.waits[1]); /* not waiting any more: nothing */
  c.queued[1] = 0;
  n_finish(&c);
  CHECK_EQ_INT(c.calls[0] + c.calls[2], 0); /* not inside destroy */
  n_run(&c);
  CHECK_EQ_INT(c.calls[0], 1);
  CHECK_EQ_INT(c.wait_status[0], UV_ECANCELED);
  CHECK_EQ_INT(c.calls[1], 0);
  CHECK_EQ_INT(c.calls[2], 1);
  CHECK_EQ_INT(c.wait_status[2], UV_ECANCELED);
  CHECK_EQ_INT(c.reports, 0);
  close(fd);
}

/* ---- names through a backend pool -------------------------------------------------------------------- */

static void pool_done(void *ud, int status, const uint8_t *body, size_t len, uint32_t retry_after) {
  nctx_t *c = ud;
  CHECK(!c->in_call); /* never inside be_send */
  if (c->done < 8) c->done_status[c->done] = status;
  c->done++;
}

static void pool_send(nctx_t *c) {
  static char body[] = "x";
  struct iovec iov = {body, 1};
  c->in_call = 1;
  CHECK_EQ_INT(be_send(c->pool, "/v1/traces", "application/x-protobuf", NULL, &iov, 1, pool_done, c), 0);
  c->in_call = 0;
  c->sent++;
}

static void pool_create(nctx_t *c, uint16_t port, uint64_t timeout_ms) {
  be_pool_config_t pc = {.host = dns_name_host(c->n), .name = c->n, .port = port, .max_connections = 4,
                         .request_timeout_ms = timeout_ms};
  CHECK_EQ_INT(be_pool_create(&c->loop, &pc, &c->pool), 0);
}

static void pool_srv_request(hs_request_t *req, void *ud) { hs_respond(req, 200, "text/plain", NULL, 0, "ok", 2); }

/* Polls (every 10 ms) until every request sent is done, then sends more (phase 0 -> 1) or finishes. */
static void on_pool_poll(uv_timer_t *t) {
  nctx_t *c = t->data;
  if (c->done < c->sent) return;
  if (c->phase++ == 0) {
    pool_send(c); /* the name has its answer (or its error) now: straight from the cache */
    pool_send(c);
    return;
  }
  n_finish(c);
}

static void pool_poll_start(nctx_t *c) {
  uv_timer_init(&c->loop, &c->aux);
  c->aux.data = c;
  c->aux_used = 1;
  uv_timer_start(&c->aux, on_pool_poll, 10, 10);
}

/* A resolver that never answers: requests wait for the first answer only until their own deadline
 * (UV_ETIMEDOUT), and the connections never look anything up themselves: one round's queries at most. */
TEST(pool_waits_for_the_first_answer_within_the_request_timeout) {
  char server[32];
  int fd = silent_server(server, sizeof server);
  nctx_t c;
  n_init(&c, 8000);
  c.manual = 1;
  CHECK_EQ_INT(n_create(&c, "slow.test", server, 10000), 0);
  pool_create(&c, 9, 300);
  for (int i = 0; i < 3; i++) pool_send(&c);
  c.phase = 1; /* no second batch */
  pool_poll_start(&c);
  n_run(&c);
  CHECK_EQ_INT(c.done, 3);
  for (int i = 0; i < 3; i++) CHECK_EQ_INT(c.done_status[i], UV_ETIMEDOUT);
  int q = silent_count(fd);
  CHECK(q >= 1 && q <= 4); /* A + AAAA of one round (and their retry), not one lookup per connection */
  close(fd);
}

/* A name that does not resolve fails requests with UV_EAI_NONAME, not a timeout, before and after its
 * answer came. */
TEST(pool_name_that_does_not_resolve_fails_fast) {
  NEED_DNSMASQ();
  nctx_t c;
  n_init(&c, 8000);
  c.manual = 1;
  CHECK_EQ_INT(n_create(&c, "missing.test", dnsmasq_server, 10000), 0);
  pool_create(&c, 9, 30000);
  pool_send(&c);
  pool_poll_start(&c);
  n_run(&c);
  CHECK_EQ_INT(c.done, 3);
  for (int i = 0; i < 3; i++) CHECK_EQ_INT(c.done_status[i], UV_EAI_NONAME);
}


/* A name resolved by dnsmasq (v4only.test = 127.0.0.7): the pool connects there. */
TEST(pool_connects_to_the_resolved_address) {
  NEED_DNSMASQ();
  nctx_t c;
  n_init(&c, 8000);
  hs_config_t cfg = {.name = "dns-test", .max_body_bytes = 1024, .on_request = pool_srv_request};
  CHECK_EQ_INT(hs_server_create(&c.loop, &cfg, &c.srv), 0);
  int rc = hs_server_listen(c.srv, "127.0.0.7", 0);
  CHECK_EQ_INT(rc, 0);
  CHECK_EQ_INT(n_create(&c, "v4only.test", dnsmasq_server, 10000), 0);
  c.manual = 1;
  pool_create(&c, hs_server_port(c.srv), 5000);
  pool_send(&c);
  pool_poll_start(&c);
  if (rc != 0) n_srv_stop(&c);
  uv_run(&c.loop, UV_RUN_DEFAULT);
  CHECK(c.closed);
  CHECK(!c.timed_out);
  hs_server_destroy(c.srv);
  CHECK_EQ_INT(uv_loop_close(&c.loop), 0);
  CHECK_EQ_INT(c.done, 3);
  for (int i = 0; i < 3; i++) CHECK_EQ_INT(c.done_status[i], 200);
}

/* A connect libuv refuses at once (255.255.255.255: ENETUNREACH) fails the request from the loop, never
 * inside be_send, and not by its timeout. The pool resolves the literal itself (no name given). */
TEST(pool_connect_failing_at_once_is_reported_from_the_loop) {
  nctx_t c;
  n_init(&c, 8000);
  c.manual = 1;
  be_pool_config_t pc = {.host = "255.255.255.255", .port = 9, .max_connections = 2, .request_timeout_ms = 30000};
  CHECK_EQ_INT(be_pool_create(&c.loop, &pc, &c.pool), 0);
  pool_send(&c);
  CHECK_EQ_INT(c.done, 0);
  pool_poll_start(&c);
  n_run(&c);
  CHECK_EQ_INT(c.done, 3);
  for (int i = 0; i < 3; i++) {
    CHECK(c.done_status[i] < 0);
    CHECK(c.done_status[i] != UV_ETIMEDOUT);
  }
  fprintf(stderr, "  connect to 255.255.255.255: %s\n", uv_err_name(c.done_status[0]));
}

TEST_MAIN_WITH(setup, teardown)
