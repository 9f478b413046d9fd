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
    missing: int = 0  # instances in scope (see :func:`score`) without a row of this analysis
    conflict: int = 0  # decided where the truth files disagree (not scored)
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
                "timeout": self.timeout, "error": self.error, "missing": self.missing, "conflict": self.conflict,
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


#: Truth verdicts: ``conflict`` marks an instance on which tools (or truth files) disagree.
TRUTH_VERDICTS = ("sat", "unsat", "unknown", "conflict")


def read_truth(path: str | Path) -> dict[tuple[str, str], str]:
    """``(onnx, vnnlib) -> verdict`` from a truth.csv (columns onnx, vnnlib, ..., verdict).

    Verdicts: ``sat``/``violated``, ``unsat``/``holds``, ``unknown`` (also ``timeout``, an empty
    cell) and ``conflict``. A file that lists one instance twice with different verdicts gives
    ``conflict`` for it.
    """
    path = Path(path)
    if not path.exists():
        raise TruthFileError(f"{path}: no such truth file")
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            cols = reader.fieldnames or []
            if not {"onnx", "vnnlib", "verdict"} <= set(cols):
                raise TruthFileError(f"{path}: needs columns onnx, vnnlib, verdict (has {cols})")
            truth: dict[tuple[str, str], str] = {}
            for i, row in enumerate(reader, 2):
                v = (row["verdict"] or "").strip().lower()
                v = {"holds": "unsat", "violated": "sat", "timeout": "unknown", "": "unknown"}.get(v, v)
                if v not in TRUTH_VERDICTS:
                    raise TruthFileError(f"{path}:{i}: verdict {row['verdict']!r} is not one of "
                                         f"{', '.join(TRUTH_VERDICTS)}")
                key = ((row["onnx"] or "").strip(), (row["vnnlib"] or "").strip())
                truth[key] = _merge_verdicts(truth.get(key), v)
    except UnicodeDecodeError as exc:
        raise TruthFileError(f"{path}: not a text CSV file ({exc.reason})") from None
    return truth


def _merge_verdicts(old: str | None, new: str) -> str:
    """One instance's verdict from two sources: equal or one unknown → the decided one; else conflict."""
    if old is None or old == new or old == "unknown":
        return new
    if new == "unknown":
        return old
    return "conflict"


def read_truths(paths: list[str | Path]) -> dict[tuple[str, str], str]:
    """Several truth files merged (an instance decided differently in two files becomes ``conflict``)."""
    merged: dict[tuple[str, str], str] = {}
    for p in paths:
        for (o, v), t in read_truth(p).items():
            key = (_norm(o), _norm(v))
            merged[key] = _merge_verdicts(merged.get(key), t)
    return merged


def _norm(p: str) -> str:
    return p[2:] if p.startswith("./") else p


def _outcome(row: dict[str, Any]) -> str:
    v = row["verdict"]
    if v == "unknown" and str(row.get("reason", "")).startswith("time-out"):
        return "timeout"
    return v


def _scope(o: str, v: str) -> tuple[str, str]:
    """What a row says was run: the network and the folder of its property (e.g. ``vnnlib/2021``)."""
    return (o, str(Path(v).parent))


def score(rows: list[dict[str, Any]], truth: dict[tuple[str, str], str], *,
          benchmark: str | None = None) -> ScoreReport:
    """Score VNN-COMP rows (``network`` = onnx path, ``input`` = vnnlib path) against ``truth``.

    Only truth entries of what was run count: those whose network and property folder (e.g. a
    spec year such as ``vnnlib/2021``) appear in some matched row. Within that scope an
    analysis with no row for an instance counts it as ``missing``.
    """
    exact = {(_norm(o), _norm(v)): t for (o, v), t in truth.items()}
    by_name: dict[tuple[str, str], tuple[str, str] | None] = {}
    for (o, v) in exact:
        k = (Path(o).name, Path(v).name)
        by_name[k] = (o, v) if k not in by_name else None  # ambiguous names cannot be used
    rows = [r for r in rows if r.get("eps") in (None, "") and (benchmark is None or r["benchmark"] == benchmark)]
    scores: dict[str, AnalysisScore] = {}
    wrong: list[Wrong] = []
    unmatched = 0
    seen: dict[str, set[tuple[str, str]]] = {}
    run_scope: set[tuple[str, str]] = set()
    for r in rows:
        key = (_norm(r["network"]), _norm(r["input"]))
        if key not in exact:
            key = by_name.get((Path(key[0]).name, Path(key[1]).name)) or key
        t = exact.get(key)
        if t is None:
            unmatched += 1
            continue
        run_scope.add(_scope(*key))
        a = r["analysis"]
        s = scores.setdefault(a, AnalysisScore(a))
        seen.setdefault(a, set()).add(key)
        s.instances += 1
        if r.get("seconds") is not None:
            s.seconds.append(float(r["seconds"]))
        ours = _outcome(r)
        if ours in ("verified", "falsified") and t == "conflict":
            s.conflict += 1
        elif ours == "verified":
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
    in_scope = {k: t for k, t in exact.items() if _scope(*k) in run_scope}
    for a, s in scores.items():
        s.missing = len(in_scope) - len(seen.get(a, set()) & set(in_scope))
    truth = in_scope
    counts = {v: sum(1 for t in truth.values() if t == v) for v in TRUTH_VERDICTS}
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
    lines = [f"truth (instances of the networks and property folders run): {c['unsat']} unsat (holds), "
             f"{c['sat']} sat (violated), {c['unknown']} unknown" + (f", {c['conflict']} conflict" if c.get("conflict") else ""),
             "",
             "| analysis | instances | correct unsat | correct sat | WRONG | decided (truth unknown) | decided (truth conflict) "
             "| unknown | timeout | error | missing | median s | mean s | total s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    from absint.bench.report import analysis_sort_key

    for a in sorted(report.scores, key=analysis_sort_key):
        s = report.scores[a]
        lines.append(f"| {a} | {s.instances} | {s.correct_unsat} | {s.correct_sat} | {s.wrong} | "
                     f"{s.decided_truth_unknown} | {s.conflict} | {s.unknown} | {s.timeout} | {s.error} | {s.missing} | "
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
