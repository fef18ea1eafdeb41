"""server.workers > 1: several event loops in one process (gateway/workers). The real gateway with two worker
threads in front of real sinks: routing stays exact and whole-trace, both loops take connections, the
counters of all workers add up in one scrape, server.max_connections holds for the process, failover,
reload and drain work in every worker, a second gateway cannot silently share the port, a SIGHUP storm leaves
every worker on one config snapshot, and the probes answer while a worker is busy in a 64 MiB gunzip."""
import gzip
import os
import re
import signal
import subprocess
import threading
import time

from faults import check_accounting, result_line, start_load, up_metric, wait_acked, wait_ring
from harness import (TMP, WAIT, Conn, Gateway, Pool, Sink, args, build_request, field, fresh, gateway_config,
                     http_request, read_traces, resilient_config, run_load, run_tests, wait_drained, wait_until,
                     write_config)

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
    g.wait_line(r'msg="workers running" workers=2 ingest_port=%d' % g.port)
    acked_file = fresh(os.path.join(TMP, "w2.acked.txt"))
    res, out = run_load("http://127.0.0.1:%d" % g.port, "--requests", "1500", "--spans", "100", "--traces",
                        "10", "--connections", "16", "--trace-file", acked_file)
    assert res["ok"] == 1500, out
    per_sink = [read_traces(f) for f in pool.files]
    owners = {}
    for i, c in enumerate(per_sink):
        for t in c:
            assert t not in owners, "trace %s split over sinks %d and %d" % (t, owners[t], i)
            owners[t] = i
    acked = read_traces(acked_file, strict=True)
    delivered = {t: n for c in per_sink for t, n in c.items()}
    assert delivered == dict(acked), "delivered spans differ from acknowledged ones"
    # one scrape sums both workers' counters
    assert g.metric('otlp_gateway_received_items_total{protocol="http",signal="traces"}') == 150000
    assert sum(g.metric('otlp_gateway_backend_items_total{backend="%s",signal="traces"}' % e)
               for e in pool.endpoints) == 150000
    assert g.metric('otlp_gateway_requests_total{protocol="http",signal="traces",code="200"}') == 1500
    ticks = worker_cpu_ticks(g.p.pid)
    print("    spans per sink %s; worker CPU ticks %s" % ([sum(c.values()) for c in per_sink], ticks))
    assert sorted(ticks) == ["otlpgw-w0", "otlpgw-w1"] and all(v > 0 for v in ticks.values()), ticks


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


def test_second_gateway_cannot_share_the_port():
    g = Gateway(two_workers(gateway_config()), name="wport1.yaml")
    text = two_workers(gateway_config()).replace('listen: "127.0.0.1:0"\n  workers',
                                                 'listen: "127.0.0.1:%d"\n  workers' % g.port, 1)
    path = write_config(text, "wport2.yaml")
    r = subprocess.run([args().gateway, "--config", path], capture_output=True, text=True, timeout=WAIT)
    assert r.returncode == 1, (r.returncode, r.stderr[-500:])
    assert "cannot listen on 127.0.0.1:%d: address already in use" % g.port in r.stderr, r.stderr[-500:]
    assert http_request(g.port, "POST", "/v1/traces", b"", PB)[0] == 200  # the first one is untouched


