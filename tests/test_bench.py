"""absint bench: configuration parsing, path rebasing, results files and resume."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from absint.bench import BenchConfigError, ResultStore, load_config, parse_config, plan_tasks, read_rows, run_config
from absint.bench.config import check_analyses, results_dir
from absint.bench.store import row_key
from absint.bench.tasks import analysis_call
from absint.cli import main

ROOT = Path(__file__).resolve().parents[1]
NET = ROOT / "networks" / "digits_mlp_2x64.onnx"
DATA = ROOT / "networks" / "digits_test.npz"
SHARED = ROOT.parent / "shared" / "bench"


def _tiny(results: Path, **top) -> dict:
    return {"name": "tiny", "analyses": ["box"], "results": str(results), **top,
            "experiment": [{"name": "digits", "network": str(NET), "data": str(DATA), "eps": [0.01, 0.03],
                            "count": 6}]}


def test_parse_toml_file(tmp_path: Path) -> None:
    cfg_dir = tmp_path / "proj" / "configs"
    cfg_dir.mkdir(parents=True)
    (cfg_dir / "x.toml").write_text("""
name = "x"
analyses = ["box", "nonexistent"]
skip_unavailable = true
timeout = 5
workers = 2
[[experiment]]
name = "img"
network = "../shared/bench/eran/net.onnx"
data = "../shared/bench/eran/data.npz"
eps = [0.01, 0.02]
count = 10
batch_size = 4
[[experiment]]
name = "vnn"
instances = "../shared/bench/mnistfc/instances.csv"
timeout = 60
""")
    cfg = load_config(cfg_dir / "x.toml")
    root = tmp_path / "proj"
    img, vnn = cfg.experiments
    # relative paths start at the project root (the parent of configs/)
    assert img.network == (root / "../shared/bench/eran/net.onnx").resolve()
    assert img.eps == (0.01, 0.02) and img.count == 10 and img.batch_size == 4 and img.timeout == 5
    assert vnn.kind == "vnncomp" and vnn.timeout == 60
    # rows go to the user results folder, not into the project
    assert cfg.workers == 2 and cfg.results == results_dir() / "x.jsonl" and cfg.reference is None
    assert str(results_dir()).startswith(os.environ["XDG_DATA_HOME"])
    # --bench-root rebases only the bench_root prefix
    other = load_config(cfg_dir / "x.toml", bench_root=tmp_path / "mine")
    assert other.experiments[0].network == tmp_path / "mine" / "eran" / "net.onnx"
    assert other.experiments[1].instances == tmp_path / "mine" / "mnistfc" / "instances.csv"
    # unavailable analyses are dropped with skip_unavailable, refused without
    assert check_analyses(cfg, {"box"}).experiments[0].analyses == ("box",)
    strict = parse_config({"analyses": ["nope"], "experiment": [{"name": "a", "instances": "x.csv"}]}, root=tmp_path)
    with pytest.raises(BenchConfigError, match="not available"):
        check_analyses(strict, {"box"})


@pytest.mark.parametrize("bad, match", [
    ({"experiment": [{"name": "a", "network": "n.onnx", "data": "d.npz", "eps": 0.1, "epz": 1}]}, "unknown key"),
    ({"experiment": [{"name": "a", "network": "n.onnx", "data": "d.npz"}]}, "needs network, data and eps"),
    ({"experiment": [{"name": "a", "network": "n.onnx", "data": "d.npz", "eps": -1}]}, "eps"),
    ({"experiment": [{"name": "a"}]}, "either"),
    ({"experiment": []}, "no \\[\\[experiment\\]\\]"),
    ({"workers": 0, "experiment": [{"name": "a", "instances": "i.csv"}]}, "workers"),
    ({"backend": "dask", "experiment": [{"name": "a", "instances": "i.csv"}]}, "backend"),
    ({"experiment": [{"name": "a", "instances": "i.csv"}, {"name": "a", "instances": "j.csv"}]}, "duplicate"),
    # found by fuzzing: "false" (a string) ran the attack; clip [1, 0] errored on every row with exit 0;
    # a listed-twice analysis wrote duplicate rows; a name with folders wrote outside the results folder
    ({"attack": "false", "experiment": [{"name": "a", "instances": "i.csv"}]}, "true or false"),
    ({"experiment": [{"name": "a", "network": "n.onnx", "data": "d.npz", "eps": 0.1, "clip": [1, 0]}]}, "lo ≤ hi"),
    ({"analyses": ["box", "box"], "experiment": [{"name": "a", "instances": "i.csv"}]}, "listed twice"),
    ({"name": "../../evil", "experiment": [{"name": "a", "instances": "i.csv"}]}, "plain name"),
    ({"timeout": float("inf"), "experiment": [{"name": "a", "instances": "i.csv"}]}, "positive finite"),
    ({"root": 5, "experiment": [{"name": "a", "instances": "i.csv"}]}, "root must be a folder path"),
])
def test_config_errors(tmp_path: Path, bad: dict, match: str) -> None:
    with pytest.raises(BenchConfigError, match=match):
        parse_config(bad, root=tmp_path)


def test_shipped_configs_parse() -> None:
    configs = sorted((ROOT / "configs").glob("*.toml"))
    assert {p.stem for p in configs} >= {"eran_mnist", "mnistfc", "acasxu", "digits_smoke"}
    for p in configs:
        cfg = load_config(p)
        assert cfg.experiments
        if p.stem == "eran_mnist":
            eps = {e.name: e.eps for e in cfg.experiments}
            assert eps == {"mnist_6x100": (0.026,), "mnist_9x100": (0.026,), "mnist_6x200": (0.015,),
                           "mnist_convsmall": (0.12,)}


@pytest.mark.skipif(not (SHARED / "mnistfc" / "instances.csv").exists(), reason="needs ../shared/bench")
def test_plan_vnncomp_instances(tmp_path: Path) -> None:
    cfg = load_config(ROOT / "configs" / "mnistfc.toml", results=tmp_path / "r.jsonl")
    cfg = check_analyses(cfg, {"box"})
    tasks = plan_tasks(cfg)
    assert len(tasks) == 90
    assert tasks[0].network_name == "onnx/mnist-net_256x2.onnx" and tasks[0].timeout == 120
    # a config timeout caps the instances.csv limit
    from dataclasses import replace
    capped = replace(cfg, experiments=(replace(cfg.experiments[0], timeout=7.0, limit=3),))
    assert [t.timeout for t in plan_tasks(capped)] == [7.0] * 3


def test_store_roundtrip_and_partial_line(tmp_path: Path) -> None:
    for suffix in (".jsonl", ".csv"):
        path = tmp_path / f"r{suffix}"
        with ResultStore(path) as s:
            s.write({"benchmark": "b", "network": "n", "input": "0", "eps": 0.1, "analysis": "box",
                     "verdict": "verified", "margin": 0.5, "seconds": 0.01, "correct": True, "label": 3})
            s.write({"benchmark": "b", "network": "n", "input": "1", "eps": 0.1, "analysis": "box",
                     "verdict": "unknown", "margin": float("-inf"), "seconds": 0.02, "correct": False})
        with open(path, "a") as f:
            f.write('{"benchmark": "b", "netw' if suffix == ".jsonl" else "b,n,2,0.1,bo")  # killed mid-write
        rows = read_rows(path)
        assert [r["input"] for r in rows] == ["0", "1"]
        assert rows[0]["margin"] == 0.5 and rows[0]["correct"] is True and rows[0]["label"] == 3
        assert rows[1]["margin"] is None and rows[1]["correct"] is False
        assert row_key(rows[0]) == ("b", "n", "0", "0.1", "box", "")
        store = ResultStore(path)
        assert len(store.done()) == 2
        with store:  # reopening cuts the partial line, appends cleanly
            store.write({**rows[0], "input": "2"})
        assert [r["input"] for r in read_rows(path)] == ["0", "1", "2"]


def test_resume_after_partial_file(tmp_path: Path) -> None:
    full = tmp_path / "full.jsonl"
    cfg = parse_config(_tiny(full), root=tmp_path)
    s1 = run_config(cfg)
    assert s1.instances == 12 and sum(s1.counts.values()) == 12
    rows = full.read_text().splitlines()
    # a run killed after 5 rows, in the middle of writing the 6th
    part = tmp_path / "part.jsonl"
    part.write_text("\n".join(rows[:5]) + "\n" + rows[5][:30])
    cfg2 = parse_config(_tiny(part), root=tmp_path)
    assert len(plan_tasks(cfg2, ResultStore(part).done())) == 7
    s2 = run_config(cfg2)
    assert s2.instances == 7
    a = {row_key(r): (r["verdict"], r["margin"]) for r in read_rows(full)}
    b = {row_key(r): (r["verdict"], r["margin"]) for r in read_rows(part)}
    assert a == b and len(part.read_text().splitlines()) == 12
    assert run_config(cfg2).instances == 0  # nothing left


def test_bench_cli_flags(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "r.csv"
    rc = main(["bench", "--network", str(NET), "--data", str(DATA), "--eps", "0.01", "-n", "4", "-a", "box",
               "--out", str(out), "-q"])
    assert rc == 0
    rows = read_rows(out)
    assert len(rows) == 4 and {r["analysis"] for r in rows} == {"box"}
    assert all(r["peak_rss_mib"] and r["peak_rss_mib"] > 10 for r in rows)
    assert all(r["verdict"] in ("verified", "falsified", "unknown") for r in rows)
    # verified implies correctly classified
    assert all(r["correct"] for r in rows if r["verdict"] == "verified")
    rc = main(["bench", "--network", str(NET), "--data", str(DATA), "--eps", "0.01", "-n", "4", "-a", "box",
               "--out", str(out), "--dry-run"])
    assert rc == 0 and "0 instance(s) to run" in capsys.readouterr().out


def test_error_rows_and_retry(tmp_path: Path) -> None:
    out = tmp_path / "r.jsonl"
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx file")
    inst = tmp_path / "instances.csv"
    spec = tmp_path / "p.vnnlib"
    spec.write_text("(declare-const X_0 Real)\n")
    inst.write_text("bad.onnx,p.vnnlib,10\n")
    cfg = parse_config({"analyses": ["box"], "results": str(out),
                        "experiment": [{"name": "v", "instances": str(inst)}]}, root=tmp_path)
    s = run_config(cfg)
    assert s.counts == {"error": 1}
    (row,) = read_rows(out)
    assert row["verdict"] == "error" and row["reason"]
    assert run_config(cfg).instances == 0                  # errors count as done ...
    assert run_config(cfg, retry_errors=True).instances == 1  # ... unless retried
    lines = out.read_text().splitlines()  # the old error row was replaced, not duplicated
    assert len(lines) == 1 and json.loads(lines[0])["verdict"] == "error"


def test_analysis_tables_options_timeout_and_report(tmp_path: Path) -> None:
    """``[analysis.NAME]`` columns: options reach the analysis, own time limit, rows under the column name."""
    out = tmp_path / "r.jsonl"
    data = _tiny(out, analyses=["alphapoly", "alpha0"], timeout=50, report=str(tmp_path / "fig"))
    data["experiment"][0].update(eps=[0.1], count=4)
    data["analysis"] = {"alpha0": {"base": "alphapoly", "iters": 0, "final_iters": 0, "timeout": 7},
                        "unused": {"base": "no-such-analysis"}}
    cfg = check_analyses(parse_config(data, root=tmp_path))
    assert cfg.spec("alpha0").kwargs == {"iters": 0, "final_iters": 0} and cfg.spec("alphapoly").base == "alphapoly"
    tasks = plan_tasks(cfg)
    assert {(t.analysis, t.timeout, analysis_call(t)[0]) for t in tasks} == {
        ("alphapoly", 50, "alphapoly"), ("alpha0", 7, "alphapoly")}
    own = parse_config({**data, "experiment": [{**data["experiment"][0], "timeout": 3}]}, root=tmp_path)
    assert {t.timeout for t in plan_tasks(check_analyses(own))} == {3}  # an experiment's own limit wins
    rc = main(["bench", str(_write_toml(tmp_path / "c.toml", data)), "-q"])
    assert rc == 0
    rows = read_rows(out)
    by = {(r["input"], r["analysis"]): r for r in rows}
    assert len(by) == 8 and {r["timeout"] for r in rows if r["analysis"] == "alpha0"} == {7}
    # no slope optimisation can only be looser: DeepPoly's slopes are where optimisation starts
    for i in {r["input"] for r in rows}:
        a, b = by[(i, "alphapoly")], by[(i, "alpha0")]
        if a["margin"] is not None and b["margin"] is not None:
            assert b["margin"] <= a["margin"] + 1e-6
    assert any(by[(i, "alphapoly")]["margin"] > by[(i, "alpha0")]["margin"] + 1e-6
               for i in {r["input"] for r in rows}
               if by[(i, "alphapoly")]["margin"] is not None and by[(i, "alpha0")]["margin"] is not None)
    assert (tmp_path / "fig" / "report.md").exists()  # the config's `report` was drawn at the end


def test_analysis_table_errors(tmp_path: Path) -> None:
    data = _tiny(tmp_path / "r.jsonl", analyses=["a"])
    data["analysis"] = {"a": {"base": "alphapoly", "itrs": 3}}
    with pytest.raises(BenchConfigError, match="does not accept these options"):
        check_analyses(parse_config(data, root=tmp_path))
    data["analysis"] = {"a": {"base": 3}}
    with pytest.raises(BenchConfigError, match="base must be an analysis name"):
        parse_config(data, root=tmp_path)
    data["analysis"] = {"a": {"base": "nope"}}
    with pytest.raises(BenchConfigError, match="not available"):
        check_analyses(parse_config(data, root=tmp_path))


def _write_toml(path: Path, data: dict) -> Path:
    """A tiny TOML writer for the flat configs these tests build (strings, numbers, lists, tables)."""
    def val(v: object) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, list):
            return "[" + ", ".join(val(x) for x in v) + "]"
        return repr(v)

    lines = [f"{k} = {val(v)}" for k, v in data.items() if k not in ("experiment", "analysis")]
    for name, t in data.get("analysis", {}).items():
        lines += [f"[analysis.{name}]"] + [f"{k} = {val(v)}" for k, v in t.items()]
    for e in data["experiment"]:
        lines += ["[[experiment]]"] + [f"{k} = {val(v)}" for k, v in e.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("limit", ["0", "-5", "nan", "inf"])
def test_instances_file_with_an_unusable_time_limit_is_a_config_error(tmp_path: Path, limit: str) -> None:
    """Such limits once passed parsing and every row became an error with exit 0."""
    from absint.bench.plan import read_instances

    f = tmp_path / "instances.csv"
    f.write_text(f"net.onnx,prop.vnnlib,{limit}\n")
    with pytest.raises(BenchConfigError, match="bad timeout"):
        read_instances(f)


def test_dropping_rows_keeps_a_csv_results_file_a_csv(tmp_path: Path) -> None:
    """``--rerun`` on a ``.csv`` file once rewrote the kept rows as JSON lines (its temporary file had
    the suffix ``.tmp``), after which the file could not be read or appended to."""
    from absint.bench.store import row_key

    path = tmp_path / "r.csv"
    rows = [{"benchmark": "b", "network": "n", "input": str(i), "eps": 0.01, "analysis": "box",
             "verdict": "verified", "margin": 0.5} for i in range(3)]
    with ResultStore(path) as s:
        s.write_many(rows)
    assert ResultStore(path).drop({row_key(read_rows(path)[0])}) == 1
    assert path.read_text().startswith("benchmark,") and [r["input"] for r in read_rows(path)] == ["1", "2"]
    with ResultStore(path) as s:  # still appendable
        s.write(rows[0])
    assert len(read_rows(path)) == 3
