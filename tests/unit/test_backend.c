/*
 * gateway/backend: the keep-alive pool against a scripted fake backend on 127.0.0.1.
 *
 * The fake backend is a raw libuv server in the test's own loop. Each accepted connection follows the
 * script of its index (first connection: script[0], ...): what it reads of a request (the head only, or
 * head and body), what it writes back and when, and how it ends (stay, close, reset). Every request body
 * is a recognisable pattern, so the server checks that each request it reads whole is well framed and
 * intact (a connection reused too early would corrupt the next request). The done callback scribbles over
 * and frees the request's body, so under AddressSanitizer any later read of it by libuv is caught. Each
 * run ends with the pool destroyed and uv_loop_close() == 0: no handle left behind.
 *
 * TLS: the same fake over gateway/transport (tp_start_server) with certificates the setup makes with the openssl
 * CLI (a test CA, a server certificate for localhost and 127.0.0.1, and an unrelated CA), so every script runs
 * the same over TLS: the pool's rules do not change with the transport.
 */
#define _GNU_SOURCE /* memmem */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include "gateway/backend.h"
#include "gateway/version.h"
#include "gateway/transport.h"
#include "test.h"
#include "test_certs.h"

#define BIG (8u * 1024 * 1024) /* more than the socket buffers take at once */
#define MAX_REQS 64
#define MAX_CONNS 16

/* ---- the scripted backend ----------------------------------------------------------------------------- */

enum { READ_WHOLE = 0, READ_HEAD, READ_NOTHING };
enum { END_STAY = 0, END_CLOSE, END_RESET };

typedef struct script {
  int read;              /* READ_*: what is read before answering */
  const char *answer;    /* written after reading; NULL: nothing */
  size_t answer_len;     /* 0: strlen(answer) */
  int end;               /* END_* after the answer is written */
  int requests;          /* answer this many requests on the connection (keep-alive), 0 = 1 */
  const char *unsolicited; /* written once the last answer is out, on an otherwise idle connection */
  int reset_extra;       /* a request head after the answered ones: reset without a byte of answer */
  int reset_on_bytes;    /* reset as soon as any byte arrives (a TLS client's hello, for a plain fake) */
} script_t;

typedef struct fake fake_t;
typedef struct fconn {
  tp_t tp;
  fake_t *f;
  int idx;
  script_t sc;
  char *buf;
  size_t len, cap;
  size_t need;           /* body bytes still to read of the current request */
  int answered;          /* requests answered on this connection */
  int head_seen;
  int closing;
} fconn_t;

struct fake {
  uv_tcp_t server;
  uint16_t port;
  script_t scripts[MAX_CONNS];
  int n_scripts;
  int accepted;
  int bad_requests;      /* requests read whole that were not well framed or intact */
  int good_requests;
  fconn_t *conns[MAX_CONNS];
  tls_ctx_t *tls;        /* NULL: plaintext */
  const char *path;      /* the path every request must have; NULL: "/v1/traces" */
  int resumed;           /* TLS connections that resumed a session */
};

static script_t sc(int read, const char *answer, size_t answer_len, int end, int requests) {
  script_t s = {.read = read, .answer = answer, .answer_len = answer_len, .end = end, .requests = requests};
  return s;
}

static const char ok200[] = "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";

static uint8_t pattern(size_t i) { return (uint8_t)(i * 7 + 3); }

static void fconn_closed(uv_handle_t *h) {
  fconn_t *c = h->data;
  free(c->buf);
  free(c);
}

static void fconn_end(fconn_t *c, int how) {
  if (c->closing) return;
  c->closing = 1;
  c->f->conns[c->idx] = NULL;
  if (how == END_RESET) {
    struct linger l = {1, 0};
    uv_os_fd_t fd;
    if (uv_fileno((uv_handle_t *)&c->tp.tcp, &fd) == 0) setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
  }
  if (tp_session_reused(&c->tp)) c->f->resumed++;
  tp_close(&c->tp, fconn_closed);
}

static void on_fwrite(uv_write_t *w, int status) {
  fconn_t *c = w->data;
  free(w);
  if (status < 0 || c->closing) return;
  if (c->answered >= (c->sc.requests ? c->sc.requests : 1)) {
    if (c->sc.end != END_STAY) {
      fconn_end(c, c->sc.end);
    } else if (c->sc.unsolicited) {
      const char *u = c->sc.unsolicited;
      c->sc.unsolicited = NULL;
      uv_write_t *w2 = malloc(sizeof *w2);
      uv_buf_t b = uv_buf_init((char *)u, (unsigned)strlen(u));
      w2->data = c;
      tp_write(w2, &c->tp, &b, 1, on_fwrite);
    }
  }
}

static void fconn_answer(fconn_t *c) {
  c->answered++;
  if (!c->sc.answer) {
    if (c->sc.end != END_STAY) fconn_end(c, c->sc.end);
    return;
  }
  uv_write_t *w = malloc(sizeof *w);
  size_t n = c->sc.answer_len ? c->sc.answer_len : strlen(c->sc.answer);
  uv_buf_t b = uv_buf_init((char *)c->sc.answer, (unsigned)n);
  w->data = c;
  if (tp_write(w, &c->tp, &b, 1, on_fwrite) != 0) free(w);
}

/* Consumes what arrived: request heads, bodies (checked against the pattern), answers per the script. */
static void fconn_feed(fconn_t *c) {
  for (;;) {
    if (c->closing) return;
    if (!c->head_seen) {
      char *end = c->len >= 4 ? memmem(c->buf, c->len, "\r\n\r\n", 4) : NULL;
      if (!end) return;
      size_t head = (size_t)(end - c->buf) + 4;
      char *cl = memmem(c->buf, head, "Content-Length: ", 16);
      char line[128];
      int ll = snprintf(line, sizeof line, "POST %s HTTP/1.1\r\n", c->f->path ? c->f->path : "/v1/traces");
      int framed = strncmp(c->buf, line, (size_t)ll) == 0 && cl;
      c->need = cl ? strtoul(cl + 16, NULL, 10) : 0;
      if (!framed) c->f->bad_requests++;
      memmove(c->buf, c->buf + head, c->len - head);
      c->len -= head;
      c->head_seen = 1;
      if (c->sc.reset_extra && c->answered >= (c->sc.requests ? c->sc.requests : 1)) {
        fconn_end(c, END_RESET);
        return;
      }
      if (c->sc.read != READ_WHOLE) { /* answer early: the body is left unread from here on */
        tp_read_stop(&c->tp);
        fconn_answer(c);
        return;
      }
    }
    if (c->len < c->need) return;
    int intact = 1;
    for (size_t i = 0; i < c->need && intact; i++) intact = (uint8_t)c->buf[i] == pattern(i);
    if (intact) c->f->good_requests++;
    else c->f->bad_requests++;
    memmove(c->buf, c->buf + c->need, c->len - c->need);
    c->len -= c->need;
    c->need = 0;
    c->head_seen = 0;
    fconn_answer(c);
    if (c->answered >= (c->sc.requests ? c->sc.requests : 1) && c->sc.end != END_STAY) return;
  }
}

static void falloc(uv_handle_t *h, size_t suggested, uv_buf_t *b) {
  fconn_t *c = h->data;
  if (c->cap - c->len < 65536) {
    c->cap = c->cap * 2 + 65536;
    c->buf = realloc(c->buf, c->cap);
  }
  *b = uv_buf_init(c->buf + c->len, (unsigned)(c->cap - c->len));
}

