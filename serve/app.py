"""The Ray Serve application: an HTTP ingress (FastAPI) in front of batching CoRA scorer replicas.

    serve run serve.local.config             # CPU, one replica, 127.0.0.1:8000, the demo checkpoint
    serve run serve.config                   # GPU replicas, autoscaling (edit the s3:// URIs first)
    serve run serve.app:build_app checkpoint_uri=artifacts/demo/checkpoint   # no config file

Two deployments, wiring only (the rules live in cora_ray.infer.service, the model in cora_ray.infer):
- `CoRAIngress` validates requests (pydantic models, size limits), maps raw ids to int ids and histories
  (`Catalog`), and calls the scorer; OpenAPI docs at /docs.
- `CoRAScorer` holds a `ScoringEngine` (Scorer + G cache). A `RowBatcher` gathers jobs of different
  users into one batch of at most `max_batch_rows` rows, cut when the previous batch has finished; the
  engine splits candidate lists into rows and runs one forward per chunk.
  Its `user_config` (ScorerOptions) is the one place that names the checkpoint (`checkpoint_uri`) and sets
  batch size / wait / rows per forward / cache budget / the admission bound; a new `checkpoint_uri` is a
  reload in place (trainable tensors only, cora_ray/infer/reload.py), no restart.
  Calls are routed per user (serve/routing.py) so a user's G stays hot on one replica.

Admission is counted in rows (cora_ray/infer/admission.py): a replica accepts at most
`max_queued_rows` rows not yet answered; past it the request gets 503 with `Retry-After` at once. The
replica reports its queued rows to the autoscaler (`record_autoscaling_stats`), which scales on them
(serve/autoscaling.py). Health: `/healthz` answers 200 with `"status": "degraded"` and the error when
the last reload failed (the replica still serves its previous checkpoint, named in `/v1/model`).
"""

# No `from __future__ import annotations`: FastAPI must see the request models as classes, not strings,
# on the methods that serve.ingress wraps.

import asyncio
import dataclasses
import functools
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import ray
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from ray import serve
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException as StarletteHTTPException

from cora_ray import storage
from cora_ray.config import from_dict
from cora_ray.errors import ConfigError, CoraError
from cora_ray.infer.admission import Overloaded, RowAdmission
from cora_ray.infer.catalogue import CatalogueQuery, CatalogueRetriever, Retrieval, check_k, rerank
from cora_ray.infer.row_batcher import RowBatcher
from cora_ray.infer.service import (
    Catalog,
    CatalogueTiming,
    RankedItem,
    RecommendRequest,
    RecommendResponse,
    RequestError,
    RequestLimits,
    ScoreJob,
    ScoreRequest,
    ScoreResponse,
    ScoreResult,
    ScorerOptions,
    ScoringEngine,
    finite_or_error,
    resolve_catalogue_user,
    top_k,
)

logger = logging.getLogger("ray.serve")

# ---------------------------------------------------------------------------------------------------------
# application arguments (the `args:` of a Serve config, or key=value pairs after `serve run serve.app:build_app`)
# ---------------------------------------------------------------------------------------------------------


@dataclass
class AppArgs:
    """What `build_app` takes. URIs are local paths or s3:// prefixes.

    `checkpoint_uri` is for `serve run serve.app:build_app checkpoint_uri=…` (no config file), where it
    becomes the scorer's user_config.checkpoint_uri. A config file names the checkpoint in CoRAScorer's
    `user_config` only (what a reload changes) and sets `data_uri` here."""

    checkpoint_uri: str | None = None
    data_uri: str | None = None  # the protocol dataset; default: the one recorded in args.checkpoint_uri
    s3_endpoint: str | None = None  # else AWS_ENDPOINT_URL
    device: str = "auto"  # auto: cuda when the replica has a GPU, else cpu
    dtype: str | None = None  # None: the scorer's default (fp32 on CPU, bf16 on GPU)
    route_by_user: bool = True  # user-affinity routing (serve/routing.py); false: Serve's default router
    trust_remote_code: bool = False  # consent to a checkpoint asking for it (cora_ray/infer/remote_code.py)
    scorer: ScorerOptions = field(default_factory=ScorerOptions)
    limits: RequestLimits = field(default_factory=RequestLimits)


