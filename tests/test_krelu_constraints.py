"""k-ReLU hull rows in the engine's multiplier slot (absint.domains.krelu.constraints): sampled soundness.

On random MLPs, conv nets and residual DAGs: the hull rows of every ReLU node hold at sampled
``(z, relu z)``, and the engine's bounds with multipliers ``μ`` on those rows — random ones and ones
optimised by a few gradient steps — contain every sampled output. With DeepPoly's own slopes fixed,
optimising ``μ`` alone must raise some bound above DeepPoly's (the slot does something).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from absint.domains.krelu import KReluOptions
from absint.domains.krelu.constraints import relu_constraints, to_layer_constraints
from absint.domains.linear_bounds import NodeParams, Params
from absint.interpreter import propagate
from absint.ir import Relu
from absint.linear import numel
from absint.registry import get_domain
from absint.testing import _Net, random_mlp

OPT = KReluOptions(k=2, s=-1, sparse_n=8, cutoff=0.0)


def _mlp(seed: int):
    return random_mlp(seed, (5, 12, 10, 3)), (5,)


def _cnn(seed: int):
    n = _Net(torch.Generator().manual_seed(seed), (1, 5, 5), "cnn")
    h = n.act(n.conv("x", 2, k=3, stride=1, pad=0), Relu)
    n.dense(n.act(n.dense(n.reshape(h, (numel(n.shapes[h]),)), 8), Relu), 3)
    return n.graph(), (1, 5, 5)


def _residual(seed: int):
    n = _Net(torch.Generator().manual_seed(seed), (4,), "res")
    h = n.act(n.dense("x", 8), Relu)
    r = n.add(n.dense(n.act(n.dense(h, 8), Relu), 8), h)
    n.dense(n.act(r, Relu), 3)
    return n.graph(), (4,)


def _setup(builder, seed: int, eps: float):
    g, shape = builder(seed)
    rng = np.random.default_rng(seed)
    c = rng.normal(size=shape)
    lo, hi = torch.as_tensor(c - eps)[None], torch.as_tensor(c + eps)[None]
    dom = get_domain("deeppoly")()
    prop = propagate(g, dom, lo, hi, keep_all=True)
    return g, dom, prop, lo, hi, rng


def _sample(g, lo, hi, rng, n: int = 3000):
    u = rng.uniform(size=(n, *lo.shape[1:]))
    u = np.where(rng.uniform(size=u.shape) < 0.15, np.round(u), u)
    x = torch.as_tensor(lo.numpy() + u * (hi - lo).numpy())
    return g.forward(x, all_nodes=True)


def _bound(dom, prop, g, params: Params | None, C: torch.Tensor) -> torch.Tensor:
    out = prop.elements[g.output]
    return dom.engine.run_rows(out, C, C.new_zeros(C.shape[0]), None, params=params)


@pytest.mark.parametrize("builder,seed,eps", [(_mlp, 0, 0.6), (_cnn, 1, 0.3), (_residual, 2, 0.5)])
def test_hull_rows_and_multiplier_bounds_hold_at_samples(builder, seed, eps):
    g, dom, prop, lo, hi, rng = _setup(builder, seed, eps)
    values = _sample(g, lo, hi, rng)
    relus = [n for n in g.nodes if isinstance(n, Relu)]
    n_out = int(np.prod(g.output_shape))
    C = torch.cat([torch.eye(n_out), -torch.eye(n_out)]).to(torch.float64)
    R = C.shape[0]
    params, mus = Params(), []
    total = 0
    for r in relus:
        node = prop.elements[r.name]
        rows, cons = relu_constraints(dom.engine, node, OPT)
        if cons is None:
            continue
        total += rows.num_rows
        z = values[r.inputs[0]].reshape(values[r.inputs[0]].shape[0], -1).numpy()
        res = rows.residual(z, np.maximum(z, 0.0))
        assert (res <= 1e-12 * (1.0 + np.abs(rows.rhs)[None] + np.abs(z).max())).all(), float(res.max())
        mu = torch.as_tensor(rng.exponential(0.3, size=(R, cons.num_rows)))
        alpha = torch.as_tensor(rng.uniform(size=(R, node.numel)))
        mus.append((alpha, mu))
        params.set(node, NodeParams(alpha=alpha, mu=(cons, mu)))
    assert total > 0
    y = values[g.output].reshape(-1, n_out)
    Cy = y.to(torch.float64) @ C.T
    # random multipliers and slopes: any μ ≥ 0, α ∈ [0, 1] gives a proved bound
    with torch.no_grad():
        lb = _bound(dom, prop, g, params, C)
    assert torch.isfinite(lb).all()
    assert (Cy >= lb[None] - 1e-9).all()
    # optimised multipliers (and slopes): still below every sample
    leaves = [t.clone().requires_grad_() for pair in mus for t in pair]
    for (node_params, (a, m)) in zip(list(params.nodes.values()), zip(leaves[::2], leaves[1::2])):
        node_params.alpha, node_params.mu = a, (node_params.mu[0], m)
    opt = torch.optim.Adam(leaves, lr=0.05)
    best = torch.full((R,), -math.inf, dtype=torch.float64)
    for _ in range(15):
        val = _bound(dom, prop, g, params, C)
        best = torch.maximum(best, val.detach())
        opt.zero_grad()
        (-val.sum()).backward()
        opt.step()
    assert (Cy >= best[None] - 1e-9).all()


def test_optimised_multipliers_alone_beat_deeppoly():
    """Same slopes as DeepPoly (α = None): only μ moves, and some bound must rise."""
    g, dom, prop, lo, hi, rng = _setup(_mlp, 3, 0.6)
    C = torch.eye(3, dtype=torch.float64)
    with torch.no_grad():
        base = _bound(dom, prop, g, None, C)
    params, leaves = Params(), []
    for r in (n for n in g.nodes if isinstance(n, Relu)):
        node = prop.elements[r.name]
        rows, cons = relu_constraints(dom.engine, node, OPT)
        if cons is None:
            continue
        mu = torch.zeros(3, cons.num_rows, dtype=torch.float64, requires_grad=True)
        leaves.append(mu)
        params.set(node, NodeParams(mu=(cons, mu)))
    assert leaves
    with torch.no_grad():  # μ = 0: exactly DeepPoly's relaxation (up to the error terms)
        zero = _bound(dom, prop, g, params, C)
    np.testing.assert_allclose(zero.numpy(), base.numpy(), atol=1e-6)
    opt = torch.optim.Adam(leaves, lr=0.05)
    best = zero.clone()
    for _ in range(20):
        val = _bound(dom, prop, g, params, C)
        best = torch.maximum(best, val.detach())
        opt.zero_grad()
        (-val.sum()).backward()
        opt.step()
    assert float((best - base).max()) > 1e-3
    values = _sample(g, lo, hi, rng)
    assert (values[g.output].reshape(-1, 3).to(torch.float64) >= best[None] - 1e-9).all()


def test_to_layer_constraints_matches_rows():
    g, dom, prop, lo, hi, rng = _setup(_mlp, 4, 0.6)
    node = prop.elements[next(n.name for n in g.nodes if isinstance(n, Relu))]
    rows, cons = relu_constraints(dom.engine, node, OPT)
    assert cons is not None and cons.num_rows == rows.num_rows
    z = rng.normal(size=(5, rows.numel))
    y = np.maximum(z, 0)
    ours = rows.residual(z, y)
    theirs = (torch.as_tensor(z) @ cons.A_pre.T + torch.as_tensor(y) @ cons.A_post.T - cons.b).numpy()
    np.testing.assert_allclose(ours, theirs, atol=1e-12)
    assert to_layer_constraints(rows).A_pre.shape == (rows.num_rows, rows.numel)


def test_grouped_constraints_equal_dense_ones():
    """The grouped slot filler computes the same three terms as the dense one, and a bound at least
    as safe (its error term covers the same rounding)."""
    from absint.domains.krelu.constraints import GroupedConstraints
    from absint.domains.linear_bounds.rows import RowLayout

    g, dom, prop, lo, hi, rng = _setup(_mlp, 5, 0.6)
    node = prop.elements[next(n.name for n in g.nodes if isinstance(n, Relu))]
    rows, dense = relu_constraints(dom.engine, node, KReluOptions(k=3, s=-2, sparse_n=6, cutoff=0.0))
    grouped = GroupedConstraints(rows)
    assert grouped.num_rows >= rows.num_rows
    # μ over the dense rows, scattered into the grouped (padded) layout
    mu = torch.as_tensor(rng.exponential(size=(4, rows.num_rows)))
    mu_g = grouped.to_grouped(mu)
    np.testing.assert_array_equal(grouped.from_grouped(mu_g).numpy(), mu.numpy())
    lay = RowLayout.single()
    for a, b in ((dense.post_term(mu, lay), grouped.post_term(mu_g, lay)),
                 (dense.pre_term(mu, lay), grouped.pre_term(mu_g, lay)),
                 (dense.const_term(mu, lay), grouped.const_term(mu_g, lay))):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-12, atol=1e-12)
    e_d = dense.err_term(mu, lay, dom.engine, node, 64)
    e_g = grouped.err_term(mu_g, lay, dom.engine, node, 64)
    assert (e_g >= 0.5 * e_d).all() and (e_g > 0).all()
    # negative multipliers are clamped
    np.testing.assert_allclose(grouped.post_term(-mu_g, lay).numpy(), 0.0)


def _random_rows(seed: int, n: int = 40, k: int = 3) -> "HullRows":
    """Random rows over ``n`` neurons: groups of 1..k neurons with 1..30 rows each (very unequal
    counts), two groups without rows, and the rows in a shuffled order."""
    from absint.domains.krelu.layer import HullRows

    rng = np.random.default_rng(seed)
    G = 25
    groups = [tuple(sorted(rng.choice(n, size=int(rng.integers(1, k + 1)), replace=False).tolist()))
              for _ in range(G)]
    counts = rng.integers(1, 31, size=G)
    counts[[3, 17]] = 0
    group_of = np.repeat(np.arange(G), counts)
    m = group_of.size
    index = np.zeros((m, k), dtype=np.int64)
    pre, post = rng.normal(size=(m, k)), rng.normal(size=(m, k))
    for i, g in enumerate(group_of):
        w = len(groups[g])
        index[i, :w] = groups[g]
        index[i, w:] = groups[g][0]
        pre[i, w:] = post[i, w:] = 0.0
    perm = rng.permutation(m)
    return HullRows(index[perm], pre[perm], post[perm], rng.normal(size=m)[perm], n, tuple(groups), group_of[perm])


class _Mag:
    """The two methods of an engine and a node that ``err_term`` reads."""

    def __init__(self, mag: torch.Tensor, parent: "_Mag | None" = None):
        self.mag, self.parents = mag, [parent]

    def magnitude(self, node: "_Mag", cols) -> torch.Tensor:
        return node.mag


@pytest.mark.parametrize("seed,max_buckets", [(0, 1), (1, 3), (2, 8)])
def test_bucketed_constraints_equal_dense_ones(seed, max_buckets):
    """Groups of unequal row counts, bucketed: the three terms equal the dense ones (μ A computed
    densely) up to rounding, for any μ (negative entries count as 0), and so do the gradients; the
    layout round-trips; the error term covers the dense one's."""
    from absint.domains.krelu.constraints import GroupedConstraints
    from absint.domains.linear_bounds.rows import RowLayout

    rows = _random_rows(seed)
    dense = to_layer_constraints(rows)
    grouped = GroupedConstraints(rows, max_buckets=max_buckets)
    counts = np.bincount(rows.group_of)
    assert grouped.G == int((counts > 0).sum()) and len(grouped.buckets) <= max_buckets
    assert rows.num_rows <= grouped.num_rows <= grouped.G * int(counts.max())
    rng = np.random.default_rng(seed)
    mu = torch.as_tensor(rng.exponential(size=(6, rows.num_rows)) * (rng.uniform(size=(6, rows.num_rows)) < 0.7))
    mu[0, :5] = -1.0  # clamped to 0
    mu_g = grouped.to_grouped(mu)
    np.testing.assert_array_equal(grouped.from_grouped(mu_g).numpy(), mu.numpy())
    assert int((mu_g != 0).sum()) == int((mu != 0).sum())  # padding columns hold zeros
    lay = RowLayout.single()
    mu_d, mu_g = mu.clone().requires_grad_(), mu_g.clone().requires_grad_()
    w = torch.as_tensor(rng.normal(size=(3, 6, rows.numel)))
    outs = []
    for cons, m in ((dense, mu_d), (grouped, mu_g)):
        terms = (cons.post_term(m, lay), cons.pre_term(m, lay), cons.const_term(m, lay))
        ((terms[0] * w[0]).sum() + (terms[1] * w[1]).sum() + (terms[2] * w[2, :, 0]).sum()).backward()
        outs.append(terms)
    for a, b in zip(*outs):
        scale = float(a.detach().abs().max())
        np.testing.assert_allclose(b.detach().numpy(), a.detach().numpy(), rtol=0, atol=1e-12 * scale)
    np.testing.assert_allclose(grouped.from_grouped(mu_g.grad).numpy(), mu_d.grad.numpy(), rtol=1e-12, atol=1e-12)
    pad = torch.ones(grouped.num_rows, dtype=torch.bool)
    pad[grouped.position] = False
    assert (mu_g.grad[:, pad] == 0).all()
    z = _Mag(torch.as_tensor(rng.uniform(size=(1, rows.numel))))
    y = _Mag(torch.as_tensor(rng.uniform(size=(1, rows.numel))), z)
    e_d = dense.err_term(mu, lay, y, y, 16)
    e_g = grouped.err_term(mu_g.detach(), lay, y, y, 16)
    assert (e_g >= e_d).all() and (e_g > 0).all()


