"""The refinement presets as lists of configured stages, and the options that edit them.

The presets follow ERAN's modes (Singh et al.; flags documented in ERAN's README):

* ``lp`` — DeepPoly, then the LP of each unproved row ("LP-cert");
* ``milp`` — DeepPoly, optimised slopes, then the complete MILP (Tjeng et al., ICLR 2019);
* ``refinezono`` — DeepZ, per-neuron MILP/LP tightening ("Boosting Robustness Certification of
  Neural Networks", Singh et al., ICLR 2019), final LP, partial MILP;
* ``refinepoly`` — DeepPoly, optimised slopes, MILP tightening of three layers, the rows' slopes,
  final LP, α/β branch and bound, PRIMA-style partial MILP;
* ``kpoly`` — DeepPoly, optimised slopes, then k-ReLU joint constraints ("Beyond the Single Neuron
  Convex Barrier", Singh et al., NeurIPS 2019; PRIMA, Müller et al., POPL 2022) *inside* bound
  propagation: every layer re-bounded with optimised slopes and hull-row multipliers (GCP-CROWN,
  Zhang et al., NeurIPS 2022; stage ``multineuron``, no LP), then α/β branch and bound over those
  bounds for the rest of the time (``bab.hull_rows=True`` gives its sub-problems the hull rows too;
  off by default, measured slower to certify). (``refinepoly`` with ``k=3`` puts hull rows into its
  final LP.)

:class:`RefineConfig` is an analysis' whole configuration: the pipeline and the solver options.
:func:`make_config` applies keyword options to a preset. Three kinds of keys are accepted:

* ``"<stage>.<field>"`` edits one stage (e.g. ``"tighten.timeout_milp": 0.5``); ``"<stage>": False``
  removes a stage and ``"<stage>": True`` adds it with its defaults (e.g. ``bab=True``);
* the solver options ``backend``, ``fallback``, ``workers``, ``threads``;
* the flat names of the earlier option record (``timeout_lp``, ``n_milp_refine``, ``final_bab``,
  ``give_up_below``, ``k``, ``sparse_n``, ...; table :data:`ALIASES`), kept so that existing
  configurations and commands run unchanged.

Anything else, and every value of the wrong type or range, raises :class:`~absint.errors.OptionError`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields, replace
from typing import Any, Callable

from absint.errors import OptionError
from absint.options import Options
from absint.refine.final import Bab, CompleteMILP, FinalLP, PartialMILP
from absint.refine.multineuron import MultiNeuron
from absint.refine.pipeline import Pipeline, Stage
from absint.refine.solving import SolverOptions
from absint.refine.stages import DomainBounds, KRelu, RowSlopes, Slopes, Triage
from absint.refine.tighten import Tighten
from absint.domains.krelu import KReluOptions

__all__ = ["RefineConfig", "PRESETS", "STAGE_TYPES", "make_config", "ALIASES"]

#: every stage type by key, in the order stages run when a pipeline has them
STAGE_TYPES: dict[str, type[Stage]] = {s().key: s for s in (
    DomainBounds, Slopes, Triage, MultiNeuron, Tighten, KRelu, RowSlopes, FinalLP, CompleteMILP, Bab, PartialMILP)}
_ORDER = list(STAGE_TYPES)


@dataclass(frozen=True)
class RefineConfig(Options):
    """A refinement analysis' options object: its pipeline of stages and how LPs/MILPs are solved.

    Keywords edit a preset (:meth:`from_keywords`, see the module docstring)."""

    pipeline: Pipeline = field(default_factory=lambda: PRESETS["refinepoly"].pipeline)
    solver: SolverOptions = field(default_factory=SolverOptions)

    @classmethod
    def from_keywords(cls, base: "RefineConfig | None", keywords: dict[str, Any], *, owner: str = "") -> "RefineConfig":
        return make_config(owner or "refinepoly", keywords, base=base)

    @property
    def domain(self) -> str:
        return self.pipeline.stages[0].domain  # type: ignore[attr-defined]

    def describe(self) -> dict[str, Any]:
        """Plain data for experiment records: every stage with its options (``key`` names the stage),
        and the solver options."""
        return dataclasses.asdict(self)


def _pipeline(*stages: Stage) -> Pipeline:
    return Pipeline(tuple(stages))


PRESETS: dict[str, RefineConfig] = {
    "lp": RefineConfig(_pipeline(DomainBounds(), FinalLP())),
    "milp": RefineConfig(_pipeline(DomainBounds(), Slopes(), CompleteMILP())),
    "refinezono": RefineConfig(_pipeline(
        DomainBounds("deepzono"), Tighten(slope_iters=0), FinalLP(), PartialMILP())),
    "refinepoly": RefineConfig(_pipeline(
        DomainBounds(), Slopes(), Tighten(), RowSlopes(), FinalLP(), Bab(), PartialMILP())),
    "kpoly": RefineConfig(_pipeline(
        DomainBounds(), Slopes(), MultiNeuron(), Bab(share=1.0, max_seconds=None))),
}


# -- editing ------------------------------------------------------------------------------------
class _Editor:
    """A pipeline under edit: stages by key (kept in the canonical order) and the solver options."""

    def __init__(self, config: RefineConfig) -> None:
        self.stages: dict[str, Stage] = {s.key: s for s in config.pipeline.stages}
        self.solver = {f.name: getattr(config.solver, f.name) for f in fields(config.solver)}

    def has(self, key: str) -> bool:
        return key in self.stages

    def toggle(self, key: str, on: bool) -> None:
        if not on:
            self.stages.pop(key, None)
        elif key not in self.stages:
            self.stages[key] = STAGE_TYPES[key]()

    def set(self, key: str, name: str, value: Any) -> None:
        """Set option ``name`` of stage ``key`` (which the pipeline must have)."""
        if key not in self.stages:
            raise OptionError(f"the pipeline has no stage {key!r} for option {name!r} "
                              f"(add the stage with {key}=True)")
        stage = self.stages[key]
        if name not in stage.option_names():
            raise OptionError(f"stage {key!r} has no option {name!r}; it has "
                              f"{', '.join(stage.option_names()) or 'none'}")
        self.stages[key] = replace(stage, **{name: value})

    def set_present(self, targets: tuple[tuple[str, str], ...], value: Any) -> None:
        """Set ``value`` on every ``(stage, option)`` whose stage the pipeline has (at least one)."""
        present = [(k, n) for k, n in targets if k in self.stages]
        if not present:
            raise OptionError(f"the pipeline has none of the stages {[k for k, _ in targets]}")
        for k, n in present:
            self.set(k, n, value)

    def build(self) -> RefineConfig:
        stages = tuple(self.stages[k] for k in _ORDER if k in self.stages)
        return RefineConfig(Pipeline(stages), SolverOptions(**self.solver))


def _slope_iters(e: _Editor, n: int) -> None:
    if not isinstance(n, int) or isinstance(n, bool):
        raise OptionError(f"alpha_iters: expected int, got {n!r}")
    for key in ("slopes", "row_slopes"):
        if n <= 0:
            e.toggle(key, False)
        elif e.has(key):
            e.set(key, "iters", n)
            e.set(key, "final_iters", 2 * n)
    if e.has("tighten"):
        e.set("tighten", "slope_iters", max(n, 0))
        e.set("tighten", "slope_final_iters", max(2 * n, 0))


def _final(e: _Editor, kind: str) -> None:
    if kind not in ("lp", "milp"):
        raise OptionError(f"final must be 'lp' or 'milp', not {kind!r}")
    e.toggle("final_lp", kind == "lp")
    e.toggle("complete_milp", kind == "milp")
    if kind == "milp":
        for key in ("bab", "partial_milp"):
            e.toggle(key, False)


def _give_up(e: _Editor, v: float | None) -> None:
    e.toggle("triage", v is not None)
    if v is not None:
        e.set("triage", "give_up_below", v)


def _krelu(e: _Editor, opts: KReluOptions | None) -> None:
    e.toggle("krelu", opts is not None and opts.k > 1)
    if opts is not None and opts.k > 1:
        e.set("krelu", "krelu", opts)


def _flag(name: str, v: Any) -> bool:
    if not isinstance(v, bool):
        raise OptionError(f"{name}: expected True or False, got {v!r}")
    return v


def _to(*targets: tuple[str, str]) -> Callable[[_Editor, Any], None]:
    """An alias that sets its value (type-checked by the stage) on every listed stage present."""
    return lambda e, v: e.set_present(targets, v)


def _partial(name: str) -> Callable[[_Editor, Any], None]:
    def edit(e: _Editor, v: Any) -> None:
        if isinstance(v, int) and not isinstance(v, bool) and v <= 0:
            e.toggle("partial_milp", False)
        elif e.has("partial_milp"):
            e.set("partial_milp", name, v)
        else:
            raise OptionError("the pipeline has no stage 'partial_milp' (add it with partial_milp=True)")
    return edit


#: the flat option names of the earlier option record -> how each edits the pipeline
ALIASES: dict[str, Callable[[_Editor, Any], None]] = {
    "domain": _to(("domain", "domain")),
    "tighten": lambda e, v: e.toggle("tighten", _flag("tighten", v)),
    "refine_from": _to(("tighten", "refine_from")),
    "n_milp_refine": _to(("tighten", "milp_layers")),
    "lp_tighten": _to(("tighten", "lp")),
    "timeout_lp": _to(("tighten", "timeout_lp")),
    "timeout_milp": _to(("tighten", "timeout_milp")),
    "max_refine_neurons": _to(("tighten", "max_neurons")),
    "check_every": _to(("tighten", "check_every")),
    "tighten_share": _to(("tighten", "share")),
    "alpha_iters": _slope_iters,
    "final": _final,
    "timeout_final_lp": _to(("final_lp", "timeout")),
    "timeout_final_milp": _to(("complete_milp", "timeout"), ("partial_milp", "timeout")),
    "partial_milp_layers": _partial("layers"),
    "max_milp_neurons": _partial("neurons"),
    "final_bab": lambda e, v: e.toggle("bab", _flag("final_bab", v)),
    "final_bab_share": _to(("bab", "share")),
    "final_bab_timeout": _to(("bab", "max_seconds")),
    "give_up_below": _give_up,
    "krelu": _krelu,
    "solve_threads": lambda e, v: e.solver.__setitem__("threads", v),
}
_KRELU_KEYS = {f.name for f in fields(KReluOptions)}
_SOLVER_KEYS = {f.name for f in fields(SolverOptions)}


def make_config(preset: str, overrides: dict[str, Any], *, base: RefineConfig | None = None) -> RefineConfig:
    """``base`` (default: the preset's configuration) with ``overrides`` applied (see the module
    docstring). The k-ReLU fields (``k``, ``s``, ``sparse_n``,
    ``cutoff``, ``hull``, ``relative_cutoff``, ``max_groups``) edit the ``multineuron`` stage where the
    pipeline has one (``kpoly``; ``k=1``: slopes alone there), else the ``krelu`` stage (``k``
    switches it on, ``k=1`` off) and, with ``krelu_tighten=True``, the tightening LPs' rows too.
    """
    overrides = dict(overrides)
    if base is None:
        if preset not in PRESETS:
            raise OptionError(f"no refinement preset {preset!r}; presets: {', '.join(PRESETS)}")
        base = PRESETS[preset]
    e = _Editor(base)
    kre = {k: overrides.pop(k) for k in list(overrides) if k in _KRELU_KEYS}
    krelu_tighten = overrides.pop("krelu_tighten", None)
    for key, value in overrides.items():
        if key in _SOLVER_KEYS:
            e.solver[key] = value
        elif key in ALIASES:
            ALIASES[key](e, value)
        elif key in STAGE_TYPES:
            e.toggle(key, _flag(key, value))
        elif "." in key and key.split(".", 1)[0] in STAGE_TYPES:
            stage, name = key.split(".", 1)
            if not e.has(stage):
                raise OptionError(f"option {key!r}: the {preset!r} pipeline has no stage {stage!r} "
                                         f"(add it with {stage}=True)")
            e.set(stage, name, value)
        else:
            raise OptionError(f"analysis {preset!r} does not take the option {key!r}; options: a stage name "
                              f"({', '.join(STAGE_TYPES)}), '<stage>.<option>', {', '.join(sorted(_SOLVER_KEYS))}, "
                              f"{', '.join(sorted(ALIASES))}, k-ReLU fields ({', '.join(sorted(_KRELU_KEYS))})")
    if kre and e.has("multineuron"):  # kpoly: the k-ReLU fields edit the rows inside bound propagation
        current = e.stages["multineuron"].krelu  # type: ignore[attr-defined]
        if "k" in kre and "s" not in kre:  # keep the overlap valid for the new k (k + s >= 0)
            kre["s"] = max(current.s, -int(kre["k"]))
        try:
            e.set("multineuron", "krelu", replace(current, **kre))
        except ValueError as exc:
            raise OptionError(f"k-ReLU options {kre}: {exc}") from None
        kre = {}
    if kre:
        if kre.get("k") == 1:
            e.toggle("krelu", False)
        elif e.has("krelu") or "k" in kre:  # k-ReLU settings switch it on only together with k
            current = e.stages["krelu"].krelu if e.has("krelu") else KReluOptions()  # type: ignore[attr-defined]
            _krelu(e, replace(current, **kre))
    if krelu_tighten is not None:
        rows = e.stages["krelu"].krelu if (krelu_tighten and e.has("krelu")) else None  # type: ignore[attr-defined]
        e.set("tighten", "krelu", rows)
    return e.build()
