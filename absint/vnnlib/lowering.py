"""Lowering a :class:`~absint.vnnlib.query.Query` to absint's single-input, single-output specs.

Whatever a query declares — several networks, several inputs and outputs, hidden nodes — the
analyses see one network with one flat input ``z`` and one flat output ``y``:

* ``z`` holds one entry per *free* input element. Inputs that the query equates at top level
  (``(== X[0,i] A[0,i])``, as in equivalence or monotonicity queries) share one entry, so the
  networks of a product graph read the same value; every other input element has its own.
* ``y`` concatenates, per network in declaration order, its hidden tensors and outputs (declared
  order, row-major), followed by the input elements (entries of ``z``) that some non-box
  constraint mentions.

In the lowered :class:`~absint.specs.Spec`, a constraint on a single input element becomes a
bound of the input box (exactly for coefficients ±1, otherwise rounded outward); every other
constraint — comparisons of outputs, hidden nodes, several networks, linear constraints over
inputs — becomes a row ``a·y + b ≥ 0`` of a clause. Strict comparisons are relaxed to ``≥`` and
``≠`` to true: the violation set can only grow, so ``unsat`` stays sound; a ``sat`` assignment is
checked against the exact formula (:meth:`Query.holds`).

A query whose layout is *trivial* (one network, one input, one output, no hidden node, nothing
merged or exposed) lowers to exactly the spec the network itself takes, so every VNN-LIB 1.0 file
gives the same boxes and matrices as before. :func:`build_graph` composes the networks for the
rest (see :mod:`absint.vnnlib.product`).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from absint.errors import QueryContractError, SpecError, VnnlibParseError
from absint.specs import Clause, InputBox, Instance, OutputProperty, Spec
from absint.vnnlib.query import EQ, GE, GT, NE, INPUT, Query, Variable, to_dnf

_SKIP, _FALSE, _BOUND, _ROW = 0, 1, 2, 3


@dataclass(frozen=True, eq=False)
class Segment:
    """One network copy's block of ``y``: its hidden and output variables, in declared order."""

    network: str
    variables: tuple[Variable, ...]
    start: int

    @property
    def size(self) -> int:
        return sum(v.size for v in self.variables)


@dataclass(frozen=True, eq=False)
class Layout:
    """Where every declared element lives in the lowered problem.

    ``x_src[g]`` is the entry of ``z`` that input element ``g`` (a global index) reads (-1 for
    non-inputs); ``y_pos[g]`` is the entry of ``y`` holding element ``g`` (-1 if it is not in ``y``).
    """

    n_free: int
    x_src: np.ndarray
    y_pos: np.ndarray
    segments: tuple[Segment, ...]
    exposed: np.ndarray  # entries of z appended at the end of y
    n_out: int
    trivial: bool

    def z_element_names(self, query: Query) -> list[str]:
        """A readable name per entry of ``z`` (the first input element reading it)."""
        names = [""] * self.n_free
        for v in query.variables:
            if v.kind == INPUT:
                for k in range(v.size):
                    j = int(self.x_src[v.offset + k])
                    if not names[j]:
                        names[j] = v.element(k)
        return names


@dataclass(frozen=True, eq=False)
class LoweredQuery:
    """A query as one spec over ``(z, y)``; ``spec`` is None when every disjunct is infeasible
    (the query is trivially ``unsat``)."""

    query: Query
    layout: Layout
    spec: Spec | None


# ----------------------------------------------------------------------------------------- layout
def _merge_inputs(query: Query, kinds: np.ndarray, facts: tuple[int, ...]) -> tuple[np.ndarray, set[int]]:
    """Union input elements equated by top-level facts ``x_i - x_j == 0``; returns each input
    element's root (its smallest member) and the consumed fact atom ids."""
    n = query.n_elements
    parent = np.arange(n)

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = int(parent[i])
        return i

    used: set[int] = set()
    for a_id in facts:
        a = query.atoms[a_id]
        if a.kind != EQ or len(a.index) != 2 or a.const != 0.0 or a.coef[0] != -a.coef[1] or a.coef[0] == 0:
            continue
        i, j = a.index
        if kinds[i] != 0 or kinds[j] != 0:
            continue
        ri, rj = find(i), find(j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)
        used.add(a_id)
    roots = np.array([find(i) for i in range(n)])
    return roots, used


