"""Typed config of CF pretraining (jobs/pretrain_cf.py): one YAML per backbone in configs/cf/.

    cfg = load_cf_config("configs/cf/mf.yaml", ["train.lr=1e-2", "model.dim=64"])

Sections: `model` (which backbone and its shape), `train` (optimisation, early stopping), `grid` (the
paper's lr x weight-decay grid run as Ray Tune trials). Unknown keys and wrong types are ConfigErrors that
name the key and the file, like every other config of the project.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from cora_ray.config import _check, load_config

BACKBONES = ("mf", "lightgcn", "sasrec")


@dataclass
class CFModelConfig:
    """The backbone. All three output `dim`-dimensional user and item vectors; score = dot product."""

    backbone: Literal["mf", "lightgcn", "sasrec"] = "mf"
    dim: int = 256  # docs/method.md §2.1: 256 in the paper (CoRA's generator takes concat(e_u, e_i) = 512)
    init_std: float = 0.1  # normal init of the embedding tables
    # LightGCN
    num_layers: int = 2  # propagation layers
    # Which train rows form the LightGCN graph: "positive" (label 1: a "liked" graph, default — an edge to a
    # disliked item would pull the user towards it) or "all" (every rated item, as in implicit-feedback use).
    graph: Literal["positive", "all"] = "positive"
    # SASRec
    max_history: int = 25  # last <= 25 positives (ML-1M); 20 for Amazon-Book
    num_blocks: int = 2
    num_heads: int = 1
    dropout: float = 0.2

    def __post_init__(self) -> None:
        _check(self.dim > 0, f"model.dim must be > 0, got {self.dim}")
        _check(self.init_std > 0, f"model.init_std must be > 0, got {self.init_std}")
        _check(self.num_layers >= 0, f"model.num_layers must be >= 0, got {self.num_layers}")
        _check(self.max_history > 0, f"model.max_history must be > 0, got {self.max_history}")
        _check(self.num_blocks > 0, f"model.num_blocks must be > 0, got {self.num_blocks}")
        _check(self.num_heads > 0, f"model.num_heads must be > 0, got {self.num_heads}")
        _check(
            self.dim % self.num_heads == 0,
            f"model.dim ({self.dim}) must be divisible by model.num_heads ({self.num_heads})",
        )
        _check(0.0 <= self.dropout < 1.0, f"model.dropout must be in [0, 1), got {self.dropout}")


@dataclass
class CFOptimConfig:
    """Point-wise BCE on (user, item, label) of the train split, Adam, early stopping by validation AUC."""

    lr: float = 1e-3
    weight_decay: float = 1e-4  # Adam's L2 term (torch.optim.Adam weight_decay), as in the paper's grid
    batch_size: int = 1024
    max_epochs: int = 200
    patience: int = 10  # epochs without a better validation AUC before stopping
    min_delta: float = 0.0  # an improvement must exceed this to reset the patience
    eval_split: Literal["valid", "valid_small"] = "valid"  # CF models are cheap to score on all of valid
    eval_batch_size: int = 8192
    epoch_uauc: bool = False  # also compute validation UAUC every epoch (slow: one sklearn call per user)
    seed: int = 42
    num_threads: int = (
        0  # torch threads in the training process (0: the CPUs Ray gave the trial, else torch's)
    )
    log_every_epoch: bool = True

    def __post_init__(self) -> None:
        _check(self.lr > 0, f"train.lr must be > 0, got {self.lr}")
        _check(self.weight_decay >= 0, f"train.weight_decay must be >= 0, got {self.weight_decay}")
        _check(self.batch_size > 0, f"train.batch_size must be > 0, got {self.batch_size}")
        _check(self.max_epochs > 0, f"train.max_epochs must be > 0, got {self.max_epochs}")
        _check(self.patience > 0, f"train.patience must be > 0, got {self.patience}")
        _check(self.min_delta >= 0, f"train.min_delta must be >= 0, got {self.min_delta}")
        _check(self.eval_batch_size > 0, f"train.eval_batch_size must be > 0, got {self.eval_batch_size}")
        _check(self.num_threads >= 0, f"train.num_threads must be >= 0, got {self.num_threads}")


@dataclass
class CFGridConfig:
    """`--grid`: every (lr, weight_decay) pair is one Ray Tune trial; the best by validation AUC is kept."""

    lrs: list[float] = field(default_factory=lambda: [1e-1, 1e-2, 1e-3])
    weight_decays: list[float] = field(default_factory=lambda: [1e-2, 1e-4, 1e-6])
    cpus_per_trial: float = 1.0
    max_concurrent_trials: int = 0  # 0: as many as the cluster's CPUs allow
    # Where Tune keeps trial results and checkpoints. None: a temporary local directory (single-node runs).
    # On a multi-node cluster use shared storage (s3://bucket/prefix or an NFS path).
    storage_path: str | None = None

    def __post_init__(self) -> None:
        _check(len(self.lrs) > 0, "grid.lrs must hold at least one learning rate")
        _check(len(self.weight_decays) > 0, "grid.weight_decays must hold at least one weight decay")
        _check(all(x > 0 for x in self.lrs), f"grid.lrs must all be > 0, got {self.lrs}")
        _check(
            all(x >= 0 for x in self.weight_decays),
            f"grid.weight_decays must be >= 0, got {self.weight_decays}",
        )
        _check(self.cpus_per_trial > 0, f"grid.cpus_per_trial must be > 0, got {self.cpus_per_trial}")
        _check(
            self.max_concurrent_trials >= 0,
            f"grid.max_concurrent_trials must be >= 0, got {self.max_concurrent_trials}",
        )


@dataclass
class CFTrainConfig:
    """One CF pretraining run (configs/cf/<backbone>.yaml)."""

    name: str = "cf"
    model: CFModelConfig = field(default_factory=CFModelConfig)
    train: CFOptimConfig = field(default_factory=CFOptimConfig)
    grid: CFGridConfig = field(default_factory=CFGridConfig)


def load_cf_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> CFTrainConfig:
    """CFTrainConfig from a YAML file (or the defaults) plus dotted overrides (`train.lr=1e-2`)."""
    return load_config(CFTrainConfig, path, overrides)
