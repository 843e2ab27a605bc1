"""The HTTP API end to end: a real Serve app on 127.0.0.1 with the tiny model (one app for the module).

Endpoints, served scores = evaluation's scores for the same rows, cold start, the bad-input corpus (4xx
with a message, never 5xx, the server keeps serving), model info with cache stats, and a reload of another
checkpoint through user_config while requests keep flowing.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from types import SimpleNamespace
from urllib.parse import urlparse

import numpy as np
import pyarrow.compute as pc
import pytest
import torch

from cora_ray.checkpoint import read_checkpoint_manifest
from cora_ray.data import protocol
from tests.serve import harness

pytestmark = [pytest.mark.slow, pytest.mark.ray]

LIMITS = {"max_items": 50, "max_history": 30, "max_id_length": 64, "max_body_bytes": 65536}


@pytest.fixture(scope="module")
def app(ray_cluster, tiny_setup):
    from ray import serve

    from cora_ray.infer.scorer import Scorer
    from cora_ray.infer.service import Catalog

    setup = tiny_setup
    port = harness.free_port()
    base = f"http://127.0.0.1:{port}"
    config = harness.app_config(
        port, setup.checkpoint_uri, setup.data_uri, scorer={"cache_bytes": 1 << 20}, limits=LIMITS
    )
    harness.start_serve(port)
    try:
        harness.deploy(config)
        harness.wait_http(base)
        catalog = Catalog.from_dataset(setup.data_uri)
        yield SimpleNamespace(
            base=base,
            setup=setup,
            config=config,
            catalog=catalog,
            user_raw={v: k for k, v in catalog.user_ids.items()},
            scorer=Scorer.from_checkpoint(setup.checkpoint_uri, setup.data_uri),
        )
    finally:
        serve.shutdown()


def post(app, path, body=None, **kw):
    return harness.request(app.base, "POST", path, body, **kw)


def known_users(app) -> list[int]:
    train = protocol.read_split(app.setup.data_uri, "train", columns=["user_id"])
    return sorted(int(u) for u in pc.unique(train["user_id"]).to_pylist())


# -- endpoints ----------------------------------------------------------------------------------------------


def test_health_docs_and_openapi(app):
    status, body = harness.request(app.base, "GET", "/healthz")
    assert status == 200 and body["status"] == "ok" and body["items"] > 0
    status, html = harness.request(app.base, "GET", "/docs")
    assert status == 200 and "swagger" in html.lower()
    status, spec = harness.request(app.base, "GET", "/openapi.json")
    assert status == 200 and {"/v1/score", "/v1/recommend", "/v1/model", "/healthz"} <= set(spec["paths"])


def test_served_scores_equal_the_evaluation_scores_for_the_same_rows(app):
    from cora_ray.eval.evaluate import score_local
    from cora_ray.infer.source import ScorerSource

    rows = protocol.read_split(app.setup.data_uri, "test").slice(0, 12)
    expected, _ = score_local(
        ScorerSource(kind="checkpoint", uri=app.setup.checkpoint_uri, data_uri=app.setup.data_uri),
        rows,
        progress=False,
    )
    item_raw = app.catalog.item_raw
    for j, row in enumerate(rows.to_pylist()):
        status, body = post(
            app,
            "/v1/score",
            {
                "user_id": app.user_raw[row["user_id"]],
                "item_ids": [item_raw[row["item_id"]]],
                "history": [item_raw[h] for h in row["history"]],
            },
        )
        assert status == 200, body
        assert body["scores"][0] == pytest.approx(float(expected[j]), abs=1e-4)


def test_score_without_history_uses_the_stored_one_and_keeps_item_order(app):
    user = known_users(app)[0]
    items = [5, 1, 9, 3]
    status, body = post(
        app,
        "/v1/score",
        {"user_id": app.user_raw[user], "item_ids": [app.catalog.item_raw[i] for i in items]},
    )
    assert status == 200 and body["cold_start"] is False
    history = app.catalog.histories.get(user, [])
    expected = app.scorer.score([user] * 4, items, [history] * 4)
    np.testing.assert_allclose(body["scores"], expected, atol=1e-4)
    assert body["model"].startswith(app.setup.checkpoint_uri + "@")


def test_recommend_returns_the_top_k_sorted(app):
    user = app.user_raw[known_users(app)[1]]
    candidates = [app.catalog.item_raw[i] for i in range(1, 9)]
    _, scored = post(app, "/v1/score", {"user_id": user, "item_ids": candidates})
    status, body = post(app, "/v1/recommend", {"user_id": user, "candidates": candidates, "k": 3})
    assert status == 200
    got = [(it["item_id"], it["score"]) for it in body["items"]]
    want = sorted(zip(candidates, scored["scores"], strict=True), key=lambda p: -p[1])[:3]
    assert [g[0] for g in got] == [w[0] for w in want]
    assert [g[1] for g in got] == pytest.approx([w[1] for w in want], abs=1e-5)
    assert all(it["title"] for it in body["items"])
    status, body = post(app, "/v1/recommend", {"user_id": user, "candidates": candidates[:2], "k": 10})
    assert status == 200 and len(body["items"]) == 2  # k above the candidates: all of them


def test_cold_start_users_get_the_plain_llm_and_are_flagged(app):
    items = [1, 2, 3]
    raw_items = [app.catalog.item_raw[i] for i in items]
    history = [4, 5]
    raw_history = [app.catalog.item_raw[i] for i in history]
    zero = app.scorer.score([0] * 3, items, [history] * 3, G=torch.zeros((3, *app.scorer.g_shape)))

    # a user id the dataset has never seen
    status, body = post(
        app, "/v1/score", {"user_id": "someone-new", "item_ids": raw_items, "history": raw_history}
    )
    assert status == 200 and body["cold_start"] is True
    np.testing.assert_allclose(body["scores"], zero, atol=1e-4)

    # a dataset user without train interactions: unknown to the CF model
    cold = sorted(set(app.catalog.user_ids.values()) - set(known_users(app)))
    assert cold, "the synthetic dataset has cold users"
    status, body = post(
        app, "/v1/score", {"user_id": app.user_raw[cold[0]], "item_ids": raw_items, "history": raw_history}
    )
    assert status == 200 and body["cold_start"] is True
    np.testing.assert_allclose(body["scores"], zero, atol=1e-4)

    # a warm user with the same prompt differs: the collaborative delta is on
    warm = app.user_raw[known_users(app)[0]]
    status, body = post(app, "/v1/score", {"user_id": warm, "item_ids": raw_items, "history": raw_history})
    assert status == 200 and body["cold_start"] is False
    assert not np.allclose(body["scores"], zero, atol=1e-4)


def test_model_info_names_checkpoint_llm_cf_metrics_and_cache(app):
    user = app.user_raw[known_users(app)[2]]
    for _ in range(2):  # the second request hits the G cache
        assert post(app, "/v1/score", {"user_id": user, "item_ids": ["item_1", "item_2"]})[0] == 200
    status, info = harness.request(app.base, "GET", "/v1/model")
    assert status == 200
    assert info["checkpoint"] == app.setup.checkpoint_uri and info["method"] == "cora"
    assert info["checkpoint_hash"] == read_checkpoint_manifest(app.setup.checkpoint_uri)["hash"]
    assert info["base_llm"].startswith(str(app.setup.llm_dir)) or "llm" in info["base_llm"]
    assert info["cf_backbone"] == "mf" and info["metrics"]["valid_auc"] == pytest.approx(0.5)
    cache = info["cache"]
    assert cache["hits"] >= 2 and cache["misses"] >= 2 and 0 < cache["bytes"] <= cache["max_bytes"]
    assert info["limits"]["max_items"] == LIMITS["max_items"]
    serving = info["serving"]
    assert serving["queued_rows"] == 0 and serving["max_queued_rows"] == 10_000
    assert serving["admitted_rows"] >= 4 and serving["rows_per_s"] > 0
    assert serving["forward_latency"]["count"] >= 2 and info["forwards"] >= 2
    assert serving["device_memory"] == "model_tensor_bytes" and serving["device_memory_bytes"] > 0


# -- the bad-input corpus -----------------------------------------------------------------------------------

BAD_INPUTS = [
    # (name, method, path, json body | raw bytes, extra headers)
    ("malformed json", "POST", "/v1/score", b'{"user_id": "user_1", "item_ids": [', None),
    ("not an object", "POST", "/v1/score", b"[1, 2, 3]", None),
    ("empty body", "POST", "/v1/score", b"", None),
    ("invalid utf-8", "POST", "/v1/score", b'{"user_id": "\xff\xfe", "item_ids": ["item_1"]}', None),
    ("deeply nested", "POST", "/v1/score", b"[" * 50_000 + b"]" * 50_000, None),
    ("missing item_ids", "POST", "/v1/score", {"user_id": "user_1"}, None),
    ("missing user_id", "POST", "/v1/score", {"item_ids": ["item_1"]}, None),
    ("empty candidates", "POST", "/v1/recommend", {"user_id": "user_1", "candidates": [], "k": 2}, None),
    ("user_id float", "POST", "/v1/score", {"user_id": 1.5, "item_ids": ["item_1"]}, None),
    ("user_id null", "POST", "/v1/score", {"user_id": None, "item_ids": ["item_1"]}, None),
    ("user_id bool", "POST", "/v1/score", {"user_id": True, "item_ids": ["item_1"]}, None),
    ("item_ids a string", "POST", "/v1/score", {"user_id": "user_1", "item_ids": "item_1"}, None),
    ("item id a dict", "POST", "/v1/score", {"user_id": "user_1", "item_ids": [{"id": 1}]}, None),
    (
        "history a string",
        "POST",
        "/v1/score",
        {"user_id": "user_1", "item_ids": ["item_1"], "history": "x"},
        None,
    ),
    ("extra field", "POST", "/v1/score", {"user_id": "user_1", "item_ids": ["item_1"], "items": []}, None),
    ("empty item_ids", "POST", "/v1/score", {"user_id": "user_1", "item_ids": []}, None),
    ("empty candidates", "POST", "/v1/recommend", {"user_id": "user_1", "candidates": [], "k": 1}, None),
    ("oversized item_ids", "POST", "/v1/score", {"user_id": "user_1", "item_ids": ["item_1"] * 51}, None),
    (
        "oversized history",
        "POST",
        "/v1/score",
        {"user_id": "u", "item_ids": ["item_1"], "history": ["item_1"] * 31},
        None,
    ),
    ("k negative", "POST", "/v1/recommend", {"user_id": "user_1", "candidates": ["item_1"], "k": -1}, None),
    ("k zero", "POST", "/v1/recommend", {"user_id": "user_1", "candidates": ["item_1"], "k": 0}, None),
    ("k huge", "POST", "/v1/recommend", {"user_id": "user_1", "candidates": ["item_1"], "k": 10**30}, None),
    ("k float", "POST", "/v1/recommend", {"user_id": "user_1", "candidates": ["item_1"], "k": 2.5}, None),
    ("k string", "POST", "/v1/recommend", {"user_id": "user_1", "candidates": ["item_1"], "k": "3"}, None),
    ("k NaN", "POST", "/v1/recommend", b'{"user_id": "user_1", "candidates": ["item_1"], "k": NaN}', None),
    (
        "k Infinity",
        "POST",
        "/v1/recommend",
        b'{"user_id": "user_1", "candidates": ["item_1"], "k": 1e400}',
        None,
    ),
    ("NaN item id", "POST", "/v1/score", b'{"user_id": "user_1", "item_ids": [NaN]}', None),
    ("NaN user id", "POST", "/v1/score", b'{"user_id": NaN, "item_ids": ["item_1"]}', None),
    (
        "unknown item",
        "POST",
        "/v1/score",
        {"user_id": "user_1", "item_ids": ["item_1", "no-such-item"]},
        None,
    ),
    (
        "unknown history item",
        "POST",
        "/v1/score",
        {"user_id": "user_1", "item_ids": ["item_1"], "history": ["nope"]},
        None,
    ),
    (
        "unknown candidate",
        "POST",
        "/v1/recommend",
        {"user_id": "user_1", "candidates": ["nope"], "k": 1},
        None,
    ),
    (
        "duplicate candidates",
        "POST",
        "/v1/recommend",
        {"user_id": "user_1", "candidates": ["item_1", "item_1"], "k": 1},
        None,
    ),
    ("id too long", "POST", "/v1/score", {"user_id": "u" * 65, "item_ids": ["item_1"]}, None),
    ("1 MB body", "POST", "/v1/score", {"user_id": "user_1", "item_ids": ["item_1"] * 110_000}, None),
    ("text/plain body", "POST", "/v1/score", b"user_id=user_1", {"content-type": "text/plain"}),
    ("GET on a POST route", "GET", "/v1/score", None, None),
    ("unknown route", "GET", "/v2/nothing", None, None),
]


@pytest.mark.parametrize(
    ("name", "method", "path", "body", "headers"), BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS]
)
def test_bad_input_is_a_4xx_with_a_message(app, name, method, path, body, headers):
    raw = body if isinstance(body, bytes) else None
    status, answer = harness.request(
        app.base, method, path, None if raw is not None else body, raw=raw, headers=headers
    )
    assert 400 <= status < 500, (name, status, answer)
    assert isinstance(answer, dict) and str(answer.get("detail", "")).strip(), (name, answer)
    if name.startswith("unknown") and "route" not in name:
        assert "nope" in answer["detail"] or "no-such-item" in answer["detail"]
    if name == "1 MB body":
        assert status == 413


def test_a_chunked_1mb_body_without_content_length_is_refused(app):
    url = urlparse(app.base)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    payload = json.dumps({"user_id": "user_1", "item_ids": ["item_1"] * 110_000}).encode()
    chunks = (payload[i : i + 65536] for i in range(0, len(payload), 65536))
    conn.request(
        "POST", "/v1/score", body=chunks, headers={"content-type": "application/json"}, encode_chunked=True
    )
    response = conn.getresponse()
    text = response.read()
    assert response.status == 413 and b"limit" in text, (response.status, text[:300])
    conn.close()


def test_server_keeps_serving_after_the_corpus(app):
    status, body = post(app, "/v1/score", {"user_id": "user_1", "item_ids": ["item_1"]})
    assert status == 200 and len(body["scores"]) == 1


def test_serving_and_cache_counters_are_on_the_prometheus_endpoint(app):
    import urllib.request

    import ray

    port = ray._private.worker.global_worker.node.metrics_export_port
    deadline = time.time() + 45  # Ray exports metrics every few seconds
    found: dict[str, float] = {}
    while time.time() < deadline:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        found = {}
        for line in text.splitlines():
            if line.startswith("ray_cora_"):
                name = line.split("{")[0].split(" ")[0]
                found[name] = found.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
        if set(WANTED) <= set(found):
            break
        time.sleep(2)
    assert found.get("ray_cora_g_cache_hits_total", 0) > 0, found
    assert found.get("ray_cora_g_cache_misses_total", 0) > 0 and "ray_cora_g_cache_bytes" in found
    assert found.get("ray_cora_scored_rows_total", 0) > 0 and found.get("ray_cora_rows_per_s", 0) > 0
    assert found.get("ray_cora_forward_latency_s_count", 0) > 0, found
    assert found.get("ray_cora_device_memory_bytes", 0) > 0 and "ray_cora_queued_rows" in found


WANTED = (
    "ray_cora_g_cache_hits_total",
    "ray_cora_g_cache_misses_total",
    "ray_cora_g_cache_bytes",
    "ray_cora_scored_rows_total",
    "ray_cora_rows_per_s",
    "ray_cora_forward_latency_s_count",
    "ray_cora_device_memory_bytes",
    "ray_cora_queued_rows",
)


# -- reload ---------------------------------------------------------------------------------------------------


def test_reload_through_user_config_drops_no_request(app):
    results: list[tuple[int, str]] = []
    stop = threading.Event()

    def client(k: int) -> None:
        while not stop.is_set():
            status, body = post(
                app, "/v1/score", {"user_id": f"user_{k + 1}", "item_ids": ["item_1", "item_2"]}
            )
            results.append((status, body.get("model", "") if isinstance(body, dict) else str(body)))

    threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)
        harness.deploy(harness.with_user_config(app.config, checkpoint_uri=app.setup.checkpoint2_uri))
        deadline = time.time() + 60
        while time.time() < deadline and not any(
            m.startswith(app.setup.checkpoint2_uri + "@") for _, m in results
        ):
            time.sleep(0.2)
        time.sleep(1.0)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    statuses = [s for s, _ in results]
    models = {m.rsplit("@", 1)[0] for _, m in results}
    assert statuses and all(s == 200 for s in statuses), [r for r in results if r[0] != 200][:5]
    assert models == {app.setup.checkpoint_uri, app.setup.checkpoint2_uri}
    status, info = harness.request(app.base, "GET", "/v1/model")
    assert info["checkpoint"] == app.setup.checkpoint2_uri
    assert info["cache"]["version"] == info["model"] and info["cache"]["resets"] >= 1
    # back to the first checkpoint (in place again)
    harness.deploy(app.config)


def test_a_failed_reload_keeps_serving_the_loaded_model_and_says_why(app):
    harness.deploy(
        harness.with_user_config(app.config, checkpoint_uri=str(app.setup.root / "no-such-checkpoint"))
    )
    status, body = post(app, "/v1/score", {"user_id": "user_1", "item_ids": ["item_1"]})
    assert status == 200 and body["model"].startswith(app.setup.checkpoint_uri + "@")
    info = harness.request(app.base, "GET", "/v1/model")[1]
    assert "no-such-checkpoint" in info["reload_error"] and "still serving" in info["reload_error"]
    status, health = harness.request(app.base, "GET", "/healthz")
    assert status == 200 and health["status"] == "degraded" and "no-such-checkpoint" in health["reload_error"]
    harness.deploy(app.config)
    assert harness.request(app.base, "GET", "/v1/model")[1]["reload_error"] is None
    assert harness.request(app.base, "GET", "/healthz")[1]["status"] == "ok"


def test_a_reload_to_another_base_llm_is_refused_naming_both_hashes(app, tmp_path_factory):
    from tests.serve.artifacts import build_tiny_setup

    other = build_tiny_setup(tmp_path_factory.mktemp("other_llm"), seed=1)
    harness.deploy(harness.with_user_config(app.config, checkpoint_uri=other.checkpoint_uri))
    info = harness.request(app.base, "GET", "/v1/model")[1]
    served = info["base_llm_weight_hash"]
    assert info["checkpoint"] == app.setup.checkpoint_uri and served in info["reload_error"]
    assert "ArtifactMismatchError" in info["reload_error"] and "base LLM weight hash" in info["reload_error"]
    assert harness.request(app.base, "GET", "/healthz")[1]["status"] == "degraded"
    harness.deploy(app.config)


# -- admission ------------------------------------------------------------------------------------------------


def test_rows_past_the_replicas_bound_get_a_fast_503_with_retry_after(app):
    harness.deploy(harness.with_user_config(app.config, max_queued_rows=3))
    try:
        body = json.dumps({"user_id": "user_1", "item_ids": ["item_1", "item_2", "item_3", "item_4"]})
        u = urlparse(app.base)
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
        conn.request("POST", "/v1/score", body, {"content-type": "application/json"})
        resp = conn.getresponse()
        answer = json.loads(resp.read())
        assert resp.status == 503 and int(resp.getheader("Retry-After")) >= 1, answer
        assert "max_queued_rows" in answer["detail"] and answer["retry_after_s"] >= 1
        ok, _ = post(app, "/v1/score", {"user_id": "user_1", "item_ids": ["item_1", "item_2", "item_3"]})
        assert ok == 200  # within the bound
        info = harness.request(app.base, "GET", "/v1/model")[1]["serving"]
        assert info["refused_rows"] >= 4 and info["max_queued_rows"] == 3
    finally:
        harness.deploy(app.config)
