/*
 * HTTP/1.1 framing edge cases of gateway/http_server, in process: the server runs on its own loop in a
 * thread, the test talks to it over blocking loopback sockets with receive timeouts.
 */
#define _GNU_SOURCE /* strcasestr */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <linux/sockios.h> /* SIOCOUTQ */
#include <unistd.h>

#include "gateway/http_server.h"
#include "http_client.h"
#include "test.h"

#define MAX_BODY 1024

static uv_loop_t loop;
static hs_server_t *srv;
static uv_async_t stop_async;
static pthread_t thread;
static uint16_t port;
static int loop_close_rc = -1;
static atomic_int slow_answers; /* /slow requests answered (the server thread counts, tests wait on it) */

typedef struct slow {
  uv_timer_t t;
  hs_request_t *req;
} slow_t;

static void slow_closed(uv_handle_t *h) { free(h->data); }
static void slow_fire(uv_timer_t *t) {
  slow_t *s = t->data;
  hs_respond(s->req, 200, "text/plain", NULL, 0, "slow", 4);
  atomic_fetch_add(&slow_answers, 1);
  uv_close((uv_handle_t *)&s->t, slow_closed);
}

static int on_headers(hs_request_t *req, void *ud) {
  if (hs_slice_eq(req->path, "/reject")) {
    hs_respond(req, 403, "text/plain", NULL, 0, "no", 2);
    return 1;
  }
  return 0;
}

/* Echoes "METHOD PATH LEN:" followed by the body; /slow answers after 100 ms. */
static void on_request(hs_request_t *req, void *ud) {
  if (hs_slice_eq(req->path, "/slow")) {
    slow_t *s = calloc(1, sizeof *s);
    s->req = req;
    uv_timer_init(&loop, &s->t);
    s->t.data = s;
    uv_timer_start(&s->t, slow_fire, 100, 0);
    return;
  }
  char buf[2048];
  int n = snprintf(buf, sizeof buf, "%s %.*s%s%.*s %zu:", llhttp_method_name(req->method), (int)req->path.len,
                   req->path.base, req->query.base ? "?" : "", (int)req->query.len,
                   req->query.base ? req->query.base : "", req->body_len);
  if (req->body_len) memcpy(buf + n, req->body, req->body_len);
  hs_respond(req, 200, "text/plain", NULL, 0, buf, (size_t)n + req->body_len);
}

static void shutdown_done(void *ud) { uv_close((uv_handle_t *)&stop_async, NULL); }
static void on_stop(uv_async_t *a) { hs_server_shutdown(srv, shutdown_done, NULL); }

static void *server_main(void *arg) {
  uv_run(&loop, UV_RUN_DEFAULT);
  loop_close_rc = uv_loop_close(&loop);
  return NULL;
}

static void start_server(void) {
  uv_loop_init(&loop);
  hs_config_t cfg = {.name = "test", .max_body_bytes = MAX_BODY, .max_connections = 8, .read_timeout_ms = 300,
                     .idle_timeout_ms = 500, .on_headers = on_headers, .on_request = on_request};
  CHECK_EQ_INT(hs_server_create(&loop, &cfg, &srv), 0);
  CHECK_EQ_INT(hs_server_listen(srv, "127.0.0.1", 0), 0);
  port = hs_server_port(srv);
  uv_async_init(&loop, &stop_async, on_stop);
  pthread_create(&thread, NULL, server_main, NULL);
}

static void stop_server(void) {
  uv_async_send(&stop_async);
  pthread_join(thread, NULL);
  CHECK_EQ_INT(loop_close_rc, 0); /* every handle closed: nothing leaked on the loop */
  hs_server_destroy(srv);
}

static client_t *connect_client(void) { return client_connect(port, 3); }

/* The server's end of c: the server runs in this process, so its socket is one of ours (found by its address
 * pair), or -1 when it is not accepted yet or already closed. */
static int server_end(client_t *c) {
  struct sockaddr_in me, a, b;
  socklen_t len = sizeof me;
  if (getsockname(c->fd, (struct sockaddr *)&me, &len) != 0) return -1;
  for (int fd = 3; fd < 1024; fd++) {
    socklen_t la = sizeof a, lb = sizeof b;
    if (fd != c->fd && getsockname(fd, (struct sockaddr *)&a, &la) == 0 && a.sin_family == AF_INET &&
        a.sin_port == htons(port) && getpeername(fd, (struct sockaddr *)&b, &lb) == 0 && b.sin_port == me.sin_port &&
        b.sin_addr.s_addr == me.sin_addr.s_addr)
      return fd;
  }
  return -1;
}

