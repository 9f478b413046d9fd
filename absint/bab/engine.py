"""The branch-and-bound loop, independent of what is split (Bunel et al., "Branch and Bound for
Piecewise Linear Neural Network Verification", JMLR 2020, Algorithm 1).

Repeat: pop a batch of open sub-problems, bound all of them in one domain call, drop the ones on
which every clause of the violation DNF is refuted (each clause independently: a clause is refuted
on a sub-problem when one of its rows has a proved lower bound ``> tolerance``; refuted clauses
stay refuted in the children), try the cheap counterexample candidates of the rest, and split
each remaining one in two. The search ends when nothing is open (verified), a candidate is a
real counterexample (falsified), or on time-out / memory bound / stop request (unknown, with the
bounds and the proved share of the search space kept).

What is split is a :class:`Strategy` (input boxes: :mod:`absint.bab.input_split`; ReLU phases:
:mod:`absint.bab.relu_split`).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import numpy as np
import torch

from absint.attack import AttackOptions, check_counterexample, clause_tensors, clause_values, pgd_attack
from absint.bab.common import clause_bounds
from absint.bab.queue import Batch, SubproblemQueue, batch_cat, batch_len, batch_select
from absint.specs import Clause, InputBox, OutputProperty

log = logging.getLogger(__name__)


class Strategy(Protocol):
    """What the loop needs from a splitting strategy."""

    def root(self) -> Batch: ...
    def bound(self, batch: Batch, deadline: float | None) -> tuple[torch.Tensor, torch.Tensor, Any]: ...
    def candidates(self, batch: Batch, extra: Any, rows: torch.Tensor) -> torch.Tensor: ...
    def branch(self, batch: Batch, extra: Any, rows: torch.Tensor, open_clause: torch.Tensor) -> Batch: ...
    def measure(self, batch: Batch) -> torch.Tensor: ...
    def splittable(self, batch: Batch, extra: Any) -> torch.Tensor: ...
    def select_extra(self, extra: Any, index: torch.Tensor) -> Any: ...
    def attack_region(self, batch: Batch) -> InputBox: ...


def property_from_rows(C: np.ndarray, d: np.ndarray, owner: np.ndarray, n_out: int) -> OutputProperty:
    """The violation DNF whose stacked safety rows are ``C y + d`` with clause ``owner[r]``."""
    clauses = tuple(Clause(-C[owner == k], -d[owner == k]) for k in range(int(owner.max()) + 1))
    return OutputProperty(clauses, n_out)


@dataclass
class SearchResult:
    """Outcome of one search (also the per-worker result that :func:`merge_results` combines)."""

    status: str  # verified | falsified | timeout | budget | memory | stuck | stopped
    counterexample: np.ndarray | None = None
    row_min: np.ndarray | None = None  # proved lower bound of each row over the whole region
    clause_min: np.ndarray | None = None  # proved lower bound of each clause margin over the region
    proved: float = 0.0  # share of the search space (input volume / split tree) proved
    open_items: Batch = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)


class Search:
    """One branch-and-bound search over a :class:`Strategy`."""

    def __init__(self, strategy: Strategy, C: np.ndarray, d: np.ndarray, owner: np.ndarray, region: InputBox,
                 graph, *, batch_size: int, max_queue: int, tolerance: float, attack: bool, attack_every: float,
                 max_depth: int, seed: int = 0, max_nodes: int | None = None) -> None:
        self.s = strategy
        self.C, self.d, self.owner = C, d, owner
        self.K = int(owner.max()) + 1
        self.onehot = torch.zeros(len(owner), self.K, dtype=torch.bool)
        self.onehot[torch.arange(len(owner)), torch.as_tensor(owner)] = True
        self.region, self.graph = region, graph
        self.prop = property_from_rows(C, d, owner, int(C.shape[1]))
        self.batch_size, self.tolerance = batch_size, tolerance
        self.attack, self.attack_every, self.max_depth, self.seed = attack, attack_every, max_depth, seed
        self.max_nodes = max_nodes
        self._per_item = 0.0
        self.queue = SubproblemQueue(max_queue)
        self.row_min = np.full(len(owner), np.inf)
        self.clause_min = np.full(self.K, np.inf)
        #: proved bounds of the root (the whole region), once bounded: the lower bounds reported
        #: when a counterexample ends the search (the open sub-problems are then dropped)
        self.root_rows: np.ndarray | None = None
        self.root_clauses: np.ndarray | None = None
        self.proved = 0.0
        self.stats: dict[str, Any] = {"iterations": 0, "bounded": 0, "pgd_runs": 0, "stuck": 0}
        A, b, mask = clause_tensors(self.prop, graph.device, graph.dtype)
        self._clause_t = (A, b, mask)

    def clause_bounds(self, rows: torch.Tensor) -> torch.Tensor:
        """Per sub-problem and clause: max over the clause's rows of the proved row bound ``[k, K]``."""
        return clause_bounds(rows, self.onehot)

    def _close(self, rows: torch.Tensor, clause_lb: torch.Tensor, measure: torch.Tensor) -> None:
        if rows.shape[0]:
            self.row_min = np.minimum(self.row_min, rows.min(0).values.numpy())
            self.clause_min = np.minimum(self.clause_min, clause_lb.min(0).values.numpy())
            self.proved += float(measure.sum())

    def _check(self, xs: torch.Tensor) -> np.ndarray | None:
        if xs.shape[0] == 0:
            return None
        with torch.no_grad():
            y = self.graph.forward(xs.reshape(xs.shape[0], *self.region.shape).to(self.graph.device, self.graph.dtype))
            v = clause_values(y.reshape(xs.shape[0], -1), *self._clause_t).max(dim=1).values
        for i in torch.nonzero(v >= 0).flatten().tolist():
            x = xs[i].detach().cpu().numpy().reshape(self.region.shape)
            ok, _ = check_counterexample(self.graph, self.region, self.prop, x)
            if ok:
                return x
        return None

    def run(self, items: Batch | None = None, *, deadline: float | None = None,
            stop_when_open: int | None = None, should_stop: Callable[[], bool] | None = None) -> SearchResult:
        """Search from ``items`` (default: the strategy's root) until decided or interrupted.

        ``stop_when_open``: return early (status ``stopped``) once that many sub-problems are
        open — used to seed parallel workers.
        """
        q = self.queue
        q.push(items if items is not None else self.s.root())
        self._last_attack = time.perf_counter()
        self._attack_cost = 0.0
        status = "verified"
        t0 = time.perf_counter()
        per_item = self._per_item  # seconds per bounded sub-problem in the last batch (kept across runs)
        while len(q):
            if deadline is not None and time.perf_counter() > deadline:
                status = "timeout"
                break
            if should_stop is not None and should_stop():
                status = "stopped"
                break
            if stop_when_open is not None and len(q) >= stop_when_open:
                status = "stopped"
                break
            if q.room <= 0:
                status = "memory"
                break
            if self.max_nodes is not None and self.stats["bounded"] >= self.max_nodes:
                status = "budget"
                break
            # Popping k and pushing at most 2k children keeps the queue within max_size.
            k = min(self.batch_size, q.room)
            if self.max_nodes is not None:
                k = min(k, self.max_nodes - self.stats["bounded"])
            if deadline is not None and per_item > 0:  # never start a batch that cannot finish in time
                k = max(1, min(k, int(0.5 * (deadline - time.perf_counter()) / per_item)))
            batch = q.pop(k)
            tb = time.perf_counter()
            # Sub-problems whose inherited bounds already refute every clause (a look-ahead bounded
            # them when their parent was split) are closed without bounding them again.
            pre_lb = self.clause_bounds(batch["row_lb"])
            pre_done = (pre_lb > self.tolerance).all(dim=1)
            if bool(pre_done.any()):
                self._close(batch["row_lb"][pre_done], pre_lb[pre_done], self.s.measure(batch)[pre_done])
                if bool(pre_done.all()):
                    continue
                batch = batch_select(batch, torch.nonzero(~pre_done).flatten())
            try:
                rows, infeasible, extra = self.s.bound(batch, deadline)
            except TimeoutError:
                q.push(batch)
                status = "timeout"
                break
            per_item = self._per_item = (time.perf_counter() - tb) / batch_len(batch)
            if self.stats["iterations"] % 50 == 1:
                log.debug("bab iteration %d: %d open, %.6g%% proved, %.2g ms per sub-problem",
                          self.stats["iterations"], len(q), 100 * self.proved, 1e3 * per_item)
            self.stats["iterations"] += 1
            self.stats["bounded"] += batch_len(batch)
            rows = torch.maximum(rows, batch["row_lb"])  # a child is a subset of its parent
            clause_lb = self.clause_bounds(rows)
            at_root = batch["depth"] == 0
            if self.root_rows is None and bool(at_root.any()):
                self.root_rows = rows[at_root].min(0).values.numpy().copy()
                self.root_clauses = clause_lb[at_root].min(0).values.numpy().copy()
            refuted = (clause_lb > self.tolerance) | infeasible[:, None]
            done = refuted.all(dim=1)
            measure = self.s.measure(batch)
            # Empty sub-problems are proved vacuously; their (meaningless) bounds are not recorded.
            self._close(rows[done & ~infeasible], clause_lb[done & ~infeasible], measure[done & ~infeasible])
            self.proved += float(measure[infeasible].sum())
            open_idx = torch.nonzero(~done).flatten()
            if open_idx.numel() == 0:
                continue
            ob = batch_select(batch, open_idx)
            orows, oclause = rows[open_idx], clause_lb[open_idx]
            oextra = self.s.select_extra(extra, open_idx) if extra is not None else None
            if self.attack:
                cx = self._check(self.s.candidates(ob, oextra, orows))
                if cx is not None:
                    status = "falsified"
                    self.stats["found_by"] = "candidate"
                    return self._finish(status, cx, t0)
                now = time.perf_counter()
                # at most ~1/5 of the time goes to attacks: wait 4× the last attack's duration
                if self.attack_every and now - self._last_attack >= max(self.attack_every, 4 * self._attack_cost):
                    # Alternate: PGD inside the most promising open sub-problem, and PGD on the whole
                    # region with a start pool growing ×4 per run (thin counterexample regions).
                    n = self.stats["pgd_runs"]
                    self.stats["pgd_runs"] += 1
                    if n % 2 == 1:
                        worst = int(torch.argmin(oclause.masked_fill(oclause > self.tolerance, np.inf).min(1).values))
                        region, pool = self.s.attack_region(batch_select(ob, torch.tensor([worst]))), 1024
                    else:
                        cap = max(1024, int(3e5 // max(self.region.lower.size, 1)))  # keeps one run short
                        region, pool = self.region, min(4096 * 4 ** (n // 2), cap)
                    cx = pgd_attack(self.graph, region, self.prop,
                                    AttackOptions(restarts=4, steps=30, seed=self.seed + n, sample_pool=pool), deadline)
                    self._last_attack = time.perf_counter()
                    self._attack_cost = self._last_attack - now
                    self.stats["pgd_seconds"] = self.stats.get("pgd_seconds", 0.0) + self._attack_cost
                    if cx is not None and self.region.contains(cx):
                        ok, _ = check_counterexample(self.graph, self.region, self.prop, cx)
                        if ok:
                            self.stats["found_by"] = "pgd"
                            return self._finish("falsified", np.asarray(cx).reshape(self.region.shape), t0)
            ob = dict(ob)
            ob["row_lb"] = orows
            open_clause = oclause <= self.tolerance
            deep = (ob["depth"] >= self.max_depth) | ~self.s.splittable(ob, oextra)
            if bool(deep.any()):
                self.stats["stuck"] += int(deep.sum())
                keep = torch.nonzero(~deep).flatten()
                stuck_rows = orows[deep]
                self.row_min = np.minimum(self.row_min, stuck_rows.min(0).values.numpy())
                self.clause_min = np.minimum(self.clause_min, oclause[deep].min(0).values.numpy())
                status = "stuck"
                ob, oextra_k = batch_select(ob, keep), keep
                if keep.numel() == 0:
                    continue
                oextra = self.s.select_extra(oextra, oextra_k) if oextra is not None else None
                orows, open_clause = orows[keep], open_clause[keep]
            children = self.s.branch(ob, oextra, orows, open_clause)
            q.push(children)
            per_item = self._per_item = (time.perf_counter() - tb) / batch_len(batch)  # bounding + branching
        if status == "verified" and self.stats["stuck"]:
            status = "stuck"
        return self._finish(status, None, t0)

    def _finish(self, status: str, cx: np.ndarray | None, t0: float) -> SearchResult:
        open_items = self.queue.take_all() if status != "falsified" else {}
        row_min, clause_min = self.row_min.copy(), self.clause_min.copy()
        if status == "falsified":
            # Closed leaves alone cover only part of the region: report the root's proved bounds
            # (−∞ when the root was never bounded here), which hold over all of it.
            row_min = self.root_rows.copy() if self.root_rows is not None else np.full_like(row_min, -np.inf)
            clause_min = (self.root_clauses.copy() if self.root_clauses is not None
                          else np.full_like(clause_min, -np.inf))
        if batch_len(open_items):
            rows = open_items["row_lb"]
            row_min = np.minimum(row_min, rows.min(0).values.numpy())
            clause_min = np.minimum(clause_min, self.clause_bounds(rows).min(0).values.numpy())
        stats = dict(self.stats, peak_queue=self.queue.peak, seconds=time.perf_counter() - t0,
                     open=batch_len(open_items))
        return SearchResult(status, cx, row_min, clause_min, self.proved, open_items, stats)


def merge_results(parts: list[SearchResult], first: SearchResult | None = None) -> SearchResult:
    """Combine the searches of disjoint parts of the search space (parallel workers)."""
    allp = ([first] if first is not None else []) + parts
    for p in allp:
        if p.status == "falsified":
            return p
    row_min = np.min(np.stack([p.row_min for p in allp]), axis=0)
    clause_min = np.min(np.stack([p.clause_min for p in allp]), axis=0)
    order = ["memory", "timeout", "budget", "stuck", "stopped"]
    bad = [p.status for p in parts if p.status != "verified"]
    status = "verified" if not bad else min(bad, key=order.index)
    stats: dict[str, Any] = {}
    for p in allp:
        for k, v in p.stats.items():
            if isinstance(v, (int, float)) and k != "peak_queue":
                stats[k] = stats.get(k, 0) + v
    stats["peak_queue"] = max(p.stats.get("peak_queue", 0) for p in allp)
    open_items = batch_cat([p.open_items for p in parts])
    return SearchResult(status, None, row_min, clause_min, sum(p.proved for p in allp), open_items, stats)
