"""DeepPoly domain: sampled soundness per transformer, never looser than Box, the same bounds as a
textbook dense back-substitution written here (MLPs and a conv net, 1e-9 relative), conv
back-substitution equal to the dense computation, batching, immutability, determinism, registration."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

import absint  # noqa: F401  (import order: absint before domains)
from absint.frontends.onnx_loader import load_onnx
from absint.interpreter import propagate
from absint.ir import Add, Affine, Graph, Input, MaxPool2d, Relu, Reshape, Sigmoid, Tanh
from absint.linear import ConvOperator, DenseOperator, DiagonalOperator
from absint.testing import EXAMPLE_NETWORKS, example_network, random_mlp
from absint.domains.box import BoxDomain
from absint.domains.deeppoly import DeepPolyDomain, DeepPolyOptions

F64 = torch.float64
TOL = 1e-8


# -- small random networks as IR graphs (shared: absint.testing) ------------------------------
def mlp(seed: int, act=Relu, sizes=(6, 12, 10, 8, 4)) -> Graph:
    return random_mlp(seed, sizes, act=act)


def _boxes(shape, batch, seed, width=0.4):
    g = torch.Generator().manual_seed(seed)
    c = torch.rand(batch, *shape, generator=g, dtype=F64) * 2 - 1
    r = torch.rand(batch, *shape, generator=g, dtype=F64) * width
    return c - r, c + r


def _samples(lo, hi, n, seed):
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(n, *lo.shape, generator=g, dtype=F64)
    corner = torch.rand(n, *lo.shape, generator=g, dtype=F64) < 0.2
    u = torch.where(corner, u.round(), u)
    return lo + u * (hi - lo)  # [n, B, *shape]


def _check_sound(graph: Graph, dom, lo, hi, n_samples=300, seed=0):
    prop = propagate(graph, dom, lo, hi, keep_all=True)
    xs = _samples(lo, hi, n_samples, seed)
    b = lo.shape[0]
    values = graph.forward(xs.reshape(n_samples * b, *lo.shape[1:]), all_nodes=True)
    for node in graph.nodes:
        l, u = dom.bounds(prop.elements[node.name])
        v = values[node.name].reshape(n_samples, b, *node.shape)
        assert (v >= l - TOL).all(), f"{node.name}: lower bound violated by {(l - v).max().item()}"
        assert (v <= u + TOL).all(), f"{node.name}: upper bound violated by {(v - u).max().item()}"
    # linear bounds of random rows (output and one intermediate node)
    y = values[graph.output].reshape(n_samples, b, -1)
    g = torch.Generator().manual_seed(seed + 1)
    C = torch.randn(b, 5, y.shape[-1], generator=g, dtype=F64)
    d = torch.randn(b, 5, generator=g, dtype=F64)
    lb = dom.linear_bounds(prop.output, C, d)
    vals = torch.einsum("bmn,sbn->sbm", C, y) + d
    assert (vals >= lb - TOL).all()
    return prop


NETS = {name: (lambda seed, name=name: example_network(name, seed)) for name in EXAMPLE_NETWORKS}


@pytest.mark.parametrize("name", sorted(NETS))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sampled_soundness_and_never_looser_than_box(name, seed):
    graph = NETS[name](seed)
    lo, hi = _boxes(graph.input_shape, 3, seed, width=0.3 if "conv" in name else 0.6)
    dom = DeepPolyDomain()
    prop = _check_sound(graph, dom, lo, hi, seed=seed)
    box = propagate(graph, BoxDomain(), lo, hi, keep_all=True)
    for node in graph.nodes:
        l, u = dom.bounds(prop.elements[node.name])
        bl, bu = box.elements[node.name].lower, box.elements[node.name].upper
        assert (l >= bl - 1e-12).all() and (u <= bu + 1e-12).all(), node.name


def _dense_matrix(node: Affine) -> tuple[torch.Tensor, torch.Tensor]:
    """``(W, b)`` of an affine node over flat vectors, built here from the operator's parameters
    (``F.conv2d`` of the identity basis for a convolution), not by the engine."""
    op = node.operator
    n_out = int(np.prod(node.shape))
    if isinstance(op, DenseOperator):
        W = op.weight
    elif isinstance(op, ConvOperator):
        n_in = int(np.prod(op.in_shape))
        basis = torch.eye(n_in, dtype=F64).reshape(n_in, *op.in_shape)
        cols = torch.nn.functional.conv2d(basis, op.weight, None, op.stride, op.padding, op.dilation, op.groups)
        W = cols.reshape(n_in, n_out).T
    elif isinstance(op, DiagonalOperator):
        W = torch.diag(torch.broadcast_to(op.scale, node.shape).reshape(-1))
    else:
        raise AssertionError(f"reference: no dense form for {type(op).__name__}")
    b = torch.zeros(n_out, dtype=F64) if node.bias is None else torch.broadcast_to(node.bias, node.shape).reshape(-1)
    return W.to(F64), b.to(F64)


def _relu_lines(l: torch.Tensor, u: torch.Tensor):
    """DeepPoly's ReLU (Singh et al., POPL 2019, §4.2), written out: stable neurons exact; unstable
    ones the chord ``u/(u−l)·(x−l)`` above and ``α·x`` below, ``α = 1`` iff ``u > −l`` (area)."""
    active, inactive = l >= 0, u <= 0
    unstable = ~(active | inactive)
    chord = torch.where(unstable, u / torch.where(unstable, u - l, torch.ones_like(u)), torch.zeros_like(u))
    ls = torch.where(active, torch.ones_like(u), torch.where(unstable & (u > -l), torch.ones_like(u), torch.zeros_like(u)))
    us = torch.where(active, torch.ones_like(u), chord)
    uo = torch.where(unstable, -chord * l, torch.zeros_like(u))
    return ls, torch.zeros_like(u), us, uo


def _reference_deeppoly(graph: Graph, lo: torch.Tensor, hi: torch.Tensor, C: torch.Tensor):
    """Textbook DeepPoly for one box on a chain of affine (dense, convolution as its dense matrix,
    diagonal) + activation layers, reshapes as no-ops on flat vectors: full back-substitution of
    every neuron to the input, no shortcuts, best of it and intervals."""
    from absint.domains.relaxations import sigmoid_deeppoly, tanh_deeppoly

    layers = []  # ("affine", W, b) or ("act", ls, lo, us, uo)
    bounds = [(lo.reshape(-1), hi.reshape(-1))]

    def backsub(lam, const):
        for layer in reversed(layers):
            if layer[0] == "affine":
                _, W, b = layer
                const = const + lam @ b
                lam = lam @ W
            else:
                _, ls, lof, us, uof = layer
                pos, neg = lam.clamp(min=0), lam.clamp(max=0)
                const = const + pos @ lof + neg @ uof
                lam = pos * ls + neg * us
        l0, u0 = bounds[0]
        return const + lam.clamp(min=0) @ l0 + lam.clamp(max=0) @ u0

    for node in graph.nodes[1:]:
        pl, pu = bounds[-1]
        if isinstance(node, Reshape):
            bounds.append((pl, pu))
        elif isinstance(node, Affine):
            W, b = _dense_matrix(node)
            layers.append(("affine", W, b))
            n = W.shape[0]
            eye = torch.eye(n, dtype=F64)
            l = backsub(eye, torch.zeros(n, dtype=F64))
            u = -backsub(-eye, torch.zeros(n, dtype=F64))
            c, r = W @ ((pl + pu) / 2) + b, W.abs() @ ((pu - pl) / 2)
            bounds.append((torch.maximum(l, c - r), torch.minimum(u, c + r)))
        else:
            if isinstance(node, Relu):
                layers.append(("act", *_relu_lines(pl, pu)))
            else:
                rel = {Sigmoid: sigmoid_deeppoly, Tanh: tanh_deeppoly}[type(node)](pl, pu)
                layers.append(("act", rel.lower_slope, rel.lower_offset, rel.upper_slope, rel.upper_offset))
            f = {Relu: torch.relu, Sigmoid: torch.sigmoid, Tanh: torch.tanh}[type(node)]
            bounds.append((f(pl), f(pu)))
    return bounds, backsub(C, torch.zeros(C.shape[0], dtype=F64))


def _close(a: torch.Tensor, ref: torch.Tensor, rel: float = 1e-9) -> bool:
    """``|a − ref| ≤ rel·(1 + |ref|)`` everywhere (issue 13: the same bounds to 1e-9)."""
    return bool(((a - ref).abs() <= rel * (1 + ref.abs())).all())


@pytest.mark.parametrize("act", [Relu, Sigmoid, Tanh])
@pytest.mark.parametrize("early_stop", [False, True])
def test_matches_textbook_deeppoly(act, early_stop):
    """Same bounds as a direct dense implementation of the paper (catches loose transformers)."""
    for seed in range(3):
        graph = mlp(seed, act, sizes=(5, 10, 10, 10, 3))
        lo, hi = _boxes(graph.input_shape, 1, seed, width=0.5)
        C = torch.randn(4, 3, dtype=F64, generator=torch.Generator().manual_seed(seed))
        ref_bounds, ref_lb = _reference_deeppoly(graph, lo, hi, C)
        dom = DeepPolyDomain(DeepPolyOptions(early_stop=early_stop))
        p = propagate(graph, dom, lo, hi, keep_all=True)
        lb = dom.linear_bounds(p.output, C[None])[0]
        if early_stop:  # intermediate concretisation may only tighten (on these seeds)
            assert (lb >= ref_lb - 1e-9 * (1 + ref_lb.abs())).all()
        else:
            assert _close(lb, ref_lb)
            for node, (rl, ru) in zip(graph.nodes, ref_bounds):
                l, u = dom.bounds(p.elements[node.name])
                assert _close(l.reshape(-1), rl), node.name
                assert _close(u.reshape(-1), ru), node.name


@pytest.mark.parametrize("early_stop", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_conv_matches_textbook_deeppoly(seed, early_stop):
    """The conv net (normalisation, strided padded conv, grouped conv, reshape, dense) against the
    dense textbook reference: every node's bounds and the output rows to 1e-9 relative (engine
    work, issue 13: conv back-substitution through ``conv_transpose2d`` and patches must not move
    a bound). The default ``early_stop`` may only tighten."""
    graph = example_network("conv", seed)
    lo, hi = _boxes(graph.input_shape, 1, seed, width=0.3)
    C = torch.randn(5, 3, dtype=F64, generator=torch.Generator().manual_seed(seed))
    ref_bounds, ref_lb = _reference_deeppoly(graph, lo, hi, C)
    # the boxes must leave unstable ReLUs in every layer, or the test checks little
    relus = [i for i, n in enumerate(graph.nodes) if isinstance(n, Relu)]
    for i in relus:
        pl, pu = ref_bounds[i - 1]
        assert ((pl < 0) & (pu > 0)).any(), graph.nodes[i].name
    dom = DeepPolyDomain(DeepPolyOptions(early_stop=early_stop))
    p = propagate(graph, dom, lo, hi, keep_all=True)
    lb = dom.linear_bounds(p.output, C[None])[0]
    if early_stop:
        assert (lb >= ref_lb - 1e-9 * (1 + ref_lb.abs())).all()
        return
    assert _close(lb, ref_lb), (lb - ref_lb).abs().max()
    for node, (rl, ru) in zip(graph.nodes, ref_bounds):
        l, u = dom.bounds(p.elements[node.name])
        assert _close(l.reshape(-1), rl), (node.name, (l.reshape(-1) - rl).abs().max())
        assert _close(u.reshape(-1), ru), (node.name, (u.reshape(-1) - ru).abs().max())


@pytest.mark.parametrize("mode", ["area", "zero", "one", "parallel"])
def test_relu_lower_modes_sound(mode):
    for seed in range(2):
        graph = mlp(seed)
        lo, hi = _boxes(graph.input_shape, 2, seed)
        _check_sound(graph, DeepPolyDomain(DeepPolyOptions(relu_lower=mode)), lo, hi, seed=seed)


@pytest.mark.parametrize("opts", [dict(early_stop=False), dict(keep_best=True), dict(memory_mb=0.001)])
def test_option_variants_sound_and_consistent(opts):
    graph = example_network('conv_pool', 3)
    lo, hi = _boxes(graph.input_shape, 2, 3, width=0.3)
    dom = DeepPolyDomain(DeepPolyOptions(**opts))
    prop = _check_sound(graph, dom, lo, hi)
    ref = propagate(graph, DeepPolyDomain(), lo, hi)
    C = torch.eye(3, dtype=F64).expand(2, 3, 3)
    a, b = dom.linear_bounds(prop.output, C), DeepPolyDomain().linear_bounds(ref.output, C)
    if opts.get("keep_best"):
        assert (a >= b - 1e-9).all()
    else:  # same relaxations: same result (chunking / early stopping change nothing)
        assert torch.allclose(a, b, atol=1e-7)


def _dense_copy(graph: Graph) -> Graph:
    """The same network with every convolution replaced by its dense matrix."""
    nodes = []
    for n in graph.nodes:
        if isinstance(n, Affine) and isinstance(n.operator, ConvOperator):
            w = n.operator.dense()
            src_shape = n.operator.in_shape
            nodes += [Reshape(n.name + "_in", n.inputs, (int(np.prod(src_shape)),)),
                      Affine(n.name + "_d", (n.name + "_in",), (w.shape[0],), DenseOperator(w), n.bias_full().reshape(-1)),
                      Reshape(n.name, (n.name + "_d",), n.shape)]
        else:
            nodes.append(n)
    return Graph(tuple(nodes), graph.output)


def test_conv_backsubstitution_matches_dense():
    graph = example_network('conv', 4)
    dense = _dense_copy(graph)
    lo, hi = _boxes(graph.input_shape, 2, 4, width=0.3)
    dom = DeepPolyDomain()
    a = propagate(graph, dom, lo, hi, keep_all=True)
    b = propagate(dense, dom, lo, hi, keep_all=True)
    for node in graph.nodes:
        la, ua = dom.bounds(a.elements[node.name])
        lb, ub = dom.bounds(b.elements[node.name])
        assert torch.allclose(la, lb, atol=1e-9) and torch.allclose(ua, ub, atol=1e-9), node.name
    C = torch.randn(2, 4, 3, dtype=F64)
    assert torch.allclose(dom.linear_bounds(a.output, C), dom.linear_bounds(b.output, C), atol=1e-9)


@pytest.mark.parametrize("small_chunks", [False, True])
@pytest.mark.parametrize("segments", [False, True])
@pytest.mark.parametrize("name", ["conv_pool", "residual", "mlp_tanh", "mlp_relu"])
def test_batch_equals_separate_runs(name, segments, small_chunks, monkeypatch):
    if segments:  # force the per-member segment code paths (used for large row blocks)
        from absint.domains.linear_bounds.rows import RowLayout
        monkeypatch.setattr(RowLayout, "SEGMENT_MIN", 1)
    if small_chunks:  # batched window rows in many chunks, a dense first layer concretised in
        # blocks of two or three rows per member (issue 13: Engine.PATCH_CHUNK_BATCHED, _dense_to_box)
        from absint.domains.linear_bounds import backward
        from absint.domains.linear_bounds.engine import Engine
        monkeypatch.setattr(Engine, "PATCH_CHUNK_BATCHED", 2)
        monkeypatch.setattr(backward, "BOX_BLOCK_BYTES", 1)
    graph = NETS[name](5)
    lo, hi = _boxes(graph.input_shape, 4, 5, width=0.3)
    dom = DeepPolyDomain()
    prop = propagate(graph, dom, lo, hi)
    C = torch.randn(4, 3, int(np.prod(graph.output_shape)), dtype=F64)
    lb = dom.linear_bounds(prop.output, C)
    out_l, out_u = dom.bounds(prop.output)
    for i in range(4):
        p = propagate(graph, dom, lo[i:i + 1], hi[i:i + 1])
        assert torch.allclose(dom.linear_bounds(p.output, C[i:i + 1]), lb[i:i + 1], atol=1e-9)
        l, u = dom.bounds(p.output)
        assert torch.allclose(l, out_l[i:i + 1], atol=1e-9) and torch.allclose(u, out_u[i:i + 1], atol=1e-9)


@pytest.mark.parametrize("segments", [False, True])
def test_batch_members_with_different_live_neurons_equal_separate_runs(segments, monkeypatch):
    """Members whose boxes leave very different neurons live (a point-like box: 17-20 of 40 per
    layer, a wide one: all 40, one far from the others) bounded together: each member's rows carry
    only its own live neurons (rows.MemberCols), and every bound equals that member's separate run
    (1e-9; a wrong member's weight columns or start rows fail it)."""
    from absint.domains.linear_bounds import backward
    from absint.domains.linear_bounds.rows import MemberCols, RowLayout

    if segments:
        monkeypatch.setattr(RowLayout, "SEGMENT_MIN", 1)
    compact = []
    inner = backward._affine_members
    monkeypatch.setattr(backward, "_affine_members", lambda p, node, lam, mc: compact.append(mc) or inner(p, node, lam, mc))
    graph = random_mlp(3, (10, 40, 40, 40, 6))
    g = torch.Generator().manual_seed(7)
    c = torch.rand(4, 10, generator=g, dtype=F64) * 2 - 1
    c[3] = -4.0 - c[3]  # far from the others
    r = torch.tensor([1e-3, 0.05, 0.6, 0.3], dtype=F64).unsqueeze(1)
    lo, hi = c - r, c + r
    dom = DeepPolyDomain()
    prop = propagate(graph, dom, lo, hi, keep_all=True)
    C = torch.randn(4, 3, 6, generator=g, dtype=F64)
    lb = dom.linear_bounds(prop.output, C)
    assert compact, "the member-compact path was not taken"
    counts = [mc.counts for mc in compact if isinstance(mc, MemberCols)]
    assert any(max(k) >= 2 * max(min(k), 1) for k in counts), counts  # very different live sets
    for i in range(4):
        p = propagate(graph, dom, lo[i:i + 1], hi[i:i + 1], keep_all=True)
        assert torch.allclose(dom.linear_bounds(p.output, C[i:i + 1]), lb[i:i + 1], rtol=1e-9, atol=1e-9)
        for node in graph.nodes:
            l, u = dom.bounds(p.elements[node.name])
            lb_all, ub_all = dom.bounds(prop.elements[node.name])
            assert torch.allclose(l, lb_all[i:i + 1], rtol=1e-9, atol=1e-9), node.name
            assert torch.allclose(u, ub_all[i:i + 1], rtol=1e-9, atol=1e-9), node.name


def test_inputs_not_mutated_and_deterministic():
    graph = example_network('conv_pool', 6)
    lo, hi = _boxes(graph.input_shape, 2, 6)
    lo0, hi0 = lo.clone(), hi.clone()
    dom = DeepPolyDomain()
    C = torch.randn(2, 4, 3, dtype=F64)
    C0 = C.clone()
    runs = []
    for _ in range(2):
        p = propagate(graph, dom, lo, hi)
        runs.append((dom.linear_bounds(p.output, C), *dom.bounds(p.output)))
    assert torch.equal(lo, lo0) and torch.equal(hi, hi0) and torch.equal(C, C0)
    for a, b in zip(*runs):
        assert torch.equal(a, b)
    # elements are values: computing more bounds (memoised) can only tighten later answers
    p = propagate(graph, dom, lo, hi, keep_all=True)
    before = dom.linear_bounds(p.output, C)
    for el in p.elements.values():
        dom.bounds(el)
    assert (dom.linear_bounds(p.output, C) >= before - 1e-12).all()
    assert pickle.loads(pickle.dumps(p.output)).shape == p.output.shape


def test_maxpool_exact_when_one_input_dominates():
    nodes = (Input("x", (), (1, 2, 2)), MaxPool2d("mp", ("x",), (1, 1, 1), kernel=(2, 2), stride=(2, 2)))
    graph = Graph(nodes, "mp")
    dom = DeepPolyDomain()
    lo = torch.tensor([[[[3.0, 0.0], [-1.0, 1.0]]]], dtype=F64)
    hi = torch.tensor([[[[4.0, 2.0], [0.5, 2.9]]]], dtype=F64)
    p = propagate(graph, dom, lo, hi)
    # y = x_0 exactly, so y - x_0 is 0: bound it through a relation the box cannot see
    l, u = dom.bounds(p.output)
    assert l.item() == 3.0 and u.item() == 4.0
    assert dom.engine.pool(p.output).exact.all()


def test_maxpool_bounds_of_single_outputs_are_tight():
    """``±y_p`` back-substituted through the pool lines gives exactly ``max l`` and ``max u``."""
    graph = example_network('pool', 0)
    lo, hi = _boxes(graph.input_shape, 2, 0, width=0.5)
    dom = DeepPolyDomain()
    p = propagate(graph, dom, lo, hi, keep_all=True)
    mp = p.elements["mp"]
    eye = torch.eye(18, dtype=F64).expand(2, -1, -1)
    low = dom.linear_bounds_at(mp, eye)
    up = -dom.linear_bounds_at(mp, -eye)
    ref_l = torch.nn.functional.max_pool2d(lo, 3, 2, 1).reshape(2, -1)
    ref_u = torch.nn.functional.max_pool2d(hi, 3, 2, 1).reshape(2, -1)
    assert torch.allclose(low, ref_l, atol=1e-7) and torch.allclose(up, ref_u, atol=1e-7)


def test_maxpool_overlapping_windows_share_one_input():
    """Both windows pick the same (dominant) input: coefficients must add up, not overwrite."""
    graph = Graph((Input("x", (), (1, 1, 3)),
                   MaxPool2d("mp", ("x",), (1, 1, 2), kernel=(1, 2), stride=(1, 1))), "mp")
    dom = DeepPolyDomain()
    lo = torch.tensor([[[[-5.0, -2.0, -6.0]]]], dtype=F64)
    hi = torch.tensor([[[[-4.0, -1.0, -3.0]]]], dtype=F64)
    p = propagate(graph, dom, lo, hi)
    C = torch.tensor([[[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0]]], dtype=F64)
    lb = dom.linear_bounds(p.output, C)
    assert torch.allclose(lb, torch.tensor([[-4.0, 0.0, 0.0]], dtype=F64), atol=1e-7)


def test_meet_box_tightens_later_relaxations():
    """Bounds met at a pre-activation node are kept and drive the next ReLU's relaxation."""
    graph = mlp(7)
    lo, hi = _boxes(graph.input_shape, 1, 7, width=0.8)
    dom = DeepPolyDomain()
    state = {}

    def refine(node, el):
        if node.name == "fc1":
            l, u = dom.bounds(el)
            state["box"] = (l + 0.1 * (u - l), u - 0.1 * (u - l))
            return dom.meet_box(el, *state["box"])
        return el

    p = propagate(graph, dom, lo, hi, keep_all=True, refine=refine)
    tl, tu = state["box"]
    l, u = dom.bounds(p.elements["fc1"])
    assert torch.equal(l, tl) and torch.equal(u, tu)
    act = p.elements["act1"]
    pl, pu = dom.preactivation_bounds(act)
    assert torch.equal(pl, tl) and torch.equal(pu, tu)
    rl, ru = dom.bounds(act)
    assert torch.equal(rl, tl.clamp(min=0)) and torch.equal(ru, tu.clamp(min=0))
    unstable = ((tl < 0) & (tu > 0)).reshape(-1)
    chord = (tu / (tu - tl)).reshape(-1)
    lines = dom.engine.lines(act)
    assert torch.allclose((lines.ls + lines.ds)[0][unstable], chord[unstable])
    # the element it was met from is unchanged (elements are values)
    ref = propagate(graph, dom, lo, hi, keep_all=True)
    l0, u0 = dom.bounds(ref.elements["fc1"])
    assert (l0 < tl).any() or (u0 > tu).any()


def test_linear_bounds_at_intermediate_node_and_input_form():
    graph = example_network('residual', 8)
    lo, hi = _boxes(graph.input_shape, 2, 8)
    dom = DeepPolyDomain()
    p = propagate(graph, dom, lo, hi, keep_all=True)
    xs = _samples(lo, hi, 400, 9)
    values = graph.forward(xs.reshape(800, 8), all_nodes=True)
    # octahedral rows x_i ± x_j ± x_k at the input of ReLU "rs1"
    rows = []
    for s1 in (1, -1):
        for s2 in (1, -1):
            for s3 in (1, -1):
                r = torch.zeros(8, dtype=F64)
                r[0], r[3], r[5] = s1, s2, s3
                rows.append(r)
    C = torch.stack(rows).expand(2, -1, -1)
    lb = dom.linear_bounds_at(p.elements["s1"], C)
    v = torch.einsum("bmn,sbn->sbm", C, values["s1"].reshape(400, 2, 8))
    assert (v >= lb - TOL).all()
    A, c = dom.input_linear_bounds(p.elements["s1"], C)
    lin = torch.einsum("bmn,sbn->sbm", A, xs) + c
    assert (v >= lin - TOL).all()


def test_bundled_digits_networks(networks_dir):
    data = np.load(networks_dir / "digits_test.npz")
    x = torch.as_tensor(data["images"][:3], dtype=F64)
    for name in ("digits_cnn.onnx", "digits_mlp_2x64.onnx"):
        graph = load_onnx(str(networks_dir / name))
        lo, hi = (x - 0.05).clamp(0, 1), (x + 0.05).clamp(0, 1)
        dom = DeepPolyDomain()
        _check_sound(graph, dom, lo, hi, n_samples=100)
        box = propagate(graph, BoxDomain(), lo, hi)
        l, u = dom.bounds(propagate(graph, dom, lo, hi).output)
        assert (l >= box.output.lower - 1e-12).all() and (u <= box.output.upper + 1e-12).all()
        assert ((u - l).sum() < (box.output.upper - box.output.lower).sum())


def test_registered_as_plugin_and_analysis():
    from absint.analyses import get_analysis
    from absint.registry import available_domains

    assert available_domains()["deeppoly"] is DeepPolyDomain
    graph = mlp(9)
    lo, hi = _boxes(graph.input_shape, 2, 9, width=0.05)
    C = torch.randn(2, 2, 4, dtype=F64)
    res = get_analysis("deeppoly", device="cpu").bound(graph, lo, hi, C, torch.zeros(2, 2, dtype=F64))
    assert res.lower.shape == (2, 2)
