"""The run's `best` alias (cora_ray/train/best_alias.py), without a fit: checkpoints written by the real
writer, the callback driven the way Ray Train's controller drives it, locally and on the moto S3 server.
A real fit publishing the alias is checked in tests/train/test_fit.py and tests/test_s3_pipeline.py."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from cora_ray import storage
from cora_ray.checkpoint import load_trainable, read_checkpoint_manifest, write_checkpoint_files
from cora_ray.errors import StorageError
from cora_ray.train.best_alias import (
    BestAliasCallback,
    best_alias_uri,
    publish_best,
    publish_final,
    read_alias_manifest,
)
from cora_ray.train.state import TRAIN_STATE_FILE


def write_checkpoint(uri: str, step: int, valid_auc: float) -> str:
    """A checkpoint directory as training publishes it (distinct tensors per step), at a local or s3:// URI."""
    with storage.atomic_dir(uri) as tmp:
        g = torch.Generator().manual_seed(step)
        write_checkpoint_files(
            tmp,
            {"generator.w": torch.randn(4, 3, generator=g), "layer.P": torch.randn(8, 2, generator=g)},
            method="cora",
            config={"name": "alias-test"},
            base_llm={"identity": "tiny", "weight_hash": "0" * 64},
            answer_token_id=1,
            negative_token_id=2,
            cf_artifact=None,
            dataset_hash="d" * 64,
            metrics={"valid_auc": valid_auc, "valid_uauc": 0.5, "step": step},
            step=step,
        )
        (tmp / TRAIN_STATE_FILE).write_text(json.dumps({"step": step}))
        (tmp / "optimizer").mkdir()
        (tmp / "optimizer" / "rank-0.safetensors").write_bytes(b"moments")
    return uri


def report(callback: BestAliasCallback, checkpoint_uri: str | None, valid_auc: float | None) -> None:
    """What the controller does after every worker reported (metrics[i] from worker i)."""
    path = None
    if checkpoint_uri is not None:
        path = checkpoint_uri[len("s3://") :] if storage.is_s3(checkpoint_uri) else checkpoint_uri
    metrics = {} if valid_auc is None else {"valid_auc": valid_auc}
    checkpoint = None if path is None else SimpleNamespace(path=path)
    callback.after_report(run_context=None, metrics=[metrics, metrics], checkpoint=checkpoint)


def alias_of(run: str) -> str | None:
    manifest = read_alias_manifest(run)
    return None if manifest is None else manifest["alias_of"]


def test_publish_copies_the_model_files_manifest_last_and_nothing_else(tmp_path):
    run = str(tmp_path / "run")
    ckpt = write_checkpoint(f"{run}/checkpoint_a", step=8, valid_auc=0.6)
    alias = publish_best(ckpt, run)
    assert alias == best_alias_uri(run) == f"{run}/best"
    assert sorted(p.name for p in Path(alias).iterdir()) == [
        "manifest.json",
        TRAIN_STATE_FILE,
        "trainable.safetensors",
    ]
    original, copied = read_checkpoint_manifest(ckpt), read_checkpoint_manifest(alias)
    assert copied == {**original, "alias_of": ckpt}
    for k, v in load_trainable(ckpt).items():
        assert torch.equal(load_trainable(alias)[k], v)
    assert [p.name for p in Path(run).iterdir() if p.name.startswith(".")] == []  # no staging left


def test_the_callback_follows_the_best_auc_and_ignores_reports_without_one(tmp_path):
    run = str(tmp_path / "run")
    a = write_checkpoint(f"{run}/checkpoint_a", step=8, valid_auc=0.60)
    b = write_checkpoint(f"{run}/checkpoint_b", step=16, valid_auc=0.55)
    c = write_checkpoint(f"{run}/checkpoint_c", step=24, valid_auc=0.70)
    callback = BestAliasCallback(run)
    report(callback, None, 0.9)  # metrics without a checkpoint
    report(callback, a, None)  # a checkpoint without validation
    assert alias_of(run) is None
    report(callback, a, 0.60)
    assert alias_of(run) == a
    report(callback, b, 0.55)
    assert alias_of(run) == a  # worse: unchanged
    report(callback, c, 0.70)
    assert alias_of(run) == c and read_alias_manifest(run)["step"] == 24
    # a resumed run (a new callback) compares with the alias the run left behind
    d = write_checkpoint(f"{run}/checkpoint_d", step=32, valid_auc=0.65)
    report(BestAliasCallback(run), d, 0.65)
    assert alias_of(run) == c


