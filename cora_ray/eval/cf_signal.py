"""Does a CoRA checkpoint use its collaborative input, and what should cold users get? Score the same rows
with their own G, with G made from other rows' (user, item) pairs, with G = 0, and under both cold-user
rules, and compare the metrics.

    doc = cf_signal(Scorer.from_checkpoint(uri), "artifacts/ml-1m", split="valid", limit=800, seed=42)

- `own`: the normal score (each row's own CF vectors drive its weight delta, under the checkpoint's rule).
- `shuffled`: every row gets the G of another row of the sample (a seeded permutation of (user, item) pairs;
  the text prompt is unchanged). If the model uses the CF vectors, this hurts; if not, nothing changes.
- `zero`: no delta for any row (the plain LLM with the prompt).
- `generated_for_cold`: users the CF model does not know (no train interactions) get a G generated from
  their untrained CF vector, like everyone else — `model.zero_delta_for_cold_users: false`.
- `zeroed_for_cold`: those users get G = 0 (the plain LLM); known users keep their G —
  `model.zero_delta_for_cold_users: true`.
  One of the last two is the checkpoint's own rule: it is not scored twice, its metrics are `own`'s, marked
  `same_as: own`. Training never shows the model a zero G (every train user is known), so one checkpoint
  serves both rules (only which validation step was kept as best depended on the checkpoint's rule).
  Checkpoints whose delta_scope shares the prompt prefix are refused (their prefix delta is not varied here).

Every variant also has its AUC on the rows whose user the CF model knows and on the cold-user rows. The
cold-user rule is compared by `cold_rule`: AUC and UAUC of generated_for_cold − zeroed_for_cold on the same
rows (all rows, and the cold-user rows alone), with paired bootstrap 95% intervals
(cora_ray/eval/bootstrap.py), and a verdict from the all-rows AUC interval — "generate" or "zero" when the interval
excludes 0, "undecided" when it does not, "too few cold-user rows" under MIN_COLD_ROWS. Decide on a
validation split (the default): docs/decisions.md.

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
from sklearn.metrics import roc_auc_score

from cora_ray.errors import ModelError
from cora_ray.eval.bootstrap import AlignedScores, paired_bootstrap
from cora_ray.eval.evaluate import select_rows, split_metrics

VARIANTS = ("own", "shuffled", "zero", "generated_for_cold", "zeroed_for_cold")
DEFAULT_SPLIT = "valid"  # decisions are taken on validation rows; ML-1M valid: 35% of rows have a cold user
MIN_COLD_ROWS = 50  # below this the cold-rule comparison gets no verdict
BOOTSTRAP = 1000  # paired bootstrap resamples for the cold-rule intervals


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


def subset_auc(labels: np.ndarray, scores: np.ndarray, mask: np.ndarray) -> dict:
    """AUC of the rows in `mask` and their count; AUC None when they lack a label (or are none)."""
    y, s = labels[mask], scores[mask]
    value = float(roc_auc_score(y, s)) if len(np.unique(y)) == 2 else None
    return {"auc": value, "rows": int(mask.sum())}


def rule_comparison(
    users: np.ndarray, items: np.ndarray, labels: np.ndarray, generated: np.ndarray, zeroed: np.ndarray
) -> dict:
    """AUC / UAUC of generated − zeroed on the same rows, with paired bootstrap 95% intervals
    (cora_ray/eval/bootstrap.py: rows resampled for AUC, users for UAUC)."""
    aligned = AlignedScores(users, items, labels, {"generated": generated[None], "zeroed": zeroed[None]})
    return paired_bootstrap(aligned, "generated", "zeroed", resamples=BOOTSTRAP, seed=0)


def cold_rule_verdict(ci95: list[float] | None, cold_rows: int) -> str:
    """ "generate" / "zero" when the AUC interval of generated − zeroed excludes 0, else "undecided"."""
    if cold_rows < MIN_COLD_ROWS:
        return "too few cold-user rows"
    if ci95 is None:
        return "undecided"
    if ci95[0] > 0:
        return "generate"
    if ci95[1] < 0:
        return "zero"
    return "undecided"


def cf_signal(
    scorer: Any,
    data_uri: str,
    *,
    split: str = DEFAULT_SPLIT,
    limit: int | None = 800,
    seed: int = 42,
    endpoint: str | None = None,
    progress: bool = False,
) -> dict:
    """Metrics of `split` (the seeded `limit`-row sample, as jobs/evaluate.py picks it) for each variant."""
    if not scorer.uses_collab_weights:
        raise ModelError(
            f"method {scorer.method!r} has no collaborative weights (G): the diagnostic needs a CoRA checkpoint"
        )
    if getattr(scorer, "shares_prefix", False):
        raise ModelError(
            "the checkpoint's model.delta_scope shares the prompt prefix: its prefix delta is generated inside "
            "the model, so the variants here would change only the suffix's G; train with delta_scope all"
        )
    rows, selection, population = select_rows(data_uri, [split], limit, seed, endpoint)
    rows = rows.take(np.searchsorted(rows["_key"].to_numpy(), selection[split]))
    users = rows["user_id"].to_numpy()
    items = rows["item_id"].to_numpy()
    labels = rows["label"].to_numpy()
    hists = rows["history"].to_pylist()

    t0 = time.perf_counter()
    zeroing = bool(scorer.model.cfg.zero_delta_for_cold_users)
    known = scorer.knows_user(users).astype(bool)
    G_generated = scorer.compute_G(users, items, hists, zero_cold_users=False)  # (n, d_model, r)
    G_zeroed = (
        G_generated
        * torch.as_tensor(known, device=G_generated.device, dtype=G_generated.dtype)[:, None, None]
    )
    G_own = G_zeroed if zeroing else G_generated
    perm = np.random.default_rng(seed).permutation(len(users))
    G_variants = {
        "own": G_own,
        "shuffled": G_own[torch.as_tensor(perm, device=G_own.device)],
        "zero": torch.zeros_like(G_own),
    }
    own_rule = "zeroed_for_cold" if zeroing else "generated_for_cold"
    G_variants["generated_for_cold" if zeroing else "zeroed_for_cold"] = G_generated if zeroing else G_zeroed

    out: dict[str, Any] = {
        "split": split,
        "rows": int(len(labels)),
        "population": int(population[split]),
        "seed": seed,
        "limit": limit,
        "rows_with_known_user": int(known.sum()),
        "rows_with_cold_user": int((~known).sum()),
        "cold_users": int(len(np.unique(users[~known]))),
        "zero_delta_for_cold_users": zeroing,
        "g_cosine_between_rows": g_similarity(G_own[torch.as_tensor(known, device=G_own.device)])
        if known.sum() >= 2
        else None,
        "variants": {},
    }
    scores_of: dict[str, np.ndarray] = {}
    for name in VARIANTS:
        if name == own_rule:  # the checkpoint's rule: identical to own
            out["variants"][name] = {**out["variants"]["own"], "same_as": "own"}
            scores_of[name] = scores_of["own"]
            continue
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(labels), desc=f"scoring ({name} G)", unit="row")
        scores = scorer.score(users, items, hists, G=G_variants[name], progress=bar.update if bar else None)
        if bar is not None:
            bar.close()
        scores_of[name] = scores
        metrics = split_metrics(users, labels, scores, population[split])
        metrics["score_std"] = float(np.std(scores))
        metrics["score_mean"] = float(np.mean(scores))
        metrics["known_user"] = subset_auc(labels, scores, known)
        metrics["cold_user"] = subset_auc(labels, scores, ~known)
        out["variants"][name] = metrics
    if (~known).any() and len(np.unique(labels)) == 2:
        gen, zer = scores_of["generated_for_cold"], scores_of["zeroed_for_cold"]
        diff = rule_comparison(users, items, labels, gen, zer)
        cold = ~known
        cold_only = (
            rule_comparison(users[cold], items[cold], labels[cold], gen[cold], zer[cold])
            if len(np.unique(labels[cold])) == 2
            else None
        )
        out["cold_rule"] = {
            "generated_minus_zeroed": diff,  # all rows: what the split's AUC / UAUC get
            "generated_minus_zeroed_cold_rows": cold_only,  # the rows the rule changes, alone
            "verdict": cold_rule_verdict(diff["auc"]["ci"], out["rows_with_cold_user"]),
            "min_cold_rows": MIN_COLD_ROWS,
        }
    else:
        out["cold_rule"] = None  # no cold-user row (or one label): the rules score every row alike
    out["seconds"] = time.perf_counter() - t0
    return out


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def cf_signal_markdown(doc: dict, title: str) -> str:
    lines = [
        f"# {title}",
        "",
        f"{doc['rows']} seeded rows of `{doc['split']}` (seed {doc['seed']}, of {doc['population']}); "
        f"{doc['rows_with_known_user']} have a user the CF model knows, "
        f"{doc.get('rows_with_cold_user', doc['rows'] - doc['rows_with_known_user'])} a cold user"
        + (f" ({doc['cold_users']} distinct)" if "cold_users" in doc else "")
        + ". The checkpoint's rule: "
        + (
            "G = 0 for cold users." if doc["zero_delta_for_cold_users"] else "G generated for cold users too."
        ),
        "",
        "| G given to the model | AUC | UAUC | AUC, known users | AUC, cold users | score mean | score std |",
        "|---|---|---|---|---|---|---|",
    ]
    labels = {
        "own": "its own (normal scoring)",
        "shuffled": "another row's (shuffled users/items)",
        "zero": "none (G = 0 for every row: plain LLM)",
        "generated_for_cold": "its own, generated for cold users too",
        "zeroed_for_cold": "its own, G = 0 for cold users",
    }
    for name in VARIANTS:
        m = doc["variants"][name]
        label = labels[name] + (f" (= {m['same_as']}: the checkpoint's rule)" if m.get("same_as") else "")
        known, cold = m.get("known_user") or {}, m.get("cold_user") or {}
        lines.append(
            f"| {label} | {_fmt(m.get('auc'))} | {_fmt(m.get('uauc'))} | {_fmt(known.get('auc'))} | "
            f"{_fmt(cold.get('auc'))} | {m['score_mean']:.3f} | {m['score_std']:.3f} |"
        )
    cf = doc.get("cf_artifact")
    if cf:
        model = cf.get("model") or {}
        lines += [
            "",
            f"CF artifact the checkpoint was trained with: `{cf['uri']}` ({cf.get('backbone')}, dim "
            f"{model.get('dim')}, init_std {model.get('init_std')}, lr {cf.get('lr')}, weight decay "
            f"{cf.get('weight_decay')}; valid AUC {_fmt(cf.get('valid_auc'))}; hash `{cf['hash'][:12]}`).",
        ]
    rule = doc.get("cold_rule")
    if rule:
        lines += [
            "",
            "Cold-user rule, generated − zeroed on the same rows (paired bootstrap 95% intervals):",
            "",
        ]
        for key, what in (
            ("generated_minus_zeroed", "all rows"),
            ("generated_minus_zeroed_cold_rows", "cold-user rows only"),
        ):
            d = rule.get(key)
            if not d:
                continue
            parts = []
            for metric in ("auc", "uauc"):
                m = d.get(metric)
                if m and m.get("ci"):
                    parts.append(
                        f"{metric.upper()} {m['observed']:+.4f} [{m['ci'][0]:+.4f}, {m['ci'][1]:+.4f}] "
                        f"({m['resamples']} resamples of {m['units']} {m['resampled']})"
                    )
            lines.append(f"- {what}: " + "; ".join(parts))
        lines += ["", f"Verdict (AUC, all rows): **{rule['verdict']}**."]
    sim = doc.get("g_cosine_between_rows")
    if sim:
        lines += [
            "",
            f"Cosine similarity between the G of two different rows: mean {sim['mean']:.4f} "
            f"(min {sim['min']:.4f}, max {sim['max']:.4f}); 1.0 = every row gets the same delta.",
        ]
    return "\n".join(lines) + "\n"
