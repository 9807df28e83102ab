#!/usr/bin/env bash
# Builds the libFuzzer harnesses with clang in BUILD_DIR and runs each for SECONDS on a scratch copy of its seed corpus; fails on any finding.
set -euo pipefail
seconds=${1:?usage: run-fuzzers.sh SECONDS_PER_HARNESS [BUILD_DIR]}
src=$(cd "$(dirname "$0")/.." && pwd)
build=${2:-$src/build-fuzz}
harnesses=(fuzz_forward fuzz_c_api fuzz_npy)
mkdir -p "$build"
log="$build/fuzz-build.log"
# Only the harnesses and the instrumented library they link are built: the rest of the tree is not needed here.
if ! { cmake -S "$src" -B "$build" -DCMAKE_C_COMPILER=clang-14 -DCMAKE_CXX_COMPILER=clang++-14 -DCMAKE_BUILD_TYPE=Release \
         -DMEMATTN_FUZZ=ON -DMEMATTN_PYTHON=OFF -DMEMATTN_BUILD_TESTS=OFF &&
       cmake --build "$build" -j "${JOBS:-$(nproc)}" --target "${harnesses[@]}"; } > "$log" 2>&1; then
  tail -40 "$log"
  echo "run-fuzzers: the clang build failed (log: $log)" >&2
  exit 1
fi
# The corpus grows while fuzzing; a scratch copy keeps the repository's seeds as they are.
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
failed=()
for h in "${harnesses[@]}"; do
  mkdir -p "$scratch/$h" "$build/crashes/$h"
  cp "$src/fuzz/corpus/$h/"* "$scratch/$h/"
  run_log="$build/$h.log"
  if ! "$build/fuzz/$h" -max_total_time="$seconds" -timeout=30 -rss_limit_mb=4096 -len_control=20 \
       -artifact_prefix="$build/crashes/$h/" "$scratch/$h" > "$run_log" 2>&1; then
    failed+=("$h")
    grep -v -E '^#[0-9]+[[:space:]]+(NEW|REDUCE|pulse)' "$run_log" | tail -40
  fi
  # libFuzzer's last status line: executions, then the coverage (edges) and features reached.
  done_line=$(grep -E '^#[0-9]+[[:space:]]+DONE' "$run_log" | tail -1 || true)
  echo "$h: ${done_line:-no DONE line (see $run_log)}"
done
if ((${#failed[@]})); then
  echo "run-fuzzers: findings in ${failed[*]}; inputs under $build/crashes/, logs $build/<harness>.log" >&2
  exit 1
fi
