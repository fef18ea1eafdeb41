/*
 * libFuzzer driver for gateway/otlp_json: every input is transcoded as each of the three signals. Checks,
 * beyond no crash / no leak / no sanitizer report: the return is 0, -1 or -2; on error the output is NULL/0 and
 * err is one non-empty line; on success the output unpacks with protobuf-c as the signal's request, and packing
 * that message again gives the same bytes (the transcoder's output is canonical protobuf-c output).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gateway/otlp_json.h"
#include "opentelemetry/proto/collector/logs/v1/logs_service.pb-c.h"
#include "opentelemetry/proto/collector/metrics/v1/metrics_service.pb-c.h"
#include "opentelemetry/proto/collector/trace/v1/trace_service.pb-c.h"

static const ProtobufCMessageDescriptor *const descs[3] = {
    &opentelemetry__proto__collector__trace__v1__export_trace_service_request__descriptor,
    &opentelemetry__proto__collector__logs__v1__export_logs_service_request__descriptor,
    &opentelemetry__proto__collector__metrics__v1__export_metrics_service_request__descriptor,
};

#define REQUIRE(c)                                                      \
  do {                                                                  \
    if (!(c)) {                                                         \
      fprintf(stderr, "fuzz_json: %s failed at line %d\n", #c, __LINE__); \
      abort();                                                          \
    }                                                                   \
  } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  for (int sig = 0; sig < 3; sig++) {
    uint8_t *out = (uint8_t *)"x";
    size_t n = 7;
    char err[256];
    int rc = oj_to_protobuf(sig, data, size, &out, &n, err, sizeof err);
    REQUIRE(rc == 0 || rc == -1 || rc == -2);
    if (rc != 0) {
      REQUIRE(out == NULL && n == 0);
      REQUIRE(memchr(err, '\0', sizeof err) != NULL && err[0] && !strchr(err, '\n'));
      continue;
    }
    REQUIRE(out != NULL);
    ProtobufCMessage *m = protobuf_c_message_unpack(descs[sig], NULL, n, out);
    REQUIRE(m != NULL);
    size_t again = protobuf_c_message_get_packed_size(m);
    REQUIRE(again == n);
    uint8_t *buf = malloc(again ? again : 1);
    REQUIRE(buf != NULL);
    REQUIRE(protobuf_c_message_pack(m, buf) == n);
    REQUIRE(memcmp(buf, out, n) == 0);
    free(buf);
    protobuf_c_message_free_unpacked(m, NULL);
    free(out);
  }
  return 0;
}
