"""OTLP/gRPC ingest on server.grpc_listen, against the real gateway binary, real otlp-sink backends (HTTP/1.1) and
two clients: otlp-load --grpc (an nghttp2 client: N connections x M concurrent calls) for load and status codes,
and raw HTTP/2 frames written by this script for the abuse cases (floods, malformed frames) where a well-behaved
client library cannot be made to misbehave. The OpenTelemetry JS SDK's gRPC exporters and a grpc-js status battery
are in tests/interop.

What is checked: every acknowledged span arrives exactly once and no trace is split over backends (both protocols
side by side); the gRPC status of each refusal (RESOURCE_EXHAUSTED without RetryInfo over max_request_bytes,
UNAVAILABLE with RetryInfo with no backend or over memory_limit, UNAUTHENTICATED without the token); the
protocol="grpc" series; a rapid-reset, PING or SETTINGS flood and a malformed frame close only that connection with
a GOAWAY while other calls keep succeeding; SIGTERM answers the calls in flight and exits 0; a taken gRPC port is a
start-up error; grpc_listen "" turns the listener off.
"""
import os
import socket
import struct
import subprocess
import time

from harness import (TMP, WAIT, BackgroundLoad, Gateway, Pool, Sink, args, fresh, gateway_config, http_request,
                     parse_fields, read_traces, run_load, run_tests, settled_delivery, trace_request, wait_until,
                     write_config)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST, SETTINGS, PING, GOAWAY, WINDOW = 0, 1, 3, 4, 6, 7, 8
END_STREAM, END_HEADERS, ACK = 1, 4, 1
TRACES = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
ENHANCE_YOUR_CALM, PROTOCOL_ERROR, FRAME_SIZE_ERROR, COMPRESSION_ERROR = 0xB, 0x1, 0x6, 0x9


def grpc_url(g):
    return "http://127.0.0.1:%d" % g.grpc_port


def brief(d):
    """delivery() without its per-trace map, for assertion messages."""
    return {k: v for k, v in d.items() if k != "where"}


# ---- raw HTTP/2 --------------------------------------------------------------------------------------------------

