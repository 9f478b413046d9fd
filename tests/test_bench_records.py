"""Honest experiment records: settings, provenance, counterexamples and times in every row; settings
in the resume key; results in the user folder; committed results announced; ``absint score`` with
several truth files, conflicts and the scope of what was run."""
from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from absint.bench import parse_config, plan_tasks, read_rows, run_config
from absint.bench.config import check_analyses, results_dir
from absint.bench.score import format_score, read_truths, score
from absint.bench.store import ResultStore, read_many
from absint.cli import main
from absint.provenance import git_commit, provenance

ROOT = Path(__file__).resolve().parents[1]
NET = ROOT / "networks" / "digits_mlp_2x64.onnx"
DATA = ROOT / "networks" / "digits_test.npz"


def _cfg(out: Path | None, eps: float = 0.08, count: int = 6, base: str = "deeppoly", **analysis_table) -> dict:
    data = {"name": "rec", "analyses": ["box", "dp"], "timeout": 20,
            "experiment": [{"name": "digits", "network": str(NET), "data": str(DATA), "eps": eps, "count": count}],
            "analysis": {"dp": {"base": base, **analysis_table}}}
    if out is not None:
        data["results"] = str(out)
    return data


def test_rows_carry_settings_provenance_counterexamples_and_times(tmp_path: Path) -> None:
    out = tmp_path / "r.jsonl"
    run_config(check_analyses(parse_config(_cfg(out), root=tmp_path)))
    rows = read_rows(out)
    assert len(rows) == 12
    prov = provenance()
    for r in rows:
        assert r["options"]["analysis"] in ("box", "deeppoly") and r["options"]["timeout"] == 20.0
        assert r["options"]["clip"] == [0.0, 1.0] and r["options"]["attack"] is True
        assert len(r["options_hash"]) == 12 and r["version"] == prov["version"]
        assert r["commit"].startswith(git_commit() or "")  # this test runs from a checkout
        assert r["domain"] == r["options"]["analysis"]  # a domain analysis runs its own domain
        assert r["seconds"] is not None and r["cpu_seconds"] is not None
    falsified = [r for r in rows if r["verdict"] == "falsified"]
    assert falsified, "eps 0.08 on the digits MLP has falsified images"
    with np.load(DATA) as f:
        images = f["images"]
    for r in falsified:
        x = np.asarray(r["counterexample"])
        assert x.shape == (64,)
        # inside the clipped eps-ball around the image
        img = images[int(r["input"])].reshape(-1)
        assert np.all(x >= np.clip(img - 0.08, 0, 1) - 1e-12) and np.all(x <= np.clip(img + 0.08, 0, 1) + 1e-12)
    assert all(r["counterexample"] is None for r in rows if r["verdict"] != "falsified")
    # the same through CSV: JSON cells come back as structures
    csv_out = tmp_path / "r.csv"
    run_config(check_analyses(parse_config(_cfg(csv_out, count=2), root=tmp_path)))
    assert read_rows(csv_out)[0]["options"]["analysis"] in ("box", "deeppoly")


def test_changed_option_reruns_instead_of_keeping_old_rows(tmp_path: Path) -> None:
    out = tmp_path / "r.jsonl"
    first = check_analyses(parse_config(_cfg(out, count=3, base="alphapoly", iters=0), root=tmp_path))
    assert run_config(first).instances == 6
    assert run_config(first).instances == 0  # same settings: resumed, nothing to do
    changed = check_analyses(parse_config(_cfg(out, count=3, base="alphapoly", iters=2), root=tmp_path))
    tasks = plan_tasks(changed, ResultStore(out).done())
    assert {t.analysis for t in tasks} == {"dp"} and sum(t.size for t in tasks) == 3
    longer = parse_config({**_cfg(out, count=3, base="alphapoly", iters=0), "timeout": 30}, root=tmp_path)
    assert sum(t.size for t in plan_tasks(check_analyses(longer), ResultStore(out).done())) == 6
    run_config(changed)
    rows = read_rows(out)
    assert len(rows) == 9  # append-only: the old rows stay in the file ...
    latest = read_many([out])  # ... and reports read the newest row of each instance
    assert len(latest) == 6
    assert all(r["options"]["options"] == {"iters": 2} for r in latest if r["analysis"] == "dp")


def test_rerun_replaces_rows(tmp_path: Path) -> None:
    out = tmp_path / "r.jsonl"
    cfg = check_analyses(parse_config(_cfg(out, count=2), root=tmp_path))
    run_config(cfg)
    assert run_config(cfg, rerun=True).instances == 4
    assert len(read_rows(out)) == 4


def test_error_rows_have_times(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx file")
    (tmp_path / "p.vnnlib").write_text("(declare-const X_0 Real)\n")
    (tmp_path / "instances.csv").write_text("bad.onnx,p.vnnlib,10\n")
    out = tmp_path / "r.jsonl"
    run_config(parse_config({"analyses": ["box"], "results": str(out),
                             "experiment": [{"name": "v", "instances": str(tmp_path / "instances.csv")}]},
                            root=tmp_path))
    (row,) = read_rows(out)
    assert row["verdict"] == "error" and row["seconds"] is not None and row["seconds"] >= 0
    assert row["cpu_seconds"] is not None and row["options_hash"]


def test_results_default_to_the_user_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = parse_config(_cfg(None, count=2), root=tmp_path)
    assert cfg.results == results_dir() / "rec.jsonl"
    assert main(["bench", "--network", str(NET), "--data", str(DATA), "--eps", "0.01", "-n", "2", "-a", "box",
                 "-q"]) == 0
    assert len(read_rows(results_dir() / "digits_mlp_2x64.jsonl")) == 2
    assert not list(tmp_path.glob("**/*.jsonl"))


def _git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.email=t@example.com", "-c", "user.name=t", *args], cwd=cwd, check=True,
                   capture_output=True)


