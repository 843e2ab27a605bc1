"""DeepSpeed config and optimizer: ZeRO stage / precision from config, decay only on matrices, and an AdamW that
holds the trainable parameters and none of the frozen LLM's or CF backbone's."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cora_ray.config import GeneratorConfig, ModelConfig, TrainConfig
from cora_ray.errors import ConfigError, TrainingError
from cora_ray.train.deepspeed_config import (
    build_optimizer,
    deepspeed_config,
    is_no_decay,
    optimizer_numel,
    param_groups,
    resolve_precision,
)


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_config_carries_stage_batch_and_clipping(stage):
    t = TrainConfig(zero_stage=stage, micro_batch_size=4, grad_accum_steps=3, grad_clip=0.5)
    ds = deepspeed_config(t, world_size=2, precision="fp32")
    assert ds["zero_optimization"]["stage"] == stage
    assert ds["train_batch_size"] == 4 * 3 * 2
    assert ds["train_micro_batch_size_per_gpu"] == 4 and ds["gradient_accumulation_steps"] == 3
    assert ds["gradient_clipping"] == 0.5
    assert ds["zero_allow_untested_optimizer"] is True
    assert not ds["bf16"]["enabled"] and not ds["fp16"]["enabled"]


@pytest.mark.parametrize(
    ("stage", "world", "runs"),
    [(0, 1, 0), (1, 1, 0), (2, 1, 0), (3, 1, 3), (1, 2, 1), (2, 2, 2), (2, 8, 2), (3, 8, 3)],
)
def test_zero_1_and_2_run_as_stage_0_on_one_worker(stage, world, runs):
    """ZeRO-1/2 partition optimizer state over ranks: one rank has nothing to partition, only their copies."""
    t = TrainConfig(zero_stage=stage, micro_batch_size=4)
    assert t.effective_zero_stage(world) == runs
    ds = deepspeed_config(t, world_size=world, precision="fp32")
    assert ds["zero_optimization"]["stage"] == runs
    assert ("contiguous_gradients" in ds["zero_optimization"]) == (runs >= 2)


def test_precision_is_fp32_on_cpu_and_bf16_on_gpu():
    assert resolve_precision("auto", use_gpu=False) == "fp32"
    assert resolve_precision("auto", use_gpu=True) == "bf16"
    # bf16 is the frozen LLM's dtype only: DeepSpeed's bf16 mode would cast the fp32 trainable parts too
    ds = deepspeed_config(TrainConfig(), world_size=1, precision="bf16")
    assert not ds["bf16"]["enabled"] and not ds["fp16"]["enabled"]
    for use_gpu in (False, True):  # fp32 trainables would get no loss scaling through fp16 activations
        with pytest.raises(ConfigError, match="float16 is not supported for training"):
            resolve_precision("float16", use_gpu=use_gpu)


def test_weight_decay_on_matrices_only():
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
    groups = param_groups(list(model.named_parameters()), weight_decay=1e-3)
    decay = {id(p) for p in groups[0]["params"]}
    assert groups[0]["weight_decay"] == 1e-3 and groups[1]["weight_decay"] == 0.0
    assert decay == {id(model[0].weight)}
    assert is_no_decay("0.bias", model[0].bias) and is_no_decay("1.weight", model[1].weight)


def test_optimizer_holds_no_frozen_parameter_of_a_real_cora_model():
    from cora_ray.cf.models import MF
    from cora_ray.llm.tiny import tiny_llm
    from cora_ray.model.build import build_model

    llm = tiny_llm(seed=0)
    cf = MF(10, 12, dim=8, init_std=0.1, known_users=torch.ones(11, dtype=torch.bool))
    cf.requires_grad_(False)
    frozen = {id(p) for p in llm.model.parameters()} | {id(p) for p in cf.parameters()}
    cfg = ModelConfig(
        rank=4,
        alpha=8.0,
        generator=GeneratorConfig(num_queries=2, num_layers=1, hidden_size=16, num_heads=2, ffn_size=32),
    )
    model = build_model(cfg, llm, cf)
    opt = build_optimizer(model, TrainConfig(), frozen)
    held = [p for g in opt.param_groups for p in g["params"]]
    assert held and not ({id(p) for p in held} & frozen)
    assert {id(p) for p in held} == {id(p) for p in model.trainable_parameters()}
    assert optimizer_numel(opt) == sum(p.numel() for p in model.trainable_parameters())
    # P (zero-initialised, a matrix) is decayed; the generator's norms are not
    decayed = {id(p) for p in opt.param_groups[0]["params"]}
    names = {id(p): n for n, p in model.named_parameters()}
    p_matrices = [i for i, n in names.items() if n.endswith(".P")]
    assert p_matrices and set(p_matrices) <= decayed
    no_decay = {id(p) for p in opt.param_groups[1]["params"]}
    params = {id(p): p for p in model.parameters()}
    assert no_decay and all(params[i].ndim == 1 for i in no_decay)  # biases and LayerNorm scales
    assert any(names[i].endswith("ln_self.weight") for i in no_decay)


def test_a_frozen_parameter_that_requires_grad_is_refused():
    frozen = nn.Linear(3, 3)
    model = nn.Sequential(frozen, nn.Linear(3, 1))
    with pytest.raises(TrainingError, match="frozen"):
        build_optimizer(model, TrainConfig(), {id(p) for p in frozen.parameters()})
    frozen.requires_grad_(False)
    model[1].requires_grad_(False)
    with pytest.raises(TrainingError, match="no trainable"):
        build_optimizer(model, TrainConfig(), {id(p) for p in frozen.parameters()})
