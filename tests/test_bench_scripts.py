"""The measurement scripts in benchmarks/ run end to end on the bundled digits network (a few images).

The auto_LiRPA part runs only where its interpreter is installed (``ABSINT_PEER_PYTHON``, see
``benchmarks/engine_vs_autolirpa.py``); elsewhere that one test is skipped and says why.
"""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH_DIR = ROOT / "benchmarks"
DIGITS = ROOT / "networks" / "digits_mlp_2x64.onnx"
DIGITS_DATA = ROOT / "networks" / "digits_test.npz"


def _script(name: str):
    """Import ``benchmarks/<name>.py`` as a module (its folder on the path, as when it runs)."""
    if str(BENCH_DIR) not in sys.path:
        sys.path.insert(0, str(BENCH_DIR))
    if name == "benchlib":  # the scripts import it under this name; share their module
        return importlib.import_module("benchlib")
    key = f"bench_{name}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, BENCH_DIR / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[key] = mod  # dataclasses look their module up while the class is made
        spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return sys.modules[key]


def test_option_parsing():
    lib = _script("benchlib")
    assert lib.parse_options(["k=3", "hull=fast", "cutoff=0.5", "tighten=false", "x=none"]) == {
        "k": 3, "hull": "fast", "cutoff": 0.5, "tighten": False, "x": None}
    assert lib.parse_grid(["k=1,3", "layers=[[1],[1,2]]"]) == {"k": [1, 3], "layers": [[1], [1, 2]]}
    with pytest.raises(lib.BenchError):
        lib.parse_options(["k"])
    net = lib.parse_net(f"{DIGITS}:0.05")
    assert net.name == "digits_mlp_2x64" and net.eps == 0.05
    with pytest.raises(lib.BenchError):
        lib.parse_net(str(DIGITS))  # no default eps for a network outside the ERAN suite


def test_engine_vs_autolirpa_absint_side(tmp_path):
    evs = _script("engine_vs_autolirpa")
    out = tmp_path / "evs.json"
    assert evs.main(["--nets", f"{DIGITS}:0.08", "--data", str(DIGITS_DATA), "--n", "4", "--batch", "4",
                     "--no-peer", "--out", str(out), "--alpha-opt", "iters=5", "--alpha-opt", "final_iters=5"]) == 0
    res = json.loads(out.read_text())["results"][0]
    assert res["absint_options"]["alpha"]["iters"] == 5
    recs = res["records"]
    assert len(recs) == res["correct"] >= 3
    for r in recs:
        dp, ap = np.array(r["deeppoly"]["lb"]), np.array(r["alphapoly"]["lb"])
        assert dp.shape == (9,) and np.all(ap >= dp - 1e-9)  # alphapoly is never looser than deeppoly
    s = res["summary"]
    assert s["crown"]["absint_certified"] <= s["alpha"]["absint_certified"]
    b = res["batched"]
    assert b["images"] == len(recs) and b["absint_batched_certified"] == b["absint_single_certified"]
    # the same verify_robustness call one image at a time decides the same images
    assert b["absint_verify_single_certified"] == b["absint_batched_certified"]
    assert b["speedup_verify_cpu"] > 0 and b["absint_batched_cold_cpu_s"] > 0
    assert (tmp_path / "evs.csv").read_text().count("\n") == len(recs) + 1


def test_engine_vs_autolirpa_with_peer(tmp_path):
    evs = _script("engine_vs_autolirpa")
    py = evs.find_peer_python(None)
    if py is None:
        pytest.skip("auto_LiRPA peer not installed here: set ABSINT_PEER_PYTHON to its venv's python "
                    "(install steps in benchmarks/engine_vs_autolirpa.py)")
    peer = evs.Peer(py, 1, "cpu")
    try:
        lib = _script("benchlib")
        X, Y = lib.load_npz(DIGITS_DATA)
        cfg = evs.Config(batch=3, alpha_opts={"iters": 5, "final_iters": 5})
        res = evs.run_network(lib.NetSpec("digits", DIGITS, 0.08), X, Y, [0, 1, 2, 3], cfg, peer)
    finally:
        peer.close()
    assert res["peer_forward_max_abs_diff"] < 1e-9  # the peer's torch model is the same network
    assert res["peer_options"]["alpha"]["iteration"] == 5  # equal budgets by default
    crown = res["summary"]["crown"]
    # DeepPoly and CROWN use the same ReLU slopes on an MLP: CROWN is never tighter
    assert crown["bounds"]["peer_tighter"] == 0 and crown["bounds"]["rows"] == 9 * res["correct"]
    assert crown["peer_certified"] == crown["absint_certified"]
    assert res["batched"]["peer_batched_certified"] == sum(r["CROWN"]["certified"] for r in res["records"][:3])