def test_grouped_terms_follow_the_multipliers():
    """The terms are memoised per tensor version of μ: an in-place change, or a pass with gradients
    after one without (branch and bound starts so), gives the new values and gradients."""
    from absint.domains.krelu.constraints import GroupedConstraints
    from absint.domains.linear_bounds.rows import RowLayout

    rows = _random_rows(3)
    grouped, lay = GroupedConstraints(rows), RowLayout.single()
    mu = grouped.to_grouped(torch.as_tensor(np.random.default_rng(3).exponential(size=(2, rows.num_rows))))
    mu.requires_grad_()
    with torch.no_grad():
        first = grouped.post_term(mu, lay).clone()
    val = grouped.post_term(mu, lay).sum() + grouped.pre_term(mu, lay).sum() + grouped.const_term(mu, lay).sum()
    val.backward()
    assert mu.grad is not None and bool((mu.grad != 0).any())
    np.testing.assert_array_equal(grouped.post_term(mu, lay).detach().numpy(), first.numpy())
    with torch.no_grad():
        pre = grouped.pre_term(mu, lay).clone()
        mu.mul_(2.0)
        np.testing.assert_allclose(grouped.pre_term(mu, lay).numpy(), 2 * pre.numpy(), rtol=1e-12)
        np.testing.assert_allclose(grouped.post_term(mu, lay).numpy(), 2 * first.numpy(), rtol=1e-12)


