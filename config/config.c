/*
 * config/ — one static key table (path, type, default, offset, bounds, help) walked by one libyaml loader.
 *
 * The table is the single source of truth: cfg_init_defaults() parses each key's default text with the same
 * code that parses file values, the loader looks keys up in it, cfg_dispose() frees by it, and
 * cfg_print_reference() prints it. Adding a key is adding one row.
 *
 * Loading uses libyaml's document API. Aliases are resolved by libyaml into shared nodes, which may form cycles;
 * the walk only descends where the table says a section or list is, so its depth is bounded by the schema.
 */
#include "config/config.h"

#include <errno.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <yaml.h>

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

/* No scalar (after ${env:...} expansion) may exceed this: bounds memory and keeps error lines short. */
#define CFG_MAX_SCALAR 16384
/* Keys longer than this cannot be schema keys; they are reported as unknown without building a path. */
#define CFG_MAX_KEY 64
/* A config file larger than this is refused before parsing. */
#define CFG_MAX_FILE (16u << 20)

#define MS_SEC 1000ull
#define MS_MIN (60ull * MS_SEC)
#define MS_HOUR (60ull * MS_MIN)
#define KIB 1024ull
#define MIB (1024ull * KIB)
#define GIB (1024ull * MIB)
#define TIB (1024ull * GIB)

_Static_assert(sizeof(cfg_log_level_t) == sizeof(int), "enums are stored through int *");
_Static_assert(sizeof(cfg_log_format_t) == sizeof(int), "enums are stored through int *");
_Static_assert(sizeof(cfg_route_t) == sizeof(int), "enums are stored through int *");
_Static_assert(sizeof(cfg_compression_t) == sizeof(int), "enums are stored through int *");

typedef enum {
  CT_STRING,   /* char *; optional check() */
  CT_U32,      /* uint32_t in [lo, hi] */
  CT_BOOL,     /* bool */
  CT_DURATION, /* uint64_t milliseconds in [lo, hi] */
  CT_SIZE,     /* uint64_t bytes in [lo, hi] */
  CT_ENUM,     /* int, one of enums[] */
  CT_HOSTPORT, /* char * "host:port", port in [lo, hi] */
  CT_ENDPOINT, /* the whole cfg_backend_t at off: endpoint, host, port */
  CT_STRLIST,  /* char ** at off, size_t count at n_off, at most hi items, each passing check() */
  CT_BACKENDS, /* cfg_backend_t * at off, count at n_off, at most hi items, each a map of backend_keys */
  CT_HEADERS,  /* cfg_header_t * at off, count at n_off, at most hi items */
} cfg_type_t;

typedef struct {
  const char *name;
  int value;
} cfg_enum_t;

/* A string check returns NULL when s is acceptable, else a reason that does not quote s (it may be a secret). */
typedef const char *(*cfg_check_fn)(const char *s);

typedef struct {
  const char *path;         /* dotted key path relative to the table's root, e.g. "server.max_request_bytes" */
  cfg_type_t type;
  const char *def;          /* default in config syntax (parsed like a file value); NULL = required */
  size_t off;               /* offsetof the field in the table's struct */
  size_t n_off;             /* list types: offsetof the size_t element count */
  uint64_t lo, hi;          /* numeric bounds; hostport: port bounds; lists: hi = max items */
  const cfg_enum_t *enums;  /* CT_ENUM: terminated by {NULL, 0} */
  cfg_check_fn check;       /* CT_STRING / CT_STRLIST items: extra validation */
  const char *help;
} cfg_key_t;

static const cfg_enum_t log_levels[] = {
    {"debug", CFG_LOG_DEBUG}, {"info", CFG_LOG_INFO}, {"warn", CFG_LOG_WARN}, {"error", CFG_LOG_ERROR}, {NULL, 0}};
static const cfg_enum_t log_formats[] = {{"logfmt", CFG_LOG_LOGFMT}, {"json", CFG_LOG_JSON}, {NULL, 0}};
static const cfg_enum_t span_routes[] = {{"trace_id", CFG_ROUTE_TRACE_ID}, {"service", CFG_ROUTE_SERVICE}, {NULL, 0}};
static const cfg_enum_t metric_routes[] = {
    {"service", CFG_ROUTE_SERVICE}, {"resource", CFG_ROUTE_RESOURCE}, {"metric", CFG_ROUTE_METRIC}, {NULL, 0}};
static const cfg_enum_t compressions[] = {{"none", CFG_COMPRESSION_NONE}, {"gzip", CFG_COMPRESSION_GZIP}, {NULL, 0}};
static const cfg_enum_t tls_versions[] = {{"1.2", CFG_TLS_1_2}, {"1.3", CFG_TLS_1_3}, {NULL, 0}};
static const cfg_enum_t schemes[] = {{"http", CFG_SCHEME_HTTP}, {"https", CFG_SCHEME_HTTPS}, {NULL, 0}};
static const cfg_enum_t fsync_modes[] = {
    {"batch", CFG_FSYNC_BATCH}, {"always", CFG_FSYNC_ALWAYS}, {"never", CFG_FSYNC_NEVER}, {NULL, 0}};

static const char *check_token(const char *s);
static const char *check_http_path(const char *s);
static const char *check_hostname(const char *s);
static const char *check_resolver(const char *s);
static const char *check_spool_directory(const char *s);
static const char *hostport_optional(const char *s);

#define KEY(path, type, def, field, lo, hi, enums, check, help) \
  {path, type, def, offsetof(cfg_t, field), 0, lo, hi, enums, check, help}
#define LIST(path, type, field, nfield, max_items, check, help) \
  {path, type, "[]", offsetof(cfg_t, field), offsetof(cfg_t, nfield), 0, max_items, NULL, check, help}
#define DUR_MAX (24 * MS_HOUR)