/* Waits (up to 10 s) until the server has read everything c sent: all of it is acknowledged (so in the server's
 * receive queue) and the server's socket has nothing left unread, or the server has answered or closed (it reads
 * no further). A test delivering a request in pieces calls it between them, so that the server surely reads them
 * apart, without sleeping on a guess. Returns 1, else 0. */
static int server_read_all(client_t *c) {
  for (int i = 0; i < 10000; i++) {
    int unacked = -1, unread = -1;
    struct pollfd answered = {.fd = c->fd, .events = POLLIN};
    if (ioctl(c->fd, SIOCOUTQ, &unacked) != 0) return 0;
    if (poll(&answered, 1, 0) > 0) return 1;
    int fd = server_end(c);
    if (unacked == 0 && fd >= 0 && ioctl(fd, FIONREAD, &unread) == 0 && unread == 0) return 1;
    usleep(1000);
  }
  fprintf(stderr, "server_read_all: the server has not read what the client sent after 10 s\n");
  return 0;
}

/* 1 when the server closed the connection (EOF or reset) within the receive timeout. */
static int closed_by_server(client_t *c) {
  char b[256];
  for (int i = 0; i < 100; i++) {
    ssize_t n = recv(c->fd, b, sizeof b, 0);
    if (n == 0) return 1;
    if (n < 0) return errno == ECONNRESET;
  }
  return 0;
}

TEST(keep_alive_two_requests) {
  client_t *c = connect_client();
  response_t r;
  sendstr(c, "GET /a HTTP/1.1\r\nHost: x\r\n\r\n");
  CHECK_EQ_INT(read_response(c, &r), 0);
  CHECK_EQ_INT(r.status, 200);
  CHECK_EQ_STR(r.body, "GET /a 0:");
  CHECK_EQ_INT(r.close, 0);
  sendstr(c, "POST /b?q=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello");
  CHECK_EQ_INT(read_response(c, &r), 0);
  CHECK_EQ_STR(r.body, "POST /b?q=1 5:hello");
  client_close(c);
}

/* The query string is split from the path ('#' ends it), also on a request without any header. */
TEST(query_string) {
  client_t *c = connect_client();
  response_t r;
  sendstr(c, "GET /c?status=503&x=1#frag HTTP/1.1\r\nHost: x\r\n\r\n");
  CHECK_EQ_INT(read_response(c, &r), 0);
  CHECK_EQ_STR(r.body, "GET /c?status=503&x=1 0:");
  sendstr(c, "GET /d? HTTP/1.1\r\nHost: x\r\n\r\n");
  CHECK_EQ_INT(read_response(c, &r), 0);
  CHECK_EQ_STR(r.body, "GET /d? 0:");
  sendstr(c, "GET /e#x?y HTTP/1.1\r\n\r\n");
  CHECK_EQ_INT(read_response(c, &r), 0);
  CHECK_EQ_STR(r.body, "GET /e 0:");
  client_close(c);
}

TEST(pipelining_in_order) {
  client_t *c = connect_client();
  response_t r;
  /* The slow one is answered asynchronously; the two behind it must still come after it. */
  sendstr(c, "GET /slow HTTP/1.1\r\n\r\nPOST /p1 HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET /p2 HTTP/1.1\r\n\r\n");
  CHECK_EQ_INT(read_response(c, &r), 0);
  CHECK_EQ_STR(r.body, "slow");
  CHECK_EQ_INT(read_response(c, &r), 0);
  CHECK_EQ_STR(r.body, "POST /p1 3:abc");
  CHECK_EQ_INT(read_response(c, &r), 0);
  CHECK_EQ_STR(r.body, "GET /p2 0:");
  client_close(c);
}

TEST(chunked_body_with_extension_and_trailer) {
  client_t *c = connect_client();
  response_t r;
  sendstr(c, "POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n");
  CHECK(server_read_all(c)); /* read apart from the rest */
  sendstr(c, "6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n");
  CHECK_EQ_INT(read_response(c, &r), 0);
  CHECK_EQ_STR(r.body, "POST /c 11:hello world");
  client_close(c);
}

