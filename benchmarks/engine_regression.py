"""Did the bound-propagation engine (``domains/linear_bounds/``) regress? (issue 13, items 2 and 5)

Compares this working tree (the *candidate*, default; or ``--rev``) with a *baseline* revision
(``--baseline-rev``, default ``ca29be4``: main before the engine work, with the old DeepPoly of
``domains/deeppoly_backsub.py`` and the old ``alphapoly`` of ``domains/alpha.py``), each in its own
interpreter (``benchmarks/absint_worker.py`` with ``PYTHONPATH`` set to its checkout; the baseline
is a temporary ``git worktree``, removed afterwards), one torch thread, float64. The two are
interleaved query by query (the order flips every query) so load changes hit both alike.

Parts (``--parts``, all by default):

* ``deeppoly`` — per safety row the ``deeppoly`` lower bound at both revisions on every chain
  network of ``../shared/bench``: the ERAN MNIST nets (README eps, images ``--start`` …
  ``--start + --n − 1``, correctly classified ones), CIFAR ConvSmall (eps 2/255,
  ``cifar10_test_100.csv``, ``--cifar-n`` images), mnistfc 256x2/4/6 (every VNN-LIB instance) and
  ACAS Xu (``--acas`` instances of ``instances.csv``: all by default). Per network: rows compared,
  max |new − old|, max |new − old| / (1 + |old|), rows where the candidate is looser than the
  baseline by more than ``1e-9 (1 + |old|)``, certified counts, CPU per query (``process_time``).
* ``alphapoly`` — certified counts (default options, ``--alpha-timeout`` s per image) at both
  revisions on images ``--alpha-start`` … ``+ --alpha-n − 1`` of the ERAN MNIST nets.
* ``domains`` — ``box`` and ``deepzono`` certified counts at the candidate alone on images
  ``--dom-start`` … ``+ --dom-n − 1`` (the RESULTS.md table uses the first 1000).

A query is *certified* when every clause of its property has a row with a proved lower bound
``> 0`` on every region (robustness: every margin row ``y_label − y_j``). ``uptime`` is recorded at
start and end; results go to ``--out`` (``--record``: ``benchmarks/results/engine_regression.json``).

Command of the recorded run::

    nice -n 10 python benchmarks/engine_regression.py --record
"""
from __future__ import annotations

import argparse
import csv
import logging
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import (ERAN, ERAN_SUITE, ROOT, BenchError, LineWorker, default_out, git_revision,  # noqa: E402
                      load_npz, machine_record, margin_rows, markdown_table, uptime, write_json)
from rounding_overhead import add_worktree, remove_worktree  # noqa: E402

import numpy as np  # noqa: E402

log = logging.getLogger("engine_regression")
WORKER = Path(__file__).resolve().parent / "absint_worker.py"
BENCH = ERAN.parent
REL_TOL = 1e-9  # issue 13: "the same bounds as today (to 1e-9)"


class Revision:
    """One absint checkout in its own worker process."""

    def __init__(self, label: str, checkout: Path, revision: str) -> None:
        self.label, self.checkout, self.revision = label, checkout, revision
        self.worker = LineWorker([sys.executable, str(WORKER)], env={"PYTHONPATH": str(checkout)}, cwd=checkout,
                                 name=f"absint@{label}")
        self.absint_file = ""

    def check(self) -> None:
        self.absint_file = self.worker.request(cmd="hello")["absint_file"]
        if not Path(self.absint_file).resolve().is_relative_to(self.checkout.resolve()):
            raise BenchError(f"{self.label}: the worker imported absint from {self.absint_file}, not from {self.checkout}")

    def load(self, onnx: Path, analyses: dict[str, dict[str, Any]]) -> dict[str, Any]:
        return self.worker.request(cmd="load", onnx=str(onnx), analyses=analyses, threads=1)

    def predict(self, x: np.ndarray) -> int:
        return int(self.worker.request(cmd="predict", x=x.ravel().tolist(), shape=list(x.shape))["labels"][0])

    def bound(self, analysis: str, lo: np.ndarray, hi: np.ndarray, C: np.ndarray, d: np.ndarray,
              timeout: float | None = None) -> dict[str, Any]:
        return self.worker.request(cmd="bound", analysis=analysis, lo=lo.ravel().tolist(), hi=hi.ravel().tolist(),
                                   C=C[None].tolist(), d=d[None].tolist(), shape=[1, *lo.shape], timeout=timeout)


