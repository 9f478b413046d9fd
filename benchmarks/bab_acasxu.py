"""Branch and bound (``absint.bab``) on a VNN-COMP benchmark, compared with truth.csv.

Writes one CSV row per instance as soon as it is decided (so a long run can be interrupted and
resumed with ``--resume``), then prints solved counts, wrong answers (must be 0) and our time next
to nnenum's and alpha-beta-CROWN's from truth.csv. Examples (the commands in
benchmarks/results/bab.md)::

    python benchmarks/bab_acasxu.py ../shared/bench/acasxu --nets 1_1,2_1,3_3,4_5,5_9 --props 1,2,3,4 \\
        --timeout 60 --csv benchmarks/results/bab_acasxu_subset.csv
    python benchmarks/bab_acasxu.py ../shared/bench/acasxu --csv benchmarks/results/bab_acasxu_full.csv --resume
    python benchmarks/bab_acasxu.py ../shared/bench/mnistfc --split relu --limit 5 --timeout 60 --csv ...
    python benchmarks/bab_acasxu.py ../shared/bench/mnistfc --split relu --bounding alpha-beta \
        --batch-size 64 --timeout 30 --csv ...
"""
from __future__ import annotations

import argparse
import csv
import logging
import re
import statistics
import time
from pathlib import Path

import torch

import absint
from absint.bab import BabOptions
from absint.verify import verify_bab

FIELDS = ["onnx", "vnnlib", "truth", "verdict", "seconds", "timeout", "nnenum", "abcrown", "bounded",
          "peak_queue", "proved_fraction", "reason"]


def _tool_time(row: dict, *tools: str) -> str:
    """Best (smallest) time of the tool (any of its column spellings) over the VNN-COMP years in
    truth.csv, where it decided the instance."""
    times = []
    for k, v in row.items():
        if k and any(t in k.lower() for t in tools) and v and ";" in v:
            res, sec = v.split(";", 1)
            if res in ("sat", "unsat", "holds", "violated"):
                try:
                    times.append(float(sec))
                except ValueError:
                    pass
    return f"{min(times):.2f}" if times else ""


def _selected(row: dict, nets: set[str] | None, props: set[str] | None) -> bool:
    m = re.search(r"run2a_(\d_\d)_", row["onnx"])
    p = re.search(r"prop_(\d+)", row["vnnlib"])
    if nets and (not m or m.group(1) not in nets):
        return False
    if props and (not p or p.group(1) not in props):
        return False
    return True


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("benchmark", type=Path)
    ap.add_argument("--nets", default=None, help="ACAS Xu nets like 1_1,2_1 (default: all)")
    ap.add_argument("--props", default=None, help="property numbers like 1,2,3 (default: all)")
    ap.add_argument("--timeout", type=float, default=None, help="override per-instance timeout (s)")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--domain", default=None)
    ap.add_argument("--split", default="auto")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--bounding", default="domain", help="domain | alpha-beta (ReLU splitting)")
    ap.add_argument("--beta-iters", type=int, default=20)
    ap.add_argument("--input-heuristic", default=None, help="smear | lookahead | width | smear_worst (default: BabOptions')")
    ap.add_argument("--csv", type=Path, required=True)
    ap.add_argument("--resume", action="store_true", help="skip instances already in --csv")
    ap.add_argument("--summary-only", action="store_true", help="only summarise an existing --csv")
    args = ap.parse_args(argv)
    if args.summary_only:
        summarize(list(csv.DictReader(open(args.csv))))
        return 0
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.WARNING)
    rows = list(csv.DictReader(open(args.benchmark / "truth.csv")))
    nets = set(args.nets.split(",")) if args.nets else None
    props = set(args.props.split(",")) if args.props else None
    rows = [r for r in rows if _selected(r, nets, props)][: args.limit]
    done: dict[tuple[str, str], dict] = {}
    if args.resume and args.csv.exists():
        done = {(r["onnx"], r["vnnlib"]): r for r in csv.DictReader(open(args.csv))}
    new_file = not (args.resume and args.csv.exists())
    args.csv.parent.mkdir(parents=True, exist_ok=True)
    extra = {} if args.input_heuristic is None else {"input_heuristic": args.input_heuristic}
    opts = BabOptions(**extra, domain=args.domain, split=args.split, batch_size=args.batch_size, workers=args.workers,
                      bounding=args.bounding, beta_iters=args.beta_iters)
    nets_cache: dict[str, absint.Graph] = {}
    with open(args.csv, "w" if new_file else "a", newline="") as f:
        w = csv.DictWriter(f, FIELDS)
        if new_file:
            w.writeheader()
        for row in rows:
            key = (row["onnx"], row["vnnlib"])
            if key in done:
                continue
            net = nets_cache.setdefault(row["onnx"], absint.load_network(args.benchmark / row["onnx"]))
            timeout = args.timeout if args.timeout is not None else float(row["timeout"])
            t0 = time.perf_counter()
            r = verify_bab(net, args.benchmark / row["vnnlib"], timeout=timeout, options=opts)
            det = r.details or {}
            out = {"onnx": row["onnx"], "vnnlib": row["vnnlib"], "truth": row["verdict"], "verdict": str(r.verdict),
                   "seconds": f"{time.perf_counter() - t0:.2f}", "timeout": f"{timeout:g}",
                   "nnenum": _tool_time(row, "nnenum"), "abcrown": _tool_time(row, "a-b-crown", "alpha_beta_crown"), "bounded": det.get("bounded", ""),
                   "peak_queue": det.get("peak_queue", ""), "proved_fraction": det.get("proved_fraction", ""),
                   "reason": r.reason}
            w.writerow(out)
            f.flush()
            done[key] = out
            print(f"{row['onnx']} {row['vnnlib']} truth={row['verdict']} -> {r.verdict} {out['seconds']}s "
                  f"(nnenum {out['nnenum']}, abcrown {out['abcrown']}) {r.reason}", flush=True)
    summarize([done[(r["onnx"], r["vnnlib"])] for r in rows if (r["onnx"], r["vnnlib"]) in done])
    return 0


