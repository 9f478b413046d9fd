"""Counterexample candidates of the ReLU-split search (absint.bab): every bounded sub-problem
offers the input vertex minimising its lower bound's linear function (the input coefficients
``A`` recorded by the β-CROWN backward pass), checked on the concrete network.

Regression (found on VNN-COMP 2021 mnistfc): networks whose input is reshaped first (ONNX
``Flatten``) start with a box-like node that has a parent; the backward pass concretised there and
never reached the input, so ``A`` stayed zero, every candidate was the same corner, and bab no
longer falsified instances the search used to falsify (prop_0_0.05 on 256x2)."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

import absint  # noqa: F401  (import order: absint before domains)
from absint.bab import BabOptions, relu_branch_and_bound
from absint.bab.beta import BetaBounder, BetaOptions
from absint.ir import Graph, Input, Reshape
from absint.specs import InputBox
from absint.testing import random_mlp

F64 = torch.float64


def with_reshape(g: Graph) -> Graph:
    """``g`` reading a ``[n, 1]`` input through a Reshape to ``[n]`` (as ONNX Flatten)."""
    inp = g.nodes[0]
    n = int(np.prod(inp.shape))
    nodes = (Input(inp.name + "_2d", (), (n, 1)), Reshape(inp.name, (inp.name + "_2d",), (n,))) + tuple(g.nodes[1:])
    return Graph(nodes, g.output)


def test_input_coefficients_through_reshape():
    """The recorded input coefficients are those of the flat network (not zero) for every row."""
    flat = random_mlp(3, (4, 10, 10, 3), bias_scale=0.2)
    shaped = with_reshape(flat)
    lo, hi = -torch.ones(4, dtype=F64), torch.ones(4, dtype=F64)
    C = torch.tensor([[1.0, -1.0, 0.0], [1.0, 0.0, -1.0]], dtype=F64)
    d = torch.tensor([0.1, -0.2], dtype=F64)
    opts = BetaOptions(iters=0, root_iters=0, layer_iters=0)
    outs = []
    for g in (flat, shaped):
        bb = BetaBounder(g, lo, hi, C, d, opts)
        outs.append(bb.bound(torch.zeros(1, sum(bb.sizes), dtype=torch.int8)))
    a_flat, a_shaped = outs[0].A, outs[1].A
    assert bool((a_shaped.abs().sum(-1) > 0).all())
    assert torch.allclose(a_flat, a_shaped, rtol=1e-9, atol=1e-12)
    assert torch.allclose(outs[0].rows, outs[1].rows, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("seed", [8, 9, 11])
def test_search_candidates_falsify_within_node_budget(seed):
    """Without PGD rounds (``attack_every=0``) the search's own candidates find a counterexample at a
    box vertex, on a network with a reshaped input, within a node budget (7-15 sub-problems when
    measured; with ``A`` zero the search ran out of 2000)."""
    g = with_reshape(random_mlp(seed, (4, 16, 16, 2), bias_scale=0.2))
    box = InputBox(-np.ones((4, 1)), np.ones((4, 1)))
    verts = np.array(list(itertools.product([-1.0, 1.0], repeat=4)))[:, :, None]
    with torch.no_grad():
        y = g.forward(torch.as_tensor(verts)).numpy()
    diff = y[:, 1] - y[:, 0]
    best = int(diff.argmax())
    # violation: y1 − y0 − t ≥ 0, only just reachable at the best vertex
    C = np.array([[1.0, -1.0]])  # row y0 − y1 + t > 0 proves the property
    t = float(diff[best]) - 1e-3
    opts = BabOptions(batch_size=8, max_nodes=300, attack_every=0)
    res = relu_branch_and_bound(g, box, C, np.array([t]), options=opts)
    assert res.status == "falsified", (res.status, res.stats)
    assert res.stats.get("found_by") == "candidate"
    with torch.no_grad():
        yc = g.forward(torch.as_tensor(res.counterexample[None])).numpy()[0]
    assert yc[0] - yc[1] + t <= 0
