"""configs/cf/*.yaml load, and CFTrainConfig refuses bad values with the key's name."""

from __future__ import annotations

from pathlib import Path

import pytest

from cora_ray.cf.config import CFTrainConfig, load_cf_config
from cora_ray.errors import ConfigError

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs" / "cf").glob("*.yaml"))


def test_defaults_follow_the_spec():
    cfg = CFTrainConfig()
    assert (cfg.model.backbone, cfg.model.dim, cfg.model.num_layers) == ("mf", 256, 2)
    assert (cfg.model.max_history, cfg.model.num_blocks, cfg.model.dropout) == (25, 2, 0.2)
    assert cfg.grid.lrs == [1e-1, 1e-2, 1e-3] and cfg.grid.weight_decays == [1e-2, 1e-4, 1e-6]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_shipped_configs_load(path):
    cfg = load_cf_config(path)
    assert cfg.model.backbone in path.stem
    assert cfg.grid.lrs == [1e-1, 1e-2, 1e-3] and cfg.grid.weight_decays == [1e-2, 1e-4, 1e-6]
    if "book" in path.stem:
        assert cfg.model.max_history == 20


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.backbone=ncf", "model.backbone"),
        ("model.dim=0", "model.dim must be > 0"),
        ("model.num_heads=3", "divisible by model.num_heads"),
        ("model.graph=some", "model.graph"),
        ("train.lr=0", "train.lr must be > 0"),
        ("train.patience=0", "train.patience must be > 0"),
        ("train.eval_split=test", "train.eval_split"),
        ("grid.lrs=[]", "grid.lrs must hold"),
        ("train.lrate=1", "unknown key 'train.lrate'"),
    ],
)
def test_bad_values_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_cf_config(None, [override])


def test_cf_package_imports_without_ray():
    """A GPU script uses cora_ray.cf without Ray: only cora_ray.cf.runner may import it."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import cora_ray.cf, cora_ray.cf.train, cora_ray.cf.pretrain, cora_ray.cf.artifact, cora_ray.cf.data\n"
        "from cora_ray.cf import MF, LightGCN, SASRec, load_cf_artifact, pretrain_local\n"
        "assert not [m for m in sys.modules if m == 'ray' or m.startswith('ray.')], 'ray was imported'\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
