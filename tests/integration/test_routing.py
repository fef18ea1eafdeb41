"""Trace-ID routing end to end: the real gateway in front of three real otlp-sink processes. otlp-load
records every trace it got a 2xx for; each sink records every trace it received. Every acknowledged span
must arrive exactly once, every trace on exactly one sink, and the shares must be about equal."""
import collections
import contextlib
import os
import re

from harness import (TMP, Gateway, Pool, Sink, delivery, fresh, gateway_config, http_request, parse_fields, read_traces,
                     run_load, run_tests, trace_request)

PB = {"Content-Type": "application/x-protobuf"}


def check_delivery(acked, per_sink, expect_spans=None, share_tolerance=0.10):
    """Every acknowledged span arrived exactly once; every trace on one sink; shares about equal."""
    d = delivery(acked, per_sink)
    assert not d["split"], "%d traces split across sinks" % d["split"]
    assert not d["lost"], "%d acknowledged spans missing" % d["lost"]
    assert not d["duplicates"] and not d["unknown_traces"], "%d spans more than acknowledged (duplicates), %d " \
        "traces never acknowledged" % (d["duplicates"], d["unknown_traces"])
    spans = d["per_sink"]
    if expect_spans is not None:
        assert sum(spans) == expect_spans, (spans, expect_spans)
    mean = sum(spans) / len(spans)
    for s in spans:
        assert abs(s - mean) <= share_tolerance * mean, ("uneven shares", spans)
    return spans


@contextlib.contextmanager
def routed(name, extra=""):
    """A gateway in front of a fresh pool of three recording sinks (the harness stops them when the test ends
    and checks the gateway exits 0)."""
    pool = Pool(name)
    g = Gateway(gateway_config(backends=pool.endpoints, extra=extra), name=name + ".yaml")
    yield pool, g


def load_and_check(pool, g, name, requests, spans, *load_args, share_tolerance=0.10):
    """Sends requests x spans through g and checks exactly-once, whole-trace delivery; returns the RESULT
    dict, the acknowledged traces and the spans per sink."""
    acked_file = fresh(os.path.join(TMP, name + ".acked.txt"))
    res, out = run_load("http://127.0.0.1:%d" % g.port, "--requests", str(requests), "--spans", str(spans),
                        "--trace-file", acked_file, *load_args)
    assert res["ok"] == requests and res["spans_acked"] == requests * spans, out
    acked = read_traces(acked_file, strict=True)
    per_sink = check_delivery(acked, pool.traces(), expect_spans=requests * spans, share_tolerance=share_tolerance)
    return res, acked, per_sink


def test_100k_spans_10k_traces_three_sinks():
    with routed("plain") as (pool, g):
        _, acked, spans = load_and_check(pool, g, "plain", 1000, 100, "--traces", "10", "--connections", "16")
        assert len(acked) == 10000
        print("    spans per sink: %s" % spans)
        assert g.metric('otlp_gateway_received_items_total{protocol="http",signal="traces"}') == 100000
        delivered = sum(g.metric('otlp_gateway_backend_items_total{backend="%s",signal="traces"}' % e)
                        for e in pool.endpoints)
        assert delivered == 100000, delivered
        assert http_request(g.telemetry_port, "GET", "/readyz")[0] == 200


def test_gzip_requests():
    with routed("gzip") as (pool, g):
        load_and_check(pool, g, "gzip", 1000, 100, "--traces", "10", "--connections", "16", "--gzip",
                       "--gzip-level", "1")


def test_backend_compression_gzip_for_reassembled_parts():
    with routed("bgz", extra="  compression: gzip\n") as (pool, g):
        res, _, _ = load_and_check(pool, g, "bgz", 300, 100, "--traces", "10", share_tolerance=0.15)
        wire = sum(s.stats()["traces"]["bytes"] for s in pool.sinks)
        assert wire < res["bytes"] / 2, (wire, res["bytes"])  # parts arrived gzip-compressed


def test_json_routes_like_protobuf():
    """OTLP/JSON (plain and gzip) is transcoded and routed exactly like the same requests in protobuf: equal
    seeds give equal trace IDs, so through one gateway each trace must stay on one sink, with the spans of all
    three encodings."""
    with routed("json") as (pool, g):
        acked = collections.Counter()
        for name, extra in (("pbref", ()), ("json", ("--json",)), ("jsongz", ("--json", "--gzip"))):
            f = os.path.join(TMP, name + ".acked.txt")
            res, out = run_load("http://127.0.0.1:%d" % g.port, "--requests", "300", "--spans", "100", "--traces",
                                "10", "--seed", "42", "--trace-file", f, *extra)
            assert res["ok"] == 300 and res["spans_acked"] == 30000, out
            acked.update(read_traces(f))
        assert len(acked) == 3000 and set(acked.values()) == {30}, "the three loads should share trace IDs"
        per_sink = check_delivery(acked, pool.traces(), expect_spans=90000)
        print("    spans per sink (protobuf + JSON + gzip JSON): %s" % per_sink)
        for enc in ("identity", "gzip"):
            assert g.metric('otlp_gateway_received_bytes_total{protocol="http",signal="traces",encoding="%s"}' % enc) > 0


