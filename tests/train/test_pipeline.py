"""The pieces of the ingest that run without Ray: padding each batch to its own longest row, the validation
sample, row keys."""

from __future__ import annotations

import numpy as np

from cora_ray.train.pipeline import _keep_rows, collate_left_padded, row_keys, sample_keys


def test_collate_pads_unpadded_rows_once_to_the_batch_width():
    # rows of three lengths as Ray Data hands a list<int32> column over (object array of rows, no padding)
    ids = np.empty(3, dtype=object)
    ids[:] = [
        np.array([5, 6, 7], np.int32),
        np.array([8, 9, 10, 11], np.int32),
        np.array([12, 13, 14], np.int32),
    ]
    history = np.empty(3, dtype=object)
    history[:] = [np.array([0, 1]), np.array([2, 3]), np.array([0, 0])]
    batch = {
        "input_ids": ids,
        "user_id": np.array([1, 2, 3], dtype=np.int32),
        "item_id": np.array([4, 5, 6], dtype=np.int32),
        "label": np.array([1, 0, 1], dtype=np.int8),
        "history": history,
        "user_pos": np.array([0, 0, 0]),  # the first token of each row, inside the row
    }
    out = collate_left_padded(batch, pad_id=0)
    assert out["input_ids"].tolist() == [[0, 5, 6, 7], [8, 9, 10, 11], [0, 12, 13, 14]]
    assert out["attention_mask"].tolist() == [[0, 1, 1, 1], [1, 1, 1, 1], [0, 1, 1, 1]]
    assert out["user_pos"].tolist() == [1, 0, 1]  # still the first real token
    assert out["history"].tolist() == [[0, 1], [2, 3], [0, 0]]
    assert out["label"].dtype.is_floating_point and out["user_id"].tolist() == [1, 2, 3]


def test_validation_sample_is_seeded_and_exact():
    keys = row_keys(np.arange(1, 101), np.arange(101, 201))
    a, b = sample_keys(keys, 10, seed=42), sample_keys(keys, 10, seed=42)
    assert len(a) == 10 and np.array_equal(a, b) and len(np.unique(a)) == 10
    assert not np.array_equal(a, sample_keys(keys, 10, seed=7))
    assert np.array_equal(sample_keys(keys, None, seed=42), keys)
    assert np.array_equal(sample_keys(keys, 1000, seed=42), keys)


def test_keep_rows_filters_a_map_batch_by_user_item_key():
    batch = {"user_id": np.array([1, 2, 3]), "item_id": np.array([7, 8, 9]), "label": np.array([1, 0, 1])}
    kept = _keep_rows(batch, np.unique(row_keys(np.array([3, 1]), np.array([9, 7]))))
    assert kept["user_id"].tolist() == [1, 3] and kept["label"].tolist() == [1, 1]
    assert row_keys(np.array([1]), np.array([2]))[0] == (1 << 32) | 2
