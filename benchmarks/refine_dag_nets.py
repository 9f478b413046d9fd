"""LP/MILP refinement on networks beyond ReLU chains: a sigmoid MLP and a max-pooling CNN.

Issue 13: ``refinepoly``/``lp``/``milp`` stopped with an unsupported-op error on a VNN-COMP-style
sigmoid MLP where ``deeppoly`` verified 9 of 36 instances; a precise analysis must never answer
worse than the domain it starts from. This script checks that on two networks of the 8x8 digits
data (no download):

* ``sigmoid``: a 64-100-100-100-10 MLP with sigmoid activations, trained here (seeded, a few
  seconds; scikit-learn's digits without the bundled test split);
* ``cnn``: the bundled ``networks/digits_cnn.onnx`` (Conv, BatchNorm, ReLU, MaxPool, AvgPool).

For each network, the first ``--n`` correctly classified test images at ``--eps``: every analysis
(default deeppoly, lp, refinepoly, milp) through ``absint.verify`` with PGD, and the count of
verified / falsified / unknown, CPU (this process plus the solver worker's) and wall time, and the instances where an analysis answered
*worse* than deeppoly (must be 0 except for time-outs). Every falsified answer carries a
counterexample that ``verify`` re-checked on the network.

    nice -n 10 python benchmarks/refine_dag_nets.py --n 36 --timeout 30 --out benchmarks/results/refine_dag_nets.jsonl
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def sigmoid_mlp(seed: int = 0):
    """A 64-100-100-100-10 sigmoid MLP trained on the digits outside the bundled test split."""
    from sklearn.datasets import load_digits

    import absint
    from absint.frontends.torch_loader import load_torch

    test = np.load(ROOT / "networks" / "digits_test.npz")
    x, y = load_digits(return_X_y=True)
    keep = np.setdiff1d(np.arange(len(y)), test["indices"])
    xt = torch.as_tensor(x[keep] / 16.0, dtype=torch.float32)
    yt = torch.as_tensor(y[keep])
    torch.manual_seed(seed)
    layers = [torch.nn.Flatten()]
    for a, b in ((64, 100), (100, 100), (100, 100)):
        layers += [torch.nn.Linear(a, b), torch.nn.Sigmoid()]
    net = torch.nn.Sequential(*layers, torch.nn.Linear(100, 10))
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(300):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(xt), yt).backward()
        opt.step()
    _ = absint  # the loader registers what it needs
    return load_torch(net, (1, 8, 8))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nets", nargs="+", default=["sigmoid", "cnn"])
    ap.add_argument("--analyses", nargs="+", default=["deeppoly", "lp", "refinepoly", "milp"])
    ap.add_argument("--n", type=int, default=36)
    ap.add_argument("--eps", type=float, nargs="+", default=[0.04, 0.04], help="one per network")
    ap.add_argument("--timeout", type=float, default=30.0)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/refine_dag_nets.jsonl"))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    import absint
    from absint.specs import linf_ball, robustness_property

    data = np.load(ROOT / "networks" / "digits_test.npz")
    images, labels = data["images"].astype(np.float64), data["labels"]
    up0 = os.popen("uptime").read().strip()
    rows, summary = [], []
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for net_name, eps in zip(args.nets, args.eps + args.eps[-1:] * len(args.nets)):
        graph = sigmoid_mlp() if net_name == "sigmoid" else absint.load_network(ROOT / "networks" / "digits_cnn.onnx")
        with torch.no_grad():
            pred = graph.forward(torch.as_tensor(images)).reshape(len(images), -1).argmax(1).numpy()
        idx = np.flatnonzero(pred == labels)[: args.n]
        verdicts: dict[str, list[str]] = {}
        for analysis in args.analyses:
            an = absint.get_analysis(analysis)
            out, cpu0, t0, worker_cpu = [], time.process_time(), time.perf_counter(), 0.0
            for i in idx:
                inst = (linf_ball(images[i], eps, (0.0, 1.0)), robustness_property(int(labels[i]), 10))
                r = absint.verify(graph, inst, analysis=an, timeout=args.timeout, attack=True)
                out.append(r.verdict.value)
                worker_cpu += float((r.details or {}).get("solver_process_cpu_s", 0.0))
                rows.append({"network": net_name, "eps": eps, "analysis": analysis, "image": int(i),
                             "verdict": r.verdict.value, "seconds": round(r.seconds, 3), "reason": (r.reason or "")[:120]})
            verdicts[analysis] = out
            summary.append({"network": net_name, "eps": eps, "analysis": analysis, "instances": len(idx),
                            "verified": out.count("verified"), "falsified": out.count("falsified"),
                            "unknown": out.count("unknown"),
                            "cpu_s": round(time.process_time() - cpu0 + worker_cpu, 1),
                            "wall_s": round(time.perf_counter() - t0, 1)})
            print(summary[-1], flush=True)
        base = verdicts.get("deeppoly")
        for s in summary:
            if s["network"] == net_name and base is not None:
                mine = verdicts[s["analysis"]]
                s["worse_than_deeppoly"] = sum(b == "verified" and m != "verified" for b, m in zip(base, mine))
    with open(args.out, "w") as fh:
        for r in rows:
            fh.write(json.dumps(r) + "\n")
    up1 = os.popen("uptime").read().strip()
    lines = [f"uptime before: {up0}", f"uptime after: {up1}", "",
             "| network | eps | analysis | instances | verified | falsified | unknown | worse than deeppoly | CPU s | wall s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {s['network']} | {s['eps']} | {s['analysis']} | {s['instances']} | {s['verified']} | {s['falsified']} | "
              f"{s['unknown']} | {s.get('worse_than_deeppoly', '-')} | {s['cpu_s']} | {s['wall_s']} |" for s in summary]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if all(s.get("worse_than_deeppoly", 0) == 0 for s in summary) else 1


if __name__ == "__main__":
    sys.exit(main())
