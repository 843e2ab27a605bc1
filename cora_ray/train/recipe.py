"""The training recipe each Ray Train worker runs, in the shape of torchtune's recipes:

    recipe = CoRATrainingRecipe(spec, stack)   # spec: cora_ray/train/worker.py RunSpec
    recipe.setup()      # _setup_process, _setup_model, _restore_weights, _setup_engine, _setup_progress, _setup_data
    recipe.train()      # optimizer steps; every eval_every steps validate() then save()
    recipe.cleanup()

- `_setup_model`: the frozen LLM (in `llm.dtype`), the frozen CF backbone where the method needs one and the
  trainable parts, seeded identically on every rank;
- `_restore_weights`: the run's own latest checkpoint (`ray.train.get_checkpoint()`, after a worker failure or
  when a stopped run is continued) or the one named by `--resume`, before DeepSpeed partitions anything;
- `_setup_engine`: `deepspeed.initialize` (ZeRO stage from config) with a client AdamW over the trainable
  parameters only and the docs/method.md §4 warm-up + cosine schedule, then the Adam moments when every rank
  can restore its partition. Precision (docs/training.md, "Precision"): the trainable parts stay fp32 master
  weights; DeepSpeed's bf16 mode stays off (deepspeed_config.py);
- `_setup_data`: this rank's shard of "train" (an endless iterator of micro-batches, epoch after epoch) and of
  "valid" (encoded once, replayed after: pipeline.ReplayedShard);
- `train()`: micro-batch by micro-batch, gradient accumulation and clipping by DeepSpeed, the loss from
  `RecModel.loss` (the one loss), one host sync per optimizer step (the all-reduced mean loss);
- `validate()`: lockstep scoring of the "valid" shards and AUC / UAUC (cora_ray/train/validation.py), best
  AUC and patience bookkeeping; `save()`: the checkpoint (cora_ray/train/state.py) through `ray.train.report`.

Rank 0 logs progress (console, progress.jsonl, Prometheus, TensorBoard): cora_ray/train/progress.py.
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import socket
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ray.train
import ray.train.torch
import torch
import torch.distributed as dist

from cora_ray import storage
from cora_ray.cf import load_cf_artifact
from cora_ray.checkpoint import check_compatible, load_trainable, read_checkpoint_manifest
from cora_ray.config import ExperimentConfig, from_dict
from cora_ray.errors import ArtifactMismatchError, TrainingError
from cora_ray.llm.loading import load_llm
from cora_ray.model.build import build_model, model_class
from cora_ray.train.deepspeed_config import (
    build_optimizer,
    check_precision,
    deepspeed_config,
    disable_hidden_compiles,
    parameter_dtypes,
    register_external_params,
    resolve_precision,
    torch_dtype,
)
from cora_ray.train.delta_spread import DeltaSpread
from cora_ray.train.pipeline import ReplayedShard, iter_model_batches
from cora_ray.train.progress import Progress, say
from cora_ray.train.schedule import WarmupCosineSchedule
from cora_ray.train.state import (
    TRAIN_STATE_FILE,
    TrainState,
    inner_optimizer,
    load_optimizer_state,
    write_checkpoint,
)
from cora_ray.train.validation import any_rank, validate

if TYPE_CHECKING:
    from cora_ray.train.worker import RunSpec


def setup_process(cfg: ExperimentConfig) -> None:
    """Per-process settings before DeepSpeed is imported: its accelerator (DS_ACCELERATOR, read at import)
    and torch's intra-op threads."""
    # DeepSpeed still calls the deprecated torch.distributed collectives: one warning per step otherwise
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.distributed")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if not cfg.train.use_gpu:
        os.environ["DS_ACCELERATOR"] = "cpu"
    threads = cfg.train.cpu_threads_per_worker or max(1, (os.cpu_count() or 1) // cfg.train.num_workers)
    torch.set_num_threads(threads)


def _frozen_ids(*modules: Any) -> set[int]:
    return {id(p) for m in modules if m is not None for p in m.parameters()}


def _all_reduce_mean(value: torch.Tensor) -> float:
    """The mean over ranks of a one-element tensor, as a Python float (one host sync)."""
    dist.all_reduce(value)
    return float(value.item()) / dist.get_world_size()


class _Restored:
    """A checkpoint to start from, opened as a local directory."""

    def __init__(self, directory: Path, source: str) -> None:
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
        return load_trainable(str(self.directory), self.manifest)


def open_restore_point(spec: RunSpec, stack: ExitStack) -> _Restored | None:
    """The run's own latest checkpoint (failure recovery / continued run) or else `spec.resume_from`."""
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


class CoRATrainingRecipe:
    """One worker's training run: `setup()`, `train()`, `cleanup()` (see the module docstring)."""

    def __init__(self, spec: RunSpec, stack: ExitStack) -> None:
        self.spec, self.stack = spec, stack
        self.cfg = from_dict(ExperimentConfig, spec.experiment, source="train_loop_config")
        self.t = self.cfg.train

    # --- setup -----------------------------------------------------------------------------------------
    def setup(self) -> None:
        """Everything before the first step, in this order (the restore must precede ZeRO's partitioning)."""
        setup_process(self.cfg)
        t_setup = time.perf_counter()
        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        self.zero_stage = self.t.effective_zero_stage(self.world)  # 1 and 2 run as 0 on one worker
        self.device = ray.train.torch.get_device()
        self.precision = resolve_precision(self.cfg.llm.dtype, self.t.use_gpu)
        self._setup_model()
        self._restore_weights()
        self._setup_engine()
        self._setup_progress(t_setup)
        self._setup_data()

    def _setup_model(self) -> None:
        """Frozen LLM + CF backbone + trainable parts, identically initialised on every rank."""
        torch.manual_seed(self.t.seed)
        self.llm_dtype = torch_dtype(self.precision)
        self.llm = load_llm(self.cfg.llm, self.device, self.llm_dtype)
        cf = None
        if model_class(self.cfg.model.method).needs_cf:
            cf = load_cf_artifact(self.cfg.model.cf_artifact, expected_dataset_hash=self.spec.dataset_hash)
            cf.to(self.device)
        self.frozen = _frozen_ids(self.llm.model, cf)
        self.model = build_model(self.cfg.model, self.llm, cf)
        self.model.to(self.device)
        if self.t.gradient_checkpointing:
            self.model.enable_gradient_checkpointing()
        check_precision(self.model, self.llm_dtype, when="model built")

    def _restore_weights(self) -> None:
        """Trainable weights and counters from a checkpoint, if there is one (before DeepSpeed)."""
        self.restored = open_restore_point(self.spec, self.stack)
        self.state = TrainState(world_size=self.world, zero_stage=self.zero_stage)
        if self.restored is None:
            if self.cfg.model.init_from:
                self._init_from(self.cfg.model.init_from)
            return
        r = self.restored
        check_compatible(r.manifest, uri=r.source, llm_weight_hash=self.llm.weight_hash)
        self.model.load_trainable_state_dict(r.trainable())
        prev = r.state
        # the counters carry over; this run's layout replaces the old one, and it has not stopped early
        self.state = dataclasses.replace(
            prev, world_size=self.world, zero_stage=self.zero_stage, stopped_early=False
        )

    def _init_from(self, uri: str) -> None:
        """A fresh run's start from another run's checkpoint (`model.init_from`; CoLLM stage 2: the stage-1
        TALLRec LoRA), refused unless its base LLM, dataset and answer tokens are this run's."""
        endpoint = self.spec.endpoint
        manifest = read_checkpoint_manifest(uri, endpoint)
        check_compatible(
            manifest, uri=uri, llm_weight_hash=self.llm.weight_hash, dataset_hash=self.spec.dataset_hash
        )
        theirs = (manifest["answer_token_id"], manifest["negative_token_id"])
        if theirs != self.model.answer_tokens:
            raise ArtifactMismatchError(
                f"model.init_from {uri} scores answer / negative tokens {theirs}, this run {self.model.answer_tokens}; "
                "use the stage-1 run's llm.answer_token / llm.negative_token"
            )
        self.model.load_stage1_lora(load_trainable(uri, manifest, endpoint), manifest["config"]["model"], uri)

    def _setup_engine(self) -> None:
        """deepspeed.initialize with the client AdamW and the warm-up + cosine schedule; Adam moments restored."""
        t = self.t
        disable_hidden_compiles()
        import deepspeed  # after setup_process and disable_hidden_compiles: both act on DeepSpeed's import

        optimizer = build_optimizer(self.model, t, self.frozen)
        # what the optimizer updates (a faithful CoLLM also checkpoints its frozen stage-1 LoRA: not counted)
        self.trainable_numel = sum(p.numel() for p in self.model.trainable_parameters() if p.requires_grad)
        if self.zero_stage == 3:
            register_external_params(self.model)
        self.engine, self.ds_optimizer, _, self.scheduler = deepspeed.initialize(
            model=self.model,
            optimizer=optimizer,
            config=deepspeed_config(t, world_size=self.world, precision=self.precision),
            lr_scheduler=lambda opt: WarmupCosineSchedule.for_train(opt, t, last_step=self.state.step),
        )
        check_precision(self.model, self.llm_dtype, when="after deepspeed.initialize")
        if self.world == 1 and self.zero_stage == 0:
            # one rank: DeepSpeed's gradient all-reduce would flatten, "reduce" and copy back every gradient for
            # nothing (~1.5% of a CPU step); it skips it itself when there is no process group
            self.engine.enable_backward_allreduce = False
        self.optimizer_note = "fresh" if self.restored is None else self._restore_optimizer()

    def _restore_optimizer(self) -> str:
        """Adam moments from the checkpoint, all ranks or none (ranks with and without would drift apart)."""
        r = self.restored
        same_layout = r.state.world_size == self.world and r.state.zero_stage == self.zero_stage
        why = load_optimizer_state(r.directory, self.rank, self.ds_optimizer) if same_layout else "layout"
        if not any_rank(why is not None, self.device):  # every rank restored its partition
            return "restored"
        inner_optimizer(self.ds_optimizer).state.clear()
        if not same_layout:
            return (
                f"not restored (checkpoint: {r.state.world_size} workers, ZeRO-{r.state.zero_stage}; "
                f"now {self.world}, ZeRO-{self.zero_stage}): Adam moments restart"
            )
        return f"not restored ({why or 'another rank could not'}): Adam moments restart"

    def _setup_progress(self, t_setup: float) -> None:
        """Rank 0's progress log and the run's "start" event (every rank's host and pid)."""
        t = self.t
        self.samples_per_step = t.micro_batch_size * t.grad_accum_steps * self.world
        self.progress = Progress(
            self.spec.run_uri,
            max_steps=t.max_steps,
            eval_every=t.eval_every,
            samples_per_step=self.samples_per_step,
            start_step=self.state.step,
            log_every=t.log_every,
            enabled=self.rank == 0,
            tensorboard=t.tensorboard,
            endpoint=self.spec.endpoint,
        )
        # rank 0 watches how much G varies between its rows (a collapsing generator shows in the progress line)
        self.g_spread = DeltaSpread(self.model.collab_weight_generator() if self.rank == 0 else None)
        hosts: list[Any] = [None] * self.world
        dist.all_gather_object(hosts, {"rank": self.rank, "host": socket.gethostname(), "pid": os.getpid()})
        restored_from = None if self.restored is None else self.restored.source
        self.progress.event(
            "start",
            step=self.state.step,
            restored_from=restored_from,
            optimizer_state=self.optimizer_note,
            workers=hosts,
            world_size=self.world,
            zero_stage=self.zero_stage,
            zero_stage_configured=t.zero_stage,
            precision=self.precision,
            llm_dtype=parameter_dtypes(self.model.lm, trainable=False),
            trainable_dtypes=parameter_dtypes(self.model, trainable=True),
            device=str(self.device),
            setup_s=round(time.perf_counter() - t_setup, 2),
            trainable_parameters=self.trainable_numel,
        )
        if self.rank == 0:
            init = self.cfg.model.init_from
            what = (
                ("from scratch" + (f", LoRA from {init} (model.init_from)" if init else ""))
                if self.restored is None
                else f"from step {self.state.step} ({restored_from}; optimizer {self.optimizer_note})"
            )
            stage_note = (
                "" if self.zero_stage == t.zero_stage else f" (train.zero_stage {t.zero_stage}: one worker)"
            )
            say(
                f"[train] {self.world} worker(s), ZeRO-{self.zero_stage}{stage_note}, frozen LLM {self.precision} + fp32 "
                f"trainables on {self.device}, {self.samples_per_step} samples/step; starting {what}; "
                f"setup {time.perf_counter() - t_setup:.1f} s"
            )

    def _setup_data(self) -> None:
        """This rank's micro-batches of "train" (endless) and its replayable "valid" shard."""
        self.train_shard = ray.train.get_dataset_shard("train")
        self.valid_shard = ReplayedShard(
            ray.train.get_dataset_shard("valid"),
            batch_size=self.t.eval_batch_size or self.t.micro_batch_size,
            pad_id=self.spec.pad_id,
            device=self.device,
        )
        # rows grouped by prompt prefix arrive in order; a local shuffle buffer would scatter the groups again
        keep_order = self.t.shuffle == "prefix_groups" or self.t.shuffle_buffer_rows == 0
        self.shuffle_buffer = None if keep_order else self.t.shuffle_buffer_rows
        self.batches = self._micro_batches()
        self.last_batch: dict | None = None

    def _micro_batches(self) -> Iterator[dict]:
        """Full micro-batches of this rank's train shard, epoch after epoch (reshuffled per epoch)."""
        t, state = self.t, self.state
        while True:
            n = 0
            for batch in iter_model_batches(
                self.train_shard,
                batch_size=t.micro_batch_size,
                pad_id=self.spec.pad_id,
                device=self.device,
                drop_last=True,
                shuffle_buffer=self.shuffle_buffer,
                shuffle_seed=t.seed + 7919 * state.epoch + state.step,
            ):
                n += 1
                yield batch
            if n == 0:
                raise TrainingError(
                    f"the train split gave worker {self.rank} no full micro-batch of {t.micro_batch_size} "
                    "rows; use fewer workers or a smaller train.micro_batch_size"
                )
            state.epoch += 1

    # --- the loop --------------------------------------------------------------------------------------
    def train(self) -> None:
        """Optimizer steps until max_steps or early stop; validate and save every eval_every steps and last."""
        t, state = self.t, self.state
        self.engine.train()
        while state.step < t.max_steps and not state.stopped_early:
            t0 = time.perf_counter()
            loss, lr, data_wait = self._train_step()
            seconds = time.perf_counter() - t0
            spread = self.g_spread.take() if self.progress.logs_at(state.step) else None
            self.progress.train_step(state.step, loss, lr, seconds, g_spread=spread, data_wait_s=data_wait)
            if state.step % t.eval_every == 0 or state.step >= t.max_steps:
                metrics, valid_rows = self.validate(loss, lr)
                self.save(metrics, valid_rows)
                if state.stopped_early and self.rank == 0:
                    say(
                        f"[train] early stop at step {state.step}: {t.patience} validations without a better "
                        f"AUC than {state.best_auc:.4f} (step {state.best_step})"
                    )

    def _train_step(self) -> tuple[float, float, float]:
        """One optimizer step of grad_accum_steps micro-batches → (mean loss over ranks, its learning rate,
        seconds this rank waited for its micro-batches)."""
        t, state = self.t, self.state
        # the micro-batch losses are summed on the device: one host sync per optimizer step (the all-reduce)
        total = torch.zeros(1, dtype=torch.float64 if self.device.type == "cpu" else torch.float32)
        total = total.to(self.device)
        data_wait = 0.0
        for _ in range(t.grad_accum_steps):
            t_wait = time.perf_counter()
            self.last_batch = next(self.batches)
            data_wait += time.perf_counter() - t_wait
            loss = self.model.loss(self.last_batch, logits=self.engine(self.last_batch))
            self.engine.backward(loss)
            self.engine.step()
            total += loss.detach().to(total.dtype)
        state.step += 1
        state.samples += self.samples_per_step
        loss_value = _all_reduce_mean(total / t.grad_accum_steps)
        lr = self.scheduler.lr(state.step - 1)
        if not math.isfinite(loss_value):
            raise TrainingError(
                f"the training loss is {loss_value} at step {state.step} (learning rate {lr:.3g}); "
                "lower train.lr or check the data"
            )
        return loss_value, lr, data_wait

    def validate(self, loss: float, lr: float) -> tuple[dict, dict]:
        """Score "valid" on all ranks (lockstep), update best AUC / patience → (metrics, every rank's rows)."""
        t, state = self.t, self.state
        t_eval = time.perf_counter()
        valid_rows: dict = {}
        batches = iter(self.valid_shard)  # Ray Data encodes it on the first validation only
        metrics = validate(
            self.engine, batches, self.last_batch, self.spec.valid_keys, self.device, valid_rows
        )
        if metrics["valid_auc"] > state.best_auc:
            state.best_auc, state.best_step, state.bad_evals = metrics["valid_auc"], state.step, 0
        else:
            state.bad_evals += 1
        if state.bad_evals >= t.patience and state.step < t.max_steps:
            state.stopped_early = True
        metrics.update(
            step=state.step,
            epoch=state.epoch,
            loss=loss,
            lr=lr,
            samples=state.samples,
            samples_per_s=round(self.progress.samples_per_second(), 4) if self.rank == 0 else 0.0,
            best_valid_auc=state.best_auc,
            best_step=state.best_step,
            stopped_early=state.stopped_early,
        )
        self.progress.validation(state.step, metrics, time.perf_counter() - t_eval)
        return metrics, valid_rows

    def save(self, metrics: dict, valid_rows: dict) -> None:
        """Write this rank's part of the checkpoint and report it with the metrics (every rank calls)."""
        with tempfile.TemporaryDirectory(prefix="cora_ckpt_") as tmp:
            write_checkpoint(
                Path(tmp),
                rank=self.rank,
                model=self.model,
                engine=self.engine,
                spec=self.spec,
                cfg=self.cfg,
                llm=self.llm,
                state=self.state,
                metrics=metrics,
                valid_rows=valid_rows,
            )
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))

    def cleanup(self) -> None:
        """The run's "end" event; closes the progress log."""
        s = self.state
        self.progress.event(
            "end", step=s.step, best_auc=s.best_auc, best_step=s.best_step, stopped_early=s.stopped_early
        )
        self.progress.close()
        self.g_spread.close()
