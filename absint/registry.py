"""The one registry of domains, solver backends and analyses: entry points, lazy discovery.

Three entry-point groups, one per kind (as xarray's backends or pytest's plugins)::

    [options.entry_points]              # setup.cfg of absint, or of any plugin package
    absint.domains =
        box = absint.domains.box:BoxDomain
    absint.solvers =
        highs = absint.solvers.highs_backend:HighsBackend
        gurobi = absint.solvers.gurobi_backend:GurobiBackend [gurobi]
    absint.analyses =
        bab = absint.bab.analysis:BabAnalysis

Built-ins register through these same groups (absint's own ``setup.cfg``); :data:`BUILTINS` repeats
them for a source tree whose package metadata is missing or older than ``setup.cfg``
(tests/test_registry.py checks that both agree). Code that is not packaged registers at run time
with :func:`register_domain`, :func:`register_solver` or :func:`register_analysis`.

Discovery is lazy: the first question about a group reads its entry points (package metadata
only, nothing is imported); a class is imported when it is first asked for by name
(:func:`get`) or when a whole group is asked for (:func:`available`). So ``import absint`` and
``absint list`` import no plugin at all.

Rules (tested in tests/test_plugins.py and tests/test_registry.py):

* The entry-point name must equal the class's ``name``; the class must subclass the group's base
  class (:class:`~absint.domains.base.Domain`, :class:`~absint.solvers.base.Backend`,
  :class:`~absint.analyses.Analysis`).
* A plugin that fails to import never crashes absint: it is recorded as ``failed`` (warned with a
  :class:`PluginWarning` naming it) and asking for it raises the group's
  :class:`~absint.errors.UnknownNameError` with the reason. A built-in whose optional dependency
  is missing is recorded as ``unavailable`` (logged at INFO). An entry point that declares extras
  (``[gurobi]``) whose distributions are not installed is ``unavailable`` without being imported.
* No silent shadowing: an entry point whose name is already taken (by a built-in, an earlier
  plugin, or — for domains and analyses, which share one namespace of analysis names — an
  analysis) is ignored with a :class:`PluginWarning`; a run-time registration of a taken name
  raises :class:`~absint.errors.PluginError` unless ``replace=True``.
* Every domain is also an analysis of the same name (:func:`absint.analyses.get_analysis` wraps it),
  unless an analysis of that name whose ``domain_class`` is that domain (a tuned preset by the
  domain's author) is registered.
* Run-time registrations reach worker processes started with ``spawn``: pass
  :func:`runtime_registrations` to the worker and call :func:`restore_registrations` there (the
  bench runner does), which re-imports each class by its import path.

This module is part of absint's ground floor: it imports nothing of absint but the errors, and
resolves base classes only from modules that are already imported (a class that subclasses
``Domain`` has necessarily imported ``absint.domains.base``).
"""
from __future__ import annotations

import ast
import copy
import importlib
import importlib.machinery
import logging
import re
import sys
import warnings
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable, TypeVar

from absint.errors import (
    PluginError,
    UnknownAnalysisError,
    UnknownBackendError,
    UnknownDomainError,
    UnknownNameError,
)

log = logging.getLogger(__name__)

__all__ = [
    "DOMAINS", "SOLVERS", "ANALYSES", "GROUPS", "BUILTINS", "Entry", "PluginError", "PluginWarning",
    "register", "unregister", "get", "available", "names", "entries", "origin", "mark_unavailable",
    "reload", "runtime_registrations", "restore_registrations", "describe",
    "register_domain", "unregister_domain", "get_domain", "available_domains", "domain_origin",
    "register_solver", "get_solver_class", "available_solvers",
    "register_analysis", "unregister_analysis", "get_analysis_class",
]

T = TypeVar("T")

DOMAINS = "absint.domains"
SOLVERS = "absint.solvers"
ANALYSES = "absint.analyses"
GROUPS = (DOMAINS, SOLVERS, ANALYSES)

#: Distribution whose entry points count as built-in.
BUILTIN_DISTRIBUTION = "absint"

