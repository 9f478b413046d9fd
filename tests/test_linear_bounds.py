"""The linear-bound engine: rigorous rounding (checked in exact rational arithmetic at every weight
scale), the real-arithmetic soundness of its relaxation lines, and the graph view."""
from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch

import absint  # noqa: F401
from absint.interpreter import propagate
from absint.ir import Add, Affine, Graph, Input, Relu, Reshape
from absint.linear import DenseOperator
from absint.domains.deeppoly import DeepPolyDomain
from absint.domains.linear_bounds import GraphView
from absint.domains.linear_bounds.relax import relu_lines, relu_upper, s_shaped_lines

F64 = torch.float64


def exact_forward(graph: Graph, x: np.ndarray) -> dict[str, list[Fraction]]:
    """Every node's value at the point ``x`` in exact rational arithmetic (dense/ReLU/Add/Reshape)."""
    vals: dict[str, list[Fraction]] = {graph.input.name: [Fraction(float(v)) for v in x.reshape(-1)]}
    for n in graph.nodes[1:]:
        a = vals[n.inputs[0]]
        if isinstance(n, Affine):
            W = n.operator.dense().numpy()
            b = n.bias_full().reshape(-1).numpy()
            vals[n.name] = [sum((Fraction(float(w)) * v for w, v in zip(row, a)), Fraction(float(bb)))
                            for row, bb in zip(W, b)]
        elif isinstance(n, Relu):
            vals[n.name] = [max(v, Fraction(0)) for v in a]
        elif isinstance(n, Add):
            vals[n.name] = [p + q for p, q in zip(a, vals[n.inputs[1]])]
        elif isinstance(n, Reshape):
            vals[n.name] = list(a)
        else:  # pragma: no cover
            raise TypeError(n.kind)
    return vals


def _net(seed: int, sizes: tuple[int, ...], scale: float, residual: bool = False) -> Graph:
    """A random dense ReLU network; with ``residual`` each hidden ReLU of equal width also gets the
    previous block's output added (``Add``)."""
    g = torch.Generator().manual_seed(seed)
    nodes = [Input("x", (), (sizes[0],))]
    src = "x"
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        w = torch.randn(b, a, generator=g, dtype=F64) * scale
        bias = torch.randn(b, generator=g, dtype=F64) * scale
        nodes.append(Affine(f"fc{i}", (src,), (b,), DenseOperator(w), bias))
        if i == len(sizes) - 2:
            return Graph(tuple(nodes), f"fc{i}")
        nodes.append(Relu(f"r{i}", (f"fc{i}",), (b,)))
        if residual and a == b and i > 0:
            nodes.append(Add(f"add{i}", (f"r{i}", src), (b,)))
            src = f"add{i}"
        else:
            src = f"r{i}"
    raise ValueError("need at least two sizes")


