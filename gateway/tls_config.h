/*
 * gateway/tls_config — the TLS contexts a config asks for, built once per config (at start, on SIGHUP, and by
 * --check-config) on the main thread and attached to the config (cfg_t.ext), so every worker loop and every module
 * that sees the config uses the same contexts: new connections take the current config's, open ones keep theirs.
 * A missing, unreadable or mismatched file is a config error naming the key and the file; on SIGHUP the running
 * config stays (and so do its certificates).
 */
#ifndef OTLPGW_TLS_CONFIG_H
#define OTLPGW_TLS_CONFIG_H

#include <stddef.h>

#include "config/config.h"
#include "gateway/transport.h"

typedef struct tc_bundle {
  tls_ctx_t *http;     /* server.tls for the OTLP/HTTP listener (ALPN http/1.1); NULL = plaintext */
  tls_ctx_t *grpc;     /* the same certificate for the OTLP/gRPC listener (ALPN h2); NULL = plaintext */
  tls_ctx_t *backends; /* backends.tls, for https:// backends and their health checks; NULL when none is https */
  int insecure;        /* backends.tls.insecure_skip_verify (warned about once at start) */
} tc_bundle_t;

/* Builds c's contexts and attaches them to c (c->ext). 0, or -1 with a one-line reason ("server.tls.key_file
 * /x/key.pem: ...") in err. */
int tc_attach(cfg_t *c, char *err, size_t errlen);

/* The contexts attached to c; all NULL when tc_attach was not called (plaintext). Never NULL. */
const tc_bundle_t *tc_get(const cfg_t *c);

#endif
