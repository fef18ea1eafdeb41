#!/usr/bin/env bash
# Builds the libFuzzer targets with clang and runs each for a bounded time over its seed corpus.
# Usage: scripts/fuzz.sh [SECONDS_PER_TARGET]   (default 30)
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-30}
scripts/deps.sh --fuzz
CC=clang cmake -S . -B build-fuzz -DOTLPGW_FUZZ=ON -DOTLPGW_TESTS=OFF -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build-fuzz -j"$(nproc)" --target fuzz_config fuzz_http fuzz_splice fuzz_json fuzz_backend
for t in config http splice json backend; do
  work=$(mktemp -d)
  echo "== fuzz_$t for ${secs}s"
  rc=0
  build-fuzz/tests/fuzz/fuzz_$t -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    "$work" "tests/fuzz/corpus/$t" >"$work.log" 2>&1 || rc=$?
  grep -E "^(stat::number_of_executed_units|stat::peak_rss_mb|Done)|ERROR|SUMMARY" "$work.log" || true
  [ "$rc" -eq 0 ] || tail -50 "$work.log"
  rm -f "$work.log"
  rm -rf "$work"
  [ "$rc" -eq 0 ] || { echo "fuzz_$t found a crash (exit $rc)"; exit 1; }
done
echo "fuzzing: no crash"
