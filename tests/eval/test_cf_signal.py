"""The CF-signal diagnostic: own / shuffled / zero G on a tiny CoRA checkpoint, and its job's files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cora_ray.errors import ModelError
from cora_ray.eval.cf_signal import cf_signal, cf_signal_markdown, g_similarity
from cora_ray.eval.evaluate import select_rows
from cora_ray.eval.metrics import auc
from cora_ray.infer.scorer import Scorer

REPO = Path(__file__).resolve().parents[2]


def test_own_variant_equals_normal_scoring_and_the_others_differ(tiny_artifacts):
    scorer = Scorer.from_checkpoint(tiny_artifacts.checkpoints["cora"], batch_size=8)
    doc = cf_signal(scorer, tiny_artifacts.data_uri, split="test", limit=40, seed=3)

    rows, selection, _ = select_rows(tiny_artifacts.data_uri, ["test"], 40, 3)
    pos = np.searchsorted(rows["_key"].to_numpy(), selection["test"])
    t = rows.take(pos)
    normal = scorer.score(t["user_id"].to_numpy(), t["item_id"].to_numpy(), t["history"].to_pylist())
    assert doc["rows"] == 40
    assert doc["variants"]["own"]["auc"] == pytest.approx(auc(t["label"].to_numpy(), normal), abs=1e-6)
    # the tiny checkpoint's trained tensors are random, so a different G changes the scores
    means = {name: doc["variants"][name]["score_mean"] for name in ("own", "shuffled", "zero")}
    assert means["zero"] != pytest.approx(means["own"], abs=1e-6)
    assert 0.0 < doc["g_cosine_between_rows"]["mean"] <= 1.0 + 1e-6
    # the tiny CF model knows only train users; the test sample has others, whose G differs by the rule
    assert doc["rows_with_known_user"] < doc["rows"]
    cold_rule = doc["variants"]["generated_for_cold"]["score_mean"]
    assert cold_rule != pytest.approx(means["own"], abs=1e-6)
    assert scorer.model.cfg.zero_delta_for_cold_users is True  # restored
    md = cf_signal_markdown(doc, "tiny")
    assert "shuffled" in md and "| none (G = 0: plain LLM) |" in md


def test_generated_for_cold_is_own_when_the_checkpoint_already_generates_for_cold_users(tiny_artifacts):
    scorer = Scorer.from_checkpoint(tiny_artifacts.checkpoints["cora"], batch_size=8)
    zeroing = scorer.model.cfg.zero_delta_for_cold_users
    own_zeroing = cf_signal(scorer, tiny_artifacts.data_uri, split="test", limit=40, seed=3)
    scorer.model.cfg.zero_delta_for_cold_users = False  # as a checkpoint trained with the default rule
    try:
        doc = cf_signal(scorer, tiny_artifacts.data_uri, split="test", limit=40, seed=3)
    finally:
        scorer.model.cfg.zero_delta_for_cold_users = zeroing
    assert doc["zero_delta_for_cold_users"] is False
    own, cold = doc["variants"]["own"], doc["variants"]["generated_for_cold"]
    assert cold["same_as"] == "own" and {k: v for k, v in cold.items() if k != "same_as"} == own
    # own under this rule is what the zeroing checkpoint's generated_for_cold variant scored
    assert own["score_mean"] == pytest.approx(
        own_zeroing["variants"]["generated_for_cold"]["score_mean"], abs=1e-6
    )
    assert "(= own: the checkpoint's rule)" in cf_signal_markdown(doc, "tiny")


def test_g_similarity_is_one_for_identical_rows_and_needs_two():
    G = torch.randn(1, 6, 2).repeat(5, 1, 1)
    assert g_similarity(G)["mean"] == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ModelError, match="at least 2 rows"):
        g_similarity(G[:1])


def test_a_method_without_collaborative_weights_is_refused(tiny_artifacts):
    scorer = Scorer.from_checkpoint(tiny_artifacts.checkpoints["tallrec"], batch_size=8)
    with pytest.raises(ModelError, match="no collaborative weights"):
        cf_signal(scorer, tiny_artifacts.data_uri, limit=10)


def test_job_writes_json_and_markdown_and_refuses_to_overwrite(tiny_artifacts, tmp_path):
    out = tmp_path / "signal"
    cmd = [
        sys.executable,
        str(REPO / "jobs" / "cf_signal.py"),
        "--checkpoint",
        tiny_artifacts.checkpoints["cora"],
        "--limit",
        "20",
        "--out",
        str(out),
        "--no-progress",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr
    doc = json.loads((out / "cf_signal.json").read_text())
    assert set(doc["variants"]) == {"own", "shuffled", "zero", "generated_for_cold"}
    assert (out / "cf_signal.md").read_text().startswith("# CF signal of")
    again = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    assert again.returncode == 2 and "already holds results" in again.stderr
