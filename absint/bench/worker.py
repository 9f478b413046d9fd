"""What a worker does with one task: load (and cache) the network, verify, and make result rows.

This module is imported by spawned worker processes and Ray workers, so it sets the BLAS/OpenMP
thread counts (:func:`configure_threads`) before torch does any work: with ``N`` workers of ``T``
threads each, the machine runs ``N*T`` compute threads and nothing oversubscribes.

Memory is measured as ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` of the worker process: the
high-water mark of its resident set size (Python objects, torch tensors and BLAS buffers alike),
in MiB. It is a per-process high-water mark, so a row reports the largest RSS the worker reached
up to and including that instance (tracemalloc would miss torch's own allocations).
"""
from __future__ import annotations

import logging
import os
import socket
import sys
import time
from typing import Any

from absint.bench.tasks import ImageTask, Task, VnnTask, analysis_call

log = logging.getLogger(__name__)

THREAD_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS",
                   "VECLIB_MAXIMUM_THREADS")

_GRAPHS: dict[str, Any] = {}
_CONFIGURED: int | None = None


def thread_env(threads: int) -> dict[str, str]:
    """Environment variables that cap BLAS/OpenMP thread pools at ``threads``."""
    return {k: str(threads) for k in THREAD_ENV_VARS}


def configure_threads(threads: int) -> None:
    """Set the thread env vars and torch's intra-op thread count for this process (idempotent)."""
    global _CONFIGURED
    if _CONFIGURED == threads:
        return
    os.environ.update(thread_env(threads))
    import torch

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(threads)
    except RuntimeError:  # only settable before the first parallel work; harmless otherwise
        pass
    _CONFIGURED = threads


def init_worker(threads: int, log_level: int = logging.WARNING,
                registrations: list[tuple[str, str, bool]] | None = None) -> None:
    """Process-pool initializer: threads, logging and the parent's run-time registrations
    (:func:`absint.registry.runtime_registrations`) in a fresh worker process."""
    configure_threads(threads)
    logging.basicConfig(level=log_level, format="%(levelname)s %(name)s[%(process)d]: %(message)s")
    _restore(registrations)


def _restore(registrations: list[tuple[str, str, bool]] | None) -> None:
    if registrations:
        from absint.registry import restore_registrations

        restore_registrations(registrations)


def peak_rss_mib() -> float:
    """High-water mark of this process's resident set size in MiB (``getrusage`` ``ru_maxrss``)."""
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows
        return float("nan")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


def _graph(path: str) -> Any:
    """Load a network once per worker (keyed by path and modification time)."""
    import absint

    key = f"{path}:{os.path.getmtime(path)}"
    if key not in _GRAPHS:
        _GRAPHS[key] = absint.load_network(path)
    return _GRAPHS[key]


def _worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _base_row(task: Task, key: tuple[str, ...]) -> dict[str, Any]:
    from absint.bench.tasks import settings_hash
    from absint.provenance import provenance

    prov = provenance()
    return {"benchmark": key[0], "network": key[1], "input": key[2], "eps": task.eps if isinstance(task, ImageTask)
            else None, "analysis": key[4], "timeout": task.timeout, "worker": _worker_id(),
            "options": task.settings, "options_hash": settings_hash(task.settings), "version": prov["version"],
            "commit": prov["commit"] if not prov.get("dirty") else f"{prov['commit']}+dirty"}


def _resolved(result: Any, analysis: Any) -> dict[str, Any]:
    """What actually ran, as the analysis reports it in ``details`` (``domain``, ``backend``,
    ``fallbacks``), else the plain domain of a domain analysis."""
    details = getattr(result, "details", None) or {}
    domain = details.get("domain") or getattr(getattr(analysis, "domain", None), "name", None)
    solves = details.get("solves") or {}  # refine: solves per backend
    # what solved, not what was asked ("auto" with no solve: nothing needed a solver)
    backend = "+".join(sorted(solves)) if solves else (None if details.get("backend") == "auto" else details.get("backend"))
    fb = details.get("fallbacks")  # refine: {"gurobi->highs: licence limit (...)": count}
    fallbacks = [f"{k} (x{v})" for k, v in fb.items()] if isinstance(fb, dict) else (list(fb) if fb else None)
    return {"domain": domain, "backend": backend, "fallbacks": fallbacks or None}


