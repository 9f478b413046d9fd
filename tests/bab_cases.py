"""A small decision case for the ReLU-splitting branch-and-bound tests (tests/test_bab_*.py)."""
from __future__ import annotations

import numpy as np
import torch

from absint.specs import Clause, InputBox, OutputProperty
from absint.testing import random_mlp


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
