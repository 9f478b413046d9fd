"""What a cluster would need for the full MNIST test set, from measured per-input CPU times.

Reads `absint bench` results (image experiments), takes each (experiment, analysis)'s mean CPU
seconds per input (the worker's process time: it does not grow when other jobs share the cores),
and scales it to ``--images`` inputs per experiment on ``--cores`` single-threaded workers::

    python benchmarks/cluster_estimate.py benchmarks/results/compare_all.jsonl --images 10000 --cores 64

The estimate assumes one input per task, perfect load balance and no start-up cost (each worker
loads torch and a network once, ~2 s); inputs that hit the time limit are counted at the CPU
time they used, so an analysis with a higher limit would cost more.
"""
from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

from absint.bench.report import analysis_sort_key, is_image_row
from absint.bench.store import read_many


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", type=Path, nargs="+")
    ap.add_argument("--images", type=int, default=10000, help="inputs per experiment (MNIST test set: 10000)")
    ap.add_argument("--cores", type=int, default=64)
    args = ap.parse_args()
    cpu: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in read_many(args.results):
        if is_image_row(r) and r.get("cpu_seconds") is not None:
            cpu[r["analysis"]][r["benchmark"]].append(float(r["cpu_seconds"]))
    print(f"| analysis | experiments | mean CPU s per input | core-hours ({args.images} inputs each) "
          f"| wall on {args.cores} cores |")
    print("|---|---:|---:|---:|---:|")
    total = 0.0
    for a in sorted(cpu, key=analysis_sort_key):
        per_exp = {b: sum(v) / len(v) for b, v in cpu[a].items()}
        hours = sum(per_exp.values()) * args.images / 3600
        total += hours
        mean = sum(per_exp.values()) / len(per_exp)
        print(f"| {a} | {len(per_exp)} | {mean:.3f} | {hours:.1f} | {_duration(hours / args.cores)} |")
    print(f"| all | | | {total:.1f} | {_duration(total / args.cores)} |")


def _duration(hours: float) -> str:
    return f"{hours * 60:.0f} min" if hours < 1 else f"{hours:.1f} h"


if __name__ == "__main__":
    main()
