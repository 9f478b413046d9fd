"""SDP-cert (Raghunathan et al. 2018): certificates, both solvers, the ``sdp`` analysis.

Directions: the solvers return proved *upper* bounds of the violation ``max −(C y + d)``; the
analysis reports their negation, a *lower* bound of the safety margin. Soundness means the
violation bound is never below the largest violation an attack finds.
"""
from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch
from torch import nn

try:  # only the exact solver needs cvxpy; the first-order solver and the problem construction do not
    import cvxpy  # noqa: F401
    HAS_CVXPY = True
except ImportError:
    HAS_CVXPY = False
needs_cvxpy = pytest.mark.skipif(not HAS_CVXPY, reason="the exact SDP solver needs cvxpy (pip install 'absint[sdp]')")

import absint  # noqa: E402
from absint.sdp import preactivation_bounds, relu_network  # noqa: E402
from absint.solvers.sdp_exact import solve_exact  # noqa: E402
from absint.solvers.sdp_fo import FOOptions, solve_fo  # noqa: E402
from absint.solvers.sdp_problem import (  # noqa: E402
    build_problem,
    certify,
    interval_multipliers,
    lagrangian_dense,
    lagrangian_matvec,
    lanczos_top,
)

torch.set_num_threads(1)


def tiny_net(sizes: list[int], seed: int) -> absint.Graph:
    """A random ReLU MLP as an absint Graph (float64)."""
    g = torch.Generator().manual_seed(seed)
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        lin = nn.Linear(a, b)
        with torch.no_grad():
            lin.weight.copy_(torch.randn(b, a, generator=g) / math.sqrt(a))
            lin.bias.copy_(0.2 * torch.randn(b, generator=g))
        layers += [lin, nn.ReLU()]
    return absint.load_network(nn.Sequential(*layers[:-1]), input_shape=(sizes[0],))


def problem_for(graph: absint.Graph, x0: torch.Tensor, eps: float, C: torch.Tensor, d: torch.Tensor,
                bounds: str = "box", **kw):
    chain = relu_network(graph)
    lo, hi = (x0 - eps)[None], (x0 + eps)[None]
    pre, _, _ = preactivation_bounds(graph, chain, lo, hi, bounds)
    return build_problem(chain, lo[0], hi[0], pre[0], C, d, **kw), lo[0], hi[0]


def attack_max_violation(graph: absint.Graph, lo: torch.Tensor, hi: torch.Tensor, C: torch.Tensor,
                         d: torch.Tensor, seed: int = 0) -> np.ndarray:
    """Largest violation ``−(C y + d)`` per row found by vertices, random points and PGD."""
    g = torch.Generator().manual_seed(seed)
    n = lo.numel()
    pts = [lo + torch.rand(4000, n, generator=g, dtype=torch.float64) * (hi - lo)]
    if n <= 10:  # every vertex
        bits = torch.tensor([[(k >> i) & 1 for i in range(n)] for k in range(2 ** n)], dtype=torch.float64)
        pts.append(lo + bits * (hi - lo))
    x = torch.cat(pts)
    best = (-(graph.forward(x) @ C.T + d)).max(dim=0).values
    for row in range(C.shape[0]):  # PGD per row from 32 random starts
        z = (lo + torch.rand(32, n, generator=g, dtype=torch.float64) * (hi - lo)).requires_grad_(True)
        for step in range(60):
            v = -(graph.forward(z) @ C[row] + d[row])
            (grad,) = torch.autograd.grad(v.sum(), z)
            with torch.no_grad():
                z = torch.max(torch.min(z + 0.05 * (hi - lo) * grad.sign(), hi), lo)
            z.requires_grad_(True)
        with torch.no_grad():
            best[row] = torch.maximum(best[row], (-(graph.forward(z) @ C[row] + d[row])).max())
    return best.detach().numpy()


