"""What each backend answer does, through the real gateway to real otlp-sink processes (docs/DESIGN.md,
"Acknowledgement", and docs/operations.md, backend_requests_total):

- 400/413 rejected: the part is dropped, counted in dropped_items_total{reason="rejected"}, and reported to the
  client in partial_success; nothing is retried.
- 429/502/503/504 retryable: the part goes to the backend's retry queue and the client gets 200. 429 does not
  count against the backend (it stays in the ring and gets its own data once it accepts); 502/503/504 count as
  failed sends, so the backend is ejected and its queue re-routed.
- anything else (403, 500, ...) refuses the gateway: queued, counted as a failed send, ejected, re-routed.
- partial_success answers of several backends are summed for the client (first message kept), in the
  request's encoding.
- the retry queue's timing, from the arrival times otlp-sink records (--times-file): Retry-After is a lower
  bound, the backoff starts at retry.initial_interval, doubles up to retry.max_interval, and is jittered to
  [d/2, d]. Only lower bounds (a timer never fires early) and generous upper bounds are asserted.
- a queue that cannot drain by server.shutdown_timeout is dropped with reason="shutdown".
Every gateway is stopped with SIGTERM and must exit 0."""
import re
import signal

from harness import Gateway, http_request, run_tests, wait_drained, wait_until
from scenario import (JS, PB, RecSink, backend_series, config, esc, logs_json, logs_request, outcome,
                      partial_success, spans_json, spans_request, stop_ok, trace_id, value, wait_spans)

EJECT_RETRY = "{initial_interval: 50ms, max_interval: 300ms, max_elapsed: 60s}"
# Passive ejection after 3 failed sends; checks slow enough that a loaded machine does not fail them by itself.
HEALTH = "{enabled: true, interval: 500ms, timeout: 500ms, rise: 2, fall: 3, eject_after_failures: 3}"


def send_traces(g, seed, n_requests, traces_per_request, spans_per_trace=2):
    """Sends n_requests requests of fresh trace IDs, one after the other; each must be answered 200 with no
    partial_success (the data is the gateway's now). Returns {trace hex: spans}."""
    want = {}
    for r in range(n_requests):
        ids = [trace_id(seed, r * traces_per_request + i) for i in range(traces_per_request)]
        st, h, body = http_request(g.port, "POST", "/v1/traces", spans_request(ids, spans_per_trace), PB)
        assert st == 200, (st, body)
        assert partial_success(h["content-type"], body) == (0, ""), ("data reported rejected", body)
        want.update((t.hex(), spans_per_trace) for t in ids)
    return want


def ejecting_scenario(status, kind):
    """One of three backends answers every POST with status (its health checks pass). It must be ejected by
    passive health, and everything it was sent must reach the two others; clients all get 200."""
    name = "answer%d" % status
    sinks = [RecSink("%s.%d" % (name, i)) for i in range(3)]
    victim = sinks[0]
    victim.control(status=status)
    g = Gateway(config([s.endpoint for s in sinks], health=HEALTH, retry=EJECT_RETRY), name=name + ".yaml")
    try:
        want = send_traces(g, status, 8, 30)
        # the ejection is waited for in the log: a retryable one may be readmitted by its checks at once
        g.wait_line(r'msg="backend down" backend=%s reason="passive ejection' % esc(victim.endpoint))
        wait_drained(g)
        got = wait_spans(sinks[1:], want)
        lost = sum(max(0, n - sum(got.get(t, {}).values())) for t, n in want.items())
        print("    %d answered %d; %d traces, %d spans sent; lost %d; victim recorded %d traces; outcomes %s"
              % (victim.port, status, len(want), sum(want.values()), lost, len(victim.traces()),
                 {o: outcome(g, victim.endpoint, o) for o in ("success", "retryable", "refused", "rejected")}))
        assert lost == 0
        assert not victim.traces(), "the backend answering %d recorded data" % status
        assert victim.stats()["rejected"] >= 3, victim.stats()
        other = "refused" if kind == "retryable" else "retryable"
        assert outcome(g, victim.endpoint, kind) >= 3, "its answers were not counted as %s" % kind
        assert outcome(g, victim.endpoint, other) == 0
        assert outcome(g, victim.endpoint, "rejected") == 0
        assert value(g, 'otlp_gateway_dropped_items_total{signal="traces",reason="rejected"}') == 0
        assert g.metric_sum("otlp_gateway_retries_total") >= 1, "nothing was retried or re-routed"
        if kind == "refused":
            g.wait_line(r'msg="backend refuses the gateway" backend=%s status=%d' % (esc(victim.endpoint), status))
            g.wait_line(r'msg="backend down" backend=%s reason="passive ejection: the backend refuses the gateway" '
                        r'error=%d' % (esc(victim.endpoint), status))
        else:
            g.wait_line(r'msg="backend request failed" backend=%s error=%d action="queued for retry"'
                        % (esc(victim.endpoint), status))
            g.wait_line(r'msg="backend down" backend=%s reason="passive ejection" error=%d'
                        % (esc(victim.endpoint), status))
    finally:
        stop_ok(g)
        for s in sinks:
            s.stop()


