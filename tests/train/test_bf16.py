"""bf16 training keeps fp32 master weights: a 2-worker ZeRO-3 fit of the tiny LLaMA with `llm.dtype=bfloat16`
(the GPU configs' combination: the bf16 LLM and the fp32 trainables partitioned and all-gathered across ranks
each in its own dtype).

Checked: the frozen LLM ran in bf16 and the trainable parts stayed fp32 (recorded by the workers before and
after `deepspeed.initialize`); trainable.safetensors holds float32 tensors that are not bf16-rounded; and a
Scorer built from the checkpoint in bf16 reproduces validation's AUC and loss.

bf16 is emulated on this CPU (~2x slower than fp32); the fit takes ~1 min on 2 cores."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from cora_ray.train.trainer import prepare_run, run_training

pytestmark = [pytest.mark.slow, pytest.mark.ray]

# Validation and the Scorer run the same bf16 model on the same rows, but batch them differently (training:
# micro-batches of 8 in shard order; the Scorer: 16 rows bucketed by length), so the padded lengths and the
# GEMM shapes differ; bf16 rounds each layer's output to 8 significant bits, so a score may move by a few bf16
# ulps (~1e-2 at the scores' magnitude). Bounds: the mean BCE within 0.01 (~1% of it) and the AUC within
# 0.02 — one swapped pair of close scores among the 48 rows' ~575 positive/negative pairs moves it 0.0017.
LOSS_TOL = 0.01
AUC_TOL = 0.02


def test_bf16_zero3_two_workers_trains_fp32_masters_and_scores_like_validation(
    ray_cluster, tiny_inputs, tmp_path, progress_records
):
    cfg = tiny_inputs.config(
        tmp_path / "runs",
        "llm.dtype=bfloat16",
        num_workers=2,
        zero_stage=3,
        max_steps=8,
        eval_every=8,
    )
    plan = prepare_run(cfg)
    summary = run_training(plan, quiet=True)
    records = progress_records(summary.run_uri)

    start = next(r for r in records if r["type"] == "start")
    assert start["precision"] == "bf16" and start["world_size"] == 2 and start["zero_stage"] == 3
    assert start["llm_dtype"] == ["torch.bfloat16"]  # the frozen LLM ran in bf16...
    assert start["trainable_dtypes"] == ["torch.float32"]  # ...beside fp32 trainable parts
    losses = [r["loss"] for r in records if r["type"] == "train"]
    assert len(losses) == 8 and all(np.isfinite(losses))

    ckpt = Path(summary.latest_checkpoint)
    manifest = json.loads((ckpt / "manifest.json").read_text())
    assert manifest["step"] == 8 and manifest["trainable"]["dtypes"] == ["float32"]
    saved = load_file(str(ckpt / "trainable.safetensors"))
    assert saved and all(t.dtype == torch.float32 for t in saved.values())
    # fp32 masters, not bf16-rounded copies: rounding to bf16 changes most of the values
    values = torch.cat([t.flatten() for t in saved.values()])
    rounded = values.to(torch.bfloat16).to(torch.float32)
    changed = (values != rounded).float().mean().item()
    assert changed > 0.5, f"only {changed:.1%} of the trainable values differ from their bf16 rounding"
    p_moved = [t for k, t in saved.items() if k.endswith(".P") and t.abs().sum() > 0]
    assert (
        p_moved
    )  # P left its zero init: the gathered tensors are trained ones, not a rank's empty partition

    # the checkpoint, scored by the Scorer in the training dtype, gives validation's numbers
    from cora_ray.data import protocol
    from cora_ray.eval.metrics import auc
    from cora_ray.infer.scorer import Scorer
    from cora_ray.train.pipeline import row_keys

    scorer = Scorer.from_checkpoint(str(ckpt), dtype="bfloat16")
    assert scorer.llm.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in scorer.model.trainable_parameters())
    table = protocol.read_split(cfg.data.uri, "valid_small")
    keys = row_keys(table["user_id"].to_numpy(), table["item_id"].to_numpy())
    rows = table.filter(np.isin(keys, plan.valid_keys))
    assert rows.num_rows == manifest["metrics"]["valid_rows"] == 48
    labels = rows["label"].to_numpy()
    scores = scorer.score(rows["user_id"].to_numpy(), rows["item_id"].to_numpy(), rows["history"].to_pylist())
    loss = torch.nn.functional.binary_cross_entropy_with_logits(
        torch.from_numpy(scores.astype(np.float64)), torch.from_numpy(labels.astype(np.float64))
    ).item()
    assert loss == pytest.approx(manifest["metrics"]["valid_loss"], abs=LOSS_TOL)
    assert auc(labels, scores) == pytest.approx(manifest["metrics"]["valid_auc"], abs=AUC_TOL)
