"""Ablation driver for issue 14 item 3: an analysis over a grid of options → certified and time.

Runs one analysis (``--analysis``, default ``kpoly``) with every combination of the ``--grid``
axes (``--grid k=1,3,4 --grid hull=exact,fast`` …), each merged with the fixed ``--opt KEY=VALUE``
options, on the ERAN MNIST networks (README eps), images ``--start`` … ``--start + --n − 1``
(default 0–199; the correctly classified ones are analysed), at ``--timeout`` seconds per image
(default 60). Options pass straight through to the analysis, which validates them: every
configuration is built before anything runs, so a misspelt or unsupported option stops the run
at once with the analysis' own message. The same driver works for ``refinepoly``, ``kpoly`` and
whatever options they grow.

Per image and configuration (configurations interleaved image by image, in rotating order, so
load changes hit all of them alike): verdict, proved margin, CPU time (``time.process_time`` of
this process plus that of reaped child processes) and wall time, via
``absint.verify_instance(..., attack=False)`` (the analysis alone, no PGD before it). Every image
some configuration verified is then re-attacked with the strong PGD of
``benchmarks/pgd_recheck.py``; a success is a contradiction (a soundness bug) and is reported
against each configuration that verified it.

Output: one JSON line per (network, image, configuration) at ``--out`` (default a temporary file;
``--record``: ``benchmarks/results/kpoly_ablation_<analysis>.jsonl``), appended as it goes
(``--resume`` skips what a previous run of the same file finished), a summary JSON beside it
(``.summary.json``: the command, ``uptime`` at start and end, each configuration's resolved
options), and a markdown table: per network and configuration, certified, unknown, time-outs,
median and total CPU and wall per image, PGD contradictions. Each row also carries ``stages``: the
``multineuron`` stage's seconds/groups/rows and the branch and bound's status, seconds, sub-problems
bounded and proved share (:data:`STAGE_FIELDS`), so an A/B of BaB options compares work, not only
verdicts.

Triage: ``give_up_below`` is an option like any other; issue 14 wants it reported separately,
so put it in its own run (``--opt give_up_below=0.0 ...``), never in the default grid.

Long runs: ``--shard I/N`` analyses every N-th image starting at I (one process per core, each
with its own ``--out``); ``--summarize FILE...`` prints the table of several result files.
``--images 164,144,100-109`` analyses chosen images instead of ``--start``/``--n`` (A/B runs on the
hard cases of an earlier run). ``--config`` (repeated) lists configurations one by one instead of a
grid: ``--config defaults --config 'sparse_n=30 max_groups=150'`` (a paired A/B).

Quiet-machine command (example grid; about configs × correct images × mean seconds per image)::

    python benchmarks/kpoly_ablation.py --analysis kpoly --grid k=1,3 --grid sparse_n=50,100 \\
        --timeout 60 --record
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import logging
import resource
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import (ERAN, ERAN_SUITE, BenchError, NetSpec, default_out, git_revision, load_npz,  # noqa: E402
                      machine_record, markdown_table, median, options_label, parse_grid, parse_net, parse_options,
                      uptime, write_json)
from pgd_recheck import broken_by_pgd  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

import absint  # noqa: E402
from absint.specs import Instance, linf_ball, robustness_property  # noqa: E402

log = logging.getLogger("kpoly_ablation")
#: An unknown whose reason has one of these ran out of time (the limit, or a stage's share of it).
TIME_WORDS = ("time-out", "time limit")


def configurations(fixed: dict[str, Any], grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every combination of the grid values, each merged over the fixed options."""
    keys = list(grid)
    return [{**fixed, **dict(zip(keys, values))} for values in itertools.product(*(grid[k] for k in keys))] or [dict(fixed)]


def settings_of(analysis: absint.Analysis) -> dict[str, Any]:
    """The analysis' resolved settings (its option dataclasses as dicts), for the record."""
    out: dict[str, Any] = {"analysis": analysis.name}
    for name, value in vars(analysis).items():
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            out[name] = dataclasses.asdict(value)
        elif name == "options" and isinstance(value, dict):  # revisions before typed options
            out[name] = value
    return out


