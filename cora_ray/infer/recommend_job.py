"""The batch form of `POST /v1/recommend` without candidates: the top k of the whole catalogue for many users.

    summary = recommend_users(ScorerSource("checkpoint", uri=...), UserSelection(users=["1m_19"]),
                              k=10, k_retrieve=100, out="results/recs")
    print(summary_text(summary))

Per user, the same steps as serving (cora_ray/infer/catalogue.py `recommend_one`): the checkpoint's CF
backbone retrieves `k_retrieve` (K) items the user has not interacted with in train, the LLM scores those K
rows through the serving engine (cold start and G as in serving), the k best come back with their CF rank
and CF score. Users are spread over a Ray Data actor pool (`map_batches`; one scorer, its dataset index and
the users' stored histories per actor, loaded once); the driver shows users done and the ETA, then writes

    <out>/recommendations/*.parquet   one row per (user, rank): user_id, rank, item_id, title, score, cf_rank,
                                      cf_score, fallback (ids are the dataset's raw ids, as in the HTTP API)
    <out>/summary.json                counts, fallbacks, retrieval vs re-ranking seconds, the model
    <out>/manifest.json               written last (the parquet goes through Ray Data's write_parquet)

atomically: on any error nothing is published at `out`.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cora_ray import storage
from cora_ray.data import protocol
from cora_ray.errors import ConfigError, DataError
from cora_ray.infer.catalogue import CatalogueRetriever, check_k, recommend_one
from cora_ray.infer.service import ScoreJob
from cora_ray.infer.source import ScorerSource

KIND = "cora_ray.recommendations"
VERSION = 1
COLUMNS = ["user_id", "rank", "item_id", "title", "score", "cf_rank", "cf_score", "fallback"]
MAX_USERS_PER_CALL = 16  # users per map_batches call: small, so progress and the pool's balance stay fine


@dataclass
class UserSelection:
    """Which users: raw ids (`users`), or every user of the dataset (`all_users`)."""

    users: Sequence[str] | None = None
    all_users: bool = False


def read_users_file(uri: str, endpoint: str | None = None) -> list[str]:
    """Raw user ids, one per line (blank lines and lines starting with '#' skipped)."""
    if not storage.exists(uri, endpoint):
        raise DataError(f"users file {uri} does not exist")
    text = storage.read_text(uri, endpoint)
    users = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    if not users:
        raise DataError(f"users file {uri} holds no user id (one raw id per line)")
    return users


def select_users(
    data_uri: str, selection: UserSelection, endpoint: str | None = None
) -> tuple[list[str], np.ndarray]:
    """(raw ids, int ids) of the selected users in the given order, each once. A raw id the dataset's
    users.parquet does not hold is refused (a batch job has no history to fall back on for it)."""
    table = protocol.read_users(data_uri, endpoint)
    raw = [str(r) for r in table["raw_id"].to_pylist()]
    ids = table["user_id"].to_numpy().astype(np.int64)
    if selection.all_users:
        order = np.argsort(ids, kind="stable")
        return [raw[j] for j in order], ids[order]
    wanted = list(dict.fromkeys(str(u) for u in selection.users or []))
    if not wanted:
        raise DataError("no users given: pass --users, --users-file or --all-users")
    mapping = dict(zip(raw, ids.tolist(), strict=True))
    unknown = [u for u in wanted if u not in mapping]
    if unknown:
        shown = ", ".join(repr(u) for u in unknown[:10]) + (
            f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""
        )
        raise DataError(f"{len(unknown)} user id(s) not in {data_uri}/users.parquet (raw ids): {shown}")
    return wanted, np.asarray([mapping[u] for u in wanted], dtype=np.int64)


# ---------------------------------------------------------------------------------------------------------
# the Ray Data actor
# ---------------------------------------------------------------------------------------------------------


class RecommendActor:
    """map_batches UDF: a scorer, its catalogue index and the users' stored histories, loaded once; each
    call recommends for a batch of users (user_key, user_id) → one row per (user, rank)."""

    def __init__(self, source: ScorerSource, k_retrieve: int, k: int, num_threads: int | None = None) -> None:
        if num_threads:
            import torch

            torch.set_num_threads(int(num_threads))
        from cora_ray.infer.service import Catalog, ScorerOptions, ScoringEngine

        scorer = source.load()
        self.catalog = Catalog.from_dataset(scorer.data_uri, source.endpoint)
        options = ScorerOptions(max_rows_per_forward=scorer.batch_size, cache_bytes=0)
        self.engine = ScoringEngine(scorer, options)
        self.retriever = CatalogueRetriever(source.endpoint)
        self.k_retrieve, self.k = int(k_retrieve), int(k)

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        cols: dict[str, list] = {
            c: [] for c in [*COLUMNS, "_retrieved", "_retrieval_s", "_rerank_s", "_cold", "_model"]
        }
        for key, uid in zip(batch["user_key"], batch["user_id"], strict=True):
            uid = int(uid)
            job = ScoreJob(str(key), uid, [], list(self.catalog.histories.get(uid, [])))
            res = recommend_one(self.engine, self.retriever, job, self.k_retrieve, self.k)
            for r in res.items:
                for name, value in (
                    ("user_id", str(key)),
                    ("rank", r.rank),
                    ("item_id", self.catalog.item_raw[r.item_id]),
                    ("title", self.catalog.title(r.item_id)),
                    ("score", r.score),
                    ("cf_rank", r.cf_rank),
                    ("cf_score", r.cf_score),
                    ("fallback", res.retrieval.fallback),
                    ("_retrieved", len(res.retrieval.item_ids)),
                    ("_retrieval_s", res.retrieval_s),
                    ("_rerank_s", res.rerank_s),
                    ("_cold", res.cold_start),
                    ("_model", res.model),
                ):
                    cols[name].append(value)
        return pa.table(
            {
                **{
                    c: pa.array(cols[c], pa.string())
                    for c in ("user_id", "item_id", "title", "fallback", "_model")
                },
                **{c: pa.array(cols[c], pa.int32()) for c in ("rank", "cf_rank", "_retrieved")},
                **{
                    c: pa.array(cols[c], pa.float64())
                    for c in ("score", "cf_score", "_retrieval_s", "_rerank_s")
                },
                "_cold": pa.array(cols["_cold"], pa.bool_()),
            }
        )


# ---------------------------------------------------------------------------------------------------------
# the job
# ---------------------------------------------------------------------------------------------------------


def _progress_bar(total: int, enabled: bool, desc: str) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="user", disable=not enabled, file=sys.stderr, dynamic_ncols=True)


def run_pipeline(
    source: ScorerSource,
    keys: list[str],
    ids: np.ndarray,
    k_retrieve: int,
    k: int,
    *,
    num_actors: int | None = None,
    use_gpu: bool = False,
    progress: bool = True,
) -> tuple[pa.Table, int]:
    """Every user's rows (with the private `_` columns), through a Ray Data actor pool; (table, actors)."""
    from ray import data as ray_data

    from cora_ray.eval.evaluate import _cora_cause, ensure_ray

    ray = ensure_ray()
    n = len(keys)
    if num_actors is None:
        resources = ray.cluster_resources()
        num_actors = int(resources.get("GPU", 0)) if use_gpu else int(resources.get("CPU", 1))
    if num_actors < 1:
        raise ConfigError("no actor to run: the cluster has no GPU (use_gpu) or --num-actors is 0")
    num_actors = min(num_actors, n)
    per_call = max(1, min(MAX_USERS_PER_CALL, math.ceil(n / (4 * num_actors))))
    ray_data.DataContext.get_current().enable_progress_bars = False  # one bar: ours, in users
    ds = ray_data.from_arrow(
        pa.table({"user_key": pa.array(keys, pa.string()), "user_id": pa.array(ids, pa.int64())}),
        override_num_blocks=max(num_actors, math.ceil(n / per_call)),
    )
    ds = ds.map_batches(
        RecommendActor,
        fn_constructor_kwargs={
            "source": source,
            "k_retrieve": k_retrieve,
            "k": k,
            "num_threads": None if use_gpu else 1,
        },
        batch_size=per_call,
        batch_format="numpy",
        compute=ray_data.ActorPoolStrategy(size=num_actors),
        **({"num_gpus": 1} if use_gpu else {"num_cpus": 1}),
    )
    tables = []
    plural = "s" if num_actors != 1 else ""
    try:
        with _progress_bar(n, progress, f"recommending ({num_actors} actor{plural})") as bar:
            for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
                tables.append(batch)
                bar.update(int(pc.sum(pc.equal(batch["rank"], 1)).as_py() or 0))
    except Exception as exc:
        cause = _cora_cause(exc)
        if cause is not None:
            raise type(cause)(str(cause)) from None
        raise
    table = pa.concat_tables(tables) if tables else None
    done = set() if table is None else set(table["user_id"].to_pylist())
    if len(done) != n:
        raise DataError(f"the Ray pipeline returned recommendations for {len(done)} of {n} users")
    return table, num_actors


