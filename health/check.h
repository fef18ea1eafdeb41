/*
 * health/check — active HTTP health checks of one backend, and the rise/fall hysteresis counter.
 *
 * A checker runs off the hot path on the loop: every interval (jittered by +-10%, the first check at a
 * random point in the first interval, so replicas don't probe in lockstep) it takes host's cached address
 * (health/dns names: no lookup per check; only a name that has not answered yet is waited for, within the
 * check's timeout), connects, sends "GET path HTTP/1.1" with "Connection: close", and reads the status
 * line. 2xx before timeout = ok; anything else (refused, reset, timeout, non-2xx, a name that does not
 * resolve) = failed. One check at a time per checker. With a TLS context (https:// backends) the check runs over
 * TLS (gateway/transport: SNI and verification of server_name, resumption from the backend's session cache); a
 * handshake that fails (certificate verification, protocol, reset) is a failed check with detail UV_EPROTO, and
 * hc_checker_tls_error says why.
 *
 * The hysteresis is one counter, as in HAProxy: health runs 0 .. rise+fall-1. Up backends sit at the top;
 * each failure takes one off and the backend goes down when health falls below rise (after `fall`
 * consecutive failures from the top); down backends sit at 0 and come up when health reaches rise (after
 * `rise` consecutive successes: a failure while down goes back to 0), jumping to the top. A success while
 * up adds one, up to the top. Passive ejection forces health to 0.
 */
#ifndef OTLPGW_HEALTH_CHECK_H
#define OTLPGW_HEALTH_CHECK_H

#include <stdint.h>
#include <uv.h>

#include "gateway/transport.h"
#include "health/dns.h"

typedef struct hc_state {
  uint32_t health;
  uint32_t rise, fall; /* >= 1 */
  int up;
} hc_state_t;

void hc_state_init(hc_state_t *s, uint32_t rise, uint32_t fall, int up);
/* Records one check result. Returns +1 when the backend just came up, -1 when it just went down, else 0. */
int hc_state_observe(hc_state_t *s, int ok);
/* Passive ejection: down at once, health 0. Returns -1 if it was up, else 0. */
int hc_state_force_down(hc_state_t *s);

typedef struct hc_checker hc_checker_t;

typedef struct hc_config {
  const char *host;      /* name or address, for the Host header (and the lookup when name is NULL); copied */
  dns_name_t *name;      /* host's cached address, shared with the backend's pool: borrowed, must outlive the
                          * checker until hc_checker_stop. NULL = the checker keeps its own name for host */
  uint16_t port;
  const char *path;      /* "/" ...; copied */
  uint64_t interval_ms;
  uint64_t timeout_ms;   /* whole check: waiting for a first DNS answer + connect + answer */
  tls_ctx_t *tls;        /* client context: checks over TLS; referenced. NULL = plaintext */
  const char *server_name; /* TLS: SNI and the verified name; NULL or "" = host; copied */
  tls_session_cache_t *session_cache; /* TLS resumption, shared with the backend's pool: borrowed, must outlive the
                          * checker's handles (until the loop ran after hc_checker_stop). May be NULL */
} hc_config_t;

/* Called once per check. ok: 1 for a 2xx; detail: the HTTP status, or a negative libuv error
 * (UV_ECONNREFUSED, UV_ETIMEDOUT, UV_EOF for a close before the status, UV_EPROTO for a malformed answer or a
 * failed TLS handshake, UV_EAI_NONAME / UV_EAI_AGAIN when the name has never resolved). May call
 * hc_checker_stop(). */
typedef void (*hc_result_cb)(void *ud, int ok, int detail);

/* Starts checking on loop. Returns 0 or a negative errno: UV_EINVAL when interval_ms or timeout_ms is 0,
 * or host/path is empty or holds spaces or control characters (or, without name, host cannot be a name);
 * UV_ENOMEM. */
int hc_checker_start(uv_loop_t *loop, const hc_config_t *cfg, hc_result_cb cb, void *ud, hc_checker_t **out);
/* Stops checking, also mid-check; cb is never called after this returns; memory is freed once handles
 * close (the loop must run for that). c may be NULL. */
void hc_checker_stop(hc_checker_t *c);

/* During the result callback (and until the next check begins): why the check's TLS handshake failed
 * ("certificate verify failed: certificate has expired", ..., or "connection closed during the TLS handshake:
 * ..."), and its class in *reason (may be NULL); "" when the check did not fail in a handshake. */
const char *hc_checker_tls_error(const hc_checker_t *c, tls_fail_t *reason);

/* A reloaded config: TLS context and server name for the checks begun from now on (see hc_config_t). 0, or
 * UV_ENOMEM (nothing changed). */
int hc_checker_set_tls(hc_checker_t *c, tls_ctx_t *tls, const char *server_name);

#endif
