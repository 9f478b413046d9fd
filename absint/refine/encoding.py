"""LP / MILP encodings of networks (any DAG of the IR) over proved per-node bounds.

Given a network, the input box and sound concrete bounds of its nodes, :class:`NetworkEncoder`
builds a backend-neutral :class:`solvers.LinearModel` whose feasible set contains every
reachable (input, activations) tuple:

* input neurons are variables with the input box as bounds;
* an Affine node ``z = W x + b`` is a block of equality rows (dense layers directly, convolutions
  and other operators as a ``scipy.sparse`` matrix of the operator);
* Add is a block of equality rows ``z = a + b``; Reshape reuses its input's variables;
* ReLU, Sigmoid, Tanh and MaxPool2d get the rows of :mod:`absint.refine.encode_ops` (triangle or
  big-M ReLU, DeepPoly lines for S-shaped activations, LP or exact MILP max-pooling);
* extra rows over ``(z_group, y_group)`` — the k-ReLU hull constraints of kPoly (Singh et al.,
  NeurIPS 2019) — are appended per ReLU node (:class:`KReluRows`).

Any other op raises :class:`UnsupportedNetworkError` naming every offending node at once.

Soundness: the model is a relaxation whenever the supplied bounds are sound; only
:attr:`solvers.SolveResult.proved_bound` (a dual/best bound certified against rounding) may be
used as a bound of the network.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from absint.errors import UnsupportedOpError
from absint.ir import Add, Affine, Graph, Input, MaxPool2d, Op, Relu, Reshape, Sigmoid, Tanh
from absint.linear import DenseOperator, LinearOperator, numel
from absint.refine.encode_ops import KReluRows, maxpool_rows, maxpool_windows, relu_rows, s_shaped_rows
from absint.solvers import LinearModel

log = logging.getLogger(__name__)

__all__ = ["UnsupportedNetworkError", "KReluRows", "Encoding", "NetworkEncoder", "operator_matrix",
           "ENCODED_OPS", "ACTIVATION_OPS"]

Bounds = dict[str, tuple[np.ndarray, np.ndarray]]

#: ops the encoding handles; activations whose inputs per-neuron tightening refines
ENCODED_OPS: tuple[type[Op], ...] = (Input, Affine, Relu, Reshape, Add, Sigmoid, Tanh, MaxPool2d)
ACTIVATION_OPS: tuple[type[Op], ...] = (Relu, Sigmoid, Tanh)
#: seconds to build a model per constraint-matrix nonzero, handing it to a solver process included,
#: and to convert an operator to a sparse matrix the first time (a 784-4096-4096-10 MLP, 20M
#: nonzeros, load 4.6: build 2.6 s + pickle 0.6 s + transfer; first conversion 5.3 s)
BUILD_SECONDS_PER_NONZERO = 2.5e-7
CONVERT_SECONDS_PER_NONZERO = 4e-7


class UnsupportedNetworkError(UnsupportedOpError):
    """The network contains ops the LP/MILP encoding does not support."""


@dataclass
class Encoding:
    """A built model and where each node's neurons live in it."""

    model: LinearModel
    vars: dict[str, np.ndarray]  # node name -> flat variable indices
    binaries: dict[str, np.ndarray]  # ReLU / MaxPool node name -> neurons (windows) that got binaries
    output: str

    def input_values(self, x: np.ndarray, graph: Graph) -> np.ndarray:
        """The input part of a model solution ``x``, shaped like the network input."""
        return np.asarray(x)[self.vars[graph.input.name]].reshape(graph.input_shape)


def operator_matrix(op: LinearOperator, chunk: int = 256) -> sp.csr_matrix:
    """``op`` as a sparse ``[numel(out), numel(in)]`` matrix.

    Dense layers are converted directly; other operators (convolutions, pooling, diagonal
    scalings) are applied to chunks of unit vectors and sparsified chunk by chunk, so memory
    stays proportional to the number of nonzeros.
    """
    if isinstance(op, DenseOperator):
        return sp.csr_matrix(op.weight.detach().cpu().double().numpy())
    n_in = numel(op.in_shape)
    cols = []
    with torch.no_grad():
        for s in range(0, n_in, chunk):
            e = min(n_in, s + chunk)
            eye = torch.zeros(e - s, n_in, dtype=torch.float64)
            eye[torch.arange(e - s), torch.arange(s, e)] = 1.0
            out = op.to(dtype=torch.float64).forward(eye.reshape(e - s, *op.in_shape)).reshape(e - s, -1)
            cols.append(sp.csr_matrix(out.cpu().numpy()).T)
    return sp.hstack(cols, format="csr")


