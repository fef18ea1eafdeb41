/*
 * gateway/http_server — an HTTP/1.1 server on libuv + llhttp, shared by the gateway's ingest and telemetry
 * listeners and by bench/otlp-sink.
 *
 * What it does for its user: keep-alive, pipelining (requests are handed out one at a time per connection
 * and answered in order), Content-Length and chunked bodies assembled into one buffer, Expect: 100-continue,
 * limits (header bytes -> 431, body bytes -> 413, connections, an optional memory budget -> 503 before the
 * body is read), a whole-request deadline (read_timeout: a client that trickles bytes gets 408 and is cut
 * off) and an idle deadline between requests. Connections are plain TCP or TLS (gateway/transport, per connection
 * from hs_config_t.tls_ctx), with the same behaviour either way.
 *
 * Ownership: the server owns every hs_request_t. The handler must answer each request it is given exactly
 * once with hs_respond(), now or later from the same loop; the request (and the slices in it) stays valid
 * until then, even if the client disconnects meanwhile (hs_request_gone() tells).
 */
#ifndef OTLPGW_HTTP_SERVER_H
#define OTLPGW_HTTP_SERVER_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <llhttp.h> /* llhttp_method_t: HTTP_GET, HTTP_POST, ... */
#include <uv.h>

#include "gateway/transport.h" /* tls_ctx_t, TLS_N_FAIL_REASONS */

#define HS_MAX_HEADER_BYTES (16 * 1024) /* request line + headers; above -> 431 */
#define HS_MAX_HEADERS 64               /* above -> 431 */
#define HS_LEN_NONE UINT64_MAX          /* no Content-Length and not chunked */
#define HS_LEN_CHUNKED (UINT64_MAX - 1)

typedef struct hs_server hs_server_t;
typedef struct hs_conn hs_conn_t;

typedef struct hs_slice {
  const char *base;
  size_t len;
} hs_slice_t;

typedef struct hs_header {
  hs_slice_t name;
  hs_slice_t value;
} hs_header_t;

typedef struct hs_request {
  int method;              /* llhttp_method_t */
  hs_slice_t path;         /* request target without the query string */
  hs_slice_t query;        /* what follows '?' up to any '#' (without either); len 0 when none */
  hs_header_t headers[HS_MAX_HEADERS];
  size_t n_headers;
  uint64_t content_length; /* value, HS_LEN_CHUNKED or HS_LEN_NONE */
  uint8_t *body;           /* assembled body; owned by the request, valid until hs_respond */
  size_t body_len;
  uint64_t start_ns;       /* uv_hrtime() at the first byte of the request */
  void *user;              /* free for the handler */
} hs_request_t;

typedef struct hs_config {
  const char *name;           /* for logs: "ingest", "telemetry", "sink" */
  uint64_t max_body_bytes;    /* bytes on the wire (after chunk decoding) */
  uint32_t max_connections;   /* 0 = unlimited; above it new connections get 503 and are closed */
  uint64_t read_timeout_ms;   /* whole request: first byte to last body byte; 0 = none */
  uint64_t idle_timeout_ms;   /* between requests on a keep-alive connection; 0 = none */
  /* Called when the headers are complete. Return 0 to go on reading the body, or call hs_respond() and
   * return 1 to answer now (the body, if any, is then discarded or the connection closed). May be NULL. */
  int (*on_headers)(hs_request_t *req, void *ud);
  /* Called with the complete request. Must lead to exactly one hs_respond(). */
  void (*on_request)(hs_request_t *req, void *ud);
  /* Optional: the body of an error the server answers itself (400 bad framing, 408, 413, 431, and 503 when the
   * memory budget refuses a body), called once per such answer. req is the request as far as it was parsed
   * (n_headers counts only complete headers; path may be empty) or NULL. Writes at most cap bytes into out,
   * sets *content_type and returns the length; 0 = the default text/plain message. */
  size_t (*error_body)(const hs_request_t *req, int status, const char *msg, char *out, size_t cap,
                       const char **content_type, void *ud);
  void *ud;
  /* Optional: a connection count shared by several servers (one per worker loop), so max_connections
   * bounds them together; NULL = this server's own count. Updated atomically. */
  atomic_uint_least64_t *shared_connections;
  /* Optional memory budget for what requests hold (e.g. gateway/memory's, shared by every worker's server).
   * mem_reserve(bytes, total, force, mem_ud) is asked for a request's Content-Length once its headers are
   * accepted (after on_headers, before any body byte is read), for each growth of a chunked body's buffer, and
   * by hs_request_reserve; total is what the request holds in all with bytes. It returns 0 to charge them, or
   * non-zero to refuse: a request refused while its body is read is answered 503 with "Retry-After:
   * mem_retry_after_s" (the body made by error_body, which is called as for the server's other errors), the
   * rest of its body is read and discarded, and the connection stays usable. With force != 0 it must charge
   * and return 0. mem_release(bytes, mem_ud) gives back all a request was charged when its body buffer is
   * freed (it is answered, or its connection closes before it reached the handler). NULL = no budget. */
  int (*mem_reserve)(uint64_t bytes, uint64_t total, int force, void *mem_ud);
  void (*mem_release)(uint64_t bytes, void *mem_ud);
  void *mem_ud;
  unsigned mem_retry_after_s; /* 0 = 1 */
  /* The one line an HTTP/2 connection preface gets (a 400 and a rate-limited warn line): what this port speaks
   * and where HTTP/2 is served. NULL: a generic "this port speaks HTTP/1.1". */
  const char *h2_answer;
  /* Optional TLS (gateway/transport): called for each accepted (or adopted) connection, returns the context it
   * runs with, borrowed (the connection takes its own reference, so a context replaced meanwhile, e.g. on
   * SIGHUP, lives as long as a connection uses it), or NULL = plaintext. tls_ud is its argument. With TLS the
   * handshake is bounded like a request (the earlier of read_timeout and idle_timeout that is set); a failed
   * handshake closes only that connection, is counted in tls_handshake_failures and logged (one warn line per
   * 10 s per server); a client that negotiated an ALPN protocol other than "http/1.1" is closed (counted as
   * alpn). NULL hook = plaintext. hs_server_set_tls() sets it after creation. */
  tls_ctx_t *(*tls_ctx)(void *tls_ud);
  void *tls_ud;
} hs_config_t;

