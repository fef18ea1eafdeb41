/*
 * gateway/log — structured log lines to stderr, logfmt or JSON (telemetry.log_format).
 *
 *   gw_log(GW_LOG_INFO, "backend down", "backend", ep, "failures", gw_log_u64(n), NULL);
 *
 * Fields are (key, value) string pairs ending with NULL; values are escaped as each format needs.
 * gw_log_u64/gw_log_i64 format numbers into a small rotating set of thread-local buffers (8 per call site
 * line is plenty: one log call uses them before the next one does).
 */
#ifndef OTLPGW_LOG_H
#define OTLPGW_LOG_H

#include <stdint.h>

typedef enum { GW_LOG_DEBUG = 0, GW_LOG_INFO, GW_LOG_WARN, GW_LOG_ERROR } gw_log_level_t;
typedef enum { GW_LOG_LOGFMT = 0, GW_LOG_JSON } gw_log_format_t;

/* Rate limit for a repeating event (a backend failing, items dropped): at most one line per interval;
 * the line says how many were suppressed since the previous one. Not thread-safe: one per worker. */
typedef struct gw_log_limit {
  uint64_t last_ns;
  uint64_t suppressed;
} gw_log_limit_t;

/* Returns 1 when the event may be logged now (and sets *suppressed to the number held back since the last
 * logged one), 0 when it is counted and suppressed. now_ns: a monotonic clock (uv_hrtime). */
int gw_log_limit_take(gw_log_limit_t *l, uint64_t now_ns, uint64_t interval_ns, uint64_t *suppressed);

void gw_log_setup(gw_log_level_t level, gw_log_format_t format);
/* Lines logged from this thread end with worker=N (a worker loop's index); -1 = none (the default). */
void gw_log_set_worker(int worker);
int gw_log_enabled(gw_log_level_t level);
void gw_log(gw_log_level_t level, const char *msg, ...) __attribute__((sentinel));
const char *gw_log_u64(uint64_t v);
const char *gw_log_i64(int64_t v);

#endif
