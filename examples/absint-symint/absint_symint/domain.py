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

Floating point (sound in real arithmetic, like absint's built-in domains; :mod:`absint.rounding`).
An equation's coefficients are computed in float, so every transformer moves the constant of the
lower equation down (upper: up) by a bound of the rounding error of the whole equation anywhere
on the input box: with ``mag(eq) = Σ_i |w_i|·max(|l_i|, |u_i|) + |c|`` (the equation's size on the
box), an affine map adds ``2γ_{n+n0+2}·(|A|(mag(mid) + mag(rad)) + |b|)`` — the γ_n dot-product
bound of every coefficient, summed over the box by associativity of the non-negative terms, so
it costs one product with ``|A|`` on a vector, not on the equations. Scalings add ``2u·|λ|·mag``;
concretisation rounds the ``n0``-term sum outward; the relaxations' lines (computed in float)
are widened by the error of evaluating them (:func:`_line_slack`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import torch
import torch.nn.functional as F

# Import absint before domains: absint's own import pulls in absint.domains.base in the right order.
from absint.linear import LinearOperator, numel
from absint.domains.base import Domain, interval_add, interval_affine, interval_linear_bounds, interval_monotone
from absint.domains.relaxations import LinearBounds, sigmoid_deeppoly, tanh_deeppoly
from absint.rounding import LIBM_ULPS, dot_error, inner_length, safe_lower, safe_upper, tiny, unit_roundoff

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

    def lowered(self, err: Tensor) -> "Equations":
        """The same equation with its constant moved down by ``err`` (rounded down)."""
        return Equations(self.w, safe_lower(self.c, err))

    def raised(self, err: Tensor) -> "Equations":
        """The same equation with its constant moved up by ``err`` (rounded up)."""
        return Equations(self.w, safe_upper(self.c, err))


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
    def _xmax(x: SymIntElement, eq: Equations) -> Tensor:
        """``max(|l_i|, |u_i|)`` of the input box, shaped to broadcast against ``eq.w``."""
        extra = (1,) * (eq.w.dim() - 2)
        m = torch.maximum(x.in_lower.abs(), x.in_upper.abs())
        return m.reshape(*m.shape, *extra)

    def _mag(self, x: SymIntElement, eq: Equations) -> Tensor:
        """``Σ_i |w_i|·max(|l_i|, |u_i|) + |c|``: how large ``eq`` can be on the box (per neuron)."""
        return (eq.w.abs() * self._xmax(x, eq)).sum(1) + eq.c.abs()

    def _range(self, x: SymIntElement, eq: Equations) -> tuple[Tensor, Tensor]:
        """Minimum and maximum of ``eq`` over the input box (exact for a linear function), rounded
        outward by the ``n0``-term sum's error."""
        extra = (1,) * (eq.w.dim() - 2)
        lo = x.in_lower.reshape(*x.in_lower.shape, *extra)
        hi = x.in_upper.reshape(*x.in_upper.shape, *extra)
        pos, neg = eq.w.clamp(min=0), eq.w.clamp(max=0)
        low_terms, high_terms = pos * lo + neg * hi, pos * hi + neg * lo
        err = dot_error(self._mag(x, eq), eq.w.shape[1] + 1, eq.c.dtype)
        return safe_lower(low_terms.sum(1) + eq.c, err), safe_upper(high_terms.sum(1) + eq.c, err)

    def _scale_error(self, x: SymIntElement, eq: Equations, a: Tensor, b: Tensor | None = None) -> Tensor:
        """Rounding error of ``a·eq + b`` (one product per coefficient, one sum) anywhere on the box."""
        u = unit_roundoff(eq.c.dtype)
        out = 4 * u * a.abs() * self._mag(x, eq) + (eq.w.shape[1] + 2) * tiny(eq.c.dtype)
        return out if b is None else out + 4 * u * b.abs()

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
        # Rounding of every coefficient (γ_n of its dot product, and of mid/rad and m ± r), summed
        # over the box: Σ_i |Δw_i|·max|x_i| ≤ γ·|A|(mag(mid) + mag(rad)) by associativity.
        mag = absop.forward(self._mag(x, mid) + self._mag(x, rad))
        if bias is not None:
            mag = mag + bias.abs()
        err = dot_error(mag, inner_length(op) + x.in_lower.shape[1] + 2, mag.dtype)
        low = Equations(m.w - r.w, m.c - r.c).lowered(err)
        up = Equations(m.w + r.w, m.c + r.c).raised(err)
        return self._make(x, low, up, *interval_affine(op, bias, x.lower, x.upper))

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
            # any λ ∈ [0, 1] gives relu(z) ≥ λ·z, so only the scaling's rounding needs a margin
            lam_l = torch.where(up_low > 0, up_low / torch.where(up_low > lo_low, up_low - lo_low, 1.0), 0.0)
            lam_l = torch.where(lo_low >= 0, 1.0, lam_l.clamp(0, 1))
            scaled = x.low.scale(lam_l).lowered(self._scale_error(x, x.low, lam_l))
            low = x.low.where(active, scaled.where(unstable, zero))
            lam_u = up_up / torch.where(up_up > lo_up, up_up - lo_up, 1.0)
            # The chord λ(t − l) ≥ relu(t) on [l, u]; the computed λ is off by ≤ 3 roundings
            # (≤ 4u·u of the chord at t = u), plus the rounding of λ·Eq_up − λ·l.
            chord_err = 4 * unit_roundoff(hi.dtype) * up_up.abs() \
                + self._scale_error(x, x.up, lam_u, lam_u * lo_up)
            up_relaxed = x.up.scale(lam_u, -lam_u * lo_up).raised(chord_err)
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
        lower, upper = interval_add(x.lower, x.upper, y.lower, y.upper)
        same_inputs = (x.in_lower is y.in_lower and x.in_upper is y.in_upper) or (
            x.in_lower.shape == y.in_lower.shape and torch.equal(x.in_lower, y.in_lower)
            and torch.equal(x.in_upper, y.in_upper))
        if not same_inputs:  # equations over different variables cannot be added: keep intervals
            return self._make(x, self._const(x, lower), self._const(x, upper), lower, upper)
        one = torch.ones_like(lower)
        low = (x.low + y.low).lowered(self._scale_error(x, x.low, one) + self._scale_error(x, y.low, one))
        up = (x.up + y.up).raised(self._scale_error(x, x.up, one) + self._scale_error(x, y.up, one))
        return self._make(x, low, up, lower, upper)

    def _monotone(self, x: SymIntElement, f: Callable[[Tensor], Tensor],
                  lines: Callable[[Tensor, Tensor], LinearBounds], value_range: tuple[float, float]) -> SymIntElement:
        lo_low, up_low = self._range(x, x.low)
        lo_up, up_up = self._range(x, x.up)
        below, above = lines(lo_low, up_low), lines(lo_up, up_up)
        low = x.low.scale(below.lower_slope, below.lower_offset).lowered(
            _line_slack(below.lower_slope, below.lower_offset, lo_low, up_low)
            + self._scale_error(x, x.low, below.lower_slope, below.lower_offset))
        up = x.up.scale(above.upper_slope, above.upper_offset).raised(
            _line_slack(above.upper_slope, above.upper_offset, lo_up, up_up)
            + self._scale_error(x, x.up, above.upper_slope, above.upper_offset))
        return self._make(x, low, up, *interval_monotone(f, x.lower, x.upper, value_range))

    def sigmoid(self, x: SymIntElement) -> SymIntElement:
        return self._monotone(x, torch.sigmoid, sigmoid_deeppoly, (0.0, 1.0))

    def tanh(self, x: SymIntElement) -> SymIntElement:
        return self._monotone(x, torch.tanh, tanh_deeppoly, (-1.0, 1.0))

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
        if d is not None:
            c = c + d
        # rounding of the combined equation's coefficients, summed over the box (see affine)
        mags = (self._mag(x, x.low) + self._mag(x, x.up)).reshape(b, -1, 1)
        mag = torch.bmm(C.abs(), mags).squeeze(2) + (0 if d is None else d.abs())
        combined = Equations(w.transpose(1, 2), c).lowered(dot_error(mag, C.shape[-1] + n0 + 2, mag.dtype))
        symbolic, _ = self._range(x, combined)
        return torch.maximum(symbolic, interval_linear_bounds(x.lower.reshape(b, -1), x.upper.reshape(b, -1), C, d))

    def meet_box(self, x: SymIntElement, lower: Tensor, upper: Tensor) -> SymIntElement:
        lo, hi = torch.maximum(x.lower, lower), torch.minimum(x.upper, upper)
        return SymIntElement(x.low, x.up, lo, hi, x.in_lower, x.in_upper)


def _line_slack(slope: Tensor, offset: Tensor, l: Tensor, u: Tensor) -> Tensor:
    """How far a line ``slope·t + offset`` computed in float from ``f(l)``, ``f(u)``, ``f'`` (library
    functions accurate to :data:`~absint.rounding.LIBM_ULPS` ulps) can be on the wrong side of ``f``
    on ``[l, u]``: a few dozen roundings of ``|f| ≤ 1`` and of ``|slope|·max(|l|, |u|)``."""
    u_ = unit_roundoff(slope.dtype)
    return (16 * LIBM_ULPS * u_) * (1 + offset.abs() + slope.abs() * torch.maximum(l.abs(), u.abs()))
