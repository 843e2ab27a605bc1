"""Tiny artifacts for the scorer tests (built once per session; see tiny_setup.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))


@pytest.fixture(scope="session")
def tiny_artifacts(tmp_path_factory):
    from tiny_setup import shared_tiny_artifacts

    return shared_tiny_artifacts(tmp_path_factory)
