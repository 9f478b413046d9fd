"""LP/MILP encodings and refinement analyses (lp, milp, refinezono, refinepoly, kpoly).

* :mod:`absint.refine.encoding` / :mod:`absint.refine.encode_ops` — network + proved bounds →
  :class:`solvers.LinearModel` (any DAG of Affine/Conv, ReLU, Sigmoid, Tanh, MaxPool2d, Reshape, Add;
  triangle / big-M ReLUs, DeepPoly lines of S-shaped activations, max-pooling, k-ReLU rows);
* :mod:`absint.refine.state` — the state record a pipeline passes through its stages;
* :mod:`absint.refine.pipeline` — :class:`Pipeline`, :class:`Stage`, the shared :class:`Context`;
* :mod:`absint.refine.stages`, :mod:`absint.refine.tighten`, :mod:`absint.refine.final` — the stages;
* :mod:`absint.refine.presets` — the presets as stage lists, and the options that edit them;
* :mod:`absint.refine.solving` — strict backend choice, solve time limits from the deadline;
* :mod:`absint.refine.bounding` — the one adapter to the slope / branch-and-bound engine;
* :mod:`absint.refine.analyses` — the named analyses.
"""
from __future__ import annotations

from absint.refine.encoding import Encoding, KReluRows, NetworkEncoder, UnsupportedNetworkError, operator_matrix
from absint.refine.pipeline import Context, Pipeline, Stage
from absint.refine.presets import PRESETS, RefineConfig, make_config
from absint.refine.solving import LicenceLimitError, SolverOptions
from absint.refine.state import Problem, RefineState

__all__ = ["Encoding", "KReluRows", "NetworkEncoder", "UnsupportedNetworkError", "operator_matrix",
           "Context", "Pipeline", "Stage", "PRESETS", "RefineConfig", "make_config", "LicenceLimitError",
           "SolverOptions", "Problem", "RefineState", "run_preset"]


def run_preset(graph, lower, upper, C, d, preset: str = "refinepoly", *, deadline: float | None = None,
               **options) -> RefineState:
    """One refinement run on one box (``lower``/``upper``: ``[1, *input]`` tensors; ``C``: ``[m, n_out]``
    arrays) with a preset and keyword options; returns the final :class:`RefineState` (for tests and
    scripts that want the stages' statistics and node bounds)."""
    import numpy as np

    from absint.refine.analyses import RefineAnalysis

    an = type("PresetRun", (RefineAnalysis,), {"name": preset, "preset": preset})(**options)
    ctx = an._context(graph)
    problem = Problem(ctx.graph, lower.to(an.device, an.domain.dtype), upper.to(an.device, an.domain.dtype),
                      np.asarray(C, dtype=np.float64), np.asarray(d, dtype=np.float64))
    return an.config.pipeline.run(problem, ctx, deadline)
