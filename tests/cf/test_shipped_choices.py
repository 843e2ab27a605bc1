"""The shipped MF config is the one bench/results/cf_ml1m.json measured (docs/decisions.md §1): a change of
configs/cf/mf.yaml's init_std, lr or weight decay must come with a re-run of `bench/bench_cf_ml1m.py mf`."""

from __future__ import annotations

import json
from pathlib import Path

from cora_ray.cf.config import load_cf_config

REPO = Path(__file__).resolve().parents[2]


def test_mf_config_matches_the_measured_mf_row():
    cfg = load_cf_config(REPO / "configs" / "cf" / "mf.yaml")
    rows = json.loads((REPO / "bench" / "results" / "cf_ml1m.json").read_text())["rows"]
    (mf,) = [r for r in rows if r["backbone"] == "mf"]
    assert mf["model"]["init_std"] == cfg.model.init_std
    assert mf["model"]["dim"] == cfg.model.dim
    # the grid's choice (selected by validation AUC) is what the config trains without --grid
    assert (mf["lr"], mf["weight_decay"]) == (cfg.train.lr, cfg.train.weight_decay)
