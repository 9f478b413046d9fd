"""Floating-point rounding error bounds: the shared primitives every sound bound uses.

absint's guarantee is with respect to *real* arithmetic on the stored weights, while every
computation runs in floating point (float64 by default, float32 where a caller chooses it). A
number returned as a proved lower bound must therefore be below the real value it bounds,
including every rounding error made while computing it. The model of floating-point arithmetic
used throughout (Higham, "Accuracy and Stability of Numerical Algorithms", 2nd ed., §2.2 and §3.1):

* one operation: ``fl(a ∘ b) = (a ∘ b)(1 + δ) + η`` with ``|δ| ≤ u`` (unit roundoff) and an
  absolute underflow term ``|η| ≤ η_min`` (smallest subnormal) for products;
* a dot product or matrix product of inner length ``n``, summed in *any* order (BLAS blocking,
  pairwise or FMA-based summation included): ``|fl(x·y) − x·y| ≤ γ_n Σ|x_i y_i| + n·η_min`` with
  ``γ_n = n u / (1 − n u)``.

The bounds below are written so that the rounding of the error estimate itself is covered: they
use ``γ`` of a slightly larger length and a factor of two of slack, which costs nothing measurable
and keeps every formula short. Non-finite results (overflow, ``inf − inf``) never become proofs:
:func:`sanitize_lower` / :func:`sanitize_upper` turn them into the trivial bound.
"""
from __future__ import annotations

import functools

import torch

from absint.linear import ConvOperator, DenseOperator, DiagonalOperator, LinearOperator, PermuteOperator, numel

__all__ = [
    "unit_roundoff", "tiny", "gamma", "dot_error", "round_down", "round_up",
    "sanitize_lower", "sanitize_upper", "safe_lower", "safe_upper", "inner_length",
    "sum_lower", "sum_upper", "LIBM_ULPS", "monotone_lower", "monotone_upper",
    "to_lower", "to_upper",
]


def unit_roundoff(dtype: torch.dtype = torch.float64) -> float:
    """``u``: half the machine epsilon of ``dtype`` (2⁻⁵³ for float64, 2⁻²⁴ for float32)."""
    return torch.finfo(dtype).eps / 2.0


def tiny(dtype: torch.dtype = torch.float64) -> float:
    """The smallest positive subnormal number of ``dtype`` (the underflow term ``η_min``)."""
    return float(torch.finfo(dtype).smallest_normal) * torch.finfo(dtype).eps


def gamma(n: int, dtype: torch.dtype = torch.float64) -> float:
    """``γ_n = n u / (1 − n u)`` for inner length ``n`` (Higham, Lemma 3.1)."""
    nu = max(int(n), 1) * unit_roundoff(dtype)
    if nu >= 0.5:
        raise ValueError(f"inner length {n} too long for a rounding bound in {dtype}")
    return nu / (1.0 - nu)


@functools.lru_cache(maxsize=1024)
def _dot_error_coefficients(n: int, dtype: torch.dtype) -> tuple[float, float]:
    return 2.0 * gamma(n + 2, dtype), (n + 2) * tiny(dtype)


