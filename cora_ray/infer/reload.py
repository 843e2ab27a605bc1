"""Reload a checkpoint into a serving Scorer without a second base LLM.

A CoRA checkpoint is its trainable tensors (generator, P matrices) plus the names of what it was trained
with: the base LLM (weight hash), the CF artifact (hash), the dataset (hash), the model shape and the
prompt. When the base LLM is the one being served, a reload needs only the trainable tensors — a few MB
beside 13.5 GB of LLM at 7B — so it never loads a second LLM:

    prepared = prepare_reload(scorer, uri)   # reads + checks everything; the scorer keeps serving
    prepared.apply(scorer)                    # between batches: copies tensor by tensor, swaps CF/prompt

`prepare_reload` refuses (ArtifactMismatchError, nothing changed) a checkpoint whose base-LLM weight hash,
dataset hash, method or model shape differs from what is served; the message names both values. A new
base LLM means new replicas: change the application's arguments (`serve deploy` replaces the replicas).
The trainable file is streamed once to a local temporary copy while its sha256 is checked against the
manifest, and `apply` reads it one tensor at a time, so the extra memory of a reload is one tensor plus
the CF artifact when that changes (tests/serve/test_reload.py measures it).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cora_ray import storage
from cora_ray.checkpoint import check_compatible, read_checkpoint_manifest
from cora_ray.config import ExperimentConfig, from_dict
from cora_ray.errors import ArtifactMismatchError, ModelError, StorageError

# model fields that change nothing a trainable tensor's meaning depends on (eval-time rules)
_MODEL_FIELDS_FREE_TO_CHANGE = ("cf_artifact", "zero_delta_for_cold_users", "dropout")
_CHUNK = 1 << 16  # bytes per read while hashing the trainable file


@dataclass
class PreparedReload:
    """A checked checkpoint, ready to be copied into the serving model."""

    uri: str
    manifest: dict
    config: ExperimentConfig
    trainable_path: str  # local temporary copy whose sha256 matched the manifest
    names: list[str]
    cf: Any | None  # a newly loaded CF artifact, or None to keep the served one

    def apply(self, scorer: Any, probe: Callable[[str], None] | None = None) -> None:
        """Copy the trainable tensors in, one at a time; swap CF artifact, prompt, manifest and URI.

        Call it while no batch runs (the engine holds its lock). After validation in `prepare_reload` a
        failure here leaves a half-copied model: it raises ModelError, and the replica's health check then
        fails so Serve replaces it."""
        import torch
        from safetensors import safe_open

        from cora_ray.infer.scorer import _encoder
        from cora_ray.model.base import freeze

        params = {n: p for n, p in scorer.model.named_parameters() if p.requires_grad}
        try:
            with safe_open(self.trainable_path, framework="pt", device="cpu") as f, torch.no_grad():
                for name in self.names:
                    t = f.get_tensor(name)
                    if probe is not None:
                        probe(f"copy {name}")
                    params[name].copy_(t)
                    del t
            if self.cf is not None:
                scorer.model.cf = freeze(self.cf).eval().to(scorer.device)
                scorer.cf = self.cf
            if dataclasses.asdict(self.config.prompt) != dataclasses.asdict(scorer.config.prompt):
                scorer.encoder = _encoder(scorer.llm, self.config, scorer.titles, scorer.model)
                scorer.max_history = int(self.config.prompt.max_history)
        except Exception as exc:
            scorer.reload_broken = f"reload of {self.uri} failed half way ({type(exc).__name__}: {exc})"
            raise ModelError(scorer.reload_broken) from exc
        finally:
            os.unlink(self.trainable_path)
        scorer.manifest = self.manifest
        scorer.uri = self.uri
        scorer.config = self.config
        scorer.method = self.config.model.method
        if probe is not None:
            probe("applied")


def _stage_trainable(uri: str, manifest: dict, endpoint: str | None) -> str:
    """Stream the trainable file to a local temporary file, checking its sha256; returns the path."""
    record = manifest["trainable"]
    fs, path = storage.filesystem(storage.join(uri, record["file"]), endpoint)
    digest = hashlib.sha256()
    fd, tmp = tempfile.mkstemp(prefix="cora_reload_", suffix=".safetensors")
    try:
        with os.fdopen(fd, "wb") as out, fs.open_input_stream(path) as src:
            while chunk := src.read(_CHUNK):
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() != record["sha256"]:
            raise StorageError(
                f"{uri}: {record['file']} sha256 {digest.hexdigest()} does not match the manifest "
                f"({record['sha256']}): corrupted or replaced"
            )
    except BaseException:
        os.unlink(tmp)
        raise
    return tmp


def _check_same_shape(served: ExperimentConfig, new: ExperimentConfig, uri: str) -> None:
    a, b = dataclasses.asdict(served.model), dataclasses.asdict(new.model)
    for key in _MODEL_FIELDS_FREE_TO_CHANGE:
        a.pop(key, None)
        b.pop(key, None)
    changed = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    if changed:
        shown = "; ".join(f"model.{k}: served {a.get(k)!r}, checkpoint {b.get(k)!r}" for k in changed[:4])
        raise ArtifactMismatchError(
            f"checkpoint {uri} has another model shape than the one served ({shown}): a reload in place "
            "swaps trainable tensors only; deploy it as a new application version (change the app args)"
        )


def prepare_reload(
    scorer: Any, uri: str, endpoint: str | None = None, probe: Callable[[str], None] | None = None
) -> PreparedReload:
    """Read and check checkpoint `uri` against what `scorer` serves; nothing in `scorer` changes."""
    from cora_ray.infer.scorer import _check_answer_tokens, _load_cf_for_checkpoint, cf_artifact_hash

    if scorer.llm is None:
        raise ModelError(
            f"cannot reload {uri}: this Scorer was built without its base LLM (llm=None); a reload checks "
            "the checkpoint against the served LLM's weight hash (Scorer.from_checkpoint / from_base_llm)"
        )
    manifest = read_checkpoint_manifest(uri, endpoint)
    # the LLM in memory (its checkpoint was checked against it on load) and the field every checkpoint has
    served_hash, new_hash = scorer.llm.weight_hash, manifest["base_llm"]["weight_hash"]
    if new_hash != served_hash:
        raise ArtifactMismatchError(
            f"checkpoint {uri} was trained on base LLM weight hash {new_hash}, but this replica serves base "
            f"LLM weight hash {served_hash}: a reload in place keeps the loaded LLM; to serve another base "
            "LLM deploy it as a new application version (change the app args: new replicas load it)"
        )
    config = from_dict(ExperimentConfig, manifest["config"], source=f"{uri}/manifest.json config")
    if manifest["method"] != scorer.method:
        raise ArtifactMismatchError(
            f"checkpoint {uri} is method {manifest['method']!r}, the replica serves "
            f"{scorer.method!r}: deploy it as a new application version"
        )
    _check_same_shape(scorer.config, config, uri)
    check_compatible(manifest, uri=uri, dataset_hash=scorer.dataset_hash)
    _check_answer_tokens(manifest, scorer.llm, uri)

    cf = None
    record = manifest.get("cf_artifact")
    if record and record.get("hash") != cf_artifact_hash(scorer.cf):
        cf = _load_cf_for_checkpoint(uri, record, None, manifest.get("dataset_hash"), endpoint)
        check_compatible(manifest, uri=uri, cf_hash=cf_artifact_hash(cf))
        if probe is not None:
            probe("cf loaded")

    path = _stage_trainable(uri, manifest, endpoint)
    try:
        names = _check_tensors(path, scorer, uri)
    except BaseException:
        os.unlink(path)
        raise
    if probe is not None:
        probe("checked")
    return PreparedReload(uri=uri, manifest=manifest, config=config, trainable_path=path, names=names, cf=cf)


def _check_tensors(path: str, scorer: Any, uri: str) -> list[str]:
    """The file's tensor names and shapes equal the served model's trainable ones (metadata only)."""
    from safetensors import safe_open

    params = {n: tuple(p.shape) for n, p in scorer.model.named_parameters() if p.requires_grad}
    with safe_open(path, framework="pt", device="cpu") as f:
        shapes = {n: tuple(f.get_slice(n).get_shape()) for n in f.keys()}  # noqa: SIM118 (safe_open API)
    missing, unexpected = sorted(set(params) - set(shapes)), sorted(set(shapes) - set(params))
    wrong = sorted(n for n in set(params) & set(shapes) if params[n] != shapes[n])
    if missing or unexpected or wrong:
        raise ArtifactMismatchError(
            f"checkpoint {uri}: trainable tensors do not fit the served model: missing {missing[:3]} "
            f"({len(missing)}), unexpected {unexpected[:3]} ({len(unexpected)}), other shape {wrong[:3]}"
        )
    return sorted(params)
