"""Issue 15's floating-point cases, analysis by analysis: wrong proofs against the exact rational oracle.

Cases (point inputs, threshold at the exact rational value, so the real margin is ≤ 0 and no
analysis may return a positive lower bound):

* ``big-weights``: one linear layer with weights 2^40; the real margin is −2^-15 ≈ −3.05e-5 while
  float64 evaluation gives +2^-15;
* ``deep-relu``: 6 ReLU layers of width 10 with weights ≈ 10 (outputs ≈ 1e9), 10 random nets;
* ``scaled-N``: 3-layer ReLU nets (width 10) with weights ×N (N = 100, 1e4), 25 random nets each,
  threshold at the exact output.

For every analysis the script counts *unsound* rows (returned lower bound > exact margin) and
*wrong proofs* (lower bound > 0 while the exact margin is ≤ 0)::

    PYTHONPATH=$PWD python3 benchmarks/fp_issue_cases.py [--analyses box,deepzono,...] [--out FILE]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from fractions import Fraction

import numpy as np
import torch

from absint.analyses import get_analysis
from absint.exact import exact_forward
from absint.ir import Affine, Graph, Input, Relu
from absint.linear import DenseOperator

DEFAULT = "box,deepzono,deeppoly,alphapoly,symint,lp,milp,refinezono,refinepoly,sdp-fo,bab"


def big_weight_case() -> tuple[Graph, np.ndarray, np.ndarray, np.ndarray]:
    """y = 2^40·(x0 + x1 + x2) at x = (1, −1, −2^-54): exact −2^-14, float64 0 (torch's summation order);
    threshold d = 2^-15, so the real margin is −2^-15 and the float64 one +2^-15."""
    w = torch.tensor([[2.0 ** 40, 2.0 ** 40, 2.0 ** 40]], dtype=torch.float64)
    g = Graph((Input("x", (), (3,)), Affine("fc", ("x",), (1,), DenseOperator(w), None)), "fc")
    x = np.array([1.0, -1.0, -2.0 ** -54])
    return g, x, np.array([[1.0]]), np.array([2.0 ** -15])


def relu_net(seed: int, sizes: tuple[int, ...], scale: float) -> Graph:
    """A ReLU MLP with float32-representable weights ``N(0,1)·scale`` (stored like ONNX weights)."""
    gen = torch.Generator().manual_seed(seed)
    nodes = [Input("x", (), (sizes[0],))]
    src = "x"
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        w = (torch.randn(b, a, generator=gen, dtype=torch.float64) * scale).float().double()
        bias = (torch.randn(b, generator=gen, dtype=torch.float64) * scale).float().double()
        nodes.append(Affine(f"fc{i}", (src,), (b,), DenseOperator(w), bias))
        src = f"fc{i}"
        if i < len(sizes) - 2:
            nodes.append(Relu(f"relu{i}", (src,), (b,)))
            src = f"relu{i}"
    return Graph(tuple(nodes), src)


def threshold_at_exact(graph: Graph, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row ``y_0 + d`` with ``d`` the largest float ≤ −y_0 (exact): the real margin is ≤ 0."""
    y0 = exact_forward(graph, x)[0][0]
    d = float(-y0)
    if Fraction(d) > -y0:
        d = math.nextafter(d, -math.inf)
    n_out = int(np.prod(graph.output_shape))
    C = np.zeros((1, n_out))
    C[0, 0] = 1.0
    return C, np.array([d])


def cases() -> list[tuple[str, Graph, np.ndarray, np.ndarray, np.ndarray]]:
    out = [("big-weights", *big_weight_case())]
    rng = np.random.default_rng(0)
    for s in range(10):
        g = relu_net(100 + s, (4, 10, 10, 10, 10, 10, 10, 2), 10.0 / math.sqrt(10))
        x = rng.uniform(-1, 1, 4)
        out.append(("deep-relu", g, x, *threshold_at_exact(g, x)))
    for scale in (100.0, 1e4):
        for s in range(25):
            g = relu_net(1000 + s, (4, 10, 10, 2), scale)
            x = rng.uniform(-1, 1, 4)
            out.append((f"scaled-{scale:g}", g, x, *threshold_at_exact(g, x)))
    return out


def run(analyses: list[str]) -> dict:
    table: dict[str, dict[str, dict[str, int]]] = {}
    all_cases = cases()
    for name in analyses:
        try:
            an = get_analysis(name, device="cpu")
        except Exception as exc:  # noqa: BLE001 - a missing analysis is reported, not fatal
            print(f"{name}: unavailable ({exc})", file=sys.stderr)
            continue
        per: dict[str, dict[str, int]] = {}
        t0, c0 = time.perf_counter(), time.process_time()
        for case, g, x, C, d in all_cases:
            lo = torch.as_tensor(x[None])
            exact = exact_forward(g, x)
            margin = sum((Fraction(float(C[0, j])) * exact[j][0] for j in range(C.shape[1])), Fraction(float(d[0])))
            try:
                res = an.bound(g, lo, lo.clone(), torch.as_tensor(C[None]), torch.as_tensor(d[None]))
                lb = float(res.lower[0, 0])
                err = ""
            except Exception as exc:  # noqa: BLE001 - count errors separately
                lb, err = -math.inf, type(exc).__name__
            st = per.setdefault(case, {"n": 0, "unsound": 0, "wrong_proof": 0, "errors": 0})
            st["n"] += 1
            st["errors"] += int(bool(err))
            if math.isfinite(lb) and Fraction(lb) > margin:
                st["unsound"] += 1
            if lb > 0 and margin <= 0:
                st["wrong_proof"] += 1
        table[name] = per
        print(f"{name:12s} " + "  ".join(f"{c}: {v['wrong_proof']}/{v['n']} wrong, {v['unsound']} unsound"
                                          + (f", {v['errors']} errors" if v["errors"] else "")
                                          for c, v in per.items())
              + f"  ({time.perf_counter() - t0:.1f} s wall, {time.process_time() - c0:.1f} s CPU)", flush=True)
    return table


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--analyses", default=DEFAULT)
    p.add_argument("--out", default=None, help="write the table as JSON here")
    a = p.parse_args()
    torch.set_num_threads(1)
    print(f"uptime: {os.getloadavg()}")
    table = run([s for s in a.analyses.split(",") if s])
    if a.out:
        with open(a.out, "w") as f:
            json.dump(table, f, indent=1)


if __name__ == "__main__":
    main()
