"""Answering a VNN-LIB query against its ONNX models: ``sat`` / ``unsat`` / ``unknown`` / ``timed-out``.

:func:`solve` reads the query (1.0 or 2.0), checks the model mapping and element types (the error
conditions of VNN-LIB 2.0, section 5.3.2), binds and composes the networks
(:mod:`absint.vnnlib.product`), lowers the query (:mod:`absint.vnnlib.lowering`) and runs
:func:`absint.verify` on the result. The time limit covers all of it: reading, loading, lowering,
analysis.

``sat`` is only answered with an assignment of every declared variable that was checked: the
input is decoded from the lowered counterexample (a float32 point, :func:`absint.recheck.recheck`
re-ran it on the product graph), each network is re-run on it on its own (not the product graph)
in float64 and in float32 — onnxruntime on the ONNX file, float32 torch without onnxruntime, the
re-run of :mod:`absint.recheck` — and the query's formula is evaluated on both sets of values with
its exact semantics (strict comparisons, ``≠``, hidden nodes included). If any check fails the
answer is ``unknown``.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from absint.errors import QueryContractError
from absint.recheck import onnxruntime_outputs, torch_float32_outputs
from absint.results import Result, Verdict
from absint.vnnlib.lowering import SOUND_ELEMENT_TYPES, LoweredQuery, check_sound_types, lower_query
from absint.vnnlib.product import BoundNetwork, bind_network, build_graph
from absint.vnnlib.query import Query, Variable

log = logging.getLogger(__name__)

SAT, UNSAT, UNKNOWN, TIMED_OUT = "sat", "unsat", "unknown", "timed-out"


@dataclass
class Answer:
    """The outcome of :func:`solve`: ``status`` is one of the four words of section 5.3.1;
    ``assignment`` (for ``sat``) maps every declared variable to its values in its declared shape."""

    status: str
    reason: str = ""
    assignment: dict[str, np.ndarray] | None = None
    query: Query | None = None
    result: Result | None = None
    seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)


def check_network_mapping(query: Query, networks: Mapping[str, Any]) -> None:
    """Condition 1: one model per declared network not declared ``equal-to`` another, no more.

    A 1.0 query declares no network names; it takes exactly one model under any name."""
    if query.version == "1.0":
        if len(networks) != 1:
            raise QueryContractError(1, f"{query.source} is a VNN-LIB 1.0 query about one network; give exactly one "
                                        f"--network <name>=<model.onnx> (got {len(networks)})")
        return
    declared = {n.name: n for n in query.networks}
    for name in networks:
        if name not in declared:
            raise QueryContractError(1, f"--network maps {name!r}, which {query.source} does not declare "
                                        f"(it declares {list(declared)})")
        if declared[name].equal_to:
            raise QueryContractError(1, f"--network maps {name!r}, which {query.source} declares equal to "
                                        f"{declared[name].equal_to!r}; it takes no model of its own")
    for name, net in declared.items():
        if not net.equal_to and name not in networks:
            raise QueryContractError(1, f"no model given for network {name!r}, which {query.source} declares; "
                                        f"give --network {name}=<model.onnx>")
        if net.equal_to and net.equal_to not in declared:
            raise QueryContractError(1, f"network {name!r} is declared equal to {net.equal_to!r}, which "
                                        f"{query.source} does not declare")


def check_element_types(query: Query, bound: Mapping[str, BoundNetwork]) -> None:
    """Conditions 2 and 3. A query written in ``real`` throughout is exempt from both; otherwise
    every declared type must match its model's and be one absint analyses soundly."""
    variables = query.variables
    if all(v.dtype == "real" for v in variables):
        return
    for net in query.networks:
        b = bound[net.name]
        for v in net.variables:
            model_type = b.element_types.get(v.name)
            if v.dtype != "real" and model_type is not None and model_type != v.dtype:
                raise QueryContractError(2, f"{query.source} declares {v.name} of network {net.name!r} as {v.dtype}, "
                                            f"but {b.path} has {model_type} for ONNX tensor {b.onnx_names[v.name]!r}")
    check_sound_types(query)


def bind_all(query: Query, networks: Mapping[str, str | Path], deadline: float | None = None) \
        -> dict[str, BoundNetwork]:
    """Load every declared network's model (``equal-to`` copies share their target's)."""
    bound: dict[str, BoundNetwork] = {}
    if query.version == "1.0":
        (path,) = networks.values()
        net = query.networks[0]
        return {net.name: bind_network(net, path)}
    for net in query.networks:
        if not net.equal_to:
            bound[net.name] = bind_network(net, networks[net.name])
            if deadline is not None and time.perf_counter() > deadline:
                raise TimeoutError("time limit reached while loading the networks")
    for net in query.networks:
        if net.equal_to:
            bound[net.name] = bind_network(net, bound[net.equal_to].path)
    return bound


