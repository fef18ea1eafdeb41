"""Fault injection: the real gateway in front of real otlp-sink processes that are killed, restarted, made to
answer 503, turned into black holes (GET /control?hang=1), added by a config reload or by DNS, while otlp-load
sends a paced stream of traces through it.

The core check of every scenario is the accounting: otlp-load records every trace it got a 2xx for (acked),
every sink records every trace it received (delivered). After the gateway's queues are empty, no
acknowledged span may be missing (lost == 0); duplicates are allowed (at-least-once). Each scenario prints
   scenario=<name> acked_spans=.. delivered_spans=.. lost=.. duplicates=..
A scenario moves from one phase to the next on events (requests acknowledged by the gateway, a backend_up
value, a log line, traces at a sink), never on the clock, and asserts outcomes, never speeds.
Only 127.0.0.x addresses are used; every process stops by itself or is killed at exit (harness)."""
import os
import re
import signal
import socket

from harness import (FAST_HEALTH, FAST_RETRY, TMP, WAIT, Conn, Gateway, Pool, Sink, build_request, delivery, fresh,
                     free_port, http_request, read_traces, resilient_config, run_tests, trace_request, wait_drained,
                     wait_until, write_config)
from faults import (ACKED, check_accounting, count_lines, probe_load, result_line, start_load, up_metric, wait_acked,
                    wait_ring, wait_refused)
from dnsmasq import Dnsmasq, dns_a, write_hosts

HEALTH = FAST_HEALTH
RETRY = FAST_RETRY
RSS_LIMIT_MIB = 256
resilience_config = resilient_config

PB = {"Content-Type": "application/x-protobuf"}


def held(sink, n, what="requests held by the black hole"):
    """Waits (bounded) until the sink in hang mode holds n requests."""
    return wait_until(lambda: sink.control()["held"], lambda v: v == n, WAIT, what)


def line_index(g, pattern):
    """Index of the first stderr line of g matching pattern (fails when there is none)."""
    rx = re.compile(pattern)
    for i, ln in enumerate(g.err):
        if rx.search(ln):
            return i
    raise AssertionError("no line matching %r; stderr tail:\n%s" % (pattern, "\n".join(g.err[-15:])))


# ---- the sink's control endpoint, which the scenarios rely on ---------------------------------------------

def test_sink_control():
    f = fresh(os.path.join(TMP, "control.sink.txt"))
    s = Sink("--trace-file", f, "--status", "502", "--retry-after", "7")
    assert s.control() == {"status": 502, "retry_after": 7, "hang": 0, "held": 0, "held_total": 0}
    st, h, _ = http_request(s.port, "POST", "/v1/traces", trace_request(3, 1), PB)
    assert st == 502 and h.get("retry-after") == "7", (st, h)
    assert s.control(status=503, retry_after=1)["status"] == 503
    st, h, _ = http_request(s.port, "POST", "/v1/traces", trace_request(3, 1), PB)
    assert st == 503 and h.get("retry-after") == "1", (st, h)
    s.control(retry_after=0)
    st, h, _ = http_request(s.port, "POST", "/v1/traces", trace_request(3, 1), PB)
    assert st == 503 and "retry-after" not in h, (st, h)
    for bad in ("bogus=1", "status=99", "status=600", "status=abc", "hang=2", "retry_after=-1", "status"):
        st, _, body = http_request(s.port, "GET", "/control?" + bad)
        assert st == 400 and b"error" in body, (bad, st, body)
    assert s.control()["status"] == 503  # a refused request changed nothing
    s.control(status=200)
    assert http_request(s.port, "POST", "/v1/traces", trace_request(3, 1), PB)[0] == 200
    assert sum(read_traces(f).values()) == 3
    # black hole: POSTs and health checks held, /stats and /control answered at once, nothing recorded
    assert s.control(hang=1)["hang"] == 1
    post, health = Conn(s.port), Conn(s.port)
    post.send(build_request("POST", "/v1/traces", trace_request(4, 2), PB))
    health.send(build_request("GET", "/"))
    held(s, 2)
    assert not post.answered() and not health.answered()
    assert s.stats()["traces"]["requests"] == 1
    gone = Conn(s.port)
    gone.send(build_request("POST", "/v1/traces", trace_request(4, 2), PB))
    held(s, 3)  # it has the request: the client going away now is the sink's to handle
    gone.close()
    state = s.control()
    assert state["held"] == 3 and state["held_total"] == 3, state
    state = s.control(hang=0)
    assert state["hang"] == 0 and state["held"] == 0, state
    # the first answer either held request gets is the release's 503 (a 200 would mean it was answered while
    # held)
    assert post.read_response()[0] == 503 and health.read_response()[0] == 503
    assert sum(read_traces(f).values()) == 3  # held requests were never recorded
    # SIGTERM answers what is held, then the sink exits 0
    s.control(hang=1)
    post.send(build_request("POST", "/v1/traces", trace_request(4, 2), PB))
    held(s, 1)
    s.signal(signal.SIGTERM)
    assert post.read_response()[0] == 503
    assert s.wait() == 0


