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

void gw_log_setup(gw_log_level_t level, gw_log_format_t format);
int gw_log_enabled(gw_log_level_t level);
void gw_log(gw_log_level_t level, const char *msg, ...) __attribute__((sentinel));
const char *gw_log_u64(uint64_t v);
const char *gw_log_i64(int64_t v);

#endif
