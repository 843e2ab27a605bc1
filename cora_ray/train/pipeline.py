"""Ray Data ingest for training: protocol parquet → prompts → token ids, streamed into the Train workers.

    train_ds = split_dataset(data_uri, "train", encoder, shuffle_seed=42)    # lazy; nothing read yet
    valid_ds = split_dataset(data_uri, "valid_small", encoder, keep=keys)     # optional fixed row subset
    TorchTrainer(..., datasets={"train": train_ds, "valid": valid_ds}, dataset_config=TrainDataConfig())

    # in a worker
    for batch in iter_model_batches(ray.train.get_dataset_shard("train"), batch_size=8, pad_id=0, ...):
        ...                                   # dict of tensors: input_ids (B, T) left-padded, attention_mask, ...
    valid = ReplayedShard(ray.train.get_dataset_shard("valid"), batch_size=8, pad_id=0)  # encoded once

- `read_parquet` streams the split's parts (local or s3://, pyarrow filesystem passed explicitly so that the
  endpoint reaches every read task); rows are never collected in one process. Ray Data lists a Parquet
  read by reading the files' footers on a pool of `FooterReader` actors, 32 requested per read by default,
  one Python process each: on a 2-core machine a demo run started 31 worker processes (18 with one reader)
  and the raylet warned "N PYTHON worker processes ... Nx the maximum expected startup concurrency". A
  split here is a few files, so one footer reader is enough (`footer_readers`; docs/platform_notes.md §5).
- Titles are attached and prompts built + tokenised by the project's `PromptEncoder` inside `map_batches`
  on CPU actors, overlapped with training (cora_ray/data/batching.py `encode_rows`).
- Rows travel through the object store unpadded: `input_ids` is a list<int32> column, each row its own
  length, and CoLLM's `user_pos` / `item_pos` are indices inside the row. Nothing is padded to
  `prompt.max_prompt_tokens`.
- Each training batch is left-padded once, in the worker, to its own longest row (`batching.collate`, via
  `iter_model_batches`' collate_fn): the same function the scorer uses, so both build identical input_ids.
- `group_prefixes` (train.shuffle = "prefix_groups") orders the rows so that those sharing one prompt prefix
  (same user, same history) are adjacent, in a seeded random order of the groups: a Ray Data `sort` on a
  keyed hash of (user, history) instead of `random_shuffle`. A micro-batch then holds a few rows of each of
  fewer prefixes, and a `user_prefix` / `suffix` model computes each prefix once for them
  (`CoRAModel._forward_shared`; docs/method.md §2.5).
- `TrainDataConfig` splits "train" into equal shards (every worker takes the same number of steps per epoch)
  and "valid" into unequal ones (`equal=True` would drop rows to even the shards: each validation row must
  be scored exactly once).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from cora_ray import storage
from cora_ray.data import protocol
from cora_ray.data.batching import collate, to_arrow
from cora_ray.errors import DataError

READ_COLUMNS = ["user_id", "item_id", "label", "history"]
# Ray Data (datasource V2) reads this variable when `read_parquet` is called, in the calling process, to size
# the pool of actors that read the files' footers (its default: 32 actors, one Python process each)
FOOTER_READERS_ENV = "RAY_DATA_PARQUET_FOOTER_NUM_ACTORS"
FOOTER_READERS = 1


def row_keys(user_id: np.ndarray, item_id: np.ndarray) -> np.ndarray:
    """int64 key of a (user, item) pair: what validation counts to check that every row is scored once."""
    return (np.asarray(user_id, dtype=np.int64) << 32) | np.asarray(item_id, dtype=np.int64)


def read_split_keys(data_uri: str, split: str, endpoint: str | None = None) -> np.ndarray:
    """The (user, item) keys of a split's rows, in file order (two int columns: small even for Amazon-Book)."""
    table = protocol.read_split(data_uri, split, endpoint, columns=["user_id", "item_id"])
    return row_keys(table["user_id"].to_numpy(), table["item_id"].to_numpy())


def sample_keys(keys: np.ndarray, limit: int | None, seed: int) -> np.ndarray:
    """A fixed seeded subset of `limit` rows (all rows when `limit` is None or ≥ the row count), as keys."""
    if limit is None or limit >= len(keys):
        return keys
    idx = np.sort(np.random.default_rng(seed).choice(len(keys), size=limit, replace=False))
    return keys[idx]


def _keep_rows(batch: dict[str, np.ndarray], keys: np.ndarray) -> dict[str, np.ndarray]:
    """map_batches filter: keep the rows whose (user, item) key is in `keys` (sorted, unique)."""
    mask = np.isin(row_keys(batch["user_id"], batch["item_id"]), keys, assume_unique=False)
    return {k: v[mask] for k, v in batch.items()}


