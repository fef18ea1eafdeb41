/*
 * gateway/transport: TLS and plain tp_t pairs over loopback TCP on one loop, client and server in this process.
 *
 * setup() makes the certificates with the openssl CLI in a temp dir: a CA, a server certificate for
 * DNS:localhost + IP:127.0.0.1, an expired one, a server and a client certificate from another CA, a client
 * certificate from the CA. Each connection runs its own loop until the test's condition holds, bounded by a
 * deadline timer that fails the test (no sleeps, no timing assertions), and must end with uv_loop_close() == 0.
 */
#include <unistd.h>

#include "gateway/transport.h"
#include "test.h"

static char dir[256];

static const char *path(const char *name) {
  static char bufs[64][512];
  static int i;
  char *b = bufs[i++ % 64];
  snprintf(b, 512, "%s/%s", dir, name);
  return b;
}

/* ---- peers ------------------------------------------------------------------------------------------------- */

typedef struct peer {
  tp_t tp;
  struct pair *pair;
  int is_server;
  /* behaviour */
  size_t alloc_size;   /* 0 = suggested size */
  int echo;            /* write back every chunk read */
  int stop_each;       /* tp_read_stop after each chunk; the run loop restarts reading (outside any callback) */
  int inline_restart;  /* tp_read_stop + tp_read_start inside read_cb, every chunk */
  int close_on_data;   /* tp_close from inside the first read_cb with data */
  int reset_on_data;   /* plain peer: RST on the first data */
  int close_on_error;  /* tp_close on a read error or EOF */
  /* observed */
  char *rx;
  size_t rx_len, rx_cap;
  int paused;
  int eof, err;
  char errtxt[256];
  tls_fail_t reason;
  int hs_at_err;
  int reads_after_close;
  int closing, closed;
  int writes, writes_done, write_err, bad_handle;
  char events[64]; /* W write ok, P write UV_EPROTO, C write UV_ECANCELED, X close cb, E eof, R read error */
} peer_t;

typedef struct pair {
  uv_loop_t loop;
  uv_tcp_t listener;
  uv_connect_t conn;
  uv_timer_t deadline;
  peer_t c, s;
  tls_ctx_t *sctx, *cctx;
  const char *server_name;
  tls_session_cache_t *cache;
  void (*on_ready)(struct pair *); /* client connected and started: initial writes */
  void (*on_accept)(struct pair *); /* server accepted and started */
  int accepted, connected, timed_out;
} pair_t;

static void event(peer_t *p, char e) {
  size_t n = strlen(p->events);
  if (n + 1 < sizeof p->events) p->events[n] = e;
}

static void on_closed(uv_handle_t *h) {
  peer_t *p = h->data;
  p->closed = 1;
  event(p, 'X');
}

static void peer_close(peer_t *p) {
  if (p->closing) return;
  p->closing = 1;
  tp_close(&p->tp, on_closed);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  peer_t *p = h->data;
  size_t want = p->alloc_size ? p->alloc_size : suggested;
  if (p->rx_cap - p->rx_len < want) {
    size_t ncap = p->rx_cap ? p->rx_cap : 65536;
    while (ncap - p->rx_len < want) ncap *= 2;
    p->rx = realloc(p->rx, ncap);
    p->rx_cap = ncap;
  }
  *buf = uv_buf_init(p->rx + p->rx_len, (unsigned)want);
}

typedef struct wr {
  uv_write_t req;
  peer_t *p;
} wr_t;

static void on_write(uv_write_t *r, int status) {
  wr_t *w = (wr_t *)r;
  peer_t *p = w->p;
  p->writes_done++;
  if (r->handle != (uv_stream_t *)&p->tp.tcp) p->bad_handle++;
  if (status) p->write_err = status;
  event(p, status == 0 ? 'W' : status == UV_EPROTO ? 'P' : status == UV_ECANCELED ? 'C' : '?');
  free(w);
}

/* Writes len bytes from a copy freed at once: tp_write must not keep the caller's buffer. */
static int peer_write(peer_t *p, const void *data, size_t len) {
  wr_t *w = calloc(1, sizeof *w);
  char *copy = malloc(len ? len : 1);
  memcpy(copy, data, len);
  w->p = p;
  uv_buf_t b = uv_buf_init(copy, (unsigned)len);
  int rc = tp_write(&w->req, &p->tp, &b, 1, on_write);
  memset(copy, 0xEE, len);
  free(copy);
  if (rc) free(w);
  else p->writes++;
  return rc;
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
  peer_t *p = s->data;
  if (p->closing) {
    p->reads_after_close++;
    return;
  }
  if (nread > 0) {
    CHECK(buf->base == p->rx + p->rx_len); /* decrypted into the buffer alloc_cb gave */
    char *chunk = p->rx + p->rx_len;
    p->rx_len += (size_t)nread;
    if (p->echo) CHECK_EQ_INT(peer_write(p, chunk, (size_t)nread), 0);
    if (p->close_on_data) {
      peer_close(p);
      return;
    }
    if (p->reset_on_data) {
      p->closing = 1;
      uv_tcp_close_reset(&p->tp.tcp, on_closed);
      return;
    }
    if (p->inline_restart) {
      tp_read_stop(&p->tp);
      CHECK_EQ_INT(tp_read_start(&p->tp, on_alloc, on_read), 0);
    } else if (p->stop_each) {
      tp_read_stop(&p->tp);
      p->paused = 1;
    }
    return;
  }
  if (nread == 0) return;
  if (nread == UV_EOF) {
    p->eof++;
    event(p, 'E');
  } else {
    p->err = (int)nread;
    snprintf(p->errtxt, sizeof p->errtxt, "%s", tp_error(&p->tp));
    p->reason = tp_fail_reason(&p->tp);
    p->hs_at_err = tp_handshake_done(&p->tp);
    event(p, 'R');
  }
  if (p->close_on_error) peer_close(p);
}

