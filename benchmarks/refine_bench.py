"""Benchmark of the LP/MILP refinement analyses on the ERAN MNIST networks (kPoly/PRIMA setting).

Example (the kPoly/PRIMA row "MNIST 6x100, eps 0.026", first 100 test images)::

    python benchmarks/refine_bench.py --net mnist_relu_6_100 --eps 0.026 --n 100 \\
        --analysis refinepoly --timeout 300 --csv benchmarks/results/refine_6x100.csv

Prints per image: label, verdict, seconds, margin and the analysis' phase times; at the end the
certified count and the median / mean seconds over the correctly classified images. Images are
analysed one at a time (``absint.verify`` with PGD first, as ERAN does with its own attack off;
``--no-attack`` skips it). Extra analysis options: ``--opt key=value`` (e.g. ``--opt k=1``,
``--opt timeout_lp=0.5``, ``--opt sparse_n=50``).
"""
from __future__ import annotations

import argparse
import ast
import csv
import logging
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
BENCH = (ROOT / ".." / "shared" / "bench").resolve()


def _parse_opt(items: list[str]) -> dict:
    out = {}
    for it in items:
        k, _, v = it.partition("=")
        try:
            out[k] = ast.literal_eval(v)
        except (ValueError, SyntaxError):
            out[k] = v
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--net", default="mnist_relu_6_100", help="network name in ../shared/bench/eran (or a path)")
    ap.add_argument("--eps", type=float, default=0.026)
    ap.add_argument("--n", type=int, default=10, help="number of images")
    ap.add_argument("--start", type=int, default=0, help="index of the first image")
    ap.add_argument("--analysis", default="refinepoly")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds per image")
    ap.add_argument("--no-attack", action="store_true")
    ap.add_argument("--opt", action="append", default=[], help="analysis option key=value (repeatable)")
    ap.add_argument("--csv", type=Path, default=None)
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
    torch.set_num_threads(args.threads)

    import absint
    from absint.specs import linf_ball, robustness_property

    net = Path(args.net) if args.net.endswith(".onnx") else BENCH / "eran" / f"{args.net}.onnx"
    graph = absint.load_network(net)
    data = np.load(BENCH / "eran" / "mnist_test_1000.npz")
    images, labels = data["images"].astype(np.float64), data["labels"]
    options = _parse_opt(args.opt)
    analysis = absint.analyses.get_analysis(args.analysis, **options)
    rows = []
    n_out = int(np.prod(graph.output_shape))
    print(f"# {net.name} eps={args.eps} analysis={args.analysis} options={options} timeout={args.timeout} "
          f"load average {os.getloadavg()[0]:.2f}")
    for i in range(args.start, args.start + args.n):
        x, lab = images[i].reshape(graph.input_shape), int(labels[i])
        with torch.no_grad():
            pred = int(graph.forward(torch.as_tensor(x[None])).reshape(-1).argmax())
        if pred != lab:
            rows.append({"image": i, "label": lab, "verdict": "misclassified", "seconds": 0.0, "margin": ""})
            print(f"{i:4d} label {lab} misclassified", flush=True)
            continue
        inst = (linf_ball(x, args.eps, (0.0, 1.0)), robustness_property(lab, n_out))
        t0, c0 = time.perf_counter(), time.process_time()
        r = absint.verify(graph, inst, analysis=analysis, timeout=args.timeout, attack=not args.no_attack,
                          attack_budget=1.0)
        sec, cpu = time.perf_counter() - t0, time.process_time() - c0
        cpu += float((r.details or {}).get("solver_process_cpu_s", 0.0))  # the HiGHS worker process
        det = r.details or {}
        phases = {k: round(float(v), 2) for k, v in det.get("stage_seconds", {}).items()}
        tight = det.get("tighten", [])
        row = {"image": i, "label": lab, "verdict": r.verdict.value, "seconds": round(sec, 2),
               "margin": "" if r.margin is None else f"{r.margin:.4g}",
               "tighten_s": round(sum(t["seconds"] for t in tight), 2),
               "krelu_s": round(sum(k["seconds"] for k in det.get("krelu", [])), 2),
               "krelu_rows": sum(k["rows"] for k in det.get("krelu", [])),
               **{f"{k}_s": v for k, v in phases.items()},
               "solves": " ".join(f"{b}:{n}" for b, n in sorted(det.get("solves", {}).items())),
               "cpu_s": round(cpu, 2), "reason": r.reason or ""}
        rows.append(row)
        if args.csv:  # written after every image, so a cut-off run keeps what it measured
            _write_csv(args.csv, rows)
        print(f"{i:4d} label {lab} {r.verdict.value:10s} {sec:7.1f}s margin {row['margin']} {phases} "
              f"tighten {row['tighten_s']}s krelu {row['krelu_s']}s/{row['krelu_rows']} rows {r.reason or ''}",
              flush=True)
    correct = [r for r in rows if r["verdict"] != "misclassified"]
    cert = sum(r["verdict"] == "verified" for r in correct)
    times = [r["seconds"] for r in correct]
    print(f"# certified {cert}/{len(correct)} correctly classified (of {len(rows)}); "
          f"falsified {sum(r['verdict'] == 'falsified' for r in correct)}; "
          f"median {statistics.median(times) if times else 0:.1f}s mean {statistics.mean(times) if times else 0:.1f}s; "
          f"CPU {sum(r.get('cpu_s', 0.0) for r in correct):.1f}s; load average {os.getloadavg()[0]:.2f}")
    if args.csv:
        _write_csv(args.csv, rows)
    return 0


def _write_csv(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)


if __name__ == "__main__":
    sys.exit(main())