# ---------------------------------------------------------------------------------------------
# queries: (name, [(lo, hi, C, d, owner)]) — several regions for ACAS Xu property 6


def image_queries(X: np.ndarray, Y: np.ndarray, indices: list[int], eps: float, rev: Revision, shape: list[int],
                  n_classes: int) -> tuple[list[tuple[str, list]], int]:
    out = []
    for i in indices:
        x = X[i].reshape(shape)
        if rev.predict(x[None]) != int(Y[i]):
            continue
        lo, hi = np.clip(x - eps, 0, 1), np.clip(x + eps, 0, 1)
        C = margin_rows(int(Y[i]), n_classes)
        out.append((f"img{i}", [(lo, hi, C, np.zeros(len(C)), np.arange(len(C)))]))
    return out, len(indices)


def vnnlib_queries(rows: list[tuple[str, str]], root: Path, shape: list[int], n_out: int) -> list[tuple[str, list]]:
    from absint.vnnlib import parse_vnnlib  # this tree's parser (the spec is data; both revisions get the same rows)

    out = []
    for _, spec_file in rows:
        spec = parse_vnnlib(root / spec_file).check_network(tuple(shape), n_out)
        regions = []
        for inst in spec.instances:
            C, d, owner = inst.prop.stacked()
            regions.append((inst.region.lower, inst.region.upper, C, d, owner))
        out.append((spec_file, regions))
    return out


def certified(regions: list, lbs: list[np.ndarray | None]) -> bool:
    for (_, _, _, _, owner), lb in zip(regions, lbs):
        if lb is None:
            return False
        ok = np.zeros(int(owner.max()) + 1, dtype=bool)
        np.logical_or.at(ok, owner, lb > 0)
        if not ok.all():
            return False
    return True


def deviation(recs: list[dict[str, Any]], cand: str, base: str) -> dict[str, Any]:
    """How far column ``cand`` moved from column ``base`` (rows proved by both)."""
    pairs = [(x, y) for r in recs for x, y in zip(r[cand]["lb"], r[base]["lb"]) if x is not None and y is not None]
    new_a = np.concatenate([p[0] for p in pairs]) if pairs else np.zeros(0)
    old_a = np.concatenate([p[1] for p in pairs]) if pairs else np.zeros(0)
    diff = new_a - old_a
    scale = 1 + np.abs(old_a)
    s: dict[str, Any] = {"rows": int(diff.size)}
    if not diff.size:
        return s
    s.update(max_abs_dev=float(np.abs(diff).max()), max_rel_dev=float((np.abs(diff) / scale).max()),
             max_abs_old=float(np.abs(old_a).max()),
             rows_looser=int((diff < -REL_TOL * scale).sum()), rows_tighter=int((diff > REL_TOL * scale).sum()),
             rows_looser_any=int((diff < 0).sum()), rows_tighter_any=int((diff > 0).sum()),
             max_rel_looser=float(max(0.0, (-diff / scale).max())), max_rel_tighter=float(max(0.0, (diff / scale).max())),
             max_abs_looser=float(max(0.0, (-diff).max())), max_abs_tighter=float(max(0.0, diff.max())),
             # rows the candidate leaves unproved (≤ 0) where it is looser: what could cost a proof
             rows_looser_unproved=int(((diff < -REL_TOL * scale) & (new_a <= 0)).sum()),
             max_rel_looser_unproved=float(max(0.0, (-diff / scale)[new_a <= 0].max())) if (new_a <= 0).any() else 0.0,
             certified_lost=[r["query"] for r in recs if r[base]["certified"] and not r[cand]["certified"]],
             certified_gained=[r["query"] for r in recs if r[cand]["certified"] and not r[base]["certified"]])
    return s


