"""Fault injection: the real gateway in front of real otlp-sink processes that are killed, restarted, made to
answer 503, turned into black holes (GET /control?hang=1), added by a config reload or by DNS, while otlp-load
sends a paced stream of traces through it.

The core check of every scenario is the accounting: otlp-load records every trace it got a 2xx for (acked),
every sink records every trace it received (delivered). After the gateway's queues are empty, no
acknowledged span may be missing (lost == 0); duplicates are allowed (at-least-once). Each scenario prints
   scenario=<name> acked_spans=.. delivered_spans=.. lost=.. duplicates=..
Only 127.0.0.x addresses are used; every process stops by itself or is killed at exit (harness)."""
import os
import re
import signal
import socket
import struct
import subprocess
import time

from harness import (FAST_HEALTH, FAST_RETRY, TMP, Conn, Gateway, Proc, Sink, build_request, fresh,
                     http_request, read_traces, resilient_config, run_tests, trace_request, wait_until, write_config)

from faults import (Pool, check_accounting, count_lines, probe_load, result_line, start_load, up_metric,  # noqa: E402
                    wait_drained, wait_ring)

HEALTH = FAST_HEALTH
RETRY = FAST_RETRY
RSS_LIMIT_MIB = 256
resilience_config = resilient_config


def no_answer_within(conn, seconds):
    conn.s.settimeout(seconds)
    try:
        data = conn.s.recv(65536)
    except socket.timeout:
        return True
    conn.buf += data
    return False


PB = {"Content-Type": "application/x-protobuf"}


# ---- the sink's control endpoint, which the scenarios rely on ---------------------------------------------

def test_sink_control():
    f = fresh(os.path.join(TMP, "control.sink.txt"))
    s = Sink("--trace-file", f, "--status", "502", "--retry-after", "7")
    try:
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
        assert no_answer_within(post, 0.7) and no_answer_within(health, 0.1)
        assert s.stats()["traces"]["requests"] == 1
        gone = Conn(s.port)
        gone.send(build_request("POST", "/v1/traces", trace_request(4, 2), PB))
        time.sleep(0.1)
        gone.close()
        state = s.control()
        assert state["held"] == 3 and state["held_total"] == 3, state
        state = s.control(hang=0)
        assert state["hang"] == 0 and state["held"] == 0, state
        assert post.read_response()[0] == 503 and health.read_response()[0] == 503
        assert sum(read_traces(f).values()) == 3  # held requests were never recorded
        # SIGTERM answers what is held, then the sink exits 0
        s.control(hang=1)
        post.send(build_request("POST", "/v1/traces", trace_request(4, 2), PB))
        wait_until(lambda: s.control()["held"], lambda v: v == 1, 2, "held requests")
        s.signal(signal.SIGTERM)
        post.s.settimeout(5)
        assert post.read_response()[0] == 503
        assert s.wait(timeout=5) == 0
    finally:
        s.stop()


# ---- scenarios -------------------------------------------------------------------------------------------

