"""The engine's graph view: nodes that know their parents, over any DAG.

A :class:`Node` pairs an IR op record (:mod:`absint.ir`: ``Input``, ``Affine``, ``Relu``, ``Sigmoid``,
``Tanh``, ``MaxPool2d``, ``Reshape``, ``Add``) with the nodes it reads. The backward pass walks nodes
from a start node to the input, deepest first (``index`` is a topological rank), so residual
``Add`` nodes and every other DAG shape are the same code path; no chain is ever extracted.

Two ways to get nodes:

* :meth:`GraphView.of` builds one node per op of an :class:`~absint.ir.Graph` (graph-wide analyses:
  α/β optimisation, branch and bound, SDP, refinement);
* the DeepPoly domain (:mod:`absint.domains.deeppoly`) creates nodes one at a time as the
  interpreter calls its transformers — its abstract elements *are* nodes.

A node's ``cache`` memoises quantities that are functions of the node's definition (concrete
bounds, relaxation lines, rounding-error weights); bounds only ever tighten. Nodes are compared
by identity.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator

import torch

from absint.errors import DomainError
from absint.ir import ACTIVATIONS, Add, Affine, Graph, Input, MaxPool2d, Op, Relu, Reshape, Sigmoid, Tanh
from absint.linear import DiagonalOperator, PermuteOperator, numel

__all__ = ["Node", "GraphView", "NONLINEAR", "SUPPORTED_OPS"]

#: ops whose output is bounded through a relaxation of their input's bounds
NONLINEAR = (Relu, Sigmoid, Tanh, MaxPool2d)
#: ops the engine has backward rules for (see :mod:`absint.domains.linear_bounds.rules`)
SUPPORTED_OPS = (Input, Affine, Relu, Sigmoid, Tanh, MaxPool2d, Reshape, Add)


@dataclass(frozen=True, eq=False)
class Node:
    """One node: an op, its parent nodes, its topological rank and a memo (see module docstring).

    ``batch`` is the number of independent regions (batch members) bounded together;
    ``boxlike`` marks nodes whose neurons are independent with exact bounds (the input and
    element-wise maps or permutations of it): back-substitution stops there; ``max_width`` is
    the largest flat size among the node and its ancestors (row chunking budget).
    """

    op: Op
    parents: tuple["Node", ...] = ()
    index: int = 0
    batch: int = 1
    boxlike: bool = False
    max_width: int = 0
    cache: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    # -- shape ---------------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.op.shape)

    @property
    def numel(self) -> int:
        """Neurons per batch member."""
        return numel(self.shape)

    @property
    def batch_size(self) -> int:
        return self.batch

    @property
    def kind(self) -> str:
        return self.op.kind

    @property
    def name(self) -> str:
        return self.op.name

    def __repr__(self) -> str:
        return f"Node({self.op.kind} {self.op.name!r}, shape={self.shape}, batch={self.batch}, index={self.index})"

    # -- construction --------------------------------------------------------------------------
    @staticmethod
    def make(op: Op, parents: tuple["Node", ...], batch: int) -> "Node":
        """A node for ``op`` reading ``parents`` (rank, box-likeness and widths derived)."""
        if isinstance(op, Input):
            return Node(op, (), 0, batch, True, numel(op.shape))
        index = 1 + max(p.index for p in parents)
        boxlike = (isinstance(op, Reshape) and parents[0].boxlike) or (
            isinstance(op, Affine) and parents[0].boxlike and isinstance(op.operator, (DiagonalOperator, PermuteOperator)))
        width = max([numel(op.shape)] + [p.max_width for p in parents])
        return Node(op, tuple(parents), index, batch, boxlike, width)

    def renewed(self) -> "Node":
        """The same definition with an empty memo (used to attach other bounds to it)."""
        return Node(self.op, self.parents, self.index, self.batch, self.boxlike, self.max_width)

    # -- bias of an affine node -------------------------------------------------------------------
    def flat_bias(self) -> torch.Tensor | None:
        """The bias of an Affine node broadcast to ``[numel]`` (memoised), or None."""
        if "bias" not in self.cache:
            op = self.op
            b = None
            if isinstance(op, Affine) and op.bias is not None:
                b = torch.broadcast_to(op.bias, self.shape).reshape(-1).contiguous()
            self.cache["bias"] = b
        return self.cache["bias"]

    def ancestors(self) -> list["Node"]:
        """This node and every node it depends on, deepest first (reverse topological)."""
        seen: dict[int, Node] = {}
        stack = [self]
        while stack:
            e = stack.pop()
            if id(e) in seen:
                continue
            seen[id(e)] = e
            stack.extend(e.parents)
        return sorted(seen.values(), key=lambda e: -e.index)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)  # object identities mean nothing after unpickling
        state["cache"] = {k: v for k, v in self.cache.items() if k != "ancestor_ids"}
        return state

    def ancestor_ids(self) -> frozenset[int]:
        """Identities of this node and all nodes it depends on (memoised, built from the parents')."""
        ids = self.cache.get("ancestor_ids")
        if ids is None:
            ids = frozenset({id(self)}).union(*(p.ancestor_ids() for p in self.parents))
            self.cache["ancestor_ids"] = ids
        return ids

    def input_node(self) -> "Node":
        """The Input node this node depends on."""
        node = self
        while node.parents:
            node = node.parents[0]
        return node


@dataclass
class GraphView:
    """All nodes of a :class:`~absint.ir.Graph` for ``batch`` regions (see module docstring)."""

    graph: Graph
    nodes: dict[str, Node]
    batch: int

    @staticmethod
    def of(graph: Graph, batch: int = 1) -> "GraphView":
        """One node per op of ``graph``; raises :class:`DomainError` naming every unsupported op."""
        check_supported(graph)
        nodes: dict[str, Node] = {}
        for op in graph.nodes:
            nodes[op.name] = Node.make(op, tuple(nodes[a] for a in op.inputs), batch)
        return GraphView(graph, nodes, batch)

    def __iter__(self) -> Iterator[Node]:
        return iter(self.nodes.values())

    def __getitem__(self, name: str) -> Node:
        return self.nodes[name]

    @property
    def input(self) -> Node:
        return self.nodes[self.graph.input.name]

    @property
    def output(self) -> Node:
        return self.nodes[self.graph.output]

    def activations(self, kinds: tuple[type, ...] = ACTIVATIONS) -> list[Node]:
        """Nodes of the given op kinds (default: ReLU, sigmoid, tanh), in topological order."""
        return [n for n in self.nodes.values() if isinstance(n.op, kinds)]

    def relus(self) -> list[Node]:
        """The ReLU nodes in topological order."""
        return self.activations((Relu,))

    def preactivations(self) -> list[Node]:
        """The input nodes of every nonlinear node (ReLU, sigmoid, tanh, max-pool), in order."""
        seen: dict[int, Node] = {}
        for n in self.nodes.values():
            if isinstance(n.op, NONLINEAR):
                seen.setdefault(id(n.parents[0]), n.parents[0])
        return sorted(seen.values(), key=lambda n: n.index)


def check_supported(graph: Graph) -> None:
    """Raise one :class:`DomainError` naming every node the engine has no backward rule for."""
    bad = [(n.name, n.kind) for n in graph.nodes if not isinstance(n, SUPPORTED_OPS)]
    if bad:
        raise DomainError("the linear-bound engine cannot analyse node(s): "
                          + ", ".join(f"{a} ({k})" for a, k in bad))
