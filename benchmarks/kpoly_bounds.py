"""What k-ReLU rows buy inside bound propagation, before any branch and bound (issue 14, item 3).

For each image and each setting of the rows (``k``, ``s``, ``sparse_n``, ``cutoff``, ``hull``,
``max_groups``; ``k=1``: slopes alone) this runs kpoly's ``multineuron`` schedule
(:class:`absint.domains.krelu.tighten.MultiNeuronBounds`: every layer re-bounded with optimised slopes
and hull-row multipliers, then the safety rows) and records the worst row's proved bound, the CPU
and wall seconds, the groups, rows and hull seconds, and the unstable neurons per layer before and
after. Settings are interleaved image by image so load changes hit them alike.

    nice -n 10 python benchmarks/kpoly_bounds.py --net mnist_relu_6_100 --eps 0.026 --images 36,49,67 \\
        --setting k=1 --setting k=3,sparse_n=10 --setting k=3,sparse_n=20 --out /tmp/kb.jsonl

Prints one line per run and a markdown table (per setting: mean bound gain over ``k=1``, proved
count, median CPU) at the end; ``--out`` appends JSON lines.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
ERAN = (ROOT / ".." / "shared" / "bench" / "eran").resolve()


def parse_setting(text: str) -> dict:
    out: dict = {}
    for item in filter(None, text.split(",")):
        k, _, v = item.partition("=")
        out[k] = v if k == "hull" else (float(v) if k == "cutoff" else int(v))
    return out


def run(graph, lower: np.ndarray, upper: np.ndarray, C: np.ndarray, d: np.ndarray, setting: dict, iters: int,
        final_iters: int) -> dict:
    from absint.domains.krelu import KReluOptions
    from absint.domains.krelu.tighten import MultiNeuronBounds, TightenOptions
    from absint.domains.linear_bounds import Engine, GraphView

    s = dict(setting)
    rows_from = int(s.pop("rows_from", 0))
    ko = KReluOptions(**s) if s.get("k", 1) > 1 else None
    c0, w0 = time.process_time(), time.perf_counter()
    eng = Engine()
    view = GraphView.of(graph, 1)
    eng.store(view.input, 2, torch.as_tensor(lower[None]).reshape(1, *graph.input_shape),
              torch.as_tensor(upper[None]).reshape(1, *graph.input_shape))
    mb = MultiNeuronBounds(view, eng, ko, TightenOptions(iters=iters, final_iters=final_iters, rows_from=rows_from))
    st = mb.run()
    rows = mb.bound_rows(view.output, torch.as_tensor(C), stop_above=None).numpy() + d
    return {"bound": float(rows.min()), "cpu_s": time.process_time() - c0, "wall_s": time.perf_counter() - w0,
            "groups": st.groups, "rows": st.rows, "hull_s": st.rows_s, "tighten_s": st.tighten_s,
            "unstable_before": st.unstable_before, "unstable_after": st.unstable_after}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--net", default="mnist_relu_6_100")
    ap.add_argument("--eps", type=float, default=0.026)
    ap.add_argument("--images", required=True, help="comma-separated image indices")
    ap.add_argument("--setting", action="append", default=[], help="k-ReLU options, e.g. k=3,sparse_n=10 (repeatable)")
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--final-iters", type=int, default=100)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    import absint
    from absint.specs import linf_ball, robustness_property

    g = absint.load_network(ERAN / f"{args.net}.onnx")
    data = np.load(ERAN / "mnist_test_1000.npz")
    settings = args.setting or ["k=1", "k=3,sparse_n=10"]
    results = []
    for n, i in enumerate(int(t) for t in args.images.split(",")):
        x, lab = data["images"][i].astype(np.float64), int(data["labels"][i])
        box = linf_ball(x.reshape(g.input_shape), args.eps)
        C, d, _ = robustness_property(lab, int(np.prod(g.output_shape))).stacked()
        order = settings[n % len(settings):] + settings[:n % len(settings)]
        for s in order:
            r = {"net": args.net, "eps": args.eps, "image": i, "setting": s,
                 **run(g, box.lower.reshape(-1), box.upper.reshape(-1), C, d, parse_setting(s), args.iters,
                       args.final_iters)}
            results.append(r)
            print(f"{args.net} img {i:4d} {s:28s} bound {r['bound']:8.3f} cpu {r['cpu_s']:6.1f}s wall {r['wall_s']:6.1f}s "
                  f"groups {r['groups']:5d} rows {r['rows']:6d} unstable {r['unstable_before']} -> {r['unstable_after']}",
                  flush=True)
            if args.out:
                with open(args.out, "a") as fh:
                    fh.write(json.dumps(r) + "\n")
    base = {r["image"]: r["bound"] for r in results if r["setting"] == "k=1"}
    print("\n| setting | images | proved (bound > 0) | mean gain over k=1 | median CPU s | median wall s |")
    print("|---|---|---|---|---|---|")
    for s in settings:
        rs = [r for r in results if r["setting"] == s]
        gain = [r["bound"] - base[r["image"]] for r in rs if r["image"] in base]
        print(f"| {s} | {len(rs)} | {sum(r['bound'] > 0 for r in rs)} | "
              f"{statistics.mean(gain) if gain else float('nan'):.2f} | {statistics.median(r['cpu_s'] for r in rs):.1f} | "
              f"{statistics.median(r['wall_s'] for r in rs):.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
