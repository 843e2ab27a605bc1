"""What prefix sharing (model.delta_scope user_prefix, docs/method.md §2.5) saves, on real prompts.

    python bench/bench_prefix.py                    # bundled SmolLM2-135M, real ML-1M prompts (demo config)
    python bench/bench_prefix.py --candidates 40 --reps 2   # shorter
    python bench/bench_prefix.py --only recommend --template target_last   # the title-last prompt (config.py)
    python bench/bench_prefix.py --only recommend --max-history 10        # the paper's 10 liked titles
    python bench/bench_prefix.py --only recommend --method tallrec        # a baseline: shared vs its full prompts

Needs artifacts/ml-1m and artifacts/cf/mf (README quick start). The trained parts are random (speed does not
depend on their values); the demo config's prompt (chat template, last 5 liked titles). Writes
bench/results/<name>.{json,md}:

  prefix_recommend_100         one user's 100 candidates: prefix-shared rows/s ÷ per-row full prompts (scope
                               `all`, the paper's method) rows/s — the issue's goal ≥ 4×
  prefix_cache_repeat          users coming back with new candidates: rows/s with the per-user prefix cache ÷
                               without it (each visit recomputes the user's prefix), and the hit rate
  prefix_train_grouped         a training step (forward + backward, 8 rows): user_prefix with the rows of 2 users
                               (4 each: the prefix runs twice) ÷ scope `all` (8 full prompts), samples/s
  prefix_train_pipeline_order  real ML-1M micro-batches as the pipeline orders them: distinct prefixes per
                               micro-batch with train.shuffle global vs prefix_groups, and samples/s of
                               user_prefix on prefix_groups and on shuffled batches, and of suffix (its
                               prefix needs no autograd) on shuffled ones, each ÷ `all` on shuffled ones

Ratios come from interleaved repetitions in one process (bench/common.py), so a busy shared machine moves
both sides alike; the load average is recorded.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import interleaved_times, load_average, median, write_result  # noqa: E402
from cora_ray.cf import load_cf_artifact  # noqa: E402
from cora_ray.config import ExperimentConfig, load_config  # noqa: E402
from cora_ray.data import protocol  # noqa: E402
from cora_ray.data.batching import model_batch  # noqa: E402
from cora_ray.infer.prefix_cache import PrefixCache  # noqa: E402
from cora_ray.infer.scorer import Scorer  # noqa: E402
from cora_ray.llm.loading import load_llm  # noqa: E402
from cora_ray.model.build import build_model  # noqa: E402
from cora_ray.train.pipeline import prefix_group_keys  # noqa: E402


def scorer_for(
    cfg: ExperimentConfig, scope: str, titles: list[str], cf, seed: int = 0, method: str = "cora"
) -> Scorer:
    """A Scorer of `method` (CoRA of `scope`) over the bundled LLM with random trained parts (a fresh LLM per
    model: the collaborative / LoRA layers are injected in place)."""
    cf = cf if method in ("cora", "collm") else None
    model_cfg = dataclasses.replace(
        cfg.model, method=method, delta_scope=scope, cf_artifact=cfg.model.cf_artifact if cf else None
    )
    cfg = dataclasses.replace(cfg, model=model_cfg)
    llm = load_llm(cfg.llm, device="cpu", dtype="float32")
    model = build_model(cfg.model, llm, cf)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.trainable_parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.02)
    return Scorer.from_model(model.eval(), llm, cfg, titles, cf=cf, batch_size=16)


def user_rows(data: str, n_users: int, seed: int = 0, min_history: int = 5) -> list[tuple[int, list[int]]]:
    """(user, history) of test users with at least `min_history` liked titles in their history."""
    t = protocol.read_split(data, "test", columns=["user_id", "history"])
    users, hists = t["user_id"].to_numpy(), t["history"].to_pylist()
    seen: dict[int, list[int]] = {}
    for u, h in zip(users, hists, strict=True):
        if len(h or []) >= min_history and int(u) not in seen:
            seen[int(u)] = list(h)
    picked = np.random.default_rng(seed).choice(sorted(seen), size=n_users, replace=False)
    return [(int(u), seen[int(u)]) for u in picked]


def candidates(titles: list[str], history: list[int], k: int, seed: int) -> np.ndarray:
    pool = np.array([i for i in range(1, len(titles)) if titles[i] and i not in set(history)])
    return np.random.default_rng(seed).choice(pool, size=k, replace=False)


def bench_recommend(args, shared: Scorer, full: Scorer, titles, data) -> dict:
    # a user whose history fills the prompt's max_history titles (the demo's 5, or the paper's 10 with
    # --max-history 10): the prefix is as long as the config makes it
    user, hist = user_rows(data, 1, seed=1, min_history=max(5, args.max_history or 5))[0]
    items = candidates(titles, hist, args.candidates, seed=2)
    users, hists = np.full(len(items), user), [hist] * len(items)
    a = shared.score(users, items, hists)
    b = shared.score(users, items, hists, share_prefix=False)
    max_diff = float(np.abs(a - b).max())
    baseline = full is None  # a baseline method: its own full prompts are the reference

    def own_full_prompts() -> np.ndarray:
        return shared.score(users, items, hists, share_prefix=False)

    fns = {
        "shared": lambda: shared.score(users, items, hists),
        "full_all_scope": own_full_prompts if baseline else (lambda: full.score(users, items, hists)),
    }
    if not baseline:
        fns["full_user_prefix_masked"] = own_full_prompts
    rows = shared.encoder.token_rows([np.asarray(hist)] * len(items), list(items))
    full_tokens = float(np.mean([len(r) for r in rows.ids]))
    prefix_tokens = float(np.mean(rows.positions["suffix_pos"]))
    suffix_tokens = full_tokens - prefix_tokens
    # the ratio if a token cost the same on both paths: full prompt ÷ (suffix + the prefix once per row share)
    token_cap = full_tokens / (suffix_tokens + prefix_tokens / len(items))
    load0 = load_average()
    times = interleaved_times(fns, reps=args.reps, warmup=0)
    rate = {k: len(items) / median(v) for k, v in times.items()}
    ratio = rate["shared"] / rate["full_all_scope"]
    print(
        f"recommend {len(items)}: rows/s {rate}; shared / full {ratio:.2f}x (token cap {token_cap:.2f}x); "
        f"max |shared-masked| {max_diff:.2e}"
    )
    what = "user_prefix" if not baseline else shared.method
    return write_result(
        f"prefix_recommend_{args.candidates}"
        + (f"_{args.template}" if args.template else "")
        + (f"_h{args.max_history}" if args.max_history else "")
        + (f"_{shared.method}" if baseline else ""),
        value=median(times["full_all_scope"]),
        baseline=median(times["shared"]),
        unit="s",
        config={
            "candidates": len(items),
            "user": user,
            "history_len": len(hist),
            "batch_size": 16,
            "reps": args.reps,
            "template": args.template or "config",
            "max_history": args.max_history or "config",
            "method": shared.method,
            "tokens_per_row": {
                "full": round(full_tokens, 1),
                "prefix": round(prefix_tokens, 1),
                "suffix": round(suffix_tokens, 1),
            },
            "token_cap": round(token_cap, 2),
            "load_average": [round(load0, 2), round(load_average(), 2)],
        },
        title=f"One user's {len(items)} candidates: per-row full prompts vs a shared prefix (bundled SmolLM2, CPU)",
        value_label="full prompts, scope all (s)" if not baseline else f"{what}, full prompts (s)",
        baseline_label=f"{what}, prefix once + suffixes (s)",
        notes=(
            f"rows/s: shared {rate['shared']:.2f}, full prompts ({'all' if not baseline else what}) "
            f"{rate['full_all_scope']:.2f}"
            + (
                f", full prompts (user_prefix, masked) {rate['full_user_prefix_masked']:.2f}"
                if not baseline
                else ""
            )
            + f". Speed-up (ratio) {ratio:.2f}x; goal "
            f">= 4x; token arithmetic caps it at {token_cap:.2f}x ({full_tokens:.0f} tokens per full prompt vs "
            f"{suffix_tokens:.0f} suffix + {prefix_tokens:.0f} prefix once). Shared vs masked full-prompt scores of the same model: max |diff| {max_diff:.2e}."
        ),
        samples=times,
    )


def bench_cache(args, shared: Scorer, titles, data) -> dict:
    """`users` users × `visits` visits × `per_visit` new candidates each, in visit order (all users, then again)."""
    people = user_rows(data, args.users, seed=3)
    visits = []
    for v in range(args.visits):
        for j, (u, h) in enumerate(people):
            visits.append((u, h, candidates(titles, h, args.per_visit, seed=100 * v + j)))
    rows = sum(len(c) for _, _, c in visits)
    caches: list[PrefixCache] = []

    def run(with_cache: bool) -> None:
        cache = PrefixCache(512 << 20, version=shared.cache_version) if with_cache else None
        for u, h, items in visits:
            shared.score(np.full(len(items), u), items, [h] * len(items), prefix_cache=cache)
        if cache is not None:
            caches.append(cache)

    load0 = load_average()
    times = interleaved_times(
        {"cache": lambda: run(True), "no_cache": lambda: run(False)}, reps=args.reps, warmup=0
    )
    stats = caches[-1].stats()
    per_entry = stats.bytes / max(stats.entries, 1)
    rate = {k: rows / median(v) for k, v in times.items()}
    print(f"cache: rows/s {rate}; hit rate {stats.hit_rate:.3f}; {per_entry / 2**20:.2f} MiB per user")
    return write_result(
        "prefix_cache_repeat",
        value=median(times["no_cache"]),
        baseline=median(times["cache"]),
        unit="s",
        config={
            "users": args.users,
            "visits": args.visits,
            "per_visit": args.per_visit,
            "rows": rows,
            "load_average": [round(load0, 2), round(load_average(), 2)],
        },
        title="Users coming back with new candidates: per-user prefix cache vs recomputing the prefix each visit",
        value_label="no cache (s)",
        baseline_label="prefix cache (s)",
        notes=(
            f"rows/s: cache {rate['cache']:.2f}, no cache {rate['no_cache']:.2f} (ratio {rate['cache'] / rate['no_cache']:.2f}x); "
            f"hit rate {stats.hit_rate:.3f} ({stats.hits} hits, {stats.misses} misses: the first visit of each user "
            f"misses); {stats.bytes / 2**20:.1f} MiB for {stats.entries} users = {per_entry / 2**20:.2f} MiB per "
            "user (fp32 keys+values of every layer + G_u)."
        ),
        samples=times,
    )


def bench_train(args, cfg, titles, cf, data) -> dict:
    people = user_rows(data, 8, seed=5)
    batches, models = {}, {}
    for scope in ("all", "user_prefix"):
        s = scorer_for(cfg, scope, titles, cf, seed=0)
        models[scope] = s.model.train()
        if scope == "all":
            u = [p[0] for p in people]
            h = [p[1] for p in people]
            items = [int(candidates(titles, p[1], 1, seed=j)[0]) for j, p in enumerate(people)]
        else:  # 2 users, 4 candidates each: the sampler's grouping
            u = [people[j // 4][0] for j in range(8)]
            h = [people[j // 4][1] for j in range(8)]
            items = [int(candidates(titles, h[j], 8, seed=j // 4)[j % 4]) for j in range(8)]
        batch = model_batch(s.encoder, np.array(u), np.array(items), h)
        batch["label"] = (torch.arange(8) % 2).float()
        batches[scope] = batch

    def step(scope: str) -> None:
        m = models[scope]
        m.zero_grad(set_to_none=True)
        m.loss(batches[scope]).backward()

    load0 = load_average()
    times = interleaved_times(
        {"all": lambda: step("all"), "user_prefix_grouped": lambda: step("user_prefix")},
        reps=args.reps,
        warmup=1,
    )
    rate = {k: 8 / median(v) for k, v in times.items()}
    print(f"train: samples/s {rate}")
    return write_result(
        "prefix_train_grouped",
        value=median(times["all"]),
        baseline=median(times["user_prefix_grouped"]),
        unit="s",
        config={
            "rows": 8,
            "users_in_grouped_batch": 2,
            "reps": args.reps,
            "load_average": [round(load0, 2), round(load_average(), 2)],
        },
        title="A training step (fwd+bwd, 8 rows): user_prefix with 2 users × 4 rows vs scope all",
        value_label="scope all, 8 full prompts (s)",
        baseline_label="user_prefix, 2 shared prefixes + 8 suffixes (s)",
        notes=f"samples/s: all {rate['all']:.2f}, user_prefix grouped {rate['user_prefix_grouped']:.2f} "
        f"({rate['user_prefix_grouped'] / rate['all']:.2f}x).",
        samples=times,
    )


def train_orders(data: str, seed: int) -> dict[str, dict[str, np.ndarray]]:
    """The train split's rows in the two orders a run can ask for: `global` (a seeded permutation, what
    random_shuffle gives) and `prefix_groups` (sorted by the pipeline's keyed (user, history) hash: the
    order of the groups Ray Data's sort yields; ties keep their stored order)."""
    t = protocol.read_split(data, "train", columns=["user_id", "item_id", "label", "history"])
    cols = {
        "user_id": t["user_id"].to_numpy(),
        "item_id": t["item_id"].to_numpy(),
        "label": t["label"].to_numpy(),
        "history": np.array([np.asarray(h, dtype=np.int64) for h in t["history"].to_pylist()], dtype=object),
    }
    keys = prefix_group_keys(cols["user_id"], cols["history"], seed)
    orders = {
        "global": np.random.default_rng(seed).permutation(len(keys)),
        "prefix_groups": np.argsort(keys, kind="stable"),
    }
    groups = np.unique(keys, return_inverse=True)[1]
    return {name: {**{k: v[o] for k, v in cols.items()}, "group": groups[o]} for name, o in orders.items()}


def prefixes_per_batch(rows: dict[str, np.ndarray], micro: int) -> float:
    """Mean number of distinct prompt prefixes in a micro-batch of `micro` consecutive rows."""
    n = len(rows["group"]) // micro * micro
    g = rows["group"][:n].reshape(-1, micro)
    return float(np.mean([len(set(r.tolist())) for r in g]))


def bench_train_order(args, cfg, titles, cf, data) -> dict:
    """Real ML-1M micro-batches in the order the pipeline yields them: how many prompt prefixes a micro-batch
    holds with `train.shuffle` global vs prefix_groups, and the training step's samples/s of user_prefix on
    prefix_groups batches vs scope `all` on globally shuffled ones (the same number of batches of each)."""
    orders = train_orders(data, cfg.train.seed)
    micro = args.micro
    per_batch = {
        f"{name}@{m}": prefixes_per_batch(rows, m)
        for name, rows in orders.items()
        for m in (micro, 2 * micro)
    }
    print(f"train order: distinct prefixes per micro-batch {per_batch}")
    models = {scope: scorer_for(cfg, scope, titles, cf, seed=0) for scope in ("all", "user_prefix", "suffix")}
    plan = {
        "all": ("all", "global"),
        "user_prefix_grouped": ("user_prefix", "prefix_groups"),
        "user_prefix_global": ("user_prefix", "global"),
        "suffix": ("suffix", "global"),  # the prefix runs without autograd: no grouping needed
    }
    batches: dict[str, list] = {}
    timed_prefixes: dict[str, int] = {}
    for name, (scope, order) in plan.items():
        rows, enc = orders[order], models[scope].encoder
        picked = np.random.default_rng(cfg.train.seed).choice(
            len(rows["group"]) // micro, size=args.train_batches, replace=False
        )  # micro-batches from anywhere in the epoch, not only its first rows
        batches[name] = []
        timed_prefixes[name] = 0
        for b in picked:
            sl = slice(b * micro, (b + 1) * micro)
            timed_prefixes[name] += len(set(rows["group"][sl].tolist()))
            batch = model_batch(enc, rows["user_id"][sl], rows["item_id"][sl], list(rows["history"][sl]))
            batch["label"] = torch.as_tensor(rows["label"][sl], dtype=torch.float32)
            batches[name].append(batch)
    for s in models.values():
        s.model.train()

    def steps(name: str) -> None:
        m = models[plan[name][0]].model
        for batch in batches[name]:
            m.zero_grad(set_to_none=True)
            m.loss(batch).backward()

    load0 = load_average()
    times = interleaved_times({k: functools.partial(steps, k) for k in plan}, reps=args.reps, warmup=1)
    rows_timed = micro * args.train_batches
    rate = {k: rows_timed / median(v) for k, v in times.items()}
    print(f"train order: samples/s {rate}")
    return write_result(
        "prefix_train_pipeline_order",
        value=median(times["all"]),
        baseline=median(times["user_prefix_grouped"]),
        unit="s",
        config={
            "micro_batch": micro,
            "batches": args.train_batches,
            "seed": cfg.train.seed,
            "prefixes_per_micro_batch": per_batch,
            "prefixes_in_timed_batches": timed_prefixes,
            "reps": args.reps,
            "load_average": [round(load0, 2), round(load_average(), 2)],
        },
        title=f"Training steps on real ML-1M micro-batches of {micro}: each delta_scope in the order it trains on",
        value_label=f"scope all, {args.train_batches} globally shuffled micro-batches (s)",
        baseline_label=f"user_prefix, {args.train_batches} prefix_groups micro-batches (s)",
        notes=(
            "samples/s (÷ all): "
            + ", ".join(f"{k} {v:.2f} ({v / rate['all']:.2f}x)" for k, v in rate.items())
            + ". Distinct "
            "prompt prefixes per micro-batch over the whole train split: "
            + ", ".join(f"{k} {v:.2f}" for k, v in per_batch.items())
            + f". The timed batches (drawn at random positions) held {timed_prefixes} prefixes in "
            f"{rows_timed} rows."
        ),
        samples=times,
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/demo.yaml")
    ap.add_argument("--candidates", type=int, default=100)
    ap.add_argument("--users", type=int, default=6)
    ap.add_argument("--visits", type=int, default=3)
    ap.add_argument("--per-visit", type=int, default=10)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--micro", type=int, default=4, help="micro-batch rows for train_order (CPU protocol: 4)")
    ap.add_argument("--train-batches", type=int, default=12, help="micro-batches timed per rep (train_order)")
    ap.add_argument("--only", choices=["recommend", "cache", "train", "train_order"], default=None)
    ap.add_argument(
        "--method",
        choices=["cora", "tallrec", "collm"],
        default="cora",
        help="recommend only: a baseline's prefix-shared scoring against its own full prompts (tags the name)",
    )
    ap.add_argument(
        "--template",
        default=None,
        help="prompt.template override (a NAMED_TEMPLATES name); tags the result name",
    )
    ap.add_argument(
        "--max-history",
        type=int,
        default=None,
        help="prompt.max_history override (the paper's prompt: 10 liked titles; demo: 5); tags the result name",
    )
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    overrides = [f"prompt.template={args.template}"] if args.template else []
    if args.max_history:
        # and room for all of them (the paper configs' 512): no title is dropped to fit
        overrides += [f"prompt.max_history={args.max_history}", "prompt.max_prompt_tokens=512"]
    cfg = load_config(ExperimentConfig, args.config, overrides)
    data = cfg.data.uri
    titles = protocol.titles_by_id(protocol.read_items(data))
    cf = load_cf_artifact(cfg.model.cf_artifact)
    if args.method != "cora":
        if args.only != "recommend":
            ap.error("--method tallrec / collm measures --only recommend")
        bench_recommend(args, scorer_for(cfg, "all", titles, cf, method=args.method), None, titles, data)
        return
    if args.only in (None, "recommend", "cache"):
        shared = scorer_for(cfg, "user_prefix", titles, cf)
        if args.only in (None, "recommend"):
            full = scorer_for(cfg, "all", titles, cf)
            bench_recommend(args, shared, full, titles, data)
            del full
        if args.only in (None, "cache"):
            bench_cache(args, shared, titles, data)
        del shared
    if args.only in (None, "train"):
        bench_train(args, cfg, titles, cf, data)
    if args.only in (None, "train_order"):
        bench_train_order(args, cfg, titles, cf, data)


if __name__ == "__main__":
    main()
