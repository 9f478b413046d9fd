"""Results files for benchmark runs: one row per instance, appended as soon as it is known.

Two formats, chosen by the file suffix: ``.csv`` (one header line, then rows) and anything else
as JSON Lines (one JSON object per line; ``.jsonl`` is the default). Rows are flushed after every
write, so a run killed at any point leaves every finished row on disk; a half-written last line
(the process died mid-write) is cut off when the file is opened again. :meth:`ResultStore.done`
gives the keys already present, which the runner skips: that is how a killed run resumes.

A row's resume key is ``(benchmark, network, input, eps, analysis, options_hash)`` with the
network's *file name*; ``options_hash`` digests everything that can change a verdict (the
registered analysis behind the column, its options, the time limit, the attack settings, the
clip range), so changing any of them and running again re-runs the instance instead of keeping
the old row. Reports read the latest row of each instance (:func:`instance_key`). Results of a
changed network file under the same name are not told apart: write those to a new file.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Iterable, Iterator

from absint.errors import AbsintError

log = logging.getLogger(__name__)

#: Columns of a results row, in CSV order.
FIELDS: tuple[str, ...] = (
    "benchmark",      # experiment name from the config (e.g. "mnist_6x100", "mnistfc")
    "network",        # network file (image experiments: file name; VNN-COMP: path as in instances.csv)
    "input",          # image index in the data set, or the vnnlib path as in instances.csv
    "eps",            # L-inf radius (image experiments), empty for VNN-LIB instances
    "analysis",       # analysis column name
    "verdict",        # verified / falsified / unknown / error
    "margin",         # proved lower bound of the worst safety margin (> 0 means verified); empty if none
    "seconds",        # wall time of this instance (batched runs: batch time / batch size); error rows too
    "cpu_seconds",    # CPU time of the worker process for this instance (all its threads; batched: / size)
    "timeout",        # time limit that applied, seconds (empty: none)
    "peak_rss_mib",   # high-water mark of the worker process RSS (getrusage ru_maxrss) after the instance
    "correct",        # image experiments: the clean image is classified correctly (1/0); empty otherwise
    "label",          # image experiments: true label
    "reason",         # why unknown / how falsified / the error
    "worker",         # "host:pid" that ran it
    "options",        # the settings behind the column: base analysis, its options, limit, attack, clip (JSON)
    "options_hash",   # short digest of ``options`` (part of the resume key)
    "domain",         # the domain that actually bounded (as the analysis reports it), if any
    "backend",        # the LP/MILP/SDP backend that actually solved, if any
    "fallbacks",      # substitutions the analysis was allowed to make and made (JSON list), if any
    "version",        # absint's version
    "commit",         # git commit of the absint checkout that ran it (empty outside a checkout)
    "counterexample", # falsified rows: the input that violates the property, flattened (JSON list)
)

KEY_FIELDS: tuple[str, ...] = ("benchmark", "network", "input", "eps", "analysis", "options_hash")
Key = tuple[str, str, str, str, str, str]
#: Columns whose values are JSON structures (a JSON string in a CSV cell).
JSON_FIELDS = ("options", "fallbacks", "counterexample")


class ResultsFileError(AbsintError):
    """A results file cannot be read or does not have the expected columns."""


def fmt_eps(eps: Any) -> str:
    """Canonical text of an eps value (so keys from CSV text and from floats compare equal)."""
    if eps is None or eps == "":
        return ""
    return repr(float(eps))


def row_key(row: dict[str, Any]) -> Key:
    """The resume key of a row: which instance, with which analysis column, under which settings."""
    return instance_key(row) + (str(row.get("options_hash") or ""),)


def instance_key(row: dict[str, Any]) -> tuple[str, str, str, str, str]:
    """Which instance with which analysis column (settings aside): reports keep the latest such row."""
    return (str(row.get("benchmark", "")), str(row.get("network", "")), str(row.get("input", "")),
            fmt_eps(row.get("eps")), str(row.get("analysis", "")))


def _num(value: Any) -> float | None:
    if value is None or value == "":
        return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def normalize_row(row: dict[str, Any]) -> dict[str, Any]:
    """Types of a row read back from CSV or JSONL: numbers as float/None, ``correct`` as bool/None."""
    out = {k: row.get(k, "") for k in FIELDS}
    for k in ("margin", "seconds", "cpu_seconds", "timeout", "peak_rss_mib"):
        out[k] = _num(out[k])
    out["eps"] = _num(out["eps"])
    c = row.get("correct", "")
    out["correct"] = None if c in ("", None) else str(c).lower() in ("1", "true", "yes")
    lab = _num(out["label"])
    out["label"] = None if lab is None else int(lab)
    for k in ("benchmark", "network", "input", "analysis", "verdict", "reason", "worker", "options_hash",
              "domain", "backend", "version", "commit"):
        out[k] = "" if out[k] is None else str(out[k])
    for k in JSON_FIELDS:
        v = out[k]
        if isinstance(v, str):
            try:
                out[k] = json.loads(v) if v else None
            except json.JSONDecodeError:
                out[k] = v
    return out


def _is_csv(path: Path) -> bool:
    return path.suffix.lower() == ".csv"


def _repair_tail(path: Path) -> None:
    """Cut a half-written last line (no trailing newline) left by a killed writer."""
    size = path.stat().st_size
    if size == 0:
        return
    with open(path, "rb+") as f:
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return
        f.seek(0)
        data = f.read()
        cut = data.rfind(b"\n") + 1
        log.warning("%s: dropping an incomplete last line (%d bytes) from an interrupted run", path, size - cut)
        f.truncate(cut)


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """All complete rows of a results file (normalised; an incomplete last line is ignored)."""
    path = Path(path)
    if not path.exists():
        raise ResultsFileError(f"{path}: no such results file")
    text = path.read_text()
    if text and not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
    rows: list[dict[str, Any]] = []
    if _is_csv(path):
        reader = csv.DictReader(io.StringIO(text))
        if reader.fieldnames is not None:
            missing = [k for k in KEY_FIELDS + ("verdict",) if k not in reader.fieldnames]
            if missing:
                raise ResultsFileError(f"{path}: not a results file (missing columns {missing})")
        rows = [normalize_row(r) for r in reader]
    else:
        for i, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(normalize_row(json.loads(line)))
            except json.JSONDecodeError as exc:
                raise ResultsFileError(f"{path}:{i}: not a JSON line ({exc})") from exc
    return rows


def read_many(paths: Iterable[str | Path]) -> list[dict[str, Any]]:
    """Rows of several results files, the latest row of each instance and analysis column (a later
    row, in the same file or a later one, replaces an earlier one of the same :func:`instance_key`)."""
    return latest_rows(r for p in paths for r in read_rows(p))


def latest_rows(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The last row of each :func:`instance_key` (a re-run with other settings replaces the old row)."""
    merged: dict[tuple[str, ...], dict[str, Any]] = {}
    for r in rows:
        key = instance_key(r)
        merged.pop(key, None)  # keep file order of the latest rows
        merged[key] = r
    return list(merged.values())


