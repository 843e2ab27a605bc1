"""docs/method.md §6 metrics: AUC over all rows, UAUC = mean per-user AUC over users with both labels."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
from sklearn.metrics import roc_auc_score

from cora_ray.errors import DataError


def _as_arrays(*arrays) -> list[np.ndarray]:
    out = [np.asarray(a) for a in arrays]
    n = len(out[0])
    for a in out[1:]:
        if len(a) != n:
            raise DataError(f"metrics: arrays differ in length ({[len(x) for x in out]})")
    return out


def auc(labels, scores) -> float:
    """ROC AUC of raw scores over all rows. Needs both labels present."""
    labels, scores = _as_arrays(labels, scores)
    if len(labels) == 0:
        raise DataError("auc: no rows")
    if not np.all(np.isfinite(scores)):
        raise DataError(f"auc: {int((~np.isfinite(scores)).sum())} scores are NaN or infinite")
    if len(np.unique(labels)) < 2:
        raise DataError("auc: needs both positive and negative labels")
    return float(roc_auc_score(labels, scores))


@dataclass
class UAUCResult:
    value: float  # NaN when no user qualifies
    users_used: int
    users_skipped: int
    skipped_reasons: dict[str, int] = field(default_factory=dict)  # "single_row", "single_label"

    def to_dict(self) -> dict:
        return {
            "uauc": self.value,
            "users_used": self.users_used,
            "users_skipped": self.users_skipped,
            "skipped_reasons": dict(self.skipped_reasons),
        }


def uauc(user_ids, labels, scores) -> UAUCResult:
    """Mean per-user AUC over users with at least 2 rows and both labels; the others are counted."""
    user_ids, labels, scores = _as_arrays(user_ids, labels, scores)
    if len(labels) == 0:
        raise DataError("uauc: no rows")
    if not np.all(np.isfinite(scores)):
        raise DataError(f"uauc: {int((~np.isfinite(scores)).sum())} scores are NaN or infinite")
    order = np.argsort(user_ids, kind="stable")
    u, y, s = user_ids[order], labels[order], scores[order]
    boundaries = np.flatnonzero(np.diff(u)) + 1
    aucs: list[float] = []
    reasons: Counter = Counter()
    for ys, ss in zip(np.split(y, boundaries), np.split(s, boundaries), strict=True):
        if len(ys) < 2:
            reasons["single_row"] += 1
        elif len(np.unique(ys)) < 2:
            reasons["single_label"] += 1
        else:
            aucs.append(float(roc_auc_score(ys, ss)))
    value = float(np.mean(aucs)) if aucs else float("nan")
    return UAUCResult(value, len(aucs), sum(reasons.values()), dict(reasons))


def auc_uauc(user_ids, labels, scores) -> dict:
    """Both metrics as one JSON-ready dict."""
    u = uauc(user_ids, labels, scores)
    return {"auc": auc(labels, scores), **u.to_dict(), "rows": int(len(labels))}