def test_403_refuses_the_gateway_data_rerouted():
    ejecting_scenario(403, "refused")


def test_500_refuses_the_gateway_data_rerouted():
    ejecting_scenario(500, "refused")


def test_502_retryable_backend_ejected_data_rerouted():
    ejecting_scenario(502, "retryable")


def test_503_retryable_backend_ejected_data_rerouted():
    ejecting_scenario(503, "retryable")


def test_504_retryable_backend_ejected_data_rerouted():
    ejecting_scenario(504, "retryable")


def test_429_keeps_the_backend_and_its_data():
    """429 is retryable but says nothing against the backend: with eject_after_failures 3 it stays in the ring
    through many 429s (no ring rebuild), its parts wait in its own queue, and once it accepts they reach it,
    not another backend."""
    sinks = [RecSink("answer429.%d" % i) for i in range(2)]
    victim, other = sinks
    victim.control(status=429)
    g = Gateway(config([s.endpoint for s in sinks], health=HEALTH, retry=EJECT_RETRY), name="answer429.yaml")
    try:
        want = send_traces(g, 429, 6, 30)
        g.wait_metric(backend_series("retries_total", victim.endpoint), lambda v: v >= 8, timeout=15,
                      what="retries to the backend answering 429")
        assert value(g, backend_series("backend_up", victim.endpoint)) == 1
        assert value(g, "otlp_gateway_ring_rebuilds_total") == 1, "the ring changed: the 429 backend was ejected"
        assert value(g, backend_series("backend_queue_bytes", victim.endpoint)) > 0
        assert outcome(g, victim.endpoint, "retryable") >= 8
        assert not victim.traces()
        victim.control(status=200)
        wait_drained(g)
        got = wait_spans(sinks, want)
        on_both = [t for t, where in got.items() if len(where) > 1]
        print("    %d traces: %d at the 429 backend once it accepted, %d at the other, %d on both"
              % (len(want), len(victim.traces()), len(other.traces()), len(on_both)))
        assert victim.traces(), "the 429 backend never got its data"
        assert not on_both, ("its data was re-routed", on_both[:3])
        assert value(g, "otlp_gateway_ring_rebuilds_total") == 1
        assert outcome(g, victim.endpoint, "refused") == 0
    finally:
        stop_ok(g)
        for s in sinks:
            s.stop()


def rejected_scenario(status):
    """One of two backends answers status (400 or 413): its part of each request is dropped and reported in
    partial_success (protobuf and JSON clients), counted, and never retried."""
    sinks = [RecSink("reject%d.%d" % (status, i)) for i in range(2)]
    bad, good = sinks
    bad.control(status=status)
    g = Gateway(config([s.endpoint for s in sinks], health=HEALTH), name="reject%d.yaml" % status)
    try:
        total_rejected = 0
        for enc, seed in (("protobuf", 1), ("json", 2)):
            ids = [trace_id(status * 10 + seed, i) for i in range(40)]
            body, hdr = (spans_request(ids, 3), PB) if enc == "protobuf" else (spans_json(ids, 3), JS)
            st, h, rbody = http_request(g.port, "POST", "/v1/traces", body, hdr)
            assert st == 200, (st, rbody)
            assert h["content-type"] == hdr["Content-Type"], h
            rejected, msg = partial_success(h["content-type"], rbody)
            at_good = sum(n for t, n in good.traces().items() if t in {i.hex() for i in ids})
            print("    %s: %d spans sent, %d delivered, partial_success rejected=%d message=%r"
                  % (enc, 3 * len(ids), at_good, rejected, msg))
            assert 0 < rejected < 3 * len(ids) and rejected == 3 * len(ids) - at_good, (rejected, at_good)
            assert msg == "backend %s rejected %d spans with HTTP %d" % (bad.endpoint, rejected, status), msg
            total_rejected += rejected
        assert value(g, 'otlp_gateway_dropped_items_total{signal="traces",reason="rejected"}') == total_rejected
        assert outcome(g, bad.endpoint, "rejected") == 2
        assert value(g, backend_series("retries_total", bad.endpoint)) == 0
        assert value(g, backend_series("backend_queue_bytes", bad.endpoint)) == 0
        assert value(g, backend_series("backend_up", bad.endpoint)) == 1  # the data's fault, not the backend's
        g.wait_line(r'msg="items dropped" reason=rejected backend=%s signal=traces status=%d'
                    % (esc(bad.endpoint), status))
    finally:
        stop_ok(g)
        for s in sinks:
            s.stop()


