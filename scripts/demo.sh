#!/usr/bin/env bash
# The README demo: installs what is missing, builds, starts otlp-gateway with three local otlp-sink
# collectors (config/examples/demo.yaml), sends a few seconds of OTLP load with otlp-load over both protocols at
# once (OTLP/HTTP to :4318 and OTLP/gRPC to :4317), then shows how many spans and traces each backend got, that
# nothing acknowledged is missing and that no trace was split.
# Stops everything it started.
set -euo pipefail
cd "$(dirname "$0")/.."
top=$PWD
duration=${DEMO_DURATION:-3s}

echo "== 1/4 dependencies and build"
scripts/deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$(nproc)" 2>&1 | grep -E "error|warning" || true
[ -x build/otlp-gateway ] || { echo "build failed"; exit 1; }

work=$(mktemp -d "${TMPDIR:-/tmp}/otlp-gateway-demo.XXXXXX")
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

# Waits (bounded) for a regex in a file; prints the first capture group.
wait_for() {
  for _ in $(seq 100); do
    if m=$(grep -oE "$2" "$1" 2>/dev/null | head -1) && [ -n "$m" ]; then
      echo "$m" | grep -oE '[0-9]+$'
      return 0
    fi
    sleep 0.1
  done
  echo "timed out waiting for '$2' in $1:" >&2
  cat "$1" >&2
  return 1
}

echo "== 2/4 three sinks (stand-ins for OpenTelemetry Collectors) and the gateway"
for i in 1 2 3; do
  build/otlp-sink --listen 127.0.0.1:0 --trace-file "$work/sink$i.traces" >"$work/sink$i.out" 2>&1 &
  pids+=($!)
  port=$(wait_for "$work/sink$i.out" 'listening on 127\.0\.0\.1:[0-9]+')
  export "SINK${i}_PORT=$port"
  echo "   sink $i on 127.0.0.1:$port"
done
# The usual ports when free, else ephemeral ones.
export GW_LISTEN=127.0.0.1:4318 GW_GRPC=127.0.0.1:4317 GW_TELEMETRY=127.0.0.1:8888
(exec 3<>/dev/tcp/127.0.0.1/4318) 2>/dev/null && GW_LISTEN=127.0.0.1:0
(exec 3<>/dev/tcp/127.0.0.1/4317) 2>/dev/null && GW_GRPC=127.0.0.1:0
(exec 3<>/dev/tcp/127.0.0.1/8888) 2>/dev/null && GW_TELEMETRY=127.0.0.1:0
build/otlp-gateway --config config/examples/demo.yaml >"$work/gateway.log" 2>&1 &
pids+=($!)
gw_port=$(wait_for "$work/gateway.log" 'server=ingest addr=127\.0\.0\.1:[0-9]+')
grpc_port=$(wait_for "$work/gateway.log" 'server=grpc addr=127\.0\.0\.1:[0-9]+')
tm_port=$(wait_for "$work/gateway.log" 'server=telemetry addr=127\.0\.0\.1:[0-9]+')
echo "   otlp-gateway: OTLP/HTTP on 127.0.0.1:$gw_port, OTLP/gRPC on 127.0.0.1:$grpc_port (metrics on 127.0.0.1:$tm_port)"

echo "== 3/4 sending $duration of traces through the gateway over both protocols at once, 100 spans from 10 traces per"
echo "   request: OTLP/HTTP (4 connections) and OTLP/gRPC (2 HTTP/2 connections x 4 concurrent calls)"
build/otlp-load --url "http://127.0.0.1:$gw_port" --duration "$duration" --connections 4 --spans 100 --traces 10 \
  --seed 1 --trace-file "$work/acked.traces" >"$work/load.out" &
http_load=$!
build/otlp-load --grpc --url "http://127.0.0.1:$grpc_port" --duration "$duration" --connections 2 --streams 4 \
  --spans 100 --traces 10 --seed 2 --trace-file "$work/acked-grpc.traces" >"$work/load-grpc.out"