def frame(t, flags, sid, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([t, flags]) + struct.pack(">I", sid) + payload


def hpack_literal(fields):
    """A header block of literal fields without indexing, plain strings (no Huffman)."""
    out = b""
    for k, v in fields:
        kb, vb = k.encode(), v.encode()
        assert len(kb) < 127 and len(vb) < 127
        out += b"\x00" + bytes([len(kb)]) + kb + bytes([len(vb)]) + vb
    return out


def call_headers(path=TRACES):
    return hpack_literal([(":method", "POST"), (":scheme", "http"), (":path", path), (":authority", "gw"),
                          ("content-type", "application/grpc"), ("te", "trailers")])


def grpc_message(body):
    return b"\x00" + struct.pack(">I", len(body)) + body


class H2:
    """A raw HTTP/2 client connection: writes frames, reads frames (no HPACK decoding: only frame types, flags,
    stream ids and GOAWAY / RST_STREAM codes are looked at)."""

    def __init__(self, port):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
        self.buf = b""
        self.closed = False
        self.send(PREFACE + frame(SETTINGS, 0, 0))

    def send(self, data):
        try:
            self.s.sendall(data)
            return True
        except (BrokenPipeError, ConnectionResetError):
            return False  # the server closed the connection while we were still flooding: what the test expects

    def frames(self, until, timeout=WAIT):
        """Reads frames until until(frame) is true (returns that frame) or the peer closes (returns None)."""
        deadline = time.time() + timeout
        while True:
            while len(self.buf) >= 9:
                n = int.from_bytes(self.buf[:3], "big")
                if len(self.buf) < 9 + n:
                    break
                f = (self.buf[3], self.buf[4], int.from_bytes(self.buf[5:9], "big") & 0x7FFFFFFF, self.buf[9:9 + n])
                self.buf = self.buf[9 + n:]
                if until(f):
                    return f
            if self.closed:
                return None
            left = deadline - time.time()
            assert left > 0, "no expected frame within %d s" % timeout
            self.s.settimeout(left)
            try:
                chunk = self.s.recv(65536)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                self.closed = True
            self.buf += chunk

    def goaway(self):
        """The GOAWAY the server sends (its error code), then the close; fails when the server sends none."""
        f = self.frames(lambda f: f[0] == GOAWAY)
        assert f is not None, "the connection closed without a GOAWAY"
        code = int.from_bytes(f[3][4:8], "big")
        rest = self.frames(lambda f: False, timeout=WAIT)  # then it closes
        assert rest is None and self.closed
        return code

    def close(self):
        self.s.close()


def expect_goaway(port, payload, codes, what):
    c = H2(port)
    c.send(payload)
    code = c.goaway()
    c.close()
    assert code in codes, "%s: GOAWAY code %#x, expected one of %s" % (what, code, [hex(x) for x in codes])


# ---- tests -------------------------------------------------------------------------------------------------------

def test_grpc_load_every_span_once_traces_whole():
    pool = Pool("grpc-load", 3)
    g = Gateway(gateway_config(pool.endpoints))
    acked = fresh(os.path.join(TMP, "grpc-load.acked.txt"))
    res, out = run_load(grpc_url(g), "--grpc", "--connections", "2", "--streams", "8", "--requests", "400",
                        "--spans", "50", "--traces", "10", "--trace-file", acked)
    assert res["ok"] == 400 and res.get("status_OK") == 400, out
    d = settled_delivery(read_traces(acked, strict=True), pool.files)
    assert d["lost"] == 0 and d["duplicates"] == 0 and d["split"] == 0 and d["unknown_traces"] == 0, brief(d)
    assert d["acked_spans"] == 400 * 50 and min(d["per_sink"]) > 0, brief(d)
    # gzip calls (grpc-encoding gzip, compressed flag 1): decompressed, split, delivered
    res, out = run_load(grpc_url(g), "--grpc", "--gzip", "--connections", "1", "--streams", "4", "--requests", "40",
                        "--spans", "20", "--traces", "5", "--trace-file", acked)
    assert res["ok"] == 40, out
    d = settled_delivery(read_traces(acked, strict=True), pool.files)
    assert d["lost"] == 0 and d["duplicates"] == 0 and d["split"] == 0, brief(d)
    assert g.metric('otlp_gateway_requests_total{protocol="grpc",signal="traces",code="OK"}') == 440
    assert g.metric('otlp_gateway_received_items_total{protocol="grpc",signal="traces"}') == 400 * 50 + 40 * 20
    assert g.metric('otlp_gateway_received_bytes_total{protocol="grpc",signal="traces",encoding="gzip"}') > 0
    assert g.metric('otlp_gateway_requests_total{protocol="http",signal="traces",code="200"}') == 0
    # logs and metrics over gRPC too
    for sig in ("logs", "metrics"):
        res, out = run_load(grpc_url(g), "--grpc", "--signal", sig, "--connections", "1", "--streams", "4",
                            "--requests", "20", "--spans", "10")
        assert res["ok"] == 20, out
        wait_until(lambda: sum(pool.items(sig)), lambda n: n == 200, WAIT, "%s items at the sinks" % sig)
        assert g.metric('otlp_gateway_received_items_total{protocol="grpc",signal="%s"}' % sig) == 200
    assert g.stop() == 0
    pool.stop()


def test_both_protocols_side_by_side():
    pool = Pool("grpc-both", 3)
    g = Gateway(gateway_config(pool.endpoints))
    f_http, f_grpc = (fresh(os.path.join(TMP, "grpc-both.%s.txt" % p)) for p in ("http", "grpc"))
    lh = BackgroundLoad("http://127.0.0.1:%d" % g.port, "--connections", "4", "--requests", "300", "--spans", "40",
                        "--traces", "8", "--seed", "11", "--trace-file", f_http)
    lg = BackgroundLoad(grpc_url(g), "--grpc", "--connections", "2", "--streams", "6", "--requests", "300",
                        "--spans", "40", "--traces", "8", "--seed", "12", "--trace-file", f_grpc)
    rh, rg = lh.result(), lg.result()
    assert rh["ok"] == 300 and rg["ok"] == 300, (rh, rg)
    acked = read_traces(f_http, strict=True) + read_traces(f_grpc, strict=True)
    d = settled_delivery(acked, pool.files)
    assert d["lost"] == 0 and d["duplicates"] == 0 and d["split"] == 0 and d["acked_spans"] == 600 * 40, brief(d)
    assert g.metric('otlp_gateway_requests_total{protocol="http",signal="traces",code="200"}') == 300
    assert g.metric('otlp_gateway_requests_total{protocol="grpc",signal="traces",code="OK"}') == 300
    assert g.stop() == 0
    pool.stop()


def test_refusals_by_grpc_status():
    sink = Sink()
    g = Gateway(gateway_config([sink.endpoint], max_request_bytes="64KiB", tokens=["t0ken"]))
    auth = ("--header", "Authorization: Bearer t0ken")
    res, out = run_load(grpc_url(g), "--grpc", "--connections", "1", "--requests", "5", "--spans", "10")
    assert res.get("status_UNAUTHENTICATED") == 5 and res["ok"] == 0, out
    res, out = run_load(grpc_url(g), "--grpc", "--connections", "1", "--requests", "5", "--spans", "10",
                        "--header", "Authorization: Bearer wrong")
    assert res.get("status_UNAUTHENTICATED") == 5, out
    res, out = run_load(grpc_url(g), "--grpc", "--connections", "1", "--requests", "5", "--spans", "10", *auth)
    assert res["ok"] == 5, out
    # over max_request_bytes (as sent, and after decompression): RESOURCE_EXHAUSTED, no RetryInfo (not retryable)
    res, out = run_load(grpc_url(g), "--grpc", "--connections", "1", "--requests", "3", "--spans", "2000", *auth)
    assert res.get("status_RESOURCE_EXHAUSTED") == 3 and res["retry_info"] == 0, out
    res, out = run_load(grpc_url(g), "--grpc", "--gzip", "--connections", "1", "--requests", "3", "--spans", "2000",
                        *auth)
    assert res.get("status_RESOURCE_EXHAUSTED") == 3 and res["retry_info"] == 0, out
    # the connection survives refusals: a good call on the same connection after a refused one
    res, out = run_load(grpc_url(g), "--grpc", "--connections", "1", "--streams", "2", "--requests", "10",
                        "--spans", "10", *auth)
    assert res["ok"] == 10, out
    assert g.metric('otlp_gateway_requests_total{protocol="grpc",signal="traces",code="UNAUTHENTICATED"}') == 10
    assert g.metric('otlp_gateway_requests_total{protocol="grpc",signal="traces",code="RESOURCE_EXHAUSTED"}') == 6
    # no backend up: UNAVAILABLE with RetryInfo (validated first: an empty request is still OK)
    sink.stop()
    g.wait_metric("otlp_gateway_ring_backends", lambda v: v == 0)
    res, out = run_load(grpc_url(g), "--grpc", "--connections", "1", "--requests", "4", "--spans", "10", *auth)
    assert res.get("status_UNAVAILABLE") == 4 and res["retry_info"] == 4, out
    assert g.stop() == 0


def test_memory_limit_refuses_before_reading_the_message():
    sink = Sink()
    text = gateway_config([sink.endpoint], max_request_bytes="8MiB").replace(
        "  workers: 1\n", "  workers: 1\n  memory_limit: 1MiB\n", 1)
    g = Gateway(text)
    # a ~2.4 MB message: its length prefix alone says it cannot fit; refused UNAVAILABLE + RetryInfo
    res, out = run_load(grpc_url(g), "--grpc", "--connections", "1", "--requests", "3", "--spans", "20000")
    assert res.get("status_UNAVAILABLE") == 3 and res["retry_info"] == 3, out
    assert g.metric("otlp_gateway_memory_bytes") == 0
    res, out = run_load(grpc_url(g), "--grpc", "--connections", "1", "--requests", "5", "--spans", "10")
    assert res["ok"] == 5, out
    assert g.stop() == 0
    sink.stop()


def test_floods_and_malformed_frames_close_only_that_connection():
    pool = Pool("grpc-flood", 2)
    g = Gateway(gateway_config(pool.endpoints))
    acked = fresh(os.path.join(TMP, "grpc-flood.acked.txt"))
    load = BackgroundLoad(grpc_url(g), "--grpc", "--connections", "2", "--streams", "4", "--requests", "3000",
                          "--spans", "10", "--trace-file", acked)
    body = grpc_message(trace_request(3))
    # rapid reset: open and cancel streams far faster than any client completes calls (CVE-2023-44487)
    rr = b"".join(frame(HEADERS, END_HEADERS, sid, call_headers()) + frame(RST, 0, sid, struct.pack(">I", 8))
                  for sid in range(1, 4000, 2))
    expect_goaway(g.grpc_port, rr, (ENHANCE_YOUR_CALM,), "rapid reset")
    expect_goaway(g.grpc_port, b"".join(frame(PING, 0, 0, bytes(8)) for _ in range(20000)), (ENHANCE_YOUR_CALM,),
                  "PING flood")
    expect_goaway(g.grpc_port, b"".join(frame(SETTINGS, 0, 0) for _ in range(20000)), (ENHANCE_YOUR_CALM,),
                  "SETTINGS flood")
    # malformed: a DATA frame on stream 0, an oversized frame, an undecodable HPACK block
    expect_goaway(g.grpc_port, frame(DATA, 0, 0, b"xx"), (PROTOCOL_ERROR,), "DATA on stream 0")
    expect_goaway(g.grpc_port, struct.pack(">I", 1 << 20)[1:] + bytes([DATA, 0]) + struct.pack(">I", 1) + b"x" * 100,
                  (FRAME_SIZE_ERROR, PROTOCOL_ERROR), "frame over SETTINGS_MAX_FRAME_SIZE")
    expect_goaway(g.grpc_port, frame(HEADERS, END_HEADERS | END_STREAM, 1, b"\xff\xff\xff\xff\xff"),
                  (COMPRESSION_ERROR, PROTOCOL_ERROR), "bad HPACK")
    # a well-formed raw call still works on a new connection: HEADERS back on stream 1, ending the stream
    c = H2(g.grpc_port)
    c.send(frame(HEADERS, END_HEADERS, 1, call_headers()) + frame(DATA, END_STREAM, 1, body))
    f = c.frames(lambda f: f[0] == HEADERS and f[2] == 1 and f[1] & END_STREAM)
    assert f is not None, "no answer to a valid call after the floods"
    c.close()
    res = load.result()
    assert res["ok"] == 3000 and res["errors"] == 0, res
    mine = read_traces(acked, strict=True)
    mine[(b"\x01" * 16).hex()] += 3  # the raw call's three spans
    d = settled_delivery(mine, pool.files)
    assert d["lost"] == 0 and d["duplicates"] == 0 and d["split"] == 0, brief(d)
    assert g.stop() == 0
    pool.stop()


def test_200_concurrent_calls_on_one_connection_and_two_workers():
    """SETTINGS_MAX_CONCURRENT_STREAMS is 100: a client with 200 calls to make on one connection keeps 100 in flight
    and sends the rest as streams close (nghttp2's client queues them); every call is answered OK. With two worker
    loops both gRPC listeners (SO_REUSEPORT) serve."""
    pool = Pool("grpc-streams", 2)
    g = Gateway(gateway_config(pool.endpoints).replace("  workers: 1\n", "  workers: 2\n", 1))
    acked = fresh(os.path.join(TMP, "grpc-streams.acked.txt"))
    res, out = run_load(grpc_url(g), "--grpc", "--connections", "1", "--streams", "200", "--requests", "1000",
                        "--spans", "10", "--traces", "2", "--trace-file", acked)
    assert res["ok"] == 1000 and res["errors"] == 0, out
    res, out = run_load(grpc_url(g), "--grpc", "--connections", "8", "--streams", "4", "--requests", "400",
                        "--spans", "10", "--traces", "2", "--trace-file", acked)
    assert res["ok"] == 400 and res["errors"] == 0, out
    d = settled_delivery(read_traces(acked, strict=True), pool.files)
    assert d["lost"] == 0 and d["duplicates"] == 0 and d["split"] == 0, brief(d)
    assert g.metric('otlp_gateway_requests_total{protocol="grpc",signal="traces",code="OK"}') == 1400
    assert g.stop() == 0
    pool.stop()


def test_client_reset_mid_call_keeps_what_was_forwarded():
    """A client that resets its call after sending it (END_STREAM, then RST_STREAM CANCEL while the backend still
    holds the part) and one that resets half-way through its message: the first part is still delivered, the
    second never forwarded, nothing is left in flight, and the connection keeps serving."""
    sink = Sink("--delay", "400")
    g = Gateway(gateway_config([sink.endpoint]))
    c = H2(g.grpc_port)
    body = grpc_message(trace_request(7))
    c.send(frame(HEADERS, END_HEADERS, 1, call_headers()) + frame(DATA, END_STREAM, 1, body)
           + frame(RST, 0, 1, struct.pack(">I", 8)))
    c.send(frame(HEADERS, END_HEADERS, 3, call_headers()) + frame(DATA, 0, 3, body[:9])
           + frame(RST, 0, 3, struct.pack(">I", 8)))
    wait_until(lambda: sink.stats()["traces"]["items"], lambda n: n == 7, WAIT, "the reset call's spans at the sink")
    g.wait_metric('otlp_gateway_requests_total{protocol="grpc",signal="traces",code="CANCELLED"}', lambda v: v == 1)
    c.send(frame(HEADERS, END_HEADERS, 5, call_headers()) + frame(DATA, END_STREAM, 5, body))
    f = c.frames(lambda f: f[0] == HEADERS and f[2] == 5 and f[1] & END_STREAM)
    assert f is not None, "the connection did not answer after the resets"
    c.close()
    assert sink.stats()["traces"]["items"] == 14
    g.wait_metric('otlp_gateway_memory_bytes', lambda v: v == 0)
    assert g.stop() == 0
    sink.stop()


def test_partial_success_reaches_the_grpc_client():
    """A backend's partial_success comes back in the OK reply's ExportTraceServiceResponse (DATA frames carry it
    unencoded: read here without HPACK)."""
    sink = Sink("--partial", "3")
    g = Gateway(gateway_config([sink.endpoint]))
    c = H2(g.grpc_port)
    c.send(frame(HEADERS, END_HEADERS, 1, call_headers()) + frame(DATA, END_STREAM, 1, grpc_message(trace_request(10))))
    data = b""
    while True:
        f = c.frames(lambda f: f[2] == 1 and f[0] in (DATA, HEADERS))
        assert f is not None, "the connection closed before the answer ended"
        if f[0] == DATA:
            data += f[3]
        if f[1] & END_STREAM:
            break
    c.close()
    assert len(data) >= 5 and data[0] == 0 and int.from_bytes(data[1:5], "big") == len(data) - 5, data
    ps = parse_fields(parse_fields(data[5:])[1][0])
    assert ps[1] == [3] and b"otlp-sink" in ps[2][0], ps
    assert g.metric('otlp_gateway_requests_total{protocol="grpc",signal="traces",code="OK"}') == 1
    assert g.stop() == 0
    sink.stop()


def test_grpc_timeout_bounds_receiving_the_message():
    """A call whose grpc-timeout (300 ms) passes before its message is complete is answered DEADLINE_EXCEEDED
    (trailers-only) long before server.read_timeout (60 s); the connection stays usable."""
    g = Gateway(gateway_config(read_timeout="60s"))
    c = H2(g.grpc_port)
    hdrs = call_headers() + hpack_literal([("grpc-timeout", "300m")])
    c.send(frame(HEADERS, END_HEADERS, 1, hdrs) + frame(DATA, 0, 1, b"\x00\x00\x00"))  # 3 of 5 prefix bytes
    f = c.frames(lambda f: f[0] == HEADERS and f[2] == 1 and f[1] & END_STREAM)
    assert f is not None, "no answer before the connection closed"
    g.wait_metric('otlp_gateway_requests_total{protocol="grpc",signal="traces",code="DEADLINE_EXCEEDED"}',
                  lambda v: v == 1)
    body = grpc_message(trace_request(2))
    c.send(frame(HEADERS, END_HEADERS, 3, call_headers()) + frame(DATA, END_STREAM, 3, body))
    f = c.frames(lambda f: f[0] == HEADERS and f[2] == 3 and f[1] & END_STREAM)
    assert f is not None, "the connection did not answer a second call"
    c.close()
    assert g.stop() == 0


def test_http1_on_the_grpc_port_gets_a_clear_400():
    g = Gateway(gateway_config())
    s = socket.create_connection(("127.0.0.1", g.grpc_port), timeout=WAIT)
    s.sendall(b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
    data = b""
    while True:
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
    s.close()
    assert data.startswith(b"HTTP/1.1 400 "), data[:200]
    assert b"HTTP/2" in data, data
    assert g.stop() == 0


def test_sigterm_answers_calls_in_flight():
    pool = Pool("grpc-term", 2, extra=("--delay", "1500"))
    g = Gateway(gateway_config(pool.endpoints))
    acked = fresh(os.path.join(TMP, "grpc-term.acked.txt"))
    # 20 calls, all in flight at once (2 connections x 10 streams), each held 1.5 s by its sinks
    load = BackgroundLoad(grpc_url(g), "--grpc", "--connections", "2", "--streams", "10", "--requests", "20",
                          "--spans", "10", "--traces", "5", "--trace-file", acked)
    wait_until(lambda: sum(s.stats()["in_flight"] for s in pool.sinks), lambda n: n >= 2, WAIT,
               "calls in flight at the sinks")
    g.signal(15)
    g.wait_line(r"msg=\"shutting down\"")
    res = load.result()
    assert res["ok"] == 20 and res["errors"] == 0, res
    assert g.wait() == 0
    d = settled_delivery(read_traces(acked, strict=True), pool.files)
    assert d["lost"] == 0 and d["split"] == 0, brief(d)
    pool.stop()


def test_grpc_port_taken_is_a_startup_error():
    g = Gateway(gateway_config())
    text = gateway_config().replace('server:\n', 'server:\n  grpc_listen: "127.0.0.1:%d"\n' % g.grpc_port, 1)
    path = write_config(text, "grpc-taken.yaml")
    r = subprocess.run([args().gateway, "--config", path], capture_output=True, text=True, timeout=WAIT)
    assert r.returncode == 1, (r.returncode, r.stderr[-500:])
    assert "server.grpc_listen: cannot listen on 127.0.0.1:%d" % g.grpc_port in r.stderr, r.stderr[-500:]
    assert g.stop() == 0


def test_grpc_listen_empty_is_off():
    g = Gateway(gateway_config().replace('server:\n', 'server:\n  grpc_listen: ""\n', 1))
    assert g.grpc_port is None and not g.lines(r"server=grpc")
    assert g.metric('otlp_gateway_connections{side="client",protocol="grpc"}') == 0
    st, h, body = http_request(g.port, "POST", "/v1/traces", b"", {"Content-Type": "application/x-protobuf"})
    assert st == 200
    assert g.stop() == 0


if __name__ == "__main__":
    run_tests(globals())
