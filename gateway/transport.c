/*
 * gateway/transport — plain or TLS byte streams over one uv_tcp_t (see transport.h for the contract).
 *
 * TLS state per connection: an SSL with a BIO_s_mem read BIO (ciphertext from the socket; eof_return -1 so "empty"
 * means retry, 0 after TCP EOF) and a write BIO of our own that appends ciphertext straight into the heap block
 * that then becomes the uv_write request (tp_wreq_t): no copy between OpenSSL and the socket. Everything runs on
 * the loop thread of the stream; nothing blocks.
 *
 * Reads: the TCP handle reads into one thread-local 64 KiB buffer (libuv calls alloc and read back to back), the
 * bytes go into the read BIO, then tls_drive() steps the handshake and decrypts records into the caller's buffers
 * (SSL_peek first, so a buffer is asked for only when plaintext is there), flushing any output after each step.
 * The caller may stop reading or close from inside its read_cb: the loop re-checks after every callback. Bytes that
 * arrived but were not delivered stay in the read BIO / the SSL; tp_read_start delivers them from an idle handle
 * (never from inside tp_read_start itself, as libuv never calls read_cb from uv_read_start).
 *
 * Writes: tp_write encrypts every buffer at once into one tp_wreq_t and uv_writes it; the caller's req gets its
 * callback when that write completes. Before the handshake the plaintext is copied and held (held_t), then
 * encrypted and written in order right after it; a failed handshake completes held writes with UV_EPROTO, a close
 * with UV_ECANCELED.
 */
#include "gateway/transport.h"

#include <arpa/inet.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#define TP_TCP_READ_BUF 65536
#define TP_READ_HINT 65536 /* suggested_size passed to the caller's alloc_cb */

struct tls_ctx {
  SSL_CTX *ssl;
  atomic_int refs;
  int server;
  unsigned char alpn[256]; /* server: the listener's one protocol in ALPN wire format (length-prefixed) */
  unsigned alpn_len;
};

struct tls_session_cache {
  SSL_SESSION *sess; /* one resumable, verified session; NULL = none */
};

/* A ciphertext write: the uv_write_t, whom to tell, and the bytes. Filled by the write BIO, then handed to uv_write
 * as is. */
typedef struct tp_wreq {
  uv_write_t w;
  uv_write_t *user; /* NULL for internal flushes (handshake messages, alerts, tickets, close_notify) */
  uv_write_cb cb;
  size_t len, cap;
  char data[];
} tp_wreq_t;

/* Plaintext written before the handshake completed, copied. */
typedef struct held {
  struct held *next;
  uv_write_t *req;
  uv_write_cb cb;
  size_t len;
  char data[];
} held_t;

typedef struct tls {
  tp_t *tp;
  tls_ctx_t *ctx;
  SSL *ssl;
  BIO *rbio; /* owned by ssl */
  tp_wreq_t *out;
  uv_alloc_cb alloc_cb;
  uv_read_cb read_cb;
  uv_idle_t pump; /* delivers buffered input after tp_read_start; initialised on first use */
  tls_session_cache_t *cache;
  SSL_SESSION *offered; /* compared only, never dereferenced: the session offered from cache */
  held_t *held, **held_tail;
  size_t held_bytes;
  uv_shutdown_t *sd_req; /* tp_shutdown before the handshake completed: done right after it */
  uv_shutdown_cb sd_cb;
  uv_close_cb close_cb;
  int closes_pending;
  int depth; /* tls_drive nesting (tp_read_start from inside read_cb) */
  unsigned server : 1, reading : 1, hs_done : 1, failed : 1, eof_seen : 1, eof_delivered : 1, closing : 1,
      shut : 1, pump_init : 1, reused : 1;
  tls_fail_t reason;
  char alpn[32];
  char err[256];
} tls_t;

/* ---- write BIO: appends into tls->out ----------------------------------------------------------------------- */

static BIO_METHOD *tp__out_method;
static pthread_once_t tp__once = PTHREAD_ONCE_INIT;

/* Makes room for n more bytes in t->out (allocating it when NULL). 0 or -1 (out of memory). */
static int out_reserve(tls_t *t, size_t n) {
  tp_wreq_t *w = t->out;
  size_t len = w ? w->len : 0, cap = w ? w->cap : 0;
  if (w && cap - len >= n) return 0;
  size_t ncap = cap ? cap * 2 : 4096;
  while (ncap - len < n) ncap *= 2;
  tp_wreq_t *nw = realloc(w, sizeof *nw + ncap);
  if (!nw) return -1;
  if (!w) nw->len = 0;
  nw->cap = ncap;
  t->out = nw;
  return 0;
}

static int out_bio_write(BIO *b, const char *data, int len) {
  tls_t *t = BIO_get_data(b);
  if (len <= 0) return 0;
  if (out_reserve(t, (size_t)len) != 0) return -1;
  memcpy(t->out->data + t->out->len, data, (size_t)len);
  t->out->len += (size_t)len;
  return len;
}

