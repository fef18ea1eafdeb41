/*
 * gateway/h2_server — an HTTP/2 server (cleartext with prior knowledge, "h2c", or over TLS with ALPN h2: see
 * h2s_config_t.tls_ctx) on libuv + nghttp2, for the gateway's OTLP/gRPC front-end (gateway/ingest_grpc) and
 * bench/otlp-sink --grpc. It knows HTTP/2, not gRPC:
 * framing, HPACK and flow control are nghttp2's; connections, streams, limits, deadlines, floods and shutdown
 * are this module's.
 *
 * What it does for its user: hands out each stream (one request) as its headers complete, then its DATA bytes as
 * they arrive, then its end (END_STREAM); the handler answers with h2s_respond() (headers, optional body,
 * optional trailers, or a trailers-only answer). Limits: SETTINGS_MAX_CONCURRENT_STREAMS (streams past it that
 * the client sent before it acknowledged our SETTINGS are refused by nghttp2 with RST_STREAM REFUSED_STREAM; a
 * client that exceeds it after acknowledging breaks RFC 9113 5.1.2, and nghttp2 closes the connection with a
 * GOAWAY PROTOCOL_ERROR), a header-block bound, a per-stream DATA byte bound
 * (max_body_bytes: past it the handler is told with on_abort(H2S_ABORT_TOO_BIG) and answers), a per-stream
 * deadline from HEADERS to END_STREAM (read_timeout: on_abort(H2S_ABORT_TIMEOUT)), an idle deadline for a
 * connection with no open stream, max_connections (shared between several servers, as gateway/http_server's).
 * Abuse: a connection that floods RST_STREAM (rapid reset), PING, SETTINGS or empty frames past a bound per
 * second, or sends a malformed frame or HPACK block, is closed with a GOAWAY; no other connection notices.
 *
 * Flow control: windows are opened as the handler takes the bytes (they are copied out in on_data), with a
 * stream window of H2S_STREAM_WINDOW and a connection window of H2S_CONNECTION_WINDOW, so a multi-MiB message
 * streams without stop-and-go. Bytes of streams that were answered early, reset or refused are consumed too, so
 * the connection window never leaks.
 *
 * Ownership, as gateway/http_server: the server owns every h2s_stream_t. Once on_headers was called for a stream,
 * the handler must answer it exactly once with h2s_respond(), now or later from the same loop; the stream (its
 * h2s_request_t and the header slices in it) stays valid until then, even after the client reset it or the
 * connection closed (h2s_stream_gone() tells; the answer is then discarded). on_data, on_end and on_abort are
 * never called for a stream after it was answered.
 */
#ifndef OTLPGW_H2_SERVER_H
#define OTLPGW_H2_SERVER_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "gateway/http_server.h" /* hs_slice_t, hs_header_t */

#define H2S_MAX_HEADERS 64                    /* regular headers kept per request; more -> the stream is reset */
#define H2S_MAX_HEADER_BYTES (16 * 1024)      /* name + value bytes of one header block; above -> reset */
#define H2S_STREAM_WINDOW (8u * 1024 * 1024)  /* SETTINGS_INITIAL_WINDOW_SIZE */
#define H2S_CONNECTION_WINDOW (32u * 1024 * 1024)

typedef struct h2s_server h2s_server_t;
typedef struct h2s_stream h2s_stream_t;

typedef struct h2s_request {
  hs_slice_t method;      /* :method */
  hs_slice_t path;        /* :path */
  hs_slice_t authority;   /* :authority (len 0 when absent) */
  hs_slice_t scheme;      /* :scheme */
  hs_header_t headers[H2S_MAX_HEADERS]; /* regular headers, names lower-case as HTTP/2 requires */
  size_t n_headers;
  uint64_t start_ns;      /* uv_hrtime() when the HEADERS frame arrived */
  void *user;             /* free for the handler */
} h2s_request_t;

/* Why a stream is handed to on_abort. */
enum {
  H2S_ABORT_GONE = 1,    /* the client reset the stream, or the connection closed or failed, before the answer */
  H2S_ABORT_TIMEOUT = 2, /* read_timeout passed before END_STREAM */
  H2S_ABORT_TOO_BIG = 3, /* DATA past max_body_bytes: the rest is discarded */
};

