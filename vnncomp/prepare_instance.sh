#!/usr/bin/env bash
# VNN-COMP: check that one instance can be run (the model loads, the property reads).
#   usage: prepare_instance.sh v1 CATEGORY ONNX VNNLIB
# absint starts no server and leaves no process behind, so there is nothing to stop here.
set -euo pipefail
if [ "$#" -ne 4 ] || [ "$1" != "v1" ]; then echo "usage: $0 v1 CATEGORY ONNX VNNLIB" >&2; exit 1; fi
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
ONNX="$3"; VNNLIB="$4"
case "$ONNX" in *.gz) gunzip -kf "$ONNX"; ONNX="${ONNX%.gz}";; esac
case "$VNNLIB" in *.gz) gunzip -kf "$VNNLIB"; VNNLIB="${VNNLIB%.gz}";; esac
exec "${PYTHON:-python3}" -m absint.vnnlib.vnncomp prepare "$ONNX" "$VNNLIB"
