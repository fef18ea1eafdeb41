"""The OTLP/gRPC status battery: a raw gRPC client (tests/interop/grpc_battery.js: @grpc/grpc-js's generic client
with identity serializers, and node's http2 client for what grpc-js will not send) against the real gateway's gRPC
listener (server.grpc_listen: "127.0.0.1:0", the port read from its `msg=listening server=grpc` line) in front of
real otlp-sink processes. Each case asserts the gRPC status (and message, details, trailers where the contract
names them) that DESIGN.md's "gRPC answers" and OTLP-WIRE.md's OTLP/gRPC section fix:
  malformed protobuf -> INVALID_ARGUMENT (grpc-message says where) · unknown method/service -> UNIMPLEMENTED ·
  over server.max_request_bytes (plain, or gzip that inflates past it) -> RESOURCE_EXHAUSTED without RetryInfo ·
  gzip -> OK and delivered · deflate / another grpc-encoding -> UNIMPLEMENTED · flag 1 without grpc-encoding ->
  INTERNAL · bearer token missing/wrong -> UNAUTHENTICATED, right -> OK · no backend up -> UNAVAILABLE with a
  google.rpc.RetryInfo (retry_delay > 0) in grpc-status-details-bin · 200 concurrent calls on one connection ->
  all OK, every span delivered once · grpc.health.v1.Health/Check -> SERVING while a backend is up, NOT_SERVING
  when none is · SIGTERM with calls in flight -> they complete OK once the backend answers, calls after the GOAWAY
  fail UNAVAILABLE (no hang), exit 0 · content-type other than application/grpc -> HTTP 415.
The gateway's requests_total{protocol="grpc",signal,code} names the codes it answered.

Setup as test_interop.py (npm ci of the pinned packages; skipped when the npm registry is unreachable). Only
127.0.0.1; every node run is bounded (subprocess timeout, per-call deadlines), every process stops by itself or
is killed at exit (harness)."""
import collections
import json
import os
import signal
import struct
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))

from harness import (DEAD_BACKEND, FAST_HEALTH, FAST_RETRY, TMP, WAIT, Gateway, Pool, Proc, Sink, args,  # noqa
                     field, fresh, kv_string, run_tests, settled_delivery, wait_drained, wait_until)
from test_interop import ensure_node_modules  # noqa: E402

BATTERY = os.path.join(HERE, "grpc_battery.js")
NODE_TIMEOUT = 120  # one grpc_battery.js run, seconds
TRACES_PATH = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
LOGS_PATH = "/opentelemetry.proto.collector.logs.v1.LogsService/Export"
METRICS_PATH = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export"
HEALTH_PATH = "/grpc.health.v1.Health/Check"
RETRY_INFO = "type.googleapis.com/google.rpc.RetryInfo"
SERVING, NOT_SERVING = 1, 2
TOKEN = "s3cret-token"


# ---- config, processes ------------------------------------------------------------------------------------

def grpc_config(endpoints, max_request_bytes="4MiB", tokens=None, health=FAST_HEALTH, request_timeout="5s",
                shutdown_timeout="10s"):
    """One worker, OTLP/HTTP and OTLP/gRPC on ephemeral ports, fast health checks and retries."""
    lines = ['server:', '  listen: "127.0.0.1:0"', '  grpc_listen: "127.0.0.1:0"', '  workers: 1',
             '  max_request_bytes: ' + max_request_bytes, '  shutdown_timeout: ' + shutdown_timeout]
    if tokens:
        lines += ['  auth:', '    bearer_tokens: [%s]' % ", ".join('"%s"' % t for t in tokens)]
    lines += ['telemetry:', '  listen: "127.0.0.1:0"', 'backends:', '  static:']
    lines += ['    - {endpoint: "%s"}' % e for e in endpoints]
    lines += ['  request_timeout: ' + request_timeout, '  health_check: ' + health, '  retry: ' + FAST_RETRY,
              '  queue: {max_bytes: 64MiB}']
    return "\n".join(lines) + "\n"


