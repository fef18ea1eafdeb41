/*
 * libFuzzer driver for the OTLP/gRPC ingest: gateway/h2_server (nghttp2 framing, HPACK, flow control, limits) and
 * gateway/ingest_grpc (gRPC framing, metadata, status answers) in front of the real gateway/forward and upstream.
 * Each input is written, as one client's byte stream, into one end of a socketpair whose other end the server
 * adopts. The upstream has no backend, so every well-formed call is validated and split (balancer/) on the
 * stand-in ring and then answered UNAVAILABLE: nothing leaves the process. Checks: no crash, no leak, no sanitizer
 * report, the connection always ends, and every call is answered (the forwarder holds nothing afterwards).
 * Seeds (tests/fuzz/corpus/grpc): real client connections (sdk_js_*: the OpenTelemetry JS SDK's gRPC exporters
 * for the three signals, plain and gzip, recorded on the wire) and hand-made frame sequences
 * (tests/fuzz/make_grpc_seeds.py).
 */
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "config/config.h"
#include "gateway/forward.h"
#include "gateway/h2_server.h"
#include "gateway/ingest_grpc.h"
#include "gateway/log.h"
#include "gateway/memory.h"
#include "gateway/upstream.h"

static uv_loop_t loop;
static cfg_t cfg;
static us_set_t *up;
static fw_t *fw;
static ig_t *ig;
static gw_metrics_t metrics;

static void setup(void) {
  uv_loop_init(&loop);
  gw_log_setup(GW_LOG_ERROR, GW_LOG_LOGFMT); /* quiet: the rate-limited warn lines are not what is tested */
  static const char yaml[] = "server:\n  max_request_bytes: 64KiB\n  read_timeout: 50ms\n  idle_timeout: 50ms\n";
  char err[256];
  if (cfg_load_string(&cfg, yaml, sizeof yaml - 1, "fuzz", err, sizeof err) != 0) /* defaults + yaml */
    abort();
  gm_set_limit(&gm_process, 16u << 20);
  if (us_create(&loop, &cfg, &metrics, &up, err, sizeof err) != 0) abort();
  if (!(fw = fw_create(up, &metrics, &cfg))) abort();
  if (ig_create(&loop, fw, &metrics, NULL, &ig) != 0) abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (!ig) setup();
  if (size > 256 * 1024) return 0;
  h2s_server_t *srv = ig_server(ig);
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0) abort();
  int big = 512 * 1024;
  setsockopt(sv[1], SOL_SOCKET, SO_SNDBUF, &big, sizeof big);
  setsockopt(sv[0], SOL_SOCKET, SO_RCVBUF, &big, sizeof big);
  fcntl(sv[1], F_SETFL, O_NONBLOCK);
  if (h2s_server_adopt_fd(srv, sv[0]) != 0) abort();
  size_t off = 0;
  static char sink[65536];
  /* Feed the bytes, half-close, and run the loop until the server has closed its end. Answers are drained so the
   * server never blocks on a full socket. Bounded: the timeouts are 50 ms. */
  for (int i = 0; i < 100000 && h2s_server_stats(srv)->connections_open > 0; i++) {
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
  if (h2s_server_stats(srv)->connections_open > 0) abort(); /* a connection that never ends is a bug */
  close(sv[1]);
  uv_run(&loop, UV_RUN_NOWAIT); /* close callbacks */
  if (fw_in_flight(fw) != 0) abort(); /* every call was answered */
  return 0;
}
