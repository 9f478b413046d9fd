"""DeepPoly abstract elements (Singh et al., "An Abstract Domain for Certifying Neural Networks",
POPL 2019).

An element is one node of the symbolic graph: it states how its neurons are bounded by linear
functions of its parent elements' neurons (its *lines*), plus memoised concrete bounds. Parents
are referenced, never copied, so back-substitution can walk the graph back to the input. Every
tensor carries the batch axis ``B`` (``B`` independent regions analysed together).

Kinds:

* ``input`` — the input box (no parents, bounds exact);
* ``affine`` — ``y = op(x) + bias`` (exact, any :class:`~absint.linear.LinearOperator`);
* ``act`` — element-wise activation with lines ``ls·x + lo ≤ y ≤ us·x + uo`` (ReLU, sigmoid, tanh);
* ``reshape`` — same neurons, another shape (row-major, exact);
* ``add`` — ``y = a + b`` of two parents (exact; makes the graph a DAG);
* ``maxpool`` — :class:`~absint.domains.relaxations.MaxPoolLines` (one input per output, or a constant).

Concrete bounds are memoised in ``cache`` with a precision level (0: interval arithmetic from the
parents; 1: back-substituted until the sign of each neuron is known; 2: full back-substitution).
The memo is a deterministic function of the element's definition, so elements stay immutable
values (:meth:`DeepPolyDomain.meet_box` returns a *new* element with tighter bounds); memoised
bounds only ever shrink, so a query answered after more bounds were computed can only be tighter
(the same sequence of calls always gives the same results).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from absint.linear import LinearOperator, numel

INPUT, AFFINE, ACT, RESHAPE, ADD, MAXPOOL = "input", "affine", "act", "reshape", "add", "maxpool"


@dataclass(frozen=True)
class ActLines:
    """Per-neuron lines ``ls·x + lo ≤ y ≤ us·x + uo``, each ``[B, n]`` (flat); ``lo`` None means 0.

    ``dslope = us − ls`` and ``doffset = uo − lo`` are precomputed for back-substitution.
    """

    ls: torch.Tensor
    lo: torch.Tensor | None
    us: torch.Tensor
    uo: torch.Tensor
    dslope: torch.Tensor
    doffset: torch.Tensor

    @staticmethod
    def make(ls: torch.Tensor, lo: torch.Tensor | None, us: torch.Tensor, uo: torch.Tensor) -> "ActLines":
        return ActLines(ls, lo, us, uo, us - ls, uo if lo is None else uo - lo)

    def select(self, cols: torch.Tensor) -> "ActLines":
        """The lines of neurons ``cols`` only."""
        return ActLines.make(self.ls[:, cols], None if self.lo is None else self.lo[:, cols],
                             self.us[:, cols], self.uo[:, cols])


@dataclass(frozen=True)
class Prune:
    """Neurons of an activation that are not stably zero in some batch member (``alive``) and
    their lines; back-substitution only carries these columns (and the matching rows of the
    dense layer before), so stably-inactive neurons cost nothing."""

    alive: torch.Tensor  # long [k]
    lines: ActLines  # restricted to alive columns, [B, k]


@dataclass(frozen=True)
class PoolLines:
    """Max-pool lines flattened for back-substitution (see :class:`~absint.domains.relaxations.MaxPoolLines`)."""

    index: torch.Tensor  # long [B, n_out], flat input index
    exact: torch.Tensor  # bool [B, n_out]
    upper: torch.Tensor  # [B, n_out] constant upper bound used where not exact
    in_numel: int


@dataclass(frozen=True, eq=False)
class DeepPolyElement:
    """One node of the DeepPoly symbolic graph (see module docstring)."""

    kind: str
    shape: tuple[int, ...]
    batch: int
    parents: tuple["DeepPolyElement", ...] = ()
    depth: int = 0
    boxlike: bool = False  # neurons independent and bounds exact (input, reshape/diagonal of it)
    op: LinearOperator | None = None
    bias: torch.Tensor | None = None  # flat [n] (affine)
    fn: str = ""  # activation name (act)
    lines: ActLines | None = None
    prune: Prune | None = None
    pool: PoolLines | None = None
    max_width: int = 0  # largest flat layer size among this element and its ancestors
    cache: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def numel(self) -> int:
        """Neurons per batch member."""
        return numel(self.shape)

    @property
    def batch_size(self) -> int:
        return self.batch

    def __repr__(self) -> str:
        extra = f", fn={self.fn!r}" if self.fn else ""
        return (f"DeepPolyElement(kind={self.kind!r}{extra}, shape={self.shape}, batch={self.batch}, "
                f"depth={self.depth}, level={self.level})")

    def cached_bounds(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Memoised concrete bounds ``[B, *shape]`` at any precision level, or None."""
        if "lower" in self.cache:
            return self.cache["lower"], self.cache["upper"]
        return None

    @property
    def level(self) -> int:
        """Precision level of the memoised bounds (-1: none yet)."""
        return int(self.cache.get("level", -1))

    @property
    def lower(self) -> torch.Tensor:
        """Memoised concrete lower bounds (use :meth:`DeepPolyDomain.bounds` for full precision)."""
        return self.cache["lower"]

    @property
    def upper(self) -> torch.Tensor:
        """Memoised concrete upper bounds (use :meth:`DeepPolyDomain.bounds` for full precision)."""
        return self.cache["upper"]

    def ancestors(self) -> list["DeepPolyElement"]:
        """This element and every element it depends on, deepest first (reverse topological)."""
        seen: dict[int, DeepPolyElement] = {}
        stack = [self]
        while stack:
            e = stack.pop()
            if id(e) in seen:
                continue
            seen[id(e)] = e
            stack.extend(e.parents)
        return sorted(seen.values(), key=lambda e: -e.depth)
