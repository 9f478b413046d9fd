"""Backend-neutral sparse LP / MILP model.

:class:`LinearModel` stores

* variables ``l <= x <= u`` (numpy arrays, ``±inf`` allowed) with an optional
  integrality flag per variable,
* linear rows ``lo <= A x <= hi`` (``A`` CSR, ``±inf`` allowed in ``lo``/``hi``),
* a linear objective ``c·x + offset`` to minimise or maximise.

It holds no solver objects, pickles cheaply (for process pools) and supports
the cheap edits needed by bound-tightening loops: copying, changing the
objective or variable bounds, and appending cut rows.  Constraint blocks are
kept as a list of CSR matrices and assembled lazily into one matrix on first
access of :attr:`LinearModel.A`; stored matrices are never mutated in place,
so copies share them safely.
"""

from __future__ import annotations

import logging
from enum import Enum
from typing import Mapping, Union

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from .errors import LinearModelError

__all__ = ["Sense", "LinearModel", "ObjectiveLike", "as_dense_objective"]

logger = logging.getLogger(__name__)

#: Objective coefficients: dense vector, sparse 1xn / nx1 matrix, or {index: coef}.
ObjectiveLike = Union[npt.ArrayLike, sp.spmatrix, sp.sparray, Mapping[int, float]]


class Sense(str, Enum):
    """Optimisation direction."""

    MINIMIZE = "min"
    MAXIMIZE = "max"

    @classmethod
    def parse(cls, value: "Sense | str | int") -> "Sense":
        """Accept a :class:`Sense`, ``"min"``/``"minimize"``/``"max"``/``"maximize"`` or ``±1``."""
        if isinstance(value, Sense):
            return value
        if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
            if value in (1, -1):
                return cls.MINIMIZE if value == 1 else cls.MAXIMIZE
        if isinstance(value, str):
            key = value.strip().lower()
            if key in ("min", "minimize", "minimise"):
                return cls.MINIMIZE
            if key in ("max", "maximize", "maximise"):
                return cls.MAXIMIZE
        raise LinearModelError(f"unknown objective sense {value!r}")

    @property
    def sign(self) -> float:
        """+1 for minimisation, -1 for maximisation (min of sign*c·x)."""
        return 1.0 if self is Sense.MINIMIZE else -1.0


def _as_csr(A: npt.ArrayLike | sp.spmatrix | sp.sparray) -> sp.csr_matrix:
    """Return ``A`` as a float64 CSR matrix with sorted, de-duplicated entries."""
    if sp.issparse(A):
        M = sp.csr_matrix(A, dtype=np.float64, copy=True)
    else:
        arr = np.asarray(A, dtype=np.float64)
        if arr.ndim == 1:
            arr = arr[None, :]
        if arr.ndim != 2:
            raise LinearModelError(f"constraint matrix must be 2-D, got shape {arr.shape}")
        M = sp.csr_matrix(arr)
    M.sum_duplicates()
    M.eliminate_zeros()
    M.sort_indices()
    if M.nnz and not np.all(np.isfinite(M.data)):
        raise LinearModelError("constraint matrix contains NaN or infinite coefficients")
    return M


def as_dense_objective(c: ObjectiveLike, n: int) -> np.ndarray:
    """Convert an objective description to a dense float64 vector of length ``n``.

    Shorter dense vectors are zero-padded (they refer to the leading variables).
    """
    if isinstance(c, Mapping):
        out = np.zeros(n)
        for j, v in c.items():
            if not 0 <= int(j) < n:
                raise LinearModelError(f"objective index {j} out of range [0, {n})")
            out[int(j)] += float(v)
    elif sp.issparse(c):
        arr = np.asarray(c.toarray(), dtype=np.float64).ravel()
        out = np.zeros(n)
        if arr.size > n:
            raise LinearModelError(f"objective has {arr.size} entries, model has {n} variables")
        out[: arr.size] = arr
    else:
        arr = np.asarray(c, dtype=np.float64).ravel()
        if arr.size > n:
            raise LinearModelError(f"objective has {arr.size} entries, model has {n} variables")
        out = np.zeros(n)
        out[: arr.size] = arr
    if not np.all(np.isfinite(out)):
        raise LinearModelError("objective contains NaN or infinite coefficients")
    return out


