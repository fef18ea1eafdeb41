"""HTTP/1.1 framing through the real gateway binary: keep-alive, pipelining, chunked bodies,
Expect: 100-continue, idle and read timeouts, connection limits, HTTP/1.0, garbage, HTTP/2 clients and Upgrade."""
import re
import signal
import socket
import time

from harness import (WAIT, Conn, Gateway, build_request, gateway_config, gz, parse_status, run_tests, trace_request,
                     wait_until)

PB = {"Content-Type": "application/x-protobuf"}
gw = None


def setup():
    """The gateway most tests share (the script's: stopped with SIGTERM, and its exit code checked, after the
    last test)."""
    global gw
    if gw is None:
        gw = Gateway(gateway_config(idle_timeout="1s", read_timeout="2s", max_connections=20), shared=True)
    return gw


def wait_client_connections(g, n, timeout=WAIT):
    """Waits (bounded) until the gateway reports at most n open client connections."""
    wait_until(lambda: g.metric('otlp_gateway_connections{side="client",protocol="http"}'), lambda v: v <= n, timeout,
               "open client connections")


def test_keep_alive_many_requests_one_connection():
    g = setup()
    c = Conn(g.port)
    for i in range(50):
        c.send(build_request("POST", "/v1/traces", b"" if i % 2 else trace_request(3), PB))
        st, h, _ = c.read_response()
        assert st == (200 if i % 2 else 503), (i, st)  # 503: its one backend is down
        assert h.get("connection") != "close"
    c.close()


def test_pipelining_responses_in_order():
    g = setup()
    c = Conn(g.port)
    plan = []
    data = b""
    for i in range(30):
        kind = i % 3
        if kind == 0:
            data += build_request("POST", "/v1/traces", trace_request(2), PB)
            plan.append(503)
        elif kind == 1:
            data += build_request("POST", "/v1/logs", b"", PB)
            plan.append(200)
        else:
            data += build_request("POST", "/v1/nope", b"xyz", PB)
            plan.append(404)
    c.send(data)
    got = [c.read_response()[0] for _ in plan]
    assert got == plan, got
    c.close()


def test_large_bodies_whole_in_one_read_then_pipelined():
    """Bodies of 16 KiB or more that arrive whole in one read are taken over by the request without a copy (the
    server reads on into a fresh buffer); what follows them in the same read must still parse. A corrupted body
    would be a 400; intact, a valid request with spans gets the dead backend's 503."""
    g = setup()
    big = trace_request(250, 40, service="svc-" + "x" * 12000)  # a long service.name makes it ~20 KB
    assert len(big) > 16384, len(big)
    c = Conn(g.port)
    data = b"".join(build_request("POST", "/v1/traces", big, PB) for _ in range(3))
    data += build_request("POST", "/v1/logs", b"", PB)
    c.send(data)
    got = [c.read_response()[0] for _ in range(4)]
    assert got == [503, 503, 503, 200], got
    c.close()


def test_chunked_bodies():
    g = setup()
    c = Conn(g.port)
    c.send(build_request("POST", "/v1/traces", trace_request(20, 4), PB, chunked=True))
    assert c.read_response()[0] == 503  # valid, non-empty
    c.send(build_request("POST", "/v1/traces", b"", PB, chunked=True))
    assert c.read_response()[0] == 200  # valid, empty
    c.send(build_request("POST", "/v1/traces", gz(trace_request(20, 4)), dict(PB, **{"Content-Encoding": "gzip"}),
                         chunked=True))
    assert c.read_response()[0] == 503
    c.close()


def test_expect_100_continue():
    g = setup()
    c = Conn(g.port)
    body = trace_request(4)
    c.send(build_request("POST", "/v1/traces", None, dict(PB, **{"Content-Length": str(len(body)),
                                                                 "Expect": "100-continue"})))
    st, _, _ = c.read_response()
    assert st == 100, st
    c.send(body)
    st, _, _ = c.read_response()
    assert st == 503, st
    # refused from the headers: no 100, a final answer, and the connection closes (the body never comes)
    c.send(build_request("POST", "/v1/wrong", None, dict(PB, **{"Content-Length": "10", "Expect": "100-continue"})))
    st, h, _ = c.read_response()
    assert st == 404 and h.get("connection") == "close", (st, h)
    assert c.closed_by_peer()
    c.close()