TEST(content_length_body_in_pieces) {
  client_t *c = connect_client();
  response_t r;
  sendstr(c, "POST /s HTTP/1.1\r\nContent-Length: 10\r\n\r\n01");
  CHECK(server_read_all(c)); /* three reads */
  sendstr(c, "2345");
  CHECK(server_read_all(c));
  sendstr(c, "6789");
  CHECK_EQ_INT(read_response(c, &r), 0);
  CHECK_EQ_STR(r.body, "POST /s 10:0123456789");
  client_close(c);
}

TEST(expect_100_continue) {
  client_t *c = connect_client();
  response_t r;
  sendstr(c, "POST /e HTTP/1.1\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n");
  CHECK_EQ_INT(read_response(c, &r), 0);
  CHECK_EQ_INT(r.status, 100);
  sendstr(c, "data");
  CHECK_EQ_INT(read_response(c, &r), 0);
  CHECK_EQ_INT(r.status, 200);
  CHECK_EQ_STR(r.body, "POST /e 4:data");
  client_close(c);
}

TEST(expect_100_rejected_early_closes) {
  client_t *c = connect_client();
  response_t r;
  sendstr(c, "POST /reject HTTP/1.1\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n");
  CHECK_EQ_INT(read_response(c, &r), 0);
  CHECK_EQ_INT(r.status, 403);
  CHECK_EQ_INT(r.close, 1);
  CHECK(closed_by_server(c));
  client_close(c);
}

TEST(early_answer_without_expect_keeps_connection) {
  client_t *c = connect_client();
  response_t r;
  sendstr(c, "POST /reject HTTP/1.1\r\nContent-Length: 4\r\n\r\ndataGET /after HTTP/1.1\r\n\r\n");
  CHECK_EQ_INT(read_response(c, &r), 0);
  CHECK_EQ_INT(r.status, 403);
  CHECK_EQ_INT(r.close, 0);
  CHECK_EQ_INT(read_response(c, &r), 0);
  CHECK_EQ_STR(r.body, "GET /after 0:");
  client_close(c);
}

TEST(header_too_large_431) {
  client_t *c = connect_client();
  response_t r;
  char *big = malloc(HS_MAX_HEADER_BYTES + 100);
  memset(big, 'a', HS_MAX_HEADER_BYTES + 99);
  big[HS_MAX_HEADER_BYTES + 99] = 0;
  sendstr(c, "GET / HTTP/1.1\r\nX-Big: ");
  sendstr(c, big);
  sendstr(c, "\r\n\r\n");
  free(big);
  CHECK_EQ_INT(read_response(c, &r), 0);
  CHECK_EQ_INT(r.status, 431);
  CHECK_EQ_INT(r.close, 1);
  client_close(c);
}

TEST(too_many_headers_431) {
  client_t *c = connect_client();
  response_t r;
  sendstr(c, "GET / HTTP/1.1\r\n");
  for (int i = 0; i < HS_MAX_HEADERS + 1; i++) {
    char h[32];
    snprintf(h, sizeof h, "X-H%d: v\r\n", i);
    sendstr(c, h);
  }
  sendstr(c, "\r\n");
  CHECK_EQ_INT(read_response(c, &r), 0);
  CHECK_EQ_INT(r.status, 431);
  client_close(c);
}

TEST(exactly_max_headers_ok) {
  client_t *c = connect_client();
  response_t r;
  sendstr(c, "GET /m HTTP/1.1\r\n");
  for (int i = 0; i < HS_MAX_HEADERS; i++) {
    char h[32];
    snprintf(h, sizeof h, "X-H%d: v\r\n", i);
    sendstr(c, h);
  }
  sendstr(c, "\r\n");
  CHECK_EQ_INT(read_response(c, &r), 0);
  CHECK_EQ_INT(r.status, 200);
  client_close(c);
}

TEST(content_length_over_limit_413) {
  client_t *c = connect_client();
  response_t r;
  char req[128];
  snprintf(req, sizeof req, "POST /big HTTP/1.1\r\nContent-Length: %d\r\n\r\n", MAX_BODY + 1);
  sendstr(c, req);
  CHECK_EQ_INT(read_response(c, &r), 0);
  CHECK_EQ_INT(r.status, 413);
  CHECK_EQ_INT(r.close, 1);
  client_close(c);
}