def test_kill_sink():
    """kill -9 one sink 2 s into an 8 s load, restart it on the same address at 5 s."""
    pool = Pool("kill")
    g = Gateway(resilience_config(pool.endpoints), name="kill.yaml")
    victim, survivors = pool.sinks[0], (1, 2)
    try:
        wait_ring(g, 3)
        load = start_load(g, "kill", "8s")
        load.at(0.5)
        n0 = [pool.distinct(i) for i in survivors]
        load.at(2.0)
        victim.kill()
        t_kill = time.time()
        n_kill = [pool.distinct(i) for i in survivors]
        g.wait_metric(up_metric(victim.endpoint), lambda v: v == 0, timeout=2.5)
        t_out = time.time()
        n_out = [pool.distinct(i) for i in survivors]
        load.at(5.0)
        n_back = [pool.distinct(i) for i in survivors]
        rate_before = (sum(n_kill) - sum(n0)) / (t_kill - load.t0 - 0.5)
        rate_during = (sum(n_back) - sum(n_out)) / (time.time() - t_out)
        print("    survivors' new traces/s: %.0f before the kill, %.0f while it was down" % (rate_before, rate_during))
        # the survivors took over the dead sink's share: 3/2 of their rate before (1.15: slack for pacing on a
        # loaded machine)
        assert rate_during >= 1.15 * rate_before, (rate_before, rate_during)
        victim.restart()
        lines_at_restart = count_lines(pool.files[0])
        g.wait_metric(up_metric(victim.endpoint), lambda v: v == 1, timeout=2.5)
        # one log line per state change: down (passive or by checks), up, and a ring rebuild each time
        ep = victim.endpoint.replace(".", r"\.")
        g.wait_line(r'msg="backend down" backend=%s reason="(passive ejection|health check failed)"' % ep)
        g.wait_line(r'msg="backend up" backend=%s reason="health check passed"' % ep)
        assert sum('msg="ring rebuilt" backends=2' in ln for ln in g.err) == 1, g.err[-8:]
        time.sleep(0.5)
        lines_after_up = count_lines(pool.files[0])
        res = load.result()
        print("    load: " + result_line(res))
        lines_end = count_lines(pool.files[0])
        assert lines_end > lines_after_up >= lines_at_restart, (lines_at_restart, lines_after_up, lines_end)
        res2, acked2 = probe_load(g, "kill.probe", pool, [0])
        wait_drained(g)
        check_accounting("kill_sink", [load.acked_file, acked2], pool.files, [res, res2])
    finally:
        rc = g.stop()
        pool.stop()
    assert rc == 0, "gateway exit code %s (a sanitizer report?)" % rc


def test_sink_503():
    """One sink answers 503 for 5 s with Retry-After: 1, then 200; then 503 for 5 s without Retry-After."""
    pool = Pool("s503")
    g = Gateway(resilience_config(pool.endpoints), name="s503.yaml")
    bad = pool.sinks[0]
    retries = 'otlp_gateway_retries_total{backend="%s"}' % bad.endpoint
    try:
        wait_ring(g, 3)
        load = start_load(g, "s503", "12s")
        load.at(0.5)
        assert bad.control(status=503, retry_after=1)["status"] == 503
        load.at(5.5)
        bad.control(status=200, retry_after=0)
        r1 = g.metric(retries)
        rejected1 = bad.stats()["rejected"]
        print("    with Retry-After: 1 -> %d retries, %d answered 503" % (r1, rejected1))
        assert r1 > 0, "no retries counted for the sink that answered 503 with Retry-After"
        load.at(6.0)
        bad.control(status=503, retry_after=0)
        load.at(11.0)
        bad.control(status=200)
        r2 = g.metric(retries)
        print("    without Retry-After -> %d more retries, %d answered 503"
              % (r2 - r1, bad.stats()["rejected"] - rejected1))
        assert r2 > r1, "no retries counted while the sink answered 503 without Retry-After"
        res = load.result()
        print("    load: " + result_line(res))
        wait_drained(g)
        check_accounting("sink_503", [load.acked_file], pool.files, [res])
    finally:
        rc = g.stop()
        pool.stop()
    assert rc == 0, "gateway exit code %s (a sanitizer report?)" % rc


