"""Problem construction for SDP-cert, shared by the exact and the first-order solver.

The relaxation is the one of Raghunathan, Steinhardt & Liang, "Semidefinite relaxations for
certifying robustness to adversarial examples" (NeurIPS 2018). A ReLU layer ``z = relu(s)``,
``s = W x + b``, is the quadratic system ``z ≥ 0``, ``z ≥ s``, ``z ⊙ (z − s) = 0`` and every
variable ``x`` with bounds ``l ≤ x ≤ u`` satisfies ``(x − l) ⊙ (x − u) ≤ 0``. Lifting
``v = [1; x⁰; x¹; …]`` to ``P = v vᵀ`` and dropping the rank gives the SDP
``max ⟨Q, P⟩  s.t.  P ⪰ 0, P₀₀ = 1`` plus the constraints above written on ``P``.

Construction choices (all sound):

* **Normalised coordinates.** As in SDP-FO (Dathathri et al., NeurIPS 2020) every variable is
  written ``x = m + r x̂`` with ``x̂ ∈ [−1, 1]``, so the bound constraint becomes ``P̂ᵢᵢ ≤ 1`` and
  the trace of ``P̂`` is at most ``N`` (the size of ``P̂``) — the trace bound used by the
  certificate.
* **Stable neurons are eliminated** before lifting: a neuron whose pre-activation bounds give
  ``u ≤ 0`` is the constant 0, one with ``l ≥ 0`` is replaced by its (affine) pre-activation, so
  later layers read earlier variables directly. Only unstable neurons become variables.
* **Linear pre-activation bounds** ``l ≤ s ≤ u`` are kept as linear constraints on the first
  row of ``P̂`` (this retains what eliminated neurons imposed, at the cost of one row each).
* Optionally the triangle (LP) upper line ``z ≤ u (s − l) / (u − l)`` is added as a linear cut
  (off by default: the paper's relaxation does not have it).

All constraints are then of three kinds, which is what both solvers and the certificate see:

* ``L v̂ ≥ 0`` on the first row of ``P̂`` (``L``: ``[K, N]``, constants in column 0),
* ``(E v̂)ᵢ ((E − Â) v̂)ᵢ = 0`` per unstable neuron (``Eᵢ = mᵢ e₀ + rᵢ e_{zᵢ}`` selects ``zᵢ``,
  ``Âᵢ`` its pre-activation row),
* ``P̂₀₀ = 1`` and ``P̂ᵢᵢ ≤ 1``.

The objective is ``max qᵀ v̂`` where ``q`` is minus a safety row ``C y + d`` written in ``v̂``
(the *violation*); a certified upper bound ``U`` of the violation gives the margin bound ``−U``.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

log = logging.getLogger(__name__)

_U = 2.0 ** -53  # unit roundoff of float64


class SDPProblemError(ValueError):
    """The network or bounds cannot be turned into an SDP-cert problem."""


@dataclass(frozen=True)
class ReluNetwork:
    """A ReLU network (any DAG of affine maps, ReLUs and sums) as dense affine blocks on flat vectors.

    Variables come in blocks: ``-1`` is the input, ``k ≥ 0`` the output of the k-th ReLU layer.
    ``layers[k] = (W, b)`` gives the pre-activation of ReLU layer ``k`` as ``W·[blocks inputs[k]] + b``
    (the listed blocks concatenated; a chain reads only the previous one, a residual network also
    earlier ones); ``final = (W, b)`` maps the blocks ``final_inputs`` to the output.
    ``preact_nodes[k]`` names the graph node whose abstract element bounds that pre-activation.
    ``errors[k]`` (``None``: exact) bounds how far a layer *composed* in float (several affine maps
    multiplied out, residual sums added) is from the real composition: ``|W − W_real| ≤ EW``
    entry-wise and ``|b − b_real| ≤ eb``; entry ``len(layers)`` is the final map's.
    """

    layers: tuple[tuple[torch.Tensor, torch.Tensor], ...]
    final: tuple[torch.Tensor, torch.Tensor]
    preact_nodes: tuple[str, ...]
    n_inputs: int
    inputs: tuple[tuple[int, ...], ...] | None = None  # None: a chain (layer k reads block k − 1)
    final_inputs: tuple[int, ...] | None = None
    errors: tuple[tuple[torch.Tensor, torch.Tensor] | None, ...] | None = None

    def layer_error(self, k: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(EW, eb)`` of layer ``k`` (``k = len(layers)``: the final map), or None when exact."""
        return None if self.errors is None else self.errors[k]

    def layer_inputs(self, k: int) -> tuple[int, ...]:
        return self.inputs[k] if self.inputs is not None else (k - 1,)

    def output_inputs(self) -> tuple[int, ...]:
        return self.final_inputs if self.final_inputs is not None else (len(self.layers) - 1,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Concrete output for flat inputs ``x`` ``[B, n_inputs]`` (used by tests)."""
        blocks = {-1: x}
        for k, (W, b) in enumerate(self.layers):
            h = torch.cat([blocks[j] for j in self.layer_inputs(k)], -1)
            blocks[k] = torch.relu(h @ W.T + b)
        W, b = self.final
        return torch.cat([blocks[j] for j in self.output_inputs()], -1) @ W.T + b


@dataclass
class SDPProblem:
    """One SDP-cert instance in normalised coordinates (see the module docstring).

    ``objective`` has one row per safety row (each row is its own SDP, sharing the
    constraints). Index 0 of every ``N``-vector is the constant coordinate.
    """

    objective: torch.Tensor  # [m, N]  maximise objective[j] · v̂  (violation of safety row j)
    lin: torch.Tensor  # [K, N]  lin @ v̂ ≥ 0
    relu_index: torch.Tensor  # [U] long: coordinate of zᵢ in v̂
    relu_m: torch.Tensor  # [U]   zᵢ = mᵢ + rᵢ v̂[relu_index[i]]
    relu_r: torch.Tensor  # [U]
    relu_pre: torch.Tensor  # [U, N] pre-activation rows Â
    stats: dict[str, Any] = field(default_factory=dict)
    #: which network values the coordinates are: ``input_free`` (mask), ``var_neurons[k]``
    #: (indices of layer k's neurons that became variables, in coordinate order)
    layout: dict[str, Any] = field(default_factory=dict)
    #: Rounding budgets (see :func:`build_problem`): the rows were computed in float, so the real
    #: network's lifted point may violate them by these amounts. ``lin_err`` [K]: by how much
    #: ``lin @ v̂`` may fall below 0; ``relu_err`` [U]: ``|(E v̂)ᵢ (D v̂)ᵢ|``; ``objective_err`` [m]:
    #: ``|objective @ v̂ − real violation|``. :func:`certify` adds ``αᵀlin_err + |μ|ᵀrelu_err +
    #: objective_err`` to every bound (None: zeros).
    lin_err: torch.Tensor | None = None
    relu_err: torch.Tensor | None = None
    objective_err: torch.Tensor | None = None

    @property
    def size(self) -> int:
        """``N``: side of the lifted matrix ``P̂`` (1 + number of variables)."""
        return int(self.objective.shape[1])

    @property
    def n_relu(self) -> int:
        return int(self.relu_index.numel())

    @property
    def n_lin(self) -> int:
        return int(self.lin.shape[0])

    @property
    def n_objectives(self) -> int:
        return int(self.objective.shape[0])

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "SDPProblem":
        f = lambda t: None if t is None else t.to(device=device, dtype=dtype)  # noqa: E731
        return SDPProblem(f(self.objective), f(self.lin), self.relu_index.to(device=device), f(self.relu_m),
                          f(self.relu_r), f(self.relu_pre), dict(self.stats), dict(self.layout),
                          f(self.lin_err), f(self.relu_err), f(self.objective_err))

    def select(self, rows: Sequence[int]) -> "SDPProblem":
        """The same constraints with a subset of the objective rows."""
        idx = torch.as_tensor(list(rows), dtype=torch.long, device=self.objective.device)
        oe = None if self.objective_err is None else self.objective_err[idx]
        return SDPProblem(self.objective[idx], self.lin, self.relu_index, self.relu_m, self.relu_r,
                          self.relu_pre, dict(self.stats), dict(self.layout), self.lin_err, self.relu_err, oe)

    def rounding_correction(self, alpha: torch.Tensor, mu: torch.Tensor) -> np.ndarray:
        """``αᵀlin_err + |μ|ᵀrelu_err + objective_err`` per objective row (``[B]``), rounded up: what the
        real network's point can gain over the float-built relaxation (see :func:`certify`)."""
        B = alpha.shape[0] if alpha.dim() == 2 else 1
        out = torch.zeros(B, dtype=torch.float64)
        with torch.no_grad():
            if self.lin_err is not None and self.n_lin:
                out = out + (alpha.clamp(min=0).to("cpu", torch.float64) * self.lin_err.cpu()).sum(-1)
            if self.relu_err is not None and self.n_relu:
                out = out + (mu.abs().to("cpu", torch.float64) * self.relu_err.cpu()).sum(-1)
            if self.objective_err is not None and self.objective_err.numel():
                oe = self.objective_err.cpu().to(torch.float64).reshape(-1)
                # rows are matched when the counts agree (select() the problem's rows); otherwise
                # the largest error is charged to every row, which is still sound
                out = out + (oe if oe.numel() == B else oe.max().expand(B))
        terms = out.numpy()
        return np.nextafter(terms * (1 + 8 * (self.n_lin + self.n_relu + 2) * _U), np.inf)

    def relu_diff(self) -> torch.Tensor:
        """``D = E − Â`` ``[U, N]`` (so ``(E v̂)ᵢ (D v̂)ᵢ = 0`` is the complementarity constraint)."""
        D = -self.relu_pre.clone()
        D[:, 0] += self.relu_m
        D[torch.arange(self.n_relu, device=D.device), self.relu_index] += self.relu_r
        return D

    def lift(self, chain: "ReluNetwork", x: torch.Tensor) -> torch.Tensor:
        """The normalised point ``v̂`` ``[N]`` of a concrete input ``x`` (flat, inside the box).

        ``v̂ v̂ᵀ`` is feasible for the SDP and ``objective @ v̂`` is the violation at ``x`` — the
        property tests check exactly this (the relaxation contains the network).
        """
        x = x.reshape(-1).to(self.objective.dtype)
        lay = self.layout
        v = [torch.ones(1, dtype=x.dtype, device=x.device)]
        free = lay["input_free"]
        v.append((x[free] - lay["input_mid"][free]) / lay["input_rad"][free])
        blocks = {-1: x}
        for k, ((W, b), neurons) in enumerate(zip(chain.layers, lay["var_neurons"])):
            h = torch.cat([blocks[j] for j in chain.layer_inputs(k)])
            blocks[k] = torch.relu(h @ W.T.to(x.dtype) + b.to(x.dtype))
            v.append(blocks[k][neurons])
        v = torch.cat(v)
        n_in = int(free.sum())
        z = v[1 + n_in:]
        v[1 + n_in:] = (z - self.relu_m) / self.relu_r
        return v

    def max_violation(self, v: torch.Tensor) -> float:
        """Largest constraint violation of a concrete normalised point ``v̂`` (``[N]``, ``v̂₀ = 1``)."""
        lin = float((self.lin @ v).clamp(max=0).abs().max()) if self.n_lin else 0.0
        E = self.relu_m + self.relu_r * v[self.relu_index]
        comp = float((E * (self.relu_diff() @ v)).abs().max()) if self.n_relu else 0.0
        box = float((v[1:].abs() - 1).clamp(min=0).max()) if v.numel() > 1 else 0.0
        return max(lin, comp, box)


def build_problem(chain: ReluNetwork, lower: torch.Tensor, upper: torch.Tensor,
                  preact_bounds: Sequence[tuple[torch.Tensor, torch.Tensor]], C: torch.Tensor,
                  d: torch.Tensor, *, eliminate_stable: bool = True, preact_linear: bool = True,
                  triangle: bool = False) -> SDPProblem:
    """Build the SDP for one input box ``[lower, upper]`` (flat ``[n_inputs]``) and safety rows.

    ``preact_bounds[k] = (l, u)`` are sound bounds of the k-th ReLU layer's pre-activation (from
    an abstract domain). ``C`` ``[m, n_out]``, ``d`` ``[m]``: the objective of row ``j`` is the
    violation ``−(C_j y + d_j)``.

    With ``eliminate_stable=False`` stably active neurons stay variables (with bounds
    ``[l, u]``) instead of being substituted; stably inactive ones are always removed (they are
    the constant 0, a degenerate variable).
    """
    dtype = torch.float64
    dev = lower.device
    lower = lower.reshape(-1).to(dtype)
    upper = upper.reshape(-1).to(dtype)
    if lower.numel() != chain.n_inputs:
        raise SDPProblemError(f"input box has {lower.numel()} entries, network has {chain.n_inputs} inputs")
    if len(preact_bounds) != len(chain.layers):
        raise SDPProblemError(f"{len(preact_bounds)} bound pairs for {len(chain.layers)} ReLU layers")
    if torch.any(lower > upper):
        raise SDPProblemError("input box is empty")

    # Count variables first so every row can be allocated at full width N.
    free_in = upper > lower
    n_vars = int(free_in.sum())
    kinds: list[torch.Tensor] = []  # per layer: 0 inactive, 1 active (substituted), 2 variable
    for (W, _), (l, u) in zip(chain.layers, preact_bounds):
        l = l.reshape(-1).to(dtype)
        u = u.reshape(-1).to(dtype)
        if l.numel() != W.shape[0]:
            raise SDPProblemError(f"pre-activation bounds have {l.numel()} entries, layer has {W.shape[0]}")
        kind = torch.full_like(l, 2, dtype=torch.long)
        kind[u <= 0] = 0
        if eliminate_stable:
            kind[(l >= 0) & (u > 0)] = 1
        kinds.append(kind)
        n_vars += int((kind == 2).sum())
    N = 1 + n_vars

    # Input coordinates: x = X0 v̂ with X0 rows m e₀ + r e_idx (constant rows for fixed inputs).
    # The radius is rounded up so that [m − r, m + r] ⊇ [l, u]: every real input has |v̂| ≤ 1.
    X = torch.zeros(chain.n_inputs, N, dtype=dtype, device=dev)
    mid = (upper + lower) / 2
    rad = _cover_radius(mid, lower, upper)
    X[:, 0] = torch.where(free_in, mid, lower)
    in_idx = torch.arange(1, 1 + int(free_in.sum()), device=dev)
    X[torch.nonzero(free_in).flatten(), in_idx] = rad[free_in]
    nxt = 1 + int(free_in.sum())

    blocks = {-1: X}  # each block's values as rows over v̂
    # Rounding budgets: eblocks bound |X v̂ − real value| per row for every |v̂| ≤ 1 (0 for inputs and
    # ReLU variables: those rows are exact by definition); hblocks bound the real values' size.
    eblocks = {-1: torch.zeros(chain.n_inputs, dtype=dtype, device=dev)}
    hblocks = {-1: torch.maximum(lower.abs(), upper.abs())}
    lin_err: list[torch.Tensor] = []
    relu_err: list[torch.Tensor] = []
    lin_rows: list[torch.Tensor] = []
    var_neurons: list[torch.Tensor] = []
    r_idx, r_m, r_r, r_pre = [], [], [], []
    counts = []
    for k, ((W, b), (l, u), kind) in enumerate(zip(chain.layers, preact_bounds, kinds)):
        l = l.reshape(-1).to(dtype=dtype, device=dev)
        u = u.reshape(-1).to(dtype=dtype, device=dev)
        ins = chain.layer_inputs(k)
        X = torch.cat([blocks[j] for j in ins])
        W = W.to(dtype=dtype, device=dev)
        S = W @ X  # pre-activation rows over v̂
        S[:, 0] += b.to(dtype=dtype, device=dev)
        eS = _row_error(W, b.to(dtype=dtype, device=dev), X, torch.cat([eblocks[j] for j in ins]),
                        torch.cat([hblocks[j] for j in ins]), chain.layer_error(k))
        if preact_linear and k > 0:
            # l ≤ s ≤ u on the first row of P̂ (finite sides only). Skipped for the first layer:
            # there the mean of s already lies in its interval range, which no bound can beat.
            fl, fu = torch.isfinite(l), torch.isfinite(u)
            lo_rows = S[fl].clone()
            lo_rows[:, 0] -= l[fl]
            hi_rows = -S[fu]
            hi_rows[:, 0] += u[fu]
            lin_rows += [lo_rows, hi_rows]
            # the real point misses each row by its pre-activation error and the rounded constant
            lin_err += [eS[fl] + 2 * _U * lo_rows[:, 0].abs(), eS[fu] + 2 * _U * hi_rows[:, 0].abs()]
        var = kind == 2
        nv = int(var.sum())
        if nv and not torch.all(torch.isfinite(u[var])):
            raise SDPProblemError(f"layer {k}: unstable neuron without a finite upper bound")
        zl = torch.where(l[var] > 0, l[var], torch.zeros_like(l[var]))  # activation bounds [max(l,0), u]
        zu = u[var]
        m = (zu + zl) / 2
        r = _cover_radius(m, zl, zu)
        if torch.any(r <= 0):
            raise SDPProblemError(f"layer {k}: degenerate activation bounds")
        idx = torch.arange(nxt, nxt + nv, device=dev)
        nxt += nv
        Sv = S[var]
        r_idx.append(idx)
        r_m.append(m)
        r_r.append(r)
        r_pre.append(Sv)
        Z = torch.zeros(nv, N, dtype=dtype, device=dev)  # rows E (z = E v̂)
        Z[:, 0] = m
        Z[torch.arange(nv, device=dev), idx] = r
        # z ≥ s. (z ≥ 0 is implied: the activation's lower bound is ≥ 0 and P̂ ⪰ 0 with
        # P̂ᵢᵢ ≤ 1 already gives |P̂₀ᵢ| ≤ 1, i.e. z ≥ m − r ≥ 0.)
        lin_rows.append(Z - Sv)
        lin_err.append(eS[var] + 2 * _U * (m - Sv[:, 0]).abs())
        # |z·(z − s)| for the real z, s: |z| ≤ u times the pre-activation error (and D's rounded constant)
        relu_err.append(zu.abs() * (eS[var] + 2 * _U * (m - Sv[:, 0]).abs()))
        if triangle:
            # z ≤ u (s − l)/(u − l) for neurons with l < 0 < u (the LP's upper line).
            tri = (l[var] < 0)
            if tri.any():
                lam = (u[var] / (u[var] - l[var]))[tri]
                rows = lam[:, None] * Sv[tri] - Z[tri]
                rows[:, 0] -= lam * l[var][tri]
                lin_rows.append(rows)
                # λ·(error of s), the rounded λ (3 roundings of the chord) and forming the row
                lin_err.append(lam * eS[var][tri] + 8 * _U * (rows.abs().sum(1) + lam * (Sv[tri].abs().sum(1)
                                                                                     + l[var][tri].abs())))
        # next layer's input: 0 (inactive), s (active, substituted) or the new variable.
        Xn = torch.zeros(W.shape[0], N, dtype=dtype, device=dev)
        Xn[kind == 1] = S[kind == 1]
        Xn[var] = Z
        blocks[k] = Xn
        eblocks[k] = torch.where(kind == 1, eS, torch.zeros_like(eS))
        hblocks[k] = torch.where(kind == 0, torch.zeros_like(u), u.clamp(min=0))
        var_neurons.append(torch.nonzero(var).flatten())
        counts.append({"neurons": int(kind.numel()), "inactive": int((kind == 0).sum()),
                       "active": int(((l >= 0) & (u > 0)).sum()), "variables": nv})
    Wf, bf = chain.final
    outs = chain.output_inputs()
    X = torch.cat([blocks[j] for j in outs])
    Wf, bf = Wf.to(dtype=dtype, device=dev), bf.to(dtype=dtype, device=dev)
    Y = Wf @ X  # outputs over v̂
    Y[:, 0] += bf
    eY = _row_error(Wf, bf, X, torch.cat([eblocks[j] for j in outs]), torch.cat([hblocks[j] for j in outs]),
                    chain.layer_error(len(chain.layers)))
    C = C.to(dtype=dtype, device=dev).reshape(-1, Y.shape[0])
    d = d.to(dtype=dtype, device=dev).reshape(-1)
    margin = C @ Y
    margin[:, 0] += d
    # the safety rows' error: |C|·eY plus the rounding of C·Y + d (|v̂| ≤ 1)
    objective_err = _row_error(C, d, Y, eY, None, None)
    lin = torch.cat(lin_rows) if lin_rows else torch.zeros(0, N, dtype=dtype, device=dev)
    lerr = torch.cat(lin_err) if lin_err else torch.zeros(0, dtype=dtype, device=dev)
    # Drop all-zero rows (they constrain nothing).
    if lin.numel():
        keep = lin.abs().amax(dim=1) > 0
        lin, lerr = lin[keep], lerr[keep]
    cat = lambda xs, shape: torch.cat(xs) if xs else torch.zeros(shape, dtype=dtype, device=dev)  # noqa: E731
    prob = SDPProblem(
        objective=-margin,
        lin=lin,
        relu_index=torch.cat(r_idx) if r_idx else torch.zeros(0, dtype=torch.long, device=dev),
        relu_m=cat(r_m, (0,)), relu_r=cat(r_r, (0,)), relu_pre=cat(r_pre, (0, N)),
        stats={"size": N, "inputs": int(free_in.sum()), "layers": counts, "linear_rows": int(lin.shape[0])},
        layout={"input_free": free_in, "input_mid": mid, "input_rad": rad, "var_neurons": var_neurons},
        lin_err=lerr, relu_err=cat(relu_err, (0,)), objective_err=objective_err,
    )
    log.debug("SDP problem: N=%d, %d ReLU variables, %d linear rows, layers %s", N, prob.n_relu,
              prob.n_lin, counts)
    return prob


def _cover_radius(mid: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """A radius ``r`` with ``[mid − r, mid + r] ⊇ [lo, hi]`` in real arithmetic (rounded up)."""
    r = torch.maximum(hi - mid, mid - lo)
    return torch.where(r > 0, torch.nextafter(r, torch.full_like(r, math.inf)), r)


def _row_error(W: torch.Tensor, b: torch.Tensor, X: torch.Tensor, eX: torch.Tensor, hmax: torch.Tensor | None,
               composed: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
    """Bound of ``|(W X + b e₀ᵀ) v̂ − real value|`` per row, for every ``|v̂| ≤ 1``, when ``|X v̂ −
    real input| ≤ eX`` per row of ``X``: ``|W| eX`` (propagated error), the γ_n error of the float
    products ``W X`` on ``Σ_j |v̂_j| ≤`` row sums of ``|X|``, the bias, and (``composed``) the error of
    a layer multiplied out in float, ``EW·hmax + eb`` (``hmax`` bounds the real inputs)."""
    n = W.shape[1]
    absW = W.abs()
    mag = absW @ X.abs().sum(1) + b.abs()
    ku = (n + 3) * _U
    err = absW @ eX + (2 * ku / (1 - ku)) * mag + (n + 3) * 5e-324
    if composed is not None:
        EW, eb = composed
        err = err + EW.to(err) @ hmax + eb.to(err)
    return err * (1 + 4 * (n + 3) * _U)  # covers the rounding of this estimate


# ------------------------------------------------------------------------------------------
# The Lagrangian matrix and the certificate
# ------------------------------------------------------------------------------------------
def lagrangian_matvec(prob: SDPProblem, g: torch.Tensor, mu: torch.Tensor, kappa: torch.Tensor,
                      w: torch.Tensor) -> torch.Tensor:
    """``M w`` for the batch of Lagrangian matrices (never formed).

    ``M = sym(e₀ gᵀ) + Σᵢ μᵢ sym(Eᵢᵀ Dᵢ) − diag(κ)`` with ``g = q + Lᵀα`` (objective plus linear
    multipliers), ``D = E − Â``. Shapes: ``g``, ``kappa`` ``[B, N]``; ``mu`` ``[B, U]``;
    ``w`` ``[B, N, k]``; returns ``[B, N, k]``.
    """
    out = 0.5 * g[:, :, None] * w[:, :1, :]  # ½ g w₀
    row0 = 0.5 * torch.einsum("bn,bnk->bk", g, w)  # ½ (g·w) e₀
    if prob.n_relu:
        idx = prob.relu_index
        m, r = prob.relu_m[None, :, None], prob.relu_r[None, :, None]
        Ew = m * w[:, :1, :] + r * w[:, idx, :]  # [B, U, k]
        Aw = torch.einsum("un,bnk->buk", prob.relu_pre, w)
        Dw = Ew - Aw
        mu_ = mu[:, :, None]
        y1 = mu_ * (Dw + Ew)  # Eᵀ(μ⊙Dw) + Eᵀ(μ⊙Ew) = Eᵀ(μ⊙(Dw+Ew))
        y2 = mu_ * Ew  # − Âᵀ(μ⊙Ew)
        row0 = row0 + 0.5 * (m * y1).sum(dim=1)
        out = out.index_add(1, idx, 0.5 * r * y1)
        out = out - 0.5 * torch.einsum("un,buk->bnk", prob.relu_pre, y2)
    out = out - kappa[:, :, None] * w
    out = torch.cat([out[:, :1, :] + row0[:, None, :], out[:, 1:, :]], dim=1)
    return out


def lagrangian_dense(prob: SDPProblem, g: torch.Tensor, mu: torch.Tensor, kappa: torch.Tensor,
                     absolute: bool = False) -> torch.Tensor:
    """The Lagrangian matrices ``[B, N, N]`` (for certificates and small problems).

    With ``absolute=True`` every contribution is replaced by its absolute value, which bounds the
    entry-wise rounding error of forming ``M`` (used by :func:`certify`).
    """
    B, N = g.shape
    f = torch.abs if absolute else (lambda t: t)
    M = torch.zeros(B, N, N, dtype=g.dtype, device=g.device)
    M[:, 0, :] += 0.5 * f(g)
    M[:, :, 0] += 0.5 * f(g)
    if prob.n_relu:
        D = prob.relu_diff()
        Dm = f(D)[None] * f(mu)[:, :, None]  # [B, U, N]: μᵢ Dᵢ
        X = torch.zeros(B, N, N, dtype=g.dtype, device=g.device)
        X[:, 0, :] = (f(prob.relu_m)[None, :, None] * Dm).sum(dim=1)
        X = X.index_add(1, prob.relu_index, f(prob.relu_r)[None, :, None] * Dm)
        M += 0.5 * (X + X.transpose(1, 2))
    M -= torch.diag_embed(kappa) if not absolute else torch.diag_embed(kappa.abs())
    return M


@dataclass
class Certificate:
    """A dual certificate: upper bounds of the violation maxima and how they were obtained."""

    upper: np.ndarray  # [B] proved upper bounds of max qᵀv̂ over the relaxation
    lambda_max: np.ndarray  # [B] upper bound of the top eigenvalue of M
    kappa_sum: np.ndarray  # [B]
    method: str = "dense"


def certify(prob: SDPProblem, q: torch.Tensor, alpha: torch.Tensor, mu: torch.Tensor,
            kappa: torch.Tensor, *, method: str = "auto", dense_limit: int = 6000) -> Certificate:
    """Turn any multipliers into a *proved* upper bound of each SDP's optimum.

    For ``α ≥ 0`` (clipped), any ``μ`` and any ``κ``, weak duality gives for every feasible ``P̂``
    ``⟨Q, P̂⟩ ≤ ⟨M, P̂⟩ + Σᵢ κᵢ`` once ``κᵢ ≥ 0`` for ``i ≥ 1``. With ``t ≥ λ_max(M)`` the
    shifted multipliers ``κ'₀ = κ₀ + t``, ``κ'ᵢ = max(κᵢ + t, 0)`` make ``M' ⪯ 0``, so
    ``U = κ₀ + t + Σ_{i≥1} max(κᵢ + t, 0)`` bounds the optimum whatever the solver's accuracy —
    the same correction as "smallest eigenvalue times the trace bound" (``tr P̂ ≤ N``) when
    ``t > 0``, and a small gain when ``t < 0``.

    ``t`` is the float64 top eigenvalue (LAPACK ``syevd``, backward stable) plus a margin
    ``(N + U + 8)·u·(‖M‖_F + ‖|M|‖_F)`` covering the rounding in forming ``M`` and in the
    eigensolver (Weyl), plus ``‖δg‖₂`` for the rounding of ``g = q + Lᵀα`` (a perturbation
    ``sym(e₀ δgᵀ)`` of ``M``). The problem's rows were themselves computed in float: the bound
    then gets :meth:`SDPProblem.rounding_correction` (how much the real network's point can
    violate them, weighted by the multipliers), so it bounds the *real* violation.
    ``method="lanczos"`` (only for ``N`` above ``dense_limit``) would rest on a Lanczos estimate,
    which is not rigorous: such certificates prove nothing (``upper = +∞``), named in
    ``Certificate.method``.
    """
    alpha = alpha.clamp(min=0)
    g = q + (alpha @ prob.lin if prob.n_lin else torch.zeros_like(q))
    with torch.no_grad():
        g_mag = q.abs() + (alpha @ prob.lin.abs() if prob.n_lin else torch.zeros_like(q))
        ku = (prob.n_lin + 3) * _U
        g_err = torch.linalg.vector_norm((2 * ku / (1 - ku)) * g_mag, dim=-1).cpu().numpy() * (1 + 1e-10)
    N = prob.size
    use_dense = method == "dense" or (method == "auto" and N <= dense_limit)
    ks = kappa.detach().to("cpu", torch.float64).numpy()
    B = q.shape[0]
    tops = np.zeros(B)
    with torch.no_grad():
        if use_dense:
            how = "dense"
            for b in range(B):  # one matrix at a time keeps memory at N² doubles
                sl = slice(b, b + 1)
                M = lagrangian_dense(prob, g[sl], mu[sl], kappa[sl])[0]
                Mabs = lagrangian_dense(prob, g[sl], mu[sl], kappa[sl], absolute=True)[0]
                lam = float(torch.linalg.eigvalsh(M.cpu())[-1])
                slack = (N + prob.n_relu + 8) * _U * (float(torch.linalg.norm(M)) + float(torch.linalg.norm(Mabs)))
                tops[b] = lam + slack + g_err[b]
        else:
            how = "lanczos (not rigorous: no proof)"
            log.warning("SDP certificate for N=%d > %d would need a Lanczos eigenvalue estimate, which is not "
                        "rigorous: nothing is proved", N, dense_limit)
            tops[:] = math.inf
    upper = np.zeros(B)
    fix = prob.rounding_correction(alpha, mu)
    for b in range(B):
        t = tops[b]
        if not math.isfinite(t):
            upper[b] = math.inf
            continue
        terms = [ks[b, 0], t, float(fix[b if fix.size > 1 else 0])] + np.maximum(ks[b, 1:] + t, 0.0).tolist()
        s = math.fsum(terms)
        upper[b] = s + 4 * _U * math.fsum(abs(x) for x in terms) * (N + 2) + 1e-300
        if not math.isfinite(upper[b]):
            upper[b] = math.inf
    return Certificate(upper, tops, ks.sum(axis=1), how)


def interval_bound(q: torch.Tensor, err: torch.Tensor | None = None) -> np.ndarray:
    """``q₀ + Σ|qᵢ| + err`` per row, rounded upward: the certificate of :func:`interval_multipliers`.

    Valid for the relaxation directly: ``P̂ ⪰ 0``, ``P̂₀₀ = 1``, ``P̂ᵢᵢ ≤ 1`` give ``|P̂₀ᵢ| ≤ 1``;
    ``err`` (the problem's ``objective_err``) covers the rounding in building ``q``.
    """
    out = np.zeros(q.shape[0])
    qs = q.detach().to("cpu", torch.float64).numpy()
    es = np.zeros(q.shape[0]) if err is None else err.detach().to("cpu", torch.float64).numpy().reshape(-1)
    for b, row in enumerate(qs):
        terms = [row[0], es[b]] + np.abs(row[1:]).tolist()
        s = math.fsum(terms)
        out[b] = s + 4 * _U * math.fsum(abs(t) for t in terms) + 1e-300
    return out


def interval_multipliers(q: torch.Tensor) -> torch.Tensor:
    """κ that reproduces interval arithmetic (``α = μ = 0``): ``κᵢ = |qᵢ|/2``, ``κ₀ = q₀ + Σ|qᵢ|/2``.

    Then ``M = sym(e₀qᵀ) − diag κ ⪯ 0`` (Schur complement) and the bound is ``q₀ + Σ|qᵢ|``.
    """
    kappa = 0.5 * q.abs()
    kappa[:, 0] = q[:, 0] + 0.5 * q[:, 1:].abs().sum(dim=1)
    return kappa


# ------------------------------------------------------------------------------------------
# Lanczos (batched, matrix-free)
# ------------------------------------------------------------------------------------------
def lanczos_top(matvec, N: int, B: int, *, steps: int = 20, start: torch.Tensor | None = None,
                dtype: torch.dtype = torch.float64, device: torch.device | str | None = None,
                generator: torch.Generator | None = None, all_pairs: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Largest eigenvalue estimates of ``B`` symmetric ``N×N`` operators by Lanczos.

    ``matvec(w)`` maps ``[B, N, 1]`` to ``[B, N, 1]``. Full re-orthogonalisation; a breakdown
    (invariant subspace) restarts with a random vector orthogonal to the basis. Returns
    ``(ritz values [B], ritz vectors [B, N], residual norms [B])``; Ritz values never exceed the
    true top eigenvalue (they lie inside the spectrum), so they are *estimates from below*.
    With ``all_pairs=True`` returns every Ritz pair instead: values ``[B, k]`` (ascending),
    vectors ``[B, k, N]`` and residual norms ``[B, k]``.
    """
    steps = max(1, min(steps, N))
    if start is None:
        start = torch.randn(B, N, dtype=dtype, generator=generator).to(device)
    v = start / start.norm(dim=1, keepdim=True).clamp(min=1e-300)
    V = torch.zeros(B, steps, N, dtype=dtype, device=v.device)
    alphas = torch.zeros(B, steps, dtype=dtype, device=v.device)
    betas = torch.zeros(B, steps, dtype=dtype, device=v.device)
    k_used = steps
    for j in range(steps):
        V[:, j] = v
        w = matvec(v[:, :, None])[:, :, 0]
        a = (w * v).sum(dim=1)
        alphas[:, j] = a
        # full re-orthogonalisation (twice is enough)
        for _ in range(2):
            w = w - torch.einsum("bj,bjn->bn", torch.einsum("bjn,bn->bj", V[:, : j + 1], w), V[:, : j + 1])
        beta = w.norm(dim=1)
        betas[:, j] = beta
        if j == steps - 1:
            break
        small = beta <= 1e-12 * (alphas[:, : j + 1].abs().max(dim=1).values + 1e-300)
        if bool(small.any()):
            rnd = torch.randn(B, N, dtype=dtype, device=v.device)
            for _ in range(2):
                rnd = rnd - torch.einsum("bj,bjn->bn", torch.einsum("bjn,bn->bj", V[:, : j + 1], rnd), V[:, : j + 1])
            rnd = rnd / rnd.norm(dim=1, keepdim=True).clamp(min=1e-300)
            betas[:, j] = torch.where(small, torch.zeros_like(beta), beta)
            v = torch.where(small[:, None], rnd, w / beta.clamp(min=1e-300)[:, None])
        else:
            v = w / beta[:, None]
    T = torch.diag_embed(alphas[:, :k_used]) + torch.diag_embed(betas[:, : k_used - 1], 1) + \
        torch.diag_embed(betas[:, : k_used - 1], -1)
    evals, evecs = torch.linalg.eigh(T)
    if all_pairs:
        vecs = torch.einsum("bjk,bjn->bkn", evecs, V[:, :k_used])  # [B, k, N] Ritz vectors
        return evals, vecs, (betas[:, k_used - 1, None] * evecs[:, -1, :]).abs()
    theta = evals[:, -1]
    s = evecs[:, :, -1]
    vec = torch.einsum("bj,bjn->bn", s, V[:, :k_used])
    vec = vec / vec.norm(dim=1, keepdim=True).clamp(min=1e-300)
    resid = (betas[:, k_used - 1] * s[:, -1]).abs()
    return theta, vec, resid
