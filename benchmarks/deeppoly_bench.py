"""DeepPoly precision and speed on the ERAN MNIST networks (../shared/bench/eran).

For each of the first ``--n`` test images that the network classifies correctly, the L∞ ball of
radius ``--eps`` (clipped to [0, 1]) is analysed with DeepPoly and the robustness margins
``y_true − y_j`` are bounded by back-substituting the margin rows themselves; an image is
certified when every margin has a positive lower bound.

Timing: one image per analysis (propagate + final property check), wall clock per image, the
median over images of the best of ``--repeat`` runs (other processes share the machine; the best
of a few repeats filters their interference). Throughput: ``--batch`` images per analysis.

    python benchmarks/deeppoly_bench.py --net mnist_relu_6_100 --eps 0.026 --n 1000
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import statistics
import time
from pathlib import Path

import numpy as np
import torch

import absint  # noqa: F401  (imports absint before domains)
from absint.frontends.onnx_loader import load_onnx
from absint.interpreter import propagate
from absint.domains.deeppoly import DeepPolyDomain, DeepPolyOptions

log = logging.getLogger("deeppoly_bench")
ROOT = Path(__file__).resolve().parents[1]
ERAN = (ROOT / ".." / "shared" / "bench" / "eran").resolve()


def margin_rows(labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    """``C`` ``[B, n_classes−1, n_classes]`` with rows ``e_true − e_j`` for every ``j ≠ true``."""
    b = labels.shape[0]
    C = torch.zeros(b, n_classes - 1, n_classes, dtype=torch.float64)
    for i, t in enumerate(labels.tolist()):
        others = [j for j in range(n_classes) if j != t]
        C[i, :, t] = 1.0
        C[i, torch.arange(n_classes - 1), others] = -1.0
    return C


def analyse(graph, dom: DeepPolyDomain, lo: torch.Tensor, hi: torch.Tensor, C: torch.Tensor) -> torch.Tensor:
    """One DeepPoly analysis of the boxes ``[lo, hi]``: lower bounds of the margins ``[B, m]``."""
    prop = propagate(graph, dom, lo, hi)
    return dom.linear_bounds(prop.output, C)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--net", default="mnist_relu_6_100", help="ONNX path or a name in ../shared/bench/eran")
    ap.add_argument("--eps", type=float, default=0.026)
    ap.add_argument("--n", type=int, default=1000, help="first n test images")
    ap.add_argument("--data", default=str(ERAN / "mnist_test_1000.npz"))
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--repeat", type=int, default=3, help="timing runs per image (best is kept)")
    ap.add_argument("--time-n", type=int, default=None, help="time only the first k correct images")
    ap.add_argument("--batch", type=int, default=100, help="images per analysis for throughput (0: skip)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--relu-lower", default="area", choices=["area", "zero", "one", "parallel"])
    ap.add_argument("--no-early-stop", action="store_true")
    ap.add_argument("--keep-best", action="store_true")
    ap.add_argument("--json", default=None, help="write the results here as JSON")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)

    path = Path(args.net) if args.net.endswith(".onnx") else ERAN / f"{args.net}.onnx"
    device = torch.device(args.device)
    graph = load_onnx(str(path)).to(device, torch.float64)
    with np.load(args.data) as data:
        images = torch.as_tensor(data["images"][: args.n], dtype=torch.float64, device=device)
        labels = torch.as_tensor(data["labels"][: args.n], device=device)
    n_classes = int(np.prod(graph.output_shape))
    pred = graph(images).argmax(1)
    correct = (pred == labels).nonzero().squeeze(1).tolist()
    opts = DeepPolyOptions(relu_lower=args.relu_lower, early_stop=not args.no_early_stop, keep_best=args.keep_best)
    dom = DeepPolyDomain(opts, device=device)
    C_all = margin_rows(labels.cpu(), n_classes).to(device)
    lo_all = (images - args.eps).clamp(0, 1)
    hi_all = (images + args.eps).clamp(0, 1)
    rss0 = peak_rss_mb()

    # warm-up (first calls allocate and load kernels)
    for i in correct[:3]:
        analyse(graph, dom, lo_all[i:i + 1], hi_all[i:i + 1], C_all[i:i + 1])

    # precision + per-image timing, one image per analysis
    certified: list[int] = []
    times: list[float] = []
    cpu_times: list[float] = []
    # CPU time of the analysing thread(s): robust to other processes sharing the cores
    cpu_clock = time.thread_time if torch.get_num_threads() == 1 else time.process_time
    timed = correct if args.time_n is None else correct[: args.time_n]
    timed_set = set(timed)
    for i in correct:
        best = best_cpu = float("inf")
        reps = args.repeat if i in timed_set else 1
        for _ in range(reps):
            t0, c0 = time.perf_counter(), cpu_clock()
            lb = analyse(graph, dom, lo_all[i:i + 1], hi_all[i:i + 1], C_all[i:i + 1])
            ok = bool((lb > 0).all())
            if device.type == "cuda":
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - t0)
            best_cpu = min(best_cpu, cpu_clock() - c0)
        if i in timed_set:
            times.append(best)
            cpu_times.append(best_cpu)
        if ok:
            certified.append(i)
    rss_single = peak_rss_mb()

    # batched throughput
    thr = thr_cpu = None
    if args.batch:
        idx = torch.tensor(correct, device=device)
        t0, c0 = time.perf_counter(), cpu_clock()
        n_cert_batched = 0
        for s in range(0, len(correct), args.batch):
            j = idx[s:s + args.batch]
            lb = analyse(graph, dom, lo_all[j], hi_all[j], C_all[j])
            n_cert_batched += int((lb > 0).all(1).sum())
        if device.type == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - t0
        thr = len(correct) / elapsed
        thr_cpu = len(correct) / (cpu_clock() - c0)
        if n_cert_batched != len(certified):
            log.warning("batched run certified %d, single runs %d", n_cert_batched, len(certified))
    result = {
        "net": path.stem, "eps": args.eps, "n": args.n, "correct": len(correct), "certified": len(certified),
        "median_ms": 1e3 * statistics.median(times), "mean_ms": 1e3 * statistics.fmean(times),
        "p90_ms": 1e3 * float(np.percentile(times, 90)), "timed_images": len(times),
        "median_cpu_ms": 1e3 * statistics.median(cpu_times),
        "batch": args.batch, "images_per_s": thr, "images_per_cpu_s": thr_cpu, "threads": torch.get_num_threads(),
        "peak_rss_mb_single": rss_single, "peak_rss_mb_batched": peak_rss_mb(), "rss_mb_after_load": rss0,
        "loadavg": os.getloadavg(), "device": str(device),
    }
    log.info("%s eps=%g: certified %d / %d correctly classified (first %d images)",
             result["net"], args.eps, result["certified"], result["correct"], args.n)
    log.info("  one image per analysis: median %.2f ms, mean %.2f ms, p90 %.2f ms wall; median %.2f ms CPU "
             "(%d images, best of %d)", result["median_ms"], result["mean_ms"], result["p90_ms"],
             result["median_cpu_ms"], len(times), args.repeat)
    if thr is not None:
        log.info("  batched (%d per analysis): %.1f images/s wall, %.1f images per CPU second",
                 args.batch, thr, thr_cpu)
    log.info("  peak RSS: %.0f MB after load, %.0f MB single, %.0f MB batched; threads %d; load %s",
             rss0, rss_single, result["peak_rss_mb_batched"], result["threads"],
             " ".join(f"{x:.1f}" for x in result["loadavg"]))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
