"""Logic shared by every dataset reader: id re-mapping, history, warm flags, valid_small, publishing.

A reader (ml1m, amazon_book, synthetic) decides which raw rows are kept and which split each one belongs
to; `build_tables` turns those rows into the protocol tables of `cora_ray.data.protocol`:

- ids: users and items occurring in the kept rows are numbered 1..n (0 = padding) in natural order of
  their raw ids ("u2" < "u10"), so the mapping depends only on the data, not on the file's row order;
- history: for every row, the last ≤ `protocol.HISTORY_LEN` positive items of that user whose timestamp
  is strictly earlier than the row's (rows with the same timestamp are excluded), computed over all kept
  rows so that earlier splits count, oldest first (ties in time ordered by item id);
- warm: the row's user and item both occur in the train split;
- valid_small: a fixed seeded sample (seed 42) of valid, in valid's order;
- rows of each split are ordered by (timestamp, user id, item id).

`publish` writes the tables with `protocol.write_dataset` (atomic, manifest last) after checking the
destination, and `open_source` / `read_source_bytes` read local or s3:// inputs while hashing them.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pyarrow as pa

from cora_ray import storage
from cora_ray.data import protocol
from cora_ray.errors import DataError, StorageError

TRAIN, VALID, TEST = 0, 1, 2
SPLIT_CODES = {"train": TRAIN, "valid": VALID, "test": TEST}
VALID_SMALL_SEED = 42
# Top-level names a protocol dataset directory may hold; anything else at --out is not ours to replace.
DATASET_ENTRIES = frozenset({"interactions", "items.parquet", "users.parquet", storage.MANIFEST})

Progress = Callable[[str], None]


def no_progress(_: str) -> None:
    """A progress callback that prints nothing."""


@dataclass
class ProtocolTables:
    """A protocol dataset in memory, ready for `protocol.write_dataset`."""

    dataset: str
    splits: dict[str, pa.Table]
    items: pa.Table
    users: pa.Table
    sources: dict[str, str] = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        """Rows per split, including the derived test_warm / test_cold."""
        out = {name: t.num_rows for name, t in self.splits.items()}
        warm = int(pa.compute.sum(self.splits["test"]["warm"]).as_py() or 0)
        out["test_warm"] = warm
        out["test_cold"] = self.splits["test"].num_rows - warm
        return out


# ---------------------------------------------------------------------------------------------------------
# ids
# ---------------------------------------------------------------------------------------------------------

_CHUNKS = re.compile(r"(\d+)")


def natural_key(text: str) -> tuple:
    """Sort key that orders digit runs numerically: "u2" < "u10", "1m_9" < "1m_10"."""
    parts = _CHUNKS.split(text)
    return tuple((1, int(p), "") if i % 2 else (0, 0, p) for i, p in enumerate(parts))


def remap_ids(codes: np.ndarray, vocab: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Number the codes that occur 1..n in natural order of their raw ids.

    `codes` index `vocab` (raw ids). Returns (new id per row as int32, old code of each new id - 1)."""
    used = np.unique(codes)
    order = sorted(range(len(used)), key=lambda k: natural_key(str(vocab[used[k]])))
    old_by_new = used[np.asarray(order, dtype=np.int64)] if len(used) else used
    lookup = np.zeros(int(codes.max()) + 1 if len(codes) else 1, dtype=np.int32)
    lookup[old_by_new] = np.arange(1, len(old_by_new) + 1, dtype=np.int32)
    return lookup[codes], old_by_new


# ---------------------------------------------------------------------------------------------------------
# history
# ---------------------------------------------------------------------------------------------------------


def compute_history(
    user: np.ndarray,
    item: np.ndarray,
    label: np.ndarray,
    ts: np.ndarray,
    history_len: int = protocol.HISTORY_LEN,
) -> pa.ListArray:
    """Per row, the last ≤ history_len positive items of its user strictly before its timestamp.

    Oldest first; positives with equal timestamps are ordered by item id; rows with the row's own
    timestamp are not history. Vectorised: O(n log n) for the sort plus O(total history length)."""
    n = len(user)
    if n == 0:
        return pa.array([], type=pa.list_(pa.int32()))
    order = np.lexsort((item, ts, user))  # by user, then time, then item
    u, t, it = user[order], ts[order], item[order]
    pos = label[order] > 0
    idx = np.arange(n)
    new_user = np.ones(n, dtype=bool)
    new_user[1:] = u[1:] != u[:-1]
    new_group = new_user.copy()
    new_group[1:] |= t[1:] != t[:-1]
    before = np.cumsum(pos) - pos  # positives strictly before each sorted row (all users)
    end = before[np.maximum.accumulate(np.where(new_group, idx, 0))]  # exclusive: before the tie group
    user_first = before[np.maximum.accumulate(np.where(new_user, idx, 0))]
    start = np.maximum(user_first, end - history_len)
    lengths = (end - start).astype(np.int64)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    positives = it[pos].astype(np.int32)
    gather = np.repeat(start - offsets[:-1], lengths) + np.arange(offsets[-1])
    values = positives[gather]
    # back to the caller's row order
    inverse = np.empty(n, dtype=np.int64)
    inverse[order] = idx
    sorted_lists = pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(values, pa.int32()))
    return sorted_lists.take(pa.array(inverse))


