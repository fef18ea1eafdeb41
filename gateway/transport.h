/*
 * gateway/transport — the one byte transport under every connection the gateway makes or takes: the HTTP/1.1
 * server (gateway/http_server), the HTTP/2 server (gateway/h2_server), the backend client (gateway/backend) and the
 * health checker (health/check). A tp_t is a TCP stream, plain or TLS (OpenSSL 3 through memory BIOs, on the
 * loop: handshakes, reads and writes never block and never leave the loop thread), with the subset of the
 * uv_stream API those modules use, so none of them grows a second code path:
 *   uv_read_start / uv_read_stop / uv_write / uv_stream_get_write_queue_size / uv_shutdown / uv_close
 *   -> tp_read_start / tp_read_stop / tp_write / tp_write_queue_size / tp_shutdown / tp_close
 * Plain, every call is the libuv call on the embedded uv_tcp_t. With TLS, the callbacks keep libuv's meaning and
 * arguments (the stream argument is (uv_stream_t *)&tp->tcp, so tcp.data finds the owner):
 *   - read_cb gets decrypted bytes, decrypted straight into the buffer alloc_cb gave (no extra copy for the
 *     caller); UV_EOF after the peer's close_notify or TCP EOF; UV_EPROTO when the handshake or the record layer
 *     fails (tp_error() says why: "certificate verify failed: unable to get local issuer certificate", "no
 *     shared cipher", "http request" for a plain HTTP client on a TLS port, "connection reset during handshake",
 *     ...): a reset or EOF during the handshake is UV_EPROTO with TLS_FAIL_RESET, after it socket errors pass
 *     through unchanged (UV_ECONNRESET). With EOF and errors buf->base is NULL (nothing was allocated for them);
 *     nread 0 may come, as from libuv, to hand back an unused buffer. Completing the handshake calls nothing by
 *     itself: read_cb runs with the first data (check tp_handshake_done there, or from a timer);
 *   - tp_write encrypts the buffers at once (the caller may free them when it returns, unlike uv_write: keeping
 *     them until the callback is also fine) and calls cb once the ciphertext was written, or with an error;
 *     writes made before the handshake completes are held (copied) and sent after it, or completed with
 *     UV_EPROTO when it fails, UV_ECANCELED on tp_close (before the close callback). It returns UV_EPIPE after
 *     tp_shutdown and UV_EPROTO after a TLS failure (cb not called, as for libuv's synchronous errors);
 *   - tp_write_queue_size counts bytes not yet handed to the kernel (ciphertext queued + plaintext held);
 *   - tp_shutdown sends close_notify, then shuts the TCP write side down (before the handshake completes: after
 *     it and the held writes). Reading may go on after it.
 * The handshake runs on the first read (server) or on tp_start_client (client: with SNI and host-name
 * verification); reading must be started for it to progress, as for any read.
 *
 * Contexts (tls_ctx_t) are built once from the config on the main thread and shared by every worker loop
 * (OpenSSL's SSL_CTX is thread-safe for that), reference-counted: a reload builds new ones, new connections take
 * the new one, open connections keep theirs until they close.
 */
#ifndef OTLPGW_TRANSPORT_H
#define OTLPGW_TRANSPORT_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

typedef struct tls_ctx tls_ctx_t;

typedef struct tls_server_opts {
  const char *cert_file;      /* PEM chain */
  const char *key_file;
  const char *client_ca_file; /* NULL / "" = no client certificates; else required and verified (mTLS) */
  int min_version;            /* 12 (TLS 1.2) or 13 */
  const char *alpn;           /* protocol this listener speaks: "h2" (gRPC port) or "http/1.1"; NULL = no ALPN */
} tls_server_opts_t;

typedef struct tls_client_opts {
  const char *ca_file;        /* NULL / "" = the system's CA bundle (SSL_CTX_set_default_verify_paths) */
  const char *cert_file;      /* client certificate for mTLS, with key_file; NULL / "" = none */
  const char *key_file;
  int insecure_skip_verify;   /* no peer verification at all (the caller logs a warning once) */
  const char *alpn;           /* e.g. "http/1.1"; NULL = none */
} tls_client_opts_t;

/* Builds a context. A missing, unreadable or mismatched file is an error whose one-line reason names the file
 * ("server.tls.key_file /etc/x/key.pem: does not match the certificate"; what names the config key prefix).
 * Returns 0, or -1 with the reason in err. */
