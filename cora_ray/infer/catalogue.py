"""Recommend from the whole catalogue: the checkpoint's CF backbone retrieves K items, the LLM re-ranks them.

    retriever = CatalogueRetriever()                    # one per scorer replica / job actor
    got = retriever.retrieve(scorer, query)             # K unseen item ids, best CF score first
    [res] = engine.score_jobs([ScoreJob(..., item_ids=got.item_ids, ...)])   # the normal scoring path
    top = rerank(got, res.scores, k)                     # k items: LLM score, CF rank and CF score

`recommend_one` is the whole flow in-process (the batch job and the benchmark); serving splits it between
a scorer replica (`retrieve`) and the ingress (scoring through the replica's batcher, `rerank`).

The rules (README "Serving", docs/deploy.md §6 for the cost):

- The CF backbone is the checkpoint's: the artifact its manifest names (`cf_artifact`), which the Scorer
  loads as `scorer.cf` — the vectors CoRA's generator and CoLLM's projector read. A method without one
  (TALLRec, zero-shot) has nothing to retrieve with: such a request must carry candidates (422).
- Excluded: every item the user interacted with in the train split, liked or not (label 1 or 0: a rated
  item was consumed; the CF model was fitted on these pairs, so they would crowd the top of its ranking),
  the items of a history the request itself sends (the client says the user has them), the padding id 0
  and items without a title (no prompt can be built for them). Valid and test interactions are not
  excluded: they are what an offline check of the recommendations is measured against.
- Fallback: when the backbone has no trained user vector for the user — an id-based backbone (MF,
  LightGCN) and a user unknown to the dataset or without train interactions, or a history-based one
  (SASRec, `uses_history`) and an empty history — items are retrieved by popularity (users with a positive
  train interaction, ties by item id), `fallback` says "popularity" and `cf_score` is that count. The LLM
  re-ranking then follows serving's cold-start rule (cora_ray/infer/service.py) as for any request.

The per-dataset part (each user's train items, popularity, titles) is a `CatalogueIndex`, built once per
replica or job actor on first use; the backbone is asked at each call (a reload may replace it).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cora_ray.data import protocol
from cora_ray.errors import CoraError
from cora_ray.infer.service import RequestError, ScoreJob, finite_or_error

FALLBACK_POPULARITY = "popularity"


# ---------------------------------------------------------------------------------------------------------
# what crosses from the ingress to a replica and back
# ---------------------------------------------------------------------------------------------------------


@dataclass
class CatalogueQuery:
    """One user's catalogue retrieval. `user_key` (the raw id) routes the call to the replica that scores
    the user (serve/routing.py); `user_id` None: the dataset does not know the user."""

    user_key: str
    user_id: int | None
    history: list[int]
    k_retrieve: int
    exclude: list[int] = field(default_factory=list)  # items not to recommend besides the train ones


@dataclass
class Retrieval:
    """The retrieved items, best CF score first. A replica refusing the query sets `error` / `status`
    (a 4xx the ingress raises) instead of raising across Ray."""

    item_ids: list[int]
    cf_scores: list[float]
    fallback: str | None = None
    seconds: float = 0.0
    error: str | None = None
    status: int = 200

    def raise_error(self) -> None:
        if self.error is not None:
            raise RequestError(self.error, self.status)


@dataclass
class Recommendation:
    item_id: int
    rank: int  # 1 = the highest LLM score
    score: float  # the LLM's answer logit
    cf_rank: int  # 1 = the best CF score among the retrieved items
    cf_score: float


def check_k(k: int, k_retrieve: int) -> None:
    """k must be 1..K: the top k of the K re-ranked items."""
    if k < 1:
        raise RequestError(f"k must be >= 1, got {k}", 422)
    if k > k_retrieve:
        raise RequestError(
            f"k={k} is above catalogue_k={k_retrieve}: without candidates the LLM re-ranks the "
            f"{k_retrieve} items the CF backbone retrieves (limits.catalogue_k), so k can be at most {k_retrieve}",
            422,
        )


def no_backbone_message(scorer: Any) -> str:
    method = getattr(scorer, "method", None) or "?"
    where = getattr(scorer, "uri", None) or "the served model"
    return (
        f"{where} (method {method!r}) has no CF backbone to retrieve items with: send `candidates` to rank. "
        "Recommending from the whole catalogue needs a checkpoint trained with model.cf_artifact (CoRA, CoLLM)"
    )


# ---------------------------------------------------------------------------------------------------------
# the per-dataset index
# ---------------------------------------------------------------------------------------------------------


@dataclass
class CatalogueIndex:
    """Each user's train items (CSR: user u's are `items[indptr[u]:indptr[u + 1]]`, sorted, distinct), the
    number of users who liked each item id in train (`popularity`) and which ids can be recommended
    (`titled`: a title, not the padding id)."""

    indptr: np.ndarray
    items: np.ndarray
    popularity: np.ndarray
    titled: np.ndarray
    dataset_hash: str | None = None

    @classmethod
    def build(cls, train: Any, titles: Sequence[str], dataset_hash: str | None = None) -> CatalogueIndex:
        """From the train split (a table with user_id, item_id, label) and titles by item id."""
        users = np.asarray(train["user_id"].to_numpy(), dtype=np.int64)
        items = np.asarray(train["item_id"].to_numpy(), dtype=np.int64)
        labels = np.asarray(train["label"].to_numpy())
        n_items = max(len(titles), int(items.max()) + 1 if len(items) else 1)
        titled = np.zeros(n_items, dtype=bool)
        titled[: len(titles)] = [bool(t) for t in titles]
        titled[0] = False
        pairs = np.unique(users * n_items + items)  # sorted by user, then item; duplicates once
        pu, pi = pairs // n_items, pairs % n_items
        n_users = int(pu.max()) + 1 if len(pu) else 1
        indptr = np.zeros(n_users + 1, dtype=np.int64)
        np.cumsum(np.bincount(pu, minlength=n_users), out=indptr[1:])
        liked = np.unique(users[labels == 1] * n_items + items[labels == 1]) % n_items  # distinct users
        popularity = np.bincount(liked, minlength=n_items).astype(np.float64)
        return cls(indptr, pi, popularity, titled, dataset_hash)

    @classmethod
    def from_dataset(cls, uri: str, titles: Sequence[str], endpoint: str | None = None) -> CatalogueIndex:
        manifest = protocol.read_manifest(uri, endpoint)
        train = protocol.read_split(uri, "train", endpoint, ["user_id", "item_id", "label"])
        return cls.build(train, titles, manifest.get("hash"))

    def seen(self, user_id: int | None) -> np.ndarray:
        """The user's train items (empty for None or a user without train interactions)."""
        if user_id is None or not 0 <= user_id < len(self.indptr) - 1:
            return np.zeros(0, dtype=np.int64)
        return self.items[self.indptr[user_id] : self.indptr[user_id + 1]]