def _layout(query: Query, kinds: np.ndarray, roots: np.ndarray, exposed_x: set[int]) -> Layout:
    n = query.n_elements
    x_src = np.full(n, -1, dtype=np.int64)
    z_of_root: dict[int, int] = {}
    for g in range(n):
        if kinds[g] == 0:
            r = int(roots[g])
            if r not in z_of_root:
                z_of_root[r] = len(z_of_root)
            x_src[g] = z_of_root[r]
    n_free = len(z_of_root)
    y_pos = np.full(n, -1, dtype=np.int64)
    segments = []
    pos = 0
    for net in query.networks:
        members = net.hidden + net.outputs
        segments.append(Segment(net.name, members, pos))
        for v in members:
            y_pos[v.offset:v.offset + v.size] = np.arange(pos, pos + v.size)
            pos += v.size
    exposed = np.array(sorted({int(x_src[g]) for g in exposed_x}), dtype=np.int64)
    n_out = pos + len(exposed)
    single = len(query.networks) == 1 and len(query.networks[0].inputs) == 1 and \
        len(query.networks[0].outputs) == 1 and not query.networks[0].hidden
    trivial = single and n_free == query.networks[0].inputs[0].size and len(exposed) == 0
    return Layout(n_free, x_src, y_pos, tuple(segments), exposed, n_out, trivial)


# ------------------------------------------------------------------------------------------ atoms
def _bound(coef: float, const: float, lower: bool) -> float:
    """``-const/coef`` rounded outward (down for a lower bound): exact when ``|coef| = 1``."""
    if coef == 1.0:
        return -const
    if coef == -1.0:
        return const
    exact = Fraction(-const) / Fraction(coef)
    v = float(exact)
    if lower and Fraction(v) > exact:
        v = math.nextafter(v, -math.inf)
    elif not lower and Fraction(v) < exact:
        v = math.nextafter(v, math.inf)
    return v