static const cfg_key_t cfg_keys[] = {
    KEY("server.listen", CT_HOSTPORT, "0.0.0.0:4318", server.listen, 0, 65535, NULL, NULL,
        "OTLP/HTTP ingest address"),
    KEY("server.grpc_listen", CT_HOSTPORT, "0.0.0.0:4317", server.grpc_listen, 0, 65535, NULL, hostport_optional,
        "OTLP/gRPC ingest address (HTTP/2 with prior knowledge); \"\" = off"),
    KEY("server.workers", CT_U32, "0", server.workers, 0, 1024, NULL, NULL, "event loops; 0 = one per CPU core"),
    KEY("server.max_request_bytes", CT_SIZE, "64MiB", server.max_request_bytes, KIB, 4 * GIB, NULL, NULL,
        "largest request body after decompression; 413 above it"),
    KEY("server.memory_limit", CT_SIZE, "1GiB", server.memory_limit, MIB, 64 * TIB, NULL, NULL,
        "one budget for all buffered telemetry (bodies being read or forwarded, retry queues; all workers): "
        "a request that would cross it gets 503 + Retry-After before its body is read"),
    KEY("server.max_connections", CT_U32, "10000", server.max_connections, 1, 1000000, NULL, NULL,
        "client connections accepted at once"),
    KEY("server.read_timeout", CT_DURATION, "30s", server.read_timeout_ms, 1, DUR_MAX, NULL, NULL,
        "whole request, headers + body"),
    KEY("server.idle_timeout", CT_DURATION, "120s", server.idle_timeout_ms, 1, DUR_MAX, NULL, NULL,
        "keep-alive connection idle time"),
    KEY("server.shutdown_timeout", CT_DURATION, "30s", server.shutdown_timeout_ms, 0, DUR_MAX, NULL, NULL,
        "on SIGTERM/SIGINT: time to finish in-flight requests and flush queues"),
    LIST("server.auth.bearer_tokens", CT_STRLIST, server.auth.bearer_tokens, server.auth.n_bearer_tokens, 1024,
         check_token, "non-empty: \"Authorization: Bearer <token>\" required, else 401"),
    KEY("server.tls.cert_file", CT_STRING, "", server.tls.cert_file, 0, 0, NULL, NULL,
        "PEM certificate chain for both listeners; \"\" = plaintext; re-read on SIGHUP"),
    KEY("server.tls.key_file", CT_STRING, "", server.tls.key_file, 0, 0, NULL, NULL,
        "PEM private key of cert_file; re-read on SIGHUP"),
    KEY("server.tls.client_ca_file", CT_STRING, "", server.tls.client_ca_file, 0, 0, NULL, NULL,
        "non-empty: clients must present a certificate this CA signed (mTLS)"),
    KEY("server.tls.min_version", CT_ENUM, "1.2", server.tls.min_version, 0, 0, tls_versions, NULL,
        "oldest TLS version accepted"),
    KEY("telemetry.listen", CT_HOSTPORT, "0.0.0.0:8888", telemetry.listen, 0, 65535, NULL, NULL,
        "GET /metrics (Prometheus text), /healthz, /readyz"),
    KEY("telemetry.log_level", CT_ENUM, "info", telemetry.log_level, 0, 0, log_levels, NULL, "log verbosity"),
    KEY("telemetry.log_format", CT_ENUM, "logfmt", telemetry.log_format, 0, 0, log_formats, NULL, "log line format"),
    KEY("routing.traces", CT_ENUM, "trace_id", routing.traces, 0, 0, span_routes, NULL,
        "routing key for each span"),
    KEY("routing.logs", CT_ENUM, "trace_id", routing.logs, 0, 0, span_routes, NULL,
        "routing key for each log record"),
    KEY("routing.metrics", CT_ENUM, "service", routing.metrics, 0, 0, metric_routes, NULL,
        "routing key for each resource (service, resource) or each metric (metric)"),
    LIST("backends.static", CT_BACKENDS, backends.statics, backends.n_statics, 4096, NULL,
         "fixed backends, e.g. - {endpoint: \"http://collector-1:4318\", weight: 1} or \"https://host/otlp\""),
    KEY("backends.dns.hostname", CT_STRING, "", backends.dns.hostname, 0, 0, NULL, check_hostname,
        "re-resolved every interval; A/AAAA records become backends; \"\" = off"),
    KEY("backends.dns.port", CT_U32, "4318", backends.dns.port, 1, 65535, NULL, NULL,
        "port of the backends found by DNS"),
    KEY("backends.dns.interval", CT_DURATION, "5s", backends.dns.interval_ms, 1, DUR_MAX, NULL, NULL,
        "DNS re-resolution interval"),
    LIST("backends.dns.servers", CT_STRLIST, backends.dns.servers, backends.dns.n_servers, 16, check_resolver,
         "\"host:port\" resolvers; empty = the system's"),
    KEY("backends.dns.scheme", CT_ENUM, "http", backends.dns.scheme, 0, 0, schemes, NULL,
        "http | https for the backends found by DNS (https: backends.tls applies)"),
    KEY("backends.request_timeout", CT_DURATION, "5s", backends.request_timeout_ms, 1, DUR_MAX, NULL, NULL,
        "one backend request, connect to response"),
    KEY("backends.max_connections_per_backend", CT_U32, "32", backends.max_connections_per_backend, 1, 65535, NULL,
        NULL, "keep-alive pool size per backend (per worker)"),
    KEY("backends.compression", CT_ENUM, "none", backends.compression, 0, 0, compressions, NULL,
        "for re-assembled parts; pass-through keeps the client's encoding"),
    LIST("backends.headers", CT_HEADERS, backends.headers, backends.n_headers, 64, NULL,
         "added to every backend request, e.g. Authorization: \"Basic ${env:CLOUD_TOKEN}\""),
    KEY("backends.tls.ca_file", CT_STRING, "", backends.tls.ca_file, 0, 0, NULL, NULL,
        "CA bundle that https:// backends are verified against; \"\" = the system's"),
    KEY("backends.tls.cert_file", CT_STRING, "", backends.tls.cert_file, 0, 0, NULL, NULL,
        "client certificate for backends that require one (mTLS), with key_file"),
    KEY("backends.tls.key_file", CT_STRING, "", backends.tls.key_file, 0, 0, NULL, NULL, "key of cert_file"),
    KEY("backends.tls.server_name", CT_STRING, "", backends.tls.server_name, 0, 0, NULL, NULL,
        "SNI and the name verified in backend certificates; \"\" = each endpoint's host"),
    KEY("backends.tls.insecure_skip_verify", CT_BOOL, "false", backends.tls.insecure_skip_verify, 0, 0, NULL, NULL,
        "no verification of backend certificates (logged as a warning at start)"),
    KEY("backends.health_check.enabled", CT_BOOL, "true", backends.health_check.enabled, 0, 0, NULL, NULL,
        "active health checks"),
    KEY("backends.health_check.path", CT_STRING, "/", backends.health_check.path, 0, 0, NULL, check_http_path,
        "GET, 2xx = up"),
    KEY("backends.health_check.port", CT_U32, "0", backends.health_check.port, 0, 65535, NULL, NULL,
        "0 = the backend's own port (collector's health_check extension is :13133)"),
    KEY("backends.health_check.interval", CT_DURATION, "2s", backends.health_check.interval_ms, 1, DUR_MAX, NULL,
        NULL, "time between checks"),
    KEY("backends.health_check.timeout", CT_DURATION, "1s", backends.health_check.timeout_ms, 1, DUR_MAX, NULL,
        NULL, "one check; at most interval"),
    KEY("backends.health_check.rise", CT_U32, "2", backends.health_check.rise, 1, 1000, NULL, NULL,
        "consecutive passed checks -> up"),
    KEY("backends.health_check.fall", CT_U32, "3", backends.health_check.fall, 1, 1000, NULL, NULL,
        "consecutive failed checks -> down"),
    KEY("backends.health_check.eject_after_failures", CT_U32, "5", backends.health_check.eject_after_failures, 1,
        1000, NULL, NULL, "passive: consecutive failed sends -> down at once"),
    KEY("backends.queue.max_bytes", CT_SIZE, "256MiB", backends.queue.max_bytes, 64 * KIB, TIB, NULL, NULL,
        "retry queue per backend"),
    KEY("backends.queue.directory", CT_STRING, "", backends.queue.directory, 0, 0, NULL, check_spool_directory,
        "non-empty: crash-safe on-disk spool of acknowledged, undelivered parts (absolute path; one gateway each)"),
    KEY("backends.queue.fsync", CT_ENUM, "batch", backends.queue.fsync, 0, 0, fsync_modes, NULL,
        "batch: one fdatasync per loop turn before the acks it covers | always: one per part | never: page cache "
        "only (survives a process crash, not a power cut)"),
    KEY("backends.batch.max_bytes", CT_SIZE, "4MiB", backends.batch.max_bytes, 1 * KIB, GIB, NULL, NULL,
        "largest coalesced backend request (parts for one backend made in one loop turn, or while a request to "
        "it is in flight, leave together)"),
    KEY("backends.batch.max_parts", CT_U32, "256", backends.batch.max_parts, 1, 65536, NULL, NULL,
        "most parts in one coalesced backend request; 1 = every part alone"),
    KEY("backends.retry.initial_interval", CT_DURATION, "100ms", backends.retry.initial_interval_ms, 1, DUR_MAX,
        NULL, NULL, "first retry backoff; at most max_interval"),
    KEY("backends.retry.max_interval", CT_DURATION, "5s", backends.retry.max_interval_ms, 1, DUR_MAX, NULL, NULL,
        "backoff cap"),
    KEY("backends.retry.max_elapsed", CT_DURATION, "5m", backends.retry.max_elapsed_ms, 0, DUR_MAX, NULL, NULL,
        "then dropped and counted"),
};

/* Keys of one backends.static item; the walk is the same as for cfg_keys, based at a cfg_backend_t. */
static const cfg_key_t backend_keys[] = {
    {"endpoint", CT_ENDPOINT, NULL, 0, 0, 0, 0, NULL, NULL, "\"http[s]://host[:port][/prefix]\", required; posts to <prefix>/v1/<signal>"},
    {"weight", CT_U32, "1", offsetof(cfg_backend_t, weight), 0, 1, 1000000, NULL, NULL, "share of the ring"},
};

#define N_KEYS ARRAY_LEN(cfg_keys)

/* ---------------------------------------------------------------------------------------------------------
 * Errors
 */

/* Writes s[0..n) for an error message: printable ASCII as is, anything else as \xNN, at most 60 bytes, so
 * that a message is always one line. Returns buf. */
