"""The per-worker training loop that Ray Train runs in every TorchTrainer worker.

    TorchTrainer(train_loop_per_worker, train_loop_config=spec.to_config(), datasets=..., ...)

Each worker:
1. builds the frozen LLM, the frozen CF backbone and the trainable parts (same seed on every rank), and
   restores a checkpoint: the run's own latest (`ray.train.get_checkpoint()`, after a worker failure or
   when a stopped run is continued) or the one named by `--resume`;
2. wraps the model with `deepspeed.initialize` (ZeRO stage from config, gloo on CPU, nccl on GPU) with a
   client AdamW over the trainable parameters only and the docs/method.md §4 warm-up + cosine schedule. Precision: the
   frozen LLM is loaded in `llm.dtype` (bf16 on GPU) and the trainable parts stay fp32 — they are the master
   weights; DeepSpeed's own bf16 mode stays off because it would cast them (deepspeed_config.py);
3. streams its shard of "train" (`get_dataset_shard("train").iter_torch_batches`), micro-batch by micro-batch
   with gradient accumulation and clipping done by DeepSpeed;
4. every `eval_every` optimizer steps (and at the last step) scores its shard of "valid" in lockstep with the
   other ranks (a rank whose shard is exhausted runs throw-away forwards on its last training batch, so that
   ZeRO-3's parameter all-gathers stay matched, and drops those scores), gathers every rank's rows, checks that
   each validation row was scored exactly once, and computes AUC / UAUC;
5. reports the metrics with a checkpoint (fp32 trainable tensors gathered from ZeRO-3 partitions; the
   optimizer state per rank) through `ray.train.report`, and stops early after `patience` validations without
   a better AUC.

Rank 0 logs progress (console, progress.jsonl, Prometheus through `ray.util.metrics`, TensorBoard when
`train.tensorboard`): cora_ray/train/progress.py.
"""

from __future__ import annotations

import math
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cora_ray.errors import TrainingError

# ---------------------------------------------------------------------------------------------------------
# what the driver hands to every worker
# ---------------------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------


