"""Compare benchmark results with a VNN-COMP truth table (``truth.csv``).

Truth verdicts: ``unsat`` (the property holds, our ``verified``), ``sat`` (a counterexample
exists, our ``falsified``), ``unknown`` (no tool decided). Per analysis the score counts

* correct: ``verified`` on an unsat row, ``falsified`` on a sat row;
* **wrong**: ``verified`` on a sat row — a soundness bug, reported loudly — and ``falsified`` on an
  unsat row (our counterexamples are re-checked, so this means a network-semantics mismatch or a
  wrong truth entry; still reported as wrong);
* decided where the truth is unknown (not scored, listed);
* unknown / timeout / error, and the time spent.

Rows are matched to truth entries by the ``(onnx, vnnlib)`` paths as written in instances.csv,
falling back to the file names when the paths differ only in their folders.
"""
from __future__ import annotations

import csv
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from absint.errors import AbsintError

log = logging.getLogger(__name__)


class TruthFileError(AbsintError):
    """The truth table cannot be read."""


@dataclass
class Wrong:
    """One wrong answer."""

    analysis: str
    network: str
    vnnlib: str
    ours: str
    truth: str

    @property
    def soundness_bug(self) -> bool:
        return self.ours == "verified" and self.truth == "sat"


@dataclass
class AnalysisScore:
    """Score of one analysis against the truth table."""

    analysis: str
    instances: int = 0
    correct_unsat: int = 0
    correct_sat: int = 0
    wrong: int = 0
    decided_truth_unknown: int = 0
    unknown: int = 0
    timeout: int = 0
    error: int = 0
    missing: int = 0  # truth rows without a result for this analysis
    seconds: list[float] = field(default_factory=list)

    @property
    def correct(self) -> int:
        return self.correct_unsat + self.correct_sat

    @property
    def median_seconds(self) -> float:
        return float(np.median(self.seconds)) if self.seconds else 0.0

    @property
    def mean_seconds(self) -> float:
        return float(np.mean(self.seconds)) if self.seconds else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"analysis": self.analysis, "instances": self.instances, "correct_unsat": self.correct_unsat,
                "correct_sat": self.correct_sat, "wrong": self.wrong,
                "decided_truth_unknown": self.decided_truth_unknown, "unknown": self.unknown,
                "timeout": self.timeout, "error": self.error, "missing": self.missing,
                "median_seconds": self.median_seconds, "mean_seconds": self.mean_seconds,
                "total_seconds": float(np.sum(self.seconds))}


@dataclass
class ScoreReport:
    scores: dict[str, AnalysisScore]
    wrong: list[Wrong]
    unmatched: int
    truth_counts: dict[str, int]

    @property
    def soundness_bugs(self) -> list[Wrong]:
        return [w for w in self.wrong if w.soundness_bug]


def read_truth(path: str | Path) -> dict[tuple[str, str], str]:
    """``(onnx, vnnlib) -> verdict`` from a truth.csv (columns onnx, vnnlib, ..., verdict)."""
    path = Path(path)
    if not path.exists():
        raise TruthFileError(f"{path}: no such truth file")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        cols = reader.fieldnames or []
        if not {"onnx", "vnnlib", "verdict"} <= set(cols):
            raise TruthFileError(f"{path}: needs columns onnx, vnnlib, verdict (has {cols})")
        truth = {}
        for row in reader:
            v = row["verdict"].strip().lower()
            v = {"holds": "unsat", "violated": "sat"}.get(v, v)
            if v not in ("sat", "unsat", "unknown"):
                raise TruthFileError(f"{path}: verdict {row['verdict']!r} is not sat/unsat/unknown")
            truth[(row["onnx"].strip(), row["vnnlib"].strip())] = v
    return truth


def _norm(p: str) -> str:
    return p[2:] if p.startswith("./") else p


def _outcome(row: dict[str, Any]) -> str:
    v = row["verdict"]
    if v == "unknown" and str(row.get("reason", "")).startswith("time-out"):
        return "timeout"
    return v


