"""k-ReLU rows (kpoly's multineuron stage, reused by its branch and bound) hold in real arithmetic
at every magnitude (issue 15).

:class:`~absint.domains.krelu.tighten.MultiNeuronBounds` tightens every ReLU input with α and μ and
builds each layer's k-ReLU hull rows (exact cdd.gmp hull, certified fast hull); then, at the corners
of the input box (the points that attain the octahedral bounds of the first layer, so that rows sit
on them up to rounding), the centre and random float32 points, the exact rational values
(:mod:`absint.exact`) of every pre-activation ``z`` and of ``relu(z)`` must satisfy every row
``A_pre z + A_post y ≤ b`` and the tightened bounds ``l ≤ z ≤ u`` exactly, and the proved lower
bounds of output rows must not exceed their exact values.
"""
from __future__ import annotations

import itertools
from fractions import Fraction

import numpy as np
import pytest
import torch

from absint.domains.krelu import KReluOptions
from absint.domains.krelu.tighten import MultiNeuronBounds, TightenOptions
from absint.domains.linear_bounds import Engine, GraphView
from absint.exact import exact_forward
from absint.ir import Graph
from fp_cases import scaled_net


def _points(x: np.ndarray, r: float, seed: int) -> list[np.ndarray]:
    lo, hi = x - r, x + r
    corners = [np.where(np.array(bits, dtype=bool), hi, lo) for bits in itertools.product((0, 1), repeat=x.size)]
    rng = np.random.default_rng(seed)
    samples = [rng.uniform(lo, hi).astype(np.float32).astype(np.float64) for _ in range(4)]
    return corners + [x] + [np.clip(s, lo, hi) for s in samples]


def _prefix(graph: Graph, name: str) -> Graph:
    """The network up to node ``name`` (its output)."""
    i = next(k for k, n in enumerate(graph.nodes) if n.name == name)
    return Graph(tuple(graph.nodes[:i + 1]), name)


@pytest.mark.parametrize("exponent", [-6, 0, 5, 12])
@pytest.mark.parametrize("hull", ["exact", "fast"])
def test_krelu_rows_and_bounds_hold_exactly_at_every_magnitude(exponent, hull):
    g = scaled_net("dense", 7 + exponent, 3, 6, exponent)
    x = np.array([0.25, -0.5, 0.125])
    r = 0.5
    engine = Engine(device=torch.device("cpu"), dtype=torch.float64)
    view = GraphView.of(g, 1)
    engine.store(view.input, 2, torch.as_tensor(x - r)[None], torch.as_tensor(x + r)[None])
    k = 2 if hull == "exact" else 3
    mb = MultiNeuronBounds(view, engine, KReluOptions(k=k, s=-1 if k == 2 else -2, sparse_n=6, cutoff=0.0, hull=hull),
                           TightenOptions(iters=8, final_iters=15))
    mb.run()
    rows = mb.constraints()
    assert rows, "no k-ReLU rows were built: the test checks nothing"
    pre_bounds = mb.preactivation_bounds()
    C = torch.tensor([[1.0, 0.0], [1.0, -1.0], [-1.0, 1.0]], dtype=torch.float64)
    lower = mb.bound_rows(view.output, C, stop_above=None).numpy()
    relu_input = {n.name: n.inputs[0] for n in g.nodes if n.name in rows}
    for p in _points(x, r, exponent + 20):
        for name, (lo, hi) in pre_bounds.items():
            z = [v[0] for v in exact_forward(_prefix(g, name), p)]
            assert all(Fraction(float(a)) <= zi <= Fraction(float(b)) for a, zi, b in zip(lo, z, hi)), \
                f"tightened bounds of {name} miss the exact value at {p}"
        for name, hr in rows.items():
            z = [v[0] for v in exact_forward(_prefix(g, relu_input[name]), p)]
            y = [max(zi, Fraction(0)) for zi in z]
            for i in range(hr.num_rows):
                total = sum((Fraction(float(hr.pre[i, j])) * z[int(hr.index[i, j])]
                             + Fraction(float(hr.post[i, j])) * y[int(hr.index[i, j])]
                             for j in range(hr.index.shape[1])), Fraction(0))
                assert total <= Fraction(float(hr.rhs[i])), \
                    f"{name} row {i} fails by {float(total - Fraction(float(hr.rhs[i]))):.3e} at {p} (scale 1e{exponent})"
        out = [v[0] for v in exact_forward(g, p)]
        for row, lb in zip(C.numpy(), lower):
            value = sum((Fraction(float(c)) * o for c, o in zip(row, out)), Fraction(0))
            assert Fraction(float(lb)) <= value, f"output row bound {lb!r} above the exact value {float(value)!r}"


@pytest.mark.parametrize("exponent", [-6, 0, 12])
def test_branch_and_bound_with_hull_rows_never_proves_past_the_exact_minimum(exponent):
    # kpoly's bab stage: ReLU-split BaB with the multineuron stage's rows and multipliers in every
    # sub-problem. Thresholds at the exact minimum over the candidate points (and one ulp either
    # side): the real margin is ≤ 0 at that point, so no row may be proved and every proved row
    # bound stays below the exact values.
    import math

    from absint.bab import relu_branch_and_bound
    from absint.bab.options import BabOptions
    from absint.specs import InputBox

    g = scaled_net("dense", 11 + exponent, 3, 6, exponent)
    x, r = np.array([0.25, -0.5, 0.125]), 0.5
    engine = Engine(device=torch.device("cpu"), dtype=torch.float64)
    view = GraphView.of(g, 1)
    engine.store(view.input, 2, torch.as_tensor(x - r)[None], torch.as_tensor(x + r)[None])
    mb = MultiNeuronBounds(view, engine, KReluOptions(k=3, s=-2, sparse_n=6, cutoff=0.0), TightenOptions(iters=8))
    mb.run()
    outs = [[v[0] for v in exact_forward(g, p)] for p in _points(x, r, exponent + 20)]
    rows, ds = [], []
    for c in ([1.0, 0.0], [1.0, -1.0]):
        low = min(o[0] * Fraction(c[0]) + o[1] * Fraction(c[1]) for o in outs)
        d0 = float(-low)
        if Fraction(d0) > -low:
            d0 = math.nextafter(d0, -math.inf)
        for d in (math.nextafter(d0, -math.inf), d0, math.nextafter(d0, math.inf)):
            rows.append(c)
            ds.append(d)
    C, d = np.array(rows), np.array(ds)
    mb.bound_rows(view.output, torch.as_tensor(C), iters=15, stop_above=None)  # the root's multipliers
    cons = mb.active_rows() or {name: (hr, None) for name, hr in mb.constraints().items()}
    assert cons, "no k-ReLU rows reach branch and bound: the test checks nothing"
    res = relu_branch_and_bound(g, InputBox(x - r, x + r), C, d, root_bounds=mb.preactivation_bounds(),
                                constraints=cons, options=BabOptions(max_nodes=60, attack=False, batch_size=16))
    assert res.status != "verified"
    for i, (c, dd) in enumerate(zip(C, d)):
        low = min(o[0] * Fraction(c[0]) + o[1] * Fraction(c[1]) for o in outs) + Fraction(dd)
        assert not math.isfinite(res.row_min[i]) or Fraction(float(res.row_min[i])) <= low, (i, res.row_min[i], float(low))
