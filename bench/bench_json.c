/*
 * bench_json — how fast the JSON parsers Debian 12 ships read OTLP/JSON bodies, and what the gateway's whole
 * JSON -> protobuf transcoding (gateway/otlp_json) costs, against a same-run peer. Machines here are noisy: read
 * the ratios, which come from the same run.
 *
 *   bench_json [SECONDS_PER_RUN]   (default 0.2; every figure is the best of 5 interleaved runs)
 *
 * Bodies: bench/payload.h traces, logs and metrics requests of 100 items (seed 1, fixed base time) in OTLP/JSON.
 *
 * Parsers (parse to a tree + free it; the body is already in memory):
 *   json-c 0.16   json_tokener_parse_ex, one reused tokener, STRICT | VALIDATE_UTF8, depth 64 — what otlp_json uses
 *   jansson 2.14  json_loadb(flags 0), then json_delete
 *   cJSON 1.7.15  cJSON_ParseWithLength, then cJSON_Delete
 * The candidates are dlopen()ed with RTLD_DEEPBIND (json-c and jansson export clashing symbol names, and their
 * headers cannot share a translation unit), so the project links only the one it uses: a candidate whose runtime
 * package (libjson-c5, libjansson4, libcjson1) is missing is reported as skipped.
 *
 * Transcode: oj_to_protobuf() on the same bodies (parse + protobuf-c build + pack + free), against protobuf-c
 * unpack + free of the equivalent protobuf body.
 *
 * Output: one line per (candidate, signal) with ns per body and MB/s of JSON, the ratios to json-c, then
 * "RESULT k=v ..." with the per-candidate totals over the three bodies.
 */
#include <dlfcn.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench/payload.h"
#include "gateway/otlp_json.h"
#include "opentelemetry/proto/collector/logs/v1/logs_service.pb-c.h"
#include "opentelemetry/proto/collector/metrics/v1/metrics_service.pb-c.h"
#include "opentelemetry/proto/collector/trace/v1/trace_service.pb-c.h"

#define RUNS 5

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static volatile uintptr_t sink;

/* ------------------------------------------------------------------------------------------- candidates */

/* The few entry points each candidate needs, resolved with dlsym; the types are opaque here. */
typedef struct candidate {
  const char *name, *soname;
  void *dl;
  void *state; /* json-c: the reused tokener */
  void *(*parse)(struct candidate *c, const char *s, size_t len);
  void (*release)(struct candidate *c, void *tree);
  void *fn[4];
} candidate;

/* json-c */
static void *jc_parse(candidate *c, const char *s, size_t len) {
  void *(*parse_ex)(void *, const char *, int) = (void *(*)(void *, const char *, int))c->fn[0];
  void (*reset)(void *) = (void (*)(void *))c->fn[1];
  reset(c->state);
  return parse_ex(c->state, s, (int)len);
}
static void jc_release(candidate *c, void *tree) { ((int (*)(void *))c->fn[2])(tree); }

/* jansson: json_error_t is 4 + 80 + 160 bytes in 2.14; a larger buffer is harmless. */
static void *ja_parse(candidate *c, const char *s, size_t len) {
  static _Alignas(16) char err[512];
  return ((void *(*)(const char *, size_t, size_t, void *))c->fn[0])(s, len, 0, err);
}
static void ja_release(candidate *c, void *tree) { ((void (*)(void *))c->fn[1])(tree); }

/* cJSON */
static void *cj_parse(candidate *c, const char *s, size_t len) {
  return ((void *(*)(const char *, size_t))c->fn[0])(s, len);
}
static void cj_release(candidate *c, void *tree) { ((void (*)(void *))c->fn[1])(tree); }

static int sym(candidate *c, int i, const char *name) {
  c->fn[i] = dlsym(c->dl, name);
  if (!c->fn[i]) fprintf(stderr, "%s: no symbol %s\n", c->name, name);
  return c->fn[i] ? 0 : -1;
}