int tls_server_ctx_create(const tls_server_opts_t *o, const char *what, tls_ctx_t **out, char *err, size_t errlen);
int tls_client_ctx_create(const tls_client_opts_t *o, const char *what, tls_ctx_t **out, char *err, size_t errlen);
tls_ctx_t *tls_ctx_ref(tls_ctx_t *c);  /* atomic: any thread */
void tls_ctx_unref(tls_ctx_t *c);      /* NULL is fine */

/* Why handshakes fail, for tls_handshake_failures_total{side,reason}. */
typedef enum {
  TLS_FAIL_PROTOCOL = 0, /* not TLS (plain HTTP on a TLS port), bad records, version or cipher mismatch */
  TLS_FAIL_CERTIFICATE,  /* the peer's certificate did not verify (unknown CA, expired, name mismatch) */
  TLS_FAIL_NO_CERTIFICATE, /* mTLS: the client sent none */
  TLS_FAIL_ALPN,         /* no common application protocol */
  TLS_FAIL_RESET,        /* the connection closed or reset during the handshake */
  TLS_N_FAIL_REASONS
} tls_fail_t;
const char *tls_fail_label(tls_fail_t f); /* "protocol", "certificate", "no_certificate", "alpn", "reset" */

typedef struct tp tp_t;
struct tp {
  uv_tcp_t tcp;       /* first: (uv_stream_t *)&tp->tcp is what the callbacks get; tcp.data is the owner's */
  void *tls;          /* internal TLS state, NULL when plain */
};

/* uv_tcp_init; plain until tp_start_server / tp_start_client. */
int tp_init(uv_loop_t *loop, tp_t *tp);

/* After accept (server) or connect (client), before tp_read_start: TLS on this stream with ctx (referenced for the
 * stream's life). server_name (client): SNI (names only, not IP literals) and the name verified against the
 * certificate (an IP literal is verified as an IP); session: resumption cache the client connections of one
 * backend share (tls_session_cache_*), may be NULL. 0 or UV_ENOMEM. */
int tp_start_server(tp_t *tp, tls_ctx_t *ctx);
typedef struct tls_session_cache tls_session_cache_t;
int tp_start_client(tp_t *tp, tls_ctx_t *ctx, const char *server_name, tls_session_cache_t *session);

int tp_read_start(tp_t *tp, uv_alloc_cb alloc_cb, uv_read_cb read_cb);
int tp_read_stop(tp_t *tp);
int tp_write(uv_write_t *req, tp_t *tp, const uv_buf_t bufs[], unsigned n, uv_write_cb cb);
size_t tp_write_queue_size(const tp_t *tp);
int tp_shutdown(uv_shutdown_t *req, tp_t *tp, uv_shutdown_cb cb);
/* uv_close of the TCP handle; the TLS state is freed before cb runs. */
void tp_close(tp_t *tp, uv_close_cb cb);

int tp_is_tls(const tp_t *tp);
/* "host:port" ("[v6]:port") of the peer, written into out, for log lines; "-" when unknown or not TCP (a socketpair
 * adopted by a test or fuzzer). */
const char *tp_peer_name(const tp_t *tp, char *out, size_t cap);
int tp_handshake_done(const tp_t *tp);     /* 1 when plain */
const char *tp_alpn(const tp_t *tp);       /* the negotiated protocol, "" when none or plain */
const char *tp_error(const tp_t *tp);      /* why the last UV_EPROTO, "" when none */
tls_fail_t tp_fail_reason(const tp_t *tp); /* the same, classified */
int tp_session_reused(const tp_t *tp);     /* client: the handshake resumed a cached session */

/* One resumable session per backend (host:port + SNI) for its pool's connections: set after each verified
 * handshake (never with insecure_skip_verify), offered on the next connect, dropped when a handshake with it
 * fails. Loop-local. Destroy it only after tp_close of every connection given it (their close callbacks need not
 * have run). */
tls_session_cache_t *tls_session_cache_create(void);
void tls_session_cache_destroy(tls_session_cache_t *c);
/* Forgets the cached session: a reload with other verification settings (another CA) must not resume a session
 * that was verified under the old ones. */
void tls_session_cache_clear(tls_session_cache_t *c);

#endif
