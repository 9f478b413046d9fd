"""The cost of sound floating-point rounding (issue 15: ≤ 10 % of DeepPoly's per-image time).

Measures per-image CPU time (``time.process_time``) and wall time of ``deeppoly``, ``box`` and
``deepzono`` (``--domains``) on the ERAN MNIST networks (README eps), images ``--start`` …
``--start + --n − 1`` (the correctly classified ones), at two revisions side by side:

* the candidate: this working tree (default) or ``--rev REV``;
* the baseline ``--baseline-rev REV`` (e.g. the commit before rounding landed), checked out into
  a temporary ``git worktree`` that is removed afterwards.

Each revision runs in its own interpreter (``benchmarks/absint_worker.py`` with ``PYTHONPATH``
set to its checkout; the script checks which ``absint`` each one imported), one torch thread,
float64. The two are interleaved image by image (the order flips on every image) and each
``Analysis.bound`` call is repeated ``--repeat`` times, keeping the fastest, so load changes hit
both alike. Printed per network and domain: certified counts, median CPU and wall per image,
the candidate/baseline ratio of the medians and of the totals, and how far the bounds moved
(rounding should widen them by tiny amounts only). ``uptime`` is recorded at start and end;
results go to ``--out`` (default: a temporary file; ``--record``:
``benchmarks/results/rounding_overhead.json``).

Without ``--baseline-rev`` only the candidate is measured; ``--baseline-rev HEAD`` on a clean tree
(the same code twice) shows the noise floor of the ratio. Quiet-machine command::

    python benchmarks/rounding_overhead.py --baseline-rev <commit before rounding> --record
"""
from __future__ import annotations

import argparse
import logging
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import (ERAN, ERAN_SUITE, ROOT, BenchError, LineWorker, NetSpec, default_out,  # noqa: E402
                      git_revision, load_npz, machine_record, margin_rows, markdown_table, median, parse_net,
                      ratio, uptime, write_json)

import numpy as np  # noqa: E402

log = logging.getLogger("rounding_overhead")
WORKER = Path(__file__).resolve().parent / "absint_worker.py"
TOLERANCE = 0.0  # absint's verdict rule: a margin counts as proved when strictly above this


class Revision:
    """One absint checkout measured in its own worker process."""

    def __init__(self, label: str, checkout: Path, revision: str, threads: int) -> None:
        self.label, self.checkout, self.revision, self.threads = label, checkout, revision, threads
        self.worker = LineWorker([sys.executable, str(WORKER)], env={"PYTHONPATH": str(checkout)}, cwd=checkout,
                                 name=f"absint@{label}")
        self.absint_file = ""

    def check(self) -> None:
        """Wait until the worker has started; make sure it imported the checkout's absint."""
        self.absint_file = self.worker.request(cmd="hello")["absint_file"]
        if not Path(self.absint_file).resolve().is_relative_to(self.checkout.resolve()):
            raise BenchError(f"{self.label}: the worker imported absint from {self.absint_file}, not from "
                             f"{self.checkout} (an installed absint shadows PYTHONPATH?)")

    def load(self, net: NetSpec, domains: list[str]) -> dict[str, Any]:
        return self.worker.request(cmd="load", onnx=str(net.path), analyses={d: {} for d in domains},
                                   threads=self.threads)

    def predict(self, x: np.ndarray) -> int:
        return int(self.worker.request(cmd="predict", x=x.ravel().tolist(), shape=list(x.shape))["labels"][0])

    def bound(self, domain: str, lo: np.ndarray, hi: np.ndarray, C: np.ndarray, repeat: int) -> dict[str, Any]:
        best: dict[str, Any] | None = None
        for _ in range(max(1, repeat)):
            r = self.worker.request(cmd="bound", analysis=domain, lo=lo.ravel().tolist(), hi=hi.ravel().tolist(),
                                    C=C.tolist(), shape=list(lo.shape))
            if best is None or r["cpu"] < best["cpu"]:
                best = {"cpu": r["cpu"], "wall": r["wall"], "lb": r["lb"]}
        assert best is not None
        return best

    def close(self) -> None:
        self.worker.close()