/* ---- pairs ------------------------------------------------------------------------------------------------- */

static void on_deadline(uv_timer_t *t) {
  pair_t *p = t->data;
  p->timed_out = 1;
}

static void on_connection(uv_stream_t *l, int status) {
  pair_t *p = l->data;
  CHECK_EQ_INT(status, 0);
  CHECK_EQ_INT(tp_init(&p->loop, &p->s.tp), 0);
  p->s.tp.tcp.data = &p->s;
  CHECK_EQ_INT(uv_accept(l, (uv_stream_t *)&p->s.tp.tcp), 0);
  if (p->sctx) CHECK_EQ_INT(tp_start_server(&p->s.tp, p->sctx), 0);
  p->accepted = 1;
  if (p->on_accept) p->on_accept(p);
  CHECK_EQ_INT(tp_read_start(&p->s.tp, on_alloc, on_read), 0);
}

static void on_connect(uv_connect_t *r, int status) {
  pair_t *p = r->data;
  CHECK_EQ_INT(status, 0);
  if (status) return;
  if (p->cctx) CHECK_EQ_INT(tp_start_client(&p->c.tp, p->cctx, p->server_name, p->cache), 0);
  p->connected = 1;
  CHECK_EQ_INT(tp_read_start(&p->c.tp, on_alloc, on_read), 0);
  if (p->on_ready) p->on_ready(p);
}

static void pair_init(pair_t *p, tls_ctx_t *sctx, tls_ctx_t *cctx, const char *server_name) {
  memset(p, 0, sizeof *p);
  p->sctx = sctx;
  p->cctx = cctx;
  p->server_name = server_name;
  p->c.pair = p->s.pair = p;
  p->s.is_server = 1;
  p->c.close_on_error = p->s.close_on_error = 1;
}

static void pair_start(pair_t *p) {
  struct sockaddr_in a;
  int len = sizeof a;
  CHECK_EQ_INT(uv_loop_init(&p->loop), 0);
  uv_timer_init(&p->loop, &p->deadline);
  p->deadline.data = p;
  uv_timer_start(&p->deadline, on_deadline, 30000, 0);
  uv_tcp_init(&p->loop, &p->listener);
  p->listener.data = p;
  uv_ip4_addr("127.0.0.1", 0, &a);
  CHECK_EQ_INT(uv_tcp_bind(&p->listener, (const struct sockaddr *)&a, 0), 0);
  CHECK_EQ_INT(uv_listen((uv_stream_t *)&p->listener, 8, on_connection), 0);
  uv_tcp_getsockname(&p->listener, (struct sockaddr *)&a, &len);
  CHECK_EQ_INT(tp_init(&p->loop, &p->c.tp), 0);
  p->c.tp.tcp.data = &p->c;
  p->conn.data = p;
  CHECK_EQ_INT(uv_tcp_connect(&p->conn, &p->c.tp.tcp, (const struct sockaddr *)&a, on_connect), 0);
}

/* Runs the loop until pred holds or the deadline passes (a failure); restarts paused readers between turns. */
static int pair_run(pair_t *p, int (*pred)(pair_t *)) {
  while (!pred(p) && !p->timed_out) {
    uv_run(&p->loop, UV_RUN_ONCE);
    peer_t *ps[2] = {&p->c, &p->s};
    for (int i = 0; i < 2; i++)
      if (ps[i]->paused && !ps[i]->closing) {
        ps[i]->paused = 0;
        CHECK_EQ_INT(tp_read_start(&ps[i]->tp, on_alloc, on_read), 0);
      }
  }
  CHECK(!p->timed_out);
  return !p->timed_out;
}

static int both_closed(pair_t *p) { return p->c.closed && (!p->accepted || p->s.closed); }

/* Closes what is open and checks the loop ends with no handle left. */
static void pair_end(pair_t *p) {
  if (!p->c.closing) peer_close(&p->c);
  if (p->accepted && !p->s.closing) peer_close(&p->s);
  pair_run(p, both_closed);
  uv_close((uv_handle_t *)&p->listener, NULL);
  uv_close((uv_handle_t *)&p->deadline, NULL);
  uv_run(&p->loop, UV_RUN_DEFAULT);
  CHECK_EQ_INT(uv_loop_close(&p->loop), 0);
  CHECK_EQ_INT(p->c.reads_after_close + p->s.reads_after_close, 0);
  CHECK_EQ_INT(p->c.bad_handle + p->s.bad_handle, 0);
  free(p->c.rx);
  free(p->s.rx);
}

