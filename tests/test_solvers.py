"""Tests for the backend-neutral LP/MILP layer in ``solvers/`` (fast: a few seconds)."""

from __future__ import annotations

import logging
import math
import pickle

import numpy as np
import pytest
import scipy.optimize as so
import scipy.sparse as sp

import absint.solvers  # noqa: E402
from absint.solvers import (  # noqa: E402
    LinearModel,
    LinearModelError,
    Sense,
    SolveOptions,
    Status,
    UnknownBackendError,
    available_backends,
    get_backend,
)
from absint.solvers.parallel import objective_bounds, solve_objectives, tighten_bounds  # noqa: E402
from absint.solvers.safe_bound import safe_lp_lower_bound  # noqa: E402

AVAIL = available_backends()
BACKENDS = [
    pytest.param(name, marks=pytest.mark.skipif(not AVAIL[name][0], reason=AVAIL[name][1]))
    for name in ("highs", "gurobi", "scipy")
]
HAS_GUROBI = AVAIL["gurobi"][0]
AVAIL_DEFAULT = "highs" if AVAIL["highs"][0] else "scipy"


# ----------------------------------------------------------------- helpers
def random_lp(
    rng: np.random.Generator, n: int, m: int, sense: str = "min", integer: object = False
) -> LinearModel:
    """Feasible random LP/MILP with one-/two-sided/equality/free rows and a finite box."""
    A = sp.random(m, n, density=0.3, random_state=int(rng.integers(1 << 30)), format="csr")
    x0 = rng.uniform(-1, 1, n)
    x0 = np.where(np.broadcast_to(np.asarray(integer, dtype=bool), n), np.round(x0), x0)
    ax = A @ x0  # x0 is feasible
    lo = np.where(rng.random(m) < 0.3, -np.inf, ax - rng.uniform(0, 1, m))
    hi = np.where(rng.random(m) < 0.3, np.inf, ax + rng.uniform(0, 1, m))
    eq = rng.random(m) < 0.1
    lo[eq] = hi[eq] = ax[eq]
    lb, ub = -rng.uniform(1, 3, n), rng.uniform(1, 3, n)
    if integer is not False:
        lb, ub = np.floor(lb), np.ceil(ub)
    return LinearModel.from_arrays(
        rng.normal(size=n), A, lo, hi, lb, ub, sense=sense, integer=integer
    )


def scipy_reference(model: LinearModel) -> float:
    """Optimum computed independently with scipy (linprog / milp with zero gap)."""
    sign = model.sense.sign
    if model.is_mip:
        res = so.milp(
            sign * model.objective,
            integrality=model.integrality.astype(int),
            bounds=so.Bounds(model.lb, model.ub),
            constraints=so.LinearConstraint(model.A, model.row_lo, model.row_hi),
            options={"mip_rel_gap": 0.0},
        )
    else:
        A, lo, hi = model.A, model.row_lo, model.row_hi
        A_ub = sp.vstack([A[np.isfinite(hi)], -A[np.isfinite(lo)]])
        b_ub = np.concatenate([hi[np.isfinite(hi)], -lo[np.isfinite(lo)]])
        res = so.linprog(
            sign * model.objective, A_ub=A_ub, b_ub=b_ub,
            bounds=np.column_stack([model.lb, model.ub]), method="highs",
        )
    assert res.status == 0, res.message
    return sign * res.fun + model.offset


def assert_sound(model: LinearModel, proved: float | None, opt: float, tol: float = 1e-9) -> None:
    """proved <= opt for min, proved >= opt for max (None proves nothing).

    ``tol`` absorbs the inexactness of a floating-point *reference* optimum;
    use ``tol=0`` with exactly known optima (:func:`kkt_lp`).
    """
    if proved is None:
        return
    if model.sense is Sense.MINIMIZE:
        assert proved <= opt + tol, (proved, opt)
    else:
        assert proved >= opt - tol, (proved, opt)