static long out_bio_ctrl(BIO *b, int cmd, long num, void *ptr) {
  tls_t *t = BIO_get_data(b);
  switch (cmd) {
  case BIO_CTRL_FLUSH: return 1;
  case BIO_CTRL_WPENDING: return t && t->out ? (long)t->out->len : 0;
  default: return 0;
  }
}

static int out_bio_create(BIO *b) {
  BIO_set_init(b, 1);
  return 1;
}

static void tp__init_method(void) {
  BIO_METHOD *m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "otlpgw-out");
  if (!m) return;
  BIO_meth_set_write(m, out_bio_write);
  BIO_meth_set_ctrl(m, out_bio_ctrl);
  BIO_meth_set_create(m, out_bio_create);
  tp__out_method = m;
}

/* ---- errors --------------------------------------------------------------------------------------------------- */

const char *tls_fail_label(tls_fail_t f) {
  switch (f) {
  case TLS_FAIL_PROTOCOL: return "protocol";
  case TLS_FAIL_CERTIFICATE: return "certificate";
  case TLS_FAIL_NO_CERTIFICATE: return "no_certificate";
  case TLS_FAIL_ALPN: return "alpn";
  case TLS_FAIL_RESET: return "reset";
  default: return "protocol";
  }
}

/* OpenSSL's reason for the first error queued (the root cause), then clears the queue. */
static void ossl_reason(char *buf, size_t len) {
  unsigned long e = ERR_peek_error();
  const char *r = e ? ERR_reason_error_string(e) : NULL;
  if (r) snprintf(buf, len, "%s", r);
  else if (e) ERR_error_string_n(e, buf, len);
  else snprintf(buf, len, "unknown error");
  ERR_clear_error();
}

/* "what.key path: why" into err; why NULL = OpenSSL's reason. Returns -1. */
static int ctx_fail(char *err, size_t errlen, const char *what, const char *key, const char *path, const char *why) {
  char r[256];
  if (!why) {
    ossl_reason(r, sizeof r);
    why = r;
  }
  ERR_clear_error();
  if (err && errlen) snprintf(err, errlen, "%s.%s %s: %s", what ? what : "tls", key, path ? path : "", why);
  return -1;
}

/* Readable-file check before OpenSSL sees the path, for a plain "No such file or directory". */
static int file_check(char *err, size_t errlen, const char *what, const char *key, const char *path) {
  if (access(path, R_OK) != 0) return ctx_fail(err, errlen, what, key, path, strerror(errno));
  return 0;
}

static int nonempty(const char *s) { return s && *s; }

/* Builds ALPN wire format (one protocol) into out; its length, or -1 when the name does not fit. */
static int alpn_wire(const char *p, unsigned char *out, size_t cap) {
  size_t n = strlen(p);
  if (n == 0 || n > 255 || n + 1 > cap) return -1;
  out[0] = (unsigned char)n;
  memcpy(out + 1, p, n);
  return (int)(n + 1);
}

/* ---- contexts ------------------------------------------------------------------------------------------------- */

/* Server ALPN: the listener's one protocol if the client offers it, else no ALPN at all (h2o on_alpn_select): the
 * handshake goes on and the application protocol layer decides what to do with such a client. */
static int alpn_select(SSL *ssl, const unsigned char **out, unsigned char *outlen, const unsigned char *in,
                       unsigned inlen, void *arg) {
  tls_ctx_t *c = arg;
  unsigned char *sel = NULL;
  unsigned char sel_len = 0;
  if (c->alpn_len == 0) return SSL_TLSEXT_ERR_NOACK;
  if (SSL_select_next_proto(&sel, &sel_len, c->alpn, c->alpn_len, in, inlen) != OPENSSL_NPN_NEGOTIATED)
    return SSL_TLSEXT_ERR_NOACK;
  *out = sel;
  *outlen = sel_len;
  return SSL_TLSEXT_ERR_OK;
}

static int use_cert_key(SSL_CTX *s, const char *what, const char *cert, const char *key, char *err, size_t errlen) {
  if (file_check(err, errlen, what, "cert_file", cert) != 0) return -1;
  if (SSL_CTX_use_certificate_chain_file(s, cert) != 1) return ctx_fail(err, errlen, what, "cert_file", cert, NULL);
  if (file_check(err, errlen, what, "key_file", key) != 0) return -1;
  if (SSL_CTX_use_PrivateKey_file(s, key, SSL_FILETYPE_PEM) != 1) {
    unsigned long e = ERR_peek_error();
    if (ERR_GET_LIB(e) == ERR_LIB_X509 && ERR_GET_REASON(e) == X509_R_KEY_VALUES_MISMATCH)
      return ctx_fail(err, errlen, what, "key_file", key, "does not match the certificate");
    return ctx_fail(err, errlen, what, "key_file", key, NULL);
  }
  if (SSL_CTX_check_private_key(s) != 1)
    return ctx_fail(err, errlen, what, "key_file", key, "does not match the certificate");
  return 0;
}

static tls_ctx_t *ctx_new(SSL_CTX *s, int server) {
  tls_ctx_t *c = calloc(1, sizeof *c);
  if (!c) return NULL;
  c->ssl = s;
  c->server = server;
  atomic_init(&c->refs, 1);
  return c;
}

