"""First-order SDP-cert: optimise the Lagrange multipliers directly, matrix-free (torch).

In the spirit of SDP-FO (Dathathri et al., "Enabling certification of verification-agnostic
networks via memory-efficient semidefinite programming", NeurIPS 2020) for the relaxation of
Raghunathan, Steinhardt & Liang (NeurIPS 2018) built by :mod:`absint.solvers.sdp_problem`.

For multipliers ``α ≥ 0`` (linear rows), ``μ`` (complementarity) and ``κ`` (diagonal) the dual
function

    F(α, μ, κ) = κ₀ + t + Σ_{i≥1} max(κᵢ + t, 0),   t = λ_max(M(α, μ, κ)),

is an upper bound of the SDP optimum for *every* choice of multipliers (see
:func:`absint.solvers.sdp_problem.certify`). It is minimised with Adam; three things make that work
(measured: without them the iterates never left the interval bound on mnist-net_256x2, and
needed 2–3× more iterations on the digits networks):

* **Schur reduction of the input block.** Every constraint matrix lives on the rows/columns of
  the constant and the ReLU variables, so the input-input block of ``M`` is ``−diag(κ_x)``.
  ``M ⪯ 0`` iff ``κ_x > 0`` and the ``(1+U)×(1+U)`` Schur complement
  ``M_red = M_rr + M_rx diag(1/κ_x) M_xr ⪯ 0``; the eigenvalue (and the trace-bound penalty)
  is taken on ``M_red``, the input multipliers enter smoothly through ``1/κ_x`` (optimised in
  log space, started at a small positive value).
* **Diagonal preconditioning**: each ``α_j``, ``μ_i`` is optimised in units of its constraint
  matrix's Frobenius norm, the step is relative to ``‖q‖``.
* **Smoothing**: ``λ_max`` is replaced by a log-sum-exp over the top Ritz values with a
  temperature that decays to ~0, which averages the gradient over near-multiple eigenvalues.

The top eigenpairs come from a warm-started Lanczos run that only uses products ``M w``
(:func:`absint.solvers.sdp_problem.lagrangian_matvec`), so neither ``P`` nor ``M`` is formed while
optimising; the gradient of ``t`` is ``uᵀ (∂M) u`` (autograd through one extra product).

Anytime: every iterate is a valid certificate. The Lanczos value is an estimate (from below),
so the iterate with the best *estimated* bound is kept and, when the run stops (iterations,
deadline, ``stop_below`` or the callback), certified rigorously by
:func:`~absint.solvers.sdp_problem.certify` (dense float64 eigenvalue with a rounding margin); the
returned numbers are always proved bounds. Device-agnostic (CPU or CUDA via ``device``).
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from absint.optim import Adam
from absint.solvers.sdp_problem import (SDPProblem, certify, interval_bound, interval_multipliers, lagrangian_dense,
                                 lagrangian_matvec, lanczos_top)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FOOptions:
    """Settings of the first-order solver.

    ``lr`` is relative to the norm of the objective ``‖q‖``, and each multiplier is measured in
    units of its constraint matrix's norm (diagonal preconditioning); the step warms up linearly
    over the first ``warmup`` fraction and then decays with a cosine schedule to ``lr·lr_final``.
    ``temperature`` (relative to mean ``|qᵢ|``) smooths ``λ_max`` by a log-sum-exp over the top
    ``ritz_vectors`` Ritz values; it decays geometrically to ``temperature_final``.
    ``certify_every > 0`` also certifies (rigorously, with a dense eigenvalue) every that many
    iterations — for anytime curves, ``O(N³)`` each. ``stop_below`` stops a row once its
    *certified* bound is below that value (checked when the estimate gets there). ``lr_log`` is
    the step of ``log κ_x``, ``input_kappa_init`` their start (relative to mean ``|qᵢ|``).
    ``diverge``: a row whose estimate exceeds its best by that many times its scale restarts from
    its best multipliers with half the step. ``trace`` records the estimate per iteration.
    """

    iterations: int = 1000
    lr: float = 0.02
    lr_final: float = 0.01
    warmup: float = 0.05
    temperature: float = 0.1
    temperature_final: float = 0.001
    ritz_vectors: int = 4
    lanczos_steps: int = 16
    certify_every: int = 0
    stop_below: float | None = None
    seed: int = 0
    dense_limit: int = 6000
    certify_last_max_n: int = 1500
    trace: bool = False
    lr_log: float = 0.05
    diverge: float = 5.0
    input_kappa_init: float = 0.1


@dataclass
class FOResult:
    """Proved upper bounds of each objective row's SDP value (violation), plus the trace."""

    upper: np.ndarray  # [m] certified
    estimate: np.ndarray  # [m] best Lanczos estimate of F (not a proof)
    iterations: int
    seconds: float
    certificate: str
    history: list[tuple[int, float, np.ndarray]] = field(default_factory=list)  # (iter, seconds, bound)
    multipliers: dict[str, torch.Tensor] = field(default_factory=dict)
    trace: list[np.ndarray] = field(default_factory=list)  # per iteration: estimated F (with options.trace)


