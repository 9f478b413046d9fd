"""Backend lookup: :func:`get_backend` and :func:`available_backends`."""

from __future__ import annotations

import logging

from .base import Backend
from .errors import BackendUnavailableError, UnknownBackendError

__all__ = ["get_backend", "available_backends", "backend_class", "BACKEND_NAMES"]

logger = logging.getLogger(__name__)

#: known backends in order of preference for the default choice
BACKEND_NAMES: tuple[str, ...] = ("highs", "gurobi", "scipy")
_ALIASES = {"auto": None, "default": None, "": None, "highspy": "highs", "grb": "gurobi"}


def backend_class(name: str) -> type[Backend]:
    """Return the backend class registered under ``name`` (imports lazily)."""
    key = name.strip().lower()
    if key == "highs":
        from .highs_backend import HighsBackend

        return HighsBackend
    if key == "gurobi":
        from .gurobi_backend import GurobiBackend

        return GurobiBackend
    if key == "scipy":
        from .scipy_backend import ScipyBackend

        return ScipyBackend
    raise UnknownBackendError(f"unknown solver backend {name!r}; known: {', '.join(BACKEND_NAMES)}")


def available_backends() -> dict[str, tuple[bool, str]]:
    """Map backend name -> ``(available, reason)``, e.g.
    ``"gurobi": (True, "installed, size-limited licence (2000 vars/constraints)")``."""
    return {name: backend_class(name).availability() for name in BACKEND_NAMES}


def get_backend(name: str | None = None, *, strict: bool = False) -> Backend:
    """Return a backend instance.

    ``None``/``"auto"`` gives the best available backend (HiGHS, else scipy).
    A named backend that is unavailable raises :class:`BackendUnavailableError`
    when ``strict``; otherwise a warning is logged and the default is returned.
    Unknown names always raise :class:`UnknownBackendError`.
    """
    key = _ALIASES.get(name.strip().lower(), name.strip().lower()) if name is not None else None
    if key is not None:
        cls = backend_class(key)
        ok, reason = cls.availability()
        if ok:
            return cls()
        if strict:
            raise BackendUnavailableError(f"backend {key!r} unavailable: {reason}")
        logger.warning("solver backend %r unavailable (%s); using the default backend", key, reason)
    for default in ("highs", "scipy"):
        cls = backend_class(default)
        ok, _ = cls.availability()
        if ok:
            return cls()
    raise BackendUnavailableError("no LP backend available (need highspy or scipy>=1.9)")
