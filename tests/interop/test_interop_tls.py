"""Interop over TLS, the Grafana Cloud shape end to end: the real OpenTelemetry JavaScript SDK (tests/interop/app.js,
pinned in package-lock.json) sends over TLS to both gateway listeners (server.tls with a certificate of a CA made at
test time by tests/integration/certs.py), configured through environment variables only, as users do:
  - OTLP/HTTP exporters: OTEL_EXPORTER_OTLP_ENDPOINT=https://127.0.0.1:<port> and OTEL_EXPORTER_OTLP_CERTIFICATE=
    <the test CA>, which otlp-exporter-base reads into the https agent's `ca` (otlp-node-http-env-configuration.js);
  - OTLP/gRPC exporters: https://127.0.0.1:<grpc port> and the same variable, which otlp-grpc-exporter-base turns
    into credentials.createSsl(root). This release also diag-warns when the root certificate comes without a
    client certificate and key (which app.js counts as a problem), so the gRPC apps are given a client pair too
    (OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE/_KEY); the gateway does not ask for one (no client_ca_file) and the
    handshake does not send it.
The gateway forwards to three otlp-sink processes over TLS (otlp-sink --tls), as to Grafana Cloud: https://
endpoints under a path prefix ("https://127.0.0.1:PORT/otlp", the sinks serve --prefix /otlp only), verified
against the test CA (backends.tls.ca_file, name check on the IP), and an Authorization header injected by the
gateway (backends.headers) that the sinks demand (--require-header) and the apps never send.

Checks, per scenario (traces+logs over HTTP and over gRPC, metrics over HTTP and over gRPC): every span, log
record and data point the app created arrived exactly once, no trace is split over sinks, log records are on
their trace's sink (test_interop.py's helpers); the sinks answered 0 requests without the header (unauthorized 0,
rejected 0), got 0 requests outside the prefix (unknown_paths 0, GETs only at the health-check path), and failed
0 TLS handshakes (but the plaintext GET made to one before the gateway starts: refused, counted as one); the
gateway counted the requests under the protocol the app used.
Setup as test_interop.py (npm ci; skipped when the registry is unreachable). Only 127.0.0.1 is used; every process
stops by itself or is killed at exit (harness)."""
import os
import socket
import ssl
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))

import certs  # noqa: E402
from harness import (TMP, WAIT, Gateway, Pool, Proc, Sink, args, fresh, http_request, run_tests,  # noqa: E402
                     wait_drained, wait_until)
from test_interop import (APP, SINKS, TRACES, App, app_env, check_logs, ensure_node_modules,  # noqa: E402
                          interop_config, run_traces_scenario)

TOKEN = "Basic aW50ZXJvcDp0bHMtdGVzdA=="  # base64 "interop:tls-test", as a Grafana Cloud credential looks
CERTS = os.path.join(TMP, "interop-tls-certs")
_made = {}


def pki():
    """The test CA, one server certificate for 127.0.0.1 (gateway and sinks) and a client pair (gRPC apps)."""
    if not _made:
        ca = certs.make_ca(CERTS, "interop-ca")
        _made.update(ca=ca, server=certs.make_cert(CERTS, ca, "interop-server", ["127.0.0.1", "localhost"]),
                     client=certs.make_cert(CERTS, ca, "interop-app", [], client=True))
    return _made


class TlsPool(Pool):
    """Pool's n sinks, each an HTTPS otlp-sink under /otlp that demands the Authorization header."""

    def __init__(self, name, n=SINKS):
        p = pki()
        self.files = [fresh(os.path.join(TMP, "%s.sink%d.traces.txt" % (name, i))) for i in range(n)]
        self.log_files = [fresh(os.path.join(TMP, "%s.sink%d.logs.txt" % (name, i))) for i in range(n)]
        self.sinks = [Sink("--trace-file", f, "--log-file", lf, "--prefix", "/otlp", "--require-header",
                           "Authorization: " + TOKEN, tls=p["server"])
                      for f, lf in zip(self.files, self.log_files)]

    @property
    def endpoints(self):
        return [s.endpoint + "/otlp" for s in self.sinks]


def tls_config(endpoints):
    """test_interop's config (two workers, fast health checks, retry queues) with TLS on both listeners, the
    gRPC listener on, backends verified against the test CA and the injected header."""
    p = pki()
    text = interop_config(endpoints)
    assert text.startswith("server:\n") and "\nbackends:\n" in text, text
    text = text.replace("server:\n", 'server:\n  grpc_listen: "127.0.0.1:0"\n  tls: {cert_file: "%s", key_file: "%s"}\n'
                        % (p["server"].cert, p["server"].key), 1)
    return text.replace("\nbackends:\n", '\nbackends:\n  tls: {ca_file: "%s"}\n  headers: {Authorization: "%s"}\n'
                        % (p["ca"].cert, TOKEN), 1)


class TlsApp(App):
    """App with https:// endpoints and the test CA (and, for gRPC, the client pair: see the module text)."""

    def __init__(self, mode, port, name, compression="none", traces=TRACES, intervals=3):
        p = pki()
        self.created = fresh(os.path.join(TMP, "%s.created.txt" % name))
        self.created_logs = fresh(os.path.join(TMP, "%s.created-logs.txt" % name))
        env = app_env(port, name, compression)
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = "https://127.0.0.1:%d" % port
        env["OTEL_EXPORTER_OTLP_CERTIFICATE"] = p["ca"].cert
        if mode.endswith("-grpc"):
            env["OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE"] = p["client"].cert
            env["OTEL_EXPORTER_OTLP_CLIENT_KEY"] = p["client"].key
        Proc.__init__(self, ["node", APP, mode, "--traces", str(traces), "--out", self.created,
                             "--log-out", self.created_logs, "--intervals", str(intervals)], env=env)


