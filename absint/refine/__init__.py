"""LP/MILP encodings and refinement analyses (lp, milp, refinezono, refinepoly/kpoly).

* :mod:`absint.refine.encoding` — network + proved bounds → :class:`solvers.LinearModel`
  (triangle LP, big-M MILP of Tjeng et al., k-ReLU rows);
* :mod:`absint.refine.krelu_rows` — k-ReLU hull rows of a layer from a domain's octahedral bounds;
* :mod:`absint.refine.driver` — one refinement run (tightening, k-ReLU, final LP/MILP);
* :mod:`absint.refine.analyses` — the named analyses; :mod:`absint.refine.options` their options.
"""
from __future__ import annotations

from absint.refine.encoding import Encoding, KReluRows, NetworkEncoder, UnsupportedNetworkError, operator_matrix
from absint.refine.options import PRESETS, RefineOptions, make_options

__all__ = ["Encoding", "KReluRows", "NetworkEncoder", "UnsupportedNetworkError", "operator_matrix",
           "PRESETS", "RefineOptions", "make_options"]

