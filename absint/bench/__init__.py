"""Domain-comparison experiments at scale: ``absint bench``, ``vnncomp``, ``score``, ``report``.

Modules: :mod:`~absint.bench.config` (TOML/flags), :mod:`~absint.bench.plan` (tasks still to
run), :mod:`~absint.bench.worker` (one task -> rows), :mod:`~absint.bench.runner` (serial,
process-pool and Ray backends), :mod:`~absint.bench.store` (incremental, resumable results
files), :mod:`~absint.bench.vnncomp` (competition result format), :mod:`~absint.bench.score`
(truth tables), :mod:`~absint.bench.report` and :mod:`~absint.bench.plots` (tables, figures).

Python use::

    from absint.bench import load_config, run_config
    summary = run_config(load_config("configs/eran_mnist.toml"), workers=2)
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

# Loaded on first use, so that `absint --help` (which imports absint.bench.cli) stays cheap.
_EXPORTS = {
    "BenchConfig": "config", "BenchConfigError": "config", "Experiment": "config", "check_analyses": "config",
    "load_config": "config", "parse_config": "config", "plan_tasks": "plan", "read_instances": "plan",
    "BackendError": "runner", "RunSummary": "runner", "run_tasks": "runner", "format_score": "score",
    "read_truth": "score", "score": "score", "FIELDS": "store", "ResultStore": "store", "read_many": "store",
    "read_rows": "store", "run_instance": "vnncomp", "write_result": "vnncomp",
}


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


def run_config(config: Any, *, results: str | Path | None = None, progress: bool = False,
               retry_errors: bool = False, rerun: bool = False, **overrides: Any) -> Any:
    """Run every instance of ``config`` not yet in its results file (``rerun``: every instance, replacing
    its rows; ``overrides``: workers, backend, ...)."""
    from dataclasses import replace

    from absint.bench.config import check_analyses
    from absint.bench.plan import plan_tasks
    from absint.bench.runner import run_tasks
    from absint.bench.store import ResultStore

    if results is not None:
        config = replace(config, results=Path(results))
    config = check_analyses(config.with_overrides(**overrides))
    store = ResultStore(config.results)
    tasks = plan_tasks(config, set() if rerun else store.done(retry_errors=retry_errors))
    if retry_errors or rerun:
        store.drop({k for t in tasks for k in t.keys()})
    with store:
        return run_tasks(tasks, store, workers=config.workers, threads_per_worker=config.threads_per_worker,
                         backend=config.backend, address=config.address, progress=progress, desc=config.name)


__all__ = ["FIELDS", "BackendError", "BenchConfig", "BenchConfigError", "Experiment", "ResultStore", "RunSummary",
           "check_analyses", "format_score", "load_config", "parse_config", "plan_tasks", "read_instances",
           "read_many", "read_rows", "read_truth", "run_config", "run_instance", "run_tasks", "score",
           "write_result"]
