"""IR normalisation: exact rewrites that fewer, larger affine layers make analyses tighter and faster.

* ``diag ∘ A`` (BatchNorm / scaling after a dense or per-channel-compatible conv layer) is folded
  into ``A``'s weights; a bias-only affine node is folded into the producer's bias.
* ``W ∘ diag`` (input normalisation before a dense layer) is folded into ``W``.
* ``W2 ∘ W1`` (two dense layers with nothing in between, e.g. MatMul then Gemm) become one.
* chained Reshapes collapse; a Reshape to the same shape disappears.

Each rewrite only fires when the intermediate node has exactly one consumer and is not the
graph output, so no value anyone reads changes.
"""
from __future__ import annotations

from dataclasses import replace

import torch

from absint.ir import Affine, Graph, Op, Reshape
from absint.linear import ConvOperator, DenseOperator, DiagonalOperator


def _per_channel(scale: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor | None:
    """The scale as a per-output-channel vector if it only varies along axis 0 of ``shape``."""
    full = torch.broadcast_to(scale, shape)
    first = full.reshape(shape[0], -1)
    if torch.all(first == first[:, :1]):
        return first[:, 0]
    return None


def _fuse(first: Affine, second: Affine) -> Affine | None:
    """Return ``second ∘ first`` as one Affine node (named like ``second``), or None if not exact."""
    a, b = first.operator, second.operator
    b1 = first.bias_full() if first.bias is not None else None

    if isinstance(b, DiagonalOperator):
        s = torch.broadcast_to(b.scale, b.shape)
        new_bias = None if b1 is None else s * b1
        if second.bias is not None:
            new_bias = second.bias_full() if new_bias is None else new_bias + second.bias_full()
        if isinstance(a, DiagonalOperator):
            op = DiagonalOperator(torch.broadcast_to(a.scale, a.shape) * s, a.shape)
        elif isinstance(a, DenseOperator):
            op = DenseOperator(a.weight * s.reshape(-1, 1))
        elif isinstance(a, ConvOperator):
            per_channel = _per_channel(b.scale, b.shape)
            if per_channel is None:
                return None
            op = ConvOperator(a.weight * per_channel.reshape(-1, 1, 1, 1), a.in_shape, a.stride, a.padding,
                              a.dilation, a.groups)
        else:
            return None
        return Affine(second.name, first.inputs, second.shape, op, new_bias)

    if isinstance(b, DenseOperator) and isinstance(a, (DiagonalOperator, DenseOperator)):
        if isinstance(a, DiagonalOperator):
            if len(a.shape) != 1:
                return None
            weight = b.weight * torch.broadcast_to(a.scale, a.shape).reshape(1, -1)
        else:
            weight = b.weight @ a.weight
        new_bias = None if b1 is None else b.forward(b1)
        if second.bias is not None:
            new_bias = second.bias_full() if new_bias is None else new_bias + second.bias_full()
        return Affine(second.name, first.inputs, second.shape, DenseOperator(weight), new_bias)
    return None


def normalize(graph: Graph) -> Graph:
    """Apply the exact rewrites above until none fires."""
    nodes: list[Op] = list(graph.nodes)
    changed = True
    while changed:
        changed = False
        by_name = {n.name: n for n in nodes}
        consumers: dict[str, int] = {}
        for n in nodes:
            for a in n.inputs:
                consumers[a] = consumers.get(a, 0) + 1
        for i, n in enumerate(nodes):
            if not n.inputs:
                continue
            prev = by_name[n.inputs[0]]
            single = consumers.get(prev.name, 0) == 1 and prev.name != graph.output
            if isinstance(n, Reshape):
                src = by_name[n.inputs[0]]
                if tuple(n.shape) == tuple(src.shape) and n.name != graph.output:
                    nodes = _drop(nodes, n.name, src.name)
                    changed = True
                    break
                if isinstance(prev, Reshape) and single:
                    nodes[i] = replace(n, inputs=prev.inputs)
                    nodes.remove(prev)
                    changed = True
                    break
            if isinstance(n, Affine) and isinstance(prev, Affine) and single:
                fused = _fuse(prev, n)
                if fused is not None:
                    nodes[i] = fused
                    nodes.remove(prev)
                    changed = True
                    break
    return Graph(tuple(nodes), graph.output, graph.name, dict(graph.meta))


def _drop(nodes: list[Op], name: str, replacement: str) -> list[Op]:
    """Remove node ``name`` and make its readers read ``replacement``."""
    out = []
    for n in nodes:
        if n.name == name:
            continue
        if name in n.inputs:
            n = replace(n, inputs=tuple(replacement if a == name else a for a in n.inputs))
        out.append(n)
    return out
