"""deploy/grafana/otlp-gateway.json against the real gateway: the dashboard is well-formed Grafana JSON, and every
metric name its queries (panel targets, annotations, template variables) use is one the gateway really exposes,
checked on a live /metrics scrape of a gateway in front of two sinks after a little load of every signal.
Counters and histogram series are only used under rate()/increase(), gauges never, and histogram_quantile()
gets _bucket rates summed by le. Every expression must also parse with promtool (without it that test is skipped:
a failure under CI=true)."""
import json
import os
import re
import shutil
import subprocess

from harness import TMP, Gateway, Sink, gateway_config, run_load, run_tests, skip

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
DASHBOARD = os.path.join(ROOT, "deploy", "grafana", "otlp-gateway.json")

METRIC_RX = re.compile(r"\b((?:otlp_gateway|process)_[a-zA-Z0-9_]*[a-zA-Z0-9])\b")
HIST_SUFFIXES = ("_bucket", "_sum", "_count")
RATE_FUNCS = ("rate", "irate", "increase", "changes", "resets")


def load_dashboard():
    with open(DASHBOARD) as f:
        return json.load(f)


def all_panels(d):
    """Every panel, including those nested in collapsed rows."""
    out = []
    for p in d.get("panels", []):
        out.append(p)
        out.extend(p.get("panels", []))
    return out


def target_exprs(d):
    """(where, expr) for every panel target and every annotation with a PromQL expression."""
    out = []
    for p in all_panels(d):
        for t in p.get("targets", []):
            if t.get("expr"):
                out.append(("panel %r target %s" % (p.get("title"), t.get("refId")), t["expr"]))
    for a in d.get("annotations", {}).get("list", []):
        if a.get("expr"):
            out.append(("annotation %r" % a.get("name"), a["expr"]))
    return out


def variable(d, name):
    for v in d.get("templating", {}).get("list", []):
        if v.get("name") == name:
            return v
    raise AssertionError("no template variable %r" % name)


def variable_query(v):
    q = v.get("query")
    if isinstance(q, dict):
        q = q.get("query", "")
    return q or v.get("definition", "")


