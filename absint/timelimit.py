"""Time limits of one instance: the cooperative deadline, a hard backstop, and what was done.

An instance's limit starts when the instance starts (loading the network and parsing the
specification count). Every phase receives the same *deadline* (a :func:`time.perf_counter`
value) and stops itself when it passes: attacks between steps, domains between nodes, branch and
bound between batches, solvers through their own time limits. That is the cooperative part.

:func:`hard_limit` is the backstop for code that does not check (a long parse, a loop someone
forgot): in the main thread of a Unix process it arms ``SIGALRM`` for a moment slightly after the
deadline, and the handler raises :class:`HardTimeLimit` (a ``BaseException``, so no ``except
Exception`` in between can swallow it) in whatever Python code runs then; the ``with`` block
ends there and reports :attr:`HardLimit.fired`. Native code (a BLAS call, a solver) is only
interrupted when it returns to Python, so solvers still need their own limits. Outside the main
thread, when another ``SIGALRM`` user is active, or inside an outer :func:`hard_limit`, the
backstop does nothing (the outer one covers).

:class:`Progress` collects short notes of what an instance did ("network loaded", "PGD 250
steps", "deeppoly bounds computed") so a time-out can say how far it got.
"""
from __future__ import annotations

import contextlib
import math
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from absint.errors import InvalidArgumentError


def allowed_overshoot(limit: float) -> float:
    """How far past its limit an instance may end: ``max(1 s, 5 %)`` of the limit."""
    return max(1.0, 0.05 * limit)


class InvalidTimeLimit(InvalidArgumentError):
    """A time limit that is not a finite number of seconds > 0."""


#: limits beyond this many seconds (~31 years) mean "no limit": the clocks and timers that enforce
#: a limit overflow long before (``threading`` waits past ``time_t``: 1e11 s crashed them)
NO_LIMIT_BEYOND = 1e9


def process_started() -> float:
    """When this process started, as a :func:`time.perf_counter` value: a command line's time limit
    counts from the moment it was launched (interpreter start-up and imports included), as the harness
    that launched it counts. Linux only (``/proc``, clock-tick resolution); elsewhere, or when
    ``/proc`` cannot be read, it is "now"."""
    now = time.perf_counter()
    try:
        import os

        with open("/proc/self/stat", "rb") as f:
            stat = f.read()
        # the command name (field 2) may hold spaces and parentheses: the fields after it follow the last ')'
        start_ticks = int(stat[stat.rindex(b")") + 2:].split()[19])  # field 22, starttime, in clock ticks since boot
        with open("/proc/uptime", "rb") as f:
            uptime = float(f.read().split()[0])
        elapsed = uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return now
    # a sane age only: a suspended machine or an odd /proc must never move the start into the future
    # or make the limit look spent long ago
    return now - elapsed if 0.0 <= elapsed <= 60.0 else now


def check_limit(seconds: float | None, what: str = "timeout") -> float | None:
    """``seconds`` as a float if it is a usable time limit (finite, > 0), ``None`` for no limit
    (also for limits beyond :data:`NO_LIMIT_BEYOND`); anything else raises :class:`InvalidTimeLimit`."""
    if seconds is None:
        return None
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float, np.integer, np.floating)) \
            or not math.isfinite(seconds) or seconds <= 0:
        raise InvalidTimeLimit(f"{what} must be a finite number of seconds > 0 (or None for no limit), "
                               f"got {seconds!r}")
    return None if seconds > NO_LIMIT_BEYOND else float(seconds)


class HardTimeLimit(BaseException):
    """Raised by the ``SIGALRM`` backstop of :func:`hard_limit` (caught by that ``with`` block)."""


@dataclass
class HardLimit:
    """State of one :func:`hard_limit` block: ``fired`` once the backstop stopped the block."""

    at: float | None
    armed: bool = False
    fired: bool = False
    inside: bool = False  # the block is running (the handler raises only then)


