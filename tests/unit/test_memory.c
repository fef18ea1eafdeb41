/*
 * gateway/memory: the budget's arithmetic (limit, small-request slice, forced charges, trim claims), its
 * atomicity under threads, and gateway/http_server's use of it: a body charged before it is read, refused with
 * 503 + Retry-After and discarded (the connection stays usable, the client gets the answer, not a reset),
 * chunked growth, hs_request_reserve, and everything given back when requests end.
 */
#define _GNU_SOURCE /* strcasestr */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "gateway/http_server.h"
#include "gateway/memory.h"
#include "http_client.h"
#include "test.h"

#define MIB (1024ull * 1024)

TEST(reserve_release_and_limit) {
  gm_budget_t b;
  gm_init(&b, 64 * MIB);
  CHECK_EQ_INT(gm_limit(&b), 64 * MIB);
  CHECK_EQ_INT(gm_reserve(&b, 100, 100), 0);
  CHECK_EQ_INT(gm_used(&b), 100);
  gm_release(&b, 100);
  CHECK_EQ_INT(gm_used(&b), 0);
  /* a request as large as the whole budget can never be admitted: large ones get 7/8 of it */
  CHECK_EQ_INT(gm_reserve(&b, 64 * MIB, 64 * MIB), -1);
  CHECK_EQ_INT(gm_reserve(&b, UINT64_MAX, UINT64_MAX), -1); /* no wrap-around */
  CHECK_EQ_INT(gm_used(&b), 0);
  CHECK_EQ_INT(gm_refused(&b), 2);
  CHECK_EQ_INT(gm_reserve(&b, 56 * MIB, 56 * MIB), 0); /* exactly 7/8 */
  CHECK_EQ_INT(gm_reserve(&b, 1, 2 * MIB), -1);          /* a large request: nothing past 7/8 */
  gm_release(&b, 56 * MIB);
  CHECK_EQ_INT(gm_used(&b), 0);
}

/* The last 1/8 is for requests holding less than limit/64 in all: large ones cannot starve them. */
TEST(small_requests_keep_their_slice) {
  gm_budget_t b;
  gm_init(&b, 64 * MIB); /* small: < 1 MiB in all; the slice: the last 8 MiB */
  int large = 0;
  while (gm_reserve(&b, 2 * MIB, 2 * MIB) == 0) large++;
  CHECK_EQ_INT(large, 28); /* 56 MiB */
  int small = 0;
  while (gm_reserve(&b, 512 * 1024, 512 * 1024) == 0) small++;
  CHECK_EQ_INT(small, 16); /* the other 8 MiB */
  CHECK_EQ_INT(gm_used(&b), 64 * MIB);
  CHECK_EQ_INT(gm_reserve(&b, 1, 1), -1); /* full */
  /* total, not bytes, decides: a 64 KiB growth of a request already holding 2 MiB is a large one */
  gm_release(&b, 4 * MIB); /* 60 MiB used */
  CHECK_EQ_INT(gm_reserve(&b, 64 * 1024, 2 * MIB), -1);
  CHECK_EQ_INT(gm_reserve(&b, 64 * 1024, 64 * 1024), 0);
  /* the boundary: limit/64 is already large */
  CHECK_EQ_INT(gm_reserve(&b, 1, 1 * MIB), -1);
  CHECK_EQ_INT(gm_reserve(&b, 1, 1 * MIB - 1), 0);
  gm_release(&b, gm_used(&b));
  CHECK_EQ_INT(gm_used(&b), 0);
}

/* Acknowledged data is charged whatever the budget says; it then refuses everything until it drains. */
TEST(forced_charges_pass_the_limit) {
  gm_budget_t b;
  gm_init(&b, 16 * MIB);
  gm_force(&b, 20 * MIB);
  CHECK_EQ_INT(gm_used(&b), 20 * MIB);
  CHECK_EQ_INT(gm_reserve(&b, 1, 1), -1);
  CHECK_EQ_INT(gm_reserve_cb(1, 1, 0, &b), -1);
  CHECK_EQ_INT(gm_reserve_cb(5, 5, 1, &b), 0); /* force through the callback form */
  gm_release_cb(5, &b);
  gm_release(&b, 20 * MIB);
  CHECK_EQ_INT(gm_reserve_cb(1, 1, 0, &b), 0);
  gm_release(&b, 1);
  CHECK_EQ_INT(gm_used(&b), 0);
  gm_set_limit(&b, 1 * MIB); /* a lower limit: what is charged stays, more is refused */
  CHECK_EQ_INT(gm_limit(&b), 1 * MIB);
  CHECK_EQ_INT(gm_reserve(&b, 1 * MIB, 1), -1);
}