def test_failover_reload_and_drain_in_every_worker():
    """Two workers under load: a sink is killed and restarted, a 4th is added by SIGHUP, and SIGTERM drains
    what was queued; every acknowledged span arrives."""
    pool = Pool("wfail", n=4)
    g = Gateway(resilient_config(pool.endpoints[:3], workers=2), name="wfail.yaml")
    victim = pool.sinks[0]
    wait_ring(g, 3)
    load = start_load(g, "wfail")
    wait_acked(g, 100)
    victim.kill()
    g.wait_metric(up_metric(victim.endpoint), lambda v: v == 0)  # down in at least one worker
    wait_acked(g, 100, what="trace requests acknowledged with the victim down")
    victim.restart()
    g.wait_metric(up_metric(victim.endpoint), lambda v: v == 1)  # up in both
    write_config(resilient_config(pool.endpoints, workers=2), "wfail.yaml")
    g.signal(signal.SIGHUP)
    wait_ring(g, 4)
    for w in (0, 1):
        g.wait_line(r'msg="config reloaded" path=\S+ backends=4 generation=2 worker=%d' % w)
    wait_acked(g, 100, what="trace requests acknowledged after the reload")
    res = load.stop()
    print("    load: " + result_line(res))
    assert res["errors"] == 0 and res["ok"] == res["requests"], result_line(res)
    wait_drained(g)
    check_accounting("workers_failover_reload", [load.acked_file], pool.files, [res])
    # SIGTERM with something queued: every sink answers 503 until the gateway holds queued bytes
    load2 = start_load(g, "wterm", seed=5)
    wait_acked(g, 100)
    for s in pool.sinks:
        s.control(status=503)
    wait_until(lambda: g.metric_sum("otlp_gateway_backend_queue_bytes"), lambda v: v > 0, WAIT,
               "bytes queued while every sink answers 503")
    g.signal(signal.SIGTERM)
    # Draining (every sink still answers 503, so the queues cannot empty): not ready any more, but alive.
    g.wait_line(r'msg="draining retry queues" bytes=\d+')
    st, _, body = http_request(g.telemetry_port, "GET", "/readyz")
    assert (st, body) == (503, b"not ready: shutting down\n"), (st, body)
    st, _, body = http_request(g.telemetry_port, "GET", "/healthz")
    assert (st, body) == (200, b"ok\n"), (st, body)
    for s in pool.sinks:
        s.control(status=200)
    rc = g.wait()
    res2 = load2.stop()
    print("    SIGTERM: exit %d; load: %s" % (rc, result_line(res2)))
    assert rc == 0
    gave_up = g.lines(r"shutdown deadline reached|not drained by the shutdown deadline|items dropped")
    assert not gave_up, gave_up  # drained, not cut off at shutdown_timeout
    check_accounting("workers_sigterm", [load.acked_file, load2.acked_file], pool.files, [res, res2])


# ---- SIGHUP: one config snapshot for every worker ----------------------------------------------------------

RELOADED = re.compile(r'msg="config reloaded" path=\S+ (?:backends=(\d+) )?generation=(\d+)'
                      r'(?: workers=(\d+))?(?: worker=(\d+))?$')


def reload_lines(g):
    """Every "config reloaded" line so far as (worker or None for the main thread's, generation, backends)."""
    with g._cv:
        lines = list(g.err)
    out = []
    for ln in lines:
        m = RELOADED.search(ln)
        if m:
            out.append((None if m.group(4) is None else int(m.group(4)), int(m.group(2)),
                        None if m.group(1) is None else int(m.group(1))))
    return out


def lines_matching(g, pattern):
    with g._cv:
        return [ln for ln in g.err if re.search(pattern, ln)]


def snapshot_state(g, n_workers):
    """(main thread's last generation, {worker: (last generation, backends)}), checking on the way that each
    worker's generations only grow and that every worker that ran a generation saw the same backend count."""
    main_last, last, by_gen = 0, {}, {}
    for w, gen, backends in reload_lines(g):
        if w is None:
            assert gen > main_last, "main thread generations not increasing: %d after %d" % (gen, main_last)
            main_last = gen
            continue
        assert w < n_workers, w
        assert gen > last.get(w, (0, 0))[0], "worker %d went from generation %d to %d" % (w, last[w][0], gen)
        assert gen <= main_last, "worker %d on generation %d before the main thread made it" % (w, gen)
        last[w] = (gen, backends)
        assert by_gen.setdefault(gen, backends) == backends, "generation %d: backends %d and %d" % (
            gen, by_gen[gen], backends)
    return main_last, last