/* ---- contexts ---------------------------------------------------------------------------------------------- */

static tls_ctx_t *server_ctx(const char *cert, const char *key, const char *client_ca, const char *alpn) {
  tls_server_opts_t o = {path(cert), path(key), client_ca ? path(client_ca) : NULL, 12, alpn};
  tls_ctx_t *c = NULL;
  char err[512] = "";
  int rc = tls_server_ctx_create(&o, "server.tls", &c, err, sizeof err);
  if (rc) fprintf(stderr, "server ctx: %s\n", err);
  CHECK_EQ_INT(rc, 0);
  return c;
}

static tls_ctx_t *client_ctx(const char *ca, const char *cert, const char *key, int insecure, const char *alpn) {
  tls_client_opts_t o = {ca ? path(ca) : NULL, cert ? path(cert) : NULL, key ? path(key) : NULL, insecure, alpn};
  tls_ctx_t *c = NULL;
  char err[512] = "";
  int rc = tls_client_ctx_create(&o, "backends.tls", &c, err, sizeof err);
  if (rc) fprintf(stderr, "client ctx: %s\n", err);
  CHECK_EQ_INT(rc, 0);
  return c;
}

/* ---- handshake + echo ---------------------------------------------------------------------------------- */

#define BIG (4u << 20)
static unsigned char *pattern;

static void make_pattern(void) {
  if (pattern) return;
  pattern = malloc(BIG);
  uint32_t x = 2463534242u;
  for (size_t i = 0; i < BIG; i++) {
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    pattern[i] = (unsigned char)x;
  }
}

static const char hello[] = "hello from the server, written before the handshake";

/* The client writes all 4 MiB at once (before the handshake: held), in 64 KiB writes. */
static void write_big(pair_t *p) {
  if (tp_is_tls(&p->c.tp)) CHECK(!tp_handshake_done(&p->c.tp));
  for (size_t off = 0; off < BIG; off += 65536) CHECK_EQ_INT(peer_write(&p->c, pattern + off, 65536), 0);
  if (tp_is_tls(&p->c.tp)) CHECK(tp_write_queue_size(&p->c.tp) >= BIG); /* held plaintext counts */
}

static void server_hello(pair_t *p) {
  if (p->s.tp.tls) CHECK(!tp_handshake_done(&p->s.tp));
  CHECK_EQ_INT(peer_write(&p->s, hello, sizeof hello - 1), 0);
}

static int echo_done(pair_t *p) { return p->c.rx_len >= sizeof hello - 1 + BIG || p->c.err || p->s.err; }

static void check_echo(pair_t *p) {
  CHECK_EQ_INT(p->c.err, 0);
  CHECK_EQ_INT(p->s.err, 0);
  CHECK_EQ_INT(p->s.rx_len, BIG);
  CHECK_EQ_INT(p->c.rx_len, sizeof hello - 1 + BIG);
  CHECK(p->s.rx_len == BIG && memcmp(p->s.rx, pattern, BIG) == 0);
  CHECK(p->c.rx_len == sizeof hello - 1 + BIG && memcmp(p->c.rx, hello, sizeof hello - 1) == 0 &&
        memcmp(p->c.rx + sizeof hello - 1, pattern, BIG) == 0);
}

static int writes_done(pair_t *p) { return p->c.writes_done == p->c.writes && p->s.writes_done == p->s.writes; }

static int server_eof(pair_t *p) { return p->s.eof || p->s.err; }

static uv_shutdown_t sd_req;
static int sd_status = 1;
static void on_shutdown(uv_shutdown_t *r, int status) {
  CHECK(r == &sd_req);
  sd_status = status;
}

TEST(handshake_echo_4mib) {
  make_pattern();
  tls_ctx_t *s = server_ctx("server.pem", "server.key", NULL, "h2");
  tls_ctx_t *c = client_ctx("ca.pem", NULL, NULL, 0, "h2");
  pair_t p;
  pair_init(&p, s, c, "localhost");
  p.s.echo = 1;
  p.on_ready = write_big;
  p.on_accept = server_hello;
  pair_start(&p);
  if (pair_run(&p, echo_done)) {
    check_echo(&p);
    CHECK(tp_is_tls(&p.c.tp) && tp_is_tls(&p.s.tp));
    CHECK(tp_handshake_done(&p.c.tp) && tp_handshake_done(&p.s.tp));
    CHECK_EQ_STR(tp_alpn(&p.c.tp), "h2");
    CHECK_EQ_STR(tp_alpn(&p.s.tp), "h2");
    CHECK_EQ_STR(tp_error(&p.c.tp), "");
    CHECK_EQ_INT(tp_session_reused(&p.c.tp), 0);
    pair_run(&p, writes_done);
    CHECK_EQ_INT(p.c.write_err + p.s.write_err, 0);
    CHECK_EQ_INT(tp_write_queue_size(&p.c.tp), 0);
    /* close_notify: the server reads UV_EOF, then writes fail on the client */
    sd_status = 1;
    CHECK_EQ_INT(tp_shutdown(&sd_req, &p.c.tp, on_shutdown), 0);
    CHECK_EQ_INT(peer_write(&p.c, "x", 1), UV_EPIPE);
    pair_run(&p, server_eof);
    CHECK_EQ_INT(p.s.eof, 1);
    CHECK_EQ_INT(p.s.err, 0);
    CHECK_EQ_INT(sd_status, 0);
  }
  pair_end(&p);
  tls_ctx_unref(s);
  tls_ctx_unref(c);
}

