/*
 * libFuzzer driver for the TLS transport (gateway/transport) under the HTTP/1.1 server and the OTLP/HTTP layer, as
 * the ingest listener runs it with server.tls set. The first input byte picks how the rest is delivered:
 *   even: as raw bytes on the wire to a TLS server (a hostile or broken ClientHello, records, alerts, plain HTTP
 *         on the TLS port);
 *   odd:  as plaintext through a real TLS session: an in-process client (gateway/transport too) completes the
 *         handshake, then writes the bytes in pieces whose sizes come from the input, so the server's HTTP parser
 *         gets them through the record layer in arbitrary splits; the server's answers are decrypted and dropped.
 * Checks: no crash, no leak, no sanitizer report, every connection ends (bounded: 50 ms timeouts), every request
 * answered. The key and a self-signed certificate are made once in memory (OpenSSL) and written to a temp dir.
 * Seeds (tests/fuzz/corpus/tls): raw_*: openssl s_client's ClientHello, whole and cut, and plain HTTP on the TLS
 * port; plain_*: seeds of the HTTP corpus (the JS SDK's requests among them) for the plaintext mode.
 */
#include <fcntl.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "gateway/http_server.h"
#include "gateway/log.h"
#include "gateway/otlp_http.h"
#include "gateway/transport.h"

static uv_loop_t loop;
static hs_server_t *srv;
static tls_ctx_t *server_ctx, *client_ctx;

static int on_headers(hs_request_t *req, void *ud) {
  if (otlp_signal_from_path(req->path) < 0) {
    otlp_respond_status(req, OTLP_ENC_PROTOBUF, 404, "unknown path", 0, NULL, 0);
    return 1;
  }
  return 0;
}

static void on_request(hs_request_t *req, void *ud) {
  uint64_t items, res;
  int sig = otlp_signal_from_path(req->path);
  if (otlp_count_items(sig < 0 ? OTLP_TRACES : sig, req->body, req->body_len, &items, &res) == OTLP_OK)
    otlp_respond_success(req, OTLP_ENC_PROTOBUF);
  else
    otlp_respond_status(req, OTLP_ENC_PROTOBUF, 400, "bad protobuf", 0, NULL, 0);
}

static tls_ctx_t *tls_hook(void *ud) { return server_ctx; }

/* A P-256 key and a self-signed certificate for 127.0.0.1, as PEM files in dir. */
static void make_cert(const char *dir, char *cert, char *key, size_t cap) {
  EVP_PKEY *pk = EVP_EC_gen("P-256");
  X509 *x = X509_new();
  if (!pk || !x) abort();
  ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
  X509_gmtime_adj(X509_getm_notBefore(x), -3600);
  X509_gmtime_adj(X509_getm_notAfter(x), 3600L * 24 * 365);
  X509_set_pubkey(x, pk);
  X509_NAME *n = X509_get_subject_name(x);
  X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC, (const unsigned char *)"127.0.0.1", -1, -1, 0);
  X509_set_issuer_name(x, n);
  if (!X509_sign(x, pk, EVP_sha256())) abort();
  snprintf(cert, cap, "%s/cert.pem", dir);
  snprintf(key, cap, "%s/key.pem", dir);
  FILE *f = fopen(cert, "w");
  if (!f || !PEM_write_X509(f, x)) abort();
  fclose(f);
  if (!(f = fopen(key, "w")) || !PEM_write_PrivateKey(f, pk, NULL, NULL, 0, NULL, NULL)) abort();
  fclose(f);
  X509_free(x);
  EVP_PKEY_free(pk);
}

static void setup(void) {
  uv_loop_init(&loop);
  gw_log_setup(GW_LOG_ERROR, GW_LOG_LOGFMT); /* the rate-limited handshake warn lines are not what is tested */
  char dir[] = "/tmp/fuzz_tls.XXXXXX", cert[128], key[128], err[256];
  if (!mkdtemp(dir)) abort();
  make_cert(dir, cert, key, sizeof cert);
  tls_server_opts_t so = {.cert_file = cert, .key_file = key, .min_version = 12, .alpn = "http/1.1"};
  tls_client_opts_t co = {.insecure_skip_verify = 1, .alpn = "http/1.1"};
  if (tls_server_ctx_create(&so, "fuzz", &server_ctx, err, sizeof err) != 0 ||
      tls_client_ctx_create(&co, "fuzz", &client_ctx, err, sizeof err) != 0) {
    fprintf(stderr, "fuzz_tls: %s\n", err);
    abort();
  }
  unlink(cert);
  unlink(key);
  rmdir(dir);
  hs_config_t cfg = {.name = "fuzz", .max_body_bytes = 64 * 1024, .max_connections = 4, .read_timeout_ms = 50,
                     .idle_timeout_ms = 50, .on_headers = on_headers, .on_request = on_request,
                     .tls_ctx = tls_hook};
  if (hs_server_create(&loop, &cfg, &srv) != 0) abort();
}

