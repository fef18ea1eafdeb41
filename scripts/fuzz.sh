#!/usr/bin/env bash
# Builds the libFuzzer targets with clang and fuzzes each for a bounded time, starting from its committed corpus.
# Usage: scripts/fuzz.sh [SECONDS_PER_TARGET]          (default 30; CI runs `scripts/fuzz.sh 30`)
#        scripts/fuzz.sh --merge [SECONDS_PER_TARGET]  (default 600) fuzz longer, then fold what coverage was
#                                                      gained into tests/fuzz/corpus/<target> (review, commit)
# Corpora: tests/fuzz/corpus/<target> holds named seeds (hand-written, or captured from real clients by
# tests/fuzz/capture_sdk_requests.py), kept as they are, and inputs named by their SHA-1: those a --merge run
# found to add coverage over the seeds (libFuzzer -merge=1), the only ones --merge rewrites. A run adds what it
# finds to $BUILD/corpus/<target>, kept between runs, which --merge minimises and folds in.
# Crash, timeout, leak and out-of-memory inputs go to $BUILD/artifacts/<target>/ (CI keeps that folder): a failing
# target prints each new one (path, size, hexdump of its first 256 bytes, how to reproduce); every target runs,
# and the script exits 1 if any failed. $BUILD is build-fuzz, or $FUZZ_BUILD_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
merge=0
if [ "${1:-}" = --merge ]; then
  merge=1
  shift
fi
secs=${1:-$([ "$merge" -eq 1 ] && echo 600 || echo 30)}
build=${FUZZ_BUILD_DIR:-build-fuzz}
max_corpus_kib=1024 # per target, the SHA-1 named inputs --merge keeps
targets=(config http splice json backend grpc tls spool)
scripts/deps.sh --fuzz
CC=clang cmake -S . -B "$build" -DOTLPGW_FUZZ=ON -DOTLPGW_TESTS=OFF -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$build" -j"$(nproc)" --target "${targets[@]/#/fuzz_}"

hashed() { find "$1" -maxdepth 1 -type f -regextype posix-extended -regex '.*/[0-9a-f]{40}' "${@:2}"; }
named() { find "$1" -maxdepth 1 -type f -regextype posix-extended ! -regex '.*/[0-9a-f]{40}' "${@:2}"; }

# Prints every input libFuzzer saved in $1 after the stamp file $2, or says there is none.
show_artifacts() {
  local n=0 f
  while IFS= read -r f; do
    n=$((n + 1))
    echo "-- artifact $f ($(stat -c %s "$f") bytes); reproduce: $bin $f"
    od -A x -t x1z -v "$f" | head -n 16
  done < <(find "$1" -type f -newer "$2" | sort)
  [ "$n" -gt 0 ] || echo "-- no input saved in $1 (see the log above)"
}

failed=()
for t in "${targets[@]}"; do
  bin=$build/tests/fuzz/fuzz_$t
  seeds=tests/fuzz/corpus/$t
  work=$build/corpus/$t
  art=$build/artifacts/$t
  log=$build/fuzz_$t.log
  mkdir -p "$work" "$art"
  stamp=$(mktemp)
  echo "== fuzz_$t for ${secs}s: $(find "$seeds" -type f | wc -l) committed inputs," \
    "$(find "$work" -type f | wc -l) grown by earlier runs"
  rc=0
  "$bin" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix="$art/" \
    "$work" "$seeds" >"$log" 2>&1 || rc=$?
  grep -E "^#[0-9]+[[:space:]]+(INITED|DONE)|^stat::(number_of_executed_units|peak_rss_mb)|ERROR|SUMMARY" "$log" || true
  if [ "$rc" -ne 0 ]; then
    tail -50 "$log"
    echo "fuzz_$t failed (exit $rc); inputs in $art/:"
    show_artifacts "$art" "$stamp"
    failed+=("fuzz_$t")
    rm -f "$stamp"
    continue
  fi
  rm -f "$stamp"
  if [ "$merge" -eq 1 ]; then
    # Into a copy of the named seeds, libFuzzer adds (SHA-1 named) each input of the committed and grown corpora
    # that reaches code the folder does not reach yet (edges only, -use_counters=0: hit counts alone would keep
    # hundreds of near-duplicates), smallest first; the new SHA-1 files replace the old ones.
    into=$(mktemp -d)
    named "$seeds" -exec cp {} "$into/" \;
    if ! "$bin" -merge=1 -use_counters=0 -timeout=10 -rss_limit_mb=2048 -artifact_prefix="$art/" \
      "$into" "$seeds" "$work" >"$build/merge_$t.log" 2>&1; then
      tail -20 "$build/merge_$t.log"
      failed+=("fuzz_$t (merge)")
      rm -rf "$into"
      continue
    fi
    hashed "$seeds" -delete
    hashed "$into" -exec cp {} "$seeds/" \;
    rm -rf "$into"
    kib=$(hashed "$seeds" -printf '%s\n' | awk '{s += $1} END {printf "%d", (s + 1023) / 1024}')
    echo "   merged: $(named "$seeds" | wc -l) named seeds + $(hashed "$seeds" | wc -l) inputs that add coverage" \
      "(${kib} KiB)"
    if [ "$kib" -gt "$max_corpus_kib" ]; then
      echo "   $seeds: ${kib} KiB of merged inputs, over ${max_corpus_kib} KiB: not for committing as is"
      failed+=("fuzz_$t (corpus size)")
    fi
  fi
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzzing failed: ${failed[*]} (inputs under $build/artifacts/)"
  exit 1
fi
if [ "$merge" -eq 1 ]; then
  echo "fuzzing: no crash; corpora merged into tests/fuzz/corpus/ (git status tests/fuzz/corpus)"
else
  echo "fuzzing: no crash"
fi