static void fread_cb(uv_stream_t *s, ssize_t n, const uv_buf_t *b) {
  fconn_t *c = s->data;
  if (n < 0) {
    fconn_end(c, END_CLOSE);
    return;
  }
  if (c->sc.reset_on_bytes && n > 0) {
    fconn_end(c, END_RESET);
    return;
  }
  c->len += (size_t)n;
  fconn_feed(c);
}

static void on_fconn(uv_stream_t *server, int status) {
  fake_t *f = server->data;
  if (status < 0) return;
  fconn_t *c = calloc(1, sizeof *c);
  c->f = f;
  c->idx = f->accepted < MAX_CONNS ? f->accepted : MAX_CONNS - 1;
  c->sc = f->accepted < f->n_scripts ? f->scripts[f->accepted] : sc(READ_WHOLE, ok200, 0, END_STAY, 100);
  f->accepted++;
  tp_init(server->loop, &c->tp);
  c->tp.tcp.data = c;
  if (uv_accept(server, (uv_stream_t *)&c->tp.tcp) != 0 || (f->tls && tp_start_server(&c->tp, f->tls) != 0)) {
    tp_close(&c->tp, fconn_closed);
    return;
  }
  /* as servers do: an answer goes out at once, not held by Nagle behind unacknowledged bytes (the TLS session
   * ticket) until a close with unread request bytes resets the connection and drops it */
  uv_tcp_nodelay(&c->tp.tcp, 1);
  f->conns[c->idx] = c;
  if (c->sc.read == READ_NOTHING) return;
  tp_read_start(&c->tp, falloc, fread_cb);
}

static void fake_start(uv_loop_t *loop, fake_t *f) {
  struct sockaddr_in a;
  uv_ip4_addr("127.0.0.1", 0, &a);
  uv_tcp_init(loop, &f->server);
  f->server.data = f;
  uv_tcp_bind(&f->server, (const struct sockaddr *)&a, 0);
  uv_listen((uv_stream_t *)&f->server, 64, on_fconn);
  struct sockaddr_storage ss;
  int len = sizeof ss;
  uv_tcp_getsockname(&f->server, (struct sockaddr *)&ss, &len);
  f->port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
}

/* 1 when connection idx exists and bytes wait unread in its socket: for a READ_NOTHING connection and a BIG
 * request, the pool's write has started and cannot finish (the socket buffers are smaller). */
static int fake_mid_write(fake_t *f, int idx) {
  uv_os_fd_t fd;
  int unread = 0;
  fconn_t *c = f->conns[idx];
  return c && uv_fileno((uv_handle_t *)&c->tp.tcp, &fd) == 0 && ioctl(fd, FIONREAD, &unread) == 0 && unread > 0;
}

static void fake_stop(fake_t *f) {
  for (int i = 0; i < MAX_CONNS; i++)
    if (f->conns[i]) fconn_end(f->conns[i], END_CLOSE);
  uv_close((uv_handle_t *)&f->server, NULL);
}

/* ---- the client side ---------------------------------------------------------------------------------- */

typedef struct req {
  struct run *run;
  uint8_t *body;
  struct iovec iov;
  int calls;             /* done callbacks: exactly one per accepted be_send */
  int status;
  uint32_t retry_after;
  char resp[64];
} req_t;

typedef struct run {
  uv_loop_t loop;
  fake_t fake;
  be_pool_t *pool;
  req_t reqs[MAX_REQS];
  int n_reqs, n_done;
  int sequential;        /* send request i+1 from request i's callback */
  uv_timer_t watchdog;
  int timed_out;
  be_stats_t stats;      /* the pool's, when the last request was done */
  char tls_error[256];   /* be_pool_last_tls_error then */
  int tls_cb_calls;      /* be_tls_error_cb calls */
  tls_fail_t tls_reason; /* ... the last one's reason */
  char tls_cb_error[256];
} run_t;

/* The TLS settings run() uses (all NULL: plaintext, as the tests before TLS). */
static struct {
  tls_ctx_t *server;     /* the fake's context */
  tls_ctx_t *client;     /* the pool's */
  const char *server_name;
  const char *prefix;    /* the pool's path prefix; the fake then expects prefix + "/v1/traces" */
} g_tls;

static void send_req(run_t *r, int i);

static void on_done(void *ud, int status, const uint8_t *body, size_t len, uint32_t retry_after) {
  req_t *q = ud;
  run_t *r = q->run;
  q->calls++;
  if (getenv("TB_DEBUG")) fprintf(stderr, "done %d status %d\n", (int)(q - r->reqs), status);
  q->status = status;
  q->retry_after = retry_after;
  snprintf(q->resp, sizeof q->resp, "%.*s", (int)len, body ? (const char *)body : "");
  /* The pool promised to be done with the bytes: scribble over them and free them now. */
  memset(q->body, 0xAA, q->iov.iov_len);
  free(q->body);
  q->body = NULL;
  r->n_done++;
  int i = (int)(q - r->reqs);
  if (r->sequential && i + 1 < r->n_reqs) send_req(r, i + 1);
  if (r->n_done == r->n_reqs && r->pool) {
    r->stats = *be_pool_stats(r->pool);
    snprintf(r->tls_error, sizeof r->tls_error, "%s", be_pool_last_tls_error(r->pool));
  }
  if (r->n_done == r->n_reqs) {
    uv_timer_stop(&r->watchdog);
    be_pool_destroy(r->pool);
    r->pool = NULL;
    fake_stop(&r->fake);
    uv_close((uv_handle_t *)&r->watchdog, NULL);
  }
}

static size_t req_size(int i, const size_t *sizes) { return sizes ? sizes[i] : 100; }

static const size_t *g_sizes;

static void send_req(run_t *r, int i) {
  req_t *q = &r->reqs[i];
  size_t n = req_size(i, g_sizes);
  q->run = r;
  q->body = malloc(n ? n : 1);
  for (size_t k = 0; k < n; k++) q->body[k] = pattern(k);
  q->iov.iov_base = q->body;
  q->iov.iov_len = n;
  int rc = be_send(r->pool, "/v1/traces", "application/x-protobuf", NULL, &q->iov, 1, on_done, q);
  CHECK_EQ_INT(rc, 0);
}

static void on_watchdog(uv_timer_t *t) {
  run_t *r = t->data;
  r->timed_out = 1;
  be_pool_destroy(r->pool); /* fails what is left: the callbacks finish the run */
  r->pool = NULL;
}

static void on_tls_error(void *ud, tls_fail_t reason, const char *error) {
  run_t *r = ud;
  r->tls_cb_calls++;
  r->tls_reason = reason;
  snprintf(r->tls_cb_error, sizeof r->tls_cb_error, "%s", error);
}

/* Runs n requests (sizes[i] bytes, or 100) against scripts; sequential: one after the other. With g_tls set,
 * over TLS and/or under a path prefix. */
