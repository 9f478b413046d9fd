"""docs/architecture.md stays true: every dotted ``absint.*`` name it mentions imports, and every
module of the floors table is a floor of tests/test_imports.py."""
from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "architecture.md"
NAMES = sorted(set(re.findall(r"\babsint(?:\.[A-Za-z_]\w*)+", DOC.read_text())))


def _resolve(name: str) -> object:
    """Import the longest module prefix of ``name`` and get the rest as attributes."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj: object = importlib.import_module(".".join(parts[:i]))
        except ModuleNotFoundError:
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        return obj
    raise ModuleNotFoundError(name)


def test_the_page_mentions_many_names() -> None:
    assert len(NAMES) > 40


@pytest.mark.parametrize("name", NAMES)
def test_every_name_on_the_page_imports(name: str) -> None:
    try:
        _resolve(name)
    except (ImportError, AttributeError) as exc:
        pytest.fail(f"docs/architecture.md mentions {name}, which does not import: {exc}")


def test_floors_table_matches_the_import_test() -> None:
    from test_imports import FLOORS

    table = DOC.read_text().split("## Floors", 1)[1].split("##", 1)[0]
    for floor, prefixes in FLOORS:
        row = next(line for line in table.splitlines() if line.startswith(f"| {floor} "))
        for prefix in prefixes:
            if prefix == "absint.networks":
                continue  # data only
            assert f"`{prefix}`" in row, f"floor {floor}: {prefix} missing from docs/architecture.md"
