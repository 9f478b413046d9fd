"""Shared fixtures: benchmark data location, bundled networks, one torch thread per test process."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
BENCH = (ROOT / ".." / "shared" / "bench").resolve()
NETWORKS = ROOT / "networks"

# Small networks run fastest single-threaded, and tests must not oversubscribe a 2-core machine.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def bench() -> Path:
    """The shared benchmark data (../shared/bench next to the repository; CI provides it)."""
    assert BENCH.is_dir(), f"benchmark data expected at {BENCH} (see README: ../shared/bench)"
    return BENCH


@pytest.fixture(scope="session")
def networks_dir() -> Path:
    return NETWORKS


@pytest.fixture(autouse=True)
def _user_folders(tmp_path_factory, monkeypatch) -> None:
    """Results that would go to the user's data folder go to a temporary one during tests."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path_factory.mktemp("xdg_data")))
