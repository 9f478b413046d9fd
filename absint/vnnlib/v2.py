"""VNN-LIB 2.0 front end: the official parser (PyPI ``vnnlib``, bindings to the reference C++
parser VNNLIB-CPP) read into absint's :class:`~absint.vnnlib.query.Query`.

The official parser does the syntax, scoping and typing of the standard (chapter 3); this module
walks its typed tree — networks, declarations, assertions — without recursion and turns every
comparison into a linear :class:`~absint.vnnlib.query.Atom` with the parser's own linearisation.

Guards around the C++ code: the file is checked to be UTF-8 text first (the parser would report
binary bytes as a syntax error at best), and its parenthesis nesting is measured before parsing,
because the reference parser overflows the C stack (a crash, not an exception) at a depth of a
few tens of thousands; deeper files are refused with a :class:`~absint.errors.VnnlibParseError`.
Every parser exception becomes a :class:`~absint.errors.VnnlibParseError` naming the file and line.
"""
from __future__ import annotations

import json
import math
import re
import time

import numpy as np

from absint.errors import SpecError, VnnlibParseError
from absint.vnnlib.query import EQ, GE, GT, HIDDEN, INPUT, NE, OUTPUT, Atom, NetworkDecl, Node, Query, Variable, \
    merge_connectives

#: Deepest parenthesis nesting passed to the reference parser (it crashed at 200 000 in tests and
#: needs seconds at 20 000); a query nested deeper than this is refused with a clear error.
MAX_NESTING = 10_000
_CHECK_EVERY = 2048
_COMMENT = re.compile(rb";[^\n]*")
_PARSE_ERROR = re.compile(r"line (\d+)")

#: The parser's element-type enum names -> the standard's spelling (section 4.1.6; ONNX Set 1 names).
DTYPES = {
    "Real": "real", "F16": "float16", "F32": "float32", "F64": "float64", "BF16": "bfloat16",
    "F8E4M3FN": "float8e4m3fn", "F8E5M2": "float8e5m2", "F8E4M3FNUZ": "float8e4m3fnuz",
    "F8E5M2FNUZ": "float8e5m2fnuz", "F4E2M1": "float4e2m1", "I8": "int8", "I16": "int16", "I32": "int32",
    "I64": "int64", "U8": "uint8", "U16": "uint16", "U32": "uint32", "U64": "uint64", "C64": "complex64",
    "C128": "complex128", "Bool": "bool",
}


def official_parser():
    """The ``vnnlib`` package, or a :class:`SpecError` that says how to install it."""
    try:
        import vnnlib as official
    except ImportError as exc:
        raise SpecError("reading VNN-LIB 2.0 needs the official parser: pip install 'absint[vnnlib]' "
                        f"(the 'vnnlib' package; {exc})") from exc
    return official


def nesting_depth(text: str) -> tuple[int, int]:
    """Deepest parenthesis nesting of ``text`` outside comments, and the line where it is reached."""
    data = _COMMENT.sub(b"", text.encode("utf-8"))
    arr = np.frombuffer(data, dtype=np.uint8)
    step = (arr == ord("(")).astype(np.int32) - (arr == ord(")")).astype(np.int32)
    if not len(step):
        return 0, 1
    depth = np.cumsum(step)
    at = int(np.argmax(depth))
    return int(depth[at]), data.count(b"\n", 0, at) + 1


def _explain(exc: BaseException) -> tuple[int, str]:
    """(line, message) from a parser exception: a syntax error's text or a semantic JSON report."""
    body = str(exc)
    try:
        report = json.loads(body)
    except ValueError:
        m = _PARSE_ERROR.search(body)
        return (int(m.group(1)) if m else 0), body.strip() or type(exc).__name__
    errors = report.get("errors") if isinstance(report, dict) else None
    if not errors:
        return 0, "the query failed the parser's checks"
    first = errors[0]
    text = ": ".join(str(first[k]) for k in ("message", "hint") if first.get(k))
    more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    return int(first.get("line") or 0), (text or str(first)) + more


def _declarations(q, path: str) -> tuple[tuple[NetworkDecl, ...], dict[str, Variable]]:
    nets = []
    by_name: dict[str, Variable] = {}
    offset = 0
    for net in q.networks:
        groups = []
        for kind, defs in ((INPUT, net.inputs), (HIDDEN, net.hidden), (OUTPUT, net.outputs)):
            out = []
            for d in defs:
                dtype = DTYPES.get(d.dtype.name)
                if dtype is None:
                    raise VnnlibParseError(path, 0, f"{kind} {d.name!r} of network {net.name!r} has an element type "
                                                    f"the standard does not define ({d.dtype.name})")
                onnx = d.onnx_name
                if onnx is not None and len(onnx) >= 2 and onnx[0] == onnx[-1] == '"':
                    onnx = onnx[1:-1]
                v = Variable(d.name, net.name, kind, dtype, tuple(int(s) for s in d.shape), onnx, offset)
                if any(s <= 0 for s in v.shape):
                    raise VnnlibParseError(path, 0, f"{d.name} has an empty shape {list(v.shape)}")
                offset += v.size
                by_name[v.name] = v
                out.append(v)
            groups.append(tuple(out))
        nets.append(NetworkDecl(net.name, *groups, equal_to=net.equal_to or None,
                                isomorphic_to=net.isometric_to or None))
    return tuple(nets), by_name


_KINDS = {"GreaterEqual": (GE, 1.0), "GreaterThan": (GT, 1.0), "LessEqual": (GE, -1.0), "LessThan": (GT, -1.0),
          "Equal": (EQ, 1.0), "NotEqual": (NE, 1.0)}


