"""Issue 14's targets in one command: run, re-attack, score, tabulate.

    nice -n 10 python benchmarks/kpoly_targets.py --workers 2            # the whole run (resumes)
    python benchmarks/kpoly_targets.py --summary-only                    # the table of what is done
    python benchmarks/kpoly_targets.py --config configs/kpoly_targets_triage.toml   # triage, separately

1. ``absint bench CONFIG`` (default ``configs/kpoly_targets.toml``: ``kpoly`` and ``refinepoly`` at 60 s
   per image on the ERAN MNIST networks, images 0–199 and 500–599, ``bab`` at 30 s on mnistfc); every
   option of every column is in the config, the rows record verdict, margin, wall and CPU seconds;
2. every image any column verified is re-attacked with the strong PGD of ``benchmarks/pgd_recheck.py``
   (a success would be a soundness bug: counted as a contradiction);
3. the mnistfc rows are scored against ``truth.csv`` (a verified sat or falsified unsat is wrong);
4. the target table — per network and slice: correctly classified images, certified per column,
   the rate per 100 correctly classified next to PRIMA's published rate, median and total CPU and
   wall seconds, contradictions — is printed and written beside the results (``.md``), with the
   command, ``uptime`` at the start and the end, and the git revision.
"""
from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import git_revision, markdown_table, median, uptime  # noqa: E402
from pgd_recheck import broken_by_pgd  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("kpoly_targets")

#: PRIMA's published certified count per 1000 images / correctly classified (bench README) → rate per 100.
PRIMA_RATE = {"mnist_relu_6_100.onnx": 510 / 960 * 100, "mnist_relu_9_100.onnx": 428 / 947 * 100,
              "mnist_relu_6_200.onnx": 690 / 972 * 100, "mnist_convsmall.onnx": 598 / 980 * 100}
#: issue 14's thresholds (per 100 correctly classified)
TARGET_RATE = {"mnist_relu_6_100.onnx": 53, "mnist_relu_9_100.onnx": 45, "mnist_relu_6_200.onnx": 71,
               "mnist_convsmall.onnx": 61}


def run_bench(config: Path, extra: list[str]) -> int:
    # `python -m absint.cli` would not see the bench subcommand (it registers into absint.cli, not __main__)
    cmd = [sys.executable, "-c", "import sys; from absint.cli import main; sys.exit(main(sys.argv[1:]))",
           "bench", str(config), *extra]
    log.info("running: %s", " ".join(cmd))
    return subprocess.run(cmd, cwd=ROOT).returncode


def results_path(config: Path, override: str | None) -> Path:
    if override:
        return Path(override)
    import tomllib

    return ROOT / tomllib.loads(config.read_text())["results"]


def pgd_recheck(rows: list[dict[str, Any]], cache: Path) -> dict[tuple[str, int], bool]:
    """``(network, image) → broken`` for every verified ERAN image (cached in ``cache``)."""
    import absint

    done: dict[tuple[str, int], bool] = {}
    if cache.exists():
        for line in cache.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                done[(r["network"], int(r["image"]))] = bool(r["broken"])
    todo = sorted({(Path(r["network"]).name, int(r["input"]), float(r["eps"])) for r in rows
                   if r["verdict"] == "verified" and r.get("eps") not in (None, "")})
    todo = [t for t in todo if (t[0], t[1]) not in done]
    if not todo:
        return done
    data = np.load(ROOT / ".." / "shared" / "bench" / "eran" / "mnist_test_1000.npz")
    X, Y = data["images"].astype(np.float64), data["labels"]
    graphs: dict[str, Any] = {}
    with open(cache, "a") as fh:
        for net, i, eps in todo:
            g = graphs.get(net) or graphs.setdefault(net, absint.load_network(ROOT / ".." / "shared" / "bench" / "eran" / net))
            broken = broken_by_pgd(g, X[i], int(Y[i]), eps)
            done[(net, i)] = broken
            fh.write(json.dumps({"network": net, "image": i, "broken": broken}) + "\n")
            if broken:
                log.error("CONTRADICTION: %s image %d verified but broken by PGD", net, i)
    return done


