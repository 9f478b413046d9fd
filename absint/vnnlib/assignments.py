"""Satisfying assignments in the two formats of VNN-LIB 2.0, section 5.3.1.

Command-line format: every declared variable in declaration order (per network: inputs, hidden
nodes, outputs), a header ``NAME TYPE [d1,d2,...]`` with the *declared* element type and no spaces
inside the brackets, then one value per line in row-major order. Values are printed as the
shortest decimal that reads back to the same float64 (Python's ``repr``), integers without a
decimal point.

Serialised format: a folder with one ``NAME.pb`` per variable, a serialised ONNX ``TensorProto``
of the declared element type and shape (``real`` variables are written as float64).
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np

from absint.errors import AbsintError
from absint.vnnlib.query import Query, Variable

_NUMPY_TYPES = {"float16", "float32", "float64", "bool", "int8", "int16", "int32", "int64", "uint8", "uint16",
                "uint32", "uint64", "complex64", "complex128"}
_INT_TYPES = {"int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"}


def header(v: Variable) -> str:
    return f"{v.name} {v.dtype} [{','.join(str(d) for d in v.shape)}]"


def format_value(value: float, dtype: str) -> str:
    if dtype in _INT_TYPES:
        return str(int(value))
    if dtype == "bool":
        return "true" if value else "false"
    return repr(float(value))


def format_assignment(query: Query, assignment: Mapping[str, np.ndarray]) -> str:
    """The command-line assignment block (newline-terminated)."""
    lines = []
    for v in query.variables:
        lines.append(header(v))
        lines.extend(format_value(x, v.dtype) for x in np.asarray(assignment[v.name]).reshape(-1))
    return "".join(f"{line}\n" for line in lines)


def parse_assignment(text: str) -> dict[str, tuple[str, tuple[int, ...], np.ndarray]]:
    """Inverse of :func:`format_assignment`: ``{name: (type, shape, values)}`` (for tests and tools)."""
    out: dict[str, tuple[str, tuple[int, ...], np.ndarray]] = {}
    lines = [ln for ln in text.splitlines() if ln.strip()]
    i = 0
    while i < len(lines):
        name, dtype, dims = lines[i].split(" ")
        shape = tuple(int(d) for d in dims.strip("[]").split(",") if d)
        n = int(np.prod(shape)) if shape else 1
        values = np.array([float(x) for x in lines[i + 1:i + 1 + n]])
        out[name] = (dtype, shape, values.reshape(shape))
        i += 1 + n
    return out


def serialisable() -> bool:
    """Whether ``--serialise-assignments`` can be honoured here (it needs the ``onnx`` package)."""
    try:
        import onnx  # noqa: F401
    except ImportError:
        return False
    return True


def serialise_assignment(query: Query, assignment: Mapping[str, np.ndarray], folder: str | Path) -> list[Path]:
    """Write ``folder/NAME.pb`` for every declared variable; returns the paths written."""
    try:
        from onnx import numpy_helper
    except ImportError as exc:  # pragma: no cover - serialisable() is checked first
        raise AbsintError("serialising assignments needs the 'onnx' package") from exc
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise AbsintError(f"cannot create the assignment folder {folder}: {exc.strerror or exc}") from exc
    written = []
    for v in query.variables:
        np_type = np.dtype(v.dtype) if v.dtype in _NUMPY_TYPES else np.dtype(np.float64)
        tensor = numpy_helper.from_array(np.asarray(assignment[v.name]).reshape(v.shape).astype(np_type), v.name)
        path = folder / f"{v.name}.pb"
        path.write_bytes(tensor.SerializeToString())
        written.append(path)
    return written