def add_worktree(rev: str) -> tuple[Path, str]:
    """A detached ``git worktree`` of ``rev`` in a temporary folder: (path, full commit id)."""
    try:
        sha = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--verify", f"{rev}^{{commit}}"],
                             capture_output=True, text=True, check=True).stdout.strip()
    except subprocess.CalledProcessError as exc:
        raise BenchError(f"{rev!r} is not a commit of {ROOT}: {exc.stderr.strip()}") from None
    path = Path(tempfile.mkdtemp(prefix=f"absint-{sha[:10]}-")) / "checkout"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(path), sha],
                   capture_output=True, text=True, check=True)
    return path, sha


def remove_worktree(path: Path) -> None:
    subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(path)], capture_output=True, text=True)
    try:
        path.parent.rmdir()
    except OSError:
        pass


def run_network(net: NetSpec, X: np.ndarray, Y: np.ndarray, indices: list[int], revs: list[Revision],
                domains: list[str], repeat: int) -> dict[str, Any]:
    """Interleaved per-image measurement of every domain at every revision."""
    shapes = [rev.load(net, domains) for rev in revs]
    shape = shapes[0]["input_shape"]
    n_classes = int(np.prod(shapes[0]["output_shape"]))
    records = []
    warm = True
    for n, i in enumerate(indices):
        x = X[i].reshape(1, *shape)
        C = margin_rows(int(Y[i]), n_classes)[None]
        if revs[0].predict(x) != int(Y[i]):  # misclassified: not part of the count
            continue
        lo, hi = np.clip(x - net.eps, 0, 1), np.clip(x + net.eps, 0, 1)
        if warm:  # first calls allocate; not recorded
            for d in domains:
                for rev in revs:
                    rev.bound(d, lo, hi, C, 1)
            warm = False
        rec: dict[str, Any] = {"net": net.name, "image": i, "label": int(Y[i])}
        order = revs if n % 2 == 0 else revs[::-1]
        for d in domains:
            for rev in order:
                r = rev.bound(d, lo, hi, C, repeat)
                r["certified"] = bool(min(r["lb"][0]) > TOLERANCE)
                rec[f"{d}@{rev.label}"] = r
        records.append(rec)
    return {"net": net.name, "eps": net.eps, "images": len(indices), "correct": len(records), "records": records,
            "summary": summarize(records, domains, [r.label for r in revs])}


