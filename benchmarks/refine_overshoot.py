"""How far past its time limit each LP/MILP refinement analysis runs, on big random MLPs.

For every (network, analysis, time limit) it runs ``absint.verify`` once on one input box (no
attack, so the whole limit goes to the analysis) and records the wall time, the CPU time of the
process, the overshoot ``wall − limit`` against the allowance ``max(1 s, 5 % of the limit)``, the
verdict and reason, and which stages ran. Random weights are fine: what matters is the size.

One command (prints a table, writes JSON Lines and a markdown table)::

    nice -n 10 python benchmarks/refine_overshoot.py --sizes 784,1024,1024,10 784,4096,4096,10 \\
        --timeouts 5 20 --out benchmarks/results/refine_overshoot.jsonl

``uptime`` is recorded before and after; run it on a quiet machine for numbers worth comparing.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ANALYSES = ("lp", "milp", "refinezono", "refinepoly", "kpoly")


def allowance(limit: float) -> float:
    """The overshoot the project accepts: ``max(1 s, 5 %)``."""
    return max(1.0, 0.05 * limit)


def random_mlp(sizes: list[int], seed: int):
    from absint.testing import random_mlp as build

    return build(seed, tuple(sizes))


def one_run(graph, analysis: str, limit: float, eps: float, seed: int, options: dict) -> dict:
    import absint
    from absint.specs import linf_ball, robustness_property

    rng = np.random.default_rng(seed)
    x0 = rng.uniform(0.2, 0.8, size=int(np.prod(graph.input_shape)))
    with torch.no_grad():
        label = int(graph.forward(torch.as_tensor(x0[None])).argmax())
    n_out = int(np.prod(graph.output_shape))
    inst = (linf_ball(x0, eps), robustness_property(label, n_out))
    an = absint.get_analysis(analysis, **options)
    t0, c0 = time.perf_counter(), time.process_time()
    r = absint.verify(graph, inst, analysis=an, timeout=limit, attack=False)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    det = r.details or {}
    cpu += float(det.get("solver_process_cpu_s", 0.0))  # the HiGHS worker process (solves it finished)
    return {"analysis": analysis, "limit": limit, "wall": round(wall, 2), "cpu": round(cpu, 2),
            "overshoot": round(wall - limit, 2), "allowed": allowance(limit),
            "within": bool(wall - limit <= allowance(limit)), "verdict": r.verdict.value,
            "reason": (r.reason or "")[:160], "stages": det.get("stage_seconds", {}),
            "solves": det.get("solves", {}), "load": round(os.getloadavg()[0], 2)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", nargs="+", default=["784,1024,1024,10"],
                    help="layer sizes of each random MLP, comma-separated")
    ap.add_argument("--analyses", nargs="+", default=list(ANALYSES))
    ap.add_argument("--timeouts", nargs="+", type=float, default=[5.0, 20.0])
    ap.add_argument("--eps", type=float, default=0.02)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--opt", action="append", default=[], help="analysis option key=value (repeatable)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/refine_overshoot.jsonl"))
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    import ast

    options = {}
    for item in args.opt:
        k, _, v = item.partition("=")
        try:
            options[k] = ast.literal_eval(v)
        except (ValueError, SyntaxError):
            options[k] = v
    up0 = os.popen("uptime").read().strip()
    rows = []
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w") as fh:
        for spec in args.sizes:
            sizes = [int(s) for s in spec.split(",")]
            graph = random_mlp(sizes, args.seed)
            for limit in args.timeouts:
                for analysis in args.analyses:
                    row = {"network": "x".join(map(str, sizes)), **one_run(graph, analysis, limit, args.eps, args.seed,
                                                                          options)}
                    rows.append(row)
                    fh.write(json.dumps(row) + "\n")
                    fh.flush()
                    print(f"{row['network']:>18} {analysis:>10} limit {limit:5.1f}s wall {row['wall']:6.2f}s "
                          f"cpu {row['cpu']:6.2f}s overshoot {row['overshoot']:+6.2f}s "
                          f"{'ok' if row['within'] else 'OVER'} {row['verdict']} {row['reason'][:70]}", flush=True)
    up1 = os.popen("uptime").read().strip()
    table = ["| network | analysis | limit s | wall s | CPU s | overshoot s | within max(1 s, 5 %) | verdict |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        table.append(f"| {r['network']} | {r['analysis']} | {r['limit']:g} | {r['wall']:.2f} | {r['cpu']:.2f} | "
                     f"{r['overshoot']:+.2f} | {'yes' if r['within'] else '**no**'} | {r['verdict']} |")
    md = "\n".join([f"uptime before: {up0}", f"uptime after: {up1}", "", *table])
    args.out.with_suffix(".md").write_text(md + "\n")
    print(md)
    return 0 if all(r["within"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
