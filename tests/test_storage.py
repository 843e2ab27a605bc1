"""Local and S3 storage: atomic writes, the manifest as commit marker, datasets written to and read from S3."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cora_ray import storage
from cora_ray.data import protocol
from cora_ray.data.prepare import prepare
from cora_ray.errors import StorageError


def quiet(_: str) -> None:
    pass


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


# ---------------------------------------------------------------------------------------------------------
# local
# ---------------------------------------------------------------------------------------------------------


def test_local_write_is_atomic_and_leaves_no_temp_files(tmp_path):
    target = tmp_path / "a" / "b.json"
    storage.write_json(str(target), {"x": 1})
    storage.write_json(str(target), {"x": 2})
    assert storage.read_json(str(target)) == {"x": 2}
    assert leftovers(target.parent) == []
    with pytest.raises(StorageError, match="file not found"):
        storage.read_bytes(str(tmp_path / "missing"))


def test_atomic_dir_publishes_only_complete_directories(tmp_path):
    dest = tmp_path / "art"
    with pytest.raises(RuntimeError):
        with storage.atomic_dir(str(dest)) as tmp:
            (tmp / "weights.bin").write_bytes(b"x")
            raise RuntimeError("crash mid-write")
    assert not dest.exists() and leftovers(tmp_path) == []
    with pytest.raises(StorageError, match="has no manifest.json"):
        with storage.atomic_dir(str(dest)) as tmp:
            (tmp / "weights.bin").write_bytes(b"x")
    assert not dest.exists()
    with storage.atomic_dir(str(dest)) as tmp:
        (tmp / "manifest.json").write_text('{"v": 1}')
    assert storage.read_manifest(str(dest)) == {"v": 1}
    with pytest.raises(StorageError, match="already holds a complete artifact"):
        with storage.atomic_dir(str(dest)) as tmp:
            (tmp / "manifest.json").write_text('{"v": 2}')
    with storage.atomic_dir(str(dest), overwrite=True) as tmp:
        (tmp / "manifest.json").write_text('{"v": 2}')
    assert storage.read_manifest(str(dest)) == {"v": 2} and leftovers(tmp_path) == []


def test_display_uri_names_no_machine_paths_under_the_root(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ckpt = tmp_path / "runs" / "r" / "checkpoint_1"
    assert storage.display_uri(str(ckpt)) == "runs/r/checkpoint_1"
    assert storage.display_uri("runs/r") == "runs/r"
    assert storage.display_uri(str(ckpt), root=tmp_path / "runs") == "r/checkpoint_1"
    # outside the root, S3 and None stay as they are
    assert storage.display_uri("/elsewhere/ckpt") == "/elsewhere/ckpt"
    assert storage.display_uri("s3://bucket/runs/r") == "s3://bucket/runs/r"
    assert storage.display_uri(None) is None


def test_directory_without_manifest_is_refused(tmp_path):
    out = tmp_path / "ds"
    prepare("synthetic", str(out), progress=quiet)
    assert protocol.read_split(str(out), "train").num_rows > 0
    (out / "manifest.json").unlink()
    with pytest.raises(StorageError, match="incomplete dataset: it has no manifest.json"):
        protocol.read_split(str(out), "train")
    with pytest.raises(StorageError, match="dataset not found"):
        protocol.read_manifest(str(tmp_path / "nothing"))


def test_edited_manifest_is_refused(tmp_path):
    out = tmp_path / "ds"
    prepare("synthetic", str(out), progress=quiet)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["counts"]["train"] += 1
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(StorageError, match="hash does not match"):
        protocol.read_manifest(str(out))


def test_local_failure_mid_write_leaves_nothing_and_keeps_the_old_dataset(tmp_path, monkeypatch):
    out = tmp_path / "ds"
    real_write = protocol.pq.write_table
    calls = {"n": 0}

    def failing_write(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("disk full")
        return real_write(*args, **kwargs)

    monkeypatch.setattr(protocol.pq, "write_table", failing_write)
    with pytest.raises(OSError, match="disk full"):
        prepare("synthetic", str(out), progress=quiet)
    assert not out.exists() and leftovers(tmp_path) == []

    monkeypatch.setattr(protocol.pq, "write_table", real_write)
    old = prepare("synthetic", str(out), seed=1, progress=quiet)
    calls["n"] = 0
    monkeypatch.setattr(protocol.pq, "write_table", failing_write)
    with pytest.raises(OSError, match="disk full"):
        prepare("synthetic", str(out), seed=2, overwrite=True, progress=quiet)
    assert protocol.read_manifest(str(out))["hash"] == old["hash"]  # the old dataset is intact
    assert leftovers(tmp_path) == []


# ---------------------------------------------------------------------------------------------------------
# S3 (a real local S3 endpoint)
# ---------------------------------------------------------------------------------------------------------


def test_s3_dataset_round_trip(s3_bucket, tmp_path):
    uri = f"{s3_bucket}/datasets/syn"
    manifest = prepare("synthetic", uri, users=40, items=30, seed=3, progress=quiet)
    local = tmp_path / "syn"
    prepare("synthetic", str(local), users=40, items=30, seed=3, progress=quiet)
    assert protocol.read_manifest(uri) == manifest == protocol.read_manifest(str(local))
    for split in protocol.SPLITS + protocol.DERIVED_SPLITS:
        assert protocol.read_split(uri, split).equals(protocol.read_split(str(local), split))
    assert protocol.read_items(uri).equals(protocol.read_items(str(local)))
    files = storage.list_files(uri)
    assert f"{uri}/manifest.json" in files and f"{uri}/interactions/train/part-00000.parquet" in files


def test_s3_prefix_without_manifest_is_refused(s3_bucket):
    uri = f"{s3_bucket}/partial"
    storage.write_bytes(f"{uri}/interactions/train/part-00000.parquet", b"not yet complete")
    with pytest.raises(StorageError, match="incomplete dataset"):
        protocol.read_split(uri, "train")
    with pytest.raises(StorageError, match="incomplete dataset .*--overwrite"):
        prepare("synthetic", uri, progress=quiet)


def test_s3_failure_mid_upload_leaves_nothing_accepted(s3_bucket, monkeypatch):
    uri = f"{s3_bucket}/crash"
    real_write = storage.write_bytes
    calls = {"n": 0}

    def flaky_write(target, data, endpoint=None):
        calls["n"] += 1
        if calls["n"] == 3:
            raise StorageError(f"cannot write {target}: connection reset")
        return real_write(target, data, endpoint)

    monkeypatch.setattr(storage, "write_bytes", flaky_write)
    with pytest.raises(StorageError, match="connection reset"):
        prepare("synthetic", uri, progress=quiet)
    monkeypatch.setattr(storage, "write_bytes", real_write)
    assert storage.list_files(uri)  # some parts were uploaded ...
    assert not storage.exists(f"{uri}/manifest.json")  # ... but no commit marker
    with pytest.raises(StorageError, match="incomplete"):
        protocol.read_manifest(uri)
    manifest = prepare("synthetic", uri, overwrite=True, progress=quiet)
    assert protocol.read_manifest(uri) == manifest


def test_s3_overwrite_leaves_no_stale_parts(s3_bucket):
    uri = f"{s3_bucket}/replace"
    prepare("synthetic", uri, users=50, items=40, seed=1, progress=quiet)
    # a part that only an older, bigger version of the dataset had
    stale = f"{uri}/interactions/train/part-00007.parquet"
    storage.write_bytes(stale, storage.read_bytes(f"{uri}/interactions/train/part-00000.parquet"))
    manifest = prepare("synthetic", uri, users=30, items=20, seed=2, overwrite=True, progress=quiet)
    assert stale not in storage.list_files(uri)
    assert protocol.read_split(uri, "train").num_rows == manifest["counts"]["train"]


def test_s3_refuses_to_replace_foreign_objects(s3_bucket):
    storage.write_bytes(f"{s3_bucket}/mixed/notes.txt", b"someone else's")
    with pytest.raises(StorageError, match="not part of a dataset"):
        prepare("synthetic", f"{s3_bucket}/mixed", overwrite=True, progress=quiet)
    assert storage.read_bytes(f"{s3_bucket}/mixed/notes.txt") == b"someone else's"


@pytest.mark.slow
def test_real_ml1m_to_s3_and_back(s3_bucket):
    uri = f"{s3_bucket}/ml-1m"
    manifest = prepare("ml-1m", uri, progress=quiet)
    assert manifest["counts"] == {"train": 33_891, "valid": 10_401, "valid_small": 5_200, "test": 7_331}
    assert protocol.read_split(uri, "test").num_rows == 7_331
    assert protocol.read_items(uri).num_rows == 3_255 and protocol.read_users(uri).num_rows == 838


def test_sources_can_be_read_from_s3(s3_bucket, tmp_path):
    """ML-1M (GroupLens files) and Amazon-Book (gzip, streamed) inputs under an s3:// prefix."""
    import gzip
    import os

    import boto3

    from cora_ray.data.amazon_book import load_amazon_book
    from cora_ray.data.ml1m import load_ml1m

    day = 86_400
    ratings = "".join(
        f"{u}::{m}::{1 + (u + m) % 5}::{946_684_800 + (k * 37 % 1040) * day}\n"
        for k, (u, m) in enumerate((u, m) for u in range(1, 8) for m in range(1, 6))
    )
    storage.write_bytes(f"{s3_bucket}/ml/ratings.dat", ratings.encode("latin-1"))
    storage.write_bytes(
        f"{s3_bucket}/ml/movies.dat", "".join(f"{m}::Movie {m} (1999)::Drama\n" for m in range(1, 6)).encode()
    )
    local = tmp_path / "ml"
    local.mkdir()
    (local / "ratings.dat").write_text(ratings)
    (local / "movies.dat").write_text("".join(f"{m}::Movie {m} (1999)::Drama\n" for m in range(1, 6)))
    a, b = load_ml1m(f"{s3_bucket}/ml"), load_ml1m(str(local))
    assert a.sources == b.sources
    for split in protocol.SPLITS:
        assert a.splits[split].equals(b.splits[split])

    lines = [
        f'{{"reviewerID": "R{u}", "asin": "B{i}", "overall": 5.0, "unixReviewTime": {1_483_228_800 + (u + i * 16) * day}}}\n'
        for u in range(22)
        for i in range(22)
    ]
    meta = "".join(f'{{"asin": "B{i}", "title": "Book {i}"}}\n' for i in range(22))
    # uploaded as-is with boto3, like `aws s3 cp` would (pyarrow's output streams would gzip a .gz again)
    s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    bucket = s3_bucket[len("s3://") :]
    s3.put_object(Bucket=bucket, Key="amazon/Books_5.json.gz", Body=gzip.compress("".join(lines).encode()))
    s3.put_object(Bucket=bucket, Key="amazon/meta_Books.json.gz", Body=gzip.compress(meta.encode()))
    book = load_amazon_book(f"{s3_bucket}/amazon")
    assert book.users.num_rows == 22 and book.items.num_rows == 22
    assert sum(t.num_rows for k, t in book.splits.items() if k != "valid_small") == 22 * 22


