"""VNN-LIB reader: input bounds plus a disjunction of conjunctions of linear output constraints.

Supported (the full language used by VNN-COMP benchmarks): ``declare-const`` of ``X_i`` / ``Y_j``
reals, ``assert`` of ``<=``, ``>=``, ``<``, ``>``, ``=`` between linear terms (``+``, ``-``,
``*`` by constants, numerals), nested ``and`` / ``or``. Top-level asserts are conjoined and put in
disjunctive normal form; each disjunct splits into input bounds (a box) and output constraints
(a clause). Disjuncts with the same box share an :class:`~absint.specs.Instance`.

The asserted formula describes a *counterexample* (the property holds iff it is unsatisfiable),
which is exactly how :class:`~absint.specs.OutputProperty` stores clauses. Strict and non-strict
inequalities are treated alike (the difference has measure zero for verification).
"""
from __future__ import annotations

import math

import itertools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np

from absint.errors import SpecError, VnnlibParseError
from absint.specs import Clause, InputBox, Instance, OutputProperty, Spec

_TOKEN = re.compile(r"\s*(?:(;[^\n]*)|(\()|(\))|([^\s()]+))")
_VAR = re.compile(r"^([XY])_(\d+)$")


@dataclass
class _Sym:
    text: str
    line: int


SExpr = Union[_Sym, list]


def _tokenize(text: str, path: str) -> list[_Sym]:
    tokens: list[_Sym] = []
    line = 1
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            break
        group = next(g for g in range(1, 5) if m.group(g) is not None) if m.lastindex else None
        if group is None:
            break
        tok_line = line + text.count("\n", pos, m.start(group))
        line += text.count("\n", pos, m.end())
        pos = m.end()
        if group != 1:
            tokens.append(_Sym(m.group(group), tok_line))
    return tokens


def _parse_sexprs(tokens: list[_Sym], path: str) -> list[SExpr]:
    stack: list[list] = [[]]
    opens: list[int] = []
    for tok in tokens:
        if tok.text == "(":
            stack.append([])
            opens.append(tok.line)
        elif tok.text == ")":
            if len(stack) == 1:
                raise VnnlibParseError(path, tok.line, "unbalanced ')'")
            done = stack.pop()
            opens.pop()
            stack[-1].append(done)
        else:
            stack[-1].append(tok)
    if len(stack) != 1:
        raise VnnlibParseError(path, opens[-1], "'(' opened here is never closed")
    return stack[0]


def _line(e: SExpr) -> int:
    if isinstance(e, _Sym):
        return e.line
    for x in e:
        return _line(x)
    return 0