def build_analyses(name: str, configs: list[dict[str, Any]]) -> list[absint.Analysis]:
    """One analysis per configuration; any rejected option stops here with the analysis' message."""
    analyses = []
    for opts in configs:
        try:
            analyses.append(absint.get_analysis(name, **opts))
        except (TypeError, ValueError, absint.AbsintError) as exc:
            raise BenchError(f"analysis {name!r} rejects the options {options_label(opts)}: {exc}") from None
    return analyses


def cpu_seconds() -> float:
    """CPU of this process and of its reaped children (solver worker processes)."""
    ch = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + ch.ru_utime + ch.ru_stime


#: stage records copied into each result row (numbers only): where the time went, how far BaB got
STAGE_FIELDS = {"multineuron": ("seconds", "groups", "rows"), "bab": ("status", "seconds", "bounded", "proved")}


def stage_stats(details: Any) -> dict[str, dict[str, Any]]:
    """The :data:`STAGE_FIELDS` of the refinement stages found anywhere in a result's details."""
    found: dict[str, dict[str, Any]] = {}

    def walk(d: Any) -> None:
        if isinstance(d, dict):
            for key, value in d.items():
                if key in STAGE_FIELDS and isinstance(value, dict) and key not in found:
                    found[key] = {f: value[f] for f in STAGE_FIELDS[key] if f in value}
                else:
                    walk(value)
        elif isinstance(d, (list, tuple)):
            for v in d:
                walk(v)

    walk(details)
    return found


def parse_images(text: str) -> list[int]:
    """``"3,10-12"`` → ``[3, 10, 11, 12]``."""
    out: list[int] = []
    try:
        for part in text.split(","):
            a, _, b = part.strip().partition("-")
            out += list(range(int(a), int(b or a) + 1))
    except ValueError:
        raise BenchError(f"--images {text!r}: write it as comma-separated indices or ranges, e.g. 3,10-12") from None
    return out


def run_one(graph: absint.Graph, an: absint.Analysis, image: np.ndarray, label: int, eps: float,
            timeout: float | None, attack: bool) -> dict[str, Any]:
    n_out = int(np.prod(graph.output_shape))
    inst = Instance(linf_ball(image.reshape(graph.input_shape), eps, (0.0, 1.0)), robustness_property(label, n_out))
    c0, w0 = cpu_seconds(), time.perf_counter()
    res = absint.verify_instance(graph, inst, an, timeout=timeout, attack=attack)
    return {"verdict": res.verdict.value if hasattr(res.verdict, "value") else str(res.verdict),
            "margin": res.margin, "reason": res.reason, "cpu_s": cpu_seconds() - c0,
            "wall_s": time.perf_counter() - w0, "stages": stage_stats(res.details)}


def run_network(net: NetSpec, X: np.ndarray, Y: np.ndarray, indices: list[int], name: str,
                configs: list[dict[str, Any]], analyses: list[absint.Analysis], args: argparse.Namespace,
                out_path: Path, done: set[tuple]) -> list[dict[str, Any]]:
    graph = absint.load_network(net.path)
    with torch.no_grad():
        pred = graph.forward(torch.as_tensor(X[indices].reshape(len(indices), *graph.input_shape)))
    pred = pred.reshape(len(indices), -1).argmax(1).tolist()
    rows: list[dict[str, Any]] = []
    labels = [options_label(c) for c in configs]
    for n, (i, p) in enumerate(zip(indices, pred)):
        if p != int(Y[i]):
            continue
        order = list(range(len(configs)))
        order = order[n % len(order):] + order[: n % len(order)]
        for c in order:
            if (net.name, i, labels[c]) in done:
                continue
            r = run_one(graph, analyses[c], X[i], int(Y[i]), net.eps, args.timeout, args.attack)
            row = {"net": net.name, "eps": net.eps, "image": i, "label": int(Y[i]), "analysis": name,
                   "config": labels[c], "options": configs[c], **r}
            rows.append(row)
            with open(out_path, "a") as fh:
                fh.write(json.dumps(row) + "\n")
        log.info("%s image %d: %s", net.name, i, ", ".join(
            f"{r['config']}: {r['verdict']} {r['wall_s']:.1f}s" for r in rows if r["image"] == i))
    if args.pgd:
        verified = sorted({r["image"] for r in rows if r["verdict"] == "verified"})
        broken = {i for i in verified if broken_by_pgd(graph, X[i], int(Y[i]), net.eps)}
        for r in rows:
            if r["verdict"] == "verified":
                r["pgd_contradiction"] = r["image"] in broken
        with open(out_path.with_suffix(".pgd.jsonl"), "a") as fh:
            for i in verified:
                fh.write(json.dumps({"net": net.name, "image": i, "broken": i in broken}) + "\n")
        if broken:
            log.error("%s: PGD broke verified images %s: SOUNDNESS BUG", net.name, sorted(broken))
    return rows


