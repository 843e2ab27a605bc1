"""Validation rows are encoded where the training workers run, once per run: the driver hands the workers a
lazy "valid" dataset (on a cluster whose head has CPU: 0, materialising it on the driver would start a CPU
node just for that), and each worker replays its first pass from memory at every later validation."""

from __future__ import annotations

import numpy as np
import torch

from cora_ray.train.pipeline import ReplayedShard


class CountingShard:
    """Stands in for `ray.train.get_dataset_shard`: numpy batches through the given collate_fn, passes counted."""

    def __init__(self, rows: int, batch_size: int = 3) -> None:
        self.passes = 0
        self.rows, self.batch_size = rows, batch_size

    def iter_torch_batches(self, *, batch_size, collate_fn, **kwargs):
        self.passes += 1
        for start in range(0, self.rows, batch_size):
            n = min(batch_size, self.rows - start)
            ids = np.arange(start, start + n)
            width = 2 + ids % 3  # rows of different lengths, unpadded (a list<int32> column)
            tokens = np.empty(n, dtype=object)
            tokens[:] = [np.full(w, 10 + r, dtype=np.int32) for r, w in enumerate(width)]
            yield collate_fn(
                {
                    "input_ids": tokens,
                    "user_id": ids,
                    "item_id": ids + 1000,
                    "label": (ids % 2).astype(np.float32),
                }
            )


def _pass(source) -> list[dict]:
    return list(iter(source))


def test_the_first_validation_streams_the_shard_and_later_ones_replay_it():
    shard = CountingShard(rows=10)
    valid = ReplayedShard(shard, batch_size=4, pad_id=0)
    first = _pass(valid)
    assert shard.passes == 1 and [len(b["user_id"]) for b in first] == [4, 4, 2]
    for _ in range(3):
        again = _pass(valid)
        assert shard.passes == 1, "a later validation ran the Ray Data pipeline again"
        assert len(again) == len(first)
        for a, b in zip(first, again, strict=True):
            assert a.keys() == b.keys()
            assert all(torch.equal(a[k], b[k]) for k in a)


def test_an_unfinished_first_pass_is_not_kept():
    shard = CountingShard(rows=10)
    valid = ReplayedShard(shard, batch_size=4, pad_id=0)
    it = iter(valid)
    next(it)  # stopped after one batch: the cache would lack rows
    assert valid.cached is None
    assert sum(len(b["user_id"]) for b in _pass(valid)) == 10 and shard.passes == 2
    assert sum(len(b["user_id"]) for b in _pass(valid)) == 10 and shard.passes == 2


def test_the_driver_leaves_the_valid_dataset_lazy(monkeypatch):
    from types import SimpleNamespace

    from cora_ray.train import pipeline, trainer

    made = []

    class LazyDataset:
        def materialize(self):
            raise AssertionError("the driver materialised a dataset: on the cluster that needs a CPU node")

    def split_dataset(uri, split, factory, **kwargs):
        made.append(split)
        return LazyDataset()

    monkeypatch.setattr(pipeline, "split_dataset", split_dataset)
    cfg = SimpleNamespace(
        data=SimpleNamespace(uri="data"),
        train=SimpleNamespace(seed=0, shuffle="global", eval_limit=None),
    )
    plan = SimpleNamespace(cfg=cfg, encoder_factory=None, endpoint=None, valid_keys=None)
    datasets = trainer.build_datasets(plan)
    assert made == [trainer.TRAIN_SPLIT, trainer.VALID_SPLIT]
    assert all(isinstance(ds, LazyDataset) for ds in datasets.values())
