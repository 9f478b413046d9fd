"""Turn a :class:`~absint.bench.config.BenchConfig` into the list of tasks still to run.

Image experiments are split into chunks of ``batch_size`` images per (analysis, eps); VNN-COMP
experiments give one task per (instance, analysis). Instances whose rows are already in the
results file (``done``) are left out, which is how a killed run resumes. The task list depends
only on the configuration and ``done``, never on the number of workers or the backend, so the
results do not either.
"""
from __future__ import annotations

import csv
import logging
import math
from pathlib import Path

import numpy as np

from absint.bench.config import AnalysisSpec, BenchConfig, BenchConfigError, Experiment
from absint.bench.store import Key
from absint.bench.tasks import ImageTask, Task, VnnTask

log = logging.getLogger(__name__)


def read_instances(path: Path) -> list[tuple[str, str, float | None]]:
    """Rows ``(onnx, vnnlib, timeout)`` of a VNN-COMP ``instances.csv`` (paths as written, relative to it)."""
    if not path.exists():
        raise BenchConfigError(f"{path}: no such instances file")
    out = []
    with open(path, newline="") as f:
        for i, row in enumerate(csv.reader(f), 1):
            row = [c.strip() for c in row]
            if not row or not row[0] or row[0].startswith("#"):
                continue
            if len(row) < 2:
                raise BenchConfigError(f"{path}:{i}: expected onnx,vnnlib[,timeout]")
            if i == 1 and row[0].lower() == "onnx":  # header line
                continue
            try:
                t = float(row[2]) if len(row) > 2 and row[2] else None
            except ValueError as exc:
                raise BenchConfigError(f"{path}:{i}: bad timeout {row[2]!r}") from exc
            if t is not None and not (math.isfinite(t) and t > 0):
                raise BenchConfigError(f"{path}:{i}: bad timeout {row[2]!r} (a number of seconds > 0)")
            out.append((row[0], row[1], t))
    return out


def _image_tasks(exp: Experiment, done: set[Key], specs: dict[str, AnalysisSpec]) -> list[Task]:
    import absint

    if exp.network is None or exp.data is None:
        raise BenchConfigError(f"experiment {exp.name!r}: an image experiment needs 'network' and 'data'")
    if not exp.network.exists():
        raise BenchConfigError(f"experiment {exp.name!r}: no network file {exp.network} "
                               "(use --bench-root to point at your copy of the benchmark data)")
    graph = absint.load_network(exp.network)
    images, labels = absint.load_images(exp.data, tuple(graph.input_shape))
    if exp.start >= len(images):
        raise BenchConfigError(f"experiment {exp.name!r}: start {exp.start} is past the end of {exp.data} "
                               f"({len(images)} images)")
    stop = len(images) if exp.count is None else min(len(images), exp.start + exp.count)
    if exp.count is not None and exp.start + exp.count > len(images):
        log.warning("experiment %r: asked for %d images from %d, the data set has %d", exp.name, exp.count,
                    exp.start, len(images))
    idx = np.arange(exp.start, stop)
    tasks: list[Task] = []
    net_name = exp.network.name
    shared: dict[tuple[int, ...], np.ndarray] = {}  # one copy of each chunk's images for all analyses / eps
    for eps in exp.eps:
        for analysis in exp.analyses:
            spec = specs[analysis]
            settings = dict(timeout=exp.own_timeout or spec.timeout or exp.timeout, attack=exp.attack, clip=exp.clip,
                            base=spec.base, options=spec.options)
            probe = ImageTask(exp.name, str(exp.network), net_name, analysis, eps, tuple(int(i) for i in idx),
                              images[:0], **settings)
            todo = [int(i) for i, k in zip(idx, probe.keys()) if k not in done]
            for s in range(0, len(todo), exp.batch_size):
                chunk = todo[s:s + exp.batch_size]
                key = tuple(chunk)
                if key not in shared:
                    shared[key] = np.ascontiguousarray(images[chunk])
                tasks.append(ImageTask(
                    benchmark=exp.name, network_path=str(exp.network), network_name=net_name, analysis=analysis,
                    eps=eps, indices=key, images=shared[key], labels=tuple(int(labels[i]) for i in chunk), **settings))
    return tasks


def _vnn_tasks(exp: Experiment, done: set[Key], specs: dict[str, AnalysisSpec]) -> list[Task]:
    if exp.instances is None:
        raise BenchConfigError(f"experiment {exp.name!r}: a VNN-LIB experiment needs 'instances'")
    base = exp.instances.parent
    rows = read_instances(exp.instances)
    if exp.match:
        rows = [r for r in rows if exp.match in r[0] or exp.match in r[1]]
    if exp.limit is not None:
        rows = rows[: exp.limit]
    tasks: list[Task] = []
    for onnx, vnnlib, t in rows:
        for analysis in exp.analyses:
            spec = specs[analysis]
            cap = exp.own_timeout or spec.timeout or exp.timeout
            limit = t if cap is None else (cap if t is None else min(t, cap))
            task = VnnTask(benchmark=exp.name, network_path=str(base / onnx), network_name=onnx,
                           vnnlib_path=str(base / vnnlib), vnnlib_name=vnnlib, analysis=analysis,
                           timeout=limit, attack=exp.attack, attack_budget=exp.attack_budget,
                           base=spec.base, options=spec.options)
            if task.keys()[0] not in done:
                tasks.append(task)
    missing = sorted({t.network_path for t in tasks if not Path(t.network_path).exists()}
                     | {t.vnnlib_path for t in tasks if not Path(t.vnnlib_path).exists()})
    if missing:
        raise BenchConfigError(f"experiment {exp.name!r}: {len(missing)} file(s) listed in {exp.instances} "
                               f"do not exist, e.g. {missing[0]}")
    return tasks


def plan_tasks(config: BenchConfig, done: set[Key] | None = None) -> list[Task]:
    """All tasks of ``config`` whose rows are not in ``done``, in a fixed order."""
    done = done or set()
    tasks: list[Task] = []
    for exp in config.experiments:
        specs = {a: config.spec(a) for a in exp.analyses}
        tasks.extend(_vnn_tasks(exp, done, specs) if exp.kind == "vnncomp" else _image_tasks(exp, done, specs))
    return tasks
