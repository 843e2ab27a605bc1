"""How much a CF backbone's vectors make the collaborative weights G differ from row to row — for a fresh
generator (what training starts from) or a trained checkpoint's.

CoRA's delta is rank r per row; if G is nearly the same for every row, the delta is one shared LoRA and the
collaborative signal has no way in. The generator reads one memory token c = [e_u ; e_i] through
Linear(2D → d) initialised N(0, 0.02) (docs/method.md §2.2), so how much G moves at the start of training
depends on how much the backbone's vectors move across rows relative to their common part. Measured here:

- `user_varying_share`, `item_varying_share`: the share of the vectors' energy (sum of squares) in their
  deviation from the mean vector over the sampled rows (1 = centred, 0 = every row the same vector);
- `g_varying_share`: the same for G (each G has unit norm, so this is 1 − ‖mean G‖²);
- `g_pair_cosine`: the mean cosine between the G of two different rows (1 = a shared LoRA).

    doc = generator_input_signal(cf, rows, generator)       # rows: sample_train_rows(...)

No labels are read: the rows are a seeded sample of the train split. No Ray.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from cora_ray.cf.base import CFBackbone
from cora_ray.data import protocol
from cora_ray.data.batching import pad_histories
from cora_ray.model.generator import CollaborativeWeightGenerator


@dataclass(frozen=True)
class SampledRows:
    """Seeded rows of a split: user ids, item ids, padded histories (n, HISTORY_LEN)."""

    users: torch.Tensor
    items: torch.Tensor
    histories: torch.Tensor
    split: str
    seed: int


def sample_train_rows(data_uri: str, n: int, seed: int, split: str = "train") -> SampledRows:
    """`n` rows of `split` drawn without replacement with `seed`."""
    t = protocol.read_split(data_uri, split, columns=["user_id", "item_id", "history"])
    n = min(n, len(t))
    idx = np.sort(np.random.default_rng(seed).choice(len(t), n, replace=False))
    histories = t["history"].to_pylist()
    return SampledRows(
        users=torch.as_tensor(t["user_id"].to_numpy()[idx].copy(), dtype=torch.long),
        items=torch.as_tensor(t["item_id"].to_numpy()[idx].copy(), dtype=torch.long),
        histories=torch.from_numpy(pad_histories([histories[k] for k in idx])),
        split=split,
        seed=seed,
    )


def varying_share(x: torch.Tensor) -> float:
    """Share of the rows' energy in their deviation from the mean row (0: all rows equal)."""
    x = x.flatten(1).double()
    total = float(x.pow(2).sum())
    return float((x - x.mean(0)).pow(2).sum()) / total if total > 0 else 0.0


def mean_pair_cosine(x: torch.Tensor, seed: int = 0) -> float:
    """Mean cosine similarity between each row and another row (a seeded derangement)."""
    x = x.flatten(1).double()
    n = x.shape[0]
    if n < 2:
        raise ValueError("mean_pair_cosine needs at least 2 rows")
    shift = int(np.random.default_rng(seed).integers(1, n))
    other = torch.roll(torch.arange(n), shift)
    return float(torch.nn.functional.cosine_similarity(x, x[other]).mean())


@torch.no_grad()
def generator_input_signal(
    cf: CFBackbone, rows: SampledRows, generator: CollaborativeWeightGenerator
) -> dict[str, Any]:
    """The measures of the module docstring for `generator` (in eval mode: no dropout) fed by `cf`."""
    was_training = generator.training
    generator.eval()
    try:
        e_u = cf.user_vectors(rows.users, rows.histories).float()
        e_i = cf.item_vectors(rows.items).float()
        G = generator(e_u, e_i)
    finally:
        generator.train(was_training)
    return {
        "rows": int(rows.users.shape[0]),
        "cf_dim": int(e_u.shape[-1]),
        "user_varying_share": varying_share(e_u),
        "item_varying_share": varying_share(e_i),
        "user_norm": float(e_u.norm(dim=-1).mean()),
        "item_norm": float(e_i.norm(dim=-1).mean()),
        "g_varying_share": varying_share(G),
        "g_pair_cosine": mean_pair_cosine(G),
    }
