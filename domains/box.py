"""Box (interval) domain: every neuron carries an interval ``[lower, upper]``.

Affine maps use the centre/radius form ``c' = A c + b``, ``r' = |A| r`` (exact for intervals and
cheaper than splitting ``A`` into positive and negative parts). Non-linear ops use their
monotonicity. This is the baseline every other domain must never be looser than.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from absint.linear import LinearOperator
from absint.domains.base import Domain


@dataclass(frozen=True, eq=False)
class BoxElement:
    """Intervals ``lower ≤ x ≤ upper``, each ``[B, *shape]``."""

    lower: torch.Tensor
    upper: torch.Tensor

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.lower.shape[1:])

    @property
    def batch_size(self) -> int:
        return int(self.lower.shape[0])


class BoxDomain(Domain[BoxElement]):
    """Interval arithmetic (the Box domain)."""

    name = "box"
    description = "intervals per neuron (interval bound propagation)"

    def from_box(self, lower: torch.Tensor, upper: torch.Tensor) -> BoxElement:
        lo, hi = self.tensor(lower), self.tensor(upper)
        return BoxElement(lo, hi)

    def affine(self, x: BoxElement, op: LinearOperator, bias: torch.Tensor | None) -> BoxElement:
        center = (x.upper + x.lower) / 2
        radius = (x.upper - x.lower) / 2
        c = op.forward(center)
        if bias is not None:
            c = c + bias
        r = op.abs().forward(radius)
        return BoxElement(c - r, c + r)

    def relu(self, x: BoxElement) -> BoxElement:
        return BoxElement(x.lower.clamp(min=0), x.upper.clamp(min=0))

    def bounds(self, x: BoxElement) -> tuple[torch.Tensor, torch.Tensor]:
        return x.lower, x.upper

    def reshape(self, x: BoxElement, shape: tuple[int, ...]) -> BoxElement:
        b = x.batch_size
        return BoxElement(x.lower.reshape(b, *shape), x.upper.reshape(b, *shape))

    def add(self, x: BoxElement, y: BoxElement) -> BoxElement:
        return BoxElement(x.lower + y.lower, x.upper + y.upper)

    def sigmoid(self, x: BoxElement) -> BoxElement:
        return BoxElement(torch.sigmoid(x.lower), torch.sigmoid(x.upper))

    def tanh(self, x: BoxElement) -> BoxElement:
        return BoxElement(torch.tanh(x.lower), torch.tanh(x.upper))

    def maxpool(self, x: BoxElement, kernel, stride, padding) -> BoxElement:
        return BoxElement(F.max_pool2d(x.lower, kernel, stride, padding), F.max_pool2d(x.upper, kernel, stride, padding))

    def meet_box(self, x: BoxElement, lower: torch.Tensor, upper: torch.Tensor) -> BoxElement:
        return BoxElement(torch.maximum(x.lower, lower), torch.minimum(x.upper, upper))
