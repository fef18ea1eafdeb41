/*
 * health/dns — DNS with c-ares, driven by the libuv loop: discovery watches, and the cached address of one
 * backend host (names).
 *
 * A watch resolves one hostname (A and AAAA) at once and then every interval, and reports the sorted,
 * de-duplicated numeric addresses after each round. Resolvers: the listed "host:port" servers, or the
 * system's (/etc/resolv.conf, with its search domains) when none are given. /etc/hosts is not consulted.
 *
 * A round is one A and one AAAA query; its single report is DNS_FAILED when either query failed (even if the
 * other answered: a partial answer would silently drop one family's backends), else DNS_OK when any address
 * came back, else DNS_NOTFOUND. Queries time out after 1 s (c-ares doubles it on the retry), 2 tries.
 *
 * A name keeps the address that connections and health checks to one backend host use, so that nothing on
 * the request path waits for a resolver: an IP literal is its own address (no lookup, no handle); any other
 * name is looked up once at creation and again every interval in the background (ares_getaddrinfo: the
 * hosts file first, then DNS with the resolver's search domains; "localhost" never reaches DNS). The first
 * IPv4 address of an answer is used, else the first IPv6 one ("localhost" must reach a collector bound to
 * 127.0.0.1), and the address in use is kept while a new answer still holds it. A round that fails (timeout,
 * SERVFAIL, NXDOMAIN, no records) keeps the last good address; only a name that never resolved has none,
 * and then answers at once with the last round's error. CARES_HOSTS, when set, names the hosts file instead
 * of /etc/hosts (c-ares' convention; the tests use it).
 */
#ifndef OTLPGW_HEALTH_DNS_H
#define OTLPGW_HEALTH_DNS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
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

/* ---- names --------------------------------------------------------------------------------------------- */

#define DNS_NAME_INTERVAL_MS 30000 /* refresh period when the config gives none */

typedef struct dns_name dns_name_t;
typedef struct dns_wait dns_wait_t;

/* status 0: the name has an address now (dns_name_addr returns 0); else the error dns_name_addr returns
 * (UV_EAI_NONAME, UV_EAI_AGAIN), or UV_ECANCELED when the name was destroyed first. */
typedef void (*dns_wait_cb)(dns_wait_t *w, int status);

/* One waiter for a name's first answer, embedded in the caller's object (no allocation). */
struct dns_wait {
  void *data;        /* the caller's */
  /* private */
  dns_name_t *name;  /* while waiting */
  dns_wait_t *next;
  dns_wait_cb cb;
};

/* After every lookup round of a name (never for an IP literal). */
typedef struct dns_name_report {
  int status;        /* this round: DNS_OK, DNS_NOTFOUND or DNS_FAILED */
  const char *addr;  /* numeric address in use after the round; "" while the name has none */
  const char *prev;  /* DNS_OK only, when the address changed: the one before ("" at the first answer); else NULL */
  const char *err;   /* c-ares' reason for DNS_NOTFOUND / DNS_FAILED, else "" */
} dns_name_report_t;
typedef void (*dns_name_cb)(void *ud, const dns_name_report_t *r);

typedef struct dns_name_config {
  const char *host;            /* a name, or an IPv4 / IPv6 literal (no brackets; "fe80::1%eth0" allowed); copied */
  uint64_t interval_ms;        /* between the end of one round and the next; 0 = DNS_NAME_INTERVAL_MS. While
                                * the name has no address it is tried sooner: 1 s, doubling up to this */
  const char *const *servers;  /* as dns_watch_start; n_servers 0 = the system's resolvers */
  size_t n_servers;
  dns_name_cb cb;              /* optional: each round's outcome (e.g. for logging); never inside a dns_name_ call */
  void *ud;
} dns_name_config_t;

/* Creates the name; a name's first round starts now (it may be answered before this returns: hosts file).
 * Returns 0 with *out set, or -1 with *out NULL and a one-line reason in err (empty or overlong host, bad
 * server address, c-ares init failure, out of memory). */
int dns_name_create(uv_loop_t *loop, const dns_name_config_t *cfg, dns_name_t **out, char *err, size_t errlen);

/* Destroys n (NULL: no-op). Its users go first: pools destroyed and checkers stopped. cfg->cb is never
 * called after this returns; waiters still queued get UV_ECANCELED from the loop, once n's handles have
 * closed (memory is freed then). */
void dns_name_destroy(dns_name_t *n);

/* The current address with port set, for connecting: returns 0 and fills *out, or 1 while the first answer
 * is still awaited (dns_name_wait), or the error of the name's last round while it has never resolved:
 * UV_EAI_NONAME (no such name, or no A/AAAA record), UV_EAI_AGAIN (no resolver answered: timeout, SERVFAIL,
 * refused), UV_EAI_MEMORY. Never blocks, never looks anything up. */
int dns_name_addr(const dns_name_t *n, uint16_t port, struct sockaddr_storage *out);

/* Queues w until n can answer dns_name_addr: its first answer, or at once (on the next loop turn) when n
 * already has an answer. cb runs once, from the loop, never inside this call. Call it only when
 * dns_name_addr did not return 0. Returns 0, or UV_EINVAL for an IP literal (it never needs waiting). */
int dns_name_wait(dns_name_t *n, dns_wait_t *w, dns_wait_cb cb);

/* Takes w off its name's queue: its cb will not run. A no-op when w is not waiting. */
void dns_name_cancel(dns_wait_t *w);

/* The host as given at creation. */
const char *dns_name_host(const dns_name_t *n);

#endif