int tls_server_ctx_create(const tls_server_opts_t *o, const char *what, tls_ctx_t **out, char *err, size_t errlen) {
  *out = NULL;
  if (!nonempty(o->cert_file)) return ctx_fail(err, errlen, what, "cert_file", "", "required");
  if (!nonempty(o->key_file)) return ctx_fail(err, errlen, what, "key_file", "", "required");
  pthread_once(&tp__once, tp__init_method);
  ERR_clear_error();
  SSL_CTX *s = SSL_CTX_new(TLS_server_method());
  tls_ctx_t *c = s ? ctx_new(s, 1) : NULL;
  if (!c) {
    SSL_CTX_free(s);
    if (err && errlen) snprintf(err, errlen, "%s: out of memory", what ? what : "tls");
    return -1;
  }
  SSL_CTX_set_min_proto_version(s, o->min_version == 13 ? TLS1_3_VERSION : TLS1_2_VERSION);
  /* A TCP EOF without close_notify reads as EOF (HTTP frames its own messages); no renegotiation. */
  SSL_CTX_set_options(s, SSL_OP_IGNORE_UNEXPECTED_EOF | SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE);
  SSL_CTX_set_num_tickets(s, 1); /* clients keep one session per backend */
  /* Needed for resumption when client certificates are verified; harmless otherwise. */
  SSL_CTX_set_session_id_context(s, (const unsigned char *)"otlpgw", 6);
  if (use_cert_key(s, what, o->cert_file, o->key_file, err, errlen) != 0) goto fail;
  if (nonempty(o->client_ca_file)) {
    if (file_check(err, errlen, what, "client_ca_file", o->client_ca_file) != 0) goto fail;
    if (SSL_CTX_load_verify_locations(s, o->client_ca_file, NULL) != 1) {
      ctx_fail(err, errlen, what, "client_ca_file", o->client_ca_file, NULL);
      goto fail;
    }
    STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(o->client_ca_file);
    if (!names) {
      ctx_fail(err, errlen, what, "client_ca_file", o->client_ca_file, NULL);
      goto fail;
    }
    SSL_CTX_set_client_CA_list(s, names);
    SSL_CTX_set_verify(s, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
  }
  if (nonempty(o->alpn)) {
    int n = alpn_wire(o->alpn, c->alpn, sizeof c->alpn);
    if (n < 0) {
      if (err && errlen) snprintf(err, errlen, "%s: bad ALPN protocol \"%s\"", what ? what : "tls", o->alpn);
      goto fail;
    }
    c->alpn_len = (unsigned)n;
    SSL_CTX_set_alpn_select_cb(s, alpn_select, c);
  }
  ERR_clear_error();
  *out = c;
  return 0;
fail:
  tls_ctx_unref(c);
  return -1;
}

/* Client: keeps the new session in the connection's cache, only from a verified peer. Returns 1 when it kept a
 * reference to sess. */
static int new_session_cb(SSL *ssl, SSL_SESSION *sess) {
  tls_t *t = SSL_get_app_data(ssl);
  if (!t || !t->cache || t->closing || t->failed) return 0;
  if (SSL_get_verify_mode(ssl) == SSL_VERIFY_NONE || SSL_get_verify_result(ssl) != X509_V_OK) return 0;
  if (!SSL_SESSION_is_resumable(sess)) return 0;
  if (t->cache->sess) SSL_SESSION_free(t->cache->sess);
  t->cache->sess = sess;
  return 1;
}

int tls_client_ctx_create(const tls_client_opts_t *o, const char *what, tls_ctx_t **out, char *err, size_t errlen) {
  *out = NULL;
  pthread_once(&tp__once, tp__init_method);
  ERR_clear_error();
  SSL_CTX *s = SSL_CTX_new(TLS_client_method());
  tls_ctx_t *c = s ? ctx_new(s, 0) : NULL;
  if (!c) {
    SSL_CTX_free(s);
    if (err && errlen) snprintf(err, errlen, "%s: out of memory", what ? what : "tls");
    return -1;
  }
  SSL_CTX_set_min_proto_version(s, TLS1_2_VERSION);
  SSL_CTX_set_options(s, SSL_OP_IGNORE_UNEXPECTED_EOF | SSL_OP_NO_RENEGOTIATION);
  if (o->insecure_skip_verify) {
    SSL_CTX_set_verify(s, SSL_VERIFY_NONE, NULL);
  } else {
    SSL_CTX_set_verify(s, SSL_VERIFY_PEER, NULL);
    if (nonempty(o->ca_file)) {
      if (file_check(err, errlen, what, "ca_file", o->ca_file) != 0) goto fail;
      if (SSL_CTX_load_verify_locations(s, o->ca_file, NULL) != 1) {
        ctx_fail(err, errlen, what, "ca_file", o->ca_file, NULL);
        goto fail;
      }
    } else if (SSL_CTX_set_default_verify_paths(s) != 1) {
      ctx_fail(err, errlen, what, "ca_file", "(system default)", NULL);
      goto fail;
    }
  }
  if (nonempty(o->cert_file) || nonempty(o->key_file)) {
    if (!nonempty(o->cert_file)) {
      ctx_fail(err, errlen, what, "cert_file", "", "required with key_file");
      goto fail;
    }
    if (!nonempty(o->key_file)) {
      ctx_fail(err, errlen, what, "key_file", "", "required with cert_file");
      goto fail;
    }
    if (use_cert_key(s, what, o->cert_file, o->key_file, err, errlen) != 0) goto fail;
  }
  if (nonempty(o->alpn)) {
    int n = alpn_wire(o->alpn, c->alpn, sizeof c->alpn);
    if (n < 0 || SSL_CTX_set_alpn_protos(s, c->alpn, (unsigned)n) != 0) { /* 0 is success here */
      if (err && errlen) snprintf(err, errlen, "%s: bad ALPN protocol \"%s\"", what ? what : "tls", o->alpn);
      goto fail;
    }
    c->alpn_len = (unsigned)n;
  }
  SSL_CTX_set_session_cache_mode(s, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
  SSL_CTX_sess_set_new_cb(s, new_session_cb);
  ERR_clear_error();
  *out = c;
  return 0;
fail:
  tls_ctx_unref(c);
  return -1;
}

tls_ctx_t *tls_ctx_ref(tls_ctx_t *c) {
  if (c) atomic_fetch_add_explicit(&c->refs, 1, memory_order_relaxed);
  return c;
}

void tls_ctx_unref(tls_ctx_t *c) {
  if (!c) return;
  if (atomic_fetch_sub_explicit(&c->refs, 1, memory_order_acq_rel) != 1) return;
  SSL_CTX_free(c->ssl);
  free(c);
}

tls_session_cache_t *tls_session_cache_create(void) { return calloc(1, sizeof(tls_session_cache_t)); }

void tls_session_cache_clear(tls_session_cache_t *c) {
  if (!c || !c->sess) return;
  SSL_SESSION_free(c->sess);
  c->sess = NULL;
}

void tls_session_cache_destroy(tls_session_cache_t *c) {
  if (!c) return;
  tls_session_cache_clear(c);
  free(c);
}

/* ---- connection state ----------------------------------------------------------------------------------------- */

static uv_stream_t *stream_of(tls_t *t) { return (uv_stream_t *)&t->tp->tcp; }

static int tls_new(tp_t *tp, tls_ctx_t *ctx, int server) {
  if (tp->tls || !ctx) return UV_EINVAL;
  if (!tp__out_method) return UV_ENOMEM;
  tls_t *t = calloc(1, sizeof *t);
  if (!t) return UV_ENOMEM;
  t->ssl = SSL_new(ctx->ssl);
  t->rbio = BIO_new(BIO_s_mem());
  BIO *wbio = BIO_new(tp__out_method);
  if (!t->ssl || !t->rbio || !wbio) {
    SSL_free(t->ssl);
    BIO_free(t->rbio);
    BIO_free(wbio);
    free(t);
    ERR_clear_error();
    return UV_ENOMEM;
  }
  BIO_set_mem_eof_return(t->rbio, -1);
  BIO_set_data(wbio, t);
  SSL_set_bio(t->ssl, t->rbio, wbio);
  SSL_set_app_data(t->ssl, t);
  t->tp = tp;
  t->ctx = tls_ctx_ref(ctx);
  t->server = server != 0;
  t->held_tail = &t->held;
  tp->tls = t;
  return 0;
}

static void wreq_done(uv_write_t *w, int status) {
  tp_wreq_t *r = (tp_wreq_t *)w;
  uv_write_t *user = r->user;
  uv_write_cb cb = r->cb;
  free(r);
  if (user && cb) cb(user, status);
}

/* Hands the ciphertext in t->out to uv_write, with user/cb told when it completes. With a user request the write
 * is made even when empty (its callback must come). 0 or libuv's error (the request's callback will not run). */
static int flush(tls_t *t, uv_write_t *user, uv_write_cb cb) {
  tp_wreq_t *w = t->out;
  if (!w || w->len == 0) {
    if (!user) return 0;
    if (!w && out_reserve(t, 0) != 0) return UV_ENOMEM;
    w = t->out;
  }
  t->out = NULL;
  w->user = user;
  w->cb = cb;
  uv_buf_t b = uv_buf_init(w->data, (unsigned)w->len);
  int rc = uv_write(&w->w, stream_of(t), &b, 1, wreq_done);
  if (rc != 0) free(w);
  return rc;
}

/* Encrypts bufs into t->out (reserving once for all of it), 0 or UV_EPROTO / UV_ENOMEM. */
static int encrypt(tls_t *t, const uv_buf_t bufs[], unsigned n) {
  size_t total = 0;
  for (unsigned i = 0; i < n; i++) total += bufs[i].len;
  if (total && out_reserve(t, total + (total / 16384 + 1) * 64) != 0) return UV_ENOMEM;
  for (unsigned i = 0; i < n; i++) {
    if (bufs[i].len == 0) continue;
    size_t written = 0;
    ERR_clear_error();
    if (SSL_write_ex(t->ssl, bufs[i].base, bufs[i].len, &written) != 1 || written != bufs[i].len) {
      ERR_clear_error();
      return UV_EPROTO;
    }
  }
  return 0;
}

/* Completes the held writes and a pending shutdown with status (the list is detached first: a callback may close). */
static void complete_held(tls_t *t, int status) {
  held_t *h = t->held;
  t->held = NULL;
  t->held_tail = &t->held;
  t->held_bytes = 0;
  while (h) {
    held_t *next = h->next;
    if (h->cb) h->cb(h->req, status);
    free(h);
    h = next;
  }
  if (t->sd_req) {
    uv_shutdown_t *r = t->sd_req;
    t->sd_req = NULL;
    if (t->sd_cb) t->sd_cb(r, status);
  }
}

static int do_shutdown(tls_t *t, uv_shutdown_t *req, uv_shutdown_cb cb) {
  if (!t->failed) {
    ERR_clear_error();
    SSL_shutdown(t->ssl); /* 0: close_notify sent, the peer's not yet seen; the peer's may still be read */
    ERR_clear_error();
    flush(t, NULL, NULL);
  }
  return uv_shutdown(req, stream_of(t), cb);
}

/* The handshake completed: note what was negotiated, send what was written meanwhile, then a pending shutdown. */
static void handshake_done(tls_t *t) {
  const unsigned char *p = NULL;
  unsigned len = 0;
  t->hs_done = 1;
  t->reused = SSL_session_reused(t->ssl) != 0;
  SSL_get0_alpn_selected(t->ssl, &p, &len);
  if (p && len < sizeof t->alpn) {
    memcpy(t->alpn, p, len);
    t->alpn[len] = 0;
  }
  flush(t, NULL, NULL); /* the client's Finished, the server's tickets */
  held_t *h = t->held;
  t->held = NULL;
  t->held_tail = &t->held;
  t->held_bytes = 0;
  while (h) {
    held_t *next = h->next;
    uv_buf_t b = uv_buf_init(h->data, (unsigned)h->len);
    int rc = encrypt(t, &b, 1);
    if (rc == 0) rc = flush(t, h->req, h->cb);
    else flush(t, NULL, NULL);
    if (rc != 0 && h->cb) h->cb(h->req, rc);
    free(h);
    h = next;
  }
  if (t->sd_req && !t->closing) {
    uv_shutdown_t *r = t->sd_req;
    uv_shutdown_cb cb = t->sd_cb;
    t->sd_req = NULL;
    int rc = do_shutdown(t, r, cb);
    if (rc != 0 && cb) cb(r, rc);
  }
}

/* Classifies the failure from OpenSSL's error queue (then cleared) into t->reason / t->err. */
static void classify(tls_t *t, int ssl_err) {
  unsigned long e = ERR_peek_error();
  int reason = ERR_GET_LIB(e) == ERR_LIB_SSL ? ERR_GET_REASON(e) : 0;
  t->reason = TLS_FAIL_PROTOCOL;
  if (!e) {
    ERR_clear_error();
    if (t->eof_seen || ssl_err == SSL_ERROR_SYSCALL || ssl_err == SSL_ERROR_ZERO_RETURN) {
      t->reason = TLS_FAIL_RESET;
      snprintf(t->err, sizeof t->err, "connection closed during handshake");
    } else {
      snprintf(t->err, sizeof t->err, "TLS error %d", ssl_err);
    }
    return;
  }
  switch (reason) {
  case SSL_R_CERTIFICATE_VERIFY_FAILED:
    t->reason = TLS_FAIL_CERTIFICATE;
    snprintf(t->err, sizeof t->err, "certificate verify failed: %s",
             X509_verify_cert_error_string(SSL_get_verify_result(t->ssl)));
    ERR_clear_error();
    return;
  case SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE:
  case SSL_R_TLSV13_ALERT_CERTIFICATE_REQUIRED: t->reason = TLS_FAIL_NO_CERTIFICATE; break;
  case SSL_R_SSLV3_ALERT_BAD_CERTIFICATE:
  case SSL_R_SSLV3_ALERT_UNSUPPORTED_CERTIFICATE:
  case SSL_R_SSLV3_ALERT_CERTIFICATE_REVOKED:
  case SSL_R_SSLV3_ALERT_CERTIFICATE_EXPIRED:
  case SSL_R_SSLV3_ALERT_CERTIFICATE_UNKNOWN:
  case SSL_R_TLSV1_ALERT_UNKNOWN_CA:
  case SSL_R_TLSV1_ALERT_ACCESS_DENIED:
  case SSL_R_TLSV1_BAD_CERTIFICATE_STATUS_RESPONSE: t->reason = TLS_FAIL_CERTIFICATE; break;
  case SSL_R_NO_APPLICATION_PROTOCOL:
  case SSL_R_TLSV1_ALERT_NO_APPLICATION_PROTOCOL: t->reason = TLS_FAIL_ALPN; break;
  case SSL_R_UNEXPECTED_EOF_WHILE_READING: t->reason = TLS_FAIL_RESET; break;
  default: break;
  }
  ossl_reason(t->err, sizeof t->err);
}

/* A handshake or record-layer failure: flush the alert, forget the session it was offered, fail what waits, tell
 * the reader UV_EPROTO (once). */
static void tls_fail(tls_t *t) {
  t->failed = 1;
  flush(t, NULL, NULL);
  if (t->cache && t->offered && t->cache->sess == t->offered && !t->hs_done) {
    SSL_SESSION_free(t->cache->sess);
    t->cache->sess = NULL;
  }
  t->offered = NULL;
  uv_read_stop(stream_of(t));
  complete_held(t, UV_EPROTO);
  if (t->reading && !t->closing) {
    t->reading = 0;
    uv_buf_t b = uv_buf_init(NULL, 0);
    t->read_cb(stream_of(t), UV_EPROTO, &b);
  }
}

static void pump_stop(tls_t *t) {
  if (t->pump_init) uv_idle_stop(&t->pump);
}

static void deliver_eof(tls_t *t) {
  t->eof_delivered = 1;
  t->reading = 0; /* as libuv after UV_EOF */
  uv_read_stop(stream_of(t));
  pump_stop(t);
  uv_buf_t b = uv_buf_init(NULL, 0);
  t->read_cb(stream_of(t), UV_EOF, &b);
}

/* One step with the bytes at hand: the handshake, then decrypted records to the reader while it reads, then any
 * output flushed. Re-entrant from the reader's callbacks (only the outermost call loops). */
static void tls_drive(tls_t *t) {
  if (t->failed || t->closing || t->depth > 0) return;
  t->depth++;
  if (!t->hs_done) {
    ERR_clear_error();
    int r = SSL_do_handshake(t->ssl);
    if (r == 1) {
      handshake_done(t);
    } else {
      int e = SSL_get_error(t->ssl, r);
      if (e == SSL_ERROR_WANT_READ && !t->eof_seen) {
        flush(t, NULL, NULL); /* always flush before waiting for input */
        goto out;
      }
      classify(t, e);
      if (t->eof_seen && t->reason == TLS_FAIL_PROTOCOL && e == SSL_ERROR_WANT_READ) t->reason = TLS_FAIL_RESET;
      tls_fail(t);
      goto out;
    }
  }
  while (t->reading && !t->closing && !t->failed && !t->eof_delivered) {
    char c;
    int n;
    ERR_clear_error();
    if (SSL_pending(t->ssl) == 0 && (n = SSL_peek(t->ssl, &c, 1)) <= 0) {
      int e = SSL_get_error(t->ssl, n);
      if (e == SSL_ERROR_WANT_READ && !t->eof_seen) break;
      if (e == SSL_ERROR_ZERO_RETURN || (e == SSL_ERROR_WANT_READ && t->eof_seen)) {
        ERR_clear_error();
        flush(t, NULL, NULL);
        deliver_eof(t);
        break;
      }
      classify(t, e);
      tls_fail(t);
      break;
    }
    uv_buf_t b = uv_buf_init(NULL, 0);
    t->alloc_cb((uv_handle_t *)stream_of(t), TP_READ_HINT, &b);
    if (!b.base || b.len == 0) {
      t->read_cb(stream_of(t), UV_ENOBUFS, &b);
      continue;
    }
    size_t got = 0;
    ERR_clear_error();
    if (SSL_read_ex(t->ssl, b.base, b.len, &got) != 1) { /* not expected after a successful peek */
      int e = SSL_get_error(t->ssl, 0);
      if (e != SSL_ERROR_WANT_READ) classify(t, e);
      t->read_cb(stream_of(t), 0, &b); /* gives the buffer back */
      if (e != SSL_ERROR_WANT_READ && !t->failed) tls_fail(t);
      continue;
    }
    t->read_cb(stream_of(t), (ssize_t)got, &b);
  }
  if (!t->closing) flush(t, NULL, NULL); /* tickets, key updates, alerts */
out:
  t->depth--;
}

static _Thread_local char tp__rbuf[TP_TCP_READ_BUF];

static void tcp_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  buf->base = tp__rbuf;
  buf->len = sizeof tp__rbuf;
}

static void tcp_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
  tp_t *tp = (tp_t *)s;
  tls_t *t = tp->tls;
  if (!t || t->closing || t->failed) return;
  if (nread > 0) {
    if (BIO_write(t->rbio, buf->base, (int)nread) != (int)nread) {
      ERR_clear_error();
      snprintf(t->err, sizeof t->err, "out of memory");
      t->reason = TLS_FAIL_PROTOCOL;
      tls_fail(t);
      return;
    }
    tls_drive(t);
    return;
  }
  if (nread == 0) return;
  if (nread == UV_EOF) {
    t->eof_seen = 1;
    BIO_set_mem_eof_return(t->rbio, 0);
    uv_read_stop(s);
    tls_drive(t);
    return;
  }
  /* a socket error */
  uv_read_stop(s);
  if (!t->hs_done) {
    t->reason = TLS_FAIL_RESET;
    snprintf(t->err, sizeof t->err, "connection %s during handshake", nread == UV_ECONNRESET ? "reset" : "failed");
    if (nread != UV_ECONNRESET) {
      size_t l = strlen(t->err);
      snprintf(t->err + l, sizeof t->err - l, " (%s)", uv_strerror((int)nread));
    }
    tls_fail(t);
    return;
  }
  if (t->reading) {
    t->reading = 0;
    uv_buf_t b = uv_buf_init(NULL, 0);
    t->read_cb(s, nread, &b);
  }
}

