"""The batched scorer: (user, item, history) rows → the model's answer logit. Evaluation AND serving use it.

    scorer = Scorer.from_checkpoint("runs/demo/checkpoint_000003", data_uri="artifacts/ml-1m")
    scores = scorer.score(user_ids, item_ids, histories)          # np.ndarray (n,), float32 logits

One code path, two entry points:

- `score(user_ids, item_ids, histories)` takes raw rows (int ids, histories oldest first), sorts them by
  prompt length (length bucketing: rows of similar length share a batch, so little padding), encodes each
  batch of `batch_size` rows and calls `score_encoded`. The result is in the caller's row order.
- `score_encoded(batch, G=None)` takes a batch already encoded by `encode` (left-padded token ids, history
  tensor, ids) and runs one forward pass under `torch.inference_mode`.

Serving supplies collaborative weights itself (the per-user G cache, cold-start zero deltas): `compute_G`
returns G (B, d_model, r) for rows, and `score(..., G=G)` takes them aligned with the rows given (the
bucketing permutes them along with the rows); `g_provider=` is called per batch instead when G should be
produced lazily. For a method without collaborative weights (TALLRec, CoLLM, zero-shot) G is refused.

Loading checks the checkpoint against what it is used with: the dataset manifest hash, the CF artifact
and the base LLM's weight hash; a mismatch is an `ArtifactMismatchError` that names both hashes.

No Ray here: a GPU script uses this module alone.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from cora_ray import storage
from cora_ray.checkpoint import (
    check_compatible,
    checkpoint_hash,
    load_trainable,
    read_checkpoint_manifest,
)
from cora_ray.config import ExperimentConfig, from_dict
from cora_ray.data import protocol
from cora_ray.data.batching import (
    fixed_chunks,
    length_chunks,
    length_order,
    model_batch,
    pad_histories,
    prompt_lengths,
    title_char_costs,
)
from cora_ray.errors import ArtifactMismatchError, DataError, ModelError
from cora_ray.infer.prefix_cache import PrefixCache, prefix_key
from cora_ray.infer.remote_code import require_consent

if TYPE_CHECKING:  # imported lazily at run time: cora_ray.llm / model / cf pull in transformers
    from cora_ray.cf.base import CFBackbone
    from cora_ray.llm.loaded import LoadedLLM
    from cora_ray.model.base import RecModel
    from cora_ray.model.prefix import PrefixState, SplitRows

# A provider of collaborative weights for one batch: (user_ids, item_ids, history) tensors → (B, d_model, r).
GProvider = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

DEFAULT_BATCH_SIZE = {"cpu": 16, "cuda": 64}


# ---------------------------------------------------------------------------------------------------------
# row normalisation (shared with the CF scorer)
# ---------------------------------------------------------------------------------------------------------


def as_id_array(values: Any, what: str) -> np.ndarray:
    """(n,) int64 ids from a list, numpy array or tensor; refuses non-integer or negative values."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    arr = np.asarray(values)
    if arr.ndim != 1:
        arr = arr.reshape(-1)
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        if (
            np.issubdtype(arr.dtype, np.floating)
            and np.all(np.isfinite(arr))
            and np.all(arr == np.round(arr))
        ):
            arr = arr.astype(np.int64)
        else:
            raise DataError(f"{what}: expected integer ids, got dtype {arr.dtype}")
    arr = np.array(arr, dtype=np.int64)  # a writable copy: torch warns on read-only (arrow) buffers
    if arr.size and arr.min() < 0:
        raise DataError(f"{what}: ids must be >= 0 (0 = padding), got {int(arr.min())}")
    return arr


def as_histories(histories: Any, n: int) -> list[list[int]]:
    """n histories as lists of ints (oldest first). None → all empty; padding zeros are dropped."""
    if histories is None:
        return [[] for _ in range(n)]
    if isinstance(histories, torch.Tensor):
        histories = histories.detach().cpu().numpy()
    if isinstance(histories, np.ndarray) and histories.ndim == 2:
        rows = [[int(x) for x in row if x != 0] for row in histories]
    else:
        rows = []
        for h in histories:
            if h is None:
                rows.append([])
            else:
                rows.append([int(x) for x in np.asarray(h).reshape(-1) if x != 0])
    if len(rows) != n:
        raise DataError(f"histories: {len(rows)} given for {n} rows")
    return rows


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _load_titles(data_uri: str, endpoint: str | None) -> tuple[list[str], str]:
    """Titles by item id and the dataset's manifest hash."""
    manifest = protocol.read_manifest(data_uri, endpoint)
    return protocol.titles_by_id(protocol.read_items(data_uri, endpoint)), manifest["hash"]


