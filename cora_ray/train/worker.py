"""What the driver hands to Ray Train: the per-worker entry point and its argument.

    TorchTrainer(train_loop_per_worker, train_loop_config=spec.to_config(), datasets=..., ...)

Every worker runs the recipe in cora_ray/train/recipe.py (`CoRATrainingRecipe`: setup, train, validate,
save, cleanup); its pieces live beside it — validation in lockstep (validation.py), checkpoint writing and
the train / optimizer state (state.py), DeepSpeed's config and the precision checks (deepspeed_config.py),
progress (progress.py).
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass

import numpy as np

from cora_ray.train.recipe import CoRATrainingRecipe


@dataclass
class RunSpec:
    """Everything a worker needs besides its dataset shards (travels in `train_loop_config`)."""

    experiment: dict  # ExperimentConfig as a dict (cora_ray.config.to_dict)
    run_uri: str  # <storage_path>/<run name>: progress.jsonl lives here, beside Ray's checkpoint folders
    dataset_hash: str
    valid_keys: np.ndarray  # (user, item) keys of the validation rows, each expected exactly once
    pad_id: int
    cf_record: dict | None = None  # {"uri", "hash", "backbone"} written into checkpoint manifests
    resume_from: str | None = None  # checkpoint URI from `--resume` (used when the run has none of its own)
    endpoint: str | None = None

    def to_config(self) -> dict:
        return {"spec": self}


def train_loop_per_worker(config: dict) -> None:
    """Ray Train entry point: set up, train (validating and checkpointing on the way), clean up."""
    with ExitStack() as stack:
        recipe = CoRATrainingRecipe(config["spec"], stack)
        recipe.setup()
        recipe.train()
        recipe.cleanup()