def grpc_port(g):
    """The gateway's gRPC port, from its listening line."""
    return int(g.wait_line(r"msg=listening server=grpc addr=127\.0\.0\.1:(\d+)").group(1))


def start(name, endpoints, **kw):
    """A gateway for endpoints; returns (gateway, its gRPC port) once its ring has every endpoint (or, for
    DEAD_BACKEND, once it says no backend is up)."""
    g = Gateway(grpc_config(endpoints, **kw), name="%s.yaml" % name)
    port = grpc_port(g)
    if endpoints == [DEAD_BACKEND]:
        g.wait_not_ready()
    else:
        g.wait_metric("otlp_gateway_ring_backends", lambda v: v == len(endpoints))
    return g, port


def node_env():
    return {k: v for k, v in os.environ.items() if k.lower() not in ("grpc_proxy", "http_proxy", "https_proxy")}


_files = [0]


def body_arg(data):
    """grpc_battery.js's BODY for bytes: hex, or @FILE when long (argv has limits)."""
    if len(data) <= 4096:
        return data.hex()
    _files[0] += 1
    path = fresh(os.path.join(TMP, "battery-body-%d.bin" % _files[0]))
    with open(path, "wb") as f:
        f.write(data)
    return "@" + path


def bodies_file(bodies):
    _files[0] += 1
    path = fresh(os.path.join(TMP, "battery-bodies-%d.txt" % _files[0]))
    with open(path, "w") as f:
        f.write("".join(b.hex() + "\n" for b in bodies))
    return path


def parse_output(lines):
    """(call results sorted by call index, summary) from grpc_battery.js's stdout lines."""
    calls, summary = [], None
    for ln in lines:
        if not ln.startswith("{"):
            continue
        d = json.loads(ln)
        if "summary" in d:
            summary = d["summary"]
        elif "call" in d:
            calls.append(d)
    return sorted(calls, key=lambda c: c["call"]), summary


