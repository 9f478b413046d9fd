"""The public verification entry points: :func:`verify` and :func:`verify_robustness`.

Flow of one instance: check the spec against the network; try to falsify cheaply (centre and
random samples, then PGD); run the analysis and turn its proved lower bounds into a verdict.
A time limit covers the whole instance: loading the network and parsing the specification when
:func:`verify` is given files, the attacks, the analysis (see :mod:`absint.timelimit` for the
cooperative deadline and the backstop); a time-out says what was done.
A clause of the violation DNF is refuted when one of its rows has a proved lower bound strictly
above 0 — the bound itself is rigorous in real arithmetic (every analysis accounts for its own
float rounding, :mod:`absint.rounding`), so no fixed tolerance stands in for rounding; a caller
may still demand a larger margin with ``tolerance``. The property is verified when every clause is
refuted. Any failure to decide (loose bounds, time-out, solver limit) gives
``unknown`` with the reason — never a crash, never a guess.
"""
from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch

from absint.analyses import Analysis, BoundResult, check_supported, get_analysis
from absint.attack import AttackOptions, budgeted_attack, check_counterexample, pgd_attack, sample_attack_many
from absint.errors import AbsintError, InvalidArgumentError, InvariantError, SpecError
from absint.ir import Graph
from absint.linear import numel
from absint.recheck import recheck
from absint.results import Result, Verdict
from absint.specs import Instance, InputBox, OutputProperty, Spec, check_radius, linf_ball, robustness_property
from absint.timelimit import InvalidTimeLimit, Progress, allowed_overshoot, check_limit, hard_limit

#: torch CPU threads used while an analysis runs (``threads`` of :func:`verify` and its relatives).
#: One by default: the analyses issue many small tensor ops, and with 2 intra-op threads on a loaded
#: 2-core machine each parallel region waits ~11 ms for a descheduled worker thread (measured, load
#: 1.9-2.3: bab on mnistfc 256x2 prop_3_0.03 bounded 4 sub-problems in 20 s with 2 threads, 1776 with 1).
DEFAULT_THREADS = 1


@contextlib.contextmanager
def torch_threads(threads: int | None):
    """Run the body with ``torch.set_num_threads(threads)`` and restore the previous count after
    (``None``: leave torch's setting). The setting is process-wide: concurrent Python threads share it."""
    if threads is None:
        yield
        return
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise InvalidArgumentError(f"threads must be a whole number ≥ 1 or None, got {threads!r}")
    before = torch.get_num_threads()
    if before == threads:
        yield
        return
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


log = logging.getLogger(__name__)

def load_network(source: Any, *, input_shape: Sequence[int] | None = None,
                 device: torch.device | str | None = None) -> Graph:
    """Load a network from an ONNX path/bytes, a torch ``nn.Module`` or an existing Graph."""
    if isinstance(source, Graph):
        graph = source
    elif isinstance(source, (str, Path, bytes, bytearray)):
        if isinstance(source, (str, Path)) and not str(source).endswith(".onnx"):
            raise AbsintError(f"{source}: only ONNX files (.onnx) are supported as network files")
        from absint.frontends.onnx_loader import load_onnx

        graph = load_onnx(source)
    elif isinstance(source, torch.nn.Module):
        from absint.frontends.torch_loader import load_torch

        if input_shape is None:
            raise AbsintError("loading a torch module needs input_shape (without the batch axis)")
        graph = load_torch(source, tuple(input_shape))
    else:
        raise AbsintError(f"cannot load a network from {type(source).__name__}")
    return graph.to(device) if device is not None else graph


def _as_spec(spec: Any, deadline: float | None = None) -> Spec:
    if isinstance(spec, Spec):
        return spec
    if isinstance(spec, Instance):
        return Spec((spec,))
    if isinstance(spec, (str, Path)):
        from absint.vnnlib import parse_vnnlib

        try:
            return parse_vnnlib(spec, deadline=deadline)
        except RecursionError:  # a parser that recurses per nesting level (VNN-LIB 1.0's)
            raise SpecError(f"{spec}: formulas nested too deeply to parse") from None
    if isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[0], InputBox):
        return Spec((Instance(spec[0], spec[1]),))
    raise SpecError(f"cannot use {type(spec).__name__} as a specification")


