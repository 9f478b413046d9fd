"""Paired A/B of analysis options on a VNN-COMP benchmark, scored against its truth table.

Every instance of ``truth.csv`` (or every ``--shard I/N``-th) is run once per option set, the sets in
an order that rotates from instance to instance (so load drifts hit every set alike); one JSON line
per run (instance, options, verdict, CPU and wall seconds, reason). ``--summary`` prints, per option
set, the verdicts per truth verdict and network, the wrong answers (verified sat / falsified unsat:
soundness bugs, must be none), CPU totals, the median seconds of the verified instances, and the
instances on which the sets disagree. Example (benchmarks/RESULTS.md, "Multi-neuron root in bab")::

    for s in 0 1; do taskset -c $s python3 benchmarks/vnncomp_ab.py ../shared/bench/mnistfc --analysis bab \\
        --timeout 30 --opt root=alpha --opt root=multineuron --shard $s/2 --out ab_s$s.jsonl & done; wait
    python3 benchmarks/vnncomp_ab.py ../shared/bench/mnistfc --summary ab_s0.jsonl ab_s1.jsonl
"""
from __future__ import annotations

import argparse
import collections
import csv
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import git_revision, parse_options, uptime  # noqa: E402


def run(args: argparse.Namespace) -> None:
    import torch

    import absint

    torch.set_num_threads(1)
    sets = [parse_options(o.split(",")) for o in args.opt] or [{}]
    rows = list(csv.DictReader(open(args.benchmark / "truth.csv")))
    shard, n = (int(v) for v in args.shard.split("/"))
    print(f"# {uptime()} rev {git_revision()}", flush=True)
    with open(args.out, "a") as out:
        for i, row in enumerate(rows):
            if i % n != shard:
                continue
            k = (i // n) % len(sets)
            for opts in sets[k:] + sets[:k]:
                c0, w0 = time.process_time(), time.perf_counter()
                r = absint.verify(args.benchmark / row["onnx"], args.benchmark / row["vnnlib"], analysis=args.analysis,
                                  timeout=args.timeout, **opts)
                rec = {"onnx": row["onnx"], "vnnlib": row["vnnlib"], "analysis": args.analysis, "cfg": opts,
                       "verdict": str(r.verdict), "cpu_s": time.process_time() - c0,
                       "wall_s": time.perf_counter() - w0, "reason": r.reason[:300]}
                print(json.dumps(rec), flush=True)
                out.write(json.dumps(rec) + "\n")
                out.flush()
    print(f"# {uptime()}", flush=True)


def summary(benchmark: Path, files: list[Path]) -> None:
    truth = {(r["onnx"], r["vnnlib"]): r["verdict"] for r in csv.DictReader(open(benchmark / "truth.csv"))}
    by: dict[str, dict] = collections.defaultdict(dict)
    for f in files:
        for line in open(f):
            r = json.loads(line)
            by[json.dumps(r["cfg"], sort_keys=True)][(r["onnx"], r["vnnlib"])] = r
    nets = sorted({Path(k[0]).stem for rs in by.values() for k in rs})
    for cfg, rs in by.items():
        t = collections.Counter((truth[k], r["verdict"]) for k, r in rs.items())
        wrong = [k for k, r in rs.items() if (truth[k], r["verdict"]) in (("sat", "verified"), ("unsat", "falsified"))]
        ver = [r["wall_s"] for r in rs.values() if r["verdict"] == "verified"]
        print(f"{cfg}: {len(rs)} instances, CPU {sum(r['cpu_s'] for r in rs.values()):.0f} s; "
              f"unsat verified {t['unsat', 'verified']} of {sum(v for (a, _), v in t.items() if a == 'unsat')}, "
              f"sat falsified {t['sat', 'falsified']} of {sum(v for (a, _), v in t.items() if a == 'sat')}, "
              f"truth-unknown decided {t['unknown', 'verified'] + t['unknown', 'falsified']}; wrong {len(wrong)} {wrong}; "
              f"median wall of verified {statistics.median(ver) if ver else float('nan'):.2f} s")
        for net in nets:
            c = collections.Counter((truth[k], r["verdict"]) for k, r in rs.items() if Path(k[0]).stem == net)
            print(f"    {net}: unsat verified {c['unsat', 'verified']}, sat falsified {c['sat', 'falsified']}")
    cfgs = list(by)
    for k in sorted(set.intersection(*(set(v) for v in by.values())) if by else ()):
        verdicts = [by[c][k]["verdict"] for c in cfgs]
        if len(set(verdicts)) > 1:
            print("differ:", Path(k[0]).stem, Path(k[1]).stem,
                  ", ".join(f"{c} {by[c][k]['verdict']} {by[c][k]['wall_s']:.1f} s" for c in cfgs))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("benchmark", type=Path, help="folder with truth.csv (e.g. ../shared/bench/mnistfc)")
    ap.add_argument("--analysis", default="bab")
    ap.add_argument("--timeout", type=float, default=30.0)
    ap.add_argument("--opt", action="append", default=[],
                    help="one option set, key=value[,key=value...] (repeat for each set of the A/B)")
    ap.add_argument("--shard", default="0/1", help="I/N: every N-th instance from the I-th")
    ap.add_argument("--out", type=Path, help="JSON lines, appended")
    ap.add_argument("--summary", type=Path, nargs="+", help="score these result files instead of running")
    args = ap.parse_args(argv)
    if args.summary:
        summary(args.benchmark, args.summary)
    elif args.out is None:
        ap.error("--out is required to run")
    else:
        run(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
