"""The VNN-COMP tool scripts (vnncomp/): prepare_instance.sh and run_instance.sh on ACAS Xu instances."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import torch

import absint
from absint.bench.vnncomp import parse_counterexample

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "vnncomp"


def _sh(*argv, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": os.environ.get("PYTHON", "python3")}
    return subprocess.run(["bash", *map(str, argv)], capture_output=True, timeout=timeout, env=env)


def test_scripts_exist_and_take_the_competition_arguments():
    for name in ("install_tool.sh", "prepare_instance.sh", "run_instance.sh"):
        path = SCRIPTS / name
        assert path.is_file() and os.access(path, os.X_OK), name
    bad = _sh(SCRIPTS / "run_instance.sh", "v1", "too", "few")
    assert bad.returncode != 0 and b"usage" in bad.stderr


def test_prepare_and_run_an_acasxu_instance(bench, tmp_path):
    acas = bench / "acasxu"
    onnx, prop = acas / "onnx/ACASXU_run2a_2_1_batch_2000.onnx", acas / "vnnlib/prop_2.vnnlib"  # sat in truth.csv
    prep = _sh(SCRIPTS / "prepare_instance.sh", "v1", "acasxu", onnx, prop)
    assert prep.returncode == 0, prep.stderr.decode()
    out = tmp_path / "results" / "out.txt"
    # The limit is generous: the counterexample is found by sampling, long before it.
    run = _sh(SCRIPTS / "run_instance.sh", "v1", "acasxu", onnx, prop, out, 300)
    assert run.returncode == 0, run.stderr.decode()
    text = out.read_text()
    assert text.startswith("sat\n((X_0 ")
    x, y = parse_counterexample(text)
    net = absint.load_network(onnx)
    y_net = net.forward(torch.as_tensor(x[None])).reshape(-1).numpy()
    assert np.allclose(y, y_net)
    spec = absint.parse_vnnlib(prop)
    (inst,) = spec.instances
    assert inst.region.contains(x) and inst.prop.violated_by(y_net)


def test_prepare_reports_a_bad_property(bench, tmp_path):
    bad = tmp_path / "bad.vnnlib"
    bad.write_bytes(b"\xff\xfe not text")
    prep = _sh(SCRIPTS / "prepare_instance.sh", "v1", "acasxu", bench / "acasxu/onnx/ACASXU_run2a_1_1_batch_2000.onnx",
               bad)
    assert prep.returncode == 1 and b"not a text file" in prep.stderr
