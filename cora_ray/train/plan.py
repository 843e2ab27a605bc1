"""What a training config will do, before anything starts: `python jobs/train.py --config … --plan [--json]`.

No Ray, no torch, nothing downloaded: the plan reads the config, a local dataset manifest if there is one, and
a local base-LLM config.json if there is one. The arithmetic (docs/training.md "Planning a run"):

- batch: global = micro × workers × accumulation (cora_ray/train/batch.py); training rows R = max_steps × global.
- validations: one every `eval_every` steps and one at the last step → ceil(max_steps / eval_every); each
  scores `eval_limit` rows of valid_small (all of them when unset), so V = validations × rows per validation.
- cost per row, with N the base LLM's matmul weights and T tokens per prompt: a forward is F = 2·N·T FLOP. The
  LLM is frozen, so a training row's backward computes activation gradients only (one GEMM per linear, the
  size of its forward; the weight-gradient GEMM of full fine-tuning is skipped): training row = 2F = 4·N·T
  (3F = 6·N·T with gradient checkpointing, which recomputes the forward). A validation row is one forward,
  F: half a training row (a third with gradient checkpointing). docs/deploy.md §8 checks the 2× on CPU.
- validation share of compute = V·F / (V·F + R·k·F) = V / (V + k·R), k = 2 (3 with checkpointing); it does
  not depend on N or T.
- FLOP = (k·R + V)·2·N·T; device hours = FLOP / (peak × MFU), at a stated peak and MFU.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cora_ray.config import ExperimentConfig

ASSUMED_PROMPT_TOKENS = (
    190  # mean ML-1M prompt with 10 history titles (docs/deploy.md §8); capped by max_prompt_tokens
)
ASSUMED_MFU = 0.35  # one GPU at micro-batch 8 x 190 tokens (docs/deploy.md §8); expect less at micro-batch 1
PEAK_FLOPS = {"A100": 312e12, "H100": 989e12, "A10G": 70e12}  # dense bf16 peaks, FLOP/s
DEFAULT_GPU = "A100"
CPU_MEASURED_FLOPS = 90e9  # the 2-core CPU here, fp32, measured (docs/deploy.md §8 cross-check); MFU 1 for it


@dataclass(frozen=True)
class LLMShape:
    """The matmul shape of a LLaMA-style decoder."""

    layers: int
    hidden: int
    ffn: int
    heads: int
    kv_heads: int

    @property
    def matmul_parameters(self) -> int:
        """q, k, v, o and the three FFN matrices of every layer (no embeddings, no LM head)."""
        kv = self.hidden * self.kv_heads // self.heads
        return self.layers * (self.hidden * (2 * self.hidden + 2 * kv) + 3 * self.hidden * self.ffn)


_LLAMA_7B = LLMShape(layers=32, hidden=4096, ffn=11008, heads=32, kv_heads=32)
_LLAMA_13B = LLMShape(layers=40, hidden=5120, ffn=13824, heads=40, kv_heads=40)
KNOWN_LLMS = {  # a substring of llm.name_or_path (lower case) → shape
    "smollm2-135m": LLMShape(layers=30, hidden=576, ffn=1536, heads=9, kv_heads=3),
    "vicuna-7b": _LLAMA_7B,
    "llama-2-7b": _LLAMA_7B,
    "llama-7b": _LLAMA_7B,
    "vicuna-13b": _LLAMA_13B,
    "llama-2-13b": _LLAMA_13B,
}


@dataclass
class RunPlan:
    """The resolved run of one config (JSON: `jobs/train.py --plan --json`)."""

    config: str
    name: str
    method: str
    global_batch_size: int
    micro_batch_size: int
    num_workers: int
    grad_accum_steps: int
    max_steps: int
    training_rows: int
    train_split_rows: int | None
    epochs: float | None
    eval_every: int
    validations: int
    validation_rows_per_validation: int | None
    validation_rows: int | None
    train_row_cost_in_forwards: int
    validation_compute_share: float | None
    llm: str
    llm_matmul_parameters: float | None
    llm_parameters_source: str
    tokens_per_row: int
    flop_per_forward_row: float | None
    training_flop: float | None
    validation_flop: float | None
    total_flop: float | None
    device: str
    device_flops: float
    mfu: float
    device_hours: float | None
    wall_hours: float | None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The plan as a JSON-serialisable dict."""
        return asdict(self)


