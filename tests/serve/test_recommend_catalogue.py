"""POST /v1/recommend without candidates: the checkpoint's CF backbone retrieves limits.catalogue_k unseen
items, the LLM re-ranks them through the normal scoring path, the top k come back with CF rank and score.

The first tests are the rules without Ray (limits, request model, user resolution); the rest run the real
Serve app on 127.0.0.1 with the tiny CoRA + MF setup (one app for the module)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from cora_ray.errors import ConfigError
from cora_ray.infer.service import (
    Catalog,
    RecommendRequest,
    RequestError,
    RequestLimits,
    resolve_catalogue_user,
)
from tests.serve import fakes, harness

K = 12
LIMITS = {"max_items": 50, "max_history": 30, "max_id_length": 64, "max_body_bytes": 65536, "catalogue_k": K}


# -- without Ray --------------------------------------------------------------------------------------------


def test_catalogue_k_defaults_to_100_within_max_items_and_is_checked():
    assert RequestLimits().catalogue_k == 100
    assert RequestLimits(max_items=20).catalogue_k == 20  # a catalogue request must fit one batch
    assert RequestLimits(max_items=50, catalogue_k=30).catalogue_k == 30
    with pytest.raises(ConfigError, match="catalogue_k=60 is above limits.max_items=50"):
        RequestLimits(max_items=50, catalogue_k=60)
    with pytest.raises(ConfigError, match="catalogue_k must be > 0"):
        RequestLimits(catalogue_k=0)


def test_candidates_are_optional_but_never_empty():
    assert RecommendRequest.model_validate({"user_id": "u1"}).candidates is None
    assert RecommendRequest.model_validate({"user_id": "u1", "k": 3}).k == 3
    for bad in ({"user_id": "u1", "candidates": []}, {"user_id": "u1", "k": 0}, {"user_id": "u1", "k": 1.5}):
        with pytest.raises(ValueError):
            RecommendRequest.model_validate(bad)


def test_resolve_catalogue_user_maps_user_and_history(tmp_path):
    uri = str(tmp_path / "tiny")
    fakes.write_tiny_dataset(uri)
    catalog = Catalog.from_dataset(uri)
    limits = RequestLimits(max_items=5, max_history=2, max_id_length=8)
    job = resolve_catalogue_user(catalog, "u1", None, limits)
    assert job.user_id == catalog.user_ids["u1"] and job.item_ids == []
    assert job.history == catalog.histories.get(job.user_id, [])
    assert resolve_catalogue_user(catalog, "u1", ["i3", "i4"], limits).history == [3, 4]
    assert resolve_catalogue_user(catalog, "nobody", None, limits).user_id is None
    for user, history, message in (
        ("u1", ["i1", "i2", "i3"], "history has 3 entries; the limit is 2"),
        ("u1", ["nope"], "unknown history item"),
        ("x" * 9, None, "user_id must be 1..8 characters"),
    ):
        with pytest.raises(RequestError, match=message):
            resolve_catalogue_user(catalog, user, history, limits)


# -- the HTTP API --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def app(ray_cluster, tiny_setup):
    from ray import serve

    from cora_ray.cf.artifact import load_cf_artifact
    from cora_ray.data import protocol
    from cora_ray.infer.scorer import Scorer

    setup = tiny_setup
    port = harness.free_port()
    base = f"http://127.0.0.1:{port}"
    harness.start_serve(port)
    try:
        harness.deploy(harness.app_config(port, setup.checkpoint_uri, setup.data_uri, limits=LIMITS))
        harness.wait_http(base)
        catalog = Catalog.from_dataset(setup.data_uri)
        train = protocol.read_split(setup.data_uri, "train", columns=["user_id", "item_id"])
        seen: dict[int, set[int]] = {}
        for u, i in zip(train["user_id"].to_pylist(), train["item_id"].to_pylist(), strict=True):
            seen.setdefault(u, set()).add(i)
        yield SimpleNamespace(
            base=base,
            catalog=catalog,
            user_raw={v: k for k, v in catalog.user_ids.items()},
            seen=seen,
            cf=load_cf_artifact(setup.cf_uri),
            scorer=Scorer.from_checkpoint(setup.checkpoint_uri, setup.data_uri),
        )
    finally:
        serve.shutdown()


def post(app, body):
    return harness.request(app.base, "POST", "/v1/recommend", body)


def cf_top(app, user: int, exclude: set[int]) -> list[int]:
    """The brute-force MF top K of the titled items not in `exclude`."""
    with torch.no_grad():
        scores = (app.cf.user_emb.weight[user] @ app.cf.item_emb.weight.T).numpy()
    allowed = [i for i in range(1, len(scores)) if app.catalog.title(i) and i not in exclude]
    return sorted(allowed, key=lambda i: (-scores[i], i))[:K]


@pytest.mark.slow
@pytest.mark.ray
def test_catalogue_recommendation_for_a_known_user(app):
    user = sorted(app.seen)[0]
    status, body = post(app, {"user_id": app.user_raw[user], "k": 5})
    assert status == 200, body
    assert body["source"] == "catalogue" and body["retrieved"] == K and "fallback" not in body
    assert body["cold_start"] is False
    items = body["items"]
    assert len(items) == 5 and [it["score"] for it in items] == sorted(
        (it["score"] for it in items), reverse=True
    )
    raw_to_int = app.catalog.item_ids
    ids = [raw_to_int[it["item_id"]] for it in items]
    assert not set(ids) & app.seen[user]  # nothing the user had in train
    retrieved = cf_top(app, user, app.seen[user])
    assert all(retrieved[it["cf_rank"] - 1] == raw_to_int[it["item_id"]] for it in items)
    assert all(it["title"] == app.catalog.title(i) for it, i in zip(items, ids, strict=True))
    # the LLM scores are the served scores of those items (the re-ranking went through the scoring path)
    _, scored = harness.request(
        app.base,
        "POST",
        "/v1/score",
        {"user_id": app.user_raw[user], "item_ids": [it["item_id"] for it in items]},
    )
    np.testing.assert_allclose([it["score"] for it in items], scored["scores"], atol=1e-4)
    # and they are the top 5 of the K retrieved by LLM score
    _, all_scored = harness.request(
        app.base,
        "POST",
        "/v1/score",
        {"user_id": app.user_raw[user], "item_ids": [app.catalog.item_raw[i] for i in retrieved]},
    )
    best = sorted(range(K), key=lambda j: -all_scored["scores"][j])[:5]
    assert sorted(ids) == sorted(retrieved[j] for j in best)
    timing = body["timing"]
    assert timing["retrieval_s"] >= 0 and timing["rerank_s"] > 0


@pytest.mark.slow
@pytest.mark.ray
def test_a_sent_history_is_excluded_and_an_unknown_user_gets_the_popularity_fallback(app):
    user = sorted(app.seen)[1]
    _, plain = post(app, {"user_id": app.user_raw[user], "k": 3})
    top = [app.catalog.item_ids[it["item_id"]] for it in plain["items"]]
    status, body = post(
        app, {"user_id": app.user_raw[user], "k": 3, "history": [app.catalog.item_raw[i] for i in top]}
    )
    assert status == 200, body
    assert not {app.catalog.item_ids[it["item_id"]] for it in body["items"]} & set(top)

    status, body = post(app, {"user_id": "someone-new", "k": 4})
    assert status == 200, body
    assert body["fallback"] == "popularity" and body["cold_start"] is True and len(body["items"]) == 4
    assert all(float(it["cf_score"]).is_integer() for it in body["items"])  # users who liked the item


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"user_id": "u", "k": K + 1}, f"k={K + 1} is above catalogue_k={K}"),
        ({"user_id": "u", "k": 0}, "k: Input should be greater than or equal to 1"),
        ({"user_id": "u", "candidates": []}, "candidates"),
        ({"user_id": "u", "k": 2, "history": ["no such item"]}, "unknown history item"),
    ],
)
def test_bad_catalogue_requests_are_4xx_and_the_server_keeps_serving(app, body, message):
    status, answer = post(app, body)
    assert status == 422, answer
    assert message in answer["detail"]
    assert harness.request(app.base, "GET", "/healthz")[0] == 200


@pytest.mark.slow
@pytest.mark.ray
def test_the_candidates_path_is_unchanged(app):
    user = app.user_raw[sorted(app.seen)[0]]
    candidates = [app.catalog.item_raw[i] for i in range(1, 6)]
    status, body = post(app, {"user_id": user, "candidates": candidates, "k": 2})
    assert status == 200 and set(body) == {"items", "model", "cold_start"}
    assert all(set(it) == {"item_id", "score", "title"} for it in body["items"])
