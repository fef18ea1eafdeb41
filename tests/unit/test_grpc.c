/*
 * Unit tests for gateway/grpc.{c,h}: the deframer under every split of its input, status names, percent-encoding,
 * grpc-timeout, google.rpc.Status / RetryInfo bytes (checked by hand and with protobuf-c), base64, health
 * messages and service paths. Inputs are copied into exact-size heap buffers so a sanitizer build catches any
 * read or write past them.
 */
#include "test.h"

#include "gateway/grpc.h"
#include "gateway/otlp_http.h"
#include "google/rpc/status.pb-c.h"

#define RETRY_URL "type.googleapis.com/google.rpc.RetryInfo"

static hs_slice_t sl(const char *s) { return (hs_slice_t){s, strlen(s)}; }

/* ------------------------------------------------------------------------------------ deframer driver */

/* One stream being read the way a front-end does: a heap buffer of exactly d.length bytes at NEED_BUFFER. */
typedef struct stream {
  grpc_deframer_t d;
  uint8_t *buf;
  int need_buffer; /* NEED_BUFFER answers seen */
  int last;        /* last answer */
  int error;
} stream_t;

static void stream_init(stream_t *s) {
  memset(s, 0, sizeof *s);
  grpc_deframer_init(&s->d);
}

static void stream_dispose(stream_t *s) { free(s->buf); }

/* Feeds one DATA frame (copied to an exact-size allocation), looping over NEED_BUFFER like a caller. */
static void stream_feed(stream_t *s, const uint8_t *data, size_t len) {
  uint8_t *copy = len ? malloc(len) : NULL;
  if (len) memcpy(copy, data, len);
  size_t off = 0;
  do {
    size_t used = (size_t)-1;
    int rc = grpc_deframer_feed(&s->d, copy ? copy + off : NULL, len - off, &used);
    CHECK(used <= len - off);
    if (used > len - off) break;
    off += used;
    s->last = rc;
    if (rc == GRPC_DF_ERROR) {
      s->error = 1;
      break;
    }
    if (rc == GRPC_DF_NEED_BUFFER) {
      s->need_buffer++;
      CHECK(s->buf == NULL);
      s->buf = s->d.length ? malloc(s->d.length) : NULL;
      s->d.buf = s->buf;
      continue;
    }
    CHECK_EQ_INT(off, len); /* MORE and DONE consume everything */
    break;
  } while (off < len);
  free(copy);
}

/* prefix + message of n bytes with a recognisable pattern */
static size_t make_stream(uint8_t *out, int compressed, size_t n) {
  grpc_frame_prefix(out, compressed, (uint32_t)n);
  for (size_t i = 0; i < n; i++) out[5 + i] = (uint8_t)(i * 7 + 3);
  return 5 + n;
}

static void check_complete(stream_t *s, const uint8_t *wire, size_t n) {
  CHECK(!s->error);
  CHECK_EQ_INT(s->need_buffer, 1);
  CHECK_EQ_INT(grpc_deframer_finish(&s->d), 1);
  CHECK_EQ_INT(s->d.length, n);
  CHECK_EQ_INT(s->d.have, n);
  CHECK(n == 0 || memcmp(s->buf, wire + 5, n) == 0);
}

TEST(deframer_split_two_feeds) {
  uint8_t wire[5 + 300];
  size_t len = make_stream(wire, 0, 300);
  for (size_t i = 0; i <= len; i++) {
    stream_t s;
    stream_init(&s);
    stream_feed(&s, wire, i);
    stream_feed(&s, wire + i, len - i);
    check_complete(&s, wire, 300);
    stream_dispose(&s);
  }
}

TEST(deframer_split_three_feeds) {
  uint8_t wire[5 + 40];
  size_t len = make_stream(wire, 0, 40);
  for (size_t i = 0; i <= len; i++)
    for (size_t j = i; j <= len; j++) {
      stream_t s;
      stream_init(&s);
      stream_feed(&s, wire, i);
      stream_feed(&s, wire + i, j - i);
      stream_feed(&s, wire + j, len - j);
      check_complete(&s, wire, 40);
      stream_dispose(&s);
    }
}

TEST(deframer_one_byte_at_a_time) {
  uint8_t wire[5 + 100];
  size_t len = make_stream(wire, 0, 100);
  stream_t s;
  stream_init(&s);
  for (size_t i = 0; i < len; i++) {
    stream_feed(&s, wire + i, 1);
    CHECK_EQ_INT(s.last, i == len - 1 ? GRPC_DF_DONE : i == 4 ? GRPC_DF_NEED_BUFFER : GRPC_DF_MORE);
    CHECK_EQ_INT(s.d.n_prefix, i < 5 ? i + 1 : 5);
    if (i < len - 1) CHECK_EQ_INT(grpc_deframer_finish(&s.d), -1);
  }
  check_complete(&s, wire, 100);
  /* A feed of nothing after the end changes nothing. */
  stream_feed(&s, NULL, 0);
  CHECK_EQ_INT(s.last, GRPC_DF_DONE);
  check_complete(&s, wire, 100);
  stream_dispose(&s);
}

