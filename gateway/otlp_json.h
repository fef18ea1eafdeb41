/*
 * OTLP/JSON -> protobuf transcoding (prefix oj_).
 *
 * The gateway routes protobuf wire bytes; a JSON request is transcoded once, here, into the equivalent
 * Export{Trace,Logs,Metrics}ServiceRequest bytes, which then go down the protobuf path.
 *
 * What it accepts: one JSON object (UTF-8, an optional leading BOM skipped) in OTLP/JSON, that is proto3 JSON
 * of the request message, read generically through the protobuf-c descriptors of the generated types:
 *   - keys are lowerCamelCase JSON names (resourceSpans, timeUnixNano) or the proto field names (resource_spans);
 *     unknown keys are ignored whatever their value; a null value means the field's default;
 *   - messages are objects, repeated fields arrays (a null element is an error), a oneof takes one member
 *     (AnyValue.value, NumberDataPoint.value, Exemplar.value, Metric.data; two members set is an error);
 *   - integers (all 32- and 64-bit kinds) as JSON numbers or decimal strings, exact to 64 bits; fractions,
 *     out-of-range values, non-finite numbers and other strings are errors (a number written with a fraction or
 *     exponent but integral, like 5.0 or 1e3, is taken);
 *   - enums as integers (as OTLP writes them) or the value's name ("SPAN_KIND_SERVER");
 *   - float/double as numbers, numeric strings, or "NaN", "Infinity", "-Infinity";
 *   - bool as true/false; strings as JSON strings (a string containing U+0000 is an error: protobuf-c strings
 *     are NUL-terminated);
 *   - bytes as base64 (standard or URL-safe alphabet, padded or not), except the OTLP IDs — trace_id, span_id,
 *     parent_span_id of Span, Span.Link, LogRecord and Exemplar — which are hex (either case): a traceId is 32
 *     digits, a spanId/parentSpanId 16, or the empty string for "absent".
 * An empty object {} is a valid empty request (zero protobuf bytes).
 *
 * Limits (hostile input cannot crash it or blow the stack): the JSON parser (json-c, iterative) rejects
 * nesting deeper than OJ_MAX_JSON_DEPTH; AnyValues nest at most OJ_MAX_ANY_DEPTH deep (array/kvlist values);
 * the walk recurses once per JSON container, so its depth is bounded by the parser's limit; bodies over
 * INT_MAX bytes are refused (the gateway caps bodies far below). Time and memory are linear in the body.
 *
 * Parser leniencies inherited from json-c's strict mode, all harmless for transcoding: single-quoted strings,
 * a trailing '.' in numbers, raw control characters in strings, and lone UTF-16 surrogate escapes (replaced
 * with U+FFFD) are accepted; bare NaN/Infinity literals parse but are refused for every numeric field.
 * json-c saturates integer literals beyond 64 bits, so a field that reads exactly INT64_MIN or UINT64_MAX from a
 * JSON number is refused when the body holds an out-of-range integer literal anywhere (even under an ignored
 * key); json-c 0.16 reports an allocation failure while parsing as invalid JSON (-1), not -2.
 */
#ifndef OTLPGW_GATEWAY_OTLP_JSON_H
#define OTLPGW_GATEWAY_OTLP_JSON_H

#include <stddef.h>
#include <stdint.h>

/* JSON nesting the parser accepts: 32 nested kvlist AnyValues take 128 levels, the deepest envelope 15. */
#define OJ_MAX_JSON_DEPTH 160
/* AnyValues inside AnyValues (arrayValue / kvlistValue), counted from the outermost. */
#define OJ_MAX_ANY_DEPTH 32

/*
 * Transcodes the OTLP/JSON request json[0..len) of the given signal (otlp_signal_t of gateway/otlp_http.h:
 * 0 traces, 1 logs, 2 metrics) into the protobuf Export*ServiceRequest encoding.
 *
 * Returns 0 with *out a malloc'd buffer of *out_len bytes that the caller frees (non-NULL even when *out_len is
 * 0); -1 when the body is not a valid request, with err holding one line that names the field path and what is
 * wrong ("resourceSpans[0].scopeSpans[1].spans[2].traceId: expected 32 hex digits, got 31", "invalid JSON at
 * byte 120: unexpected character"); -2 when out of memory. On error *out is NULL and *out_len 0. err may be
 * NULL or errlen 0; messages longer than errlen are cut. json is only read and need not be NUL-terminated.
 * Thread-safe: no shared state.
 */
int oj_to_protobuf(int signal, const uint8_t *json, size_t len, uint8_t **out, size_t *out_len, char *err,
                   size_t errlen);

#endif
