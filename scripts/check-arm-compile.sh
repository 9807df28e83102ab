#!/usr/bin/env bash
# Compiles the library's sources for aarch64 (NEON) with Debian's cross compiler, without linking:
# proof that the SIMD dispatch and the x86-only bf16 kernels build on ARM. Needs
# g++-aarch64-linux-gnu (apt-get install g++-aarch64-linux-gnu); not part of `make test`.
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for f in $(git ls-files 'src/*.cpp'); do
  aarch64-linux-gnu-g++ -std=c++20 -O2 -fopenmp -Iinclude -Isrc -I/usr/include \
    "-DHWY_DISABLED_TARGETS=(HWY_SVE|HWY_SVE2|HWY_SVE_256|HWY_SVE2_128)" -c "$f" -o "$out/$(basename "$f").o"
done
echo "check-arm-compile: $(git ls-files 'src/*.cpp' | wc -l) sources compiled for aarch64"
