"""Do time limits hold? Overshoot of every analysis on networks from tiny to large.

Each case is one instance (a hard L∞ robustness ball or a VNN-LIB property that the cheap analyses
cannot prove and the attack does not falsify) verified with ``absint.verify(onnx_path, spec,
timeout=T)`` in a fresh process, so the clock covers everything an instance does: loading the
ONNX file, parsing the VNN-LIB file, sampling and PGD attacks, bounding, refinement, branch and
bound. The target (issue 16) is ``wall ≤ T + max(1 s, 5 % of T)``.

Networks: ``digits`` (bundled 64-64-64-10 MLP), ``6x100`` (ERAN MNIST 6x100), ``convsmall``
(ERAN MNIST ConvSmall), ``mnistfc6`` (VNN-COMP mnistfc 256x6, a VNN-LIB property), ``big``
(a random 784-4096-4096-10 ReLU MLP written to ONNX once, ~80 MB). Analyses: box, deepzono,
deeppoly, alphapoly, lp, milp, refinepoly, kpoly, bab, sdp.

    nice -n 10 python benchmarks/timeout_overshoot.py --timeouts 10
    python benchmarks/timeout_overshoot.py --analyses bab --networks mnistfc6 --timeouts 30

Prints one line per case (wall, CPU, overshoot, verdict, reason) and writes
``benchmarks/results/timeout_overshoot.json`` (``--out``) with the machine's load average
before and after every case. A case still running at ``3·T + 60`` s is killed and reported.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = (ROOT / ".." / "shared" / "bench").resolve()
ANALYSES = ("box", "deepzono", "deeppoly", "alphapoly", "lp", "milp", "refinepoly", "kpoly", "bab", "sdp")
BIG_SIZES = (784, 4096, 4096, 10)

#: name -> (onnx path, spec); spec is ("image", npz, index, eps) or ("vnnlib", path).
NETWORKS: dict[str, tuple[str, tuple]] = {
    "digits": (str(ROOT / "networks/digits_mlp_2x64.onnx"), ("image", str(ROOT / "networks/digits_test.npz"), 3, 0.08)),
    "6x100": (str(BENCH / "eran/mnist_relu_6_100.onnx"), ("image", str(BENCH / "eran/mnist_test_1000.npz"), 2, 0.026)),
    "convsmall": (str(BENCH / "eran/mnist_convsmall.onnx"), ("image", str(BENCH / "eran/mnist_test_1000.npz"), 4, 0.12)),
    "mnistfc6": (str(BENCH / "mnistfc/onnx/mnist-net_256x6.onnx"),
                 ("vnnlib", str(BENCH / "mnistfc/vnnlib/2021/prop_0_0.03.vnnlib"))),
    "big": ("", ("image", str(BENCH / "eran/mnist_test_1000.npz"), 0, 0.001)),
}


def big_mlp_onnx(path: Path, sizes: tuple[int, ...] = BIG_SIZES, seed: int = 0) -> Path:
    """A random ReLU MLP (weights N(0,1)·1.5/√fan_in, float32) as an ONNX file; built once."""
    if path.exists():
        return path
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    inits, nodes, src = [], [], "x"
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        w = (rng.standard_normal((a, b)) * (1.5 / a ** 0.5)).astype(np.float32)
        bias = (rng.standard_normal(b) * 0.1).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"W{i}"), numpy_helper.from_array(bias, f"b{i}")]
        nodes.append(helper.make_node("Gemm", [src, f"W{i}", f"b{i}"], [f"h{i}"]))
        src = f"h{i}"
        if i < len(sizes) - 2:
            nodes.append(helper.make_node("Relu", [src], [f"r{i}"]))
            src = f"r{i}"
    graph = helper.make_graph(nodes, "big_mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, sizes[0]])],
                              [helper.make_tensor_value_info(src, TensorProto.FLOAT, [1, sizes[-1]])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    onnx.save(model, str(tmp))
    tmp.replace(path)
    return path


def child(case: dict) -> dict:
    """Run one case in this (fresh) process and return its measurements."""
    import numpy as np
    import torch

    torch.set_num_threads(1)
    import absint
    from absint.specs import Instance, linf_ball, robustness_property

    spec_kind = case["spec"][0]
    if spec_kind == "image":
        _, npz, idx, eps = case["spec"]
        with np.load(npz) as f:
            img, label = np.asarray(f["images"][idx], dtype=np.float64), int(f["labels"][idx])
        if case["network"] == "big":  # random weights: attack the network's own prediction
            g = absint.load_network(case["onnx"])
            img = img.reshape(g.input_shape)
            with torch.no_grad():
                label = int(g.forward(torch.as_tensor(img[None])).argmax())
            del g
        else:
            img = img.reshape(absint.load_network(case["onnx"]).input_shape)
        spec = Instance(linf_ball(img, eps), robustness_property(label, 10))
    else:
        spec = case["spec"][1]
    t0, c0 = time.perf_counter(), time.process_time()
    try:  # the instance starts here: the network is loaded (and a VNN-LIB file parsed) inside verify
        r = absint.verify(case["onnx"], spec, analysis=case["analysis"], timeout=case["timeout"])
        verdict, reason = str(r.verdict), r.reason
    except Exception as exc:  # noqa: BLE001 - reported, not raised
        verdict, reason = "error", f"{type(exc).__name__}: {exc}"
    return {"wall": time.perf_counter() - t0, "cpu": time.process_time() - c0, "verdict": verdict,
            "reason": reason.replace("\n", " ")[:300]}


def loadavg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:  # pragma: no cover
        return []


def run_case(case: dict) -> dict:
    cap = 3 * case["timeout"] + 60
    before = loadavg()
    t0 = time.perf_counter()
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    try:
        p = subprocess.run([sys.executable, __file__, "--child", json.dumps(case)], capture_output=True, text=True,
                           timeout=cap, env=env)
        lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
        out = json.loads(lines[-1]) if lines else {"wall": None, "cpu": None, "verdict": "crash",
                                                    "reason": (p.stderr.strip().splitlines() or ["?"])[-1][:300]}
    except subprocess.TimeoutExpired:
        out = {"wall": None, "cpu": None, "verdict": "killed", "reason": f"still running after {cap} s"}
    out["process_wall"] = time.perf_counter() - t0
    out["load_before"], out["load_after"] = before, loadavg()
    T = case["timeout"]
    out["allowed"] = max(1.0, 0.05 * T)
    out["overshoot"] = None if out["wall"] is None else out["wall"] - T
    out["ok"] = out["wall"] is not None and out["overshoot"] <= out["allowed"]
    return {**case, **out}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--analyses", nargs="+", default=list(ANALYSES))
    ap.add_argument("--networks", nargs="+", default=list(NETWORKS), choices=list(NETWORKS))
    ap.add_argument("--timeouts", nargs="+", type=float, default=[10.0], help="limits T in seconds")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/timeout_overshoot.json")
    ap.add_argument("--cache", type=Path, default=Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
                    / "absint" / "bench")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child is not None:
        print(json.dumps(child(json.loads(args.child))))
        return 0
    big = str(big_mlp_onnx(args.cache / "mlp_784_4096_4096_10.onnx")) if "big" in args.networks else ""
    rows = []
    print(f"uptime load {loadavg()}, {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}")
    print(f"{'network':<10} {'analysis':<10} {'T':>5} {'wall':>7} {'cpu':>7} {'over':>6} ok  verdict   reason")
    for T in args.timeouts:
        for net in args.networks:
            onnx, spec = NETWORKS[net]
            for a in args.analyses:
                case = {"network": net, "onnx": onnx or big, "spec": list(spec), "analysis": a, "timeout": T}
                r = run_case(case)
                rows.append(r)
                w = "-" if r["wall"] is None else f"{r['wall']:.2f}"
                c = "-" if r["cpu"] is None else f"{r['cpu']:.2f}"
                o = "-" if r["overshoot"] is None else f"{r['overshoot']:+.2f}"
                print(f"{net:<10} {a:<10} {T:>5g} {w:>7} {c:>7} {o:>6} {'yes' if r['ok'] else 'NO ':<3} "
                      f"{r['verdict']:<9} {r['reason'][:110]}", flush=True)
    bad = [r for r in rows if not r["ok"]]
    print(f"{len(rows) - len(bad)}/{len(rows)} within T + max(1 s, 5%); load now {loadavg()}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
                                    "rows": rows}, indent=1))
    print(f"wrote {args.out}")
    return 0 if not bad else 1


if __name__ == "__main__":
    sys.exit(main())
