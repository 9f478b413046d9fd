"""Re-attack every image a ``refine_bench.py`` run (CSV) or an ``absint bench`` run (JSON Lines: any
analysis, rows of this network) verified, with a strong PGD (soundness cross-check).

    python benchmarks/pgd_recheck.py mnist_convsmall 0.12 benchmarks/results/refine_convsmall_partialmilp.csv
    python benchmarks/pgd_recheck.py mnist_relu_6_100 0.026 benchmarks/results/compare_all.jsonl

Prints each contradiction (an image verified by the run but broken by PGD: a soundness bug) and
the count; it should be 0.
"""
from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np
import torch

import absint
from absint.attack import AttackOptions, pgd_attack
from absint.specs import linf_ball, robustness_property

BENCH = (Path(__file__).resolve().parents[1] / ".." / "shared" / "bench" / "eran").resolve()
#: The re-attack: much stronger than the attack inside ``verify`` (200 steps, 20 restarts, fixed seed).
RECHECK_ATTACK = AttackOptions(steps=200, restarts=20, seed=1)


def broken_by_pgd(graph: absint.Graph, image: np.ndarray, label: int, eps: float) -> bool:
    """True if PGD finds an input in the L∞ ball (clipped to [0, 1]) that is not classified ``label``."""
    n_out = int(np.prod(graph.output_shape))
    box = linf_ball(np.asarray(image, dtype=np.float64).reshape(graph.input_shape), eps, (0.0, 1.0))
    return pgd_attack(graph, box, robustness_property(int(label), n_out), RECHECK_ATTACK) is not None


def main(net: str, eps: float, path: str) -> int:
    torch.set_num_threads(1)
    g = absint.load_network(BENCH / f"{net}.onnx")
    data = np.load(BENCH / "mnist_test_1000.npz")
    X, Y = data["images"].astype(np.float64), data["labels"]
    if path.endswith(".jsonl"):
        from absint.bench.store import read_rows

        verified = sorted({int(r["input"]) for r in read_rows(path)
                           if r["network"] == f"{net}.onnx" and r["verdict"] == "verified"})
    else:
        with open(path) as fh:
            verified = [int(r["image"]) for r in csv.DictReader(fh) if r["verdict"] == "verified"]
    bad = 0
    for i in verified:
        if broken_by_pgd(g, X[i], int(Y[i]), eps):
            bad += 1
            print("CONTRADICTION: image", i)
    print(f"{net}: {len(verified)} verified images re-attacked, {bad} contradictions")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], float(sys.argv[2]), sys.argv[3]))