static const char *show(char *buf, size_t cap, const char *s, size_t n) {
  static const char hex[] = "0123456789abcdef";
  size_t o = 0;
  size_t shown = n > 60 ? 60 : n;
  for (size_t i = 0; i < shown && o + 5 < cap; i++) {
    unsigned char ch = (unsigned char)s[i];
    if (ch >= 0x20 && ch < 0x7f && ch != '\\') {
      buf[o++] = (char)ch;
    } else {
      buf[o++] = '\\';
      buf[o++] = 'x';
      buf[o++] = hex[ch >> 4];
      buf[o++] = hex[ch & 15];
    }
  }
  if (shown < n && o + 4 < cap) {
    memcpy(buf + o, "...", 3);
    o += 3;
  }
  buf[o] = '\0';
  return buf;
}

/* Formats "NAME: msg" into err (when err/errlen allow). Always returns -1. */
__attribute__((format(printf, 4, 5))) static int fail_plain(char *err, size_t errlen, const char *name,
                                                            const char *fmt, ...) {
  if (!err || errlen == 0) return -1;
  int n = name ? snprintf(err, errlen, "%s: ", name) : 0;
  if (n < 0) n = 0;
  if ((size_t)n < errlen) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err + n, errlen - (size_t)n, fmt, ap);
    va_end(ap);
  }
  return -1;
}

/* Load context: where errors go and which keys the file set (for cross-key checks). */
typedef struct {
  const char *name;
  char *err;
  size_t errlen;
  yaml_document_t *doc;
  bool seen[N_KEYS];
  yaml_mark_t marks[N_KEYS];
} ld_t;

/* Formats "NAME:LINE:COL: msg" from a libyaml mark (0-based) into the context's err. Always returns -1. */
__attribute__((format(printf, 3, 4))) static int fail_at(ld_t *x, yaml_mark_t m, const char *fmt, ...) {
  if (!x->err || x->errlen == 0) return -1;
  int n = snprintf(x->err, x->errlen, "%s:%zu:%zu: ", x->name, m.line + 1, m.column + 1);
  if (n < 0) n = 0;
  if ((size_t)n < x->errlen) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(x->err + n, x->errlen - (size_t)n, fmt, ap);
    va_end(ap);
  }
  return -1;
}

/* ---------------------------------------------------------------------------------------------------------
 * Scalar parsers
 */

/* Strict decimal: one or more digits, nothing else, no overflow. */
static int parse_u64_span(const char *s, size_t n, uint64_t *out) {
  if (n == 0) return -1;
  uint64_t v = 0;
  for (size_t i = 0; i < n; i++) {
    if (s[i] < '0' || s[i] > '9') return -1;
    unsigned d = (unsigned)(s[i] - '0');
    if (v > (UINT64_MAX - d) / 10) return -1;
    v = v * 10 + d;
  }
  *out = v;
  return 0;
}

int cfg_parse_duration_ms(const char *s, uint64_t *out_ms) {
  if (!s) return -1;
  if (strcmp(s, "0") == 0) {
    *out_ms = 0;
    return 0;
  }
  size_t ni = strspn(s, "0123456789");
  uint64_t ip;
  if (parse_u64_span(s, ni, &ip) != 0) return -1;
  const char *p = s + ni;
  uint64_t frac = 0, scale = 1;
  if (*p == '.') {
    p++;
    size_t nf = strspn(p, "0123456789");
    if (nf == 0 || nf > 9) return -1;
    for (size_t i = 0; i < nf; i++) {
      frac = frac * 10 + (uint64_t)(p[i] - '0');
      scale *= 10;
    }
    p += nf;
  }
  uint64_t mult;
  if (strcmp(p, "ms") == 0) mult = 1;
  else if (strcmp(p, "s") == 0) mult = MS_SEC;
  else if (strcmp(p, "m") == 0) mult = MS_MIN;
  else if (strcmp(p, "h") == 0) mult = MS_HOUR;
  else return -1;
  /* frac < 1e9 and mult <= 3.6e6, so frac * mult cannot overflow. A fraction must come to whole ms. */
  uint64_t fms = frac * mult;
  if (fms % scale != 0) return -1;
  fms /= scale;
  if (ip > (UINT64_MAX - fms) / mult) return -1;
  *out_ms = ip * mult + fms;
  return 0;
}

int cfg_parse_size(const char *s, uint64_t *out_bytes) {
  static const struct {
    const char *suffix;
    uint64_t mult;
  } units[] = {{"", 1},         {"KiB", KIB},         {"MiB", MIB},        {"GiB", GIB},
               {"KB", 1000ull}, {"MB", 1000000ull}, {"GB", 1000000000ull}};
  if (!s) return -1;
  size_t n = strspn(s, "0123456789");
  uint64_t v;
  if (parse_u64_span(s, n, &v) != 0) return -1;
  for (size_t i = 0; i < ARRAY_LEN(units); i++) {
    if (strcmp(s + n, units[i].suffix) != 0) continue;
    if (v > UINT64_MAX / units[i].mult) return -1;
    *out_bytes = v * units[i].mult;
    return 0;
  }
  return -1;
}

static bool is_host_char(char ch) {
  return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') || ch == '.' ||
         ch == '-' || ch == '_';
}

/* Splits s[0..n) = host[:port] or [v6][:port]. Host is validated (name/IPv4 characters, or an IPv6 literal in
 * brackets) and returned heap-allocated without brackets. Without a port, *port = dflt when port_optional,
 * else it is an error. Port must be 0..65535 here; callers narrow it. Returns NULL or a reason. */
static const char *split_hostport(const char *s, size_t n, bool port_optional, uint16_t dflt, char **host,
                                  uint16_t *port) {
  const char *h, *rest;
  size_t hn;
  *host = NULL;
  if (n > 0 && s[0] == '[') {
    const char *close = memchr(s, ']', n);
    if (!close) return "unterminated [IPv6] address";
    h = s + 1;
    hn = (size_t)(close - h);
    if (hn == 0 || !memchr(h, ':', hn)) return "invalid IPv6 address";
    for (size_t i = 0; i < hn; i++)
      if (!is_host_char(h[i]) && h[i] != ':' && h[i] != '%') return "invalid IPv6 address";
    rest = close + 1;
  } else {
    const char *colon = memchr(s, ':', n);
    h = s;
    hn = colon ? (size_t)(colon - s) : n;
    rest = s + hn;
    for (size_t i = 0; i < hn; i++)
      if (!is_host_char(h[i])) return "invalid host";
  }
  if (hn == 0) return "missing host";
  if (hn > 253) return "host too long";
  size_t rn = n - (size_t)(rest - s);
  uint64_t p = dflt;
  if (rn == 0) {
    if (!port_optional) return "missing port";
  } else {
    if (rest[0] != ':') return "invalid host";
    if (parse_u64_span(rest + 1, rn - 1, &p) != 0 || p > 65535) return "invalid port";
  }
  *host = strndup(h, hn);
  if (!*host) return "out of memory";
  *port = (uint16_t)p;
  return NULL;
}

int cfg_parse_hostport(const char *s, char **host, uint16_t *port) {
  if (!s || !host || !port) return -1;
  char *h;
  uint16_t p;
  if (split_hostport(s, strlen(s), false, 0, &h, &p) != NULL) return -1;
  *host = h;
  *port = p;
  return 0;
}

/* Validates an "http[s]://host[:port][/prefix][/]" endpoint. On success fills *host (heap), *port (80 / 443 when
 * absent), *tls, *path (heap: the prefix without its trailing "/", "" when none) and *keep = length of s without
 * the trailing "/". Returns NULL or a reason. */