def constraint_scales(prob: SDPProblem) -> tuple[torch.Tensor, torch.Tensor]:
    """``1/‖A_j‖_F`` of every linear row's and complementarity constraint's matrix (``[K]``, ``[U]``)."""
    L = prob.lin
    fa = ((L.pow(2).sum(1) + L[:, 0].pow(2)) / 2).sqrt() if prob.n_lin else L.new_zeros(0)
    if prob.n_relu:
        D = prob.relu_diff()
        e2 = prob.relu_m.pow(2) + prob.relu_r.pow(2)
        ed = prob.relu_m * D[:, 0] + prob.relu_r * D[torch.arange(prob.n_relu, device=D.device), prob.relu_index]
        fm = ((e2 * D.pow(2).sum(1) + ed.pow(2)) / 2).sqrt()
    else:
        fm = L.new_zeros(0)
    return 1 / fa.clamp(min=1e-12), 1 / fm.clamp(min=1e-12)


def _split_coordinates(prob: SDPProblem) -> tuple[torch.Tensor, torch.Tensor]:
    """``(r, x)``: the constant and ReLU coordinates, and the rest (the inputs).

    Every constraint matrix is supported on rows/columns ``{0, zᵢ}`` (``Eᵢ`` only involves ``e₀``
    and ``e_{zᵢ}``), so the ``x``-``x`` block of the Lagrangian matrix is exactly ``−diag(κ_x)``.
    """
    N = prob.size
    is_r = torch.zeros(N, dtype=torch.bool, device=prob.objective.device)
    is_r[0] = True
    is_r[prob.relu_index] = True
    r = torch.cat([torch.zeros(1, dtype=torch.long, device=is_r.device), prob.relu_index])
    x = torch.nonzero(~is_r).flatten()
    return r, x


