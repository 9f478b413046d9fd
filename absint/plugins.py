"""Discovery and registration of domains, analyses and solver backends.

Built-ins register through the same entry-point groups a third party uses (as xarray's backends
do), so there is one code path for both:

* ``absint.domains`` — ``name = package.module:DomainClass`` (a :class:`~absint.domains.base.Domain`
  subclass whose ``name`` equals the entry-point name). Each domain also becomes an analysis of
  the same name (propagate with the domain, then bound the property), so ``absint verify -a
  NAME`` works at once.
* ``absint.solvers`` — ``name = package.module:BackendClass`` (a :class:`absint.solvers.base.Backend`
  subclass). Loaded lazily (on :func:`available_solvers`), since importing a backend may import
  a heavy solver library.

For code that is not packaged (a notebook, a research script), :func:`register_domain` does the
same at run time.

Rules (tested in tests/test_plugins.py):

* Domain plugins are discovered when :mod:`absint` is imported. The built-in entry points load
  first; :func:`_register_builtins` then imports the built-ins directly, which fills in any that
  the package metadata lacks (running from a source tree without ``pip install``, or metadata
  older than ``setup.cfg``); third-party entry points load last.
* A plugin that fails to import never crashes absint: it is skipped with a
  :class:`PluginWarning` naming it (and a log record), and its name is recorded with
  :func:`~absint.analyses.mark_unavailable`, so ``absint list`` and ``get_analysis`` say why.
  A built-in whose optional dependency is missing is recorded the same way (logged at INFO).
* No silent shadowing: an entry point whose name is already taken (by a built-in or an earlier
  plugin) is ignored with a :class:`PluginWarning`; :func:`register_domain` with a taken name
  raises :class:`PluginError` unless ``replace=True`` is passed explicitly.
* Plugin modules must not read attributes of the ``absint`` package at import time (they are
  imported while ``absint`` itself is being imported); import the submodules they need
  (``from absint.domains.base import Domain``, ``from absint.linear import LinearOperator``).
"""
from __future__ import annotations

import contextlib
import logging
import sys
import warnings
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Iterator

from absint.analyses import (
    _ANALYSES,
    _UNAVAILABLE,
    domain_analysis,
    mark_unavailable,
    register_analysis,
)
from absint.errors import AbsintError
from absint.domains.base import Domain

log = logging.getLogger(__name__)

DOMAIN_GROUP = "absint.domains"
SOLVER_GROUP = "absint.solvers"
#: Distribution whose entry points count as built-in.
BUILTIN_DISTRIBUTION = "absint"
#: Built-in solver backends (fallback when the package metadata lacks the entry points).
_BUILTIN_SOLVERS = {
    "highs": "absint.solvers.highs_backend:HighsBackend",
    "gurobi": "absint.solvers.gurobi_backend:GurobiBackend",
    "scipy": "absint.solvers.scipy_backend:ScipyBackend",
}


class PluginError(AbsintError, ValueError):
    """A registration conflicts with an existing one, or the registered object is invalid."""


class PluginWarning(UserWarning):
    """A plugin was skipped (it failed to import, is invalid, or would shadow another name)."""


@dataclass(frozen=True)
class PluginInfo:
    """What happened to one entry point or registration (shown by ``absint list``)."""

    name: str
    group: str  # "absint.domains" / "absint.solvers"
    target: str  # "module:attr" or the class's qualified name
    origin: str  # "built-in", a distribution "name version", or "register_domain()"
    status: str  # "loaded", "failed", "ignored", "unavailable"
    reason: str = ""


_DOMAINS: dict[str, type[Domain]] = {}
_DOMAIN_ORIGINS: dict[str, str] = {}
_DEFAULT_ANALYSES: dict[str, Any] = {}  # name -> the DomainAnalysis class register_domain made
_SOLVERS: dict[str, type] = {}
_SOLVER_ORIGINS: dict[str, str] = {}
_INFOS: dict[tuple[str, str], PluginInfo] = {}
_ORIGIN = "register_domain()"  # who is registering right now (see _origin)
_LOADED = False
_SOLVERS_LOADED = False


@contextlib.contextmanager
def _origin(origin: str) -> Iterator[None]:
    global _ORIGIN
    previous, _ORIGIN = _ORIGIN, origin
    try:
        yield
    finally:
        _ORIGIN = previous


def _is_builtin_origin(origin: str) -> bool:
    return origin == "built-in"


