"""Helpers shared by test_backend_answers, test_forwarding and test_backend_config: gateway configs with every
backends.* knob those tests turn, strict metric reads (a missing series fails), OTLP requests of traces and
logs in protobuf and JSON, and the otlp-sink files (--trace-file, --times-file). Built on harness.py."""
import json
import os
import re
import struct

from harness import TMP, Sink, field, fresh, kv_string, parse_fields, read_traces, wait_until

PB = {"Content-Type": "application/x-protobuf"}
JS = {"Content-Type": "application/json"}
NO_HEALTH = "{enabled: false, eject_after_failures: 1000}"


def config(endpoints=(), weights=None, health=NO_HEALTH, retry="{initial_interval: 50ms, max_interval: 500ms, "
           "max_elapsed: 60s}", request_timeout="5s", max_conns=None, routing=None, shutdown_timeout="10s",
           log_level=None, queue="{max_bytes: 64MiB}", dns=None, workers=1, read_timeout=None):
    """A gateway config on ephemeral 127.0.0.1 ports. health and retry are YAML flow maps; weights a list
    parallel to endpoints; routing a dict (traces/logs/metrics); dns a dict (hostname, port, interval, server)."""
    lines = ['server:', '  listen: "127.0.0.1:0"', '  workers: %d' % workers,
             '  shutdown_timeout: %s' % shutdown_timeout]
    if read_timeout:
        lines.append('  read_timeout: %s' % read_timeout)
    lines += ['telemetry:', '  listen: "127.0.0.1:0"']
    if log_level:
        lines.append('  log_level: %s' % log_level)
    if routing:
        lines.append('routing:')
        lines += ['  %s: %s' % kv for kv in sorted(routing.items())]
    lines.append('backends:')
    if endpoints:
        lines.append('  static:')
        for i, e in enumerate(endpoints):
            w = weights[i] if weights else None
            lines.append('    - {endpoint: "%s"%s}' % (e, ", weight: %d" % w if w else ""))
    if dns:
        lines.append('  dns: {hostname: "%s", port: %d, interval: %s, servers: ["%s"]}'
                     % (dns["hostname"], dns["port"], dns["interval"], dns["server"]))
    lines += ['  request_timeout: ' + request_timeout, '  health_check: ' + health, '  retry: ' + retry,
              '  queue: ' + queue]
    if max_conns:
        lines.append('  max_connections_per_backend: %d' % max_conns)
    return "\n".join(lines) + "\n"


def stop_ok(g):
    """SIGTERM; the gateway must exit 0 (a sanitizer report or a crash would not). The signal waits for the
    "started" line: the gateway logs "listening" (what Gateway() waits for) before it handles signals."""
    if g.p.poll() is None:
        g.wait_line(r"msg=started ")
    rc = g.stop()
    assert rc == 0, "gateway exit code %s; stderr tail:\n%s" % (rc, "\n".join(g.err[-10:]))


def value(g, series):
    """The sample's value; a series that /metrics does not have fails (Gateway.metric)."""
    return g.metric(series)


def backend_series(name, endpoint, **labels):
    extra = "".join(',%s="%s"' % kv for kv in labels.items())
    return 'otlp_gateway_%s{backend="%s"%s}' % (name, endpoint, extra)


def outcome(g, endpoint, what):
    return value(g, backend_series("backend_requests_total", endpoint, outcome=what))


def esc(endpoint):
    return re.escape(endpoint)


# ---- requests -------------------------------------------------------------------------------------------

def trace_id(seed, i):
    """16 bytes, distinct per (seed, i) and never all zero."""
    return struct.pack(">QQ", 0x5EED000000000000 | seed, i + 1)


def spans_request(traces, spans_per_trace=2, service="svc"):
    """ExportTraceServiceRequest with spans_per_trace spans for each 16-byte id in traces, one resource."""
    spans = b""
    for t in traces:
        for k in range(spans_per_trace):
            sid = struct.pack(">Q", (int.from_bytes(t[8:], "big") << 8) + k + 1)
            spans += field(2, 2, field(1, 2, t) + field(2, 2, sid) + field(5, 2, b"op"))
    scope = field(1, 2, field(1, 2, b"scope"))
    return field(1, 2, field(1, 2, field(1, 2, kv_string("service.name", service))) + field(2, 2, scope + spans))


