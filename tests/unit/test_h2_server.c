/*
 * gateway/h2_server driven in process: the server and its clients share one loop; each client is one end of a
 * socketpair whose other end the server adopts. Clients are an nghttp2 client session (tc_*) or raw bytes
 * (rc_*: floods, garbage, HTTP/1.1). Every wait is bounded by a failing deadline; every test ends by shutting
 * the server down and checking the loop closes with no handle left.
 */
#include <nghttp2/nghttp2.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <uv.h>

#include "gateway/h2_server.h"
#include "test.h"

#define DEADLINE_MS 10000

static uv_loop_t loop;
static h2s_server_t *srv;
static int timed_out;
static int srv_done;

/* ---- the test's handler ------------------------------------------------------------------------------------ */

typedef struct hreq {
  uint64_t bytes, sum;
  int ended, why;
} hreq_t;

#define MAX_HELD 256
static h2s_request_t *held_req[MAX_HELD]; /* the requests of H.held */
static struct {
  int n_headers, n_end, n_abort[4], n_data_calls;
  int respond_rc_gone;      /* h2s_respond results for gone streams */
  int defer_gone;           /* answer GONE aborts from a timer */
  h2s_stream_t *held[MAX_HELD];
  int n_held;
} H;

static void hreq_free(h2s_request_t *req) {
  free(req->user);
  req->user = NULL;
}

static void answer(h2s_stream_t *st, h2s_request_t *req, const char *grpc_status) {
  hreq_t *r = req->user;
  char body[96];
  int n = snprintf(body, sizeof body, "n=%llu sum=%llu", (unsigned long long)(r ? r->bytes : 0),
                   (unsigned long long)(r ? r->sum : 0));
  hs_header_t hd[] = {{{"content-type", 12}, {"application/grpc", 16}}};
  hs_header_t tr[] = {{{"grpc-status", 11}, {grpc_status, strlen(grpc_status)}}};
  hreq_free(req);
  int gone = h2s_stream_gone(st);
  int rc = h2s_respond(st, 200, hd, 1, body, (size_t)n, tr, 1);
  if (gone) CHECK_EQ_INT(rc, UV_ECANCELED);
  else CHECK_EQ_INT(rc, 0);
  if (gone) H.respond_rc_gone++;
}

typedef struct later {
  uv_timer_t t;
  h2s_stream_t *st;
  h2s_request_t *req;
} later_t;

static void later_closed(uv_handle_t *h) { free(h->data); }
static void later_fire(uv_timer_t *t) {
  later_t *l = t->data;
  answer(l->st, l->req, "0");
  uv_close((uv_handle_t *)&l->t, later_closed);
}
static void answer_later(h2s_stream_t *st, h2s_request_t *req, uint64_t ms) {
  later_t *l = calloc(1, sizeof *l);
  l->st = st;
  l->req = req;
  uv_timer_init(&loop, &l->t);
  l->t.data = l;
  uv_timer_start(&l->t, later_fire, ms, 0);
}

static int path_is(const h2s_request_t *req, const char *p) {
  return req->path.len == strlen(p) && memcmp(req->path.base, p, req->path.len) == 0;
}

static int on_headers(h2s_stream_t *st, h2s_request_t *req, void *ud) {
  H.n_headers++;
  req->user = calloc(1, sizeof(hreq_t));
  if (path_is(req, "/tonly")) { /* trailers-only: one HEADERS frame with END_STREAM */
    hs_header_t hd[] = {{{"content-type", 12}, {"application/grpc", 16}}, {{"grpc-status", 11}, {"12", 2}}};
    hreq_free(req);
    CHECK_EQ_INT(h2s_respond(st, 200, hd, 2, NULL, 0, NULL, 0), 0);
    return 1;
  }
  return 0;
}

static int on_data(h2s_stream_t *st, h2s_request_t *req, const uint8_t *data, size_t len, void *ud) {
  hreq_t *r = req->user;
  H.n_data_calls++;
  r->bytes += len;
  for (size_t i = 0; i < len; i++) r->sum += data[i];
  return 0;
}

static void on_end(h2s_stream_t *st, h2s_request_t *req, void *ud) {
  H.n_end++;
  ((hreq_t *)req->user)->ended = 1;
  if (path_is(req, "/hold") && H.n_held < MAX_HELD) {
    held_req[H.n_held] = req;
    H.held[H.n_held++] = st;
  } else if (path_is(req, "/defer")) {
    answer_later(st, req, 30);
  } else {
    answer(st, req, "0");
  }
}