def test_black_hole():
    """One sink accepts but never answers (hang=1) from 2 s into an 8 s load until after it."""
    pool = Pool("hole")
    g = Gateway(resilience_config(pool.endpoints), name="hole.yaml")
    hole = pool.sinks[0]
    try:
        wait_ring(g, 3)
        load = start_load(g, "hole", "8s")
        load.at(2.0)
        assert hole.control(hang=1)["hang"] == 1
        g.wait_metric(up_metric(hole.endpoint), lambda v: v == 0, timeout=3)
        rss = []
        while load.p.poll() is None:
            rss.append(g.rss_mib())
            time.sleep(0.25)
        res = load.result()
        rss.append(g.rss_mib())
        held_now = hole.control()["held"]
        state = hole.control(hang=0)
        print("    load: %s; the black hole held %d requests (%d still unanswered at hang=0); gateway max RSS %.1f MiB"
              % (result_line(res), state["held_total"], held_now, max(rss)))
        assert state["held_total"] > 0, "the black hole never received anything"
        assert max(rss) < RSS_LIMIT_MIB, "gateway RSS %.1f MiB" % max(rss)
        wait_drained(g)
        check_accounting("black_hole", [load.acked_file], pool.files, [res])
    finally:
        rc = g.stop()
        pool.stop()
    assert rc == 0, "gateway exit code %s (a sanitizer report?)" % rc


def test_all_down():
    """kill -9 every sink for 5 s during a 10 s load, then restart them all."""
    pool = Pool("alldown")
    g = Gateway(resilience_config(pool.endpoints), name="alldown.yaml")
    try:
        wait_ring(g, 3)
        load = start_load(g, "alldown", "10s")
        load.at(2.0)
        for s in pool.sinks:
            s.kill()
        load.at(7.0)
        for s in pool.sinks:
            s.restart()
        for s in pool.sinks:
            g.wait_metric(up_metric(s.endpoint), lambda v: v == 1, timeout=2.5)
        res = load.result()
        print("    load: " + result_line(res))
        assert res.get("status_503", 0) > 0, "no 503 while every backend was down: " + result_line(res)
        res2, acked2 = probe_load(g, "alldown.probe", pool, [0, 1, 2])
        wait_drained(g)
        check_accounting("all_down", [load.acked_file, acked2], pool.files, [res, res2])
    finally:
        rc = g.stop()
        pool.stop()
    assert rc == 0, "gateway exit code %s (a sanitizer report?)" % rc


def test_reload_add():
    """3 configured sinks and a 4th running; at 3 s the config lists 4 and SIGHUP reloads it; later a reload
    removes one of them under load."""
    pool = Pool("reload", n=4)
    g = Gateway(resilience_config(pool.endpoints[:3]), name="reload.yaml")
    new = pool.sinks[3]
    try:
        wait_ring(g, 3)
        load = start_load(g, "reload", "6s")
        load.at(3.0)
        write_config(resilience_config(pool.endpoints), "reload.yaml")
        g.signal(signal.SIGHUP)
        g.wait_metric(up_metric(new.endpoint), lambda v: v == 1, timeout=3)
        wait_ring(g, 4, timeout=3)
        g.wait_line(r'msg="backend added" backend=%s source=static' % new.endpoint.replace(".", r"\."))
        g.wait_line(r'msg="config reloaded" path=\S+ backends=4')
        res = load.result()
        print("    load across the reload: " + result_line(res))
        assert res["errors"] == 0 and res["ok"] == res["requests"], "non-2xx across the reload: " + result_line(res)
        load2 = start_load(g, "reload2", "3s", seed=2)
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
        load3 = start_load(g, "reload3", "4s", seed=3)
        load3.at(1.5)
        write_config(resilience_config(pool.endpoints[1:]), "reload.yaml")
        g.signal(signal.SIGHUP)
        wait_ring(g, 3, timeout=3)
        g.wait_line(r'msg="backend removed" backend=%s' % gone.endpoint.replace(".", r"\."))
        time.sleep(0.3)  # requests already in flight to it finish (they are not cut off)
        lines_after_removal = count_lines(pool.files[0])
        res3 = load3.result()
        print("    load across the removal: " + result_line(res3))
        assert res3["errors"] == 0 and res3["ok"] == res3["requests"], "non-2xx across the removal"
        wait_drained(g)
        assert count_lines(pool.files[0]) == lines_after_removal, "the removed sink still got traffic"
        assert g.metric_or_none(up_metric(gone.endpoint)) is None, "the removed backend is still in /metrics"
        check_accounting("reload_remove", [load.acked_file, load2.acked_file, load3.acked_file], pool.files,
                         [res, res2, res3])
    finally:
        rc = g.stop()
        pool.stop()
    assert rc == 0, "gateway exit code %s (a sanitizer report?)" % rc


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
            before = good.stats()["traces"]["requests"]
            c.send(build_request("POST", "/v1/traces", body, PB))
            if not no_answer_within(c, 0.5):  # the others wait for the black hole (request_timeout 30 s)
                refused = (i, c.read_response(), before)
                break
        assert refused, "40 requests were all admitted into a 64 KiB budget"
        i, (st, h, rbody), before = refused
        held = hole.control()["held"]
        print("    request %d refused (%d held by the black hole): %d %s" % (i, held, st, rbody[-60:]))
        assert st == 503 and h.get("retry-after") == "1" and b"queue full for backend " + hole.endpoint.encode() in rbody
        assert i >= 2 and held == i, (i, held)  # earlier requests were admitted and their parts are in flight
        time.sleep(0.3)
        assert good.stats()["traces"]["requests"] == before, "the refused request was partly forwarded"
        assert g.metric('otlp_gateway_requests_total{signal="traces",code="503"}') == 1
        g.wait_line(r'msg="queue full" backend=%s' % hole.endpoint.replace(".", r"\."))
    finally:
        for c in conns:
            c.close()
        hole.control(hang=0)
        rc = g.stop()
        pool.stop()
    assert rc == 0, "gateway exit code %s (a sanitizer report?)" % rc


