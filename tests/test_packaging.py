"""Packaging: the wheel holds every package, the bundled networks and the entry points, so that a
non-editable ``pip install .`` runs ``absint verify`` from any folder."""
from __future__ import annotations

import configparser
import fnmatch
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"absint": "absint", "absint.domains": "domains", "absint.solvers": "solvers", "absint.networks": "networks"}


def _cfg() -> configparser.ConfigParser:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    return cfg


def _lines(value: str) -> list[str]:
    return [v.strip() for v in value.strip().splitlines() if v.strip()]


def test_setup_cfg_lists_every_package() -> None:
    declared = set(_lines(_cfg().get("options", "packages")))
    found = set()
    for name, folder in FOLDERS.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder).parts
            pkg = ".".join([name, *rel])
            if not (name == "absint" and rel and rel[0] in ("domains", "solvers", "networks")):
                found.add(pkg)
    assert found == declared, f"add to setup.cfg [options] packages: {sorted(found - declared)}; " \
                              f"no such package: {sorted(declared - found)}"


def test_bundled_files_are_package_data() -> None:
    patterns = [p.strip() for p in _cfg().get("options.package_data", "absint.networks").split(",")]
    data = [p.name for p in (ROOT / "networks").iterdir() if p.suffix in (".onnx", ".npz", ".json")]
    assert data and all(any(fnmatch.fnmatch(n, pat) for pat in patterns) for n in data)
    from absint.cli import DEFAULT_DATA, DEFAULT_NETWORK
    from absint.data import bundled

    assert DEFAULT_NETWORK.is_file() and DEFAULT_DATA.is_file() and DEFAULT_NETWORK.parent == bundled()


@pytest.mark.slow
def test_wheel_contents(tmp_path) -> None:
    """Build the wheel from a clean copy of the tracked files and look inside."""
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True)
    if files.returncode != 0:
        pytest.skip("not a git checkout")
    src = tmp_path / "src"
    for rel in files.stdout.splitlines():
        if (ROOT / rel).is_file():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, src / rel)
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(tmp_path / "dist"), str(src)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("absint-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for must in ("absint/registry.py", "absint/domains/box.py", "absint/domains/krelu/__init__.py",
                 "absint/solvers/highs_backend.py", "absint/networks/digits_mlp_2x64.onnx",
                 "absint/networks/digits_test.npz", "absint/networks/MANIFEST.json", "absint/bench/cli.py"):
        assert must in names, must
    assert not any(n.startswith(("domains/", "solvers/", "networks/", "tests/")) for n in names)
    eps = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(eps).decode()
    for group in ("[absint.domains]", "[absint.solvers]", "[absint.analyses]", "[console_scripts]"):
        assert group in text