def _counterexample(result: Any) -> list[float] | None:
    x = getattr(result, "counterexample", None)
    if getattr(result, "falsified", False) and x is not None:
        import numpy as np

        return [float(v) for v in np.asarray(x, dtype=np.float64).reshape(-1)]
    return None


def error_rows(task: Task, exc: BaseException, seconds: float | None = None,
               cpu_seconds: float | None = None) -> list[dict[str, Any]]:
    """Rows saying ``task`` failed with ``exc`` (kept, so a deterministic failure is not retried forever),
    with the time the task ran until it failed (shared out over its instances)."""
    reason = f"{type(exc).__name__}: {exc}".replace("\n", " ")[:500]
    n = max(1, task.size)
    return [{**_base_row(task, k), "verdict": "error", "reason": reason, "peak_rss_mib": peak_rss_mib(),
             "seconds": None if seconds is None else seconds / n,
             "cpu_seconds": None if cpu_seconds is None else cpu_seconds / n}
            for k in task.keys()]


def _run_images(task: ImageTask) -> list[dict[str, Any]]:
    import torch

    from absint.analyses import get_analysis
    from absint.verify import verify_robustness

    graph = _graph(task.network_path)
    with torch.no_grad():
        x = torch.as_tensor(task.images, dtype=graph.dtype, device=graph.device)
        preds = graph.forward(x).reshape(len(task.images), -1).argmax(1).cpu().numpy()
    c0 = time.process_time()
    name, options = analysis_call(task)
    analysis = get_analysis(name, **options)
    results = verify_robustness(graph, task.images, list(task.labels), task.eps, analysis=analysis,
                                clip=task.clip, timeout=task.timeout, attack=task.attack,
                                batch_size=max(1, task.size), names=[str(i) for i in task.indices])
    cpu = (time.process_time() - c0) / max(1, task.size)
    mem = peak_rss_mib()
    rows = []
    for key, r, p, lab in zip(task.keys(), results, preds, task.labels):
        rows.append({**_base_row(task, key), "verdict": str(r.verdict), "margin": r.margin, "seconds": r.seconds,
                     "cpu_seconds": cpu, "peak_rss_mib": mem, "correct": bool(int(p) == int(lab)), "label": int(lab),
                     "reason": r.reason, "counterexample": _counterexample(r), **_resolved(r, analysis)})
    if len(rows) != task.size:
        raise RuntimeError(f"verify_robustness returned {len(results)} results for {task.size} images")
    return rows


def _run_vnn(task: VnnTask) -> list[dict[str, Any]]:
    from absint.analyses import get_analysis
    from absint.verify import verify

    graph = _graph(task.network_path)  # cached per worker: loading is not part of an instance's time
    kw = {} if task.attack_budget is None else {"attack_budget": task.attack_budget}
    name, options = analysis_call(task)
    analysis = get_analysis(name, **options)
    t0, c0 = time.perf_counter(), time.process_time()
    r = verify(graph, task.vnnlib_path, analysis=analysis, timeout=task.timeout, attack=task.attack,
               threads=None, **kw)  # configure_threads set the worker's count
    seconds = time.perf_counter() - t0  # includes parsing the VNN-LIB file, like a competition run
    cpu = time.process_time() - c0
    key = task.keys()[0]
    return [{**_base_row(task, key), "verdict": str(r.verdict), "margin": r.margin, "seconds": seconds,
             "cpu_seconds": cpu, "peak_rss_mib": peak_rss_mib(), "reason": r.reason,
             "counterexample": _counterexample(r), **_resolved(r, analysis)}]


def run_task(task: Task) -> list[dict[str, Any]]:
    """Rows for ``task``; an exception becomes ``error`` rows (with the time spent) instead of killing the run."""
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        if isinstance(task, ImageTask):
            return _run_images(task)
        return _run_vnn(task)
    except Exception as exc:  # noqa: BLE001 - one bad instance must not stop a benchmark
        log.exception("task %s failed", task.keys()[0])
        return error_rows(task, exc, time.perf_counter() - t0, time.process_time() - c0)


def run_task_with_threads(task: Task, threads: int,
                          registrations: list[tuple[str, str, bool]] | None = None) -> list[dict[str, Any]]:
    """Entry point for Ray workers (no initializer there): configure threads and registrations, then run."""
    configure_threads(threads)
    _restore(registrations)
    return run_task(task)
