"""Figures from results rows, drawn with matplotlib's Agg backend (no display needed).

* ``cactus_<benchmark>``: instances solved within a time limit, one line per analysis (image
  benchmarks count certified inputs; VNN-COMP benchmarks count verified + falsified);
* ``margins_<A>_vs_<B>``: proved margin lower bound of analysis A against B on the same
  instances (above the diagonal: B is tighter; right of / above 0: verified);
* ``eps_<benchmark>``: certified fraction against eps for benchmarks run at several eps.
"""
from __future__ import annotations

import logging
import re
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from absint.bench.report import analysis_sort_key, is_image_row

log = logging.getLogger(__name__)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _log_ticks(ax: Any, values: list[float]) -> None:
    """Readable log-axis labels: 1-2-5 ticks over short ranges, powers of ten otherwise."""
    from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

    lo, hi = min(values, default=1.0), max(values, default=1.0)
    if hi / max(lo, 1e-12) <= 1e3:
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0), numticks=20))
        ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def _save(fig: Any, out: Path, stem: str, formats: Sequence[str]) -> list[Path]:
    paths = []
    for fmt in formats:
        p = out / f"{_safe(stem)}.{fmt}"
        fig.savefig(p, dpi=110, bbox_inches="tight")
        paths.append(p)
    _plt().close(fig)
    return paths


def cactus(rows: list[dict[str, Any]], out: Path, formats: Sequence[str] = ("png",)) -> list[Path]:
    """One cactus plot per benchmark."""
    plt = _plt()
    by_bench: dict[str, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        by_bench[r["benchmark"]][r["analysis"]].append(r)
    paths: list[Path] = []
    for bench, by_an in sorted(by_bench.items()):
        image = any(is_image_row(r) for rs in by_an.values() for r in rs)
        fig, ax = plt.subplots(figsize=(5.5, 3.8))
        total = max(len(rs) for rs in by_an.values())
        ok = ("verified",) if image else ("verified", "falsified")
        t_max = max((r["seconds"] or 0.0) for rs in by_an.values() for r in rs)
        plotted: list[float] = [max(t_max, 1e-5)]
        for a in sorted(by_an, key=analysis_sort_key):
            times = np.sort([max(r["seconds"] or 0.0, 1e-5) for r in by_an[a] if r["verdict"] in ok])
            plotted += list(times)
            if len(times):
                # staircase: n(t) = instances solved in at most t seconds, continued to the slowest run
                xs = np.concatenate([[times[0]], times, [max(t_max, times[-1])]])
                ys = np.concatenate([[0], np.arange(1, len(times) + 1), [len(times)]])
                ax.step(xs, ys, where="post", label=f"{a} ({len(times)})", lw=1.8)
            else:
                ax.plot([], [], label=f"{a} (0)")
        ax.set_xscale("log")
        _log_ticks(ax, plotted)
        ax.set_xlabel("time limit per instance (s)")
        ax.set_ylabel("certified inputs" if image else "solved instances (verified + falsified)")
        ax.set_title(f"{bench}: solved within time ({total} instances)")
        ax.set_ylim(0, max(1, total))
        ax.grid(alpha=0.3, which="both")
        ax.legend(loc="upper left", fontsize=8)
        paths += _save(fig, out, f"cactus_{bench}", formats)
    return paths


def margin_scatter(rows: list[dict[str, Any]], out: Path, pair: tuple[str, str] | None = None,
                   formats: Sequence[str] = ("png",)) -> list[Path]:
    """Scatter of margin lower bounds of two analyses on the instances both ran."""
    m: dict[str, dict[tuple, float]] = {}
    bench_of: dict[tuple, str] = {}
    for r in rows:
        if r.get("margin") is not None:
            k = (r["benchmark"], r["network"], r["input"], r.get("eps"))
            m.setdefault(r["analysis"], {})[k] = float(r["margin"])
            bench_of[k] = r["benchmark"]
    if pair is None:
        # cheapest vs the most precise analysis that ran on some of the same instances
        names = sorted(m, key=analysis_sort_key)
        pair = next(((names[0], b) for b in reversed(names[1:]) if set(m[names[0]]) & set(m[b])), None)
    if pair is None:
        log.info("margin scatter needs two analyses with margins on common instances; skipped")
        return []
    a, b = pair
    m.setdefault(a, {})
    m.setdefault(b, {})
    common = sorted(set(m[a]) & set(m[b]), key=str)
    if not common:
        log.info("no instance has margins from both %s and %s; scatter skipped", a, b)
        return []
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 5))
    benches = sorted({bench_of[k] for k in common})
    for bench in benches:
        ks = [k for k in common if bench_of[k] == bench]
        ax.scatter([m[a][k] for k in ks], [m[b][k] for k in ks], s=9, alpha=0.6, label=f"{bench} ({len(ks)})")
    vals = np.array([m[a][k] for k in common] + [m[b][k] for k in common])
    # asinh axes: linear around 0 (the verified / not-verified boundary), logarithmic in the tails
    width = max(1e-3, float(np.percentile(np.abs(vals), 25)))
    ax.set_xscale("asinh", linear_width=width)
    ax.set_yscale("asinh", linear_width=width)
    ax.autoscale_view()
    xlim, ylim = ax.get_xlim(), ax.get_ylim()
    lo, hi = max(xlim[0], ylim[0]), min(xlim[1], ylim[1])
    if lo < hi:  # y = x is a straight line when both axes share the same scale
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8, label="equal")
    ax.axhline(0, color="grey", lw=0.6)
    ax.axvline(0, color="grey", lw=0.6)
    ax.set_xlim(xlim)
    ax.set_ylim(ylim)
    ax.set_xlabel(f"{a}: margin lower bound")
    ax.set_ylabel(f"{b}: margin lower bound")
    ax.set_title(f"margin lower bounds, {b} vs {a} ({len(common)} instances)\n> 0 = verified; above the diagonal "
                 f"= {b} tighter", fontsize=9)
    ax.legend(fontsize=7, loc="best")
    ax.grid(alpha=0.3)
    return _save(fig, out, f"margins_{a}_vs_{b}", formats)


