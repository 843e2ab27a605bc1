"""One API for local paths and s3:// URIs, with atomic writes.

- Local files are written to a temporary sibling and renamed into place; a directory is built under a
  temporary sibling name and renamed into place as a whole.
- On S3 there is no rename: every file of a directory is uploaded first and `manifest.json` last. The
  manifest is the commit marker: a directory without one is incomplete and `read_manifest` refuses it.

The S3 endpoint comes from the `endpoint` argument, else the standard `AWS_ENDPOINT_URL` environment
variable; credentials come from the standard AWS chain (environment, profile, instance role). Credentials
are never logged or stored.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from cora_ray.errors import StorageError

MANIFEST = "manifest.json"


def is_s3(uri: str) -> bool:
    return str(uri).startswith("s3://")


def join(uri: str, *parts: str) -> str:
    """Join path parts onto a local path or an s3:// URI."""
    uri = str(uri)
    if is_s3(uri):
        out = uri.rstrip("/")
        for p in parts:
            out = f"{out}/{str(p).strip('/')}"
        return out
    return str(Path(uri, *parts))


def display_uri(uri: str | None, root: str | Path | None = None) -> str | None:
    """`uri` as a report should show it: a local path under `root` (default: the working directory) relative
    to it, so committed results name no machine paths; anything else (s3://, paths elsewhere) unchanged."""
    if uri is None or is_s3(uri):
        return uri
    base = Path(root if root is not None else Path.cwd()).absolute()
    try:
        return str(Path(uri).absolute().relative_to(base))
    except ValueError:
        return str(uri)


def s3_endpoint(endpoint: str | None = None) -> str | None:
    return endpoint or os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL_S3")


def _s3_filesystem(endpoint: str | None) -> pafs.S3FileSystem:
    endpoint = s3_endpoint(endpoint)
    kwargs: dict[str, Any] = {}
    if endpoint:
        scheme = "http" if endpoint.startswith("http://") else "https"
        kwargs["endpoint_override"] = endpoint.split("://", 1)[-1]
        kwargs["scheme"] = scheme
        kwargs["allow_bucket_creation"] = True
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        kwargs["region"] = region
    return pafs.S3FileSystem(**kwargs)


def filesystem(uri: str, endpoint: str | None = None) -> tuple[pafs.FileSystem, str]:
    """(pyarrow filesystem, path inside it) for a URI. Use for pyarrow / Ray Data readers and writers."""
    uri = str(uri)
    if is_s3(uri):
        return _s3_filesystem(endpoint), uri[len("s3://") :].rstrip("/")
    return pafs.LocalFileSystem(), str(Path(uri).absolute())


def _info(uri: str, endpoint: str | None = None) -> pafs.FileInfo:
    fs, path = filesystem(uri, endpoint)
    try:
        return fs.get_file_info(path)
    except OSError as exc:  # e.g. S3 endpoint unreachable, bucket missing
        raise StorageError(f"cannot stat {uri}: {exc}") from exc


def exists(uri: str, endpoint: str | None = None) -> bool:
    return _info(uri, endpoint).type != pafs.FileType.NotFound


def is_dir(uri: str, endpoint: str | None = None) -> bool:
    return _info(uri, endpoint).type == pafs.FileType.Directory


def list_files(uri: str, endpoint: str | None = None, suffix: str = "") -> list[str]:
    """All files under a directory URI (recursive), sorted, as URIs of the same scheme."""
    fs, path = filesystem(uri, endpoint)
    try:
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    except OSError as exc:
        raise StorageError(f"cannot list {uri}: {exc}") from exc
    files = sorted(i.path for i in infos if i.type == pafs.FileType.File and i.path.endswith(suffix))
    if is_s3(uri):
        return [f"s3://{f}" for f in files]
    return files


def read_bytes(uri: str, endpoint: str | None = None) -> bytes:
    fs, path = filesystem(uri, endpoint)
    try:
        with fs.open_input_stream(path, compression=None) as f:
            return f.read()
    except FileNotFoundError:
        raise StorageError(f"file not found: {uri}") from None
    except OSError as exc:
        raise StorageError(f"cannot read {uri}: {exc}") from exc