static void run(run_t *r, const script_t *scripts, int n_scripts, int n, const size_t *sizes, int sequential,
                uint64_t request_timeout_ms) {
  static char path[128];
  memset(r, 0, sizeof *r);
  uv_loop_init(&r->loop);
  memcpy(r->fake.scripts, scripts, (size_t)n_scripts * sizeof *scripts);
  r->fake.n_scripts = n_scripts;
  r->fake.tls = g_tls.server;
  snprintf(path, sizeof path, "%s/v1/traces", g_tls.prefix ? g_tls.prefix : "");
  r->fake.path = path;
  fake_start(&r->loop, &r->fake);
  be_pool_config_t pc = {.host = "127.0.0.1", .port = r->fake.port, .max_connections = 1,
                         .request_timeout_ms = request_timeout_ms, .tls = g_tls.client,
                         .server_name = g_tls.server_name, .path_prefix = g_tls.prefix,
                         .on_tls_error = on_tls_error, .tls_error_ud = r};
  CHECK_EQ_INT(be_pool_create(&r->loop, &pc, &r->pool), 0);
  uv_timer_init(&r->loop, &r->watchdog);
  r->watchdog.data = r;
  uv_timer_start(&r->watchdog, on_watchdog, 20000, 0);
  r->n_reqs = n;
  r->sequential = sequential;
  g_sizes = sizes;
  if (sequential) send_req(r, 0);
  else
    for (int i = 0; i < n; i++) send_req(r, i);
  uv_run(&r->loop, UV_RUN_DEFAULT);
  CHECK_EQ_INT(r->timed_out, 0);
  for (int i = 0; i < n; i++) CHECK_EQ_INT(r->reqs[i].calls, 1);
  CHECK_EQ_INT(uv_loop_close(&r->loop), 0);
}

/* ---- tests -------------------------------------------------------------------------------------------- */

TEST(keepalive_reuses_one_connection) {
  run_t r;
  script_t s[] = {sc(READ_WHOLE, ok200, 0, END_STAY, 20)};
  run(&r, s, 1, 20, NULL, 1, 5000);
  for (int i = 0; i < 20; i++) CHECK_EQ_INT(r.reqs[i].status, 200);
  CHECK_EQ_INT(r.fake.accepted, 1);
  CHECK_EQ_INT(r.fake.good_requests, 20);
  CHECK_EQ_INT(r.fake.bad_requests, 0);
}

/* An answer after the request head, while megabytes of body are still unsent, with keep-alive: the
 * request gets the answer, the connection is not reused (its write is still libuv's), and the next
 * request goes out intact on a new connection. */
static void early_answer(const char *answer, int status, int end) {
  run_t r;
  size_t sizes[] = {BIG, 100, BIG, 100};
  script_t s[] = {
      sc(READ_HEAD, answer, 0, end, 1),
      sc(READ_WHOLE, ok200, 0, END_CLOSE, 1),
      sc(READ_HEAD, answer, 0, end, 1),
      sc(READ_WHOLE, ok200, 0, END_STAY, 1),
  };
  run(&r, s, 4, 4, sizes, 1, 10000);
  CHECK_EQ_INT(r.reqs[0].status, status);
  CHECK_EQ_INT(r.reqs[1].status, 200);
  CHECK_EQ_INT(r.reqs[2].status, status);
  CHECK_EQ_INT(r.reqs[3].status, 200);
  CHECK_EQ_INT(r.fake.accepted, 4);
  CHECK_EQ_INT(r.fake.good_requests, 2);
  CHECK_EQ_INT(r.fake.bad_requests, 0);
}

TEST(early_413_keepalive) {
  early_answer("HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\nConnection: keep-alive\r\n\r\n", 413,
               END_STAY);
}
TEST(early_429_keepalive) {
  early_answer("HTTP/1.1 429 Too Many Requests\r\nRetry-After: 3\r\nContent-Length: 2\r\n\r\nno", 429, END_STAY);
}
TEST(early_503_keepalive) {
  early_answer("HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n", 503, END_STAY);
}
TEST(early_401_then_close) {
  early_answer("HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", 401, END_CLOSE);
}

/* Early answers, all requests queued at once on one connection: each is answered once, in order. */
TEST(early_answers_back_to_back) {
  run_t r;
  size_t sizes[] = {BIG, BIG, BIG, BIG, 100};
  const char *a = "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n";
  script_t s[] = {sc(READ_HEAD, a, 0, END_STAY, 1),
                  sc(READ_HEAD, a, 0, END_STAY, 1),
                  sc(READ_HEAD, a, 0, END_STAY, 1),
                  sc(READ_HEAD, a, 0, END_STAY, 1)};
  run(&r, s, 4, 5, sizes, 0, 10000);
  for (int i = 0; i < 4; i++) CHECK_EQ_INT(r.reqs[i].status, 503);
  CHECK_EQ_INT(r.reqs[4].status, 200);
  CHECK_EQ_INT(r.fake.bad_requests, 0);
}

