"""Options of the branch-and-bound analysis (a frozen dataclass, never global state)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from absint.errors import OptionError
from absint.options import Options

SplitMode = Literal["input", "relu", "auto"]
InputHeuristic = Literal["portfolio", "smear", "smear_worst", "width", "lookahead"]
ReluHeuristic = Literal["auto", "babsr", "width", "fsb"]
#: Default ``tighten_depth`` (see :class:`BabOptions`).
TIGHTEN_DEPTH: int | None = 1
#: ``relu_heuristic="auto"`` picks ``fsb`` on networks with at most this many ReLU layers, else
#: ``babsr``: the look-ahead does not re-bound the layers after the split, so it misses more of a
#: split's effect the deeper the network. Measured (benchmarks/RESULTS.md, "Filtered smart
#: branching"): fewer sub-problems and +1 verified on ConvSmall (3 ReLU layers), faster on mnistfc
#: 256x2; mixed on 256x4; on 6x200 and 9x100 one verified image lost and lower proved shares.
FSB_MAX_RELU_LAYERS = 3


def resolve_relu_heuristic(heuristic: str, relu_layers: int) -> str:
    """The heuristic ``relu_heuristic`` means on a network with ``relu_layers`` ReLU layers (``auto``
    resolved by :data:`FSB_MAX_RELU_LAYERS`; the others are themselves)."""
    if heuristic != "auto":
        return heuristic
    return "fsb" if relu_layers <= FSB_MAX_RELU_LAYERS else "babsr"


def check_tighten_depth(value: object, owner: str = "bab") -> None:
    """Raise :class:`OptionError` unless ``value`` is None or a whole number ≥ 1 (one rule for
    :class:`BabOptions`, :class:`absint.bab.beta.BetaOptions` and the refinement ``Bab`` stage)."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise OptionError(f"{owner}: tighten_depth must be None or a whole number ≥ 1, got {value!r}")