def test_a_failed_update_warns_keeps_the_old_alias_and_the_final_publish_raises(tmp_path, capsys):
    run = str(tmp_path / "run")
    a = write_checkpoint(f"{run}/checkpoint_a", step=8, valid_auc=0.6)
    b = write_checkpoint(f"{run}/checkpoint_b", step=16, valid_auc=0.7)
    callback = BestAliasCallback(run)
    report(callback, a, 0.6)
    (Path(b) / "trainable.safetensors").write_bytes(b"corrupted")
    report(callback, b, 0.7)
    assert "warning: best alias" in capsys.readouterr().err
    assert alias_of(run) == a and load_trainable(best_alias_uri(run))  # still complete and valid
    with pytest.raises(StorageError, match="sha256"):
        publish_final(b, run)


def test_publish_final_makes_the_alias_the_summarys_best_and_is_a_no_op_when_it_already_is(tmp_path):
    run = str(tmp_path / "run")
    a = write_checkpoint(f"{run}/checkpoint_a", step=8, valid_auc=0.6)
    b = write_checkpoint(f"{run}/checkpoint_b", step=16, valid_auc=0.6)  # a tie Ray ranked first
    assert publish_final(None, run) is None and alias_of(run) is None
    assert publish_final(a, run) == best_alias_uri(run) and alias_of(run) == a
    before = (Path(best_alias_uri(run)) / "manifest.json").stat().st_mtime_ns
    publish_final(a, run)
    assert (Path(best_alias_uri(run)) / "manifest.json").stat().st_mtime_ns == before  # not rewritten
    publish_final(b, run)
    assert alias_of(run) == b


def test_on_s3_the_alias_is_published_and_replaced_manifest_last(s3_bucket):
    run = f"{s3_bucket}/runs/alias"
    a = write_checkpoint(f"{run}/checkpoint_a", step=8, valid_auc=0.6)
    b = write_checkpoint(f"{run}/checkpoint_b", step=16, valid_auc=0.7)
    callback = BestAliasCallback(run)
    assert callback.checkpoint_uri(SimpleNamespace(path=a[len("s3://") :])) == a
    report(callback, a, 0.6)
    assert alias_of(run) == a
    report(callback, b, 0.7)
    alias = best_alias_uri(run)
    assert alias_of(run) == b and read_checkpoint_manifest(alias)["step"] == 16
    assert sorted(f.rsplit("/", 1)[1] for f in storage.list_files(alias)) == [
        "manifest.json",
        TRAIN_STATE_FILE,
        "trainable.safetensors",
    ]
    for k, v in load_trainable(b).items():
        assert torch.equal(load_trainable(alias)[k], v)


def test_serve_config_names_the_alias_the_runbooks_training_command_publishes():
    """serve.config's checkpoint is `<train.storage_path>/<run_name>/best` of the ML-1M CoRA-MF training
    command in docs/deploy.md (its storage_path and data.uri overrides, configs/ml1m_cora_mf.yaml's run_name),
    and its data_uri that command's dataset: the path exists once that run has validated once."""
    import re

    import yaml

    from cora_ray.config import ExperimentConfig, load_config

    repo = Path(__file__).resolve().parents[2]
    runbook = (repo / "docs" / "deploy.md").read_text().replace("$BUCKET", "YOUR-BUCKET")
    command = re.search(r"jobs/train\.py --config configs/ml1m_cora_mf\.yaml \\\n(?:.*\\\n)*.*\n", runbook)
    assert command, "docs/deploy.md has no multi-line training command for configs/ml1m_cora_mf.yaml"
    overrides = re.findall(r"(\S+=\S+)", command.group(0))
    cfg = load_config(ExperimentConfig, str(repo / "configs" / "ml1m_cora_mf.yaml"), overrides)
    assert storage.is_s3(cfg.train.storage_path) and cfg.train.run_name
    app = yaml.safe_load((repo / "serve.config").read_text())["applications"][0]
    scorer = next(d for d in app["deployments"] if d["name"] == "CoRAScorer")
    expected = best_alias_uri(storage.join(cfg.train.storage_path, cfg.train.run_name))
    assert scorer["user_config"]["checkpoint_uri"] == expected
    assert app["args"]["data_uri"] == cfg.data.uri