typedef struct h2s_config {
  const char *name;                 /* for logs: "grpc", "sink" */
  uint32_t max_concurrent_streams;  /* SETTINGS_MAX_CONCURRENT_STREAMS; 0 = 100 */
  uint64_t max_body_bytes;          /* DATA payload bytes per stream; 0 = unlimited */
  uint32_t max_connections;         /* 0 = unlimited; above it new connections get GOAWAY and are closed */
  uint64_t read_timeout_ms;         /* per stream, HEADERS to END_STREAM; 0 = none */
  uint64_t idle_timeout_ms;         /* a connection with no open stream; 0 = none */
  /* Headers of a new stream are complete. Return 0 to go on (on_data/on_end follow), or call h2s_respond() and
   * return 1 (the stream's DATA is then discarded). */
  int (*on_headers)(h2s_stream_t *st, h2s_request_t *req, void *ud);
  /* DATA bytes of the stream, in order (copy them: they are valid during the call only). Return 0 to go on, or
   * call h2s_respond() and return 1. */
  int (*on_data)(h2s_stream_t *st, h2s_request_t *req, const uint8_t *data, size_t len, void *ud);
  /* END_STREAM: the request is complete. Must lead to exactly one h2s_respond(), now or later. */
  void (*on_end)(h2s_stream_t *st, h2s_request_t *req, void *ud);
  /* The stream ended abnormally before it was answered and before on_end (why: H2S_ABORT_*). The handler must
   * still answer it (h2s_respond): with GONE the answer is discarded and only releases the stream; with TIMEOUT
   * and TOO_BIG it reaches the client. May be NULL: the server then answers ":status 500" itself. After on_end
   * the handler is not told of a reset: its later answer is discarded (h2s_stream_gone() tells). */
  void (*on_abort)(h2s_stream_t *st, h2s_request_t *req, int why, void *ud);
  void *ud;
  atomic_uint_least64_t *shared_connections; /* optional: a count shared by several servers (worker loops) */
  /* Optional TLS, as gateway/http_server's hs_config_t.tls_ctx: the context for each accepted (or adopted)
   * connection, borrowed (the connection takes its own reference), NULL = plaintext (h2c). The handshake is
   * bounded by the earlier of read_timeout and idle_timeout that is set; a failed one closes only that
   * connection, is counted in tls_handshake_failures and logged (one warn line per 10 s per server). The context
   * selects ALPN "h2" (gRPC clients offer it); a client that negotiated another protocol is closed (counted as
   * alpn), one that negotiated none is served. h2s_server_set_tls() sets it after creation. */
  tls_ctx_t *(*tls_ctx)(void *tls_ud);
  void *tls_ud;
} h2s_config_t;

typedef struct h2s_stats {
  uint64_t connections_open;
  uint64_t connections_accepted;
  uint64_t connections_rejected; /* over max_connections */
  uint64_t streams;              /* streams handed to on_headers */
  uint64_t streams_reset;        /* reset by the client before their answer */
  uint64_t protocol_errors;      /* connections closed for a malformed frame / HPACK block, or no HTTP/2 preface
                                  * (an HTTP/1.x request line gets a 400 "this port speaks HTTP/2 (gRPC)") */
  uint64_t floods;               /* connections closed for a flood */
  uint64_t tls_handshake_failures[TLS_N_FAIL_REASONS]; /* by tls_fail_t (h2s_config_t.tls_ctx) */
} h2s_stats_t;

/* Creates a server on loop; nothing listens yet. Returns 0 or a negative errno. */
int h2s_server_create(uv_loop_t *loop, const h2s_config_t *cfg, h2s_server_t **out);

/* Sets h2s_config_t.tls_ctx / tls_ud after creation (gateway/gateway on the gRPC front-end's server); applies to
 * the connections accepted from then on. */
void h2s_server_set_tls(h2s_server_t *s, tls_ctx_t *(*tls_ctx)(void *tls_ud), void *tls_ud);

/* Binds and listens on host:port, with reuseport as gateway/http_server's HS_LISTEN_*. 0 or a libuv error. */
int h2s_server_listen(h2s_server_t *s, const char *host, uint16_t port, int reuseport);
const char *h2s_server_address(const h2s_server_t *s); /* "host:port", valid after listen */
uint16_t h2s_server_port(const h2s_server_t *s);

/* Serves an already connected stream socket (one end of a socketpair); the server takes the fd. For tests and
 * fuzzers. Returns 0 or a negative errno. */
int h2s_server_adopt_fd(h2s_server_t *s, int fd);

const h2s_stats_t *h2s_server_stats(const h2s_server_t *s);

/* Graceful stop: stops accepting, sends every connection a GOAWAY (a shutdown notice, then the final GOAWAY
 * with the last stream id), lets streams in flight be answered, closes each connection once it has no open
 * stream and its output is flushed. done(ud) runs once every connection is gone. */
void h2s_server_shutdown(h2s_server_t *s, void (*done)(void *ud), void *ud);

/* Closes every connection now (the shutdown deadline passed); unanswered streams get on_abort(GONE). */
void h2s_server_abort(h2s_server_t *s);

/* Frees the server; only after the shutdown callback ran (or if it never listened). */
void h2s_server_destroy(h2s_server_t *s);

/* Answers st: ":status" status, the headers (names lower-case), then body (may be NULL/0) as DATA, then the
 * trailers as a trailing HEADERS frame with END_STREAM. With body NULL and n_trailers 0 the answer is one HEADERS
 * frame with END_STREAM (gRPC's trailers-only). Everything is copied. If the client is still sending, the stream
 * is ended with RST_STREAM(NO_ERROR) after the answer. Returns 0 or a negative errno; in every case st is consumed
 * and must not be used again. */
int h2s_respond(h2s_stream_t *st, int status, const hs_header_t *headers, size_t n_headers, const void *body,
                size_t body_len, const hs_header_t *trailers, size_t n_trailers);

/* Non-zero once the stream was reset by the client or its connection is gone: an answer is discarded. */
int h2s_stream_gone(const h2s_stream_t *st);

/* First regular header named name (lower-case), or NULL. */
const hs_slice_t *h2s_request_header(const h2s_request_t *req, const char *name);

#endif