static int has_input(tls_t *t) {
  return SSL_has_pending(t->ssl) || BIO_ctrl_pending(t->rbio) > 0 || (t->eof_seen && !t->eof_delivered);
}

static void pump_cb(uv_idle_t *h) {
  tls_t *t = h->data;
  uv_idle_stop(h);
  if (t->reading) tls_drive(t);
}

/* ---- the API -------------------------------------------------------------------------------------------------- */

int tp_init(uv_loop_t *loop, tp_t *tp) {
  tp->tls = NULL;
  return uv_tcp_init(loop, &tp->tcp);
}

int tp_start_server(tp_t *tp, tls_ctx_t *ctx) {
  int rc = tls_new(tp, ctx, 1);
  if (rc != 0) return rc;
  SSL_set_accept_state(((tls_t *)tp->tls)->ssl);
  return 0;
}

/* 1 when s is an IPv4 or IPv6 literal (brackets allowed). */
static int is_ip_literal(const char *s, char *out, size_t outlen) {
  unsigned char a[16];
  size_t n = strlen(s);
  if (n >= 2 && s[0] == '[' && s[n - 1] == ']') {
    if (n - 2 >= outlen) return 0;
    memcpy(out, s + 1, n - 2);
    out[n - 2] = 0;
  } else {
    if (n >= outlen) return 0;
    memcpy(out, s, n + 1);
  }
  return inet_pton(AF_INET, out, a) == 1 || inet_pton(AF_INET6, out, a) == 1;
}

