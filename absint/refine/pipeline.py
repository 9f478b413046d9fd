"""Refinement as a pipeline of stages over one :class:`~absint.refine.state.RefineState`.

A stage is a small frozen dataclass: its fields are its options, :meth:`Stage.run` does its work
on the state (through the state's monotone updates: rows only rise, node bounds only shrink).
A preset (``lp``, ``milp``, ``refinezono``, ``refinepoly``, ``kpoly``) is a tuple of configured
stages (:mod:`absint.refine.presets`). :meth:`Pipeline.run` passes the state through the stages
in order and stops as soon as every row is proved, a stage found a counterexample candidate or
stopped the run (triage), or the deadline passed. A stage may take only a share of the time left
(``share``, ``max_seconds``) so that later stages still run.

:class:`Context` holds what the stages of one network share: the graph, the domain, the LP/MILP
encoder, the slope engine and the row solver.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, fields

import numpy as np
import torch

from absint.errors import AbsintError, OptionError
from absint.ir import Add, Affine, Graph, Relu
from absint.options import Options
from absint.refine.bounding import SlopeBounder, slope_bounder
from absint.refine.encoding import ACTIVATION_OPS, NetworkEncoder
from absint.refine.solving import RowSolver, SolverOptions
from absint.refine.state import Problem, RefineState
from absint.domains.base import Domain

log = logging.getLogger(__name__)

__all__ = ["Stage", "Context", "Pipeline", "flat"]


def flat(t: torch.Tensor) -> np.ndarray:
    """A tensor as a flat float64 numpy copy."""
    return t.detach().reshape(-1).cpu().double().numpy().copy()


class Context:
    """What the stages of one network share (built once per graph by the analysis)."""

    def __init__(self, graph: Graph, domain: Domain, encoder: NetworkEncoder, solver: SolverOptions) -> None:
        self.graph = graph
        self.domain = domain
        self.encoder = encoder
        self.solver_options = solver
        #: inputs of the activation nodes, in graph order (the nodes per-neuron tightening refines)
        self.refinable: list[str] = []
        for n in graph.nodes:
            if isinstance(n, ACTIVATION_OPS) and n.inputs[0] not in self.refinable:
                self.refinable.append(n.inputs[0])
        #: nodes whose domain bounds are recorded (every affine / sum output, every refinable node)
        self.recorded = {n.name for n in graph.nodes if isinstance(n, (Affine, Add))} | set(self.refinable)
        self.relus: list[Relu] = [n for n in graph.nodes if isinstance(n, Relu)]
        self._slopes: dict[tuple[int, int], SlopeBounder | None] = {}

    def slopes(self, iters: int, final_iters: int) -> SlopeBounder | None:
        """The slope engine with these iteration counts (None where it does not apply)."""
        key = (int(iters), int(final_iters))
        if key not in self._slopes:
            self._slopes[key] = slope_bounder(self.graph, *key, device=self.domain.device)
        return self._slopes[key]

    def row_solver(self, state: RefineState) -> RowSolver:
        return RowSolver(self.solver_options, state)


@dataclass(frozen=True)
class Stage(Options):
    """Base of the stages: ``key`` names the stage in options, notes and statistics. A stage's fields
    are type-checked when it is built (:class:`~absint.options.Options`); :meth:`check` adds ranges."""

    #: the stage's name in options, notes and statistics (set by each stage type, not an option)
    key: str = field(default="", init=False)

    def check(self) -> None:
        for f in fields(self):
            if not f.init:
                continue
            v = getattr(self, f.name)
            if (f.name.startswith("timeout") or f.name in ("max_seconds",)) and v is not None and not v >= 0:
                raise OptionError(f"stage {self.key!r}: {f.name} must be >= 0 (got {v!r})")
            if f.name == "share" and not 0 < v <= 1:
                raise OptionError(f"stage {self.key!r}: share must lie in (0, 1] (got {v!r})")

    def deadline(self, state: RefineState) -> float | None:
        """The time this stage may use: by default everything left."""
        return state.deadline

    def run(self, state: RefineState, ctx: Context, deadline: float | None) -> None:  # pragma: no cover
        raise NotImplementedError

    @classmethod
    def option_names(cls) -> list[str]:
        return [f.name for f in fields(cls) if f.init]


def share_deadline(state: RefineState, share: float, max_seconds: float | None) -> float | None:
    """``share`` of the time left (at most ``max_seconds``) from now, within the state's deadline."""
    now = time.perf_counter()
    left = state.time_left()
    span = min(share * left, np.inf if max_seconds is None else max_seconds)
    if not np.isfinite(span):
        return state.deadline
    end = now + span
    return end if state.deadline is None else min(end, state.deadline)


@dataclass(frozen=True)
class Pipeline:
    """Stages run in order on one problem (see the module docstring)."""

    stages: tuple[Stage, ...]
    tolerance: float = 0.0

    def __post_init__(self) -> None:
        if not all(isinstance(s, Stage) for s in self.stages):
            raise OptionError(f"a refinement pipeline is a tuple of stages (got {self.stages!r})")
        keys = [s.key for s in self.stages]
        if len(set(keys)) != len(keys):
            raise OptionError(f"refinement pipeline lists a stage twice: {keys}")
        if not keys or keys[0] != "domain":
            raise OptionError(f"a refinement pipeline starts with the 'domain' stage (got {keys})")

    def stage(self, key: str) -> Stage | None:
        return next((s for s in self.stages if s.key == key), None)

    def run(self, problem: Problem, ctx: Context, deadline: float | None = None) -> RefineState:
        state = RefineState(problem, deadline, self.tolerance)
        seconds: dict[str, float] = state.stats.setdefault("stage_seconds", {})
        for stage in self.stages:
            if state.finished:
                break
            if state.time_left() <= 0:
                break
            t0 = time.perf_counter()
            try:
                stage.run(state, ctx, stage.deadline(state))
            except TimeoutError:  # the stage's own share of the time is over; later stages check theirs
                state.note(f"{stage.key}: stopped at its time limit")
            except (AbsintError, MemoryError):
                raise
            except Exception as exc:  # noqa: BLE001 - a failing optional stage keeps the sound bounds so far
                log.warning("refinement stage %s failed (%s: %s)", stage.key, type(exc).__name__, exc)
                state.note(f"{stage.key} failed ({type(exc).__name__}: {exc})")
            seconds[stage.key] = time.perf_counter() - t0
        state.stats["total_s"] = time.perf_counter() - state.started
        if not state.proved and state.candidate is None and state.deadline is not None and state.time_left() <= 0:
            done = ", ".join(seconds) or "nothing"
            state.stats["timed_out"] = True
            state.notes.insert(0, f"time-out (stages run: {done})")
        return state