typedef struct hs_stats {
  uint64_t connections_open;
  uint64_t connections_accepted;
  uint64_t connections_rejected; /* over max_connections */
  uint64_t requests;             /* complete requests handed to the handler */
  uint64_t framing_errors;       /* 400/408/411/413/431 answered by the server itself */
  uint64_t memory_refused;       /* 503: the memory budget refused the body */
  uint64_t tls_handshake_failures[TLS_N_FAIL_REASONS]; /* by tls_fail_t (hs_config_t.tls_ctx) */
} hs_stats_t;

/* Creates a server on loop; nothing listens yet. Returns 0 or a negative errno (UV_ENOMEM). */
int hs_server_create(uv_loop_t *loop, const hs_config_t *cfg, hs_server_t **out);

/* Sets hs_config_t.tls_ctx / tls_ud of a server created by someone else (gateway/gateway on the ingest front-end's
 * server); applies to the connections accepted from then on. */
void hs_server_set_tls(hs_server_t *s, tls_ctx_t *(*tls_ctx)(void *tls_ud), void *tls_ud);

/* Binds and listens on host:port (port 0 = ephemeral). Returns 0 or a negative libuv error. */
int hs_server_listen(hs_server_t *s, const char *host, uint16_t port);
/* Same, with SO_REUSEPORT (reuseport = HS_LISTEN_REUSEPORT*): several servers (one per worker loop) listen
 * on one port and the kernel balances new connections between them. The first of them passes
 * HS_LISTEN_REUSEPORT_FIRST: it fails with UV_EADDRINUSE when anything already listens on that port (another
 * process of the same user could otherwise silently share it). */
enum { HS_LISTEN_PLAIN = 0, HS_LISTEN_REUSEPORT = 1, HS_LISTEN_REUSEPORT_FIRST = 2 };
int hs_server_listen_ex(hs_server_t *s, const char *host, uint16_t port, int reuseport);

/* The listening part of hs_server_listen_ex, shared with gateway/h2_server: uv_tcp_init_ex's listener on loop (then
 * *initialised = 1: the caller must close it, even when this fails later), data into listener->data, SO_REUSEPORT
 * and the first worker's probe as above, bind, listen with on_conn, and the bound address written as
 * "host:port" into addr (addr_cap bytes) and *bound_port. 0 or a negative libuv error. */
int hs_tcp_listen(uv_loop_t *loop, uv_tcp_t *listener, void *data, int *initialised, const char *host, uint16_t port,
                  int reuseport, uv_connection_cb on_conn, char *addr, size_t addr_cap, uint16_t *bound_port);

/* The bound address as "host:port" (valid after hs_server_listen). */
const char *hs_server_address(const hs_server_t *s);
uint16_t hs_server_port(const hs_server_t *s);

/* Serves one already connected stream socket (e.g. one end of a socketpair) as if it had been accepted.
 * The server takes the fd. For tests and fuzzers, which drive the server without a listener. */
int hs_server_adopt_fd(hs_server_t *s, int fd);

const hs_stats_t *hs_server_stats(const hs_server_t *s);

/* Stops accepting; idle connections are closed, busy ones close after their current response.
 * done(ud) runs once every connection is gone. Then hs_server_destroy() may be called. */
void hs_server_shutdown(hs_server_t *s, void (*done)(void *ud), void *ud);

/* Closes every connection now, answered or not (the shutdown deadline passed). */
void hs_server_abort(hs_server_t *s);

/* Frees the server. Only after the shutdown callback ran (or if it never listened). */
void hs_server_destroy(hs_server_t *s);

/* Answers req. content_type may be NULL (no body type), extra headers may be NULL/0. The status line,
 * headers and body are copied, so the caller keeps ownership of everything it passes. Returns 0 or a
 * negative errno; in every case req is consumed and must not be used again. */
int hs_respond(hs_request_t *req, int status, const char *content_type, const hs_header_t *extra,
               size_t n_extra, const void *body, size_t body_len);

/* Charges bytes more to req's share of the memory budget (hs_config_t.mem_reserve), for memory the handler
 * holds for the request and frees no later than it answers it (a decompressed copy of the body, say); given
 * back with the body. force != 0 charges even over the budget. Returns 0, or -1 when the budget refuses
 * (nothing charged: the handler answers, e.g. 503). Without a budget, 0. */
int hs_request_reserve(hs_request_t *req, uint64_t bytes, int force);

/* Non-zero once the client's connection is gone: the response will be discarded. */
int hs_request_gone(const hs_request_t *req);

/* First header named name (case-insensitive), or NULL. */
const hs_slice_t *hs_request_header(const hs_request_t *req, const char *name);

/* Reason phrase for a status code ("Not Found"). */
const char *hs_status_reason(int status);

/* Case-insensitive comparison of a slice with a C string. */
int hs_slice_eq(hs_slice_t s, const char *lit);

#endif
