"""VNN-LIB 2.0 semantics end to end, on tiny ONNX models with known answers: several inputs and
outputs, hidden nodes, two networks (equivalence, monotonicity), linear input constraints,
disjunctions, strict and != comparisons. Every sat answer's assignment is checked here again."""
from __future__ import annotations

import numpy as np
import pytest

from absint.errors import QueryContractError
from absint.vnnlib import read_query
from absint.vnnlib.lowering import lower_query
from absint.vnnlib.solver import solve
from onnx_builders import mlp, save, two_in_two_out

V2 = "(vnnlib-version <2.0>)\n"
W1 = [[1.0, -1.0], [0.5, 1.0], [-1.0, 0.25]]
B1 = [0.0, -0.25, 0.1]
W2 = [[1.0, -2.0, 0.5], [-1.0, 1.0, 1.0]]
B2 = [0.1, -0.2]


def _net(x: np.ndarray, w1=W1, b1=B1, w2=W2, b2=B2) -> tuple[np.ndarray, np.ndarray]:
    h = np.maximum(np.asarray(w1) @ x + b1, 0.0)
    return h, np.asarray(w2) @ h + b2


def _ask(tmp_path, text: str, networks: dict, analysis: str = "bab", **kw):
    """solve() without a time limit (the queries are small enough for bab to decide)."""
    q = tmp_path / "q.vnnlib"
    q.write_text(V2 + text)
    ans = solve(q, networks, analysis=analysis, **kw)
    if ans.status == "sat":  # every declared variable present, in its declared shape
        query = read_query(q)
        assert [v.name for v in query.variables] == list(ans.assignment)
        for v in query.variables:
            assert ans.assignment[v.name].shape == v.shape
    return ans


@pytest.fixture()
def f_model(tmp_path):
    return save(mlp(W1, B1, W2, B2), tmp_path / "f.onnx")


def test_multiple_inputs_and_outputs_by_order_and_by_name(tmp_path):
    path = save(two_in_two_out(), tmp_path / "m.onnx")
    decl = ("(declare-network m (declare-input A real [1,2]) (declare-input B real [1,1])"
            " (declare-output S real [1,1]) (declare-output D real [1,1]))\n")
    box = ("(assert (and (>= A[0,0] 0.0) (<= A[0,0] 1.0) (>= A[0,1] 0.0) (<= A[0,1] 1.0)"
           " (>= B[0,0] 0.0) (<= B[0,0] 1.0)))\n")
    # s = relu(a0 + a1 + 2b) <= 4 on the box, d = a0 - a1 in [-1, 1].
    assert _ask(tmp_path, decl + box + "(assert (> S[0,0] 4.001))", {"m": path}).status == "unsat"
    ans = _ask(tmp_path, decl + box + "(assert (and (>= S[0,0] 3.5) (>= D[0,0] 0.4)))", {"m": path})
    assert ans.status == "sat"
    a, b = ans.assignment["A"].reshape(-1), ans.assignment["B"].reshape(-1)
    assert ans.assignment["S"].item() == pytest.approx(max(a.sum() + 2 * b[0], 0.0))
    assert ans.assignment["D"].item() == pytest.approx(a[0] - a[1])
    # Inputs and outputs bind to the model's by declaration order (the 2.0 grammar names only hidden
    # nodes); a declaration with a different number of them is a clear error.
    from absint.errors import ModelError

    one_in = "(declare-network m (declare-input A real [1,2]) (declare-output S real [1,1]) (declare-output D real [1,1]))\n"
    with pytest.raises(ModelError, match="declares 1 input"):
        _ask(tmp_path, one_in + "(assert (>= A[0,0] 0.0))", {"m": path})


def test_hidden_node_constraints(tmp_path, f_model):
    decl = "(declare-network f (declare-input X real [1,2]) (declare-hidden H real [1,3] \"h\") (declare-output Y real [1,2]))\n"
    box = "(assert (and (>= X[0,0] -1.0) (<= X[0,0] 1.0) (>= X[0,1] -1.0) (<= X[0,1] 1.0)))\n"
    # h0 = relu(x0 - x1) <= 2 and h2 = relu(-x0 + x1/4 + 0.1) <= 1.35.
    assert _ask(tmp_path, decl + box + "(assert (> H[0,0] 2.001))", {"f": f_model}).status == "unsat"
    assert _ask(tmp_path, decl + box + "(assert (> (+ H[0,2] H[0,0]) 2.5))", {"f": f_model}).status == "unsat"
    ans = _ask(tmp_path, decl + box + "(assert (and (>= H[0,0] 1.5) (<= H[0,1] 0.0)))", {"f": f_model})
    assert ans.status == "sat"
    h, y = _net(ans.assignment["X"].reshape(-1))
    assert np.allclose(ans.assignment["H"].reshape(-1), h) and np.allclose(ans.assignment["Y"].reshape(-1), y)
    assert h[0] >= 1.5 and h[1] <= 0.0
    # A comparison between a hidden node and an output (multi-node comparison, MNC): the max of
    # y0 - h0 over the box from a 201x201 grid is within 0.02 of the true one (Lipschitz bound).
    grid = np.stack(np.meshgrid(np.linspace(-1, 1, 201), np.linspace(-1, 1, 201)), -1).reshape(-1, 2)
    best = max(_net(x)[1][0] - _net(x)[0][0] for x in grid)
    above = f"(assert (> Y[0,0] (+ H[0,0] {best + 0.05:.4f})))"
    below = f"(assert (> Y[0,0] (+ H[0,0] {best - 0.05:.4f})))"
    assert _ask(tmp_path, decl + box + above, {"f": f_model}).status == "unsat"
    assert _ask(tmp_path, decl + box + below, {"f": f_model}).status == "sat"


