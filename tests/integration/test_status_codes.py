"""Every status code of DESIGN.md's table, from the real gateway binary, with google.rpc.Status bodies in
the request's encoding (protobuf or JSON), and the /metrics counters that follow from them."""
from harness import (Conn, Gateway, build_request, gateway_config, gz, http_request, parse_status,
                     run_tests, trace_request)

PB = {"Content-Type": "application/x-protobuf"}
JS = {"Content-Type": "application/json"}
gw = None


def setup():
    """The gateway most tests share (the script's: stopped, and its exit code checked, after the last test)."""
    global gw
    if gw is None:
        gw = Gateway(gateway_config(max_request_bytes="64KiB"), shared=True)
    return gw


def expect(status, headers, body, want_status, want_code, want_in_msg, ctype="application/x-protobuf"):
    assert status == want_status, (status, body)
    assert headers.get("content-type", "").startswith(ctype), headers
    code, msg = parse_status(headers["content-type"], body)
    assert code == want_code, (code, msg)
    assert want_in_msg in msg, msg


def test_200_empty_request_protobuf():
    g = setup()
    st, h, body = http_request(g.port, "POST", "/v1/traces", b"", PB)
    assert st == 200 and body == b"" and h["content-type"] == "application/x-protobuf", (st, h, body)
    # a request with an empty resource list in every signal
    for path in ("/v1/logs", "/v1/metrics"):
        st, h, body = http_request(g.port, "POST", path, b"", PB)
        assert st == 200 and body == b"", (path, st)


def test_503_no_backend_up():
    g = setup()  # its only backend, 127.0.0.1:1, refuses connections: health checks took it out of the ring
    st, h, body = http_request(g.port, "POST", "/v1/traces", trace_request(5, 2), PB)
    expect(st, h, body, 503, 14, "no backends available")
    assert h.get("retry-after") == "5", h


def test_503_gzip_request():
    g = setup()
    st, h, body = http_request(g.port, "POST", "/v1/traces", gz(trace_request(50, 5)),
                               dict(PB, **{"Content-Encoding": "gzip"}))
    expect(st, h, body, 503, 14, "no backends available")


def test_400_bad_protobuf():
    g = setup()
    bad = trace_request(3)[:-4]  # truncated inside a span
    st, h, body = http_request(g.port, "POST", "/v1/traces", bad, PB)
    expect(st, h, body, 400, 3, "ExportTraceServiceRequest.resource_spans[0]")
    assert "at byte" in parse_status(h["content-type"], body)[1]
    group = bytes([0x0B])  # field 1, wire type 3 (start group): invalid in OTLP
    st, h, body = http_request(g.port, "POST", "/v1/logs", group, PB)
    expect(st, h, body, 400, 3, "ExportLogsServiceRequest")
    assert "wire type 3 (group)" in parse_status(h["content-type"], body)[1]


def test_400_bad_gzip():
    g = setup()
    st, h, body = http_request(g.port, "POST", "/v1/traces", b"this is not gzip data at all",
                               dict(PB, **{"Content-Encoding": "gzip"}))
    expect(st, h, body, 400, 3, "not valid gzip")
    st, h, body = http_request(g.port, "POST", "/v1/traces", b"not gzip either, but json-typed",
                               dict(JS, **{"Content-Encoding": "gzip"}))
    expect(st, h, body, 400, 3, "not valid gzip", ctype="application/json")


def test_401_auth():
    g = Gateway(gateway_config(tokens=["s3cret", "other"]), name="auth.yaml")
    try:
        st, h, body = http_request(g.port, "POST", "/v1/traces", trace_request(), PB)
        expect(st, h, body, 401, 16, "bearer token")
        assert h.get("www-authenticate") == "Bearer"
        st, h, body = http_request(g.port, "POST", "/v1/traces", trace_request(),
                                   dict(JS, Authorization="Bearer wrong"))
        expect(st, h, body, 401, 16, "bearer token", ctype="application/json")
        st, h, body = http_request(g.port, "POST", "/v1/traces", trace_request(),
                                   dict(PB, Authorization="Bearer s3cretX"))
        assert st == 401
        for tok in ("s3cret", "other"):
            st, h, body = http_request(g.port, "POST", "/v1/traces", trace_request(),
                                       dict(PB, Authorization="Bearer " + tok))
            assert st == 503, st  # authenticated, then the backend is down
    finally:
        assert g.stop() == 0


