"""VNN-LIB 1.0 front end: ``declare-const`` scalars ``X_i`` / ``Y_j`` and ``assert`` formulas.

The official ``vnnlib`` parser reads only VNN-LIB 2.0, so 1.0 files (every VNN-COMP benchmark so far)
go through this thin reader, which produces the same :class:`~absint.vnnlib.query.Query` as the
2.0 front end: one network ``N`` with an input tensor ``X`` of shape ``[n_in]`` and an output tensor
``Y`` of shape ``[n_out]`` (``X_i`` is ``X[i]``), element type ``real``.

Language: ``declare-const`` of ``X_i`` / ``Y_j`` ``Real``; ``assert`` of ``<= >= < > =`` between
linear terms (``+``, ``-``, ``*`` by constants, numerals); ``and`` / ``or`` nested to any depth.

Built for large files: one regular-expression pass tokenises the text, an explicit stack builds
the s-expressions and the formula (no recursion, so a 5000-deep ``(or ...)`` is fine), and the
common atoms (a variable against a number or another variable) take a short path. Errors are
:class:`~absint.errors.VnnlibParseError` naming the file and line: a binary file, unbalanced
parentheses, unknown operators, NaN or infinite numbers, non-linear terms.
"""
from __future__ import annotations

import math
import re
import time
from pathlib import Path

from absint.errors import VnnlibParseError
from absint.vnnlib.query import EQ, GE, GT, INPUT, OUTPUT, Atom, NetworkDecl, Node, Query, Variable, merge_connectives

# Comments, newlines (tokens, to count lines), parentheses and symbols.
_TOKEN = re.compile(r";[^\n]*|\n|\(|\)|[^\s();]+")
_VAR = re.compile(r"^([XY])_(\d+)$")
_COMPARISONS = {"<=", "<", ">=", ">", "="}
#: How often (in top-level forms / formula nodes) the reader looks at its deadline.
_CHECK_EVERY = 2048


class _List(list):
    """An s-expression list that remembers the line it starts on."""

    __slots__ = ("line",)


def read_text(path: str, text: str | None = None) -> str:
    """The file's text; a file that is not UTF-8 text is a :class:`VnnlibParseError`."""
    if text is not None:
        return text
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise VnnlibParseError(path, 0, f"cannot read VNN-LIB file ({exc.strerror or exc})") from exc
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise VnnlibParseError(path, line, f"not a text file (byte 0x{data[exc.start]:02x} at offset "
                                           f"{exc.start} is not UTF-8)") from None
    if "\x00" in text:
        line = text.count("\n", 0, text.index("\x00")) + 1
        raise VnnlibParseError(path, line, "not a text file (it contains NUL bytes)")
    return text


def parse_sexprs(text: str, path: str, deadline: float | None = None) -> list:
    """Top-level s-expressions: nested :class:`_List` of symbol strings (iterative)."""
    stack: list[_List] = [_List()]
    stack[0].line = 1
    line = 1
    n = 0
    for tok in _TOKEN.findall(text):
        c = tok[0]
        if c == "\n":
            line += 1
        elif c == "(":
            new = _List()
            new.line = line
            stack.append(new)
        elif c == ")":
            if len(stack) == 1:
                raise VnnlibParseError(path, line, "unbalanced ')'")
            done = stack.pop()
            stack[-1].append(done)
            if len(stack) == 1:
                n += 1
                if deadline is not None and n % _CHECK_EVERY == 0 and time.perf_counter() > deadline:
                    raise TimeoutError(f"{path}: time limit reached while parsing")
        elif c != ";":
            stack[-1].append(tok)
    if len(stack) != 1:
        raise VnnlibParseError(path, stack[-1].line, "'(' opened here is never closed")
    return stack[0]


