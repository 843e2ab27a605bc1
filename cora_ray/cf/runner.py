"""CF pretraining on Ray: every (lr, weight decay) pair is a Ray Tune trial; the best by validation AUC is
published as the artifact. A single run is a grid of one, so both paths report and publish the same way.

This is the only module of cora_ray.cf that imports Ray (inside functions), so the rest of the package
stays usable without it (a GPU script, a notebook).

Each trial trains with `cora_ray.cf.pretrain.stage_run`, reports one Tune result per epoch and, at the end,
the complete staged artifact as its Tune checkpoint. The driver copies the winner's checkpoint to `--out`
through `storage.atomic_dir`, so `--out` never holds something that looks complete unless a run succeeded.
Trial storage: `grid.storage_path` (use s3:// or a shared path on a multi-node cluster), else a temporary
local directory removed afterwards.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from cora_ray import storage
from cora_ray.cf.artifact import rewrite_manifest
from cora_ray.cf.checks import check_inputs, check_out
from cora_ray.cf.config import CFTrainConfig
from cora_ray.cf.pretrain import stage_run
from cora_ray.config import from_dict, to_dict
from cora_ray.errors import CoraError, TrainingError
from cora_ray.ray_cluster import start_or_join


def init_ray(num_cpus: int | None = None) -> bool:
    """Connect to the cluster named by RAY_ADDRESS, else start a local one (`cora_ray.ray_cluster`: no
    credentials in the runtime_env). Returns True if this call started Ray (the caller then shuts it down).
    A cluster of RAY_ADDRESS keeps its own runtime environment."""
    # every trial prints one progress line per epoch: keep them all (Ray folds "similar" lines by default)
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    return start_or_join(num_cpus=num_cpus, log_to_driver=True)


def _trial(config: dict, base: dict, data_uri: str, endpoint: str | None) -> None:
    """One Tune trial: train with this (lr, weight_decay), report per epoch, checkpoint = staged artifact."""
    import torch
    from ray import tune

    base = {**base, "train": {**base["train"], "lr": config["lr"], "weight_decay": config["weight_decay"]}}
    cfg = from_dict(CFTrainConfig, base, source="trial config")
    if not cfg.train.num_threads:
        torch.set_num_threads(max(1, int(math.floor(cfg.grid.cpus_per_trial))))

    def report(row: dict) -> None:
        tune.report({**row, "final": False})

    with tempfile.TemporaryDirectory(prefix="cora_ray_cf_trial_") as tmp:
        manifest = stage_run(
            cfg, data_uri, tmp, endpoint=endpoint, report=report, log=lambda s: print(s, flush=True)
        )
        m = manifest["metrics"]
        final = {
            "final": True,
            "best_valid_auc": m["valid"]["auc"],
            "valid_auc": m["valid"]["auc"],
            "valid_uauc": m["valid"]["uauc"],
            "test_auc": m["test"]["auc"],
            "test_uauc": m["test"]["uauc"],
            "best_epoch": manifest["training"]["best_epoch"],
            "epochs": manifest["training"]["epochs"],
            "train_seconds": manifest["training"]["train_seconds"],
        }
        tune.report(final, checkpoint=tune.Checkpoint.from_directory(tmp))


def root_error(err: BaseException | None) -> BaseException | None:
    """The project's own exception inside Ray's wrappers (RayTaskError, TuneError), else the error itself."""
    seen = set()
    cur = err
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, CoraError) and type(cur).__module__ == "cora_ray.errors":
            return cur
        cur = getattr(cur, "cause", None) or cur.__cause__
    if isinstance(err, CoraError):  # a RayTaskError subclassing the cause: rebuild a clean one
        for cls in type(err).__mro__:
            if cls.__module__ == "cora_ray.errors":
                text = str(err).strip().splitlines()
                return cls(text[-1].split(": ", 1)[-1] if text else "")
    return err


def _message(err: BaseException | None) -> str:
    root = root_error(err)
    if root is None:
        return ""
    text = str(root).strip().splitlines()
    return text[-1] if text else type(root).__name__


def run_pretrain(
    cfg: CFTrainConfig,
    data_uri: str,
    out_uri: str,
    *,
    grid: bool = False,
    overwrite: bool = False,
    endpoint: str | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Train (one run, or the lr x weight-decay grid) as Ray Tune trials and publish the best artifact at
    `out_uri`. Ray must be initialised (see `init_ray`). Returns the published manifest."""
    import ray
    from ray import tune

    if not ray.is_initialized():
        raise TrainingError("run_pretrain needs Ray: call cora_ray.cf.runner.init_ray() first")
    check_inputs(data_uri, cfg, endpoint)
    check_out(out_uri, overwrite, endpoint)
    if not storage.is_s3(data_uri):  # Tune runs each trial in its own working directory
        data_uri = str(Path(data_uri).absolute())
    lrs = list(cfg.grid.lrs) if grid else [cfg.train.lr]
    wds = list(cfg.grid.weight_decays) if grid else [cfg.train.weight_decay]
    n_trials = len(lrs) * len(wds)
    log(
        f"CF pretraining: backbone={cfg.model.backbone} data={data_uri} out={out_uri} "
        f"trials={n_trials} ({'grid' if grid else 'single run'}: lr {lrs} x weight_decay {wds})"
    )
    own_storage = cfg.grid.storage_path is None
    storage_root = cfg.grid.storage_path or tempfile.mkdtemp(prefix="cora_ray_cf_tune_")
    run_kwargs: dict = {}
    if storage.is_s3(storage_root):
        fs, path = storage.filesystem(storage_root, endpoint)
        run_kwargs.update(storage_path=path, storage_filesystem=fs)
    else:
        run_kwargs.update(storage_path=str(Path(storage_root).absolute()))
    name = f"cf_{cfg.model.backbone}_{time.strftime('%Y%m%d-%H%M%S')}"
    trainable = tune.with_resources(
        tune.with_parameters(_trial, base=to_dict(cfg), data_uri=data_uri, endpoint=endpoint),
        {"cpu": cfg.grid.cpus_per_trial},
    )
    tuner = tune.Tuner(
        trainable,
        param_space={"lr": tune.grid_search(lrs), "weight_decay": tune.grid_search(wds)},
        tune_config=tune.TuneConfig(max_concurrent_trials=cfg.grid.max_concurrent_trials or None),
        run_config=tune.RunConfig(
            name=name,
            verbose=0,
            failure_config=tune.FailureConfig(max_failures=0),
            **run_kwargs,
        ),
    )
    t0 = time.perf_counter()
    try:
        results = tuner.fit()
        trials = []
        for r in results:
            c = r.config or {}
            row = {"lr": c.get("lr"), "weight_decay": c.get("weight_decay")}
            met = r.metrics or {}
            if r.error is not None or not met.get("final") or r.checkpoint is None:
                row.update(status="failed", error=_message(r.error) or "trial ended without a final result")
                row["_error"] = r.error
            else:
                row.update(
                    status="ok",
                    valid_auc=met["valid_auc"],
                    valid_uauc=met["valid_uauc"],
                    test_auc=met["test_auc"],
                    test_uauc=met["test_uauc"],
                    best_epoch=met["best_epoch"],
                    epochs=met["epochs"],
                    train_seconds=met["train_seconds"],
                )
                row["_checkpoint"] = r.checkpoint
            trials.append(row)
        trials.sort(key=lambda t: (t["lr"], t["weight_decay"]))
        ok = [t for t in trials if t["status"] == "ok"]
        if not ok:
            if n_trials == 1:
                root = root_error(trials[0].get("_error"))
                if isinstance(root, CoraError):
                    raise root
            raise TrainingError(
                "every CF trial failed: "
                + "; ".join(f"lr={t['lr']:g} wd={t['weight_decay']:g}: {t['error']}" for t in trials)
            )
        best = max(ok, key=lambda t: t["valid_auc"])  # first of equals (sorted order) wins
        selection = {
            "metric": "valid_auc",
            "mode": "max",
            "grid": bool(grid),
            "trials": [{k: v for k, v in t.items() if not k.startswith("_")} for t in trials],
            "chosen": {"lr": best["lr"], "weight_decay": best["weight_decay"]},
            "wall_seconds": round(time.perf_counter() - t0, 3),
        }
        with (
            best["_checkpoint"].as_directory() as ckpt,
            storage.atomic_dir(out_uri, endpoint=endpoint, overwrite=overwrite) as tmp,
        ):
            shutil.copytree(ckpt, tmp, dirs_exist_ok=True)
            for junk in tmp.glob(".*"):  # Tune's own marker files, if any
                if junk.is_file():
                    junk.unlink()
            manifest = rewrite_manifest(tmp, selection=selection)
    finally:
        if own_storage:
            shutil.rmtree(storage_root, ignore_errors=True)
    log(summary(manifest, out_uri))
    return manifest


