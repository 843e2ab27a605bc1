"""The evaluation: metrics equal a by-hand computation from the scorer, seeded samples, bad inputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cora_ray.checkpoint import read_checkpoint_manifest
from cora_ray.config import to_dict
from cora_ray.data import protocol
from cora_ray.errors import ArtifactMismatchError, ConfigError, StorageError
from cora_ray.eval.evaluate import evaluate, read_results, read_scores
from cora_ray.eval.metrics import auc_uauc
from cora_ray.infer.scorer import Scorer
from cora_ray.infer.source import ScorerSource

REPO = Path(__file__).resolve().parents[2]
SPLITS = ["test", "test_warm", "test_cold", "valid"]


def by_hand(scorer, data_uri, split, limit=None, seed=42):
    """Metrics computed directly: the split's rows (or the documented seeded sample), scored one call."""
    t = protocol.read_split(data_uri, split)
    if limit is not None:
        base = protocol.read_split(data_uri, "test" if split.startswith("test_") else split)
        mask = np.ones(base.num_rows, dtype=bool)
        if split == "test_warm":
            mask = base["warm"].to_numpy(zero_copy_only=False)
        elif split == "test_cold":
            mask = ~base["warm"].to_numpy(zero_copy_only=False)
        perm = np.random.default_rng(seed).permutation(base.num_rows)
        t = base.take(np.sort(perm[mask[perm]][:limit]))
    scores = scorer.score(t["user_id"].to_numpy(), t["item_id"].to_numpy(), t["history"].to_pylist())
    return auc_uauc(t["user_id"].to_numpy(), t["label"].to_numpy(), scores), scores


def test_evaluate_metrics_equal_those_computed_by_hand_from_the_scorer(tiny_artifacts, tmp_path):
    out = str(tmp_path / "eval")
    doc = evaluate(
        ScorerSource("checkpoint", uri=tiny_artifacts.checkpoints["cora"], batch_size=8),
        out,
        splits=SPLITS,
        num_actors=0,
        progress=False,
    )
    scorer = Scorer.from_checkpoint(tiny_artifacts.checkpoints["cora"])
    for split in SPLITS:
        expected, scores = by_hand(scorer, tiny_artifacts.data_uri, split)
        got = doc["splits"][split]
        assert got["rows"] == expected["rows"] == protocol.read_split(tiny_artifacts.data_uri, split).num_rows
        assert got["auc"] == pytest.approx(expected["auc"], abs=1e-6)
        assert got["uauc"] == pytest.approx(expected["uauc"], abs=1e-6)
        assert (
            got["users_used"] == expected["users_used"] and got["users_skipped"] == expected["users_skipped"]
        )
        assert got["skipped_reasons"] == expected["skipped_reasons"]
        stored = read_scores(out, split)
        np.testing.assert_allclose(stored["score"].to_numpy(), scores, atol=1e-5)  # same rows, same order
    assert read_results(out) == json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert doc["data"]["hash"] == tiny_artifacts.data_hash and doc["method"] == "cora"
    # the checkpoint's content hash (cora_ray/manifest.py) names what scored, as the data and CF hashes do
    ckpt_hash = read_checkpoint_manifest(tiny_artifacts.checkpoints["cora"])["hash"]
    assert doc["source"]["hash"] == ckpt_hash == doc["scorer"]["checkpoint_hash"]
    report = (tmp_path / "eval" / "report.md").read_text()
    assert "| test_warm |" in report and f"{doc['splits']['test']['auc']:.4f}" in report
    # derived splits are filters of test: scored once
    assert doc["rows_scored"] == doc["splits"]["test"]["rows"] + doc["splits"]["valid"]["rows"]


