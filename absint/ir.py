"""The network IR: a topologically ordered graph of small frozen op records.

Frontends (ONNX, torch) lower to this IR and normalise it (BatchNorm folded, MatMul+Add fused,
Sub/Div normalisation turned into an element-wise affine map, Identity/Dropout dropped), so the
interpreter and every domain only ever see these ops:

* :class:`Input` — the network input (shape without the batch axis).
* :class:`Affine` — ``y = A x + b`` for any :class:`~absint.linear.LinearOperator` ``A``
  (dense layer, convolution, average pooling, normalisation, transpose).
* :class:`Relu`, :class:`Sigmoid`, :class:`Tanh` — element-wise activations.
* :class:`MaxPool2d`, :class:`Reshape`, :class:`Add` (residual sum of two nodes).

Weights are float64 torch tensors. Shapes never include the batch axis; concrete execution
(``Graph.forward``) takes ``[B, *input_shape]``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Iterator

import torch
import torch.nn.functional as F

from absint.errors import ModelError
from absint.linear import ConvOperator, DenseOperator, DiagonalOperator, LinearOperator, Shape, numel


@dataclass(frozen=True, eq=False)
class Op:
    """Base record: a node's name, the names of its input nodes, and its output shape."""

    name: str
    inputs: tuple[str, ...]
    shape: Shape

    @property
    def kind(self) -> str:
        """Short human-readable op name (for messages and summaries)."""
        return type(self).__name__

    def to(self, device=None, dtype=None) -> "Op":
        return self


@dataclass(frozen=True, eq=False)
class Input(Op):
    """The network input."""


@dataclass(frozen=True, eq=False)
class Affine(Op):
    """``y = operator(x) + bias``; ``bias`` broadcasts against ``shape`` (or is None)."""

    operator: LinearOperator = field(default=None)  # type: ignore[assignment]
    bias: torch.Tensor | None = None

    @property
    def kind(self) -> str:
        return {
            DenseOperator: "Linear",
            ConvOperator: "Conv2d",
            DiagonalOperator: "ElementwiseAffine",
        }.get(type(self.operator), "Affine")

    def bias_full(self) -> torch.Tensor:
        """The bias broadcast to the full output shape (zeros if absent)."""
        w = self.operator
        dtype = getattr(w, "_dtype")()
        device = getattr(w, "_device")()
        if self.bias is None:
            return torch.zeros(self.shape, dtype=dtype, device=device)
        return torch.broadcast_to(self.bias, self.shape).to(dtype=dtype, device=device)

    def tensors(self) -> list[torch.Tensor]:
        """The node's numbers: the operator's weight or scale, and the bias if any."""
        out = [getattr(self.operator, a) for a in ("weight", "scale") if hasattr(self.operator, a)]
        return out + ([] if self.bias is None else [self.bias])

    def to(self, device=None, dtype=None) -> "Affine":
        bias = None if self.bias is None else self.bias.to(device=device, dtype=dtype)
        operator = self.operator.to(device, dtype)
        if operator is self.operator and bias is self.bias:
            return self
        return replace(self, operator=operator, bias=bias)


@dataclass(frozen=True, eq=False)
class Relu(Op):
    """``y = max(x, 0)``."""


@dataclass(frozen=True, eq=False)
class Sigmoid(Op):
    """``y = 1 / (1 + exp(-x))``."""


@dataclass(frozen=True, eq=False)
class Tanh(Op):
    """``y = tanh(x)``."""


@dataclass(frozen=True, eq=False)
class MaxPool2d(Op):
    """2-D max pooling on ``[C, H, W]`` (padding counts as -inf, as in ONNX and torch)."""

    kernel: tuple[int, int] = (2, 2)
    stride: tuple[int, int] = (2, 2)
    padding: tuple[int, int] = (0, 0)


@dataclass(frozen=True, eq=False)
class Reshape(Op):
    """Reshape (row-major, as Flatten/Reshape in ONNX); element order is unchanged."""


@dataclass(frozen=True, eq=False)
class Add(Op):
    """Sum of two nodes of the same shape (residual connections)."""