def put_config(path, text):
    """Replaces the file atomically: a reader sees the old file or the new one, never half of one."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def test_sighup_storm_leaves_every_worker_on_one_snapshot():
    """30 SIGHUPs while a thread keeps rewriting the file between two backend lists (2 and 1 backends), then a
    final file (3 backends) and one more SIGHUP: every worker ends on the main thread's last generation, each
    generation has one backend count in every worker, traces are whole on the final ring and none is lost;
    a bad file is logged once, by the main thread, and changes nothing. Each SIGHUP is sent once the main
    thread has logged the one before (signals sent while one is pending merge into one), so the generation
    every step makes is known: 2..31 for the storm, 32 for the final file."""
    n_workers = 2
    pool = Pool("wstorm", n=3)
    e = pool.endpoints
    lists = ([e[0], e[1]], [e[2]])
    # Default health checks (2 s, fall 3): on a loaded machine faster ones can eject a healthy sink during the
    # load below, and a re-routed trace is split for a reason that is not the one under test.
    conf = lambda endpoints: two_workers(gateway_config(backends=endpoints))
    g = Gateway(conf(lists[0]), name="wstorm.yaml")
    path = g.config_path
    wait_ring(g, 2)
    stop, writes = threading.Event(), [0]

    def rewrite():
        while not stop.is_set():
            writes[0] += 1
            put_config(path, conf(lists[writes[0] % 2]))
            time.sleep(0.001)

    t = threading.Thread(target=rewrite, daemon=True)
    t.start()
    try:
        for gen in range(2, 32):
            g.signal(signal.SIGHUP)
            g.wait_line(r'msg="config reloaded" path=\S+ generation=%d workers=%d$' % (gen, n_workers))
            w = writes[0]  # the rewriting thread's turn: the next SIGHUP after it has written again
            wait_until(lambda: writes[0], lambda v: v > w, WAIT, "rewrites of the config file")
    finally:
        stop.set()
        t.join(timeout=10)
    put_config(path, conf(e))
    g.signal(signal.SIGHUP)

    # Every worker on generation 32, the final file's (3 backends), which the main thread made last.
    main_last, last = wait_until(lambda: snapshot_state(g, n_workers), lambda v: v[0] == 32 and len(
        v[1]) == n_workers and all(gen == 32 and b == 3 for gen, b in v[1].values()), WAIT,
        "every worker on the main thread's last generation")
    applied = {w: sum(1 for x, _, _ in reload_lines(g) if x == w) for w in range(n_workers)}
    seen = sorted({b for w, gen, b in reload_lines(g) if w is not None and gen < 32})
    print("    storm: %d file rewrites, generations 2..%d made, reloads applied per worker %s, backend counts "
          "seen %s" % (writes[0], main_last, applied, seen))
    assert seen == [1, 2], "the storm did not alternate the backend lists: it tested little (%s)" % seen
    for ep in e:
        g.wait_metric(up_metric(ep), lambda v: v == 1)  # in every worker's ring
    wait_ring(g, 3)
    acked_file = fresh(os.path.join(TMP, "wstorm.acked.txt"))
    res, out = run_load("http://127.0.0.1:%d" % g.port, "--requests", "400", "--rate", "400", "--spans", "50",
                        "--traces", "10", "--connections", "8", "--trace-file", acked_file)
    assert res["ok"] == 400 and res["errors"] == 0, out
    owners = {}
    per_sink = [read_traces(f) for f in pool.files]
    for i, c in enumerate(per_sink):
        for tr in c:
            assert tr not in owners, "trace %s split over sinks %d and %d; %s" % (
                tr, owners[tr], i, lines_matching(g, r"backend (down|up)|request failed")[-10:])
            owners[tr] = i
    acked = read_traces(acked_file)
    delivered = {tr: n for c in per_sink for tr, n in c.items()}
    assert len(acked) == 4000 and delivered == dict(acked), (len(acked), len(delivered))
    print("    after the storm: %d traces, spans per sink %s, none split, none lost"
          % (len(acked), [sum(c.values()) for c in per_sink]))
    assert snapshot_state(g, n_workers)[1] == last, "a reload after the settled one"

    # A bad file: one line from the main thread, no worker line, no new generation; the next good file
    # is the very next generation.
    failed_before = len(lines_matching(g, r"config reload failed"))
    put_config(path, "server: [\n")
    g.signal(signal.SIGHUP)
    g.wait_line(r'msg="config reload failed, keeping the running config" error=')
    put_config(path, conf(e))
    g.signal(signal.SIGHUP)
    wait_until(lambda: snapshot_state(g, n_workers), lambda v: all(
        gen == main_last + 1 for gen, _ in v[1].values()), WAIT, "every worker on the generation after the bad file")
    failed = lines_matching(g, r"config reload failed")[failed_before:]
    assert len(failed) == 1 and "worker=" not in failed[0], failed
    assert snapshot_state(g, n_workers)[0] == main_last + 1


# ---- probes that never wait for a busy worker ------------------------------------------------------------

def big_trace_request(plain_mib=60):
    """An ExportTraceServiceRequest of about plain_mib MiB: one resource, one scope, spans of 1 KiB in two
    traces (first half, second half), so it gzips to a few hundred KiB and routes to one or two backends."""
    span = lambda tid, i: field(2, 2, field(1, 2, tid) + field(2, 2, bytes([i]) * 8) + field(5, 2, b"x" * 1000))
    n = plain_mib * 1024 // 2
    spans = span(b"\xa1" * 16, 1) * n + span(b"\xb2" * 16, 2) * n
    scope = field(1, 2, field(1, 2, b"scope"))
    rs = field(1, 2, field(1, 2, field(1, 2, b"service.name") + field(2, 2, field(1, 2, b"big")))) + field(
        2, 2, scope + spans)
    return field(1, 2, rs), 2 * n


def test_probes_answer_while_a_worker_gunzips_64mib():
    """Two workers, real sinks: while one ingest request whose gzip body decompresses to 60 MiB is being
    processed, /healthz and /readyz are asked over and over on the main thread's telemetry listener, and
    /metrics beside them. Every probe answers 200; some answer before the big request does; and some answer
    while a /metrics asked before them still waits for the busy worker's scrape (the main loop never waits
    for a worker)."""
    files = [fresh(os.path.join(TMP, "wbig.sink%d.txt" % i)) for i in range(2)]
    sinks = [Sink("--max-body", "128MiB", "--trace-file", f) for f in files]
    g = Gateway(two_workers(gateway_config(backends=[s.endpoint for s in sinks], max_request_bytes="80MiB")),
                name="wbig.yaml")
    plain, n_spans = big_trace_request()
    body = gzip.compress(plain, compresslevel=6)
    print("    big request: %.1f MiB of protobuf (%d spans), %.0f KiB gzipped"
          % (len(plain) / 2**20, n_spans, len(body) / 1024.0))
    try:
        g.wait_line(r'msg="workers running" workers=2')
        for path in ("/healthz", "/readyz"):
            assert http_request(g.telemetry_port, "GET", path)[0] == 200, path
        big = {}
        asked = []  # (path, sent, answered, status), by every asking thread
        done = threading.Event()

        def send_big():
            c = Conn(g.port, timeout=60)
            try:
                c.send(build_request("POST", "/v1/traces", body, {"Content-Type": "application/x-protobuf",
                                                                 "Content-Encoding": "gzip"}))
                big["sent"] = time.monotonic()
                big["status"] = c.read_response()[0]
                big["answered"] = time.monotonic()
            finally:
                c.close()
                done.set()

        def ask(paths):
            i, until = 0, None
            while until is None or time.monotonic() < until:
                if done.is_set() and until is None:
                    until = time.monotonic() + 0.2  # a few more after the big answer
                t0 = time.monotonic()
                st = http_request(g.telemetry_port, "GET", paths[i % len(paths)])[0]
                asked.append((paths[i % len(paths)], t0, time.monotonic(), st))
                i += 1

        askers = [threading.Thread(target=ask, args=(p,), daemon=True)
                  for p in (("/healthz", "/readyz"), ("/metrics",))]
        for t in askers:
            t.start()
        wait_until(lambda: {a[0] for a in asked}, lambda v: len(v) == 3, WAIT, "paths the askers got answers for")
        bt = threading.Thread(target=send_big, daemon=True)
        bt.start()
        bt.join(timeout=2 * WAIT)
        for t in askers:
            t.join(timeout=WAIT)
        assert big.get("status") == 200, big
        bad = [a for a in asked if a[3] != 200]
        assert not bad, bad[:5]
        probes = [a for a in asked if a[0] != "/metrics"]
        scrapes = [a for a in asked if a[0] == "/metrics"]
        during = [p for p in probes if p[1] >= big["sent"] and p[2] < big["answered"]]
        # A probe sent after a /metrics request and answered before it (each by a margin, so that it is not the
        # order in which the requests happened to arrive): that scrape was still waiting for a worker (the busy
        # one) while the main thread answered the probe. With a main loop that waits for the scrape, none can.
        margin = 0.005
        overtook = [p for p in during if any(m[1] + margin < p[1] and p[2] + margin < m[2] for m in scrapes)]
        ms = lambda ps, path: sorted((a - s) * 1000 for p, s, a, _ in ps if p == path)
        for path in ("/healthz", "/readyz", "/metrics"):
            all_ms, during_ms = ms(asked, path), ms(during if path != "/metrics" else [
                m for m in scrapes if m[1] >= big["sent"] and m[2] < big["answered"]], path)
            print("    %s: %d asked, %d sent and answered while the big request was unanswered; latency ms: "
                  "max %.1f then, median %.1f and max %.1f over all" % (
                      path, len(all_ms), len(during_ms), during_ms[-1] if during_ms else -1,
                      all_ms[len(all_ms) // 2], all_ms[-1]))
        print("    big request answered %.0f ms after its body was sent; %d probes answered while an earlier "
              "/metrics still waited" % ((big["answered"] - big["sent"]) * 1000, len(overtook)))
        assert during, "no probe answered while the big request was being processed"
        assert overtook, "no probe answered while a /metrics asked before it waited for the busy worker"
        wait_until(lambda: sum(sum(read_traces(f).values()) for f in files), lambda v: v == n_spans, WAIT,
                   "spans of the big request at the sinks")
    finally:
        done.set()


run_tests(globals())