def summary(manifest: dict, out_uri: str) -> str:
    """A human-readable end-of-run summary: the trials, the choice and the chosen model's metrics."""
    lines = [
        "",
        f"== CF pretraining summary: {manifest['backbone']} on {manifest['dataset']['name']} "
        f"(dataset {manifest['dataset_hash'][:12]})",
    ]
    sel = manifest.get("selection") or {}
    for t in sel.get("trials", []):
        mark = (
            "*"
            if (t["lr"], t["weight_decay"]) == (sel["chosen"]["lr"], sel["chosen"]["weight_decay"])
            else " "
        )
        if t["status"] == "ok":
            lines.append(
                f" {mark} lr={t['lr']:<8g} wd={t['weight_decay']:<8g} valid AUC {t['valid_auc']:.4f} "
                f"UAUC {t['valid_uauc']:.4f}  best epoch {t['best_epoch']}/{t['epochs']}  {t['train_seconds']:.1f}s"
            )
        else:
            lines.append(f"   lr={t['lr']:<8g} wd={t['weight_decay']:<8g} FAILED: {t['error']}")
    for split in ("valid", "test", "test_warm", "test_cold"):
        m = manifest["metrics"].get(split)
        if m is None:
            continue
        if "auc" in m:
            lines.append(f"   {split:<10} AUC {m['auc']:.4f}  UAUC {m['uauc']:.4f}  ({m['rows']} rows)")
        else:
            lines.append(f"   {split:<10} n/a ({m.get('error')}, {m.get('rows')} rows)")
    tr = manifest["training"]
    lines.append(
        f"   chosen lr={tr['lr']:g} wd={tr['weight_decay']:g}; training {tr['train_seconds']:.1f}s; "
        f"all trials {sel.get('wall_seconds', float('nan')):.1f}s wall"
    )
    lines.append(f"   artifact: {out_uri} (hash {manifest['hash'][:12]})")
    return "\n".join(lines)
