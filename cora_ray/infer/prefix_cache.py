"""The per-user prefix cache (docs/deploy.md §9): a user's prompt-prefix keys/values, LRU under a byte budget.

With a checkpoint whose `model.delta_scope` shares the prefix (user_prefix, suffix), or a model whose prefix
is per user (TALLRec, zero-shot, CoLLM), the ~150 tokens before the target title depend on the user and
their history only. A replica keeps each user's computed prefix — the keys and values of every decoder layer
and, for user_prefix, the user-only delta G_u (cora_ray/model/prefix.py `PrefixState.entry`) — so a user who
comes back with new candidates runs only the suffixes. The key is (user, a digest of the history and prefix
tokens); the cache carries the checkpoint's `version` and `reset(version)` empties it on reload: keys/values from another checkpoint are wrong, not
stale, and `get` with another version never returns them.

The byte count is the entries' exact tensor payload (`PrefixState.nbytes`); after every `put` it is ≤
`max_bytes` (an entry larger than the whole budget is not stored). Thread-safe (one lock): the scoring
thread fills it while the event loop reads `stats()` for `/v1/model` and the metrics exporter.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from cora_ray.infer.cache import CacheStats

if TYPE_CHECKING:
    from cora_ray.model.prefix import PrefixState


def prefix_entry_bytes(
    layers: int, kv_heads: int, head_dim: int, tokens: int, kv_bytes: int, d_model: int = 0, rank: int = 0
) -> int:
    """Bytes of one user's cached prefix: keys and values of every layer over `tokens` prefix tokens in the
    LLM's dtype (`kv_bytes` per number), plus G_u (d_model × r, user_prefix) from the fp32 generator — the
    arithmetic of docs/deploy.md §6 "Prefix cache"."""
    return 2 * layers * kv_heads * head_dim * tokens * kv_bytes + d_model * rank * 4


def prefix_key(user_id: int, history: np.ndarray, prefix_tokens: Sequence[int]) -> tuple[int, str]:
    """(user, digest of the padded history and the prefix tokens): what a cached prefix depends on besides
    the checkpoint."""
    h = hashlib.blake2b(digest_size=16)
    h.update(np.ascontiguousarray(history, dtype=np.int64).tobytes())
    h.update(np.asarray(prefix_tokens, dtype=np.int64).tobytes())
    return int(user_id), h.hexdigest()


class PrefixCache:
    """LRU of per-user `PrefixState` entries under `max_bytes` (0 disables it); entries belong to `version`."""

    def __init__(self, max_bytes: int, version: str | None = None) -> None:
        if max_bytes < 0:
            raise ValueError(f"prefix cache max_bytes must be >= 0, got {max_bytes}")
        self._max = int(max_bytes)
        self._entries: OrderedDict[Hashable, PrefixState] = OrderedDict()
        self._lock = threading.Lock()
        self._stats = CacheStats(max_bytes=self._max, version=version)

    @property
    def version(self) -> str | None:
        return self._stats.version

    @property
    def enabled(self) -> bool:
        return self._max > 0

    @property
    def max_bytes(self) -> int:
        return self._max

    def resize(self, max_bytes: int) -> None:
        """A new budget (user_config changed); least recently used entries go until the cache fits."""
        if max_bytes < 0:
            raise ValueError(f"prefix cache max_bytes must be >= 0, got {max_bytes}")
        with self._lock:
            self._max = self._stats.max_bytes = int(max_bytes)
            while self._entries and self._stats.bytes > self._max:
                _, evicted = self._entries.popitem(last=False)
                self._stats.bytes -= evicted.nbytes
                self._stats.evictions += 1
            self._stats.entries = self._stats.users = len(self._entries)

    def get(self, key: Hashable, version: str | None) -> PrefixState | None:
        """The entry for `key` made by checkpoint `version` (refreshed as most recently used), else None."""
        with self._lock:
            entry = self._entries.get(key) if version == self._stats.version else None
            if entry is None:
                self._stats.misses += 1
                return None
            self._entries.move_to_end(key)
            self._stats.hits += 1
            return entry

    def put(self, key: Hashable, entry: PrefixState, version: str | None) -> bool:
        """Store `entry` (made by checkpoint `version`); False when not stored (disabled, another version,
        or larger than the whole budget)."""
        size = entry.nbytes
        with self._lock:
            if not self._max or version != self._stats.version or size > self._max:
                return False
            old = self._entries.pop(key, None)
            if old is not None:
                self._stats.bytes -= old.nbytes
            self._entries[key] = entry
            self._stats.bytes += size
            while self._stats.bytes > self._max:
                _, evicted = self._entries.popitem(last=False)
                self._stats.bytes -= evicted.nbytes
                self._stats.evictions += 1
            self._stats.entries = self._stats.users = len(self._entries)
            return True

    def reset(self, version: str | None = None) -> None:
        """Empty the cache; its entries now belong to checkpoint `version`."""
        with self._lock:
            self._entries.clear()
            self._stats.bytes = self._stats.entries = self._stats.users = 0
            self._stats.resets += 1
            self._stats.version = version

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(**vars(self._stats))

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)