def read_text(uri: str, endpoint: str | None = None) -> str:
    return read_bytes(uri, endpoint).decode("utf-8")


def read_json(uri: str, endpoint: str | None = None) -> Any:
    text = read_text(uri, endpoint)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise StorageError(f"{uri}: not valid JSON ({exc})") from None


def write_bytes(uri: str, data: bytes, endpoint: str | None = None) -> None:
    """Write a file atomically: temp name + rename locally; a single PUT on S3 (atomic per object)."""
    if is_s3(uri):
        fs, path = filesystem(uri, endpoint)
        try:
            with fs.open_output_stream(path, compression=None) as f:
                f.write(data)
        except OSError as exc:
            raise StorageError(f"cannot write {uri}: {exc}") from exc
        return
    dest = Path(uri)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text(uri: str, text: str, endpoint: str | None = None) -> None:
    write_bytes(uri, text.encode("utf-8"), endpoint)


def write_json(uri: str, obj: Any, endpoint: str | None = None) -> None:
    write_text(uri, json.dumps(obj, indent=2, sort_keys=True) + "\n", endpoint)


def remove(uri: str, endpoint: str | None = None) -> None:
    """Delete a file or a directory tree; missing is fine."""
    if not is_s3(uri):
        p = Path(uri)
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
        return
    fs, path = filesystem(uri, endpoint)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.Directory:
        fs.delete_dir(path)
    elif info.type == pafs.FileType.File:
        fs.delete_file(path)


def upload_dir(local_dir: str | Path, uri: str, endpoint: str | None = None) -> None:
    """Copy a local directory to `uri`; a `manifest.json` at its top is written last (the commit marker)."""
    local_dir = Path(local_dir)
    files = sorted(p for p in local_dir.rglob("*") if p.is_file())
    top_manifest = local_dir / MANIFEST
    ordered = [p for p in files if p != top_manifest] + ([top_manifest] if top_manifest.exists() else [])
    for p in ordered:
        write_bytes(join(uri, p.relative_to(local_dir).as_posix()), p.read_bytes(), endpoint)


DOWNLOAD_THREADS = 16
DOWNLOAD_CHUNK_BYTES = 64 << 20


def download_dir(
    uri: str, local_dir: str | Path, endpoint: str | None = None, threads: int = DOWNLOAD_THREADS
) -> Path:
    """Copy every file under `uri` into `local_dir` (created), in parallel. Returns the local directory.

    Every file is cut into ranges of at most `DOWNLOAD_CHUNK_BYTES`; `threads` threads fetch ranges (one
    ranged GET each on S3, files and ranges at once, like boto3's transfer manager) and write them at their
    offsets, so neither a many-file directory nor one multi-GB weight shard is copied serially, and no file
    is held in memory whole. Each range must arrive whole (its listed length), else StorageError.
    The copy is not atomic: callers download into a temporary directory and publish it when this returns
    (`localize`, the LLM cache's `build_once`).
    """
    import concurrent.futures

    local_dir = Path(local_dir)
    fs, root = filesystem(uri, endpoint)
    try:
        infos = fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
    except OSError as exc:
        raise StorageError(f"cannot list {uri}: {exc}") from exc
    infos = sorted((i for i in infos if i.type == pafs.FileType.File), key=lambda i: i.path)
    if not infos:
        raise StorageError(f"nothing to download at {uri}")
    targets = []
    for info in infos:
        dest = local_dir / info.path[len(root) :].lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        with open(dest, "wb") as f:
            f.truncate(info.size)
        targets.append((info, dest))
    ranges = [
        (info, dest, offset, min(DOWNLOAD_CHUNK_BYTES, info.size - offset))
        for info, dest in targets
        for offset in range(0, info.size, DOWNLOAD_CHUNK_BYTES)
    ]
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        futures = [pool.submit(_download_range, fs, *r, uri) for r in ranges]
        try:
            for future in concurrent.futures.as_completed(futures):
                future.result()  # a failed range raises here: the directory is then incomplete
        except BaseException:
            for future in futures:
                future.cancel()
            raise
    return local_dir


