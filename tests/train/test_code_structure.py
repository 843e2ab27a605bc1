"""Code-structure rule of issue 16 item 3: no function longer than 80 lines in the packages listed here.

Directories join SCANNED once they comply; cora_ray/infer and serve/ complied when this test was written.
Extend the list (e.g. with cora_ray/eval) as other packages are brought under the rule."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MAX_FUNCTION_LINES = 80
SCANNED = ["cora_ray/train", "cora_ray/infer", "serve"]


def long_functions(root: Path, base: Path = REPO, limit: int = MAX_FUNCTION_LINES) -> list[str]:
    """'path:line name (N lines)' (path relative to `base`) for every function or method under `root`
    longer than `limit` lines."""
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > limit:
                    found.append(f"{path.relative_to(base)}:{node.lineno} {node.name} ({lines} lines)")
    return found


@pytest.mark.parametrize("directory", SCANNED)
def test_no_function_longer_than_80_lines(directory: str) -> None:
    assert (REPO / directory).is_dir(), directory
    assert long_functions(REPO / directory) == []


def test_the_scan_finds_a_long_function(tmp_path: Path) -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    (tmp_path / "m.py").write_text(f"def short():\n    return 1\n\n\ndef long():\n{body}\n")
    assert long_functions(tmp_path, base=tmp_path) == [f"m.py:5 long ({MAX_FUNCTION_LINES + 1} lines)"]