int tp_start_client(tp_t *tp, tls_ctx_t *ctx, const char *server_name, tls_session_cache_t *session) {
  int rc = tls_new(tp, ctx, 0);
  if (rc != 0) return rc;
  tls_t *t = tp->tls;
  SSL_set_connect_state(t->ssl);
  if (nonempty(server_name)) {
    char ip[64];
    if (is_ip_literal(server_name, ip, sizeof ip)) {
      if (X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(t->ssl), ip) != 1) rc = UV_EINVAL;
    } else {
      SSL_set_hostflags(t->ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
      if (SSL_set_tlsext_host_name(t->ssl, server_name) != 1 || SSL_set1_host(t->ssl, server_name) != 1)
        rc = UV_ENOMEM;
    }
  }
  t->cache = session;
  if (rc == 0 && session && session->sess && SSL_set_session(t->ssl, session->sess) == 1) t->offered = session->sess;
  ERR_clear_error();
  if (rc != 0) {
    SSL_free(t->ssl);
    tls_ctx_unref(t->ctx);
    free(t);
    tp->tls = NULL;
    return rc;
  }
  tls_drive(t); /* the ClientHello */
  return 0;
}

int tp_read_start(tp_t *tp, uv_alloc_cb alloc_cb, uv_read_cb read_cb) {
  tls_t *t = tp->tls;
  if (!t) return uv_read_start((uv_stream_t *)&tp->tcp, alloc_cb, read_cb);
  if (!alloc_cb || !read_cb || t->closing) return UV_EINVAL;
  if (t->failed) return UV_EPROTO;
  t->alloc_cb = alloc_cb;
  t->read_cb = read_cb;
  if (t->reading) return UV_EALREADY;
  if (t->eof_delivered) return UV_ENOTCONN;
  if (!t->eof_seen) {
    int rc = uv_read_start((uv_stream_t *)&tp->tcp, tcp_alloc, tcp_read);
    if (rc != 0) return rc;
  }
  t->reading = 1;
  if (t->depth == 0 && has_input(t)) {
    if (!t->pump_init) {
      int rc = uv_idle_init(tp->tcp.loop, &t->pump);
      if (rc != 0) return rc;
      t->pump.data = t;
      t->pump_init = 1;
    }
    uv_idle_start(&t->pump, pump_cb);
  }
  return 0;
}

