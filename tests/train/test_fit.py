"""TorchTrainer fits on the tiny LLaMA + synthetic data: 2 workers ZeRO-2, 1 worker ZeRO-3, resume, worker kill.

Each fit takes ~30-60 s on 2 cores; they share the session's Ray cluster."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from cora_ray.train.trainer import prepare_run, run_training

pytestmark = [pytest.mark.slow, pytest.mark.ray]


def fit(cfg, resume=None):
    return run_training(prepare_run(cfg, resume=resume), quiet=True)


def train_losses(records):
    return {r["step"]: r["loss"] for r in records if r["type"] == "train"}


def assert_loss_falls(records, k=4):
    losses = train_losses(records)
    steps = sorted(losses)
    first = np.mean([losses[s] for s in steps[:k]])
    last = np.mean([losses[s] for s in steps[-k:]])
    assert last < first, f"loss did not fall: first {k} steps {first:.4f}, last {k} {last:.4f} ({losses})"


def build_reference_model(tiny_inputs, cfg):
    """The model the checkpoint belongs to, built in this process by the real loaders."""
    from cora_ray.cf import load_cf_artifact
    from cora_ray.llm.loading import load_llm
    from cora_ray.model.build import build_model

    llm = load_llm(cfg.llm, "cpu")
    cf = load_cf_artifact(cfg.model.cf_artifact, expected_dataset_hash=tiny_inputs.data_hash)
    torch.manual_seed(123)  # a different init than training: everything must come from the checkpoint
    model = build_model(cfg.model, llm, cf).eval()
    return model, llm


def score_validation_rows(model, llm, cfg, valid_keys):
    """AUC of `model` over the validation rows the run scored, encoded here by the project's PromptEncoder."""
    from cora_ray.data import protocol
    from cora_ray.data.prompts import PromptEncoder
    from cora_ray.eval.metrics import auc
    from cora_ray.train.pipeline import collate_left_padded, row_keys

    table = protocol.read_split(cfg.data.uri, "valid_small")
    keys = row_keys(table["user_id"].to_numpy(), table["item_id"].to_numpy())
    rows = table.filter(np.isin(keys, valid_keys))
    enc = PromptEncoder(llm.tokenizer, cfg.prompt, protocol.titles_by_id(protocol.read_items(cfg.data.uri)))
    batch = {
        "user_id": rows["user_id"].to_numpy(),
        "item_id": rows["item_id"].to_numpy(),
        "label": rows["label"].to_numpy(),
        "history": rows["history"].to_pylist(),
    }
    tensors = collate_left_padded(enc(batch), llm.tokenizer.pad_token_id)
    with torch.no_grad():
        scores = model(tensors).numpy()
    return auc(batch["label"], scores), scores


