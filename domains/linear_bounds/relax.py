"""Relaxations of the nonlinear ops, sound in real arithmetic on the float values they return.

Each activation ``y = f(z)`` on ``z ∈ [l, u]`` is bounded by two lines per neuron. The base formulas
are the pure functions of :mod:`absint.domains.relaxations` (DeepPoly: Singh et al., POPL 2019;
α-CROWN: Xu et al., ICLR 2021); this module makes the lines the engine uses hold in *real*
arithmetic for the float coefficients it stores (issue 15), by inflating offsets with rigorous
bounds of the rounding errors made while computing them:

* **ReLU**, unstable (``l < 0 < u``). Upper: the chord with float slope ``s = fl(u/(u−l))`` and offset
  ``max(−s·l, u·(1−s))`` rounded up — a line lies above the convex ReLU on ``[l, u]`` iff it does at
  both ends, and this offset makes both end checks hold in reals. Lower: ``α·z`` with ``α ∈ [0, 1]``
  (any such α is exact: ``relu(z) ≥ α z``); DeepPoly's area heuristic picks α ∈ {0, 1}.
  Stable neurons are exact (``y = z`` or ``y = 0``).
* **Sigmoid / tanh** (DeepPoly's S-shaped rules): lower and upper offsets widened by
  ``32u·(1 + |f(l)| + |f(u)| + (|s_l| + |s_u|)·max(|l|,|u|) + (u − l))``. This covers the float errors
  of ``f`` (assumed ≤ 4 ulp, as for torch's vectorised exp/tanh), of the chord/tangent slopes
  (a slope error ``Δ`` moves a line by at most ``Δ·(u − l)`` on the interval) and of the offsets.
* **Max-pool** (ERAN's rule): ``y ≥ x_{j*}`` and ``y ≤ x_{j*}`` or ``y ≤ max u`` — exact lines.

Lines are stored in the form the backward pass uses: ``ls·z + lo ≤ y ≤ (ls + ds)·z + (lo + do)``
(``lo`` None means 0). ``ds = fl(us − ls)`` is rounded, so the upper offset ``do`` also absorbs
``2u·|ds|·max(|l|, |u|)``: the upper line with slope ``ls + ds`` (real sum) stays above ``f``.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from absint.domains.relaxations import (ReluLowerMode, maxpool_deeppoly, relu_lower_slope, sigmoid_deeppoly,
                                        tanh_deeppoly)
from absint.rounding import gamma, unit_roundoff

__all__ = ["floor", "safe_down", "safe_up", "Lines", "PoolLines", "relu_lines", "relu_upper", "s_shaped_lines", "pool_lines", "up", "down"]


@functools.lru_cache(maxsize=None)
def unit(dtype: torch.dtype = torch.float64) -> float:
    """The unit roundoff ``u`` of ``dtype`` (memoised :func:`absint.rounding.unit_roundoff`)."""
    return unit_roundoff(dtype)


@functools.lru_cache(maxsize=4096)
def gam(n: int, dtype: torch.dtype = torch.float64) -> float:
    """``γ_n`` (memoised :func:`absint.rounding.gamma`)."""
    return gamma(n, dtype)


def floor(dtype: torch.dtype = torch.float64) -> float:
    """The absolute error allowance per rounded operation: ``2^-1000`` in float64 (``2^-100`` in
    float32), far above the underflow error (≤ the smallest subnormal, or the smallest normal number
    when denormals are flushed) yet a normal number, so products with it never fall into the slow
    subnormal range of the CPU."""
    return 2.0 ** -1000 if dtype == torch.float64 else 2.0 ** -100


def up(x: torch.Tensor, ops: int = 1) -> torch.Tensor:
    """An upper bound of the real value that ``x`` approximates after ``ops`` roundings (each
    relative ``u`` plus an underflow term): ``x + 2(ops + 2)·u·|x| + (ops + 1)·floor``, whose own
    two roundings the extra ``4u·|x|`` covers."""
    return torch.add(x, x.abs(), alpha=2 * (ops + 2) * unit(x.dtype)).add_((ops + 1) * floor(x.dtype))


def down(x: torch.Tensor, ops: int = 1) -> torch.Tensor:
    """The lower-bound counterpart of :func:`up`."""
    return -up(-x, ops)


@functools.lru_cache(maxsize=16)
def _inf(sign: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return torch.tensor(sign * float("inf"), dtype=dtype, device=device)


def safe_down(x: torch.Tensor) -> torch.Tensor:
    """``x`` computed with one final rounding, as a proved lower bound: NaN and +inf (no proof)
    become −inf, finite values step one ulp down."""
    x = torch.nan_to_num(x, nan=-float("inf"), posinf=-float("inf"))
    return torch.nextafter(x, _inf(-1.0, x.dtype, x.device))


def safe_up(x: torch.Tensor) -> torch.Tensor:
    """The upper-bound counterpart of :func:`safe_down`."""
    x = torch.nan_to_num(x, nan=float("inf"), neginf=float("inf"))
    return torch.nextafter(x, _inf(1.0, x.dtype, x.device))


@dataclass(frozen=True)
class Lines:
    """Per-neuron lines ``ls·z + lo ≤ y ≤ (ls + ds)·z + (lo + do)``, each ``[B, n]`` (flat).

    ``lo`` None means 0. Valid in real arithmetic for the stored float values.
    """

    ls: torch.Tensor
    lo: torch.Tensor | None
    ds: torch.Tensor
    do: torch.Tensor

    def select(self, cols: torch.Tensor) -> "Lines":
        """The lines of neurons ``cols`` only."""
        return Lines(self.ls[:, cols], None if self.lo is None else self.lo[:, cols], self.ds[:, cols],
                     self.do[:, cols])

    @staticmethod
    def of(ls: torch.Tensor, lo: torch.Tensor | None, us: torch.Tensor, uo: torch.Tensor,
           mag: torch.Tensor) -> "Lines":
        """Lines from valid lower ``(ls, lo)`` and upper ``(us, uo)`` lines; ``mag ≥ |z|``."""
        ds = us - ls
        do = uo if lo is None else uo - lo
        # |ds − (us − ls)| ≤ u|ds| moves the upper line by ≤ u|ds|·|z|; (uo − lo) has one rounding
        do = up(torch.add(do, ds.abs() * mag, alpha=4 * unit(ls.dtype)), 3)
        return Lines(ls, lo, ds, do)


@dataclass(frozen=True)
class PoolLines:
    """Max-pool lines flattened for back-substitution: per output ``p``, ``y_p ≥ x_{index[p]}``;
    ``y_p ≤ x_{index[p]}`` where ``exact[p]``, else ``y_p ≤ upper[p]`` (all ``[B, n_out]``)."""

    index: torch.Tensor
    exact: torch.Tensor
    upper: torch.Tensor
    in_numel: int


def relu_upper(l: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """ReLU's upper line ``s·z + o`` on ``[l, u]``, valid in real arithmetic (see module docstring).

    Unstable: the chord; active (``l ≥ 0``): ``z``; inactive (``u ≤ 0``): ``0``.
    """
    unstable = (l < 0) & (u > 0)
    active = l >= 0
    width = torch.where(unstable, u - l, torch.ones_like(u))
    s = torch.where(unstable, u / width, active.to(u.dtype))
    # the line must reach 0 at z = l and u at z = u (in reals): o ≥ −s·l and o ≥ u·(1 − s); both
    # are products of non-negative numbers with ≤ 2 roundings, covered by the factor (1 + 8u)
    o = torch.maximum(s * (-l), u * (1 - s)) * (1 + 8 * unit(u.dtype)) + 2 * floor(u.dtype)
    return s, torch.where(unstable, o, torch.zeros_like(u))


def relu_lines(l: torch.Tensor, u: torch.Tensor, mode: ReluLowerMode = "area") -> Lines:
    """DeepPoly's ReLU lines (chord above, ``α·z`` below with α by ``mode``), real-sound."""
    us, uo = relu_upper(l, u)
    ls = relu_lower_slope(l, u, mode)
    return Lines.of(ls, None, us, uo, torch.maximum(l.abs(), u.abs()))


