"""Multi-neuron root bounds for ReLU-split branch and bound (``BabOptions.root="multineuron"``).

Before the first split, every ReLU input is tightened layer by layer with optimised slopes α and
multipliers μ on k-ReLU hull rows of the earlier layers (:class:`~absint.domains.krelu.tighten.
MultiNeuronBounds`: GCP-CROWN, Zhang et al. NeurIPS 2022, with kPoly/PRIMA rows, Singh et al.
NeurIPS 2019, Müller et al. POPL 2022), then the safety rows are bounded the same way. Branch and
bound starts from these pre-activation bounds: fewer unstable neurons, and every sub-problem's α/β
bound inherits the tighter intermediate bounds (β-CROWN, Wang et al. NeurIPS 2021, re-bounds only
the layers after a split). Every number is a proved bound on the whole region (the engine's
rounding included), so it stays valid in every sub-problem.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from absint.domains.krelu.tighten import KPOLY_KRELU, TightenOptions, rows_deadline, start_region
from absint.domains.linear_bounds import Engine, GraphView
from absint.ir import Graph
from absint.specs import InputBox

__all__ = ["MultiNeuronRoot", "multineuron_root"]

@dataclass
class MultiNeuronRoot:
    """Proved bounds on one region: ReLU-input bounds by node name (flat), lower bounds of the safety
    rows ``C y + d`` (``-inf`` where not bounded), and the tightening's record."""

    pre: dict[str, tuple[np.ndarray, np.ndarray]]
    rows: np.ndarray
    stats: dict[str, Any] = field(default_factory=dict)


def multineuron_root(graph: Graph, region: InputBox, C: np.ndarray, d: np.ndarray, *,
                     deadline: float | None, end: float | None, device: Any = "cpu",
                     options: TightenOptions = TightenOptions(),
                     known: dict[str, tuple[np.ndarray, np.ndarray]] | None = None) -> MultiNeuronRoot:
    """Tighten until ``deadline`` (the root's share of the time), then bound the rows until
    :func:`~absint.domains.krelu.tighten.rows_deadline` (at least a tenth of the time left to
    ``end``, the search's own deadline, never beyond it). ``None``: no limit (``options.iters``
    steps per layer). ``known``: bounds proved elsewhere (node name → flat ``(lower, upper)``, e.g.
    the α root's), the start."""
    t0 = time.perf_counter()
    engine = Engine(device=device, dtype=torch.float64)
    view = GraphView.of(graph.to(device, torch.float64), 1)
    lo = torch.as_tensor(np.asarray(region.lower, dtype=np.float64), device=device)
    hi = torch.as_tensor(np.asarray(region.upper, dtype=np.float64), device=device)
    mb = start_region(view, engine, lo, hi, KPOLY_KRELU, options, known)
    st = mb.run(deadline)
    rows = np.full(len(d), -np.inf)
    now = time.perf_counter()
    if len(d) and (end is None or now < end):
        rows = mb.bound_safety_rows(view.output, C, d, rows_deadline(deadline, end, now))
    return MultiNeuronRoot(mb.preactivation_bounds(), rows, dict(seconds=time.perf_counter() - t0, **asdict(st)))
