"""absint's bound engine side by side with auto_LiRPA (CROWN / alpha-CROWN): time, certified counts, bounds.

Issue 13's speed targets, measured in one run on one machine, one thread, float64, on the ERAN
MNIST networks (``../shared/bench/eran``; eps from its README: 6x100 0.026, 6x200 0.015,
9x100 0.026, ConvSmall 0.12), images ``--start`` … ``--start + --n − 1`` of
``mnist_test_1000.npz`` (the correctly classified ones):

* per image, CPU (``time.process_time``) and wall time of absint ``deeppoly`` vs CROWN
  (``compute_bounds(method="backward")``) and of absint ``alphapoly`` vs alpha-CROWN
  (``method="CROWN-Optimized"``), interleaved image by image (the order of the two tools flips on
  every image), certified counts, and the ratio of the median CPU per image (absint / peer);
* the lower bounds of the 9 margins ``y_true − y_j`` from both tools, row by row: how often each
  is tighter (CROWN and DeepPoly differ only where they pick a different ReLU lower slope or
  intermediate bounds; a large one-sided difference means one of them computes something else);
* batched throughput: the first ``--batch`` correct images in one ``absint.verify_robustness``
  call (``attack=False``; it still runs the cheap sampling attack, 65 points per image; the call is
  made twice and the second, warm one timed, the cold one reported beside it) against the same call
  one image at a time (the same work: sampling attack and decision per image), against the
  per-image ``Analysis.bound`` times of the loop (the engine alone: the older, stricter
  comparison), the same boxes in one ``Analysis.bound`` call (the engine alone, batched), and the
  peer's CROWN on the same batch for reference.

Only ``Analysis.bound`` / ``compute_bounds`` is timed (no PGD, no model building; one warm-up
image per tool first). ``uptime`` is recorded at start and end. Results: a markdown table on
stdout and a JSON file (per image and summary) at ``--out`` (default: a temporary file; with
``--record``: ``benchmarks/results/engine_vs_autolirpa.json``), plus a CSV of per-image rows
beside it.

Installing the peer (auto_LiRPA, commit a050a3d, ``../shared/peers/``) into its own virtual
environment *outside* the repository; its code is never copied into absint and never imported
by this process — it runs in a subprocess (``benchmarks/autolirpa_worker.py``) under its own
interpreter, found by ``--peer-python`` or the ``ABSINT_PEER_PYTHON`` environment variable::

    P=/work/peers                                # any folder outside the repository
    python3 -m venv $P/venv && tar -xzf ../shared/peers/auto_LiRPA-a050a3d.tar.gz -C $P
    $P/venv/bin/pip install torch==2.13.0 numpy onnx onnxruntime packaging appdirs pyyaml tqdm graphviz
    $P/venv/bin/pip install --no-deps -e $P/auto_LiRPA
    export ABSINT_PEER_PYTHON=$P/venv/bin/python

(``graphviz``, the Python package, is imported by auto_LiRPA at start-up.) Without a peer
(``--no-peer``) only absint's columns are measured.

Iteration budgets: absint ``alphapoly`` runs with its own defaults unless ``--alpha-opt KEY=VALUE``
(today ``iters`` per ReLU layer for the intermediate bounds, ``final_iters`` for the margins, ``lr``);
alpha-CROWN gets ``iteration`` = ``--crown-iters`` (default: absint's ``final_iters``, else
``iters``) and stops once every margin is proved (``--crown-no-early-stop`` to run them all);
further auto_LiRPA options by ``--crown-opt KEY=VALUE`` (``optimize_bound_args`` keys, e.g.
``lr_alpha=0.1 fix_interm_bounds=false``, or top-level ``bound_opts`` keys like
``enable_opt_interm_bounds=true``). Both settings are printed and recorded.

Quiet-machine command (all four networks, 200 images, about an hour)::

    python benchmarks/engine_vs_autolirpa.py --peer-python /work/peers/venv/bin/python --record
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import inspect
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import (ERAN, ERAN_SUITE, BenchError, LineWorker, NetSpec, default_out, git_revision,  # noqa: E402
                      load_npz, machine_record, margin_rows, markdown_table, median, options_label,
                      parse_net, parse_options, ratio, uptime, write_json)

import numpy as np  # noqa: E402
import torch  # noqa: E402

import absint  # noqa: E402


log = logging.getLogger("engine_vs_autolirpa")
WORKER = Path(__file__).resolve().parent / "autolirpa_worker.py"

#: The two comparisons: (key, absint analysis, peer method, display names).
PAIRS = {
    "crown": ("deeppoly", "backward", "deeppoly", "CROWN"),
    "alpha": ("alphapoly", "CROWN-Optimized", "alphapoly", "alpha-CROWN"),
}


@dataclass
class Config:
    """Everything one run depends on (recorded with the results)."""

    pairs: tuple[str, ...] = ("crown", "alpha")
    alpha_opts: dict[str, Any] = field(default_factory=dict)
    crown_opts: dict[str, Any] = field(default_factory=dict)
    crown_iters: int | None = None
    crown_early_stop: bool = True
    batch: int = 100
    peer_conv_mode: str = "patches"
    peer_batch_conv_mode: str = "matrix"
    bound_tol: float = 1e-6
    threads: int = 1
    device: str = "cpu"


class Peer:
    """The auto_LiRPA worker process (one per run)."""

    def __init__(self, python: str, threads: int, device: str) -> None:
        self.worker = LineWorker([python, str(WORKER)], name="auto_LiRPA")
        self.threads, self.device = threads, device
        self.info: dict[str, Any] = {}

    def load(self, path: Path) -> dict[str, Any]:
        self.info = self.worker.request(cmd="load", onnx=str(path), threads=self.threads, device=self.device)
        return self.info

    def forward(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.worker.request(cmd="forward", x=x.ravel().tolist(), shape=list(x.shape))["y"])

    def bound(self, method: str, x: np.ndarray, lo: np.ndarray, hi: np.ndarray, C: np.ndarray,
              conv_mode: str, opts: dict[str, Any]) -> dict[str, Any]:
        r = self.worker.request(cmd="bound", method=method, x=x.ravel().tolist(), lo=lo.ravel().tolist(),
                                hi=hi.ravel().tolist(), C=C.tolist(), shape=list(x.shape), conv_mode=conv_mode,
                                opts=opts)
        r["lb"] = np.asarray(r["lb"])
        return r

    def close(self) -> None:
        self.worker.close()


def resolved_options(analysis: absint.Analysis, given: dict[str, Any]) -> dict[str, Any]:
    """The analysis' resolved options (its options dataclass; in older revisions the keyword
    defaults of its constructor overridden by ``given``), for the record."""
    opts = getattr(analysis, "options", None)
    if dataclasses.is_dataclass(opts) and not isinstance(opts, type):
        return dataclasses.asdict(opts)
    out = {}
    for name, p in inspect.signature(type(analysis).__init__).parameters.items():
        if p.kind is p.KEYWORD_ONLY and name != "device" and p.default is not p.empty:
            out[name] = p.default
    out.update(given)
    return out


def peer_options(cfg: Config, absint_alpha: dict[str, Any]) -> dict[str, Any]:
    """auto_LiRPA options for alpha-CROWN: the iteration budget, early stop, the user's extras."""
    iters = cfg.crown_iters
    if iters is None:
        iters = int(absint_alpha.get("final_iters", absint_alpha.get("iters", 20)))
    opts = {"iteration": iters, **cfg.crown_opts}
    if not cfg.crown_early_stop:
        opts["stop_criterion_func"] = None  # replaced in the worker by "never stop"
    return opts


