"""Helpers of the Zonotope (DeepZ) domain: noise-symbol bookkeeping and rounding-error budgets.

Kept apart from :mod:`absint.domains.zonotope` so the domain module reads as a list of transformers.

Noise symbols. Every generator row of an element carries a global integer id (``ids``). Rows
are only ever created (input box, one per unstable ReLU / S-shaped neuron, one per relaxed
max-pool output) with fresh ids, dropped (all-zero rows, order reduction) or carried along; two
elements that share an ancestor therefore agree on what a row means, and the residual ``Add``
aligns rows by id, so correlations through both branches are kept exactly.

Within one id the *batch items are independent*: row ``r`` of item ``b`` and row ``r`` of item
``b'`` are different symbols (items are separate regions that never interact). This is what lets
new symbols be packed per item (item ``b``'s unstable neurons fill rows ``0..count_b-1``; the
rest is zero padding), so the generator count grows with the largest per-item count, not with
their union.

Floating point. The budgets below are the classical a-priori bounds for float dot products in any
summation order (Higham, *Accuracy and Stability of Numerical Algorithms*, §3.1):
``|fl(Σ a_i b_i) − Σ a_i b_i| ≤ γ_n Σ|a_i b_i|`` with ``γ_n = n·u/(1 − n·u)``, ``u`` the unit
roundoff. :func:`gamma` doubles that (and adds 2) as a safety factor, which also covers the
evaluation of the error terms themselves.
"""
from __future__ import annotations

import threading

import torch
import torch.nn.functional as F

from absint.linear import LinearOperator
from absint.rounding import inner_length

_ID_LOCK = threading.Lock()
_ID_NEXT = [0]


def new_ids(n: int) -> torch.Tensor:
    """``n`` fresh noise-symbol ids (int64, CPU), unique within this process."""
    with _ID_LOCK:
        start = _ID_NEXT[0]
        _ID_NEXT[0] += n
    return torch.arange(start, start + n, dtype=torch.int64)


def unit_roundoff(dtype: torch.dtype) -> float:
    """``u``: half the machine epsilon of ``dtype`` (2⁻⁵³ for float64)."""
    return torch.finfo(dtype).eps / 2


def gamma(n: int, dtype: torch.dtype) -> float:
    """Safety-doubled ``γ_{n+2}``: relative error budget of an ``n``-term dot product."""
    u = unit_roundoff(dtype)
    m = (n + 2) * u
    return 2.0 * m / (1.0 - m)


def dot_length(op: LinearOperator) -> int:
    """Number of products summed per output entry of ``op`` (for the rounding budget)."""
    return inner_length(op)


def pack_new_generators(beta: torch.Tensor, mask: torch.Tensor) -> torch.Tensor | None:
    """One new generator row per masked neuron, packed per batch item.

    ``beta``, ``mask``: ``[B, *shape]``. Returns ``[B, U, *shape]`` with ``U`` the largest per-item
    count (``None`` if no neuron is masked); row ``r`` of item ``b`` holds ``beta`` at item ``b``'s
    ``r``-th masked neuron (in flat order) and zeros elsewhere; rows past the item's count are 0.
    """
    b = beta.shape[0]
    shape = tuple(beta.shape[1:])
    flat = beta.reshape(b, -1)
    m = mask.reshape(b, -1)
    counts = m.sum(1)
    u = int(counts.max()) if b else 0
    if u == 0:
        return None
    # Stable sort puts each item's masked neurons first, in increasing flat index.
    order = torch.argsort((~m).to(torch.int8), dim=1, stable=True)[:, :u]
    valid = torch.arange(u, device=beta.device)[None, :] < counts[:, None]
    vals = flat.gather(1, order) * valid.to(flat.dtype)
    out = torch.zeros(b, u, flat.shape[1], dtype=beta.dtype, device=beta.device)
    out.scatter_(2, order[:, :, None], vals[:, :, None])
    return out.reshape(b, u, *shape)


def union_generators(gx: torch.Tensor, ix: torch.Tensor, gy: torch.Tensor, iy: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Align two generator sets by noise-symbol id.

    Returns ``(gx', gy', ids)``: both ``[B, K, *shape]`` over the union of ids (``x``'s rows first,
    in order, then ``y``'s rows that ``x`` lacks), zero where an element has no such symbol.
    """
    if ix.shape == iy.shape and torch.equal(ix, iy):
        return gx, gy, ix
    kx = ix.numel()
    if kx:
        sorted_x, perm = torch.sort(ix)
        pos = torch.searchsorted(sorted_x, iy).clamp(max=kx - 1)
        shared = sorted_x[pos] == iy
        where_y = torch.where(shared, perm[pos], torch.zeros_like(iy))
    else:
        shared = torch.zeros_like(iy, dtype=torch.bool)
        where_y = torch.zeros_like(iy)
    n_new = int((~shared).sum())
    where_y = where_y.clone()
    where_y[~shared] = kx + torch.arange(n_new, dtype=torch.int64)
    ids = torch.cat([ix, iy[~shared]])
    b, shape = gx.shape[0], tuple(gx.shape[2:])
    gx2 = torch.cat([gx, gx.new_zeros(b, n_new, *shape)], 1) if n_new else gx
    gy2 = gy.new_zeros(b, kx + n_new, *shape)
    gy2.index_copy_(1, where_y.to(gy.device), gy)
    return gx2, gy2, ids


def unfold_windows(t: torch.Tensor, kernel: tuple[int, int], stride: tuple[int, int],
                   padding: tuple[int, int]) -> torch.Tensor:
    """Max-pool windows of ``t`` ``[N, C, H, W]`` as ``[N, C, K, L]`` (K = window size, L = outputs)."""
    n, c = t.shape[:2]
    cols = F.unfold(t, kernel, padding=padding, stride=stride)
    # explicit window count: ``-1`` cannot be inferred for an empty tensor (no generators)
    return cols.reshape(n, c, kernel[0] * kernel[1], cols.shape[-1])


def window_validity(shape: tuple[int, int, int], kernel, stride, padding, device) -> torch.Tensor:
    """``[1, 1, K, L]`` bool: True where a window entry is a real input (not padding)."""
    ones = torch.ones(1, 1, shape[1], shape[2], device=device)
    return unfold_windows(ones, kernel, stride, padding) > 0