def test_bucket_groups_is_optimal():
    """The bucket split minimises the padded width plus the per-bucket cost (brute force, small cases)."""
    from itertools import combinations

    from absint.domains.krelu.constraints import bucket_groups

    def cost_of(c, split, cost):
        return sum((e - s) * c[e - 1] for s, e in split) + cost * len(split)

    rng = np.random.default_rng(0)
    for _ in range(200):
        c = np.sort(rng.integers(1, 12, size=int(rng.integers(1, 9))))
        B, cost = int(rng.integers(1, 5)), int(rng.integers(0, 10))
        split = bucket_groups(c, B, cost)
        assert split[0][0] == 0 and split[-1][1] == len(c) and len(split) <= B
        assert all(s < e for s, e in split) and all(a[1] == b[0] for a, b in zip(split, split[1:]))
        brute = min(cost_of(c, list(zip((0,) + cuts, cuts + (len(c),))), cost)
                    for nb in range(1, min(B, len(c)) + 1) for cuts in combinations(range(1, len(c)), nb - 1))
        assert cost_of(c, split, cost) == brute


def test_active_rows_keep_the_bound():
    """The rows the root's multipliers use, with those multipliers, give the same bound (so branch and
    bound can carry only them); selecting rows renumbers the groups consistently."""
    from absint.domains.krelu.constraints import GroupedConstraints
    from absint.domains.krelu.tighten import MultiNeuronBounds, TightenOptions
    from absint.domains.linear_bounds import Engine, GraphView

    g = random_mlp(6, (5, 12, 10, 3))
    rng = np.random.default_rng(6)
    c = rng.normal(size=5)
    eng = Engine()
    view = GraphView.of(g, 1)
    eng.store(view.input, 2, torch.as_tensor(c - 0.6)[None], torch.as_tensor(c + 0.6)[None])
    mb = MultiNeuronBounds(view, eng, OPT, TightenOptions(iters=10, final_iters=20))
    mb.run()
    C = torch.eye(3, dtype=torch.float64)
    mb.bound_rows(view.output, C, stop_above=None)
    active = mb.active_rows()
    assert active
    params, full = Params(), Params()
    for L in mb.layers:
        r = L.relu
        if r.name not in active:
            continue
        rows, mu = active[r.name]
        assert rows.num_rows == mu.shape[1] and len(rows.groups) == int(rows.group_of.max()) + 1
        cons = GroupedConstraints(rows)
        params.set(r, NodeParams(mu=(cons, cons.to_grouped(torch.as_tensor(mu)))))
        # the same multipliers on the layer's full rows (zeros on the others)
        keep = np.isin(np.arange(L.rows.num_rows), np.flatnonzero(_active_mask(L.rows, rows)))
        mu_all = torch.zeros(3, L.rows.num_rows, dtype=torch.float64)
        mu_all[:, torch.as_tensor(keep)] = torch.as_tensor(mu)
        full.set(r, NodeParams(mu=(L.constraints, L.constraints.to_grouped(mu_all))))
    with torch.no_grad():
        only = eng.run_rows(view.output, C, C.new_zeros(3), None, params=params)
        everything = eng.run_rows(view.output, C, C.new_zeros(3), None, params=full)
    np.testing.assert_allclose(only.numpy(), everything.numpy(), atol=1e-6)