#: Built-in entry points, exactly as in setup.cfg (used when absint's metadata lacks a name).
BUILTINS: dict[str, dict[str, str]] = {
    DOMAINS: {
        "box": "absint.domains.box:BoxDomain",
        "deepzono": "absint.domains.zonotope:ZonotopeDomain",
        "deeppoly": "absint.domains.deeppoly:DeepPolyDomain",
    },
    SOLVERS: {
        "highs": "absint.solvers.highs_backend:HighsBackend",
        "gurobi": "absint.solvers.gurobi_backend:GurobiBackend [gurobi]",
        "scipy": "absint.solvers.scipy_backend:ScipyBackend",
    },
    ANALYSES: {
        "alphapoly": "absint.alpha:AlphaPolyAnalysis",
        "bab": "absint.bab.analysis:BabAnalysis",
        "lp": "absint.refine.analyses:LPAnalysis",
        "milp": "absint.refine.analyses:MILPAnalysis",
        "refinezono": "absint.refine.analyses:RefineZonoAnalysis",
        "refinepoly": "absint.refine.analyses:RefinePolyAnalysis",
        "kpoly": "absint.refine.analyses:KPolyAnalysis [cdd]",
        "sdp": "absint.sdp:SDPAnalysis",
        "sdp-exact": "absint.sdp:SDPExactAnalysis [sdp]",
        "sdp-fo": "absint.sdp:SDPFOAnalysis",
    },
}

_KIND = {DOMAINS: "domain", SOLVERS: "solver backend", ANALYSES: "analysis"}
_BASE = {DOMAINS: ("absint.domains.base", "Domain"), SOLVERS: ("absint.solvers.base", "Backend"),
         ANALYSES: ("absint.analyses", "Analysis")}
_ERROR: dict[str, type[UnknownNameError]] = {DOMAINS: UnknownDomainError, SOLVERS: UnknownBackendError,
                                             ANALYSES: UnknownAnalysisError}
#: Who registers at run time (register_*()); entry points carry their distribution instead.
RUNTIME = "run time"
BUILTIN = "built-in"


class PluginWarning(UserWarning):
    """A plugin was skipped (it failed to import, is invalid, or would shadow another name)."""


@dataclass
class Entry:
    """One registered (or skipped) name of a group, with where it came from and what became of it.

    ``status``: ``declared`` (an entry point not imported yet), ``loaded``, ``failed`` (import or
    validation failed), ``unavailable`` (an optional dependency is missing), ``ignored`` (its name
    was already taken).
    """

    group: str
    name: str
    target: str  # "module:attr" (entry points) or "module:qualname" (run-time registrations)
    origin: str  # "built-in", a distribution "name version", or "run time"
    extras: tuple[str, ...] = ()
    status: str = "declared"
    reason: str = ""
    obj: Any = field(default=None, repr=False)
    dist: str = ""  # normalised distribution name ("" for run-time registrations)

    @property
    def usable(self) -> bool:
        return self.status in ("declared", "loaded")

    @property
    def builtin(self) -> bool:
        return self.origin == BUILTIN


@dataclass
class _State:
    entries: dict[str, dict[str, Entry]] = field(default_factory=lambda: {g: {} for g in GROUPS})
    skipped: list[Entry] = field(default_factory=list)
    scanned: set[str] = field(default_factory=set)
    runtime: list[tuple[str, str, str, bool]] = field(default_factory=list)  # (group, name, target, replace)


_STATE = _State()


# -- reading entry points (no imports) -------------------------------------------------------
def _entry_points(group: str) -> list[Any]:
    """Entry points of ``group`` from the installed package metadata (deduplicated)."""
    try:
        eps = list(metadata.entry_points(group=group))
    except Exception as exc:  # noqa: BLE001 - broken metadata must not break absint
        log.warning("cannot read entry points of %s: %s", group, exc)
        return []
    seen: set[tuple[str, str]] = set()
    out = []
    for ep in eps:
        if (ep.name, ep.value) not in seen:
            seen.add((ep.name, ep.value))
            out.append(ep)
    return out


