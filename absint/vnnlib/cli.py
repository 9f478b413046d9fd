"""``absint-vnnlib``: the solver command line of VNN-LIB 2.0, chapter 5.

    absint-vnnlib --name | --version
    absint-vnnlib verify <query> [--network <name>=<onnx>]... [--timeout <seconds>]
                         [--serialise-assignments <folder>] [--analysis NAME] [--no-attack] [-v]
    absint-vnnlib supports <capability>        (also spelt ``capabilities``, as section 5.1 does)

``verify`` prints one line — ``sat``, ``unsat``, ``unknown`` or ``timed-out`` — and after ``sat``
the checked assignment of every declared variable (section 5.3.1), or writes it to the folder of
``--serialise-assignments``. Everything else (logs, warnings, errors) goes to stderr.

Exit codes (the standard defines none): 0 when an answer was printed, 2 for every error of the
caller's input — usage, an unreadable or invalid query or model, the three error conditions of
section 5.3.2 — and 1 for an internal failure. ``--timeout`` covers reading the query and loading
the models too; a watchdog answers ``timed-out`` one second after the limit whatever is running.
``--analysis`` and ``--no-attack`` are absint's own optional arguments (section 5.3 allows them).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
import time
from typing import Any, NoReturn, Sequence

from absint.timelimit import NO_LIMIT_BEYOND

PROGRAM = "absint-vnnlib"
NAME = "absint (abstract-interpretation verifier of neural networks)"
EXIT_ANSWER, EXIT_INTERNAL, EXIT_ERROR = 0, 1, 2
#: Seconds past ``--timeout`` after which the watchdog answers ``timed-out`` regardless.
WATCHDOG_GRACE = 1.0
DEFAULT_ANALYSIS = "bab"

log = logging.getLogger(PROGRAM)


class _UsageParser(argparse.ArgumentParser):
    """No abbreviations (the standard spells every option exactly); usage errors exit 2."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_ERROR, f"{self.prog}: error: {message}\n")