def _setup_process(cfg: Any) -> None:
    import warnings

    import torch

    # DeepSpeed still calls the deprecated torch.distributed collectives: one warning per step otherwise
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.distributed")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if not cfg.train.use_gpu:
        os.environ["DS_ACCELERATOR"] = "cpu"
    threads = cfg.train.cpu_threads_per_worker or max(1, (os.cpu_count() or 1) // cfg.train.num_workers)
    torch.set_num_threads(threads)


def _frozen_ids(*modules: Any) -> set[int]:
    ids: set[int] = set()
    for m in modules:
        if m is not None:
            ids |= {id(p) for p in m.parameters()}
    return ids


def _load_cf(cfg: Any, dataset_hash: str) -> Any:
    if cfg.model.method not in ("cora", "collm"):
        return None
    from cora_ray.cf import load_cf_artifact

    return load_cf_artifact(cfg.model.cf_artifact, expected_dataset_hash=dataset_hash)


def _register_external_params(model: Any) -> None:
    """ZeRO-3: parameters read outside their own module's forward must be gathered for the model's forward —
    the LM head row used for the score (read directly, docs/architecture.md §5.2) and the CF tables (read by `embed`)."""
    import deepspeed

    head = model.lm.get_output_embeddings()
    for p in head.parameters():
        deepspeed.zero.register_external_parameter(model, p)
    cf = getattr(model, "cf", None)
    if cf is not None:
        for p in cf.parameters():
            deepspeed.zero.register_external_parameter(model, p)


class _Restored:
    """A checkpoint to start from, opened as a local directory."""

    def __init__(self, directory: Path, source: str) -> None:
        from cora_ray.checkpoint import read_checkpoint_manifest
        from cora_ray.train.state import TRAIN_STATE_FILE, TrainState

        self.directory = directory
        self.source = source
        self.manifest = read_checkpoint_manifest(str(directory))
        state_file = directory / TRAIN_STATE_FILE
        self.state = (
            TrainState.from_json(state_file.read_text())
            if state_file.is_file()
            else TrainState(step=int(self.manifest["step"]))
        )

    def trainable(self) -> dict:
        from cora_ray.checkpoint import load_trainable

        return load_trainable(str(self.directory), self.manifest)


def _open_restore_point(spec: RunSpec, stack: Any) -> _Restored | None:
    """The run's own latest checkpoint (failure recovery / continued run) or else `spec.resume_from`."""
    import ray.train

    from cora_ray import storage

    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        d = Path(stack.enter_context(ckpt.as_directory()))
        return _Restored(d, f"the run's latest checkpoint {ckpt.path}")
    if spec.resume_from:
        uri = spec.resume_from
        if storage.is_s3(uri):
            local = Path(tempfile.mkdtemp(prefix="cora_resume_"))
            stack.callback(shutil.rmtree, local, True)
            storage.download_dir(uri, local, spec.endpoint)
            return _Restored(local, uri)
        return _Restored(Path(uri), uri)
    return None


def _all_reduce_mean(value: float, device: Any) -> float:
    import torch
    import torch.distributed as dist

    t = torch.tensor([value], dtype=torch.float64 if device.type == "cpu" else torch.float32, device=device)
    dist.all_reduce(t)
    return float(t.item()) / dist.get_world_size()


def parameter_dtypes(model: Any, *, trainable: bool) -> list[str]:
    """The distinct dtypes (e.g. ["torch.bfloat16"]) of the model's trainable or frozen parameters."""
    return sorted({str(p.dtype) for p in model.parameters() if p.requires_grad == trainable})


def check_precision(model: Any, llm_dtype: Any, *, when: str) -> None:
    """Trainable parameters fp32 (the master weights) and the frozen LLM in `llm_dtype`, or TrainingError."""
    from cora_ray.train.deepspeed_config import TRAINABLE_DTYPE

    bad = sorted(
        {
            f"{n}: {p.dtype}"
            for n, p in model.named_parameters()
            if p.requires_grad and p.dtype != TRAINABLE_DTYPE
        }
    )
    if bad:
        raise TrainingError(
            f"{when}: {len(bad)} trainable parameter(s) are not {TRAINABLE_DTYPE} (e.g. {bad[0]}); the trainable "
            "parts must stay fp32 master weights (DeepSpeed's bf16/fp16 modes must be off: deepspeed_config.py)"
        )
    lm = sorted({str(p.dtype) for p in model.lm.parameters() if not p.requires_grad})
    if lm != [str(llm_dtype)]:
        raise TrainingError(f"{when}: the frozen LLM's parameters are {lm}, expected {llm_dtype} (llm.dtype)")


def _any_rank(flag: bool, device: Any) -> bool:
    import torch
    import torch.distributed as dist

    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


# ---------------------------------------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------------------------------------


def validate(
    engine: Any,
    batches: Iterator[dict],
    filler: dict,
    expected_keys: np.ndarray,
    device: Any,
    rows_out: dict | None = None,
) -> dict[str, float]:
    """Score this rank's validation shard in lockstep with the other ranks; AUC/UAUC over all ranks' rows.

    Every rank returns the same metrics; `rows_out`, when given, receives every rank's rows (user_id,
    item_id, label, score arrays). Raises TrainingError when a validation row is missing or was scored
    twice."""
    import torch
    import torch.distributed as dist

    from cora_ray.eval.metrics import auc_uauc
    from cora_ray.train.pipeline import row_keys

    engine.eval()
    users, items, labels, scores = [], [], [], []
    with torch.no_grad():
        while True:
            batch = next(batches, None)
            if not _any_rank(batch is not None, device):
                break
            logits = engine(batch if batch is not None else filler)  # filler: keeps ZeRO-3 gathers matched
            if batch is not None:
                scores.append(logits.float().cpu().numpy())
                users.append(batch["user_id"].cpu().numpy())
                items.append(batch["item_id"].cpu().numpy())
                labels.append(batch["label"].cpu().numpy())
    engine.train()
    local = [np.concatenate(a) if a else np.zeros(0) for a in (users, items, labels, scores)]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, local)
    u, i, y, s = (np.concatenate([g[k] for g in gathered]) for k in range(4))
    got = np.sort(row_keys(u.astype(np.int64), i.astype(np.int64)))
    if not np.array_equal(got, np.sort(expected_keys)):
        raise TrainingError(
            f"validation scored {len(got)} rows ({len(np.unique(got))} distinct) but expected each of "
            f"{len(expected_keys)} rows exactly once: the validation shards overlap or lost rows"
        )
    if rows_out is not None:
        rows_out.update(user_id=u.astype(np.int64), item_id=i.astype(np.int64), label=y, score=s)
    m = auc_uauc(u, y, s)
    logits, targets = torch.from_numpy(s.astype(np.float64)), torch.from_numpy(y.astype(np.float64))
    return {
        "valid_loss": float(torch.nn.functional.binary_cross_entropy_with_logits(logits, targets)),
        "valid_auc": float(m["auc"]),
        "valid_uauc": float(m["uauc"]),
        "valid_rows": int(m["rows"]),
        "valid_uauc_users": int(m["users_used"]),
    }