@dataclasses.dataclass
class _Rows:
    """Normalised rows of one `score` call: ids (n,), histories (lists and (n, 25) padded), the caller's G."""

    users: np.ndarray
    items: np.ndarray
    hists: list[list[int]]
    G: torch.Tensor | None
    g_provider: GProvider | None
    hist_pad: np.ndarray = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        self.hist_pad = pad_histories(self.hists)


@dataclasses.dataclass
class _Parts:
    """What a Scorer is made of, resolved (and checked) by one of its constructors; `Scorer._assemble`
    builds the Scorer from it. `model` None: built from config + llm + cf, then `trainable` loaded."""

    config: ExperimentConfig
    llm: LoadedLLM
    titles: list[str]
    device: torch.device
    manifest: dict
    cf: CFBackbone | None = None
    model: RecModel | None = None
    trainable: dict[str, torch.Tensor] | None = None
    uri: str | None = None
    dataset_hash: str | None = None
    data_uri: str | None = None


# ---------------------------------------------------------------------------------------------------------
# the scorer
# ---------------------------------------------------------------------------------------------------------


class Scorer:
    """A RecModel + its prompt encoder, scoring rows in length-bucketed batches.

    Attributes: `method` ("cora", "tallrec", "collm", "zero_shot"), `config` (ExperimentConfig),
    `manifest` (the checkpoint's, or {} for a base LLM), `uri` (checkpoint URI or None), `device`,
    `batch_size`, `g_shape` ((d_model, r) for CoRA, else None)."""

    def __init__(
        self,
        model: Any,
        encoder: Any,
        titles: Sequence[str],
        *,
        config: ExperimentConfig,
        device: str | torch.device = "cpu",
        batch_size: int | None = None,
        uri: str | None = None,
        manifest: dict | None = None,
        cf: Any = None,
        llm: Any = None,
        dataset_hash: str | None = None,
        data_uri: str | None = None,
    ) -> None:
        self.model = model
        self.encoder = encoder
        self.titles = list(titles)
        self.config = config
        self.method = config.model.method
        self.device = resolve_device(device)
        self.batch_size = int(batch_size or DEFAULT_BATCH_SIZE.get(self.device.type, 16))
        if self.batch_size <= 0:
            raise ModelError(f"batch_size must be > 0, got {self.batch_size}")
        self.uri = uri
        self.manifest = dict(manifest or {})
        self.cf = cf
        self.llm = llm
        self.dataset_hash = dataset_hash
        self.data_uri = data_uri
        self.max_history = int(config.prompt.max_history)
        self.model.eval()
        self.load_seconds: float | None = None  # set by the constructors: seconds spent loading
        # set by a serving reload that failed half way (cora_ray/infer/reload.py): the replica is unhealthy
        self.reload_broken: str | None = None

    # -- construction ----------------------------------------------------------------------------------
    # Three entry points resolve a `_Parts` (config, LLM, CF backbone, titles, manifest) and share one
    # builder, `_assemble`.

    @classmethod
    def from_checkpoint(
        cls,
        uri: str,
        data_uri: str | None = None,
        device: str | torch.device = "cpu",
        dtype: str | torch.dtype | None = None,
        *,
        cf_uri: str | None = None,
        batch_size: int | None = None,
        endpoint: str | None = None,
        trust_remote_code: bool = False,
    ) -> Scorer:
        """Load a checkpoint written by training (cora_ray.checkpoint) with everything it depends on.

        `data_uri` defaults to the dataset the checkpoint was trained on (its config's `data.uri`); the
        CF artifact to the one its manifest names. Checked, cheapest first: the dataset manifest hash, the
        CF artifact hash, the base LLM's weight hash and answer-token ids. A mismatch is refused naming both
        hashes; nothing is silently reinterpreted. A checkpoint whose config asks for
        `llm.trust_remote_code` is refused unless `trust_remote_code` (the operator's consent) is True."""
        t0 = time.perf_counter()
        manifest = read_checkpoint_manifest(uri, endpoint)
        cfg = from_dict(ExperimentConfig, manifest["config"], source=f"{uri}/manifest.json config")
        require_consent(cfg.llm, trust_remote_code, f"checkpoint {uri}")
        endpoint = endpoint or cfg.data.s3_endpoint
        data_uri = data_uri or cfg.data.uri
        titles, dataset_hash = _load_titles(data_uri, endpoint)
        check_compatible(manifest, uri=uri, dataset_hash=dataset_hash)
        cf = None
        if manifest.get("cf_artifact"):
            cf = _load_cf_for_checkpoint(
                uri, manifest["cf_artifact"], cf_uri, manifest.get("dataset_hash"), endpoint
            )
            check_compatible(manifest, uri=uri, cf_hash=cf.artifact_hash)
        dev = resolve_device(device)
        llm = _load_llm(cfg, dev, dtype)
        check_compatible(manifest, uri=uri, llm_weight_hash=llm.weight_hash)
        _check_answer_tokens(manifest, llm, uri)
        parts = _Parts(
            cfg,
            llm,
            titles,
            dev,
            manifest,
            cf=cf,
            trainable=load_trainable(uri, manifest, endpoint),
            uri=uri,
            dataset_hash=dataset_hash,
            data_uri=data_uri,
        )
        return cls._assemble(parts, batch_size, started=t0)

    @classmethod
    def from_base_llm(
        cls,
        cfg: ExperimentConfig,
        data_uri: str | None = None,
        device: str | torch.device = "cpu",
        dtype: str | torch.dtype | None = None,
        *,
        batch_size: int | None = None,
        endpoint: str | None = None,
        trust_remote_code: bool = False,
    ) -> Scorer:
        """The zero-shot model (docs/method.md §8 "ICL"): the frozen base LLM of `cfg.llm` with `cfg.prompt`, nothing
        trained. `cfg.model.method` is taken as "zero_shot" whatever it says. `llm.trust_remote_code` needs
        the operator's consent (`trust_remote_code=True`), as for a checkpoint."""
        t0 = time.perf_counter()
        require_consent(cfg.llm, trust_remote_code, f"the zero-shot config of {cfg.name}")
        cfg = dataclasses.replace(
            cfg, model=dataclasses.replace(cfg.model, method="zero_shot", cf_artifact=None)
        )
        data_uri = data_uri or cfg.data.uri
        titles, dataset_hash = _load_titles(data_uri, endpoint or cfg.data.s3_endpoint)
        dev = resolve_device(device)
        llm = _load_llm(cfg, dev, dtype)
        manifest = {  # what describe() reports; not a checkpoint manifest (nothing was trained)
            "method": "zero_shot",
            "config": dataclasses.asdict(cfg),
            "base_llm": {"identity": llm.identity, "weight_hash": llm.weight_hash},
            "answer_token_id": llm.answer_token_id,
            "negative_token_id": llm.negative_token_id,
            "cf_artifact": None,
            "dataset_hash": dataset_hash,
        }
        parts = _Parts(cfg, llm, titles, dev, manifest, dataset_hash=dataset_hash, data_uri=data_uri)
        return cls._assemble(parts, batch_size, started=t0)

    @classmethod
    def from_model(
        cls,
        model: Any,
        llm: Any,
        cfg: ExperimentConfig,
        titles: Sequence[str],
        *,
        device: str | torch.device = "cpu",
        batch_size: int | None = None,
        cf: Any = None,
        manifest: dict | None = None,
    ) -> Scorer:
        """Wrap a model already in memory (training's validation, tests) with the same scoring path."""
        parts = _Parts(
            cfg, llm, list(titles), resolve_device(device), dict(manifest or {}), cf=cf, model=model
        )
        return cls._assemble(parts, batch_size)

    @classmethod
    def _assemble(cls, parts: _Parts, batch_size: int | None, started: float | None = None) -> Scorer:
        """The one builder: the model (built and loaded unless given), its prompt encoder, the Scorer.
        `started`: perf_counter() when loading began, for `load_seconds`."""
        model = parts.model
        if model is None:
            model = _build(parts.config, parts.llm, parts.cf, parts.device)
            if parts.trainable is not None:
                model.load_trainable_state_dict(parts.trainable)
                model.to(parts.device)
        scorer = cls(
            model,
            _encoder(parts.llm, parts.config, parts.titles, model),
            parts.titles,
            config=parts.config,
            device=parts.device,
            batch_size=batch_size,
            uri=parts.uri,
            manifest=parts.manifest,
            cf=parts.cf,
            llm=parts.llm,
            dataset_hash=parts.dataset_hash,
            data_uri=parts.data_uri,
        )
        if started is not None:
            scorer.load_seconds = time.perf_counter() - started
        return scorer

    # -- properties ------------------------------------------------------------------------------------

    @property
    def uses_collab_weights(self) -> bool:
        """True when the model takes per-row collaborative weights G (CoRA): the model's own declaration."""
        return bool(self.model.uses_collab_weights)

    @property
    def g_shape(self) -> tuple[int, int] | None:
        """(d_model, r) of one row's G, or None when the method has none."""
        if not self.uses_collab_weights:
            return None
        hidden = getattr(self.llm, "hidden_size", None) or self.model.d_model
        return (int(hidden), int(self.config.model.rank))

    def knows_user(self, user_ids: Any) -> np.ndarray:
        """(B,) bool: the CF backbone has train interactions for the user (all True without a CF model)."""
        users = as_id_array(user_ids, "user_ids")
        if self.cf is None or not hasattr(self.cf, "knows_user"):
            return np.ones(len(users), dtype=bool)
        with torch.inference_mode():
            out = self.cf.knows_user(torch.as_tensor(users, dtype=torch.long, device=self._cf_device()))
        return np.asarray(out.detach().cpu() if isinstance(out, torch.Tensor) else out, dtype=bool).reshape(
            -1
        )

    def _cf_device(self) -> torch.device:
        try:
            return next(self.cf.parameters()).device
        except (StopIteration, AttributeError):
            return torch.device("cpu")

    def describe(self) -> dict:
        """What scored: method, checkpoint (URI and content hash), base LLM, CF artifact, dataset — for
        metrics.json and /v1/model. `checkpoint_hash` (cora_ray/manifest.py) is None without a checkpoint."""
        m = self.manifest
        return {
            "method": self.method,
            "checkpoint": self.uri,
            "checkpoint_hash": checkpoint_hash(m) if self.uri else None,
            "step": m.get("step"),
            "base_llm": m.get("base_llm"),
            "answer_token_id": m.get("answer_token_id"),
            "negative_token_id": m.get("negative_token_id"),
            "cf_artifact": m.get("cf_artifact"),
            "dataset_hash": self.dataset_hash or m.get("dataset_hash"),
            "prompt": {"chat_template": self.config.prompt.chat_template, "max_history": self.max_history},
            "device": str(self.device),
            "batch_size": self.batch_size,
        }

    # -- encoded path ----------------------------------------------------------------------------------

    def encode(self, user_ids: Any, item_ids: Any, histories: Any) -> dict[str, torch.Tensor]:
        """Rows → one model batch: the prompt encoder's tensors (left-padded input_ids, attention_mask;
        user_pos / item_pos for CoLLM) plus `user_id` (B,), `item_id` (B,) and `history` (B, 25) left-padded,
        oldest first. Histories: the user's earlier positive item ids, oldest first."""
        users = as_id_array(user_ids, "user_ids")
        items = as_id_array(item_ids, "item_ids")
        if len(users) != len(items):
            raise DataError(f"user_ids ({len(users)}) and item_ids ({len(items)}) differ in length")
        hists = as_histories(histories, len(items))
        self._check_items(items, hists)
        return self._encode(users, items, hists)

    def _encode(
        self, users: np.ndarray, items: np.ndarray, hists: Sequence[Sequence[int]]
    ) -> dict[str, torch.Tensor]:
        return model_batch(self.encoder, users, items, hists)  # the training path's collate, same ids

    def score_encoded(self, batch: dict[str, torch.Tensor], G: torch.Tensor | None = None) -> np.ndarray:
        """One forward pass over an encoded batch → (B,) float32 logits. `G` (B, d_model, r) overrides the
        generator (CoRA only)."""
        batch = {
            k: (v.to(self.device, non_blocking=True) if isinstance(v, torch.Tensor) else v)
            for k, v in batch.items()
        }
        with torch.inference_mode():
            if G is not None:
                if not self.uses_collab_weights:
                    raise ModelError(
                        f"method {self.method!r} has no collaborative weights: G cannot be supplied"
                    )
                logits = self.model(batch, G=G.to(self.device, dtype=self._g_dtype()))
            else:
                logits = self.model(batch)
        return logits.detach().float().cpu().numpy().reshape(-1)

    def _g_dtype(self) -> torch.dtype:
        dtype = getattr(self.llm, "dtype", None)
        return dtype if isinstance(dtype, torch.dtype) else torch.float32

    def compute_G(
        self, user_ids: Any, item_ids: Any, histories: Any, zero_cold_users: bool | None = None
    ) -> torch.Tensor:
        """(B, d_model, r) collaborative weights of rows, on the model's device (for caching in serving).
        `zero_cold_users` overrides the checkpoint's cold-user rule (None: the checkpoint's)."""
        if not self.uses_collab_weights:
            raise ModelError(f"method {self.method!r} has no collaborative weights (G)")
        users = as_id_array(user_ids, "user_ids")
        items = as_id_array(item_ids, "item_ids")
        hist = torch.from_numpy(pad_histories(as_histories(histories, len(items))))
        with torch.inference_mode():
            return self.model.compute_G(
                torch.as_tensor(users, dtype=torch.long, device=self.device),
                torch.as_tensor(items, dtype=torch.long, device=self.device),
                hist.to(self.device),
                zero_cold_users=zero_cold_users,
            )

    # -- raw rows path ---------------------------------------------------------------------------------

    def row_lengths(self, item_ids: np.ndarray, histories: Sequence[Sequence[int]]) -> np.ndarray:
        """(n,) each row's prompt length estimate: the encoder's per-title token counts of the target and of
        the last `max_history` history items (`batching.prompt_lengths`)."""
        costs = getattr(self.encoder, "title_costs", None)
        if costs is None:  # an encoder without token counts: title characters
            costs = title_char_costs(self.titles)
        return prompt_lengths(costs, item_ids, histories, self.max_history)

    def forward_chunks(
        self, item_ids: np.ndarray, histories: Sequence[Sequence[int]], max_rows: int
    ) -> list[np.ndarray]:
        """Row indices of each forward pass: the rows in length order, cut into chunks of at most `max_rows`
        where the padding saved outweighs a forward's fixed cost (`batching.length_chunks`)."""
        lengths = self.row_lengths(np.asarray(item_ids, dtype=np.int64), histories)
        order = length_order(lengths)
        return [order[a:b] for a, b in length_chunks(lengths[order], max_rows)]

    def score(
        self,
        user_ids: Any,
        item_ids: Any,
        histories: Any = None,
        *,
        G: torch.Tensor | None = None,
        g_provider: GProvider | None = None,
        batch_size: int | None = None,
        progress: Callable[[int], None] | None = None,
        bucket: bool = True,
        share_prefix: bool = True,
        prefix_cache: PrefixCache | None = None,
    ) -> np.ndarray:
        """Score rows → (n,) float32 logits in the given order.

        `G` (n, d_model, r): collaborative weights per row, aligned with the rows (serving's cache and cold
        start). `g_provider(user_ids, item_ids, history)`: called per batch to produce G instead. Neither:
        the model generates G itself. `progress(k)` is called after each batch with its row count.
        `bucket=False` keeps the given order for batching (for measuring what bucketing saves).

        A model whose prompt prefix is per user (`shares_prefix`: a shared delta_scope, TALLRec, zero-shot,
        CoLLM) runs each (user, history) prefix once and only the suffixes per row (`share_prefix=False`:
        every row's full prompt, the reference); `prefix_cache` keeps computed prefixes across calls."""
        users = as_id_array(user_ids, "user_ids")
        items = as_id_array(item_ids, "item_ids")
        n = len(items)
        if len(users) != n:
            raise DataError(f"user_ids ({len(users)}) and item_ids ({n}) differ in length")
        hists = as_histories(histories, n)
        if G is not None and g_provider is not None:
            raise ModelError("give G or g_provider, not both")
        if G is not None and int(G.shape[0]) != n:
            raise DataError(f"G has {int(G.shape[0])} rows for {n} rows")
        if (G is not None or g_provider is not None) and not self.uses_collab_weights:
            raise ModelError(f"method {self.method!r} has no collaborative weights: G cannot be supplied")
        out = np.empty(n, dtype=np.float32)
        if n == 0:
            return out
        self._check_items(items, hists)
        bs = int(batch_size or self.batch_size)
        if self.shares_prefix and share_prefix:
            rows = _Rows(users, items, hists, G, g_provider)
            self._score_shared(rows, out, bs, progress, prefix_cache)
            return out
        if bucket:
            chunks = self.forward_chunks(items, hists, bs)
        else:
            chunks = fixed_chunks(n, bs)
        # a shared-prefix model asked for full prompts (share_prefix=False): each row's whole prompt, masked
        full = self.model.full_prompt_pass() if self.shares_prefix else contextlib.nullcontext()
        with full:
            self._score_batches(users, items, hists, chunks, out, G, g_provider, progress)
        return out

    def _score_batches(
        self,
        users: np.ndarray,
        items: np.ndarray,
        hists: list[list[int]],
        chunks: Sequence[np.ndarray],
        out: np.ndarray,
        G: torch.Tensor | None,
        g_provider: GProvider | None,
        progress: Callable[[int], None] | None,
    ) -> None:
        """One forward pass per chunk of row indices: encode, G from the caller / provider / model, score."""
        for idx in chunks:
            u, i, h = users[idx], items[idx], [hists[j] for j in idx]
            batch = self._encode(u, i, h)
            g = None
            if G is not None:
                g = G[torch.as_tensor(idx, dtype=torch.long, device=G.device)]
            elif g_provider is not None:
                g = g_provider(
                    torch.as_tensor(u, dtype=torch.long),
                    torch.as_tensor(i, dtype=torch.long),
                    torch.from_numpy(pad_histories(h)),
                )
            out[idx] = self.score_encoded(batch, G=g)
            if progress is not None:
                progress(len(idx))

    # -- prefix-shared path (model.delta_scope user_prefix / suffix; TALLRec, zero-shot, CoLLM) -----------

    def _score_shared(
        self,
        rows: _Rows,
        out: np.ndarray,
        bs: int,
        progress: Callable[[int], None] | None,
        cache: PrefixCache | None,
    ) -> None:
        """Rows grouped by their prefix (cora_ray/model/prefix.py): `bs` prefixes per prefix pass, then
        their rows' suffixes in batches of `bs` rows (ordered by suffix length), each against its own
        prefix's keys/values."""
        from cora_ray.model.prefix import left_padded_tensors, split_rows

        tokens = self.encoder.token_rows(rows.hists, rows.items)
        placeholders = {k: v for k, v in tokens.positions.items() if k != "suffix_pos"}  # CoLLM's
        split = split_rows(
            tokens.ids, tokens.positions["suffix_pos"], rows.users, rows.hist_pad, placeholders
        )
        order = np.argsort(split.groups, kind="stable")  # rows of one prefix together, prefixes in order
        pad_id = int(self.encoder.tokenizer.pad_token_id)
        for g0 in range(0, len(split.prefixes), bs):
            g1 = min(g0 + bs, len(split.prefixes))
            state = self._prefix_state(split, range(g0, g1), rows, cache)
            chunk = order[(split.groups[order] >= g0) & (split.groups[order] < g1)]
            # suffix batches of similar lengths (titles differ): padding is a large share of a ~33-token row
            chunk = chunk[np.argsort([len(split.suffixes[j]) for j in chunk], kind="stable")]
            for start in range(0, len(chunk), bs):
                idx = chunk[start : start + bs]
                suffix = left_padded_tensors(
                    [split.suffixes[j] for j in idx],
                    pad_id,
                    self.device,
                    {k: v[idx] for k, v in split.suffix_positions.items()},
                )
                if self.model.needs_cf:  # the rows' CF inputs (CoLLM's item token; CoRA gets G instead)
                    suffix["user_id"] = torch.as_tensor(rows.users[idx], device=self.device)
                    suffix["item_id"] = torch.as_tensor(rows.items[idx], device=self.device)
                    suffix["history"] = torch.from_numpy(rows.hist_pad[idx]).to(self.device)
                local = torch.as_tensor(split.groups[idx] - g0, dtype=torch.long, device=self.device)
                with torch.inference_mode():
                    g = self._row_G(rows, idx) if self.uses_collab_weights else None
                    scores = self.model.score_suffix(state.select(local), suffix, g)
                out[idx] = scores.detach().float().cpu().numpy().reshape(-1)
                if progress is not None:
                    progress(len(idx))

    def _prefix_state(
        self, split: SplitRows, groups: range, rows: _Rows, cache: PrefixCache | None
    ) -> PrefixState:
        """The keys/values of prefixes `groups` (aligned with them): from `cache` where present, the rest in
        one prefix pass (and put into `cache`)."""
        from cora_ray.model.prefix import PrefixState, left_padded_tensors

        keys = [
            prefix_key(rows.users[r], rows.hist_pad[r], split.prefixes[g])
            for g, r in zip(groups, split.first_row[groups.start : groups.stop], strict=True)
        ]
        version = self.cache_version
        found = [None if cache is None else cache.get(k, version) for k in keys]
        missing = [j for j, e in enumerate(found) if e is None]
        if missing:
            first = split.first_row[[groups[j] for j in missing]]
            pad_id = int(self.encoder.tokenizer.pad_token_id)
            computed = [groups[j] for j in missing]
            prefix = left_padded_tensors(
                [split.prefixes[g] for g in computed],
                pad_id,
                self.device,
                {k: v[computed] for k, v in split.prefix_positions.items()},
            )
            with torch.inference_mode():
                state = self.model.encode_prefix(
                    prefix,
                    torch.as_tensor(rows.users[first], dtype=torch.long, device=self.device),
                    torch.from_numpy(rows.hist_pad[first]).to(self.device),
                )
            if cache is None:
                return state  # every prefix computed here, already aligned with `groups`
            for i, j in enumerate(missing):
                found[j] = state.entry(i)
                cache.put(keys[j], found[j], version)
        return PrefixState.stack(found)  # type: ignore[arg-type]

    def _row_G(self, rows: _Rows, idx: np.ndarray) -> torch.Tensor:
        """G(u, i) of rows `idx`: the caller's (serving's cache / cold start), its provider's, or generated."""
        if rows.G is not None:
            return rows.G[torch.as_tensor(idx, dtype=torch.long, device=rows.G.device)].to(
                self.device, dtype=self._g_dtype()
            )
        u = torch.as_tensor(rows.users[idx], dtype=torch.long)
        i = torch.as_tensor(rows.items[idx], dtype=torch.long)
        h = torch.from_numpy(rows.hist_pad[idx])
        if rows.g_provider is not None:
            return rows.g_provider(u, i, h).to(self.device, dtype=self._g_dtype())
        return self.model.compute_G(u.to(self.device), i.to(self.device), h.to(self.device))

    @property
    def shares_prefix(self) -> bool:
        """The prompt prefix depends on (user, history) only — model.delta_scope user_prefix / suffix, or a
        model whose prefix is per user (TALLRec, zero-shot, CoLLM) whose template puts the target title after
        the history — and the encoder marks where each row's suffix starts: `score` runs each prefix once."""
        return bool(self.model.shares_prefix) and bool(getattr(self.encoder, "split_suffix", False))

    @property
    def cache_version(self) -> str | None:
        """What cached prefixes / G belong to: the checkpoint's content hash (None without a checkpoint)."""
        return checkpoint_hash(self.manifest) if self.uri else None

    def score_rows(self, rows: dict[str, Any], **kwargs: Any) -> np.ndarray:
        """Score a batch in the protocol's columns (a dict of arrays with user_id, item_id and optionally
        history) — what Ray Data's map_batches hands over with batch_format="numpy"."""
        return self.score(rows["user_id"], rows["item_id"], rows.get("history"), **kwargs)

    def _check_items(self, items: np.ndarray, hists: Sequence[Sequence[int]]) -> None:
        nt = len(self.titles)
        bad = [int(i) for i in items if i <= 0 or i >= nt or not self.titles[i]]
        if bad:
            raise DataError(f"item id(s) without a title in the dataset: {sorted(set(bad))[:10]}")
        bad_h = {int(x) for h in hists for x in h if x >= nt or not self.titles[x]}
        if bad_h:
            raise DataError(f"history item id(s) without a title in the dataset: {sorted(bad_h)[:10]}")


