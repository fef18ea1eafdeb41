"""The backends.* and routing.* settings seen from real otlp-sink processes behind the real gateway, and what
SIGHUP does with them: routing.traces/logs service, weights (shares follow them), a health check on its own
port and path, reloads that must be refused (no backend, unreadable or broken file), reloads that change
weights, routing and logging, a reload that removes a backend whose retry queue is not empty, the
ring_rebuilds_total counter, and a DNS answer that drops a backend (its series leave /metrics).
Every gateway is stopped with SIGTERM and must exit 0."""
import json
import os
import re
import signal

from harness import TMP, Gateway, Sink, fresh, http_request, read_traces, run_tests, wait_until, write_config
from dnsmasq import Dnsmasq, write_hosts
from scenario import (PB, RecSink, backend_series, config, esc, logs_request, spans_by_trace, spans_request,
                      stop_ok, trace_id, value, wait_spans)

FAST = "{enabled: true, interval: 300ms, timeout: 300ms, rise: 1, fall: 3, eject_after_failures: 1000}"


def count_lines(g, pattern):
    rx = re.compile(pattern)
    return sum(1 for ln in list(g.err) if rx.search(ln))


def wait_lines(g, pattern, n, timeout=10):
    """Waits (bounded) until n stderr lines of g match pattern."""
    return wait_until(lambda: count_lines(g, pattern), lambda v: v >= n, timeout, "%d lines matching %r" % (n, pattern))


def rebuilds(g):
    return value(g, "otlp_gateway_ring_rebuilds_total")


def hup(g):
    """SIGHUP, once the gateway handles signals: it logs "listening" (what Gateway() waits for) before it
    installs its handlers, and "started" after; a SIGHUP in between would end it (the default action)."""
    g.wait_line(r"msg=started ")
    g.signal(signal.SIGHUP)


def reload(g, text):
    write_config(text, os.path.basename(g.config_path))
    hup(g)


def send(g, body, path="/v1/traces"):
    st, _, rbody = http_request(g.port, "POST", path, body, PB)
    assert st == 200, (st, rbody)


def owners(sinks, ids):
    """Sink indexes holding any of the trace IDs."""
    got = spans_by_trace(sinks)
    return {i for t in ids for i in got.get(t.hex(), {})}


# ---- routing ------------------------------------------------------------------------------------------------

def test_routing_service_traces_and_logs_and_its_reload():
    """routing.traces/logs trace_id (the default) spreads one service's traces over the backends; after a
    SIGHUP to `service`, all spans and log records of one service go to one backend (the same for both
    signals), and different services still spread."""
    log_files = [fresh(os.path.join(TMP, "svc.%d.logs.txt" % i)) for i in range(3)]
    sinks = [RecSink("svc.%d" % i, "--log-file", f) for i, f in enumerate(log_files)]
    g = Gateway(config([s.endpoint for s in sinks]), name="svc.yaml")
    try:
        ids = [trace_id(300, k) for k in range(30)]
        send(g, spans_request(ids, 2, service="one"))
        wait_spans(sinks, {i.hex(): 2 for i in ids})
        spread = owners(sinks, ids)
        assert len(spread) >= 2, "trace_id routing put 30 traces of one service on one backend"
        reload(g, config([s.endpoint for s in sinks], routing={"traces": "service", "logs": "service"}))
        g.wait_line(r'msg="config reloaded" .*generation=2')
        where = {}
        for n in range(12):
            svc = "svc-%d" % n
            ids = [trace_id(400 + n, k) for k in range(8)]
            send(g, spans_request(ids, 2, service=svc) + spans_request([trace_id(500 + n, 0)], 1, service=svc))
            send(g, logs_request([trace_id(600 + n, k) for k in range(8)], 2, service=svc), "/v1/logs")
            wait_spans(sinks, {i.hex(): 2 for i in ids})
            span_owners = owners(sinks, ids + [trace_id(500 + n, 0)])
            wait_until(lambda: sum(sum(read_traces(f).values()) for f in log_files), lambda v: v >= 16 * (n + 1),
                       10, "log records at the sinks")
            log_owners = {i for i, f in enumerate(log_files) for t in read_traces(f)
                          if t in {trace_id(600 + n, k).hex() for k in range(8)}}
            assert len(span_owners) == 1, (svc, span_owners)
            assert log_owners == span_owners, ("logs and spans of %s went different ways" % svc, log_owners,
                                               span_owners)
            where[svc] = span_owners.pop()
        print("    trace_id routing: one service over sinks %s; service routing: %s" % (sorted(spread), where))
        assert len(set(where.values())) >= 2, "12 services all on one backend"
    finally:
        stop_ok(g)
        for s in sinks:
            s.stop()


