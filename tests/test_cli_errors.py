"""Every command-line mistake ends with one line on stderr naming the file or option, exit code 2.

Each case runs ``absint.cli.main`` in-process; none gets as far as an analysis.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

from absint.cli import main

ROOT = Path(__file__).resolve().parents[1]
NET = ROOT / "networks/digits_mlp_2x64.onnx"
DATA = ROOT / "networks/digits_test.npz"


def one_line_error(capsys, argv: list[str], *needles: str) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2, (code, err)
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    f = {"wrong_shape": tmp_path / "wrong_shape.npz", "objects": tmp_path / "objects.npz",
         "not_zip": tmp_path / "not_zip.npz", "nan_pixels": tmp_path / "nan.npz", "float_labels": tmp_path / "fl.npz",
         "garbage_onnx": tmp_path / "garbage.onnx", "binary_vnnlib": tmp_path / "binary.vnnlib",
         "nan_vnnlib": tmp_path / "nan.vnnlib", "huge_vnnlib": tmp_path / "huge.vnnlib"}
    np.savez(f["wrong_shape"], images=np.random.default_rng(0).random((5, 7, 7)), labels=np.zeros(5, int))
    np.savez(f["objects"], images=np.array([np.zeros(3), np.zeros(4)], dtype=object), labels=np.zeros(2, int))
    f["not_zip"].write_bytes(b"PK\x03\x04 this is not really a zip archive")
    np.savez(f["nan_pixels"], images=np.full((2, 1, 8, 8), np.nan), labels=np.zeros(2, int))
    np.savez(f["float_labels"], images=np.zeros((2, 1, 8, 8)), labels=np.array([0.5, 1.0]))
    f["garbage_onnx"].write_bytes(b"\x00\xff garbage" * 10)
    f["binary_vnnlib"].write_bytes(bytes(range(256)) * 4)
    decl = "".join(f"(declare-const X_{i} Real)\n" for i in range(64)) + \
        "".join(f"(declare-const Y_{j} Real)\n" for j in range(10))
    bounds = "".join(f"(assert (>= X_{i} 0.0))\n(assert (<= X_{i} 0.1))\n" for i in range(1, 64))
    f["nan_vnnlib"].write_text(decl + bounds + "(assert (>= X_0 NaN))\n(assert (<= X_0 0.1))\n(assert (>= Y_0 Y_1))\n")
    f["huge_vnnlib"].write_text(decl + bounds + "(assert (>= X_0 -1e400))\n(assert (<= X_0 0.1))\n(assert (>= Y_0 Y_1))\n")
    return f


@pytest.mark.parametrize("argv, needles", [
    (["-n", "0"], ["--count", "at least 1"]),
    (["-n", "-5"], ["--count", "at least 1", "'-5'"]),
    (["-n", "many"], ["--count", "whole number"]),
    (["--start", "-1"], ["--start", "0 or more"]),
    (["--start", "100000"], ["--start", "past the end", "digits_test.npz"]),
    (["--timeout", "0"], ["--timeout", "> 0"]),
    (["--timeout", "-3"], ["--timeout", "> 0"]),
    (["--timeout", "nan"], ["--timeout", "> 0"]),
    (["--timeout", "inf"], ["--timeout", "> 0"]),
    (["--eps", "-0.1"], ["--eps", "≥ 0"]),
    (["--eps", "nan"], ["--eps", "≥ 0"]),
    (["--threads", "0"], ["--threads", "at least 1"]),
    (["--batch-size", "0"], ["--batch-size", "at least 1"]),
    (["--clip", "1", "0"], ["--clip", "LO must be below HI"]),
    (["--device", "nosuch"], ["--device", "unknown torch device"]),
    (["-a", "nosuch"], ["unknown analysis 'nosuch'"]),
    (["--data", "missing.npz"], ["--data", "missing.npz: no such file"]),
    (["--vnnlib", "missing.vnnlib"], ["--vnnlib", "missing.vnnlib: no such file"]),
    (["--json", "no/such/folder/r.json"], ["--json", "does not exist"]),
    (["--frobnicate"], ["unrecognized arguments: --frobnicate"]),
])
def test_verify_argument_mistakes(capsys, argv, needles):
    one_line_error(capsys, ["verify", *argv, "--quiet"], *needles)


def test_verify_missing_and_unreadable_network(capsys, files):
    one_line_error(capsys, ["verify", "nosuch.onnx", "--quiet"], "nosuch.onnx")
    one_line_error(capsys, ["verify", str(files["garbage_onnx"]), "--data", str(DATA), "--quiet"],
                   "garbage.onnx", "not a valid ONNX model")
    one_line_error(capsys, ["verify", str(DATA), "--data", str(DATA), "--quiet"], "only ONNX files")


@pytest.mark.parametrize("key, needles", [
    ("wrong_shape", ["wrong_shape.npz", "(7, 7)", "network expects (1, 8, 8)"]),
    ("objects", ["objects.npz", "object arrays"]),
    ("not_zip", ["not_zip.npz", "not a readable .npz"]),
    ("nan_pixels", ["nan.npz", "finite"]),
    ("float_labels", ["fl.npz", "whole numbers"]),
])
def test_verify_bad_data_files(capsys, files, key, needles):
    one_line_error(capsys, ["verify", str(NET), "--data", str(files[key]), "--quiet"], *needles)


@pytest.mark.parametrize("key, needles", [
    ("nan_vnnlib", ["nan.vnnlib", "not finite"]),
    ("huge_vnnlib", ["huge.vnnlib", "not finite"]),
])
def test_verify_non_finite_vnnlib_bounds(capsys, files, key, needles):
    one_line_error(capsys, ["verify", str(NET), "--vnnlib", str(files[key]), "--quiet"], *needles)


def test_verify_binary_and_deeply_nested_vnnlib(capsys, files, tmp_path):
    one_line_error(capsys, ["verify", str(NET), "--vnnlib", str(files["binary_vnnlib"]), "--quiet"], "binary.vnnlib")
    deep = tmp_path / "deep.vnnlib"
    text = files["nan_vnnlib"].read_text().replace("(assert (>= X_0 NaN))", "(assert (>= X_0 0.0))")
    deep.write_text(text + "(assert " + "(or " * 5000 + "(>= Y_0 Y_1)" + ")" * 5000 + ")\n")
    # well-formed however deep: answered, or refused with one line (exit 2), never an internal error
    code = main(["verify", str(NET), "--vnnlib", str(deep), "--quiet"])
    err = capsys.readouterr().err
    assert code in (0, 2) and "internal error" not in err and "Traceback" not in err, (code, err)


@pytest.mark.parametrize("argv, needles", [
    (["--workers", "0"], ["--workers", "at least 1"]),
    (["--threads-per-worker", "-1"], ["--threads-per-worker"]),
    (["--timeout", "nan"], ["--timeout", "> 0"]),
    (["--attack-budget", "-1"], ["--attack-budget"]),
    (["--backend", "nosuch"], ["--backend", "invalid choice"]),
    (["--count", "0"], ["--count", "at least 1"]),
    (["--limit", "0"], ["--limit", "at least 1"]),
    (["--eps", "nan"], ["--eps"]),
    (["nosuch.toml"], ["nosuch.toml: no such file"]),
    ([], ["give a CONFIG file"]),
    (["--network", str(NET)], ["--network needs --data and --eps"]),
    (["--network", str(NET), "--data", str(DATA), "--eps", "0.01", "--start", "99999"], ["start 99999 is past the end"]),
])
def test_bench_argument_mistakes(capsys, argv, needles):
    one_line_error(capsys, ["bench", *argv, "--dry-run"], *needles)


def test_vnncomp_and_score_mistakes(capsys, tmp_path):
    out = tmp_path / "out.txt"
    one_line_error(capsys, ["vnncomp", str(NET), "x.vnnlib", "--timeout", "0", "--out", str(out)], "--timeout")
    one_line_error(capsys, ["vnncomp", str(NET), "x.vnnlib", "--timeout", "nan", "--out", str(out)], "--timeout")
    one_line_error(capsys, ["score", "nosuch.jsonl", "truth.csv"], "nosuch.jsonl: no such file")
    res = tmp_path / "r.jsonl"
    res.write_text("")
    one_line_error(capsys, ["score", str(res)], "truth file")
    one_line_error(capsys, ["report", str(tmp_path / "none.jsonl")], "none.jsonl: no such file")


class _ClosedPipe(io.StringIO):
    def write(self, s: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")


def test_closed_stdout_is_not_a_traceback(capsys, monkeypatch):
    """``absint bench --dry-run | head``: the reader leaves early; absint stops quietly."""
    monkeypatch.setattr("sys.stdout", _ClosedPipe())
    code = main(["bench", str(ROOT / "configs/digits_smoke.toml"), "--dry-run"])
    err = capsys.readouterr().err
    assert code == 141 and "Traceback" not in err and "Error" not in err


def test_bench_config_with_unknown_backend_or_option(capsys, tmp_path):
    """Options of a column are checked before anything runs: one line naming the column and option."""
    for extra, needle in (('backend = "nosuch"', "unknown solver backend 'nosuch'"), ("frobnicate = 1", "frobnicate")):
        cfg = tmp_path / "c.toml"
        cfg.write_text(f'name = "c"\nanalyses = ["mine"]\n[analysis.mine]\nbase = "lp"\n{extra}\n'
                       f'[[experiment]]\nname = "d"\nnetwork = "{NET}"\ndata = "{DATA}"\neps = 0.01\ncount = 1\n')
        one_line_error(capsys, ["bench", str(cfg), "--dry-run"], "[analysis.mine]", needle)
