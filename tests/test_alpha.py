"""Jointly optimised slopes (α-CROWN on the engine, absint.domains.linear_bounds.optimize) and the
``alphapoly`` analysis: sampled soundness on random DAGs (residual Add, conv, pooling, sigmoid/tanh),
never looser than DeepPoly."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import absint
from absint.frontends.torch_loader import load_torch
from absint.refine import run_preset
from absint.testing import EXAMPLE_NETWORKS, example_network
from absint.domains.linear_bounds.api import graph_bounds
from absint.domains.linear_bounds.optimize import SlopeOptions


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


def _samples(lo, hi, n, seed):
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(n, *lo.shape[1:], generator=g, dtype=torch.float64)
    corner = torch.rand(n, *lo.shape[1:], generator=g, dtype=torch.float64) < 0.2
    return lo + torch.where(corner, u.round(), u) * (hi - lo)


@pytest.mark.parametrize("name", sorted(EXAMPLE_NETWORKS))
def test_optimised_bounds_contain_samples_and_beat_deeppoly(name):
    g = example_network(name, 3)
    shape = tuple(g.input_shape)
    gen = torch.Generator().manual_seed(0)
    x0 = torch.rand(1, *shape, generator=gen, dtype=torch.float64) * 2 - 1
    lo, hi = x0 - 0.4, x0 + 0.4
    m = int(np.prod(g.output_shape))
    C = torch.randn(1, 4, m, generator=gen, dtype=torch.float64)
    d = torch.randn(1, 4, generator=gen, dtype=torch.float64)
    res = graph_bounds(g, lo, hi, C=C, d=d, alpha=SlopeOptions(iters=8, final_iters=8))
    dp = res.stats["deeppoly_rows"]
    assert (res.rows >= dp).all()
    xs = _samples(lo, hi, 3000, 1)
    with torch.no_grad():
        vals = g.forward(xs, all_nodes=True)
    for node in g.nodes:  # every node's bounds (optimised intermediate ones included) contain the samples
        l, u = res.bounds(node.name)
        v = vals[node.name].reshape(3000, *node.shape)
        assert (v >= l - 1e-9).all() and (v <= u + 1e-9).all(), node.name
    rows = vals[g.output].reshape(3000, -1) @ C[0].T + d[0]
    assert (res.rows[0] <= rows.min(0).values).all()


def test_optimisation_tightens_a_residual_relu_network():
    """On a loose box α-CROWN must gain over DeepPoly (a residual DAG: no chain is needed)."""
    g = example_network("residual", 1)
    lo, hi = -torch.ones(1, 8, dtype=torch.float64), torch.ones(1, 8, dtype=torch.float64)
    C = torch.eye(3, dtype=torch.float64)[None]
    res = graph_bounds(g, lo, hi, C=C, d=torch.zeros(1, 3, dtype=torch.float64),
                       alpha=SlopeOptions(iters=20, final_iters=20))
    assert float((res.rows - res.stats["deeppoly_rows"]).sum()) > 1e-3


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
