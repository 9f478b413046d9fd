"""Optimised sigmoid/tanh tangent points (α-CROWN's S-shaped case) on VNN-COMP-style S-shaped MLPs.

The 64-100-100-100-10 digits MLP of :mod:`refine_dag_nets` (seeded, trained here; no download), or
(``--data mnist``) a 784-100x5-10 MLP of ERAN's 6x100 shape trained here on half of the shared MNIST
test images, with sigmoid or tanh activations; the first ``--n`` correctly classified test images at ``--eps``;
``deeppoly`` and ``alphapoly`` through ``absint.verify`` without attack (certification only). Prints
certified counts and the median CPU seconds per instance (``time.process_time``). Run it once with
``PYTHONPATH`` on the tree to measure; old and new trees are compared side by side:

    PYTHONPATH=/tmp/old nice -n 10 python benchmarks/salpha_bench.py --act sigmoid tanh --n 30
    PYTHONPATH=$PWD   nice -n 10 python benchmarks/salpha_bench.py --act sigmoid tanh --n 30
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def s_mlp(act: str, seed: int = 0):
    """The digits MLP of ``refine_dag_nets.sigmoid_mlp`` with ``act`` (sigmoid or tanh) activations."""
    from sklearn.datasets import load_digits

    from absint.frontends.torch_loader import load_torch

    test = np.load(ROOT / "networks" / "digits_test.npz")
    x, y = load_digits(return_X_y=True)
    keep = np.setdiff1d(np.arange(len(y)), test["indices"])
    xt = torch.as_tensor(x[keep] / 16.0, dtype=torch.float32)
    yt = torch.as_tensor(y[keep])
    torch.manual_seed(seed)
    layers: list[torch.nn.Module] = [torch.nn.Flatten()]
    for a, b in ((64, 100), (100, 100), (100, 100)):
        layers += [torch.nn.Linear(a, b), torch.nn.Sigmoid() if act == "sigmoid" else torch.nn.Tanh()]
    net = torch.nn.Sequential(*layers, torch.nn.Linear(100, 10))
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(300):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(xt), yt).backward()
        opt.step()
    return load_torch(net, (1, 8, 8))


def mnist_mlp(act: str, seed: int = 0):
    """A 784-100x5-10 MLP (ERAN's 6x100 shape) with ``act`` activations, trained here (seeded) on MNIST
    test images 500..999 of ``../shared/bench/eran/mnist_test_1000.npz``; instances come from 0..499."""
    from absint.frontends.torch_loader import load_torch

    data = np.load(ROOT.parent / "shared" / "bench" / "eran" / "mnist_test_1000.npz")
    xt = torch.as_tensor(data["images"][500:], dtype=torch.float32)
    yt = torch.as_tensor(data["labels"][500:])
    torch.manual_seed(seed)
    layers: list[torch.nn.Module] = [torch.nn.Flatten()]
    for a, b in [(784, 100)] + [(100, 100)] * 4:
        layers += [torch.nn.Linear(a, b), torch.nn.Sigmoid() if act == "sigmoid" else torch.nn.Tanh()]
    net = torch.nn.Sequential(*layers, torch.nn.Linear(100, 10))
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    for _ in range(300):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(xt), yt).backward()
        opt.step()
    return load_torch(net, (1, 28, 28))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--act", nargs="+", default=["sigmoid", "tanh"])
    ap.add_argument("--data", choices=["digits", "mnist"], default="digits",
                    help="digits: the 64-100x3-10 MLP; mnist: a 784-100x5-10 MLP (ERAN 6x100 shape)")
    ap.add_argument("--analyses", nargs="+", default=["deeppoly", "alphapoly"])
    ap.add_argument("--n", type=int, default=30)
    ap.add_argument("--eps", type=float, nargs="+", default=[0.04, 0.01], help="one per activation")
    ap.add_argument("--timeout", type=float, default=60.0)
    ap.add_argument("--out", type=Path, default=None, help="per-instance JSON lines")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    import absint
    from absint.specs import linf_ball, robustness_property

    if args.data == "mnist":
        data = np.load(ROOT.parent / "shared" / "bench" / "eran" / "mnist_test_1000.npz")
        images, labels = data["images"][:500].astype(np.float64), data["labels"][:500]
    else:
        data = np.load(ROOT / "networks" / "digits_test.npz")
        images, labels = data["images"].astype(np.float64), data["labels"]
    print("absint from", Path(absint.__file__).resolve().parents[1], "|", os.popen("uptime").read().strip(), flush=True)
    records = []
    for act, eps in zip(args.act, args.eps + args.eps[-1:] * len(args.act)):
        graph = mnist_mlp(act) if args.data == "mnist" else s_mlp(act)
        with torch.no_grad():
            pred = graph.forward(torch.as_tensor(images)).reshape(len(images), -1).argmax(1).numpy()
        idx = np.flatnonzero(pred == labels)[: args.n]
        for analysis in args.analyses:
            an = absint.get_analysis(analysis)
            cpu, verdicts = [], []
            for i in idx:
                inst = (linf_ball(images[i], eps, (0.0, 1.0)), robustness_property(int(labels[i]), 10))
                c0 = time.process_time()
                r = absint.verify(graph, inst, analysis=an, timeout=args.timeout, attack=False)
                cpu.append(time.process_time() - c0)
                verdicts.append(r.verdict.value)
                records.append({"act": act, "eps": eps, "analysis": analysis, "image": int(i),
                                "verdict": r.verdict.value, "cpu_s": round(cpu[-1], 4)})
            print(f"| {args.data} | {act} | {eps} | {analysis} | {len(idx)} | {verdicts.count('verified')} | "
                  f"{statistics.median(cpu):.3f} | {sum(cpu):.1f} |", flush=True)
    print("uptime after:", os.popen("uptime").read().strip())
    if args.out is not None:
        args.out.write_text("".join(json.dumps(r) + "\n" for r in records))
    return 0


if __name__ == "__main__":
    sys.exit(main())
