"""Solves that end at their time limit: the solver runs in a worker process, ended when it overruns.

A solver's own time limit is checked only in some of its phases. HiGHS, for one, does not look
at the clock during presolve or MIP probing: on a 1.9M-nonzero MILP (a 784-1024-1024 network
with one layer of binaries) one solve with ``time_limit=1`` ran 172 s, all of it in presolve.
Signals cannot stop native code either. The one sure way to stop such a solve is to run it in
another process and end that process.

:class:`GuardedSession` is a :class:`~absint.solvers.base.Session` whose solves run in a worker
process: a fresh interpreter (``python -c``, so no user script is re-imported) that imports only
the solver layer and talks over a socket pair. The worker holds the current model and a session
of the chosen backend; the parent sends objectives and options and waits for each result for at
most the solve's time limit plus ``grace``. A solve that does not answer in time ends with its
worker (``SIGKILL``) and returns ``Status.TIME_LIMIT`` with no bound (nothing was proved); the
next solve starts a new worker (about half a second) and sends the model again. One worker per
process is reused by the sessions that follow each other. Workers report their CPU time with
every result (:attr:`GuardedSession.worker_cpu`).
"""
from __future__ import annotations

import atexit
import logging
import os
import pickle
import socket
import subprocess
import sys
import time
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from .base import Session, SolveOptions, SolveResult, Status
from .model import LinearModel, ObjectiveLike, Sense, as_dense_objective

__all__ = ["GuardedSession", "GRACE_SECONDS", "serve"]

logger = logging.getLogger(__name__)

#: how long past its time limit a solve may run before its worker is ended
GRACE_SECONDS = 0.5
#: how long a new worker may take to start (import the solver layer) before it counts as failed
START_SECONDS = 30.0


def serve(fd: int) -> None:
    """The worker's loop (run in the child): load models, solve objectives, report results."""
    from .registry import get_backend

    conn = Connection(fd)
    session = None
    n = 0
    try:
        conn.send(("ready", time.process_time()))
        while True:
            msg = conn.recv()
            if msg is None:
                break
            if msg[0] == "sleep":  # tests: a solve that does not answer in time
                time.sleep(float(msg[1]))
                continue
            if msg[0] == "model":
                _, backend, model, options = msg
                if session is not None:
                    session.close()
                session, n = get_backend(backend).session(model, options), model.num_vars
                continue
            _, idx, val, sense, offset, opts, keep = msg
            c = np.zeros(n)
            c[idx] = val
            session.set_objective(c, sense, offset)  # type: ignore[union-attr]
            res = session.solve(opts)  # type: ignore[union-attr]
            conn.send((res if keep else res.without_arrays(), time.process_time()))
    except (EOFError, OSError, KeyboardInterrupt):
        pass


class _Worker:
    """One worker process and the connection to it."""

    def __init__(self) -> None:
        parent, child = socket.socketpair()
        # where absint is found: the checkout root (solvers/ beside absint/) or site-packages (absint/solvers/)
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        if os.path.basename(root) == "absint":
            root = os.path.dirname(root)
        env = dict(os.environ)
        # the worker imports absint the way this process did (a source checkout or an install)
        env["PYTHONPATH"] = os.pathsep.join([p for p in (root, *sys.path, env.get("PYTHONPATH", "")) if p])
        env["OMP_NUM_THREADS"] = "1"
        code = f"from absint.solvers.guarded import serve; serve({child.fileno()})"
        self.proc = subprocess.Popen([sys.executable, "-c", code], pass_fds=(child.fileno(),), env=env,
                                     stdin=subprocess.DEVNULL)
        child.close()
        self.conn = Connection(parent.detach())
        self.model_id: int | None = None
        self.cpu = 0.0
        if not self.conn.poll(START_SECONDS):
            self.kill()
            raise RuntimeError("the solver worker process did not start")
        _, self.cpu = self.conn.recv()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(timeout=5.0)
        except subprocess.TimeoutExpired:  # pragma: no cover
            pass
        self.conn.close()

    def stop(self) -> None:
        try:
            self.conn.send(None)
            self.proc.wait(timeout=2.0)
        except (OSError, ValueError, subprocess.TimeoutExpired):
            pass
        self.kill()


