"""Local coefficient windows ("patches") for back-substituting rows of convolutional nodes.

A row that bounds one neuron of a convolution's output depends, through convolutions, element-wise
activations and normalisations, only on a small window of each earlier node (its receptive field).
Instead of a dense ``[R, C·H·W]`` coefficient matrix, :class:`Patches` stores each row's
coefficients on a window ``[R, C, h, w]`` whose top-left corner ``(y0, x0)`` lies anywhere relative
to the node's grid (windows may overhang it: there the coefficients are zero). Back-substitution
through a convolution is then ``conv_transpose2d`` of the windows (the window grows by the kernel),
through element-wise steps a product with the per-member vectors gathered at the window, and
concretisation a dot product with the gathered bounds — the work shrinks from the layer size to the
receptive field (auto_LiRPA's "patches mode", Xu et al. NeurIPS 2020, does the same for CROWN).
Anything else (dense layers, reshapes, pooling, joins of different windows) turns the rows dense.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from absint.linear import ConvOperator

__all__ = ["KernelRows", "Patches", "Windows", "conv_step", "conv_transpose_rows", "kernel_dots", "unit_patches",
           "window_map"]


@dataclass
class KernelRows:
    """Where rows came from when each is ``±e_o`` of one neuron ``o = (c, y, x)`` of a convolution's
    output (:func:`unit_patches`, ``op`` None) or that row carried through the convolution ``op``
    (:func:`conv_step`): then row ``r``'s window is ``sign_r · W[c_r]`` placed at output position
    ``(y_r, x_r)``, so its dot products with whole per-neuron vectors are one convolution of those
    vectors (:func:`kernel_dots`) instead of a gather of every row's window."""

    op: ConvOperator | None
    chan: torch.Tensor  # [R] long
    sign: torch.Tensor  # [R] ±1.0 (the rows' dtype)
    y: torch.Tensor  # [R] long: position in the convolution's output grid
    x: torch.Tensor

    def select(self, keep) -> "KernelRows":
        return KernelRows(self.op, self.chan[keep], self.sign[keep], self.y[keep], self.x[keep])


@dataclass
class Patches:
    """Coefficients of ``R`` rows on windows of a ``(C, H, W)`` grid (see the module docstring)."""

    data: torch.Tensor  # [R, C, h, w], zero outside the grid
    y0: torch.Tensor  # [R] long: window row offset in the grid
    x0: torch.Tensor  # [R] long
    grid: tuple[int, int, int]
    kernel: KernelRows | None = None  # set while the rows are (a convolution of) unit rows

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.data.shape[0]), int(self.data.shape[1] * self.data.shape[2] * self.data.shape[3])

    def select(self, keep) -> "Patches":
        return Patches(self.data[keep], self.y0[keep], self.x0[keep], self.grid,
                       None if self.kernel is None else self.kernel.select(keep))

    __getitem__ = select

    def same_windows(self, other: "Patches") -> bool:
        return (self.data.shape == other.data.shape and self.y0 is other.y0) or (
            self.data.shape == other.data.shape and bool(torch.equal(self.y0, other.y0))
            and bool(torch.equal(self.x0, other.x0)))

    def masked(self) -> "Patches":
        """The windows with every entry outside the grid set to zero."""
        _, H, W = self.grid
        h, w = self.data.shape[2:]
        ys = self.y0[:, None] + torch.arange(h, device=self.y0.device)
        xs = self.x0[:, None] + torch.arange(w, device=self.x0.device)
        my = ((ys >= 0) & (ys < H)).to(self.data.dtype)
        mx = ((xs >= 0) & (xs < W)).to(self.data.dtype)
        return Patches(self.data * (my[:, None, :, None] * mx[:, None, None, :]), self.y0, self.x0, self.grid,
                       self.kernel)

    def dense(self) -> torch.Tensor:
        """The rows as a dense ``[R, C·H·W]`` matrix."""
        C, H, W = self.grid
        R, _, h, w = self.data.shape
        P = _overhang(self)
        Hp, Wp = H + 2 * P, W + 2 * P
        rows = torch.arange(R, device=self.y0.device)
        idx = _flat_index(self, rows, P, Hp, Wp)  # one canvas per row
        out = self.data.new_zeros(R * C * Hp * Wp).index_put((idx.reshape(-1),), self.data.reshape(-1))
        out = out.reshape(R, C, Hp, Wp)[:, :, P:P + H, P:P + W]
        return out.reshape(R, -1)

    def abs_dot(self, win: torch.Tensor) -> torch.Tensor:
        """``Σ |data| ⊙ win`` per row."""
        return (self.data.abs() * win).sum((1, 2, 3))

    def dot(self, win: torch.Tensor) -> torch.Tensor:
        return (self.data * win).sum((1, 2, 3))


