"""Re-checking a counterexample the way the network is really run: float64 *and* float32.

absint's proofs are about real arithmetic on the stored weights; a deployed network runs in
float32 (onnxruntime for ONNX models), which can differ from real arithmetic by its own rounding
(relative ~1e-7 per layer, more after cancellation). A counterexample is therefore reported only
when it holds in both evaluations:

1. the candidate is moved onto the float32 grid inside the input box (:func:`float32_point`; a
   float32 network cannot even read a point that is not a float32 number);
2. float64: :meth:`Graph.forward` on the lowered network (weights in float64);
3. float32: onnxruntime on the original ONNX file when the network came from one and
   onnxruntime is installed (``graph.meta["onnx_source"]``), else the lowered network in float32
   torch (``Graph.to(dtype=torch.float32)``).

Both must satisfy some clause of the violation DNF (``A y + b ≥ 0`` row by row).
"""
from __future__ import annotations

import logging
import threading
import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from absint.ir import Graph, run_op
from absint.specs import InputBox, OutputProperty

log = logging.getLogger(__name__)

__all__ = ["Recheck", "float32_point", "recheck", "float32_outputs"]


@dataclass
class Recheck:
    """Outcome of :func:`recheck`: ``ok`` iff ``x`` is in the box and violates the property in both
    float64 (``y``) and float32 (``y32``, evaluated by ``how``)."""

    ok: bool
    x: np.ndarray
    y: np.ndarray
    y32: np.ndarray | None = None
    how: str = ""
    reason: str = ""


def float32_point(x: np.ndarray, region: InputBox) -> np.ndarray | None:
    """The float32 number nearest to each coordinate of ``x`` that lies in ``[lower, upper]``
    (returned as float64), or None when some interval holds no float32 number."""
    x = np.asarray(x, dtype=np.float64).reshape(region.shape)
    lo, hi = region.lower, region.upper
    x32 = np.clip(x, lo, hi).astype(np.float32)
    below = x32.astype(np.float64) < lo
    x32 = np.where(below, np.nextafter(x32, np.float32(np.inf)), x32)
    above = x32.astype(np.float64) > hi
    x32 = np.where(above, np.nextafter(x32, np.float32(-np.inf)), x32)
    out = x32.astype(np.float64)
    if np.any(out < lo) or np.any(out > hi) or not np.all(np.isfinite(out)):
        return None
    return out


_ORT_LOCK = threading.Lock()
_ORT_SESSIONS: dict[Any, Any] = {}
_GRAPH32: "weakref.WeakKeyDictionary[Graph, Graph]" = weakref.WeakKeyDictionary()


def _ort_session(source: Any):
    """An onnxruntime session for ``source`` (path or bytes), cached; None without onnxruntime."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    key = source if isinstance(source, str) else id(source)
    with _ORT_LOCK:
        hit = _ORT_SESSIONS.get(key)
        if hit is None or (not isinstance(source, str) and hit[0] is not source):
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = 1
            opts.log_severity_level = 3
            sess = ort.InferenceSession(source if isinstance(source, str) else bytes(source), opts,
                                        providers=["CPUExecutionProvider"])
            hit = (source, sess)
            if len(_ORT_SESSIONS) > 16:
                _ORT_SESSIONS.clear()
            _ORT_SESSIONS[key] = hit
    return hit[1]


def _onnx_outputs(graph: Graph, x: np.ndarray) -> np.ndarray | None:
    source = graph.meta.get("onnx_source")
    if source is None:
        return None
    try:
        sess = _ort_session(source)
        if sess is None or len(sess.get_inputs()) != 1:
            return None
        inp = sess.get_inputs()[0]
        shape = inp.shape
        static = all(isinstance(s, int) and s > 0 for s in shape)
        if static and int(np.prod(shape)) == x.size:
            feed = x.reshape(shape)
        else:
            feed = x.reshape(1, *graph.input_shape) if len(shape) == len(graph.input_shape) + 1 \
                else x.reshape(graph.input_shape)
        out = sess.run(None, {inp.name: feed.astype(np.float32)})[0]
        return np.asarray(out, dtype=np.float64).reshape(-1)
    except Exception as exc:  # noqa: BLE001 - fall back to the float32 torch evaluation
        log.info("onnxruntime could not re-run the counterexample (%s: %s); using float32 torch",
                 type(exc).__name__, exc)
        return None


def float32_outputs(graph: Graph, x: np.ndarray) -> tuple[np.ndarray, str]:
    """The network's outputs at ``x`` (a float32-representable input) evaluated in float32:
    ``(y, "onnxruntime")`` or ``(y, "torch float32")``."""
    y = _onnx_outputs(graph, x)
    if y is not None:
        return y, "onnxruntime"
    g32 = _GRAPH32.get(graph)
    if g32 is None:
        g32 = graph.to(dtype=torch.float32)
        _GRAPH32[graph] = g32
    values = {g32.input.name: torch.as_tensor(x.reshape(1, *graph.input_shape), dtype=torch.float32,
                                              device=g32.device)}
    with torch.no_grad():
        for node in g32.nodes[1:]:
            args = [values[a] for a in node.inputs]
            try:
                out = run_op(node, args)
            except RuntimeError:  # an op that kept float64 constants: run it so, round its output
                out = run_op(node, [a.double() for a in args])
            values[node.name] = out.float()
    return values[g32.output].reshape(-1).double().cpu().numpy(), "torch float32"


def recheck(graph: Graph, region: InputBox, prop: OutputProperty, x: np.ndarray) -> Recheck:
    """Re-run a candidate counterexample in float64 and float32 (see the module docstring)."""
    xf = float32_point(x, region)
    if xf is None:
        x = np.asarray(x, dtype=np.float64).reshape(region.shape)
        return Recheck(False, x, np.empty(0), reason="no float32 input inside the box next to it")
    with torch.no_grad():
        y = graph.forward(torch.as_tensor(xf[None], dtype=torch.float64, device=graph.device)).reshape(-1).cpu().numpy()
    if not prop.violated_by(y):
        return Recheck(False, xf, y, reason="no violation in float64")
    y32, how = float32_outputs(graph, xf)
    if y32.size != y.size:
        return Recheck(False, xf, y, y32, how, reason=f"{how} gave {y32.size} outputs, expected {y.size}")
    if not prop.violated_by(y32):
        return Recheck(False, xf, y, y32, how, reason=f"no violation in float32 ({how})")
    return Recheck(True, xf, y, y32, how)