PREFIX_GROUP_COLUMN = "prefix_group"


def prefix_group_keys(user_id: np.ndarray, history: Any, seed: int) -> np.ndarray:
    """int64 per row: a hash of (user, history) keyed by `seed` — equal for rows that share one prompt prefix,
    unrelated across prefixes, a different order of the groups for another seed."""
    key = int(seed).to_bytes(8, "little", signed=True)
    out = np.empty(len(user_id), dtype=np.int64)
    for i, (user, hist) in enumerate(zip(user_id, history, strict=True)):
        digest = hashlib.blake2b(digest_size=8, key=key)
        digest.update(int(user).to_bytes(8, "little", signed=True))
        digest.update(np.asarray(hist, dtype=np.int64).tobytes())
        out[i] = int.from_bytes(digest.digest(), "little", signed=True)
    return out


def _add_prefix_group(batch: dict[str, np.ndarray], seed: int) -> dict[str, np.ndarray]:
    """map_batches: the rows with their `PREFIX_GROUP_COLUMN` (see `prefix_group_keys`)."""
    return {**batch, PREFIX_GROUP_COLUMN: prefix_group_keys(batch["user_id"], batch["history"], seed)}


@contextmanager
def footer_readers(count: int = FOOTER_READERS) -> Iterator[None]:
    """Within the block, a `ray.data.read_parquet` call lists its files with `count` footer-reading actors
    instead of Ray Data's 32. A value the user set in the environment wins; the variable is restored after."""
    if FOOTER_READERS_ENV in os.environ:
        yield
        return
    os.environ[FOOTER_READERS_ENV] = str(count)
    try:
        yield
    finally:
        del os.environ[FOOTER_READERS_ENV]


class EncodePrompts:
    """map_batches UDF (an actor: the tokenizer is built once): numpy rows → unpadded token rows (Arrow).

    `encoder_factory()` returns the project's PromptEncoder (or anything with the same call: a dict of numpy
    columns user_id, item_id, label, history → `batching.encode_rows`' columns: input_ids one token array per
    row, user_id, item_id, label, history, [user_pos, item_pos])."""

    def __init__(self, encoder_factory: Any) -> None:
        self.encoder = encoder_factory()

    def __call__(self, batch: dict[str, np.ndarray]) -> Any:
        out = self.encoder(batch)
        missing = [c for c in ("input_ids", "user_id", "item_id", "label") if c not in out]
        if missing:
            raise DataError(f"prompt encoder output lacks column(s) {missing}; got {sorted(out)}")
        return to_arrow(out)


def split_dataset(
    data_uri: str,
    split: str,
    encoder_factory: Any,
    *,
    endpoint: str | None = None,
    keep_keys: np.ndarray | None = None,
    shuffle_seed: int | None = None,
    global_shuffle: bool = False,
    group_prefixes: bool = False,
    map_batch_size: int = 256,
    encoder_actors: int = 1,
    encoder_cpus: float = 0.5,
):
    """A lazy Ray Dataset of encoded rows of one protocol split.

    `keep_keys` restricts it to those (user, item) rows (validation sample); `global_shuffle` adds a Ray
    Data `random_shuffle` of the raw id rows (ints only, before prompts are built) — the protocol's splits
    are stored in time order, so without it a short run would only see the split's first weeks;
    `group_prefixes` instead keeps the rows of one (user, history) together, the groups in a random order
    seeded by `shuffle_seed` (module docstring)."""
    if global_shuffle and group_prefixes:
        raise ValueError("split_dataset: global_shuffle and group_prefixes are two row orders; ask for one")
    import ray.data

    fs, path = storage.filesystem(protocol.split_dir(data_uri, split), endpoint)
    with footer_readers():
        ds = ray.data.read_parquet(path, filesystem=fs).select_columns(READ_COLUMNS)
    if keep_keys is not None:
        ds = ds.map_batches(_keep_rows, fn_args=(np.unique(keep_keys),), batch_format="numpy", num_cpus=0.25)
    if group_prefixes:
        seed = 0 if shuffle_seed is None else shuffle_seed
        ds = ds.map_batches(_add_prefix_group, fn_args=(seed,), batch_format="numpy", num_cpus=0.25)
        ds = ds.sort(PREFIX_GROUP_COLUMN).select_columns(READ_COLUMNS)
    elif global_shuffle:
        ds = ds.random_shuffle(seed=shuffle_seed)
    elif shuffle_seed is not None:
        ds = ds.randomize_block_order(seed=shuffle_seed)
    return ds.map_batches(
        EncodePrompts,
        # keep it small: Ray Data stores the UDF with its arguments once per dataset and every actor fetches it
        # (the trainer's factory holds the config; each actor loads the tokenizer and titles itself)
        fn_constructor_args=(encoder_factory,),
        batch_size=map_batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=encoder_actors),
        num_cpus=encoder_cpus,
    )


