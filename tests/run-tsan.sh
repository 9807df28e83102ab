#!/usr/bin/env bash
# Builds the C++ suite with clang and ThreadSanitizer in BUILD_DIR and runs it under LLVM's OpenMP with its Archer tool; fails on any race or failure.
set -euo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$src/build-tsan}
log="$build/tsan-build.log"
mkdir -p "$build"
# clang's OpenMP (libomp) with Archer reports the runtime's own synchronisation to TSan; GCC's
# libgomp is not instrumented, so its barriers would show as races.
archer=$(dirname "$(readlink -f "$(command -v clang++-14)")")/../lib/libarcher.so
if [[ ! -f "$archer" ]]; then
  echo "run-tsan: no libarcher.so next to clang++-14 (Debian's libomp-14-dev has it)" >&2
  exit 1
fi
if ! { cmake -S "$src" -B "$build" -DCMAKE_C_COMPILER=clang-14 -DCMAKE_CXX_COMPILER=clang++-14 -DCMAKE_BUILD_TYPE=Release \
         -DMEMATTN_TSAN=ON -DMEMATTN_PYTHON=OFF &&
       cmake --build "$build" -j "${JOBS:-$(nproc)}" --target memattn_tests; } > "$log" 2>&1; then
  tail -40 "$log"
  echo "run-tsan: the clang build failed (log: $log)" >&2
  exit 1
fi
# The forked-child test is left out: TSan does not support starting threads after a
# multi-threaded fork (it stops the child), which is exactly what that test does.
TSAN_OPTIONS="halt_on_error=1 ignore_noninstrumented_modules=1" OMP_TOOL_LIBRARIES="$archer" \
  "$build/memattn_tests" --gtest_filter='-Determinism.conc_fork_child_computes_in_parallel' --gtest_brief=1
