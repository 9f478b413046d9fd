"""Start-up cost and the batched decision path, in one command.

    python3 benchmarks/startup_and_decision.py [--repeat 3] [--out results.json]

Start-up (each in a fresh interpreter, best of ``--repeat``, CPU = user + sys of the child):
``import absint`` beyond torch, ``absint --help``, ``absint list``, ``absint list --check``.
Decision path: ``verify_robustness`` on the first 200 images of the bundled digits test split
(batch 32, one torch thread), CPU and wall time and the verdict counts. Prints ``uptime`` first;
compare numbers from one run only.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _child_cpu(args: list[str]) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of one child process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   env=dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])))
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime, wall


def startup(repeat: int) -> dict[str, dict[str, float]]:
    py = sys.executable
    cases = {
        "python (baseline)": [py, "-c", "pass"],
        "import torch": [py, "-c", "import torch"],
        "import torch, absint": [py, "-c", "import torch, absint"],
        "absint --help": [py, "-m", "absint.cli", "--help"],
        "absint list": [py, "-m", "absint.cli", "list"],
        "absint list --check": [py, "-m", "absint.cli", "list", "--check"],
    }
    out = {}
    for name, args in cases.items():
        runs = [_child_cpu(args) for _ in range(repeat)]
        best = min(runs)
        out[name] = {"cpu_s": round(best[0], 3), "wall_s": round(best[1], 3)}
        print(f"{name:<24} cpu {best[0]:.3f} s  wall {best[1]:.3f} s", flush=True)
    return out


def decision(n: int) -> dict[str, dict]:
    import torch

    import absint

    torch.set_num_threads(1)
    out = {}
    for net_name, analysis in (("digits_mlp_2x64.onnx", "deeppoly"), ("digits_cnn.onnx", "deeppoly"),
                               ("digits_mlp_2x64.onnx", "box")):
        net = absint.load_network(absint.bundled(net_name))
        images, labels = absint.load_images(absint.bundled("digits_test.npz"), net.input_shape)
        absint.verify_robustness(net, images[:4], labels[:4], 0.02, analysis=analysis)  # warm-up
        c0, t0 = time.process_time(), time.perf_counter()
        res = absint.verify_robustness(net, images[:n], labels[:n], 0.02, analysis=analysis, batch_size=32)
        cpu, wall = time.process_time() - c0, time.perf_counter() - t0
        counts = {v: sum(str(r.verdict) == v for r in res) for v in ("verified", "falsified", "unknown")}
        key = f"{net_name} {analysis} eps=0.02 n={n}"
        out[key] = {"cpu_s": round(cpu, 3), "wall_s": round(wall, 3), **counts}
        print(f"{key:<44} cpu {cpu:.2f} s  wall {wall:.2f} s  {counts}", flush=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("-n", type=int, default=200, help="images for the decision-path runs")
    ap.add_argument("--out", type=Path, default=None, help="write the numbers as JSON here")
    args = ap.parse_args()
    up = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(f"uptime: {up}")
    result = {"uptime": up, "startup": startup(args.repeat), "decision": decision(args.n)}
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