/* ---- ALPN ------------------------------------------------------------------------------------------------ */

static void write_ping(pair_t *p) { CHECK_EQ_INT(peer_write(&p->c, "ping", 4), 0); }
static int got_pong(pair_t *p) { return p->c.rx_len >= 4 || p->c.err || p->s.err || p->c.eof; }

/* One small echo with the given contexts; the returned pair is ended. */
static void small_echo(tls_ctx_t *s, tls_ctx_t *c, const char *server_name, const char *alpn_expected) {
  pair_t p;
  pair_init(&p, s, c, server_name);
  p.s.echo = 1;
  p.on_ready = write_ping;
  pair_start(&p);
  if (pair_run(&p, got_pong)) {
    CHECK_EQ_INT(p.c.err, 0);
    CHECK_EQ_INT(p.s.err, 0);
    CHECK(p.c.rx_len == 4 && memcmp(p.c.rx, "ping", 4) == 0);
    CHECK_EQ_STR(tp_alpn(&p.c.tp), alpn_expected);
    CHECK_EQ_STR(tp_alpn(&p.s.tp), alpn_expected);
  }
  pair_end(&p);
}

TEST(alpn_http11) {
  tls_ctx_t *s = server_ctx("server.pem", "server.key", NULL, "http/1.1");
  tls_ctx_t *c = client_ctx("ca.pem", NULL, NULL, 0, "http/1.1");
  small_echo(s, c, "localhost", "http/1.1");
  tls_ctx_unref(s);
  tls_ctx_unref(c);
}

TEST(alpn_none_from_client_accepted) {
  tls_ctx_t *s = server_ctx("server.pem", "server.key", NULL, "h2");
  tls_ctx_t *c = client_ctx("ca.pem", NULL, NULL, 0, NULL);
  small_echo(s, c, "localhost", "");
  tls_ctx_unref(s);
  tls_ctx_unref(c);
}

TEST(alpn_unknown_protocol_gets_no_alpn) {
  tls_ctx_t *s = server_ctx("server.pem", "server.key", NULL, "h2");
  tls_ctx_t *c = client_ctx("ca.pem", NULL, NULL, 0, "spdy/1");
  small_echo(s, c, "localhost", ""); /* NOACK: the handshake goes on without ALPN */
  tls_ctx_unref(s);
  tls_ctx_unref(c);
}

/* ---- verification failures ------------------------------------------------------------------------------- */

static int client_failed(pair_t *p) { return p->c.err || p->c.closed; }

/* Client connection expected to fail verification with text; its held write fails with UV_EPROTO. */
static void verify_fail(const char *srv_cert, const char *srv_key, const char *ca, const char *name,
                        const char *text) {
  tls_ctx_t *s = server_ctx(srv_cert, srv_key, NULL, NULL);
  tls_ctx_t *c = client_ctx(ca, NULL, NULL, 0, NULL);
  pair_t p;
  pair_init(&p, s, c, name);
  p.on_ready = write_ping;
  pair_start(&p);
  if (pair_run(&p, client_failed)) {
    CHECK_EQ_INT(p.c.err, UV_EPROTO);
    CHECK_EQ_STR(p.c.errtxt, text);
    CHECK_EQ_INT(p.c.reason, TLS_FAIL_CERTIFICATE);
    CHECK_EQ_STR(tls_fail_label(p.c.reason), "certificate");
    CHECK_EQ_INT(p.c.hs_at_err, 0);
    CHECK_EQ_STR(p.c.events, "PRX"); /* the held write failed, then the read error, then our close */
    /* the server saw the client's alert */
    pair_run(&p, server_eof);
    CHECK_EQ_INT(p.s.err, UV_EPROTO);
    CHECK_EQ_INT(p.s.reason, TLS_FAIL_CERTIFICATE);
    CHECK_EQ_INT(p.s.rx_len, 0);
  }
  pair_end(&p);
  tls_ctx_unref(s);
  tls_ctx_unref(c);
}

TEST(verify_unknown_ca) {
  verify_fail("server.pem", "server.key", "ca2.pem", "localhost",
              "certificate verify failed: unable to get local issuer certificate");
}

TEST(verify_expired) {
  verify_fail("expired.pem", "server.key", "ca.pem", "localhost", "certificate verify failed: certificate has expired");
}

TEST(verify_wrong_name) {
  verify_fail("server.pem", "server.key", "ca.pem", "example.com", "certificate verify failed: hostname mismatch");
}

TEST(verify_ip_literal) {
  tls_ctx_t *s = server_ctx("server.pem", "server.key", NULL, NULL);
  tls_ctx_t *c = client_ctx("ca.pem", NULL, NULL, 0, NULL);
  small_echo(s, c, "127.0.0.1", ""); /* IP:127.0.0.1 in the SAN */
  tls_ctx_unref(s);
  tls_ctx_unref(c);
  verify_fail("server.pem", "server.key", "ca.pem", "127.0.0.2", "certificate verify failed: IP address mismatch");
}