static const char *parse_endpoint(const char *s, char **host, uint16_t *port, bool *tls, char **path, size_t *keep) {
  *host = *path = NULL;
  size_t skip;
  if (strncasecmp(s, "http://", 7) == 0) skip = 7, *tls = false;
  else if (strncasecmp(s, "https://", 8) == 0) skip = 8, *tls = true;
  else return strstr(s, "://") ? "only http:// and https:// are supported" : "missing http:// or https://";
  const char *a = s + skip;
  size_t an = strcspn(a, "/?#");
  const char *tail = a + an;
  if (tail[0] == '?' || tail[0] == '#') return "a query or fragment is not allowed";
  size_t tl = strlen(tail);
  while (tl > 0 && tail[tl - 1] == '/') tl--; /* "http://h/otlp/" is "http://h/otlp" */
  for (size_t i = 0; i < tl; i++)
    if ((unsigned char)tail[i] <= 0x20 || (unsigned char)tail[i] >= 0x7f || tail[i] == '?' || tail[i] == '#' ||
        (tail[i] == '/' && i + 1 < tl && tail[i + 1] == '/'))
      return "the path prefix must be visible ASCII without spaces, '?', '#' or \"//\"";
  if (memchr(a, '@', an)) return "credentials in the URL are not supported (use backends.headers)";
  const char *why = split_hostport(a, an, true, *tls ? 443 : 80, host, port);
  if (why) return why;
  if (*port == 0) {
    free(*host);
    *host = NULL;
    return "invalid port";
  }
  if (!(*path = strndup(tail, tl))) {
    free(*host);
    *host = NULL;
    return "out of memory";
  }
  *keep = (size_t)(tail - s) + tl;
  return NULL;
}

static const char *check_token(const char *s) {
  if (!*s) return "a bearer token must not be empty";
  for (const char *p = s; *p; p++)
    if ((unsigned char)*p <= 0x20 || (unsigned char)*p >= 0x7f) return "a bearer token must be visible ASCII";
  return NULL;
}

static const char *check_http_path(const char *s) {
  if (s[0] != '/') return "must start with \"/\"";
  for (const char *p = s; *p; p++)
    if ((unsigned char)*p <= 0x20 || (unsigned char)*p >= 0x7f) return "must be visible ASCII without spaces";
  return NULL;
}

static const char *check_hostname(const char *s) {
  size_t n = strlen(s);
  if (n > 253) return "host name too long";
  for (size_t i = 0; i < n; i++)
    if (!is_host_char(s[i])) return "invalid host name";
  return NULL;
}

static const char *check_resolver(const char *s) {
  char *h;
  uint16_t p;
  const char *why = split_hostport(s, strlen(s), false, 0, &h, &p);
  free(h);
  if (why) return why;
  return p == 0 ? "port must be 1..65535" : NULL;
}

/* The spool is not built: a config that asks for it is refused rather than run with in-memory queues that lose
 * their data on a crash, which would contradict the key's promise. "" (the default) stays valid. */
/* Marks a CT_HOSTPORT key whose "" means off (it is never called). */
static const char *hostport_optional(const char *s) { return NULL; }

static const char *check_spool_directory(const char *s) {
  if (!*s) return NULL;
  if (s[0] != '/') return "must be an absolute path";
  return NULL; /* writable, and held by no other gateway: gateway/spool's sp_lock_dir at start and --check-config */
}

/* RFC 9110 token characters, for header names. */
static bool is_tchar(unsigned char ch) {
  return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
         (ch && strchr("!#$%&'*+-.^_`|~", ch));
}

static const char *check_header(const char *name, const char *value) {
  static const char *const framing[] = {"content-length", "transfer-encoding", "connection", "upgrade"};
  if (!*name) return "header name must not be empty";
  for (const char *p = name; *p; p++)
    if (!is_tchar((unsigned char)*p)) return "invalid header name";
  for (size_t i = 0; i < ARRAY_LEN(framing); i++)
    if (strcasecmp(name, framing[i]) == 0) return "header is set by the gateway and cannot be configured";
  for (const char *p = value; *p; p++)
    if ((unsigned char)*p < 0x20 ? *p != '\t' : *p == 0x7f) return "header value contains control characters";
  return NULL;
}

/* Renders ms as the largest unit it is a whole multiple of, e.g. 120000 -> "2m". */
static const char *fmt_ms(char *buf, size_t cap, uint64_t ms) {
  if (ms == 0) snprintf(buf, cap, "0");
  else if (ms % MS_HOUR == 0) snprintf(buf, cap, "%lluh", (unsigned long long)(ms / MS_HOUR));
  else if (ms % MS_MIN == 0) snprintf(buf, cap, "%llum", (unsigned long long)(ms / MS_MIN));
  else if (ms % MS_SEC == 0) snprintf(buf, cap, "%llus", (unsigned long long)(ms / MS_SEC));
  else snprintf(buf, cap, "%llums", (unsigned long long)ms);
  return buf;
}

static const char *fmt_bytes(char *buf, size_t cap, uint64_t b) {
  if (b != 0 && b % TIB == 0) snprintf(buf, cap, "%lluTiB", (unsigned long long)(b / TIB));
  else if (b != 0 && b % GIB == 0) snprintf(buf, cap, "%lluGiB", (unsigned long long)(b / GIB));
  else if (b != 0 && b % MIB == 0) snprintf(buf, cap, "%lluMiB", (unsigned long long)(b / MIB));
  else if (b != 0 && b % KIB == 0) snprintf(buf, cap, "%lluKiB", (unsigned long long)(b / KIB));
  else snprintf(buf, cap, "%llu", (unsigned long long)b);
  return buf;
}

/* ---------------------------------------------------------------------------------------------------------
 * Setting one scalar field from text (defaults and file values alike)
 */

static void *field_at(void *base, size_t off) { return (char *)base + off; }

static void set_string(void *base, size_t off, char *s) {
  char **f = field_at(base, off);
  free(*f);
  *f = s;
}

/* Parses text as e's type and stores it at base. Returns 0, or -1 with a reason in why[] (which may quote the
 * text; string checks never do, since strings may be secrets). */
static int set_scalar(const cfg_key_t *e, void *base, const char *text, char *why, size_t whylen) {
  char q[300], a[32], b[32];
  uint64_t v;
  size_t tn = strlen(text);
  switch (e->type) {
    case CT_STRING: {
      const char *bad = e->check ? e->check(text) : NULL;
      if (bad) return snprintf(why, whylen, "%s", bad), -1;
      char *dup = strdup(text);
      if (!dup) return snprintf(why, whylen, "out of memory"), -1;
      set_string(base, e->off, dup);
      return 0;
    }
    case CT_U32:
      if (parse_u64_span(text, tn, &v) != 0)
        return snprintf(why, whylen, "invalid integer \"%s\"", show(q, sizeof q, text, tn)), -1;
      if (v < e->lo || v > e->hi)
        return snprintf(why, whylen, "%s is out of range (%llu..%llu)", show(q, sizeof q, text, tn),
                        (unsigned long long)e->lo, (unsigned long long)e->hi), -1;
      *(uint32_t *)field_at(base, e->off) = (uint32_t)v;
      return 0;
    case CT_BOOL: {
      static const char *const yes[] = {"true", "yes", "on"}, *const no[] = {"false", "no", "off"};
      for (size_t i = 0; i < ARRAY_LEN(yes); i++) {
        if (strcasecmp(text, yes[i]) == 0) return *(bool *)field_at(base, e->off) = true, 0;
        if (strcasecmp(text, no[i]) == 0) return *(bool *)field_at(base, e->off) = false, 0;
      }
      return snprintf(why, whylen, "invalid boolean \"%s\" (use true or false)", show(q, sizeof q, text, tn)), -1;
    }
    case CT_DURATION:
      if (cfg_parse_duration_ms(text, &v) != 0)
        return snprintf(why, whylen, "invalid duration \"%s\" (use e.g. 250ms, 5s, 2m)",
                        show(q, sizeof q, text, tn)), -1;
      if (v < e->lo || v > e->hi)
        return snprintf(why, whylen, "%s is out of range (%s..%s)", show(q, sizeof q, text, tn),
                        fmt_ms(a, sizeof a, e->lo), fmt_ms(b, sizeof b, e->hi)), -1;
      *(uint64_t *)field_at(base, e->off) = v;
      return 0;
    case CT_SIZE:
      if (cfg_parse_size(text, &v) != 0)
        return snprintf(why, whylen, "invalid size \"%s\" (use e.g. 65536, 64KiB, 16MiB)",
                        show(q, sizeof q, text, tn)), -1;
      if (v < e->lo || v > e->hi)
        return snprintf(why, whylen, "%s is out of range (%s..%s)", show(q, sizeof q, text, tn),
                        fmt_bytes(a, sizeof a, e->lo), fmt_bytes(b, sizeof b, e->hi)), -1;
      *(uint64_t *)field_at(base, e->off) = v;
      return 0;
    case CT_ENUM: {
      for (const cfg_enum_t *en = e->enums; en->name; en++)
        if (strcmp(text, en->name) == 0) return *(int *)field_at(base, e->off) = en->value, 0;
      int n = snprintf(why, whylen, "invalid value \"%s\" (expected", show(q, sizeof q, text, tn));
      for (const cfg_enum_t *en = e->enums; en->name && n > 0 && (size_t)n < whylen; en++)
        n += snprintf(why + n, whylen - (size_t)n, "%s %s", en == e->enums ? "" : ",", en->name);
      if (n > 0 && (size_t)n < whylen) snprintf(why + n, whylen - (size_t)n, ")");
      return -1;
    }
    case CT_HOSTPORT: {
      char *h;
      uint16_t p = 0;
      if (tn == 0 && e->check == hostport_optional) { /* "" = this listener is off */
        char *none = strdup("");
        if (!none) return snprintf(why, whylen, "out of memory"), -1;
        set_string(base, e->off, none);
        return 0;
      }
      const char *bad = split_hostport(text, tn, false, 0, &h, &p);
      free(h);
      if (!bad && (p < e->lo || p > e->hi)) bad = "port out of range";
      if (bad)
        return snprintf(why, whylen, "invalid address \"%s\": %s (use host:port, e.g. 0.0.0.0:4318 or [::1]:4318)",
                        show(q, sizeof q, text, tn), bad), -1;
      char *dup = strdup(text);
      if (!dup) return snprintf(why, whylen, "out of memory"), -1;
      set_string(base, e->off, dup);
      return 0;
    }
    case CT_ENDPOINT: {
      cfg_backend_t *be = field_at(base, e->off);
      char *h, *path;
      uint16_t p = 0;
      size_t keep = 0;
      bool tls = false;
      const char *bad = parse_endpoint(text, &h, &p, &tls, &path, &keep);
      if (bad) return snprintf(why, whylen, "invalid endpoint \"%s\": %s", show(q, sizeof q, text, tn), bad), -1;
      char *ep = strndup(text, keep);
      if (!ep) return free(h), free(path), snprintf(why, whylen, "out of memory"), -1;
      free(be->endpoint);
      free(be->host);
      free(be->path);
      be->endpoint = ep;
      be->host = h;
      be->port = p;
      be->tls = tls;
      be->path = path;
      return 0;
    }
    default:
      return snprintf(why, whylen, "not a scalar key"), -1;
  }
}