def kkt_lp(
    rng: np.random.Generator, n: int, m: int, sense: str, free_frac: float = 0.0
) -> tuple[LinearModel, float]:
    """LP with an exactly known optimum, built from an integer primal-dual KKT pair.

    All data are small integers, so ``c·x*`` is exact in float64.
    """
    A = rng.integers(-3, 4, (m, n)) * (rng.random((m, n)) < 0.5)
    cat = rng.integers(0, 3, n)  # 0: at lower (d>0), 1: at upper (d<0), 2: interior (d=0)
    lb, ub = -rng.integers(1, 4, n).astype(float), rng.integers(1, 4, n).astype(float)
    x = np.where(cat == 0, lb, np.where(cat == 1, ub, 0.0))
    d = np.where(cat == 0, rng.integers(1, 4, n), np.where(cat == 1, -rng.integers(1, 4, n), 0))
    free = (cat == 2) & (rng.random(n) < free_frac)
    lb[free], ub[free] = -np.inf, np.where(rng.random(free.sum()) < 0.5, np.inf, ub[free])
    ax = (A @ x).astype(float)
    rcat = rng.integers(0, 4, m)  # 0: active lo (y>0), 1: active hi (y<0), 2: equality, 3: slack
    y = np.where(rcat == 0, rng.integers(1, 4, m), np.where(rcat == 1, -rng.integers(1, 4, m), 0))
    y = np.where(rcat == 2, rng.integers(-3, 4, m), y)
    lo = np.where(rcat == 1, -np.inf, np.where(rcat == 3, ax - rng.integers(1, 3, m), ax))
    hi = np.where(rcat == 0, np.inf, np.where(rcat == 3, ax + rng.integers(1, 3, m), ax))
    c = (A.T @ y + d).astype(float)
    opt = float(c @ x)
    if sense == "max":
        c, opt = -c, -opt
    return LinearModel.from_arrays(c, sp.csr_matrix(A.astype(float)), lo, hi, lb, ub, sense=sense), opt


def knapsack(rng: np.random.Generator, n: int = 40) -> LinearModel:
    w = rng.integers(20, 100, (5, n)).astype(float)
    v = rng.integers(20, 100, n).astype(float)
    return LinearModel.from_arrays(v, w, -np.inf, w.sum(1) / 2, 0, 1, integer=True, sense="max")


# ------------------------------------------------------------------ model
def test_model_blocks_copy_and_edits() -> None:
    m = LinearModel("t")
    x = m.add_vars([-1, -1], [1, 1], name="x")
    z = m.add_binary_vars(3, name="z")
    assert list(x) == [0, 1] and list(z) == [2, 3, 4] and m.num_integer == 3 and m.is_mip
    r0 = m.add_constraints([[1.0, 2.0]], lo=-np.inf, hi=1.0)  # refers to leading columns
    r1 = m.add_constraints(sp.csr_matrix([[1.0, -1.0]]), lo=0.0, hi=0.0, cols=[4, 0], name="eq")
    assert m.A.shape == (2, 5) and m.A[1, 4] == 1.0 and m.A[1, 0] == -1.0
    assert list(m.row_block("eq")) == list(r1) and list(r0) == [0]
    m.set_objective({0: 1.0, 3: -2.0}, "max", offset=1.5)
    assert m.sense is Sense.MAXIMIZE and m.objective[3] == -2.0 and m.offset == 1.5

    c = m.copy()
    c.set_var_bounds([0], lb=0.0)
    c.add_cuts([[1.0, 1.0, 1.0]], lo=-np.inf, hi=2.0)
    c.set_objective([1.0])
    assert m.lb[0] == -1 and m.num_rows == 2 and m.sense is Sense.MAXIMIZE
    assert c.lb[0] == 0 and c.num_rows == 3 and list(c.row_block("cuts")) == [2]
    assert m.relaxed().num_integer == 0 and m.num_integer == 3
    m2 = pickle.loads(pickle.dumps(m))
    assert (m2.A != m.A).nnz == 0 and m2.sense is m.sense
    with pytest.raises(ValueError):
        m.lb[0] = 5.0  # read-only views


def test_model_validation_errors() -> None:
    m = LinearModel()
    m.add_vars(0, 1, size=3)
    with pytest.raises(LinearModelError):
        m.add_vars([1.0], [0.0])
    with pytest.raises(LinearModelError):
        m.add_constraints(np.ones((1, 4)), 0, 1)  # too many columns
    with pytest.raises(LinearModelError):
        m.add_constraints([[np.nan, 1, 1]], 0, 1)
    with pytest.raises(LinearModelError):
        m.set_var_bounds([5], lb=0)
    with pytest.raises(LinearModelError):
        m.set_objective([1.0], sense="sideways")
    m.validate()


