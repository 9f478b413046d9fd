"""Binding a query's networks to ONNX models and composing them into one product graph.

:func:`bind_network` loads the model of one ``declare-network`` with a *flat interface*: its input
is the declared inputs concatenated (in declaration order, each bound to an ONNX input by order or
by name), its output the declared hidden tensors and outputs concatenated (hidden nodes bound to
ONNX tensors by name). :func:`build_graph` then realises a :class:`~absint.vnnlib.lowering.Layout`:

    z ──select──▶ network 1 ──┐
      ├─select──▶ network 2 ──┼──embed + Add──▶ y = [net 1 | net 2 | exposed entries of z]
      └─select──────────────────┘

with 0/1 :class:`~absint.linear.DenseOperator` selections and embeddings (Affine nodes) and
:class:`~absint.ir.Add` nodes: linear maps, exact in every domain, so every analysis runs on the
product unchanged. A query with the trivial layout gets the network graph itself.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from absint.errors import ModelError, SpecError
from absint.frontends.normalize import normalize
from absint.ir import Add, Affine, Graph, Input, Op, Reshape
from absint.linear import DenseOperator, numel
from absint.vnnlib.lowering import Layout
from absint.vnnlib.query import NetworkDecl, Query, Variable

log = logging.getLogger(__name__)

#: ONNX TensorProto element type numbers -> the standard's spelling (ONNX IR "Set 1" names).
ONNX_DTYPES = {1: "float32", 2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32", 7: "int64", 9: "bool",
               10: "float16", 11: "float64", 12: "uint32", 13: "uint64", 14: "complex64", 15: "complex128",
               16: "bfloat16", 17: "float8e4m3fn", 18: "float8e4m3fnuz", 19: "float8e5m2", 20: "float8e5m2fnuz",
               23: "float4e2m1"}


@dataclass(frozen=True, eq=False)
class BoundNetwork:
    """A declared network with its model: ``graph`` has the flat interface of the module
    docstring; ``element_types`` maps each declared variable to its ONNX element type (None when
    the model does not record it, e.g. a hidden tensor without ``value_info``)."""

    decl: NetworkDecl
    path: str
    graph: Graph
    onnx_names: dict[str, str]
    element_types: dict[str, str | None]
    opset: int | None


def _tensor_types(model) -> dict[str, int]:
    g = model.graph
    types = {}
    for vi in list(g.input) + list(g.output) + list(g.value_info):
        if vi.type.HasField("tensor_type"):
            types[vi.name] = vi.type.tensor_type.elem_type
    for t in g.initializer:
        types[t.name] = t.data_type
    return types


def _bind(decl: NetworkDecl, group: tuple[Variable, ...], available: list[str], what: str, path: str) -> list[str]:
    """ONNX names for ``group`` (inputs or outputs): all by name, or by declaration order."""
    named = [v.onnx_name for v in group]
    if all(named):
        for v in group:
            if v.onnx_name not in available:
                raise ModelError(f"{path}: network {decl.name!r} binds {what} {v.name} to {v.onnx_name!r}, but the "
                                 f"model's {what}s are {available}")
        return named  # type: ignore[return-value]
    if any(named):
        raise SpecError(f"network {decl.name!r}: either every {what} names its ONNX node or none does "
                        "(VNN-LIB 2.0, section 3.1.3)")
    if len(group) != len(available):
        raise ModelError(f"{path}: network {decl.name!r} declares {len(group)} {what}(s) "
                         f"{[v.name for v in group]} but the model has {len(available)}: {available}")
    return list(available)


def bind_network(decl: NetworkDecl, path: str | Path) -> BoundNetwork:
    """Load ``path`` as the model of ``decl`` (see the module docstring); checks that every
    declared shape has as many elements as the tensor it binds to."""
    from absint.frontends.onnx_loader import lower_onnx, read_onnx

    path = str(path)
    model = read_onnx(path)
    inits = {t.name for t in model.graph.initializer}
    model_inputs = [i.name for i in model.graph.input if i.name not in inits]
    model_outputs = [o.name for o in model.graph.output]
    in_names = _bind(decl, decl.inputs, model_inputs, "input", path)
    out_names = _bind(decl, decl.outputs, model_outputs, "output", path)
    hidden_names = []
    for v in decl.hidden:
        if not v.onnx_name:
            raise SpecError(f"hidden variable {v.name} of network {decl.name!r} names no ONNX tensor")
        hidden_names.append(v.onnx_name)
    exposed = hidden_names + out_names
    graph = lower_onnx(model, path, inputs=in_names, outputs=exposed)
    names = dict(zip([v.name for v in decl.inputs], in_names))
    names.update(zip([v.name for v in decl.hidden + decl.outputs], exposed))
    for v, shape in zip(decl.inputs + decl.hidden + decl.outputs,
                        list(graph.meta["input_shapes"]) + list(graph.meta["output_shapes"])):
        if numel(shape) != v.size:
            raise ModelError(f"{path}: {v.kind} {v.name} of network {decl.name!r} is declared {list(v.shape)} "
                             f"({v.size} elements) but ONNX tensor {names[v.name]!r} has {numel(shape)} elements "
                             f"(shape {list(shape)} without the batch axis)")
    types = _tensor_types(model)
    element_types = {v: ONNX_DTYPES.get(types.get(t, 0)) for v, t in names.items()}
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    return BoundNetwork(decl, path, graph, names, element_types, opset)


def _select(rows: np.ndarray, n_in: int) -> DenseOperator:
    """The 0/1 matrix picking entries ``rows`` of a vector of length ``n_in``."""
    m = torch.zeros(len(rows), n_in, dtype=torch.float64)
    m[torch.arange(len(rows)), torch.as_tensor(rows, dtype=torch.long)] = 1.0
    return DenseOperator(m)


def build_graph(query: Query, layout: Layout, bound: dict[str, BoundNetwork]) -> Graph:
    """The product graph realising ``layout`` (the network graph itself for a trivial layout)."""
    nets = query.networks
    if layout.trivial:
        return bound[nets[0].name].graph
    nodes: list[Op] = [Input("z", (), (layout.n_free,))]
    segments: list[tuple[str, int]] = []
    for k, net in enumerate(nets):
        g = bound[net.name].graph
        prefix = f"{k}.{net.name}/"
        rows = np.concatenate([layout.x_src[v.offset:v.offset + v.size] for v in net.inputs])
        feed = prefix + "select"
        nodes.append(Affine(feed, ("z",), (len(rows),), _select(rows, layout.n_free), None))
        if tuple(g.input_shape) != (len(rows),):
            nodes.append(Reshape(prefix + "input", (feed,), tuple(g.input_shape)))
            feed = prefix + "input"
        names = {g.input.name: feed}
        for n in g.nodes[1:]:
            names[n.name] = prefix + n.name
            nodes.append(replace(n, name=names[n.name], inputs=tuple(names[a] for a in n.inputs)))
        out = names[g.output]
        size = numel(g.output_shape)
        if tuple(g.output_shape) != (size,):
            nodes.append(Reshape(prefix + "flat", (out,), (size,)))
            out = prefix + "flat"
        if size != layout.segments[k].size:
            raise ModelError(f"network {net.name!r}: its model gives {size} output values, the query declares "
                             f"{layout.segments[k].size}")
        segments.append((out, size))
    if len(layout.exposed):
        nodes.append(Affine("exposed", ("z",), (len(layout.exposed),), _select(layout.exposed, layout.n_free), None))
        segments.append(("exposed", len(layout.exposed)))
    if len(segments) == 1:
        output = segments[0][0]
    else:
        start, output = 0, ""
        for i, (node, size) in enumerate(segments):
            embed = torch.zeros(layout.n_out, size, dtype=torch.float64)
            embed[torch.arange(start, start + size), torch.arange(size)] = 1.0
            start += size
            name = f"y.{i}"
            nodes.append(Affine(name, (node,), (layout.n_out,), DenseOperator(embed), None))
            if output:
                nodes.append(Add(f"y.sum{i}", (output, name), (layout.n_out,)))
                name = f"y.sum{i}"
            output = name
    meta = {"source": query.source, "networks": [bound[n.name].path for n in nets], "product": True}
    return normalize(Graph(tuple(nodes), output, Path(query.source).stem, meta))