def test_400_rejected_dropped_and_reported():
    rejected_scenario(400)


def test_413_rejected_dropped_and_reported():
    rejected_scenario(413)


PARTIAL_MSG = re.compile(r"^otlp-sink 127\.0\.0\.1:(\d+) rejected (\d+) (spans|log_records)$")


def partial_check(g, sinks, path, body, hdr, items_name, whole=None):
    """Sends one request that has a part for several sinks; the client's partial_success must be the sum of
    what the sinks reported rejecting and carry one sink's message. whole = (trace IDs, spans per trace) of a
    request that a sink answering 400 also has a part of: that part's spans (those no sink recorded) are
    rejected whole and add to the sum."""
    before = [s.stats()["partial_rejected"] for s in sinks]
    st, h, rbody = http_request(g.port, "POST", path, body, hdr)
    assert st == 200, (st, rbody)
    assert h["content-type"] == hdr["Content-Type"], h
    rejected, msg = partial_success(h["content-type"], rbody)
    per_sink = [s.stats()["partial_rejected"] - b for s, b in zip(sinks, before)]
    extra = 0
    if whole:
        ids, per_trace = whole
        want = {i.hex() for i in ids}
        delivered = sum(n for s in sinks for t, n in s.traces().items() if t in want)
        extra = len(ids) * per_trace - delivered
        assert extra > 0, "the 400 backend owned none of the traces: the case tested nothing"
    print("    %s %s: partial_success rejected=%d message=%r; the sinks reported %s%s"
          % (path, hdr["Content-Type"], rejected, msg, per_sink, ", rejected whole (400): %d" % extra if whole else ""))
    assert sum(1 for n in per_sink if n) >= 2, ("the request did not reach two partial sinks", per_sink)
    assert rejected == sum(per_sink) + extra, (rejected, per_sink, extra)
    m = PARTIAL_MSG.match(msg)
    if m:  # one of the partial sinks' messages, as that sink wrote it
        i = [s.port for s in sinks].index(int(m.group(1)))
        assert int(m.group(2)) == per_sink[i] and m.group(3) == items_name, (msg, per_sink)
    else:  # or the gateway's own message for the part answered 400
        assert whole and re.match(r"^backend http://\S+ rejected %d %s with HTTP 400$" % (extra, items_name),
                                  msg), msg
    if hdr["Content-Type"] == "application/json":
        key = {"spans": "rejectedSpans", "log_records": "rejectedLogRecords"}[items_name]
        assert ('"%s":"%d"' % (key, rejected)).encode() in rbody, rbody
    return rejected


def test_partial_success_summed_protobuf_and_json():
    """Three backends each answer 200 with partial_success (2, 3 and 5 items rejected): the client gets the sum
    and one of their messages, for traces and logs, protobuf and JSON; then one backend answers 400 instead,
    and its whole part is added to the other two's partial counts."""
    sinks = [RecSink("partial.%d" % i, "--partial", str(n)) for i, n in enumerate((2, 3, 5))]
    g = Gateway(config([s.endpoint for s in sinks], health=HEALTH), name="partial.yaml")
    try:
        ids = [trace_id(77, i) for i in range(60)]
        partial_check(g, sinks, "/v1/traces", spans_request(ids, 2), PB, "spans")
        partial_check(g, sinks, "/v1/traces", spans_json(ids[:45], 2), JS, "spans")
        partial_check(g, sinks, "/v1/logs", logs_request(ids, 2), PB, "log_records")
        partial_check(g, sinks, "/v1/logs", logs_json(ids[15:], 2), JS, "log_records")
        sinks[2].control(status=400)
        ids = [trace_id(78, i) for i in range(60)]
        partial_check(g, sinks, "/v1/traces", spans_request(ids, 2), PB, "spans", whole=(ids, 2))
        ids = [trace_id(79, i) for i in range(60)]
        partial_check(g, sinks, "/v1/traces", spans_json(ids, 2), JS, "spans", whole=(ids, 2))
        assert value(g, backend_series("backend_requests_total", sinks[2].endpoint, outcome="rejected")) == 2
    finally:
        stop_ok(g)
        for s in sinks:
            s.stop()


# ---- retry timing -------------------------------------------------------------------------------------------

