"""`build_model`: the one place that turns `model.method` into a `RecModel`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cora_ray.cf.base import CFBackbone
from cora_ray.config import ModelConfig
from cora_ray.errors import ModelError
from cora_ray.model.base import RecModel
from cora_ray.model.baselines import CoLLMModel, TALLRecModel, ZeroShotModel
from cora_ray.model.cora import CoRAModel

if TYPE_CHECKING:
    from cora_ray.llm.loaded import LoadedLLM

METHODS_NEEDING_CF = ("cora", "collm")


def build_model(cfg: ModelConfig, llm: LoadedLLM, cf: CFBackbone | None = None) -> RecModel:
    """cfg.method ∈ {cora, tallrec, collm, zero_shot} → the model around `llm` (modified in place).

    cora and collm need the CF backbone; tallrec and zero_shot ignore it."""
    if cfg.method in METHODS_NEEDING_CF and cf is None:
        raise ModelError(f"model.method={cfg.method} needs a CF backbone: set model.cf_artifact")
    if cfg.method == "cora":
        return CoRAModel(llm, cf, cfg)
    if cfg.method == "collm":
        return CoLLMModel(llm, cf, cfg)
    if cfg.method == "tallrec":
        return TALLRecModel(llm, cfg)
    if cfg.method == "zero_shot":
        return ZeroShotModel(llm)
    raise ModelError(f"unknown model.method {cfg.method!r}; expected one of cora, tallrec, collm, zero_shot")