TEST(insecure_skip_verify_connects) {
  tls_ctx_t *s = server_ctx("expired.pem", "server.key", NULL, NULL);
  tls_ctx_t *c = client_ctx("ca2.pem", NULL, NULL, 1, NULL);
  small_echo(s, c, "example.com", "");
  tls_ctx_unref(s);
  tls_ctx_unref(c);
}

/* ---- mTLS ---------------------------------------------------------------------------------------------- */

static int server_failed(pair_t *p) { return p->s.err || p->s.closed; }
static int both_failed(pair_t *p) { return (p->s.err || p->s.closed) && (p->c.err || p->c.closed); }

static void mtls_fail(const char *cert, const char *key, tls_fail_t reason, const char *server_text) {
  tls_ctx_t *s = server_ctx("server.pem", "server.key", "ca.pem", NULL);
  tls_ctx_t *c = client_ctx("ca.pem", cert, key, 0, NULL);
  pair_t p;
  pair_init(&p, s, c, "localhost");
  p.on_ready = write_ping;
  pair_start(&p);
  if (pair_run(&p, server_failed)) {
    CHECK_EQ_INT(p.s.err, UV_EPROTO);
    CHECK_EQ_INT(p.s.reason, reason);
    CHECK_EQ_STR(p.s.errtxt, server_text);
    CHECK_EQ_INT(p.s.hs_at_err, 0);
    CHECK_EQ_INT(p.s.rx_len, 0); /* nothing from an unverified client reached the reader */
    pair_run(&p, both_failed);
    CHECK_EQ_INT(p.c.err, UV_EPROTO); /* TLS 1.3: the client learns it from the server's alert */
    CHECK_EQ_INT(p.c.reason, reason);
    CHECK_EQ_INT(p.c.rx_len, 0);
  }
  pair_end(&p);
  tls_ctx_unref(s);
  tls_ctx_unref(c);
}

TEST(mtls_no_client_cert) { mtls_fail(NULL, NULL, TLS_FAIL_NO_CERTIFICATE, "peer did not return a certificate"); }

TEST(mtls_other_ca_cert) {
  mtls_fail("client2.pem", "client2.key", TLS_FAIL_CERTIFICATE,
            "certificate verify failed: unable to get local issuer certificate");
}

TEST(mtls_right_cert) {
  tls_ctx_t *s = server_ctx("server.pem", "server.key", "ca.pem", "http/1.1");
  tls_ctx_t *c = client_ctx("ca.pem", "client.pem", "client.key", 0, "http/1.1");
  small_echo(s, c, "localhost", "http/1.1");
  tls_ctx_unref(s);
  tls_ctx_unref(c);
}

/* ---- not TLS, resets ------------------------------------------------------------------------------------ */

static const char http_req[] = "POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n";
static void write_http(pair_t *p) { CHECK_EQ_INT(peer_write(&p->c, http_req, sizeof http_req - 1), 0); }
static int client_gone(pair_t *p) { return p->s.err && (p->c.eof || p->c.err); }

TEST(plain_http_to_tls_port) {
  tls_ctx_t *s = server_ctx("server.pem", "server.key", NULL, "http/1.1");
  pair_t p;
  pair_init(&p, s, NULL, NULL);
  p.on_ready = write_http;
  pair_start(&p);
  if (pair_run(&p, client_gone)) {
    CHECK_EQ_INT(p.s.err, UV_EPROTO);
    CHECK_EQ_INT(p.s.reason, TLS_FAIL_PROTOCOL);
    CHECK_EQ_STR(p.s.errtxt, "http request"); /* OpenSSL 3 names GET/POST/HEAD/PUT; other bytes: "wrong version number" */
    CHECK_EQ_STR(tls_fail_label(p.s.reason), "protocol");
    CHECK(p.c.eof || p.c.err == UV_ECONNRESET); /* closed, not hung */
  }
  pair_end(&p);
  tls_ctx_unref(s);
}

/* A plain server that closes (FIN) or resets on the ClientHello. */
static void reset_mid_handshake(int rst, const char *text) {
  tls_ctx_t *c = client_ctx("ca.pem", NULL, NULL, 0, NULL);
  pair_t p;
  pair_init(&p, NULL, c, "localhost");
  if (rst) p.s.reset_on_data = 1;
  else p.s.close_on_data = 1;
  p.on_ready = write_ping;
  pair_start(&p);
  if (pair_run(&p, client_failed)) {
    CHECK(p.s.rx_len > 0); /* the ClientHello */
    CHECK_EQ_INT(p.c.err, UV_EPROTO);
    CHECK_EQ_INT(p.c.reason, TLS_FAIL_RESET);
    CHECK_EQ_STR(tls_fail_label(p.c.reason), "reset");
    CHECK_EQ_STR(p.c.errtxt, text);
    CHECK_EQ_STR(p.c.events, "PRX");
  }
  pair_end(&p);
  tls_ctx_unref(c);
}

