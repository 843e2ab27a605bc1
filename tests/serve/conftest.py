"""Serving tests import the top-level `serve/` package (not installed: the repository root goes on sys.path)."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