TEST(deframer_two_messages_error) {
  uint8_t wire[2 * (5 + 20)];
  size_t a = make_stream(wire, 0, 20);
  size_t len = a + make_stream(wire + a, 0, 20);
  /* Whatever the split, the second message is an error (and a sticky one). */
  for (size_t i = 0; i <= len; i++) {
    stream_t s;
    stream_init(&s);
    stream_feed(&s, wire, i);
    if (!s.error) stream_feed(&s, wire + i, len - i);
    CHECK(s.error);
    CHECK_EQ_INT(s.last, GRPC_DF_ERROR);
    CHECK_EQ_INT(grpc_deframer_finish(&s.d), -1);
    size_t used = 9;
    CHECK_EQ_INT(grpc_deframer_feed(&s.d, wire, 1, &used), GRPC_DF_ERROR);
    CHECK_EQ_INT(used, 0);
    stream_dispose(&s);
  }
  /* In one feed: *used stops at the end of the first message. */
  stream_t s;
  stream_init(&s);
  size_t used;
  CHECK_EQ_INT(grpc_deframer_feed(&s.d, wire, len, &used), GRPC_DF_NEED_BUFFER);
  CHECK_EQ_INT(used, 5);
  s.buf = malloc(20);
  s.d.buf = s.buf;
  size_t used2;
  CHECK_EQ_INT(grpc_deframer_feed(&s.d, wire + 5, len - 5, &used2), GRPC_DF_ERROR);
  CHECK_EQ_INT(used2, 20);
  CHECK(memcmp(s.buf, wire + 5, 20) == 0);
  stream_dispose(&s);
  /* One stray byte after the message. */
  uint8_t w2[5 + 3 + 1];
  make_stream(w2, 0, 3);
  w2[8] = 0;
  stream_init(&s);
  stream_feed(&s, w2, sizeof w2);
  CHECK(s.error);
  stream_dispose(&s);
}

TEST(deframer_truncated) {
  uint8_t wire[5 + 10];
  size_t len = make_stream(wire, 0, 10);
  for (size_t i = 1; i < len; i++) { /* inside the prefix (1..4) and inside the message (5..14) */
    stream_t s;
    stream_init(&s);
    stream_feed(&s, wire, i);
    CHECK(!s.error);
    CHECK_EQ_INT(grpc_deframer_finish(&s.d), -1);
    stream_dispose(&s);
  }
}

TEST(deframer_empty_body) {
  grpc_deframer_t d;
  grpc_deframer_init(&d);
  CHECK_EQ_INT(grpc_deframer_finish(&d), 0);
  size_t used = 7;
  CHECK_EQ_INT(grpc_deframer_feed(&d, NULL, 0, &used), GRPC_DF_MORE);
  CHECK_EQ_INT(used, 0);
  CHECK_EQ_INT(grpc_deframer_finish(&d), 0);
}

TEST(deframer_zero_length_message) {
  uint8_t wire[5];
  grpc_frame_prefix(wire, 0, 0);
  grpc_deframer_t d;
  grpc_deframer_init(&d);
  size_t used;
  /* NEED_BUFFER is still returned (length 0, buf may stay NULL); finish already counts the message. */
  CHECK_EQ_INT(grpc_deframer_feed(&d, wire, 5, &used), GRPC_DF_NEED_BUFFER);
  CHECK_EQ_INT(used, 5);
  CHECK_EQ_INT(d.length, 0);
  CHECK(d.buf == NULL);
  CHECK_EQ_INT(grpc_deframer_finish(&d), 1);
  CHECK_EQ_INT(grpc_deframer_feed(&d, NULL, 0, &used), GRPC_DF_DONE);
  CHECK_EQ_INT(grpc_deframer_finish(&d), 1);
  uint8_t extra = 0;
  CHECK_EQ_INT(grpc_deframer_feed(&d, &extra, 1, &used), GRPC_DF_ERROR);
  CHECK_EQ_INT(used, 0);
  CHECK_EQ_INT(grpc_deframer_finish(&d), -1);
  /* Split at every byte, with the driver. */
  for (size_t i = 0; i <= 5; i++) {
    stream_t s;
    stream_init(&s);
    stream_feed(&s, wire, i);
    stream_feed(&s, wire + i, 5 - i);
    check_complete(&s, wire, 0);
    stream_dispose(&s);
  }
  /* A second (empty) message after the empty one is still an error. */
  uint8_t two[10];
  grpc_frame_prefix(two, 0, 0);
  grpc_frame_prefix(two + 5, 0, 0);
  stream_t s;
  stream_init(&s);
  stream_feed(&s, two, 10);
  CHECK(s.error);
  stream_dispose(&s);
}