static bool is_list_type(cfg_type_t t) { return t == CT_STRLIST || t == CT_BACKENDS || t == CT_HEADERS; }

/* Applies every default of a table to base. Only fails on out of memory. */
static int apply_defaults(const cfg_key_t *tab, size_t n, void *base) {
  char why[128];
  for (size_t i = 0; i < n; i++)
    if (tab[i].def && !is_list_type(tab[i].type) && set_scalar(&tab[i], base, tab[i].def, why, sizeof why) != 0)
      return -1;
  return 0;
}

/* ---------------------------------------------------------------------------------------------------------
 * Freeing
 */

static void free_backend(cfg_backend_t *b) {
  free(b->endpoint);
  free(b->host);
  free(b->path);
  b->endpoint = b->host = b->path = NULL;
}

/* Frees the list at e (elements and array) and zeroes its pointer and count. */
static void free_list(const cfg_key_t *e, void *base) {
  void **arr = field_at(base, e->off);
  size_t *n = field_at(base, e->n_off);
  for (size_t i = 0; *arr && i < *n; i++) {
    if (e->type == CT_STRLIST) {
      free(((char **)*arr)[i]);
    } else if (e->type == CT_BACKENDS) {
      free_backend(&((cfg_backend_t *)*arr)[i]);
    } else {
      cfg_header_t *h = &((cfg_header_t *)*arr)[i];
      free(h->name);
      free(h->value);
    }
  }
  free(*arr);
  *arr = NULL;
  *n = 0;
}

void cfg_dispose(cfg_t *c) {
  if (!c) return;
  if (c->ext.free) c->ext.free(c->ext.ptr);
  for (size_t i = 0; i < N_KEYS; i++) {
    const cfg_key_t *e = &cfg_keys[i];
    if (is_list_type(e->type)) free_list(e, c);
    else if (e->type == CT_STRING || e->type == CT_HOSTPORT) set_string(c, e->off, NULL);
  }
  memset(c, 0, sizeof *c);
}

int cfg_init_defaults(cfg_t *c) {
  memset(c, 0, sizeof *c);
  if (apply_defaults(cfg_keys, N_KEYS, c) != 0) {
    cfg_dispose(c);
    return -1;
  }
  return 0;
}

/* Grows the list at e by one zeroed element and returns it (count already incremented), or NULL on OOM. */
static void *list_push(const cfg_key_t *e, void *base, size_t elem) {
  void **arr = field_at(base, e->off);
  size_t *n = field_at(base, e->n_off);
  void *grown = realloc(*arr, (*n + 1) * elem);
  if (!grown) return NULL;
  *arr = grown;
  void *slot = (char *)grown + *n * elem;
  memset(slot, 0, elem);
  (*n)++;
  return slot;
}

/* ---------------------------------------------------------------------------------------------------------
 * ${env:NAME} / ${env:NAME:-default}
 */

typedef struct {
  char *p;
  size_t len, cap;
} sbuf_t;

static int sb_add(sbuf_t *b, const char *s, size_t n) {
  if (b->len + n + 1 > b->cap) {
    size_t cap = b->cap ? b->cap : 64;
    while (cap < b->len + n + 1) cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p) return -1;
    b->p = p;
    b->cap = cap;
  }
  memcpy(b->p + b->len, s, n);
  b->len += n;
  b->p[b->len] = '\0';
  return 0;
}

/* Environment variable names: [A-Za-z_][A-Za-z0-9_]*. */
static bool is_name_char(char ch, bool first) {
  return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || ch == '_' || (!first && ch >= '0' && ch <= '9');
}

/* Expands every ${env:...} in s[0..n) into a fresh heap string *out. "${" always starts a reference; anything
 * else, including a lone "$", is literal. An unset (or empty) variable takes the default after ":-"; unset without
 * a default is an error. Returns 0, or -1 with a reason in why[]. */
static int expand_env(const char *s, size_t n, char **out, char *why, size_t whylen) {
  sbuf_t b = {0};
  char q[300];
  *out = NULL;
  if (sb_add(&b, "", 0) != 0) goto oom;
  for (size_t i = 0; i < n;) {
    const char *ref = (i + 1 < n && s[i] == '$' && s[i + 1] == '{') ? s + i : NULL;
    if (!ref) {
      const char *next = memchr(s + i + 1, '$', n - i - 1);
      size_t lit = next ? (size_t)(next - (s + i)) : n - i;
      if (sb_add(&b, s + i, lit) != 0) goto oom;
      i += lit;
      continue;
    }
    const char *end = memchr(ref, '}', n - i);
    if (!end || (size_t)(end - ref) < 6 || memcmp(ref, "${env:", 6) != 0) {
      size_t rn = end ? (size_t)(end - ref) + 1 : n - i;
      snprintf(why, whylen, "malformed reference \"%s\" (use ${env:NAME} or ${env:NAME:-default})",
               show(q, sizeof q, ref, rn));
      goto fail;
    }
    const char *name = ref + 6;
    size_t nn = 0;
    while (name + nn < end && is_name_char(name[nn], nn == 0)) nn++;
    const char *after = name + nn;
    bool has_def = end - after >= 2 && after[0] == ':' && after[1] == '-';
    if (nn == 0 || (after != end && !has_def)) {
      snprintf(why, whylen, "malformed reference \"%s\" (use ${env:NAME} or ${env:NAME:-default})",
               show(q, sizeof q, ref, (size_t)(end - ref) + 1));
      goto fail;
    }
    const char *def = has_def ? after + 2 : NULL;
    size_t dn = has_def ? (size_t)(end - def) : 0;
    for (size_t j = 0; j + 1 < dn; j++) {
      if (def[j] == '$' && def[j + 1] == '{') {
        snprintf(why, whylen, "nested references are not supported in \"%s\"",
                 show(q, sizeof q, ref, (size_t)(end - ref) + 1));
        goto fail;
      }
    }
    char var[256];
    if (nn >= sizeof var) {
      snprintf(why, whylen, "environment variable name too long");
      goto fail;
    }
    memcpy(var, name, nn);
    var[nn] = '\0';
    const char *val = getenv(var);
    if (val && (*val || !def)) {
      if (sb_add(&b, val, strlen(val)) != 0) goto oom;
    } else if (def) {
      if (sb_add(&b, def, dn) != 0) goto oom;
    } else {
      snprintf(why, whylen, "environment variable \"%s\" is not set", var);
      goto fail;
    }
    if (b.len > CFG_MAX_SCALAR) break;
    i = (size_t)(end - s) + 1;
  }
  if (b.len > CFG_MAX_SCALAR) {
    snprintf(why, whylen, "value too long (at most %d bytes after expansion)", CFG_MAX_SCALAR);
    goto fail;
  }
  *out = b.p;
  return 0;
oom:
  snprintf(why, whylen, "out of memory");
fail:
  free(b.p);
  return -1;
}

