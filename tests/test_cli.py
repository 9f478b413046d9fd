"""The command line: verify on the bundled network and on VNN-LIB, JSON/CSV output, clean errors."""
from __future__ import annotations

import json

import pytest

from absint.cli import main


def test_verify_bundled_default_writes_json_and_csv(tmp_path, capsys):
    out_json, out_csv = tmp_path / "r.json", tmp_path / "r.csv"
    code = main(["verify", "-a", "box", "-n", "12", "--json", str(out_json), "--csv", str(out_csv), "--quiet"])
    assert code == 0
    data = json.loads(out_json.read_text())
    assert data["summary"]["instances"] == 12
    # what it ran with, and which absint
    assert data["settings"]["analysis"] == "box" and data["settings"]["count"] == 12
    assert data["absint"]["version"] and "commit" in data["absint"]
    assert sum(data["summary"][k] for k in ("verified", "falsified", "unknown")) == 12
    assert len(out_csv.read_text().strip().splitlines()) == 13
    for row in data["results"]:
        if row["verdict"] == "falsified":
            assert row["counterexample"] is not None


def test_verify_vnnlib_prints_table(bench, capsys):
    code = main(["verify", str(bench / "acasxu/onnx/ACASXU_run2a_1_1_batch_2000.onnx"), "--vnnlib",
                 str(bench / "acasxu/vnnlib/prop_1.vnnlib"), "-a", "box", "--timeout", "5", "--quiet"])
    assert code == 0
    code = main(["verify", str(bench / "acasxu/onnx/ACASXU_run2a_1_1_batch_2000.onnx"), "--vnnlib",
                 str(bench / "acasxu/vnnlib/prop_1.vnnlib"), "-a", "box", "--timeout", "5"])
    out = capsys.readouterr().out
    assert "prop_1" in out and "instances" in out


def test_errors_exit_2_with_message(tmp_path, capsys):
    bad = tmp_path / "x.onnx"
    bad.write_bytes(b"garbage")
    assert main(["verify", str(bad), "--data", "networks/digits_test.npz", "--quiet"]) == 2
    assert "not a valid ONNX model" in capsys.readouterr().err
    assert main(["verify", "-a", "nonexistent", "--quiet"]) == 2


def test_list_shows_domains_and_solvers(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "box" in out and "highs" in out


@pytest.mark.parametrize("module", ["absint", "absint.cli"])
def test_module_entry_points_know_every_subcommand(module):
    """``python -m absint`` and ``python -m absint.cli`` offer the same subcommands as ``absint``
    (vnncomp, bench, score, ... register on the imported ``absint.cli``, not on ``__main__``)."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", module, "vnncomp", "--help"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "usage: absint vnncomp" in out.stdout