def test_run_over_committed_results_says_so_and_reruns(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    repo = tmp_path / "repo"
    (repo / "configs").mkdir(parents=True)
    committed = repo / "benchmarks" / "results" / "rec.jsonl"
    config = repo / "configs" / "rec.toml"
    config.write_text(f'name = "rec"\nanalyses = ["box"]\nreference = "benchmarks/results/rec.jsonl"\n'
                      f'[[experiment]]\nname = "digits"\nnetwork = "{NET}"\ndata = "{DATA}"\neps = 0.02\ncount = 2\n')
    assert main(["bench", str(config), "--out", str(committed), "-q"]) == 0
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "results")
    capsys.readouterr()
    assert main(["bench", str(config), "--out", str(committed), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "nothing to run" in out and "committed" in out and "--rerun" in out
    # the default run writes to the user folder and points at the committed reference
    assert main(["bench", str(config), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "2 instance(s) to run" in out and f"results committed with this config: {committed}" in out
    assert main(["bench", str(config), "--out", str(committed), "--rerun", "-q"]) == 0
    assert len(read_rows(committed)) == 2


def _truth(path: Path, rows: list[str]) -> Path:
    path.write_text("onnx,vnnlib,timeout,verdict\n" + "".join(r + "\n" for r in rows))
    return path


def _row(analysis: str, onnx: str, vnnlib: str, verdict: str) -> dict:
    return {"benchmark": "t", "network": onnx, "input": vnnlib, "eps": None, "analysis": analysis,
            "verdict": verdict, "margin": None, "seconds": 1.0, "reason": ""}


def test_score_several_truth_files_conflicts_and_scope(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    t1 = _truth(tmp_path / "t1.csv", ["onnx/a.onnx,vnnlib/2021/p0.vnnlib,60,unsat",
                                      "onnx/a.onnx,vnnlib/2021/p1.vnnlib,60,sat",
                                      "onnx/a.onnx,vnnlib/2021/p2.vnnlib,60,unknown",
                                      "onnx/a.onnx,vnnlib/2022/p0.vnnlib,60,unsat"])
    t2 = _truth(tmp_path / "t2.csv", ["onnx/a.onnx,vnnlib/2021/p1.vnnlib,60,unsat",   # disagrees: conflict
                                      "onnx/a.onnx,vnnlib/2021/p2.vnnlib,60,sat",     # decides an unknown
                                      "onnx/a.onnx,vnnlib/2021/p3.vnnlib,60,conflict"])
    truth = read_truths([t1, t2])
    assert truth[("onnx/a.onnx", "vnnlib/2021/p1.vnnlib")] == "conflict"
    assert truth[("onnx/a.onnx", "vnnlib/2021/p2.vnnlib")] == "sat"
    rows = [_row("x", "onnx/a.onnx", "vnnlib/2021/p0.vnnlib", "verified"),
            _row("x", "onnx/a.onnx", "vnnlib/2021/p1.vnnlib", "falsified"),
            _row("x", "onnx/a.onnx", "vnnlib/2021/p2.vnnlib", "falsified")]
    rep = score(rows, truth)
    s = rep.scores["x"]
    assert (s.correct_unsat, s.correct_sat, s.conflict, s.wrong) == (1, 1, 1, 0)
    # the 2022 spec year was not run: not missing; 2021/p3 was in scope and not run: missing
    assert s.missing == 1 and rep.truth_counts["conflict"] == 2
    assert "conflict" in format_score(rep)
    res = tmp_path / "r.jsonl"
    with ResultStore(res) as st:
        st.write_many(rows)
    assert main(["score", str(res), "--truth", str(t1), str(t2)]) == 0
    assert main(["score", str(res), str(t2)]) == 1  # old form (last file is the truth): p1 falsified vs unsat
    capsys.readouterr()


def test_rows_record_what_actually_ran() -> None:
    """Backend and fallbacks as the analysis reports them (refine: solves per backend, fallbacks)."""
    from types import SimpleNamespace

    from absint.bench.worker import _resolved

    refine = SimpleNamespace(details={"domain": "deeppoly", "backend": "gurobi",
                                      "solves": {"highs": 3, "gurobi": 9},
                                      "fallbacks": {"gurobi->highs: licence limit (final)": 3}})
    assert _resolved(refine, None) == {"domain": "deeppoly", "backend": "gurobi+highs",
                                       "fallbacks": ["gurobi->highs: licence limit (final) (x3)"]}
    nothing_solved = SimpleNamespace(details={"domain": "deeppoly", "backend": "auto"})
    assert _resolved(nothing_solved, None) == {"domain": "deeppoly", "backend": None, "fallbacks": None}
    plain = SimpleNamespace(details={})
    assert _resolved(plain, SimpleNamespace(domain=SimpleNamespace(name="box")))["domain"] == "box"
