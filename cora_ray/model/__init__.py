"""The recommender models: CoRA (generator + collaborative layers) and the zero-shot / TALLRec / CoLLM baselines."""

from cora_ray.model.base import RecModel, answer_score, last_hidden_state
from cora_ray.model.baselines import CoLLMModel, TALLRecModel, ZeroShotModel
from cora_ray.model.build import build_model
from cora_ray.model.collab_linear import CollabContext, CollabLinear, inject_collab_layers
from cora_ray.model.cora import CoRAModel
from cora_ray.model.generator import CollaborativeWeightGenerator
from cora_ray.model.lora_linear import LoRALinear, inject_lora_layers

__all__ = [
    "CoLLMModel",
    "CoRAModel",
    "CollabContext",
    "CollabLinear",
    "CollaborativeWeightGenerator",
    "LoRALinear",
    "RecModel",
    "TALLRecModel",
    "ZeroShotModel",
    "answer_score",
    "build_model",
    "inject_collab_layers",
    "inject_lora_layers",
    "last_hidden_state",
]