TEST(deframer_compressed_flag) {
  for (int flag = 0; flag < 3; flag++) {
    uint8_t wire[5 + 4];
    size_t len = make_stream(wire, 0, 4);
    wire[0] = (uint8_t)flag; /* 2 is reported as sent: the caller rejects it */
    grpc_deframer_t d;
    grpc_deframer_init(&d);
    size_t used;
    CHECK_EQ_INT(grpc_deframer_feed(&d, wire, len, &used), GRPC_DF_NEED_BUFFER);
    CHECK_EQ_INT(d.compressed, flag);
    CHECK_EQ_INT(d.length, 4);
  }
  uint8_t p[5];
  grpc_frame_prefix(p, 1, 4);
  CHECK_EQ_INT(p[0], 1);
  grpc_frame_prefix(p, 7, 4); /* any non-zero is "compressed" */
  CHECK_EQ_INT(p[0], 1);
}

TEST(deframer_huge_lengths) {
  const uint32_t lens[] = {0x7FFFFFFFu, 0x80000000u, 0xFFFFFFFEu, 0xFFFFFFFFu};
  for (size_t k = 0; k < sizeof lens / sizeof lens[0]; k++) {
    uint8_t wire[5 + 16];
    grpc_frame_prefix(wire, 0, lens[k]);
    memset(wire + 5, 0xAB, 16);
    grpc_deframer_t d;
    grpc_deframer_init(&d);
    size_t used;
    CHECK_EQ_INT(grpc_deframer_feed(&d, wire, sizeof wire, &used), GRPC_DF_NEED_BUFFER);
    CHECK_EQ_INT(d.length, lens[k]);
    CHECK(d.length == lens[k]);
    /* The deframer writes only what it is fed: a 16-byte buffer suffices for 16 bytes of a huge message. */
    uint8_t buf[16 + 1];
    buf[16] = 0x5A;
    d.buf = buf;
    CHECK_EQ_INT(grpc_deframer_feed(&d, wire + 5, 16, &used), GRPC_DF_MORE);
    CHECK_EQ_INT(used, 16);
    CHECK_EQ_INT(d.have, 16);
    CHECK_EQ_INT(buf[16], 0x5A);
    CHECK_EQ_INT(grpc_deframer_finish(&d), -1);
  }
}

TEST(deframer_no_buffer_is_error) {
  uint8_t wire[5 + 3];
  size_t len = make_stream(wire, 0, 3);
  grpc_deframer_t d;
  grpc_deframer_init(&d);
  size_t used;
  CHECK_EQ_INT(grpc_deframer_feed(&d, wire, len, &used), GRPC_DF_NEED_BUFFER);
  CHECK_EQ_INT(grpc_deframer_feed(&d, wire + used, len - used, &used), GRPC_DF_ERROR);
  CHECK_EQ_INT(used, 0);
}

TEST(frame_prefix_round_trip) {
  const uint32_t lens[] = {0, 1, 255, 256, 65535, 65536, 0x01020304u, 0x7FFFFFFFu, 0xFFFFFFFFu};
  for (size_t k = 0; k < sizeof lens / sizeof lens[0]; k++)
    for (int c = 0; c < 2; c++) {
      uint8_t p[5];
      grpc_frame_prefix(p, c, lens[k]);
      CHECK_EQ_INT(p[0], c);
      CHECK_EQ_INT(p[1], lens[k] >> 24);
      CHECK_EQ_INT(p[4], lens[k] & 0xFF);
      grpc_deframer_t d;
      grpc_deframer_init(&d);
      size_t used;
      CHECK_EQ_INT(grpc_deframer_feed(&d, p, 5, &used), GRPC_DF_NEED_BUFFER);
      CHECK(d.length == lens[k]);
      CHECK_EQ_INT(d.compressed, c);
    }
  uint8_t p[5];
  grpc_frame_prefix(p, 0, 0x01020304u);
  CHECK(memcmp(p, "\x00\x01\x02\x03\x04", 5) == 0);
}

/* ------------------------------------------------------------------------------------ status names */

TEST(code_names) {
  static const char *const want[17] = {"OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED",
                                       "NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED",
                                       "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED",
                                       "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED"};
  CHECK_EQ_INT(GRPC_N_CODES, 17);
  for (int i = 0; i < 17; i++) CHECK_EQ_STR(grpc_code_name(i), want[i]);
  CHECK_EQ_STR(grpc_code_name(GRPC_UNAVAILABLE), "UNAVAILABLE");
  CHECK_EQ_STR(grpc_code_name(-1), "UNKNOWN");
  CHECK_EQ_STR(grpc_code_name(17), "UNKNOWN");
  CHECK_EQ_STR(grpc_code_name(1000000), "UNKNOWN");
}

/* ------------------------------------------------------------------------------------ percent-encoding */

