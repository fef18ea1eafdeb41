/*
 * libFuzzer driver for gateway/spool's segment reader (sp_scan_segment, as replay runs it on every segment file
 * at start): arbitrary bytes as one segment. Checks: no crash, no sanitizer report, every record handed out lies
 * inside the input and starts at a valid header, records come in increasing offsets without overlap, and a
 * second scan gives the same answer. Seeds (tests/fuzz/corpus/spool, tests/fuzz/make_spool_seeds.py): valid
 * segments of DATA and RETIRE records, one cut mid-record, one with a flipped byte, garbage between records.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "gateway/spool.h"

typedef struct {
  const uint8_t *buf;
  size_t len, n, next_min;
  uint64_t sum;
} scan_t;

static void on_record(void *ud, int type, const uint8_t *payload, size_t plen, uint32_t offset) {
  scan_t *s = ud;
  if (offset < s->next_min || payload != s->buf + offset + 13 || payload + plen > s->buf + s->len) abort();
  if (memcmp(s->buf + offset, "OTLS", 4) != 0) abort();
  if (sp_crc32c(0, s->buf + offset + 12, 1 + plen) != sp_crc32c(0, payload - 1, 1 + plen)) abort();
  s->next_min = offset + 13 + plen;
  for (size_t i = 0; i < plen; i++) s->sum += payload[i]; /* touch every byte */
  s->sum += (uint64_t)type;
  s->n++;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  scan_t a = {data, size, 0, 0, 0}, b = {data, size, 0, 0, 0};
  size_t bad_a = sp_scan_segment(data, size, on_record, &a);
  size_t bad_b = sp_scan_segment(data, size, on_record, &b);
  if (bad_a != bad_b || a.n != b.n || a.sum != b.sum) abort();
  if (bad_a > size) abort();
  return 0;
}