# ---- scenarios -------------------------------------------------------------------------------------------

def check_rebuilds_follow_state_changes(g):
    """Every "ring rebuilt" line names the number of backends up at that point of the log (one loop: the log is in
    event order), there is no rebuild without a state change before it, and the last change has its rebuild.
    Robust to other backends flapping on a loaded machine (a health check timing out), unlike counting lines."""
    up, pending, rebuilds, changes = set(), False, 0, 0
    for ln in g.err:
        m = re.search(r'msg="backend (added|down|up)" backend=(\S+)', ln)
        if m:
            if m.group(1) == "down":
                up.discard(m.group(2))
            else:
                up.add(m.group(2))
            pending = m.group(1) != "added" or pending
            changes += m.group(1) != "added"
            continue
        m = re.search(r'msg="ring rebuilt" backends=(\d+)', ln)
        if m:
            assert int(m.group(1)) == len(up), ("ring rebuilt with %s backends while %d were up" % (m.group(1), len(up)),
                                                g.err[-12:])
            rebuilds += 1
            pending = False
    assert not pending, ("a state change without its ring rebuild", g.err[-12:])
    assert 2 <= rebuilds - 1 <= changes, (rebuilds, changes)  # the first rebuild is the start's


def test_kill_sink():
    """kill -9 one sink under load; while it is down, every trace of a load acknowledged meanwhile lands on
    the survivors; restarted on the same address it is taken back and gets traffic again."""
    pool = Pool("kill")
    g = Gateway(resilience_config(pool.endpoints), name="kill.yaml")
    victim, survivors = pool.sinks[0], (1, 2)
    wait_ring(g, 3)
    load = start_load(g, "kill")
    wait_acked(g, 100)
    wait_until(lambda: [pool.distinct(i) for i in range(3)], all, WAIT, "distinct traces per sink")
    victim.kill()
    g.wait_metric(up_metric(victim.endpoint), lambda v: v == 0)
    wait_ring(g, 2)
    # The dead sink's share goes to the survivors at once: a load acknowledged while it is down arrives there
    # whole, none of it waiting in a queue for the victim to come back.
    down = start_load(g, "kill.down", seed=5, requests=300)
    res_down = down.result()
    acked_down = read_traces(down.acked_file, strict=True)
    assert res_down["ok"] > 0, result_line(res_down)
    lost = wait_until(lambda: delivery(acked_down, [read_traces(pool.files[i]) for i in survivors])["lost"],
                      lambda v: v == 0, WAIT, "spans acknowledged while the victim was down, missing at the survivors")
    assert g.metric(up_metric(victim.endpoint)) == 0  # still down: all of that went to the survivors
    print("    while the victim was down: %d traces acknowledged, all %d spans at the survivors (lost %d)"
          % (len(acked_down), sum(acked_down.values()), lost))
    victim.restart()
    lines_at_restart = count_lines(pool.files[0])
    g.wait_metric(up_metric(victim.endpoint), lambda v: v == 1)
    # one log line per state change: down (passive or by checks), up, and a ring rebuild each time
    ep = re.escape(victim.endpoint)
    g.wait_line(r'msg="backend down" backend=%s reason="(passive ejection|health check failed)"' % ep)
    g.wait_line(r'msg="backend up" backend=%s reason="health check passed"' % ep)
    check_rebuilds_follow_state_changes(g)
    lines_after_up = count_lines(pool.files[0])
    assert lines_after_up >= lines_at_restart
    wait_until(lambda: count_lines(pool.files[0]), lambda v: v > lines_after_up, WAIT,
               "trace lines at the restarted sink, back in the ring")
    res = load.stop()
    print("    load: " + result_line(res))
    res2, acked2 = probe_load(g, "kill.probe", pool, [0])
    wait_drained(g)
    check_accounting("kill_sink", [load.acked_file, down.acked_file, acked2], pool.files, [res, res_down, res2])