def services_request(services, spans_per_service=3):
    """ExportTraceServiceRequest with one resource per service, each with spans of distinct trace IDs."""
    out = b""
    for n, svc in enumerate(services):
        spans = b""
        for k in range(spans_per_service):
            t = trace_id(1000 + n, k)
            spans += field(2, 2, field(1, 2, t) + field(2, 2, struct.pack(">Q", k + 1)) + field(5, 2, b"op"))
        scope = field(1, 2, field(1, 2, b"scope"))
        out += field(1, 2, field(1, 2, field(1, 2, kv_string("service.name", svc))) + field(2, 2, scope + spans))
    return out


def spans_json(traces, spans_per_trace=2, service="svc"):
    """The OTLP/JSON twin of spans_request."""
    spans = []
    for t in traces:
        for k in range(spans_per_trace):
            sid = struct.pack(">Q", (int.from_bytes(t[8:], "big") << 8) + k + 1)
            spans.append({"traceId": t.hex(), "spanId": sid.hex(), "name": "op"})
    return json.dumps({"resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": service}}]},
        "scopeSpans": [{"scope": {"name": "scope"}, "spans": spans}]}]}).encode()


def logs_request(traces, records_per_trace=2, service="svc"):
    """ExportLogsServiceRequest: records_per_trace log records carrying each trace ID, one resource."""
    recs = b""
    for t in traces:
        for k in range(records_per_trace):
            recs += field(2, 2, field(5, 2, field(1, 2, b"line %d" % k)) + field(9, 2, t))
    scope = field(1, 2, field(1, 2, b"scope"))
    return field(1, 2, field(1, 2, field(1, 2, kv_string("service.name", service))) + field(2, 2, scope + recs))


def logs_json(traces, records_per_trace=2, service="svc"):
    recs = [{"body": {"stringValue": "line %d" % k}, "traceId": t.hex()} for t in traces
            for k in range(records_per_trace)]
    return json.dumps({"resourceLogs": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": service}}]},
        "scopeLogs": [{"scope": {"name": "scope"}, "logRecords": recs}]}]}).encode()


def partial_success(content_type, body):
    """(rejected, message) of an Export*ServiceResponse body, protobuf or JSON; (0, "") when absent."""
    if content_type.startswith("application/json"):
        d = json.loads(body) if body else {}
        ps = d.get("partialSuccess", {})
        n = [v for k, v in ps.items() if k.startswith("rejected")]
        return (int(n[0]) if n else 0), ps.get("errorMessage", "")
    ps = parse_fields(body).get(1, [b""])[0]
    f = parse_fields(ps)
    return f.get(1, [0])[0], f.get(2, [b""])[0].decode()


# ---- otlp-sink files --------------------------------------------------------------------------------------

class RecSink(Sink):
    """An otlp-sink recording traces (--trace-file) and the arrival of every POST (--times-file)."""

    def __init__(self, name, *extra, listen="127.0.0.1:0"):
        self.trace_path = fresh(os.path.join(TMP, name + ".traces.txt"))
        self.times_path = fresh(os.path.join(TMP, name + ".times.txt"))
        super().__init__("--trace-file", self.trace_path, "--times-file", self.times_path, *extra, listen=listen)

    def traces(self):
        return read_traces(self.trace_path)

    def times(self):
        """[(monotonic seconds, status, signal)] of every OTLP POST so far (status 0: held by hang mode)."""
        out = []
        if os.path.exists(self.times_path):
            with open(self.times_path) as f:
                for ln in f:
                    p = ln.split()
                    if len(p) == 3:
                        out.append((float(p[0]), int(p[1]), p[2]))
        return out


def spans_by_trace(sinks):
    """{trace hex: {sink index: spans}} over the sinks' trace files."""
    out = {}
    for i, s in enumerate(sinks):
        for t, n in s.traces().items():
            out.setdefault(t, {})[i] = out.get(t, {}).get(i, 0) + n
    return out


def wait_spans(sinks, want, timeout=20, what="spans at the sinks"):
    """Waits (bounded) until the sinks hold at least want[trace hex] spans of every trace; returns the map."""
    def short():
        got = spans_by_trace(sinks)
        have = {t: sum(got.get(t, {}).values()) for t in want}
        missing = sorted((t, have[t], n) for t, n in want.items() if have[t] < n)
        return {"traces short of spans": len(missing), "of": len(want), "first (trace, have, want)": missing[:3]}
    wait_until(short, lambda v: v["traces short of spans"] == 0, timeout, what)
    return spans_by_trace(sinks)
