"""Shared pieces of the benchmark scripts in this folder (no absint import: workers of other
revisions and the peer's interpreter load it too).

* the ERAN suite (network, eps) of ``../shared/bench/README.md`` and ``NAME[:EPS]`` parsing;
* the machine record every measurement carries (``uptime``, load, CPU count, git revision);
* ``key=value`` option parsing for ``--opt`` / ``--grid``;
* a JSON-lines subprocess client (:class:`LineWorker`) used to run a peer verifier or another
  absint revision in its own interpreter, so their imports never mix with this process's;
* small table/statistics helpers.
"""
from __future__ import annotations

import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

log = logging.getLogger("benchlib")

ROOT = Path(__file__).resolve().parents[1]
ERAN = (ROOT / ".." / "shared" / "bench" / "eran").resolve()
RESULTS = ROOT / "benchmarks" / "results"

#: The ERAN MNIST networks and the eps of ../shared/bench/README.md (kPoly/PRIMA tables).
ERAN_SUITE: dict[str, float] = {
    "mnist_relu_6_100": 0.026,
    "mnist_relu_6_200": 0.015,
    "mnist_relu_9_100": 0.026,
    "mnist_convsmall": 0.12,
}


class BenchError(Exception):
    """A benchmark could not be set up or a worker failed (message says which and why)."""


@dataclass(frozen=True)
class NetSpec:
    """One network of a benchmark run: its ONNX path, display name and L∞ radius."""

    name: str
    path: Path
    eps: float


def parse_net(text: str, default_eps: float | None = None) -> NetSpec:
    """``NAME`` (an ERAN network, its README eps) or ``PATH.onnx:EPS`` / ``NAME:EPS``."""
    base, _, eps_text = text.partition(":") if not text.endswith(".onnx") else (text, "", "")
    if base.endswith(".onnx"):
        path = Path(base)
        name = path.stem
    else:
        name, path = base, ERAN / f"{base}.onnx"
    if eps_text:
        try:
            eps = float(eps_text)
        except ValueError:
            raise BenchError(f"{text!r}: eps after ':' must be a number") from None
    elif default_eps is not None:
        eps = default_eps
    elif name in ERAN_SUITE:
        eps = ERAN_SUITE[name]
    else:
        raise BenchError(f"{text!r}: no default eps for this network; write it as {text}:EPS")
    if not path.is_file():
        raise BenchError(f"{path}: no such network file")
    return NetSpec(name, path.resolve(), eps)


def load_npz(path: str | Path) -> tuple[Any, Any]:
    """``(images float64 [N, ...] in [0, 1], labels int64 [N])`` from an ``.npz`` data set."""
    import numpy as np

    with np.load(path) as f:
        if "images" not in f or "labels" not in f:
            raise BenchError(f"{path}: needs arrays 'images' and 'labels'")
        return np.asarray(f["images"], dtype=np.float64), np.asarray(f["labels"], dtype=np.int64)


def margin_rows(label: int, n_classes: int):
    """``C [n_classes−1, n_classes]`` with rows ``e_label − e_j`` for ``j ≠ label`` in increasing order."""
    import numpy as np

    others = [j for j in range(n_classes) if j != label]
    C = np.zeros((n_classes - 1, n_classes))
    C[:, label] = 1.0
    C[np.arange(n_classes - 1), others] = -1.0
    return C


# ---------------------------------------------------------------------------------------------
# the machine record


def uptime() -> str:
    """The output of ``uptime`` (load averages), or the load averages alone where it is missing."""
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "load average: " + ", ".join(f"{v:.2f}" for v in os.getloadavg())


def git_revision(root: Path = ROOT) -> str:
    """``git describe --always --dirty`` of ``root`` (``unknown`` outside git)."""
    try:
        out = subprocess.run(["git", "-C", str(root), "describe", "--always", "--dirty", "--abbrev=12"],
                             capture_output=True, text=True, timeout=30)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine_record() -> dict[str, Any]:
    """What a reader needs to compare two runs: host, CPUs, Python, time, uptime line."""
    return {
        "host": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version(),
        "platform": platform.platform(), "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "uptime": uptime(), "loadavg": list(os.getloadavg()),
    }


# ---------------------------------------------------------------------------------------------
# options


def parse_value(text: str) -> Any:
    """``"3"`` → 3, ``"0.5"`` → 0.5, ``true``/``false``/``none`` → bool/None, JSON lists/objects, else the string."""
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    if text[:1] in "[{":
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise BenchError(f"{text!r}: not valid JSON ({exc})") from None
    return text


def parse_options(items: Iterable[str] | None) -> dict[str, Any]:
    """``["k=3", "hull=fast"]`` → ``{"k": 3, "hull": "fast"}`` (later keys win)."""
    out: dict[str, Any] = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise BenchError(f"option {item!r}: write it as key=value")
        out[key.strip()] = parse_value(value)
    return out


