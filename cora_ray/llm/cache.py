"""The local cache of base LLMs: converted GGUF models, s3:// downloads and weight hashes.

Each cached model is a directory published atomically (built under a temporary sibling, renamed into
place) while holding a file lock, so parallel workers on one machine build it once and never see half of
it. A directory counts as complete when it holds `cora_ray_llm.json` (written last, before the rename).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import filelock

from cora_ray import storage
from cora_ray.errors import ModelError
from cora_ray.llm.hashing import safetensors_files, safetensors_weight_hash

MARKER = "cora_ray_llm.json"
LOCK_TIMEOUT_S = 1800.0  # a 7B download or conversion by another worker can take this long


def cache_root(cache_dir: str | None = None) -> Path:
    """`cache_dir` when given, else `$CORA_RAY_CACHE_DIR`, else `$XDG_CACHE_HOME/cora_ray/llm` (~/.cache)."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    if os.environ.get("CORA_RAY_CACHE_DIR"):
        return Path(os.environ["CORA_RAY_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "cora_ray" / "llm"


def read_marker(directory: Path) -> dict[str, Any] | None:
    """The `cora_ray_llm.json` of a complete cached directory, or None when it is not there."""
    marker = Path(directory) / MARKER
    if not marker.is_file():
        return None
    return json.loads(marker.read_text())


def build_once(dest: Path, build: Callable[[Path], dict[str, Any]], what: str) -> dict[str, Any]:
    """Make sure the directory `dest` exists, complete; build it if it does not. Returns its marker.

    `build(tmp)` writes the directory's files under the empty directory `tmp` and returns the marker
    content (JSON-serialisable). It runs at most once per machine at a time: under a file lock next to
    `dest`, after re-checking that no other process finished it meanwhile.
    """
    done = read_marker(dest)
    if done is not None:
        return done
    dest.parent.mkdir(parents=True, exist_ok=True)
    lock_path = dest.parent / f".{dest.name}.lock"
    try:
        lock = filelock.FileLock(str(lock_path), timeout=LOCK_TIMEOUT_S)
        lock.acquire()
    except filelock.Timeout:
        raise ModelError(
            f"waited {LOCK_TIMEOUT_S:.0f} s for another process to finish {what} into {dest} "
            f"(lock {lock_path}); if no such process is running, delete the lock file"
        ) from None
    try:
        done = read_marker(dest)
        if done is not None:
            return done
        # Left-overs of a process that died mid-build (only the lock holder creates them).
        for stale in dest.parent.glob(f".{dest.name}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        if dest.exists():
            shutil.rmtree(dest)
        tmp = dest.parent / f".{dest.name}.tmp-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            info = build(tmp)
            (tmp / MARKER).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
            os.replace(tmp, dest)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return info
    finally:
        lock.release()


def directory_weight_hash(
    directory: Path, root: Path, compute: Callable[[], str] | None = None, salt: str = ""
) -> str:
    """The weight hash of a model directory, computed once and remembered.

    A cache directory built here carries it in its marker. Any other directory (a local HF folder, the HF
    hub cache) is hashed once per content fingerprint (its path and the names, sizes and mtimes of its
    weight files, plus `salt`) and the result is kept under `<root>/hashes/`. The hash comes from the
    `*.safetensors` files, or from `compute()` for a directory with other weight files (`*.bin`).
    """
    marker = read_marker(directory)
    if marker is not None and "weight_hash" in marker:
        return str(marker["weight_hash"])
    files = safetensors_files(directory)
    from_files = bool(files)
    if not from_files:
        if compute is None:
            raise ModelError(f"no *.safetensors files in {directory}")
        files = sorted(Path(directory).glob("*.bin"))
    stats = [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    fingerprint = json.dumps([str(Path(directory).resolve()), stats, salt])
    key = hashlib.sha256(fingerprint.encode()).hexdigest()[:24]
    record = root / "hashes" / f"{key}.json"
    if record.is_file():
        return str(json.loads(record.read_text())["weight_hash"])
    weight_hash = safetensors_weight_hash(directory) if from_files else compute()  # type: ignore[misc]
    storage.write_json(str(record), {"directory": str(directory), "files": stats, "weight_hash": weight_hash})
    return weight_hash