def compare(queries: list[tuple[str, list]], cols: list[tuple[str, Revision, str]],
            timeout: float | None = None) -> dict[str, Any]:
    """Bounds of every query in every column ``(label, revision, analysis key)``, interleaved (the
    order flips every query); the first column is the candidate, every other one is compared to it."""
    recs = []
    for n, (name, regions) in enumerate(queries):
        order = cols if n % 2 == 0 else cols[::-1]
        rec: dict[str, Any] = {"query": name}
        for label, rev, key in order:
            lbs, cpu, wall, to = [], 0.0, 0.0, False
            for lo, hi, C, d, _ in regions:
                r = rev.bound(key, lo, hi, C, d, timeout)
                lbs.append(None if r["lb"] is None else np.asarray(r["lb"][0]))
                cpu, wall, to = cpu + r["cpu"], wall + r["wall"], to or r.get("timed_out", False)
            rec[label] = {"lb": lbs, "cpu": cpu, "wall": wall, "timed_out": to, "certified": certified(regions, lbs)}
        recs.append(rec)
    labels = [c[0] for c in cols]
    s: dict[str, Any] = {"queries": len(recs)}
    for lab in labels:
        cpu = [r[lab]["cpu"] for r in recs]
        s[lab] = {"certified": sum(r[lab]["certified"] for r in recs), "timed_out": sum(r[lab]["timed_out"] for r in recs),
                  "cpu_per_query_s": float(np.mean(cpu)) if cpu else float("nan"),
                  "median_cpu_s": float(np.median(cpu)) if cpu else float("nan")}
    for lab in labels[1:]:
        s[f"vs_{lab}"] = deviation(recs, labels[0], lab)
    records = [{"query": r["query"], **{lab: {**r[lab], "lb": [None if x is None else x.tolist() for x in r[lab]["lb"]]}
                                        for lab in labels}} for r in recs]
    return {"summary": s, "records": records}


# ---------------------------------------------------------------------------------------------
# the networks


def cifar_data(n: int) -> tuple[np.ndarray, np.ndarray]:
    rows = np.loadtxt(ERAN / "cifar10_test_100.csv", delimiter=",", dtype=np.float64)[:n]
    labels = rows[:, 0].astype(np.int64)
    images = rows[:, 1:].reshape(-1, 32, 32, 3).transpose(0, 3, 1, 2) / 255.0
    return images, labels


def instance_rows(folder: Path, which: str) -> dict[str, list[tuple[str, str]]]:
    """``instances.csv`` rows by network file; ``which``: ``all`` or ``K`` (the first K per property)."""
    by_net: dict[str, list[tuple[str, str]]] = {}
    per_prop: dict[str, int] = {}
    with open(folder / "instances.csv") as f:
        for row in csv.reader(f):
            if not row or row[0] == "onnx":
                continue
            onnx, spec = row[0].strip(), row[1].strip()
            if which != "all":
                if per_prop.get(spec, 0) >= int(which):
                    continue
                per_prop[spec] = per_prop.get(spec, 0) + 1
            by_net.setdefault(onnx, []).append((onnx, spec))
    return by_net


