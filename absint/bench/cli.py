"""Subcommands ``absint bench``, ``absint vnncomp``, ``absint score`` and ``absint report``.

Importing this module registers them in :data:`absint.cli.SUBCOMMANDS`.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from absint import argtypes
from absint.argtypes import UsageError
from absint.cli import SUBCOMMANDS

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------- bench
def _add_bench(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", type=argtypes.existing_file, default=None,
                   help="TOML experiment file (see configs/); or describe one experiment with the flags below")
    p.add_argument("--out", "-o", type=Path, default=None,
                   help="results file (.jsonl or .csv); default: the config's `results` in the user results folder "
                        "($XDG_DATA_HOME/absint/results, ~/.local/share/absint/results). Rows already there are "
                        "skipped (see --rerun)")
    p.add_argument("--bench-root", type=Path, default=None,
                   help="your copy of the benchmark data: replaces the config's bench_root prefix (../shared/bench)")
    p.add_argument("--root", type=Path, default=None, help="directory relative config paths start from")
    p.add_argument("--analysis", "-a", nargs="+", default=None, help="analyses to run (overrides the config)")
    g = p.add_argument_group("one experiment from flags (no CONFIG)")
    g.add_argument("--network", type=argtypes.existing_file, help="ONNX network (image experiment)")
    g.add_argument("--data", type=argtypes.existing_file, help="image set (.npz or ERAN .csv)")
    g.add_argument("--eps", type=argtypes.radius, nargs="+", help="L-inf radii")
    g.add_argument("--count", "-n", type=argtypes.positive_int, default=None, help="number of images (default 100)")
    g.add_argument("--start", type=argtypes.nonneg_int, default=None, help="index of the first image")
    g.add_argument("--instances", type=argtypes.existing_file, help="VNN-COMP instances.csv")
    g.add_argument("--limit", type=argtypes.positive_int, default=None, help="first N instances of --instances")
    g.add_argument("--name", default=None, help="experiment name (default: network or instances folder name)")
    p.add_argument("--timeout", type=argtypes.seconds, default=None, help="time limit per instance in seconds")
    p.add_argument("--batch-size", type=argtypes.positive_int, default=None,
                   help="images per batched analysis call (default 1)")
    p.add_argument("--workers", "-j", type=argtypes.positive_int, default=None,
                   help="parallel workers (default: config or 1)")
    p.add_argument("--threads-per-worker", type=argtypes.positive_int, default=None,
                   help="torch/BLAS threads per worker (default 1)")
    p.add_argument("--backend", choices=("local", "ray"), default=None, help="local processes or Ray")
    p.add_argument("--address", default=None, help="Ray cluster address (default: start a local Ray instance)")
    p.add_argument("--retry-errors", action="store_true", help="re-run instances whose row says 'error'")
    p.add_argument("--rerun", action="store_true",
                   help="run every planned instance again, replacing the rows already in the results file")
    p.add_argument("--no-attack", action="store_true", help="skip PGD attacks")
    p.add_argument("--attack-budget", type=argtypes.nonneg_seconds, default=None,
                   help="VNN-COMP lists: extra PGD seconds after an inconclusive analysis (default: verify()'s)")
    p.add_argument("--report", type=Path, default=None,
                   help="when the run ends, write the comparison table and figures of the config's rows here "
                        "(default: the config's `report`)")
    p.add_argument("--no-report", action="store_true", help="do not draw the config's report")
    p.add_argument("--dry-run", action="store_true", help="print what would run and exit")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar or summary table")
    p.add_argument("--verbose", "-v", action="count", default=0)


def _flags_config(args: argparse.Namespace) -> dict:
    exp: dict = {}
    if args.instances is not None:
        exp = {"name": args.name or args.instances.resolve().parent.name, "instances": str(args.instances)}
        if args.limit is not None:
            exp["limit"] = args.limit
    elif args.network is not None:
        if args.data is None or not args.eps:
            raise UsageError("absint bench: error: --network needs --data and --eps")
        exp = {"name": args.name or args.network.stem, "network": str(args.network), "data": str(args.data),
               "eps": list(args.eps), "count": args.count or 100, "start": args.start or 0}
    else:
        raise UsageError("absint bench: error: give a CONFIG file, or --network/--data/--eps, or --instances")
    data = {"name": exp["name"], "experiment": [exp], "analyses": args.analysis or ["box"]}
    return data


def _run_bench(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from absint.bench.config import check_analyses, load_config, parse_config
    from absint.bench.plan import plan_tasks
    from absint.bench.report import format_report
    from absint.bench.runner import run_tasks
    from absint.bench.store import ResultStore, read_rows
    from absint.bench.tasks import total_instances

    out = args.out.resolve() if args.out is not None else None
    if args.config is not None:
        if args.network is not None or args.instances is not None:
            raise UsageError("absint bench: error: give either a CONFIG or --network/--instances, not both")
        cfg = load_config(args.config, root=args.root, bench_root=args.bench_root, results=out)
    else:
        cfg = parse_config(_flags_config(args), root=args.root or Path.cwd(), bench_root=args.bench_root,
                           results=out)
    exps = []
    for e in cfg.experiments:
        kw = {}
        if args.analysis:
            kw["analyses"] = tuple(dict.fromkeys(args.analysis))  # one column per name, in the order given
        if args.timeout is not None:
            kw["timeout"] = kw["own_timeout"] = args.timeout
        if args.batch_size is not None:
            kw["batch_size"] = args.batch_size
        if args.no_attack:
            kw["attack"] = False
        if args.attack_budget is not None:
            kw["attack_budget"] = args.attack_budget
        if args.config is not None and (args.count is not None or args.start is not None) and e.kind == "images":
            kw.update({k: v for k, v in (("count", args.count), ("start", args.start)) if v is not None})
        if args.config is not None and args.limit is not None and e.kind == "vnncomp":
            kw["limit"] = args.limit
        exps.append(replace(e, **kw))
    specs = cfg.analysis_specs
    if args.timeout is not None:  # the command line's limit wins over per-analysis limits too
        specs = tuple(replace(sp, timeout=None) for sp in specs)
    cfg = replace(cfg, experiments=tuple(exps), analysis_specs=specs).with_overrides(
        report=args.report.resolve() if args.report is not None else None,
        workers=args.workers, threads_per_worker=args.threads_per_worker, backend=args.backend, address=args.address)
    cfg = check_analyses(cfg)
    store = ResultStore(cfg.results)
    done = set() if args.rerun else store.done(retry_errors=args.retry_errors)
    tasks = plan_tasks(cfg, done)
    n = total_instances(tasks)
    if not args.quiet or args.dry_run:
        print(f"{cfg.name}: {len(cfg.experiments)} experiment(s), {n} instance(s) to run in {len(tasks)} task(s), "
              f"{len(done)} row(s) already in {cfg.results}; backend={cfg.backend} workers={cfg.workers} "
              f"threads/worker={cfg.threads_per_worker}")
        _say_where_rows_are(cfg, done, n, plan_tasks)
        for e in cfg.experiments:
            what = f"instances={e.instances}" if e.kind == "vnncomp" else \
                f"network={e.network} eps={list(e.eps)} count={e.count}"
            print(f"  {e.name}: {what} analyses={list(e.analyses)} timeout={e.timeout}")
        for sp in cfg.analysis_specs:
            print(f"  [analysis.{sp.name}] base={sp.base} timeout={sp.timeout} options={sp.kwargs}")
    if args.dry_run:
        return 0
    if args.retry_errors or args.rerun:
        dropped = store.drop({k for t in tasks for k in t.keys()})
        if dropped and not args.quiet:
            print(f"replacing {dropped} row(s) of {cfg.results}")
    with store:
        summary = run_tasks(tasks, store, workers=cfg.workers, threads_per_worker=cfg.threads_per_worker,
                            backend=cfg.backend, address=cfg.address, progress=not args.quiet, desc=cfg.name)
    if not args.quiet:
        print(f"wrote {summary.instances} row(s) to {cfg.results} in {summary.wall_seconds:.1f} s wall "
              f"({', '.join(f'{k} {v}' for k, v in sorted(summary.counts.items())) or 'nothing to do'})")
    draw = cfg.report is not None and not args.no_report and not summary.interrupted
    if (draw or not args.quiet) and cfg.results.exists():
        names = {e.name for e in cfg.experiments}
        rows = [r for r in read_rows(cfg.results) if r["benchmark"] in names]
        if rows and not args.quiet:
            print(format_report(rows))
        if rows and draw:
            write_report(rows, cfg.report)
    return 130 if summary.interrupted else 0


def _say_where_rows_are(cfg, done: set, to_run: int, plan_tasks) -> None:
    """Tell the user when rows exist already (committed ones above all) and how to run them again."""
    from absint.bench.store import read_rows
    from absint.bench.tasks import total_instances
    from absint.provenance import is_committed

    if done:
        total = total_instances(plan_tasks(cfg, set()))
        skipped = total - to_run
        if skipped:
            where = "committed in a git checkout" if is_committed(cfg.results) else "already there"
            head = "nothing to run: all" if to_run == 0 else f"{skipped} of"
            print(f"note: {head} {total} planned instance(s) have rows {where} ({cfg.results}); absint bench "
                  "skips them. Run them again with --rerun (their rows are replaced) or write to another file "
                  "with --out FILE.")
    if cfg.results.exists() and cfg.results.stat().st_size:
        legacy = sum(1 for r in read_rows(cfg.results) if not r["options_hash"])
        if legacy:
            print(f"note: {legacy} row(s) of {cfg.results} do not record the settings they ran with (written by an "
                  "older absint), so no instance is skipped because of them; new rows are appended and reports "
                  "read the newest row of each instance")
    ref = cfg.reference
    if ref is not None and ref.exists() and ref.resolve() != cfg.results.resolve():
        try:
            rows = len(read_rows(ref))
        except Exception:  # noqa: BLE001 - only a note
            rows = 0
        print(f"note: results committed with this config: {ref} ({rows} rows); this run writes to {cfg.results}")


# --------------------------------------------------------------------------------------- vnncomp
def _add_vnncomp(p: argparse.ArgumentParser) -> None:
    p.add_argument("onnx", type=Path, help="network (.onnx)")
    p.add_argument("vnnlib", type=Path, help="property (.vnnlib)")
    p.add_argument("--timeout", type=argtypes.seconds, required=True, help="time limit in seconds (loading included)")
    p.add_argument("--out", "-o", type=argtypes.output_file, required=True, help="results file to write")
    p.add_argument("--analysis", "-a", default="deeppoly", help="analysis name (see `absint list`)")
    p.add_argument("--format", choices=("2021", "2022"), default="2022",
                   help="2022: sat/unsat + counterexample in the file (default); 2021: holds/violated")
    p.add_argument("--no-attack", action="store_true", help="skip the PGD attack")
    p.add_argument("--attack-budget", type=argtypes.nonneg_seconds, default=None,
                   help="extra PGD seconds after an inconclusive analysis (default: verify()'s)")
    p.add_argument("--category", default=None, help="benchmark category (accepted for run_instance.sh; unused)")
    p.add_argument("--verbose", "-v", action="count", default=0)


def _run_vnncomp(args: argparse.Namespace) -> int:
    from absint.bench.vnncomp import run_instance

    word, result, seconds = run_instance(args.onnx, args.vnnlib, args.out, timeout=args.timeout,
                                         analysis=args.analysis, fmt=args.format, attack=not args.no_attack,
                                         attack_budget=args.attack_budget, hard_exit=True)
    why = f" ({result.reason})" if result is not None and result.reason else ""
    print(f"{word}{why} in {seconds:.2f} s -> {args.out}")
    return 1 if word == "error" else 0


# ----------------------------------------------------------------------------------------- score
def _add_score(p: argparse.ArgumentParser) -> None:
    p.add_argument("files", type=argtypes.existing_file, nargs="+", metavar="FILE",
                   help="results file(s) from `absint bench`, then (without --truth) one truth.csv")
    p.add_argument("--truth", "-t", type=argtypes.existing_file, nargs="+", action="extend", default=None,
                   help="truth.csv file(s) (onnx, vnnlib, ..., verdict); several are merged, and an instance "
                        "they decide differently counts as 'conflict'")
    p.add_argument("--benchmark", default=None, help="only rows of this experiment name")
    p.add_argument("--json", type=argtypes.output_file, default=None, help="also write the scores as JSON here")
    p.add_argument("--verbose", "-v", action="count", default=0)


def _run_score(args: argparse.Namespace) -> int:
    from absint.bench.score import format_score, read_truths, score
    from absint.bench.store import read_many

    results, truths = list(args.files), list(args.truth or [])
    if not truths:
        if len(results) < 2:
            raise UsageError("absint score: error: give results file(s) and a truth file (last, or with --truth)")
        truths = [results.pop()]
    report = score(read_many(results), read_truths(truths), benchmark=args.benchmark)
    text = format_score(report)
    print(text)
    if report.wrong:
        print(text[text.index("!" * 78):], file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps({"scores": [s.as_dict() for s in report.scores.values()],
                                         "wrong": [vars(w) for w in report.wrong],
                                         "unmatched": report.unmatched, "truth": report.truth_counts}, indent=1))
    if not report.scores:
        print("absint score: no result row matched the truth table", file=sys.stderr)
        return 2
    return 1 if report.wrong else 0


# ---------------------------------------------------------------------------------------- report
def _add_report(p: argparse.ArgumentParser) -> None:
    p.add_argument("results", type=argtypes.existing_file, nargs="+", help="results file(s) from `absint bench`")
    p.add_argument("--out", "-o", type=argtypes.output_file, default=None, help="folder for report.md and the figures")
    p.add_argument("--pair", nargs=2, metavar=("A", "B"), default=None,
                   help="analyses for the margin scatter (default: the cheapest vs the most precise one run on common instances)")
    p.add_argument("--format", nargs="+", choices=("png", "svg", "pdf"), default=["png"], help="figure formats")
    p.add_argument("--benchmark", nargs="+", default=None, help="only these experiment names")
    p.add_argument("--verbose", "-v", action="count", default=0)


def _run_report(args: argparse.Namespace) -> int:
    from absint.bench.report import format_report
    from absint.bench.store import read_many

    rows = read_many(args.results)
    if args.benchmark:
        rows = [r for r in rows if r["benchmark"] in set(args.benchmark)]
    if not rows:
        print("absint report: no rows", file=sys.stderr)
        return 2
    print(format_report(rows))
    if args.out is not None:
        write_report(rows, args.out, pair=tuple(args.pair) if args.pair else None, formats=args.format)
    return 0


def write_report(rows: list[dict], out: Path, *, pair: tuple[str, str] | None = None,
                 formats: list[str] | tuple[str, ...] = ("png",)) -> None:
    """``out/report.md`` (the comparison table) and the figures of :func:`absint.bench.plots.draw_all`."""
    from absint.bench.plots import draw_all
    from absint.bench.report import format_report

    out.mkdir(parents=True, exist_ok=True)
    text = format_report(rows)
    figs = draw_all(rows, out, pair=pair, formats=list(formats))
    md = text + "\n## Figures\n\n" + "\n".join(f"![{f.stem}]({f.name})" for f in figs if f.suffix != ".pdf") + "\n"
    (out / "report.md").write_text(md)
    print("figures:\n" + "\n".join(f"  {f}" for f in figs))
    print(f"report: {out / 'report.md'}")


SUBCOMMANDS["bench"] = ("run an experiment matrix (analyses x networks x eps, or VNN-COMP lists)", _add_bench,
                        _run_bench)
SUBCOMMANDS["vnncomp"] = ("VNN-COMP single-instance runner (writes the competition result file)", _add_vnncomp,
                          _run_vnncomp)
SUBCOMMANDS["score"] = ("score results against a VNN-COMP truth.csv (wrong answers are loud)", _add_score, _run_score)
SUBCOMMANDS["report"] = ("comparison tables and plots from results files", _add_report, _run_report)
