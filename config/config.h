/*
 * config/ — the gateway's configuration: one struct, one table-driven libyaml loader.
 *
 * The schema (every key, type, default) is DESIGN.md's "Config" block; docs/DESIGN.md is the project's copy.
 * Ownership: every string and array inside cfg_t is heap-owned by the cfg_t and freed by cfg_dispose().
 * Errors: functions return 0 or -1; on -1 they write one line "FILE:LINE:COL: message" (or "FILE: message"
 * when there is no position) into err[errlen]. A cfg_t that failed to load must still be passed to
 * cfg_dispose(), and is never half-applied by callers (load into a fresh cfg_t, swap on success).
 */
#ifndef OTLPGW_CONFIG_H
#define OTLPGW_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum { CFG_LOG_DEBUG = 0, CFG_LOG_INFO, CFG_LOG_WARN, CFG_LOG_ERROR } cfg_log_level_t;
typedef enum { CFG_LOG_LOGFMT = 0, CFG_LOG_JSON } cfg_log_format_t;
typedef enum { CFG_ROUTE_TRACE_ID = 0, CFG_ROUTE_SERVICE, CFG_ROUTE_RESOURCE, CFG_ROUTE_METRIC } cfg_route_t;
typedef enum { CFG_COMPRESSION_NONE = 0, CFG_COMPRESSION_GZIP } cfg_compression_t;
typedef enum { CFG_TLS_1_2 = 12, CFG_TLS_1_3 = 13 } cfg_tls_version_t;
typedef enum { CFG_SCHEME_HTTP = 0, CFG_SCHEME_HTTPS } cfg_scheme_t;
typedef enum { CFG_FSYNC_BATCH = 0, CFG_FSYNC_ALWAYS, CFG_FSYNC_NEVER } cfg_fsync_t; /* = sp_fsync_t */

typedef struct cfg_backend {
  char *endpoint;   /* "http[s]://host[:port][/prefix]" as written, without a trailing "/" (validated) */
  char *host;       /* parsed from endpoint */
  uint16_t port;    /* parsed from endpoint; 80 (http) or 443 (https) when the endpoint has no port */
  uint32_t weight;  /* >= 1, default 1 */
  bool tls;         /* https:// */
  char *path;       /* the path prefix: "" or "/otlp" (no trailing "/"); requests go to <path>/v1/<signal> */
} cfg_backend_t;

typedef struct cfg_header {
  char *name;
  char *value;
} cfg_header_t;

typedef struct cfg {
  struct {
    char *listen;                 /* "host:port" */
    char *grpc_listen;            /* "host:port", "" = no OTLP/gRPC listener */
    uint32_t workers;             /* 0 = one per core */
    uint64_t max_request_bytes;
    uint64_t memory_limit;        /* process-wide budget for buffered telemetry (gateway/memory) */
    uint32_t max_connections;
    uint64_t read_timeout_ms;
    uint64_t idle_timeout_ms;
    uint64_t shutdown_timeout_ms;
    struct {
      char **bearer_tokens;
      size_t n_bearer_tokens;
    } auth;
    struct {
      char *cert_file;            /* "" = TLS off on both listeners */
      char *key_file;
      char *client_ca_file;       /* "" = no client certificates (else mTLS) */
      cfg_tls_version_t min_version;
    } tls;
  } server;
  struct {
    char *listen;
    cfg_log_level_t log_level;
    cfg_log_format_t log_format;
  } telemetry;
  struct {
    cfg_route_t traces;           /* trace_id | service */
    cfg_route_t logs;             /* trace_id | service */
    cfg_route_t metrics;          /* service | resource | metric */
  } routing;
  struct {
    cfg_backend_t *statics;       /* backends.static */
    size_t n_statics;
    struct {
      char *hostname;             /* "" = disabled */
      uint32_t port;
      uint64_t interval_ms;
      char **servers;             /* "host:port" */
      size_t n_servers;
      cfg_scheme_t scheme;        /* http | https for the backends found */
    } dns;
    uint64_t request_timeout_ms;
    uint32_t max_connections_per_backend;
    cfg_compression_t compression;
    cfg_header_t *headers;
    size_t n_headers;
    struct {
      char *ca_file;              /* "" = the system's CA bundle */
      char *cert_file;            /* client certificate (mTLS), with key_file */
      char *key_file;
      char *server_name;          /* SNI + verified name; "" = the endpoint's host */
      bool insecure_skip_verify;
    } tls;
    struct {
      bool enabled;
      char *path;
      uint32_t port;              /* 0 = backend's own port */
      uint64_t interval_ms;
      uint64_t timeout_ms;
      uint32_t rise;
      uint32_t fall;
      uint32_t eject_after_failures;
    } health_check;
    struct {
      uint64_t max_bytes;
      char *directory;            /* "" = retry queues in memory only */
      cfg_fsync_t fsync;
    } queue;
    struct {
      uint64_t max_bytes;         /* largest coalesced backend request (plain bytes) */
      uint32_t max_parts;         /* parts in one; 1 = no coalescing */
    } batch;
    struct {
      uint64_t initial_interval_ms;
      uint64_t max_interval_ms;
      uint64_t max_elapsed_ms;
    } retry;
  } backends;
  /* What higher layers build from this config once, on the main thread, and share with every worker through the
   * snapshot (gateway/tls_config's TLS contexts): set by the builder, freed with the config (free may be NULL). */
  struct {
    void *ptr;
    void (*free)(void *ptr);
  } ext;
} cfg_t;

