"""Run tasks on a backend and write their rows as they finish.

Backends:

* ``local`` with ``workers == 1``: in this process, one task after the other;
* ``local`` with ``workers > 1``: a :class:`concurrent.futures.ProcessPoolExecutor` with the
  ``spawn`` start method (no fork of a process that already holds torch/BLAS thread pools); each
  worker caps its threads at ``threads_per_worker`` (env vars set before the workers start, and
  ``torch.set_num_threads`` in the initializer);
* ``ray``: tasks as Ray remote functions with ``num_cpus=threads_per_worker``, on a local Ray
  instance (``workers`` CPUs) or an existing cluster (``address``; absint must be installed and
  the data files reachable at the same paths on every node). Ray is an optional extra
  (``pip install 'absint[ray]'``).

Rows go to the :class:`~absint.bench.store.ResultStore` in completion order; the task list is
fixed before any backend sees it, so verdicts do not depend on the backend or worker count.
"""
from __future__ import annotations

import contextlib
import logging
import os
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Iterator

from absint.bench.store import ResultStore
from absint.bench.tasks import Task, total_instances
from absint.bench.worker import init_worker, run_task, run_task_with_threads, thread_env
from absint import registry
from absint.errors import AbsintError

log = logging.getLogger(__name__)


class BackendError(AbsintError):
    """A parallel backend is missing or failed."""


@dataclass
class RunSummary:
    """Counts of the rows written by one :func:`run_tasks` call and its wall time."""

    instances: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    wall_seconds: float = 0.0
    interrupted: bool = False

    def add(self, rows: list[dict[str, Any]]) -> None:
        self.instances += len(rows)
        for r in rows:
            self.counts[r["verdict"]] = self.counts.get(r["verdict"], 0) + 1


@contextlib.contextmanager
def _env(values: dict[str, str]) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _serial(tasks: list[Task], threads: int) -> Iterator[list[dict[str, Any]]]:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)  # this process's BLAS pools already exist: only torch's count can change
    try:
        for t in tasks:
            yield run_task(t)
    finally:
        torch.set_num_threads(before)


def _processes(tasks: list[Task], workers: int, threads: int) -> Iterator[list[dict[str, Any]]]:
    import multiprocessing as mp
    from concurrent.futures.process import BrokenProcessPool

    ctx = mp.get_context("spawn")
    # Spawned children read these at start-up, before numpy/torch create their thread pools.
    with _env(thread_env(threads)):
        # run-time registrations (register_domain() in a script) are re-applied in every worker
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=init_worker,
                                   initargs=(threads, logging.getLogger().getEffectiveLevel(),
                                             registry.runtime_registrations()))
        # Keep a bounded number of tasks in flight so an interrupt loses little queued work.
        queue = list(reversed(tasks))
        pending: set = set()
        try:
            while queue or pending:
                while queue and len(pending) < 2 * workers:
                    pending.add(pool.submit(run_task, queue.pop()))
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    try:
                        yield fut.result()
                    except BrokenProcessPool as exc:
                        raise BackendError("a worker process died (killed for memory?); the rows finished so far "
                                           "are saved, run the same command again to resume") from exc
        finally:
            for fut in pending:
                fut.cancel()
            pool.shutdown(wait=True, cancel_futures=True)


def _ray(tasks: list[Task], workers: int, threads: int, address: str | None) -> Iterator[list[dict[str, Any]]]:
    try:
        import ray
    except ImportError as exc:
        raise BackendError("--backend ray needs Ray: pip install 'absint[ray]' (or pip install ray)") from exc
    started = False
    if not ray.is_initialized():
        kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                              "runtime_env": {"env_vars": thread_env(threads)}}
        if address:
            ray.init(address=address, **kw)
        else:
            ray.init(num_cpus=workers * threads, **kw)
        started = True
    try:
        remote = ray.remote(num_cpus=threads, max_retries=1)(run_task_with_threads)
        registrations = registry.runtime_registrations()
        queue = list(reversed(tasks))
        pending: list = []
        capacity = max(workers, int(ray.cluster_resources().get("CPU", workers)) // threads) * 2
        while queue or pending:
            while queue and len(pending) < capacity:
                pending.append(remote.remote(queue.pop(), threads, registrations))
            ready, pending = ray.wait(pending, num_returns=1)
            for ref in ready:
                try:
                    yield ray.get(ref)
                except ray.exceptions.RayError as exc:
                    raise BackendError(f"a Ray task failed: {exc}") from exc
    finally:
        if started:
            ray.shutdown()


def iter_results(tasks: list[Task], *, workers: int = 1, threads_per_worker: int = 1, backend: str = "local",
                 address: str | None = None) -> Iterator[list[dict[str, Any]]]:
    """Rows of each task, in completion order, from the chosen backend."""
    if backend == "ray":
        return _ray(tasks, workers, threads_per_worker, address)
    if backend != "local":
        raise BackendError(f"unknown backend {backend!r} (use 'local' or 'ray')")
    if workers <= 1:
        return _serial(tasks, threads_per_worker)
    return _processes(tasks, workers, threads_per_worker)


def run_tasks(tasks: list[Task], store: ResultStore, *, workers: int = 1, threads_per_worker: int = 1,
              backend: str = "local", address: str | None = None, progress: bool = True,
              desc: str = "bench") -> RunSummary:
    """Run ``tasks`` and append every row to ``store`` as soon as its task finishes."""
    summary = RunSummary()
    total = total_instances(tasks)
    bar = None
    if progress and total:
        from tqdm import tqdm

        bar = tqdm(total=total, desc=desc, unit="inst", dynamic_ncols=True)
    t0 = time.perf_counter()
    try:
        for rows in iter_results(tasks, workers=workers, threads_per_worker=threads_per_worker, backend=backend,
                                 address=address):
            store.write_many(rows)
            summary.add(rows)
            if bar is not None:
                bar.update(len(rows))
                c = summary.counts
                bar.set_postfix(verified=c.get("verified", 0), falsified=c.get("falsified", 0),
                                unknown=c.get("unknown", 0), error=c.get("error", 0), refresh=False)
    except KeyboardInterrupt:
        summary.interrupted = True
        log.warning("interrupted: %d rows saved; run the same command again to resume", summary.instances)
    finally:
        if bar is not None:
            bar.close()
        summary.wall_seconds = time.perf_counter() - t0
    return summary
