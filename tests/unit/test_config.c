/*
 * Unit tests for config/: defaults, every key, value parsers, ${env:...} expansion, and every error path with
 * its exact "FILE:LINE:COL: " prefix.
 */
#include "config/config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "test.h"

/* Loads yaml as "gw.yaml" into a fresh cfg_t; the caller disposes it. */
static int load(cfg_t *c, const char *yaml, char *err, size_t errlen) {
  return cfg_load_string(c, yaml, strlen(yaml), "gw.yaml", err, errlen);
}

/* Loads yaml expecting failure with exactly the message want; disposes. */
#define CHECK_LOAD_ERR(yaml, want)                                                    \
  do {                                                                                \
    cfg_t c_;                                                                         \
    char e_[512] = "";                                                                \
    CHECK_EQ_INT(load(&c_, (yaml), e_, sizeof e_), -1);                               \
    CHECK_EQ_STR(e_, (want));                                                         \
    CHECK(strchr(e_, '\n') == NULL);                                                  \
    cfg_dispose(&c_);                                                                 \
  } while (0)

/* Loads yaml expecting success; leaves the result in c for checks. */
#define LOAD_OK(c, yaml)                                                              \
  do {                                                                                \
    char e_[512] = "";                                                                \
    int rc_ = load(&(c), (yaml), e_, sizeof e_);                                      \
    CHECK_EQ_INT(rc_, 0);                                                             \
    if (rc_ != 0) fprintf(stderr, "  error: %s\n", e_);                               \
  } while (0)

static void check_defaults(const cfg_t *c) {
  CHECK_EQ_STR(c->server.listen, "0.0.0.0:4318");
  CHECK_EQ_INT(c->server.workers, 0);
  CHECK_EQ_INT(c->server.max_request_bytes, 64ull << 20);
  CHECK_EQ_INT(c->server.memory_limit, 1ull << 30);
  CHECK_EQ_INT(c->server.max_connections, 10000);
  CHECK_EQ_INT(c->server.read_timeout_ms, 30000);
  CHECK_EQ_INT(c->server.idle_timeout_ms, 120000);
  CHECK_EQ_INT(c->server.shutdown_timeout_ms, 30000);
  CHECK_EQ_INT(c->server.auth.n_bearer_tokens, 0);
  CHECK(c->server.auth.bearer_tokens == NULL);
  CHECK_EQ_STR(c->telemetry.listen, "0.0.0.0:8888");
  CHECK_EQ_INT(c->telemetry.log_level, CFG_LOG_INFO);
  CHECK_EQ_INT(c->telemetry.log_format, CFG_LOG_LOGFMT);
  CHECK_EQ_INT(c->routing.traces, CFG_ROUTE_TRACE_ID);
  CHECK_EQ_INT(c->routing.logs, CFG_ROUTE_TRACE_ID);
  CHECK_EQ_INT(c->routing.metrics, CFG_ROUTE_SERVICE);
  CHECK_EQ_INT(c->backends.n_statics, 0);
  CHECK_EQ_STR(c->backends.dns.hostname, "");
  CHECK_EQ_INT(c->backends.dns.port, 4318);
  CHECK_EQ_INT(c->backends.dns.interval_ms, 5000);
  CHECK_EQ_INT(c->backends.dns.n_servers, 0);
  CHECK_EQ_INT(c->backends.request_timeout_ms, 5000);
  CHECK_EQ_INT(c->backends.max_connections_per_backend, 32);
  CHECK_EQ_INT(c->backends.compression, CFG_COMPRESSION_NONE);
  CHECK_EQ_INT(c->backends.n_headers, 0);
  CHECK_EQ_INT(c->backends.health_check.enabled, 1);
  CHECK_EQ_STR(c->backends.health_check.path, "/");
  CHECK_EQ_INT(c->backends.health_check.port, 0);
  CHECK_EQ_INT(c->backends.health_check.interval_ms, 2000);
  CHECK_EQ_INT(c->backends.health_check.timeout_ms, 1000);
  CHECK_EQ_INT(c->backends.health_check.rise, 2);
  CHECK_EQ_INT(c->backends.health_check.fall, 3);
  CHECK_EQ_INT(c->backends.health_check.eject_after_failures, 5);
  CHECK_EQ_INT(c->backends.queue.max_bytes, 256ull << 20);
  CHECK_EQ_STR(c->backends.queue.directory, "");
  CHECK_EQ_INT(c->backends.retry.initial_interval_ms, 100);
  CHECK_EQ_INT(c->backends.retry.max_interval_ms, 5000);
  CHECK_EQ_INT(c->backends.retry.max_elapsed_ms, 300000);
}

TEST(defaults_match_design) {
  cfg_t c;
  CHECK_EQ_INT(cfg_init_defaults(&c), 0);
  check_defaults(&c);
  cfg_dispose(&c);
}

TEST(empty_and_comment_only_files_are_defaults) {
  const char *docs[] = {"", "# nothing here\n\n   # still nothing\n", "---\n", "~\n", "server:\n  auth:\n"};
  for (size_t i = 0; i < sizeof docs / sizeof docs[0]; i++) {
    cfg_t c;
    LOAD_OK(c, docs[i]);
    check_defaults(&c);
    cfg_dispose(&c);
  }
}

TEST(dispose_is_safe_on_zeroed_and_twice) {
  cfg_t c;
  memset(&c, 0, sizeof c);
  cfg_dispose(&c);
  CHECK_EQ_INT(cfg_init_defaults(&c), 0);
  cfg_dispose(&c);
  cfg_dispose(&c);
  CHECK(c.server.listen == NULL);
}

static const char full_yaml[] =
    "server:\n"
    "  listen: \"127.0.0.1:14318\"\n"
    "  workers: 4\n"
    "  max_request_bytes: 8MiB\n"
    "  max_connections: 500\n"
    "  read_timeout: 10s\n"
    "  idle_timeout: 2m\n"
    "  shutdown_timeout: 1.5s\n"
    "  auth:\n"
    "    bearer_tokens: [tok-1, \"tok-2\"]\n"
    "telemetry:\n"
    "  listen: \"[::1]:9999\"\n"
    "  log_level: debug\n"
    "  log_format: json\n"
    "routing:\n"
    "  traces: service\n"
    "  logs: service\n"
    "  metrics: metric\n"
    "backends:\n"
    "  static:\n"
    "    - {endpoint: \"http://collector-1:4318\", weight: 2}\n"
    "    - endpoint: http://collector-2/\n"
    "    - endpoint: \"http://[fd00::1]:4318/\"\n"
    "      weight: 1000000\n"
    "  dns:\n"
    "    hostname: collectors.otel.svc.cluster.local\n"
    "    port: 14318\n"
    "    interval: 30s\n"
    "    servers: [\"10.0.0.10:53\", \"[2001:db8::53]:53\"]\n"
    "  request_timeout: 250ms\n"
    "  max_connections_per_backend: 8\n"
    "  compression: gzip\n"
    "  headers:\n"
    "    Authorization: \"Basic abc==\"\n"
    "    X-Scope-OrgID: tenant-1\n"
    "  health_check:\n"
    "    enabled: false\n"
    "    path: /health/status\n"
    "    port: 13133\n"
    "    interval: 5s\n"
    "    timeout: 500ms\n"
    "    rise: 1\n"
    "    fall: 10\n"
    "    eject_after_failures: 7\n"
    "  queue:\n"
    "    max_bytes: 1GiB\n"
    "    directory: \"\"\n"
    "  retry:\n"
    "    initial_interval: 50ms\n"
    "    max_interval: 1m\n"
    "    max_elapsed: 1h\n";