def test_registry() -> None:
    assert set(AVAIL) == {"highs", "gurobi", "scipy"}
    for ok, reason in AVAIL.values():
        assert isinstance(ok, bool) and reason
    assert get_backend().name == ("highs" if AVAIL["highs"][0] else "scipy")
    with pytest.raises(UnknownBackendError):
        get_backend("cplex")
    if HAS_GUROBI:
        assert get_backend("gurobi").name == "gurobi"
        assert "2000" in AVAIL["gurobi"][1] or "full" in AVAIL["gurobi"][1]


# --------------------------------------------------------- correctness / soundness
@pytest.mark.parametrize("backend", BACKENDS)
def test_random_lps_match_scipy_and_bound_is_sound(backend: str) -> None:
    rng = np.random.default_rng(0)
    be = get_backend(backend)
    for k in range(12):
        model = random_lp(rng, int(rng.integers(2, 30)), int(rng.integers(1, 25)),
                          "min" if k % 2 else "max")
        model.set_objective(model.objective, model.sense, offset=0.25)
        opt = scipy_reference(model)
        res = be.solve(model)
        assert res.status is Status.OPTIMAL and res.backend == backend
        assert res.objective == pytest.approx(opt, abs=1e-7)
        assert model.max_violation(res.x) < 1e-6
        assert res.proved_bound is not None
        assert_sound(model, res.proved_bound, opt)
        assert abs(res.proved_bound - opt) < 1e-6


@pytest.mark.parametrize("backend", BACKENDS)
def test_small_milps_match_scipy(backend: str) -> None:
    rng = np.random.default_rng(1)
    be = get_backend(backend)
    opts = SolveOptions(mip_rel_gap=1e-9, mip_abs_gap=1e-9)
    for k in range(6):
        n = int(rng.integers(3, 12))
        model = random_lp(rng, n, int(rng.integers(1, 8)), "min" if k % 2 else "max",
                          integer=rng.random(n) < 0.6)
        model.set_objective(model.objective, model.sense, offset=-3.5)
        opt = scipy_reference(model)
        res = be.solve(model, opts)
        assert res.status is Status.OPTIMAL and res.is_mip
        assert res.objective == pytest.approx(opt, abs=1e-6)
        assert model.max_violation(res.x) < 1e-6
        assert_sound(model, res.proved_bound, opt)
        assert abs(res.proved_bound - opt) < 1e-5
        relaxed = be.solve(model, opts.replace(relax_integrality=True))
        assert not relaxed.is_mip
        assert_sound(model, relaxed.proved_bound, opt)  # LP relaxation bounds the MILP


@pytest.mark.parametrize("backend", BACKENDS)
def test_proved_bound_exact_optimum(backend: str) -> None:
    """Against exactly known optima: the proved bound is never on the wrong side (no tolerance)."""
    rng = np.random.default_rng(10)
    be = get_backend(backend)
    for k in range(12):
        sense = "min" if k % 2 else "max"
        model, opt = kkt_lp(rng, int(rng.integers(2, 25)), int(rng.integers(1, 20)), sense)
        res = be.solve(model)
        assert res.status is Status.OPTIMAL
        assert res.proved_bound is not None
        assert_sound(model, res.proved_bound, opt, tol=0.0)
        assert abs(res.proved_bound - opt) < 1e-6
        # some variables unbounded: the bound may be unprovable, but never wrong
        model, opt = kkt_lp(rng, int(rng.integers(2, 25)), int(rng.integers(1, 20)), sense, 0.5)
        res = be.solve(model)
        assert res.status is Status.OPTIMAL
        assert_sound(model, res.proved_bound, opt, tol=0.0)


def test_safe_bound_valid_for_any_multipliers() -> None:
    """The Neumaier–Shcherbina bound needs no trust in y: random / perturbed y stay sound."""
    rng = np.random.default_rng(2)
    for _ in range(20):
        model = random_lp(rng, 15, 10)
        opt = scipy_reference(model)
        y_opt = get_backend().solve(model).row_duals
        for y in (None, rng.normal(size=10), y_opt * (1 + 1e-3 * rng.normal(size=10)),
                  y_opt + 1e-9):
            b = safe_lp_lower_bound(model.A, model.row_lo, model.row_hi, model.lb, model.ub,
                                    model.objective, y, model.offset)
            assert b <= opt


