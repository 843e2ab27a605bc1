"""train.shuffle=prefix_groups: the train split's rows that share one prompt prefix (same user, same history)
arrive together, the groups in a seeded random order, every row exactly once (cora_ray/train/pipeline.py)."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from cora_ray.data import protocol
from cora_ray.train import pipeline


def test_prefix_group_keys_are_equal_exactly_for_one_user_and_history():
    users = np.array([1, 1, 1, 2])
    history = [np.array([3, 4]), np.array([3, 4]), np.array([3, 5]), np.array([3, 4])]
    k = pipeline.prefix_group_keys(users, history, seed=7)
    assert k[0] == k[1] and len({k[0], k[2], k[3]}) == 3  # another history, another user: other groups
    other = pipeline.prefix_group_keys(users, history, seed=8)
    assert other[0] == other[1] and not np.array_equal(k, other)  # the seed reorders the groups
    # an empty history is a prefix too (a cold user's first rows)
    empty = pipeline.prefix_group_keys(np.array([5, 5]), [np.array([], dtype=np.int64)] * 2, seed=7)
    assert empty[0] == empty[1]


def test_one_row_order_at_a_time():
    with pytest.raises(ValueError, match="two row orders"):
        pipeline.split_dataset("unused", "train", None, global_shuffle=True, group_prefixes=True)


def _ids_only_encoder():
    def encode(batch):
        return {
            "input_ids": [np.full(2, 1, dtype=np.int32) for _ in batch["user_id"]],
            "user_id": batch["user_id"],
            "item_id": batch["item_id"],
            "label": batch["label"],
        }

    return encode


def _groups_in_order(data: str, seed: int) -> tuple[list, int]:
    """The prefix groups in the order the dataset yields them (a group repeated if it is split), row count."""
    table = protocol.read_split(data, "train", None, columns=["user_id", "item_id", "history"])
    prefix_of = {
        (int(u), int(i)): (int(u), tuple(h))
        for u, i, h in zip(
            table["user_id"].to_pylist(),
            table["item_id"].to_pylist(),
            table["history"].to_pylist(),
            strict=True,
        )
    }
    ds = pipeline.split_dataset(
        data, "train", functools.partial(_ids_only_encoder), shuffle_seed=seed, group_prefixes=True
    )
    rows = ds.take_all()
    keys = pipeline.row_keys([r["user_id"] for r in rows], [r["item_id"] for r in rows])
    assert len(rows) == len(prefix_of) and len(set(keys.tolist())) == len(rows)  # every row, once
    order = [prefix_of[(int(r["user_id"]), int(r["item_id"]))] for r in rows]
    runs = [p for j, p in enumerate(order) if j == 0 or order[j - 1] != p]
    return runs, len(rows)


@pytest.mark.ray
def test_rows_of_one_prefix_arrive_together_in_a_seeded_group_order(ray_cluster, tmp_path):
    from cora_ray.data.synthetic import prepare_synthetic

    data = str(tmp_path / "data")
    prepare_synthetic(data, users=12, items=20, interactions_per_user=10)
    runs, n = _groups_in_order(data, seed=1)
    assert len(runs) == len(set(runs))  # each prefix's rows are one contiguous run
    assert len(runs) < n  # the data does have prefixes shared by several rows
    again, _ = _groups_in_order(data, seed=1)
    other, _ = _groups_in_order(data, seed=2)
    assert again == runs and sorted(other) == sorted(runs) and other != runs
    users = [u for u, _ in runs]
    assert users != sorted(users)  # not simply the stored (user, time) order
