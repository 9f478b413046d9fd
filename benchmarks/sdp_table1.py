#!/usr/bin/env python3
"""Table 1 of Raghunathan, Steinhardt & Liang (NeurIPS 2018), on the bundled 8x8 digits networks.

For each network (64-200-10: normal, PGD-trained, LP-certified-trained) and each test image,
records (one JSON line per image, resumable):

* ``pgd``: the image is misclassified or an L∞ PGD attack (absint's multi-restart PGD with the
  margin objective, restarts/steps below) finds a counterexample — an *upper* bound of the error;
* ``deeppoly``, ``lp``, ``sdp``: the analysis fails to certify (``lp`` = absint's triangle LP,
  LP-cert; ``sdp`` = SDP-cert with the first-order solver, pure — not combined with another
  domain; ``--sdp-solver exact`` for cvxpy).

Errors are fractions of the images run. Usage (from the repository root)::

    python benchmarks/sdp_table1.py --eps 0.1 --count 540 --out benchmarks/results/sdp_table1.jsonl
    python benchmarks/sdp_table1.py --report benchmarks/results/sdp_table1.jsonl
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

import absint
from absint.attack import AttackOptions, pgd_attack
from absint.specs import linf_ball, robustness_property
from absint.verify import _safety_tensors

ROOT = Path(__file__).resolve().parents[1]
NETS = ["digits_fc1x200_normal.onnx", "digits_fc1x200_pgd.onnx", "digits_fc1x200_lp.onnx"]
LABEL = {"digits_fc1x200_normal.onnx": "normal", "digits_fc1x200_pgd.onnx": "PGD-trained",
         "digits_fc1x200_lp.onnx": "LP-trained"}
log = logging.getLogger("sdp_table1")


def run(args: argparse.Namespace) -> None:
    out = Path(args.out)
    done = set()
    if out.exists():
        for line in out.read_text().splitlines():
            r = json.loads(line)
            done.add((r["net"], r["eps"], r["index"]))
    fo_opts = {"iterations": args.iterations, "stop_below": -args.stop_margin}
    analyses = {
        "deeppoly": absint.get_analysis("deeppoly", device="cpu"),
        "lp": absint.get_analysis("lp", device="cpu"),
        "sdp": absint.get_analysis("sdp", device="cpu", solver=args.sdp_solver, combine=False,
                                   fo_options=fo_opts, bounds=args.bounds),
    }
    analyses = {k: v for k, v in analyses.items() if k in args.analyses}
    attack = AttackOptions(restarts=args.restarts, steps=args.steps)
    nets = {n: absint.load_network(ROOT / "networks" / n) for n in args.nets}
    images, labels = absint.load_images(ROOT / "networks" / "digits_test.npz", tuple(nets[args.nets[0]].input_shape))
    with out.open("a") as fh:
        # images outer, networks inner: an interrupted run is a consistent prefix for every network
        for i in range(args.start, min(args.start + args.count, len(images))):
            for net_name, net in nets.items():
                if (net_name, args.eps, i) in done:
                    continue
                lab = int(labels[i])
                region = linf_ball(images[i], args.eps)
                prop = robustness_property(lab, 10)
                rec: dict = {"net": net_name, "eps": args.eps, "index": i, "label": lab,
                             "deeppoly": None, "lp": None, "sdp": None}
                with torch.no_grad():
                    pred = int(net.forward(torch.as_tensor(images[i][None])).argmax())
                t0 = time.perf_counter()
                broken = pred != lab or pgd_attack(net, region, prop, attack) is not None
                rec["pgd_error"] = bool(broken)
                rec["misclassified"] = pred != lab
                rec["pgd_seconds"] = time.perf_counter() - t0
                C, d = _safety_tensors([prop])
                lo, hi = torch.as_tensor(region.lower[None]), torch.as_tensor(region.upper[None])
                for name, an in analyses.items():
                    if pred != lab or (name == "sdp" and broken and not args.sdp_on_attacked):
                        rec[name] = None  # cannot be certified; not run
                        continue
                    t0 = time.perf_counter()
                    b = an.bound(net, lo, hi, C, d)
                    rec[name] = float(np.min(b.lower[0]))
                    rec[name + "_seconds"] = time.perf_counter() - t0
                    if name == "sdp":
                        rec["sdp_note"] = b.notes[0] if b.notes else ""
                    if broken and rec[name] > 0:  # would be a soundness bug
                        log.error("UNSOUND? %s certified %s image %d that PGD broke", name, net_name, i)
                fh.write(json.dumps(rec) + "\n")
                fh.flush()
                log.info("%s #%d pgd=%s dp=%s lp=%s sdp=%s (%.1fs)", LABEL[net_name], i, broken,
                         _fmt(rec["deeppoly"]), _fmt(rec["lp"]), _fmt(rec["sdp"]), rec.get("sdp_seconds", 0.0))


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.3g}"


def report(path: Path) -> str:
    """The Markdown table of error rates (and mean seconds) from a results file."""
    rows = [json.loads(line) for line in Path(path).read_text().splitlines()]
    lines = ["| network | eps | images | PGD-attack error | SDP-cert error | LP-cert error | DeepPoly error "
             "| s/img SDP | s/img LP | s/img DeepPoly |", "|---|---|---|---|---|---|---|---|---|---|"]
    keys = sorted({(r["net"], r["eps"]) for r in rows}, key=lambda k: (NETS.index(k[0]) if k[0] in NETS else 9, k[1]))
    for net, eps in keys:
        rs = [r for r in rows if r["net"] == net and r["eps"] == eps]
        n = len(rs)
        err = lambda key: sum(1 for r in rs if r[key] is None or r[key] <= 0.0) / n  # noqa: E731
        sec = lambda key: np.mean([r[key + "_seconds"] for r in rs if key + "_seconds" in r] or [0.0])  # noqa: E731
        pgd = sum(r["pgd_error"] for r in rs) / n
        lines.append(f"| {LABEL.get(net, net)} | {eps:g} | {n} | {100 * pgd:.1f}% | {100 * err('sdp'):.1f}% | "
                     f"{100 * err('lp'):.1f}% | {100 * err('deeppoly'):.1f}% | {sec('sdp'):.1f} | {sec('lp'):.2f} | "
                     f"{sec('deeppoly'):.3f} |")
    # soundness: nothing certified that the attack broke
    bad = [r for r in rows if r["pgd_error"] and any((r.get(k) or 0) > 0 for k in ("sdp", "lp", "deeppoly"))]
    lines.append("")
    lines.append(f"Certified although PGD found a counterexample: {len(bad)} (must be 0).")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--eps", type=float, default=0.1)
    p.add_argument("--nets", nargs="+", default=NETS)
    p.add_argument("--start", type=int, default=0)
    p.add_argument("--count", type=int, default=540)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "sdp_table1.jsonl"))
    p.add_argument("--sdp-solver", default="fo", choices=["fo", "exact", "auto"])
    p.add_argument("--bounds", default="box", help="domain for the SDP's pre-activation bounds")
    p.add_argument("--iterations", type=int, default=600, help="first-order SDP iterations")
    p.add_argument("--stop-margin", type=float, default=0.05,
                   help="stop a row's FO iterations once its estimated margin exceeds this")
    p.add_argument("--sdp-on-attacked", action="store_true", help="also run the SDP where PGD succeeded")
    p.add_argument("--restarts", type=int, default=8)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--analyses", nargs="+", default=["deeppoly", "lp", "sdp"])
    p.add_argument("--report", default=None, help="print the table of a results file and exit")
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
