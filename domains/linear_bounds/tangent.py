"""Optimisable lines of sigmoid and tanh: tangent points as parameters (α-CROWN's S-shaped case).

Xu et al., "Fast and Complete: Enabling Complete Neural Network Verification with Rapid and
Massively Parallel Incomplete Verifiers", ICLR 2021, optimise the relaxation of every activation;
for an S-shaped ``f`` (sigmoid, tanh: convex on ``z ≤ 0``, concave on ``z ≥ 0``, point-symmetric
about ``(0, f(0))``) the free parameter of a line is the point ``d`` where it touches ``f``. On a
neuron with input bounds ``[l, u]``, ``T_d(z) = f(d) + f'(d)(z − d)``:

* **lower line**
  - ``u ≤ 0`` (convex): ``T_d`` for any ``d ∈ [l, u]`` (a convex function lies above its tangents);
  - ``l ≥ 0`` (concave): the chord — the best lower line, nothing to optimise;
  - ``l < 0 < u``: ``T_d`` with ``d ≤ 0`` lies below ``f`` on ``[l, 0]``, and on ``[0, u]`` (where
    ``f − T_d`` is concave) iff ``T_d(u) ≤ f(u)``. ``g(d) = T_d(u) − f(u)`` has ``g'(d) = f''(d)(u − d) > 0``
    on ``d < 0`` and ``g(0) > 0``, so the valid points are ``d ≤ d_max``, where ``T_{d_max}`` is the
    tangent through ``(u, f(u))``: ``d ∈ [l, d_max]``. If ``d_max < l`` no tangent is valid; then
    ``f'(l)`` exceeds the chord's slope and the chord is a lower line (``f − chord`` rises from 0 on
    the convex part and is concave on the rest, 0 at ``u``);
* **upper line**: the mirror image (``z → −z``): the chord when ``u ≤ 0``, ``T_d`` with ``d ∈ [l, u]``
  when ``l ≥ 0``, and ``d ∈ [d_min, u]`` when ``l < 0 < u`` (``T_{d_min}`` passes through ``(l, f(l))``),
  else the chord.

A parameter ``t`` (``[R, n]`` per target row, like ReLU's α) is clamped to ``[0, 1]`` and mapped to
``d = a + t·(b − a)`` on the range ``[a, b]``; ``t = 0`` for the lower line (``d = l``) and ``t = 1``
for the upper (``d = u``) reproduce DeepPoly's lines where they are tangents (lower when ``u ≤ 0``
or ``|l| ≥ |u|``; upper when ``l ≥ 0`` or ``|u| ≥ |l|``) and lie above (below) DeepPoly's line on
``[l, u]`` otherwise (same point, a steeper slope ``f'(l) ≥ min(f'(l), f'(u))``).

**Rounding.** ``d_max``/``d_min`` come from a float bisection whose outcome soundness does not rely
on: every line is corrected by its own endpoint check in floats — lower ``(T_d(u) − f(u))⁺``, upper
``(f(l) − T_d(l))⁺`` (for the chord fallback the same quantity at ``d = l`` bounds the chord's worst
violation) — and widened like :func:`~absint.domains.linear_bounds.relax.s_shaped_lines`, by
``64u·(1 + |f(l)| + |f(u)| + (|s_l| + |s_u|)·max(|l|, |u|) + (u − l))``: the float errors of ``f`` (≤ 4
ulp) and ``f'`` (≤ 12u absolute) at ``d``, of the offsets, of the chord slope, and of the endpoint
checks themselves. So every parameter value gives lines that hold in real arithmetic on ``[l, u]``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import torch

from absint.domains.linear_bounds.relax import down, unit, up

__all__ = ["SFunction", "TangentFamily", "touch_point"]

SFunction = Literal["sigmoid", "tanh"]

#: bisection steps for ``d_max`` (the range shrinks by at most ``|l|·2^-40``)
BISECT = 40


def _fns(fn: SFunction) -> tuple[Callable[[torch.Tensor], torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]:
    if fn == "sigmoid":
        def dsig(x: torch.Tensor) -> torch.Tensor:
            s = torch.sigmoid(x)
            return s * (1 - s)
        return torch.sigmoid, dsig
    if fn == "tanh":
        return torch.tanh, lambda x: 1 - torch.tanh(x) ** 2
    raise ValueError(f"not an S-shaped function: {fn!r}")


def touch_point(fn: SFunction, l: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """``d_max ∈ [l, 0]`` (float bisection): the largest ``d`` found with ``T_d(u) ≤ f(u)`` in floats
    (``l`` where none in ``(l, 0]`` is; callers decide whether ``l`` itself is valid)."""
    f, df = _fns(fn)
    fu = f(u)
    lo, hi = torch.minimum(l, torch.zeros_like(l)), torch.zeros_like(l)
    for _ in range(BISECT):
        mid = (lo + hi) * 0.5
        ok = f(mid) + df(mid) * (u - mid) <= fu
        lo = torch.where(ok, mid, lo)
        hi = torch.where(ok, hi, mid)
    return lo


@dataclass(frozen=True)
class TangentFamily:
    """Per neuron (``[B, n]``, detached): the ranges of tangent points (see the module docstring).

    Lower lines: ``T_d``, ``d ∈ [la, lb]`` where ``ltan``, else the chord; upper: ``d ∈ [ua, ub]`` where
    ``utan``, else the chord (slope ``cs``, offsets ``clo`` through ``(l, f(l))``, ``cuo`` through
    ``(u, f(u))``; slope 0 on intervals too narrow for a quotient, where ``f(l) ≤ f ≤ f(u)``).
    """

    fn: SFunction
    l: torch.Tensor
    u: torch.Tensor
    fl: torch.Tensor
    fu: torch.Tensor
    mag: torch.Tensor
    la: torch.Tensor
    lb: torch.Tensor
    ltan: torch.Tensor
    ua: torch.Tensor
    ub: torch.Tensor
    utan: torch.Tensor
    cs: torch.Tensor
    clo: torch.Tensor
    cuo: torch.Tensor

    @staticmethod
    def of(fn: SFunction, l: torch.Tensor, u: torch.Tensor) -> "TangentFamily":
        """The family for input bounds ``l ≤ u`` (``[B, n]``)."""
        l, u = l.detach(), u.detach()
        f, df = _fns(fn)
        fl, fu = f(l), f(u)
        width = u - l
        mag = torch.maximum(l.abs(), u.abs())
        tiny = width <= 1e-12 * (1 + mag)
        cs = torch.where(tiny, torch.zeros_like(u), (fu - fl) / torch.where(tiny, torch.ones_like(width), width))
        convex, concave = u <= 0, l >= 0
        mixed = ~(convex | concave)
        # lower: tangents on the convex side; in the mixed case only up to d_max (valid iff T_l(u) ≤ f(u))
        ltan = convex | (mixed & (fl + df(l) * width <= fu))
        lb = torch.where(mixed, torch.maximum(touch_point(fn, l, u), l), u)
        # upper: the mirror image (f(z) = 2f(0) − f(−z)): d_min(l, u) = −d_max(−u, −l)
        utan = concave | (mixed & (fu - df(u) * width >= fl))
        ua = torch.where(mixed, torch.minimum(-touch_point(fn, -u, -l), u), l)
        return TangentFamily(fn, l, u, fl, fu, mag, l, lb, ltan, ua, u, utan, cs, fl - cs * l, fu - cs * u)

    def lines(self, gather: Callable[[torch.Tensor], torch.Tensor], t_lower: torch.Tensor,
              t_upper: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Lines ``ls·z + lo ≤ f(z) ≤ us·z + uo`` (``[R, n]``, valid in real arithmetic on ``[l, u]``)
        for parameters ``t`` (``[R, n]``, any values: clamped to ``[0, 1]``); ``gather`` maps a per-member
        ``[B, n]`` tensor to the rows (``RowLayout.gather``). Differentiable in ``t``."""
        f, df = _fns(self.fn)
        g = gather
        l, u, fl, fu = g(self.l), g(self.u), g(self.fl), g(self.fu)
        la, lb, ua, ub = g(self.la), g(self.lb), g(self.ua), g(self.ub)
        dl = torch.minimum(torch.maximum(la + t_lower.clamp(0, 1) * (lb - la), la), lb)
        du = torch.minimum(torch.maximum(ua + t_upper.clamp(0, 1) * (ub - ua), ua), ub)
        sl, fdl = df(dl), f(dl)
        su, fdu = df(du), f(du)
        # endpoint checks: in reals they are ≤ 0 whenever the bisection was right; kept either way
        lcorr = (fdl + sl * (u - dl) - fu).clamp(min=0)
        ucorr = (fl - (fdu + su * (l - du))).clamp(min=0)
        cs = g(self.cs)
        ls = torch.where(g(self.ltan), sl, cs)
        us = torch.where(g(self.utan), su, cs)
        lo = torch.where(g(self.ltan), fdl - sl * dl - lcorr, g(self.clo))
        uo = torch.where(g(self.utan), fdu - su * du + ucorr, g(self.cuo))
        slack = fl.abs() + fu.abs() + (ls.abs() + us.abs()) * g(self.mag) + (u - l)
        delta = up((1 + slack) * (64 * unit(l.dtype)), 4)
        return ls, down(lo - delta), us, up(uo + delta)

    def init(self, rows: int) -> torch.Tensor:
        """Starting parameters ``[rows, 2n]`` (lower then upper): ``d = l`` below, ``d = u`` above."""
        n = self.l.shape[1]
        t = self.l.new_zeros(rows, 2 * n)
        t[:, n:] = 1.0
        return t
