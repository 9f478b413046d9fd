"""The state a refinement pipeline passes from stage to stage.

:class:`Problem` is what one run is asked (network, input box, safety rows ``C y + d``); it never
changes. :class:`RefineState` is what has been proved so far: the proved lower bound of every
row, proved bounds of nodes, k-ReLU rows, a counterexample candidate, the deadline, notes and
per-stage statistics. Its methods keep the invariants every stage relies on: row bounds only
rise, node bounds only shrink (both are sound, so their meet is too).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from absint.ir import Graph
from absint.refine.encode_ops import KReluRows

__all__ = ["Problem", "RefineState", "Bounds", "meet_bounds"]

Bounds = dict[str, tuple[np.ndarray, np.ndarray]]


def meet_bounds(a: tuple[np.ndarray, np.ndarray] | None,
                b: tuple[np.ndarray, np.ndarray] | None) -> tuple[np.ndarray, np.ndarray] | None:
    """Intersection of two sound bound pairs (either may be None)."""
    if a is None or b is None:
        return b if a is None else a
    lo, hi = np.maximum(a[0], b[0]), np.minimum(a[1], b[1])
    bad = lo > hi  # only rounding noise can cross sound bounds: keep the hull there
    if bad.any():
        lo[bad], hi[bad] = np.minimum(a[0], b[0])[bad], np.maximum(a[1], b[1])[bad]
    return lo, hi


@dataclass(frozen=True)
class Problem:
    """One sample: the box ``[lower, upper]`` (``[1, *input]`` tensors and flat arrays) and rows
    ``C y + d`` (``C``: ``[m, n_out]``) that must be proved positive."""

    graph: Graph
    lower: torch.Tensor
    upper: torch.Tensor
    C: np.ndarray
    d: np.ndarray

    @property
    def in_lo(self) -> np.ndarray:
        return self.lower.detach().reshape(-1).cpu().double().numpy()

    @property
    def in_hi(self) -> np.ndarray:
        return self.upper.detach().reshape(-1).cpu().double().numpy()

    def violates(self, x: np.ndarray, row: int) -> np.ndarray | None:
        """``x`` clipped into the box, kept only if it violates ``row`` on the network."""
        x = np.clip(x, self.in_lo.reshape(x.shape), self.in_hi.reshape(x.shape))
        with torch.no_grad():
            y = self.graph.forward(torch.as_tensor(x[None], dtype=self.graph.dtype)).reshape(-1).cpu().numpy()
        return x if float(self.C[row] @ y + self.d[row]) < 0 else None


@dataclass
class RefineState:
    """What the stages have proved so far (see the module docstring)."""

    problem: Problem
    deadline: float | None = None
    tolerance: float = 0.0
    rows: np.ndarray = field(default=None)  # type: ignore[assignment]
    bounds: Bounds = field(default_factory=dict)
    krelu: dict[str, KReluRows] = field(default_factory=dict)
    #: k-ReLU rows of the ``multineuron`` stage by ReLU node name: ``(HullRows, μ [m, K])``, the rows its
    #: optimised multipliers use and those multipliers per safety row (valid on every sub-region)
    hull_rows: dict[str, Any] = field(default_factory=dict)
    candidate: np.ndarray | None = None
    stopped: str | None = None  # why a stage ended the run early (triage)
    notes: list[str] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)

    def __post_init__(self) -> None:
        if self.rows is None:
            self.rows = np.full(len(self.problem.d), -np.inf)

    # -- progress -------------------------------------------------------------------------------
    @property
    def todo(self) -> np.ndarray:
        """Indices of the rows not proved yet."""
        return np.flatnonzero(self.rows <= self.tolerance)

    @property
    def proved(self) -> bool:
        return bool(np.all(self.rows > self.tolerance))

    @property
    def finished(self) -> bool:
        """Nothing left to do: every row proved, a counterexample candidate, or stopped by a stage."""
        return self.proved or self.candidate is not None or self.stopped is not None

    def time_left(self) -> float:
        return np.inf if self.deadline is None else self.deadline - time.perf_counter()

    # -- monotone updates ---------------------------------------------------------------------------
    def raise_rows(self, values: np.ndarray, index: np.ndarray | None = None) -> None:
        """Proved lower bounds of the rows (all, or those in ``index``): kept where they are better."""
        values = np.asarray(values, dtype=np.float64).reshape(-1)
        if index is None:
            self.rows = np.maximum(self.rows, values)
        else:
            self.rows[index] = np.maximum(self.rows[index], values)

    def meet(self, name: str, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Proved bounds of node ``name`` (flat): intersected with what is known; returns the result."""
        new = (np.asarray(lo, dtype=np.float64).reshape(-1).copy(), np.asarray(hi, dtype=np.float64).reshape(-1).copy())
        out = meet_bounds(self.bounds.get(name), new)
        self.bounds[name] = out  # type: ignore[assignment]
        return out  # type: ignore[return-value]

    def offer_candidate(self, x: np.ndarray | None) -> None:
        """A possible counterexample; the caller (verify) re-checks it on the network."""
        if x is not None and self.candidate is None:
            self.candidate = np.asarray(x)

    # -- records --------------------------------------------------------------------------------
    def note(self, text: str) -> None:
        self.notes.append(text)

    def record(self, stage: str, **values: Any) -> None:
        """Statistics of one stage (a stage that runs per layer appends one record per call)."""
        self.stats.setdefault(stage, [] if stage in _LISTED else {})
        if stage in _LISTED:
            self.stats[stage].append(values)
        else:
            self.stats[stage].update(values)


_LISTED = {"tighten", "krelu", "slopes_layer"}
