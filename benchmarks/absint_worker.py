"""One absint revision in its own interpreter, for benchmarks that compare revisions side by side.

Started by :class:`benchlib.LineWorker` as ``python benchmarks/absint_worker.py`` with ``PYTHONPATH``
set to the checkout to measure (a ``git worktree`` of another revision, or this one), so the
``absint`` it imports is that checkout's. It uses only the public API every revision has
(``absint.load_network``, ``absint.get_analysis``, ``Analysis.bound``). Requests, one JSON per line:

* ``hello()`` — where ``absint`` was imported from, torch version and threads;
* ``load(onnx, analyses={key: options}, threads, device)`` — the network and the analyses; in
  ``options``, ``analysis`` names the analysis when the key is only a label (two variants of one
  analysis side by side) and a dict ``domain_options`` becomes the domain's options object;
* ``predict(x, shape)`` — the network's class of each input;
* ``bound(analysis, lo, hi, C, shape, d=None, timeout=None)`` — proved lower bounds of ``C y + d``
  on the box, with the CPU (``time.process_time``) and wall seconds of the ``bound`` call alone;
  with ``timeout`` (seconds) the analysis gets that deadline, and a ``TimeoutError`` it raises is
  answered with ``lb: null, timed_out: true`` (no proof).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import BenchError, serve  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

import absint  # noqa: E402  (from PYTHONPATH: the checkout being measured)


class Worker:
    def __init__(self) -> None:
        self.graph = None
        self.analyses: dict[str, Any] = {}

    def hello(self) -> dict[str, Any]:
        return {"absint_file": absint.__file__, "torch": torch.__version__, "threads": torch.get_num_threads()}

    def load(self, onnx: str, analyses: dict[str, dict[str, Any]], threads: int = 1, device: str = "cpu") -> dict[str, Any]:
        torch.set_num_threads(threads)
        self.graph = absint.load_network(onnx, device=device)
        self.analyses = {key: self._analysis(key, dict(opts), device) for key, opts in analyses.items()}
        return {"input_shape": list(self.graph.input_shape), "output_shape": list(self.graph.output_shape)}

    @staticmethod
    def _analysis(key: str, opts: dict[str, Any], device: str) -> Any:
        name = opts.pop("analysis", key)
        dom_opts = opts.get("domain_options")
        if isinstance(dom_opts, dict):  # e.g. {"fp_margin": 0.0}: the domain's own options class
            probe = absint.get_analysis(name, device=device)
            opts["domain_options"] = type(probe.domain).options_class(**dom_opts)
        return absint.get_analysis(name, device=device, **opts)

    def predict(self, x: list, shape: list[int]) -> dict[str, Any]:
        with torch.no_grad():
            y = self.graph.forward(torch.as_tensor(np.asarray(x, dtype=np.float64).reshape(shape)))
        return {"labels": y.reshape(shape[0], -1).argmax(1).tolist()}

    def bound(self, analysis: str, lo: list, hi: list, C: list, shape: list[int], d: list | None = None,
              timeout: float | None = None) -> dict[str, Any]:
        if analysis not in self.analyses:
            raise BenchError(f"analysis {analysis!r} was not loaded")
        an = self.analyses[analysis]
        lo_t = torch.as_tensor(np.asarray(lo, dtype=np.float64).reshape(shape))
        hi_t = torch.as_tensor(np.asarray(hi, dtype=np.float64).reshape(shape))
        C_t = torch.as_tensor(np.asarray(C, dtype=np.float64))
        d_t = (torch.zeros(C_t.shape[:2], dtype=torch.float64) if d is None
               else torch.as_tensor(np.asarray(d, dtype=np.float64).reshape(C_t.shape[:2])))
        c0, w0 = time.process_time(), time.perf_counter()
        deadline = None if timeout is None else w0 + timeout
        try:
            res = an.bound(self.graph, lo_t, hi_t, C_t, d_t, deadline=deadline)
        except TimeoutError:
            return {"lb": None, "timed_out": True, "cpu": time.process_time() - c0, "wall": time.perf_counter() - w0}
        if an.device.type == "cuda":
            torch.cuda.synchronize()
        cpu, wall = time.process_time() - c0, time.perf_counter() - w0
        return {"lb": np.asarray(res.lower).tolist(), "cpu": cpu, "wall": wall, "timed_out": False}


if __name__ == "__main__":
    w = Worker()
    serve({"hello": w.hello, "load": w.load, "predict": w.predict, "bound": w.bound})
