"""The abstract-domain interface every domain (built-in or plugin) implements.

A domain is a manager of operations over immutable abstract elements (as in APRON/ELINA). The
interpreter walks the network graph and calls one transformer per op; the domain never sees the
graph and never calls a solver.

Required core (abstract methods):

* :meth:`Domain.from_box` — the abstraction of an input box (batched: ``[B, *shape]``),
* :meth:`Domain.affine` — ``y = A x + b`` for any :class:`~absint.linear.LinearOperator`,
* :meth:`Domain.relu`,
* :meth:`Domain.bounds` — concrete lower/upper bounds of every neuron of an element.

Optional transformers have *sound defaults* built on the core (interval reasoning on
:meth:`bounds`), so a new domain works on every supported network from day one and overrides
what it can do more precisely: :meth:`reshape`, :meth:`add`, :meth:`sigmoid`, :meth:`tanh`,
:meth:`maxpool`, :meth:`linear_bounds` (bounds of ``C y + d``, used for the final property check
and for k-ReLU octahedral constraints), :meth:`meet_box` (tighten with bounds proved elsewhere).

Elements carry a batch axis: one element holds ``B`` independent regions analysed together.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar

import torch
import torch.nn.functional as F

from absint.linear import LinearOperator

E = TypeVar("E")


@dataclass(frozen=True)
class NoOptions:
    """Options of a domain that has none."""


def default_device() -> torch.device:
    """CUDA when present, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class Domain(ABC, Generic[E]):
    """Base class of abstract domains.

    Subclasses set ``name`` (the registry name, e.g. ``"deeppoly"``) and, if configurable,
    ``options_class`` (a frozen dataclass). Instances are cheap; elements are immutable values.
    """

    name: ClassVar[str] = ""
    options_class: ClassVar[type] = NoOptions
    description: ClassVar[str] = ""
    #: True if the domain relates neurons across layers (k-ReLU/LP refinement can use it).
    relational: ClassVar[bool] = False

    def __init__(self, options: Any = None, *, device: torch.device | str | None = None,
                 dtype: torch.dtype = torch.float64) -> None:
        self.options = options if options is not None else self.options_class()
        if not isinstance(self.options, self.options_class):
            raise TypeError(f"{type(self).__name__} expects options of type {self.options_class.__name__}")
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.dtype = dtype

    # -- required core -----------------------------------------------------------------------
    @abstractmethod
    def from_box(self, lower: torch.Tensor, upper: torch.Tensor) -> E:
        """The abstraction of the boxes ``lower ≤ x ≤ upper`` (each ``[B, *shape]``)."""

    @abstractmethod
    def affine(self, x: E, op: LinearOperator, bias: torch.Tensor | None) -> E:
        """``y = op(x) + bias`` (``bias`` broadcasts against ``op.out_shape``)."""

    @abstractmethod
    def relu(self, x: E) -> E:
        """``y = max(x, 0)`` element-wise."""

    @abstractmethod
    def bounds(self, x: E) -> tuple[torch.Tensor, torch.Tensor]:
        """Concrete lower and upper bounds ``[B, *shape]`` of every neuron of ``x``."""

    # -- optional transformers with sound defaults ------------------------------------------
    def reshape(self, x: E, shape: tuple[int, ...]) -> E:
        """Row-major reshape of the per-sample shape. Default: via bounds (loses relations)."""
        lo, hi = self.bounds(x)
        return self.from_box(lo.reshape(lo.shape[0], *shape), hi.reshape(hi.shape[0], *shape))

    def add(self, x: E, y: E) -> E:
        """Element-wise sum of two elements of the same shape. Default: interval sum."""
        lx, ux = self.bounds(x)
        ly, uy = self.bounds(y)
        return self.from_box(lx + ly, ux + uy)

    def sigmoid(self, x: E) -> E:
        """Default: interval image (sigmoid is monotone)."""
        lo, hi = self.bounds(x)
        return self.from_box(torch.sigmoid(lo), torch.sigmoid(hi))

    def tanh(self, x: E) -> E:
        """Default: interval image (tanh is monotone)."""
        lo, hi = self.bounds(x)
        return self.from_box(torch.tanh(lo), torch.tanh(hi))

    def maxpool(self, x: E, kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int]) -> E:
        """Default: interval image (max pooling is monotone in every argument)."""
        lo, hi = self.bounds(x)
        return self.from_box(F.max_pool2d(lo, kernel, stride, padding), F.max_pool2d(hi, kernel, stride, padding))

    def linear_bounds(self, x: E, C: torch.Tensor, d: torch.Tensor | None = None) -> torch.Tensor:
        """Lower bounds ``[B, m]`` of ``C y + d`` over ``y ∈ γ(x)``, with ``C`` ``[B, m, n]`` over flat y.

        Default: interval arithmetic on :meth:`bounds`. Relational domains override this to
        bound the linear function directly (e.g. DeepPoly back-substitutes ``C`` itself).
        """
        lo, hi = self.bounds(x)
        lo, hi = lo.reshape(lo.shape[0], 1, -1), hi.reshape(hi.shape[0], 1, -1)
        out = (C.clamp(min=0) * lo + C.clamp(max=0) * hi).sum(-1)
        return out if d is None else out + d

    def meet_box(self, x: E, lower: torch.Tensor, upper: torch.Tensor) -> E:
        """Intersect ``x`` with the box ``[lower, upper]`` proved by other means.

        Default: return ``x`` unchanged (sound: it ignores the extra information).
        """
        return x

    # -- helpers -----------------------------------------------------------------------------
    def tensor(self, value: Any) -> torch.Tensor:
        """``value`` as a tensor of this domain's dtype and device."""
        return torch.as_tensor(value, dtype=self.dtype, device=self.device)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.options})"


def element_numel(shape: tuple[int, ...]) -> int:
    """Neurons per sample of an element of per-sample ``shape``."""
    return int(math.prod(shape))