TEST(percent_encode) {
  char out[256];
  CHECK_EQ_INT(grpc_percent_encode("hello world", out, sizeof out), 11);
  CHECK_EQ_STR(out, "hello world");
  CHECK_EQ_INT(grpc_percent_encode("50% off", out, sizeof out), 9);
  CHECK_EQ_STR(out, "50%25 off");
  grpc_percent_encode("a\nb\tc\x7f~", out, sizeof out);
  CHECK_EQ_STR(out, "a%0Ab%09c%7F~");
  grpc_percent_encode("h\xc3\xa9llo \xe2\x9c\x93", out, sizeof out); /* "héllo ✓" */
  CHECK_EQ_STR(out, "h%C3%A9llo %E2%9C%93");
  CHECK_EQ_INT(grpc_percent_encode("", out, sizeof out), 0);
  CHECK_EQ_STR(out, "");
  CHECK_EQ_INT(grpc_percent_encode(NULL, out, sizeof out), 0);
  CHECK_EQ_INT(grpc_percent_encode("abc", out, 0), 0);
}

TEST(percent_encode_truncation) {
  char out[16];
  memset(out, 'Z', sizeof out);
  /* cap 6: room for 5 chars; "ab%25" fits exactly, the next escape does not */
  CHECK_EQ_INT(grpc_percent_encode("ab%%cd", out, 6), 5);
  CHECK_EQ_STR(out, "ab%25");
  CHECK_EQ_INT(out[6], 'Z');
  /* cap 5: "ab" and no half escape */
  CHECK_EQ_INT(grpc_percent_encode("ab%%cd", out, 5), 2);
  CHECK_EQ_STR(out, "ab");
  CHECK_EQ_INT(grpc_percent_encode("abc", out, 1), 0);
  CHECK_EQ_STR(out, "");
  CHECK_EQ_INT(grpc_percent_encode("abc", out, 3), 2);
  CHECK_EQ_STR(out, "ab");
  /* a UTF-8 character is kept whole or dropped: "é" is 6 bytes encoded */
  CHECK_EQ_INT(grpc_percent_encode("a\xc3\xa9", out, 7), 1);
  CHECK_EQ_STR(out, "a");
  CHECK_EQ_INT(grpc_percent_encode("a\xc3\xa9", out, 8), 7);
  CHECK_EQ_STR(out, "a%C3%A9");
  /* a malformed UTF-8 byte is escaped on its own */
  CHECK_EQ_INT(grpc_percent_encode("\xc3x", out, sizeof out), 4);
  CHECK_EQ_STR(out, "%C3x");
}

TEST(percent_round_trip) {
  char msg[256], enc[256 * 3 + 1], dec[256];
  for (int i = 1; i < 256; i++) msg[i - 1] = (char)i;
  msg[255] = '\0';
  size_t n = grpc_percent_encode(msg, enc, sizeof enc);
  CHECK_EQ_INT(n, strlen(enc));
  for (size_t i = 0; i < n; i++) CHECK(enc[i] >= 0x20 && enc[i] <= 0x7E);
  size_t m = grpc_percent_decode((hs_slice_t){enc, n}, dec, sizeof dec);
  CHECK_EQ_INT(m, 255);
  CHECK(memcmp(dec, msg, 256) == 0);
  const char *utf8 = "d\xc3\xa9j\xc3\xa0 vu \xe2\x82\xac 100% \xf0\x9f\x98\x80";
  grpc_percent_encode(utf8, enc, sizeof enc);
  grpc_percent_decode(sl(enc), dec, sizeof dec);
  CHECK_EQ_STR(dec, utf8);
}

TEST(percent_decode) {
  char out[64];
  CHECK_EQ_INT(grpc_percent_decode(sl("a%2fb%2Fc"), out, sizeof out), 5);
  CHECK_EQ_STR(out, "a/b/c");
  /* malformed escapes are kept */
  grpc_percent_decode(sl("%G1%4%"), out, sizeof out);
  CHECK_EQ_STR(out, "%G1%4%");
  grpc_percent_decode(sl("100%"), out, sizeof out);
  CHECK_EQ_STR(out, "100%");
  CHECK_EQ_INT(grpc_percent_decode(sl("abcdef"), out, 4), 3);
  CHECK_EQ_STR(out, "abc");
  CHECK_EQ_INT(grpc_percent_decode(sl("abc"), out, 0), 0);
}

/* ------------------------------------------------------------------------------------ grpc-timeout */