def parse_grid(items: Iterable[str] | None) -> dict[str, list[Any]]:
    """``["k=1,3,4", "hull=exact,fast"]`` → ``{"k": [1, 3, 4], "hull": ["exact", "fast"]}``.

    A right-hand side that is a JSON list (``layers=[[1],[1,2]]``) gives its elements.
    """
    grid: dict[str, list[Any]] = {}
    for item in items or ():
        key, sep, rhs = item.partition("=")
        if not sep or not key.strip() or not rhs:
            raise BenchError(f"grid axis {item!r}: write it as key=v1,v2,...")
        if rhs.startswith("["):
            values = parse_value(rhs)
            if not isinstance(values, list):
                raise BenchError(f"grid axis {item!r}: expected a JSON list")
        else:
            values = [parse_value(v) for v in rhs.split(",")]
        grid[key.strip()] = values
    return grid


def options_label(opts: dict[str, Any]) -> str:
    """``k=3 hull=fast`` (stable order), ``defaults`` when empty."""
    return " ".join(f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in sorted(opts.items())) or "defaults"


# ---------------------------------------------------------------------------------------------
# statistics and tables


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def fmt(v: Any, digits: int = 3) -> str:
    if isinstance(v, float):
        if v != v:
            return "–"
        return f"{v:.{digits}g}"
    return str(v)


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def default_out(stem: str, record: bool, out: str | None, suffix: str = ".json") -> Path:
    """``--out`` if given; ``benchmarks/results/<stem><suffix>`` with ``--record``; else a temp file."""
    if out:
        return Path(out)
    if record:
        return RESULTS / f"{stem}{suffix}"
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path(tempfile.gettempdir()) / f"{stem}-{stamp}{suffix}"


def write_json(path: Path, payload: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    return repr(o)


# ---------------------------------------------------------------------------------------------
# JSON-lines workers in their own interpreter


class LineWorker:
    """A long-lived subprocess answering one JSON request per line with one JSON reply per line.

    ``argv`` is the interpreter and script; ``env`` extra environment (e.g. ``PYTHONPATH``). The
    worker's stderr goes to a temporary log whose tail is quoted when a request fails. Timing is
    done inside the worker (its own CPU clock), so the pipe costs nothing that is measured.
    """

    def __init__(self, argv: Sequence[str], *, env: dict[str, str] | None = None, cwd: str | Path | None = None,
                 name: str = "worker") -> None:
        self.name = name
        self._log = tempfile.NamedTemporaryFile(prefix=f"{name}-", suffix=".log", delete=False)
        full_env = dict(os.environ)
        # one thread for every library the worker may load, before it imports them
        full_env.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"})
        full_env.update(env or {})
        try:
            self.proc = subprocess.Popen(list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=self._log, env=full_env, cwd=cwd, text=True, bufsize=1)
        except OSError as exc:
            raise BenchError(f"{name}: cannot start {argv[0]}: {exc}") from None

    def request(self, **msg: Any) -> dict[str, Any]:
        """Send one request; return the reply, or raise :class:`BenchError` with the worker's log."""
        if self.proc.poll() is not None:
            raise BenchError(f"{self.name} exited ({self.proc.returncode}):\n{self.log_tail()}")
        try:
            assert self.proc.stdin is not None and self.proc.stdout is not None
            self.proc.stdin.write(json.dumps(msg, default=_json_default) + "\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        except (BrokenPipeError, OSError) as exc:
            raise BenchError(f"{self.name}: pipe failed ({exc}):\n{self.log_tail()}") from None
        if not line:
            self.proc.wait(timeout=30)
            raise BenchError(f"{self.name} exited ({self.proc.returncode}):\n{self.log_tail()}")
        reply = json.loads(line)
        if not reply.get("ok"):
            raise BenchError(f"{self.name}: {reply.get('error', 'failed')}\n{self.log_tail()}")
        return reply

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return Path(self._log.name).read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def begin_close(self) -> None:
        """Ask the worker to exit (end of its input) without waiting, so several can exit at once."""
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            try:
                self.proc.stdin.close()
            except OSError:
                pass

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.begin_close()
                self.proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        try:
            os.unlink(self._log.name)
        except OSError:
            pass

    def __enter__(self) -> "LineWorker":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def serve(handlers: dict[str, Any]) -> None:
    """Worker side of :class:`LineWorker`: read requests from stdin, reply on the original stdout.

    Anything a library prints to stdout is moved to stderr, so it cannot corrupt the replies.
    ``handlers[cmd](**fields)`` returns a dict merged into ``{"ok": true}``; an exception becomes
    ``{"ok": false, "error": ...}`` and the worker keeps serving.
    """
    import traceback

    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    for line in sys.stdin:
        if not line.strip():
            continue
        msg = json.loads(line)
        cmd = msg.pop("cmd", None)
        try:
            if cmd not in handlers:
                raise BenchError(f"unknown command {cmd!r}")
            reply = {"ok": True, **(handlers[cmd](**msg) or {})}
        except Exception as exc:  # noqa: BLE001 (reported to the driver, which raises)
            traceback.print_exc(file=sys.stderr)
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        proto.write(json.dumps(reply, default=_json_default) + "\n")
