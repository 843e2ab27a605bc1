"""The evaluation tests share the scorer tests' tiny artifacts (tests/infer/tiny_setup.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

INFER_TESTS = Path(__file__).resolve().parents[1] / "infer"
if str(INFER_TESTS) not in sys.path:
    sys.path.insert(0, str(INFER_TESTS))


@pytest.fixture(scope="session")
def tiny_artifacts(tmp_path_factory):
    from tiny_setup import shared_tiny_artifacts

    return shared_tiny_artifacts(tmp_path_factory)
