"""Falsification: projected gradient attacks that look for counterexamples inside a box.

PGD (Madry et al., ICLR 2018) with random restarts, a sign-gradient step that decays over the
run, and a margin objective built from the property's violation DNF: for clause ``k`` with
rows ``A y + b ≥ 0`` the clause value is ``min_r (A_r y + b_r)`` (≥ 0 ⇔ clause satisfied) and the
attack maximises the best clause value. Half the restarts attack the DNF as a whole, the other
half target one clause each (targeted attacks find robustness counterexamples the untargeted
margin misses).

Every candidate is re-checked on the concrete network in float64 before it is reported; the
attack itself never decides anything.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from absint.ir import Graph
from absint.recheck import recheck
from absint.specs import InputBox, OutputProperty, unit_samples

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AttackOptions:
    """PGD settings: ``restarts`` random starts, ``steps`` iterations each."""

    restarts: int = 8
    steps: int = 50
    step_size: float = 0.25  # initial step as a fraction of the box half-width
    seed: int = 0
    sample_pool: int = 2048  # random points evaluated to pick good starts


def clause_tensors(prop: OutputProperty, device, dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The property as padded tensors ``A [K, R, n]``, ``b [K, R]`` and a row mask ``[K, R]``."""
    K = len(prop.clauses)
    R = max(c.A.shape[0] for c in prop.clauses)
    A = np.zeros((K, R, prop.n_outputs))
    b = np.zeros((K, R))
    mask = np.zeros((K, R), dtype=bool)
    for k, c in enumerate(prop.clauses):
        r = c.A.shape[0]
        A[k, :r] = c.A
        b[k, :r] = c.b
        mask[k, :r] = True
    return (torch.as_tensor(A, dtype=dtype, device=device), torch.as_tensor(b, dtype=dtype, device=device),
            torch.as_tensor(mask, device=device))