def _overhang(p: Patches) -> int:
    """How far the windows reach outside the grid (the padding the gathers need)."""
    _, H, W = p.grid
    h, w = p.data.shape[2:]
    if p.y0.numel() == 0:
        return 0
    lo = -min(int(p.y0.min()), int(p.x0.min()))
    hi = max(int(p.y0.max()) + h - H, int(p.x0.max()) + w - W)
    return max(0, lo, hi)


def _flat_index(p: Patches, bidx: torch.Tensor | None, P: int, Hp: int, Wp: int) -> torch.Tensor:
    """Flat indices ``[R, C·h·w]`` of every window entry in the padded ``[B, C, Hp, Wp]`` tensor."""
    C = p.grid[0]
    R, _, h, w = p.data.shape
    dev = p.y0.device
    base = (p.y0 + P) * Wp + (p.x0 + P)
    base = base if bidx is None else base + bidx * (C * Hp * Wp)
    off = (torch.arange(C, device=dev)[:, None, None] * (Hp * Wp) + torch.arange(h, device=dev)[None, :, None] * Wp
           + torch.arange(w, device=dev)[None, None, :]).reshape(-1)
    return base[:, None] + off[None, :]


class Windows:
    """Gathers per-member vectors (``[B, C·H·W]``) at the rows' windows (zero outside the grid).

    Rows of the same member with the same window (e.g. all channels at one position) share one
    gather: the distinct windows are gathered once, then copied to their rows."""

    def __init__(self, p: Patches, bidx: torch.Tensor | None) -> None:
        self.p = p
        self.bidx = bidx
        self.P = _overhang(p)
        C, H, W = p.grid
        self.Hp, self.Wp = H + 2 * self.P, W + 2 * self.P
        key = (p.y0 + self.P) * self.Wp + (p.x0 + self.P)
        if bidx is not None:
            key = key + bidx * (self.Hp * self.Wp)
        ukey, self.inv = torch.unique(key, return_inverse=True)
        self.single = int(ukey.numel()) == int(key.numel())
        if self.single:  # every row its own window: gather in row order
            ukey = key
        self._ukey = ukey
        off = _offsets(C, p.data.shape[2], p.data.shape[3], self.Hp, self.Wp, p.y0.device)
        b = ukey // (self.Hp * self.Wp)
        self.idx = (ukey + b * ((C - 1) * self.Hp * self.Wp))[:, None] + off[None, :]
        self._shared = None

    def take(self, vec: torch.Tensor) -> torch.Tensor:
        """``vec`` ``[B, C·H·W]`` (per member; ``[1, ·]`` or flat ``[C·H·W]``: shared) at the windows."""
        C, H, W = self.p.grid
        if vec.dim() == 1 or (vec.shape[0] == 1 and self.bidx is not None):
            idx = self.shared_idx()
            vec = vec.reshape(1, -1)
        else:
            idx = self.idx
        v = vec.reshape(vec.shape[0], C, H, W)
        if self.P:
            v = F.pad(v, (self.P, self.P, self.P, self.P))
        vals = torch.take(v, idx)
        if not self.single:
            vals = vals.index_select(0, self.inv)
        return vals.reshape(self.p.data.shape)

    def take_stack(self, mat: torch.Tensor) -> torch.Tensor:
        """Per-member stacked vectors ``mat`` ``[B, k, C·H·W]`` at the windows → ``[R, k, C·h·w]``."""
        C, H, W = self.p.grid
        b, k = mat.shape[0], mat.shape[1]
        v = mat.reshape(b * k, C, H, W)
        if self.P:
            v = F.pad(v, (self.P, self.P, self.P, self.P))
        v = v.reshape(b, k, -1)
        block = C * self.Hp * self.Wp
        mb = self._ukey // (self.Hp * self.Wp)
        idx = self.idx - mb[:, None] * block  # position within the member's [C, Hp, Wp] block
        idx = (mb * (k * block))[:, None, None] + (torch.arange(k, device=idx.device) * block)[None, :, None] \
            + idx[:, None, :]
        vals = torch.take(v, idx)
        if not self.single:
            vals = vals.index_select(0, self.inv)
        return vals

    def shared_idx(self) -> torch.Tensor:
        if self.bidx is None:
            return self.idx
        if self._shared is None:  # the same windows, all read from member 0
            C = self.p.grid[0]
            pos = self._ukey % (self.Hp * self.Wp)
            self._shared = pos[:, None] + _offsets(C, self.p.data.shape[2], self.p.data.shape[3], self.Hp, self.Wp,
                                                   pos.device)[None, :]
        return self._shared


