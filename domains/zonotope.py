"""Zonotope domain with DeepZ's transformers.

Singh, Gehr, Mirman, Püschel, Vechev, "Fast and Effective Robustness Certification", NeurIPS 2018.

An element is an affine form in shared noise symbols ``ε ∈ [−1, 1]^k`` plus an interval term::

    x = centre + Σ_i ε_i · generator_i + [−err, err]          (per batch item)

kept with a box ``[lower, upper]`` of sound bounds proved alongside. ``bounds`` returns the
intersection of the zonotope's own bounds with that box.

* **Affine / conv** (exact): ``op.forward`` on the centre and on every generator (a conv stays a
  conv, never a dense matrix).
* **ReLU** (DeepZ's transformer, area-minimal in the (x, y) plane): for ``l < 0 < u``,
  ``y = λx + μ + μ·ε_new`` with ``λ = u/(u−l)``, ``μ = −λl/2``; one new symbol per *unstable*
  neuron only; stable neurons are exact. ``l, u`` are the *best* bounds known (zonotope ∩ stored box), so bounds proved
  elsewhere and handed over by :meth:`ZonotopeDomain.meet_box` tighten the relaxation. This is
  sound because every concrete value lies in ``[l, u]``; the relaxation need not cover the
  zonotope's spurious points outside it.
* **Sigmoid / tanh** (DeepZ's S-shaped transformer): ``λ = min(f'(l), f'(u))``, a new symbol per
  neuron whose interval has positive width.
* **MaxPool**: the window's output *is* input ``j`` when ``x_i − x_j ≤ 0`` is proved for every
  other ``i`` (upper bound of the difference taken on the zonotope, so correlations count);
  otherwise a new symbol spans ``[max_i l_i, max_i u_i]`` (as ERAN's DeepZ).
* **Add** (exact): generator rows aligned by noise-symbol id (see :mod:`absint.domains.zonotope_ops`).
* **Reshape** (exact).
* **linear_bounds** bounds ``C y + d`` on the zonotope itself: ``C·centre − Σ_i |C·g_i|``
  (back-substitution of the property rows), and never worse than interval arithmetic on
  :meth:`bounds`.

The interval ``err`` term collects float rounding (``sound_fp``) and generators merged away by
order reduction (``max_generators``); it propagates like a box (``|A|·err``).

Floating point (``sound_fp=True``, the default): every transformer adds to ``err`` an a-priori
bound on its own rounding error (``γ_n |A|(|c| + Σ|g| + err)`` for an ``n``-term affine map,
a few ulps for ReLU/S-shaped/max-pool relaxations, see :mod:`absint.domains.zonotope_ops`), and
``bounds``/``linear_bounds`` widen their results outward by the rounding of the final sums. Not
covered: non-standard convolution algorithms (Winograd/FFT) whose error exceeds the dot-product
bound, reduced-precision modes, and the accuracy of the library's sigmoid/tanh beyond 8 ulps.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Callable

import torch
import torch.nn.functional as F

from absint.errors import DomainError
from absint.linear import DenseOperator, DiagonalOperator, LinearOperator, numel
from absint.domains.base import Domain
from absint.domains.relaxations import relu_zonotope, sigmoid_zonotope, tanh_zonotope
from absint.rounding import tiny
from absint.domains.zonotope_ops import (dot_length, gamma, new_ids, pack_new_generators, union_generators,
                                  unfold_windows, unit_roundoff, window_validity)

log = logging.getLogger(__name__)

Tensor = torch.Tensor


@dataclass(frozen=True)
class ZonotopeOptions:
    """Options of :class:`ZonotopeDomain`.

    ``track_box``: propagate an interval alongside and intersect (bounds never looser than Box).
    ``sound_fp``: account for float rounding (see the module docstring).
    ``max_generators``: if set, merge the smallest generators into the interval term whenever an
    element has more (Girard-style order reduction; sound, loses their correlations).
    ``drop_zero_generators``: remove generator rows that are zero for every batch item and neuron.
    """

    track_box: bool = True
    sound_fp: bool = True
    max_generators: int | None = None
    drop_zero_generators: bool = True


@dataclass(frozen=True, eq=False)
class ZonotopeElement:
    """``x = centre + Σ_i ε_i g_i ± err`` (per batch item), with stored sound bounds.

    ``gens`` is ``[B, k, *shape]`` (row ``i`` is the coefficient of noise symbol ``ids[i]``) or
    ``None`` while the generators are still the input box's diagonal: then ``diag_values``
    ``[B, k]`` holds the coefficient of symbol ``i`` at flat neuron ``diag_index[i]`` (kept lazy
    so the first dense layer costs ``k·n_out``, not a ``k×n_in`` by ``n_in×n_out`` product).
    """

    center: Tensor  # [B, *shape]
    gens: Tensor | None  # [B, k, *shape]
    ids: Tensor  # [k] int64, CPU
    err: Tensor  # [B, *shape] ≥ 0
    lower: Tensor  # [B, *shape] stored sound bounds (box alongside, meet_box)
    upper: Tensor
    diag_values: Tensor | None = None  # [B, k]
    diag_index: Tensor | None = None  # [k] int64 on the element's device
    _cache: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.center.shape[1:])

    @property
    def batch_size(self) -> int:
        return int(self.center.shape[0])

    @property
    def n_generators(self) -> int:
        return int(self.ids.numel())

    @property
    def lazy(self) -> bool:
        return self.gens is None

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_cache"] = {}
        return state


class ZonotopeDomain(Domain[ZonotopeElement]):
    """Zonotopes with DeepZ's minimal-area transformers (Singh et al., NeurIPS 2018)."""

    name = "deepzono"
    options_class = ZonotopeOptions
    description = "zonotopes with DeepZ's minimal-area ReLU/sigmoid/tanh transformers"

    def __init__(self, options: ZonotopeOptions | None = None, *, device: torch.device | str | None = None,
                 dtype: torch.dtype = torch.float64) -> None:
        super().__init__(options, device=device, dtype=dtype)
        self._u = unit_roundoff(dtype) if self.options.sound_fp else 0.0
        #: smallest subnormal: the absolute (underflow) part of every rounding bound
        self._tiny = tiny(dtype) if self.options.sound_fp else 0.0

    # -- small helpers ---------------------------------------------------------------------------
    def _gamma(self, n: int) -> float:
        return gamma(n, self.dtype) if self.options.sound_fp else 0.0

    def _dense_gens(self, x: ZonotopeElement) -> Tensor:
        """The generators ``[B, k, *shape]`` (materialising the lazy input diagonal)."""
        if x.gens is not None:
            return x.gens
        b, k = x.diag_values.shape
        out = x.center.new_zeros(b, k, numel(x.shape))
        out.scatter_(2, x.diag_index.view(1, k, 1).expand(b, k, 1), x.diag_values.unsqueeze(2))
        return out.reshape(b, k, *x.shape)

    def _abs_sum(self, x: ZonotopeElement) -> Tensor:
        """``Σ_i |g_i|`` ``[B, *shape]`` (cached on the element)."""
        s = x._cache.get("abs_sum")
        if s is None:
            if x.gens is None:
                b = x.batch_size
                s = x.center.new_zeros(b, numel(x.shape))
                s.scatter_(1, x.diag_index.view(1, -1).expand(b, -1), x.diag_values.abs())
                s = s.reshape(x.center.shape)
            else:
                s = torch.linalg.vector_norm(x.gens, 1, dim=1)  # fused Σ|g| (no temporary)
            x._cache["abs_sum"] = s
        return s

    def zonotope_bounds(self, x: ZonotopeElement) -> tuple[Tensor, Tensor]:
        """The zonotope's own bounds ``centre ± (Σ|g_i| + err)``, widened for rounding."""
        s = self._abs_sum(x)
        rad = s + x.err
        if self.options.sound_fp:
            rad = rad + self._gamma(x.n_generators) * s + 2 * self._u * (x.center.abs() + rad) \
                + (x.n_generators + 4) * self._tiny
        return x.center - rad, x.center + rad

    def _full(self, like: Tensor, value: float) -> Tensor:
        return torch.full_like(like, value)

    def _finish(self, center: Tensor, gens: Tensor, ids: Tensor, err: Tensor, lower: Tensor,
                upper: Tensor, *, check_rows: int | None = None, abs_sum: Tensor | None = None
                ) -> ZonotopeElement:
        """Drop all-zero generator rows (among the first ``check_rows``), reduce order, build.

        ``abs_sum`` (a sound over-approximation of ``Σ|g_i|`` known to the caller) is cached so
        the next ``bounds`` call skips a pass over the generators.
        """
        k = gens.shape[1]
        check = k if check_rows is None else check_rows
        if check and self.options.drop_zero_generators:
            keep = gens[:, :check].ne(0).any(0).reshape(check, -1).any(1)
            if not bool(keep.all()):
                keep = torch.cat([keep, keep.new_ones(k - check)])
                idx = keep.nonzero().squeeze(1)
                gens, ids = gens.index_select(1, idx), ids[idx.cpu()]
        limit = self.options.max_generators
        if limit is not None and gens.shape[1] > limit:
            k = gens.shape[1]
            weight = gens.abs().sum(0).reshape(k, -1).sum(1)
            keep_idx = torch.topk(weight, limit).indices.sort().values
            drop = torch.ones(k, dtype=torch.bool, device=gens.device)
            drop[keep_idx] = False
            err = err + torch.linalg.vector_norm(gens[:, drop], 1, dim=1)
            if self.options.sound_fp:
                err = err * (1 + self._gamma(k))
            gens, ids = gens.index_select(1, keep_idx), ids[keep_idx.cpu()]
            abs_sum = None
            log.debug("order reduction: merged %d generators into the interval term", k - limit)
        out = ZonotopeElement(center, gens, ids, err, lower, upper)
        if abs_sum is not None:
            out._cache["abs_sum"] = abs_sum
        return out

    def _scale_and_extend(self, x: ZonotopeElement, lam: Tensor, beta: Tensor
                          ) -> tuple[Tensor, Tensor, Tensor]:
        """Generators of ``λ ⊙ x + β ⊙ ε_new``: ``λ g_i`` then one new row per neuron with ``β > 0``.

        Returns ``(gens, ids, abs_sum)`` with ``abs_sum = λ Σ|g_i| + β`` (exact for ``λ ≥ 0`` up
        to rounding, covered by a ``4u`` relative margin), so no extra pass is needed.
        """
        g = self._dense_gens(x)
        b, k = g.shape[:2]
        new = pack_new_generators(beta, beta > 0)
        n_new = 0 if new is None else new.shape[1]
        gens = g.new_empty(b, k + n_new, *x.shape)
        torch.mul(g, lam.unsqueeze(1), out=gens[:, :k])
        ids = x.ids
        if n_new:
            gens[:, k:] = new
            ids = torch.cat([ids, new_ids(n_new)])
        abs_sum = lam * self._abs_sum(x) * (1 + 4 * self._u) + beta
        return gens, ids, abs_sum

    def _append(self, gens: Tensor, ids: Tensor, new: Tensor | None) -> tuple[Tensor, Tensor]:
        if new is None:
            return gens, ids
        return torch.cat([gens, new], 1), torch.cat([ids, new_ids(new.shape[1])])

    # -- required core ---------------------------------------------------------------------------
    def from_box(self, lower: Tensor, upper: Tensor) -> ZonotopeElement:
        """One noise symbol per input coordinate whose interval has positive width (in any item)."""
        lo, hi = self.tensor(lower), self.tensor(upper)
        if lo.shape != hi.shape or lo.dim() < 1:
            raise DomainError(f"from_box expects two [B, *shape] tensors, got {tuple(lo.shape)} and {tuple(hi.shape)}")
        b = lo.shape[0]
        center = (lo + hi) / 2
        radius = ((hi - lo) / 2).clamp(min=0)
        flat = radius.reshape(b, -1)
        index = flat.gt(0).any(0).nonzero().squeeze(1)
        # covers the rounding of centre and radius (the halving is inexact only for subnormals)
        err = 2 * self._u * (lo.abs() + hi.abs()) + self._tiny
        return ZonotopeElement(center, None, new_ids(int(index.numel())), err, lo, hi,
                               diag_values=flat.index_select(1, index), diag_index=index)

    def affine(self, x: ZonotopeElement, op: LinearOperator, bias: Tensor | None) -> ZonotopeElement:
        """Exact: ``c' = A c + b``, ``g_i' = A g_i``, ``err' = |A| err`` (+ rounding)."""
        if tuple(op.in_shape) != x.shape:
            raise DomainError(f"affine expects input shape {tuple(op.in_shape)}, got {x.shape}")
        b, k = x.batch_size, x.n_generators
        out_shape = tuple(op.out_shape)
        absop = op.abs()
        center = op.forward(x.center)
        if bias is not None:
            bias = bias.to(center)
            center = center + bias
        diag_values = diag_index = gens = None
        if x.lazy and isinstance(op, DiagonalOperator):
            scale = torch.broadcast_to(op.scale.to(center), op.shape).reshape(-1)
            diag_values, diag_index = x.diag_values * scale[x.diag_index], x.diag_index
        elif x.lazy:
            gens = self._lazy_forward(x, op)
        elif k:
            gens = op.forward(x.gens)
        else:
            gens = center.new_zeros(b, 0, *out_shape)
        err = absop.forward(x.err)
        g = self._gamma(dot_length(op))
        if self.options.sound_fp:
            babs = 0.0 if bias is None else bias.abs()
            n = dot_length(op)
            err = err + g * absop.forward(x.center.abs() + self._abs_sum(x) + x.err) \
                + 2 * self._u * (center.abs() + babs) + (k + 1) * (n + 2) * self._tiny
        if self.options.track_box:
            lo, hi = self.bounds(x)
            bc, br = (hi + lo) / 2, (hi - lo) / 2
            mid = op.forward(bc)
            if bias is not None:
                mid = mid + bias
            rad = absop.forward(br)
            if self.options.sound_fp:
                babs = 0.0 if bias is None else bias.abs()
                rad = rad + g * absop.forward(bc.abs() + br) + 2 * self._u * (mid.abs() + rad + babs) \
                    + (dot_length(op) + 2) * self._tiny
            lower, upper = mid - rad, mid + rad
        else:
            lower, upper = self._full(center, -torch.inf), self._full(center, torch.inf)
        return ZonotopeElement(center, gens, x.ids, err, lower, upper, diag_values, diag_index)

    def _lazy_forward(self, x: ZonotopeElement, op: LinearOperator) -> Tensor:
        """``A`` applied to the lazy diagonal generators: ``v_i · A e_{p_i}`` (shared over the batch)."""
        b, k = x.diag_values.shape
        if isinstance(op, DenseOperator):
            cols = op.weight.to(x.center).index_select(1, x.diag_index).T  # [k, n_out]
            return x.diag_values.unsqueeze(2) * cols.unsqueeze(0)
        eye = x.center.new_zeros(k, numel(x.shape))
        eye[torch.arange(k, device=eye.device), x.diag_index] = 1
        images = op.forward(eye.reshape(k, *x.shape))  # [k, *out_shape]
        return x.diag_values.reshape(b, k, *[1] * (images.dim() - 1)) * images.unsqueeze(0)

    def relu(self, x: ZonotopeElement) -> ZonotopeElement:
        """DeepZ minimal-area ReLU (:func:`~absint.domains.relaxations.relu_zonotope`) on the best bounds."""
        l, u = self.bounds(x)
        lam, mu, beta = relu_zonotope(l, u)
        center = lam * x.center + mu
        err = lam * x.err
        if self.options.sound_fp:
            unstable = beta > 0
            # rounding of λc + μ, λg_i and λ·err; the computed λ, μ (one rounding each) miss the
            # exact parallelogram by < 3u(|l| + |u|) (see tests/test_fp_soundness.py).
            err = err + 2 * self._u * (lam * (x.center.abs() + self._abs_sum(x) + x.err) + mu) \
                + torch.where(unstable, 8 * self._u * (l.abs() + u.abs()), torch.zeros_like(u)) \
                + (x.n_generators + 4) * self._tiny
        gens, ids, abs_sum = self._scale_and_extend(x, lam, beta)
        return self._finish(center, gens, ids, err, l.clamp(min=0), u.clamp(min=0),
                            check_rows=x.n_generators, abs_sum=abs_sum)

    def bounds(self, x: ZonotopeElement) -> tuple[Tensor, Tensor]:
        """Zonotope bounds intersected with the stored box (cached on the element)."""
        cached = x._cache.get("bounds")
        if cached is None:
            zl, zu = self.zonotope_bounds(x)
            cached = (torch.maximum(zl, x.lower), torch.minimum(zu, x.upper))
            x._cache["bounds"] = cached
        return cached

    # -- optional transformers ---------------------------------------------------------------------
    def reshape(self, x: ZonotopeElement, shape: tuple[int, ...]) -> ZonotopeElement:
        """Exact (row-major; the flat neuron order, hence the lazy diagonal, is unchanged)."""
        b, k = x.batch_size, x.n_generators
        gens = None if x.gens is None else x.gens.reshape(b, k, *shape)
        r = lambda t: t.reshape(b, *shape)  # noqa: E731
        return ZonotopeElement(r(x.center), gens, x.ids, r(x.err), r(x.lower), r(x.upper),
                               x.diag_values, x.diag_index)

    def add(self, x: ZonotopeElement, y: ZonotopeElement) -> ZonotopeElement:
        """Exact sum: generators of the same noise symbol add up (residual connections)."""
        if x.shape != y.shape or x.batch_size != y.batch_size:
            raise DomainError(f"add: operand shapes differ ({x.shape} vs {y.shape})")
        center = x.center + y.center
        if self.options.track_box:
            (lx, ux), (ly, uy) = self.bounds(x), self.bounds(y)
            lower, upper = lx + ly, ux + uy
            if self.options.sound_fp:
                lower, upper = lower - 2 * self._u * lower.abs() - self._tiny, \
                    upper + 2 * self._u * upper.abs() + self._tiny
        else:
            lower, upper = self._full(center, -torch.inf), self._full(center, torch.inf)
        err = x.err + y.err
        if (x.lazy and y.lazy and torch.equal(x.ids, y.ids) and torch.equal(x.diag_index, y.diag_index)):
            values = x.diag_values + y.diag_values
            out = ZonotopeElement(center, None, x.ids, err, lower, upper, values, x.diag_index)
            if self.options.sound_fp:
                out = replace(out, err=err + 2 * self._u * (center.abs() + self._abs_sum(out) + err)
                              + (x.n_generators + 4) * self._tiny)
            return out
        gx, gy, ids = union_generators(self._dense_gens(x), x.ids, self._dense_gens(y), y.ids)
        gens = gx + gy
        if self.options.sound_fp:
            err = err + 2 * self._u * (center.abs() + gens.abs().sum(1) + err) + (gens.shape[1] + 4) * self._tiny
        return self._finish(center, gens, ids, err, lower, upper)

    def _s_shaped(self, x: ZonotopeElement, relax: Callable, f: Callable[[Tensor], Tensor],
                  lo_range: float) -> ZonotopeElement:
        """DeepZ S-shaped transformer: ``y = λx + μ + β·ε_new`` (one new symbol where ``β > 0``)."""
        l, u = self.bounds(x)
        lam, mu, beta = relax(l, u)
        center = lam * x.center + mu
        err = lam * x.err
        fl, fu = f(l), f(u)
        if self.options.sound_fp:
            # Rounding of λc+μ and λg, the computed λ exceeding min f' by a few ulps, and
            # library error of f (≤ 8 ulps of 1 assumed).
            err = err + 2 * self._u * (lam * (x.center.abs() + self._abs_sum(x) + x.err) + mu.abs() + beta) \
                + 64 * self._u * (1 + lam * (l.abs() + u.abs())) + (x.n_generators + 4) * self._tiny
            fl, fu = fl - 16 * self._u, fu + 16 * self._u
        gens, ids, abs_sum = self._scale_and_extend(x, lam, beta)
        return self._finish(center, gens, ids, err, fl.clamp(min=lo_range), fu.clamp(max=1.0),
                            check_rows=x.n_generators, abs_sum=abs_sum)

    def sigmoid(self, x: ZonotopeElement) -> ZonotopeElement:
        """DeepZ sigmoid (:func:`~absint.domains.relaxations.sigmoid_zonotope`)."""
        return self._s_shaped(x, sigmoid_zonotope, torch.sigmoid, 0.0)

    def tanh(self, x: ZonotopeElement) -> ZonotopeElement:
        """DeepZ tanh (:func:`~absint.domains.relaxations.tanh_zonotope`)."""
        return self._s_shaped(x, tanh_zonotope, torch.tanh, -1.0)

    def maxpool(self, x: ZonotopeElement, kernel: tuple[int, int], stride: tuple[int, int],
                padding: tuple[int, int]) -> ZonotopeElement:
        """Exact where one input provably dominates its window, else a new symbol over the interval."""
        if len(x.shape) != 3:
            raise DomainError(f"maxpool expects [C, H, W] elements, got shape {x.shape}")
        kernel, stride, padding = tuple(kernel), tuple(stride), tuple(padding)
        b, k = x.batch_size, x.n_generators
        ch = x.shape[0]
        l, u = self.bounds(x)
        lower = F.max_pool2d(l, kernel, stride, padding)
        upper = F.max_pool2d(u, kernel, stride, padding)
        out_shape = tuple(lower.shape[1:])
        valid = window_validity(x.shape, kernel, stride, padding, l.device)  # [1, 1, K, L]
        neg = torch.tensor(-torch.inf, dtype=l.dtype, device=l.device)
        lw = torch.where(valid, unfold_windows(l, kernel, stride, padding), neg)
        uw = torch.where(valid, unfold_windows(u, kernel, stride, padding), neg)
        j = lw.argmax(2, keepdim=True)  # [B, C, 1, L]: the input with the best lower bound
        cw = unfold_windows(x.center, kernel, stride, padding)
        ew = unfold_windows(x.err, kernel, stride, padding)
        g = self._dense_gens(x)
        gw = unfold_windows(g.reshape(b * k, *x.shape), kernel, stride, padding)
        gw = gw.reshape(b, k, *gw.shape[1:])  # [B, k, C, K, L]
        cj, ej, lj = cw.gather(2, j), ew.gather(2, j), lw.gather(2, j)
        gj = gw.gather(3, j.unsqueeze(1).expand(b, k, *j.shape[1:]))
        # Upper bound of x_i − x_j on the zonotope, and on the intervals; keep the better.
        diff_rad = (gw - gj).abs().sum(1)
        ub = cw - cj + diff_rad + ew + ej
        if self.options.sound_fp:
            ub = ub + self._gamma(k) * diff_rad + 4 * self._u * (cw.abs() + cj.abs() + diff_rad + ew + ej)
        ub = torch.minimum(ub, uw - lj)
        others = valid & (torch.arange(lw.shape[2], device=l.device).view(1, 1, -1, 1) != j)
        dominated = torch.where(others, ub <= 0, torch.ones_like(others)).all(2)  # [B, C, L]
        lo_f, up_f = lower.reshape(b, ch, -1), upper.reshape(b, ch, -1)
        mid, half = (lo_f + up_f) / 2, (up_f - lo_f) / 2
        center = torch.where(dominated, cj.squeeze(2), mid)
        err = torch.where(dominated, ej.squeeze(2),
                          2 * self._u * (lo_f.abs() + up_f.abs()) if self.options.sound_fp else torch.zeros_like(mid))
        gens = gj.squeeze(3) * dominated.unsqueeze(1).to(g.dtype)
        beta = torch.where(dominated, torch.zeros_like(half), half)
        shape_out = lambda t, lead=(b,): t.reshape(*lead, *out_shape)  # noqa: E731
        new = pack_new_generators(shape_out(beta), shape_out(beta > 0))
        gens, ids = self._append(shape_out(gens, (b, k)), x.ids, new)
        return self._finish(shape_out(center), gens, ids, shape_out(err), lower, upper)

    def linear_bounds(self, x: ZonotopeElement, C: Tensor, d: Tensor | None = None) -> Tensor:
        """Lower bounds of ``C y + d`` on the zonotope: ``C c − Σ_i |C g_i| − |C| err`` (∨ interval)."""
        C = self.tensor(C)
        b, m, n = C.shape
        if b != x.batch_size or n != numel(x.shape):
            raise DomainError(f"linear_bounds: C has shape {tuple(C.shape)}, element has batch "
                              f"{x.batch_size} and {numel(x.shape)} neurons")
        c = x.center.reshape(b, n, 1)
        cc = torch.bmm(C, c).squeeze(2)
        if x.lazy:
            cg = C.index_select(2, x.diag_index) * x.diag_values.unsqueeze(1)  # [B, m, k]
        else:
            cg = torch.bmm(C, x.gens.reshape(b, x.n_generators, n).transpose(1, 2))
        sc = cg.abs().sum(2)
        absc = C.abs()
        e = torch.bmm(absc, x.err.reshape(b, n, 1)).squeeze(2)
        lb = cc - sc - e
        lo, hi = self.bounds(x)
        lo, hi = lo.reshape(b, n, 1), hi.reshape(b, n, 1)
        lb_box = (torch.bmm(C.clamp(min=0), lo) + torch.bmm(C.clamp(max=0), hi)).squeeze(2)
        if self.options.sound_fp:
            s = self._abs_sum(x).reshape(b, n, 1)
            mag = torch.bmm(absc, c.abs() + s + x.err.reshape(b, n, 1)).squeeze(2)
            lb = lb - self._gamma(n) * mag - self._gamma(x.n_generators) * sc - 2 * self._u * (cc.abs() + sc + e) \
                - (x.n_generators + 1) * (n + 2) * self._tiny
            lb_box = lb_box - self._gamma(n) * torch.bmm(absc, torch.maximum(lo.abs(), hi.abs())).squeeze(2)
        out = torch.maximum(lb, lb_box)
        if d is not None:
            d = self.tensor(d)
            out = out + d
            if self.options.sound_fp:
                out = out - 2 * self._u * (out.abs() + d.abs()) - self._tiny
        return out

    def meet_box(self, x: ZonotopeElement, lower: Tensor, upper: Tensor) -> ZonotopeElement:
        """Store tighter sound bounds proved elsewhere (e.g. by LP/MILP refinement).

        The generators are unchanged (a zonotope ∩ box is not a zonotope); the stored box is
        intersected, so :meth:`bounds`, the next ReLU/S-shaped/max-pool relaxation and the
        interval side of :meth:`linear_bounds` all use the better of zonotope and stored bounds.
        """
        lo, hi = self.tensor(lower).reshape(x.center.shape), self.tensor(upper).reshape(x.center.shape)
        return replace(x, lower=torch.maximum(x.lower, lo), upper=torch.minimum(x.upper, hi))

    # -- extras for refinement analyses ----------------------------------------------------------
    def octahedral_bounds(self, x: ZonotopeElement, groups: Tensor,
                          directions: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Bounds of ``Σ_j a_j x_{g_j}`` for every neuron group ``g`` and direction ``a``.

        ``groups``: ``[G, s]`` or ``[B, G, s]`` flat neuron indices (e.g. k-ReLU groups of a
        ReLU layer's *inputs*). ``directions`` ``[D, s]`` defaults to every ``a ∈ {−1, 0, 1}^s``
        whose first non-zero entry is +1 (13 for s = 3; lower bounds give the negated ones).
        Returns ``(directions, lower [B, G, D], upper [B, G, D])``, each the better of the
        zonotope and the stored box. The row order matches the positive half of
        :func:`absint.domains.krelu.octahedron.octahedral_directions`, so that module's full bound
        vector is ``torch.cat([upper, -lower], -1)``.
        """
        b, n = x.batch_size, numel(x.shape)
        groups = torch.as_tensor(groups, dtype=torch.int64, device=x.center.device)
        if groups.dim() == 2:
            groups = groups.unsqueeze(0).expand(b, -1, -1)
        s = groups.shape[2]
        a = octahedral_directions(s, self.dtype, x.center.device) if directions is None else self.tensor(directions)
        flat_idx = groups.reshape(b, -1)
        pick = lambda t: t.reshape(b, n).gather(1, flat_idx).reshape(b, -1, s)  # noqa: E731
        k = x.n_generators
        gens = self._dense_gens(x).reshape(b, k, n)
        gg = gens.gather(2, flat_idx.unsqueeze(1).expand(b, k, -1)).reshape(b, k, -1, s)
        mid = pick(x.center) @ a.T
        rad = (gg @ a.T).abs().sum(1) + pick(x.err) @ a.abs().T
        if self.options.sound_fp:
            rad = rad + self._gamma(k + s) * ((gg.abs() @ a.abs().T).sum(1) + pick(x.center).abs() @ a.abs().T) \
                + 2 * self._u * (mid.abs() + rad)
        lo, hi = self.bounds(x)
        plo, phi = pick(lo), pick(hi)
        box_lo = plo @ a.clamp(min=0).T + phi @ a.clamp(max=0).T
        box_hi = phi @ a.clamp(min=0).T + plo @ a.clamp(max=0).T
        if self.options.sound_fp:
            slack = self._gamma(s) * (torch.maximum(plo.abs(), phi.abs()) @ a.abs().T)
            box_lo, box_hi = box_lo - slack, box_hi + slack
        return a, torch.maximum(mid - rad, box_lo), torch.minimum(mid + rad, box_hi)


def octahedral_directions(s: int, dtype: torch.dtype = torch.float64, device=None) -> Tensor:
    """All ``a ∈ {−1, 0, 1}^s`` with first non-zero entry +1, ``[(3^s − 1)/2, s]``."""
    grid = torch.cartesian_prod(*[torch.tensor([-1.0, 0.0, 1.0], dtype=dtype)] * s).reshape(-1, s)
    first = torch.zeros(grid.shape[0], dtype=dtype)
    for col in reversed(range(s)):
        first = torch.where(grid[:, col] != 0, grid[:, col], first)
    return grid[first > 0].to(device)

