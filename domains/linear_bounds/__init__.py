"""One backward linear-bound engine over the whole network graph (any DAG).

Every precise analysis stands on this package: DeepPoly (:mod:`absint.domains.deeppoly`) is the
engine with fixed heuristic slopes, ``alphapoly`` optimises the ReLU lower slopes α and the
sigmoid/tanh tangent points jointly over the intermediate layers (α-CROWN), ReLU-split branch and bound optimises α and split multipliers β
(β-CROWN), refinement and SDP take their bounds from it.

Modules:

* :mod:`.graph` — the chain-free graph view (:class:`Node`, :class:`GraphView`);
* :mod:`.relax` — relaxations of ReLU / sigmoid / tanh / max-pool, sound in real arithmetic;
* :mod:`.tangent` — optimisable sigmoid/tanh lines (tangent points as parameters, α-CROWN);
* :mod:`.backward` — the backward pass and the per-op rule table (:data:`RULES`), with rigorous
  rounding-error accounting;
* :mod:`.engine` — concrete bounds of nodes (DeepPoly's schedule), rows, symbolic input bounds;
* :mod:`.params` — optimisable parameters: slopes α, split multipliers β and **the multiplier slot**
  for extra linear constraints on a ReLU layer;
* :mod:`.optimize` — α/β/μ optimisation (projected Adam).

The multiplier slot (for k-ReLU / PRIMA hull rows, GCP-CROWN style): a
:class:`LayerConstraints` holds rows ``A_pre z + A_post y ≤ b`` over one ReLU layer's input ``z`` and
output ``y`` (``[K, n]`` shared, or ``[B, K, n]`` per batch member), valid in real arithmetic on each
member's region. Attach it with multipliers ``μ ≥ 0`` (``[R, K]``, one row per bounded target row) as
``NodeParams(mu=(constraints, μ))`` on that ReLU node in the :class:`Params` of a backward pass; the
bound then holds for every ``μ`` (the engine clamps ``μ ≥ 0``).
:class:`absint.domains.krelu.tighten.MultiNeuronBounds` optimises ``μ`` together with α layer by
layer (``kpoly``), and :class:`absint.bab.beta.BetaBounder` together with α and β in every
branch-and-bound sub-problem.
"""
from absint.domains.linear_bounds.engine import Engine, EngineOptions, concretize_box
from absint.domains.linear_bounds.graph import GraphView, Node
from absint.domains.linear_bounds.params import LayerConstraints, NodeParams, Params

__all__ = ["Engine", "EngineOptions", "GraphView", "LayerConstraints", "Node", "NodeParams", "Params",
           "concretize_box"]
