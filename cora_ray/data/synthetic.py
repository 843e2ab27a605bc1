"""A seeded synthetic dataset with a latent-factor ground truth, in the same protocol as ML-1M.

Every user u and item i get latent vectors (dimension `dim`, entries of variance dim^-1/2 so u·v has
unit variance) plus an item bias; the label of an interaction is drawn as

    label ~ Bernoulli(sigmoid(scale · u·v + b_i + noise)),   noise ~ N(0, noise_std)

so a CF model (MF, LightGCN, ...) can learn it and CoRA can exploit it. Each user rates
`interactions_per_user` distinct items (mildly popularity-skewed); every item is rated at least once so
the dataset has exactly `users` users and `items` items. Timestamps are spread uniformly over `months`
months from 2000-01-01 UTC; the split is by month like ML-1M: the first 2/3 of the months are train, the
next 1/6 valid, the last 1/6 test. A fraction `cold_fraction` of the users and of the items only occur
from the validation period on, so test has cold rows (test_cold) as well as warm ones.

Titles are readable fake movie titles ("The Silent Harbor (1994)"), unique per item. Raw ids are
"user_<k>" / "item_<k>" (k from 1), so the int ids equal k when every user/item occurs (always here).

    tables = make_synthetic_tables(users=60, items=80, seed=0)       # in memory, ~10 ms
    manifest = prepare_synthetic("/tmp/syn", users=60, items=80, seed=0)
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from cora_ray.data import splitting
from cora_ray.data.splitting import ProtocolTables
from cora_ray.errors import DataError

START_TS = 946_684_800  # 2000-01-01T00:00:00Z
SECONDS_PER_MONTH = 30 * 86_400  # synthetic months are 30 days

_ADJECTIVES = (
    "Silent Hidden Broken Golden Last Lost Crimson Midnight Distant Burning Frozen Wild Secret Quiet "
    "Electric Velvet Hollow Forgotten Iron Paper Restless Painted Shattered Endless Lonely Bitter Bright "
    "Savage Gentle Northern Southern Eternal Scarlet Wandering Sleeping Final Dark Crystal Emerald Sudden"
).split()
_NOUNS = (
    "Harbor River Garden Empire Mirror Summer Winter Station Highway Kingdom Orchard Letter Promise Island "
    "Horizon Shadow Lantern Voyage Canyon Ballroom Frontier Tide Compass Carousel Signal Meadow Citadel "
    "Stranger Fortune Engine Valley Ocean Tower Circus Desert Forest Bridge Window Theory Passage"
).split()
_PATTERNS = ("The {a} {n}", "{a} {n}", "The {n} of {n2}s", "A {a} {n}", "{n} in the {a} {n2}")


@dataclass
class SyntheticTables(ProtocolTables):
    """Protocol tables plus the ground truth, indexed by the new ids (row 0 = padding, zeros)."""

    user_factors: np.ndarray | None = None  # [users + 1, dim]
    item_factors: np.ndarray | None = None  # [items + 1, dim]
    item_bias: np.ndarray | None = None  # [items + 1]
    scale: float = 0.0

    def true_logit(self, user_id: np.ndarray, item_id: np.ndarray) -> np.ndarray:
        """The noise-free ground-truth logit scale·u·v + b_i for int ids (what a perfect model ranks by)."""
        assert self.user_factors is not None and self.item_factors is not None and self.item_bias is not None
        u = self.user_factors[np.asarray(user_id)]
        v = self.item_factors[np.asarray(item_id)]
        return self.scale * np.einsum("nd,nd->n", u, v) + self.item_bias[np.asarray(item_id)]


def fake_titles(n: int, rng: np.random.Generator) -> list[str]:
    """`n` distinct readable titles such as "The Silent Harbor (1994)"."""
    seen: set[str] = set()
    out: list[str] = []
    while len(out) < n:
        pattern = _PATTERNS[rng.integers(len(_PATTERNS))]
        text = pattern.format(
            a=_ADJECTIVES[rng.integers(len(_ADJECTIVES))],
            n=_NOUNS[rng.integers(len(_NOUNS))],
            n2=_NOUNS[rng.integers(len(_NOUNS))],
        )
        title = f"{text} ({1950 + int(rng.integers(70))})"
        if title not in seen:
            seen.add(title)
            out.append(title)
    return out


def _check_args(
    users: int, items: int, interactions_per_user: int, months: int, cold_fraction: float
) -> None:
    for name, value, low in (
        ("users", users, 2),
        ("items", items, 2),
        ("interactions_per_user", interactions_per_user, 1),
    ):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise DataError(f"synthetic: {name} must be an integer ≥ {low}, got {value!r}")
    if months < 6:
        raise DataError(
            f"synthetic: months must be ≥ 6 (train, valid and test need whole months), got {months}"
        )
    if not 0 <= cold_fraction < 1:
        raise DataError(f"synthetic: cold_fraction must be in [0, 1), got {cold_fraction}")


def _draw_items(rng: np.random.Generator, users: int, items: int, k: int, log_pop: np.ndarray) -> np.ndarray:
    """[users, k] distinct items per user, drawn ∝ exp(log_pop) without replacement (Gumbel top-k)."""
    out = np.empty((users, k), dtype=np.int64)
    chunk = max(1, 4_000_000 // items)
    for lo in range(0, users, chunk):
        hi = min(users, lo + chunk)
        keys = log_pop[None, :] + rng.gumbel(size=(hi - lo, items))
        out[lo:hi] = np.argpartition(-keys, k - 1, axis=1)[:, :k] if k < items else np.argsort(-keys, axis=1)
    return out


def make_synthetic_tables(
    users: int = 60,
    items: int = 80,
    seed: int = 0,
    interactions_per_user: int = 20,
    dim: int = 8,
    months: int = 24,
    scale: float = 2.5,
    noise_std: float = 0.5,
    cold_fraction: float = 0.05,
    valid_small_fraction: float = 0.5,
) -> SyntheticTables:
    """Generate the synthetic dataset in memory (same tables as the real readers). Deterministic in `seed`."""
    _check_args(users, items, interactions_per_user, months, cold_fraction)
    rng = np.random.default_rng(seed)
    k = min(interactions_per_user, items)

    user_f = rng.normal(0.0, dim**-0.25, size=(users, dim))
    item_f = rng.normal(0.0, dim**-0.25, size=(items, dim))
    item_b = rng.normal(0.0, 0.5, size=items)
    log_pop = rng.normal(0.0, 0.5, size=items)

    chosen = _draw_items(rng, users, items, k, log_pop)
    user_code = np.repeat(np.arange(users), k)
    item_code = chosen.reshape(-1)
    missing = np.setdiff1d(np.arange(items), item_code)
    if len(missing):  # every item is rated at least once: give each unrated item to a random user
        extra_users = rng.integers(users, size=len(missing))
        user_code = np.concatenate([user_code, extra_users])
        item_code = np.concatenate([item_code, missing])

    n = len(user_code)
    train_months = (2 * months) // 3
    valid_months = (months - train_months) // 2
    valid_start = START_TS + train_months * SECONDS_PER_MONTH
    test_start = valid_start + valid_months * SECONDS_PER_MONTH
    end = START_TS + months * SECONDS_PER_MONTH
    ts = rng.integers(START_TS, end, size=n)
    n_cold_users = int(round(users * cold_fraction))
    n_cold_items = int(round(items * cold_fraction))
    cold_user = np.zeros(users, dtype=bool)
    cold_user[rng.choice(users, size=n_cold_users, replace=False)] = True
    cold_item = np.zeros(items, dtype=bool)
    cold_item[rng.choice(items, size=n_cold_items, replace=False)] = True
    late = cold_user[user_code] | cold_item[item_code]
    ts[late] = rng.integers(valid_start, end, size=int(late.sum()))
    split = np.where(
        ts < valid_start, splitting.TRAIN, np.where(ts < test_start, splitting.VALID, splitting.TEST)
    )

    logit = scale * np.einsum("nd,nd->n", user_f[user_code], item_f[item_code]) + item_b[item_code]
    logit = logit + rng.normal(0.0, noise_std, size=n)
    label = (rng.random(n) < 1.0 / (1.0 + np.exp(-logit))).astype(np.int8)

    user_vocab = [f"user_{u + 1}" for u in range(users)]
    item_vocab = [f"item_{i + 1}" for i in range(items)]
    base = splitting.build_tables(
        dataset="synthetic",
        user_code=user_code,
        item_code=item_code,
        label=label,
        ts=ts,
        split=split,
        user_vocab=user_vocab,
        item_vocab=item_vocab,
        item_titles=fake_titles(items, rng),
        valid_small_fraction=valid_small_fraction,
        sources={"generator": f"synthetic(users={users}, items={items}, seed={seed})"},
        extra={
            "synthetic": {
                "users": users,
                "items": items,
                "seed": seed,
                "interactions_per_user": interactions_per_user,
                "dim": dim,
                "months": months,
                "scale": scale,
                "noise_std": noise_std,
                "cold_fraction": cold_fraction,
            },
            "rows_read": n,
        },
        what=f"synthetic(users={users}, items={items}, seed={seed})",
    )
    # every user and item occurs, and natural order of "user_<k>" is k, so new id = code + 1
    pad_user = np.zeros((users + 1, dim))
    pad_user[1:] = user_f
    pad_item = np.zeros((items + 1, dim))
    pad_item[1:] = item_f
    bias = np.zeros(items + 1)
    bias[1:] = item_b
    return SyntheticTables(
        base.dataset,
        base.splits,
        base.items,
        base.users,
        base.sources,
        base.extra,
        pad_user,
        pad_item,
        bias,
        scale,
    )


def prepare_synthetic(
    out_uri: str,
    users: int = 60,
    items: int = 80,
    seed: int = 0,
    interactions_per_user: int = 20,
    endpoint: str | None = None,
    overwrite: bool = False,
    progress: splitting.Progress = splitting.no_progress,
    **kwargs,
) -> dict:
    """Generate the synthetic dataset and publish it at `out_uri` (local or s3://). Returns the manifest.

    Extra keyword arguments go to `make_synthetic_tables` (dim, months, scale, noise_std, ...)."""
    t0 = time.perf_counter()
    splitting.check_destination(out_uri, endpoint, overwrite)
    tables = make_synthetic_tables(users, items, seed, interactions_per_user=interactions_per_user, **kwargs)
    progress(
        f"synthetic: {tables.extra['rows_read']:,} interactions generated in {time.perf_counter() - t0:.2f} s"
    )
    return splitting.publish(tables, out_uri, endpoint=endpoint, overwrite=overwrite)