def test_retry_gives_up_after_max_elapsed():
    """A part that never gets through is dropped after retry.max_elapsed and counted: by the retry loop (a
    backend answering 503) and by the sweep (a backend that is down with no ring to re-route to)."""
    failing = Sink("--status", "503")
    pool_cfg = resilience_config([failing.endpoint, DEAD := "http://127.0.0.1:1"])
    pool_cfg = pool_cfg.replace(RETRY, "{initial_interval: 50ms, max_interval: 200ms, max_elapsed: 1s}")
    pool_cfg = pool_cfg.replace("eject_after_failures: 3", "eject_after_failures: 1000")
    g = Gateway(pool_cfg, name="expire.yaml")
    try:
        # the dead backend leaves the ring at its first checks (fall: 2); the 503 one stays (its GET / is 200)
        g.wait_metric(up_metric(DEAD), lambda v: v == 0, timeout=5)
        st, _, _ = http_request(g.port, "POST", "/v1/traces", trace_request(30, 10), PB)
        assert st == 200, st  # queued for retry: acknowledged
        g.wait_metric('otlp_gateway_dropped_items_total{signal="traces",reason="expired"}', lambda v: v == 30,
                      timeout=10)
        wait_drained(g, timeout=5)
        assert g.metric('otlp_gateway_retries_total{backend="%s"}' % failing.endpoint) >= 3
        g.wait_line(r'msg="items dropped" reason=expired backend=%s' % failing.endpoint.replace(".", r"\."))
    finally:
        rc = g.stop()
        failing.stop()
    assert rc == 0, "gateway exit code %s (a sanitizer report?)" % rc
    # the sweep: the only backend refuses connections; its part waits in its queue with no ring, then expires
    cfg = resilience_config(["http://127.0.0.1:1"]).replace(RETRY, "{initial_interval: 50ms, max_interval: 200ms, "
                                                                   "max_elapsed: 1s}")
    g = Gateway(cfg, name="expire2.yaml")
    try:
        st, _, _ = http_request(g.port, "POST", "/v1/traces", trace_request(20, 4), PB)
        assert st == 200, st  # before the first failures eject it, the part is queued: acknowledged
        g.wait_metric(up_metric("http://127.0.0.1:1"), lambda v: v == 0, timeout=5)
        assert http_request(g.port, "POST", "/v1/traces", trace_request(20, 4), PB)[0] == 503  # no ring now
        g.wait_metric('otlp_gateway_dropped_items_total{signal="traces",reason="expired"}', lambda v: v == 20,
                      timeout=10)
        wait_drained(g, timeout=5)
    finally:
        rc = g.stop()
    assert rc == 0, "gateway exit code %s (a sanitizer report?)" % rc


