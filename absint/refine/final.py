"""The final stages: they bound the rows themselves.

* :class:`FinalLP` — the LP of the whole network (triangle ReLUs, S-shaped lines, max-pool sums,
  k-ReLU rows) over the proved bounds, one solve per unproved row ("LP-cert", Salman et al.,
  NeurIPS 2019).
* :class:`CompleteMILP` — every unstable ReLU and undecided max-pooling window binary (Tjeng et
  al., ICLR 2019), row by row; stops at the first row refuted with a concrete optimum.
* :class:`Bab` — ReLU-split branch and bound with α/β bounding (β-CROWN style) from the proved
  bounds; only a finished search (every leaf closed) raises the rows.
* :class:`PartialMILP` — PRIMA-style: binaries for the widest unstable neurons of the last layers;
  while time is left and the MILP was solved (not cut by the clock), one more layer and twice
  the binaries, until every unstable neuron of the network is binary.

Only :attr:`SolveResult.proved_bound` is used as a bound; a solver's point becomes a
counterexample candidate only when it violates the row on the network itself.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from absint.bab.options import TIGHTEN_DEPTH, BabOptions
from absint.ir import Sigmoid, Tanh
from absint.refine.bounding import branch_and_bound
from absint.refine.encoding import Encoding
from absint.refine.pipeline import Context, Stage, share_deadline
from absint.refine.state import RefineState
from absint.solvers import Status

__all__ = ["FinalLP", "CompleteMILP", "Bab", "PartialMILP"]


def _row_objectives(enc: Encoding, state: RefineState, rows: np.ndarray) -> list[tuple[dict[int, float], str]]:
    y = enc.vars[state.problem.graph.output]
    C = state.problem.C
    return [({int(y[j]): float(C[r, j]) for j in np.flatnonzero(C[r])}, "min") for r in rows]


def _apply(state: RefineState, enc: Encoding, rows: np.ndarray, results: list, what: str, exact: bool) -> None:
    """Raise the rows to the proved bounds; offer optimal points that violate a row on the network."""
    p = state.problem
    missing = 0
    for r, s in zip(rows, results):
        if s is None or s.proved_bound is None or not np.isfinite(s.proved_bound):
            missing += 1
            continue
        state.raise_rows(np.array([s.proved_bound + float(p.d[r])]), np.array([r]))
        if s.x is not None and s.objective is not None and s.objective + p.d[r] < 0 \
                and (exact or s.status is Status.OPTIMAL):
            state.offer_candidate(p.violates(enc.input_values(s.x, p.graph), int(r)))
    if missing:
        state.note(f"{what}: {missing} row(s) without a proved bound")


def _fits(state: RefineState, ctx: Context, deadline: float | None) -> bool:
    if ctx.encoder.fits(deadline):
        return True
    state.note("no time left to build the LP/MILP of the network")
    return False


@dataclass(frozen=True)
class FinalLP(Stage):
    """The LP of the network over the proved bounds (``krelu``: with the k-ReLU rows); ``timeout`` per row."""

    key: str = field(default="final_lp", init=False)
    timeout: float = 100.0
    krelu: bool = True

    def run(self, state: RefineState, ctx: Context, deadline: float | None) -> None:
        if not _fits(state, ctx, deadline):
            return
        p, todo = state.problem, state.todo
        enc = ctx.encoder.build(p.in_lo, p.in_hi, state.bounds, krelu=state.krelu if self.krelu else None,
                                name="final")
        res = ctx.row_solver(state).solve(enc, _row_objectives(enc, state, todo), self.timeout, deadline, "final LP",
                                          keep=True)
        _apply(state, enc, todo, res, "final LP", exact=False)
        state.record("final_lp", vars=enc.model.num_vars, rows=enc.model.num_rows)


@dataclass(frozen=True)
class CompleteMILP(Stage):
    """Complete big-M MILP, ``timeout`` per row; stops at the first refuted row."""

    key: str = field(default="complete_milp", init=False)
    timeout: float = 3600.0

    def run(self, state: RefineState, ctx: Context, deadline: float | None) -> None:
        if not _fits(state, ctx, deadline):
            return
        p = state.problem
        if any(isinstance(n, (Sigmoid, Tanh)) for n in p.graph.nodes):
            state.note("MILP: sigmoid/tanh enter by their linear relaxation (complete for ReLU and max-pooling only)")
        enc = ctx.encoder.build(p.in_lo, p.in_hi, state.bounds, binaries=True, krelu=state.krelu, name="milp")
        solver = ctx.row_solver(state)
        for r in state.todo:
            res = solver.solve(enc, _row_objectives(enc, state, np.array([r])), self.timeout, deadline, "MILP",
                               keep=True)
            _apply(state, enc, np.array([r]), res, "MILP", exact=True)
            if state.candidate is not None or res[0] is None:
                break  # a concrete optimum below zero (verify re-checks it), or out of time
        state.record("complete_milp", vars=enc.model.num_vars, rows=enc.model.num_rows,
                     binaries=enc.model.num_integer)


@dataclass(frozen=True)
class Bab(Stage):
    """β-CROWN-style ReLU-split branch and bound for ``share`` of the time left, at most ``max_seconds``.

    ``hull_rows``: give every sub-problem the k-ReLU rows of the ``multineuron`` stage (they hold on
    every sub-problem; their multipliers are optimised per node, GCP-CROWN, Zhang et al. NeurIPS 2022).
    They tighten each node but make each node dearer, and at 30 s per image branch and bound without
    them certified more (ConvSmall 20 against 14 of 29, MNIST 6x100 11 against 10 of 30, never fewer
    on any image; benchmarks/RESULTS.md, "BaB with and without hull rows"), so they are off by default.
    ``tighten_depth``: how many ReLU layers after each split are re-bounded per sub-problem;
    ``relu_heuristic``, ``fsb_candidates``: how the neuron to split is chosen; ``beta_dtype``: the
    precision of the optimisation steps (all four as in :class:`absint.bab.BabOptions`).
    """

    key: str = field(default="bab", init=False)
    share: float = 0.6
    max_seconds: float | None = 30.0
    hull_rows: bool = False
    tighten_depth: int | None = TIGHTEN_DEPTH
    relu_heuristic: str = "auto"
    fsb_candidates: int = 3
    beta_dtype: str = "float32"

    def check(self) -> None:
        super().check()
        self.bab_options()  # tighten_depth, the heuristic, its candidates, beta_dtype: checked by BabOptions

    def bab_options(self) -> BabOptions:
        """The branch and bound's options (validated: a bad value raises OptionError naming it)."""
        return BabOptions(tighten_depth=self.tighten_depth, relu_heuristic=self.relu_heuristic,
                          fsb_candidates=self.fsb_candidates, beta_dtype=self.beta_dtype)

    def deadline(self, state: RefineState) -> float | None:
        return share_deadline(state, self.share, self.max_seconds)

    def run(self, state: RefineState, ctx: Context, deadline: float | None) -> None:
        p, todo = state.problem, state.todo
        cons = None
        if self.hull_rows:  # the multineuron stage's k-ReLU rows (valid on every sub-problem), open rows' multipliers
            cons = {name: (rows, None if mu is None else mu[todo])
                    for name, (rows, mu) in state.hull_rows.items()} or None
        out = branch_and_bound(p.graph, p.in_lo, p.in_hi, p.C[todo], p.d[todo], state.bounds, deadline,
                               constraints=cons, options=self.bab_options())
        if out is None:
            state.stats.setdefault("skipped", []).append("bab: needs a ReLU chain")
            return
        state.record("bab", **out.stats)
        if out.rows is not None:
            state.raise_rows(out.rows, todo)
        elif out.counterexample is not None:
            state.offer_candidate(out.counterexample)