def test_missing_bucket_is_reported_before_any_work(s3_server):
    with pytest.raises(StorageError, match="bucket 'no-such-bucket' does not exist"):
        prepare("synthetic", "s3://no-such-bucket/ds", progress=pytest.fail)


# ---------------------------------------------------------------------------------------------------------
# parallel directory download (model directories on S3)
# ---------------------------------------------------------------------------------------------------------


def _model_like_prefix(local: Path) -> dict[str, bytes]:
    """A directory like a sharded model: small JSON files, empty file, nested file, multi-range 'shards'."""
    import os

    files = {
        "config.json": b'{"model_type": "llama"}',
        "tokenizer.json": b"{}" * 50,
        "empty.txt": b"",
        "sub/dir/nested.bin": os.urandom(777),
        **{f"model-{i:05d}-of-00006.safetensors": os.urandom(5000 + 1234 * i) for i in range(1, 7)},
    }
    for rel, data in files.items():
        (local / rel).parent.mkdir(parents=True, exist_ok=True)
        (local / rel).write_bytes(data)
    return files


def test_a_multi_file_prefix_downloads_completely_in_parallel_ranges(s3_bucket, tmp_path, monkeypatch):
    import threading
    import time

    files = _model_like_prefix(tmp_path / "src")
    uri = f"{s3_bucket}/models/many"
    storage.upload_dir(tmp_path / "src", uri)
    monkeypatch.setattr(storage, "DOWNLOAD_CHUNK_BYTES", 2048)  # every shard is fetched as several ranges
    original = storage._download_range
    lock = threading.Lock()
    active, peak, ranges = [0], [0], []

    def observed(fs, info, dest, offset, length, source):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
            ranges.append((Path(dest).name, offset, length))
        time.sleep(0.05)  # long enough for the pool's other threads to start theirs
        try:
            return original(fs, info, dest, offset, length, source)
        finally:
            with lock:
                active[0] -= 1

    monkeypatch.setattr(storage, "_download_range", observed)
    out = storage.download_dir(uri, tmp_path / "out", threads=8)
    got = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert got == files, "the download differs from the uploaded files"
    assert peak[0] > 1, "ranges were fetched one at a time"
    # every byte of every non-empty file came from exactly one range
    for name, data in files.items():
        spans = sorted((o, n) for f, o, n in ranges if f == Path(name).name)
        assert sum(n for _, n in spans) == len(data)
        assert [o for o, _ in spans] == list(range(0, len(data), 2048))


