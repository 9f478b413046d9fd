"""Certified count vs per-image time budget from one or more ``refine_bench.py`` CSV files.

An image counts as certified within budget ``t`` if the run verified it in at most ``t`` seconds
(the run itself used one fixed time limit, so this is the curve of *that* run, not of separate
runs with smaller limits: the tightening share of a shorter limit would differ).

    python benchmarks/refine_curve.py benchmarks/results/refine_6x100_refinepoly.csv [more.csv ...]
"""
from __future__ import annotations

import csv
import statistics
import sys

BUDGETS = (0.5, 1, 5, 10, 30, 60, 90, 120)


def main(paths: list[str]) -> int:
    print("| run | correct | " + " | ".join(f"≤ {b:g} s" for b in BUDGETS) + " | median s | mean s |")
    print("|---|---|" + "---|" * len(BUDGETS) + "---|---|")
    for p in paths:
        with open(p) as fh:
            rows = [r for r in csv.DictReader(fh) if r["verdict"] != "misclassified"]
        ver = [float(r["seconds"]) for r in rows if r["verdict"] == "verified"]
        times = [float(r["seconds"]) for r in rows]
        counts = [sum(t <= b for t in ver) for b in BUDGETS]
        print(f"| {p.rsplit('/', 1)[-1]} | {len(rows)} | " + " | ".join(map(str, counts))
              + f" | {statistics.median(times):.1f} | {statistics.mean(times):.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
