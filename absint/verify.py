"""The public verification entry points: :func:`verify` and :func:`verify_robustness`.

Flow of one instance: check the spec against the network; try to falsify cheaply (centre and
random samples, then PGD); run the analysis and turn its proved lower bounds into a verdict.
A clause of the violation DNF is refuted when one of its rows has a proved lower bound above
``tolerance`` (a small positive number that absorbs float64 rounding); the property is verified
when every clause is refuted. Any failure to decide (loose bounds, time-out, solver limit) gives
``unknown`` with the reason — never a crash, never a guess.
"""
from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from absint.analyses import Analysis, get_analysis
from absint.attack import AttackOptions, budgeted_attack, check_counterexample, pgd_attack, sample_attack
from absint.errors import AbsintError, SpecError
from absint.ir import Graph
from absint.linear import numel
from absint.results import Result, Verdict
from absint.specs import Instance, InputBox, OutputProperty, Spec, linf_ball, robustness_property

log = logging.getLogger(__name__)

#: A clause counts as refuted only if its proved margin exceeds this (absorbs float64 rounding).
DEFAULT_TOLERANCE = 1e-8


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


def _as_spec(spec: Any) -> Spec:
    if isinstance(spec, Spec):
        return spec
    if isinstance(spec, Instance):
        return Spec((spec,))
    if isinstance(spec, (str, Path)):
        from absint.vnnlib import parse_vnnlib

        return parse_vnnlib(spec)
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


def decide(prop: OutputProperty, row_lower: np.ndarray, tolerance: float = DEFAULT_TOLERANCE) -> tuple[bool, float]:
    """From proved lower bounds of the stacked safety rows: (all clauses refuted?, worst clause margin)."""
    _, _, owner = prop.stacked()
    margins = np.array([row_lower[owner == k].max() for k in range(len(prop.clauses))])
    worst = float(margins.min())
    return bool(np.all(margins > tolerance)), worst


