"""Validation in a Ray Train worker: every rank scores its shard of "valid" in lockstep, then all ranks'
rows are gathered, checked (each planned row exactly once) and reduced to AUC / UAUC (docs/training.md,
"Validation exactly once").
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from cora_ray.errors import TrainingError
from cora_ray.eval.metrics import auc_uauc
from cora_ray.train.pipeline import row_keys


def any_rank(flag: bool, device: Any) -> bool:
    """True on every rank when `flag` is True on at least one (an all-reduce MAX)."""
    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def validate(
    engine: Any,
    batches: Iterator[dict],
    filler: dict,
    expected_keys: np.ndarray,
    device: Any,
    rows_out: dict | None = None,
) -> dict[str, float]:
    """Score this rank's validation shard in lockstep with the other ranks; AUC/UAUC over all ranks' rows.

    A rank whose shard is exhausted runs throw-away forwards on `filler` (its last training batch) while
    others still score, so that ZeRO-3's per-layer all-gathers stay matched. Every rank returns the same
    metrics; `rows_out`, when given, receives every rank's rows (user_id, item_id, label, score arrays).
    Raises TrainingError when a validation row is missing or was scored twice."""
    engine.eval()
    users, items, labels, scores = [], [], [], []
    with torch.no_grad():
        while True:
            batch = next(batches, None)
            if not any_rank(batch is not None, device):
                break
            logits = engine(batch if batch is not None else filler)  # filler: keeps ZeRO-3 gathers matched
            if batch is not None:
                scores.append(logits.float().cpu().numpy())
                users.append(batch["user_id"].cpu().numpy())
                items.append(batch["item_id"].cpu().numpy())
                labels.append(batch["label"].cpu().numpy())
    engine.train()
    local = [np.concatenate(a) if a else np.zeros(0) for a in (users, items, labels, scores)]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, local)
    u, i, y, s = (np.concatenate([g[k] for g in gathered]) for k in range(4))
    got = np.sort(row_keys(u.astype(np.int64), i.astype(np.int64)))
    if not np.array_equal(got, np.sort(expected_keys)):
        raise TrainingError(
            f"validation scored {len(got)} rows ({len(np.unique(got))} distinct) but expected each of "
            f"{len(expected_keys)} rows exactly once: the validation shards overlap or lost rows"
        )
    if rows_out is not None:
        rows_out.update(user_id=u.astype(np.int64), item_id=i.astype(np.int64), label=y, score=s)
    m = auc_uauc(u, y, s)
    logits, targets = torch.from_numpy(s.astype(np.float64)), torch.from_numpy(y.astype(np.float64))
    return {
        "valid_loss": float(torch.nn.functional.binary_cross_entropy_with_logits(logits, targets)),
        "valid_auc": float(m["auc"]),
        "valid_uauc": float(m["uauc"]),
        "valid_rows": int(m["rows"]),
        "valid_uauc_users": int(m["users_used"]),
    }