TEST(timeout) {
  CHECK_EQ_INT(grpc_parse_timeout_ms(sl("10S")), 10000);
  CHECK_EQ_INT(grpc_parse_timeout_ms(sl("500m")), 500);
  CHECK_EQ_INT(grpc_parse_timeout_ms(sl("1H")), 3600000);
  CHECK_EQ_INT(grpc_parse_timeout_ms(sl("2M")), 120000);
  CHECK_EQ_INT(grpc_parse_timeout_ms(sl("100u")), 1);
  CHECK_EQ_INT(grpc_parse_timeout_ms(sl("1000u")), 1);
  CHECK_EQ_INT(grpc_parse_timeout_ms(sl("1001u")), 2);
  CHECK_EQ_INT(grpc_parse_timeout_ms(sl("3n")), 1);
  CHECK_EQ_INT(grpc_parse_timeout_ms(sl("1000000n")), 1);
  CHECK_EQ_INT(grpc_parse_timeout_ms(sl("1000001n")), 2);
  CHECK_EQ_INT(grpc_parse_timeout_ms(sl("0n")), 0);
  CHECK_EQ_INT(grpc_parse_timeout_ms(sl("0S")), 0);
  CHECK_EQ_INT(grpc_parse_timeout_ms(sl("00000001S")), 1000);
  CHECK_EQ_INT(grpc_parse_timeout_ms(sl("12345678m")), 12345678);
  CHECK(grpc_parse_timeout_ms(sl("99999999H")) == INT64_C(99999999) * 3600000);
  CHECK_EQ_INT(grpc_parse_timeout_ms(sl("99999999n")), 100);
  const char *bad[] = {"", "S", "m", "10", "123456789S", "123456789n", "10s", "10h", "10 S", " 10S", "10S ", "-1S",
                       "+1S", "1.5S", "10x", "10SS", "S10", "1e3m", "0x10S"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    if (grpc_parse_timeout_ms(sl(bad[i])) != -1) fprintf(stderr, "accepted \"%s\"\n", bad[i]);
    CHECK_EQ_INT(grpc_parse_timeout_ms(sl(bad[i])), -1);
  }
  /* The slice's length is what counts, not a NUL. */
  CHECK_EQ_INT(grpc_parse_timeout_ms((hs_slice_t){"15Sxyz", 3}), 15000);
}

/* ------------------------------------------------------------------------------------ Status / RetryInfo */

/* Test-side base64 (independent of the gateway's). */
static size_t b64enc(const uint8_t *in, size_t n, char *out, int pad) {
  static const char a[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  size_t o = 0;
  for (size_t i = 0; i < n; i += 3) {
    uint32_t v = (uint32_t)in[i] << 16 | (i + 1 < n ? (uint32_t)in[i + 1] << 8 : 0) | (i + 2 < n ? in[i + 2] : 0);
    out[o++] = a[v >> 18 & 63];
    out[o++] = a[v >> 12 & 63];
    if (i + 1 < n) out[o++] = a[v >> 6 & 63];
    else if (pad) out[o++] = '=';
    if (i + 2 < n) out[o++] = a[v & 63];
    else if (pad) out[o++] = '=';
  }
  out[o] = '\0';
  return o;
}

static size_t b64dec(const char *in, uint8_t *out) {
  size_t o = 0;
  uint32_t acc = 0;
  int bits = 0;
  for (; *in && *in != '='; in++) {
    const char *a = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    const char *p = strchr(a, *in);
    if (!p) return (size_t)-1;
    acc = acc << 6 | (uint32_t)(p - a);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out[o++] = (uint8_t)(acc >> bits);
    }
  }
  return o;
}

TEST(status_proto_exact_bytes) {
  static const uint8_t want[] = {
      0x08, 0x0e,                   /* code = 14 */
      0x12, 0x01, 'x',              /* message = "x" */
      0x1a, 0x30,                   /* details[0]: Any, 48 bytes */
      0x0a, 0x28,                   /*   type_url, 40 bytes */
      't', 'y', 'p', 'e', '.', 'g', 'o', 'o', 'g', 'l', 'e', 'a', 'p', 'i', 's', '.', 'c', 'o', 'm', '/',
      'g', 'o', 'o', 'g', 'l', 'e', '.', 'r', 'p', 'c', '.', 'R', 'e', 't', 'r', 'y', 'I', 'n', 'f', 'o',
      0x12, 0x04,                   /*   value: RetryInfo, 4 bytes */
      0x0a, 0x02,                   /*     retry_delay: Duration, 2 bytes */
      0x08, 0x05};                  /*       seconds = 5 */
  CHECK_EQ_INT(sizeof want, 55);
  uint8_t out[128];
  size_t n = grpc_status_proto(GRPC_UNAVAILABLE, "x", 5, out, sizeof out);
  CHECK_EQ_INT(n, sizeof want);
  for (size_t i = 0; i < sizeof want && i < n; i++)
    if (out[i] != want[i]) {
      fprintf(stderr, "byte %zu: 0x%02x != 0x%02x\n", i, out[i], want[i]);
      CHECK(out[i] == want[i]);
    }

  Google__Rpc__Status *st = google__rpc__status__unpack(NULL, n, out);
  CHECK(st != NULL);
  if (!st) return;
  CHECK_EQ_INT(st->code, 14);
  CHECK_EQ_STR(st->message, "x");
  CHECK_EQ_INT(st->n_details, 1);
  if (st->n_details == 1) {
    CHECK_EQ_STR(st->details[0]->type_url, RETRY_URL);
    ProtobufCBinaryData v = st->details[0]->value;
    /* RetryInfo{retry_delay(1, LEN): Duration{seconds(1, varint)}} */
    CHECK_EQ_INT(v.len, 4);
    if (v.len == 4) {
      CHECK_EQ_INT(v.data[0], (1 << 3) | 2);
      CHECK_EQ_INT(v.data[1], 2);
      CHECK_EQ_INT(v.data[2], (1 << 3) | 0);
      CHECK_EQ_INT(v.data[3], 5);
    }
  }
  google__rpc__status__free_unpacked(st, NULL);

  /* base64 for the trailer: the same bytes, padded. */
  char b64[128];
  size_t m = grpc_status_details_bin(GRPC_UNAVAILABLE, "x", 5, b64, sizeof b64);
  CHECK_EQ_INT(m, 76);
  CHECK_EQ_STR(b64, "CA4SAXgaMAoodHlwZS5nb29nbGVhcGlzLmNvbS9nb29nbGUucnBjLlJldHJ5SW5mbxIECgIIBQ==");
  uint8_t dec[128];
  CHECK_EQ_INT(b64dec(b64, dec), 55);
  CHECK(memcmp(dec, want, 55) == 0);
  CHECK_EQ_INT(grpc_retry_delay_from_details((hs_slice_t){b64, m}), 5);
}