def test_sink_503():
    """Under load one sink answers 503 with Retry-After: 1 until it has refused 10 more requests, then 200 until
    it gets traffic again; then 503 without Retry-After for 10 more. The gateway counts those answers as
    retryable outcomes (never as rejections: retried there, or re-routed once the sink is ejected; one in flight
    when the sink is ejected is cancelled and not counted) and loses nothing."""
    pool = Pool("s503")
    g = Gateway(resilience_config(pool.endpoints), name="s503.yaml")
    bad = pool.sinks[0]
    outcome = 'otlp_gateway_backend_requests_total{backend="%s",outcome="%s"}'
    retryable, rejected = outcome % (bad.endpoint, "retryable"), outcome % (bad.endpoint, "rejected")
    retries = 'otlp_gateway_retries_total{backend="%s"}' % bad.endpoint
    wait_ring(g, 3)
    load = start_load(g, "s503")
    wait_acked(g, 50)
    for phase, retry_after in (("with Retry-After: 1", 1), ("without Retry-After", 0)):
        r0, out0, rej0 = g.metric(retries), g.metric(retryable), bad.stats()["rejected"]
        assert bad.control(status=503, retry_after=retry_after)["status"] == 503
        wait_until(lambda: bad.stats()["rejected"], lambda v: v >= rej0 + 10, WAIT,
                   "requests the sink answered 503 %s" % phase)
        bad.control(status=200, retry_after=0)
        counted = g.wait_metric(retryable, lambda v: v >= out0 + 5, what="retryable outcomes counted %s" % phase) - out0
        sent = bad.stats()["rejected"] - rej0  # read after the gateway's count: the gateway cannot be ahead
        assert counted <= sent, ("more retryable outcomes than 503s", counted, sent)
        served = bad.stats()["traces"]["requests"]
        wait_until(lambda: bad.stats()["traces"]["requests"], lambda v: v >= served + 10, WAIT,
                   "requests the recovered sink accepted")
        print("    %s: %d answered 503, %d counted retryable; %d retries at it"
              % (phase, sent, counted, g.metric(retries) - r0))
    assert g.metric(rejected) == 0, "503 answers counted as rejections"
    res = load.stop()
    print("    load: " + result_line(res))
    wait_drained(g)
    assert g.metric('otlp_gateway_dropped_items_total{signal="traces",reason="rejected"}') == 0
    check_accounting("sink_503", [load.acked_file], pool.files, [res])


def test_black_hole():
    """One sink accepts but never answers (hang=1) while the load goes on through the others for 600 more
    acknowledged requests; the gateway's RSS stays bounded meanwhile."""
    pool = Pool("hole")
    g = Gateway(resilience_config(pool.endpoints), name="hole.yaml")
    hole = pool.sinks[0]
    wait_ring(g, 3)
    load = start_load(g, "hole")
    wait_acked(g, 50)
    assert hole.control(hang=1)["hang"] == 1
    g.wait_metric(up_metric(hole.endpoint), lambda v: v == 0)
    rss = [g.rss_mib()]

    def acked_sampling_rss():
        rss.append(g.rss_mib())
        return g.metric(ACKED)

    target = g.metric(ACKED) + 600
    wait_until(acked_sampling_rss, lambda v: v >= target, 4 * WAIT, "trace requests acknowledged past the hole")
    res = load.stop()
    rss.append(g.rss_mib())
    held_now = hole.control()["held"]
    state = hole.control(hang=0)
    print("    load: %s; the black hole held %d requests (%d still unanswered at hang=0); gateway max RSS %.1f MiB"
          % (result_line(res), state["held_total"], held_now, max(rss)))
    assert state["held_total"] > 0, "the black hole never received anything"
    assert max(rss) < RSS_LIMIT_MIB, "gateway RSS %.1f MiB" % max(rss)
    wait_drained(g)
    check_accounting("black_hole", [load.acked_file], pool.files, [res])


