/*
 * health/dns — DNS discovery of backends with c-ares, driven by the libuv loop.
 *
 * A watch resolves one hostname (A and AAAA) at once and then every interval, and reports the sorted,
 * de-duplicated numeric addresses after each round. Resolvers: the listed "host:port" servers, or the
 * system's (/etc/resolv.conf, with its search domains) when none are given. /etc/hosts is not consulted.
 *
 * A round is one A and one AAAA query; its single report is DNS_FAILED when either query failed (even if the
 * other answered: a partial answer would silently drop one family's backends), else DNS_OK when any address
 * came back, else DNS_NOTFOUND. Queries time out after 1 s (c-ares doubles it on the retry), 2 tries.
 */
#ifndef OTLPGW_HEALTH_DNS_H
#define OTLPGW_HEALTH_DNS_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

typedef struct dns_watch dns_watch_t;

enum {
  DNS_OK = 0,        /* addrs holds the answer (n >= 1) */
  DNS_NOTFOUND = 1,  /* the name exists with no A/AAAA, or does not exist (NXDOMAIN): n == 0, authoritative */
  DNS_FAILED = 2,    /* resolver unreachable, timeout, SERVFAIL...: n == 0; callers keep what they had */
};

/* addrs: numeric "10.0.0.1" / "fd00::1" strings, sorted (strcmp) and unique; valid during the call only.
 * err: a short reason for DNS_FAILED / DNS_NOTFOUND (c-ares' message), else "". */
typedef void (*dns_result_cb)(void *ud, int status, const char *const *addrs, size_t n, const char *err);

/* servers: "host:port" resolver addresses ("127.0.0.1:5353", "[::1]:53"); numeric IPs only, IPv6 in
 * brackets, ":port" optional (53); tried in order. n_servers 0 = system resolver.
 * The first round starts now; the next one starts interval_ms after the previous one was reported.
 * cb always runs from the loop: never inside dns_watch_start or dns_watch_stop; it may call dns_watch_stop.
 * Returns 0 with *out set, or -1 with *out NULL and a one-line reason in err (bad hostname, bad server
 * address, c-ares init failure). */
int dns_watch_start(uv_loop_t *loop, const char *hostname, const char *const *servers, size_t n_servers,
                    uint64_t interval_ms, dns_result_cb cb, void *ud, dns_watch_t **out, char *err, size_t errlen);

/* Stops the watch; cb is never called after this returns; memory is freed once handles close. */
void dns_watch_stop(dns_watch_t *w);

#endif
