"""CF artifacts: round trip (identical scores), dataset-hash check, integrity, S3, and bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from cora_ray import storage
from cora_ray.cf import load_cf_artifact, read_cf_manifest
from cora_ray.cf.data import load_cf_data
from cora_ray.cf.pretrain import pretrain_local
from cora_ray.cf.train import predict
from cora_ray.config import ConfigError
from cora_ray.data import protocol
from cora_ray.errors import ArtifactMismatchError, DataError, StorageError, TrainingError


def _quiet(*_a, **_k):
    pass


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory, syn_uri, fast_cfg):
    """One small artifact per backbone (2 epochs each)."""
    root = tmp_path_factory.mktemp("cf_art")
    out = {}
    for backbone in ("mf", "lightgcn", "sasrec"):
        uri = str(root / backbone)
        pretrain_local(fast_cfg(backbone, "train.max_epochs=2"), syn_uri, uri, log=_quiet)
        out[backbone] = uri
    return out


@pytest.mark.parametrize("backbone", ["mf", "lightgcn", "sasrec"])
def test_round_trip_gives_identical_scores(artifacts, syn_uri, syn_data, backbone):
    uri = artifacts[backbone]
    manifest = read_cf_manifest(uri)
    model = load_cf_artifact(uri, expected_dataset_hash=syn_data.dataset_hash)
    assert model.name == backbone and not model.training
    assert model.artifact_hash == manifest["hash"] and model.manifest == manifest
    test = syn_data.splits["test"]
    scores = predict(model, test)
    again = predict(load_cf_artifact(uri), test)
    np.testing.assert_array_equal(scores, again)
    # the metrics recorded at training time are those of the saved weights
    from cora_ray.eval.metrics import auc

    assert auc(test.labels.numpy(), scores) == pytest.approx(manifest["metrics"]["test"]["auc"], abs=1e-9)
    # manifest content
    assert manifest["backbone"] == backbone and manifest["dim"] == 16
    assert manifest["dataset_hash"] == protocol.read_manifest(syn_uri)["hash"]
    assert set(manifest["metrics"]) == {"valid", "test", "test_warm", "test_cold"}
    for split in ("valid", "test", "test_warm"):
        assert {"auc", "uauc", "users_used", "users_skipped", "rows"} <= set(manifest["metrics"][split])
    assert manifest["config"]["train"]["lr"] == pytest.approx(1e-2)
    assert manifest["training"]["best_epoch"] >= 1 and manifest["training"]["train_seconds"] > 0
    files = sorted(p.relative_to(uri).as_posix() for p in Path(uri).rglob("*") if p.is_file())
    assert files == [
        "embeddings/items.parquet",
        "embeddings/users.parquet",
        "manifest.json",
        "model.safetensors",
    ]
    assert not any(p.suffix in (".pkl", ".pt", ".pth", ".bin") for p in Path(uri).rglob("*"))


@pytest.mark.parametrize("backbone", ["mf", "lightgcn", "sasrec"])
def test_embedding_tables_hold_the_model_vectors(artifacts, syn_data, backbone):
    uri = artifacts[backbone]
    model = load_cf_artifact(uri)
    users = pq.read_table(Path(uri) / "embeddings/users.parquet")
    items = pq.read_table(Path(uri) / "embeddings/items.parquet")
    assert users.num_rows == syn_data.num_users and items.num_rows == syn_data.num_items
    assert users["user_id"].to_pylist() == list(range(1, syn_data.num_users + 1))
    ivec = np.stack(items["vector"].to_numpy(zero_copy_only=False))
    with torch.no_grad():
        expect = model.item_vectors(torch.arange(1, syn_data.num_items + 1)).numpy()
    np.testing.assert_allclose(ivec, expect, rtol=0, atol=1e-6)
    known = np.asarray(users["known"].to_pylist())
    assert known.tolist() == model.knows_user(torch.arange(1, syn_data.num_users + 1)).tolist()
    if backbone == "mf":
        uvec = np.stack(users["vector"].to_numpy(zero_copy_only=False))
        np.testing.assert_allclose(uvec, model.user_emb.weight[1:].detach().numpy(), atol=1e-6)


def test_hash_mismatch_is_refused_naming_both_hashes(artifacts, tmp_path):
    from cora_ray.data.synthetic import prepare_synthetic

    other = prepare_synthetic(str(tmp_path / "other"), users=400, items=100, interactions_per_user=60, seed=1)
    recorded = read_cf_manifest(artifacts["mf"])["dataset_hash"]
    with pytest.raises(ArtifactMismatchError) as exc:
        load_cf_artifact(artifacts["mf"], expected_dataset_hash=other["hash"])
    assert recorded in str(exc.value) and other["hash"] in str(exc.value)


def test_corrupted_or_edited_artifacts_are_refused(artifacts, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(artifacts["mf"], bad)
    blob = bytearray((bad / "model.safetensors").read_bytes())
    blob[-1] ^= 0xFF
    (bad / "model.safetensors").write_bytes(bytes(blob))
    with pytest.raises(StorageError, match="sha256"):
        load_cf_artifact(str(bad))
    m = json.loads((bad / "manifest.json").read_text())
    m["metrics"]["test"]["auc"] = 0.99
    (bad / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(StorageError, match="hash does not match"):
        load_cf_artifact(str(bad))
    (bad / "manifest.json").unlink()
    with pytest.raises(StorageError, match="incomplete"):
        load_cf_artifact(str(bad))


def test_s3_round_trip(s3_bucket, syn_uri, syn_data, fast_cfg, tmp_path):
    data_uri = f"{s3_bucket}/syn"
    storage.upload_dir(syn_uri, data_uri)
    uri = f"{s3_bucket}/cf/mf"
    manifest = pretrain_local(fast_cfg("mf", "train.max_epochs=1"), data_uri, uri, log=_quiet)
    assert manifest["dataset"]["uri"] == data_uri
    model = load_cf_artifact(uri, expected_dataset_hash=syn_data.dataset_hash)
    local = str(tmp_path / "copy")
    storage.download_dir(uri, local)
    np.testing.assert_array_equal(
        predict(model, syn_data.splits["test"]), predict(load_cf_artifact(local), syn_data.splits["test"])
    )
    with pytest.raises(StorageError, match="already holds a complete artifact"):
        pretrain_local(fast_cfg("mf", "train.max_epochs=1"), data_uri, uri, log=_quiet)


# ----------------------------------------------------------------------------------------------- bad input


def test_unknown_backbone_is_a_config_error(fast_cfg):
    with pytest.raises(ConfigError, match="model.backbone.*'mf', 'lightgcn', 'sasrec'.*'bpr'"):
        fast_cfg("bpr")


def test_dataset_without_manifest(tmp_path, fast_cfg):
    (tmp_path / "data" / "interactions").mkdir(parents=True)
    out = tmp_path / "out"
    with pytest.raises(StorageError, match="incomplete dataset"):
        pretrain_local(fast_cfg("mf"), str(tmp_path / "data"), str(out), log=_quiet)
    with pytest.raises(StorageError, match="not found"):
        pretrain_local(fast_cfg("mf"), str(tmp_path / "nowhere"), str(out), log=_quiet)
    assert not out.exists()


def _with_empty_split(src: str, dest: Path, split: str) -> str:
    import shutil

    shutil.copytree(src, dest)
    part = next((dest / "interactions" / split).glob("*.parquet"))
    table = pq.read_table(part)
    pq.write_table(table.slice(0, 0), part)
    m = json.loads((dest / "manifest.json").read_text())
    m["counts"][split] = 0
    m["hash"] = protocol.manifest_hash(m)
    (dest / "manifest.json").write_text(json.dumps(m))
    return str(dest)


@pytest.mark.parametrize("split", ["train", "valid", "test"])
def test_empty_split(tmp_path, syn_uri, fast_cfg, split):
    data = _with_empty_split(syn_uri, tmp_path / "data", split)
    out = tmp_path / "out"
    with pytest.raises(DataError, match=f"split '{split}' is empty"):
        pretrain_local(fast_cfg("mf"), data, str(out), log=_quiet)
    assert not out.exists()
    # a manifest that does not admit it: the loader still refuses the empty table
    m = json.loads((Path(data) / "manifest.json").read_text())
    m["counts"][split] = 5
    m["hash"] = protocol.manifest_hash(m)
    (Path(data) / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(DataError, match=f"split '{split}' is empty"):
        load_cf_data(data)


def test_ids_outside_the_manifest_range(tmp_path, syn_uri):
    import shutil

    shutil.copytree(syn_uri, tmp_path / "data")
    part = next((tmp_path / "data" / "interactions" / "train").glob("*.parquet"))
    t = pq.read_table(part)
    ids = t["item_id"].to_pylist()
    ids[0] = 10_000
    pq.write_table(
        t.set_column(t.schema.get_field_index("item_id"), "item_id", pa.array(ids, pa.int32())), part
    )
    with pytest.raises(DataError, match=r"item_id outside 1..100"):
        load_cf_data(str(tmp_path / "data"))


def test_nan_loss_stops_naming_step_and_lr(tmp_path, syn_uri, fast_cfg):
    out = tmp_path / "out"
    with pytest.raises(TrainingError, match=r"at step \d+ .*lr=1e\+30"):
        pretrain_local(fast_cfg("mf", "train.lr=1e30"), syn_uri, str(out), log=_quiet)
    assert not out.exists() or not (out / "manifest.json").exists()
    assert not list(tmp_path.glob(".out.tmp-*"))  # the staging directory is cleaned up
