"""Optimised-slope + split-multiplier bounds for ReLU-split sub-problems (β-CROWN style).

Wang, Zhang, Xu, Lin, Jana, Hsieh, Kolter, "Beta-CROWN: Efficient Bound Propagation with
Per-neuron Split Constraints for Neural Network Robustness Verification", NeurIPS 2021.

A sub-problem is the root input box plus a phase per ReLU (``+1``: ``z ≥ 0``, ``−1``: ``z ≤ 0``,
``0``: free). Its bound is computed as follows (chain networks only, see
:func:`absint.domains.alpha.chain_of`):

1. Intermediate pre-activation bounds ``l, u`` of the *root* (DeepPoly, then α-optimised per layer
   by :class:`absint.domains.alpha.AlphaBounder`) are computed once; they hold on every sub-problem. Per
   sub-problem they are clamped by its split constraints (active: ``l = max(l, 0)``, inactive:
   ``u = min(u, 0)``); a sub-problem whose clamped bounds are contradictory (``l > u``) is empty
   (*infeasible*, proved vacuously).
2. Each safety row ``c·y + d`` is bounded by back-substitution through the chain, with an upper
   chord and an optimisable lower slope ``α ∈ [0, 1]`` per unstable neuron, row and sub-problem,
   and the split constraints ``s_j z_j ≥ 0`` entering by Lagrangian relaxation: for ``β_j ≥ 0``,
   ``c·y ≥ c·y − Σ_j β_j s_j z_j`` on the sub-problem, so ``−β_j s_j`` is added to the
   coefficient of ``z_j`` when the backward pass reaches that layer. Every ``α ∈ [0, 1]`` and
   ``β ≥ 0`` gives a sound lower bound, so both are optimised by projected Adam for a few
   iterations and the best bound seen (per row and sub-problem) is kept, widened by a float64
   rounding margin.

3. Per sub-problem, the intermediate bounds of the layers after its newest split are re-bounded
   by back-substitution over its own clamped bounds (DeepPoly slopes, split ReLUs exact there:
   :meth:`BetaBounder.tighten`); the result is stored with the sub-problem and inherited by its
   children (a child is a subset of its parent), as are its best ``α``/``β`` (warm start).

Everything is batched: one back-substitution row per (sub-problem, still-open safety row) pair
(rows of clauses the parent already refuted are skipped). The slopes start from the parent's, or
the root's optimised slopes. Sub-problems with no unstable unsplit ReLU left get
``leaf_iters`` more iterations (there the bound is the Lagrangian dual of an LP, exact at the
optimal ``β``) before the engine reports them stuck.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from absint.ir import Graph
from absint.domains.alpha import AlphaBounder, AlphaOptions, chain_of
from absint.domains.relaxations import relu_lower_slope, relu_upper_line


@dataclass(frozen=True)
class BetaOptions:
    """``iters`` Adam steps per batch (``lr_alpha``, ``lr_beta``); ``root_iters`` for the root's
    rows; ``layer_iters`` for the root's α-optimised intermediate bounds (0: DeepPoly's only);
    ``margin`` relative + absolute outward widening of every returned bound; ``tighten``:
    re-bound the intermediate pre-activations of the layers after each new split per sub-problem
    (DeepPoly slopes over the clamped bounds, :meth:`BetaBounder.tighten`)."""

    iters: int = 20
    lr_alpha: float = 0.1
    lr_beta: float = 0.05
    root_iters: int = 100
    layer_iters: int = 30
    margin: float = 1e-9
    tighten: bool = True
    leaf_iters: int = 300


@dataclass
class BetaOut:
    rows: torch.Tensor  # [k, m] proved lower bounds of C y + d
    infeasible: torch.Tensor  # [k] bool
    A: torch.Tensor  # [k, m, n_in] input coefficients of the last backward pass (heuristics only)
    pre_lo: torch.Tensor  # [k, n_relu] clamped pre-activation bounds
    pre_hi: torch.Tensor
    coef: torch.Tensor  # [k, m, n_relu] coefficient of each post-ReLU value in the last pass
    alpha: torch.Tensor | None = None  # [k, m, U] best slopes on the root-unstable neurons (float32)
    beta: torch.Tensor | None = None  # [k, m, U] best multipliers on them


class BetaBounder:
    """β-CROWN-style bounds of ``C y + d`` on ReLU-split sub-problems of one input box."""

    def __init__(self, graph: Graph, lower: torch.Tensor, upper: torch.Tensor, C: torch.Tensor,
                 d: torch.Tensor, options: BetaOptions = BetaOptions(), *, root_pre=None,
                 deadline: float | None = None) -> None:
        chain = chain_of(graph)
        if chain is None:
            raise ValueError("alpha-beta bounding needs a chain network (Affine/Reshape/ReLU)")
        self.chain, self.opt = chain, options
        self.dtype = torch.float64
        self.ab = AlphaBounder(chain, AlphaOptions(iters=options.layer_iters, margin=options.margin),
                               dtype=self.dtype)
        self.steps = self.ab.steps
        self.lo_in = lower.reshape(-1).to(self.dtype)
        self.hi_in = upper.reshape(-1).to(self.dtype)
        self.mid, self.rad = (self.lo_in + self.hi_in) / 2, (self.hi_in - self.lo_in) / 2
        self.C, self.d = C.to(self.dtype), d.to(self.dtype)
        self.sizes = list(chain.pre_sizes)
        self.offsets = [sum(self.sizes[:i]) for i in range(len(self.sizes))]
        t0 = time.perf_counter()
        if root_pre is None:
            root_pre = self._deeppoly_pre(graph, deadline)
        pre_lo, pre_hi = root_pre
        res = self.ab.run(self.lo_in, self.hi_in, pre_lo, pre_hi, layers=options.layer_iters > 0,
                          deadline=deadline)
        self.root_lo = [t.clone() for t in res.pre_lo]
        self.root_hi = [t.clone() for t in res.pre_hi]
        # Only root-unstable neurons ever get an optimised slope or a split: their per-sub-problem
        # α/β are stored (float32, [k, m, U]) to warm-start the children.
        self.unst = [torch.nonzero((l < 0) & (u > 0)).reshape(-1) for l, u in zip(self.root_lo, self.root_hi)]
        self.upos = [sum(int(t.numel()) for t in self.unst[:j]) for j in range(len(self.unst))]
        self.n_unstable = sum(int(t.numel()) for t in self.unst)
        # Root rows with many iterations; its slopes warm-start every sub-problem.
        self.root_alpha: list[torch.Tensor | None] = [None] * len(self.sizes)
        splits0 = torch.zeros(1, sum(self.sizes), dtype=torch.int8)
        out = self.bound(splits0, iters=options.root_iters, deadline=deadline, keep_alpha=True)
        self.root_rows = out.rows[0]
        self.root_out = out
        self.stats = {"root_seconds": time.perf_counter() - t0, "unstable_root": res.stats.get("unstable_after")}

    def _deeppoly_pre(self, graph: Graph, deadline: float | None = None):
        from absint.bab.bounding import Bounder
        from absint.registry import get_domain
        from absint.domains.deeppoly import DeepPolyOptions

        b = Bounder(graph, get_domain("deeppoly")(DeepPolyOptions(early_stop=False)))
        out = b.bound(self.lo_in[None], self.hi_in[None], self.C, self.d, want_pre=True, deadline=deadline)
        return [t[0] for t in out.pre_lo], [t[0] for t in out.pre_hi]

    # ---------------------------------------------------------------------------------------
    def _layer(self, splits: torch.Tensor, j: int):
        s = splits[:, self.offsets[j]:self.offsets[j] + self.sizes[j]].to(self.dtype)
        l = torch.where(s > 0, self.root_lo[j].clamp(min=0)[None], self.root_lo[j][None])
        u = torch.where(s < 0, self.root_hi[j].clamp(max=0)[None], self.root_hi[j][None])
        return s, l, u

    def _backward(self, lam: torch.Tensor, layers, alphas, betas, keep_coef: bool = False, start: int | None = None):
        """``lam``: ``[R, n_out]`` (one row per (sub-problem, row) pair; ``layers`` gathered to match).
        Returns lower bounds ``[R]`` (without ``d``), the input coefficients and, with
        ``keep_coef``, the coefficient of each post-ReLU value per layer."""
        R = lam.shape[0]
        const = lam.new_zeros(R)
        coefs: dict[int, torch.Tensor] = {}
        for i in range(len(self.steps) - 1 if start is None else start, -1, -1):
            step = self.steps[i]
            if step[0] == "affine":
                op = step[1]
                const = const + lam @ step[2]
                lam = op.transpose(lam.reshape(R, *op.out_shape)).reshape(R, -1)
            else:
                j = step[1]
                s, l, u, unstable, active, us, uo, ls0 = layers[j]
                if keep_coef:
                    coefs[j] = lam.detach()
                a = alphas.get(j)
                ls = ls0 if a is None else torch.where(unstable, a.clamp(0, 1), active.to(lam.dtype))
                pos, neg = lam.clamp(min=0), lam.clamp(max=0)
                const = const + (neg * uo).sum(-1)
                lam = pos * ls + neg * us
                b = betas.get(j)
                if b is not None:
                    lam = lam - b * s
        val = lam @ self.mid - lam.abs() @ self.rad + const
        return val, lam, coefs

    @staticmethod
    def _relax(s, l, u):
        unstable = (l < 0) & (u > 0)
        us, uo = relu_upper_line(l, u)
        return (s, l, u, unstable, l >= 0, us, uo, relu_lower_slope(l, u))

    def tighten(self, per_layer: list, infeasible: torch.Tensor, from_layer: torch.Tensor) -> None:
        """Re-bound (in place) the unstable, unsplit pre-activations of layers ``j ≥ from_layer[i]``
        of each sub-problem ``i`` by back-substitution over its own (clamped, tightened) bounds of
        the layers before (DeepPoly slopes; the split ReLUs are exact there). Contradictory
        bounds mark the sub-problem infeasible."""
        m = self.opt.margin
        for j in range(1, len(self.sizes)):
            s, l, u = per_layer[j]
            need = (l < 0) & (u > 0) & (s == 0) & (from_layer <= j)[:, None] & ~infeasible[:, None]
            pairs = torch.nonzero(need)
            if pairs.numel() == 0:
                continue
            sub, neu = pairs[:, 0], pairs[:, 1]
            R = int(sub.numel())
            layers = {i: self._relax(*(t[sub] for t in per_layer[i])) for i in range(j)}
            lam = torch.zeros(2 * R, self.sizes[j], dtype=self.dtype)
            ar = torch.arange(R)
            lam[ar, neu] = 1.0
            lam[R + ar, neu] = -1.0
            layers2 = {i: tuple(torch.cat([t, t]) for t in v) for i, v in layers.items()}
            with torch.no_grad():
                val, _, _ = self._backward(lam, layers2, {}, {}, start=self.chain.pre_step[j])
            val = val - m * (1 + val.abs())
            lo_new = torch.maximum(l[sub, neu], val[:R])
            hi_new = torch.minimum(u[sub, neu], -val[R:])
            l, u = l.clone(), u.clone()
            l[sub, neu] = lo_new
            u[sub, neu] = hi_new
            bad = torch.zeros_like(infeasible)
            bad[sub[lo_new > hi_new]] = True
            infeasible |= bad
            u = torch.maximum(u, l)
            per_layer[j] = (s, l, u)

    def _unpack(self, packed, j: int, base: torch.Tensor) -> torch.Tensor:
        """``base`` ``[R, n_j]`` with the root-unstable entries of layer ``j`` taken from ``packed`` ``[R, U]``."""
        idx = self.unst[j]
        if packed is None or idx.numel() == 0:
            return base
        out = base.clone()
        out[:, idx] = packed[:, self.upos[j]:self.upos[j] + idx.numel()].to(self.dtype)
        return out

    def _pack(self, full: dict[int, torch.Tensor], R: int) -> torch.Tensor:
        parts = []
        for j, idx in enumerate(self.unst):
            t = full.get(j)
            parts.append(t[:, idx].float() if t is not None else torch.zeros(R, idx.numel()))
        return torch.cat(parts, -1)

    def bound(self, splits: torch.Tensor, *, iters: int | None = None, deadline: float | None = None,
              keep_alpha: bool = False, stop_above: float | None = None, init_alpha: torch.Tensor | None = None,
              init_beta: torch.Tensor | None = None, open_rows: torch.Tensor | None = None,
              pre: tuple[torch.Tensor, torch.Tensor] | None = None, from_layer: torch.Tensor | None = None) -> BetaOut:
        """Bounds of the rows on the sub-problems ``splits`` ``[k, n_relu]`` (int8 phases).

        ``init_alpha``/``init_beta`` (``[k, m, U]``, e.g. the parents') warm-start the
        optimisation; ``open_rows`` (``[k, m]`` bool): only these rows are bounded, the others get
        ``−inf`` (the caller keeps the parent's bound for them). ``pre``: bounds ``[k, n_relu]``
        known to hold on each sub-problem (its parent's); ``from_layer`` ``[k]``: re-tighten the
        intermediate bounds of the layers from this one on (see :meth:`tighten`)."""
        iters = self.opt.iters if iters is None else iters
        k = splits.shape[0]
        m = self.C.shape[0]
        infeasible = torch.zeros(k, dtype=torch.bool)
        per_layer, los, his = [], [], []
        for j in range(len(self.sizes)):
            s, l, u = self._layer(splits, j)
            infeasible |= (l > u).any(1)
            if pre is not None:  # the parent's tightened bounds hold on the child too
                p_lo = pre[0][:, self.offsets[j]:self.offsets[j] + self.sizes[j]]
                p_hi = pre[1][:, self.offsets[j]:self.offsets[j] + self.sizes[j]]
                l, u = torch.maximum(l, p_lo), torch.minimum(u, p_hi)
                infeasible |= (l > u).any(1)
            u = torch.maximum(u, l)  # empty sub-problems: any consistent values (result discarded)
            per_layer.append((s, l, u))
        if self.opt.tighten and from_layer is not None:
            self.tighten(per_layer, infeasible, from_layer)
        for s_, l, u in per_layer:
            los.append(l)
            his.append(u)
        if open_rows is None:
            open_rows = torch.ones(k, m, dtype=torch.bool)
        open_rows = open_rows & ~infeasible[:, None]
        pairs = torch.nonzero(open_rows)
        sub, row = pairs[:, 0], pairs[:, 1]
        R = int(sub.numel())
        U = self.n_unstable
        rows_out = torch.full((k, m), -float("inf"), dtype=self.dtype)
        A_out = torch.zeros(k, m, self.lo_in.numel(), dtype=self.dtype)
        coef_out = torch.zeros(k, m, sum(self.sizes), dtype=self.dtype)
        alpha_out = init_alpha.clone() if init_alpha is not None else torch.zeros(k, m, U)
        beta_out = init_beta.clone() if init_beta is not None else torch.zeros(k, m, U)
        if R == 0:
            return BetaOut(rows_out, infeasible, A_out, torch.cat(los, 1), torch.cat(his, 1), coef_out,
                           alpha_out, beta_out)
        layers = {}
        alphas: dict[int, torch.Tensor] = {}
        betas: dict[int, torch.Tensor] = {}
        ia = init_alpha[sub, row] if init_alpha is not None else None
        ib = init_beta[sub, row] if init_beta is not None else None
        for j, (s, l, u) in enumerate(per_layer):
            layers[j] = self._relax(s[sub], l[sub], u[sub])
            s, l, u, unstable, active, us, uo, ls0 = layers[j]
            if bool(unstable.any()):
                ra = self.root_alpha[j]
                init = (ra[row] if ra is not None else ls0).clone()
                alphas[j] = self._unpack(ia, j, init).clamp(0, 1).requires_grad_(True)
            if bool((s != 0).any()):
                init = self._unpack(ib, j, torch.zeros(R, self.sizes[j], dtype=self.dtype))
                betas[j] = init.clamp(min=0).requires_grad_(True)
        lam0 = self.C[row]
        d = self.d[row]
        with torch.no_grad():
            best, A, coefs = self._backward(lam0, layers, {j: a.detach() for j, a in alphas.items()},
                                            {j: b.detach() for j, b in betas.items()}, keep_coef=True)
        best_alpha = {j: a.detach().clone() for j, a in alphas.items()}
        best_beta = {j: b.detach().clone() for j, b in betas.items()}
        params = list(alphas.values()) + list(betas.values())
        if iters > 0 and params:
            groups = []
            if alphas:
                groups.append({"params": list(alphas.values()), "lr": self.opt.lr_alpha})
            if betas:
                groups.append({"params": list(betas.values()), "lr": self.opt.lr_beta})
            adam = torch.optim.Adam(groups)
            for it in range(iters + 1):
                if deadline is not None and time.perf_counter() > deadline:
                    break
                if stop_above is not None and bool(((best + d) > stop_above).all()):
                    break
                last = it == iters
                with torch.set_grad_enabled(not last):
                    val, A_it, coefs_it = self._backward(lam0, layers, alphas, betas, keep_coef=True)
                with torch.no_grad():  # val: the exact bound of the current (projected) parameters
                    v = val.detach()
                    better = v > best
                    for j, a in alphas.items():
                        best_alpha[j] = torch.where(better[:, None], a.detach(), best_alpha[j])
                    for j, b in betas.items():
                        best_beta[j] = torch.where(better[:, None], b.detach(), best_beta[j])
                    best = torch.maximum(best, v)
                    A, coefs = A_it.detach(), coefs_it
                if last:
                    break
                adam.zero_grad()
                (-val.sum()).backward()
                adam.step()
                with torch.no_grad():
                    for a in alphas.values():
                        a.clamp_(0, 1)
                    for b in betas.values():
                        b.clamp_(min=0)
        if keep_alpha:
            for j, a in best_alpha.items():
                self.root_alpha[j] = a.clone()  # root: one pair per row, in row order
        vals = best + d
        vals = vals - self.opt.margin * (1 + vals.abs())
        rows_out[sub, row] = vals.detach()
        A_out[sub, row] = A
        coef_out[sub, row] = torch.cat([coefs[j] for j in range(len(self.sizes))], dim=-1)
        alpha_out[sub, row] = self._pack(best_alpha, R)
        beta_out[sub, row] = self._pack(best_beta, R)
        return BetaOut(rows_out, infeasible, A_out, torch.cat(los, 1), torch.cat(his, 1), coef_out,
                       alpha_out, beta_out)


# -- the splitting strategy --------------------------------------------------------------------
from absint.bab.common import worst_rows  # noqa: E402
from absint.bab.relu_split import ReluSplitting  # noqa: E402


class BetaReluSplitting(ReluSplitting):
    """ReLU splitting with sub-problems bounded by :class:`BetaBounder` (built lazily on the first
    batch, within its deadline). ``babsr`` scores use the backward pass's own coefficients: for
    the worst open row, ``max(−c_j, 0)·(−u l/(u − l))`` (the chord intercept the bound pays at
    neuron ``j``, Bunel et al. 2020) plus a smaller term for the lower line on ``c_j > 0``."""

    def __init__(self, bounder, region, C, d, onehot, heuristic: str = "babsr", attack: bool = True,
                 options: BetaOptions = BetaOptions()) -> None:
        super().__init__(bounder, region, C, d, onehot, heuristic, attack)
        self.beta_options = options
        self.beta: BetaBounder | None = None

    def _ensure(self, deadline):
        if self.beta is None:
            pre = None
            if self.b.symbolic:  # the strategy's own domain (DeepPoly by default) gives the start
                out = self.b.bound(self.lo[None], self.hi[None], self.C, self.d, want_pre=True, deadline=deadline)
                pre = ([t[0] for t in out.pre_lo], [t[0] for t in out.pre_hi])
            self.beta = BetaBounder(self.b.graph, self.lo, self.hi, self.C, self.d, self.beta_options,
                                    root_pre=pre, deadline=deadline)
            if self.beta.sizes != self.b.sizes:
                raise ValueError("ReLU layers of the chain and of the graph differ")
        return self.beta

    def bound(self, batch, deadline):
        bb = self._ensure(deadline)
        if deadline is not None and time.perf_counter() > deadline:
            raise TimeoutError("time limit reached before bounding the sub-problems")
        # rows of clauses the parent already refuted keep the parent's bound (the engine takes the max)
        rl = batch["row_lb"]
        r = rl[:, :, None].expand(-1, -1, self.onehot.shape[1])
        clause_lb = torch.where(self.onehot[None], r, torch.full_like(r, -float("inf"))).max(dim=1).values
        open_rows = ((clause_lb <= 1e-8)[:, None, :] & self.onehot[None]).any(-1)
        pre = (batch["pre_lo"], batch["pre_hi"]) if "pre_lo" in batch else None
        out = bb.bound(batch["splits"], deadline=deadline, stop_above=1e-6, open_rows=open_rows,
                       init_alpha=batch.get("alpha"), init_beta=batch.get("beta"), pre=pre,
                       from_layer=batch.get("from_layer"))
        rows = out.rows
        # Leaves (no unstable unsplit ReLU left) that are still open: the relaxation is exact there
        # up to the optimisation of β (Lagrangian dual of a linear program), so optimise them longer
        # before the engine reports them stuck.
        leaf = ~((out.pre_lo < 0) & (out.pre_hi > 0) & (batch["splits"] == 0)).any(1) & ~out.infeasible
        rl_new = torch.maximum(rows, rl)
        cl = torch.where(self.onehot[None], rl_new[:, :, None].expand(-1, -1, self.onehot.shape[1]),
                         torch.full((rows.shape[0], rows.shape[1], self.onehot.shape[1]), -float("inf"),
                                    dtype=rows.dtype)).max(dim=1).values
        leaf &= (cl <= 1e-8).any(1)
        if bool(leaf.any()) and (deadline is None or time.perf_counter() < deadline):
            idx = torch.nonzero(leaf).reshape(-1)
            sub = bb.bound(batch["splits"][idx], iters=self.beta_options.leaf_iters, deadline=deadline,
                           stop_above=1e-6, init_alpha=out.alpha[idx], init_beta=out.beta[idx],
                           pre=(out.pre_lo[idx], out.pre_hi[idx]), open_rows=open_rows[idx])
            rows = rows.clone()
            rows[idx] = torch.maximum(rows[idx], sub.rows)
        extra = {"A": out.A, "pre_lo": out.pre_lo, "pre_hi": out.pre_hi, "coef": out.coef,
                 "alpha": out.alpha, "beta": out.beta}
        return rows, out.infeasible, extra

    def _scores(self, batch, extra, rows, open_clause):
        if self.heuristic != "babsr":
            return super()._scores(batch, extra, rows, open_clause)
        l, u = extra["pre_lo"], extra["pre_hi"]
        unstable = self._unstable(batch, extra)
        r = worst_rows(rows, self.onehot, open_clause)
        c = extra["coef"][torch.arange(rows.shape[0]), r]
        intercept = (-u * l / (u - l).clamp(min=1e-12)).clamp(min=0)
        score = (-c).clamp(min=0) * intercept + 0.25 * c.clamp(min=0) * torch.minimum(u, -l).clamp(min=0) \
            + 1e-6 * intercept
        return torch.where(unstable, score, torch.full_like(score, -1.0))

    def branch(self, batch, extra, rows, open_clause):
        children = super().branch(batch, extra, rows, open_clause)
        if extra is not None and extra.get("alpha") is not None:  # warm start: the parent's α, β
            children["alpha"] = torch.cat([extra["alpha"]] * 2)
            children["beta"] = torch.cat([extra["beta"]] * 2)
            children["pre_lo"] = torch.cat([extra["pre_lo"]] * 2)
            children["pre_hi"] = torch.cat([extra["pre_hi"]] * 2)
            # layer of the new split (the first changed position) + 1: the layers to re-tighten
            new = (children["splits"] != torch.cat([batch["splits"]] * 2)).to(torch.int8).argmax(dim=1)
            layer_of = torch.bucketize(new, torch.tensor(self.b.offsets[1:] + [self.b.n_relu]), right=True)
            children["from_layer"] = layer_of.to(torch.int32) + 1
        return children