def _check_compatible(graph: Graph, spec: Spec) -> Spec:
    n_out = numel(graph.output_shape)
    spec = spec.check_network(tuple(graph.input_shape), n_out)
    if graph.meta.get("output_softmax"):
        for inst in spec.instances:
            if not inst.prop.is_pairwise_comparison():
                raise SpecError("the network ends in Softmax, which absint drops (exact for comparisons "
                                "between outputs); this property has constant thresholds on outputs")
    return spec


def decide(prop: OutputProperty, row_lower: np.ndarray, tolerance: float = 0.0) -> tuple[bool, float]:
    """From proved lower bounds of the stacked safety rows: (all clauses refuted?, worst clause margin).

    A clause is refuted when its best row's proved bound is ``> tolerance`` (strictly; 0 by default:
    the bounds are rigorous, a margin of exactly 0 is a violation in VNN-LIB's ``≥``)."""
    if not tolerance >= 0:  # also rejects NaN: a negative margin would accept violated clauses
        raise SpecError(f"tolerance must be a number ≥ 0, got {tolerance!r}")
    margins = prop.clause_max(row_lower)
    worst = float(margins.min())
    return bool(np.all(margins > tolerance)), worst


def _safety_tensors(props: list[OutputProperty], dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack safety rows of several properties with equal row counts into ``C [B,m,n]``, ``d [B,m]``."""
    Cs, ds = zip(*[p.stacked()[:2] for p in props])
    return torch.as_tensor(np.stack(Cs), dtype=dtype), torch.as_tensor(np.stack(ds), dtype=dtype)


def _falsified(name: str, analysis: str, seconds: float, x: np.ndarray, graph: Graph, region: InputBox,
               prop: OutputProperty, how: str) -> Result:
    """A ``falsified`` result; the counterexample is re-run on the network here, always."""
    r = recheck(graph, region, prop, x)
    if not r.ok:  # every caller checked it already: reaching this is a bug, never a verdict
        raise InvariantError(f"{name}: a counterexample ({how}) did not violate the property when re-run "
                             f"({r.reason})")
    # the reported point is the float32 input that was re-run (in float64 and in float32)
    return Result(name, Verdict.FALSIFIED, analysis, seconds, reason=f"counterexample ({how})",
                  counterexample=r.x.reshape(region.shape), counterexample_output=r.y,
                  details={"rechecked": f"float64 and {r.how}"})


def _bound_batch(graph: Graph, analysis: Analysis, chunk: list[Instance], deadline: float | None,
                 hard_at: float | None) -> tuple[BoundResult | None, str]:
    """One analysis call over the instances of ``chunk`` (``B = len(chunk)``): (bounds, why none).

    ``deadline`` goes to the analysis; if it is still running at ``hard_at`` the backstop stops it."""
    props = [inst.prop for inst in chunk]
    C, d = _safety_tensors(props)
    lo = torch.as_tensor(np.stack([inst.region.lower for inst in chunk]))
    hi = torch.as_tensor(np.stack([inst.region.upper for inst in chunk]))
    extra = {"owner": props[0].stacked()[2]} if analysis.clause_aware else {}
    result: tuple[BoundResult | None, str] = (None, f"stopped during {analysis.name} bounding")
    with hard_limit(hard_at):
        try:
            result = analysis.bound(graph, lo, hi, C, d, deadline=deadline, **extra), ""
        except TimeoutError:
            result = None, f"{analysis.name} stopped before it had a bound"
        except (MemoryError, torch.OutOfMemoryError) as exc:  # type: ignore[attr-defined]
            result = None, f"out of memory: {exc}"
    return result


def _decide_one(graph: Graph, inst: Instance, name: str, analysis: Analysis, bound: BoundResult | None, j: int,
                why: str, seconds: float, timeout: float | None, deadline: float | None, attack: bool,
                attack_first: bool, attack_options: AttackOptions, attack_budget: float, tolerance: float,
                progress: Progress) -> Result:
    """The verdict of instance ``j`` of a batch from its proved bounds (the one decision of absint).

    A candidate counterexample of the analysis (a MILP optimum) is re-run first; then every clause
    of the violation DNF must be refuted by a proved margin above ``tolerance`` (for a clause-aware
    analysis, by its per-clause margins); otherwise a bounded attack looks for a counterexample, and
    the answer is unknown with the reason (time-out, loose bounds, out of memory).
    """
    label = analysis.name
    region, prop = inst.region, inst.prop
    expired = deadline is not None and time.perf_counter() > deadline
    if bound is None:
        if why.startswith("out of memory"):
            return Result(name, Verdict.UNKNOWN, label, seconds, reason=why)
        return Result(name, Verdict.UNKNOWN, label, seconds, reason=progress.timeout_reason(why, elapsed=seconds))
    stats = bound.stats if len(bound.lower) == 1 else {}
    cands = bound.candidates
    if cands and j < len(cands) and cands[j] is not None and check_counterexample(graph, region, prop, cands[j])[0]:
        return _falsified(name, label, seconds, cands[j], graph, region, prop, label)
    verified, margin = decide(prop, bound.lower[j], tolerance)
    clause_lower = bound.stats.get("clause_lower") if analysis.clause_aware and len(bound.lower) == 1 else None
    if clause_lower is not None and not verified:
        # Each clause refuted somewhere by *some* row (different rows in different sub-regions).
        margin = float(np.min(clause_lower))
        verified = margin > tolerance
    note = bound.notes[j] if j < len(bound.notes) else ""
    if not verified:
        progress.done(note or f"{label} bounds computed (margin ≥ {margin:.4g})")
    if not verified and attack and not expired:
        # The analysis could not prove it: look for a counterexample within a bounded budget.
        t0 = time.perf_counter()
        steps: dict[str, int] = {}
        with progress.running("PGD attack after the analysis"):
            cx = None if attack_first else pgd_attack(graph, region, prop, attack_options, deadline, stats=steps)
            if cx is None and attack_budget > 0:
                cx = budgeted_attack(graph, region, prop, attack_budget, attack_options, deadline=deadline,
                                     stats=steps)
        seconds += time.perf_counter() - t0
        if cx is not None:
            return _falsified(name, label, seconds, cx, graph, region, prop, "PGD")
        progress.done(f"PGD {steps.get('pgd_steps', 0)} {'more ' if attack_first else ''}steps")
    if verified:
        return Result(name, Verdict.VERIFIED, label, seconds, margin, details=stats)
    if timeout is not None and seconds > timeout:
        # Keep what the analysis proved before the limit (margin, its note, its statistics).
        return Result(name, Verdict.UNKNOWN, label, seconds, margin, reason=progress.timeout_reason(elapsed=seconds),
                      details=stats)
    return Result(name, Verdict.UNKNOWN, label, seconds, margin,
                  reason=f"too loose: margin lower bound {margin:.4g}" + (f" ({note})" if note else ""),
                  details=stats)


def verify_instances(graph: Any, instances: Sequence[Instance], analysis: str | Analysis, *,
                     threads: int | None = DEFAULT_THREADS,
                     timeout: float | None = None, attack: bool = True, attack_first: bool = True,
                     attack_options: AttackOptions = AttackOptions(), attack_budget: float | None = None,
                     tolerance: float = 0.0, batch_size: int = 1, names: Sequence[str] | None = None,
                     on_result: Callable[[int, Result], None] | None = None,
                     progress: Progress | None = None) -> list[Result]:
    """Decide each (region, property) instance; the one decision path under :func:`verify` and
    :func:`verify_robustness`.

    Per instance: the pre-flight check of the analysis's ops (once, for all), a sampling attack
    (the centre and random points), PGD before the analysis if ``attack_first``, the analysis — in
    batches of ``batch_size`` instances when it is ``batchable`` (the per-instance time is the batch
    time divided by its size, and the time limit of a batch is ``timeout`` per instance) — and then
    :func:`_decide_one`. After an inconclusive analysis, ``attack`` runs one PGD round (unless it
    already ran first) and up to ``attack_budget`` seconds of restarts (default: a quarter of
    ``timeout``, at most 10 s; 2 s without a timeout; 0 when the attack did not run first).

    ``timeout`` (seconds > 0, or None) is per instance; the analysis is stopped by the backstop of
    :func:`absint.timelimit.hard_limit` if it overruns. ``progress`` (one instance only): the
    instance began earlier (:func:`verify` loaded the network and parsed the specification); its
    limit, start and notes apply, and ``timeout`` is ignored.

    ``threads``: torch CPU threads while deciding (:func:`torch_threads`; default
    :data:`DEFAULT_THREADS`, None: torch's current setting), restored afterwards. ``graph`` may be
    anything :func:`load_network` takes, ``analysis`` a name or an :class:`Analysis`.
    """
    graph, analysis = _resolve(graph, analysis)
    try:
        instances = list(instances) if not isinstance(instances, Instance) else [instances]
    except TypeError:
        raise SpecError(f"instances: a sequence of absint.specs.Instance, not {type(instances).__name__}") from None
    for inst in instances:
        _require_instance(inst)
    instances = list(_check_compatible(graph, Spec(tuple(instances))).instances)  # shapes (regions reshaped)
    with torch_threads(threads):
        return _verify_instances(graph, instances, analysis, timeout=timeout, attack=attack,
                                 attack_first=attack_first, attack_options=attack_options,
                                 attack_budget=attack_budget, tolerance=tolerance, batch_size=batch_size,
                                 names=names, on_result=on_result, progress=progress)


def _verify_instances(graph: Graph, instances: Sequence[Instance], analysis: Analysis, *,
                      timeout: float | None = None, attack: bool = True, attack_first: bool = True,
                      attack_options: AttackOptions = AttackOptions(), attack_budget: float | None = None,
                      tolerance: float = 0.0, batch_size: int = 1, names: Sequence[str] | None = None,
                      on_result: Callable[[int, Result], None] | None = None,
                      progress: Progress | None = None) -> list[Result]:
    """What :func:`verify_instances` does, with the thread count already set."""
    if progress is not None and len(instances) != 1:
        raise InvalidArgumentError("verify_instances: progress is for a single instance")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InvalidArgumentError(f"batch_size must be a whole number ≥ 1, got {batch_size!r}")
    if attack_budget is not None and not (isinstance(attack_budget, (int, float)) and np.isfinite(attack_budget)
                                          and attack_budget >= 0):
        raise InvalidTimeLimit(f"attack_budget must be a finite number of seconds ≥ 0, got {attack_budget!r}")
    timeout = progress.left() if progress is not None else check_limit(timeout)
    check_supported(graph, analysis)
    names = list(names) if names is not None else [inst.name or f"instance_{i}" for i, inst in enumerate(instances)]
    if attack_budget is None:
        attack_budget = (0.0 if not attack_first else 2.0 if timeout is None else min(10.0, 0.25 * timeout))
    results: list[Result | None] = [None] * len(instances)
    label = analysis.name
    # What each instance did (for its time-out reason); an outside progress carries loading and parsing.
    progs = [progress] if progress is not None else [Progress(timeout) for _ in instances]

    def done(i: int, r: Result) -> None:
        results[i] = r
        if on_result is not None:
            on_result(i, r)

    bs = max(1, batch_size) if analysis.batchable and not analysis.clause_aware else 1
    todo: list[int] = []
    for start in range(0, len(instances), max(bs, 1)):
        # cheap falsification first: sampling (one forward pass per batch), then PGD if asked
        t0 = time.perf_counter()
        part = list(range(start, min(len(instances), start + max(bs, 1))))
        with contextlib.ExitStack() as phase:
            if progress is not None:
                phase.enter_context(progress.running("sampling attack"))
            found = sample_attack_many(graph, [(instances[i].region, instances[i].prop) for i in part])
        share = (time.perf_counter() - t0) / len(part)
        for i, cx in zip(part, found):
            t1 = time.perf_counter()
            how = "sampling"
            if cx is None and attack and attack_first:
                # at most half the time left: on a large network the attack must not starve the analysis
                deadline = None if timeout is None else t1 + 0.5 * max(0.0, timeout - share)
                steps: dict[str, int] = {}
                with progs[i].running("PGD attack"):
                    cx = pgd_attack(graph, instances[i].region, instances[i].prop, attack_options, deadline,
                                    stats=steps)
                how = "PGD"
                if cx is None:
                    progs[i].done(f"PGD {steps.get('pgd_steps', 0)} steps")
            seconds = share + time.perf_counter() - t1
            if cx is not None:
                done(i, _falsified(names[i], label, seconds, cx, graph, instances[i].region, instances[i].prop, how))
            else:
                todo.append(i)
                # the attacks' time counts towards the instance (it is spent before the analysis)
                results[i] = Result(names[i], Verdict.UNKNOWN, label, seconds)
    for group in _same_row_count(todo, instances, bs):
        chunk = [instances[i] for i in group]
        spent = [results[i].seconds for i in group]  # type: ignore[union-attr]
        t0 = time.perf_counter()
        deadline = None if timeout is None else t0 + sum(max(0.0, timeout - s) for s in spent)
        hard_at = None if timeout is None else deadline + 0.5 * allowed_overshoot(timeout)
        with contextlib.ExitStack() as phase:
            if progress is not None:
                phase.enter_context(progress.running(f"{label} bounding"))
            bound, why = _bound_batch(graph, analysis, chunk, deadline, hard_at)
        per = (time.perf_counter() - t0) / len(chunk)
        for j, i in enumerate(group):
            inst_deadline = None if timeout is None else time.perf_counter() + max(0.0, timeout - spent[j] - per)
            seconds = spent[j] + per
            limit = timeout
            if progress is not None:  # the instance's own clock (it began before this call)
                seconds, inst_deadline, limit = progress.elapsed(), progress.deadline, progress.limit
            done(i, _decide_one(graph, instances[i], names[i], analysis, bound, j, why, seconds, limit,
                                inst_deadline, attack, attack_first, attack_options, attack_budget, tolerance,
                                progs[i]))
    return [r for r in results if r is not None]


def _same_row_count(todo: list[int], instances: Sequence[Instance], size: int) -> list[list[int]]:
    """``todo`` in consecutive groups of at most ``size`` whose properties have equal row counts."""
    groups: list[list[int]] = []
    for i in todo:
        rows = len(instances[i].prop.stacked()[1])
        if groups and len(groups[-1]) < size and len(instances[groups[-1][0]].prop.stacked()[1]) == rows:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def _resolve(graph: Any, analysis: str | Analysis) -> tuple[Graph, Analysis]:
    """The network and the analysis of a call that takes a Graph (or a loadable source) and an
    analysis name or instance; anything else is a clear error."""
    return load_network(graph), get_analysis(analysis)


def _require_instance(value: Any) -> None:
    if not isinstance(value, Instance):
        raise SpecError(f"an instance is an absint.specs.Instance (region and property), not {type(value).__name__}")


def verify_instance(graph: Any, instance: Instance, analysis: str | Analysis, *, timeout: float | None = None,
                    attack: bool = True, attack_options: AttackOptions = AttackOptions(),
                    tolerance: float = 0.0, name: str | None = None,
                    attack_budget: float | None = None, progress: Progress | None = None,
                    threads: int | None = DEFAULT_THREADS) -> Result:
    """Decide one (region, property) instance (:func:`verify_instances` with one instance) within
    ``timeout`` seconds (or ``progress``'s limit), the backstop included; ``threads`` as there."""
    graph, analysis = _resolve(graph, analysis)
    _require_instance(instance)
    progress = progress if progress is not None else Progress(check_limit(timeout))
    name = name or instance.name or "instance"
    with hard_limit(progress.hard_deadline) as stop:
        result = verify_instances(graph, [instance], analysis, attack=attack, attack_options=attack_options,
                                  attack_budget=attack_budget, tolerance=tolerance, names=[name],
                                  progress=progress, threads=threads)[0]
    if stop.fired:
        return Result(name, Verdict.UNKNOWN, analysis.name, progress.elapsed(),
                      reason=progress.timeout_reason(stopped=progress.phase or f"{analysis.name}"))
    return result


def _combine(name: str, label: str, parts: list[Result], seconds: float | None = None) -> Result:
    """A spec with several regions holds iff it holds on each (``seconds``: of the whole call)."""
    if seconds is None:
        seconds = sum(p.seconds for p in parts)
    if len(parts) == 1:
        return replace(parts[0], name=name, seconds=seconds)
    for p in parts:
        if p.falsified:
            return replace(p, name=name, seconds=seconds)
    margin = min((p.margin for p in parts if p.margin is not None), default=None)
    details = {"regions": [p.details for p in parts]}
    if all(p.verified for p in parts):
        return Result(name, Verdict.VERIFIED, label, seconds, margin, details=details)
    reasons = "; ".join(sorted({p.reason for p in parts if not p.verified}))
    return Result(name, Verdict.UNKNOWN, label, seconds, margin, reason=reasons, details=details)


def verify(network: Any, spec: Any, *, analysis: str | Analysis = "deeppoly", timeout: float | None = None,
           attack: bool = True, attack_options: AttackOptions = AttackOptions(),
           tolerance: float = 0.0, device: torch.device | str | None = None,
           name: str | None = None, attack_budget: float | None = None, threads: int | None = DEFAULT_THREADS,
           **analysis_options: Any) -> Result:
    """Verify ``spec`` (a VNN-LIB path, :class:`Spec`, :class:`Instance`, or ``(InputBox, OutputProperty)``)
    on ``network`` (ONNX path, torch module, or Graph) with the analysis named ``analysis``.

    Returns one :class:`Result`; a spec with several input regions is verified region by region.
    ``timeout`` (seconds > 0, or None) covers the whole call: loading the network and parsing the
    specification count, and a time-out says what was done ("time-out after 10.2 s (limit 10 s):
    network loaded in 1.3 s, specification parsed, PGD 50 steps, ..., stopped during lp bounding").
    ``threads``: torch CPU threads while deciding (default :data:`DEFAULT_THREADS`; None: torch's
    current setting), restored afterwards (:func:`torch_threads`).
    """
    # the analysis is built before the clock starts: building it (and importing what it uses) is
    # start-up, not time spent deciding
    an = get_analysis(analysis, device=device, **analysis_options)
    progress = Progress(check_limit(timeout))
    label = name or (Path(spec).stem if isinstance(spec, (str, Path)) else None)
    parts: list[Result] = []
    with hard_limit(progress.hard_deadline) as stop:
        with progress.running("loading the network"):
            graph = load_network(network, device=device)
        if not isinstance(network, Graph):
            progress.done(f"network loaded in {progress.elapsed():.2g} s")
        with progress.running("reading the specification"):
            try:
                spec_obj = _check_compatible(graph, _as_spec(spec, progress.deadline))
            except TimeoutError:  # the parser stopped at the deadline
                return Result(label or "instance", Verdict.UNKNOWN, an.name, progress.elapsed(),
                              reason=progress.timeout_reason(stopped="reading the specification"))
        if isinstance(spec, (str, Path)):
            progress.done("specification parsed")
        label = label or spec_obj.instances[0].name or "instance"
        n = len(spec_obj.instances)
        for k, inst in enumerate(spec_obj.instances):
            if progress.expired():
                if n > 1:
                    progress.done(f"{k} of {n} input regions decided")
                parts.append(Result(label, Verdict.UNKNOWN, an.name, progress.elapsed(),
                                    reason=progress.timeout_reason()))
                break
            r = verify_instance(graph, inst, an, attack=attack, attack_options=attack_options, tolerance=tolerance,
                                attack_budget=attack_budget, progress=progress, threads=threads)
            parts.append(r)
            if r.falsified or progress.expired():
                break
    if stop.fired:
        return Result(label or "instance", Verdict.UNKNOWN, an.name, progress.elapsed(),
                      reason=progress.timeout_reason(stopped=progress.phase or "verify"))
    return _combine(label, an.name, parts, progress.elapsed())


def _whole_labels(labels: Iterable[Any]) -> list[int]:
    """Class labels as ints; a label that is not a whole number (7.5, "a", NaN) is a SpecError."""
    out = []
    for v in np.asarray(list(labels), dtype=object).reshape(-1):
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)) \
                or not np.isfinite(float(v)) or float(v) != int(v):
            raise SpecError(f"a label is the index of a class (a whole number), got {v!r}")
        out.append(int(v))
    return out


def verify_robustness(network: Any, images: np.ndarray, labels: Iterable[int], eps: float, *,
                      analysis: str | Analysis = "deeppoly", clip: tuple[float, float] | None = (0.0, 1.0),
                      timeout: float | None = None, attack: bool = True,
                      attack_options: AttackOptions = AttackOptions(restarts=4, steps=30),
                      batch_size: int = 32, tolerance: float = 0.0,
                      device: torch.device | str | None = None, names: Sequence[str] | None = None,
                      progress: bool = False, threads: int | None = DEFAULT_THREADS,
                      **analysis_options: Any) -> list[Result]:
    """L∞ robustness of each image (radius ``eps``, clipped to ``clip``) with its label.

    Misclassified images are reported falsified (the image itself is the counterexample), so
    ``verified`` counts exactly the correctly classified inputs proven robust. The others go
    through :func:`verify_instances` (the decision of :func:`verify`), in batches of ``batch_size``
    when the analysis supports it; PGD runs only on what the analysis cannot prove. ``threads``: as
    in :func:`verify`.
    """
    timeout = check_limit(timeout)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InvalidArgumentError(f"batch_size must be a whole number ≥ 1, got {batch_size!r}")
    graph = load_network(network, device=device)
    an = get_analysis(analysis, device=device, **analysis_options)
    eps = check_radius(eps)  # one radius for every image, checked before any image is built
    images = np.asarray(images, dtype=np.float64)
    if np.ndim(labels) == 0:
        raise SpecError(f"labels must be a sequence with one label per image, got {labels!r}")
    labels = _whole_labels(labels)
    if len(images) != len(labels):
        raise SpecError(f"{len(images)} images but {len(labels)} labels")
    if len(images) == 0:
        return []
    n_classes = numel(graph.output_shape)
    names = list(names) if names is not None else [f"input_{i}" for i in range(len(images))]
    if len(names) != len(images):
        raise SpecError(f"{len(names)} names for {len(images)} images")
    if len(images) and images[0].size == numel(graph.input_shape):
        images = images.reshape(len(images), *graph.input_shape)
    if images.shape[1:] != tuple(graph.input_shape):
        raise SpecError(f"images have shape {images.shape[1:]} but the network expects {tuple(graph.input_shape)}")
    bad = [lab for lab in labels if not 0 <= lab < n_classes]
    if bad:
        raise SpecError(f"labels {sorted(set(bad))[:5]} out of range for a network with {n_classes} outputs")
    check_supported(graph, an)
    with torch.no_grad():
        preds = graph.forward(torch.as_tensor(images)).reshape(len(images), -1).argmax(1).cpu().numpy()

    results: list[Result | None] = [None] * len(images)
    todo: list[int] = []
    instances = []
    for i, (img, lab) in enumerate(zip(images, labels)):
        inst = Instance(linf_ball(img, eps, clip), robustness_property(lab, n_classes), names[i])
        if preds[i] != lab:
            results[i] = _falsified(names[i], an.name, 0.0, img, graph, inst.region, inst.prop, "misclassified")
        else:
            todo.append(i)
            instances.append(inst)
    bar = _progress(len(images), progress, desc=f"{an.name} eps={eps}")
    if bar is not None:
        bar.update(len(images) - len(todo))

    def tick(_: int, r: Result) -> None:
        if bar is not None:
            bar.update(1)

    decided = verify_instances(graph, instances, an, timeout=timeout, attack=attack, attack_first=False,
                               attack_options=attack_options, attack_budget=0.0, tolerance=tolerance,
                               batch_size=batch_size, names=[names[i] for i in todo], on_result=tick,
                               threads=threads)
    for i, r in zip(todo, decided):
        results[i] = r
    if bar is not None:
        bar.close()
    return [r for r in results if r is not None]


def _progress(total: int, enabled: bool, desc: str):
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        return None
    return tqdm(total=total, desc=desc, unit="input", leave=True)


def verify_bab(network: Any, spec: Any, *, timeout: float | None = None, attack: bool = True,
               options: Any = None, name: str | None = None, device: torch.device | str | None = None,
               **fields: Any) -> Result:
    """:func:`verify` with a configured ``bab`` analysis (``options``: a
    :class:`~absint.bab.options.BabOptions`; ``fields`` override it).

    The analysis is clause-aware, so the decision uses the proved per-clause margins (a clause may
    be refuted by different rows on different sub-boxes, as in ACAS Xu properties 2–4); the extra
    attack rounds after the analysis are skipped: the search already alternates attacks with bounding.
    """
    from absint.bab.analysis import BabAnalysis

    an = BabAnalysis(options, device=device, **fields)
    return verify(network, spec, analysis=an, timeout=timeout, attack=attack, name=name, device=device,
                  tolerance=an.options.tolerance, attack_budget=0.0)