def test_single_trace_requests_pass_through_gzip():
    """100 spans of one trace per request: one owner, so the body is forwarded as is (still gzip) when it leaves
    alone: one connection, one request in flight, so nothing coalesces (backends.batch)."""
    with routed("pass") as (pool, g):
        load_and_check(pool, g, "pass", 600, 100, "--traces", "1", "--resources", "1", "--gzip", "--gzip-level", "1",
                       "--connections", "1", share_tolerance=0.25)
        assert sum(g.metric('otlp_gateway_backend_requests_total{backend="%s",outcome="success"}' % e)
                   for e in pool.endpoints) == 600
        # each sink saw gzip bodies: its wire bytes are well below 100 spans of ~390 bytes per request
        for s in pool.sinks:
            st = s.stats()["traces"]
            assert st["requests"] > 0 and st["bytes"] / st["requests"] < 20000, st


def test_two_gateways_route_identically():
    pool = Pool("twin")
    ga = Gateway(gateway_config(backends=pool.endpoints), name="a.yaml")
    gb = Gateway(gateway_config(backends=list(reversed(pool.endpoints))), name="b.yaml")  # other config order
    for g in (ga, gb):  # the same seed: the same trace IDs through both gateways
        res, out = run_load("http://127.0.0.1:%d" % g.port, "--requests", "300", "--spans", "50", "--traces", "10",
                            "--seed", "42")
        assert res["ok"] == 300, out
    per_sink = pool.traces()
    owners = collections.defaultdict(set)
    for i, c in enumerate(per_sink):
        for t in c:
            owners[t].add(i)
    assert len(owners) == 3000
    assert all(len(o) == 1 for o in owners.values()), "a trace went to different sinks via the two gateways"
    assert all(n == 10 for c in per_sink for n in c.values())  # 5 spans per trace, twice


def test_logs_and_metrics_are_routed():
    pool = Pool("signals")
    # backends by name: the pool resolves "localhost" itself
    g = Gateway(gateway_config(backends=[e.replace("127.0.0.1", "localhost") for e in pool.endpoints]))
    for sig in ("logs", "metrics"):
        res, out = run_load("http://127.0.0.1:%d" % g.port, "--signal", sig, "--requests", "100", "--spans", "20")
        assert res["ok"] == 100, out
    stats = [s.stats() for s in pool.sinks]
    assert sum(st["logs"]["items"] for st in stats) == 100 * 20
    # backend requests may carry several parts (backends.batch): count what arrived, not requests
    assert sum(st["metrics"]["requests"] for st in stats) > 0
    assert sum(st["metrics"]["items"] for st in stats) == g.metric(
        'otlp_gateway_received_items_total{protocol="http",signal="metrics"}') > 0


def test_metrics_routing_modes_count_data_points():
    """routing.metrics: service | resource | metric. Whatever the unit routed, every data point arrives once,
    and the gateway's item counters count data points."""
    for mode in ("service", "resource", "metric"):
        pool = Pool("metrics-" + mode)
        cfg = gateway_config(backends=pool.endpoints).replace("backends:\n", "routing:\n  metrics: %s\nbackends:\n" % mode)
        g = Gateway(cfg, name="metrics-%s.yaml" % mode)
        res, out = run_load("http://127.0.0.1:%d" % g.port, "--signal", "metrics", "--requests", "200", "--spans",
                            "30", "--resources", "3", "--connections", "4")
        assert res["ok"] == 200, out
        got = [s.stats()["metrics"]["items"] for s in pool.sinks]
        print("    routing.metrics=%s: data points per sink %s" % (mode, got))
        assert sum(got) == 200 * 30, (mode, got)
        assert g.metric('otlp_gateway_received_items_total{protocol="http",signal="metrics"}') == 200 * 30
        assert sum(g.metric('otlp_gateway_backend_items_total{backend="%s",signal="metrics"}' % e)
                   for e in pool.endpoints) == 200 * 30
        if mode != "service":  # random service.instance.id / many metric names: spread over the pool
            assert sum(1 for n in got if n) >= 2, (mode, got)
        assert g.stop() == 0
        pool.stop()


def test_malformed_protobuf_names_the_offset():
    pool = Pool("bad", 1)
    g = Gateway(gateway_config(backends=pool.endpoints))
    good = trace_request(3, 1)
    st, h, body = http_request(g.port, "POST", "/v1/traces", good[:-3], PB)
    assert st == 400, st
    msg = parse_fields(body)[2][0].decode()
    assert "byte" in msg, msg
    assert pool.sinks[0].stats()["traces"]["requests"] == 0  # nothing forwarded


