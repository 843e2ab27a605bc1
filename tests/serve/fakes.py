"""A stand-in for cora_ray.infer.scorer.Scorer with the same calls, for the engine's unit tests.

Scores are a deterministic function of (G, item, history) so tests can tell which G a row got."""

from __future__ import annotations

import numpy as np
import torch


class FakeScorer:
    """d_model × r = 8 × 2 G; the CF model 'knows' users 1..known_users."""

    def __init__(self, uri: str = "fake://ckpt", known_users: int = 10, tag: str = "a", method: str = "cora"):
        self.uri = uri
        self.g_shape = (8, 2)
        self.known_users = known_users
        self.manifest = {
            "method": method,
            "trainable": {"sha256": (tag * 64)[:64]},
            "base_llm": {"identity": "tiny", "weight_hash": "0" * 64},
            "cf_artifact": {"backbone": "mf", "uri": "fake://cf", "hash": "1" * 64},
            "metrics": {"valid_auc": 0.5},
            "step": 3,
            "config": {},
        }
        self.g_calls: list[int] = []  # rows per compute_G call
        self.score_calls: list[int] = []

    method = "cora"
    uses_collab_weights = True

    def knows_user(self, user_ids) -> np.ndarray:
        u = np.asarray(user_ids)
        return (u >= 1) & (u <= self.known_users)

    def compute_G(self, user_ids, item_ids, histories) -> torch.Tensor:
        self.g_calls.append(len(user_ids))
        u = torch.as_tensor(user_ids, dtype=torch.float32).view(-1, 1, 1)
        i = torch.as_tensor(item_ids, dtype=torch.float32).view(-1, 1, 1)
        return (u * 100 + i) * torch.ones(len(user_ids), *self.g_shape) / 16.0

    def forward_chunks(self, item_ids, histories, max_rows) -> list[np.ndarray]:
        order = np.argsort(np.asarray([len(h) for h in histories]), kind="stable")
        return [order[s : s + max_rows] for s in range(0, len(order), max_rows)]

    def score(self, user_ids, item_ids, histories, G=None, batch_size=16, bucket=True) -> np.ndarray:
        n = len(user_ids)
        self.g_rows_per_score = [] if not hasattr(self, "g_rows_per_score") else self.g_rows_per_score
        self.g_rows_per_score.append(None if G is None else int(G.shape[0]))
        self.score_calls += [min(batch_size, n - s) for s in range(0, n, batch_size)]
        if G is None:
            G = self.compute_G(user_ids, item_ids, histories)
        g = G.reshape(len(user_ids), -1).sum(1).numpy()
        return g + 0.001 * np.asarray(item_ids) + 0.01 * np.asarray([len(h) for h in histories])


def write_tiny_dataset(uri: str, users: int = 12, items: int = 20, seed: int = 0) -> dict:
    """A small protocol dataset (raw user ids 'u<n>', raw item ids 'i<n>', titles 'Title <n>')."""
    import pyarrow as pa

    from cora_ray.data import protocol

    rng = np.random.default_rng(seed)
    rows = {s: [] for s in protocol.SPLITS}
    for u in range(1, users + 1):
        liked: list[int] = []
        for t in range(12):
            split = "train" if t < 8 else ("valid" if t < 10 else "test")
            item = int(rng.integers(1, items + 1))
            label = int(rng.random() < 0.6)
            row = (u, item, label, 1000 * u + t, liked[-protocol.HISTORY_LEN :], split == "train")
            rows[split].append(row)
            if split == "valid":
                rows["valid_small"].append(row)
            if label:
                liked.append(item)

    def table(rs):
        cols = list(zip(*rs, strict=True))
        return pa.table(
            {
                "user_id": pa.array(cols[0], pa.int32()),
                "item_id": pa.array(cols[1], pa.int32()),
                "label": pa.array(cols[2], pa.int8()),
                "ts": pa.array(cols[3], pa.int64()),
                "history": pa.array(cols[4], pa.list_(pa.int32())),
                "warm": pa.array(cols[5], pa.bool_()),
            }
        )

    items_t = pa.table(
        {
            "item_id": pa.array(range(1, items + 1), pa.int32()),
            "raw_id": [f"i{i}" for i in range(1, items + 1)],
            "title": [f"Title {i}" if i != items else "" for i in range(1, items + 1)],  # last: no title
        }
    )
    users_t = pa.table(
        {
            "user_id": pa.array(range(1, users + 1), pa.int32()),
            "raw_id": [f"u{u}" for u in range(1, users + 1)],
        }
    )
    return protocol.write_dataset(
        uri, {s: table(r) for s, r in rows.items()}, items_t, users_t, dataset="tiny-test"
    )