def _distribution(ep: Any) -> tuple[str, str]:
    """``(normalised name, "name version")`` of the distribution that declares ``ep``."""
    dist = getattr(ep, "dist", None)
    if dist is None:
        return "", "unknown distribution"
    try:
        name = dist.metadata["Name"] or ""
        return name.lower().replace("_", "-"), f"{name} {dist.version}"
    except Exception:  # noqa: BLE001
        return "", "unknown distribution"


def _split_target(value: str) -> tuple[str, tuple[str, ...]]:
    """``"mod:attr [a, b]"`` -> ``("mod:attr", ("a", "b"))``."""
    m = re.match(r"^\s*([^\[\s]+)\s*(?:\[([^\]]*)\])?\s*$", value)
    if m is None:
        return value.strip(), ()
    extras = tuple(e.strip() for e in (m.group(2) or "").split(",") if e.strip())
    return m.group(1), extras


def _missing_extras(ep: Any, extras: tuple[str, ...]) -> list[str]:
    """Requirements of ``extras`` (of the distribution declaring ``ep``) that are not installed."""
    if not extras:
        return []
    dist = getattr(ep, "dist", None)
    if dist is None:
        try:
            dist = metadata.distribution(BUILTIN_DISTRIBUTION)
        except metadata.PackageNotFoundError:
            return []  # a bare source tree: the import decides
    missing = []
    for req in dist.requires or []:
        name, _, marker = req.partition(";")
        wanted = re.findall(r"extra\s*==\s*['\"]([^'\"]+)['\"]", marker)
        if not any(w in extras for w in wanted):
            continue
        project = re.split(r"[\s<>=!~\[(;]", name.strip(), maxsplit=1)[0]
        try:
            metadata.distribution(project)
        except metadata.PackageNotFoundError:
            missing.append(project)
    return missing


def _warn(message: str, *, builtin: bool, expected: bool = False) -> None:
    if expected:
        log.info("%s", message)
        return
    log.warning("%s", message)
    if not builtin:
        warnings.warn(message, PluginWarning, stacklevel=4)


def _taken_by(group: str, name: str) -> Entry | None:
    """The usable entry that already holds ``name`` in ``group`` (or, for domains and analyses,
    in the other of the two: they share the namespace of analysis names)."""
    own = _STATE.entries[group].get(name)
    if own is not None:
        return own
    other = {DOMAINS: ANALYSES, ANALYSES: DOMAINS}.get(group)
    if other is not None:
        return _STATE.entries[other].get(name)
    return None


def _declare(group: str, ep: Any, origin: str, dist: str) -> None:
    target, extras = _split_target(ep.value)
    entry = Entry(group, ep.name, target, origin, extras, dist=dist)
    kind = _KIND[group]
    taken = _taken_by(group, ep.name)
    if taken is not None:
        if taken.group == group and taken.target == target:
            return  # the same entry point seen twice (e.g. two metadata copies)
        same_author = taken.group != group and taken.dist and taken.dist == dist
        if not same_author:  # an analysis and a domain of one name from one package are a preset
            what = _KIND[taken.group]
            entry.status, entry.reason = "ignored", (
                f"{kind} plugin {ep.name!r} ({target}, from {origin}) ignored: the name {ep.name!r} is already "
                f"taken by the {what} from {taken.origin}")
            _STATE.skipped.append(entry)
            _warn(entry.reason, builtin=entry.builtin)
            return
    missing = _missing_extras(ep, extras)
    if missing:
        entry.status = "unavailable"
        entry.reason = (f"needs {', '.join(missing)} (pip install '{dist or BUILTIN_DISTRIBUTION}"
                        f"[{','.join(extras)}]')")
    _STATE.entries[group][ep.name] = entry