def summarise(table: pa.Table, keys: list[str], k: int, k_retrieve: int, wall_s: float, extra: dict) -> dict:
    """Counts and seconds of a run (summary.json), from the rows' private columns (rank-1 row = one user)."""
    first = table.filter(pc.equal(table["rank"], 1))
    retrieval_s = float(pc.sum(first["_retrieval_s"]).as_py() or 0.0)
    rerank_s = float(pc.sum(first["_rerank_s"]).as_py() or 0.0)
    rows = int(pc.sum(first["_retrieved"]).as_py() or 0)
    fallback = first.filter(pc.is_valid(first["fallback"]))
    return {
        "users": len(keys),
        "rows": table.num_rows,
        "k": k,
        "catalogue_k": k_retrieve,
        "model": first["_model"][0].as_py() if first.num_rows else None,
        "fallback_users": {
            str(f): int(c)
            for f, c in zip(*np.unique(fallback["fallback"].to_pylist(), return_counts=True), strict=True)
        },
        "cold_start_users": int(pc.sum(first["_cold"].cast(pa.int64())).as_py() or 0),
        "llm_rows": rows,
        "wall_s": round(wall_s, 3),
        "retrieval_s": round(retrieval_s, 6),
        "rerank_s": round(rerank_s, 6),
        "rerank_rows_per_s": round(rows / rerank_s, 4) if rerank_s > 0 else None,
        **extra,
    }