def test_equivalence_of_equal_networks_and_of_different_ones(tmp_path, f_model):
    g_model = save(mlp(W1, B1, np.asarray(W2) + [[0.0, 0.0, 0.3], [0.0, 0.0, 0.0]], B2), tmp_path / "g.onnx")
    decl = ("(declare-network f (declare-input X real [1,2]) (declare-output Y real [1,2]))\n"
            "(declare-network g (declare-input A real [1,2]) (declare-output B real [1,2]))\n")
    tie = ("(assert (and (>= X[0,0] -1.0) (<= X[0,0] 1.0) (>= X[0,1] -1.0) (<= X[0,1] 1.0)"
           " (== X[0,0] A[0,0]) (== A[0,1] X[0,1])))\n")
    differ = "(assert (or (> (- Y[0,0] B[0,0]) 0.001) (> (- B[0,0] Y[0,0]) 0.001)))\n"
    # The same model twice: outputs never differ (the product graph shares the input).
    assert _ask(tmp_path, decl + tie + differ, {"f": f_model, "g": f_model}).status == "unsat"
    lowered = lower_query(read_query(tmp_path / "q.vnnlib"))
    assert lowered.layout.n_free == 2 and len(lowered.layout.exposed) == 0
    # A changed weight on h2 (h2 > 0.001/0.3 somewhere): a checked counterexample.
    ans = _ask(tmp_path, decl + tie + differ, {"f": f_model, "g": g_model})
    assert ans.status == "sat"
    x, a = ans.assignment["X"].reshape(-1), ans.assignment["A"].reshape(-1)
    assert np.array_equal(x, a)
    assert abs(_net(x)[1][0] - (_net(x, w2=np.asarray(W2) + [[0, 0, 0.3], [0, 0, 0]])[1][0])) > 0.001
    # equal-to: the second network takes no model of its own.
    eq = decl.replace("(declare-network g ", "(declare-network g (equal-to f) ")
    assert _ask(tmp_path, eq + tie + differ, {"f": f_model}).status == "unsat"
    with pytest.raises(QueryContractError) as err:
        _ask(tmp_path, eq + tie + differ, {"f": f_model, "g": g_model})
    assert err.value.condition == 1


def test_monotonicity_of_a_monotone_network(tmp_path):
    # y = relu(x) + 2 relu(x - 0.5): increasing. Two copies (equal-to), x <= a kept as a constraint row.
    up = save(mlp([[1.0], [1.0]], [0.0, -0.5], [[1.0, 2.0]], [0.0]), tmp_path / "up.onnx")
    decl = ("(declare-network f (declare-input X real [1,1]) (declare-output Y real [1,1]))\n"
            "(declare-network g (equal-to f) (declare-input A real [1,1]) (declare-output B real [1,1]))\n")
    box = "(assert (and (>= X[0,0] 0.0) (<= X[0,0] 1.0) (>= A[0,0] 0.0) (<= A[0,0] 1.0)))\n(assert (<= X[0,0] A[0,0]))\n"
    assert _ask(tmp_path, decl + box + "(assert (> Y[0,0] (+ B[0,0] 0.1)))\n", {"f": up}).status == "unsat"
    ans = _ask(tmp_path, decl + box + "(assert (< (+ Y[0,0] 1.0) B[0,0]))\n", {"f": up})
    assert ans.status == "sat"
    assert ans.assignment["X"].item() <= ans.assignment["A"].item()
    assert ans.assignment["Y"].item() + 1.0 < ans.assignment["B"].item()


