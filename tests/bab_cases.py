"""Shared cases of the ReLU-splitting branch-and-bound tests (tests/test_bab_*.py): a small decision case,
a random MLP with a box and safety rows, and sampled points with their pre-activations."""
from __future__ import annotations

import numpy as np
import torch

from absint.bab.bounding import Bounder
from absint.ir import Affine, Graph, Relu
from absint.registry import get_domain
from absint.specs import Clause, InputBox, Instance, OutputProperty
from absint.testing import random_mlp

F64 = torch.float64


def decide_case(seed: int):
    """A random 2-16-16-2 ReLU MLP on the box ``[-0.3, 0.3]²``, the smallest ``y0 − y1`` over a
    201×201 grid of the box ``m``, and ``prop(t)``: the property whose violation is ``y0 − y1 ≤ t``
    (so ``prop(m − 0.02)`` holds with a small margin and ``prop(m + 0.01)`` has a counterexample)."""
    g = random_mlp(seed, (2, 16, 16, 2), bias_scale=0.2)
    box = InputBox(np.array([-0.3, -0.3]), np.array([0.3, 0.3]))
    axes = [np.linspace(-0.3, 0.3, 201)] * 2
    pts = np.stack(np.meshgrid(*axes), -1).reshape(-1, 2)
    with torch.no_grad():
        yy = g.forward(torch.as_tensor(pts)).numpy()
    m = float((yy[:, 0] - yy[:, 1]).min())

    def prop(t):  # violation: y1 − y0 + t ≥ 0
        return OutputProperty((Clause(np.array([[-1.0, 1.0]]), np.array([t])),), 2)

    return g, box, m, prop


def mlp(seed: int, sizes=(4, 12, 12, 10, 3)) -> Graph:
    """A random ReLU MLP (biases of scale 0.2)."""
    return random_mlp(seed, sizes, bias_scale=0.2)


def deeppoly_bounder(g: Graph) -> Bounder:
    """The DeepPoly sub-problem bounder of ``g`` (its forward pass runs the concrete network)."""
    from absint.domains.deeppoly import DeepPolyOptions

    return Bounder(g, get_domain("deeppoly")(DeepPolyOptions(early_stop=False)))


def setup(seed: int):
    """``mlp(seed)`` on the box ``[-1, 1]⁴`` with three safety rows ``C y + d``."""
    g = mlp(seed)
    lo = -torch.ones(4, dtype=F64)
    hi = torch.ones(4, dtype=F64)
    C = torch.tensor([[1.0, -1.0, 0.0], [1.0, 0.0, -1.0], [0.0, 1.0, -1.0]], dtype=F64)
    d = torch.tensor([0.1, -0.2, 0.0], dtype=F64)
    return g, lo, hi, C, d


def samples(g: Graph, lo, hi, n=40000, seed=0):
    """``n`` uniform points of the box, their outputs and their ReLU inputs (all layers side by side)."""
    gen = torch.Generator().manual_seed(seed)
    x = lo + (hi - lo) * torch.rand(n, lo.numel(), generator=gen, dtype=F64)
    b = deeppoly_bounder(g)
    with torch.no_grad():
        y, _ = b.forward(x)
        # pre-activations of every ReLU layer, concatenated
        pre = []
        v = x
        for node in g.nodes[1:]:
            if isinstance(node, Affine):
                v = node.operator.forward(v) + node.bias_full().reshape(-1)
            elif isinstance(node, Relu):
                pre.append(v)
                v = torch.relu(v)
    return x, y, torch.cat(pre, 1)


def decide_both_ways(seed: int, options):
    """``bab`` with ``options`` on :func:`decide_case` ``(seed)``: the property 0.02 below the grid
    minimum must be verified and the one 0.01 above it falsified. Returns both results."""
    from absint.verify import verify_bab

    g, box, m, prop = decide_case(seed)
    ok = verify_bab(g, Instance(box, prop(m - 0.02)), options=options)
    assert ok.verified, ok.reason
    bad = verify_bab(g, Instance(box, prop(m + 0.01)), options=options)
    assert bad.falsified, bad.reason
    return ok, bad


def root_unstable(bb) -> torch.Tensor:
    """Flat indices of the ReLUs a :class:`~absint.bab.beta.BetaBounder` finds unstable at its root."""
    return torch.nonzero(torch.cat([(l < 0) & (u > 0) for l, u in zip(bb.root_lo, bb.root_hi)])).reshape(-1)


def random_splits(bb, n: int, gen: torch.Generator, most: int) -> torch.Tensor:
    """``n`` sub-problems ``[n, n_relu]`` (int8 phases): the root, then random phases on
    ``1 + i % most`` root-unstable ReLUs in sub-problem ``i``, drawn from ``gen``."""
    unstable = root_unstable(bb)
    splits = torch.zeros(n, sum(bb.sizes), dtype=torch.int8)
    for i in range(1, n):
        pick = unstable[torch.randperm(unstable.numel(), generator=gen)[: 1 + i % most]]
        splits[i, pick] = torch.where(torch.rand(pick.numel(), generator=gen) < 0.5, 1, -1).to(torch.int8)
    return splits
