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

Which method the interpreter calls for which op is one table, :data:`TRANSFORMERS` (op type ->
rule); a new IR op adds one rule there (and a sound default method here), and
:meth:`Domain.supports` answers from it. Optional capabilities beyond the transformers are
declared as :class:`typing.Protocol` classes (:class:`SymbolicInputBounds`, ...) that callers test
with ``isinstance``, never by probing attribute names.
"""
from __future__ import annotations

import functools
import math
import weakref
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Generic, Protocol, TypeVar, runtime_checkable

import torch
import torch.nn.functional as F

from absint.errors import DomainError, OptionError
from absint.ir import Add, Affine, Input, MaxPool2d, Op, Relu, Reshape, Sigmoid, Tanh
from absint.linear import LinearOperator
from absint.rounding import (dot_error, gamma, inner_length, monotone_lower, monotone_upper, round_down, round_up,
                             safe_lower, safe_upper, sanitize_lower, sanitize_upper, sum_lower, sum_upper, tiny)

E = TypeVar("E")


# -- sound interval arithmetic (shared by Box, the defaults below and plugins) ------------------
_ABS_OPERATORS: "weakref.WeakKeyDictionary[LinearOperator, LinearOperator]" = weakref.WeakKeyDictionary()


def abs_operator(op: LinearOperator) -> LinearOperator:
    """``|A|`` of an operator, computed once per operator object (operators are immutable)."""
    a = _ABS_OPERATORS.get(op)
    if a is None:
        a = _ABS_OPERATORS[op] = op.abs()
    return a


@functools.lru_cache(maxsize=1024)
def _affine_coefficients(n: int, dtype: torch.dtype) -> tuple[float, float, float]:
    """``(half_k1, k2, σ)`` of :func:`interval_affine` for inner length ``n``."""
    g = gamma(n + 2, dtype)
    return math.nextafter(0.5 * (1.0 + 4.0 * g), math.inf), 4.0 * g, float(torch.finfo(dtype).smallest_normal)


_CONSTANT_TERMS: "weakref.WeakKeyDictionary[LinearOperator, tuple[Any, torch.dtype, torch.Tensor]]" = \
    weakref.WeakKeyDictionary()


def _constant_term(op: LinearOperator, bias: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """``T = 4γ|b| + 2σ(n + 8 + Σ_j|A_ij|)`` of :func:`interval_affine`, once per operator object and
    bias tensor (both immutable)."""
    dtype = like.dtype
    hit = _CONSTANT_TERMS.get(op)
    if hit is None or hit[0] is not bias or hit[1] != dtype:
        n = inner_length(op)
        _, k2, sigma = _affine_coefficients(n, dtype)
        absop = abs_operator(op)
        ones = torch.ones((1, *op.in_shape), dtype=dtype, device=like.device)
        term = (absop.forward(ones) + (n + 8)) * (2.0 * sigma)
        if bias is not None:
            term = term + bias.abs() * k2
        hit = _CONSTANT_TERMS[op] = (bias, dtype, term)
    return hit[2]


def interval_affine(op: LinearOperator, bias: torch.Tensor | None, lower: torch.Tensor, upper: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Bounds of ``op(x) + bias`` over ``lower ≤ x ≤ upper``, sound in real arithmetic.

    Centre ``c = fl((l + u)/2)``, one product ``S = |A|·v + T`` with ``v = (u − l)·(1 + 4γ)/2 + 4γ|c|``
    and ``T = 4γ|b| + 2σ(n + 8 + Σ_j|A_ij|)`` (``γ = γ_{n+2}``, ``σ`` the smallest normal number),
    then ``[fl(A c + b) − S, fl(A c + b) + S]`` rounded outward. ``S`` bounds ``|A| r`` for the real
    radius ``r = max(u − c, c − l) ≤ (u − l)(1 + 2u)/2 + u|c|(1 + 2u) + η`` plus the error
    ``γ_{n+1}(|A||c| + |b|) + (n + 1)η`` of the centre's image (Higham §3.1; ``η`` the smallest
    subnormal): every relative rounding of ``v`` and ``S`` (``u`` each) fits in the spare of ``4γ`` over
    ``γ_{n+1} + 6u``, every underflow (``≤ η`` per entry of ``v``, ``η/2`` per product) in the ``σ``
    term. No subnormal number enters the products (subnormal arithmetic is ~10× slower on x86).
    Non-finite values give trivial bounds.
    """
    half_k1, k2, _ = _affine_coefficients(inner_length(op), lower.dtype)
    c = (lower + upper) * 0.5
    yc = op.forward(c)
    if bias is not None:
        yc = yc + bias
    v = torch.add((upper - lower) * half_k1, c.abs(), alpha=k2)
    spread = abs_operator(op).forward(v) + _constant_term(op, bias, lower)
    return round_down(sanitize_lower(yc - spread)), round_up(sanitize_upper(yc + spread))