TEST(body_exactly_at_limit_ok) {
  client_t *c = connect_client();
  response_t r;
  char req[128];
  snprintf(req, sizeof req, "POST /lim HTTP/1.1\r\nContent-Length: %d\r\n\r\n", MAX_BODY);
  sendstr(c, req);
  char *body = malloc(MAX_BODY + 1);
  memset(body, 'x', MAX_BODY);
  body[MAX_BODY] = 0;
  sendstr(c, body);
  free(body);
  CHECK_EQ_INT(read_response(c, &r), 0);
  CHECK_EQ_INT(r.status, 200);
  CHECK_CONTAINS(r.body, "POST /lim 1024:");
  client_close(c);
}

TEST(chunked_over_limit_413) {
  client_t *c = connect_client();
  response_t r;
  sendstr(c, "POST /cbig HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n");
  char chunk[700];
  memset(chunk, 'y', sizeof chunk);
  for (int i = 0; i < 2; i++) {
    char h[16];
    snprintf(h, sizeof h, "%zx\r\n", sizeof chunk);
    sendstr(c, h);
    CHECK_EQ_INT(send(c->fd, chunk, sizeof chunk, MSG_NOSIGNAL), (long long)sizeof chunk);
    sendstr(c, "\r\n");
  }
  CHECK_EQ_INT(read_response(c, &r), 0);
  CHECK_EQ_INT(r.status, 413);
  client_close(c);
}

TEST(malformed_request_400) {
  client_t *c = connect_client();
  response_t r;
  sendstr(c, "THIS IS NOT HTTP\r\n\r\n");
  CHECK_EQ_INT(read_response(c, &r), 0);
  CHECK_EQ_INT(r.status, 400);
  CHECK_EQ_INT(r.close, 1);
  CHECK(closed_by_server(c));
  client_close(c);
}

TEST(bad_content_length_400) {
  client_t *c = connect_client();
  response_t r;
  sendstr(c, "POST / HTTP/1.1\r\nContent-Length: 12abc\r\n\r\n");
  CHECK_EQ_INT(read_response(c, &r), 0);
  CHECK_EQ_INT(r.status, 400);
  client_close(c);
}

TEST(both_content_length_and_chunked_400) {
  client_t *c = connect_client();
  response_t r;
  /* Request smuggling guard: llhttp refuses both framings at once. */
  sendstr(c, "POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n");
  CHECK_EQ_INT(read_response(c, &r), 0);
  CHECK_EQ_INT(r.status, 400);
  client_close(c);
}

TEST(trickling_client_408) {
  client_t *c = connect_client();
  response_t r;
  sendstr(c, "POST /t HTTP/1.1\r\nContent-Length: 100\r\n\r\n");
  int got = -1;
  for (int i = 0; i < 20; i++) { /* one byte every 50 ms: slower than the 300 ms whole-request deadline */
    if (send(c->fd, "z", 1, MSG_NOSIGNAL) != 1) break;
    usleep(50000);
    struct timeval tv = {0, 1000};
    setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    char peek[16];
    if (recv(c->fd, peek, sizeof peek, MSG_PEEK) > 0) { got = 1; break; }
  }
  struct timeval tv = {.tv_sec = 3};
  setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  CHECK_EQ_INT(got, 1);
  CHECK_EQ_INT(read_response(c, &r), 0);
  CHECK_EQ_INT(r.status, 408);
  CHECK_EQ_INT(r.close, 1);
  client_close(c);
}

TEST(idle_connection_closed) {
  client_t *c = connect_client();
  response_t r;
  sendstr(c, "GET /i HTTP/1.1\r\n\r\n");
  CHECK_EQ_INT(read_response(c, &r), 0);
  CHECK(closed_by_server(c)); /* idle_timeout is 500 ms, the receive timeout 3 s */
  client_close(c);
}

TEST(crlf_only_client_still_idles_out) {
  client_t *c = connect_client();
  int closed = 0;
  for (int i = 0; i < 40 && !closed; i++) { /* CRLFs every 50 ms for up to 2 s; idle_timeout is 500 ms */
    if (send(c->fd, "\r\n", 2, MSG_NOSIGNAL) != 2) closed = 1;
    usleep(50000);
    char b[16];
    struct timeval tv = {0, 1000};
    setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    if (recv(c->fd, b, sizeof b, 0) == 0) closed = 1;
  }
  CHECK(closed);
  client_close(c);
}