# ---------------------------------------------------------------------------------------------------------
# tables
# ---------------------------------------------------------------------------------------------------------


def sample_valid_small(n: int, fraction: float, seed: int = VALID_SMALL_SEED) -> np.ndarray:
    """Sorted indices of a fixed seeded sample of round(n·fraction) rows (at least 1 when n > 0)."""
    if not 0 < fraction <= 1:
        raise DataError(f"valid_small fraction must be in (0, 1], got {fraction}")
    size = min(n, max(1, round(n * fraction))) if n else 0
    return np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))


def build_tables(
    *,
    dataset: str,
    user_code: np.ndarray,
    item_code: np.ndarray,
    label: np.ndarray,
    ts: np.ndarray,
    split: np.ndarray,
    user_vocab: Sequence[str],
    item_vocab: Sequence[str],
    item_titles: Sequence[str],
    valid_small_fraction: float,
    seed: int = VALID_SMALL_SEED,
    sources: dict[str, str] | None = None,
    extra: dict | None = None,
    what: str = "",
) -> ProtocolTables:
    """Protocol tables from the kept rows.

    `user_code` / `item_code` index `user_vocab` / `item_vocab` (raw ids; `item_titles` is aligned with
    `item_vocab`); `split` holds TRAIN / VALID / TEST per row; `label` is 0/1. `what` names the input
    in error messages. Raises DataError when a split ends up empty."""
    what = what or dataset
    n = len(user_code)
    arrays = (item_code, label, ts, split)
    if any(len(a) != n for a in arrays):
        raise DataError(f"{what}: column lengths differ ({[n] + [len(a) for a in arrays]})")
    for name, code in SPLIT_CODES.items():
        if not np.any(split == code):
            raise DataError(
                f"{what}: the {name} split is empty after filtering ({n} rows kept in all); "
                "the input does not cover the protocol's time windows"
            )
    user_code = np.asarray(user_code, dtype=np.int64)
    item_code = np.asarray(item_code, dtype=np.int64)
    label = np.asarray(label, dtype=np.int8)
    ts = np.asarray(ts, dtype=np.int64)
    split = np.asarray(split, dtype=np.int8)

    uid, user_old = remap_ids(user_code, user_vocab)
    iid, item_old = remap_ids(item_code, item_vocab)
    history = compute_history(uid, iid, label, ts)

    train = split == TRAIN
    warm_user = np.zeros(len(user_old) + 1, dtype=bool)
    warm_user[uid[train]] = True
    warm_item = np.zeros(len(item_old) + 1, dtype=bool)
    warm_item[iid[train]] = True
    warm = warm_user[uid] & warm_item[iid]

    full = pa.table(
        {
            "user_id": pa.array(uid, pa.int32()),
            "item_id": pa.array(iid, pa.int32()),
            "label": pa.array(label, pa.int8()),
            "ts": pa.array(ts, pa.int64()),
            "history": history,
            "warm": pa.array(warm, pa.bool_()),
        },
        schema=protocol.INTERACTION_SCHEMA,
    )
    splits: dict[str, pa.Table] = {}
    for name, code in SPLIT_CODES.items():
        rows = np.flatnonzero(split == code)
        rows = rows[np.lexsort((iid[rows], uid[rows], ts[rows]))]
        splits[name] = full.take(pa.array(rows))
    splits["valid_small"] = splits["valid"].take(
        pa.array(sample_valid_small(splits["valid"].num_rows, valid_small_fraction, seed))
    )
    splits = {name: splits[name] for name in protocol.SPLITS}

    items = pa.table(
        {
            "item_id": pa.array(np.arange(1, len(item_old) + 1), pa.int32()),
            "raw_id": pa.array([str(item_vocab[c]) for c in item_old], pa.string()),
            "title": pa.array([str(item_titles[c]) for c in item_old], pa.string()),
        },
        schema=protocol.ITEM_SCHEMA,
    )
    users = pa.table(
        {
            "user_id": pa.array(np.arange(1, len(user_old) + 1), pa.int32()),
            "raw_id": pa.array([str(user_vocab[c]) for c in user_old], pa.string()),
        },
        schema=protocol.USER_SCHEMA,
    )
    ext = {"valid_small_fraction": valid_small_fraction, "valid_small_seed": seed, **(extra or {})}
    tables = ProtocolTables(dataset, splits, items, users, dict(sources or {}), ext)
    counts = tables.counts()
    tables.extra["derived_counts"] = {"test_warm": counts["test_warm"], "test_cold": counts["test_cold"]}
    return tables


