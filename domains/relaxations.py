"""Per-neuron relaxations: pure functions of pre-activation bounds ``(l, u)`` → linear bounds.

Each function returns a :class:`LinearBounds` ``(lower_slope, lower_offset, upper_slope,
upper_offset)`` of tensors shaped like ``l``, such that for every ``x ∈ [l, u]``::

    lower_slope·x + lower_offset ≤ f(x) ≤ upper_slope·x + upper_offset

They are shared by all domains (one reusable table, as in jax_verify) and tested by sampling
without any network (tests/test_relaxations.py).

References: DeepPoly — Singh et al., "An Abstract Domain for Certifying Neural Networks",
POPL 2019 (ReLU area heuristic; S-shaped rules); DeepZ — Singh et al., "Fast and Effective
Robustness Certification", NeurIPS 2018 (minimal-area zonotope transformers).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import torch


@dataclass(frozen=True)
class LinearBounds:
    """Lines ``lower_slope·x + lower_offset ≤ f(x) ≤ upper_slope·x + upper_offset`` on ``[l, u]``."""

    lower_slope: torch.Tensor
    lower_offset: torch.Tensor
    upper_slope: torch.Tensor
    upper_offset: torch.Tensor


ReluLowerMode = Literal["area", "zero", "one", "parallel"]


def relu_upper_line(l: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The chord of ReLU over ``[l, u]`` for unstable neurons; exact lines for stable ones.

    Returns ``(slope, offset)``: ``u/(u−l)·(x − l)`` when ``l < 0 < u``, ``x`` when ``l ≥ 0``,
    ``0`` when ``u ≤ 0``.
    """
    unstable = (l < 0) & (u > 0)
    active = l >= 0
    denom = torch.where(unstable, u - l, torch.ones_like(u))
    slope = torch.where(unstable, u / denom, active.to(u.dtype))
    offset = torch.where(unstable, -l * slope, torch.zeros_like(u))
    return slope, offset


def relu_lower_slope(l: torch.Tensor, u: torch.Tensor, mode: ReluLowerMode = "area") -> torch.Tensor:
    """Slope ``α ∈ [0, 1]`` of the lower line ``α·x`` of an unstable ReLU.

    ``area`` is DeepPoly's heuristic: ``α = 1`` if ``u > −l`` else ``0`` (the smaller of the two
    triangles). ``parallel`` uses the chord's slope ``u/(u−l)`` (CROWN-Ada style, and the slope
    that makes DeepPoly coincide with DeepZ's parallelogram). Stable neurons get 1 (active) or
    0 (inactive) regardless of ``mode``.
    """
    if mode == "area":
        alpha = (u > -l).to(u.dtype)
    elif mode == "zero":
        alpha = torch.zeros_like(u)
    elif mode == "one":
        alpha = torch.ones_like(u)
    elif mode == "parallel":
        unstable = (l < 0) & (u > 0)
        alpha = torch.where(unstable, u / torch.where(unstable, u - l, torch.ones_like(u)), torch.zeros_like(u))
    else:
        raise ValueError(f"unknown ReLU lower-slope mode {mode!r}")
    alpha = torch.where(l >= 0, torch.ones_like(u), alpha)
    return torch.where(u <= 0, torch.zeros_like(u), alpha)


def relu_deeppoly(l: torch.Tensor, u: torch.Tensor, mode: ReluLowerMode = "area") -> LinearBounds:
    """DeepPoly's ReLU relaxation: chord above, ``α·x`` below."""
    us, uo = relu_upper_line(l, u)
    ls = relu_lower_slope(l, u, mode)
    return LinearBounds(ls, torch.zeros_like(u), us, uo)


