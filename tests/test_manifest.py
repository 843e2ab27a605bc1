"""cora_ray/manifest.py: one read / check / hash / atomic write for the dataset, CF artifact, checkpoint and
evaluation results."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
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
from cora_ray.eval.evaluate import read_results, read_scores, write_results
from cora_ray.train.best_alias import best_alias_uri, publish_best

REPO = Path(__file__).resolve().parents[1]
KINDS = (manifests.DATASET, manifests.CF_ARTIFACT, manifests.CHECKPOINT, manifests.EVALUATION)
HASHED = tuple(k for k in KINDS if k.hashed)
COMMITTED_RESULTS = REPO / "results" / "compare_ml1m_cpu"
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
    manifests.EVALUATION.name: {
        "files": ["metrics.json", "report.md", "scores/test.parquet"],
        "name": "CoRA-MF",
        "method": "cora",
        "data_hash": "d" * 64,
        "splits": {"test": {"auc": 0.7, "rows": 10, "uauc": 0.6}},
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
    # what a later version of this code would write (hashed like it, where the kind is hashed)
    future = manifests.stamp(dataclasses.replace(kind, version=2, readable=(2,)), FIELDS[kind.name])
    assert future["version"] == 2 and ("hash" in future) == kind.hashed
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
def test_missing_field_is_refused(kind, tmp_path):
    fields = dict(FIELDS[kind.name])
    dropped = kind.required[0]
    del fields[dropped]
    manifests.write(kind, tmp_path, fields)
    with pytest.raises(StorageError, match=f"lacks field.*{dropped}"):
        manifests.read(kind, str(tmp_path))


@pytest.mark.parametrize("kind", HASHED, ids=lambda k: k.name)
def test_edited_manifest_is_refused(kind, tmp_path):
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


# ---- evaluation results: the format on disk is the one the committed results have --------------------------


def test_an_evaluation_manifest_has_no_hash_and_is_written_as_before(tmp_path):
    written = manifests.write(manifests.EVALUATION, tmp_path, FIELDS["evaluation"])
    assert "hash" not in written and written["kind"] == "cora_ray.evaluation" and written["version"] == 1
    text = (tmp_path / "manifest.json").read_text()
    assert text == json.dumps(written, indent=2, sort_keys=True) + "\n"  # what evaluate.py wrote before


def committed_runs() -> list[Path]:
    runs = sorted(p.parent for p in COMMITTED_RESULTS.glob("runs/**/manifest.json"))
    if not runs:
        pytest.skip(f"no committed evaluation results under {COMMITTED_RESULTS}")
    return runs


def test_committed_evaluation_results_read_unchanged():
    for run in committed_runs():
        on_disk = json.loads((run / "manifest.json").read_text())
        assert manifests.read(manifests.EVALUATION, str(run)) == on_disk
        assert read_results(str(run)) == json.loads((run / "metrics.json").read_text())


def test_republishing_a_committed_evaluation_writes_the_same_manifest_bytes(tmp_path):
    """write_results (cora_ray/eval/evaluate.py, through cora_ray/manifest.py) on a committed run's own
    metrics and scores writes its manifest.json byte for byte."""
    run = committed_runs()[0]
    committed = (run / "manifest.json").read_text()
    splits = [f.removeprefix("scores/").removesuffix(".parquet") for f in json.loads(committed)["files"][2:]]
    tables = [read_scores(str(run), s) for s in splits]
    by_key = {c: np.concatenate([t[c].to_numpy() for t in tables]) for c in tables[0].column_names}
    ends = np.cumsum([t.num_rows for t in tables])
    selection = {s: np.arange(end - t.num_rows, end) for s, t, end in zip(splits, tables, ends, strict=True)}
    out = tmp_path / "again"
    write_results(str(out), read_results(str(run)), selection, by_key)
    assert (out / "manifest.json").read_text() == committed
    assert all(read_scores(str(out), s).equals(t) for s, t in zip(splits, tables, strict=True))


def test_an_evaluation_of_another_kind_is_refused(tmp_path):
    manifests.write(manifests.CHECKPOINT, tmp_path, FIELDS["checkpoint"])
    with pytest.raises(StorageError, match="not a readable evaluation: expected kind 'cora_ray.evaluation'"):
        read_results(str(tmp_path))


def test_compare_collects_the_committed_results(tmp_path):
    """`jobs/compare.py --collect-only --config configs/compare_ml1m_cpu.yaml` on a copy of the committed
    results (it writes comparison.* under `out`): every run is collected with the AUCs its manifest records."""
    committed_runs()
    if not (REPO / "artifacts" / "ml-1m" / "manifest.json").is_file():
        pytest.skip("artifacts/ml-1m not prepared (make demo builds it); the comparison reads its manifest")
    out = tmp_path / "compare"
    shutil.copytree(COMMITTED_RESULTS, out)
    (out / "comparison.json").unlink()
    cmd = [sys.executable, "jobs/compare.py", "--collect-only", "--config", "configs/compare_ml1m_cpu.yaml"]
    r = subprocess.run([*cmd, f"out={out}"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    methods = json.loads((out / "comparison.json").read_text())["methods"]
    runs = {str(Path(run).resolve()): m for m in methods for run in m.get("runs") or []}
    committed = sorted(str(p.parent.resolve()) for p in out.glob("runs/**/manifest.json"))
    assert committed and sorted(runs) == committed  # every committed run collected, nothing else
    for run, method in runs.items():
        if len(method["runs"]) == 1:  # one run: the row's test AUC is that run's (several: their mean)
            recorded = json.loads((Path(run) / "manifest.json").read_text())["splits"]["test"]["auc"]
            assert method["metrics"]["test"]["auc"] == pytest.approx(recorded), run
