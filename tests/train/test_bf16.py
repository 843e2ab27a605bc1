"""bf16 training keeps fp32 master weights: a 2-worker ZeRO-3 fit of the tiny LLaMA with `llm.dtype=bfloat16`
(the GPU configs' combination: the bf16 LLM and the fp32 trainables partitioned and all-gathered across ranks
each in its own dtype).

Checked: the frozen LLM ran in bf16 and the trainable parts stayed fp32 (recorded by the workers before and
after `deepspeed.initialize`); trainable.safetensors holds float32 tensors that are not bf16-rounded; and a
Scorer built from the checkpoint in bf16 reproduces validation's scores row by row (the checkpoint's
valid_scores.safetensors), hence its AUC and loss.

bf16 is emulated on this CPU (~2x slower than fp32); the fit takes ~1 min on 2 cores."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from cora_ray.eval.metrics import auc
from cora_ray.train.trainer import prepare_run, run_training

pytestmark = [pytest.mark.slow, pytest.mark.ray]

# Validation and the Scorer run the same bf16 model on the same rows but batch them differently (training:
# micro-batches of 8 in shard order; the Scorer: 16 rows bucketed by length), so rows are padded to other
# lengths and the CPU kernels may sum in another order. A score is a bf16 value (h @ w in bf16), so such a
# difference shows up as whole bf16 steps: measured 0 on most rows and one step (0.00098 at |score| in
# [0.125, 0.25)) on one or two of 48. Bound: BF16_STEPS steps at the score's magnitude (a bf16 value v has
# 8 significant bits: steps of 2^(floor(log2|v|) - 7)), and most rows exact. The loss follows within 1e-3;
# the AUC can move only through the rows whose score moved: at most (moved positives / positives + moved
# negatives / negatives), each moved row being compared with every row of the other label.
BF16_STEPS = 4
MIN_EXACT_SHARE = 0.75
LOSS_TOL = 1e-3


def bf16_step(values: np.ndarray) -> np.ndarray:
    """The spacing of bf16 numbers at |values| (2^(e - 7) for |v| in [2^e, 2^(e+1)))."""
    magnitude = np.maximum(np.abs(values.astype(np.float64)), 2.0**-126)
    return 2.0 ** (np.floor(np.log2(magnitude)) - 7)


def is_bf16(values: np.ndarray) -> np.ndarray:
    """True where a float32 value is exactly a bf16 number (the output of a bf16 computation is)."""
    t = torch.from_numpy(values.astype(np.float32))
    return (t.to(torch.bfloat16).to(torch.float32) == t).numpy()


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
    summary = run_training(prepare_run(cfg), quiet=True)
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

    # the checkpoint, scored by the Scorer in the training dtype, gives validation's scores row by row
    from cora_ray.infer.scorer import Scorer
    from cora_ray.train.state import load_valid_scores

    valid = load_valid_scores(ckpt)  # what validation scored, written with the checkpoint
    assert len(valid["score"]) == manifest["metrics"]["valid_rows"] == 48
    scorer = Scorer.from_checkpoint(str(ckpt), dtype="bfloat16")
    assert scorer.llm.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in scorer.model.trainable_parameters())
    scores = scorer.score(valid["user_id"], valid["item_id"], histories_of(cfg, valid))
    diff = np.abs(scores - valid["score"])
    print(f"bf16 Scorer vs validation: max |score diff| {diff.max():.4g}, mean {diff.mean():.4g}")
    assert np.all(diff <= BF16_STEPS * bf16_step(valid["score"])), (diff, valid["score"])
    assert (diff == 0).mean() >= MIN_EXACT_SHARE, (
        f"only {(diff == 0).mean():.0%} of the rows score exactly alike"
    )
    labels = valid["label"]
    loss = torch.nn.functional.binary_cross_entropy_with_logits(
        torch.from_numpy(scores.astype(np.float64)), torch.from_numpy(labels.astype(np.float64))
    ).item()
    assert loss == pytest.approx(manifest["metrics"]["valid_loss"], abs=LOSS_TOL)
    moved = diff > 0
    positives, negatives = (labels == 1), (labels == 0)
    auc_tol = moved[positives].sum() / positives.sum() + moved[negatives].sum() / negatives.sum() + 1e-12
    assert auc(labels, scores) == pytest.approx(manifest["metrics"]["valid_auc"], abs=auc_tol)

    # bf16 did run: every bf16 Scorer score (and every score validation recorded) is a bf16 number, while the
    # same checkpoint scored in fp32 gives fp32 values (the trainables are the same fp32 tensors in both)
    assert is_bf16(scores).all() and is_bf16(valid["score"]).all()
    fp32 = Scorer.from_checkpoint(str(ckpt), dtype="float32")
    fp32_scores = fp32.score(valid["user_id"], valid["item_id"], histories_of(cfg, valid))
    print(f"bf16 vs fp32 Scorer: max |score diff| {np.abs(fp32_scores - scores).max():.4g}")
    assert is_bf16(fp32_scores).mean() < 0.5


def histories_of(cfg, rows) -> list:
    """The history column of the valid_small rows, in the order of `rows`' (user_id, item_id)."""
    from cora_ray.data import protocol
    from cora_ray.train.pipeline import row_keys

    table = protocol.read_split(cfg.data.uri, "valid_small")
    index = {
        int(k): j for j, k in enumerate(row_keys(table["user_id"].to_numpy(), table["item_id"].to_numpy()))
    }
    histories = table["history"].to_pylist()
    return [histories[index[int(k)]] for k in row_keys(rows["user_id"], rows["item_id"])]