def test_404_unknown_path():
    g = setup()
    for path in ("/", "/v1/trace", "/v2/traces", "/v1/traces/extra"):
        st, h, body = http_request(g.port, "POST", path, trace_request(), PB)
        expect(st, h, body, 404, 5, "unknown path")
    st, h, body = http_request(g.port, "POST", "/nope", b"{}", JS)
    expect(st, h, body, 404, 5, "/v1/traces", ctype="application/json")


def test_405_method():
    g = setup()
    st, h, body = http_request(g.port, "GET", "/v1/traces", None, {})
    expect(st, h, body, 405, 12, "POST")
    assert h.get("allow") == "POST", h
    st, h, body = http_request(g.port, "PUT", "/v1/metrics", b"x", JS)
    expect(st, h, body, 405, 12, "POST", ctype="application/json")


def test_411_no_length():
    g = setup()
    c = Conn(g.port)
    c.send(build_request("POST", "/v1/traces", None, PB))  # neither Content-Length nor chunked
    st, h, body = c.read_response()
    expect(st, h, body, 411, 3, "Content-Length")
    c.close()


def test_413_body_too_large():
    g = setup()
    big = b"\x00" * (80 * 1024)  # 80 KiB > 64 KiB: refused from Content-Length, before the body
    c = Conn(g.port)
    c.send(build_request("POST", "/v1/traces", big, PB))
    st, h, body = c.read_response()
    assert h.get("connection") == "close", h
    expect(st, h, body, 413, 8, "too large")
    c.close()
    c = Conn(g.port)
    c.send(build_request("POST", "/v1/traces", big, {"Content-Type": "application/json"}))
    st, h, body = c.read_response()
    expect(st, h, body, 413, 8, "too large", ctype="application/json")
    c.close()


def test_413_chunked_too_large():
    g = setup()
    c = Conn(g.port)
    c.send(build_request("POST", "/v1/traces", b"\x00" * (70 * 1024), PB, chunked=True))
    st, h, body = c.read_response()
    expect(st, h, body, 413, 8, "too large")
    c.close()


def test_413_gzip_bomb():
    g = setup()
    bomb = gz(b"\x00" * (8 << 20))  # 8 MiB of zeros, ~8 KiB compressed, limit 64 KiB decompressed
    assert len(bomb) < 64 * 1024
    st, h, body = http_request(g.port, "POST", "/v1/traces", bomb, dict(PB, **{"Content-Encoding": "gzip"}))
    expect(st, h, body, 413, 8, "max_request_bytes")


def test_415_content_type_and_encoding():
    g = setup()
    st, h, body = http_request(g.port, "POST", "/v1/traces", b"x", {"Content-Type": "text/plain"})
    expect(st, h, body, 415, 3, "Content-Type")
    st, h, body = http_request(g.port, "POST", "/v1/traces", b"x", {})
    expect(st, h, body, 415, 3, "Content-Type")
    st, h, body = http_request(g.port, "POST", "/v1/traces", b"x", dict(PB, **{"Content-Encoding": "br"}))
    expect(st, h, body, 415, 3, "Content-Encoding")


