"""ReLU splitting: fix the phase of one unstable ReLU per branch (Bunel, Lu, Turkaslan, Torr,
Kohli, Kumar, "Branch and Bound for Piecewise Linear Neural Network Verification", JMLR 2020).

For high-dimensional inputs (MNIST) bisecting the input is hopeless, but only a few hundred ReLUs
are unstable. A sub-problem is the root input box plus a phase per ReLU; the phase is imposed on
the domain as a box meet on the pre-activation bounds (``z ≥ 0`` / ``z ≤ 0``). The neuron to split
is chosen by a BaBSR-like score (Bunel et al. 2020, §5.1): the sensitivity of the bound's worst
row to the neuron — here the gradient of that row through the network restricted to the
sub-problem's fixed phases, at the vertex minimising the row's symbolic bound — times the
triangle relaxation's intercept ``−u·l/(u−l)`` (how much the relaxation loosens at that neuron);
or by interval width ``u − l``.

Limitation: here split constraints enter the domain only through intermediate concrete bounds (no
Lagrangian/β terms), so a sub-problem with every ReLU fixed may still be unproven; it is reported
as stuck (unknown), never as verified. ``BabOptions(bounding="alpha-beta")`` bounds the
sub-problems of chain networks with optimised slopes and split multipliers instead (β-CROWN,
Wang et al. NeurIPS 2021): :mod:`absint.bab.beta`.
"""
from __future__ import annotations

from typing import Any

import torch

from absint.bab.bounding import Bounder
from absint.bab.common import clause_bounds, min_vertex, worst_rows
from absint.bab.queue import Batch
from absint.specs import InputBox


class ReluSplitting:
    """The :class:`~absint.bab.engine.Strategy` that splits unstable ReLUs."""

    def __init__(self, bounder: Bounder, region: InputBox, C: torch.Tensor, d: torch.Tensor,
                 onehot: torch.Tensor, heuristic: str = "babsr", attack: bool = True) -> None:
        self.b, self.region, self.C, self.d, self.onehot = bounder, region, C, d, onehot
        self.heuristic, self.attack = heuristic, attack
        self.lo = torch.as_tensor(region.lower.reshape(-1), dtype=torch.float64)
        self.hi = torch.as_tensor(region.upper.reshape(-1), dtype=torch.float64)

    def root(self) -> Batch:
        m = self.C.shape[0]
        return {"splits": torch.zeros(1, self.b.n_relu, dtype=torch.int8),
                "row_lb": torch.full((1, m), -float("inf"), dtype=torch.float64),
                "depth": torch.zeros(1, dtype=torch.int32), "priority": torch.zeros(1, dtype=torch.float64)}

    def bound(self, batch: Batch, deadline: float | None):
        k = batch["splits"].shape[0]
        out = self.b.bound(self.lo[None].expand(k, -1), self.hi[None].expand(k, -1), self.C, self.d,
                           splits=batch["splits"], want_symbolic=True, want_pre=True, deadline=deadline)
        extra = {"A": out.sym_A, "pre_lo": torch.cat(out.pre_lo, dim=1), "pre_hi": torch.cat(out.pre_hi, dim=1)}
        return out.rows, out.infeasible, extra

    def select_extra(self, extra: Any, index: torch.Tensor) -> Any:
        return {k: (v[index] if v is not None else None) for k, v in extra.items()}

    def measure(self, batch: Batch) -> torch.Tensor:
        """Share of the split tree: ``2^-depth``."""
        return torch.pow(2.0, -batch["depth"].to(torch.float64))

    def _unstable(self, batch: Batch, extra: Any) -> torch.Tensor:
        return (extra["pre_lo"] < 0) & (extra["pre_hi"] > 0) & (batch["splits"] == 0)

    def splittable(self, batch: Batch, extra: Any) -> torch.Tensor:
        return self._unstable(batch, extra).any(dim=1)

    def attack_region(self, batch: Batch) -> InputBox:
        return self.region

    def _points(self, extra: Any, rows: torch.Tensor) -> torch.Tensor:
        k = rows.shape[0]
        lo, hi = self.lo[None].expand(k, -1), self.hi[None].expand(k, -1)
        if extra.get("A") is None:
            return (lo + hi) / 2
        r = worst_rows(rows, self.onehot, torch.ones(k, self.onehot.shape[1], dtype=torch.bool))
        return min_vertex(extra["A"][torch.arange(k), r], lo, hi)

    def candidates(self, batch: Batch, extra: Any, rows: torch.Tensor) -> torch.Tensor:
        return torch.cat([((self.lo + self.hi) / 2)[None], self._points(extra, rows)])

    def _scores(self, batch: Batch, extra: Any, rows: torch.Tensor, open_clause: torch.Tensor) -> torch.Tensor:
        l, u = extra["pre_lo"], extra["pre_hi"]
        unstable = self._unstable(batch, extra)
        if self.heuristic == "width":
            score = u - l
        else:
            intercept = (-u * l / (u - l).clamp(min=1e-12)).clamp(min=0)
            x = self._points(extra, rows)
            r = worst_rows(rows, self.onehot, open_clause)
            with torch.enable_grad():
                x = x.clone().requires_grad_(True)
                y, relus = self.b.forward(x, batch["splits"], keep_relu_out=True)
                obj = (y * self.C[r].to(y)).sum()
                grads = torch.autograd.grad(obj, relus, allow_unused=True)
            g = torch.cat([(gi if gi is not None else torch.zeros_like(ri)).reshape(x.shape[0], -1)
                           for gi, ri in zip(grads, relus)], dim=1).detach().cpu().to(torch.float64)
            score = g.abs() * intercept + 1e-6 * intercept  # ties: the larger relaxation gap
        return torch.where(unstable, score, torch.full_like(score, -1.0))

    def choose(self, batch: Batch, extra: Any, rows: torch.Tensor,
               open_clause: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The neuron to split in each sub-problem ``[k]`` (the best score), and proved row bounds of
        its two children when the choice bounded them (``[2k, m]``, active children first; None here)."""
        return self._scores(batch, extra, rows, open_clause).argmax(dim=1), None

    def branch(self, batch: Batch, extra: Any, rows: torch.Tensor, open_clause: torch.Tensor) -> Batch:
        k = rows.shape[0]
        j, child_rows = self.choose(batch, extra, rows, open_clause)
        ar = torch.arange(k)
        act, ina = batch["splits"].clone(), batch["splits"].clone()
        act[ar, j] = 1
        ina[ar, j] = -1
        prio = clause_bounds(rows, self.onehot).masked_fill(~open_clause, float("inf")).min(dim=1).values
        both = torch.cat([rows, rows])
        if child_rows is not None:  # a child is a subset of its parent: keep the better of the two
            both = torch.maximum(both, child_rows)
        return {"splits": torch.cat([act, ina]), "row_lb": both,
                "depth": torch.cat([batch["depth"] + 1] * 2), "priority": torch.cat([prio, prio])}