int tp_read_stop(tp_t *tp) {
  tls_t *t = tp->tls;
  if (!t) return uv_read_stop((uv_stream_t *)&tp->tcp);
  t->reading = 0;
  pump_stop(t);
  return uv_read_stop((uv_stream_t *)&tp->tcp);
}

int tp_write(uv_write_t *req, tp_t *tp, const uv_buf_t bufs[], unsigned n, uv_write_cb cb) {
  tls_t *t = tp->tls;
  if (!t) return uv_write(req, (uv_stream_t *)&tp->tcp, bufs, n, cb);
  if (t->closing) return UV_EBADF;
  if (t->failed) return UV_EPROTO;
  if (t->shut || t->sd_req) return UV_EPIPE;
  req->type = UV_WRITE;
  req->handle = (uv_stream_t *)&tp->tcp;
  req->cb = cb;
  if (!t->hs_done) {
    size_t total = 0;
    for (unsigned i = 0; i < n; i++) total += bufs[i].len;
    held_t *h = malloc(sizeof *h + total);
    if (!h) return UV_ENOMEM;
    h->next = NULL;
    h->req = req;
    h->cb = cb;
    h->len = 0;
    for (unsigned i = 0; i < n; i++) {
      if (bufs[i].len) memcpy(h->data + h->len, bufs[i].base, bufs[i].len);
      h->len += bufs[i].len;
    }
    *t->held_tail = h;
    t->held_tail = &h->next;
    t->held_bytes += total;
    return 0;
  }
  int rc = encrypt(t, bufs, n);
  if (rc != 0) {
    flush(t, NULL, NULL);
    return rc;
  }
  return flush(t, req, cb);
}

