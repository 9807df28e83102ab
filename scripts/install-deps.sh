#!/usr/bin/env bash
# Installs what memattn builds and tests with: Debian 12 packages, and for a Python other than
# Debian's (PYTHON=...), the PyPI packages it lacks. Does nothing when all are present.
set -euo pipefail
python=${PYTHON:-/usr/bin/python3}
packages=(g++ make cmake pkg-config libgtest-dev libbenchmark-dev libhwy-dev libcli11-dev pybind11-dev
          python3-dev python3-numpy python3-pytest python3-torch
          clang-14 libclang-rt-14-dev libomp-14-dev libopenmpi-dev openmpi-bin)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "install-deps: installing ${missing[*]}"
  sudo=""
  [[ $(id -u) -eq 0 ]] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
# Debian's packages above serve /usr/bin/python3; another interpreter gets its own from PyPI
# (torch stays optional there: the tests that need it are skipped without it).
if [[ $(command -v "$python" || true) != /usr/bin/python3* ]]; then
  need=()
  for m in numpy pytest pybind11; do
    "$python" -c "import $m" 2>/dev/null || need+=("$m")
  done
  if ((${#need[@]})); then
    echo "install-deps: pip installing ${need[*]} for $python"
    "$python" -m pip install -q "${need[@]}"
  fi
fi
