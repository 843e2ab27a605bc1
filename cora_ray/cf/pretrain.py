"""One CF pretraining run, from a protocol dataset URI to a published artifact — no Ray in this module.

`stage_run` is what each Ray Tune trial executes (cora_ray.cf.runner); `pretrain_local` is the same run in
the calling process (tests, notebooks, a GPU script without a Ray cluster).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from cora_ray import storage
from cora_ray.cf.artifact import write_cf_artifact_files
from cora_ray.cf.checks import check_inputs, check_out
from cora_ray.cf.config import CFTrainConfig
from cora_ray.cf.data import load_cf_data
from cora_ray.cf.train import train_cf
from cora_ray.config import to_dict


def stage_run(
    cfg: CFTrainConfig,
    data_uri: str,
    staging_dir: str | Path,
    endpoint: str | None = None,
    report: Callable[[dict], None] | None = None,
    log: Callable[[str], None] | None = print,
    device: str = "cpu",
    tag: str = "",
) -> dict:
    """Load the data, train, and write the complete artifact into a local staging directory. Returns its manifest."""
    splits = tuple(dict.fromkeys(("train", cfg.train.eval_split, "valid", "test")))
    data = load_cf_data(data_uri, splits, history_len=cfg.model.max_history, endpoint=endpoint)
    result = train_cf(cfg, data, report=report, log=log, device=device, tag=tag)
    uses_history = result.model.uses_history  # the user vector encodes the history (SASRec)
    user_history = data.last_train_positives(cfg.model.max_history) if uses_history else None
    return write_cf_artifact_files(
        staging_dir,
        result.model,
        dataset_manifest=data.manifest,
        dataset_uri=data_uri,
        config=to_dict(cfg),
        metrics=result.metrics,
        training={
            "best_epoch": result.best_epoch,
            "epochs": result.epochs_run,
            "stopped_early": result.stopped_early,
            "train_seconds": round(result.train_seconds, 3),
            "lr": cfg.train.lr,
            "weight_decay": cfg.train.weight_decay,
            "history": result.history,
            "user_vectors": (
                "encoding of each user's last positive train items" if uses_history else "table"
            ),
        },
        user_history=user_history,
    )


def pretrain_local(
    cfg: CFTrainConfig,
    data_uri: str,
    out_uri: str,
    overwrite: bool = False,
    endpoint: str | None = None,
    log: Callable[[str], None] | None = print,
    device: str = "cpu",
) -> dict:
    """Train in this process and publish the artifact at `out_uri` (nothing complete is left there on error)."""
    check_inputs(data_uri, cfg, endpoint)
    check_out(out_uri, overwrite, endpoint)
    with storage.atomic_dir(out_uri, endpoint=endpoint, overwrite=overwrite) as tmp:
        return stage_run(cfg, data_uri, tmp, endpoint=endpoint, log=log, device=device)
