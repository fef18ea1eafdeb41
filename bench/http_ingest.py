#!/usr/bin/env python3
"""HTTP ingest layer benchmark: otlp-load drives the same OTLP/HTTP protobuf load (keep-alive, one request in
flight per connection) into
  - nginx (peer): one worker, `return 200` — a mature C HTTP/1.1 server that reads and discards the body;
  - otlp-sink --no-decode: our server layer (gateway/http_server) answering 200 without looking at the body;
  - otlp-sink: the same plus protobuf-c decoding and counting of every span (what tests use);
  - otlp-gateway: ingest, wire scan and split, with its one backend refusing connections (answers 503);
    for routing to live backends see bench/routing.py.
Each target runs alone on 127.0.0.1, in rounds, so every ratio compares runs made minutes apart on the
same machine. Reports requests/s, server CPU microseconds per request (utime+stime from /proc) and latency.

usage: bench/http_ingest.py [--build build] [--rounds 3] [--duration 5s] [--connections 8] [--spans 100]
"""
import argparse
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

from benchlib import cpu_seconds, free_port, parse_result

ap = argparse.ArgumentParser()
ap.add_argument("--build", default="build")
ap.add_argument("--rounds", type=int, default=3)
ap.add_argument("--duration", default="5s")
ap.add_argument("--connections", type=int, default=8)
ap.add_argument("--spans", type=int, default=100)
a = ap.parse_args()
B = a.build
TMP = tempfile.mkdtemp(prefix="otlpgw-bench-")


def wait_port(port, timeout=10):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit("server on port %d did not come up" % port)


def children(pid):
    try:
        out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
        return [int(x) for x in out.split()]
    except FileNotFoundError:
        return []


def start_nginx(port):
    conf = os.path.join(TMP, "nginx.conf")
    with open(conf, "w") as f:
        f.write("""worker_processes 1; daemon off; master_process on; pid %s/nginx.pid; error_log %s/nginx.err;
events { worker_connections 1024; }
http { access_log off; keepalive_requests 10000000; keepalive_timeout 120s; client_max_body_size 64m;
  client_body_buffer_size 1m;
  server { listen 127.0.0.1:%d; location / { return 200; } } }
""" % (TMP, TMP, port))
    p = subprocess.Popen(["nginx", "-c", conf, "-p", TMP], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
    return p, [p.pid] + children(p.pid)


def start_sink(port, *extra):
    p = subprocess.Popen([B + "/otlp-sink", "--listen", "127.0.0.1:%d" % port] + list(extra),
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
    return p, [p.pid]


def start_gateway(port):
    cfg = os.path.join(TMP, "gw.yaml")
    with open(cfg, "w") as f:
        f.write('server: {listen: "127.0.0.1:%d"}\ntelemetry: {listen: "127.0.0.1:0"}\n'
                'backends: {static: [{endpoint: "http://127.0.0.1:9"}]}\n' % port)
    p = subprocess.Popen([B + "/otlp-gateway", "--config", cfg], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
    return p, [p.pid]


TARGETS = [
    ("nginx (peer)", start_nginx),
    ("otlp-sink --no-decode", lambda port: start_sink(port, "--no-decode")),
    ("otlp-sink (decodes)", start_sink),
    ("otlp-gateway ingest", start_gateway),
]


def run_one(start):
    port = free_port()
    p, pids = start(port)
    try:
        c0 = cpu_seconds(pids)
        cp = subprocess.run([B + "/otlp-load", "--url", "http://127.0.0.1:%d" % port, "--quiet", "--duration",
                             a.duration, "--connections", str(a.connections), "--spans", str(a.spans),
                             "--traces", "10"], capture_output=True, text=True, timeout=300)
        c1 = cpu_seconds(pids)
    finally:
        p.terminate()
        p.wait(timeout=10)
    r = parse_result(cp.stdout)
    n = float(r["requests"])
    return {"rps": float(r["rps"]), "cpu_us": (c1 - c0) / n * 1e6 if n else 0, "p50": float(r["p50_ms"]),
            "p99": float(r["p99_ms"]), "codes": " ".join(k for k in r if k.startswith("status_")),
            "bytes": float(r["bytes"]) / n if n else 0}


if not shutil.which("nginx"):
    raise SystemExit("nginx is not installed: apt-get install nginx-light (the peer of this benchmark)")
results = {name: [] for name, _ in TARGETS}
for rnd in range(a.rounds):
    for name, start in TARGETS:
        res = run_one(start)
        results[name].append(res)
        print("round %d  %-24s %9.0f req/s  %6.1f us CPU/req  p50 %.2f ms  p99 %.2f ms  %s" % (
            rnd + 1, name, res["rps"], res["cpu_us"], res["p50"], res["p99"], res["codes"]), flush=True)

peer = statistics.median(r["rps"] for r in results["nginx (peer)"])
peer_cpu = statistics.median(r["cpu_us"] for r in results["nginx (peer)"])
body = statistics.median(r["bytes"] for r in results["nginx (peer)"])
print()
print("| target | req/s (median of %d) | vs nginx | server CPU us/request | CPU vs nginx | p50 ms | p99 ms |" % a.rounds)
print("|---|---|---|---|---|---|---|")
for name, _ in TARGETS:
    rs = results[name]
    rps = statistics.median(r["rps"] for r in rs)
    cpu = statistics.median(r["cpu_us"] for r in rs)
    print("| %s | %.0f | %.2f | %.1f | %.2f | %.2f | %.2f |" % (name, rps, rps / peer, cpu, cpu / peer_cpu,
          statistics.median(r["p50"] for r in rs), statistics.median(r["p99"] for r in rs)))
print()
print("request body: %.0f bytes (%d spans from 10 traces), %d connections, %s per run" % (body, a.spans,
      a.connections, a.duration))
shutil.rmtree(TMP, ignore_errors=True)
