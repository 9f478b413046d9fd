"""Zonotope (DeepZ) domain: sampled soundness per transformer, Box comparison, batching, purity.

Soundness checks sample concrete points (inputs inside the box, or ``c + G ε`` inside an input
zonotope), run the concrete op, and require every value inside the computed bounds and every
``linear_bounds`` row below ``C y + d``.
"""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from absint.frontends.onnx_loader import load_onnx
from absint.interpreter import apply_op, propagate
from absint.ir import Add, Affine, Graph, Input, MaxPool2d, Relu, Reshape, Sigmoid, Tanh
from absint.linear import ConvOperator, DenseOperator, DiagonalOperator
from absint.domains.box import BoxDomain
from absint.domains.zonotope import ZonotopeDomain, ZonotopeOptions, octahedral_directions

DT = torch.float64
TOL = 1e-9


def _rand(g: torch.Generator, *shape: int, scale: float = 1.0) -> torch.Tensor:
    return (torch.rand(*shape, generator=g, dtype=DT) * 2 - 1) * scale


def _box(g: torch.Generator, b: int, shape: tuple[int, ...], width: float = 0.3):
    c = _rand(g, b, *shape)
    r = torch.rand(b, *shape, generator=g, dtype=DT) * width
    return c - r, c + r


def _sample_box(g: torch.Generator, lo: torch.Tensor, hi: torch.Tensor, n: int) -> torch.Tensor:
    """``[n, B, *shape]`` points, with box vertices mixed in."""
    u = torch.rand(n, *lo.shape, generator=g, dtype=DT)
    corner = torch.rand(n, *lo.shape, generator=g, dtype=DT) < 0.2
    u = torch.where(corner, u.round(), u)
    return lo + u * (hi - lo)


def _sample_zono(dom: ZonotopeDomain, x, g: torch.Generator, n: int) -> torch.Tensor:
    """``[n, B, *shape]`` points ``c + G ε`` of the zonotope (ε vertices mixed in)."""
    gens = dom._dense_gens(x)
    b, k = gens.shape[:2]
    eps = _rand(g, n, b, k)
    eps = torch.where(torch.rand(n, b, k, generator=g, dtype=DT) < 0.5, eps.sign(), eps)
    return x.center + torch.einsum("nbk,bk...->nb...", eps, gens)


def _assert_inside(dom, el, values: torch.Tensor, g: torch.Generator) -> None:
    """Every sampled value within ``bounds``; random rows of ``linear_bounds`` below ``C y + d``."""
    lo, hi = dom.bounds(el)
    assert torch.all(values >= lo - TOL), float((lo - values).max())
    assert torch.all(values <= hi + TOL), float((values - hi).max())
    n, b = values.shape[:2]
    flat = values.reshape(n, b, -1)
    C = _rand(g, b, 7, flat.shape[2])
    d = _rand(g, b, 7)
    lb = dom.linear_bounds(el, C, d)
    assert lb.shape == (b, 7)
    y = torch.einsum("bmn,sbn->sbm", C, flat) + d
    assert torch.all(lb <= y.min(0).values + TOL)


# -- random graphs ---------------------------------------------------------------------------------
def _dense_graph(g: torch.Generator, sizes: list[int], act=Relu, residual: bool = False) -> Graph:
    nodes = [Input("x", (), (sizes[0],))]
    prev = "x"
    for i, (m, n) in enumerate(zip(sizes[:-1], sizes[1:])):
        nodes.append(Affine(f"fc{i}", (prev,), (n,), DenseOperator(_rand(g, n, m, scale=1.5 / m ** 0.5)),
                            _rand(g, n, scale=0.3)))
        prev = f"fc{i}"
        if i < len(sizes) - 2:
            nodes.append(act(f"a{i}", (prev,), (n,)))
            prev = f"a{i}"
            if residual and i > 0 and n == sizes[i]:
                nodes.append(Add(f"add{i}", (prev, f"a{i - 1}"), (n,)))
                prev = f"add{i}"
    return Graph(tuple(nodes), prev)


