"""HTTP framing that must reach a live backend intact: chunked bodies, chunked + gzip (re-assembled parts and
the single-owner pass-through), Expect: 100-continue, and bodies of 16 KiB or more that arrive whole in one
read (the server adopts its read buffer) with pipelined requests behind them. Each request goes through the
real gateway to two real otlp-sink processes that record every trace they get; the exact spans must arrive,
every trace on one sink. Also: the JSON google.rpc.Status bodies of 408, 411 and 431, and
backends.max_connections_per_backend as the sinks see it, with otlp_gateway_connections{side="backend",protocol="http"}.
Every gateway is stopped with SIGTERM and must exit 0."""
import threading

from harness import (FAST_HEALTH, Conn, Gateway, build_request, gz, http_request, parse_status, run_tests,
                     wait_until)
from scenario import (JS, PB, RecSink, config, spans_by_trace, spans_json, spans_request, stop_ok, trace_id,
                      value, wait_spans)

class Env:
    """A gateway in front of two recording sinks; stopped (SIGTERM, exit 0) on leaving the with block."""

    def __init__(self, name):
        self.sinks = [RecSink("%s.%d" % (name, i)) for i in range(2)]
        self.g = Gateway(config([s.endpoint for s in self.sinks], health=FAST_HEALTH), name=name + ".yaml")
        self.sent = {}

    def __enter__(self):
        return self.g, self.sinks, self.sent

    def __exit__(self, *exc):
        try:
            stop_ok(self.g)
        finally:
            for s in self.sinks:
                s.stop()


def expect_delivered(sinks, sent, want):
    """want ({trace hex: spans}) joins sent; waits until the sinks hold exactly sent: each trace once, with its
    spans, on one sink, and nothing else."""
    sent.update(want)
    wait_spans(sinks, want)
    got = spans_by_trace(sinks)
    extra = set(got) - set(sent)
    assert not extra, ("traces nobody sent", sorted(extra)[:3])
    for t, n in sent.items():
        where = got.get(t, {})
        assert sum(where.values()) == n and len(where) == 1, (t, n, where)


def batch(seed, n_traces, per_trace=3):
    ids = [trace_id(seed, i) for i in range(n_traces)]
    return ids, {i.hex(): per_trace for i in ids}


def test_chunked_body_forwarded():
    with Env('chunked_body_forwarded') as (g, sinks, sent):
        ids, want = batch(101, 40)
        c = Conn(g.port)
        try:
            c.send(build_request("POST", "/v1/traces", spans_request(ids, 3), PB, chunked=True))  # 100-byte chunks
            st, _, body = c.read_response()
            assert st == 200 and body == b"", (st, body)
            ids2, want2 = batch(102, 25)
            c.send(build_request("POST", "/v1/traces", spans_json(ids2, 3), JS, chunked=True))
            st, h, body = c.read_response()
            assert st == 200 and body == b"{}" and h["content-type"] == "application/json", (st, h, body)
        finally:
            c.close()
        want.update(want2)
        expect_delivered(sinks, sent, want)


def test_chunked_gzip_forwarded_and_passed_through():
    """A gzip body in chunks: with traces for both sinks it is re-assembled into parts; with one trace it goes
    on as the client's gzip bytes (the sink gets exactly as many body bytes as the client sent)."""
    with Env('chunked_gzip_forwarded_and_passed_through') as (g, sinks, sent):
        hdr = dict(PB, **{"Content-Encoding": "gzip"})
        ids, want = batch(103, 40)
        before = value(g, 'otlp_gateway_received_bytes_total{protocol="http",signal="traces",encoding="gzip"}')
        body = gz(spans_request(ids, 3))
        st, _, rbody = http_request(g.port, "POST", "/v1/traces", body, hdr, chunked=True)
        assert st == 200, (st, rbody)
        assert value(g, 'otlp_gateway_received_bytes_total{protocol="http",signal="traces",encoding="gzip"}') == before + len(body)
        expect_delivered(sinks, sent, want)
        one, want1 = batch(104, 1, per_trace=30)
        body = gz(spans_request(one, 30))
        wire_before = [s.stats()["traces"]["bytes"] for s in sinks]
        st, _, rbody = http_request(g.port, "POST", "/v1/traces", body, hdr, chunked=True)
        assert st == 200, (st, rbody)
        expect_delivered(sinks, sent, want1)
        grew = [s.stats()["traces"]["bytes"] - b for s, b in zip(sinks, wire_before)]
        print("    single-trace gzip request of %d bytes: the sinks got %s body bytes" % (len(body), grew))
        assert sorted(grew) == [0, len(body)], "not passed through as the client's gzip bytes: %s" % grew


