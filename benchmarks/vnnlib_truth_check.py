"""Run one analysis (+ attack) on every instance of a VNN-COMP benchmark and compare with truth.csv.

Prints, per truth verdict, how many instances were verified / falsified / unknown, the number
of wrong answers (must be 0), and how many sat instances the attack falsified with a checked
counterexample. Example (the issue #2 check)::

    python benchmarks/vnnlib_truth_check.py ../shared/bench/mnistfc --analysis box --timeout 30
    python benchmarks/vnnlib_truth_check.py ../shared/bench/acasxu --analysis box --timeout 30
"""
from __future__ import annotations

import argparse
import csv
import time
from collections import Counter
from pathlib import Path

import torch

import absint


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("benchmark", type=Path, help="folder with instances.csv / truth.csv (e.g. ../shared/bench/acasxu)")
    ap.add_argument("--analysis", default="box")
    ap.add_argument("--timeout", type=float, default=None, help="override per-instance timeout (s)")
    ap.add_argument("--attack-budget", type=float, default=None,
                    help="extra attack seconds after an inconclusive analysis (default: verify's)")
    ap.add_argument("--limit", type=int, default=None, help="only the first N instances")
    ap.add_argument("--csv", type=Path, default=None, help="write per-instance rows here")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    rows = list(csv.DictReader(open(args.benchmark / "truth.csv")))[: args.limit]
    table = Counter()
    per_net: Counter = Counter()
    wrong = []
    out_rows = []
    t_start = time.perf_counter()
    nets: dict[str, absint.Graph] = {}
    for row in rows:
        net = nets.setdefault(row["onnx"], absint.load_network(args.benchmark / row["onnx"]))
        timeout = args.timeout if args.timeout is not None else float(row["timeout"])
        r = absint.verify(net, args.benchmark / row["vnnlib"], analysis=args.analysis, timeout=timeout,
                          attack_budget=args.attack_budget)
        truth = row["verdict"]
        table[(truth, str(r.verdict))] += 1
        per_net[(Path(row["onnx"]).stem, truth, str(r.verdict))] += 1
        if (truth == "sat" and r.verified) or (truth == "unsat" and r.falsified):
            wrong.append((row["onnx"], row["vnnlib"], truth, str(r.verdict)))
        out_rows.append([row["onnx"], row["vnnlib"], truth, str(r.verdict), f"{r.seconds:.3f}", r.reason])
    elapsed = time.perf_counter() - t_start
    print(f"benchmark {args.benchmark} analysis={args.analysis} instances={len(rows)} wall={elapsed:.1f}s")
    for truth in ("unsat", "sat", "unknown"):
        n = sum(v for (t, _), v in table.items() if t == truth)
        if n:
            print(f"  truth {truth:<7} n={n:<4} verified={table[(truth, 'verified')]:<4} "
                  f"falsified={table[(truth, 'falsified')]:<4} unknown={table[(truth, 'unknown')]}")
    for net in sorted({k[0] for k in per_net}):
        print(f"  {net}: " + ", ".join(f"{t} {v}={per_net[(net, t, v)]}" for t in ("unsat", "sat")
                                       for v in ("verified", "falsified") if per_net[(net, t, v)]))
    print(f"  wrong answers: {len(wrong)}")
    for w in wrong:
        print("   WRONG:", *w)
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            csv.writer(f).writerows([["onnx", "vnnlib", "truth", "verdict", "seconds", "reason"]] + out_rows)
    return 1 if wrong else 0


if __name__ == "__main__":
    raise SystemExit(main())