# ---------------------------------------------------------------------------------------------------------
# worker side: batches of tensors
# ---------------------------------------------------------------------------------------------------------


def collate_left_padded(batch: dict[str, Any], pad_id: int) -> dict[str, Any]:
    """A numpy batch of token rows → dict of torch tensors left-padded to this batch's longest row
    (`cora_ray.data.batching.collate`; kept under this name for the worker, tests and benches)."""
    return collate(batch, pad_id)


def _collate_fn(pad_id: int):
    from ray.data.collate_fn import NumpyBatchCollateFn

    class LeftPadCollate(NumpyBatchCollateFn):
        def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
            return collate_left_padded(batch, pad_id)

    return LeftPadCollate()


def iter_model_batches(
    shard: Any,
    *,
    batch_size: int,
    pad_id: int,
    device: Any = None,
    drop_last: bool = False,
    shuffle_buffer: int | None = None,
    shuffle_seed: int | None = None,
    prefetch_batches: int = 2,
) -> Iterator[dict[str, Any]]:
    """One pass over a worker's shard (`ray.train.get_dataset_shard(name)`) as batches of tensors on `device`."""
    kwargs: dict[str, Any] = {}
    if shuffle_buffer:
        kwargs.update(
            local_shuffle_buffer_size=max(shuffle_buffer, batch_size), local_shuffle_seed=shuffle_seed
        )
    it = shard.iter_torch_batches(
        batch_size=batch_size,
        collate_fn=_collate_fn(pad_id),
        drop_last=drop_last,
        prefetch_batches=prefetch_batches,
        device="cpu",
        **kwargs,
    )
    for batch in it:
        yield batch if device is None else {k: v.to(device, non_blocking=True) for k, v in batch.items()}


class ReplayedShard:
    """A worker's validation shard: streamed through Ray Data on the first pass, replayed from memory after.

    The "valid" dataset is not materialised by the driver (on a cluster whose head advertises CPU: 0, that
    would start a CPU node just to encode it before the training node exists): it is encoded on the first
    validation, by Ray Data tasks that run beside the training workers, on their node's CPUs. The first pass
    keeps its collated CPU batches (ML-1M valid_small: ~20 MB of token ids over all ranks); every later
    validation replays them without running Ray Data again. A pass that did not finish is not kept."""

    def __init__(self, shard: Any, *, batch_size: int, pad_id: int, device: Any = None) -> None:
        self.shard, self.batch_size, self.pad_id, self.device = shard, batch_size, pad_id, device
        self.cached: list[dict[str, Any]] | None = None

    def __iter__(self) -> Iterator[dict[str, Any]]:
        if self.cached is not None:
            for batch in self.cached:
                yield self._on_device(batch)
            return
        kept = []
        for batch in iter_model_batches(self.shard, batch_size=self.batch_size, pad_id=self.pad_id):
            kept.append(batch)
            yield self._on_device(batch)
        self.cached = kept

    def _on_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        if self.device is None:
            return batch
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}


def train_data_config():
    """Ray Train DataConfig: "train" in equal shards, "valid" in unequal ones (no row dropped).

    "train" runs with Ray Data's `preserve_order`: its blocks leave each operator in order and the equal
    split over workers ignores locality, so a seed gives every worker the same rows in the same order on
    every run (without it, block order follows task completion and a run's losses are not reproducible:
    tests/train/test_reproducible_order.py)."""
    from ray.train import DataConfig

    class TrainDataConfig(DataConfig):
        def configure(self, datasets, world_size, worker_handles, worker_node_ids, **kwargs):  # noqa: D102
            output = [{} for _ in range(world_size)]
            for name, ds in datasets.items():
                if ds.name is None:
                    ds.set_name(name)
                ds = ds.copy(ds)
                options = self._resolve_execution_options(name)
                options.preserve_order = options.preserve_order or name == "train"
                ds.context.execution_options = options
                splits = ds.streaming_split(
                    world_size, equal=(name == "train"), locality_hints=worker_node_ids
                )
                for i, split in enumerate(splits):
                    output[i][name] = split
            return output

    return TrainDataConfig()
