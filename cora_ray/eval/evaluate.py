"""Evaluation (docs/architecture.md §3.5): score the rows of one or more splits and write metrics.json + report.md.

    doc = evaluate(ScorerSource("checkpoint", uri), "results/cora_mf", splits=["test", "test_warm"], limit=400)

Flow:
1. `preflight`: manifests only (checkpoint / artifact, dataset) — a missing manifest, an unknown split, an
   --out that already holds results, or a dataset whose hash differs from the one the model was made with
   fails here, before anything starts or is written.
2. Row selection: each split's rows; with `limit`, the first `limit` rows (of that split) in a permutation
   of the base split seeded by `seed`: the same rows every run, and a larger limit extends a smaller one.
   test_warm / test_cold are filters of test, so the union of the selected test rows is scored once.
3. Scoring: Ray Data `map_batches` with the scorer as an actor pool (one actor per CPU, or per GPU with
   `use_gpu`), rows sorted by approximate prompt length so that batches pad little; `num_actors=0` scores
   in this process without Ray (GPU scripts, debugging). A progress bar counts rows.
4. Metrics per split (docs/method.md §6: AUC, UAUC, users used / skipped, rows) and the files, published atomically
   at `out` (storage.atomic_dir; `manifest.json` last): metrics.json, report.md, scores/<split>.parquet.
   On any error nothing is published at `out`.

Ray is imported only inside the distributed path.
"""

from __future__ import annotations

import json
import math
import re
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cora_ray import manifest as manifests
from cora_ray import storage
from cora_ray.capabilities import capabilities
from cora_ray.config import ExperimentConfig, from_dict
from cora_ray.data import protocol
from cora_ray.data.batching import length_order, prompt_lengths, title_char_costs
from cora_ray.errors import ConfigError, CoraError, DataError, StorageError
from cora_ray.eval.metrics import auc_uauc
from cora_ray.eval.report import evaluation_markdown, paper_row
from cora_ray.infer.remote_code import require_consent
from cora_ray.infer.source import ScorerSource
from cora_ray.ray_cluster import start_or_join

KIND = manifests.EVALUATION.kind
VERSION = manifests.EVALUATION.version
ALL_SPLITS = protocol.SPLITS + protocol.DERIVED_SPLITS
DEFAULT_SPLITS = ("test", "test_warm", "test_cold")
ROW_COLUMNS = ["user_id", "item_id", "label", "history", "warm"]


# ---------------------------------------------------------------------------------------------------------
# splits and the seeded sample
# ---------------------------------------------------------------------------------------------------------


def parse_splits(splits: str | Sequence[str]) -> list[str]:
    """'test,test_warm' or a list → validated split names (unknown → ConfigError listing the valid ones)."""
    names = (
        [s.strip() for s in splits.split(",")]
        if isinstance(splits, str)
        else [str(s).strip() for s in splits]
    )
    names = [s for s in names if s]
    if not names:
        raise ConfigError(f"no split given; choose from {', '.join(ALL_SPLITS)}")
    unknown = [s for s in names if s not in ALL_SPLITS]
    if unknown:
        raise ConfigError(
            f"unknown split(s) {', '.join(map(repr, unknown))}; choose from {', '.join(ALL_SPLITS)}"
        )
    return list(dict.fromkeys(names))


def base_split(split: str) -> str:
    return "test" if split in protocol.DERIVED_SPLITS else split


def split_mask(table: pa.Table, split: str) -> np.ndarray:
    """Which rows of its base split's table belong to `split`."""
    if split == "test_warm":
        return table["warm"].to_numpy(zero_copy_only=False).astype(bool)
    if split == "test_cold":
        return ~table["warm"].to_numpy(zero_copy_only=False).astype(bool)
    return np.ones(table.num_rows, dtype=bool)


