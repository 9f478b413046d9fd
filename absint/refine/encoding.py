"""LP / MILP encodings of ReLU networks over proved per-neuron bounds.

Given a network (a DAG of Affine / ReLU / Reshape / Add nodes), the input box and sound
concrete bounds of every node, :class:`NetworkEncoder` builds a backend-neutral
:class:`solvers.LinearModel` whose feasible set contains every reachable (input, activations)
tuple:

* input neurons are variables with the input box as bounds;
* an Affine node ``z = W x + b`` is a block of equality rows (dense layers directly, convolutions
  as a ``scipy.sparse`` matrix of the operator, built column-chunk by column-chunk);
* a ReLU ``y = max(z, 0)`` is exact where the sign of ``z`` is proved (``y = z`` or ``y = 0``);
  an unstable neuron (``l < 0 < u``) gets the *triangle* relaxation ``y ≥ 0, y ≥ z,
  y ≤ u (z − l) / (u − l)`` (Ehlers, ATVA 2017; the LP of "LP-cert", Salman et al. NeurIPS 2019),
  or, when selected, the exact big-M encoding with a binary ``a`` (Tjeng, Xiao, Tedrake,
  "Evaluating Robustness of Neural Networks with Mixed Integer Programming", ICLR 2019):
  ``y ≤ z − l (1 − a)``, ``y ≤ u a``, ``y ≥ z``, ``y ≥ 0``;
* extra rows over ``(z_group, y_group)`` — the k-ReLU hull constraints of kPoly (Singh et al.,
  NeurIPS 2019) — are appended per ReLU node (:class:`KReluRows`).

Reshape nodes reuse their input's variables; Add is a block of equality rows. Any other op
raises :class:`UnsupportedNetworkError` naming every offending node at once.

Soundness: the model is a relaxation whenever the supplied bounds are sound; only
:attr:`solvers.SolveResult.proved_bound` (a dual/best bound certified against rounding) may be
used as a bound of the network.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
import torch

from absint.errors import UnsupportedOpError
from absint.ir import Add, Affine, Graph, Input, Op, Relu, Reshape
from absint.linear import DenseOperator, LinearOperator, numel
from absint.solvers import LinearModel

log = logging.getLogger(__name__)

__all__ = ["UnsupportedNetworkError", "KReluRows", "Encoding", "NetworkEncoder", "operator_matrix", "ENCODED_OPS"]

#: The ops the LP/MILP encoding handles (the refine analyses' ``handled_ops``).
ENCODED_OPS = (Input, Affine, Relu, Reshape, Add)

Bounds = dict[str, tuple[np.ndarray, np.ndarray]]


class UnsupportedNetworkError(UnsupportedOpError):
    """The network contains ops the LP/MILP encoding does not support."""


@dataclass
class KReluRows:
    """Joint constraints ``h0 + hx·z[g] + hy·y[g] ≥ 0`` of one ReLU node (kPoly hull rows).

    ``groups`` are tuples of flat neuron indices; ``hulls[i]`` has shape ``(r, 1 + 2k)``.
    """

    groups: list[tuple[int, ...]] = field(default_factory=list)
    hulls: list[np.ndarray] = field(default_factory=list)

    @property
    def num_rows(self) -> int:
        return int(sum(h.shape[0] for h in self.hulls))


@dataclass
class Encoding:
    """A built model and where each node's neurons live in it."""

    model: LinearModel
    vars: dict[str, np.ndarray]  # node name -> flat variable indices
    binaries: dict[str, np.ndarray]  # relu node name -> flat neuron indices that got a binary
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
    """Interval image of ``M x + bias`` widened outward by a small relative margin."""
    c, r = (hi + lo) / 2, (hi - lo) / 2
    mid = M @ c + bias
    rad = abs(M) @ r
    slack = 1e-9 * (1.0 + np.abs(mid) + rad)
    return mid - rad - slack, mid + rad + slack