def shares(sinks, ids):
    got = spans_by_trace(sinks)
    n = [0] * len(sinks)
    for t in ids:
        for i in got.get(t.hex(), {}):
            n[i] += 1
    return [x / float(len(ids)) for x in n]


def weighted_batch(g, sinks, seed):
    ids = [trace_id(seed, k) for k in range(4000)]
    for r in range(0, len(ids), 200):
        send(g, spans_request(ids[r:r + 200], 1))
    wait_spans(sinks, {i.hex(): 1 for i in ids}, timeout=30)
    return shares(sinks, ids)


def test_weights_and_their_reload():
    """Weights 1 and 3: the second backend gets 3/4 of 4000 traces (+-0.05). A SIGHUP to 1 and 1 rebuilds the
    ring once and the shares follow; a SIGHUP with the same file rebuilds nothing."""
    sinks = [RecSink("weight.%d" % i) for i in range(2)]
    eps = [s.endpoint for s in sinks]
    g = Gateway(config(eps, weights=[1, 3]), name="weight.yaml")
    try:
        assert rebuilds(g) == 1
        sh = weighted_batch(g, sinks, 700)
        print("    weights 1:3 -> shares %.3f %.3f" % tuple(sh))
        assert abs(sh[1] - 0.75) <= 0.05, sh
        reload(g, config(eps, weights=[1, 1]))
        g.wait_line(r'msg="config reloaded" .*generation=2')
        g.wait_metric("otlp_gateway_ring_rebuilds_total", lambda v: v == 2, what="one rebuild for the new weights")
        sh = weighted_batch(g, sinks, 701)
        print("    weights 1:1 -> shares %.3f %.3f" % tuple(sh))
        assert abs(sh[1] - 0.5) <= 0.05, sh
        reload(g, config(eps, weights=[1, 1]))
        g.wait_line(r'msg="config reloaded" .*generation=3')
        assert rebuilds(g) == 2, "a reload that changes nothing rebuilt the ring"
    finally:
        stop_ok(g)
        for s in sinks:
            s.stop()


# ---- health checks ------------------------------------------------------------------------------------------

def test_health_check_on_its_own_port_and_path():
    """health_check.port/path: the checks go to that port and path (a sink of their own counts them), never to
    the backends' OTLP port; the backends are up or down as that port answers, and a configured path needs
    2xx (404 is down). Each change of the set of healthy backends rebuilds the ring."""
    data = [RecSink("hc.%d" % i) for i in range(2)]
    health = Sink()
    hc = FAST.replace("enabled: true", 'enabled: true, port: %d, path: "/ready"' % health.port)
    g = Gateway(config([s.endpoint for s in data], health=hc), name="hc.yaml")
    try:
        wait_until(lambda: health.stats()["gets"].get("/ready", 0), lambda v: v >= 6, 10, "checks at /ready")
        assert [s.stats()["gets"] for s in data] == [{}, {}], "a check went to a backend's own port"
        assert rebuilds(g) == 1
        health.control(health=503)
        g.wait_metric("otlp_gateway_ring_backends", lambda v: v == 0, what="both backends down")
        for s in data:
            assert value(g, backend_series("backend_up", s.endpoint)) == 0
        after_down = rebuilds(g)
        assert after_down >= 2, after_down
        assert http_request(g.telemetry_port, "GET", "/readyz")[0] == 503
        st, _, body = http_request(g.port, "POST", "/v1/traces", spans_request([trace_id(800, 0)], 1), PB)
        assert st == 503 and b"no backends available" in body, (st, body)
        health.control(health=404)
        n = health.stats()["gets"]["/ready"]
        wait_until(lambda: health.stats()["gets"]["/ready"], lambda v: v >= n + 6, 10, "checks answered 404")
        assert value(g, "otlp_gateway_ring_backends") == 0, "a 404 on a configured path counted as up"
        assert rebuilds(g) == after_down
        health.control(health=200)
        g.wait_metric("otlp_gateway_ring_backends", lambda v: v == 2, what="both backends up again")
        assert rebuilds(g) > after_down
        ids = [trace_id(801, k) for k in range(20)]
        send(g, spans_request(ids, 1))
        wait_spans(data, {i.hex(): 1 for i in ids})
        assert [s.stats()["gets"] for s in data] == [{}, {}]
    finally:
        stop_ok(g)
        health.stop()
        for s in data:
            s.stop()


