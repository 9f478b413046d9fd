"""Typed options objects: one frozen dataclass per analysis (or domain), validated when built.

Every analysis takes exactly one options object; keyword arguments are sugar over it::

    BabAnalysis(BabOptions(split="input"))   # the object
    BabAnalysis(split="input")                # the same, built from keywords
    get_analysis("bab", split="input")        # the same, by name

A misspelt option name, a value of the wrong type or a value outside its range raises
:class:`~absint.errors.OptionError` (one type for every option mistake) at construction, never
later in the middle of a run. Subclasses of :class:`Options` get the type checks from their
annotations for free; range checks go in :meth:`Options.check`.

The type check understands ``bool``, ``int``, ``float`` (an ``int`` is accepted), ``str``,
``None``, unions (``X | None``), ``Literal[...]``, ``tuple[...]``/``list[...]``/``dict[...]`` (the
container type only), classes (``isinstance``) and ``Any`` (no check).
"""
from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from typing import Any, ClassVar, Literal, TypeVar, Union

from absint.errors import OptionError

__all__ = ["Options", "NoAnalysisOptions", "build_options", "check_types", "check_conventional_ranges"]

O = TypeVar("O", bound="Options")

_HINTS: dict[type, dict[str, Any]] = {}


@dataclasses.dataclass(frozen=True)
class Options:
    """Base of options objects (subclass it as a ``@dataclass(frozen=True)``).

    ``__post_init__`` checks every field against its annotation, then calls :meth:`check`
    (override it for ranges and relations between fields; raise :class:`OptionError`).
    """

    #: Keyword names accepted besides the fields (handled by :meth:`from_keywords`).
    extra_keywords: ClassVar[frozenset[str]] = frozenset()

    def __post_init__(self) -> None:
        check_types(self)
        check_conventional_ranges(self)
        self.check()

    def check(self) -> None:
        """Range checks of subclasses (raise :class:`OptionError`); the default checks nothing."""

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_keywords(cls: type[O], base: O | None, keywords: dict[str, Any], *, owner: str = "") -> O:
        """``base`` (default: ``cls()``) with the fields in ``keywords`` replaced.

        Subclasses that accept shortcut keywords (declared in :attr:`extra_keywords`) override this
        and translate them into fields.
        """
        base = cls() if base is None else base
        unknown = sorted(set(keywords) - set(cls.field_names()))
        if unknown:
            raise OptionError(_unknown_message(cls, unknown, owner))
        return dataclasses.replace(base, **keywords) if keywords else base


@dataclasses.dataclass(frozen=True)
class NoAnalysisOptions(Options):
    """Options of an analysis that has none."""


def _unknown_message(cls: type, unknown: list[str], owner: str) -> str:
    who = f"analysis {owner!r}" if owner else cls.__name__
    known = sorted(set(cls.field_names()) | set(getattr(cls, "extra_keywords", ())))  # type: ignore[attr-defined]
    return (f"{who} does not take the option(s) {', '.join(unknown)}; "
            f"its options are: {', '.join(known) if known else '(none)'}")


def build_options(cls: type[O], options: Any = None, keywords: dict[str, Any] | None = None, *,
                  owner: str = "", base: O | None = None) -> O:
    """The options object for a constructor call ``Analysis(options, **keywords)``.

    ``options`` must be an instance of ``cls`` (or ``None``: ``base``, else ``cls()``); keywords
    replace its fields. Every mistake raises :class:`OptionError` naming the option.
    """
    if options is not None and not isinstance(options, cls):
        who = f"analysis {owner!r}" if owner else "this analysis"
        raise OptionError(f"{who} takes options of type {cls.__name__}, not {type(options).__name__}")
    start = options if options is not None else base
    try:
        return cls.from_keywords(start, dict(keywords or {}), owner=owner)
    except OptionError:
        raise
    except TypeError as exc:  # e.g. a dataclass that is not an Options subclass
        raise OptionError(f"{owner or cls.__name__}: {exc}") from exc