def _git_worktree_possible() -> bool:
    try:
        return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True).returncode == 0
    except OSError:
        return False


def test_rounding_overhead_two_revisions(tmp_path):
    if not _git_worktree_possible():
        pytest.skip("not a git checkout: --baseline-rev needs git worktree")
    ro = _script("rounding_overhead")
    out = tmp_path / "ro.json"
    assert ro.main(["--nets", f"{DIGITS}:0.05", "--data", str(DIGITS_DATA), "--n", "2", "--repeat", "1",
                    "--domains", "deeppoly", "box", "--baseline-rev", "HEAD", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    revs = data["meta"]["revisions"]
    assert Path(revs["candidate"]["absint"]).resolve().is_relative_to(ROOT)
    base_dir = Path(revs["baseline"]["absint"]).resolve()
    assert not base_dir.is_relative_to(ROOT) and not base_dir.exists()  # the worktree is gone afterwards
    res = data["results"][0]
    for d in ("deeppoly", "box"):
        s = res["summary"][d]
        assert s["cpu_ratio_median"] > 0 and s["bound_change"]["rows"] == 9 * res["correct"]
    listed = subprocess.run(["git", "-C", str(ROOT), "worktree", "list"], capture_output=True, text=True).stdout
    assert str(base_dir.parent.parent) not in listed


def test_kpoly_ablation_grid_and_validation(tmp_path):
    ka = _script("kpoly_ablation")
    out = tmp_path / "abl.jsonl"
    with pytest.raises(ka.BenchError, match="no_such_option"):
        ka.main(["--nets", f"{DIGITS}:0.1", "--data", str(DIGITS_DATA), "--grid", "no_such_option=1,2",
                 "--out", str(out)])
    assert not out.exists()  # rejected before any work
    args = ["--analysis", "kpoly", "--nets", f"{DIGITS}:0.07", "--data", str(DIGITS_DATA), "--n", "2",
            "--grid", "k=1,3", "--opt", "final_bab_timeout=5", "--timeout", "20", "--out", str(out)]
    assert ka.main(args) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert {r["config"] for r in rows} == {"final_bab_timeout=5 k=1", "final_bab_timeout=5 k=3"}
    assert len(rows) == 2 * len({r["image"] for r in rows})
    summary = json.loads(out.with_suffix(".summary.json").read_text())
    conf = summary["meta"]["configurations"]
    def krelu_stage(resolved):  # kpoly's k-ReLU rows inside bound propagation (the multineuron stage)
        return [s for s in resolved["options"]["pipeline"]["stages"] if s["key"] == "multineuron"]

    assert krelu_stage(conf[0]["resolved"])[0]["krelu"]["k"] == 1  # k=1: slopes alone
    assert krelu_stage(conf[1]["resolved"])[0]["krelu"]["k"] == 3
    assert all(s["pgd_contradictions"] == 0 for s in summary["summary"])
    assert ka.main(args + ["--resume"]) == 0  # nothing left to do
    assert len(out.read_text().splitlines()) == len(rows)
    assert all(isinstance(r["stages"], dict) for r in rows)  # empty here: DeepPoly proves these easy images
    details = {"regions": [{"stats": {"multineuron": {"seconds": 1.5, "groups": 4, "rows": 40, "tighten_s": 1.0},
                                      "bab": {"status": "timeout", "bounded": 77, "proved": 0.5, "seconds": 2.0}}}]}
    assert ka.stage_stats(details) == {"multineuron": {"seconds": 1.5, "groups": 4, "rows": 40},
                                       "bab": {"status": "timeout", "seconds": 2.0, "bounded": 77, "proved": 0.5}}


def test_kpoly_ablation_chosen_images(tmp_path):
    ka = _script("kpoly_ablation")
    assert ka.parse_images("3,10-12") == [3, 10, 11, 12]
    with pytest.raises(ka.BenchError, match="--images"):
        ka.parse_images("3,x")
    out = tmp_path / "chosen.jsonl"
    with pytest.raises(ka.BenchError, match="must lie in"):
        ka.main(["--analysis", "deeppoly", "--nets", f"{DIGITS}:0.01", "--data", str(DIGITS_DATA),
                 "--images", "0,100000", "--out", str(out)])
    assert ka.main(["--analysis", "deeppoly", "--nets", f"{DIGITS}:0.01", "--data", str(DIGITS_DATA),
                    "--images", "2,5-6", "--no-pgd", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows and {r["image"] for r in rows} <= {2, 5, 6}
    assert all(r["stages"] == {} for r in rows)  # deeppoly has no refinement stages


def test_kpoly_ablation_paired_configurations(tmp_path):
    """``--config`` lists configurations one by one (a paired A/B), ``defaults`` being none."""
    ka = _script("kpoly_ablation")
    out = tmp_path / "paired.jsonl"
    base = ["--analysis", "kpoly", "--nets", f"{DIGITS}:0.01", "--data", str(DIGITS_DATA), "--images", "2",
            "--no-pgd", "--out", str(out)]
    with pytest.raises(ka.BenchError, match="--config and --grid"):
        ka.main(base + ["--config", "defaults", "--grid", "k=1,3"])
    with pytest.raises(ka.BenchError, match="no_such_option"):
        ka.main(base + ["--config", "defaults", "--config", "k=3 no_such_option=1"])
    assert ka.main(base + ["--opt", "final_bab_timeout=5", "--config", "defaults",
                           "--config", "sparse_n=30 max_groups=150"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["config"] for r in rows) == ["final_bab_timeout=5", "final_bab_timeout=5 max_groups=150 sparse_n=30"]


def test_engine_regression_same_revision_is_identical(tmp_path):
    """``engine_regression.py`` against HEAD (the same engine twice): every row compared, no deviation."""
    if not _git_worktree_possible():
        pytest.skip("not a git checkout: --baseline-rev needs git worktree")
    bench = ROOT.parent / "shared" / "bench"
    if not (bench / "eran" / "mnist_relu_6_100.onnx").is_file() or not (bench / "acasxu" / "instances.csv").is_file():
        pytest.skip("../shared/bench is not here")
    er = _script("engine_regression")
    out = tmp_path / "er.json"
    assert er.main(["--baseline-rev", "HEAD", "--parts", "deeppoly", "--n", "2", "--cifar-n", "0", "--acas", "1",
                    "--only", "mnist_relu_6_100", "ACASXU_run2a_1_1", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert [r["net"] for r in data["deeppoly"]] == ["mnist_relu_6_100", "ACASXU_run2a_1_1_batch_2000"]
    for res in data["deeppoly"]:
        s = res["summary"]
        assert s["vs_baseline"]["rows"] > 0 and s["vs_baseline"]["max_abs_dev"] == 0.0
        assert s["candidate"]["certified"] == s["baseline"]["certified"]


def test_vnncomp_ab_runs_rotates_and_scores(tmp_path, capsys, bench):
    """Two option sets on two mnistfc instances (one unsat, one sat): a row per (instance, set), the
    sets' order rotated from one instance to the next, and a summary against the truth table."""
    mnistfc = bench / "mnistfc"
    bench = tmp_path / "bench"
    bench.mkdir()
    (bench / "onnx").symlink_to(mnistfc / "onnx")
    (bench / "vnnlib").symlink_to(mnistfc / "vnnlib")
    rows = [r for r in open(mnistfc / "truth.csv").read().splitlines()
            if "256x2.onnx,vnnlib/2021/prop_2_0.03" in r or "256x2.onnx,vnnlib/2021/prop_1_0.05" in r]
    assert len(rows) == 2
    (bench / "truth.csv").write_text(open(mnistfc / "truth.csv").readline() + "\n".join(rows) + "\n")
    ab = _script("vnncomp_ab")
    out = tmp_path / "ab.jsonl"
    assert ab.main([str(bench), "--analysis", "bab", "--timeout", "20", "--opt", "root=alpha",
                    "--opt", "root=multineuron,root_share=0.4", "--out", str(out)]) == 0
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["cfg"] for r in recs] == [{"root": "alpha"}, {"root": "multineuron", "root_share": 0.4},
                                        {"root": "multineuron", "root_share": 0.4}, {"root": "alpha"}]
    assert {r["verdict"] for r in recs[:2]} == {"verified"} and {r["verdict"] for r in recs[2:]} == {"falsified"}
    capsys.readouterr()
    ab.main([str(bench), "--summary", str(out)])
    text = capsys.readouterr().out
    assert text.count("unsat verified 1 of 1, sat falsified 1 of 1") == 2 and "wrong 0" in text
    assert "differ:" not in text