def sample_positions(mask: np.ndarray, limit: int | None, seed: int) -> np.ndarray:
    """Positions (sorted) of the rows of a split to evaluate: all of them, or with `limit` the first
    `limit` of them in a permutation of the base split seeded by `seed` (stable; nested across limits)."""
    n = len(mask)
    if limit is None:
        return np.flatnonzero(mask)
    if limit <= 0:
        raise ConfigError(f"--limit must be > 0, got {limit}")
    perm = np.random.default_rng(seed).permutation(n)
    chosen = perm[mask[perm]][:limit]
    return np.sort(chosen)


def select_rows(
    data_uri: str, splits: Sequence[str], limit: int | None, seed: int, endpoint: str | None = None
) -> tuple[pa.Table, dict[str, np.ndarray], dict[str, int]]:
    """(rows to score with a `_key` column, split → keys of its rows, split → its full size)."""
    parts: list[pa.Table] = []
    selection: dict[str, np.ndarray] = {}
    population: dict[str, int] = {}
    offset = 0
    for base in dict.fromkeys(base_split(s) for s in splits):
        table = protocol.read_split(data_uri, base, endpoint, columns=ROW_COLUMNS)
        union = np.zeros(0, dtype=np.int64)
        chosen: dict[str, np.ndarray] = {}
        for s in (s for s in splits if base_split(s) == base):
            mask = split_mask(table, s)
            population[s] = int(mask.sum())
            chosen[s] = sample_positions(mask, limit, seed)
            union = np.union1d(union, chosen[s])
        rows = table.take(pa.array(union, type=pa.int64()))
        keys = np.arange(offset, offset + len(union), dtype=np.int64)
        for s, pos in chosen.items():
            selection[s] = keys[np.searchsorted(union, pos)]
        parts.append(rows.append_column("_key", pa.array(keys, type=pa.int64())))
        offset += len(union)
    return pa.concat_tables(parts), selection, population


def row_length_order(table: pa.Table, titles: Sequence[str], max_history: int) -> np.ndarray:
    """Row order by approximate prompt length (title characters: the driver has no tokenizer), so Ray
    batches hold similar lengths — cora_ray/data/batching.py's estimate and order, as the scorer's."""
    items = table["item_id"].to_numpy(zero_copy_only=False)
    lengths = prompt_lengths(title_char_costs(titles), items, table["history"], max_history)
    return length_order(lengths)


# ---------------------------------------------------------------------------------------------------------
# metrics
# ---------------------------------------------------------------------------------------------------------


