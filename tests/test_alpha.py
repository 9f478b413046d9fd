"""Optimised-slope back-substitution (absint.domains.alpha) and the ``alphapoly`` analysis: sampled soundness."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import absint
from absint.frontends.torch_loader import load_torch
from absint.interpreter import propagate
from absint.refine import run_preset
from absint.domains.alpha import AlphaBounder, AlphaOptions, chain_of
from absint.domains.deeppoly import DeepPolyDomain


def _net(sizes, seed, conv=False):
    torch.manual_seed(seed)
    if conv:
        net = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                                  torch.nn.Linear(3 * 4 * 4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
        return load_torch(net, (1, 6, 6))
    layers = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
    return load_torch(torch.nn.Sequential(*layers[:-1]), (sizes[0],))


def _deeppoly_pre_bounds(g, chain, lo, hi):
    dom = DeepPolyDomain()
    rec = {}

    def hook(node, el):
        if node.name in chain.pre_names:
            a, b = dom.bounds(el)
            rec[node.name] = (a.reshape(-1), b.reshape(-1))
        return el

    out = propagate(g, dom, lo, hi, refine=hook)
    return dom, out.output, [rec[n][0] for n in chain.pre_names], [rec[n][1] for n in chain.pre_names]


@pytest.mark.parametrize("seed,conv", [(0, False), (1, False), (2, True)])
def test_alpha_bounds_contain_samples_and_beat_deeppoly(seed, conv):
    g = _net([5, 16, 16, 16, 3], seed, conv).to("cpu", torch.float64)
    chain = chain_of(g)
    assert chain is not None
    shape = tuple(g.input_shape)
    x0 = torch.rand(1, *shape, dtype=torch.float64)
    lo, hi = x0 - 0.3, x0 + 0.3
    dom, out, plo, phi = _deeppoly_pre_bounds(g, chain, lo, hi)
    C = torch.tensor([[1.0, -1.0, 0.0], [0.0, 1.0, -1.0], [-1.0, 0.0, 1.0]], dtype=torch.float64)
    d = torch.tensor([0.5, 0.0, -0.5], dtype=torch.float64)
    dp_rows = dom.linear_bounds(out, C[None], d[None])[0]
    res = AlphaBounder(chain, AlphaOptions(iters=20, final_iters=40)).run(lo, hi, plo, phi, C, d)
    xs = lo + (hi - lo) * torch.rand(20000, *shape, dtype=torch.float64)
    with torch.no_grad():
        vals = g.forward(xs, all_nodes=True)
    for k, name in enumerate(chain.pre_names):
        v = vals[name].reshape(20000, -1)
        assert torch.all(v >= res.pre_lo[k] - 1e-9) and torch.all(v <= res.pre_hi[k] + 1e-9)
        assert torch.all(res.pre_lo[k] >= plo[k] - 1e-12) and torch.all(res.pre_hi[k] <= phi[k] + 1e-12)
    rows = vals[g.output].reshape(20000, -1) @ C.T + d
    assert torch.all(res.rows <= rows.min(0).values + 1e-9)
    # with DeepPoly's slopes as the start, optimisation never ends looser than DeepPoly by more than its
    # intermediate-concretisation gains; on these nets it is at least as tight on the sum
    assert float(res.rows.sum()) >= float(dp_rows.sum()) - 1e-6


def test_chain_of_rejects_non_chains():
    class Res(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Linear(4, 4), torch.nn.Linear(4, 2)

        def forward(self, x):
            return self.b(torch.relu(self.a(x)) + x)

    assert chain_of(load_torch(Res(), (4,))) is None
    assert chain_of(load_torch(torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Sigmoid(), torch.nn.Linear(4, 2)),
                               (3,))) is None


def test_alphapoly_analysis_sound_and_not_looser_than_deeppoly():
    g = _net([6, 20, 20, 4], 3)
    rng = np.random.default_rng(0)
    lo = torch.as_tensor(rng.uniform(-1, 0, size=(3, 6)))
    hi = lo + 0.8
    C = torch.as_tensor(np.tile(np.array([[1.0, -1.0, 0, 0], [1.0, 0, -1.0, 0], [1.0, 0, 0, -1.0]]), (3, 1, 1)))
    d = torch.zeros(3, 3, dtype=torch.float64)
    a = absint.analyses.get_analysis("alphapoly", device="cpu").bound(g, lo, hi, C, d)
    p = absint.analyses.get_analysis("deeppoly", device="cpu").bound(g, lo, hi, C, d)
    assert np.all(a.lower >= p.lower - 1e-9)
    for b in range(3):
        xs = lo[b] + (hi[b] - lo[b]) * torch.rand(20000, 6, dtype=torch.float64)
        with torch.no_grad():
            rows = g.forward(xs) @ C[b].T
        assert np.all(a.lower[b] <= rows.min(0).values.numpy() + 1e-9)


def test_refinement_give_up_and_early_exit():
    g = _net([4, 12, 12, 12, 3], 7).to("cpu", torch.float64)
    lo, hi = -torch.ones(1, 4, dtype=torch.float64), torch.ones(1, 4, dtype=torch.float64)
    C, d = np.array([[1.0, -1.0, 0.0]]), np.zeros(1)
    base = run_preset(g, lo, hi, C, d, "refinepoly", final_bab_timeout=3.0)
    quit_ = run_preset(g, lo, hi, C, d, "refinepoly", give_up_below=1e9)
    # the cheap passes do not prove this row (bound < 0 < 1e9), so the refinement must be skipped
    assert quit_.rows[0] < 0 and any("give_up_below" in n for n in quit_.notes)
    assert quit_.rows[0] <= base.rows[0] + 1e-9  # skipping refinement can only lose precision
    # shift the property so that it holds after the first tightened layer: the run stops there
    xs = lo + (hi - lo) * torch.rand(20000, 4, dtype=torch.float64)
    with torch.no_grad():
        true_min = float((g.forward(xs) @ torch.as_tensor(C.T)).min())
    d2 = np.array([-(true_min - 0.5 * (true_min - base.rows[0]))])  # between the bound and the truth
    res = run_preset(g, lo, hi, C, d2, "refinepoly", final_bab_timeout=3.0)
    assert res.rows[0] <= true_min + d2[0] + 1e-8
