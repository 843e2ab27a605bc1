"""What a training checkpoint holds beyond the model contract (cora_ray.checkpoint), so a run can go on.

    <ckpt>/trainable.safetensors, manifest.json   the contract: what evaluation and serving load
    <ckpt>/train_state.json                       step, best AUC and its step, validations without improvement
    <ckpt>/optimizer/rank-<r>.safetensors         AdamW moments of rank r's ZeRO partition (optional: 2x the
                                                  size of trainable.safetensors in fp32)
    <ckpt>/valid_scores.safetensors               the validation that made the checkpoint, row by row: user_id,
                                                  item_id (int64), label, score (float32 logits) — 24 bytes a
                                                  row; lets anyone check a reload scores what training scored

No pickle: the optimizer state is stored tensor by tensor (`g<group>.p<index>.<name>`) from the torch
AdamW inside DeepSpeed (for ZeRO 1-3 its parameters are this rank's flat fp32 partitions). It is restored
only when the world size, ZeRO stage and every tensor shape match; otherwise training continues from the
restored weights and step with fresh Adam moments, and says so.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from cora_ray.checkpoint import write_checkpoint_files
from cora_ray.errors import TrainingError
from cora_ray.train.deepspeed_config import TRAINABLE_DTYPE

TRAIN_STATE_FILE = "train_state.json"
OPTIMIZER_DIR = "optimizer"
VALID_SCORES_FILE = "valid_scores.safetensors"
VALID_SCORE_COLUMNS = ("user_id", "item_id", "label", "score")


@dataclass
class TrainState:
    """The counters a resumed run needs (all ranks hold the same values)."""

    step: int = 0
    best_auc: float = float("-inf")
    best_step: int | None = None
    bad_evals: int = 0  # validations since the last improvement
    epoch: int = 0
    samples: int = 0  # training rows consumed, all workers
    world_size: int = 1
    zero_stage: int = 0
    stopped_early: bool = False

    def to_json(self) -> str:
        d = asdict(self)
        if d["best_auc"] == float("-inf"):
            d["best_auc"] = None
        return json.dumps(d, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> TrainState:
        d = json.loads(text)
        if d.get("best_auc") is None:
            d["best_auc"] = float("-inf")
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def inner_optimizer(ds_optimizer: Any) -> torch.optim.Optimizer:
    """The torch optimizer inside DeepSpeed's wrapper (ZeRO 1-3, bf16), or the optimizer itself (ZeRO 0 fp32)."""
    inner = getattr(ds_optimizer, "optimizer", None)
    return inner if isinstance(inner, torch.optim.Optimizer) else ds_optimizer


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """Every state tensor of the optimizer (AdamW: step, exp_avg, exp_avg_sq), keyed by group and position.

    The parameters themselves (for ZeRO: this rank's fp32 master partition) are not stored: DeepSpeed builds
    them from the module's weights, which are restored from trainable.safetensors first."""
    out: dict[str, torch.Tensor] = {}
    for gi, group in enumerate(optimizer.param_groups):
        for pi, p in enumerate(group["params"]):
            for name, value in optimizer.state.get(p, {}).items():
                if isinstance(value, torch.Tensor):
                    out[f"g{gi}.p{pi}.{name}"] = value.detach().to("cpu").clone()
    return out


def save_optimizer_state(directory: str | Path, rank: int, ds_optimizer: Any) -> Path:
    path = Path(directory) / OPTIMIZER_DIR / f"rank-{rank}.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.contiguous() for k, v in optimizer_tensors(inner_optimizer(ds_optimizer)).items()}
    save_file(tensors, str(path))
    return path


