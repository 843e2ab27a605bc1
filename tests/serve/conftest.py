"""Serving tests import the top-level `serve/` package and their helpers as `tests.serve.*` (neither is
installed: the repository root goes on sys.path)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


@pytest.fixture(scope="session")
def tiny_setup(tmp_path_factory):
    """Dataset, CF artifact, tiny LLM and two checkpoints on disk, built once for the serving tests."""
    from tests.serve.artifacts import build_tiny_setup

    return build_tiny_setup(tmp_path_factory.mktemp("serve_tiny"))