# ---------------------------------------------------------------------------------------------------------
# checkpoints
# ---------------------------------------------------------------------------------------------------------


def gathered_trainable_state(model: Any, zero_stage: int) -> dict:
    """The trainable tensors as full fp32 CPU tensors (ZeRO-3: all-gathered from the partitions; every rank
    calls). They are the master weights themselves: DeepSpeed's bf16 mode is off (deepspeed_config.py), so
    the module's trainable parameters are the fp32 tensors the optimizer updates (ZeRO 0), or exact copies
    of its fp32 partitions (ZeRO 1-3)."""
    import deepspeed

    from cora_ray.train.deepspeed_config import TRAINABLE_DTYPE

    if zero_stage == 3:
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
    spec: RunSpec,
    cfg: Any,
    llm: Any,
    state: Any,
    metrics: dict,
    valid_rows: dict | None = None,
) -> None:
    """Every rank writes its part into `directory`; Ray Train merges the ranks' files into one checkpoint."""
    from cora_ray.checkpoint import write_checkpoint_files
    from cora_ray.train.state import TRAIN_STATE_FILE, save_optimizer_state, save_valid_scores

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


# ---------------------------------------------------------------------------------------------------------
# the loop
# ---------------------------------------------------------------------------------------------------------


def train_loop_per_worker(config: dict) -> None:
    """Ray Train entry point (see the module docstring)."""
    import contextlib

    with contextlib.ExitStack() as stack:
        _train(config["spec"], stack)