def _absolute(uri: str | None) -> str | None:
    """Local paths become absolute where the app is built: replicas run with another working directory."""
    if uri is None or "://" in uri:
        return uri
    return str(Path(uri).expanduser().absolute())


def resolve_data_uri(checkpoint_uri: str, data_uri: str | None, endpoint: str | None = None) -> str:
    """The data URI given, else the one the checkpoint was trained on (its config's data.uri)."""
    if data_uri:
        return data_uri
    from cora_ray.checkpoint import read_checkpoint_manifest  # imports torch: only when needed

    manifest = read_checkpoint_manifest(checkpoint_uri, endpoint)
    uri = ((manifest.get("config") or {}).get("data") or {}).get("uri")
    if not uri:
        raise ConfigError(
            f"checkpoint {checkpoint_uri} records no data.uri; pass data_uri to the application"
        )
    return uri


def load_scorer(
    checkpoint_uri: str,
    data_uri: str,
    device: str,
    dtype: str | None,
    endpoint: str | None = None,
    trust_remote_code: bool = False,
) -> Any:
    """The cora_ray.infer Scorer for a checkpoint (hashes checked against the data and the base LLM)."""
    import torch

    from cora_ray.infer.scorer import Scorer

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if endpoint:  # also for what the checkpoint names (CF artifact, an s3:// base LLM)
        os.environ.setdefault("AWS_ENDPOINT_URL", endpoint)
    return Scorer.from_checkpoint(
        checkpoint_uri,
        data_uri=data_uri,
        device=device,
        dtype=dtype,
        endpoint=endpoint,
        trust_remote_code=trust_remote_code,
    )


# ---------------------------------------------------------------------------------------------------------
# scorer deployment
# ---------------------------------------------------------------------------------------------------------


def device_memory_bytes(scorer: Any) -> tuple[int, str]:
    """(bytes, what): CUDA memory allocated by this process on a GPU replica, else the bytes of the model's
    tensors (parameters + buffers) on a CPU replica."""
    import torch

    device = getattr(scorer, "device", None)
    if device is not None and getattr(device, "type", "cpu") == "cuda" and torch.cuda.is_available():
        return int(torch.cuda.memory_allocated(device)), "cuda_allocated"
    model = scorer.model
    seen: set[int] = set()
    total = 0
    for t in [*model.parameters(), *model.buffers()]:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in seen:
            seen.add(ptr)
            total += t.untyped_storage().nbytes()
    return total, "model_tensor_bytes"