def test_safe_bound_infinite_bounds() -> None:
    # min x0 - x1  s.t.  x0 + x1 >= 1, x0 in [0, inf), x1 in [0, 2]  (optimum -2)
    A = sp.csr_matrix([[1.0, 1.0]])
    args = (A, np.array([1.0]), np.array([np.inf]), np.array([0.0, 0.0]), np.array([np.inf, 2.0]))
    c = np.array([1.0, -1.0])
    assert safe_lp_lower_bound(*args, c, np.array([0.0])) == pytest.approx(-2.0)
    # residual c0 - y = -1 < 0 on a variable with u = inf and no implied bound: nothing proved
    assert safe_lp_lower_bound(*args, c, np.array([2.0])) == -math.inf
    # x >= 0 standard-form LP: basic columns with infinite upper bounds are still provable
    rng = np.random.default_rng(3)
    A = rng.uniform(0.1, 1, (8, 12))
    model = LinearModel.from_arrays(rng.uniform(0.1, 1, 12), A, A.sum(1), np.inf, 0, np.inf)
    res = get_backend().solve(model)
    opt = scipy_reference(model)
    assert res.proved_bound is not None and opt - 1e-6 < res.proved_bound <= opt


@pytest.mark.parametrize("backend", BACKENDS)
def test_infeasible_and_unbounded(backend: str) -> None:
    be = get_backend(backend)
    inf = LinearModel.from_arrays([1.0, 1.0], [[1.0, 1.0]], 3.0, np.inf, 0, 1)
    res = be.solve(inf)
    assert res.status in (Status.INFEASIBLE, Status.INFEASIBLE_OR_UNBOUNDED)
    assert res.proved_bound is None and res.x is None
    unb = LinearModel.from_arrays([-1.0, 0.0], [[1.0, -1.0]], -np.inf, 1.0, 0, np.inf)
    res = be.solve(unb)
    assert res.status in (Status.UNBOUNDED, Status.INFEASIBLE_OR_UNBOUNDED)
    assert res.proved_bound is None
    mip_inf = inf.copy()
    mip_inf.set_integrality([0, 1], True)
    assert be.solve(mip_inf).status in (Status.INFEASIBLE, Status.INFEASIBLE_OR_UNBOUNDED)


# ------------------------------------------------------------------ limits
@pytest.mark.parametrize("backend", BACKENDS)
def test_iteration_and_time_limits_never_overclaim(backend: str) -> None:
    rng = np.random.default_rng(4)
    be = get_backend(backend)
    model = random_lp(rng, 120, 80)
    opt = scipy_reference(model)
    seen_limit = False
    for it in (0, 1, 5, 20):
        res = be.solve(model, SolveOptions(iteration_limit=it, presolve=False))
        assert res.status in (Status.ITERATION_LIMIT, Status.OPTIMAL)
        seen_limit |= res.status is Status.ITERATION_LIMIT
        assert_sound(model, res.proved_bound, opt)
    assert seen_limit
    res = be.solve(model, SolveOptions(time_limit=0.0))
    assert res.status in (Status.TIME_LIMIT, Status.OPTIMAL)
    assert_sound(model, res.proved_bound, opt)

    ks = knapsack(rng)
    kopt = scipy_reference(ks)
    res = be.solve(ks, SolveOptions(time_limit=0.0))
    assert res.status is Status.TIME_LIMIT
    assert_sound(ks, res.proved_bound, kopt)
    for opts in (SolveOptions(time_limit=0.05), SolveOptions(node_limit=1)):
        res = be.solve(ks, opts)
        assert res.status in (Status.TIME_LIMIT, Status.ITERATION_LIMIT, Status.OPTIMAL)
        assert_sound(ks, res.proved_bound, kopt)
        if res.proved_bound is None:
            assert res.status is not Status.OPTIMAL