TEST(full_config_every_key) {
  cfg_t c;
  LOAD_OK(c, full_yaml);
  CHECK_EQ_STR(c.server.listen, "127.0.0.1:14318");
  CHECK_EQ_INT(c.server.workers, 4);
  CHECK_EQ_INT(c.server.max_request_bytes, 8ull << 20);
  CHECK_EQ_INT(c.server.max_connections, 500);
  CHECK_EQ_INT(c.server.read_timeout_ms, 10000);
  CHECK_EQ_INT(c.server.idle_timeout_ms, 120000);
  CHECK_EQ_INT(c.server.shutdown_timeout_ms, 1500);
  CHECK_EQ_INT(c.server.auth.n_bearer_tokens, 2);
  if (c.server.auth.n_bearer_tokens == 2) {
    CHECK_EQ_STR(c.server.auth.bearer_tokens[0], "tok-1");
    CHECK_EQ_STR(c.server.auth.bearer_tokens[1], "tok-2");
  }
  CHECK_EQ_STR(c.telemetry.listen, "[::1]:9999");
  CHECK_EQ_INT(c.telemetry.log_level, CFG_LOG_DEBUG);
  CHECK_EQ_INT(c.telemetry.log_format, CFG_LOG_JSON);
  CHECK_EQ_INT(c.routing.traces, CFG_ROUTE_SERVICE);
  CHECK_EQ_INT(c.routing.logs, CFG_ROUTE_SERVICE);
  CHECK_EQ_INT(c.routing.metrics, CFG_ROUTE_METRIC);
  CHECK_EQ_INT(c.backends.n_statics, 3);
  if (c.backends.n_statics == 3) {
    CHECK_EQ_STR(c.backends.statics[0].endpoint, "http://collector-1:4318");
    CHECK_EQ_STR(c.backends.statics[0].host, "collector-1");
    CHECK_EQ_INT(c.backends.statics[0].port, 4318);
    CHECK_EQ_INT(c.backends.statics[0].weight, 2);
    CHECK_EQ_STR(c.backends.statics[1].endpoint, "http://collector-2");
    CHECK_EQ_STR(c.backends.statics[1].host, "collector-2");
    CHECK_EQ_INT(c.backends.statics[1].port, 80);
    CHECK_EQ_INT(c.backends.statics[1].weight, 1);
    CHECK_EQ_STR(c.backends.statics[2].endpoint, "http://[fd00::1]:4318");
    CHECK_EQ_STR(c.backends.statics[2].host, "fd00::1");
    CHECK_EQ_INT(c.backends.statics[2].port, 4318);
    CHECK_EQ_INT(c.backends.statics[2].weight, 1000000);
  }
  CHECK_EQ_STR(c.backends.dns.hostname, "collectors.otel.svc.cluster.local");
  CHECK_EQ_INT(c.backends.dns.port, 14318);
  CHECK_EQ_INT(c.backends.dns.interval_ms, 30000);
  CHECK_EQ_INT(c.backends.dns.n_servers, 2);
  if (c.backends.dns.n_servers == 2) {
    CHECK_EQ_STR(c.backends.dns.servers[0], "10.0.0.10:53");
    CHECK_EQ_STR(c.backends.dns.servers[1], "[2001:db8::53]:53");
  }
  CHECK_EQ_INT(c.backends.request_timeout_ms, 250);
  CHECK_EQ_INT(c.backends.max_connections_per_backend, 8);
  CHECK_EQ_INT(c.backends.compression, CFG_COMPRESSION_GZIP);
  CHECK_EQ_INT(c.backends.n_headers, 2);
  if (c.backends.n_headers == 2) {
    CHECK_EQ_STR(c.backends.headers[0].name, "Authorization");
    CHECK_EQ_STR(c.backends.headers[0].value, "Basic abc==");
    CHECK_EQ_STR(c.backends.headers[1].name, "X-Scope-OrgID");
    CHECK_EQ_STR(c.backends.headers[1].value, "tenant-1");
  }
  CHECK_EQ_INT(c.backends.health_check.enabled, 0);
  CHECK_EQ_STR(c.backends.health_check.path, "/health/status");
  CHECK_EQ_INT(c.backends.health_check.port, 13133);
  CHECK_EQ_INT(c.backends.health_check.interval_ms, 5000);
  CHECK_EQ_INT(c.backends.health_check.timeout_ms, 500);
  CHECK_EQ_INT(c.backends.health_check.rise, 1);
  CHECK_EQ_INT(c.backends.health_check.fall, 10);
  CHECK_EQ_INT(c.backends.health_check.eject_after_failures, 7);
  CHECK_EQ_INT(c.backends.queue.max_bytes, 1ull << 30);
  CHECK_EQ_STR(c.backends.queue.directory, "");
  CHECK_EQ_INT(c.backends.retry.initial_interval_ms, 50);
  CHECK_EQ_INT(c.backends.retry.max_interval_ms, 60000);
  CHECK_EQ_INT(c.backends.retry.max_elapsed_ms, 3600000);
  cfg_dispose(&c);
}

TEST(partial_config_keeps_other_defaults) {
  cfg_t c;
  LOAD_OK(c, "server:\n  workers: 2\n");
  CHECK_EQ_INT(c.server.workers, 2);
  CHECK_EQ_STR(c.server.listen, "0.0.0.0:4318");
  CHECK_EQ_INT(c.backends.health_check.rise, 2);
  cfg_dispose(&c);
}

TEST(every_enum_value) {
  static const struct {
    const char *yaml;
    size_t off;
    int want;
  } cases[] = {
      {"telemetry: {log_level: debug}", offsetof(cfg_t, telemetry.log_level), CFG_LOG_DEBUG},
      {"telemetry: {log_level: info}", offsetof(cfg_t, telemetry.log_level), CFG_LOG_INFO},
      {"telemetry: {log_level: warn}", offsetof(cfg_t, telemetry.log_level), CFG_LOG_WARN},
      {"telemetry: {log_level: error}", offsetof(cfg_t, telemetry.log_level), CFG_LOG_ERROR},
      {"telemetry: {log_format: logfmt}", offsetof(cfg_t, telemetry.log_format), CFG_LOG_LOGFMT},
      {"telemetry: {log_format: json}", offsetof(cfg_t, telemetry.log_format), CFG_LOG_JSON},
      {"routing: {traces: trace_id}", offsetof(cfg_t, routing.traces), CFG_ROUTE_TRACE_ID},
      {"routing: {traces: service}", offsetof(cfg_t, routing.traces), CFG_ROUTE_SERVICE},
      {"routing: {logs: trace_id}", offsetof(cfg_t, routing.logs), CFG_ROUTE_TRACE_ID},
      {"routing: {logs: service}", offsetof(cfg_t, routing.logs), CFG_ROUTE_SERVICE},
      {"routing: {metrics: service}", offsetof(cfg_t, routing.metrics), CFG_ROUTE_SERVICE},
      {"routing: {metrics: resource}", offsetof(cfg_t, routing.metrics), CFG_ROUTE_RESOURCE},
      {"routing: {metrics: metric}", offsetof(cfg_t, routing.metrics), CFG_ROUTE_METRIC},
      {"backends: {compression: none}", offsetof(cfg_t, backends.compression), CFG_COMPRESSION_NONE},
      {"backends: {compression: gzip}", offsetof(cfg_t, backends.compression), CFG_COMPRESSION_GZIP},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    cfg_t c;
    LOAD_OK(c, cases[i].yaml);
    CHECK_EQ_INT(*(const int *)((const char *)&c + cases[i].off), cases[i].want);
    cfg_dispose(&c);
  }
}