def test_expect_100_continue_forwarded():
    with Env('expect_100_continue_forwarded') as (g, sinks, sent):
        c = Conn(g.port)
        try:
            want = {}
            for seed, hdr, enc in ((105, PB, None), (106, dict(PB, **{"Content-Encoding": "gzip"}), gz)):
                ids, w = batch(seed, 30)
                body = spans_request(ids, 3)
                if enc:
                    body = enc(body)
                c.send(build_request("POST", "/v1/traces", None, dict(hdr, **{"Content-Length": str(len(body)),
                                                                               "Expect": "100-continue"})))
                st, _, _ = c.read_response()
                assert st == 100, st
                c.send(body)
                st, _, rbody = c.read_response()
                assert st == 200, (st, rbody)
                want.update(w)
            # chunked with Expect: the 100 comes before any chunk
            ids, w = batch(107, 20)
            data = build_request("POST", "/v1/traces", spans_request(ids, 3), dict(PB, Expect="100-continue"),
                                 chunked=True)
            head, chunks = data.split(b"\r\n\r\n", 1)
            c.send(head + b"\r\n\r\n")
            assert c.read_response()[0] == 100
            c.send(chunks)
            st, _, rbody = c.read_response()
            assert st == 200, (st, rbody)
            want.update(w)
        finally:
            c.close()
        expect_delivered(sinks, sent, want)


def test_whole_large_bodies_then_pipelined_requests_forwarded():
    """Three ~24 KB bodies and two small requests in one write: the first bodies arrive whole in one 64 KiB
    read (>= 16 KiB: the request takes the read buffer, the server reads on into a new one), the next one
    straddles reads. Every answer comes in order and every span reaches a sink intact."""
    with Env('whole_large_bodies_then_pipelined_requests_forwarded') as (g, sinks, sent):
        data, want, n_big = b"", {}, 0
        plan = []
        for k in range(3):
            ids, w = batch(110 + k, 40, per_trace=4)
            body = spans_request(ids, 4, service="svc-" + "x" * 14000)
            assert len(body) >= 16384, len(body)
            data += build_request("POST", "/v1/traces", body, PB)
            want.update(w)
            plan.append((200, b""))
            n_big += 1
        ids, w = batch(113, 5)
        data += build_request("POST", "/v1/traces", spans_json(ids, 3), JS)
        want.update(w)
        plan.append((200, b"{}"))
        ids, w = batch(114, 6)
        data += build_request("POST", "/v1/traces", spans_request(ids, 3), PB)
        want.update(w)
        plan.append((200, b""))
        c = Conn(g.port, timeout=30)
        try:
            c.send(data)
            got = [c.read_response() for _ in plan]
        finally:
            c.close()
        assert [(st, body) for st, _, body in got] == plan, [(st, body[:80]) for st, _, body in got]
        print("    %d bytes in one write (%d bodies >= 16 KiB), %d answers in order" % (len(data), n_big, len(plan)))
        expect_delivered(sinks, sent, want)


def test_adopted_body_outlives_later_reads():
    """A body taken over with its read buffer must stay intact while its parts wait for a backend connection
    and other connections are read meanwhile: one connection per backend, kept busy by a slow first request;
    then a ~24 KB body arrives whole (adopted) and waits for the connection; then other clients' ~24 KB
    requests are read. Every span of every request must reach the sinks exactly."""
    sinks = [RecSink("adopt.%d" % i, "--delay", "300") for i in range(2)]
    g = Gateway(config([s.endpoint for s in sinks], max_conns=1, request_timeout="30s"), name="adopt.yaml")
    conns, sent = [], {}
    items = 'otlp_gateway_received_items_total{protocol="http",signal="traces"}'
    try:
        def post(seed, n_traces, per_trace, big):
            ids, w = batch(seed, n_traces, per_trace)
            body = spans_request(ids, per_trace, service="svc-" + ("y" * 14000 if big else "small"))
            assert not big or len(body) >= 16384, len(body)
            before = value(g, items)
            c = Conn(g.port, timeout=30)
            c.send(build_request("POST", "/v1/traces", body, PB))
            conns.append(c)
            g.wait_metric(items, lambda v: v >= before + n_traces * per_trace, what="the request read")
            return w

        want = post(120, 20, 1, False)  # holds both backend connections for 300 ms
        wait_until(lambda: [s.stats()["in_flight"] for s in sinks], lambda v: v == [1, 1], 10,
                   "the first request's parts in flight")
        want.update(post(121, 40, 4, True))  # adopted; its parts wait for the busy connections
        for k in range(3):
            want.update(post(122 + k, 40, 4, True))  # read while the one above waits
        got = [c.read_response() for c in conns]
        assert [(st, body) for st, _, body in got] == [(200, b"")] * len(conns), [(st, b[:80]) for st, _, b in got]
        expect_delivered(sinks, sent, want)
        assert sum(s.stats()["invalid"] for s in sinks) == 0
    finally:
        for c in conns:
            c.close()
        stop_ok(g)
        for s in sinks:
            s.stop()