# ------------------------------------------------------------ gurobi licence
def test_gurobi_licence_strict_by_default_fallback_when_asked(caplog: pytest.LogCaptureFixture) -> None:
    if not HAS_GUROBI:
        pytest.skip("gurobipy not importable: licence-specific assertions skipped")
    from absint.solvers import gurobi_backend

    _, limited, _ = gurobi_backend.licence_info()
    if not limited:
        pytest.skip("full Gurobi licence: no fallback expected")
    rng = np.random.default_rng(5)
    n = 2500
    A = sp.random(30, n, density=0.05, random_state=5, format="csr")
    x0 = rng.uniform(-1, 1, n)
    model = LinearModel.from_arrays(rng.normal(size=n), A, A @ x0 - 1, A @ x0 + 1, -1, 1)
    assert not gurobi_backend.fits_licence(model)
    strict = get_backend("gurobi").solve(model)  # no silent substitution
    assert strict.status is Status.LICENSE_LIMIT and strict.proved_bound is None and strict.backend == "gurobi"
    ref = get_backend("highs").solve(model)
    gurobi_backend._notice_logged = False  # make the once-per-process notice observable
    with caplog.at_level(logging.WARNING, logger="absint.solvers"):
        res1 = gurobi_backend.GurobiBackend(fallback=True).solve(model)
        res2 = gurobi_backend.GurobiBackend(fallback=True).solve(model)
    for res in (res1, res2):  # the fallback is visible in the result
        assert res.status is Status.OPTIMAL and res.backend == "highs" and "licence" in res.message.lower()
        assert res.objective == pytest.approx(ref.objective, abs=1e-7)
        assert res.proved_bound is not None and res.proved_bound <= ref.objective + 1e-9
    notices = [r for r in caplog.records if "size-limited" in r.getMessage()]
    assert len(notices) == 1  # logged once per process


# ------------------------------------------------------- sessions / parallel
def test_session_warm_resolve_after_cuts_and_bounds() -> None:
    rng = np.random.default_rng(6)
    model = random_lp(rng, 40, 30)
    be = get_backend()
    with be.session(model) as s:
        first = s.solve()
        cut = rng.normal(size=(3, 40))
        s.add_cuts(cut, -np.inf, cut @ first.x - 0.05)  # cut off the current optimum
        warm = s.solve()
        s.set_var_bounds([0, 1], -0.5, 0.5)
        warm2 = s.solve()
        s.set_objective(np.ones(40), "max")
        cold = s.solve()
    ref = model.copy()
    ref.add_cuts(cut, -np.inf, cut @ first.x - 0.05)
    for got, edit in ((warm, None), (warm2, ([0, 1], -0.5, 0.5)), (cold, "obj")):
        if edit == "obj":
            ref.set_objective(np.ones(40), "max")
        elif edit is not None:
            ref.set_var_bounds(*edit)
        if got.status is Status.INFEASIBLE:
            assert be.solve(ref).status is Status.INFEASIBLE
            continue
        opt = scipy_reference(ref)
        assert got.objective == pytest.approx(opt, abs=1e-7)
        assert_sound(ref, got.proved_bound, opt)


def test_session_limits_are_per_solve() -> None:
    """HiGHS counts time on the instance; the session must apply limits per solve."""
    rng = np.random.default_rng(8)
    model = random_lp(rng, 60, 40)
    limit = 0.05
    with get_backend().session(model, SolveOptions(time_limit=limit, iteration_limit=300)) as s:
        results = []
        for j in range(60):  # cumulatively beyond the time and iteration limits
            s.set_objective({j: 1.0}, "max")
            results.append(s.solve())
    assert sum(r.iterations for r in results) > 300
    assert sum(r.runtime for r in results) > limit
    assert all(r.status is Status.OPTIMAL for r in results)


def test_backend_fallbacks(monkeypatch: pytest.MonkeyPatch) -> None:
    from absint.solvers.gurobi_backend import GurobiBackend
    from absint.solvers.highs_backend import HighsBackend

    monkeypatch.setattr(GurobiBackend, "availability", classmethod(lambda cls: (False, "test")))
    with pytest.raises(absint.solvers.BackendUnavailableError, match="gurobi"):
        get_backend("gurobi")  # strict by default
    assert get_backend("gurobi", fallback=True).name == AVAIL_DEFAULT  # only when asked for
    monkeypatch.setattr(HighsBackend, "availability", classmethod(lambda cls: (False, "test")))
    assert get_backend().name == "scipy"