# ---------------------------------------------------------------------------------------------------------
# helpers that touch the other packages (imported lazily: cora_ray.llm / model / cf pull in transformers)
# ---------------------------------------------------------------------------------------------------------


def _encoder(llm: Any, cfg: ExperimentConfig, titles: Sequence[str], model: Any) -> Any:
    """The checkpoint's prompt encoder. A shared-prefix delta scope tokenises prefix and suffix apart, as it
    was trained; a model whose prefix is per user whatever its config (TALLRec, zero-shot, CoLLM) tokenises
    whole prompts, as it was trained, and is split at the suffix's first token when its template allows a
    split at all (else: full prompts)."""
    from cora_ray.data.prompts import PromptEncoder, PromptTemplate, split_problem

    placeholders = model.needs_placeholders
    whole = model.prefix_per_user and (
        split_problem(llm.tokenizer, PromptTemplate(cfg.prompt, placeholders), placeholders, from_whole=True)
        is None
    )
    return PromptEncoder(
        llm.tokenizer,
        cfg.prompt,
        list(titles),
        collab_placeholders=placeholders,
        split_suffix=cfg.model.shares_prefix or whole,
        split_from_whole=whole,
    )


def _load_llm(cfg: ExperimentConfig, device: torch.device, dtype: str | torch.dtype | None) -> LoadedLLM:
    from cora_ray.llm.loading import load_llm

    return load_llm(cfg.llm, device, dtype)