def test_idle_connection_closed_after_idle_timeout():
    g = setup()
    c = Conn(g.port)
    c.send(build_request("POST", "/v1/traces", b"", PB))
    st, h, _ = c.read_response()
    assert st == 200 and h.get("connection") != "close", (st, h)
    # kept open after the answer (a second request on it is served), then closed by the gateway once idle
    c.send(build_request("POST", "/v1/traces", b"", PB))
    st, h, _ = c.read_response()
    assert st == 200 and h.get("connection") != "close", (st, h)
    assert c.closed_by_peer() and c.buf == b"", c.buf
    c.close()


def test_trickled_headers_cut_off():
    g = setup()
    c = Conn(g.port)
    c.send(b"POST /v1/traces HTTP/1.1\r\n")
    # one header line every 100 ms (the client's pace), never finishing, until the gateway answers: its 2 s
    # read_timeout must end it (bounded: the request is abandoned after WAIT s)
    deadline, i = time.time() + WAIT, 0
    while not c.answered():
        assert time.time() < deadline, "trickled headers never cut off"
        try:
            c.send(b"X-Slow-%d: v\r\n" % i)
        except (BrokenPipeError, ConnectionResetError):
            break
        i += 1
        c.s.settimeout(0.1)
        try:
            c._fill()
        except (socket.timeout, EOFError):
            pass
    c.s.settimeout(WAIT)
    st, h, _ = c.read_response()
    assert st == 408, st
    c.close()


def test_max_connections():
    g = setup()
    conns = []
    for _ in range(20):
        c = Conn(g.port)
        c.send(build_request("POST", "/v1/traces", b"", PB))
        assert c.read_response()[0] == 200
        conns.append(c)
    extra = Conn(g.port)
    st, h, body = extra.read_response()
    assert st == 503 and b"too many connections" in body, (st, body)
    extra.close()
    assert g.metric("otlp_gateway_connections_rejected_total") == 1
    for c in conns:
        c.close()
    wait_client_connections(g, 0)
    c = Conn(g.port)  # room again
    c.send(build_request("POST", "/v1/traces", b"", PB))
    assert c.read_response()[0] == 200
    c.close()


def test_http10_and_connection_close():
    g = setup()
    c = Conn(g.port)
    c.send(b"POST /v1/traces HTTP/1.0\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n")
    st, h, _ = c.read_response()
    assert st == 200 and h.get("connection") == "close"
    assert c.closed_by_peer()
    c.close()
    c = Conn(g.port)
    c.send(build_request("POST", "/v1/traces", b"", dict(PB, Connection="close")))
    st, h, _ = c.read_response()
    assert st == 200 and h.get("connection") == "close"
    assert c.closed_by_peer()
    c.close()


