"""Reading big VNN-LIB files: CPU and wall seconds of absint.vnnlib on generated 1.0 and 2.0 queries.

    python benchmarks/vnnlib_parse.py [--clauses 100000] [--depth 5000] [--out benchmarks/results/vnnlib_parse.json]

Cases: an ``(or ...)`` of N two-atom clauses over ACAS-sized X/Y (1.0 and 2.0), and a D-deep nested
``(or ...)`` (1.0 and 2.0). Each case is read (``read_query``) and lowered to a spec
(``parse_vnnlib``: read + lower); the time of each is the best of ``--repeat`` runs. With
``--acas ONNX`` it also runs ``absint vnncomp ONNX wide-1.0 --timeout 10`` end to end (the
issue-16 case) and reports its wall time and answer. Prints a table and writes JSON with the load.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def wide(n: int, v2: bool) -> str:
    if v2:
        head = ("(vnnlib-version <2.0>)\n(declare-network N (declare-input X real [1,5]) "
                "(declare-output Y real [1,5]))\n")
        head += "".join(f"(assert (>= X[0,{i}] -0.05))\n(assert (<= X[0,{i}] 0.05))\n" for i in range(5))
        body = " ".join(f"(and (>= Y[0,{i % 5}] {100 + i * 1e-3:.6f}) (<= Y[0,{(i + 1) % 5}] -100.0))"
                        for i in range(n))
    else:
        head = "".join(f"(declare-const X_{i} Real)\n" for i in range(5)) + \
            "".join(f"(declare-const Y_{i} Real)\n" for i in range(5))
        head += "".join(f"(assert (>= X_{i} -0.05))\n(assert (<= X_{i} 0.05))\n" for i in range(5))
        body = " ".join(f"(and (>= Y_{i % 5} {100 + i * 1e-3:.6f}) (<= Y_{(i + 1) % 5} -100.0))" for i in range(n))
    return head + f"(assert (or {body}))\n"


def deep(d: int, v2: bool) -> str:
    if v2:
        head = ("(vnnlib-version <2.0>)\n(declare-network N (declare-input X real [2]) (declare-output Y real [2]))\n"
                "(assert (and (<= X[0] 1.0) (>= X[0] 0.0) (<= X[1] 1.0) (>= X[1] 0.0)))\n")
        f = "(>= Y[0] 0.0)"
        for i in range(d):
            f = f"(or (<= Y[1] {i}.0) {f})"
    else:
        head = ("(declare-const X_0 Real)\n(declare-const X_1 Real)\n(declare-const Y_0 Real)\n(declare-const Y_1 Real)\n"
                "(assert (<= X_0 1))(assert (>= X_0 0))(assert (<= X_1 1))(assert (>= X_1 0))\n")
        f = "(>= Y_0 0)"
        for i in range(d):
            f = f"(or (<= Y_1 {i}) {f})"
    return head + f"(assert {f})\n"


def timed(fn, repeat: int) -> tuple[float, float]:
    best = (float("inf"), float("inf"))
    for _ in range(repeat):
        c, w = time.process_time(), time.perf_counter()
        fn()
        best = min(best, (time.process_time() - c, time.perf_counter() - w))
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clauses", type=int, default=100_000)
    ap.add_argument("--depth", type=int, default=5000)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--acas", type=Path, default=None, help="an ACAS Xu .onnx for the end-to-end vnncomp case")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "vnnlib_parse.json")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    from absint.vnnlib import parse_vnnlib, read_query

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cases = {f"wide {args.clauses} (1.0)": wide(args.clauses, False),
                 f"wide {args.clauses} (2.0)": wide(args.clauses, True),
                 f"deep {args.depth} (1.0)": deep(args.depth, False),
                 f"deep {args.depth} (2.0)": deep(args.depth, True)}
        for name, text in cases.items():
            path = Path(tmp) / (name.replace(" ", "_").replace("(", "").replace(")", "") + ".vnnlib")
            path.write_text(text)
            r_cpu, r_wall = timed(lambda: read_query(path), args.repeat)
            p_cpu, p_wall = timed(lambda: parse_vnnlib(path), args.repeat)
            rows.append({"case": name, "bytes": len(text), "read_cpu": r_cpu, "read_wall": r_wall,
                         "spec_cpu": p_cpu, "spec_wall": p_wall})
            print(f"{name:<24} {len(text) / 1e6:6.2f} MB  read {r_cpu:6.2f} s CPU ({r_wall:6.2f} wall)   "
                  f"read+lower {p_cpu:6.2f} s CPU ({p_wall:6.2f} wall)", flush=True)
        if args.acas is not None:
            path = Path(tmp) / "acas_wide.vnnlib"
            path.write_text(wide(args.clauses, False))
            out = Path(tmp) / "result.txt"
            w = time.perf_counter()
            proc = subprocess.run([sys.executable, "-c", "import sys; from absint.cli import main; sys.exit(main())",
                                   "vnncomp", str(args.acas), str(path), "--timeout", "10", "--out", str(out),
                                   "-a", "deeppoly"], capture_output=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
            wall = time.perf_counter() - w
            word = out.read_text().split("\n")[0] if out.exists() else f"(no file, rc {proc.returncode})"
            rows.append({"case": "absint vnncomp --timeout 10 (wide 1.0, ACAS)", "wall": wall, "answer": word})
            print(f"absint vnncomp --timeout 10 on the wide 1.0 file: {word} in {wall:.2f} s wall (process)")
    load = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rows": rows, "loadavg": load, "cpus": os.cpu_count()}, indent=1))
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; results -> {args.out}")


if __name__ == "__main__":
    main()