def _local(uri: str, base_dir: Path) -> Path | None:
    if uri.startswith("s3://") or "://" in uri:
        return None
    p = Path(uri)
    return p if p.is_absolute() else base_dir / p


def _dataset_counts(cfg: ExperimentConfig, base_dir: Path, notes: list[str]) -> dict:
    from cora_ray.bootstrap import prepare_data_command

    path = _local(cfg.data.uri, base_dir)
    if path is None:
        notes.append(f"dataset {cfg.data.uri} not read (--plan reads nothing remote): train rows unknown")
        return {}
    manifest = path / "manifest.json"
    if not manifest.is_file():
        notes.append(
            f"no dataset at {cfg.data.uri} (no manifest.json): train rows unknown; make it with "
            f"`{prepare_data_command(cfg, cfg.data.uri)}`"
        )
        return {}
    try:
        return dict(json.loads(manifest.read_text()).get("counts") or {})
    except (OSError, ValueError) as exc:
        notes.append(f"dataset manifest {manifest} unreadable ({exc}): train rows unknown")
        return {}


def llm_matmul_parameters(cfg: ExperimentConfig, base_dir: Path) -> tuple[float | None, str]:
    """(matmul weights of the base LLM, where the number comes from); (None, why) when unknown.

    In order: `llm.num_parameters`, a local model directory's config.json, the table KNOWN_LLMS."""
    name = cfg.llm.name_or_path
    if cfg.llm.num_parameters is not None:
        return float(cfg.llm.num_parameters), "llm.num_parameters"
    local = None if name.startswith("bundled:") else _local(name, base_dir)
    if local is not None and (local / "config.json").is_file():
        c = json.loads((local / "config.json").read_text())
        try:
            shape = LLMShape(
                layers=int(c["num_hidden_layers"]),
                hidden=int(c["hidden_size"]),
                ffn=int(c["intermediate_size"]),
                heads=int(c["num_attention_heads"]),
                kv_heads=int(c.get("num_key_value_heads") or c["num_attention_heads"]),
            )
            return float(shape.matmul_parameters), f"{local / 'config.json'}"
        except (KeyError, TypeError, ValueError):
            pass  # not a LLaMA-style config: fall through to the table
    for key, shape in KNOWN_LLMS.items():
        if key in name.lower():
            return float(shape.matmul_parameters), f"known shape of {key} (cora_ray/train/plan.py)"
    return None, "unknown: set llm.num_parameters (matmul weights) for a FLOP estimate"


def _device_peak(cfg: ExperimentConfig, mfu: float | None, notes: list[str]) -> tuple[str, float, float]:
    """(device name, peak FLOP/s, MFU) of the run: a GPU's bf16 peak at the assumed MFU, or the measured CPU rate."""
    t = cfg.train
    if not t.use_gpu:
        return "CPU", CPU_MEASURED_FLOPS, 1.0 if mfu is None else mfu
    device = t.accelerator_type or DEFAULT_GPU
    if device not in PEAK_FLOPS:
        notes.append(f"no peak for accelerator {device}: {DEFAULT_GPU}'s used")
    flops = PEAK_FLOPS.get(device, PEAK_FLOPS[DEFAULT_GPU])
    used_mfu = ASSUMED_MFU if mfu is None else mfu
    if t.micro_batch_size < 8 and mfu is None:
        notes.append(
            f"MFU {used_mfu:.0%} assumes micro-batches of ~8 rows; at micro-batch {t.micro_batch_size} "
            "the GEMMs are small and utilisation lower (docs/deploy.md §8)"
        )
    return device, flops, used_mfu