class ResultStore:
    """Append-only results file with resume support. Use as a context manager."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._fh: io.TextIOWrapper | None = None
        self._writer: Any = None

    def done(self, *, retry_errors: bool = False) -> set[Key]:
        """Keys of the rows already in the file (``retry_errors``: leave rows with verdict ``error`` out)."""
        if not self.path.exists() or self.path.stat().st_size == 0:
            return set()
        return {row_key(r) for r in read_rows(self.path) if not (retry_errors and r["verdict"] == "error")}

    def drop(self, keys: set[Key]) -> int:
        """Rewrite the file without the rows whose key is in ``keys`` (before re-running them)."""
        if not keys or not self.path.exists():
            return 0
        rows = read_rows(self.path)
        keep = [r for r in rows if row_key(r) not in keys]
        tmp = self.path.with_name(f"{self.path.stem}.tmp{self.path.suffix}")  # same suffix: same format
        tmp.unlink(missing_ok=True)
        with ResultStore(tmp) as s:
            s.write_many(keep)
        tmp.replace(self.path)
        return len(rows) - len(keep)

    def __enter__(self) -> "ResultStore":
        self.open()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fresh = not self.path.exists() or self.path.stat().st_size == 0
        if not fresh:
            _repair_tail(self.path)
            if _is_csv(self.path):
                with open(self.path, newline="") as f:
                    header = next(csv.reader(f), [])
                if tuple(header) != FIELDS:
                    raise ResultsFileError(f"{self.path}: existing CSV has columns {header}, expected {list(FIELDS)}; "
                                           "write to a new file")
        self._fh = open(self.path, "a", newline="")
        if _is_csv(self.path):
            self._writer = csv.DictWriter(self._fh, fieldnames=list(FIELDS), extrasaction="ignore")
            if fresh:
                self._writer.writeheader()
                self._fh.flush()

    def write(self, row: dict[str, Any]) -> None:
        """Append one row and flush it to the operating system."""
        if self._fh is None:
            raise ResultsFileError("ResultStore.write before open()")
        row = {k: _clean(row.get(k)) for k in FIELDS}
        if _is_csv(self.path):
            self._writer.writerow({k: _csv_cell(v) for k, v in row.items()})
        else:
            self._fh.write(json.dumps(row, allow_nan=False, default=_json_default) + "\n")
        self._fh.flush()

    def write_many(self, rows: Iterable[dict[str, Any]]) -> None:
        for r in rows:
            self.write(r)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()
            self._fh = None


def _clean(v: Any) -> Any:
    """Plain Python values; non-finite floats become None (JSON has no inf/NaN)."""
    if hasattr(v, "tolist") and not isinstance(v, (str, bytes)):
        v = v.tolist()  # numpy scalars and arrays
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _csv_cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, (list, dict, tuple)):
        return json.dumps(v, allow_nan=False, default=_json_default)
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else ""
    return str(v)


def _json_default(v: Any) -> Any:
    try:
        return v.item()  # numpy scalars
    except AttributeError:
        return str(v)


def iter_keys(rows: Iterable[dict[str, Any]]) -> Iterator[Key]:
    for r in rows:
        yield row_key(r)