ACTIVATIONS = (Relu, Sigmoid, Tanh)


def run_op(op: Op, args: list[torch.Tensor]) -> torch.Tensor:
    """Concrete semantics of one op on batched tensors ``[B, *shape]``."""
    if isinstance(op, Affine):
        y = op.operator.forward(args[0])
        return y if op.bias is None else y + op.bias
    if isinstance(op, Relu):
        return torch.relu(args[0])
    if isinstance(op, Sigmoid):
        return torch.sigmoid(args[0])
    if isinstance(op, Tanh):
        return torch.tanh(args[0])
    if isinstance(op, MaxPool2d):
        return F.max_pool2d(args[0], op.kernel, op.stride, op.padding)
    if isinstance(op, Reshape):
        return args[0].reshape(args[0].shape[0], *op.shape)
    if isinstance(op, Add):
        return args[0] + args[1]
    raise ModelError(f"no concrete semantics for op {op.kind} ({op.name})")


@dataclass(frozen=True, eq=False)
class Graph:
    """A network: ops in topological order, the first being the :class:`Input`.

    ``meta`` carries facts the frontend found, e.g. ``output_softmax=True`` when a final Softmax
    was dropped (exact for properties that only compare outputs with each other).
    """

    nodes: tuple[Op, ...]
    output: str
    name: str = "network"
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    # -- structure ---------------------------------------------------------------------------
    @property
    def input(self) -> Input:
        node = self.nodes[0]
        if not isinstance(node, Input):  # validate() guarantees it; a bug if not
            raise ModelError("graph must start with an Input node")
        return node

    @property
    def input_shape(self) -> Shape:
        return self.input.shape

    @property
    def output_shape(self) -> Shape:
        return self.node(self.output).shape

    def node(self, name: str) -> Op:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    def __iter__(self) -> Iterator[Op]:
        return iter(self.nodes)

    def __len__(self) -> int:
        return len(self.nodes)

    def consumers(self, name: str) -> list[Op]:
        return [n for n in self.nodes if name in n.inputs]

    def last_use(self) -> dict[str, int]:
        """Index of the last node that reads each node (the output counts as read at the end)."""
        last: dict[str, int] = {}
        for i, n in enumerate(self.nodes):
            for a in n.inputs:
                last[a] = i
        last[self.output] = len(self.nodes)
        return last

    def summary(self) -> str:
        parts = [f"{n.kind}{list(n.shape)}" for n in self.nodes]
        return " -> ".join(parts)

    def count_params(self) -> int:
        total = 0
        for n in self.nodes:
            if isinstance(n, Affine):
                w = getattr(n.operator, "weight", None)
                total += 0 if w is None else w.numel()
                total += 0 if n.bias is None else n.bias.numel()
        return total

    def validate(self) -> None:
        """Check topological order, shapes of Reshape/Add, and finiteness of all weights."""
        if not self.nodes or not isinstance(self.nodes[0], Input):
            raise ModelError("graph must start with an Input node")
        seen: dict[str, Op] = {}
        bad: list[str] = []
        for n in self.nodes:
            if n.name in seen:
                raise ModelError(f"duplicate node name {n.name!r}")
            for a in n.inputs:
                if a not in seen:
                    raise ModelError(f"node {n.name!r} reads {a!r} before it is defined")
            if isinstance(n, Reshape) and numel(n.shape) != numel(seen[n.inputs[0]].shape):
                raise ModelError(f"Reshape {n.name!r}: {seen[n.inputs[0]].shape} -> {n.shape} changes size")
            if isinstance(n, Add) and seen[n.inputs[0]].shape != seen[n.inputs[1]].shape:
                raise ModelError(f"Add {n.name!r}: operand shapes differ")
            if isinstance(n, Affine):
                if tuple(n.operator.in_shape) != tuple(seen[n.inputs[0]].shape):
                    raise ModelError(
                        f"{n.kind} {n.name!r}: expects input {n.operator.in_shape}, got {seen[n.inputs[0]].shape}"
                    )
                if any(not torch.isfinite(t).all() for t in n.tensors()):
                    bad.append(n.name)
            seen[n.name] = n
        if bad:
            raise ModelError(f"non-finite (NaN/inf) weights in node(s) {bad}")
        if self.output not in seen:
            raise ModelError(f"output {self.output!r} is not a node of the graph")

    def check_by_running(self) -> None:
        """Run every node once on a zero input (batch 1) and check that it yields its declared shape.

        Weights whose sizes disagree with what reaches them (a convolution's bias of 31 for 32
        channels, a channel count the previous node does not produce) become a :class:`ModelError`
        naming the node here, at load time, instead of a crash in the middle of an analysis."""
        if numel(self.input_shape) == 0:
            raise ModelError(f"the input has shape {tuple(self.input_shape)}: no input variables")
        values: dict[str, torch.Tensor] = {
            self.nodes[0].name: torch.zeros(1, *self.input_shape, dtype=self.dtype, device=self.device)}
        shapes = {n.name: tuple(n.shape) for n in self.nodes}
        last = self.last_use()
        with torch.no_grad():
            for i, n in enumerate(self.nodes[1:], start=1):
                try:
                    y = run_op(n, [values[a] for a in n.inputs])
                except (RuntimeError, ValueError, IndexError, TypeError) as exc:
                    got = ", ".join(str(shapes[a]) for a in n.inputs)
                    raise ModelError(f"{n.kind} {n.name!r} cannot run on its input of shape {got}: "
                                     f"{str(exc).splitlines()[0]}") from None
                if tuple(y.shape[1:]) != shapes[n.name]:
                    raise ModelError(f"{n.kind} {n.name!r} computes shape {tuple(y.shape[1:])} but is declared "
                                     f"{shapes[n.name]}")
                values[n.name] = y
                for a in n.inputs:
                    if last.get(a, -1) <= i:
                        values.pop(a, None)

    # -- concrete execution ------------------------------------------------------------------
    def forward(self, x: torch.Tensor, *, all_nodes: bool = False):
        """Run the network on ``x`` of shape ``[B, *input_shape]`` (returns ``[B, *output_shape]``).

        With ``all_nodes=True`` returns a dict of every node's value instead.
        """
        dtype = self.dtype
        x = x.to(dtype=dtype, device=self.device)
        if tuple(x.shape[1:]) != tuple(self.input_shape):
            x = x.reshape(x.shape[0], *self.input_shape)
        values: dict[str, torch.Tensor] = {self.nodes[0].name: x}
        last = self.last_use()
        for i, n in enumerate(self.nodes[1:], start=1):
            values[n.name] = run_op(n, [values[a] for a in n.inputs])
            if not all_nodes:
                for a in n.inputs:
                    if last.get(a, -1) <= i and a != self.output:
                        values.pop(a, None)
        return values if all_nodes else values[self.output]

    __call__ = forward

    @property
    def dtype(self) -> torch.dtype:
        for n in self.nodes:
            if isinstance(n, Affine):
                return n.operator._dtype()
        return torch.float64

    @property
    def device(self) -> torch.device:
        for n in self.nodes:
            if isinstance(n, Affine):
                return n.operator._device()
        return torch.device("cpu")

    def to(self, device=None, dtype=None) -> "Graph":
        """A copy with all weights on ``device`` / in ``dtype``; the graph itself when every weight
        already is (no copy, no second validation: analyses call this on every bound)."""
        nodes = tuple(n.to(device, dtype) for n in self.nodes)
        if all(a is b for a, b in zip(nodes, self.nodes)):
            return self
        return Graph(nodes, self.output, self.name, dict(self.meta))

    def prefix(self, upto: str) -> "Graph":
        """The sub-network that computes node ``upto`` (used by analyses that cut networks)."""
        idx = [n.name for n in self.nodes].index(upto)
        return Graph(self.nodes[: idx + 1], upto, f"{self.name}[:{upto}]", dict(self.meta))


def flat_size(shape: Shape) -> int:
    """Alias of :func:`absint.linear.numel` for readability at call sites."""
    return int(math.prod(shape))
