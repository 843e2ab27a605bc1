"""Serving under load on 127.0.0.1: 16 concurrent clients with no error, and a scorer replica killed
mid-load is replaced by Serve while requests keep succeeding (two scorer replicas, user-affinity routing)."""

from __future__ import annotations

import random
import statistics
import threading
import time
from types import SimpleNamespace

import pytest

from tests.serve import harness

pytestmark = [pytest.mark.slow, pytest.mark.ray]


@pytest.fixture(scope="module")
def app(ray_cluster, tiny_setup):
    from ray import serve

    port = harness.free_port()
    base = f"http://127.0.0.1:{port}"
    config = harness.app_config(
        port,
        tiny_setup.checkpoint_uri,
        tiny_setup.data_uri,
        scorer={"cache_bytes": 1 << 18},
        scorer_replicas=2,
    )
    harness.start_serve(port)
    try:
        harness.deploy(config)
        harness.wait_http(base)
        yield SimpleNamespace(base=base, setup=tiny_setup, config=config)
    finally:
        serve.shutdown()


def run_load(base: str, clients: int, seconds: float, on_tick=None) -> dict:
    """`clients` threads posting mixed /v1/score and /v1/recommend requests for `seconds`."""
    results: list[tuple[float, float, int]] = []  # (start, latency, status)
    lock = threading.Lock()
    stop_at = time.time() + seconds

    def client(k: int) -> None:
        rng = random.Random(k)
        while time.time() < stop_at:
            user = f"user_{rng.randint(1, 45)}"  # a few ids beyond the dataset: cold start
            items = [f"item_{rng.randint(1, 60)}" for _ in range(rng.randint(1, 4))]
            if rng.random() < 0.3:
                path, body = "/v1/recommend", {"user_id": user, "candidates": sorted(set(items)), "k": 2}
            else:
                path, body = "/v1/score", {"user_id": user, "item_ids": items}
            t0 = time.time()
            try:
                status, _ = harness.request(base, "POST", path, body, timeout=60)
            except OSError:
                status = -1
            with lock:
                results.append((t0, time.time() - t0, status))

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    if on_tick is not None:
        on_tick()
    for t in threads:
        t.join()
    latencies = sorted(r[1] for r in results)
    return {
        "requests": len(results),
        "errors": [r for r in results if r[2] != 200],
        "throughput": len(results) / seconds,
        "p50": statistics.median(latencies) if latencies else None,
        "p99": latencies[int(0.99 * (len(latencies) - 1))] if latencies else None,
        "results": results,
    }


def test_sixteen_clients_for_twenty_seconds_without_errors(app):
    stats = run_load(app.base, clients=16, seconds=20)
    print(
        f"load: {stats['requests']} requests, {stats['throughput']:.1f} req/s, "
        f"p50 {stats['p50'] * 1000:.0f} ms, p99 {stats['p99'] * 1000:.0f} ms"
    )
    assert stats["requests"] > 100
    assert stats["errors"] == []
    # ~45 users x 60 items of 1 KiB G each would need ~2.6 MiB: the 256 KiB budget holds, by evicting
    cache = harness.request(app.base, "GET", "/v1/model")[1]["cache"]
    assert 0 < cache["bytes"] <= cache["max_bytes"] == 1 << 18
    assert cache["evictions"] > 0 and cache["users"] > 1


def test_a_killed_scorer_replica_is_replaced_and_requests_succeed_again(app):
    import ray

    _, info = harness.request(app.base, "GET", "/v1/model")
    victim_name = info["replica_actor"]
    killed_at: list[float] = []

    def kill_after_a_while() -> None:
        time.sleep(3)
        ray.kill(ray.get_actor(victim_name, namespace="serve"), no_restart=True)
        killed_at.append(time.time())

    stats = run_load(app.base, clients=8, seconds=15, on_tick=kill_after_a_while)
    assert killed_at, "the replica was killed during the load"
    after_kill = [r for r in stats["results"] if r[0] > killed_at[0] + 1]
    print(
        f"kill: {stats['requests']} requests, {len(stats['errors'])} failed; {len(after_kill)} after the kill"
    )
    assert after_kill and all(r[2] == 200 for r in after_kill[-20:])  # served again, by the survivor
    assert len(stats["errors"]) <= 8  # at most the calls in flight on the killed replica (ingress retries)

    harness.wait_running(timeout_s=120)  # Serve has started a replacement: 2 healthy replicas again
    from ray import serve

    scorer = serve.status().applications[harness.APP].deployments["CoRAScorer"]
    assert scorer.replica_states == {"RUNNING": 2}
    with pytest.raises(ValueError):
        ray.get_actor(victim_name, namespace="serve")  # the killed replica is gone, not restarted in place
    for k in range(20):
        status, _ = harness.request(
            app.base, "POST", "/v1/score", {"user_id": f"user_{k}", "item_ids": ["item_1"]}
        )
        assert status == 200
