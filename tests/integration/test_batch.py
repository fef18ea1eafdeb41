"""Coalescing of parts per backend (backends.batch, gateway/batcher) under load, outcomes only (speed is
bench/compare's):
- under load with trace routing and one connection per backend (so parts must wait and leave together), every
  span arrives exactly once, traces stay whole, and backend requests did carry several parts;
- each client's partial_success is exactly its own when one backend rejects items of the batches it receives
  (partial_success from a collector that drops some, and HTTP 400): 16 clients at once, each request's expected
  count known from where its traces are routed;
- max_parts: 1 turns coalescing off (every backend request carries one part).
"""
import collections
import os
import random
import threading

from harness import (TMP, Gateway, Pool, delivery, field, fresh, gateway_config, http_request, kv_string,
                     parse_fields, read_traces, run_load, run_tests, settled_delivery, wait_until)

ONE_CONNECTION = "  max_connections_per_backend: 1\n"
BATCH_PARTS = "otlp_gateway_backend_batch_parts"


def spans_request(tids, spans_per_trace=1):
    """ExportTraceServiceRequest: one resource, one scope, spans_per_trace spans for each trace ID in tids."""
    spans = b""
    k = 0
    for tid in tids:
        for _ in range(spans_per_trace):
            k += 1
            span = field(1, 2, tid) + field(2, 2, k.to_bytes(8, "big")) + field(5, 2, b"op")
            spans += field(2, 2, span)
    scope = field(1, 2, field(1, 2, b"scope"))
    rs = field(1, 2, field(1, 2, kv_string("service.name", "batch"))) + field(2, 2, scope + spans)
    return field(1, 2, rs)


def rejected_of(body):
    ps = parse_fields(body).get(1, [b""])[0]
    f = parse_fields(ps)
    return f.get(1, [0])[0], f.get(2, [b""])[0].decode()


def histogram(g, name):
    """{le: cumulative count} of an unlabelled histogram in the gateway's /metrics."""
    out = {}
    for ln in g.metrics().splitlines():
        if ln.startswith(name + "_bucket{"):
            le = ln.split('le="', 1)[1].split('"', 1)[0]
            out[le] = float(ln.rsplit(" ", 1)[1])
    return out


def owners(pool, g, n, rng):
    """n random trace IDs and the sink index each is routed to: one request with a span of each, sent alone."""
    tids = [rng.randbytes(16) for _ in range(n)]
    st, _, body = http_request(g.port, "POST", "/v1/traces", spans_request(tids),
                               {"Content-Type": "application/x-protobuf"})
    assert st == 200 and rejected_of(body) == (0, ""), (st, body)
    where = {}

    def placed():
        where.clear()
        for i, c in enumerate(pool.traces()):
            for t in c:
                where[t] = i
        return len(where)

    wait_until(placed, lambda v: v == n, 30, "the warm-up's traces at the sinks")
    return tids, {t: where[t.hex()] for t in tids}


