"""``verify_bab``: verification with the ``bab`` analysis and the exact per-clause decision.

:func:`absint.verify.verify` decides from per-row lower bounds, which cannot express that a
clause is refuted by different rows on different sub-boxes (ACAS Xu properties 2–4: "output 0 is
never the maximum" is refuted by whichever output beats it there). This entry point follows the
same flow as :func:`absint.verify.verify_instance` — cheap sampling and PGD first, then the
analysis, counterexamples re-checked on the concrete network — but hands the analysis each row's
clause and decides from the proved per-clause margins.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from absint.attack import AttackOptions, check_counterexample, pgd_attack, sample_attack
from absint.bab.analysis import BabAnalysis
from absint.bab.options import BabOptions
from absint.results import Result, Verdict
from absint.specs import Instance
from absint.verify import _as_spec, _check_compatible, _combine, _falsified, load_network


def verify_instance_bab(graph, instance: Instance, analysis: BabAnalysis, *, timeout: float | None = None,
                        attack: bool = True, name: str = "instance") -> Result:
    """Decide one (region, property) with branch and bound."""
    t0 = time.perf_counter()
    deadline = None if timeout is None else t0 + timeout
    region, prop = instance.region, instance.prop
    label = analysis.name
    cx = sample_attack(graph, region, prop)
    if cx is not None:
        return _falsified(name, label, t0, cx, graph, region, prop, "sampling")
    if attack:
        # (further attacks run inside the search, alternating with the bounding)
        cx = pgd_attack(graph, region, prop, AttackOptions(), deadline)
        if cx is not None:
            return _falsified(name, label, t0, cx, graph, region, prop, "PGD")
    C, d, owner = prop.stacked()
    res = analysis.search(graph, region, C, d, owner, deadline=deadline)
    details = dict(res.stats, status=res.status, proved_fraction=res.proved,
                   clause_lower=res.clause_min.tolist(), row_lower=res.row_min.tolist())
    if res.counterexample is not None:
        ok, _ = check_counterexample(graph, region, prop, res.counterexample)
        if ok:
            r = _falsified(name, label, t0, res.counterexample, graph, region, prop, f"bab {res.stats.get('found_by', '')}")
            r.details = details
            return r
    margin = float(np.min(res.clause_min))
    elapsed = time.perf_counter() - t0
    if res.status == "verified" and margin > analysis.bab_options.tolerance:
        return Result(name, Verdict.VERIFIED, label, elapsed, margin, details=details)
    unit = "input volume" if details.get("mode") == "input" else "split tree"
    reason = {"timeout": "time-out", "memory": "memory bound (queue full)",
              "stuck": "sub-problems left that cannot be split further"}.get(res.status, res.status)
    return Result(name, Verdict.UNKNOWN, label, elapsed, margin,
                  reason=f"{reason}: {100 * res.proved:.4g}% of the {unit} proved", details=details)


def verify_bab(network: Any, spec: Any, *, timeout: float | None = None, attack: bool = True,
               options: BabOptions | None = None, name: str | None = None, device=None, **fields: Any) -> Result:
    """Verify ``spec`` on ``network`` by branch and bound (``fields`` override :class:`BabOptions`)."""
    graph = load_network(network, device=device)
    spec_obj = _check_compatible(graph, _as_spec(spec))
    an = BabAnalysis(device=device, options=options, **fields)
    t0 = time.perf_counter()
    parts = []
    for i, inst in enumerate(spec_obj.instances):
        remaining = None if timeout is None else max(0.0, timeout - (time.perf_counter() - t0))
        r = verify_instance_bab(graph, inst, an, timeout=remaining, attack=attack, name=inst.name or f"region{i}")
        parts.append(r)
        if r.falsified:
            break
    label = name or (Path(spec).stem if isinstance(spec, (str, Path)) else spec_obj.instances[0].name or "instance")
    out = _combine(label, an.name, parts)
    if len(parts) > 1 and not out.details:
        out.details = {"regions": [p.details for p in parts]}
    return out