/* ---------------------------------------------------------------------------------------------------------
 * The walk
 */

static const char *kind_name(const yaml_node_t *n) {
  switch (n->type) {
    case YAML_SCALAR_NODE: return "a scalar";
    case YAML_SEQUENCE_NODE: return "a list";
    case YAML_MAPPING_NODE: return "a mapping";
    default: return "nothing";
  }
}

/* A plain empty, "~" or "null" scalar: accepted as an empty section or list ("auth:" with everything commented). */
static bool is_null(const yaml_node_t *n) {
  if (n->type != YAML_SCALAR_NODE || n->data.scalar.style != YAML_PLAIN_SCALAR_STYLE) return false;
  const char *s = (const char *)n->data.scalar.value;
  size_t len = n->data.scalar.length;
  return len == 0 || (len == 1 && s[0] == '~') || (len == 4 && memcmp(s, "null", 4) == 0);
}

/* Returns the expanded text of a scalar node (heap), or NULL after writing the error "KEY: reason". */
static char *scalar_text(ld_t *x, const yaml_node_t *n, const char *key) {
  char why[512];
  const char *s = (const char *)n->data.scalar.value;
  size_t len = n->data.scalar.length;
  if (memchr(s, '\0', len)) {
    fail_at(x, n->start_mark, "%s: value contains a NUL byte", key);
    return NULL;
  }
  char *out;
  if (expand_env(s, len, &out, why, sizeof why) != 0) {
    fail_at(x, n->start_mark, "%s: %s", key, why);
    return NULL;
  }
  return out;
}

static int expect_kind(ld_t *x, const yaml_node_t *n, yaml_node_type_t want, const char *key) {
  if (n->type == want) return 0;
  const char *wanted = want == YAML_SCALAR_NODE ? "a scalar" : want == YAML_SEQUENCE_NODE ? "a list" : "a mapping";
  return fail_at(x, n->start_mark, "%s: expected %s, got %s", key, wanted, kind_name(n));
}

/* Formats a key name for messages (e.g. "backends.static[3]"). Truncation only shortens a message. */
__attribute__((format(printf, 3, 4))) static const char *keyf(char *buf, size_t cap, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, cap, fmt, ap);
  va_end(ap);
  return buf;
}

static yaml_node_t *node(ld_t *x, int id) { return yaml_document_get_node(x->doc, id); }

static int walk_map(ld_t *x, const yaml_node_t *map, const cfg_key_t *tab, size_t ntab, void *base,
                    const char *rel, const char *disp);

static int load_strlist(ld_t *x, const cfg_key_t *e, const yaml_node_t *v, void *base, const char *key) {
  char idx[300];
  free_list(e, base);
  if (is_null(v)) return 0;
  if (expect_kind(x, v, YAML_SEQUENCE_NODE, key) != 0) return -1;
  for (yaml_node_item_t *it = v->data.sequence.items.start; it < v->data.sequence.items.top; it++) {
    size_t i = (size_t)(it - v->data.sequence.items.start);
    const yaml_node_t *item = node(x, *it);
    keyf(idx, sizeof idx, "%s[%zu]", key, i);
    if (i >= e->hi) return fail_at(x, item->start_mark, "%s: too many items (at most %llu)", key,
                                   (unsigned long long)e->hi);
    if (expect_kind(x, item, YAML_SCALAR_NODE, idx) != 0) return -1;
    char *s = scalar_text(x, item, idx);
    if (!s) return -1;
    const char *bad = e->check ? e->check(s) : NULL;
    char **slot = bad ? NULL : list_push(e, base, sizeof(char *));
    if (!slot) {
      free(s);
      return fail_at(x, item->start_mark, "%s: %s", idx, bad ? bad : "out of memory");
    }
    *slot = s;
  }
  return 0;
}

static int load_backends(ld_t *x, const cfg_key_t *e, void *base, const yaml_node_t *v, const char *key) {
  char idx[300], q[300];
  free_list(e, base);
  if (is_null(v)) return 0;
  if (expect_kind(x, v, YAML_SEQUENCE_NODE, key) != 0) return -1;
  for (yaml_node_item_t *it = v->data.sequence.items.start; it < v->data.sequence.items.top; it++) {
    size_t i = (size_t)(it - v->data.sequence.items.start);
    const yaml_node_t *item = node(x, *it);
    keyf(idx, sizeof idx, "%s[%zu]", key, i);
    if (i >= e->hi) return fail_at(x, item->start_mark, "%s: too many backends (at most %llu)", key,
                                   (unsigned long long)e->hi);
    if (expect_kind(x, item, YAML_MAPPING_NODE, idx) != 0) return -1;
    /* Pushed before it is filled, so that cfg_dispose frees whatever a failing item allocated. */
    cfg_backend_t *b = list_push(e, base, sizeof *b);
    if (!b) return fail_at(x, item->start_mark, "%s: out of memory", idx);
    if (apply_defaults(backend_keys, ARRAY_LEN(backend_keys), b) != 0)
      return fail_at(x, item->start_mark, "%s: out of memory", idx);
    char disp[320];
    keyf(disp, sizeof disp, "%s.", idx);
    if (walk_map(x, item, backend_keys, ARRAY_LEN(backend_keys), b, "", disp) != 0) return -1;
    if (!b->endpoint) return fail_at(x, item->start_mark, "%s: missing required key \"endpoint\"", idx);
    cfg_backend_t *all = *(cfg_backend_t **)field_at(base, e->off);
    for (cfg_backend_t *o = all; o < b; o++) {
      /* The same target: scheme, host, port and path prefix (a collector's two prefixes are two backends). */
      if (o->port != b->port || o->tls != b->tls || strcasecmp(o->host, b->host) != 0 || strcmp(o->path, b->path) != 0)
        continue;
      /* Point at the endpoint value of the duplicate; it is the first key named "endpoint" in the item. */
      yaml_mark_t m = item->start_mark;
      for (yaml_node_pair_t *p = item->data.mapping.pairs.start; p < item->data.mapping.pairs.top; p++) {
        const yaml_node_t *k = node(x, p->key);
        if (k->type == YAML_SCALAR_NODE && k->data.scalar.length == 8 &&
            memcmp(k->data.scalar.value, "endpoint", 8) == 0) {
          m = node(x, p->value)->start_mark;
          break;
        }
      }
      return fail_at(x, m, "%s.endpoint: duplicate endpoint \"%s\"", idx,
                     show(q, sizeof q, b->endpoint, strlen(b->endpoint)));
    }
  }
  return 0;
}

