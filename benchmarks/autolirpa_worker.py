"""auto_LiRPA side of ``engine_vs_autolirpa.py``: runs in the peer's own interpreter (never imports absint).

Started by :class:`benchlib.LineWorker` as ``<peer python> benchmarks/autolirpa_worker.py``; answers
one JSON request per line:

* ``load(onnx, threads, device)`` — builds a torch ``nn.Sequential`` (Sub/Div normalisation, Conv2d,
  ReLU, Flatten, Linear) from the ONNX weights, float64;
* ``forward(x, shape)`` — logits (the driver checks them against absint's);
* ``bound(method, x, lo, hi, C, shape, conv_mode, opts)`` — lower bounds of ``C y`` over the box
  ``[lo, hi]`` with ``method`` ``"backward"`` (CROWN) or ``"CROWN-Optimized"`` (alpha-CROWN),
  timed inside this process (``time.process_time`` and ``time.perf_counter`` around
  ``compute_bounds`` only; the ``BoundedModule`` is built once per setting, before).

auto_LiRPA is the peer of the side-by-side benchmark only (../shared/peers/README.md); nothing
of it is part of absint.
"""
from __future__ import annotations

import logging
import sys
import time
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import BenchError, serve  # noqa: E402

warnings.filterwarnings("ignore")
logging.basicConfig(level=logging.WARNING, stream=sys.stderr)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402


