"""train.eval_seed: the validation sample is the same rows for every training seed."""

from __future__ import annotations

import numpy as np
import pytest

from cora_ray.config import ExperimentConfig, load_config
from cora_ray.train.pipeline import read_split_keys, sample_keys
from cora_ray.train.trainer import VALID_SPLIT, validation_keys


@pytest.fixture(scope="module")
def data_uri(tmp_path_factory) -> str:
    from cora_ray.data.synthetic import prepare_synthetic

    uri = str(tmp_path_factory.mktemp("eval_seed") / "data")
    prepare_synthetic(uri, users=60, items=40, seed=0, interactions_per_user=20)
    return uri


def config(data_uri: str, *overrides: str) -> ExperimentConfig:
    return load_config(
        ExperimentConfig,
        None,
        [
            f"data.uri={data_uri}",
            "model.cf_artifact=null",
            "model.method=tallrec",
            "train.eval_limit=25",
            *overrides,
        ],
    )


def test_training_seeds_share_the_validation_sample(data_uri):
    population = read_split_keys(data_uri, VALID_SPLIT)
    assert len(population) > 25  # a real sample, not the whole split
    a = validation_keys(config(data_uri, "train.seed=42"))
    b = validation_keys(config(data_uri, "train.seed=43"))
    assert len(a) == 25 and np.array_equal(a, b)
    # the default eval_seed (42) is the sample seed-42 runs drew from train.seed before eval_seed existed
    assert np.array_equal(a, sample_keys(population, 25, 42))
    # and it is eval_seed that picks the rows
    other = validation_keys(config(data_uri, "train.seed=42", "train.eval_seed=7"))
    assert len(other) == 25 and not np.array_equal(a, other)
    assert np.array_equal(other, validation_keys(config(data_uri, "train.seed=44", "train.eval_seed=7")))


def test_without_a_limit_every_valid_row_is_validated(data_uri):
    keys = validation_keys(config(data_uri, "train.eval_limit=null", "train.seed=43"))
    assert np.array_equal(keys, read_split_keys(data_uri, VALID_SPLIT))
