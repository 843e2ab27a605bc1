"""Driver side of a training run: check everything cheap first, then assemble and run the TorchTrainer.

    plan = prepare_run(cfg, resume=None)           # no Ray yet: config, dataset, CF artifact, tokenizer, ...
    summary = run_training(plan)                   # starts (or joins) Ray, fits, prints the one-screen summary

`prepare_run` raises a `CoraError` naming the problem before any Ray process starts: a dataset or CF artifact
whose manifest is missing or does not match, a base LLM without the answer token, a value out of range, a
ZeRO stage that does not exist, more workers than CPUs, a `--resume` checkpoint made for other data.

Resume:
- `--resume <checkpoint URI>` (a directory with a checkpoint manifest.json): a new run that starts from that
  checkpoint's weights, step, best AUC and (same workers and ZeRO stage) optimizer state.
- `--resume <run URI>` (a `<storage_path>/<run>` directory): the same run goes on in place — Ray Train
  restores its latest checkpoint (`ray.train.get_checkpoint()`), keeps its best-by-AUC retention and appends
  to its progress.jsonl. Raise `train.max_steps` to train a finished run further.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cora_ray import storage
from cora_ray.config import ExperimentConfig, to_dict
from cora_ray.data import protocol
from cora_ray.errors import ConfigError, DataError, StorageError
from cora_ray.ray_cluster import forwarded_env, start_or_join
from cora_ray.ray_local import shutdown_local_cluster
from cora_ray.train import ray_setup

SNAPSHOT_FILE = "checkpoint_manager_snapshot.json"  # Ray Train V2's run state, in <storage_path>/<run>/
SUMMARY_FILE = "summary.json"
TRAIN_SPLIT = "train"
VALID_SPLIT = "valid_small"


# ---------------------------------------------------------------------------------------------------------
# the plan: everything checked before Ray starts
# ---------------------------------------------------------------------------------------------------------


@dataclass
class RunPlan:
    cfg: ExperimentConfig
    run_name: str
    storage_path: str
    dataset_manifest: dict
    cf_record: dict | None
    valid_keys: np.ndarray
    encoder_factory: Callable[[], Any]
    pad_id: int
    resume_from: str | None = None  # a checkpoint URI
    continue_run: bool = False  # True: `--resume` named this run's own directory
    notes: list[str] = field(default_factory=list)

    @property
    def run_uri(self) -> str:
        return storage.join(self.storage_path, self.run_name)

    @property
    def endpoint(self) -> str | None:
        return self.cfg.data.s3_endpoint


def resolve_local_paths(cfg: ExperimentConfig, base_dir: str | Path) -> ExperimentConfig:
    """Relative local paths in the config (data, CF artifact, init_from, storage, an LLM directory) → absolute under
    `base_dir`. Needed under `ray job submit --working-dir .`, where the job runs in an uploaded copy of the
    repository without artifacts/ and runs/."""
    base = Path(base_dir).absolute()

    def fix(uri: str | None) -> str | None:
        if uri is None or storage.is_s3(uri) or "://" in uri or Path(uri).is_absolute():
            return uri
        return str(base / uri)

    llm_path = cfg.llm.name_or_path
    if not llm_path.startswith("bundled:") and not storage.is_s3(llm_path) and (base / llm_path).exists():
        llm_path = str(base / llm_path)
    return dataclasses.replace(
        cfg,
        data=dataclasses.replace(cfg.data, uri=fix(cfg.data.uri)),
        model=dataclasses.replace(
            cfg.model, cf_artifact=fix(cfg.model.cf_artifact), init_from=fix(cfg.model.init_from)
        ),
        train=dataclasses.replace(cfg.train, storage_path=fix(cfg.train.storage_path)),
        llm=dataclasses.replace(cfg.llm, name_or_path=llm_path),
    )


def _check_config(cfg: ExperimentConfig, local_cluster: bool) -> None:
    from cora_ray.train.deepspeed_config import resolve_precision

    t = cfg.train
    method = _method_class(cfg)
    if not method.trainable:
        raise ConfigError(
            f"model.method {cfg.model.method} has nothing to train; evaluate it with jobs/evaluate.py instead"
        )
    if method.needs_cf and not cfg.model.cf_artifact:
        raise ConfigError(
            f"model.method {cfg.model.method} needs model.cf_artifact (a jobs/pretrain_cf.py output URI)"
        )
    resolve_precision(cfg.llm.dtype, t.use_gpu)
    if t.tensorboard:  # asked for and not installed: a ConfigError naming the extra, before Ray starts
        from cora_ray.train.progress import tensorboard_writer_class

        tensorboard_writer_class()
    if local_cluster and not t.use_gpu:
        cpus = os.cpu_count() or 1
        if t.num_workers > cpus:
            raise ConfigError(
                f"train.num_workers={t.num_workers} but this machine has {cpus} CPU core(s): each CPU worker needs "
                "a core of its own (set train.num_workers <= cores, or run on a cluster via RAY_ADDRESS)"
            )
    if local_cluster and t.use_gpu:
        import torch

        gpus = torch.cuda.device_count()
        if t.num_workers > gpus:
            raise ConfigError(
                f"train.num_workers={t.num_workers} with train.use_gpu but {gpus} GPU(s) are visible"
            )
    if t.eval_every > t.max_steps:
        raise ConfigError(
            f"train.eval_every={t.eval_every} > train.max_steps={t.max_steps}: validation would only run at the end; "
            "lower eval_every"
        )


def _check_storage(storage_path: str, endpoint: str | None) -> None:
    if storage.is_s3(storage_path):
        bucket = storage_path[len("s3://") :].split("/", 1)[0]
        try:
            if not storage.exists(f"s3://{bucket}", endpoint):
                raise StorageError(f"train.storage_path {storage_path}: bucket '{bucket}' does not exist")
        except StorageError as exc:
            raise StorageError(f"train.storage_path {storage_path} is not reachable: {exc}") from None
        return
    try:
        Path(storage_path).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StorageError(f"train.storage_path {storage_path} cannot be created: {exc}") from None
    if not os.access(storage_path, os.W_OK):
        raise StorageError(f"train.storage_path {storage_path} is not writable")


def _check_dataset(cfg: ExperimentConfig) -> dict:
    manifest = protocol.read_manifest(cfg.data.uri, cfg.data.s3_endpoint)
    counts = manifest.get("counts", {})
    for split in (TRAIN_SPLIT, VALID_SPLIT):
        if not counts.get(split):
            raise DataError(f"dataset {cfg.data.uri}: split '{split}' is empty or missing in its manifest")
    per_step = cfg.train.micro_batch_size * cfg.train.num_workers
    if counts[TRAIN_SPLIT] < per_step:
        raise DataError(
            f"dataset {cfg.data.uri}: the train split has {counts[TRAIN_SPLIT]} rows, fewer than one micro-batch per "
            f"worker ({cfg.train.micro_batch_size} x {cfg.train.num_workers})"
        )
    return manifest


def _method_class(cfg: ExperimentConfig) -> Any:
    """The RecModel class of `model.method`: its class attributes say what the method needs (no model built)."""
    from cora_ray.model.build import model_class

    return model_class(cfg.model.method)


def _check_cf(cfg: ExperimentConfig, dataset_hash: str) -> dict | None:
    if not _method_class(cfg).needs_cf:
        return None
    from cora_ray.cf.artifact import check_dataset, read_cf_manifest

    uri = cfg.model.cf_artifact
    manifest = read_cf_manifest(uri, cfg.data.s3_endpoint)
    check_dataset(manifest, dataset_hash, uri)
    return {"uri": uri, "hash": manifest["hash"], "backbone": manifest.get("backbone")}


def load_tokenizer_only(llm_cfg: Any) -> Any:
    """The base LLM's tokenizer without its weights (the driver builds prompts, the workers hold the model).

    s3:// prefixes and hub ids fetch only tokenizer and config files; see `cora_ray.llm.loading.load_tokenizer`."""
    from cora_ray.llm.loading import load_tokenizer

    return load_tokenizer(llm_cfg)


