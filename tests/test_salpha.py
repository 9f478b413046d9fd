"""Optimisable sigmoid/tanh lines (tangent points as parameters, α-CROWN; domains/linear_bounds/tangent.py).

* the lines hold for *any* parameter value: sampled in floats, and exactly (rationals against
  50-digit mpmath) at the endpoints and the tangent points;
* every node's bounds from a backward pass with random tangent parameters contain sampled concrete
  values (sigmoid/tanh MLPs and residual DAGs);
* ``alphapoly`` is never looser than ``deeppoly`` and strictly tighter on a seeded sigmoid MLP,
  where the gain disappears with ``s_shaped=False`` (so it comes from the tangent points).
"""
from __future__ import annotations

from fractions import Fraction

import mpmath
import numpy as np
import pytest
import torch

from absint.analyses import get_analysis
from absint.domains.linear_bounds.api import deeppoly_view, graph_bounds
from absint.domains.linear_bounds.graph import Node
from absint.domains.linear_bounds.optimize import SlopeOptions
from absint.domains.linear_bounds.params import NodeParams, Params
from absint.domains.linear_bounds.relax import s_shaped_lines
from absint.domains.linear_bounds.rows import RowLayout
from absint.domains.linear_bounds.tangent import TangentFamily
from absint.ir import Sigmoid, Tanh
from fp_cases import _Builder

FNS = {"sigmoid": torch.sigmoid, "tanh": torch.tanh}


def _intervals(seed: int, n: int = 3000) -> tuple[torch.Tensor, torch.Tensor]:
    """Bounds covering every case: convex, concave, mixed (both sides dominating), wide, tiny, saturated."""
    g = torch.Generator().manual_seed(seed)
    c = torch.randn(n, generator=g, dtype=torch.float64) * 4
    scale = 10.0 ** torch.randint(-9, 2, (n,), generator=g).double()
    w = torch.rand(n, generator=g, dtype=torch.float64) * 8 * scale
    l, u = c - w * torch.rand(n, generator=g, dtype=torch.float64), c + w * torch.rand(n, generator=g, dtype=torch.float64)
    l[:20], u[:20] = -torch.rand(20, generator=g, dtype=torch.float64) * 40, torch.rand(20, generator=g, dtype=torch.float64) * 40
    l[20:30] = u[20:30] = torch.randn(10, generator=g, dtype=torch.float64)  # points
    return l[None], u[None]


def _params(seed: int, shape: tuple[int, ...]) -> torch.Tensor:
    """Random parameters, a third of them outside [0, 1] (the engine clamps), some at the ends."""
    g = torch.Generator().manual_seed(seed)
    t = torch.rand(*shape, generator=g, dtype=torch.float64) * 1.6 - 0.3
    t[..., ::7] = 0.0
    t[..., 3::7] = 1.0
    return t


@pytest.mark.parametrize("fn", ["sigmoid", "tanh"])
def test_lines_hold_for_any_parameter(fn):
    l, u = _intervals(1)
    fam = TangentFamily.of(fn, l, u)
    n = l.shape[1]
    for seed in range(3):
        t = _params(seed, (1, 2 * n))
        ls, lo, us, uo = fam.lines(lambda x: x, t[:, :n], t[:, n:])
        assert torch.isfinite(torch.stack([ls, lo, us, uo])).all()
        z = l + (u - l) * torch.rand(64, n, dtype=torch.float64)
        z = torch.cat([l, u, z])
        fz = FNS[fn](z)
        assert bool((ls * z + lo <= fz).all()), "lower line above f"
        assert bool((us * z + uo >= fz).all()), "upper line below f"


