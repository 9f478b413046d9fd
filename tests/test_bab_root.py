"""The multi-neuron root of ReLU-split branch and bound (``BabOptions.root``, :mod:`absint.bab.root`):
sampled soundness of its bounds, the searches it starts, and its options. No wall clock anywhere:
no deadline (``iters`` steps per layer) and node budgets."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import absint  # noqa: F401  (import order: absint before domains)
from absint.bab import BabOptions
from absint.bab.analysis import BabAnalysis, clause_max
from absint.bab.root import multineuron_root
from absint.domains.krelu.tighten import TightenOptions
from absint.ir import Relu
from absint.specs import Clause, Instance, InputBox, OutputProperty
from absint.testing import random_mlp
from absint.verify import verify_bab
from bab_cases import decide_both_ways, decide_case

FEW = TightenOptions(iters=8, max_iters=8, final_iters=15)


def _region(seed: int, n: int, radius: float) -> InputBox:
    c = np.random.default_rng(seed).normal(size=n)
    return InputBox(c - radius, c + radius)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_root_bounds_hold_on_samples(seed):
    """Every ReLU-input bound and every row bound of the root holds at 20 000 sampled inputs (and at
    the box's corners' neighbourhood: samples are drawn up to the faces)."""
    g = random_mlp(seed, (5, 14, 12, 10, 3), bias_scale=0.2)
    box = _region(seed, 5, 0.7)
    rng = np.random.default_rng(10 + seed)
    C = rng.normal(size=(4, 3))
    d = rng.normal(size=4)
    root = multineuron_root(g, box, C, d, deadline=None, end=None, options=FEW)
    assert root.stats["groups"] > 0  # hull rows were built and used
    x = box.lower + (box.upper - box.lower) * rng.random((20000, 5))
    x[:2000] = np.where(rng.random((2000, 5)) < 0.5, box.lower, box.upper)  # vertices
    with torch.no_grad():
        vals = g.forward(torch.as_tensor(x), all_nodes=True)
    pre_names = [n.inputs[0] for n in g.nodes if isinstance(n, Relu)]
    assert set(root.pre) == set(pre_names)
    for name in pre_names:
        v = vals[name].numpy()
        lo, hi = root.pre[name]
        assert (v >= lo - 1e-12).all() and (v <= hi + 1e-12).all(), name
    y = vals[g.output].numpy()
    assert (y @ C.T + d >= root.rows[None] - 1e-12).all()


def test_root_is_never_looser_than_the_alpha_root():
    """The multi-neuron root's ReLU-input bounds lie inside DeepPoly's and its rows are at least
    DeepPoly's (they start from DeepPoly and only ever tighten)."""
    from absint.domains.linear_bounds.api import graph_bounds

    g = random_mlp(4, (5, 14, 12, 10, 3), bias_scale=0.2)
    box = _region(4, 5, 0.7)
    C = np.array([[1.0, -1.0, 0.0], [0.0, 1.0, -1.0]])
    root = multineuron_root(g, box, C, np.zeros(2), deadline=None, end=None, options=FEW)
    dp = graph_bounds(g, torch.as_tensor(box.lower)[None], torch.as_tensor(box.upper)[None]).preactivations()
    narrower = 0
    for name, (lo, hi) in root.pre.items():
        dlo, dhi = (np.asarray(t, dtype=float).reshape(-1) for t in dp[name])
        assert (lo >= dlo - 1e-9).all() and (hi <= dhi + 1e-9).all()
        narrower += int(((lo > dlo + 1e-6) | (hi < dhi - 1e-6)).sum())
    assert narrower > 0  # it did tighten something


@pytest.mark.parametrize("seed", [0, 3])
def test_bab_with_the_multineuron_root_decides_both_ways(seed):
    ok, _ = decide_both_ways(seed, BabOptions(split="relu", batch_size=16, max_nodes=20_000, attack_every=0,
                                              root="multineuron"))
    assert "root_multineuron" in ok.details


def test_the_alpha_probe_decides_easy_properties_alone():
    """Far from the minimum, the α root (the probe) proves the property: no multi-neuron root, one
    sub-problem bounded."""
    g, box, m, prop = decide_case(1)
    res = verify_bab(g, Instance(box, prop(m - 5.0)), options=BabOptions(split="relu", max_nodes=10, attack_every=0))
    assert res.verified
    assert res.details["bounded"] == 1 and "root_multineuron" not in res.details


