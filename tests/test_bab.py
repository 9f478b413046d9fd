"""Branch and bound (absint.bab): soundness against sampling on small random networks, exact DNF
handling, the memory bound, time-outs, ReLU splitting, workers, registration."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import absint  # noqa: F401  (import order: absint before domains)
from absint.analyses import get_analysis
from absint.bab import BabAnalysis, BabOptions
from absint.verify import verify_bab
from absint.bab.queue import SubproblemQueue
from absint.ir import Affine, Graph, Input, Relu
from absint.linear import DenseOperator
from absint.specs import Clause, Instance, InputBox, OutputProperty
from absint.testing import random_mlp
from absint.verify import verify

F64 = torch.float64


def mlp(seed: int, sizes=(2, 16, 16, 2)) -> Graph:
    return random_mlp(seed, sizes)


def grid_min(graph: Graph, box: InputBox, n: int = 201) -> float:
    """min of y0 − y1 on a dense grid (2-D inputs)."""
    axes = [np.linspace(lo, hi, n) for lo, hi in zip(box.lower, box.upper)]
    pts = np.stack(np.meshgrid(*axes), -1).reshape(-1, len(axes))
    with torch.no_grad():
        y = graph.forward(torch.as_tensor(pts)).numpy()
    return float((y[:, 0] - y[:, 1]).min())


def threshold_prop(t: float) -> OutputProperty:
    """Holds iff y0 − y1 > t everywhere (violation: y1 − y0 + t ≥ 0)."""
    return OutputProperty((Clause(np.array([[-1.0, 1.0]]), np.array([t])),), 2)


BOX = InputBox(np.array([-1.0, -1.0]), np.array([1.0, 1.0]))
#: Decide without a wall clock (a loaded machine only makes the test slower, never different); the
#: node budget ends a search that would not decide.
NO_CLOCK = {"timeout": None, "max_nodes": 100_000}


@pytest.mark.parametrize("heuristic", ["smear", "lookahead", "portfolio"])
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("domain", ["box", "deeppoly"])
def test_verifies_true_and_falsifies_false_properties(seed, domain, heuristic):
    g = mlp(seed)
    m = grid_min(g, BOX)
    # Holds with a margin (dense grid + Lipschitz-free slack): must be verified by input splitting.
    r = verify_bab(g, Instance(BOX, threshold_prop(m - 0.05)), **NO_CLOCK, domain=domain, input_heuristic=heuristic)
    assert r.verified, r.reason
    assert r.details["proved_fraction"] == pytest.approx(1.0)  # halves closed by a look-ahead count too
    # Violated at a grid point: never verified, and falsified with a checked counterexample.
    r = verify_bab(g, Instance(BOX, threshold_prop(m + 0.02)), **NO_CLOCK, domain=domain, attack=False,
                   input_heuristic=heuristic)
    assert r.falsified, r.reason
    y = g.forward(torch.as_tensor(r.counterexample[None])).numpy()[0]
    assert y[0] - y[1] <= m + 0.02


@pytest.mark.parametrize("heuristic", ["smear", "lookahead", "portfolio"])
@pytest.mark.parametrize("seed", range(6))
def test_never_verified_where_sampling_finds_a_counterexample(seed, heuristic):
    """Thresholds just above the sampled minimum: BaB without any attack must not say verified."""
    g = mlp(10 + seed)
    m = grid_min(g, BOX, 101)
    C, d, owner = threshold_prop(m + 1e-3).stacked()
    an = BabAnalysis(domain="deeppoly", attack=False, max_depth=24, input_heuristic=heuristic, max_nodes=20_000)
    res = an.search(g, BOX, C, d, owner)
    assert res.status != "verified"
    assert res.clause_min[0] <= 0


def _switch_net() -> Graph:
    """y0 = −0.1, y1 = x, y2 = −x on x ∈ [−1, 1]: "y0 is never the maximum" holds, but no single
    row (y1 > y0 or y2 > y0) holds on the whole box — the DNF clause needs different rows on
    different sub-boxes."""
    w1 = torch.tensor([[1.0], [-1.0]], dtype=F64)
    w2 = torch.tensor([[0.0, 0.0], [1.0, -1.0], [-1.0, 1.0]], dtype=F64)
    b2 = torch.tensor([-0.1, 0.0, 0.0], dtype=F64)
    return Graph((Input("x", (), (1,)), Affine("fc0", ("x",), (2,), DenseOperator(w1), None),
                  Relu("r0", ("fc0",), (2,)), Affine("fc1", ("r0",), (3,), DenseOperator(w2), b2)), "fc1")


def test_dnf_clause_refuted_by_different_rows():
    g = _switch_net()
    prop = OutputProperty((Clause(np.array([[1.0, -1.0, 0.0], [1.0, 0.0, -1.0]]), np.zeros(2)),), 3)
    inst = Instance(InputBox(np.array([-1.0]), np.array([1.0])), prop)
    r = verify_bab(g, inst, **NO_CLOCK, domain="box")
    assert r.verified, r.reason
    assert r.details["clause_lower"][0] > 0
    # The generic verify() passes each row's clause to clause-aware analyses, so it proves it too.
    r2 = verify(g, inst, analysis=BabAnalysis(domain="box", max_depth=12, max_nodes=100_000), attack_budget=0.1)
    assert r2.verified, r2.reason
    assert r2.margin > 0


def test_queue_never_exceeds_its_bound():
    q = SubproblemQueue(5)
    q.push({"depth": torch.zeros(3, dtype=torch.int32), "priority": torch.arange(3.0)})
    with pytest.raises(OverflowError):
        q.push({"depth": torch.zeros(3, dtype=torch.int32), "priority": torch.arange(3.0)})
    assert q.pop(2)["priority"].tolist() == [0.0, 1.0]
    # A search that cannot finish within a tiny queue stops with "memory", queue ≤ max throughout.
    g = mlp(3)
    m = grid_min(g, BOX, 101)
    C, d, owner = threshold_prop(m - 1e-4).stacked()
    an = BabAnalysis(domain="box", max_queue=16, batch_size=8, attack=False)
    res = an.search(g, BOX, C, d, owner, deadline=None)
    assert res.stats["peak_queue"] <= 16
    assert res.status in ("memory", "verified")


def test_node_budget_gives_unknown_with_partial_results(bench):
    acas = bench / "acasxu"
    r = verify_bab(acas / "onnx/ACASXU_run2a_3_3_batch_2000.onnx", acas / "vnnlib/prop_2.vnnlib",
                   input_heuristic="smear", max_nodes=400)
    assert r.verdict is absint.Verdict.UNKNOWN
    assert "bab budget after" in r.reason and "% of the input volume proved" in r.reason
    assert 0 < r.details["proved_fraction"] < 1 and r.details["bounded"] == 400


def test_timeout_gives_unknown_and_says_what_was_done(bench):
    acas = bench / "acasxu"
    net = absint.load_network(acas / "onnx/ACASXU_run2a_3_3_batch_2000.onnx")
    r = verify_bab(net, acas / "vnnlib/prop_2.vnnlib", timeout=1.0, input_heuristic="smear")
    assert r.verdict is absint.Verdict.UNKNOWN  # unsat, but far beyond 1 s
    assert r.reason.startswith("time-out after") and "(limit 1 s)" in r.reason
    assert "specification parsed" in r.reason


def test_portfolio_decides_what_one_heuristic_alone_is_slow_on(bench):
    """ACAS Xu 5_5 prop_1: smear needs ~5600 sub-boxes, the look-ahead ~100 (+ ~1000 look-ahead
    bounds); the portfolio answers with whichever finishes first and says which."""
    acas = bench / "acasxu"
    net, spec = acas / "onnx/ACASXU_run2a_5_5_batch_2000.onnx", acas / "vnnlib/prop_1.vnnlib"
    la = verify_bab(net, spec, **NO_CLOCK, input_heuristic="lookahead")
    assert la.verified, la.reason
    assert la.details["bounded"] < 1000 and la.details["proved_fraction"] == pytest.approx(1.0)
    pf = verify_bab(net, spec, **NO_CLOCK)
    assert pf.verified, pf.reason
    assert pf.details["heuristic"] in ("smear", "lookahead")


# (net, property, truth): quick ACAS Xu instances (truth.csv), unsat = verified.
ACAS = [("1_1", "prop_1", "unsat"), ("2_1", "prop_2", "sat"), ("1_9", "prop_3", "sat"),
        ("2_1", "prop_3", "unsat"), ("1_7", "prop_4", "sat")]


@pytest.mark.parametrize("net,prop,truth", ACAS)
def test_acasxu_matches_truth(bench, net, prop, truth):
    acas = bench / "acasxu"
    r = verify_bab(acas / f"onnx/ACASXU_run2a_{net}_batch_2000.onnx", acas / f"vnnlib/{prop}.vnnlib", **NO_CLOCK)
    assert r.verified == (truth == "unsat") and r.falsified == (truth == "sat"), r.reason


def test_registered_and_usable_through_verify(bench):
    an = get_analysis("bab")
    assert an.complete and isinstance(an, BabAnalysis)
    acas = bench / "acasxu"
    r = verify(acas / "onnx/ACASXU_run2a_1_1_batch_2000.onnx", acas / "vnnlib/prop_1.vnnlib", analysis="bab",
               max_nodes=100_000)
    assert r.verified, r.reason


def test_relu_splitting_agrees_with_input_splitting():
    g = mlp(7, sizes=(3, 12, 12, 2))
    box = InputBox(-np.ones(3), np.ones(3))
    with torch.no_grad():
        pts = torch.as_tensor(box.sample(20000, np.random.default_rng(0)))
        y = g.forward(pts).numpy()
    m = float((y[:, 0] - y[:, 1]).min())
    for t, want in [(m - 0.3, True), (m + 0.01, False)]:
        inst = Instance(box, threshold_prop(t))
        ri = verify_bab(g, inst, **NO_CLOCK, split="input")
        rr = verify_bab(g, inst, **NO_CLOCK, split="relu")
        assert ri.verified == want and not (rr.verified and not want)
        if want:
            assert rr.verified or rr.verdict is absint.Verdict.UNKNOWN
        else:
            assert ri.falsified and rr.falsified


def test_workers_split_the_search():
    g = mlp(4)
    m = grid_min(g, BOX)
    r = verify_bab(g, Instance(BOX, threshold_prop(m - 0.05)), **NO_CLOCK, workers=2, batch_size=16)
    assert r.verified, r.reason


def test_options_are_validated():
    with pytest.raises(ValueError):
        BabOptions(split="middle")
    assert BabAnalysis(split="relu").split_mode(mlp(0)) == "relu"
    assert BabAnalysis().split_mode(mlp(0)) == "input"