class _Reduced:
    """The Schur complement of the diagonal input block, applied matrix-free.

    ``M ⪯ 0`` iff ``κ_x > 0`` (where coupled) and ``M_red = M_rr + M_rx diag(1/κ_x) M_xr ⪯ 0``
    (Schur). So only the ``1 + U`` ReLU/constant coordinates enter the eigenvalue problem and the
    trace-bound penalty; the input multipliers enter smoothly through ``1/κ_x``.
    """

    def __init__(self, prob: SDPProblem, r: torch.Tensor, x: torch.Tensor) -> None:
        self.p, self.r, self.x = prob, r, x

    def matvec(self, g: torch.Tensor, mu: torch.Tensor, kappa_r: torch.Tensor, kappa_x: torch.Tensor,
               w: torch.Tensor) -> torch.Tensor:
        B, N = g.shape
        kfull = g.new_zeros(B, N)
        kfull = kfull.index_copy(1, self.r, kappa_r)
        wf = w.new_zeros(B, N, w.shape[2]).index_copy(1, self.r, w)
        y = lagrangian_matvec(self.p, g, mu, kfull, wf)
        if self.x.numel() == 0:
            return y[:, self.r]
        vx = y[:, self.x] / kappa_x[:, :, None]
        vf = w.new_zeros(B, N, w.shape[2]).index_copy(1, self.x, vx)
        return y[:, self.r] + lagrangian_matvec(self.p, g, mu, kfull, vf)[:, self.r]

    def coupling(self, g: torch.Tensor, mu: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """``M_xr w`` ``[B, n_x, k]`` for ``w`` ``[B, R, k]``."""
        B, N = g.shape
        wf = w.new_zeros(B, N, w.shape[2]).index_copy(1, self.r, w)
        return lagrangian_matvec(self.p, g, mu, g.new_zeros(B, N), wf)[:, self.x]

    def dense(self, g: torch.Tensor, mu: torch.Tensor, kappa_r: torch.Tensor, kappa_x: torch.Tensor) -> torch.Tensor:
        """``M_red`` ``[B, R, R]`` (for the final certificate)."""
        B, N = g.shape
        kfull = g.new_zeros(B, N).index_copy(1, self.r, kappa_r)
        M = lagrangian_dense(self.p, g, mu, kfull)
        Mrr = M[:, self.r][:, :, self.r]
        if self.x.numel() == 0:
            return Mrr
        Mxr = M[:, self.x][:, :, self.r]
        return Mrr + Mxr.transpose(1, 2) @ (Mxr / kappa_x[:, :, None])


def _bound(kappa_r: torch.Tensor, kappa_x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``κ₀ + t + Σ_z max(κ_z + t, 0) + Σ κ_x`` (the dual bound after shifting ``κ_r`` by ``t``)."""
    return kappa_r[:, 0] + t + torch.relu(kappa_r[:, 1:] + t[:, None]).sum(dim=1) + kappa_x.sum(dim=1)


def solve_fo(prob: SDPProblem, *, options: FOOptions = FOOptions(), device: torch.device | str | None = None,
             deadline: float | None = None, callback: Callable[[int, np.ndarray], bool | None] | None = None,
             init: dict[str, torch.Tensor] | None = None) -> FOResult:
    """Minimise the dual function of every objective row (batched) and certify the best iterate.

    The input block is eliminated by a Schur complement (:class:`_Reduced`): the iterations work
    on ``(α, μ, κ_r, log κ_x)`` and the top eigenvalue of the ``(1+U)×(1+U)`` reduced matrix;
    the certificate is then computed on the full Lagrangian (:func:`certify`).

    ``deadline`` (``time.perf_counter()`` value) stops the iterations early, leaving time for the
    final certificate. ``callback(iteration, estimates)`` may return True to stop. ``init``
    (keys ``alpha``, ``mu``, ``kappa``, each ``[m, ·]``) warm-starts the multipliers.
    """
    t0 = time.perf_counter()
    dev = torch.device(device) if device is not None else prob.objective.device
    p = prob.to(dev, torch.float64)
    q = p.objective
    B, N = q.shape
    K, U = p.n_lin, p.n_relu
    r_idx, x_idx = _split_coordinates(p)
    R = int(r_idx.numel())
    red = _Reduced(p, r_idx, x_idx)
    gen = torch.Generator().manual_seed(options.seed)
    if init is None:
        alpha = torch.zeros(B, K, dtype=torch.float64, device=dev)
        mu = torch.zeros(B, U, dtype=torch.float64, device=dev)
        kappa = interval_multipliers(q)
    else:
        alpha, mu, kappa = (init[k].to(dev, torch.float64).clone() for k in ("alpha", "mu", "kappa"))
    scale = float(q[:, 1:].abs().mean()) if N > 1 else 1.0
    scale = scale if scale > 0 else 1.0
    floor = 1e-9 * scale
    # Diagonal preconditioning: each multiplier is optimised in units of its constraint matrix's
    # Frobenius norm, so one Adam step moves M by about the same amount whatever the row; the
    # input multipliers (positive) are optimised in log space.
    s_a, s_m = constraint_scales(p)
    th_a = (alpha / s_a).requires_grad_(True)
    th_m = (mu / s_m).requires_grad_(True)
    th_r = kappa[:, r_idx].clone().requires_grad_(True)
    # Inputs start at a small positive multiplier (not 0): once μ couples them, 1/κ_x must not blow up.
    kx_init = kappa[:, x_idx].clamp(min=options.input_kappa_init * scale) if init is None else kappa[:, x_idx]
    th_x = kx_init.clamp(min=floor).log().requires_grad_(True)
    lr0 = options.lr * float(q[:, 1:].norm(dim=1).mean()) if N > 1 else options.lr
    lr0 = lr0 if lr0 > 0 else options.lr
    opt = Adam([{"params": [th_a, th_m, th_r], "lr": lr0},
                            {"params": [th_x], "lr": options.lr_log}])
    base_lr = [lr0, options.lr_log]
    T = max(1, options.iterations)
    params = lambda: (th_a * s_a, th_m * s_m, th_r, th_x.exp() + floor)  # noqa: E731

    def full_kappa(k_r: torch.Tensor, k_x: torch.Tensor) -> torch.Tensor:
        return k_r.new_zeros(k_r.shape[0], N).index_copy(1, r_idx, k_r).index_copy(1, x_idx, k_x)

    best = torch.full((B,), math.inf, dtype=torch.float64, device=dev)
    with torch.no_grad():
        a0, m0, kr0, kx0 = params()
    best_p = [a0.clone(), m0.clone(), kr0.clone(), kx0.clone()]
    u0 = torch.randn(B, R, dtype=torch.float64, generator=gen).to(dev)
    nv = max(1, min(options.ritz_vectors, options.lanczos_steps, R))
    history: list[tuple[int, float, np.ndarray]] = []
    it = 0
    active = torch.ones(B, dtype=torch.bool, device=dev)
    recheck = torch.zeros(B, dtype=torch.long, device=dev)
    trace: list[np.ndarray] = []
    row_scale = torch.ones(B, dtype=torch.float64, device=dev)
    proved = torch.full((B,), math.inf, dtype=torch.float64, device=dev)

    def certify_params(rows: torch.Tensor, a, m, k_r, k_x) -> np.ndarray:
        """Proved bounds for ``rows``: shift κ_r by the reduced top eigenvalue, then certify fully."""
        with torch.no_grad():
            g = q[rows] + (a.clamp(min=0) @ p.lin if K else 0.0)
            Mr = red.dense(g, m, k_r, k_x)
            t = torch.linalg.eigvalsh(Mr)[:, -1]
            k_r2 = k_r.clone()
            k_r2[:, 0] += t
            k_r2[:, 1:] = torch.clamp(k_r2[:, 1:] + t[:, None], min=0)
            sub = p.select(rows.tolist())
            return certify(sub, q[rows], a, m, full_kappa(k_r2, k_x), dense_limit=options.dense_limit).upper

    for it in range(1, T + 1):
        if deadline is not None and time.perf_counter() > deadline:
            it -= 1
            break
        alpha, mu, k_r, k_x = params()
        with torch.no_grad():
            g = q + (alpha @ p.lin if K else 0.0)
            mv = lambda w: red.matvec(g, mu, k_r, k_x, w)  # noqa: E731
            ritz, vecs, _ = lanczos_top(mv, R, B, steps=options.lanczos_steps, start=u0, dtype=torch.float64,
                                        device=dev, generator=gen, all_pairs=True)
            u = vecs[:, -nv:, :]
            u0 = u[:, -1, :]
            temp = 0.0
            if options.temperature > 0:
                t_end = max(options.temperature_final, 1e-12)
                temp = scale * options.temperature * (t_end / options.temperature) ** ((it - 1) / T)
        g = q + (alpha @ p.lin if K else 0.0)
        Mu = red.matvec(g, mu, k_r, k_x, u.transpose(1, 2))  # [B, R, nv]
        theta = (u.transpose(1, 2) * Mu).sum(dim=1)  # Rayleigh quotients [B, nv]
        tmax = theta.max(dim=1).values
        # log-sum-exp smoothing of λ_max over the top Ritz values (≥ max θ); T → 0 gives λ_max
        t_s = temp * torch.logsumexp(theta / temp, dim=1) if temp > 0 else tmax
        F = _bound(k_r, k_x, t_s)
        F_est = _bound(k_r, k_x, tmax).detach()
        if options.trace:
            trace.append(F_est.cpu().numpy())
        with torch.no_grad():
            improved = (F_est < best) & active
            best = torch.where(improved, F_est, best)
            for slot, val in zip(best_p, (alpha, mu, k_r, k_x)):
                slot[improved] = val.detach()[improved]
            # Divergence guard: a row whose bound blows up far beyond its best restarts from its
            # best multipliers (fresh Adam moments) with half the step.
            bad = active & (F_est > best + options.diverge * (best.abs() + scale * N ** 0.5))
            if options.stop_below is not None:
                # Stop a row only once its *certified* bound is below the target (the Lanczos
                # estimate can be optimistic).
                cand = active & (best < options.stop_below) & (recheck <= it)
                if bool(cand.any()):
                    rows = torch.nonzero(cand).flatten()
                    ub = certify_params(rows, *(t_[rows] for t_ in best_p))
                    ok = torch.as_tensor(ub < options.stop_below, device=dev)
                    proved[rows[ok]] = torch.as_tensor(ub, device=dev)[ok]
                    active[rows[ok]] = False
                    recheck[rows[~ok]] = it + max(10, T // 20)
        if not bool(active.any()):
            break
        opt.zero_grad(set_to_none=True)
        (F * active).sum().backward()
        # linear warm-up, then cosine decay of the step size
        frac = options.lr_final + (1 - options.lr_final) * 0.5 * (1 + math.cos(math.pi * (it - 1) / T))
        if options.warmup > 0:
            frac *= min(1.0, it / max(1.0, options.warmup * T))
        for group, lr in zip(opt.param_groups, base_lr):
            group["lr"] = lr * frac
        before = [t_.detach().clone() for t_ in (th_a, th_m, th_r, th_x)]
        opt.step()
        with torch.no_grad():
            for t_, b_ in zip((th_a, th_m, th_r, th_x), before):  # per-row step scale
                t_.copy_(b_ + row_scale[:, None] * (t_ - b_))
            th_a.clamp_(min=0)
            if bool(bad.any()):
                th_a[bad] = best_p[0][bad] / s_a
                th_m[bad] = best_p[1][bad] / s_m
                th_r[bad] = best_p[2][bad]
                th_x[bad] = (best_p[3][bad] - floor).clamp(min=floor).log()
                for prm in (th_a, th_m, th_r, th_x):
                    st = opt.state.get(prm, {})
                    for key in ("exp_avg", "exp_avg_sq"):
                        if key in st:
                            st[key][bad] = 0
                row_scale[bad] *= 0.5
        if options.certify_every and it % options.certify_every == 0:
            history.append((it, time.perf_counter() - t0, certify_params(torch.arange(B, device=dev), *best_p)))
        if callback is not None and callback(it, best.detach().cpu().numpy()):
            break
    all_rows = torch.arange(B, device=dev)
    upper = np.minimum(certify_params(all_rows, *best_p), interval_bound(q, p.objective_err))
    # The estimate that chose "best" may be optimistic: also certify the last iterate (up to
    # N = certify_last_max_n, an extra O(N³) eigenvalue), and never return anything worse than
    # the interval bound (the certificate of the initial multipliers); every one is valid.
    if N <= options.certify_last_max_n:
        with torch.no_grad():
            upper = np.minimum(upper, certify_params(all_rows, *(t_.detach() for t_ in params())))
    upper = np.minimum(upper, proved.cpu().numpy())
    history.append((it, time.perf_counter() - t0, upper.copy()))
    log.debug("SDP-FO: N=%d (reduced %d), %d iterations in %.2f s, bounds %s", N, R, it,
              time.perf_counter() - t0, upper)
    a, m, k_r, k_x = best_p
    return FOResult(upper, best.detach().cpu().numpy(), it, time.perf_counter() - t0,
                    "dense" if N <= options.dense_limit else "lanczos (not rigorous)", history,
                    {"alpha": a.cpu(), "mu": m.cpu(), "kappa": full_kappa(k_r, k_x).cpu()}, trace)
