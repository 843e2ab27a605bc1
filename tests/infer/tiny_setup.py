"""Tiny evaluation artifacts on disk, in seconds: protocol dataset, CF artifact, base LLM, checkpoints.

    art = build_tiny_artifacts(tmp_path)   # .data_uri, .cf_uri, .llm_dir, .checkpoints[method], ...

Real files, loaded by the real loaders with every hash checked: the seeded synthetic dataset, an MF
artifact (random tables; only users of the train split are known to it), the tiny LLaMA of
cora_ray.llm.tiny saved as a Hugging Face directory, and one checkpoint per method (cora, tallrec, collm)
whose trainable tensors are random (so the trained parts change the scores), written with
cora_ray.checkpoint.write_checkpoint_files — no Ray Train run.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.compute as pc
import torch

from cora_ray import manifest as manifests
from cora_ray import storage
from cora_ray.cf.artifact import load_cf_artifact, save_cf_artifact
from cora_ray.cf.models import MF
from cora_ray.checkpoint import write_checkpoint_files
from cora_ray.config import DataConfig, ExperimentConfig, GeneratorConfig, LLMConfig, ModelConfig, to_dict
from cora_ray.data import protocol
from cora_ray.data.synthetic import prepare_synthetic

SMALL_GENERATOR = GeneratorConfig(num_queries=2, num_layers=2, hidden_size=32, num_heads=4, ffn_size=64)
METHODS = ("cora", "tallrec", "collm")


@dataclass
class TinyArtifacts:
    root: Path
    data_uri: str
    data_hash: str
    cf_uri: str
    llm_dir: str
    llm_cfg: LLMConfig
    checkpoints: dict[str, str] = field(default_factory=dict)
    run_dir: str = ""  # a "training run" directory holding two CoRA checkpoints (different valid AUC)

    def config(self, method: str = "cora") -> ExperimentConfig:
        return ExperimentConfig(
            name=f"tiny-{method}",
            data=DataConfig(uri=self.data_uri),
            llm=self.llm_cfg,
            model=ModelConfig(
                method=method,
                cf_artifact=self.cf_uri if method in ("cora", "collm") else None,
                rank=4,
                alpha=8.0,
                generator=SMALL_GENERATOR,
                collm_hidden=32,
                lora_rank=4,
                lora_alpha=8.0,
                zero_delta_for_cold_users=True,  # the tests cover the zero-delta rule (serving's cold start)
            ),
        )


def write_tiny_checkpoint(
    art: TinyArtifacts,
    uri: str,
    method: str = "cora",
    seed: int = 1,
    valid_auc: float = 0.5,
    model_overrides: dict | None = None,
    step: int = 10,
    **manifest_edits,
) -> str:
    """A checkpoint of `method` with random trainable tensors; `manifest_edits` replace manifest fields
    (e.g. base_llm={...} with a wrong hash) to build bad inputs."""
    from cora_ray.llm.loading import load_llm
    from cora_ray.model.build import build_model

    cfg = art.config(method)
    if model_overrides:  # e.g. {"delta_scope": "user_prefix"}
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, **model_overrides))
    llm = load_llm(art.llm_cfg, "cpu")
    cf = (
        load_cf_artifact(art.cf_uri, expected_dataset_hash=art.data_hash)
        if method in ("cora", "collm")
        else None
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(cfg.model, llm, cf)
        with torch.no_grad():
            for p in model.trainable_parameters():
                p.add_(torch.randn_like(p) * 0.3)
    with storage.atomic_dir(uri, overwrite=True) as tmp:
        manifest = write_checkpoint_files(
            tmp,
            model.trainable_state_dict(),
            method=method,
            config=to_dict(cfg),
            base_llm={"identity": llm.identity, "weight_hash": llm.weight_hash},
            answer_token_id=llm.answer_token_id,
            negative_token_id=llm.negative_token_id,
            cf_artifact={"uri": art.cf_uri, "hash": cf.artifact_hash, "backbone": "mf"}
            if cf is not None
            else None,
            dataset_hash=art.data_hash,
            metrics={"valid_auc": valid_auc, "valid_uauc": 0.5},
            step=step,
        )
        if manifest_edits:  # re-stamped: a consistent manifest of a checkpoint made with other inputs
            manifests.write(manifests.CHECKPOINT, tmp, {**copy.deepcopy(manifest), **manifest_edits})
    return uri


def build_tiny_artifacts(root: str | Path, users: int = 30, items: int = 40, seed: int = 0) -> TinyArtifacts:
    from cora_ray.llm.tiny import tiny_llm

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    data_uri = str(root / "data")
    manifest = prepare_synthetic(
        data_uri, users=users, items=items, seed=seed, interactions_per_user=12, overwrite=True
    )

    train = protocol.read_split(data_uri, "train", columns=["user_id"])
    known = torch.zeros(manifest["users"] + 1, dtype=torch.bool)
    known[torch.as_tensor(pc.unique(train["user_id"]).to_numpy().astype("int64"))] = True
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mf = MF(manifest["users"], manifest["items"], dim=16, init_std=1.0, known_users=known)
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

    llm_dir = root / "llm"
    tiny = tiny_llm(seed=seed)
    tiny.model.save_pretrained(llm_dir)
    tiny.tokenizer.save_pretrained(llm_dir)
    llm_cfg = LLMConfig(name_or_path=str(llm_dir), answer_token=" Yes", negative_token=" No", dtype="float32")

    art = TinyArtifacts(root, data_uri, manifest["hash"], cf_uri, str(llm_dir), llm_cfg)
    for k, method in enumerate(METHODS):
        art.checkpoints[method] = write_tiny_checkpoint(art, str(root / f"ckpt_{method}"), method, seed=1 + k)
    art.run_dir = str(root / "run_cora")
    write_tiny_checkpoint(art, str(root / "run_cora" / "checkpoint_000000"), "cora", seed=11, valid_auc=0.55)
    write_tiny_checkpoint(art, str(root / "run_cora" / "checkpoint_000001"), "cora", seed=12, valid_auc=0.61)
    write_tiny_checkpoint(art, str(root / "run_cora" / "checkpoint_000002"), "cora", seed=13, valid_auc=0.58)
    return art


_SHARED: dict[str, TinyArtifacts] = {}


def shared_tiny_artifacts(tmp_path_factory) -> TinyArtifacts:
    """One set per test session, shared by tests/infer and tests/eval (both conftests import this module)."""
    if "art" not in _SHARED:
        _SHARED["art"] = build_tiny_artifacts(tmp_path_factory.mktemp("tiny_eval"))
    return _SHARED["art"]