def test_parallel_equals_serial() -> None:
    rng = np.random.default_rng(7)
    model = random_lp(rng, 30, 20)
    objs = [(int(j), s) for j in range(10) for s in ("min", "max")]
    objs.append((rng.normal(size=30), "max"))
    serial = solve_objectives(model, objs, workers=1)
    par = solve_objectives(model, objs, workers=2, chunksize=3)
    assert [r.status for r in serial] == [r.status for r in par]
    np.testing.assert_allclose([r.proved_bound for r in serial],
                               [r.proved_bound for r in par], rtol=0, atol=1e-9)
    assert all(r.x is None for r in par)
    lo, hi = tighten_bounds(model, np.arange(10))
    assert np.all(lo >= model.lb[:10]) and np.all(hi <= model.ub[:10]) and np.all(lo <= hi)
    np.testing.assert_allclose(lo, [r.proved_bound for r in serial[0:20:2]], atol=1e-9)
    for j in range(10):  # every bound is sound w.r.t. the true optimum
        assert lo[j] <= scipy_reference(model.with_objective({j: 1.0}, "min"))
    b = objective_bounds(model, [(0, "min"), (0, "max")])
    assert b[0] <= b[1]


def test_top_level_solve_convenience() -> None:
    m = LinearModel()
    m.add_vars([0, 0], [1, 1])
    m.add_constraints([[1.0, 1.0]], hi=1.5)
    m.set_objective([1.0, 2.0], "max")
    res = absint.solvers.solve(m)
    assert res.status is Status.OPTIMAL and res.objective == pytest.approx(2.5)
    assert 2.5 <= res.proved_bound < 2.5 + 1e-9


def test_known_bounds_certify_free_variables_without_reaching_the_solver() -> None:
    """min x0 s.t. x0 - x1 = 0, x1 in [0, 1], x0 free: known bounds of x0 make the certified bound
    use them (no implied-bound search needed), the solver model stays unchanged, and the bound is
    sound for every point satisfying the rows and the known bounds."""
    from absint.solvers.safe_bound import lp_proved_bound

    m = LinearModel()
    m.add_vars([-np.inf, 0.0], [np.inf, 1.0])
    m.add_constraints([[1.0, -1.0]], 0.0, 0.0)
    m.set_objective([1.0, 0.0], "min")
    m.set_known_bounds([0], -0.5, 2.0)
    assert np.isinf(m.lb[0]) and m.known_bounds[0][0] == -0.5
    copy = m.copy()
    copy.add_vars([0.0], [1.0])  # the known bounds follow new variables
    assert copy.known_bounds[0].shape == (3,)
    y = np.array([1.0])  # exact dual of the row: the bound is the optimum 0
    assert lp_proved_bound(m, y) == pytest.approx(0.0, abs=1e-9) and lp_proved_bound(m, y) <= 0.0
    assert lp_proved_bound(m, np.zeros(1)) == pytest.approx(-0.5)  # y = 0: the known box bound
    res = get_backend().solve(m)
    assert res.proved_bound is not None and res.proved_bound <= 0.0 + 1e-12


# -- MILP bounds only on models whose numbers the solvers resolve (found by differential fuzzing) ------
def _tiny_range_net(scale: float):
    """``y = 3072·relu(2048·relu(scale·(x0 + 2 x1 + 3 x2)))``: the first ReLU's whole range is ~1e-9."""
    import torch
    from absint.ir import Affine, Graph, Input, Relu
    from absint.linear import DenseOperator

    def dense(name, parent, w):
        w = torch.tensor(w, dtype=torch.float64)
        return Affine(name, (parent,), (w.shape[0],), DenseOperator(w), torch.zeros(w.shape[0], dtype=torch.float64))
    nodes = (Input("x", (), (3,)), dense("a", "x", [[scale, 2 * scale, 3 * scale]]), Relu("r", ("a",), (1,)),
             dense("b", "r", [[2048.0]]), Relu("s", ("b",), (1,)), dense("y", "s", [[3072.0]]))
    return Graph(nodes, "y", "tiny")