def _offsets(C: int, h: int, w: int, Hp: int, Wp: int, device) -> torch.Tensor:
    return (torch.arange(C, device=device)[:, None, None] * (Hp * Wp) + torch.arange(h, device=device)[None, :, None] * Wp
            + torch.arange(w, device=device)[None, None, :]).reshape(-1)


#: A convolution step on small windows is one matrix product with the *window map* (the adjoint on one
#: window, ``[C·h·w, C_in·h'·w']``, built once per operator and window size) on a CPU, where float64
#: ``conv_transpose2d`` runs one small product per row: when the map has at most
#: ``WINDOW_MAP_ENTRIES`` entries and at most ``WINDOW_MAP_RATIO`` times the convolution's own
#: multiplications. ERAN ConvSmall's first convolution, 420 rows of 16×4×4 windows, one thread:
#: 0.81 → 0.33 ms; a 512 × 576 map was break-even, a 2304 × 5408 one 6× slower.
WINDOW_MAP_ENTRIES = 1 << 17
WINDOW_MAP_RATIO = 8
_WINDOW_MAPS: "weakref.WeakKeyDictionary[ConvOperator, dict]" = weakref.WeakKeyDictionary()


def window_map(op: ConvOperator, h: int, w: int, like: torch.Tensor) -> torch.Tensor | None:
    """The window map of ``op`` for ``h × w`` windows ``[C·h·w, C_in, h', w']`` (its entries are the
    kernel's weights, exactly), or None where ``conv_transpose2d`` is the better step."""
    if like.device.type != "cpu" or torch.is_grad_enabled() and like.requires_grad:
        return None
    memo = _WINDOW_MAPS.get(op)
    if memo is None:
        memo = _WINDOW_MAPS[op] = {}
    key = (h, w, like.dtype)
    if key not in memo:
        wt = op.weight
        c_out, k = int(wt.shape[0]), int(wt.shape[1] * wt.shape[2] * wt.shape[3])
        n = c_out * h * w
        oh = (h - 1) * op.stride[0] + op.dilation[0] * (int(wt.shape[2]) - 1) + 1
        ow = (w - 1) * op.stride[1] + op.dilation[1] * (int(wt.shape[3]) - 1) + 1
        m = n * int(wt.shape[1]) * op.groups * oh * ow
        if m > WINDOW_MAP_ENTRIES or m > WINDOW_MAP_RATIO * n * k * op.groups:
            memo[key] = None
        else:
            basis = torch.eye(n, dtype=like.dtype, device=like.device).reshape(n, c_out, h, w)
            memo[key] = F.conv_transpose2d(basis, wt.to(like.dtype), None, op.stride, 0, 0, op.groups, op.dilation)
    return memo[key]


