"""Input splitting: bisect the input box (Wang et al., "Formal Security Analysis of Neural Networks
using Symbolic Intervals", USENIX Security 2018 — ReluVal; "Efficient Formal Safety Analysis of
Neural Networks", NeurIPS 2018 — Neurify).

Complete for low-dimensional inputs such as ACAS Xu (5 inputs): as boxes shrink, every ReLU
becomes stable and the domain's bound becomes exact up to the linear part. The dimension to
bisect is chosen by *smear* (ReluVal): the influence of input ``i`` on the bounds that matter,
``Σ_r w_r·|a_ri|·width_i`` over the rows ``r`` of the still-open clauses with a negative bound,
``w_r = 1/|bound_r|`` (rows close to proving weigh most), where ``a_r`` is the domain's symbolic
input coefficient of row ``r`` (DeepPoly's back-substituted lower bound) or, for non-symbolic
domains, the concrete gradient of the worst row at the box centre; ``smear_worst`` uses only the
row closest to refuting the worst clause (much worse on multi-row clauses: ACAS Xu property 3 on
net 2_1 needs 313 sub-boxes with ``smear`` and > 38 000 with ``smear_worst``); ``width`` bisects
the relatively widest dimension.
"""
from __future__ import annotations

from typing import Any

import torch

from absint.bab.bounding import Bounder
from absint.bab.common import clause_bounds, min_vertex, worst_rows
from absint.bab.queue import Batch
from absint.specs import InputBox


