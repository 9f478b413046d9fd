"""Timing and precision of the k-ReLU hulls: exact (cdd.gmp) vs fast (certified lifting).

Run:  python benchmarks/krelu_hull_timing.py [--groups 50] [--seed 0] [--ks 2 3 4]

Random "realistic" groups: the input octahedron of a group is the octahedral hull of a
random zonotope ``c + G ε`` (as the zonotope/DeepPoly domains produce for a layer's
pre-activations), with 3–30 generators, a centre near 0 so most neurons are unstable.
For each ``k`` it prints the mean/median per-group time (wall clock and process CPU time,
the latter less sensitive to a shared machine) of both hulls (the fast hull's
per-``D`` caches are warmed up first), their ratio, the number of constraints, and the
precision of the fast hull: the gap of its support function to the exact hull's,
``(h_fast(r) − h_exact(r)) / width_exact(r)`` over random directions ``r`` (half of them
pointing up in ``y``), next to the same gap for the triangle relaxation; "captured" is the
share of the triangle→exact improvement the fast hull keeps.  For ``k = 4`` the exact hull
is skipped (too slow) and soundness of the fast hull is spot-checked on samples.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
from scipy.optimize import linprog

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

try:
    import absint.domains.krelu as K
except ImportError:  # pragma: no cover - domains/__init__ pulls in the whole engine
    # absint.domains.krelu needs nothing from the rest of ``domains``: import it standalone.
    import types

    _pkg = types.ModuleType("domains")
    _pkg.__path__ = [os.path.join(ROOT, "domains")]
    sys.modules["domains"] = _pkg
    import absint.domains.krelu as K


def random_group(rng: np.random.Generator, k: int):
    p = int(rng.integers(3, 31))
    c = rng.normal(size=k) * 0.2
    G = rng.normal(size=(k, p)) * rng.uniform(0.05, 0.3)
    D = K.octahedral_directions(k)
    return D, K.octahedral_bounds_from_zonotope(c, G, D), (c, G)


def support(H: np.ndarray, R: np.ndarray) -> np.ndarray:
    M, e = K.to_leq(H)
    out = np.empty(len(R))
    for i, r in enumerate(R):
        res = linprog(-r, A_ub=M, b_ub=e, bounds=[(None, None)] * M.shape[1], method="highs")
        out[i] = -res.fun
    return out


def triangle_hrep(D: np.ndarray, b: np.ndarray) -> np.ndarray:
    lo, hi = K.box_from_octahedron(D, b)
    A, C = K.triangle_candidates(lo, hi)
    e = K.relu_support_upper_bounds(D, b, A, C)
    return np.vstack([K.from_leq(np.hstack([A, C]), e), K.from_leq(np.hstack([D, 0 * D]), b)])


def run(k: int, n_groups: int, rng: np.random.Generator, exact: bool, n_dirs: int) -> None:
    groups = [random_group(rng, k) for _ in range(n_groups)]
    K.krelu_hull_fast(*groups[0][:2])  # warm the per-D caches
    tf, te, cf, ce, nf, ne, gaps, tri = [], [], [], [], [], [], [], []
    for D, b, (c, G) in groups:
        t0, c0 = time.perf_counter(), time.process_time()
        H = K.krelu_hull_fast(D, b)
        tf.append(time.perf_counter() - t0)
        cf.append(time.process_time() - c0)
        nf.append(H.shape[0])
        if exact:
            t0, c0 = time.perf_counter(), time.process_time()
            ex = K.krelu_hull_exact_rational(D, b)
            te.append(time.perf_counter() - t0)
            ce.append(time.process_time() - c0)
            ne.append(len(ex.ineqs))
            if n_dirs:
                V = np.array([[float(t) for t in v] for v in ex.vertices])
                R = rng.normal(size=(n_dirs, 2 * k))
                R[: n_dirs // 2, k:] = np.abs(R[: n_dirs // 2, k:])
                hx = (V @ R.T).max(axis=0)
                width = np.maximum(hx + (-V @ R.T).max(axis=0), 1e-12)
                gaps.append((support(H, R) - hx) / width)
                tri.append((support(triangle_hrep(D, b), R) - hx) / width)
        else:  # soundness spot check on samples of the zonotope (⊆ P)
            X = c + (G @ rng.uniform(-1, 1, size=(G.shape[1], 2000))).T
            X = np.vstack([X, c + (G @ rng.choice([-1.0, 1.0], size=(G.shape[1], 2000))).T])
            Z = np.hstack([X, np.maximum(X, 0)])
            assert K.min_slack(H, Z).min() >= -1e-12, "fast hull misses a sample"
    ms = lambda v: f"mean {1e3 * np.mean(v):8.2f} ms  median {1e3 * np.median(v):8.2f} ms"  # noqa: E731
    print(f"k={k}  ({n_groups} groups)")
    print(f"  fast : wall {ms(tf)} | cpu {ms(cf)}   constraints mean {np.mean(nf):6.1f}")
    if exact:
        print(f"  exact: wall {ms(te)} | cpu {ms(ce)}   constraints mean {np.mean(ne):6.1f}")
        print(f"  speed-up exact/fast: wall mean-time ratio {np.mean(te) / np.mean(tf):6.1f}x, "
              f"median per-group ratio {np.median(np.array(te) / np.array(tf)):6.1f}x; "
              f"cpu mean-time ratio {np.mean(ce) / np.mean(cf):6.1f}x")
        if gaps:
            g, t = np.concatenate(gaps), np.concatenate(tri)
            print(f"  support gap / width  fast: mean {g.mean():.5f} p95 {np.quantile(g, 0.95):.5f} "
                  f"max {g.max():.4f} (min {g.min():.1e})")
            print(f"                   triangle: mean {t.mean():.5f} p95 {np.quantile(t, 0.95):.5f} "
                  f"max {t.max():.4f}")
            print(f"  fast hull keeps {100 * (1 - g.sum() / t.sum()):.1f}% of the triangle->exact tightening")
    else:
        print("  exact: skipped (cdd.gmp in 8 dimensions is far too slow); soundness checked on samples")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--groups", type=int, default=50)
    ap.add_argument("--groups-k4", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ks", type=int, nargs="+", default=[2, 3, 4])
    ap.add_argument("--dirs", type=int, default=20, help="random directions per group for the precision gap (0: skip)")
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    for k in args.ks:
        run(k, args.groups if k <= 3 else args.groups_k4, rng, exact=k <= 3, n_dirs=args.dirs)


if __name__ == "__main__":
    main()