TEST(bad_enum_values) {
  CHECK_LOAD_ERR("telemetry:\n  log_level: verbose\n",
                 "gw.yaml:2:14: telemetry.log_level: invalid value \"verbose\" (expected debug, info, warn, error)");
  CHECK_LOAD_ERR("routing:\n  traces: metric\n",
                 "gw.yaml:2:11: routing.traces: invalid value \"metric\" (expected trace_id, service)");
  CHECK_LOAD_ERR("routing:\n  logs: resource\n",
                 "gw.yaml:2:9: routing.logs: invalid value \"resource\" (expected trace_id, service)");
  CHECK_LOAD_ERR("routing:\n  metrics: trace_id\n",
                 "gw.yaml:2:12: routing.metrics: invalid value \"trace_id\" (expected service, resource, metric)");
  CHECK_LOAD_ERR("backends:\n  compression: zstd\n",
                 "gw.yaml:2:16: backends.compression: invalid value \"zstd\" (expected none, gzip)");
  CHECK_LOAD_ERR("telemetry:\n  log_format: JSON\n",
                 "gw.yaml:2:15: telemetry.log_format: invalid value \"JSON\" (expected logfmt, json)");
}

TEST(parse_duration) {
  static const struct {
    const char *s;
    uint64_t ms;
  } good[] = {{"0", 0},          {"0ms", 0},     {"250ms", 250},     {"5s", 5000},       {"2m", 120000},
              {"1h", 3600000},   {"1.5s", 1500}, {"0.25s", 250},     {"1.5m", 90000},    {"0.001s", 1},
              {"120s", 120000},  {"007s", 7000}};
  for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
    uint64_t v = 12345;
    CHECK_EQ_INT(cfg_parse_duration_ms(good[i].s, &v), 0);
    CHECK_EQ_INT(v, good[i].ms);
  }
  static const char *const bad[] = {"",     "5",    "3x",   "-1s", "1.5ms", "s",     "1.s",  ".5s",  " 5s",
                                    "5s ",  "5 s",  "5S",   "1d",  "5sec",  "1m30s", "+5s", "0x10s",
                                    "1.0000000001s", "99999999999999999999ms", "5124095576031h"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    uint64_t v = 0;
    if (cfg_parse_duration_ms(bad[i], &v) != -1) fprintf(stderr, "  accepted bad duration \"%s\"\n", bad[i]);
    CHECK_EQ_INT(cfg_parse_duration_ms(bad[i], &v), -1);
  }
  uint64_t v = 0;
  CHECK_EQ_INT(cfg_parse_duration_ms("1.000000001h", &v), -1); /* 3.6 us: not a whole ms */
  CHECK_EQ_INT(cfg_parse_duration_ms("5124095576030h", &v), 0);
  CHECK_EQ_INT(cfg_parse_duration_ms(NULL, &v), -1);
}

TEST(parse_size) {
  static const struct {
    const char *s;
    uint64_t b;
  } good[] = {{"0", 0},           {"65536", 65536},      {"64KiB", 65536},   {"16MiB", 16777216},
              {"1GiB", 1073741824}, {"10KB", 10000},     {"1MB", 1000000},   {"2GB", 2000000000},
              {"18446744073709551615", UINT64_MAX}};
  for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
    uint64_t v = 1;
    CHECK_EQ_INT(cfg_parse_size(good[i].s, &v), 0);
    CHECK(v == good[i].b);
  }
  static const char *const bad[] = {"",     "-1",     "64 KiB", "64kib", "64K",  "1.5MiB", "MiB", "12x",
                                    "1TB",  "0x10",   " 1",     "1 ",    "18446744073709551616",
                                    "17179869184GiB", "18446744073709552KB"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    uint64_t v = 0;
    if (cfg_parse_size(bad[i], &v) != -1) fprintf(stderr, "  accepted bad size \"%s\"\n", bad[i]);
    CHECK_EQ_INT(cfg_parse_size(bad[i], &v), -1);
  }
}

TEST(parse_hostport) {
  static const struct {
    const char *s, *host;
    int port;
  } good[] = {{"0.0.0.0:4318", "0.0.0.0", 4318},
              {"127.0.0.1:0", "127.0.0.1", 0},
              {"[::1]:4318", "::1", 4318},
              {"localhost:80", "localhost", 80},
              {"[fe80::1%eth0]:65535", "fe80::1%eth0", 65535}};
  for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
    char *h = NULL;
    uint16_t p = 1;
    CHECK_EQ_INT(cfg_parse_hostport(good[i].s, &h, &p), 0);
    CHECK_EQ_STR(h, good[i].host);
    CHECK_EQ_INT(p, good[i].port);
    free(h);
  }
  static const char *const bad[] = {"",          ":4318",   "localhost", "localhost:", "host:65536", "host:-1",
                                    "::1:4318",  "[::1]",   "[::1",      "[]:80",      "[::1]x:80",  "a b:80",
                                    "host:80/x", "http://host:80", "host:8o"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    char *h = (char *)"untouched";
    uint16_t p = 0;
    if (cfg_parse_hostport(bad[i], &h, &p) != -1) fprintf(stderr, "  accepted bad address \"%s\"\n", bad[i]);
    CHECK_EQ_INT(cfg_parse_hostport(bad[i], &h, &p), -1);
    CHECK_EQ_STR(h, "untouched");
  }
}

TEST(durations_and_sizes_in_yaml) {
  cfg_t c;
  LOAD_OK(c, "server:\n  max_request_bytes: 1KiB\n  read_timeout: 0.5s\n  shutdown_timeout: 0\n"
             "backends:\n  queue:\n    max_bytes: 64KiB\n  retry:\n    max_elapsed: 0\n");
  CHECK_EQ_INT(c.server.max_request_bytes, 1024);
  CHECK_EQ_INT(c.server.read_timeout_ms, 500);
  CHECK_EQ_INT(c.server.shutdown_timeout_ms, 0);
  CHECK_EQ_INT(c.backends.queue.max_bytes, 65536);
  CHECK_EQ_INT(c.backends.retry.max_elapsed_ms, 0);
  cfg_dispose(&c);
  LOAD_OK(c, "server:\n  max_request_bytes: 65536\n");
  CHECK_EQ_INT(c.server.max_request_bytes, 65536);
  cfg_dispose(&c);
  LOAD_OK(c, "server:\n  memory_limit: 512MiB\n");
  CHECK_EQ_INT(c.server.memory_limit, 512ull << 20);
  cfg_dispose(&c);
  CHECK_LOAD_ERR("server:\n  memory_limit: 64KiB\n",
                 "gw.yaml:2:17: server.memory_limit: 64KiB is out of range (1MiB..64TiB)");

  CHECK_LOAD_ERR("server:\n  read_timeout: 3x\n",
                 "gw.yaml:2:17: server.read_timeout: invalid duration \"3x\" (use e.g. 250ms, 5s, 2m)");
  CHECK_LOAD_ERR("server:\n  read_timeout: 0\n", "gw.yaml:2:17: server.read_timeout: 0 is out of range (1ms..24h)");
  CHECK_LOAD_ERR("server:\n  idle_timeout: 25h\n",
                 "gw.yaml:2:17: server.idle_timeout: 25h is out of range (1ms..24h)");
  CHECK_LOAD_ERR("server:\n  max_request_bytes: 64Mib\n",
                 "gw.yaml:2:22: server.max_request_bytes: invalid size \"64Mib\" (use e.g. 65536, 64KiB, 16MiB)");
  CHECK_LOAD_ERR("server:\n  max_request_bytes: -1\n",
                 "gw.yaml:2:22: server.max_request_bytes: invalid size \"-1\" (use e.g. 65536, 64KiB, 16MiB)");
  CHECK_LOAD_ERR("server:\n  max_request_bytes: 512\n",
                 "gw.yaml:2:22: server.max_request_bytes: 512 is out of range (1KiB..4GiB)");
  CHECK_LOAD_ERR("server:\n  max_request_bytes: 99999999999999999999999\n",
                 "gw.yaml:2:22: server.max_request_bytes: invalid size \"99999999999999999999999\" "
                 "(use e.g. 65536, 64KiB, 16MiB)");
  CHECK_LOAD_ERR("backends:\n  queue:\n    max_bytes: 2TiB\n",
                 "gw.yaml:3:16: backends.queue.max_bytes: invalid size \"2TiB\" (use e.g. 65536, 64KiB, 16MiB)");
}