_ACTIVE: list[HardLimit] = []


def _handler(signum, frame) -> None:  # noqa: ARG001
    if not _ACTIVE or not _ACTIVE[-1].inside:
        return  # the block has already ended (a signal that raced with its exit)
    _ACTIVE[-1].fired = True
    # If something swallows the exception anyway, fire again soon.
    signal.setitimer(signal.ITIMER_REAL, 0.25)
    raise HardTimeLimit("hard time limit reached")


def _can_arm() -> bool:
    if not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread():
        return False
    if _ACTIVE:
        return False  # an outer block covers this one
    current = signal.getsignal(signal.SIGALRM)
    if current not in (signal.SIG_DFL, signal.SIG_IGN, None):
        return False  # someone else uses SIGALRM (e.g. a test-timeout plugin)
    return signal.getitimer(signal.ITIMER_REAL)[0] == 0


@contextlib.contextmanager
def hard_limit(at: float | None) -> Iterator[HardLimit]:
    """Stop the block with :class:`HardTimeLimit` if it is still running at ``at`` (a
    ``perf_counter`` value; ``None``: no limit). The exception ends the block and is not
    re-raised; check :attr:`HardLimit.fired` afterwards."""
    state = HardLimit(at)
    if at is None or not _can_arm():
        yield state
        return
    old = signal.signal(signal.SIGALRM, _handler)
    _ACTIVE.append(state)
    state.armed = state.inside = True
    try:
        try:
            signal.setitimer(signal.ITIMER_REAL, max(at - time.perf_counter(), 1e-3))
            yield state
            state.inside = False
        except HardTimeLimit:
            state.inside = False
            state.fired = True
    finally:
        state.inside = False
        signal.setitimer(signal.ITIMER_REAL, 0)
        _ACTIVE.remove(state)
        signal.signal(signal.SIGALRM, old)


@dataclass
class Progress:
    """What one instance has done so far (short notes), its limit, and the phase running now."""

    limit: float | None = None
    start: float = field(default_factory=time.perf_counter)
    notes: list[str] = field(default_factory=list)
    phase: str = ""

    @property
    def deadline(self) -> float | None:
        return None if self.limit is None else self.start + self.limit

    @property
    def hard_deadline(self) -> float | None:
        """When the backstop fires: half the allowed overshoot after the deadline."""
        return None if self.limit is None else self.start + self.limit + 0.5 * allowed_overshoot(self.limit)

    def left(self) -> float | None:
        """Seconds until the deadline (≥ a millisecond, so a limit passes on as a valid one); None: no limit."""
        return None if self.limit is None else max(1e-3, self.start + self.limit - time.perf_counter())

    def expired(self) -> bool:
        return self.limit is not None and time.perf_counter() > self.start + self.limit

    def done(self, note: str) -> None:
        """Record a finished step (e.g. ``"network loaded"``, ``"PGD 250 steps"``)."""
        if note:
            self.notes.append(note)

    @contextlib.contextmanager
    def running(self, phase: str) -> Iterator[None]:
        """Mark ``phase`` as running. Not reset when an exception leaves the block, so after a
        hard stop :attr:`phase` still names what was interrupted."""
        before, self.phase = self.phase, phase
        yield
        self.phase = before

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def timeout_reason(self, extra: str = "", stopped: str = "", elapsed: float | None = None) -> str:
        """``"time-out after 20.3 s (limit 20 s): network loaded, PGD 250 steps, ..."`` (``elapsed``:
        the instance's own time when it shares a batch with others)."""
        took = self.elapsed() if elapsed is None else elapsed
        head = f"time-out after {took:.3g} s" + (f" (limit {self.limit:g} s)" if self.limit else "")
        parts = list(self.notes) + ([extra] if extra else [])
        if stopped:
            parts.append(f"stopped during {stopped}")
        return head + (": " + ", ".join(parts) if parts else "")
