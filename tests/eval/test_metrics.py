"""docs/method.md §6 metrics against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cora_ray.errors import DataError
from cora_ray.eval.metrics import auc, auc_uauc, uauc


def test_auc_counts_ordered_pairs():
    # positives 0.9, 0.4; negatives 0.5, 0.1 → pairs (0.9>0.5, 0.9>0.1, 0.4<0.5, 0.4>0.1) = 3/4
    assert auc([1, 1, 0, 0], [0.9, 0.4, 0.5, 0.1]) == pytest.approx(0.75)


def test_uauc_is_plain_mean_over_qualifying_users_and_counts_skips():
    users = [1, 1, 1, 2, 2, 3, 4, 4]
    labels = [1, 0, 0, 1, 0, 1, 1, 1]
    scores = [0.9, 0.1, 0.95, 0.2, 0.8, 0.5, 0.3, 0.2]
    r = uauc(users, labels, scores)
    # user 1: pos 0.9 vs neg 0.1 (win), 0.95 (loss) → 0.5; user 2: 0.2 < 0.8 → 0.0
    assert r.value == pytest.approx(0.25)
    assert r.users_used == 2
    assert r.users_skipped == 2
    assert r.skipped_reasons == {"single_row": 1, "single_label": 1}


def test_uauc_differs_from_auc_when_users_have_offsets():
    rng = np.random.default_rng(0)
    users = np.repeat(np.arange(50), 10)
    labels = rng.integers(0, 2, size=500)
    # within each user the score ranks labels perfectly, but user offsets scramble the global order
    scores = labels * 0.1 + rng.normal(0, 5, size=50).repeat(10)
    out = auc_uauc(users, labels, scores)
    assert out["uauc"] == pytest.approx(1.0)
    assert out["auc"] < 0.8
    assert out["rows"] == 500


def test_bad_inputs_are_clear_errors():
    with pytest.raises(DataError, match="both positive and negative"):
        auc([1, 1], [0.1, 0.2])
    with pytest.raises(DataError, match="NaN"):
        auc([1, 0], [math.nan, 0.2])
    with pytest.raises(DataError, match="differ in length"):
        uauc([1, 2], [1, 0], [0.5])
    with pytest.raises(DataError, match="no rows"):
        auc([], [])


def test_uauc_nan_when_no_user_qualifies():
    r = uauc([1, 2], [1, 0], [0.3, 0.4])
    assert math.isnan(r.value) and r.users_skipped == 2
