"""The G cache: LRU per user then item, a hard byte bound, counters, reset on a checkpoint change."""

from __future__ import annotations

import random

import pytest
import torch

from cora_ray.infer.cache import GCache, tensor_bytes


def g(value: float = 0.0, d: int = 8, r: int = 2) -> torch.Tensor:
    return torch.full((d, r), float(value))


ENTRY = tensor_bytes(g())  # 64 bytes


def test_hit_miss_and_counters():
    cache = GCache(10 * ENTRY)
    assert cache.get(1, 5) is None
    cache.put(1, 5, g(3))
    assert torch.equal(cache.get(1, 5), g(3))
    found = cache.get_many(1, [5, 6])
    assert torch.equal(found[0], g(3)) and found[1] is None
    s = cache.stats()
    assert (s.hits, s.misses, s.entries, s.users, s.bytes) == (2, 2, 1, 1, ENTRY)
    assert 0 < s.hit_rate < 1


def test_evicts_least_recently_used_user_first_then_its_oldest_item():
    cache = GCache(4 * ENTRY)
    cache.put("a", 1, g())
    cache.put("a", 2, g())
    cache.put("b", 1, g())
    cache.put("b", 2, g())
    cache.get("a", 1)  # a becomes the most recently used user; a's item 2 is now its oldest
    cache.put("c", 1, g())  # evicts b's oldest (b is the LRU user)
    assert ("b", 1) not in cache and ("b", 2) in cache
    cache.put("c", 2, g())  # evicts b's last item, b disappears
    assert ("b", 2) not in cache and cache.stats().users == 2
    cache.put("c", 3, g())  # now a is the LRU user: its oldest item (2) goes, the refreshed item 1 stays
    assert ("a", 2) not in cache and ("a", 1) in cache
    assert cache.stats().evictions == 3


def test_byte_bound_holds_under_many_users():
    budget = 100 * ENTRY + ENTRY // 2
    cache = GCache(budget)
    rng = random.Random(0)
    for step in range(5000):
        user = rng.randrange(2000)
        d = rng.choice([8, 16, 4])  # entries of different sizes
        cache.put(user, rng.randrange(50), g(step, d=d))
        assert cache.stats().bytes <= budget
        if step % 7 == 0:
            cache.get(user, 0)
    s = cache.stats()
    assert s.bytes <= budget and s.evictions > 0
    assert s.bytes == sum(tensor_bytes(t) for per in cache._users.values() for t in per.values())
    assert s.entries == sum(len(per) for per in cache._users.values())


def test_entry_larger_than_budget_is_not_stored_and_zero_budget_disables():
    cache = GCache(ENTRY - 1)
    assert cache.put(1, 1, g()) is False and len(cache) == 0
    off = GCache(0)
    assert not off.enabled
    off.put(1, 1, g())
    assert off.get(1, 1) is None and off.stats().bytes == 0


def test_replacing_an_entry_does_not_double_count():
    cache = GCache(10 * ENTRY)
    cache.put(1, 1, g(1))
    cache.put(1, 1, g(2))
    assert cache.stats().bytes == ENTRY and len(cache) == 1
    assert torch.equal(cache.get(1, 1), g(2))


def test_reset_on_checkpoint_change_keeps_counters_drops_entries():
    cache = GCache(10 * ENTRY, version="ckpt-a")
    cache.put(1, 1, g())
    cache.get(1, 1)
    cache.reset(version="ckpt-b")
    s = cache.stats()
    assert (s.entries, s.bytes, s.users, s.version, s.resets, s.hits) == (0, 0, 0, "ckpt-b", 1, 1)
    assert cache.get(1, 1) is None


def test_resize_evicts_down_to_the_new_budget():
    cache = GCache(10 * ENTRY)
    for i in range(10):
        cache.put(i, i, g())
    cache.resize(3 * ENTRY)
    assert cache.stats().bytes == 3 * ENTRY and ((9, 9) in cache) and ((0, 0) not in cache)
    with pytest.raises(ValueError):
        cache.resize(-1)
