"""Symbolic intervals (ReluVal) as an absint domain.

Wang, Pei, Whitehouse, Yang, Jana: "Formal Security Analysis of Neural Networks using Symbolic
Intervals", USENIX Security 2018. Every neuron ``z`` keeps two linear *equations in the network
inputs* ``x`` (not in the previous layer, as DeepPoly does)::

    Eq_low(x) ≤ z ≤ Eq_up(x)      for every x in the input box,

concretised over the input box when a number is needed. Affine layers are exact on the pair
(positive weights take the same side, negative weights the other one), so the dependency between
inputs survives through linear layers — the thing plain intervals lose.

ReLU (the paper's rules, Section 4.1): with ``[l, u]`` the concrete bounds of ``z``,

* ``u ≤ 0``: both equations become 0;  ``l ≥ 0``: both are kept;
* otherwise the lower equation is concretised to 0, and the upper equation is kept if its own
  minimum over the box is ``≥ 0`` (then ``relu(z) ≤ Eq_up``) and concretised to the constant
  ``u`` if not.

Option ``relu="neurify"`` uses instead the symbolic linear relaxation of Neurify (Wang et al.,
NeurIPS 2018): ``λ_l·Eq_low ≤ relu(z) ≤ λ_u·(Eq_up − l_up)``, with ``λ = u/(u − l)`` computed on
each equation's own range — tighter, and still one equation per side.

Sigmoid/tanh use the DeepPoly lines of :mod:`absint.domains.relaxations` on each equation's range
(``f`` is monotone, so ``f(z) ≥ f(Eq_low) ≥`` the lower line at ``Eq_low``). Max pooling keeps
the equations of a window's input when one input dominates the window, else concretises the upper
side. The element also carries concrete interval bounds propagated by interval arithmetic and
intersects them with the equations' range (a reduced product with Box), so it is never looser
than Box and ``meet_box`` can tighten it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import torch
import torch.nn.functional as F

# Import absint before domains: absint's own import pulls in absint.domains.base in the right order.
from absint.linear import LinearOperator, numel
from absint.domains.base import Domain
from absint.domains.relaxations import LinearBounds, sigmoid_deeppoly, tanh_deeppoly

Tensor = torch.Tensor


@dataclass(frozen=True)
class SymIntOptions:
    """``relu``: ``"reluval"`` (concretise unstable neurons, the paper's rule) or ``"neurify"``."""

    relu: Literal["reluval", "neurify"] = "reluval"

    def __post_init__(self) -> None:
        if self.relu not in ("reluval", "neurify"):
            raise ValueError(f"SymIntOptions.relu must be 'reluval' or 'neurify', not {self.relu!r}")


@dataclass(frozen=True)
class Equations:
    """Linear functions of the ``n0`` flat inputs: ``w`` ``[B, n0, *shape]``, constant ``c`` ``[B, *shape]``."""

    w: Tensor
    c: Tensor

    def __add__(self, other: "Equations") -> "Equations":
        return Equations(self.w + other.w, self.c + other.c)

    def scale(self, a: Tensor, b: Tensor | None = None) -> "Equations":
        """``a·eq + b`` neuron-wise (``a``, ``b`` shaped like ``c``)."""
        return Equations(self.w * a.unsqueeze(1), self.c * a + (0 if b is None else b))

    def where(self, mask: Tensor, other: "Equations") -> "Equations":
        return Equations(torch.where(mask.unsqueeze(1), self.w, other.w), torch.where(mask, self.c, other.c))

    def map(self, fn: Callable[[Tensor], Tensor]) -> "Equations":
        return Equations(fn(self.w), fn(self.c))


@dataclass(frozen=True, eq=False)
class SymIntElement:
    """Lower/upper equations over the input box ``[in_lower, in_upper]`` (``[B, n0]``) and concrete bounds."""

    low: Equations
    up: Equations
    lower: Tensor  # [B, *shape]
    upper: Tensor
    in_lower: Tensor  # [B, n0]
    in_upper: Tensor

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.lower.shape[1:])

    @property
    def batch_size(self) -> int:
        return int(self.lower.shape[0])