/* ---- plaintext mode: an in-process TLS client on the other end ---------------------------------------------- */

typedef struct client {
  tp_t tp;
  int done;   /* read EOF or an error */
  int closed; /* close callback ran */
  uv_write_t w;
  uv_shutdown_t sd;
  int writing;
  int shut; /* close_notify + TCP shutdown sent once everything was written: the server sees the end at once */
} client_t;

static char client_buf[65536];
static void c_alloc(uv_handle_t *h, size_t s, uv_buf_t *b) { *b = uv_buf_init(client_buf, sizeof client_buf); }
static void c_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b) {
  client_t *c = s->data;
  if (n < 0) c->done = 1;
}
static void c_written(uv_write_t *w, int status) { ((client_t *)w->data)->writing = 0; }
static void c_closed(uv_handle_t *h) { ((client_t *)h->data)->closed = 1; }
static void c_shut(uv_shutdown_t *r, int status) {}

static void run_plaintext(const uint8_t *data, size_t size, int fd) {
  client_t c;
  memset(&c, 0, sizeof c);
  if (tp_init(&loop, &c.tp) != 0 || uv_tcp_open(&c.tp.tcp, fd) != 0) abort();
  c.tp.tcp.data = &c;
  c.w.data = &c;
  if (tp_start_client(&c.tp, client_ctx, "127.0.0.1", NULL) != 0) abort();
  tp_read_start(&c.tp, c_alloc, c_read);
  size_t off = 0;
  for (int i = 0; i < 20000 && !c.done; i++) {
    if (!c.writing && off < size) {
      size_t n = 1 + data[off] % 97 * 37; /* piece sizes from the input: 1 .. 3553 bytes */
      if (n > size - off) n = size - off;
      uv_buf_t b = uv_buf_init((char *)data + off, (unsigned)n);
      c.writing = 1;
      if (tp_write(&c.w, &c.tp, &b, 1, c_written) != 0) break;
      off += n;
    } else if (!c.writing && !c.shut && tp_handshake_done(&c.tp)) {
      c.shut = 1;
      if (tp_shutdown(&c.sd, &c.tp, c_shut) != 0) break;
    }
    uv_run(&loop, UV_RUN_NOWAIT);
    if (i > 50) usleep(100);
  }
  tp_close(&c.tp, c_closed);
  for (int i = 0; i < 1000 && !c.closed; i++) uv_run(&loop, UV_RUN_NOWAIT);
  if (!c.closed) abort();
}

/* ---- raw mode: the bytes as they come, like fuzz_http ---------------------------------------------------------- */

static void run_raw(const uint8_t *data, size_t size, int fd) {
  fcntl(fd, F_SETFL, O_NONBLOCK);
  size_t off = 0;
  for (int i = 0; i < 100000 && hs_server_stats(srv)->connections_open > 0; i++) {
    if (off < size) {
      ssize_t w = write(fd, data + off, size - off);
      if (w > 0) off += (size_t)w;
      if (off == size) shutdown(fd, SHUT_WR);
    } else if (off == 0) {
      shutdown(fd, SHUT_WR);
      off = 1;
    }
    while (read(fd, client_buf, sizeof client_buf) > 0) {
    }
    uv_run(&loop, UV_RUN_NOWAIT);
    if (i > 50) usleep(100);
  }
  close(fd);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (!srv) setup();
  if (size < 1 || size > 128 * 1024) return 0;
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0) abort();
  int big = 512 * 1024;
  setsockopt(sv[1], SOL_SOCKET, SO_SNDBUF, &big, sizeof big);
  setsockopt(sv[0], SOL_SOCKET, SO_RCVBUF, &big, sizeof big);
  if (hs_server_adopt_fd(srv, sv[0]) != 0) abort();
  if (data[0] & 1) run_plaintext(data + 1, size - 1, sv[1]);
  else run_raw(data + 1, size - 1, sv[1]);
  for (int i = 0; i < 100000 && hs_server_stats(srv)->connections_open > 0; i++) {
    uv_run(&loop, UV_RUN_NOWAIT);
    if (i > 50) usleep(100);
  }
  if (hs_server_stats(srv)->connections_open > 0) abort(); /* a connection that never ends is a bug */
  uv_run(&loop, UV_RUN_NOWAIT);                            /* close callbacks */
  return 0;
}