def _active_mask(all_rows, sub) -> np.ndarray:
    """Which rows of ``all_rows`` are in ``sub`` (rows are unique: index, coefficients and constant)."""
    key = lambda h, i: (tuple(h.index[i]), tuple(h.pre[i]), tuple(h.post[i]), h.rhs[i])  # noqa: E731
    wanted = {key(sub, i) for i in range(sub.num_rows)}
    return np.array([key(all_rows, i) in wanted for i in range(all_rows.num_rows)])


@pytest.mark.parametrize("builder,seed,eps", [(_mlp, 7, 0.8), (_residual, 8, 0.7)])
def test_branch_and_bound_with_hull_rows_is_sound(builder, seed, eps):
    """ReLU-split BaB with the root's hull rows and multipliers in every sub-problem: its proved row
    bounds never exceed a sampled value, and its root bound is at least the multineuron bound."""
    from absint.bab import relu_branch_and_bound
    from absint.bab.options import BabOptions
    from absint.domains.krelu.tighten import MultiNeuronBounds, TightenOptions
    from absint.domains.linear_bounds import Engine, GraphView
    from absint.specs import InputBox

    g, shape = builder(seed)
    rng = np.random.default_rng(seed)
    c = rng.normal(size=shape)
    lo, hi = c - eps, c + eps
    eng = Engine()
    view = GraphView.of(g, 1)
    eng.store(view.input, 2, torch.as_tensor(lo)[None], torch.as_tensor(hi)[None])
    mb = MultiNeuronBounds(view, eng, OPT, TightenOptions(iters=10, final_iters=30))
    mb.run()
    n_out = int(np.prod(g.output_shape))
    C = np.zeros((1, n_out))
    C[0, 0], C[0, 1] = 1.0, -1.0
    values = _sample(g, torch.as_tensor(lo)[None], torch.as_tensor(hi)[None], rng)[g.output].reshape(-1, n_out)
    Cy = values.numpy() @ C.T
    r0 = mb.bound_rows(view.output, torch.as_tensor(C), stop_above=None).numpy()
    d = -(r0 + 0.3 * (Cy.min(0) - r0))  # the root bound misses by 30 % of its gap to the sampled minimum
    root = r0 + d
    cons = {name: (rows, mu) for name, (rows, mu) in mb.active_rows().items()}
    assert cons
    res = relu_branch_and_bound(g, InputBox(lo, hi), C, d, root_bounds=mb.preactivation_bounds(),
                                constraints=cons, options=BabOptions(max_nodes=600, attack=False, batch_size=16))
    assert (root < 0).all() and res.status == "verified"  # the rows alone do not prove it; BaB with them does
    assert (res.row_min <= (Cy + d).min(0) + 1e-8).all()
    assert (res.row_min >= root - 1e-6).all()