def clause_values(y: torch.Tensor, A: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per sample and clause ``min_r (A_r y + b_r)``: ``[N, K]`` for ``y`` ``[N, n]``.

    Samples go through in chunks so the ``[chunk, K, R]`` intermediate stays near 8M entries
    (VNN-LIB properties can have 10^5 clauses)."""
    per = max(1, int(8e6 // max(A.shape[0] * A.shape[1], 1)))
    parts = []
    for s in range(0, y.shape[0], per):
        v = torch.einsum("krn,bn->bkr", A, y[s:s + per]) + b
        parts.append(v.masked_fill(~mask, math.inf).min(dim=-1).values)
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def check_counterexample(graph: Graph, region: InputBox, prop: OutputProperty, x: np.ndarray) -> tuple[bool, np.ndarray]:
    """Re-run ``x`` on the concrete network: True if its float32 rounding lies in the region and
    violates ``prop`` both in float64 and in float32 (onnxruntime when the network came from ONNX;
    :func:`absint.recheck.recheck`). Returns ``(ok, float64 outputs)``."""
    r = recheck(graph, region, prop, x)
    return r.ok, r.y


def pgd_attack(graph: Graph, region: InputBox, prop: OutputProperty, options: AttackOptions = AttackOptions(),
               deadline: float | None = None, stats: dict | None = None) -> np.ndarray | None:
    """Search ``region`` for an input violating ``prop``; returns a checked counterexample or None.

    Stops at ``deadline`` (checked before the start pool and between steps); ``stats`` (if given)
    accumulates ``pgd_steps`` and ``pgd_runs``.
    """
    if deadline is not None and time.perf_counter() > deadline:
        return None
    if stats is not None:
        stats["pgd_runs"] = stats.get("pgd_runs", 0) + 1
    device, dtype = graph.device, graph.dtype
    lo = torch.as_tensor(region.lower, dtype=dtype, device=device)
    hi = torch.as_tensor(region.upper, dtype=dtype, device=device)
    A, b, mask = clause_tensors(prop, device, dtype)
    K = A.shape[0]
    gen = torch.Generator(device="cpu").manual_seed(options.seed)

    # Starts: the centre, the best of a cheap random sample (corners included), and random points.
    n_random = max(options.restarts, 1)
    rng = np.random.default_rng(options.seed)
    # Scoring the pool costs pool x rows; properties with 10^5 clauses get a smaller pool.
    pool_size = min(options.sample_pool, max(64, int(2e7 // max(A.shape[0] * A.shape[1], 1))))
    pool = torch.as_tensor(region.sample(pool_size, rng), dtype=dtype, device=device)
    pool_vals = _pool_values(graph, pool, A, b, mask, deadline)
    pool = pool[: len(pool_vals)]
    best = pool[torch.argsort(pool_vals, descending=True)[: n_random // 2 + 1]]
    rand = lo + torch.rand((n_random - n_random // 2, *lo.shape), generator=gen, dtype=dtype).to(device) * (hi - lo)
    x = torch.cat([((lo + hi) / 2)[None], best, rand])
    n = x.shape[0]
    # Targets: -1 = whole DNF, else one clause index (targeted restarts cycle through clauses).
    targets = torch.tensor([-1 if (i % 2 == 0 or K == 1) else (i // 2) % K for i in range(n)], device=device)
    half = (hi - lo) / 2
    for step in range(options.steps + 1):
        if deadline is not None and time.perf_counter() > deadline:
            break
        if stats is not None and step:
            stats["pgd_steps"] = stats.get("pgd_steps", 0) + 1
        x = x.detach().requires_grad_(True)
        y = graph.forward(x).reshape(n, -1)
        vals = clause_values(y, A, b, mask)  # [n, K]
        hit = (vals >= 0).any(dim=1)
        if bool(hit.any()):
            for i in torch.nonzero(hit).flatten().tolist():
                cand = x[i].detach().cpu().numpy()
                ok, _ = check_counterexample(graph, region, prop, cand)
                if ok:
                    return cand
        if step == options.steps:
            break
        whole = vals.max(dim=1).values
        chosen = vals.gather(1, targets.clamp(min=0)[:, None]).squeeze(1)
        objective = torch.where(targets < 0, whole, chosen)
        grad, = torch.autograd.grad(objective.sum(), x)
        # Geometric decay from step_size to 1e-4 of the half-width: coarse moves first, then the
        # fine steps that thin counterexample regions (ACAS Xu) need.
        frac = options.step_size * (1e-4 / options.step_size) ** (step / max(options.steps - 1, 1))
        with torch.no_grad():
            x = x + frac * half * torch.sign(grad)
            x = torch.maximum(torch.minimum(x, hi), lo)
    return None


def _pool_values(graph: Graph, pool: torch.Tensor, A: torch.Tensor, b: torch.Tensor, mask: torch.Tensor,
                 deadline: float | None, chunk: int = 64) -> torch.Tensor:
    """Best clause value of each pool point, in chunks with the deadline checked between them (on a
    large network one forward pass of thousands of points takes seconds); at least one chunk."""
    vals = []
    with torch.no_grad():
        for s in range(0, len(pool), chunk):
            if vals and deadline is not None and time.perf_counter() > deadline:
                break
            part = pool[s:s + chunk]
            vals.append(clause_values(graph.forward(part).reshape(len(part), -1), A, b, mask).max(dim=1).values)
    return torch.cat(vals)


#: activation bytes per block of :func:`forward_blocks` (a cache-sized working set)
FORWARD_BLOCK_BYTES = 1 << 22


def forward_blocks(graph: Graph, x: torch.Tensor) -> torch.Tensor:
    """``graph.forward(x)`` in blocks of samples whose widest activation stays near
    :data:`FORWARD_BLOCK_BYTES` (the same values: every sample is computed on its own). On the CPU
    a forward pass over thousands of samples at once is memory-bound: ERAN ConvSmall, 6500 samples
    in float64 (100 images × 65 sampling points), 633 ms in one piece, 224 ms in blocks of 256."""
    n = int(x.shape[0])
    if n == 0 or graph.device.type != "cpu":
        return graph.forward(x)
    widest = max(int(np.prod(node.shape)) for node in graph.nodes)
    size = max(64, FORWARD_BLOCK_BYTES // (x.element_size() * max(widest, 1)))
    if n <= size:
        return graph.forward(x)
    return torch.cat([graph.forward(x[s:s + size]) for s in range(0, n, size)])


def sample_attack(graph: Graph, region: InputBox, prop: OutputProperty, n: int = 64, seed: int = 0) -> np.ndarray | None:
    """Cheap falsification by evaluating the centre and ``n`` random points (corners included)."""
    return sample_attack_many(graph, [(region, prop)], n, seed)[0]


def sample_attack_many(graph: Graph, problems: list[tuple[InputBox, OutputProperty]], n: int = 64,
                       seed: int = 0) -> list[np.ndarray | None]:
    """:func:`sample_attack` for several (region, property) pairs with one forward pass.

    The clauses are evaluated on all points at once; points that (nearly) violate one are re-run
    with :func:`check_counterexample`, in order, and the first true counterexample is kept.
    Every region draws the same positions (a fresh generator seeded ``seed``), so they are drawn
    once per region shape (the same numbers as ``region.sample(n, default_rng(seed))``; 100 MNIST
    images: 0.8 ms of sampling per image before).
    """
    if not problems:
        return []
    units: dict[tuple[int, ...], np.ndarray] = {}
    size = int(problems[0][0].lower.size)
    if any(region.lower.size != size for region, _ in problems):
        raise ValueError("sample_attack_many: regions of different sizes")
    points = np.empty((len(problems), n + 1, size))  # every region's centre and samples, in place
    xs = []
    for i, (region, _) in enumerate(problems):
        u = units.get(region.shape)
        if u is None:
            u = units[region.shape] = unit_samples(n, region.shape, np.random.default_rng(seed))
        x = points[i].reshape(n + 1, *region.shape)
        x[0] = region.center
        x[1:] = region.at(u)
        xs.append(x)
    with torch.no_grad():
        ys = forward_blocks(graph, torch.as_tensor(points.reshape(-1, size), dtype=graph.dtype, device=graph.device))
        ys = ys.reshape(len(problems), n + 1, -1)
    out: list[np.ndarray | None] = []
    for (region, prop), x, y in zip(problems, xs, ys):
        A, b, mask = clause_tensors(prop, y.device, y.dtype)
        worst = clause_values(y, A, b, mask).max(dim=1).values
        near = torch.nonzero(worst >= -1e-9 * (1.0 + y.abs().amax(dim=1))).flatten().tolist()
        # the slack above only widens the candidates; the re-check on the network decides
        out.append(next((x[i] for i in near if check_counterexample(graph, region, prop, x[i])[0]), None))
    return out


def budgeted_attack(graph: Graph, region: InputBox, prop: OutputProperty, budget: float,
                    options: AttackOptions = AttackOptions(), first_seed: int = 1,
                    deadline: float | None = None, stats: dict | None = None) -> np.ndarray | None:
    """Repeat PGD with fresh seeds and growing start pools until ``budget`` seconds are spent.

    The pool grows ×4 per round (capped at ~2·10^7 input values in memory), which matters for
    low-dimensional inputs where counterexample regions are thin (ACAS Xu). The start pool is
    evaluated in one piece, so a round whose pool would not fit in the time left (estimated from
    the previous round) keeps the previous pool size, and no round starts that could not finish.
    """
    stop = time.perf_counter() + budget
    if deadline is not None:
        stop = min(stop, deadline)
    pool = options.sample_pool
    cap = max(options.sample_pool, int(2e7 // max(region.lower.size, 1)))
    seed = first_seed
    last = 0.0  # seconds of the previous round
    while True:
        left = stop - time.perf_counter()
        if left <= 0 or last > left:
            break
        if 4 * last < left:  # growing the pool costs up to ~4x the last round
            pool = min(pool * 4, cap)
        opts = AttackOptions(options.restarts, options.steps, options.step_size, seed, pool)
        t0 = time.perf_counter()
        cx = pgd_attack(graph, region, prop, opts, deadline=stop, stats=stats)
        last = time.perf_counter() - t0
        if cx is not None:
            return cx
        seed += 1
    return None