class _Walker:
    def __init__(self, official, path: str, variables: dict[str, Variable], deadline: float | None) -> None:
        self.official = official
        self.path = path
        self.variables = variables
        self.deadline = deadline
        self.atoms: list[Atom] = []
        self.elements: dict[tuple[str, tuple[int, ...]], int] = {}
        self.work = 0

    def element(self, name: str, idx: tuple[int, ...], line: int) -> int:
        """The global index of ``name[idx]`` (row-major within the variable)."""
        key = (name, idx)
        g = self.elements.get(key)
        if g is None:
            v = self.variables[name]
            if len(idx) != len(v.shape) or any(not 0 <= i < s for i, s in zip(idx, v.shape)):
                raise VnnlibParseError(self.path, line, f"index {list(idx)} out of range for {v.name} of "
                                                        f"shape {list(v.shape)}")
            g = v.offset + (int(np.ravel_multi_index(idx, v.shape)) if v.shape else 0)
            self.elements[key] = g
        return g

    def linear(self, expr) -> tuple[dict[int, float], float, int]:
        try:
            lin = expr.to_linear_expr()
        except self.official.VNNLibException as exc:
            raise VnnlibParseError(self.path, 0, f"{exc} (absint handles linear constraints: theories BND, OUTC, "
                                                 "LIN)") from None
        coefs: dict[int, float] = {}
        line = 0
        for t in lin.terms:
            var = t.var
            g = self.element(var.name, tuple(var.indices), var.line)
            coefs[g] = coefs.get(g, 0.0) + float(t.coeff)
            line = line or var.line
        return coefs, float(lin.constant), line

    def side(self, expr) -> tuple[dict[int, float], float, int]:
        """A comparison operand: a variable element or a literal directly (the common case,
        a few binding calls), anything else through the parser's linearisation."""
        official = self.official
        if isinstance(expr, official.Var):
            return {self.element(expr.name, tuple(expr.indices), expr.line): 1.0}, 0.0, expr.line
        if isinstance(expr, (official.Float, official.Int)):
            return {}, float(expr.value), expr.line
        return self.linear(expr)

    def atom(self, cmp) -> int:
        kind, sign = _KINDS[type(cmp).__name__]
        a, ca, la = self.side(cmp.lhs)
        b, cb, lb = self.side(cmp.rhs)
        coefs = dict(a)
        for g, c in b.items():
            coefs[g] = coefs.get(g, 0.0) - c
        items = [(g, sign * c) for g, c in coefs.items() if c != 0.0]
        const = sign * (ca - cb)
        line = la or lb
        if not all(math.isfinite(c) for _, c in items) or not math.isfinite(const):
            raise VnnlibParseError(self.path, line, "a constant is not finite")
        self.atoms.append(Atom(tuple(g for g, _ in items), tuple(c for _, c in items), const + 0.0, kind, line))
        return len(self.atoms) - 1


def read_query_v2(path: str, text: str, deadline: float | None = None) -> Query:
    """Parse VNN-LIB 2.0 ``text`` (the contents of ``path``) with the official parser."""
    depth, line = nesting_depth(text)
    if depth > MAX_NESTING:
        raise VnnlibParseError(path, line, f"formulas nest {depth} levels deep; absint reads VNN-LIB 2.0 nested at "
                                           f"most {MAX_NESTING} levels (the reference parser would crash)")
    official = official_parser()
    try:
        q = official.parse_query_string(text)
    except Exception as exc:  # noqa: BLE001 - VNNLibException, and std::out_of_range for huge literals
        line, msg = _explain(exc)
        if not isinstance(exc, official.VNNLibException):
            msg = f"the parser failed ({type(exc).__name__}: {msg}); a numeric literal may be out of range"
        raise VnnlibParseError(path, line, msg) from None
    if q is None:
        raise VnnlibParseError(path, 0, "the parser returned nothing")
    if deadline is not None and time.perf_counter() > deadline:
        raise TimeoutError(f"{path}: time limit reached while parsing")
    networks, variables = _declarations(q, path)
    walker = _Walker(official, path, variables, deadline)
    roots = [_formula(walker, a.expr) for a in q.assertions]
    return Query(path, "2.0", networks, tuple(walker.atoms), merge_connectives("and", roots))


def _formula(walker: _Walker, root) -> Node | int:
    """Post-order walk of one assertion's boolean tree into atoms and merged and/or nodes."""
    official = walker.official
    if isinstance(root, official.Comparison):
        return walker.atom(root)
    # Each frame: (connective, its children, built results so far).
    frames: list[tuple[str, tuple, list]] = []

    def open_frame(node) -> None:
        if not isinstance(node, official.Connective):
            raise VnnlibParseError(walker.path, 0, f"unexpected formula {type(node).__name__}")
        op = "and" if isinstance(node, official.And) else "or"
        frames.append((op, node.args, []))
        walker.work += 1
        if walker.deadline is not None and walker.work % _CHECK_EVERY == 0 and time.perf_counter() > walker.deadline:
            raise TimeoutError(f"{walker.path}: time limit reached while reading the query")

    open_frame(root)
    while True:
        op, children, built = frames[-1]
        if len(built) == len(children):
            frames.pop()
            node = merge_connectives(op, built)
            if not frames:
                return node
            frames[-1][2].append(node)
            continue
        child = children[len(built)]
        if isinstance(child, official.Comparison):
            built.append(walker.atom(child))
        else:
            open_frame(child)
