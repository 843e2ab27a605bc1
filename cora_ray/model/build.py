"""`build_model` and `model_class`: the one place that turns `model.method` into a `RecModel` (class).

Everyone else asks the class (or the built model) what the method needs — `needs_cf`, `needs_placeholders`,
`uses_collab_weights`, `trainable` (cora_ray/model/base.py) — instead of comparing method names.
"""

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

MODEL_CLASSES: dict[str, type[RecModel]] = {
    "cora": CoRAModel,
    "tallrec": TALLRecModel,
    "collm": CoLLMModel,
    "zero_shot": ZeroShotModel,
}


def model_class(method: str) -> type[RecModel]:
    """`model.method` → its RecModel class, whose class attributes answer what the method needs without
    building it (the driver asks before any LLM is loaded)."""
    try:
        return MODEL_CLASSES[method]
    except KeyError:
        raise ModelError(
            f"unknown model.method {method!r}; expected one of {', '.join(MODEL_CLASSES)}"
        ) from None


def build_model(cfg: ModelConfig, llm: LoadedLLM, cf: CFBackbone | None = None) -> RecModel:
    """cfg.method ∈ {cora, tallrec, collm, zero_shot} → the model around `llm` (modified in place).

    Methods with `needs_cf` (cora, collm) need the CF backbone; the others ignore it."""
    cls = model_class(cfg.method)
    if cls.needs_cf and cf is None:
        raise ModelError(f"model.method={cfg.method} needs a CF backbone: set model.cf_artifact")
    if cls is CoRAModel:
        return CoRAModel(llm, cf, cfg)
    if cls is CoLLMModel:
        return CoLLMModel(llm, cf, cfg)
    if cls is TALLRecModel:
        return TALLRecModel(llm, cfg)
    return ZeroShotModel(llm)