def relu_zonotope(l: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DeepZ's minimal-area ReLU: ``y = λ·x + μ + μ·ε_new`` with ``ε_new ∈ [−1, 1]``.

    Returns ``(λ, μ, β)``: slope, offset and the coefficient of the new noise symbol. For an
    unstable neuron ``λ = u/(u−l)``, ``μ = β = −λ·l/2``; stable neurons are exact (``β = 0``).
    """
    unstable = (l < 0) & (u > 0)
    lam = torch.where(unstable, u / torch.where(unstable, u - l, torch.ones_like(u)), (l >= 0).to(u.dtype))
    mu = torch.where(unstable, -lam * l / 2, torch.zeros_like(u))
    return lam, mu, mu


def _s_shaped(f: Callable[[torch.Tensor], torch.Tensor], df: Callable[[torch.Tensor], torch.Tensor],
              l: torch.Tensor, u: torch.Tensor) -> LinearBounds:
    """DeepPoly lines for a sigmoid-like function (convex on x<0, concave on x>0).

    With chord slope ``λ = (f(u)−f(l))/(u−l)`` and ``λ' = min(f'(l), f'(u))``:
    ``l ≥ 0`` (concave): chord below, tangent-slope line through ``u`` above;
    ``u ≤ 0`` (convex): ``λ'`` line through ``l`` below, chord above;
    otherwise ``λ'`` lines through ``l`` (below) and ``u`` (above).
    Degenerate intervals (``u − l`` tiny) use the constant bounds ``f(l) ≤ f ≤ f(u)``.
    """
    fl, fu = f(l), f(u)
    width = u - l
    tiny = width <= 1e-12 * (1 + torch.maximum(l.abs(), u.abs()))
    chord = torch.where(tiny, torch.zeros_like(u), (fu - fl) / torch.where(tiny, torch.ones_like(width), width))
    lam_min = torch.minimum(df(l), df(u))
    concave = l >= 0
    convex = u <= 0
    lower_slope = torch.where(concave, chord, lam_min)
    upper_slope = torch.where(convex, chord, lam_min)
    lower_slope = torch.where(tiny, torch.zeros_like(u), lower_slope)
    upper_slope = torch.where(tiny, torch.zeros_like(u), upper_slope)
    lower_offset = fl - lower_slope * l
    upper_offset = fu - upper_slope * u
    return LinearBounds(lower_slope, lower_offset, upper_slope, upper_offset)


def sigmoid_deeppoly(l: torch.Tensor, u: torch.Tensor) -> LinearBounds:
    """DeepPoly's sigmoid relaxation (see :func:`_s_shaped`)."""
    return _s_shaped(torch.sigmoid, lambda x: torch.sigmoid(x) * (1 - torch.sigmoid(x)), l, u)


def tanh_deeppoly(l: torch.Tensor, u: torch.Tensor) -> LinearBounds:
    """DeepPoly's tanh relaxation (see :func:`_s_shaped`)."""
    return _s_shaped(torch.tanh, lambda x: 1 - torch.tanh(x) ** 2, l, u)


def _s_shaped_zonotope(f, df, l: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DeepZ's S-shaped transformer: ``y = λx + μ + β·ε_new`` with ``λ = min(f'(l), f'(u))``.

    ``f(x) − λx`` is non-decreasing on ``[l, u]`` (``f'`` is unimodal with its peak at 0), so its
    range is ``[f(l) − λl, f(u) − λu]``; ``μ`` is the midpoint and ``β`` the half-width.
    """
    lam = torch.minimum(df(l), df(u))
    lo = f(l) - lam * l
    hi = f(u) - lam * u
    return lam, (hi + lo) / 2, (hi - lo).clamp(min=0) / 2


def sigmoid_zonotope(l: torch.Tensor, u: torch.Tensor):
    """DeepZ sigmoid: ``(λ, μ, β)`` as in :func:`_s_shaped_zonotope`."""
    return _s_shaped_zonotope(torch.sigmoid, lambda x: torch.sigmoid(x) * (1 - torch.sigmoid(x)), l, u)


def tanh_zonotope(l: torch.Tensor, u: torch.Tensor):
    """DeepZ tanh: ``(λ, μ, β)`` as in :func:`_s_shaped_zonotope`."""
    return _s_shaped_zonotope(torch.tanh, lambda x: 1 - torch.tanh(x) ** 2, l, u)


@dataclass(frozen=True)
class MaxPoolLines:
    """DeepPoly lines of ``y = max(x_1, ..., x_k)`` per pooling window (flat over ``C·Ho·Wo``).

    ``index[b, p]`` is the flat input index (over ``C·H·W``) of the window entry ``j*`` with the
    largest lower bound. Lower line: ``y ≥ x_{j*}``. If ``exact[b, p]`` (``l_{j*} ≥ u_i`` for every
    other entry ``i``, so ``x_{j*}`` is always the maximum) the upper line is ``y ≤ x_{j*}`` too;
    otherwise it is the constant ``y ≤ max_i u_i``. ``lower``/``upper`` (``[B, C, Ho, Wo]``) are the
    concrete bounds ``max_i l_i`` and ``max_i u_i``.
    """

    index: torch.Tensor
    exact: torch.Tensor
    lower: torch.Tensor
    upper: torch.Tensor


def maxpool_deeppoly(l: torch.Tensor, u: torch.Tensor, kernel: tuple[int, int], stride: tuple[int, int],
                     padding: tuple[int, int]) -> MaxPoolLines:
    """DeepPoly's max-pooling relaxation (Singh et al., POPL 2019, §4; ERAN's maxpool rule).

    ``l``, ``u``: ``[B, C, H, W]``. Padding counts as ``-inf`` (never the maximum), as in ONNX.
    """
    B, C, H, W = l.shape
    ph, pw = padding
    neg_inf = float("-inf")
    idx = torch.arange(C * H * W, dtype=l.dtype, device=l.device).reshape(1, C, H, W)
    if ph or pw:
        l = torch.nn.functional.pad(l, (pw, pw, ph, ph), value=neg_inf)
        u = torch.nn.functional.pad(u, (pw, pw, ph, ph), value=neg_inf)
        idx = torch.nn.functional.pad(idx, (pw, pw, ph, ph), value=-1.0)
    unfold = torch.nn.functional.unfold
    kk = kernel[0] * kernel[1]
    lp = unfold(l, kernel, stride=stride).reshape(B, C, kk, -1)
    up = unfold(u, kernel, stride=stride).reshape(B, C, kk, -1)
    ip = unfold(idx, kernel, stride=stride).reshape(1, C, kk, -1).expand(B, -1, -1, -1)
    j = lp.argmax(dim=2, keepdim=True)
    lmax = lp.gather(2, j).squeeze(2)
    u_others = up.scatter(2, j, neg_inf).amax(dim=2)
    exact = lmax >= u_others
    index = ip.gather(2, j).squeeze(2).round().to(torch.long)
    umax = up.amax(dim=2)
    oh = (H + 2 * ph - kernel[0]) // stride[0] + 1
    ow = (W + 2 * pw - kernel[1]) // stride[1] + 1
    return MaxPoolLines(index.reshape(B, -1), exact.reshape(B, -1), lmax.reshape(B, C, oh, ow),
                        umax.reshape(B, C, oh, ow))
