"""Tests of the k-ReLU machinery (absint.domains.krelu): grouping, octahedra, exact and fast hulls.

Soundness is checked exactly where it matters: the fast hull (and the float rounding of the
exact hull) must contain every vertex of the exact rational hull, checked in exact
integer/rational arithmetic, and every sampled ``(x, relu(x))`` with ``x ∈ P``.  Exact k=3
hulls are costly, so they are computed once per module on small inputs.
"""
from __future__ import annotations

import itertools
import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.optimize import linprog

import absint.domains.krelu as K
from absint.domains.krelu.certify import add_down, add_up, mul_up
from absint.domains.krelu.grouping import KReluOptions, group_neurons, sparse_cover, unstable_ranking
from absint.domains.krelu.hull_exact import rational_rows_to_float

FAST = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ----------------------------------------------------------------------------- helpers
def points_group(rng: np.random.Generator, k: int, n: int = 4, scale: float = 1.0):
    pts = rng.normal(size=(n, k)) * scale
    D = K.octahedral_directions(k)
    return D, K.octahedral_bounds_from_points(pts, D), pts


def zono_group(rng: np.random.Generator, k: int, p: int = 3):
    c = rng.normal(size=k) * 0.3
    G = rng.normal(size=(k, p)) * 0.4
    D = K.octahedral_directions(k)
    return D, K.octahedral_bounds_from_zonotope(c, G, D), (c, G)


def samples_in_P(rng, D, b, pts=None, n=3000):
    """x ∈ P: rejection samples from the box plus convex combinations of ``pts`` (⊆ P)."""
    lo, hi = K.box_from_octahedron(D, b)
    X = rng.uniform(lo, hi, size=(n, D.shape[1]))
    X = X[(X @ D.T <= b).all(axis=1)]
    if pts is not None:
        W = rng.dirichlet(np.ones(len(pts)), size=n)
        X = np.vstack([X, W @ pts, pts])
    return X


def lifted(X):
    return np.hstack([X, np.maximum(X, 0.0)])


def assert_contains(H: np.ndarray, Z: np.ndarray) -> None:
    """Float check of sampled points (only float noise of the evaluation is tolerated)."""
    if Z.size == 0:  # rejection sampling found no point of a thin polytope: nothing to check
        return
    tol = 1e-12 * (1.0 + np.abs(H).max() * (1.0 + np.abs(Z).max()))
    assert K.min_slack(H, Z).min() >= -tol


