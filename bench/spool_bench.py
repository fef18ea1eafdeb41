#!/usr/bin/env python3
"""bench/spool_bench.py: what the crash-safe spool (backends.queue.directory) costs, spool off vs on, same run.

Every run starts three fresh `otlp-sink --no-decode` backends and one gateway (server.workers 1) on 127.0.0.1, warms
it up for 300 ms with every backend answering, then measures one otlp-load run (S1's payload: 100 spans from 10
traces per request, uncompressed, keep-alive, one request in flight per connection, as fast as possible):
  F1  one backend black-holed (otlp-sink GET /control?hang=1: accepts, never answers) at the start of the run, the
      gateway's default timeouts and health checks (request_timeout 5s, checks every 2s, fall 3, passive ejection
      after 5 failures): the realistic failure path, the hole is ejected and its queue re-routed; --connections
  F2  the same hole kept in the ring for the whole run (health checks off, eject_after_failures 1000,
      request_timeout 200ms, retry max_elapsed 5m): every part for it waits in its retry queue, and so goes
      through the spool: the spool's worst case. The rate is bound by the hole (each request waits its 200 ms
      timeout); more connections would reach passive ejection's maximum (1000 consecutive failures) within the run
      and take the hole out of the ring (the run prints ring_backends at its end: 3 = it stayed)
  H   happy path, every backend up: spool off vs on (fsync batch); parts delivered on the first try never touch
      the disk, so this must be within noise
Modes: off (no queue.directory), batch, always (queue.fsync; F1/F2 run all three, H off and batch), each with its
own fresh directory under the run's temp dir (ext4 or whatever it is on: printed). Order of the modes rotated per
round. Per run: spans/s acknowledged, p99 latency of that run (otlp-load), gateway CPU (utime+stime from /proc over
the run) per acknowledged span, requests answered 503 / failed, and the spool's figures scraped at the end
(spool_bytes summed, spool_write_errors_total). Ratios are per round against the spool-off run of the same
scenario and round, then the median.

usage: bench/spool_bench.py [--build DIR] [--rounds 3] [--duration 10s] [--happy-duration 5s] [--connections 8]
                            [--f2-connections 8] [--scenarios F1,F2,H] [--keep-tmp]
Documented command: bench/spool_bench.py --build build-s3r --rounds 3   (~5 minutes on 2 vCPUs)
"""
import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import compare_lib as cl  # noqa: E402

SCEN = {
    "F1": dict(desc="1 of 3 backends black-holed, default timeouts and health checks (ejected)", hole=True,
               modes=("off", "batch", "always")),
    "F2": dict(desc="1 of 3 backends black-holed and kept in the ring (checks off, request_timeout 200ms): "
               "every part for it spooled", hole=True, modes=("off", "batch", "always")),
    "H": dict(desc="every backend up (happy path)", hole=False, modes=("off", "batch")),
}


def gateway_config(sc, ports, directory, mode):
    lines = ['server: {listen: "127.0.0.1:0", grpc_listen: "", workers: 1, shutdown_timeout: 1s}',
             'telemetry: {listen: "127.0.0.1:0"}', 'backends:', '  static:']
    lines += ['    - {endpoint: "http://127.0.0.1:%d"}' % p for p in ports]
    if sc == "F2":
        lines += ['  request_timeout: 200ms', '  health_check: {enabled: false, eject_after_failures: 1000}',
                  '  retry: {initial_interval: 50ms, max_interval: 500ms, max_elapsed: 5m}']
    if mode != "off":
        lines.append('  queue: {directory: "%s", fsync: %s}' % (directory, mode))
    return "\n".join(lines) + "\n"


def control(port, q):
    with urllib.request.urlopen("http://127.0.0.1:%d/control?%s" % (port, q), timeout=10) as r:
        return r.read().decode()


def metrics_sum(port, name):
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=10) as r:
        text = r.read().decode()
    return sum(float(ln.split()[-1]) for ln in text.splitlines()
               if ln.startswith(name + "{") or ln.startswith(name + " "))


def one_run(a, procs, tmp, sc, mode, tag):
    sinks = cl.start_sinks(procs, a.build, tmp, 3)
    d = os.path.join(tmp, "spool-" + tag)
    cfg = os.path.join(tmp, "gw-%s.yaml" % tag)
    with open(cfg, "w") as f:
        f.write(gateway_config(sc, [p for _, p in sinks], d, mode))
    log = os.path.join(tmp, "gw-%s.err" % tag)
    with open(log, "w") as err:
        g = procs.spawn([os.path.join(a.build, "otlp-gateway"), "--config", cfg], stdout=subprocess.DEVNULL,
                        stderr=err, stdin=subprocess.DEVNULL)
    try:
        port = cl.wait_log(log, "server=ingest", g, what="otlp-gateway")
        tport = cl.wait_log(log, "server=telemetry", g, what="otlp-gateway telemetry")
        url = "http://127.0.0.1:%d" % port
        conns = a.f2_connections if sc == "F2" else a.connections
        dur = a.happy_duration if sc == "H" else a.duration
        cl.run_load(procs, a.build, url, "300ms", conns, 100, 10)
        if SCEN[sc]["hole"]:
            state = control(sinks[2][1], "hang=1")
            assert '"hang":1' in state.replace(" ", ""), state
        c0 = cl.cpu_seconds([g.pid])
        r = cl.run_load(procs, a.build, url, dur, conns, 100, 10, timeout=cl.parse_duration(dur) + 90)
        c1 = cl.cpu_seconds([g.pid])
        spans = r.get("spans_acked", 0)
        spooled = metrics_sum(tport, "otlp_gateway_spool_bytes") if mode != "off" else 0
        werr = metrics_sum(tport, "otlp_gateway_spool_write_errors_total") if mode != "off" else 0
        queued = metrics_sum(tport, "otlp_gateway_backend_queue_bytes")
        ring = metrics_sum(tport, "otlp_gateway_ring_backends")
        return {"sps": r.get("spans_per_s", 0), "p99": r.get("p99_ms", 0), "p50": r.get("p50_ms", 0),
                "cpu_us": (c1 - c0) / spans * 1e6 if spans else float("nan"), "ok": r.get("ok", 0),
                "req": r.get("requests", 0), "s503": r.get("status_503", 0), "errors": r.get("errors", 0),
                "spooled": spooled, "werr": werr, "queued": queued, "ring": ring, "raw": r["raw"]}
    finally:
        procs.stop(g)
        for p, _ in sinks:
            procs.stop(p)
        shutil.rmtree(d, ignore_errors=True)