def test_limit_samples_are_seeded_and_stable(tiny_artifacts, tmp_path):
    src = ScorerSource("cf", uri=tiny_artifacts.cf_uri, data_uri=tiny_artifacts.data_uri)
    a = evaluate(src, str(tmp_path / "a"), splits="test,test_warm", limit=20, num_actors=0, progress=False)
    b = evaluate(src, str(tmp_path / "b"), splits="test,test_warm", limit=20, num_actors=0, progress=False)
    evaluate(
        src, str(tmp_path / "c"), splits="test,test_warm", limit=20, seed=7, num_actors=0, progress=False
    )
    for split in ("test", "test_warm"):
        ta, tb, tc = (read_scores(str(tmp_path / d), split) for d in "abc")
        assert ta.num_rows == 20 and a["splits"][split]["population"] > 20
        assert ta.equals(tb) and a["splits"][split] == b["splits"][split]  # same rows, same metrics
        assert not ta.select(["user_id", "item_id"]).equals(tc.select(["user_id", "item_id"]))  # seed matters
    from cora_ray.infer.cf_scorer import CFScorer

    expected, _ = by_hand(
        CFScorer.from_artifact(tiny_artifacts.cf_uri), tiny_artifacts.data_uri, "test_warm", 20
    )
    assert a["splits"]["test_warm"]["auc"] == pytest.approx(expected["auc"], abs=1e-6)
    assert a["limit"] == 20 and a["seed"] == 42


def test_zero_shot_and_cf_sources_evaluate(tiny_artifacts, tmp_path):
    zs = ScorerSource("zero_shot", config=to_dict(tiny_artifacts.config("cora")))
    doc = evaluate(zs, None, splits="test", num_actors=0, progress=False)
    expected, _ = by_hand(Scorer.from_base_llm(tiny_artifacts.config()), tiny_artifacts.data_uri, "test")
    assert doc["method"] == "zero_shot" and doc["splits"]["test"]["auc"] == pytest.approx(
        expected["auc"], abs=1e-6
    )
    cf = evaluate(
        ScorerSource("cf", uri=tiny_artifacts.cf_uri), None, splits="test", num_actors=0, progress=False
    )
    assert (
        cf["method"] == "cf" and cf["data"]["hash"] == tiny_artifacts.data_hash
    )  # data taken from the artifact


# ---- bad input: a clear error and nothing at --out ---------------------------------------------------------


def _nothing_at(path: Path) -> bool:
    return not path.exists() and not any(p.name.startswith(f".{path.name}") for p in path.parent.iterdir())


def test_checkpoint_without_manifest_writes_nothing(tiny_artifacts, tmp_path):
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "trainable.safetensors").write_bytes(b"x")
    out = tmp_path / "out"
    with pytest.raises(StorageError, match="no manifest.json"):
        evaluate(
            ScorerSource("checkpoint", uri=str(tmp_path / "half")), str(out), num_actors=0, progress=False
        )
    assert _nothing_at(out)


def test_unknown_split_writes_nothing(tiny_artifacts, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match="unknown split.*'tests'"):
        evaluate(
            ScorerSource("checkpoint", uri=tiny_artifacts.checkpoints["cora"]),
            str(out),
            splits="tests",
            num_actors=0,
            progress=False,
        )
    assert _nothing_at(out)


def test_other_dataset_writes_nothing(tiny_artifacts, tmp_path):
    from cora_ray.data.synthetic import prepare_synthetic

    other = str(tmp_path / "other")
    prepare_synthetic(other, users=30, items=40, seed=4, interactions_per_user=12)
    for source in (
        ScorerSource("checkpoint", uri=tiny_artifacts.checkpoints["cora"], data_uri=other),
        ScorerSource("cf", uri=tiny_artifacts.cf_uri, data_uri=other),
    ):
        out = tmp_path / f"out_{source.kind}"
        with pytest.raises(ArtifactMismatchError) as err:
            evaluate(source, str(out), num_actors=0, progress=False)
        assert tiny_artifacts.data_hash in str(err.value)
        assert protocol.read_manifest(other)["hash"] in str(err.value)
        assert _nothing_at(out)


def test_wrong_base_llm_is_refused_and_nothing_written(tiny_artifacts, tmp_path):
    from tiny_setup import write_tiny_checkpoint

    uri = write_tiny_checkpoint(
        tiny_artifacts, str(tmp_path / "bad"), "cora", base_llm={"identity": "x", "weight_hash": "a" * 64}
    )
    out = tmp_path / "out"
    with pytest.raises(ArtifactMismatchError, match="a" * 64):
        evaluate(ScorerSource("checkpoint", uri=uri), str(out), num_actors=0, progress=False)
    assert _nothing_at(out)


