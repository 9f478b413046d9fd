"""Strict backend and domain choice, recorded fallbacks, and time limits of the refinement analyses.

No wall-clock assertions: limits are checked through what a run records (solves started, notes),
with deadlines that are already past or generous.
"""
from __future__ import annotations

import time

import numpy as np
import pytest
import torch

import absint
from absint.analyses import get_analysis
from absint.errors import AbsintError
from absint.refine import LicenceLimitError, run_preset
from absint.errors import UnknownDomainError
from absint.refine.solving import RowSolver, SolverOptions
from absint.refine.state import Problem, RefineState
from absint.solvers import BackendUnavailableError, UnknownBackendError
from absint.testing import random_mlp

HAS_GUROBI = absint.solvers.available_backends()["gurobi"][0]


def _box(n, r=0.5):
    return -r * torch.ones(1, n, dtype=torch.float64), r * torch.ones(1, n, dtype=torch.float64)


def test_unknown_backend_and_domain_are_immediate_errors():
    with pytest.raises(UnknownBackendError, match="nosuch"):
        get_analysis("refinepoly", backend="nosuch")
    with pytest.raises(UnknownDomainError, match="nosuch"):
        get_analysis("refinepoly", domain="nosuch")
    assert issubclass(UnknownBackendError, AbsintError)


def test_unavailable_backend_is_an_error_unless_fallback_allowed(monkeypatch):
    from absint.solvers.gurobi_backend import GurobiBackend

    monkeypatch.setattr(GurobiBackend, "availability", classmethod(lambda cls: (False, "not here (test)")))
    with pytest.raises(BackendUnavailableError, match="gurobi"):
        get_analysis("lp", backend="gurobi")
    g = random_mlp(1, (4, 8, 3))
    C, d = np.array([[1.0, -1.0, 0.0]]), np.array([-50.0])  # false everywhere: the final LP runs
    st = run_preset(g, *_box(4), C, d, "lp", backend="gurobi", fallback=True)
    assert st.stats["solves"] == {"highs": 1}
    assert any("unavailable" in k for k in st.stats["fallbacks"])  # recorded, not silent


@pytest.mark.skipif(not HAS_GUROBI, reason="gurobipy not importable")
def test_gurobi_over_licence_is_an_error_unless_fallback_allowed():
    from absint.solvers.gurobi_backend import licence_info

    if not licence_info()[1]:
        pytest.skip("full Gurobi licence")
    g = random_mlp(2, (1500, 300, 10))  # the final LP has > 2000 variables
    C, d = np.eye(10)[:1] - np.eye(10)[1:2], np.array([-100.0])
    with pytest.raises(LicenceLimitError, match="licence"):
        run_preset(g, *_box(1500, 0.01), C, d, "lp", backend="gurobi")
    st = run_preset(g, *_box(1500, 0.01), C, d, "lp", backend="gurobi", fallback=True)
    assert st.stats["solves"] == {"highs": 1} and st.stats["fallbacks"]
    auto = run_preset(g, *_box(1500, 0.01), C, d, "lp")  # the default "auto": size decides, no fallback entry
    assert auto.stats["solves"] == {"highs": 1} and "fallbacks" not in auto.stats


def test_solve_time_limit_capped_by_deadline_and_skipped_when_past():
    g = random_mlp(3, (4, 8, 3))
    problem = Problem(g, *_box(4), np.eye(3)[:1], np.zeros(1))
    state = RefineState(problem)
    solver = RowSolver(SolverOptions(backend="highs"), state)
    opts = solver.options(100.0, time.perf_counter() + 5.0, "highs")  # minus the guard's grace
    assert opts is not None and opts.time_limit <= 5.0
    assert solver.options(100.0, time.perf_counter() - 1.0, "highs") is None
    assert solver.options(0.5, None, "highs").time_limit == 0.5


def test_past_deadline_runs_no_stage_and_says_time_out():
    g = random_mlp(4, (4, 10, 10, 3))
    C, d = np.array([[1.0, -1.0, 0.0]]), np.array([-50.0])
    st = run_preset(g, *_box(4), C, d, "refinepoly", deadline=time.perf_counter() - 1.0)
    assert st.notes[0].startswith("time-out") and st.stats["timed_out"]
    assert "solves" not in st.stats and not st.stats["stage_seconds"]


def test_deadline_cuts_tightening_without_losing_soundness(monkeypatch):
    """Solves stop at the deadline (counted in a note) and the bounds stay sound. The solver sees a
    clock that advances 1 s per reading (deterministic under any load) and a deadline 12 s away."""
    import types

    from absint.refine import solving

    g = random_mlp(5, (5, 10, 10, 3))
    lo, hi = _box(5, 1.0)
    C, d = np.array([[1.0, -1.0, 0.0]]), np.array([0.0])
    full = run_preset(g, lo, hi, C, d, "refinezono", backend="highs", n_milp_refine=0)
    n_full = sum(full.stats["solves"].values())
    assert n_full > 12
    t0 = time.perf_counter()
    ticks = iter(range(10**6))
    monkeypatch.setattr(solving, "time", types.SimpleNamespace(perf_counter=lambda: t0 + next(ticks)))
    st = run_preset(g, lo, hi, C, d, "refinezono", backend="highs", n_milp_refine=0, deadline=t0 + 12.0)
    assert 0 < sum(st.stats.get("solves", {}).values()) <= 12
    assert any("skipped, time limit reached" in n for n in st.notes)
    x = lo + (hi - lo) * torch.rand(20000, 5, dtype=torch.float64)
    with torch.no_grad():
        vals = (g.forward(x).numpy() @ C.T + d).min(0)
    assert np.all(st.rows <= vals + 1e-8) and np.all(full.rows <= vals + 1e-8)


def test_guarded_solve_ends_with_its_process_when_it_overruns():
    """A worker that does not answer (it sleeps 60 s) is ended at limit + grace; the next solve
    starts a new worker and gets its optimum. No wall-clock assertion: only outcomes are checked."""
    from absint.solvers import LinearModel, SolveOptions, Status
    from absint.solvers import guarded

    m = LinearModel()
    m.add_vars([0.0, 0.0], [1.0, 1.0])
    m.add_constraints([[1.0, 1.0]], hi=1.5)
    m.set_objective([1.0, 2.0], "max")
    s = guarded.GuardedSession("highs", m, grace=0.2)
    assert s.solve(SolveOptions(time_limit=30)).objective == pytest.approx(2.5)
    guarded._worker().conn.send(("sleep", 60.0))
    stuck = s.solve(SolveOptions(time_limit=0.1))
    assert stuck.status is Status.TIME_LIMIT and stuck.proved_bound is None and s.killed == 1
    again = s.solve(SolveOptions(time_limit=30))
    assert again.status is Status.OPTIMAL and again.proved_bound >= 2.5 - 1e-12
    s.close()