@dataclass(frozen=True)
class PartialMILP(Stage):
    """Binaries for the ``neurons`` widest unstable ReLUs of each of the last ``layers`` ReLU layers,
    ``timeout`` per row; escalated while time is left (see the module docstring)."""

    key: str = field(default="partial_milp", init=False)
    layers: int = 1
    neurons: int = 30
    timeout: float = 100.0

    def run(self, state: RefineState, ctx: Context, deadline: float | None) -> None:
        p = state.problem
        solver = ctx.row_solver(state)
        n_layers, n_neurons, total = self.layers, self.neurons, 0
        todo = state.todo
        while todo.size and state.time_left() > 1.0 and _fits(state, ctx, deadline):
            sel = self._selection(state, ctx, n_layers, n_neurons)
            size = int(sum(v.size for v in sel.values()))
            if not sel or size <= total:
                break  # nothing new to make binary
            total = size
            enc = ctx.encoder.build(p.in_lo, p.in_hi, state.bounds, binaries=sel, krelu=state.krelu,
                                    name="partial-milp")
            cut = False
            for r in todo:
                res = solver.solve(enc, _row_objectives(enc, state, np.array([r])), self.timeout, deadline,
                                   "partial MILP", keep=True)
                cut = cut or res[0] is None or res[0].status is not Status.OPTIMAL
                _apply(state, enc, np.array([r]), res, "partial MILP", exact=False)
                if state.rows[r] <= state.tolerance:
                    # Rows are a conjunction (robustness): once one stays unproved the rest keep
                    # their bounds (still sound) instead of spending more MILP time.
                    break
            todo = state.todo
            state.record("partial_milp", binaries=total)
            if cut:
                break
            n_layers, n_neurons = n_layers + 1, 2 * n_neurons

    @staticmethod
    def _selection(state: RefineState, ctx: Context, n_layers: int, n_neurons: int) -> dict[str, np.ndarray]:
        sel: dict[str, np.ndarray] = {}
        for relu in ctx.relus[-n_layers:]:
            b = state.bounds.get(relu.inputs[0])
            if b is None:
                continue
            lo, hi = b
            un = np.flatnonzero((lo < 0) & (hi > 0))
            if un.size:
                sel[relu.name] = un[np.argsort(lo[un] * hi[un], kind="stable")[:n_neurons]]
        return sel