def test_linear_input_constraints_are_kept_beyond_the_box(tmp_path):
    ident = save(mlp([[1.0, 0.0], [0.0, 1.0]], [0.0, 0.0], [[1.0, 1.0]], [0.0]), tmp_path / "sum.onnx")
    decl = "(declare-network f (declare-input X real [1,2]) (declare-output Y real [1,1]))\n"
    box = "(assert (and (>= X[0,0] 0.0) (<= X[0,0] 1.0) (>= X[0,1] 0.0) (<= X[0,1] 1.0)))\n"
    # On the box y = x0 + x1 reaches 2; with x0 + x1 <= 1 kept as a constraint it cannot pass 1.
    assert _ask(tmp_path, decl + box + "(assert (>= Y[0,0] 1.5))", {"f": ident}).status == "sat"
    q = decl + box + "(assert (<= (+ X[0,0] X[0,1]) 1.0))\n(assert (>= Y[0,0] 1.5))\n"
    assert _ask(tmp_path, q, {"f": ident}).status == "unsat"
    lowered = lower_query(read_query(tmp_path / "q.vnnlib"))
    assert not lowered.layout.trivial and list(lowered.layout.exposed) == [0, 1]
    ans = _ask(tmp_path, decl + box + "(assert (<= (+ X[0,0] X[0,1]) 1.0))\n(assert (>= Y[0,0] 0.999))\n",
               {"f": ident})
    assert ans.status == "sat" and ans.assignment["X"].sum() <= 1.0


def test_disjunctions_strictness_and_not_equal(tmp_path):
    ident = save(mlp([[1.0]], [0.0], [[1.0]], [0.0]), tmp_path / "relu.onnx")  # y = relu(x)
    decl = "(declare-network f (declare-input X real [1]) (declare-output Y real [1]))\n"
    box = "(assert (and (>= X[0] -1.0) (<= X[0] 1.0)))\n"
    assert _ask(tmp_path, decl + box + "(assert (or (>= Y[0] 1.5) (<= Y[0] -0.5)))", {"f": ident}).status == "unsat"
    ans = _ask(tmp_path, decl + box + "(assert (or (>= Y[0] 1.5) (and (<= Y[0] 0.0) (>= X[0] 0.5))))", {"f": ident})
    assert ans.status == "unsat"
    # Input disjunction: two boxes, the second one reaches y >= 0.9.
    two = decl + "(assert (or (and (>= X[0] -1.0) (<= X[0] -0.5)) (and (>= X[0] 0.5) (<= X[0] 1.0))))\n"
    assert _ask(tmp_path, two + "(assert (>= Y[0] 0.9))", {"f": ident}).status == "sat"
    assert _ask(tmp_path, two + "(assert (and (>= Y[0] 0.1) (<= Y[0] 0.4)))", {"f": ident}).status == "unsat"
    # y > 1 is unsatisfiable though its relaxation y >= 1 is not: never 'sat' (the check is exact).
    assert _ask(tmp_path, decl + box + "(assert (> Y[0] 1.0))", {"f": ident}).status in ("unsat", "unknown")
    assert _ask(tmp_path, decl + box + "(assert (>= Y[0] 1.0))", {"f": ident}).status == "sat"
    # != is relaxed to true for proofs and checked exactly for assignments.
    ans = _ask(tmp_path, decl + box + "(assert (and (!= Y[0] 0.0) (>= X[0] 0.5)))", {"f": ident})
    assert ans.status == "sat" and ans.assignment["Y"].item() != 0.0
    assert _ask(tmp_path, decl + box + "(assert (and (!= X[0] 0.0) (>= Y[0] 2.0)))", {"f": ident}).status == "unsat"


def test_infeasible_inputs_and_out_of_model_errors(tmp_path, f_model):
    decl = "(declare-network f (declare-input X real [1,2]) (declare-output Y real [1,2]))\n"
    empty = "(assert (and (>= X[0,0] 1.0) (<= X[0,0] 0.0) (>= X[0,1] 0.0) (<= X[0,1] 1.0)))\n(assert (>= Y[0,0] 0.0))"
    assert _ask(tmp_path, decl + empty, {"f": f_model}).status == "unsat"
    from absint.errors import ModelError, SpecError

    with pytest.raises(ModelError, match="declared \\[1, 3\\]"):
        _ask(tmp_path, decl.replace("[1,2]))", "[1,3]))").replace("X real [1,2]", "X real [1,3]")
             + "(assert (>= X[0,0] 0.0))", {"f": f_model})
    hidden = "(declare-network f (declare-input X real [1,2]) (declare-hidden H real [1,3] \"nope\") (declare-output Y real [1,2]))\n"
    with pytest.raises(ModelError, match="no tensor named 'nope'"):
        _ask(tmp_path, hidden + "(assert (>= H[0,0] 0.0))", {"f": f_model})
    with pytest.raises(SpecError, match="lack a lower or upper bound"):
        _ask(tmp_path, decl + "(assert (>= X[0,0] 0.0))\n(assert (>= Y[0,0] 0.0))", {"f": f_model})
