"""absint report: comparison tables and figure files."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from absint.bench.report import format_report, image_table, summary_table, vnn_table
from absint.bench.store import ResultStore, read_rows
from absint.cli import main

pytest.importorskip("matplotlib")


def _rows() -> list[dict]:
    rng = np.random.default_rng(0)
    rows = []
    for eps in (0.01, 0.02, 0.04):
        for i in range(20):
            correct = i % 10 != 0
            base = rng.normal(0.5 - 20 * eps, 0.3)
            for a, shift, t in (("box", -0.4, 0.001), ("deeppoly", 0.0, 0.01)):
                m = base + shift
                verdict = "falsified" if not correct else ("verified" if m > 0 else "unknown")
                rows.append({"benchmark": "img", "network": "net.onnx", "input": str(i), "eps": eps, "analysis": a,
                             "verdict": verdict, "margin": m, "seconds": t * (1 + rng.random()), "correct": correct,
                             "label": i % 10, "reason": "", "peak_rss_mib": 200.0})
    for j in range(8):
        for a in ("box", "deeppoly"):
            v = ["verified", "falsified", "unknown", "unknown"][(j + (a == "box")) % 4]
            rows.append({"benchmark": "vnn", "network": "onnx/a.onnx", "input": f"vnnlib/p{j}.vnnlib", "eps": None,
                         "analysis": a, "verdict": v, "margin": float(j - 4), "seconds": 0.1 * (j + 1),
                         "reason": "time-out" if v == "unknown" and j == 2 else ""})
    return rows


def test_tables() -> None:
    rows = _rows()
    img = image_table(rows)
    assert "| img | net.onnx | 0.01 | box | 20 | 18 |" in img
    lines = [ln for ln in img.splitlines() if "| deeppoly |" in ln]
    assert len(lines) == 3
    n_cert = sum(1 for r in rows if r["analysis"] == "deeppoly" and r["eps"] == 0.01 and r["verdict"] == "verified")
    assert f"**{n_cert}**" in lines[0]
    vnn = vnn_table(rows)
    assert "| vnn | box | 8 |" in vnn and "| vnn | deeppoly | 8 |" in vnn
    text = format_report(rows)
    assert "certified = correctly classified inputs proven robust" in text
    assert "median s" in text and "mean s" in text
    assert "precision" not in text.lower()


def test_summary_cross_table() -> None:
    rows = _rows()
    for r in rows:
        r["timeout"] = 5.0 if r["analysis"] == "deeppoly" else None
    table = summary_table(rows)
    head, _, *body = table.splitlines()
    assert "| box (no limit) | deeppoly (5 s) |" in head  # cheap-to-precise order, limits in the header
    assert len(body) == 3  # one line per (experiment, eps)
    for eps, line in zip((0.01, 0.02, 0.04), body):
        assert line.startswith(f"| img ({eps:g}) | 18 / 20 |")
        cells = [c.strip() for c in line.split("|")[3:5]]
        for a, cell in zip(("box", "deeppoly"), cells):
            n = sum(1 for r in rows if r["analysis"] == a and r["eps"] == eps and r["verdict"] == "verified")
            assert cell.startswith(f"**{n}** (")
    assert summary_table([r for r in rows if r["eps"] is None]) == ""


def test_report_cli_writes_figures(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    res = tmp_path / "r.jsonl"
    with ResultStore(res) as s:
        s.write_many(_rows())
    assert len(read_rows(res)) == 2 * 60 + 16
    out = tmp_path / "fig"
    assert main(["report", str(res), "--out", str(out), "--format", "png", "svg"]) == 0
    printed = capsys.readouterr().out
    assert "certified" in printed
    expected = ["cactus_img", "cactus_vnn", "margins_box_vs_deeppoly", "eps_img"]
    for stem in expected:
        for ext in ("png", "svg"):
            f = out / f"{stem}.{ext}"
            assert f.exists() and f.stat().st_size > 1000, f
    assert (out / "cactus_img.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "report.md").read_text()
    assert "![cactus_img](cactus_img.png)" in md
    # an explicit pair and a benchmark filter
    out2 = tmp_path / "fig2"
    assert main(["report", str(res), "--out", str(out2), "--pair", "deeppoly", "box", "--benchmark", "vnn"]) == 0
    assert (out2 / "margins_deeppoly_vs_box.png").exists() and not (out2 / "eps_img.png").exists()
