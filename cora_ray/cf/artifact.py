"""The CF artifact (docs/architecture.md §3.2): what pretraining writes and CoRA / CoLLM / evaluation / serving load.

    <uri>/model.safetensors            every tensor of the backbone (user and item tables, LightGCN's graph,
                                       SASRec's blocks, known_users)
    <uri>/embeddings/users.parquet     user_id int32, vector list<float32>, known bool   (for inspection)
    <uri>/embeddings/items.parquet     item_id int32, vector list<float32>
    <uri>/manifest.json                written last: the commit marker

manifest.json: kind "cora_ray.cf_artifact", version, backbone, model (the spec that rebuilds it), config
(the full CFTrainConfig), dataset {hash, name, uri, users, items}, dataset_hash, metrics {valid, test,
test_warm, test_cold: AUC/UAUC}, training {best_epoch, epochs, seconds, ...}, selection (grid trials),
weights {file, sha256, ...} and `hash` = sha256 of the manifest's canonical content: the "CF artifact
hash" a CoRA checkpoint records. Reading, the kind / version check, the hash and the atomic write are
cora_ray/manifest.py's (`CF_ARTIFACT`). No pickle: safetensors + JSON + parquet.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from cora_ray import manifest as manifests
from cora_ray import storage
from cora_ray.cf.base import CFBackbone
from cora_ray.cf.models import SASRec, build_backbone
from cora_ray.errors import ArtifactMismatchError, StorageError

KIND = manifests.CF_ARTIFACT.kind
VERSION = manifests.CF_ARTIFACT.version
WEIGHTS_FILE = "model.safetensors"
USERS_FILE = "embeddings/users.parquet"
ITEMS_FILE = "embeddings/items.parquet"


def manifest_hash(manifest: dict) -> str:
    """sha256 of the manifest's canonical JSON without its own `hash` field (cora_ray/manifest.py)."""
    return manifests.content_hash(manifests.CF_ARTIFACT, manifest)


def _vectors_table(id_name: str, ids: np.ndarray, vectors: np.ndarray, extra: dict | None = None) -> pa.Table:
    dim = vectors.shape[1]
    flat = pa.array(vectors.astype(np.float32).reshape(-1), type=pa.float32())
    cols = {
        id_name: pa.array(ids.astype(np.int32), type=pa.int32()),
        "vector": pa.FixedSizeListArray.from_arrays(flat, dim),
    }
    for k, v in (extra or {}).items():
        cols[k] = pa.array(v)
    return pa.table(cols)


@torch.no_grad()
def export_embeddings(
    model: CFBackbone, user_history: torch.Tensor | None = None, batch_size: int = 8192
) -> tuple[pa.Table, pa.Table]:
    """(users, items) tables of id + vector. SASRec's user vectors need `user_history` ((U+1, H), row = user)."""
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        users = torch.arange(1, model.num_users + 1)
        items = torch.arange(1, model.num_items + 1)
        uvec = []
        for s in range(0, len(users), batch_size):
            u = users[s : s + batch_size].to(device)
            h = None
            if isinstance(model, SASRec):
                if user_history is None:
                    raise StorageError("exporting SASRec user vectors needs each user's history")
                h = user_history[u.cpu()].to(device)
            uvec.append(model.user_vectors(u, h).float().cpu())
        ivec = [
            model.item_vectors(items[s : s + batch_size].to(device)).float().cpu()
            for s in range(0, len(items), batch_size)
        ]
        known = model.knows_user(users).cpu().numpy()
    finally:
        model.train(was_training)
    return (
        _vectors_table("user_id", users.numpy(), torch.cat(uvec).numpy(), {"known": known}),
        _vectors_table("item_id", items.numpy(), torch.cat(ivec).numpy()),
    )