def summarize(records: list[dict[str, Any]], domains: list[str], labels: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for d in domains:
        s: dict[str, Any] = {}
        for lab in labels:
            rs = [r[f"{d}@{lab}"] for r in records]
            s[lab] = {"certified": sum(r["certified"] for r in rs), "median_cpu_s": median([r["cpu"] for r in rs]),
                      "median_wall_s": median([r["wall"] for r in rs]), "total_cpu_s": sum(r["cpu"] for r in rs)}
        if len(labels) == 2:
            cand, base = labels
            s["cpu_ratio_median"] = ratio(s[cand]["median_cpu_s"], s[base]["median_cpu_s"])
            s["cpu_ratio_total"] = ratio(s[cand]["total_cpu_s"], s[base]["total_cpu_s"])
            s["wall_ratio_median"] = ratio(s[cand]["median_wall_s"], s[base]["median_wall_s"])
            diffs = [np.asarray(r[f"{d}@{cand}"]["lb"]) - np.asarray(r[f"{d}@{base}"]["lb"]) for r in records]
            dd = np.concatenate([x.ravel() for x in diffs]) if diffs else np.zeros(0)
            s["bound_change"] = {"rows": int(dd.size), "looser": int((dd < 0).sum()), "tighter": int((dd > 0).sum()),
                                 "max_loosening": max(0.0, float(-dd.min())) if dd.size else 0.0,
                                 "max_tightening": max(0.0, float(dd.max())) if dd.size else 0.0}
        out[d] = s
    return out


def report(results: list[dict[str, Any]], domains: list[str], labels: list[str]) -> str:
    two = len(labels) == 2
    head = ["network", "domain", "correct"]
    for lab in labels:
        head += [f"cert. {lab}", f"CPU ms {lab}", f"wall ms {lab}"]
    if two:
        head += ["CPU ratio (median)", "CPU ratio (total)", "wall ratio", "rows looser / tighter", "max loosening"]
    rows = []
    for res in results:
        for d in domains:
            s = res["summary"][d]
            row: list[Any] = [res["net"], d, f"{res['correct']}/{res['images']}"]
            for lab in labels:
                row += [s[lab]["certified"], 1e3 * s[lab]["median_cpu_s"], 1e3 * s[lab]["median_wall_s"]]
            if two:
                b = s["bound_change"]
                row += [f"**{s['cpu_ratio_median']:.3f}**", f"{s['cpu_ratio_total']:.3f}", f"{s['wall_ratio_median']:.3f}",
                        f"{b['looser']} / {b['tighter']} of {b['rows']}", b["max_loosening"]]
            rows.append(row)
    return markdown_table(head, rows)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline-rev", default=None, help="git revision to compare against (a temporary worktree)")
    ap.add_argument("--rev", default=None, help="candidate revision (default: this working tree as it is)")
    ap.add_argument("--nets", nargs="+", default=list(ERAN_SUITE), help="ERAN names or PATH.onnx:EPS")
    ap.add_argument("--data", default=str(ERAN / "mnist_test_1000.npz"))
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--start", type=int, default=0)
    ap.add_argument("--domains", nargs="+", default=["deeppoly", "box", "deepzono"])
    ap.add_argument("--repeat", type=int, default=3, help="runs per image and revision; the fastest counts")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None)
    ap.add_argument("--record", action="store_true", help="write benchmarks/results/rounding_overhead.json")
    ap.add_argument("-v", "--verbose", action="store_true")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    nets = [parse_net(t) for t in args.nets]
    X, Y = load_npz(args.data)
    indices = list(range(args.start, min(args.start + args.n, len(X))))
    if not indices:
        raise BenchError(f"no images in [{args.start}, {args.start + args.n})")
    worktrees: list[Path] = []
    revs: list[Revision] = []
    out_path = default_out("rounding_overhead", args.record, args.out)
    meta: dict[str, Any] = {"command": " ".join([sys.executable] + (sys.argv if argv is None else [__file__, *argv])),
                            "machine_start": machine_record(), "domains": args.domains, "repeat": args.repeat,
                            "threads": args.threads, "data": args.data}
    log.info("start: %s", meta["machine_start"]["uptime"])
    results: list[dict[str, Any]] = []
    try:
        for label, rev in (("candidate", args.rev), ("baseline", args.baseline_rev)):
            if label == "baseline" and rev is None:
                continue
            if rev is None:
                checkout, rid = ROOT, git_revision(ROOT)
            else:
                checkout, sha = add_worktree(rev)
                worktrees.append(checkout)
                rid = f"{rev} ({sha[:12]})"
            revs.append(Revision(label, checkout, rid, args.threads))
        for r in revs:  # the workers start side by side
            r.check()
        meta["revisions"] = {r.label: {"revision": r.revision, "absint": r.absint_file} for r in revs}
        for net in nets:
            log.info("%s (eps %g): images %d..%d, %s", net.name, net.eps, indices[0], indices[-1],
                     " vs ".join(f"{r.label} {r.revision}" for r in revs))
            results.append(run_network(net, X, Y, indices, revs, args.domains, args.repeat))
            write_json(out_path, {"meta": meta, "results": results})
    finally:
        for r in revs:
            r.worker.begin_close()
        for r in revs:
            r.close()
        for wt in worktrees:
            remove_worktree(wt)
    meta["uptime_end"] = uptime()
    write_json(out_path, {"meta": meta, "results": results})
    labels = [r.label for r in revs]
    print("\n" + "; ".join(f"{r.label}: {r.revision}" for r in revs) + f"; {args.threads} thread(s), float64, "
          f"best of {args.repeat} per image; images {indices[0]}..{indices[-1]}")
    print(f"uptime at start: {meta['machine_start']['uptime']}\nuptime at end:   {meta['uptime_end']}\n")
    print(report(results, args.domains, labels))
    if len(labels) == 2:
        print("\nissue 15 target: deeppoly CPU ratio (candidate / baseline) <= 1.10")
    print(f"\nresults: {out_path}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