def _scan(group: str) -> None:
    """Read the entry points of ``group`` once (built-ins first, then the fallback table, then
    third-party plugins). Domains and analyses share names, so both are read together."""
    if group in _STATE.scanned:
        return
    todo = (ANALYSES, DOMAINS) if group in (ANALYSES, DOMAINS) else (group,)
    table = {g: _entry_points(g) for g in todo if g not in _STATE.scanned}
    for g in table:
        _STATE.scanned.add(g)
    third_party = []
    for g, eps in table.items():
        for ep in eps:
            dist, label = _distribution(ep)
            if dist == BUILTIN_DISTRIBUTION:
                _declare(g, ep, BUILTIN, dist)
            else:
                third_party.append((g, ep, label, dist))
        for name, value in BUILTINS[g].items():  # metadata missing or older than setup.cfg
            if name not in _STATE.entries[g]:
                _declare(g, metadata.EntryPoint(name, value, g), BUILTIN, BUILTIN_DISTRIBUTION)
    for g, ep, label, dist in third_party:
        _declare(g, ep, label, dist)


# -- loading (imports one class) -------------------------------------------------------------
def _base_class(group: str) -> type | None:
    module, attr = _BASE[group]
    mod = sys.modules.get(module)
    return getattr(mod, attr, None) if mod is not None else None


def _validate(group: str, obj: Any, name: str | None) -> str:
    """Why ``obj`` cannot be registered in ``group`` under ``name`` ("" if it can)."""
    if not isinstance(obj, type):
        return f"it names {obj!r}, not a class"
    base = _base_class(group)
    if base is None or not issubclass(obj, base):
        module, attr = _BASE[group]
        return f"{obj.__module__}.{obj.__qualname__} is not a subclass of {module}.{attr}"
    own = getattr(obj, "name", None)
    if not own or not isinstance(own, str):
        return f"{obj.__name__} must set a non-empty class attribute 'name'"
    if name is not None and own != name:
        return f"the entry-point name differs from the class's name {own!r}"
    return ""


def _load(entry: Entry) -> None:
    """Import the class of a declared entry point (once) and record the outcome."""
    if entry.status != "declared":
        return
    kind = _KIND[entry.group]
    label = f"{kind} plugin {entry.name!r} ({entry.target}, from {entry.origin})"
    module_name, _, attr = entry.target.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            if part:
                obj = getattr(obj, part)
    except ImportError as exc:
        missing = getattr(exc, "name", None) or ""
        expected = entry.builtin and bool(missing) and missing.split(".")[0] != "absint"
        entry.status = "unavailable" if expected else "failed"
        entry.reason = f"{label} cannot be imported: {exc}"
        _warn(entry.reason, builtin=entry.builtin, expected=expected)
        return
    except Exception as exc:  # noqa: BLE001 - a broken plugin must never crash absint
        entry.status, entry.reason = "failed", f"{label} failed to load: {type(exc).__name__}: {exc}"
        _warn(entry.reason, builtin=entry.builtin)
        return
    why = _validate(entry.group, obj, entry.name)
    if why:
        entry.status, entry.reason = "failed", f"{label} ignored: {why}"
        _warn(entry.reason, builtin=entry.builtin)
        return
    entry.obj, entry.status = obj, "loaded"


# -- questions --------------------------------------------------------------------------------
def _check_group(group: str) -> None:
    if group not in GROUPS:
        raise PluginError(f"unknown registry group {group!r}; groups: {', '.join(GROUPS)}")


def get(group: str, name: str) -> type:
    """The class registered as ``name`` in ``group`` (imported now if not yet).

    Raises the group's :class:`~absint.errors.UnknownNameError` subclass naming the choices, or
    saying why ``name`` cannot be used here.
    """
    _check_group(group)
    _scan(group)
    entry = _STATE.entries[group].get(name)
    if entry is not None:
        _load(entry)
        if entry.status == "loaded":
            return entry.obj
        raise _ERROR[group](f"{_KIND[group]} {name!r} is not available: {entry.reason}")
    known = ", ".join(sorted(n for n, e in _STATE.entries[group].items() if e.usable))
    raise _ERROR[group](f"unknown {_KIND[group]} {name!r}; available: {known or '(none)'}")


