"""Counterexamples are reported only if they hold in float64 *and* in float32 (issue 15).

The network below computes ``y = (x0 + x1) − x0``: at ``x = (1, 2^-30)`` float64 gives 2^-30,
float32 gives 0 (``1 + 2^-30`` rounds to 1). The property ``y < 2^-31`` (violation: ``y ≥ 2^-31``)
is violated in float64 and in real arithmetic, but not by the float32 network.
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import absint
from absint.ir import Affine, Graph, Input
from absint.linear import DenseOperator
from absint.recheck import float32_point, recheck
from absint.specs import Clause, InputBox, Instance, OutputProperty

W1 = np.array([[1.0, 1.0], [1.0, 0.0]])
W2 = np.array([[1.0, -1.0]])
X = np.array([1.0, 2.0 ** -30])


def _onnx_bytes() -> bytes:
    nodes = [helper.make_node("Gemm", ["x", "w1"], ["h"], transB=1), helper.make_node("Gemm", ["h", "w2"], ["y"], transB=1)]
    inits = [numpy_helper.from_array(W1.astype(np.float32), "w1"), numpy_helper.from_array(W2.astype(np.float32), "w2")]
    g = helper.make_graph(nodes, "cancel", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString()


def _ir_graph() -> Graph:
    t = lambda a: torch.as_tensor(a, dtype=torch.float64)  # noqa: E731
    return Graph((Input("x", (), (2,)), Affine("h", ("x",), (2,), DenseOperator(t(W1)), None),
                  Affine("y", ("h",), (1,), DenseOperator(t(W2)), None)), "y")


def _prop(threshold: float) -> OutputProperty:
    return OutputProperty((Clause(np.array([[1.0]]), np.array([-threshold])),), 1)  # violation: y ≥ threshold


@pytest.mark.parametrize("graph", [_ir_graph(), absint.load_network(_onnx_bytes())], ids=["ir", "onnx"])
def test_counterexample_that_float32_does_not_reproduce_is_rejected(graph):
    region = InputBox(X, X)
    r = recheck(graph, region, _prop(2.0 ** -31), X)
    assert not r.ok and "float32" in r.reason
    assert r.y[0] == 2.0 ** -30 and r.y32[0] == 0.0
    # a violation that both evaluations see is accepted (and says which float32 evaluation ran)
    r = recheck(graph, region, _prop(-1.0), X)
    assert r.ok and r.how == ("onnxruntime" if "onnx_source" in graph.meta else "torch float32")


def test_verify_does_not_report_a_float64_only_counterexample():
    graph = absint.load_network(_onnx_bytes())
    res = absint.verify(graph, Instance(InputBox(X, X), _prop(2.0 ** -31)), analysis="box")
    assert not res.falsified


def test_counterexamples_are_float32_points_inside_the_box():
    region = InputBox(np.array([0.1, -1.0]), np.array([0.1 + 1e-7, 1.0]))
    x = float32_point(np.array([0.1 + 5e-8, 0.3]), region)
    assert x is not None and np.all(x.astype(np.float32).astype(np.float64) == x)
    assert region.contains(x)
    # an interval with no float32 number in it has no float32 counterexample
    assert float32_point(np.array([0.1 + 5e-10]), InputBox(np.array([0.1 + 1e-10]), np.array([0.1 + 2e-10]))) is None
