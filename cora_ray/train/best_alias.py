"""The run's stable `best` alias: `<storage_path>/<run_name>/best`, a copy of its best checkpoint so far.

Ray Train names checkpoints by time (`checkpoint_2026-...`), so a deploy file cannot name one before the run
ends. Training therefore publishes a copy of the best checkpoint (by validation AUC) at a fixed path, which
`jobs/evaluate.py --checkpoint`, `serve.config` and `--resume` can name in advance:

    <run>/best/trainable.safetensors     the best checkpoint's trainable tensors (sha256 checked on copy)
    <run>/best/train_state.json          its step, best AUC and patience counter (when present)
    <run>/best/manifest.json             its manifest plus `alias_of` (the checkpoint copied), written last;
                                         `alias_of` is outside the content hash (cora_ray/manifest.py), so the
                                         alias has the hash of the checkpoint it copies

The optimizer state is not copied: the alias is for scoring and serving; `--resume <run>/best` starts a new
run from its weights with fresh Adam moments.

Publishing goes through `storage.atomic_dir(..., overwrite=True)`: locally a staged sibling directory renamed
into place; on S3 (no renames, no symlinks) the old manifest is retracted first, the files are uploaded and
the manifest goes last, so a reader never accepts a half-written alias (readers refuse a directory without
manifest.json, and `load_trainable` checks the tensors' sha256 against it).

When: `BestAliasCallback` runs in Ray Train's controller after every report with a checkpoint and publishes
when the reported validation AUC beats the alias's (a resumed run compares with the alias it left); at the
end of the run `publish_final` makes the alias equal to the best checkpoint of the run's summary.
"""

from __future__ import annotations

import sys
from typing import Any

from ray.train import UserCallback

from cora_ray import manifest as manifests
from cora_ray import storage
from cora_ray.checkpoint import read_checkpoint_manifest
from cora_ray.errors import CoraError
from cora_ray.train.state import TRAIN_STATE_FILE

BEST_DIR = "best"


def best_alias_uri(run_uri: str) -> str:
    """`<run_uri>/best`."""
    return storage.join(run_uri, BEST_DIR)


def read_alias_manifest(run_uri: str, endpoint: str | None = None) -> dict | None:
    """The manifest of the run's published alias, or None when there is none yet."""
    uri = best_alias_uri(run_uri)
    if not storage.exists(storage.join(uri, storage.MANIFEST), endpoint):
        return None
    return read_checkpoint_manifest(uri, endpoint)


def publish_best(checkpoint_uri: str, run_uri: str, endpoint: str | None = None) -> str:
    """Copy the checkpoint at `checkpoint_uri` to `<run_uri>/best` (atomically, manifest last). Returns the
    alias URI. A trainable file whose sha256 differs from its manifest is refused (StorageError)."""
    manifest = read_checkpoint_manifest(checkpoint_uri, endpoint)
    trainable = manifest["trainable"]["file"]
    blob = manifests.read_recorded_file(checkpoint_uri, manifest["trainable"], endpoint)
    state_uri = storage.join(checkpoint_uri, TRAIN_STATE_FILE)
    state = storage.read_bytes(state_uri, endpoint) if storage.exists(state_uri, endpoint) else None
    alias = best_alias_uri(run_uri)
    with storage.atomic_dir(alias, endpoint=endpoint, overwrite=True) as tmp:
        (tmp / trainable).write_bytes(blob)
        if state is not None:
            (tmp / TRAIN_STATE_FILE).write_bytes(state)
        manifests.write(manifests.CHECKPOINT, tmp, {**manifest, "alias_of": checkpoint_uri})
    return alias


def _same_checkpoint(alias: dict | None, manifest: dict) -> bool:
    return (
        alias is not None
        and alias.get("step") == manifest.get("step")
        and alias["trainable"]["sha256"] == manifest["trainable"]["sha256"]
    )


def publish_final(best_checkpoint: str | None, run_uri: str, endpoint: str | None = None) -> str | None:
    """End of the run: make `<run_uri>/best` the run's best checkpoint (from its summary) unless it already
    is. Returns the alias URI, or None when the run has no checkpoint with a validation AUC."""
    if best_checkpoint is None:
        return None
    manifest = read_checkpoint_manifest(best_checkpoint, endpoint)
    if not _same_checkpoint(read_alias_manifest(run_uri, endpoint), manifest):
        publish_best(best_checkpoint, run_uri, endpoint)
    return best_alias_uri(run_uri)


class BestAliasCallback(UserCallback):
    """Ray Train callback (runs in the controller): after a report whose checkpoint has a better validation
    AUC than the published alias, publish that checkpoint as `<run>/best`.

    A failure to publish during the run is printed as a warning and not raised: the run goes on, and
    `publish_final` publishes the alias again at its end (raising there if it still fails)."""

    def __init__(self, run_uri: str, endpoint: str | None = None) -> None:
        self.run_uri = run_uri
        self.endpoint = endpoint

    def checkpoint_uri(self, checkpoint: Any) -> str:
        """The URI of a persisted Ray Train checkpoint (its path has no scheme on S3)."""
        path = checkpoint.path
        return f"s3://{path.lstrip('/')}" if storage.is_s3(self.run_uri) else path

    def after_report(self, run_context: Any, metrics: list[dict], checkpoint: Any) -> None:
        """Ray Train hook: every worker reported `metrics`; `checkpoint` is persisted (or None)."""
        auc = (metrics[0] if metrics else {}).get("valid_auc")
        if checkpoint is None or auc is None:
            return
        uri = self.checkpoint_uri(checkpoint)
        try:
            alias = read_alias_manifest(self.run_uri, self.endpoint)
            best = None if alias is None else (alias.get("metrics") or {}).get("valid_auc")
            if best is None or auc > best:
                alias_uri = publish_best(uri, self.run_uri, self.endpoint)
                print(f"[train] best alias {alias_uri} = {uri} (valid AUC {auc:.4f})", flush=True)
        except (CoraError, OSError) as exc:
            print(
                f"warning: best alias {best_alias_uri(self.run_uri)} not updated to {uri} ({exc}); "
                "the run publishes it again when it ends",
                file=sys.stderr,
                flush=True,
            )