class _Reader:
    """Turns 1.0 s-expressions into atoms and an and/or tree."""

    def __init__(self, path: str, deadline: float | None) -> None:
        self.path = path
        self.deadline = deadline
        self.declared: dict[str, tuple[str, int]] = {}
        self.index: dict[str, int] = {}
        self.atoms: list[Atom] = []
        self.numbers: dict[str, float] = {}
        self.simple: dict[tuple[str, str, str], int] = {}
        self.work = 0

    def err(self, line: int, msg: str) -> VnnlibParseError:
        return VnnlibParseError(self.path, line, msg)

    # -- declarations ---------------------------------------------------------------------
    def declare(self, e: _List) -> None:
        if len(e) == 4 and e[0] == "declare-fun" and isinstance(e[2], list) and not e[2]:  # (declare-fun X_0 () Real)
            line = e.line
            e = _List([e[0], e[1], e[3]])
            e.line = line
        if len(e) != 3 or not isinstance(e[1], str) or not isinstance(e[2], str):
            raise self.err(getattr(e, "line", 0), "expected (declare-const NAME Real)")
        name, sort = e[1], e[2]
        m = _VAR.match(name)
        if not m:
            raise self.err(e.line, f"variable names must be X_i or Y_j, found {name!r}")
        if sort != "Real":
            raise self.err(e.line, f"only Real variables are supported, {name} is {sort}")
        self.declared[name] = (m.group(1), int(m.group(2)))

    def layout(self) -> tuple[int, int]:
        n_in = 1 + max((i for k, i in self.declared.values() if k == "X"), default=-1)
        n_out = 1 + max((i for k, i in self.declared.values() if k == "Y"), default=-1)
        for name, (kind, i) in self.declared.items():
            self.index[name] = i if kind == "X" else n_in + i
        return n_in, n_out

    # -- terms -----------------------------------------------------------------------------
    def number(self, tok: str, line: int) -> float:
        v = self.numbers.get(tok)
        if v is None:
            try:
                v = float(tok)
            except ValueError:
                raise self.err(line, f"expected a number or a variable X_i / Y_j, found {tok!r}") from None
            if not math.isfinite(v):
                raise self.err(line, f"the number {tok!r} is not finite (NaN, inf, or beyond float64's range "
                                     "±1.8e308)")
            self.numbers[tok] = v
        return v

    def symbol(self, tok: str, line: int) -> dict:
        i = self.index.get(tok)
        if i is not None:
            return {i: 1.0}
        if _VAR.match(tok):
            raise self.err(line, f"variable {tok} used before declare-const")
        return {None: self.number(tok, line)}

    def term(self, e, line: int) -> dict:
        """A linear term as ``{global index: coef, None: constant}`` (iterative post-order)."""
        if isinstance(e, str):
            return self.symbol(e, line)
        results: dict[int, dict] = {}
        stack = [(e, False)]
        while stack:
            node, expanded = stack.pop()
            if not expanded:
                if not node or not isinstance(node[0], str):
                    raise self.err(node.line, "expected an arithmetic expression")
                stack.append((node, True))
                stack.extend((c, False) for c in node[1:] if not isinstance(c, str))
                continue
            args = [self.symbol(c, node.line) if isinstance(c, str) else results.pop(id(c)) for c in node[1:]]
            results[id(node)] = self._arith(node[0], args, node.line)
        return results[id(e)]

    def _arith(self, op: str, args: list[dict], line: int) -> dict:
        if not args:
            raise self.err(line, f"({op}) needs at least one operand")
        if op == "+":
            return _sum(args)
        if op == "-":
            if len(args) == 1:
                return _scale(args[0], -1.0)
            return _sum([args[0]] + [_scale(a, -1.0) for a in args[1:]])
        if op == "*":
            out = {None: 1.0}
            for a in args:
                if set(a) == {None}:
                    out = _scale(out, a[None])
                elif set(out) == {None}:
                    out = _scale(a, out[None])
                else:
                    raise self.err(line, "non-linear product of variables")
            return out
        raise self.err(line, f"unsupported arithmetic operator {op!r} (expected + - *)")

    # -- formulas --------------------------------------------------------------------------
    def comparison(self, e: _List) -> int:
        op = e[0]
        if len(e) != 3:
            raise self.err(e.line, f"({op} a b) takes exactly two operands")
        a, b = e[1], e[2]
        if isinstance(a, str) and isinstance(b, str):  # the common case: X_0 <= 0.5, Y_0 >= Y_1
            key = (op, a, b)
            cached = self.simple.get(key)
            if cached is not None:
                return cached
            self.simple[key] = self._simple(op, a, b, e.line)
            return self.simple[key]
        diff = _sum([self.term(a, e.line), _scale(self.term(b, e.line), -1.0)])  # a - b
        return self._add_atom(op, diff, e.line)

    def _simple(self, op: str, a: str, b: str, line: int) -> int:
        """``(op a b)`` for two symbols, without building term dictionaries."""
        ia, ib = self.index.get(a), self.index.get(b)
        if ia is not None and ib is not None:
            diff = {} if ia == ib else {ia: 1.0, ib: -1.0}
        elif ia is not None:
            diff = {ia: 1.0, None: -self.symbol(b, line)[None]}
        elif ib is not None:
            diff = {ib: -1.0, None: self.symbol(a, line)[None]}
        else:
            diff = {None: self.symbol(a, line)[None] - self.symbol(b, line)[None]}
        return self._add_atom(op, diff, line)

    def _add_atom(self, op: str, diff: dict, line: int) -> int:
        """Append the atom ``diff (op) 0`` (``diff`` = left - right)."""
        if op in ("<=", "<"):
            diff = _scale(diff, -1.0)
        kind = GE if op in ("<=", ">=") else GT if op in ("<", ">") else EQ
        const = diff.pop(None, 0.0) + 0.0
        items = [(i, c) for i, c in diff.items() if c != 0.0]
        self.atoms.append(Atom(tuple(i for i, _ in items), tuple(c for _, c in items), const, kind, line))
        return len(self.atoms) - 1

    def formula(self, e) -> Node | int:
        """An and/or tree over atom ids (iterative; same-kind nesting merged)."""
        if isinstance(e, str) or not e or not isinstance(e[0], str):
            raise self.err(getattr(e, "line", 0), "expected a formula like (<= a b), (and ...) or (or ...)")
        results: dict[int, Node | int] = {}
        stack = [(e, False)]
        while stack:
            node, expanded = stack.pop()
            if isinstance(node, str) or not node or not isinstance(node[0], str):
                raise self.err(getattr(node, "line", e.line), "expected a formula like (<= a b), (and ...) or (or ...)")
            op = node[0]
            if op in _COMPARISONS:
                results[id(node)] = self.comparison(node)
                continue
            if op not in ("and", "or"):
                raise self.err(node.line, f"unsupported formula operator {op!r} (expected and, or, <=, >=, <, >, =)")
            if not expanded:
                stack.append((node, True))
                stack.extend((c, False) for c in node[1:])
                self.work += 1
                if self.deadline is not None and self.work % _CHECK_EVERY == 0 and time.perf_counter() > self.deadline:
                    raise TimeoutError(f"{self.path}: time limit reached while parsing")
                continue
            results[id(node)] = merge_connectives(op, [results.pop(id(c)) for c in node[1:]])
        return results[id(e)]


