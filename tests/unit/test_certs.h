/*
 * tests/unit/test_certs — the TLS fixture the unit tests of the backend pool and the health checker share:
 * certificates made at setup with the openssl CLI (EC P-256: fast) in a temp dir — a CA ("ca.crt"), a server
 * certificate it signs for localhost and 127.0.0.1 ("srv.crt" / "srv.key"), and an unrelated CA ("other.crt") —
 * a server context on srv.*, and client contexts verifying against either CA.
 */
#ifndef OTLPGW_TEST_CERTS_H
#define OTLPGW_TEST_CERTS_H

#include <stdio.h>
#include <stdlib.h>

#include "gateway/transport.h"

typedef struct test_certs {
  char dir[64];       /* "" when the certificates could not be made */
  tls_ctx_t *server;  /* srv.crt / srv.key, ALPN http/1.1 */
  tls_ctx_t *ca;      /* client: verifies against ca.crt */
  tls_ctx_t *other;   /* client: verifies against other.crt (so the server's certificate fails) */
} test_certs_t;

static inline tls_ctx_t *test_certs_client(const test_certs_t *t, const char *ca) {
  char path[128], err[256];
  tls_ctx_t *c = NULL;
  snprintf(path, sizeof path, "%s/%s", t->dir, ca);
  tls_client_opts_t o = {.ca_file = path, .alpn = "http/1.1"};
  if (tls_client_ctx_create(&o, "test", &c, err, sizeof err) != 0) fprintf(stderr, "client context: %s\n", err);
  return c;
}

/* tag names the temp dir and the certificates' CNs. */
static inline void test_certs_make(test_certs_t *t, const char *tag) {
  snprintf(t->dir, sizeof t->dir, "/tmp/test_%s_tls_XXXXXX", tag);
  if (!mkdtemp(t->dir)) {
    t->dir[0] = 0;
    return;
  }
  char cmd[2048];
  snprintf(cmd, sizeof cmd,
           "cd %s && K='genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256' && "
           "X='-addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign' && "
           "openssl $K -out ca.key && openssl req -x509 -new -key ca.key -out ca.crt -days 30 -subj /CN=%s-ca $X && "
           "openssl $K -out other.key && "
           "openssl req -x509 -new -key other.key -out other.crt -days 30 -subj /CN=%s-other $X && "
           "openssl $K -out srv.key && openssl req -new -key srv.key -out srv.csr -subj /CN=localhost && "
           "printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\\nextendedKeyUsage=serverAuth\\n' > srv.ext && "
           "openssl x509 -req -in srv.csr -CA ca.crt -CAkey ca.key -set_serial 2 -days 30 -extfile srv.ext "
           "-out srv.crt 2>/dev/null",
           t->dir, tag, tag);
  if (system(cmd) != 0) {
    fprintf(stderr, "cannot make the test certificates in %s\n", t->dir);
    return;
  }
  char cert[128], key[128], err[256];
  snprintf(cert, sizeof cert, "%s/srv.crt", t->dir);
  snprintf(key, sizeof key, "%s/srv.key", t->dir);
  tls_server_opts_t so = {.cert_file = cert, .key_file = key, .min_version = 12, .alpn = "http/1.1"};
  if (tls_server_ctx_create(&so, "test", &t->server, err, sizeof err) != 0) fprintf(stderr, "server: %s\n", err);
  t->ca = test_certs_client(t, "ca.crt");
  t->other = test_certs_client(t, "other.crt");
}

/* Drops the contexts and removes the directory. */
static inline void test_certs_dispose(test_certs_t *t) {
  tls_ctx_unref(t->server);
  tls_ctx_unref(t->ca);
  tls_ctx_unref(t->other);
  char cmd[128];
  snprintf(cmd, sizeof cmd, "rm -rf %s", t->dir);
  if (t->dir[0] && system(cmd) != 0) fprintf(stderr, "cannot remove %s\n", t->dir);
}

#endif
