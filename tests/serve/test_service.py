"""The serving rules without Ray: id mapping, limits, stored histories, cold start, batching, cache, top-k."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from cora_ray.errors import ConfigError
from cora_ray.infer.service import (
    Catalog,
    RecommendRequest,
    RequestError,
    RequestLimits,
    ScoreJob,
    ScoreRequest,
    ScorerOptions,
    ScoringEngine,
    stored_histories,
    top_k,
)
from tests.serve import fakes


@pytest.fixture(scope="module")
def catalog(tmp_path_factory) -> Catalog:
    uri = str(tmp_path_factory.mktemp("data") / "tiny")
    fakes.write_tiny_dataset(uri)
    return Catalog.from_dataset(uri)


LIMITS = RequestLimits(max_items=5, max_history=4, max_id_length=8)


def test_catalog_maps_raw_ids_and_stores_latest_positive_history(catalog):
    job = catalog.resolve("u1", ["i3", "i1"], None, LIMITS)
    assert job.user_id == catalog.user_ids["u1"] and job.item_ids == [3, 1]
    assert job.history == catalog.histories.get(job.user_id, [])
    # an int raw id is read as its decimal string: no user "7" exists → unknown user, cold start
    assert catalog.resolve(7, ["i1"], None, LIMITS).user_id is None


def test_stored_histories_are_the_last_positives_oldest_first():
    t = pa.table(
        {
            "user_id": [1, 1, 1, 2, 1],
            "item_id": [10, 11, 12, 20, 13],
            "label": [1, 0, 1, 1, 1],
            "ts": [1, 2, 3, 1, 0],
        }
    )
    assert stored_histories([t], 2) == {1: [10, 12], 2: [20]}


@pytest.mark.parametrize(
    ("items", "history", "message"),
    [
        ([], None, "must not be empty"),
        (["i1"] * 6, None, "limit is 5"),
        (["i1"], ["i1"] * 5, "history has 5 entries"),
        (["nope", "i2", "also"], None, "'nope', 'also'"),
        (["i20"], None, "'i20'"),  # exists but has no title
        (["i1"], ["zzz"], "unknown history item"),
        (["i1" * 9], None, "longer than 8"),
    ],
)
def test_resolve_refuses_bad_requests_with_a_message(catalog, items, history, message):
    with pytest.raises(RequestError, match=message) as err:
        catalog.resolve("u1", items, history, LIMITS)
    assert 400 <= err.value.status < 500


def test_request_models_are_strict():
    ScoreRequest.model_validate({"user_id": 1, "item_ids": ["a", 2]})
    for bad in (
        {"user_id": 1.5, "item_ids": ["a"]},
        {"user_id": True, "item_ids": ["a"]},
        {"user_id": "u", "item_ids": [float("nan")]},
        {"user_id": "u", "item_ids": "a"},
        {"user_id": "u"},
        {"user_id": "u", "item_ids": ["a"], "extra": 1},
    ):
        with pytest.raises(ValueError):
            ScoreRequest.model_validate(bad)
    for k in (0, -1, 2.0, float("nan"), "3"):
        with pytest.raises(ValueError):
            RecommendRequest.model_validate({"user_id": "u", "candidates": ["a"], "k": k})


def test_top_k_sorted_with_stable_ties():
    assert top_k(["a", "b", "c", "d"], [0.1, 0.9, 0.1, 0.5], 3) == [("b", 0.9), ("d", 0.5), ("a", 0.1)]
    assert len(top_k(["a"], [1.0], 10)) == 1


def test_scorer_options_merge_and_validate():
    base = ScorerOptions(checkpoint_uri="x", cache_bytes=10)
    opts = ScorerOptions.from_user_config({"max_batch_rows": 4}, base)
    assert (opts.checkpoint_uri, opts.cache_bytes, opts.max_batch_rows) == ("x", 10, 4)
    with pytest.raises(ConfigError, match="unknown key 'nope'"):
        ScorerOptions.from_user_config({"nope": 1})
    with pytest.raises(ConfigError, match="max_batch_rows"):
        ScorerOptions.from_user_config({"max_batch_rows": 0})


def jobs() -> list[ScoreJob]:
    return [
        ScoreJob("u1", 1, [1, 2, 3], [4]),
        ScoreJob("u2", 2, [2], []),
        ScoreJob("new", None, [5, 6], [1, 2]),  # unknown to the dataset
        ScoreJob("u11", 11, [7], [3]),  # in the dataset, unknown to the CF model (fake knows 1..10)
    ]


def test_engine_batches_across_users_and_marks_cold_start():
    scorer = fakes.FakeScorer()
    engine = ScoringEngine(scorer, ScorerOptions(max_rows_per_forward=4, cache_bytes=0))
    results = engine.score_jobs(jobs())
    assert [r.cold_start for r in results] == [False, False, True, True]
    assert [len(r.scores) for r in results] == [3, 1, 2, 1]
    assert scorer.score_calls == [4, 3]  # 7 rows in chunks of max_rows_per_forward
    # warm rows carry the generated G; cold rows a zero G (only item and history terms remain)
    expected_warm = scorer.score([1], [2], [[4]])[0]
    assert results[0].scores[1] == pytest.approx(expected_warm)
    assert results[2].scores == pytest.approx([0.005 + 0.02, 0.006 + 0.02])
    assert results[0].model.startswith("fake://ckpt@")


def test_cache_hits_skip_the_generator_and_give_the_same_scores():
    scorer = fakes.FakeScorer()
    engine = ScoringEngine(scorer, ScorerOptions(cache_bytes=1 << 20))
    first = engine.score_jobs(jobs())
    generated = sum(scorer.g_calls)
    assert generated == 4  # the warm rows only
    second = engine.score_jobs(jobs())
    assert sum(scorer.g_calls) == generated  # all hits
    assert [r.scores for r in first] == [r.scores for r in second]
    s = engine.cache.stats()
    assert (s.hits, s.misses) == (4, 4)
    # a changed history (MF backbone) still hits: G does not depend on the prompt
    engine.score_jobs([ScoreJob("u1", 1, [1], [9, 9])])
    assert engine.cache.stats().hits == 5


def test_model_info_carries_the_checkpoint_hash():
    scorer = fakes.FakeScorer()
    assert ScoringEngine(scorer, ScorerOptions(cache_bytes=0)).describe()["checkpoint_hash"] is None
    scorer.manifest["hash"] = "c" * 64  # what cora_ray.checkpoint.read_checkpoint_manifest always returns
    assert ScoringEngine(scorer, ScorerOptions(cache_bytes=0)).describe()["checkpoint_hash"] == "c" * 64


def test_swap_to_a_new_checkpoint_empties_the_cache():
    engine = ScoringEngine(fakes.FakeScorer(tag="a"), ScorerOptions(cache_bytes=1 << 20))
    engine.score_jobs(jobs())
    assert len(engine.cache) == 4
    engine.swap(fakes.FakeScorer(uri="fake://ckpt2", tag="b"))
    assert len(engine.cache) == 0 and engine.cache.stats().version.startswith("fake://ckpt2@bbbb")
    assert engine.score_jobs(jobs())[0].model.startswith("fake://ckpt2@")


def test_all_cold_batch_uses_zero_G_of_the_scorers_shape():
    scorer = fakes.FakeScorer()
    (r,) = ScoringEngine(scorer, ScorerOptions()).score_jobs([ScoreJob("x", None, [1, 2], [])])
    assert r.cold_start and np.allclose(r.scores, [0.001, 0.002])
    assert scorer.g_calls == []


def test_G_is_built_per_forward_chunk_never_for_the_whole_batch():
    scorer = fakes.FakeScorer()
    seen: list[tuple[int, float]] = []
    engine = ScoringEngine(
        scorer,
        ScorerOptions(max_rows_per_forward=2, cache_bytes=0),
        on_forward=lambda n, s: seen.append((n, s)),
    )
    batch = jobs() * 3  # 21 rows
    results = engine.score_jobs(batch)
    assert max(scorer.g_calls) <= 2 and sum(scorer.g_calls) == 3 * 4  # warm rows only, 2 at a time
    assert all(g is not None and g <= 2 for g in scorer.g_rows_per_score)  # G handed over per chunk
    assert [n for n, _ in seen] == [2] * 10 + [1] and all(s >= 0 for _, s in seen)
    assert engine.forwards == 11 and engine.rows_scored == 21 and engine.describe()["forwards"] == 11
    # the chunked scores equal one unchunked pass
    whole = ScoringEngine(fakes.FakeScorer(), ScorerOptions(max_rows_per_forward=64, cache_bytes=0))
    flat = [x for r in results for x in r.scores]
    assert flat == pytest.approx([x for r in whole.score_jobs(batch) for x in r.scores])
