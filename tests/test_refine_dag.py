"""LP/MILP encodings and refinement analyses on DAGs: residual Add, conv, max-pooling, sigmoid/tanh.

Sampled soundness: every proved bound lies below the sampled values; the MILP of a ReLU/MaxPool
network is exact (its optimum is attained by the network at the solver's input).
"""
from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from absint.interpreter import propagate
from absint.ir import Relu, Sigmoid, Tanh
from absint.refine import NetworkEncoder
from absint.refine.encode_ops import maxpool_windows
from absint.domains.box import BoxDomain
from absint.solvers import SolveOptions, get_backend
from absint.testing import _Net


def _dag(kind: str, seed: int):
    """A small random network of one of the kinds below (input shape, graph)."""
    shape = (6,) if kind in ("residual", "sigmoid", "tanh", "mixed") else (1, 6, 6) if kind == "cnn" else (2, 4, 4)
    n = _Net(torch.Generator().manual_seed(seed), shape, kind)
    if kind == "residual":
        h = n.act(n.dense("x", 8), Relu)
        r = n.add(n.dense(n.act(n.dense(h, 8), Relu), 8), h)
        n.dense(n.act(n.add(n.act(r, Relu), n.dense(r, 8)), Relu), 3)
    elif kind in ("sigmoid", "tanh"):
        act = Sigmoid if kind == "sigmoid" else Tanh
        n.dense(n.act(n.dense(n.act(n.dense("x", 8, scale=3.0), act), 8, scale=3.0), act), 3)
    elif kind == "mixed":  # residual with both activation families
        h = n.act(n.dense("x", 8), Tanh)
        r = n.add(n.dense(n.act(n.dense(h, 8), Relu), 8), h)
        n.dense(n.act(r, Sigmoid), 3)
    elif kind == "pool":
        h = n.maxpool(n.act(n.conv("x", 2), Relu), 2, 2, 0)
        h = n.maxpool(n.add(h, n.maxpool("x", 2, 2, 0)), 3, 2, 1)
        n.dense(n.reshape(h, (int(np.prod(n.shapes[h])),)), 3)
    elif kind == "cnn":
        h = n.maxpool(n.act(n.conv("x", 2, stride=2), Relu), 2, 1, 0)
        n.dense(n.act(n.dense(n.reshape(h, (int(np.prod(n.shapes[h])),)), 6), Relu), 3)
    return n.graph()


KINDS = ("residual", "sigmoid", "tanh", "mixed", "pool", "cnn")


def _box_bounds(graph, lo, hi):
    dom = BoxDomain()
    shape = graph.input_shape
    prop = propagate(graph, dom, torch.as_tensor(lo.reshape(1, *shape)), torch.as_tensor(hi.reshape(1, *shape)),
                     keep_all=True)
    return {k: tuple(t.reshape(-1).numpy() for t in dom.bounds(v)) for k, v in prop.elements.items()}


