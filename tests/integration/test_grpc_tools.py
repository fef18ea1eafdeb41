"""The bench tools over OTLP/gRPC: otlp-load --grpc -> otlp-sink --grpc must agree on every call, span and trace
(the same check test_sink_load makes for HTTP), the sink's fault options must come out as the gRPC statuses its
--help promises (and otlp-load must count them by name, RetryInfo included), and otlp-load --grpc through the
gateway's gRPC listener must deliver exactly what it was acknowledged to the HTTP sinks behind it."""
import os

from harness import (TMP, WAIT, Gateway, Pool, Sink, fresh, gateway_config, read_traces, run_load, run_tests,
                     settled_delivery, wait_until)
from test_sink_load import check_load_into_sink  # the same agreement check, over gRPC


def grpc_sink(*extra):
    """A sink serving gRPC beside HTTP; returns (sink, grpc port)."""
    s = Sink("--grpc", *extra)
    port = int(s.wait_line(r"otlp-sink grpc listening on 127\.0\.0\.1:(\d+)", stream="out").group(1))
    return s, port


def url(port):
    return "http://127.0.0.1:%d" % port


def test_grpc_load_to_sink():
    check_load_into_sink("grpc-pb", grpc=True)


def test_grpc_load_to_sink_gzip():
    check_load_into_sink("grpc-gz", "--gzip", grpc=True)


def test_grpc_load_logs_and_metrics():
    s, gport = grpc_sink()
    for sig in ("logs", "metrics"):
        res, out = run_load(url(gport), "--grpc", "--signal", sig, "--requests", "50", "--spans", "20")
        assert res["ok"] == res["status_OK"] == 50, out
    st = s.stats()
    assert st["logs"]["requests"] == 50 and st["logs"]["items"] == 50 * 20, st
    assert st["metrics"]["requests"] == 50 and st["metrics"]["items"] > 0, st
    assert st["grpc_requests"] == 100, st


def test_grpc_sink_fault_statuses():
    """--status / --retry-after / control status map to gRPC codes; UNAVAILABLE carries RetryInfo."""
    s, gport = grpc_sink("--status", "503", "--retry-after", "4")
    res, out = run_load(url(gport), "--grpc", "--requests", "10", "--connections", "2", "--streams", "2")
    assert res["status_UNAVAILABLE"] == 10 and res["retry_info"] == 10 and res["ok"] == 0, out
    assert res["spans_acked"] == 0 and res["errors"] == 0, out
    for status, code in ((400, "INVALID_ARGUMENT"), (401, "UNAUTHENTICATED"), (413, "RESOURCE_EXHAUSTED"),
                         (500, "INTERNAL")):
        s.control(status=status)
        res, out = run_load(url(gport), "--grpc", "--requests", "6")
        assert res.get("status_" + code) == 6 and res["ok"] == 0 and res["retry_info"] == 0, (status, out)
    st = s.stats()
    assert st["rejected"] == 10 + 4 * 6, st
    assert st["traces"]["requests"] == 0, st


def test_grpc_sink_partial_and_required_metadata():
    s, gport = grpc_sink("--partial", "7", "--require-header", "Authorization: Bearer tok")
    res, out = run_load(url(gport), "--grpc", "--requests", "5")
    assert res["status_UNAUTHENTICATED"] == 5 and res["ok"] == 0, out
    res, out = run_load(url(gport), "--grpc", "--requests", "5", "--spans", "20", "--header",
                        "Authorization: Bearer tok")
    assert res["status_OK"] == 5, out  # a partial_success is still OK
    st = s.stats()
    assert st["partial_rejected"] == 5 * 7 and st["traces"]["items"] == 5 * 20, st


def test_grpc_sink_hang_times_out_and_releases():
    """hang=1 holds gRPC calls unanswered: otlp-load's --timeout resets them (counted as timeouts); the sink's
    sweep then answers the held calls whose client is gone."""
    s, gport = grpc_sink()
    s.control(hang=1)
    res, out = run_load(url(gport), "--grpc", "--requests", "3", "--connections", "1", "--streams", "3",
                        "--timeout", "1s")
    assert res["errors_timeout"] == 3 and res["ok"] == 0, out
    wait_until(lambda: s.control()["held"], lambda v: v == 0, WAIT, "held calls released after the client reset")
    assert s.control()["held_total"] == 3
    s.control(hang=0)
    res, out = run_load(url(gport), "--grpc", "--requests", "3")
    assert res["ok"] == 3, out


def test_grpc_load_through_gateway():
    """otlp-load --grpc into the gateway's gRPC listener, trace-ID routing to three HTTP sinks: every
    acknowledged span arrives, each trace whole on one sink."""
    pool = Pool("grpc-gw")
    g = Gateway(gateway_config(backends=pool.endpoints))
    assert g.grpc_port, "the gateway did not report a gRPC listener"
    load_file = fresh(os.path.join(TMP, "grpc-gw.load.txt"))
    res, out = run_load(url(g.grpc_port), "--grpc", "--requests", "300", "--connections", "2", "--streams", "4",
                        "--spans", "30", "--traces", "6", "--trace-file", load_file)
    assert res["ok"] == res["status_OK"] == 300 and res["errors"] == 0, out
    acked = read_traces(load_file, strict=True)
    d = settled_delivery(acked, pool.files)
    assert d["acked_spans"] == d["delivered_spans"] == 300 * 30, d
    assert d["lost"] == d["duplicates"] == d["unknown_traces"] == d["split"] == 0, d
    assert sum(1 for n in d["per_sink"] if n > 0) == 3, d["per_sink"]  # 1800 random traces reach every sink
    assert g.stop() == 0


if __name__ == "__main__":
    run_tests(globals())