def med(xs):
    xs = [x for x in xs if x == x]
    return statistics.median(xs) if xs else float("nan")


def fs_type(path):
    try:
        out = subprocess.run(["df", "-T", path], capture_output=True, text=True, timeout=10).stdout.splitlines()[-1]
        return "%s (%s)" % (out.split()[1], out.split()[0])
    except (OSError, IndexError, subprocess.SubprocessError):
        return "?"


def main():
    ap = argparse.ArgumentParser(description="spool off vs on (see the header of this file)")
    ap.add_argument("--build", default=os.path.join(os.path.dirname(HERE), "build"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", default="10s", help="F1/F2 run")
    ap.add_argument("--happy-duration", default="5s", help="H run")
    ap.add_argument("--connections", type=int, default=8)
    ap.add_argument("--f2-connections", type=int, default=8)
    ap.add_argument("--scenarios", default="F1,F2,H")
    ap.add_argument("--keep-tmp", action="store_true")
    a = ap.parse_args()
    scs = [s.strip().upper() for s in a.scenarios.split(",") if s.strip()]
    for s in scs:
        if s not in SCEN:
            ap.error("unknown scenario %s (F1, F2, H)" % s)
    signal.signal(signal.SIGTERM, lambda n, f: (_ for _ in ()).throw(SystemExit(128 + n)))
    procs = cl.Procs()
    tmp = tempfile.mkdtemp(prefix="otlpgw-spool-bench-")
    build_type = "?"
    try:
        with open(os.path.join(a.build, "CMakeCache.txt")) as f:
            m = re.search(r"^CMAKE_BUILD_TYPE:\w+=(\S*)", f.read(), re.M)
            build_type = m.group(1) if m else "?"
    except OSError:
        pass
    print("# bench/spool_bench.py: %s" % " ".join(["bench/spool_bench.py"] + sys.argv[1:]))
    print("machine: %d CPUs, kernel %s, build %s (%s), spool directories on %s" % (
        os.cpu_count(), os.uname().release, a.build, build_type, fs_type(tmp)))
    for s in scs:
        print("%s: %s" % (s, SCEN[s]["desc"]))
    sys.stdout.flush()
    res = {s: {} for s in scs}
    t0 = time.time()
    try:
        for rnd in range(a.rounds):
            for sc in scs:
                modes = list(SCEN[sc]["modes"])
                k = rnd % len(modes)
                for mode in modes[k:] + modes[:k]:
                    r = one_run(a, procs, tmp, sc, mode, "%s-r%d-%s" % (sc, rnd, mode))
                    res[sc].setdefault(mode, []).append(r)
                    print("round %d %-2s %-6s spans/s %9.0f p99 %8.2f ms CPU %.3f us/span ok %d/%d 503 %d errors %d "
                          "spooled %d B write_errors %d queued %d B ring %d" % (
                              rnd + 1, sc, mode, r["sps"], r["p99"], r["cpu_us"], r["ok"], r["req"], r["s503"],
                              r["errors"], r["spooled"], r["werr"], r["queued"], r["ring"]), flush=True)
        print()
        print("| scenario | spool | spans/s | vs off | p99 ms | vs off | CPU us/span | vs off | 503s | "
              "spooled at end |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for sc in scs:
            off = res[sc]["off"]
            for mode in SCEN[sc]["modes"]:
                rs = res[sc][mode]
                n = min(len(rs), len(off))

                def ratio(key):
                    return med(rs[i][key] / off[i][key] if off[i][key] else float("nan") for i in range(n))

                print("| %s | %s | %.0f | %.2fx | %.2f | %.2fx | %.3f | %.2fx | %d | %.1f MB |" % (
                    sc, mode if mode == "off" else "fsync " + mode, med(r["sps"] for r in rs), ratio("sps"),
                    med(r["p99"] for r in rs), ratio("p99"), med(r["cpu_us"] for r in rs), ratio("cpu_us"),
                    med(r["s503"] for r in rs), med(r["spooled"] for r in rs) / 1e6))
        print()
        for sc in scs:
            off = res[sc]["off"]
            for mode in SCEN[sc]["modes"]:
                if mode == "off":
                    continue
                rs = res[sc][mode]
                n = min(len(rs), len(off))
                print("- %s %s/off per round: spans/s %s; p99 %s; CPU/span %s" % (
                    sc, mode, " / ".join("%.2f" % (rs[i]["sps"] / off[i]["sps"]) for i in range(n)),
                    " / ".join("%.2f" % (rs[i]["p99"] / off[i]["p99"]) for i in range(n)),
                    " / ".join("%.2f" % (rs[i]["cpu_us"] / off[i]["cpu_us"]) for i in range(n))))
        print("\ntotal %.0f s" % (time.time() - t0))
    finally:
        procs.stop_all()
        if a.keep_tmp:
            print("kept %s" % tmp)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        print("\ninterrupted: every process started was stopped", file=sys.stderr)
        sys.exit(130)