def _sum(terms: list[dict]) -> dict:
    out: dict = {}
    for t in terms:
        for k, v in t.items():
            out[k] = out.get(k, 0.0) + v
    return out


def _scale(t: dict, s: float) -> dict:
    return {k: v * s for k, v in t.items()}


def read_query_v1(path: str, text: str | None = None, deadline: float | None = None) -> Query:
    """Parse a VNN-LIB 1.0 file (or ``text``) into a :class:`Query` (see the module docstring)."""
    text = read_text(path, text)
    forms = parse_sexprs(text, path, deadline)
    reader = _Reader(path, deadline)
    asserts = []
    for e in forms:
        if isinstance(e, str) or not e or not isinstance(e[0], str):
            raise VnnlibParseError(path, getattr(e, "line", 0), "expected (declare-const ...) or (assert ...)")
        head = e[0]
        if head in ("declare-const", "declare-fun"):
            reader.declare(e)
        elif head == "assert":
            if len(e) != 2:
                raise reader.err(e.line, "(assert F) takes exactly one formula")
            asserts.append(e[1])
        else:
            raise reader.err(e.line, f"unsupported command {head!r} (expected declare-const or assert)")
    n_in, n_out = reader.layout()
    if n_in == 0 or n_out == 0:
        raise VnnlibParseError(path, 0, f"declares {n_in} inputs and {n_out} outputs; need both")
    roots = [reader.formula(a) for a in asserts]
    x = Variable("X", "N", INPUT, "real", (n_in,), None, 0)
    y = Variable("Y", "N", OUTPUT, "real", (n_out,), None, n_in)
    net = NetworkDecl("N", (x,), (), (y,))
    return Query(path, "1.0", (net,), tuple(reader.atoms), merge_connectives("and", roots),
                 {"declared": set(reader.declared)})