def test_a_failed_range_leaves_no_complete_cache_and_the_next_call_downloads_again(
    s3_bucket, tmp_path, monkeypatch
):
    files = _model_like_prefix(tmp_path / "src")
    uri = f"{s3_bucket}/models/flaky"
    storage.upload_dir(tmp_path / "src", uri)
    monkeypatch.setattr(storage, "DOWNLOAD_CHUNK_BYTES", 2048)
    original = storage._download_range

    def flaky(fs, info, dest, offset, length, source):
        if info.path.endswith("model-00004-of-00006.safetensors") and offset == 2048:
            raise StorageError("connection reset (simulated)")
        return original(fs, info, dest, offset, length, source)

    monkeypatch.setattr(storage, "_download_range", flaky)
    cache = tmp_path / "cache"
    with pytest.raises(StorageError, match="simulated"):
        storage.localize(uri, cache)
    assert list(cache.iterdir()) == [], "a partial download was left where a reader could take it"
    monkeypatch.setattr(storage, "_download_range", original)
    local = storage.localize(uri, cache)
    assert {
        p.relative_to(local).as_posix(): p.read_bytes()
        for p in local.rglob("*")
        if p.is_file() and p.name != ".complete"
    } == files


def test_a_short_read_is_an_error_not_a_truncated_file(s3_bucket, tmp_path, monkeypatch):
    _model_like_prefix(tmp_path / "src")
    uri = f"{s3_bucket}/models/short"
    storage.upload_dir(tmp_path / "src", uri)
    real_filesystem = storage.filesystem

    class Short:
        """An input file whose object ends one byte before its listed size."""

        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def read_at(self, n, offset):
            return self.f.read_at(n, offset)[: max(0, n - 1)]

    class ShortFS:
        def __init__(self, fs):
            self.fs = fs

        def get_file_info(self, selector):
            return self.fs.get_file_info(selector)

        def open_input_file(self, path):
            return Short(self.fs.open_input_file(path))

    def short_filesystem(u, endpoint=None):
        fs, path = real_filesystem(u, endpoint)
        return ShortFS(fs), path

    monkeypatch.setattr(storage, "filesystem", short_filesystem)
    with pytest.raises(StorageError, match="ended at byte"):
        storage.download_dir(uri, tmp_path / "out")
