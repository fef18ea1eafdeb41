"""Interop over OTLP/gRPC: the real OpenTelemetry JavaScript SDK's gRPC exporters (exporter-{trace,logs,metrics}-
otlp-grpc on @grpc/grpc-js, pinned in package-lock.json; tests/interop/app.js MODE-grpc) send through the real
gateway's gRPC listener (server.grpc_listen: "127.0.0.1:0", two workers) to three otlp-sink processes (OTLP/HTTP),
configured through environment variables only, as users do (OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:<grpc
port>, OTEL_EXPORTER_OTLP_COMPRESSION none | gzip, the Collector's default).

The same checks as test_interop.py (whose helpers this uses; setup: npm ci, skipped when the registry is
unreachable): every span, log record and data point the app created arrives exactly once, no trace is split over
sinks, log records are on their trace's sink, and the gateway counted the calls as
otlp_gateway_requests_total{protocol="grpc",signal,code="OK"} (one per successful export) and their bytes under
protocol="grpc" with the encoding sent.
No scenario with every backend down (test_interop.py's retry one): this release's gRPC exporters do not retry
(otlp-grpc-exporter-base's transport reports every error, UNAVAILABLE with RetryInfo too, as a failure, never as
retryable), so the app would only report the export as failed; the UNAVAILABLE + RetryInfo answer itself is
test_grpc_battery.py's.
Only 127.0.0.1 is used; every process stops by itself or is killed at exit (harness)."""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))

from harness import WAIT, Gateway, Pool, args, run_tests, wait_drained, wait_until  # noqa: E402
from test_interop import (SINKS, App, check_logs, ensure_node_modules, interop_config,  # noqa: E402
                          run_traces_scenario)


def grpc_interop_config(endpoints):
    """test_interop's config (two workers, fast health checks, retry queues) with the gRPC listener on."""
    text = interop_config(endpoints)
    assert text.startswith("server:\n"), text
    return text.replace("server:\n", 'server:\n  grpc_listen: "127.0.0.1:0"\n', 1)


def grpc_port(g):
    return int(g.wait_line(r"msg=listening server=grpc addr=127\.0\.0\.1:(\d+)").group(1))


def requests(g, protocol, signal, code):
    return g.metric('otlp_gateway_requests_total{protocol="%s",signal="%s",code="%s"}' % (protocol, signal, code))


def steady(name):
    pool = Pool(name, n=SINKS, logs=True)
    g = Gateway(grpc_interop_config(pool.endpoints), name="%s.yaml" % name)
    port = grpc_port(g)
    g.wait_metric("otlp_gateway_ring_backends", lambda v: v == SINKS)
    return pool, g, port


def check_grpc_requests(g, signal, exports_ok):
    """Every successful export was one gRPC call answered OK, none came over OTLP/HTTP."""
    ok = requests(g, "grpc", signal, "OK")
    http = requests(g, "http", signal, "200")
    print("    gateway %s: requests_total protocol=grpc code=OK %d (exports_ok %d), protocol=http code=200 %d"
          % (signal, ok, exports_ok, http), flush=True)
    assert ok == exports_ok > 0, (signal, ok, exports_ok)
    assert http == 0, (signal, http)


def traces(name, compression, mode="traces-grpc"):
    pool, g, port = steady(name)
    app = App(mode, port, name, compression)
    res, spans = run_traces_scenario(name, mode, compression, g, pool, app=app, protocol="grpc", port=port)
    check_grpc_requests(g, "traces", res["exports_ok"])
    return pool, g, app, res, spans


def test_traces_grpc():
    traces("traces-grpc", "none")


def test_traces_grpc_gzip():
    traces("traces-grpc-gzip", "gzip")


def logs(name, compression):
    pool, g, app, res, spans = traces(name, compression, mode="logs-grpc")
    c, items = check_logs(name, app, res, spans, g, pool)
    assert c["duplicates"] == 0, "%s: %d records arrived twice" % (name, c["duplicates"])
    assert sum(items) == res["records_exported"], (items, res["records_exported"])
    check_grpc_requests(g, "logs", res["log_exports_ok"])
    assert g.metric('otlp_gateway_received_items_total{protocol="grpc",signal="logs"}') == res["records_exported"]


def test_logs_grpc():
    logs("logs-grpc", "none")


def test_logs_grpc_gzip():
    logs("logs-grpc-gzip", "gzip")


def metrics(name, compression):
    pool, g, port = steady(name)
    app = App("metrics-grpc", port, name, compression, intervals=3)
    rc, res = app.result()
    assert rc == 0 and res, "%s: app exited %s\n%s" % (name, rc, app.tail())
    wait_drained(g)
    items = wait_until(lambda: pool.items("metrics"), lambda v: sum(v) >= res["points_exported"], WAIT,
                       "data points at the sinks")
    enc = "gzip" if compression == "gzip" else "identity"
    grpc_bytes = g.metric('otlp_gateway_received_bytes_total{protocol="grpc",signal="metrics",encoding="%s"}' % enc)
    print("    scenario=%s sent: points=%d in %d exports (%d measurements, interval %d ms, %s) exports_failed=%d | "
          "arrived: points=%d per_sink=%s | gateway metrics bytes grpc %s=%d"
          % (name, res["points_exported"], res["exports_ok"], res["measurements"], res["interval_ms"], compression,
             res["exports_failed"], sum(items), items, enc, grpc_bytes), flush=True)
    assert res["points_exported"] > 0 and res["exports_nonempty"] >= 3, res
    assert sum(items) == res["points_exported"], (items, res["points_exported"])
    assert grpc_bytes > 0
    assert g.metric('otlp_gateway_received_items_total{protocol="grpc",signal="metrics"}') == res["points_exported"]
    check_grpc_requests(g, "metrics", res["exports_ok"])


def test_metrics_grpc():
    metrics("metrics-grpc", "none")


def test_metrics_grpc_gzip():
    metrics("metrics-grpc-gzip", "gzip")


if __name__ == "__main__":
    args()
    run_tests(globals(), setup=ensure_node_modules)
