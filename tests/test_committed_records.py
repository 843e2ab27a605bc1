"""Committed records — results/ (evaluations, curves, studies) and bench/results/ — name no machine's paths.

A clone anywhere else reads them as they are: paths in them are relative to the repository (`runs/...`,
`artifacts/cf/mf`) or a placeholder (`<run>/best`, `<tmp>` for a benchmark's own temp directory). Benchmarks
write through bench/common.py `portable`, checked here too.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RECORD_DIRS = ("results/", "bench/results/")
# an absolute path into a home, a checkout or a scratch directory (the forms these records ever held)
MACHINE_PATH = re.compile(r"(?<![\w.<>-])/(?:work|home|root|Users|tmp|private|var/folders)/[^\s\"'`)]*")


def committed_records() -> list[Path]:
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout (no `git ls-files`): the committed records cannot be listed")
    out = subprocess.run(
        ["git", "ls-files", "-z", *RECORD_DIRS], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    return [REPO / n for n in out.split("\0") if n and n.endswith((".json", ".md", ".jsonl", ".csv"))]


def test_no_committed_record_names_a_machine_path():
    files = committed_records()
    assert files, f"no records under {RECORD_DIRS}"
    found = []
    for path in files:
        for lineno, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            found += [f"{path.relative_to(REPO)}:{lineno}: {m}" for m in MACHINE_PATH.findall(line)]
    assert not found, "machine paths in committed records:\n" + "\n".join(found[:20])


def test_the_pattern_finds_what_it_is_for():
    assert MACHINE_PATH.findall('"uri": "/work/tree/artifacts/ml-1m"') == ["/work/tree/artifacts/ml-1m"]
    assert MACHINE_PATH.findall("checkpoint `/tmp/h1_runs/demo64/best` (scratch)") == [
        "/tmp/h1_runs/demo64/best"
    ]
    assert not MACHINE_PATH.findall('"uri": "artifacts/ml-1m", "version": "<tmp>/tiny/checkpoint@98b8"')
    assert not MACHINE_PATH.findall("see docs/work/x.md and s3://bucket/home/y")


def _bench_common():
    spec = importlib.util.spec_from_file_location("bench_common_paths", REPO / "bench" / "common.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmarks_write_portable_text():
    common = _bench_common()
    scratch = tempfile.mkdtemp(prefix="bench_serve_")
    try:
        text = common.portable(
            f'{{"ckpt": "{REPO}/runs/x/best", "version": "{scratch}/tiny/checkpoint@ab12", "cwd": "{REPO}"}}'
        )
    finally:
        Path(scratch).rmdir()
    assert text == '{"ckpt": "runs/x/best", "version": "<tmp>/tiny/checkpoint@ab12", "cwd": "."}'
    assert not MACHINE_PATH.findall(text)