def _check_bounds(lo: np.ndarray, hi: np.ndarray, what: str) -> None:
    if np.isnan(lo).any() or np.isnan(hi).any():
        raise LinearModelError(f"{what} bounds contain NaN")
    if np.any(lo > hi):
        k = int(np.argmax(lo > hi))
        raise LinearModelError(f"{what} {k}: lower bound {lo[k]} > upper bound {hi[k]}")
    if np.any(lo == np.inf) or np.any(hi == -np.inf):
        raise LinearModelError(f"{what} bounds: lower=+inf or upper=-inf is not allowed")


class LinearModel:
    """Sparse LP / MILP: ``min|max c·x + offset  s.t.  lo <= A x <= hi,  l <= x <= u``."""

    def __init__(self, name: str = "model") -> None:
        self.name = name
        self._lb = np.zeros(0)
        self._ub = np.zeros(0)
        self._int = np.zeros(0, dtype=bool)
        self._c = np.zeros(0)
        self._offset = 0.0
        self._sense = Sense.MINIMIZE
        self._blocks: list[sp.csr_matrix] = []  # each has <= num_vars columns
        self._row_lo = np.zeros(0)
        self._row_hi = np.zeros(0)
        self._A: sp.csr_matrix | None = None  # cache of the assembled matrix
        self._At: sp.csr_matrix | None = None  # cache of its transpose
        self._var_blocks: dict[str, np.ndarray] = {}
        self._row_blocks: dict[str, np.ndarray] = {}
        self._known: tuple[np.ndarray, np.ndarray] | None = None  # see set_known_bounds

    # ------------------------------------------------------------------ sizes
    @property
    def num_vars(self) -> int:
        """Number of variables (columns)."""
        return int(self._lb.size)

    @property
    def num_rows(self) -> int:
        """Number of linear rows."""
        return int(self._row_lo.size)

    @property
    def num_integer(self) -> int:
        """Number of integer (incl. binary) variables."""
        return int(self._int.sum())

    @property
    def is_mip(self) -> bool:
        """True when at least one variable is integer."""
        return bool(self._int.any())

    @property
    def nnz(self) -> int:
        """Number of stored nonzeros of ``A``."""
        return int(sum(b.nnz for b in self._blocks))

    # ------------------------------------------------------------- variables
    def add_vars(
        self,
        lb: npt.ArrayLike,
        ub: npt.ArrayLike,
        *,
        integer: bool | npt.ArrayLike = False,
        size: int | None = None,
        name: str | None = None,
    ) -> np.ndarray:
        """Append a block of variables; return their indices.

        ``lb``/``ub`` are broadcast against each other (and ``size`` if given).
        ``integer`` marks the block (or individual entries) integral.
        """
        shape = () if size is None else (int(size),)
        try:
            lo, hi = np.broadcast_arrays(
                np.asarray(lb, dtype=np.float64), np.asarray(ub, dtype=np.float64),
                np.empty(shape),
            )[:2]
        except ValueError as exc:
            raise LinearModelError(f"variable bounds do not broadcast: {exc}") from exc
        if lo.ndim == 0:
            raise LinearModelError("scalar bounds need an explicit size")
        lo, hi = lo.ravel().copy(), hi.ravel().copy()
        _check_bounds(lo, hi, "variable")
        integ = np.broadcast_to(np.asarray(integer, dtype=bool), lo.shape).copy()
        start = self.num_vars
        idx = np.arange(start, start + lo.size)
        self._lb = np.concatenate([self._lb, lo])
        self._ub = np.concatenate([self._ub, hi])
        self._int = np.concatenate([self._int, integ])
        self._c = np.concatenate([self._c, np.zeros(lo.size)])
        if self._known is not None:
            self._known = (np.concatenate([self._known[0], lo]), np.concatenate([self._known[1], hi]))
        self._A = None
        if name is not None:
            self._register(self._var_blocks, name, idx)
        return idx

    def add_binary_vars(self, size: int, *, name: str | None = None) -> np.ndarray:
        """Append ``size`` binary (0/1 integer) variables; return their indices."""
        return self.add_vars(0.0, 1.0, integer=True, size=size, name=name)

    @property
    def lb(self) -> np.ndarray:
        """Variable lower bounds (read-only view)."""
        return _readonly(self._lb)

    @property
    def ub(self) -> np.ndarray:
        """Variable upper bounds (read-only view)."""
        return _readonly(self._ub)

    @property
    def integrality(self) -> np.ndarray:
        """Boolean integrality flags (read-only view)."""
        return _readonly(self._int)

    def set_var_bounds(
        self,
        idx: npt.ArrayLike,
        lb: npt.ArrayLike | None = None,
        ub: npt.ArrayLike | None = None,
    ) -> None:
        """Overwrite the bounds of variables ``idx`` (``None`` keeps that side)."""
        idx = self._check_index(idx, self.num_vars, "variable")
        new_lb = self._lb.copy()
        new_ub = self._ub.copy()
        if lb is not None:
            new_lb[idx] = np.broadcast_to(np.asarray(lb, dtype=np.float64), idx.shape)
        if ub is not None:
            new_ub[idx] = np.broadcast_to(np.asarray(ub, dtype=np.float64), idx.shape)
        _check_bounds(new_lb[idx], new_ub[idx], "variable")
        self._lb, self._ub = new_lb, new_ub

    def set_known_bounds(self, idx: npt.ArrayLike, lb: npt.ArrayLike, ub: npt.ArrayLike) -> None:
        """Record bounds that every point the model stands for satisfies, *without* giving them to
        the solver (as variable bounds they can make an LP far more degenerate).

        Only the certified bounds use them (:func:`absint.solvers.safe_bound.lp_proved_bound`: a
        free variable then needs no implied-bound propagation). The proved bound is then valid for
        the points that satisfy the rows and these bounds — for an LP relaxation of a network whose
        known bounds are proved bounds of the network, every reachable point.
        """
        idx = self._check_index(idx, self.num_vars, "variable")
        klo, khi = self.known_bounds
        klo, khi = klo.copy(), khi.copy()
        klo[idx] = np.maximum(klo[idx], np.broadcast_to(np.asarray(lb, dtype=np.float64), idx.shape))
        khi[idx] = np.minimum(khi[idx], np.broadcast_to(np.asarray(ub, dtype=np.float64), idx.shape))
        _check_bounds(klo[idx], khi[idx], "known variable")
        self._known = (klo, khi)

    @property
    def known_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """The variable bounds met with the known bounds (:meth:`set_known_bounds`); read-only views."""
        if self._known is None:
            return _readonly(self._lb), _readonly(self._ub)
        return (_readonly(np.maximum(self._lb, self._known[0])), _readonly(np.minimum(self._ub, self._known[1])))

    def set_integrality(self, idx: npt.ArrayLike, integer: bool | npt.ArrayLike) -> None:
        """Set integrality flags of variables ``idx``."""
        idx = self._check_index(idx, self.num_vars, "variable")
        flags = self._int.copy()
        flags[idx] = np.broadcast_to(np.asarray(integer, dtype=bool), idx.shape)
        self._int = flags

    # ------------------------------------------------------------ constraints
    def add_constraints(
        self,
        A: npt.ArrayLike | sp.spmatrix | sp.sparray,
        lo: npt.ArrayLike = -np.inf,
        hi: npt.ArrayLike = np.inf,
        *,
        cols: npt.ArrayLike | None = None,
        name: str | None = None,
    ) -> np.ndarray:
        """Append rows ``lo <= A x <= hi``; return their row indices.

        ``A`` (sparse or dense, ``k x p``) refers to the first ``p`` variables,
        or to the variables listed in ``cols`` (length ``p``) if given.
        """
        M = _as_csr(A)
        n = self.num_vars
        if cols is not None:
            cols_arr = self._check_index(cols, n, "variable")
            if cols_arr.size != M.shape[1]:
                raise LinearModelError(f"cols has {cols_arr.size} entries, A has {M.shape[1]} columns")
            M = sp.csr_matrix((M.data, cols_arr[M.indices], M.indptr), shape=(M.shape[0], n))
            M.sum_duplicates()
            M.sort_indices()
        elif M.shape[1] > n:
            raise LinearModelError(f"A has {M.shape[1]} columns but the model has {n} variables")
        k = M.shape[0]
        try:
            rlo, rhi = np.broadcast_arrays(
                np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64), np.empty(k)
            )[:2]
        except ValueError as exc:
            raise LinearModelError(f"row bounds do not match {k} rows: {exc}") from exc
        rlo, rhi = rlo.copy(), rhi.copy()
        _check_bounds(rlo, rhi, "row")
        start = self.num_rows
        self._blocks.append(M)
        self._row_lo = np.concatenate([self._row_lo, rlo])
        self._row_hi = np.concatenate([self._row_hi, rhi])
        self._A = None
        idx = np.arange(start, start + k)
        if name is not None:
            self._register(self._row_blocks, name, idx)
        return idx

    def add_cuts(
        self,
        A: npt.ArrayLike | sp.spmatrix | sp.sparray,
        lo: npt.ArrayLike = -np.inf,
        hi: npt.ArrayLike = np.inf,
        *,
        cols: npt.ArrayLike | None = None,
    ) -> np.ndarray:
        """Append cut rows (same as :meth:`add_constraints`, registered as ``"cuts"``)."""
        return self.add_constraints(A, lo, hi, cols=cols, name="cuts")

    @property
    def A(self) -> sp.csr_matrix:
        """The assembled ``num_rows x num_vars`` CSR constraint matrix (do not mutate)."""
        if self._A is None or self._A.shape != (self.num_rows, self.num_vars):
            n = self.num_vars
            blocks = [
                sp.csr_matrix((b.data, b.indices, b.indptr), shape=(b.shape[0], n))
                for b in self._blocks
            ]
            if not blocks:
                A = sp.csr_matrix((0, n))
            elif len(blocks) == 1:
                A = blocks[0]
            else:
                A = sp.vstack(blocks, format="csr")
            A.sort_indices()
            self._blocks = [A] if A.shape[0] else []
            self._A, self._At = A, None
        return self._A

    @property
    def AT(self) -> sp.csr_matrix:
        """``A`` transposed, as CSR (cached; do not mutate)."""
        A = self.A
        if self._At is None:
            self._At = A.T.tocsr()
        return self._At

    @property
    def row_lo(self) -> np.ndarray:
        """Row lower bounds (read-only view)."""
        return _readonly(self._row_lo)

    @property
    def row_hi(self) -> np.ndarray:
        """Row upper bounds (read-only view)."""
        return _readonly(self._row_hi)

    def set_row_bounds(
        self, idx: npt.ArrayLike, lo: npt.ArrayLike | None = None, hi: npt.ArrayLike | None = None
    ) -> None:
        """Overwrite the bounds of rows ``idx`` (``None`` keeps that side)."""
        idx = self._check_index(idx, self.num_rows, "row")
        new_lo, new_hi = self._row_lo.copy(), self._row_hi.copy()
        if lo is not None:
            new_lo[idx] = np.broadcast_to(np.asarray(lo, dtype=np.float64), idx.shape)
        if hi is not None:
            new_hi[idx] = np.broadcast_to(np.asarray(hi, dtype=np.float64), idx.shape)
        _check_bounds(new_lo[idx], new_hi[idx], "row")
        self._row_lo, self._row_hi = new_lo, new_hi

    # --------------------------------------------------------------- objective
    def set_objective(
        self, c: ObjectiveLike, sense: Sense | str = Sense.MINIMIZE, offset: float = 0.0
    ) -> None:
        """Set the objective ``c·x + offset`` and its direction."""
        self._c = as_dense_objective(c, self.num_vars)
        self._sense = Sense.parse(sense)
        if not np.isfinite(offset):
            raise LinearModelError("objective offset must be finite")
        self._offset = float(offset)

    @property
    def objective(self) -> np.ndarray:
        """Dense objective coefficients (read-only view)."""
        return _readonly(self._c)

    @property
    def sense(self) -> Sense:
        """Objective direction."""
        return self._sense

    @property
    def offset(self) -> float:
        """Constant objective term."""
        return self._offset

    def with_objective(
        self, c: ObjectiveLike, sense: Sense | str = Sense.MINIMIZE, offset: float = 0.0
    ) -> "LinearModel":
        """Return a cheap copy of the model with a different objective."""
        m = self.copy()
        m.set_objective(c, sense, offset)
        return m

    def objective_value(self, x: npt.ArrayLike) -> float:
        """Evaluate ``c·x + offset``."""
        return float(self._c @ np.asarray(x, dtype=np.float64) + self._offset)

    # --------------------------------------------------------------- helpers
    def copy(self) -> "LinearModel":
        """Cheap copy: arrays are copied on write, CSR blocks are shared (immutable)."""
        m = LinearModel.__new__(LinearModel)
        m.__dict__.update(self.__dict__)
        m._blocks = list(self._blocks)
        m._var_blocks = dict(self._var_blocks)
        m._row_blocks = dict(self._row_blocks)
        # numpy arrays are replaced (never mutated) by every setter, so sharing is safe
        return m

    def relaxed(self) -> "LinearModel":
        """Copy with all integrality dropped (the LP relaxation)."""
        m = self.copy()
        m._int = np.zeros(self.num_vars, dtype=bool)
        return m

    def var_block(self, name: str) -> np.ndarray:
        """Indices of the variable block registered under ``name``."""
        return self._var_blocks[name]

    def row_block(self, name: str) -> np.ndarray:
        """Indices of the row block(s) registered under ``name``."""
        return self._row_blocks[name]

    def max_violation(self, x: npt.ArrayLike) -> float:
        """Largest bound / row / integrality violation of ``x`` (0 if feasible)."""
        x = np.asarray(x, dtype=np.float64)
        ax = self.A @ x if self.num_rows else np.zeros(0)
        viol = [
            np.maximum(self._lb - x, 0.0),
            np.maximum(x - self._ub, 0.0),
            np.maximum(self._row_lo - ax, 0.0),
            np.maximum(ax - self._row_hi, 0.0),
            np.abs(x[self._int] - np.round(x[self._int])),
        ]
        return float(max((v.max() for v in viol if v.size), default=0.0))

    def validate(self) -> None:
        """Re-check all invariants; raise :class:`LinearModelError` on inconsistency."""
        n = self.num_vars
        if not (self._ub.size == n and self._int.size == n and self._c.size == n):
            raise LinearModelError("variable arrays have inconsistent lengths")
        _check_bounds(self._lb, self._ub, "variable")
        _check_bounds(self._row_lo, self._row_hi, "row")
        if self.A.shape != (self.num_rows, n):
            raise LinearModelError("constraint matrix shape mismatch")
        if not np.all(np.isfinite(self._c)):
            raise LinearModelError("objective contains NaN or infinite coefficients")

    @classmethod
    def from_arrays(
        cls,
        c: ObjectiveLike,
        A: npt.ArrayLike | sp.spmatrix | sp.sparray | None,
        row_lo: npt.ArrayLike,
        row_hi: npt.ArrayLike,
        lb: npt.ArrayLike,
        ub: npt.ArrayLike,
        *,
        integer: bool | npt.ArrayLike = False,
        sense: Sense | str = Sense.MINIMIZE,
        offset: float = 0.0,
        name: str = "model",
    ) -> "LinearModel":
        """Build a model in one call.

        The number of variables comes from ``lb``/``ub`` if they are arrays,
        else from the columns of ``A``, else from ``c``.
        """
        m = cls(name)
        bshape = np.broadcast(np.asarray(lb), np.asarray(ub)).shape
        if bshape:
            n = int(np.prod(bshape))
        elif A is not None:
            n = int(A.shape[1]) if sp.issparse(A) else int(np.atleast_2d(np.asarray(A)).shape[1])
        else:
            n = int(np.asarray(c).size)
        m.add_vars(lb, ub, integer=integer, size=n)
        if A is not None:
            m.add_constraints(A, row_lo, row_hi)
        m.set_objective(c, sense, offset)
        return m

    def __repr__(self) -> str:
        kind = "MILP" if self.is_mip else "LP"
        return (
            f"LinearModel({self.name!r}, {kind}, vars={self.num_vars}, "
            f"int={self.num_integer}, rows={self.num_rows}, nnz={self.nnz}, "
            f"sense={self._sense.value})"
        )

    # ------------------------------------------------------------- internals
    @staticmethod
    def _check_index(idx: npt.ArrayLike, n: int, what: str) -> np.ndarray:
        arr = np.atleast_1d(np.asarray(idx))
        if arr.dtype == bool:
            if arr.size != n:
                raise LinearModelError(f"boolean {what} mask has length {arr.size}, expected {n}")
            return np.flatnonzero(arr)
        arr = arr.astype(np.int64, copy=False).ravel()
        if arr.size and (arr.min() < 0 or arr.max() >= n):
            raise LinearModelError(f"{what} index out of range [0, {n})")
        return arr

    @staticmethod
    def _register(table: dict[str, np.ndarray], name: str, idx: np.ndarray) -> None:
        table[name] = np.concatenate([table[name], idx]) if name in table else idx


def _readonly(a: np.ndarray) -> np.ndarray:
    v = a.view()
    v.flags.writeable = False
    return v