def test_two_workers_zero2_train_validate_and_checkpoint_without_llm_weights(
    ray_cluster, tiny_inputs, tmp_path, progress_records
):
    cfg = tiny_inputs.config(tmp_path / "runs", num_workers=2, zero_stage=2, max_steps=16, eval_every=8)
    summary = fit(cfg)
    records = progress_records(summary.run_uri)

    assert sorted(train_losses(records)) == list(range(1, 17))
    assert_loss_falls(records)
    # rank 0's G spread on the logged steps (log_every 4, the first and the last): how much G varies by row
    spread = {r["step"]: r["g_varying_share"] for r in records if "g_varying_share" in r}
    assert sorted(spread) == [1, 4, 8, 12, 16] and all(0.0 <= s < 2.0 for s in spread.values())
    # every step says how long it waited for data, a part of the time between two step records
    steps = [r for r in records if r["type"] == "train"]
    assert all(r["data_wait_s"] >= 0.0 for r in steps)
    assert all(
        b["data_wait_s"] < b["elapsed_s"] - a["elapsed_s"] for a, b in zip(steps, steps[1:], strict=False)
    )
    valid = [r for r in records if r["type"] == "valid"]
    assert [r["step"] for r in valid] == [8, 16]
    assert all(r["valid_rows"] == 48 for r in valid)  # every sampled row scored exactly once over 2 workers
    assert valid[-1]["valid_loss"] < 1.0  # from ~1.3 for the Yes-biased base LLM
    start = next(r for r in records if r["type"] == "start")
    assert start["world_size"] == 2 and len(start["workers"]) == 2

    ckpt = Path(summary.best_checkpoint)
    manifest = json.loads((ckpt / "manifest.json").read_text())
    assert (
        manifest["step"] in (8, 16) and manifest["metrics"]["valid_auc"] == summary.best_metrics["valid_auc"]
    )
    assert summary.best_metrics["valid_auc"] == max(r["valid_auc"] for r in valid)
    assert (ckpt / "optimizer" / "rank-0.safetensors").is_file() and (
        ckpt / "optimizer" / "rank-1.safetensors"
    ).is_file()

    # the run's stable `best` alias is a copy of that checkpoint (cora_ray/train/best_alias.py)
    alias = Path(summary.best_alias)
    assert alias == Path(summary.run_uri) / "best"
    assert json.loads((alias / "manifest.json").read_text()) == {**manifest, "alias_of": str(ckpt)}
    assert (alias / "trainable.safetensors").read_bytes() == (ckpt / "trainable.safetensors").read_bytes()

    # the checkpoint holds exactly the trainable tensors: generator + P, nothing of the LLM
    saved = load_file(str(ckpt / "trainable.safetensors"))
    model, llm = build_reference_model(tiny_inputs, cfg)
    assert set(saved) == set(model.trainable_state_dict())
    assert all(k.startswith("generator.") or k.endswith(".P") for k in saved)
    llm_numel = sum(p.numel() for p in llm.model.parameters() if not p.requires_grad)
    assert sum(t.numel() for t in saved.values()) < llm_numel
    assert manifest["base_llm"]["weight_hash"] == llm.weight_hash

    # ...and reloads to the scores training computed (the same validation AUC, bit for bit in ranking)
    from cora_ray.checkpoint import load_trainable

    model.load_trainable_state_dict(load_trainable(str(ckpt)))
    plan = prepare_run(cfg)
    reloaded_auc, scores = score_validation_rows(model, llm, cfg, plan.valid_keys)
    assert reloaded_auc == pytest.approx(manifest["metrics"]["valid_auc"], abs=1e-9)
    again_auc, again = score_validation_rows(model, llm, cfg, plan.valid_keys)
    np.testing.assert_array_equal(scores, again)


def test_one_worker_zero3_then_resume_from_its_checkpoint(
    ray_cluster, tiny_inputs, tmp_path, progress_records
):
    cfg = tiny_inputs.config(tmp_path / "runs", num_workers=1, zero_stage=3, max_steps=12, eval_every=6)
    first = fit(cfg)
    records = progress_records(first.run_uri)
    assert sorted(train_losses(records)) == list(range(1, 13))
    assert_loss_falls(records)

    latest = Path(first.latest_checkpoint)
    assert json.loads((latest / "manifest.json").read_text())["step"] == 12
    saved = load_file(str(latest / "trainable.safetensors"))
    model, _ = build_reference_model(tiny_inputs, cfg)
    shapes = {k: tuple(v.shape) for k, v in model.trainable_state_dict().items()}
    assert {k: tuple(v.shape) for k, v in saved.items()} == shapes  # gathered from the ZeRO-3 partitions
    assert any(v.abs().sum() > 0 for k, v in saved.items() if k.endswith(".P"))  # P moved off its zero init

    # --resume <checkpoint>: a new run that continues at step 13 with the optimizer state restored
    cfg2 = tiny_inputs.config(tmp_path / "runs", num_workers=1, zero_stage=3, max_steps=18, eval_every=6)
    second = fit(cfg2, resume=str(latest))
    assert second.run_uri != first.run_uri
    records2 = progress_records(second.run_uri)
    start = next(r for r in records2 if r["type"] == "start")
    assert start["step"] == 12 and start["optimizer_state"] == "restored"
    assert start["restored_from"] == str(latest)
    assert sorted(train_losses(records2)) == list(range(13, 19))
    assert json.loads((Path(second.latest_checkpoint) / "manifest.json").read_text())["step"] == 18
    assert second.last_metrics["step"] == 18


