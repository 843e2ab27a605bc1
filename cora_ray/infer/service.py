"""The serving logic that `serve/app.py` wraps: request models, raw-id mapping, cold start, batching, top-k.

Nothing here imports Ray Serve, so every rule is testable in-process:

    catalog = Catalog.from_dataset(data_uri)                    # raw id ↔ int id, titles, stored histories
    job = catalog.resolve(req.user_id, req.item_ids, req.history, limits)   # 422-style errors name the ids
    engine = ScoringEngine(Scorer.from_checkpoint(uri, data_uri), options)
    [result] = engine.score_jobs([job])                          # many users' jobs → one batched forward
    top = top_k(req.candidates, result.scores, k)                # (raw id, score), best first

Cold start (docs/architecture.md §3.6, issue 7): a user the dataset does not know is scored with G = 0 — a zero
collaborative delta, i.e. the plain LLM with the text prompt — and the response says `cold_start: true`.
A dataset user the CF backbone has no train interactions for is flagged the same way and scored by the rule
the checkpoint was trained and evaluated with, so that served scores equal evaluated ones: a G generated
from the user's (untrained) CF vector (`model.zero_delta_for_cold_users: false`, the default) or G = 0. An item without a title cannot be put
in a prompt: it is a client error that names the item.

The collaborative weight cache (cache.py) sits between the jobs and the generator: G(u, i) is looked up per
(user, item) — plus the history for SASRec, whose user vector encodes it — and only the misses go through the
generator, in one batch.
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

from cora_ray.config import _check, from_dict
from cora_ray.data import protocol
from cora_ray.data.batching import fixed_chunks
from cora_ray.errors import CoraError
from cora_ray.infer.cache import GCache
from cora_ray.infer.prefix_cache import PrefixCache

if TYPE_CHECKING:  # torch is imported where G is handled: the HTTP ingress runs without it
    import torch

# ---------------------------------------------------------------------------------------------------------
# options (the scorer deployment's user_config) and request limits
# ---------------------------------------------------------------------------------------------------------

# Off by default, by measurement (bench/bench_serve.py → bench/results/serve_cache*.md): generating G is a
# small fraction of a row's cost (≈2.6% at SmolLM2-135M size on CPU, ≈0.02% of the FLOPs at 7B), and end to
# end the cache's effect was within run-to-run noise. Set cache_bytes to turn it on.
DEFAULT_CACHE_BYTES = 0
# The per-user prefix cache (cora_ray/infer/prefix_cache.py), used by checkpoints whose delta_scope shares the
# prompt prefix (docs/method.md §2.5), unused otherwise. 256 MiB: ~50 users at SmolLM2-135M fp32 on CPU
# (~4.8 MiB per user, docs/deploy.md §6 "Prefix cache"); serve.config sets the GPU budget.
DEFAULT_PREFIX_CACHE_BYTES = 256 * 1024 * 1024


@dataclass
class RequestLimits:
    """What one HTTP request may ask for (larger inputs are a 4xx, never a slow or failed server)."""

    max_items: int = 1000  # item_ids / candidates per request
    max_history: int = (
        200  # history items a request may carry (the prompt uses the last max_history of the config)
    )
    max_id_length: int = 512  # characters of one raw id
    max_body_bytes: int = 256 * 1024  # request body; larger → 413
    # K: items CF retrieves and the LLM re-ranks for a /v1/recommend without candidates (K LLM rows per
    # request, like a request with K candidates: at most max_items). None → min(100, max_items).
    catalogue_k: int | None = None

    def __post_init__(self) -> None:
        for name in ("max_items", "max_history", "max_id_length", "max_body_bytes"):
            _check(getattr(self, name) > 0, f"limits.{name} must be > 0, got {getattr(self, name)}")
        self.catalogue_k = resolve_catalogue_k(self.catalogue_k, self.max_items)


DEFAULT_CATALOGUE_K = 100


def resolve_catalogue_k(catalogue_k: int | None, max_items: int) -> int:
    """limits.catalogue_k checked: 1..max_items (a catalogue request costs K rows, and a request must fit
    one scorer batch, as a request with K candidates); None → min(DEFAULT_CATALOGUE_K, max_items)."""
    if catalogue_k is None:
        return min(DEFAULT_CATALOGUE_K, max_items)
    _check(catalogue_k > 0, f"limits.catalogue_k must be > 0, got {catalogue_k}")
    _check(
        catalogue_k <= max_items,
        f"limits.catalogue_k={catalogue_k} is above limits.max_items={max_items}: a recommendation "
        f"without candidates re-ranks catalogue_k rows, and a request holds at most max_items rows",
    )
    return catalogue_k


@dataclass
class ScorerOptions:
    """The scorer deployment's `user_config`: changing it reconfigures replicas in place (no restart).

    `checkpoint_uri` set here replaces the model the application was built with (a reload); the cache is
    emptied when the checkpoint changes. `cache_bytes = 0` turns the G cache off.
    """

    checkpoint_uri: str | None = None
    max_batch_rows: int = 32  # rows per batch (requests gathered until their rows reach it: RowBatcher)
    batch_wait_timeout_s: float = 0.01  # how long a batch waits to fill
    max_rows_per_forward: int = 64  # rows (user, item) per forward pass; a batch is split into chunks of this
    cache_bytes: int = DEFAULT_CACHE_BYTES
    prefix_cache_bytes: int = DEFAULT_PREFIX_CACHE_BYTES  # per-user prefix keys/values (shared-prefix scopes)
    # rows accepted and not yet answered per replica; past it a request gets 503 + Retry-After at once
    # (cora_ray/infer/admission.py: R rows/s × latency target T)
    max_queued_rows: int = 64

    def __post_init__(self) -> None:
        _check(self.max_batch_rows > 0, f"max_batch_rows must be > 0, got {self.max_batch_rows}")
        _check(
            self.batch_wait_timeout_s >= 0,
            f"batch_wait_timeout_s must be >= 0, got {self.batch_wait_timeout_s}",
        )
        _check(
            self.max_rows_per_forward > 0,
            f"max_rows_per_forward must be > 0, got {self.max_rows_per_forward}",
        )
        _check(self.cache_bytes >= 0, f"cache_bytes must be >= 0, got {self.cache_bytes}")
        _check(
            self.prefix_cache_bytes >= 0, f"prefix_cache_bytes must be >= 0, got {self.prefix_cache_bytes}"
        )
        _check(self.max_queued_rows > 0, f"max_queued_rows must be > 0, got {self.max_queued_rows}")

    @classmethod
    def from_user_config(cls, data: dict | None, defaults: ScorerOptions | None = None) -> ScorerOptions:
        """Options from a user_config mapping; keys it leaves out keep the `defaults` (the app's args)."""
        base = {k: v for k, v in (defaults or cls()).__dict__.items()}
        base.update(data or {})
        return from_dict(cls, base, source="scorer user_config")


class RequestError(CoraError):
    """A request the service refuses: `status` is the HTTP code (4xx), the message says what to fix."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


# ---------------------------------------------------------------------------------------------------------
# HTTP request / response models (FastAPI builds the OpenAPI schema at /docs from these)
# ---------------------------------------------------------------------------------------------------------

# A raw id as the dataset stores it (users.parquet / items.parquet `raw_id`): a string; integers are
# accepted and read as their decimal string. Floats, bools, NaN and null are refused.
RawId = Annotated[
    StrictStr | StrictInt, Field(description="a raw id as in the dataset (string; ints accepted)")
]
HARD_MAX_LIST = 100_000  # schema-level bound; the configured RequestLimits are tighter


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ScoreRequest(_Strict):
    user_id: RawId
    item_ids: list[RawId] = Field(..., min_length=1, max_length=HARD_MAX_LIST)
    history: list[RawId] | None = Field(
        None,
        max_length=HARD_MAX_LIST,
        description="the user's liked items, oldest first; default: the stored one",
    )

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"user_id": "1", "item_ids": ["1193", "661"], "history": ["914"]}]},
    )


class ScoreResponse(BaseModel):
    scores: list[float] = Field(..., description='logit of the answer token ("Yes"), one per item, in order')
    model: str = Field(..., description="the checkpoint that scored: <uri>@<sha256 prefix of its weights>")
    cold_start: bool = Field(..., description="true: the CF model does not know this user (zero delta)")


class RecommendRequest(_Strict):
    user_id: RawId
    candidates: list[RawId] | None = Field(
        None,
        min_length=1,
        max_length=HARD_MAX_LIST,
        description="items to rank; omitted: the whole catalogue (the checkpoint's CF backbone retrieves "
        "limits.catalogue_k items the user has not interacted with in train, the LLM re-ranks them)",
    )
    k: StrictInt = Field(
        10, ge=1, description="how many to return (at most the candidates, or limits.catalogue_k)"
    )
    history: list[RawId] | None = Field(None, max_length=HARD_MAX_LIST)

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"user_id": "1", "candidates": ["1193", "661", "914"], "k": 2},
                {"user_id": "1", "k": 10},
            ]
        },
    )


class RankedItem(BaseModel):
    item_id: str
    score: float = Field(..., description='the LLM\'s answer logit ("Yes")')
    title: str
    cf_rank: int | None = Field(
        None, description="catalogue only: the item's rank (1 = best) in the CF retrieval"
    )
    cf_score: float | None = Field(
        None,
        description="catalogue only: the CF backbone's logit, or under fallback 'popularity' the item's "
        "positive train interactions",
    )


class CatalogueTiming(BaseModel):
    retrieval_s: float = Field(..., description="CF retrieval, measured at the ingress (one replica call)")
    rerank_s: float = Field(..., description="LLM scoring of the retrieved items (queueing included)")


class RecommendResponse(BaseModel):
    items: list[RankedItem] = Field(..., description="the top k items, highest score first")
    model: str
    cold_start: bool
    source: str | None = Field(None, description='"catalogue" when no candidates were sent')
    fallback: str | None = Field(
        None,
        description="catalogue only: how items were retrieved when the CF backbone has no trained user "
        "vector for the user ('popularity'); absent when the user's own CF vector retrieved them",
    )
    retrieved: int | None = Field(None, description="catalogue only: items retrieved and re-ranked (<= K)")
    timing: CatalogueTiming | None = None


# ---------------------------------------------------------------------------------------------------------
# the catalog: raw ids, titles, stored histories
# ---------------------------------------------------------------------------------------------------------


@dataclass
class ScoreJob:
    """One request, resolved to int ids: what the ingress sends to a scorer replica.

    `user_id` is None for a raw id the dataset does not know (cold start, scored with G = 0).
    `user_key` is the raw id, used to route a user's jobs to the same replica."""

    user_key: str
    user_id: int | None
    item_ids: list[int]
    history: list[int]


@dataclass
class ScoreResult:
    scores: list[float]
    cold_start: bool
    model: str


def _raw(value: str | int) -> str:
    return value if isinstance(value, str) else str(value)


def _name_ids(ids: Sequence[str], limit: int = 10) -> str:
    shown = ", ".join(repr(i) for i in ids[:limit])
    return shown + (f" and {len(ids) - limit} more" if len(ids) > limit else "")


@dataclass
class Catalog:
    """The dataset's one id mapping (docs/architecture.md §3.1) plus titles and each user's latest positive history."""

    user_ids: dict[str, int]
    item_ids: dict[str, int]
    item_raw: list[str]  # index = int item id ("" at 0, padding)
    titles: list[str]  # index = int item id
    histories: dict[int, list[int]] = field(default_factory=dict)  # int user → last ≤ HISTORY_LEN positives
    dataset_hash: str | None = None

    @classmethod
    def from_dataset(cls, uri: str, endpoint: str | None = None) -> Catalog:
        """Read items.parquet, users.parquet and the positives of train/valid/test (for stored histories)."""
        manifest = protocol.read_manifest(uri, endpoint)
        items = protocol.read_items(uri, endpoint)
        users = protocol.read_users(uri, endpoint)
        item_ids = dict(zip(items["raw_id"].to_pylist(), items["item_id"].to_pylist(), strict=True))
        n = max(item_ids.values(), default=0) + 1
        item_raw = [""] * n
        for raw, i in item_ids.items():
            item_raw[i] = raw
        histories = stored_histories(
            [
                protocol.read_split(uri, s, endpoint, ["user_id", "item_id", "label", "ts"])
                for s in ("train", "valid", "test")
            ],
            int(manifest.get("history_len", protocol.HISTORY_LEN)),
        )
        return cls(
            user_ids=dict(zip(users["raw_id"].to_pylist(), users["user_id"].to_pylist(), strict=True)),
            item_ids=item_ids,
            item_raw=item_raw,
            titles=protocol.titles_by_id(items),
            histories=histories,
            dataset_hash=manifest.get("hash"),
        )

    def title(self, item_id: int) -> str:
        return self.titles[item_id] if 0 < item_id < len(self.titles) else ""

    def _items(self, raw_ids: Sequence[str | int], what: str) -> list[int]:
        out, unknown = [], []
        for r in raw_ids:
            i = self.item_ids.get(_raw(r))
            if i is None or not self.title(i):
                unknown.append(_raw(r))
            else:
                out.append(i)
        if unknown:
            raise RequestError(f"unknown {what} id(s) (no title in the dataset): {_name_ids(unknown)}", 422)
        return out

    def resolve(
        self,
        user_id: str | int,
        item_ids: Sequence[str | int],
        history: Sequence[str | int] | None,
        limits: RequestLimits,
        what: str = "item_ids",
    ) -> ScoreJob:
        """Check a request against the limits and map its raw ids; RequestError (4xx) names what is wrong."""
        user_key = _raw(user_id)
        if not user_key or len(user_key) > limits.max_id_length:
            raise RequestError(f"user_id must be 1..{limits.max_id_length} characters", 422)
        if not item_ids:
            raise RequestError(f"{what} must not be empty", 422)
        if len(item_ids) > limits.max_items:
            raise RequestError(f"{what} has {len(item_ids)} entries; the limit is {limits.max_items}", 422)
        if history is not None and len(history) > limits.max_history:
            raise RequestError(f"history has {len(history)} entries; the limit is {limits.max_history}", 422)
        too_long = [r for r in [*item_ids, *(history or [])] if len(_raw(r)) > limits.max_id_length]
        if too_long:
            raise RequestError(f"item ids longer than {limits.max_id_length} characters are not valid", 422)
        items = self._items(item_ids, "item")
        uid = self.user_ids.get(user_key)
        if history is None:
            hist = list(self.histories.get(uid, [])) if uid is not None else []
        else:
            hist = self._items(history, "history item")
        return ScoreJob(user_key=user_key, user_id=uid, item_ids=items, history=hist)


def resolve_catalogue_user(
    catalog: Catalog, user_id: str | int, history: Sequence[str | int] | None, limits: RequestLimits
) -> ScoreJob:
    """A /v1/recommend without candidates, checked as `Catalog.resolve` checks a request: the user and the
    history mapped to int ids (the stored history when none is given). `item_ids` is empty: the catalogue
    retrieval (cora_ray/infer/catalogue.py) fills it."""
    user_key = _raw(user_id)
    if not user_key or len(user_key) > limits.max_id_length:
        raise RequestError(f"user_id must be 1..{limits.max_id_length} characters", 422)
    if history is not None and len(history) > limits.max_history:
        raise RequestError(f"history has {len(history)} entries; the limit is {limits.max_history}", 422)
    if any(len(_raw(r)) > limits.max_id_length for r in history or []):
        raise RequestError(f"item ids longer than {limits.max_id_length} characters are not valid", 422)
    uid = catalog.user_ids.get(user_key)
    if history is None:
        hist = list(catalog.histories.get(uid, [])) if uid is not None else []
    else:
        hist = catalog._items(history, "history item")
    return ScoreJob(user_key=user_key, user_id=uid, item_ids=[], history=hist)


def stored_histories(tables: Sequence[Any], history_len: int) -> dict[int, list[int]]:
    """int user → the item ids of their last `history_len` positive interactions, oldest first.

    `tables` are protocol splits (user_id, item_id, label, ts); this is the history a request without one
    is scored with: what the user liked most recently in the data the model was trained and tested on."""
    import pyarrow as pa
    import pyarrow.compute as pc

    table = pa.concat_tables([t.select(["user_id", "item_id", "label", "ts"]) for t in tables])
    table = table.filter(pc.equal(table["label"], 1)).sort_by([("user_id", "ascending"), ("ts", "ascending")])
    users = table["user_id"].to_numpy()
    items = table["item_id"].to_numpy()
    out: dict[int, list[int]] = {}
    if len(users) == 0:
        return out
    bounds = np.flatnonzero(np.diff(users)) + 1
    for start, stop in zip(np.r_[0, bounds], np.r_[bounds, len(users)], strict=True):
        out[int(users[start])] = items[max(start, stop - history_len) : stop].astype(int).tolist()
    return out


def top_k(raw_ids: Sequence[str], scores: Sequence[float], k: int) -> list[tuple[str, float]]:
    """The k highest-scoring (id, score) pairs, highest first; ties keep the request order."""
    order = sorted(range(len(scores)), key=lambda j: (-scores[j], j))[: max(0, k)]
    return [(raw_ids[j], float(scores[j])) for j in order]


# ---------------------------------------------------------------------------------------------------------
# the scoring engine inside a scorer replica
# ---------------------------------------------------------------------------------------------------------


class ScorerAdapter:
    """The calls the engine makes on a `cora_ray.infer.scorer.Scorer`, in one place: checkpoint identity,
    which users the CF model knows, G for (user, item[, history]) rows, and scoring rows with G per row."""

    def __init__(self, scorer: Any) -> None:
        self.scorer = scorer
        self.manifest: dict = dict(getattr(scorer, "manifest", None) or {})
        self.uri: str = str(getattr(scorer, "uri", None) or "")

    # -- identity --------------------------------------------------------------------------------------

    @property
    def method(self) -> str:
        return str(getattr(self.scorer, "method", None) or self.manifest.get("method", "cora"))

    @property
    def model_id(self) -> str:
        sha = (self.manifest.get("trainable") or {}).get("sha256", "")
        if not sha:
            sha = hashlib.sha256(repr(sorted(self.manifest.items())).encode()).hexdigest()
        return f"{self.uri}@{sha[:12]}"

    @property
    def backbone(self) -> str | None:
        return (self.manifest.get("cf_artifact") or {}).get("backbone")

    @property
    def shares_prefix(self) -> bool:
        """The checkpoint's delta_scope shares the prompt prefix per user: the engine keeps a user's rows
        together and lends the scorer the prefix cache."""
        return bool(getattr(self.scorer, "shares_prefix", False))

    @property
    def cache_version(self) -> str | None:
        """What the scorer stamps cached prefixes with (the checkpoint's content hash)."""
        return getattr(self.scorer, "cache_version", None)

    @property
    def supports_g(self) -> bool:
        """True for CoRA checkpoints: G can be generated, cached and supplied per row."""
        return bool(getattr(self.scorer, "uses_collab_weights", False))

    @property
    def zero_delta_for_cold_users(self) -> bool:
        """The checkpoint's rule for dataset users the CF model does not know: a G generated from their
        (untrained) CF vector (ModelConfig's default, as the authors' code does) or G = 0. Serving follows
        the rule the checkpoint was evaluated with, so served scores equal evaluated ones; users outside the
        dataset always get G = 0 (they have no CF vector at all), as does a scorer without a config."""
        config = getattr(self.scorer, "config", None)
        model = getattr(config, "model", None)
        return bool(getattr(model, "zero_delta_for_cold_users", True))

    @property
    def user_vector_uses_history(self) -> bool:
        """The CF backbone's user vector encodes the history (SASRec), so its G is keyed by the history too.
        Asked of the loaded backbone, else of the class the manifest names."""
        cf = getattr(self.scorer, "cf", None)
        if cf is not None and hasattr(cf, "uses_history"):
            return bool(cf.uses_history)
        if not self.backbone:
            return False
        # imported here: cora_ray.cf.models imports torch, which serving's request path otherwise does not need
        from cora_ray.cf.models import backbone_class

        return backbone_class(self.backbone.lower()).uses_history

    # -- calls -----------------------------------------------------------------------------------------

    def knows_user(self, user_ids: Sequence[int]) -> np.ndarray:
        """(B,) bool: the CF backbone saw these users in train (all True without a CF model)."""
        if not len(user_ids):
            return np.zeros(0, dtype=bool)
        out = self.scorer.knows_user(np.asarray(user_ids, dtype=np.int64))
        return np.asarray(out, dtype=bool).reshape(-1)

    def compute_G(
        self, user_ids: Sequence[int], item_ids: Sequence[int], histories: Sequence[Sequence[int]]
    ) -> torch.Tensor:
        """(B, d_model, r) generated collaborative weights, on the scorer's device."""
        return self.scorer.compute_G(
            np.asarray(user_ids, dtype=np.int64), np.asarray(item_ids, dtype=np.int64), histories
        )

    def g_shape(self) -> tuple[int, ...]:
        return tuple(self.scorer.g_shape)

    def forward_chunks(
        self, item_ids: Sequence[int], histories: Sequence[Sequence[int]], max_rows: int
    ) -> list[np.ndarray]:
        """Row indices per forward pass, at most `max_rows` each: the scorer's length bucketing and cuts
        (`Scorer.forward_chunks`), or the given order in chunks of `max_rows` for a scorer without them."""
        chunks = getattr(self.scorer, "forward_chunks", None)
        if chunks is None:
            return fixed_chunks(len(item_ids), max_rows)
        return chunks(np.asarray(item_ids, dtype=np.int64), histories, max_rows)

    def score(
        self,
        user_ids: Sequence[int],
        item_ids: Sequence[int],
        histories: Sequence[Sequence[int]],
        G: torch.Tensor | None,
        batch_size: int,
        prefix_cache: PrefixCache | None = None,
    ) -> np.ndarray:
        """(n,) logits in row order, one forward pass per `batch_size` rows, in the order given (the engine
        has already ordered and chunked the rows); `prefix_cache` for a shared-prefix checkpoint."""
        kwargs: dict[str, Any] = {"batch_size": batch_size, "bucket": False}
        if G is not None:
            kwargs["G"] = G
        if prefix_cache is not None and self.shares_prefix:
            kwargs["prefix_cache"] = prefix_cache
        out = self.scorer.score(
            np.asarray(user_ids, dtype=np.int64), np.asarray(item_ids, dtype=np.int64), histories, **kwargs
        )
        return np.asarray(out, dtype=np.float64).reshape(-1)

    def describe(self) -> dict:
        m = self.manifest
        cf = m.get("cf_artifact") or {}
        base = m.get("base_llm") or {}
        info = {
            "checkpoint": self.uri,
            "checkpoint_hash": m.get("hash"),  # the manifest's content hash (cora_ray/manifest.py)
            "model": self.model_id,
            "method": self.method,
            "step": m.get("step"),
            "base_llm": base.get("identity"),
            "base_llm_weight_hash": base.get("weight_hash"),
            "cf_backbone": cf.get("backbone"),
            "cf_artifact": cf.get("uri"),
            "dataset_hash": m.get("dataset_hash"),
            "metrics": m.get("metrics") or {},
        }
        describe = getattr(self.scorer, "describe", None)
        if callable(describe):
            scorer_info = describe()
            info.update({k: scorer_info[k] for k in ("device", "prompt") if k in scorer_info})
        return info


class ScoringEngine:
    """Scores the jobs of a batch of requests (many users), one forward pass per chunk of rows.

    Rows = (user, item) pairs flattened across the jobs, ordered by prompt length and cut into chunks of
    `max_rows_per_forward`. Per job: cold start when the user is unknown to the dataset or to the CF
    backbone (G = 0). G is built per chunk — cached where present, the generator on the chunk's misses —
    so at most one chunk's G is held (64 requests × 1,000 rows × 256 KB of G at 7B would be 16 GB for a
    whole batch). `on_forward(rows, seconds)` is called after each chunk (the replica's rate and latency
    metrics). Thread-safe: one batch at a time (`swap` / `reload` take effect between batches)."""

    def __init__(
        self,
        scorer: Any,
        options: ScorerOptions,
        on_forward: Callable[[int, float], None] | None = None,
    ) -> None:
        self._lock = threading.Lock()
        self.options = options
        self.adapter = ScorerAdapter(scorer)
        self.cache = GCache(options.cache_bytes, version=self.adapter.model_id)
        self.prefix_cache = PrefixCache(options.prefix_cache_bytes, version=self.adapter.cache_version)
        self.on_forward = on_forward
        self.rows_scored = 0
        self.batches = 0
        self.forwards = 0

    # -- reconfiguration -------------------------------------------------------------------------------

    def swap(self, scorer: Any) -> None:
        """Start using another checkpoint's scorer; the cache is emptied (G belongs to a generator)."""
        adapter = ScorerAdapter(scorer)
        with self._lock:
            self.adapter = adapter
            self.cache.reset(version=adapter.model_id)
            self.prefix_cache.reset(version=adapter.cache_version)

    def reload(
        self, uri: str, endpoint: str | None = None, probe: Callable[[str], None] | None = None
    ) -> None:
        """Serve checkpoint `uri` with the loaded base LLM: only its trainable tensors (and its CF artifact
        if that differs) are read; they are copied into the serving model between batches
        (cora_ray/infer/reload.py). A checkpoint of another base LLM, model shape or dataset is refused
        (ArtifactMismatchError naming both hashes / fields) and nothing changes."""
        from cora_ray.infer.reload import prepare_reload

        scorer = self.adapter.scorer
        prepared = prepare_reload(scorer, uri, endpoint, probe=probe)  # reads and checks; serving goes on
        with self._lock:
            prepared.apply(scorer, probe=probe)
            self.adapter = ScorerAdapter(scorer)
            self.cache.reset(version=self.adapter.model_id)
            self.prefix_cache.reset(version=self.adapter.cache_version)

    def set_options(self, options: ScorerOptions) -> None:
        with self._lock:
            if options.cache_bytes != self.cache.max_bytes:
                self.cache.resize(options.cache_bytes)
            if options.prefix_cache_bytes != self.prefix_cache.max_bytes:
                self.prefix_cache.resize(options.prefix_cache_bytes)
            self.options = options

    # -- scoring ---------------------------------------------------------------------------------------

    def _cache_key(self, item: int, history: Sequence[int], adapter: ScorerAdapter) -> Any:
        if adapter.user_vector_uses_history:
            return (item, tuple(history))
        return item

    def score_jobs(self, jobs: Sequence[ScoreJob]) -> list[ScoreResult]:
        with self._lock:
            return self._score_jobs(jobs, self.adapter, self.options)

    def _score_jobs(
        self, jobs: Sequence[ScoreJob], adapter: ScorerAdapter, options: ScorerOptions
    ) -> list[ScoreResult]:
        # cold start per job
        known = [j for j in jobs if j.user_id is not None]
        knows = dict(zip((id(j) for j in known), adapter.knows_user([j.user_id for j in known]), strict=True))
        cold = [j.user_id is None or not bool(knows[id(j)]) for j in jobs]
        zero_g = cold if adapter.zero_delta_for_cold_users else [j.user_id is None for j in jobs]

        users: list[int] = []
        items: list[int] = []
        hists: list[list[int]] = []
        zero: list[bool] = []
        for j, z in zip(jobs, zero_g, strict=True):
            n = len(j.item_ids)
            users += [j.user_id or 0] * n
            items += j.item_ids
            hists += [j.history] * n
            zero += [z] * n

        scores = np.empty(len(items), dtype=np.float64)
        chunk = options.max_rows_per_forward
        if adapter.shares_prefix:  # keep each job's (user's) rows together, so a chunk runs few prefixes
            chunks = fixed_chunks(len(items), chunk)
        else:  # rows by prompt length, cut where padding would cost more than another forward
            chunks = adapter.forward_chunks(items, hists, chunk)
        for rows in chunks:
            idx = [int(k) for k in rows]
            u, i, h = [users[k] for k in idx], [items[k] for k in idx], [hists[k] for k in idx]
            G = None
            if adapter.supports_g:
                G = self._collaborative_weights(u, i, h, [zero[k] for k in idx], adapter)
            t0 = time.perf_counter()
            scores[idx] = adapter.score(u, i, h, G=G, batch_size=len(idx), prefix_cache=self.prefix_cache)
            seconds = time.perf_counter() - t0
            self.forwards += 1
            if self.on_forward is not None:
                self.on_forward(len(idx), seconds)
        self.rows_scored += len(items)
        self.batches += 1

        out, s = [], 0
        for j, c in zip(jobs, cold, strict=True):
            n = len(j.item_ids)
            out.append(
                ScoreResult(
                    scores=[float(x) for x in scores[s : s + n]], cold_start=c, model=adapter.model_id
                )
            )
            s += n
        return out

    def _collaborative_weights(
        self,
        users: Sequence[int],
        items: Sequence[int],
        hists: Sequence[Sequence[int]],
        zero: Sequence[bool],
        adapter: ScorerAdapter,
    ) -> torch.Tensor:
        """(rows, d_model, r) for one forward chunk: cached or generated G, zeros where `zero`."""
        import torch

        per_row: list[torch.Tensor | None] = [None] * len(items)
        use_cache = self.cache.enabled
        miss: list[int] = []
        for k, (u, i, h, z) in enumerate(zip(users, items, hists, zero, strict=True)):
            if z:
                continue
            g = self.cache.get_many(u, [self._cache_key(i, h, adapter)])[0] if use_cache else None
            if g is None:
                miss.append(k)
            per_row[k] = g
        if miss:
            g = adapter.compute_G(
                [users[k] for k in miss], [items[k] for k in miss], [hists[k] for k in miss]
            )
            for k, gm in zip(miss, g, strict=True):
                per_row[k] = gm
                if use_cache:
                    # clone: a view would keep the whole chunk's tensor alive (and uncounted) in the cache
                    self.cache.put(users[k], self._cache_key(items[k], hists[k], adapter), gm.clone())
        template = next((g for g in per_row if g is not None), None)
        if template is None:
            return torch.zeros((len(per_row), *adapter.g_shape()))
        zeros = torch.zeros_like(template)
        return torch.stack([zeros if g is None else g for g in per_row])

    # -- introspection ---------------------------------------------------------------------------------

    def describe(self) -> dict:
        return {
            **self.adapter.describe(),
            "cache": self.cache.stats().to_dict(),
            "shares_prefix": self.adapter.shares_prefix,
            "prefix_cache": self.prefix_cache.stats().to_dict(),
            "rows_scored": self.rows_scored,
            "batches": self.batches,
            "forwards": self.forwards,
            "options": dict(self.options.__dict__),
        }


def finite_or_error(scores: Sequence[float]) -> None:
    """A non-finite score is a server-side fault (a broken checkpoint), never something to send as JSON."""
    bad = [s for s in scores if not math.isfinite(s)]
    if bad:
        raise CoraError(f"the model produced {len(bad)} non-finite score(s); the checkpoint may be corrupted")
