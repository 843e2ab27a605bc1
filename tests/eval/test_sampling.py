"""Row selection of the evaluation: split names, the seeded --limit sample, derived splits."""

from __future__ import annotations

import numpy as np
import pytest

from cora_ray.errors import ConfigError
from cora_ray.eval.evaluate import parse_splits, sample_positions, select_rows


def test_parse_splits_validates_names():
    assert parse_splits("test, test_warm,test") == ["test", "test_warm"]
    with pytest.raises(ConfigError, match="unknown split.*'tset'.*choose from"):
        parse_splits("test,tset")
    with pytest.raises(ConfigError, match="no split"):
        parse_splits(" , ")


def test_limit_sample_is_seeded_stable_and_nested():
    mask = np.ones(1000, dtype=bool)
    a = sample_positions(mask, 100, seed=42)
    assert np.array_equal(a, sample_positions(mask, 100, seed=42))  # same rows every run
    assert len(a) == 100 and len(np.unique(a)) == 100 and np.all(np.diff(a) > 0)
    assert not np.array_equal(a, sample_positions(mask, 100, seed=7))  # the seed matters
    assert set(a) <= set(sample_positions(mask, 200, seed=42))  # a larger limit extends a smaller one
    assert np.array_equal(sample_positions(mask, 5000, seed=42), np.arange(1000))  # limit above n: all
    assert np.array_equal(sample_positions(mask, None, seed=0), np.arange(1000))


def test_limit_sample_of_a_filtered_split_stays_inside_it():
    mask = np.zeros(500, dtype=bool)
    mask[::3] = True
    s = sample_positions(mask, 40, seed=1)
    assert len(s) == 40 and mask[s].all()


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    from cora_ray.data.synthetic import prepare_synthetic

    uri = str(tmp_path_factory.mktemp("syn") / "data")
    prepare_synthetic(uri, users=40, items=50, seed=3)
    return uri


def test_select_rows_scores_derived_splits_once_and_matches_the_data(synthetic):
    from cora_ray.data import protocol

    rows, selection, population = select_rows(synthetic, ["test", "test_warm", "test_cold"], None, 42)
    test = protocol.read_split(synthetic, "test")
    assert rows.num_rows == test.num_rows  # warm and cold are subsets of test: scored once
    assert population == {
        "test": test.num_rows,
        "test_warm": protocol.read_split(synthetic, "test_warm").num_rows,
        "test_cold": protocol.read_split(synthetic, "test_cold").num_rows,
    }
    keys = rows["_key"].to_numpy()
    warm = rows["warm"].to_numpy(zero_copy_only=False)
    assert warm[np.searchsorted(keys, selection["test_warm"])].all()
    assert not warm[np.searchsorted(keys, selection["test_cold"])].any()
    assert len(selection["test_warm"]) + len(selection["test_cold"]) == len(selection["test"])


def test_select_rows_with_limit_is_stable_across_calls(synthetic):
    a, sel_a, _ = select_rows(synthetic, ["test", "valid"], 25, 42)
    b, sel_b, _ = select_rows(synthetic, ["test", "valid"], 25, 42)
    assert a.equals(b)
    assert {k: v.tolist() for k, v in sel_a.items()} == {k: v.tolist() for k, v in sel_b.items()}
    assert len(sel_a["test"]) == 25 and len(sel_a["valid"]) == 25