def test_json_error_bodies_408_411_431():
    """Errors answered from the framing layer carry google.rpc.Status in JSON when the request is JSON, and
    are counted under their code."""
    g = Gateway(config(["http://127.0.0.1:1"], read_timeout="1s"), name="fwd_errors.yaml")
    try:
        c = Conn(g.port)
        c.send(b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n"
               b"\r\n{\"resourceSpans\"")
        st, h, body = c.read_response()
        c.close()
        assert st == 408 and h["content-type"] == "application/json", (st, h)
        assert parse_status(h["content-type"], body) == (4, "request not received within read_timeout"), body
        c = Conn(g.port)
        c.send(build_request("POST", "/v1/logs", None, JS))  # neither Content-Length nor chunked
        st, h, body = c.read_response()
        c.close()
        assert st == 411 and h["content-type"] == "application/json", (st, h)
        code, msg = parse_status(h["content-type"], body)
        assert code == 3 and "Content-Length" in msg, (code, msg)
        for name, headers in (("bytes", dict(JS, **{"X-Big": "a" * 20000})),
                              ("count", dict(JS, **{"X-H%d" % i: "v" for i in range(70)}))):
            c = Conn(g.port)
            c.send(build_request("POST", "/v1/metrics", b"{}", headers))
            st, h, body = c.read_response()
            c.close()
            assert st == 431 and h["content-type"] == "application/json", (name, st, h)
            code, msg = parse_status(h["content-type"], body)
            assert code == 3 and "header" in msg, (name, code, msg)
        assert value(g, 'otlp_gateway_requests_total{protocol="http",signal="traces",code="408"}') == 1
        assert value(g, 'otlp_gateway_requests_total{protocol="http",signal="logs",code="411"}') == 1
        assert value(g, 'otlp_gateway_requests_total{protocol="http",signal="metrics",code="431"}') == 2
    finally:
        stop_ok(g)


def test_max_connections_per_backend():
    """Two sinks that answer after 200 ms; 12 clients at once, each with parts for both; at most 2 connections
    per backend: each sink sees at most 2 connections and 2 requests at a time, reaches 2, and
    connections{side="backend",protocol="http"} (summed over backends) never reads above 4."""
    sinks = [RecSink("maxconn.%d" % i, "--delay", "200") for i in range(2)]
    g = Gateway(config([s.endpoint for s in sinks], max_conns=2, request_timeout="30s"), name="maxconn.yaml")
    results, want = [], {}
    try:
        assert value(g, 'otlp_gateway_connections{side="backend",protocol="http"}') == 0

        def client(k):
            ids = [trace_id(200 + k, i) for i in range(20)]
            try:
                st, _, _ = http_request_long(g.port, spans_request(ids, 2))
                results.append(st)
            except Exception as e:  # the assertion below names it
                results.append(repr(e))

        for k in range(12):
            want.update((trace_id(200 + k, i).hex(), 2) for i in range(20))
        threads = [threading.Thread(target=client, args=(k,)) for k in range(12)]
        for t in threads:
            t.start()
        samples = []

        def sample():
            v = value(g, 'otlp_gateway_connections{side="backend",protocol="http"}')
            samples.append(v)
            return v
        wait_until(sample, lambda v: v == 4, 20, 'connections{side="backend",protocol="http"} reaching 2 per backend')
        for t in threads:
            t.join(60)
        while len(samples) < 5:
            sample()
        assert results == [200] * 12, results
        wait_spans(sinks, want)
        stats = [s.stats() for s in sinks]
        print("    per sink: max_connections=%s max_in_flight=%s; gateway backend connections sampled: max %d"
              % ([x["max_connections"] for x in stats], [x["max_in_flight"] for x in stats], max(samples)))
        for x in stats:
            assert x["max_in_flight"] == 2, x
            assert 1 <= x["max_connections"] <= 2, x
        assert max(samples) <= 4, samples
        assert value(g, 'otlp_gateway_connections{side="backend",protocol="http"}') <= 4
    finally:
        stop_ok(g)
        for s in sinks:
            s.stop()


def http_request_long(port, body):
    c = Conn(port, timeout=60)
    try:
        c.send(build_request("POST", "/v1/traces", body, PB))
        return c.read_response()
    finally:
        c.close()


run_tests(globals())
