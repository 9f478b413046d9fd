"""PyTorch frontend: ``nn.Sequential`` (and nested Sequentials) of common layers, lowered natively.

Supported layers: Linear, Conv2d, ReLU, Sigmoid, Tanh, MaxPool2d, AvgPool2d, BatchNorm1d/2d
(eval statistics, folded), Flatten, Unflatten, Dropout, Identity, and a final Softmax (dropped).
Any other module (residual blocks, custom ``forward``) goes through ``torch.onnx.export`` and the
ONNX frontend, so the same IR and the same unsupported-op report apply.
"""
from __future__ import annotations

import copy
import io
import logging

import torch
from torch import nn

from absint.errors import ModelError, UnsupportedOpError
from absint.frontends.normalize import normalize
from absint.ir import Affine, Graph, Input, MaxPool2d, Op, Relu, Reshape, Sigmoid, Tanh
from absint.linear import ConvOperator, DenseOperator, DiagonalOperator

log = logging.getLogger(__name__)

_SIMPLE = (nn.Linear, nn.Conv2d, nn.ReLU, nn.Sigmoid, nn.Tanh, nn.MaxPool2d, nn.AvgPool2d, nn.BatchNorm1d,
           nn.BatchNorm2d, nn.Flatten, nn.Unflatten, nn.Dropout, nn.Identity, nn.Softmax, nn.Sequential)


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _flatten_modules(module: nn.Module) -> list[tuple[str, nn.Module]]:
    out = []
    for name, child in module.named_children():
        if isinstance(child, nn.Sequential):
            out += [(f"{name}.{n}", m) for n, m in _flatten_modules(child)]
        else:
            out.append((name, child))
    return out


def _lower_sequential(model: nn.Sequential, input_shape: tuple[int, ...]) -> Graph:
    layers = _flatten_modules(model)
    bad = [(n, type(m).__name__, "layer type not supported natively") for n, m in layers if not isinstance(m, _SIMPLE)]
    if bad:
        raise UnsupportedOpError(bad, "torch module")
    no_stats = [(n, type(m).__name__, "batch normalisation without running statistics (its output depends on "
                                      "the batch)") for n, m in layers
                if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) and m.running_var is None]
    if no_stats:
        raise UnsupportedOpError(no_stats, "torch module")
    f64 = lambda t: t.detach().to(torch.float64).cpu()  # noqa: E731
    nodes: list[Op] = [Input("input", (), tuple(input_shape))]
    shape = tuple(input_shape)
    x = torch.zeros(1, *input_shape, dtype=_param_dtype(model))
    softmax_seen = False
    for idx, (name, m) in enumerate(layers):
        prev = nodes[-1].name
        try:
            with torch.no_grad():
                x = m(x)
        except RuntimeError as exc:
            raise ModelError(f"torch module: layer {name} ({type(m).__name__}) does not accept the output of the "
                             f"layers before it for input_shape {tuple(input_shape)}: {exc}") from exc
        out_shape = tuple(x.shape[1:])
        if softmax_seen:
            raise UnsupportedOpError([(name, type(m).__name__, "layers after Softmax")], "torch module")
        if isinstance(m, nn.Linear):
            nodes.append(Affine(name, (prev,), out_shape, DenseOperator(f64(m.weight)),
                                None if m.bias is None else f64(m.bias)))
        elif isinstance(m, nn.Conv2d):
            if isinstance(m.padding, str) or m.padding_mode != "zeros":
                raise UnsupportedOpError([(name, "Conv2d", f"padding={m.padding!r}, mode {m.padding_mode}")], "torch module")
            op = ConvOperator(f64(m.weight), shape, _pair(m.stride), _pair(m.padding), _pair(m.dilation), m.groups)
            nodes.append(Affine(name, (prev,), out_shape, op, None if m.bias is None else f64(m.bias).reshape(-1, 1, 1)))
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            scale = f64(m.weight if m.affine else torch.ones_like(m.running_var)) / torch.sqrt(f64(m.running_var) + m.eps)
            shift = (f64(m.bias) if m.affine else 0.0) - f64(m.running_mean) * scale
            extra = (1,) * (len(shape) - 1)
            nodes.append(Affine(name, (prev,), out_shape, DiagonalOperator(scale.reshape(-1, *extra), shape),
                                shift.reshape(-1, *extra)))
        elif isinstance(m, nn.AvgPool2d):
            if not m.count_include_pad and _pair(m.padding) != (0, 0) or m.ceil_mode or m.divisor_override:
                raise UnsupportedOpError([(name, "AvgPool2d", "count_include_pad=False with padding, ceil_mode or "
                                                              "divisor_override")], "torch module")
            k = _pair(m.kernel_size)
            c = shape[0]
            op = ConvOperator(torch.full((c, 1, *k), 1.0 / (k[0] * k[1]), dtype=torch.float64), shape,
                              _pair(m.stride or m.kernel_size), _pair(m.padding), (1, 1), c)
            nodes.append(Affine(name, (prev,), out_shape, op, None))
        elif isinstance(m, nn.MaxPool2d):
            if _pair(m.dilation) != (1, 1) or m.ceil_mode or m.return_indices:
                raise UnsupportedOpError([(name, "MaxPool2d", "dilation, ceil_mode or return_indices")], "torch module")
            nodes.append(MaxPool2d(name, (prev,), out_shape, _pair(m.kernel_size), _pair(m.stride or m.kernel_size),
                                   _pair(m.padding)))
        elif isinstance(m, (nn.ReLU, nn.Sigmoid, nn.Tanh)):
            cls = {nn.ReLU: Relu, nn.Sigmoid: Sigmoid, nn.Tanh: Tanh}[type(m)]
            nodes.append(cls(name, (prev,), out_shape))
        elif isinstance(m, (nn.Flatten, nn.Unflatten)):
            nodes.append(Reshape(name, (prev,), out_shape))
        elif isinstance(m, nn.Softmax):
            if idx != len(layers) - 1:
                raise UnsupportedOpError([(name, "Softmax", "Softmax only as the last layer")], "torch module")
            dim = m.dim if m.dim is not None else (0 if x.dim() in (0, 1, 3) else 1)  # torch's implicit dim
            if any(d != 1 for i, d in enumerate(x.shape) if i != dim % x.dim()):
                # dropping it keeps comparisons between outputs only inside one normalised group
                raise UnsupportedOpError([(name, "Softmax", f"Softmax over dim {m.dim} of outputs of shape "
                                                            f"{list(x.shape)} normalises several groups separately "
                                                            "(only a Softmax over all outputs can be dropped)")],
                                         "torch module")
            softmax_seen = True
        shape = out_shape
    graph = Graph(tuple(nodes), nodes[-1].name, type(model).__name__, {"output_softmax": softmax_seen,
                                                                        "source": "torch"})
    return normalize(graph)


