"""Interop: the real OpenTelemetry JavaScript SDK (tests/interop/app.js, versions pinned in package-lock.json)
sends through the real gateway to three otlp-sink processes. The SDK is configured through environment
variables only, as users do (OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_EXPORTER_OTLP_COMPRESSION, OTEL_SERVICE_NAME,
OTEL_BSP_*, OTEL_BLRP_*, OTEL_METRIC_EXPORT_INTERVAL).

Before the tests (the script's setup), `npm ci` installs the pinned packages into tests/interop/node_modules
when it is missing or older than package-lock.json (bounded in time). When npm cannot reach the registry
(ENOTFOUND, EAI_AGAIN, ECONNREFUSED, ...), the script is skipped: it prints "SKIP setup: npm registry
unreachable: ..." and "0 passed, 0 failed, 1 skipped" and exits 77 (ctest: Skipped); under CI=true that is a
failure. Any other npm failure, or node/npm missing (scripts/deps.sh --tests installs them), fails.

Every trace scenario checks, against the "<trace_id> <spans>" file the app writes of what it created and the
sinks' --trace-file: the exporter reported no failure and exported everything created, every span arrived
(lost == 0), no trace is split over sinks, and (steady scenarios) no span arrived twice. One line per
scenario says what the exporters sent and what arrived:
   scenario=<name> sent: ... | arrived: ...
Only 127.0.0.1 is used; every process stops by itself or is killed at exit (harness)."""
import json
import os
import re
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))

from harness import (TMP, WAIT, Gateway, Pool, Proc, args, fresh, free_ports, read_traces, resilient_config,  # noqa
                     run_tests, settled_delivery, skip, wait_drained, wait_until)

APP = os.path.join(HERE, "app.js")
NPM_TIMEOUT = 240          # npm ci, seconds
APP_TIMEOUT = 120          # one app run, seconds
TRACES = 2000              # traces per steady scenario
RETRY_TRACES = 500         # traces of the retry scenario
SINKS = 3
NETWORK_ERRORS = re.compile(r"\b(ENOTFOUND|EAI_AGAIN|ECONNREFUSED|ECONNRESET|ETIMEDOUT|ENETUNREACH|EHOSTUNREACH|"
                            r"ESOCKETTIMEDOUT|ENETDOWN)\b")


def interop_config(endpoints):
    """The fault-injection tests' config (fast health checks, retry queues), with the SDK's patience, and two
    worker loops as in production (server.workers defaults to one per core): the SDK's connections land on
    both, and traces and their logs must still meet on one sink."""
    return resilient_config(endpoints, request_timeout="5s", workers=2)


# ---- npm ------------------------------------------------------------------------------------------------