class _Stdout:
    """Writes the answer exactly once, as bytes (no platform newline translation); the watchdog
    and the main thread race for it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.done = False

    def write(self, text: str) -> bool:
        with self.lock:
            if self.done:
                return False
            self.done = True
            sys.stdout.flush()
            sys.stdout.buffer.write(text.encode("utf-8"))
            sys.stdout.buffer.flush()
            return True

    def close(self) -> bool:
        """Claim the output without writing (an error goes to stderr instead)."""
        with self.lock:
            was = self.done
            self.done = True
            return not was


def capabilities() -> dict[str, str]:
    """Every ``supports`` answer, as the exact stdout text (section 5.4)."""
    from absint.frontends.onnx_loader import OPSET_RANGE, supported_operators
    from absint.vnnlib.assignments import serialisable
    from absint.vnnlib.solver import SOUND_ELEMENT_TYPES

    def lines(items: Sequence[str]) -> str:
        return "".join(f"{x}\n" for x in items)

    return {
        "--onnx-opset-versions": lines([str(OPSET_RANGE[0]), str(OPSET_RANGE[1])]),
        "--onnx-element-types": lines(SOUND_ELEMENT_TYPES),
        # Bare names: each operator for every element type listed above (section 5.4.1).
        "--onnx-operators": lines(supported_operators()),
        "--vnnlib-versions": lines(["1.0", "2.0"]),
        "--hidden-node-theories": lines(["NH", "H"]),
        "--multiple-input-output-theories": lines(["SIO", "MIO"]),
        "--multiple-network-theories": lines(["SNET", "MENET", "MINET", "MNET"]),
        "--multiple-node-comparison-theories": lines(["SNC", "MNC"]),
        # Linear constraints over inputs, hidden nodes and outputs; products of variables are refused.
        "--arithmetic-complexity-theories": lines(["BND", "OUTC", "LIN"]),
        # Disjunctions are expanded to disjunctive normal form (shared input boxes grouped).
        "--optimised-disjunctive-reasoning": "false\n",
        "--serialise-assignments": "true\n" if serialisable() else "false\n",
        "--unsat-proofs": "false\n",
    }


CAPABILITY_FLAGS = ("--onnx-opset-versions", "--onnx-element-types", "--onnx-operators", "--vnnlib-versions",
                    "--hidden-node-theories", "--multiple-input-output-theories", "--multiple-network-theories",
                    "--multiple-node-comparison-theories", "--arithmetic-complexity-theories",
                    "--optimised-disjunctive-reasoning", "--serialise-assignments", "--unsat-proofs")
#: Section 5.4.2's example spells this flag with an extra 's'; both spellings are accepted.
CAPABILITY_ALIASES = {"--multiple-inputs-output-theories": "--multiple-input-output-theories"}


def build_parser() -> argparse.ArgumentParser:
    parser = _UsageParser(prog=PROGRAM, description="absint as a VNN-LIB 2.0 solver (standard, chapter 5).")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--name", action="store_true", help="print the solver's full name")
    group.add_argument("--version", action="store_true", help="print the solver's version")
    commands = parser.add_subparsers(dest="command", metavar="<command>")
    verify = commands.add_parser("verify", help="answer a VNN-LIB query (section 5.3)")
    verify.add_argument("query", metavar="<filepath>", help="the VNN-LIB query (version 1.0 or 2.0)")
    verify.add_argument("--network", metavar="<name>=<filepath>", action="append", default=[],
                        help="the ONNX model of a declared network (once per network not declared equal-to another)")
    verify.add_argument("--timeout", metavar="<seconds>", type=int, default=None,
                        help="whole seconds for everything: reading, loading, analysis")
    verify.add_argument("--serialise-assignments", "--assignments", metavar="<folder>", default=None,
                        dest="serialise_assignments",
                        help="write a sat assignment as ONNX TensorProto files NAME.pb into this folder "
                             "(--assignments: the spelling of the standard's usage block)")
    verify.add_argument("--analysis", default=DEFAULT_ANALYSIS,
                        help=f"absint analysis to run (default {DEFAULT_ANALYSIS}; see `absint list`)")
    verify.add_argument("--no-attack", action="store_true", help="skip the PGD counterexample search")
    verify.add_argument("--verbose", "-v", action="count", default=0, help="log progress on stderr")
    for command in ("supports", "capabilities"):
        sub = commands.add_parser(command, help="report one capability (section 5.4)" if command == "supports"
                                  else argparse.SUPPRESS)
        flags = sub.add_mutually_exclusive_group()
        for flag in CAPABILITY_FLAGS:
            flags.add_argument(flag, dest="capability", action="store_const", const=flag)
        for alias, flag in CAPABILITY_ALIASES.items():
            flags.add_argument(alias, dest="capability", action="store_const", const=flag, help=argparse.SUPPRESS)
    return parser


def _networks(tokens: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for token in tokens:
        name, sep, path = token.partition("=")
        if not sep or not name or not path:
            raise _Usage(f"--network takes <name>=<filepath>; {token!r} is not a name and a path separated by '='")
        if name in out:
            raise _Usage(f"--network maps {name!r} more than once")
        out[name] = path
    return out


class _Usage(Exception):
    """A usage mistake found after argparse (exit 2)."""


def main(argv: Sequence[str] | None = None, *, start: float | None = None) -> int:
    """Run one command. ``start`` (a :func:`time.perf_counter` value) is when ``--timeout`` starts to
    count; default: now. The console script passes the moment the process started."""
    start = time.perf_counter() if start is None else start
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is not None and (args.name or args.version):
        print(f"{PROGRAM}: --name and --version cannot be combined with a command", file=sys.stderr)
        return EXIT_ERROR
    if args.name:
        return _print(f"{NAME}\n")
    if args.version:
        from absint import __version__

        return _print(f"{__version__}\n")
    if args.command is None:
        parser.print_usage(sys.stderr)
        print(f"{PROGRAM}: error: give --name, --version, or a command (verify, supports)", file=sys.stderr)
        return EXIT_ERROR
    if args.command in ("supports", "capabilities"):
        if args.capability is None:
            print(f"{PROGRAM}: error: {args.command} needs exactly one capability: {', '.join(CAPABILITY_FLAGS)}",
                  file=sys.stderr)
            return EXIT_ERROR
        return _print(capabilities()[args.capability])
    return _verify(args, start)


def _print(text: str) -> int:
    sys.stdout.flush()
    sys.stdout.buffer.write(text.encode("utf-8"))
    sys.stdout.buffer.flush()
    return EXIT_ANSWER


def _verify(args: argparse.Namespace, start: float) -> int:
    logging.basicConfig(level=logging.WARNING - 10 * min(args.verbose, 2), stream=sys.stderr,
                        format=f"{PROGRAM}: %(levelname)s %(name)s: %(message)s")
    try:
        if not args.query:
            raise _Usage("the <filepath> argument must not be empty: verify needs the path to a query file")
        networks = _networks(args.network)
        if args.timeout is not None and args.timeout < 0:
            raise _Usage(f"--timeout must be zero or more whole seconds, not {args.timeout}")
    except _Usage as exc:
        print(f"{PROGRAM}: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    out = _Stdout()
    watchdog = None
    if args.timeout is not None and args.timeout <= NO_LIMIT_BEYOND:  # beyond: no limit (time_t overflows)
        def fire() -> None:
            if out.write("timed-out\n"):
                sys.stderr.write(f"{PROGRAM}: the time limit ({args.timeout} s) passed; stopped\n")
                sys.stderr.flush()
                os._exit(EXIT_ANSWER)

        delay = max(0.0, args.timeout + WATCHDOG_GRACE - (time.perf_counter() - start))
        watchdog = threading.Timer(delay, fire)
        watchdog.daemon = True
        watchdog.start()
    try:
        return _answer(args, networks, start, out)
    except Exception as exc:  # noqa: BLE001 - the one place that turns failures into messages
        from absint.errors import AbsintError

        if not out.close():
            return EXIT_ANSWER  # the watchdog answered already
        if isinstance(exc, AbsintError):
            print(f"{PROGRAM}: error: {exc}", file=sys.stderr)
            return EXIT_ERROR
        log.debug("internal failure", exc_info=True)
        print(f"{PROGRAM}: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_INTERNAL
    finally:
        if watchdog is not None:
            watchdog.cancel()


def _answer(args: argparse.Namespace, networks: dict[str, str], start: float, out: _Stdout) -> int:
    import torch

    from absint.vnnlib.assignments import format_assignment, serialisable, serialise_assignment
    from absint.vnnlib.solver import SAT, solve

    torch.set_num_threads(1)
    answer = solve(args.query, networks, timeout=args.timeout, analysis=args.analysis, attack=not args.no_attack,
                   start=start)
    log.info("%s: %s (%s) in %.2f s %s", args.query, answer.status, answer.reason, answer.seconds,
             {k: round(v, 3) for k, v in answer.timings.items()})
    text = f"{answer.status}\n"
    if answer.status == SAT and answer.assignment is not None and answer.query is not None:
        if args.serialise_assignments is not None and serialisable():
            serialise_assignment(answer.query, answer.assignment, args.serialise_assignments)
        else:
            text += format_assignment(answer.query, answer.assignment)
    out.write(text)
    return EXIT_ANSWER


def run() -> None:
    """Console-script entry point: the time limit counts from the process's start."""
    from absint.timelimit import process_started

    sys.exit(main(start=process_started()))


if __name__ == "__main__":  # pragma: no cover
    run()