def test_a_property_the_multineuron_root_proves_needs_no_split():
    """Between the α root's bound and the multi-neuron root's, the probe leaves the property open and
    the multi-neuron rows prove it: nothing is split (one sub-problem bounded, the probe's)."""
    from absint.bab.analysis import _probe_bounds

    g = random_mlp(1, (2, 16, 16, 2), bias_scale=0.2)
    box = InputBox(-0.5 * np.ones(2), 0.5 * np.ones(2))
    C, d, owner = np.array([[1.0, -1.0]]), np.zeros(1), np.arange(1)
    one = dict(split="relu", attack_every=0, root_probe_nodes=1)  # the probe bounds the root alone
    search, first = BabAnalysis(options=BabOptions(**one))._alpha_probe(g, box, C, d, owner, None)
    assert first.status == "budget"
    alpha_bound = float(search.s.beta.root_rows[0])
    multi_bound = float(multineuron_root(g, box, C, d, deadline=None, end=None, known=_probe_bounds(search)).rows[0])
    assert multi_bound > alpha_bound + 0.1  # y0 − y1 ≥ multi_bound on the box (sound, sampled above)
    t = 0.5 * (alpha_bound + multi_bound)
    prop = OutputProperty((Clause(np.array([[-1.0, 1.0]]), np.array([t])),), 2)  # violation: y0 − y1 ≤ t
    res = verify_bab(g, Instance(box, prop), options=BabOptions(max_nodes=10, **one))
    assert res.verified, res.reason
    assert res.details["bounded"] == 1 and res.details["root_multineuron"]["groups"] >= 0


def test_alpha_root_skips_the_multineuron_stage():
    g, box, m, prop = decide_case(0)
    res = verify_bab(g, Instance(box, prop(m - 0.02)),
                     options=BabOptions(split="relu", max_nodes=20_000, attack_every=0, root="alpha"))
    assert res.verified and "root_multineuron" not in res.details


def test_root_not_used_by_input_splitting():
    an = BabAnalysis(options=BabOptions(split="input"))
    g, box, _, _ = decide_case(0)
    assert not an._wants_multineuron_root(g)
    assert BabAnalysis(options=BabOptions(split="relu"))._wants_multineuron_root(g)
    assert not BabAnalysis(options=BabOptions(split="relu", bounding="domain"))._wants_multineuron_root(g)


def test_clause_max_is_the_best_row_per_clause():
    rows = np.array([-1.0, 2.0, -3.0, -0.5])
    assert clause_max(rows, np.array([0, 0, 1, 1])).tolist() == [2.0, -0.5]


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.5])
def test_root_share_validated(bad):
    with pytest.raises(ValueError, match="root_share"):
        BabOptions(root_share=bad)


@pytest.mark.parametrize("bad", [0, -1, True, 2.5])
def test_root_probe_nodes_validated(bad):
    with pytest.raises(ValueError, match="root_probe_nodes"):
        BabOptions(root_probe_nodes=bad)


def test_root_kind_validated():
    with pytest.raises(ValueError):
        BabOptions(root="lp")


@pytest.mark.parametrize("name", ["conv", "conv_pool", "residual"])
def test_root_sound_and_decisive_on_conv_and_residual_networks(name):
    """The root's bounds hold at sampled inputs of convolutional, max-pooling and residual networks,
    and ``bab`` with it never verifies a property a sample violates."""
    from absint.testing import example_network

    g = example_network(name, 0)
    rng = np.random.default_rng(5)
    c = rng.normal(size=g.input_shape)
    box = InputBox(c - 0.4, c + 0.4)
    C, d = np.array([[1.0, -1.0, 0.0], [0.0, 1.0, -1.0]]), np.zeros(2)
    root = multineuron_root(g, box, C, d, deadline=None, end=None, options=FEW)
    x = box.lower + (box.upper - box.lower) * rng.random((5000, *g.input_shape))
    with torch.no_grad():
        vals = g.forward(torch.as_tensor(x), all_nodes=True)
    for pre, (lo, hi) in root.pre.items():
        v = vals[pre].reshape(len(x), -1).numpy()
        assert (v >= lo - 1e-12).all() and (v <= hi + 1e-12).all(), pre
    y = vals[g.output].reshape(len(x), -1).numpy()
    assert (y @ C.T >= root.rows[None] - 1e-12).all()
    m = float((y[:, 0] - y[:, 1]).min())
    opts = BabOptions(split="relu", max_nodes=300, attack_every=0)

    def prop(t):  # violation: y0 − y1 ≤ t
        return OutputProperty((Clause(np.array([[-1.0, 1.0, 0.0]]), np.array([t])),), 3)

    assert not verify_bab(g, Instance(box, prop(m + 1e-3)), options=opts).verified
    assert verify_bab(g, Instance(box, prop(float(root.rows[0]) - 1.0)), options=opts).verified


@pytest.mark.parametrize("budget", [3, 15, 40])
def test_node_budget_covers_the_probe(budget):
    """``max_nodes`` bounds the sub-problems of the probe and of the search after the root together."""
    g, box, m, prop = decide_case(2)
    res = verify_bab(g, Instance(box, prop(m - 0.02)),
                     options=BabOptions(split="relu", max_nodes=budget, attack_every=0, attack=False))
    assert res.details["bounded"] <= budget and "root_multineuron" in res.details
    assert not res.falsified