/* One answer to one request: what the done callback gets (status, Retry-After, the body kept). */
TEST(single_answers) {
  static const struct {
    const char *name, *answer;
    int end, status;
    uint32_t retry_after;
    const char *body;
  } cases[] = {
      {"retry-after seconds", "HTTP/1.1 429 Too Many\r\nRetry-After:  7\r\nContent-Length: 0\r\n\r\n", END_STAY, 429,
       7, ""},
      {"body passed on", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", END_STAY, 200, 0, "hello"},
      {"1xx then the final answer", "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n", END_STAY, 204, 0,
       ""},
      /* a response without a length ends with the connection: delivered, not mistaken for a reset */
      {"eof-delimited body", "HTTP/1.1 200 OK\r\n\r\nuntil-eof", END_CLOSE, 200, 0, "until-eof"},
      {"garbage is a protocol error", "SMTP ready\r\n\r\n", END_STAY, UV_EPROTO, 0, ""},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    run_t r;
    script_t s[] = {sc(READ_WHOLE, cases[i].answer, 0, cases[i].end, 1)};
    run(&r, s, 1, 1, NULL, 1, 5000);
    if (r.reqs[0].status != cases[i].status) fprintf(stderr, "case \"%s\"\n", cases[i].name);
    CHECK_EQ_INT(r.reqs[0].status, cases[i].status);
    CHECK_EQ_INT(r.reqs[0].retry_after, cases[i].retry_after);
    CHECK_EQ_STR(r.reqs[0].resp, cases[i].body);
  }
}

/* Cut at every byte of the answer: the request fails with a transport error exactly once (or, at the full
 * length, gets its answer); a later request on a new connection is unaffected. */
TEST(cut_at_every_byte_of_the_answer) {
  static const char full[] = "HTTP/1.1 200 OK\r\nContent-Length: 4\r\nX-A: b\r\n\r\nbody";
  size_t n = strlen(full);
  for (size_t k = 0; k <= n; k++) {
    for (int how = END_CLOSE; how <= END_RESET; how++) {
      run_t r;
      script_t s[] = {sc(READ_WHOLE, k ? full : NULL, k, how, 1), sc(READ_WHOLE, ok200, 0, END_STAY, 1)};
      run(&r, s, 2, 2, NULL, 1, 5000);
      if (k < n) {
        if (r.reqs[0].status >= 0) fprintf(stderr, "cut at %zu (%s): status %d\n", k, how == END_RESET ? "reset" : "close",
                                           r.reqs[0].status);
        CHECK(r.reqs[0].status < 0);
      } else {
        CHECK(r.reqs[0].status == 200 || r.reqs[0].status < 0);
      }
      CHECK_EQ_INT(r.reqs[1].status, 200);
      CHECK_EQ_INT(r.fake.bad_requests, 0);
    }
  }
}

/* Reset while the request is still being read (head only, or part of a big body): a transport error. */
TEST(reset_while_reading_the_request) {
  for (int read = READ_WHOLE; read <= READ_NOTHING; read++) {
    run_t r;
    size_t sizes[] = {BIG, 100};
    script_t s[] = {sc(read == READ_WHOLE ? READ_HEAD : read, NULL, 0, END_RESET, 1),
                    sc(READ_WHOLE, ok200, 0, END_STAY, 1)};
    if (read == READ_NOTHING) s[0].end = END_STAY; /* never reads, never answers: the timeout ends it */
    run(&r, s, 2, 2, sizes, 1, read == READ_NOTHING ? 300 : 5000);
    CHECK(r.reqs[0].status < 0);
    if (read == READ_NOTHING) CHECK_EQ_INT(r.reqs[0].status, UV_ETIMEDOUT);
    CHECK_EQ_INT(r.reqs[1].status, 200);
  }
}

/* A keep-alive connection the backend closed while idle: the next request is retried once on a fresh one. */
TEST(stale_keepalive_retried_once) {
  run_t r;
  /* connection 0 answers once and then resets the next request without a byte of answer */
  script_t s[] = {sc(READ_WHOLE, ok200, 0, END_STAY, 1), sc(READ_WHOLE, ok200, 0, END_STAY, 1)};
  s[0].reset_extra = 1;
  run(&r, s, 2, 2, NULL, 1, 5000);
  CHECK_EQ_INT(r.reqs[0].status, 200);
  CHECK_EQ_INT(r.reqs[1].status, 200);
  CHECK_EQ_INT(r.fake.accepted, 2);
  CHECK_EQ_INT(r.fake.good_requests, 2);
}

/* Bytes on an idle connection that nobody asked for: it is closed, and the next request uses a new one. */
TEST(unsolicited_bytes_close_the_connection) {
  run_t r;
  script_t s[] = {sc(READ_WHOLE, ok200, 0, END_STAY, 1),
                  sc(READ_WHOLE, ok200, 0, END_STAY, 1)};
  s[0].unsolicited = "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
  /* give the unsolicited answer time to arrive before the second request: a 50 ms pause */
  memset(&r, 0, sizeof r);
  uv_loop_init(&r.loop);
  memcpy(r.fake.scripts, s, sizeof s);
  r.fake.n_scripts = 2;
  fake_start(&r.loop, &r.fake);
  be_pool_config_t pc = {.host = "127.0.0.1", .port = r.fake.port, .max_connections = 1, .request_timeout_ms = 5000};
  CHECK_EQ_INT(be_pool_create(&r.loop, &pc, &r.pool), 0);
  uv_timer_init(&r.loop, &r.watchdog);
  r.watchdog.data = &r;
  uv_timer_start(&r.watchdog, on_watchdog, 20000, 0);
  r.n_reqs = 2;
  g_sizes = NULL;
  send_req(&r, 0);
  while (r.reqs[0].calls == 0) uv_run(&r.loop, UV_RUN_ONCE);
  while (r.fake.conns[0]) uv_run(&r.loop, UV_RUN_ONCE); /* the pool closes it on the stray bytes */
  send_req(&r, 1);
  uv_run(&r.loop, UV_RUN_DEFAULT);
  CHECK_EQ_INT(r.reqs[0].status, 200);
  CHECK_EQ_INT(r.reqs[1].status, 200);
  CHECK_EQ_INT(r.fake.accepted, 2);
  CHECK_EQ_INT(uv_loop_close(&r.loop), 0);
}

/* A backend that reads nothing: the big write never finishes, the timeout fails the request and closes. */
TEST(timeout_while_writing) {
  run_t r;
  size_t sizes[] = {BIG, 100};
  script_t s[] = {sc(READ_NOTHING, NULL, 0, END_STAY, 1), sc(READ_WHOLE, ok200, 0, END_STAY, 1)};
  run(&r, s, 2, 2, sizes, 1, 300);
  CHECK_EQ_INT(r.reqs[0].status, UV_ETIMEDOUT);
  CHECK_EQ_INT(r.reqs[1].status, 200);
}

/* Polled every millisecond (bounded by the watchdog): cancels once the big request is mid-write. */
static void cancel_mid_write_poll(uv_timer_t *t) {
  run_t *r = t->data;
  if (!fake_mid_write(&r->fake, 0)) return;
  uv_timer_stop(t);
  be_pool_cancel(r->pool);
}

/* Wakes the loop every millisecond while a test waits for something only the kernel sees (bytes queued). */
static void wake(uv_timer_t *t) {}

/* be_pool_cancel with one big request mid-write and more queued: each fails once with UV_ECANCELED and the
 * pool stays usable. */
TEST(cancel_mid_write) {
  run_t r;
  memset(&r, 0, sizeof r);
  uv_loop_init(&r.loop);
  r.fake.scripts[0] = sc(READ_NOTHING, NULL, 0, END_STAY, 1);
  r.fake.scripts[1] = sc(READ_WHOLE, ok200, 0, END_STAY, 5);
  r.fake.n_scripts = 2;
  fake_start(&r.loop, &r.fake);
  be_pool_config_t pc = {.host = "127.0.0.1", .port = r.fake.port, .max_connections = 1, .request_timeout_ms = 10000};
  CHECK_EQ_INT(be_pool_create(&r.loop, &pc, &r.pool), 0);
  uv_timer_init(&r.loop, &r.watchdog);
  r.watchdog.data = &r;
  uv_timer_start(&r.watchdog, on_watchdog, 20000, 0);
  size_t sizes[] = {BIG, 100, 100, 100};
  g_sizes = sizes;
  r.n_reqs = 4;
  for (int i = 0; i < 3; i++) send_req(&r, i);
  uv_timer_t t;
  uv_timer_init(&r.loop, &t);
  t.data = &r;
  uv_timer_start(&t, cancel_mid_write_poll, 1, 1);
  while (r.n_done < 3) uv_run(&r.loop, UV_RUN_ONCE);
  CHECK_EQ_INT(r.timed_out, 0); /* cancelled mid-write, not failed by the watchdog */
  uv_close((uv_handle_t *)&t, NULL);
  for (int i = 0; i < 3; i++) CHECK_EQ_INT(r.reqs[i].status, UV_ECANCELED);
  send_req(&r, 3);
  uv_run(&r.loop, UV_RUN_DEFAULT);
  CHECK_EQ_INT(r.reqs[3].status, 200);
  for (int i = 0; i < 4; i++) CHECK_EQ_INT(r.reqs[i].calls, 1);
  CHECK_EQ_INT(uv_loop_close(&r.loop), 0);
}

/* Destroying the pool while a big write is in flight: the callback runs once and nothing leaks. */
TEST(destroy_mid_write) {
  run_t r;
  memset(&r, 0, sizeof r);
  uv_loop_init(&r.loop);
  r.fake.scripts[0] = sc(READ_NOTHING, NULL, 0, END_STAY, 1);
  r.fake.n_scripts = 1;
  fake_start(&r.loop, &r.fake);
  be_pool_config_t pc = {.host = "127.0.0.1", .port = r.fake.port, .max_connections = 1, .request_timeout_ms = 10000};
  CHECK_EQ_INT(be_pool_create(&r.loop, &pc, &r.pool), 0);
  uv_timer_init(&r.loop, &r.watchdog);
  r.watchdog.data = &r;
  size_t sizes[] = {BIG};
  g_sizes = sizes;
  r.n_reqs = 2; /* never reached: the run is ended by hand */
  send_req(&r, 0);
  uv_timer_t t;
  uv_timer_init(&r.loop, &t);
  uv_timer_start(&t, wake, 1, 1);
  for (int i = 0; i < 20000 && !fake_mid_write(&r.fake, 0); i++) uv_run(&r.loop, UV_RUN_ONCE); /* 20 s bound */
  CHECK(fake_mid_write(&r.fake, 0));
  uv_close((uv_handle_t *)&t, NULL);
  be_pool_destroy(r.pool);
  r.pool = NULL;
  CHECK_EQ_INT(r.reqs[0].calls, 1);
  CHECK_EQ_INT(r.reqs[0].status, UV_ECANCELED);
  fake_stop(&r.fake);
  uv_close((uv_handle_t *)&r.watchdog, NULL);
  uv_run(&r.loop, UV_RUN_DEFAULT);
  CHECK_EQ_INT(uv_loop_close(&r.loop), 0);
}

/* Nothing listening: connection refused, reported once per request. */
TEST(connection_refused) {
  uv_loop_t loop;
  uv_loop_init(&loop);
  uv_tcp_t t;
  struct sockaddr_in a;
  uv_ip4_addr("127.0.0.1", 0, &a);
  uv_tcp_init(&loop, &t);
  uv_tcp_bind(&t, (const struct sockaddr *)&a, 0);
  struct sockaddr_storage ss;
  int len = sizeof ss;
  uv_tcp_getsockname(&t, (struct sockaddr *)&ss, &len);
  uint16_t port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
  uv_close((uv_handle_t *)&t, NULL); /* bound, never listening: refused */
  uv_run(&loop, UV_RUN_DEFAULT);
  run_t r;
  memset(&r, 0, sizeof r);
  be_pool_t *p;
  be_pool_config_t pc = {.host = "127.0.0.1", .port = port, .max_connections = 2, .request_timeout_ms = 5000};
  CHECK_EQ_INT(be_pool_create(&loop, &pc, &p), 0);
  r.pool = p;
  r.n_reqs = 100; /* the run is ended by hand */
  g_sizes = NULL;
  for (int i = 0; i < 3; i++) {
    req_t *q = &r.reqs[i];
    q->run = &r;
    q->body = malloc(10);
    memset(q->body, 1, 10);
    q->iov = (struct iovec){q->body, 10};
    CHECK_EQ_INT(be_send(p, "/v1/traces", "application/x-protobuf", NULL, &q->iov, 1, on_done, q), 0);
  }
  while (r.n_done < 3) uv_run(&loop, UV_RUN_ONCE);
  for (int i = 0; i < 3; i++) CHECK_EQ_INT(r.reqs[i].status, UV_ECONNREFUSED);
  be_pool_destroy(p);
  uv_run(&loop, UV_RUN_DEFAULT);
  CHECK_EQ_INT(uv_loop_close(&loop), 0);
}

/* ---- TLS ---------------------------------------------------------------------------------------------- */

static test_certs_t g_tc; /* the setup's test certificates and contexts (tests/unit/test_certs.h) */

static void tls_on(tls_ctx_t *client, const char *server_name, const char *prefix) {
  g_tls.server = g_tc.server;
  g_tls.client = client;
  g_tls.server_name = server_name;
  g_tls.prefix = prefix;
}

static void tls_off(void) { memset(&g_tls, 0, sizeof g_tls); }

static int have_tls(void) {
  CHECK(g_tc.server && g_tc.ca && g_tc.other); /* the setup could make its certificates */
  return g_tc.server && g_tc.ca && g_tc.other;
}

/* Over TLS (the name verified, or the IP literal) and under a path prefix: every request delivered on one
 * keep-alive connection, to prefix + path; the same prefix over plaintext. */
TEST(tls_requests_under_a_prefix) {
  if (!have_tls()) return;
  run_t r;
  script_t s[] = {sc(READ_WHOLE, ok200, 0, END_STAY, 5)};
  tls_on(g_tc.ca, "localhost", "/otlp");
  run(&r, s, 1, 5, NULL, 1, 5000);
  for (int i = 0; i < 5; i++) CHECK_EQ_INT(r.reqs[i].status, 200);
  CHECK_EQ_INT(r.fake.accepted, 1);
  CHECK_EQ_INT(r.fake.good_requests, 5);
  CHECK_EQ_INT(r.fake.bad_requests, 0);
  CHECK_EQ_INT((int)r.stats.tls_handshakes, 1);
  CHECK_EQ_INT((int)r.stats.tls_failures, 0);
  CHECK_EQ_INT(r.tls_cb_calls, 0);
  CHECK_EQ_STR(r.tls_error, "");

  tls_on(g_tc.ca, NULL, "/a/b"); /* no server_name: the host, an IP literal, is verified as an IP */
  run(&r, s, 1, 2, NULL, 1, 5000);
  for (int i = 0; i < 2; i++) CHECK_EQ_INT(r.reqs[i].status, 200);
  CHECK_EQ_INT(r.fake.good_requests, 2);
  CHECK_EQ_INT(r.fake.bad_requests, 0);

  tls_off();
  g_tls.prefix = "/otlp";
  run(&r, s, 1, 2, NULL, 1, 5000);
  for (int i = 0; i < 2; i++) CHECK_EQ_INT(r.reqs[i].status, 200);
  CHECK_EQ_INT(r.fake.good_requests, 2);
  CHECK_EQ_INT(r.fake.bad_requests, 0);
  CHECK_EQ_INT((int)r.stats.tls_handshakes, 0);
  tls_off();
}

/* A certificate that does not verify (another CA; the wrong name): each request fails with UV_EPROTO, the owner
 * hears why before, and no request reaches the backend. */
TEST(tls_verify_failures_fail_with_the_reason) {
  if (!have_tls()) return;
  static const struct {
    tls_ctx_t **client;
    const char *name, *want;
  } cases[] = {
      {&g_tc.other, "localhost", "certificate verify failed: unable to get local issuer certificate"},
      {&g_tc.ca, "collector.example", "certificate verify failed: hostname mismatch"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    run_t r;
    script_t s[] = {sc(READ_WHOLE, ok200, 0, END_STAY, 1)};
    tls_on(*cases[i].client, cases[i].name, NULL);
    run(&r, s, 1, 2, NULL, 1, 5000);
    CHECK_EQ_INT(r.reqs[0].status, UV_EPROTO);
    CHECK_EQ_INT(r.reqs[1].status, UV_EPROTO);
    CHECK_EQ_INT(r.fake.good_requests + r.fake.bad_requests, 0);
    CHECK_EQ_INT(r.tls_cb_calls, 2);
    CHECK_EQ_INT(r.tls_reason, TLS_FAIL_CERTIFICATE);
    CHECK_EQ_STR(r.tls_cb_error, cases[i].want);
    CHECK_EQ_STR(r.tls_error, cases[i].want);
    CHECK_EQ_INT((int)r.stats.tls_failures, 2);
    CHECK_EQ_INT((int)r.stats.tls_handshakes, 0);
  }
  tls_off();
}

/* A backend that resets the connection on the client's hello: UV_EPROTO, classified as a reset. */
TEST(tls_reset_mid_handshake) {
  if (!have_tls()) return;
  run_t r;
  script_t s[] = {sc(READ_WHOLE, ok200, 0, END_STAY, 1)};
  s[0].reset_on_bytes = 1;
  tls_on(g_tc.ca, "localhost", NULL);
  g_tls.server = NULL; /* a plain fake: it sees the ClientHello as bytes, and resets */
  run(&r, s, 1, 1, NULL, 1, 5000);
  tls_off();
  CHECK_EQ_INT(r.reqs[0].status, UV_EPROTO);
  CHECK_EQ_INT(r.tls_cb_calls, 1);
  CHECK_EQ_INT(r.tls_reason, TLS_FAIL_RESET);
  CHECK_CONTAINS(r.tls_error, "during handshake");
}

/* Keep-alive over TLS, and a reconnect (the backend closed after two answers) resumes the session. */
TEST(tls_keepalive_then_resumption) {
  if (!have_tls()) return;
  run_t r;
  script_t s[] = {sc(READ_WHOLE, ok200, 0, END_CLOSE, 2), sc(READ_WHOLE, ok200, 0, END_STAY, 10)};
  tls_on(g_tc.ca, "localhost", "/otlp");
  run(&r, s, 2, 5, NULL, 1, 5000);
  tls_off();
  for (int i = 0; i < 5; i++) CHECK_EQ_INT(r.reqs[i].status, 200);
  CHECK_EQ_INT(r.fake.accepted, 2);
  CHECK_EQ_INT(r.fake.good_requests, 5);
  CHECK_EQ_INT(r.fake.bad_requests, 0);
  CHECK_EQ_INT((int)r.stats.tls_handshakes, 2);
  CHECK_EQ_INT((int)r.stats.tls_resumed, 1);
  CHECK_EQ_INT(r.fake.resumed, 1);
}

/* Early answers over TLS with 8 MiB bodies: the same reuse rules (PATTERNS.md 1) as over plaintext. */
TEST(tls_early_answers) {
  if (!have_tls()) return;
  tls_on(g_tc.ca, "localhost", "/otlp");
  early_answer("HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\nConnection: keep-alive\r\n\r\n", 413,
               END_STAY);
  early_answer("HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", 401, END_CLOSE);
  tls_off();
}

/* ---- head bytes and deadlines, against a raw capture server ----------------------------------------------- */

#define CAP_HEADS 64

/* Reads requests as bytes: each head is kept as it arrived, each body checked against the pattern. The first
 * hold_conns connections read but never answer (a backend that hangs); the others answer ok200. */
typedef struct cap_srv {
  uv_tcp_t server;
  uint16_t port;
  int hold_conns;
  int accepted;
  int n_heads;                 /* request heads seen */
  char heads[CAP_HEADS][1024]; /* ... the first CAP_HEADS, NUL-terminated */
  size_t body_len[CAP_HEADS];  /* Content-Length of each */
  int body_ok[CAP_HEADS];      /* its body arrived whole, the pattern */
  struct cap_conn *conns[MAX_CONNS];
} cap_srv_t;

typedef struct cap_conn {
  uv_tcp_t tcp;
  cap_srv_t *s;
  int idx, hold, closing;
  char *buf;
  size_t len, cap;
} cap_conn_t;

static void cap_conn_closed(uv_handle_t *h) {
  cap_conn_t *c = h->data;
  free(c->buf);
  free(c);
}

static void cap_conn_end(cap_conn_t *c) {
  if (c->closing) return;
  c->closing = 1;
  c->s->conns[c->idx] = NULL;
  uv_close((uv_handle_t *)&c->tcp, cap_conn_closed);
}

static void cap_wrote(uv_write_t *w, int status) { free(w); }

static void cap_feed(cap_conn_t *c) {
  for (;;) {
    char *end = c->len >= 4 ? memmem(c->buf, c->len, "\r\n\r\n", 4) : NULL;
    if (!end) return;
    size_t head = (size_t)(end - c->buf) + 4;
    char *cl = memmem(c->buf, head, "\r\nContent-Length: ", 18);
    size_t need = cl ? strtoul(cl + 18, NULL, 10) : 0;
    if (c->len < head + need) return;
    cap_srv_t *s = c->s;
    if (s->n_heads < CAP_HEADS) {
      int i = s->n_heads;
      snprintf(s->heads[i], sizeof s->heads[i], "%.*s", (int)head, c->buf);
      s->body_len[i] = need;
      s->body_ok[i] = 1;
      for (size_t k = 0; k < need; k++) s->body_ok[i] &= (uint8_t)c->buf[head + k] == pattern(k);
    }
    s->n_heads++;
    memmove(c->buf, c->buf + head + need, c->len - head - need);
    c->len -= head + need;
    if (!c->hold) {
      uv_write_t *w = malloc(sizeof *w);
      uv_buf_t b = uv_buf_init((char *)ok200, (unsigned)strlen(ok200));
      if (uv_write(w, (uv_stream_t *)&c->tcp, &b, 1, cap_wrote) != 0) free(w);
    }
  }
}

static void cap_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *b) {
  cap_conn_t *c = h->data;
  if (c->cap - c->len < 65536) {
    c->cap = c->cap * 2 + 65536;
    c->buf = realloc(c->buf, c->cap);
  }
  *b = uv_buf_init(c->buf + c->len, (unsigned)(c->cap - c->len));
}

static void cap_read(uv_stream_t *st, ssize_t n, const uv_buf_t *b) {
  cap_conn_t *c = st->data;
  if (n < 0) {
    cap_conn_end(c);
    return;
  }
  c->len += (size_t)n;
  cap_feed(c);
}

static void on_cap_conn(uv_stream_t *server, int status) {
  cap_srv_t *s = server->data;
  if (status < 0) return;
  cap_conn_t *c = calloc(1, sizeof *c);
  c->s = s;
  c->idx = s->accepted < MAX_CONNS ? s->accepted : MAX_CONNS - 1;
  c->hold = s->accepted < s->hold_conns;
  s->accepted++;
  uv_tcp_init(server->loop, &c->tcp);
  c->tcp.data = c;
  if (uv_accept(server, (uv_stream_t *)&c->tcp) != 0) {
    uv_close((uv_handle_t *)&c->tcp, cap_conn_closed);
    return;
  }
  s->conns[c->idx] = c;
  uv_read_start((uv_stream_t *)&c->tcp, cap_alloc, cap_read);
}

/* Listens on ip (port 0: any); 0, or the bind error (no IPv6 here). */
static int cap_start(uv_loop_t *loop, cap_srv_t *s, const char *ip) {
  struct sockaddr_storage a;
  int rc = strchr(ip, ':') ? uv_ip6_addr(ip, 0, (struct sockaddr_in6 *)&a) : uv_ip4_addr(ip, 0, (struct sockaddr_in *)&a);
  uv_tcp_init(loop, &s->server);
  s->server.data = s;
  if (rc == 0) rc = uv_tcp_bind(&s->server, (const struct sockaddr *)&a, 0);
  if (rc == 0) rc = uv_listen((uv_stream_t *)&s->server, 64, on_cap_conn);
  struct sockaddr_storage ss;
  int len = sizeof ss;
  if (rc == 0) rc = uv_tcp_getsockname(&s->server, (struct sockaddr *)&ss, &len);
  if (rc == 0)
    s->port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                             : ((struct sockaddr_in *)&ss)->sin_port);
  if (rc != 0) uv_close((uv_handle_t *)&s->server, NULL);
  return rc;
}