def test_retryable_failure_is_queued_and_rejection_gives_partial_success():
    down = Sink("--status", "503")
    bad = Sink("--status", "400")
    ep = "http://127.0.0.1:%d" % down.port
    g = Gateway(gateway_config(backends=[ep]), name="down.yaml")
    g2 = Gateway(gateway_config(backends=["http://127.0.0.1:%d" % bad.port]), name="bad.yaml")
    # 503 from the backend: the part goes to its retry queue and the client's data is acknowledged
    st, h, body = http_request(g.port, "POST", "/v1/traces", trace_request(5, 2), PB)
    assert st == 200 and body == b"", (st, h, body)
    g.wait_metric('otlp_gateway_retries_total{backend="%s"}' % ep, lambda v: v >= 1)
    assert g.metric('otlp_gateway_backend_queue_bytes{backend="%s"}' % ep) > 0
    st, h, body = http_request(g2.port, "POST", "/v1/traces", trace_request(5, 2), PB)
    assert st == 200, st
    ps = parse_fields(parse_fields(body)[1][0])
    assert ps[1][0] == 5 and b"rejected" in ps[2][0], ps
    assert g2.metric('otlp_gateway_dropped_items_total{signal="traces",reason="rejected"}') == 5


def test_backend_headers_are_sent():
    sink = Sink("--require-header", "X-Scope-OrgID: tenant-1")
    ep = "http://127.0.0.1:%d" % sink.port
    with_h = Gateway(gateway_config(backends=[ep], extra='  headers:\n    X-Scope-OrgID: "tenant-1"\n'), name="hdr.yaml")
    without = Gateway(gateway_config(backends=[ep]), name="nohdr.yaml")
    st, h, body = http_request(with_h.port, "POST", "/v1/traces", trace_request(4, 2), PB)
    assert st == 200 and body == b"", (st, body)
    # without the header the backend answers 401: it refuses the gateway, not the data, so the part is
    # kept (queued for retry; re-routed once the backend is ejected), never dropped as rejected
    st, h, body = http_request(without.port, "POST", "/v1/traces", trace_request(4, 2), PB)
    assert st == 200 and body == b"", (st, body)
    without.wait_metric('otlp_gateway_backend_requests_total{backend="%s",outcome="refused"}' % ep,
                        lambda v: v >= 1)
    assert without.metric('otlp_gateway_backend_queue_bytes{backend="%s"}' % ep) > 0
    assert without.metric('otlp_gateway_dropped_items_total{signal="traces",reason="rejected"}') == 0
    without.wait_line(r'msg="backend refuses the gateway" backend=%s status=401' % re.escape(ep))
    assert sink.stats()["traces"]["items"] == 4


def test_backend_request_timeout():
    slow = Sink("--delay", "3000")
    ep = "http://127.0.0.1:%d" % slow.port
    g = Gateway(gateway_config(backends=[ep], extra="  request_timeout: 300ms\n"))
    st, h, body = http_request(g.port, "POST", "/v1/traces", trace_request(4, 2), PB)
    # the sink answers after 3 s: the 300 ms deadline fired first, and the part was queued for retry
    assert st == 200, st
    assert g.metric('otlp_gateway_backend_requests_total{backend="%s",outcome="error"}' % ep) >= 1
    assert slow.stats()["traces"]["items"] >= 4  # it did arrive (the answer was what was late)


def test_backend_refusing_connections_is_ejected():
    """A backend that refuses connections: client requests are acknowledged (their parts queued) until
    eject_after_failures consecutive failures take it out of the ring; from then on nothing can be queued
    anywhere: 503."""
    ep = "http://127.0.0.1:9"
    g = Gateway(gateway_config(backends=[ep], extra="  health_check: {interval: 10s, timeout: 1s}\n"))
    got = []
    while 503 not in got:  # one request at a time until the first 503
        assert len(got) < 50, ("never ejected", got)
        got.append(http_request(g.port, "POST", "/v1/traces", trace_request(5, 2), PB)[0])
    n_ok = len(got) - 1
    assert n_ok >= 1 and set(got[:n_ok]) == {200}, got
    # ejected: down, out of the ring, the acknowledged parts kept for when it returns; every request now 503
    assert g.metric('otlp_gateway_backend_up{backend="%s"}' % ep) == 0
    assert g.metric("otlp_gateway_ring_backends") == 0
    assert g.metric('otlp_gateway_backend_queue_bytes{backend="%s"}' % ep) > 0
    assert g.metric('otlp_gateway_requests_total{protocol="http",signal="traces",code="200"}') == n_ok
    assert g.metric('otlp_gateway_backend_requests_total{backend="%s",outcome="error"}' % ep) >= 5  # eject_after
    for _ in range(5):
        assert http_request(g.port, "POST", "/v1/traces", trace_request(5, 2), PB)[0] == 503
    g.wait_line(r'msg="backend down" backend=http://127.0.0.1:9 reason="passive ejection" error=ECONNREFUSED')
    # one log line for the repeated failure, not one per request (the rest are counted for the next line)
    assert len(g.lines("backend request failed")) == 1, g.err[-5:]
    st, _, _ = http_request(g.telemetry_port, "GET", "/readyz")
    assert st == 503


run_tests(globals())
