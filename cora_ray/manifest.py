"""The one manifest module: read, kind/version check, content hash and atomic write for every kind.

A published directory (docs/architecture.md §3: the protocol dataset §3.1, the CF artifact §3.2, the
checkpoint §3.4, an evaluation's results §3.5) is complete when its `manifest.json` exists; the manifest is written last and is what
readers open first. Each kind is a `ManifestKind` declaration below — the field that names the kind, the
versions this code reads, the fields every manifest of it has — and these functions do the rest:

    read(KIND, uri)            storage.read_manifest (local or s3://) + check: refuses a missing / incomplete
                               directory, another kind, an unknown version, missing fields, an edited manifest
    stamp(KIND, fields)        the manifest to write: kind field, version and `hash` set
    write(KIND, dir, fields)   stamp + write `<dir>/manifest.json` atomically (temp + rename locally, one PUT
                               on S3); call it after every other file (or inside storage.atomic_dir)

Content hash: sha256 of the manifest's canonical JSON (keys sorted, no whitespace) without the fields the
kind declares unhashed (always `hash` itself). Because every manifest records the sha256 of its data files
(dataset: counts and sources; CF artifact: `weights.sha256`; checkpoint: `trainable.sha256`), the hash
covers the data too: a checkpoint's hash changes when its trainable tensors change, and only when they or
another recorded field (config, base LLM, CF artifact, dataset, metrics, step) do. A checkpoint's `alias_of`
(the run's `best` alias, cora_ray/train/best_alias.py) is not hashed, so the alias has the hash of the
checkpoint it copies. Checkpoints written before the hash existed (version 1 without `hash`) still load:
their hash is computed when they are read. The evaluation manifest (cora_ray/eval/evaluate.py) has no
`hash`: it records no digest of metrics.json or the score files, so a hash of it would vouch for nothing
but its own summary; it is written and read here, in the format the committed results already have.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cora_ray import storage
from cora_ray.errors import StorageError

MANIFEST = storage.MANIFEST


@dataclass(frozen=True)
class ManifestKind:
    """What one kind of manifest is.

    name: for messages ("dataset", "CF artifact", "checkpoint").
    kind_field / kind: the field naming the kind and its value (the dataset uses `protocol`).
    version: the version written; readable: the versions read (an old version stays readable here).
    required: fields every manifest of the kind has (besides kind_field, `version` and `hash`).
    unhashed: fields outside the content hash (besides `hash`).
    hash_optional: manifests without `hash` are accepted and hashed on read (written before it existed).
    hashed: False for a kind whose manifests carry no `hash` at all (nothing set on write, nothing checked)."""

    name: str
    kind_field: str
    kind: str
    version: int
    readable: tuple[int, ...]
    required: tuple[str, ...]
    unhashed: tuple[str, ...] = ()
    hash_optional: bool = False
    hashed: bool = True


DATASET = ManifestKind(
    name="dataset",
    kind_field="protocol",
    kind="cora-ctr",
    version=1,
    readable=(1,),
    required=("dataset", "counts", "users", "items"),
)
CF_ARTIFACT = ManifestKind(
    name="CF artifact",
    kind_field="kind",
    kind="cora_ray.cf_artifact",
    version=1,
    readable=(1,),
    required=("backbone", "model", "dataset_hash", "weights"),
)
CHECKPOINT = ManifestKind(
    name="checkpoint",
    kind_field="kind",
    kind="cora_ray.checkpoint",
    version=1,
    readable=(1,),
    required=("method", "config", "base_llm", "answer_token_id", "dataset_hash", "step", "trainable"),
    unhashed=("alias_of",),
    hash_optional=True,
)
EVALUATION = ManifestKind(
    name="evaluation",
    kind_field="kind",
    kind="cora_ray.evaluation",
    version=1,
    readable=(1,),
    required=("files", "name", "method", "data_hash", "splits"),
    hashed=False,
)


def content_hash(kind: ManifestKind, manifest: dict) -> str:
    """sha256 hex of the manifest's canonical JSON without `hash` and the kind's unhashed fields."""
    skip = {"hash", *kind.unhashed}
    body = {k: v for k, v in manifest.items() if k not in skip}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def stamp(kind: ManifestKind, fields: dict) -> dict:
    """The manifest to write: `fields` with the kind field, the current version and (if hashed) `hash` set."""
    manifest = {k: v for k, v in fields.items() if k != "hash"}
    manifest[kind.kind_field] = kind.kind
    manifest["version"] = kind.version
    if kind.hashed:
        manifest["hash"] = content_hash(kind, manifest)
    return manifest


def check(kind: ManifestKind, manifest: dict, uri: str) -> dict:
    """Refuse a manifest of another kind or version, with missing fields, or whose `hash` does not match
    its content (StorageError naming `uri` and both values). Returns the manifest (with `hash` computed
    when the kind allows it to be absent)."""
    found_kind, found_version = manifest.get(kind.kind_field), manifest.get("version")
    if found_kind != kind.kind or found_version not in kind.readable:
        raise StorageError(
            f"{uri}: not a readable {kind.name}: expected {kind.kind_field} {kind.kind!r} version "
            f"{' or '.join(map(str, kind.readable))}, found {kind.kind_field} {found_kind!r} version "
            f"{found_version!r}"
        )
    missing = [f for f in kind.required if f not in manifest]
    if missing:
        raise StorageError(f"{uri}: {kind.name} manifest lacks field(s) {missing}")
    if not kind.hashed:
        return manifest
    actual = content_hash(kind, manifest)
    if "hash" not in manifest and kind.hash_optional:
        return {**manifest, "hash": actual}
    if manifest.get("hash") != actual:
        raise StorageError(
            f"{uri}: {MANIFEST} hash does not match its content (edited or corrupted): "
            f"recorded {manifest.get('hash')}, computed {actual}"
        )
    return manifest


def read(kind: ManifestKind, uri: str, endpoint: str | None = None) -> dict:
    """The checked manifest of the directory at `uri` (local or s3://)."""
    return check(kind, storage.read_manifest(uri, endpoint, kind=kind.name), uri)


def dumps(manifest: dict) -> str:
    """The manifest as it is stored: indented, keys sorted, one trailing newline."""
    return json.dumps(manifest, indent=2, sort_keys=True) + "\n"


def write(kind: ManifestKind, directory: str | Path, fields: dict, endpoint: str | None = None) -> dict:
    """Stamp `fields` and write `<directory>/manifest.json` atomically. Returns the manifest written.

    Serialised before anything is written, so a value JSON cannot hold leaves no manifest; locally the
    file appears by rename only when complete."""
    manifest = stamp(kind, fields)
    text = dumps(manifest)
    storage.write_text(storage.join(str(directory), MANIFEST), text, endpoint)
    return manifest


def rewrite(kind: ManifestKind, directory: str | Path, **updates: Any) -> dict:
    """Update fields of a staged (local) directory's manifest, re-stamp and write it. Returns it."""
    manifest = read(kind, str(directory))
    return write(kind, directory, {**manifest, **updates})


def read_recorded_file(uri: str, record: dict, endpoint: str | None = None) -> bytes:
    """The bytes of a data file a manifest records as {"file", "sha256"} (a checkpoint's `trainable`, a CF
    artifact's `weights`), refused (StorageError naming both digests) when they do not match the record."""
    blob = storage.read_bytes(storage.join(uri, record["file"]), endpoint)
    digest = hashlib.sha256(blob).hexdigest()
    if digest != record["sha256"]:
        raise StorageError(
            f"{uri}: {record['file']} sha256 {digest} does not match the manifest ({record['sha256']}): "
            "corrupted or replaced"
        )
    return blob