@pytest.mark.parametrize("fn", ["sigmoid", "tanh"])
def test_lines_hold_exactly_at_endpoints_and_tangent_points(fn):
    """Rational line values against f at 50 digits at ``l``, ``u`` and the tangent points."""
    l, u = _intervals(2, 300)
    fam = TangentFamily.of(fn, l, u)
    n = l.shape[1]
    t = _params(5, (1, 2 * n))
    ls, lo, us, uo = (x[0].tolist() for x in fam.lines(lambda x: x, t[:, :n], t[:, n:]))
    la, lb, ua, ub = (x[0] for x in (fam.la, fam.lb, fam.ua, fam.ub))
    dl = torch.minimum(torch.maximum(la + t[0, :n].clamp(0, 1) * (lb - la), la), lb).tolist()
    du = torch.minimum(torch.maximum(ua + t[0, n:].clamp(0, 1) * (ub - ua), ua), ub).tolist()
    mpmath.mp.dps = 50
    f = (lambda x: 1 / (1 + mpmath.exp(-x))) if fn == "sigmoid" else mpmath.tanh
    for i in range(n):
        for x in (l[0, i].item(), u[0, i].item(), dl[i], du[i]):
            fx = f(mpmath.mpf(x))
            low = Fraction(ls[i]) * Fraction(x) + Fraction(lo[i])
            high = Fraction(us[i]) * Fraction(x) + Fraction(uo[i])
            assert mpmath.mpf(low.numerator) / low.denominator <= fx <= mpmath.mpf(high.numerator) / high.denominator


@pytest.mark.parametrize("fn", ["sigmoid", "tanh"])
def test_tangent_lines_touch_and_start_at_deeppoly(fn):
    """The family is not vacuous: a tangent line meets f at its point (to 1e-12), and the starting
    parameters reproduce DeepPoly's lower line where u ≤ 0 and its upper line where l ≥ 0."""
    l, u = _intervals(3)
    keep = (u - l > 1e-3) & (u - l < 20)
    l, u = l[keep][None], u[keep][None]
    fam = TangentFamily.of(fn, l, u)
    n = l.shape[1]
    t = fam.init(1)
    ls, lo, us, uo = fam.lines(lambda x: x, t[:, :n], t[:, n:])
    dp = s_shaped_lines(fn, l, u)
    dp_lo, dp_us = dp.lo, dp.ls + dp.ds
    convex, concave = u <= 0, l >= 0
    assert bool(convex.any() and concave.any())
    assert torch.allclose(ls[convex], dp.ls[convex], rtol=1e-12, atol=1e-15)
    assert torch.allclose(lo[convex], dp_lo[convex], rtol=0, atol=1e-12)
    assert torch.allclose(us[concave], dp_us[concave], rtol=1e-12, atol=1e-15)
    # at the tangent point (d = l for the lower line, d = u for the upper) the line meets f
    f = FNS[fn]
    assert torch.allclose((ls * l + lo)[fam.ltan], f(l)[fam.ltan], rtol=0, atol=1e-12)
    assert torch.allclose((us * u + uo)[fam.utan], f(u)[fam.utan], rtol=0, atol=1e-12)
    # the mixed case has a tangent family on both sides for some neurons
    mixed = (l < 0) & (u > 0)
    assert bool((mixed & fam.ltan & (fam.lb > fam.la)).any() and (mixed & fam.utan & (fam.ub > fam.ua)).any())


def _net(kind: str, act: type, seed: int, width: int = 6, depth: int = 3):
    b = _Builder(seed, 1.0, (4,))
    h = b.act(b.dense("x", width), act)
    for i in range(depth - 1):
        nxt = b.act(b.dense(h, width), act)
        h = b.add(nxt, h) if kind == "dag" and i % 2 == 0 else nxt
    b.dense(h, 3)
    return b.graph()


def _random_params(view, node: Node, R: int, seed: int) -> Params:
    prm = Params()
    for j, a in enumerate(view.activations((Sigmoid, Tanh))):
        if a.index < node.index:
            prm.set(a, NodeParams(tangent=_params(seed + 31 * j, (R, 2 * a.numel))))
    return prm


