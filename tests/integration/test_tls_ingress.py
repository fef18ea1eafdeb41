"""TLS on both ingest listeners (server.tls), against the real gateway binary, plain otlp-sink backends and two
clients: python's ssl module (raw HTTP/1.1 requests, and raw HTTP/2 frames as test_grpc.py writes them, with
ALPN) and otlp-load --tls --ca (keep-alive load, OTLP/HTTP and OTLP/gRPC). Certificates are made at test time
with the openssl CLI (tests/integration/certs.py).

What is checked: an HTTPS POST /v1/traces reaches a plain sink (ALPN http/1.1 negotiated); OTLP/gRPC over TLS
(ALPN h2) answers; plain HTTP (and plain HTTP/2) to a TLS port is closed without a plaintext answer and counted as
tls_handshake_failures_total{side="client",reason="protocol"}, and the gateway keeps serving; a client that
connects and sends nothing, or half a handshake, is closed by read_timeout; mTLS: no certificate and another CA's
certificate are refused (no_certificate, certificate), the right one works; a missing file or a key that does not
match its certificate is a start-up error naming the file, and --check-config says the same; SIGHUP with a
rotated certificate (new content at the same path, then a new path) under load: no failed request, new
connections see the new certificate's serial, an open keep-alive connection keeps working.
"""
import os
import shutil
import signal
import socket
import ssl
import subprocess

from certs import make_ca, make_cert, serial_of
from harness import (TMP, WAIT, BackgroundLoad, Conn, Gateway, Pool, Sink, args, build_request, fresh,
                     gateway_config, read_traces, run_load, run_tests, settled_delivery, trace_request, wait_until,
                     write_config)
from test_grpc import (DATA, END_HEADERS, END_STREAM, HEADERS, PREFACE, SETTINGS, call_headers, frame,
                       grpc_message)

CERTS = os.path.join(TMP, "tls")
CA = make_ca(CERTS, "ingress-ca")
OTHER_CA = make_ca(CERTS, "other-ca")
SERVER = make_cert(CERTS, CA, "gateway", ["127.0.0.1", "localhost"])
CLIENT = make_cert(CERTS, CA, "app", [], client=True)
STRANGER = make_cert(CERTS, OTHER_CA, "stranger", [], client=True)
PROTOBUF = {"Content-Type": "application/x-protobuf"}
FAIL = 'otlp_gateway_tls_handshake_failures_total{side="client",reason="%s"}'
REASONS = ("protocol", "certificate", "no_certificate", "alpn", "reset")


def tls_config(backends, cert=SERVER.cert, key=SERVER.key, client_ca="", read_timeout="30s", extra_server=""):
    """gateway_config with server.tls set (both listeners)."""
    tls = '  tls: {cert_file: "%s", key_file: "%s", client_ca_file: "%s"}\n%s' % (cert, key, client_ca, extra_server)
    return gateway_config(backends, read_timeout=read_timeout).replace("server:\n", "server:\n" + tls, 1)


def client_ctx(alpn=("http/1.1",), cert=None, ca=CA):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(ca.cert)
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    if cert:
        ctx.load_cert_chain(cert.cert, cert.key)
    return ctx


class TLSConn(Conn):
    """harness.Conn over TLS (verified against the test CA, host 127.0.0.1 checked against the IP SAN)."""

    def __init__(self, port, alpn=("http/1.1",), cert=None, ca=CA, timeout=WAIT):
        raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.s = client_ctx(alpn, cert, ca).wrap_socket(raw, server_hostname="127.0.0.1")
        self.buf = b""

    def serial(self):
        return serial_of(self.s.getpeercert(binary_form=True))

    def post(self, n_spans=3, first_trace=1):
        self.send(build_request("POST", "/v1/traces", trace_request(n_spans, first_trace=first_trace), PROTOBUF))
        return self.read_response()


def refused(port, **kw):
    """True when a TLS client (kw as TLSConn's) cannot get an answer to a request: the handshake fails, or (TLS
    1.3: the server checks the client's certificate after the client finished) the first read does."""
    try:
        c = TLSConn(port, **kw)
        c.post()
    except (ssl.SSLError, ConnectionError, EOFError, OSError):
        return True
    return False


def assert_zero_failures(g, but=()):
    for r in REASONS:
        for side in ("client", "backend"):
            if side == "client" and r in but:
                continue
            name = 'otlp_gateway_tls_handshake_failures_total{side="%s",reason="%s"}' % (side, r)
            assert g.metric(name) == 0, (name, g.metric(name))


