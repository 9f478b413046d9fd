"""Linear operators: one abstraction for every linear map in a network.

Domains see dense layers, convolutions and element-wise scalings through the same interface, so
a transformer written once (``W x``, ``Wᵀ λ`` for back-substitution, ``|W| r`` for radii) works on
all of them. Convolutions are never expanded to dense matrices: ``transpose`` applies the adjoint
with ``conv_transpose2d``, keeping memory proportional to the layer sizes (as DeepPoly requires
for ConvSmall/ConvBig-sized networks).

All operators act on the trailing dimensions: ``forward`` maps ``[..., *in_shape]`` to
``[..., *out_shape]`` and ``transpose`` maps ``[..., *out_shape]`` to ``[..., *in_shape]``, for
any number of leading (batch / constraint) dimensions.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
import torch.nn.functional as F

Shape = tuple[int, ...]


def numel(shape: Shape) -> int:
    """Number of elements of a tensor of ``shape`` (1 for the empty shape)."""
    return int(math.prod(shape))


class LinearOperator(ABC):
    """A linear map between tensors of fixed shapes (bias kept separately by the op)."""

    in_shape: Shape
    out_shape: Shape

    @abstractmethod
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the map to ``x`` of shape ``[..., *in_shape]``."""

    @abstractmethod
    def transpose(self, y: torch.Tensor) -> torch.Tensor:
        """Apply the adjoint to ``y`` of shape ``[..., *out_shape]``."""

    @abstractmethod
    def abs(self) -> "LinearOperator":
        """The operator with every coefficient replaced by its absolute value."""

    @abstractmethod
    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "LinearOperator":
        """A copy on another device / dtype (the operator itself when nothing changes, so that
        quantities memoised per operator object survive ``Graph.to``)."""

    def dense(self) -> torch.Tensor:
        """The matrix ``[numel(out), numel(in)]`` (only for small layers, tests and LP encodings)."""
        n_in = numel(self.in_shape)
        eye = torch.eye(n_in, dtype=self._dtype(), device=self._device()).reshape(n_in, *self.in_shape)
        return self.forward(eye).reshape(n_in, -1).T.contiguous()

    def _dtype(self) -> torch.dtype:
        return torch.float64

    def _device(self) -> torch.device:
        return torch.device("cpu")


