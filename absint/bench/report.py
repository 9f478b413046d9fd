"""Comparison tables from results rows (markdown, readable in a terminal too).

Image experiments: per (benchmark, network, eps) and analysis, the number of inputs, how many the
network classifies correctly, and the **certified count**: correctly classified inputs proven
robust (out of all inputs). VNN-COMP experiments: verified / falsified / unknown / timeout counts
per benchmark and analysis. Both with the median and mean time per instance and the largest
worker RSS seen.
"""
from __future__ import annotations

import logging
from collections import defaultdict
from typing import Any, Iterable

import numpy as np

log = logging.getLogger(__name__)

#: Analyses in this order first (cheap to precise), the rest alphabetically.
ANALYSIS_ORDER = ("box", "symint", "deepzono", "deeppoly", "alphapoly", "lp", "refinezono", "refinepoly", "kpoly",
                  "milp", "bab", "sdp")


def analysis_sort_key(name: str) -> tuple[int, str]:
    return (ANALYSIS_ORDER.index(name) if name in ANALYSIS_ORDER else len(ANALYSIS_ORDER), name)


def is_image_row(row: dict[str, Any]) -> bool:
    return row.get("eps") is not None


def _stats(rows: list[dict[str, Any]]) -> dict[str, Any]:
    times = np.array([r["seconds"] for r in rows if r.get("seconds") is not None], dtype=float)
    cpu = np.array([r["cpu_seconds"] for r in rows if r.get("cpu_seconds") is not None], dtype=float)
    mem = [r["peak_rss_mib"] for r in rows if r.get("peak_rss_mib") is not None]
    verdicts = [r["verdict"] for r in rows]
    timeouts = sum(1 for r in rows if r["verdict"] == "unknown" and str(r.get("reason", "")).startswith("time-out"))
    return {
        "n": len(rows),
        "correct": sum(1 for r in rows if r.get("correct")),
        "verified": verdicts.count("verified"),
        "falsified": verdicts.count("falsified"),
        "unknown": verdicts.count("unknown") - timeouts,
        "timeout": timeouts,
        "error": verdicts.count("error"),
        "median": float(np.median(times)) if len(times) else float("nan"),
        "mean": float(np.mean(times)) if len(times) else float("nan"),
        "total": float(np.sum(times)) if len(times) else 0.0,
        "cpu_mean": float(np.mean(cpu)) if len(cpu) else float("nan"),
        "peak_mib": max(mem) if mem else float("nan"),
    }


def _f(x: float, spec: str) -> str:
    """Format a number; NaN (no data, e.g. rows from before a column existed) as a dash."""
    return "–" if x != x else format(x, spec)