def _outputs(graph, lo, hi, n=6000, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.uniform(lo, hi, size=(n, lo.size))
    x[: n // 4] = np.where(rng.random((n // 4, lo.size)) < 0.5, lo, hi)  # corners too
    with torch.no_grad():
        return graph.forward(torch.as_tensor(x.reshape(n, *graph.input_shape))).reshape(n, -1).numpy()


def _minimise(enc, c):
    y = enc.vars[enc.output]
    enc.model.set_objective({int(y[j]): float(c[j]) for j in range(len(c))}, "min")
    res = get_backend("highs").solve(enc.model, SolveOptions(time_limit=60))
    assert res.proved_bound is not None, res.status
    return res


@pytest.mark.parametrize("kind", KINDS)
def test_lp_and_milp_below_samples(kind):
    g = _dag(kind, seed=KINDS.index(kind))
    n_in = int(np.prod(g.input_shape))
    r = 0.5 if len(g.input_shape) == 1 else 0.2
    lo, hi = -r * np.ones(n_in), r * np.ones(n_in)
    bounds = _box_bounds(g, lo, hi)
    enc = NetworkEncoder(g)
    vals = _outputs(g, lo, hi)
    rng = np.random.default_rng(7)
    exact_kind = kind in ("residual", "pool", "cnn")  # piecewise linear: the MILP is exact
    for _ in range(2):
        c = rng.normal(size=vals.shape[1])
        lp = _minimise(enc.build(lo, hi, bounds), c)
        milp_enc = enc.build(lo, hi, bounds, binaries=True)
        milp = _minimise(milp_enc, c)
        best = float((vals @ c).min())
        assert lp.proved_bound <= best + 1e-9
        assert milp.proved_bound <= best + 1e-9
        assert lp.proved_bound <= milp.proved_bound + 1e-6
        if exact_kind:  # the optimum is attained by the network at the MILP's input
            x = milp_enc.input_values(milp.x, g)
            with torch.no_grad():
                y = g.forward(torch.as_tensor(x[None])).reshape(-1).numpy()
            assert abs(float(y @ c) - milp.objective) <= 1e-5 * (1 + abs(milp.objective))


def test_maxpool_windows_match_torch():
    x = torch.randn(1, 2, 5, 7, dtype=torch.float64)
    for k, s, p in ((2, 2, 0), (3, 2, 1), (3, 1, 1), (2, 3, 0)):
        w = maxpool_windows((2, 5, 7), (k, k), (s, s), (p, p))
        flat = torch.cat([x.reshape(-1), torch.tensor([-np.inf], dtype=torch.float64)])
        ours = flat[torch.as_tensor(w)].amax(dim=1)
        ref = torch.nn.functional.max_pool2d(x, k, s, p).reshape(-1)
        assert torch.equal(ours, ref)


@pytest.mark.parametrize("kind", ["sigmoid", "tanh"])
def test_s_shaped_rows_hold_on_samples(kind):
    """The rows of one activation layer contain every (z, f(z)) pair of the box (no network needed)."""
    from absint.refine.encode_ops import s_shaped_lines

    rng = np.random.default_rng(0)
    l = rng.uniform(-6, 4, size=400)
    u = l + rng.exponential(2.0, size=400) * (rng.random(400) < 0.9)  # some degenerate intervals
    ls, lo, us, uo, fl, fu = s_shaped_lines(kind, l, u)
    f = torch.sigmoid if kind == "sigmoid" else torch.tanh
    t = rng.random((50, 400))
    z = l + t * (u - l)
    fz = f(torch.as_tensor(z)).numpy()
    assert np.all(fz >= ls * z + lo - 1e-12) and np.all(fz <= us * z + uo + 1e-12)
    assert np.all(fz >= fl - 1e-15) and np.all(fz <= fu + 1e-15)


PRESETS = ("lp", "milp", "refinezono", "refinepoly", "kpoly")


@pytest.mark.parametrize("kind", ["residual", "mixed", "pool"])
def test_every_preset_sound_on_dags_and_never_looser_than_its_domain(kind):
    from absint.refine import run_preset

    g = _dag(kind, seed=11 + KINDS.index(kind))
    n_in = int(np.prod(g.input_shape))
    r = 0.3 if len(g.input_shape) == 1 else 0.1
    lo = torch.full((1, *g.input_shape), -r, dtype=torch.float64)
    hi = -lo
    vals = _outputs(g, lo.reshape(-1).numpy(), hi.reshape(-1).numpy())
    C = np.array([[1.0, -1.0, 0.0], [0.0, 1.0, -1.0]])
    d = -(vals @ C.T).min(0) + np.array([0.05, -0.05])  # one row true with a small margin, one false
    true_min = (vals @ C.T + d).min(0)
    for preset in PRESETS:
        opts = {"lp": {"timeout_final_lp": 10.0}, "refinezono": {"timeout_final_lp": 10.0},
                "refinepoly": {"timeout_final_lp": 10.0}, "milp": {"timeout_final_milp": 10.0}}.get(preset, {})
        st = run_preset(g, lo, hi, C, d, preset, deadline=time.perf_counter() + 60, **opts)
        assert np.all(st.rows <= true_min + 1e-8), preset
        assert np.all(st.rows >= st.stats["domain_lower"] - 1e-12), preset
        for name, (blo, bhi) in st.bounds.items():  # every recorded node bound holds on samples
            assert np.all(blo <= bhi + 1e-12), (preset, name)
        if st.candidate is not None:  # a candidate violates a row on the network itself
            with torch.no_grad():
                y = g.forward(torch.as_tensor(st.candidate[None])).reshape(-1).numpy()
            assert (C @ y + d).min() < 0, preset


@pytest.mark.parametrize("analysis", PRESETS)
def test_verify_on_sigmoid_dag_matches_sampling(analysis):
    """verify() with each analysis on a residual sigmoid/tanh network: verified only when no sample
    violates, and every falsified result carries a counterexample that violates on the network."""
    import absint
    from absint.specs import linf_ball, robustness_property

    g = _dag("mixed", seed=5)
    rng = np.random.default_rng(2)
    seen = set()
    for eps in (0.02, 0.8):
        x0 = rng.uniform(-0.5, 0.5, size=6)
        with torch.no_grad():
            label = int(g.forward(torch.as_tensor(x0[None])).argmax())
        inst = (linf_ball(x0, eps, None), robustness_property(label, 3))
        r = absint.verify(g, inst, analysis=analysis, timeout=20, attack=True, attack_budget=0.3)
        seen.add(r.verdict.value)
        lo, hi = x0 - eps, x0 + eps
        ys = _outputs(g, lo, hi, n=4000)
        violated = bool(((ys - ys[:, [label]]) > 0).any())
        assert not (r.verified and violated), (analysis, eps)
        if r.falsified:
            with torch.no_grad():
                y = g.forward(torch.as_tensor(np.asarray(r.counterexample)[None])).reshape(-1).numpy()
            assert np.all(np.abs(np.asarray(r.counterexample) - x0) <= eps + 1e-9)
            assert y.argmax() != label or np.sort(y)[-1] == np.sort(y)[-2]
    assert "verified" in seen