def write_recommendations(
    out: str, table: pa.Table, summary: dict, endpoint: str | None = None, overwrite: bool = False
) -> None:
    """Publish the rows (through Ray Data's write_parquet), summary.json, manifest.json last. The write
    tasks are pinned to this node: the staging directory of `atomic_dir` is on this node's disk."""
    import ray
    from ray import data as ray_data
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)
    with storage.atomic_dir(out, endpoint=endpoint, overwrite=overwrite) as tmp:
        ray_data.from_arrow(table.select(COLUMNS)).write_parquet(
            str(tmp / "recommendations"), ray_remote_args={"scheduling_strategy": here}
        )
        files = sorted(p.relative_to(tmp).as_posix() for p in (tmp / "recommendations").glob("*.parquet"))
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
        manifest = {
            "kind": KIND,
            "version": VERSION,
            "files": [*files, "summary.json"],
            "columns": COLUMNS,
            "users": summary["users"],
            "rows": summary["rows"],
            "k": summary["k"],
            "catalogue_k": summary["catalogue_k"],
            "checkpoint": summary.get("checkpoint"),
            "model": summary.get("model"),
        }
        (tmp / storage.MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def recommend_users(
    source: ScorerSource,
    selection: UserSelection,
    *,
    k: int,
    k_retrieve: int,
    out: str,
    num_actors: int | None = None,
    use_gpu: bool = False,
    progress: bool = True,
    overwrite: bool = False,
) -> dict:
    """The job: checks first (k, the checkpoint's CF backbone, the users, --out), then the actor pool, then
    the atomic write. Returns the summary (also <out>/summary.json)."""
    check_k(k, k_retrieve)
    pre = source.preflight()  # manifests only: a wrong URI or dataset fails before any actor starts
    if not (pre["manifest"] or {}).get("cf_artifact"):
        raise ConfigError(
            f"checkpoint {source.uri} (method {pre.get('method')!r}) has no CF backbone to retrieve items with; "
            "recommending from the whole catalogue needs a checkpoint trained with model.cf_artifact (CoRA, CoLLM)"
        )
    storage.refuse_existing(out, "recommendations", overwrite, source.endpoint)
    keys, ids = select_users(pre["data_uri"], selection, source.endpoint)
    t0 = time.perf_counter()
    table, actors = run_pipeline(
        source, keys, ids, k_retrieve, k, num_actors=num_actors, use_gpu=use_gpu, progress=progress
    )
    order = {u: j for j, u in enumerate(keys)}
    table = table.append_column("_order", pa.array([order[u] for u in table["user_id"].to_pylist()]))
    table = table.sort_by([("_order", "ascending"), ("rank", "ascending")])
    extra = {
        "checkpoint": source.uri,
        "backbone": (pre["manifest"].get("cf_artifact") or {}).get("backbone"),
        "num_actors": actors,
        "use_gpu": use_gpu,
        "out": out,
    }
    summary = summarise(table, keys, k, k_retrieve, time.perf_counter() - t0, extra)
    write_recommendations(out, table, summary, source.endpoint, overwrite)
    summary["example"] = table.slice(0, min(3, table.num_rows)).select(COLUMNS).to_pylist()
    return summary


def summary_text(summary: dict) -> str:
    """One screen: what was written, fallbacks, and where the time went."""
    users, rr, rt = summary["users"], summary["rerank_s"], summary["retrieval_s"]
    share = rt / (rt + rr) if rt + rr > 0 else 0.0
    fb = ", ".join(f"{n} by {f}" for f, n in summary["fallback_users"].items()) or "none"
    rate = summary["rerank_rows_per_s"]
    lines = [
        f"recommendations: {users} user(s), top {summary['k']} of K={summary['catalogue_k']} items retrieved by "
        f"the CF backbone ({summary.get('backbone')}), re-ranked by {summary['model']}",
        f"  written     {summary['out']}/recommendations/*.parquet ({summary['rows']} rows), summary.json",
        f"  fallback    {fb} (no trained CF user vector); cold start in the LLM: {summary['cold_start_users']}",
        f"  time        {summary['wall_s']:.1f} s wall on {summary['num_actors']} actor(s) "
        f"({'gpu' if summary['use_gpu'] else 'cpu'}); per user: retrieval {rt / users:.4f} s ({share:.1%}), "
        f"re-ranking {rr / users:.3f} s",
        f"  LLM rows    {summary['llm_rows']} ({summary['llm_rows'] / users:.0f} per user), "
        + (f"{rate:.2f} rows/s while re-ranking" if rate else "-"),
    ]
    for r in summary.get("example", []):
        lines.append(
            f"  e.g. {r['user_id']} #{r['rank']}: {r['title']} (score {r['score']:.3f}, "
            f"cf rank {r['cf_rank']}, cf score {r['cf_score']:.3f})"
        )
    return "\n".join(lines)