def absint_bound(an: absint.Analysis, graph: absint.Graph, lo: np.ndarray, hi: np.ndarray,
                 C: np.ndarray) -> dict[str, Any]:
    """One ``Analysis.bound`` call, timed: lower bounds ``[B, m]``, CPU and wall seconds."""
    lo_t, hi_t = torch.as_tensor(lo), torch.as_tensor(hi)
    C_t = torch.as_tensor(C)
    d_t = torch.zeros(C_t.shape[:2], dtype=torch.float64)
    c0, w0 = time.process_time(), time.perf_counter()
    res = an.bound(graph, lo_t, hi_t, C_t, d_t)
    if an.device.type == "cuda":
        torch.cuda.synchronize()
    return {"lb": np.asarray(res.lower), "cpu": time.process_time() - c0, "wall": time.perf_counter() - w0}


def compare_rows(a: np.ndarray, b: np.ndarray, tol: float) -> dict[str, int]:
    """Row-wise: how many margin lower bounds absint (``a``) has tighter, the peer (``b``), or equal."""
    slack = tol * (1.0 + np.abs(b))
    diff = a - b
    return {"absint_tighter": int((diff > slack).sum()), "peer_tighter": int((diff < -slack).sum()),
            "equal": int((np.abs(diff) <= slack).sum())}