/* Fills *c with DESIGN.md's defaults (strings heap-allocated). Returns 0, or -1 on out of memory. */
int cfg_init_defaults(cfg_t *c);

/* Initialises *c with defaults, then applies the YAML file at path on top. */
int cfg_load_file(cfg_t *c, const char *path, char *err, size_t errlen);

/* Same from memory; name is used as FILE in error messages. Used by tests and the fuzzer. */
int cfg_load_string(cfg_t *c, const char *yaml, size_t len, const char *name, char *err, size_t errlen);

/* Appends backends from a comma-separated endpoint list (OTLP_GATEWAY_BACKENDS), weight 1 each. */
int cfg_add_backends_from_list(cfg_t *c, const char *list, char *err, size_t errlen);

/* Frees everything *c owns and zeroes it. Safe on a zeroed or partially loaded cfg_t. */
void cfg_dispose(cfg_t *c);

/* Parsers shared with the CLI and tests. Return 0 or -1 (malformed, overflow). */
int cfg_parse_duration_ms(const char *s, uint64_t *out_ms); /* "250ms", "5s", "2m", "1h", "1.5s"; bare "0" */
int cfg_parse_size(const char *s, uint64_t *out_bytes);     /* "65536", "64KiB", "16MiB", "1GiB", "10KB", "1MB" */
int cfg_parse_hostport(const char *s, char **host, uint16_t *port); /* "0.0.0.0:4318", "[::1]:4318" */

/* Writes the key table as a markdown table (key, type, default, help) — used to keep docs/ true to the code. */
void cfg_print_reference(void *file /* FILE* */);

/* ---- shared snapshots ----------------------------------------------------------------------------------
 * A loaded, validated cfg_t frozen for sharing between threads (SIGHUP: the main thread parses the file once
 * and every worker loop adopts the same snapshot). Nothing may write to the cfg_t once it is in a snapshot.
 * Reference-counted with an atomic count: ref and unref are safe on any thread, and whichever holder drops
 * the last reference frees the cfg_t (cfg_dispose) and the snapshot. generation is the caller's label (the
 * CLI counts 1 at start, +1 per applied reload) so logs can show which snapshot each worker runs. */
typedef struct cfg_snapshot cfg_snapshot_t;

/* Takes over *c (zeroes it) and returns a snapshot holding one reference for the caller; NULL when out of
 * memory (then *c is disposed). */
cfg_snapshot_t *cfg_snapshot_create(cfg_t *c, uint64_t generation);
const cfg_t *cfg_snapshot_cfg(const cfg_snapshot_t *s);
uint64_t cfg_snapshot_generation(const cfg_snapshot_t *s);
/* One more reference (returns s). */
cfg_snapshot_t *cfg_snapshot_ref(cfg_snapshot_t *s);
/* Drops one reference; the last one frees. NULL is a no-op. */
void cfg_snapshot_unref(cfg_snapshot_t *s);

#endif