def test_garbage_is_400_and_closed():
    g = setup()
    for junk in (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40,  # a TLS ClientHello
                 b"GET / HTTP/9.9\r\n\r\n", b"POST /v1/traces HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
                 b"POST /v1/traces HTTP/1.1\r\nContent-Type: application/x-protobuf\r\n"
                 b"Transfer-Encoding: chunked\r\n\r\nzz\r\n"):
        c = Conn(g.port)
        c.send(junk)
        st, h, _ = c.read_response()
        assert st == 400 and h.get("connection") == "close", (junk, st)
        assert c.closed_by_peer()
        c.close()
    # answered early (415 from the headers), then a framing error in the body: one answer only, then close
    c = Conn(g.port)
    c.send(b"POST /v1/traces HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
    st, h, _ = c.read_response()
    assert st == 415, st
    assert c.closed_by_peer() and c.buf == b"", c.buf
    c.close()
    # the gateway is still fine
    c = Conn(g.port)
    c.send(build_request("POST", "/v1/traces", b"", PB))
    assert c.read_response()[0] == 200
    c.close()


def test_client_disconnect_mid_body_is_harmless():
    g = setup()
    for _ in range(20):
        c = Conn(g.port)
        c.send(b"POST /v1/traces HTTP/1.1\r\nContent-Type: application/x-protobuf\r\nContent-Length: 1000\r\n\r\nabc")
        c.close()
    wait_client_connections(g, 0)  # every cut-short connection is released (max_connections is 20)
    c = Conn(g.port)
    c.send(build_request("POST", "/v1/traces", b"", PB))
    assert c.read_response()[0] == 200
    c.close()
    assert g.p.poll() is None


PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # an empty SETTINGS frame: what HTTP/2 clients send next
H2_ANSWER = ("this port speaks OTLP/HTTP/1.1 (POST /v1/traces, /v1/logs, /v1/metrics); "
             "OTLP/gRPC is served on 127.0.0.1:%d (server.grpc_listen)")  # % the gateway's gRPC port
H2_LOG = r"HTTP/2 client on the HTTP/1.1 port"


def test_http2_preface_gets_400_with_one_clear_line():
    """A gRPC exporter (HTTP/2 with prior knowledge) pointed at the OTLP/HTTP port: a 400 whose google.rpc.Status
    says what this port speaks, then the connection closes; counted like other 400s; one rate-limited warn line
    naming the peer; the gateway stays up and exits 0 on SIGTERM."""
    g = Gateway(gateway_config(), name="h2.yaml")
    peers = []
    t0 = time.time()
    for i, data in enumerate((PREFACE, PREFACE + SETTINGS, PREFACE + SETTINGS + PREFACE)):
        c = Conn(g.port)
        peers.append(c.s.getsockname()[1])
        c.send(data)
        st, h, body = c.read_response()
        assert st == 400 and h.get("connection") == "close", (i, st, h)
        assert h.get("content-type") == "application/x-protobuf", h
        code, msg = parse_status(h["content-type"], body)
        assert code == 3 and msg == H2_ANSWER % g.grpc_port, (code, msg)  # 3: INVALID_ARGUMENT, as for other 400s
        assert c.closed_by_peer() and c.buf == b"", c.buf  # one answer only, whatever followed the preface
        c.close()
    elapsed = time.time() - t0
    g.wait_metric('otlp_gateway_requests_total{protocol="http",signal="none",code="400"}', lambda v: v == 3)
    m = g.wait_line(H2_LOG + r".*peer=127\.0\.0\.1:(\d+)")
    assert int(m.group(1)) == peers[0], (m.group(0), peers)
    assert "answer=\"" + H2_ANSWER % g.grpc_port + "\"" in m.string, m.string
    c = Conn(g.port)  # still serving
    c.send(build_request("POST", "/v1/traces", b"", PB))
    assert c.read_response()[0] == 200
    c.close()
    g.signal(signal.SIGTERM)
    assert g.wait() == 0
    lines = [ln for ln in g.err if re.search(H2_LOG, ln)]
    # At most one line per 10 s per worker (one worker here): three prefaces in a burst give one line.
    assert 1 <= len(lines) <= 1 + int(elapsed // 10), lines
    assert "level=warn" in lines[0], lines[0]


def test_h2c_upgrade_request_is_served_as_http11():
    """curl --http2 on http:// sends an h2c Upgrade: the gateway answers in HTTP/1.1 (declining the upgrade) and
    the connection goes on with HTTP/1.1; the request behind it is served, not answered with llhttp internals."""
    g = setup()
    up = {"Connection": "Upgrade, HTTP2-Settings", "Upgrade": "h2c", "HTTP2-Settings": "AAMAAABkAARAAAAAAAIAAAAA"}
    c = Conn(g.port)
    c.send(build_request("POST", "/v1/traces", b"", dict(PB, **up)))
    st, h, _ = c.read_response()
    assert st == 200 and h.get("connection") != "close", (st, h)
    c.send(build_request("POST", "/v1/logs", b"", PB))
    st, _, body = c.read_response()
    assert st == 200, (st, body)
    # pipelined behind an upgrade request with a body
    c.send(build_request("POST", "/v1/traces", trace_request(2), dict(PB, **up)) +
           build_request("POST", "/v1/metrics", b"", PB))
    got = [c.read_response()[0] for _ in range(2)]
    assert got == [503, 200], got  # 503: the valid spans' one backend is down
    c.close()


run_tests(globals())