class InputSplitting:
    """The :class:`~absint.bab.engine.Strategy` that bisects input boxes."""

    def __init__(self, bounder: Bounder, region: InputBox, C: torch.Tensor, d: torch.Tensor,
                 onehot: torch.Tensor, heuristic: str = "smear", attack: bool = True,
                 max_aspect: float = 200.0) -> None:
        self.b, self.region, self.C, self.d, self.onehot = bounder, region, C, d, onehot
        self.heuristic, self.attack, self.max_aspect = heuristic, attack, max_aspect
        self.root_lo = torch.as_tensor(region.lower.reshape(-1), dtype=torch.float64)
        self.root_hi = torch.as_tensor(region.upper.reshape(-1), dtype=torch.float64)
        self.root_w = (self.root_hi - self.root_lo).clamp(min=1e-300)
        self.log_root = float(torch.log(self.root_w[self.root_hi > self.root_lo]).sum())

    def root(self) -> Batch:
        m = self.C.shape[0]
        return {"lo": self.root_lo[None].clone(), "hi": self.root_hi[None].clone(),
                "row_lb": torch.full((1, m), -float("inf"), dtype=torch.float64),
                "depth": torch.zeros(1, dtype=torch.int32), "priority": torch.zeros(1, dtype=torch.float64)}

    def bound(self, batch: Batch, deadline: float | None):
        sym = self.b.symbolic and (self.heuristic != "width" or self.attack)
        out = self.b.bound(batch["lo"], batch["hi"], self.C, self.d, want_symbolic=sym, deadline=deadline)
        return out.rows, out.infeasible, out.sym_A  # symbolic input coefficients [k, m, n] or None

    def select_extra(self, extra: Any, index: torch.Tensor) -> Any:
        return None if extra is None else extra[index]

    def measure(self, batch: Batch) -> torch.Tensor:
        """Share of the root box's volume (flat dimensions of the root count as width 1)."""
        w = (batch["hi"] - batch["lo"]) / self.root_w
        w = torch.where(self.root_hi > self.root_lo, w, torch.ones_like(w))
        return w.prod(dim=1)

    def splittable(self, batch: Batch, extra: Any) -> torch.Tensor:
        w = batch["hi"] - batch["lo"]
        return (w > 1e-12 * self.root_w).any(dim=1)

    def attack_region(self, batch: Batch) -> InputBox:
        return InputBox(batch["lo"][0].numpy().reshape(self.region.shape),
                        batch["hi"][0].numpy().reshape(self.region.shape))

    def candidates(self, batch: Batch, extra: Any, rows: torch.Tensor) -> torch.Tensor:
        lo, hi = batch["lo"], batch["hi"]
        pts = [(lo + hi) / 2]
        if extra is not None:
            open_clause = torch.ones(rows.shape[0], self.onehot.shape[1], dtype=torch.bool)
            r = worst_rows(rows, self.onehot, open_clause)
            A = extra[torch.arange(rows.shape[0]), r]
            pts.append(min_vertex(A, lo, hi))
        return torch.cat(pts)

    def _scores(self, batch: Batch, extra: Any, rows: torch.Tensor, open_clause: torch.Tensor) -> torch.Tensor:
        lo, hi = batch["lo"], batch["hi"]
        w = hi - lo
        if self.heuristic == "width":
            return w / self.root_w
        r = worst_rows(rows, self.onehot, open_clause)
        if extra is not None and self.heuristic == "smear":
            # every row of the open clauses, each weighted by how far its bound is from zero
            row_open = (open_clause.to(torch.float64) @ self.onehot.T.to(torch.float64)) > 0
            wgt = torch.where(row_open & (rows < 0), 1.0 / (rows.abs() + 1e-6), torch.zeros_like(rows))
            A = (extra.abs() * wgt[:, :, None]).sum(1)
        elif extra is not None:  # smear_worst: the one row closest to refuting the worst clause
            A = extra[torch.arange(rows.shape[0]), r]
        else:  # concrete gradient of the row at the box centre
            with torch.enable_grad():
                x = ((lo + hi) / 2).requires_grad_(True)
                y, _ = self.b.forward(x)
                obj = (y * self.C[r].to(y)).sum()
                A, = torch.autograd.grad(obj, x)
            A = A.detach().to(torch.float64)
        score = A.abs() * w
        # Never pick a degenerate dimension; fall back to width when the gradient vanishes.
        score = torch.where(w > 0, score, torch.full_like(score, -1.0))
        flat = score.max(dim=1).values <= 0
        if bool(flat.any()):
            score[flat] = (w / self.root_w)[flat]
        return score

    def _lookahead(self, batch: Batch, open_clause: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Bound both halves of every possible bisection (``2n`` boxes per sub-problem).

        The score of a dimension is the sum over its two halves of the worst open clause's bound,
        clipped at 0 (a proved half counts as 0); returns the scores ``[k, n]`` and the halves' row
        bounds ``[k, 2, n, m]`` (left, right), which the chosen children keep as their ``row_lb``
        (a child whose bounds already prove it is closed without being bounded again).
        """
        lo, hi = batch["lo"], batch["hi"]
        k, n = lo.shape
        mid = (lo + hi) / 2
        eye = torch.eye(n, dtype=torch.bool)[None]
        lo_k, hi_k, mid_k = (t[:, None, :].expand(k, n, n) for t in (lo, hi, mid))
        los = torch.cat([lo_k, torch.where(eye, mid_k, lo_k)], 1).reshape(2 * k * n, n)
        his = torch.cat([torch.where(eye, mid_k, hi_k), hi_k], 1).reshape(2 * k * n, n)
        rows = self.b.bound(los, his, self.C, self.d).rows.reshape(k, 2, n, -1)
        clb = clause_bounds(rows.reshape(2 * k * n, -1), self.onehot).reshape(k, 2, n, -1)
        clb = torch.where(open_clause[:, None, None, :], clb, torch.full_like(clb, float("inf")))
        score = clb.min(dim=3).values.clamp(max=0.0).sum(dim=1)
        score = torch.where(hi - lo > 0, score, torch.full_like(score, -float("inf")))
        return score, rows

    def branch(self, batch: Batch, extra: Any, rows: torch.Tensor, open_clause: torch.Tensor) -> Batch:
        k = rows.shape[0]
        halves = None
        if self.heuristic == "lookahead":
            score, halves = self._lookahead(batch, open_clause)
            dim = score.argmax(dim=1)
        else:
            dim = self._scores(batch, extra, rows, open_clause).argmax(dim=1)
        if self.max_aspect:
            # Smear only sees the linear part of the bound: a dimension can have a tiny symbolic
            # coefficient yet cause the relaxation error (ACAS Xu 5_9 prop_1 kept one dimension
            # 1000× wider than the others, relatively). Bisect the relatively widest dimension
            # when it is more than max_aspect× wider than the chosen one.
            rel = (batch["hi"] - batch["lo"]) / self.root_w
            widest = rel.argmax(dim=1)
            chosen = rel.gather(1, dim[:, None]).squeeze(1)
            dim = torch.where(rel.max(dim=1).values > self.max_aspect * chosen, widest, dim)
        lo, hi = batch["lo"], batch["hi"]
        mid = ((lo + hi) / 2).gather(1, dim[:, None]).squeeze(1)
        ar = torch.arange(k)
        child_rows = (rows, rows)
        if halves is not None:  # a child is a subset of its parent: keep the better bound
            child_rows = (torch.maximum(halves[ar, 0, dim], rows), torch.maximum(halves[ar, 1, dim], rows))
        hi_left = hi.clone()
        hi_left[ar, dim] = mid
        lo_right = lo.clone()
        lo_right[ar, dim] = mid
        clause_lb = torch.where(open_clause, clause_bounds(rows, self.onehot), torch.full_like(open_clause, 0, dtype=rows.dtype) + float("inf"))
        prio = clause_lb.min(dim=1).values
        return {"lo": torch.cat([lo, lo_right]), "hi": torch.cat([hi_left, hi]),
                "row_lb": torch.cat(child_rows), "depth": torch.cat([batch["depth"] + 1] * 2),
                "priority": torch.cat([prio, prio])}

