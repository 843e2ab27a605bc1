"""The GPU scripts (bench/gpu_check.py, bench/gpu_ml1m.py) run on a machine without Ray: every cora_ray module they
import must load with Ray absent. (gpu_check.py once imported a helper from cora_ray.train.recipe, which imports
ray.train at its top: on the GPU machine it would have stopped at that import.)"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = ["bench/gpu_check.py", "bench/gpu_ml1m.py", "bench/gpu_ml1m_report.py"]


def cora_ray_imports(path: Path) -> list[str]:
    """`from cora_ray.x import a, b` and `import cora_ray.x` anywhere in the file (also inside functions)."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("cora_ray"):
            lines.append(f"from {node.module} import {', '.join(a.name for a in node.names)}")
        elif isinstance(node, ast.Import):
            lines += [f"import {a.name}" for a in node.names if a.name.startswith("cora_ray")]
    return lines


@pytest.mark.parametrize("script", SCRIPTS)
def test_gpu_script_imports_load_without_ray(script):
    imports = cora_ray_imports(REPO / script)
    assert imports, f"{script}: no cora_ray import found (the parser or the script changed)"
    code = "\n".join(
        ["import sys", "sys.modules['ray'] = None  # any `import ray` now raises ImportError", *imports]
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180, cwd=REPO)
    assert r.returncode == 0, f"{script}: {r.stderr[-2000:]}"