def _tightened_mlp(seed: int, opts):
    from absint.domains.krelu.tighten import MultiNeuronBounds
    from absint.domains.linear_bounds import Engine, GraphView

    g = random_mlp(seed, (5, 12, 10, 8, 3))
    eng = Engine()
    view = GraphView.of(g, 1)
    c = np.random.default_rng(seed).normal(size=5)
    lo, hi = torch.as_tensor(c - 0.6)[None], torch.as_tensor(c + 0.6)[None]
    eng.store(view.input, 2, lo, hi)
    return g, MultiNeuronBounds(view, eng, OPT, opts), lo, hi


def test_deadline_is_shared_by_every_layer(monkeypatch):
    """Under a deadline, each ReLU layer is tightened with an equal part of the time left (the clock
    is faked: no wall-clock assertion), so a deadline never leaves the deeper layers untightened."""
    from absint.domains.krelu import tighten as T
    from absint.domains.krelu.tighten import TightenOptions

    _, mb, _, _ = _tightened_mlp(3, TightenOptions(iters=2, final_iters=2))
    assert len(mb.layers) == 3
    clock = {"t": 100.0}
    monkeypatch.setattr(T.time, "perf_counter", lambda: clock["t"])
    seen: list[tuple[str, float | None]] = []
    monkeypatch.setattr(mb, "_tighten", lambda pre, dl, more=None: seen.append((pre.name, dl)))
    assert mb._layer_deadline(0, 130.0) == pytest.approx(110.0)
    assert mb._layer_deadline(2, 130.0) == pytest.approx(130.0)
    assert mb._layer_deadline(1, None) is None
    st = mb.run(deadline=130.0)
    # the first ReLU's input is an affine map of the box (exact already): only the two later ones are
    # tightened, each given half of the 30 s left (the first layer's third passes on)
    assert [dl for _, dl in seen] == [pytest.approx(115.0), pytest.approx(130.0)]
    assert st.complete and len(st.unstable_after) == 3


