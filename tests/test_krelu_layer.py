"""Multi-neuron rows of a whole ReLU layer (absint.domains.krelu.layer): sampled soundness.

The rows come from octahedral bounds that DeepPoly proves on a random network's hidden layer; every
sampled input's ``(z, relu z)`` must satisfy them (only float noise of the check is tolerated).
"""
from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from absint.domains.krelu import HullRows, KReluOptions, layer_hull_rows, octahedral_directions, octahedral_rows
from absint.interpreter import propagate
from absint.registry import get_domain
from absint.testing import random_mlp


def _layer(seed: int, sizes=(5, 14, 12, 3), eps: float = 0.6):
    """A random MLP, an input box, DeepPoly's element and bounds of the second pre-activation layer."""
    g = random_mlp(seed, sizes)
    rng = np.random.default_rng(seed)
    c = rng.normal(size=sizes[0])
    lo, hi = torch.as_tensor(c - eps)[None], torch.as_tensor(c + eps)[None]
    dom = get_domain("deeppoly")()
    prop = propagate(g, dom, lo, hi, keep_all=True)
    el = prop.elements["fc1"]
    l, u = dom.bounds(el)

    def upper_bounds(C: np.ndarray) -> np.ndarray:
        Ct = torch.as_tensor(-C)[None]
        return -dom.linear_bounds(el, Ct)[0].numpy()

    return g, lo, hi, l.reshape(-1).numpy(), u.reshape(-1).numpy(), upper_bounds


def _forward_to(g, x: np.ndarray, name: str) -> np.ndarray:
    return g.forward(torch.as_tensor(x), all_nodes=True)[name].numpy()


def test_octahedral_rows_place_directions():
    D = octahedral_directions(2)
    groups = np.array([[1, 4], [0, 2]])
    C = octahedral_rows(groups, D, 5)
    assert C.shape == (2 * 8, 5)
    np.testing.assert_array_equal(C[:8][:, [1, 4]], D)
    np.testing.assert_array_equal(C[8:][:, [0, 2]], D)
    assert not C[:8][:, [0, 2, 3]].any()


@pytest.mark.parametrize("k,hull,seed", [(2, "auto", 0), (3, "fast", 1), (3, "auto", 2)])
def test_layer_rows_hold_at_sampled_points(k, hull, seed):
    g, lo, hi, l, u, ub = _layer(seed)
    rows = layer_hull_rows(l, u, ub, KReluOptions(k=k, s=-1 if k == 2 else -2, sparse_n=6, cutoff=0.0, hull=hull,
                                                  max_groups=6))
    assert rows.num_rows > 0 and rows.stats["groups"] > 0
    assert all(len(gr) == k for gr in rows.groups)
    rng = np.random.default_rng(seed)
    x = lo.numpy() + rng.uniform(size=(4000, lo.shape[1])) * (hi - lo).numpy()
    x = np.where(rng.uniform(size=x.shape) < 0.15, np.where(x > (lo + hi).numpy() / 2, hi.numpy(), lo.numpy()), x)
    z = _forward_to(g, x, "fc1")
    assert (z >= l - 1e-9).all() and (z <= u + 1e-9).all()
    res = rows.residual(z, np.maximum(z, 0.0))
    scale = 1.0 + np.abs(rows.rhs)[None] + np.abs(z).max()
    assert (res <= 1e-12 * scale).all(), float(res.max())
    # the dense form is the same rows
    A_pre, A_post, b = rows.dense()
    np.testing.assert_allclose(z @ A_pre.T + np.maximum(z, 0) @ A_post.T - b, res, atol=1e-12)


def test_rows_are_multi_neuron_and_cut_the_triangle_product():
    """No row is a single-neuron constraint, and the rows cut a point the triangles allow."""
    g, lo, hi, l, u, ub = _layer(3)
    rows = layer_hull_rows(l, u, ub, KReluOptions(k=2, s=-1, sparse_n=8, cutoff=0.0))
    involved = ((rows.pre != 0) | (rows.post != 0))
    distinct = [len(set(rows.index[i][involved[i]].tolist())) for i in range(rows.num_rows)]
    assert min(distinct) >= 2
    # the triangle's top corner z = 0, y = −u·l/(u − l) on every neuron at once
    z = np.zeros(rows.numel)
    un = (l < 0) & (u > 0)
    y = np.where(un, -u * l / np.where(un, u - l, 1.0), np.maximum(z, 0))
    assert rows.residual(z[None], y[None]).max() > 1e-6


def test_deadline_and_max_groups_only_drop_rows():
    g, lo, hi, l, u, ub = _layer(4)
    opt = KReluOptions(k=2, s=-1, sparse_n=8, cutoff=0.0)
    full = layer_hull_rows(l, u, ub, opt)
    late = layer_hull_rows(l, u, ub, opt, deadline=time.perf_counter() - 1.0)
    assert late.num_rows == 0 and isinstance(late, HullRows)
    capped = layer_hull_rows(l, u, ub, KReluOptions(k=2, s=-1, sparse_n=8, cutoff=0.0, max_groups=2))
    assert len(capped.groups) <= 2 and capped.groups == full.groups[: len(capped.groups)]


def test_options_reject_bad_values():
    with pytest.raises(ValueError):
        KReluOptions(hull="approx")
    with pytest.raises(ValueError):
        KReluOptions(max_groups=-1)