def _int_rows(rows) -> np.ndarray:
    """Scale each row of rationals (floats or Fractions) by a positive integer to integers."""
    out = []
    for r in rows:
        r = [Fraction(t) for t in r]
        den = 1
        for t in r:
            den = den * t.denominator // math.gcd(den, t.denominator)
        out.append([t.numerator * (den // t.denominator) for t in r])
    return np.array(out, dtype=object)


def exact_values(H, verts) -> np.ndarray:
    """Signs-exact values of h0 + h·v for all rows × vertices (positively scaled integers)."""
    return _int_rows(H) @ _int_rows([[1] + list(v) for v in verts]).T


def violations_exact(H: np.ndarray, verts) -> int:
    """Number of (row, vertex) pairs with h0 + h·v < 0, in exact integer arithmetic."""
    if len(verts) == 0:
        return 0
    return int(sum(1 for x in exact_values([[float(t) for t in h] for h in H], verts).flat if x < 0))


def support(H: np.ndarray, R: np.ndarray) -> np.ndarray:
    M, e = K.to_leq(H)
    out = []
    for r in R:
        res = linprog(-r, A_ub=M, b_ub=e, bounds=[(None, None)] * M.shape[1], method="highs")
        assert res.status == 0
        out.append(-res.fun)
    return np.array(out)


@pytest.fixture(scope="module")
def k3_cases():
    """A few k=3 groups with their exact hulls (computed once; cdd.gmp is slow)."""
    rng = np.random.default_rng(3)
    cases = []
    for _ in range(2):
        D, b, pts = points_group(rng, 3, n=3)
        cases.append((D, b, pts, K.krelu_hull_exact_rational(D, b)))
    D, b, (c, G) = zono_group(rng, 3, p=2)
    pts = c + (G @ np.array(list(itertools.product((-1, 1), repeat=2))).T).T
    cases.append((D, b, pts, K.krelu_hull_exact_rational(D, b)))
    return cases


# ----------------------------------------------------------------------------- octahedron
@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_octahedral_directions(k):
    D = K.octahedral_directions(k)
    assert D.shape == (3**k - 1, k)
    assert len({tuple(r) for r in D}) == D.shape[0]
    assert set(np.unique(D)) <= {-1.0, 0.0, 1.0}
    assert np.array_equal(D[K.negation_index(k)], -D)
    h = K.octahedral_directions(k, half=True)
    assert np.array_equal(h, D[: D.shape[0] // 2])
    assert all(r[np.flatnonzero(r)[0]] == 1 for r in h)
    pos, neg = K.unit_row_indices(D)
    assert np.array_equal(D[pos], np.eye(k)) and np.array_equal(D[neg], -np.eye(k))


def test_octahedral_bounds_helpers():
    rng = np.random.default_rng(0)
    D = K.octahedral_directions(3)
    pts = rng.normal(size=(7, 3))
    b = K.octahedral_bounds_from_points(pts, D)
    Dq = [[Fraction(float(t)) for t in d] for d in D]
    for p in pts:  # rigorous: exact d·p ≤ b_d
        pq = [Fraction(float(t)) for t in p]
        assert all(sum(a * t for a, t in zip(d, pq)) <= Fraction(float(bd)) for d, bd in zip(Dq, b))
    lo, hi = K.box_from_octahedron(D, b)
    assert np.allclose(lo, pts.min(0)) and np.allclose(hi, pts.max(0))
    assert (lo <= pts.min(0)).all() and (hi >= pts.max(0)).all()
    bb = K.octahedral_bounds_from_box(lo, hi, D)
    assert (b <= bb + 1e-12).all()
    c, G = rng.normal(size=3), rng.normal(size=(3, 5))
    bz = K.octahedral_bounds_from_zonotope(c, G, D)
    eps = rng.choice([-1.0, 1.0], size=(200, 5))
    assert ((c + eps @ G.T) @ D.T <= bz).all()
    # a single point gives a non-empty (tiny) octahedron despite rounding
    one = K.octahedral_bounds_from_points(np.array([[0.1, 0.7, -0.3]]), D)
    assert not K.krelu_hull_exact_rational(D, one).empty


# ----------------------------------------------------------------------------- grouping
def test_options_convention():
    assert KReluOptions().max_overlap == 1  # ERAN: k=3, s=-2 -> overlap k+s = 1
    assert KReluOptions(k=3, s=-1).max_overlap == 2
    assert KReluOptions(k=4, s=-2).max_overlap == 2
    assert KReluOptions(k=3, s=5).max_overlap == 2
    with pytest.raises(ValueError):
        KReluOptions(k=3, s=-4)
    with pytest.raises(ValueError):
        KReluOptions(hull="cdd-float")  # type: ignore[arg-type]


@pytest.mark.parametrize("n,k,t", [(10, 3, 1), (70, 3, 1), (12, 4, 2), (9, 3, 0), (8, 2, 0), (6, 3, 2)])
def test_sparse_cover_overlap(n, k, t):
    cover = sparse_cover(n, k, t)
    assert cover and all(len(g) == k and len(set(g)) == k for g in cover)
    assert all(0 <= i < n for g in cover for i in g)
    for g1, g2 in itertools.combinations(cover, 2):
        assert len(set(g1) & set(g2)) <= t
    if t == k - 1:
        assert len(cover) == len(list(itertools.combinations(range(n), k)))
    # greedy maximality: no further k-subset can be added
    if n <= 12:
        for comb in itertools.combinations(range(n), k):
            if comb not in cover:
                assert any(len(set(comb) & set(g)) > t for g in cover)


@given(
    st.integers(0, 2**31 - 1),
    st.integers(1, 4),
    st.integers(-3, 0),
    st.sampled_from([3, 5, 8, 70]),
    st.sampled_from([0.0, 0.05, 0.3]),
    st.booleans(),
)
@FAST
def test_group_neurons_properties(seed, k, s, sparse_n, cutoff, relative):
    if k + s < 0:
        return
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 60))
    l = rng.normal(size=n) - 0.2
    u = l + rng.uniform(0, 2, size=n)
    u[rng.random(n) < 0.1] = 0.0  # some u = 0 (stable)
    opt = KReluOptions(k=k, s=s, sparse_n=sparse_n, cutoff=cutoff, relative_cutoff=relative)
    groups = group_neurons(l, u, opt)
    idx, score = unstable_ranking(l, u)
    thr = cutoff * score.max() if (relative and score.size) else cutoff
    kept = list(idx[score >= thr])
    window_of = {int(v): i // sparse_n for i, v in enumerate(kept)}
    for g in groups:
        assert list(g) == sorted(g) and len(set(g)) == len(g)
        assert 2 <= len(g) <= k or (k == 1 and len(g) == 1)
        for i in g:
            assert i in window_of and l[i] < 0 < u[i] and -l[i] * u[i] >= thr
        assert len({window_of[i] for i in g}) == 1  # groups never straddle windows
    for g1, g2 in itertools.combinations(groups, 2):
        assert len(set(g1) & set(g2)) <= opt.max_overlap
    # every window with >= 2 kept neurons (or any, for k = 1) is covered
    n_windows = (len(kept) + sparse_n - 1) // sparse_n
    for w in range(n_windows):
        members = [v for v, ww in window_of.items() if ww == w]
        covered = {i for g in groups for i in g if window_of[i] == w}
        if len(members) >= 2 or k == 1:
            assert covered, (w, members)


def test_group_neurons_ranking_and_cutoff():
    l = np.array([-1.0, -0.1, -2.0, 0.5, -0.3, -1.0, -0.01])
    u = np.array([1.0, 0.1, 2.0, 1.0, 0.0, 0.5, 0.02])
    idx, score = unstable_ranking(l, u)
    assert list(idx) == [2, 0, 5, 1, 6]  # stable neurons 3 (l>0) and 4 (u=0) excluded
    # ERAN reading: absolute area cutoff -l*u >= 0.05 keeps 2, 0, 5 -> a single group of 3
    assert group_neurons(l, u, KReluOptions(k=3)) == [(0, 2, 5)]
    # relative cutoff: -l*u >= 0.1 * 4 keeps 2, 0, 5 as well; 0.2*4 keeps 2, 0 -> one pair
    assert group_neurons(l, u, KReluOptions(k=3, cutoff=0.2, relative_cutoff=True)) == [(0, 2)]
    # windows of 2: (2, 0) and (5, 1) with cutoff 0
    assert group_neurons(l, u, KReluOptions(k=3, sparse_n=2, cutoff=0.0)) == [(0, 2), (1, 5)]
    assert group_neurons(np.zeros(3), np.ones(3)) == []


# ----------------------------------------------------------------------------- exact hull
@pytest.mark.parametrize("lo,hi", [(-1.0, 2.0), (-3.0, 0.5), (0.0, 1.0), (-1.0, 0.0), (0.5, 2.0), (-2.0, -1.0)])
def test_k1_reduces_to_triangle(lo, hi):
    D = K.octahedral_directions(1)
    b = K.octahedral_bounds_from_box([lo], [hi], D)
    ex = K.krelu_hull_exact_rational(D, b)
    verts = {tuple(float(t) for t in v) for v in ex.vertices}
    assert verts == {(lo, max(lo, 0.0)), (hi, max(hi, 0.0))} | ({(0.0, 0.0)} if lo < 0 < hi else set())
    for H in (K.krelu_hull_exact(D, b), K.krelu_hull_fast(D, b)):
        assert violations_exact(H, ex.vertices) == 0
        # same set: the support function agrees with the triangle's in every direction
        R = np.array([[np.cos(t), np.sin(t)] for t in np.linspace(0, 2 * np.pi, 16, endpoint=False)])
        V = np.array([[float(t) for t in v] for v in ex.vertices])
        assert np.allclose(support(H, R), (V @ R.T).max(axis=0), atol=1e-9)
    if lo < 0 < hi:  # the exact rows are exactly y ≥ 0, y ≥ x, y ≤ u(x − l)/(u − l)
        lam = Fraction(hi) / (Fraction(hi) - Fraction(lo))
        want = {(Fraction(0), Fraction(0), Fraction(1)), (Fraction(0), Fraction(-1), Fraction(1)),
                (-lam * Fraction(lo), lam, Fraction(-1))}
        got = {tuple(t / max(abs(r[1]), abs(r[2])) for t in r) for r in ex.ineqs}
        want = {tuple(t / max(abs(r[1]), abs(r[2])) for t in r) for r in want}
        assert got == want


@given(st.integers(0, 2**31 - 1), st.integers(1, 2), st.sampled_from(["points", "zono"]))
@FAST
def test_exact_hull_small_k(seed, k, kind):
    rng = np.random.default_rng(seed)
    if kind == "points":
        D, b, pts = points_group(rng, k, n=int(rng.integers(1, 6)))
    else:
        D, b, (c, G) = zono_group(rng, k, p=int(rng.integers(1, 4)))
        pts = c + (G @ rng.choice([-1.0, 1.0], size=(G.shape[1], 50))).T
    ex = K.krelu_hull_exact_rational(D, b)
    _check_exact(rng, D, b, pts, ex)


def _check_exact(rng, D, b, pts, ex):
    assert not ex.empty  # the bound helpers round outward, so P ⊇ the generating set
    k = D.shape[1]
    Dq = [[Fraction(float(t)) for t in d] for d in D]
    bq = [Fraction(float(t)) for t in b]
    for v in ex.vertices:  # vertices are (x, relu(x)) with x ∈ P, exactly
        x, y = v[:k], v[k:]
        assert all(yi == max(xi, 0) for xi, yi in zip(x, y))
        assert all(sum(a * t for a, t in zip(d, x)) <= bi for d, bi in zip(Dq, bq))
    vals = exact_values(ex.ineqs, ex.vertices)
    # every row is valid on all vertices and tight at one of them (it supports a face)
    assert all(min(row) == 0 for row in vals)
    H = rational_rows_to_float(ex)  # = K.krelu_hull_exact(D, b) without recomputing
    assert violations_exact(H, ex.vertices) == 0  # sound rounding
    Z = lifted(samples_in_P(rng, D, b, pts))
    assert_contains(H, Z)


def test_exact_hull_k3(k3_cases):
    rng = np.random.default_rng(7)
    for D, b, pts, ex in k3_cases:
        _check_exact(rng, D, b, pts, ex)
        assert len(ex.ineqs) > 0


def test_exact_hull_degenerate():
    rng = np.random.default_rng(1)
    # flat P: x0 = x1 (k = 2) -- a segment-like set, hull of lower dimension
    t = rng.normal(size=6)
    pts = np.stack([t, t], axis=1)
    D = K.octahedral_directions(2)
    b = K.octahedral_bounds_from_points(pts, D)
    ex = K.krelu_hull_exact_rational(D, b)
    _check_exact(rng, D, b, pts, ex)
    # an equality survives as two opposite rows (x0 − x1 = 0 and y0 − y1 = 0)
    assert len(ex.ineqs) >= 4
    # bounds touching 0: l = 0 and u = 0
    for lo, hi in [([0.0, -1.0], [1.0, 1.0]), ([-1.0, -1.0], [0.0, 2.0]), ([0.0, 0.0], [0.0, 1.0])]:
        b = K.octahedral_bounds_from_box(lo, hi, D)
        ex = K.krelu_hull_exact_rational(D, b)
        _check_exact(rng, D, b, None, ex)
    # empty P
    b = K.octahedral_bounds_from_box([0.0, 0.0], [1.0, 1.0], D)
    b[K.unit_row_indices(D)[0][0]] = -0.5  # x0 ≤ −0.5 contradicts x0 ≥ 0
    ex = K.krelu_hull_exact_rational(D, b)
    assert ex.empty and K.krelu_hull_exact(D, b).tolist() == [[-1.0, 0.0, 0.0, 0.0, 0.0]]


# ----------------------------------------------------------------------------- fast hull
def test_fast_hull_contains_exact_k3(k3_cases):
    rng = np.random.default_rng(11)
    for D, b, pts, ex in k3_cases:
        H = K.krelu_hull_fast(D, b)
        assert violations_exact(H, ex.vertices) == 0
        assert violations_exact(K.krelu_hull_fast(D, b, method="cdd", level=2), ex.vertices) == 0
        Z = lifted(samples_in_P(rng, D, b, pts))
        assert_contains(H, Z)
        # includes the triangle constraints of every neuron (up to the certified constant)
        lo, hi = K.box_from_octahedron(D, b)
        At, Ct = K.triangle_candidates(lo, hi)
        M, _ = K.to_leq(H)
        Mn = M / np.abs(M).max(axis=1, keepdims=True)
        T = np.hstack([At, Ct])
        T = T / np.abs(T).max(axis=1, keepdims=True)
        for t in T:
            assert np.abs(Mn - t).max(axis=1).min() < 1e-12
        # precision: close to the exact hull in random directions, tighter than triangles
        V = np.array([[float(t) for t in v] for v in ex.vertices])
        R = rng.normal(size=(12, 6))
        R[:, 3:] = np.abs(R[:, 3:])
        hx = (V @ R.T).max(axis=0)
        width = hx + (-V @ R.T).max(axis=0)
        gap = (support(H, R) - hx) / width
        assert gap.min() >= -1e-9 and gap.mean() < 0.05


@given(
    st.integers(0, 2**31 - 1),
    st.integers(1, 2),
    st.sampled_from(["points", "zono", "box", "dyadic", "tiny", "huge"]),
)
@FAST
def test_fast_hull_sound_small_k(seed, k, kind):
    rng = np.random.default_rng(seed)
    D = K.octahedral_directions(k)
    pts = None
    if kind == "points":
        D, b, pts = points_group(rng, k, n=int(rng.integers(1, 6)))
    elif kind == "zono":
        D, b, _ = zono_group(rng, k, p=int(rng.integers(1, 5)))
    elif kind == "box":
        lo = rng.uniform(-1, 0.5, size=k)
        b = K.octahedral_bounds_from_box(lo, lo + rng.uniform(0, 1.5, size=k), D)
    elif kind == "dyadic":  # exact ties and degeneracies
        pts = rng.integers(-3, 4, size=(int(rng.integers(1, 6)), k)) / 4.0
        b = K.octahedral_bounds_from_points(pts, D)
    elif kind == "tiny":
        D, b, pts = points_group(rng, k, n=4, scale=1e-7)
    else:
        D, b, pts = points_group(rng, k, n=4, scale=1e5)
    ex = K.krelu_hull_exact_rational(D, b)
    H = K.krelu_hull_fast(D, b)
    assert H.shape[1] == 1 + 2 * k and np.isfinite(H).all()
    assert violations_exact(H, ex.vertices) == 0
    Z = lifted(samples_in_P(rng, D, b, pts, n=500))
    assert_contains(H, Z)
    # certified bounds of arbitrary rows (wild magnitudes) are ≥ the exact maximum
    A = rng.normal(size=(8, k)) * 10.0 ** rng.integers(-8, 9, size=(8, 1))
    C = rng.normal(size=(8, k)) * 10.0 ** rng.integers(-8, 9, size=(8, 1))
    e = K.relu_support_upper_bounds(D, b, A, C)
    for a, c, ei in zip(A, C, e):
        coef = [Fraction(float(t)) for t in np.concatenate([a, c])]
        best = max(sum(q * t for q, t in zip(coef, v)) for v in ex.vertices)
        assert Fraction(float(ei)) >= best


def test_fast_hull_k2_matches_exact():
    """For k = 2 the lifting is exact on these (generic) inputs."""
    rng = np.random.default_rng(5)
    for _ in range(4):
        D, b, _ = zono_group(rng, 2, p=6)
        V = np.array([[float(t) for t in v] for v in K.krelu_hull_exact_rational(D, b).vertices])
        R = rng.normal(size=(20, 4))
        assert np.allclose(support(K.krelu_hull_fast(D, b), R), (V @ R.T).max(axis=0), atol=1e-7)


def test_fast_hull_degenerate_and_k4():
    rng = np.random.default_rng(2)
    D2 = K.octahedral_directions(2)
    t = rng.normal(size=5)
    cases = [
        (D2, K.octahedral_bounds_from_points(np.stack([t, 0.5 * t], axis=1), D2)),  # flat P
        (D2, K.octahedral_bounds_from_box([0.0, -1.0], [1.0, 0.0], D2)),  # l = 0 and u = 0
        (D2, K.octahedral_bounds_from_points(np.array([[0.3, -0.2]]), D2)),  # a single point
    ]
    for D, b in cases:
        ex = K.krelu_hull_exact_rational(D, b)
        H = K.krelu_hull_fast(D, b)
        assert violations_exact(H, ex.vertices) == 0
    # empty P
    b = K.octahedral_bounds_from_box([0.0, 0.0], [1.0, 1.0], D2)
    b[K.unit_row_indices(D2)[0][0]] = -0.5
    assert K.krelu_hull_fast(D2, b).tolist() == [[-1.0, 0.0, 0.0, 0.0, 0.0]]
    # +inf rows are ignored
    b = K.octahedral_bounds_from_box([-1.0, -1.0], [1.0, 1.0], D2)
    b[3] = np.inf  # the row (1, 1)
    assert np.isfinite(K.krelu_hull_fast(D2, b)).all()
    b[K.unit_row_indices(D2)[0][1]] = np.inf  # an unbounded coordinate
    with pytest.raises(ValueError):
        K.krelu_hull_fast(D2, b)
    # k = 4 (cdd path for the pieces): sound on samples
    D4, b4, (c, G) = zono_group(rng, 4, p=6)
    H4 = K.krelu_hull_fast(D4, b4)
    X = c + (G @ rng.uniform(-1, 1, size=(6, 4000))).T
    X = np.vstack([X, c + (G @ rng.choice([-1.0, 1.0], size=(6, 2000))).T])
    assert_contains(H4, lifted(X))


def test_relu_support_upper_bounds_and_dispatch(k3_cases):
    D, b, pts, ex = k3_cases[0]
    rng = np.random.default_rng(4)
    A = rng.normal(size=(30, 3))
    C = rng.normal(size=(30, 3))
    e = K.relu_support_upper_bounds(D, b, A, C)
    V = np.array([[float(t) for t in v] for v in ex.vertices])
    true = (V @ np.hstack([A, C]).T).max(axis=0)
    assert (e >= true).all() and np.allclose(e, true, atol=1e-9)
    assert K.krelu_hull(D, b, KReluOptions(hull="fast")).shape[1] == 7
    Hx = K.krelu_hull(D, b, KReluOptions(hull="exact"))
    assert violations_exact(Hx, ex.vertices) == 0


# ----------------------------------------------------------------------------- directed rounding
finite = st.floats(allow_nan=False, allow_infinity=False)


@given(st.lists(st.tuples(finite, finite), min_size=1, max_size=30))
@settings(max_examples=60, deadline=None)
def test_directed_rounding(pairs):
    a = np.array([p[0] for p in pairs])
    b = np.array([p[1] for p in pairs])
    up, down, mu = add_up(a, b), add_down(a, b), mul_up(a, b)
    for x, y, u, d, m in zip(a, b, up, down, mu):
        s = Fraction(float(x)) + Fraction(float(y))
        assert (u == np.inf or Fraction(float(u)) >= s) and (d == -np.inf or Fraction(float(d)) <= s)
        assert m == np.inf or Fraction(float(m)) >= Fraction(float(x)) * Fraction(float(y))