def conv_transpose_rows(y: torch.Tensor, op: ConvOperator, out_hw: tuple[int, int],
                        padding: tuple[int, int]) -> torch.Tensor:
    """``F.conv_transpose2d(y, W, stride, padding)`` cropped or zero-extended to ``out_hw``, for many
    rows ``y`` ``[R, C_out, h, w]`` (groups 1, no dilation): one matrix product over all rows and
    positions (rows innermost, so the tap additions are vectorised over rows), then the kernel taps
    added in ``col2im``'s order — ``conv_transpose2d``'s per-row products and ``col2im`` without
    its per-row loop. The sums are the same dot products of length ``C_out`` (BLAS may order them
    differently; the rounding allowance of :func:`~.engine.inner_length` covers any order). ERAN
    ConvSmall, 96 rows ``[32, 5, 5]`` → ``[16, 13, 13]``: 2.3 → 1.3 ms; 512 windows
    ``[16, 4, 4]`` → ``[1, 10, 10]``: 0.78 → 0.50 ms (one thread)."""
    w = op.weight
    R, Co, Ho, Wo = y.shape
    Ci, kh, kw = w.shape[1], w.shape[2], w.shape[3]
    (sy, sx), (py, px) = op.stride, padding
    wt = _operator_memo_t(op)  # [(ky, kx, ci), co]
    yt = y.reshape(R, -1).t().contiguous().reshape(Co, Ho * Wo * R)
    taps = (wt @ yt).reshape(kh, kw, Ci, Ho, Wo, R)
    hf, wf = max(out_hw[0] + 2 * py, (Ho - 1) * sy + kh), max(out_hw[1] + 2 * px, (Wo - 1) * sx + kw)
    out = y.new_zeros(Ci, hf, wf, R)
    for ky in range(kh):
        for kx in range(kw):
            out[:, ky:ky + sy * (Ho - 1) + 1:sy, kx:kx + sx * (Wo - 1) + 1:sx] += taps[ky, kx]
    out = out[:, py:py + out_hw[0], px:px + out_hw[1]]
    return out.reshape(-1, R).t().reshape(R, Ci, *out_hw)


_TAPS: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}


def _operator_memo_t(op: ConvOperator) -> torch.Tensor:
    """The kernel as ``[(ky, kx, c_in), c_out]`` (memoised per weight tensor)."""
    w = op.weight
    memo = _TAPS.get(id(w))
    if memo is None or memo[0] is not w:
        if len(_TAPS) > 64:
            _TAPS.clear()
        memo = _TAPS[id(w)] = (w, w.permute(2, 3, 1, 0).reshape(-1, w.shape[0]).contiguous())
    return memo[1]


def fast_transpose(op: ConvOperator) -> bool:
    """Whether :func:`conv_transpose_rows` applies to ``op``."""
    return op.groups == 1 and tuple(op.dilation) == (1, 1)


def conv_step(p: Patches, op: ConvOperator, many: bool = False) -> Patches:
    """Back-substitute the windows of a convolution's output to its input (exact up to rounding);
    ``many``: rows of several batch members (:func:`conv_transpose_rows` where no window map applies)."""
    R, _, h, w = p.data.shape
    tmap = window_map(op, h, w, p.data) if not (h == 1 and w == 1 and op.groups == 1) else None
    if p.data.shape[2] == 1 and p.data.shape[3] == 1 and op.groups == 1:  # one position: a product
        w = op.weight
        data = (p.data.reshape(p.data.shape[0], -1) @ w.reshape(w.shape[0], -1)).reshape(-1, *w.shape[1:])
        if op.dilation != (1, 1):
            data = F.conv_transpose2d(p.data, w, None, op.stride, 0, 0, op.groups, op.dilation)
    elif tmap is not None:  # small windows: one product with the window map
        data = (p.data.reshape(R, -1) @ tmap.reshape(tmap.shape[0], -1)).reshape(R, *tmap.shape[1:])
    elif many and fast_transpose(op):
        h, w_ = p.data.shape[2:]
        kh, kw = op.weight.shape[2:]
        data = conv_transpose_rows(p.data, op, ((h - 1) * op.stride[0] + kh, (w_ - 1) * op.stride[1] + kw), (0, 0))
    else:
        data = F.conv_transpose2d(p.data, op.weight, None, op.stride, 0, 0, op.groups, op.dilation)
    y0 = p.y0 * op.stride[0] - op.padding[0]
    x0 = p.x0 * op.stride[1] - op.padding[1]
    kr = p.kernel
    kernel = None
    if kr is not None and kr.op is None and op.groups == 1:
        kernel = KernelRows(op, kr.chan, kr.sign, kr.y, kr.x)
    return Patches(data, y0, x0, tuple(op.in_shape), kernel).masked()


