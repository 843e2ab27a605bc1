"""Paired bootstrap intervals of AUC / UAUC differences (cora_ray/eval/bootstrap.py)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from cora_ray.errors import DataError
from cora_ray.eval.bootstrap import align_scores, paired_bootstrap, user_aucs, weighted_auc
from cora_ray.eval.metrics import uauc


def rows(n_users=60, per_user=20, seed=0):
    rng = np.random.default_rng(seed)
    users = np.repeat(np.arange(n_users), per_user)
    items = np.tile(np.arange(per_user), n_users) + 1000 * (users % 3)
    labels = rng.integers(0, 2, len(users))
    return users, items, labels, rng


def table(users, items, labels, scores, order=None):
    order = np.arange(len(users)) if order is None else order
    return {"user_id": users[order], "item_id": items[order], "label": labels[order], "score": scores[order]}


def test_weighted_auc_is_the_auc_of_the_counted_rows_with_ties():
    rng = np.random.default_rng(1)
    scores = np.round(rng.normal(size=400), 1)  # many ties
    labels = rng.integers(0, 2, 400)
    assert weighted_auc(scores, labels, np.ones((1, 400)))[0] == pytest.approx(roc_auc_score(labels, scores))
    draws = rng.integers(0, 400, size=(3, 400))
    counts = np.stack([np.bincount(d, minlength=400) for d in draws])
    got = weighted_auc(scores, labels, counts)
    want = [roc_auc_score(labels[d], scores[d]) for d in draws]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


def test_a_clearly_better_method_has_an_interval_above_zero():
    users, items, labels, rng = rows()
    good = labels + rng.normal(0, 0.8, len(labels))  # AUC ~0.8
    weak = labels + rng.normal(0, 3.0, len(labels))  # AUC ~0.57
    aligned = align_scores(
        {"A": [table(users, items, labels, good)], "B": [table(users, items, labels, weak)]}
    )
    out = paired_bootstrap(aligned, "A", "B", resamples=500, seed=3)
    auc = out["auc"]
    assert auc["observed"] == pytest.approx(roc_auc_score(labels, good) - roc_auc_score(labels, weak))
    assert auc["observed"] > 0.1 and auc["ci"][0] > 0 and not auc["zero_in_ci"]
    assert auc["ci"][0] < auc["observed"] < auc["ci"][1] and auc["resamples"] == 500
    assert auc["resampled"] == "rows" and auc["units"] == len(labels)
    # UAUC resamples users; its observed difference is the difference of the two UAUCs
    want = uauc(users, labels, good).value - uauc(users, labels, weak).value
    assert out["uauc"]["observed"] == pytest.approx(want)
    assert (
        out["uauc"]["resampled"] == "users" and out["uauc"]["units"] == uauc(users, labels, good).users_used
    )
    assert not out["uauc"]["zero_in_ci"]


def test_equally_good_methods_have_an_interval_around_zero():
    users, items, labels, rng = rows()
    base = labels + rng.normal(0, 1.0, len(labels))
    a = base + rng.normal(0, 0.3, len(labels))
    b = base + rng.normal(0, 0.3, len(labels))
    aligned = align_scores({"A": [table(users, items, labels, a)], "B": [table(users, items, labels, b)]})
    out = paired_bootstrap(aligned, "A", "B", resamples=500, seed=3)
    assert out["auc"]["zero_in_ci"] and out["uauc"]["zero_in_ci"]
    assert abs(out["auc"]["observed"]) < 0.03
    # paired: the interval is much narrower than the spread of either AUC over the same resamples
    assert out["auc"]["ci"][1] - out["auc"]["ci"][0] < 0.05


def test_rows_are_matched_by_key_whatever_their_order_and_repeats():
    users, items, labels, rng = rows(n_users=10, per_user=8)
    # a repeated (user, item) pair with different labels: told apart by its occurrence, in file order
    users, items = np.r_[users, users[0]], np.r_[items, items[0]]
    labels = np.r_[labels, 1 - labels[0]]
    s = rng.normal(size=len(users))
    shuffled = rng.permutation(len(users))
    shuffled = shuffled[shuffled != 0]
    shuffled = np.r_[0, shuffled]  # the first occurrence stays before the second
    one = align_scores({"A": [table(users, items, labels, s)], "B": [table(users, items, labels, s)]})
    two = align_scores(
        {"A": [table(users, items, labels, s)], "B": [table(users, items, labels, s, shuffled)]}
    )
    np.testing.assert_array_equal(one.scores["B"], two.scores["B"])
    assert paired_bootstrap(two, "A", "B", resamples=50)["auc"]["observed"] == 0.0


def test_different_rows_are_refused():
    users, items, labels, rng = rows(n_users=10, per_user=8)
    s = rng.normal(size=len(users))
    full = table(users, items, labels, s)
    fewer = table(users[1:], items[1:], labels[1:], s[1:])
    with pytest.raises(DataError, match="scored different rows .*80 vs 79 rows; 1 only in the first"):
        align_scores({"A": [full], "B": [fewer]})
    moved = table(users, items + (np.arange(len(items)) == 5), labels, s)
    with pytest.raises(DataError, match="different rows"):
        align_scores({"A": [full], "B": [moved]})
    relabelled = table(users, items, np.where(np.arange(len(labels)) == 5, 1 - labels, labels), s)
    with pytest.raises(DataError, match="disagree on the label"):
        align_scores({"A": [full], "B": [relabelled]})
    # the seeds of one method must have scored the same rows too
    with pytest.raises(DataError, match="seed table 2 of 2"):
        align_scores({"A": [full, fewer], "B": [full]})


def test_a_multi_seed_method_counts_as_the_mean_of_its_seeds_on_each_resample():
    users, items, labels, rng = rows()
    s1, s2 = (labels + rng.normal(0, sd, len(labels)) for sd in (0.8, 1.5))
    b = labels + rng.normal(0, 2.0, len(labels))
    t = lambda s: table(users, items, labels, s)  # noqa: E731
    multi = align_scores({"A": [t(s1), t(s2)], "B": [t(b)]})
    both = paired_bootstrap(multi, "A", "B", resamples=300, seed=5, keep_samples=True)
    one = paired_bootstrap(
        align_scores({"A": [t(s1)], "B": [t(b)]}), "A", "B", resamples=300, seed=5, keep_samples=True
    )
    two = paired_bootstrap(
        align_scores({"A": [t(s2)], "B": [t(b)]}), "A", "B", resamples=300, seed=5, keep_samples=True
    )
    assert both["seeds"] == {"A": 2, "B": 1}
    auc_b = roc_auc_score(labels, b)
    mean_a = (roc_auc_score(labels, s1) + roc_auc_score(labels, s2)) / 2
    assert both["auc"]["observed"] == pytest.approx(mean_a - auc_b)
    # the same resamples for every call (seeded): A's value on each is the mean of its two seeds' AUCs
    np.testing.assert_allclose(
        both["auc"]["samples"], (one["auc"]["samples"] + two["auc"]["samples"]) / 2, atol=1e-12
    )
    np.testing.assert_allclose(
        both["uauc"]["samples"], (one["uauc"]["samples"] + two["uauc"]["samples"]) / 2, atol=1e-12
    )


def test_user_aucs_follow_the_uauc_rule():
    users, _, labels, rng = rows(n_users=30, per_user=4, seed=2)
    users = np.r_[users, 99]  # a user with one row: skipped
    labels = np.r_[labels, 1]
    s = rng.normal(size=len(users))
    kept, aucs = user_aucs(users, labels, s)
    ref = uauc(users, labels, s)
    assert len(kept) == ref.users_used and aucs.shape == (1, ref.users_used)
    assert aucs.mean() == pytest.approx(ref.value) and 99 not in kept
