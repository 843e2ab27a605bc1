"""`model.init_from` (CoLLM stage 2 starting from a stage-1 TALLRec checkpoint): the recipe's `_init_from`,
on checkpoints written by the real `write_checkpoint_files`, without Ray (the method needs only the run's
LLM hash, dataset hash and model)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from cora_ray.cf.models import MF
from cora_ray.checkpoint import write_checkpoint_files
from cora_ray.config import ExperimentConfig, ModelConfig, to_dict
from cora_ray.errors import ArtifactMismatchError
from cora_ray.llm.tiny import tiny_llm
from cora_ray.model.build import build_model
from cora_ray.train.recipe import CoRATrainingRecipe

DATASET = "d" * 64


def _stage1(
    directory, *, dataset_hash: str = DATASET, lora_alpha: float = 16.0, negative: str | None = " No"
):
    """A trained-looking TALLRec checkpoint on tiny_llm(0); returns its LoRA tensors."""
    llm = tiny_llm(0, negative_token=negative)
    cfg = ExperimentConfig(model=ModelConfig(method="tallrec", lora_alpha=lora_alpha))
    model = build_model(cfg.model, llm, None)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in model.trainable_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    state = {k: v.clone() for k, v in model.trainable_state_dict().items()}
    write_checkpoint_files(
        directory,
        state,
        method="tallrec",
        config=to_dict(cfg),
        base_llm={"identity": llm.identity, "weight_hash": llm.weight_hash},
        answer_token_id=llm.answer_token_id,
        negative_token_id=llm.negative_token_id,
        cf_artifact=None,
        dataset_hash=dataset_hash,
        metrics={"valid_auc": 0.6},
        step=2,
    )
    return state


def _stage2_run(uri: str, llm_seed: int = 0) -> SimpleNamespace:
    """What `_init_from` reads of a recipe: spec (endpoint, dataset hash), llm (weight hash), model."""
    llm = tiny_llm(llm_seed)
    cfg = ModelConfig(method="collm", collm_variant="faithful", init_from=uri)
    model = build_model(cfg, llm, MF(num_users=10, num_items=10, dim=16))
    return SimpleNamespace(
        spec=SimpleNamespace(endpoint=None, dataset_hash=DATASET), llm=llm, model=model, cfg=cfg
    )


def test_init_from_loads_the_stage1_lora(tmp_path):
    stage1 = _stage1(tmp_path / "s1")
    run = _stage2_run(str(tmp_path / "s1"))
    projector = {n: p.clone() for n, p in run.model.named_parameters() if n.startswith("projector.")}
    CoRATrainingRecipe._init_from(run, str(tmp_path / "s1"))
    state = run.model.trainable_state_dict()
    assert all(torch.equal(state[n], t) for n, t in stage1.items())
    assert all(torch.equal(state[n], t) for n, t in projector.items())
    assert {n for n, p in run.model.named_parameters() if p.requires_grad} == set(projector)


def test_init_from_refuses_another_dataset_llm_answer_tokens_or_lora(tmp_path):
    _stage1(tmp_path / "data", dataset_hash="e" * 64)
    with pytest.raises(ArtifactMismatchError, match="dataset hash"):
        CoRATrainingRecipe._init_from(_stage2_run(str(tmp_path / "data")), str(tmp_path / "data"))
    _stage1(tmp_path / "llm")
    with pytest.raises(ArtifactMismatchError, match="base LLM weight hash"):
        CoRATrainingRecipe._init_from(_stage2_run(str(tmp_path / "llm"), llm_seed=1), str(tmp_path / "llm"))
    _stage1(tmp_path / "tokens", negative=None)
    with pytest.raises(ArtifactMismatchError, match="answer / negative tokens"):
        CoRATrainingRecipe._init_from(_stage2_run(str(tmp_path / "tokens")), str(tmp_path / "tokens"))
    _stage1(tmp_path / "alpha", lora_alpha=32.0)
    with pytest.raises(ArtifactMismatchError, match="alpha 32"):
        CoRATrainingRecipe._init_from(_stage2_run(str(tmp_path / "alpha")), str(tmp_path / "alpha"))


def test_a_frozen_stage1_lora_stays_fp32_inside_a_bf16_llm():
    """The frozen LoRA lives inside the LLM but is checkpointed: check_precision wants it fp32, the LLM bf16."""
    from cora_ray.errors import TrainingError
    from cora_ray.train.deepspeed_config import check_precision

    llm = tiny_llm(0, dtype=torch.bfloat16)
    cfg = ModelConfig(method="collm", collm_variant="faithful", init_from="stage1")
    model = build_model(cfg, llm, MF(num_users=10, num_items=10, dim=16))
    check_precision(model, torch.bfloat16, when="built")
    layer = model.lm.model.layers[0].self_attn.q_proj
    layer.lora_B.data = layer.lora_B.data.to(torch.bfloat16)  # a rounded copy would go into the checkpoint
    with pytest.raises(TrainingError, match="lora_B: torch.bfloat16"):
        check_precision(model, torch.bfloat16, when="built")