def has(group: str, name: str) -> bool:
    """Whether ``name`` is declared or registered in ``group`` (usable or not; imports nothing)."""
    _check_group(group)
    _scan(group)
    return name in _STATE.entries[group]


def available(group: str) -> dict[str, type]:
    """Every usable class of ``group`` by name (imports each one that is not loaded yet)."""
    _check_group(group)
    _scan(group)
    for entry in list(_STATE.entries[group].values()):
        _load(entry)
    return {n: e.obj for n, e in _STATE.entries[group].items() if e.status == "loaded"}


def names(group: str) -> list[str]:
    """Names of ``group`` that are declared or loaded (nothing is imported)."""
    _check_group(group)
    _scan(group)
    return [n for n, e in _STATE.entries[group].items() if e.usable]


def entries(group: str | None = None) -> list[Entry]:
    """Every entry (including failed, unavailable and ignored ones), for ``absint list``."""
    groups = GROUPS if group is None else (group,)
    out: list[Entry] = []
    for g in groups:
        _check_group(g)
        _scan(g)
        out += list(_STATE.entries[g].values())
    return out + [e for e in _STATE.skipped if e.group in groups]


def origin(group: str, name: str) -> str:
    """Where ``name`` came from: ``built-in``, a distribution ``"name version"``, or ``run time``."""
    _scan(group)
    entry = _STATE.entries[group].get(name)
    return entry.origin if entry is not None else ""


def mark_unavailable(group: str, name: str, reason: str) -> None:
    """Record that ``name`` exists but cannot be used here (``absint list`` and :func:`get` say why)."""
    _check_group(group)
    _scan(group)
    entry = _STATE.entries[group].get(name)
    if entry is None:
        entry = _STATE.entries[group][name] = Entry(group, name, "", RUNTIME)
    entry.status, entry.reason, entry.obj = "unavailable", reason, None


# -- run-time registration ---------------------------------------------------------------------
def register(group: str, cls: T, *, replace: bool = False) -> T:
    """Register ``cls`` under ``cls.name`` in ``group`` (usable as a decorator via the helpers below).

    Registering the same class again is a no-op. A name that is taken raises
    :class:`~absint.errors.PluginError` unless ``replace=True`` (replacing a built-in is logged).
    A domain may not take the name of an analysis (and the reverse) unless the analysis's
    ``domain_class`` is that domain.
    """
    _check_group(group)
    _scan(group)
    why = _validate(group, cls, None)
    if why:
        raise PluginError(why)
    name = cls.name  # type: ignore[attr-defined]
    kind = _KIND[group]
    current = _STATE.entries[group].get(name)
    if current is not None:
        _load(current)
    if current is not None and current.status == "loaded" and current.obj is cls:
        return cls
    if current is not None and current.usable and not replace:
        raise PluginError(f"a {kind} named {name!r} is already registered ({current.target}, {current.origin}); "
                          "pick another name or pass replace=True")
    if current is not None and current.builtin and current.usable:
        log.warning("built-in %s %r replaced by %s.%s", kind, name, cls.__module__, cls.__qualname__)
    other_group = {DOMAINS: ANALYSES, ANALYSES: DOMAINS}.get(group)
    if other_group is not None and not replace:
        other = _STATE.entries[other_group].get(name)
        if other is not None and other.usable and not _is_preset(group, cls, other):
            raise PluginError(f"the name {name!r} is already taken by the {_KIND[other_group]} from "
                              f"{other.origin}; pick another name")
    target = f"{cls.__module__}:{cls.__qualname__}"
    _STATE.entries[group][name] = Entry(group, name, target, RUNTIME, status="loaded", obj=cls)
    _STATE.runtime = [r for r in _STATE.runtime if r[:2] != (group, name)]
    _STATE.runtime.append((group, name, target, replace))
    log.debug("registered %s %r (%s)", kind, name, target)
    return cls


