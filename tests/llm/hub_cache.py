"""A Hugging Face hub cache laid out on disk, for loading a hub id offline in tests."""

from __future__ import annotations

from pathlib import Path


def fake_hub_cache(root: Path, repo_id: str, model_dir: Path, commit: str) -> str:
    """The HF hub cache layout for one repo: refs/main -> snapshots/<commit>/<files of model_dir>.

    Returns the commit."""
    repo = root / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for f in model_dir.iterdir():
        (snapshot / f.name).write_bytes(f.read_bytes())
    return commit
