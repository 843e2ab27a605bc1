"""The per-user collaborative weight cache (docs/architecture.md §4): generated G matrices kept LRU under a byte budget.

G(u, i) ∈ R^{d_model × r} depends on the CF vectors of u and i and on the checkpoint, not on the prompt,
so a user who comes back with overlapping candidates can skip the generator for the pairs seen before.
Entries are grouped per user, then per item:

    users: OrderedDict[user_key → OrderedDict[item_key → G]]     (least recently used first, both levels)

A lookup of (u, i) refreshes u among users and i among u's items. Eviction takes the least recently used
item of the least recently used user, so one user's working set goes before another user's hot entries and
a user with many pairs loses their own oldest pairs first. The byte count is the exact tensor payload
(`numel · element_size`); after every `put` it is ≤ `max_bytes` (an entry larger than the whole budget is
not stored). `reset(version)` empties the cache when the checkpoint changes: G from another generator is
wrong, not stale.

Thread-safe (one lock): the scorer replica fills it from its scoring thread while the event loop reads
`stats()` for `/v1/model` and the metrics exporter.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable, Iterable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is not imported at run time: the HTTP ingress imports this package without it
    import torch


@dataclass
class CacheStats:
    """Counters since the replica started (they survive `reset`, the contents do not)."""

    hits: int = 0
    misses: int = 0
    evictions: int = 0
    resets: int = 0
    bytes: int = 0  # current payload
    entries: int = 0  # current (user, item) pairs
    users: int = 0  # current users with at least one entry
    max_bytes: int = 0
    version: str | None = None  # the checkpoint the entries belong to

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0

    def to_dict(self) -> dict:
        return {**asdict(self), "hit_rate": round(self.hit_rate, 6)}


def tensor_bytes(t: torch.Tensor) -> int:
    """Payload bytes of a tensor (what the budget counts)."""
    return t.numel() * t.element_size()


class GCache:
    """LRU of G matrices keyed by (user, item), grouped per user, bounded by `max_bytes`.

    `max_bytes = 0` disables storing (every lookup is a miss, nothing is kept), which is how the
    "cache off" configuration is run: same code path, no reuse.
    """

    def __init__(self, max_bytes: int, version: str | None = None) -> None:
        if max_bytes < 0:
            raise ValueError(f"cache max_bytes must be >= 0, got {max_bytes}")
        self._lock = threading.Lock()
        self._users: OrderedDict[Hashable, OrderedDict[Hashable, torch.Tensor]] = OrderedDict()
        self._stats = CacheStats(max_bytes=int(max_bytes), version=version)

    # -- lookups ---------------------------------------------------------------------------------------

    def get(self, user: Hashable, item: Hashable) -> torch.Tensor | None:
        """G for (user, item) or None; counts a hit or a miss and refreshes both levels on a hit."""
        return self.get_many(user, [item])[0]

    def get_many(self, user: Hashable, items: Iterable[Hashable]) -> list[torch.Tensor | None]:
        """G for each of `items` of one user (None where missing), in order."""
        with self._lock:
            per_user = self._users.get(user)
            out: list[torch.Tensor | None] = []
            for item in items:
                g = per_user.get(item) if per_user is not None else None
                if g is None:
                    self._stats.misses += 1
                else:
                    self._stats.hits += 1
                    per_user.move_to_end(item)
                out.append(g)
            if per_user is not None and any(g is not None for g in out):
                self._users.move_to_end(user)
            return out

    def __contains__(self, key: tuple[Hashable, Hashable]) -> bool:
        user, item = key
        with self._lock:
            per_user = self._users.get(user)
            return per_user is not None and item in per_user

    # -- updates ---------------------------------------------------------------------------------------

    def put(self, user: Hashable, item: Hashable, g: torch.Tensor) -> bool:
        """Store G (detached; the caller must not modify it afterwards). Returns False if it cannot fit."""
        size = tensor_bytes(g)
        with self._lock:
            if size > self._stats.max_bytes:
                return False
            per_user = self._users.get(user)
            if per_user is None:
                per_user = self._users[user] = OrderedDict()
            else:
                self._users.move_to_end(user)
            old = per_user.pop(item, None)
            if old is not None:
                self._stats.bytes -= tensor_bytes(old)
                self._stats.entries -= 1
            per_user[item] = g.detach()
            self._stats.bytes += size
            self._stats.entries += 1
            self._evict_until_within_budget(protect=(user, item))
            self._stats.users = len(self._users)
            return True

    def put_many(self, user: Hashable, items: Iterable[Hashable], gs: Iterable[torch.Tensor]) -> None:
        for item, g in zip(items, gs, strict=True):
            self.put(user, item, g)

    def _evict_until_within_budget(self, protect: tuple[Hashable, Hashable]) -> None:
        # Called with the lock held. The entry just written is protected so a put always lands.
        while self._stats.bytes > self._stats.max_bytes:
            user = next(iter(self._users))
            per_user = self._users[user]
            item = next(iter(per_user))
            if (user, item) == protect:
                # the LRU position holds the new entry only if it is the sole entry of the sole user
                # left, and it fits the budget by the size check in put: nothing else to evict
                break
            g = per_user.pop(item)
            self._stats.bytes -= tensor_bytes(g)
            self._stats.entries -= 1
            self._stats.evictions += 1
            if not per_user:
                del self._users[user]

    def reset(self, version: str | None = None) -> None:
        """Drop every entry (a new checkpoint, or a new budget); counters other than contents are kept."""
        with self._lock:
            self._users.clear()
            self._stats.bytes = 0
            self._stats.entries = 0
            self._stats.users = 0
            self._stats.resets += 1
            self._stats.version = version

    def resize(self, max_bytes: int) -> None:
        """Change the budget, evicting down to it."""
        if max_bytes < 0:
            raise ValueError(f"cache max_bytes must be >= 0, got {max_bytes}")
        with self._lock:
            self._stats.max_bytes = int(max_bytes)
            while self._stats.bytes > self._stats.max_bytes and self._users:
                user = next(iter(self._users))
                per_user = self._users[user]
                g = per_user.pop(next(iter(per_user)))
                self._stats.bytes -= tensor_bytes(g)
                self._stats.entries -= 1
                self._stats.evictions += 1
                if not per_user:
                    del self._users[user]
            self._stats.users = len(self._users)

    # -- introspection ---------------------------------------------------------------------------------

    @property
    def max_bytes(self) -> int:
        return self._stats.max_bytes

    @property
    def enabled(self) -> bool:
        return self._stats.max_bytes > 0

    def stats(self) -> CacheStats:
        """A snapshot of the counters."""
        with self._lock:
            return CacheStats(**asdict(self._stats))

    def __len__(self) -> int:
        with self._lock:
            return self._stats.entries