size_t tp_write_queue_size(const tp_t *tp) {
  const tls_t *t = tp->tls;
  size_t q = uv_stream_get_write_queue_size((const uv_stream_t *)&tp->tcp);
  return t ? q + t->held_bytes : q;
}

int tp_shutdown(uv_shutdown_t *req, tp_t *tp, uv_shutdown_cb cb) {
  tls_t *t = tp->tls;
  if (!t) return uv_shutdown(req, (uv_stream_t *)&tp->tcp, cb);
  if (t->closing) return UV_EINVAL;
  if (t->shut || t->sd_req) return UV_ENOTCONN;
  if (!t->hs_done && !t->failed) { /* after the held writes, once the handshake completes */
    req->type = UV_SHUTDOWN;
    req->handle = (uv_stream_t *)&tp->tcp;
    req->cb = cb;
    t->sd_req = req;
    t->sd_cb = cb;
    return 0;
  }
  t->shut = 1;
  return do_shutdown(t, req, cb);
}

/* Frees the TLS state once every handle closed: held writes fail with UV_ECANCELED first (as libuv fails queued
 * writes before the close callback), then the caller's close callback. */
static void closed_one(uv_handle_t *h) {
  tp_t *tp = h->type == UV_TCP ? (tp_t *)h : ((tls_t *)h->data)->tp;
  tls_t *t = tp->tls;
  if (--t->closes_pending > 0) return;
  complete_held(t, UV_ECANCELED);
  free(t->out);
  /* SSL_free without a sent close_notify marks the session not resumable (ssl_clear_bad_session), and the client's
   * session is the one in the cache: a connection that ended cleanly keeps it good. */
  if (t->hs_done && !t->failed) SSL_set_shutdown(t->ssl, SSL_get_shutdown(t->ssl) | SSL_SENT_SHUTDOWN);
  SSL_free(t->ssl);
  tls_ctx_unref(t->ctx);
  uv_close_cb cb = t->close_cb;
  free(t);
  tp->tls = NULL;
  if (cb) cb((uv_handle_t *)&tp->tcp);
}