def test_sigterm_deadline_drops_what_cannot_drain():
    """SIGTERM with a backend that keeps answering 503: the queue cannot drain, so at server.shutdown_timeout
    what is still queued is dropped, counted and logged, and the gateway still exits 0."""
    failing = Sink("--status", "503")
    cfg = resilient_config([failing.endpoint]).replace("shutdown_timeout: 10s", "shutdown_timeout: 1s")
    cfg = cfg.replace("eject_after_failures: 3", "eject_after_failures: 1000")
    g = Gateway(cfg, name="deadline.yaml")
    try:
        st, _, _ = http_request(g.port, "POST", "/v1/traces", trace_request(12, 3), PB)
        assert st == 200, st  # queued for retry
        g.wait_metric('otlp_gateway_retries_total{backend="%s"}' % failing.endpoint, lambda v: v >= 1)
        t = time.time()
        g.signal(signal.SIGTERM)
        rc = g.wait(timeout=10)
        took = time.time() - t
        print("    exit %d after %.2f s with a backend that never accepts" % (rc, took))
        assert rc == 0
        assert took >= 0.9, took  # it waited for the deadline before giving up (a lower bound only)
        g.wait_line(r'msg="items dropped" reason=shutdown backend=%s signal=traces items=12'
                    % failing.endpoint.replace(".", r"\."))
    finally:
        g.stop()
        failing.stop()


# ---- DNS -------------------------------------------------------------------------------------------------

def free_port(kind=socket.SOCK_STREAM, host="127.0.0.1"):
    s = socket.socket(socket.AF_INET, kind)
    s.bind((host, 0))
    port = s.getsockname()[1]
    s.close()
    return port


def dns_a(name, port, server="127.0.0.1"):
    """A records of name from the DNS server at server:port (a minimal stub query)."""
    qid = os.getpid() & 0xFFFF
    q = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    q += b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0" + struct.pack(">HH", 1, 1)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(1)
    try:
        s.sendto(q, (server, port))
        r = s.recv(4096)
    finally:
        s.close()
    _, _, qd, an, _, _ = struct.unpack(">HHHHHH", r[:12])
    i = 12
    for _ in range(qd):
        while r[i]:
            i += r[i] + 1
        i += 5
    out = []
    for _ in range(an):
        i += 2 if r[i] & 0xC0 == 0xC0 else len(r[i:].split(b"\0", 1)[0]) + 1
        typ, _, _, rdlen = struct.unpack(">HHIH", r[i:i + 10])
        i += 10
        if typ == 1 and rdlen == 4:
            out.append(socket.inet_ntoa(r[i:i + 4]))
        i += rdlen
    return sorted(out)


class Dnsmasq(Proc):
    """dnsmasq answering for *.test from a hosts file; kill -HUP re-reads it."""

    def __init__(self, hosts_file):
        # dnsmasq binds UDP and TCP on its port; an ephemeral port free for UDP can be some connection's TCP
        # port on a busy machine, so pick one free for both and try again if it was taken meanwhile.
        for attempt in range(5):
            self.port = free_dns_port()
            super().__init__(["/usr/sbin/dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv",
                              "--no-hosts", "--addn-hosts=" + hosts_file, "--listen-address=127.0.0.1",
                              "--bind-interfaces", "--port=%d" % self.port, "--local=/test/", "--pid-file=",
                              "--user=root",  # else it drops to nobody, who cannot read the private TMP
                              "--log-facility=-"])
            try:
                self.wait_line(r"read .* names")
                return
            except AssertionError:
                self.stop()
                if attempt == 4 or not any("Address already in use" in ln for ln in self.err):
                    raise