def clients(g, tids, owner, rejecting, n_clients=16, per_client=25, traces_per_request=8, spans_per_trace=3, seed=7):
    """n_clients threads at once, each sending per_client requests of random traces; returns per request
    (status, rejected, message, expected rejected = its spans routed to the rejecting sink)."""
    results, lock = [], threading.Lock()

    def client(k):
        rng = random.Random(seed * 1000 + k)
        for _ in range(per_client):
            pick = rng.sample(tids, traces_per_request)
            body = spans_request(pick, spans_per_trace)
            want = sum(spans_per_trace for t in pick if owner[t] == rejecting)
            st, _, resp = http_request(g.port, "POST", "/v1/traces", body,
                                       {"Content-Type": "application/x-protobuf"})
            rej, msg = rejected_of(resp) if st == 200 else (None, "")
            with lock:
                results.append((st, rej, msg, want))

    threads = [threading.Thread(target=client, args=(k,)) for k in range(n_clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads), "clients still running after 120 s"
    assert len(results) == n_clients * per_client
    return results


def coalesced(g):
    """Backend requests, and how many of them carried more than one part."""
    h = histogram(g, BATCH_PARTS)
    return h["+Inf"], h["+Inf"] - h["1"]


def test_every_span_once_traces_whole_while_coalescing():
    pool = Pool("bt.load")
    g = Gateway(gateway_config(backends=pool.endpoints, extra=ONE_CONNECTION), name="bt.load.yaml")
    acked_file = fresh(os.path.join(TMP, "bt.load.acked.txt"))
    res, out = run_load("http://127.0.0.1:%d" % g.port, "--requests", "3000", "--spans", "50", "--traces", "10",
                        "--connections", "16", "--trace-file", acked_file)
    assert res["ok"] == 3000 and res["spans_acked"] == 3000 * 50, out
    acked = read_traces(acked_file, strict=True)
    d = settled_delivery(acked, pool.files)
    total, multi = coalesced(g)
    client_requests = g.metric('otlp_gateway_requests_total{protocol="http",signal="traces",code="200"}')
    print("    %d client requests -> %d backend requests (%d carrying several parts); lost %d, duplicates %d, "
          "split %d, per sink %s" % (client_requests, total, multi, d["lost"], d["duplicates"], d["split"],
                                     d["per_sink"]))
    assert d["lost"] == 0 and d["duplicates"] == 0 and d["unknown_traces"] == 0, d
    assert d["split"] == 0, "%d traces on more than one sink" % d["split"]
    assert sum(d["per_sink"]) == 3000 * 50
    assert multi > 0, "no backend request carried more than one part"
    delivered = sum(g.metric('otlp_gateway_backend_items_total{backend="%s",signal="traces"}' % e)
                    for e in pool.endpoints)
    assert delivered == 3000 * 50, delivered


def exact_outcomes(name, rejecting_control, expect_message):
    rng = random.Random(11)
    pool = Pool(name)
    g = Gateway(gateway_config(backends=pool.endpoints, extra=ONE_CONNECTION), name=name + ".yaml")
    tids, owner = owners(pool, g, 64, rng)
    rejecting = 1
    before = coalesced(g)
    pool.sinks[rejecting].control(**rejecting_control)
    results = clients(g, tids, owner, rejecting)
    total, multi = coalesced(g)
    wrong = [r for r in results if r[0] != 200 or r[1] != r[3]]
    counts = collections.Counter((r[1], r[3]) for r in results)
    print("    %d requests from 16 clients at once; (rejected, expected) counts %s; %d backend requests, %d with "
          "several parts" % (len(results), dict(sorted(counts.items())), total - before[0], multi - before[1]))
    assert not wrong, ("clients whose partial_success is not their own", wrong[:5])
    assert any(r[3] > 0 for r in results) and any(r[3] == 0 for r in results), "the traces did not spread"
    assert all(expect_message in r[2] for r in results if r[3] > 0), [r for r in results if r[3] > 0][:3]
    assert multi - before[1] > 0, "no backend request carried more than one part: nothing was re-sent"
    return pool, g, results


def test_partial_success_is_each_clients_own():
    """The rejecting sink answers 200 with partial_success rejecting every item it gets (min(N, items)): a batch
    is re-sent part by part, so each client learns exactly how many of its own spans were rejected."""
    exact_outcomes("bt.partial", {"partial": 1000000}, "otlp-sink")


def test_rejected_batch_gives_each_client_its_count():
    """The rejecting sink answers 400: each client gets its own spans on that sink as rejected, and every other
    span is delivered exactly once."""
    pool, g, results = exact_outcomes("bt.400", {"status": 400}, "with HTTP 400")
    dropped = g.metric('otlp_gateway_dropped_items_total{signal="traces",reason="rejected"}')
    assert dropped == sum(r[3] for r in results), (dropped, sum(r[3] for r in results))


def test_max_parts_one_turns_coalescing_off():
    pool = Pool("bt.off")
    g = Gateway(gateway_config(backends=pool.endpoints, extra=ONE_CONNECTION + "  batch: {max_parts: 1}\n"),
                name="bt.off.yaml")
    res, out = run_load("http://127.0.0.1:%d" % g.port, "--requests", "600", "--spans", "50", "--traces", "10",
                        "--connections", "16")
    assert res["ok"] == 600, out
    total, multi = coalesced(g)
    print("    %d backend requests, %d with several parts" % (total, multi))
    assert total >= 600 and multi == 0


run_tests(globals())