def _clean(value: Any) -> Any:
    """JSON-safe: NaN / inf → None, numpy scalars → Python."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def split_metrics(user_ids: np.ndarray, labels: np.ndarray, scores: np.ndarray, population: int) -> dict:
    """docs/method.md §6 metrics of one split; a split too small for AUC gets nulls and a note instead of failing."""
    n = len(labels)
    out: dict[str, Any] = {
        "rows": int(n),
        "population": int(population),
        "positive_rate": float(np.mean(labels)) if n else None,
        "users": int(len(np.unique(user_ids))),
    }
    try:
        out.update(auc_uauc(user_ids, labels, scores))
    except DataError as exc:
        if n and not np.all(np.isfinite(scores)):
            raise
        out.update(
            auc=None, uauc=None, users_used=0, users_skipped=out["users"], skipped_reasons={}, note=str(exc)
        )
    return _clean(out)


# ---------------------------------------------------------------------------------------------------------
# scoring: in-process or on a Ray actor pool
# ---------------------------------------------------------------------------------------------------------


class ScoringActor:
    """Ray Data map_batches UDF: one scorer per actor, loaded once in the constructor."""

    def __init__(self, source: ScorerSource, num_threads: int | None = None) -> None:
        if num_threads:
            import torch

            torch.set_num_threads(int(num_threads))
        self.scorer = source.load()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        scores = self.scorer.score_rows(batch)
        return {"_key": np.asarray(batch["_key"], dtype=np.int64), "score": scores.astype(np.float32)}


def _progress_bar(total: int, enabled: bool, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="row", disable=not enabled, file=sys.stderr, dynamic_ncols=True)


def score_local(source: ScorerSource, rows: pa.Table, progress: bool = True) -> tuple[np.ndarray, dict]:
    """Score `rows` in this process (no Ray). Returns (scores by `_key` order of rows, timing info)."""
    t0 = time.perf_counter()
    scorer = source.load()
    t_loaded = time.perf_counter()
    with _progress_bar(rows.num_rows, progress, "scoring") as bar:
        scores = scorer.score(
            rows["user_id"].to_numpy(),
            rows["item_id"].to_numpy(),
            rows["history"].to_pylist(),
            progress=bar.update,
        )
    t1 = time.perf_counter()
    return scores, {
        "load_s": t_loaded - t0,
        "score_s": t1 - t_loaded,
        "num_actors": 0,
        "scorer": scorer.describe(),
    }


def ensure_ray() -> Any:
    """ray, initialised: the running cluster (RAY_ADDRESS, or already initialised) or a local one started by
    `cora_ray.ray_cluster.start_or_join` (its environment rule: no credentials in the runtime_env)."""
    import ray

    start_or_join(log_to_driver=True)
    return ray


MIN_RAY_BATCH = 16  # rows; below this an actor call costs more in overhead than it scores
MAX_RAY_BATCH = {"cf": 8192, "llm": 128}


def default_num_actors(ray: Any, use_gpu: bool, rows: int) -> int:
    """One actor per CPU (or GPU) of the cluster, but no more than there are minimal batches of rows."""
    resources = ray.cluster_resources()
    want = int(resources.get("GPU", 0)) if use_gpu else int(resources.get("CPU", 1))
    if use_gpu and want == 0:
        raise ConfigError("use_gpu is set but the Ray cluster has no GPU")
    return max(1, min(want, -(-rows // MIN_RAY_BATCH)))


def default_ray_batch_size(kind: str, rows: int, num_actors: int) -> int:
    """Rows per map_batches call: about 4 calls per actor (so the pool stays balanced to the end), within
    [MIN_RAY_BATCH, 128] for LLM scorers (large enough to length-bucket well) and up to 8192 for CF."""
    cap = MAX_RAY_BATCH["cf" if kind == "cf" else "llm"]
    return int(min(cap, max(MIN_RAY_BATCH, -(-rows // (4 * max(1, num_actors))))))


def _cora_cause(exc: BaseException) -> CoraError | None:
    """The CoraError behind a Ray / Ray Data exception chain (actor construction, task failure).

    A task error keeps its cause (`cause`, `__cause__`); an actor whose constructor raised arrives as
    ActorDiedError with only the remote traceback text, whose last line names our exception."""
    import cora_ray.errors as errors

    seen: set[int] = set()
    stack = [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, CoraError):
            return e
        stack += [getattr(e, "cause", None), e.__cause__, e.__context__]
    found = re.findall(r"cora_ray\.errors\.(\w+): ([^\n]+)", str(exc))
    if found:
        name, message = found[-1]
        cls = getattr(errors, name, None)
        if isinstance(cls, type) and issubclass(cls, CoraError):
            return cls(message.strip())
    return None


def score_ray(
    source: ScorerSource,
    rows: pa.Table,
    *,
    num_actors: int | None = None,
    use_gpu: bool = False,
    ray_batch_size: int | None = None,
    progress: bool = True,
) -> tuple[np.ndarray, dict]:
    """Score `rows` with Ray Data: map_batches over an actor pool of scorers. Returns scores by row order."""
    ray = ensure_ray()
    from ray import data as ray_data

    n = rows.num_rows
    if num_actors is None:
        num_actors = default_num_actors(ray, use_gpu, n)
    ray_batch_size = ray_batch_size or default_ray_batch_size(source.kind, n, num_actors)
    ctx = ray_data.DataContext.get_current()
    ctx.enable_progress_bars = False  # one bar: ours, in rows
    blocks = max(num_actors, -(-n // ray_batch_size))
    ds = ray_data.from_arrow(
        rows.select(["_key", "user_id", "item_id", "history"]), override_num_blocks=blocks
    )
    resources = {"num_gpus": 1} if use_gpu else {"num_cpus": 1}
    ds = ds.map_batches(
        ScoringActor,
        fn_constructor_kwargs={"source": source, "num_threads": None if use_gpu else 1},
        batch_size=ray_batch_size,
        batch_format="numpy",
        compute=ray_data.ActorPoolStrategy(size=num_actors),
        udf_modifying_row_count=False,
        **resources,
    )
    key_to_pos = np.empty(int(rows["_key"].to_numpy().max()) + 1 if n else 0, dtype=np.int64)
    key_to_pos[rows["_key"].to_numpy()] = np.arange(n)
    scores = np.full(n, np.nan, dtype=np.float32)
    seen = np.zeros(n, dtype=bool)
    t0 = time.perf_counter()
    t_first = None
    rows_after_first = 0
    try:
        with _progress_bar(
            n, progress, f"scoring ({num_actors} actor{'s' if num_actors != 1 else ''})"
        ) as bar:
            for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
                pos = key_to_pos[batch["_key"]]
                scores[pos] = batch["score"]
                seen[pos] = True
                if t_first is None:
                    t_first = time.perf_counter()
                else:
                    rows_after_first += len(pos)
                bar.update(len(pos))
    except Exception as exc:
        cause = _cora_cause(exc)
        if cause is not None:
            raise type(cause)(str(cause)) from None
        raise
    if not seen.all():
        raise DataError(f"evaluation lost {int((~seen).sum())} of {n} rows in the Ray pipeline")
    t1 = time.perf_counter()
    steady = rows_after_first / (t1 - t_first) if t_first and t1 > t_first and rows_after_first else None
    return scores, {
        "score_s": t1 - t0,
        "num_actors": num_actors,
        "steady_rows_per_s": steady,
        "ray_batch_size": ray_batch_size,
        "use_gpu": use_gpu,
    }


# ---------------------------------------------------------------------------------------------------------
# the evaluation
# ---------------------------------------------------------------------------------------------------------


def _source_info(source: ScorerSource, pre: dict) -> dict:
    m = pre.get("manifest") or {}
    info: dict[str, Any] = {"kind": source.kind, "uri": storage.display_uri(source.uri)}
    if source.kind == "checkpoint":
        cf = m.get("cf_artifact")
        if isinstance(cf, dict) and cf.get("uri"):
            cf = {**cf, "uri": storage.display_uri(cf["uri"])}
        info.update(hash=m.get("hash"), step=m.get("step"), train_metrics=m.get("metrics"), cf_artifact=cf)
        base = m.get("base_llm")
    elif source.kind == "cf":
        info.update(backbone=m.get("backbone"), hash=m.get("hash"))
        base = None
    else:
        cfg = source.experiment_config()
        base = {"identity": cfg.llm.name_or_path}
        info.update(
            prompt={
                "chat_template": cfg.prompt.chat_template,
                "answer_token": cfg.llm.answer_token,
                "negative_token": cfg.llm.negative_token,
            }
        )
    return {"source": info, "base_llm": base}


def _shares_prefix(source: ScorerSource, pre: dict) -> bool:
    """The scorer will run each user's prompt prefix once (docs/method.md §2.5): a checkpoint whose
    model.delta_scope shares it, or a method whose prefix is per user (TALLRec, zero-shot, CoLLM). Then a
    user's rows go into one Ray batch. (A template that cannot be split is scored with full prompts all the
    same.)"""
    if source.kind == "zero_shot":
        return True
    if source.kind != "checkpoint":
        return False
    model = pre["manifest"]["config"].get("model") or {}
    method = model.get("method", "cora")
    return model.get("delta_scope", "all") != "all" or capabilities(method).prefix_per_user


def _max_history(source: ScorerSource, pre: dict) -> int:
    try:
        if source.kind == "checkpoint":
            return int(pre["manifest"]["config"]["prompt"]["max_history"])
        if source.kind == "zero_shot":
            return int(source.experiment_config().prompt.max_history)
    except (KeyError, TypeError, CoraError):
        pass
    return 10


def _check_remote_code(source: ScorerSource, pre: dict) -> None:
    """Before Ray or a model starts: a config asking for llm.trust_remote_code needs the operator's consent
    (the scorer checks again where it loads)."""
    if source.kind == "checkpoint":
        cfg = from_dict(
            ExperimentConfig, pre["manifest"]["config"], source=f"{source.uri}/manifest.json config"
        )
        require_consent(cfg.llm, source.trust_remote_code, f"checkpoint {source.uri}")
    elif source.kind == "zero_shot":
        cfg = source.experiment_config()
        require_consent(cfg.llm, source.trust_remote_code, f"the zero-shot config of {cfg.name}")


def evaluate(
    source: ScorerSource,
    out: str | None,
    *,
    splits: str | Sequence[str] = DEFAULT_SPLITS,
    limit: int | None = None,
    seed: int = 42,
    num_actors: int | None = None,
    use_gpu: bool = False,
    ray_batch_size: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
    name: str | None = None,
    paper: str | None = None,
    endpoint: str | None = None,
) -> dict:
    """Evaluate `source` on `splits` of its dataset (`source.data_uri`, else the one it was made with).

    Returns the metrics document (what metrics.json holds) and publishes it at `out` (when not None)
    with report.md and per-split scores. `num_actors=0` scores without Ray; None = one actor per CPU (or
    GPU with `use_gpu`). Raises a CoraError — and writes nothing at `out` — on bad input."""
    t_start = time.perf_counter()
    split_names = parse_splits(splits)
    if limit is not None and limit <= 0:
        raise ConfigError(f"limit must be > 0, got {limit}")
    if num_actors is not None and num_actors < 0:
        raise ConfigError(f"num_actors must be >= 0, got {num_actors}")
    if out is not None:
        storage.refuse_existing(out, "an evaluation", overwrite, endpoint)
    pre = source.preflight()
    _check_remote_code(source, pre)
    data_uri = pre["data_uri"]
    source.data_uri = data_uri
    data_manifest = pre["data_manifest"]
    rows, selection, population = select_rows(data_uri, split_names, limit, seed, endpoint)
    if rows.num_rows == 0:
        raise DataError(
            f"nothing to evaluate: the split(s) {', '.join(split_names)} of {data_uri} have no rows"
        )
    if source.kind != "cf":
        titles = protocol.titles_by_id(protocol.read_items(data_uri, endpoint))
        order = row_length_order(rows, titles, _max_history(source, pre))
        if _shares_prefix(source, pre):  # a user's rows in one Ray batch: their prefix runs once
            order = order[np.argsort(rows["user_id"].to_numpy()[order], kind="stable")]
        rows = rows.take(pa.array(order, type=pa.int64()))

    if num_actors == 0:
        scores, timing = score_local(source, rows, progress)
    else:
        scores, timing = score_ray(
            source,
            rows,
            num_actors=num_actors,
            use_gpu=use_gpu,
            ray_batch_size=ray_batch_size,
            progress=progress,
        )
    if not np.all(np.isfinite(scores)):
        raise DataError(f"the model produced {int((~np.isfinite(scores)).sum())} non-finite scores")

    # back to key order: key k is at position k of these arrays
    keys = rows["_key"].to_numpy()
    order = np.argsort(keys)
    by_key = {
        "user_id": rows["user_id"].to_numpy()[order],
        "item_id": rows["item_id"].to_numpy()[order],
        "label": rows["label"].to_numpy()[order].astype(np.int64),
        "score": scores[order],
    }
    metrics = {}
    for s in split_names:
        k = selection[s]
        metrics[s] = split_metrics(
            by_key["user_id"][k], by_key["label"][k], by_key["score"][k], population[s]
        )

    wall = time.perf_counter() - t_start
    method = pre.get("method") or source.kind
    doc = _clean(
        {
            "kind": KIND,
            "version": VERSION,
            "name": name or source.name or method,
            "paper": paper_row(paper or name or source.name or ""),
            "method": method,
            **_source_info(source, pre),
            "data": {
                "uri": data_uri,
                "dataset": data_manifest.get("dataset"),
                "hash": data_manifest.get("hash"),
            },
            "splits": metrics,
            "limit": limit,
            "seed": seed,
            "rows_scored": int(rows.num_rows),
            "wall_s": round(wall, 3),
            "rows_per_s": round(rows.num_rows / wall, 3) if wall > 0 else None,
            "num_actors": timing.get("num_actors"),
            "timing": {
                k: (round(v, 3) if isinstance(v, float) else v) for k, v in timing.items() if k != "scorer"
            },
        }
    )
    if "scorer" in timing:
        doc["scorer"] = _clean(timing["scorer"])
    if out is not None:
        write_results(out, doc, selection, by_key, endpoint=endpoint, overwrite=overwrite)
    return doc


def write_results(
    out: str,
    doc: dict,
    selection: dict[str, np.ndarray],
    by_key: dict[str, np.ndarray],
    *,
    endpoint: str | None = None,
    overwrite: bool = False,
) -> None:
    """Publish metrics.json, report.md, scores/<split>.parquet and manifest.json (last) atomically."""
    with storage.atomic_dir(out, endpoint=endpoint, overwrite=overwrite) as tmp:
        (tmp / "metrics.json").write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
        (tmp / "report.md").write_text(evaluation_markdown(doc))
        (tmp / "scores").mkdir()
        for s, k in selection.items():
            pq.write_table(
                pa.table(
                    {
                        "user_id": pa.array(by_key["user_id"][k], type=pa.int32()),
                        "item_id": pa.array(by_key["item_id"][k], type=pa.int32()),
                        "label": pa.array(by_key["label"][k], type=pa.int8()),
                        "score": pa.array(by_key["score"][k], type=pa.float32()),
                    }
                ),
                tmp / "scores" / f"{s}.parquet",
            )
        manifests.write(  # kind and version stamped by cora_ray/manifest.py (EVALUATION)
            manifests.EVALUATION,
            tmp,
            {
                "files": ["metrics.json", "report.md", *[f"scores/{s}.parquet" for s in selection]],
                "name": doc.get("name"),
                "method": doc.get("method"),
                "data_hash": doc.get("data", {}).get("hash"),
                "splits": {
                    s: {"auc": m.get("auc"), "uauc": m.get("uauc"), "rows": m.get("rows")}
                    for s, m in doc["splits"].items()
                },
            },
        )


def read_results(uri: str, endpoint: str | None = None) -> dict:
    """The metrics document of a published evaluation (refuses incomplete directories, another kind or
    version of manifest: cora_ray/manifest.py)."""
    manifests.read(manifests.EVALUATION, uri, endpoint)
    return storage.read_json(storage.join(uri, "metrics.json"), endpoint)


def read_scores(uri: str, split: str, endpoint: str | None = None) -> pa.Table:
    """Per-row scores of one split of a published evaluation: user_id, item_id, label, score."""
    fs, path = storage.filesystem(storage.join(uri, "scores", f"{split}.parquet"), endpoint)
    try:
        return pq.read_table(path, filesystem=fs)
    except (OSError, pa.ArrowInvalid) as exc:
        raise StorageError(f"no scores for split {split!r} at {uri}: {exc}") from exc


def summary_table(doc: dict) -> str:
    """A short console table of a metrics document."""
    lines = [
        f"{doc.get('name')} on {doc.get('data', {}).get('dataset') or doc.get('data', {}).get('uri')}:",
        f"  {'split':<12}{'rows':>8}{'AUC':>9}{'UAUC':>9}{'users':>8}{'skipped':>9}",
    ]
    for s, m in doc["splits"].items():
        auc_s = f"{m['auc']:.4f}" if m.get("auc") is not None else "—"
        uauc_s = f"{m['uauc']:.4f}" if m.get("uauc") is not None else "—"
        lines.append(
            f"  {s:<12}{m['rows']:>8}{auc_s:>9}{uauc_s:>9}{m.get('users_used', 0):>8}{m.get('users_skipped', 0):>9}"
        )
    if doc.get("wall_s") is not None:
        lines.append(
            f"  {doc['rows_scored']} rows in {doc['wall_s']:.1f} s ({doc['rows_per_s']:.2f} rows/s end to end)"
        )
    return "\n".join(lines)
