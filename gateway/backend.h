/*
 * gateway/backend — an HTTP/1.1 client for one backend collector: a keep-alive connection pool
 * (max_connections_per_backend), requests written with one writev (caller's iovecs), responses parsed with
 * llhttp, a deadline per request (request_timeout, connect included). New connections take the host's
 * cached address from its health/dns name: nothing is looked up per connection, and only a name without
 * a first answer is waited for (within the requests' deadlines).
 *
 * A request on a reused keep-alive connection that fails before any response byte arrived (the backend
 * closed the idle connection) is retried once on a fresh connection: OTLP exports may be delivered twice
 * (at-least-once), never silently lost.
 *
 * TLS (https:// backends): every connection runs over gateway/transport with the pool's client context, SNI and
 * the verified name server_name, and the pool's session cache (a reconnect resumes the last verified session).
 * Requests are written at once and held by the transport until the handshake is done. A handshake that fails
 * (verification, protocol, a close or reset before it completes) fails the request on that connection with
 * UV_EPROTO, keeps the reason (be_pool_last_tls_error) and tells the pool's owner (be_tls_error_cb) first.
 *
 * Ownership: the iovecs and the bytes they point to must stay valid until the done callback. The callback
 * runs exactly once per accepted be_send, from the loop, never inside be_send.
 */
#ifndef OTLPGW_BACKEND_H
#define OTLPGW_BACKEND_H

#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>
#include <uv.h>

#include "config/config.h"
#include "gateway/transport.h"
#include "health/dns.h"

typedef struct be_pool be_pool_t;

/* A TLS handshake of one of the pool's connections failed: reason classified, error the one-line reason
 * ("certificate verify failed: unable to get local issuer certificate", ...). Runs from the loop, before the
 * request on that connection fails with UV_EPROTO; must not call be_pool_* on this pool. */
typedef void (*be_tls_error_cb)(void *ud, tls_fail_t reason, const char *error);

typedef struct be_pool_config {
  const char *host;            /* for the Host header, and the name the pool resolves when name is NULL; copied */
  dns_name_t *name;            /* host's cached address (health/dns), shared with the health checker: borrowed,
                                * destroy it after the pool. NULL = the pool keeps its own name for host */
  uint16_t port;
  uint32_t max_connections;
  uint64_t request_timeout_ms;
  const cfg_header_t *headers; /* added to every request; copied */
  size_t n_headers;
  const char *path_prefix;     /* prepended to every request's path ("/otlp" + "/v1/traces"); NULL or "" = none;
                                * copied */
  tls_ctx_t *tls;              /* client context for TLS, referenced by the pool; NULL = plaintext */
  const char *server_name;     /* TLS: SNI and the name verified against the certificate; NULL or "" = host;
                                * copied */
  tls_session_cache_t *session_cache; /* TLS resumption, shared with the backend's checker: borrowed, must outlive
                                * the pool's connections (destroy it after the pool and its handles are gone).
                                * NULL = the pool keeps its own */
  be_tls_error_cb on_tls_error; /* may be NULL */
  void *tls_error_ud;
} be_pool_config_t;

/* status: the HTTP status (>= 100), or a negative libuv error (UV_ECONNREFUSED, UV_ETIMEDOUT,
 * UV_ECONNRESET, UV_EOF, UV_ECANCELED, ...). body: the response body (up to 64 KiB kept), valid only during
 * the call. retry_after_s: the response's Retry-After in seconds (delta-seconds form), 0 when absent. */
typedef void (*be_done_cb)(void *ud, int status, const uint8_t *body, size_t body_len, uint32_t retry_after_s);

typedef struct be_stats {
  uint64_t connections_open;
  uint64_t connects;
  uint64_t requests;
  uint64_t retries;       /* requests re-sent after a stale keep-alive connection failed */
  uint64_t queued_bytes;  /* body bytes of requests waiting for a connection */
  uint64_t tls_handshakes; /* completed (verified) TLS handshakes */
  uint64_t tls_resumed;   /* ... of which resumed a cached session */
  uint64_t tls_failures;  /* failed TLS handshakes */
} be_stats_t;

int be_pool_create(uv_loop_t *loop, const be_pool_config_t *cfg, be_pool_t **out);

/* A reloaded config: headers, path_prefix and request_timeout for requests sent from now on (those already queued
 * or in flight keep theirs), max_connections, tls and server_name for connections opened from now on (above a
 * lowered limit, open connections stay; open TLS connections keep their context). cfg's host, port, name,
 * session_cache and on_tls_error are ignored. 0, or UV_ENOMEM (nothing changed). */
int be_pool_update(be_pool_t *p, const be_pool_config_t *cfg);

/* Queues a POST. content_encoding may be NULL. Returns 0 (cb will run) or a negative errno (it won't). */
int be_send(be_pool_t *p, const char *path, const char *content_type, const char *content_encoding,
            const struct iovec *iov, size_t n_iov, be_done_cb cb, void *ud);

const be_stats_t *be_pool_stats(const be_pool_t *p);

/* Why the pool's last failed TLS handshake failed (tp_error's text, or "connection closed during the TLS
 * handshake: ..."), "" when none has failed. Valid until the next failure. */
const char *be_pool_last_tls_error(const be_pool_t *p);

/* Fails every queued and in-flight request now with UV_ECANCELED and closes every connection; the pool
 * stays usable (the backend was marked down: what it held is re-routed by the caller). Callbacks run
 * inside this call; be_send to this pool from them fails with UV_ECANCELED. */
void be_pool_cancel(be_pool_t *p);

/* Fails queued and in-flight requests with UV_ECANCELED, closes every connection, and frees the pool once
 * all handles are closed (after the loop runs). */
void be_pool_destroy(be_pool_t *p);

#endif