def evaluate(query: Query, lowered: LoweredQuery, bound: Mapping[str, BoundNetwork], z: np.ndarray,
             use_onnxruntime: bool = True) -> tuple[np.ndarray, list[np.ndarray]]:
    """Values of every declared element at the free input ``z``: inputs decoded from ``z``, hidden
    nodes and outputs from re-running each network on its own, in float64 (the IR) and in float32
    the way every counterexample is re-run (:mod:`absint.recheck`: onnxruntime on the ONNX file,
    float32 torch when onnxruntime is missing, cannot run it or ``use_onnxruntime`` is False).
    Returns ``(float64 values, [float32 values])``."""
    layout = lowered.layout
    z = np.asarray(z, dtype=np.float64).reshape(-1)
    values = np.zeros(query.n_elements)
    kinds = query.kinds()
    values[kinds == 0] = z[layout.x_src[kinds == 0]]
    values32 = values.copy()
    for net in query.networks:
        b = bound[net.name]
        inputs = [values[v.offset:v.offset + v.size] for v in b.decl.inputs]
        x = np.concatenate(inputs)
        with torch.no_grad():
            y = b.graph.forward(torch.as_tensor(x.reshape(1, *b.graph.input_shape))).reshape(-1).cpu().numpy()
        exposed = b.decl.hidden + b.decl.outputs
        ys = onnxruntime_outputs(b.path, inputs, [b.onnx_names[v.name] for v in b.decl.inputs],
                                 [b.onnx_names[v.name] for v in exposed]) if use_onnxruntime else None
        if ys is None:
            if use_onnxruntime:
                log.info("%s re-run in float32 torch (onnxruntime unavailable or unable to run it)", b.path)
            y32 = torch_float32_outputs(b.graph, x)
            ys = np.split(y32, np.cumsum([v.size for v in exposed])[:-1])
        pos = 0
        for v, arr in zip(exposed, ys):
            values[v.offset:v.offset + v.size] = y[pos:pos + v.size]
            values32[v.offset:v.offset + v.size] = arr
            pos += v.size
    return values, [values32]


def assignment_of(query: Query, values: np.ndarray) -> dict[str, np.ndarray]:
    """Every declared variable's values in its declared shape (declaration order)."""
    return {v.name: values[v.offset:v.offset + v.size].reshape(v.shape) for v in query.variables}


def solve(query: str | Path | Query, networks: Mapping[str, str | Path], *, timeout: float | None = None,
          analysis: str = "bab", attack: bool = True, start: float | None = None, **options: Any) -> Answer:
    """Answer ``query`` with the models ``networks`` (declared name -> ONNX path) within ``timeout``
    seconds counted from ``start`` (a ``time.perf_counter()`` value; default: now)."""
    from absint.verify import verify
    from absint.vnnlib import read_query

    t0 = time.perf_counter() if start is None else start
    deadline = None if timeout is None else t0 + timeout
    timings: dict[str, float] = {}

    def done(status: str, reason: str = "", **kw: Any) -> Answer:
        return Answer(status, reason, seconds=time.perf_counter() - t0, timings=timings, **kw)

    try:
        q = query if isinstance(query, Query) else read_query(query, deadline=deadline)
        timings["read"] = time.perf_counter() - t0
        check_network_mapping(q, networks)
        bound = bind_all(q, networks, deadline)
        timings["load"] = time.perf_counter() - t0 - timings["read"]
        check_element_types(q, bound)
        lowered = lower_query(q, deadline)
        if lowered.spec is None:
            return done(UNSAT, "the constraints on the inputs are infeasible", query=q)
        graph = build_graph(q, lowered.layout, bound)
        if graph.meta.get("product") and any(b.graph.meta.get("output_softmax") for b in bound.values()):
            from absint.errors import SpecError

            raise SpecError("a network ends in Softmax, which absint drops; that is exact only for a single "
                            "network whose outputs are compared with each other")
        timings["lower"] = time.perf_counter() - t0 - timings["read"] - timings["load"]
    except TimeoutError as exc:
        return done(TIMED_OUT, str(exc))
    left = None if deadline is None else max(0.0, deadline - time.perf_counter())
    if left is not None and left <= 0:
        return done(TIMED_OUT, "time limit reached before the analysis", query=q)
    result = verify(graph, lowered.spec, analysis=analysis, timeout=left, attack=attack, name=Path(q.source).stem,
                    **options)
    timings["analysis"] = result.seconds
    if result.verified:
        return done(UNSAT, "proved", query=q, result=result)
    if result.falsified and result.counterexample is not None:
        values, others = evaluate(q, lowered, bound, result.counterexample)
        failed = "float64" if not q.holds(values) else "float32" if not all(q.holds(o) for o in others) else ""
        if not failed:
            return done(SAT, "counterexample checked on the networks", assignment=assignment_of(q, values),
                        query=q, result=result)
        log.warning("%s: the analysis' counterexample does not satisfy the query under its exact semantics "
                    "(strict comparisons, hidden nodes) in %s; answering unknown", q.source, failed)
        return done(UNKNOWN, f"counterexample failed the exact check ({failed})", query=q, result=result)
    timed_out = result.reason.startswith("time-out") or (deadline is not None and time.perf_counter() >= deadline)
    return done(TIMED_OUT if timed_out else UNKNOWN, result.reason, query=q, result=result)