def run_deeppoly(args, revs: list[Revision], results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    X, Y = load_npz(ERAN / "mnist_test_1000.npz")
    idx = list(range(args.start, min(args.start + args.n, len(X))))
    nets: list[tuple[str, Path, Any]] = [(n, ERAN / f"{n}.onnx", ("mnist", ERAN_SUITE[n], idx)) for n in ERAN_SUITE]
    if args.cifar_n > 0:
        nets.append(("cifar_convsmall_pgd", ERAN / "cifar_convsmall_pgd.onnx", ("cifar", 2 / 255, args.cifar_n)))
    for folder, which in ((BENCH / "mnistfc", "all"), (BENCH / "acasxu", args.acas)):
        if which == "0":
            continue
        for onnx, rows in instance_rows(folder, which).items():
            nets.append((Path(onnx).stem, folder / onnx, ("vnnlib", folder, rows)))
    for name, path, (kind, a, b) in nets:
        if args.only and not any(o in name for o in args.only):
            continue
        shapes = [revs[0].load(path, {"deeppoly": {}})]
        cols = [("candidate", revs[0], "deeppoly"), ("baseline", revs[1], "deeppoly")]
        try:  # the old DeepPoly's outward margin switched off (revisions without fp_margin: no such column)
            shapes.append(revs[1].load(path, {"deeppoly": {}, "deeppoly_m0": {"analysis": "deeppoly",
                                                                             "domain_options": {"fp_margin": 0.0}}}))
            cols.append(("baseline_nomargin", revs[1], "deeppoly_m0"))
        except BenchError:
            shapes.append(revs[1].load(path, {"deeppoly": {}}))
        shape, n_out = shapes[0]["input_shape"], int(np.prod(shapes[0]["output_shape"]))
        t0 = time.time()
        if kind == "mnist":
            queries, total = image_queries(X, Y, b, a, revs[0], shape, n_out)
            what = f"images {b[0]}..{b[-1]} (eps {a:g}): {len(queries)} correctly classified of {total}"
        elif kind == "cifar":
            Xc, Yc = cifar_data(b)
            queries, total = image_queries(Xc, Yc, list(range(len(Xc))), a, revs[0], shape, n_out)
            what = f"images 0..{len(Xc) - 1} (eps 2/255): {len(queries)} correctly classified of {total}"
        else:
            queries = vnnlib_queries(b, a, shape, n_out)
            what = f"{len(queries)} VNN-LIB instances"
        res = compare(queries, cols)
        res.update(net=name, what=what, seconds=time.time() - t0)
        s = res["summary"]
        v, m = s["vs_baseline"], s.get("vs_baseline_nomargin", {})
        log.info("deeppoly %s: %s; rows %d, max rel dev %.3g (looser %d), vs fp_margin=0: max rel looser %.3g; "
                 "cert %d/%d (%.0f s)", name, what, v["rows"], v.get("max_rel_dev", 0), v.get("rows_looser", 0),
                 m.get("max_rel_looser", 0), s["baseline"]["certified"], s["candidate"]["certified"], res["seconds"])
        results.append(res)
        args.save()
    return results


def run_alphapoly(args, revs: list[Revision], results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    X, Y = load_npz(ERAN / "mnist_test_1000.npz")
    idx = list(range(args.alpha_start, min(args.alpha_start + args.alpha_n, len(X))))
    for name, eps in ERAN_SUITE.items():
        if args.only and not any(o in name for o in args.only):
            continue
        shapes = [rev.load(ERAN / f"{name}.onnx", {"alphapoly": {}}) for rev in revs]
        shape, n_out = shapes[0]["input_shape"], int(np.prod(shapes[0]["output_shape"]))
        queries, total = image_queries(X, Y, idx, eps, revs[0], shape, n_out)
        t0 = time.time()
        res = compare(queries, [("candidate", revs[0], "alphapoly"), ("baseline", revs[1], "alphapoly")],
                      timeout=args.alpha_timeout)
        res.update(net=name, what=f"images {idx[0]}..{idx[-1]} (eps {eps:g}): {len(queries)} correctly classified "
                   f"of {total}; time limit {args.alpha_timeout:g} s", seconds=time.time() - t0)
        s = res["summary"]
        log.info("alphapoly %s: cert %d (baseline) / %d (candidate), lost %s, gained %s (%.0f s)", name,
                 s["baseline"]["certified"], s["candidate"]["certified"], s["vs_baseline"].get("certified_lost"),
                 s["vs_baseline"].get("certified_gained"), res["seconds"])
        results.append(res)
        args.save()
    return results


def run_domains(args, cand: Revision, results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    X, Y = load_npz(ERAN / "mnist_test_1000.npz")
    idx = list(range(args.dom_start, min(args.dom_start + args.dom_n, len(X))))
    for name, eps in ERAN_SUITE.items():
        if args.only and not any(o in name for o in args.only):
            continue
        info = cand.load(ERAN / f"{name}.onnx", {"box": {}, "deepzono": {}})
        shape, n_out = info["input_shape"], int(np.prod(info["output_shape"]))
        queries, total = image_queries(X, Y, idx, eps, cand, shape, n_out)
        t0 = time.time()
        res: dict[str, Any] = {"net": name, "eps": eps, "images": total, "correct": len(queries)}
        for dom in ("box", "deepzono"):
            cpu, n_cert = [], 0
            for _, regions in queries:
                lo, hi, C, d, _ = regions[0]
                r = cand.bound(dom, lo, hi, C, d)
                cpu.append(r["cpu"])
                n_cert += certified(regions, [np.asarray(r["lb"][0])])
            res[dom] = {"certified": n_cert, "median_cpu_s": float(np.median(cpu)) if cpu else float("nan")}
        res["seconds"] = time.time() - t0
        log.info("domains %s: %d correct of %d; box %d, deepzono %d (%.0f s)", name, len(queries), total,
                 res["box"]["certified"], res["deepzono"]["certified"], res["seconds"])
        results.append(res)
        args.save()
    return results


# ---------------------------------------------------------------------------------------------
# report


def merge_acas(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The ACAS Xu networks as one entry (45 networks make a long table); the others unchanged."""
    acas = [r for r in results if r["net"].startswith("ACASXU")]
    if len(acas) < 2:
        return results
    recs = [rec for r in acas for rec in r["records"]]
    labels = [k for k in recs[0] if k != "query"]
    s: dict[str, Any] = {"queries": len(recs)}
    for lab in labels:
        cpu = [r[lab]["cpu"] for r in recs]
        s[lab] = {"certified": sum(r[lab]["certified"] for r in recs), "timed_out": sum(r[lab]["timed_out"] for r in recs),
                  "cpu_per_query_s": float(np.mean(cpu)), "median_cpu_s": float(np.median(cpu))}
    for lab in labels[1:]:
        s[f"vs_{lab}"] = deviation(recs, labels[0], lab)
    merged = {"net": f"ACAS Xu ({len(acas)} networks)", "what": f"{len(recs)} VNN-LIB instances", "summary": s}
    return [r for r in results if not r["net"].startswith("ACASXU")] + [merged]


def report(payload: dict[str, Any]) -> str:
    out = []
    if payload.get("deeppoly"):
        head = ["network", "queries", "rows", "max abs dev", "max rel dev", "rows looser > 1e-9·(1+|old|)",
                "rows tighter > 1e-9·(1+|old|)", "vs fp_margin=0: max rel looser / tighter (rows looser at all)",
                "certified old / new", "ms CPU per query old / new: median (mean)"]
        rows = []
        for r in merge_acas(payload["deeppoly"]):
            s = r["summary"]
            v, m = s["vs_baseline"], s.get("vs_baseline_nomargin", {})
            rows.append([r["net"], r["what"], v["rows"], v.get("max_abs_dev", 0.0), v.get("max_rel_dev", 0.0),
                         v.get("rows_looser", 0), v.get("rows_tighter", 0),
                         f"{m.get('max_rel_looser', 0.0):.2g} / {m.get('max_rel_tighter', 0.0):.2g} "
                         f"({m.get('rows_looser_any', 0)})",
                         f"{s['baseline']['certified']} / {s['candidate']['certified']}",
                         f"{1e3 * s['baseline']['median_cpu_s']:.2f} / {1e3 * s['candidate']['median_cpu_s']:.2f} "
                         f"({1e3 * s['baseline']['cpu_per_query_s']:.2f} / {1e3 * s['candidate']['cpu_per_query_s']:.2f})"])
        out += ["deeppoly lower bound per safety row, candidate (new) vs baseline (old, default fp_margin=1e-9;",
                "last-but-two column: vs the baseline with fp_margin=0, i.e. plain float arithmetic):", "",
                markdown_table(head, rows), ""]
    if payload.get("alphapoly"):
        head = ["network", "queries", "certified old / new", "time-outs old / new", "lost", "gained",
                "rows looser / tighter > 1e-9·(1+|old|)", "max rel looser / tighter",
                "looser rows still unproved (new ≤ 0): count, max rel", "s CPU per image old / new: mean (median)"]
        rows = []
        for r in payload["alphapoly"]:
            s = r["summary"]
            v = deviation(r["records"], "candidate", "baseline")  # recomputed: older files lack some fields
            rows.append([r["net"], r["what"], f"{s['baseline']['certified']} / {s['candidate']['certified']}",
                         f"{s['baseline']['timed_out']} / {s['candidate']['timed_out']}",
                         ", ".join(v.get("certified_lost", [])) or "–", ", ".join(v.get("certified_gained", [])) or "–",
                         f"{v.get('rows_looser', 0)} / {v.get('rows_tighter', 0)} of {v['rows']}",
                         f"{v.get('max_rel_looser', 0.0):.2g} / {v.get('max_rel_tighter', 0.0):.2g}",
                         f"{v.get('rows_looser_unproved', 0)}, {v.get('max_rel_looser_unproved', 0.0):.2g}",
                         f"{s['baseline']['cpu_per_query_s']:.2f} / {s['candidate']['cpu_per_query_s']:.2f} "
                         f"({s['baseline']['median_cpu_s']:.2f} / {s['candidate']['median_cpu_s']:.2f})"])
        out += ["alphapoly (default options) certified counts:", "", markdown_table(head, rows), ""]
    if payload.get("domains"):
        head = ["network", "images", "correct", "box certified", "deepzono certified", "ms CPU box / deepzono (median)"]
        rows = [[r["net"], r["images"], r["correct"], r["box"]["certified"], r["deepzono"]["certified"],
                 f"{1e3 * r['box']['median_cpu_s']:.2f} / {1e3 * r['deepzono']['median_cpu_s']:.2f}"]
                for r in payload["domains"]]
        out += ["box and deepzono at the candidate:", "", markdown_table(head, rows), ""]
    return "\n".join(out)


def _net_path(name: str) -> Path:
    if name.startswith("mnist-net"):
        return BENCH / "mnistfc" / "onnx" / f"{name}.onnx"
    if name.startswith("ACASXU"):
        return BENCH / "acasxu" / "onnx" / f"{name}.onnx"
    return ERAN / f"{name}.onnx"


def explain(payload: dict[str, Any]) -> list[dict[str, Any]]:
    """Where the candidate is looser than the float baseline (``fp_margin=0``): for each network's
    worst row, split the loss into (a) the final pass's rounding allowance and (b) the effect of
    the wider (rounding-widened) intermediate bounds, against the γ_n error scale.

    A dense back-substitution of that row in plain float64 (this process, this tree) through the
    candidate's own intermediate bounds (``early_stop=False``) gives ``ref``; ``ref − eng`` (``eng``:
    the engine's bound with the same options) is what the final pass paid for rounding, and the
    rest of ``old − new`` is what the wider (rounding-widened) intermediate bounds cost. ``S = Σ_v |λ_v|·(|A_v|·m_v +
    |b_v|)`` (``m_v``: magnitude of the node's input) is the sum of absolute terms the pass adds; the
    engine's allowance is of order ``2γ_{n+8+K}·S`` (``n``: longest dot product, ``K = 64``)."""
    import torch

    import absint
    from absint.interpreter import propagate
    from absint.ir import Affine, Reshape, Relu
    from absint.domains.deeppoly import DeepPolyDomain, DeepPolyOptions
    from absint.rounding import gamma

    X, Y = load_npz(ERAN / "mnist_test_1000.npz")
    out = []
    for res in payload.get("deeppoly", []):
        best = None
        for rec in res["records"]:
            if "baseline_nomargin" not in rec:
                break
            for k, (new, old) in enumerate(zip(rec["candidate"]["lb"], rec["baseline_nomargin"]["lb"])):
                if new is None or old is None:
                    continue
                new, old = np.asarray(new), np.asarray(old)
                rel = (old - new) / (1 + np.abs(old))
                j = int(rel.argmax())
                if best is None or rel[j] > best[0]:
                    best = (float(rel[j]), rec["query"], k, j, float(new[j]), float(old[j]))
        if best is None or best[0] <= 0:
            continue
        rel, query, region, row, new_lb, old_lb = best
        path = _net_path(res["net"])
        graph = absint.load_network(str(path))
        shape, n_out = tuple(graph.input_shape), int(np.prod(graph.output_shape))
        if query.startswith("img"):
            i = int(query[3:])
            if res["net"].startswith("cifar"):
                Xc, Yc = cifar_data(i + 1)
                x, lab, eps = Xc[i].reshape(shape), int(Yc[i]), 2 / 255
            else:
                x, lab, eps = X[i].reshape(shape), int(Y[i]), ERAN_SUITE[res["net"]]
            lo, hi = np.clip(x - eps, 0, 1), np.clip(x + eps, 0, 1)
            C, d = margin_rows(lab, n_out), np.zeros(n_out - 1)
        else:
            folder = path.parent.parent
            _, regions = vnnlib_queries([("", query)], folder, list(shape), n_out)[0]
            lo, hi, C, d, _ = regions[region]
        t = lambda a: torch.as_tensor(np.asarray(a, dtype=np.float64))  # noqa: E731
        # early_stop=False: the relaxations then use exactly the bounds ``dom.bounds`` reports (with the
        # default early stopping they may not, and old and new alike can differ from full back-substitution)
        dom = DeepPolyDomain(DeepPolyOptions(early_stop=False))
        prop = propagate(graph, dom, t(lo)[None], t(hi)[None], keep_all=True)
        eng = float(dom.linear_bounds(prop.output, t(C[row])[None, None], t([d[row]])[None])[0, 0])
        bnd = {n.name: tuple(b[0].reshape(-1) for b in dom.bounds(prop.elements[n.name])) for n in graph.nodes}
        layers, n_max = [], 0
        for node in graph.nodes[1:]:
            if isinstance(node, Reshape):
                continue
            src = node.inputs[0]
            l_in, u_in = bnd[src]
            m = torch.maximum(l_in.abs(), u_in.abs())
            if isinstance(node, Affine):
                op = node.operator
                n_in = int(np.prod(op.in_shape))
                W = op.forward(torch.eye(n_in, dtype=torch.float64).reshape(n_in, *op.in_shape)).reshape(n_in, -1).T
                b = torch.broadcast_to(node.bias_full() if hasattr(node, "bias_full") else node.bias, node.shape).reshape(-1)
                n_max = max(n_max, int((W != 0).sum(1).max()))
                layers.append(("aff", W, b.to(torch.float64), m))
            elif isinstance(node, Relu):
                l, u = l_in, u_in
                act, unst = l >= 0, (l < 0) & (u > 0)
                ch = torch.where(unst, u / torch.where(unst, u - l, torch.ones_like(u)), torch.zeros_like(u))
                ls = torch.where(act | (unst & (u > -l)), torch.ones_like(u), torch.zeros_like(u))
                us = torch.where(act, torch.ones_like(u), ch)
                uo = torch.where(unst, -ch * l, torch.zeros_like(u))
                layers.append(("relu", ls, us, uo, m))
            else:
                raise BenchError(f"explain: no dense reference for {type(node).__name__}")
        lam, const = t(C[row]), float(d[row])
        S = abs(const)
        for layer in reversed(layers):
            if layer[0] == "aff":
                _, W, b, m = layer
                S += float(lam.abs() @ (W.abs() @ m + b.abs()))
                const += float(lam @ b)
                lam = lam @ W
            else:
                _, ls, us, uo, m = layer
                pos, neg = lam.clamp(min=0), lam.clamp(max=0)
                S += float(lam.abs() @ (torch.maximum(ls, us) * m + uo.abs()))
                const += float(neg @ uo)
                lam = pos * ls + neg * us
        l0, u0 = t(lo).reshape(-1), t(hi).reshape(-1)
        S += float(lam.abs() @ torch.maximum(l0.abs(), u0.abs()))
        ref = const + float(lam.clamp(min=0) @ l0 + lam.clamp(max=0) @ u0)
        g = gamma(n_max + 8 + 64, torch.float64)
        rec = {"net": res["net"], "query": query, "row": row, "rel_looser": rel, "old_float": old_lb, "new": new_lb,
               "ref_float_on_new_intermediates": ref, "engine_no_early_stop": eng, "final_pass_loss": ref - eng,
               "other_loss": old_lb - new_lb - (ref - eng),
               "S": S, "n": n_max, "gamma_n": g, "two_gamma_S": 2 * g * S}
        log.info("explain %s %s row %d: old−new %.3g (rel %.3g) = final pass %.3g + wider intermediates %.3g; "
                 "2γ_%d·S = %.3g (S %.3g)", res["net"], query, row, old_lb - new_lb, rel, ref - eng,
                 old_lb - new_lb - (ref - eng), n_max + 72, 2 * g * S, S)
        out.append(rec)
    return out


def explain_table(rows: list[dict[str, Any]]) -> str:
    head = ["network", "worst row", "old (fp_margin=0) − new", "rel", "final pass (≤ 2γ·S?)", "wider intermediates",
            "2γ_n·S", "S = Σ|terms|"]
    return markdown_table(head, [[r["net"], f"{r['query']} #{r['row']}", r["old_float"] - r["new"], r["rel_looser"],
                                  r["final_pass_loss"], r["other_loss"], r["two_gamma_S"], r["S"]] for r in rows])


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline-rev", default="ca29be4")
    ap.add_argument("--rev", default=None, help="candidate revision (default: this working tree)")
    ap.add_argument("--parts", nargs="+", default=["deeppoly", "alphapoly", "domains"])
    ap.add_argument("--only", nargs="*", default=None, help="only networks whose name contains one of these")
    ap.add_argument("--start", type=int, default=0)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--cifar-n", type=int, default=100)
    ap.add_argument("--acas", default="all", help="ACAS Xu instances: 'all', K (first K per property) or 0")
    ap.add_argument("--alpha-start", type=int, default=0)
    ap.add_argument("--alpha-n", type=int, default=100)
    ap.add_argument("--alpha-timeout", type=float, default=30.0)
    ap.add_argument("--dom-start", type=int, default=0)
    ap.add_argument("--dom-n", type=int, default=1000)
    ap.add_argument("--out", default=None)
    ap.add_argument("--record", action="store_true", help="write benchmarks/results/engine_regression.json")
    ap.add_argument("--report", metavar="JSON", default=None, help="only print the tables of a saved run")
    ap.add_argument("--explain", metavar="JSON", default=None,
                    help="only explain the worst deeppoly rows of a saved run (adds 'explain' to that file)")
    ap.add_argument("-v", "--verbose", action="store_true")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(message)s")
    if args.report:
        import json

        saved = json.loads(Path(args.report).read_text())
        print(report(saved))
        if saved.get("explain"):
            print(explain_table(saved["explain"]))
        return 0
    if args.explain:
        import json

        saved = json.loads(Path(args.explain).read_text())
        saved["explain"] = explain(saved)
        write_json(Path(args.explain), saved)
        print(explain_table(saved["explain"]))
        return 0
    out_path = default_out("engine_regression", args.record, args.out)
    payload: dict[str, Any] = {"meta": {
        "command": " ".join([sys.executable] + (sys.argv if argv is None else [__file__, *argv])),
        "machine_start": machine_record(), "threads": 1, "rel_tol": REL_TOL}}
    args.save = lambda: write_json(out_path, payload)
    log.info("start: %s", payload["meta"]["machine_start"]["uptime"])
    worktrees: list[Path] = []
    revs: list[Revision] = []
    try:
        for label, rev in (("candidate", args.rev), ("baseline", args.baseline_rev)):
            if rev is None:
                checkout, rid = ROOT, git_revision(ROOT)
            else:
                checkout, sha = add_worktree(rev)
                worktrees.append(checkout)
                rid = f"{rev} ({sha[:12]})"
            revs.append(Revision(label, checkout, rid))
        for r in revs:
            r.check()
        payload["meta"]["revisions"] = {r.label: {"revision": r.revision, "absint": r.absint_file} for r in revs}
        log.info("%s", " vs ".join(f"{r.label} {r.revision}" for r in revs))
        if "deeppoly" in args.parts:
            run_deeppoly(args, revs, payload.setdefault("deeppoly", []))
        if "alphapoly" in args.parts:
            run_alphapoly(args, revs, payload.setdefault("alphapoly", []))
        if "domains" in args.parts:
            run_domains(args, revs[0], payload.setdefault("domains", []))
    finally:
        for r in revs:
            r.worker.begin_close()
        for r in revs:
            r.worker.close()
        for wt in worktrees:
            remove_worktree(wt)
        payload["meta"]["uptime_end"] = uptime()
        write_json(out_path, payload)
    print("\n" + "; ".join(f"{r.label}: {r.revision}" for r in revs) + "; 1 torch thread, float64")
    print(f"uptime at start: {payload['meta']['machine_start']['uptime']}\nuptime at end:   {payload['meta']['uptime_end']}\n")
    print(report(payload))
    print(f"results: {out_path}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