static void on_abort(h2s_stream_t *st, h2s_request_t *req, int why, void *ud) {
  if (why >= 1 && why <= 3) H.n_abort[why]++;
  if (why == H2S_ABORT_GONE && H.defer_gone) answer_later(st, req, 20);
  else answer(st, req, why == H2S_ABORT_TIMEOUT ? "4" : why == H2S_ABORT_TOO_BIG ? "8" : "1");
}


/* ---- nghttp2 client ---------------------------------------------------------------------------------------- */

typedef struct tstream {
  int32_t id;
  int status, closed, trailers, headers_end_stream;
  uint32_t close_code;
  char grpc_status[8];
  char body[128];
  size_t body_len;
  const uint8_t *req_body; /* what the client sends */
  size_t req_len, req_off;
  int req_hold;            /* the body never ends: the provider defers after it */
} tstream_t;

typedef struct tclient {
  uv_pipe_t pipe;
  nghttp2_session *ng;
  int eof, handle_closed, goaways;
  uint32_t goaway_code;
  tstream_t st[200];
  int n;
} tclient_t;

static void tc_flush(tclient_t *c);

static void tc_write_done(uv_write_t *w, int status) {
  free(w->data);
  free(w);
}

static void tc_flush(tclient_t *c) {
  if (c->eof || !c->ng) return;
  for (;;) {
    const uint8_t *p;
    ssize_t n = nghttp2_session_mem_send(c->ng, &p);
    if (n <= 0) break;
    uv_write_t *w = malloc(sizeof *w);
    char *copy = malloc((size_t)n);
    memcpy(copy, p, (size_t)n);
    w->data = copy;
    uv_buf_t b = uv_buf_init(copy, (unsigned)n);
    if (uv_write(w, (uv_stream_t *)&c->pipe, &b, 1, tc_write_done) != 0) {
      free(copy);
      free(w);
      break;
    }
  }
}

static char cbuf[64 * 1024];
static void tc_alloc(uv_handle_t *h, size_t s, uv_buf_t *b) { *b = uv_buf_init(cbuf, sizeof cbuf); }

static void tc_closed(uv_handle_t *h) { ((tclient_t *)h->data)->handle_closed = 1; }

static void tc_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b) {
  tclient_t *c = s->data;
  if (n < 0) {
    c->eof = 1;
    uv_close((uv_handle_t *)&c->pipe, tc_closed);
    return;
  }
  if (n > 0 && nghttp2_session_mem_recv(c->ng, (const uint8_t *)b->base, (size_t)n) < 0) {
    c->eof = 1;
    uv_close((uv_handle_t *)&c->pipe, tc_closed);
    return;
  }
  tc_flush(c);
}

static tstream_t *tc_find(tclient_t *c, int32_t id) {
  for (int i = 0; i < c->n; i++)
    if (c->st[i].id == id) return &c->st[i];
  return NULL;
}

static int tc_on_header(nghttp2_session *ng, const nghttp2_frame *f, const uint8_t *name, size_t nl,
                        const uint8_t *value, size_t vl, uint8_t flags, void *ud) {
  tstream_t *t = tc_find(ud, f->hd.stream_id);
  if (!t) return 0;
  if (nl == 7 && memcmp(name, ":status", 7) == 0) t->status = atoi((const char *)value);
  if (nl == 11 && memcmp(name, "grpc-status", 11) == 0) snprintf(t->grpc_status, sizeof t->grpc_status, "%.*s",
                                                                (int)vl, value);
  return 0;
}

static int tc_on_frame_recv(nghttp2_session *ng, const nghttp2_frame *f, void *ud) {
  tclient_t *c = ud;
  if (f->hd.type == NGHTTP2_GOAWAY) {
    c->goaways++;
    c->goaway_code = f->goaway.error_code;
  }
  tstream_t *t = tc_find(c, f->hd.stream_id);
  if (t && f->hd.type == NGHTTP2_HEADERS) {
    if (f->headers.cat == NGHTTP2_HCAT_HEADERS) t->trailers++;
    else if (f->hd.flags & NGHTTP2_FLAG_END_STREAM) t->headers_end_stream = 1;
  }
  return 0;
}

static int tc_on_data(nghttp2_session *ng, uint8_t flags, int32_t id, const uint8_t *data, size_t len, void *ud) {
  tstream_t *t = tc_find(ud, id);
  if (!t) return 0;
  size_t room = sizeof t->body - 1 - t->body_len;
  memcpy(t->body + t->body_len, data, len < room ? len : room);
  t->body_len += len < room ? len : room;
  return 0;
}