class _ReplicaMetrics:
    """The replica's Prometheus metrics (ray_cora_*), tagged by replica: G cache counters, scored rows,
    rows/s, forward-chunk latency (histogram), queued rows, refused rows, device memory."""

    def __init__(self) -> None:
        from ray.util import metrics

        from cora_ray.infer.admission import FORWARD_LATENCY_BOUNDS_S

        ctx = serve.get_replica_context()
        self.tags = {"replica": ctx.replica_id.unique_id if ctx else "local"}
        keys = ("replica",)
        self.hits = metrics.Counter("cora_g_cache_hits", "G cache hits", tag_keys=keys)
        self.misses = metrics.Counter("cora_g_cache_misses", "G cache misses (generator runs)", tag_keys=keys)
        self.evictions = metrics.Counter("cora_g_cache_evictions", "G cache LRU evictions", tag_keys=keys)
        self.bytes = metrics.Gauge("cora_g_cache_bytes", "G cache payload bytes", tag_keys=keys)
        self.entries = metrics.Gauge("cora_g_cache_entries", "G cache (user, item) entries", tag_keys=keys)
        # the per-user prefix cache (checkpoints whose delta_scope shares the prompt prefix)
        self.prefix_hits = metrics.Counter("cora_prefix_cache_hits", "prefix cache hits", tag_keys=keys)
        self.prefix_misses = metrics.Counter(
            "cora_prefix_cache_misses", "prefix cache misses (prefix passes)", tag_keys=keys
        )
        self.prefix_evictions = metrics.Counter(
            "cora_prefix_cache_evictions", "prefix cache LRU evictions", tag_keys=keys
        )
        self.prefix_bytes = metrics.Gauge(
            "cora_prefix_cache_bytes", "prefix cache payload bytes", tag_keys=keys
        )
        self.prefix_entries = metrics.Gauge(
            "cora_prefix_cache_users", "prefix cache entries (users)", tag_keys=keys
        )
        self.rows = metrics.Counter("cora_scored_rows", "rows (user, item) scored", tag_keys=keys)
        self.refused = metrics.Counter(
            "cora_refused_rows", "rows refused by admission (503, max_queued_rows)", tag_keys=keys
        )
        self.queued = metrics.Gauge("cora_queued_rows", "rows accepted and not yet answered", tag_keys=keys)
        self.rate = metrics.Gauge("cora_rows_per_s", "rows per busy second of forward passes", tag_keys=keys)
        self.memory = metrics.Gauge(
            "cora_device_memory_bytes",
            "CUDA allocated bytes (GPU) or model tensor bytes (CPU)",
            tag_keys=keys,
        )
        self.forward = metrics.Histogram(
            "cora_forward_latency_s",
            "seconds per forward chunk (max_rows_per_forward rows)",
            boundaries=list(FORWARD_LATENCY_BOUNDS_S),
            tag_keys=keys,
        )
        self._last = {
            "hits": 0,
            "misses": 0,
            "evictions": 0,
            "rows": 0,
            "refused": 0,
            "prefix_hits": 0,
            "prefix_misses": 0,
            "prefix_evictions": 0,
        }

    def observe_forward(self, seconds: float) -> None:
        self.forward.observe(seconds, tags=self.tags)

    def export(self, engine: ScoringEngine, admission: RowAdmission) -> None:
        s, p = engine.cache.stats(), engine.prefix_cache.stats()
        now = {
            "hits": s.hits,
            "misses": s.misses,
            "evictions": s.evictions,
            "rows": engine.rows_scored,
            "refused": admission.refused_rows,
            "prefix_hits": p.hits,
            "prefix_misses": p.misses,
            "prefix_evictions": p.evictions,
        }
        for name, value in now.items():
            delta = value - self._last[name]
            if delta > 0:
                getattr(self, name).inc(delta, tags=self.tags)
        self._last = now
        self.bytes.set(s.bytes, tags=self.tags)
        self.entries.set(s.entries, tags=self.tags)
        self.prefix_bytes.set(p.bytes, tags=self.tags)
        self.prefix_entries.set(p.entries, tags=self.tags)
        self.queued.set(admission.queued_rows, tags=self.tags)
        if admission.rows_per_s:
            self.rate.set(admission.rows_per_s, tags=self.tags)

    def export_memory(self, engine: ScoringEngine) -> None:
        self.memory.set(device_memory_bytes(engine.adapter.scorer)[0], tags=self.tags)


def _rows_of_job(job: ScoreJob) -> int:
    """A job's size in rows (its candidate items); a batch holds at most max_batch_rows of them."""
    return len(job.item_ids)


def _rows_of(jobs: list[ScoreJob]) -> int:
    return sum(_rows_of_job(j) for j in jobs)


