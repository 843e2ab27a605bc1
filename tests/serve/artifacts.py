"""A complete tiny serving setup on disk, in seconds: protocol dataset, CF artifact, base LLM, checkpoints.

    art = build_tiny_setup(tmp_path)        # .data_uri, .checkpoint_uri, .checkpoint2_uri, .llm_dir, ...

The same files training and data preparation write (real loaders read them, every hash is checked):
the seeded synthetic dataset, an MF artifact (random tables; users absent from train are unknown to it),
the tiny LLaMA of cora_ray.llm.tiny saved as a Hugging Face directory, and two CoRA checkpoints whose
generator and P matrices are random (P nonzero, so the collaborative delta changes the score). Used by the
serving tests and by bench/bench_serve.py (`generator`/`llm` sizes are arguments for the benchmark).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
import torch

from cora_ray import storage
from cora_ray.cf.artifact import load_cf_artifact, save_cf_artifact
from cora_ray.cf.models import MF
from cora_ray.checkpoint import write_checkpoint_files
from cora_ray.config import DataConfig, ExperimentConfig, GeneratorConfig, LLMConfig, ModelConfig, to_dict
from cora_ray.data import protocol
from cora_ray.data.synthetic import prepare_synthetic


@dataclass
class TinySetup:
    root: Path
    data_uri: str
    cf_uri: str
    llm_dir: str
    checkpoint_uri: str
    checkpoint2_uri: str


SMALL_GENERATOR = {"num_queries": 2, "num_layers": 2, "hidden_size": 32, "num_heads": 4, "ffn_size": 64}


def build_tiny_setup(
    root: str | Path,
    users: int = 40,
    items: int = 60,
    seed: int = 0,
    llm: dict[str, Any] | None = None,
    generator: dict[str, Any] | None = None,
    cf_dim: int = 16,
    rank: int = 4,
) -> TinySetup:
    """Write everything under `root` (created). `llm`: kwargs of tiny_llm; `generator`: GeneratorConfig."""
    from cora_ray.llm.loading import load_llm
    from cora_ray.llm.tiny import tiny_llm
    from cora_ray.model.build import build_model

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    data_uri = str(root / "data")
    manifest = prepare_synthetic(data_uri, users=users, items=items, seed=seed, overwrite=True)

    # MF with random tables; the users of the train split are the ones it knows
    train = protocol.read_split(data_uri, "train", columns=["user_id"])
    known = torch.zeros(manifest["users"] + 1, dtype=torch.bool)
    known[torch.as_tensor(pc.unique(train["user_id"]).to_numpy().astype("int64"))] = True
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mf = MF(manifest["users"], manifest["items"], dim=cf_dim, init_std=1.0, known_users=known)
    cf_uri = str(root / "cf_mf")
    save_cf_artifact(
        cf_uri,
        mf,
        overwrite=True,
        dataset_manifest=manifest,
        dataset_uri=data_uri,
        config={},
        metrics={},
        training={},
    )

    # the tiny LLaMA as a Hugging Face directory, loaded back the way a checkpoint's LLM is loaded
    llm_dir = root / "llm"
    tiny = tiny_llm(seed=seed, **(llm or {}))
    tiny.model.save_pretrained(llm_dir)
    tiny.tokenizer.save_pretrained(llm_dir)
    llm_cfg = LLMConfig(name_or_path=str(llm_dir), answer_token=" Yes", negative_token=" No", dtype="float32")

    cfg = ExperimentConfig(
        name="serve-tiny",
        data=DataConfig(uri=data_uri),
        llm=llm_cfg,
        model=ModelConfig(
            method="cora",
            cf_artifact=cf_uri,
            rank=rank,
            alpha=2.0 * rank,
            generator=GeneratorConfig(**{**SMALL_GENERATOR, **(generator or {})}),
            zero_delta_for_cold_users=True,  # the tests cover the zero-delta rule (serving's cold start)
        ),
    )
    uris = []
    for k, name in enumerate(("checkpoint", "checkpoint2")):
        loaded = load_llm(llm_cfg, "cpu")
        cf = load_cf_artifact(cf_uri, expected_dataset_hash=manifest["hash"])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + 100 + k)
            model = build_model(cfg.model, loaded, cf)
            with torch.no_grad():
                for layer in model.collab_layers.values():
                    layer.P.copy_(torch.randn(layer.P.shape) * 0.5)
        uri = str(root / name)
        with storage.atomic_dir(uri, overwrite=True) as tmp:
            write_checkpoint_files(
                tmp,
                model.trainable_state_dict(),
                method="cora",
                config=to_dict(cfg),
                base_llm={"identity": loaded.identity, "weight_hash": loaded.weight_hash},
                answer_token_id=loaded.answer_token_id,
                negative_token_id=loaded.negative_token_id,
                cf_artifact={"uri": cf_uri, "hash": cf.artifact_hash, "backbone": "mf"},
                dataset_hash=manifest["hash"],
                metrics={"valid_auc": 0.5 + 0.01 * k, "valid_uauc": 0.5},
                step=10 * (k + 1),
            )
        uris.append(uri)
    return TinySetup(
        root=root,
        data_uri=data_uri,
        cf_uri=cf_uri,
        llm_dir=str(llm_dir),
        checkpoint_uri=uris[0],
        checkpoint2_uri=uris[1],
    )


def config_of(setup: TinySetup) -> ExperimentConfig:
    from cora_ray.checkpoint import read_checkpoint_manifest
    from cora_ray.config import from_dict

    return from_dict(ExperimentConfig, read_checkpoint_manifest(setup.checkpoint_uri)["config"])


__all__ = ["TinySetup", "build_tiny_setup", "config_of", "dataclasses"]