TEST(integers_and_bools) {
  cfg_t c;
  LOAD_OK(c, "server: {workers: 1024}\nbackends: {health_check: {enabled: no, port: 0}}\n");
  CHECK_EQ_INT(c.server.workers, 1024);
  CHECK_EQ_INT(c.backends.health_check.enabled, 0);
  cfg_dispose(&c);
  LOAD_OK(c, "backends: {health_check: {enabled: True}}\n");
  CHECK_EQ_INT(c.backends.health_check.enabled, 1);
  cfg_dispose(&c);

  CHECK_LOAD_ERR("server:\n  workers: four\n", "gw.yaml:2:12: server.workers: invalid integer \"four\"");
  CHECK_LOAD_ERR("server:\n  workers: -1\n", "gw.yaml:2:12: server.workers: invalid integer \"-1\"");
  CHECK_LOAD_ERR("server:\n  workers: 1.5\n", "gw.yaml:2:12: server.workers: invalid integer \"1.5\"");
  CHECK_LOAD_ERR("server:\n  workers: 1025\n", "gw.yaml:2:12: server.workers: 1025 is out of range (0..1024)");
  CHECK_LOAD_ERR("server:\n  workers: 99999999999999999999999\n",
                 "gw.yaml:2:12: server.workers: invalid integer \"99999999999999999999999\"");
  CHECK_LOAD_ERR("server:\n  max_connections: 0\n",
                 "gw.yaml:2:20: server.max_connections: 0 is out of range (1..1000000)");
  CHECK_LOAD_ERR("backends:\n  dns:\n    port: 0\n", "gw.yaml:3:11: backends.dns.port: 0 is out of range (1..65535)");
  CHECK_LOAD_ERR("backends:\n  health_check:\n    port: 65536\n",
                 "gw.yaml:3:11: backends.health_check.port: 65536 is out of range (0..65535)");
  CHECK_LOAD_ERR("backends:\n  health_check:\n    rise: 0\n",
                 "gw.yaml:3:11: backends.health_check.rise: 0 is out of range (1..1000)");
  CHECK_LOAD_ERR("backends:\n  health_check:\n    fall: 0\n",
                 "gw.yaml:3:11: backends.health_check.fall: 0 is out of range (1..1000)");
  CHECK_LOAD_ERR("backends:\n  health_check:\n    enabled: maybe\n",
                 "gw.yaml:3:14: backends.health_check.enabled: invalid boolean \"maybe\" (use true or false)");
  CHECK_LOAD_ERR("backends:\n  health_check:\n    path: health\n",
                 "gw.yaml:3:11: backends.health_check.path: must start with \"/\"");
  CHECK_LOAD_ERR("backends:\n  dns:\n    hostname: \"bad host\"\n",
                 "gw.yaml:3:15: backends.dns.hostname: invalid host name");
}

TEST(listen_addresses) {
  cfg_t c;
  LOAD_OK(c, "server: {listen: \"127.0.0.1:0\"}\ntelemetry: {listen: \"localhost:0\"}\n");
  CHECK_EQ_STR(c.server.listen, "127.0.0.1:0");
  CHECK_EQ_STR(c.telemetry.listen, "localhost:0");
  cfg_dispose(&c);
  CHECK_LOAD_ERR("server:\n  listen: 4318\n",
                 "gw.yaml:2:11: server.listen: invalid address \"4318\": missing port "
                 "(use host:port, e.g. 0.0.0.0:4318 or [::1]:4318)");
  CHECK_LOAD_ERR("telemetry:\n  listen: \"host:70000\"\n",
                 "gw.yaml:2:11: telemetry.listen: invalid address \"host:70000\": invalid port "
                 "(use host:port, e.g. 0.0.0.0:4318 or [::1]:4318)");
  CHECK_LOAD_ERR("backends:\n  dns:\n    servers: [\"10.0.0.1:0\"]\n",
                 "gw.yaml:3:15: backends.dns.servers[0]: port must be 1..65535");
  CHECK_LOAD_ERR("backends:\n  dns:\n    servers: [\"10.0.0.1:53\", 10.0.0.2]\n",
                 "gw.yaml:3:30: backends.dns.servers[1]: missing port");
}

/* backends.queue.directory: an absolute path, whatever the YAML style or expansion, with queue.fsync; a relative
 * one is refused at the value's position; an empty one (the default, "", a null scalar, an empty expansion) keeps
 * the in-memory queues. (Writable and not held by another gateway is checked by gateway/spool at start.) */
TEST(queue_directory_and_fsync) {
  cfg_t c;
  LOAD_OK(c, "backends:\n  queue:\n    directory: /var/spool/otlp-gateway\n    fsync: always\n");
  CHECK_EQ_STR(c.backends.queue.directory, "/var/spool/otlp-gateway");
  CHECK_EQ_INT(c.backends.queue.fsync, CFG_FSYNC_ALWAYS);
  cfg_dispose(&c);
  setenv("CFGT_SPOOL", "/var/spool/gw", 1);
  LOAD_OK(c, "backends:\n  queue: {max_bytes: 1GiB, directory: \"${env:CFGT_SPOOL}\"}\n");
  CHECK_EQ_STR(c.backends.queue.directory, "/var/spool/gw");
  CHECK_EQ_INT(c.backends.queue.fsync, CFG_FSYNC_BATCH);
  cfg_dispose(&c);
  unsetenv("CFGT_SPOOL");
  CHECK_LOAD_ERR("backends:\n  queue:\n    directory: spool\n",
                 "gw.yaml:3:16: backends.queue.directory: must be an absolute path");
  CHECK_LOAD_ERR("backends:\n  queue:\n    fsync: sometimes\n",
                 "gw.yaml:3:12: backends.queue.fsync: invalid value \"sometimes\" (expected batch, always, never)");
  static const char *const empty[] = {"backends:\n  queue:\n    directory: \"\"\n",
                                      "backends:\n  queue:\n    directory:\n",
                                      "backends:\n  queue:\n    directory: ${env:CFGT_SPOOL:-}\n"};
  for (size_t i = 0; i < sizeof empty / sizeof empty[0]; i++) {
    LOAD_OK(c, empty[i]);
    CHECK_EQ_STR(c.backends.queue.directory, "");
    cfg_dispose(&c);
  }
}

