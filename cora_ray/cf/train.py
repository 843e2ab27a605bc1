"""CF pretraining in one process (no Ray here): point-wise BCE on the train split, Adam, early stopping by
validation AUC, then the best epoch's weights are scored on valid / test / test_warm / test_cold.

The Ray job (cora_ray.cf.runner) calls `train_cf` inside each Tune trial; tests and GPU scripts call it
directly.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from cora_ray.cf.base import CFBackbone
from cora_ray.cf.config import CFModelConfig, CFTrainConfig
from cora_ray.cf.data import CFData, CFSplit
from cora_ray.cf.models import backbone_class
from cora_ray.errors import DataError, TrainingError
from cora_ray.eval import metrics as M

EVAL_SPLITS = ("valid", "test", "test_warm", "test_cold")


@dataclass
class TrainResult:
    model: CFBackbone
    metrics: dict[str, dict]  # split -> auc_uauc dict (or {"rows": n, "error": ...} where undefined)
    best_epoch: int
    epochs_run: int
    stopped_early: bool
    train_seconds: float
    history: list[dict] = field(default_factory=list)  # one dict per epoch


def make_backbone(cfg: CFModelConfig, data: CFData) -> CFBackbone:
    """A freshly initialised backbone sized for `data` (LightGCN gets its graph from the train split)."""
    return backbone_class(cfg.backbone).for_data(cfg, data)


@torch.no_grad()
def predict(model: CFBackbone, split: CFSplit, batch_size: int = 8192) -> np.ndarray:
    """Scores (logits) of every row of a split, in row order."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = []
    try:
        for s in range(0, len(split), batch_size):
            sl = slice(s, s + batch_size)
            out.append(
                model.score(
                    split.users[sl].to(device), split.items[sl].to(device), split.history[sl].to(device)
                )
                .float()
                .cpu()
            )
    finally:
        model.train(was_training)
    return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.float32)


def evaluate(model: CFBackbone, split: CFSplit, batch_size: int = 8192, with_uauc: bool = True) -> dict:
    """AUC / UAUC (docs/method.md §6) of the model's scores on a split; where AUC is undefined, says why.

    UAUC costs one sklearn call per user (most of the time of a CF evaluation): `with_uauc=False` skips it."""
    if len(split) == 0:
        return {"rows": 0, "error": "no rows"}
    scores = predict(model, split, batch_size)
    labels = split.labels.numpy().astype(np.int64)
    if len(np.unique(labels)) < 2:
        return {"rows": len(split), "error": "only one label present"}
    if not with_uauc:
        return {"auc": M.auc(labels, scores), "uauc": None, "rows": len(split)}
    return M.auc_uauc(split.users.numpy(), labels, scores)


def _set_seed(seed: int) -> torch.Generator:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    return torch.Generator().manual_seed(seed)


def train_cf(
    cfg: CFTrainConfig,
    data: CFData,
    report: Callable[[dict], None] | None = None,
    log: Callable[[str], None] | None = print,
    device: str | torch.device = "cpu",
    tag: str = "",
) -> TrainResult:
    """Train `cfg.model.backbone` on `data` and return the best-validation-AUC model with its metrics.

    `report(metrics)` is called after every epoch (Ray Tune uses it); `log` prints one line per epoch.
    Raises TrainingError when the loss stops being finite (naming the step and the learning rate).
    """
    tc = cfg.train
    for name in ("train", tc.eval_split):
        if name not in data.splits:
            raise DataError(f"split '{name}' was not loaded")
        if len(data.splits[name]) == 0:
            raise DataError(f"split '{name}' is empty")
    if tc.num_threads:
        torch.set_num_threads(tc.num_threads)
    gen = _set_seed(tc.seed)
    model = make_backbone(cfg.model, data).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    train = data.splits["train"]
    val = data.splits[tc.eval_split]
    n = len(train)
    steps_per_epoch = math.ceil(n / tc.batch_size)
    prefix = f"[{cfg.model.backbone}{' ' + tag if tag else ''} lr={tc.lr:g} wd={tc.weight_decay:g}]"
    best_auc, best_epoch, best_state, bad_epochs = -math.inf, 0, None, 0
    history: list[dict] = []
    step = 0
    t_start = time.perf_counter()
    stopped_early = False
    epoch = 0
    for epoch in range(1, tc.max_epochs + 1):
        t0 = time.perf_counter()
        model.train()
        perm = torch.randperm(n, generator=gen)
        loss_sum = 0.0
        for b in range(steps_per_epoch):
            idx = perm[b * tc.batch_size : (b + 1) * tc.batch_size]
            logits = model.score(
                train.users[idx].to(device), train.items[idx].to(device), train.history[idx].to(device)
            )
            loss = F.binary_cross_entropy_with_logits(logits, train.labels[idx].to(device))
            step += 1
            value = float(loss.detach())
            if not math.isfinite(value):
                raise TrainingError(
                    f"{cfg.model.backbone}: the training loss became {value} at step {step} (epoch {epoch}, "
                    f"batch {b + 1}/{steps_per_epoch}) with lr={tc.lr:g}, weight_decay={tc.weight_decay:g}; "
                    "lower train.lr"
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += value * len(idx)
        m = evaluate(model, val, tc.eval_batch_size, with_uauc=tc.epoch_uauc)
        if "error" in m:
            raise DataError(f"validation split '{tc.eval_split}': AUC undefined ({m['error']})")
        improved = m["auc"] > best_auc + tc.min_delta
        if improved:
            best_auc, best_epoch, bad_epochs = m["auc"], epoch, 0
            best_state = copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()})
        else:
            bad_epochs += 1
        row = {
            "epoch": epoch,
            "step": step,
            "train_loss": loss_sum / n,
            "valid_auc": m["auc"],
            "valid_uauc": m["uauc"],
            "best_valid_auc": best_auc,
            "best_epoch": best_epoch,
            "epoch_seconds": time.perf_counter() - t0,
        }
        history.append(row)
        if log is not None and tc.log_every_epoch:
            uauc_text = "" if m["uauc"] is None else f" UAUC {m['uauc']:.4f}"
            log(
                f"{prefix} epoch {epoch}/{tc.max_epochs} loss {row['train_loss']:.4f} "
                f"{tc.eval_split} AUC {m['auc']:.4f}{uauc_text} "
                f"(best {best_auc:.4f} @ {best_epoch}) {row['epoch_seconds']:.1f}s"
            )
        if report is not None:
            report(row)
        if bad_epochs >= tc.patience:
            stopped_early = True
            break
    train_seconds = time.perf_counter() - t_start
    assert best_state is not None
    model.load_state_dict(best_state)
    model.eval()
    results = {}
    for name in EVAL_SPLITS:
        if name in data.splits:
            results[name] = evaluate(model, data.splits[name], tc.eval_batch_size)
    if log is not None:
        shown = " ".join(f"{k} {v['auc']:.4f}/{v['uauc']:.4f}" for k, v in results.items() if "auc" in v)
        log(
            f"{prefix} done: best epoch {best_epoch} of {epoch}"
            f"{' (early stop)' if stopped_early else ''}, {train_seconds:.1f}s; AUC/UAUC {shown}"
        )
    return TrainResult(model, results, best_epoch, epoch, stopped_early, train_seconds, history)