def _build(cfg: ExperimentConfig, llm: LoadedLLM, cf: CFBackbone | None, device: torch.device) -> RecModel:
    from cora_ray.model.build import build_model

    model = build_model(cfg.model, llm, cf)
    model.to(device)
    model.eval()
    return model


def cf_artifact_hash(cf: CFBackbone | None) -> str | None:
    """The content hash of the CF artifact a backbone was loaded from (what checkpoints record as
    cf_artifact.hash); None without a backbone or for one not loaded from an artifact."""
    return None if cf is None else cf.artifact_hash


def _load_cf_for_checkpoint(
    uri: str, record: dict, cf_uri: str | None, dataset_hash: str | None, endpoint: str | None
) -> CFBackbone:
    """The CF artifact a checkpoint names: `cf_uri` if given, else the recorded URI, else a copy bundled
    inside the checkpoint directory (`<uri>/cf`)."""
    from cora_ray.cf import load_cf_artifact

    candidates = [c for c in (cf_uri, record.get("uri"), storage.join(uri, "cf")) if c]
    for c in candidates:
        if storage.exists(storage.join(c, storage.MANIFEST), endpoint):
            return load_cf_artifact(c, expected_dataset_hash=dataset_hash)
    raise ArtifactMismatchError(
        f"checkpoint {uri} needs the CF artifact {record.get('uri')!r} (hash {record.get('hash')}), "
        f"which has no manifest at {', '.join(candidates)}; pass the artifact's URI (--cf-uri)"
    )


def _check_answer_tokens(manifest: dict, llm: LoadedLLM, uri: str) -> None:
    recorded = {"answer_token_id": llm.answer_token_id, "negative_token_id": llm.negative_token_id}
    for key, actual in recorded.items():
        expected = manifest.get(key)
        if expected is not None and actual is not None and int(expected) != int(actual):
            raise ArtifactMismatchError(
                f"checkpoint {uri} was trained with {key} {expected}, but the base LLM's tokenizer gives {actual}; "
                "use the tokenizer and answer token the checkpoint was made with"
            )