# ---------------------------------------------------------------------------------------------------------
# retrieval
# ---------------------------------------------------------------------------------------------------------


def _device(module: Any) -> Any:
    import torch

    for t in (*module.parameters(), *module.buffers()):
        return t.device
    return torch.device("cpu")


def needs_fallback(cf: Any, user_id: int | None, history: Sequence[int]) -> bool:
    """True when the backbone has no trained user vector for the user (module docstring)."""
    if cf.uses_history:
        return not len(history)
    if user_id is None:
        return True
    import torch

    return not bool(cf.knows_user(torch.tensor([user_id], device=_device(cf)))[0])


def cf_scores_of_all_items(cf: Any, user_id: int | None, history: Sequence[int]) -> np.ndarray:
    """(num_items + 1,) float64: the backbone's logit of every item id for the user (padding: -inf)."""
    import torch

    from cora_ray.data.batching import pad_histories

    device = _device(cf)
    users = torch.tensor([user_id or 0], dtype=torch.long, device=device)
    hist = torch.from_numpy(pad_histories([list(history)])).to(device) if cf.uses_history else None
    with torch.inference_mode():
        out = cf.score_all_items(users, hist)[0]
    return out.float().cpu().numpy().astype(np.float64)


def retrieve_items(
    cf: Any,
    index: CatalogueIndex,
    user_id: int | None,
    history: Sequence[int],
    k_retrieve: int,
    exclude: Sequence[int] = (),
) -> Retrieval:
    """The top `k_retrieve` recommendable items for the user by CF score (or popularity, the fallback),
    best first, ties by item id. RequestError when nothing is left after the exclusions."""
    t0 = time.perf_counter()
    fallback = FALLBACK_POPULARITY if needs_fallback(cf, user_id, history) else None
    scores = index.popularity.copy() if fallback else cf_scores_of_all_items(cf, user_id, history)
    allowed = np.zeros(len(scores), dtype=bool)
    m = min(len(scores), len(index.titled))
    allowed[:m] = index.titled[:m]
    for ids in (index.seen(user_id), np.asarray(list(exclude), dtype=np.int64)):
        ids = ids[(ids >= 0) & (ids < len(allowed))]
        allowed[ids] = False
    candidates = np.flatnonzero(allowed)
    if not len(candidates):
        raise RequestError(
            f"no item left to recommend: all {int(index.titled.sum())} items with a title are in the user's "
            "train interactions or the request's history",
            422,
        )
    cand_scores = scores[candidates]
    finite_or_error(cand_scores.tolist())  # a broken backbone is a server fault, never a ranking
    order = np.lexsort((candidates, -cand_scores))[:k_retrieve]
    return Retrieval(
        item_ids=[int(i) for i in candidates[order]],
        cf_scores=[float(s) for s in cand_scores[order]],
        fallback=fallback,
        seconds=time.perf_counter() - t0,
    )