def _conv_graph(g: torch.Generator) -> Graph:
    """Conv (stride 2, padding 1) → ReLU → grouped conv → tanh → maxpool (padded) → conv → ReLU → flatten → FC."""
    c1 = ConvOperator(_rand(g, 4, 2, 3, 3, scale=0.5), (2, 7, 7), (2, 2), (1, 1))
    c2 = ConvOperator(_rand(g, 4, 2, 3, 3, scale=0.5), c1.out_shape, (1, 1), (1, 1), groups=2)
    pool = MaxPool2d("pool", ("t2",), (4, 3, 3), kernel=(2, 2), stride=(2, 2), padding=(1, 1))
    c3 = ConvOperator(_rand(g, 3, 4, 2, 2, scale=0.5), pool.shape, (1, 1), (0, 0))
    nodes = (
        Input("x", (), (2, 7, 7)),
        Affine("norm", ("x",), (2, 7, 7), DiagonalOperator(_rand(g, 2, 1, 1) + 2, (2, 7, 7)), _rand(g, 2, 1, 1)),
        Affine("c1", ("norm",), c1.out_shape, c1, _rand(g, 4, 1, 1, scale=0.2)),
        Relu("r1", ("c1",), c1.out_shape),
        Affine("c2", ("r1",), c2.out_shape, c2, None),
        Tanh("t2", ("c2",), c2.out_shape),
        pool,
        Affine("c3", ("pool",), c3.out_shape, c3, _rand(g, 3, 1, 1, scale=0.2)),
        Relu("r3", ("c3",), c3.out_shape),
        Reshape("flat", ("r3",), (12,)),
        Affine("fc", ("flat",), (5,), DenseOperator(_rand(g, 5, 12)), _rand(g, 5)),
    )
    return Graph(nodes, "fc")


def _check_graph(graph: Graph, lo: torch.Tensor, hi: torch.Tensor, seed: int, dom=None, n: int = 300) -> dict:
    """End-to-end: every node's concrete values on sampled inputs lie in that node's bounds."""
    g = torch.Generator().manual_seed(seed)
    dom = dom or ZonotopeDomain()
    prop = propagate(graph, dom, lo, hi, keep_all=True)
    xs = _sample_box(g, lo, hi, n)
    vals = graph.forward(xs.reshape(-1, *graph.input_shape), all_nodes=True)
    for name, el in prop.elements.items():
        v = vals[name].reshape(n, lo.shape[0], *vals[name].shape[1:])
        _assert_inside(dom, el, v, g)
    return prop.elements


# -- per-transformer soundness on correlated input zonotopes ---------------------------------------
def _correlated(dom: ZonotopeDomain, g: torch.Generator, b: int, shape: tuple[int, ...]):
    """A zonotope with shared generators: a random dense map of a box, reshaped to ``shape``."""
    n = int(np.prod(shape))
    lo, hi = _box(g, b, (n,))
    x = dom.from_box(lo, hi)
    x = dom.affine(x, DenseOperator(_rand(g, n, n, scale=1.0)), _rand(g, n))
    return dom.reshape(x, shape)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("op_name", ["relu", "sigmoid", "tanh", "maxpool", "maxpool_overlap", "add", "conv",
                                     "conv_group", "reshape", "dense"])
