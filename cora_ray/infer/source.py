"""What to score with, as a small picklable record: a checkpoint, a CF artifact, or a base LLM (zero-shot).

Evaluation ships a `ScorerSource` to every Ray actor, which calls `load()` once; the driver calls
`preflight()` first, which reads only manifests, so a wrong URI or a dataset mismatch fails in a second,
before any actor or model starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from cora_ray.checkpoint import check_compatible, read_checkpoint_manifest
from cora_ray.config import ExperimentConfig, from_dict
from cora_ray.data import protocol
from cora_ray.errors import ConfigError

SourceKind = Literal["checkpoint", "cf", "zero_shot"]


@dataclass
class ScorerSource:
    """`kind` "checkpoint" (uri = checkpoint), "cf" (uri = CF artifact) or "zero_shot" (config = an
    ExperimentConfig as a dict: its llm and prompt sections are used)."""

    kind: SourceKind
    uri: str | None = None
    config: dict | None = None
    data_uri: str | None = None
    device: str = "cpu"
    dtype: str | None = None
    batch_size: int | None = None
    endpoint: str | None = None
    cf_uri: str | None = None
    name: str | None = None  # a display name for reports
    trust_remote_code: bool = False  # the operator's consent (cora_ray/infer/remote_code.py)
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in ("checkpoint", "cf", "zero_shot"):
            raise ConfigError(f"scorer source kind must be checkpoint, cf or zero_shot, got {self.kind!r}")
        if self.kind in ("checkpoint", "cf") and not self.uri:
            raise ConfigError(f"a {self.kind} source needs a URI")

    def experiment_config(self) -> ExperimentConfig:
        return from_dict(ExperimentConfig, dict(self.config or {}), source="zero-shot config")

    def preflight(self) -> dict:
        """Cheap checks (manifests only). Returns {"method", "data_uri", "data_manifest", "manifest"}.

        Raises StorageError for a missing / incomplete manifest, ArtifactMismatchError when the dataset
        differs from the one the checkpoint or artifact was made with (both hashes named)."""
        if self.kind == "checkpoint":
            manifest = read_checkpoint_manifest(self.uri, self.endpoint)
            cfg = from_dict(ExperimentConfig, manifest["config"], source=f"{self.uri}/manifest.json config")
            data_uri = self.data_uri or cfg.data.uri
            data_manifest = protocol.read_manifest(data_uri, self.endpoint or cfg.data.s3_endpoint)
            check_compatible(manifest, uri=self.uri, dataset_hash=data_manifest.get("hash"))
            return {
                "method": manifest.get("method"),
                "data_uri": data_uri,
                "data_manifest": data_manifest,
                "manifest": manifest,
            }
        if self.kind == "cf":
            from cora_ray.cf.artifact import check_dataset, read_cf_manifest

            manifest = read_cf_manifest(self.uri, self.endpoint)
            data_uri = self.data_uri or (manifest.get("dataset") or {}).get("uri")
            if not data_uri:
                raise ConfigError(f"CF artifact {self.uri} does not name its dataset: pass --data URI")
            data_manifest = protocol.read_manifest(data_uri, self.endpoint)
            check_dataset(manifest, data_manifest.get("hash"), self.uri)
            return {
                "method": "cf",
                "data_uri": data_uri,
                "data_manifest": data_manifest,
                "manifest": manifest,
            }
        cfg = self.experiment_config()
        data_uri = self.data_uri or cfg.data.uri
        data_manifest = protocol.read_manifest(data_uri, self.endpoint or cfg.data.s3_endpoint)
        return {"method": "zero_shot", "data_uri": data_uri, "data_manifest": data_manifest, "manifest": {}}

    def load(self) -> Any:
        """The scorer (Scorer or CFScorer); imports torch / transformers only here."""
        if self.kind == "checkpoint":
            from cora_ray.infer.scorer import Scorer

            return Scorer.from_checkpoint(
                self.uri,
                self.data_uri,
                self.device,
                self.dtype,
                cf_uri=self.cf_uri,
                batch_size=self.batch_size,
                endpoint=self.endpoint,
                trust_remote_code=self.trust_remote_code,
            )
        if self.kind == "cf":
            from cora_ray.infer.cf_scorer import CFScorer

            return CFScorer.from_artifact(
                self.uri,
                self.data_uri,
                self.device,
                batch_size=self.batch_size or 4096,
                endpoint=self.endpoint,
            )
        from cora_ray.infer.scorer import Scorer

        return Scorer.from_base_llm(
            self.experiment_config(),
            self.data_uri,
            self.device,
            self.dtype,
            batch_size=self.batch_size,
            endpoint=self.endpoint,
            trust_remote_code=self.trust_remote_code,
        )
