"""Typed errors raised by absint.

Every user-facing failure (bad model, bad spec, unsupported op, solver trouble) is one of these,
so callers can catch ``AbsintError`` and report a clear message instead of a stack trace.
"""
from __future__ import annotations


class AbsintError(Exception):
    """Base class of all errors raised by absint."""


class ModelError(AbsintError):
    """The network file is malformed, inconsistent, or contains invalid weights (NaN/inf)."""


class UnsupportedOpError(ModelError):
    """The network contains operations absint cannot analyse.

    ``unsupported`` lists every offending ``(node_name, op_type, reason)`` at once, so the user
    sees the whole problem in one go rather than one op per run.
    """

    def __init__(self, unsupported: list[tuple[str, str, str]], source: str = "model") -> None:
        self.unsupported = list(unsupported)
        lines = [f"  - node {name!r}: {op} ({why})" for name, op, why in self.unsupported]
        ops = sorted({op for _, op, _ in self.unsupported})
        super().__init__(
            f"{source}: {len(self.unsupported)} unsupported node(s), op types {ops}:\n"
            + "\n".join(lines)
        )


class SpecError(AbsintError):
    """A specification is malformed, infeasible, or does not match the network's shapes."""


class VnnlibParseError(SpecError):
    """A VNN-LIB file could not be parsed; the message names the file, line and expectation."""

    def __init__(self, path: str, line: int, message: str) -> None:
        self.path, self.line = path, line
        super().__init__(f"{path}:{line}: {message}")


class DomainError(AbsintError):
    """A domain cannot handle an op or was used inconsistently."""


class SolverError(AbsintError):
    """A solver backend failed in a way that could not be turned into a status."""
