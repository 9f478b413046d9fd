"""The interpreter: walks a network graph once, calling a domain's transformer for each op.

Traversal is kept apart from the domains (as in jax_verify): the domain knows what happens at
one op, the interpreter knows the order and which values are still needed. An optional
``refine`` hook runs after every node and may return a tighter element (LP/MILP refinement,
k-ReLU constraints); it is how analyses tighten intermediate bounds without touching domains.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from absint.errors import UnsupportedOpError
from absint.ir import Graph, Op
from absint.domains.base import Domain

log = logging.getLogger(__name__)

RefineHook = Callable[[Op, Any], Any]


def apply_op(domain: Domain, op: Op, args: list[Any]) -> Any:
    """Apply the transformer of ``domain`` for ``op`` to the input elements ``args`` (the op table
    :data:`absint.domains.base.TRANSFORMERS`)."""
    return domain.transfer(op, args)


def check_supported(graph: Graph, domain: Domain) -> None:
    """Raise one :class:`UnsupportedOpError` naming every node of ``graph`` that ``domain`` cannot
    handle (analyses run :func:`absint.analyses.check_supported`, which also asks the analysis)."""
    bad = [(n.name, n.kind, f"domain {domain.name!r} has no transformer for it")
           for n in graph.nodes if not domain.supports(n)]
    if bad:
        raise UnsupportedOpError(bad, f"{graph.name or 'network'} with domain {domain.name!r}")


@dataclass
class Propagation:
    """Result of one pass: the output element and, if kept, every node's element."""

    output: Any
    elements: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


def bounds_recorder(domain: Domain, keep: Callable[[Op], bool], into: dict[str, tuple[Any, Any]],
                    convert: Callable[[torch.Tensor], Any] = lambda t: t.reshape(-1)) -> RefineHook:
    """A ``refine`` hook for :func:`propagate` that records ``into[node.name] = (lower, upper)``
    (each passed through ``convert``; default: flattened tensors) for the nodes ``keep`` selects,
    and leaves every element unchanged."""
    def hook(node: Op, element: Any) -> Any:
        if keep(node):
            lo, hi = domain.bounds(element)
            into[node.name] = (convert(lo), convert(hi))
        return element
    return hook


def propagate(graph: Graph, domain: Domain, lower: torch.Tensor, upper: torch.Tensor, *,
              keep_all: bool = False, refine: RefineHook | None = None,
              deadline: float | None = None) -> Propagation:
    """Push the boxes ``[lower, upper]`` (``[B, *input_shape]``) through ``graph`` with ``domain``.

    ``keep_all`` keeps every node's element (for analyses that read intermediate bounds); by
    default elements are dropped once no later node reads them. ``deadline`` (a
    ``time.perf_counter()`` value) raises :class:`TimeoutError` between nodes once passed.
    """
    import time

    t0 = time.perf_counter()
    check_supported(graph, domain)
    lower = domain.tensor(lower)
    upper = domain.tensor(upper)
    if tuple(lower.shape[1:]) != tuple(graph.input_shape):
        lower = lower.reshape(lower.shape[0], *graph.input_shape)
        upper = upper.reshape(upper.shape[0], *graph.input_shape)
    values: dict[str, Any] = {graph.input.name: domain.from_box(lower, upper)}
    last = graph.last_use()
    for i, node in enumerate(graph.nodes[1:], start=1):
        if deadline is not None and time.perf_counter() > deadline:
            raise TimeoutError(f"time limit reached before node {node.name}")
        element = apply_op(domain, node, [values[a] for a in node.inputs])
        if refine is not None:
            element = refine(node, element)
        values[node.name] = element
        if not keep_all:
            for a in node.inputs:
                if last.get(a, -1) <= i:
                    values.pop(a, None)
    return Propagation(values[graph.output], values if keep_all else {}, time.perf_counter() - t0)