# -- domains ---------------------------------------------------------------------------------
def register_domain(cls: type[Domain], *, replace: bool = False) -> type[Domain]:
    """Register a domain class under ``cls.name`` (usable as a decorator).

    The domain also becomes an analysis of the same name (unless an analysis of that name was
    registered separately, e.g. a tuned preset by the domain's author), so
    ``absint.verify(net, spec, analysis=cls.name)`` works at once. Registering the same class
    again is a no-op. A name taken by another domain or analysis raises :class:`PluginError`
    unless ``replace=True`` (replacing a built-in is logged as a warning).
    """
    if not (isinstance(cls, type) and issubclass(cls, Domain)):
        raise PluginError(f"{cls!r} is not a subclass of absint.domains.base.Domain")
    name = cls.name
    if not name or not isinstance(name, str):
        raise PluginError(f"{cls.__name__} must set a non-empty class attribute 'name'")
    current = _DOMAINS.get(name)
    if current is cls:
        return cls
    if current is not None:
        if not replace:
            raise PluginError(
                f"a domain named {name!r} is already registered ({current.__module__}.{current.__qualname__}, "
                f"{_DOMAIN_ORIGINS.get(name, '?')}); pick another name or pass replace=True")
        if _is_builtin_origin(_DOMAIN_ORIGINS.get(name, "")):
            log.warning("built-in domain %r replaced by %s.%s", name, cls.__module__, cls.__qualname__)
    elif name in _ANALYSES and not replace:
        # Fine if that analysis is this domain's own (e.g. a tuned preset registered first).
        own = getattr(_ANALYSES[name], "domain_class", None) is cls or _is_builtin_origin(_ORIGIN)
        if not own:
            raise PluginError(f"the name {name!r} is already taken by an analysis; pick another domain name")
    _DOMAINS[name] = cls
    _DOMAIN_ORIGINS[name] = _ORIGIN
    _UNAVAILABLE.pop(name, None)
    if name not in _ANALYSES or _ANALYSES[name] is _DEFAULT_ANALYSES.get(name) or replace:
        analysis = domain_analysis(cls)
        register_analysis(name, analysis, replace=True)
        _DEFAULT_ANALYSES[name] = analysis
    _INFOS[(DOMAIN_GROUP, name)] = PluginInfo(name, DOMAIN_GROUP, f"{cls.__module__}:{cls.__qualname__}",
                                              _ORIGIN, "loaded")
    log.debug("registered domain %r (%s.%s, %s)", name, cls.__module__, cls.__qualname__, _ORIGIN)
    return cls


def unregister_domain(name: str) -> None:
    """Remove a domain (and the analysis it created) from the registry; unknown names are ignored."""
    _DOMAINS.pop(name, None)
    _DOMAIN_ORIGINS.pop(name, None)
    _INFOS.pop((DOMAIN_GROUP, name), None)
    default = _DEFAULT_ANALYSES.pop(name, None)
    if default is not None and _ANALYSES.get(name) is default:
        del _ANALYSES[name]


def available_domains() -> dict[str, type[Domain]]:
    """Registered domain classes by name (built-ins, entry-point plugins, ``register_domain``)."""
    load_plugins()
    return dict(_DOMAINS)


def get_domain(name: str) -> type[Domain]:
    """The domain class registered as ``name`` (raises :class:`PluginError` naming the choices)."""
    load_plugins()
    if name in _DOMAINS:
        return _DOMAINS[name]
    why = _UNAVAILABLE.get(name)
    if why:
        raise PluginError(f"domain {name!r} is not available: {why}")
    raise PluginError(f"unknown domain {name!r}; available: {', '.join(sorted(_DOMAINS))}")


def domain_origin(name: str) -> str:
    """Where domain ``name`` came from: ``built-in``, a distribution, or ``register_domain()``."""
    return _DOMAIN_ORIGINS.get(name, "")


# -- solvers ---------------------------------------------------------------------------------
def register_solver(cls: type, *, replace: bool = False) -> type:
    """Register an LP/MILP backend class (a :class:`absint.solvers.base.Backend` subclass) under ``cls.name``."""
    from absint.solvers.base import Backend

    if not (isinstance(cls, type) and issubclass(cls, Backend)):
        raise PluginError(f"{cls!r} is not a subclass of absint.solvers.base.Backend")
    name = cls.name
    if not name:
        raise PluginError(f"{cls.__name__} must set a non-empty class attribute 'name'")
    current = _SOLVERS.get(name)
    if current is cls:
        return cls
    if current is not None and not replace:
        raise PluginError(f"a solver backend named {name!r} is already registered ({current.__module__}); "
                          "pick another name or pass replace=True")
    _SOLVERS[name] = cls
    _SOLVER_ORIGINS[name] = _ORIGIN
    _INFOS[(SOLVER_GROUP, name)] = PluginInfo(name, SOLVER_GROUP, f"{cls.__module__}:{cls.__qualname__}",
                                              _ORIGIN, "loaded")
    return cls


