"""/metrics against the Prometheus tools themselves: promtool's linter on a live scrape taken after load through
three sinks, counters that add up after a known load (items received = delivered + dropped; backend successes =
what the sinks counted), and a real Prometheus server scraping the gateway. Needs the `prometheus` and `promtool`
binaries (Debian package `prometheus`; scripts/deps.sh --tests installs it)."""
import json
import os
import re
import shutil
import subprocess
import urllib.parse
import urllib.request

from harness import TMP, WAIT, Gateway, Pool, Proc, Sink, free_port, gateway_config, run_load, run_tests, wait_until

DEPS_HINT = "run scripts/deps.sh --tests (CI installs the Debian package `prometheus`)"


def need(binary):
    path = shutil.which(binary)
    assert path, "`%s` not found on PATH: %s" % (binary, DEPS_HINT)
    return path


_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"\s*,?')


def parse_metrics(text):
    """Prometheus text 0.0.4 samples as a list of (name, {label: value}, float)."""
    out = []
    for ln in text.splitlines():
        if not ln or ln.startswith("#"):
            continue
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+\S+)?$", ln)
        assert m, "unparsable sample line: %r" % ln
        labels = {}
        if m.group(2):
            rest = m.group(2)
            while rest:
                lm = _LABEL.match(rest)
                assert lm, "unparsable labels in %r" % ln
                labels[lm.group(1)] = lm.group(2)
                rest = rest[lm.end():]
        out.append((m.group(1), labels, float(m.group(3))))
    return out


def total(samples, name, **want):
    """Sum of every sample of `name` whose labels include all of `want`; no such sample at all fails (a misspelt
    or vanished metric must not read as 0)."""
    vals = [v for n, l, v in samples if n == name and all(l.get(k) == x for k, x in want.items())]
    if not vals:
        raise AssertionError("no sample of %s%s in the scrape" % (name, want or ""))
    return sum(vals)


def poll(what, check, timeout=WAIT):
    """Polls check() -> (ok, detail) until ok, bounded; fails with the last detail."""
    return wait_until(check, lambda r: r[0], timeout, what)[1]


def url(g):
    return "http://127.0.0.1:%d" % g.port


P = "otlp_gateway_"


def test_promtool_check_metrics_on_live_scrape():
    promtool = need("promtool")
    # the linter really runs: a counter without _total is reported (exit 3, text on stdout)
    cp = subprocess.run([promtool, "check", "metrics"], input="# HELP foo x\n# TYPE foo counter\nfoo 1\n",
                        capture_output=True, text=True, timeout=20)
    assert cp.returncode != 0 and "_total" in cp.stdout + cp.stderr, (cp.returncode, cp.stdout, cp.stderr)

    pool = Pool("lint")
    g = Gateway(gateway_config(backends=pool.endpoints), name="lint.yaml")
    for sig in ("traces", "logs", "metrics"):
        res, out = run_load(url(g), "--signal", sig, "--requests", "200", "--spans", "20", "--connections", "4")
        assert res["ok"] == 200, out
    text = g.metrics()
    s = parse_metrics(text)
    # the scrape has the series that matter for the lint: per-backend counters and histograms with data
    for e in pool.endpoints:
        assert total(s, P + "backend_items_total", backend=e, signal="traces") > 0, e
        assert total(s, P + "backend_request_duration_seconds_count", backend=e) > 0, e
        assert total(s, P + "backend_request_duration_seconds_bucket", backend=e, le="+Inf") > 0, e
    assert total(s, P + "request_duration_seconds_count") >= 600
    with open(os.path.join(TMP, "scrape.txt"), "w") as f:
        f.write(text)
    cp = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    assert cp.returncode == 0 and not cp.stdout.strip() and not cp.stderr.strip(), (
        "promtool check metrics exited %d (scrape saved in %s)\nstdout:\n%s\nstderr:\n%s"
        % (cp.returncode, os.path.join(TMP, "scrape.txt"), cp.stdout, cp.stderr))