TEST(peer_closes_mid_handshake) { reset_mid_handshake(0, "connection closed during handshake"); }
TEST(peer_resets_mid_handshake) { reset_mid_handshake(1, "connection reset during handshake"); }

/* A plain client sends the start of a ClientHello record and shuts down: the server's handshake fails RESET. */
static uv_shutdown_t c_sd;
static void on_sd_ignore(uv_shutdown_t *r, int status) {}
static void half_hello(pair_t *p) {
  static const char rec[] = "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03";
  CHECK_EQ_INT(peer_write(&p->c, rec, sizeof rec - 1), 0);
  CHECK_EQ_INT(tp_shutdown(&c_sd, &p->c.tp, on_sd_ignore), 0);
}

TEST(client_closes_mid_handshake) {
  tls_ctx_t *s = server_ctx("server.pem", "server.key", NULL, NULL);
  pair_t p;
  pair_init(&p, s, NULL, NULL);
  p.on_ready = half_hello;
  pair_start(&p);
  if (pair_run(&p, server_failed)) {
    CHECK_EQ_INT(p.s.err, UV_EPROTO);
    CHECK_EQ_INT(p.s.reason, TLS_FAIL_RESET);
  }
  pair_end(&p);
  tls_ctx_unref(s);
}

/* ---- session resumption --------------------------------------------------------------------------------- */

/* One connection: ping/pong, then the client waits for the server's close so the TLS 1.3 ticket was read. */
static int conn_once(tls_ctx_t *s, tls_ctx_t *c, tls_session_cache_t *cache, int *reused, int expect_ok) {
  pair_t p;
  pair_init(&p, s, c, "localhost");
  p.cache = cache;
  p.s.echo = 1;
  p.on_ready = write_ping;
  pair_start(&p);
  int ok = 0;
  if (pair_run(&p, got_pong)) {
    ok = p.c.err == 0 && p.c.rx_len == 4;
    *reused = tp_session_reused(&p.c.tp);
    if (expect_ok) CHECK(ok);
  }
  pair_end(&p);
  return ok;
}

TEST(session_resumption) {
  tls_ctx_t *s = server_ctx("server.pem", "server.key", NULL, NULL);
  tls_ctx_t *c = client_ctx("ca.pem", NULL, NULL, 0, NULL);
  tls_session_cache_t *cache = tls_session_cache_create();
  int reused = -1;
  conn_once(s, c, cache, &reused, 1);
  CHECK_EQ_INT(reused, 0);
  conn_once(s, c, cache, &reused, 1);
  CHECK_EQ_INT(reused, 1);
  conn_once(s, c, cache, &reused, 1);
  CHECK_EQ_INT(reused, 1);
  /* a handshake offering the session fails (another server: full handshake, expired certificate): dropped */
  tls_ctx_t *bad = server_ctx("expired.pem", "server.key", NULL, NULL);
  reused = -1;
  CHECK_EQ_INT(conn_once(bad, c, cache, &reused, 0), 0);
  conn_once(s, c, cache, &reused, 1);
  CHECK_EQ_INT(reused, 0); /* nothing was offered */
  conn_once(s, c, cache, &reused, 1);
  CHECK_EQ_INT(reused, 1);
  tls_session_cache_destroy(cache);
  tls_ctx_unref(bad);
  tls_ctx_unref(s);
  tls_ctx_unref(c);
}

TEST(no_session_from_unverified_connection) {
  tls_ctx_t *s = server_ctx("server.pem", "server.key", NULL, NULL);
  tls_ctx_t *c = client_ctx(NULL, NULL, NULL, 1, NULL);
  tls_session_cache_t *cache = tls_session_cache_create();
  int reused = -1;
  conn_once(s, c, cache, &reused, 1);
  CHECK_EQ_INT(reused, 0);
  conn_once(s, c, cache, &reused, 1);
  CHECK_EQ_INT(reused, 0);
  tls_session_cache_destroy(cache);
  tls_ctx_unref(s);
  tls_ctx_unref(c);
}

/* ---- shutdown before the handshake, read stop/start, close from read_cb ---------------------------------- */

static void write_bye_shutdown(pair_t *p) {
  CHECK_EQ_INT(peer_write(&p->c, "bye", 3), 0);
  sd_status = 1;
  CHECK_EQ_INT(tp_shutdown(&sd_req, &p->c.tp, on_shutdown), 0); /* held until after the handshake and "bye" */
}

TEST(shutdown_before_handshake) {
  tls_ctx_t *s = server_ctx("server.pem", "server.key", NULL, NULL);
  tls_ctx_t *c = client_ctx("ca.pem", NULL, NULL, 0, NULL);
  pair_t p;
  pair_init(&p, s, c, "localhost");
  p.on_ready = write_bye_shutdown;
  pair_start(&p);
  if (pair_run(&p, server_eof)) {
    CHECK_EQ_INT(p.s.err, 0);
    CHECK_EQ_INT(p.s.eof, 1);
    CHECK(p.s.rx_len == 3 && memcmp(p.s.rx, "bye", 3) == 0);
    pair_run(&p, writes_done);
    CHECK_EQ_INT(sd_status, 0);
    CHECK_EQ_STR(p.c.events, "W");
  }
  pair_end(&p);
  tls_ctx_unref(s);
  tls_ctx_unref(c);
}