TEST(http10_closes) {
  client_t *c = connect_client();
  response_t r;
  sendstr(c, "GET /old HTTP/1.0\r\n\r\n");
  CHECK_EQ_INT(read_response(c, &r), 0);
  CHECK_EQ_INT(r.status, 200);
  CHECK_EQ_INT(r.close, 1);
  CHECK(closed_by_server(c));
  client_close(c);
}

TEST(connection_close_header_honoured) {
  client_t *c = connect_client();
  response_t r;
  sendstr(c, "GET /bye HTTP/1.1\r\nConnection: close\r\n\r\n");
  CHECK_EQ_INT(read_response(c, &r), 0);
  CHECK_EQ_INT(r.close, 1);
  CHECK(closed_by_server(c));
  client_close(c);
}

TEST(max_connections_503) {
  client_t *cs[8];
  response_t r;
  for (int i = 0; i < 8; i++) cs[i] = connect_client();
  /* Make sure all 8 are accepted before the 9th arrives. */
  for (int i = 0; i < 8; i++) {
    sendstr(cs[i], "GET /x HTTP/1.1\r\n\r\n");
    CHECK_EQ_INT(read_response(cs[i], &r), 0);
    CHECK_EQ_INT(r.status, 200);
  }
  client_t *extra = connect_client();
  CHECK_EQ_INT(read_response(extra, &r), 0);
  CHECK_EQ_INT(r.status, 503);
  CHECK_EQ_INT(r.close, 1);
  client_close(extra);
  for (int i = 0; i < 8; i++) client_close(cs[i]);
  /* Wait (bounded) until the server has seen every close, so later tests get their connections.
   * Reading the counter from this thread is a benign race: it only moves towards zero here. */
  for (int i = 0; i < 300 && *(volatile uint64_t *)&hs_server_stats(srv)->connections_open > 0; i++) usleep(10000);
  CHECK_EQ_INT(hs_server_stats(srv)->connections_open, 0);
}

/* The answer comes (100 ms later) to a connection the client closed: must not crash or leak. Waits for that
 * answer and for the server to have seen every connection go, then serves another. */
TEST(client_gone_while_pending) {
  int answered = atomic_load(&slow_answers);
  client_t *c = connect_client();
  sendstr(c, "GET /slow HTTP/1.1\r\n\r\n");
  CHECK(server_read_all(c)); /* the request is in: the server will answer it */
  client_close(c);
  for (int i = 0; i < 1000 && (atomic_load(&slow_answers) == answered ||
                              *(volatile uint64_t *)&hs_server_stats(srv)->connections_open > 0); i++)
    usleep(10000); /* bounded: 10 s */
  CHECK_EQ_INT(atomic_load(&slow_answers), answered + 1);
  CHECK_EQ_INT(*(volatile uint64_t *)&hs_server_stats(srv)->connections_open, 0);
  client_t *d = connect_client();
  response_t r;
  sendstr(d, "GET /ok HTTP/1.1\r\n\r\n");
  CHECK_EQ_INT(read_response(d, &r), 0);
  CHECK_EQ_INT(r.status, 200);
  client_close(d);
}

TEST(many_pipelined_requests) {
  client_t *c = connect_client();
  char req[64 * 40];
  size_t n = 0;
  for (int i = 0; i < 40; i++) n += (size_t)snprintf(req + n, sizeof req - n, "GET /n%d HTTP/1.1\r\n\r\n", i);
  sendstr(c, req);
  for (int i = 0; i < 40; i++) {
    response_t r;
    char want[32];
    snprintf(want, sizeof want, "GET /n%d 0:", i);
    CHECK_EQ_INT(read_response(c, &r), 0);
    CHECK_EQ_STR(r.body, want);
  }
  client_close(c);
}

/* ---- HTTP/2 clients and Upgrade on the HTTP/1.1 port --------------------------------------------------------- */