def test_all_down():
    """kill -9 every sink under load until the gateway has refused 20 requests, then restart them all."""
    pool = Pool("alldown")
    g = Gateway(resilience_config(pool.endpoints), name="alldown.yaml")
    wait_ring(g, 3)
    load = start_load(g, "alldown")
    wait_acked(g, 50)
    for s in pool.sinks:
        s.kill()
    wait_refused(g, 20, what="trace requests answered 503 while every backend is down")
    for s in pool.sinks:
        s.restart()
    for s in pool.sinks:
        g.wait_metric(up_metric(s.endpoint), lambda v: v == 1)
    wait_acked(g, 50, what="trace requests acknowledged after the recovery")
    res = load.stop()
    print("    load: " + result_line(res))
    assert res.get("status_503", 0) > 0, "no 503 while every backend was down: " + result_line(res)
    res2, acked2 = probe_load(g, "alldown.probe", pool, [0, 1, 2])
    wait_drained(g)
    check_accounting("all_down", [load.acked_file, acked2], pool.files, [res, res2])


def test_reload_add():
    """3 configured sinks and a 4th running; under load the config lists 4 and SIGHUP reloads it; later a reload
    removes one of them under load."""
    pool = Pool("reload", n=4)
    g = Gateway(resilience_config(pool.endpoints[:3]), name="reload.yaml")
    new = pool.sinks[3]
    wait_ring(g, 3)
    load = start_load(g, "reload")
    wait_acked(g, 100)
    write_config(resilience_config(pool.endpoints), "reload.yaml")
    g.signal(signal.SIGHUP)
    g.wait_metric(up_metric(new.endpoint), lambda v: v == 1)
    wait_ring(g, 4)
    g.wait_line(r'msg="backend added" backend=%s source=static' % re.escape(new.endpoint))
    g.wait_line(r'msg="config reloaded" path=\S+ backends=4')
    wait_acked(g, 100, what="trace requests acknowledged after the reload")
    res = load.stop()
    print("    load across the reload: " + result_line(res))
    assert res["errors"] == 0 and res["ok"] == res["requests"], "non-2xx across the reload: " + result_line(res)
    load2 = start_load(g, "reload2", seed=2, requests=900)
    res2 = load2.result()
    print("    load after the reload: " + result_line(res2))
    wait_drained(g)
    acked2 = set(read_traces(load2.acked_file))
    on_new = len(acked2 & set(read_traces(pool.files[3])))
    share = on_new / max(1, len(acked2))
    print("    the added sink holds %.1f%% of %d traces" % (100 * share, len(acked2)))
    assert abs(share - 0.25) <= 0.07, share
    check_accounting("reload_add", [load.acked_file, load2.acked_file], pool.files, [res, res2])
    # and removing one under load: its traffic moves to the others, no client sees an error
    gone = pool.sinks[0]
    load3 = start_load(g, "reload3", seed=3)
    wait_acked(g, 100)
    write_config(resilience_config(pool.endpoints[1:]), "reload.yaml")
    g.signal(signal.SIGHUP)
    wait_ring(g, 3)
    g.wait_line(r'msg="backend removed" backend=%s' % re.escape(gone.endpoint))
    # requests already in flight to it finish (they are not cut off); then it leaves /metrics
    g.wait_metric(up_metric(gone.endpoint), lambda v: v is None, what="the removed backend's series in /metrics")
    lines_after_removal = count_lines(pool.files[0])
    wait_acked(g, 100, what="trace requests acknowledged after the removal")
    res3 = load3.stop()
    print("    load across the removal: " + result_line(res3))
    assert res3["errors"] == 0 and res3["ok"] == res3["requests"], "non-2xx across the removal"
    wait_drained(g)
    assert count_lines(pool.files[0]) == lines_after_removal, "the removed sink still got traffic"
    assert g.metric_or_none(up_metric(gone.endpoint)) is None, "the removed backend is back in /metrics"
    check_accounting("reload_remove", [load.acked_file, load2.acked_file, load3.acked_file], pool.files,
                     [res, res2, res3])