static void cap_stop(cap_srv_t *s) {
  for (int i = 0; i < MAX_CONNS; i++)
    if (s->conns[i]) cap_conn_end(s->conns[i]);
  uv_close((uv_handle_t *)&s->server, NULL);
}

typedef struct dl_run dl_run_t;

typedef struct dl_req {
  dl_run_t *t;
  uint8_t *body;
  struct iovec iov[20];
  size_t n_iov, len;
  int calls, status;
  int order;             /* position among the completions, from 0 */
  uint64_t sent_at, done_at; /* uv_now */
} dl_req_t;

struct dl_run {
  uv_loop_t loop;
  cap_srv_t srv;
  be_pool_t *pool;
  dl_req_t reqs[MAX_REQS];
  int n_sent, n_done;
  uv_timer_t watchdog;
  int timed_out;
};

static void dl_done(void *ud, int status, const uint8_t *body, size_t len, uint32_t retry_after) {
  dl_req_t *q = ud;
  q->calls++;
  q->status = status;
  q->order = q->t->n_done++;
  q->done_at = uv_now(&q->t->loop);
  if (q->body) memset(q->body, 0xAA, q->len);
  free(q->body);
  q->body = NULL;
}

static void dl_watchdog(uv_timer_t *t) {
  dl_run_t *r = t->data;
  r->timed_out = 1;
  be_pool_cancel(r->pool);
}