static const char h2_preface[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/* What every HTTP/2 client sends right behind the preface: a SETTINGS frame (here an empty one). */
static const char h2_settings[] = {0, 0, 0, 4, 0, 0, 0, 0, 0};
/* This server's config names no answer of its own (hs_config_t.h2_answer): the generic one. The gateway's
 * OTLP answer on its ingest port is checked in tests/integration/test_http_framing.py. */
#define H2_ANSWER "this port speaks HTTP/1.1; HTTP/2 is not served here"

/* Sends n bytes in pieces of at most step bytes, each read by the server before the next is sent. */
static void send_pieces(client_t *c, const char *d, size_t n, size_t step) {
  for (size_t i = 0; i < n; i += step) {
    size_t k = n - i < step ? n - i : step;
    CHECK_EQ_INT(send(c->fd, d + i, k, MSG_NOSIGNAL), (long long)k);
    if (i + k < n) CHECK(server_read_all(c));
  }
}

/* A gRPC client with prior knowledge opens with the HTTP/2 preface: it gets one HTTP/1.1 400 whose body is the
 * one line saying what this port speaks (not llhttp's "Pause on PRI/Upgrade"), counted as a framing error, and
 * the connection closes; alone, with the SETTINGS frame behind it, or trickled in pieces. */
TEST(http2_preface_400_with_one_clear_line) {
  char with_settings[sizeof h2_preface - 1 + sizeof h2_settings];
  memcpy(with_settings, h2_preface, sizeof h2_preface - 1);
  memcpy(with_settings + sizeof h2_preface - 1, h2_settings, sizeof h2_settings);
  for (int i = 0; i < 3; i++) {
    uint64_t before = *(volatile uint64_t *)&hs_server_stats(srv)->framing_errors;
    client_t *c = connect_client();
    if (i == 0) send_pieces(c, h2_preface, sizeof h2_preface - 1, sizeof h2_preface);
    else if (i == 1) send_pieces(c, with_settings, sizeof with_settings, sizeof with_settings);
    else send_pieces(c, with_settings, sizeof with_settings, 5);
    response_t r;
    CHECK_EQ_INT(read_response(c, &r), 0);
    CHECK_EQ_INT(r.status, 400);
    CHECK_EQ_INT(r.close, 1);
    CHECK_EQ_STR(r.body, H2_ANSWER "\n");
    CHECK(strstr(r.body, "Pause") == NULL);
    CHECK(closed_by_server(c));
    /* Counted before the answer was written; read from this thread: a benign race that only moves up. */
    CHECK_EQ_INT(*(volatile uint64_t *)&hs_server_stats(srv)->framing_errors, before + 1);
    client_close(c);
  }
  client_t *d = connect_client(); /* the server is fine */
  response_t r;
  sendstr(d, "GET /ok HTTP/1.1\r\n\r\n");
  CHECK_EQ_INT(read_response(d, &r), 0);
  CHECK_EQ_INT(r.status, 200);
  client_close(d);
}

/* An h2c upgrade (curl --http2 on http://), a websocket upgrade and a CONNECT are answered as plain HTTP/1.1,
 * which declines them, and the connection goes on with HTTP/1.1: the next request is served (it used to get
 * 400 "protocol upgrade is not supported"), pipelined behind it or sent after its answer. */
TEST(upgrade_requests_are_served_as_http11) {
  static const char h2c[] = "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
                            "HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n";
  char req[1024];
  client_t *c = connect_client();
  response_t r;
  snprintf(req, sizeof req, "GET /up HTTP/1.1\r\nHost: x\r\n%s\r\n", h2c);
  sendstr(c, req);
  CHECK_EQ_INT(read_response(c, &r), 0);
  CHECK_EQ_INT(r.status, 200);
  CHECK_EQ_STR(r.body, "GET /up 0:");
  CHECK_EQ_INT(r.close, 0);
  sendstr(c, "POST /after HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello");
  CHECK_EQ_INT(read_response(c, &r), 0);
  CHECK_EQ_INT(r.status, 200);
  CHECK_EQ_STR(r.body, "POST /after 5:hello");
  /* With a body, and pipelined: a websocket upgrade, then a CONNECT, then a plain request. */
  snprintf(req, sizeof req,
           "POST /v1/traces HTTP/1.1\r\nHost: x\r\n%sContent-Length: 3\r\n\r\nabc"
           "GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
           "CONNECT a:443 HTTP/1.1\r\nHost: a\r\n\r\n"
           "GET /last HTTP/1.1\r\n\r\n",
           h2c);
  sendstr(c, req);
  static const char *const want[] = {"POST /v1/traces 3:abc", "GET /ws 0:", "CONNECT a:443 0:", "GET /last 0:"};
  for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
    CHECK_EQ_INT(read_response(c, &r), 0);
    CHECK_EQ_INT(r.status, 200);
    CHECK_EQ_STR(r.body, want[i]);
  }
  client_close(c);
}