def grpc_call_over_tls(port, alpn=("h2",), cert=None):
    """One raw Export call over TLS (3 spans of trace 0x01..01); returns (negotiated ALPN, the frames' types up to
    the END_STREAM HEADERS that ends the call)."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
    s = client_ctx(alpn, cert).wrap_socket(raw, server_hostname="127.0.0.1")
    s.sendall(PREFACE + frame(SETTINGS, 0, 0) + frame(HEADERS, END_HEADERS, 1, call_headers()) +
              frame(DATA, END_STREAM, 1, grpc_message(trace_request(3))))
    buf, types = b"", []
    while True:
        while len(buf) >= 9:
            n = int.from_bytes(buf[:3], "big")
            if len(buf) < 9 + n:
                break
            t, flags, sid = buf[3], buf[4], int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF
            buf = buf[9 + n:]
            types.append(t)
            if t == HEADERS and sid == 1 and flags & END_STREAM:
                alpn_got = s.selected_alpn_protocol()
                s.close()
                return alpn_got, types
        chunk = s.recv(65536)
        assert chunk, "the gRPC port closed the TLS connection without answering the call (frames %s)" % types
        buf += chunk


# ---- tests -------------------------------------------------------------------------------------------------------

def test_https_post_reaches_a_plain_sink():
    pool = Pool("tls-https", 1)
    g = Gateway(tls_config(pool.endpoints))
    assert_zero_failures(g)  # every reason of both sides exists from the start
    c = TLSConn(g.port, alpn=("h2", "http/1.1"))
    assert c.s.selected_alpn_protocol() == "http/1.1", c.s.selected_alpn_protocol()
    for i in range(3):  # keep-alive: three requests on one TLS connection
        st, _, body = c.post(5, first_trace=10 + i)
        assert st == 200, (st, body)
    c.close()
    wait_until(lambda: sum(pool.items("traces")), lambda n: n == 15, WAIT, "spans at the plain sink")
    # otlp-load over TLS (verified against the test CA), keep-alive connections
    acked = fresh(os.path.join(TMP, "tls-https.acked.txt"))
    res, out = run_load("https://127.0.0.1:%d" % g.port, "--ca", CA.cert, "--connections", "4", "--requests", "200",
                        "--spans", "10", "--traces", "5", "--trace-file", acked)
    assert res["ok"] == 200 and res["errors"] == 0, out
    mine = read_traces(acked, strict=True)
    for i in range(3):
        mine[bytes([10 + i]).hex() * 16] += 5  # the python client's requests
    d = settled_delivery(mine, pool.files)
    assert d["lost"] == 0 and d["duplicates"] == 0 and d["unknown_traces"] == 0, d
    assert g.metric('otlp_gateway_requests_total{protocol="http",signal="traces",code="200"}') == 203
    assert_zero_failures(g)
    assert g.stop() == 0
    pool.stop()


def test_grpc_over_tls_with_alpn_h2():
    pool = Pool("tls-grpc", 1)
    g = Gateway(tls_config(pool.endpoints))
    alpn, types = grpc_call_over_tls(g.grpc_port)
    assert alpn == "h2", alpn
    assert HEADERS in types, types
    # a client that offers no ALPN at all is served too (h2 by prior knowledge)
    alpn, _ = grpc_call_over_tls(g.grpc_port, alpn=())
    assert alpn is None, alpn
    res, out = run_load("https://127.0.0.1:%d" % g.grpc_port, "--grpc", "--ca", CA.cert, "--connections", "2",
                        "--streams", "4", "--requests", "100", "--spans", "10")
    assert res["ok"] == 100 and res.get("status_OK") == 100, out
    wait_until(lambda: sum(pool.items("traces")), lambda n: n == 6 + 1000, WAIT, "spans at the sink")
    assert g.metric('otlp_gateway_requests_total{protocol="grpc",signal="traces",code="OK"}') == 102
    assert_zero_failures(g)
    assert g.stop() == 0
    pool.stop()


def test_plaintext_to_a_tls_port_is_closed_and_counted():
    sink = Sink()
    g = Gateway(tls_config([sink.endpoint]))
    for port, data in ((g.port, build_request("POST", "/v1/traces", trace_request(3), PROTOBUF)),
                       (g.grpc_port, PREFACE + frame(SETTINGS, 0, 0))):
        before = g.metric(FAIL % "protocol")
        c = Conn(port)
        c.send(data)
        assert c.closed_by_peer(), "the TLS port kept a plaintext client's connection open"
        assert b"HTTP/1.1" not in c.buf and b"\x00\x00" not in c.buf[:2], c.buf[:80]  # no plaintext answer
        c.close()
        g.wait_metric(FAIL % "protocol", lambda v: v == before + 1)
    g.wait_line(r'msg="TLS handshake failed" server=ingest peer=127\.0\.0\.1:\d+ reason=protocol detail=')
    g.wait_line(r'msg="TLS handshake failed" server=grpc peer=127\.0\.0\.1:\d+ reason=protocol detail=')
    # the gateway keeps serving TLS clients on both ports
    st, _, _ = TLSConn(g.port).post()
    assert st == 200
    assert grpc_call_over_tls(g.grpc_port)[0] == "h2"
    assert_zero_failures(g, but=("protocol",))
    assert g.stop() == 0
    sink.stop()


def test_a_silent_or_half_handshake_is_closed_by_read_timeout():
    sink = Sink()
    # idle_timeout (120s) is far beyond the wait below: only read_timeout can close these connections
    g = Gateway(tls_config([sink.endpoint], read_timeout="1s"))
    hello_start = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"  # a ClientHello's record and handshake headers
    for port in (g.port, g.grpc_port):
        silent, half = Conn(port), Conn(port)
        half.send(hello_start)
        assert silent.closed_by_peer(timeout=WAIT) and half.closed_by_peer(timeout=WAIT), port
        assert silent.buf == b"", silent.buf[:40]
        silent.close()
        half.close()
    st, _, _ = TLSConn(g.port).post()
    assert st == 200
    assert g.stop() == 0
    sink.stop()


def test_mtls_refuses_no_certificate_and_another_ca():
    pool = Pool("tls-mtls", 1)
    g = Gateway(tls_config(pool.endpoints, client_ca=CA.cert))
    for port in (g.port, g.grpc_port):
        n0, c0 = g.metric(FAIL % "no_certificate"), g.metric(FAIL % "certificate")
        assert refused(port), "a client without a certificate got an answer"
        g.wait_metric(FAIL % "no_certificate", lambda v: v == n0 + 1)
        assert refused(port, cert=STRANGER), "a client with another CA's certificate got an answer"
        g.wait_metric(FAIL % "certificate", lambda v: v == c0 + 1)
    g.wait_line(r'msg="TLS handshake failed" server=ingest .*reason=no_certificate')
    # the right certificate works on both ports
    c = TLSConn(g.port, cert=CLIENT)
    st, _, _ = c.post()
    assert st == 200
    c.close()
    assert grpc_call_over_tls(g.grpc_port, cert=CLIENT)[0] == "h2"
    wait_until(lambda: sum(pool.items("traces")), lambda n: n == 6, WAIT, "spans of the two mTLS clients")
    assert g.metric(FAIL % "protocol") == 0 and g.metric(FAIL % "alpn") == 0
    assert g.stop() == 0
    pool.stop()


def test_bad_certificate_files_are_config_errors_naming_the_file():
    other = make_cert(CERTS, CA, "other-pair", ["127.0.0.1"])
    missing = os.path.join(CERTS, "nonexistent.key")
    cases = [
        (tls_config(["http://127.0.0.1:1"], cert=SERVER.cert, key=other.key), other.key),  # key of another cert
        (tls_config(["http://127.0.0.1:1"], cert=SERVER.cert, key=missing), missing),
        (tls_config(["http://127.0.0.1:1"], cert=os.path.join(CERTS, "nope.crt"), key=SERVER.key),
         os.path.join(CERTS, "nope.crt")),
        (tls_config(["http://127.0.0.1:1"], cert=SERVER.cert, key=""), "server.tls.key_file"),
        (tls_config(["http://127.0.0.1:1"], client_ca=os.path.join(CERTS, "no-ca.crt")),
         os.path.join(CERTS, "no-ca.crt")),
    ]
    for i, (text, name) in enumerate(cases):
        path = write_config(text, "tls-bad-%d.yaml" % i)
        for argv in ([args().gateway, "--config", path], [args().gateway, "--check-config", "--config", path]):
            r = subprocess.run(argv, capture_output=True, text=True, timeout=WAIT)
            lines = r.stderr.strip().splitlines()
            assert r.returncode == 1, (argv, r.returncode, r.stderr[-500:])
            assert len(lines) == 1 and name in lines[0] and lines[0].startswith(path), (argv, r.stderr[-500:])
            assert "server.tls" in lines[0], lines[0]


def test_sighup_rotates_the_certificate_under_load():
    pool = Pool("tls-rotate", 2)
    live = os.path.join(CERTS, "live")
    os.makedirs(live, exist_ok=True)
    first = make_cert(CERTS, CA, "rotate-1", ["127.0.0.1"])
    cert, key = os.path.join(live, "gw.crt"), os.path.join(live, "gw.key")
    shutil.copy(first.cert, cert)
    shutil.copy(first.key, key)
    g = Gateway(tls_config(pool.endpoints, cert=cert, key=key), name="tls-rotate.yaml")
    old = TLSConn(g.port)  # a keep-alive connection opened before the rotation
    assert old.post()[0] == 200 and old.serial() == serial_of_pem(first.cert)
    acked_h, acked_g = (fresh(os.path.join(TMP, "tls-rotate.%s.txt" % p)) for p in ("http", "grpc"))
    lh = BackgroundLoad("https://127.0.0.1:%d" % g.port, "--ca", CA.cert, "--connections", "4", "--requests", "3000",
                        "--spans", "5", "--traces", "5", "--seed", "21", "--trace-file", acked_h)
    lg = BackgroundLoad("https://127.0.0.1:%d" % g.grpc_port, "--grpc", "--ca", CA.cert, "--connections", "2",
                        "--streams", "4", "--requests", "3000", "--spans", "5", "--traces", "5", "--seed", "22",
                        "--trace-file", acked_g)
    g.wait_metric('otlp_gateway_requests_total{protocol="http",signal="traces",code="200"}', lambda v: v >= 100)
    # 1: new content at the same path (written whole, then renamed over the old files)
    second = make_cert(CERTS, CA, "rotate-2", ["127.0.0.1"])
    for src, dst in ((second.cert, cert), (second.key, key)):
        shutil.copy(src, dst + ".new")
        os.replace(dst + ".new", dst)
    g.signal(signal.SIGHUP)
    g.wait_line(r"msg=\"config reloaded\".*generation=2")
    assert TLSConn(g.port).serial() == serial_of_pem(second.cert), "a new connection still sees the old certificate"
    assert old.post(first_trace=90)[0] == 200, "the keep-alive connection from before the reload failed"
    assert old.serial() == serial_of_pem(first.cert)
    # 2: a new path in the config
    third = make_cert(CERTS, CA, "rotate-3", ["127.0.0.1"])
    with open(g.config_path) as f:
        text = f.read()
    with open(g.config_path, "w") as f:
        f.write(text.replace(cert, third.cert).replace(key, third.key))
    g.signal(signal.SIGHUP)
    g.wait_line(r"msg=\"config reloaded\".*generation=3")
    assert TLSConn(g.port).serial() == serial_of_pem(third.cert)
    alpn, _ = grpc_call_over_tls(g.grpc_port)
    assert alpn == "h2"
    # 3: a broken pair on reload keeps the running certificate
    with open(g.config_path, "w") as f:
        f.write(text.replace(cert, third.cert).replace(key, first.key))
    g.signal(signal.SIGHUP)
    g.wait_line(r"msg=\"config reload failed, keeping the running config\".*%s" % first.key.replace(".", r"\."))
    assert TLSConn(g.port).serial() == serial_of_pem(third.cert)
    assert old.post(first_trace=91)[0] == 200
    old.close()
    rh, rg = lh.result(), lg.result()
    assert rh["ok"] == 3000 and rh["errors"] == 0, rh
    assert rg["ok"] == 3000 and rg["errors"] == 0, rg
    acked = read_traces(acked_h, strict=True) + read_traces(acked_g, strict=True)
    for first, n in ((1, 3 + 3), (90, 3), (91, 3)):  # the keep-alive connection's posts and the raw gRPC call
        acked[bytes([first]).hex() * 16] += n
    d = settled_delivery(acked, pool.files)
    assert d["lost"] == 0 and d["duplicates"] == 0 and d["split"] == 0, {k: v for k, v in d.items() if k != "where"}
    assert_zero_failures(g)
    assert g.stop() == 0
    pool.stop()


def serial_of_pem(path):
    with open(path) as f:
        return serial_of(f.read())


if __name__ == "__main__":
    run_tests(globals())
