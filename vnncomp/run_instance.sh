#!/usr/bin/env bash
# VNN-COMP: verify one instance and write the results file.
#   usage: run_instance.sh v1 CATEGORY ONNX VNNLIB RESULTS_FILE TIMEOUT
# The results file holds sat (followed by the checked counterexample), unsat, unknown, timeout or
# error. The time limit covers loading the model and reading the property. The analysis is
# ABSINT_ANALYSIS (default: bab, complete branch and bound).
set -euo pipefail
if [ "$#" -ne 6 ] || [ "$1" != "v1" ]; then echo "usage: $0 v1 CATEGORY ONNX VNNLIB RESULTS_FILE TIMEOUT" >&2; exit 1; fi
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
ONNX="$3"; VNNLIB="$4"
case "$ONNX" in *.gz) gunzip -kf "$ONNX"; ONNX="${ONNX%.gz}";; esac
case "$VNNLIB" in *.gz) gunzip -kf "$VNNLIB"; VNNLIB="${VNNLIB%.gz}";; esac
exec "${PYTHON:-python3}" -m absint.vnnlib.vnncomp run "$ONNX" "$VNNLIB" "$5" "$6" --category "$2" \
  --analysis "${ABSINT_ANALYSIS:-bab}"
