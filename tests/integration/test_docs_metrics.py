"""docs/operations.md against the metrics a real gateway exports, as test_cli checks docs/config.md against the
config table: every metric family on a live /metrics scrape is documented in operations.md's "Metrics" section,
and everything documented there is exported, with the same type, the same label names and, for the labels whose
values the section lists as bullets (`outcome`, `reason`), the same values.

How operations.md marks a family (the parser below reads only the "## Metrics" section):
  **`otlp_gateway_NAME{label,label}`** (counter|gauge|histogram...)   a heading, labels optional
  | `process_NAME` | counter|gauge | meaning |                        a row of the Process table
  - `value`: ...                                                      under a heading: one value of the
                                                                      family's label other than backend/signal
"""
import os
import re

from harness import ROOT, Gateway, Sink, gateway_config, run_tests, wait_until

DOC = os.path.join(ROOT, "docs", "operations.md")
HEADING = re.compile(r"^\*\*`([a-z_:][a-z0-9_:]*)(?:\{([a-z_,]*)\})?`\*\*\s*\((counter|gauge|histogram)\b")
TABLE_ROW = re.compile(r"^\|\s*`([a-z_:][a-z0-9_:]*)`\s*\|\s*(counter|gauge|histogram)\s*\|")
VALUE_BULLET = re.compile(r"^- `([a-z_]+)`:")
SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+\S+$")
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
COMMON_LABELS = {"backend", "signal"}


def documented(text):
    """{family: {"type", "labels" (set, or None for a table row: none stated), "values" (bullets), "line"}}
    from the "## Metrics" section; a family documented twice fails."""
    m = re.search(r"^## Metrics\n(.*?)^## ", text, re.S | re.M)
    assert m, "docs/operations.md has no '## Metrics' section followed by another '## ' section"
    first_line = text[:m.start(1)].count("\n") + 1
    fams, current = {}, None
    for i, ln in enumerate(m.group(1).splitlines()):
        h, row = HEADING.match(ln), TABLE_ROW.match(ln)
        if h or row:
            name = (h or row).group(1)
            assert name not in fams, "operations.md documents %s twice (lines %d and %d)" % (
                name, fams.get(name, {}).get("line", 0), first_line + i)
            labels = set(filter(None, (h.group(2) or "").split(","))) if h else None
            fams[name] = {"type": (h or row).group(3 if h else 2), "labels": labels, "values": set(),
                          "line": first_line + i}
            current = name if h else None
        elif ln.startswith("**`"):
            raise AssertionError("operations.md line %d looks like a metric heading the test cannot read: %r"
                                 % (first_line + i, ln))
        elif current and VALUE_BULLET.match(ln):
            fams[current]["values"].add(VALUE_BULLET.match(ln).group(1))
    assert fams, "no metric documented in operations.md's Metrics section"
    return fams


def exported(text):
    """{family: {"type", "labels" (names seen on its samples, le aside), "values" ({label: {values}})}} from a
    Prometheus text scrape; a sample whose family has no # TYPE line fails."""
    fams = {}
    for ln in text.splitlines():
        t = re.match(r"^# TYPE (\S+) (\S+)$", ln)
        if t:
            assert t.group(1) not in fams, "# TYPE %s twice in /metrics" % t.group(1)
            fams[t.group(1)] = {"type": t.group(2), "labels": set(), "values": {}}
            continue
        if not ln or ln.startswith("#"):
            continue
        s = SAMPLE.match(ln)
        assert s, "unparsable sample line in /metrics: %r" % ln
        name = s.group(1)
        if name not in fams:
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            assert base in fams and fams[base]["type"] == "histogram", "sample %r has no # TYPE line" % ln
            name = base
        for k, v in LABEL.findall(s.group(2) or ""):
            if k == "le" and fams[name]["type"] == "histogram":
                continue
            fams[name]["labels"].add(k)
            fams[name]["values"].setdefault(k, set()).add(v)
    return fams


def compare(doc, exp):
    """Every disagreement between the documented and the exported families, as lines (empty: they agree)."""
    problems = []
    for name in sorted(set(exp) - set(doc)):
        problems.append("exported but not documented in operations.md: %s (%s)" % (name, exp[name]["type"]))
    for name in sorted(set(doc) - set(exp)):
        problems.append("documented (operations.md:%d) but not exported: %s" % (doc[name]["line"], name))
    for name in sorted(set(doc) & set(exp)):
        d, e = doc[name], exp[name]
        if d["type"] != e["type"]:
            problems.append("%s: documented as %s (line %d), exported as %s" % (name, d["type"], d["line"], e["type"]))
        if d["labels"] is not None and d["labels"] != e["labels"]:
            problems.append("%s: documented labels {%s} (line %d), exported {%s}" % (
                name, ",".join(sorted(d["labels"])), d["line"], ",".join(sorted(e["labels"]))))
        if d["values"]:
            own = sorted(e["labels"] - COMMON_LABELS)
            if len(own) != 1:
                problems.append("%s: values listed (line %d) but the export has labels %s beyond backend/signal"
                                % (name, d["line"], own or "none"))
            elif d["values"] != e["values"][own[0]]:
                problems.append("%s: documented %s values {%s} (line %d), exported {%s}" % (
                    name, own[0], ",".join(sorted(d["values"])), d["line"], ",".join(sorted(e["values"][own[0]]))))
    return problems


def test_parser_reads_what_it_compares():
    """The comparison itself can fail: a family missing on either side, a type, a label, a value."""
    doc = documented("## Metrics\n**`a_total{backend,outcome}`** (counter)\n- `ok`: fine\n- `bad`: not\n"
                     "**`b`** (gauge)\n| `c_seconds` | gauge | x |\n## Next\n**`ignored`** (gauge)\n")
    assert sorted(doc) == ["a_total", "b", "c_seconds"], doc
    assert doc["a_total"]["labels"] == {"backend", "outcome"} and doc["a_total"]["values"] == {"ok", "bad"}
    exp = exported('# TYPE a_total counter\na_total{backend="x",outcome="ok"} 1\na_total{backend="x",outcome="bad"} 0\n'
                   '# TYPE b gauge\nb 1\n# TYPE c_seconds gauge\nc_seconds 2\n')
    assert compare(doc, exp) == []
    exp["d"] = {"type": "counter", "labels": set(), "values": {}}
    exp["b"]["type"] = "counter"
    exp["a_total"]["values"]["outcome"].add("new")
    del exp["c_seconds"]
    got = compare(doc, exp)
    assert len(got) == 4 and any("not documented" in p and " d " in p for p in got), got
    assert any("documented (operations.md:" in p and "c_seconds" in p for p in got), got


def test_every_exported_metric_is_documented_and_nothing_else():
    sink = Sink()
    g = Gateway(gateway_config(backends=[sink.endpoint]), name="docs-metrics.yaml")
    # The backend's families have their series once it is in the ring (start-up adds it at once).
    wait_until(lambda: g.metric_or_none('otlp_gateway_backend_up{backend="%s"}' % sink.endpoint),
               lambda v: v is not None, 30, "backend_up series of the sink")
    with open(DOC) as f:
        doc = documented(f.read())
    exp = exported(g.metrics())
    problems = compare(doc, exp)
    assert not problems, "docs/operations.md and /metrics disagree:\n  " + "\n  ".join(problems)
    assert len(exp) >= 20, "only %d families exported: %s" % (len(exp), sorted(exp))
    assert g.stop() == 0, "the gateway did not exit 0 after SIGTERM"
    assert sink.stop() == 0


if __name__ == "__main__":
    run_tests(globals())
