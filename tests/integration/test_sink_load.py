"""The bench tools against each other and against the gateway: otlp-load -> otlp-sink must agree on every
request, span and trace (the sink's trace file is what the routing tests rely on), and the gateway must
never acknowledge what it could not deliver."""
import os

from harness import (TMP, WAIT, Conn, Gateway, Sink, build_request, fresh, gateway_config, http_request, read_traces,
                     run_load, run_tests, trace_request, wait_until)


def check_load_into_sink(name, *load_args, requests=400, spans=50, traces=10, grpc=False):
    """otlp-load -> one otlp-sink (OTLP/HTTP, or OTLP/gRPC on the sink's --grpc port with grpc=True): every
    request answered 200 / OK, and the sink's trace file equal to the load's."""
    sink_file = fresh(os.path.join(TMP, name + ".sink.txt"))
    load_file = fresh(os.path.join(TMP, name + ".load.txt"))
    if grpc:
        s = Sink("--grpc", "--trace-file", sink_file)
        port = int(s.wait_line(r"otlp-sink grpc listening on 127\.0\.0\.1:(\d+)", stream="out").group(1))
        conns = ("--grpc", "--connections", "2", "--streams", "4")
    else:
        s = Sink("--trace-file", sink_file)
        port, conns = s.port, ("--connections", "8")
    res, out = run_load("http://127.0.0.1:%d" % port, "--requests", str(requests), *conns,
                        "--spans", str(spans), "--traces", str(traces), "--trace-file", load_file, *load_args)
    assert res["requests"] == requests and res["ok"] == requests, out
    assert res["status_OK" if grpc else "status_200"] == requests and res["errors"] == 0, out
    assert not grpc or res["retry_info"] == 0, out
    assert res["spans_acked"] == requests * spans, out
    st = s.stats()
    assert st["traces"]["requests"] == requests, st
    assert not grpc or st["grpc_requests"] == requests, st
    assert st["traces"]["items"] == requests * spans, st
    assert s.stop() == 0
    sent, got = read_traces(load_file, strict=True), read_traces(sink_file, strict=True)
    assert sum(got.values()) == requests * spans
    assert got == sent, "sink and load generator disagree on traces"
    assert len(got) == res["traces_acked"] == requests * traces, (len(got), res["traces_acked"])


def test_load_to_sink_protobuf():
    check_load_into_sink("pb")


def test_load_to_sink_gzip():
    check_load_into_sink("gz", "--gzip")


def test_load_to_sink_duration_and_rate():
    """--rate paces sends by absolute slots and --duration refuses a slot at or past its end: 1 s at 200/s can
    never issue more than 200 requests, however fast or slow the machine."""
    s = Sink()
    res, out = run_load("http://127.0.0.1:%d" % s.port, "--duration", "1s", "--rate", "200", "--connections", "4",
                        "--spans", "10", "--traces", "2")
    assert res["ok"] == res["requests"] > 0, out
    assert res["requests"] + res["aborted"] <= 200, out
    assert s.stats()["traces"]["items"] == res["spans_acked"]


def test_load_logs_and_metrics_to_sink():
    s = Sink()
    for sig in ("logs", "metrics"):
        res, out = run_load("http://127.0.0.1:%d" % s.port, "--signal", sig, "--requests", "50", "--spans", "20")
        assert res["ok"] == 50, out
    st = s.stats()
    assert st["logs"]["requests"] == 50 and st["logs"]["items"] == 50 * 20, st
    assert st["metrics"]["requests"] == 50 and st["metrics"]["items"] > 0, st


def test_sink_configured_status_and_delay():
    s = Sink("--status", "503", "--retry-after", "7", "--delay", "2000")
    st, h, _ = http_request(s.port, "POST", "/v1/traces", trace_request(), {"Content-Type": "application/x-protobuf"})
    assert st == 503 and h.get("retry-after") == "7", (st, h)
    # the delay: the sink has counted the request (it answers 503: "rejected") before the client has an answer
    c = Conn(s.port)
    c.send(build_request("POST", "/v1/traces", trace_request(), {"Content-Type": "application/x-protobuf"}))
    wait_until(lambda: s.stats()["rejected"], lambda v: v == 2, WAIT, "requests the sink answered 503")
    assert not c.answered(), "answered without the delay"
    assert c.read_response()[0] == 503
    c.close()
    res, out = run_load("http://127.0.0.1:%d" % s.port, "--requests", "8", "--connections", "8")
    assert res["status_503"] == 8 and res["ok"] == 0 and res["spans_acked"] == 0, out


def test_sink_health_and_bad_input():
    s = Sink()
    assert http_request(s.port, "GET", "/")[0] == 200
    st, _, _ = http_request(s.port, "POST", "/v1/traces", b"\x0b", {"Content-Type": "application/x-protobuf"})
    assert st == 400
    assert s.stats()["invalid"] == 1


def test_gateway_acknowledges_nothing_when_no_backend_is_up():
    g = Gateway(gateway_config())  # its one backend refuses connections; health checks took it out
    res, out = run_load("http://127.0.0.1:%d" % g.port, "--requests", "200", "--connections", "8", "--spans", "20")
    assert res["status_503"] == 200 and res["ok"] == 0 and res["spans_acked"] == 0, out
    assert g.metric('otlp_gateway_requests_total{protocol="http",signal="traces",code="503"}') == 200
    assert g.metric('otlp_gateway_received_items_total{protocol="http",signal="traces"}') == 200 * 20
    assert g.stop() == 0


if __name__ == "__main__":  # test_grpc_tools imports check_load_into_sink
    run_tests(globals())
