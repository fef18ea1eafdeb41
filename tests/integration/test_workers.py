"""server.workers > 1: several event loops in one process (gateway/workers). The real gateway with two worker
threads in front of real sinks: routing stays exact and whole-trace, both loops take connections, the
counters of all workers add up in one scrape, server.max_connections holds for the process, failover,
reload and drain work in every worker, and a second gateway cannot silently share the port."""
import os
import signal
import subprocess
import time

from faults import Pool, check_accounting, result_line, start_load, up_metric, wait_drained, wait_ring
from harness import (Conn, Gateway, args, build_request, gateway_config, http_request, read_traces,
                     resilient_config, run_load, run_tests, write_config)

PB = {"Content-Type": "application/x-protobuf"}


def two_workers(text):
    assert "  workers: 1\n" in text
    return text.replace("  workers: 1\n", "  workers: 2\n", 1)


def worker_cpu_ticks(pid):
    """utime + stime (clock ticks) of each worker thread (named otlpgw-wN), by name."""
    out = {}
    for tid in os.listdir("/proc/%d/task" % pid):
        with open("/proc/%d/task/%s/comm" % (pid, tid)) as f:
            name = f.read().strip()
        if name.startswith("otlpgw-w"):
            with open("/proc/%d/task/%s/stat" % (pid, tid)) as f:
                fields = f.read().rsplit(")", 1)[1].split()
            # libuv's thread pool threads inherit the name of the worker that started them: keep the busiest
            out[name] = max(out.get(name, 0), int(fields[11]) + int(fields[12]))
    return out


def test_two_workers_route_exactly_once_and_add_up():
    pool = Pool("w2")
    g = Gateway(two_workers(gateway_config(backends=pool.endpoints)), name="w2.yaml")
    try:
        g.wait_line(r'msg="workers running" workers=2 ingest_port=%d' % g.port)
        acked_file = os.path.join(pool.files[0] + ".acked")
        res, out = run_load("http://127.0.0.1:%d" % g.port, "--requests", "1500", "--spans", "100", "--traces",
                            "10", "--connections", "16", "--trace-file", acked_file)
        assert res["ok"] == 1500, out
        per_sink = [read_traces(f) for f in pool.files]
        owners = {}
        for i, c in enumerate(per_sink):
            for t in c:
                assert t not in owners, "trace %s split over sinks %d and %d" % (t, owners[t], i)
                owners[t] = i
        acked = read_traces(acked_file)
        delivered = {t: n for c in per_sink for t, n in c.items()}
        assert delivered == dict(acked), "delivered spans differ from acknowledged ones"
        # one scrape sums both workers' counters
        assert g.metric('otlp_gateway_received_items_total{signal="traces"}') == 150000
        assert sum(g.metric('otlp_gateway_backend_items_total{backend="%s",signal="traces"}' % e)
                   for e in pool.endpoints) == 150000
        assert g.metric('otlp_gateway_requests_total{signal="traces",code="200"}') == 1500
        ticks = worker_cpu_ticks(g.p.pid)
        print("    spans per sink %s; worker CPU ticks %s" % ([sum(c.values()) for c in per_sink], ticks))
        assert sorted(ticks) == ["otlpgw-w0", "otlpgw-w1"] and all(v > 0 for v in ticks.values()), ticks
    finally:
        rc = g.stop()
        pool.stop()
    assert rc == 0


def test_max_connections_is_for_the_whole_process():
    g = Gateway(two_workers(gateway_config(max_connections=4)), name="wmax.yaml")
    conns = []
    try:
        for _ in range(4):  # accepted, wherever the kernel puts them
            c = Conn(g.port)
            c.send(build_request("POST", "/v1/traces", b"", PB))
            assert c.read_response()[0] == 200
            conns.append(c)
        refused = 0
        for _ in range(6):  # per-worker limits would let some of these in
            c = Conn(g.port)
            c.send(build_request("POST", "/v1/traces", b"", PB))
            st, _, body = c.read_response()
            refused += st == 503 and b"too many connections" in body
            c.close()
        assert refused == 6, refused
        assert g.metric("otlp_gateway_connections_rejected_total") == 6
    finally:
        for c in conns:
            c.close()
        g.stop()


def test_second_gateway_cannot_share_the_port():
    g = Gateway(two_workers(gateway_config()), name="wport1.yaml")
    try:
        text = two_workers(gateway_config()).replace('listen: "127.0.0.1:0"\n  workers',
                                                     'listen: "127.0.0.1:%d"\n  workers' % g.port, 1)
        path = write_config(text, "wport2.yaml")
        r = subprocess.run([args().gateway, "--config", path], capture_output=True, text=True, timeout=20)
        assert r.returncode == 1, (r.returncode, r.stderr[-500:])
        assert "cannot listen on 127.0.0.1:%d: address already in use" % g.port in r.stderr, r.stderr[-500:]
        assert http_request(g.port, "POST", "/v1/traces", b"", PB)[0] == 200  # the first one is untouched
    finally:
        g.stop()


def test_failover_reload_and_drain_in_every_worker():
    """Two workers under load: a sink is killed and restarted, a 4th is added by SIGHUP, and SIGTERM drains
    what was queued; every acknowledged span arrives."""
    pool = Pool("wfail", n=4)
    g = Gateway(resilient_config(pool.endpoints[:3], workers=2), name="wfail.yaml")
    victim = pool.sinks[0]
    try:
        wait_ring(g, 3)
        load = start_load(g, "wfail", "7s")
        load.at(1.5)
        victim.kill()
        g.wait_metric(up_metric(victim.endpoint), lambda v: v == 0, timeout=3)  # down in at least one worker
        load.at(3.0)
        victim.restart()
        g.wait_metric(up_metric(victim.endpoint), lambda v: v == 1, timeout=3)  # up in both
        write_config(resilient_config(pool.endpoints, workers=2), "wfail.yaml")
        g.signal(signal.SIGHUP)
        wait_ring(g, 4, timeout=3)
        for w in (0, 1):
            g.wait_line(r'msg="config reloaded" path=\S+ backends=4 worker=%d' % w)
        res = load.result()
        print("    load: " + result_line(res))
        assert res["errors"] == 0 and res["ok"] == res["requests"], result_line(res)
        wait_drained(g)
        check_accounting("workers_failover_reload", [load.acked_file], pool.files, [res])
        # SIGTERM with something queued in both workers: every sink answers 503 for a moment
        load2 = start_load(g, "wterm", "3s", seed=5)
        load2.at(1.0)
        for s in pool.sinks:
            s.control(status=503)
        load2.at(1.6)
        t = time.time()
        g.signal(signal.SIGTERM)
        time.sleep(0.3)
        for s in pool.sinks:
            s.control(status=200)
        rc = g.wait(timeout=12)
        res2 = load2.result()
        print("    SIGTERM: exit %d after %.2f s; load: %s" % (rc, time.time() - t, result_line(res2)))
        assert rc == 0
        check_accounting("workers_sigterm", [load.acked_file, load2.acked_file], pool.files, [res, res2])
    finally:
        g.stop()
        pool.stop()


run_tests(globals())