def load_optimizer_state(directory: str | Path, rank: int, ds_optimizer: Any) -> str | None:
    """Restore this rank's optimizer state; returns None on success, else why it was not restored (then
    nothing was changed)."""
    path = Path(directory) / OPTIMIZER_DIR / f"rank-{rank}.safetensors"
    if not path.is_file():
        return f"no optimizer state for rank {rank} in the checkpoint"
    saved = load_file(str(path))
    opt = inner_optimizer(ds_optimizer)
    plan: list[tuple[torch.Tensor, dict[str, torch.Tensor]]] = []
    used: set[str] = set()
    for gi, group in enumerate(opt.param_groups):
        for pi, p in enumerate(group["params"]):
            prefix = f"g{gi}.p{pi}."
            state = {k[len(prefix) :]: v for k, v in saved.items() if k.startswith(prefix)}
            for name, value in state.items():
                if name != "step" and tuple(value.shape) != tuple(p.shape):
                    return (
                        f"optimizer state {prefix}{name} has shape {tuple(value.shape)}, the partition now "
                        f"{tuple(p.shape)} (another model size or partitioning)"
                    )
            used |= {prefix + k for k in state}
            plan.append((p, state))
    if used != set(saved):
        return "the optimizer's parameter groups differ from the checkpoint's"
    with torch.no_grad():
        for p, state in plan:
            if state:  # AdamW keeps `step` as a CPU float tensor
                opt.state[p] = {
                    k: v.to(torch.float32) if k == "step" else v.to(p.device, p.dtype)
                    for k, v in state.items()
                }
    return None


def save_valid_scores(directory: str | Path, rows: dict[str, Any]) -> Path:
    """Write validation's rows (`VALID_SCORE_COLUMNS`, numpy arrays of one length) into the checkpoint folder."""
    dtypes = {"user_id": torch.int64, "item_id": torch.int64, "label": torch.float32, "score": torch.float32}
    tensors = {k: torch.from_numpy(np.ascontiguousarray(rows[k])).to(dtypes[k]) for k in VALID_SCORE_COLUMNS}
    path = Path(directory) / VALID_SCORES_FILE
    save_file(tensors, str(path))
    return path


def load_valid_scores(directory: str | Path) -> dict[str, Any]:
    """The rows `save_valid_scores` wrote, as numpy arrays."""
    return {k: v.numpy() for k, v in load_file(str(Path(directory) / VALID_SCORES_FILE)).items()}


def gathered_trainable_state(model: Any, zero_stage: int) -> dict[str, torch.Tensor]:
    """The trainable tensors as full fp32 CPU tensors (ZeRO-3: all-gathered from the partitions; every rank
    calls). They are the master weights themselves: DeepSpeed's bf16 mode is off (deepspeed_config.py), so
    the module's trainable parameters are the fp32 tensors the optimizer updates (ZeRO 0), or exact copies
    of its fp32 partitions (ZeRO 1-3)."""
    if zero_stage == 3:
        # imported here: DeepSpeed picks its accelerator at import, after the worker set DS_ACCELERATOR
        # (recipe.setup_process; docs/platform_notes.md)
        import deepspeed

        params = model.trainable_parameters()
        with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
            state = {k: v.detach().to("cpu").clone() for k, v in model.trainable_state_dict().items()}
    else:
        state = {k: v.detach().to("cpu").clone() for k, v in model.trainable_state_dict().items()}
    lowered = sorted(k for k, v in state.items() if v.dtype != TRAINABLE_DTYPE)
    if lowered:
        raise TrainingError(
            f"checkpoint: trainable tensor {lowered[0]} is {state[lowered[0]].dtype}, not {TRAINABLE_DTYPE} "
            f"({len(lowered)} such): a checkpoint must hold the fp32 master weights, not rounded copies"
        )
    return state


def write_checkpoint(
    directory: Path,
    *,
    rank: int,
    model: Any,
    engine: Any,
    spec: Any,
    cfg: Any,
    llm: Any,
    state: TrainState,
    metrics: dict,
    valid_rows: dict | None = None,
) -> None:
    """Every rank writes its part into `directory` (rank 0 the contract files, train state and validation
    rows; each rank its optimizer partition); Ray Train merges the ranks' files into one checkpoint.
    `spec` is the worker's RunSpec (cora_ray/train/worker.py)."""
    trainable = gathered_trainable_state(model, cfg.train.zero_stage)
    if rank == 0:
        write_checkpoint_files(
            directory,
            trainable,
            method=cfg.model.method,
            config=spec.experiment,
            base_llm={"identity": llm.identity, "weight_hash": llm.weight_hash},
            answer_token_id=llm.answer_token_id,
            negative_token_id=llm.negative_token_id,
            cf_artifact=spec.cf_record,
            dataset_hash=spec.dataset_hash,
            metrics=metrics,
            step=state.step,
        )
        (directory / TRAIN_STATE_FILE).write_text(state.to_json())
        if valid_rows:
            save_valid_scores(directory, valid_rows)
    if cfg.train.save_optimizer_state:
        save_optimizer_state(directory, rank, engine.optimizer)
