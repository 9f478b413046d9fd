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


def _conv_case(seed: int, stride: int, pad: int, dil: int, k: int = 3):
    from absint.linear import ConvOperator

    g = torch.Generator().manual_seed(seed)
    w = torch.randn(5, 3, k, k, generator=g, dtype=F64)
    return ConvOperator(w, (3, 9, 8), (stride, stride), (pad, pad), (dil, dil), 1), g


@pytest.mark.parametrize("stride,pad,dil", [(1, 0, 1), (2, 1, 1), (1, 2, 2), (2, 0, 1), (3, 2, 1)])
def test_kernel_dots_match_window_gather(stride, pad, dil):
    """The activation step's sums for unit rows carried through a convolution, computed as one
    convolution of the per-neuron vectors (:func:`kernel_dots`), equal the per-row window gather
    (edges and padding included, every output neuron, both signs)."""
    from absint.domains.linear_bounds.patches import Windows, conv_step, kernel_dots, unit_patches

    op, g = _conv_case(7 * stride + pad + dil, stride, pad, dil)
    n_out = int(np.prod(op.out_shape))
    rows = conv_step(unit_patches(tuple(op.out_shape), torch.arange(n_out), F64), op)
    assert rows.kernel is not None and rows.kernel.op is op
    mat = torch.randn(1, 8, int(np.prod(op.in_shape)), generator=g, dtype=F64)
    G = Windows(rows, None).take_stack(mat)
    data = rows.data.reshape(rows.data.shape[0], 1, -1)
    want_d = torch.bmm(data, G.transpose(1, 2))[:, 0]
    want_n = torch.bmm(data.clamp(max=0), G.transpose(1, 2))[:, 0]
    td, tn = kernel_dots(rows, mat, tuple(range(8)))
    assert torch.allclose(td, want_d, rtol=1e-12, atol=1e-12)
    assert torch.allclose(tn, want_n, rtol=1e-12, atol=1e-12)
    keep = torch.arange(0, rows.data.shape[0], 3)  # dropped rows keep their provenance
    td2, _ = kernel_dots(rows.select(keep), mat, (2, 5))
    assert torch.allclose(td2, want_d[keep][:, [2, 5]], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("stride,pad,dil", [(1, 0, 1), (2, 1, 1), (1, 2, 2)])
def test_window_map_step_matches_conv_transpose(stride, pad, dil):
    """A convolution step on small windows by one product with the window map equals
    ``conv_transpose2d`` (the map's entries are the kernel's weights)."""
    import torch.nn.functional as tF

    from absint.domains.linear_bounds.patches import Patches, conv_step, window_map

    op, g = _conv_case(stride + 3 * pad + dil, stride, pad, dil)
    R = 11
    data = torch.randn(R, 5, 2, 3, generator=g, dtype=F64)
    y0 = torch.randint(-1, op.out_shape[1], (R,), generator=g)
    x0 = torch.randint(-1, op.out_shape[2], (R,), generator=g)
    p = Patches(data, y0, x0, tuple(op.out_shape)).masked()
    assert window_map(op, 2, 3, p.data) is not None
    got = conv_step(p, op)
    want = tF.conv_transpose2d(p.data, op.weight, None, op.stride, 0, 0, op.groups, op.dilation)
    assert torch.allclose(got.data, Patches(want, got.y0, got.x0, got.grid).masked().data, rtol=1e-12, atol=1e-12)


def test_kernel_rows_and_window_maps_keep_bounds_and_soundness(monkeypatch):
    """DeepPoly on a conv net with the kernel-row sums and window maps forced on for every row
    count: the same bounds as dense rows (to rounding) and every sampled point inside them."""
    from absint.ir import Graph, Input
    from absint.testing import _rand_conv, _rand_dense
    from absint.domains.linear_bounds import backward

    g = torch.Generator().manual_seed(3)
    c1 = _rand_conv("c1", "x", (2, 9, 9), 4, 3, 2, 1, 1, g)
    c2 = _rand_conv("c2", "r1", c1.shape, 5, 3, 1, 1, 1, g)
    n = int(np.prod(c2.shape))
    graph = Graph((Input("x", (), (2, 9, 9)), c1, Relu("r1", ("c1",), c1.shape), c2, Relu("r2", ("c2",), c2.shape),
                   Reshape("flat", ("r2",), (n,)), _rand_dense("fc", "flat", n, 3, g)), "fc")
    from absint.domains.linear_bounds import patches as patches_mod

    monkeypatch.setattr(backward, "KERNEL_ROWS_MIN", 1)
    calls = {"kernel_dots": 0, "window_map": 0}

    def counted(name, fn):
        def wrapper(*a, **k):
            out = fn(*a, **k)
            calls[name] += out is not None
            return out
        return wrapper

    monkeypatch.setattr(backward, "kernel_dots", counted("kernel_dots", patches_mod.kernel_dots))
    monkeypatch.setattr(patches_mod, "window_map", counted("window_map", patches_mod.window_map))
    c = torch.rand(1, 2, 9, 9, generator=g, dtype=F64)
    lo, hi = c - 0.2, c + 0.2
    out = []
    for patches in (False, True):
        dom = DeepPolyDomain()
        dom.engine.patches = patches
        p = propagate(graph, dom, lo, hi, keep_all=True)
        out.append([dom.bounds(p.elements[nd.name]) for nd in graph.nodes])
    for (la, ua), (lb, ub) in zip(*out):
        assert torch.allclose(la, lb, rtol=1e-9, atol=1e-9) and torch.allclose(ua, ub, rtol=1e-9, atol=1e-9)
    assert calls["kernel_dots"] > 0 and calls["window_map"] > 0  # both routes ran
    xs = lo + (hi - lo) * torch.rand(2000, 2, 9, 9, generator=g, dtype=F64)
    y = graph.forward(xs)
    lb, ub = out[1][-1]
    assert (y >= lb.reshape(1, -1)).all() and (y <= ub.reshape(1, -1)).all()
@pytest.mark.parametrize("stride,padding,size,kernel", [((2, 2), (0, 0), 13, 4), ((1, 1), (1, 1), 6, 3),
                                                        ((2, 1), (1, 0), 9, 3), ((3, 3), (2, 1), 11, 5)])
def test_conv_transpose_rows_is_conv_transpose2d(stride, padding, size, kernel):
    """The batched rows' transposed convolution (one product for all rows, taps added in col2im's
    order) gives ``ConvOperator.transpose``'s numbers up to the order of the products' sums (the
    rounding allowance covers any order), output padding included."""
    from absint.linear import ConvOperator
    from absint.domains.linear_bounds.patches import conv_transpose_rows

    g = torch.Generator().manual_seed(size)
    w = torch.randn(5, 3, kernel, kernel, generator=g, dtype=F64)
    op = ConvOperator(w, (3, size, size), stride, padding)
    y = torch.randn(7, *op.out_shape, generator=g, dtype=F64)
    fast, ref = conv_transpose_rows(y, op, (size, size), padding), op.transpose(y)
    assert fast.shape == ref.shape and torch.allclose(fast, ref, rtol=1e-12, atol=1e-12)