class _Reader:
    """Turns parsed asserts into DNF atoms over X/Y variables."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.n_in = 0
        self.n_out = 0
        self.declared: set[str] = set()

    def err(self, e: SExpr, msg: str) -> VnnlibParseError:
        return VnnlibParseError(self.path, _line(e), msg)

    # A linear term is a dict {('X'|'Y', index) or 'const': coefficient}.
    def term(self, e: SExpr) -> dict:
        if isinstance(e, _Sym):
            m = _VAR.match(e.text)
            if m:
                if e.text not in self.declared:
                    raise self.err(e, f"variable {e.text} used before declare-const")
                return {(m.group(1), int(m.group(2))): 1.0}
            try:
                value = float(e.text)
            except ValueError:
                raise self.err(e, f"expected a number or a variable X_i / Y_j, found {e.text!r}") from None
            if not math.isfinite(value):
                raise self.err(e, f"the number {e.text!r} is not finite (NaN, inf, or beyond float64's range ±1.8e308)")
            return {"const": value}
        if not e or not isinstance(e[0], _Sym):
            raise self.err(e, "expected an arithmetic expression")
        op, args = e[0].text, [self.term(a) for a in e[1:]]
        if op == "+":
            return _sum(args)
        if op == "-":
            if len(args) == 1:
                return _scale(args[0], -1.0)
            return _sum([args[0]] + [_scale(a, -1.0) for a in args[1:]])
        if op == "*":
            out = {"const": 1.0}
            for a in args:
                if set(a) == {"const"}:
                    out = _scale(out, a["const"])
                elif set(out) == {"const"}:
                    out = _scale(a, out["const"])
                else:
                    raise self.err(e, "non-linear product of variables")
            return out
        raise self.err(e, f"unsupported arithmetic operator {op!r} (expected + - *)")

    def formula(self, e: SExpr) -> list[list[tuple[dict, int]]]:
        """DNF: a list of disjuncts, each a list of atoms ``(term, line)`` meaning ``term ≥ 0``."""
        if isinstance(e, _Sym) or not e or not isinstance(e[0], _Sym):
            raise self.err(e, "expected a formula like (<= a b), (and ...) or (or ...)")
        op = e[0].text
        if op == "and":
            parts = [self.formula(a) for a in e[1:]]
            return [sum(combo, []) for combo in itertools.product(*parts)]
        if op == "or":
            return [d for a in e[1:] for d in self.formula(a)]
        if op in ("<=", "<", ">=", ">", "="):
            if len(e) != 3:
                raise self.err(e, f"({op} a b) takes exactly two operands")
            a, b = self.term(e[1]), self.term(e[2])
            diff = _sum([a, _scale(b, -1.0)])  # a - b
            line = _line(e)
            if op in ("<=", "<"):
                return [[(_scale(diff, -1.0), line)]]
            if op in (">=", ">"):
                return [[(diff, line)]]
            return [[(diff, line), (_scale(diff, -1.0), line)]]
        raise self.err(e, f"unsupported formula operator {op!r} (expected and, or, <=, >=, <, >, =)")

    def declare(self, e: list) -> None:
        if len(e) != 3 or not isinstance(e[1], _Sym) or not isinstance(e[2], _Sym):
            raise self.err(e, "expected (declare-const NAME Real)")
        name, sort = e[1].text, e[2].text
        m = _VAR.match(name)
        if not m:
            raise self.err(e, f"variable names must be X_i or Y_j, found {name!r}")
        if sort != "Real":
            raise self.err(e, f"only Real variables are supported, {name} is {sort}")
        self.declared.add(name)
        idx = int(m.group(2))
        if m.group(1) == "X":
            self.n_in = max(self.n_in, idx + 1)
        else:
            self.n_out = max(self.n_out, idx + 1)


def _sum(terms: list[dict]) -> dict:
    out: dict = {}
    for t in terms:
        for k, v in t.items():
            out[k] = out.get(k, 0.0) + v
    return out


def _scale(t: dict, s: float) -> dict:
    return {k: v * s for k, v in t.items()}


def parse_vnnlib(path: str | Path, *, text: str | None = None) -> Spec:
    """Parse a VNN-LIB file into a :class:`~absint.specs.Spec`.

    Raises :class:`~absint.errors.VnnlibParseError` (file, line, what was expected) on syntax or
    language errors and :class:`~absint.errors.SpecError` for specs that are well-formed but
    unusable (unbounded or infeasible inputs, constraints mixing inputs and outputs).
    """
    path = str(path)
    if text is None:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise SpecError(f"{path}: cannot read VNN-LIB file ({exc})") from exc
        except UnicodeDecodeError as exc:
            raise SpecError(f"{path}: not a VNN-LIB text file (byte {exc.start} is not UTF-8)") from None
    reader = _Reader(path)
    disjuncts: list[list[tuple[dict, int]]] = [[]]
    for e in _parse_sexprs(_tokenize(text, path), path):
        if isinstance(e, _Sym) or not e or not isinstance(e[0], _Sym):
            raise VnnlibParseError(path, _line(e), "expected (declare-const ...) or (assert ...)")
        head = e[0].text
        if head == "declare-const":
            reader.declare(e)
        elif head == "assert":
            if len(e) != 2:
                raise reader.err(e, "(assert F) takes exactly one formula")
            dnf = reader.formula(e[1])
            disjuncts = [d + f for d in disjuncts for f in dnf]
            if len(disjuncts) > 100_000:
                raise reader.err(e, "formula has more than 100000 disjuncts in normal form")
        else:
            raise reader.err(e, f"unsupported command {head!r} (expected declare-const or assert)")
    if reader.n_in == 0 or reader.n_out == 0:
        raise SpecError(f"{path}: declares {reader.n_in} inputs and {reader.n_out} outputs; need both")
    return _to_spec(path, disjuncts, reader.n_in, reader.n_out)


def _to_spec(path: str, disjuncts: list, n_in: int, n_out: int) -> Spec:
    groups: dict[bytes, tuple[InputBox, list[Clause]]] = {}
    order: list[bytes] = []
    for atoms in disjuncts:
        lo = np.full(n_in, -np.inf)
        hi = np.full(n_in, np.inf)
        rows, consts = [], []
        for term, line in atoms:
            kinds = {k[0] for k in term if k != "const" and term[k] != 0}
            if kinds == {"X"}:
                vars_ = [k for k in term if k != "const" and term[k] != 0]
                if len(vars_) != 1:
                    raise VnnlibParseError(path, line, "only bounds on single input variables are supported "
                                                       "(general linear input constraints are not)")
                (_, i), coef = vars_[0], term[vars_[0]]
                bound = -term.get("const", 0.0) / coef  # coef*x + c >= 0
                if coef > 0:
                    lo[i] = max(lo[i], bound)
                else:
                    hi[i] = min(hi[i], bound)
            elif kinds == {"Y"}:
                row = np.zeros(n_out)
                for k, v in term.items():
                    if k != "const":
                        row[k[1]] += v
                rows.append(row)
                consts.append(term.get("const", 0.0))
            elif not kinds:
                if term.get("const", 0.0) < 0:
                    break  # a constant-false atom: this disjunct is empty
            else:
                raise VnnlibParseError(path, line, "constraints that mix inputs X and outputs Y are not supported")
        else:
            if not (np.isfinite(lo).all() and np.isfinite(hi).all()):
                missing = [i for i in range(n_in) if not (np.isfinite(lo[i]) and np.isfinite(hi[i]))]
                raise SpecError(f"{path}: input variable(s) X_{missing[:5]} lack a lower or upper bound")
            if np.any(lo > hi):
                continue  # an empty input region cannot host a counterexample
            key = lo.tobytes() + hi.tobytes()
            if key not in groups:
                groups[key] = (InputBox(lo, hi), [])
                order.append(key)
            if rows:
                groups[key][1].append(Clause(np.array(rows), np.array(consts)))
            else:
                groups[key][1].append(Clause(np.zeros((1, n_out)), np.zeros(1)))  # always satisfied
    if not groups:
        raise SpecError(f"{path}: the input constraints are infeasible in every disjunct (empty input region)")
    instances = []
    for n, key in enumerate(order):
        box, clauses = groups[key]
        prop = OutputProperty(tuple(clauses), n_out, None, Path(path).name)
        instances.append(Instance(box, prop, f"{Path(path).stem}#{n}" if len(order) > 1 else Path(path).stem))
    return Spec(tuple(instances), path)