def summarize(rows: list[dict[str, Any]], pgd: dict[tuple, bool]) -> list[dict[str, Any]]:
    """Per (network, configuration): counts and times."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["net"], r["config"]), []).append(r)
    out = []
    for (net, config), rs in groups.items():
        ver = [r for r in rs if r["verdict"] == "verified"]
        out.append({
            "net": net, "config": config, "images": len(rs), "certified": len(ver),
            "falsified": sum(r["verdict"] == "falsified" for r in rs),
            "timeouts": sum(r["verdict"] == "unknown" and any(t in (r.get("reason") or "") for t in TIME_WORDS)
                            for r in rs),
            "median_cpu_s": median([r["cpu_s"] for r in rs]), "median_wall_s": median([r["wall_s"] for r in rs]),
            "total_cpu_s": sum(r["cpu_s"] for r in rs), "total_wall_s": sum(r["wall_s"] for r in rs),
            "pgd_checked": sum((net, r["image"]) in pgd for r in ver),
            "pgd_contradictions": sum(pgd.get((net, r["image"]), False) for r in ver),
        })
    return out


def report(summary: list[dict[str, Any]]) -> str:
    head = ["network", "configuration", "images", "certified", "unknown", "time-outs", "median CPU s",
            "median wall s", "total CPU s", "total wall s", "PGD re-attacked", "contradictions"]
    rows = [[s["net"], s["config"], s["images"], f"**{s['certified']}**",
             s["images"] - s["certified"] - s["falsified"], s["timeouts"], s["median_cpu_s"], s["median_wall_s"],
             s["total_cpu_s"], s["total_wall_s"], s["pgd_checked"], s["pgd_contradictions"]] for s in summary]
    return markdown_table(head, rows)


def read_results(paths: list[Path]) -> tuple[list[dict[str, Any]], dict[tuple, bool]]:
    rows, pgd = [], {}
    for p in paths:
        if p.exists():
            rows += [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
        q = p.with_suffix(".pgd.jsonl")
        if q.exists():
            for line in q.read_text().splitlines():
                if line.strip():
                    r = json.loads(line)
                    pgd[(r["net"], r["image"])] = pgd.get((r["net"], r["image"]), False) or r["broken"]
    return rows, pgd


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--analysis", default="kpoly", help="analysis name (default kpoly)")
    ap.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...", help="an axis of the grid")
    ap.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE", help="an option of every configuration")
    ap.add_argument("--config", action="append", default=[], metavar="'KEY=V KEY=V'",
                    help="one configuration (space-separated options; 'defaults': none), instead of --grid: "
                         "paired A/Bs such as --config defaults --config 'sparse_n=30 max_groups=150'")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds per image (default 60; 0: none)")
    ap.add_argument("--nets", nargs="+", default=list(ERAN_SUITE), help="ERAN names or PATH.onnx:EPS")
    ap.add_argument("--data", default=str(ERAN / "mnist_test_1000.npz"))
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--start", type=int, default=0)
    ap.add_argument("--images", default=None, metavar="LIST",
                    help="these image indices instead of --start/--n, e.g. 3,10-12 (A/B runs on chosen images)")
    ap.add_argument("--shard", default="0/1", help="I/N: every N-th image from position I (default 0/1)")
    ap.add_argument("--attack", action="store_true", help="let verify_instance attack first (off: the analysis alone)")
    ap.add_argument("--no-pgd", dest="pgd", action="store_false", help="skip the PGD re-attack of verified images")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None, help="results JSON-lines path")
    ap.add_argument("--record", action="store_true", help="write benchmarks/results/kpoly_ablation_<analysis>.jsonl")
    ap.add_argument("--resume", action="store_true", help="skip (net, image, config) rows already in --out")
    ap.add_argument("--summarize", nargs="+", type=Path, default=None, metavar="FILE",
                    help="only print the table of these result files")
    ap.add_argument("-v", "--verbose", action="store_true")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    if args.summarize:
        rows, pgd = read_results(args.summarize)
        print(report(summarize(rows, pgd)))
        return 0
    torch.set_num_threads(args.threads)
    if args.timeout is not None and args.timeout <= 0:
        args.timeout = None
    try:
        shard_i, shard_n = (int(v) for v in args.shard.split("/"))
        assert 0 <= shard_i < shard_n
    except (ValueError, AssertionError):
        raise BenchError(f"--shard {args.shard!r}: write it as I/N with 0 <= I < N") from None
    if args.config and args.grid:
        raise BenchError("--config and --grid: use one of them")
    fixed = parse_options(args.opt)
    configs = ([{**fixed, **parse_options([] if c.strip() == "defaults" else c.split())} for c in args.config]
               if args.config else configurations(fixed, parse_grid(args.grid)))
    analyses = build_analyses(args.analysis, configs)  # validates every option before any work
    nets = [parse_net(t) for t in args.nets]
    X, Y = load_npz(args.data)
    chosen = parse_images(args.images) if args.images else list(range(args.start, min(args.start + args.n, len(X))))
    if any(not 0 <= i < len(X) for i in chosen):
        raise BenchError(f"image indices must lie in [0, {len(X)})")
    indices = chosen[shard_i::shard_n]
    if not indices:
        raise BenchError(f"no images to analyse for shard {args.shard}")
    out_path = default_out(f"kpoly_ablation_{args.analysis}", args.record, args.out, ".jsonl")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    done: set[tuple] = set()
    if args.resume and out_path.exists():
        done = {(r["net"], r["image"], r["config"]) for r in read_results([out_path])[0]}
    elif out_path.exists():
        raise BenchError(f"{out_path} exists: pass --resume to continue it, or another --out")
    meta = {"command": " ".join([sys.executable] + (sys.argv if argv is None else [__file__, *argv])),
            "absint_revision": git_revision(), "machine_start": machine_record(), "analysis": args.analysis,
            "timeout_s": args.timeout, "images": [indices[0], indices[-1]], "shard": args.shard,
            "configurations": [{"label": options_label(c), "options": c, "resolved": settings_of(a)}
                               for c, a in zip(configs, analyses)]}
    log.info("start: %s; %d configuration(s): %s", meta["machine_start"]["uptime"], len(configs),
             "; ".join(options_label(c) for c in configs))
    for net in nets:
        log.info("%s (eps %g)", net.name, net.eps)
        run_network(net, X, Y, indices, args.analysis, configs, analyses, args, out_path, done)
    meta["uptime_end"] = uptime()
    rows, pgd = read_results([out_path])
    summary = summarize(rows, pgd)
    write_json(out_path.with_suffix(".summary.json"), {"meta": meta, "summary": summary})
    print(f"\n{args.analysis}, timeout {args.timeout} s per image, images {indices[0]}..{indices[-1]} "
          f"(shard {args.shard}), absint {meta['absint_revision']}")
    print(f"uptime at start: {meta['machine_start']['uptime']}\nuptime at end:   {meta['uptime_end']}\n")
    print(report(summary))
    print(f"\nresults: {out_path} (+ .summary.json, .pgd.jsonl)")
    return 1 if any(s["pgd_contradictions"] for s in summary) else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