def free_dns_port():
    """A port on 127.0.0.1 free for both UDP and TCP right now."""
    while True:
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.bind(("127.0.0.1", 0))
        port = u.getsockname()[1]
        t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            t.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue
        finally:
            t.close()
            u.close()


def write_hosts(path, addrs, name="backends.test"):
    with open(path + ".tmp", "w") as f:
        f.writelines("%s %s\n" % (a, name) for a in addrs)
    os.replace(path + ".tmp", path)


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
    if not os.path.exists("/usr/sbin/dnsmasq"):
        raise AssertionError("/usr/sbin/dnsmasq missing (Debian package dnsmasq-base)")
    hosts = os.path.join(TMP, "dns.hosts")
    write_hosts(hosts, ["127.0.0.11", "127.0.0.12"])
    dns = Dnsmasq(hosts)
    pool, q = dns_pool("dns")
    g = None
    try:
        assert dns_a("backends.test", dns.port) == ["127.0.0.11", "127.0.0.12"]
        g = Gateway(resilience_config(dns={"hostname": "backends.test", "port": q, "interval": "500ms",
                                           "server": "127.0.0.1:%d" % dns.port}), name="dns.yaml")
        wait_ring(g, 2)
        load = start_load(g, "dns", "8s")
        load.at(1.0)
        write_hosts(hosts, ["127.0.0.11", "127.0.0.12", "127.0.0.13"])
        t = time.time()
        dns.signal(signal.SIGHUP)
        wait_until(lambda: dns_a("backends.test", dns.port), lambda v: len(v) == 3, 2, "dnsmasq after HUP")
        wait_ring(g, 3, timeout=3)
        print("    127.0.0.13 added: ring_backends 3 after %.2f s" % (time.time() - t))
        new = "http://127.0.0.13:%d" % q
        g.wait_metric(up_metric(new), lambda v: v is not None, timeout=1, what="backend_up of " + new)
        load.at(4.5)
        n13 = pool.distinct(2)
        assert n13 > 0, "the backend added by DNS received nothing"
        write_hosts(hosts, ["127.0.0.12", "127.0.0.13"])
        t = time.time()
        dns.signal(signal.SIGHUP)
        wait_until(lambda: dns_a("backends.test", dns.port), lambda v: len(v) == 2, 2, "dnsmasq after HUP")
        wait_ring(g, 2, timeout=3)
        print("    127.0.0.11 removed: ring_backends 2 after %.2f s" % (time.time() - t))
        res = load.result()
        print("    load: " + result_line(res))
        wait_drained(g)
        assert pool.distinct(2) > n13, "127.0.0.13 got nothing after 127.0.0.11 left"
        check_accounting("dns", [load.acked_file], pool.files, [res])
    finally:
        if g:
            g.stop()
        pool.stop()
        dns.stop()


