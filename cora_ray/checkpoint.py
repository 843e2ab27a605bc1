"""The CoRA checkpoint (docs/architecture.md §3.4): what training writes and evaluation / serving load.

    <uri>/trainable.safetensors   generator + every P_m (or the baseline's trainable parts) — never the LLM
    <uri>/manifest.json           written last: the commit marker

manifest.json:
    kind             "cora_ray.checkpoint"
    version          1
    method           cora | tallrec | collm | zero_shot
    config           the full ExperimentConfig as a dict
    base_llm         {"identity": str, "weight_hash": sha256 hex}
    answer_token_id  int;  negative_token_id: int | null
    cf_artifact      {"uri": str, "hash": str, "backbone": str} | null
    dataset_hash     the protocol dataset's manifest hash
    metrics          {"valid_auc": ..., "valid_uauc": ..., ...}
    step             optimizer steps done
    trainable        {"file": "trainable.safetensors", "sha256": ..., "tensors": n, "parameters": n,
                      "dtypes": ["float32"]}   training writes fp32 master weights whatever the LLM's dtype
    hash             sha256 of the manifest's canonical content (cora_ray/manifest.py): it covers
                     `trainable.sha256`, so it changes with the trainable tensors; checkpoints written
                     before it existed get it computed on read
    alias_of         only in a run's `best` alias (cora_ray/train/best_alias.py); not hashed

Reading, the kind / version check, the hash and the atomic write are cora_ray/manifest.py's (`CHECKPOINT`).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from cora_ray import manifest as manifests
from cora_ray.errors import ArtifactMismatchError

KIND = manifests.CHECKPOINT.kind
VERSION = manifests.CHECKPOINT.version
TRAINABLE_FILE = "trainable.safetensors"


def write_checkpoint_files(
    directory: str | Path,
    trainable: dict[str, torch.Tensor],
    *,
    method: str,
    config: dict,
    base_llm: dict,
    answer_token_id: int,
    negative_token_id: int | None,
    cf_artifact: dict | None,
    dataset_hash: str,
    metrics: dict,
    step: int,
) -> dict:
    """Write the two files into a LOCAL directory (the caller publishes it: Ray Train, or storage.atomic_dir)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in trainable.items()}
    blob = st_save(tensors)
    (directory / TRAINABLE_FILE).write_bytes(blob)
    fields = {
        "method": method,
        "config": config,
        "base_llm": {"identity": base_llm["identity"], "weight_hash": base_llm["weight_hash"]},
        "answer_token_id": int(answer_token_id),
        "negative_token_id": None if negative_token_id is None else int(negative_token_id),
        "cf_artifact": cf_artifact,
        "dataset_hash": dataset_hash,
        "metrics": metrics,
        "step": int(step),
        "trainable": {
            "file": TRAINABLE_FILE,
            "sha256": hashlib.sha256(blob).hexdigest(),
            "tensors": len(tensors),
            "parameters": int(sum(t.numel() for t in tensors.values())),
            "dtypes": sorted({str(t.dtype).removeprefix("torch.") for t in tensors.values()}),
        },
    }
    return manifests.write(manifests.CHECKPOINT, directory, fields)


def read_checkpoint_manifest(uri: str, endpoint: str | None = None) -> dict:
    """The checkpoint's manifest (with its `hash`); refuses directories that are incomplete or not
    checkpoints, other versions and edited manifests (cora_ray/manifest.py)."""
    return manifests.read(manifests.CHECKPOINT, uri, endpoint)


def checkpoint_hash(manifest: dict) -> str:
    """The checkpoint's content hash: the recorded `hash`, or computed for a manifest written before it."""
    return manifest.get("hash") or manifests.content_hash(manifests.CHECKPOINT, manifest)


def load_trainable(
    uri: str, manifest: dict | None = None, endpoint: str | None = None
) -> dict[str, torch.Tensor]:
    """The trainable tensors, checked against the sha256 in the manifest."""
    manifest = manifest or read_checkpoint_manifest(uri, endpoint)
    return st_load(manifests.read_recorded_file(uri, manifest["trainable"], endpoint))


def check_compatible(
    manifest: dict,
    *,
    uri: str,
    llm_weight_hash: str | None = None,
    cf_hash: str | None = None,
    dataset_hash: str | None = None,
) -> None:
    """Refuse to use a checkpoint with another base LLM, CF artifact or dataset (message names both hashes)."""
    checks = [
        ("base LLM weight hash", manifest["base_llm"]["weight_hash"], llm_weight_hash),
        ("CF artifact hash", (manifest.get("cf_artifact") or {}).get("hash"), cf_hash),
        ("dataset hash", manifest.get("dataset_hash"), dataset_hash),
    ]
    for what, expected, actual in checks:
        if actual is not None and expected is not None and expected != actual:
            raise ArtifactMismatchError(
                f"checkpoint {uri} was trained with {what} {expected}, but the one given has {actual}; "
                "use the base model / artifact / dataset the checkpoint was made with"
            )