def _threshold_rows(exact: list[Fraction]) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows ``±y_j + d`` with ``d`` the float nearest to ``∓y_j`` from above: each row's real
    value is ≤ 0 (so no sound analysis may prove it positive) yet within one ulp of 0."""
    m = len(exact)
    C = torch.cat([torch.eye(m, dtype=F64), -torch.eye(m, dtype=F64)])
    d = []
    for sign in (1, -1):
        for v in exact:
            t = float(-sign * v)  # nearest float to −(±y)
            while Fraction(t) + sign * v > 0:  # make the real value ±y + d ≤ 0
                t = float(np.nextafter(t, -np.inf))
            d.append(t)
    return C, torch.tensor(d, dtype=F64)


@pytest.mark.parametrize("scale", [1e-6, 1.0, 1e4, 2.0 ** 40, 1e12])
@pytest.mark.parametrize("depth", [1, 3, 6])
def test_point_bounds_never_cross_exact_value(scale, depth):
    """At a point input every neuron is stable, DeepPoly is exact up to rounding, and a threshold
    at the exact rational output must never be proved (issue 15)."""
    for seed in range(3):
        graph = _net(seed, (4,) + (10,) * depth + (3,), scale / 3, residual=(seed == 2))
        x = np.random.default_rng(seed).uniform(-1, 1, 4)
        exact = exact_forward(graph, x)[graph.output]
        C, d = _threshold_rows(exact)
        xt = torch.tensor(x, dtype=F64)[None]
        dom = DeepPolyDomain()
        out = propagate(graph, dom, xt, xt).output
        lb = dom.linear_bounds(out, C[None], d[None])[0]
        assert (lb <= 0).all(), (scale, depth, seed)
        assert torch.isfinite(lb).all() or scale >= 1e12
        l, u = dom.bounds(out)
        for j, v in enumerate(exact):
            assert Fraction(float(l[0, j])) <= v <= Fraction(float(u[0, j]))


def test_weights_2_40_margin_of_float_rounding_is_not_verified():
    """A linear layer with weights 2^40 where float64 evaluates a negative real margin as positive."""
    found = 0
    for seed in range(200):
        rng = np.random.default_rng(seed)
        w = np.round(rng.uniform(-1, 1, (1, 8)) * 2.0 ** 40) + rng.uniform(-1, 1, (1, 8))
        x = rng.uniform(0, 1, 8)
        exact = sum(Fraction(float(a)) * Fraction(float(b)) for a, b in zip(w[0], x))
        fl = float(torch.tensor(w) @ torch.tensor(x))
        d = -float(exact) if exact < 0 else None
        if d is None:
            continue
        d = float(np.nextafter(-fl, np.inf))  # float margin positive ...
        if Fraction(d) + exact >= 0:  # ... but the real one negative
            continue
        found += 1
        graph = Graph((Input("x", (), (8,)), Affine("fc", ("x",), (1,), DenseOperator(torch.tensor(w)), None)), "fc")
        xt = torch.tensor(x, dtype=F64)[None]
        dom = DeepPolyDomain()
        lb = dom.linear_bounds(propagate(graph, dom, xt, xt).output, torch.ones(1, 1, 1, dtype=F64),
                               torch.tensor([[d]], dtype=F64))
        assert float(lb) <= 0
    assert found > 0


def test_relu_lines_hold_in_exact_arithmetic():
    rng = np.random.default_rng(0)
    for scale in (1e-300, 1e-8, 1.0, 1e8, 1e300):
        l = torch.tensor(-rng.uniform(0, 1, 200) * scale)
        u = torch.tensor(rng.uniform(0, 1, 200) * scale)
        s, o = relu_upper(l, u)
        lines = relu_lines(l, u)
        for i in range(0, 200, 7):
            for z in (l[i], u[i], (l[i] + u[i]) / 2):
                zf = Fraction(float(z))
                r = max(zf, Fraction(0))
                assert Fraction(float(s[i])) * zf + Fraction(float(o[i])) >= r
                up_slope = Fraction(float(lines.ls[i])) + Fraction(float(lines.ds[i]))
                assert up_slope * zf + Fraction(float(lines.do[i])) >= r
                assert Fraction(float(lines.ls[i])) * zf <= r


@pytest.mark.parametrize("fn", ["sigmoid", "tanh"])
def test_s_shaped_lines_sound_on_dense_samples(fn):
    g = torch.Generator().manual_seed(1)
    l = torch.randn(300, generator=g, dtype=F64) * 4
    u = l + torch.rand(300, generator=g, dtype=F64) * torch.tensor([1e-9, 1e-3, 1.0, 10.0]).repeat(75)
    lines = s_shaped_lines(fn, l, u)
    f = torch.sigmoid if fn == "sigmoid" else torch.tanh
    t = torch.linspace(0, 1, 101, dtype=F64)[:, None]
    z = l + t * (u - l)
    y = f(z)
    lo = lines.ls * z + (0 if lines.lo is None else lines.lo)
    hi = (lines.ls + lines.ds) * z + (0 if lines.lo is None else lines.lo) + lines.do
    assert (lo <= y).all() and (y <= hi).all()


def test_graph_view_is_chain_free():
    graph = _net(0, (4, 10, 10, 10, 3), 0.3, residual=True)
    view = GraphView.of(graph, batch=2)
    assert [n.name for n in view.preactivations()] == ["fc0", "fc1", "fc2"]
    assert view.output.name == graph.output
    adds = [n for n in view if isinstance(n.op, Add)]
    assert adds and all(len(n.parents) == 2 for n in adds)
    assert all(p.index < n.index for n in view for p in n.parents)


@pytest.mark.parametrize("name", ["conv", "conv_pool"])
@pytest.mark.parametrize("batch", [1, 3])
def test_patches_match_dense_rows(name, batch):
    """Rows of convolution outputs back-substituted as local windows give the dense rows' bounds
    (strided, padded and grouped convolutions; a normalisation; several batch members)."""
    from absint.testing import example_network

    graph = example_network(name, 4)
    g = torch.Generator().manual_seed(batch)
    c = torch.rand(batch, *graph.input_shape, generator=g, dtype=F64) * 2 - 1
    lo, hi = c - 0.3, c + 0.3
    out = []
    for patches in (False, True):
        dom = DeepPolyDomain()
        dom.engine.patches = patches
        p = propagate(graph, dom, lo, hi, keep_all=True)
        out.append([dom.bounds(p.elements[n.name]) for n in graph.nodes])
    for (la, ua), (lb, ub) in zip(*out):
        assert torch.allclose(la, lb, rtol=1e-9, atol=1e-9) and torch.allclose(ua, ub, rtol=1e-9, atol=1e-9)


def test_patch_windows_dense_round_trip():
    from absint.domains.linear_bounds.patches import Patches, Windows

    g = torch.Generator().manual_seed(0)
    data = torch.randn(5, 2, 3, 3, generator=g, dtype=F64)
    y0 = torch.tensor([-1, 0, 2, 3, 1])
    x0 = torch.tensor([0, -2, 1, 3, 2])
    p = Patches(data, y0, x0, (2, 4, 5)).masked()
    dense = p.dense().reshape(5, 2, 4, 5)
    for r in range(5):
        for dy in range(3):
            for dx in range(3):
                y, x = int(y0[r]) + dy, int(x0[r]) + dx
                if 0 <= y < 4 and 0 <= x < 5:
                    assert torch.equal(dense[r, :, y, x], p.data[r, :, dy, dx])
                else:
                    assert (p.data[r, :, dy, dx] == 0).all()
    vec = torch.randn(1, 40, generator=g, dtype=F64)
    assert torch.allclose(p.dot(Windows(p, None).take(vec)), p.dense() @ vec[0])
