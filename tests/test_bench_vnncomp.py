"""absint vnncomp (competition result files, counterexamples) and absint score (truth tables)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import absint
from absint.bench.score import format_score, read_truth, score
from absint.bench.store import ResultStore
from absint.bench.vnncomp import format_counterexample, parse_counterexample, result_word
from absint.cli import main
from absint.results import Result, Verdict

ROOT = Path(__file__).resolve().parents[1]
NET = ROOT / "networks" / "digits_mlp_2x64.onnx"
DATA = ROOT / "networks" / "digits_test.npz"


def _vnnlib(path: Path, eps: float, output: str) -> tuple[np.ndarray, np.ndarray]:
    """A VNN-LIB file: L-inf ball of radius eps around test image 0 (clipped to [0,1]) + ``output``."""
    images, labels = absint.load_images(DATA)
    x = images[0].reshape(-1)
    lo, hi = np.clip(x - eps, 0, 1), np.clip(x + eps, 0, 1)
    lines = [f"(declare-const X_{i} Real)" for i in range(x.size)] + [f"(declare-const Y_{j} Real)" for j in range(10)]
    for i in range(x.size):
        lines += [f"(assert (>= X_{i} {float(lo[i])!r}))", f"(assert (<= X_{i} {float(hi[i])!r}))"]
    path.write_text("\n".join(lines + [output.format(t=int(labels[0]))]) + "\n")
    return lo, hi


def _robust(t: int) -> str:
    return "(assert (or " + " ".join(f"(and (>= Y_{j} Y_{t}))" for j in range(10) if j != t) + "))"


def test_vnncomp_unsat_and_holds(tmp_path: Path) -> None:
    spec = tmp_path / "robust.vnnlib"
    images, labels = absint.load_images(DATA)
    _vnnlib(spec, 1e-4, _robust(int(labels[0])))
    out = tmp_path / "res.txt"
    assert main(["vnncomp", str(NET), str(spec), "--timeout", "30", "--out", str(out), "-a", "box"]) == 0
    assert out.read_text() == "unsat\n"
    assert main(["vnncomp", str(NET), str(spec), "--timeout", "30", "--out", str(out), "-a", "box",
                 "--format", "2021"]) == 0
    assert out.read_text() == "holds\n"


def test_vnncomp_sat_counterexample(tmp_path: Path) -> None:
    spec = tmp_path / "sat.vnnlib"
    lo, hi = _vnnlib(spec, 0.05, "(assert (<= Y_{t} 1000.0))")  # violated everywhere
    out = tmp_path / "res.txt"
    assert main(["vnncomp", str(NET), str(spec), "--timeout", "30", "--out", str(out), "-a", "box"]) == 0
    text = out.read_text()
    first, rest = text.split("\n", 1)
    assert first == "sat"
    assert rest.startswith("((X_0 ") and rest.rstrip().endswith(")")
    x, y = parse_counterexample(rest)
    assert x.shape == (64,) and y.shape == (10,)
    assert np.all(x >= lo) and np.all(x <= hi)
    net = absint.load_network(NET)
    with torch.no_grad():
        y_net = net.forward(torch.as_tensor(x.reshape(1, 1, 8, 8))).numpy().reshape(-1)
    np.testing.assert_allclose(y, y_net, rtol=1e-9, atol=1e-9)
    _, labels = absint.load_images(DATA)
    assert y[int(labels[0])] <= 1000.0
    try:  # the competition re-runs the counterexample with onnxruntime (float32)
        import onnxruntime as ort
    except ImportError:
        return
    sess = ort.InferenceSession(str(NET), providers=["CPUExecutionProvider"])
    y32 = sess.run(None, {sess.get_inputs()[0].name: x.reshape(1, 1, 8, 8).astype(np.float32)})[0].reshape(-1)
    np.testing.assert_allclose(y32, y, rtol=1e-4, atol=1e-4)
    # 2021 format: one word, counterexample beside it
    assert main(["vnncomp", str(NET), str(spec), "--timeout", "30", "--out", str(out), "-a", "box",
                 "--format", "2021"]) == 0
    assert out.read_text() == "violated\n"
    assert Path(str(out) + ".counterexample").read_text().startswith("((X_0 ")


def test_vnncomp_error_and_words(tmp_path: Path) -> None:
    out = tmp_path / "res.txt"
    assert main(["vnncomp", str(tmp_path / "missing.onnx"), str(tmp_path / "x.vnnlib"), "--timeout", "5",
                 "--out", str(out), "-a", "box"]) == 1
    assert out.read_text() == "error\n"
    timeout = Result("i", Verdict.UNKNOWN, "box", 5.0, reason="time-out")
    loose = Result("i", Verdict.UNKNOWN, "box", 1.0, -1.0, reason="too loose: margin lower bound -1")
    assert result_word(timeout) == "timeout" and result_word(loose) == "unknown" and result_word(None) == "error"
    assert result_word(Result("i", Verdict.VERIFIED, "box", 1.0), "2021") == "holds"
    text = format_counterexample(np.array([0.5, 1e-17]), np.array([-2.0]))
    assert text == "((X_0 0.5)\n (X_1 1e-17)\n (Y_0 -2.0))\n"


def _truth(path: Path) -> Path:
    path.write_text("onnx,vnnlib,timeout,verdict,reliability\n"
                    "onnx/a.onnx,vnnlib/p0.vnnlib,60,unsat,multi\n"
                    "onnx/a.onnx,vnnlib/p1.vnnlib,60,sat,ce\n"
                    "onnx/a.onnx,vnnlib/p2.vnnlib,60,unknown,\n"
                    "onnx/b.onnx,vnnlib/p0.vnnlib,60,sat,ce\n")
    return path


def _rows(verdicts: dict[tuple[str, str, str], str]) -> list[dict]:
    return [{"benchmark": "t", "network": n, "input": v, "eps": None, "analysis": a, "verdict": verdict,
             "margin": None, "seconds": 1.0, "reason": "time-out" if verdict == "unknown" and a == "slow" else ""}
            for (a, n, v), verdict in verdicts.items()]


def test_score_counts_and_loud_wrong_answer(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    truth = read_truth(_truth(tmp_path / "truth.csv"))
    good = _rows({("box", "onnx/a.onnx", "vnnlib/p0.vnnlib"): "verified",
                  ("box", "onnx/a.onnx", "vnnlib/p1.vnnlib"): "falsified",
                  ("box", "onnx/a.onnx", "vnnlib/p2.vnnlib"): "unknown",
                  ("box", "onnx/b.onnx", "vnnlib/p0.vnnlib"): "falsified",
                  ("slow", "onnx/a.onnx", "vnnlib/p0.vnnlib"): "unknown"})
    rep = score(good, truth)
    s = rep.scores["box"]
    assert (s.correct_unsat, s.correct_sat, s.wrong, s.unknown, s.missing) == (1, 2, 0, 1, 0)
    assert rep.scores["slow"].timeout == 1 and rep.scores["slow"].missing == 3
    assert "wrong answers: 0" in format_score(rep)
    # a 'verified' on a sat row is a soundness bug: counted, listed, and the CLI fails loudly
    bad = _rows({("buggy", "onnx/a.onnx", "vnnlib/p1.vnnlib"): "verified",
                 ("buggy", "onnx/a.onnx", "vnnlib/p0.vnnlib"): "falsified"})
    rep = score(bad, truth)
    assert rep.scores["buggy"].wrong == 2 and len(rep.soundness_bugs) == 1
    assert "SOUNDNESS BUG" in format_score(rep)
    res = tmp_path / "res.csv"
    with ResultStore(res) as st:
        st.write_many(good + bad)
    rc = main(["score", str(res), str(tmp_path / "truth.csv")])
    captured = capsys.readouterr()
    assert rc == 1
    assert "SOUNDNESS BUG" in captured.err and "buggy" in captured.err
    rc = main(["score", str(res), str(tmp_path / "truth.csv"), "--json", str(tmp_path / "s.json")])
    assert rc == 1 and (tmp_path / "s.json").exists()


def test_score_matches_by_file_name(tmp_path: Path) -> None:
    truth = read_truth(_truth(tmp_path / "truth.csv"))
    rows = _rows({("box", "./onnx/a.onnx", "vnnlib/p1.vnnlib"): "falsified",
                  ("box", "elsewhere/onnx/a.onnx", "elsewhere/vnnlib/p2.vnnlib"): "verified"})
    rep = score(rows, truth)
    assert rep.scores["box"].correct_sat == 1 and rep.scores["box"].decided_truth_unknown == 1
    assert rep.unmatched == 0