static int tc_on_close(nghttp2_session *ng, int32_t id, uint32_t code, void *ud) {
  tstream_t *t = tc_find(ud, id);
  if (t) {
    t->closed = 1;
    t->close_code = code;
  }
  return 0;
}

static ssize_t tc_read_body(nghttp2_session *ng, int32_t id, uint8_t *buf, size_t len, uint32_t *flags,
                            nghttp2_data_source *src, void *ud) {
  tstream_t *t = src->ptr;
  size_t n = t->req_len - t->req_off;
  if (n > len) n = len;
  memcpy(buf, t->req_body + t->req_off, n);
  t->req_off += n;
  if (t->req_off == t->req_len) {
    if (t->req_hold) return n ? (ssize_t)n : NGHTTP2_ERR_DEFERRED;
    *flags |= NGHTTP2_DATA_FLAG_EOF;
  }
  return (ssize_t)n;
}

static tclient_t *tc_new(void) {
  int sv[2];
  CHECK_EQ_INT(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
  CHECK_EQ_INT(h2s_server_adopt_fd(srv, sv[0]), 0);
  tclient_t *c = calloc(1, sizeof *c);
  uv_pipe_init(&loop, &c->pipe, 0);
  c->pipe.data = c;
  uv_pipe_open(&c->pipe, sv[1]);
  nghttp2_session_callbacks *cbs;
  nghttp2_session_callbacks_new(&cbs);
  nghttp2_session_callbacks_set_on_header_callback(cbs, tc_on_header);
  nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, tc_on_frame_recv);
  nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, tc_on_data);
  nghttp2_session_callbacks_set_on_stream_close_callback(cbs, tc_on_close);
  nghttp2_option *opt;
  nghttp2_option_new(&opt);
  nghttp2_option_set_peer_max_concurrent_streams(opt, 1000); /* do not wait for the server's SETTINGS */
  nghttp2_session_client_new2(&c->ng, cbs, c, opt);
  nghttp2_option_del(opt);
  nghttp2_session_callbacks_del(cbs);
  nghttp2_settings_entry iv[] = {{NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, 1 << 20}};
  nghttp2_submit_settings(c->ng, NGHTTP2_FLAG_NONE, iv, 1);
  uv_read_start((uv_stream_t *)&c->pipe, tc_alloc, tc_read);
  return c;
}

/* Submits a POST to path with body (NULL: headers only, with END_STREAM unless hold); returns the stream. */
static tstream_t *tc_request(tclient_t *c, const char *path, const void *body, size_t len, int hold) {
  tstream_t *t = &c->st[c->n++];
  t->req_body = body;
  t->req_len = len;
  t->req_hold = hold;
  nghttp2_nv nv[] = {
      {(uint8_t *)":method", (uint8_t *)"POST", 7, 4, 0},
      {(uint8_t *)":scheme", (uint8_t *)"http", 7, 4, 0},
      {(uint8_t *)":path", (uint8_t *)path, 5, strlen(path), 0},
      {(uint8_t *)":authority", (uint8_t *)"test", 10, 4, 0},
      {(uint8_t *)"content-type", (uint8_t *)"application/grpc", 12, 16, 0},
  };
  nghttp2_data_provider dp = {.source.ptr = t, .read_callback = tc_read_body};
  t->id = nghttp2_submit_request(c->ng, NULL, nv, 5, body || hold ? &dp : NULL, NULL);
  CHECK(t->id > 0);
  tc_flush(c);
  return t;
}

static void tc_free(tclient_t *c) {
  if (!c->handle_closed && !uv_is_closing((uv_handle_t *)&c->pipe)) uv_close((uv_handle_t *)&c->pipe, tc_closed);
  while (!c->handle_closed) uv_run(&loop, UV_RUN_ONCE);
  nghttp2_session_del(c->ng);
  free(c);
}

/* ---- raw client ---------------------------------------------------------------------------------------------- */

typedef struct rclient {
  uv_pipe_t pipe;
  int eof, handle_closed;
  uint8_t in[64 * 1024];
  size_t in_len;
} rclient_t;

static void rc_alloc(uv_handle_t *h, size_t s, uv_buf_t *b) {
  rclient_t *c = h->data;
  if (c->in_len == sizeof c->in) c->in_len = 0; /* keep reading; only the start matters */
  *b = uv_buf_init((char *)c->in + c->in_len, (unsigned)(sizeof c->in - c->in_len));
}
static void rc_closed(uv_handle_t *h) { ((rclient_t *)h->data)->handle_closed = 1; }
static void rc_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b) {
  rclient_t *c = s->data;
  if (n < 0) {
    c->eof = 1;
    uv_close((uv_handle_t *)&c->pipe, rc_closed);
  } else {
    c->in_len += (size_t)n;
  }
}

