#!/usr/bin/env bash
# Install absint and everything it uses on a fresh Debian/Ubuntu machine with Python >= 3.10.
#   system: libcdd-dev libgmp-dev (pycddlib builds from source against them)
#   python: torch==2.13.0 first (the CPU wheel; an unpinned torch pulls gigabytes of CUDA packages),
#           then absint with all extras, then the example plugin in examples/.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""
if [ "$(id -u)" != "0" ] && command -v sudo >/dev/null; then SUDO="sudo"; fi
if command -v apt-get >/dev/null; then
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libcdd-dev libgmp-dev >/dev/null
fi
PY="${PYTHON:-python3}"
$PY -m pip install -q --upgrade pip
$PY -m pip install -q torch==2.13.0
$PY -m pip install -q -e ".[all,ray]"
if [ -d examples/absint-symint ]; then
  $PY -m pip install -q ./examples/absint-symint
fi
echo "absint installed: $($PY -c 'import absint; print(absint.__version__)')"