static int load_headers(ld_t *x, const cfg_key_t *e, void *base, const yaml_node_t *v, const char *key) {
  char hk[400];
  free_list(e, base);
  if (is_null(v)) return 0;
  if (expect_kind(x, v, YAML_MAPPING_NODE, key) != 0) return -1;
  for (yaml_node_pair_t *p = v->data.mapping.pairs.start; p < v->data.mapping.pairs.top; p++) {
    const yaml_node_t *k = node(x, p->key), *val = node(x, p->value);
    size_t i = (size_t)(p - v->data.mapping.pairs.start);
    if (i >= e->hi) return fail_at(x, k->start_mark, "%s: too many headers (at most %llu)", key,
                                   (unsigned long long)e->hi);
    if (k->type != YAML_SCALAR_NODE) return fail_at(x, k->start_mark, "%s: header names must be scalars", key);
    cfg_header_t *h = list_push(e, base, sizeof *h);
    if (!h) return fail_at(x, k->start_mark, "%s: out of memory", key);
    if (!(h->name = scalar_text(x, k, key))) return -1;
    char q[300];
    keyf(hk, sizeof hk, "%s.%s", key, show(q, sizeof q, h->name, strlen(h->name)));
    if (expect_kind(x, val, YAML_SCALAR_NODE, hk) != 0) return -1;
    if (!(h->value = scalar_text(x, val, hk))) return -1;
    const char *bad = check_header(h->name, h->value);
    if (bad) return fail_at(x, k->start_mark, "%s: %s", hk, bad);
    cfg_header_t *all = *(cfg_header_t **)field_at(base, e->off);
    for (cfg_header_t *o = all; o < h; o++)
      if (strcasecmp(o->name, h->name) == 0) return fail_at(x, k->start_mark, "%s: duplicate header", hk);
  }
  return 0;
}

static int load_key(ld_t *x, const cfg_key_t *e, const yaml_node_t *v, void *base, const char *key) {
  switch (e->type) {
    case CT_STRLIST: return load_strlist(x, e, v, base, key);
    case CT_BACKENDS: return load_backends(x, e, base, v, key);
    case CT_HEADERS: return load_headers(x, e, base, v, key);
    default: break;
  }
  if (expect_kind(x, v, YAML_SCALAR_NODE, key) != 0) return -1;
  char *s = scalar_text(x, v, key);
  if (!s) return -1;
  char why[512];
  int rc = set_scalar(e, base, s, why, sizeof why);
  free(s);
  return rc == 0 ? 0 : fail_at(x, v->start_mark, "%s: %s", key, why);
}

/* True when some key of tab lies under path (path is a section). */
static bool is_section(const cfg_key_t *tab, size_t ntab, const char *path) {
  size_t n = strlen(path);
  for (size_t i = 0; i < ntab; i++)
    if (strncmp(tab[i].path, path, n) == 0 && tab[i].path[n] == '.') return true;
  return false;
}

/* Applies mapping node map to base. rel is map's path inside tab ("" at tab's root); disp is what error
 * messages put before tab paths ("" or "backends.static[3]."). Every key must be in tab, or a section of it. */
static int walk_map(ld_t *x, const yaml_node_t *map, const cfg_key_t *tab, size_t ntab, void *base,
                    const char *rel, const char *disp) {
  char q[300];
  for (yaml_node_pair_t *p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top; p++) {
    const yaml_node_t *k = node(x, p->key), *v = node(x, p->value);
    if (k->type != YAML_SCALAR_NODE)
      return fail_at(x, k->start_mark, "keys must be scalars, got %s", kind_name(k));
    const char *ks = (const char *)k->data.scalar.value;
    size_t kn = k->data.scalar.length;
    for (yaml_node_pair_t *o = map->data.mapping.pairs.start; o < p; o++) {
      const yaml_node_t *ok = node(x, o->key);
      if (ok->type == YAML_SCALAR_NODE && ok->data.scalar.length == kn && memcmp(ok->data.scalar.value, ks, kn) == 0)
        return fail_at(x, k->start_mark, "duplicate key \"%s%s%s%s\"", disp, rel, *rel ? "." : "",
                       show(q, sizeof q, ks, kn));
    }
    /* Dotted keys ("server.listen": at the top) would bypass duplicate detection, so they are unknown. */
    const cfg_key_t *e = NULL;
    char path[160];
    bool plain = kn > 0 && kn <= CFG_MAX_KEY && !memchr(ks, '.', kn) && !memchr(ks, '\0', kn);
    if (plain) {
      snprintf(path, sizeof path, "%s%s%.*s", rel, *rel ? "." : "", (int)kn, ks);
      for (size_t i = 0; i < ntab && !e; i++)
        if (strcmp(tab[i].path, path) == 0) e = &tab[i];
    }
    char key[480];
    snprintf(key, sizeof key, "%s%s%s%s", disp, rel, *rel ? "." : "", show(q, sizeof q, ks, kn));
    if (e) {
      if (tab == cfg_keys) {
        x->seen[e - tab] = true;
        x->marks[e - tab] = v->start_mark;
      }
      if (load_key(x, e, v, base, key) != 0) return -1;
    } else if (plain && is_section(tab, ntab, path)) {
      if (is_null(v)) continue;
      if (expect_kind(x, v, YAML_MAPPING_NODE, key) != 0) return -1;
      if (walk_map(x, v, tab, ntab, base, path, disp) != 0) return -1;
    } else {
      return fail_at(x, k->start_mark, "unknown key \"%s\"", key);
    }
  }
  return 0;
}

static size_t key_index(const char *path) {
  for (size_t i = 0; i < N_KEYS; i++)
    if (strcmp(cfg_keys[i].path, path) == 0) return i;
  abort(); /* a path in this file that is not in the table: a programming error */
}

/* Checks "lo_key <= hi_key" for two duration keys; reports at whichever the file set (lo first). */
static int check_order(ld_t *x, const cfg_t *c, const char *lo_key, const char *hi_key) {
  size_t lo = key_index(lo_key), hi = key_index(hi_key);
  uint64_t a = *(const uint64_t *)((const char *)c + cfg_keys[lo].off);
  uint64_t b = *(const uint64_t *)((const char *)c + cfg_keys[hi].off);
  if (a <= b) return 0;
  char as[32], bs[32];
  size_t at = x->seen[lo] ? lo : hi;
  fmt_ms(as, sizeof as, a);
  fmt_ms(bs, sizeof bs, b);
  if (!x->seen[at])
    return fail_plain(x->err, x->errlen, x->name, "%s (%s) must not exceed %s (%s)", lo_key, as, hi_key, bs);
  return fail_at(x, x->marks[at], "%s (%s) must not exceed %s (%s)", lo_key, as, hi_key, bs);
}

/* Reports a libyaml parse failure as NAME:LINE:COL. Reader errors (bad encoding) carry a byte offset instead of
 * a mark; line and column are derived from it. */
static int fail_yaml(ld_t *x, const yaml_parser_t *p, const char *yaml, size_t len) {
  yaml_mark_t m = p->problem_mark;
  const char *what = p->problem ? p->problem : "unknown problem";
  if (p->error == YAML_MEMORY_ERROR) return fail_plain(x->err, x->errlen, x->name, "out of memory");
  if (p->error == YAML_READER_ERROR) {
    size_t off = p->problem_offset < len ? p->problem_offset : len;
    m.line = m.column = 0;
    for (size_t i = 0; i < off; i++) {
      if (yaml[i] == '\n') m.line++, m.column = 0;
      else m.column++;
    }
    return fail_at(x, m, "invalid input: %s", what);
  }
  if (p->context)
    return fail_at(x, m, "YAML syntax error: %s %s", what, p->context);
  return fail_at(x, m, "YAML syntax error: %s", what);
}

int cfg_load_string(cfg_t *c, const char *yaml, size_t len, const char *name, char *err, size_t errlen) {
  ld_t x = {.name = name ? name : "<config>", .err = err, .errlen = errlen};
  yaml_parser_t parser;
  yaml_document_t doc, extra;
  int rc = -1;
  if (err && errlen) err[0] = '\0';
  if (cfg_init_defaults(c) != 0) return fail_plain(err, errlen, x.name, "out of memory");
  if (!yaml_parser_initialize(&parser)) return fail_plain(err, errlen, x.name, "out of memory");
  yaml_parser_set_input_string(&parser, (const unsigned char *)(yaml ? yaml : ""), yaml ? len : 0);
  if (!yaml_parser_load(&parser, &doc)) {
    fail_yaml(&x, &parser, yaml, len);
    goto out_parser;
  }
  x.doc = &doc;
  yaml_node_t *root = yaml_document_get_root_node(&doc);
  if (root) {
    /* A second document is refused rather than silently ignored. */
    if (!yaml_parser_load(&parser, &extra)) {
      fail_yaml(&x, &parser, yaml, len);
      goto out_doc;
    }
    yaml_node_t *extra_root = yaml_document_get_root_node(&extra);
    yaml_mark_t em = extra.start_mark;
    yaml_document_delete(&extra);
    if (extra_root) {
      fail_at(&x, em, "only one YAML document is supported");
      goto out_doc;
    }
  }
  if (root && !is_null(root)) {
    if (root->type != YAML_MAPPING_NODE) {
      fail_at(&x, root->start_mark, "the top level must be a mapping, got %s", kind_name(root));
      goto out_doc;
    }
    if (walk_map(&x, root, cfg_keys, N_KEYS, c, "", "") != 0) goto out_doc;
  }
  if (check_order(&x, c, "backends.retry.initial_interval", "backends.retry.max_interval") != 0) goto out_doc;
  if (check_order(&x, c, "backends.health_check.timeout", "backends.health_check.interval") != 0) goto out_doc;
  rc = 0;
out_doc:
  yaml_document_delete(&doc);
out_parser:
  yaml_parser_delete(&parser);
  return rc;
}