def driver_tokenizer(cfg: ExperimentConfig) -> tuple[Any, int, int | None]:
    """(tokenizer, answer_token_id, negative_token_id); a ModelError when an answer token is not one token."""
    from cora_ray.llm.loaded import prepare_tokenizer, single_token_id

    tokenizer = prepare_tokenizer(load_tokenizer_only(cfg.llm))
    answer = single_token_id(tokenizer, cfg.llm.answer_token, "llm.answer_token")
    negative = (
        None
        if cfg.llm.negative_token is None
        else single_token_id(tokenizer, cfg.llm.negative_token, "llm.negative_token")
    )
    return tokenizer, answer, negative


def _make_encoder(cfg: ExperimentConfig, placeholders: bool, endpoint: str | None) -> Any:
    """The PromptEncoder of a Ray Data encoder actor, built inside the actor from the config alone: the tokenizer
    and every item title load there (~3 s, once per actor), so what Ray Data ships to each actor is the small
    config, not MBs of tokenizer and titles held in the driver's object store."""
    from cora_ray.data.prompts import PromptEncoder

    tokenizer, _, _ = driver_tokenizer(cfg)
    return PromptEncoder(
        tokenizer,
        cfg.prompt,
        protocol.titles_by_id(protocol.read_items(cfg.data.uri, endpoint)),
        collab_placeholders=placeholders,
        split_suffix=cfg.model.shares_prefix,
    )


