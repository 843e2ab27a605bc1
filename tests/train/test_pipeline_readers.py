"""The training ingest lists each split with one Parquet footer reader, not Ray Data's default pool of 32
actors (one Python process each: the raylet's "N PYTHON worker processes ... Nx the maximum expected startup
concurrency" warnings on a 2-core machine; docs/platform_notes.md §5)."""

from __future__ import annotations

import functools
import os

import numpy as np
import pytest

from cora_ray.data import protocol
from cora_ray.train import pipeline


def test_footer_readers_is_scoped_and_a_user_value_wins(monkeypatch):
    monkeypatch.delenv(pipeline.FOOTER_READERS_ENV, raising=False)
    with pipeline.footer_readers():
        assert os.environ[pipeline.FOOTER_READERS_ENV] == "1"
    assert pipeline.FOOTER_READERS_ENV not in os.environ  # nothing left behind in the process
    monkeypatch.setenv(pipeline.FOOTER_READERS_ENV, "4")
    with pipeline.footer_readers():
        assert os.environ[pipeline.FOOTER_READERS_ENV] == "4"
    assert os.environ[pipeline.FOOTER_READERS_ENV] == "4"


def _ids_only_encoder():
    def encode(batch):
        n = len(batch["user_id"])
        return {
            "input_ids": [np.full(3, i, dtype=np.int32) for i in range(n)],
            "user_id": batch["user_id"],
            "item_id": batch["item_id"],
            "label": batch["label"],
        }

    return encode


def _file_indexers(ds) -> list:
    found, todo = [], [ds._logical_plan.dag]
    while todo:
        op = todo.pop()
        if hasattr(op, "file_indexer"):
            found.append(op.file_indexer)
        todo.extend(op.input_dependencies)
    return found


@pytest.mark.ray
@pytest.mark.slow
def test_a_split_is_listed_by_one_footer_reader_and_keeps_its_rows(ray_cluster, tmp_path, monkeypatch):
    from cora_ray.data.synthetic import prepare_synthetic

    monkeypatch.delenv(pipeline.FOOTER_READERS_ENV, raising=False)
    data = str(tmp_path / "data")
    prepare_synthetic(data, users=12, items=20, interactions_per_user=8)
    keys = pipeline.read_split_keys(data, "valid")
    keep = pipeline.sample_keys(keys, 5, seed=3)
    ds = pipeline.split_dataset(data, "valid", functools.partial(_ids_only_encoder), keep_keys=keep)
    indexers = _file_indexers(ds)
    # Ray Data's Parquet listing (datasource V2) sizes its footer-reader pool from the variable when the
    # read is planned; if a Ray upgrade moves the knob, this fails instead of the warnings coming back
    assert [i._num_actors for i in indexers] == [1]
    rows = ds.take_all()
    got = pipeline.row_keys([r["user_id"] for r in rows], [r["item_id"] for r in rows])
    assert len(keep) == 5 and np.array_equal(np.sort(got), np.sort(keep))  # those rows, each once
    table = protocol.read_split(data, "valid", None, columns=["user_id", "item_id", "label"])
    labels = dict(
        zip(
            pipeline.row_keys(table["user_id"].to_numpy(), table["item_id"].to_numpy()),
            table["label"].to_numpy(),
            strict=True,
        )
    )
    assert [int(r["label"]) for r in rows] == [int(labels[k]) for k in got]  # with their own labels
