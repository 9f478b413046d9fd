"""Per-operator VNN-LIB 2.0 queries with known answers.

Each tiny model applies one ONNX operator (with the plumbing it needs) to an input in [-1, 1]^4 and
ends in a positive weighted sum, so the whole network is monotone increasing in every input: its
maximum over the box is exactly its value at the upper corner. ``y > max + 0.01`` must be
``unsat`` and ``y >= max - 0.01`` ``sat`` (with a checked assignment). Every operator of the
loader's table that can carry an input-dependent tensor is covered.
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from absint.frontends.onnx_loader import OP_HANDLERS
from absint.vnnlib.solver import solve
from onnx_builders import model, save

X4 = ("x", [1, 1, 2, 2])


def _head(op_nodes, out: str, n: int, inits: dict):
    """Flatten ``out`` ([1, ...] with ``n`` elements) and sum it with weights 1, 0.5, 0.25, ..."""
    nodes = list(op_nodes) + [helper.make_node("Flatten", [out], ["flat"], axis=1),
                              helper.make_node("Gemm", ["flat", "wout", "bout"], ["y"], transB=1)]
    inits = {**inits, "wout": [[0.5 ** i for i in range(n)]], "bout": [0.1]}
    return model(nodes, [X4], [("y", [1, 1])], inits)


def _node(op, ins, outs, **attrs):
    return helper.make_node(op, ins, outs, **attrs)


CASES = {
    "Gemm": lambda: model([_node("Flatten", ["x"], ["f"], axis=1), _node("Gemm", ["f", "w", "b"], ["y"], transB=1)],
                          [X4], [("y", [1, 1])], {"w": [[1.0, 0.5, 2.0, 0.25]], "b": [-0.3]}),
    "MatMul": lambda: model([_node("Flatten", ["x"], ["f"], axis=1), _node("MatMul", ["f", "w"], ["y"])],
                            [X4], [("y", [1, 1])], {"w": [[1.0], [0.5], [2.0], [0.25]]}),
    "Add": lambda: _head([_node("Add", ["x", "c"], ["a"]), _node("Relu", ["a"], ["r"]), _node("Add", ["a", "r"], ["o"])],
                         "o", 4, {"c": np.full((1, 1, 2, 2), 0.2)}),
    "Sub": lambda: _head([_node("Sub", ["x", "c"], ["o"])], "o", 4, {"c": [0.5]}),
    "Mul": lambda: _head([_node("Mul", ["x", "c"], ["o"])], "o", 4, {"c": [[[[1.0, 2.0], [0.5, 3.0]]]]}),
    "Div": lambda: _head([_node("Div", ["x", "c"], ["o"])], "o", 4, {"c": [4.0]}),
    "Neg": lambda: _head([_node("Neg", ["x"], ["n"]), _node("Relu", ["n"], ["r"]), _node("Neg", ["r"], ["o"])],
                         "o", 4, {}),
    "Relu": lambda: _head([_node("Relu", ["x"], ["o"])], "o", 4, {}),
    "Sigmoid": lambda: _head([_node("Sigmoid", ["x"], ["o"])], "o", 4, {}),
    "Tanh": lambda: _head([_node("Tanh", ["x"], ["o"])], "o", 4, {}),
    "Identity": lambda: _head([_node("Identity", ["x"], ["o"])], "o", 4, {}),
    "Dropout": lambda: _head([_node("Dropout", ["x"], ["o"])], "o", 4, {}),
    "Cast": lambda: _head([_node("Cast", ["x"], ["o"], to=TensorProto.FLOAT)], "o", 4, {}),
    "Constant": lambda: _head([_node("Constant", [], ["c"], value=onnx.numpy_helper.from_array(
        np.array([0.7], dtype=np.float32))), _node("Mul", ["x", "c"], ["o"])], "o", 4, {}),
    "Flatten": lambda: _head([_node("Flatten", ["x"], ["o"], axis=1)], "o", 4, {}),
    "Reshape": lambda: _head([_node("Reshape", ["x", "s"], ["o"])], "o", 4, {"s": np.array([1, 4, 1])}),
    "Squeeze": lambda: _head([_node("Squeeze", ["x", "ax"], ["o"])], "o", 4, {"ax": np.array([1])}),
    "Unsqueeze": lambda: _head([_node("Unsqueeze", ["x", "ax"], ["o"])], "o", 4, {"ax": np.array([4])}),
    "Transpose": lambda: _head([_node("Transpose", ["x"], ["o"], perm=[0, 1, 3, 2])], "o", 4, {}),
    "Conv": lambda: _head([_node("Conv", ["x", "k", "kb"], ["o"], pads=[1, 1, 1, 1])], "o", 18,
                          {"k": np.full((2, 1, 2, 2), 0.5), "kb": [0.1, -0.2]}),
    "MaxPool": lambda: _head([_node("MaxPool", ["x"], ["o"], kernel_shape=[2, 2], strides=[1, 1],
                                    pads=[1, 1, 1, 1])], "o", 9, {}),
    "AveragePool": lambda: _head([_node("AveragePool", ["x"], ["o"], kernel_shape=[2, 2], strides=[1, 1],
                                        pads=[1, 1, 1, 1])], "o", 9, {}),
    "GlobalAveragePool": lambda: _head([_node("GlobalAveragePool", ["x"], ["o"])], "o", 1, {}),
    "BatchNormalization": lambda: _head([_node("BatchNormalization", ["x", "g", "b", "m", "v"], ["o"])], "o", 4,
                                        {"g": [2.0], "b": [0.1], "m": [0.3], "v": [0.5]}),
    # Shape, Gather and Concat compute the Reshape target from the input's shape.
    "Shape": lambda: _head([_node("Shape", ["x"], ["sh"]), _node("Gather", ["sh", "i0"], ["n0"], axis=0),
                            _node("Concat", ["n0", "minus1"], ["tgt"], axis=0), _node("Reshape", ["x", "tgt"], ["o"])],
                           "o", 4, {"i0": np.array([0]), "minus1": np.array([-1])}),
}
CASES["Gather"] = CASES["Concat"] = CASES["Shape"]


def _model(op: str) -> onnx.ModelProto:
    m = CASES[op]()
    for init in m.graph.initializer:  # shape tensors and axes are int64
        if init.name in ("s", "ax", "i0", "minus1"):
            arr = onnx.numpy_helper.to_array(init).astype(np.int64)
            init.CopyFrom(onnx.numpy_helper.from_array(arr, init.name))
    return m


def _upper_corner_value(path: str) -> float:
    import onnxruntime as ort

    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    (y,) = sess.run(None, {"x": np.ones((1, 1, 2, 2), dtype=np.float32)})
    return float(y.reshape(-1)[0])


DECL = ("(vnnlib-version <2.0>)\n(declare-network f (declare-input X real [1,1,2,2]) (declare-output Y real [1,1]))\n"
        "(assert (and " + " ".join(f"(>= X[0,0,{i},{j}] -1.0) (<= X[0,0,{i},{j}] 1.0)" for i in (0, 1) for j in (0, 1))
        + "))\n")


@pytest.mark.parametrize("op", sorted(set(OP_HANDLERS) - {"Softmax"}))
def test_operator_query_with_known_answer(tmp_path, op):
    m = _model(op)
    onnx.checker.check_model(m)
    assert op in {n.op_type for n in m.graph.node}
    path = save(m, tmp_path / f"{op}.onnx")
    top = _upper_corner_value(path)  # onnxruntime's float32 value at the maximiser
    q = tmp_path / "q.vnnlib"
    q.write_text(DECL + f"(assert (> Y[0,0] {top + 0.01:.6f}))\n")
    assert solve(q, {"f": path}).status == "unsat"
    q.write_text(DECL + f"(assert (>= Y[0,0] {top - 0.01:.6f}))\n")
    ans = solve(q, {"f": path})
    assert ans.status == "sat"
    assert ans.assignment["Y"].item() >= top - 0.01 and np.all(np.abs(ans.assignment["X"]) <= 1.0)


def test_softmax_as_the_last_operator_keeps_comparisons(tmp_path):
    # logits z0 = x0 + x1 + 2, z1 = x0 + x1: class 0 always wins.
    nodes = [_node("Flatten", ["x"], ["f"], axis=1), _node("Gemm", ["f", "w", "b"], ["z"], transB=1),
             _node("Softmax", ["z"], ["y"], axis=1)]
    m = model(nodes, [X4], [("y", [1, 2])], {"w": [[1, 1, 0, 0], [1, 1, 0, 0]], "b": [2.0, 0.0]})
    path = save(m, tmp_path / "softmax.onnx")
    decl = DECL.replace("(declare-output Y real [1,1])", "(declare-output Y real [1,2])")
    q = tmp_path / "q.vnnlib"
    q.write_text(decl + "(assert (>= Y[0,1] Y[0,0]))\n")
    assert solve(q, {"f": path}).status == "unsat"
    q.write_text(decl + "(assert (>= Y[0,0] Y[0,1]))\n")
    assert solve(q, {"f": path}).status == "sat"
    q.write_text(decl + "(assert (>= Y[0,0] 0.5))\n")  # a threshold on a dropped Softmax: refused
    from absint.errors import SpecError

    with pytest.raises(SpecError, match="Softmax"):
        solve(q, {"f": path})