_WORKER: _Worker | None = None


def _worker() -> _Worker:
    global _WORKER
    if _WORKER is None or not _WORKER.alive():
        _WORKER = _Worker()
    return _WORKER


def _end_worker(kill: bool) -> None:
    global _WORKER
    w, _WORKER = _WORKER, None
    if w is not None:
        (w.kill if kill else w.stop)()


atexit.register(_end_worker, False)


class GuardedSession(Session):
    """Solves of one model in a worker process that is ended when a solve overruns (module docstring)."""

    def __init__(self, backend: str, model: LinearModel, options: SolveOptions | None = None, *,
                 grace: float = GRACE_SECONDS, keep_solutions: bool = True) -> None:
        super().__init__(model, options)
        self.backend = backend
        self.grace = float(grace)
        self.keep = keep_solutions
        self.killed = 0  # solves ended by ending the worker
        self.worker_cpu = 0.0  # CPU seconds the workers reported while solving for this session
        self._version = 0  # bumped by model edits: the worker then gets the model again

    def solve(self, options: SolveOptions | None = None) -> SolveResult:
        opts = options or self.options
        m = self._model
        t0 = time.perf_counter()
        # the whole call (a new worker, sending the model, the solve) ends by time_limit + grace
        end = None if opts.time_limit is None else t0 + float(opts.time_limit) + self.grace
        try:
            w = _worker()
            key = id(self) * 1000 + self._version
            if w.model_id != key:
                w.conn.send(("model", self.backend, m, self.options))
                w.model_id = key
            if end is not None:  # the solver gets what is left of its limit
                opts = opts.replace(time_limit=max(0.01, end - self.grace - time.perf_counter()))
            c = np.asarray(m.objective)
            idx = np.flatnonzero(c)
            w.conn.send(("solve", idx, c[idx], m.sense, m.offset, opts, self.keep))
            if w.conn.poll(None if end is None else max(0.0, end - time.perf_counter())):
                res, cpu = w.conn.recv()
                self.worker_cpu += cpu - w.cpu
                w.cpu = cpu
                return res
        except (EOFError, OSError, RuntimeError, pickle.PicklingError) as exc:  # the worker died: nothing proved
            _end_worker(kill=True)
            return SolveResult(Status.ERROR, backend=self.backend, sense=m.sense, is_mip=m.is_mip,
                               runtime=time.perf_counter() - t0, message=f"solver process failed: {exc}")
        except BaseException:
            _end_worker(kill=True)  # interrupted while waiting (e.g. a hard time limit): end the solve too
            raise
        _end_worker(kill=True)
        self.killed += 1
        logger.info("solve of %r ended with its process after %.2f s (limit %s s)", m.name,
                    time.perf_counter() - t0, opts.time_limit)
        return SolveResult(Status.TIME_LIMIT, backend=self.backend, sense=m.sense, is_mip=m.is_mip,
                           runtime=time.perf_counter() - t0,
                           message=f"ended {self.grace:g} s after its time limit (solver process stopped)")

    def set_objective(self, c: ObjectiveLike, sense: Sense | str = Sense.MINIMIZE, offset: float = 0.0, *,
                      warm: bool = False) -> None:
        self._model.set_objective(as_dense_objective(c, self._model.num_vars), sense, offset)

    def set_var_bounds(self, idx: Any, lb: Any = None, ub: Any = None) -> None:
        self._model.set_var_bounds(idx, lb, ub)
        self._version += 1

    def add_cuts(self, A: Any, lo: Any = -np.inf, hi: Any = np.inf, *, cols: Any = None) -> np.ndarray:
        rows = self._model.add_cuts(A, lo, hi, cols=cols)
        self._version += 1
        return rows

    def close(self) -> None:
        """The worker stays for the next session (its model is replaced then)."""
