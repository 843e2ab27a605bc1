"""The DeepSpeed side of a run: its JSON config, the AdamW parameter groups, and the CPU workarounds.

    ds_config = deepspeed_config(cfg.train, world_size=2, precision="fp32")
    optimizer = build_optimizer(model, cfg.train, frozen_ids)        # trainable parameters only
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config, lr_scheduler=...)

A client torch optimizer is used on purpose: DeepSpeed's own FusedAdam / DeepSpeedCPUAdam would JIT-compile
C++ ops first (~200 s each on CPU). `zero_allow_untested_optimizer` lets ZeRO wrap it.

Precision (docs/training.md, "Precision"): `precision` is the dtype of the FROZEN LLM only, which the worker
loads in that dtype itself. DeepSpeed's `bf16` / `fp16` sections stay off, always: enabled, DeepSpeed casts
every parameter of the module — the trainable generator and P too — so the forward would run bf16 trainables
and the module (what checkpoints save) would hold bf16-rounded copies of the fp32 masters. With them off, the
trainable parameters are fp32 and are themselves the master weights under ZeRO 0-3, gradients reach them in
fp32 (the collaborative layers cast P and G to the activations' dtype inside the forward), and ZeRO-3
partitions and all-gathers the bf16 LLM and the fp32 trainables each in its own dtype.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterable
from typing import Any, Literal

import torch
from torch import nn

from cora_ray.config import TrainConfig
from cora_ray.errors import ConfigError, TrainingError

Precision = Literal["fp32", "bf16", "fp16"]

# Names of 1-D parameters are not needed: anything with ndim < 2 (biases, norm scales) gets no weight decay;
# the name test catches 2-D parameters that are norms or biases in some implementations.
_NO_DECAY_NAME_PARTS = ("bias", "norm", "ln_", ".ln", "layernorm")


def resolve_precision(llm_dtype: str, use_gpu: bool) -> Precision:
    """The frozen LLM's training dtype: fp32 on CPU and bf16 on GPU unless the config names one (`llm.dtype`).

    float16 is refused for training: the trainable parts stay fp32 without DeepSpeed's fp16 loss scaling, and
    gradients through fp16 activations would underflow unscaled (bf16 has fp32's exponent range)."""
    if llm_dtype == "auto":
        return "bf16" if use_gpu else "fp32"
    precision = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}[llm_dtype]
    if precision == "fp16":
        raise ConfigError(
            "llm.dtype float16 is not supported for training (fp32 trainable parts get no loss scaling "
            "through fp16 activations); use bfloat16 (GPUs with bf16), float32 or auto"
        )
    return precision


def torch_dtype(precision: Precision) -> torch.dtype:
    """ "fp32" / "bf16" / "fp16" → the torch dtype."""
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


TRAINABLE_DTYPE = torch.float32  # the trainable parts' dtype in every precision: they are the master weights


def deepspeed_config(train: TrainConfig, *, world_size: int, precision: Precision) -> dict[str, Any]:
    """The DeepSpeed JSON config for a run (ZeRO stage: `TrainConfig.effective_zero_stage`, batch sizes, clipping).

    `precision` is accepted for the record but changes nothing here: DeepSpeed's bf16 / fp16 modes stay off
    whatever the frozen LLM's dtype (module docstring)."""
    del precision  # the frozen LLM is loaded in its dtype by the worker; DeepSpeed must not cast the module
    stage = train.effective_zero_stage(world_size)
    zero: dict[str, Any] = {"stage": stage}
    if stage >= 2:
        zero.update(contiguous_gradients=True, overlap_comm=False, reduce_scatter=True)
    if stage == 3:
        # Small tensors (norms, the generator's biases) stay whole on every rank: fewer tiny all-gathers.
        zero.update(stage3_param_persistence_threshold=int(1e4), stage3_prefetch_bucket_size=int(5e7))
    return {
        "train_micro_batch_size_per_gpu": train.micro_batch_size,
        "gradient_accumulation_steps": train.grad_accum_steps,
        "train_batch_size": train.micro_batch_size * train.grad_accum_steps * world_size,
        "gradient_clipping": float(train.grad_clip),
        "zero_optimization": zero,
        "bf16": {"enabled": False},  # never: it would cast the trainable fp32 parts (module docstring)
        "fp16": {"enabled": False},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def is_no_decay(name: str, param: torch.Tensor) -> bool:
    return param.ndim < 2 or any(part in name.lower() for part in _NO_DECAY_NAME_PARTS)


def param_groups(named: Iterable[tuple[str, nn.Parameter]], weight_decay: float) -> list[dict]:
    """AdamW groups: `weight_decay` on matrices, 0 on biases and norms (docs/method.md §4)."""
    decay, no_decay = [], []
    for name, p in named:
        (no_decay if is_no_decay(name, p) else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay, "name": "decay"}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0, "name": "no_decay"})
    return groups


