"""Shared pieces of the fault-injection tests (test_resilience, test_workers): a pool of recording sinks,
a paced background load, and the accounting of acknowledged against delivered spans."""
import collections
import os
import time

from harness import TMP, BackgroundLoad, Sink, fresh, read_traces, wait_until

DRAIN_TIMEOUT = 30


class Pool:
    """n sinks, each recording the traces it receives into its own file."""

    def __init__(self, name, n=3, listens=None):
        listens = listens or ["127.0.0.1:0"] * n
        self.files = [fresh(os.path.join(TMP, "%s.sink%d.txt" % (name, i))) for i in range(len(listens))]
        self.sinks = [Sink("--trace-file", f, listen=l) for f, l in zip(self.files, listens)]

    @property
    def endpoints(self):
        return [s.endpoint for s in self.sinks]

    def distinct(self, i):
        """Distinct traces sink i has received so far."""
        return len(read_traces(self.files[i]))

    def stop(self):
        for s in self.sinks:
            s.stop()


def count_lines(path):
    with open(path) as f:
        return sum(1 for _ in f)


def up_metric(endpoint):
    return 'otlp_gateway_backend_up{backend="%s"}' % endpoint


def start_load(g, name, duration, seed=1, rate=300):
    """A paced background load through g, acknowledged traces into TMP/<name>.acked.txt."""
    acked = fresh(os.path.join(TMP, "%s.acked.txt" % name))
    load = BackgroundLoad("http://127.0.0.1:%d" % g.port, "--rate", str(rate), "--spans", "100", "--traces", "10",
                          "--connections", "8", "--duration", duration, "--timeout", "10s", "--trace-file", acked,
                          "--seed", str(seed))
    load.acked_file = acked
    return load


def wait_drained(g, timeout=DRAIN_TIMEOUT):
    """Waits (bounded) until the gateway has nothing queued for any backend."""
    wait_until(lambda: g.metric_sum("otlp_gateway_backend_queue_bytes"), lambda v: v == 0, timeout,
               "sum of otlp_gateway_backend_queue_bytes")


def accounting(acked_files, sink_files):
    acked, delivered = collections.Counter(), collections.Counter()
    for f in acked_files:
        acked.update(read_traces(f))
    for f in sink_files:
        delivered.update(read_traces(f))
    lost = sum(max(0, n - delivered.get(t, 0)) for t, n in acked.items())
    dups = sum(max(0, n - acked.get(t, 0)) for t, n in delivered.items())
    return {"acked_spans": sum(acked.values()), "delivered_spans": sum(delivered.values()), "lost": lost,
            "duplicates": dups, "acked_traces": len(acked)}


def check_accounting(name, acked_files, sink_files, results=(), settle=3.0):
    """Prints the scenario line and asserts nothing acknowledged was lost. The files are read again for up
    to settle seconds while spans are missing: a request may still be on its way to a sink when the queue
    metric reads 0."""
    deadline = time.time() + settle
    while True:
        a = accounting(acked_files, sink_files)
        if a["lost"] == 0 or time.time() >= deadline:
            break
        time.sleep(0.2)
    print("    scenario=%s acked_spans=%d delivered_spans=%d lost=%d duplicates=%d"
          % (name, a["acked_spans"], a["delivered_spans"], a["lost"], a["duplicates"]), flush=True)
    assert a["acked_spans"] > 0, "nothing was acknowledged: the scenario tested nothing"
    acked_by_load = sum(r["spans_acked"] for r in results)
    if results:  # the trace files agree with the RESULT lines: the accounting reads what the loads saw
        assert a["acked_spans"] == acked_by_load, (a["acked_spans"], acked_by_load)
    assert a["lost"] == 0, "%s: %d acknowledged spans never reached a sink" % (name, a["lost"])
    return a


def probe_load(g, name, pool, idxs, seed=7):
    """A short extra load (other trace IDs) after a recovery; each sink in idxs must get some of it.
    Returns (RESULT, acked file) for the accounting."""
    load = start_load(g, name, "1s", seed=seed)
    res = load.result()
    acked = set(read_traces(load.acked_file))
    got = [len(acked & set(read_traces(pool.files[i]))) for i in idxs]
    print("    probe load after the recovery: %d traces acked, per recovered sink %s" % (len(acked), got))
    assert res["ok"] > 0 and all(got), ("a recovered sink got none of the new traces", got)
    return res, load.acked_file


def wait_ring(g, n, timeout=10):
    return g.wait_metric("otlp_gateway_ring_backends", lambda v: v == n, timeout)


def result_line(res):
    keys = ("requests", "ok", "errors", "spans_acked")
    return " ".join("%s=%d" % (k, res.get(k, 0)) for k in keys) + " " + " ".join(
        "%s=%d" % (k, v) for k, v in sorted(res.items()) if k.startswith("status_"))
