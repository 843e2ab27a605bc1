"""The CF-signal diagnostic: own / shuffled / zero G and both cold-user rules on a tiny CoRA checkpoint,
the paired comparison of the rules, and its job's files."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cora_ray.errors import ModelError
from cora_ray.eval.cf_signal import (
    DEFAULT_SPLIT,
    MIN_COLD_ROWS,
    cf_signal,
    cf_signal_markdown,
    cold_rule_verdict,
    g_similarity,
    rule_comparison,
)
from cora_ray.eval.evaluate import select_rows
from cora_ray.eval.metrics import auc
from cora_ray.infer.scorer import Scorer

REPO = Path(__file__).resolve().parents[2]


def test_the_default_split_is_a_validation_split():
    assert DEFAULT_SPLIT in ("valid", "valid_small")


def test_own_variant_equals_normal_scoring_and_the_others_differ(tiny_artifacts):
    scorer = Scorer.from_checkpoint(tiny_artifacts.checkpoints["cora"], batch_size=8)
    doc = cf_signal(scorer, tiny_artifacts.data_uri, limit=40, seed=3)
    assert doc["split"] == DEFAULT_SPLIT

    rows, selection, _ = select_rows(tiny_artifacts.data_uri, [DEFAULT_SPLIT], 40, 3)
    pos = np.searchsorted(rows["_key"].to_numpy(), selection[DEFAULT_SPLIT])
    t = rows.take(pos)
    normal = scorer.score(t["user_id"].to_numpy(), t["item_id"].to_numpy(), t["history"].to_pylist())
    assert doc["rows"] == 40
    assert doc["variants"]["own"]["auc"] == pytest.approx(auc(t["label"].to_numpy(), normal), abs=1e-6)
    # the tiny checkpoint's trained tensors are random, so a different G changes the scores
    means = {name: doc["variants"][name]["score_mean"] for name in ("own", "shuffled", "zero")}
    assert means["zero"] != pytest.approx(means["own"], abs=1e-6)
    assert 0.0 < doc["g_cosine_between_rows"]["mean"] <= 1.0 + 1e-6
    # the tiny CF model knows only train users; the validation sample has others, whose G differs by the rule
    assert 0 < doc["rows_with_known_user"] < doc["rows"]
    assert doc["rows_with_known_user"] + doc["rows_with_cold_user"] == doc["rows"]
    assert doc["cold_users"] >= 1
    # the tiny checkpoint zeroes G for cold users: that variant is own, the other rule is scored
    assert doc["variants"]["zeroed_for_cold"]["same_as"] == "own"
    generated = doc["variants"]["generated_for_cold"]
    assert "same_as" not in generated
    assert generated["score_mean"] != pytest.approx(means["own"], abs=1e-6)
    # known users get the same G under both rules: their rows score alike, only cold rows differ
    own = doc["variants"]["own"]
    assert own["known_user"]["rows"] == doc["rows_with_known_user"]
    assert own["cold_user"]["rows"] == doc["rows_with_cold_user"]
    if own["known_user"]["auc"] is not None:
        assert generated["known_user"]["auc"] == pytest.approx(own["known_user"]["auc"], abs=1e-5)
    assert scorer.model.cfg.zero_delta_for_cold_users is True  # untouched
    md = cf_signal_markdown(doc, "tiny")
    assert "shuffled" in md and "| none (G = 0 for every row: plain LLM) |" in md


def test_cold_rule_compares_the_two_rules_on_the_same_rows(tiny_artifacts):
    scorer = Scorer.from_checkpoint(tiny_artifacts.checkpoints["cora"], batch_size=8)
    doc = cf_signal(scorer, tiny_artifacts.data_uri, limit=40, seed=3)
    rule = doc["cold_rule"]
    d = rule["generated_minus_zeroed"]["auc"]
    v = doc["variants"]
    assert d["observed"] == pytest.approx(
        v["generated_for_cold"]["auc"] - v["zeroed_for_cold"]["auc"], abs=1e-9
    )
    assert d["ci"][0] <= d["ci"][1] and d["resamples"] > 0 and d["units"] == doc["rows"]
    cold = rule["generated_minus_zeroed_cold_rows"]
    if cold is not None:  # the cold rows alone, when they have both labels
        assert cold["auc"]["units"] == doc["rows_with_cold_user"]
        assert cold["auc"]["observed"] == pytest.approx(
            v["generated_for_cold"]["cold_user"]["auc"] - v["zeroed_for_cold"]["cold_user"]["auc"], abs=1e-9
        )
    assert rule["verdict"] == cold_rule_verdict(d["ci"], doc["rows_with_cold_user"])
    assert "Cold-user rule, generated − zeroed on the same rows" in cf_signal_markdown(doc, "tiny")


def test_generated_for_cold_is_own_when_the_checkpoint_already_generates_for_cold_users(tiny_artifacts):
    scorer = Scorer.from_checkpoint(tiny_artifacts.checkpoints["cora"], batch_size=8)
    zeroing = scorer.model.cfg.zero_delta_for_cold_users
    own_zeroing = cf_signal(scorer, tiny_artifacts.data_uri, limit=40, seed=3)
    scorer.model.cfg.zero_delta_for_cold_users = False  # as a checkpoint trained with the default rule
    try:
        doc = cf_signal(scorer, tiny_artifacts.data_uri, limit=40, seed=3)
    finally:
        scorer.model.cfg.zero_delta_for_cold_users = zeroing
    assert doc["zero_delta_for_cold_users"] is False
    own, cold = doc["variants"]["own"], doc["variants"]["generated_for_cold"]
    assert cold["same_as"] == "own" and {k: v for k, v in cold.items() if k != "same_as"} == own
    # each rule scores the same under either checkpoint setting: the rule is applied at scoring only
    for name in ("generated_for_cold", "zeroed_for_cold"):
        assert doc["variants"][name]["score_mean"] == pytest.approx(
            own_zeroing["variants"][name]["score_mean"], abs=1e-5
        )
    assert doc["cold_rule"]["generated_minus_zeroed"]["auc"]["observed"] == pytest.approx(
        own_zeroing["cold_rule"]["generated_minus_zeroed"]["auc"]["observed"], abs=1e-6
    )
    assert "(= own: the checkpoint's rule)" in cf_signal_markdown(doc, "tiny")


def test_rule_comparison_and_verdict():
    rng = np.random.default_rng(0)
    users = rng.integers(1, 40, size=400)
    items = np.arange(400)
    labels = rng.integers(0, 2, size=400)
    noise = rng.normal(size=400)
    same = rule_comparison(users, items, labels, noise, noise)
    assert same["auc"]["observed"] == 0.0 and same["auc"]["ci"] == [0.0, 0.0]
    good = labels + 0.5 * rng.normal(size=400)  # informative scores vs noise
    d = rule_comparison(users, items, labels, good, noise)
    assert d["auc"]["observed"] > 0.2 and d["auc"]["ci"][0] > 0 and d["uauc"]["ci"][0] > 0
    assert cold_rule_verdict(d["auc"]["ci"], MIN_COLD_ROWS) == "generate"
    assert cold_rule_verdict([-0.2, -0.1], MIN_COLD_ROWS) == "zero"
    assert cold_rule_verdict([-0.1, 0.1], MIN_COLD_ROWS) == "undecided"
    assert cold_rule_verdict(d["auc"]["ci"], MIN_COLD_ROWS - 1) == "too few cold-user rows"
    assert cold_rule_verdict(None, MIN_COLD_ROWS) == "undecided"


def test_g_similarity_is_one_for_identical_rows_and_needs_two():
    G = torch.randn(1, 6, 2).repeat(5, 1, 1)
    assert g_similarity(G)["mean"] == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ModelError, match="at least 2 rows"):
        g_similarity(G[:1])


def test_a_checkpoint_that_shares_the_prompt_prefix_is_refused(tmp_path):
    class PrefixScorer:  # what the diagnostic asks of a scorer before reading any row
        uses_collab_weights = True
        shares_prefix = True
        method = "cora"

    with pytest.raises(ModelError, match="delta_scope shares the prompt prefix"):
        cf_signal(PrefixScorer(), str(tmp_path / "no-data"), limit=10)


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
    assert doc["split"] == DEFAULT_SPLIT  # a validation split unless --split says otherwise
    assert set(doc["variants"]) == {"own", "shuffled", "zero", "generated_for_cold", "zeroed_for_cold"}
    # the CF artifact the checkpoint was trained with, as its manifest records it
    from cora_ray.cf import read_cf_manifest

    cf = read_cf_manifest(doc["cf_artifact"]["uri"])
    assert doc["cf_artifact"]["hash"] == cf["hash"] and doc["cf_artifact"]["model"] == cf["model"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["cf_artifact_hash"] == cf["hash"] and manifest["split"] == DEFAULT_SPLIT
    md = (out / "cf_signal.md").read_text()
    assert md.startswith("# CF signal of") and f"hash `{cf['hash'][:12]}`" in md
    again = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    assert again.returncode == 2 and "already holds results" in again.stderr

    # --cf-uri: a copy of the artifact elsewhere (same hash) is what the results name
    copy = tmp_path / "cf_copy"
    shutil.copytree(doc["cf_artifact"]["uri"], copy)
    out2 = tmp_path / "signal2"
    moved = subprocess.run(
        [*cmd[: cmd.index("--out")], "--cf-uri", str(copy), "--out", str(out2), "--no-progress"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert moved.returncode == 0, moved.stderr
    doc2 = json.loads((out2 / "cf_signal.json").read_text())
    assert doc2["cf_artifact"]["uri"] == str(copy) and doc2["cf_artifact"]["hash"] == cf["hash"]
