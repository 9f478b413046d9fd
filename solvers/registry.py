"""Backend lookup: :func:`get_backend` and :func:`available_backends`, through the one registry.

Backends are classes registered in the ``absint.solvers`` entry-point group (built-ins and
plugins alike, :mod:`absint.registry`); this module turns a name into a ready instance.
"""

from __future__ import annotations

import logging

from absint import registry

from .base import Backend
from .errors import BackendUnavailableError, UnknownBackendError

__all__ = ["get_backend", "available_backends", "backend_class", "canonical_name", "DEFAULT_ORDER"]

logger = logging.getLogger(__name__)

#: backends tried, in this order, for the default choice
DEFAULT_ORDER: tuple[str, ...] = ("highs", "scipy")
_ALIASES = {"auto": None, "default": None, "": None, "highspy": "highs", "grb": "gurobi"}


def canonical_name(name: str | None) -> str | None:
    """The registry name a user's backend name means (``"HiGHS"``, ``"highspy"`` -> ``"highs"``;
    ``None``, ``""``, ``"auto"``, ``"default"`` -> ``None``: the default choice)."""
    if name is None:
        return None
    key = name.strip().lower()
    return _ALIASES.get(key, key)


def backend_class(name: str) -> type[Backend]:
    """The backend class registered under ``name`` (imports it on first use)."""
    key = name.strip().lower()
    return registry.get_solver_class(_ALIASES.get(key, key) or DEFAULT_ORDER[0])


def available_backends() -> dict[str, tuple[bool, str]]:
    """Map every registered backend name -> ``(available, reason)``, e.g.
    ``"gurobi": (True, "installed, size-limited licence (2000 vars/constraints)")``.

    A backend class that cannot be imported, or whose ``availability()`` raises, is reported as
    unavailable with the reason, never as an exception.
    """
    out: dict[str, tuple[bool, str]] = {}
    for entry in registry.entries(registry.SOLVERS):
        if entry.status == "ignored":
            continue
        if entry.status not in ("declared", "loaded"):
            out[entry.name] = (False, entry.reason)
            continue
        try:
            ok, reason = backend_class(entry.name).availability()
            out[entry.name] = (bool(ok), str(reason))
        except UnknownBackendError as exc:
            out[entry.name] = (False, str(exc))
        except Exception as exc:  # noqa: BLE001 - a broken plugin must not break `absint list`
            out[entry.name] = (False, f"availability() raised {type(exc).__name__}: {exc}")
    return out


def get_backend(name: str | None = None, *, fallback: bool = False) -> Backend:
    """Return a backend instance (the one place that turns a backend name into a solver).

    ``None``/``"auto"`` gives the best available of :data:`DEFAULT_ORDER` (HiGHS, else scipy).
    A named backend that is unavailable raises :class:`BackendUnavailableError` — unless
    ``fallback=True``, which returns the default backend instead (with a logged warning; the
    returned backend's ``name`` says which one it is). Unknown names always raise
    :class:`UnknownBackendError`.
    """
    key = _ALIASES.get(name.strip().lower(), name.strip().lower()) if name is not None else None
    if key is not None:
        try:
            cls = registry.get_solver_class(key)
            ok, reason = cls.availability()
        except UnknownBackendError as exc:
            if not registry.has(registry.SOLVERS, key):
                raise
            ok, reason = False, str(exc)  # declared but not loadable here (e.g. a missing extra)
        if ok:
            return cls()
        if not fallback:
            raise BackendUnavailableError(f"solver backend {key!r} is unavailable: {reason}")
        logger.warning("solver backend %r unavailable (%s); using the default backend", key, reason)
    for default in DEFAULT_ORDER:
        try:
            cls = registry.get_solver_class(default)
        except UnknownBackendError:
            continue
        ok, _ = cls.availability()
        if ok:
            return cls()
    raise BackendUnavailableError("no LP backend available (need highspy or scipy>=1.9)")
