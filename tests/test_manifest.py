"""cora_ray/manifest.py: one read / check / hash / atomic write for the dataset, CF artifact and checkpoint."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from cora_ray import manifest as manifests
from cora_ray import storage
from cora_ray.cf.artifact import load_cf_artifact, read_cf_manifest, save_cf_artifact
from cora_ray.cf.models import MF
from cora_ray.checkpoint import (
    checkpoint_hash,
    load_trainable,
    read_checkpoint_manifest,
    write_checkpoint_files,
)
from cora_ray.data import protocol
from cora_ray.data.synthetic import prepare_synthetic
from cora_ray.errors import StorageError
from cora_ray.train.best_alias import best_alias_uri, publish_best

REPO = Path(__file__).resolve().parents[1]
KINDS = (manifests.DATASET, manifests.CF_ARTIFACT, manifests.CHECKPOINT)
# the smallest field set each kind requires (values are only stored and hashed here)
FIELDS = {
    manifests.DATASET.name: {"dataset": "toy", "counts": {"train": 1}, "users": 1, "items": 1},
    manifests.CF_ARTIFACT.name: {
        "backbone": "mf",
        "model": {"backbone": "mf"},
        "dataset_hash": "d" * 64,
        "weights": {"file": "model.safetensors", "sha256": "0" * 64},
    },
    manifests.CHECKPOINT.name: {
        "method": "cora",
        "config": {},
        "base_llm": {"identity": "tiny", "weight_hash": "0" * 64},
        "answer_token_id": 1,
        "dataset_hash": "d" * 64,
        "step": 3,
        "trainable": {"file": "trainable.safetensors", "sha256": "0" * 64},
    },
}


def tensors(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"generator.w": torch.randn(4, 3, generator=g), "layer.P": torch.randn(8, 2, generator=g)}


def checkpoint(directory: Path, trainable: dict[str, torch.Tensor], step: int = 8) -> dict:
    with storage.atomic_dir(str(directory), overwrite=True) as tmp:
        return write_checkpoint_files(
            tmp,
            trainable,
            method="cora",
            config={"name": "manifest-test"},
            base_llm={"identity": "tiny", "weight_hash": "0" * 64},
            answer_token_id=1,
            negative_token_id=None,
            cf_artifact=None,
            dataset_hash="d" * 64,
            metrics={"valid_auc": 0.6},
            step=step,
        )


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


# ---- round trips through the real writers -----------------------------------------------------------------


def test_dataset_round_trip(tmp_path):
    written = prepare_synthetic(str(tmp_path / "data"), users=12, items=20, interactions_per_user=8)
    read = protocol.read_manifest(str(tmp_path / "data"))
    assert read == written
    assert read["protocol"] == "cora-ctr" and read["version"] == 1
    assert read["hash"] == manifests.content_hash(manifests.DATASET, read) == protocol.manifest_hash(read)


def test_cf_artifact_round_trip(tmp_path):
    data = str(tmp_path / "data")
    data_manifest = prepare_synthetic(data, users=12, items=20, interactions_per_user=8)
    model = MF(data_manifest["users"], data_manifest["items"], dim=4)
    assert model.manifest is None and model.artifact_hash is None  # built in memory: no artifact
    uri = str(tmp_path / "cf")
    written = save_cf_artifact(
        uri, model, dataset_manifest=data_manifest, dataset_uri=data, config={}, metrics={}, training={}
    )
    assert read_cf_manifest(uri) == written and written["kind"] == "cora_ray.cf_artifact"
    loaded = load_cf_artifact(uri, expected_dataset_hash=data_manifest["hash"])
    assert loaded.manifest == written and loaded.artifact_hash == written["hash"]
    assert written["hash"] == manifests.content_hash(manifests.CF_ARTIFACT, written)


def test_checkpoint_round_trip(tmp_path):
    written = checkpoint(tmp_path / "ckpt", tensors(0))
    read = read_checkpoint_manifest(str(tmp_path / "ckpt"))
    assert read == written == json.loads((tmp_path / "ckpt" / "manifest.json").read_text())
    assert read["kind"] == "cora_ray.checkpoint" and read["version"] == 1
    assert read["hash"] == manifests.content_hash(manifests.CHECKPOINT, read) == checkpoint_hash(read)
    assert torch.equal(load_trainable(str(tmp_path / "ckpt"))["layer.P"], tensors(0)["layer.P"])


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.name)
def test_write_then_read_every_kind(kind, tmp_path):
    written = manifests.write(kind, tmp_path, FIELDS[kind.name])
    assert manifests.read(kind, str(tmp_path)) == written
    assert written[kind.kind_field] == kind.kind and written["version"] == kind.version


# ---- refusals: each names the URI and what was expected and found ------------------------------------------


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.name)
def test_wrong_kind_is_refused_naming_both(kind, tmp_path):
    other = manifests.CF_ARTIFACT if kind is manifests.CHECKPOINT else manifests.CHECKPOINT
    manifests.write(other, tmp_path, FIELDS[other.name])
    with pytest.raises(StorageError) as err:
        manifests.read(kind, str(tmp_path))
    message = str(err.value)
    assert (
        str(tmp_path) in message and repr(kind.kind) in message and f"not a readable {kind.name}" in message
    )
    found = json.loads((tmp_path / "manifest.json").read_text()).get(kind.kind_field)
    assert f"found {kind.kind_field} {found!r}" in message


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.name)
def test_unknown_version_is_refused_naming_both(kind, tmp_path):
    future = {**manifests.stamp(kind, FIELDS[kind.name]), "version": 2}
    future["hash"] = manifests.content_hash(kind, future)
    (tmp_path / "manifest.json").write_text(manifests.dumps(future))
    with pytest.raises(StorageError) as err:
        manifests.read(kind, str(tmp_path))
    message = str(err.value)
    assert (
        str(tmp_path) in message and "version 1" in message and "found" in message and "version 2" in message
    )


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.name)
def test_missing_or_incomplete_directory_is_refused(kind, tmp_path):
    with pytest.raises(StorageError, match=f"{kind.name} not found: .*nowhere"):
        manifests.read(kind, str(tmp_path / "nowhere"))
    (tmp_path / "half").mkdir()
    with pytest.raises(StorageError, match=f"half is an incomplete {kind.name}: it has no manifest.json"):
        manifests.read(kind, str(tmp_path / "half"))


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.name)
def test_missing_field_and_edited_manifest_are_refused(kind, tmp_path):
    fields = dict(FIELDS[kind.name])
    dropped = kind.required[0]
    del fields[dropped]
    manifests.write(kind, tmp_path, fields)
    with pytest.raises(StorageError, match=f"lacks field.*{dropped}"):
        manifests.read(kind, str(tmp_path))
    written = manifests.write(kind, tmp_path, FIELDS[kind.name])
    (tmp_path / "manifest.json").write_text(json.dumps({**written, kind.required[0]: "edited"}))
    with pytest.raises(StorageError, match="hash does not match its content"):
        manifests.read(kind, str(tmp_path))


# ---- the checkpoint hash ------------------------------------------------------------------------------------


def test_checkpoint_hash_follows_the_trainables_and_nothing_else(tmp_path):
    a = checkpoint(tmp_path / "a", tensors(0))
    again = checkpoint(tmp_path / "again", tensors(0))
    assert again["hash"] == a["hash"]  # the same checkpoint written twice
    changed = tensors(0)
    changed["layer.P"][0, 0] += 1e-3
    b = checkpoint(tmp_path / "b", changed)
    assert b["hash"] != a["hash"] and b["trainable"]["sha256"] != a["trainable"]["sha256"]
    # how the file is laid out does not matter: the hash is over the canonical content
    (tmp_path / "a" / "manifest.json").write_text(json.dumps(a, indent=None))
    assert read_checkpoint_manifest(str(tmp_path / "a"))["hash"] == a["hash"]
    # the run's best alias is the same checkpoint: alias_of is outside the hash
    run = str(tmp_path / "run")
    publish_best(str(tmp_path / "a"), run)
    alias = read_checkpoint_manifest(best_alias_uri(run))
    assert alias["alias_of"] == str(tmp_path / "a") and alias["hash"] == a["hash"]


def test_checkpoint_written_before_the_hash_still_loads(tmp_path):
    written = checkpoint(tmp_path / "old", tensors(1))
    old = {k: v for k, v in written.items() if k != "hash"}  # version 1 as written before the hash existed
    (tmp_path / "old" / "manifest.json").write_text(json.dumps(old, indent=2, sort_keys=True))
    read = read_checkpoint_manifest(str(tmp_path / "old"))
    assert read["hash"] == written["hash"] == checkpoint_hash(old)
    assert set(load_trainable(str(tmp_path / "old"))) == {"generator.w", "layer.P"}


def test_committed_and_prepared_artifacts_still_load():
    """Manifests written before this module (the prepared ml-1m dataset and MF artifact) read unchanged."""
    data, cf = REPO / "artifacts" / "ml-1m", REPO / "artifacts" / "cf" / "mf"
    if not (data / "manifest.json").is_file() or not (cf / "manifest.json").is_file():
        pytest.skip("artifacts/ml-1m or artifacts/cf/mf not prepared (make demo builds them)")
    for kind, directory in ((manifests.DATASET, data), (manifests.CF_ARTIFACT, cf)):
        on_disk = json.loads((directory / "manifest.json").read_text())
        assert manifests.read(kind, str(directory)) == on_disk


# ---- nothing written half ---------------------------------------------------------------------------------


def test_a_manifest_that_cannot_be_serialised_leaves_none(tmp_path):
    with pytest.raises(TypeError):
        manifests.write(
            manifests.CHECKPOINT, tmp_path, {**FIELDS["checkpoint"], "metrics": {"auc": object()}}
        )
    assert leftovers(tmp_path) == []


def test_an_interrupted_write_leaves_no_manifest(tmp_path, monkeypatch):
    def power_cut(src, dst):
        raise OSError("interrupted before the rename")

    monkeypatch.setattr(os, "replace", power_cut)
    with pytest.raises(OSError, match="interrupted"):
        manifests.write(manifests.CHECKPOINT, tmp_path, FIELDS["checkpoint"])
    assert leftovers(tmp_path) == []  # neither manifest.json nor its temporary file


def test_an_interrupted_checkpoint_publish_leaves_no_manifest(tmp_path, monkeypatch):
    real_write = manifests.write

    def fail_at_manifest(*args, **kwargs):
        raise OSError("interrupted at the manifest")

    monkeypatch.setattr(manifests, "write", fail_at_manifest)
    with pytest.raises(OSError, match="interrupted"):
        checkpoint(tmp_path / "ckpt", tensors(2))
    assert not (tmp_path / "ckpt" / "manifest.json").exists()
    with pytest.raises(StorageError, match="checkpoint not found|incomplete checkpoint"):
        read_checkpoint_manifest(str(tmp_path / "ckpt"))
    monkeypatch.setattr(manifests, "write", real_write)
    written = checkpoint(tmp_path / "ckpt", tensors(2))  # the retry publishes it whole
    assert read_checkpoint_manifest(str(tmp_path / "ckpt")) == written
