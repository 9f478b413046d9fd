"""Checked argument types for the command lines (``absint``, its subcommands, benchmark scripts).

Each function takes the argument's text and returns its value or raises
:class:`argparse.ArgumentTypeError` with a message that says what is allowed; argparse adds the
option's name. :class:`Parser` turns every usage error into :class:`UsageError` (one line, exit
code 2 in :func:`absint.cli.main`) instead of printing the usage block and calling ``sys.exit``.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import NoReturn

from absint.errors import AbsintError


class UsageError(AbsintError):
    """A command-line argument is missing, malformed or out of range; the message is the whole
    line to print (``"absint verify: error: argument --count/-n: must be at least 1 ..."``)."""


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are :class:`UsageError` (no usage dump, no ``sys.exit``)."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: error: {message} (see {self.prog} --help)")


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def seconds(text: str) -> float:
    """A time limit: a finite number of seconds > 0."""
    x = _number(text)
    if not math.isfinite(x) or x <= 0:
        raise argparse.ArgumentTypeError(f"a time limit must be a finite number of seconds > 0, got {text!r}")
    return x


def nonneg_seconds(text: str) -> float:
    """A time budget that may be 0 (e.g. extra attack seconds)."""
    x = _number(text)
    if not math.isfinite(x) or x < 0:
        raise argparse.ArgumentTypeError(f"expected a finite number of seconds ≥ 0, got {text!r}")
    return x


def radius(text: str) -> float:
    """An L∞ radius: a finite number ≥ 0."""
    x = _number(text)
    if not math.isfinite(x) or x < 0:
        raise argparse.ArgumentTypeError(f"eps must be a finite number ≥ 0, got {text!r}")
    return x


def finite(text: str) -> float:
    x = _number(text)
    if not math.isfinite(x):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return x


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


def positive_int(text: str) -> int:
    """A count ≥ 1."""
    n = _integer(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text!r}")
    return n


def nonneg_int(text: str) -> int:
    """An index ≥ 0."""
    n = _integer(text)
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text!r}")
    return n


def existing_file(text: str) -> Path:
    """A path to a file that exists and can be read."""
    p = Path(text).expanduser()
    if not p.exists():
        raise argparse.ArgumentTypeError(f"{text}: no such file")
    if p.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: is a folder, not a file")
    try:
        with open(p, "rb"):
            pass
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"{text}: cannot be read ({exc.strerror})") from None
    return p


def output_file(text: str) -> Path:
    """A path a result can be written to: its folder exists (checked before any work is done)."""
    p = Path(text).expanduser()
    if p.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: is a folder; give a file name")
    if not p.parent.exists():
        raise argparse.ArgumentTypeError(f"{text}: folder {p.parent} does not exist")
    return p


def device(text: str) -> str:
    """A torch device that exists here (``cpu``, ``cuda``, ``cuda:1``, ...)."""
    import torch

    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"unknown torch device {text!r} (use cpu, cuda or cuda:N)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"device {text!r}: CUDA is not available on this machine")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise argparse.ArgumentTypeError(f"device {text!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return text


def check_range(lo: float, hi: float, option: str, prog: str = "absint") -> None:
    """``lo < hi`` for a ``--clip LO HI`` style pair."""
    if not lo < hi:
        raise UsageError(f"{prog}: error: argument {option}: LO must be below HI, got {lo:g} {hi:g}")