def ensure_node_modules():
    """The script's setup: runs npm ci when node_modules is missing or stale; skips the script when the registry
    is unreachable."""
    node, npm = shutil.which("node"), shutil.which("npm")
    assert node and npm, "node or npm not found on PATH (scripts/deps.sh --tests installs Debian's nodejs and npm)"
    version = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=WAIT).stdout.strip()
    m = re.match(r"v(\d+)\.(\d+)", version)
    major, minor = (int(m.group(1)), int(m.group(2))) if m else (0, 0)
    assert major == 18 and minor >= 19 or major == 20 and minor >= 6 or major > 20, (
        "node %s is older than the pinned SDK needs (^18.19.0 || >=20.6.0)" % version)
    stamp = os.path.join(HERE, "node_modules", ".package-lock.json")
    inputs = [os.path.join(HERE, f) for f in ("package.json", "package-lock.json")]
    if os.path.exists(stamp) and all(os.path.getmtime(stamp) >= os.path.getmtime(f) for f in inputs):
        print("node %s; node_modules up to date" % version, flush=True)
        return
    t0 = time.time()
    cmd = [npm, "ci", "--no-audit", "--no-fund", "--ignore-scripts", "--prefer-offline", "--fetch-retries=1",
           "--fetch-timeout=30000"]
    try:
        cp = subprocess.run(cmd, cwd=HERE, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                            timeout=NPM_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise AssertionError("npm ci did not finish within %d s" % NPM_TIMEOUT)
    out = cp.stdout + cp.stderr
    if cp.returncode != 0:
        m = NETWORK_ERRORS.search(out)
        if m:
            lines = [ln.strip() for ln in out.splitlines() if m.group(1) in ln]
            skip("npm registry unreachable: %s" % next((ln for ln in lines if "reason:" in ln),
                                                        lines[0] if lines else m.group(1)))
        print(out[-3000:])
        raise AssertionError("npm ci exited %d" % cp.returncode)
    print("node %s; npm ci took %.1f s" % (version, time.time() - t0), flush=True)


# ---- the app --------------------------------------------------------------------------------------------

def app_env(port, name, compression="none"):
    env = {k: v for k, v in os.environ.items()  # grpc-js would take 127.0.0.1 through a proxy
           if not k.startswith("OTEL_") and k.lower() not in ("grpc_proxy", "http_proxy", "https_proxy")}
    env.update({
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:%d" % port,
        "OTEL_EXPORTER_OTLP_COMPRESSION": compression,
        # one export may retry 5 times, each after the gateway's Retry-After (5 s when no backend is up)
        "OTEL_EXPORTER_OTLP_TIMEOUT": "45000",
        "OTEL_SERVICE_NAME": "otlpgw-interop-" + name,
        "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=test,service.version=1.0.0",
        "OTEL_BSP_SCHEDULE_DELAY": "200", "OTEL_BSP_MAX_QUEUE_SIZE": "200000",
        "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "1000", "OTEL_BSP_EXPORT_TIMEOUT": "60000",
        "OTEL_BLRP_SCHEDULE_DELAY": "200", "OTEL_BLRP_MAX_QUEUE_SIZE": "200000",
        "OTEL_BLRP_MAX_EXPORT_BATCH_SIZE": "1000", "OTEL_BLRP_EXPORT_TIMEOUT": "60000",
        "OTEL_METRIC_EXPORT_INTERVAL": "1000", "OTEL_METRIC_EXPORT_TIMEOUT": "1000",
    })
    return env


class App(Proc):
    """node app.js MODE, started at once; result() waits and returns (exit code, the JSON line or None)."""

    def __init__(self, mode, port, name, compression="none", traces=TRACES, intervals=3):
        self.created = fresh(os.path.join(TMP, "%s.created.txt" % name))
        self.created_logs = fresh(os.path.join(TMP, "%s.created-logs.txt" % name))
        super().__init__(["node", APP, mode, "--traces", str(traces), "--out", self.created,
                          "--log-out", self.created_logs, "--intervals", str(intervals)],
                         env=app_env(port, name, compression))

    def result(self, timeout=APP_TIMEOUT):
        rc = self.wait(timeout=timeout)
        res = None
        for ln in self.out:
            if ln.startswith("{"):
                res = json.loads(ln)
        return rc, res

    def tail(self):
        return "stdout:\n%s\nstderr:\n%s" % ("\n".join(self.out[-5:]), "\n".join(self.err[-15:]))


# ---- sinks and accounting -------------------------------------------------------------------------------

def compare(created_file, sink_files):
    """What the app created vs what the sinks got (harness.delivery, read again while something is missing:
    a request may still be on its way to a sink when the gateway's queue metric reads 0)."""
    return settled_delivery(read_traces(created_file, strict=True), sink_files)


def run_traces_scenario(name, mode, compression, g, pool, traces=TRACES, app=None, allow_duplicates=False,
                        protocol="http", port=None):
    """Runs (or waits for) the app (to port, default the gateway's OTLP/HTTP port) and checks the traces and the
    gateway's byte counters of protocol (http|grpc); returns (app result, span comparison)."""
    app = app or App(mode, port or g.port, name, compression, traces=traces)
    rc, res = app.result()
    assert rc == 0 and res, "%s: app exited %s\n%s" % (name, rc, app.tail())
    wait_drained(g)
    c = compare(app.created, pool.files)
    gzip_bytes = g.metric('otlp_gateway_received_bytes_total{protocol="%s",signal="traces",encoding="gzip"}' % protocol)
    plain_bytes = g.metric('otlp_gateway_received_bytes_total{protocol="%s",signal="traces",encoding="identity"}'
                           % protocol)
    print("    scenario=%s sent: traces=%d spans=%d exports_ok=%d exports_failed=%d (%s, %.0f ms) | arrived: spans=%d "
          "per_sink=%s lost=%d duplicates=%d split_traces=%d | gateway traces bytes identity=%d gzip=%d"
          % (name, res["traces"], res["spans_exported"], res["exports_ok"], res["exports_failed"], compression,
             res["ms"], c["delivered_spans"], c["per_sink"], c["lost"], c["duplicates"], c["split"], plain_bytes,
             gzip_bytes), flush=True)
    assert res["spans_created"] == res["spans_exported"] == c["acked_spans"] > 0, (res, c["acked_spans"])
    assert res["traces"] == traces == c["acked_traces"], (res["traces"], c["acked_traces"])
    assert c["lost"] == 0, "%s: %d spans never reached a sink" % (name, c["lost"])
    assert c["unknown_traces"] == 0, "%s: sinks got %d traces the app never made" % (name, c["unknown_traces"])
    assert c["split"] == 0, "%s: %d traces were split over sinks" % (name, c["split"])
    if not allow_duplicates:
        assert c["duplicates"] == 0, "%s: %d spans arrived twice" % (name, c["duplicates"])
    assert all(c["per_sink"]), ("a sink got no traces", c["per_sink"])
    if compression == "gzip":
        assert gzip_bytes > 0 and plain_bytes == 0, (plain_bytes, gzip_bytes)
    else:
        assert plain_bytes > 0 and gzip_bytes == 0, (plain_bytes, gzip_bytes)
    return res, c


def check_logs(name, app, res, spans, g, pool):
    """Every record with a trace_id arrived once, on the sink that got its trace's spans."""
    c = compare(app.created_logs, pool.log_files)
    wrong = 0
    for i, f in enumerate(pool.log_files):
        for t in read_traces(f):
            if spans["where"].get(t) != {i}:
                wrong += 1
    items = pool.items("logs")
    print("    scenario=%s logs sent: records=%d (with trace_id %d in %d traces, without %d) exports_ok=%d "
          "exports_failed=%d | arrived: records=%d (with trace_id %d) per_sink=%s lost=%d duplicates=%d "
          "traces_not_with_their_spans=%d"
          % (name, res["records_exported"], res["records_with_trace"], res["log_traces"],
             res["records_without_trace"], res["log_exports_ok"], res["log_exports_failed"], sum(items),
             c["delivered_spans"], items, c["lost"], c["duplicates"], wrong), flush=True)
    assert res["records_with_trace"] == c["acked_spans"] > 0 and res["records_without_trace"] > 0, res
    assert c["lost"] == 0, "%s: %d log records never reached a sink" % (name, c["lost"])
    assert c["split"] == 0 and wrong == 0, "%s: log records not on their trace's sink: split=%d wrong=%d" % (
        name, c["split"], wrong)
    return c, items


# ---- scenarios ------------------------------------------------------------------------------------------
# Each test's gateway and sinks are stopped with SIGTERM when it ends and must exit 0 (under ASan: no error,
# no leak): the harness checks.

def steady(name):
    pool = Pool(name, n=SINKS, logs=True)
    g = Gateway(interop_config(pool.endpoints), name="%s.yaml" % name)
    g.wait_metric("otlp_gateway_ring_backends", lambda v: v == SINKS)
    return pool, g


def test_traces_proto():
    pool, g = steady("traces-proto")
    run_traces_scenario("traces-proto", "traces-proto", "none", g, pool)


def test_traces_proto_gzip():
    pool, g = steady("traces-proto-gzip")
    run_traces_scenario("traces-proto-gzip", "traces-proto", "gzip", g, pool)


def test_traces_json():
    pool, g = steady("traces-json")
    app = App("traces-json", g.port, "traces-json", "none")
    rc, res = app.result()
    if rc != 0:
        refused = g.metric_or_none('otlp_gateway_requests_total{protocol="http",signal="traces",code="415"}') or 0
        print("    scenario=traces-json sent: %s | the gateway answered 415 to %d requests" % (
            " ".join("%s=%s" % kv for kv in sorted((res or {}).items()) if kv[0] != "mode"), refused), flush=True)
        assert not refused, "the gateway refuses OTLP/JSON (415 Unsupported Media Type) from exporter-trace-otlp-http"
    run_traces_scenario("traces-json", "traces-json", "none", g, pool, app=app)


def test_logs_follow_their_traces():
    pool, g = steady("logs")
    app = App("logs", g.port, "logs", "gzip")
    res, spans = run_traces_scenario("logs", "logs", "gzip", g, pool, app=app)
    c, items = check_logs("logs", app, res, spans, g, pool)
    assert c["duplicates"] == 0, "logs: %d records arrived twice" % c["duplicates"]
    assert sum(items) == res["records_exported"], (items, res["records_exported"])


def test_metrics():
    pool, g = steady("metrics")
    app = App("metrics", g.port, "metrics", "gzip", intervals=3)
    rc, res = app.result()
    assert rc == 0 and res, "metrics: app exited %s\n%s" % (rc, app.tail())
    wait_drained(g)
    items = wait_until(lambda: pool.items("metrics"), lambda v: sum(v) >= res["points_exported"], WAIT,
                       "data points at the sinks")
    print("    scenario=metrics sent: points=%d in %d exports (%d measurements, interval %d ms) exports_failed=%d | "
          "arrived: points=%d per_sink=%s requests=%s"
          % (res["points_exported"], res["exports_ok"], res["measurements"], res["interval_ms"],
             res["exports_failed"], sum(items), items, [s.stats()["metrics"]["requests"] for s in pool.sinks]),
          flush=True)
    assert res["points_exported"] > 0 and res["exports_nonempty"] >= 3, res
    assert sum(items) == res["points_exported"], (items, res["points_exported"])


def test_retry_until_backends_come_up():
    """All backends down when the app starts: the gateway answers 503 + Retry-After, the SDK's exporters retry
    (honouring Retry-After), the sinks start on the configured addresses once both exporters have been
    refused, and everything the app created arrives."""
    name = "retry"
    listens = ["127.0.0.1:%d" % p for p in free_ports(SINKS)]
    g = Gateway(interop_config(["http://" + a for a in listens]), name="retry.yaml")
    g.wait_not_ready()
    app = App("logs", g.port, name, "gzip", traces=RETRY_TRACES)
    for sig in ("traces", "logs"):  # both exporters were refused (and retry)
        g.wait_metric('otlp_gateway_requests_total{protocol="http",signal="%s",code="503"}' % sig,
                      lambda v: v and v >= 1, 2 * WAIT)
    assert app.p.poll() is None, "the app ended while every backend was down:\n" + app.tail()
    pool = Pool(name, listens=listens, logs=True)
    # the app finishes after the sinks came up: it was still running (retrying) when they were listening
    assert app.p.poll() is None, "the app finished before the sinks were up:\n" + app.tail()
    res, spans = run_traces_scenario(name, "logs", "gzip", g, pool, traces=RETRY_TRACES, app=app,
                                     allow_duplicates=True)
    c, items = check_logs(name, app, res, spans, g, pool)
    refused = {s: g.metric('otlp_gateway_requests_total{protocol="http",signal="%s",code="503"}' % s)
               for s in ("traces", "logs")}
    print("    scenario=retry gateway answered 503 to %d traces and %d logs requests; span duplicates=%d record "
          "duplicates=%d"
          % (refused["traces"], refused["logs"], spans["duplicates"], c["duplicates"]), flush=True)


if __name__ == "__main__":
    args()
    run_tests(globals(), setup=ensure_node_modules)