/* A trim is due once per drop of limit/16 (clamped to 16..64 MiB) from the peak; one claimant wins. */
TEST(trim_due_once_per_drop) {
  gm_budget_t b;
  gm_init(&b, 1024 * MIB); /* drop: 64 MiB */
  CHECK_EQ_INT(gm_trim_due(&b), 0);
  CHECK_EQ_INT(gm_reserve(&b, 100 * MIB, 1), 0);
  gm_release(&b, 50 * MIB);
  CHECK_EQ_INT(gm_trim_due(&b), 0); /* fell by 50 MiB only */
  gm_release(&b, 20 * MIB);
  CHECK_EQ_INT(gm_trim_due(&b), 1); /* 70 MiB below the peak */
  CHECK_EQ_INT(gm_trim_due(&b), 0); /* claimed: the peak is now 30 MiB */
  gm_release(&b, 30 * MIB);
  CHECK_EQ_INT(gm_trim_due(&b), 0);
  gm_force(&b, 80 * MIB);
  gm_release(&b, 80 * MIB);
  CHECK_EQ_INT(gm_trim_due(&b), 1);
  gm_trim(); /* runs (malloc_trim) */
  gm_budget_t s;
  gm_init(&s, 64 * MIB); /* limit/16 = 4 MiB, clamped up to 16 MiB */
  gm_force(&s, 10 * MIB);
  gm_release(&s, 10 * MIB);
  CHECK_EQ_INT(gm_trim_due(&s), 0);
  gm_force(&s, 16 * MIB);
  gm_release(&s, 16 * MIB);
  CHECK_EQ_INT(gm_trim_due(&s), 1);
}

/* Several threads reserving and releasing: the count never passes the limit and ends at zero. The limit is
 * low enough that each thread on its own reaches it (16 slots of up to 256 KiB, about half of them held, against
 * the 896 KiB a large request may fill): refusals do not depend on how the threads happen to overlap. */
static gm_budget_t shared;
static atomic_int over_limit;
static pthread_barrier_t hammer_start;

static void *hammer(void *arg) {
  unsigned seed = (unsigned)(uintptr_t)arg;
  uint64_t held[16] = {0};
  pthread_barrier_wait(&hammer_start); /* all start together, so they do contend */
  for (int i = 0; i < 200000; i++) {
    int k = (int)(rand_r(&seed) % 16);
    if (held[k]) {
      gm_release(&shared, held[k]);
      held[k] = 0;
    } else {
      uint64_t n = 1 + rand_r(&seed) % (256 * 1024);
      if (gm_reserve(&shared, n, n) == 0) held[k] = n;
      if (gm_used(&shared) > gm_limit(&shared)) atomic_fetch_add(&over_limit, 1);
    }
  }
  for (int k = 0; k < 16; k++) gm_release(&shared, held[k]);
  return NULL;
}

TEST(threads_share_one_budget) {
  gm_init(&shared, 1 * MIB);
  pthread_barrier_init(&hammer_start, NULL, 4);
  pthread_t t[4];
  for (int i = 0; i < 4; i++) pthread_create(&t[i], NULL, hammer, (void *)(uintptr_t)(i + 1));
  for (int i = 0; i < 4; i++) pthread_join(t[i], NULL);
  pthread_barrier_destroy(&hammer_start);
  CHECK_EQ_INT(gm_used(&shared), 0);
  CHECK_EQ_INT(atomic_load(&over_limit), 0);
  CHECK(gm_refused(&shared) > 0); /* it was reached */
}

/* ---- gateway/http_server with a budget ------------------------------------------------------------------ */

#define BUDGET (1 * MIB) /* large requests (>= 16 KiB in all) get 896 KiB of it */

static gm_budget_t budget;
static uv_loop_t loop;
static hs_server_t *srv;
static uv_async_t ctl_async;
static pthread_t thread;
static uint16_t port;
static int loop_close_rc = -1;
static hs_request_t *held;      /* /hold: answered when the test asks (CTL_RELEASE) */
static atomic_int error_bodies; /* 503 error_body calls */
static atomic_int ctl;
enum { CTL_RELEASE = 1, CTL_STOP = 2 };

static size_t error_body(const hs_request_t *req, int status, const char *msg, char *out, size_t cap,
                         const char **content_type, void *ud) {
  if (status == 503) atomic_fetch_add(&error_bodies, 1);
  *content_type = "text/x-test";
  return (size_t)snprintf(out, cap, "refused %d %s", status, msg);
}

