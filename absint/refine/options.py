"""Options of the LP/MILP refinement analyses (explicit frozen dataclasses, ERAN's defaults).

The presets mirror ERAN's modes (Singh et al.; flags documented in ERAN's README):

* ``lp`` — DeepPoly bounds, then the triangle LP of each safety row ("LP-cert");
* ``milp`` — complete MILP (Tjeng et al., ICLR 2019) over LP-tightened bounds;
* ``refinezono`` — DeepZ with per-neuron LP/MILP bound tightening ("Boosting Robustness
  Certification of Neural Networks", Singh et al., ICLR 2019), final LP, partial MILP;
* ``refinepoly`` — DeepPoly (+ optimised slopes) with the same MILP/LP tightening, final LP and a
  PRIMA-style partial MILP (binaries for the widest unstable neurons of the last layers);
* ``kpoly`` — ``refinepoly`` plus k-ReLU joint constraints ("Beyond the Single Neuron Convex
  Barrier", Singh et al., NeurIPS 2019) in the final LP / MILP (``krelu_tighten=True``: in every
  tightening LP too, as ERAN does).
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, ClassVar, Literal

from absint.domains.krelu import KReluOptions
from absint.errors import OptionError
from absint.options import Options

__all__ = ["RefineOptions", "PRESETS", "make_options"]


@dataclass(frozen=True)
class RefineOptions(Options):
    """Configuration of one refinement analysis.

    * ``domain`` — registered domain giving the initial bounds (``deeppoly``, ``deepzono``, ``box``).
    * ``tighten`` — per-neuron LP/MILP tightening of unstable pre-activations, layer by layer.
    * ``refine_from`` — index of the first ReLU layer whose inputs are tightened (ERAN: 1, the
      first layer's bounds are already exact for box inputs).
    * ``n_milp_refine`` — the first this-many tightened layers use a MILP (binaries for all
      unstable neurons before them, ERAN's ``n_milp_refine``), the rest an LP.
    * ``timeout_lp`` / ``timeout_milp`` — per-neuron solve time limits (seconds).
    * ``max_refine_neurons`` — per layer, tighten at most this many unstable neurons (widest first;
      ``None``: all).
    * ``krelu`` — k-ReLU options (``None`` or ``k == 1``: triangle relaxation only).
    * ``krelu_tighten`` — also put the k-ReLU rows into the per-neuron tightening LPs (ERAN does;
      tighter but each LP gets ~100 rows per group larger); ``False``: final LP/MILP only.
    * ``final`` — ``"lp"`` (triangle + k-ReLU rows) or ``"milp"`` (all unstable neurons binary).
    * ``timeout_final_lp`` / ``timeout_final_milp`` — time limits of the final solves.
    * ``partial_milp_layers`` / ``max_milp_neurons`` — if the final LP fails, a MILP with binaries
      for the ``max_milp_neurons`` widest unstable neurons of each of the last
      ``partial_milp_layers`` ReLU layers (0 disables).
    * ``workers`` — processes for the per-neuron solves (1: in-process).
    * ``backend`` — solver backend name (``None``: the default, HiGHS).
    * ``tighten_share`` — with a deadline, tightening and k-ReLU stop after this share of the time
      left, so that the final LP/MILP still runs.
    * ``alpha_iters`` — before any LP/MILP, each layer's bounds are tightened by back-substitution
      with optimised ReLU slopes (:mod:`absint.domains.alpha`, α-CROWN style; this many gradient steps,
      0 disables). Its bounds match the triangle LP's at a fraction of the cost, so with it
      the per-neuron *LP* tightening (without k-ReLU rows) is skipped unless ``lp_tighten``.
    * ``lp_tighten`` — per-neuron LP tightening of the layers not tightened by MILP: ``None``
      (auto: only when it can beat the α bounds, i.e. without α or with k-ReLU rows), True, False.
    * ``check_every`` — with optimised slopes, after every this-many tightened neurons the rows are
      re-bounded (≈0.1–0.3 s) and refinement stops as soon as all are proved (0: per layer only).
    * ``final_bab`` — if the final LP fails, run ReLU-split branch and bound with α/β bounding
      (:mod:`absint.bab.beta`, β-CROWN style) over the refined bounds for ``final_bab_share`` of the
      time left (at most ``final_bab_timeout`` seconds), before the partial MILP (on in ``refinepoly``/``kpoly``: 43 → 46 of 99 on
      MNIST 6x100, ``benchmarks/results/refine.md``).
    * ``solve_threads`` — Gurobi solves run in this many threads at once (one solver thread each);
      HiGHS solves use ``workers`` (processes) instead.
    * ``give_up_below`` — triage: when the worst row's bound after the cheap passes (domain + α) is
      below this value, skip the expensive LP/MILP refinement and report the cheap bounds (a
      deliberately incomplete time saver for benchmarks over many inputs; ``None``: never).
    """

    domain: str = "deeppoly"
    tighten: bool = True
    refine_from: int = 1
    n_milp_refine: int = 3
    timeout_lp: float = 1.0
    timeout_milp: float = 1.0
    max_refine_neurons: int | None = None
    krelu: KReluOptions | None = KReluOptions()
    krelu_tighten: bool = False
    final: Literal["lp", "milp"] = "lp"
    timeout_final_lp: float = 100.0
    timeout_final_milp: float = 100.0
    partial_milp_layers: int = 1
    max_milp_neurons: int = 30
    workers: int = 1
    backend: str | None = None
    tighten_share: float = 0.8
    alpha_iters: int = 30
    lp_tighten: bool | None = None
    give_up_below: float | None = None
    solve_threads: int = 1
    check_every: int = 10
    final_bab: bool = False
    final_bab_share: float = 0.6
    final_bab_timeout: float = 30.0

    #: k-ReLU fields accepted directly as keywords (``k``, ``s``, ``sparse_n``, ...): see :meth:`from_keywords`.
    extra_keywords: ClassVar[frozenset[str]] = frozenset(f.name for f in fields(KReluOptions))

    @property
    def use_krelu(self) -> bool:
        return self.krelu is not None and self.krelu.k > 1

    def check(self) -> None:
        if min(self.timeout_lp, self.timeout_milp, self.timeout_final_lp, self.timeout_final_milp) < 0:
            raise OptionError("refine: time limits must be ≥ 0")
        if self.workers < 1 or self.solve_threads < 1 or self.refine_from < 0 or self.n_milp_refine < 0:
            raise OptionError("refine: workers and solve_threads must be ≥ 1, refine_from and n_milp_refine ≥ 0")
        if not (0 <= self.tighten_share <= 1 and 0 <= self.final_bab_share <= 1):
            raise OptionError("refine: tighten_share and final_bab_share must lie in [0, 1]")

    @classmethod
    def from_keywords(cls, base: "RefineOptions | None", keywords: dict[str, Any], *, owner: str = "") -> "RefineOptions":
        """``base`` with ``keywords`` applied; besides the fields, the k-ReLU fields (``k``, ``s``,
        ``sparse_n``, ``cutoff``, ``hull``, ``relative_cutoff``) are accepted directly."""
        base = cls() if base is None else base
        overrides = dict(keywords)
        kre = {k: overrides.pop(k) for k in list(overrides) if k in _KRELU_KEYS}
        unknown = set(overrides) - {f.name for f in fields(cls)}
        if unknown:
            from absint.options import _unknown_message

            raise OptionError(_unknown_message(cls, sorted(unknown), owner))
        opts = replace(base, **overrides)
        if kre.get("k") == 1:  # k = 1 is the triangle relaxation alone
            return replace(opts, krelu=None)
        if kre and (opts.krelu is not None or "k" in kre):
            # k-ReLU settings only switch k-ReLU on for presets without it when ``k`` is given
            try:
                opts = replace(opts, krelu=replace(opts.krelu or KReluOptions(), **kre))
            except (TypeError, ValueError) as exc:
                raise OptionError(f"{owner or 'refine'}: k-ReLU options: {exc}") from None
        return opts


PRESETS: dict[str, RefineOptions] = {
    "lp": RefineOptions(tighten=False, krelu=None, partial_milp_layers=0, alpha_iters=0),
    "milp": RefineOptions(tighten=True, n_milp_refine=0, krelu=None, final="milp", partial_milp_layers=0,
                          timeout_final_milp=3600.0),
    "refinezono": RefineOptions(domain="deepzono", krelu=None, alpha_iters=0),
    "refinepoly": RefineOptions(krelu=None, final_bab=True),
    "kpoly": RefineOptions(final_bab=True),
}

_KRELU_KEYS = {f.name for f in fields(KReluOptions)}


def make_options(preset: str, overrides: dict[str, Any]) -> RefineOptions:
    """The preset's options with ``overrides`` applied (``options=`` may pass a whole
    :class:`RefineOptions`); see :meth:`RefineOptions.from_keywords`."""
    overrides = dict(overrides)
    base = overrides.pop("options", None) or PRESETS[preset]
    return RefineOptions.from_keywords(base, overrides, owner=preset)
