#!/bin/sh
# Builds examples/consumer against the memattn installed in PREFIX with the flags of its memattn.pc
# (shared, and static with --static) into OUTDIR, and runs the four programs. CC and CXX pick the
# compilers.
set -eu
if [ $# -ne 2 ]; then
  echo "usage: $0 PREFIX OUTDIR" >&2
  exit 2
fi
prefix=$1
out=$2
here=$(cd "$(dirname "$0")" && pwd)
cc=${CC:-cc}
cxx=${CXX:-c++}

pc=$(find "$prefix" -path '*/pkgconfig/memattn.pc' | head -n 1)
if [ -z "$pc" ]; then
  echo "build-with-pkg-config: no memattn.pc under $prefix" >&2
  exit 1
fi
export PKG_CONFIG_PATH="$(dirname "$pc")${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
mkdir -p "$out"

cflags=$(pkg-config --cflags memattn)
libdir=$(pkg-config --variable=libdir memattn)
# Shared: -lmemattn finds libmemattn.so; the rpath lets the programs run from OUTDIR.
shared_libs="$(pkg-config --libs memattn) -Wl,-rpath,$libdir"
# Static: the same flags plus Libs.private and Requires.private; -l:libmemattn.a because -lmemattn
# prefers the shared library where both are installed.
static_libs=""
for flag in $(pkg-config --static --libs memattn); do
  [ "$flag" = -lmemattn ] && flag=-l:libmemattn.a
  static_libs="$static_libs $flag"
done

set -x
"$cc" -std=c11 -O2 $cflags "$here/consumer.c" -o "$out/consumer_c" $shared_libs -lm
"$cxx" -std=c++20 -O2 $cflags "$here/consumer.cpp" -o "$out/consumer_cpp" $shared_libs
"$cc" -std=c11 -O2 $cflags "$here/consumer.c" -o "$out/consumer_c_static" $static_libs -lm
"$cxx" -std=c++20 -O2 $cflags "$here/consumer.cpp" -o "$out/consumer_cpp_static" $static_libs
for program in consumer_c consumer_cpp consumer_c_static consumer_cpp_static; do
  "$out/$program"
done
# The static programs must not have picked up the shared library after all.
for program in consumer_c_static consumer_cpp_static; do
  if readelf -d "$out/$program" | grep -q 'libmemattn\.so'; then
    echo "build-with-pkg-config: $program needs libmemattn.so" >&2
    exit 1
  fi
done
