/*
 * libFuzzer driver for the HTTP/1.1 server and the OTLP/HTTP layer behind it: each input is written, as
 * one client's byte stream, into one end of a socketpair whose other end the server adopts. The handler
 * runs the same body steps as the gateway (gunzip with a cap, OTLP/JSON transcoded to protobuf, protobuf
 * validation) for every signal. Checks: no crash, no leak, no sanitizer report, and the connection always ends.
 * Seeds (tests/fuzz/corpus/http): hand-written framing cases and the OpenTelemetry JS SDK's own requests
 * (captured by tests/fuzz/capture_sdk_requests.py).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <fcntl.h>

#include "gateway/http_server.h"
#include "gateway/otlp_http.h"
#include "gateway/otlp_json.h"

static uv_loop_t loop;
static hs_server_t *srv;

static int on_headers(hs_request_t *req, void *ud) {
  /* Exercise the early-answer path for some paths, as the gateway does for 404/405/415. */
  if (otlp_signal_from_path(req->path) < 0 && req->path.len % 2) {
    otlp_respond_status(req, OTLP_ENC_PROTOBUF, 404, "unknown path", 0, NULL, 0);
    return 1;
  }
  return 0;
}

static void on_request(hs_request_t *req, void *ud) {
  int sig = otlp_signal_from_path(req->path);
  if (sig < 0) sig = OTLP_TRACES;
  const uint8_t *body = req->body;
  size_t len = req->body_len;
  uint8_t *plain = NULL;
  if (otlp_content_encoding(hs_request_header(req, "Content-Encoding")) == OTLP_CE_GZIP) {
    if (otlp_gunzip(body, len, 1 << 20, &plain, &len) != OTLP_OK) {
      otlp_respond_status(req, OTLP_ENC_JSON, 400, "bad gzip", 0, NULL, 0);
      return;
    }
    body = plain;
  }
  otlp_encoding_t enc = otlp_encoding_from_content_type(hs_request_header(req, "Content-Type")) == OTLP_ENC_JSON
                            ? OTLP_ENC_JSON
                            : OTLP_ENC_PROTOBUF;
  uint8_t *pb = NULL;
  if (enc == OTLP_ENC_JSON) {
    size_t pb_len;
    char err[256];
    if (oj_to_protobuf(sig, body, len, &pb, &pb_len, err, sizeof err) != 0) {
      free(plain);
      otlp_respond_status(req, enc, 400, err, 0, NULL, 0);
      return;
    }
    body = pb;
    len = pb_len;
  }
  uint64_t items, res;
  int rc = otlp_count_items(sig, body, len, &items, &res);
  free(pb);
  free(plain);
  if (rc == OTLP_OK) otlp_respond_success(req, enc);
  else otlp_respond_status(req, enc, 400, "bad protobuf", 0, NULL, 0);
}

static void setup(void) {
  uv_loop_init(&loop);
  hs_config_t cfg = {.name = "fuzz", .max_body_bytes = 64 * 1024, .max_connections = 4, .read_timeout_ms = 50,
                     .idle_timeout_ms = 50, .on_headers = on_headers, .on_request = on_request};
  if (hs_server_create(&loop, &cfg, &srv) != 0) abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (!srv) setup();
  if (size > 128 * 1024) return 0;
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0) abort();
  int big = 512 * 1024;
  setsockopt(sv[1], SOL_SOCKET, SO_SNDBUF, &big, sizeof big);
  setsockopt(sv[0], SOL_SOCKET, SO_RCVBUF, &big, sizeof big);
  fcntl(sv[1], F_SETFL, O_NONBLOCK);
  if (hs_server_adopt_fd(srv, sv[0]) != 0) abort();
  size_t off = 0;
  char sink[65536];
  /* Feed the bytes, half-close, and run the loop until the server has closed its end. Responses are
   * drained so the server never blocks on a full socket. Bounded: timers are 50 ms. */
  for (int i = 0; i < 100000 && hs_server_stats(srv)->connections_open > 0; i++) {
    if (off < size) {
      ssize_t w = write(sv[1], data + off, size - off);
      if (w > 0) off += (size_t)w;
      if (off == size) shutdown(sv[1], SHUT_WR);
    } else if (off == 0 && size == 0) {
      shutdown(sv[1], SHUT_WR);
      off = 1;
    }
    while (read(sv[1], sink, sizeof sink) > 0) {
    }
    uv_run(&loop, UV_RUN_NOWAIT);
    if (i > 50) usleep(100);
  }
  if (hs_server_stats(srv)->connections_open > 0) abort(); /* a connection that never ends is a bug */
  close(sv[1]);
  uv_run(&loop, UV_RUN_NOWAIT); /* close callbacks */
  return 0;
}