/* A pool to the capture server on ip (hold_conns connections hang); 0, or the server's bind error. */
static int dl_start(dl_run_t *r, const char *ip, const char *host, int hold_conns, uint32_t max_conns,
                    uint64_t timeout_ms, const char *prefix, const cfg_header_t *headers, size_t n_headers) {
  memset(r, 0, sizeof *r);
  uv_loop_init(&r->loop);
  r->srv.hold_conns = hold_conns;
  int rc = cap_start(&r->loop, &r->srv, ip);
  if (rc != 0) {
    uv_run(&r->loop, UV_RUN_DEFAULT);
    CHECK_EQ_INT(uv_loop_close(&r->loop), 0);
    return rc;
  }
  be_pool_config_t pc = {.host = host, .port = r->srv.port, .max_connections = max_conns,
                         .request_timeout_ms = timeout_ms, .path_prefix = prefix, .headers = headers,
                         .n_headers = n_headers};
  CHECK_EQ_INT(be_pool_create(&r->loop, &pc, &r->pool), 0);
  uv_timer_init(&r->loop, &r->watchdog);
  r->watchdog.data = r;
  uv_timer_start(&r->watchdog, dl_watchdog, 20000, 0);
  uv_unref((uv_handle_t *)&r->watchdog); /* the pool's own handles keep the loop going, not the watchdog */
  return 0;
}

