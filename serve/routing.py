"""User-affinity routing for the scorer deployment: a user's requests go to the same replica while it has room.

Each scorer replica keeps its own G cache (docs/architecture.md §4), so the cache only pays off across requests if the
same user lands on the same replica. Ray Serve's default router (power of two choices) spreads a user's
requests over all replicas; `@serve.multiplexed` would pin users but splits batches per model id, which
ends cross-user batching. This router is Ray Serve's public extension point for that choice
(`request_router_config.request_router_class`):

- rank 1: the replica chosen by rendezvous (highest-random-weight) hashing of the user's raw id over the
  live replica ids. Every ingress replica computes the same choice, and when replicas come or go only the
  users of the changed replicas move.
- rank 2: all other replicas. Serve takes rank 1 unless that replica's queue is full
  (`max_ongoing_requests`), then the least-loaded of rank 2 — so a hot user never stalls on a full replica;
  affinity is a preference, load is a bound.
- bounded imbalance: when the preferred replica's known queue is more than `imbalanced_threshold`
  requests longer than the shortest one (Serve's cached queue lengths, no extra probe), the request goes to
  the other replicas first. `request_router_kwargs: {imbalanced_threshold: N}` sets it (default 8).

Requests without a user (model info) go to any replica, as with the default router.
"""

from __future__ import annotations

import hashlib

from ray.serve.request_router import FIFOMixin, PendingRequest, RequestRouter, RunningReplica


def user_key_of(pending_request: PendingRequest | None) -> str | None:
    """The raw user id a scorer call carries (a ScoreJob as its first argument), or None."""
    if pending_request is None:
        return None
    args = list(pending_request.args or ()) + list((pending_request.kwargs or {}).values())
    for arg in args:
        key = getattr(arg, "user_key", None)
        if isinstance(key, str):
            return key
    return None


def rendezvous_rank(user_key: str, replica_ids: list[str]) -> list[str]:
    """Replica ids ordered by the user's rendezvous weight, best first (stable for a given set)."""

    def weight(rid: str) -> bytes:
        return hashlib.blake2b(f"{user_key}\x00{rid}".encode(), digest_size=8).digest()

    return sorted(replica_ids, key=weight, reverse=True)


class UserAffinityRouter(FIFOMixin, RequestRouter):
    """Route a user's scorer calls to one replica (rendezvous hashing), falling back by load."""

    imbalanced_threshold: int = 8

    def initialize_state(self, imbalanced_threshold: int = 8, **kwargs) -> None:
        self.imbalanced_threshold = int(imbalanced_threshold)

    async def choose_replicas(
        self,
        candidate_replicas: list[RunningReplica],
        pending_request: PendingRequest | None = None,
    ) -> list[list[RunningReplica]]:
        if pending_request is not None:
            # every iteration offers all replicas: when none accepts, Serve should back off, not spin
            pending_request.routing_context.should_backoff = True
        if not candidate_replicas:
            return []
        key = user_key_of(pending_request)
        if key is None or len(candidate_replicas) == 1:
            return [candidate_replicas]
        by_id = {r.replica_id.unique_id: r for r in candidate_replicas}
        order = rendezvous_rank(key, list(by_id))
        preferred, others = by_id[order[0]], [by_id[r] for r in order[1:]]
        if self._overloaded(preferred, candidate_replicas):
            return [others, [preferred]]
        return [[preferred], others]

    def _overloaded(self, preferred: RunningReplica, replicas: list[RunningReplica]) -> bool:
        cache = self.replica_queue_len_cache
        known = [q for q in (cache.get(r.replica_id) for r in replicas) if q is not None]
        mine = cache.get(preferred.replica_id)
        return mine is not None and bool(known) and mine - min(known) > self.imbalanced_threshold