def dot_error(abs_sum: torch.Tensor, n: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """An upper bound of the rounding error of dot products of inner length ``n``.

    ``abs_sum`` is (a float computation of) ``Σ|x_i y_i|`` for each product, e.g. ``|A| @ |B|``.
    The returned bound covers the products' own error, the error of computing ``abs_sum`` itself
    (another length-``n`` sum) and the rounding of this formula, with a factor of two to spare.
    """
    relative, absolute = _dot_error_coefficients(int(n), dtype)
    return abs_sum * relative + absolute


_INFINITIES: dict[tuple[torch.dtype, torch.device, bool], torch.Tensor] = {}


def _infinity(like: torch.Tensor, positive: bool) -> torch.Tensor:
    """A cached 0-d ``±inf`` of ``like``'s dtype and device (a direction for ``nextafter``)."""
    key = (like.dtype, like.device, positive)
    t = _INFINITIES.get(key)
    if t is None:
        t = _INFINITIES[key] = torch.tensor(float("inf") if positive else -float("inf"), dtype=like.dtype,
                                            device=like.device)
    return t


def round_down(x: torch.Tensor) -> torch.Tensor:
    """The next representable number below ``x`` (one step toward −∞): a safe lower bound of any
    real number that ``x`` approximates to within half an ulp (one rounded operation).
    Meant for finite values: +inf steps down to the largest finite number (sanitise first)."""
    return torch.nextafter(x, _infinity(x, False))


def round_up(x: torch.Tensor) -> torch.Tensor:
    """The next representable number above ``x`` (one step toward +∞)."""
    return torch.nextafter(x, _infinity(x, True))


_INF = float("inf")


def sanitize_lower(x: torch.Tensor) -> torch.Tensor:
    """A lower bound with NaN and +inf (overflow: no proof) replaced by −inf."""
    return torch.nan_to_num(x, nan=-_INF, posinf=-_INF, neginf=-_INF)


def sanitize_upper(x: torch.Tensor) -> torch.Tensor:
    """An upper bound with NaN and −inf replaced by +inf."""
    return torch.nan_to_num(x, nan=_INF, posinf=_INF, neginf=_INF)


def safe_lower(value: torch.Tensor, error: torch.Tensor | float) -> torch.Tensor:
    """``value − error`` rounded down and sanitised: a proved lower bound of the real quantity that
    ``value`` approximates, given a bound ``error`` on the approximation error."""
    return round_down(sanitize_lower(value - error))


def safe_upper(value: torch.Tensor, error: torch.Tensor | float) -> torch.Tensor:
    """``value + error`` rounded up and sanitised (see :func:`safe_lower`)."""
    return round_up(sanitize_upper(value + error))


def inner_length(op: LinearOperator) -> int:
    """Number of products summed per output entry of ``op`` (the ``n`` of its rounding bound)."""
    if isinstance(op, DenseOperator):
        return int(op.weight.shape[-1])
    if isinstance(op, ConvOperator):
        w = op.weight
        return int(w.shape[1] * w.shape[2] * w.shape[3])
    if isinstance(op, (DiagonalOperator, PermuteOperator)):
        return 1
    return numel(op.in_shape)  # unknown operator: the worst case, a full dense row


def sum_lower(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """A lower bound of the real ``a + b``: the rounded sum one step down (one rounding)."""
    return round_down(sanitize_lower(a + b))


def sum_upper(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """An upper bound of the real ``a + b``."""
    return round_up(sanitize_upper(a + b))


#: Assumed accuracy of the library's ``exp``/``sigmoid``/``tanh`` (glibc and SLEEF document ≤ 4 ulps;
#: we allow 8). This is an assumption about the platform, not a proved bound.
LIBM_ULPS = 8


def _libm_error(y: torch.Tensor) -> torch.Tensor:
    u = unit_roundoff(y.dtype)
    return (2 * LIBM_ULPS * u) * y.abs() + LIBM_ULPS * tiny(y.dtype)


def monotone_lower(f, x: torch.Tensor) -> torch.Tensor:
    """A lower bound of the real ``f(x)`` for a library function ``f`` (sigmoid, tanh, exp)
    accurate to :data:`LIBM_ULPS` ulps."""
    y = f(x)
    return round_down(sanitize_lower(y - _libm_error(y)))


def monotone_upper(f, x: torch.Tensor) -> torch.Tensor:
    """An upper bound of the real ``f(x)`` (see :func:`monotone_lower`)."""
    y = f(x)
    return round_up(sanitize_upper(y + _libm_error(y)))


# -- changing precision -----------------------------------------------------------------------
def _floating(x: torch.Tensor) -> torch.Tensor:
    """``x`` itself if it is floating point, else in float64 (exact for integers below 2^53)."""
    return x if x.is_floating_point() else x.to(torch.float64)


def to_lower(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``x`` in ``dtype``, every entry rounded toward −∞ (a lower bound of ``x``; NaN stays NaN)."""
    x = _floating(x)
    y = x.to(dtype)
    if torch.finfo(dtype).bits >= torch.finfo(x.dtype).bits:
        return y
    return torch.where(y.to(x.dtype) > x, round_down(y), y)


def to_upper(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``x`` in ``dtype``, every entry rounded toward +∞."""
    x = _floating(x)
    y = x.to(dtype)
    if torch.finfo(dtype).bits >= torch.finfo(x.dtype).bits:
        return y
    return torch.where(y.to(x.dtype) < x, round_up(y), y)