void tp_close(tp_t *tp, uv_close_cb cb) {
  tls_t *t = tp->tls;
  if (!t) {
    uv_close((uv_handle_t *)&tp->tcp, cb);
    return;
  }
  t->closing = 1;
  t->reading = 0;
  t->cache = NULL; /* the cache may go before our close callback */
  t->close_cb = cb;
  t->closes_pending = 1 + t->pump_init;
  uv_close((uv_handle_t *)&tp->tcp, closed_one);
  if (t->pump_init) uv_close((uv_handle_t *)&t->pump, closed_one);
}

const char *tp_peer_name(const tp_t *tp, char *out, size_t cap) {
  struct sockaddr_storage ss;
  int len = sizeof ss;
  char host[64];
  if (uv_tcp_getpeername(&tp->tcp, (struct sockaddr *)&ss, &len) != 0) return "-";
  if (ss.ss_family == AF_INET6) {
    const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)&ss;
    if (uv_ip6_name(a, host, sizeof host) != 0) return "-";
    snprintf(out, cap, "[%s]:%u", host, (unsigned)ntohs(a->sin6_port));
  } else if (ss.ss_family == AF_INET) {
    const struct sockaddr_in *a = (const struct sockaddr_in *)&ss;
    if (uv_ip4_name(a, host, sizeof host) != 0) return "-";
    snprintf(out, cap, "%s:%u", host, (unsigned)ntohs(a->sin_port));
  } else {
    return "-";
  }
  return out;
}

int tp_is_tls(const tp_t *tp) { return tp->tls != NULL; }

int tp_handshake_done(const tp_t *tp) {
  const tls_t *t = tp->tls;
  return t ? t->hs_done : 1;
}

const char *tp_alpn(const tp_t *tp) {
  const tls_t *t = tp->tls;
  return t ? t->alpn : "";
}

const char *tp_error(const tp_t *tp) {
  const tls_t *t = tp->tls;
  return t ? t->err : "";
}

tls_fail_t tp_fail_reason(const tp_t *tp) {
  const tls_t *t = tp->tls;
  return t ? t->reason : TLS_FAIL_PROTOCOL;
}

int tp_session_reused(const tp_t *tp) {
  const tls_t *t = tp->tls;
  return t ? t->reused : 0;
}
