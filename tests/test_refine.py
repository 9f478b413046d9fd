"""Soundness tests of the LP/MILP encodings and the refinement analyses (absint.refine)."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

import absint
from absint.frontends.torch_loader import load_torch
from absint.errors import OptionError
from absint.refine import NetworkEncoder, UnsupportedNetworkError, make_config, run_preset
from absint.specs import linf_ball, robustness_property
from absint.domains.box import BoxDomain
from absint.solvers import SolveOptions, get_backend


def _mlp(sizes, seed=0, scale=1.0):
    torch.manual_seed(seed)
    layers = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        lin = torch.nn.Linear(a, b)
        with torch.no_grad():
            lin.weight.mul_(scale)
        layers += [lin, torch.nn.ReLU()]
    return load_torch(torch.nn.Sequential(*layers[:-1]), (sizes[0],))


def _box_bounds(graph, lo, hi):
    from absint.interpreter import propagate

    dom = BoxDomain()
    prop = propagate(graph, dom, torch.as_tensor(lo[None]), torch.as_tensor(hi[None]), keep_all=True)
    return {k: tuple(t.reshape(-1).numpy() for t in dom.bounds(v)) for k, v in prop.elements.items()}


def _solve_min(enc, c, *, mip=False):
    y = enc.vars[enc.output]
    enc.model.set_objective({int(y[j]): float(c[j]) for j in range(len(c))}, "min")
    res = get_backend().solve(enc.model, SolveOptions(time_limit=30))
    assert res.proved_bound is not None
    return res.proved_bound, res


def _samples(graph, lo, hi, n=4000, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.uniform(lo, hi, size=(n, lo.size))
    if lo.size <= 10:  # all corners too
        x[: 2 ** lo.size] = np.array(list(itertools.product(*zip(lo, hi))))
    with torch.no_grad():
        return graph.forward(torch.as_tensor(x)).reshape(n, -1).numpy()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lp_below_samples_and_milp_exact(seed):
    g = _mlp([2, 8, 8, 3], seed)
    lo, hi = np.array([-1.0, -1.0]), np.array([1.0, 1.0])
    bounds = _box_bounds(g, lo, hi)
    encoder = NetworkEncoder(g)
    c = np.array([1.0, -1.0, 0.5])
    lp, _ = _solve_min(encoder.build(lo, hi, bounds), c)
    milp, res = _solve_min(encoder.build(lo, hi, bounds, binaries=True), c)
    vals = _samples(g, lo, hi, n=20000) @ c
    assert lp <= vals.min() + 1e-9
    assert lp <= milp + 1e-7
    assert milp <= vals.min() + 1e-7
    # 2-D input: dense sampling gets close to the exact minimum, the MILP optimum is attained.
    x = res.x[encoder.build(lo, hi, bounds).vars[g.input.name]]
    exact = float(g.forward(torch.as_tensor(x[None])).reshape(-1).numpy() @ c)
    assert abs(exact - res.objective) < 1e-5
    assert vals.min() - milp < 5e-2 * (1 + abs(milp))


def test_milp_matches_activation_enumeration():
    """Exact minimum by enumerating the activation patterns of a 1-hidden-layer net (LP per pattern)."""
    g = _mlp([3, 5, 2], seed=3)
    lo, hi = -np.ones(3), np.ones(3)
    bounds = _box_bounds(g, lo, hi)
    c = np.array([1.0, -2.0])
    milp, res = _solve_min(NetworkEncoder(g).build(lo, hi, bounds, binaries=True), c)
    from scipy.optimize import linprog

    W1, b1 = g.nodes[1].operator.weight.numpy(), g.nodes[1].bias.numpy()
    W2, b2 = g.nodes[3].operator.weight.numpy(), g.nodes[3].bias.numpy()
    best = np.inf
    for pat in itertools.product([0, 1], repeat=5):
        s = np.array(pat, dtype=float)
        obj = c @ (W2 * s) @ W1
        # pattern constraints: active => W1 x + b1 >= 0, inactive => <= 0
        A = np.where(s[:, None] > 0, -W1, W1)
        bb = np.where(s > 0, b1, -b1)
        r = linprog(obj, A_ub=A, b_ub=bb, bounds=list(zip(lo, hi)), method="highs")
        if r.status == 0:
            best = min(best, r.fun + c @ ((W2 * s) @ b1 + b2))
    assert milp <= best + 1e-9  # the proved bound includes the MIP gap tolerance
    assert abs(best - res.objective) < 1e-6


def test_conv_and_residual_encoding_sound():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3, stride=2), torch.nn.ReLU(), torch.nn.Flatten(),
                              torch.nn.Linear(8, 3))
    g = load_torch(net, (1, 5, 5))
    lo, hi = np.zeros(25), np.full(25, 0.3)
    enc = NetworkEncoder(g).build(lo, hi, _box_bounds(g, lo, hi))
    c = np.array([1.0, 0.0, -1.0])
    lp, _ = _solve_min(enc, c)
    assert lp <= (_samples(g, lo, hi, 3000) @ c).min() + 1e-9


def test_unsupported_ops_named():
    from dataclasses import dataclass

    from absint.ir import Graph, Input, Op

    @dataclass(frozen=True, eq=False)
    class Softsign(Op):
        pass

    g = Graph((Input("x", (), (2,)), Softsign("s", ("x",), (2,))), "s")
    with pytest.raises(UnsupportedNetworkError, match="Softsign"):
        NetworkEncoder(g)


@pytest.mark.parametrize("preset", ["lp", "refinepoly", "kpoly", "refinezono", "milp"])
def test_refined_bounds_contain_samples(preset):
    g = _mlp([4, 10, 10, 10, 3], seed=5)
    lo, hi = -0.5 * np.ones(4), 0.5 * np.ones(4)
    opts = {"k": 3, "sparse_n": 6, "cutoff": 0.0} if preset == "refinepoly" else {}
    C = np.array([[1.0, -1.0, 0.0], [0.0, 1.0, -1.0]])
    d = np.array([0.1, -0.2])
    res = run_preset(g, torch.as_tensor(lo[None]), torch.as_tensor(hi[None]), C, d, preset, **opts)
    vals = _samples(g, lo, hi, 20000) @ C.T + d
    assert np.all(res.rows <= vals.min(0) + 1e-8)
    assert np.all(res.rows >= res.stats["domain_lower"] - 1e-9)  # never looser than the domain
    # every tightened pre-activation bound contains the sampled values of that node
    rng = np.random.default_rng(0)
    x = torch.as_tensor(rng.uniform(lo, hi, size=(5000, 4)))
    with torch.no_grad():
        vals_all = g.forward(x, all_nodes=True)
    for name, (blo, bhi) in res.bounds.items():
        v = vals_all[name].reshape(5000, -1).numpy()
        assert np.all(v >= blo - 1e-8) and np.all(v <= bhi + 1e-8), name


def test_refinement_tighter_than_deeppoly_somewhere():
    g = _mlp([4, 12, 12, 12, 3], seed=7)
    lo, hi = -np.ones(4), np.ones(4)
    C, d = np.array([[1.0, -1.0, 0.0]]), np.zeros(1)
    box = torch.as_tensor(lo[None]), torch.as_tensor(hi[None])
    dp = run_preset(g, *box, C, d, "lp")
    rp = run_preset(g, *box, C, d, "kpoly", sparse_n=6, cutoff=0.0, final_bab_timeout=3.0)
    assert rp.rows[0] >= dp.stats["domain_lower"][0] - 1e-9
    assert rp.rows[0] >= dp.rows[0] - 1e-6


def test_tiny_time_limits_keep_valid_bounds():
    g = _mlp([4, 10, 10, 10, 3], seed=9)
    lo, hi = -np.ones(4), np.ones(4)
    opts = {"timeout_lp": 1e-6, "timeout_milp": 1e-6, "timeout_final_lp": 1e-6, "timeout_final_milp": 1e-6,
            "k": 3, "sparse_n": 8, "cutoff": 0.0}
    C, d = np.array([[1.0, 0.0, -1.0]]), np.zeros(1)
    box = torch.as_tensor(lo[None]), torch.as_tensor(hi[None])
    res = run_preset(g, *box, C, d, "refinepoly", **opts)
    vals = _samples(g, lo, hi, 20000) @ C.T + d
    assert np.all(res.rows <= vals.min(0) + 1e-8)
    for name, (blo, bhi) in res.bounds.items():
        assert np.all(np.isfinite(blo)) and np.all(blo <= bhi + 1e-12)
    # an expired deadline: no crash, no work, a time-out note
    res2 = run_preset(g, *box, C, d, "refinepoly", deadline=0.0, **opts)
    assert np.all(res2.rows <= vals.min(0) + 1e-8)
    assert res2.notes[0].startswith("time-out") and res2.stats["timed_out"]
    res3 = run_preset(g, *box, C, d, "kpoly", deadline=0.0, sparse_n=8, cutoff=0.0)
    assert np.all(res3.rows <= vals.min(0) + 1e-8)
    assert res3.notes[0].startswith("time-out") and res3.stats["timed_out"]


@pytest.mark.parametrize("analysis,options", [
    ("lp", {}), ("milp", {}), ("refinezono", {"n_milp_refine": 0}), ("refinepoly", {"sparse_n": 6}),
    ("kpoly", {"k": 2, "sparse_n": 6}),
])
def test_verify_never_contradicts_pgd(analysis, options):
    g = _mlp([6, 10, 10, 4], seed=11, scale=1.5)
    rng = np.random.default_rng(3)
    found = {"verified": 0, "falsified": 0}
    n = 3
    for i in range(n):
        x0 = rng.uniform(0.2, 0.8, size=6)
        with torch.no_grad():
            label = int(g.forward(torch.as_tensor(x0[None])).argmax())
        for eps in (0.01, 0.2):
            inst = (linf_ball(x0, eps, (0.0, 1.0)), robustness_property(label, 4))
            r = absint.verify(g, inst, analysis=analysis, timeout=20, attack=False, **options)
            r_pgd = absint.verify(g, inst, analysis="box", timeout=20, attack=True, attack_budget=0.2)
            assert not (r.verified and r_pgd.falsified), (analysis, i, eps)
            found["verified"] += r.verified
            found["falsified"] += r.falsified
    assert found["verified"] > 0
    if analysis == "milp":  # complete: decides every small instance
        assert found["verified"] + found["falsified"] == 2 * n



def test_options_presets_and_overrides():
    def keys(cfg):
        return [st.key for st in cfg.pipeline.stages]

    assert "krelu" not in keys(make_config("refinepoly", {"k": 1}))
    assert "krelu" in keys(make_config("refinepoly", {"k": 3}))
    assert "krelu" not in keys(make_config("lp", {"sparse_n": 8}))  # k-ReLU settings alone do not switch it on
    o = make_config("refinepoly", {"k": 3, "sparse_n": 50, "timeout_lp": 0.5})
    assert o.pipeline.stage("krelu").krelu.sparse_n == 50 and o.pipeline.stage("krelu").krelu.k == 3
    assert o.pipeline.stage("tighten").timeout_lp == 0.5
    o = make_config("kpoly", {"sparse_n": 20, "k": 2})  # kpoly: the rows inside bound propagation
    assert keys(o) == ["domain", "slopes", "multineuron", "bab"] and "krelu" not in keys(o)
    assert o.pipeline.stage("multineuron").krelu.sparse_n == 20 and o.pipeline.stage("multineuron").krelu.k == 2
    assert make_config("refinezono", {}).domain == "deepzono"
    assert keys(make_config("refinepoly", {"give_up_below": -11, "final_bab": False}))[:4] == \
        ["domain", "slopes", "triage", "tighten"]
    assert "bab" not in keys(make_config("refinepoly", {"final_bab": False}))
    assert make_config("refinepoly", {"tighten.milp_layers": 1}).pipeline.stage("tighten").milp_layers == 1
    assert make_config("refinepoly", {"solve_threads": 2, "backend": "highs"}).solver.threads == 2
    with pytest.raises(OptionError, match="no option 'key'"):
        make_config("refinepoly", {"tighten.key": "x"})  # a stage's name is not an option
    for bad in ({"no_such_option": 1}, {"tighten.no_such": 1}, {"timeout_lp": 1.0}, {"bab.share": 0.5}):
        with pytest.raises(OptionError):
            make_config("lp", bad)  # lp has no tighten or bab stage: its options are errors, not no-ops
    # kpoly's branch and bound re-bounds one layer after each split by default; the option reaches it
    assert make_config("kpoly", {}).pipeline.stage("bab").tighten_depth == 1
    assert make_config("kpoly", {"bab.tighten_depth": None}).pipeline.stage("bab").tighten_depth is None
    with pytest.raises(OptionError, match="tighten_depth"):
        make_config("kpoly", {"bab.tighten_depth": 0})


def test_partial_milp_and_lazy_krelu_rows():
    g = _mlp([4, 12, 12, 3], seed=13)
    lo, hi = -np.ones(4), np.ones(4)
    C = np.array([[1.0, -1.0, 0.0], [0.0, 1.0, -1.0]])
    vals = _samples(g, lo, hi, 20000) @ C.T
    d = -vals.min(0) + 0.05  # true with a small margin: DeepPoly and the final LP alone cannot prove it
    opts = {"n_milp_refine": 0, "krelu_tighten": False, "sparse_n": 6, "cutoff": 0.0, "max_milp_neurons": 4,
            "final_bab": False, "alpha_iters": 0}
    res = run_preset(g, torch.as_tensor(lo[None]), torch.as_tensor(hi[None]), C, d, "refinepoly", k=3, **opts)
    assert np.all(res.rows <= (vals + d).min(0) + 1e-8)
    ran = res.stats["stage_seconds"]
    assert "final_lp" in ran and "krelu" in res.stats  # k-ReLU rows, computed for the final LP
    assert "partial_milp" in ran  # the final LP did not prove both rows: the partial MILP ran
    assert np.all(res.rows > 0)  # ... and proved them


@pytest.mark.parametrize("hull_rows", [True, False])
def test_kpoly_bab_takes_hull_rows_only_when_asked(monkeypatch, hull_rows):
    import absint.refine.final as final

    g = _mlp([4, 12, 12, 3], seed=13)
    lo, hi = -np.ones(4), np.ones(4)
    C = np.array([[1.0, -1.0, 0.0], [0.0, 1.0, -1.0]])
    d = -(_samples(g, lo, hi, 20000) @ C.T).min(0) - 0.05  # false: a sample violates each row, so BaB runs
    seen = []

    def fake_bab(*args, constraints=None, **kw):
        seen.append(constraints)
        return None  # as if BaB could not run: the stage records a skip

    monkeypatch.setattr(final, "branch_and_bound", fake_bab)
    opts = {"bab.hull_rows": hull_rows, "sparse_n": 6, "cutoff": 0.0}
    assert make_config("kpoly", opts).pipeline.stage("bab").hull_rows is hull_rows
    res = run_preset(g, torch.as_tensor(lo[None]), torch.as_tensor(hi[None]), C, d, "kpoly", **opts)
    assert len(seen) == 1 and "multineuron" in res.stats["stage_seconds"]
    if hull_rows:
        assert seen[0] and all(len(rows) == 2 for rows in seen[0].values())  # the stage's rows and multipliers
    else:
        assert seen[0] is None
    with pytest.raises(OptionError):
        make_config("kpoly", {"bab.hull_rows": "maybe"})