def lower_query(query: Query, deadline: float | None = None) -> LoweredQuery:
    """Lower ``query`` (see the module docstring). Needs no network: the layout follows from the
    declarations alone; :func:`absint.vnnlib.product.build_graph` builds the matching graph.
    Past ``deadline`` (a ``time.perf_counter()`` value) it raises :class:`TimeoutError`."""
    path = query.source
    kinds = query.kinds()
    facts, disjuncts = to_dnf(query.formula, path)
    roots, merged = _merge_inputs(query, kinds, facts)
    facts = tuple(a for a in facts if a not in merged)

    # Classify every atom once: skip (relaxed to true), false, a bound on one input, or a row.
    used = set(facts)
    for d in disjuncts:
        used.update(d)
    klass: dict[int, int] = {}
    exposed_x: set[int] = set()
    for a_id in used:
        a = query.atoms[a_id]
        if a.kind == NE:
            klass[a_id] = _SKIP
        elif not a.index:
            klass[a_id] = _SKIP if a.constant_truth() else _FALSE
        elif len(a.index) == 1 and kinds[a.index[0]] == 0:
            klass[a_id] = _BOUND
        else:
            klass[a_id] = _ROW
            exposed_x.update(i for i in a.index if kinds[i] == 0)
    layout = _layout(query, kinds, roots, exposed_x)
    exposed_at = {int(z): layout.n_out - len(layout.exposed) + k for k, z in enumerate(layout.exposed)}

    rows: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for a_id, k in klass.items():
        if k != _ROW:
            continue
        a = query.atoms[a_id]
        row = np.zeros(layout.n_out)
        for i, c in zip(a.index, a.coef):
            p = exposed_at[int(layout.x_src[i])] if kinds[i] == 0 else int(layout.y_pos[i])
            row[p] += c
        if a.kind == EQ:
            rows[a_id] = (np.stack([row, -row]), np.array([a.const, -a.const]))
        else:
            rows[a_id] = (row[None], np.array([a.const]))

    def apply_bounds(lo: np.ndarray, hi: np.ndarray, atom_ids) -> None:
        for a_id in atom_ids:
            a = query.atoms[a_id]
            z = int(layout.x_src[a.index[0]])
            c = a.coef[0]
            if a.kind == EQ or c > 0:
                lo[z] = max(lo[z], _bound(c, a.const, lower=True))
            if a.kind == EQ or c < 0:
                hi[z] = min(hi[z], _bound(c, a.const, lower=False))

    base_lo, base_hi = np.full(layout.n_free, -np.inf), np.full(layout.n_free, np.inf)
    if any(klass[a] == _FALSE for a in facts):
        return LoweredQuery(query, layout, None)
    apply_bounds(base_lo, base_hi, [a for a in facts if klass[a] == _BOUND])
    fact_rows = [rows[a] for a in facts if klass[a] == _ROW]

    boxes: dict[tuple[int, ...], tuple[bytes, np.ndarray, np.ndarray] | None] = {}
    groups: dict[bytes, tuple[InputBox, list[Clause]]] = {}
    order: list[bytes] = []
    names: list[str] | None = None
    for n_done, d in enumerate(disjuncts):
        if deadline is not None and n_done % 4096 == 4095 and time.perf_counter() > deadline:
            raise TimeoutError(f"{path}: time limit reached while lowering the query")
        bound_list, row_ids, false = [], [], False
        for a in d:
            k = klass[a]
            if k == _ROW:
                row_ids.append(a)
            elif k == _BOUND:
                bound_list.append(a)
            elif k == _FALSE:
                false = True
                break
        if false:
            continue
        bound_ids = tuple(bound_list)
        if bound_ids not in boxes:
            lo, hi = base_lo.copy(), base_hi.copy()
            apply_bounds(lo, hi, bound_ids)
            if not (np.isfinite(lo).all() and np.isfinite(hi).all()):
                names = names or layout.z_element_names(query)
                missing = [names[i] for i in range(layout.n_free) if not (np.isfinite(lo[i]) and np.isfinite(hi[i]))]
                raise SpecError(f"{path}: input variable(s) {missing[:5]}{' ...' if len(missing) > 5 else ''} "
                                "lack a lower or upper bound")
            boxes[bound_ids] = None if np.any(lo > hi) else (lo.tobytes() + hi.tobytes(), lo, hi)
        box = boxes[bound_ids]
        if box is None:
            continue  # an empty input region cannot host a counterexample
        key, lo, hi = box
        if key not in groups:
            groups[key] = (InputBox(lo, hi), [])
            order.append(key)
        parts = fact_rows + [rows[a] for a in row_ids]
        if len(parts) == 1:
            clause = Clause(*parts[0])
        elif parts:
            clause = Clause(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
        else:
            clause = Clause(np.zeros((1, layout.n_out)), np.zeros(1))  # always satisfied
        groups[key][1].append(clause)
    if not groups:
        return LoweredQuery(query, layout, None)
    stem, fname = Path(path).stem, Path(path).name
    instances = []
    for n, key in enumerate(order):
        box, clauses = groups[key]
        prop = OutputProperty(tuple(clauses), layout.n_out, None, fname)
        instances.append(Instance(box, prop, f"{stem}#{n}" if len(order) > 1 else stem))
    return LoweredQuery(query, layout, Spec(tuple(instances), path, {"vnnlib_version": query.version}))


#: Element types absint analyses soundly. absint's analyses are sound in real arithmetic on the
#: stored weights; they do not bound the rounding of a float32/float16 execution of the model, so
#: only ``real`` is claimed (section 4.1.6: declaring ``real`` is the user's consent to that).
SOUND_ELEMENT_TYPES = ("real",)


def check_sound_types(query: Query) -> None:
    """Error condition 3 of the verify command (VNN-LIB 2.0, section 5.3.2): a declared type absint
    cannot analyse soundly is a :class:`~absint.errors.QueryContractError`."""
    for v in query.variables:
        if v.dtype not in SOUND_ELEMENT_TYPES:
            raise QueryContractError(3, f"{query.source} declares {v.name} of network {v.network!r} as {v.dtype}; "
                                        "absint's analyses are sound in real arithmetic on the model's weights, not for "
                                        f"{v.dtype} execution. Declare every variable 'real' to consent to real-"
                                        "arithmetic analysis (VNN-LIB 2.0, sections 4.1.6 and 5.3.2)")


def spec_without_network(query: Query, deadline: float | None = None) -> Spec:
    """The spec of a query the plain network answers as it is (trivial layout), e.g. every
    VNN-LIB 1.0 file; anything that needs a composed graph is a :class:`SpecError` saying so."""
    check_sound_types(query)
    lowered = lower_query(query, deadline)
    if not lowered.layout.trivial:
        raise _needs_composition(query, lowered.layout)
    if lowered.spec is None:
        raise SpecError(f"{query.source}: the input constraints are infeasible in every disjunct (empty input region)")
    return lowered.spec


def _needs_composition(query: Query, layout: Layout) -> SpecError:
    nets = query.networks
    if len(layout.exposed) and len(nets) == 1 and len(nets[0].inputs) == 1 and len(nets[0].outputs) == 1:
        line = next((a.line for a in query.atoms if len(a.index) > 1 or
                     (a.index and query.kinds()[a.index[0]] != 0 and any(query.kinds()[i] == 0 for i in a.index))),
                    0)
        return VnnlibParseError(query.source, line, "constraints that mix inputs X and outputs Y (or relate several "
                                                    "inputs) need the network: verify this query with "
                                                    "`absint-vnnlib verify` or absint.vnnlib.solve()")
    what = []
    if len(nets) > 1:
        what.append(f"{len(nets)} networks")
    if any(len(n.inputs) > 1 or len(n.outputs) > 1 for n in nets):
        what.append("several inputs or outputs")
    if any(n.hidden for n in nets):
        what.append("hidden nodes")
    if not what:
        what.append("inputs equated with each other")
    return SpecError(f"{query.source}: this query declares {', '.join(what)}; verify it with `absint-vnnlib verify` "
                     "or absint.vnnlib.solve(), which build the product network")