def test_extra_steps_only_when_the_time_left_covers_the_later_layers(monkeypatch):
    """``max_iters``: a layer runs past ``iters`` steps only while the time left covers the later
    layers' projected cost (fake clock: no wall-clock assertion); never without a deadline."""
    from absint.domains.krelu import tighten as T
    from absint.domains.krelu.tighten import TightenOptions

    _, mb, _, _ = _tightened_mlp(3, TightenOptions(iters=10, max_iters=30, final_iters=2, reserve_factor=1.0))
    assert mb._more_steps(1, 0.0, None) is None
    w = mb._cost_weights()
    assert len(w) == 3 and w[1] > 0
    later = sum(w[2:]) / w[1]
    clock = {"t": 1.0}
    monkeypatch.setattr(T.time, "perf_counter", lambda: clock["t"])
    mb.stats.rows_s, mb.stats.tighten_s = 0.5, 0.0  # rows took half as long as this layer so far
    # 10 steps in 1 s: the later layers' reserve is 0.1 s x 10 steps x (later + 1 for the target
    # rows) x (1 + 0.5 / 1 for their hull rows)
    reserve = 0.1 * 10 * (later + 1.0) * 1.5
    assert mb._more_steps(1, 0.0, 1.0 + 0.1 + reserve + 1e-6)(10)
    assert not mb._more_steps(1, 0.0, 1.0 + 0.1 + reserve - 1e-6)(10)
    # reserve_factor scales the projection
    _, mb3, _, _ = _tightened_mlp(3, TightenOptions(iters=10, max_iters=30, final_iters=2, reserve_factor=2.0))
    mb3.stats.rows_s, mb3.stats.tighten_s = 0.5, 0.0
    assert mb3._more_steps(1, 0.0, 1.0 + 0.1 + 2 * reserve + 1e-6)(10)
    assert not mb3._more_steps(1, 0.0, 1.0 + 0.1 + 2 * reserve - 1e-6)(10)
    # max_iters <= iters: never more steps
    _, mb2, _, _ = _tightened_mlp(3, TightenOptions(iters=10, max_iters=10, final_iters=2))
    assert mb2._more_steps(1, 0.0, 1e9) is None