def _download_range(
    fs: pafs.FileSystem, info: pafs.FileInfo, dest: Path, offset: int, length: int, uri: str
) -> None:
    """Copy bytes [offset, offset + length) of one file into `dest` at the same offset."""
    try:
        with fs.open_input_file(info.path) as src:
            data = src.read_at(length, offset)
    except OSError as exc:
        raise StorageError(
            f"cannot read {uri} ({info.path}, bytes {offset}-{offset + length}): {exc}"
        ) from exc
    if len(data) != length:
        raise StorageError(f"{uri}: {info.path} ended at byte {offset + len(data)}, listed as {info.size}")
    fd = os.open(dest, os.O_WRONLY)
    try:
        view, done = memoryview(data), 0
        while done < length:  # pwrite may write less than asked
            done += os.pwrite(fd, view[done:], offset + done)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_dir(uri: str, endpoint: str | None = None, overwrite: bool = False) -> Iterator[Path]:
    """Build a directory locally, then publish it at `uri` only if the block succeeds.

        with atomic_dir("s3://bucket/ml-1m") as tmp:
            ... write files under tmp ...
            write manifest.json under tmp   # required: it is the commit marker

    Local: the temporary directory is a hidden sibling, renamed into place (an existing directory is
    replaced only with `overwrite=True`). S3: files are uploaded, `manifest.json` last. On any error
    nothing a reader accepts is left at `uri`.
    """
    uri = str(uri)
    if exists(join(uri, MANIFEST), endpoint) and not overwrite:
        raise StorageError(
            f"{uri} already holds a complete artifact (manifest.json); pass overwrite to replace it"
        )
    if is_s3(uri):
        tmp = Path(tempfile.mkdtemp(prefix="cora_ray_stage_"))
        try:
            yield tmp
            _require_local_manifest(tmp, uri)
            if exists(join(uri, MANIFEST), endpoint):
                # retract the old commit marker first so that a half-replaced directory is never accepted
                remove(join(uri, MANIFEST), endpoint)
            upload_dir(tmp, uri, endpoint)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return
    dest = Path(uri).absolute()
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        yield tmp
        _require_local_manifest(tmp, uri)
        if dest.exists():
            old = dest.with_name(f".{dest.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(dest, old)
            os.replace(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def refuse_existing(
    uri: str, what: str = "a complete artifact", overwrite: bool = False, endpoint: str | None = None
) -> None:
    """Before expensive work: refuse an output location that already holds a published result
    (its manifest.json) unless `overwrite` — the check `atomic_dir` makes again when it publishes."""
    if not overwrite and exists(join(uri, MANIFEST), endpoint):
        raise StorageError(f"{uri} already holds {what} (manifest.json); pass --overwrite to replace it")


def _require_local_manifest(tmp: Path, uri: str) -> None:
    if not (tmp / MANIFEST).is_file():
        raise StorageError(f"refusing to publish {uri}: the staged directory has no {MANIFEST}")


def read_manifest(uri: str, endpoint: str | None = None, kind: str = "artifact") -> dict:
    """The manifest of a complete directory; a directory without one is refused as incomplete."""
    m = join(uri, MANIFEST)
    if not exists(m, endpoint):
        if exists(uri, endpoint):
            raise StorageError(
                f"{uri} is an incomplete {kind}: it has no {MANIFEST} (a write did not finish?)"
            )
        raise StorageError(f"{kind} not found: {uri} (no {MANIFEST})")
    manifest = read_json(m, endpoint)
    if not isinstance(manifest, dict):
        raise StorageError(f"{m}: expected a JSON object")
    return manifest


def localize(uri: str, cache_root: str | Path, endpoint: str | None = None) -> Path:
    """A local directory with the content of `uri`: the path itself when local, else a cached download."""
    if not is_s3(uri):
        return Path(uri)
    import hashlib

    key = hashlib.sha256(uri.encode()).hexdigest()[:16]
    dest = Path(cache_root) / key
    if (dest / ".complete").exists():
        return dest
    staging = Path(cache_root) / f".{key}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        download_dir(uri, staging, endpoint)
        (staging / ".complete").write_text(uri)
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(staging, dest)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return dest
