#!/usr/bin/env python3
"""First-order SDP-cert vs DeepPoly on VNN-COMP 2021 mnistfc (mnist-net_256x2, 784-256-256-10).

Runs ``absint.verify`` on each instance of ``../shared/bench/mnistfc/instances.csv`` for the
256x2 network with the analyses below and the given per-instance time limit, and records the
verdict, margin and time next to the consolidated truth (``truth.csv``). One JSON line per
(instance, analysis); resumable.

* ``deeppoly``: DeepPoly (PGD attack first, as for every analysis).
* ``sdp-fo``: SDP-cert with the first-order solver, pre-activation bounds from DeepPoly, combined
  with DeepPoly's own bound (rows DeepPoly proves are not solved).

Usage (from the repository root)::

    python benchmarks/sdp_mnistfc.py --timeout 120 --out benchmarks/results/sdp_mnistfc.jsonl
    python benchmarks/sdp_mnistfc.py --report benchmarks/results/sdp_mnistfc.jsonl
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

import absint

ROOT = Path(__file__).resolve().parents[1]
BENCH = (ROOT / ".." / "shared" / "bench" / "mnistfc").resolve()
log = logging.getLogger("sdp_mnistfc")

ANALYSES = {
    "deeppoly": {},
    "sdp-fo": {"solver": "fo", "bounds": "deeppoly"},
}


def instances(net: str) -> list[tuple[str, str, str]]:
    """``(onnx, vnnlib, truth verdict)`` rows for ``net``."""
    truth = {}
    with (BENCH / "truth.csv").open() as fh:
        for row in csv.DictReader(fh):
            truth[(row["onnx"], row["vnnlib"])] = row["verdict"]
    out = []
    with (BENCH / "instances.csv").open() as fh:
        for onnx, vnnlib, _ in csv.reader(fh):
            if Path(onnx).name == net:
                out.append((onnx, vnnlib, truth.get((onnx, vnnlib), "unknown")))
    return out


def run(args: argparse.Namespace) -> None:
    out = Path(args.out)
    done = set()
    if out.exists():
        for line in out.read_text().splitlines():
            r = json.loads(line)
            done.add((r["vnnlib"], r["analysis"]))
    rows = instances(args.net)[args.start:args.start + args.count]
    nets = {}
    with out.open("a") as fh:
        for onnx, vnnlib, truth in rows:
            net = nets.setdefault(onnx, absint.load_network(BENCH / onnx))
            for name in args.analyses:
                if (vnnlib, name) in done:
                    continue
                kw = dict(ANALYSES[name])
                if name == "sdp-fo":
                    kw["fo_options"] = {"iterations": args.iterations}
                t0 = time.perf_counter()
                r = absint.verify(net, BENCH / vnnlib, analysis=name, timeout=args.timeout, **kw)
                rec = {"vnnlib": vnnlib, "analysis": name, "truth": truth, "verdict": str(r.verdict),
                       "margin": r.margin, "seconds": time.perf_counter() - t0, "reason": r.reason,
                       "timeout": args.timeout}
                if r.verified and truth == "sat":
                    log.error("SOUNDNESS BUG: %s verified sat instance %s", name, vnnlib)
                fh.write(json.dumps(rec) + "\n")
                fh.flush()
                log.info("%-34s %-9s %-9s (truth %s) margin %s %.1fs", vnnlib, name, r.verdict, truth,
                         "-" if r.margin is None else f"{r.margin:.3g}", rec["seconds"])


def report(path: Path) -> str:
    rows = [json.loads(line) for line in Path(path).read_text().splitlines()]
    names = list(dict.fromkeys(r["analysis"] for r in rows))
    lines = ["| analysis | instances | verified | falsified | unknown | verified on sat (must be 0) | "
             "mean s | median s | mean s (verified) |", "|---|---|---|---|---|---|---|---|---|"]
    for n in names:
        rs = [r for r in rows if r["analysis"] == n]
        ver = [r for r in rs if r["verdict"] == "verified"]
        lines.append(
            f"| {n} | {len(rs)} | {len(ver)} | {sum(r['verdict'] == 'falsified' for r in rs)} | "
            f"{sum(r['verdict'] == 'unknown' for r in rs)} | "
            f"{sum(r['verdict'] == 'verified' and r['truth'] == 'sat' for r in rs)} | "
            f"{np.mean([r['seconds'] for r in rs]):.1f} | {np.median([r['seconds'] for r in rs]):.1f} | "
            f"{np.mean([r['seconds'] for r in ver]) if ver else float('nan'):.1f} |")
    lines.append("")
    lines.append("| instance | truth | " + " | ".join(f"{n} (margin, s)" for n in names) + " |")
    lines.append("|---|---|" + "---|" * len(names))
    for v in dict.fromkeys(r["vnnlib"] for r in rows):
        cells = []
        for n in names:
            r = next((x for x in rows if x["vnnlib"] == v and x["analysis"] == n), None)
            cells.append("" if r is None else
                         f"{r['verdict']} ({'-' if r['margin'] is None else format(r['margin'], '.3g')}, "
                         f"{r['seconds']:.0f})")
        truth = next(x["truth"] for x in rows if x["vnnlib"] == v)
        lines.append(f"| {Path(v).name} | {truth} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--net", default="mnist-net_256x2.onnx")
    p.add_argument("--timeout", type=float, default=120.0)
    p.add_argument("--iterations", type=int, default=3000, help="first-order iterations (the timeout cuts)")
    p.add_argument("--analyses", nargs="+", default=list(ANALYSES))
    p.add_argument("--start", type=int, default=0)
    p.add_argument("--count", type=int, default=1000)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "sdp_mnistfc.jsonl"))
    p.add_argument("--report", default=None)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    if args.report:
        print(report(Path(args.report)))
        return
    run(args)


if __name__ == "__main__":
    main()