# ---------------------------------------------------------------------------------------------------------
# publishing
# ---------------------------------------------------------------------------------------------------------


def _top_entries(out_uri: str, endpoint: str | None) -> set[str]:
    """Names directly under a local directory or an s3:// prefix (empty when it does not exist)."""
    if storage.is_s3(out_uri):
        prefix = out_uri.rstrip("/") + "/"
        return {f[len(prefix) :].split("/", 1)[0] for f in storage.list_files(out_uri, endpoint)}
    path = Path(out_uri)
    return {child.name for child in path.iterdir()} if path.is_dir() else set()


def check_destination(out_uri: str, endpoint: str | None = None, overwrite: bool = False) -> bool:
    """Refuse a destination we must not replace; returns True when stale files must be cleared first.

    - a complete dataset (manifest.json) is replaced only with `overwrite`;
    - leftovers of an interrupted write (protocol files, no manifest) are replaced only with `overwrite`;
    - a directory / prefix holding anything else is never replaced (it is not a dataset)."""
    if (
        not storage.is_s3(out_uri)
        and storage.exists(out_uri, endpoint)
        and not storage.is_dir(out_uri, endpoint)
    ):
        raise StorageError(f"--out {out_uri} is an existing file, not a dataset directory")
    if storage.is_s3(out_uri):
        bucket = out_uri[len("s3://") :].split("/", 1)[0]
        if not bucket or not storage.exists(f"s3://{bucket}", endpoint):
            raise StorageError(
                f"--out {out_uri}: bucket {bucket!r} does not exist (or is not visible to you)"
            )
    entries = _top_entries(out_uri, endpoint)
    if not entries:
        return False
    foreign = sorted(e for e in entries if e not in DATASET_ENTRIES and not e.startswith("."))
    if foreign:
        raise StorageError(
            f"--out {out_uri} already holds files that are not part of a dataset ({', '.join(foreign[:5])}); "
            "refusing to replace it; choose an empty or new location"
        )
    complete = storage.MANIFEST in entries
    if not overwrite:
        state = "a complete dataset" if complete else "an incomplete dataset (no manifest.json)"
        raise StorageError(f"--out {out_uri} already holds {state}; pass --overwrite to replace it")
    return storage.is_s3(out_uri)


def publish(
    tables: ProtocolTables, out_uri: str, endpoint: str | None = None, overwrite: bool = False
) -> dict:
    """Write the tables at `out_uri` atomically (manifest last) and return the manifest.

    On S3 a replaced dataset's objects are deleted first so that no stale part file survives (the old
    manifest would be retracted by the write anyway)."""
    if check_destination(out_uri, endpoint, overwrite):
        storage.remove(storage.join(out_uri, storage.MANIFEST), endpoint)
        for f in storage.list_files(out_uri, endpoint):
            storage.remove(f, endpoint)
    return protocol.write_dataset(
        out_uri,
        tables.splits,
        tables.items,
        tables.users,
        tables.dataset,
        sources=tables.sources,
        extra=tables.extra,
        endpoint=endpoint,
        overwrite=overwrite,
    )


# ---------------------------------------------------------------------------------------------------------
# reading sources
# ---------------------------------------------------------------------------------------------------------


class _HashingReader(io.RawIOBase):
    """A raw binary stream that hashes every byte read from the wrapped stream."""

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self.sha = hashlib.sha256()
        self.nbytes = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[override]
        data = self._raw.read(len(buffer))
        n = len(data)
        buffer[:n] = data
        self.sha.update(data)
        self.nbytes += n
        return n