def robust_rows(label: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    C = torch.zeros(n - 1, n, dtype=torch.float64)
    for j, t in enumerate(k for k in range(n) if k != label):
        C[j, label], C[j, t] = 1.0, -1.0
    return C, torch.zeros(n - 1, dtype=torch.float64)


CASES = [([4, 8, 3], 0, 0.4), ([3, 6, 6, 2], 1, 0.5), ([5, 10, 3], 2, 0.3), ([2, 5, 5, 5, 2], 3, 0.6)]


# -- the Lagrangian and the certificate --------------------------------------------------------
def test_matvec_matches_dense_and_lanczos_finds_top_eigenvalue():
    graph = tiny_net([4, 8, 8, 3], 7)
    C, d = robust_rows(0, 3)
    prob, _, _ = problem_for(graph, torch.full((4,), 0.5, dtype=torch.float64), 0.4, C, d)
    B, N = 2, prob.size
    g = torch.Generator().manual_seed(0)
    q = torch.randn(B, N, generator=g, dtype=torch.float64)
    mu = torch.randn(B, prob.n_relu, generator=g, dtype=torch.float64)
    kappa = torch.randn(B, N, generator=g, dtype=torch.float64)
    M = lagrangian_dense(prob, q, mu, kappa)
    assert torch.allclose(M, M.transpose(1, 2))
    w = torch.randn(B, N, 3, generator=g, dtype=torch.float64)
    assert torch.allclose(M @ w, lagrangian_matvec(prob, q, mu, kappa, w), atol=1e-12)
    lam, vec, _ = lanczos_top(lambda v: M @ v, N, B, steps=N, generator=g)
    assert torch.allclose(lam, torch.linalg.eigvalsh(M)[:, -1], atol=1e-9)


def test_interval_multipliers_reproduce_interval_bound():
    graph = tiny_net([4, 8, 3], 3)
    C, d = robust_rows(1, 3)
    prob, _, _ = problem_for(graph, torch.full((4,), 0.3, dtype=torch.float64), 0.2, C, d)
    q = prob.objective
    cert = certify(prob, q, torch.zeros(2, prob.n_lin, dtype=torch.float64),
                   torch.zeros(2, prob.n_relu, dtype=torch.float64), interval_multipliers(q))
    interval = (q[:, 0] + q[:, 1:].abs().sum(1)).numpy()
    assert np.allclose(cert.upper, interval, rtol=1e-9, atol=1e-9)


@needs_cvxpy
# -- soundness of both solvers ----------------------------------------------------------------
@pytest.mark.parametrize("sizes,seed,eps", CASES)
def test_exact_certificate_is_sound_and_tight(sizes, seed, eps):
    graph = tiny_net(sizes, seed)
    x0 = torch.rand(sizes[0], generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    C, d = robust_rows(0, sizes[-1])
    prob, lo, hi = problem_for(graph, x0, eps, C, d)
    res = solve_exact(prob, backend="scs", tol=1e-7)
    truth = attack_max_violation(graph, lo, hi, C, d)
    assert np.all(res.upper >= truth - 1e-9), (res.upper, truth)
    # the dual certificate is within solver tolerance of the solver's own (unproved) optimum
    assert np.allclose(res.upper, res.primal, rtol=1e-3, atol=1e-3), (res.upper, res.primal)


@needs_cvxpy
def test_certificate_valid_when_solvers_stop_early():
    graph = tiny_net([4, 8, 8, 3], 11)
    x0 = torch.full((4,), 0.5, dtype=torch.float64)
    C, d = robust_rows(2, 3)
    prob, lo, hi = problem_for(graph, x0, 0.5, C, d)
    truth = attack_max_violation(graph, lo, hi, C, d)
    early = solve_exact(prob, backend="scs", max_iters=3)
    assert np.all(early.upper >= truth - 1e-9)
    skipped = solve_exact(prob, backend="scs", deadline=time.perf_counter())  # nothing solved
    assert all(st.startswith("skipped") for st in skipped.status)
    assert np.all(skipped.upper >= truth - 1e-9) and np.all(np.isfinite(skipped.upper))
    # SCS's primal value after 3 iterations is no bound; the certificate still is
    for iters in (1, 3, 10):
        fo = solve_fo(prob, options=FOOptions(iterations=iters))
        assert np.all(fo.upper >= truth - 1e-9)


@needs_cvxpy
@pytest.mark.parametrize("sizes,seed,eps", CASES[:3])
def test_first_order_never_beats_exact_and_gets_close(sizes, seed, eps):
    graph = tiny_net(sizes, seed)
    x0 = torch.rand(sizes[0], generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    C, d = robust_rows(1, sizes[-1])
    prob, lo, hi = problem_for(graph, x0, eps, C, d)
    exact = solve_exact(prob, backend="scs", tol=1e-8)
    fo = solve_fo(prob, options=FOOptions(iterations=400))
    # both are upper bounds of the same SDP optimum: fo can exceed exact, never undercut it
    # (beyond the exact solver's accuracy)
    assert np.all(fo.upper >= exact.primal - 1e-4), (fo.upper, exact.primal)
    scale = np.abs(exact.upper) + 0.1 * prob.objective[:, 1:].abs().sum(1).numpy()
    assert np.all(fo.upper - exact.upper <= 0.05 * scale), (fo.upper, exact.upper)
    truth = attack_max_violation(graph, lo, hi, C, d)
    assert np.all(fo.upper >= truth - 1e-9)


@needs_cvxpy
def test_exact_backends_agree():
    from absint.solvers.sdp_exact import available_backends

    backends = available_backends()
    assert set(backends) == {"mosek", "scs", "clarabel"}
    assert all(isinstance(ok, bool) and isinstance(why, str) for ok, why in backends.values())
    graph = tiny_net([3, 6, 2], 8)
    C, d = robust_rows(0, 2)
    prob, _, _ = problem_for(graph, torch.full((3,), 0.5, dtype=torch.float64), 0.3, C, d)
    ups = [solve_exact(prob, backend=b, tol=1e-8).upper for b, (ok, _) in backends.items() if ok]
    for u in ups[1:]:
        assert np.allclose(u, ups[0], atol=1e-4)


def test_many_inputs_never_certify_more_than_the_attack_finds():
    """On many boxes of one net, the (first-order) certified margin ≤ worst attacked margin."""
    graph = tiny_net([6, 12, 12, 4], 5)
    gen = torch.Generator().manual_seed(1)
    C, d = robust_rows(3, 4)
    for _ in range(12):
        x0 = torch.rand(6, generator=gen, dtype=torch.float64)
        prob, lo, hi = problem_for(graph, x0, 0.15, C, d)
        fo = solve_fo(prob, options=FOOptions(iterations=60))
        truth = attack_max_violation(graph, lo, hi, C, d)
        assert np.all(fo.upper >= truth - 1e-9), (fo.upper, truth)


@needs_cvxpy
def test_stable_neuron_elimination_keeps_the_bound():
    graph = tiny_net([4, 10, 10, 3], 21)
    x0 = torch.full((4,), 0.4, dtype=torch.float64)
    C, d = robust_rows(0, 3)
    reduced, lo, hi = problem_for(graph, x0, 0.25, C, d, eliminate_stable=True)
    full, _, _ = problem_for(graph, x0, 0.25, C, d, eliminate_stable=False)
    assert reduced.size < full.size
    a = solve_exact(reduced, backend="scs", tol=1e-8)
    b = solve_exact(full, backend="scs", tol=1e-8)
    # Substituting z = s for stably active neurons is exact for the network, while the full SDP only
    # has z ≥ s, z(z − s) = 0: elimination may tighten the bound (here by ≤ 0.006), never loosen it.
    assert np.all(a.upper <= b.upper + 1e-5), (a.upper, b.upper)
    assert np.allclose(a.upper, b.upper, rtol=0.05, atol=0.01), (a.upper, b.upper)
    truth = attack_max_violation(graph, lo, hi, C, d)
    assert np.all(a.upper >= truth - 1e-9) and np.all(b.upper >= truth - 1e-9)


def test_relu_network_matches_graph_and_rejects_unsupported_ops(networks_dir):
    net = absint.load_network(networks_dir / "digits_mlp_2x64.onnx")
    chain = relu_network(net)
    x = torch.rand(5, 1, 8, 8, dtype=torch.float64)
    assert torch.allclose(chain.forward(x.reshape(5, -1)), net.forward(x), atol=1e-10)
    cnn = absint.load_network(networks_dir / "digits_cnn.onnx")
    with pytest.raises(absint.UnsupportedOpError):
        relu_network(cnn)


# -- the analysis through absint.verify ------------------------------------------------------
VNNLIB = """; tiny robustness spec
(declare-const X_0 Real)
(declare-const X_1 Real)
(declare-const X_2 Real)
(declare-const Y_0 Real)
(declare-const Y_1 Real)
(assert (>= X_0 {l0}))
(assert (<= X_0 {u0}))
(assert (>= X_1 {l1}))
(assert (<= X_1 {u1}))
(assert (>= X_2 {l2}))
(assert (<= X_2 {u2}))
(assert (<= Y_0 Y_1))
"""


def _spec(tmp_path, center, eps, name):
    vals = {}
    for i, c in enumerate(center):
        vals[f"l{i}"], vals[f"u{i}"] = c - eps, c + eps
    path = tmp_path / name
    path.write_text(VNNLIB.format(**vals))
    return path


@pytest.mark.parametrize("solver", [pytest.param("exact", marks=needs_cvxpy), "fo",
                                    pytest.param("auto", marks=needs_cvxpy)])
def test_sdp_analysis_via_verify(tmp_path, solver):
    g = torch.Generator().manual_seed(4)
    lin, out = nn.Linear(3, 8), nn.Linear(8, 2)
    with torch.no_grad():
        for layer in (lin, out):
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=g))
            layer.bias.copy_(0.1 * torch.randn(layer.bias.shape, generator=g))
        center = np.array([0.5, 0.5, 0.5])
        y = out(torch.relu(lin(torch.as_tensor(center, dtype=torch.float32))))
        if y[0] <= y[1]:  # orient the net so that Y_0 > Y_1 holds at the centre
            out.weight.copy_(out.weight.flip(0))
            out.bias.copy_(out.bias.flip(0))
    graph = absint.load_network(nn.Sequential(lin, nn.ReLU(), out), input_shape=(3,))
    y = graph.forward(torch.as_tensor(center[None]))[0]
    eps = float(min(0.01, (y[0] - y[1]) / 100))  # far inside the robust radius
    small = _spec(tmp_path, center, eps, "small.vnnlib")
    r = absint.verify(graph, small, analysis="sdp", solver=solver, timeout=60, fo_options={"iterations": 200})
    assert r.verified, r
    big = _spec(tmp_path, center, 3.0, "big.vnnlib")
    r = absint.verify(graph, big, analysis="sdp", solver=solver, timeout=60, attack=False,
                      fo_options={"iterations": 50})
    assert not r.verified  # a huge box: false or at least unprovable
    for name in ("sdp", "sdp-fo") + (("sdp-exact",) if HAS_CVXPY else ()):
        assert name in absint.available_analyses()


def test_timeout_gives_unknown_not_a_crash(networks_dir):
    net = absint.load_network(networks_dir / "digits_fc1x200_pgd.onnx")
    images, labels = absint.load_images(networks_dir / "digits_test.npz", tuple(net.input_shape))
    i = 15  # DeepPoly fails here at eps 0.1; the SDP proves it, but not within 0.05 s
    region = absint.linf_ball(images[i], 0.1)
    prop = absint.robustness_property(int(labels[i]), 10)
    r = absint.verify(net, absint.Instance(region, prop), analysis="sdp", solver="fo", timeout=0.05, attack=False)
    assert r.verdict is absint.Verdict.UNKNOWN and r.reason.startswith("time-out")
    # the first-order solver is anytime: a deadline mid-run still returns a proved bound
    chain = relu_network(net)
    lo = torch.as_tensor(region.lower.reshape(1, -1))
    hi = torch.as_tensor(region.upper.reshape(1, -1))
    pre, _, _ = preactivation_bounds(net, chain, lo, hi, "box")
    C, d = robust_rows(int(labels[i]), 10)
    prob = build_problem(chain, lo[0], hi[0], pre[0], C[:2], d[:2])
    res = solve_fo(prob, options=FOOptions(iterations=10_000), deadline=time.perf_counter() + 0.5)
    assert res.iterations < 10_000 and np.all(np.isfinite(res.upper))
    with torch.no_grad():
        y = net.forward(torch.as_tensor(images[i][None]))[0]
    assert np.all(res.upper >= (-(C[:2] @ y + d[:2])).numpy() - 1e-9)


@pytest.mark.parametrize("eliminate", [True, False])
def test_relaxation_contains_the_network(eliminate):
    """Concrete network points lift to feasible points with the right objective (the encoding)."""
    graph = tiny_net([5, 9, 9, 3], 13)
    chain = relu_network(graph)
    x0 = torch.full((5,), 0.5, dtype=torch.float64)
    C, d = robust_rows(1, 3)
    prob, lo, hi = problem_for(graph, x0, 0.3, C, d, eliminate_stable=eliminate, triangle=True)
    gen = torch.Generator().manual_seed(0)
    for _ in range(50):
        x = lo + torch.rand(5, generator=gen, dtype=torch.float64) * (hi - lo)
        v = prob.lift(chain, x)
        assert prob.max_violation(v) < 1e-9
        y = graph.forward(x[None])[0]
        assert torch.allclose(prob.objective @ v, -(C @ y + d), atol=1e-9)


def _residual_net(seed: int) -> absint.Graph:
    """Input → dense → ReLU → dense → ReLU, plus a skip sum of the two ReLU outputs → dense."""
    from absint.ir import Add, Affine, Graph, Input, Relu
    from absint.linear import DenseOperator

    g = torch.Generator().manual_seed(seed)

    def dense(name, src, a, b):
        return Affine(name, (src,), (b,), DenseOperator(torch.randn(b, a, generator=g, dtype=torch.float64) / a ** 0.5),
                      0.2 * torch.randn(b, generator=g, dtype=torch.float64))
    return Graph((Input("x", (), (4,)), dense("f0", "x", 4, 6), Relu("r0", ("f0",), (6,)), dense("f1", "r0", 6, 6),
                  Relu("r1", ("f1",), (6,)), Add("s", ("r1", "r0"), (6,)), dense("out", "s", 6, 3)), "out")


@pytest.mark.parametrize("eliminate", [True, False])
def test_residual_network_lifts_feasibly_and_bounds_soundly(eliminate):
    """SDP-cert on a residual DAG (the sum is linear): the network matches, every concrete point
    lifts to a feasible point with the right objective, and the certified bound is sound."""
    graph = _residual_net(3)
    net = relu_network(graph)
    assert net.inputs[1] == (0,) and set(net.final_inputs) == {0, 1}
    xs = torch.rand(20, 4, dtype=torch.float64)
    assert torch.allclose(net.forward(xs), graph.forward(xs), atol=1e-12)
    x0 = torch.full((4,), 0.2, dtype=torch.float64)
    C, d = robust_rows(0, 3)
    prob, lo, hi = problem_for(graph, x0, 0.4, C, d, eliminate_stable=eliminate)
    gen = torch.Generator().manual_seed(1)
    for _ in range(30):
        x = lo + torch.rand(4, generator=gen, dtype=torch.float64) * (hi - lo)
        v = prob.lift(net, x)
        assert prob.max_violation(v) < 1e-9
        y = graph.forward(x[None])[0]
        assert torch.allclose(prob.objective @ v, -(C @ y + d), atol=1e-9)
    res = solve_fo(prob, options=FOOptions(iterations=300))
    truth = attack_max_violation(graph, lo, hi, C, d)
    assert np.all(res.upper >= truth - 1e-9)
