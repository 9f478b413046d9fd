"""VNN-LIB queries: 1.0 and 2.0 read into one internal form, lowered to absint's specs.

* :func:`read_query` — a file of either version as a :class:`~absint.vnnlib.query.Query`
  (2.0 through the official ``vnnlib`` parser, 1.0 through :mod:`absint.vnnlib.v1`).
* :func:`parse_vnnlib` — the :class:`~absint.specs.Spec` of a query that a plain network answers
  (one network, one input, one output: every VNN-COMP 1.0 file), as ``absint verify`` takes it.
* :func:`absint.vnnlib.solver.solve` — any query against its ONNX models: several inputs and
  outputs, hidden nodes, several networks (a product graph), with a checked assignment for ``sat``.

Every reading failure is a :class:`~absint.errors.VnnlibParseError` naming the file and line.
"""
from __future__ import annotations

import re
import time
from pathlib import Path

from absint.specs import Spec
from absint.vnnlib.query import Query

_FIRST_FORM = re.compile(r"(?:\s|;[^\n]*)*\(\s*([^\s()]+)")


def query_version(text: str) -> str:
    """``"2.0"`` for a file whose first form is ``vnnlib-version`` or ``declare-network``, else ``"1.0"``."""
    m = _FIRST_FORM.match(text)
    return "2.0" if m and m.group(1) in ("vnnlib-version", "declare-network") else "1.0"


def read_query(path: str | Path, *, text: str | None = None, deadline: float | None = None) -> Query:
    """Read a VNN-LIB 1.0 or 2.0 query. ``deadline`` (a ``time.perf_counter()`` value) makes a
    long read raise :class:`TimeoutError`."""
    from absint.vnnlib.v1 import read_query_v1, read_text

    path = str(path)
    text = read_text(path, text)
    if query_version(text) == "2.0":
        from absint.vnnlib.v2 import read_query_v2

        return read_query_v2(path, text, deadline)
    return read_query_v1(path, text, deadline)


def parse_vnnlib(path: str | Path, *, text: str | None = None, deadline: float | None = None) -> Spec:
    """Parse a VNN-LIB file into the :class:`~absint.specs.Spec` its single network takes.

    Raises :class:`~absint.errors.VnnlibParseError` (file, line, what was expected) on syntax or
    language errors and :class:`~absint.errors.SpecError` for specs that are well-formed but
    unusable here (unbounded or infeasible inputs, or a query that needs a product network:
    several networks, inputs or outputs, hidden nodes — use :func:`absint.vnnlib.solver.solve`).
    """
    from absint.vnnlib.lowering import spec_without_network

    t0 = time.perf_counter()
    query = read_query(path, text=text, deadline=deadline)
    spec = spec_without_network(query, deadline)
    spec.meta["parse_seconds"] = time.perf_counter() - t0
    return spec


__all__ = ["Query", "parse_vnnlib", "query_version", "read_query"]