def summarize(res: list[dict]) -> None:
    wrong = [r for r in res if (r["truth"] == "sat" and r["verdict"] == "verified")
             or (r["truth"] == "unsat" and r["verdict"] == "falsified")]
    solved = [r for r in res if r["verdict"] in ("verified", "falsified")]
    print(f"instances={len(res)} solved={len(solved)} (verified={sum(r['verdict'] == 'verified' for r in res)}, "
          f"falsified={sum(r['verdict'] == 'falsified' for r in res)}) unknown={len(res) - len(solved)} "
          f"wrong={len(wrong)}")
    for r in wrong:
        print("  WRONG:", r["onnx"], r["vnnlib"], r["truth"], r["verdict"])
    props = sorted({re.search(r"prop_[\w.]+?(?=\.vnnlib)", r["vnnlib"]).group(0) for r in res},
                   key=lambda p: [int(x) if x.isdigit() else x for x in re.split(r"[_.]", p)])
    print("  | property | n | verified | falsified | unknown | ours median s | nnenum median s | abcrown median s |")
    print("  |---|---|---|---|---|---|---|---|")
    for p in props:
        sub = [r for r in res if re.search(rf"{re.escape(p)}\.vnnlib", r["vnnlib"])]
        med = lambda key, rs: f"{statistics.median([float(r[key]) for r in rs if r[key]]):.2f}" if any(r[key] for r in rs) else "-"
        sol = [r for r in sub if r["verdict"] in ("verified", "falsified")]
        print(f"  | {p} | {len(sub)} | {sum(r['verdict'] == 'verified' for r in sub)} | "
              f"{sum(r['verdict'] == 'falsified' for r in sub)} | {len(sub) - len(sol)} | "
              f"{med('seconds', sol) if sol else '-'} | {med('nnenum', sub)} | {med('abcrown', sub)} |")
    if solved:
        ours = [float(r["seconds"]) for r in solved]
        print(f"  ours on solved: median {statistics.median(ours):.2f}s, total {sum(ours):.1f}s")
        for tool in ("nnenum", "abcrown"):
            t = [float(r[tool]) for r in solved if r[tool]]
            if t:
                print(f"  {tool} on the same instances: median {statistics.median(t):.2f}s, total {sum(t):.1f}s")


if __name__ == "__main__":
    raise SystemExit(main())
