"""A checkpoint reloaded in a Scorer (cora_ray/infer) gives validation's scores row by row (the checkpoint's
valid_scores.safetensors), its AUC and its loss. Not bit for bit: validation batches rows in micro-batches
per shard, the Scorer 16 rows bucketed by length, so rows are padded to other lengths and fp32 sums run in
other orders (measured: at most 3e-7 in a score; bound 1e-5). An AUC tolerance of 1e-9 still means the same
ranking (one swapped pair of the ~575 moves it ~0.0017)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

SCORE_ATOL = 1e-5
AUC_TOL = 1e-9
LOSS_REL_TOL = 1e-5


def assert_reload_matches_validation(ckpt: Path, cfg, valid_keys) -> dict:
    """The checkpoint loaded in a Scorer scores validation's rows as validation did (valid_scores.safetensors),
    and gives its AUC and loss."""
    from cora_ray.data import protocol
    from cora_ray.eval.metrics import auc
    from cora_ray.infer.scorer import Scorer
    from cora_ray.train.pipeline import row_keys
    from cora_ray.train.state import load_valid_scores

    manifest = json.loads((ckpt / "manifest.json").read_text())
    metrics = manifest["metrics"]
    valid = load_valid_scores(ckpt)
    assert np.array_equal(np.sort(row_keys(valid["user_id"], valid["item_id"])), np.sort(valid_keys))
    table = protocol.read_split(cfg.data.uri, "valid_small")
    index = {
        int(k): j for j, k in enumerate(row_keys(table["user_id"].to_numpy(), table["item_id"].to_numpy()))
    }
    histories = table["history"].to_pylist()
    hist = [histories[index[int(k)]] for k in row_keys(valid["user_id"], valid["item_id"])]

    scores = Scorer.from_checkpoint(str(ckpt)).score(valid["user_id"], valid["item_id"], hist)
    print(f"fp32 Scorer vs validation: max |score diff| {np.abs(scores - valid['score']).max():.3g}")
    np.testing.assert_allclose(scores, valid["score"], rtol=0, atol=SCORE_ATOL)
    labels = valid["label"]
    loss = torch.nn.functional.binary_cross_entropy_with_logits(
        torch.from_numpy(scores.astype(np.float64)), torch.from_numpy(labels.astype(np.float64))
    ).item()
    assert len(scores) == metrics["valid_rows"]
    assert auc(labels, scores) == pytest.approx(metrics["valid_auc"], abs=AUC_TOL)
    assert loss == pytest.approx(metrics["valid_loss"], rel=LOSS_REL_TOL)
    return manifest
