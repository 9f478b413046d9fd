"""DeepZ (zonotope) certification benchmark on the ERAN MNIST networks.

For the first ``--n`` images of ``mnist_test_1000.npz`` that the network classifies correctly,
certify the L∞ ball of radius ``--eps`` (clipped to [0, 1]): an image counts as certified when
every margin ``y_true − y_j`` has a positive lower bound (``linear_bounds`` on the output
zonotope). Reports the certified count, the median single-image time and the batched throughput.

Examples (from the repository root)::

    python benchmarks/zonotope_bench.py --net mnist_relu_6_100 --eps 0.026 --n 200
    python benchmarks/zonotope_bench.py --preset --n 1000          # the four standard configs
    python benchmarks/zonotope_bench.py --net mnist_convsmall --eps 0.12 --n 200 --no-box

Timings: ``--threads`` torch threads (default 1), medians over ``--repeats`` runs, reported as
wall-clock and as process CPU time (the latter is less disturbed by other jobs on a shared host).
"""
from __future__ import annotations

import argparse
import logging
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from absint.frontends.onnx_loader import load_onnx
from absint.interpreter import propagate
from absint.domains.base import default_device
from absint.domains.box import BoxDomain
from absint.domains.zonotope import ZonotopeDomain, ZonotopeOptions

log = logging.getLogger("zonotope_bench")

ROOT = Path(__file__).resolve().parents[1]
ERAN = (ROOT / ".." / "shared" / "bench" / "eran").resolve()
PRESETS = [("mnist_relu_6_100", 0.026), ("mnist_relu_6_200", 0.015), ("mnist_relu_9_100", 0.026),
           ("mnist_convsmall", 0.12)]


def margin_rows(labels: torch.Tensor, n_out: int, dtype=torch.float64) -> torch.Tensor:
    """``C`` ``[B, n_out − 1, n_out]``: rows ``e_true − e_j`` for every ``j ≠ true``."""
    b = labels.shape[0]
    C = torch.zeros(b, n_out - 1, n_out, dtype=dtype)
    for i, t in enumerate(labels.tolist()):
        others = [j for j in range(n_out) if j != t]
        C[i, range(n_out - 1), t] = 1.0
        C[i, range(n_out - 1), others] = -1.0
    return C


def certify(graph, domain, lo: torch.Tensor, hi: torch.Tensor, labels: torch.Tensor
            ) -> tuple[torch.Tensor, int]:
    """Per image: certified (bool) and the output element's generator count."""
    out = propagate(graph, domain, lo, hi).output
    C = margin_rows(labels, int(np.prod(graph.output_shape))).to(domain.device)
    lb = domain.linear_bounds(out, C)
    return (lb.min(1).values > 0).cpu(), int(getattr(out, "n_generators", 0))


def run(net: str, eps: float, n: int, batch: int, repeats: int, n_single: int, domain) -> dict:
    path = Path(net) if net.endswith(".onnx") else ERAN / f"{net}.onnx"
    graph = load_onnx(path).to(domain.device, domain.dtype)
    with np.load(ERAN / "mnist_test_1000.npz") as data:
        images = torch.tensor(data["images"][:n], dtype=domain.dtype, device=domain.device)
        labels = torch.tensor(data["labels"][:n])
    pred = graph.forward(images).argmax(1).cpu()
    ok = pred == labels
    x, y = images[ok.to(images.device)], labels[ok]
    lo, hi = (x - eps).clamp(0, 1), (x + eps).clamp(0, 1)
    m = int(ok.sum())

    # Batched: whole set in chunks of `batch`; median total (wall and process CPU) over repeats.
    totals, cpus, certified, gens = [], [], None, []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        flags = []
        for s in range(0, m, batch):
            f, k = certify(graph, domain, lo[s:s + batch], hi[s:s + batch], y[s:s + batch])
            flags.append(f)
            gens.append(k)
        totals.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
        certified = torch.cat(flags)
    # Single image: the first n_single images one by one; per image the median over repeats.
    per_image, per_image_cpu, single_flags = [], [], []
    for i in range(min(n_single, m)):
        ts, cs = [], []
        for _ in range(repeats):
            t0, c0 = time.perf_counter(), time.process_time()
            f, _ = certify(graph, domain, lo[i:i + 1], hi[i:i + 1], y[i:i + 1])
            ts.append(time.perf_counter() - t0)
            cs.append(time.process_time() - c0)
        per_image.append(statistics.median(ts))
        per_image_cpu.append(statistics.median(cs))
        single_flags.append(bool(f[0]))
    agree = single_flags == certified[: len(single_flags)].tolist()
    if not agree:
        log.warning("single-image and batched verdicts differ on %s", net)
    total, cpu = statistics.median(totals), statistics.median(cpus)
    nan = float("nan")
    return {
        "net": path.stem, "eps": eps, "n": n, "correct": m, "certified": int(certified.sum()),
        "single_s_median": statistics.median(per_image) if per_image else nan,
        "single_cpu_median": statistics.median(per_image_cpu) if per_image else nan,
        "n_single": len(per_image), "batch": batch, "batched_total_s": total,
        "throughput_img_s": m / total, "batched_s_per_img": total / m, "batched_cpu_per_img": cpu / m,
        "max_generators": max(gens), "single_agrees": agree,
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--net", default="mnist_relu_6_100", help="ERAN network name or .onnx path")
    p.add_argument("--eps", type=float, default=0.026)
    p.add_argument("--preset", action="store_true", help="run the four standard (net, eps) configs")
    p.add_argument("--n", type=int, default=200, help="first N test images")
    p.add_argument("--batch", type=int, default=32, help="images per batched call")
    p.add_argument("--single", type=int, default=30, help="images timed one by one")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default=None, help="cpu / cuda (default: CUDA when present)")
    p.add_argument("--domain", choices=["deepzono", "box"], default="deepzono")
    p.add_argument("--no-box", action="store_true", help="ZonotopeOptions(track_box=False)")
    p.add_argument("--no-fp", action="store_true", help="ZonotopeOptions(sound_fp=False)")
    p.add_argument("--max-generators", type=int, default=None)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device) if args.device else default_device()
    if args.domain == "box":
        domain = BoxDomain(device=device)
    else:
        opts = ZonotopeOptions(track_box=not args.no_box, sound_fp=not args.no_fp,
                               max_generators=args.max_generators)
        domain = ZonotopeDomain(opts, device=device)
    configs = PRESETS if args.preset else [(args.net, args.eps)]
    log.info("domain %r on %s, %d thread(s), repeats %d", domain, device, args.threads, args.repeats)
    log.info("| network | eps | images | correct | certified | single: wall s/img | single: CPU s/img "
             "| B=%d: wall s/img | B=%d: CPU s/img | B=%d: img/s (wall) | max gens |",
             args.batch, args.batch, args.batch)
    log.info("|---|---|---|---|---|---|---|---|---|---|---|")
    for net, eps in configs:
        r = run(net, eps, args.n, args.batch, args.repeats, args.single, domain)
        log.info("| %s | %g | %d | %d | %d | %.4f | %.4f | %.4f | %.4f | %.1f | %d |", r["net"], r["eps"], r["n"],
                 r["correct"], r["certified"], r["single_s_median"], r["single_cpu_median"],
                 r["batched_s_per_img"], r["batched_cpu_per_img"], r["throughput_img_s"], r["max_generators"])

if __name__ == "__main__":
    main()