def eps_curves(rows: list[dict[str, Any]], out: Path, formats: Sequence[str] = ("png",)) -> list[Path]:
    """Certified fraction vs eps, one figure per (benchmark, network) run at two or more eps values."""
    groups: dict[tuple[str, str], dict[str, dict[float, list[dict[str, Any]]]]] = \
        defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for r in rows:
        if is_image_row(r):
            groups[(r["benchmark"], r["network"])][r["analysis"]][float(r["eps"])].append(r)
    plt = _plt()
    paths: list[Path] = []
    for (bench, net), by_an in sorted(groups.items()):
        if max(len(v) for v in by_an.values()) < 2:
            continue
        fig, ax = plt.subplots(figsize=(5.5, 3.8))
        for a in sorted(by_an, key=analysis_sort_key):
            eps = sorted(by_an[a])
            frac = [sum(r["verdict"] == "verified" for r in by_an[a][e]) / len(by_an[a][e]) for e in eps]
            ax.plot(eps, frac, marker="o", ms=3, label=a)
        any_rows = next(iter(next(iter(by_an.values())).values()))
        acc = sum(1 for r in any_rows if r.get("correct")) / len(any_rows)
        ax.axhline(acc, color="grey", ls=":", lw=1, label=f"accuracy ({acc:.0%})")
        ax.set_xlabel("eps (L-inf radius)")
        ax.set_ylabel("certified fraction of inputs")
        ax.set_ylim(0, 1.02)
        ax.set_title(f"{bench} ({net})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        paths += _save(fig, out, f"eps_{bench}", formats)
    return paths


def draw_all(rows: list[dict[str, Any]], out: str | Path, *, pair: tuple[str, str] | None = None,
             formats: Sequence[str] = ("png",)) -> list[Path]:
    """All figures for ``rows`` into folder ``out``; returns the files written."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = cactus(rows, out, formats)
    paths += margin_scatter(rows, out, pair, formats)
    paths += eps_curves(rows, out, formats)
    return paths