TEST(env_expansion) {
  setenv("CFGT_PORT", "4319", 1);
  setenv("CFGT_HOST", "10.1.2.3", 1);
  setenv("CFGT_TOKEN", "s3cret", 1);
  setenv("CFGT_EMPTY", "", 1);
  unsetenv("CFGT_UNSET");
  cfg_t c;
  LOAD_OK(c,
          "server:\n"
          "  listen: \"${env:CFGT_HOST}:${env:CFGT_PORT}\"\n"
          "  workers: ${env:CFGT_UNSET:-3}\n"
          "  auth:\n"
          "    bearer_tokens: [\"${env:CFGT_TOKEN}\", \"pre-${env:CFGT_TOKEN}-post\"]\n"
          "backends:\n"
          "  static:\n"
          "    - endpoint: http://${env:CFGT_HOST}:${env:CFGT_PORT}\n"
          "  headers:\n"
          "    Authorization: \"Basic ${env:CFGT_TOKEN}\"\n"
          "    X-Empty: \"[${env:CFGT_EMPTY}]\"\n"
          "    X-Default: \"${env:CFGT_EMPTY:-fallback}${env:CFGT_UNSET:-}$5 and $ {x}\"\n"
          "  health_check:\n"
          "    path: ${env:CFGT_UNSET:-/status:x}\n"
          "  queue:\n"
          "    directory: ${env:CFGT_EMPTY}\n");
  CHECK_EQ_STR(c.server.listen, "10.1.2.3:4319");
  CHECK_EQ_INT(c.server.workers, 3);
  CHECK_EQ_INT(c.server.auth.n_bearer_tokens, 2);
  if (c.server.auth.n_bearer_tokens == 2) {
    CHECK_EQ_STR(c.server.auth.bearer_tokens[0], "s3cret");
    CHECK_EQ_STR(c.server.auth.bearer_tokens[1], "pre-s3cret-post");
  }
  CHECK_EQ_INT(c.backends.n_statics, 1);
  if (c.backends.n_statics == 1) {
    CHECK_EQ_STR(c.backends.statics[0].endpoint, "http://10.1.2.3:4319");
    CHECK_EQ_STR(c.backends.statics[0].host, "10.1.2.3");
    CHECK_EQ_INT(c.backends.statics[0].port, 4319);
  }
  CHECK_EQ_INT(c.backends.n_headers, 3);
  if (c.backends.n_headers == 3) {
    CHECK_EQ_STR(c.backends.headers[0].value, "Basic s3cret");
    CHECK_EQ_STR(c.backends.headers[1].value, "[]");
    CHECK_EQ_STR(c.backends.headers[2].value, "fallback$5 and $ {x}");
  }
  CHECK_EQ_STR(c.backends.health_check.path, "/status:x");
  CHECK_EQ_STR(c.backends.queue.directory, ""); /* empty after expansion: the in-memory queues, accepted */
  cfg_dispose(&c);

  CHECK_LOAD_ERR("server:\n  listen: \"${env:CFGT_UNSET}\"\n",
                 "gw.yaml:2:11: server.listen: environment variable \"CFGT_UNSET\" is not set");
  CHECK_LOAD_ERR("server:\n  listen: \"0.0.0.0:${env:CFGT_PORT\"\n",
                 "gw.yaml:2:11: server.listen: malformed reference \"${env:CFGT_PORT\" "
                 "(use ${env:NAME} or ${env:NAME:-default})");
  CHECK_LOAD_ERR("server:\n  listen: \"${CFGT_PORT}\"\n",
                 "gw.yaml:2:11: server.listen: malformed reference \"${CFGT_PORT}\" "
                 "(use ${env:NAME} or ${env:NAME:-default})");
  CHECK_LOAD_ERR("server:\n  listen: \"${env:}\"\n",
                 "gw.yaml:2:11: server.listen: malformed reference \"${env:}\" (use ${env:NAME} or ${env:NAME:-default})");
  CHECK_LOAD_ERR("server:\n  listen: \"${env:A B}\"\n",
                 "gw.yaml:2:11: server.listen: malformed reference \"${env:A B}\" "
                 "(use ${env:NAME} or ${env:NAME:-default})");
  CHECK_LOAD_ERR("server:\n  listen: \"${env:CFGT_UNSET:-${env:CFGT_PORT}}\"\n",
                 "gw.yaml:2:11: server.listen: nested references are not supported in \"${env:CFGT_UNSET:-${env:CFGT_PORT}\"");
  /* The expanded value is validated like a literal one. */
  CHECK_LOAD_ERR("server:\n  workers: ${env:CFGT_HOST}\n", "gw.yaml:2:12: server.workers: invalid integer \"10.1.2.3\"");
  /* Expansion applies inside lists and header maps too. */
  CHECK_LOAD_ERR("server:\n  auth:\n    bearer_tokens:\n      - ok\n      - ${env:CFGT_UNSET}\n",
                 "gw.yaml:5:9: server.auth.bearer_tokens[1]: environment variable \"CFGT_UNSET\" is not set");
  CHECK_LOAD_ERR("backends:\n  headers:\n    X-A: ${env:CFGT_UNSET}\n",
                 "gw.yaml:3:10: backends.headers.X-A: environment variable \"CFGT_UNSET\" is not set");
}

TEST(unknown_keys) {
  CHECK_LOAD_ERR("server:\n  listn: x\n", "gw.yaml:2:3: unknown key \"server.listn\"");
  CHECK_LOAD_ERR("# top\nservers:\n  listen: x\n", "gw.yaml:2:1: unknown key \"servers\"");
  CHECK_LOAD_ERR("backends:\n  health_check:\n    intervall: 5s\n",
                 "gw.yaml:3:5: unknown key \"backends.health_check.intervall\"");
  CHECK_LOAD_ERR("backends:\n  static:\n    - endpoint: http://a:1\n      wieght: 2\n",
                 "gw.yaml:4:7: unknown key \"backends.static[0].wieght\"");
  CHECK_LOAD_ERR("\"server.listen\": \"0.0.0.0:1\"\n", "gw.yaml:1:1: unknown key \"server.listen\"");
  CHECK_LOAD_ERR("server:\n  \"li\\nsten\": x\n", "gw.yaml:2:3: unknown key \"server.li\\x0asten\"");
}

TEST(wrong_node_kinds) {
  CHECK_LOAD_ERR("- a\n- b\n", "gw.yaml:1:1: the top level must be a mapping, got a list");
  CHECK_LOAD_ERR("just a string\n", "gw.yaml:1:1: the top level must be a mapping, got a scalar");
  CHECK_LOAD_ERR("server: 5\n", "gw.yaml:1:9: server: expected a mapping, got a scalar");
  CHECK_LOAD_ERR("server:\n  - listen\n", "gw.yaml:2:3: server: expected a mapping, got a list");
  CHECK_LOAD_ERR("server:\n  listen:\n    host: a\n", "gw.yaml:3:5: server.listen: expected a scalar, got a mapping");
  CHECK_LOAD_ERR("server:\n  workers: [1]\n", "gw.yaml:2:12: server.workers: expected a scalar, got a list");
  CHECK_LOAD_ERR("server:\n  auth:\n    bearer_tokens: abc\n",
                 "gw.yaml:3:20: server.auth.bearer_tokens: expected a list, got a scalar");
  CHECK_LOAD_ERR("server:\n  auth:\n    bearer_tokens: [[a]]\n",
                 "gw.yaml:3:21: server.auth.bearer_tokens[0]: expected a scalar, got a list");
  CHECK_LOAD_ERR("backends:\n  static: {endpoint: \"http://a:1\"}\n",
                 "gw.yaml:2:11: backends.static: expected a list, got a mapping");
  CHECK_LOAD_ERR("backends:\n  static:\n    - http://a:1\n",
                 "gw.yaml:3:7: backends.static[0]: expected a mapping, got a scalar");
  CHECK_LOAD_ERR("backends:\n  headers: [a]\n", "gw.yaml:2:12: backends.headers: expected a mapping, got a list");
  CHECK_LOAD_ERR("backends:\n  headers:\n    X-A: [a]\n",
                 "gw.yaml:3:10: backends.headers.X-A: expected a scalar, got a list");
  CHECK_LOAD_ERR("? [a]\n: 1\n", "gw.yaml:1:3: keys must be scalars, got a list");
  CHECK_LOAD_ERR("server:\n  auth:\n    bearer_tokens: [\"\"]\n",
                 "gw.yaml:3:21: server.auth.bearer_tokens[0]: a bearer token must not be empty");
  /* Null sections and lists are empty ("auth:" with everything commented out). */
  cfg_t c;
  LOAD_OK(c, "server:\n  auth:\n    bearer_tokens:\nbackends:\n  static: ~\n  headers: null\n  dns:\n");
  CHECK_EQ_INT(c.server.auth.n_bearer_tokens, 0);
  cfg_dispose(&c);
}