def test_transformer_sound_on_zonotope(op_name: str, seed: int) -> None:
    g = torch.Generator().manual_seed(100 * seed + 7)
    dom = ZonotopeDomain()
    shape = (4, 5, 5)
    x = _correlated(dom, g, 2, shape)
    pts = _sample_zono(dom, x, g, 400)
    flat = pts.reshape(-1, *shape)
    if op_name in ("relu", "sigmoid", "tanh"):
        el = getattr(dom, op_name)(x)
        out = {"relu": torch.relu, "sigmoid": torch.sigmoid, "tanh": torch.tanh}[op_name](flat)
    elif op_name.startswith("maxpool"):
        k, s, p = ((2, 2), (2, 2), (0, 0)) if op_name == "maxpool" else ((3, 3), (1, 1), (1, 1))
        el = dom.maxpool(x, k, s, p)
        out = torch.nn.functional.max_pool2d(flat, k, s, p)
    elif op_name == "add":
        y = dom.relu(x)  # shares x's symbols plus new ones
        el = dom.add(x, y)
        out = flat + torch.relu(flat)
    elif op_name.startswith("conv"):
        groups = 2 if op_name == "conv_group" else 1
        op = ConvOperator(_rand(g, 6, 4 // groups, 3, 2), shape, (2, 1), (1, 0), (1, 1), groups)
        bias = _rand(g, 6, 1, 1)
        el = dom.affine(x, op, bias)
        out = op.forward(flat) + bias
    elif op_name == "reshape":
        el = dom.reshape(x, (4, 25))
        out = flat.reshape(-1, 4, 25)
    else:
        op = DenseOperator(_rand(g, 9, 100))
        xf = dom.reshape(x, (100,))
        el = dom.affine(xf, op, None)
        out = op.forward(flat.reshape(-1, 100))
    out = out.reshape(400, 2, *out.shape[1:])
    _assert_inside(dom, el, out, g)


@pytest.mark.parametrize("seed", range(3))
def test_maxpool_near_dominance_sound(seed: int) -> None:
    """Narrow, close windows: the dominance test must not accept an overlap of any size."""
    g = torch.Generator().manual_seed(seed)
    dom = ZonotopeDomain()
    shape = (3, 6, 6)
    lo, hi = _box(g, 2, (108,), width=0.02)
    x = dom.from_box(lo * 0.05, hi * 0.05)
    x = dom.affine(x, DenseOperator(torch.eye(108, dtype=DT) + _rand(g, 108, 108, scale=0.01)), None)
    x = dom.reshape(x, shape)
    pts = _sample_zono(dom, x, g, 400)
    for k, s, p in [((2, 2), (2, 2), (0, 0)), ((3, 3), (2, 2), (1, 1))]:
        el = dom.maxpool(x, k, s, p)
        out = torch.nn.functional.max_pool2d(pts.reshape(-1, *shape), k, s, p)
        _assert_inside(dom, el, out.reshape(400, 2, *out.shape[1:]), g)


def test_add_of_independent_elements() -> None:
    """Two separately built elements with equally many symbols must not share them."""
    g = torch.Generator().manual_seed(9)
    dom = ZonotopeDomain()
    x = _correlated(dom, g, 2, (5,))
    y = _correlated(dom, g, 2, (5,))
    assert x.n_generators == y.n_generators
    neg = dom.affine(y, DiagonalOperator(-torch.ones(5, dtype=DT), (5,)), None)
    s = dom.add(x, neg)
    assert s.n_generators == x.n_generators + y.n_generators
    px, py = _sample_zono(dom, x, g, 400), _sample_zono(dom, y, g, 400)
    _assert_inside(dom, s, px - py, g)


def test_relu_is_minimal_area_and_only_unstable_get_symbols() -> None:
    dom = ZonotopeDomain(ZonotopeOptions(sound_fp=False))
    lo = torch.tensor([[-2.0, 1.0, -3.0, -1.0]], dtype=DT)
    hi = torch.tensor([[2.0, 3.0, -1.0, 3.0]], dtype=DT)
    x = dom.from_box(lo, hi)
    y = dom.relu(x)
    # 4 input symbols (inactive neuron's row dropped: 3 left) + 2 unstable neurons.
    assert y.n_generators == 3 + 2
    zl, zu = dom.zonotope_bounds(y)
    lam = hi / (hi - lo)
    assert torch.allclose(zl[0, [0, 3]], (lam * lo)[0, [0, 3]])  # DeepZ lower bound λl
    assert torch.allclose(zu[0, [0, 3]], hi[0, [0, 3]])
    l, u = dom.bounds(y)  # stored box tightens the lower bound to 0
    assert torch.equal(l, torch.tensor([[0.0, 1.0, 0.0, 0.0]], dtype=DT))
    assert torch.allclose(u, hi.clamp(min=0))


def test_maxpool_exact_when_dominated() -> None:
    dom = ZonotopeDomain(ZonotopeOptions(sound_fp=False))
    lo = torch.tensor([[5.0, 0.0, 0.0, 1.0]], dtype=DT).reshape(1, 1, 2, 2)
    hi = torch.tensor([[6.0, 1.0, 2.0, 3.0]], dtype=DT).reshape(1, 1, 2, 2)
    x = dom.from_box(lo, hi)
    y = dom.maxpool(x, (2, 2), (2, 2), (0, 0))
    assert y.n_generators == 1  # only input 0's symbol survives, no new symbol
    assert torch.allclose(torch.stack(dom.bounds(y)).flatten(), torch.tensor([5.0, 6.0], dtype=DT))
    # Relational dominance: x0 = z + 1, x1 = z: not separated by intervals, yet x0 > x1 always.
    z = dom.from_box(torch.zeros(1, 1), torch.ones(1, 1))
    two = dom.affine(z, DenseOperator(torch.ones(2, 1, dtype=DT)), torch.tensor([1.0, 0.0], dtype=DT))
    y2 = dom.maxpool(dom.reshape(two, (1, 1, 2)), (1, 2), (1, 2), (0, 0))
    assert y2.n_generators == 1 and torch.allclose(dom._dense_gens(y2).flatten(), torch.tensor([0.5], dtype=DT))


def test_add_keeps_correlations_exactly() -> None:
    dom = ZonotopeDomain(ZonotopeOptions(sound_fp=False))
    g = torch.Generator().manual_seed(3)
    x = _correlated(dom, g, 2, (6,))
    neg = dom.affine(x, DiagonalOperator(-torch.ones(6, dtype=DT), (6,)), None)
    zero = dom.add(x, neg)
    lo, hi = dom.bounds(zero)
    assert torch.allclose(lo, torch.zeros_like(lo)) and torch.allclose(hi, torch.zeros_like(hi))
    assert zero.n_generators == 0  # cancelled rows are dropped
    # Different branches with their own new symbols: union aligns rows by id.
    a, b = dom.relu(x), dom.tanh(x)
    s = dom.add(a, b)
    assert s.n_generators == len(set(a.ids.tolist()) | set(b.ids.tolist()))


# -- end-to-end graphs -------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("act", [Relu, Sigmoid, Tanh])
def test_dense_graph_sound(seed: int, act) -> None:
    g = torch.Generator().manual_seed(seed)
    graph = _dense_graph(g, [6, 12, 12, 12, 4], act, residual=seed % 2 == 1)
    lo, hi = _box(g, 3, (6,), width=0.4)
    _check_graph(graph, lo, hi, seed)


@pytest.mark.parametrize("seed", range(3))
def test_conv_graph_sound(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    graph = _conv_graph(g)
    lo, hi = _box(g, 2, (2, 7, 7), width=0.2)
    _check_graph(graph, lo, hi, seed, n=200)


def test_relu_on_input_and_degenerate_boxes() -> None:
    """A graph starting with ReLU (lazy input generators) and zero-width inputs (k = 0)."""
    g = torch.Generator().manual_seed(5)
    nodes = (Input("x", (), (5,)), Relu("r", ("x",), (5,)),
             Affine("fc", ("r",), (3,), DenseOperator(_rand(g, 3, 5)), None))
    graph = Graph(nodes, "fc")
    lo, hi = _box(g, 2, (5,))
    _check_graph(graph, lo, hi, 0)
    dom = ZonotopeDomain()
    point = _rand(g, 2, 5)
    out = propagate(graph, dom, point, point).output
    assert out.n_generators == 0
    l, u = dom.bounds(out)
    ref = graph.forward(point)
    assert torch.allclose(l, ref, atol=1e-12) and torch.allclose(u, ref, atol=1e-12)


@pytest.mark.parametrize("name,eps", [("digits_mlp_2x64.onnx", 0.03), ("digits_cnn.onnx", 0.03),
                                      ("digits_fc1x200_pgd.onnx", 0.06)])
def test_bundled_networks(networks_dir, name: str, eps: float) -> None:
    graph = load_onnx(networks_dir / name)
    with np.load(networks_dir / "digits_test.npz") as data:
        x = torch.tensor(data["images"][:6], dtype=DT)
        labels = torch.tensor(data["labels"][:6])
    lo, hi = (x - eps).clamp(0, 1), (x + eps).clamp(0, 1)
    elements = _check_graph(graph, lo, hi, 1, n=100)
    box = propagate(graph, BoxDomain(), lo, hi, keep_all=True).elements
    zdom = ZonotopeDomain()
    for nm, el in elements.items():  # never looser than Box
        zl, zu = zdom.bounds(el)
        assert torch.all(zl >= box[nm].lower - TOL) and torch.all(zu <= box[nm].upper + TOL), nm
    C = torch.zeros(6, 9, 10, dtype=DT)
    for b, t in enumerate(labels.tolist()):
        others = [j for j in range(10) if j != t]
        C[b, range(9), t] = 1.0
        C[b, range(9), others] = -1.0
    z_lb = zdom.linear_bounds(elements[graph.output], C)
    b_lb = BoxDomain().linear_bounds(box[graph.output], C)
    assert torch.all(z_lb >= b_lb - TOL)
    if name == "digits_fc1x200_pgd.onnx":
        assert int((z_lb.min(1).values > 0).sum()) > int((b_lb.min(1).values > 0).sum())


# -- batching, purity, determinism, pickling ---------------------------------------------------------
def test_batch_equals_separate_runs() -> None:
    g = torch.Generator().manual_seed(11)
    graph = _conv_graph(g)
    lo, hi = _box(g, 3, (2, 7, 7), width=0.2)
    dom = ZonotopeDomain()
    C = _rand(g, 3, 4, 5)
    together = propagate(graph, dom, lo, hi).output
    tl, tu = dom.bounds(together)
    t_lb = dom.linear_bounds(together, C)
    for i in range(3):
        one = propagate(graph, dom, lo[i:i + 1], hi[i:i + 1]).output
        l, u = dom.bounds(one)
        assert torch.allclose(l, tl[i:i + 1], atol=1e-10, rtol=1e-10)
        assert torch.allclose(u, tu[i:i + 1], atol=1e-10, rtol=1e-10)
        assert torch.allclose(dom.linear_bounds(one, C[i:i + 1]), t_lb[i:i + 1], atol=1e-10, rtol=1e-10)


def test_inputs_not_mutated_and_deterministic() -> None:
    g = torch.Generator().manual_seed(12)
    graph = _conv_graph(g)
    lo, hi = _box(g, 2, (2, 7, 7), width=0.2)
    lo0, hi0 = lo.clone(), hi.clone()
    dom = ZonotopeDomain()
    prop = propagate(graph, dom, lo, hi, keep_all=True)
    snap = {k: [t.clone() for t in (e.center, e.err, e.lower, e.upper)] for k, e in prop.elements.items()}
    again = propagate(graph, dom, lo, hi, keep_all=True)  # re-run, reading the same inputs
    for node in graph.nodes[1:]:  # re-apply every transformer to the stored elements
        apply_op(dom, node, [prop.elements[a] for a in node.inputs])
    assert torch.equal(lo, lo0) and torch.equal(hi, hi0)
    for k, e in prop.elements.items():
        for a, b in zip(snap[k], (e.center, e.err, e.lower, e.upper)):
            assert torch.equal(a, b), k
        for a, b in zip(dom.bounds(e), dom.bounds(again.elements[k])):
            assert torch.equal(a, b), k  # bit-identical across runs
    el = prop.elements["r1"]
    clone = pickle.loads(pickle.dumps(el))
    assert all(torch.equal(a, b) for a, b in zip(dom.bounds(clone), dom.bounds(el)))


# -- meet_box, order reduction, rounding, extras -------------------------------------------------------
def test_meet_box_with_split_bounds() -> None:
    """Bounds proved by input splitting (sound, tighter) tighten the next ReLU relaxation."""
    g = torch.Generator().manual_seed(21)
    graph = _dense_graph(g, [2, 16, 16, 3])
    lo, hi = _box(g, 1, (2,), width=0.8)
    dom = ZonotopeDomain()
    # Sound hidden-layer bounds from 16 sub-boxes.
    parts = torch.linspace(0, 1, 5, dtype=DT)
    sub_lo, sub_hi = [], []
    for i in range(4):
        for j in range(4):
            a = lo + (hi - lo) * torch.stack([parts[i], parts[j]])
            c = lo + (hi - lo) * torch.stack([parts[i + 1], parts[j + 1]])
            sub_lo.append(a)
            sub_hi.append(c)
    every = propagate(graph.to(dom.device, dom.dtype), dom, torch.cat(sub_lo), torch.cat(sub_hi), keep_all=True)
    split = {name: dom.bounds(el) for name, el in every.elements.items()}
    tight = {k: (v[0].min(0, keepdim=True).values, v[1].max(0, keepdim=True).values) for k, v in split.items()}

    def refine(node, el):
        return dom.meet_box(el, *tight[node.name]) if node.name.startswith("fc") else el

    plain = propagate(graph, dom, lo, hi).output
    refined = propagate(graph, dom, lo, hi, refine=refine, keep_all=True)
    pl, pu = dom.bounds(plain)
    rl, ru = dom.bounds(refined.output)
    assert torch.all(rl >= pl - TOL) and torch.all(ru <= pu + TOL)
    assert float((ru - rl).sum()) < float((pu - pl).sum())
    xs = _sample_box(g, lo, hi, 500)
    vals = graph.forward(xs.reshape(-1, 2), all_nodes=True)
    for nm, el in refined.elements.items():
        _assert_inside(dom, el, vals[nm].reshape(500, 1, -1), g)


def test_order_reduction_bounded_and_sound() -> None:
    g = torch.Generator().manual_seed(31)
    graph = _dense_graph(g, [8, 20, 20, 20, 5], residual=True)
    lo, hi = _box(g, 2, (8,), width=0.5)
    dom = ZonotopeDomain(ZonotopeOptions(max_generators=12))
    elements = _check_graph(graph, lo, hi, 31, dom)
    assert all(e.n_generators <= 12 for e in elements.values() if e.gens is not None)


def test_rounding_margin_is_tiny_and_box_only_helps() -> None:
    g = torch.Generator().manual_seed(41)
    graph = _conv_graph(g)
    lo, hi = _box(g, 2, (2, 7, 7), width=0.2)
    out = {}
    for key, opts in {"default": ZonotopeOptions(), "nofp": ZonotopeOptions(sound_fp=False),
                      "nobox": ZonotopeOptions(track_box=False)}.items():
        dom = ZonotopeDomain(opts)
        out[key] = dom.bounds(propagate(graph, dom, lo, hi).output)
    (la, ua), (lb, ub), (lc, uc) = out["default"], out["nofp"], out["nobox"]
    assert torch.all(la <= lb) and torch.all(ua >= ub)  # rounding margins only widen ...
    assert float(torch.maximum(lb - la, ua - ub).max()) < 1e-9  # ... by a negligible amount
    assert torch.all(la >= lc - 1e-9) and torch.all(ua <= uc + 1e-9)  # the box alongside only helps


def test_octahedral_bounds() -> None:
    g = torch.Generator().manual_seed(51)
    dom = ZonotopeDomain()
    x = _correlated(dom, g, 2, (10,))
    groups = torch.tensor([[0, 3, 7], [1, 2, 9]])
    dirs, lo, hi = dom.octahedral_bounds(x, groups)
    assert dirs.shape == (13, 3) and lo.shape == (2, 2, 13)
    assert torch.equal(dirs, octahedral_directions(3))
    try:  # same row order as the k-ReLU code's half matrix: b = cat([upper, −lower])
        from absint.domains.krelu.octahedron import octahedral_directions as krelu_dirs
    except ImportError:  # pragma: no cover - module owned by another component
        krelu_dirs = None
    if krelu_dirs is not None:
        assert np.array_equal(dirs.numpy(), krelu_dirs(3, half=True))
    pts = _sample_zono(dom, x, g, 500)  # [n, B, 10]
    proj = torch.einsum("nbgs,ds->nbgd", pts[:, :, groups], dirs)
    assert torch.all(proj >= lo - TOL) and torch.all(proj <= hi + TOL)
    # Same as linear_bounds on the corresponding rows.
    C = torch.zeros(2, 13, 10, dtype=DT)
    C[:, :, groups[0]] = dirs
    assert torch.allclose(dom.linear_bounds(x, C), lo[:, 0], atol=1e-9)


def test_registered() -> None:
    from absint.analyses import get_analysis
    from absint.registry import available_domains

    assert available_domains()["deepzono"] is ZonotopeDomain
    an = get_analysis("deepzono", device="cpu")
    g = torch.Generator().manual_seed(61)
    graph = _dense_graph(g, [4, 8, 3])
    lo, hi = _box(g, 2, (4,))
    C = _rand(g, 2, 2, 3)
    res = an.bound(graph, lo, hi, C, torch.zeros(2, 2, dtype=DT))
    assert res.lower.shape == (2, 2)
