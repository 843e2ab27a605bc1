"""Bad input is refused with a clear error before any Ray process starts (jobs/train.py exits 2 in seconds)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cora_ray.checkpoint import write_checkpoint_files
from cora_ray.config import ExperimentConfig, load_config, to_dict
from cora_ray.errors import ArtifactMismatchError, ConfigError, ModelError, StorageError
from cora_ray.train.trainer import prepare_run

REPO = Path(__file__).resolve().parents[2]


def test_a_good_config_passes_and_plans_the_validation_rows(tiny_inputs, tmp_path):
    plan = prepare_run(tiny_inputs.config(tmp_path / "runs"))
    assert len(plan.valid_keys) == 48  # train.eval_limit
    assert len(set(plan.valid_keys.tolist())) == 48
    assert plan.cf_record["hash"] and plan.cf_record["backbone"] == "mf"
    assert plan.run_uri.startswith(str(tmp_path / "runs"))
    # the prompt encoder the Ray Data actors will build works on protocol rows
    # what Ray Data ships to every encoder actor is small: the factory carries the config, and the actor
    # loads the tokenizer and titles itself
    import cloudpickle
    import numpy as np

    assert len(cloudpickle.dumps(plan.encoder_factory)) < 100_000
    enc = plan.encoder_factory()
    out = enc(
        {
            "user_id": np.array([1]),
            "item_id": np.array([2]),
            "label": np.array([1]),
            "history": [np.array([3, 4])],
        }
    )
    from cora_ray.train.pipeline import collate_left_padded  # unpadded rows → one left-padded batch

    batch = collate_left_padded(out, plan.pad_id)
    assert batch["input_ids"].shape[0] == 1 and batch["attention_mask"][0, -1] == 1


def test_missing_dataset_manifest(tiny_inputs, tmp_path):
    cfg = tiny_inputs.config(tmp_path, f"data.uri={tmp_path / 'nowhere'}")
    with pytest.raises(StorageError, match="not found"):
        prepare_run(cfg)


def test_cf_artifact_made_for_other_data(tiny_inputs, tmp_path):
    from cora_ray.data.synthetic import prepare_synthetic

    other = str(tmp_path / "other")
    prepare_synthetic(other, users=30, items=40, seed=5)
    with pytest.raises(ArtifactMismatchError, match="dataset"):
        prepare_run(tiny_inputs.config(tmp_path, f"data.uri={other}"))


def test_missing_cf_artifact(tiny_inputs, tmp_path):
    with pytest.raises(StorageError, match="CF artifact"):
        prepare_run(tiny_inputs.config(tmp_path, f"model.cf_artifact={tmp_path / 'no_cf'}"))


def test_answer_token_that_is_not_one_token(tiny_inputs, tmp_path):
    with pytest.raises(ModelError, match="exactly one token"):
        prepare_run(tiny_inputs.config(tmp_path, "llm.answer_token='Yes indeed'"))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.rank=0", "model.rank must be > 0"),
        ("train.lr=0", "train.lr must be > 0"),
        ("train.lr=-1e-3", "train.lr must be > 0"),
        ("train.zero_stage=4", "train.zero_stage must be 0, 1, 2 or 3"),
        ("train.patience=0", "train.patience must be > 0"),
    ],
)
def test_values_out_of_range(tiny_inputs, tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(ExperimentConfig, None, [*tiny_inputs.overrides(tmp_path), override])


def test_more_workers_than_cpus(tiny_inputs, tmp_path):
    cfg = tiny_inputs.config(tmp_path, num_workers=(os.cpu_count() or 1) + 1)
    with pytest.raises(ConfigError, match="CPU core"):
        prepare_run(cfg, local_cluster=True)


def test_zero_shot_has_nothing_to_train(tiny_inputs, tmp_path):
    with pytest.raises(ConfigError, match="nothing to train"):
        prepare_run(tiny_inputs.config(tmp_path, "model.method=zero_shot"))


def test_resume_from_a_checkpoint_of_other_data(tiny_inputs, tmp_path):
    ckpt = tmp_path / "ckpt"
    cfg = tiny_inputs.config(tmp_path)
    write_checkpoint_files(
        ckpt,
        {},
        method="cora",
        config=to_dict(cfg),
        base_llm={"identity": "x", "weight_hash": "y"},
        answer_token_id=1,
        negative_token_id=None,
        cf_artifact=None,
        dataset_hash="not-this-dataset",
        metrics={},
        step=3,
    )
    with pytest.raises(ArtifactMismatchError, match="dataset hash"):
        prepare_run(cfg, resume=str(ckpt))
    with pytest.raises(StorageError, match="neither a checkpoint"):
        prepare_run(cfg, resume=str(tmp_path / "nothing"))


def _job(args, tmp_path):
    env = dict(os.environ, RAY_ADDRESS="")
    env.pop("RAY_ADDRESS")
    t0 = time.perf_counter()
    r = subprocess.run(
        [sys.executable, str(REPO / "jobs" / "train.py"), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=240,
    )
    return r, time.perf_counter() - t0


def test_job_refuses_bad_input_before_ray_starts(tiny_inputs, tmp_path):
    cfg_file = tmp_path / "exp.yaml"
    cfg_file.write_text("name: tiny\n")
    r, seconds = _job(
        ["--config", str(cfg_file), *tiny_inputs.overrides(tmp_path), "train.zero_stage=4"], tmp_path
    )
    assert r.returncode == 2, r.stderr
    assert "train.zero_stage must be 0, 1, 2 or 3" in r.stderr
    r, _ = _job(
        ["--config", str(cfg_file), *tiny_inputs.overrides(tmp_path), f"data.uri={tmp_path / 'missing'}"],
        tmp_path,
    )
    assert r.returncode == 2 and "dataset not found" in r.stderr, r.stderr
    assert "Ray" not in r.stdout + r.stderr.replace("RAY_", "")  # nothing of Ray was started
    r, _ = _job(["--config", str(cfg_file), *tiny_inputs.overrides(tmp_path), "--check"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "checks passed" in r.stdout


def test_the_demo_bootstrap_needs_no_cf_artifact_for_a_method_without_cf_vectors(tmp_path, capsys):
    """`jobs/train.py --config configs/demo.yaml model.method=tallrec model.cf_artifact=null` (the comparison's
    TALLRec row): the dataset present, nothing is built and nothing asks for an MF artifact."""
    import importlib.util

    from cora_ray.data.synthetic import prepare_synthetic

    repo = Path(__file__).resolve().parents[2]
    spec = importlib.util.spec_from_file_location("train_job", repo / "jobs" / "train.py")
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    data = str(tmp_path / "data")
    prepare_synthetic(data, users=12, items=10, seed=0)
    cfg = load_config(
        ExperimentConfig,
        repo / "configs" / "demo.yaml",
        [f"data.uri={data}", "model.method=tallrec", "model.cf_artifact=null"],
    )
    job.build_demo_inputs(cfg)  # returns at once: it used to call has_manifest(None) and fail
    assert "building what is missing" not in capsys.readouterr().out