class NetworkEncoder:
    """Builds LP/MILP models of (prefixes of) a network; operator matrices are computed once."""

    def __init__(self, graph: Graph) -> None:
        bad = [(n.name, n.kind) for n in graph.nodes if not isinstance(n, ENCODED_OPS)]
        if bad:
            raise UnsupportedNetworkError(
                [(a, k, "the LP/MILP encoding supports Affine/Conv, ReLU, Reshape and Add only") for a, k in bad],
                source=f"LP/MILP encoding of {graph.name}")
        self.graph = graph
        self._mats: dict[str, sp.csr_matrix] = {}
        self._bias: dict[str, np.ndarray] = {}

    def matrix(self, node: Affine) -> tuple[sp.csr_matrix, np.ndarray]:
        """Sparse matrix and flat bias of an Affine node (cached)."""
        if node.name not in self._mats:
            self._mats[node.name] = operator_matrix(node.operator)
            self._bias[node.name] = node.bias_full().detach().cpu().double().numpy().reshape(-1)
        return self._mats[node.name], self._bias[node.name]

    def relu_nodes(self, upto: str | None = None) -> list[Relu]:
        """ReLU nodes of the (prefix of the) graph, in order."""
        out = []
        for n in self.graph.nodes:
            if isinstance(n, Relu):
                out.append(n)
            if n.name == upto:
                break
        return out

    def build(self, in_lower: np.ndarray, in_upper: np.ndarray, bounds: Bounds, *, upto: str | None = None,
              binaries: dict[str, np.ndarray] | bool = False, krelu: dict[str, KReluRows] | None = None,
              bound_affine: bool = False, name: str = "network") -> Encoding:
        """Model of the network up to node ``upto`` (default: the output).

        ``bounds`` maps node names to sound flat ``(lower, upper)``; missing entries are filled by
        interval arithmetic (and every given bound is intersected with it). ``binaries``: ``True``
        gives every unstable ReLU a binary (complete MILP), a dict selects neurons per ReLU node.
        ``krelu`` adds k-ReLU hull rows per ReLU node. ``bound_affine`` also puts the bounds of
        affine outputs on their variables (implied anyway wherever a ReLU reads them).
        """
        g = self.graph
        upto = upto or g.output
        m = LinearModel(name)
        var: dict[str, np.ndarray] = {}
        box: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        used_bin: dict[str, np.ndarray] = {}
        lo0 = np.asarray(in_lower, dtype=np.float64).reshape(-1)
        hi0 = np.asarray(in_upper, dtype=np.float64).reshape(-1)
        for node in g.nodes:
            if isinstance(node, Input):
                var[node.name] = m.add_vars(lo0, hi0, name=node.name)
                box[node.name] = (lo0, hi0)
            elif isinstance(node, Reshape):
                var[node.name] = var[node.inputs[0]]
                box[node.name] = box[node.inputs[0]]
            elif isinstance(node, Affine):
                M, bias = self.matrix(node)
                ilo, ihi = _interval_affine(M, bias, *box[node.inputs[0]])
                lo, hi = self._meet(ilo, ihi, bounds.get(node.name))
                # The bounds of z enter through the ReLU rows (they imply l <= z <= u there); as
                # variable bounds they make the LP far more degenerate (measured 10x slower in HiGHS).
                z = m.add_vars(lo, hi, name=node.name) if bound_affine else \
                    m.add_vars(np.full(len(lo), -np.inf), np.full(len(lo), np.inf), name=node.name)
                # z - M x = bias
                x = var[node.inputs[0]]
                A = sp.hstack([sp.identity(len(z), format="csr"), -M], format="csr")
                m.add_constraints(A, bias, bias, cols=np.concatenate([z, x]), name=f"{node.name}:affine")
                var[node.name], box[node.name] = z, (lo, hi)
            elif isinstance(node, Add):
                a, b = node.inputs
                ilo = box[a][0] + box[b][0]
                ihi = box[a][1] + box[b][1]
                lo, hi = self._meet(ilo - 1e-9 * (1 + np.abs(ilo)), ihi + 1e-9 * (1 + np.abs(ihi)), bounds.get(node.name))
                z = m.add_vars(lo, hi, name=node.name)
                n = len(z)
                eye = sp.identity(n, format="csr")
                A = sp.hstack([eye, -eye, -eye], format="csr")
                m.add_constraints(A, 0.0, 0.0, cols=np.concatenate([z, var[a], var[b]]), name=f"{node.name}:add")
                var[node.name], box[node.name] = z, (lo, hi)
            elif isinstance(node, Relu):
                want = binaries if isinstance(binaries, bool) else binaries.get(node.name)
                # with a binary on every unstable neuron the layer is exact: hull rows are redundant
                rows = None if (krelu is None or binaries is True) else krelu.get(node.name)
                var[node.name], box[node.name], used = self._relu(m, node, var[node.inputs[0]], box[node.inputs[0]],
                                                                  want, rows)
                if used.size:
                    used_bin[node.name] = used
            if node.name == upto:
                break
        return Encoding(m, var, used_bin, upto)

    @staticmethod
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

    @staticmethod
    def _relu(m: LinearModel, node: Relu, z: np.ndarray, zbox: tuple[np.ndarray, np.ndarray],
              want: np.ndarray | bool | None, rows: KReluRows | None) -> tuple[np.ndarray, tuple, np.ndarray]:
        l, u = zbox
        n = len(z)
        ylo, yhi = np.maximum(l, 0.0), np.maximum(u, 0.0)
        y = m.add_vars(ylo, yhi, name=node.name)
        active = l >= 0
        unstable = (l < 0) & (u > 0)
        ia = np.flatnonzero(active)
        if ia.size:  # y = z
            A = sp.hstack([sp.identity(ia.size, format="csr"), -sp.identity(ia.size, format="csr")], format="csr")
            m.add_constraints(A, 0.0, 0.0, cols=np.concatenate([y[ia], z[ia]]), name=f"{node.name}:active")
        # inactive: y has bounds [0, 0] already (u <= 0).
        if want is True:
            sel = unstable.copy()
        elif want is None or want is False:
            sel = np.zeros(n, dtype=bool)
        else:
            sel = np.zeros(n, dtype=bool)
            sel[np.asarray(want, dtype=np.int64)] = True
            sel &= unstable
        iu = np.flatnonzero(unstable)
        if iu.size:
            k = iu.size
            eye = sp.identity(k, format="csr")
            # y - z >= 0
            m.add_constraints(sp.hstack([eye, -eye], format="csr"), 0.0, np.inf,
                              cols=np.concatenate([y[iu], z[iu]]), name=f"{node.name}:ge")
            tri = iu[~sel[iu]]
            if tri.size:  # (u - l) y - u z <= -u l
                lu, uu = l[tri], u[tri]
                A = sp.hstack([sp.diags(uu - lu), sp.diags(-uu)], format="csr")
                m.add_constraints(A, -np.inf, -uu * lu, cols=np.concatenate([y[tri], z[tri]]), name=f"{node.name}:tri")
            ib = np.flatnonzero(sel)
            if ib.size:
                a = m.add_binary_vars(ib.size, name=f"{node.name}:bin")
                lb, ub = l[ib], u[ib]
                e = sp.identity(ib.size, format="csr")
                # y - z - l a <= -l   (y <= z - l (1 - a))
                m.add_constraints(sp.hstack([e, -e, sp.diags(-lb)], format="csr"), -np.inf, -lb,
                                  cols=np.concatenate([y[ib], z[ib], a]), name=f"{node.name}:bigm1")
                # y - u a <= 0
                m.add_constraints(sp.hstack([e, sp.diags(-ub)], format="csr"), -np.inf, 0.0,
                                  cols=np.concatenate([y[ib], a]), name=f"{node.name}:bigm2")
        else:
            ib = np.zeros(0, dtype=np.int64)
        if rows is not None and rows.hulls:
            data, ri, ci, rhs = [], [], [], []
            r0 = 0
            for grp, H in zip(rows.groups, rows.hulls):
                gi = np.asarray(grp, dtype=np.int64)
                kk = gi.size
                H = np.asarray(H, dtype=np.float64)
                if H.size == 0:
                    continue
                cols = np.concatenate([z[gi], y[gi]])
                coef = H[:, 1:1 + 2 * kk]
                nr = H.shape[0]
                rr = np.repeat(np.arange(r0, r0 + nr), 2 * kk)
                data.append(coef.reshape(-1))
                ri.append(rr)
                ci.append(np.tile(cols, nr))
                rhs.append(-H[:, 0])
                r0 += nr
            if r0:
                A = sp.csr_matrix((np.concatenate(data), (np.concatenate(ri), np.concatenate(ci))),
                                  shape=(r0, m.num_vars))
                m.add_constraints(A, np.concatenate(rhs), np.inf, name=f"{node.name}:krelu")
        return y, (ylo, yhi), ib
