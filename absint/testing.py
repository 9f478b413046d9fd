"""Conformance kit: the same sampled checks for every abstract domain, built-in or plugin.

In the spirit of scikit-learn's ``check_estimator``: a domain author runs ::

    from absint.testing import check_domain
    report = check_domain(MyDomain)   # ConformanceError naming every failed check, else a report
    print(report)

or, in the plugin's own pytest suite, one line gives one test per check::

    from absint.testing import domain_conformance_tests
    test_conformance = domain_conformance_tests(MyDomain)

Every check builds small random networks in the IR (seeded, so a failure reproduces) and runs
the domain through them, transformer by transformer, the way the interpreter does. "Sound" means:
the concrete values of random points of the input box (its centre, its lower and upper corners,
random vertices and uniform points) lie within ``bounds`` at every node, and
``linear_bounds(C, d) ≤ C·y + d`` for every sampled output ``y``. The checks (:data:`CHECKS`):

* per transformer: ``from_box``, ``affine_dense``, ``affine_conv``, ``affine_diagonal``, ``relu``,
  ``reshape``, ``add``, ``sigmoid``, ``tanh``, ``maxpool``, ``linear_bounds``, ``meet_box``;
* whole networks: ``network_mlp``, ``network_cnn`` (convolutions and max pooling),
  ``network_residual`` (``Add``), each also through the domain's analysis (``DomainAnalysis``);
* properties: ``not_looser_than_box`` (bounds at every node within Box's), ``deterministic``,
  ``inputs_not_mutated`` (no transformer writes into its arguments), ``picklable`` (elements and
  the domain round-trip through pickle and stay usable), ``batching`` (``B > 1`` regions at once
  give the bounds of ``B`` separate runs).

A domain that is sound but may be looser than Box at some nodes (e.g. DeepZ's ReLU lets a lower
bound go below 0) declares it with a class attribute, read by ``not_looser_than_box``::

    never_looser_than_box = "output"   # only the network output and linear_bounds are compared
    never_looser_than_box = False      # no comparison (the default is True: every node)

A transformer that raises :class:`NotImplementedError` or :class:`~absint.errors.DomainError`
for an optional op counts as "not supported": the cases using it are skipped, not failed.
Containment allows ``ATOL + RTOL·|value|`` (1e-9 each) for float64 rounding; the comparison with
Box allows ``PRECISION_TOL`` (1e-6), so outward-rounding margins pass. The checks run with one
torch thread (restored afterwards): the networks are tiny. Each check takes well under a second
for the built-in domains.
"""
from __future__ import annotations

import math
import pickle
import time
import traceback
import zlib
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, Callable, Iterable

import numpy as np
import torch

from absint.errors import AbsintError, DomainError
from absint.interpreter import apply_op
from absint.ir import Add, Affine, Graph, Input, MaxPool2d, Op, Relu, Reshape, Sigmoid, Tanh
from absint.linear import ConvOperator, DenseOperator, DiagonalOperator, numel
from absint.domains.base import Domain
from absint.domains.box import BoxDomain

__all__ = ["CHECKS", "CheckResult", "ConformanceReport", "check_domain", "run_check", "domain_conformance_tests"]

#: Containment tolerance: a value counts as inside ``[lo, hi]`` if within ``ATOL + RTOL·|value|``.
ATOL = 1e-9
RTOL = 1e-9
#: "Not looser than Box" allows this much (absolute and relative): outward rounding margins are fine.
PRECISION_TOL = 1e-6
TRANSFORMER_CHECKS = ("from_box", "affine_dense", "affine_conv", "affine_diagonal", "relu", "reshape", "add",
                      "sigmoid", "tanh", "maxpool", "linear_bounds", "meet_box")
NETWORK_CHECKS = ("network_mlp", "network_cnn", "network_residual")
PROPERTY_CHECKS = ("not_looser_than_box", "deterministic", "inputs_not_mutated", "picklable", "batching")
CHECKS: tuple[str, ...] = ("interface",) + TRANSFORMER_CHECKS + NETWORK_CHECKS + PROPERTY_CHECKS
_REQUIRED_OPS = (Input, Affine, Relu)


# -- results ---------------------------------------------------------------------------------
class ConformanceError(AbsintError, AssertionError):
    """A domain failed a conformance check (also an ``AssertionError``, so pytest reports it as a
    failed test); raised explicitly, so the checks also run under ``python -O``."""


@dataclass
class CheckResult:
    """Outcome of one check: ``status`` is ``"passed"``, ``"failed"`` or ``"skipped"``."""

    name: str
    status: str
    seconds: float
    message: str = ""


@dataclass
class ConformanceReport:
    """All check results for one domain (``str(report)`` is a readable table)."""

    domain: str
    domain_class: type
    options: Any
    results: list[CheckResult] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return all(r.status != "failed" for r in self.results)

    @property
    def failures(self) -> list[CheckResult]:
        return [r for r in self.results if r.status == "failed"]

    def failure_message(self) -> str:
        bad = self.failures
        head = (f"domain {self.domain!r} ({self.domain_class.__module__}.{self.domain_class.__qualname__}, "
                f"options={self.options!r}) failed {len(bad)} of {len(self.results)} conformance checks:")
        return "\n".join([head] + [f"  - {r.name}: {r.message}" for r in bad])

    def __str__(self) -> str:
        lines = [f"conformance of domain {self.domain!r}: {'passed' if self.passed else 'FAILED'} "
                 f"({len(self.results)} checks, {self.seconds:.2f} s)"]
        for r in self.results:
            note = f"  {r.message}" if r.message else ""
            lines.append(f"  {r.status:<7} {r.name:<20} {r.seconds:6.2f} s{note}")
        return "\n".join(lines)


class _Unsupported(Exception):
    """The domain declined an optional transformer (NotImplementedError / DomainError)."""