class Const(nn.Module):
    """``x − c`` or ``x / c`` with a constant tensor (ONNX Sub/Div normalisation)."""

    def __init__(self, op: str, c: np.ndarray) -> None:
        super().__init__()
        self.op = op
        self.register_buffer("c", torch.as_tensor(c, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.op == "Sub":
            return x - self.c
        if self.op == "Add":
            return x + self.c
        if self.op == "Mul":
            return x * self.c
        return x / self.c


def _attrs(node) -> dict[str, Any]:
    import onnx

    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def sequential_from_onnx(path: str) -> tuple[nn.Sequential, list[int]]:
    """A chain network (the ERAN MNIST nets, the bundled digits MLP) as a float64 ``nn.Sequential``.

    Returns the model and the input shape without the batch axis.
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load(path)
    g = model.graph
    inits = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in g.initializer}
    for node in g.node:  # Constant nodes hold weights in some exports
        if node.op_type == "Constant":
            inits[node.output[0]] = numpy_helper.to_array(_attrs(node)["value"]).astype(np.float64)
    inputs = [i for i in g.input if i.name not in inits]
    if len(inputs) != 1:
        raise BenchError(f"{path}: expected one network input, found {len(inputs)}")
    dims = [d.dim_value for d in inputs[0].type.tensor_type.shape.dim][1:]
    cur = inputs[0].name
    layers: list[nn.Module] = []
    pending_linear: nn.Linear | None = None
    for node in g.node:
        if node.op_type == "Constant":
            continue
        data_in = [i for i in node.input if i and i not in inits]
        if data_in != [cur]:
            raise BenchError(f"{path}: not a chain at node {node.name or node.op_type} (inputs {list(node.input)})")
        consts = [inits[i] for i in node.input if i in inits]
        a = _attrs(node)
        op = node.op_type
        if op == "Add" and pending_linear is not None:  # MatMul + Add = Linear with bias
            pending_linear.bias.data = torch.as_tensor(consts[0].reshape(-1), dtype=torch.float64)
        elif op in ("Sub", "Div", "Add", "Mul"):
            if len(consts) != 1 or node.input[0] != cur:
                raise BenchError(f"{path}: {op} must be (data, constant)")
            layers.append(Const(op, consts[0]))
        elif op == "Conv":
            w = consts[0]
            b = consts[1] if len(consts) > 1 else np.zeros(w.shape[0])
            pads = a.get("pads", [0, 0, 0, 0])
            if pads[0] != pads[2] or pads[1] != pads[3]:
                raise BenchError(f"{path}: asymmetric conv padding {pads}")
            conv = nn.Conv2d(w.shape[1] * a.get("group", 1), w.shape[0], tuple(w.shape[2:]),
                             stride=tuple(a.get("strides", [1, 1])), padding=(pads[0], pads[1]),
                             dilation=tuple(a.get("dilations", [1, 1])), groups=a.get("group", 1)).double()
            conv.weight.data = torch.as_tensor(w)
            conv.bias.data = torch.as_tensor(b)
            layers.append(conv)
        elif op == "Relu":
            layers.append(nn.ReLU())
        elif op in ("Flatten", "Reshape"):
            layers.append(nn.Flatten())
        elif op == "Gemm":
            w, b = consts[0], consts[1] if len(consts) > 1 else None
            if a.get("transA", 0):
                raise BenchError(f"{path}: Gemm with transA")
            w = w if a.get("transB", 0) else w.T
            w = w * a.get("alpha", 1.0)
            lin = nn.Linear(w.shape[1], w.shape[0]).double()
            lin.weight.data = torch.as_tensor(np.ascontiguousarray(w))
            lin.bias.data = torch.as_tensor((b.reshape(-1) if b is not None else np.zeros(w.shape[0])) * a.get("beta", 1.0))
            layers.append(lin)
        elif op == "MatMul":
            w = consts[0]
            lin = nn.Linear(w.shape[0], w.shape[1]).double()
            lin.weight.data = torch.as_tensor(np.ascontiguousarray(w.T))
            lin.bias.data.zero_()
            layers.append(lin)
        else:
            raise BenchError(f"{path}: op {op} is not supported by this converter")
        pending_linear = layers[-1] if op == "MatMul" else None
        cur = node.output[0]
    return nn.Sequential(*layers).double().eval(), dims


class Peer:
    """State of the worker: the model, its ``BoundedModule`` per setting, the library versions."""

    def __init__(self) -> None:
        self.model: nn.Sequential | None = None
        self.shape: list[int] = []
        self.device = torch.device("cpu")
        self.modules: dict[tuple, Any] = {}

    def load(self, onnx: str, threads: int = 1, device: str = "cpu") -> dict[str, Any]:
        import auto_LiRPA

        torch.set_num_threads(threads)
        # auto_LiRPA allocates some buffers (alpha-CROWN's best bounds) in the default dtype
        torch.set_default_dtype(torch.float64)
        try:
            torch.set_num_interop_threads(threads)
        except RuntimeError:  # already set
            pass
        self.device = torch.device(device)
        self.model, self.shape = sequential_from_onnx(onnx)
        self.model.to(self.device)
        self.modules = {}
        return {"shape": self.shape, "torch": torch.__version__, "auto_LiRPA": getattr(auto_LiRPA, "__version__", "?"),
                "auto_LiRPA_path": str(Path(auto_LiRPA.__file__).parent), "threads": torch.get_num_threads(),
                "model": str(self.model)}

    def forward(self, x: list, shape: list[int]) -> dict[str, Any]:
        assert self.model is not None
        with torch.no_grad():
            y = self.model(torch.as_tensor(np.asarray(x, dtype=np.float64).reshape(shape), device=self.device))
        return {"y": y.cpu().numpy().tolist()}

    def _module(self, method: str, conv_mode: str, opts: dict[str, Any]):
        from auto_LiRPA import BoundedModule
        from auto_LiRPA.optimized_bounds import default_optimize_bound_args
        from auto_LiRPA.utils import stop_criterion_all

        key = (method, conv_mode, tuple(sorted((k, repr(v)) for k, v in opts.items())))
        if key not in self.modules:
            optimize = {k: v for k, v in opts.items() if k in default_optimize_bound_args}
            top = {k: v for k, v in opts.items() if k not in default_optimize_bound_args}
            # stop as soon as every margin is proved (alpha-beta-CROWN does the same); the
            # iteration budget is the driver's, stated in its output
            optimize.setdefault("stop_criterion_func", stop_criterion_all(0))
            if optimize["stop_criterion_func"] is None:  # the driver's "no early stop"
                optimize["stop_criterion_func"] = lambda x: False
            bound_opts = {"conv_mode": conv_mode, "optimize_bound_args": optimize, **top}
            dummy = torch.zeros([1] + self.shape, dtype=torch.float64, device=self.device)
            self.modules[key] = BoundedModule(self.model, dummy, bound_opts=bound_opts, device=self.device)
        return self.modules[key]

    def bound(self, method: str, x: list, lo: list, hi: list, C: list, shape: list[int],
              conv_mode: str = "patches", opts: dict[str, Any] | None = None) -> dict[str, Any]:
        from auto_LiRPA import BoundedTensor
        from auto_LiRPA.perturbations import PerturbationLpNorm

        if method not in ("backward", "CROWN-Optimized"):
            raise BenchError(f"method {method!r}: use 'backward' (CROWN) or 'CROWN-Optimized' (alpha-CROWN)")
        mod = self._module(method, conv_mode, opts or {})

        def tensor(v):
            return torch.as_tensor(np.asarray(v, dtype=np.float64), device=self.device)

        xt, lot, hit = tensor(x).reshape(shape), tensor(lo).reshape(shape), tensor(hi).reshape(shape)
        Ct = tensor(C)
        ptb = PerturbationLpNorm(norm=float("inf"), x_L=lot, x_U=hit)
        bt = BoundedTensor(xt, ptb)
        sync = torch.cuda.synchronize if self.device.type == "cuda" else (lambda: None)
        c0, w0 = time.process_time(), time.perf_counter()
        if method == "backward":
            with torch.no_grad():
                lb, _ = mod.compute_bounds(x=(bt,), C=Ct, method="backward", bound_upper=False)
        else:
            lb, _ = mod.compute_bounds(x=(bt,), C=Ct, method="CROWN-Optimized", bound_upper=False)
        sync()
        cpu, wall = time.process_time() - c0, time.perf_counter() - w0
        return {"lb": lb.detach().cpu().numpy().tolist(), "cpu": cpu, "wall": wall}


if __name__ == "__main__":
    peer = Peer()
    serve({"load": peer.load, "forward": peer.forward, "bound": peer.bound})