def available_solvers() -> dict[str, type]:
    """Solver backend classes by name (built-ins first, then ``absint.solvers`` plugins)."""
    _load_solvers()
    return dict(_SOLVERS)


def solver_status() -> dict[str, tuple[bool, str]]:
    """Backend name -> ``(usable, reason)``, e.g. ``"gurobi": (True, "installed, size-limited licence")``.

    Built-ins report through ``absint.solvers.available_backends()``; plugin backends through their
    ``availability()`` classmethod (an exception there counts as unavailable, never a crash).
    """
    status: dict[str, tuple[bool, str]] = {}
    try:
        from absint.solvers import available_backends

        status.update(available_backends())
    except Exception as exc:  # noqa: BLE001 - a broken solver layer must not break `absint list`
        log.warning("absint.solvers.available_backends() failed: %s", exc)
    for name, cls in available_solvers().items():
        if name in status:
            continue
        try:
            ok, reason = cls.availability()
            status[name] = (bool(ok), str(reason))
        except Exception as exc:  # noqa: BLE001
            status[name] = (False, f"availability() raised {type(exc).__name__}: {exc}")
    for info in _INFOS.values():
        if info.group == SOLVER_GROUP and info.status in ("failed", "unavailable") and info.name not in status:
            status[info.name] = (False, info.reason)
    return status


def get_solver(name: str | None = None) -> Any:
    """A backend instance: built-ins via :func:`solvers.get_backend`, else a registered plugin."""
    from absint.solvers import get_backend
    from absint.solvers.errors import UnknownBackendError

    try:
        return get_backend(name)
    except UnknownBackendError:
        classes = available_solvers()
        if name in classes:
            return classes[name]()
        raise


# -- discovery -------------------------------------------------------------------------------
def plugin_infos() -> list[PluginInfo]:
    """One record per domain/solver seen (loaded, failed, ignored), for ``absint list``."""
    load_plugins()
    return list(_INFOS.values())


def _entry_points(group: str) -> list[Any]:
    """Entry points of ``group`` (deduplicated; broken metadata gives none, with a warning)."""
    try:
        eps = list(metadata.entry_points(group=group))
    except Exception as exc:  # noqa: BLE001 - broken metadata must not break `import absint`
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


def _skip(ep_name: str, group: str, target: str, origin: str, status: str, reason: str, *,
          builtin: bool, expected: bool = False, unavailable: bool = True) -> None:
    """Record a plugin that was not registered, and tell the user (warning, or INFO if expected)."""
    _INFOS[(group, ep_name)] = PluginInfo(ep_name, group, target, origin, status, reason)
    if unavailable and group == DOMAIN_GROUP and ep_name not in _DOMAINS:
        mark_unavailable(ep_name, reason)
    if expected:
        log.info("%s", reason)
        return
    log.warning("%s", reason)
    if not builtin:
        warnings.warn(reason, PluginWarning, stacklevel=3)


def _resolve_attr(module: Any, value: str) -> Any:
    """The object ``module:attr.sub`` names in an already imported module (None if absent)."""
    obj = module
    for part in (value.split(":", 1)[1] if ":" in value else "").strip().split("."):
        obj = getattr(obj, part, None) if part else obj
    return obj


def _load_entry_point(ep: Any, group: str, builtin: bool) -> None:
    dist, origin = _distribution(ep)
    origin = "built-in" if builtin else origin
    kind = "domain" if group == DOMAIN_GROUP else "solver"
    label = f"{kind} plugin {ep.name!r} ({ep.value}, from {origin})"
    registry = _DOMAINS if group == DOMAIN_GROUP else _SOLVERS
    current = registry.get(ep.name)
    module = sys.modules.get(ep.value.split(":")[0].strip())
    if current is not None and module is not None and _resolve_attr(module, ep.value) is current:
        return  # already registered from this very entry point (a reload)
    if not builtin and current is not None:
        owner = (_DOMAIN_ORIGINS if group == DOMAIN_GROUP else _SOLVER_ORIGINS).get(ep.name, "?")
        _skip(ep.name + f" [{dist or origin}]", group, ep.value, origin, "ignored",
              f"{label} ignored: the name {ep.name!r} is already taken ({owner})", builtin=False, unavailable=False)
        return
    try:
        obj = ep.load()
    except ImportError as exc:
        missing = getattr(exc, "name", None)
        # A built-in whose optional third-party dependency is absent is expected, not a fault.
        expected = builtin and bool(missing) and missing.split(".")[0] not in ("absint", "domains", "solvers")
        _skip(ep.name, group, ep.value, origin, "unavailable" if expected else "failed",
              f"{label} cannot be imported: {exc}", builtin=builtin, expected=expected)
        return
    except Exception as exc:  # noqa: BLE001 - a broken plugin must never crash absint
        _skip(ep.name, group, ep.value, origin, "failed",
              f"{label} failed to load: {type(exc).__name__}: {exc}", builtin=builtin)
        return
    if not isinstance(obj, type):
        _skip(ep.name, group, ep.value, origin, "failed", f"{label} ignored: it names {obj!r}, not a class",
              builtin=builtin)
        return
    if getattr(obj, "name", None) != ep.name:
        _skip(ep.name, group, ep.value, origin, "failed",
              f"{label} ignored: the entry-point name differs from the class's name "
              f"{getattr(obj, 'name', None)!r}", builtin=builtin)
        return
    try:
        with _origin(origin):
            (register_domain if group == DOMAIN_GROUP else register_solver)(obj)
    except PluginError as exc:
        _skip(ep.name, group, ep.value, origin, "ignored", f"{label} ignored: {exc}", builtin=builtin,
              unavailable=False)