def s_shaped_lines(fn: str, l: torch.Tensor, u: torch.Tensor) -> Lines:
    """DeepPoly's sigmoid/tanh lines with offsets widened for rounding (see module docstring)."""
    rel = sigmoid_deeppoly(l, u) if fn == "sigmoid" else tanh_deeppoly(l, u)
    f = torch.sigmoid if fn == "sigmoid" else torch.tanh
    mag = torch.maximum(l.abs(), u.abs())
    u_ = unit(l.dtype)
    slack = f(l).abs() + f(u).abs() + (rel.lower_slope.abs() + rel.upper_slope.abs()) * mag + (u - l)
    delta = up((1 + slack) * (32 * u_), 4)
    lo = down(rel.lower_offset - delta)
    uo = up(rel.upper_offset + delta)
    return Lines.of(rel.lower_slope, lo, rel.upper_slope, uo, mag)


def s_shaped_bounds(fn: str, l: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Concrete bounds ``f(l) ≤ f(z) ≤ f(u)`` widened by 4 ulp (the monotone image, real-sound)."""
    f = torch.sigmoid if fn == "sigmoid" else torch.tanh
    return down(f(l), 4), up(f(u), 4)


def pool_lines(l: torch.Tensor, u: torch.Tensor, kernel, stride, padding) -> tuple[PoolLines, torch.Tensor, torch.Tensor]:
    """Max-pool lines and concrete bounds from input bounds ``[B, C, H, W]`` (exact lines)."""
    mp = maxpool_deeppoly(l, u, tuple(kernel), tuple(stride), tuple(padding))
    b = l.shape[0]
    n_in = int(l[0].numel())
    return PoolLines(mp.index, mp.exact, mp.upper.reshape(b, -1), n_in), mp.lower, mp.upper
