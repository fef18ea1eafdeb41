#!/usr/bin/env python3
"""Routing benchmark: the same otlp-load load (a) straight into one otlp-sink — the floor, no proxy — and
(b) through otlp-gateway with trace-ID routing to three otlp-sinks, in rounds within one run. Sinks run with
--no-decode so they cost the same in both setups and do not bound the result. Reports spans/s, gateway CPU
microseconds per span (utime+stime from /proc), p50/p99 latency, and the ratio gateway/direct per round.

usage: bench/routing.py [--build build] [--rounds 3] [--duration 5s] [--connections 8] [--spans 100]
                        [--traces 10] [--gzip]
"""
import argparse
import os
import socket
import statistics
import subprocess
import tempfile
import time

from benchlib import cpu_seconds, parse_result

ap = argparse.ArgumentParser()
ap.add_argument("--build", default="build")
ap.add_argument("--rounds", type=int, default=3)
ap.add_argument("--duration", default="5s")
ap.add_argument("--connections", type=int, default=8)
ap.add_argument("--spans", type=int, default=100)
ap.add_argument("--traces", type=int, default=10)
ap.add_argument("--gzip", action="store_true")
a = ap.parse_args()
B = a.build
TMP = tempfile.mkdtemp(prefix="otlpgw-bench-")


def port_of(p, rx_prefix):
    for _ in range(200):
        ln = p.stdout.readline() if rx_prefix == "sink" else p.stderr.readline()
        if rx_prefix == "sink" and "listening on" in ln:
            return int(ln.rsplit(":", 1)[1])
        if rx_prefix == "gw" and "server=ingest" in ln:
            return int(ln.rsplit(":", 1)[1])
    raise SystemExit("no port from %s" % rx_prefix)


def start_sink():
    p = subprocess.Popen([B + "/otlp-sink", "--no-decode"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    return p, port_of(p, "sink")


def load(url):
    args = [B + "/otlp-load", "--url", url, "--quiet", "--duration", a.duration, "--connections", str(a.connections),
            "--spans", str(a.spans), "--traces", str(a.traces)]
    if a.gzip:
        args += ["--gzip", "--gzip-level", "1"]
    cp = subprocess.run(args, capture_output=True, text=True, timeout=300)
    return {k: float(v) for k, v in parse_result(cp.stdout).items() if v.replace(".", "").isdigit()}


rows = {"direct": [], "gateway": []}
for rnd in range(a.rounds):
    s, port = start_sink()
    r = load("http://127.0.0.1:%d" % port)
    s.terminate()
    s.wait()
    rows["direct"].append({"sps": r["spans_per_s"], "p50": r["p50_ms"], "p99": r["p99_ms"], "cpu": 0.0,
                           "ok": r["ok"], "req": r["requests"]})
    sinks = [start_sink() for _ in range(3)]
    cfg = os.path.join(TMP, "gw.yaml")
    with open(cfg, "w") as f:
        f.write('server: {listen: "127.0.0.1:0"}\ntelemetry: {listen: "127.0.0.1:0"}\nbackends:\n  static:\n' +
                "".join('    - {endpoint: "http://127.0.0.1:%d"}\n' % p for _, p in sinks))
    g = subprocess.Popen([B + "/otlp-gateway", "--config", cfg], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         text=True)
    gport = port_of(g, "gw")
    c0 = cpu_seconds([g.pid])
    r = load("http://127.0.0.1:%d" % gport)
    c1 = cpu_seconds([g.pid])
    g.terminate()
    g.wait()
    for s, _ in sinks:
        s.terminate()
        s.wait()
    spans = r["spans_acked"]
    rows["gateway"].append({"sps": r["spans_per_s"], "p50": r["p50_ms"], "p99": r["p99_ms"],
                            "cpu": (c1 - c0) / spans * 1e6 if spans else 0, "ok": r["ok"], "req": r["requests"]})
    d, gw = rows["direct"][-1], rows["gateway"][-1]
    print("round %d: direct %.0f spans/s p50 %.2f p99 %.2f | gateway %.0f spans/s p50 %.2f p99 %.2f, %.3f us CPU/span"
          " | ratio %.2f | ok %d/%d" % (rnd + 1, d["sps"], d["p50"], d["p99"], gw["sps"], gw["p50"], gw["p99"],
                                       gw["cpu"], gw["sps"] / d["sps"], gw["ok"], gw["req"]), flush=True)

med = lambda k, key: statistics.median(x[key] for x in rows[k])
print()
print("| setup | spans/s (median of %d) | vs direct | gateway CPU us/span | p50 ms | p99 ms |" % a.rounds)
print("|---|---|---|---|---|---|")
for k, label in (("direct", "direct: otlp-load -> 1 sink"), ("gateway", "otlp-gateway -> 3 sinks, trace-ID routing")):
    print("| %s | %.0f | %.2f | %s | %.2f | %.2f |" % (label, med(k, "sps"), med(k, "sps") / med("direct", "sps"),
          "%.3f" % med(k, "cpu") if k == "gateway" else "-", med(k, "p50"), med(k, "p99")))
print()
print("load: %d spans from %d traces per request, %d connections, %s per run%s" % (
    a.spans, a.traces, a.connections, a.duration, ", gzip level 1" if a.gzip else ""))
