/* gateway/log — see log.h. One fprintf-free write per line so lines from threads never interleave. */
#include "gateway/log.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static gw_log_level_t g_level = GW_LOG_INFO;
static gw_log_format_t g_format = GW_LOG_LOGFMT;
static const char *const level_names[] = {"debug", "info", "warn", "error"};

void gw_log_setup(gw_log_level_t level, gw_log_format_t format) {
  g_level = level;
  g_format = format;
}

int gw_log_enabled(gw_log_level_t level) { return level >= g_level; }

int gw_log_limit_take(gw_log_limit_t *l, uint64_t now_ns, uint64_t interval_ns, uint64_t *suppressed) {
  if (l->last_ns && now_ns - l->last_ns < interval_ns) {
    l->suppressed++;
    return 0;
  }
  *suppressed = l->suppressed;
  l->suppressed = 0;
  l->last_ns = now_ns ? now_ns : 1;
  return 1;
}

static _Thread_local char num_bufs[8][24];
static _Thread_local unsigned num_next;
static _Thread_local char tl_worker[12]; /* "" outside worker loops */

void gw_log_set_worker(int worker) {
  if (worker < 0) tl_worker[0] = 0;
  else snprintf(tl_worker, sizeof tl_worker, "%d", worker);
}

const char *gw_log_u64(uint64_t v) {
  char *b = num_bufs[num_next++ % 8];
  snprintf(b, sizeof num_bufs[0], "%" PRIu64, v);
  return b;
}

const char *gw_log_i64(int64_t v) {
  char *b = num_bufs[num_next++ % 8];
  snprintf(b, sizeof num_bufs[0], "%" PRId64, v);
  return b;
}

typedef struct {
  char buf[4096];
  size_t len;
} line_t;

static void put(line_t *l, const char *s, size_t n) {
  if (n > sizeof l->buf - 2 - l->len) n = sizeof l->buf - 2 - l->len; /* keep room for "\n" */
  memcpy(l->buf + l->len, s, n);
  l->len += n;
}

static void puts_(line_t *l, const char *s) { put(l, s, strlen(s)); }

/* logfmt: bare when safe, else double-quoted with \" \\ \n escapes. */
static void put_logfmt_value(line_t *l, const char *v) {
  int bare = *v != '\0';
  for (const char *p = v; *p; p++)
    if (*p <= ' ' || *p == '"' || *p == '=' || *p == '\\' || (unsigned char)*p >= 0x7f) bare = 0;
  if (bare) {
    puts_(l, v);
    return;
  }
  put(l, "\"", 1);
  for (const unsigned char *p = (const unsigned char *)v; *p; p++) {
    char esc[8];
    if (*p == '"' || *p == '\\') { esc[0] = '\\'; esc[1] = (char)*p; put(l, esc, 2); }
    else if (*p == '\n') put(l, "\\n", 2);
    else if (*p < ' ') { snprintf(esc, sizeof esc, "\\x%02x", *p); puts_(l, esc); }
    else put(l, (const char *)p, 1);
  }
  put(l, "\"", 1);
}

static void put_json_string(line_t *l, const char *v) {
  put(l, "\"", 1);
  for (const unsigned char *p = (const unsigned char *)v; *p; p++) {
    char esc[8];
    if (*p == '"' || *p == '\\') { esc[0] = '\\'; esc[1] = (char)*p; put(l, esc, 2); }
    else if (*p == '\n') put(l, "\\n", 2);
    else if (*p < ' ') { snprintf(esc, sizeof esc, "\\u%04x", *p); puts_(l, esc); }
    else put(l, (const char *)p, 1);
  }
  put(l, "\"", 1);
}

void gw_log(gw_log_level_t level, const char *msg, ...) {
  if (level < g_level) return;
  line_t l;
  l.len = 0;
  struct timeval tv;
  gettimeofday(&tv, NULL);
  struct tm tm;
  gmtime_r(&tv.tv_sec, &tm);
  char ts[40];
  size_t n = strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%S", &tm);
  snprintf(ts + n, sizeof ts - n, ".%03dZ", (int)(tv.tv_usec / 1000));
  va_list ap;
  va_start(ap, msg);
  if (g_format == GW_LOG_JSON) {
    puts_(&l, "{\"ts\":\"");
    puts_(&l, ts);
    puts_(&l, "\",\"level\":\"");
    puts_(&l, level_names[level]);
    puts_(&l, "\",\"msg\":");
    put_json_string(&l, msg);
    for (const char *k; (k = va_arg(ap, const char *)) != NULL;) {
      const char *v = va_arg(ap, const char *);
      put(&l, ",", 1);
      put_json_string(&l, k);
      put(&l, ":", 1);
      put_json_string(&l, v ? v : "");
    }
    if (tl_worker[0]) {
      puts_(&l, ",\"worker\":");
      put_json_string(&l, tl_worker);
    }
    put(&l, "}", 1);
  } else {
    puts_(&l, "ts=");
    puts_(&l, ts);
    puts_(&l, " level=");
    puts_(&l, level_names[level]);
    puts_(&l, " msg=");
    put_logfmt_value(&l, msg);
    for (const char *k; (k = va_arg(ap, const char *)) != NULL;) {
      const char *v = va_arg(ap, const char *);
      put(&l, " ", 1);
      puts_(&l, k);
      put(&l, "=", 1);
      put_logfmt_value(&l, v ? v : "");
    }
    if (tl_worker[0]) {
      puts_(&l, " worker=");
      puts_(&l, tl_worker);
    }
  }
  va_end(ap);
  l.buf[l.len++] = '\n';
  ssize_t w = write(STDERR_FILENO, l.buf, l.len);
  (void)w;
}
