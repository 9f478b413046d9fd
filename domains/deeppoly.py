"""The DeepPoly domain (Singh, Gehr, Püschel, Vechev, "An Abstract Domain for Certifying Neural
Networks", POPL 2019).

Every neuron ``x_i`` carries one symbolic lower and one symbolic upper bound, linear in the
neurons of the layer(s) it reads, plus concrete bounds ``[l_i, u_i]``. The concrete bounds of each
new layer come from back-substituting its symbolic bounds down to the input box
(:mod:`absint.domains.deeppoly_backsub`); the output property rows ``C y + d`` are back-substituted
themselves (never bounded through separate logit bounds).

Transformers: affine/conv (exact, through :class:`~absint.linear.LinearOperator` — convolutions
are back-substituted with ``conv_transpose2d``, never as dense matrices), ReLU (chord above,
``α·x`` below with α by the area heuristic or ``relu_lower``), sigmoid/tanh (the paper's S-shaped
rules), max-pool (exact when one input dominates, else ``y ≥ x_{argmax l}``, ``y ≤ max u``),
reshape (free), add (residual: back-substitution over the DAG).

Precision vs. the paper: concrete bounds are the best of (a) full back-substitution, (b) the
intermediate concretisations done on the way (GPUPoly-style, Müller et al. 2021; with
``early_stop`` or ``keep_best``) and (c) interval propagation from the parents' bounds, so they
are never looser than DeepPoly's or Box's. ``early_stop`` only skips work whose result cannot
change any ReLU relaxation (the sign of the neuron is already proved); neurons that the ReLU
leaves unstable are always back-substituted to the input.

Floating point: float64 throughout; every back-substituted bound is widened outward by
``fp_margin·(1 + |bound|)`` (default 1e-9), far above the accumulated float64 rounding error of
these computations (≈ n·2⁻⁵³·Σ|terms|) on realistic networks. This is a documented safety margin,
not a rigorous proof of floating-point soundness (ERAN uses interval floating-point arithmetic).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import torch

from absint.linear import DenseOperator, DiagonalOperator, LinearOperator, PermuteOperator, numel
from absint.domains.base import Domain
from absint.domains.deeppoly_backsub import BackSubstitution, dense_block
from absint.domains.deeppoly_element import (ACT, ADD, AFFINE, INPUT, MAXPOOL, RESHAPE, ActLines, DeepPolyElement,
                                      PoolLines, Prune)
from absint.domains.relaxations import ReluLowerMode, maxpool_deeppoly, relu_deeppoly, sigmoid_deeppoly, tanh_deeppoly

log = logging.getLogger(__name__)

__all__ = ["DeepPolyDomain", "DeepPolyElement", "DeepPolyOptions"]


@dataclass(frozen=True)
class DeepPolyOptions:
    """Options of :class:`DeepPolyDomain`.

    * ``relu_lower`` — slope of the ReLU lower line for unstable neurons: ``area`` (the paper's
      heuristic), ``zero``, ``one`` or ``parallel`` (see :func:`absint.domains.relaxations.relu_lower_slope`).
    * ``early_stop`` — for ReLU inputs, concretise the frontier after each layer of
      back-substitution and stop refining a neuron once its sign is proved (its relaxation is then
      exact whatever the bounds); :meth:`DeepPolyDomain.bounds` still returns fully
      back-substituted bounds (computed on demand). Concretising stops within one run as soon
      as a frontier decides fewer than 1/16 of the rows.
    * ``keep_best`` — concretise every intermediate frontier of every back-substitution and keep
      the best bound over all depths (tighter than the paper in rare cases, slower).
    * ``memory_mb`` — rows are back-substituted in chunks so that one chunk's coefficient matrices
      stay around this size (memory proportional to the layer sizes).
    * ``max_rows`` — at most this many rows per chunk (None: on CPU, blocks of ≈2 MB — cache-sized
      blocks are fastest there, e.g. 334 rows for 784 inputs; unlimited on CUDA).
    * ``fp_margin`` — outward margin for floating-point rounding (see the module docstring).
    """

    relu_lower: ReluLowerMode = "area"
    early_stop: bool = True
    keep_best: bool = False
    memory_mb: float = 256.0
    max_rows: int | None = None
    fp_margin: float = 1e-9


class DeepPolyDomain(Domain[DeepPolyElement]):
    """DeepPoly: per-neuron symbolic lower/upper bounds with back-substitution (POPL 2019)."""

    name = "deeppoly"
    options_class = DeepPolyOptions
    description = "DeepPoly: symbolic per-neuron polyhedra with back-substitution (Singh et al., POPL 2019)"

    options: DeepPolyOptions

    # -- construction -------------------------------------------------------------------------
    @torch.no_grad()
    def from_box(self, lower: torch.Tensor, upper: torch.Tensor) -> DeepPolyElement:
        lo, hi = self.tensor(lower), self.tensor(upper)
        shape = tuple(lo.shape[1:])
        el = DeepPolyElement(INPUT, shape, int(lo.shape[0]), boxlike=True, max_width=numel(shape))
        self._store(el, 2, lo, hi)
        return el

    @torch.no_grad()
    def affine(self, x: DeepPolyElement, op: LinearOperator, bias: torch.Tensor | None) -> DeepPolyElement:
        """``y = op(x) + bias`` — exact; concrete bounds are computed when first needed."""
        shape = tuple(op.out_shape)
        flat_bias = None
        if bias is not None:
            flat_bias = torch.broadcast_to(self.tensor(bias), shape).reshape(-1).contiguous()
        boxlike = x.boxlike and isinstance(op, (DiagonalOperator, PermuteOperator))
        el = DeepPolyElement(AFFINE, shape, x.batch, (x,), x.depth + 1, boxlike, op=op, bias=flat_bias,
                             max_width=max(x.max_width, numel(shape)))
        if x.boxlike:  # interval arithmetic is exact on a box: no back-substitution needed
            self._bounds(el, 2)
        return el

    @torch.no_grad()
    def relu(self, x: DeepPolyElement) -> DeepPolyElement:
        """ReLU: chord ``u/(u−l)·(x−l)`` above, ``α·x`` below (α by ``options.relu_lower``)."""
        level = 1 if self.options.early_stop else 2
        l, u = self._bounds(x, level)
        rl = relu_deeppoly(l, u, self.options.relu_lower)
        b = x.batch
        lines = ActLines.make(rl.lower_slope.reshape(b, -1), None, rl.upper_slope.reshape(b, -1),
                              rl.upper_offset.reshape(b, -1))
        prune = None
        if x.kind == AFFINE and isinstance(x.op, DenseOperator):
            live = (u > 0).reshape(b, -1)
            alive = live.any(0).nonzero().squeeze(1)
            if alive.numel() < x.numel or (b > 1 and not bool(live.all())):
                prune = Prune(alive, lines.select(alive))
                if b > 1:  # per batch member: positions (within alive) of its own live neurons
                    x.cache["members"] = (alive, [row.nonzero().squeeze(1) for row in live[:, alive]])
        el = DeepPolyElement(ACT, x.shape, b, (x,), x.depth + 1, fn="relu", lines=lines, prune=prune,
                             max_width=x.max_width)
        self._store(el, level, l.clamp(min=0), u.clamp(min=0))
        return el

    def _s_shaped(self, x: DeepPolyElement, fn: str) -> DeepPolyElement:
        l, u = self._bounds(x, 2)
        rel = sigmoid_deeppoly(l, u) if fn == "sigmoid" else tanh_deeppoly(l, u)
        b = x.batch
        lines = ActLines.make(rel.lower_slope.reshape(b, -1), rel.lower_offset.reshape(b, -1),
                              rel.upper_slope.reshape(b, -1), rel.upper_offset.reshape(b, -1))
        el = DeepPolyElement(ACT, x.shape, b, (x,), x.depth + 1, fn=fn, lines=lines, max_width=x.max_width)
        f = torch.sigmoid if fn == "sigmoid" else torch.tanh
        self._store(el, 2, f(l), f(u))
        return el

    @torch.no_grad()
    def sigmoid(self, x: DeepPolyElement) -> DeepPolyElement:
        """Sigmoid with DeepPoly's S-shaped lines (:func:`absint.domains.relaxations.sigmoid_deeppoly`)."""
        return self._s_shaped(x, "sigmoid")

    @torch.no_grad()
    def tanh(self, x: DeepPolyElement) -> DeepPolyElement:
        """Tanh with DeepPoly's S-shaped lines (:func:`absint.domains.relaxations.tanh_deeppoly`)."""
        return self._s_shaped(x, "tanh")

    @torch.no_grad()
    def maxpool(self, x: DeepPolyElement, kernel: tuple[int, int], stride: tuple[int, int],
                padding: tuple[int, int]) -> DeepPolyElement:
        """Max pooling (ERAN's rule, :func:`absint.domains.relaxations.maxpool_deeppoly`)."""
        l, u = self._bounds(x, 2)
        mp = maxpool_deeppoly(l, u, tuple(kernel), tuple(stride), tuple(padding))
        b = x.batch
        shape = tuple(mp.lower.shape[1:])
        pool = PoolLines(mp.index, mp.exact, mp.upper.reshape(b, -1), x.numel)
        el = DeepPolyElement(MAXPOOL, shape, b, (x,), x.depth + 1, pool=pool,
                             max_width=max(x.max_width, numel(shape)))
        self._store(el, 2, mp.lower, mp.upper)
        return el

    @torch.no_grad()
    def reshape(self, x: DeepPolyElement, shape: tuple[int, ...]) -> DeepPolyElement:
        """Row-major reshape: the same neurons, relations kept."""
        shape = tuple(shape)
        el = DeepPolyElement(RESHAPE, shape, x.batch, (x,), x.depth + 1, x.boxlike, max_width=x.max_width)
        if x.cached_bounds() is not None:
            lo, hi = x.cached_bounds()
            self._store(el, x.level, lo.reshape(x.batch, *shape), hi.reshape(x.batch, *shape))
        return el

    @torch.no_grad()
    def add(self, x: DeepPolyElement, y: DeepPolyElement) -> DeepPolyElement:
        """``x + y`` (residual connections): exact; bounds by back-substitution over the DAG."""
        if x.shape != y.shape:
            raise ValueError(f"add of elements with shapes {x.shape} and {y.shape}")
        return DeepPolyElement(ADD, x.shape, x.batch, (x, y), max(x.depth, y.depth) + 1,
                               max_width=max(x.max_width, y.max_width))

    # -- bounds -------------------------------------------------------------------------------
    @torch.no_grad()
    def bounds(self, x: DeepPolyElement) -> tuple[torch.Tensor, torch.Tensor]:
        """Concrete bounds ``[B, *shape]`` (fully back-substituted, never looser than Box)."""
        return self._bounds(x, 2)

    def preactivation_bounds(self, x: DeepPolyElement) -> tuple[torch.Tensor, torch.Tensor]:
        """For an activation/max-pool element: full concrete bounds of its input node."""
        if not x.parents:
            raise ValueError("the input element has no pre-activation")
        return self.bounds(x.parents[0])

    @torch.no_grad()
    def linear_bounds(self, x: DeepPolyElement, C: torch.Tensor, d: torch.Tensor | None = None) -> torch.Tensor:
        """Lower bounds ``[B, m]`` of ``C y + d`` by back-substituting the rows of ``C`` themselves
        (and never below the interval bound of ``C`` over ``y``'s concrete bounds)."""
        out = self.linear_bounds_at(x, C)
        return out if d is None else out + self.tensor(d)

    @torch.no_grad()
    def linear_bounds_at(self, x: DeepPolyElement, C: torch.Tensor, *, stop_at: float | None = None) -> torch.Tensor:
        """Lower bounds ``[B, m]`` of ``C·x`` for any element ``x`` (``C``: ``[B or 1, m, numel(x)]``).

        Upper bounds are ``-linear_bounds_at(x, -C)``; octahedral constraints of k-ReLU are one
        call with all ``±x_i ± x_j ± x_k`` rows. With ``stop_at`` a row stops being refined once
        its bound reaches that value (the result is still a sound lower bound).
        """
        C = self._rows_for(x, C)
        b, m = x.batch, C.shape[1]
        lam = C.reshape(b * m, x.numel)
        bidx = None if b == 1 else torch.arange(b, device=lam.device).repeat_interleave(m)
        out = self._run_rows(x, lam, lam.new_zeros(b * m), bidx, threshold=stop_at).reshape(b, m)
        # never looser than the interval bound of C over x's concrete bounds (hence than Box)
        lo, hi = self._bounds(x, 0)
        lo, hi = lo.reshape(b, 1, -1), hi.reshape(b, 1, -1)
        box = (C.clamp(min=0) * lo + C.clamp(max=0) * hi).sum(-1)
        return torch.maximum(out, box)

    @torch.no_grad()
    def input_linear_bounds(self, x: DeepPolyElement, C: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Symbolic lower bounds over the input: ``C·x ≥ A·x_in + c`` for every input in the box.

        Returns ``A`` ``[B, m, *input_shape]`` and ``c`` ``[B, m]`` (back-substitution without the
        final concretisation; useful for input splitting and attacks).
        """
        C = self._rows_for(x, C)
        b, m = x.batch, C.shape[1]
        lam = C.reshape(b * m, x.numel)
        bidx = None if b == 1 else torch.arange(b, device=lam.device).repeat_interleave(m)
        bs = BackSubstitution(lam.new_zeros(b * m), bidx, self._flat_bounds, batch=b, symbolic=True)
        bs.push(x, lam)
        bs.run()
        inp = [e for e in x.ancestors() if e.kind == INPUT][0]
        A = bs.input_lam if bs.input_lam is not None else lam.new_zeros(b * m, inp.numel)
        return A.reshape(b, m, *inp.shape), bs.const.reshape(b, m)

    @torch.no_grad()
    def meet_box(self, x: DeepPolyElement, lower: torch.Tensor, upper: torch.Tensor) -> DeepPolyElement:
        """A new element with the same symbolic bounds and concrete bounds ``γ(x) ∩ [lower, upper]``.

        Later relaxations (e.g. a ReLU on this node) use the tightened bounds.
        """
        lo, hi = self._bounds(x, 2)
        lo = torch.maximum(lo, self.tensor(lower).reshape(lo.shape))
        hi = torch.minimum(hi, self.tensor(upper).reshape(hi.shape))
        el = replace(x, cache={})
        self._store(el, 2, lo, hi)
        return el

    # -- internals ----------------------------------------------------------------------------
    def _rows_for(self, x: DeepPolyElement, C: torch.Tensor) -> torch.Tensor:
        """``C`` as ``[B, m, numel(x)]`` (a 2-D ``C`` or batch 1 is shared by all members)."""
        C = self.tensor(C)
        if C.dim() == 2:
            C = C.unsqueeze(0)
        b = x.batch
        if C.shape[0] == 1 and b > 1:
            C = C.expand(b, -1, -1)
        C = C.reshape(C.shape[0], C.shape[1], -1)
        if C.shape[0] != b or C.shape[2] != x.numel:
            raise ValueError(f"C has shape {tuple(C.shape)}, expected [{b}, m, {x.numel}]")
        return C

    @staticmethod
    def _store(el: DeepPolyElement, level: int, lo: torch.Tensor, hi: torch.Tensor) -> None:
        old = el.cached_bounds()
        if old is not None:  # both are sound: keep the intersection
            lo, hi = torch.maximum(lo, old[0]), torch.minimum(hi, old[1])
            level = max(level, el.level)
        el.cache.update(level=level, lower=lo, upper=hi)
        el.cache.pop("midrad", None)

    @staticmethod
    def _flat_bounds(el: DeepPolyElement) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Memoised flat centre/radius ``[B, n]`` of the bounds (None if no bounds yet)."""
        c = el.cache
        mr = c.get("midrad")
        if mr is None:
            if "lower" not in c:
                return None
            lo, hi = c["lower"].reshape(el.batch, -1), c["upper"].reshape(el.batch, -1)
            mr = c["midrad"] = ((hi + lo) / 2, (hi - lo) / 2)
        return mr

    def _bounds(self, x: DeepPolyElement, level: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Concrete bounds of ``x`` at precision ``level`` or better (memoised)."""
        if x.level >= level:
            return x.cache["lower"], x.cache["upper"]
        if x.kind in (AFFINE, ADD):
            ilo, ihi = self._interval(x)
            exact = x.kind == AFFINE and x.parents[0].boxlike
            if exact or level == 0:
                self._store(x, 2 if exact else 0, ilo, ihi)
            else:
                self._store(x, 0, ilo, ihi)
                lo, hi = self._backsub_bounds(x, ilo, ihi, level)
                self._store(x, level, lo, hi)
        elif x.kind == ACT:
            plo, phi = self._bounds(x.parents[0], level)
            f = {"relu": torch.relu, "sigmoid": torch.sigmoid, "tanh": torch.tanh}[x.fn]
            self._store(x, level, f(plo), f(phi))
        elif x.kind == RESHAPE:
            plo, phi = self._bounds(x.parents[0], level)
            self._store(x, max(level, x.parents[0].level), plo.reshape(x.batch, *x.shape),
                        phi.reshape(x.batch, *x.shape))
        else:  # input / maxpool bounds are stored at creation with level 2
            raise RuntimeError(f"{x.kind} element without bounds")
        return x.cache["lower"], x.cache["upper"]

    def _interval(self, x: DeepPolyElement) -> tuple[torch.Tensor, torch.Tensor]:
        """Interval propagation from the parents' memoised bounds (the Box safety net)."""
        parents = [self._bounds(p, 0) if p.level < 0 else (p.lower, p.upper) for p in x.parents]
        if x.kind == ADD:
            return parents[0][0] + parents[1][0], parents[0][1] + parents[1][1]
        plo, phi = parents[0]
        center, radius = (phi + plo) / 2, (phi - plo) / 2
        abs_op = x.cache.get("abs_op")
        if abs_op is None:
            abs_op = x.cache["abs_op"] = x.op.abs()
        c = x.op.forward(center)
        if x.bias is not None:
            c = c + x.bias.reshape(x.shape)
        r = abs_op.forward(radius)
        return c - r, c + r

    def _backsub_bounds(self, x: DeepPolyElement, ilo: torch.Tensor, ihi: torch.Tensor,
                        level: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Back-substitute ``±e_i`` for the neurons of ``x`` that need it; best of that and interval.

        Level 1 (for a ReLU): only neurons whose sign the interval bounds leave open, and a neuron
        stops as soon as its sign is proved. Level 2: every neuron, to the input.
        """
        b, n = x.batch, x.numel
        flo, fhi = ilo.reshape(b, n), ihi.reshape(b, n)
        need = (flo < 0) & (fhi > 0) if level == 1 else flo < fhi
        flat = need.reshape(-1).nonzero().squeeze(1)  # flat index b·n + i
        p = int(flat.numel())
        lo, hi = flo.clone().reshape(-1), fhi.clone().reshape(-1)
        if p == 0:
            return lo.reshape(ilo.shape), hi.reshape(ihi.shape)
        chunk = max(1, self._chunk_rows(x) // 2)
        dense = x.kind == AFFINE and isinstance(x.op, DenseOperator)
        for s in range(0, p, chunk):
            cf = flat[s:s + chunk]
            k = int(cf.numel())
            cn = cf if b == 1 else cf % n
            bidx = None if b == 1 else (cf // n).repeat(2)
            pair = torch.arange(k, device=lo.device).repeat(2) if level == 1 and b > 1 else None
            perm = None
            if bidx is not None:  # rows grouped by batch member (lower and upper rows interleaved)
                perm = torch.argsort(bidx, stable=True)
                bidx = bidx[perm]
                pair = None if pair is None else pair[perm]
            cols = None
            if dense:  # first step by row selection from [W; −W] instead of one-hot @ W
                parent = x.parents[0]
                cols = parent.prune.alive if parent.kind == ACT and parent.prune is not None else None
                wpm, bpm = self._signed_rows(x, cols)
                rows = torch.cat([cn, cn + n])
                lam = wpm.index_select(0, rows)
                const = bpm.index_select(0, rows) if bpm is not None else lam.new_zeros(2 * k)
                start = parent
            else:
                lam = torch.zeros(2 * k, n, dtype=lo.dtype, device=lo.device)
                r = torch.arange(k, device=lo.device)
                lam[r, cn] = 1.0
                lam[r + k, cn] = -1.0
                const, start = lam.new_zeros(2 * k), x
            if perm is not None:
                lam, const = lam[perm], const[perm]
            best = self._run_rows(start, lam, const, bidx, threshold=0.0 if level == 1 else None,
                                  pair=pair, halves=level == 1 and b == 1, cols=cols)
            if perm is not None:
                best = torch.empty_like(best).index_copy_(0, perm, best)
            lo.scatter_reduce_(0, cf, best[:k], "amax")
            hi.scatter_reduce_(0, cf, -best[k:], "amin")
        return lo.reshape(ilo.shape), hi.reshape(ihi.shape)

    @staticmethod
    def _signed_rows(x: DeepPolyElement, cols: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``[W; −W]`` (columns ``cols``) and ``[b; −b]`` of a dense element (memoised)."""
        memo = x.cache.get("signed_rows")
        if memo is not None and memo[0] is cols:
            return memo[1], memo[2]
        w, bias = dense_block(x, None, cols)
        wpm = torch.cat([w, -w]).contiguous()
        bpm = None if bias is None else torch.cat([bias, -bias])
        x.cache["signed_rows"] = (cols, wpm, bpm)
        return wpm, bpm

    def _run_rows(self, start: DeepPolyElement, lam: torch.Tensor, const: torch.Tensor,
                  bidx: torch.Tensor | None, *, threshold: float | None = None,
                  pair: torch.Tensor | None = None, halves: bool = False,
                  cols: torch.Tensor | None = None) -> torch.Tensor:
        """Lower bounds ``[R]`` of ``lam·start[cols] + const`` (rows chunked by the memory budget)."""
        r = lam.shape[0]
        chunk = self._chunk_rows(start)
        if pair is not None or halves or r <= chunk:  # (partner rows must stay in one chunk)
            return self._run_chunk(start, lam, const, bidx, threshold, pair, halves, cols)
        outs = [self._run_chunk(start, lam[s:s + chunk], const[s:s + chunk],
                                None if bidx is None else bidx[s:s + chunk], threshold, None, False, cols)
                for s in range(0, r, chunk)]
        return torch.cat(outs)

    def _chunk_rows(self, x: DeepPolyElement) -> int:
        """Rows per back-substitution chunk: memory budget (≈4 live ``[R, width]`` blocks) and cap."""
        rows = int(self.options.memory_mb * 2**20 / (8 * 4 * max(x.max_width, 1)))
        cap = self.options.max_rows
        if cap is None:
            cap = 2**21 // (8 * max(x.max_width, 1)) if self.device.type == "cpu" else rows
        return max(64, min(rows, cap))

    def _run_chunk(self, start, lam, const, bidx, threshold, pair, halves, cols) -> torch.Tensor:
        o = self.options
        bs = BackSubstitution(const, bidx, self._flat_bounds, batch=start.batch, margin=o.fp_margin,
                              keep_best=o.keep_best, threshold=threshold, pair=pair, halves=halves)
        bs.push(start, lam, cols)
        out = bs.run()
        if log.isEnabledFor(logging.DEBUG):
            log.debug("back-substitution from %r: %d rows, %d steps, %d rows stopped early",
                      start, lam.shape[0], bs.steps, bs.dropped)
        return out
