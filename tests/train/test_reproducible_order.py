"""Two runs of one config see the same training rows in the same order on every worker (Ray Data's
`preserve_order` for the train split: its shuffle and the equal split over workers are then deterministic;
cora_ray/train/pipeline.py `train_data_config`), so a seed reproduces a run."""

from __future__ import annotations

import pytest

from cora_ray.train.trainer import prepare_run, run_training

pytestmark = [pytest.mark.slow, pytest.mark.ray]


def test_two_runs_of_one_config_train_on_the_same_batches(
    ray_cluster, tiny_inputs, tmp_path, progress_records
):
    losses = []
    for name in ("first", "second"):
        cfg = tiny_inputs.config(tmp_path / name, num_workers=2, max_steps=6, eval_every=6)
        records = progress_records(run_training(prepare_run(cfg), quiet=True).run_uri)
        losses.append([(r["step"], r["loss"]) for r in records if r["type"] == "train"])
    assert len(losses[0]) == 6
    assert losses[0] == losses[1]  # every step's loss, exactly: the same rows in the same order