def battery(port, command, path, arg, *opts):
    """Runs grpc_battery.js to its end; returns (call results, summary)."""
    argv = ["node", BATTERY, "--target", "127.0.0.1:%d" % port] + list(opts) + [command, path, arg]
    try:
        cp = subprocess.run(argv, cwd=HERE, env=node_env(), stdin=subprocess.DEVNULL, capture_output=True, text=True,
                            timeout=NODE_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise AssertionError("grpc_battery.js %s %s did not finish within %d s" % (command, path, NODE_TIMEOUT))
    assert cp.returncode == 0, "grpc_battery.js %s exited %d:\n%s\n%s" % (command, cp.returncode, cp.stdout[-3000:],
                                                                         cp.stderr[-3000:])
    calls, summary = parse_output(cp.stdout.splitlines())
    assert summary is not None, cp.stdout[-3000:]
    return calls, summary


def call(port, path, data, *opts):
    """One unary call; returns its result (code, status, details, metadata, status_details, response_hex)."""
    calls, _ = battery(port, "call", path, body_arg(data), *opts)
    assert len(calls) == 1, calls
    c = calls[0]
    health = " health_status=%s" % c["health_status"] if "health_status" in c else ""
    details = " details-bin=%s" % json.dumps(c["status_details"]) if c["status_details"] else ""
    print("    %s %s -> %s %r%s%s" % (path.rsplit(".", 1)[-1], " ".join(opts), c["status"], c["details"][:120], health,
                                      details), flush=True)
    return c


def http2(port, path, data, *opts):
    """One request with node's http2 client; returns its result (http_status, headers, trailers, code, details)."""
    calls, _ = battery(port, "http2", path, body_arg(data), *opts)
    assert len(calls) == 1, calls
    c = calls[0]
    print("    http2 %s %s -> :status %s grpc-status %s %r" % (path.rsplit(".", 1)[-1], " ".join(opts),
                                                                c.get("http_status"), c.get("status"),
                                                                c.get("details", "")[:120]), flush=True)
    return c


def expect(c, status, what):
    assert c["status"] == status, "%s: expected %s, got %s (%r; trailers %s)" % (what, status, c["status"],
                                                                                c["details"], c.get("metadata"))


def retry_delays(c):
    """The RetryInfo retry_delay seconds in the call's grpc-status-details-bin (empty when none)."""
    sd = c.get("status_details") or {}
    return [d.get("retry_delay_s") for d in sd.get("details", []) if d.get("type_url") == RETRY_INFO]


def grpc_requests(g, signal_name, code):
    return g.metric_or_none('otlp_gateway_requests_total{protocol="grpc",signal="%s",code="%s"}'
                            % (signal_name, code)) or 0


# ---- OTLP messages -----------------------------------------------------------------------------------------

def tid(n, i):
    """A 16-byte trace ID, distinct for every (n, i)."""
    return struct.pack(">QQ", 0x6700000000 + n, i + 1)


def traces_body(trace_ids, spans_per_trace=3, service="grpc-battery", pad=0):
    """ExportTraceServiceRequest with spans_per_trace spans for each trace ID; pad > 0 adds an attribute of pad
    bytes ('a's: compresses to almost nothing) to the first span."""
    spans = b""
    for t in trace_ids:
        for k in range(spans_per_trace):
            span = field(1, 2, t) + field(2, 2, struct.pack(">Q", k + 1)) + field(5, 2, b"op")
            if pad and not spans:
                span += field(9, 2, kv_string("pad", "a" * pad))
            spans += field(2, 2, span)
    scope = field(1, 2, field(1, 2, b"scope"))
    rs = field(1, 2, field(1, 2, kv_string("service.name", service))) + field(2, 2, scope + spans)
    return field(1, 2, rs)


def logs_body(trace_ids, service="grpc-battery"):
    recs = b"".join(field(2, 2, field(5, 2, field(1, 2, b"hello")) + field(9, 2, t)) for t in trace_ids)
    scope = field(1, 2, field(1, 2, b"scope"))
    rl = field(1, 2, field(1, 2, kv_string("service.name", service))) + field(2, 2, scope + recs)
    return field(1, 2, rl)


def metrics_body(points=3, service="grpc-battery"):
    dps = b"".join(field(1, 2, field(3, 1, struct.pack("<Q", 1)) + field(6, 1, struct.pack("<q", i)))
                   for i in range(points))
    metric = field(1, 2, b"battery.gauge") + field(5, 2, dps)
    scope = field(1, 2, field(1, 2, b"scope"))
    rm = field(1, 2, field(1, 2, kv_string("service.name", service))) + field(2, 2, scope + field(2, 2, metric))
    return field(1, 2, rm)


def health_request(service=""):
    return field(1, 2, service.encode()) if service else b""


def spans_of(trace_ids, spans_per_trace=3):
    return {t.hex(): spans_per_trace for t in trace_ids}


def check_delivered(files, acked, what):
    """Every acknowledged span arrived exactly once, no trace split."""
    d = settled_delivery(collections.Counter(acked), files)
    print("    %s: acked spans=%d traces=%d | arrived spans=%d per_sink=%s lost=%d duplicates=%d split=%d unknown=%d"
          % (what, d["acked_spans"], d["acked_traces"], d["delivered_spans"], d["per_sink"], d["lost"],
             d["duplicates"], d["split"], d["unknown_traces"]), flush=True)
    assert d["lost"] == 0, "%s: %d spans never arrived" % (what, d["lost"])
    assert d["duplicates"] == 0, "%s: %d spans arrived twice" % (what, d["duplicates"])
    assert d["split"] == 0, "%s: %d traces split over sinks" % (what, d["split"])
    assert d["unknown_traces"] == 0, "%s: %d traces nobody sent" % (what, d["unknown_traces"])
    return d


# ---- the battery -------------------------------------------------------------------------------------------

def test_malformed_protobuf():
    """Bytes that are not the Export message -> INVALID_ARGUMENT, a grpc-message that says what is wrong; nothing
    forwarded."""
    pool = Pool("grpc-malformed", n=1)
    g, port = start("grpc-malformed", pool.endpoints)
    bad = b"\x0a\xff\xff\xff\x0f\x01"  # field 1, length 4 GiB, one byte
    for path, sig in ((TRACES_PATH, "traces"), (LOGS_PATH, "logs"), (METRICS_PATH, "metrics")):
        c = call(port, path, bad)
        expect(c, "INVALID_ARGUMENT", "malformed %s request" % sig)
        assert c["details"].strip(), "INVALID_ARGUMENT without a grpc-message saying where"
        assert not retry_delays(c), c
        assert grpc_requests(g, sig, "INVALID_ARGUMENT") == 1
    c = call(port, TRACES_PATH, b"\x0b\x0c")  # wire type 3 (a group): invalid in OTLP
    expect(c, "INVALID_ARGUMENT", "a group in a traces request")
    assert sum(pool.items("traces")) == sum(pool.items("logs")) == sum(pool.items("metrics")) == 0


def test_unknown_method_and_service():
    """A path naming no method of the OTLP services or grpc.health.v1.Health/Check -> UNIMPLEMENTED."""
    pool = Pool("grpc-unknown", n=1)
    g, port = start("grpc-unknown", pool.endpoints)
    body = traces_body([tid(1, 0)])
    for path in ("/opentelemetry.proto.collector.trace.v1.TraceService/Exports",  # unknown method
                 "/opentelemetry.proto.collector.trace.v1.SpanService/Export",    # unknown service
                 "/opentelemetry.proto.collector.trace.v2.TraceService/Export",
                 "/grpc.health.v1.Health/Watch",                                  # streaming, not served
                 "/no.such.Service/Method"):
        expect(call(port, path, body), "UNIMPLEMENTED", path)
    assert grpc_requests(g, "none", "UNIMPLEMENTED") == 5, g.metrics()
    assert sum(pool.items("traces")) == 0


def test_oversize_resource_exhausted():
    """server.max_request_bytes 64KiB: a 100 KiB message, and a gzip message that inflates to 1 MiB, are
    RESOURCE_EXHAUSTED without RetryInfo (OTLP: not retryable); a 60 KiB message passes."""
    pool = Pool("grpc-oversize", n=1)
    g, port = start("grpc-oversize", pool.endpoints, max_request_bytes="64KiB")
    big = traces_body([tid(2, 0)], pad=100 * 1024)
    c = call(port, TRACES_PATH, big)
    expect(c, "RESOURCE_EXHAUSTED", "a %d-byte message over max_request_bytes 64KiB" % len(big))
    assert not retry_delays(c), ("RESOURCE_EXHAUSTED over the size limit must not carry RetryInfo", c)
    bomb = traces_body([tid(2, 1)], pad=1024 * 1024)
    c = call(port, TRACES_PATH, bomb, "--compression", "gzip")
    expect(c, "RESOURCE_EXHAUSTED", "a gzip message inflating to %d bytes over max_request_bytes 64KiB" % len(bomb))
    assert not retry_delays(c), c
    assert grpc_requests(g, "traces", "RESOURCE_EXHAUSTED") == 2
    ok = traces_body([tid(2, 2)], pad=60 * 1024)
    assert len(ok) < 64 * 1024
    expect(call(port, TRACES_PATH, ok), "OK", "a %d-byte message under max_request_bytes 64KiB" % len(ok))
    wait_drained(g)
    check_delivered(pool.files, spans_of([tid(2, 2)]), "under the limit")


def test_gzip_delivered():
    """grpc-encoding gzip (grpc-js 'grpc.default_compression_algorithm' 2) -> OK, every span delivered once,
    counted as gzip gRPC bytes; the same for logs and metrics."""
    pool = Pool("grpc-gzip", n=3, logs=True)
    g, port = start("grpc-gzip", pool.endpoints)
    ids = [tid(3, i) for i in range(30)]
    c = call(port, TRACES_PATH, traces_body(ids), "--compression", "gzip")
    expect(c, "OK", "a gzip traces call")
    assert g.metric('otlp_gateway_received_bytes_total{protocol="grpc",signal="traces",encoding="gzip"}') > 0
    assert g.metric('otlp_gateway_received_bytes_total{protocol="grpc",signal="traces",encoding="identity"}') == 0
    expect(call(port, LOGS_PATH, logs_body(ids[:7]), "--compression", "gzip"), "OK", "a gzip logs call")
    expect(call(port, METRICS_PATH, metrics_body(5), "--compression", "gzip"), "OK", "a gzip metrics call")
    wait_drained(g)
    check_delivered(pool.files, spans_of(ids), "gzip")
    wait_until(lambda: (sum(pool.items("logs")), sum(pool.items("metrics"))), lambda v: v == (7, 5), WAIT,
               "log records and data points at the sinks")
    assert g.metric('otlp_gateway_received_items_total{protocol="grpc",signal="traces"}') == 90
    assert grpc_requests(g, "traces", "OK") == grpc_requests(g, "logs", "OK") == grpc_requests(g, "metrics", "OK") == 1


def test_unsupported_encoding():
    """grpc-encoding deflate (grpc-js can send it) or br -> UNIMPLEMENTED; the compressed flag without any
    grpc-encoding -> INTERNAL (a protocol error); nothing forwarded."""
    pool = Pool("grpc-encoding", n=1)
    g, port = start("grpc-encoding", pool.endpoints)
    body = traces_body([tid(4, 0)])
    expect(call(port, TRACES_PATH, body, "--compression", "deflate"), "UNIMPLEMENTED", "grpc-encoding deflate")
    c = http2(port, TRACES_PATH, body, "--frame", "--frame-flag", "1", "--header", "grpc-encoding: br")
    assert c.get("http_status") == 200 and c.get("status") == "UNIMPLEMENTED", ("grpc-encoding br", c)
    print("    grpc-accept-encoding of that answer: %r" % c.get("headers", {}).get("grpc-accept-encoding"), flush=True)
    c = http2(port, TRACES_PATH, body, "--frame", "--frame-flag", "1")
    assert c.get("http_status") == 200 and c.get("status") == "INTERNAL", ("flag 1 without grpc-encoding", c)
    assert sum(pool.items("traces")) == 0


def test_bearer_tokens():
    """server.auth.bearer_tokens set: no authorization metadata or a wrong token -> UNAUTHENTICATED (nothing
    forwarded), the right one -> OK and delivered."""
    pool = Pool("grpc-auth", n=1)
    g, port = start("grpc-auth", pool.endpoints, tokens=[TOKEN])
    ids = [tid(5, i) for i in range(4)]
    expect(call(port, TRACES_PATH, traces_body(ids)), "UNAUTHENTICATED", "no authorization metadata")
    expect(call(port, TRACES_PATH, traces_body(ids), "--metadata", "authorization: Bearer wrong-token"),
           "UNAUTHENTICATED", "a wrong bearer token")
    expect(call(port, TRACES_PATH, traces_body(ids), "--metadata", "authorization: %s" % TOKEN),
           "UNAUTHENTICATED", "the token without 'Bearer '")
    assert grpc_requests(g, "traces", "UNAUTHENTICATED") == 3
    assert sum(pool.items("traces")) == 0
    expect(call(port, TRACES_PATH, traces_body(ids), "--metadata", "authorization: Bearer %s" % TOKEN), "OK",
           "the right bearer token")
    wait_drained(g)
    check_delivered(pool.files, spans_of(ids), "authorized")
    h = call(port, HEALTH_PATH, health_request())  # Kubernetes gRPC probes send no metadata: reported, not asserted
    print("    Health/Check without a token while bearer_tokens is set: %s health_status=%s"
          % (h["status"], h.get("health_status")), flush=True)


def test_no_backend_unavailable_with_retry_info():
    """Every backend down: each signal's Export -> UNAVAILABLE with grpc-status-details-bin = google.rpc.Status
    {code 14, details [RetryInfo{retry_delay > 0}]}; Health/Check -> NOT_SERVING."""
    g, port = start("grpc-nobackend", [DEAD_BACKEND])
    for path, body, sig in ((TRACES_PATH, traces_body([tid(6, 0)]), "traces"),
                            (LOGS_PATH, logs_body([tid(6, 1)]), "logs"), (METRICS_PATH, metrics_body(2), "metrics")):
        c = call(port, path, body)
        expect(c, "UNAVAILABLE", "%s with no backend up" % sig)
        sd = c["status_details"]
        assert sd and "error" not in sd, ("UNAVAILABLE without a decodable grpc-status-details-bin", c)
        assert sd["code"] == 14, ("google.rpc.Status.code in grpc-status-details-bin", sd)
        delays = retry_delays(c)
        assert len(delays) == 1 and delays[0] > 0, ("no google.rpc.RetryInfo with retry_delay > 0", sd)
        assert grpc_requests(g, sig, "UNAVAILABLE") == 1
    h = call(port, HEALTH_PATH, health_request())
    expect(h, "OK", "Health/Check")
    assert h["health_status"] == NOT_SERVING, ("Health/Check with no backend up", h)


def test_health_follows_backends():
    """grpc.health.v1.Health/Check (service "" and the OTLP service names) -> SERVING while a backend is up,
    NOT_SERVING once none is (Export: UNAVAILABLE + RetryInfo then), SERVING again when it is back."""
    s = Sink()
    g, port = start("grpc-health", [s.endpoint])
    for svc in ("", "opentelemetry.proto.collector.trace.v1.TraceService"):
        h = call(port, HEALTH_PATH, health_request(svc))
        expect(h, "OK", "Health/Check %r" % svc)
        assert h["health_status"] == SERVING, ("Health/Check %r with a backend up" % svc, h)
    assert s.stop() == 0
    g.wait_not_ready()
    h = call(port, HEALTH_PATH, health_request())
    expect(h, "OK", "Health/Check")
    assert h["health_status"] == NOT_SERVING, ("Health/Check with the only backend stopped", h)
    c = call(port, TRACES_PATH, traces_body([tid(7, 0)]))
    expect(c, "UNAVAILABLE", "Export with the only backend stopped")
    assert retry_delays(c) and retry_delays(c)[0] > 0, c
    s.restart()
    g.wait_metric("otlp_gateway_ring_backends", lambda v: v == 1)
    h = call(port, HEALTH_PATH, health_request())
    assert h["status"] == "OK" and h["health_status"] == SERVING, ("Health/Check with the backend back", h)


def test_200_concurrent_calls_one_connection():
    """200 calls started at once on one channel (one HTTP/2 connection, more streams than the server's
    SETTINGS_MAX_CONCURRENT_STREAMS default of 100) -> all OK; every span arrives exactly once, traces whole."""
    pool = Pool("grpc-200", n=3)
    g, port = start("grpc-200", pool.endpoints)
    ids = [[tid(8, 2 * n), tid(8, 2 * n + 1)] for n in range(200)]
    calls, summary = battery(port, "many", TRACES_PATH, bodies_file([traces_body(t) for t in ids]),
                             "--deadline-ms", "60000")
    print("    200 calls: %s" % json.dumps(summary), flush=True)
    assert len(calls) == 200, summary
    bad = [c for c in calls if c["status"] != "OK"]
    assert not bad, ("%d of 200 calls failed" % len(bad), bad[:3])
    assert summary["connections"] == 1, ("grpc-js opened %d connections for one channel" % summary["connections"])
    wait_drained(g)
    d = check_delivered(pool.files, spans_of([t for pair in ids for t in pair]), "200 calls")
    assert all(d["per_sink"]), d["per_sink"]
    assert grpc_requests(g, "traces", "OK") == 200
    assert g.metric('otlp_gateway_received_items_total{protocol="grpc",signal="traces"}') == 1200


def test_content_type_415():
    """content-type other than application/grpc[+proto] -> HTTP 415 (node's http2 client, as grpc-js always sends
    application/grpc); application/grpc+proto -> OK."""
    pool = Pool("grpc-415", n=1)
    g, port = start("grpc-415", pool.endpoints)
    body = traces_body([tid(9, 0)])
    for ct in ("application/json", "application/x-protobuf", "text/plain"):
        c = http2(port, TRACES_PATH, body, "--frame", "--content-type", ct)
        assert c.get("http_status") == 415, ("content-type %s" % ct, c)
    c = http2(port, TRACES_PATH, body, "--frame", "--content-type", "application/grpc+proto")
    assert c.get("http_status") == 200 and c.get("status") == "OK", ("content-type application/grpc+proto", c)
    wait_drained(g)
    check_delivered(pool.files, spans_of([tid(9, 0)]), "application/grpc+proto")


def test_sigterm_drains_calls_in_flight():
    """5 calls held in flight by a sink that does not answer (hang=1); SIGTERM: the gateway sends GOAWAY, a call
    made after it fails UNAVAILABLE at once (no hang); once the sink answers (hang=0: the held requests get 503,
    so the parts go to the retry queue and are delivered again) the 5 calls complete OK, every span arrives once,
    and the gateway exits 0."""
    f = fresh(os.path.join(TMP, "grpc-drain.sink.traces.txt"))
    s = Sink("--trace-file", f)
    g, port = start("grpc-drain", [s.endpoint], health="{enabled: false}", request_timeout="60s",
                    shutdown_timeout="40s")
    assert s.control(hang=1)["hang"] == 1
    ids = [[tid(10, 2 * n), tid(10, 2 * n + 1)] for n in range(5)]
    d = Proc(["node", BATTERY, "--target", "127.0.0.1:%d" % port, "--deadline-ms", "90000", "--goaway-wait-ms",
              "60000", "drain", TRACES_PATH, bodies_file([traces_body(t) for t in ids])], env=node_env())
    d.wait_line(r'"event":"started"', stream="out")
    g.wait_metric('otlp_gateway_received_items_total{protocol="grpc",signal="traces"}', lambda v: v == 30)
    wait_until(lambda: s.control()["held"], lambda n: n >= 1, WAIT, "requests held by the sink")
    assert not d.lines(r'"call":', stream="out"), ("a call was answered while the sink held it", d.out)
    g.signal(signal.SIGTERM)
    try:
        d.wait_line(r'"event":"goaway"', stream="out")
    except AssertionError as e:
        raise AssertionError("%s\ngateway stderr:\n%s" % (e, "\n".join(g.err[-15:])))
    late = json.loads(d.wait_line(r'^\{.*"after_goaway":true.*\}$', stream="out").group(0))
    print("    call after GOAWAY: %s %r (%d ms); goaways: %s" % (late["status"], late["details"], late["ms"],
                                                                  d.lines(r'"event":"goaway"', stream="out")),
          flush=True)
    assert late["status"] == "UNAVAILABLE", ("a call after the GOAWAY", late)
    assert not d.lines(r'"call":[0-4],', stream="out"), ("a held call was answered before the sink answered", d.out)
    assert g.p.poll() is None, "the gateway exited with calls in flight:\n" + "\n".join(g.err[-10:])
    s.control(hang=0)
    assert d.wait(timeout=90) == 0, "grpc_battery.js drain failed:\n%s\n%s" % ("\n".join(d.out), "\n".join(d.err))
    calls, summary = parse_output(d.out)
    print("    drain: %s" % json.dumps(summary), flush=True)
    held = [c for c in calls if not c.get("after_goaway")]
    assert len(held) == 5 and all(c["status"] == "OK" for c in held), ("calls in flight at SIGTERM", held)
    # graceful: NO_ERROR, and the final GOAWAY's last stream id covers the 5 streams in flight (ids 1, 3, ..., 9)
    assert summary["goaways"] and all(x["error_code"] == 0 for x in summary["goaways"]), summary["goaways"]
    assert summary["goaways"][-1]["last_stream_id"] >= 9, summary["goaways"]
    assert g.wait(timeout=60) == 0, "gateway exit code after the drain:\n" + "\n".join(g.err[-15:])
    check_delivered([f], spans_of([t for pair in ids for t in pair]), "drained")


if __name__ == "__main__":
    args()
    run_tests(globals(), setup=ensure_node_modules)