TEST(duplicate_keys) {
  CHECK_LOAD_ERR("server:\n  workers: 1\n  workers: 2\n", "gw.yaml:3:3: duplicate key \"server.workers\"");
  CHECK_LOAD_ERR("server: {}\nrouting: {}\nserver: {}\n", "gw.yaml:3:1: duplicate key \"server\"");
  CHECK_LOAD_ERR("backends:\n  static:\n    - {endpoint: \"http://a:1\", endpoint: \"http://b:1\"}\n",
                 "gw.yaml:3:32: duplicate key \"backends.static[0].endpoint\"");
  CHECK_LOAD_ERR("backends:\n  headers:\n    X-A: 1\n    x-a: 2\n",
                 "gw.yaml:4:5: backends.headers.x-a: duplicate header");
}

TEST(static_endpoints) {
  CHECK_LOAD_ERR("backends:\n  static:\n    - endpoint: ftp://a:4318\n",
                 "gw.yaml:3:17: backends.static[0].endpoint: invalid endpoint \"ftp://a:4318\": "
                 "only http:// and https:// are supported");
  CHECK_LOAD_ERR("backends:\n  static:\n    - endpoint: a:4318\n",
                 "gw.yaml:3:17: backends.static[0].endpoint: invalid endpoint \"a:4318\": "
                 "missing http:// or https://");
  CHECK_LOAD_ERR("backends:\n  static:\n    - endpoint: http://a:0\n",
                 "gw.yaml:3:17: backends.static[0].endpoint: invalid endpoint \"http://a:0\": invalid port");
  CHECK_LOAD_ERR("backends:\n  static:\n    - endpoint: http://a:65536\n",
                 "gw.yaml:3:17: backends.static[0].endpoint: invalid endpoint \"http://a:65536\": invalid port");
  CHECK_LOAD_ERR("backends:\n  static:\n    - endpoint: \"http://:4318\"\n",
                 "gw.yaml:3:17: backends.static[0].endpoint: invalid endpoint \"http://:4318\": missing host");
  CHECK_LOAD_ERR("backends:\n  static:\n    - endpoint: https://a:0/otlp\n",
                 "gw.yaml:3:17: backends.static[0].endpoint: invalid endpoint \"https://a:0/otlp\": invalid port");
  CHECK_LOAD_ERR("backends:\n  static:\n    - endpoint: \"https:///otlp\"\n",
                 "gw.yaml:3:17: backends.static[0].endpoint: invalid endpoint \"https:///otlp\": missing host");
  /* a path prefix is kept; what would make the request line ambiguous is not (a query or fragment after the
   * authority, or inside the prefix) */
  CHECK_LOAD_ERR("backends:\n  static:\n    - endpoint: \"http://a:4318/otlp?x=1\"\n",
                 "gw.yaml:3:17: backends.static[0].endpoint: invalid endpoint \"http://a:4318/otlp?x=1\": "
                 "the path prefix must be visible ASCII without spaces, '?', '#' or \"//\"");
  CHECK_LOAD_ERR("backends:\n  static:\n    - endpoint: \"https://a?x\"\n",
                 "gw.yaml:3:17: backends.static[0].endpoint: invalid endpoint \"https://a?x\": "
                 "a query or fragment is not allowed");
  CHECK_LOAD_ERR("backends:\n  static:\n    - endpoint: \"https://a:1#top\"\n",
                 "gw.yaml:3:17: backends.static[0].endpoint: invalid endpoint \"https://a:1#top\": "
                 "a query or fragment is not allowed");
  CHECK_LOAD_ERR("backends:\n  static:\n    - endpoint: \"https://a/otlp#top\"\n",
                 "gw.yaml:3:17: backends.static[0].endpoint: invalid endpoint \"https://a/otlp#top\": "
                 "the path prefix must be visible ASCII without spaces, '?', '#' or \"//\"");
  CHECK_LOAD_ERR("backends:\n  static:\n    - endpoint: \"https://a//otlp\"\n",
                 "gw.yaml:3:17: backends.static[0].endpoint: invalid endpoint \"https://a//otlp\": "
                 "the path prefix must be visible ASCII without spaces, '?', '#' or \"//\"");
  CHECK_LOAD_ERR("backends:\n  static:\n    - endpoint: \"http://a/otlp//v1\"\n",
                 "gw.yaml:3:17: backends.static[0].endpoint: invalid endpoint \"http://a/otlp//v1\": "
                 "the path prefix must be visible ASCII without spaces, '?', '#' or \"//\"");
  CHECK_LOAD_ERR("backends:\n  static:\n    - endpoint: \"http://a/ot lp\"\n",
                 "gw.yaml:3:17: backends.static[0].endpoint: invalid endpoint \"http://a/ot lp\": "
                 "the path prefix must be visible ASCII without spaces, '?', '#' or \"//\"");
  CHECK_LOAD_ERR("backends:\n  static:\n    - endpoint: https://u:p@a/otlp\n",
                 "gw.yaml:3:17: backends.static[0].endpoint: invalid endpoint \"https://u:p@a/otlp\": "
                 "credentials in the URL are not supported (use backends.headers)");
  CHECK_LOAD_ERR("backends:\n  static:\n    - endpoint: http://u:p@a:4318\n",
                 "gw.yaml:3:17: backends.static[0].endpoint: invalid endpoint \"http://u:p@a:4318\": "
                 "credentials in the URL are not supported (use backends.headers)");
  CHECK_LOAD_ERR("backends:\n  static:\n    - weight: 2\n",
                 "gw.yaml:3:7: backends.static[0]: missing required key \"endpoint\"");
  CHECK_LOAD_ERR("backends:\n  static:\n    - {endpoint: \"http://a:1\", weight: 0}\n",
                 "gw.yaml:3:40: backends.static[0].weight: 0 is out of range (1..1000000)");
  CHECK_LOAD_ERR("backends:\n  static:\n    - {endpoint: \"http://a:1\", weight: 1000001}\n",
                 "gw.yaml:3:40: backends.static[0].weight: 1000001 is out of range (1..1000000)");
}

/* https:// and path prefixes: scheme, host, port (443 by default for https), the prefix without its trailing "/",
 * and the endpoint as written without it. */