class CatalogueRetriever:
    """Retrieval for one scorer replica or job actor: the dataset's `CatalogueIndex`, built on first use
    (again only if the scorer's dataset changes), and the scorer's CF backbone asked at each call."""

    def __init__(self, endpoint: str | None = None) -> None:
        self.endpoint = endpoint
        self._lock = threading.Lock()
        self._index: CatalogueIndex | None = None
        self._key: tuple | None = None

    def index(self, scorer: Any) -> CatalogueIndex:
        key = (getattr(scorer, "data_uri", None), getattr(scorer, "dataset_hash", None))
        if key[0] is None:
            raise CoraError("the scorer does not name its dataset (data_uri): the catalogue cannot be read")
        with self._lock:
            if self._index is None or self._key != key:
                self._index = CatalogueIndex.from_dataset(key[0], scorer.titles, self.endpoint)
                self._key = key
            return self._index

    def retrieve(self, scorer: Any, query: CatalogueQuery) -> Retrieval:
        cf = getattr(scorer, "cf", None)
        if cf is None:
            raise RequestError(no_backbone_message(scorer), 422)
        return retrieve_items(
            cf, self.index(scorer), query.user_id, query.history, query.k_retrieve, query.exclude
        )

    def answer(self, scorer: Any, query: CatalogueQuery) -> Retrieval:
        """`retrieve` for a Serve replica: a refused query comes back as `Retrieval.error` (a 4xx)."""
        try:
            return self.retrieve(scorer, query)
        except RequestError as exc:
            return Retrieval(item_ids=[], cf_scores=[], error=str(exc), status=exc.status)


# ---------------------------------------------------------------------------------------------------------
# re-ranking
# ---------------------------------------------------------------------------------------------------------


def rerank(retrieval: Retrieval, scores: Sequence[float], k: int) -> list[Recommendation]:
    """The k retrieved items with the highest LLM scores, highest first (ties: the better CF rank)."""
    if len(scores) != len(retrieval.item_ids):
        raise CoraError(f"{len(scores)} LLM scores for {len(retrieval.item_ids)} retrieved items")
    order = sorted(range(len(scores)), key=lambda j: (-scores[j], j))[: max(0, k)]
    return [
        Recommendation(
            item_id=retrieval.item_ids[j],
            rank=r + 1,
            score=float(scores[j]),
            cf_rank=j + 1,
            cf_score=retrieval.cf_scores[j],
        )
        for r, j in enumerate(order)
    ]


@dataclass
class CatalogueResult:
    items: list[Recommendation]
    retrieval: Retrieval
    cold_start: bool
    model: str
    retrieval_s: float
    rerank_s: float


def recommend_one(
    engine: Any, retriever: CatalogueRetriever, job: ScoreJob, k_retrieve: int, k: int
) -> CatalogueResult:
    """One user's catalogue recommendation in this process: retrieval, then the K rows through
    `engine.score_jobs` (cold start, G and batching as in serving), then the top k. `job` carries the
    user and history (its item_ids are ignored)."""
    check_k(k, k_retrieve)
    t0 = time.perf_counter()
    query = CatalogueQuery(job.user_key, job.user_id, list(job.history), k_retrieve)
    retrieval = retriever.retrieve(engine.adapter.scorer, query)
    t1 = time.perf_counter()
    (result,) = engine.score_jobs([ScoreJob(job.user_key, job.user_id, retrieval.item_ids, job.history)])
    finite_or_error(result.scores)
    t2 = time.perf_counter()
    return CatalogueResult(
        items=rerank(retrieval, result.scores, k),
        retrieval=retrieval,
        cold_start=result.cold_start,
        model=result.model,
        retrieval_s=t1 - t0,
        rerank_s=t2 - t1,
    )
