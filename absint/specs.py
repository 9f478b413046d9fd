"""Specifications: input regions and output properties.

A verification *instance* asks: for every input ``x`` in an :class:`InputBox`, does the network
output ``y`` satisfy the :class:`OutputProperty`?

Output properties are stored the way VNN-LIB states them, as the *violation* to rule out: a
disjunction of clauses, each clause a conjunction of linear inequalities ``A y + b ≥ 0``. The
property holds iff no clause can be satisfied. An analysis refutes a clause by proving, for one
of its rows, ``min (−A_r y − b_r) > 0`` over the region; it falsifies the property with a
concrete ``x`` whose output satisfies every row of some clause.

Robustness of a classifier with true label ``t`` is the special case with one clause per other
class ``j``: ``y_j − y_t ≥ 0``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from absint.errors import SpecError


@dataclass(frozen=True, eq=False)
class InputBox:
    """An axis-aligned box ``lower ≤ x ≤ upper`` in the network's input shape (no batch axis)."""

    lower: np.ndarray
    upper: np.ndarray

    def __post_init__(self) -> None:
        lo = np.asarray(self.lower, dtype=np.float64)
        hi = np.asarray(self.upper, dtype=np.float64)
        if lo.shape != hi.shape:
            raise SpecError(f"input box bounds have different shapes {lo.shape} and {hi.shape}")
        if not (np.isfinite(lo).all() and np.isfinite(hi).all()):
            raise SpecError("input box bounds must be finite numbers (found NaN or inf)")
        if np.any(lo > hi):
            bad = int(np.argmax(lo > hi))
            raise SpecError(f"infeasible input box: lower > upper at flat index {bad} "
                            f"({lo.reshape(-1)[bad]} > {hi.reshape(-1)[bad]})")
        object.__setattr__(self, "lower", lo)
        object.__setattr__(self, "upper", hi)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.lower.shape)

    @property
    def center(self) -> np.ndarray:
        return (self.lower + self.upper) / 2

    def reshape(self, shape: tuple[int, ...]) -> "InputBox":
        """The same box viewed in another shape of equal size (e.g. VNN-LIB flat → image)."""
        if int(np.prod(shape)) != self.lower.size:
            raise SpecError(f"spec has {self.lower.size} input variables but the network expects "
                            f"{int(np.prod(shape))} (shape {tuple(shape)})")
        return InputBox(self.lower.reshape(shape), self.upper.reshape(shape))

    def contains(self, x: np.ndarray, tol: float = 0.0) -> bool:
        x = np.asarray(x, dtype=np.float64).reshape(self.lower.shape)
        return bool(np.all(x >= self.lower - tol) and np.all(x <= self.upper + tol))

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` uniform samples ``[n, *shape]`` (vertices included with some probability)."""
        return self.at(unit_samples(n, self.shape, rng))

    def at(self, u: np.ndarray) -> np.ndarray:
        """The points ``lower + u·(upper − lower)`` for positions ``u`` ``[n, *shape]`` in the unit box."""
        return self.lower + u * (self.upper - self.lower)


def unit_samples(n: int, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """The positions of :meth:`InputBox.sample` in the unit box ``[n, *shape]``: uniform, each
    coordinate moved to a vertex (0 or 1) with probability 0.1."""
    u = rng.uniform(size=(n, *shape))
    corners = rng.uniform(size=(n, *shape)) < 0.1
    return np.where(corners, np.round(u), u)


def check_radius(eps: Any) -> float:
    """``eps`` as a float if it is one finite number ≥ 0 (an L∞ radius), else a :class:`SpecError`."""
    if isinstance(eps, bool) or not isinstance(eps, (int, float, np.integer, np.floating)) \
            or not np.isfinite(eps) or eps < 0:
        raise SpecError(f"eps must be one finite number ≥ 0, got {eps!r}")
    return float(eps)


def linf_ball(center: np.ndarray, eps: float, clip: tuple[float, float] | None = (0.0, 1.0)) -> InputBox:
    """The L∞ ball of radius ``eps`` around ``center``, intersected with the valid range ``clip``."""
    eps = check_radius(eps)
    c = np.asarray(center, dtype=np.float64)
    lo, hi = c - eps, c + eps
    if clip is not None:
        lo, hi = np.clip(lo, *clip), np.clip(hi, *clip)
        if np.any(c < clip[0]) or np.any(c > clip[1]):
            raise SpecError(f"centre lies outside the valid input range {clip}")
    return InputBox(lo, hi)


# Backwards-friendly name used in the public API.
LinfBall = linf_ball


@dataclass(frozen=True, eq=False)
class Clause:
    """A conjunction ``A y + b ≥ 0`` (rows of ``A`` over the flat network output)."""

    A: np.ndarray
    b: np.ndarray

    def __post_init__(self) -> None:
        A = np.atleast_2d(np.asarray(self.A, dtype=np.float64))
        b = np.asarray(self.b, dtype=np.float64).reshape(-1)
        if A.shape[0] != b.shape[0]:
            raise SpecError(f"clause has {A.shape[0]} rows but {b.shape[0]} constants")
        if not (np.isfinite(A).all() and np.isfinite(b).all()):
            raise SpecError("output constraint coefficients must be finite numbers (found NaN or inf)")
        if A.shape[0] == 0:  # the empty conjunction is true: stored as the one row 0·y + 0 ≥ 0
            A, b = np.zeros((1, A.shape[1])), np.zeros(1)
        object.__setattr__(self, "A", A)
        object.__setattr__(self, "b", b)

    def satisfied_by(self, y: np.ndarray) -> bool:
        """True if the output ``y`` satisfies every row (i.e. violates the property)."""
        return bool(np.all(self.A @ np.asarray(y, dtype=np.float64).reshape(-1) + self.b >= 0))


@dataclass(frozen=True, eq=False)
class OutputProperty:
    """The property 'no clause is satisfiable'; ``clauses`` is the violation DNF."""

    clauses: tuple[Clause, ...]
    n_outputs: int
    label: int | None = None  # set for classification robustness properties
    description: str = ""

    def __post_init__(self) -> None:
        if not self.clauses:
            raise SpecError("an output property needs at least one clause")
        for c in self.clauses:
            if c.A.shape[1] != self.n_outputs:
                raise SpecError(f"clause refers to {c.A.shape[1]} outputs, property has {self.n_outputs}")

    def violated_by(self, y: np.ndarray) -> bool:
        return bool(np.any(self.margins(y) <= 0))

    def margins(self, y: np.ndarray) -> np.ndarray:
        """Per clause, the worst-row 'safety margin' ``max_r −(A_r y + b_r)`` at a concrete ``y``.

        The property holds at ``y`` iff every entry is > 0 (a row of every clause fails).
        Vectorised over all rows (properties from VNN-LIB files can have 10^5 clauses).
        """
        y = np.asarray(y, dtype=np.float64).reshape(-1)
        C, d, _ = self._rows()
        return self.clause_max(C @ y + d)

    def clause_max(self, row_values: np.ndarray) -> np.ndarray:
        """Per clause, the largest of its rows' values (``row_values`` in :meth:`stacked` order)."""
        return np.maximum.reduceat(np.asarray(row_values), self._clause_starts())

    def stacked(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """All rows as one safety system ``C y + d`` (``C = −A``, ``d = −b``) and each row's clause."""
        C, d, owner = self._rows()
        return C.copy(), d.copy(), owner.copy()

    def _rows(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`stacked`, computed once per property and shared (callers here never write)."""
        cached = self.__dict__.get("_stacked")
        if cached is None:
            C = -np.concatenate([c.A for c in self.clauses])
            d = -np.concatenate([c.b for c in self.clauses])
            owner = np.repeat(np.arange(len(self.clauses)), [len(c.b) for c in self.clauses])
            cached = (C, d, owner)
            object.__setattr__(self, "_stacked", cached)
        return cached

    def _clause_starts(self) -> np.ndarray:
        """Index of each clause's first row in :meth:`stacked` (for segment reductions)."""
        cached = self.__dict__.get("_starts")
        if cached is None:
            cached = np.concatenate([[0], np.cumsum([len(c.b) for c in self.clauses])[:-1]]).astype(np.int64)
            object.__setattr__(self, "_starts", cached)
        return cached

    def is_pairwise_comparison(self) -> bool:
        """True if every row compares two outputs (``y_i − y_j ≥ 0``) with no constant.

        Such properties are unchanged by a monotone per-sample map like a final Softmax.
        """
        for c in self.clauses:
            for row, const in zip(c.A, c.b):
                nz = np.flatnonzero(row)
                if const != 0 or len(nz) != 2 or row[nz].sum() != 0:
                    return False
        return True


def robustness_property(label: int, n_classes: int) -> OutputProperty:
    """Classification robustness: class ``label`` stays the strict argmax."""
    if not 0 <= label < n_classes:
        raise SpecError(f"label {label} out of range for {n_classes} classes")
    clauses = []
    for j in range(n_classes):
        if j == label:
            continue
        a = np.zeros(n_classes)
        a[j], a[label] = 1.0, -1.0
        clauses.append(Clause(a[None, :], np.zeros(1)))
    return OutputProperty(tuple(clauses), n_classes, label, f"robust(label={label})")


@dataclass(frozen=True, eq=False)
class Instance:
    """One verification question: an input region and the property its outputs must satisfy."""

    region: InputBox
    prop: OutputProperty
    name: str = ""


@dataclass(frozen=True, eq=False)
class Spec:
    """A full specification: the property must hold on each of (possibly several) regions.

    VNN-LIB files with a disjunction over input constraints (ACAS Xu property 6) give several
    regions; the property holds iff it holds on every one.
    """

    instances: tuple[Instance, ...]
    source: str = ""
    meta: dict = field(default_factory=dict)

    def check_network(self, input_shape: tuple[int, ...], n_outputs: int) -> "Spec":
        """Validate against a network's shapes; returns the spec with regions reshaped to it."""
        out = []
        name = self.source or "spec"
        for inst in self.instances:
            problems = []
            if inst.region.lower.size != int(np.prod(input_shape)):
                problems.append(f"it has {inst.region.lower.size} input variables but the network expects "
                                f"{int(np.prod(input_shape))} (input shape {tuple(input_shape)})")
            if inst.prop.n_outputs != n_outputs:
                problems.append(f"its property is over {inst.prop.n_outputs} outputs but the network has {n_outputs}")
            if problems:
                raise SpecError(f"{name} does not match the network: " + "; ".join(problems))
            out.append(Instance(inst.region.reshape(tuple(input_shape)), inst.prop, inst.name))
        return Spec(tuple(out), self.source, dict(self.meta))