def _interval_affine(M: sp.csr_matrix, bias: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Interval image of ``M x + bias``, sound in real arithmetic (as :func:`absint.domains.base.interval_affine`):
    the radius is rounded up, the result widened by ``2γ_{k+2}·(|M|(|c| + r) + |b|)`` for rows of
    ``k`` nonzeros (plus the underflow term) and rounded outward."""
    c = (hi + lo) / 2
    r = np.maximum(hi - c, c - lo)
    r = np.where(r > 0, np.nextafter(r, np.inf), r)
    absM = abs(M)
    with np.errstate(invalid="ignore", over="ignore"):
        mid = M @ c + bias
        rad = absM @ r
        mag = rad + absM @ np.abs(c) + np.abs(bias)
        k = np.diff(M.tocsr().indptr) + 3.0  # products per row, the bias, and the error term itself
        ku = k * 2.0 ** -53
        err = 2.0 * ku / (1.0 - ku) * mag + k * 5e-324
        lo_out = np.nextafter(mid - rad - err, -np.inf)
        hi_out = np.nextafter(mid + rad + err, np.inf)
    bad = ~(np.isfinite(lo_out) & np.isfinite(hi_out))
    return np.where(bad, -np.inf, lo_out), np.where(bad, np.inf, hi_out)


def _meet(ilo: np.ndarray, ihi: np.ndarray, given: tuple[np.ndarray, np.ndarray] | None) -> tuple[np.ndarray, np.ndarray]:
    lo, hi = ilo, ihi
    if given is not None:
        glo = np.asarray(given[0], dtype=np.float64).reshape(-1)
        ghi = np.asarray(given[1], dtype=np.float64).reshape(-1)
        lo, hi = np.maximum(lo, glo), np.minimum(hi, ghi)
    # Crossed bounds can only come from rounding noise on a (near-)empty set: keep the hull.
    crossed = lo > hi
    if crossed.any():
        lo, hi = np.where(crossed, hi, lo), np.where(crossed, lo, hi)
    return lo, hi


def unsupported_nodes(graph: Graph) -> list[tuple[str, str, str]]:
    """``(name, op, reason)`` of every node the encoding cannot handle."""
    return [(n.name, n.kind, "the LP/MILP encoding supports Affine/Conv, ReLU, Sigmoid, Tanh, MaxPool2d, "
             "Reshape and Add") for n in graph.nodes if not isinstance(n, ENCODED_OPS)]


class NetworkEncoder:
    """Builds LP/MILP models of (prefixes of) a network; operator matrices are computed once."""

    def __init__(self, graph: Graph) -> None:
        bad = unsupported_nodes(graph)
        if bad:
            raise UnsupportedNetworkError(bad, source=f"LP/MILP encoding of {graph.name}")
        self.graph = graph
        self._mats: dict[str, sp.csr_matrix] = {}
        self._bias: dict[str, np.ndarray] = {}
        self._windows: dict[str, np.ndarray] = {}

    def matrix(self, node: Affine) -> tuple[sp.csr_matrix, np.ndarray]:
        """Sparse matrix and flat bias of an Affine node (cached)."""
        if node.name not in self._mats:
            self._mats[node.name] = operator_matrix(node.operator)
            self._bias[node.name] = node.bias_full().detach().cpu().double().numpy().reshape(-1)
        return self._mats[node.name], self._bias[node.name]

    def estimate_nonzeros(self, upto: str | None = None, *, uncached: bool = False) -> int:
        """Roughly the constraint-matrix nonzeros of a model up to ``upto`` (without building it);
        ``uncached``: only those of operators whose sparse matrix is not computed yet."""
        from absint.linear import ConvOperator

        total = 0
        for node in self.graph.nodes:
            if isinstance(node, Affine) and not (uncached and node.name in self._mats):
                op = node.operator
                w = getattr(op, "weight", None)
                if isinstance(op, DenseOperator):
                    total += int(w.numel())
                elif isinstance(op, ConvOperator):
                    total += int(w.numel() * numel(op.out_shape[1:]))
                total += numel(node.shape)
            elif not uncached and not isinstance(node, (Input, Reshape, Affine)):
                total += 4 * numel(node.shape)
            if node.name == (upto or self.graph.output):
                break
        return total

    def fits(self, deadline: float | None, upto: str | None = None) -> bool:
        """Whether building a model up to ``upto`` and handing it to a solver likely fit before
        ``deadline`` (building is not interruptible; :data:`BUILD_SECONDS_PER_NONZERO`,
        :data:`CONVERT_SECONDS_PER_NONZERO`)."""
        if deadline is None:
            return True
        import time

        cost = (CONVERT_SECONDS_PER_NONZERO * self.estimate_nonzeros(upto, uncached=True)
                + BUILD_SECONDS_PER_NONZERO * self.estimate_nonzeros(upto))
        return deadline - time.perf_counter() > 1.2 * cost + 0.1

    def windows(self, node: MaxPool2d) -> np.ndarray:
        """Flat input indices of the pooling windows of ``node`` (cached)."""
        if node.name not in self._windows:
            in_shape = tuple(self.graph.node(node.inputs[0]).shape)
            self._windows[node.name] = maxpool_windows(in_shape, node.kernel, node.stride, node.padding)
        return self._windows[node.name]

    def build(self, in_lower: np.ndarray, in_upper: np.ndarray, bounds: Bounds, *, upto: str | None = None,
              binaries: dict[str, np.ndarray] | bool = False, krelu: dict[str, KReluRows] | None = None,
              bound_affine: bool = False, name: str = "network") -> Encoding:
        """Model of the network up to node ``upto`` (default: the output).

        ``bounds`` maps node names to sound flat ``(lower, upper)``; missing entries are filled by
        interval arithmetic (and every given bound is intersected with it). ``binaries``: ``True``
        gives every unstable ReLU and every undecided max-pooling window binaries (complete MILP),
        a dict selects neurons (windows) per ReLU (MaxPool) node. ``krelu`` adds k-ReLU hull rows per
        ReLU node. ``bound_affine`` also puts the bounds of affine outputs on their variables
        (implied anyway wherever an activation reads them).
        """
        g = self.graph
        upto = upto or g.output
        m = LinearModel(name)
        var: dict[str, np.ndarray] = {}
        box: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        used_bin: dict[str, np.ndarray] = {}
        for node in g.nodes:
            if isinstance(node, Input):
                lo0 = np.asarray(in_lower, dtype=np.float64).reshape(-1)
                hi0 = np.asarray(in_upper, dtype=np.float64).reshape(-1)
                var[node.name] = m.add_vars(lo0, hi0, name=node.name)
                box[node.name] = (lo0, hi0)
            elif isinstance(node, Reshape):
                var[node.name] = var[node.inputs[0]]
                box[node.name] = _meet(*box[node.inputs[0]], bounds.get(node.name))
            elif isinstance(node, Affine):
                var[node.name], box[node.name] = self._affine(m, node, var, box, bounds, bound_affine)
            elif isinstance(node, Add):
                var[node.name], box[node.name] = self._add(m, node, var, box, bounds)
            else:
                z, (l, u) = var[node.inputs[0]], box[node.inputs[0]]
                want = binaries if isinstance(binaries, bool) else binaries.get(node.name)
                if isinstance(node, Relu):
                    # with a binary on every unstable neuron the layer is exact: hull rows are redundant
                    rows = None if (krelu is None or binaries is True) else krelu.get(node.name)
                    y, yb, used = relu_rows(m, node.name, z, l, u, want, rows)
                elif isinstance(node, (Sigmoid, Tanh)):
                    kind = "sigmoid" if isinstance(node, Sigmoid) else "tanh"
                    (y, yb), used = s_shaped_rows(m, node.name, kind, z, l, u, bounds.get(node.name)), None
                else:  # MaxPool2d
                    y, yb, used = maxpool_rows(m, node.name, z, l, u, self.windows(node), want)  # type: ignore[arg-type]
                var[node.name], box[node.name] = y, yb
                if used is not None and used.size:
                    used_bin[node.name] = used
            if node.name == upto:
                break
        return Encoding(m, var, used_bin, upto)

    def _affine(self, m: LinearModel, node: Affine, var: dict, box: dict, bounds: Bounds,
                bound_affine: bool) -> tuple[np.ndarray, tuple]:
        M, bias = self.matrix(node)
        lo, hi = _meet(*_interval_affine(M, bias, *box[node.inputs[0]]), bounds.get(node.name))
        # The bounds of z enter through the activation rows (they imply l <= z <= u there); as
        # variable bounds they make the LP far more degenerate (measured 10x slower in HiGHS).
        free = np.full(len(lo), np.inf)
        z = m.add_vars(lo, hi, name=node.name) if bound_affine else m.add_vars(-free, free, name=node.name)
        if not bound_affine:  # proved bounds of z, for the certified bound only (no implied-bound search)
            m.set_known_bounds(z, lo, hi)
        x = var[node.inputs[0]]
        A = sp.hstack([sp.identity(len(z), format="csr"), -M], format="csr")  # z - M x = bias
        m.add_constraints(A, bias, bias, cols=np.concatenate([z, x]), name=f"{node.name}:affine")
        return z, (lo, hi)

    @staticmethod
    def _add(m: LinearModel, node: Add, var: dict, box: dict, bounds: Bounds) -> tuple[np.ndarray, tuple]:
        a, b = node.inputs
        ilo, ihi = box[a][0] + box[b][0], box[a][1] + box[b][1]
        # one rounding per sum: one ulp outward covers it
        lo, hi = _meet(np.nextafter(ilo, -np.inf), np.nextafter(ihi, np.inf), bounds.get(node.name))
        z = m.add_vars(lo, hi, name=node.name)
        eye = sp.identity(len(z), format="csr")
        # z - a - b = 0 (a == b is fine: repeated columns are summed)
        m.add_constraints(sp.hstack([eye, -eye, -eye], format="csr"), 0.0, 0.0,
                          cols=np.concatenate([z, var[a], var[b]]), name=f"{node.name}:add")
        return z, (lo, hi)
