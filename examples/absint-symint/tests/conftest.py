"""Test the plugin's source next to these tests, not whichever copy is installed.

The entry point names the module ``absint_symint``; putting this checkout's copy first on the
path (at collection, before any test loads plugins) makes the whole session use it.
"""
from __future__ import annotations

import sys
from pathlib import Path

SOURCE = str(Path(__file__).resolve().parents[1])
if SOURCE not in sys.path:
    sys.path.insert(0, SOURCE)
