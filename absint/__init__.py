"""absint: abstract interpretation for certifying the robustness of neural networks.

Quick start::

    import absint
    net = absint.load_network(absint.bundled("digits_mlp_2x64.onnx"))
    images, labels = absint.load_images(absint.bundled("digits_test.npz"), net.input_shape)
    results = absint.verify_robustness(net, images[:50], labels[:50], eps=0.02, analysis="deeppoly")
    print(absint.format_table(results))

    result = absint.verify("net.onnx", "prop.vnnlib", analysis="deeppoly", timeout=60)

The public names below are imported on first use (module ``__getattr__``), so ``import absint``
loads neither torch nor any plugin; the map of the package is docs/architecture.md.
"""
from __future__ import annotations

import importlib
import os as _os
import sys as _sys
import types as _types
from typing import Any

from absint.errors import (AbsintError, ModelError, OptionError, SpecError, UnknownAnalysisError,
                           UnsupportedOpError, VnnlibParseError)

# The repository keeps domains/ and solvers/ as top-level folders (the design card); they import as
# absint.domains and absint.solvers. An installed wheel places them inside this package (setup.cfg
# package_dir); in a source checkout they are found through the checkout root, added here.
_checkout = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if not _os.path.isdir(_os.path.join(__path__[0], "domains")) and _os.path.isfile(
        _os.path.join(_checkout, "domains", "__init__.py")):
    __path__.append(_checkout)

__version__ = "0.1.0"

#: public name -> the module that defines it (imported when the name is first used)
_EXPORTS = {
    "Analysis": "absint.analyses", "BoundResult": "absint.analyses", "available_analyses": "absint.analyses",
    "get_analysis": "absint.analyses",
    "register_analysis": "absint.registry", "available_domains": "absint.registry",
    "register_domain": "absint.registry", "register_solver": "absint.registry",
    "AttackOptions": "absint.attack", "pgd_attack": "absint.attack",
    "load_images": "absint.data", "bundled": "absint.data",
    "propagate": "absint.interpreter",
    "Graph": "absint.ir",
    "Options": "absint.options",
    "Result": "absint.results", "Verdict": "absint.results", "format_table": "absint.results",
    "results_to_csv": "absint.results", "results_to_json": "absint.results", "summarize": "absint.results",
    "Clause": "absint.specs", "InputBox": "absint.specs", "Instance": "absint.specs", "LinfBall": "absint.specs",
    "OutputProperty": "absint.specs", "Spec": "absint.specs", "linf_ball": "absint.specs",
    "robustness_property": "absint.specs",
    "load_network": "absint.verify", "verify": "absint.verify", "verify_instance": "absint.verify",
    "verify_robustness": "absint.verify",
    "parse_vnnlib": "absint.vnnlib",
}

__all__ = sorted(["AbsintError", "ModelError", "OptionError", "SpecError", "UnknownAnalysisError",
                  "UnsupportedOpError", "VnnlibParseError", *_EXPORTS])


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is not None:
        value = getattr(importlib.import_module(module), name)
    else:
        try:  # a submodule used as an attribute (``absint.registry``) without importing it first
            value = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


class _Package(_types.ModuleType):
    """``absint``'s module type: the function :func:`absint.verify` shares its name with the module
    ``absint.verify``. The import system sets a submodule as an attribute of its package once it is
    loaded; keep the public function there instead (as an eager ``from absint.verify import
    verify`` in this file would)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, _types.ModuleType) and _EXPORTS.get(name) == value.__name__:
            value = getattr(value, name)
        super().__setattr__(name, value)


_sys.modules[__name__].__class__ = _Package