@pytest.mark.parametrize("backend", ["highs", "gurobi"])
@pytest.mark.parametrize("analysis", ["milp", "refinezono"])
def test_milp_bounds_are_not_trusted_below_the_solver_tolerances(backend, analysis):
    """Weights of 2^-23 on a 2^-8-wide box put the first ReLU's range near 1e-9, below MILP
    feasibility tolerances; Gurobi's presolve read it as 0 and "proved" ``y < y(hi)``, which the
    corner ``hi`` violates."""
    if backend == "gurobi" and not HAS_GUROBI:
        pytest.skip("gurobipy not installed")
    import absint
    from absint.specs import Clause, InputBox, OutputProperty

    g = _tiny_range_net(2.0 ** -23)
    u = 2.0 ** -10
    lo = np.array([-4.0, -1.0, 0.0]) * u
    hi = lo + 4 * u
    y_hi = 3072.0 * 2048.0 * 2.0 ** -23 * float(hi @ np.array([1.0, 2.0, 3.0]))
    assert y_hi > 0
    prop = OutputProperty((Clause(np.array([[1.0]]), np.array([-y_hi])),), 1)  # violated where y >= y(hi): at hi
    r = absint.verify(g, (InputBox(lo, hi), prop), analysis=analysis, attack=False, backend=backend)
    assert not r.verified and (r.margin is None or r.margin <= 0)


def test_mip_scale_problem_names_narrow_variables_and_huge_bounds():
    from absint.solvers.safe_bound import MIP_MIN_WIDTH, mip_proved_bound, mip_scale_problem

    m = LinearModel()
    m.add_vars(0.0, 1.0, size=2)
    m.add_binary_vars(1)
    assert mip_scale_problem(m) is None
    m.add_vars(0.0, MIP_MIN_WIDTH / 10, size=1)
    assert "narrower" in mip_scale_problem(m)
    assert mip_proved_bound(m, 1.0, 0.0, 0.0) is None
    big = LinearModel()
    big.add_vars(-1e9, 1.0, size=1)
    assert "magnitude" in mip_scale_problem(big)
    fixed = LinearModel()
    fixed.add_vars(0.5, 0.5, size=1)  # a fixed variable (width 0) is fine
    assert mip_scale_problem(fixed) is None


@pytest.mark.parametrize("backend", ["highs", "scipy", "gurobi"])
def test_an_out_of_scale_milp_is_not_solved(backend, monkeypatch):
    """The scale guard once ran after the solve: a MILP that could prove nothing still used its whole
    time limit. Now no backend is asked; the relaxed LP of the same model is still solved."""
    if not AVAIL[backend][0]:
        pytest.skip(f"{backend} not installed")
    from absint.solvers.safe_bound import MIP_MIN_WIDTH

    m = LinearModel()
    x = m.add_vars(0.0, MIP_MIN_WIDTH / 10, size=1)
    z = m.add_binary_vars(1)
    m.add_constraints(sp.csr_matrix(np.array([[1.0, -MIP_MIN_WIDTH / 10]])), -np.inf, 0.0)  # x ≤ w·z
    m.set_objective(np.array([-1.0, 0.0]), "min")
    b = get_backend(backend)
    entry = {"highs": ("absint.solvers.highs_backend", "HighsSession", "_load"),
             "scipy": ("absint.solvers.scipy_backend", "ScipyBackend", "_solve_milp"),
             "gurobi": ("absint.solvers.gurobi_backend", "GurobiBackend", "_solve")}[backend]
    import importlib

    cls = getattr(importlib.import_module(entry[0]), entry[1])
    calls: list[int] = []
    orig = getattr(cls, entry[2])
    monkeypatch.setattr(cls, entry[2], lambda self, *a, **k: calls.append(1) or orig(self, *a, **k))
    res = b.solve(m)
    assert res.status is Status.UNKNOWN and res.proved_bound is None and res.x is None
    assert "not solved" in res.message and "narrower" in res.message and not calls
    lp = b.solve(m, SolveOptions(relax_integrality=True))
    assert calls or backend == "scipy"  # the LP goes to the solver (scipy's LP path is another method)
    assert lp.status is Status.OPTIMAL and lp.proved_bound is not None and lp.proved_bound <= -MIP_MIN_WIDTH / 10 + 1e-12