/* 0 when the candidate is loaded and ready. */
static int candidate_open(candidate *c) {
  c->dl = dlopen(c->soname, RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND);
  if (!c->dl) return -1;
  if (c->parse == jc_parse) {
    void *(*new_ex)(int);
    void (*set_flags)(void *, int);
    if (sym(c, 0, "json_tokener_parse_ex") || sym(c, 1, "json_tokener_reset") || sym(c, 2, "json_object_put") ||
        sym(c, 3, "json_tokener_free"))
      return -1;
    *(void **)&new_ex = dlsym(c->dl, "json_tokener_new_ex");
    *(void **)&set_flags = dlsym(c->dl, "json_tokener_set_flags");
    if (!new_ex || !set_flags) return -1;
    c->state = new_ex(64);
    if (!c->state) return -1;
    set_flags(c->state, 0x01 | 0x10); /* JSON_TOKENER_STRICT | JSON_TOKENER_VALIDATE_UTF8 */
    return 0;
  }
  if (c->parse == ja_parse) return sym(c, 0, "json_loadb") || sym(c, 1, "json_delete") ? -1 : 0;
  return sym(c, 0, "cJSON_ParseWithLength") || sym(c, 1, "cJSON_Delete") ? -1 : 0;
}

static void candidate_close(candidate *c) {
  if (c->state) ((void (*)(void *))c->fn[3])(c->state);
  if (c->dl) dlclose(c->dl);
}

/* ------------------------------------------------------------------------------------------- timing */

typedef struct body {
  pl_payload json, pb;
} body;

/* ns per body for one run of about secs: kind 0 = parse with c, 1 = oj_to_protobuf, 2 = protobuf-c unpack. */
static double run_once(int kind, candidate *c, const body *b, pl_signal sig, double secs) {
  static const ProtobufCMessageDescriptor *const descs[PL_SIGNAL_COUNT] = {
      &opentelemetry__proto__collector__trace__v1__export_trace_service_request__descriptor,
      &opentelemetry__proto__collector__logs__v1__export_logs_service_request__descriptor,
      &opentelemetry__proto__collector__metrics__v1__export_metrics_service_request__descriptor,
  };
  uint64_t iters = 0;
  double t0 = now(), t1;
  do {
    for (int k = 0; k < 16; k++, iters++) {
      if (kind == 0) {
        void *tree = c->parse(c, (const char *)b->json.body, b->json.len);
        if (!tree) {
          fprintf(stderr, "%s: parse failed\n", c->name);
          exit(1);
        }
        sink += (uintptr_t)tree;
        c->release(c, tree);
      } else if (kind == 1) {
        uint8_t *out;
        size_t n;
        char err[256];
        if (oj_to_protobuf((int)sig, b->json.body, b->json.len, &out, &n, err, sizeof err) != 0) {
          fprintf(stderr, "oj_to_protobuf: %s\n", err);
          exit(1);
        }
        sink += n;
        free(out);
      } else {
        ProtobufCMessage *m = protobuf_c_message_unpack(descs[sig], NULL, b->pb.len, b->pb.body);
        if (!m) {
          fprintf(stderr, "protobuf-c unpack failed\n");
          exit(1);
        }
        sink += (uintptr_t)m;
        protobuf_c_message_free_unpacked(m, NULL);
      }
    }
    t1 = now();
  } while (t1 - t0 < secs);
  return (t1 - t0) * 1e9 / (double)iters;
}

static double mbps(size_t len, double ns) { return (double)len / ns * 1e3; }

