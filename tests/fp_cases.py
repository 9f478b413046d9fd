"""Networks, inputs and thresholds for the floating-point soundness tests (tests/test_fp_*.py).

Every network stores float32-representable weights (as an ONNX file would), scaled by ``10**e``
per layer; inputs are float32 numbers too. The exact rational oracle (:mod:`absint.exact`) gives
each safety row's real value, and the thresholds are set *at* it: ``d0`` is the largest float with
``C y + d0 ≤ 0`` in real arithmetic (margin exactly 0 when representable), plus one ulp either
side. A sound analysis never returns a lower bound above the real margin of any row.
"""
from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import torch

from absint.exact import Interval, exact_forward
from absint.ir import Add, Affine, Graph, Input, MaxPool2d, Op, Relu, Reshape, Sigmoid, Tanh
from absint.linear import ConvOperator, DenseOperator, numel

KINDS = ("dense", "conv", "residual", "sigmoid", "tanh")
PIECEWISE_LINEAR = ("dense", "conv", "residual")


def _f32(t: torch.Tensor) -> torch.Tensor:
    return t.float().double()


class _Builder:
    def __init__(self, seed: int, scale: float, input_shape: tuple[int, ...]) -> None:
        self.gen = torch.Generator().manual_seed(seed)
        self.scale = scale
        self.nodes: list[Op] = [Input("x", (), input_shape)]
        self.shapes = {"x": input_shape}

    def _push(self, op: Op) -> str:
        self.nodes.append(op)
        self.shapes[op.name] = tuple(op.shape)
        return op.name

    def _rand(self, *shape: int) -> torch.Tensor:
        return _f32(torch.randn(*shape, generator=self.gen, dtype=torch.float64) * self.scale)

    def dense(self, x: str, n: int) -> str:
        n_in = numel(self.shapes[x])
        return self._push(Affine(f"fc{len(self.nodes)}", (x,), (n,), DenseOperator(self._rand(n, n_in)), self._rand(n)))

    def conv(self, x: str, c_out: int) -> str:
        op = ConvOperator(self._rand(c_out, self.shapes[x][0], 3, 3), self.shapes[x], (1, 1), (1, 1))
        return self._push(Affine(f"conv{len(self.nodes)}", (x,), op.out_shape, op, self._rand(c_out, 1, 1)))

    def act(self, x: str, kind: type[Op] = Relu) -> str:
        return self._push(kind(f"act{len(self.nodes)}", (x,), self.shapes[x]))

    def pool(self, x: str) -> str:
        c, h, w = self.shapes[x]
        return self._push(MaxPool2d(f"pool{len(self.nodes)}", (x,), (c, h // 2, w // 2)))

    def flat(self, x: str) -> str:
        return self._push(Reshape(f"flat{len(self.nodes)}", (x,), (numel(self.shapes[x]),)))

    def add(self, a: str, b: str) -> str:
        return self._push(Add(f"add{len(self.nodes)}", (a, b), self.shapes[a]))

    def graph(self) -> Graph:
        return Graph(tuple(self.nodes), self.nodes[-1].name)


def scaled_net(kind: str, seed: int, depth: int, width: int, exponent: int) -> Graph:
    """A random network of ``kind`` with ``depth`` hidden layers, weights and biases ``N(0,1)·10^e``."""
    scale = 10.0 ** exponent
    if kind == "conv":
        b = _Builder(seed, scale, (1, 4, 4))
        h = b.act(b.conv("x", 2))
        for _ in range(max(0, min(depth, 3) - 1)):
            h = b.act(b.conv(h, 2))
        b.dense(b.flat(b.pool(h)), 3)
        return b.graph()
    b = _Builder(seed, scale, (3,))
    act = {"sigmoid": Sigmoid, "tanh": Tanh}.get(kind, Relu)
    h = b.act(b.dense("x", width), act)
    for i in range(depth - 1):
        nxt = b.act(b.dense(h, width), act)
        h = b.add(nxt, h) if kind == "residual" and i % 2 == 0 else nxt
    b.dense(h, 2)
    return b.graph()


def point_input(graph: Graph, seed: int) -> np.ndarray:
    """A float32-representable input in [−1, 1]."""
    rng = np.random.default_rng(seed)
    return rng.uniform(-1, 1, graph.input_shape).astype(np.float32).astype(np.float64)


def row_matrix(n_out: int) -> np.ndarray:
    """Two safety rows: ``y_0`` alone and ``y_0 − y_1`` (a robustness-style difference)."""
    C = np.zeros((2, n_out))
    C[0, 0] = 1.0
    C[1, 0], C[1, 1] = 1.0, -1.0
    return C


def exact_rows(graph: Graph, x: np.ndarray, C: np.ndarray) -> list[Interval]:
    """Enclosures of ``C y`` at ``x`` (exact for piecewise-linear networks)."""
    y = exact_forward(graph, x)
    out = []
    for row in C:
        lo = hi = Fraction(0)
        for j in np.flatnonzero(row):
            w = Fraction(float(row[j]))
            a, b = y[j]
            lo, hi = (lo + w * a, hi + w * b) if w >= 0 else (lo + w * b, hi + w * a)
        out.append((lo, hi))
    return out


def thresholds_at(value: Interval) -> list[float]:
    """``[d0 − ulp, d0, d0 + ulp]`` with ``d0`` the largest float such that ``value + d0 ≤ 0`` for
    every real in the enclosure (margin exactly 0 when the value is a float)."""
    d0 = float(-value[1])
    if Fraction(d0) > -value[1]:
        d0 = math.nextafter(d0, -math.inf)
    return [math.nextafter(d0, -math.inf), d0, math.nextafter(d0, math.inf)]


def threshold_rows(graph: Graph, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[Fraction]]:
    """Safety rows ``C y + d`` with thresholds at the exact values, and each row's real margin
    (an upper bound of it for S-shaped networks): ``(C [m, n], d [m], margin_upper [m])``."""
    n_out = numel(graph.output_shape)
    base = row_matrix(n_out)
    enc = exact_rows(graph, x, base)
    Cs, ds, margins = [], [], []
    for row, value in zip(base, enc):
        for d in thresholds_at(value):
            Cs.append(row)
            ds.append(d)
            margins.append(value[1] + Fraction(d))
    return np.array(Cs), np.array(ds), margins


def assert_sound(lower: np.ndarray, margins: list[Fraction], what: str) -> None:
    """Every returned lower bound is ≤ the real margin of its row (hence no wrong proof)."""
    lower = np.asarray(lower, dtype=np.float64).reshape(-1)
    for i, (lb, m) in enumerate(zip(lower, margins)):
        assert not np.isnan(lb), f"{what}: row {i} bound is NaN"
        if np.isfinite(lb):
            assert Fraction(float(lb)) <= m, (f"{what}: row {i} proved lower bound {lb!r} exceeds the real "
                                             f"margin {float(m)!r} ({'a wrong proof' if m <= 0 else 'unsound'})")