static void on_request(hs_request_t *req, void *ud) {
  char buf[128];
  if (hs_slice_eq(req->path, "/hold")) {
    held = req;
    return;
  }
  if (hs_slice_eq(req->path, "/extra")) { /* the handler charges 600 KiB more, as for a decompressed copy */
    int rc = hs_request_reserve(req, 600 * 1024, 0);
    hs_respond(req, rc == 0 ? 200 : 503, "text/plain", NULL, 0, rc == 0 ? "extra ok" : "extra refused", rc ? 13 : 8);
    return;
  }
  int n = snprintf(buf, sizeof buf, "len %zu", req->body_len);
  hs_respond(req, 200, "text/plain", NULL, 0, buf, (size_t)n);
}

static void shutdown_done(void *ud) { uv_close((uv_handle_t *)&ctl_async, NULL); }
static void on_ctl(uv_async_t *a) {
  int c = atomic_exchange(&ctl, 0);
  if ((c & CTL_RELEASE) && held) {
    hs_respond(held, 200, "text/plain", NULL, 0, "released", 8);
    held = NULL;
  }
  if (c & CTL_STOP) hs_server_shutdown(srv, shutdown_done, NULL);
}

static void *server_main(void *arg) {
  uv_run(&loop, UV_RUN_DEFAULT);
  loop_close_rc = uv_loop_close(&loop);
  return NULL;
}

static void start_server(void) {
  gm_init(&budget, BUDGET);
  uv_loop_init(&loop);
  hs_config_t cfg = {.name = "memtest", .max_body_bytes = 4 * MIB, .read_timeout_ms = 5000, .idle_timeout_ms = 5000,
                     .on_request = on_request, .error_body = error_body, .mem_reserve = gm_reserve_cb,
                     .mem_release = gm_release_cb, .mem_ud = &budget, .mem_retry_after_s = 7};
  CHECK_EQ_INT(hs_server_create(&loop, &cfg, &srv), 0);
  CHECK_EQ_INT(hs_server_listen(srv, "127.0.0.1", 0), 0);
  port = hs_server_port(srv);
  uv_async_init(&loop, &ctl_async, on_ctl);
  pthread_create(&thread, NULL, server_main, NULL);
}

static void control(int c) {
  atomic_fetch_or(&ctl, c);
  uv_async_send(&ctl_async);
}

static void stop_server(void) {
  control(CTL_STOP);
  pthread_join(thread, NULL);
  CHECK_EQ_INT(loop_close_rc, 0);
  hs_server_destroy(srv);
}

/* Polls until the budget holds want bytes (the server thread gives back right after it answers), for up to
 * 10 s: a bound for a loaded machine, not a speed expected. */
static int wait_used(uint64_t want) {
  for (int i = 0; i < 2000; i++) {
    if (gm_used(&budget) == want) return 1;
    struct timespec ts = {0, 5 * 1000 * 1000};
    nanosleep(&ts, NULL);
  }
  fprintf(stderr, "budget holds %llu, not %llu\n", (unsigned long long)gm_used(&budget), (unsigned long long)want);
  return 0;
}

static client_t *connect_client(void) { return client_connect(port, 5); }

/* A request head with Content-Length n, then n body bytes (sent in one go when body). */
static void send_request(client_t *c, const char *path, size_t n, int body, const char *extra) {
  char head[256];
  snprintf(head, sizeof head, "POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: %zu\r\n%s\r\n", path, n, extra);
  sendstr(c, head);
  if (!body) return;
  char *b = malloc(n ? n : 1);
  memset(b, 'b', n);
  send_all(c, b, n);
  free(b);
}

/* 1 when the server ends the connection with a FIN (not a reset) within the receive timeout. */
static int clean_eof(client_t *c) {
  char b[4096];
  for (;;) {
    ssize_t n = recv(c->fd, b, sizeof b, 0);
    if (n == 0) return 1;
    if (n < 0) return 0;
  }
}