def test_counters_add_up_after_known_load():
    n, spans, k = 300, 50, 7  # n accepted requests through three sinks, k through a rejecting backend
    pool = Pool("sum")
    bad = Sink("--status", "400")
    g = Gateway(gateway_config(backends=pool.endpoints), name="sum.yaml")
    gb = Gateway(gateway_config(backends=["http://127.0.0.1:%d" % bad.port]), name="sumbad.yaml")
    res, out = run_load(url(g), "--requests", str(n), "--spans", str(spans), "--traces", "10",
                        "--connections", "8")
    assert res["ok"] == n and res["spans_acked"] == n * spans, out
    res, out = run_load(url(gb), "--requests", str(k), "--spans", str(spans), "--connections", "2")
    assert res["ok"] == k, out  # 200 with partial_success

    def main_gateway():
        s = parse_metrics(g.metrics())
        stats = [x.stats() for x in pool.sinks]
        received = total(s, P + "received_items_total", signal="traces")
        delivered = {e: total(s, P + "backend_items_total", backend=e, signal="traces") for e in pool.endpoints}
        dropped = total(s, P + "dropped_items_total", signal="traces")
        ok_requests = total(s, P + "requests_total", signal="traces", code="200")
        success = [total(s, P + "backend_requests_total", backend=e, outcome="success") for e in pool.endpoints]
        sink_requests = [st["traces"]["requests"] for st in stats]
        sink_items = [st["traces"]["items"] for st in stats]
        other = {o: total(s, P + "backend_requests_total", outcome=o) for o in ("retryable", "rejected", "error")}
        detail = dict(received=received, delivered=delivered, dropped=dropped, ok_requests=ok_requests,
                      success=success, sink_requests=sink_requests, sink_items=sink_items, other=other)
        ok = (received == n * spans == sum(delivered.values()) + dropped and dropped == 0
              and ok_requests == n and success == sink_requests
              and [delivered[e] for e in pool.endpoints] == sink_items
              and all(v == 0 for v in other.values()))
        return ok, detail

    d = poll("counters of the gateway in front of three sinks", main_gateway)
    print("    received %d = delivered %s + dropped %d; backend successes %s = sink requests"
          % (d["received"], [int(v) for v in d["delivered"].values()], d["dropped"], [int(v) for v in d["success"]]))

    def rejecting_gateway():
        s = parse_metrics(gb.metrics())
        e = "http://127.0.0.1:%d" % bad.port
        st = bad.stats()
        received = total(s, P + "received_items_total", signal="traces")
        delivered = total(s, P + "backend_items_total", signal="traces")
        dropped = total(s, P + "dropped_items_total", signal="traces")
        rejected_items = total(s, P + "dropped_items_total", signal="traces", reason="rejected")
        ok_requests = total(s, P + "requests_total", signal="traces", code="200")
        rejected = total(s, P + "backend_requests_total", backend=e, outcome="rejected")
        success = total(s, P + "backend_requests_total", backend=e, outcome="success")
        detail = dict(received=received, delivered=delivered, dropped=dropped, rejected_items=rejected_items,
                      ok_requests=ok_requests, backend_rejected=rejected, backend_success=success, sink=st)
        ok = (received == k * spans == delivered + dropped and delivered == 0 and rejected_items == k * spans
              and ok_requests == k and success == st["traces"]["requests"] == 0
              # a batch of several parts answered 400 is sent again part by part (backends.batch): at least
              # one rejected request per client request, every one of them seen by the sink
              and rejected == st["rejected"] >= k)
        return ok, detail

    poll("counters of the gateway in front of a rejecting sink", rejecting_gateway)


def prom_query(port, expr):
    q = urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen("http://127.0.0.1:%d/api/v1/query?%s" % (port, q), timeout=5) as r:
        d = json.loads(r.read())
    assert d.get("status") == "success", d
    return d["data"]["result"]


def prom_targets(port):
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d/api/v1/targets" % port, timeout=5) as r:
            return [{k: t.get(k) for k in ("scrapeUrl", "health", "lastError")}
                    for t in json.loads(r.read())["data"]["activeTargets"]]
    except Exception as e:  # only for failure messages
        return repr(e)


def test_real_prometheus_scrapes_the_gateway():
    prometheus = need("prometheus")
    pool = Pool("prom")
    g = Gateway(gateway_config(backends=pool.endpoints), name="prom.yaml")
    target = "127.0.0.1:%d" % g.telemetry_port
    tsdb = os.path.join(TMP, "prom-tsdb")
    cfg = os.path.join(TMP, "prometheus.yml")
    with open(cfg, "w") as f:
        f.write("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n"
                "scrape_configs:\n  - job_name: otlpgw\n    static_configs:\n      - targets: [\"%s\"]\n" % target)
    port = free_port()
    prom = Proc([prometheus, "--config.file=" + cfg, "--storage.tsdb.path=" + tsdb,
                 "--web.listen-address=127.0.0.1:%d" % port, "--log.level=warn"])
    try:
        def up():
            if prom.p.poll() is not None:
                raise AssertionError("prometheus exited %s:\n%s" % (prom.p.returncode, "\n".join(prom.err[-20:])))
            try:
                r = prom_query(port, 'up{job="otlpgw"}')
            except OSError as e:
                return False, "API not answering: %r" % e
            vals = [x["value"][1] for x in r if x["metric"].get("instance") == target]
            return vals == ["1"], dict(result=r, targets=prom_targets(port))

        poll("prometheus reports up == 1 for %s" % target, up, timeout=2 * WAIT)
        n, spans = 100, 20
        res, out = run_load(url(g), "--requests", str(n), "--spans", str(spans), "--connections", "4")
        assert res["ok"] == n, out

        def received():
            r = prom_query(port, 'otlp_gateway_received_items_total{job="otlpgw",protocol="http",signal="traces"}')
            vals = [float(x["value"][1]) for x in r]
            return vals == [n * spans], dict(result=r, targets=prom_targets(port))

        poll("prometheus sees otlp_gateway_received_items_total == %d" % (n * spans), received, timeout=2 * WAIT)
        # a histogram and a per-backend series made it through Prometheus' own parser as well
        r = prom_query(port, 'count(otlp_gateway_backend_request_duration_seconds_bucket{le="+Inf"} > 0)')
        assert r and float(r[0]["value"][1]) == 3, r
    finally:
        rc = prom.stop()
        shutil.rmtree(tsdb, ignore_errors=True)
    assert rc == 0, "prometheus exited %s on SIGTERM:\n%s" % (rc, "\n".join(prom.err[-20:]))


run_tests(globals())