@dataclass
class SourceFile:
    """An opened input: `stream` yields decompressed bytes; `sha256()` covers the bytes read so far."""

    uri: str
    stream: BinaryIO
    _hasher: _HashingReader
    compressed: bool

    def sha256(self) -> str:
        """'sha256:<hex>' of the stored bytes read so far (the whole file once it was read to the end)."""
        return "sha256:" + self._hasher.sha.hexdigest()

    @property
    def bytes_read(self) -> int:
        """Stored (possibly compressed) bytes read so far."""
        return self._hasher.nbytes


@contextlib.contextmanager
def open_source(uri: str, endpoint: str | None = None) -> Iterator[SourceFile]:
    """Open a local or s3:// file for streaming; gzip is detected by its magic bytes and decompressed.

    The hash is over the bytes as stored (compressed), so it identifies the file itself."""
    import gzip

    fs, path = storage.filesystem(uri, endpoint)
    try:
        raw = fs.open_input_stream(path, compression=None)  # no extension-based decompression
    except FileNotFoundError:
        raise DataError(f"{uri}: file not found") from None
    except OSError as exc:
        raise DataError(f"{uri}: cannot open ({exc})") from exc
    hasher = _HashingReader(raw)  # type: ignore[arg-type]
    buffered = io.BufferedReader(hasher, buffer_size=1 << 20)
    try:
        compressed = buffered.peek(2)[:2] == b"\x1f\x8b"
        stream: BinaryIO = gzip.GzipFile(fileobj=buffered, mode="rb") if compressed else buffered  # type: ignore[assignment]
        yield SourceFile(uri, stream, hasher, compressed)
    finally:
        buffered.close()
        raw.close()


def read_source_bytes(uri: str, endpoint: str | None = None) -> tuple[bytes, str]:
    """The whole (decompressed) content of a small input file and the sha256 of the stored bytes."""
    import gzip
    import zlib

    with open_source(uri, endpoint) as src:
        try:
            data = src.stream.read()
        except (OSError, EOFError, zlib.error) as exc:
            if isinstance(exc, gzip.BadGzipFile) or src.compressed:
                raise DataError(f"{uri}: corrupt or truncated gzip data ({exc})") from None
            raise DataError(f"{uri}: cannot read ({exc})") from exc
        return data, src.sha256()


def find_source(source: str, names: Sequence[str], endpoint: str | None = None) -> str | None:
    """The first of `names` that exists under the directory `source` (local or s3://), else None."""
    for name in names:
        uri = storage.join(source, name)
        if storage.exists(uri, endpoint) and not storage.is_dir(uri, endpoint):
            return uri
    return None


# ---------------------------------------------------------------------------------------------------------
# progress and summary
# ---------------------------------------------------------------------------------------------------------


class Ticker:
    """Calls `progress` with a 'rows read' line at most every `every_s` seconds."""

    def __init__(self, progress: Progress, what: str, every_s: float = 5.0) -> None:
        self.progress, self.what, self.every_s = progress, what, every_s
        self._last = time.monotonic()

    def tick(self, rows: int, kept: int | None = None) -> None:
        """Report `rows` read (and `kept`) if the last report is at least `every_s` seconds old."""
        now = time.monotonic()
        if now - self._last >= self.every_s:
            self._last = now
            extra = f", {kept:,} kept" if kept is not None else ""
            self.progress(f"  {self.what}: {rows:,} rows read{extra}")


def summary_lines(manifest: dict, seconds: float | None = None) -> list[str]:
    """Human-readable summary of a dataset manifest (counts, users, items, positive rates, time)."""
    counts = manifest["counts"]
    rates = manifest["positive_rates"]
    derived = manifest.get("derived_counts", {})
    lines = [f"dataset {manifest['dataset']}: {manifest['users']:,} users, {manifest['items']:,} items"]
    for name in protocol.SPLITS:
        lines.append(f"  {name:<12} {counts[name]:>10,} rows   positive rate {rates[name]:.3f}")
    if derived:
        lines.append(f"  {'test_warm':<12} {derived['test_warm']:>10,} rows")
        lines.append(f"  {'test_cold':<12} {derived['test_cold']:>10,} rows")
    for key in ("rows_read", "rows_dropped", "untitled_items_dropped", "untitled_rows_dropped"):
        if key in manifest:
            lines.append(f"  {key.replace('_', ' ')}: {manifest[key]:,}")
    if seconds is not None:
        lines.append(f"  time: {seconds:.1f} s")
    return lines
