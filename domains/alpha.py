"""Optimised ReLU lower slopes for back-substitution (alpha-CROWN style bounds).

DeepPoly (Singh et al., POPL 2019) bounds an unstable ReLU ``a = relu(z)``, ``l < 0 < u``, from
below by ``a ≥ α z`` with ``α ∈ {0, 1}`` chosen by area, and from above by the chord
``a ≤ u (z − l) / (u − l)``. Every ``α ∈ [0, 1]`` gives a sound lower line, so the bound of a
linear function obtained by back-substitution is a sound lower bound for *any* slopes; the slopes
may differ per bounded row. Optimising them by projected gradient ascent ("Fast and Complete",
Xu et al., ICLR 2021, α-CROWN) closes most of the gap between DeepPoly and the triangle LP
(with fixed intermediate bounds the optimum over ``α`` equals the LP's: Salman et al., NeurIPS
2019, "A Convex Relaxation Barrier").

This module handles *chain* networks (``Input → (Affine | Reshape | Relu)* ``), which covers the
fully connected and convolutional ERAN / VNN-COMP MNIST networks; :func:`chain_of` returns None
for anything else and callers keep their domain's bounds. Convolutions are applied through their
operator's adjoint (no dense matrices).

Bounds are computed layer by layer: the pre-activation bounds of ReLU layer ``k`` are optimised
given the (already optimised or otherwise refined) bounds of the layers before it; every bound
returned is the best one seen over the iterations, widened by a floating-point margin, and never
looser than the bounds passed in.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from absint.ir import Affine, Graph, Input, Relu, Reshape
from absint.linear import LinearOperator
from absint.domains.relaxations import relu_lower_slope, relu_upper_line

__all__ = ["Chain", "chain_of", "AlphaOptions", "AlphaBounder"]


@dataclass
class Chain:
    """A chain network as steps: ``("affine", op, bias)`` or ``("relu", k)`` (flat tensors).

    ``pre_names[k]`` is the graph node feeding ReLU layer ``k``; ``pre_step[k]`` the index of the
    step whose output it is (the output of step ``i`` is the value after ``steps[: i + 1]``).
    """

    steps: list[tuple]
    pre_names: list[str]
    pre_step: list[int]
    pre_sizes: list[int]
    in_size: int
    out_size: int


def chain_of(graph: Graph) -> Chain | None:
    """The :class:`Chain` of ``graph``, or None if it is not an Affine/Reshape/ReLU chain."""
    if not graph.is_chain():
        return None
    steps: list[tuple] = []
    pre_names: list[str] = []
    pre_step: list[int] = []
    pre_sizes: list[int] = []
    last_name = None
    last_step = -1
    size = None
    for node in graph.nodes:
        if isinstance(node, Input):
            size = int(torch.Size(node.shape).numel())
            in_size = size
            last_name = node.name
        elif isinstance(node, Affine):
            bias = node.bias_full().reshape(-1)
            steps.append(("affine", node.operator, bias))
            last_step = len(steps) - 1
            size = int(bias.numel())
            last_name = node.name
        elif isinstance(node, Reshape):
            last_name = node.name
        elif isinstance(node, Relu):
            if last_step < 0 or steps[last_step][0] != "affine":
                return None
            pre_names.append(last_name)  # type: ignore[arg-type]
            pre_step.append(last_step)
            pre_sizes.append(int(size))  # type: ignore[arg-type]
            steps.append(("relu", len(pre_names) - 1))
            last_step = len(steps) - 1
            last_name = node.name
        else:
            return None
    if not steps or steps[-1][0] != "affine":
        return None
    return Chain(steps, pre_names, pre_step, pre_sizes, in_size, int(size))  # type: ignore[arg-type]


@dataclass(frozen=True)
class AlphaOptions:
    """``iters`` Adam steps of size ``lr`` per bounded layer (0: DeepPoly's slopes only);
    ``margin``: relative + absolute outward widening of every bound (floating-point safety)."""

    iters: int = 30
    lr: float = 0.25
    margin: float = 1e-9
    final_iters: int = 60


@dataclass
class AlphaResult:
    """Refined bounds per ReLU layer (flat ``[n_k]``) and the rows' lower bounds."""

    pre_lo: list[torch.Tensor]
    pre_hi: list[torch.Tensor]
    rows: torch.Tensor | None = None
    stats: dict = field(default_factory=dict)


class AlphaBounder:
    """Back-substitution with per-row optimised lower slopes on a :class:`Chain` (one input box)."""

    def __init__(self, chain: Chain, options: AlphaOptions = AlphaOptions(), *, dtype=torch.float64,
                 device: torch.device | str = "cpu") -> None:
        self.chain = chain
        self.opt = options
        self.dtype = dtype
        self.device = torch.device(device)
        self.steps = [(s[0], s[1].to(self.device, dtype), s[2].to(self.device, dtype)) if s[0] == "affine" else s
                      for s in chain.steps]

    # -- one backward pass ----------------------------------------------------------------------
    def _backward(self, lam: torch.Tensor, start: int, lo: list[torch.Tensor], hi: list[torch.Tensor],
                  alphas: dict[int, torch.Tensor], mid: torch.Tensor, rad: torch.Tensor) -> torch.Tensor:
        """Lower bounds of ``lam · v`` where ``v`` is the output of step ``start`` (``lam``: ``[R, n]``)."""
        R = lam.shape[0]
        const = lam.new_zeros(R)
        for i in range(start, -1, -1):
            step = self.steps[i]
            if step[0] == "affine":
                op: LinearOperator = step[1]
                const = const + lam @ step[2]
                lam = op.transpose(lam.reshape(R, *op.out_shape)).reshape(R, -1)
            else:
                k = step[1]
                l, u = lo[k], hi[k]
                us, uo = relu_upper_line(l, u)
                a = alphas.get(k)
                if a is None:
                    ls = relu_lower_slope(l, u)
                else:
                    unstable = (l < 0) & (u > 0)
                    ls = torch.where(unstable, a.clamp(0, 1), (l >= 0).to(lam.dtype))
                pos, neg = lam.clamp(min=0), lam.clamp(max=0)
                const = const + neg @ uo
                lam = pos * ls + neg * us
        return lam @ mid - lam.abs() @ rad + const

    def _optimise(self, lam: torch.Tensor, start: int, lo, hi, mid, rad, iters: int,
                  deadline: float | None) -> torch.Tensor:
        """Best lower bounds of the rows ``lam`` over ``iters`` Adam steps on per-row slopes."""
        relus = [s[1] for s in self.steps[: start + 1] if s[0] == "relu"]
        with torch.no_grad():
            best = self._backward(lam, start, lo, hi, {}, mid, rad)
        if iters <= 0 or not relus:
            return best
        R = lam.shape[0]
        params = {}
        for k in relus:
            if bool(((lo[k] < 0) & (hi[k] > 0)).any()):
                init = relu_lower_slope(lo[k], hi[k]).expand(R, -1).clone()
                params[k] = init.requires_grad_(True)
        if not params:
            return best
        adam = torch.optim.Adam(list(params.values()), lr=self.opt.lr)
        for _ in range(iters):
            if deadline is not None and time.perf_counter() > deadline:
                break
            adam.zero_grad()
            val = self._backward(lam, start, lo, hi, params, mid, rad)
            best = torch.maximum(best, val.detach())
            (-val.sum()).backward()
            adam.step()
            with torch.no_grad():
                for p in params.values():
                    p.clamp_(0, 1)
        with torch.no_grad():
            best = torch.maximum(best, self._backward(lam, start, lo, hi, params, mid, rad))
        return best

    def _widen(self, b: torch.Tensor) -> torch.Tensor:
        m = self.opt.margin
        return b - m * (1 + b.abs())

    # -- layer-wise bounds --------------------------------------------------------------------
    def layer_bounds(self, k: int, lo: list[torch.Tensor], hi: list[torch.Tensor], mid: torch.Tensor,
                     rad: torch.Tensor, *, deadline: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Bounds of the inputs of ReLU layer ``k`` given the bounds ``lo``/``hi`` of layers ``< k``
        (and the current ones of layer ``k``, which are only ever tightened)."""
        l0, u0 = lo[k], hi[k]
        unstable = torch.nonzero((l0 < 0) & (u0 > 0)).reshape(-1)
        if unstable.numel() == 0:
            return l0, u0
        n = self.chain.pre_sizes[k]
        U = unstable.numel()
        lam = torch.zeros(2 * U, n, dtype=self.dtype, device=self.device)
        ar = torch.arange(U, device=self.device)
        lam[ar, unstable] = 1.0
        lam[U + ar, unstable] = -1.0
        b = self._widen(self._optimise(lam, self.chain.pre_step[k], lo, hi, mid, rad, self.opt.iters, deadline))
        l1, u1 = l0.clone(), u0.clone()
        l1[unstable] = torch.maximum(l0[unstable], b[:U])
        u1[unstable] = torch.minimum(u0[unstable], -b[U:])
        return l1, u1

    def run(self, lower: torch.Tensor, upper: torch.Tensor, pre_lo: list[torch.Tensor], pre_hi: list[torch.Tensor],
            C: torch.Tensor | None = None, d: torch.Tensor | None = None, *, layers: bool = True,
            from_layer: int = 1, deadline: float | None = None) -> AlphaResult:
        """Refine ``pre_lo``/``pre_hi`` (flat, per ReLU layer; e.g. DeepPoly's) layer by layer, then
        bound the rows ``C y + d`` (``C``: ``[m, n_out]``). ``lower``/``upper``: the input box;
        ``from_layer``: the first layer re-bounded (the ones before are taken as they are)."""
        t0 = time.perf_counter()
        lo_in = lower.reshape(-1).to(self.device, self.dtype)
        hi_in = upper.reshape(-1).to(self.device, self.dtype)
        mid, rad = (lo_in + hi_in) / 2, (hi_in - lo_in) / 2
        lo = [t.reshape(-1).to(self.device, self.dtype).clone() for t in pre_lo]
        hi = [t.reshape(-1).to(self.device, self.dtype).clone() for t in pre_hi]
        before = [int(((a < 0) & (b > 0)).sum()) for a, b in zip(lo, hi)]
        if layers:
            for k in range(max(1, from_layer), len(lo)):  # layer 0 is exact already (interval of one affine map)
                if deadline is not None and time.perf_counter() > deadline:
                    break
                lo[k], hi[k] = self.layer_bounds(k, lo, hi, mid, rad, deadline=deadline)
        rows = None
        if C is not None:
            Ct = C.to(self.device, self.dtype)
            dt = torch.zeros(Ct.shape[0], dtype=self.dtype, device=self.device) if d is None else d.to(self.device, self.dtype)
            rows = self._widen(self._optimise(Ct, len(self.steps) - 1, lo, hi, mid, rad, self.opt.final_iters,
                                              deadline) + dt)
        after = [int(((a < 0) & (b > 0)).sum()) for a, b in zip(lo, hi)]
        return AlphaResult(lo, hi, rows, {"alpha_s": time.perf_counter() - t0, "unstable_before": before,
                                          "unstable_after": after})