#define MID (1u << 20)
static void write_mid(pair_t *p) {
  for (size_t off = 0; off < MID; off += 100000) {
    size_t n = MID - off < 100000 ? MID - off : 100000;
    CHECK_EQ_INT(peer_write(&p->c, pattern + off, n), 0);
  }
}
static int server_has_mid(pair_t *p) { return p->s.rx_len >= MID || p->s.err || p->s.eof; }

static void read_stop_start(int inline_restart) {
  make_pattern();
  tls_ctx_t *s = server_ctx("server.pem", "server.key", NULL, NULL);
  tls_ctx_t *c = client_ctx("ca.pem", NULL, NULL, 0, NULL);
  pair_t p;
  pair_init(&p, s, c, "localhost");
  p.s.alloc_size = 1000; /* smaller than a record: plaintext stays in the SSL while reading is stopped */
  if (inline_restart) p.s.inline_restart = 1;
  else p.s.stop_each = 1;
  p.on_ready = write_mid;
  pair_start(&p);
  if (pair_run(&p, server_has_mid)) {
    CHECK_EQ_INT(p.s.err, 0);
    CHECK_EQ_INT(p.s.rx_len, MID);
    CHECK(p.s.rx_len == MID && memcmp(p.s.rx, pattern, MID) == 0);
  }
  pair_end(&p);
  tls_ctx_unref(s);
  tls_ctx_unref(c);
}

TEST(read_stop_start_keeps_every_byte) { read_stop_start(0); }
TEST(read_stop_start_inside_read_cb) { read_stop_start(1); }

static int server_closed(pair_t *p) { return p->s.closed; }

TEST(close_inside_read_cb) {
  make_pattern();
  tls_ctx_t *s = server_ctx("server.pem", "server.key", NULL, NULL);
  tls_ctx_t *c = client_ctx("ca.pem", NULL, NULL, 0, NULL);
  pair_t p;
  pair_init(&p, s, c, "localhost");
  p.s.alloc_size = 100; /* many deliveries were possible from the first batch */
  p.s.close_on_data = 1;
  p.on_ready = write_mid;
  p.on_accept = server_hello; /* held on the server: its handshake completes first, so it is sent */
  pair_start(&p);
  if (pair_run(&p, server_closed)) {
    CHECK_EQ_INT(p.s.rx_len, 100);
    CHECK_EQ_INT(p.s.reads_after_close, 0);
  }
  pair_end(&p);
  tls_ctx_unref(s);
  tls_ctx_unref(c);
}

static void write_then_close(pair_t *p) {
  CHECK_EQ_INT(peer_write(&p->c, "held", 4), 0);
  CHECK_EQ_INT(tp_write_queue_size(&p->c.tp), 4);
  peer_close(&p->c);
}

TEST(close_fails_held_writes_before_close_cb) {
  tls_ctx_t *s = server_ctx("server.pem", "server.key", NULL, NULL);
  tls_ctx_t *c = client_ctx("ca.pem", NULL, NULL, 0, NULL);
  pair_t p;
  pair_init(&p, s, c, "localhost");
  p.on_ready = write_then_close;
  pair_start(&p);
  if (pair_run(&p, both_closed)) {
    CHECK_EQ_STR(p.c.events, "CX");
    CHECK_EQ_INT(p.c.write_err, UV_ECANCELED);
  }
  pair_end(&p);
  tls_ctx_unref(s);
  tls_ctx_unref(c);
}

/* ---- plain ---------------------------------------------------------------------------------------------- */

TEST(plain_pair_like_uv) {
  make_pattern();
  pair_t p;
  pair_init(&p, NULL, NULL, NULL);
  p.s.echo = 1;
  p.on_ready = write_big;
  p.on_accept = server_hello;
  pair_start(&p);
  if (pair_run(&p, echo_done)) {
    check_echo(&p);
    CHECK(!tp_is_tls(&p.c.tp) && !tp_is_tls(&p.s.tp));
    CHECK(tp_handshake_done(&p.c.tp));
    CHECK_EQ_STR(tp_alpn(&p.c.tp), "");
    CHECK_EQ_STR(tp_error(&p.c.tp), "");
    pair_run(&p, writes_done);
    CHECK_EQ_INT(tp_write_queue_size(&p.c.tp), 0);
    sd_status = 1;
    CHECK_EQ_INT(tp_shutdown(&sd_req, &p.c.tp, on_shutdown), 0);
    pair_run(&p, server_eof);
    CHECK_EQ_INT(p.s.eof, 1);
    CHECK_EQ_INT(sd_status, 0);
  }
  pair_end(&p);
}

/* ---- contexts ------------------------------------------------------------------------------------------- */