def _resolve_resume(resume: str, endpoint: str | None) -> tuple[str | None, str | None]:
    """`--resume URI` → (checkpoint URI, run URI); exactly one is set."""
    resume = resume.rstrip("/")
    if storage.exists(storage.join(resume, storage.MANIFEST), endpoint):
        return resume, None
    if storage.exists(storage.join(resume, SNAPSHOT_FILE), endpoint):
        return None, resume
    raise StorageError(
        f"--resume {resume}: neither a checkpoint (no manifest.json) nor a run directory (no {SNAPSHOT_FILE})"
    )


def validation_keys(cfg: ExperimentConfig, endpoint: str | None = None) -> np.ndarray:
    """The (user, item) keys of the rows every validation scores: `train.eval_limit` rows of valid_small
    drawn with `train.eval_seed` (all of them when unset). Independent of `train.seed`, so that runs over
    several training seeds are validated on the same rows."""
    from cora_ray.train.pipeline import read_split_keys, sample_keys

    keys = read_split_keys(cfg.data.uri, VALID_SPLIT, endpoint)
    return sample_keys(keys, cfg.train.eval_limit, cfg.train.eval_seed)


def prepare_run(
    cfg: ExperimentConfig,
    *,
    resume: str | None = None,
    local_cluster: bool | None = None,
) -> RunPlan:
    """Check the run before anything expensive starts; returns what `run_training` needs."""
    from cora_ray.checkpoint import check_compatible, read_checkpoint_manifest

    if local_cluster is None:
        local_cluster = not os.environ.get("RAY_ADDRESS")
    endpoint = cfg.data.s3_endpoint
    _check_config(cfg, local_cluster)
    from cora_ray.bootstrap import missing_inputs_message

    missing = missing_inputs_message(cfg)  # names the command that makes each missing input
    if missing:
        raise StorageError(missing)
    data_manifest = _check_dataset(cfg)
    cf_record = _check_cf(cfg, data_manifest["hash"])

    resume_from, run_uri = (None, None)
    if resume:
        resume_from, run_uri = _resolve_resume(resume, endpoint)
    if run_uri is not None:
        storage_path = run_uri.rsplit("/", 1)[0] if storage.is_s3(run_uri) else str(Path(run_uri).parent)
        run_name = run_uri.rsplit("/", 1)[1] if storage.is_s3(run_uri) else Path(run_uri).name
    else:
        storage_path = cfg.train.storage_path
        run_name = cfg.train.run_name or f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        if storage.exists(storage.join(storage_path, run_name, SNAPSHOT_FILE), endpoint):
            raise StorageError(
                f"run {storage.join(storage_path, run_name)} already exists; continue it with --resume "
                f"{storage.join(storage_path, run_name)} or choose another train.run_name"
            )
    _check_storage(storage_path, endpoint)

    if resume_from is not None:
        manifest = read_checkpoint_manifest(resume_from, endpoint)
        if manifest.get("method") != cfg.model.method:
            raise ConfigError(
                f"--resume {resume_from} is a {manifest.get('method')} checkpoint, the config trains {cfg.model.method}"
            )
        check_compatible(
            manifest,
            uri=resume_from,
            cf_hash=None if cf_record is None else cf_record["hash"],
            dataset_hash=data_manifest["hash"],
        )
        if int(manifest["step"]) >= cfg.train.max_steps:
            raise ConfigError(
                f"--resume {resume_from} is at step {manifest['step']}, train.max_steps is {cfg.train.max_steps}: "
                "raise train.max_steps to train further"
            )

    tokenizer, _, _ = driver_tokenizer(cfg)
    valid_keys = validation_keys(cfg, endpoint)
    pad_id = int(tokenizer.pad_token_id)
    encoder_factory = functools.partial(_make_encoder, cfg, _method_class(cfg).needs_placeholders, endpoint)
    return RunPlan(
        cfg=cfg,
        run_name=run_name,
        storage_path=storage_path,
        dataset_manifest=data_manifest,
        cf_record=cf_record,
        valid_keys=valid_keys,
        encoder_factory=encoder_factory,
        pad_id=pad_id,
        resume_from=resume_from,
        continue_run=run_uri is not None,
    )