TEST(server_charges_bodies_and_refuses_over_budget) {
  start_server();
  response_t r;
  client_t *c = connect_client();
  /* within the budget: read, answered, given back */
  send_request(c, "/echo", 512 * 1024, 1, "");
  CHECK_EQ_INT(read_response(c, &r), 0);
  CHECK_EQ_INT(r.status, 200);
  CHECK_EQ_STR(r.body, "len 524288");
  CHECK(wait_used(0));
  /* over it: 503 from the headers, while the whole 2 MiB body is still being sent; the body is read and
   * dropped and the connection goes on */
  send_request(c, "/echo", 2 * MIB, 1, "");
  CHECK_EQ_INT(read_response(c, &r), 0);
  CHECK_EQ_INT(r.status, 503);
  CHECK_EQ_STR(r.retry_after, "7");
  CHECK_EQ_STR(r.ctype, "text/x-test"); /* error_body made it, as for the server's other errors */
  CHECK_EQ_STR(r.body, "refused 503 memory limit reached: retry later");
  CHECK_EQ_INT(atomic_load(&error_bodies), 1);
  send_request(c, "/echo", 100, 1, "");
  CHECK_EQ_INT(read_response(c, &r), 0);
  CHECK_EQ_INT(r.status, 200);
  CHECK_EQ_STR(r.body, "len 100");
  CHECK(wait_used(0));
  /* with Connection: close the client still reads the whole answer, then a clean end (no reset) */
  send_request(c, "/echo", 2 * MIB, 1, "Connection: close\r\n");
  CHECK_EQ_INT(read_response(c, &r), 0);
  CHECK_EQ_INT(r.status, 503);
  CHECK(clean_eof(c));
  client_close(c);
  CHECK(wait_used(0));
  CHECK_EQ_INT(hs_server_stats(srv)->memory_refused, 2);
  stop_server();
}

TEST(server_holds_the_charge_until_answered) {
  start_server();
  response_t r;
  client_t *a = connect_client();
  send_request(a, "/hold", 600 * 1024, 1, ""); /* at the handler: charged */
  CHECK(wait_used(600 * 1024));
  client_t *b = connect_client();
  send_request(b, "/echo", 400 * 1024, 1, ""); /* 1000 KiB > 896 KiB: refused */
  CHECK_EQ_INT(read_response(b, &r), 0);
  CHECK_EQ_INT(r.status, 503);
  send_request(b, "/echo", 8 * 1024, 1, ""); /* a small one fits in the last 1/8 */
  CHECK_EQ_INT(read_response(b, &r), 0);
  CHECK_EQ_INT(r.status, 200);
  /* a client that goes away while refused, mid-body: nothing stays charged */
  client_t *gone = connect_client();
  send_request(gone, "/echo", 2 * MIB, 0, "");
  sendstr(gone, "partial body");
  CHECK_EQ_INT(read_response(gone, &r), 0);
  CHECK_EQ_INT(r.status, 503);
  client_close(gone);
  control(CTL_RELEASE);
  CHECK_EQ_INT(read_response(a, &r), 0);
  CHECK_EQ_STR(r.body, "released");
  CHECK(wait_used(0));
  /* a client that disconnects while its admitted body is half read gives its charge back */
  client_t *half = connect_client();
  send_request(half, "/echo", 800 * 1024, 0, "");
  sendstr(half, "some of it");
  CHECK(wait_used(800 * 1024));
  client_close(half);
  CHECK(wait_used(0));
  /* the handler charges more for the request (hs_request_reserve): within the budget, then over it */
  send_request(b, "/extra", 100 * 1024, 1, "");
  CHECK_EQ_INT(read_response(b, &r), 0);
  CHECK_EQ_STR(r.body, "extra ok");
  CHECK(wait_used(0));
  send_request(b, "/extra", 400 * 1024, 1, "");
  CHECK_EQ_INT(read_response(b, &r), 0);
  CHECK_EQ_STR(r.body, "extra refused");
  CHECK(wait_used(0));
  client_close(a);
  client_close(b);
  stop_server();
}

/* A chunked body is charged as its buffer grows: refused mid-body, the rest discarded, the connection kept. */
TEST(server_refuses_a_growing_chunked_body) {
  start_server();
  response_t r;
  client_t *c = connect_client();
  sendstr(c, "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n");
  char *chunk = malloc(64 * 1024);
  memset(chunk, 'c', 64 * 1024);
  for (int i = 0; i < 24; i++) { /* 1.5 MiB in all: its buffer would pass 896 KiB */
    sendstr(c, "10000\r\n");
    send_all(c, chunk, 64 * 1024);
    sendstr(c, "\r\n");
  }
  sendstr(c, "0\r\n\r\n");
  free(chunk);
  CHECK_EQ_INT(read_response(c, &r), 0);
  CHECK_EQ_INT(r.status, 503);
  CHECK_EQ_STR(r.retry_after, "7");
  sendstr(c, "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n");
  CHECK_EQ_INT(read_response(c, &r), 0);
  CHECK_EQ_INT(r.status, 200);
  CHECK_EQ_STR(r.body, "len 5");
  CHECK(wait_used(0));
  client_close(c);
  stop_server();
}

TEST_MAIN()
