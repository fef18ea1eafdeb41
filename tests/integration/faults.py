"""Shared pieces of the fault-injection tests (test_resilience, test_workers, test_hostile_backends): a paced
background load whose phases the tests end on events, the waits those phases use, and the accounting of
acknowledged against delivered spans. Pools of sinks, read_traces, delivery and wait_drained are harness's."""
import os

from harness import (TMP, WAIT, BackgroundLoad, Pool, delivery, fresh, read_traces, settled_delivery,  # noqa: F401
                     wait_drained, wait_until)

ACKED = 'otlp_gateway_requests_total{protocol="http",signal="traces",code="200"}'
REFUSED = 'otlp_gateway_requests_total{protocol="http",signal="traces",code="503"}'


def count_lines(path):
    with open(path) as f:
        return sum(1 for _ in f)


def up_metric(endpoint):
    return 'otlp_gateway_backend_up{backend="%s"}' % endpoint


def start_load(g, name, seed=1, rate=300, requests=None, limit="240s"):
    """A paced background load through g, acknowledged traces into TMP/<name>.acked.txt. Without requests it
    runs until stop() (limit only bounds a test that forgets); with requests it ends after that many."""
    acked = fresh(os.path.join(TMP, "%s.acked.txt" % name))
    budget = ["--requests", str(requests)] if requests else ["--duration", limit]
    load = BackgroundLoad("http://127.0.0.1:%d" % g.port, "--rate", str(rate), "--spans", "100", "--traces", "10",
                          "--connections", "8", "--timeout", "10s", "--trace-file", acked, "--seed", str(seed),
                          *budget)
    load.acked_file = acked
    return load


def wait_acked(g, n, timeout=WAIT, what=None):
    """Waits (bounded) until the gateway has acknowledged n more trace requests than now: the load is
    flowing (through whatever the scenario did to the backends)."""
    return g.wait_more(ACKED, n, timeout, what or "trace requests acknowledged by the gateway")


def wait_refused(g, n, timeout=WAIT, what=None):
    """Waits (bounded) until the gateway has answered n more trace requests with 503 than now."""
    return g.wait_more(REFUSED, n, timeout, what or "trace requests answered 503 by the gateway")


def wait_new_traces(pool, idxs, n, timeout=WAIT, what=None):
    """Waits (bounded) until the sinks idxs of pool together hold n more distinct traces than now."""
    count = lambda: sum(pool.distinct(i) for i in idxs)
    base = count()
    return wait_until(count, lambda v: v >= base + n, timeout,
                      what or "distinct traces at sinks %s (%d, waiting for +%d)" % (list(idxs), base, n))


def acked_traces(acked_files):
    """Counter trace -> spans over the loads' files of acknowledged traces (written whole: the loads ended)."""
    acked = read_traces(acked_files[0], strict=True)
    for f in acked_files[1:]:
        acked.update(read_traces(f, strict=True))
    return acked


def check_accounting(name, acked_files, sink_files, results=(), settle=WAIT):
    """Prints the scenario line and asserts nothing acknowledged was lost. The sink files are read again (for
    up to settle seconds) while spans are missing: a request may still be on its way to a sink when the queue
    metric reads 0."""
    a = settled_delivery(acked_traces(acked_files), sink_files, settle)
    print("    scenario=%s acked_spans=%d delivered_spans=%d lost=%d duplicates=%d"
          % (name, a["acked_spans"], a["delivered_spans"], a["lost"], a["duplicates"]), flush=True)
    assert a["acked_spans"] > 0, "nothing was acknowledged: the scenario tested nothing"
    acked_by_load = sum(r["spans_acked"] for r in results)
    if results:  # the trace files agree with the RESULT lines: the accounting reads what the loads saw
        assert a["acked_spans"] == acked_by_load, (a["acked_spans"], acked_by_load)
    assert a["lost"] == 0, "%s: %d acknowledged spans never reached a sink" % (name, a["lost"])
    return a


def probe_load(g, name, pool, idxs, seed=7, requests=300):
    """A short extra load (other trace IDs) after a recovery; each sink in idxs must get some of it.
    Returns (RESULT, acked file) for the accounting."""
    load = start_load(g, name, seed=seed, requests=requests)
    res = load.result()
    acked = set(read_traces(load.acked_file))
    got = [len(acked & set(read_traces(pool.files[i]))) for i in idxs]
    print("    probe load after the recovery: %d traces acked, per recovered sink %s" % (len(acked), got))
    assert res["ok"] > 0 and all(got), ("a recovered sink got none of the new traces", got)
    return res, load.acked_file


def wait_ring(g, n, timeout=WAIT):
    return g.wait_metric("otlp_gateway_ring_backends", lambda v: v == n, timeout)


def result_line(res):
    keys = ("requests", "ok", "errors", "aborted", "spans_acked")
    return " ".join("%s=%d" % (k, res.get(k, 0)) for k in keys) + " " + " ".join(
        "%s=%d" % (k, v) for k, v in sorted(res.items()) if k.startswith("status_"))