def test_queue_full_refuses_whole_request():
    """Admission control: a backend that never answers fills its budget (queue.max_bytes counts bytes in flight
    and queued); the next request that has a part for it is refused whole with 503 + Retry-After, and its
    part for the healthy backend is not forwarded either."""
    pool = Pool("full", n=2)
    hole, good = pool.sinks
    cfg = resilience_config(pool.endpoints)
    cfg = cfg.replace("  health_check: " + HEALTH, "  health_check: {enabled: false, eject_after_failures: 1000}")
    cfg = cfg.replace("  request_timeout: 1s", "  request_timeout: 30s").replace("{max_bytes: 64MiB}",
                                                                             "{max_bytes: 64KiB}")
    g = Gateway(cfg, name="full.yaml")
    body = trace_request(250, 40)  # about 10 KB; both backends own some of these 40 traces
    conns = []
    try:
        hole.control(hang=1)
        refused = None
        for i in range(40):
            c = Conn(g.port)
            conns.append(c)
            c.send(build_request("POST", "/v1/traces", body, PB))
            # admitted: one part held by the black hole (the client waits for it, request_timeout 30 s) and one
            # accepted by the healthy sink; refused: answered at once
            wait_until(lambda: c.answered() or (hole.control()["held"], good.stats()["traces"]["requests"]) == (
                i + 1, i + 1), bool, WAIT, "request %d admitted (both parts forwarded) or refused" % i)
            if c.answered():
                refused = (i, c.read_response())
                break
        assert refused, "40 requests were all admitted into a 64 KiB budget"
        i, (st, h, rbody) = refused
        n_held = hole.control()["held"]
        print("    request %d refused (%d held by the black hole): %d %s" % (i, n_held, st, rbody[-60:]))
        assert st == 503 and h.get("retry-after") == "1" and b"queue full for backend " + hole.endpoint.encode() in rbody
        assert i >= 2 and n_held == i, (i, n_held)  # earlier requests were admitted and their parts are in flight
        # A marker behind it: a request of one trace the healthy backend owns (one it got earlier). Once the
        # marker has arrived there, a part of the refused request would have too: the healthy sink must have
        # exactly one request more, the marker.
        mine = sorted(read_traces(pool.files[1]))
        assert mine, "the healthy sink owns none of the 40 traces"
        marker = trace_request(2, 1, first_trace=int(mine[0][:2], 16))
        assert http_request(g.port, "POST", "/v1/traces", marker, PB)[0] == 200
        assert good.stats()["traces"]["requests"] == i + 1, "the refused request was partly forwarded"
        assert g.metric('otlp_gateway_requests_total{protocol="http",signal="traces",code="503"}') == 1
        g.wait_line(r'msg="queue full" backend=%s' % re.escape(hole.endpoint))
    finally:
        for c in conns:
            c.close()
        hole.control(hang=0)


def test_retry_gives_up_after_max_elapsed():
    """A part that never gets through is dropped after retry.max_elapsed and counted: by the retry loop (a
    backend answering 503) and by the sweep (a backend that is down with no ring to re-route to)."""
    failing = Sink("--status", "503")
    pool_cfg = resilience_config([failing.endpoint, DEAD := "http://127.0.0.1:1"])
    pool_cfg = pool_cfg.replace(RETRY, "{initial_interval: 50ms, max_interval: 200ms, max_elapsed: 1s}")
    pool_cfg = pool_cfg.replace("eject_after_failures: 3", "eject_after_failures: 1000")
    g = Gateway(pool_cfg, name="expire.yaml")
    # the dead backend leaves the ring at its first checks (fall: 2); the 503 one stays (its GET / is 200)
    g.wait_metric(up_metric(DEAD), lambda v: v == 0)
    st, _, _ = http_request(g.port, "POST", "/v1/traces", trace_request(30, 10), PB)
    assert st == 200, st  # queued for retry: acknowledged
    g.wait_metric('otlp_gateway_dropped_items_total{signal="traces",reason="expired"}', lambda v: v == 30)
    wait_drained(g)
    assert g.metric('otlp_gateway_retries_total{backend="%s"}' % failing.endpoint) >= 3
    g.wait_line(r'msg="items dropped" reason=expired backend=%s' % re.escape(failing.endpoint))
    assert g.stop() == 0
    # the sweep: the only backend refuses connections; its part waits in its queue with no ring, then expires
    cfg = resilience_config(["http://127.0.0.1:1"]).replace(RETRY, "{initial_interval: 50ms, max_interval: 200ms, "
                                                                   "max_elapsed: 1s}")
    g = Gateway(cfg, name="expire2.yaml")
    st, _, _ = http_request(g.port, "POST", "/v1/traces", trace_request(20, 4), PB)
    assert st == 200, st  # before the first failures eject it, the part is queued: acknowledged
    g.wait_metric(up_metric("http://127.0.0.1:1"), lambda v: v == 0)
    assert http_request(g.port, "POST", "/v1/traces", trace_request(20, 4), PB)[0] == 503  # no ring now
    g.wait_metric('otlp_gateway_dropped_items_total{signal="traces",reason="expired"}', lambda v: v == 20)
    wait_drained(g)


