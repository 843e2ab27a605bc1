"""ZeRO across ranks: a 2-worker ZeRO-3 fit (parameters partitioned over both ranks: the checkpoint's all-gather
and validation's lockstep forwards run for real) and a 2-worker ZeRO-1 fit (optimizer state partitioned).

Each checkpoint is reloaded in a Scorer (cora_ray/infer) and must give validation's scores row by row (the
checkpoint's valid_scores.safetensors), its AUC and its loss. Not bit for bit: validation batches rows in
micro-batches of 8 per shard, the Scorer 16 rows bucketed by length, so rows are padded to other lengths and
fp32 sums run in other orders (measured: at most 3e-7 in a score; bound 1e-5). An AUC tolerance of 1e-9
still means the same ranking (one swapped pair of the ~575 moves it ~0.0017).

~1 min per fit on 2 cores."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from reload_check import assert_reload_matches_validation
from safetensors.torch import load_file

from cora_ray.train.trainer import prepare_run, run_training

pytestmark = [pytest.mark.slow, pytest.mark.ray]


def test_two_workers_zero3_checkpoint_gathers_partitions_and_reloads_to_validation_auc(
    ray_cluster, tiny_inputs, tmp_path, progress_records
):
    cfg = tiny_inputs.config(tmp_path / "runs", num_workers=2, zero_stage=3, max_steps=12, eval_every=6)
    plan = prepare_run(cfg)
    summary = run_training(plan, quiet=True)
    records = progress_records(summary.run_uri)
    start = next(r for r in records if r["type"] == "start")
    assert start["world_size"] == 2 and start["zero_stage"] == 3
    valid = [r for r in records if r["type"] == "valid"]
    assert [r["step"] for r in valid] == [6, 12]
    # lockstep: the 48 sampled rows split unevenly over 2 shards, each scored exactly once (else the run fails)
    assert all(r["valid_rows"] == 48 for r in valid)

    ckpt = Path(summary.latest_checkpoint)
    saved = load_file(str(ckpt / "trainable.safetensors"))
    from cora_ray.cf import load_cf_artifact
    from cora_ray.llm.loading import load_llm
    from cora_ray.model.build import build_model

    llm = load_llm(cfg.llm, "cpu")
    cf = load_cf_artifact(cfg.model.cf_artifact, expected_dataset_hash=tiny_inputs.data_hash)
    full = {k: tuple(v.shape) for k, v in build_model(cfg.model, llm, cf).trainable_state_dict().items()}
    # full tensors, not one rank's partition (a ZeRO-3 partition is a flat 1-D slice of ~half the elements)
    assert {k: tuple(v.shape) for k, v in saved.items()} == full
    assert all(v.dtype == torch.float32 for v in saved.values())
    assert all(
        v.abs().sum() > 0 for k, v in saved.items() if k.endswith(".P")
    )  # every P trained, both halves
    for name, t in saved.items():
        if name.endswith(".P") and t.numel() >= 2:
            flat = t.flatten()
            half = flat.numel() // 2
            assert flat[:half].abs().sum() > 0 and flat[half:].abs().sum() > 0, name

    manifest = assert_reload_matches_validation(ckpt, cfg, plan.valid_keys)
    assert manifest["step"] == 12
    # both ranks' optimizer partitions are in the checkpoint
    assert {p.name for p in (ckpt / "optimizer").iterdir()} == {"rank-0.safetensors", "rank-1.safetensors"}


def test_two_workers_zero1_trains_and_reloads_to_validation_auc(
    ray_cluster, tiny_inputs, tmp_path, progress_records
):
    cfg = tiny_inputs.config(tmp_path / "runs", num_workers=2, zero_stage=1, max_steps=6, eval_every=6)
    plan = prepare_run(cfg)
    summary = run_training(plan, quiet=True)
    records = progress_records(summary.run_uri)
    start = next(r for r in records if r["type"] == "start")
    assert start["zero_stage"] == 1 and start["world_size"] == 2
    assert sorted(r["step"] for r in records if r["type"] == "train") == list(range(1, 7))

    ckpt = Path(summary.latest_checkpoint)
    manifest = assert_reload_matches_validation(ckpt, cfg, plan.valid_keys)
    assert manifest["step"] == 6
    # ZeRO-1 partitions the Adam moments: each rank holds about half of the trainable elements
    trainable = manifest["trainable"]["parameters"]
    held = []
    for rank in (0, 1):
        moments = load_file(str(ckpt / "optimizer" / f"rank-{rank}.safetensors"))
        held.append(sum(v.numel() for k, v in moments.items() if k.endswith(".exp_avg")))
    assert trainable <= sum(held) <= trainable + 2 * 64  # + alignment padding of the flat partitions
    assert all(h < trainable for h in held)