TEST(status_proto_variants) {
  uint8_t out[1024];
  /* all defaults: nothing */
  CHECK_EQ_INT(grpc_status_proto(0, "", 0, out, sizeof out), 0);
  CHECK_EQ_INT(grpc_status_proto(0, NULL, 0, out, sizeof out), 0);
  /* no retry: no details */
  size_t n = grpc_status_proto(GRPC_RESOURCE_EXHAUSTED, "too big", 0, out, sizeof out);
  CHECK_EQ_INT(n, 2 + 2 + 7);
  CHECK(memcmp(out, "\x08\x08\x12\x07too big", n) == 0);
  /* long message (2-byte length) and large delays, through protobuf-c and back through the details reader */
  char msg[301];
  memset(msg, 'm', 300);
  msg[300] = '\0';
  const uint32_t delays[] = {1, 127, 128, 300, 86400, 0xFFFFFFFFu};
  for (size_t k = 0; k < sizeof delays / sizeof delays[0]; k++) {
    n = grpc_status_proto(GRPC_UNAVAILABLE, msg, delays[k], out, sizeof out);
    CHECK(n > 300);
    Google__Rpc__Status *st = google__rpc__status__unpack(NULL, n, out);
    CHECK(st != NULL);
    if (!st) continue;
    CHECK_EQ_INT(st->code, 14);
    CHECK_EQ_STR(st->message, msg);
    CHECK_EQ_INT(st->n_details, 1);
    if (st->n_details == 1) CHECK_EQ_STR(st->details[0]->type_url, RETRY_URL);
    google__rpc__status__free_unpacked(st, NULL);
    char b64[2048];
    size_t m = grpc_status_details_bin(GRPC_UNAVAILABLE, msg, delays[k], b64, sizeof b64);
    CHECK(m > 0);
    CHECK_EQ_INT(grpc_retry_delay_from_details((hs_slice_t){b64, m}), delays[k]);
  }
  /* too small: 0 and nothing written past cap */
  size_t full = grpc_status_proto(GRPC_UNAVAILABLE, "x", 5, out, sizeof out);
  for (size_t cap = 0; cap < full; cap++) {
    memset(out, 0xEE, sizeof out);
    CHECK_EQ_INT(grpc_status_proto(GRPC_UNAVAILABLE, "x", 5, out, cap), 0);
    for (size_t i = cap; i < 64; i++) CHECK_EQ_INT(out[i], 0xEE);
  }
  CHECK_EQ_INT(grpc_status_proto(GRPC_UNAVAILABLE, "x", 5, out, full), full);
}

TEST(status_details_bin_in_place) {
  /* Every message length 0..20 (all three base64 tails) with and without retry: base64 of the proto bytes. */
  char msg[32];
  for (size_t len = 0; len <= 20; len++) {
    memset(msg, 'a' + (int)len, len);
    msg[len] = '\0';
    for (uint32_t retry = 0; retry <= 200; retry += 100) {
      uint8_t proto[128];
      char want[256], got[256];
      size_t n = grpc_status_proto(GRPC_UNAVAILABLE, msg, retry, proto, sizeof proto);
      size_t wn = b64enc(proto, n, want, 1);
      size_t gn = grpc_status_details_bin(GRPC_UNAVAILABLE, msg, retry, got, sizeof got);
      CHECK_EQ_INT(gn, wn);
      CHECK_EQ_STR(got, want);
      /* exact fit needs room for the NUL */
      memset(got, 'Z', sizeof got);
      CHECK_EQ_INT(grpc_status_details_bin(GRPC_UNAVAILABLE, msg, retry, got, wn), 0);
      for (size_t i = 0; i < sizeof got; i++) CHECK_EQ_INT(got[i], 'Z');
      CHECK_EQ_INT(grpc_status_details_bin(GRPC_UNAVAILABLE, msg, retry, got, wn + 1), wn);
      CHECK_EQ_STR(got, want);
    }
  }
}

