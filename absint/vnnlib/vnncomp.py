"""The VNN-COMP tool interface behind ``vnncomp/prepare_instance.sh`` and ``vnncomp/run_instance.sh``.

    python -m absint.vnnlib.vnncomp prepare ONNX VNNLIB
    python -m absint.vnnlib.vnncomp run ONNX VNNLIB RESULTS TIMEOUT [--category C] [--analysis A]

``run`` answers the instance with :func:`absint.vnnlib.solver.solve` (VNN-LIB 1.0 or 2.0 with one
declared network) and writes the results file: ``sat`` followed by the checked counterexample,
``unsat``, ``unknown``, ``timeout`` or ``error``. For a 1.0 property the counterexample is the
competition's s-expression ``((X_0 v) ... (Y_0 v))``; for 2.0 it is the assignment block of
VNN-LIB 2.0, section 5.3.1. The time limit counts from the start of the process (imports,
loading and reading included) and a watchdog writes ``timeout`` one second after it.
"""
from __future__ import annotations

import time

_START = time.perf_counter()

import argparse  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
from pathlib import Path  # noqa: E402

log = logging.getLogger("absint.vnncomp")

#: Section 5.3.1 words -> VNN-COMP results-file words.
WORDS = {"sat": "sat", "unsat": "unsat", "unknown": "unknown", "timed-out": "timeout"}


def _network_name(query) -> str:
    roots = [n for n in query.networks if not n.equal_to]
    if len(roots) != 1:
        from absint.errors import SpecError

        raise SpecError(f"{query.source} declares {len(roots)} networks with models of their own; a VNN-COMP instance "
                        "gives one ONNX file")
    return roots[0].name


def prepare(onnx: str, vnnlib: str) -> int:
    """Read the property and load the model (errors are reported here, before the timed run)."""
    from absint.errors import AbsintError
    from absint.vnnlib import read_query
    from absint.vnnlib.solver import bind_all, check_element_types, check_network_mapping

    try:
        query = read_query(vnnlib)
        networks = {_network_name(query): onnx}
        check_network_mapping(query, networks)
        check_element_types(query, bind_all(query, networks))
    except AbsintError as exc:
        print(f"prepare_instance: error: {exc}", file=sys.stderr)
        return 1
    return 0


def results_text(answer) -> str:
    """The results-file text for a :class:`~absint.vnnlib.solver.Answer`."""
    import numpy as np

    from absint.bench.vnncomp import format_counterexample
    from absint.vnnlib.assignments import format_assignment

    word = WORDS[answer.status]
    if word != "sat" or answer.assignment is None:
        return word + "\n"
    q = answer.query
    if q.version == "1.0":
        (x,), (y,) = [answer.assignment[v.name] for v in q.networks[0].inputs], \
            [answer.assignment[v.name] for v in q.networks[0].outputs]
        return "sat\n" + format_counterexample(np.asarray(x), np.asarray(y))
    return "sat\n" + format_assignment(q, answer.assignment)


def run(onnx: str, vnnlib: str, results: str, timeout: float, analysis: str = "bab", category: str = "") -> str:
    """Answer the instance and write ``results``; returns the word written."""
    from absint.vnnlib import read_query
    from absint.vnnlib.solver import solve

    out = Path(results)
    lock = threading.Lock()
    written: list[str] = []

    def write(text: str) -> bool:
        with lock:
            if written:
                return False
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(text)
            written.append(text.split("\n", 1)[0])
            return True

    def fire() -> None:
        if write("timeout\n"):
            sys.stderr.write(f"run_instance: time limit {timeout} s reached ({category or 'no category'})\n")
            sys.stderr.flush()
            os._exit(0)

    watchdog = threading.Timer(max(0.0, timeout + 1.0 - (time.perf_counter() - _START)), fire)
    watchdog.daemon = True
    watchdog.start()
    try:
        deadline = _START + timeout
        query = read_query(vnnlib, deadline=deadline)
        answer = solve(query, {_network_name(query): onnx}, timeout=timeout, analysis=analysis, start=_START,
                       threads=None)  # keep the thread count main() set
        text = results_text(answer)
        log.info("%s / %s: %s (%s) in %.2f s", onnx, vnnlib, answer.status, answer.reason, answer.seconds)
    except TimeoutError:
        text = "timeout\n"
    except Exception as exc:  # noqa: BLE001 - the competition reads 'error', not a traceback
        log.error("error on %s / %s: %s: %s", onnx, vnnlib, type(exc).__name__, exc)
        text = "error\n"
    finally:
        watchdog.cancel()
    write(text)
    return written[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m absint.vnnlib.vnncomp", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("onnx")
    p.add_argument("vnnlib")
    r = sub.add_parser("run")
    r.add_argument("onnx")
    r.add_argument("vnnlib")
    r.add_argument("results")
    r.add_argument("timeout", type=float)
    r.add_argument("--category", default="")
    r.add_argument("--analysis", default="bab")
    r.add_argument("--verbose", "-v", action="count", default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING - 10 * min(getattr(args, "verbose", 0), 2), stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    import torch

    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    if args.command == "prepare":
        return prepare(args.onnx, args.vnnlib)
    word = run(args.onnx, args.vnnlib, args.results, args.timeout, args.analysis, args.category)
    print(f"{word} -> {args.results}")
    return 1 if word == "error" else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
