"""VNN-COMP single-instance runner and result-file format.

The competition calls ``run_instance.sh v1 CATEGORY ONNX VNNLIB RESULTS TIMEOUT`` and reads the
results file. Two formats exist:

* 2021 (``--format 2021``): one word, ``holds`` / ``violated`` / ``timeout`` / ``error`` /
  ``unknown``;
* 2022 onwards (``--format 2022``, the default): ``unsat`` (= holds) / ``sat`` (= violated) /
  ``timeout`` / ``error`` / ``unknown``, and after ``sat`` the counterexample as an
  s-expression of input and output assignments in VNN-LIB variable order::

      sat
      ((X_0 0.1)
       (X_1 0.2)
       (Y_0 -1.5)
       (Y_1 3.0))

For the 2021 format the counterexample goes to ``RESULTS.counterexample`` in the same notation
(the 2021 rules had no place for it in the results file).
"""
from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

import numpy as np

from absint.results import Result, Verdict

log = logging.getLogger(__name__)

#: Our verdict -> competition word, per format.
_WORDS = {
    "2021": {"verified": "holds", "falsified": "violated"},
    "2022": {"verified": "unsat", "falsified": "sat"},
}
#: Competition words (any year) -> truth.csv vocabulary.
TO_TRUTH = {"holds": "unsat", "unsat": "unsat", "violated": "sat", "sat": "sat", "timeout": "timeout",
            "unknown": "unknown", "error": "error"}


def is_timeout(result: Result) -> bool:
    return result.verdict is Verdict.UNKNOWN and result.reason.startswith("time-out")


def result_word(result: Result | None, fmt: str = "2022") -> str:
    """The competition word for ``result`` (``None`` means the run failed: ``error``)."""
    if result is None:
        return "error"
    if result.verdict is Verdict.UNKNOWN:
        return "timeout" if is_timeout(result) else "unknown"
    return _WORDS[fmt][str(result.verdict)]


def format_counterexample(x: np.ndarray, y: np.ndarray) -> str:
    """``((X_0 v) (X_1 v) ... (Y_0 v) ...)``, one assignment a line, values at full float64 precision."""
    xs = np.asarray(x, dtype=np.float64).reshape(-1)  # C order = VNN-LIB / ONNX flattening
    ys = np.asarray(y, dtype=np.float64).reshape(-1)
    items = [f"(X_{i} {float(v)!r})" for i, v in enumerate(xs)] + [f"(Y_{j} {float(v)!r})" for j, v in enumerate(ys)]
    return "(" + "\n ".join(items) + ")\n"


def parse_counterexample(text: str) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`format_counterexample` (accepts any whitespace layout)."""
    import re

    pairs = re.findall(r"\(\s*([XY])_(\d+)\s+([^\s()]+)\s*\)", text)
    xs = {int(i): float(v) for k, i, v in pairs if k == "X"}
    ys = {int(i): float(v) for k, i, v in pairs if k == "Y"}
    return (np.array([xs[i] for i in range(len(xs))]), np.array([ys[i] for i in range(len(ys))]))


def write_result(path: str | Path, result: Result | None, fmt: str = "2022") -> str:
    """Write the competition results file for ``result``; returns the word written."""
    if fmt not in _WORDS:
        raise ValueError(f"unknown VNN-COMP result format {fmt!r} (2021 or 2022)")
    path = Path(path)
    word = result_word(result, fmt)
    text = word + "\n"
    cex = None
    if result is not None and result.falsified and result.counterexample is not None:
        y = result.counterexample_output if result.counterexample_output is not None else np.empty(0)
        cex = format_counterexample(result.counterexample, y)
    if cex is not None and fmt == "2022":
        text += cex
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    if cex is not None and fmt == "2021":
        Path(str(path) + ".counterexample").write_text(cex)
    return word


def run_instance(onnx: str | Path, vnnlib: str | Path, out: str | Path, *, timeout: float | None,
                 analysis: str = "deeppoly", fmt: str = "2022", attack: bool = True,
                 attack_budget: float | None = None, hard_exit: bool = False) -> tuple[str, Result | None, float]:
    """Verify one instance and write its results file: ``(word, result or None on error, seconds)``.

    The time limit covers loading the network and parsing the property too (as in the
    competition): :func:`absint.verify.verify` starts its clock before either. ``hard_exit``
    (the ``absint vnncomp`` command): should anything still run at the limit plus the allowed
    overshoot (a phase in native code that no deadline reaches, e.g. a parser or a solver), a
    watchdog thread writes ``timeout`` and ends the process.
    """
    from absint.timelimit import allowed_overshoot, check_limit
    from absint.verify import verify

    t0 = time.perf_counter()
    timeout = check_limit(timeout)
    written = threading.Event()
    lock = threading.Lock()
    if hard_exit and timeout is not None:
        _watchdog(out, fmt, t0 + timeout + 0.9 * allowed_overshoot(timeout), lock, written)
    result: Result | None = None
    try:
        kw = {} if attack_budget is None else {"attack_budget": attack_budget}
        result = verify(onnx, vnnlib, analysis=analysis, timeout=timeout, attack=attack, threads=None,
                        **kw)  # the runner set its thread count
    except Exception as exc:  # noqa: BLE001 - the competition wants 'error', not a traceback
        log.error("error on %s / %s: %s: %s", onnx, vnnlib, type(exc).__name__, exc)
        result = None
    with lock:
        word = write_result(out, result, fmt)
        written.set()
    return word, result, time.perf_counter() - t0


def _watchdog(out: str | Path, fmt: str, at: float, lock: threading.Lock, written: threading.Event) -> None:
    """At ``at`` (``perf_counter``), unless the result is written: write ``timeout`` and exit the process."""

    def fire() -> None:
        if not written.wait(max(0.0, at - time.perf_counter())):
            with lock:
                if not written.is_set():
                    write_result(out, Result(Path(out).stem, Verdict.UNKNOWN, "", 0.0, reason="time-out (watchdog)"),
                                 fmt)
                    log.error("time limit: stopped by the watchdog; wrote 'timeout' to %s", out)
                    import sys

                    sys.stdout.flush()
                    sys.stderr.flush()
                    os._exit(0)

    threading.Thread(target=fire, name="absint-vnncomp-watchdog", daemon=True).start()