/* Status with hand-written details, base64'd (padded or not) for grpc_retry_delay_from_details. */
static int64_t delay_of(const uint8_t *proto, size_t n, int pad) {
  char b64[512];
  size_t m = b64enc(proto, n, b64, pad);
  return grpc_retry_delay_from_details((hs_slice_t){b64, m});
}

TEST(retry_delay_from_details) {
  uint8_t p[512];
  size_t n = grpc_status_proto(GRPC_UNAVAILABLE, "busy", 7, p, sizeof p);
  CHECK_EQ_INT(delay_of(p, n, 1), 7);
  CHECK_EQ_INT(delay_of(p, n, 0), 7);
  /* no RetryInfo */
  n = grpc_status_proto(GRPC_UNAVAILABLE, "busy", 0, p, sizeof p);
  CHECK_EQ_INT(delay_of(p, n, 1), -1);
  CHECK_EQ_INT(grpc_retry_delay_from_details(sl("")), -1);

  /* another detail first, an unknown Status field, then RetryInfo{Duration{seconds 2, nanos 500000000}} (rounded
   * up to 3) */
  static const uint8_t full[] = {
      0x08, 0x0e,
      0x1a, 0x0b, 0x0a, 0x05, 't', '/', 'x', '.', 'Y', 0x12, 0x02, 0x08, 0x01, /* Any{t/x.Y, 08 01} */
      0x20, 0x63,                                                             /* field 4 varint: unknown */
      0x1a, 0x36, 0x0a, 0x28,
      't', 'y', 'p', 'e', '.', 'g', 'o', 'o', 'g', 'l', 'e', 'a', 'p', 'i', 's', '.', 'c', 'o', 'm', '/',
      'g', 'o', 'o', 'g', 'l', 'e', '.', 'r', 'p', 'c', '.', 'R', 'e', 't', 'r', 'y', 'I', 'n', 'f', 'o',
      0x12, 0x0a, 0x0a, 0x08, 0x08, 0x02, 0x10, 0x80, 0xca, 0xb5, 0xee, 0x01};
  size_t fl = sizeof full;
  Google__Rpc__Status *st = google__rpc__status__unpack(NULL, fl, full);
  CHECK(st != NULL); /* the hand-written message is valid protobuf */
  if (st) {
    CHECK_EQ_INT(st->n_details, 2);
    if (st->n_details == 2) {
      CHECK_EQ_STR(st->details[1]->type_url, RETRY_URL);
      CHECK_EQ_INT(st->details[1]->value.len, 10);
    }
    google__rpc__status__free_unpacked(st, NULL);
  }
  CHECK_EQ_INT(delay_of(full, fl, 1), 3);
  CHECK_EQ_INT(delay_of(full, fl, 0), 3);

  /* malformed: truncations of a valid Status at every byte */
  n = grpc_status_proto(GRPC_UNAVAILABLE, "busy", 7, p, sizeof p);
  for (size_t cut = 0; cut < n; cut++) CHECK_EQ_INT(delay_of(p, cut, 1), -1);
  /* malformed base64 */
  CHECK_EQ_INT(grpc_retry_delay_from_details(sl("!!!!")), -1);
  CHECK_EQ_INT(grpc_retry_delay_from_details(sl("AAAAA")), -1);
  CHECK_EQ_INT(grpc_retry_delay_from_details(sl("CA4=SAXg")), -1);
  CHECK_EQ_INT(grpc_retry_delay_from_details(sl("CA4SAX g")), -1);
  /* details with the wrong wire type; RetryInfo with a malformed value; group wire type */
  static const uint8_t wt[] = {0x08, 0x0e, 0x18, 0x01};
  CHECK_EQ_INT(delay_of(wt, sizeof wt, 1), -1);
  uint8_t bad[64];
  size_t bn = grpc_status_proto(GRPC_UNAVAILABLE, NULL, 5, bad, sizeof bad);
  CHECK_EQ_INT(bad[bn - 1], 5);
  bad[bn - 2] = 0x09; /* seconds as fixed64: wrong wire type, and 1 byte where 8 are needed */
  CHECK_EQ_INT(delay_of(bad, bn, 1), -1);
  static const uint8_t grp[] = {0x0b, 0x0c};
  CHECK_EQ_INT(delay_of(grp, sizeof grp, 1), -1);
  /* a large value decoded through the heap path */
  static char big[1500];
  memset(big, 'q', sizeof big - 1);
  uint8_t bp[2048];
  n = grpc_status_proto(GRPC_UNAVAILABLE, big, 42, bp, sizeof bp);
  CHECK(n > 1499);
  char b64[2100];
  size_t bm = b64enc(bp, n, b64, 1);
  CHECK_EQ_INT(grpc_retry_delay_from_details((hs_slice_t){b64, bm}), 42);
}

/* ------------------------------------------------------------------------------------ health */