class SymIntDomain(Domain[SymIntElement]):
    """Symbolic intervals over the input variables (ReluVal), reduced with Box."""

    name = "symint"
    options_class = SymIntOptions
    description = "symbolic intervals over the inputs (ReluVal, Wang et al. USENIX Security 2018)"
    never_looser_than_box = True  # read by absint.testing: checked at every node

    # -- helpers -----------------------------------------------------------------------------
    @staticmethod
    def _range(x: SymIntElement, eq: Equations) -> tuple[Tensor, Tensor]:
        """Minimum and maximum of ``eq`` over the input box (exact for a linear function)."""
        extra = (1,) * (eq.w.dim() - 2)
        lo = x.in_lower.reshape(*x.in_lower.shape, *extra)
        hi = x.in_upper.reshape(*x.in_upper.shape, *extra)
        pos, neg = eq.w.clamp(min=0), eq.w.clamp(max=0)
        return ((pos * lo + neg * hi).sum(1) + eq.c, (pos * hi + neg * lo).sum(1) + eq.c)

    def _make(self, x: SymIntElement, low: Equations, up: Equations, lower: Tensor, upper: Tensor) -> SymIntElement:
        """An element from equations and interval bounds: the concrete bounds are their intersection."""
        lo_eq, _ = self._range(x, low)
        _, hi_eq = self._range(x, up)
        lo, hi = torch.maximum(lower, lo_eq), torch.minimum(upper, hi_eq)
        # The two sides are each sound; if rounding made them cross, keep the pair ordered.
        return SymIntElement(low, up, torch.minimum(lo, hi), torch.maximum(lo, hi), x.in_lower, x.in_upper)

    @staticmethod
    def _const(x: SymIntElement, value: Tensor) -> Equations:
        """The constant ``value`` as an equation over ``x``'s inputs."""
        n0 = x.in_lower.shape[1]
        return Equations(value.new_zeros(value.shape[0], n0, *value.shape[1:]), value)

    # -- required core -----------------------------------------------------------------------
    def from_box(self, lower: Tensor, upper: Tensor) -> SymIntElement:
        lo, hi = self.tensor(lower), self.tensor(upper)
        b, shape = lo.shape[0], tuple(lo.shape[1:])
        n0 = numel(shape)
        eye = torch.eye(n0, dtype=self.dtype, device=lo.device).reshape(1, n0, *shape).expand(b, n0, *shape)
        ident = Equations(eye.contiguous(), torch.zeros_like(lo))
        return SymIntElement(ident, ident, lo, hi, lo.reshape(b, n0), hi.reshape(b, n0))

    def affine(self, x: SymIntElement, op: LinearOperator, bias: Tensor | None) -> SymIntElement:
        # A⁺·Eq_low + A⁻·Eq_up = A·mid − |A|·rad on the equations (mid/rad of the pair).
        absop = op.abs()
        mid = Equations((x.low.w + x.up.w) / 2, (x.low.c + x.up.c) / 2)
        rad = Equations((x.up.w - x.low.w) / 2, (x.up.c - x.low.c) / 2)
        m, r = mid.map(op.forward), rad.map(absop.forward)
        if bias is not None:
            m = Equations(m.w, m.c + bias)
        centre = op.forward((x.upper + x.lower) / 2) + (0 if bias is None else bias)
        radius = absop.forward((x.upper - x.lower) / 2)
        low = Equations(m.w - r.w, m.c - r.c)
        up = Equations(m.w + r.w, m.c + r.c)
        return self._make(x, low, up, centre - radius, centre + radius)

    def relu(self, x: SymIntElement) -> SymIntElement:
        lo, hi = x.lower, x.upper
        active, dead = lo >= 0, hi <= 0
        unstable = ~active & ~dead
        zero = self._const(x, torch.zeros_like(lo))
        lo_low, up_low = self._range(x, x.low)
        lo_up, up_up = self._range(x, x.up)
        if self.options.relu == "reluval":
            low = x.low.where(active, zero)
            up_relaxed = self._const(x, hi)  # concretise: relu(z) ≤ u
        else:  # neurify: λ·Eq_low below, chord of relu over Eq_up's range above
            lam_l = torch.where(up_low > 0, up_low / torch.where(up_low > lo_low, up_low - lo_low, 1.0), 0.0)
            lam_l = torch.where(lo_low >= 0, 1.0, lam_l.clamp(0, 1))
            low = x.low.where(active, x.low.scale(lam_l).where(unstable, zero))
            lam_u = up_up / torch.where(up_up > lo_up, up_up - lo_up, 1.0)
            up_relaxed = x.up.scale(lam_u, -lam_u * lo_up)
        keep_up = active | (unstable & (lo_up >= 0))  # Eq_up ≥ 0 on the box: relu(z) ≤ Eq_up
        up = x.up.where(keep_up, up_relaxed.where(unstable, zero))
        return self._make(x, low, up, lo.clamp(min=0), hi.clamp(min=0))

    def bounds(self, x: SymIntElement) -> tuple[Tensor, Tensor]:
        return x.lower, x.upper

    # -- optional transformers ---------------------------------------------------------------
    def reshape(self, x: SymIntElement, shape: tuple[int, ...]) -> SymIntElement:
        b, n0 = x.batch_size, x.in_lower.shape[1]
        low = Equations(x.low.w.reshape(b, n0, *shape), x.low.c.reshape(b, *shape))
        up = Equations(x.up.w.reshape(b, n0, *shape), x.up.c.reshape(b, *shape))
        return SymIntElement(low, up, x.lower.reshape(b, *shape), x.upper.reshape(b, *shape), x.in_lower, x.in_upper)

    def add(self, x: SymIntElement, y: SymIntElement) -> SymIntElement:
        lower, upper = x.lower + y.lower, x.upper + y.upper
        same_inputs = (x.in_lower is y.in_lower and x.in_upper is y.in_upper) or (
            x.in_lower.shape == y.in_lower.shape and torch.equal(x.in_lower, y.in_lower)
            and torch.equal(x.in_upper, y.in_upper))
        if not same_inputs:  # equations over different variables cannot be added: keep intervals
            return self._make(x, self._const(x, lower), self._const(x, upper), lower, upper)
        return self._make(x, x.low + y.low, x.up + y.up, lower, upper)

    def _monotone(self, x: SymIntElement, f: Callable[[Tensor], Tensor],
                  lines: Callable[[Tensor, Tensor], LinearBounds]) -> SymIntElement:
        lo_low, up_low = self._range(x, x.low)
        lo_up, up_up = self._range(x, x.up)
        below, above = lines(lo_low, up_low), lines(lo_up, up_up)
        low = x.low.scale(below.lower_slope, below.lower_offset)
        up = x.up.scale(above.upper_slope, above.upper_offset)
        return self._make(x, low, up, f(x.lower), f(x.upper))

    def sigmoid(self, x: SymIntElement) -> SymIntElement:
        return self._monotone(x, torch.sigmoid, sigmoid_deeppoly)

    def tanh(self, x: SymIntElement) -> SymIntElement:
        return self._monotone(x, torch.tanh, tanh_deeppoly)

    def maxpool(self, x: SymIntElement, kernel, stride, padding) -> SymIntElement:
        b, ch = x.batch_size, x.shape[0]
        lower = F.max_pool2d(x.lower, kernel, stride, padding)
        upper = F.max_pool2d(x.upper, kernel, stride, padding)
        oh, ow = lower.shape[-2:]

        def windows(t: Tensor, fill: float) -> Tensor:  # [B, k, C, H, W] -> [B, k, C, kh*kw, OH*OW]
            k = t.shape[1]
            flat = F.pad(t.reshape(b * k, *t.shape[2:]), (padding[1], padding[1], padding[0], padding[0]), value=fill)
            return F.unfold(flat, kernel, stride=stride).reshape(b, k, ch, kernel[0] * kernel[1], oh * ow)

        lo_w = windows(x.lower.unsqueeze(1), float("-inf"))[:, 0]
        hi_w = windows(x.upper.unsqueeze(1), float("-inf"))[:, 0]
        best = lo_w.argmax(2, keepdim=True)  # the input with the highest lower bound
        others = hi_w.scatter(2, best, float("-inf")).amax(2)
        dominant = (lo_w.gather(2, best).squeeze(2) >= others).reshape(b, ch, oh, ow)

        def pick(eq: Equations) -> Equations:  # the equations of the chosen input of each window
            def take(t: Tensor) -> Tensor:
                win = windows(t, 0.0)
                idx = best.unsqueeze(1).expand(b, win.shape[1], ch, 1, oh * ow)
                return win.gather(3, idx).reshape(b, win.shape[1], ch, oh, ow)
            return Equations(take(eq.w), take(eq.c.unsqueeze(1))[:, 0])

        # max ≥ z_best ≥ Eq_low(best); the upper side is exact only if that input dominates.
        low = pick(x.low)
        up = pick(x.up).where(dominant, self._const(x, upper))
        return self._make(x, low, up, lower, upper)

    def linear_bounds(self, x: SymIntElement, C: Tensor, d: Tensor | None = None) -> Tensor:
        """``C⁺·Eq_low + C⁻·Eq_up`` concretised over the input box; max with the interval bound."""
        b, n0 = x.batch_size, x.in_lower.shape[1]
        pos, neg = C.clamp(min=0), C.clamp(max=0)
        lw, uw = x.low.w.reshape(b, n0, -1), x.up.w.reshape(b, n0, -1)
        lc, uc = x.low.c.reshape(b, -1), x.up.c.reshape(b, -1)
        w = torch.einsum("bmn,bin->bmi", pos, lw) + torch.einsum("bmn,bin->bmi", neg, uw)
        c = torch.einsum("bmn,bn->bm", pos, lc) + torch.einsum("bmn,bn->bm", neg, uc)
        lo, hi = x.in_lower.unsqueeze(1), x.in_upper.unsqueeze(1)
        symbolic = (w.clamp(min=0) * lo + w.clamp(max=0) * hi).sum(-1) + c
        out = torch.maximum(symbolic, super().linear_bounds(x, C))
        return out if d is None else out + d

    def meet_box(self, x: SymIntElement, lower: Tensor, upper: Tensor) -> SymIntElement:
        lo, hi = torch.maximum(x.lower, lower), torch.minimum(x.upper, upper)
        return SymIntElement(x.low, x.up, lo, hi, x.in_lower, x.in_upper)
