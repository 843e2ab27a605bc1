"""The per-user prefix cache on a serving engine (a real Scorer of a delta_scope=user_prefix checkpoint on
the tiny artifacts, no Ray): a returning user hits, scores equal the full-prompt scores, a swap or a new
checkpoint empties it, describe() and the options carry it."""

from __future__ import annotations

import numpy as np
import pytest

from cora_ray.data import protocol
from cora_ray.infer.scorer import Scorer
from cora_ray.infer.service import ScoreJob, ScorerOptions, ScoringEngine


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    from tests.infer.tiny_setup import shared_tiny_artifacts, write_tiny_checkpoint

    art = shared_tiny_artifacts(tmp_path_factory)
    uri = write_tiny_checkpoint(
        art,
        str(tmp_path_factory.mktemp("ckpt") / "up"),
        model_overrides={"delta_scope": "user_prefix"},
        seed=4,
    )
    return art, Scorer.from_checkpoint(uri, batch_size=4)


def _jobs(art, users: int = 3, per_user: int = 5, offset: int = 0) -> list[ScoreJob]:
    t = protocol.read_split(art.data_uri, "test")
    hist = dict(zip(t["user_id"].to_pylist(), t["history"].to_pylist(), strict=False))
    items = [i for i, title in enumerate(protocol.titles_by_id(protocol.read_items(art.data_uri))) if title]
    picked = sorted(hist)[:users]
    return [
        ScoreJob(str(u), u, items[offset + k : offset + k + per_user], list(hist[u] or []))
        for k, u in enumerate(picked)
    ]


def test_a_returning_user_hits_the_prefix_cache_and_scores_equal_full_prompts(shared):
    art, scorer = shared
    engine = ScoringEngine(scorer, ScorerOptions(max_rows_per_forward=4, prefix_cache_bytes=64 << 20))
    first = engine.score_jobs(_jobs(art))
    stats = engine.prefix_cache.stats()
    assert stats.misses == 3 and stats.hits >= 1  # one prefix pass per user; chunks of 4 rows reuse it
    again = engine.score_jobs(_jobs(art, offset=7))  # the same users with new candidates
    assert engine.prefix_cache.stats().misses == 3  # no new prefix pass
    for job, res in zip(_jobs(art, offset=7), again, strict=True):
        full = scorer.score(
            [job.user_id] * len(job.item_ids),
            job.item_ids,
            [job.history] * len(job.item_ids),
            share_prefix=False,
        )
        np.testing.assert_allclose(res.scores, full, atol=1e-4)
    assert len(first) == 3
    info = engine.describe()
    assert info["shares_prefix"] and info["prefix_cache"]["entries"] == 3


def test_a_swap_empties_the_prefix_cache_and_a_zero_budget_disables_it(shared):
    art, scorer = shared
    engine = ScoringEngine(scorer, ScorerOptions(prefix_cache_bytes=64 << 20))
    engine.score_jobs(_jobs(art))
    assert len(engine.prefix_cache) == 3
    engine.swap(scorer)
    assert len(engine.prefix_cache) == 0 and engine.prefix_cache.version == scorer.cache_version
    engine.set_options(ScorerOptions(prefix_cache_bytes=0))
    engine.score_jobs(_jobs(art))
    assert len(engine.prefix_cache) == 0


def test_prefix_cache_bytes_must_not_be_negative():
    from cora_ray.errors import ConfigError

    with pytest.raises(ConfigError, match="prefix_cache_bytes"):
        ScorerOptions(prefix_cache_bytes=-1)


def test_the_prefix_cache_sizing_table_follows_from_its_arithmetic_and_sets_both_configs():
    """docs/deploy.md §6 "Prefix cache": bytes per user and users held recomputed from the table's inputs,
    and each config's user_config.prefix_cache_bytes is the table's."""
    import re
    from pathlib import Path

    import yaml

    from cora_ray.infer.prefix_cache import prefix_entry_bytes

    repo = Path(__file__).resolve().parents[2]
    text = (repo / "docs" / "deploy.md").read_text()
    section = text.split("### Prefix cache: per-user keys/values")[1].split("\n## ")[0]
    rows = [r for r in section.splitlines() if re.match(r"\| serve\.(local\.)?config \|", r)]
    assert len(rows) == 2
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        config, numbers = cells[0], [int(c) for c in cells[2:]]
        layers, kv_heads, head_dim, nbytes, tokens, d_model, rank, per_user, budget, users = numbers
        assert per_user == prefix_entry_bytes(layers, kv_heads, head_dim, tokens, nbytes, d_model, rank)
        assert users == budget // per_user
        doc = yaml.safe_load((repo / config).read_text())
        scorer = next(d for a in doc["applications"] for d in a["deployments"] if d["name"] == "CoRAScorer")
        assert scorer["user_config"]["prefix_cache_bytes"] == budget, config