/* ---- response heads byte for byte ------------------------------------------------------------------------ */

/* A second server on a loop thread of its own whose answer the request picks: "/s/<status>[/none][/extra][/huge]"
 * answers <status> (text/plain unless /none) with the body "b=<status>", Retry-After: 7 and "X-Two: a b" after
 * the content type with /extra, and an extra header too large for the head with /huge. */
static uv_loop_t hloop;
static hs_server_t *hsrv;
static uv_async_t hstop;
static pthread_t hthread;

static int path_has(const hs_request_t *req, const char *part) {
  return memmem(req->path.base, req->path.len, part, strlen(part)) != NULL;
}

static void heads_request(hs_request_t *req, void *ud) {
  static char huge[2100];
  memset(huge, 'h', sizeof huge);
  int status = req->path.len > 3 ? atoi(req->path.base + 3) : 200;
  char body[32];
  int n = snprintf(body, sizeof body, "b=%d", status);
  hs_header_t extra[2] = {{{"Retry-After", 11}, {"7", 1}}, {{"X-Two", 5}, {"a b", 3}}};
  if (path_has(req, "/huge")) {
    extra[1].value = (hs_slice_t){huge, sizeof huge};
    CHECK_EQ_INT(hs_respond(req, status, "text/plain", extra, 2, body, (size_t)n), UV_EINVAL);
    return;
  }
  hs_respond(req, status, path_has(req, "/none") ? NULL : "text/plain", path_has(req, "/extra") ? extra : NULL,
             path_has(req, "/extra") ? 2 : 0, body, (size_t)n);
}

static void heads_shutdown_done(void *ud) { uv_close((uv_handle_t *)&hstop, NULL); }
static void heads_on_stop(uv_async_t *a) { hs_server_shutdown(hsrv, heads_shutdown_done, NULL); }
static void *heads_main(void *arg) {
  uv_run(&hloop, UV_RUN_DEFAULT);
  *(int *)arg = uv_loop_close(&hloop);
  return NULL;
}

/* Reads from c until n bytes are in (or EOF/timeout); returns what arrived, NUL-terminated in c->buf. */
static size_t read_bytes(client_t *c, size_t n) {
  while (c->len < n && c->len < sizeof c->buf - 1) {
    ssize_t k = recv(c->fd, c->buf + c->len, sizeof c->buf - 1 - c->len, 0);
    if (k <= 0) break;
    c->len += (size_t)k;
  }
  c->buf[c->len] = 0;
  return c->len;
}

/* Sends one request and returns the whole answer (head and body) in out, its Date value checked for the
 * IMF-fixdate form and replaced by "D" so the rest compares as bytes. */
static void exchange(client_t *c, const char *request, char *out, size_t cap) {
  sendstr(c, request);
  c->len = 0;
  size_t got = 0;
  for (;;) { /* the head, then Content-Length bytes of body */
    read_bytes(c, got + 1);
    if (c->len == got) break;
    got = c->len;
    char *end = strstr(c->buf, "\r\n\r\n");
    const char *cl = end ? strstr(c->buf, "\r\nContent-Length: ") : NULL;
    if (cl && cl < end && c->len >= (size_t)(end + 4 - c->buf) + strtoul(cl + 18, NULL, 10)) break;
  }
  char *d = strstr(c->buf, "\r\nDate: ");
  CHECK(d != NULL);
  if (!d) {
    size_t k = c->len < cap - 1 ? c->len : cap - 1;
    memcpy(out, c->buf, k);
    out[k] = 0;
    return;
  }
  char *e = strstr(d + 8, "\r\n");
  CHECK_EQ_INT(e - (d + 8), 29); /* "Sun, 06 Nov 1994 08:49:37 GMT" */
  CHECK_CONTAINS(d, " GMT\r\n");
  snprintf(out, cap, "%.*sD%s", (int)(d + 8 - c->buf), c->buf, e);
  c->len = 0;
}

/* Every status line, Date, Content-Length, Content-Type (or none), extra headers in order, Connection: close when
 * the connection ends, as the bytes they were when formatted with snprintf; a head that does not fit in its
 * buffer is an error (the connection closes, nothing is written). */