def build_plan(
    cfg: ExperimentConfig,
    *,
    config_path: str = "",
    base_dir: str | Path = ".",
    mfu: float | None = None,
    tokens_per_row: int | None = None,
) -> RunPlan:
    """The plan of `cfg` (already loaded with overrides, batch resolved by TrainConfig)."""
    base = Path(base_dir)
    t = cfg.train
    notes: list[str] = []
    counts = _dataset_counts(cfg, base, notes)
    train_split = counts.get("train")
    valid_small = counts.get("valid_small")

    training_rows = t.max_steps * t.global_batch_size
    validations = math.ceil(t.max_steps / t.eval_every)
    if t.eval_limit is not None:
        per_validation = t.eval_limit if valid_small is None else min(t.eval_limit, valid_small)
    else:
        per_validation = valid_small
        if valid_small is None:
            notes.append("train.eval_limit is unset and valid_small's size unknown: validation share unknown")
    validation_rows = None if per_validation is None else validations * per_validation
    k = 3 if t.gradient_checkpointing else 2
    share = None if validation_rows is None else validation_rows / (validation_rows + k * training_rows)

    n, n_source = llm_matmul_parameters(cfg, base)
    tokens = tokens_per_row or min(ASSUMED_PROMPT_TOKENS, cfg.prompt.max_prompt_tokens)
    forward = None if n is None else 2.0 * n * tokens
    training_flop = None if forward is None else k * training_rows * forward
    validation_flop = None if forward is None or validation_rows is None else validation_rows * forward
    total = None if training_flop is None or validation_flop is None else training_flop + validation_flop

    device, flops, used_mfu = _device_peak(cfg, mfu, notes)
    hours = None if total is None else total / (flops * used_mfu) / 3600
    return RunPlan(
        config=config_path,
        name=cfg.name,
        method=cfg.model.method,
        global_batch_size=t.global_batch_size,
        micro_batch_size=t.micro_batch_size,
        num_workers=t.num_workers,
        grad_accum_steps=t.grad_accum_steps,
        max_steps=t.max_steps,
        training_rows=training_rows,
        train_split_rows=train_split,
        epochs=None if not train_split else training_rows / train_split,
        eval_every=t.eval_every,
        validations=validations,
        validation_rows_per_validation=per_validation,
        validation_rows=validation_rows,
        train_row_cost_in_forwards=k,
        validation_compute_share=share,
        llm=cfg.llm.name_or_path,
        llm_matmul_parameters=n,
        llm_parameters_source=n_source,
        tokens_per_row=tokens,
        flop_per_forward_row=forward,
        training_flop=training_flop,
        validation_flop=validation_flop,
        total_flop=total,
        device=device,
        device_flops=flops,
        mfu=used_mfu,
        device_hours=hours,
        wall_hours=None if hours is None else hours / t.num_workers,
        notes=notes,
    )


def _num(v: float | None, fmt: str) -> str:
    return "unknown" if v is None else format(v, fmt)


def format_plan(p: RunPlan) -> str:
    """The plan as a few console lines."""
    epochs = (
        f"{p.epochs:.2f} epochs of {p.train_split_rows:,} train rows"
        if p.epochs is not None
        else "epochs unknown (train split size not read)"
    )
    share = "unknown" if p.validation_compute_share is None else f"{p.validation_compute_share:.1%}"
    per_val = _num(p.validation_rows_per_validation, ",")
    lines = [
        f"[plan] {p.config or p.name}: {p.method}, base LLM {p.llm}",
        f"  global batch     {p.global_batch_size} rows/step = micro-batch {p.micro_batch_size} × {p.num_workers} "
        f"worker(s) × {p.grad_accum_steps} accumulation step(s)",
        f"  steps            {p.max_steps:,} (at most; early stopping may end sooner) → {p.training_rows:,} "
        f"training rows, {epochs}",
        f"  validation       every {p.eval_every:,} steps → {p.validations:,} validations × {per_val} rows = "
        f"{_num(p.validation_rows, ',')} rows",
        f"  validation share {share} of compute (a validation row = 1/{p.train_row_cost_in_forwards} of a "
        "training row: forward only vs forward + activation backward of the frozen LLM)",
        f"  FLOP             {_num(p.total_flop, '.3g')} = (training {_num(p.training_flop, '.3g')} + validation "
        f"{_num(p.validation_flop, '.3g')}); N = {_num(p.llm_matmul_parameters, '.4g')} matmul weights "
        f"({p.llm_parameters_source}), {p.tokens_per_row} tokens/row (assumed), forward = 2·N·T",
        f"  {(p.device + '-hours'):<17}{_num(p.device_hours, '.2f')} at {p.device_flops / 1e12:g} TFLOP/s × MFU "
        f"{p.mfu:.0%}; wall ≈ {_num(p.wall_hours, '.2f')} h on {p.num_workers} worker(s) at the same MFU",
    ]
    lines += [f"  note: {n}" for n in p.notes]
    return "\n".join(lines)