def test_json_200_and_400_with_field_path():
    g = setup()
    for path in ("/v1/traces", "/v1/logs", "/v1/metrics"):  # empty OTLP/JSON requests
        st, h, body = http_request(g.port, "POST", path, b"{}", JS)
        assert st == 200 and h["content-type"] == "application/json" and body == b"{}", (path, st, h, body)
    st, h, body = http_request(g.port, "POST", "/v1/traces", b'{"resourceSpans": [', JS)
    expect(st, h, body, 400, 3, "invalid JSON", ctype="application/json")
    bad_id = b'{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"0102","spanId":"0102030405060708"}]}]}]}'
    st, h, body = http_request(g.port, "POST", "/v1/traces", bad_id, JS)
    expect(st, h, body, 400, 3, "resourceSpans[0].scopeSpans[0].spans[0].traceId", ctype="application/json")
    st, h, body = http_request(g.port, "POST", "/v1/logs", gz(b'{"resourceLogs": 5}'),
                               dict(JS, **{"Content-Encoding": "gzip"}))
    expect(st, h, body, 400, 3, "resourceLogs", ctype="application/json")
    # valid, with spans: its one backend is down, so 503 (it was parsed and counted first)
    ok = b'{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"0102030405060708090a0b0c0d0e0f10",' \
         b'"spanId":"0102030405060708","name":"x"}]}]}]}'
    before = g.metric('otlp_gateway_received_items_total{protocol="http",signal="traces"}')
    st, h, body = http_request(g.port, "POST", "/v1/traces", ok, JS)
    expect(st, h, body, 503, 14, "no backends available", ctype="application/json")
    assert g.metric('otlp_gateway_received_items_total{protocol="http",signal="traces"}') == before + 1


def test_431_header_too_large():
    g = setup()
    c = Conn(g.port)
    c.send(build_request("POST", "/v1/traces", b"", dict(PB, **{"X-Big": "a" * 20000})))
    st, h, body = c.read_response()
    expect(st, h, body, 431, 3, "header")
    c.close()


def test_408_read_timeout():
    g = Gateway(gateway_config(read_timeout="1s"), name="timeout.yaml")
    try:
        c = Conn(g.port)
        c.send(b"POST /v1/traces HTTP/1.1\r\nContent-Type: application/x-protobuf\r\nContent-Length: 100\r\n\r\nab")
        st, h, body = c.read_response()  # the body never completes: the gateway's read_timeout answers
        assert h.get("connection") == "close", h
        expect(st, h, body, 408, 4, "read_timeout")
        assert c.closed_by_peer()
    finally:
        assert g.stop() == 0


def test_400_bad_framing():
    g = setup()
    c = Conn(g.port)
    c.send(b"POST /v1/traces HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 1x\r\n\r\n")
    st, h, body = c.read_response()
    expect(st, h, body, 400, 3, "malformed HTTP request", ctype="application/json")
    c.close()
    # (not in /metrics before the first such answer)
    before = g.metric_or_none('otlp_gateway_requests_total{protocol="http",signal="none",code="400"}') or 0
    c = Conn(g.port)
    c.send(b"NOT HTTP AT ALL\r\n\r\n")
    st, h, body = c.read_response()
    expect(st, h, body, 400, 3, "malformed HTTP request")
    c.close()
    assert g.metric('otlp_gateway_requests_total{protocol="http",signal="none",code="400"}') == before + 1


def test_telemetry_endpoints_and_counters():
    g = setup()
    st, _, body = http_request(g.telemetry_port, "GET", "/healthz")
    assert st == 200 and body == b"ok\n"
    st, _, body = http_request(g.telemetry_port, "GET", "/readyz")
    assert st == 503 and b"no backend is up" in body, (st, body)  # its one backend is down
    st, _, _ = http_request(g.telemetry_port, "GET", "/nope")
    assert st == 404
    # (not in /metrics before the first 503, e.g. with ONLY=)
    before = g.metric_or_none('otlp_gateway_requests_total{protocol="http",signal="traces",code="503"}') or 0
    for _ in range(3):
        http_request(g.port, "POST", "/v1/traces", trace_request(7, 2), PB)
    assert g.metric('otlp_gateway_requests_total{protocol="http",signal="traces",code="503"}') == before + 3
    text = g.metrics()
    for name in ("otlp_gateway_requests_total", "otlp_gateway_received_bytes_total",
                 "otlp_gateway_request_duration_seconds", "otlp_gateway_connections", "process_cpu_seconds_total",
                 "process_resident_memory_bytes", "process_open_fds", "otlp_gateway_build_info"):
        assert "# TYPE %s " % name in text, name


def test_sigterm_exits_zero():
    g = setup()
    assert g.stop() == 0
    assert any("msg=stopped" in ln for ln in g.err), g.err[-5:]


run_tests(globals())
