"""Does a CoRA checkpoint use its collaborative input? Score the same rows with their own G, with G made
from other rows' (user, item) pairs, and with G = 0, and compare the metrics.

    doc = cf_signal(Scorer.from_checkpoint(uri), "artifacts/ml-1m", split="test", limit=300, seed=42)

- `own`: the normal score (each row's own CF vectors drive its weight delta).
- `shuffled`: every row gets the G of another row of the sample (a seeded permutation of (user, item) pairs;
  the text prompt is unchanged). If the model uses the CF vectors, this hurts; if not, nothing changes.
- `zero`: no delta at all (the plain LLM with the prompt; what cold-start users get).
- `generated_for_cold`: the checkpoint's G, but users the CF model does not know get a G generated from their
  (untrained) CF vector instead of G = 0 — `model.zero_delta_for_cold_users: false`, the authors' rule.
  Training never shows the model a zero G (every train user is known), so this measures what zeroing costs.
  For a checkpoint whose rule already generates G for cold users (the default) it is `own` itself, so it is
  not scored twice: its metrics are `own`'s, marked `same_as: own`.

Also reported: how much G varies across rows — the mean cosine similarity between the G of two different
rows (1.0 means every row gets the same delta: the generator has collapsed to a shared LoRA), and the
spread of the scores each variant gives.

No Ray: rows are scored in this process (the GPU script and tests use it as is).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from cora_ray.errors import ModelError
from cora_ray.eval.evaluate import select_rows, split_metrics

VARIANTS = ("own", "shuffled", "zero", "generated_for_cold")


def g_similarity(G: torch.Tensor, pairs: int = 2000, seed: int = 0) -> dict[str, float]:
    """Cosine similarity of the flattened G of random pairs of different rows: mean, min, max."""
    flat = torch.nn.functional.normalize(G.reshape(G.shape[0], -1).float(), dim=1)
    n = flat.shape[0]
    if n < 2:
        raise ModelError("g_similarity needs at least 2 rows")
    rng = np.random.default_rng(seed)
    a = rng.integers(0, n, size=pairs)
    b = (a + rng.integers(1, n, size=pairs)) % n  # never the same row
    cos = (flat[a] * flat[b]).sum(dim=1)
    return {"mean": float(cos.mean()), "min": float(cos.min()), "max": float(cos.max())}


def cf_signal(
    scorer: Any,
    data_uri: str,
    *,
    split: str = "test",
    limit: int | None = 300,
    seed: int = 42,
    endpoint: str | None = None,
    progress: bool = False,
) -> dict:
    """Metrics of `split` (the seeded `limit`-row sample, as jobs/evaluate.py picks it) for each variant."""
    if not scorer.uses_collab_weights:
        raise ModelError(
            f"method {scorer.method!r} has no collaborative weights (G): the diagnostic needs a CoRA checkpoint"
        )
    rows, selection, population = select_rows(data_uri, [split], limit, seed, endpoint)
    rows = rows.take(np.searchsorted(rows["_key"].to_numpy(), selection[split]))
    users = rows["user_id"].to_numpy()
    items = rows["item_id"].to_numpy()
    labels = rows["label"].to_numpy()
    hists = rows["history"].to_pylist()

    t0 = time.perf_counter()
    zeroing = bool(scorer.model.cfg.zero_delta_for_cold_users)
    G_own = scorer.compute_G(users, items, hists)  # (n, d_model, r); zero rows for cold users if `zeroing`
    perm = np.random.default_rng(seed).permutation(len(users))
    G_shuffled = G_own[torch.as_tensor(perm, device=G_own.device)]
    known = scorer.knows_user(users).astype(bool)
    G_variants = {
        "own": G_own,
        "shuffled": G_shuffled,
        "zero": torch.zeros_like(G_own),
    }
    if zeroing:
        G_variants["generated_for_cold"] = scorer.compute_G(users, items, hists, zero_cold_users=False)

    out: dict[str, Any] = {
        "split": split,
        "rows": int(len(labels)),
        "population": int(population[split]),
        "seed": seed,
        "limit": limit,
        "rows_with_known_user": int(known.sum()),
        "zero_delta_for_cold_users": zeroing,
        "g_cosine_between_rows": g_similarity(G_own[torch.as_tensor(known, device=G_own.device)])
        if known.sum() >= 2
        else None,
        "variants": {},
    }
    for name in VARIANTS:
        if name not in G_variants:  # generated_for_cold under a rule that already generates: identical to own
            out["variants"][name] = {**out["variants"]["own"], "same_as": "own"}
            continue
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(labels), desc=f"scoring ({name} G)", unit="row")
        scores = scorer.score(users, items, hists, G=G_variants[name], progress=bar.update if bar else None)
        if bar is not None:
            bar.close()
        metrics = split_metrics(users, labels, scores, population[split])
        metrics["score_std"] = float(np.std(scores))
        metrics["score_mean"] = float(np.mean(scores))
        out["variants"][name] = metrics
    out["seconds"] = time.perf_counter() - t0
    return out


def cf_signal_markdown(doc: dict, title: str) -> str:
    lines = [
        f"# {title}",
        "",
        f"{doc['rows']} seeded rows of `{doc['split']}` (seed {doc['seed']}); "
        f"{doc['rows_with_known_user']} have a user the CF model knows.",
        "",
        "| G given to the model | AUC | UAUC | score mean | score std |",
        "|---|---|---|---|---|",
    ]
    labels = {
        "own": "its own (normal scoring)",
        "shuffled": "another row's (shuffled users/items)",
        "zero": "none (G = 0: plain LLM)",
        "generated_for_cold": "its own, generated for cold users too",
    }
    for name in VARIANTS:
        m = doc["variants"][name]
        auc = "n/a" if m.get("auc") is None else f"{m['auc']:.4f}"
        uauc = "n/a" if m.get("uauc") is None else f"{m['uauc']:.4f}"
        label = labels[name] + (f" (= {m['same_as']}: the checkpoint's rule)" if m.get("same_as") else "")
        lines.append(f"| {label} | {auc} | {uauc} | {m['score_mean']:.3f} | {m['score_std']:.3f} |")
    sim = doc.get("g_cosine_between_rows")
    if sim:
        lines += [
            "",
            f"Cosine similarity between the G of two different rows: mean {sim['mean']:.4f} "
            f"(min {sim['min']:.4f}, max {sim['max']:.4f}); 1.0 = every row gets the same delta.",
        ]
    return "\n".join(lines) + "\n"