def test_extra_steps_are_taken_with_time_to_spare_and_stay_sound():
    """With a deadline far away every tightened layer takes ``max_iters`` steps (without one,
    ``iters``), and the bounds still hold at sampled inputs."""
    import time as _time

    from absint.domains.krelu.tighten import TightenOptions

    g, short, lo, hi = _tightened_mlp(4, TightenOptions(iters=4, max_iters=12, final_iters=2))
    assert short.run().steps == [4, 4]
    g, long, lo, hi = _tightened_mlp(4, TightenOptions(iters=4, max_iters=12, final_iters=2))
    st = long.run(deadline=_time.perf_counter() + 3600.0)
    assert st.steps == [12, 12] and st.complete
    values = _sample(g, lo, hi, np.random.default_rng(4))
    for name, (plo, phi) in long.preactivation_bounds().items():
        v = values[name].reshape(values[name].shape[0], -1).numpy()
        assert (v >= plo - 1e-9).all() and (v <= phi + 1e-9).all()


def test_retiring_settled_rows_leaves_the_other_rows_unchanged():
    """Rows are independent problems (each has its own α and μ), so retiring the settled ones from
    the optimisation must give the rows kept exactly the bounds of a run without retiring, and the
    retired rows at least the bound they had when retired; the μ of every row stays available."""
    from absint.domains.krelu.tighten import MultiNeuronBounds, TightenOptions
    from absint.domains.linear_bounds import Engine, GraphView

    g = random_mlp(11, (6, 14, 12, 10, 4))
    c = np.random.default_rng(11).normal(size=6)
    runs = []
    for retire in (False, True):
        eng = Engine()
        view = GraphView.of(g, 1)
        eng.store(view.input, 2, torch.as_tensor(c - 0.7)[None], torch.as_tensor(c + 0.7)[None])
        mb = MultiNeuronBounds(view, eng, OPT, TightenOptions(iters=8, final_iters=25))
        mb.run()
        C = torch.as_tensor(np.random.default_rng(12).normal(size=(10, 4)))
        calls = []

        def settled(best, calls=calls):
            calls.append(1)
            out = torch.zeros_like(best, dtype=torch.bool)
            if len(calls) >= 3:  # from the third step on, the first 4 rows are "settled"
                out[:4] = True
            return out

        best = mb._optimise(view.output, C, 25, None, settled=settled if retire else None)
        runs.append((best, mb._last[1]))
    (plain, mu_plain), (retired, mu_retired) = runs
    np.testing.assert_allclose(retired[4:].numpy(), plain[4:].numpy(), rtol=1e-12, atol=1e-12)
    assert (retired[:4] <= plain[:4] + 1e-12).all() and torch.isfinite(retired).all()
    for a, b in zip(mu_plain, mu_retired):
        if a is not None:
            assert a.shape == b.shape
            np.testing.assert_allclose(b[4:].numpy(), a[4:].detach().numpy(), rtol=1e-12, atol=1e-12)


def test_adam_moments_carry_over_to_a_part_of_a_parameter():
    """``keep_rows``: the rows kept take exactly the steps they take in the full optimiser."""
    from absint.optim import Adam

    p = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], requires_grad=True)
    adam = Adam([{"params": [p], "lr": 0.1}])
    for _ in range(3):
        adam.zero_grad()
        (p ** 2).sum().backward()
        adam.step()
    part, new = adam.keep_rows(torch.tensor([0, 2]))
    q = new[id(p)]
    assert q.is_leaf and q.requires_grad and part.param_groups[0]["lr"] == 0.1
    for opt, t in ((adam, p), (part, q)):
        opt.zero_grad()
        (t ** 2).sum().backward()
        opt.step()
    np.testing.assert_array_equal(q.detach().numpy(), p.detach()[[0, 2]].numpy())


def test_rows_deadline_gives_the_rows_a_tenth_of_the_time_left_within_the_limit():
    from absint.domains.krelu.tighten import rows_deadline

    assert rows_deadline(None, None, 5.0) is None and rows_deadline(8.0, None, 5.0) is None
    assert rows_deadline(None, 30.0, 10.0) == 30.0
    assert rows_deadline(12.0, 30.0, 10.0) == pytest.approx(12.0)  # the share ends later than a tenth
    assert rows_deadline(10.5, 30.0, 10.0) == pytest.approx(12.0)  # a tenth of the 20 s left
    assert rows_deadline(40.0, 30.0, 10.0) == 30.0  # never beyond the limit