def score(rows: list[dict[str, Any]], truth: dict[tuple[str, str], str], *,
          benchmark: str | None = None) -> ScoreReport:
    """Score VNN-COMP rows (``network`` = onnx path, ``input`` = vnnlib path) against ``truth``."""
    exact = {(_norm(o), _norm(v)): t for (o, v), t in truth.items()}
    by_name: dict[tuple[str, str], str | None] = {}
    for (o, v), t in exact.items():
        k = (Path(o).name, Path(v).name)
        by_name[k] = t if k not in by_name else None  # ambiguous names cannot be used
    rows = [r for r in rows if r.get("eps") in (None, "") and (benchmark is None or r["benchmark"] == benchmark)]
    scores: dict[str, AnalysisScore] = {}
    wrong: list[Wrong] = []
    unmatched = 0
    seen: dict[str, set[tuple[str, str]]] = {}
    for r in rows:
        key = (_norm(r["network"]), _norm(r["input"]))
        t = exact.get(key)
        if t is None:
            t = by_name.get((Path(key[0]).name, Path(key[1]).name))
        if t is None:
            unmatched += 1
            continue
        a = r["analysis"]
        s = scores.setdefault(a, AnalysisScore(a))
        seen.setdefault(a, set()).add(key)
        s.instances += 1
        if r.get("seconds") is not None:
            s.seconds.append(float(r["seconds"]))
        ours = _outcome(r)
        if ours == "verified":
            if t == "unsat":
                s.correct_unsat += 1
            elif t == "sat":
                s.wrong += 1
                wrong.append(Wrong(a, r["network"], r["input"], ours, t))
            else:
                s.decided_truth_unknown += 1
        elif ours == "falsified":
            if t == "sat":
                s.correct_sat += 1
            elif t == "unsat":
                s.wrong += 1
                wrong.append(Wrong(a, r["network"], r["input"], ours, t))
            else:
                s.decided_truth_unknown += 1
        elif ours in ("timeout", "error"):
            setattr(s, ours, getattr(s, ours) + 1)
        else:
            s.unknown += 1
    for a, s in scores.items():
        s.missing = len(exact) - len(seen.get(a, set()))
    counts = {v: sum(1 for t in truth.values() if t == v) for v in ("unsat", "sat", "unknown")}
    for w in wrong:
        if w.soundness_bug:
            log.error("SOUNDNESS BUG: %s says verified on %s / %s, which has a counterexample (sat)",
                      w.analysis, w.network, w.vnnlib)
        else:
            log.error("wrong answer: %s says falsified on %s / %s, whose truth is unsat", w.analysis, w.network,
                      w.vnnlib)
    return ScoreReport(scores, wrong, unmatched, counts)


def format_score(report: ScoreReport) -> str:
    """A markdown table of the scores, with a loud banner for wrong answers."""
    c = report.truth_counts
    lines = [f"truth: {c['unsat']} unsat (holds), {c['sat']} sat (violated), {c['unknown']} unknown", "",
             "| analysis | instances | correct unsat | correct sat | WRONG | decided (truth unknown) | unknown "
             "| timeout | error | missing | median s | mean s | total s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    from absint.bench.report import analysis_sort_key

    for a in sorted(report.scores, key=analysis_sort_key):
        s = report.scores[a]
        lines.append(f"| {a} | {s.instances} | {s.correct_unsat} | {s.correct_sat} | {s.wrong} | "
                     f"{s.decided_truth_unknown} | {s.unknown} | {s.timeout} | {s.error} | {s.missing} | "
                     f"{s.median_seconds:.3f} | {s.mean_seconds:.3f} | {float(np.sum(s.seconds)):.1f} |")
    if report.unmatched:
        lines.append(f"\n{report.unmatched} result row(s) matched no truth entry (ignored)")
    if report.wrong:
        bugs = report.soundness_bugs
        bar = "!" * 78
        lines += ["", bar, f"!!! {len(report.wrong)} WRONG ANSWER(S)"
                  + (f", {len(bugs)} of them SOUNDNESS BUGS ('verified' on a sat instance)" if bugs else ""), bar]
        for w in report.wrong:
            tag = "SOUNDNESS BUG" if w.soundness_bug else "wrong"
            lines.append(f"!!! {tag}: {w.analysis}: {w.ours} on {w.network} {w.vnnlib} (truth: {w.truth})")
        lines.append(bar)
    else:
        lines.append("\nwrong answers: 0")
    return "\n".join(lines)