/* Sends request i: len pattern bytes in n_iov pieces (the last takes the rest). */
static void dl_send(dl_run_t *r, int i, size_t len, size_t n_iov, const char *ctype, const char *encoding) {
  dl_req_t *q = &r->reqs[i];
  q->t = r;
  q->len = len;
  q->body = malloc(len ? len : 1);
  for (size_t k = 0; k < len; k++) q->body[k] = pattern(k);
  size_t piece = len / n_iov, off = 0;
  for (size_t k = 0; k < n_iov; k++) {
    size_t n = k + 1 == n_iov ? len - off : piece;
    q->iov[k] = (struct iovec){q->body + off, n};
    off += n;
  }
  q->n_iov = n_iov;
  q->sent_at = uv_now(&r->loop);
  CHECK_EQ_INT(be_send(r->pool, "/v1/traces", ctype, encoding, q->iov, n_iov, dl_done, q), 0);
  r->n_sent++;
}

/* Runs until n requests are done (bounded by the watchdog). */
static void dl_wait(dl_run_t *r, int n) {
  while (r->n_done < n && !r->timed_out) uv_run(&r->loop, UV_RUN_ONCE);
  CHECK_EQ_INT(r->timed_out, 0);
}

static void count_active_timers(uv_handle_t *h, void *arg) {
  if (h->type == UV_TIMER && uv_is_active(h)) ++*(int *)arg;
}

/* The number of running timers on the loop besides the watchdog. */
static int dl_active_timers(dl_run_t *r) {
  int n = 0;
  uv_walk(&r->loop, count_active_timers, &n);
  return n - uv_is_active((uv_handle_t *)&r->watchdog);
}

static void dl_finish(dl_run_t *r) {
  uv_timer_stop(&r->watchdog);
  uv_close((uv_handle_t *)&r->watchdog, NULL);
  be_pool_destroy(r->pool);
  r->pool = NULL;
  cap_stop(&r->srv);
  uv_run(&r->loop, UV_RUN_DEFAULT);
  for (int i = 0; i < r->n_sent; i++) CHECK_EQ_INT(r->reqs[i].calls, 1);
  CHECK_EQ_INT(uv_loop_close(&r->loop), 0);
}

/* The head as documented (backend.h's format, built here with snprintf, independently of the pool's code). */
static void expected_head(char *out, size_t cap, const char *prefix, const char *host_header, const char *ctype,
                          const char *encoding, size_t len, const cfg_header_t *headers, size_t n_headers) {
  char extra[512] = "", enc[128] = "";
  for (size_t i = 0; i < n_headers; i++)
    snprintf(extra + strlen(extra), sizeof extra - strlen(extra), "%s: %s\r\n", headers[i].name, headers[i].value);
  if (encoding) snprintf(enc, sizeof enc, "Content-Encoding: %s\r\n", encoding);
  snprintf(out, cap,
           "POST %s%s HTTP/1.1\r\nHost: %s\r\nUser-Agent: otlp-gateway/%s\r\nContent-Type: %s\r\n"
           "%sContent-Length: %zu\r\n%s\r\n",
           prefix, "/v1/traces", host_header, OTLPGW_VERSION, ctype, enc, len, extra);
}

/* What the backend receives, byte for byte: request line, Host, User-Agent, Content-Type, Content-Encoding when
 * given, Content-Length over every iovec (none, one, more than eight), the extra headers, in that order; bodies
 * whole and in order. After be_pool_update (new prefix and headers) a request sent before keeps its head and the
 * next one has the new one. */
