"""Units of work for the benchmark runner.

A task is a small, picklable record that a worker (this process, a spawned process, or a Ray
worker on another machine) turns into result rows. Image tasks carry their images and labels, so
a remote worker only needs the network file; VNN-COMP tasks carry the two file paths. Each task
knows the row keys it will produce, which is what resume compares against.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Union

import numpy as np

from absint.bench.store import Key, fmt_eps


@dataclass(frozen=True, eq=False)
class ImageTask:
    """L-inf robustness of a few images of one data set, one analysis, one eps."""

    benchmark: str
    network_path: str          # file the worker loads
    network_name: str          # as written in rows
    analysis: str
    eps: float
    indices: tuple[int, ...]   # positions in the data set (the rows' ``input``)
    images: np.ndarray = field(repr=False)  # [k, *input_shape] float64
    labels: tuple[int, ...] = ()
    timeout: float | None = None
    attack: bool = True
    clip: tuple[float, float] | None = (0.0, 1.0)
    base: str = ""                            # registered analysis behind the column (default: ``analysis``)
    options: tuple[tuple[str, Any], ...] = ()  # its keyword options

    @property
    def size(self) -> int:
        return len(self.indices)

    @property
    def settings(self) -> dict[str, Any]:
        """Everything besides the instance that can change a row's verdict (see :func:`settings_hash`)."""
        return {"analysis": self.base or self.analysis, "options": dict(self.options), "timeout": _float(self.timeout),
                "attack": self.attack, "clip": None if self.clip is None else list(self.clip)}

    def keys(self) -> list[Key]:
        h = settings_hash(self.settings)
        return [(self.benchmark, self.network_name, str(i), fmt_eps(self.eps), self.analysis, h) for i in self.indices]


@dataclass(frozen=True)
class VnnTask:
    """One VNN-COMP instance (ONNX network + VNN-LIB property) with one analysis."""

    benchmark: str
    network_path: str
    network_name: str          # path as in instances.csv (matches truth.csv)
    vnnlib_path: str
    vnnlib_name: str           # path as in instances.csv
    analysis: str
    timeout: float | None = None
    attack: bool = True
    attack_budget: float | None = None  # None: verify()'s default
    base: str = ""                            # as in ImageTask
    options: tuple[tuple[str, Any], ...] = ()

    @property
    def size(self) -> int:
        return 1

    @property
    def settings(self) -> dict[str, Any]:
        """As :attr:`ImageTask.settings` (with the extra attack budget instead of the clip range)."""
        return {"analysis": self.base or self.analysis, "options": dict(self.options), "timeout": _float(self.timeout),
                "attack": self.attack, "attack_budget": _float(self.attack_budget)}

    def keys(self) -> list[Key]:
        return [(self.benchmark, self.network_name, self.vnnlib_name, "", self.analysis, settings_hash(self.settings))]


Task = Union[ImageTask, VnnTask]


def _float(x: float | None) -> float | None:
    return None if x is None else float(x)


def settings_hash(settings: dict[str, Any]) -> str:
    """A short, stable digest of a task's settings (canonical JSON, SHA-256, 12 hex digits)."""
    text = json.dumps(settings, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def analysis_call(task: Task) -> tuple[str, dict[str, Any]]:
    """``(registered analysis name, keyword options)`` that run ``task``'s column."""
    return task.base or task.analysis, dict(task.options)


def total_instances(tasks: list[Task]) -> int:
    return sum(t.size for t in tasks)