# -- random networks -------------------------------------------------------------------------
def random_mlp(seed: int, sizes: tuple[int, ...], *, act: type[Op] = Relu, bias_scale: float = 0.1) -> Graph:
    """A random fully connected network ``sizes[0] → … → sizes[-1]`` for tests.

    Layer ``i`` is ``fc{i}`` (weights ``N(0, 1)·1.5/√fan_in``, biases ``N(0, 1)·bias_scale``, drawn in
    that order from ``torch.Generator().manual_seed(seed)``), followed by ``act{i}`` except after
    the last layer.
    """
    g = torch.Generator().manual_seed(seed)
    nodes: list[Op] = [Input("x", (), (sizes[0],))]
    src = "x"
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        w = torch.randn(b, a, generator=g, dtype=torch.float64) * (1.5 / a ** 0.5)
        bias = torch.randn(b, generator=g, dtype=torch.float64) * bias_scale
        nodes.append(Affine(f"fc{i}", (src,), (b,), DenseOperator(w), bias))
        src = f"fc{i}"
        if i < len(sizes) - 2:
            nodes.append(act(f"act{i}", (src,), (b,)))  # type: ignore[call-arg]
            src = f"act{i}"
    return Graph(tuple(nodes), src)


class _Net:
    """Builds a small random IR graph node by node (weights from a seeded generator)."""

    def __init__(self, gen: torch.Generator, input_shape: tuple[int, ...], name: str) -> None:
        self.gen, self.name = gen, name
        self.nodes: list[Op] = [Input("x", (), tuple(input_shape))]
        self.shapes = {"x": tuple(input_shape)}

    def _randn(self, *shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=self.gen, dtype=torch.float64)

    def _push(self, op: Op) -> str:
        self.nodes.append(op)
        self.shapes[op.name] = tuple(op.shape)
        return op.name

    def _name(self, kind: str) -> str:
        return f"{kind}{len(self.nodes)}"

    def dense(self, x: str, n: int, scale: float = 1.5) -> str:
        n_in = numel(self.shapes[x])
        w = self._randn(n, n_in) * scale / math.sqrt(n_in)
        return self._push(Affine(self._name("dense"), (x,), (n,), operator=DenseOperator(w), bias=0.3 * self._randn(n)))

    def conv(self, x: str, c_out: int, k: int = 3, stride: int = 1, pad: int = 1) -> str:
        c = self.shapes[x][0]
        weight = self._randn(c_out, c, k, k) * 1.5 / math.sqrt(c * k * k)
        op = ConvOperator(weight, self.shapes[x], (stride, stride), (pad, pad))
        bias = 0.3 * self._randn(c_out, 1, 1)
        return self._push(Affine(self._name("conv"), (x,), op.out_shape, operator=op, bias=bias))

    def diag(self, x: str, channelwise: bool = False) -> str:
        shape = self.shapes[x]
        sshape = (shape[0],) + (1,) * (len(shape) - 1) if channelwise else shape
        op = DiagonalOperator(1.5 * self._randn(*sshape), shape)
        return self._push(Affine(self._name("diag"), (x,), shape, operator=op, bias=0.3 * self._randn(*shape)))

    def act(self, x: str, kind: type[Op]) -> str:
        return self._push(kind(self._name(kind.__name__.lower()), (x,), self.shapes[x]))

    def maxpool(self, x: str, k: int, stride: int, pad: int) -> str:
        c, h, w = self.shapes[x]
        shape = (c, (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1)
        return self._push(MaxPool2d(self._name("maxpool"), (x,), shape, kernel=(k, k), stride=(stride, stride),
                                    padding=(pad, pad)))

    def reshape(self, x: str, shape: tuple[int, ...]) -> str:
        return self._push(Reshape(self._name("reshape"), (x,), tuple(shape)))

    def add(self, x: str, y: str) -> str:
        return self._push(Add(self._name("add"), (x, y), self.shapes[x]))

    def graph(self) -> Graph:
        return Graph(tuple(self.nodes), self.nodes[-1].name, self.name)


def _case_from_box(n: _Net) -> None:
    pass


def _case_dense(n: _Net) -> None:
    n.dense(n.act(n.dense("x", 7), Relu), 5)


def _case_conv(n: _Net) -> None:
    n.conv(n.act(n.conv("x", 3), Relu), 2, k=3, stride=2, pad=1)


def _case_diag(n: _Net) -> None:
    n.diag(n.act(n.diag("x"), Relu), channelwise=True)


def _case_relu(n: _Net) -> None:
    n.act(n.dense(n.act(n.dense(n.act("x", Relu), 8), Relu), 4), Relu)


def _case_reshape(n: _Net) -> None:
    flat = n.reshape(n.act(n.conv("x", 2), Relu), (18,))
    n.conv(n.reshape(n.dense(flat, 8), (2, 2, 2)), 1, k=2, pad=0)


def _case_add(n: _Net) -> None:
    a, b = n.dense("x", 6), n.dense("x", 6)
    ra, rb = n.act(a, Relu), n.act(b, Relu)
    s = n.add(n.add(ra, rb), n.add(a, rb))  # relaxed + relaxed, exact + relaxed
    n.dense(n.add(n.act(s, Relu), n.add("x", "x")), 3)


def _case_act(kind: type[Op]) -> Callable[[_Net], None]:
    def build(n: _Net) -> None:
        n.act(n.dense(n.act(n.dense(n.act("x", kind), 6, scale=4.0), kind), 4, scale=4.0), kind)
    return build


def _case_maxpool(n: _Net) -> None:
    h = n.maxpool(n.act(n.conv("x", 3), Relu), 2, 2, 0)
    n.maxpool(h, 3, 2, 1)


def _case_maxpool_input(n: _Net) -> None:
    n.maxpool("x", 2, 2, 0)


def _case_mlp(n: _Net) -> None:
    n.dense(n.act(n.dense(n.act(n.dense("x", 12), Relu), 10), Relu), 4)


def _case_cnn(n: _Net) -> None:
    h = n.maxpool(n.act(n.conv("x", 4), Relu), 2, 2, 0)
    h = n.act(n.conv(h, 3, k=2, stride=1, pad=0), Relu)
    n.dense(n.act(n.dense(n.reshape(h, (numel(n.shapes[h]),)), 10), Relu), 4)


def _case_residual(n: _Net) -> None:
    h = n.act(n.dense("x", 8), Relu)
    r = n.add(n.dense(n.act(n.dense(h, 8), Relu), 8), h)
    n.dense(n.act(n.add(n.act(r, Relu), n.dense(r, 8)), Relu), 3)


@dataclass(frozen=True)
class _Case:
    """A random network for one check: builder, input shape, input-box scale."""

    name: str
    build: Callable[[_Net], None]
    input_shape: tuple[int, ...]
    scale: float = 1.0


_CASES: dict[str, tuple[_Case, ...]] = {
    "from_box": (_Case("from_box/flat", _case_from_box, (5,)), _Case("from_box/image", _case_from_box, (2, 3, 3))),
    "affine_dense": (_Case("dense", _case_dense, (6,)),),
    "affine_conv": (_Case("conv", _case_conv, (2, 5, 5)),),
    "affine_diagonal": (_Case("diag/flat", _case_diag, (6,)), _Case("diag/image", _case_diag, (2, 3, 3))),
    "relu": (_Case("relu", _case_relu, (8,)),),
    "reshape": (_Case("reshape", _case_reshape, (2, 3, 3)),),
    "add": (_Case("add", _case_add, (6,)),),
    "sigmoid": (_Case("sigmoid", _case_act(Sigmoid), (6,), 2.0),),
    "tanh": (_Case("tanh", _case_act(Tanh), (6,), 2.0),),
    "maxpool": (_Case("maxpool", _case_maxpool, (2, 6, 6)), _Case("maxpool/input", _case_maxpool_input, (2, 4, 4))),
    "network_mlp": (_Case("mlp", _case_mlp, (6,)),),
    "network_cnn": (_Case("cnn", _case_cnn, (2, 6, 6)),),
    "network_residual": (_Case("residual", _case_residual, (6,)),),
}
_NETWORK_CASES = tuple(c for k in NETWORK_CHECKS for c in _CASES[k])
_ALL_CASES = tuple(c for k in TRANSFORMER_CHECKS + NETWORK_CHECKS for c in _CASES.get(k, ()))


# -- the harness -----------------------------------------------------------------------------
class _Harness:
    """Shared state of one run: the domain under test, seeds, sample counts, helpers."""

    def __init__(self, cls: type[Domain], options: Any, seed: int, n_samples: int, quick: bool,
                 box_mode: Any) -> None:
        self.cls, self.options, self.seed, self.n_samples, self.quick = cls, options, seed, n_samples, quick
        self.box_mode = {True: "nodes", False: "none"}.get(box_mode, box_mode)
        if self.box_mode not in ("nodes", "output", "none"):
            raise ValueError(f"never_looser_than_box must be True, False or 'output', not {box_mode!r}")
        self.notes: list[str] = []

    def domain(self) -> Domain:
        return self.cls(self.options)

    def gen(self, tag: str) -> torch.Generator:
        return torch.Generator().manual_seed(zlib.crc32(f"{self.seed}/{tag}".encode()))

    def graph(self, case: _Case) -> Graph:
        net = _Net(self.gen("graph/" + case.name), case.input_shape, case.name)
        case.build(net)
        return net.graph()

    def box(self, case: _Case, batch: int, tag: str = "") -> tuple[torch.Tensor, torch.Tensor]:
        """Random boxes ``[batch, *shape]``: some coordinates degenerate, some with a bound at 0."""
        g = self.gen(f"box/{case.name}/{batch}/{tag}")
        shape = (batch, *case.input_shape)
        centre = (2 * torch.rand(shape, generator=g, dtype=torch.float64) - 1) * case.scale
        radius = 0.5 * torch.rand(shape, generator=g, dtype=torch.float64) * case.scale
        kind = torch.rand(shape, generator=g, dtype=torch.float64)
        radius = torch.where(kind < 0.08, torch.zeros_like(radius), radius)
        lo, hi = centre - radius, centre + radius
        lo = torch.where((kind >= 0.08) & (kind < 0.14), torch.zeros_like(lo), lo)
        hi = torch.where((kind >= 0.14) & (kind < 0.2), torch.zeros_like(hi), hi)
        return torch.minimum(lo, hi), torch.maximum(lo, hi)

    def samples(self, lo: torch.Tensor, hi: torch.Tensor, tag: str) -> tuple[torch.Tensor, list[str]]:
        """Points ``[B, S, *shape]`` of each box: centre, both corners, random vertices, uniform."""
        g = self.gen("samples/" + tag)
        b, s = lo.shape[0], max(self.n_samples, 4)
        n_vert = (s - 3) // 2
        lo_, hi_ = lo.unsqueeze(1), hi.unsqueeze(1)
        shape = (b, n_vert, *lo.shape[1:])
        vert = torch.where(torch.rand(shape, generator=g, dtype=torch.float64) < 0.5, lo_, hi_)
        shape = (b, s - 3 - n_vert, *lo.shape[1:])
        unif = lo_ + torch.rand(shape, generator=g, dtype=torch.float64) * (hi_ - lo_)
        pts = torch.cat([(lo_ + hi_) / 2, lo_, hi_, vert, unif], dim=1)
        kinds = ["centre", "lower corner", "upper corner"] + ["vertex"] * n_vert + ["uniform point"] * (s - 3 - n_vert)
        return pts, kinds

    def walk(self, domain: Domain, graph: Graph, lo: torch.Tensor, hi: torch.Tensor, *,
             guard: bool = False, repickle: bool = False) -> dict[str, Any]:
        """Every node's element (``guard``: check no transformer mutates its arguments)."""
        def call(what: str, fn: Callable[[], Any], args: list[Any], optional: bool) -> Any:
            snap = _snapshot(args) if guard else None
            try:
                out = fn()
            except (NotImplementedError, DomainError) as exc:
                if not optional:
                    raise
                raise _Unsupported(f"{what}: {type(exc).__name__}: {exc}") from exc
            if snap is not None:
                _assert_unchanged(snap, f"{what} modified its arguments in place")
            return _roundtrip(out, what) if repickle else out

        elements = {graph.input.name: call("from_box", lambda: domain.from_box(lo, hi), [lo, hi], False)}
        for node in graph.nodes[1:]:
            args = [elements[a] for a in node.inputs]
            what = f"{type(domain).__name__}.{_method(node)} at node {node.name!r} ({node.kind}{list(node.shape)})"
            elements[node.name] = call(what, lambda: apply_op(domain, node, args), args + [node],
                                       not isinstance(node, _REQUIRED_OPS))
        return elements

    def bounds(self, domain: Domain, element: Any, where: str,
               shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """``domain.bounds(element)``, checked: tensors of ``shape``, no NaN, lower ≤ upper."""
        lo, hi = domain.bounds(element)
        for t, side in ((lo, "lower"), (hi, "upper")):
            if not isinstance(t, torch.Tensor):
                raise ConformanceError(f"bounds() at {where} returned a {type(t).__name__}, not a tensor")
            if tuple(t.shape) != shape:
                raise ConformanceError(f"bounds() at {where}: {side} has shape {tuple(t.shape)}, expected {shape}")
            if torch.isnan(t).any():
                raise ConformanceError(f"bounds() at {where}: NaN in the {side} bound")
        bad = lo > hi
        if bad.any():
            raise ConformanceError(f"bounds() at {where}: lower > upper at index {_first(bad)} "
                                   f"({lo[bad][0].item():.6g} > {hi[bad][0].item():.6g})")
        return lo, hi

    def sound(self, graph: Graph, *, batch: int = 2, analysis: bool = False, repickle: bool = False) -> None:
        """Sampled soundness of every node's bounds and of ``linear_bounds`` at the output."""
        domain = self.domain()
        lo, hi = self.box(_case_of(graph), batch)
        elements = self.walk(domain, graph, lo, hi, repickle=repickle)
        pts, kinds = self.samples(lo, hi, graph.name)
        b, s = pts.shape[:2]
        values = graph.forward(pts.reshape(b * s, *graph.input_shape), all_nodes=True)
        for node in graph.nodes:
            where = f"node {node.name!r} ({node.kind}{list(node.shape)}) of network {graph.name!r}"
            nlo, nhi = self.bounds(domain, elements[node.name], where, (b, *node.shape))
            _assert_contains(values[node.name].reshape(b, s, *node.shape), nlo, nhi, kinds, where)
        out = values[graph.output].reshape(b, s, -1)
        C, d = _random_rows(self.gen("rows/" + graph.name), b, out.shape[-1])
        self.sound_rows(domain.linear_bounds(elements[graph.output], C, d), C, d, out,
                        f"linear_bounds(C, d) at the output of network {graph.name!r}")
        self.sound_rows(domain.linear_bounds(elements[graph.output], C), C, None, out,
                        f"linear_bounds(C) (d=None) at the output of network {graph.name!r}")
        if analysis:
            from absint.analyses import domain_analysis

            res = domain_analysis(self.cls)(device="cpu", domain_options=self.options).bound(graph, lo, hi, C, d)
            self.sound_rows(torch.as_tensor(np.asarray(res.lower), dtype=torch.float64), C, d, out,
                            f"the {self.cls.name!r} analysis (DomainAnalysis.bound) on network {graph.name!r}")

    def sound_rows(self, lb: Any, C: torch.Tensor, d: torch.Tensor | None, y: torch.Tensor, where: str) -> None:
        """``lb[b, m] ≤ C[b] y[b, s] + d[b]`` for every sample ``s``."""
        if not (isinstance(lb, torch.Tensor) and tuple(lb.shape) == tuple(C.shape[:2])):
            raise ConformanceError(f"{where}: expected a tensor of shape {tuple(C.shape[:2])}, got {getattr(lb, 'shape', type(lb))}")
        if torch.isnan(lb).any():
            raise ConformanceError(f"{where}: NaN in the result")
        val = torch.einsum("bmn,bsn->bsm", C, y) + (0 if d is None else d.unsqueeze(1))
        tol = ATOL + RTOL * torch.einsum("bmn,bsn->bsm", C.abs(), y.abs())
        bad = lb.unsqueeze(1) > val + tol
        if bad.any():
            i = _first(bad)
            raise ConformanceError(f"unsound {where}: box {i[0]}, sample {i[1]}, row {i[2]}: "
                                 f"C·y+d = {val[i].item():.10g} < proved lower bound {lb[i[0], i[2]].item():.10g}")


def _case_of(graph: Graph) -> _Case:
    return next(c for c in _ALL_CASES if c.name == graph.name)


def _method(node: Op) -> str:
    return {Affine: "affine", Relu: "relu", Reshape: "reshape", Add: "add", Sigmoid: "sigmoid", Tanh: "tanh",
            MaxPool2d: "maxpool"}.get(type(node), node.kind)


def _first(mask: torch.Tensor) -> tuple[int, ...]:
    return tuple(int(v) for v in mask.nonzero()[0])


def _random_rows(g: torch.Generator, batch: int, n: int, m: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows ``C [batch, m, n]``, ``d [batch, m]``: ``+y_0``, ``−y_{n−1}`` (an upper bound), then random."""
    C = torch.randn(batch, m, n, generator=g, dtype=torch.float64)
    C[:, :2] = 0.0
    C[:, 0, 0], C[:, 1, -1] = 1.0, -1.0
    return C, torch.randn(batch, m, generator=g, dtype=torch.float64)


def _assert_contains(values: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, kinds: list[str], where: str) -> None:
    tol = ATOL + RTOL * values.abs()
    for bad, side, bound in ((values < lo.unsqueeze(1) - tol, "below the lower", lo),
                             (values > hi.unsqueeze(1) + tol, "above the upper", hi)):
        if bad.any():
            i = _first(bad)
            v, bnd = values[i].item(), bound[(i[0],) + i[2:]].item()
            raise ConformanceError(
                f"unsound at {where}: box {i[0]}, sample {i[1]} ({kinds[i[1]]} of the input box), neuron {i[2:]}: "
                f"concrete value {v:.10g} is {side} bound {bnd:.10g} ({int(bad.sum())} violations)")


def _snapshot(objs: Iterable[Any]) -> list[tuple[Any, Any]]:
    return [(t, t.clone() if isinstance(t, torch.Tensor) else t.copy()) for t in _arrays(list(objs))]


def _arrays(obj: Any, depth: int = 0, seen: set[int] | None = None) -> list[Any]:
    """Every tensor / numpy array reachable from ``obj`` (dataclass fields, attributes, containers)."""
    seen = set() if seen is None else seen
    if id(obj) in seen or depth > 8:
        return []
    seen.add(id(obj))
    if isinstance(obj, (torch.Tensor, np.ndarray)):
        return [obj]
    if isinstance(obj, (str, bytes, int, float, bool, type, torch.dtype, torch.device)) or obj is None:
        return []
    if isinstance(obj, dict):
        children: Iterable[Any] = obj.values()
    elif isinstance(obj, (list, tuple, set, frozenset)):
        children = obj
    elif is_dataclass(obj):
        children = [getattr(obj, f.name, None) for f in fields(obj)]
    else:
        children = list(getattr(obj, "__dict__", {}).values())
        children += [getattr(obj, s, None) for s in getattr(type(obj), "__slots__", ())]
    return [t for c in children for t in _arrays(c, depth + 1, seen)]


def _assert_unchanged(snap: list[tuple[Any, Any]], message: str) -> None:
    for now, before in snap:
        if isinstance(now, torch.Tensor):
            same = now.shape == before.shape and bool(((now == before) | (now.isnan() & before.isnan())).all())
        else:
            same = now.shape == before.shape and bool(np.array_equal(now, before, equal_nan=True))
        if not same:
            raise ConformanceError(f"{message} (a {tuple(before.shape)} array changed)")


def _roundtrip(element: Any, what: str) -> Any:
    try:
        return pickle.loads(pickle.dumps(element))
    except Exception as exc:  # noqa: BLE001
        raise ConformanceError(f"the element returned by {what} does not pickle: {type(exc).__name__}: {exc}") from exc


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and bool((((a - b).abs() <= ATOL + RTOL * b.abs()) | (a == b)).all())


# -- the checks ------------------------------------------------------------------------------
def _check_interface(h: _Harness) -> None:
    cls = h.cls
    if not (isinstance(cls, type) and issubclass(cls, Domain)):
        raise ConformanceError(f"{cls!r} is not a subclass of absint.domains.base.Domain")
    if not (isinstance(cls.name, str) and cls.name):
        raise ConformanceError(f"{cls.__name__} must set a non-empty class attribute 'name'")
    domain = h.domain()
    if not isinstance(domain.options, cls.options_class):
        raise ConformanceError("the domain's options are not of its options_class")
    lo, hi = h.box(_CASES["network_mlp"][0], 2)
    element = domain.from_box(lo, hi)
    h.bounds(domain, element, "the input", tuple(lo.shape))
    C, d = _random_rows(h.gen("interface"), 2, lo.shape[1])
    out = domain.linear_bounds(element, C, d)
    if not (isinstance(out, torch.Tensor) and tuple(out.shape) == (2, 3)):
        raise ConformanceError(f"linear_bounds(element, C[2,3,n], d[2,3]) must return a [2, 3] tensor, got {getattr(out, 'shape', out)!r}")


def _check_sound(h: _Harness, check: str) -> None:
    for case in _CASES[check]:
        graph = h.graph(case)
        h.sound(graph, analysis=check in NETWORK_CHECKS)


def _check_linear_bounds(h: _Harness) -> None:
    """``linear_bounds`` on outputs (MLP, residual) and on an image-shaped intermediate element."""
    for case in (_CASES["network_mlp"][0], _CASES["network_residual"][0]):
        h.sound(h.graph(case))
    case = _CASES["network_cnn"][0]
    graph = h.graph(case)
    cut = graph.prefix(graph.nodes[2].name)  # conv -> relu: a [C, H, W] element
    cut = Graph(cut.nodes, cut.output, case.name)
    domain = h.domain()
    lo, hi = h.box(case, 2)
    element = h.walk(domain, cut, lo, hi)[cut.output]
    pts, _ = h.samples(lo, hi, "linear_bounds")
    y = cut.forward(pts.reshape(-1, *cut.input_shape)).reshape(2, pts.shape[1], -1)
    C, d = _random_rows(h.gen("linear_bounds/rows"), 2, y.shape[-1], m=5)
    h.sound_rows(domain.linear_bounds(element, C, d), C, d, y, "linear_bounds on a [C, H, W] element")


def _check_meet_box(h: _Harness) -> None:
    """meet_box with a box that cuts the reachable set; then relu and affine on the result."""
    case = _CASES["network_mlp"][0]
    graph = h.graph(case)
    first = graph.nodes[1].name
    domain = h.domain()
    lo, hi = h.box(case, 2)
    element = h.walk(domain, graph.prefix(first), lo, hi)[first]
    h.n_samples = max(h.n_samples, 256)
    pts, kinds = h.samples(lo, hi, "meet_box")
    b, s = pts.shape[:2]
    y = graph.prefix(first).forward(pts.reshape(b * s, -1)).reshape(b, s, -1)
    # Cut three neurons to the middle 60% of their sampled range; keep only samples inside the cut.
    mlo, mhi = y.min(1).values, y.max(1).values
    cut_lo, cut_hi = domain.bounds(element)
    cut_lo, cut_hi = cut_lo.clone(), cut_hi.clone()
    cut_lo[:, :3] = mlo[:, :3] + 0.2 * (mhi - mlo)[:, :3]
    cut_hi[:, :3] = mhi[:, :3] - 0.2 * (mhi - mlo)[:, :3]
    snap = _snapshot([element, cut_lo, cut_hi])
    met = domain.meet_box(element, cut_lo, cut_hi)
    _assert_unchanged(snap, "meet_box modified its arguments in place")
    after = domain.affine(domain.relu(met), graph.nodes[3].operator, graph.nodes[3].bias)
    y2 = graph.nodes[3].operator.forward(torch.relu(y)) + graph.nodes[3].bias
    kept = 0
    for bi in range(b):
        keep = ((y[bi] >= cut_lo[bi]) & (y[bi] <= cut_hi[bi])).all(-1)
        kept += int(keep.sum())
        sub = [k for k, f in zip(kinds, keep.tolist()) if f]
        for el, val, where in ((met, y, "meet_box"), (domain.relu(met), torch.relu(y), "relu after meet_box"),
                               (after, y2, "affine after relu after meet_box")):
            elo, ehi = domain.bounds(el)
            _assert_contains(val[bi][keep].unsqueeze(0), elo[bi:bi + 1], ehi[bi:bi + 1], sub,
                             f"{where} (samples inside the met box)")
    if kept <= 0:
        raise ConformanceError("internal error of the kit: no sample inside the met box")


def _property_cases(h: _Harness) -> tuple[_Case, ...]:
    return _NETWORK_CASES if h.quick else _ALL_CASES


def _for_cases(h: _Harness, fn: Callable[[_Case, Graph], None]) -> None:
    skipped = []
    for case in _property_cases(h):
        try:
            fn(case, h.graph(case))
        except _Unsupported as exc:
            skipped.append(f"{case.name} ({exc})")
    if skipped:
        h.notes.append("cases skipped, transformer not supported: " + "; ".join(skipped))


def _check_not_looser_than_box(h: _Harness) -> None:
    if h.box_mode == "none":
        raise _Unsupported(f"{h.cls.__name__}.never_looser_than_box is False")

    def run(case: _Case, graph: Graph) -> None:
        domain, box = h.domain(), BoxDomain()
        lo, hi = h.box(case, 2)
        mine, ref = h.walk(domain, graph, lo, hi), h.walk(box, graph, lo, hi)
        nodes = graph.nodes if h.box_mode == "nodes" else [graph.node(graph.output)]
        for node in nodes:
            dlo, dhi = domain.bounds(mine[node.name])
            blo, bhi = box.bounds(ref[node.name])
            for worse, side, a, b in ((dlo < blo - PRECISION_TOL * (1 + blo.abs()), "lower", dlo, blo),
                                      (dhi > bhi + PRECISION_TOL * (1 + bhi.abs()), "upper", dhi, bhi)):
                if worse.any():
                    i = _first(worse)
                    raise ConformanceError(
                        f"looser than Box at node {node.name!r} ({node.kind}{list(node.shape)}) of network "
                        f"{graph.name!r}: {side} bound {a[i].item():.10g} vs Box {b[i].item():.10g} at index {i} "
                        f"(set the class attribute never_looser_than_box = 'output' or False if this is by design)")
        C, d = _random_rows(h.gen("box/rows/" + graph.name), 2, numel(graph.output_shape))
        mine_lb = domain.linear_bounds(mine[graph.output], C, d)
        box_lb = box.linear_bounds(ref[graph.output], C, d)
        worse = mine_lb < box_lb - PRECISION_TOL * (1 + box_lb.abs())
        if worse.any():
            raise ConformanceError(f"linear_bounds looser than Box on network {graph.name!r}: "
                                     f"{mine_lb[worse][0].item():.10g} < {box_lb[worse][0].item():.10g}")
    _for_cases(h, run)


def _check_deterministic(h: _Harness) -> None:
    def run(case: _Case, graph: Graph) -> None:
        lo, hi = h.box(case, 2)
        shared = h.domain()
        runs = [h.walk(shared, graph, lo, hi), h.walk(shared, graph, lo, hi), h.walk(h.domain(), graph, lo, hi)]
        for node in graph.nodes:
            ref = shared.bounds(runs[0][node.name])
            for k, el in enumerate(runs[1:]):
                got = shared.bounds(el[node.name])
                if not all(torch.equal(a, b) for a, b in zip(ref, got)):
                    raise ConformanceError(f"{'a second run' if k == 0 else 'a fresh domain instance'} gave different bounds at node "
                        f"{node.name!r} of network {graph.name!r}")
    _for_cases(h, run)


def _check_inputs_not_mutated(h: _Harness) -> None:
    def run(case: _Case, graph: Graph) -> None:
        domain = h.domain()
        lo, hi = h.box(case, 2)
        elements = h.walk(domain, graph, lo, hi, guard=True)
        C, d = _random_rows(h.gen("mut/" + graph.name), 2, numel(graph.output_shape))
        snap = _snapshot([elements[graph.output], C, d])
        domain.bounds(elements[graph.output])
        domain.linear_bounds(elements[graph.output], C, d)
        _assert_unchanged(snap, "bounds()/linear_bounds() modified the element, C or d in place")
    _for_cases(h, run)


def _check_picklable(h: _Harness) -> None:
    domain = h.domain()
    try:
        clone = pickle.loads(pickle.dumps(domain))
    except Exception as exc:  # noqa: BLE001
        raise ConformanceError(f"the domain instance does not pickle: {type(exc).__name__}: {exc}") from exc
    if type(clone) is not type(domain):
        raise ConformanceError("the unpickled domain has another type")

    def run(case: _Case, graph: Graph) -> None:
        lo, hi = h.box(case, 2)
        for node_name, element in h.walk(domain, graph, lo, hi).items():
            a, b = domain.bounds(element), domain.bounds(_roundtrip(element, f"node {node_name!r}"))
            if not all(torch.equal(x, y) for x, y in zip(a, b)):
                raise ConformanceError(f"an element gives other bounds after pickling, at node {node_name!r} of network {graph.name!r}")
        # Unpickled elements stay usable: a walk on round-tripped elements is still sound (shared
        # structure between elements may be lost in the copies, so it need not be identical).
        try:
            h.sound(graph, repickle=True)
        except ConformanceError as exc:
            raise ConformanceError(f"with every element round-tripped through pickle: {exc}") from None
    _for_cases(h, run)


def _check_batching(h: _Harness) -> None:
    def run(case: _Case, graph: Graph) -> None:
        lo, hi = h.box(case, 3, "batching")
        domain = h.domain()
        batched = h.walk(domain, graph, lo, hi)
        single = [h.walk(domain, graph, lo[i:i + 1], hi[i:i + 1]) for i in range(3)]
        for node in graph.nodes:
            blo, bhi = domain.bounds(batched[node.name])
            for i, el in enumerate(single):
                slo, shi = domain.bounds(el[node.name])
                if not (_close(blo[i:i + 1], slo) and _close(bhi[i:i + 1], shi)):
                    raise ConformanceError(f"box {i} of a batch of 3 gets other bounds than when analysed alone, at node {node.name!r} "
                        f"({node.kind}) of network {graph.name!r}")
        C, d = _random_rows(h.gen("batch/rows/" + graph.name), 3, numel(graph.output_shape))
        lb = domain.linear_bounds(batched[graph.output], C, d)
        for i, el in enumerate(single):
            if not (_close(lb[i:i + 1], domain.linear_bounds(el[graph.output], C[i:i + 1], d[i:i + 1]))):
                raise ConformanceError(f"linear_bounds of box {i} differs between batched and single runs on network {graph.name!r}")
    _for_cases(h, run)


_CHECK_FUNCTIONS: dict[str, Callable[[_Harness], None]] = {
    "interface": _check_interface,
    **{name: (lambda h, _n=name: _check_sound(h, _n)) for name in _CASES},
    "linear_bounds": _check_linear_bounds,
    "meet_box": _check_meet_box,
    "not_looser_than_box": _check_not_looser_than_box,
    "deterministic": _check_deterministic,
    "inputs_not_mutated": _check_inputs_not_mutated,
    "picklable": _check_picklable,
    "batching": _check_batching,
}
if set(_CHECK_FUNCTIONS) != set(CHECKS):
    raise ConformanceError('conformance check failed')


# -- public API ------------------------------------------------------------------------------
def _resolve(domain: Any, options: Any) -> tuple[type[Domain], Any]:
    if isinstance(domain, Domain):
        return type(domain), domain.options if options is None else options
    return domain, options


def run_check(domain: type[Domain], check: str, *, options: Any = None, seed: int = 0, n_samples: int | None = None,
              quick: bool = False, never_looser_than_box: Any = None) -> CheckResult:
    """Run one check (a name from :data:`CHECKS`); raises :class:`ConformanceError` if it fails."""
    if check not in _CHECK_FUNCTIONS:
        raise ValueError(f"unknown check {check!r}; checks: {', '.join(CHECKS)}")
    cls, options = _resolve(domain, options)
    label = f"{cls.__name__} ({getattr(cls, 'name', '?')!r})"
    mode = getattr(cls, "never_looser_than_box", True) if never_looser_than_box is None else never_looser_than_box
    h = _Harness(cls, options, seed, n_samples or (16 if quick else 48), quick, mode)
    t0 = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the kit's networks are tiny: more threads only add overhead
    try:
        _CHECK_FUNCTIONS[check](h)
    except _Unsupported as exc:
        return CheckResult(check, "skipped", time.perf_counter() - t0, f"not supported: {exc}")
    except ConformanceError as exc:
        raise ConformanceError(f"{label} failed check {check!r} (seed={seed}): {exc}") from None
    except Exception as exc:  # noqa: BLE001 - a crash in the domain is a failure with a readable cause
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)[-3:]).strip()
        raise ConformanceError(f"{label} crashed in check {check!r} (seed={seed}): "
                             f"{type(exc).__name__}: {exc}\n{tb}") from exc
    finally:
        torch.set_num_threads(threads)
    return CheckResult(check, "passed", time.perf_counter() - t0, "; ".join(h.notes))


def check_domain(domain: type[Domain], *, options: Any = None, seed: int = 0, n_samples: int | None = None,
                 quick: bool = False, checks: Iterable[str] | None = None, skip: Iterable[str] = (),
                 never_looser_than_box: Any = None, raise_on_failure: bool = True) -> ConformanceReport:
    """Run the conformance checks on a domain class (or instance) and return a report.

    ``n_samples`` concrete points per box (default 48; 16 with ``quick``, which also limits the
    property checks to the three networks). ``checks`` / ``skip`` select checks by name.
    ``never_looser_than_box`` overrides the class attribute of that name (True, "output", False).
    Raises :class:`ConformanceError` listing every failed check unless ``raise_on_failure=False``.
    """
    cls, options = _resolve(domain, options)
    selected = [c for c in (CHECKS if checks is None else tuple(checks)) if c not in set(skip)]
    report = ConformanceReport(getattr(cls, "name", "?"), cls, options)
    t0 = time.perf_counter()
    for name in selected:
        t1 = time.perf_counter()
        try:
            report.results.append(run_check(cls, name, options=options, seed=seed, n_samples=n_samples, quick=quick,
                                            never_looser_than_box=never_looser_than_box))
        except ConformanceError as exc:
            report.results.append(CheckResult(name, "failed", time.perf_counter() - t1, str(exc)))
        if name == "interface" and report.failures:
            break  # nothing else can run on a domain that does not meet the interface
    report.seconds = time.perf_counter() - t0
    if raise_on_failure and not report.passed:
        raise ConformanceError(report.failure_message())
    return report


def domain_conformance_tests(domain: type[Domain], **kwargs: Any) -> Callable[[str], None]:
    """A pytest test function parametrised over the checks, for a plugin's own test suite::

        test_conformance = domain_conformance_tests(MyDomain)            # in tests/test_mydomain.py
        test_fast = domain_conformance_tests(MyDomain, quick=True, skip=["batching"])

    Accepts the keyword arguments of :func:`check_domain` (``checks``, ``skip`` and those of
    :func:`run_check`). Skipped checks (unsupported transformers) show as pytest skips.
    """
    import pytest

    skip = set(kwargs.pop("skip", ()))
    names = [c for c in (kwargs.pop("checks", None) or CHECKS) if c not in skip]
    kwargs.pop("raise_on_failure", None)

    @pytest.mark.parametrize("check", names)
    def test_domain_conformance(check: str) -> None:
        result = run_check(domain, check, **kwargs)
        if result.status == "skipped":
            pytest.skip(result.message)

    test_domain_conformance.__doc__ = f"Conformance of {getattr(domain, '__name__', domain)} (absint.testing)."
    return test_domain_conformance


# -- example networks for engine and domain tests ------------------------------------------------
def _rand_dense(name, src, n_in, n_out, g, scale=None):
    w = torch.randn(n_out, n_in, generator=g, dtype=torch.float64) * (scale or 1.5 / n_in ** 0.5)
    b = torch.randn(n_out, generator=g, dtype=torch.float64) * 0.1
    return Affine(name, (src,), (n_out,), DenseOperator(w), b)


def _rand_conv(name, src, in_shape, c_out, k, stride, pad, groups, g):
    c_in = in_shape[0]
    w = torch.randn(c_out, c_in // groups, k, k, generator=g, dtype=torch.float64) * (1.0 / (k * (c_in / groups) ** 0.5))
    op = ConvOperator(w, in_shape, (stride, stride), (pad, pad), (1, 1), groups)
    b = (torch.randn(c_out, generator=g, dtype=torch.float64) * 0.1).reshape(-1, 1, 1)
    return Affine(name, (src,), op.out_shape, op, b)


def _convnet(seed: int, pool: bool = True) -> Graph:
    """Normalisation, conv (stride 2, padding 1), ReLU, grouped conv, max-pool (padded), dense."""
    g = torch.Generator().manual_seed(seed)
    nodes = [Input("x", (), (2, 9, 9))]
    nodes.append(Affine("norm", ("x",), (2, 9, 9), DiagonalOperator(torch.tensor([2.0, 0.5], dtype=torch.float64).reshape(2, 1, 1),
                                                                      (2, 9, 9)), torch.tensor(-0.3, dtype=torch.float64)))
    c1 = _rand_conv("c1", "norm", (2, 9, 9), 4, 3, 2, 1, 1, g)
    nodes += [c1, Relu("r1", ("c1",), c1.shape)]
    c2 = _rand_conv("c2", "r1", c1.shape, 4, 3, 1, 1, 2, g)
    nodes.append(c2)
    src, shape = "c2", c2.shape
    if pool:  # pooling of pre-activations (negative values too), then ReLU
        shape = (4, (shape[1] + 2 - 3) // 2 + 1, (shape[2] + 2 - 3) // 2 + 1)
        nodes.append(MaxPool2d("mp", ("c2",), shape, kernel=(3, 3), stride=(2, 2), padding=(1, 1)))
        src = "mp"
    nodes.append(Relu("r2", (src,), shape))
    src = "r2"
    n = int(np.prod(shape))
    nodes.append(Reshape("flat", (src,), (n,)))
    nodes.append(_rand_dense("fc1", "flat", n, 7, g))
    nodes.append(Relu("r3", ("fc1",), (7,)))
    nodes.append(_rand_dense("fc2", "r3", 7, 3, g))
    return Graph(tuple(nodes), "fc2")


def _resnet(seed: int) -> Graph:
    """A residual DAG: two skip connections, one of them across two layers, plus a tanh branch."""
    g = torch.Generator().manual_seed(seed)
    n = 8
    nodes = [Input("x", (), (n,)), _rand_dense("a", "x", n, n, g), Relu("ra", ("a",), (n,)),
             _rand_dense("b", "ra", n, n, g), Relu("rb", ("b",), (n,)), _rand_dense("c", "rb", n, n, g),
             Add("s1", ("c", "a"), (n,)), Relu("rs1", ("s1",), (n,)), _rand_dense("d", "rs1", n, n, g),
             Tanh("td", ("d",), (n,)), Add("s2", ("td", "rs1"), (n,)), Add("s3", ("s2", "s2"), (n,)),
             _rand_dense("out", "s3", n, 3, g)]
    return Graph(tuple(nodes), "out")


def _poolnet(seed: int) -> Graph:
    """Max-pooling straight on the input (overlapping, padded windows), then dense."""
    g = torch.Generator().manual_seed(seed)
    nodes = (Input("x", (), (2, 5, 5)), MaxPool2d("mp", ("x",), (2, 3, 3), kernel=(3, 3), stride=(2, 2), padding=(1, 1)),
             Reshape("flat", ("mp",), (18,)), _rand_dense("fc", "flat", 18, 6, g))
    return Graph(nodes, "fc")



#: name → builder ``(seed) -> Graph`` of small random networks covering every op of the IR
EXAMPLE_NETWORKS: dict[str, Callable[[int], Graph]] = {
    "pool": _poolnet,
    "mlp_relu": lambda s: random_mlp(s, (6, 12, 10, 8, 4)),
    "mlp_sigmoid": lambda s: random_mlp(s, (6, 12, 10, 8, 4), act=Sigmoid),
    "mlp_tanh": lambda s: random_mlp(s, (6, 12, 10, 8, 4), act=Tanh),
    "conv_pool": lambda s: _convnet(s),
    "conv": lambda s: _convnet(s, pool=False),
    "residual": _resnet,
}


def example_network(name: str, seed: int = 0) -> Graph:
    """A small random network of kind ``name`` (:data:`EXAMPLE_NETWORKS`): dense, convolution (strided,
    padded, grouped), normalisation, max-pooling, residual ``Add``, sigmoid/tanh."""
    return EXAMPLE_NETWORKS[name](seed)