TEST(request_heads_byte_for_byte) {
  cfg_header_t hdrs[] = {{"Authorization", "Bearer abc"}, {"X-Scope-OrgID", "tenant-1"}};
  cfg_header_t hdrs2[] = {{"X-Other", "v"}};
  static const struct {
    size_t len, n_iov;
    const char *ctype, *encoding;
  } sends[] = {
      {100, 1, "application/x-protobuf", NULL},
      {0, 1, "application/json", NULL},
      {1234567, 3, "application/x-protobuf", "gzip"},
      {1000, 20, "application/x-protobuf", "deflate"},
  };
  size_t n_sends = sizeof sends / sizeof sends[0];
  for (int variant = 0; variant < 3; variant++) {
    /* 0: no prefix, no headers; 1: a prefix and two headers; 2: the same over IPv6 (skipped where there is none) */
    const char *ip = variant == 2 ? "::1" : "127.0.0.1";
    const char *prefix = variant ? "/otlp/x" : NULL;
    dl_run_t r;
    int rc = dl_start(&r, ip, ip, 0, 1, 5000, prefix, variant ? hdrs : NULL, variant ? 2 : 0);
    if (rc != 0) {
      CHECK_EQ_INT(variant, 2);
      fprintf(stderr, "  no IPv6 loopback (%s): the [::1] case is skipped\n", uv_err_name(rc));
      continue;
    }
    char host_header[64];
    snprintf(host_header, sizeof host_header, variant == 2 ? "[%s]:%u" : "%s:%u", ip, r.srv.port);
    for (size_t i = 0; i < n_sends; i++) dl_send(&r, (int)i, sends[i].len, sends[i].n_iov, sends[i].ctype,
                                                 sends[i].encoding);
    /* sent before the update: they keep what they were built with */
    be_pool_config_t pc = {.host = ip, .port = r.srv.port, .max_connections = 1, .request_timeout_ms = 5000,
                           .path_prefix = "/p2", .headers = hdrs2, .n_headers = 1};
    CHECK_EQ_INT(be_pool_update(r.pool, &pc), 0);
    dl_send(&r, (int)n_sends, 10, 1, "application/x-protobuf", NULL);
    dl_wait(&r, (int)n_sends + 1);
    CHECK_EQ_INT(r.srv.n_heads, (int)n_sends + 1);
    for (size_t i = 0; i < n_sends; i++) {
      char want[1024];
      expected_head(want, sizeof want, prefix ? prefix : "", host_header, sends[i].ctype, sends[i].encoding,
                    sends[i].len, variant ? hdrs : NULL, variant ? 2 : 0);
      CHECK_EQ_STR(r.srv.heads[i], want);
      CHECK_EQ_INT(r.srv.body_len[i], sends[i].len);
      CHECK_EQ_INT(r.srv.body_ok[i], 1);
      CHECK_EQ_INT(r.reqs[i].status, 200);
    }
    char want[1024];
    expected_head(want, sizeof want, "/p2", host_header, "application/x-protobuf", NULL, 10, hdrs2, 1);
    CHECK_EQ_STR(r.srv.heads[n_sends], want);
    CHECK_EQ_INT(r.reqs[n_sends].status, 200);
    dl_finish(&r);
  }
}

/* One request on a connection that hangs and one queued behind it (max_connections 1): both fail with
 * UV_ETIMEDOUT, not before request_timeout from be_send; the queued one never reached the backend. With nothing in
 * flight the pool runs no timer (the loop is free to end). */
TEST(timeout_on_a_connection_and_in_the_queue) {
  dl_run_t r;
  CHECK_EQ_INT(dl_start(&r, "127.0.0.1", "127.0.0.1", 1, 1, 200, NULL, NULL, 0), 0);
  dl_send(&r, 0, 100, 1, "application/x-protobuf", NULL);
  dl_send(&r, 1, 100, 1, "application/x-protobuf", NULL);
  CHECK(dl_active_timers(&r) >= 1);
  dl_wait(&r, 2);
  for (int i = 0; i < 2; i++) {
    CHECK_EQ_INT(r.reqs[i].status, UV_ETIMEDOUT);
    CHECK(r.reqs[i].done_at - r.reqs[i].sent_at >= 200);
  }
  CHECK_EQ_INT(r.reqs[0].order, 0);
  CHECK_EQ_INT(r.srv.n_heads, 1);
  CHECK_EQ_INT(dl_active_timers(&r), 0);
  /* the pool goes on: the next connection answers */
  dl_send(&r, 2, 100, 1, "application/x-protobuf", NULL);
  dl_wait(&r, 3);
  CHECK_EQ_INT(r.reqs[2].status, 200);
  CHECK_EQ_INT(dl_active_timers(&r), 0);
  dl_finish(&r);
}

/* be_pool_update lowers the timeout: a request sent after it times out first, by its own (shorter) deadline, while
 * the one before keeps its longer one. Then raised: the one sent before keeps its shorter deadline. */
TEST(timeout_changed_by_update_applies_to_later_requests) {
  for (int lower = 1; lower >= 0; lower--) {
    uint64_t first = lower ? 600 : 100, second = lower ? 100 : 600;
    dl_run_t r;
    /* two connections that hang: each request is on one, nothing is queued */
    CHECK_EQ_INT(dl_start(&r, "127.0.0.1", "127.0.0.1", 4, 2, first, NULL, NULL, 0), 0);
    dl_send(&r, 0, 100, 1, "application/x-protobuf", NULL);
    be_pool_config_t pc = {.host = "127.0.0.1", .port = r.srv.port, .max_connections = 2,
                           .request_timeout_ms = second};
    CHECK_EQ_INT(be_pool_update(r.pool, &pc), 0);
    dl_send(&r, 1, 100, 1, "application/x-protobuf", NULL);
    /* and queued behind them, after a third update back to the first value (that class again) */
    pc.request_timeout_ms = first;
    CHECK_EQ_INT(be_pool_update(r.pool, &pc), 0);
    dl_send(&r, 2, 100, 1, "application/x-protobuf", NULL);
    dl_wait(&r, 3);
    for (int i = 0; i < 3; i++) CHECK_EQ_INT(r.reqs[i].status, UV_ETIMEDOUT);
    CHECK(r.reqs[0].done_at - r.reqs[0].sent_at >= first);
    CHECK(r.reqs[1].done_at - r.reqs[1].sent_at >= second);
    CHECK(r.reqs[2].done_at - r.reqs[2].sent_at >= first);
    if (lower) {
      CHECK_EQ_INT(r.reqs[1].order, 0); /* 100 ms after be_send, before the first one's 600 */
    } else {
      CHECK_EQ_INT(r.reqs[0].order, 0);
      CHECK_EQ_INT(r.reqs[1].order, 2);
    }
    CHECK_EQ_INT(dl_active_timers(&r), 0);
    dl_finish(&r);
  }
}

/* Many requests sent in one loop turn (one deadline), on hanging connections and queued: each fails once with
 * UV_ETIMEDOUT, and the pool carries the next one. */
TEST(many_requests_with_one_deadline) {
  dl_run_t r;
  CHECK_EQ_INT(dl_start(&r, "127.0.0.1", "127.0.0.1", 3, 3, 150, NULL, NULL, 0), 0);
  int n = MAX_REQS - 1;
  for (int i = 0; i < n; i++) dl_send(&r, i, 50, 1, "application/x-protobuf", NULL);
  dl_wait(&r, n);
  for (int i = 0; i < n; i++) {
    CHECK_EQ_INT(r.reqs[i].status, UV_ETIMEDOUT);
    CHECK(r.reqs[i].done_at - r.reqs[i].sent_at >= 150);
  }
  CHECK_EQ_INT(r.srv.n_heads, 3); /* one on each hanging connection; the rest timed out queued */
  CHECK_EQ_INT(dl_active_timers(&r), 0);
  dl_send(&r, n, 50, 1, "application/x-protobuf", NULL);
  dl_wait(&r, n + 1);
  CHECK_EQ_INT(r.reqs[n].status, 200);
  dl_finish(&r);
}

static void setup(void) {
  signal(SIGPIPE, SIG_IGN); /* as the gateway does (main.c) */
  test_certs_make(&g_tc, "backend");
}

static void teardown(void) { test_certs_dispose(&g_tc); }

TEST_MAIN_WITH(setup, teardown)
