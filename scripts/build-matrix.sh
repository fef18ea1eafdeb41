#!/usr/bin/env bash
# Compile-only check: configures and builds everything (gateway, tools, benches, unit tests) for each
# compiler and build type, under the project's -Wall -Wextra -Werror flags, so a warning that only one
# optimisation level or one compiler shows (gcc's -O3 maybe-uninitialized, clang's own diagnostics) fails here
# instead of at a packager's. Runs no test. Installs only what is missing of the build dependencies (and clang,
# when a clang build is asked for): the packages .ci/run installs anyway.
# Usage: scripts/build-matrix.sh [CC:TYPE ...]   (default: gcc and clang x Release RelWithDebInfo Debug MinSizeRel)
#        e.g. scripts/build-matrix.sh gcc:Release clang:Release clang:Debug
# Build dirs: $BUILD_MATRIX_DIR/<cc>-<type> (default build-matrix/, reused between runs).
set -euo pipefail
cd "$(dirname "$0")/.."
root=${BUILD_MATRIX_DIR:-build-matrix}
combos=("$@")
if [ ${#combos[@]} -eq 0 ]; then
  for cc in gcc clang; do
    for type in Release RelWithDebInfo Debug MinSizeRel; do combos+=("$cc:$type"); done
  done
fi
for c in "${combos[@]}"; do
  case "$c" in
    gcc:* | clang:*) ;;
    *) echo "usage: scripts/build-matrix.sh [CC:TYPE ...]  (CC: gcc or clang; TYPE: Release, RelWithDebInfo," \
         "Debug or MinSizeRel)" >&2; exit 2 ;;
  esac
  case "${c#*:}" in
    Release | RelWithDebInfo | Debug | MinSizeRel) ;;
    *) echo "unknown build type in $c (Release, RelWithDebInfo, Debug, MinSizeRel)" >&2; exit 2 ;;
  esac
done
scripts/deps.sh
if [[ " ${combos[*]} " == *" clang:"* ]] && ! command -v clang >/dev/null; then scripts/deps.sh --fuzz; fi

failed=()
for c in "${combos[@]}"; do
  cc=${c%%:*}
  type=${c#*:}
  dir="$root/$cc-$type"
  echo "=== $cc $type ($dir)"
  start=$SECONDS
  # CC is read only when a build dir is first configured: a reused dir keeps the compiler it was made with,
  # which is the one its name says.
  if CC=$cc cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE="$type" >/dev/null && cmake --build "$dir" -j"$(nproc)"; then
    echo "--- $cc $type: ok ($((SECONDS - start)) s)"
  else
    echo "--- $cc $type: FAILED"
    failed+=("$cc:$type")
  fi
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "build matrix: ${#failed[@]} of ${#combos[@]} failed: ${failed[*]}"
  exit 1
fi
echo "build matrix: ${#combos[@]} of ${#combos[@]} built without warnings"
