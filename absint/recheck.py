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
from typing import Any, Sequence

import numpy as np
import torch

from absint.ir import Graph, run_op
from absint.specs import InputBox, OutputProperty

log = logging.getLogger(__name__)

__all__ = ["Recheck", "float32_point", "recheck", "float32_outputs", "onnxruntime_outputs", "torch_float32_outputs"]


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


def _ort_session(source: Any, extra_outputs: tuple[str, ...] = ()):
    """An onnxruntime session for ``source`` (path or bytes) that also returns the tensors
    ``extra_outputs`` (hidden tensors made graph outputs), cached; None without onnxruntime."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    key = (source if isinstance(source, str) else id(source), extra_outputs)
    with _ORT_LOCK:
        hit = _ORT_SESSIONS.get(key)
        if hit is None or (not isinstance(source, str) and hit[0] is not source):
            model: Any = source if isinstance(source, str) else bytes(source)
            if extra_outputs:
                import onnx

                proto = onnx.load(source) if isinstance(source, str) else onnx.load_from_string(bytes(source))
                present = {o.name for o in proto.graph.output}
                for name in extra_outputs:
                    if name not in present:
                        proto.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
                model = proto.SerializeToString()
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = 1
            opts.log_severity_level = 3
            sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
            hit = (source, sess)
            if len(_ORT_SESSIONS) > 16:
                _ORT_SESSIONS.clear()
            _ORT_SESSIONS[key] = hit
    return hit[1]


def onnxruntime_outputs(source: Any, inputs: Sequence[np.ndarray], input_names: Sequence[str] | None = None,
                        output_names: Sequence[str] | None = None) -> list[np.ndarray] | None:
    """Run the ONNX model ``source`` (path or bytes) with onnxruntime, the way it is deployed: each
    array of ``inputs`` fed to the input named alike in ``input_names`` (default: the model's
    inputs in order) in that input's element type (float32 for float32 models) and shape (dynamic
    axes as 1). Returns the tensors ``output_names`` (default: the model's outputs; hidden tensors
    may be named) as flat float64 arrays, or None when onnxruntime is missing or cannot run it."""
    try:
        sess = _ort_session(source, tuple(n for n in (output_names or ())))
        if sess is None:
            return None
        metas = sess.get_inputs()
        if input_names is None:
            if len(metas) != len(inputs):
                return None
            chosen = metas
        else:
            by_name = {m.name: m for m in metas}
            chosen = [by_name[n] for n in input_names]
        feeds = {}
        for meta, arr in zip(chosen, inputs):
            arr = np.asarray(arr, dtype=np.float64)
            shape = _feed_shape(meta.shape, arr)
            if shape is None:
                return None
            dtype = np.float64 if "double" in meta.type else np.float16 if "float16" in meta.type else np.float32
            feeds[meta.name] = arr.reshape(shape).astype(dtype)
        outs = sess.run(list(output_names) if output_names is not None else None, feeds)
    except Exception as exc:  # noqa: BLE001 - a model onnxruntime cannot run: the caller falls back
        log.info("onnxruntime could not run %s (%s: %s)", source if isinstance(source, str) else "<bytes>",
                 type(exc).__name__, exc)
        return None
    return [np.asarray(o, dtype=np.float64).reshape(-1) for o in outs]


def _feed_shape(declared: Sequence[Any], arr: np.ndarray) -> tuple[int, ...] | None:
    """The shape to feed ``arr`` as, for an input declared ``declared`` (dynamic axes are names or
    None): the declared one with dynamic axes 1 when the sizes agree, else ``arr``'s own shape (or
    that without a leading batch axis of 1) when it fits the declared static axes; None otherwise."""
    fixed = tuple(d if isinstance(d, int) and d > 0 else 1 for d in declared)
    if int(np.prod(fixed)) == arr.size:
        return fixed
    for cand in (arr.shape, arr.shape[1:] if arr.ndim and arr.shape[0] == 1 else None):
        if cand is not None and len(cand) == len(declared) and all(
                not (isinstance(d, int) and d > 0) or d == c for d, c in zip(declared, cand)):
            return tuple(cand)
    return None


def torch_float32_outputs(graph: Graph, x: np.ndarray) -> np.ndarray:
    """The lowered network's output at ``x`` evaluated in float32 torch (ops that keep float64
    constants run so, their outputs rounded to float32): the float32 re-run of a network that did
    not come from an ONNX file onnxruntime can run."""
    g32 = _GRAPH32.get(graph)
    if g32 is None:
        g32 = graph.to(dtype=torch.float32)
        _GRAPH32[graph] = g32
    values = {g32.input.name: torch.as_tensor(np.asarray(x).reshape(1, *graph.input_shape), dtype=torch.float32,
                                              device=g32.device)}
    with torch.no_grad():
        for node in g32.nodes[1:]:
            args = [values[a] for a in node.inputs]
            try:
                out = run_op(node, args)
            except RuntimeError:  # an op that kept float64 constants: run it so, round its output
                out = run_op(node, [a.double() for a in args])
            values[node.name] = out.float()
    return values[g32.output].reshape(-1).double().cpu().numpy()


def float32_outputs(graph: Graph, x: np.ndarray) -> tuple[np.ndarray, str]:
    """The network's outputs at ``x`` (a float32-representable input) evaluated in float32:
    ``(y, "onnxruntime")`` on the original ONNX file (``graph.meta["onnx_source"]``, a single-input
    model) or ``(y, "torch float32")``."""
    source = graph.meta.get("onnx_source")
    if source is not None:
        ys = onnxruntime_outputs(source, [np.asarray(x, dtype=np.float64).reshape(1, *graph.input_shape)])
        if ys is not None and len(ys) == 1:
            return ys[0], "onnxruntime"
    return torch_float32_outputs(graph, x), "torch float32"


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