def test_sigterm_deadline_drops_what_cannot_drain():
    """SIGTERM with a backend that keeps answering 503: the queue cannot drain, so at server.shutdown_timeout
    what is still queued is dropped, counted and logged, and the gateway still exits 0."""
    failing = Sink("--status", "503")
    cfg = resilient_config([failing.endpoint]).replace("shutdown_timeout: 10s", "shutdown_timeout: 1s")
    cfg = cfg.replace("eject_after_failures: 3", "eject_after_failures: 1000")
    g = Gateway(cfg, name="deadline.yaml")
    st, _, _ = http_request(g.port, "POST", "/v1/traces", trace_request(12, 3), PB)
    assert st == 200, st  # queued for retry
    g.wait_metric('otlp_gateway_retries_total{backend="%s"}' % failing.endpoint, lambda v: v >= 1)
    g.signal(signal.SIGTERM)
    rc = g.wait()
    print("    exit %d with a backend that never accepts" % rc)
    assert rc == 0
    # it drained until the deadline, and only then gave up what was still queued
    order = [line_index(g, rx) for rx in (
        r'msg="shutting down" signal=SIGTERM', r'msg="draining retry queues" bytes=\d+',
        r'msg="shutdown deadline reached',
        r'msg="items dropped" reason=shutdown backend=%s signal=traces items=12' % re.escape(failing.endpoint),
        r'msg=stopped')]
    assert order == sorted(order) and len(set(order)) == len(order), ("log lines out of order", order)


# ---- DNS -------------------------------------------------------------------------------------------------

def dns_pool(name):
    """Sinks on 127.0.0.11, .12, .13, all on the same port."""
    for _ in range(20):
        port = free_port(host="127.0.0.11")
        try:
            return Pool(name, listens=["127.0.0.%d:%d" % (i, port) for i in (11, 12, 13)]), port
        except AssertionError:  # the port was taken on one of the addresses meanwhile: another
            continue
    raise AssertionError("no port free on 127.0.0.11-13")


def test_dns():
    hosts = os.path.join(TMP, "dns.hosts")
    write_hosts(hosts, ["127.0.0.11", "127.0.0.12"])
    dns = Dnsmasq(hosts)
    pool, q = dns_pool("dns")
    assert dns_a("backends.test", dns.port) == ["127.0.0.11", "127.0.0.12"]
    g = Gateway(resilience_config(dns={"hostname": "backends.test", "port": q, "interval": "500ms",
                                       "server": "127.0.0.1:%d" % dns.port}), name="dns.yaml")
    wait_ring(g, 2)
    load = start_load(g, "dns")
    wait_acked(g, 50)
    dns.reload(hosts, ["127.0.0.11", "127.0.0.12", "127.0.0.13"])
    wait_ring(g, 3)
    new = "http://127.0.0.13:%d" % q
    g.wait_metric(up_metric(new), lambda v: v is not None, what="backend_up of " + new)
    n13 = wait_until(lambda: pool.distinct(2), lambda v: v > 0, WAIT, "traces at the backend DNS added")
    dns.reload(hosts, ["127.0.0.12", "127.0.0.13"])
    wait_ring(g, 2)
    wait_until(lambda: pool.distinct(2), lambda v: v > n13, WAIT, "traces at 127.0.0.13 after 127.0.0.11 left")
    res = load.stop()
    print("    load: " + result_line(res))
    wait_drained(g)
    check_accounting("dns", [load.acked_file], pool.files, [res])