def load_plugins(*, reload: bool = False) -> None:
    """Discover domain plugins (done once, when :mod:`absint` is imported; ``reload`` repeats it)."""
    global _LOADED
    if _LOADED and not reload:
        return
    _LOADED = True
    eps = _entry_points(DOMAIN_GROUP)
    builtin = [ep for ep in eps if _distribution(ep)[0] == BUILTIN_DISTRIBUTION]
    for ep in builtin:
        _load_entry_point(ep, DOMAIN_GROUP, builtin=True)
    try:
        with _origin("built-in"):
            _register_builtins()
    except Exception as exc:  # noqa: BLE001 - already reported by the entry-point pass if it failed there
        level = logging.INFO if isinstance(exc, ImportError) else logging.WARNING
        log.log(level, "registering the built-in domains directly failed: %s: %s", type(exc).__name__, exc)
    for ep in eps:
        if ep not in builtin:
            _load_entry_point(ep, DOMAIN_GROUP, builtin=False)


def _load_solvers(*, reload: bool = False) -> None:
    global _SOLVERS_LOADED
    if _SOLVERS_LOADED and not reload:
        return
    _SOLVERS_LOADED = True
    eps = _entry_points(SOLVER_GROUP)
    builtin = [ep for ep in eps if _distribution(ep)[0] == BUILTIN_DISTRIBUTION]
    for ep in builtin:
        _load_entry_point(ep, SOLVER_GROUP, builtin=True)
    for name, target in _BUILTIN_SOLVERS.items():  # fallback: metadata missing or stale
        if name not in _SOLVERS and (SOLVER_GROUP, name) not in _INFOS:
            _load_entry_point(metadata.EntryPoint(name, target, SOLVER_GROUP), SOLVER_GROUP, builtin=True)
    for ep in eps:
        if ep not in builtin:
            _load_entry_point(ep, SOLVER_GROUP, builtin=False)


# The built-in domains, imported directly: the fallback when the package metadata is missing or
# older than setup.cfg. Keep in sync with the ``absint.domains`` entry points in setup.cfg
# (tests/test_plugins.py checks that both name the same classes).
def _register_builtins() -> None:
    from absint.domains.box import BoxDomain
    from absint.domains.zonotope import ZonotopeDomain
    from absint.domains.deeppoly import DeepPolyDomain

    register_domain(BoxDomain)
    register_domain(ZonotopeDomain)
    register_domain(DeepPolyDomain)
    _register_refine_analyses()
    from absint.alpha import AlphaPolyAnalysis  # DeepPoly + optimised slopes

    if "alphapoly" not in _ANALYSES:
        register_analysis("alphapoly", AlphaPolyAnalysis)
    from absint.bab import BabAnalysis  # branch and bound (issue #8)

    if "bab" not in _ANALYSES:
        register_analysis("bab", BabAnalysis)
    try:
        from absint.sdp import register_sdp_analyses  # SDP-cert: sdp, sdp-exact, sdp-fo (issue #5)
    except ImportError as exc:
        for name in ("sdp", "sdp-exact", "sdp-fo"):
            mark_unavailable(name, f"absint.sdp failed to import: {exc}")
        return
    register_sdp_analyses(lambda name, cls: name in _ANALYSES or register_analysis(name, cls))


def _register_refine_analyses() -> None:
    """LP/MILP refinement analyses (lp, milp, refinezono, refinepoly, kpoly); see absint.refine."""
    try:
        from absint.refine import register as register_refine
    except ImportError as exc:  # e.g. a missing optional dependency of the k-ReLU hulls
        for name in ("lp", "milp", "refinezono", "refinepoly", "kpoly"):
            mark_unavailable(name, f"absint.refine failed to import: {exc}")
        return
    register_refine()


load_plugins()
