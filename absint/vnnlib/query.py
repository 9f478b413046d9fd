"""The internal form of a VNN-LIB query, shared by the 1.0 and 2.0 readers.

A :class:`Query` is what both front ends produce and what :mod:`absint.vnnlib.lowering` consumes:

* declared **networks**, each with its input, hidden and output tensor **variables** (name, element
  type, shape, optional ONNX name). Every element of every variable has one *global index*: the
  variables are laid out one after another in declaration order (``Variable.offset``);
* **atoms**: linear comparisons ``Σ coef·v[index] + const  (≥ | > | = | ≠)  0`` over global indices;
* a **formula**: the conjunction of all assertions as an and/or tree over atom ids, with nested
  connectives of the same kind already merged (so a 5000-deep ``(or a (or b ...))`` is one flat
  ``or``).

The query asserts the *violation*: the property holds iff no assignment satisfies the formula
(VNN-LIB's ``unsat``). Strictness and ``≠`` are kept here so that an assignment can be checked with
the exact semantics; the lowering relaxes them (``>`` to ``≥``, ``≠`` to true), which can only
enlarge the violation set and so is sound for ``unsat``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Iterator, Sequence, Union

import numpy as np

from absint.errors import VnnlibParseError

#: Comparison kinds of an :class:`Atom` (``expr KIND 0``).
GE, GT, EQ, NE = ">=", ">", "==", "!="
INPUT, HIDDEN, OUTPUT = "input", "hidden", "output"

#: Most disjuncts a formula may expand to (the DNF of nested and/or can grow exponentially).
MAX_DISJUNCTS = 100_000


@dataclass(frozen=True)
class Variable:
    """A declared tensor: ``name`` of ``kind`` in ``network``, ``dtype`` in the standard's spelling
    (``real``, ``float32``, ...), ``shape``, the ONNX tensor it binds to (``onnx_name``, or None to
    bind by declaration order) and its first global index ``offset``."""

    name: str
    network: str
    kind: str
    dtype: str
    shape: tuple[int, ...]
    onnx_name: str | None
    offset: int

    @property
    def size(self) -> int:
        return int(math.prod(self.shape))

    def element(self, flat: int) -> str:
        """The VNN-LIB spelling of one element, e.g. ``X[0,3]``."""
        if not self.shape:
            return self.name
        idx = np.unravel_index(flat, self.shape)
        return f"{self.name}[{','.join(str(int(i)) for i in idx)}]"


@dataclass(frozen=True)
class NetworkDecl:
    """A ``declare-network`` block (a 1.0 file declares one network named ``N``)."""

    name: str
    inputs: tuple[Variable, ...]
    hidden: tuple[Variable, ...]
    outputs: tuple[Variable, ...]
    equal_to: str | None = None
    isomorphic_to: str | None = None

    @property
    def variables(self) -> tuple[Variable, ...]:
        """Inputs, hidden nodes, outputs: the order the standard prints assignments in."""
        return self.inputs + self.hidden + self.outputs


@dataclass(frozen=True, eq=False)
class Atom:
    """``Σ coef[k]·v[index[k]] + const  kind  0`` (indices are global, see :class:`Variable`)."""

    index: tuple[int, ...]
    coef: tuple[float, ...]
    const: float
    kind: str
    line: int = 0

    def constant_truth(self) -> bool:
        """Truth value of an atom without variables (exact: compares the constant with 0)."""
        c = self.const
        return {GE: c >= 0, GT: c > 0, EQ: c == 0, NE: c != 0}[self.kind]

    def holds(self, values: np.ndarray) -> bool:
        """Exact-semantics check at a concrete assignment of every global index (float64 sum)."""
        v = float(np.dot(np.asarray(self.coef), values[list(self.index)])) + self.const if self.index \
            else self.const
        return {GE: v >= 0, GT: v > 0, EQ: v == 0, NE: v != 0}[self.kind]

    def holds_exactly(self, values: np.ndarray) -> bool:
        """The same check in exact rational arithmetic (every float is a rational)."""
        v = Fraction(self.const)
        for i, c in zip(self.index, self.coef):
            v += Fraction(c) * Fraction(float(values[i]))
        return {GE: v >= 0, GT: v > 0, EQ: v == 0, NE: v != 0}[self.kind]


@dataclass(frozen=True, eq=False)
class Node:
    """An ``and`` / ``or`` over children that are atom ids (int) or nodes."""

    op: str  # "and" | "or"
    children: tuple["Formula", ...]


Formula = Union[int, Node]


@dataclass(frozen=True, eq=False)
class Query:
    """A parsed query: networks, their variables (in declaration order), atoms and the formula."""

    source: str
    version: str
    networks: tuple[NetworkDecl, ...]
    atoms: tuple[Atom, ...]
    formula: Node
    meta: dict = field(default_factory=dict)

    @property
    def variables(self) -> tuple[Variable, ...]:
        return tuple(v for net in self.networks for v in net.variables)

    @property
    def n_elements(self) -> int:
        return sum(v.size for v in self.variables)

    def network(self, name: str) -> NetworkDecl:
        for net in self.networks:
            if net.name == name:
                return net
        raise KeyError(name)

    def kinds(self) -> np.ndarray:
        """Per global index: 0 input, 1 hidden, 2 output."""
        code = {INPUT: 0, HIDDEN: 1, OUTPUT: 2}
        out = np.empty(self.n_elements, dtype=np.int8)
        for v in self.variables:
            out[v.offset:v.offset + v.size] = code[v.kind]
        return out

    def owners(self) -> list[Variable]:
        """Per global index, the variable it belongs to (for messages)."""
        return [v for v in self.variables for _ in range(v.size)]

    def holds(self, values: np.ndarray, exact_inputs: bool = True) -> bool:
        """Does the formula hold at ``values`` (one value per global index)? Exact semantics:
        strict comparisons stay strict, ``≠`` is checked; atoms over inputs only are evaluated in
        exact rational arithmetic (their values are the chosen input, not a computed one)."""
        kinds = self.kinds()
        truth: dict[int, bool] = {}

        def atom(i: int) -> bool:
            if i not in truth:
                a = self.atoms[i]
                only_inputs = bool(a.index) and all(kinds[j] == 0 for j in a.index)
                truth[i] = a.holds_exactly(values) if (exact_inputs and only_inputs) else a.holds(values)
            return truth[i]

        return _evaluate(self.formula, atom)


def _evaluate(root: Node, atom) -> bool:
    """Evaluate an and/or tree without recursion (queries may nest thousands of levels)."""
    result: dict[int, bool] = {}
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        node, expanded = stack.pop()
        if not expanded:
            stack.append((node, True))
            stack.extend((c, False) for c in node.children if isinstance(c, Node))
            continue
        vals = (atom(c) if isinstance(c, int) else result[id(c)] for c in node.children)
        result[id(node)] = all(vals) if node.op == "and" else any(vals)
    return result[id(root)]


def merge_connectives(op: str, children: Sequence[Formula]) -> Node:
    """An ``op`` node whose children of the same ``op`` are inlined (one level; callers build
    bottom-up, so the result is fully flat)."""
    flat: list[Formula] = []
    for c in children:
        if isinstance(c, Node) and c.op == op:
            flat.extend(c.children)
        else:
            flat.append(c)
    return Node(op, tuple(flat))


def to_dnf(root: Node, source: str, max_disjuncts: int = MAX_DISJUNCTS) -> tuple[tuple[int, ...], list[tuple[int, ...]]]:
    """The formula as ``(facts, disjuncts)``: atom ids true in every disjunct, and per disjunct the
    remaining atom ids. Iterative (no recursion limit); raises :class:`VnnlibParseError` when the
    normal form would exceed ``max_disjuncts``."""
    if root.op == "and":
        facts = tuple(c for c in root.children if isinstance(c, int))
        rest = [c for c in root.children if isinstance(c, Node)]
    else:
        facts, rest = (), [root]
    dnf: dict[int, list[tuple[int, ...]]] = {}
    stack: list[tuple[Node, bool]] = [(n, False) for n in rest]
    while stack:
        node, expanded = stack.pop()
        if id(node) in dnf:
            continue
        if not expanded:
            stack.append((node, True))
            stack.extend((c, False) for c in node.children if isinstance(c, Node))
            continue
        if node.op == "and" and all(isinstance(c, int) for c in node.children):
            dnf[id(node)] = [node.children]  # a conjunction of atoms: one disjunct
            continue
        parts = [[(c,)] if isinstance(c, int) else dnf[id(c)] for c in node.children]
        if node.op == "or":
            out = [d for p in parts for d in p]
        else:
            out = [()]
            for p in parts:
                if len(out) * len(p) > max_disjuncts:
                    raise VnnlibParseError(source, 0, f"the formula has more than {max_disjuncts} disjuncts "
                                                      "in disjunctive normal form")
                out = [a + b for a in out for b in p]
        if len(out) > max_disjuncts:
            raise VnnlibParseError(source, 0, f"the formula has more than {max_disjuncts} disjuncts in "
                                              "disjunctive normal form")
        dnf[id(node)] = out
    disjuncts: list[tuple[int, ...]] = [()]
    for n in rest:
        part = dnf[id(n)]
        if len(disjuncts) * len(part) > max_disjuncts:
            raise VnnlibParseError(source, 0, f"the formula has more than {max_disjuncts} disjuncts in "
                                              "disjunctive normal form")
        disjuncts = [a + b for a in disjuncts for b in part]
    return facts, disjuncts


def iter_atoms(root: Node) -> Iterator[int]:
    """Every atom id in the tree (iterative)."""
    stack: list[Formula] = [root]
    while stack:
        n = stack.pop()
        if isinstance(n, int):
            yield n
        else:
            stack.extend(n.children)
