"""User-affinity routing: the same user always prefers the same replica; users spread over replicas."""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace

from cora_ray.infer.service import ScoreJob
from serve.routing import rendezvous_rank, user_key_of


def test_rendezvous_is_stable_and_spreads_users():
    replicas = ["r1", "r2", "r3", "r4"]
    first = {f"user_{u}": rendezvous_rank(f"user_{u}", replicas)[0] for u in range(400)}
    assert first == {u: rendezvous_rank(u, list(reversed(replicas)))[0] for u in first}  # order-independent
    counts = Counter(first.values())
    assert set(counts) == set(replicas) and min(counts.values()) > 60


def test_removing_a_replica_moves_only_its_users():
    replicas = ["r1", "r2", "r3", "r4"]
    before = {u: rendezvous_rank(str(u), replicas)[0] for u in range(300)}
    after = {u: rendezvous_rank(str(u), replicas[:3])[0] for u in range(300)}
    moved = {u for u in before if before[u] != after[u]}
    assert moved == {u for u in before if before[u] == "r4"}


def test_user_key_is_read_from_the_scorer_call():
    job = ScoreJob(user_key="u7", user_id=7, item_ids=[1], history=[])
    assert user_key_of(SimpleNamespace(args=[job], kwargs={})) == "u7"
    assert user_key_of(SimpleNamespace(args=[], kwargs={})) is None
    assert user_key_of(None) is None


def _replica(uid: str):
    return SimpleNamespace(replica_id=SimpleNamespace(unique_id=uid))


def _router(queue_lens: dict[str, int], threshold: int = 8):
    from serve.routing import UserAffinityRouter

    router = UserAffinityRouter.__new__(
        UserAffinityRouter
    )  # no event loop / controller needed for the choice
    router.initialize_state(imbalanced_threshold=threshold)
    cache = SimpleNamespace(get=lambda rid: queue_lens.get(rid.unique_id))
    type(router).replica_queue_len_cache = property(lambda self: cache)
    return router


def _choose(router, replicas, user):
    import asyncio

    request = SimpleNamespace(
        args=[ScoreJob(user, 1, [1], [])], kwargs={}, routing_context=SimpleNamespace(should_backoff=False)
    )
    return asyncio.run(router.choose_replicas(replicas, request))


def test_router_prefers_the_users_replica_unless_it_is_much_busier():
    replicas = [_replica(f"r{k}") for k in range(3)]
    preferred = rendezvous_rank("u1", ["r0", "r1", "r2"])[0]
    ranks = _choose(_router({}), replicas, "u1")
    assert [r.replica_id.unique_id for r in ranks[0]] == [preferred] and len(ranks[1]) == 2
    busy = {preferred: 20, **{f"r{k}": 0 for k in range(3) if f"r{k}" != preferred}}
    ranks = _choose(_router(busy), replicas, "u1")
    assert preferred not in [r.replica_id.unique_id for r in ranks[0]]
    assert [r.replica_id.unique_id for r in ranks[1]] == [preferred]
