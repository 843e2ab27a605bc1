"""Fixtures for the CF tests: one small synthetic protocol dataset (latent-factor ground truth)."""

from __future__ import annotations

import pytest

from cora_ray.cf.config import load_cf_config

# Dense enough that a 16-dim model recovers the 8-dim ground truth in a few epochs (oracle test AUC ~0.88).
SYN = {"users": 400, "items": 100, "interactions_per_user": 60, "seed": 0}
FAST = [
    "model.dim=16",
    "model.init_std=0.01",
    "train.lr=1e-2",
    "train.weight_decay=1e-4",
    "train.batch_size=256",
]


@pytest.fixture(scope="session")
def syn_uri(tmp_path_factory) -> str:
    from cora_ray.data.synthetic import prepare_synthetic

    uri = str(tmp_path_factory.mktemp("cf_data") / "syn")
    prepare_synthetic(uri, **SYN)
    return uri


@pytest.fixture(scope="session")
def syn_data(syn_uri):
    from cora_ray.cf.data import load_cf_data

    return load_cf_data(syn_uri)


def _fast_cfg(backbone: str, *extra: str):
    return load_cf_config(
        None, [f"model.backbone={backbone}", *FAST, "train.max_epochs=8", "train.patience=3", *extra]
    )


@pytest.fixture(scope="session")
def fast_cfg():
    """`fast_cfg(backbone, *overrides)`: a tiny, quick CFTrainConfig (dim 16, <= 8 epochs).

    A fixture because test modules cannot import conftest (importlib import mode)."""
    return _fast_cfg