def scrape_index(text):
    """({series name}, {name: TYPE}) from a Prometheus text exposition."""
    series, types = set(), {}
    for ln in text.splitlines():
        if ln.startswith("# TYPE "):
            _, _, name, typ = ln.split(None, 3)
            types[name] = typ.strip()
        elif ln and not ln.startswith("#"):
            series.add(re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", ln).group(0))
    return series, types


def base_name(name, types):
    """The metric family a series name belongs to: a histogram's _bucket/_sum/_count map to the histogram."""
    for suf in HIST_SUFFIXES:
        if name.endswith(suf) and types.get(name[:-len(suf)]) in ("histogram", "summary"):
            return name[:-len(suf)]
    return name


_scrape = None


def live_scrape():
    """One gateway in front of two sinks, a little load of every signal, then /metrics (cached)."""
    global _scrape
    if _scrape is None:
        sinks = [Sink(), Sink()]
        endpoints = ["http://127.0.0.1:%d" % s.port for s in sinks]
        g = Gateway(gateway_config(backends=endpoints), name="dashboard.yaml")
        url = "http://127.0.0.1:%d" % g.port
        for sig in ("traces", "logs", "metrics"):
            res, out = run_load(url, "--signal", sig, "--requests", "20", "--spans", "20", "--connections", "2")
            assert res["ok"] == 20, out
        _scrape = g.metrics()
        assert g.stop() == 0
        for s in sinks:
            assert s.stop() == 0
    return _scrape


# ---- the dashboard on its own ---------------------------------------------------------------------------

def test_dashboard_is_valid_grafana_json():
    d = load_dashboard()
    assert d.get("schemaVersion", 0) >= 36, d.get("schemaVersion")
    assert d.get("title") and d.get("uid"), "dashboard needs a title and a uid"
    panels = all_panels(d)
    assert panels, "no panels"
    ids = [p.get("id") for p in panels]
    assert len(ids) == len(set(ids)) and None not in ids, "panel ids must be unique: %s" % ids
    data_panels = [p for p in panels if p.get("type") != "row"]
    assert len(data_panels) >= 10, len(data_panels)
    for p in data_panels:
        assert p.get("title"), p
        gp = p.get("gridPos", {})
        assert all(k in gp for k in ("x", "y", "w", "h")) and gp["x"] + gp["w"] <= 24, (p["title"], gp)
        assert p.get("targets"), "panel %r has no targets" % p["title"]
        for t in p["targets"]:
            assert t.get("expr"), (p["title"], t)
            ds = t.get("datasource") or p.get("datasource")
            assert ds and ds.get("uid") == "${datasource}", (p["title"], ds)
    assert len(target_exprs(d)) >= 20


def test_template_variables():
    d = load_dashboard()
    ds = variable(d, "datasource")
    assert ds.get("type") == "datasource" and ds.get("query") == "prometheus", ds
    be = variable(d, "backend")
    assert be.get("type") == "query", be
    q = variable_query(be)
    assert re.fullmatch(r"label_values\(\s*otlp_gateway_backend_up\s*,\s*backend\s*\)", q), q
    assert (be.get("datasource") or {}).get("uid") == "${datasource}", be.get("datasource")
    # every per-backend panel filters on the variable
    for where, e in target_exprs(d):
        if "otlp_gateway_backend_" in e and "sum by (instance)" not in e and "count(" not in e:
            assert 'backend=~"$backend"' in e, (where, e)


def test_rate_and_histogram_usage():
    """Counters only inside rate()/increase(), gauges never; histogram_quantile over _bucket rates by le."""
    types = scrape_index(live_scrape())[1]
    for where, e in target_exprs(load_dashboard()):
        for m in METRIC_RX.finditer(e):
            name = m.group(1)
            fam = base_name(name, types)
            typ = types.get(fam)
            wrapped = re.search(r"\b(%s)\(\s*$" % "|".join(RATE_FUNCS), e[:m.start()]) is not None
            if typ == "counter" or fam != name:
                assert wrapped, "%s: %s (%s) used outside rate()/increase(): %s" % (where, name, typ, e)
            elif typ == "gauge":
                assert not re.search(r"\b(rate|irate|increase)\(\s*$", e[:m.start()]), \
                    "%s: rate() of gauge %s: %s" % (where, name, e)
            if "$__rate_interval" not in e and wrapped and not where.startswith("annotation"):
                raise AssertionError("%s: use [$__rate_interval] for rate windows: %s" % (where, e))
        quantiles = re.findall(r"histogram_quantile\(\s*([0-9.]+)\s*,\s*sum by \(([^)]*)\)\s*\(\s*rate\(\s*(\w+)", e)
        assert len(quantiles) == e.count("histogram_quantile("), (where, e)
        for q, by, name in quantiles:
            assert 0 < float(q) < 1, (where, q)
            assert "le" in [x.strip() for x in by.split(",")], "%s: histogram_quantile must sum by le: %s" % (where, e)
            assert name.endswith("_bucket") and types.get(name[:-7]) == "histogram", (where, name)
        assert e.count("_bucket{") == len(quantiles), "%s: _bucket outside histogram_quantile: %s" % (where, e)


def test_expressions_parse_with_promtool():
    promtool = shutil.which("promtool")
    if not promtool:
        skip("promtool not on PATH (Debian package prometheus; scripts/deps.sh --tests installs it)")
    subst = {"$__rate_interval": "1m", "$__range": "1h", "$__interval": "30s", "$backend": ".*", "$job": ".*",
             "$instance": ".*"}
    rules = []
    for i, (where, e) in enumerate(target_exprs(load_dashboard())):
        for k, v in subst.items():
            e = e.replace(k, v)
        assert "$" not in e, "%s: unknown variable in %s" % (where, e)
        rules.append({"record": "dashboard:expr_%d" % i, "expr": e})
    path = os.path.join(TMP, "dashboard-rules.yml")
    with open(path, "w") as f:
        json.dump({"groups": [{"name": "dashboard", "rules": rules}]}, f)  # JSON is YAML
    cp = subprocess.run([promtool, "check", "rules", path], capture_output=True, text=True, timeout=60)
    assert cp.returncode == 0, cp.stdout + cp.stderr


# ---- against a live scrape ------------------------------------------------------------------------------

def test_every_queried_metric_is_exposed():
    series, types = scrape_index(live_scrape())
    d = load_dashboard()
    used = {}
    for where, e in target_exprs(d):
        for name in METRIC_RX.findall(e):
            used.setdefault(name, where)
    assert len(used) >= 15, sorted(used)
    missing = []
    for name, where in sorted(used.items()):
        fam = base_name(name, types)
        exposed = name in series or (types.get(name) in ("histogram", "summary") and
                                     any(name + s in series for s in HIST_SUFFIXES))
        if not exposed or fam not in types:
            missing.append("%s (first used in %s)" % (name, where))
    assert not missing, "dashboard queries metrics the gateway does not expose:\n  " + "\n  ".join(missing)
    unused = sorted(f for f in types if f.startswith("otlp_gateway_") and
                    f not in {base_name(n, types) for n in used})
    if unused:
        print("    exposed but not on the dashboard: %s" % ", ".join(unused))


def test_template_variable_metrics_are_exposed():
    series, _ = scrape_index(live_scrape())
    d = load_dashboard()
    backend_metrics = METRIC_RX.findall(variable_query(variable(d, "backend")))
    assert backend_metrics == ["otlp_gateway_backend_up"], backend_metrics
    for v in d["templating"]["list"]:
        if v.get("type") != "query":
            continue
        for name in METRIC_RX.findall(variable_query(v)):
            assert name in series, "variable %r queries %s, not in the scrape" % (v["name"], name)
    # the backend variable has a value per configured backend
    backends = set(re.findall(r'^otlp_gateway_backend_up\{backend="([^"]+)"\}', live_scrape(), re.M))
    assert len(backends) == 2, backends


run_tests(globals())