static rclient_t *rc_new(void) {
  int sv[2];
  CHECK_EQ_INT(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
  CHECK_EQ_INT(h2s_server_adopt_fd(srv, sv[0]), 0);
  rclient_t *c = calloc(1, sizeof *c);
  uv_pipe_init(&loop, &c->pipe, 0);
  c->pipe.data = c;
  uv_pipe_open(&c->pipe, sv[1]);
  uv_read_start((uv_stream_t *)&c->pipe, rc_alloc, rc_read);
  return c;
}

static void rc_send(rclient_t *c, const void *p, size_t n) {
  uv_write_t *w = malloc(sizeof *w);
  char *copy = malloc(n);
  memcpy(copy, p, n);
  w->data = copy;
  uv_buf_t b = uv_buf_init(copy, (unsigned)n);
  CHECK_EQ_INT(uv_write(w, (uv_stream_t *)&c->pipe, &b, 1, tc_write_done), 0);
}

/* Appends one frame to out (at *len). */
static void frame(uint8_t *out, size_t *len, uint8_t type, uint8_t flags, uint32_t id, const void *p, size_t n) {
  uint8_t *o = out + *len;
  o[0] = (uint8_t)(n >> 16);
  o[1] = (uint8_t)(n >> 8);
  o[2] = (uint8_t)n;
  o[3] = type;
  o[4] = flags;
  o[5] = (uint8_t)(id >> 24);
  o[6] = (uint8_t)(id >> 16);
  o[7] = (uint8_t)(id >> 8);
  o[8] = (uint8_t)id;
  if (n) memcpy(o + 9, p, n);
  *len += 9 + n;
}

static void preface(uint8_t *out, size_t *len) {
  memcpy(out + *len, NGHTTP2_CLIENT_MAGIC, NGHTTP2_CLIENT_MAGIC_LEN);
  *len += NGHTTP2_CLIENT_MAGIC_LEN;
  frame(out, len, NGHTTP2_SETTINGS, 0, 0, NULL, 0);
}

/* The error code of the first GOAWAY in what c received, or -1. */
static long rc_goaway(rclient_t *c) {
  size_t off = 0;
  while (off + 9 <= c->in_len) {
    size_t n = ((size_t)c->in[off] << 16) | ((size_t)c->in[off + 1] << 8) | c->in[off + 2];
    if (off + 9 + n > c->in_len) break;
    if (c->in[off + 3] == NGHTTP2_GOAWAY && n >= 8) {
      const uint8_t *p = c->in + off + 9 + 4;
      return (long)(((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3]);
    }
    off += 9 + n;
  }
  return -1;
}

static void rc_free(rclient_t *c) {
  if (!c->handle_closed && !uv_is_closing((uv_handle_t *)&c->pipe)) uv_close((uv_handle_t *)&c->pipe, rc_closed);
  while (!c->handle_closed) uv_run(&loop, UV_RUN_ONCE);
  free(c);
}

/* ---- loop helpers ---------------------------------------------------------------------------------------------- */

static uv_timer_t deadline;
static void on_deadline(uv_timer_t *t) { timed_out = 1; }

/* Runs the loop until cond(arg) holds; a failed check when DEADLINE_MS passes first. */
static int run_until(int (*cond)(void *), void *arg) {
  timed_out = 0;
  uv_timer_start(&deadline, on_deadline, DEADLINE_MS, 0);
  while (!cond(arg) && !timed_out) uv_run(&loop, UV_RUN_ONCE);
  uv_timer_stop(&deadline);
  CHECK(!timed_out);
  return !timed_out;
}

static int st_closed(void *a) { return ((tstream_t *)a)->closed; }
static int rc_eof(void *a) { return ((rclient_t *)a)->eof; }
static int tc_eof(void *a) { return ((tclient_t *)a)->eof; }
static int is_done(void *a) { return srv_done; }
static int headers_at_least(void *a) { return H.n_headers >= *(int *)a; }
static int ends_at_least(void *a) { return H.n_end >= *(int *)a; }
static int data_seen(void *a) { return H.n_data_calls > 0; }
static int gone_answered(void *a) { return H.respond_rc_gone >= *(int *)a; }

static void start(h2s_config_t *extra) {
  memset(&H, 0, sizeof H);
  memset(held_req, 0, sizeof held_req);
  srv_done = 0;
  uv_loop_init(&loop);
  uv_timer_init(&loop, &deadline);
  h2s_config_t cfg = {.name = "test", .on_headers = on_headers, .on_data = on_data, .on_end = on_end,
                      .on_abort = on_abort};
  if (extra) {
    cfg.max_concurrent_streams = extra->max_concurrent_streams;
    cfg.max_body_bytes = extra->max_body_bytes;
    cfg.read_timeout_ms = extra->read_timeout_ms;
    cfg.idle_timeout_ms = extra->idle_timeout_ms;
    cfg.max_connections = extra->max_connections;
  }
  CHECK_EQ_INT(h2s_server_create(&loop, &cfg, &srv), 0);
}

static void on_srv_done(void *ud) { srv_done = 1; }

/* Shuts the server down (clients must be gone or closing) and checks nothing is left on the loop. */
static void finish(void) {
  h2s_server_shutdown(srv, on_srv_done, NULL);
  run_until(is_done, NULL);
  uv_close((uv_handle_t *)&deadline, NULL);
  uv_run(&loop, UV_RUN_DEFAULT);
  CHECK_EQ_INT(uv_loop_close(&loop), 0);
  h2s_server_destroy(srv);
  srv = NULL;
}

/* ---- tests ------------------------------------------------------------------------------------------------------ */

TEST(echo_4mib_body_with_trailers) {
  start(NULL);
  tclient_t *c = tc_new();
  size_t len = 4u << 20;
  uint8_t *body = malloc(len);
  uint64_t sum = 0;
  for (size_t i = 0; i < len; i++) sum += body[i] = (uint8_t)(i * 7);
  tstream_t *t = tc_request(c, "/echo", body, len, 0);
  run_until(st_closed, t);
  char want[96];
  snprintf(want, sizeof want, "n=%zu sum=%llu", len, (unsigned long long)sum);
  CHECK_EQ_INT(t->status, 200);
  CHECK_EQ_STR(t->body, want);
  CHECK_EQ_INT(t->trailers, 1);
  CHECK_EQ_STR(t->grpc_status, "0");
  CHECK_EQ_INT(t->close_code, NGHTTP2_NO_ERROR);
  CHECK_EQ_INT(h2s_server_stats(srv)->streams, 1);
  tc_free(c);
  free(body);
  finish();
}

/* 40 MiB on one connection, past its 32 MiB window: completes only if the server opens the window again as the
 * handler takes the bytes (and for the bytes of a stream it discarded past max_body_bytes). */
TEST(connection_window_reopens) {
  h2s_config_t x = {.max_body_bytes = 6u << 20};
  start(&x);
  tclient_t *c = tc_new();
  size_t len = 4u << 20;
  uint8_t *body = calloc(1, 8u << 20);
  tstream_t *t[10];
  for (int i = 0; i < 10; i++) t[i] = tc_request(c, "/echo", body, i == 0 ? 8u << 20 : len, 0);
  for (int i = 0; i < 10; i++) run_until(st_closed, t[i]);
  CHECK_EQ_STR(t[0]->grpc_status, "8"); /* too big: answered, the rest discarded */
  for (int i = 1; i < 10; i++) CHECK_EQ_STR(t[i]->body, "n=4194304 sum=0");
  tstream_t *t2 = tc_request(c, "/echo", body, len, 0);
  run_until(st_closed, t2);
  CHECK_EQ_STR(t2->body, "n=4194304 sum=0");
  tc_free(c);
  free(body);
  finish();
}

TEST(trailers_only_answer) {
  start(NULL);
  tclient_t *c = tc_new();
  tstream_t *t = tc_request(c, "/tonly", NULL, 0, 0);
  run_until(st_closed, t);
  CHECK_EQ_INT(t->status, 200);
  CHECK_EQ_INT(t->headers_end_stream, 1);
  CHECK_EQ_INT(t->trailers, 0);
  CHECK_EQ_INT(t->body_len, 0);
  CHECK_EQ_STR(t->grpc_status, "12");
  CHECK_EQ_INT(H.n_end, 0); /* answered in on_headers: no on_end */
  /* Answered while the client still sends its body: the answer arrives, then RST_STREAM(NO_ERROR). */
  static const char chunk[1000];
  tstream_t *t2 = tc_request(c, "/tonly", chunk, sizeof chunk, 1);
  run_until(st_closed, t2);
  CHECK_EQ_STR(t2->grpc_status, "12");
  CHECK_EQ_INT(t2->close_code, NGHTTP2_NO_ERROR);
  tc_free(c);
  finish();
}

TEST(deferred_answer) {
  start(NULL);
  tclient_t *c = tc_new();
  tstream_t *t[3];
  for (int i = 0; i < 3; i++) t[i] = tc_request(c, "/defer", "abc", 3, 0);
  for (int i = 0; i < 3; i++) {
    run_until(st_closed, t[i]);
    CHECK_EQ_INT(t[i]->status, 200);
    CHECK_EQ_STR(t[i]->body, "n=3 sum=294");
    CHECK_EQ_STR(t[i]->grpc_status, "0");
  }
  tc_free(c);
  finish();
}

/* 150 streams at once against a limit of 100: 50 refused (REFUSED_STREAM), the 100 others answered. */
TEST(max_concurrent_streams_refuses) {
  h2s_config_t x = {.max_concurrent_streams = 100};
  start(&x);
  tclient_t *c = tc_new();
  tstream_t *t[150];
  for (int i = 0; i < 150; i++) t[i] = tc_request(c, "/hold", "x", 1, 0);
  int want = 100;
  run_until(ends_at_least, &want);
  int refused = 0;
  for (int i = 0; i < 150; i++) {
    if (t[i]->closed) {
      CHECK_EQ_INT(t[i]->close_code, NGHTTP2_REFUSED_STREAM);
      refused++;
    }
  }
  /* The refusals may still be on their way: wait for all 50. */
  for (int i = 100; i < 150; i++) run_until(st_closed, t[i]);
  refused = 0;
  for (int i = 0; i < 150; i++) refused += t[i]->closed && t[i]->close_code == NGHTTP2_REFUSED_STREAM;
  CHECK_EQ_INT(refused, 50);
  CHECK_EQ_INT(H.n_held, 100);
  for (int i = 0; i < H.n_held; i++) {
    answer(H.held[i], held_req[i], "0");
  }
  for (int i = 0; i < 150; i++) {
    run_until(st_closed, t[i]);
    if (t[i]->close_code == NGHTTP2_NO_ERROR) CHECK_EQ_STR(t[i]->body, "n=1 sum=120");
  }
  int ok = 0;
  for (int i = 0; i < 150; i++) ok += t[i]->status == 200;
  CHECK_EQ_INT(ok, 100);
  tc_free(c);
  finish();
}

TEST(client_reset_mid_body) {
  start(NULL);
  H.defer_gone = 1;
  tclient_t *c = tc_new();
  static const char chunk[1000];
  tstream_t *t = tc_request(c, "/echo", chunk, sizeof chunk, 1);
  run_until(data_seen, NULL);
  nghttp2_submit_rst_stream(c->ng, NGHTTP2_FLAG_NONE, t->id, NGHTTP2_CANCEL);
  tc_flush(c);
  int one = 1;
  run_until(gone_answered, &one); /* on_abort(GONE), then the answer from a timer is discarded */
  CHECK_EQ_INT(H.n_abort[H2S_ABORT_GONE], 1);
  CHECK_EQ_INT(H.n_end, 0);
  CHECK_EQ_INT(h2s_server_stats(srv)->streams_reset, 1);
  /* The connection goes on. */
  tstream_t *t2 = tc_request(c, "/echo", "ab", 2, 0);
  run_until(st_closed, t2);
  CHECK_EQ_STR(t2->body, "n=2 sum=195");
  tc_free(c);
  finish();
}

TEST(client_reset_after_end) {
  start(NULL);
  tclient_t *c = tc_new();
  tstream_t *t = tc_request(c, "/hold", "abc", 3, 0);
  int one = 1;
  run_until(ends_at_least, &one);
  nghttp2_submit_rst_stream(c->ng, NGHTTP2_FLAG_NONE, t->id, NGHTTP2_CANCEL);
  tc_flush(c);
  h2s_stream_t *st = H.held[0];
  timed_out = 0;
  uv_timer_start(&deadline, on_deadline, DEADLINE_MS, 0);
  while (!h2s_stream_gone(st) && !timed_out) uv_run(&loop, UV_RUN_ONCE);
  uv_timer_stop(&deadline);
  CHECK(h2s_stream_gone(st));
  CHECK_EQ_INT(H.n_abort[H2S_ABORT_GONE], 0); /* after on_end the handler is not told */
  answer(st, held_req[0], "0");       /* discarded (UV_ECANCELED, checked in answer) */
  CHECK_EQ_INT(H.respond_rc_gone, 1);
  tc_free(c);
  finish();
}

TEST(read_timeout) {
  h2s_config_t x = {.read_timeout_ms = 100};
  start(&x);
  tclient_t *c = tc_new();
  static const char chunk[10];
  tstream_t *t = tc_request(c, "/echo", chunk, sizeof chunk, 1); /* never ends */
  run_until(st_closed, t);
  CHECK_EQ_INT(H.n_abort[H2S_ABORT_TIMEOUT], 1);
  CHECK_EQ_INT(t->status, 200);
  CHECK_EQ_STR(t->grpc_status, "4");
  CHECK_EQ_INT(t->close_code, NGHTTP2_NO_ERROR);
  tc_free(c);
  finish();
}

TEST(max_body_bytes) {
  h2s_config_t x = {.max_body_bytes = 1000};
  start(&x);
  tclient_t *c = tc_new();
  static char big[5000];
  tstream_t *t = tc_request(c, "/echo", big, sizeof big, 0);
  run_until(st_closed, t);
  CHECK_EQ_INT(H.n_abort[H2S_ABORT_TOO_BIG], 1);
  CHECK_EQ_STR(t->grpc_status, "8");
  tstream_t *t2 = tc_request(c, "/echo", big, 1000, 0); /* at the bound: fine */
  run_until(st_closed, t2);
  CHECK_EQ_STR(t2->grpc_status, "0");
  CHECK_EQ_STR(t2->body, "n=1000 sum=0");
  tc_free(c);
  finish();
}

static const uint8_t req_block[] = {0x83, 0x86, 0x84}; /* HPACK: :method POST, :scheme http, :path / */

TEST(rapid_reset_flood) {
  start(NULL);
  rclient_t *r = rc_new();
  tclient_t *good = tc_new();
  size_t cap = 400 * 40, len = 0;
  uint8_t *buf = malloc(cap);
  preface(buf, &len);
  static const uint8_t cancel[4] = {0, 0, 0, NGHTTP2_CANCEL};
  for (uint32_t i = 0; i < 400; i++) {
    frame(buf, &len, NGHTTP2_HEADERS, NGHTTP2_FLAG_END_HEADERS, 2 * i + 1, req_block, sizeof req_block);
    frame(buf, &len, NGHTTP2_RST_STREAM, 0, 2 * i + 1, cancel, 4);
  }
  rc_send(r, buf, len);
  free(buf);
  run_until(rc_eof, r);
  CHECK_EQ_INT(rc_goaway(r), NGHTTP2_ENHANCE_YOUR_CALM);
  CHECK_EQ_INT(h2s_server_stats(srv)->floods, 1);
  CHECK(H.n_headers <= 201);
  tstream_t *t = tc_request(good, "/echo", "a", 1, 0);
  run_until(st_closed, t);
  CHECK_EQ_STR(t->body, "n=1 sum=97");
  rc_free(r);
  tc_free(good);
  finish();
}

TEST(ping_flood) {
  start(NULL);
  rclient_t *r = rc_new();
  size_t len = 0;
  uint8_t *buf = malloc(1000 * 17 + 100);
  preface(buf, &len);
  static const uint8_t opaque[8] = {1, 2, 3, 4, 5, 6, 7, 8};
  for (int i = 0; i < 1000; i++) frame(buf, &len, NGHTTP2_PING, 0, 0, opaque, 8);
  rc_send(r, buf, len);
  free(buf);
  run_until(rc_eof, r);
  CHECK_EQ_INT(rc_goaway(r), NGHTTP2_ENHANCE_YOUR_CALM);
  CHECK_EQ_INT(h2s_server_stats(srv)->floods, 1);
  rc_free(r);
  finish();
}

TEST(garbage_after_preface) {
  start(NULL);
  rclient_t *r = rc_new();
  tclient_t *good = tc_new();
  size_t len = 0;
  uint8_t buf[256];
  preface(buf, &len);
  static const uint8_t bad_hpack[] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
  frame(buf, &len, NGHTTP2_HEADERS, NGHTTP2_FLAG_END_HEADERS | NGHTTP2_FLAG_END_STREAM, 1, bad_hpack,
        sizeof bad_hpack);
  rc_send(r, buf, len);
  run_until(rc_eof, r);
  CHECK_EQ_INT(rc_goaway(r), NGHTTP2_COMPRESSION_ERROR);
  CHECK_EQ_INT(h2s_server_stats(srv)->protocol_errors, 1);
  tstream_t *t = tc_request(good, "/echo", "a", 1, 0);
  run_until(st_closed, t);
  CHECK_EQ_STR(t->body, "n=1 sum=97");
  rc_free(r);
  tc_free(good);
  finish();
}

TEST(http1_request_gets_400) {
  start(NULL);
  rclient_t *r = rc_new();
  static const char req[] = "POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n";
  rc_send(r, req, sizeof req - 1);
  run_until(rc_eof, r);
  r->in[r->in_len < sizeof r->in ? r->in_len : sizeof r->in - 1] = 0;
  CHECK(strncmp((const char *)r->in, "HTTP/1.1 400 ", 13) == 0);
  CHECK_CONTAINS((const char *)r->in, "this port speaks HTTP/2 (gRPC)");
  CHECK_EQ_INT(h2s_server_stats(srv)->protocol_errors, 1);
  rc_free(r);
  finish();
}

TEST(shutdown_with_stream_in_flight) {
  start(NULL);
  tclient_t *c = tc_new();
  tstream_t *t = tc_request(c, "/hold", "abc", 3, 0);
  int one = 1;
  run_until(ends_at_least, &one);
  h2s_server_shutdown(srv, on_srv_done, NULL);
  timed_out = 0;
  uv_timer_start(&deadline, on_deadline, DEADLINE_MS, 0);
  while (c->goaways < 2 && !timed_out) uv_run(&loop, UV_RUN_ONCE); /* the notice, then the final GOAWAY */
  uv_timer_stop(&deadline);
  CHECK_EQ_INT(c->goaways, 2);
  CHECK_EQ_INT(c->goaway_code, NGHTTP2_NO_ERROR);
  CHECK(!srv_done);
  answer(H.held[0], held_req[0], "0");
  run_until(st_closed, t);
  CHECK_EQ_STR(t->body, "n=3 sum=294");
  run_until(is_done, NULL);
  run_until(tc_eof, c);
  tc_free(c);
  uv_close((uv_handle_t *)&deadline, NULL);
  uv_run(&loop, UV_RUN_DEFAULT);
  CHECK_EQ_INT(uv_loop_close(&loop), 0);
  h2s_server_destroy(srv);
}

TEST(idle_timeout_goaway) {
  h2s_config_t x = {.idle_timeout_ms = 100};
  start(&x);
  tclient_t *c = tc_new();
  tstream_t *t = tc_request(c, "/echo", "a", 1, 0);
  run_until(st_closed, t);
  run_until(tc_eof, c);
  CHECK_EQ_INT(c->goaways, 1);
  CHECK_EQ_INT(c->goaway_code, NGHTTP2_NO_ERROR);
  tc_free(c);
  finish();
}

TEST(max_connections_goaway) {
  h2s_config_t x = {.max_connections = 1};
  start(&x);
  tclient_t *a = tc_new();
  tclient_t *b = tc_new();
  run_until(tc_eof, b);
  CHECK_EQ_INT(b->goaways, 1);
  CHECK_EQ_INT(h2s_server_stats(srv)->connections_rejected, 1);
  tstream_t *t = tc_request(a, "/echo", "a", 1, 0);
  run_until(st_closed, t);
  CHECK_EQ_STR(t->body, "n=1 sum=97");
  tc_free(a);
  tc_free(b);
  finish();
}

TEST(abort_closes_everything) {
  start(NULL);
  tclient_t *c = tc_new();
  static const char chunk[10];
  tc_request(c, "/echo", chunk, sizeof chunk, 1); /* open, never ends */
  tc_request(c, "/hold", "a", 1, 0);              /* ended, held */
  int two = 2;
  run_until(headers_at_least, &two);
  int one = 1;
  run_until(ends_at_least, &one);
  h2s_server_shutdown(srv, on_srv_done, NULL);
  h2s_server_abort(srv);
  run_until(is_done, NULL);
  CHECK_EQ_INT(H.n_abort[H2S_ABORT_GONE], 1); /* the open one; the ended one is only gone */
  CHECK(h2s_stream_gone(H.held[0]));
  answer(H.held[0], held_req[0], "0"); /* releases it (and the connection's memory) */
  run_until(tc_eof, c);
  tc_free(c);
  uv_close((uv_handle_t *)&deadline, NULL);
  uv_run(&loop, UV_RUN_DEFAULT);
  CHECK_EQ_INT(uv_loop_close(&loop), 0);
  h2s_server_destroy(srv);
}

static void setup(void) {
  signal(SIGPIPE, SIG_IGN); /* a write to a client that closed: EPIPE, as in the gateway's main */
  setvbuf(stdout, NULL, _IONBF, 0);
}

TEST_MAIN_WITH(setup, test__noop)