@pytest.mark.parametrize("kind", ["mlp", "dag"])
@pytest.mark.parametrize("act", [Sigmoid, Tanh], ids=["sigmoid", "tanh"])
@pytest.mark.parametrize("seed", [0, 1])
def test_every_node_bound_holds_for_random_parameters(kind, act, seed):
    g = _net(kind, act, seed)
    rng = np.random.default_rng(seed)
    x0 = rng.uniform(-1, 1, 4)
    eps = float(rng.choice([0.05, 0.5, 2.0]))
    lo, hi = torch.as_tensor(x0 - eps)[None], torch.as_tensor(x0 + eps)[None]
    view, eng = deeppoly_view(g, lo, hi)
    xs = lo + (hi - lo) * torch.rand(4000, 4, dtype=torch.float64)
    xs = torch.cat([xs, lo, hi])
    values = g.forward(xs, all_nodes=True)
    checked = 0
    for node in view:
        if not node.parents or node.boxlike:
            continue
        n = node.numel
        lam = torch.cat([torch.eye(n), -torch.eye(n)]).double()
        R = 2 * n
        for s in range(2):
            prm = _random_params(view, node, R, 100 * seed + 10 * s)
            if not prm.nodes:
                continue
            b = eng.run_rows(node, lam, lam.new_zeros(R), None, layout=RowLayout.single(), params=prm)
            v = values[node.name].reshape(len(xs), -1)
            assert bool((v >= b[:n]).all()), f"lower bound of {node.name} violated"
            assert bool((v <= -b[n:]).all()), f"upper bound of {node.name} violated"
            checked += 1
    assert checked >= 4


def _sigmoid_mlp(seed: int = 0):
    torch.manual_seed(seed)
    b = _Builder(seed, 1.0, (5,))
    h = "x"
    for _ in range(3):
        h = b.act(b.dense(h, 12), Sigmoid)
    b.dense(h, 3)
    return b.graph()


def test_alphapoly_tightens_sigmoid_rows_over_deeppoly():
    g = _sigmoid_mlp()
    x = torch.as_tensor(np.random.default_rng(0).uniform(-1, 1, (1, 5)))
    eps = 0.6
    C = torch.as_tensor([[[1.0, -1, 0], [1, 0, -1], [0, 1, -1], [-1, 1, 0]]])
    d = torch.zeros(1, 4, dtype=torch.float64)
    dp = get_analysis("deeppoly").bound(g, x - eps, x + eps, C, d).lower[0]
    ap = get_analysis("alphapoly").bound(g, x - eps, x + eps, C, d).lower[0]
    assert (ap >= dp).all()
    assert float((ap - dp).max()) > 1e-3, (ap, dp)
    # the gain comes from the tangent points: without them there is nothing to optimise
    off = graph_bounds(g, x - eps, x + eps, C=C, d=d, alpha=SlopeOptions(s_shaped=False)).rows[0].numpy()
    assert np.allclose(off, dp, rtol=0, atol=1e-12)
    off = graph_bounds(g, x - eps, x + eps, C=C, d=d, alpha=SlopeOptions(s_shaped_max=0)).rows[0].numpy()
    assert np.allclose(off, dp, rtol=0, atol=1e-12)  # parameters over the memory cap: DeepPoly's lines
    on = graph_bounds(g, x - eps, x + eps, C=C, d=d, alpha=SlopeOptions()).rows[0].numpy()
    assert float((on - dp).max()) > 1e-3


def test_gradients_reach_the_tangent_points():
    g = _sigmoid_mlp(1)
    x = torch.zeros(1, 5, dtype=torch.float64)
    view, eng = deeppoly_view(g, x - 1, x + 1)
    out = view.output
    lam = torch.eye(3, dtype=torch.float64)
    prm = Params()
    ts = []
    for a in view.activations((Sigmoid,)):
        t = eng.tangent_family(a).init(3).requires_grad_(True)
        prm.set(a, NodeParams(tangent=t))
        ts.append(t)
    b = eng.run_rows(out, lam, lam.new_zeros(3), None, layout=RowLayout.single(), params=prm)
    b.sum().backward()
    assert all(t.grad is not None and bool(t.grad.abs().sum() > 0) for t in ts)
