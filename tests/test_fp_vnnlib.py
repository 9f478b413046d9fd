"""Floating-point soundness through the VNN-LIB 2.0 path (``absint-vnnlib``'s :func:`solve`, issue 15).

* Queries whose real answer is ``sat`` at a point (the exact rational oracle says so) are never
  answered ``unsat``, however the float64 evaluation rounds: issue 15's 2^40-weights layer and
  scaled random MLPs with the threshold at the exact output.
* A ``sat`` assignment is re-checked in float64 and in float32 by the re-run every counterexample
  gets (:mod:`absint.recheck`: onnxruntime on the ONNX file with hidden tensors exposed, float32
  torch without it).
"""
from __future__ import annotations

import math
from decimal import Decimal
from fractions import Fraction

import numpy as np
import pytest
from onnx import helper

import absint
from absint.exact import exact_forward
from absint.vnnlib import read_query
from absint.vnnlib.lowering import lower_query
from absint.vnnlib.solver import bind_all, evaluate, solve
from onnx_builders import mlp, model, save

V2 = "(vnnlib-version <2.0>)\n"


def _exact(v: float) -> str:
    """The float ``v`` written as its exact decimal expansion (no parser rounding involved)."""
    s = format(Decimal(v), "f")
    return s if "." in s else s + ".0"


def _point(name: str, x: np.ndarray) -> str:
    cons = " ".join(f"(>= {name}[0,{i}] {_exact(float(v))}) (<= {name}[0,{i}] {_exact(float(v))})"
                    for i, v in enumerate(x))
    return f"(assert (and {cons}))\n"


def _query(tmp_path, n_in: int, n_out: int, x: np.ndarray, violation: str) -> str:
    q = tmp_path / "q.vnnlib"
    q.write_text(V2 + f"(declare-network f (declare-input X real [1,{n_in}]) (declare-output Y real [1,{n_out}]))\n"
                 + _point("X", x) + violation)
    return str(q)


def _big_weights(tmp_path) -> str:
    """y = 2^40 (x0 + x1 + x2) as an ONNX Gemm (2^40 is a float32)."""
    nodes = [helper.make_node("Gemm", ["x", "w"], ["y"], transB=1)]
    return save(model(nodes, [("x", [1, 3])], [("y", [1, 1])], {"w": [[2.0 ** 40] * 3]}), tmp_path / "big.onnx")


@pytest.mark.parametrize("analysis", ["box", "deeppoly", "bab"])
def test_big_weights_query_is_never_unsat(tmp_path, analysis):
    # At x = (1, −1, −2^-54) the real y is −2^-14, float64 evaluation gives 0: "y ≤ −2^-15" is
    # satisfiable in real arithmetic, so unsat would be a wrong proof.
    x = np.array([1.0, -1.0, -2.0 ** -54])
    net = _big_weights(tmp_path)
    y = exact_forward(absint.load_network(net), x)[0][0]
    assert y == Fraction(-1, 2 ** 14)
    q = _query(tmp_path, 3, 1, x, f"(assert (<= Y[0,0] {_exact(-2.0 ** -15)}))\n")
    ans = solve(q, {"f": net}, analysis=analysis, attack=True)
    assert ans.status != "unsat", ans.reason
    if ans.status == "sat":  # only with a point both float64 and float32 agree on
        assert float(ans.assignment["Y"].item()) <= -2.0 ** -15


@pytest.mark.parametrize("seed,scale", [(0, 1e4), (1, 1e-5), (2, 1e8)])
def test_threshold_at_the_exact_output_is_never_unsat(tmp_path, seed, scale):
    # y0(x) ≤ t with t the smallest float ≥ the exact y0(x): satisfiable in real arithmetic.
    rng = np.random.default_rng(seed)
    f32 = lambda *s: (rng.standard_normal(s) * scale).astype(np.float32).astype(np.float64)  # noqa: E731
    net = save(mlp(f32(10, 3), f32(10), f32(2, 10), f32(2)), tmp_path / "m.onnx")
    x = rng.uniform(-1, 1, 3).astype(np.float32).astype(np.float64)
    y0 = exact_forward(absint.load_network(net), x)[0][0]
    t = float(y0)
    if Fraction(t) < y0:
        t = math.nextafter(t, math.inf)
    q = _query(tmp_path, 3, 2, x, f"(assert (<= Y[0,0] {_exact(t)}))\n")
    for analysis in ("box", "deeppoly", "bab"):
        ans = solve(q, {"f": net}, analysis=analysis, attack=False)
        assert ans.status != "unsat", (analysis, ans.reason)


def test_sat_assignments_are_rechecked_in_float32_with_hidden_nodes(tmp_path):
    # h = (x0 + x1, x0), y = h0 − h1: at x = (1, 2^-30) float64 gives y = 2^-30, float32 gives 0
    # (1 + 2^-30 rounds to 1), both for onnxruntime and for the float32 torch re-run.
    nodes = [helper.make_node("Gemm", ["x", "w1"], ["h"], transB=1), helper.make_node("Gemm", ["h", "w2"], ["y"], transB=1)]
    net = save(model(nodes, [("x", [1, 2])], [("y", [1, 1])], {"w1": [[1.0, 1.0], [1.0, 0.0]], "w2": [[1.0, -1.0]]},
                     value_info=[("h", [1, 2])]), tmp_path / "cancel.onnx")
    x = np.array([1.0, 2.0 ** -30])
    q = tmp_path / "q.vnnlib"
    q.write_text(V2 + "(declare-network f (declare-input X real [1,2]) (declare-hidden H real [1,2] \"h\")"
                 " (declare-output Y real [1,1]))\n" + _point("X", x) + f"(assert (>= Y[0,0] {_exact(2.0 ** -31)}))\n")
    query = read_query(q)
    lowered = lower_query(query)
    bound = bind_all(query, {"f": net})
    z = lowered.spec.instances[0].region.lower
    for use_ort in (True, False):
        values, (values32,) = evaluate(query, lowered, bound, z, use_onnxruntime=use_ort)
        assert query.holds(values) and not query.holds(values32)
        h, y = query.variables[1], query.variables[2]
        assert values[h.offset] == 1.0 + 2.0 ** -30 and values32[h.offset] == 1.0
        assert values[y.offset] == 2.0 ** -30 and values32[y.offset] == 0.0
    # end to end: the violation holds in real arithmetic and float64 only, never reported as sat
    assert solve(q, {"f": net}, analysis="bab").status == "unknown"