@serve.deployment(
    name="CoRAScorer", max_ongoing_requests=64, health_check_period_s=10, health_check_timeout_s=30
)
class CoRAScorer:
    """One replica: a Scorer for the checkpoint its user_config names, the G cache, dynamic batching
    across users, admission in rows."""

    def __init__(
        self,
        data_uri: str,
        device: str,
        dtype: str | None,
        endpoint: str | None,
        base_dir: str,
        trust_remote_code: bool = False,
    ) -> None:
        self._base_dir = base_dir  # relative checkpoint URIs in user_config: against where the app was built
        self._load = functools.partial(
            load_scorer,
            data_uri=data_uri,
            device=device,
            dtype=dtype,
            endpoint=endpoint,
            trust_remote_code=trust_remote_code,  # the operator's consent, from the app args
        )
        self._endpoint = endpoint
        self.engine: ScoringEngine | None = None
        self._checkpoint_uri: str | None = None
        self._reload_lock = asyncio.Lock()
        self._reload_error: str | None = None
        self._metrics = _ReplicaMetrics()
        self.admission = RowAdmission(ScorerOptions().max_queued_rows)
        # batches in rows, each cut when the previous one has finished (cora_ray/infer/row_batcher.py)
        defaults = ScorerOptions()
        self._batcher = RowBatcher(
            self._run_batch, _rows_of_job, defaults.max_batch_rows, defaults.batch_wait_timeout_s
        )
        self._retriever = CatalogueRetriever(endpoint)  # the dataset's seen items: built once, on first use

    def _options(self, user_config: dict, defaults: ScorerOptions | None) -> ScorerOptions:
        options = ScorerOptions.from_user_config(user_config, defaults)
        uri = options.checkpoint_uri
        if uri and "://" not in uri and not Path(uri).expanduser().is_absolute():
            options = dataclasses.replace(options, checkpoint_uri=str(Path(self._base_dir) / uri))
        return options

    def _on_forward(self, rows: int, seconds: float) -> None:
        self.admission.observe(rows, seconds)
        self._metrics.observe_forward(seconds)

    def _apply(self, options: ScorerOptions) -> None:
        assert self.engine is not None
        self.engine.set_options(options)
        self.admission.resize(options.max_queued_rows)
        self._batcher.configure(options.max_batch_rows, options.batch_wait_timeout_s)

    async def reconfigure(self, user_config: dict) -> None:
        """The user_config (ScorerOptions): the first call loads its checkpoint; later ones apply options in
        place, and a new checkpoint_uri is reloaded in place (trainable tensors only; another base LLM is
        refused).

        A first load that fails raises: the replica does not start, and `serve status` shows why. A reload
        that fails (wrong URI, another base LLM, hash mismatch, bad option) keeps the replica serving what
        it serves — raising would make Serve replace the replica, which fails the same way — and is
        visible: `/healthz` says "degraded" and `/v1/model` names the error (`reload_error`) until a reload
        succeeds."""
        if self.engine is None:
            options = self._options(user_config, None)
            if not options.checkpoint_uri:
                raise ConfigError(
                    "CoRAScorer.user_config.checkpoint_uri is not set: name the checkpoint to serve there"
                )
            scorer = await asyncio.to_thread(self._load, options.checkpoint_uri)
            self.engine = ScoringEngine(scorer, options, on_forward=self._on_forward)
            self._checkpoint_uri = options.checkpoint_uri
            self._apply(options)
            self._metrics.export_memory(self.engine)
            logger.info("CoRAScorer ready: %s", self.engine.adapter.model_id)
            return
        try:
            options = self._options(user_config, self.engine.options)
        except ConfigError as exc:
            self._reload_error = f"user_config refused, options unchanged: {exc}"
            logger.error("CoRAScorer: %s", self._reload_error)
            return
        uri = options.checkpoint_uri or self._checkpoint_uri
        async with self._reload_lock:
            if uri != self._checkpoint_uri:
                logger.info(
                    "CoRAScorer: reloading %s in place (serving %s meanwhile)", uri, self._checkpoint_uri
                )
                try:
                    await asyncio.to_thread(self.engine.reload, uri, self._endpoint)
                except Exception as exc:  # shown in /healthz and /v1/model; the loaded model keeps serving
                    self._reload_error = (
                        f"checkpoint {uri} was not loaded ({type(exc).__name__}: {exc}); "
                        f"still serving {self._checkpoint_uri}"
                    )
                    logger.exception("CoRAScorer: %s", self._reload_error)
                    options = dataclasses.replace(options, checkpoint_uri=self._checkpoint_uri)
                else:
                    self._checkpoint_uri = uri
                    self._reload_error = None
                    logger.info("CoRAScorer: now serving %s", self.engine.adapter.model_id)
            else:
                self._reload_error = None
            self._apply(options)
            self._metrics.export_memory(self.engine)

    async def score(self, job: ScoreJob) -> ScoreResult:
        rows = len(job.item_ids)
        if rows > self.engine.options.max_batch_rows:  # Serve's batcher would fail it: say why
            raise RequestError(
                f"the request has {rows} rows; a scorer batch holds at most {self.engine.options.max_batch_rows} "
                "(user_config.max_batch_rows): the application's limits.max_items must not exceed it",
                422,
            )
        self.admission.admit(rows)  # Overloaded (→ 503 + Retry-After) before any waiting
        try:
            return await self._batcher.submit(job)
        finally:
            self.admission.release(rows)

    async def _run_batch(self, jobs: list[ScoreJob]) -> list[ScoreResult]:
        # the forward passes run off the event loop so health checks and new requests are not blocked
        self.admission.batch_begin(_rows_of(jobs))
        try:
            results = await asyncio.to_thread(self.engine.score_jobs, jobs)
        finally:
            self.admission.batch_end()
        self._metrics.export(self.engine, self.admission)
        return results

    async def retrieve(self, query: CatalogueQuery) -> Retrieval:
        """CF retrieval for a /v1/recommend without candidates (cora_ray/infer/catalogue.py), off the event
        loop; a refused query (no CF backbone, nothing left to recommend) comes back in `Retrieval.error`.
        Not counted in rows: it is one CF pass, no LLM row; the re-ranking is an ordinary `score` call."""
        return await asyncio.to_thread(self._retriever.answer, self.engine.adapter.scorer, query)

    def record_autoscaling_stats(self) -> dict[str, float]:
        """Custom autoscaling metric: rows accepted and not yet answered (serve/autoscaling.py)."""
        return {"queued_rows": float(self.admission.queued_rows)}

    def describe(self) -> dict:
        import torch

        ctx = serve.get_replica_context()
        memory, memory_what = device_memory_bytes(self.engine.adapter.scorer)
        return {
            **self.engine.describe(),
            "replica": ctx.replica_id.unique_id if ctx else None,
            "replica_actor": ray.get_runtime_context().get_actor_name(),
            "reload_error": self._reload_error,
            "serving": {
                **self.admission.snapshot(),
                "torch_threads": torch.get_num_threads(),
                "malloc_arena_max": os.environ.get("MALLOC_ARENA_MAX"),  # serve.local.config sets it (CPU)
                "device_memory_bytes": memory,
                "device_memory": memory_what,
            },
        }

    def health(self) -> dict:
        """What /healthz reports: "ok", or "degraded" with the error of the last failed reload."""
        return {
            "status": "degraded" if self._reload_error else "ok",
            "reload_error": self._reload_error,
            "queued_rows": self.admission.queued_rows,
        }

    def check_health(self) -> None:
        if self.engine is None:
            raise RuntimeError("CoRAScorer has no model loaded")
        broken = getattr(self.engine.adapter.scorer, "reload_broken", None)
        if broken:  # a reload failed half way through copying: this replica's weights are mixed
            raise RuntimeError(broken)


