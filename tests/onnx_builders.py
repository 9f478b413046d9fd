"""Tiny ONNX models and VNN-LIB text for the VNN-LIB tests (built with onnx.helper, no files shipped)."""
from __future__ import annotations

from decimal import Decimal
from pathlib import Path
import re

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

FLOAT, DOUBLE = TensorProto.FLOAT, TensorProto.DOUBLE


def model(nodes, inputs, outputs, inits=None, opset: int = 13, elem: int = FLOAT,
          value_info=None) -> onnx.ModelProto:
    """``inputs`` / ``outputs``: lists of ``(name, shape)``; ``inits``: name -> array."""
    g = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info(n, elem, s) for n, s in inputs],
        [helper.make_tensor_value_info(n, elem, s) for n, s in outputs],
        [numpy_helper.from_array(np.asarray(v, dtype=np.float64 if elem == DOUBLE else np.float32), k)
         for k, v in (inits or {}).items()],
        value_info=[helper.make_tensor_value_info(n, elem, s) for n, s in (value_info or [])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m


def save(m: onnx.ModelProto, path: Path) -> str:
    path.write_bytes(m.SerializeToString())
    return str(path)


def mlp(w1, b1, w2, b2, *, hidden: str = "h", elem: int = FLOAT) -> onnx.ModelProto:
    """``y = W2 relu(W1 x + b1) + b2`` with the ReLU output named ``hidden`` (input x [1,n], output y)."""
    w1, w2 = np.asarray(w1, float), np.asarray(w2, float)
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["pre"], transB=1),
             helper.make_node("Relu", ["pre"], [hidden]),
             helper.make_node("Gemm", [hidden, "w2", "b2"], ["y"], transB=1)]
    return model(nodes, [("x", [1, w1.shape[1]])], [("y", [1, w2.shape[0]])],
                 {"w1": w1, "b1": b1, "w2": w2, "b2": b2}, elem=elem,
                 value_info=[(hidden, [1, w1.shape[0]])])


def two_in_two_out() -> onnx.ModelProto:
    """Inputs a [1,2], b [1,1]; outputs s = relu(a0 + a1 + 2 b) [1,1] and d = a0 - a1 [1,1]."""
    nodes = [helper.make_node("MatMul", ["a", "wa"], ["pa"]),
             helper.make_node("MatMul", ["b", "wb"], ["pb"]),
             helper.make_node("Add", ["pa", "pb"], ["pre"]),
             helper.make_node("Relu", ["pre"], ["s"]),
             helper.make_node("MatMul", ["a", "wd"], ["d"])]
    return model(nodes, [("a", [1, 2]), ("b", [1, 1])], [("s", [1, 1]), ("d", [1, 1])],
                 {"wa": [[1.0], [1.0]], "wb": [[2.0]], "wd": [[1.0], [-1.0]]})


_NUMBER = re.compile(r"(?<![\w.\-])(-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)(?![\w.])")
_VAR = re.compile(r"\b([XY])_(\d+)\b")


def v1_to_v2(text: str, in_shape: tuple[int, ...], out_shape: tuple[int, ...], dtype: str = "real") -> str:
    """A VNN-LIB 1.0 file rewritten as 2.0: one network N, X / Y with the model's shapes (batch axis
    included), ``X_i`` -> ``X[...]`` (row-major), numbers as plain decimals (2.0 has no exponents)."""
    body = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("(declare-const"))
    body = re.sub(r";[^\n]*", "", body)

    def number(m: re.Match) -> str:
        s = format(Decimal(m.group(1)), "f")
        return s if "." in s else s + ".0"

    def var(m: re.Match) -> str:
        shape = in_shape if m.group(1) == "X" else out_shape
        idx = np.unravel_index(int(m.group(2)), shape)
        return f"{m.group(1)}[{','.join(str(int(i)) for i in idx)}]"

    body = _VAR.sub(var, _NUMBER.sub(number, body))
    dims = lambda s: "[" + ",".join(str(d) for d in s) + "]"  # noqa: E731
    head = (f"(vnnlib-version <2.0>)\n(declare-network N\n  (declare-input X {dtype} {dims(in_shape)})\n"
            f"  (declare-output Y {dtype} {dims(out_shape)})\n)\n")
    return head + body.replace("(= ", "(== ")
