"""The seeded synthetic dataset: deterministic, learnable, protocol-conformant, fast."""

from __future__ import annotations

import re

import numpy as np
import pyarrow as pa
import pytest
from sklearn.metrics import roc_auc_score

from cora_ray.data import protocol, splitting
from cora_ray.data.synthetic import make_synthetic_tables, prepare_synthetic
from cora_ray.errors import DataError, StorageError


@pytest.fixture(scope="module")
def tables():
    return make_synthetic_tables(users=60, items=80, seed=0)


def all_rows(t) -> pa.Table:
    return pa.concat_tables([t.splits[s] for s in ("train", "valid", "test")])


def test_exact_users_items_and_ids(tables):
    assert tables.users.num_rows == 60 and tables.items.num_rows == 80
    assert tables.users["user_id"].to_pylist() == list(range(1, 61))
    assert tables.items["item_id"].to_pylist() == list(range(1, 81))
    assert tables.users["raw_id"].to_pylist()[:3] == ["user_1", "user_2", "user_3"]
    rows = all_rows(tables)
    assert set(rows["user_id"].to_pylist()) == set(range(1, 61))
    assert set(rows["item_id"].to_pylist()) == set(range(1, 81))
    for name in protocol.SPLITS:
        assert tables.splits[name].schema == protocol.INTERACTION_SCHEMA
        assert tables.splits[name].num_rows > 0


def test_deterministic_in_seed(tables):
    again = make_synthetic_tables(users=60, items=80, seed=0)
    other = make_synthetic_tables(users=60, items=80, seed=1)
    for name in protocol.SPLITS:
        assert again.splits[name].equals(tables.splits[name])
    assert again.items.equals(tables.items)
    assert not other.splits["train"].equals(tables.splits["train"])


def test_titles_are_readable_and_unique(tables):
    titles = tables.items["title"].to_pylist()
    assert len(set(titles)) == 80
    assert all(re.fullmatch(r"[A-Z][A-Za-z ]+ \((19[5-9]\d|200\d|201\d)\)", t) for t in titles), titles[:5]


def test_time_split_spreads_over_months_and_has_cold_rows(tables):
    ts = {name: tables.splits[name]["ts"].to_numpy() for name in ("train", "valid", "test")}
    assert ts["train"].max() < ts["valid"].min() and ts["valid"].max() < ts["test"].min()
    months = np.unique(np.concatenate(list(ts.values())).astype("datetime64[s]").astype("datetime64[M]"))
    assert len(months) >= 20
    counts = tables.counts()
    assert 0 < counts["test_cold"] < counts["test_warm"]
    assert tables.splits["train"]["warm"].to_pylist() == [True] * tables.splits["train"].num_rows


def test_labels_follow_the_latent_ground_truth():
    t = make_synthetic_tables(users=300, items=200, seed=5, interactions_per_user=30)
    rows = all_rows(t)
    label = rows["label"].to_numpy()
    assert 0.3 < label.mean() < 0.7
    logit = t.true_logit(rows["user_id"].to_numpy(), rows["item_id"].to_numpy())
    assert roc_auc_score(label, logit) > 0.75  # a CF model has something to learn
    shuffled = np.random.default_rng(0).permutation(logit)
    assert roc_auc_score(label, shuffled) < 0.6


def test_history_and_warm_match_brute_force(tables):
    rows = all_rows(tables).to_pylist()
    train = tables.splits["train"]
    train_users, train_items = set(train["user_id"].to_pylist()), set(train["item_id"].to_pylist())
    positives: dict[int, list[tuple[int, int]]] = {}
    for r in rows:
        if r["label"] == 1:
            positives.setdefault(r["user_id"], []).append((r["ts"], r["item_id"]))
    for r in rows:
        earlier = sorted(p for p in positives.get(r["user_id"], []) if p[0] < r["ts"])
        assert r["history"] == [i for _, i in earlier][-protocol.HISTORY_LEN :]
        assert r["warm"] == (r["user_id"] in train_users and r["item_id"] in train_items)
    assert max(len(r["history"]) for r in rows) > 3


def test_valid_small_is_half_of_valid(tables):
    valid, small = tables.splits["valid"], tables.splits["valid_small"]
    assert small.num_rows == round(valid.num_rows * 0.5)
    valid_keys = {(r["user_id"], r["item_id"], r["ts"]) for r in valid.to_pylist()}
    assert {(r["user_id"], r["item_id"], r["ts"]) for r in small.to_pylist()} <= valid_keys


def test_prepare_synthetic_round_trips(tmp_path, tables):
    out = str(tmp_path / "syn")
    manifest = prepare_synthetic(out, users=60, items=80, seed=0)
    assert manifest == protocol.read_manifest(out)
    assert manifest["dataset"] == "synthetic" and manifest["users"] == 60 and manifest["items"] == 80
    assert manifest["synthetic"]["seed"] == 0
    for name in protocol.SPLITS:
        assert protocol.read_split(out, name).equals(tables.splits[name])
    assert protocol.read_items(out).equals(tables.items)
    warm = protocol.read_split(out, "test_warm").num_rows
    assert warm == tables.counts()["test_warm"] == manifest["derived_counts"]["test_warm"]
    with pytest.raises(StorageError, match="--overwrite"):
        prepare_synthetic(out, users=60, items=80, seed=1)
    assert protocol.read_manifest(out)["hash"] == manifest["hash"]  # untouched
    assert prepare_synthetic(out, users=60, items=80, seed=1, overwrite=True)["hash"] != manifest["hash"]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"users": 0}, "users must be an integer"),
        ({"items": 1}, "items must be an integer"),
        ({"interactions_per_user": 0}, "interactions_per_user"),
        ({"users": 2.5}, "users must be an integer"),
        ({"months": 3}, "months"),
        ({"cold_fraction": 1.0}, "cold_fraction"),
    ],
)
def test_bad_arguments_are_data_errors(kwargs, match):
    args = {"users": 10, "items": 10, "seed": 0} | kwargs
    with pytest.raises(DataError, match=match):
        make_synthetic_tables(**args)


def test_tiny_dataset_without_a_split_is_refused():
    with pytest.raises(DataError, match="split is empty"):
        make_synthetic_tables(users=2, items=2, seed=0, interactions_per_user=1)
    assert splitting.TRAIN == 0  # split codes used by readers stay stable
