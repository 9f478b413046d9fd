"""Many independent objectives over one model — per-neuron bound tightening.

:func:`solve_objectives` solves ``[(c_k, sense_k), ...]`` over the same
constraints, serially in-process (``workers=1``, default) or in a
``ProcessPoolExecutor`` whose workers each build the model once and use one
solver thread.  Every objective is solved *cold* by default: on the
project's per-neuron tightening LPs a cold HiGHS solve beat a warm re-solve
after an objective change (on loosely coupled random LPs warm re-solves can
win instead; pass ``warm_objectives=True`` to try).  Warm re-solves after
adding cuts or changing bounds are available in-process via
``backend.session(model)``.

:func:`objective_bounds` returns just the proved bounds, :func:`tighten_bounds`
minimises and maximises variables to get proved lower/upper bounds.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from typing import Iterable, Sequence

import numpy as np
import numpy.typing as npt

from absint.errors import InvariantError

from .base import Backend, Session, SolveOptions, SolveResult
from .errors import LinearModelError
from .model import LinearModel, ObjectiveLike, Sense, as_dense_objective
from .registry import get_backend

__all__ = ["solve_objectives", "objective_bounds", "tighten_bounds"]

logger = logging.getLogger(__name__)

# sparse objective: (indices, values, sense)
_SparseObj = tuple[np.ndarray, np.ndarray, Sense]
_WORKER: Session | None = None


def _to_sparse(c: ObjectiveLike, sense: Sense | str, n: int) -> _SparseObj:
    dense = as_dense_objective(c, n) if not isinstance(c, (int, np.integer)) else None
    if dense is None:  # a bare variable index means "optimise x_j"
        if not 0 <= int(c) < n:
            raise LinearModelError(f"variable index {c} out of range [0, {n})")
        return np.array([int(c)]), np.array([1.0]), Sense.parse(sense)
    idx = np.flatnonzero(dense)
    return idx, dense[idx], Sense.parse(sense)


def _resolve_backend(backend: Backend | str | None) -> Backend:
    return backend if isinstance(backend, Backend) else get_backend(backend)


def _solve_one(session: Session, obj: _SparseObj, keep_solutions: bool, warm: bool) -> SolveResult:
    idx, val, sense = obj
    c = np.zeros(session.model.num_vars)
    c[idx] = val
    session.set_objective(c, sense, warm=warm)  # cold by default: see module docstring
    res = session.solve()
    return res if keep_solutions else res.without_arrays()


def _init_worker(model: LinearModel, backend: Backend, options: SolveOptions) -> None:
    global _WORKER
    _WORKER = backend.session(model, options)


def _solve_chunk(
    chunk: list[tuple[int, _SparseObj]], keep: bool, warm: bool
) -> list[tuple[int, SolveResult]]:
    if _WORKER is None:
        raise InvariantError("solver worker process used before its initialiser ran")
    return [(k, _solve_one(_WORKER, obj, keep, warm)) for k, obj in chunk]


def solve_objectives(
    model: LinearModel,
    objectives: Iterable[tuple[ObjectiveLike | int, Sense | str]],
    *,
    backend: Backend | str | None = None,
    options: SolveOptions | None = None,
    workers: int = 1,
    chunksize: int | None = None,
    keep_solutions: bool = False,
    warm_objectives: bool = False,
    mp_context: str = "spawn",
) -> list[SolveResult]:
    """Solve each ``(objective, sense)`` over ``model``'s constraints; results in input order.

    ``objective`` is a dense/sparse vector, a ``{index: coef}`` mapping or a bare
    variable index.  ``workers > 1`` uses that many processes (one solver
    thread each; ``mp_context`` defaults to ``"spawn"`` because forking a
    process with live solver thread pools is unsafe — callers' scripts need the
    usual ``if __name__ == "__main__":`` guard).  ``keep_solutions=False``
    drops ``x`` and duals from the results.  ``warm_objectives=True`` keeps
    the basis between consecutive objectives of one worker (off by default:
    for per-neuron tightening cold solves were measured faster; on loosely
    coupled random LPs warm can win — measure before switching).
    """
    n = model.num_vars
    objs = [_to_sparse(c, s, n) for c, s in objectives]
    if not objs:
        return []
    be = _resolve_backend(backend)
    opts = options or SolveOptions()
    workers = max(1, min(int(workers), len(objs)))
    if workers == 1:
        session = be.session(model, opts)
        try:
            return [_solve_one(session, o, keep_solutions, warm_objectives) for o in objs]
        finally:
            session.close()

    size = chunksize or max(1, math.ceil(len(objs) / (4 * workers)))
    items = list(enumerate(objs))
    chunks = [items[i : i + size] for i in range(0, len(items), size)]
    results: list[SolveResult | None] = [None] * len(objs)
    ctx = multiprocessing.get_context(mp_context)
    logger.debug("solving %d objectives in %d chunks on %d workers", len(objs), len(chunks), workers)
    with ProcessPoolExecutor(
        max_workers=workers, mp_context=ctx, initializer=_init_worker,
        initargs=(model, be, opts.replace(threads=1)),
    ) as pool:
        nch = len(chunks)
        for part in pool.map(_solve_chunk, chunks, [keep_solutions] * nch, [warm_objectives] * nch):
            for k, res in part:
                results[k] = res
    return results  # type: ignore[return-value]


def _bound_or_inf(res: SolveResult) -> float:
    """Proved bound, or the trivial ∓inf when nothing was proved."""
    if res.proved_bound is not None:
        return float(res.proved_bound)
    return -math.inf if res.sense is Sense.MINIMIZE else math.inf


def objective_bounds(
    model: LinearModel,
    objectives: Sequence[tuple[ObjectiveLike | int, Sense | str]],
    **kwargs: object,
) -> np.ndarray:
    """Proved bound per objective: lower bound for ``min``, upper for ``max``.

    Entries are ``-inf`` (min) / ``+inf`` (max) where nothing was proved.
    Keyword arguments go to :func:`solve_objectives`.
    """
    results = solve_objectives(model, objectives, **kwargs)  # type: ignore[arg-type]
    return np.array([_bound_or_inf(r) for r in results], dtype=np.float64)


def tighten_bounds(
    model: LinearModel,
    var_indices: npt.ArrayLike | None = None,
    *,
    objectives: Sequence[ObjectiveLike] | None = None,
    **kwargs: object,
) -> tuple[np.ndarray, np.ndarray]:
    """Proved ``(lower, upper)`` bounds of variables (or of linear expressions).

    By default bounds every variable in ``var_indices`` (all if None) and
    intersects the result with the variable's current bounds.  With
    ``objectives`` (vectors ``c_k``) it bounds ``c_k·x`` instead (no
    intersection).  If the model is infeasible nothing is proved and the
    current bounds (or ``∓inf``) are returned.
    """
    if objectives is None:
        idx = np.arange(model.num_vars) if var_indices is None else np.atleast_1d(
            np.asarray(var_indices, dtype=np.int64)
        )
        exprs: list[ObjectiveLike | int] = [int(j) for j in idx]
    else:
        exprs = list(objectives)
    specs = [(e, Sense.MINIMIZE) for e in exprs] + [(e, Sense.MAXIMIZE) for e in exprs]
    b = objective_bounds(model, specs, **kwargs)
    lower, upper = b[: len(exprs)], b[len(exprs) :]
    if objectives is None:
        lower = np.maximum(lower, model.lb[idx])
        upper = np.minimum(upper, model.ub[idx])
    return lower, upper