def interval_add(lx: torch.Tensor, ux: torch.Tensor, ly: torch.Tensor, uy: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """``[lx + ly, ux + uy]`` rounded outward."""
    return sum_lower(lx, ly), sum_upper(ux, uy)


def interval_monotone(f, lower: torch.Tensor, upper: torch.Tensor, value_range: tuple[float, float]
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """The image of ``[lower, upper]`` under an increasing library function ``f`` (sigmoid, tanh),
    widened by its accuracy and clipped to its true range."""
    return (monotone_lower(f, lower).clamp(min=value_range[0]),
            monotone_upper(f, upper).clamp(max=value_range[1]))


def interval_linear_bounds(lo: torch.Tensor, hi: torch.Tensor, C: torch.Tensor, d: torch.Tensor | None
                           ) -> torch.Tensor:
    """Lower bounds ``[B, m]`` of ``C y + d`` over the boxes ``lo ≤ y ≤ hi`` (flat ``[B, n]``), sound
    in real arithmetic (``0·∞`` counts as 0)."""
    lo, hi = lo.unsqueeze(1), hi.unsqueeze(1)
    zero = torch.zeros((), dtype=C.dtype, device=C.device)
    terms = torch.where(C > 0, C * lo, zero) + torch.where(C < 0, C * hi, zero)
    out = terms.sum(-1)
    mag = terms.abs().sum(-1)
    if d is not None:
        out, mag = out + d, mag + d.abs()
    return safe_lower(out, dot_error(mag, C.shape[-1] + 1, out.dtype))


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
    #: Op types of :data:`TRANSFORMERS` this domain refuses (its default would be unsound or useless).
    unsupported_ops: ClassVar[frozenset[type[Op]]] = frozenset()

    def __init__(self, options: Any = None, *, device: torch.device | str | None = None,
                 dtype: torch.dtype = torch.float64) -> None:
        self.options = options if options is not None else self.options_class()
        if not isinstance(self.options, self.options_class):
            raise OptionError(f"{type(self).__name__} expects options of type {self.options_class.__name__}, "
                              f"not {type(self.options).__name__}")
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
        return self.from_box(*interval_add(lx, ux, ly, uy))

    def sigmoid(self, x: E) -> E:
        """Default: interval image (sigmoid is monotone)."""
        lo, hi = self.bounds(x)
        return self.from_box(*interval_monotone(torch.sigmoid, lo, hi, (0.0, 1.0)))

    def tanh(self, x: E) -> E:
        """Default: interval image (tanh is monotone)."""
        lo, hi = self.bounds(x)
        return self.from_box(*interval_monotone(torch.tanh, lo, hi, (-1.0, 1.0)))

    def maxpool(self, x: E, kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int]) -> E:
        """Default: interval image (max pooling is monotone in every argument)."""
        lo, hi = self.bounds(x)
        return self.from_box(F.max_pool2d(lo, kernel, stride, padding), F.max_pool2d(hi, kernel, stride, padding))

    def linear_bounds(self, x: E, C: torch.Tensor, d: torch.Tensor | None = None) -> torch.Tensor:
        """Lower bounds ``[B, m]`` of ``C y + d`` over ``y ∈ γ(x)``, with ``C`` ``[B, m, n]`` over flat y.

        Default: interval arithmetic on :meth:`bounds`, rounded soundly. Relational domains
        override this to bound the linear function directly (e.g. DeepPoly back-substitutes ``C``).
        Every transformer must be sound in *real* arithmetic: see :mod:`absint.rounding`.
        """
        lo, hi = self.bounds(x)
        return interval_linear_bounds(lo.reshape(lo.shape[0], -1), hi.reshape(hi.shape[0], -1), C, d)

    def meet_box(self, x: E, lower: torch.Tensor, upper: torch.Tensor) -> E:
        """Intersect ``x`` with the box ``[lower, upper]`` proved by other means.

        Default: return ``x`` unchanged (sound: it ignores the extra information).
        """
        return x

    # -- the op table ------------------------------------------------------------------------
    @classmethod
    def supports(cls, op: Op | type[Op]) -> bool:
        """Whether the interpreter can apply this domain to ``op`` (an op or an op type)."""
        kind = op if isinstance(op, type) else type(op)
        return (kind is Input or kind in TRANSFORMERS) and kind not in cls.unsupported_ops

    def transfer(self, op: Op, args: list[E]) -> E:
        """Apply this domain's transformer for ``op`` to its input elements (one row of :data:`TRANSFORMERS`)."""
        rule = TRANSFORMERS.get(type(op))
        if rule is None or type(op) in self.unsupported_ops:
            raise DomainError(f"domain {self.name!r} has no transformer for op {op.kind} ({op.name})")
        return rule(self, op, args)

    # -- helpers -----------------------------------------------------------------------------
    def tensor(self, value: Any) -> torch.Tensor:
        """``value`` as a tensor of this domain's dtype and device."""
        return torch.as_tensor(value, dtype=self.dtype, device=self.device)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.options})"


