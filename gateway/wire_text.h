/*
 * gateway/wire_text — laying out HTTP/1.1 heads with memcpy (no snprintf on the hot path): the request heads of
 * gateway/backend and the response heads of gateway/http_server. Header-only, static inline; each returns the
 * bytes it wrote, so a head is built as `o += wt_cat(o, ...)`.
 */
#ifndef OTLPGW_WIRE_TEXT_H
#define OTLPGW_WIRE_TEXT_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

static inline size_t wt_cat(char *out, const char *s, size_t n) {
  memcpy(out, s, n);
  return n;
}

/* v in decimal at out (room for 20 digits); returns the number of digits. */
static inline size_t wt_u64(char *out, uint64_t v) {
  char tmp[20];
  size_t n = 0;
  do {
    tmp[sizeof tmp - ++n] = (char)('0' + v % 10);
    v /= 10;
  } while (v);
  return wt_cat(out, tmp + sizeof tmp - n, n);
}

/* A string literal, without its NUL. */
#define WT_LIT(out, lit) wt_cat(out, lit, sizeof lit - 1)

#endif
