"""Regressions of issue 15, items 2–4 (found by differential fuzzing)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import absint
from absint.analyses import get_analysis
from absint.bab import BabAnalysis
from absint.ir import Affine, Graph, Input, MaxPool2d, Relu, Reshape, Sigmoid, Tanh
from absint.linear import ConvOperator, DenseOperator
from absint.specs import Clause, InputBox, Instance, OutputProperty
from absint.testing import random_mlp


def _sigmoid_net(seed: int = 0) -> Graph:
    """Linear(12, 4) → Sigmoid → Linear(4, 2): no ReLU anywhere."""
    g = torch.Generator().manual_seed(seed)
    w1 = torch.randn(4, 12, generator=g, dtype=torch.float64)
    w2 = torch.randn(2, 4, generator=g, dtype=torch.float64)
    return Graph((Input("x", (), (12,)), Affine("fc1", ("x",), (4,), DenseOperator(w1), None),
                  Sigmoid("s", ("fc1",), (4,)), Affine("fc2", ("s",), (2,), DenseOperator(w2), None)), "fc2")


def _instance(graph: Graph, eps: float, seed: int = 0, holds: bool = True) -> Instance:
    x = np.random.default_rng(seed).uniform(0.2, 0.8, graph.input_shape)
    y = graph.forward(torch.as_tensor(x[None])).reshape(-1).numpy()
    hi, lo = (0, 1) if y[0] > y[1] else (1, 0)
    if not holds:
        hi, lo = lo, hi
    # violation: y_lo − y_hi ≥ 0
    A = np.zeros((1, 2))
    A[0, lo], A[0, hi] = 1.0, -1.0
    return Instance(InputBox(x - eps, x + eps), OutputProperty((Clause(A, np.zeros(1)),), 2))


@pytest.mark.parametrize("net", [_sigmoid_net(0), random_mlp(3, (12, 8, 8, 2), act=Tanh)], ids=["sigmoid", "tanh-mlp"])
def test_bab_on_networks_without_relu_picks_input_splitting(net):
    inst = _instance(net, 1e-3)
    res = absint.verify(net, inst, analysis="bab", timeout=30)
    assert res.verified, res.reason  # it used to crash in torch.cat (ReLU splitting chosen)
    an = get_analysis("bab", device="cpu")
    assert an.split_mode(net) == "input"
    res = absint.verify(net, _instance(net, 1e-3, holds=False), analysis="bab", timeout=30)
    assert res.falsified


def test_bab_relu_splitting_without_relu_is_unknown_with_the_reason():
    net = _sigmoid_net(1)
    res = absint.verify(net, _instance(net, 1e-3, seed=1), analysis="bab", split="relu", attack=False, timeout=30)
    assert res.verdict.value == "unknown" and "no ReLU" in res.reason


def _conv_pool_net() -> Graph:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(2, 1, 3, 3, generator=g, dtype=torch.float64)
    conv = ConvOperator(w, (1, 6, 6))
    return Graph((Input("x", (), (1, 6, 6)), Affine("c", ("x",), (2, 4, 4), conv, -10.0 * torch.ones(2, 1, 1, dtype=torch.float64)),
                  Relu("r", ("c",), (2, 4, 4)), MaxPool2d("p", ("r",), (2, 2, 2)), Reshape("f", ("p",), (8,)),
                  Affine("o", ("f",), (2,), DenseOperator(torch.randn(2, 8, generator=g, dtype=torch.float64)),
                         torch.tensor([0.0, 1.0], dtype=torch.float64))), "o")


@pytest.mark.parametrize("eps", [0.0, 1e-3], ids=["point", "all-inactive"])
def test_deepzono_maxpool_without_generators(eps):
    # eps = 0: no noise symbol at all; bias −10: every ReLU before the pool is inactive, so the
    # pool sees a zonotope whose generators are all zero (dropped). Both crashed in unfold_windows.
    net = _conv_pool_net()
    x = torch.rand(1, 1, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    C = torch.tensor([[[-1.0, 1.0]]], dtype=torch.float64)  # y1 − y0 = 1 exactly (pool output 0)
    out = get_analysis("deepzono", device="cpu").bound(net, x - eps, x + eps, C, torch.zeros(1, 1, dtype=torch.float64))
    assert 0.999 < float(out.lower[0, 0]) <= 1.0


def test_bab_bounds_are_true_lower_bounds_after_a_counterexample():
    # A false property: bab finds a counterexample; the bounds it returns must still be proved
    # lower bounds over the whole box (it used to return 0, above the real minimum).
    net = random_mlp(5, (4, 16, 16, 2))
    inst = _instance(net, 0.3, seed=5, holds=False)
    C, d, owner = inst.prop.stacked()
    an = BabAnalysis(split="input")
    lo, hi = torch.as_tensor(inst.region.lower[None]), torch.as_tensor(inst.region.upper[None])
    res = an.bound(net, lo, hi, torch.as_tensor(C[None]), torch.as_tensor(d[None]), owner=owner)
    cx = res.candidates[0]
    assert cx is not None
    y = net.forward(torch.as_tensor(np.asarray(cx)[None])).reshape(-1).numpy()
    real_at_cx = C @ y + d
    assert np.all(res.lower[0] <= real_at_cx)  # a lower bound is below every value it bounds
    assert np.all(np.asarray(res.stats["clause_lower"]) <= real_at_cx.max())
    assert np.all(res.lower[0] < 0)


def test_graph_to_without_change_is_the_graph_itself():
    # analyses call graph.to(device, dtype) on every bound: nothing is copied or re-validated then,
    # and quantities memoised per operator object (|A|, Box's constant terms) stay valid
    g = random_mlp(5, (4, 6, 3))
    assert g.to("cpu", torch.float64) is g
    g32 = g.to(dtype=torch.float32)
    assert g32 is not g and g32.dtype == torch.float32 and g32.to(dtype=torch.float32) is g32
    affine = next(n for n in g.nodes if n.kind == "Linear")
    assert affine.to("cpu", torch.float64) is affine and affine.operator.to(None, torch.float64) is affine.operator