def test_existing_results_are_not_overwritten_without_asking(tiny_artifacts, tmp_path):
    src = ScorerSource("cf", uri=tiny_artifacts.cf_uri)
    out = str(tmp_path / "r")
    evaluate(src, out, splits="test", num_actors=0, progress=False)
    with pytest.raises(StorageError, match="--overwrite"):
        evaluate(src, out, splits="test", num_actors=0, progress=False)
    evaluate(src, out, splits="valid", num_actors=0, progress=False, overwrite=True)
    assert list(read_results(out)["splits"]) == ["valid"]


# ---- the distributed path and the command line ------------------------------------------------------------


@pytest.mark.ray
@pytest.mark.slow
def test_ray_actor_pool_gives_the_local_metrics(tiny_artifacts, tmp_path, ray_cluster):
    src = ScorerSource("checkpoint", uri=tiny_artifacts.checkpoints["cora"], batch_size=8)
    local = evaluate(src, None, splits="test,test_warm", num_actors=0, progress=False)
    out = tmp_path / "ray"
    dist = evaluate(src, str(out), splits="test,test_warm", num_actors=2, ray_batch_size=16, progress=False)
    assert dist["num_actors"] == 2
    for split in ("test", "test_warm"):
        for key in ("auc", "uauc", "rows", "users_used", "users_skipped"):
            assert dist["splits"][split][key] == pytest.approx(local["splits"][split][key], abs=1e-6)
    # an actor that refuses its checkpoint (wrong base LLM) surfaces as the same clear error; nothing written
    from tiny_setup import write_tiny_checkpoint

    bad = write_tiny_checkpoint(
        tiny_artifacts, str(tmp_path / "bad"), "cora", base_llm={"identity": "x", "weight_hash": "b" * 64}
    )
    with pytest.raises(ArtifactMismatchError, match="b" * 64):
        evaluate(ScorerSource("checkpoint", uri=bad), str(tmp_path / "bad_out"), num_actors=1, progress=False)
    assert _nothing_at(tmp_path / "bad_out")


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run(
        [sys.executable, str(REPO / "jobs" / "evaluate.py"), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        cwd=REPO,
    )


@pytest.mark.slow
def test_command_line_evaluates_and_refuses_bad_input(tiny_artifacts, tmp_path):
    out = tmp_path / "cli"
    r = _run(
        "--cf-artifact",
        tiny_artifacts.cf_uri,
        "--splits",
        "test,test_cold",
        "--num-actors",
        "0",
        "--out",
        str(out),
        "--limit",
        "30",
        "--no-progress",
    )
    assert r.returncode == 0, r.stderr
    assert "test_cold" in r.stdout and (out / "metrics.json").is_file() and (out / "report.md").is_file()
    bad = _run(
        "--checkpoint",
        tiny_artifacts.checkpoints["cora"],
        "--splits",
        "test,holdout",
        "--num-actors",
        "0",
        "--out",
        str(tmp_path / "cli_bad"),
    )
    assert (
        bad.returncode == 2 and "unknown split(s) 'holdout'" in bad.stderr and "Traceback" not in bad.stderr
    )
    assert _nothing_at(tmp_path / "cli_bad")


def test_a_prefix_sharing_checkpoint_evaluates_to_its_full_prompt_scores(tiny_artifacts, tmp_path):
    """delta_scope=user_prefix: the driver orders rows by user so a batch holds whole users (one prefix pass
    each); the stored scores equal the same checkpoint's full-prompt scores row by row."""
    from tiny_setup import write_tiny_checkpoint

    uri = write_tiny_checkpoint(
        tiny_artifacts, str(tmp_path / "ckpt"), model_overrides={"delta_scope": "user_prefix"}, seed=5
    )
    out = str(tmp_path / "eval")
    doc = evaluate(
        ScorerSource("checkpoint", uri=uri, batch_size=8), out, splits="test", num_actors=0, progress=False
    )
    scorer = Scorer.from_checkpoint(uri)
    t = protocol.read_split(tiny_artifacts.data_uri, "test")
    full = scorer.score(
        t["user_id"].to_numpy(), t["item_id"].to_numpy(), t["history"].to_pylist(), share_prefix=False
    )
    np.testing.assert_allclose(read_scores(out, "test")["score"].to_numpy(), full, atol=1e-4)
    assert doc["splits"]["test"]["rows"] == t.num_rows