def test_a_run_continued_in_place_goes_on_from_its_latest_checkpoint(
    ray_cluster, tiny_inputs, tmp_path, progress_records
):
    """`--resume <run directory>` (what jobs/curve.py does to finish a long run over several sittings): the same
    directory, steps after the latest checkpoint, progress appended, every checkpoint kept by step."""
    from cora_ray.eval.curve import checkpoints_by_step, validation_points

    common = dict(num_workers=1, zero_stage=2, eval_every=3, checkpoints_to_keep=3, run_name="curve")
    first = fit(tiny_inputs.config(tmp_path / "runs", max_steps=6, save_optimizer_state="true", **common))
    second = fit(
        tiny_inputs.config(tmp_path / "runs", max_steps=9, save_optimizer_state="true", **common),
        resume=first.run_uri,
    )
    assert second.run_uri == first.run_uri
    records = progress_records(second.run_uri)
    starts = [r for r in records if r["type"] == "start"]
    assert [s["step"] for s in starts] == [0, 6] and starts[1]["optimizer_state"] == "restored"
    # one worker: ZeRO-2 has nothing to partition and runs as stage 0, whose Adam moments resume as well
    assert all(s["zero_stage"] == 0 and s["zero_stage_configured"] == 2 for s in starts)
    steps = [r["step"] for r in records if r["type"] == "train"]
    assert steps == list(range(1, 10))  # nothing trained twice, nothing skipped
    assert sorted(checkpoints_by_step(second.run_uri)) == [3, 6, 9]
    assert [p["step"] for p in validation_points(second.run_uri)] == [3, 6, 9]


def checkpoint_registered(run_dir: Path) -> bool:
    """Ray Train lists the run's registered checkpoints in its snapshot file."""
    try:
        snapshot = json.loads((run_dir / "checkpoint_manager_snapshot.json").read_text())
    except (OSError, ValueError):
        return False
    return bool(snapshot.get("checkpoint_results"))


def test_a_killed_worker_is_replaced_and_the_run_completes(
    ray_cluster, tiny_inputs, tmp_path, progress_records
):
    cfg = tiny_inputs.config(
        tmp_path / "runs", num_workers=2, zero_stage=2, max_steps=40, eval_every=8, max_failures=1
    )
    plan = prepare_run(cfg)
    run_dir = Path(plan.run_uri)
    progress_file = run_dir / "progress.jsonl"
    killed: dict = {}

    def kill_rank1_after_first_checkpoint():
        deadline = time.time() + 300
        while time.time() < deadline and not killed:
            if progress_file.is_file() and checkpoint_registered(run_dir):
                recs = [json.loads(x) for x in progress_file.read_text().splitlines() if x.strip()]
                start = next(r for r in recs if r["type"] == "start")
                pid = next(w["pid"] for w in start["workers"] if w["rank"] == 1)
                os.kill(pid, signal.SIGKILL)  # a process of this test's own Ray cluster
                killed.update(pid=pid, step=max(r["step"] for r in recs if r["type"] == "train"))
                return
            time.sleep(0.2)

    killer = threading.Thread(target=kill_rank1_after_first_checkpoint, daemon=True)
    killer.start()
    summary = run_training(plan, quiet=True)
    killer.join(timeout=5)
    assert killed, "the run ended before a worker could be killed"

    records = progress_records(summary.run_uri)
    starts = [r for r in records if r["type"] == "start"]
    assert len(starts) == 2, starts
    restored_step = starts[1]["step"]
    assert restored_step >= 8 and restored_step % 8 == 0  # the latest checkpoint before the kill
    assert starts[1]["restored_from"] and starts[1]["optimizer_state"] == "restored"
    assert killed["pid"] not in {w["pid"] for w in starts[1]["workers"]}
    after = [r["step"] for r in records[records.index(starts[1]) :] if r["type"] == "train"]
    assert after == list(range(restored_step + 1, 41))
    assert summary.last_metrics["step"] == 40
    assert json.loads((Path(summary.latest_checkpoint) / "manifest.json").read_text())["step"] == 40
    valid_steps = [r["step"] for r in records if r["type"] == "valid"]
    assert valid_steps[-1] == 40 and all(r["valid_rows"] == 48 for r in records if r["type"] == "valid")
