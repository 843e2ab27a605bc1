"""CF backbones (MF, LightGCN, SASRec), their pretraining and artifacts.

Importable without Ray (only cora_ray.cf.runner, the Ray Tune job, imports it). Names are resolved lazily
so that `cora_ray.cf.config` and `cora_ray.cf.checks` load without torch (fast CLI errors)."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "CFBackbone": "cora_ray.cf.base",
    "MF": "cora_ray.cf.models",
    "LightGCN": "cora_ray.cf.models",
    "SASRec": "cora_ray.cf.models",
    "build_backbone": "cora_ray.cf.models",
    "load_cf_artifact": "cora_ray.cf.artifact",
    "read_cf_manifest": "cora_ray.cf.artifact",
    "save_cf_artifact": "cora_ray.cf.artifact",
    "CFTrainConfig": "cora_ray.cf.config",
    "load_cf_config": "cora_ray.cf.config",
    "pretrain_local": "cora_ray.cf.pretrain",
    "train_cf": "cora_ray.cf.train",
}

__all__ = [
    "MF",
    "CFBackbone",
    "CFTrainConfig",
    "LightGCN",
    "SASRec",
    "build_backbone",
    "load_cf_artifact",
    "load_cf_config",
    "pretrain_local",
    "read_cf_manifest",
    "save_cf_artifact",
    "train_cf",
]

if TYPE_CHECKING:
    from cora_ray.cf.artifact import load_cf_artifact, read_cf_manifest, save_cf_artifact
    from cora_ray.cf.base import CFBackbone
    from cora_ray.cf.config import CFTrainConfig, load_cf_config
    from cora_ray.cf.models import MF, LightGCN, SASRec, build_backbone
    from cora_ray.cf.pretrain import pretrain_local
    from cora_ray.cf.train import train_cf


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'cora_ray.cf' has no attribute {name!r}")