TEST(health_request) {
  hs_slice_t svc = {"junk", 4};
  CHECK_EQ_INT(grpc_health_parse_request(NULL, 0, &svc), 0);
  CHECK_EQ_INT(svc.len, 0);
  static const uint8_t named[] = {0x0a, 0x04, 'o', 't', 'l', 'p'};
  CHECK_EQ_INT(grpc_health_parse_request(named, sizeof named, &svc), 0);
  CHECK_EQ_INT(svc.len, 4);
  CHECK(svc.len == 4 && memcmp(svc.base, "otlp", 4) == 0);
  CHECK(svc.base == (const char *)named + 2);
  /* an unknown field is skipped */
  static const uint8_t unk[] = {0x10, 0x01, 0x0a, 0x01, 's'};
  CHECK_EQ_INT(grpc_health_parse_request(unk, sizeof unk, &svc), 0);
  CHECK(svc.len == 1 && svc.base[0] == 's');
  static const uint8_t empty_svc[] = {0x0a, 0x00};
  CHECK_EQ_INT(grpc_health_parse_request(empty_svc, sizeof empty_svc, &svc), 0);
  CHECK_EQ_INT(svc.len, 0);
  /* malformed */
  static const uint8_t past[] = {0x0a, 0x05, 'a'};
  CHECK_EQ_INT(grpc_health_parse_request(past, sizeof past, &svc), -1);
  static const uint8_t trunc[] = {0x10};
  CHECK_EQ_INT(grpc_health_parse_request(trunc, sizeof trunc, &svc), -1);
  static const uint8_t trunc2[] = {0x10, 0x80};
  CHECK_EQ_INT(grpc_health_parse_request(trunc2, sizeof trunc2, &svc), -1);
  static const uint8_t wrongwt[] = {0x08, 0x01};
  CHECK_EQ_INT(grpc_health_parse_request(wrongwt, sizeof wrongwt, &svc), -1);
  static const uint8_t zero_tag[] = {0x00, 0x00};
  CHECK_EQ_INT(grpc_health_parse_request(zero_tag, sizeof zero_tag, &svc), -1);
}

TEST(health_response) {
  uint8_t out[8];
  memset(out, 0xEE, sizeof out);
  CHECK_EQ_INT(grpc_health_response(1, out), 2);
  CHECK(memcmp(out, "\x08\x01", 2) == 0);
  CHECK_EQ_INT(out[2], 0xEE);
  CHECK_EQ_INT(grpc_health_response(0, out), 2);
  CHECK(memcmp(out, "\x08\x02", 2) == 0);
}

/* ------------------------------------------------------------------------------------ services */

TEST(service_paths) {
  CHECK_EQ_STR(grpc_service_path(GRPC_SVC_TRACES), "/opentelemetry.proto.collector.trace.v1.TraceService/Export");
  CHECK_EQ_STR(grpc_service_path(GRPC_SVC_LOGS), "/opentelemetry.proto.collector.logs.v1.LogsService/Export");
  CHECK_EQ_STR(grpc_service_path(GRPC_SVC_METRICS),
               "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export");
  CHECK_EQ_STR(grpc_service_path(GRPC_SVC_HEALTH_CHECK), "/grpc.health.v1.Health/Check");
  CHECK(grpc_service_path(-1) == NULL);
  CHECK(grpc_service_path(4) == NULL);
  CHECK_EQ_INT(GRPC_SVC_TRACES, OTLP_TRACES);
  CHECK_EQ_INT(GRPC_SVC_LOGS, OTLP_LOGS);
  CHECK_EQ_INT(GRPC_SVC_METRICS, OTLP_METRICS);
  for (int i = 0; i < 4; i++) {
    const char *p = grpc_service_path(i);
    CHECK_EQ_INT(grpc_service_from_path(sl(p)), i);
    /* every proper prefix, and one byte more, name nothing */
    for (size_t k = 0; k < strlen(p); k++) CHECK_EQ_INT(grpc_service_from_path((hs_slice_t){p, k}), -1);
    char longer[128];
    snprintf(longer, sizeof longer, "%s/", p);
    CHECK_EQ_INT(grpc_service_from_path(sl(longer)), -1);
    snprintf(longer, sizeof longer, "%sx", p);
    CHECK_EQ_INT(grpc_service_from_path(sl(longer)), -1);
  }
  const char *bad[] = {"/opentelemetry.proto.collector.trace.v1.TraceService/Query",
                       "/opentelemetry.proto.collector.profiles.v1development.ProfilesService/Export",
                       "/opentelemetry.proto.collector.trace.v1.LogsService/Export",
                       "/opentelemetry.proto.collector.trace.v1.traceservice/export",
                       "/grpc.health.v1.Health/Watch",
                       "/v1/traces",
                       "opentelemetry.proto.collector.trace.v1.TraceService/Export",
                       "/"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) CHECK_EQ_INT(grpc_service_from_path(sl(bad[i])), -1);
}

TEST_MAIN()