def _is_preset(group: str, cls: Any, other: Entry) -> bool:
    """Whether ``cls`` and the other group's ``other`` are a domain and its own tuned analysis."""
    _load(other)
    if other.status != "loaded":
        return False
    domain, analysis = (cls, other.obj) if group == DOMAINS else (other.obj, cls)
    return getattr(analysis, "domain_class", None) is domain


def unregister(group: str, name: str) -> None:
    """Remove ``name`` from ``group``; unknown names are ignored."""
    _check_group(group)
    _scan(group)
    _STATE.entries[group].pop(name, None)
    _STATE.runtime = [r for r in _STATE.runtime if r[:2] != (group, name)]


def reload() -> None:
    """Read every group's entry points again (run-time registrations are kept and re-applied)."""
    runtime = list(_STATE.runtime)
    keep = {g: {n: e for n, e in _STATE.entries[g].items() if e.origin == RUNTIME} for g in GROUPS}
    _STATE.entries = {g: {} for g in GROUPS}
    _STATE.skipped = []
    _STATE.scanned = set()
    for g in GROUPS:
        _scan(g)
        for name, entry in keep[g].items():
            if entry.status == "loaded":
                _STATE.entries[g][name] = entry
            elif entry.status == "unavailable":
                _STATE.entries[g].setdefault(name, entry)
    _STATE.runtime = runtime


def runtime_registrations() -> list[tuple[str, str, bool]]:
    """``(group, "module:qualname", replace)`` of every run-time registration, in order: what a
    worker process started with ``spawn`` needs to :func:`restore_registrations`.

    Raises :class:`~absint.errors.PluginError` naming a class that another process could not
    import (defined inside a function, or in an interactive ``__main__``).
    """
    for group, _, target, _ in _STATE.runtime:
        module, _, qual = target.partition(":")
        if "<locals>" in qual or (module == "__main__" and not getattr(sys.modules.get("__main__"), "__file__", None)):
            raise PluginError(f"the {_KIND[group]} {target} was registered at run time but cannot be imported by "
                              "a worker process; define it at the top level of an importable module")
    return [(group, target, replace) for group, _, target, replace in _STATE.runtime]


def restore_registrations(registrations: Iterable[tuple[str, str, bool]]) -> None:
    """Re-apply run-time registrations in this (worker) process by importing each class."""
    for group, target, replace in registrations:
        module, _, qual = target.partition(":")
        obj: Any = importlib.import_module("__mp_main__" if module == "__main__" and "__mp_main__" in sys.modules
                                           else module)
        for part in qual.split("."):
            obj = getattr(obj, part)
        register(group, obj, replace=replace)


def snapshot() -> _State:
    """A copy of the whole registry (tests restore it with :func:`restore`)."""
    return copy.copy(_State(entries={g: dict(v) for g, v in _STATE.entries.items()}, skipped=list(_STATE.skipped),
                            scanned=set(_STATE.scanned), runtime=list(_STATE.runtime)))


def restore(state: _State) -> None:
    """Put back a :func:`snapshot`."""
    global _STATE
    _STATE = _State(entries={g: dict(v) for g, v in state.entries.items()}, skipped=list(state.skipped),
                    scanned=set(state.scanned), runtime=list(state.runtime))


# -- descriptions without importing (for ``absint list``) ----------------------------------------
def describe(entry: Entry) -> str:
    """The class's ``description`` (or the first docstring line), read from a loaded class or
    from the module's source with :mod:`ast`, so that listing imports no plugin."""
    if entry.obj is not None:
        return str(getattr(entry.obj, "description", "") or (entry.obj.__doc__ or "").strip().split("\n")[0])
    module, _, qual = entry.target.partition(":")
    try:
        return _static_description(module, qual.split(".")[-1])
    except Exception:  # noqa: BLE001 - no description is better than a failed listing
        return ""