#: the vectors :func:`kernel_dots` convolves must be at least this many per row (below it, the
#: per-row gather of :class:`Windows` is cheaper than a convolution over the whole grid)
KERNEL_ROWS_MIN = 64
_KERNEL_STACKS: "weakref.WeakKeyDictionary[ConvOperator, dict]" = weakref.WeakKeyDictionary()


def kernel_dots(p: Patches, mat: torch.Tensor, which: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """``data·v_j`` and ``data⁻·v_j`` (``[R, len(which)]`` each) for the vectors ``v_j = mat[0, j]``,
    ``j`` in ``which`` (``mat``: ``[1, k, C·H·W]``, one member), of rows with :class:`KernelRows` ``op``:
    row ``r`` is ``s·W[c]`` at ``(y, x)``, so ``data·v = s·(W ⋆ v)[c, y, x]`` and ``data⁻·v`` is
    ``(W⁻ ⋆ v)[c, y, x]`` for ``s = 1``, ``−(W⁺ ⋆ v)[c, y, x]`` for ``s = −1`` — one convolution of the
    vectors with ``[W, W⁻, W⁺]`` (``⋆``: the convolution ``op``, zero padding = the masked window).
    Each entry sums the same products as the window dot product (in another order), so the rounding
    bounds of :mod:`.backward` (``γ_n``, ``n`` ≥ the window size) still hold."""
    kr = p.kernel
    op = kr.op
    C, H, W = p.grid
    memo = _KERNEL_STACKS.get(op)
    if memo is None:
        memo = _KERNEL_STACKS[op] = {}
    stack = memo.get(mat.dtype)
    if stack is None:
        w = op.weight.to(mat.dtype)
        stack = memo[mat.dtype] = torch.cat([w, w.clamp(max=0), w.clamp(min=0)]).contiguous()
    m = len(which)
    v = mat[0, list(which)].reshape(m, C, H, W)
    z = F.conv2d(v, stack, None, op.stride, op.padding, op.dilation)  # [m, 3·C_out, Ho, Wo]
    co, ho, wo = (int(t) for t in z.shape[1:])
    z = z.reshape(m, 3, (co // 3) * ho * wo).permute(2, 1, 0)  # [n_out, 3, m]
    sel = z[kr.chan * (ho * wo) + kr.y * wo + kr.x]  # [R, 3, m]
    sign = kr.sign[:, None]
    td = sel[:, 0] * sign
    tn = torch.where(sign > 0, sel[:, 1], -sel[:, 2])
    return td, tn


def unit_patches(grid: tuple[int, int, int], flat: torch.Tensor, dtype: torch.dtype) -> Patches:
    """Rows ``+e_i`` then ``−e_i`` for the flat neuron indices ``flat`` (``c·H·W + y·W + x``) of a grid."""
    C, H, W = grid
    k = int(flat.numel())
    c, y, x = flat // (H * W), (flat // W) % H, flat % W
    data = torch.zeros(2 * k, C, 1, 1, dtype=dtype, device=flat.device)
    r = torch.arange(k, device=flat.device)
    data[r, c, 0, 0] = 1.0
    data[r + k, c, 0, 0] = -1.0
    sign = torch.cat([torch.ones(k, dtype=dtype, device=flat.device), -torch.ones(k, dtype=dtype, device=flat.device)])
    yy, xx = torch.cat([y, y]), torch.cat([x, x])
    return Patches(data, yy, xx, grid, KernelRows(None, torch.cat([c, c]), sign, yy, xx))
