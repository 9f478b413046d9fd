"""Abstract domains for absint (import name ``absint.domains``): one module per domain (box,
zonotope, deeppoly, ...). Import what you need from its module (``from absint.domains.base import
Domain``); the names below are loaded on first use so that importing the package costs nothing."""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {"Domain": "absint.domains.base", "NoOptions": "absint.domains.base",
            "BoxDomain": "absint.domains.box", "BoxElement": "absint.domains.box"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value