def _hints(cls: type) -> dict[str, Any]:
    hints = _HINTS.get(cls)
    if hints is None:
        try:
            hints = typing.get_type_hints(cls)
        except Exception:  # noqa: BLE001 - an unresolvable annotation is simply not checked
            hints = {}
        _HINTS[cls] = hints
    return hints


def check_types(obj: Any) -> None:
    """Raise :class:`OptionError` if a field of the dataclass ``obj`` does not match its annotation.

    A float field given an ``int`` is converted to ``float`` in place (``timeout=5`` is fine).
    """
    hints = _hints(type(obj))
    for f in dataclasses.fields(obj):
        if f.name not in hints:
            continue
        value = getattr(obj, f.name)
        hint = hints[f.name]
        if not _matches(value, hint):
            raise OptionError(f"{type(obj).__name__}.{f.name}: expected {_describe(hint)}, "
                              f"got {value!r} ({type(value).__name__})")
        if hint is float and isinstance(value, int) and not isinstance(value, bool):
            object.__setattr__(obj, f.name, float(value))


#: the most worker processes an option may ask for (each is a process: 10**6 is a fork bomb)
MAX_WORKERS = max(64, 4 * (os.cpu_count() or 1))


def check_conventional_ranges(obj: Any) -> None:
    """Ranges every options class shares by its field names (before its own :meth:`Options.check`):
    no float is NaN; iteration counts (``*iters``) and ``seed`` are ≥ 0; ``workers`` and integer
    ``max_*`` caps are ≥ 1; learning rates (``lr*``) and float ``max_*`` caps are finite and > 0.
    Values outside them once reached the analyses and failed there (a numpy traceback, a stage
    that failed with ``range() arg 3 must not be zero``, NaN slopes)."""
    for f in dataclasses.fields(obj):
        v, name = getattr(obj, f.name), f.name
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        where = f"{type(obj).__name__}.{name}"
        if isinstance(v, float) and math.isnan(v):
            raise OptionError(f"{where}: expected a number, got NaN")
        if isinstance(v, int) and (name.endswith("iters") or name == "seed") and v < 0:
            raise OptionError(f"{where}: expected a whole number ≥ 0, got {v!r}")
        if isinstance(v, int) and (name == "workers" or name.startswith("max_")) and v < 1:
            raise OptionError(f"{where}: expected a whole number ≥ 1, got {v!r}")
        if name == "workers" and isinstance(v, int) and v > MAX_WORKERS:
            raise OptionError(f"{where}: at most {MAX_WORKERS} worker processes, got {v!r}")
        if isinstance(v, float) and (name.startswith("lr") or name.startswith("max_")) \
                and not (math.isfinite(v) and v > 0):
            raise OptionError(f"{where}: expected a finite number > 0, got {v!r}")


def _matches(value: Any, hint: Any) -> bool:
    if hint is Any or hint is object:
        return True
    if hint is None or hint is type(None):
        return value is None
    origin = typing.get_origin(hint)
    if origin is Union or origin is types.UnionType:
        return any(_matches(value, h) for h in typing.get_args(hint))
    if origin is Literal:
        return any(value == a and type(value) is type(a) for a in typing.get_args(hint))
    if origin is ClassVar:
        return True
    if origin is not None:  # tuple[int, ...], list[str], dict[str, Any], Callable[...], ...
        base = origin if isinstance(origin, type) else None
        if base is None:
            return True
        if base in (tuple, list) and isinstance(value, (tuple, list)):
            return True  # a list where a tuple is declared (TOML gives lists) is fine
        return isinstance(value, base)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True  # TypeVars, strings that did not resolve, ...: not checked


def _describe(hint: Any) -> str:
    if hint is None or hint is type(None):
        return "None"
    origin = typing.get_origin(hint)
    if origin is Union or origin is types.UnionType:
        return " or ".join(_describe(h) for h in typing.get_args(hint))
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(hint))
    if isinstance(hint, type):
        return hint.__name__
    return str(hint)