def build_optimizer(model: nn.Module, train: TrainConfig, frozen_ids: set[int]) -> torch.optim.AdamW:
    """AdamW over the parameters that require grad — and a check that none of them is a frozen one.

    `frozen_ids` holds `id()` of every parameter of the base LLM and the CF backbone, taken before the
    trainable parts were attached."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise TrainingError("the model has no trainable parameters (nothing to optimise)")
    leaked = [n for n, p in named if id(p) in frozen_ids]
    if leaked:
        raise TrainingError(
            f"{len(leaked)} parameter(s) of the frozen LLM / CF backbone require grad (e.g. {leaked[0]}); "
            "the base model must stay frozen"
        )
    # fused: one kernel over each parameter instead of a chain of foreach ops; on this CPU a step over the
    # generator's ~47.5M parameters takes 0.023 s instead of 0.166 s (~2% of a batch-8 training step)
    opt = torch.optim.AdamW(
        param_groups(named, train.weight_decay), lr=train.warmup_start_lr, betas=(0.9, 0.999), fused=True
    )
    held = {id(p) for g in opt.param_groups for p in g["params"]}
    assert not (held & frozen_ids), "optimizer holds frozen parameters"
    return opt


def optimizer_numel(optimizer: Any) -> int:
    """Elements the (possibly ZeRO-wrapped) optimizer updates on this rank; ZeRO-3 shows numel 0, so ds_numel."""
    total = 0
    for g in optimizer.param_groups:
        for p in g["params"]:
            total += int(getattr(p, "ds_numel", 0) or p.numel())
    return total


def disable_hidden_compiles() -> None:
    """Skip DeepSpeed's shared-memory all-reduce op build (~80 s of C++ compile on the first init, used only for
    inference all-reduce, and its bf16 kernels need AVX-512) — docs/platform_notes.md. Call before `deepspeed.initialize`."""
    os.environ.setdefault("DS_ACCELERATOR", "cpu" if not torch.cuda.is_available() else "cuda")
    # `deepspeed.comm.torch` as an attribute resolves to the real torch module: use importlib.
    importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None


def register_external_params(model: Any) -> None:
    """ZeRO-3: parameters read outside their own module's forward must be gathered for the model's forward —
    the LM head row used for the score (read directly, docs/architecture.md §5.2) and the CF tables (read by
    `embed`). Call after `disable_hidden_compiles` (DeepSpeed picks its accelerator at import)."""
    import deepspeed  # imported late on purpose: DS_ACCELERATOR must be set first (docs/platform_notes.md)

    for m in (model.lm.get_output_embeddings(), getattr(model, "cf", None)):
        for p in m.parameters() if m is not None else ():
            deepspeed.zero.register_external_parameter(model, p)


def parameter_dtypes(model: nn.Module, *, trainable: bool) -> list[str]:
    """The distinct dtypes (e.g. ["torch.bfloat16"]) of the model's trainable or frozen parameters."""
    return sorted({str(p.dtype) for p in model.parameters() if p.requires_grad == trainable})


def check_precision(model: Any, llm_dtype: torch.dtype, *, when: str) -> None:
    """Trainable parameters fp32 (the master weights) and the frozen LLM in `llm_dtype`, or TrainingError.

    `model.trainable_parameters()` (what the checkpoint holds) count as trainable here even when frozen: a
    faithful CoLLM's stage-1 LoRA sits inside the LLM, frozen, and stays fp32 like the weights it was trained as."""
    kept = {id(p) for p in model.trainable_parameters()}
    bad = sorted(
        {
            f"{n}: {p.dtype}"
            for n, p in model.named_parameters()
            if (p.requires_grad or id(p) in kept) and p.dtype != TRAINABLE_DTYPE
        }
    )
    if bad:
        raise TrainingError(
            f"{when}: {len(bad)} trainable parameter(s) are not {TRAINABLE_DTYPE} (e.g. {bad[0]}); the trainable "
            "parts must stay fp32 master weights (DeepSpeed's bf16/fp16 modes must be off: deepspeed_config.py)"
        )
    lm = sorted({str(p.dtype) for p in model.lm.parameters() if not p.requires_grad and id(p) not in kept})
    if lm != [str(llm_dtype)]:
        raise TrainingError(f"{when}: the frozen LLM's parameters are {lm}, expected {llm_dtype} (llm.dtype)")