def tls_get(port, path):
    """GET path over TLS verified against the test CA: (status line, body)."""
    ctx = ssl.create_default_context(cafile=pki()["ca"].cert)
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as raw:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
            s.sendall(("GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n" % path).encode())
            data = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return head.split(b"\r\n", 1)[0].decode(), body


def steady(name):
    pool = TlsPool(name)
    # The sinks really are TLS: a verified GET works, plaintext does not get an HTTP answer.
    status, body = tls_get(pool.sinks[0].port, "/stats")
    assert status.endswith("200 OK") and b'"unknown_paths"' in body, (status, body[:200])
    try:
        st = http_request(pool.sinks[0].port, "GET", "/stats")[0]
    except (EOFError, OSError, ValueError, IndexError):
        st = None
    assert st != 200, "otlp-sink --tls answered plaintext HTTP"
    wait_until(lambda: pool.sinks[0].stats()["tls_handshake_failures"], lambda v: v == 1, WAIT,
               "the plaintext GET counted as a failed handshake")
    pool.handshake_failures = [1] + [0] * (len(pool.sinks) - 1)  # that one, before the gateway started
    g = Gateway(tls_config(pool.endpoints), name="%s.yaml" % name)
    g.wait_metric("otlp_gateway_ring_backends", lambda v: v == SINKS)  # health checks over TLS passed
    return pool, g


def check_sinks(name, pool, signals):
    """Nothing reached a sink without the injected header or outside /otlp; no failed handshake (but steady()'s
    plaintext probe); each sink got
    requests of every signal in signals."""
    for i, s in enumerate(pool.sinks):
        st = s.stats()
        print("    scenario=%s sink%d: %s unauthorized=%d rejected=%d unknown_paths=%d gets=%s gets_other=%d "
              "tls_handshake_failures=%d"
              % (name, i, " ".join("%s=%d" % (sig, st[sig]["requests"]) for sig in ("traces", "logs", "metrics")),
                 st["unauthorized"], st["rejected"], st["unknown_paths"], st["gets"], st["gets_other"],
                 st["tls_handshake_failures"]), flush=True)
        assert st["unauthorized"] == 0 and st["rejected"] == 0, (name, i, st)
        assert st["unknown_paths"] == 0 and st["gets_other"] == 0, (name, i, st)
        assert set(st["gets"]) <= {"/"}, ("GETs outside the health-check path", name, i, st["gets"])
        assert st["tls_handshake_failures"] == pool.handshake_failures[i], (name, i, st)
        for sig in signals:
            assert st[sig]["requests"] > 0, ("sink got no %s" % sig, name, i, st)


def check_protocol(g, protocol, signal, exports_ok):
    code = "OK" if protocol == "grpc" else "200"
    other, other_code = ("http", "200") if protocol == "grpc" else ("grpc", "OK")
    ok = g.metric('otlp_gateway_requests_total{protocol="%s",signal="%s",code="%s"}' % (protocol, signal, code))
    no = g.metric_or_none('otlp_gateway_requests_total{protocol="%s",signal="%s",code="%s"}'
                          % (other, signal, other_code)) or 0
    assert ok >= exports_ok > 0 and no == 0, (protocol, signal, ok, exports_ok, no)


def traces_and_logs(name, protocol):
    pool, g = steady(name)
    mode = "logs-grpc" if protocol == "grpc" else "logs"
    port = g.grpc_port if protocol == "grpc" else g.port
    app = TlsApp(mode, port, name, "gzip")
    res, spans = run_traces_scenario(name, mode, "gzip", g, pool, app=app, protocol=protocol, port=port)
    c, items = check_logs(name, app, res, spans, g, pool)
    assert c["duplicates"] == 0, "%s: %d records arrived twice" % (name, c["duplicates"])
    assert sum(items) == res["records_exported"], (items, res["records_exported"])
    check_protocol(g, protocol, "traces", res["exports_ok"])
    check_protocol(g, protocol, "logs", res["log_exports_ok"])
    check_sinks(name, pool, ("traces", "logs"))


def metrics(name, protocol):
    pool, g = steady(name)
    mode = "metrics-grpc" if protocol == "grpc" else "metrics"
    port = g.grpc_port if protocol == "grpc" else g.port
    app = TlsApp(mode, port, name, "none", intervals=3)
    rc, res = app.result()
    assert rc == 0 and res, "%s: app exited %s\n%s" % (name, rc, app.tail())
    wait_drained(g)
    items = wait_until(lambda: pool.items("metrics"), lambda v: sum(v) >= res["points_exported"], WAIT,
                       "data points at the sinks")
    print("    scenario=%s sent: points=%d in %d exports exports_failed=%d | arrived: points=%d per_sink=%s"
          % (name, res["points_exported"], res["exports_ok"], res["exports_failed"], sum(items), items), flush=True)
    assert res["points_exported"] > 0 and res["exports_nonempty"] >= 3, res
    assert sum(items) == res["points_exported"], (items, res["points_exported"])
    check_protocol(g, protocol, "metrics", res["exports_ok"])
    check_sinks(name, pool, ())
    assert sum(s.stats()["metrics"]["requests"] for s in pool.sinks) > 0


def test_traces_and_logs_https():
    traces_and_logs("tls-http-logs", "http")


def test_traces_and_logs_grpc_tls():
    traces_and_logs("tls-grpc-logs", "grpc")


def test_metrics_https():
    metrics("tls-http-metrics", "http")


def test_metrics_grpc_tls():
    metrics("tls-grpc-metrics", "grpc")


if __name__ == "__main__":
    args()
    run_tests(globals(), setup=ensure_node_modules)