def test_backend_name_survives_a_dead_resolver():
    """A backend given by name keeps serving, and stays backend_up 1, after its DNS server stops answering:
    connections and health checks (a new connection every 200 ms) take the cached address while the
    background refreshes (backends.dns.interval) time out. The name is served by a dnsmasq of the test's, which
    the gateway asks through the OTLP_GATEWAY_TEST_RESOLVERS hook (backend names otherwise use the system's
    resolver), then replaced by a UDP socket that never answers. A restart of the sink then makes the pool
    open new connections, still without a resolver."""
    if not os.path.exists("/usr/sbin/dnsmasq"):
        raise AssertionError("/usr/sbin/dnsmasq missing (Debian package dnsmasq-base)")
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
    silent = None
    try:
        g.wait_line(r'msg="backend name resolved" backend=%s address=127\.0\.0\.1 previous=none' % re.escape(ep))
        g.wait_metric(up_metric(ep), lambda v: v == 1)
        loads = [start_load(g, "name1", "1s")]
        results = [loads[0].result()]

        dns.p.kill()
        dns.p.wait()
        silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        wait_until(lambda: _try_bind(silent, dns.port), lambda ok: ok, 5, "binding the dead resolver's port")
        silent.settimeout(10)
        silent.recvfrom(512)  # the gateway asks the silent server now
        t = time.time()
        loads.append(start_load(g, "name2", "4s"))
        ups = []
        while loads[1].p.poll() is None:
            ups.append(g.metric(up_metric(ep)))
            time.sleep(0.1)
        results.append(loads[1].result())
        unanswered = 0
        silent.settimeout(0)
        try:
            while True:
                silent.recvfrom(512)
                unanswered += 1
        except (BlockingIOError, socket.timeout):
            pass
        print("    resolver silent for %.1f s: %d more queries unanswered, backend_up sampled %d times: %s"
              % (time.time() - t, unanswered, len(ups), sorted(set(ups))))
        assert unanswered >= 1, "the refreshes stopped"
        assert ups and all(v == 1 for v in ups), ups
        g.wait_line(r'msg="backend name resolution failed, keeping the last address" backend=%s address=127\.0\.0\.1'
                    % re.escape(ep))
        assert not any("backend down" in ln for ln in g.err), [ln for ln in g.err if "backend down" in ln]

        sink.kill()  # every connection goes; the pool and the checks connect anew, from the cache
        sink.restart()
        g.wait_metric(up_metric(ep), lambda v: v == 1, timeout=15)
        loads.append(start_load(g, "name3", "1s", seed=3))
        results.append(loads[2].result())
        assert results[2]["ok"] > 0, results[2]
        wait_drained(g)
        check_accounting("dead-resolver", [ld.acked_file for ld in loads], [sink_file], results)
    finally:
        assert g.stop() == 0
        sink.stop()
        dns.stop()
        if silent:
            silent.close()


def _try_bind(sock, port):
    try:
        sock.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False

def test_sigterm():
    """SIGTERM while data is queued: exit 0 within shutdown_timeout, nothing acknowledged lost.

    A single failing sink does not keep a queue: it is ejected after 3 failures and its queue re-routed to
    the others. So every sink answers 503 for 1 s (the gateway keeps what it acknowledged, queued), SIGTERM
    comes while they still do, and they recover 0.3 s into the shutdown: the queues must drain before exit."""
    pool = Pool("term")
    g = Gateway(resilience_config(pool.endpoints), name="term.yaml")
    try:
        wait_ring(g, 3)
        load = start_load(g, "term", "4s")
        load.at(1.0)
        for s in pool.sinks:
            s.control(status=503)
        load.at(2.0)
        queued = g.metric_sum("otlp_gateway_backend_queue_bytes")
        assert queued > 0, "nothing queued after every sink answered 503 for 1 s"
        t = time.time()
        g.signal(signal.SIGTERM)
        time.sleep(0.3)
        for s in pool.sinks:
            s.control(status=200)
        try:
            rc = g.wait(timeout=12)
        except subprocess.TimeoutExpired:
            raise AssertionError("the gateway did not exit within 12 s of SIGTERM")
        took = time.time() - t
        res = load.result()
        print("    %d bytes queued at SIGTERM; exit %d after %.2f s; load: %s" % (queued, rc, took, result_line(res)))
        assert rc == 0, "exit code %d; stderr: %s" % (rc, "\n".join(g.err[-5:]))
        assert took < 10.5, took
        check_accounting("sigterm", [load.acked_file], pool.files, [res])
    finally:
        rc = g.stop()
        pool.stop()
    assert rc == 0, "gateway exit code %s (a sanitizer report?)" % rc


run_tests(globals())