TEST(ctx_errors_name_the_file) {
  char err[512];
  tls_ctx_t *c = NULL;
  char expect[600];
  tls_server_opts_t o = {path("server.pem"), path("client.key"), NULL, 12, NULL};
  CHECK_EQ_INT(tls_server_ctx_create(&o, "server.tls", &c, err, sizeof err), -1);
  CHECK(c == NULL);
  snprintf(expect, sizeof expect, "server.tls.key_file %s: does not match the certificate", path("client.key"));
  CHECK_EQ_STR(err, expect);
  o.key_file = path("server.key");
  o.cert_file = path("nope.pem");
  CHECK_EQ_INT(tls_server_ctx_create(&o, "server.tls", &c, err, sizeof err), -1);
  snprintf(expect, sizeof expect, "server.tls.cert_file %s: No such file or directory", path("nope.pem"));
  CHECK_EQ_STR(err, expect);
  o.cert_file = path("server.key"); /* not a certificate */
  CHECK_EQ_INT(tls_server_ctx_create(&o, "server.tls", &c, err, sizeof err), -1);
  snprintf(expect, sizeof expect, "server.tls.cert_file %s: ", path("server.key"));
  CHECK_CONTAINS(err, expect);
  CHECK(strchr(err, '\n') == NULL);
  o.cert_file = path("server.pem");
  o.client_ca_file = path("server.key");
  CHECK_EQ_INT(tls_server_ctx_create(&o, "server.tls", &c, err, sizeof err), -1);
  snprintf(expect, sizeof expect, "server.tls.client_ca_file %s: ", path("server.key"));
  CHECK_CONTAINS(err, expect);
  tls_client_opts_t co = {path("missing-ca.pem"), NULL, NULL, 0, NULL};
  CHECK_EQ_INT(tls_client_ctx_create(&co, "backends.tls", &c, err, sizeof err), -1);
  snprintf(expect, sizeof expect, "backends.tls.ca_file %s: No such file or directory", path("missing-ca.pem"));
  CHECK_EQ_STR(err, expect);
  co = (tls_client_opts_t){path("ca.pem"), path("client.pem"), path("server.key"), 0, NULL};
  CHECK_EQ_INT(tls_client_ctx_create(&co, "backends.tls", &c, err, sizeof err), -1);
  snprintf(expect, sizeof expect, "backends.tls.key_file %s: does not match the certificate", path("server.key"));
  CHECK_EQ_STR(err, expect);
  /* the right pair, and reference counting */
  o.client_ca_file = path("ca.pem");
  err[0] = 0;
  CHECK_EQ_INT(tls_server_ctx_create(&o, "server.tls", &c, err, sizeof err), 0);
  CHECK_EQ_STR(err, "");
  CHECK(tls_ctx_ref(c) == c);
  tls_ctx_unref(c);
  tls_ctx_unref(c);
  tls_ctx_unref(NULL);
  CHECK_EQ_STR(tls_fail_label(TLS_FAIL_NO_CERTIFICATE), "no_certificate");
  CHECK_EQ_STR(tls_fail_label(TLS_FAIL_ALPN), "alpn");
}

/* ---- setup --------------------------------------------------------------------------------------------- */

static int sh(const char *cmd) {
  char full[4096];
  snprintf(full, sizeof full, "cd '%s' && { %s ; } >>gen.log 2>&1", dir, cmd);
  int rc = system(full);
  if (rc != 0) fprintf(stderr, "failed (%d): %s (see %s/gen.log)\n", rc, cmd, dir);
  return rc;
}

#define KEY "-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes"

static void setup(void) {
  const char *tmp = getenv("TMPDIR");
  snprintf(dir, sizeof dir, "%s/test_transport.XXXXXX", tmp && *tmp ? tmp : "/tmp");
  CHECK(mkdtemp(dir) != NULL);
  CHECK_EQ_INT(sh("printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\\nextendedKeyUsage=serverAuth\\n' > srv.ext && "
                  "printf 'extendedKeyUsage=clientAuth\\n' > cli.ext"), 0);
  for (int i = 0; i < 2; i++) {
    char cmd[1024];
    const char *ca = i == 0 ? "ca" : "ca2";
    snprintf(cmd, sizeof cmd, "openssl req -x509 " KEY " -keyout %s.key -out %s.pem -days 30 -subj /CN=%s "
             "-addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign", ca, ca, ca);
    CHECK_EQ_INT(sh(cmd), 0);
  }
  CHECK_EQ_INT(sh("openssl req " KEY " -keyout server.key -out server.csr -subj /CN=localhost"), 0);
  CHECK_EQ_INT(sh("openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 30 "
                  "-extfile srv.ext -out server.pem"), 0);
  /* notAfter one day back: "certificate has expired" */
  CHECK_EQ_INT(sh("openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days -1 "
                  "-extfile srv.ext -out expired.pem"), 0);
  CHECK_EQ_INT(sh("openssl req " KEY " -keyout client.key -out client.csr -subj /CN=client"), 0);
  CHECK_EQ_INT(sh("openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 30 "
                  "-extfile cli.ext -out client.pem"), 0);
  CHECK_EQ_INT(sh("openssl req " KEY " -keyout client2.key -out client2.csr -subj /CN=client2"), 0);
  CHECK_EQ_INT(sh("openssl x509 -req -in client2.csr -CA ca2.pem -CAkey ca2.key -CAcreateserial -days 30 "
                  "-extfile cli.ext -out client2.pem"), 0);
}

static void teardown(void) {
  char cmd[512];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  CHECK_EQ_INT(system(cmd), 0);
  free(pattern);
}

TEST_MAIN_WITH(setup, teardown)
