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


class InvalidArgumentError(AbsintError, ValueError):
    """An argument of a public function is out of range (a count below 1, a time limit that is
    not a finite number of seconds > 0, ...); the message names the argument."""


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


class OptionError(AbsintError, TypeError, ValueError):
    """An analysis (or domain) was given an option it does not have, or a value of the wrong type
    or outside its range. The one exception type for every option mistake, raised when the
    options object is built (:mod:`absint.options`); it is also a ``TypeError`` and a
    ``ValueError`` so that callers catching either keep working."""


class PluginError(AbsintError, ValueError):
    """A registration conflicts with an existing one, or the registered object is invalid."""


class UnknownNameError(AbsintError, LookupError):
    """No domain, analysis or solver backend of that name is registered, or it cannot be loaded
    here (the message says which, and why)."""


class UnknownDomainError(UnknownNameError):
    """No usable domain of that name."""


class UnknownAnalysisError(UnknownNameError):
    """No usable analysis of that name."""


class UnknownBackendError(UnknownNameError, ValueError):
    """No solver backend of that name."""


class InvariantError(AbsintError):
    """An internal invariant does not hold (a bug in absint or in a plugin, never a user mistake);
    raised instead of ``assert`` so that it also holds under ``python -O``."""


class QueryContractError(SpecError):
    """A VNN-LIB query and its models break one of the verify command's error conditions
    (VNN-LIB 2.0, section 5.3.2): ``condition`` 1 — missing or unnecessary ONNX models for the
    declared networks; 2 — model element types differ from the declared ones; 3 — declared types
    the solver cannot analyse soundly (consent to unsound analysis is given by declaring ``real``)."""

    def __init__(self, condition: int, message: str) -> None:
        self.condition = condition
        super().__init__(message)
