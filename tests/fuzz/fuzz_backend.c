/*
 * libFuzzer target for gateway/backend's response handling: whatever a backend sends back.
 *
 * Input: byte 0 picks the chunk size the fake backend writes in (1..256), byte 1 its manners (bit 0: reset
 * instead of a clean close at the end; bit 1: answer only after reading the whole request, else right after
 * the head), the rest is what it writes on every connection it accepts before it ends that connection. The
 * client sends two requests (an 8 MiB one, then a small one) through a one-connection pool, so an early answer
 * arrives while the big body is still being written. Every request must
 * get exactly one callback, and the run must end with no handle left (the server always ends each
 * connection, so nothing waits on a timer).
 */
#define _GNU_SOURCE /* memmem */
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <uv.h>

#include "gateway/backend.h"

typedef struct {
  uv_tcp_t server;
  const uint8_t *data;
  size_t len, chunk;
  int reset, read_whole;
  int live;              /* accepted connections not yet closed */
} fake_t;

typedef struct {
  uv_tcp_t tcp;
  fake_t *f;
  size_t off;            /* of data written so far */
  size_t seen;           /* request bytes read */
  size_t need;           /* head + Content-Length, once the head is in */
  int started, ending;
  char head[1024];       /* the first bytes of the request */
  char rbuf[65536];
} fconn_t;

static void fconn_closed(uv_handle_t *h) {
  fconn_t *c = h->data;
  c->f->live--;
  free(c);
}

static void fconn_end(fconn_t *c) {
  if (c->ending) return;
  c->ending = 1;
  if (c->f->reset) {
    struct linger l = {1, 0};
    uv_os_fd_t fd;
    if (uv_fileno((uv_handle_t *)&c->tcp, &fd) == 0) setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
  }
  uv_close((uv_handle_t *)&c->tcp, fconn_closed);
}

static void write_next(fconn_t *c);

static void on_written(uv_write_t *w, int status) {
  fconn_t *c = w->data;
  free(w);
  if (c->ending) return;
  if (status < 0) fconn_end(c);
  else write_next(c);
}

static void write_next(fconn_t *c) {
  fake_t *f = c->f;
  if (c->off >= f->len) {
    fconn_end(c);
    return;
  }
  size_t n = f->len - c->off < f->chunk ? f->len - c->off : f->chunk;
  uv_write_t *w = malloc(sizeof *w);
  w->data = c;
  uv_buf_t b = uv_buf_init((char *)f->data + c->off, (unsigned)n);
  c->off += n;
  if (uv_write(w, (uv_stream_t *)&c->tcp, &b, 1, on_written) != 0) {
    free(w);
    fconn_end(c);
  }
}

static void falloc(uv_handle_t *h, size_t s, uv_buf_t *b) {
  fconn_t *c = h->data;
  *b = uv_buf_init(c->rbuf, sizeof c->rbuf);
}

static void fread_cb(uv_stream_t *s, ssize_t n, const uv_buf_t *b) {
  fconn_t *c = s->data;
  if (n < 0) {
    fconn_end(c);
    return;
  }
  if (c->started || n == 0) return;
  if (c->seen < sizeof c->head) {
    size_t k = sizeof c->head - c->seen < (size_t)n ? sizeof c->head - c->seen : (size_t)n;
    memcpy(c->head + c->seen, b->base, k);
  }
  c->seen += (size_t)n;
  if (!c->need) {
    size_t have = c->seen < sizeof c->head ? c->seen : sizeof c->head;
    char *end = memmem(c->head, have, "\r\n\r\n", 4);
    if (!end) return;
    char *cl = memmem(c->head, (size_t)(end - c->head), "Content-Length: ", 16);
    c->need = (size_t)(end - c->head) + 4 + (cl ? strtoul(cl + 16, NULL, 10) : 0);
  }
  if (c->f->read_whole && c->seen < c->need) return;
  c->started = 1;
  write_next(c);
}

static void on_conn(uv_stream_t *server, int status) {
  fake_t *f = server->data;
  if (status < 0) return;
  fconn_t *c = calloc(1, sizeof *c);
  c->f = f;
  uv_tcp_init(server->loop, &c->tcp);
  c->tcp.data = c;
  f->live++;
  if (uv_accept(server, (uv_stream_t *)&c->tcp) != 0) {
    fconn_end(c);
    return;
  }
  uv_read_start((uv_stream_t *)&c->tcp, falloc, fread_cb);
}

typedef struct {
  int calls[2];
  int done;
} client_t;

static client_t *g_client;

static void on_done(void *ud, int status, const uint8_t *body, size_t len, uint32_t retry_after) {
  int i = (int)(intptr_t)ud;
  g_client->calls[i]++;
  g_client->done++;
  if (status >= 0 && (status < 100 || status > 999)) abort();
  if (len > 64 * 1024) abort();
}

/* As the gateway does (main.c): a peer that resets must not kill the process with SIGPIPE. */
int LLVMFuzzerInitialize(int *argc, char ***argv) {
  signal(SIGPIPE, SIG_IGN);
  return 0;
}

static uint8_t big[8 << 20]; /* more than loopback's socket buffers take at once */
static uint8_t small[64];

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 2) return 0;
  uv_loop_t loop;
  uv_loop_init(&loop);
  fake_t f = {.data = data + 2, .len = size - 2, .chunk = (size_t)data[0] + 1, .reset = data[1] & 1,
              .read_whole = (data[1] >> 1) & 1};
  struct sockaddr_in a;
  uv_ip4_addr("127.0.0.1", 0, &a);
  uv_tcp_init(&loop, &f.server);
  f.server.data = &f;
  if (uv_tcp_bind(&f.server, (const struct sockaddr *)&a, 0) != 0 || uv_listen((uv_stream_t *)&f.server, 8, on_conn)) {
    uv_close((uv_handle_t *)&f.server, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
    return 0;
  }
  struct sockaddr_storage ss;
  int sl = sizeof ss;
  uv_tcp_getsockname(&f.server, (struct sockaddr *)&ss, &sl);
  be_pool_config_t pc = {.host = "127.0.0.1", .port = ntohs(((struct sockaddr_in *)&ss)->sin_port),
                         .max_connections = 1, .request_timeout_ms = 5000};
  be_pool_t *p;
  if (be_pool_create(&loop, &pc, &p) != 0) abort();
  client_t cl = {{0, 0}, 0};
  g_client = &cl;
  struct iovec iov[2] = {{big, sizeof big}, {small, sizeof small}};
  for (int i = 0; i < 2; i++)
    if (be_send(p, "/v1/traces", "application/x-protobuf", NULL, &iov[i], 1, on_done, (void *)(intptr_t)i) != 0)
      abort();
  while (cl.done < 2) uv_run(&loop, UV_RUN_ONCE);
  if (cl.calls[0] != 1 || cl.calls[1] != 1) abort();
  be_pool_destroy(p);
  uv_close((uv_handle_t *)&f.server, NULL);
  while (f.live > 0 || uv_loop_alive(&loop)) uv_run(&loop, UV_RUN_ONCE);
  if (uv_loop_close(&loop) != 0) abort();
  return 0;
}
