"""model.delta_scope=user_prefix through the real training path (Ray Data ingest with suffix positions, rows
grouped by prefix (train.shuffle=prefix_groups), Ray Train, DeepSpeed ZeRO-2, validation, checkpoint): the
checkpoint records the scope, its "no item" vector is trained, and a Scorer (prefix-shared) reproduces
validation's per-row scores (valid_scores.safetensors)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from reload_check import assert_reload_matches_validation
from safetensors.torch import load_file

from cora_ray.train.trainer import prepare_run, run_training

pytestmark = [pytest.mark.slow, pytest.mark.ray]


def test_user_prefix_trains_and_the_prefix_shared_scorer_reproduces_validation(
    ray_cluster, tiny_inputs, tmp_path
):
    cfg = tiny_inputs.config(
        tmp_path / "runs",
        "model.delta_scope=user_prefix",
        "train.shuffle=prefix_groups",  # rows of one (user, history) adjacent: prefixes shared in a batch
        num_workers=2,
        zero_stage=2,
        max_steps=6,
        eval_every=6,
    )
    plan = prepare_run(cfg)
    summary = run_training(plan, quiet=True)
    ckpt = Path(summary.latest_checkpoint)
    manifest = json.loads((ckpt / "manifest.json").read_text())
    assert manifest["config"]["model"]["delta_scope"] == "user_prefix"
    saved = load_file(str(ckpt / "trainable.safetensors"))
    assert saved["no_item"].abs().sum() > 0  # the prefix's user-only delta was trained
    assert all(v.abs().sum() > 0 for k, v in saved.items() if k.endswith(".P"))
    assert all(v.dtype == torch.float32 for v in saved.values())
    assert_reload_matches_validation(ckpt, cfg, plan.valid_keys)