@dataclass(frozen=True)
class BabOptions(Options):
    """Settings of :class:`absint.bab.BabAnalysis`.

    * ``domain`` — name of the registered domain that bounds every sub-problem (``None``: DeepPoly
      when registered, else Box); ``domain_options`` its options object (``None``: the domain's
      defaults, except DeepPoly without ``early_stop``, which is tighter per sub-problem).
    * ``split`` — ``input`` (bisect the input box, Wang et al. 2018 ReluVal/Neurify), ``relu``
      (fix the phase of an unstable ReLU, Bunel et al. JMLR 2020) or ``auto`` (input splitting
      when the input has at most ``auto_input_dims`` variables).
    * ``input_heuristic`` — ``smear``: the dimension maximising Σ_r |∂bound_r/∂x_i|·width_i/|bound_r|
      over the open rows (from the domain's symbolic input coefficients when it has them, else
      the concrete gradient at the centre); ``smear_worst``: the same for the single worst row;
      ``width``: the widest dimension (relative to the root box); ``lookahead``: bound both halves
      of every bisection and keep the dimension whose halves' worst bounds sum highest (``2n``
      extra bounds per split; the halves keep these bounds); ``portfolio`` (default): a smear and a
      lookahead search in alternating, doubling time slices, the first to decide answers (one
      worker; with several workers, smear); each of the two keeps its own queue of at most
      ``max_queue`` sub-problems. ``max_aspect``: bisect the
      relatively widest dimension instead when it is more than this many times wider than the
      heuristic's choice (0: never), so no dimension is starved.
    * ``relu_heuristic`` — ``babsr``: |gradient of the worst row w.r.t. the neuron| times the
      triangle relaxation's intercept −u·l/(u−l) (a cheap BaBSR-like score; with α/β bounding, the
      chord intercept weighted by the backward pass's own coefficient); ``width``: u − l;
      ``fsb``: filtered smart branching (De Palma et al., arXiv 2021, as in β-CROWN): the
      ``fsb_candidates`` best ``babsr`` neurons are split for a look-ahead, both children of each
      bounded in one cheap batched pass (parent's α/β, no steps, the worst open clause's rows),
      and the neuron with the best worse child wins; the children keep those bounds. Only α/β
      bounding looks ahead; with ``bounding="domain"`` ``fsb`` scores like ``babsr``. ``auto``
      (default): ``fsb`` on networks with at most :data:`FSB_MAX_RELU_LAYERS` ReLU layers,
      ``babsr`` on deeper ones.
    * ``batch_size`` — sub-problems bounded together in one domain call.
    * ``max_queue`` — at most this many open sub-problems are stored; past half of it, the
      search turns depth-first (deepest sub-problems first, which closes leaves and keeps the
      queue short), and if the queue is still full the analysis stops with "unknown (memory
      bound)" — never more memory than that.
    * ``workers`` — processes that share the open sub-problems (1: in-process).
    * ``attack`` / ``attack_every`` — evaluate cheap candidates (box centre, the vertex minimising
      the symbolic lower bound) for every bounded sub-problem, and after every ``attack_every``
      seconds of search a short PGD, alternately on the whole region with a start pool growing
      ×4 per run and on the most promising open sub-problem (0: never); the pause between two
      runs is at least 4× the last run's duration, so attacks take at most ~1/5 of the time.
    * ``tolerance`` — a clause counts as refuted on a sub-problem when its proved margin bound exceeds
      it (default 0, strictly: the bounds are rigorous, as in :func:`absint.verify.decide`).
    * ``max_depth`` — a sub-problem deeper than this is left open (stuck; answer unknown).
    * ``max_nodes`` — stop (status ``budget``, answer unknown with the partial results) once this
      many sub-problems have been bounded (``None``: no limit; the ``root`` probe's count too). A budget in work, not in seconds:
      the same on a busy and an idle machine (what tests use instead of a time limit).
    * ``bounding`` — ``domain``: every sub-problem is bounded by ``domain`` (splits imposed as box
      meets on pre-activation bounds); ``alpha-beta``: with ReLU splitting on a chain network,
      optimised slopes + split multipliers (β-CROWN style, :mod:`absint.bab.beta`) over the
      root's α-optimised intermediate bounds (input splitting keeps ``domain``); the default,
      measured 58 vs 46 decided mnistfc instances at 30 s (``benchmarks/results/bab.md``).
      ``beta_iters``: Adam iterations per batch of sub-problems. ``tighten_depth``: after a split,
      the intermediate bounds of at most this many following ReLU layers are re-bounded per
      sub-problem (``None``: every later layer; the deeper layers keep their parent's bounds).
      ``beta_dtype``: the precision of the optimisation steps. ``float32`` (default) takes the
      steps on a float32 copy of each batch's relaxation and reports one float64 pass with the
      best values found, so every reported bound stays a float64 bound with its rounding
      accounted. On mnistfc it bounds 1.2–2.9x (median 1.9x) the sub-problems of ``float64``
      in the same time (benchmarks/RESULTS.md, "Float32 steps in branch and bound").
    * ``root`` — with α/β ReLU splitting, how the root's intermediate bounds are found before the
      first split. ``alpha``: optimised slopes alone. ``multineuron`` (default): a probe first runs
      the search with optimised slopes alone for at most ``root_probe_nodes`` sub-problems (15: the
      top four levels of the tree, which decide most easy instances in about a second); if that
      leaves the instance open, every ReLU input is tightened from the probe's root bounds with
      optimised slopes and k-ReLU hull-row multipliers for ``root_share`` of the time left (kpoly's
      root, :mod:`absint.bab.root`) and the safety rows are bounded the same way (an instance they
      prove needs no split); the search starts from those bounds. Measured on mnistfc at 30 s
      (benchmarks/RESULTS.md, "Multi-neuron root in bab").
    """

    domain: str | None = None
    domain_options: Any = None
    split: SplitMode = "auto"
    auto_input_dims: int = 10
    input_heuristic: InputHeuristic = "portfolio"
    max_aspect: float = 200.0
    relu_heuristic: ReluHeuristic = "auto"
    batch_size: int = 256
    max_queue: int = 200_000
    workers: int = 1
    attack: bool = True
    attack_every: float = 1.0
    tolerance: float = 0.0
    max_depth: int = 200
    max_nodes: int | None = None
    seed: int = 0
    bounding: Literal["domain", "alpha-beta"] = "alpha-beta"
    beta_iters: int = 20
    tighten_depth: int | None = TIGHTEN_DEPTH
    fsb_candidates: int = 3
    beta_dtype: Literal["float32", "float64"] = "float32"
    root: Literal["alpha", "multineuron"] = "multineuron"
    root_share: float = 0.5
    root_probe_nodes: int = 15

    def check(self) -> None:
        # the Literal fields (split, heuristics, bounding) are checked from their annotations
        if self.batch_size < 1 or self.max_queue < 2 or self.workers < 1:
            raise OptionError("bab: batch_size and workers must be ≥ 1 and max_queue ≥ 2")
        if self.max_depth < 0 or self.beta_iters < 0 or self.auto_input_dims < 0:
            raise OptionError("bab: max_depth, beta_iters and auto_input_dims must be ≥ 0")
        if not (self.tolerance >= 0 and self.max_aspect >= 0 and self.attack_every >= 0):
            raise OptionError("bab: tolerance, max_aspect and attack_every must be ≥ 0")
        check_tighten_depth(self.tighten_depth)
        if isinstance(self.fsb_candidates, bool) or not isinstance(self.fsb_candidates, int) or self.fsb_candidates < 1:
            raise OptionError(f"bab: fsb_candidates must be a whole number ≥ 1, got {self.fsb_candidates!r}")
        if isinstance(self.root_probe_nodes, bool) or not isinstance(self.root_probe_nodes, int) or self.root_probe_nodes < 1:
            raise OptionError(f"bab: root_probe_nodes must be a whole number ≥ 1, got {self.root_probe_nodes!r}")
        if not 0.0 < self.root_share <= 1.0:
            raise OptionError(f"bab: root_share must be in (0, 1], got {self.root_share!r}")
        if self.max_nodes is not None and self.max_nodes < 1:
            raise OptionError(f"bab: max_nodes must be ≥ 1 or None, got {self.max_nodes!r}")