def write_cf_artifact_files(
    directory: str | Path,
    model: CFBackbone,
    *,
    dataset_manifest: dict,
    dataset_uri: str,
    config: dict,
    metrics: dict,
    training: dict,
    user_history: torch.Tensor | None = None,
    selection: dict | None = None,
) -> dict:
    """Write the artifact into a LOCAL directory (the caller publishes it with storage.atomic_dir)."""
    directory = Path(directory)
    (directory / "embeddings").mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    blob = st_save(state)
    (directory / WEIGHTS_FILE).write_bytes(blob)
    users, items = export_embeddings(model, user_history)
    pq.write_table(users, directory / USERS_FILE)
    pq.write_table(items, directory / ITEMS_FILE)
    spec = model.spec()
    fields = {
        "backbone": spec["backbone"],
        "dim": spec["dim"],
        "model": spec,
        "config": config,
        "dataset": {
            "hash": dataset_manifest["hash"],
            "name": dataset_manifest.get("dataset"),
            "uri": dataset_uri,
            "users": dataset_manifest.get("users"),
            "items": dataset_manifest.get("items"),
        },
        "dataset_hash": dataset_manifest["hash"],
        "metrics": metrics,
        "training": training,
        "selection": selection,
        "weights": {
            "file": WEIGHTS_FILE,
            "sha256": hashlib.sha256(blob).hexdigest(),
            "tensors": len(state),
            "parameters": int(sum(p.numel() for p in model.parameters())),
        },
        "embeddings": {"users": USERS_FILE, "items": ITEMS_FILE},
    }
    return manifests.write(manifests.CF_ARTIFACT, directory, fields)


def rewrite_manifest(directory: str | Path, **updates: object) -> dict:
    """Update fields of a staged (local) artifact's manifest and recompute its hash."""
    return manifests.rewrite(manifests.CF_ARTIFACT, directory, **updates)


def save_cf_artifact(
    uri: str, model: CFBackbone, *, overwrite: bool = False, endpoint: str | None = None, **kwargs
) -> dict:
    """Write and publish an artifact at `uri` (local or s3://) atomically. kwargs: see write_cf_artifact_files."""
    with storage.atomic_dir(uri, endpoint=endpoint, overwrite=overwrite) as tmp:
        return write_cf_artifact_files(tmp, model, **kwargs)


def read_cf_manifest(uri: str, endpoint: str | None = None) -> dict:
    """The artifact's manifest; refuses incomplete directories, other kinds and edited manifests."""
    return manifests.read(manifests.CF_ARTIFACT, uri, endpoint)


def check_dataset(manifest: dict, expected_dataset_hash: str | None, uri: str) -> None:
    """Refuse an artifact made for another dataset; the message names both hashes."""
    if expected_dataset_hash is not None and manifest["dataset_hash"] != expected_dataset_hash:
        raise ArtifactMismatchError(
            f"CF artifact {uri} was trained on dataset {manifest['dataset_hash']} "
            f"({manifest.get('dataset', {}).get('name')}), but the dataset given has hash {expected_dataset_hash}; "
            "pretrain the CF model on this dataset (jobs/pretrain_cf.py) or use the dataset it was made for"
        )


def load_cf_artifact(
    uri: str,
    expected_dataset_hash: str | None = None,
    endpoint: str | None = None,
    device: str | torch.device = "cpu",
) -> CFBackbone:
    """Rebuild the backbone of a CF artifact (in eval mode). With `expected_dataset_hash`, refuse an
    artifact made for other data (ArtifactMismatchError naming both hashes). The weights are checked
    against the sha256 in the manifest. The loaded model's `manifest` field (CFBackbone, cora_ray/cf/base.py)
    holds the artifact's manifest; its `artifact_hash` is what CoRA checkpoints record as the CF artifact
    hash."""
    manifest = read_cf_manifest(uri, endpoint)
    check_dataset(manifest, expected_dataset_hash, uri)
    blob = manifests.read_recorded_file(uri, manifest["weights"], endpoint)
    model = build_backbone(manifest["model"], st_load(blob))
    model.manifest = manifest
    return model.to(device).eval()
