#!/usr/bin/env bash
# Installs what is missing, builds, and runs the whole test suite through ctest.
# Usage: scripts/test.sh              (build/, Release: -O3 -DNDEBUG, what packagers and users build)
#        scripts/test.sh --sanitize   (build-asan/, AddressSanitizer + UndefinedBehaviorSanitizer)
# Other build types and clang are compiled (not tested) by scripts/build-matrix.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh --tests
dir=build
opts=(-DCMAKE_BUILD_TYPE=Release)
if [ "${1:-}" = "--sanitize" ]; then
  dir=build-asan
  opts=(-DCMAKE_BUILD_TYPE=Debug -DOTLPGW_SANITIZE=ON)
  export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:strict_string_checks=1
  export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
fi
cmake -S . -B "$dir" "${opts[@]}" >/dev/null
cmake --build "$dir" -j"$(nproc)"
cd "$dir"
ctest --output-on-failure --timeout 600