int main(int argc, char **argv) {
  double secs = argc > 1 ? atof(argv[1]) : 0.2;
  if (secs <= 0) {
    fprintf(stderr, "usage: bench_json [SECONDS_PER_RUN]\n");
    return 2;
  }
  candidate cands[] = {
      {.name = "json-c", .soname = "libjson-c.so.5", .parse = jc_parse, .release = jc_release},
      {.name = "jansson", .soname = "libjansson.so.4", .parse = ja_parse, .release = ja_release},
      {.name = "cJSON", .soname = "libcjson.so.1", .parse = cj_parse, .release = cj_release},
  };
  enum { NC = sizeof cands / sizeof cands[0] };
  int ok[NC];
  for (int i = 0; i < NC; i++) {
    ok[i] = candidate_open(&cands[i]) == 0;
    if (!ok[i]) printf("%-8s skipped (%s not loadable)\n", cands[i].name, cands[i].soname);
  }

  body bodies[PL_SIGNAL_COUNT];
  for (int s = 0; s < PL_SIGNAL_COUNT; s++) {
    pl_options o;
    pl_options_default(&o);
    o.signal = (pl_signal)s;
    o.items = 100;
    o.traces = 10;
    o.seed = 1;
    o.base_time_ns = 1700000000000000000ull;
    o.encoding = PL_JSON;
    int rc = pl_payload_init(&bodies[s].json, &o);
    o.encoding = PL_PROTOBUF;
    if (rc || pl_payload_init(&bodies[s].pb, &o)) {
      fprintf(stderr, "payload init failed\n");
      return 1;
    }
  }

  /* best[k][s]: k = candidates..., then transcode, then protobuf-c unpack */
  double best[NC + 2][PL_SIGNAL_COUNT];
  for (int k = 0; k < NC + 2; k++)
    for (int s = 0; s < PL_SIGNAL_COUNT; s++) best[k][s] = 1e30;
  for (int run = 0; run < RUNS; run++) {
    for (int s = 0; s < PL_SIGNAL_COUNT; s++) {
      for (int k = 0; k < NC + 2; k++) {
        if (k < NC && !ok[k]) continue;
        int kind = k < NC ? 0 : k == NC ? 1 : 2;
        double ns = run_once(kind, k < NC ? &cands[k] : NULL, &bodies[s], (pl_signal)s, secs);
        if (ns < best[k][s]) best[k][s] = ns;
      }
    }
  }

  printf("OTLP/JSON bodies, 100 items: traces %zu B, logs %zu B, metrics %zu B (protobuf %zu / %zu / %zu B)\n",
         bodies[0].json.len, bodies[1].json.len, bodies[2].json.len, bodies[0].pb.len, bodies[1].pb.len,
         bodies[2].pb.len);
  printf("%-28s %-8s %12s %9s %12s\n", "what", "signal", "ns/body", "MB/s", "vs json-c");
  double total[NC + 2] = {0};
  for (int k = 0; k < NC + 2; k++) {
    if (k < NC && !ok[k]) continue;
    const char *what = k < NC ? cands[k].name : k == NC ? "oj_to_protobuf (transcode)" : "protobuf-c unpack (peer)";
    for (int s = 0; s < PL_SIGNAL_COUNT; s++) {
      total[k] += best[k][s];
      char ratio[32] = "-";
      if (ok[0]) snprintf(ratio, sizeof ratio, "%.2fx", best[k][s] / best[0][s]);
      printf("%-28s %-8s %12.0f %9.1f %12s\n", what, pl_signal_name((pl_signal)s), best[k][s],
             mbps(k == NC + 1 ? bodies[s].pb.len : bodies[s].json.len, best[k][s]), ratio);
    }
  }
  printf("RESULT");
  static const char *const keys[NC + 2] = {"json_c_ns", "jansson_ns", "cjson_ns", "transcode_ns", "pb_unpack_ns"};
  for (int k = 0; k < NC + 2; k++)
    if (k >= NC || ok[k]) printf(" %s=%.0f", keys[k], total[k]);
  if (ok[0] && ok[1]) printf(" jansson_vs_json_c=%.2f", total[1] / total[0]);
  if (ok[0] && ok[2]) printf(" cjson_vs_json_c=%.2f", total[2] / total[0]);
  if (ok[0]) printf(" transcode_vs_json_c=%.2f", total[NC] / total[0]);
  printf(" transcode_vs_pb_unpack=%.2f\n", total[NC] / total[NC + 1]);

  for (int s = 0; s < PL_SIGNAL_COUNT; s++) {
    pl_payload_dispose(&bodies[s].json);
    pl_payload_dispose(&bodies[s].pb);
  }
  for (int k = 0; k < NC; k++) candidate_close(&cands[k]);
  return 0;
}
