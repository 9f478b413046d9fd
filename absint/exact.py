"""Exact reference semantics of a network: rational arithmetic, the oracle of the rounding tests.

absint promises soundness with respect to *real* arithmetic on the stored weights. Every stored
weight, bias and input is a binary floating-point number, hence a rational, so a piecewise-linear
network (affine maps of any kind, ReLU, max pooling, residual ``Add``, reshapes) has an exact
rational output that :func:`exact_forward` computes with :class:`fractions.Fraction`. Sigmoid and
tanh are transcendental: they are enclosed with mpmath's interval arithmetic (outward rounded, at
``precision`` bits), so the oracle returns an *interval* ``[lo, hi]`` of rationals per output,
degenerate (``lo == hi``) for piecewise-linear networks.

Meant for small networks (tens of neurons per layer): the cost grows with the bit length of the
rationals, about 53 bits per affine layer.
"""
from __future__ import annotations

from fractions import Fraction
from typing import Sequence

import numpy as np
import torch

from absint.errors import ModelError
from absint.ir import Add, Affine, Graph, Input, MaxPool2d, Relu, Reshape, Sigmoid, Tanh

__all__ = ["Interval", "exact_forward", "exact_margins", "exact_point"]

#: a real number enclosed by two rationals ``lo ≤ x ≤ hi``
Interval = tuple[Fraction, Fraction]


def exact_point(values: np.ndarray | torch.Tensor | Sequence[float]) -> list[Interval]:
    """Degenerate intervals of the (float) values, flattened: every float is a rational."""
    flat = np.asarray(values.detach().cpu() if isinstance(values, torch.Tensor) else values,
                      dtype=np.float64).reshape(-1)
    return [(Fraction(float(v)), Fraction(float(v))) for v in flat]


def _matrix(op: Affine) -> tuple[np.ndarray, np.ndarray]:
    """The operator's exact matrix and the full bias (float64; each entry is a stored number).

    ``dense()`` applies the operator to unit vectors: every output is one weight times 1 plus
    zeros, computed exactly in float64.
    """
    M = op.operator.to(dtype=torch.float64).dense().detach().cpu().numpy()
    b = op.bias_full().to(torch.float64).detach().cpu().numpy().reshape(-1)
    return M, b


def _affine(M: np.ndarray, b: np.ndarray, x: list[Interval]) -> list[Interval]:
    rows, cols = M.shape
    xs = [(lo, hi) for lo, hi in x]
    out: list[Interval] = []
    for i in range(rows):
        lo = hi = Fraction(float(b[i]))
        for j in np.flatnonzero(M[i]):
            w = Fraction(float(M[i, j]))
            a, c = xs[j]
            if w >= 0:
                lo, hi = lo + w * a, hi + w * c
            else:
                lo, hi = lo + w * c, hi + w * a
        out.append((lo, hi))
    return out


def _maxpool(op: MaxPool2d, shape: tuple[int, ...], x: list[Interval]) -> list[Interval]:
    """Max over each window; padding never wins (it counts as −∞, as in ONNX and torch)."""
    c, h, w = shape
    idx = torch.arange(c * h * w, dtype=torch.float64).reshape(1, c, h, w)
    ph, pw = op.padding
    idx = torch.nn.functional.pad(idx, (pw, pw, ph, ph), value=-1.0)
    kk = op.kernel[0] * op.kernel[1]
    win = torch.nn.functional.unfold(idx, op.kernel, stride=op.stride).reshape(c, kk, -1)
    out: list[Interval] = []
    for ch in range(c):
        for p in range(win.shape[2]):
            members = [x[int(i)] for i in win[ch, :, p].tolist() if i >= 0]
            out.append((max(m[0] for m in members), max(m[1] for m in members)))
    return out


#: endpoints smaller than this in magnitude are replaced by 0 or ±TINY (outward), so that a
#: saturated sigmoid (≈ e^(−10^12)) never becomes a rational with a trillion-bit denominator
_TINY_EXP = -1000
TINY = Fraction(1, 2 ** -_TINY_EXP)


def _to_fraction(raw: tuple, upper: bool) -> Fraction:
    """An mpf endpoint as a rational, moved outward (down for lower, up for upper ends) to 0 or ±TINY
    when it is tinier than TINY."""
    sign, man, exp, bc = raw
    if man == 0:
        return Fraction(0)
    if exp + bc < _TINY_EXP:  # |value| < 2^(exp + bc) ≤ TINY
        if upper:
            return Fraction(0) if sign else TINY
        return -TINY if sign else Fraction(0)
    v = Fraction(man) * (Fraction(2) ** exp)
    return -v if sign else v


def _s_shaped(kind: str, x: list[Interval], precision: int) -> list[Interval]:
    """Sigmoid / tanh enclosed by mpmath interval arithmetic (both are increasing)."""
    from mpmath import iv, libmp, mpf

    iv.prec = precision

    def enclose(q: Fraction):
        lo = mpf(libmp.from_rational(q.numerator, q.denominator, precision, "d"))
        hi = mpf(libmp.from_rational(q.numerator, q.denominator, precision, "u"))
        t = iv.mpf([lo, hi])
        if kind == "sigmoid":
            r = 1 / (1 + iv.exp(-t))
        else:  # tanh t = 1 − 2 / (exp(2t) + 1)
            r = 1 - 2 / (iv.exp(2 * t) + 1)
        a, b = r._mpi_
        return _to_fraction(a, upper=False), _to_fraction(b, upper=True)

    return [(enclose(lo)[0], enclose(hi)[1]) for lo, hi in x]


def exact_forward(graph: Graph, x: np.ndarray | torch.Tensor | Sequence[float] | list[Interval], *,
                  precision: int = 200) -> list[Interval]:
    """Enclosures ``[lo, hi]`` of the real outputs (flat) at the input ``x`` (or input intervals).

    Exact (``lo == hi``) for piecewise-linear networks at a point.
    """
    if isinstance(x, list) and x and isinstance(x[0], tuple):
        values: dict[str, list[Interval]] = {graph.input.name: list(x)}
    else:
        values = {graph.input.name: exact_point(x)}
    for node in graph.nodes:
        if isinstance(node, Input):
            continue
        args = [values[a] for a in node.inputs]
        if isinstance(node, Affine):
            values[node.name] = _affine(*_matrix(node), args[0])
        elif isinstance(node, Relu):
            values[node.name] = [(max(lo, Fraction(0)), max(hi, Fraction(0))) for lo, hi in args[0]]
        elif isinstance(node, Reshape):
            values[node.name] = args[0]
        elif isinstance(node, Add):
            values[node.name] = [(a[0] + b[0], a[1] + b[1]) for a, b in zip(*args)]
        elif isinstance(node, MaxPool2d):
            values[node.name] = _maxpool(node, tuple(graph.node(node.inputs[0]).shape), args[0])
        elif isinstance(node, (Sigmoid, Tanh)):
            values[node.name] = _s_shaped("sigmoid" if isinstance(node, Sigmoid) else "tanh", args[0], precision)
        else:
            raise ModelError(f"no exact semantics for op {node.kind} ({node.name})")
    return values[graph.output]


def exact_margins(graph: Graph, x, C: np.ndarray, d: np.ndarray, *, precision: int = 200) -> list[Interval]:
    """Enclosures of the safety rows ``C y + d`` at ``x`` (``C`` ``[m, n_out]``, ``d`` ``[m]``)."""
    y = exact_forward(graph, x, precision=precision)
    C = np.asarray(C, dtype=np.float64)
    d = np.asarray(d, dtype=np.float64).reshape(-1)
    return _affine(C, d, y)
