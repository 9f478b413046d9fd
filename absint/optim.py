"""Adam for the bound optimisers (slopes α, split multipliers β, k-ReLU multipliers μ, SDP multipliers).

Adam (Kingma & Ba, "Adam: A method for stochastic optimization", ICLR 2015): per parameter, the
exponential averages ``m`` of the gradient and ``v`` of its square, and the step
``p -= lr / (1 - β₁ᵗ) · m / (sqrt(v) / sqrt(1 - β₂ᵗ) + ε)``. Parameters come in groups, each with
its own step size (a list of tensors, or dicts ``{"params": [...], "lr": ...}``);
:class:`ExponentialDecay` multiplies every group's step size by ``gamma`` per call.

Why not ``torch.optim.Adam``: the first ``torch.optim`` optimiser of a process imports
``torch._dynamo`` (0.8 s on a quiet machine, 2–3 s on a loaded one), paid again by every fresh
process — and a VNN-COMP instance or a CLI call is one. The step runs torch's fused Adam kernel
(``torch._fused_adam_``, what ``torch.optim.Adam(fused=True)`` calls; one pass over each tensor
instead of seven, 10x faster on the k-ReLU multipliers) where the installed torch has it for the
parameter's device, else the textbook update in the same order of floating-point operations as
torch's CPU implementation. The two agree to rounding (1e-16 on unit-size parameters).
"""
from __future__ import annotations

from typing import Any, Iterable

import torch

__all__ = ["Adam", "ExponentialDecay", "RETIRE_AT"]

#: Optimisers whose rows are independent problems (per-row slopes and multipliers) retire the rows
#: that need no more steps (proved, or settled otherwise) once at least this share of the rows still
#: optimised has: each retirement copies the kept rows' parameters and moments (:meth:`Adam.keep_rows`),
#: so it is done in steps, not row by row.
RETIRE_AT = 0.125


class Adam:
    """Adam over parameter groups; ``zero_grad`` / ``step`` / ``param_groups`` as in ``torch.optim``."""

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8) -> None:
        params = list(params)
        groups = params if params and isinstance(params[0], dict) else [{"params": params}]
        self.param_groups: list[dict[str, Any]] = [{"params": list(g["params"]), "lr": g.get("lr", lr)}
                                                   for g in groups]
        self.betas, self.eps = betas, eps
        self._state: dict[int, tuple[list[int], torch.Tensor, torch.Tensor]] = {}

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Forget the gradients (set to None, so parameters without a new one are skipped)."""
        for g in self.param_groups:
            for p in g["params"]:
                p.grad = None

    def keep_rows(self, rows: torch.Tensor) -> tuple["Adam", dict[int, torch.Tensor]]:
        """A new optimiser over the ``rows`` (first axis) of every parameter, as new leaves, with the
        same groups, step sizes and the moments of those rows (optimisers that retire rows: the rows
        kept take exactly the steps they would have taken). Also returns ``id(old) → new``."""
        new: dict[int, torch.Tensor] = {}
        groups = []
        for g in self.param_groups:
            ps = []
            for p in g["params"]:
                q = new[id(p)] = p.detach()[rows].clone().requires_grad_(True)
                ps.append(q)
            groups.append({"params": ps, "lr": g["lr"]})
        out = Adam(groups, betas=self.betas, eps=self.eps)
        for g in self.param_groups:
            for p in g["params"]:
                state = self._state.get(id(p))
                if state is not None:
                    count, m, v = state
                    out._state[id(new[id(p)])] = ([count[0]], m[rows].clone(), v[rows].clone())
        return out, new

    @torch.no_grad()
    def step(self) -> None:
        """One Adam step on every parameter that has a gradient."""
        b1, b2 = self.betas
        for g in self.param_groups:
            lr = g["lr"]
            for p in g["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                state = self._state.get(id(p))
                if state is None:
                    state = self._state[id(p)] = ([0], torch.zeros_like(p), torch.zeros_like(p))
                count, m, v = state
                count[0] += 1
                t = float(count[0])
                if _fused_step(p, grad, m, v, t, lr, b1, b2, self.eps):
                    continue
                m.lerp_(grad, 1 - b1)
                v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
                step_size = lr / (1 - b1 ** t)
                denom = (v.sqrt() / (1 - b2 ** t) ** 0.5).add_(self.eps)
                p.addcdiv_(m, denom, value=-step_size)


#: devices on which ``torch._fused_adam_`` failed or is missing (the textbook update is used there)
_NO_FUSED: set[str] = set()


def _fused_step(p: torch.Tensor, grad: torch.Tensor, m: torch.Tensor, v: torch.Tensor, t: float, lr: float,
                b1: float, b2: float, eps: float) -> bool:
    """One Adam step of ``p`` by torch's fused kernel (``t``: the step count, already incremented);
    False (nothing changed) where the kernel is not available for these tensors."""
    kernel = getattr(torch, "_fused_adam_", None)
    kind = f"{p.device.type}:{p.dtype}"
    if kernel is None or kind in _NO_FUSED or grad.dtype != p.dtype or grad.is_sparse:
        return False
    try:
        kernel([p], [grad], [m], [v], [], [torch.full((), t, dtype=torch.float32, device=p.device)],
               lr=lr, beta1=b1, beta2=b2, weight_decay=0.0, eps=eps, amsgrad=False, maximize=False)
    except (RuntimeError, NotImplementedError, TypeError):
        _NO_FUSED.add(kind)
        return False
    return True


class ExponentialDecay:
    """Multiply every group's step size by ``gamma`` on each :meth:`step` (after the optimiser's)."""

    def __init__(self, optimiser: Adam, gamma: float) -> None:
        self.optimiser, self.gamma = optimiser, gamma

    def step(self) -> None:
        for g in self.optimiser.param_groups:
            g["lr"] = g["lr"] * self.gamma