def test_default_health_check_accepts_answers_below_500():
    """The default check (GET / on the backend's own port) counts any answer below 500 as up (an OTLP receiver
    has no page there), and 500 as down."""
    sinks = [RecSink("hcdef.%d" % i) for i in range(2)]
    g = Gateway(config([s.endpoint for s in sinks], health=FAST), name="hcdef.yaml")
    try:
        victim = sinks[0]
        victim.control(health=404)
        n = victim.stats()["gets"].get("/", 0)
        wait_until(lambda: victim.stats()["gets"].get("/", 0), lambda v: v >= n + 5, 10, "checks answered 404")
        assert value(g, backend_series("backend_up", victim.endpoint)) == 1
        assert rebuilds(g) == 1
        victim.control(health=500)
        g.wait_metric(backend_series("backend_up", victim.endpoint), lambda v: v == 0, what="down on 500")
        assert rebuilds(g) == 2
        g.wait_line(r'msg="backend down" backend=%s reason="health check failed" error=500' % esc(victim.endpoint))
    finally:
        stop_ok(g)
        for s in sinks:
            s.stop()


# ---- SIGHUP -------------------------------------------------------------------------------------------------

RELOAD_FAILED = r'level=error msg="config reload failed, keeping the running config" error='


def test_sighup_refuses_no_backend_unreadable_and_broken_files():
    """Each refused reload is one error line; the running backends, ring and generation stay; a good file
    afterwards is generation 2 (no generation used up by the refusals)."""
    sinks = [RecSink("hupbad.%d" % i) for i in range(3)]
    eps = [s.endpoint for s in sinks]
    g = Gateway(config(eps[:2]), name="hupbad.yaml")
    path = g.config_path
    try:
        cases = [
            ("no backend", lambda: write_config(config([]), os.path.basename(path)),
             r"%s: no backends: set backends.static or backends.dns.hostname" % re.escape(path)),
            ("missing file", lambda: os.unlink(path), re.escape(path)),
            ("a directory", lambda: os.mkdir(path), re.escape(path)),
            ("broken YAML", lambda: (os.rmdir(path), write_config("backends: [\n", os.path.basename(path))),
             r"%s:\d+:\d+: " % re.escape(path)),
            ("unknown key", lambda: write_config(config(eps).replace("backends:", "backends:\n  nope: 1"),
                                                 os.path.basename(path)), r"%s:\d+:\d+: " % re.escape(path)),
        ]
        for i, (what, make, err) in enumerate(cases):
            make()
            hup(g)
            wait_lines(g, RELOAD_FAILED, i + 1)
            line = [ln for ln in g.err if re.search(RELOAD_FAILED, ln)][-1]
            print("    %s: %s" % (what, line[line.index("error="):][:150]))
            assert re.search(err, line), (what, line)
            ids = [trace_id(900 + i, k) for k in range(20)]
            send(g, spans_request(ids, 1))
            wait_spans(sinks[:2], {t.hex(): 1 for t in ids})
            assert value(g, "otlp_gateway_ring_backends") == 2 and rebuilds(g) == 1
        assert count_lines(g, r'msg="config reloaded"') == 0
        assert not sinks[2].traces()
        reload(g, config(eps))
        g.wait_line(r'msg="config reloaded" path=\S+ backends=3 generation=2')
        g.wait_metric("otlp_gateway_ring_backends", lambda v: v == 3)
    finally:
        stop_ok(g)
        for s in sinks:
            s.stop()


def test_sighup_log_level_and_format():
    """log_level warn by SIGHUP silences info lines (the reload itself, the backend it adds); a reload back to
    info with log_format json logs JSON lines from then on."""
    sinks = [RecSink("huplog.%d" % i) for i in range(2)]
    eps = [s.endpoint for s in sinks]
    g = Gateway(config(eps[:1]), name="huplog.yaml")
    try:
        reload(g, config(eps, log_level="warn"))
        g.wait_metric("otlp_gateway_ring_backends", lambda v: v == 2, what="the added backend in the ring")
        # a refused reload logs an error line after them: once it is read, so is every line logged before it
        write_config("backends: [\n", os.path.basename(g.config_path))
        hup(g)
        g.wait_line(RELOAD_FAILED)
        added = r'backend added.*%s' % esc(eps[1])
        assert count_lines(g, added) == 0, "an info line at log_level warn"
        assert count_lines(g, r'config reloaded') == 0
        reload(g, config(eps[:1], log_level="info").replace('telemetry:\n', 'telemetry:\n  log_format: json\n'))
        m = wait_until(lambda: [ln for ln in g.err if ln.startswith("{") and '"config reloaded"' in ln],
                       lambda v: v, 10, "a JSON config reloaded line")
        rec = json.loads(m[0])
        print("    after the reload: " + m[0])
        assert rec["level"] == "info" and rec["generation"] == "3", rec
        line = wait_until(lambda: [ln for ln in g.err if '"backend removed"' in ln], lambda v: v, 10,
                          "a JSON backend removed line")[0]
        assert json.loads(line)["backend"] == eps[1], line
        assert count_lines(g, added) == 0
    finally:
        stop_ok(g)
        for s in sinks:
            s.stop()


