"""docs/writing-a-domain.md runs as written: its python blocks are executed in order, in one module.

The module is registered in ``sys.modules`` so the tutorial's classes pickle (the conformance
kit's ``picklable`` check needs that, as it would for a real plugin module).
"""
from __future__ import annotations

import configparser
import re
import sys
import types
from pathlib import Path

import pytest
import torch

from absint import registry

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "writing-a-domain.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)


def _blocks(lang: str) -> list[tuple[int, str]]:
    text = DOC.read_text()
    return [(text[: m.start()].count("\n") + 2, m.group(2)) for m in FENCE.finditer(text) if m.group(1) == lang]


@pytest.fixture
def tutorial_module(monkeypatch):
    name = "writing_a_domain_tutorial"
    module = types.ModuleType(name)
    module.__file__ = str(DOC)
    monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.chdir(ROOT)  # the tutorial loads networks/ relative to the repository root
    saved = registry.snapshot()
    yield module
    registry.restore(saved)


def test_tutorial_python_blocks_run_as_written(tutorial_module) -> None:
    torch.set_num_threads(1)
    blocks = _blocks("python")
    assert len(blocks) >= 6, "the tutorial lost its code blocks?"
    for line, code in blocks:
        compiled = compile(code, f"{DOC.relative_to(ROOT)}:{line}", "exec", dont_inherit=True)
        exec(compiled, tutorial_module.__dict__)  # noqa: S102 - running our own documentation
    ns = tutorial_module.__dict__
    assert ns["report"].failures and ns["SafeBoxDomain"].name == "safebox"
    assert registry.available_domains()["safebox"] is ns["SafeBoxDomain"]


def test_tutorial_setup_cfg_declares_the_tutorial_domain() -> None:
    (ini,) = [code for _, code in _blocks("ini")]
    cfg = configparser.ConfigParser()
    cfg.read_string(ini)
    entry = cfg.get("options.entry_points", "absint.domains").strip()
    assert entry == "safebox = absint_safebox:SafeBoxDomain"
    assert 'name = "safebox"' in DOC.read_text()


def test_example_plugin_declares_its_entry_point() -> None:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "examples" / "absint-symint" / "setup.cfg")
    assert cfg.get("options.entry_points", "absint.domains").strip() == "symint = absint_symint:SymIntDomain"
