"""The DeepPoly domain (Singh, Gehr, Püschel, Vechev, "An Abstract Domain for Certifying Neural
Networks", POPL 2019) — the linear-bound engine with fixed heuristic slopes.

Every neuron ``x_i`` carries one symbolic lower and one symbolic upper bound, linear in the
neurons of the node(s) it reads, plus concrete bounds ``[l_i, u_i]``. An abstract element is a
node of the engine's graph view (:class:`~absint.domains.linear_bounds.graph.Node`); the
transformers below only create nodes, and the engine (:mod:`absint.domains.linear_bounds`)
back-substitutes them to the input box when concrete bounds are needed. The output property rows
``C y + d`` are back-substituted themselves (never bounded through separate logit bounds).

Transformers: affine/conv (exact, through :class:`~absint.linear.LinearOperator`; convolutions are
back-substituted with ``conv_transpose2d``, never as dense matrices), ReLU (chord above, ``α·x``
below with α by the area heuristic or ``relu_lower``), sigmoid/tanh (the paper's S-shaped rules),
max-pool (exact when one input dominates, else ``y ≥ x_{argmax l}``, ``y ≤ max u``), reshape
(free), add (residual: back-substitution over the DAG).

Precision vs. the paper: concrete bounds are the best of (a) full back-substitution, (b) the
intermediate concretisations done on the way (GPUPoly-style, Müller et al. 2021; with
``early_stop`` or ``keep_best``) and (c) interval propagation from the parents' bounds, so they
are never looser than DeepPoly's or Box's. ``early_stop`` only skips work whose result cannot
change any ReLU relaxation (the sign of the neuron is already proved); neurons that the ReLU
leaves unstable are always back-substituted to the input.

Floating point: every bound is sound in real arithmetic on the stored weights, at every magnitude:
the engine accounts for the rounding of every step (:mod:`absint.domains.linear_bounds.backward`),
with no fixed tolerance.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from absint.ir import Add, Affine, Input, MaxPool2d, Relu, Reshape, Sigmoid, Tanh
from absint.linear import LinearOperator
from absint.rounding import round_down
from absint.domains.base import Domain
from absint.domains.linear_bounds.engine import Engine, EngineOptions
from absint.domains.linear_bounds.graph import Node
from absint.domains.relaxations import ReluLowerMode

__all__ = ["DeepPolyDomain", "DeepPolyElement", "DeepPolyOptions"]

#: DeepPoly's abstract elements are the engine's nodes
DeepPolyElement = Node


@dataclass(frozen=True)
class DeepPolyOptions:
    """Options of :class:`DeepPolyDomain`.

    * ``relu_lower`` — slope of the ReLU lower line for unstable neurons: ``area`` (the paper's
      heuristic), ``zero``, ``one`` or ``parallel`` (see :func:`absint.domains.relaxations.relu_lower_slope`).
    * ``early_stop`` — for ReLU inputs, concretise the frontier after each layer of
      back-substitution and stop refining a neuron once its sign is proved (its relaxation is then
      exact whatever the bounds); :meth:`DeepPolyDomain.bounds` still returns fully
      back-substituted bounds (computed on demand). Concretising stops within one run as soon
      as a frontier decides fewer than 1/16 of the rows.
    * ``keep_best`` — concretise every intermediate frontier of every back-substitution and keep
      the best bound over all depths (tighter than the paper in rare cases, slower).
    * ``memory_mb`` — rows are back-substituted in chunks so that one chunk's coefficient matrices
      stay around this size (memory proportional to the layer sizes).
    * ``max_rows`` — at most this many rows per chunk (None: on CPU, blocks of ≈2 MB — cache-sized
      blocks are fastest there, e.g. 334 rows for 784 inputs; unlimited on CUDA).
    """

    relu_lower: ReluLowerMode = "area"
    early_stop: bool = True
    keep_best: bool = False
    memory_mb: float = 256.0
    max_rows: int | None = None

    def engine_options(self) -> EngineOptions:
        return EngineOptions(self.relu_lower, self.early_stop, self.keep_best, self.memory_mb, self.max_rows)


class DeepPolyDomain(Domain[Node]):
    """DeepPoly: per-neuron symbolic lower/upper bounds with back-substitution (POPL 2019)."""

    name = "deeppoly"
    options_class = DeepPolyOptions
    description = "DeepPoly: symbolic per-neuron polyhedra with back-substitution (Singh et al., POPL 2019)"

    options: DeepPolyOptions

    def __init__(self, options=None, *, device=None, dtype=torch.float64) -> None:
        super().__init__(options, device=device, dtype=dtype)
        self.engine = Engine(self.options.engine_options(), device=self.device, dtype=self.dtype)

    # -- construction -------------------------------------------------------------------------
    @torch.no_grad()
    def from_box(self, lower: torch.Tensor, upper: torch.Tensor) -> Node:
        lo, hi = self.tensor(lower), self.tensor(upper)
        el = Node.make(Input("x", (), tuple(lo.shape[1:])), (), int(lo.shape[0]))
        self.engine.store(el, 2, lo, hi)
        return el

    @torch.no_grad()
    def affine(self, x: Node, op: LinearOperator, bias: torch.Tensor | None) -> Node:
        """``y = op(x) + bias`` — exact; concrete bounds are computed when first needed."""
        b = None if bias is None else self.tensor(bias)
        el = Node.make(Affine("affine", (), tuple(op.out_shape), op, b), (x,), x.batch)
        if x.boxlike:  # interval arithmetic is exact on a box: no back-substitution needed
            self.engine.bounds(el, 2)
        return el

    @torch.no_grad()
    def relu(self, x: Node) -> Node:
        """ReLU: chord ``u/(u−l)·(x−l)`` above, ``α·x`` below (α by ``options.relu_lower``)."""
        el = Node.make(Relu("relu", (), x.shape), (x,), x.batch)
        self.engine.relax(el)
        return el

    @torch.no_grad()
    def sigmoid(self, x: Node) -> Node:
        """Sigmoid with DeepPoly's S-shaped lines (:func:`absint.domains.relaxations.sigmoid_deeppoly`)."""
        el = Node.make(Sigmoid("sigmoid", (), x.shape), (x,), x.batch)
        self.engine.relax(el)
        return el

    @torch.no_grad()
    def tanh(self, x: Node) -> Node:
        """Tanh with DeepPoly's S-shaped lines (:func:`absint.domains.relaxations.tanh_deeppoly`)."""
        el = Node.make(Tanh("tanh", (), x.shape), (x,), x.batch)
        self.engine.relax(el)
        return el

    @torch.no_grad()
    def maxpool(self, x: Node, kernel: tuple[int, int], stride: tuple[int, int],
                padding: tuple[int, int]) -> Node:
        """Max pooling (ERAN's rule, :func:`absint.domains.relaxations.maxpool_deeppoly`)."""
        c, h, w = x.shape
        oh = (h + 2 * padding[0] - kernel[0]) // stride[0] + 1
        ow = (w + 2 * padding[1] - kernel[1]) // stride[1] + 1
        op = MaxPool2d("maxpool", (), (c, oh, ow), tuple(kernel), tuple(stride), tuple(padding))
        el = Node.make(op, (x,), x.batch)
        self.engine.relax(el)
        return el

    @torch.no_grad()
    def reshape(self, x: Node, shape: tuple[int, ...]) -> Node:
        """Row-major reshape: the same neurons, relations kept."""
        el = Node.make(Reshape("reshape", (), tuple(shape)), (x,), x.batch)
        cached = self.engine.cached(x)
        if cached is not None:
            self.engine.store(el, self.engine.level(x), cached[0].reshape(x.batch, *shape),
                              cached[1].reshape(x.batch, *shape))
        return el

    @torch.no_grad()
    def add(self, x: Node, y: Node) -> Node:
        """``x + y`` (residual connections): exact; bounds by back-substitution over the DAG."""
        if x.shape != y.shape:
            raise ValueError(f"add of elements with shapes {x.shape} and {y.shape}")
        return Node.make(Add("add", (), x.shape), (x, y), x.batch)

    # -- bounds -------------------------------------------------------------------------------
    @torch.no_grad()
    def bounds(self, x: Node) -> tuple[torch.Tensor, torch.Tensor]:
        """Concrete bounds ``[B, *shape]`` (fully back-substituted, never looser than Box)."""
        return self.engine.bounds(x, 2)

    def preactivation_bounds(self, x: Node) -> tuple[torch.Tensor, torch.Tensor]:
        """For an activation/max-pool element: full concrete bounds of its input node."""
        if not x.parents:
            raise ValueError("the input element has no pre-activation")
        return self.bounds(x.parents[0])

    @torch.no_grad()
    def linear_bounds(self, x: Node, C: torch.Tensor, d: torch.Tensor | None = None) -> torch.Tensor:
        """Lower bounds ``[B, m]`` of ``C y + d`` by back-substituting the rows of ``C`` themselves
        (and never below the interval bound of ``C`` over ``y``'s concrete bounds)."""
        out = self.engine.linear_bounds_at(x, C)
        return out if d is None else round_down(out + self.tensor(d))

    @torch.no_grad()
    def linear_bounds_at(self, x: Node, C: torch.Tensor, *, stop_at: float | None = None) -> torch.Tensor:
        """Lower bounds ``[B, m]`` of ``C·x`` for any element ``x`` (``C``: ``[B or 1, m, numel(x)]``).

        Upper bounds are ``-linear_bounds_at(x, -C)``; octahedral constraints of k-ReLU are one
        call with all ``±x_i ± x_j ± x_k`` rows. With ``stop_at`` a row stops being refined once
        its bound reaches that value (the result is still a sound lower bound).
        """
        return self.engine.linear_bounds_at(x, C, stop_at=stop_at)

    @torch.no_grad()
    def input_linear_bounds(self, x: Node, C: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Symbolic lower bounds over the input: ``C·x ≥ A·x_in + c`` for every input in the box
        (real arithmetic; concretise with :func:`absint.domains.linear_bounds.concretize_box`).

        Returns ``A`` ``[B, m, *input_shape]`` and ``c`` ``[B, m]``.
        """
        return self.engine.input_linear_bounds(x, C)

    @torch.no_grad()
    def meet_box(self, x: Node, lower: torch.Tensor, upper: torch.Tensor) -> Node:
        """A new element with the same symbolic bounds and concrete bounds ``γ(x) ∩ [lower, upper]``.

        Later relaxations (e.g. a ReLU on this node) use the tightened bounds.
        """
        lo, hi = self.engine.bounds(x, 2)
        lo = torch.maximum(lo, self.tensor(lower).reshape(lo.shape))
        hi = torch.minimum(hi, self.tensor(upper).reshape(hi.shape))
        el = x.renewed()
        for key in ("relaxed", "lines", "prune", "pool"):  # an activation keeps its relaxation
            if key in x.cache:
                el.cache[key] = x.cache[key]
        self.engine.store(el, 2, lo, hi)
        return el

    def __getstate__(self):
        return {"options": self.options, "device": self.device, "dtype": self.dtype}

    def __setstate__(self, state):
        self.__init__(state["options"], device=state["device"], dtype=state["dtype"])

