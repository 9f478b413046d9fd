"""Verdicts and per-instance results.

* ``verified``  — the property is proved on the whole region (a sound bound says so);
* ``falsified`` — a concrete input in the region violates the property; the counterexample was
  re-run on the network (float64 semantics of the IR) and shown to violate it;
* ``unknown``   — neither; ``reason`` says why (bounds too loose, time-out, solver limit, ...).
"""
from __future__ import annotations

import enum
import json
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np


class Verdict(str, enum.Enum):
    VERIFIED = "verified"
    FALSIFIED = "falsified"
    UNKNOWN = "unknown"

    def __str__(self) -> str:
        return self.value


@dataclass
class Result:
    """The outcome of one verification instance."""

    name: str
    verdict: Verdict
    analysis: str
    seconds: float
    margin: float | None = None  # proved lower bound of the worst safety margin (> 0 ⇒ verified)
    reason: str = ""
    counterexample: np.ndarray | None = None
    counterexample_output: np.ndarray | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def verified(self) -> bool:
        return self.verdict is Verdict.VERIFIED

    @property
    def falsified(self) -> bool:
        return self.verdict is Verdict.FALSIFIED

    def to_dict(self, with_counterexample: bool = False) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if k not in ("counterexample", "counterexample_output")}
        d["verdict"] = str(self.verdict)
        if with_counterexample and self.counterexample is not None:
            d["counterexample"] = self.counterexample.reshape(-1).tolist()
            d["counterexample_output"] = None if self.counterexample_output is None else \
                self.counterexample_output.reshape(-1).tolist()
        return _jsonable(d)


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, float) and not np.isfinite(x):
        return None
    return x


def summarize(results: list[Result]) -> dict[str, Any]:
    """Counts per verdict and timing statistics."""
    times = np.array([r.seconds for r in results]) if results else np.zeros(0)
    counts = {str(v): sum(r.verdict is v for r in results) for v in Verdict}
    return {
        "instances": len(results), **counts,
        "median_seconds": float(np.median(times)) if len(times) else 0.0,
        "mean_seconds": float(np.mean(times)) if len(times) else 0.0,
        "total_seconds": float(np.sum(times)),
    }


def results_to_json(results: list[Result], with_counterexamples: bool = True,
                    settings: dict[str, Any] | None = None) -> str:
    """The results as JSON: a summary, the ``settings`` they ran with (e.g. the command's options),
    absint's version and git commit, and one object per result (counterexamples included)."""
    from absint.provenance import provenance

    return json.dumps({"summary": summarize(results), "settings": _jsonable(settings or {}),
                       "absint": provenance(), "results": [r.to_dict(with_counterexamples) for r in results]},
                      indent=1)


def results_to_csv(results: list[Result]) -> str:
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["name", "verdict", "analysis", "seconds", "margin", "reason"])
    for r in results:
        w.writerow([r.name, str(r.verdict), r.analysis, f"{r.seconds:.4f}",
                    "" if r.margin is None else f"{r.margin:.6g}", r.reason])
    return buf.getvalue()


def format_table(results: list[Result]) -> str:
    """A plain-text summary table (verdict counts, time per input)."""
    s = summarize(results)
    lines = [
        f"{'instances':>10} {'verified':>9} {'falsified':>10} {'unknown':>8} {'median s':>9} {'mean s':>8} {'total s':>8}",
        f"{s['instances']:>10} {s['verified']:>9} {s['falsified']:>10} {s['unknown']:>8} "
        f"{s['median_seconds']:>9.4f} {s['mean_seconds']:>8.4f} {s['total_seconds']:>8.2f}",
    ]
    reasons: dict[str, int] = {}
    for r in results:
        if r.verdict is Verdict.UNKNOWN:
            key = r.reason.split(":")[0]
            reasons[key] = reasons.get(key, 0) + 1
    if reasons:
        lines.append("unknown because: " + ", ".join(f"{k} ({v})" for k, v in sorted(reasons.items())))
    return "\n".join(lines)
