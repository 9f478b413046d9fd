"""How refinement solves its LPs/MILPs: strict backend choice, time limits from the deadline, records.

:class:`SolverOptions` is the solver part of a refinement analysis' options. It is checked when
the analysis is built, so a misspelt backend is an immediate :class:`UnknownBackendError` and an
unavailable one a :class:`BackendUnavailableError` — never a run of failed solves. Nothing is
substituted silently:

* ``backend="highs"`` (or ``"scipy"``): that backend, always.
* ``backend="gurobi"``: Gurobi; a model over its size-limited pip licence raises
  :class:`LicenceLimitError` unless ``fallback=True``, which solves it with HiGHS instead.
* ``backend="auto"`` (the presets' default): Gurobi when it is usable and its licence admits the
  model (it solves the small per-neuron MILPs ~5x faster than HiGHS), else HiGHS.

Every solve is counted per backend in ``stats["solves"]`` and every fallback in
``stats["fallbacks"]``, so experiment rows show what actually ran.

Each solve's time limit is its stage's per-solve limit capped by the time left before the
deadline; solves that cannot start before the deadline are skipped (and counted in a note).
Objectives are solved cold after each objective change (for per-neuron bound tightening a cold
HiGHS solve beat a warm re-solve); warm starts pay after adding cuts or changing bounds.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from absint import registry
from absint.errors import AbsintError, OptionError
from absint.options import Options
from absint.refine.encoding import Encoding
from absint.refine.state import RefineState
from absint.solvers import SolveOptions, SolveResult, get_backend
from absint.solvers.errors import BackendUnavailableError
from absint.solvers.registry import backend_class

log = logging.getLogger(__name__)

__all__ = ["SolverOptions", "RowSolver", "LicenceLimitError", "MIN_SOLVE_SECONDS"]

#: a solve is not started with less time than this before the deadline
MIN_SOLVE_SECONDS = 0.05
#: HiGHS presolve time per constraint-matrix nonzero (measured: an LP with 1.87M nonzeros, 3.4 s at
#: load 8 on 2 cores); used only to decide when presolve cannot fit a time limit
PRESOLVE_SECONDS_PER_NONZERO = 2e-6

Objective = tuple[dict[int, float], str]


class LicenceLimitError(AbsintError):
    """Gurobi was asked for explicitly (without fallback) and a model exceeds its licence."""


@dataclass(frozen=True)
class SolverOptions(Options):
    """Which backend solves the LPs/MILPs and how many at once.

    * ``backend`` — ``"auto"``, ``"highs"``, ``"gurobi"`` or ``"scipy"`` (see the module docstring).
    * ``fallback`` — with ``backend="gurobi"``: solve models over the licence with HiGHS (recorded).
    * ``workers`` — processes for the per-neuron solves (1: in-process).
    * ``threads`` — Gurobi solves run in this many threads at once (one solver thread each).
    * ``guard`` — HiGHS solves run in a worker process that is ended when a solve overruns its time
      limit by :data:`~absint.solvers.guarded.GRACE_SECONDS` (HiGHS does not check its clock in
      presolve or MIP probing, which ran 172 s past a 1 s limit on a 1.9M-nonzero MILP); False: in
      this process (a little faster on tiny models, no limit guarantee).
    """

    backend: str = "auto"
    fallback: bool = False
    workers: int = 1
    threads: int = 1
    guard: bool = True

    def check(self) -> None:
        from absint.solvers.registry import canonical_name

        name = canonical_name(self.backend) or "auto"
        if name != "auto" and not registry.has(registry.SOLVERS, name):
            backend_class(name)  # raises UnknownBackendError naming the known backends
        object.__setattr__(self, "backend", name)
        if self.workers < 1 or self.threads < 1:
            raise OptionError(f"solver: workers and threads must be >= 1 (got {self.workers}, {self.threads})")

    def check_available(self) -> None:
        """Raise :class:`BackendUnavailableError` if the chosen backend cannot run here (and no
        fallback is allowed)."""
        if not _usable("highs") and (self.backend == "auto" or self.fallback):
            raise BackendUnavailableError(f"backend {self.backend!r} needs HiGHS (highspy), which is not usable here")
        if self.backend != "auto" and not self.fallback and not _usable(self.backend):
            raise BackendUnavailableError(f"solver backend {self.backend!r} is unavailable: {_why(self.backend)}")


def _usable(name: str) -> bool:
    try:
        return bool(backend_class(name).availability()[0])
    except AbsintError:
        return False


def _why(name: str) -> str:
    try:
        return str(backend_class(name).availability()[1])
    except AbsintError as exc:
        return str(exc)


class RowSolver:
    """Solves objectives over encodings for one run, recording backends and skipped solves in the state."""

    def __init__(self, options: SolverOptions, state: RefineState) -> None:
        self.opt = options
        self.state = state

    # -- backend choice --------------------------------------------------------------------------
    def backend_for(self, enc: Encoding) -> str:
        """The backend that solves ``enc`` (see the module docstring); records fallbacks."""
        from absint.solvers.gurobi_backend import SIZE_LIMIT, fits_licence

        b = self.opt.backend
        if b == "auto":
            return "gurobi" if _usable("gurobi") and fits_licence(enc.model) else "highs"
        if not _usable(b):  # only with fallback=True (checked when the analysis was built)
            self._fallback(b, f"{b} unavailable ({_why(b)})")
            return "highs"
        if b != "gurobi" or fits_licence(enc.model):
            return b
        why = (f"model {enc.model.name!r} has {enc.model.num_vars} variables / {enc.model.num_rows} rows, "
               f"over Gurobi's size-limited licence ({SIZE_LIMIT})")
        if not self.opt.fallback:
            raise LicenceLimitError(f"{why}; use backend='auto' or fallback=True to solve it with HiGHS")
        self._fallback(b, f"licence limit ({enc.model.name})")
        return "highs"

    def _fallback(self, backend: str, why: str) -> None:
        fb = self.state.stats.setdefault("fallbacks", {})
        key = f"{backend}->highs: {why}"
        if key not in fb:
            log.warning("solving with HiGHS instead of %s: %s", backend, why)
        fb[key] = fb.get(key, 0) + 1

    def _count(self, backend: str, n: int) -> None:
        if n:
            solves = self.state.stats.setdefault("solves", {})
            solves[backend] = solves.get(backend, 0) + n

    # -- solving ----------------------------------------------------------------------------------
    def options(self, time_limit: float, deadline: float | None, backend: str, nnz: int = 0) -> SolveOptions | None:
        """Options for one solve: ``time_limit`` capped by the time left before ``deadline`` (None when
        less than :data:`MIN_SOLVE_SECONDS` are left). One thread on Gurobi; HiGHS keeps its default
        (it refuses to change ``threads`` once its global scheduler runs, and the MIP then fails).
        HiGHS' presolve does not check the clock: it is switched off where it would likely take more
        than half the limit (:data:`PRESOLVE_SECONDS_PER_NONZERO` × ``nnz``)."""
        left = float("inf") if deadline is None else deadline - time.perf_counter()
        if backend == "highs" and self.opt.guard:  # a guarded solve may take its grace: keep it in time
            from absint.solvers.guarded import GRACE_SECONDS

            left -= GRACE_SECONDS
        if left <= MIN_SOLVE_SECONDS:
            return None
        limit = float(max(0.01, min(time_limit, left)))
        presolve = backend != "highs" or PRESOLVE_SECONDS_PER_NONZERO * nnz <= 0.5 * limit
        return SolveOptions(time_limit=limit, threads=1 if backend == "gurobi" else None, presolve=presolve)

    def solve(self, enc: Encoding, objectives: list[Objective], time_limit: float, deadline: float | None,
              what: str, *, keep: bool = False) -> list[SolveResult | None]:
        """Solve the objectives one by one (in ``workers`` processes or Gurobi ``threads`` at once),
        each within ``time_limit`` and the time left; ``None`` where skipped for the deadline.
        ``keep``: keep primal solutions (for counterexample candidates)."""
        backend = self.backend_for(enc)
        if backend == "gurobi" and self.opt.threads > 1 and len(objectives) > 1:
            out = self._threaded(enc, objectives, time_limit, deadline, keep)
        else:
            out = self._serial(enc, objectives, time_limit, deadline, keep, backend)
        done = sum(r is not None for r in out)
        for r in out:  # a backend that handed a model on by itself (never with the options used here)
            if r is not None and r.backend and r.backend != backend:
                self._fallback(backend, r.message[:80])
        self._count(backend, done)
        if done < len(objectives):
            self.state.note(f"{what}: {len(objectives) - done} solve(s) skipped, time limit reached")
        return out

    def _serial(self, enc: Encoding, objectives: list[Objective], time_limit: float, deadline: float | None,
                keep: bool, backend: str) -> list[SolveResult | None]:
        from absint.solvers.parallel import solve_objectives

        out: list[SolveResult | None] = [None] * len(objectives)
        workers = max(1, int(self.opt.workers))
        if workers > 1:
            chunk = 4 * workers
            for s0 in range(0, len(objectives), chunk):
                opts = self.options(time_limit, deadline, backend, enc.model.nnz)
                if opts is None:
                    break
                part = objectives[s0:s0 + chunk]
                for j, res in enumerate(solve_objectives(enc.model, part, backend=backend, options=opts,
                                                         workers=workers, keep_solutions=keep)):
                    out[s0 + j] = res
            return out
        if backend == "highs" and self.opt.guard:
            from absint.solvers.guarded import GuardedSession

            session: Any = GuardedSession("highs", enc.model, keep_solutions=keep)
        else:
            session = self._backend(backend).session(enc.model)
        nnz = enc.model.nnz
        try:
            for j, (c, sense) in enumerate(objectives):
                opts = self.options(time_limit, deadline, backend, nnz)
                if opts is None:
                    break
                session.set_objective(c, sense)  # cold after an objective change (see the module doc)
                res = session.solve(opts)
                out[j] = res if keep else res.without_arrays()
        finally:
            session.close()
            killed = getattr(session, "killed", 0)
            if killed:
                st = self.state.stats
                st["solves_ended_at_limit"] = st.get("solves_ended_at_limit", 0) + killed
            if hasattr(session, "worker_cpu"):
                st = self.state.stats
                st["solver_process_cpu_s"] = st.get("solver_process_cpu_s", 0.0) + session.worker_cpu
        return out

    @staticmethod
    def _backend(name: str) -> Any:
        if name == "gurobi":
            from absint.solvers.gurobi_backend import GurobiBackend

            return GurobiBackend(fallback=False)
        return get_backend(name)

    def _threaded(self, enc: Encoding, objectives: list[Objective], time_limit: float, deadline: float | None,
                  keep: bool) -> list[SolveResult | None]:
        """Gurobi solves in ``threads`` threads (gurobipy releases the GIL while optimising; each
        thread has its own environment), in order, each within the time left."""
        from concurrent.futures import ThreadPoolExecutor

        from absint.solvers.gurobi_backend import GurobiBackend

        out: list[SolveResult | None] = [None] * len(objectives)
        _ = enc.model.A  # assemble the shared constraint matrix once, before the threads read it

        def one(j: int) -> None:
            opts = self.options(time_limit, deadline, "gurobi")
            if opts is None:
                return
            c, sense = objectives[j]
            res = GurobiBackend(fallback=False).solve(enc.model.with_objective(c, sense), opts)
            out[j] = res if keep else res.without_arrays()

        with ThreadPoolExecutor(max_workers=int(self.opt.threads)) as pool:
            list(pool.map(one, range(len(objectives))))
        return out