def _split_leading(x: torch.Tensor, trailing: Shape) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Flatten the leading dimensions of ``x`` (all but ``len(trailing)`` last ones) into one."""
    lead = tuple(x.shape[: x.dim() - len(trailing)])
    return x.reshape(-1, *trailing), lead


@dataclass(frozen=True, eq=False)
class DenseOperator(LinearOperator):
    """``y = W x`` with ``W`` of shape ``[n_out, n_in]`` acting on flat vectors."""

    weight: torch.Tensor

    @property
    def in_shape(self) -> Shape:  # type: ignore[override]
        return (int(self.weight.shape[1]),)

    @property
    def out_shape(self) -> Shape:  # type: ignore[override]
        return (int(self.weight.shape[0]),)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight.T

    def transpose(self, y: torch.Tensor) -> torch.Tensor:
        return y @ self.weight

    def abs(self) -> "DenseOperator":
        return DenseOperator(self.weight.abs())

    def to(self, device=None, dtype=None) -> "DenseOperator":
        w = self.weight.to(device=device, dtype=dtype)
        return self if w is self.weight else DenseOperator(w)

    def dense(self) -> torch.Tensor:
        return self.weight

    def _dtype(self) -> torch.dtype:
        return self.weight.dtype

    def _device(self) -> torch.device:
        return self.weight.device


@dataclass(frozen=True, eq=False)
class ConvOperator(LinearOperator):
    """2-D convolution (no bias) on ``[C, H, W]`` tensors; adjoint via ``conv_transpose2d``."""

    weight: torch.Tensor  # [C_out, C_in / groups, kH, kW]
    in_shape: Shape  # type: ignore[assignment]
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1

    @property
    def out_shape(self) -> Shape:  # type: ignore[override]
        _, h, w = self.in_shape
        kh, kw = self.weight.shape[2:]
        oh = (h + 2 * self.padding[0] - self.dilation[0] * (kh - 1) - 1) // self.stride[0] + 1
        ow = (w + 2 * self.padding[1] - self.dilation[1] * (kw - 1) - 1) // self.stride[1] + 1
        return (int(self.weight.shape[0]), int(oh), int(ow))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat, lead = _split_leading(x, self.in_shape)
        out = F.conv2d(flat, self.weight, None, self.stride, self.padding, self.dilation, self.groups)
        return out.reshape(*lead, *out.shape[1:])

    def transpose(self, y: torch.Tensor) -> torch.Tensor:
        flat, lead = _split_leading(y, self.out_shape)
        _, h, w = self.in_shape
        kh, kw = self.weight.shape[2:]
        # output_padding recovers the input rows/cols that the strided forward pass skipped.
        base_h = (self.out_shape[1] - 1) * self.stride[0] - 2 * self.padding[0] + self.dilation[0] * (kh - 1) + 1
        base_w = (self.out_shape[2] - 1) * self.stride[1] - 2 * self.padding[1] + self.dilation[1] * (kw - 1) + 1
        out = F.conv_transpose2d(
            flat, self.weight, None, self.stride, self.padding, (h - base_h, w - base_w), self.groups, self.dilation
        )
        return out.reshape(*lead, *self.in_shape)

    def abs(self) -> "ConvOperator":
        return ConvOperator(self.weight.abs(), self.in_shape, self.stride, self.padding, self.dilation, self.groups)

    def to(self, device=None, dtype=None) -> "ConvOperator":
        w = self.weight.to(device=device, dtype=dtype)
        if w is self.weight:
            return self
        return ConvOperator(w, self.in_shape, self.stride, self.padding, self.dilation, self.groups)

    def _dtype(self) -> torch.dtype:
        return self.weight.dtype

    def _device(self) -> torch.device:
        return self.weight.device


@dataclass(frozen=True, eq=False)
class DiagonalOperator(LinearOperator):
    """Element-wise scaling ``y = s ⊙ x``; ``scale`` broadcasts against ``shape``."""

    scale: torch.Tensor
    shape: Shape

    @property
    def in_shape(self) -> Shape:  # type: ignore[override]
        return self.shape

    @property
    def out_shape(self) -> Shape:  # type: ignore[override]
        return self.shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale

    def transpose(self, y: torch.Tensor) -> torch.Tensor:
        return y * self.scale

    def abs(self) -> "DiagonalOperator":
        return DiagonalOperator(self.scale.abs(), self.shape)

    def to(self, device=None, dtype=None) -> "DiagonalOperator":
        s = self.scale.to(device=device, dtype=dtype)
        return self if s is self.scale else DiagonalOperator(s, self.shape)

    def _dtype(self) -> torch.dtype:
        return self.scale.dtype

    def _device(self) -> torch.device:
        return self.scale.device


@dataclass(frozen=True, eq=False)
class PermuteOperator(LinearOperator):
    """A permutation of the (non-batch) axes, e.g. an ONNX Transpose that keeps the batch axis."""

    perm: tuple[int, ...]  # permutation of range(len(in_shape))
    in_shape: Shape  # type: ignore[assignment]

    @property
    def out_shape(self) -> Shape:  # type: ignore[override]
        return tuple(self.in_shape[p] for p in self.perm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = x.dim() - len(self.in_shape)
        return x.permute(*range(k), *(k + p for p in self.perm))

    def transpose(self, y: torch.Tensor) -> torch.Tensor:
        inverse = [0] * len(self.perm)
        for i, p in enumerate(self.perm):
            inverse[p] = i
        k = y.dim() - len(self.in_shape)
        return y.permute(*range(k), *(k + p for p in inverse))

    def abs(self) -> "PermuteOperator":
        return self

    def to(self, device=None, dtype=None) -> "PermuteOperator":
        return self