def test_sighup_removes_a_backend_with_a_queue():
    """A backend answering 503 holds a retry queue (acknowledged data); a SIGHUP that removes it re-routes the
    queue: every span reaches the remaining backend, and the removed one's series leave /metrics."""
    good, bad = RecSink("hupq.good"), RecSink("hupq.bad")
    bad.control(status=503)
    retry = "{initial_interval: 100ms, max_interval: 1s, max_elapsed: 60s}"
    g = Gateway(config([good.endpoint, bad.endpoint], health=FAST, retry=retry), name="hupq.yaml")
    try:
        want = {}
        for r in range(6):
            ids = [trace_id(1000 + r, k) for k in range(30)]
            send(g, spans_request(ids, 2))
            want.update((t.hex(), 2) for t in ids)
        g.wait_metric(backend_series("retries_total", bad.endpoint), lambda v: v >= 2)
        queued = value(g, backend_series("backend_queue_bytes", bad.endpoint))
        assert queued > 0
        before = rebuilds(g)
        reload(g, config([good.endpoint], health=FAST, retry=retry))
        g.wait_line(r'msg="backend removed" backend=%s' % esc(bad.endpoint))
        wait_until(lambda: g.metric_sum("otlp_gateway_backend_queue_bytes"), lambda v: v == 0, 30, "queues empty")
        got = wait_spans([good], want)
        lost = sum(max(0, n - sum(got.get(t, {}).values())) for t, n in want.items())
        print("    %d bytes queued for the removed backend; %d traces sent, lost %d" % (queued, len(want), lost))
        assert lost == 0
        assert not bad.traces()
        text = g.metrics()
        assert 'backend="%s"' % bad.endpoint not in text, "the removed backend still has series"
        assert rebuilds(g) == before + 1
    finally:
        stop_ok(g)
        good.stop()
        bad.stop()


# ---- DNS ----------------------------------------------------------------------------------------------------

def dns_sinks(name, hosts):
    """Sinks on each of hosts (127.0.0.x), all on one port."""
    for _ in range(20):
        first = RecSink("%s.%s" % (name, hosts[0]), listen=hosts[0] + ":0")
        try:
            rest = [RecSink("%s.%s" % (name, h), listen="%s:%d" % (h, first.port)) for h in hosts[1:]]
            return [first] + rest, first.port
        except AssertionError:  # taken on another address meanwhile
            first.stop()
    raise AssertionError("no port free on all of %s" % hosts)


def test_dns_drop_removes_the_backend_series():
    """A DNS name with two addresses; the answer drops one: the ring is rebuilt once, and every series of the
    dropped backend leaves /metrics. No records at all (NXDOMAIN) removes every DNS backend."""
    addrs = ["127.0.0.41", "127.0.0.42"]
    hosts = os.path.join(TMP, "cfgdns.hosts")
    write_hosts(hosts, addrs, "collectors.test")
    dns = Dnsmasq(hosts)
    sinks, port = dns_sinks("cfgdns", addrs)
    eps = ["http://%s:%d" % (a, port) for a in addrs]
    g = Gateway(config(dns={"hostname": "collectors.test", "port": port, "interval": "200ms",
                            "server": "127.0.0.1:%d" % dns.port}), name="cfgdns.yaml")
    try:
        g.wait_metric("otlp_gateway_ring_backends", lambda v: v == 2, what="both DNS backends")
        ids = [trace_id(1100, k) for k in range(40)]
        send(g, spans_request(ids, 1))
        wait_spans(sinks, {t.hex(): 1 for t in ids})
        for e in eps:
            assert value(g, backend_series("backend_items_total", e, signal="traces")) > 0
        before = rebuilds(g)
        dns.reload(hosts, addrs[:1], "collectors.test")
        g.wait_metric("otlp_gateway_ring_backends", lambda v: v == 1, what="one DNS backend left")
        g.wait_line(r'msg="backend removed" backend=%s' % esc(eps[1]))
        wait_until(lambda: 'backend="%s"' % eps[1] in g.metrics(), lambda v: not v, 10,
                   "series of the dropped backend in /metrics")
        assert rebuilds(g) == before + 1
        assert value(g, backend_series("backend_up", eps[0])) == 1
        dns.reload(hosts, [], "collectors.test")
        g.wait_metric("otlp_gateway_ring_backends", lambda v: v == 0, what="no DNS backend left")
        wait_until(lambda: "{backend=" in g.metrics(), lambda v: not v, 10, "backend series in /metrics")
        assert rebuilds(g) == before + 2
    finally:
        stop_ok(g)
        for s in sinks:
            s.stop()
        dns.stop()


run_tests(globals())