def element_numel(shape: tuple[int, ...]) -> int:
    """Neurons per sample of an element of per-sample ``shape``."""
    return int(math.prod(shape))


#: op type -> how the interpreter applies a domain to a node of that type (``rule(domain, op, args)``).
#: A new IR op adds one row here and a sound default method on :class:`Domain`.
TRANSFORMERS: dict[type[Op], Callable[[Domain, Any, list[Any]], Any]] = {
    Affine: lambda d, op, a: d.affine(a[0], op.operator, op.bias),
    Relu: lambda d, op, a: d.relu(a[0]),
    Reshape: lambda d, op, a: d.reshape(a[0], tuple(op.shape)),
    Add: lambda d, op, a: d.add(a[0], a[1]),
    Sigmoid: lambda d, op, a: d.sigmoid(a[0]),
    Tanh: lambda d, op, a: d.tanh(a[0]),
    MaxPool2d: lambda d, op, a: d.maxpool(a[0], op.kernel, op.stride, op.padding),
}


# -- optional capabilities (test with isinstance(domain, Capability)) --------------------------
@runtime_checkable
class SymbolicInputBounds(Protocol):
    """A domain that bounds ``C y`` by an affine function of the input: ``C y ≥ A x + c`` on the box
    (DeepPoly's back-substitution); branch and bound uses ``A`` to choose input splits."""

    def input_linear_bounds(self, x: Any, C: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(A [B, m, n_in], c [B, m])`` with ``C y ≥ A x + c`` for every input ``x`` of the box."""
        ...


@runtime_checkable
class ShapedElement(Protocol):
    """An element that knows its per-sample shape (saves a call to ``bounds`` just to learn it)."""

    @property
    def shape(self) -> tuple[int, ...]:
        ...
