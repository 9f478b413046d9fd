"""ONNX frontend: lowers an ONNX model to the absint IR.

Tensors that depend on the network input ("variables") become IR nodes; everything computable
from initializers and Constant nodes is folded with numpy at load time (this absorbs the
Shape/Gather/Concat/Reshape plumbing that exporters emit). The batch axis (axis 0, size 1 in the
file) is stripped from IR shapes.

Unsupported or malformed parts are collected over the whole graph and reported together in one
:class:`~absint.errors.UnsupportedOpError` naming every offending node.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from absint.errors import ModelError, UnsupportedOpError
from absint.frontends.normalize import normalize
from absint.ir import Add, Affine, Graph, Input, MaxPool2d, Op, Relu, Reshape, Sigmoid, Tanh
from absint.linear import ConvOperator, DenseOperator, DiagonalOperator, PermuteOperator, numel

log = logging.getLogger(__name__)


class _Unsupported(Exception):
    """Raised by an op handler: this node cannot be lowered (reason in the message)."""


class _Var:
    """A tensor that depends on the input: the IR node producing it and its ONNX shape."""

    def __init__(self, node: str, shape: tuple[int, ...]) -> None:
        self.node = node
        self.shape = shape  # ONNX shape, batch axis included (size 1)

    @property
    def ir_shape(self) -> tuple[int, ...]:
        return self.shape[1:]


def _attrs(node: Any) -> dict[str, Any]:
    import onnx

    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a, dtype=np.float64))


class _Lowering:
    """State of one ONNX → IR lowering."""

    def __init__(self, model: Any, source: str) -> None:
        import onnx.numpy_helper as nh

        self.source = source
        self.graph = model.graph
        self.consts: dict[str, np.ndarray] = {t.name: nh.to_array(t) for t in self.graph.initializer}
        self.vars: dict[str, _Var] = {}
        self.nodes: list[Op] = []
        self.problems: list[tuple[str, str, str]] = []
        self.poisoned: set[str] = set()
        self.softmax_outputs: set[str] = set()
        self.requested: set[str] = set()
        self._counter = 0
        #: the default domain's opset (Softmax's axis semantics changed at 13)
        self.opset = max([int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")] or [OPSET_RANGE[1]])

    # -- helpers -----------------------------------------------------------------------------
    def fresh(self, base: str) -> str:
        self._counter += 1
        return f"{base}#{self._counter}" if any(n.name == base for n in self.nodes) else base

    def emit(self, op: Op, onnx_out: str, onnx_shape: tuple[int, ...]) -> _Var:
        self.nodes.append(op)
        var = _Var(op.name, onnx_shape)
        self.vars[onnx_out] = var
        return var

    def const(self, name: str) -> np.ndarray:
        if name not in self.consts:
            raise _Unsupported(f"input {name!r} must be a constant here")
        return self.consts[name]

    def is_const(self, name: str) -> bool:
        return name in self.consts

    def affine(self, x: _Var, operator, bias, out: str, onnx_shape: tuple[int, ...], hint: str) -> _Var:
        op = Affine(self.fresh(hint), (x.node,), tuple(operator.out_shape), operator, bias)
        return self.emit(op, out, onnx_shape)

    def elementwise(self, x: _Var, scale, shift, out: str, hint: str) -> _Var:
        """``y = scale * x + shift`` with numpy scale/shift broadcastable to x's ONNX shape."""
        shape = x.ir_shape
        scale_t = self._broadcast_param(scale, x.shape, hint)
        shift_t = None if shift is None else self._broadcast_param(shift, x.shape, hint)
        return self.affine(x, DiagonalOperator(scale_t, shape), shift_t, out, x.shape, hint)

    @staticmethod
    def _broadcast_param(value, onnx_shape: tuple[int, ...], hint: str) -> torch.Tensor:
        arr = np.asarray(value, dtype=np.float64)
        try:
            full = np.broadcast_shapes(arr.shape, onnx_shape)
        except ValueError as exc:
            raise _Unsupported(f"constant of shape {arr.shape} does not broadcast to {onnx_shape}") from exc
        if tuple(full) != tuple(onnx_shape):
            raise _Unsupported(f"constant of shape {arr.shape} would change the shape {onnx_shape}")
        # Drop the batch axis of the parameter (keep trailing broadcast dims).
        if arr.ndim == len(onnx_shape):
            if arr.shape[0] != 1:
                raise _Unsupported("constant varies along the batch axis")
            arr = arr[0]
        elif arr.ndim > len(onnx_shape) - 1:
            arr = arr.reshape(arr.shape[arr.ndim - (len(onnx_shape) - 1):])
        return _t(arr)

    # -- main loop ---------------------------------------------------------------------------
    def run(self, inputs: Sequence[str] | None = None, outputs: Sequence[str] | None = None) -> Graph:
        """Lower the model. ``inputs``: the ONNX inputs that form the network input, in order
        (default: every graph input that is not an initializer); ``outputs``: the tensors (graph
        outputs or hidden tensors) that form the network output, in order (default: every graph
        output). One input keeps its shape; several are read from one flat vector, each through an
        exact selection (a 0/1 :class:`DenseOperator`). One output is that tensor's node; several
        are flattened and concatenated as a sum of zero-padded embeddings ``E_1 a + E_2 b + ...``
        (Affine and Add nodes: linear, exact in every domain). Nodes that no output needs are
        dropped, and an unsupported op only matters if an output depends on it."""
        init_names = set(self.consts)
        graph_inputs = {i.name: i for i in self.graph.input if i.name not in init_names}
        if inputs is None:
            inputs = list(graph_inputs)
        if not inputs:
            raise ModelError(f"{self.source}: the model has no input")
        for name in inputs:
            if name not in graph_inputs:
                raise ModelError(f"{self.source}: no graph input named {name!r} (inputs: {list(graph_inputs)})")
        self._emit_inputs([graph_inputs[n] for n in inputs])
        if outputs is None:
            outputs = [o.name for o in self.graph.output]
        self.requested = set(outputs)

        lo, hi = OPSET_RANGE
        if not lo <= self.opset <= hi:
            raise ModelError(f"{self.source}: the model's default-domain opset is {self.opset}; absint reads opsets "
                             f"{lo} to {hi} (ops such as Add and Softmax mean other things outside them)")
        handlers = self.handlers()
        for node in self.graph.node:
            name = node.name or (node.output[0] if node.output else node.op_type)
            if node.domain not in ("", "ai.onnx"):
                self.problems.append((name, f"{node.domain}.{node.op_type}", "op of a custom domain"))
                self.poisoned.update(node.output)
                continue
            if node.op_type not in handlers:
                self.problems.append((name, node.op_type, "op type not supported"))
                self.poisoned.update(node.output)
                continue
            if any(i in self.poisoned for i in node.input if i):
                self.poisoned.update(node.output)
                continue
            try:
                handlers[node.op_type](node, name)
            except _Unsupported as exc:
                self.problems.append((name, node.op_type, str(exc)))
                self.poisoned.update(node.output)
            except (ValueError, IndexError, KeyError, TypeError, ArithmeticError) as exc:
                self.problems.append((name, node.op_type, f"malformed: {exc}"))
                self.poisoned.update(node.output)
        if not outputs:
            raise ModelError(f"{self.source}: expected at least one graph output")
        if any(o in self.poisoned for o in outputs):
            raise UnsupportedOpError(self.problems, self.source)
        known = {t for n in self.graph.node for t in n.output} | set(graph_inputs) | init_names
        for o in outputs:
            if o not in self.vars:
                if o not in known:
                    raise ModelError(f"{self.source}: no tensor named {o!r} in the model")
                raise ModelError(f"{self.source}: output {o!r} does not depend on the input")
        dropped = sorted(self.softmax_outputs & set(outputs))
        if len(outputs) > 1 and dropped:
            raise UnsupportedOpError([(t, "Softmax", "a final Softmax is dropped (argmax is unchanged) only when its "
                                                     "tensor is the one network output") for t in dropped], self.source)
        out_node = self._emit_outputs(list(outputs))
        meta = {"output_softmax": bool(dropped), "source": self.source,
                "input_shapes": [self.vars[i].ir_shape for i in inputs],
                "output_shapes": [self.vars[o].ir_shape for o in outputs]}
        g = Graph(tuple(_prune(self.nodes, out_node)), out_node, Path(self.source).stem, meta)
        return normalize(g)

    def _emit_inputs(self, graph_inputs: list) -> None:
        shapes = []
        for inp in graph_inputs:
            dims = [d.dim_value if d.HasField("dim_value") else 1 for d in inp.type.tensor_type.shape.dim]
            free = [d.dim_param or "?" for d in list(inp.type.tensor_type.shape.dim)[1:] if not d.HasField("dim_value")]
            if free:
                raise ModelError(f"{self.source}: input {inp.name!r} has symbolic dimensions {free} beyond the batch "
                                 "axis; absint needs a fixed input shape")
            if not dims:
                raise ModelError(f"{self.source}: input {inp.name!r} has no shape")
            if dims[0] != 1 or any(d <= 0 for d in dims):
                # A symbolic batch axis is read as 1; anything else must be a real batch of one.
                dims = [1] + dims[1:] if dims[0] in (0, -1) else dims
                if dims[0] != 1:
                    raise ModelError(f"{self.source}: input shape {dims} must have a batch axis of size 1 first")
            shapes.append(tuple(dims))
        if len(graph_inputs) == 1:
            self.emit(Input("input", (), shapes[0][1:]), graph_inputs[0].name, shapes[0])
            return
        total = sum(numel(s[1:]) for s in shapes)
        self.nodes.append(Input("input", (), (total,)))
        start = 0
        for inp, dims in zip(graph_inputs, shapes):
            size = numel(dims[1:])
            select = torch.zeros(size, total, dtype=torch.float64)
            select[torch.arange(size), torch.arange(start, start + size)] = 1.0
            start += size
            flat = self.fresh(f"{inp.name}/select")
            op = Affine(flat, ("input",), (size,), DenseOperator(select), None)
            if tuple(dims[1:]) == (size,):
                self.emit(op, inp.name, dims)
            else:
                self.nodes.append(op)
                self.emit(Reshape(self.fresh(inp.name), (flat,), tuple(dims[1:])), inp.name, dims)

    def _emit_outputs(self, outputs: list[str]) -> str:
        if len(outputs) == 1:
            return self.vars[outputs[0]].node
        parts = []
        for o in outputs:
            var = self.vars[o]
            node = var.node
            size = numel(var.ir_shape)
            if tuple(var.ir_shape) != (size,):
                node = self.fresh(f"{o}/flat")
                self.nodes.append(Reshape(node, (var.node,), (size,)))
            parts.append((node, size))
        total = sum(size for _, size in parts)
        start = 0
        acc: str | None = None
        for node, size in parts:
            embed = torch.zeros(total, size, dtype=torch.float64)
            embed[torch.arange(start, start + size), torch.arange(size)] = 1.0
            start += size
            name = self.fresh(f"{node}/embed")
            self.nodes.append(Affine(name, (node,), (total,), DenseOperator(embed), None))
            if acc is not None:
                summed = self.fresh("outputs")
                self.nodes.append(Add(summed, (acc, name), (total,)))
                name = summed
            acc = name
        if acc is None:
            raise ModelError("the model has no outputs to combine")
        return acc

    def handlers(self) -> dict[str, Callable[[Any, str], None]]:
        return {op: getattr(self, method) for op, method in OP_HANDLERS.items()}

    # -- constant-only / plumbing ops -------------------------------------------------------
    def op_constant(self, node, name) -> None:
        import onnx.numpy_helper as nh

        a = _attrs(node)
        if "value" in a:
            self.consts[node.output[0]] = nh.to_array(a["value"])
        elif "value_float" in a:
            self.consts[node.output[0]] = np.array(a["value_float"], dtype=np.float32)
        elif "value_floats" in a:
            self.consts[node.output[0]] = np.array(a["value_floats"], dtype=np.float32)
        elif "value_int" in a:
            self.consts[node.output[0]] = np.array(a["value_int"], dtype=np.int64)
        elif "value_ints" in a:
            self.consts[node.output[0]] = np.array(a["value_ints"], dtype=np.int64)
        else:
            raise _Unsupported(f"Constant with attributes {sorted(a)}")

    def op_identity(self, node, name) -> None:
        src = node.input[0]
        if self.is_const(src):
            self.consts[node.output[0]] = self.consts[src]
        else:
            self.vars[node.output[0]] = self.vars[src]

    def op_cast(self, node, name) -> None:
        src = node.input[0]
        if self.is_const(src):
            import onnx

            to = _attrs(node)["to"]
            self.consts[node.output[0]] = self.consts[src].astype(onnx.helper.tensor_dtype_to_np_dtype(to))
        else:
            import onnx

            to = _attrs(node).get("to")
            if to not in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE):
                name_of = onnx.TensorProto.DataType.Name(to) if to in onnx.TensorProto.DataType.values() else to
                raise _Unsupported(f"Cast of a tensor that depends on the input to {name_of} (only casts to "
                                   "float or double, which keep the values, are supported)")
            self.vars[node.output[0]] = self.vars[src]

    def op_dropout(self, node, name) -> None:
        """Dropout in inference mode is the identity; in training mode (opset ≥ 12: a third input
        that is not a constant false) it zeroes random elements and is refused."""
        if len(node.input) > 2 and node.input[2]:
            mode = node.input[2]
            if not self.is_const(mode) or bool(np.asarray(self.consts[mode]).reshape(-1)[0]):
                raise _Unsupported("Dropout in training mode (random, not a function of the input)")
        if not _attrs(node).get("is_test", 1):  # opset ≤ 6
            raise _Unsupported("Dropout with is_test=0 (training mode)")
        self.op_identity(node, name)

    def op_shape(self, node, name) -> None:
        src = node.input[0]
        shape = self.consts[src].shape if self.is_const(src) else self.vars[src].shape
        a = _attrs(node)  # opset 15: optional start / end slice the shape (negative counts from the end)
        start, end = a.get("start", 0), a.get("end", len(shape))
        self.consts[node.output[0]] = np.array(shape, dtype=np.int64)[slice(start, end)]

    def op_gather(self, node, name) -> None:
        data, idx = node.input[0], node.input[1]
        if not (self.is_const(data) and self.is_const(idx)):
            raise _Unsupported("Gather on a tensor that depends on the input")
        axis = _attrs(node).get("axis", 0)
        self.consts[node.output[0]] = np.take(self.consts[data], self.consts[idx], axis=axis)

    def op_concat(self, node, name) -> None:
        if not all(self.is_const(i) for i in node.input):
            raise _Unsupported("Concat of tensors that depend on the input")
        axis = _attrs(node)["axis"]
        self.consts[node.output[0]] = np.concatenate([self.consts[i] for i in node.input], axis=axis)

    def _fold_binary(self, node, fn) -> bool:
        a, b = node.input[0], node.input[1]
        if self.is_const(a) and self.is_const(b):
            self.consts[node.output[0]] = fn(self.consts[a], self.consts[b])
            return True
        return False

    # -- linear ops --------------------------------------------------------------------------
    def op_gemm(self, node, name) -> None:
        a = _attrs(node)
        x_name, w_name = node.input[0], node.input[1]
        if x_name not in self.vars:
            raise _Unsupported("Gemm whose first operand is constant")
        if a.get("transA", 0):
            raise _Unsupported("Gemm with transA=1 on the input-dependent operand")
        x = self.vars[x_name]
        if len(x.shape) != 2:
            raise _Unsupported(f"Gemm input of rank {len(x.shape)}")
        w = np.asarray(self.const(w_name), dtype=np.float64)
        w = w if a.get("transB", 0) else w.T  # now [out, in]
        w = a.get("alpha", 1.0) * w
        bias = None
        if len(node.input) > 2 and node.input[2]:
            c = np.asarray(self.const(node.input[2]), dtype=np.float64) * a.get("beta", 1.0)
            bias = _t(np.broadcast_to(c, (1, w.shape[0]))[0].copy())
        if w.shape[1] != x.ir_shape[0]:
            raise _Unsupported(f"Gemm weight {w.shape} does not match input {x.shape}")
        self.affine(x, DenseOperator(_t(w)), bias, node.output[0], (1, w.shape[0]), name)

    def op_matmul(self, node, name) -> None:
        if self._fold_binary(node, np.matmul):
            return
        x_name, w_name = node.input
        if x_name not in self.vars or not self.is_const(w_name):
            raise _Unsupported("MatMul is supported as (input-dependent) @ (constant matrix) only")
        x = self.vars[x_name]
        w = np.asarray(self.consts[w_name], dtype=np.float64)
        if w.ndim != 2 or len(x.shape) != 2 or x.shape[1] != w.shape[0]:
            raise _Unsupported(f"MatMul of shapes {x.shape} @ {w.shape}")
        self.affine(x, DenseOperator(_t(w.T)), None, node.output[0], (1, w.shape[1]), name)

    def op_add(self, node, name) -> None:
        if self._fold_binary(node, np.add):
            return
        a, b = node.input
        if a in self.vars and b in self.vars:
            va, vb = self.vars[a], self.vars[b]
            if va.shape != vb.shape:
                raise _Unsupported(f"Add of input-dependent tensors with shapes {va.shape} and {vb.shape}")
            self.emit(Add(self.fresh(name), (va.node, vb.node), va.ir_shape), node.output[0], va.shape)
            return
        x, c = (self.vars[a], self.consts[b]) if a in self.vars else (self.vars[b], self.consts[a])
        self.elementwise(x, np.ones(()), c, node.output[0], name)

    def op_sub(self, node, name) -> None:
        if self._fold_binary(node, np.subtract):
            return
        a, b = node.input
        if a in self.vars and b in self.vars:
            vb = self.vars[b]
            neg = self.elementwise(vb, -np.ones(()), None, node.output[0] + "#neg", name + "/neg")
            va = self.vars[a]
            if va.shape != vb.shape:
                raise _Unsupported(f"Sub of input-dependent tensors with shapes {va.shape} and {vb.shape}")
            self.emit(Add(self.fresh(name), (va.node, neg.node), va.ir_shape), node.output[0], va.shape)
        elif a in self.vars:
            self.elementwise(self.vars[a], np.ones(()), -np.asarray(self.consts[b], dtype=np.float64), node.output[0], name)
        else:
            self.elementwise(self.vars[b], -np.ones(()), self.consts[a], node.output[0], name)

    def op_mul(self, node, name) -> None:
        if self._fold_binary(node, np.multiply):
            return
        a, b = node.input
        if a in self.vars and b in self.vars:
            raise _Unsupported("Mul of two input-dependent tensors (non-linear)")
        x, c = (self.vars[a], self.consts[b]) if a in self.vars else (self.vars[b], self.consts[a])
        self.elementwise(x, c, None, node.output[0], name)

    def op_div(self, node, name) -> None:
        if self._fold_binary(node, np.divide):
            return
        a, b = node.input
        if b in self.vars:
            raise _Unsupported("division by an input-dependent tensor (non-linear)")
        c = np.asarray(self.consts[b], dtype=np.float64)
        if np.any(c == 0):
            raise _Unsupported("division by zero constant")
        self.elementwise(self.vars[a], 1.0 / c, None, node.output[0], name)

    def op_neg(self, node, name) -> None:
        src = node.input[0]
        if self.is_const(src):
            self.consts[node.output[0]] = -self.consts[src]
        else:
            self.elementwise(self.vars[src], -np.ones(()), None, node.output[0], name)

    def op_conv(self, node, name) -> None:
        a = _attrs(node)
        x = self.vars.get(node.input[0])
        if x is None:
            raise _Unsupported("Conv on a constant input")
        if len(x.shape) != 4:
            raise _Unsupported(f"only 2-D convolution is supported (input shape {x.shape})")
        w = np.asarray(self.const(node.input[1]), dtype=np.float64)
        group = int(a.get("group", 1))
        if w.ndim != 4 or group < 1 or w.shape[0] % group or w.shape[1] * group != x.shape[1]:
            raise ValueError(f"weight of shape {list(w.shape)} with group={group} does not fit an input with "
                             f"{x.shape[1]} channels")
        pads = self._symmetric_pads(a, x.shape[2:], w.shape[2:], a.get("strides", [1, 1]), a.get("dilations", [1, 1]))
        op = ConvOperator(_t(w), x.ir_shape, tuple(a.get("strides", [1, 1])), pads,
                          tuple(a.get("dilations", [1, 1])), group)
        bias = None
        if len(node.input) > 2 and node.input[2]:
            bias = _t(np.asarray(self.const(node.input[2]), dtype=np.float64).reshape(-1, 1, 1))
        self.affine(x, op, bias, node.output[0], (1, *op.out_shape), name)

    @staticmethod
    def _symmetric_pads(a, spatial, kernel, strides, dilations) -> tuple[int, int]:
        """The (height, width) padding of a 2-D window op; a ValueError (reported as a malformed node)
        for windows that cannot be: strides, dilations or kernel sizes below 1, negative padding, no
        output position."""
        spatial, kernel = [int(v) for v in spatial], [int(v) for v in kernel]
        strides, dilations = [int(v) for v in strides], [int(v) for v in dilations]
        if not (len(spatial) == len(kernel) == len(strides) == len(dilations) == 2):
            raise ValueError(f"a 2-D window needs two sizes each: kernel {kernel}, strides {strides}, "
                             f"dilations {dilations}")
        if min(strides) < 1 or min(dilations) < 1 or min(kernel) < 1:
            raise ValueError(f"kernel {kernel}, strides {strides} and dilations {dilations} must be >= 1")
        pads = _Lowering._pads(a, spatial, kernel, strides, dilations)
        for size, k, d, p in zip(spatial, kernel, dilations, pads):
            if p < 0:
                raise ValueError(f"negative padding {list(pads)}")
            if size + 2 * p < (k - 1) * d + 1:
                raise ValueError(f"the window ({kernel}, dilations {dilations}) is larger than the padded input "
                                 f"{spatial} (padding {list(pads)})")
        return pads

    @staticmethod
    def _pads(a, spatial, kernel, strides, dilations) -> tuple[int, int]:
        """The padding the ``auto_pad``/``pads`` attributes ask for (symmetric only)."""
        auto = a.get("auto_pad", b"NOTSET")
        auto = auto.decode() if isinstance(auto, bytes) else auto
        if auto in ("SAME_UPPER", "SAME_LOWER"):
            pads = []
            for size, k, s, d in zip(spatial, kernel, strides, dilations):
                out = -(-size // s)
                total = max(0, (out - 1) * s + (k - 1) * d + 1 - size)
                if total % 2:
                    raise _Unsupported(f"auto_pad={auto} needs asymmetric padding")
                pads.append(total // 2)
            return (pads[0], pads[1])
        if auto == "VALID":
            return (0, 0)
        p = [int(v) for v in a.get("pads", [0, 0, 0, 0])]
        if len(p) != 4:
            raise ValueError(f"pads {p}: a 2-D window needs 4 values")
        if p[0] != p[2] or p[1] != p[3]:
            raise _Unsupported(f"asymmetric padding {p}")
        return (int(p[0]), int(p[1]))

    # -- shape ops ---------------------------------------------------------------------------
    def _reshape_var(self, x: _Var, new_shape: tuple[int, ...], out: str, name: str) -> None:
        if not new_shape or new_shape[0] != 1:
            raise _Unsupported(f"reshape {x.shape} -> {new_shape} would merge the batch axis")
        if numel(new_shape) != numel(x.shape):
            raise _Unsupported(f"reshape {x.shape} -> {new_shape} changes the number of elements")
        if tuple(new_shape) == tuple(x.shape):
            self.vars[out] = x
            return
        self.emit(Reshape(self.fresh(name), (x.node,), tuple(new_shape[1:])), out, tuple(new_shape))

    def op_flatten(self, node, name) -> None:
        src = node.input[0]
        axis = _attrs(node).get("axis", 1)
        if self.is_const(src):
            arr = self.consts[src]
            axis = axis % max(arr.ndim, 1)
            self.consts[node.output[0]] = arr.reshape(int(np.prod(arr.shape[:axis])), -1)
            return
        x = self.vars[src]
        axis = axis % len(x.shape) if axis < 0 else axis
        lead = int(np.prod(x.shape[:axis]))
        self._reshape_var(x, (lead, numel(x.shape) // max(lead, 1)), node.output[0], name)

    def op_reshape(self, node, name) -> None:
        src = node.input[0]
        target = [int(v) for v in self.const(node.input[1]).reshape(-1)]
        shape = self.consts[src].shape if self.is_const(src) else self.vars[src].shape
        allowzero = _attrs(node).get("allowzero", 0)
        if target.count(-1) > 1 or any(v < -1 for v in target):
            raise ValueError(f"shape {target}: at most one -1 and no other negative entry")
        if not allowzero and any(v == 0 and i >= len(shape) for i, v in enumerate(target)):
            raise ValueError(f"shape {target}: a 0 (copy the input's dimension) beyond the input's rank {len(shape)}")
        target = [shape[i] if (v == 0 and not allowzero) else v for i, v in enumerate(target)]
        if -1 in target:
            known = int(np.prod([v for v in target if v != -1]))
            target[target.index(-1)] = numel(shape) // max(known, 1)
        if self.is_const(src):
            self.consts[node.output[0]] = self.consts[src].reshape(target)
        else:
            self._reshape_var(self.vars[src], tuple(target), node.output[0], name)

    def op_squeeze(self, node, name) -> None:
        src = node.input[0]
        a = _attrs(node)
        axes = a.get("axes")
        if axes is None and len(node.input) > 1 and node.input[1]:
            axes = [int(v) for v in self.const(node.input[1]).reshape(-1)]
        shape = list(self.consts[src].shape if self.is_const(src) else self.vars[src].shape)
        if node.op_type == "Squeeze":
            axes = [i for i, d in enumerate(shape) if d == 1] if axes is None else [ax % len(shape) for ax in axes]
            if not self.is_const(src) and 0 in axes:
                axes = [ax for ax in axes if ax != 0]  # keep the batch axis
            new = [d for i, d in enumerate(shape) if i not in axes]
        else:
            new = list(shape)
            rank = len(shape) + len(axes or [])
            for ax in sorted(ax % rank for ax in (axes or [])):
                new.insert(ax, 1)
        if self.is_const(src):
            self.consts[node.output[0]] = self.consts[src].reshape(new)
        else:
            self._reshape_var(self.vars[src], tuple(new), node.output[0], name)

    def op_transpose(self, node, name) -> None:
        src = node.input[0]
        perm = _attrs(node).get("perm")
        if self.is_const(src):
            self.consts[node.output[0]] = np.transpose(self.consts[src], perm)
            return
        x = self.vars[src]
        perm = list(perm) if perm is not None else list(reversed(range(len(x.shape))))
        if sorted(perm) != list(range(len(x.shape))):
            raise ValueError(f"perm {perm} is not a permutation of the {len(x.shape)} axes")
        new_shape = tuple(x.shape[p] for p in perm)
        if perm[0] != 0:
            if x.shape[perm[0]] != 1 or x.shape[0] != 1:
                raise _Unsupported(f"transpose {perm} moves the batch axis")
            # the batch axis and axis perm[0] both have size 1: exchanging their roles changes no
            # element's position, so the permutation of the other axes is what remains
            j = perm.index(0)
            perm = [0] + [perm[0] if i == j else p for i, p in enumerate(perm)][1:]
        inner = [p - 1 for p in perm[1:]]
        if [p for p in inner if x.shape[p + 1] != 1] == sorted(p for p in inner if x.shape[p + 1] != 1):
            self._reshape_var(x, new_shape, node.output[0], name)
            return
        op = PermuteOperator(tuple(inner), x.ir_shape)
        self.affine(x, op, None, node.output[0], new_shape, name)

    # -- non-linear / pooling ops ------------------------------------------------------------
    def op_act(self, node, name) -> None:
        x = self.vars[node.input[0]]
        cls = {"Relu": Relu, "Sigmoid": Sigmoid, "Tanh": Tanh}[node.op_type]
        self.emit(cls(self.fresh(name), (x.node,), x.ir_shape), node.output[0], x.shape)

    def op_maxpool(self, node, name) -> None:
        a = _attrs(node)
        x = self.vars[node.input[0]]
        if len(x.shape) != 4:
            raise _Unsupported("only 2-D max pooling is supported")
        if any(d != 1 for d in a.get("dilations", [1, 1])) or a.get("ceil_mode", 0) or a.get("storage_order", 0):
            raise _Unsupported("MaxPool with dilation, ceil_mode or storage_order")
        if len(node.output) > 1 and node.output[1]:
            raise _Unsupported("MaxPool with an Indices output")
        kernel = tuple(a["kernel_shape"])
        strides = tuple(a.get("strides", [1, 1]))
        pads = self._symmetric_pads(a, x.shape[2:], kernel, strides, (1, 1))
        c, h, w = x.ir_shape
        oh = (h + 2 * pads[0] - kernel[0]) // strides[0] + 1
        ow = (w + 2 * pads[1] - kernel[1]) // strides[1] + 1
        op = MaxPool2d(self.fresh(name), (x.node,), (c, oh, ow), kernel, strides, pads)
        self.emit(op, node.output[0], (1, c, oh, ow))

    def op_avgpool(self, node, name) -> None:
        """Average pooling = depthwise convolution with weights 1/(kh·kw).

        With padding and ``count_include_pad=0`` the divisor varies per output position; that
        is a convolution with unit weights followed by a per-position scaling.
        """
        a = _attrs(node)
        x = self.vars[node.input[0]]
        if len(x.shape) != 4:
            raise _Unsupported("only 2-D average pooling is supported")
        c, h, w = x.ir_shape
        if node.op_type == "GlobalAveragePool":
            kernel, strides, pads, include = (h, w), (1, 1), (0, 0), 1
        else:
            if a.get("ceil_mode", 0) or any(d != 1 for d in a.get("dilations", [1, 1])):
                raise _Unsupported("AveragePool with ceil_mode or dilation")
            kernel = tuple(a["kernel_shape"])
            strides = tuple(a.get("strides", [1, 1]))
            pads = self._symmetric_pads(a, x.shape[2:], kernel, strides, (1, 1))
            include = a.get("count_include_pad", 0)
        ones = np.ones((c, 1, *kernel))
        if include or pads == (0, 0):
            op = ConvOperator(_t(ones / (kernel[0] * kernel[1])), x.ir_shape, strides, pads, (1, 1), c)
            self.affine(x, op, None, node.output[0], (1, *op.out_shape), name)
            return
        op = ConvOperator(_t(ones), x.ir_shape, strides, pads, (1, 1), c)
        summed = self.affine(x, op, None, node.output[0] + "#sum", (1, *op.out_shape), name + "/sum")
        real = torch.nn.functional.pad(torch.ones(1, 1, h, w, dtype=torch.float64), (pads[1], pads[1], pads[0], pads[0]))
        counts = torch.nn.functional.conv2d(real, torch.ones(1, 1, *kernel, dtype=torch.float64), stride=strides)[0]
        if bool((counts == 0).any()):
            raise _Unsupported(f"AveragePool with pads {list(pads)} ≥ the kernel {list(kernel)}: windows that hold "
                               "only padding divide by zero")
        scale = 1.0 / counts  # 1 / number of real (non-pad) elements per window
        self.affine(summed, DiagonalOperator(scale, op.out_shape), None, node.output[0], (1, *op.out_shape), name)

    def op_batchnorm(self, node, name) -> None:
        a = _attrs(node)
        x = self.vars[node.input[0]]
        if a.get("training_mode", 0):
            raise _Unsupported("BatchNormalization in training mode")
        gamma, beta, mean, var = (np.asarray(self.const(i), dtype=np.float64) for i in node.input[1:5])
        scale = gamma / np.sqrt(var + a.get("epsilon", 1e-5))
        shift = beta - mean * scale
        extra = (1,) * (len(x.shape) - 2)
        self.elementwise(x, scale.reshape(-1, *extra), shift.reshape(-1, *extra), node.output[0], name)

    def op_softmax(self, node, name) -> None:
        if node.output[0] not in self.requested:
            raise _Unsupported("Softmax is supported only as the last op (it is dropped: argmax is unchanged)")
        x = self.vars[node.input[0]]
        axis = _attrs(node).get("axis", -1 if self.opset >= 13 else 1)
        rank = len(x.shape)
        if not -rank <= axis < rank:
            raise ValueError(f"axis {axis} out of range for a tensor of rank {rank}")
        axis %= rank
        # opset ≥ 13 normalises along one axis, earlier opsets over all axes from `axis` on; dropping
        # it keeps comparisons between outputs only if every element lies in the one normalised group
        group = [axis] if self.opset >= 13 else list(range(axis, rank))
        if any(d != 1 for i, d in enumerate(x.shape) if i not in group):
            raise _Unsupported(f"Softmax over axis {axis} of a tensor of shape {list(x.shape)} normalises several "
                               "groups of outputs separately (only a Softmax over all outputs can be dropped)")
        self.softmax_outputs.add(node.output[0])
        self.vars[node.output[0]] = self.vars[node.input[0]]


#: ONNX op type -> the handler method that lowers it. This table *is* the list of supported
#: operators (``absint-vnnlib supports --onnx-operators`` prints it). Some handlers accept an op
#: only in common forms (e.g. Concat/Gather/Shape on constants, Softmax as the last op); they say
#: why when they refuse a node.
OP_HANDLERS: dict[str, str] = {
    "Constant": "op_constant", "Identity": "op_identity", "Dropout": "op_dropout", "Cast": "op_cast",
    "Gemm": "op_gemm", "MatMul": "op_matmul", "Add": "op_add", "Sub": "op_sub", "Mul": "op_mul", "Div": "op_div",
    "Neg": "op_neg", "Conv": "op_conv", "Relu": "op_act", "Sigmoid": "op_act", "Tanh": "op_act",
    "Flatten": "op_flatten", "Reshape": "op_reshape", "Squeeze": "op_squeeze", "Unsqueeze": "op_squeeze",
    "Transpose": "op_transpose", "MaxPool": "op_maxpool", "AveragePool": "op_avgpool",
    "GlobalAveragePool": "op_avgpool", "BatchNormalization": "op_batchnorm", "Softmax": "op_softmax",
    "Shape": "op_shape", "Gather": "op_gather", "Concat": "op_concat",
}

#: Default-domain opsets whose semantics of every op above the handlers implement: from 7 (numpy
#: broadcasting in Add/Sub/Mul/Div/Gemm, BatchNormalization without ``spatial``) to 25; changes in
#: 14-25 to these ops only add element types or attributes the handlers read or refuse (Reshape
#: ``allowzero``, Shape ``start``/``end``, AveragePool ``dilations``).
OPSET_RANGE: tuple[int, int] = (7, 25)


def supported_operators() -> tuple[str, ...]:
    """The ONNX operator types the loader lowers (the keys of :data:`OP_HANDLERS`)."""
    return tuple(OP_HANDLERS)


def _prune(nodes: list[Op], output: str) -> list[Op]:
    """The nodes the output depends on (the Input node always stays first), in order."""
    by_name = {n.name: n for n in nodes}
    needed = {output}
    stack = [output]
    while stack:
        for a in by_name[stack.pop()].inputs:
            if a not in needed:
                needed.add(a)
                stack.append(a)
    return [n for i, n in enumerate(nodes) if i == 0 or n.name in needed]


def load_onnx(path: str | Path | bytes, *, inputs: Sequence[str] | None = None,
              outputs: Sequence[str] | None = None) -> Graph:
    """Load an ONNX file (or bytes) and lower it to a normalised :class:`~absint.ir.Graph`.

    ``inputs`` / ``outputs`` choose and order the ONNX inputs and the tensors (graph outputs or
    hidden tensors) that form the graph's input and output; by default every graph input and every
    graph output. Several inputs are read from one flat vector, several outputs are concatenated
    into one flat vector, both in the order given (see :meth:`_Lowering.run`)."""
    model = read_onnx(path)
    source = str(path) if not isinstance(path, (bytes, bytearray)) else "<bytes>"
    graph = lower_onnx(model, source, inputs=inputs, outputs=outputs)
    if inputs is None and outputs is None and len(model.graph.output) == 1:
        # the original model, for re-running counterexamples with onnxruntime (absint.recheck);
        # only when the graph is the model's own input → output map
        graph.meta["onnx_source"] = bytes(path) if isinstance(path, (bytes, bytearray)) else str(Path(path).resolve())
    return graph


def read_onnx(path: str | Path | bytes) -> Any:
    """The ``onnx.ModelProto`` of a file (or bytes); a :class:`ModelError` if it is not one."""
    try:
        import onnx
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise ModelError("loading ONNX needs the 'onnx' package: pip install 'absint[onnx]'") from exc
    source = str(path) if not isinstance(path, (bytes, bytearray)) else "<bytes>"
    try:
        model = onnx.load_from_string(bytes(path)) if isinstance(path, (bytes, bytearray)) else onnx.load(str(path))
    except FileNotFoundError:
        raise ModelError(f"{source}: no such file") from None
    except Exception as exc:  # onnx raises DecodeError and friends for malformed files
        raise ModelError(f"{source}: not a valid ONNX model ({type(exc).__name__}: {exc})") from exc
    if not model.graph.node:
        raise ModelError(f"{source}: the ONNX graph has no nodes")
    return model


def lower_onnx(model: Any, source: str, *, inputs: Sequence[str] | None = None,
               outputs: Sequence[str] | None = None) -> Graph:
    """:func:`load_onnx` for a model already read with :func:`read_onnx`. The graph's ``meta``
    records the IR shape of each chosen input (``input_shapes``) and output (``output_shapes``)."""
    graph = _Lowering(model, source).run(inputs, outputs)
    try:
        graph.check_by_running()
    except ModelError as exc:
        raise ModelError(f"{source}: {exc}") from None
    return graph