int cfg_load_file(cfg_t *c, const char *path, char *err, size_t errlen) {
  if (cfg_init_defaults(c) != 0) return fail_plain(err, errlen, path, "out of memory");
  FILE *f = fopen(path, "rb");
  if (!f) return fail_plain(err, errlen, path, "%s", strerror(errno));
  sbuf_t b = {0};
  char chunk[65536];
  int rc = -1;
  for (;;) {
    size_t n = fread(chunk, 1, sizeof chunk, f);
    if (n > 0 && (b.len + n > CFG_MAX_FILE || sb_add(&b, chunk, n) != 0)) {
      fail_plain(err, errlen, path, b.len + n > CFG_MAX_FILE ? "file too large (at most 16MiB)" : "out of memory");
      goto out;
    }
    if (n < sizeof chunk) break;
  }
  if (ferror(f)) {
    fail_plain(err, errlen, path, "%s", strerror(errno));
    goto out;
  }
  cfg_dispose(c); /* cfg_load_string initialises it again */
  rc = cfg_load_string(c, b.p ? b.p : "", b.len, path, err, errlen);
out:
  free(b.p);
  fclose(f);
  return rc;
}

int cfg_add_backends_from_list(cfg_t *c, const char *list, char *err, size_t errlen) {
  const cfg_key_t *e = &cfg_keys[key_index("backends.static")];
  char q[300];
  if (err && errlen) err[0] = '\0';
  for (const char *p = list ? list : ""; *p;) {
    size_t n = strcspn(p, ",");
    const char *s = p, *end = p + n;
    p = *end ? end + 1 : end;
    while (s < end && (*s == ' ' || *s == '\t')) s++;
    while (end > s && (end[-1] == ' ' || end[-1] == '\t')) end--;
    if (s == end) continue;
    char *item = strndup(s, (size_t)(end - s));
    if (!item) return fail_plain(err, errlen, NULL, "out of memory");
    char *h, *path;
    uint16_t port = 0;
    size_t keep = 0;
    bool tls = false;
    const char *bad = parse_endpoint(item, &h, &port, &tls, &path, &keep);
    if (bad) {
      fail_plain(err, errlen, NULL, "invalid endpoint \"%s\" in backend list: %s",
                 show(q, sizeof q, item, strlen(item)), bad);
      free(item);
      return -1;
    }
    item[keep] = '\0';
    int dup = 0;
    for (size_t i = 0; i < c->backends.n_statics; i++) {
      const cfg_backend_t *o = &c->backends.statics[i];
      dup |= o->port == port && o->tls == tls && strcasecmp(o->host, h) == 0 && strcmp(o->path, path) == 0;
    }
    cfg_backend_t *b = NULL;
    if (dup) fail_plain(err, errlen, NULL, "duplicate endpoint \"%s\" in backend list", show(q, sizeof q, item, keep));
    else if (c->backends.n_statics >= e->hi) fail_plain(err, errlen, NULL, "too many backends (at most %llu)",
                                                          (unsigned long long)e->hi);
    else if (!(b = list_push(e, c, sizeof *b))) fail_plain(err, errlen, NULL, "out of memory");
    if (!b) {
      free(item);
      free(h);
      free(path);
      return -1;
    }
    *b = (cfg_backend_t){.endpoint = item, .host = h, .port = port, .weight = 1, .tls = tls, .path = path};
  }
  return 0;
}

/* ---------------------------------------------------------------------------------------------------------
 * Reference
 */

static const char *type_name(const cfg_key_t *e) {
  switch (e->type) {
    case CT_STRING: return "string";
    case CT_U32: return "integer";
    case CT_BOOL: return "bool";
    case CT_DURATION: return "duration";
    case CT_SIZE: return "size";
    case CT_ENUM: return "enum";
    case CT_HOSTPORT: return "host:port";
    case CT_ENDPOINT: return "URL";
    case CT_STRLIST: return "list of strings";
    case CT_BACKENDS: return "list of {endpoint, weight}";
    case CT_HEADERS: return "map of strings";
  }
  return "?";
}

static void print_row(FILE *f, const char *prefix, const cfg_key_t *e) {
  char a[32], b[32];
  fprintf(f, "| `%s%s` | %s", prefix, e->path, type_name(e));
  if (e->type == CT_ENUM) {
    for (const cfg_enum_t *en = e->enums; en->name; en++) fprintf(f, "%s`%s`", en == e->enums ? ": " : ", ", en->name);
  } else if (e->type == CT_U32) {
    fprintf(f, " %llu..%llu", (unsigned long long)e->lo, (unsigned long long)e->hi);
  } else if (e->type == CT_DURATION) {
    fprintf(f, " %s..%s", fmt_ms(a, sizeof a, e->lo), fmt_ms(b, sizeof b, e->hi));
  } else if (e->type == CT_SIZE) {
    fprintf(f, " %s..%s", fmt_bytes(a, sizeof a, e->lo), fmt_bytes(b, sizeof b, e->hi));
  } else if (is_list_type(e->type)) {
    fprintf(f, ", at most %llu", (unsigned long long)e->hi);
  }
  if (!e->def) fprintf(f, " | (required)");
  else if (e->type == CT_HEADERS) fprintf(f, " | `{}`");
  else if (!*e->def || e->type == CT_STRING || e->type == CT_HOSTPORT) fprintf(f, " | `\"%s\"`", e->def);
  else fprintf(f, " | `%s`", e->def);
  fprintf(f, " | ");
  for (const char *h = e->help; *h; h++) {
    if (*h == '|') fputc('\\', f);
    fputc(*h, f);
  }
  fprintf(f, " |\n");
}

void cfg_print_reference(void *file) {
  FILE *f = file;
  fprintf(f, "| key | type | default | help |\n|---|---|---|---|\n");
  for (size_t i = 0; i < N_KEYS; i++) {
    print_row(f, "", &cfg_keys[i]);
    if (cfg_keys[i].type == CT_BACKENDS)
      for (size_t j = 0; j < ARRAY_LEN(backend_keys); j++) print_row(f, "backends.static[].", &backend_keys[j]);
  }
}

/* ---- shared snapshots -------------------------------------------------------------------------------- */

struct cfg_snapshot {
  cfg_t cfg;
  uint64_t generation;
  atomic_uint refs;
};

cfg_snapshot_t *cfg_snapshot_create(cfg_t *c, uint64_t generation) {
  cfg_snapshot_t *s = malloc(sizeof *s);
  if (!s) {
    cfg_dispose(c);
    return NULL;
  }
  s->cfg = *c;
  memset(c, 0, sizeof *c);
  s->generation = generation;
  atomic_init(&s->refs, 1);
  return s;
}

const cfg_t *cfg_snapshot_cfg(const cfg_snapshot_t *s) { return &s->cfg; }
uint64_t cfg_snapshot_generation(const cfg_snapshot_t *s) { return s->generation; }

cfg_snapshot_t *cfg_snapshot_ref(cfg_snapshot_t *s) {
  atomic_fetch_add_explicit(&s->refs, 1, memory_order_relaxed); /* the caller already holds one */
  return s;
}

void cfg_snapshot_unref(cfg_snapshot_t *s) {
  /* acq_rel: every holder's reads of the cfg happen before the last holder frees it. */
  if (!s || atomic_fetch_sub_explicit(&s->refs, 1, memory_order_acq_rel) != 1) return;
  cfg_dispose(&s->cfg);
  free(s);
}
