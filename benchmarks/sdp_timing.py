#!/usr/bin/env python3
"""Exact (cvxpy) vs first-order SDP-cert on the same small network: time and certified bounds.

For each image: build the SDP of all 9 robustness rows (box pre-activation bounds, stable
neurons eliminated), solve it with each exact backend (one cvxpy solve per row) and with the
first-order solver (all rows batched) at a few iteration counts, and compare the *certified*
upper bounds of the violation (lower is tighter). The first-order bound can never be below the
SDP optimum, so ``fo − exact`` must be ≥ −(exact solver's accuracy).

Usage (from the repository root)::

    python benchmarks/sdp_timing.py --net digits_mlp_2x64.onnx --eps 0.02 --images 0 1 2 3
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

import absint
from absint.sdp import preactivation_bounds
from absint.specs import linf_ball, robustness_property
from absint.verify import _safety_tensors
from absint.solvers.sdp_exact import backend_availability, solve_exact
from absint.solvers.sdp_fo import FOOptions, solve_fo
from absint.sdp import relu_network
from absint.solvers.sdp_problem import build_problem

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--net", default="digits_mlp_2x64.onnx")
    p.add_argument("--eps", type=float, default=0.02)
    p.add_argument("--images", type=int, nargs="+", default=[0, 1, 2, 3])
    p.add_argument("--backends", nargs="+", default=["clarabel", "scs"])
    p.add_argument("--tol", type=float, default=1e-6)
    p.add_argument("--iterations", type=int, nargs="+", default=[200, 1000, 3000])
    p.add_argument("--out", default=None, help="also write the records as JSON lines here")
    args = p.parse_args()
    torch.set_num_threads(1)
    net = absint.load_network(ROOT / "networks" / args.net)
    chain = relu_network(net)
    images, labels = absint.load_images(ROOT / "networks" / "digits_test.npz", tuple(net.input_shape))
    records = []
    for i in args.images:
        region = linf_ball(images[i], args.eps)
        lo = torch.as_tensor(region.lower.reshape(1, -1))
        hi = torch.as_tensor(region.upper.reshape(1, -1))
        pre, _, _ = preactivation_bounds(net, chain, lo, hi, "box")
        C, d = _safety_tensors([robustness_property(int(labels[i]), 10)])
        prob = build_problem(chain, lo[0], hi[0], pre[0], C[0], d[0])
        rec = {"image": i, "N": prob.size, "U": prob.n_relu}
        for b in args.backends:
            if not backend_availability(b)[0]:
                continue
            res = solve_exact(prob, backend=b, tol=args.tol)
            rec[b] = {"seconds": res.seconds, "upper": res.upper.tolist(), "primal": res.primal.tolist(),
                      "status": sorted(set(res.status))}
        for it in args.iterations:
            res = solve_fo(prob, options=FOOptions(iterations=it))
            rec[f"fo{it}"] = {"seconds": res.seconds, "upper": res.upper.tolist()}
        records.append(rec)
        print(json.dumps({k: (v if not isinstance(v, dict) else {kk: vv for kk, vv in v.items() if kk != "upper"})
                          for k, v in rec.items()}), flush=True)
    if args.out:
        Path(args.out).write_text("\n".join(json.dumps(r) for r in records) + "\n")
    print(table(records, args))


def table(records: list[dict], args: argparse.Namespace) -> str:
    ref_name = next((b for b in args.backends if b in records[0]), None)
    cols = [b for b in args.backends if b in records[0]] + [f"fo{it}" for it in args.iterations]
    lines = ["| image | N | ReLU vars | " + " | ".join(f"{c} s" for c in cols) + " | " +
             " | ".join(f"{c} − {ref_name}: min / max" for c in cols if c != ref_name) + " |",
             "|---|---|---|" + "---|" * (2 * len(cols) - 1)]
    for r in records:
        ref = np.array(r[ref_name]["upper"])
        diffs = []
        for c in cols:
            if c == ref_name:
                continue
            dlt = np.array(r[c]["upper"]) - ref
            diffs.append(f"{dlt.min():+.2e} / {dlt.max():+.2e}")
        lines.append(f"| {r['image']} | {r['N']} | {r['U']} | " + " | ".join(f"{r[c]['seconds']:.1f}" for c in cols)
                     + " | " + " | ".join(diffs) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
