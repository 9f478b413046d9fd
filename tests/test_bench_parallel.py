"""Results do not depend on the backend: 1 worker, 2 spawned workers, and Ray give the same verdicts."""
from __future__ import annotations

from pathlib import Path

import pytest

from absint.bench import BackendError, parse_config, read_rows, run_config
from absint.bench.runner import iter_results
from absint.bench.store import row_key

ROOT = Path(__file__).resolve().parents[1]
NET = ROOT / "networks" / "digits_mlp_2x64.onnx"
DATA = ROOT / "networks" / "digits_test.npz"


def _cfg(results: Path, tmp_path: Path):
    return parse_config({"name": "tiny", "analyses": ["box"], "results": str(results), "batch_size": 2,
                         "experiment": [{"name": "digits", "network": str(NET), "data": str(DATA),
                                         "eps": [0.005, 0.02], "count": 8}]}, root=tmp_path)


def _verdicts(path: Path) -> dict:
    return {row_key(r): (r["verdict"], r["margin"], r["correct"]) for r in read_rows(path)}


@pytest.fixture(scope="module")
def serial(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("serial")
    out = tmp / "w1.jsonl"
    assert run_config(_cfg(out, tmp), workers=1).instances == 16
    return out


def test_two_workers_same_as_one(serial: Path, tmp_path: Path) -> None:
    out = tmp_path / "w2.jsonl"
    summary = run_config(_cfg(out, tmp_path), workers=2, threads_per_worker=1)
    assert summary.instances == 16
    assert _verdicts(out) == _verdicts(serial)
    # rows came from spawned worker processes, not from this one
    import os
    assert all(not r["worker"].endswith(f":{os.getpid()}") for r in read_rows(out))


@pytest.mark.ray
def test_ray_same_as_one(serial: Path, tmp_path: Path) -> None:
    ray = pytest.importorskip("ray")
    try:  # a machine that cannot start Ray at all is an environment problem, not ours
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"cannot start a local Ray instance: {exc}")
    try:
        out = tmp_path / "ray.jsonl"
        summary = run_config(_cfg(out, tmp_path), workers=2, backend="ray")
        assert summary.instances == 16
        assert _verdicts(out) == _verdicts(serial)
    finally:
        ray.shutdown()


def test_ray_missing_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(BackendError, match="pip install"):
        next(iter_results([], backend="ray"))