def test_backend_name_survives_a_dead_resolver():
    """A backend given by name keeps serving, and stays backend_up 1, after its DNS server stops answering:
    connections and health checks (a new connection every 200 ms) take the cached address while the
    background refreshes (backends.dns.interval) time out. The name is served by a dnsmasq of the test's, which
    the gateway asks through the OTLP_GATEWAY_TEST_RESOLVERS hook (backend names otherwise use the system's
    resolver), then replaced by a UDP socket that never answers. A restart of the sink then makes the pool
    open new connections, still without a resolver."""
    hosts = os.path.join(TMP, "name.hosts")
    write_hosts(hosts, ["127.0.0.1"], name="collector.test")
    dns = Dnsmasq(hosts)
    sink_file = fresh(os.path.join(TMP, "name.sink.txt"))
    sink = Sink("--trace-file", sink_file)
    ep = "http://collector.test:%d" % sink.port
    os.environ["OTLP_GATEWAY_TEST_RESOLVERS"] = "127.0.0.1:%d" % dns.port
    try:
        g = Gateway(resilience_config([ep]) + "  dns: {interval: 300ms}\n", name="name.yaml")
    finally:
        del os.environ["OTLP_GATEWAY_TEST_RESOLVERS"]
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        g.wait_line(r'msg="backend name resolved" backend=%s address=127\.0\.0\.1 previous=none' % re.escape(ep))
        g.wait_metric(up_metric(ep), lambda v: v == 1)
        loads = [start_load(g, "name1", requests=300)]
        results = [loads[0].result()]

        dns.p.kill()
        dns.p.wait()
        wait_until(lambda: _try_bind(silent, dns.port), lambda ok: ok, WAIT, "binding the dead resolver's port")
        silent.settimeout(WAIT)
        silent.recvfrom(512)  # the gateway asks the silent server now
        loads.append(start_load(g, "name2"))
        # While the resolver stays silent: 3 more refreshes go unanswered and 300 more requests are acknowledged;
        # backend_up is sampled all along.
        ups, unanswered = [], [0]
        silent.settimeout(0.1)

        def progress():
            try:
                silent.recvfrom(512)
                unanswered[0] += 1
            except socket.timeout:
                pass
            ups.append(g.metric(up_metric(ep)))
            return unanswered[0], g.metric(ACKED)

        target = g.metric(ACKED) + 300
        wait_until(progress, lambda v: v[0] >= 3 and v[1] >= target, 2 * WAIT,
                   "(unanswered refreshes, requests acknowledged) with the resolver silent")
        results.append(loads[1].stop())
        print("    resolver silent: %d more queries unanswered, backend_up sampled %d times: %s"
              % (unanswered[0], len(ups), sorted(set(ups))))
        assert ups and all(v == 1 for v in ups), ups
        g.wait_line(r'msg="backend name resolution failed, keeping the last address" backend=%s address=127\.0\.0\.1'
                    % re.escape(ep))
        assert not g.lines("backend down"), g.lines("backend down")

        sink.kill()  # every connection goes; the pool and the checks connect anew, from the cache
        sink.restart()
        g.wait_metric(up_metric(ep), lambda v: v == 1)
        loads.append(start_load(g, "name3", seed=3, requests=300))
        results.append(loads[2].result())
        assert results[2]["ok"] > 0, results[2]
        wait_drained(g)
        check_accounting("dead-resolver", [ld.acked_file for ld in loads], [sink_file], results)
    finally:
        silent.close()


def _try_bind(sock, port):
    try:
        sock.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False


def test_sigterm():
    """SIGTERM while data is queued: exit 0 once the queues drained (before shutdown_timeout), nothing
    acknowledged lost.

    A single failing sink does not keep a queue: it is ejected after 3 failures and its queue re-routed to
    the others. So every sink answers 503 under load until something is queued (the gateway keeps what it
    acknowledged), SIGTERM comes while they still do, and they recover once the gateway says it is draining:
    the queues must drain before exit."""
    pool = Pool("term")
    g = Gateway(resilience_config(pool.endpoints), name="term.yaml")
    wait_ring(g, 3)
    load = start_load(g, "term")
    wait_acked(g, 50)
    for s in pool.sinks:
        s.control(status=503)
    queued = wait_until(lambda: g.metric_sum("otlp_gateway_backend_queue_bytes"), lambda v: v > 0, WAIT,
                        "bytes queued while every sink answers 503")
    g.signal(signal.SIGTERM)
    g.wait_line(r'msg="draining retry queues" bytes=\d+')
    for s in pool.sinks:
        s.control(status=200)
    rc = g.wait()
    res = load.stop()
    print("    %d bytes queued at SIGTERM; exit %d; load: %s" % (queued, rc, result_line(res)))
    assert rc == 0, "exit code %d; stderr: %s" % (rc, "\n".join(g.err[-5:]))
    # it exited because the queues drained, not at the deadline (shutdown_timeout: 10s)
    gave_up = g.lines(r"shutdown deadline reached|not drained by the shutdown deadline|items dropped")
    assert not gave_up, gave_up
    line_index(g, r"msg=stopped")
    check_accounting("sigterm", [load.acked_file], pool.files, [res])


run_tests(globals())