wait "$http_load"
curl_metrics() {
  python3 - "$tm_port" <<'PY'
import sys, urllib.request
print(urllib.request.urlopen("http://127.0.0.1:%s/metrics" % sys.argv[1], timeout=5).read().decode())
PY
}
curl_metrics >"$work/metrics.txt"

echo "== 4/4 results"
python3 - "$work" "$SINK1_PORT" "$SINK2_PORT" "$SINK3_PORT" <<'PY'
import collections, json, os, re, sys, urllib.request
work, ports = sys.argv[1], sys.argv[2:]
health = {}
for ln in open(os.path.join(work, "metrics.txt")):
    m = re.match(r'otlp_gateway_backend_up\{backend="http://127\.0\.0\.1:(\d+)"\} (\d+)', ln)
    if m:
        health[m.group(1)] = "up" if m.group(2) == "1" else "down"

def result(path):
    for ln in open(path):
        if ln.startswith("RESULT "):
            return dict(kv.split("=", 1) for kv in ln[7:].split())
    return {}

def traces(path):
    c = collections.Counter()
    if os.path.exists(path):
        for ln in open(path):
            t, n = ln.split()
            c[t] += int(n)
    return c

for proto, name in (("OTLP/HTTP", "load.out"), ("OTLP/gRPC", "load-grpc.out")):
    via = result(os.path.join(work, name))
    codes = ", ".join("%s x %s" % (k[7:], v) for k, v in sorted(via.items()) if k.startswith("status_"))
    print("   otlp-load -> gateway, %s: %s requests in %ss (%s spans/s, p50 %s ms, p99 %s ms); answers: %s" % (
        proto, via.get("requests"), via.get("elapsed_s"), via.get("spans_per_s"), via.get("p50_ms"),
        via.get("p99_ms"), codes or "none"))
print()
print("   %-8s %-16s %10s %10s %10s %8s  %s" % ("backend", "address", "requests", "spans", "traces", "share",
                                           "health"))
owners = collections.defaultdict(set)
per_sink = []
for i, port in enumerate(ports, 1):
    st = json.load(urllib.request.urlopen("http://127.0.0.1:%s/stats" % port, timeout=5))
    tr = traces(os.path.join(work, "sink%d.traces" % i))
    for t in tr:
        owners[t].add(i)
    per_sink.append((i, port, st, tr))
total = sum(sum(tr.values()) for _, _, _, tr in per_sink) or 1
for i, port, st, tr in per_sink:
    print("   %-8s %-16s %10d %10d %10d %7.1f%%  %s" % ("sink %d" % i, "127.0.0.1:" + port, st["traces"]["requests"],
          st["traces"]["items"], len(tr), 100.0 * sum(tr.values()) / total, health.get(port, "?")))
split = [t for t, s in owners.items() if len(s) > 1]
acked = traces(os.path.join(work, "acked.traces")) + traces(os.path.join(work, "acked-grpc.traces"))
got = collections.Counter()
for _, _, _, tr in per_sink:
    got.update(tr)
lost = sum(max(0, n - got.get(t, 0)) for t, n in acked.items())
print()
print("   spans acknowledged to otlp-load: %d; delivered to sinks: %d; acknowledged but missing: %d" % (
    sum(acked.values()), sum(got.values()), lost))
print("   traces: %d; split across backends: %d%s" % (len(owners), len(split),
      "  -> every trace landed whole on one collector" if not split and owners else ""))
PY
echo
grep -E '^otlp_gateway_(requests_total\{protocol="(http|grpc)",signal="traces",code="(200|OK)"|received_items_total\{protocol="(http|grpc)",signal="traces"|backend_items_total\{.*traces|ring_backends)' \
  "$work/metrics.txt" | sed 's/^/   /'
echo
echo "   Metrics: http://127.0.0.1:$tm_port/metrics   Point an app at it: OTEL_EXPORTER_OTLP_ENDPOINT=http://localhost:$gw_port"
echo "   (or, with OTEL_EXPORTER_OTLP_PROTOCOL=grpc, OTEL_EXPORTER_OTLP_ENDPOINT=http://localhost:$grpc_port)"
echo "== done; stopping the gateway and sinks"
