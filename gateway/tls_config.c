/* gateway/tls_config — see tls_config.h. */
#include "gateway/tls_config.h"

#include <stdio.h>
#include <stdlib.h>

static int set(const char *s) { return s && s[0]; }

static void bundle_free(void *ptr) {
  tc_bundle_t *b = ptr;
  if (!b) return;
  tls_ctx_unref(b->http);
  tls_ctx_unref(b->grpc);
  tls_ctx_unref(b->backends);
  free(b);
}

/* A file key set without its partner is a config error naming both keys. */
static int check_pair(const char *cert, const char *key, const char *prefix, char *err, size_t errlen) {
  if (set(cert) && !set(key)) {
    snprintf(err, errlen, "%s.key_file: required when %s.cert_file is set (\"%s\")", prefix, prefix, cert);
    return -1;
  }
  if (set(key) && !set(cert)) {
    snprintf(err, errlen, "%s.cert_file: required when %s.key_file is set (\"%s\")", prefix, prefix, key);
    return -1;
  }
  return 0;
}

/* Some backend is reached over https: a static https:// endpoint, or the ones DNS finds with scheme https. */
static int wants_backend_tls(const cfg_t *c) {
  if (c->backends.dns.scheme == CFG_SCHEME_HTTPS && set(c->backends.dns.hostname)) return 1;
  for (size_t i = 0; i < c->backends.n_statics; i++)
    if (c->backends.statics[i].tls) return 1;
  return 0;
}

int tc_attach(cfg_t *c, char *err, size_t errlen) {
  const char *cert = c->server.tls.cert_file, *key = c->server.tls.key_file;
  if (check_pair(cert, key, "server.tls", err, errlen) != 0 ||
      check_pair(c->backends.tls.cert_file, c->backends.tls.key_file, "backends.tls", err, errlen) != 0)
    return -1;
  if (set(c->server.tls.client_ca_file) && !set(cert)) {
    snprintf(err, errlen, "server.tls.client_ca_file: requires server.tls.cert_file and key_file (TLS is off)");
    return -1;
  }
  tc_bundle_t *b = calloc(1, sizeof *b);
  if (!b) {
    snprintf(err, errlen, "out of memory");
    return -1;
  }
  if (set(cert)) {
    /* One certificate pair, two contexts: ALPN is a context setting and each listener speaks one protocol. */
    tls_server_opts_t o = {
        .cert_file = cert,
        .key_file = key,
        .client_ca_file = c->server.tls.client_ca_file,
        .min_version = (int)c->server.tls.min_version,
        .alpn = "http/1.1",
    };
    if (tls_server_ctx_create(&o, "server.tls", &b->http, err, errlen) != 0) goto fail;
    o.alpn = "h2";
    if (tls_server_ctx_create(&o, "server.tls", &b->grpc, err, errlen) != 0) goto fail;
  }
  if (wants_backend_tls(c)) {
    tls_client_opts_t o = {
        .ca_file = c->backends.tls.ca_file,
        .cert_file = c->backends.tls.cert_file,
        .key_file = c->backends.tls.key_file,
        .insecure_skip_verify = c->backends.tls.insecure_skip_verify,
        .alpn = "http/1.1",
    };
    if (tls_client_ctx_create(&o, "backends.tls", &b->backends, err, errlen) != 0) goto fail;
  }
  b->insecure = c->backends.tls.insecure_skip_verify;
  /* A config is attached once; attaching again (not done today) replaces the previous bundle. */
  if (c->ext.free) c->ext.free(c->ext.ptr);
  c->ext.ptr = b;
  c->ext.free = bundle_free;
  return 0;
fail:
  bundle_free(b);
  return -1;
}

const tc_bundle_t *tc_get(const cfg_t *c) {
  static const tc_bundle_t none = {0};
  return c && c->ext.free == bundle_free && c->ext.ptr ? c->ext.ptr : &none;
}