TEST(https_and_path_prefix_endpoints) {
  static const struct {
    const char *in, *endpoint, *host;
    int port, tls;
    const char *path;
  } cases[] = {
      {"https://a:4318", "https://a:4318", "a", 4318, 1, ""},
      {"https://otlp-gateway-prod-eu-west-2.grafana.net/otlp", "https://otlp-gateway-prod-eu-west-2.grafana.net/otlp",
       "otlp-gateway-prod-eu-west-2.grafana.net", 443, 1, "/otlp"},
      {"https://h/otlp/", "https://h/otlp", "h", 443, 1, "/otlp"},
      {"HTTPS://h:8443/a/b//", "HTTPS://h:8443/a/b", "h", 8443, 1, "/a/b"},
      {"https://[fd00::1]/otlp", "https://[fd00::1]/otlp", "fd00::1", 443, 1, "/otlp"},
      {"https://h/", "https://h", "h", 443, 1, ""},
      {"http://h/otlp", "http://h/otlp", "h", 80, 0, "/otlp"},
      {"http://a:4318/v1/traces", "http://a:4318/v1/traces", "a", 4318, 0, "/v1/traces"},
      {"http://h:4318", "http://h:4318", "h", 4318, 0, ""},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    char yaml[256];
    snprintf(yaml, sizeof yaml, "backends:\n  static:\n    - endpoint: \"%s\"\n", cases[i].in);
    cfg_t c;
    LOAD_OK(c, yaml);
    CHECK_EQ_INT(c.backends.n_statics, 1);
    if (c.backends.n_statics == 1) {
      const cfg_backend_t *b = &c.backends.statics[0];
      if (strcmp(b->endpoint, cases[i].endpoint) || strcmp(b->path, cases[i].path))
        fprintf(stderr, "case \"%s\"\n", cases[i].in);
      CHECK_EQ_STR(b->endpoint, cases[i].endpoint);
      CHECK_EQ_STR(b->host, cases[i].host);
      CHECK_EQ_INT(b->port, cases[i].port);
      CHECK_EQ_INT(b->tls, cases[i].tls);
      CHECK_EQ_STR(b->path, cases[i].path);
    }
    cfg_dispose(&c);
  }
  /* the same from OTLP_GATEWAY_BACKENDS */
  cfg_t c;
  char err[256];
  CHECK_EQ_INT(cfg_init_defaults(&c), 0);
  CHECK_EQ_INT(cfg_add_backends_from_list(&c, "https://g/otlp/,http://h:1", err, sizeof err), 0);
  CHECK_EQ_INT(c.backends.n_statics, 2);
  if (c.backends.n_statics == 2) {
    CHECK_EQ_STR(c.backends.statics[0].endpoint, "https://g/otlp");
    CHECK_EQ_INT(c.backends.statics[0].port, 443);
    CHECK_EQ_INT(c.backends.statics[0].tls, 1);
    CHECK_EQ_STR(c.backends.statics[0].path, "/otlp");
    CHECK_EQ_INT(c.backends.statics[1].tls, 0);
    CHECK_EQ_STR(c.backends.statics[1].path, "");
  }
  cfg_dispose(&c);
}

TEST(duplicate_endpoints) {
  CHECK_LOAD_ERR("backends:\n  static:\n    - endpoint: http://a:4318\n    - endpoint: http://a:4318/\n",
                 "gw.yaml:4:17: backends.static[1].endpoint: duplicate endpoint \"http://a:4318\"");
  CHECK_LOAD_ERR("backends:\n  static:\n    - endpoint: http://A\n    - {weight: 3, endpoint: \"http://a:80\"}\n",
                 "gw.yaml:4:29: backends.static[1].endpoint: duplicate endpoint \"http://a:80\"");
}

TEST(cross_key_checks) {
  CHECK_LOAD_ERR("backends:\n  retry:\n    initial_interval: 10s\n",
                 "gw.yaml:3:23: backends.retry.initial_interval (10s) must not exceed backends.retry.max_interval (5s)");
  CHECK_LOAD_ERR("backends:\n  retry:\n    max_interval: 50ms\n",
                 "gw.yaml:3:19: backends.retry.initial_interval (100ms) must not exceed backends.retry.max_interval "
                 "(50ms)");
  CHECK_LOAD_ERR("backends:\n  health_check:\n    timeout: 3s\n",
                 "gw.yaml:3:14: backends.health_check.timeout (3s) must not exceed backends.health_check.interval (2s)");
}

TEST(yaml_syntax_errors) {
  CHECK_LOAD_ERR("server:\n  listen: \"unterminated\n",
                 "gw.yaml:3:1: YAML syntax error: found unexpected end of stream while scanning a quoted scalar");
  CHECK_LOAD_ERR("server:\n  workers: 1\n listen: x\n",
                 "gw.yaml:3:2: YAML syntax error: did not find expected key while parsing a block mapping");
  CHECK_LOAD_ERR("server: [1, 2\n",
                 "gw.yaml:2:1: YAML syntax error: did not find expected ',' or ']' while parsing a flow sequence");
  CHECK_LOAD_ERR("a: *nope\n", "gw.yaml:1:4: YAML syntax error: found undefined alias");
  CHECK_LOAD_ERR("server: {}\n---\nrouting: {}\n", "gw.yaml:2:1: only one YAML document is supported");
  CHECK_LOAD_ERR("server:\n  listen: \"\xff\"\n", "gw.yaml:2:12: invalid input: invalid leading UTF-8 octet");
  /* NUL is not a valid YAML character; an escaped NUL in a value is refused by the loader. */
  CHECK_LOAD_ERR("server:\n  listen: \"a\\0b\"\n", "gw.yaml:2:11: server.listen: value contains a NUL byte");
}

TEST(error_buffer_edge_cases) {
  cfg_t c;
  char small[8];
  CHECK_EQ_INT(load(&c, "bogus: 1\n", small, sizeof small), -1);
  CHECK_EQ_STR(small, "gw.yaml");
  cfg_dispose(&c);
  CHECK_EQ_INT(load(&c, "bogus: 1\n", NULL, 0), -1);
  cfg_dispose(&c);
  CHECK_EQ_INT(cfg_load_string(&c, NULL, 0, NULL, NULL, 0), 0);
  cfg_dispose(&c);
}

TEST(aliases_are_resolved_and_cycles_are_harmless) {
  cfg_t c;
  LOAD_OK(c, "server:\n  auth:\n    bearer_tokens: &t [a, b]\nbackends:\n  static:\n"
             "    - &b {endpoint: \"http://x:1\"}\n");
  CHECK_EQ_INT(c.server.auth.n_bearer_tokens, 2);
  cfg_dispose(&c);
  CHECK_LOAD_ERR("server: &s {auth: *s}\n", "gw.yaml:1:13: unknown key \"server.auth.auth\"");
  CHECK_LOAD_ERR("server:\n  auth:\n    bearer_tokens: &l [*l]\n",
                 "gw.yaml:3:20: server.auth.bearer_tokens[0]: expected a scalar, got a list");
}