# ---------------------------------------------------------------------------------------------------------
# HTTP ingress
# ---------------------------------------------------------------------------------------------------------

api = FastAPI(
    title="cora_ray",
    summary="CoRA (collaborative LoRA) LLM recommender: score items for a user, or rank candidates",
    version="0.1.0",
    docs_url="/docs",
)
api.state.max_body_bytes = RequestLimits().max_body_bytes


class _BodyTooLarge(StarletteHTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body larger than the limit of {limit} bytes")


class BodyLimit:
    """ASGI middleware: refuse request bodies above `api.state.max_body_bytes` with 413, before parsing.

    A declared Content-Length is checked up front; a chunked body is counted as it streams in and the
    read stops at the limit (FastAPI passes the HTTPException raised from `receive` through)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = api.state.max_body_bytes
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            too_big = _BodyTooLarge(limit)
            await JSONResponse({"detail": too_big.detail}, status_code=413)(scope, receive, send)
            return
        received = 0

        async def limited_receive() -> dict:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _BodyTooLarge(limit)
            return message

        await self.app(scope, limited_receive, send)


api.add_middleware(BodyLimit)


@api.exception_handler(RequestError)
async def _request_error(_: Request, exc: RequestError) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=exc.status)


@api.exception_handler(RequestValidationError)
async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    # the default handler echoes the input back; keep the answer small and say what is wrong and where
    errors = [
        {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
        for e in exc.errors()[:20]
    ]
    summary = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors[:5])
    return JSONResponse({"detail": f"invalid request: {summary}", "errors": errors}, status_code=422)


@api.exception_handler(StarletteHTTPException)
async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
    return JSONResponse(
        {"detail": exc.detail}, status_code=exc.status_code, headers=getattr(exc, "headers", None)
    )


class Refused(RequestError):
    """503 with Retry-After: the scorers have no room for the request's rows now."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message, 503)
        self.retry_after_s = max(1, int(retry_after_s))


@api.exception_handler(Refused)
async def _refused(_: Request, exc: Refused) -> JSONResponse:
    return JSONResponse(
        {"detail": str(exc), "retry_after_s": exc.retry_after_s},
        status_code=503,
        headers={"Retry-After": str(exc.retry_after_s)},
    )


# a replica that died or is unreachable: the retry goes to another one (or the replacement)
_RETRYABLE = (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError)


@serve.deployment(name="CoRAIngress", max_ongoing_requests=256)
@serve.ingress(api)
class CoRAIngress:
    """HTTP API: validation, id mapping and histories here; scoring on CoRAScorer replicas."""

    def __init__(self, scorer: DeploymentHandle, data_uri: str, endpoint: str | None, limits: dict) -> None:
        self.scorer = scorer
        self.limits = from_dict(RequestLimits, limits, source="limits")
        api.state.max_body_bytes = self.limits.max_body_bytes
        self.data_uri = data_uri
        self.catalog = Catalog.from_dataset(data_uri, endpoint)

    async def _on_replica(self, call: Callable[[], Any]) -> Any:
        """`call()` (a scorer handle's `.remote(...)`), retried on another replica when one dies.

        A replica that dies mid-request (node loss, OOM) fails only the calls it held; Serve is already
        starting its replacement, and the router sends the retry to a live replica. Full queues are a
        Refused (503 + Retry-After) at once."""
        for attempt in range(3):
            try:
                return await call()
            except BackPressureError as exc:  # every replica's queue is full (max_queued_requests)
                raise Refused("the scorers are at capacity; retry shortly", 1) from exc
            except Overloaded as exc:  # the replica's row bound (Ray re-raises the replica's error type)
                raise Refused(str(exc), exc.retry_after_s) from exc
            except _RETRYABLE as exc:
                if attempt == 2:
                    raise RequestError(
                        f"no scorer replica could take the request ({type(exc).__name__}); retry", 503
                    ) from exc
                await asyncio.sleep(0.2 * (attempt + 1))
        raise AssertionError("unreachable")

    async def _score(self, job: ScoreJob) -> ScoreResult:
        result: ScoreResult = await self._on_replica(lambda: self.scorer.score.remote(job))
        finite_or_error(result.scores)
        return result

    @api.post("/v1/score", response_model=ScoreResponse, summary="Score items for a user")
    async def score(self, req: ScoreRequest) -> ScoreResponse:
        """The "Yes" logit of each item for the user, in the order given. Ids are the dataset's raw ids."""
        job = self.catalog.resolve(req.user_id, req.item_ids, req.history, self.limits, what="item_ids")
        result = await self._score(job)
        return ScoreResponse(scores=result.scores, model=result.model, cold_start=result.cold_start)

    @api.post(
        "/v1/recommend",
        response_model=RecommendResponse,
        response_model_exclude_none=True,
        summary="Top k of the candidates, or of the whole catalogue, for a user",
    )
    async def recommend(self, req: RecommendRequest) -> RecommendResponse:
        """Score every candidate and return the k best, highest first (k above the candidates: all).
        Without candidates: the CF backbone retrieves limits.catalogue_k unseen items, the LLM re-ranks them."""
        if req.candidates is None:
            return await self._recommend_catalogue(req)
        raw = [c if isinstance(c, str) else str(c) for c in req.candidates]
        dupes = sorted({c for c in raw if raw.count(c) > 1}) if len(set(raw)) != len(raw) else []
        if dupes:
            raise RequestError(
                f"candidates must be distinct; repeated: {', '.join(map(repr, dupes[:10]))}", 422
            )
        if req.k > self.limits.max_items:
            raise RequestError(f"k={req.k} is above the limit of {self.limits.max_items}", 422)
        job = self.catalog.resolve(req.user_id, req.candidates, req.history, self.limits, what="candidates")
        result = await self._score(job)
        ranked = top_k(raw, result.scores, req.k)
        items = [
            RankedItem(item_id=r, score=s, title=self.catalog.title(self.catalog.item_ids[r]))
            for r, s in ranked
        ]
        return RecommendResponse(items=items, model=result.model, cold_start=result.cold_start)

    async def _retrieve(self, query: CatalogueQuery) -> Retrieval:
        """The scorer replica's CF retrieval (routed by user like `score`), retried like `_score`."""
        retrieval: Retrieval = await self._on_replica(lambda: self.scorer.retrieve.remote(query))
        retrieval.raise_error()
        return retrieval

    async def _recommend_catalogue(self, req: RecommendRequest) -> RecommendResponse:
        """Catalogue-wide: retrieval on a scorer replica, then the retrieved items scored as a request with
        those candidates (admission, batching, cold start as always), then the top k by LLM score."""
        big_k = self.limits.catalogue_k
        check_k(req.k, big_k)
        job = resolve_catalogue_user(self.catalog, req.user_id, req.history, self.limits)
        exclude = list(job.history) if req.history is not None else []
        t0 = time.perf_counter()
        retrieval = await self._retrieve(
            CatalogueQuery(job.user_key, job.user_id, list(job.history), big_k, exclude)
        )
        t1 = time.perf_counter()
        result = await self._score(dataclasses.replace(job, item_ids=retrieval.item_ids))
        t2 = time.perf_counter()
        items = [
            RankedItem(
                item_id=self.catalog.item_raw[r.item_id],
                score=r.score,
                title=self.catalog.title(r.item_id),
                cf_rank=r.cf_rank,
                cf_score=r.cf_score,
            )
            for r in rerank(retrieval, result.scores, req.k)
        ]
        return RecommendResponse(
            items=items,
            model=result.model,
            cold_start=result.cold_start,
            source="catalogue",
            fallback=retrieval.fallback,
            retrieved=len(retrieval.item_ids),
            timing=CatalogueTiming(retrieval_s=t1 - t0, rerank_s=t2 - t1),
        )

    @api.get("/healthz", summary="Liveness; 'degraded' (still 200) when a scorer's last reload failed")
    async def healthz(self) -> dict:
        """200 while the ingress answers. `status` is "ok", or "degraded" with `reload_error` when the
        scorer replica asked failed its last reload (it keeps serving its previous checkpoint). A scorer
        that does not answer within 2 s (busy) is reported as `scorer: "busy"`, status still "ok"."""
        out: dict[str, Any] = {
            "status": "ok",
            "users": len(self.catalog.user_ids),
            "items": len(self.catalog.item_ids),
        }
        try:
            scorer = await asyncio.wait_for(self.scorer.health.remote(), timeout=2.0)
        except (TimeoutError, BackPressureError):
            out["scorer"] = "busy"
            return out
        out["status"] = scorer["status"]
        out["scorer"] = "ok" if scorer["status"] == "ok" else "degraded"
        if scorer["reload_error"]:
            out["reload_error"] = scorer["reload_error"]
        return out

    @api.get("/v1/model", summary="The checkpoint served, its base LLM, CF backbone, metrics and cache stats")
    async def model(self) -> dict:
        info = await self.scorer.describe.remote()
        return {
            **info,
            "data": self.data_uri,
            "dataset_hash": self.catalog.dataset_hash,
            "limits": asdict(self.limits),
        }


# ---------------------------------------------------------------------------------------------------------
# the builder
# ---------------------------------------------------------------------------------------------------------


def build_app(args: dict[str, Any] | None = None) -> serve.Application:
    """The application for `serve run` / `serve deploy`; `args` follow AppArgs (nested scorer / limits).

    The checkpoint is named once: CoRAScorer's user_config.checkpoint_uri in a config file, or
    args.checkpoint_uri without one (it becomes that user_config entry). Both at once is an error."""
    parsed = from_dict(AppArgs, dict(args or {}), source="application args")
    options = parsed.scorer
    if parsed.checkpoint_uri and options.checkpoint_uri:
        raise ConfigError(
            "checkpoint_uri is given twice (args.checkpoint_uri and args.scorer.checkpoint_uri): name it once"
        )
    checkpoint_uri = _absolute(parsed.checkpoint_uri or options.checkpoint_uri)
    if checkpoint_uri and not storage.exists(
        storage.join(checkpoint_uri, storage.MANIFEST), parsed.s3_endpoint
    ):
        raise ConfigError(
            f"no checkpoint at {checkpoint_uri} (no {storage.MANIFEST}): train one first (`make demo` writes "
            "artifacts/demo/checkpoint; jobs/train.py prints its best checkpoint) or set checkpoint_uri"
        )
    if checkpoint_uri:
        data_uri = _absolute(resolve_data_uri(checkpoint_uri, parsed.data_uri, parsed.s3_endpoint))
    elif parsed.data_uri:
        data_uri = _absolute(parsed.data_uri)
    else:
        raise ConfigError(
            "application args: set data_uri (the protocol dataset) when the checkpoint is named in "
            "CoRAScorer's user_config.checkpoint_uri, or pass checkpoint_uri to build_app"
        )
    user_config = {k: v for k, v in asdict(options).items() if v is not None}
    if checkpoint_uri:
        user_config["checkpoint_uri"] = checkpoint_uri

    scorer_opts: dict[str, Any] = {
        "user_config": user_config,
        "max_ongoing_requests": options.max_queued_rows,  # each request has >= 1 row
    }
    if parsed.route_by_user:
        from ray.serve.config import RequestRouterConfig

        from serve.routing import UserAffinityRouter

        scorer_opts["request_router_config"] = RequestRouterConfig(request_router_class=UserAffinityRouter)
    scorer = CoRAScorer.options(**scorer_opts).bind(
        data_uri, parsed.device, parsed.dtype, parsed.s3_endpoint, str(Path.cwd()), parsed.trust_remote_code
    )
    return CoRAIngress.bind(scorer, data_uri, parsed.s3_endpoint, asdict(parsed.limits))


__all__ = ["AppArgs", "CoRAIngress", "CoRAScorer", "CoraError", "Refused", "api", "build_app"]