def _train(spec: RunSpec, stack: Any) -> None:
    from cora_ray.config import ExperimentConfig, from_dict

    cfg = from_dict(ExperimentConfig, spec.experiment, source="train_loop_config")
    _setup_process(cfg)

    import ray.train
    import ray.train.torch
    import torch
    import torch.nn.functional as F

    from cora_ray.train.deepspeed_config import (
        build_optimizer,
        deepspeed_config,
        disable_hidden_compiles,
        resolve_precision,
        torch_dtype,
    )
    from cora_ray.train.pipeline import ReplayedShard, iter_model_batches
    from cora_ray.train.progress import Progress, say
    from cora_ray.train.schedule import WarmupCosineSchedule
    from cora_ray.train.state import TrainState, inner_optimizer, load_optimizer_state

    disable_hidden_compiles()
    import deepspeed

    t = cfg.train
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    precision = resolve_precision(cfg.llm.dtype, t.use_gpu)
    t_setup = time.perf_counter()

    # --- model: identical initialisation of the trainable parts on every rank --------------------------
    torch.manual_seed(t.seed)
    from cora_ray.llm.loading import load_llm

    llm_dtype = torch_dtype(precision)
    llm = load_llm(cfg.llm, device, llm_dtype)
    cf = _load_cf(cfg, spec.dataset_hash)
    if cf is not None:
        cf.to(device)
    frozen = _frozen_ids(llm.model, cf)
    from cora_ray.model.build import build_model

    model = build_model(cfg.model, llm, cf)
    model.to(device)
    if t.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    check_precision(model, llm_dtype, when="model built")

    # --- restore (before DeepSpeed partitions anything) ------------------------------------------------
    restored = _open_restore_point(spec, stack)
    state = TrainState(world_size=world, zero_stage=t.zero_stage)
    if restored is not None:
        from cora_ray.checkpoint import check_compatible

        check_compatible(restored.manifest, uri=restored.source, llm_weight_hash=llm.weight_hash)
        model.load_trainable_state_dict(restored.trainable())
        prev = restored.state
        state = TrainState(
            step=prev.step,
            best_auc=prev.best_auc,
            best_step=prev.best_step,
            bad_evals=prev.bad_evals,
            epoch=prev.epoch,
            samples=prev.samples,
            world_size=world,
            zero_stage=t.zero_stage,
        )

    optimizer = build_optimizer(model, t, frozen)
    trainable_numel = sum(p.numel() for p in model.trainable_parameters())
    if t.zero_stage == 3:
        _register_external_params(model)
    sched_args = dict(
        lr=t.lr,
        warmup_steps=t.warmup_steps,
        warmup_start_lr=t.warmup_start_lr,
        min_lr=t.min_lr,
        max_steps=t.max_steps,
    )
    engine, ds_optimizer, _, scheduler = deepspeed.initialize(
        model=model,
        optimizer=optimizer,
        config=deepspeed_config(t, world_size=world, precision=precision),
        lr_scheduler=lambda opt: WarmupCosineSchedule(opt, **sched_args, last_step=state.step),
    )
    check_precision(model, llm_dtype, when="after deepspeed.initialize")
    optimizer_note = "fresh"
    if restored is not None:
        same_layout = restored.state.world_size == world and restored.state.zero_stage == t.zero_stage
        why = load_optimizer_state(restored.directory, rank, ds_optimizer) if same_layout else "layout"
        if not _any_rank(why is not None, device):  # every rank restored its partition
            optimizer_note = "restored"
        else:  # all or nothing: ranks with and without moments would drift apart
            inner_optimizer(ds_optimizer).state.clear()
            optimizer_note = (
                f"not restored (checkpoint: {restored.state.world_size} workers, ZeRO-{restored.state.zero_stage}; "
                f"now {world}, ZeRO-{t.zero_stage}): Adam moments restart"
                if not same_layout
                else f"not restored ({why or 'another rank could not'}): Adam moments restart"
            )

    samples_per_step = t.micro_batch_size * t.grad_accum_steps * world
    progress = Progress(
        spec.run_uri,
        max_steps=t.max_steps,
        eval_every=t.eval_every,
        samples_per_step=samples_per_step,
        start_step=state.step,
        log_every=t.log_every,
        enabled=rank == 0,
        tensorboard=t.tensorboard,
        endpoint=spec.endpoint,
    )
    import torch.distributed as dist

    hosts: list[Any] = [None] * world
    dist.all_gather_object(hosts, {"rank": rank, "host": socket.gethostname(), "pid": os.getpid()})
    progress.event(
        "start",
        step=state.step,
        restored_from=None if restored is None else restored.source,
        optimizer_state=optimizer_note,
        workers=hosts,
        world_size=world,
        zero_stage=t.zero_stage,
        precision=precision,
        llm_dtype=parameter_dtypes(model.lm, trainable=False),
        trainable_dtypes=parameter_dtypes(model, trainable=True),
        device=str(device),
        setup_s=round(time.perf_counter() - t_setup, 2),
        trainable_parameters=trainable_numel,
    )
    if rank == 0:
        what = (
            "from scratch"
            if restored is None
            else f"from step {state.step} ({restored.source}; optimizer {optimizer_note})"
        )
        say(
            f"[train] {world} worker(s), ZeRO-{t.zero_stage}, frozen LLM {precision} + fp32 trainables "
            f"on {device}, "
            f"{samples_per_step} samples/step; starting {what}; setup {time.perf_counter() - t_setup:.1f} s"
        )

    # --- data ---------------------------------------------------------------------------------------
    train_shard = ray.train.get_dataset_shard("train")
    eval_batch = t.eval_batch_size or t.micro_batch_size
    valid_shard = ReplayedShard(
        ray.train.get_dataset_shard("valid"), batch_size=eval_batch, pad_id=spec.pad_id, device=device
    )

    def micro_batches() -> Iterator[dict]:
        while True:
            n = 0
            for batch in iter_model_batches(
                train_shard,
                batch_size=t.micro_batch_size,
                pad_id=spec.pad_id,
                device=device,
                drop_last=True,
                shuffle_buffer=t.shuffle_buffer_rows if t.shuffle_buffer_rows > 0 else None,
                shuffle_seed=t.seed + 7919 * state.epoch + state.step,
            ):
                n += 1
                yield batch
            if n == 0:
                raise TrainingError(
                    f"the train split gave worker {rank} no full micro-batch of {t.micro_batch_size} rows; "
                    "use fewer workers or a smaller train.micro_batch_size"
                )
            state.epoch += 1

    batches = micro_batches()
    last_batch: dict | None = None
    engine.train()

    # --- optimise ------------------------------------------------------------------------------------
    while state.step < t.max_steps and not state.stopped_early:
        t0 = time.perf_counter()
        losses = []
        for _ in range(t.grad_accum_steps):
            last_batch = next(batches)
            logits = engine(last_batch)  # (B,)
            loss = F.binary_cross_entropy_with_logits(logits.float(), last_batch["label"].float())
            engine.backward(loss)
            engine.step()
            losses.append(float(loss.detach()))
        state.step += 1
        state.samples += samples_per_step
        loss_value = _all_reduce_mean(sum(losses) / len(losses), device)
        lr = scheduler.lr(state.step - 1)
        if not math.isfinite(loss_value):
            raise TrainingError(
                f"the training loss is {loss_value} at step {state.step} (learning rate {lr:.3g}); "
                "lower train.lr or check the data"
            )
        progress.train_step(state.step, loss_value, lr, time.perf_counter() - t0)

        if state.step % t.eval_every == 0 or state.step >= t.max_steps:
            t_eval = time.perf_counter()
            valid_batches = iter(valid_shard)  # Ray Data encodes it on the first validation only
            valid_rows: dict = {}
            metrics = validate(engine, valid_batches, last_batch, spec.valid_keys, device, valid_rows)
            if metrics["valid_auc"] > state.best_auc:
                state.best_auc, state.best_step, state.bad_evals = metrics["valid_auc"], state.step, 0
            else:
                state.bad_evals += 1
            if state.bad_evals >= t.patience and state.step < t.max_steps:
                state.stopped_early = True
            metrics.update(
                step=state.step,
                epoch=state.epoch,
                loss=loss_value,
                lr=lr,
                samples=state.samples,
                samples_per_s=round(progress.samples_per_second(), 4) if rank == 0 else 0.0,
                best_valid_auc=state.best_auc,
                best_step=state.best_step,
                stopped_early=state.stopped_early,
            )
            progress.validation(state.step, metrics, time.perf_counter() - t_eval)
            with tempfile.TemporaryDirectory(prefix="cora_ckpt_") as tmp:
                write_checkpoint(
                    Path(tmp),
                    rank=rank,
                    model=model,
                    engine=engine,
                    spec=spec,
                    cfg=cfg,
                    llm=llm,
                    state=state,
                    metrics=metrics,
                    valid_rows=valid_rows,
                )
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
            if state.stopped_early and rank == 0:
                say(
                    f"[train] early stop at step {state.step}: {t.patience} validations without a better AUC "
                    f"than {state.best_auc:.4f} (step {state.best_step})"
                )
    progress.event(
        "end",
        step=state.step,
        best_auc=state.best_auc,
        best_step=state.best_step,
        stopped_early=state.stopped_early,
    )
    progress.close()
