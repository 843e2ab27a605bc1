"""Protocol splits as in-memory tensors for CF training and scoring (no Ray needed).

CF models are small and their inputs are a few columns of ints: a whole split fits in memory even for
Amazon-Book (727k train rows x 25 history ids = 73 MB), so training reads each split once with
`protocol.read_split` and shuffles tensors, instead of streaming with Ray Data like the LLM training does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch

from cora_ray.data import protocol
from cora_ray.data.batching import pad_histories
from cora_ray.errors import DataError

COLUMNS = ["user_id", "item_id", "label", "ts", "history", "warm"]


@dataclass
class CFSplit:
    """One split: (N,) users, items, float labels, timestamps, warm flags and (N, H) left-padded history."""

    name: str
    users: torch.Tensor  # int64
    items: torch.Tensor  # int64
    labels: torch.Tensor  # float32, 0/1
    ts: torch.Tensor  # int64
    warm: torch.Tensor  # bool
    history: torch.Tensor  # int64 (N, H), 0 = padding, oldest first, most recent in the last column

    def __len__(self) -> int:
        return int(self.users.shape[0])

    def subset(self, mask: torch.Tensor, name: str) -> CFSplit:
        return CFSplit(
            name,
            self.users[mask],
            self.items[mask],
            self.labels[mask],
            self.ts[mask],
            self.warm[mask],
            self.history[mask],
        )


@dataclass
class CFData:
    """The splits a CF run needs, the dataset manifest (its `hash` goes into the artifact) and id ranges."""

    uri: str
    manifest: dict
    num_users: int
    num_items: int
    splits: dict[str, CFSplit]

    @property
    def dataset_hash(self) -> str:
        return self.manifest["hash"]

    def known_users(self) -> torch.Tensor:
        """(num_users + 1,) bool: the user has at least one train interaction (index 0 = padding: False)."""
        known = torch.zeros(self.num_users + 1, dtype=torch.bool)
        known[self.splits["train"].users] = True
        known[0] = False
        return known

    def train_edges(self, which: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Unique (user, item) pairs of the train split: all rows, or only the positive ones."""
        train = self.splits["train"]
        mask = train.labels > 0.5 if which == "positive" else torch.ones(len(train), dtype=torch.bool)
        pairs = torch.unique(torch.stack([train.users[mask], train.items[mask]], 1), dim=0)
        return pairs[:, 0].contiguous(), pairs[:, 1].contiguous()

    def last_train_positives(self, history_len: int) -> torch.Tensor:
        """(num_users + 1, H) each user's last <= H positive train items (oldest first, left-padded).

        Used to export SASRec user vectors "as of the end of train" for inspection."""
        train = self.splits["train"]
        out = torch.zeros(self.num_users + 1, history_len, dtype=torch.int64)
        order = np.lexsort((train.ts.numpy(), train.users.numpy()))  # by user, then time
        users = train.users.numpy()[order]
        items = train.items.numpy()[order]
        labels = train.labels.numpy()[order]
        seqs: dict[int, list[int]] = {}
        for u, i, y in zip(users.tolist(), items.tolist(), labels.tolist(), strict=True):
            if y > 0.5:
                seqs.setdefault(u, []).append(i)
        for u, seq in seqs.items():
            tail = seq[-history_len:]
            out[u, history_len - len(tail) :] = torch.tensor(tail, dtype=torch.int64)
        return out


def table_to_split(table: pa.Table, name: str, history_len: int, num_users: int, num_items: int) -> CFSplit:
    """Convert and validate one protocol split (ids in range, labels 0/1)."""
    if table.num_rows == 0:
        raise DataError(f"split '{name}' is empty: a CF model cannot be trained or evaluated on it")
    users = table["user_id"].to_numpy().astype(np.int64)
    items = table["item_id"].to_numpy().astype(np.int64)
    labels = table["label"].to_numpy().astype(np.float32)
    history = pad_histories(table["history"], history_len)
    for what, ids, hi in (("user_id", users, num_users), ("item_id", items, num_items)):
        bad = (ids < 1) | (ids > hi)
        if bad.any():
            raise DataError(
                f"split '{name}': {int(bad.sum())} rows have {what} outside 1..{hi} "
                f"(e.g. {int(ids[bad][0])}); the manifest says {hi} ids"
            )
    if ((history < 0) | (history > num_items)).any():
        raise DataError(f"split '{name}': history holds item ids outside 0..{num_items}")
    if not np.isin(labels, (0.0, 1.0)).all():
        raise DataError(f"split '{name}': labels must be 0 or 1")
    return CFSplit(
        name=name,
        users=torch.from_numpy(users),
        items=torch.from_numpy(items),
        labels=torch.from_numpy(labels),
        ts=torch.from_numpy(table["ts"].to_numpy().astype(np.int64)),
        warm=torch.from_numpy(table["warm"].to_numpy(zero_copy_only=False).astype(bool)),
        history=torch.from_numpy(history),
    )


def load_cf_data(
    uri: str,
    splits: tuple[str, ...] = ("train", "valid", "test"),
    history_len: int = protocol.HISTORY_LEN,
    endpoint: str | None = None,
) -> CFData:
    """Read the named splits (plus test_warm / test_cold derived from test) of a protocol dataset."""
    manifest = protocol.read_manifest(uri, endpoint)
    num_users, num_items = int(manifest["users"]), int(manifest["items"])
    if num_users < 1 or num_items < 1:
        raise DataError(f"{uri}: the manifest counts {num_users} users and {num_items} items")
    out: dict[str, CFSplit] = {}
    for name in dict.fromkeys(s for s in splits if s not in protocol.DERIVED_SPLITS):
        table = protocol.read_split(uri, name, endpoint, columns=COLUMNS)
        out[name] = table_to_split(table, name, history_len, num_users, num_items)
    if "test" in out:
        out["test_warm"] = out["test"].subset(out["test"].warm, "test_warm")
        out["test_cold"] = out["test"].subset(~out["test"].warm, "test_cold")
    return CFData(uri=uri, manifest=manifest, num_users=num_users, num_items=num_items, splits=out)