def _module_source(module: str) -> tuple[str, bool] | None:
    """Source text of ``module`` found without executing it (parent packages already imported
    are used as they are; others are located on the path, not imported)."""
    parts = module.split(".")
    search: list[str] | None = None
    for i in range(len(parts)):
        name = ".".join(parts[: i + 1])
        loaded = sys.modules.get(name)
        if loaded is not None and i < len(parts) - 1 and hasattr(loaded, "__path__"):
            search = list(loaded.__path__)
            continue
        spec = importlib.machinery.PathFinder.find_spec(name, search)
        if spec is None:
            return None
        if i < len(parts) - 1:
            search = list(spec.submodule_search_locations or [])
        elif spec.origin and spec.origin.endswith(".py"):
            return Path(spec.origin).read_text(encoding="utf-8"), spec.submodule_search_locations is not None
    return None


def _static_description(module: str, name: str, depth: int = 0) -> str:
    """``description`` of class ``name`` in ``module``'s source (following base classes defined in
    the same module and one ``from X import name`` re-export)."""
    found = _module_source(module) if depth <= 2 else None
    if not found:
        return ""
    source, is_package = found
    tree = ast.parse(source)
    classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}
    if name not in classes:
        for stmt in tree.body:
            if isinstance(stmt, ast.ImportFrom) and any((a.asname or a.name) == name for a in stmt.names):
                parts = module.split(".") if is_package else module.split(".")[:-1]
                base = parts[: len(parts) - stmt.level + 1] if stmt.level else []
                target = ".".join(base + ([stmt.module] if stmt.module else []))
                real = next(a.name for a in stmt.names if (a.asname or a.name) == name)
                return _static_description(target, real, depth + 1)
        return ""
    seen = set()
    while name in classes and name not in seen:
        seen.add(name)
        cls = classes[name]
        for stmt in cls.body:
            targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target] if isinstance(stmt, ast.AnnAssign) else []
            value = getattr(stmt, "value", None)
            if any(isinstance(t, ast.Name) and t.id == "description" for t in targets) and isinstance(value, ast.Constant):
                return str(value.value)
        doc = ast.get_docstring(cls)
        if doc:
            return doc.strip().split("\n")[0]
        bases = [b.id for b in cls.bases if isinstance(b, ast.Name)]
        name = bases[0] if bases else ""
    return ""


# -- per-group helpers (the names most code uses) ------------------------------------------------
def register_domain(cls: T, *, replace: bool = False) -> T:
    """Register a :class:`~absint.domains.base.Domain` subclass under ``cls.name`` (also as an analysis)."""
    return register(DOMAINS, cls, replace=replace)


def unregister_domain(name: str) -> None:
    unregister(DOMAINS, name)


def get_domain(name: str) -> type:
    """The domain class registered as ``name`` (:class:`~absint.errors.UnknownDomainError` otherwise)."""
    return get(DOMAINS, name)


def available_domains() -> dict[str, type]:
    """Every usable domain class by name (built-ins, entry-point plugins, run-time registrations)."""
    return available(DOMAINS)


def domain_origin(name: str) -> str:
    return origin(DOMAINS, name)


def register_solver(cls: T, *, replace: bool = False) -> T:
    """Register a :class:`~absint.solvers.base.Backend` subclass under ``cls.name``."""
    return register(SOLVERS, cls, replace=replace)


def get_solver_class(name: str) -> type:
    """The backend class registered as ``name`` (:class:`~absint.errors.UnknownBackendError` otherwise);
    :func:`absint.solvers.get_backend` turns it into a ready instance."""
    return get(SOLVERS, name)


def available_solvers() -> dict[str, type]:
    return available(SOLVERS)


def register_analysis(cls: T, *, replace: bool = False) -> T:
    """Register an :class:`~absint.analyses.Analysis` subclass under ``cls.name``."""
    return register(ANALYSES, cls, replace=replace)


def unregister_analysis(name: str) -> None:
    unregister(ANALYSES, name)


def get_analysis_class(name: str) -> type:
    """The analysis class registered as ``name`` (domains are wrapped by
    :func:`absint.analyses.get_analysis`, not here)."""
    return get(ANALYSES, name)
