"""The protocol dataset on disk (docs/architecture.md §3.1): the one contract between data preparation and everything else.

    <uri>/interactions/<split>/part-00000.parquet   split ∈ train, valid, valid_small, test
        user_id int32, item_id int32, label int8, ts int64, history list<int32>, warm bool
    <uri>/items.parquet    item_id int32, raw_id string, title string
    <uri>/users.parquet    user_id int32, raw_id string
    <uri>/manifest.json    protocol, version, dataset, counts, positive rates, source hashes, hash

Ids are 1..n (0 = padding). `history` holds the user's last ≤ `history_len` positive items strictly before
the row's time (earlier splits count), oldest first. `warm` is true when both the user and the item occur
in the train split. The manifest is written last; `hash` is the sha256 of its canonical content and is what
CF artifacts and checkpoints record to refuse being used with other data. Reading, the protocol / version
check, the hash and the atomic write are cora_ray/manifest.py's (`DATASET`).
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from cora_ray import manifest as manifests
from cora_ray import storage
from cora_ray.errors import DataError, StorageError

PROTOCOL = manifests.DATASET.kind
PROTOCOL_VERSION = manifests.DATASET.version
SPLITS = ("train", "valid", "valid_small", "test")
DERIVED_SPLITS = ("test_warm", "test_cold")  # filters of test on the `warm` column
HISTORY_LEN = 25  # stored history length (prompts use the last 10, SASRec up to 25)
ROWS_PER_PART = 200_000

INTERACTION_SCHEMA = pa.schema(
    [
        ("user_id", pa.int32()),
        ("item_id", pa.int32()),
        ("label", pa.int8()),
        ("ts", pa.int64()),
        ("history", pa.list_(pa.int32())),
        ("warm", pa.bool_()),
    ]
)
ITEM_SCHEMA = pa.schema([("item_id", pa.int32()), ("raw_id", pa.string()), ("title", pa.string())])
USER_SCHEMA = pa.schema([("user_id", pa.int32()), ("raw_id", pa.string())])


def manifest_hash(manifest: dict) -> str:
    """sha256 over the manifest's canonical JSON, without its own `hash` field (cora_ray/manifest.py)."""
    return manifests.content_hash(manifests.DATASET, manifest)


def split_dir(uri: str, split: str) -> str:
    return storage.join(uri, "interactions", split)


def _check_schema(table: pa.Table, schema: pa.Schema, what: str) -> pa.Table:
    missing = [f.name for f in schema if f.name not in table.column_names]
    if missing:
        raise DataError(f"{what}: missing column(s) {missing}; expected {schema.names}")
    try:
        return table.select(schema.names).cast(schema)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise DataError(f"{what}: columns do not cast to {schema}: {exc}") from None


def write_split_parts(table: pa.Table, directory: Path, rows_per_part: int = ROWS_PER_PART) -> int:
    """Write one split as parquet parts under a local staging directory. Returns the number of parts."""
    directory.mkdir(parents=True, exist_ok=True)
    n = max(1, -(-table.num_rows // rows_per_part))
    for i in range(n):
        pq.write_table(table.slice(i * rows_per_part, rows_per_part), directory / f"part-{i:05d}.parquet")
    return n


def positive_rate(table: pa.Table) -> float:
    if table.num_rows == 0:
        return float("nan")
    return round(float(pa.compute.mean(table["label"].cast(pa.float64())).as_py()), 6)


def write_dataset(
    out_uri: str,
    splits: dict[str, pa.Table],
    items: pa.Table,
    users: pa.Table,
    dataset: str,
    sources: dict[str, str] | None = None,
    extra: dict | None = None,
    endpoint: str | None = None,
    overwrite: bool = True,
) -> dict:
    """Validate and publish a protocol dataset atomically (manifest last). Returns the manifest."""
    for name in SPLITS:
        if name not in splits:
            raise DataError(f"dataset '{dataset}': split '{name}' is missing")
        if splits[name].num_rows == 0:
            raise DataError(f"dataset '{dataset}': split '{name}' is empty after filtering")
    tables = {name: _check_schema(splits[name], INTERACTION_SCHEMA, f"split '{name}'") for name in SPLITS}
    items = _check_schema(items, ITEM_SCHEMA, "items")
    users = _check_schema(users, USER_SCHEMA, "users")
    manifest = manifests.stamp(
        manifests.DATASET,
        {
            "dataset": dataset,
            "history_len": HISTORY_LEN,
            "counts": {name: tables[name].num_rows for name in SPLITS},
            "positive_rates": {name: positive_rate(tables[name]) for name in SPLITS},
            "users": users.num_rows,
            "items": items.num_rows,
            "sources": dict(sources or {}),
            **(extra or {}),
        },
    )
    with storage.atomic_dir(out_uri, endpoint=endpoint, overwrite=overwrite) as tmp:
        for name in SPLITS:
            write_split_parts(tables[name], tmp / "interactions" / name)
        pq.write_table(items, tmp / "items.parquet")
        pq.write_table(users, tmp / "users.parquet")
        manifests.write(manifests.DATASET, tmp, manifest)
    return manifest


def read_manifest(uri: str, endpoint: str | None = None) -> dict:
    """The dataset manifest; refuses incomplete directories, other protocols and edited manifests."""
    return manifests.read(manifests.DATASET, uri, endpoint)


def _read_parquet(uri: str, endpoint: str | None, columns: list[str] | None = None) -> pa.Table:
    fs, path = storage.filesystem(uri, endpoint)
    try:
        return pq.read_table(path, filesystem=fs, columns=columns)
    except (OSError, pa.ArrowInvalid) as exc:
        raise StorageError(f"cannot read parquet at {uri}: {exc}") from exc


def read_split(
    uri: str, split: str, endpoint: str | None = None, columns: list[str] | None = None
) -> pa.Table:
    """A whole split as one table (for CF training and evaluation; training streams with Ray Data instead)."""
    read_manifest(uri, endpoint)
    base = "test" if split in DERIVED_SPLITS else split
    if base not in SPLITS:
        raise DataError(f"unknown split '{split}'; expected one of {SPLITS + DERIVED_SPLITS}")
    cols = None if columns is None else list(dict.fromkeys(columns + (["warm"] if base != split else [])))
    table = _read_parquet(split_dir(uri, base), endpoint, cols)
    if split == "test_warm":
        table = table.filter(table["warm"])
    elif split == "test_cold":
        table = table.filter(pa.compute.invert(table["warm"]))
    if columns is not None:
        table = table.select(columns)
    return table


def read_items(uri: str, endpoint: str | None = None) -> pa.Table:
    read_manifest(uri, endpoint)
    return _read_parquet(storage.join(uri, "items.parquet"), endpoint)


def read_users(uri: str, endpoint: str | None = None) -> pa.Table:
    read_manifest(uri, endpoint)
    return _read_parquet(storage.join(uri, "users.parquet"), endpoint)


def titles_by_id(items: pa.Table) -> list[str]:
    """Titles indexed by item id (index 0 = padding, empty)."""
    ids = items["item_id"].to_pylist()
    titles = items["title"].to_pylist()
    out = [""] * (max(ids) + 1 if ids else 1)
    for i, t in zip(ids, titles, strict=True):
        out[i] = t
    return out