def image_table(rows: Iterable[dict[str, Any]]) -> str:
    """Markdown table of the image (robustness) rows."""
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        if is_image_row(r):
            groups[(r["benchmark"], r["network"], r["eps"], r["analysis"])].append(r)
    if not groups:
        return ""
    lines = ["| benchmark | network | eps | analysis | inputs | correctly classified | certified | falsified "
             "| unknown | error | median s | mean s | peak RSS MiB |",
             "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for (b, n, e, a) in sorted(groups, key=lambda k: (k[0], k[1], k[2], analysis_sort_key(k[3]))):
        s = _stats(groups[(b, n, e, a)])
        lines.append(f"| {b} | {n} | {e:g} | {a} | {s['n']} | {s['correct']} | **{s['verified']}** | "
                     f"{s['falsified']} | {s['unknown'] + s['timeout']} | {s['error']} | {_f(s['median'], '.4f')} | "
                     f"{_f(s['mean'], '.4f')} | {_f(s['peak_mib'], '.0f')} |")
    return "\n".join(lines)


def _limit(rows: list[dict[str, Any]]) -> str:
    limits = {r.get("timeout") for r in rows}
    if len(limits) == 1 and None not in limits:
        return f"{next(iter(limits)):g} s"
    return "mixed limits" if len(limits) > 1 else "no limit"


def summary_table(rows: Iterable[dict[str, Any]]) -> str:
    """One line per image experiment, one column per analysis: ``certified (median s)``; the header
    gives each analysis's time limit per input when all its rows share one."""
    groups: dict[tuple, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    by_analysis: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        if is_image_row(r):
            groups[(r["benchmark"], r["eps"])][r["analysis"]].append(r)
            by_analysis[r["analysis"]].append(r)
    if not groups:
        return ""
    names = sorted(by_analysis, key=analysis_sort_key)
    head = " | ".join(f"{a} ({_limit(by_analysis[a])})" for a in names)
    lines = [f"| experiment (eps) | correctly classified | {head} |", "|---|---:|" + "---:|" * len(names)]
    for (b, e) in sorted(groups):
        cols = groups[(b, e)]
        first = next(iter(cols.values()))
        cells = []
        for a in names:
            if a in cols:
                st = _stats(cols[a])
                cells.append(f"**{st['verified']}** ({_f(st['median'], '.2g')} s)")
            else:
                cells.append("–")
        lines.append(f"| {b} ({e:g}) | {_stats(first)['correct']} / {len(first)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def vnn_table(rows: Iterable[dict[str, Any]]) -> str:
    """Markdown table of the VNN-COMP rows (no truth needed; see ``absint score`` for correctness)."""
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        if not is_image_row(r):
            groups[(r["benchmark"], r["analysis"])].append(r)
    if not groups:
        return ""
    lines = ["| benchmark | analysis | instances | verified | falsified | unknown | timeout | error | median s "
             "| mean s | total s | peak RSS MiB |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for (b, a) in sorted(groups, key=lambda k: (k[0], analysis_sort_key(k[1]))):
        s = _stats(groups[(b, a)])
        lines.append(f"| {b} | {a} | {s['n']} | {s['verified']} | {s['falsified']} | {s['unknown']} | "
                     f"{s['timeout']} | {s['error']} | {_f(s['median'], '.4f')} | {_f(s['mean'], '.4f')} | {s['total']:.1f} | "
                     f"{_f(s['peak_mib'], '.0f')} |")
    return "\n".join(lines)


def time_table(rows: Iterable[dict[str, Any]]) -> str:
    """Median and mean wall seconds per instance for each analysis over all rows, and mean CPU seconds
    (the worker's process time: unlike wall time, it does not grow when other jobs share the cores)."""
    by: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by[r["analysis"]].append(r)
    if not by:
        return ""
    lines = ["| analysis | instances | median s | mean s | total s | mean CPU s |", "|---|---:|---:|---:|---:|---:|"]
    for a in sorted(by, key=analysis_sort_key):
        s = _stats(by[a])
        lines.append(f"| {a} | {s['n']} | {_f(s['median'], '.4f')} | {_f(s['mean'], '.4f')} | {s['total']:.1f} | "
                     f"{_f(s['cpu_mean'], '.4f')} |")
    return "\n".join(lines)


def format_report(rows: list[dict[str, Any]]) -> str:
    """All tables, with a line saying what 'certified' means."""
    parts = []
    img = image_table(rows)
    if img:
        parts += ["## Certified per analysis (image data sets)", "",
                  "certified = correctly classified inputs proven robust; each cell: certified count "
                  "(median seconds per input); the header gives each analysis's time limit per input.", "",
                  summary_table(rows), "",
                  "## Robustness (image data sets)", "",
                  "certified = correctly classified inputs proven robust, out of `inputs`; "
                  "falsified includes misclassified inputs.", "", img]
    vnn = vnn_table(rows)
    if vnn:
        parts += ["", "## VNN-COMP instances", "", vnn]
    parts += ["", "## Time per instance (all rows)", "", time_table(rows)]
    return "\n".join(parts).strip() + "\n"