TEST(response_heads_byte_for_byte) {
  int close_rc = -1;
  uv_loop_init(&hloop);
  hs_config_t cfg = {.name = "heads", .max_body_bytes = MAX_BODY, .read_timeout_ms = 5000, .idle_timeout_ms = 5000,
                     .on_request = heads_request};
  CHECK_EQ_INT(hs_server_create(&hloop, &cfg, &hsrv), 0);
  CHECK_EQ_INT(hs_server_listen(hsrv, "127.0.0.1", 0), 0);
  uint16_t hport = hs_server_port(hsrv);
  uv_async_init(&hloop, &hstop, heads_on_stop);
  pthread_create(&hthread, NULL, heads_main, &close_rc);

  static const int statuses[] = {100, 200, 202, 204, 400, 401, 403, 404, 405, 408, 411, 413, 415, 429, 431, 500, 501,
                                 502, 503, 504, 299, 599, 999, 1000, 12345};
  client_t *c = client_connect(hport, 5);
  char req[256], got[4096], want[4096];
  for (size_t i = 0; i < sizeof statuses / sizeof statuses[0]; i++) {
    int st = statuses[i];
    if (st == 100 || st == 204) continue; /* no body allowed: the client below could not frame them */
    char body[32];
    int bl = snprintf(body, sizeof body, "b=%d", st);
    snprintf(req, sizeof req, "GET /s/%d HTTP/1.1\r\nHost: x\r\n\r\n", st);
    exchange(c, req, got, sizeof got);
    snprintf(want, sizeof want, "HTTP/1.1 %d %s\r\nDate: D\r\nContent-Length: %d\r\nContent-Type: text/plain\r\n\r\n%s",
             st, hs_status_reason(st), bl, body);
    CHECK_EQ_STR(got, want);
  }
  exchange(c, "GET /s/413/none/extra HTTP/1.1\r\n\r\n", got, sizeof got);
  CHECK_EQ_STR(got, "HTTP/1.1 413 Content Too Large\r\nDate: D\r\nContent-Length: 5\r\n"
                    "Retry-After: 7\r\nX-Two: a b\r\n\r\nb=413");
  exchange(c, "GET /s/503/extra HTTP/1.1\r\n\r\n", got, sizeof got);
  CHECK_EQ_STR(got, "HTTP/1.1 503 Service Unavailable\r\nDate: D\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n"
                    "Retry-After: 7\r\nX-Two: a b\r\n\r\nb=503");
  exchange(c, "GET /s/599/none HTTP/1.1\r\n\r\n", got, sizeof got);
  CHECK_EQ_STR(got, "HTTP/1.1 599 Unknown\r\nDate: D\r\nContent-Length: 5\r\n\r\nb=599");
  exchange(c, "GET /s/200 HTTP/1.1\r\nConnection: close\r\n\r\n", got, sizeof got);
  CHECK_EQ_STR(got, "HTTP/1.1 200 OK\r\nDate: D\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n"
                    "Connection: close\r\n\r\nb=200");
  client_close(c);

  /* the server's own answer to a framing error: text/plain, closing */
  c = client_connect(hport, 5);
  exchange(c, "GET /x HTTP/1.1\r\nContent-Length: nope\r\n\r\n", got, sizeof got);
  char *blank = strstr(got, "\r\n\r\n");
  CHECK(blank != NULL);
  if (blank) {
    snprintf(want, sizeof want, "HTTP/1.1 400 Bad Request\r\nDate: D\r\nContent-Length: %zu\r\n"
             "Content-Type: text/plain\r\nConnection: close\r\n\r\n", strlen(blank + 4));
    CHECK_EQ_INT(strncmp(got, want, strlen(want)), 0);
    if (strncmp(got, want, strlen(want)) != 0) fprintf(stderr, "got: %s\nwant: %s\n", got, want);
  }
  client_close(c);

  /* a head too large for its buffer: nothing is written, the connection closes */
  c = client_connect(hport, 5);
  sendstr(c, "GET /s/200/huge HTTP/1.1\r\n\r\n");
  CHECK_EQ_INT(read_bytes(c, 1), 0);
  client_close(c);

  uv_async_send(&hstop);
  pthread_join(hthread, NULL);
  CHECK_EQ_INT(close_rc, 0);
  hs_server_destroy(hsrv);
}

/* Every test shares one server, started before the first test and stopped after the last. */
TEST_MAIN_WITH(start_server, stop_server)