def _param_dtype(model: nn.Module) -> torch.dtype:
    """The floating-point type of the module's first parameter (``float32`` without any)."""
    for t in model.parameters():
        if t.is_floating_point():
            return t.dtype
    return torch.float32


def load_torch(model: nn.Module, input_shape: tuple[int, ...]) -> Graph:
    """Lower a torch module to the IR; ``input_shape`` excludes the batch axis.

    The module is analysed in eval mode and is left as it was given (training flag and dtype):
    the lowering and its reference check work on a copy."""
    model = copy.deepcopy(model).eval()
    if isinstance(model, nn.Sequential):
        graph = _lower_sequential(model, tuple(input_shape))
    else:
        from absint.frontends.onnx_loader import load_onnx

        import warnings

        buf = io.BytesIO()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                torch.onnx.export(model.float(), torch.zeros(1, *input_shape), buf, input_names=["input"],
                                  output_names=["output"], opset_version=13, dynamo=False)
        except Exception as exc:
            raise ModelError(f"could not export {type(model).__name__} to ONNX for analysis: {exc}") from exc
        graph = load_onnx(buf.getvalue())
    with torch.no_grad():
        x = torch.rand(4, *input_shape)
        try:
            ref = model.double()(x.double()) if isinstance(model, nn.Sequential) else model.float()(x).double()
        except RuntimeError as exc:
            raise ModelError(f"{type(model).__name__} does not run on inputs of shape {tuple(input_shape)}: "
                             f"{exc}") from exc
        if graph.meta.get("output_softmax"):
            ref = None  # the graph has the softmax dropped
        if ref is not None:
            got = graph.forward(x.double())
            if not torch.allclose(got.reshape(ref.shape), ref, atol=1e-4, rtol=1e-4):
                raise ModelError(f"lowering of {type(model).__name__} does not reproduce its outputs "
                                 f"(max diff {(got.reshape(ref.shape) - ref).abs().max():.3g})")
    return graph