# ---------------------------------------------------------------------------------------------------------
# Ray
# ---------------------------------------------------------------------------------------------------------


def worker_env(cfg: ExperimentConfig) -> dict[str, str]:
    """Environment every Ray worker of the run gets (threads, DeepSpeed accelerator, quiet tokenizers, the S3
    endpoint): `cora_ray.ray_cluster.forwarded_env`'s rule, so never a credential."""
    extra = {} if cfg.train.use_gpu else {"DS_ACCELERATOR": "cpu"}
    if cfg.data.s3_endpoint:
        extra["AWS_ENDPOINT_URL"] = cfg.data.s3_endpoint
    return forwarded_env(extra)


def ensure_ray(cfg: ExperimentConfig, num_cpus: int | None = None) -> bool:
    """Join the cluster named by RAY_ADDRESS (or the running one), else start a local Ray. True if we started it.

    Locally, Ray gets `max(4, 2 x workers)` logical CPUs on purpose: the Ray Data encoder actors run
    beside the training workers, whose torch threads are set explicitly."""
    return start_or_join(
        num_cpus=num_cpus or max(4, 2 * cfg.train.num_workers),
        env=worker_env(cfg),
        setup_hook=ray_setup.HOOK,
    )


def build_datasets(plan: RunPlan) -> dict[str, Any]:
    from cora_ray.train.pipeline import split_dataset

    cfg = plan.cfg
    train = split_dataset(
        cfg.data.uri,
        TRAIN_SPLIT,
        plan.encoder_factory,
        endpoint=plan.endpoint,
        shuffle_seed=cfg.train.seed,
        global_shuffle=cfg.train.shuffle == "global",
        group_prefixes=cfg.train.shuffle == "prefix_groups",
    )
    keep = None if cfg.train.eval_limit is None else plan.valid_keys
    valid = split_dataset(
        cfg.data.uri, VALID_SPLIT, plan.encoder_factory, endpoint=plan.endpoint, keep_keys=keep
    )
    # Lazy, not materialised here: the driver runs on the head (CPU: 0 in cluster.yaml), so encoding now would
    # make the autoscaler start a CPU node for it before the training node exists. The workers encode it on
    # their first validation (Ray Data tasks on the training node's CPUs) and replay it from memory after
    # (pipeline.ReplayedShard).
    return {"train": train, "valid": valid}


def build_trainer(plan: RunPlan) -> Any:
    """The TorchTrainer of a plan (Ray must be initialised)."""
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    from cora_ray.train.best_alias import BestAliasCallback
    from cora_ray.train.pipeline import train_data_config
    from cora_ray.train.worker import RunSpec, train_loop_per_worker

    cfg = plan.cfg
    t = cfg.train
    spec = RunSpec(
        experiment=to_dict(cfg),
        run_uri=plan.run_uri,
        dataset_hash=plan.dataset_manifest["hash"],
        valid_keys=plan.valid_keys,
        pad_id=plan.pad_id,
        cf_record=plan.cf_record,
        resume_from=plan.resume_from,
        endpoint=plan.endpoint,
    )
    storage_path = plan.storage_path
    storage_fs = None
    if storage.is_s3(storage_path):
        storage_fs, storage_path = storage.filesystem(storage_path, plan.endpoint)
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=spec.to_config(),
        scaling_config=ray.train.ScalingConfig(
            num_workers=t.num_workers, use_gpu=t.use_gpu, accelerator_type=t.accelerator_type
        ),
        torch_config=TorchConfig(backend="nccl" if t.use_gpu else "gloo"),
        datasets=build_datasets(plan),
        dataset_config=train_data_config(),
        run_config=ray.train.RunConfig(
            name=plan.run_name,
            storage_path=storage_path,
            storage_filesystem=storage_fs,
            failure_config=ray.train.FailureConfig(max_failures=t.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=t.checkpoints_to_keep,
                checkpoint_score_attribute="valid_auc",
                checkpoint_score_order="max",
            ),
            worker_runtime_env={"env_vars": worker_env(cfg)},
            callbacks=[BestAliasCallback(plan.run_uri, plan.endpoint)],
        ),
    )


# ---------------------------------------------------------------------------------------------------------
# result
# ---------------------------------------------------------------------------------------------------------