def _safety_tensors(props: list[OutputProperty], dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack safety rows of several properties with equal row counts into ``C [B,m,n]``, ``d [B,m]``."""
    Cs, ds = zip(*[p.stacked()[:2] for p in props])
    return torch.as_tensor(np.stack(Cs), dtype=dtype), torch.as_tensor(np.stack(ds), dtype=dtype)


def _falsified(name: str, analysis: str, t0: float, x: np.ndarray, graph: Graph, region: InputBox,
               prop: OutputProperty, how: str) -> Result:
    ok, y = check_counterexample(graph, region, prop, x)
    assert ok, "counterexample must be re-checked before it is reported"
    return Result(name, Verdict.FALSIFIED, analysis, time.perf_counter() - t0, reason=f"counterexample ({how})",
                  counterexample=np.asarray(x).reshape(region.shape), counterexample_output=y)


def verify_instance(graph: Graph, instance: Instance, analysis: Analysis, *, timeout: float | None = None,
                    attack: bool = True, attack_options: AttackOptions = AttackOptions(),
                    tolerance: float = DEFAULT_TOLERANCE, name: str | None = None,
                    attack_budget: float | None = None) -> Result:
    """Decide one (region, property) instance. See the module docstring for the flow.

    ``attack_budget`` bounds the extra attack time after an inconclusive analysis (default:
    a quarter of ``timeout``, at most 10 s; 2 s without a timeout).
    """
    t0 = time.perf_counter()
    deadline = None if timeout is None else t0 + timeout
    name = name or instance.name or "instance"
    region, prop = instance.region, instance.prop
    label = analysis.name
    cx = sample_attack(graph, region, prop)
    if cx is not None:
        return _falsified(name, label, t0, cx, graph, region, prop, "sampling")
    if attack:
        cx = pgd_attack(graph, region, prop, attack_options, deadline)
        if cx is not None:
            return _falsified(name, label, t0, cx, graph, region, prop, "PGD")
    C, d = _safety_tensors([prop])
    lo = torch.as_tensor(region.lower[None])
    hi = torch.as_tensor(region.upper[None])
    extra = {"owner": prop.stacked()[2]} if analysis.clause_aware else {}
    try:
        bound = analysis.bound(graph, lo, hi, C, d, deadline=deadline, **extra)
    except TimeoutError:
        return Result(name, Verdict.UNKNOWN, label, time.perf_counter() - t0, reason="time-out")
    except (MemoryError, torch.OutOfMemoryError) as exc:  # type: ignore[attr-defined]
        return Result(name, Verdict.UNKNOWN, label, time.perf_counter() - t0, reason=f"out of memory: {exc}")
    if bound.candidates and bound.candidates[0] is not None:
        ok, _ = check_counterexample(graph, region, prop, bound.candidates[0])
        if ok:
            return _falsified(name, label, t0, bound.candidates[0], graph, region, prop, label)
    verified, margin = decide(prop, bound.lower[0], tolerance)
    clause_lower = bound.stats.get("clause_lower") if analysis.clause_aware else None
    if clause_lower is not None and not verified:
        # Each clause refuted somewhere by *some* row (different rows in different sub-regions).
        margin = float(np.min(clause_lower))
        verified = margin > tolerance
    if not verified and attack:
        # The analysis could not prove it: spend a bounded extra budget looking for a counterexample.
        budget = attack_budget if attack_budget is not None else (2.0 if timeout is None else min(10.0, 0.25 * timeout))
        cx = budgeted_attack(graph, region, prop, budget, attack_options, deadline=deadline)
        if cx is not None:
            return _falsified(name, label, t0, cx, graph, region, prop, "PGD")
    elapsed = time.perf_counter() - t0
    note = bound.notes[0] if bound.notes else ""
    if deadline is not None and elapsed > timeout and not verified:
        # Keep what the analysis proved before the limit (margin, its note, its statistics).
        return Result(name, Verdict.UNKNOWN, label, elapsed, margin,
                      reason="time-out" + (f" ({note})" if note else ""), details=bound.stats)
    if verified:
        return Result(name, Verdict.VERIFIED, label, elapsed, margin, details=bound.stats)
    return Result(name, Verdict.UNKNOWN, label, elapsed, margin,
                  reason=f"too loose: margin lower bound {margin:.4g}" + (f" ({note})" if note else ""),
                  details=bound.stats)


def _combine(name: str, label: str, parts: list[Result]) -> Result:
    """A spec with several regions holds iff it holds on each."""
    if len(parts) == 1:
        return replace(parts[0], name=name)
    seconds = sum(p.seconds for p in parts)
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
           tolerance: float = DEFAULT_TOLERANCE, device: torch.device | str | None = None,
           name: str | None = None, attack_budget: float | None = None, **analysis_options: Any) -> Result:
    """Verify ``spec`` (a VNN-LIB path, :class:`Spec`, :class:`Instance`, or ``(InputBox, OutputProperty)``)
    on ``network`` (ONNX path, torch module, or Graph) with the analysis named ``analysis``.

    Returns one :class:`Result`; a spec with several input regions is verified region by region.
    """
    graph = load_network(network, device=device)
    spec_obj = _check_compatible(graph, _as_spec(spec))
    an = get_analysis(analysis, device=device, **analysis_options)
    t0 = time.perf_counter()
    parts = []
    for inst in spec_obj.instances:
        remaining = None if timeout is None else max(0.0, timeout - (time.perf_counter() - t0))
        r = verify_instance(graph, inst, an, timeout=remaining, attack=attack, attack_options=attack_options,
                            tolerance=tolerance, attack_budget=attack_budget)
        parts.append(r)
        if r.falsified:
            break
    label = name or (Path(spec).stem if isinstance(spec, (str, Path)) else spec_obj.instances[0].name or "instance")
    return _combine(label, an.name, parts)


def verify_robustness(network: Any, images: np.ndarray, labels: Iterable[int], eps: float, *,
                      analysis: str | Analysis = "deeppoly", clip: tuple[float, float] | None = (0.0, 1.0),
                      timeout: float | None = None, attack: bool = True,
                      attack_options: AttackOptions = AttackOptions(restarts=4, steps=30),
                      batch_size: int = 32, tolerance: float = DEFAULT_TOLERANCE,
                      device: torch.device | str | None = None, names: Sequence[str] | None = None,
                      progress: bool = False, **analysis_options: Any) -> list[Result]:
    """L∞ robustness of each image (radius ``eps``, clipped to ``clip``) with its label.

    Misclassified images are reported falsified (the image itself is the counterexample), so
    ``verified`` counts exactly the correctly classified inputs proven robust. Images are
    analysed in batches of ``batch_size`` when the analysis supports it (per-image time is the
    batch time divided by its size); unknowns are then attacked with PGD.
    """
    graph = load_network(network, device=device)
    an = get_analysis(analysis, device=device, **analysis_options)
    images = np.asarray(images, dtype=np.float64)
    labels = [int(v) for v in labels]
    if len(images) != len(labels):
        raise SpecError(f"{len(images)} images but {len(labels)} labels")
    n_classes = numel(graph.output_shape)
    names = list(names) if names is not None else [f"input_{i}" for i in range(len(images))]
    images = images.reshape(len(images), *graph.input_shape) if images[0].size == numel(graph.input_shape) else images
    if images.shape[1:] != tuple(graph.input_shape):
        raise SpecError(f"images have shape {images.shape[1:]} but the network expects {tuple(graph.input_shape)}")
    with torch.no_grad():
        preds = graph.forward(torch.as_tensor(images)).reshape(len(images), -1).argmax(1).cpu().numpy()

    results: list[Result | None] = [None] * len(images)
    todo = []
    for i, (img, lab) in enumerate(zip(images, labels)):
        prop = robustness_property(lab, n_classes)
        region = linf_ball(img, eps, clip)
        if preds[i] != lab:
            t0 = time.perf_counter()
            results[i] = _falsified(names[i], an.name, t0, img, graph, region, prop, "misclassified")
        else:
            todo.append((i, region, prop))

    bs = batch_size if an.batchable else 1
    bar = _progress(len(images), progress, desc=f"{an.name} eps={eps}")
    if bar is not None:
        bar.update(len(images) - len(todo))
    for start in range(0, len(todo), bs):
        chunk = todo[start:start + bs]
        t0 = time.perf_counter()
        lo = torch.as_tensor(np.stack([r.lower for _, r, _ in chunk]))
        hi = torch.as_tensor(np.stack([r.upper for _, r, _ in chunk]))
        C, d = _safety_tensors([p for _, _, p in chunk])
        deadline = None if timeout is None else t0 + timeout * len(chunk)
        try:
            bound = an.bound(graph, lo, hi, C, d, deadline=deadline)
            lower, err = bound.lower, ""
        except TimeoutError:
            lower, err = None, "time-out"
        per = (time.perf_counter() - t0) / len(chunk)
        for j, (i, region, prop) in enumerate(chunk):
            if lower is None:
                results[i] = Result(names[i], Verdict.UNKNOWN, an.name, per, reason=err)
                continue
            ok, margin = decide(prop, lower[j], tolerance)
            if ok:
                results[i] = Result(names[i], Verdict.VERIFIED, an.name, per, margin)
            else:
                results[i] = Result(names[i], Verdict.UNKNOWN, an.name, per, margin,
                                    reason=f"too loose: margin lower bound {margin:.4g}")
        if attack:
            for i, region, prop in chunk:
                r = results[i]
                if r is not None and r.verdict is Verdict.UNKNOWN:
                    ta = time.perf_counter()
                    cx = pgd_attack(graph, region, prop, attack_options)
                    if cx is not None:
                        results[i] = _falsified(names[i], an.name, ta, cx, graph, region, prop, "PGD")
                        results[i].seconds += r.seconds
                    else:
                        r.seconds += time.perf_counter() - ta
        if bar is not None:
            bar.update(len(chunk))
            bar.set_postfix(verified=sum(1 for r in results if r is not None and r.verified),
                            falsified=sum(1 for r in results if r is not None and r.falsified))
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