def eran_table(rows: list[dict[str, Any]], pgd: dict[tuple[str, int], bool]) -> str:
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        if r.get("eps") in (None, ""):
            continue
        groups.setdefault((r["benchmark"], r["analysis"]), []).append(r)
    head = ["experiment", "analysis", "correct", "certified", "per 100 correct", "target / PRIMA per 100",
            "falsified", "median CPU s", "median wall s", "total CPU s", "total wall s", "PGD contradictions"]
    out = []
    for (bench, an), rs in sorted(groups.items()):
        net = Path(rs[0]["network"]).name
        correct = [r for r in rs if r.get("correct", True) and r["verdict"] != "misclassified"]
        ver = [r for r in correct if r["verdict"] == "verified"]
        rate = 100.0 * len(ver) / max(1, len(correct))
        bad = sum(pgd.get((net, int(r["input"])), False) for r in ver)
        cpu = [float(r.get("cpu_seconds") or 0.0) for r in correct]
        wall = [float(r.get("seconds") or 0.0) for r in correct]
        tgt = f"{TARGET_RATE.get(net, '–')} / {PRIMA_RATE[net]:.1f}" if net in PRIMA_RATE else "–"
        out.append([bench, an, len(correct), f"**{len(ver)}**", f"{rate:.1f}", tgt,
                    sum(r["verdict"] == "falsified" for r in correct), median(cpu), median(wall), sum(cpu), sum(wall), bad])
    return markdown_table(head, out)


def mnistfc_table(rows: list[dict[str, Any]]) -> str:
    from absint.bench.score import read_truth, score

    fc = [r for r in rows if r.get("eps") in (None, "")]
    if not fc:
        return "(no mnistfc rows)"
    rep = score(fc, read_truth(ROOT / ".." / "shared" / "bench" / "mnistfc" / "truth.csv"))
    head = ["analysis", "instances", "unsat proved (of 49)", "sat falsified (of 22)", "wrong", "unknown", "time-outs",
            "median s", "total CPU s"]
    out = []
    for a, s in sorted(rep.scores.items()):
        cpu = sum(float(r.get("cpu_seconds") or 0.0) for r in fc if r["analysis"] == a)
        out.append([a, s.instances, f"**{s.correct_unsat}**", s.correct_sat, s.wrong, s.unknown, s.timeout,
                    s.median_seconds, cpu])
    return markdown_table(head, out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "kpoly_targets.toml")
    ap.add_argument("--out", default=None, help="results file (default: the config's)")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--summary-only", action="store_true", help="tabulate what the results file holds; run nothing")
    ap.add_argument("--no-pgd", action="store_true", help="skip the PGD re-attack of verified images")
    ap.add_argument("bench_args", nargs="*", help="extra arguments for `absint bench` (after --)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    start = {"uptime": uptime(), "time": time.strftime("%Y-%m-%d %H:%M:%S"), "revision": git_revision()}
    out = results_path(args.config, args.out)
    t0, c0 = time.perf_counter(), time.process_time()
    if not args.summary_only:
        extra = ["--workers", str(args.workers), *(["--out", str(out)] if args.out else []), *args.bench_args]
        rc = run_bench(args.config, extra)
        if rc != 0:
            log.error("absint bench exited with %d; tabulating what is there", rc)
    from absint.bench.store import read_rows

    rows = read_rows(out) if out.exists() else []
    pgd = {} if args.no_pgd else pgd_recheck(rows, out.with_suffix(".pgd.jsonl"))
    end = {"uptime": uptime(), "time": time.strftime("%Y-%m-%d %H:%M:%S")}
    text = "\n".join([
        f"# kpoly targets ({args.config.name})", "",
        f"command: `python benchmarks/kpoly_targets.py {' '.join(argv if argv is not None else sys.argv[1:])}`",
        f"revision {start['revision']}; start {start['time']} ({start['uptime']}); end {end['time']} ({end['uptime']})",
        f"this driver: wall {time.perf_counter() - t0:.0f} s, CPU {time.process_time() - c0:.0f} s "
        "(per-instance CPU of the bench workers is in the table)", "",
        "## ERAN MNIST", "", eran_table(rows, pgd), "",
        f"PGD re-attack: {len(pgd)} verified images, {sum(pgd.values())} contradictions", "",
        "## mnistfc (truth.csv)", "", mnistfc_table(rows), ""])
    print(text)
    out.with_suffix(".md").write_text(text)
    return 1 if any(pgd.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