@dataclass
class TrainingSummary:
    run_uri: str
    best_checkpoint: str | None
    latest_checkpoint: str | None
    best_metrics: dict
    last_metrics: dict
    seconds: float
    progress_file: str
    checkpoints: list[str]
    best_alias: str | None = None  # <run>/best: a copy of best_checkpoint (cora_ray/train/best_alias.py)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _checkpoint_uri(ckpt: Any, storage_path: str) -> str:
    path = ckpt.path
    return f"s3://{path.lstrip('/')}" if storage.is_s3(storage_path) else path


def summarize(result: Any, plan: RunPlan, seconds: float) -> TrainingSummary:
    best = None
    best_metrics: dict = {}
    ranked = [(c, m) for c, m in (result.best_checkpoints or []) if m.get("valid_auc") is not None]
    ranked.sort(key=lambda cm: cm[1]["valid_auc"], reverse=True)
    if ranked:
        best, best_metrics = ranked[0]
    return TrainingSummary(
        run_uri=plan.run_uri,
        best_checkpoint=None if best is None else _checkpoint_uri(best, plan.storage_path),
        latest_checkpoint=None
        if result.checkpoint is None
        else _checkpoint_uri(result.checkpoint, plan.storage_path),
        best_metrics=dict(best_metrics),
        last_metrics=dict(result.metrics or {}),
        seconds=round(seconds, 1),
        progress_file=storage.join(plan.run_uri, "progress.jsonl"),
        checkpoints=[_checkpoint_uri(c, plan.storage_path) for c, _ in ranked],
    )


def format_summary(s: TrainingSummary, cfg: ExperimentConfig) -> str:
    def f(v: Any, fmt: str = ".4f") -> str:
        return format(v, fmt) if isinstance(v, (int, float)) and v is not None else "-"

    last, best = s.last_metrics, s.best_metrics
    stopped = "early stop (patience)" if last.get("stopped_early") else "max_steps reached"
    lines = [
        "=" * 78,
        f" {cfg.name}: {cfg.model.method} on {cfg.data.uri}",
        f" base LLM {cfg.llm.name_or_path} | {cfg.train.num_workers} worker(s), "
        f"ZeRO-{cfg.train.effective_zero_stage(cfg.train.num_workers)}, "
        f"{'GPU' if cfg.train.use_gpu else 'CPU'}",
        "-" * 78,
        f" steps        {last.get('step', '-')} / {cfg.train.max_steps} ({stopped})",
        f" samples/s    {f(last.get('samples_per_s'), '.2f')}     last loss {f(last.get('loss'))}     wall {s.seconds:.0f} s",
        f" last valid   AUC {f(last.get('valid_auc'))}  UAUC {f(last.get('valid_uauc'))}  (step {last.get('step', '-')})",
        f" best valid   AUC {f(best.get('valid_auc'))}  UAUC {f(best.get('valid_uauc'))}  (step {best.get('step', '-')}, "
        f"{best.get('valid_rows', '-')} rows)",
        f" progress     {s.progress_file}",
        f" run          {s.run_uri}",
        "-" * 78,
        f" best checkpoint: {s.best_checkpoint}",
        f" best alias:      {s.best_alias}  (a stable copy of it: evaluate / serve this URI)",
        "=" * 78,
    ]
    return "\n".join(lines)


def run_training(plan: RunPlan, *, num_cpus: int | None = None, quiet: bool = False) -> TrainingSummary:
    """Start or join Ray, fit, write `<run>/summary.json`, print the summary. Shuts down a Ray it started."""
    started = ensure_ray(plan.cfg, num_cpus)
    from ray.data import DataContext

    from cora_ray.train.best_alias import publish_final

    ctx = DataContext.get_current()  # copied into the Train workers by Ray Train
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    t0 = time.perf_counter()
    try:
        if not quiet:
            what = f"continuing run {plan.run_uri}" if plan.continue_run else f"run {plan.run_uri}"
            if plan.resume_from:
                what += f" from checkpoint {plan.resume_from}"
            print(f"[train] {what}", flush=True)
        result = build_trainer(plan).fit()
        summary = summarize(result, plan, time.perf_counter() - t0)
        summary.best_alias = publish_final(summary.best_checkpoint, plan.run_uri, plan.endpoint)
        storage.write_text(
            storage.join(plan.run_uri, SUMMARY_FILE),
            json.dumps(summary.to_dict(), indent=2, default=str) + "\n",
            plan.endpoint,
        )
        if not quiet:
            print(format_summary(summary, plan.cfg), flush=True)
        return summary
    finally:
        if started:
            shutdown_local_cluster()