TEST(add_backends_from_list) {
  cfg_t c;
  char err[256];
  CHECK_EQ_INT(cfg_init_defaults(&c), 0);
  CHECK_EQ_INT(cfg_add_backends_from_list(&c, " http://a:4318 ,, http://b:4318/,\thttp://c ,", err, sizeof err), 0);
  CHECK_EQ_INT(c.backends.n_statics, 3);
  if (c.backends.n_statics == 3) {
    CHECK_EQ_STR(c.backends.statics[0].endpoint, "http://a:4318");
    CHECK_EQ_STR(c.backends.statics[0].host, "a");
    CHECK_EQ_INT(c.backends.statics[0].port, 4318);
    CHECK_EQ_INT(c.backends.statics[0].weight, 1);
    CHECK_EQ_STR(c.backends.statics[1].endpoint, "http://b:4318");
    CHECK_EQ_STR(c.backends.statics[2].endpoint, "http://c");
    CHECK_EQ_INT(c.backends.statics[2].port, 80);
  }
  CHECK_EQ_INT(cfg_add_backends_from_list(&c, "", err, sizeof err), 0);
  CHECK_EQ_INT(cfg_add_backends_from_list(&c, " , ", err, sizeof err), 0);
  CHECK_EQ_INT(c.backends.n_statics, 3);
  CHECK_EQ_INT(cfg_add_backends_from_list(&c, "http://d:1,ftp://e:1", err, sizeof err), -1);
  CHECK_EQ_STR(err,
               "invalid endpoint \"ftp://e:1\" in backend list: only http:// and https:// are supported");
  CHECK_EQ_INT(cfg_add_backends_from_list(&c, "http://b:4318", err, sizeof err), -1);
  CHECK_EQ_STR(err, "duplicate endpoint \"http://b:4318\" in backend list");
  CHECK_EQ_INT(cfg_add_backends_from_list(&c, "http://x:1?q", err, sizeof err), -1);
  CHECK_CONTAINS(err, "a query or fragment is not allowed");
  cfg_dispose(&c);

  /* Adds to backends loaded from a file, and catches duplicates across both. */
  LOAD_OK(c, "backends:\n  static:\n    - {endpoint: \"http://f:1\", weight: 5}\n");
  CHECK_EQ_INT(cfg_add_backends_from_list(&c, "http://g:1", err, sizeof err), 0);
  CHECK_EQ_INT(c.backends.n_statics, 2);
  CHECK_EQ_INT(cfg_add_backends_from_list(&c, "http://F:1/", err, sizeof err), -1);
  cfg_dispose(&c);
}

TEST(load_file) {
  char path[] = "/tmp/test_config_XXXXXX";
  int fd = mkstemp(path);
  CHECK(fd >= 0);
  if (fd < 0) return;
  const char yaml[] = "server:\n  workers: 3\n  bogus: 1\n";
  CHECK_EQ_INT(write(fd, yaml, strlen(yaml)), (long long)strlen(yaml));
  close(fd);
  cfg_t c;
  char err[512], want[600];
  CHECK_EQ_INT(cfg_load_file(&c, path, err, sizeof err), -1);
  snprintf(want, sizeof want, "%s:3:3: unknown key \"server.bogus\"", path);
  CHECK_EQ_STR(err, want);
  cfg_dispose(&c);

  FILE *f = fopen(path, "w");
  CHECK(f != NULL);
  if (f) {
    fputs(full_yaml, f);
    fclose(f);
  }
  CHECK_EQ_INT(cfg_load_file(&c, path, err, sizeof err), 0);
  CHECK_EQ_INT(c.server.workers, 4);
  CHECK_EQ_INT(c.backends.n_statics, 3);
  cfg_dispose(&c);
  unlink(path);

  CHECK_EQ_INT(cfg_load_file(&c, "/nonexistent/gw.yaml", err, sizeof err), -1);
  CHECK_EQ_STR(err, "/nonexistent/gw.yaml: No such file or directory");
  cfg_dispose(&c);
  CHECK_EQ_INT(cfg_load_file(&c, "/tmp", err, sizeof err), -1);
  CHECK_EQ_STR(err, "/tmp: Is a directory");
  cfg_dispose(&c);
}

TEST(print_reference_lists_every_key) {
  char *buf = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&buf, &len);
  CHECK(f != NULL);
  if (!f) return;
  cfg_print_reference(f);
  fclose(f);
  CHECK_CONTAINS(buf, "| key | type | default | help |\n|---|---|---|---|\n");
  static const char *const keys[] = {
      "server.listen", "server.grpc_listen", "server.workers", "server.max_request_bytes", "server.memory_limit", "server.max_connections",
      "server.read_timeout", "server.idle_timeout", "server.shutdown_timeout", "server.auth.bearer_tokens",
      "server.tls.cert_file", "server.tls.key_file", "server.tls.client_ca_file", "server.tls.min_version",
      "telemetry.listen", "telemetry.log_level", "telemetry.log_format", "routing.traces", "routing.logs",
      "routing.metrics", "backends.static", "backends.static[].endpoint", "backends.static[].weight",
      "backends.dns.hostname", "backends.dns.port", "backends.dns.interval", "backends.dns.servers",
      "backends.dns.scheme", "backends.tls.ca_file", "backends.tls.cert_file", "backends.tls.key_file",
      "backends.tls.server_name", "backends.tls.insecure_skip_verify",
      "backends.request_timeout", "backends.max_connections_per_backend", "backends.compression",
      "backends.headers", "backends.health_check.enabled", "backends.health_check.path",
      "backends.health_check.port", "backends.health_check.interval", "backends.health_check.timeout",
      "backends.health_check.rise", "backends.health_check.fall", "backends.health_check.eject_after_failures",
      "backends.queue.max_bytes", "backends.queue.directory", "backends.queue.fsync", "backends.batch.max_bytes",
      "backends.batch.max_parts", "backends.retry.initial_interval",
      "backends.retry.max_interval", "backends.retry.max_elapsed"};
  for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
    char cell[128];
    snprintf(cell, sizeof cell, "| `%s` |", keys[i]);
    CHECK_CONTAINS(buf, cell);
  }
  CHECK_CONTAINS(buf, "| `server.max_request_bytes` | size 1KiB..4GiB | `64MiB` |");
  CHECK_CONTAINS(buf, "| `telemetry.log_level` | enum: `debug`, `info`, `warn`, `error` | `info` |");
  CHECK_CONTAINS(buf, "| `server.listen` | host:port | `\"0.0.0.0:4318\"` |");
  CHECK_CONTAINS(buf, "| `server.grpc_listen` | host:port | `\"0.0.0.0:4317\"` |");
  size_t rows = 0;
  for (const char *p = buf; (p = strchr(p, '\n')); p++) rows++;
  CHECK_EQ_INT(rows, 2 + sizeof keys / sizeof keys[0]);
  free(buf);
}

/* ---- shared snapshots (cfg_snapshot_*) ---- */

#include <pthread.h>

static void *snapshot_reader(void *arg) {
  cfg_snapshot_t *s = arg; /* one reference, handed to this thread */
  size_t n = 0;
  for (int i = 0; i < 1000; i++) n += cfg_snapshot_cfg(s)->backends.n_statics;
  cfg_snapshot_unref(s); /* whichever thread is last frees it (ASan/LSan check that it is freed once) */
  return (void *)n;
}

TEST(snapshot_is_shared_read_only_and_freed_by_its_last_holder) {
  static const char y[] = "backends:\n  static:\n    - {endpoint: \"http://a:1\"}\n    - {endpoint: \"http://b:2\"}\n";
  cfg_t c;
  char err[256];
  CHECK_EQ_INT(cfg_load_string(&c, y, sizeof y - 1, "snap.yaml", err, sizeof err), 0);
  cfg_snapshot_t *s = cfg_snapshot_create(&c, 7);
  CHECK(s != NULL);
  if (!s) return;
  CHECK(c.backends.statics == NULL && c.backends.n_statics == 0); /* taken over */
  CHECK_EQ_INT(cfg_snapshot_generation(s), 7);
  CHECK_EQ_STR(cfg_snapshot_cfg(s)->backends.statics[1].endpoint, "http://b:2");
  pthread_t t[4];
  for (int i = 0; i < 4; i++) CHECK_EQ_INT(pthread_create(&t[i], NULL, snapshot_reader, cfg_snapshot_ref(s)), 0);
  cfg_snapshot_unref(s); /* the creator may go first */
  for (int i = 0; i < 4; i++) {
    void *n;
    pthread_join(t[i], &n);
    CHECK_EQ_INT((size_t)n, 2000);
  }
  cfg_snapshot_unref(NULL);
}

TEST_MAIN()
