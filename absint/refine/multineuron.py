"""The ``multineuron`` stage: k-ReLU hull rows inside bound propagation, no LP (``kpoly``'s core).

Every ReLU input is re-bounded layer by layer with optimised slopes α and multipliers μ on the hull
rows of all earlier ReLU layers, each layer's rows computed from its tightened bounds, then the
unproved safety rows are bounded the same way (:class:`absint.domains.krelu.tighten.MultiNeuronBounds`;
GCP-CROWN, Zhang et al. NeurIPS 2022, with kPoly/PRIMA hull rows, Singh et al. NeurIPS 2019, Müller
et al. POPL 2022). The proved node bounds go into the state (the root bounds of the branch and bound
that follows) and the hull rows too (``state.hull_rows``: valid in every sub-problem).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from absint.domains.krelu import KReluOptions
from absint.domains.krelu.tighten import KPOLY_KRELU as _KPOLY_KRELU, TightenOptions, rows_deadline, start_region
from absint.domains.linear_bounds import Engine, GraphView
from absint.refine.pipeline import Context, Stage, share_deadline
from absint.refine.state import RefineState

__all__ = ["MultiNeuron", "KPOLY_KRELU"]

#: kpoly's default grouping (defined beside the tightening; see its comment there)
KPOLY_KRELU = _KPOLY_KRELU


@dataclass(frozen=True)
class MultiNeuron(Stage):
    """Layer-by-layer α + μ bounds with k-ReLU rows (see the module docstring).

    ``krelu``: grouping and hull options (``k = 1``: α alone); ``iters`` Adam steps per layer (at
    most: each layer gets an equal part of the stage's time left), up to ``max_iters`` where the
    time left covers the later layers' projected cost (times ``reserve_factor``); ``final_iters`` for the rows;
    ``lr_alpha``/``lr_mu`` step sizes; ``rows_from``: the first ReLU layer (topological index) that
    gets rows; ``share``/``max_seconds``: the part of the time left this stage may use (the branch
    and bound after it gets the rest).
    """

    key: str = field(default="multineuron", init=False)
    krelu: KReluOptions = field(default_factory=lambda: KPOLY_KRELU)
    # the schedule's defaults are TightenOptions' (one place to change them)
    iters: int = TightenOptions.iters
    max_iters: int = TightenOptions.max_iters
    reserve_factor: float = TightenOptions.reserve_factor
    final_iters: int = TightenOptions.final_iters
    lr_alpha: float = TightenOptions.lr_alpha
    lr_mu: float = TightenOptions.lr_mu
    rows_from: int = TightenOptions.rows_from
    share: float = 0.5
    max_seconds: float | None = None

    def deadline(self, state: RefineState) -> float | None:
        return share_deadline(state, self.share, self.max_seconds)

    def run(self, state: RefineState, ctx: Context, deadline: float | None) -> None:
        p = state.problem
        engine = Engine(device=ctx.domain.device, dtype=ctx.domain.dtype)
        view = GraphView.of(p.graph, 1)
        t0 = time.perf_counter()
        # DeepPoly over the view, every node met with the bounds proved by earlier stages first
        mb = start_region(view, engine, p.lower, p.upper, self.krelu,
                          TightenOptions(iters=self.iters, max_iters=self.max_iters, reserve_factor=self.reserve_factor,
                                         final_iters=self.final_iters, lr_alpha=self.lr_alpha,
                                         lr_mu=self.lr_mu, rows_from=self.rows_from), known=state.bounds)
        st = mb.run(deadline)
        for name, (lo, hi) in mb.preactivation_bounds().items():
            state.meet(name, lo, hi)
        todo = state.todo
        if todo.size and state.time_left() > 0:
            # the rows always get some steps over whatever bounds were tightened in time (up to a tenth
            # of the time left beyond this stage's share, never beyond the run's limit)
            end = rows_deadline(deadline, state.deadline, time.perf_counter())
            state.raise_rows(mb.bound_safety_rows(view.output, p.C[todo], p.d[todo], end), todo)
            # for the branch and bound: the rows the optimised multipliers use, with those multipliers
            # (per safety row; zero for rows proved before) — typically 5–20 % of all rows
            for name, (rows, mu) in mb.active_rows().items():
                full = np.zeros((len(p.d), mu.shape[1]))
                full[todo] = mu
                state.hull_rows[name] = (rows, full)
        if not st.complete:
            state.note(f"{self.key}: time limit reached after {len(st.unstable_after)} of {len(mb.layers)} layers")
        state.record(self.key, seconds=time.perf_counter() - t0, tighten_s=st.tighten_s, rows_s=st.rows_s,
                     groups=st.groups, rows=st.rows, unstable_before=st.unstable_before,
                     unstable_after=st.unstable_after, steps=st.steps)