def retry_run(name, status, retry_after, retry, n_posts):
    """One part to one backend that answers status (with Retry-After: retry_after, 0 = none) until it has seen
    n_posts POSTs, then 200. Returns the gaps between consecutive POSTs (seconds) and checks the counters."""
    s = RecSink(name)
    s.control(status=status, retry_after=retry_after)
    g = Gateway(config([s.endpoint], retry=retry), name=name + ".yaml")
    try:
        ids = [trace_id(sum(name.encode()), 0)]
        st, _, body = http_request(g.port, "POST", "/v1/traces", spans_request(ids, 4), PB)
        assert st == 200, (st, body)
        wait_until(lambda: len(s.times()), lambda n: n >= n_posts, 60, "POSTs at the sink")
        s.control(status=200)
        wait_spans([s], {ids[0].hex(): 4}, timeout=30)
        wait_drained(g)
        times = s.times()
        statuses = [t[1] for t in times]
        assert statuses[-1] == 200 and set(statuses[:-1]) == {status}, statuses
        assert statuses.count(200) == 1, "delivered more than once"
        assert value(g, backend_series("retries_total", s.endpoint)) == len(times) - 1
        assert outcome(g, s.endpoint, "retryable") == len(times) - 1
        assert outcome(g, s.endpoint, "success") == 1
        return [b[0] - a[0] for a, b in zip(times, times[1:])]
    finally:
        stop_ok(g)
        s.stop()


SLACK = 2.0  # seconds a loaded 2-core machine may add to a wait; upper bounds only


def test_retry_after_is_a_lower_bound():
    """A backend answering 429 with Retry-After: 1 is not asked again for at least 1 s after each answer,
    though retry.max_interval is 200 ms; the first retry of the failed client part waits too."""
    gaps = retry_run("retry_after", 429, 1, "{initial_interval: 50ms, max_interval: 200ms, max_elapsed: 60s}", 4)
    print("    gaps between POSTs (Retry-After: 1): %s" % ", ".join("%.3f" % x for x in gaps))
    for i, gap in enumerate(gaps):
        assert gap >= 0.99, "POST %d came %.3f s after a Retry-After: 1 answer" % (i + 1, gap)
        assert gap <= 1.0 + SLACK, "POST %d came %.3f s after the answer: Retry-After is a lower bound only" % (
            i + 1, gap)


def test_backoff_doubles_to_max_interval_with_jitter():
    """A backend answering 503 without Retry-After: the n-th wait is initial_interval * 2^(n-1) capped at
    max_interval (100 ms .. 800 ms), jittered to [d/2, d]."""
    initial, cap = 0.1, 0.8
    gaps = retry_run("backoff", 503, 0, "{initial_interval: 100ms, max_interval: 800ms, max_elapsed: 60s}", 12)
    want = [min(initial * 2 ** i, cap) for i in range(len(gaps))]
    print("    gaps between POSTs: %s" % ", ".join("%.3f (d=%.1f)" % gw for gw in zip(gaps, want)))
    for i, (gap, d) in enumerate(zip(gaps, want)):
        assert gap >= d / 2 - 0.002, "wait %d was %.3f s, below d/2 = %.3f s" % (i + 1, gap, d / 2)
        assert gap <= d + SLACK, "wait %d was %.3f s, far above d = %.3f s (no cap?)" % (i + 1, gap, d)
    at_cap = [gap for gap, d in zip(gaps, want) if d == cap]
    assert len(at_cap) >= 7, at_cap
    assert min(at_cap) < 0.9 * cap, ("no jitter: every wait at max_interval was >= 0.9 d", at_cap)
    assert max(at_cap) >= cap / 2 and min(at_cap) >= cap / 2 - 0.002


# ---- shutdown -------------------------------------------------------------------------------------------------

def test_shutdown_drops_what_a_black_hole_holds():
    """A part is queued (the backend answered 503), then the backend turns into a black hole that holds its
    retries unanswered. SIGTERM with shutdown_timeout 1s: at the deadline the part is dropped with
    reason=shutdown (logged with its item count: /metrics is gone by then), and the gateway exits 0."""
    s = RecSink("shutdown_hole")
    s.control(status=503)
    g = Gateway(config([s.endpoint], request_timeout="30s", shutdown_timeout="1s"), name="shutdown_hole.yaml")
    try:
        ids = [trace_id(4242, i) for i in range(7)]
        st, _, _ = http_request(g.port, "POST", "/v1/traces", spans_request(ids, 3), PB)
        assert st == 200
        g.wait_metric(backend_series("retries_total", s.endpoint), lambda v: v >= 1)
        s.control(hang=1)
        wait_until(lambda: s.control()["held"], lambda n: n >= 1, 10, "a retry held by the black hole")
        assert value(g, backend_series("backend_queue_bytes", s.endpoint)) > 0
        assert value(g, 'otlp_gateway_dropped_items_total{signal="traces",reason="shutdown"}') == 0
        g.signal(signal.SIGTERM)
        assert g.wait(timeout=15) == 0
        g.wait_line(r'msg="shutdown deadline reached')
        g.wait_line(r'msg="items dropped" reason=shutdown backend=%s signal=traces items=21 ' % esc(s.endpoint))
        assert not s.traces()
    finally:
        stop_ok(g)
        s.stop()


run_tests(globals())