def run_network(net: NetSpec, images: np.ndarray, labels: np.ndarray, indices: list[int], cfg: Config,
                peer: Peer | None) -> dict[str, Any]:
    """Measure one network on the images ``indices``; returns per-image records and the summary."""
    graph = absint.load_network(net.path, device=cfg.device)
    n_classes = int(np.prod(graph.output_shape))
    shape = tuple(graph.input_shape)
    X = images[indices].reshape(len(indices), *shape)
    Y = labels[indices]
    with torch.no_grad():
        logits = graph.forward(torch.as_tensor(X, device=cfg.device)).reshape(len(X), -1).cpu().numpy()
    correct = [k for k in range(len(X)) if int(logits[k].argmax()) == int(Y[k])]
    out: dict[str, Any] = {"net": net.name, "path": str(net.path), "eps": net.eps, "images": len(indices),
                           "first_image": indices[0] if indices else None, "correct": len(correct)}
    analyses = {key: absint.get_analysis(PAIRS[key][0], device=cfg.device,
                                         **(cfg.alpha_opts if key == "alpha" else {})) for key in cfg.pairs}
    alpha_resolved = resolved_options(analyses["alpha"], cfg.alpha_opts) if "alpha" in analyses else {}
    out["absint_options"] = {key: resolved_options(an, cfg.alpha_opts if key == "alpha" else {})
                             for key, an in analyses.items()}
    # CROWN ignores the optimisation settings; the other --crown-opt keys apply to both
    popts = {"crown": dict(cfg.crown_opts), "alpha": peer_options(cfg, alpha_resolved)}
    out["peer_options"] = {k: popts[k] for k in cfg.pairs}
    if peer is not None:
        out["peer"] = {k: v for k, v in peer.load(net.path).items() if k != "model"}
        y_peer = peer.forward(X)
        out["peer_forward_max_abs_diff"] = float(np.abs(y_peer - logits).max())
        if out["peer_forward_max_abs_diff"] > 1e-6 * (1 + np.abs(logits).max()):
            raise BenchError(f"{net.name}: the peer's torch model disagrees with absint's graph "
                             f"(max |Δ logits| {out['peer_forward_max_abs_diff']:.3g}); the converter is wrong")

    def boxes(ks: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        x = X[ks]
        C = np.stack([margin_rows(int(Y[k]), n_classes) for k in ks])
        return x, np.clip(x - net.eps, 0, 1), np.clip(x + net.eps, 0, 1), C

    # warm-up: the first call of each tool allocates, compiles and builds its bounded module
    for k in correct[:1]:
        x, lo, hi, C = boxes([k])
        for key in cfg.pairs:
            absint_bound(analyses[key], graph, lo, hi, C)
            if peer is not None:
                peer.bound(PAIRS[key][1], x, lo, hi, C, cfg.peer_conv_mode, popts[key])

    records = []
    for n, k in enumerate(correct):
        x, lo, hi, C = boxes([k])
        rec: dict[str, Any] = {"net": net.name, "image": indices[k], "label": int(Y[k])}
        for key in cfg.pairs:
            an_name, method, a_label, p_label = PAIRS[key]
            order = ("absint", "peer") if n % 2 == 0 else ("peer", "absint")
            for who in order:
                if who == "absint":
                    r = absint_bound(analyses[key], graph, lo, hi, C)
                    rec[a_label] = {"lb": r["lb"][0].tolist(), "cpu": r["cpu"], "wall": r["wall"],
                                    "certified": bool((r["lb"][0] > 0.0).all())}
                elif peer is not None:
                    r = peer.bound(method, x, lo, hi, C, cfg.peer_conv_mode, popts[key])
                    rec[p_label] = {"lb": r["lb"][0].tolist(), "cpu": r["cpu"], "wall": r["wall"],
                                    "certified": bool((r["lb"][0] > 0).all())}
        records.append(rec)
        if (n + 1) % 20 == 0:
            log.info("%s: %d / %d images", net.name, n + 1, len(correct))
    out["records"] = records
    out["summary"] = summarize(records, cfg, peer is not None)
    if cfg.batch and correct:
        an = analyses.get("crown") or absint.get_analysis("deeppoly", device=cfg.device)
        out["batched"] = batched(graph, an, correct[: cfg.batch], boxes, X, Y, net, records, cfg, peer, popts)
    return out


def summarize(records: list[dict[str, Any]], cfg: Config, with_peer: bool) -> dict[str, Any]:
    """Certified counts, median CPU/wall per image, ratios, row-wise bound comparison per pair."""
    s: dict[str, Any] = {}
    for key in cfg.pairs:
        _, _, a, p = PAIRS[key]
        row: dict[str, Any] = {
            "absint": a, "peer": p, "images": len(records),
            "absint_certified": sum(r[a]["certified"] for r in records),
            "absint_median_cpu_s": median([r[a]["cpu"] for r in records]),
            "absint_median_wall_s": median([r[a]["wall"] for r in records]),
            "absint_total_cpu_s": sum(r[a]["cpu"] for r in records),
        }
        if with_peer:
            row.update({
                "peer_certified": sum(r[p]["certified"] for r in records),
                "only_absint": sum(r[a]["certified"] and not r[p]["certified"] for r in records),
                "only_peer": sum(r[p]["certified"] and not r[a]["certified"] for r in records),
                "peer_median_cpu_s": median([r[p]["cpu"] for r in records]),
                "peer_median_wall_s": median([r[p]["wall"] for r in records]),
                "peer_total_cpu_s": sum(r[p]["cpu"] for r in records),
            })
            row["cpu_ratio"] = ratio(row["absint_median_cpu_s"], row["peer_median_cpu_s"])
            row["wall_ratio"] = ratio(row["absint_median_wall_s"], row["peer_median_wall_s"])
            counts = {"absint_tighter": 0, "peer_tighter": 0, "equal": 0}
            diffs = []
            img_absint = img_peer = 0
            # both optimisers stop once an image is proved, so their bounds compare on open images only
            scope = records if key == "crown" else [r for r in records
                                                    if not r[a]["certified"] and not r[p]["certified"]]
            for r in scope:
                la, lp = np.asarray(r[a]["lb"]), np.asarray(r[p]["lb"])
                c = compare_rows(la, lp, cfg.bound_tol)
                for name in counts:
                    counts[name] += c[name]
                img_absint += c["absint_tighter"] > 0 and c["peer_tighter"] == 0
                img_peer += c["peer_tighter"] > 0 and c["absint_tighter"] == 0
                diffs.append(la - lp)
            d = np.concatenate(diffs) if diffs else np.zeros(0)
            row["bounds"] = {**counts, "rows": int(d.size), "images": len(scope),
                             "scope": "all images" if key == "crown" else "images neither proved",
                             "images_absint_tighter_only": img_absint,
                             "images_peer_tighter_only": img_peer,
                             "median_diff": float(np.median(d)) if d.size else float("nan"),
                             "max_abs_diff": float(np.abs(d).max()) if d.size else float("nan")}
        s[key] = row
    return s


def batched(graph, an, ks, boxes, X, Y, net, records, cfg: Config, peer: Peer | None, popts) -> dict[str, Any]:
    """``len(ks)`` images in one ``verify_robustness`` call vs one at a time (same images, per-image loop)."""
    single = [r["deeppoly"] for r in records[: len(ks)]] if "crown" in cfg.pairs else []
    x, lo, hi, C = boxes(ks)
    labels = [int(Y[k]) for k in ks]

    def batched_call():
        c0, w0 = time.process_time(), time.perf_counter()
        res = absint.verify_robustness(graph, X[ks], labels, net.eps, analysis=an, attack=False,
                                       batch_size=len(ks), device=cfg.device)
        return res, time.process_time() - c0, time.perf_counter() - w0

    # the first batched call of a process is the cold one (new tensor shapes, allocator growth); the
    # one-at-a-time loop it is compared with had a warm-up image and then many calls of one shape
    res, cold_cpu, cold_wall = batched_call()
    res, cpu, wall = batched_call()
    out: dict[str, Any] = {"images": len(ks), "absint_batched_cpu_s": cpu, "absint_batched_wall_s": wall,
                           "absint_batched_cold_cpu_s": cold_cpu, "absint_batched_cold_wall_s": cold_wall,
                           "absint_batched_certified": sum(r.verified for r in res), "analysis": an.name,
                           "batchable": an.batchable}
    # the same job one image at a time: the same verify_robustness call (its sampling attack and
    # decision included) per image, so "batched" and "one at a time" do the same work
    c0, w0 = time.process_time(), time.perf_counter()
    one = [absint.verify_robustness(graph, X[[k]], [int(Y[k])], net.eps, analysis=an, attack=False, batch_size=1,
                                    device=cfg.device)[0] for k in ks]
    out["absint_verify_single_cpu_s"], out["absint_verify_single_wall_s"] = (time.process_time() - c0,
                                                                             time.perf_counter() - w0)
    out["absint_verify_single_certified"] = sum(r.verified for r in one)
    out["speedup_verify_cpu"] = ratio(out["absint_verify_single_cpu_s"], cpu)
    out["speedup_verify_wall"] = ratio(out["absint_verify_single_wall_s"], wall)
    # the same boxes in one Analysis.bound call: the engine alone, without verify_robustness's
    # sampling attack (65 forward passes per image) and decision
    eng = absint_bound(an, graph, lo, hi, C)
    out["absint_bound_batched_cpu_s"], out["absint_bound_batched_wall_s"] = eng["cpu"], eng["wall"]
    if single:
        out["absint_single_cpu_s"] = sum(r["cpu"] for r in single)
        out["absint_single_wall_s"] = sum(r["wall"] for r in single)
        out["absint_single_certified"] = sum(r["certified"] for r in single)
        out["speedup_cpu"] = ratio(out["absint_single_cpu_s"], cpu)
        out["speedup_wall"] = ratio(out["absint_single_wall_s"], wall)
        out["speedup_bound_cpu"] = ratio(out["absint_single_cpu_s"], eng["cpu"])
    if peer is not None:
        r = peer.bound("backward", x, lo, hi, C, cfg.peer_batch_conv_mode, popts.get("crown", {}))
        out.update({"peer_batched_cpu_s": r["cpu"], "peer_batched_wall_s": r["wall"],
                    "peer_batched_certified": int((r["lb"] > 0).all(1).sum()),
                    "peer_batch_conv_mode": cfg.peer_batch_conv_mode})
        if "crown" in cfg.pairs:
            out["peer_single_cpu_s"] = sum(rec["CROWN"]["cpu"] for rec in records[: len(ks)])
    return out


def report(results: list[dict[str, Any]], cfg: Config, with_peer: bool) -> str:
    """The markdown tables (CPU and wall per image, certified, ratios; bounds; batched)."""
    parts = []
    for key in cfg.pairs:
        _, _, a, p = PAIRS[key]
        unit, scale = ("ms", 1e3) if key == "crown" else ("s", 1.0)
        head = ["network", "eps", "correct", f"{a} cert."]
        if with_peer:
            head += [f"{p} cert.", f"{a} CPU {unit}", f"{p} CPU {unit}", "CPU ratio", f"{a} wall {unit}",
                     f"{p} wall {unit}", "wall ratio"]
        else:
            head += [f"{a} CPU {unit}", f"{a} wall {unit}"]
        rows = []
        for res in results:
            s = res["summary"][key]
            row = [res["net"], res["eps"], f"{res['correct']}/{res['images']}", s["absint_certified"]]
            if with_peer:
                row += [s["peer_certified"], scale * s["absint_median_cpu_s"], scale * s["peer_median_cpu_s"],
                        f"**{s['cpu_ratio']:.2f}x**", scale * s["absint_median_wall_s"],
                        scale * s["peer_median_wall_s"], f"{s['wall_ratio']:.2f}x"]
            else:
                row += [scale * s["absint_median_cpu_s"], scale * s["absint_median_wall_s"]]
            rows.append(row)
        parts.append(f"{a} vs {p} (median per image, absint / peer):\n\n" + markdown_table(head, rows))
    if with_peer:
        rows = []
        for res in results:
            for key in cfg.pairs:
                b = res["summary"][key]["bounds"]
                _, _, a, p = PAIRS[key]
                rows.append([res["net"], f"{a} vs {p}", f"{b['images']} ({b['scope']})", b["rows"], b["absint_tighter"], b["peer_tighter"], b["equal"],
                             b["images_absint_tighter_only"], b["images_peer_tighter_only"], b["median_diff"],
                             b["max_abs_diff"]])
        parts.append(f"Margin lower bounds row by row (equal: within {cfg.bound_tol:g}·(1+|bound|)):\n\n" + markdown_table(
            ["network", "pair", "images", "rows", "absint tighter", "peer tighter", "equal", "images: absint only tighter",
             "images: peer only tighter", "median (absint − peer)", "max |diff|"], rows))
    rows = []
    for res in results:
        b = res.get("batched")
        if not b:
            continue
        row = [res["net"], b["images"], b["analysis"], b.get("absint_verify_single_cpu_s", float("nan")),
               b["absint_batched_cpu_s"], f"**{b.get('speedup_verify_cpu', float('nan')):.2f}x**",
               f"{b.get('speedup_verify_wall', float('nan')):.2f}x", b.get("absint_batched_cold_cpu_s", float("nan")),
               b.get("absint_single_cpu_s", float("nan")), f"{b.get('speedup_cpu', float('nan')):.2f}x",
               b.get("absint_bound_batched_cpu_s", float("nan")),
               f"{b.get('speedup_bound_cpu', float('nan')):.2f}x", b["absint_batched_certified"]]
        if with_peer:
            row += [b.get("peer_single_cpu_s", float("nan")), b["peer_batched_cpu_s"], b["peer_batched_certified"]]
        rows.append(row)
    if rows:
        head = ["network", "images", "analysis", "verify_robustness one at a time CPU s", "verify_robustness batched CPU s",
                "speedup CPU (same call)", "speedup wall (same call)", "batched, first (cold) call CPU s",
                "Analysis.bound one at a time CPU s", "batched verify_robustness vs bound one at a time",
                "engine alone batched CPU s", "engine alone speedup CPU", "certified (batched)"]
        if with_peer:
            head += ["CROWN one at a time CPU s", f"CROWN batched CPU s ({cfg.peer_batch_conv_mode})", "CROWN cert."]
        parts.append("Batched throughput (one call for all images vs one call per image):\n\n" + markdown_table(head, rows))
    return "\n\n".join(parts)


def write_csv(path: Path, results: list[dict[str, Any]]) -> None:
    cols = ["net", "image", "label"]
    tools = sorted({t for res in results for r in res["records"] for t in r if isinstance(r[t], dict)})
    for t in tools:
        cols += [f"{t}_certified", f"{t}_cpu_s", f"{t}_wall_s", f"{t}_min_lb"]
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(cols)
        for res in results:
            for r in res["records"]:
                row = [r["net"], r["image"], r["label"]]
                for t in tools:
                    v = r.get(t)
                    row += [v["certified"], v["cpu"], v["wall"], min(v["lb"])] if v else ["", "", "", ""]
                w.writerow(row)


def find_peer_python(arg: str | None) -> str | None:
    """``--peer-python``, else ``$ABSINT_PEER_PYTHON``; an existing file or ``None``."""
    p = arg or os.environ.get("ABSINT_PEER_PYTHON")
    return p if p and Path(p).is_file() else None


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nets", nargs="+", default=list(ERAN_SUITE),
                    help="ERAN names (their README eps) or PATH.onnx:EPS / NAME:EPS (default: the four ERAN MNIST nets)")
    ap.add_argument("--data", default=str(ERAN / "mnist_test_1000.npz"), help=".npz with images and labels")
    ap.add_argument("--n", type=int, default=200, help="number of images (default 200)")
    ap.add_argument("--start", type=int, default=0, help="first image index (default 0)")
    ap.add_argument("--pairs", nargs="+", choices=list(PAIRS), default=list(PAIRS),
                    help="crown: deeppoly vs CROWN; alpha: alphapoly vs alpha-CROWN")
    ap.add_argument("--peer-python", default=None,
                    help="python of the auto_LiRPA venv (default: $ABSINT_PEER_PYTHON)")
    ap.add_argument("--no-peer", action="store_true", help="measure absint alone")
    ap.add_argument("--alpha-opt", action="append", default=[], metavar="KEY=VALUE", help="absint alphapoly option")
    ap.add_argument("--crown-iters", type=int, default=None,
                    help="alpha-CROWN iterations (default: absint alphapoly's final_iters)")
    ap.add_argument("--crown-opt", action="append", default=[], metavar="KEY=VALUE",
                    help="auto_LiRPA option (optimize_bound_args key, or top-level bound_opts key)")
    ap.add_argument("--crown-no-early-stop", action="store_true",
                    help="run every alpha-CROWN iteration even once all margins are proved")
    ap.add_argument("--batch", type=int, default=100, help="images in the batched call (0: skip)")
    ap.add_argument("--peer-conv-mode", default="patches", choices=["patches", "matrix"])
    ap.add_argument("--peer-batch-conv-mode", default="matrix", choices=["patches", "matrix"],
                    help="conv mode of the peer's batched call ('patches' fails on ConvSmall at batch >= 50)")
    ap.add_argument("--bound-tol", type=float, default=1e-6, help="relative tolerance for 'equal' bounds")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for both tools (default 1)")
    ap.add_argument("--device", default="cpu", help="torch device for both tools (cpu, cuda)")
    ap.add_argument("--out", default=None, help="results JSON path (a CSV is written beside it)")
    ap.add_argument("--record", action="store_true",
                    help="write to benchmarks/results/engine_vs_autolirpa.json (unless --out)")
    ap.add_argument("-v", "--verbose", action="store_true")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    cfg = Config(pairs=tuple(args.pairs), alpha_opts=parse_options(args.alpha_opt),
                 crown_opts=parse_options(args.crown_opt), crown_iters=args.crown_iters,
                 crown_early_stop=not args.crown_no_early_stop, batch=args.batch, peer_conv_mode=args.peer_conv_mode,
                 peer_batch_conv_mode=args.peer_batch_conv_mode, bound_tol=args.bound_tol, threads=args.threads,
                 device=args.device)
    nets = [parse_net(t) for t in args.nets]
    images, labels = load_npz(args.data)
    indices = list(range(args.start, min(args.start + args.n, len(images))))
    if not indices:
        raise BenchError(f"no images in [{args.start}, {args.start + args.n}) of {args.data} ({len(images)} images)")
    peer = None
    if not args.no_peer:
        py = find_peer_python(args.peer_python)
        if py is None:
            raise BenchError("no auto_LiRPA interpreter: give --peer-python PATH or set ABSINT_PEER_PYTHON "
                             "(install steps in this script's docstring), or run with --no-peer")
        peer = Peer(py, args.threads, args.device)
    out_path = default_out("engine_vs_autolirpa", args.record, args.out)
    meta = {"command": " ".join([sys.executable] + sys.argv) if argv is None else "main(" + repr(argv) + ")",
            "absint_revision": git_revision(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "machine_start": machine_record(), "config": cfg.__dict__, "data": args.data}
    log.info("start: %s", meta["machine_start"]["uptime"])
    results = []
    try:
        for net in nets:
            log.info("%s (eps %g): images %d..%d", net.name, net.eps, indices[0], indices[-1])
            results.append(run_network(net, images, labels, indices, cfg, peer))
            write_json(out_path, {"meta": meta, "results": results})  # partial results survive an interruption
    finally:
        if peer is not None:
            meta["peer"] = {k: v for k, v in peer.info.items() if k != "model"}
            peer.close()
    meta["uptime_end"] = uptime()
    write_json(out_path, {"meta": meta, "results": results})
    write_csv(out_path.with_suffix(".csv"), results)
    table = report(results, cfg, peer is not None)
    budgets = []
    if "alpha" in cfg.pairs and results:
        budgets.append(f"alphapoly options: {options_label(results[0]['absint_options']['alpha'])}")
        if peer is not None:
            budgets.append(f"alpha-CROWN options: {options_label({k: v for k, v in results[0]['peer_options']['alpha'].items()})}"
                           + ("" if cfg.crown_early_stop else " (no early stop)")
                           + (" (stops once all margins > 0)" if cfg.crown_early_stop else ""))
    print(f"\nabsint {meta['absint_revision']} vs auto_LiRPA {meta.get('peer', {}).get('auto_LiRPA', '-') if peer else '-'}; "
          f"torch {torch.__version__}, {cfg.threads} thread(s), float64, {cfg.device}; images {indices[0]}..{indices[-1]} "
          f"of {Path(args.data).name}")
    print(f"uptime at start: {meta['machine_start']['uptime']}\nuptime at end:   {meta['uptime_end']}")
    for line in budgets:
        print(line)
    print("certified: absint margin > 1e-8 (its verdict rule), auto_LiRPA margin > 0\n")
    print(table)
    print(f"\nresults: {out_path} (+ {out_path.with_suffix('.csv').name})")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (BenchError, absint.AbsintError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
