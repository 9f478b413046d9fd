#!/usr/bin/env bash
# VNN-COMP: install absint on a fresh machine.   usage: install_tool.sh v1
set -euo pipefail
VERSION="${1:-v1}"
if [ "$VERSION" != "v1" ]; then echo "expected version string v1, got $VERSION" >&2; exit 1; fi
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
"$ROOT/scripts/install.sh"
PY="${PYTHON:-python3}"
# Smoke test: the chapter-5 command line answers.
"$PY" -m absint.vnnlib.cli --version
