"""CF-only scoring (docs/method.md §8 "CF only"): a pretrained backbone's own logit, behind the Scorer's interface.

    scorer = CFScorer.from_artifact("artifacts/cf/mf", data_uri="artifacts/ml-1m")
    scores = scorer.score(user_ids, item_ids, histories)          # np.ndarray (n,), float32 logits

Same row conventions as `Scorer.score`: int ids, histories oldest first (SASRec encodes them; MF and
LightGCN ignore them). No prompt, no LLM; one forward per `batch_size` rows.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from cora_ray.data import protocol
from cora_ray.data.batching import pad_histories
from cora_ray.errors import ModelError
from cora_ray.infer.scorer import as_histories, as_id_array, cf_artifact_hash, resolve_device


class CFScorer:
    """A CF backbone (cora_ray.cf.CFBackbone) scoring (user, item, history) rows."""

    method = "cf"
    uses_collab_weights = False
    g_shape = None

    def __init__(
        self,
        backbone: Any,
        *,
        uri: str | None = None,
        manifest: dict | None = None,
        device: str | torch.device = "cpu",
        batch_size: int = 4096,
        dataset_hash: str | None = None,
        history_len: int = protocol.HISTORY_LEN,
    ) -> None:
        self.backbone = backbone
        self.uri = uri
        self.manifest = dict(manifest or {})
        self.device = resolve_device(device)
        self.batch_size = int(batch_size)
        if self.batch_size <= 0:
            raise ModelError(f"batch_size must be > 0, got {self.batch_size}")
        self.dataset_hash = dataset_hash
        self.history_len = int(history_len)
        self.backbone.to(self.device)
        self.backbone.eval()
        self.load_seconds: float | None = None

    @classmethod
    def from_artifact(
        cls,
        uri: str,
        data_uri: str | None = None,
        device: str | torch.device = "cpu",
        *,
        batch_size: int = 4096,
        endpoint: str | None = None,
    ) -> CFScorer:
        """Load a jobs/pretrain_cf.py artifact. With `data_uri`, the artifact must have been trained on that
        dataset (its manifest hash), else `ArtifactMismatchError` naming both hashes."""
        from cora_ray.cf import load_cf_artifact, read_cf_manifest

        t0 = time.perf_counter()
        manifest = read_cf_manifest(uri, endpoint)
        data_hash = None if data_uri is None else protocol.read_manifest(data_uri, endpoint).get("hash")
        backbone = load_cf_artifact(uri, expected_dataset_hash=data_hash, endpoint=endpoint)
        scorer = cls(
            backbone,
            uri=uri,
            manifest=manifest,
            device=device,
            batch_size=batch_size,
            dataset_hash=data_hash or manifest.get("dataset_hash"),
            history_len=int(manifest.get("history_len", protocol.HISTORY_LEN) or protocol.HISTORY_LEN),
        )
        scorer.load_seconds = time.perf_counter() - t0
        return scorer

    def describe(self) -> dict:
        m = self.manifest
        return {
            "method": "cf",
            "cf_artifact": {
                "uri": self.uri,
                "hash": cf_artifact_hash(self.backbone) or m.get("hash"),
                "backbone": m.get("backbone") or getattr(self.backbone, "name", None),
            },
            "dataset_hash": self.dataset_hash,
            "device": str(self.device),
            "batch_size": self.batch_size,
        }

    def knows_user(self, user_ids: Any) -> np.ndarray:
        users = torch.as_tensor(as_id_array(user_ids, "user_ids"), dtype=torch.long, device=self.device)
        with torch.inference_mode():
            out = self.backbone.knows_user(users)
        return np.asarray(out.detach().cpu(), dtype=bool).reshape(-1)

    def score(
        self,
        user_ids: Any,
        item_ids: Any,
        histories: Any = None,
        *,
        batch_size: int | None = None,
        progress: Callable[[int], None] | None = None,
        **unused: Any,
    ) -> np.ndarray:
        """(n,) float32 logits of the backbone, in the given row order."""
        if unused.get("G") is not None or unused.get("g_provider") is not None:
            raise ModelError("a CF-only model has no collaborative weights: G cannot be supplied")
        users = as_id_array(user_ids, "user_ids")
        items = as_id_array(item_ids, "item_ids")
        if len(users) != len(items):
            raise ModelError(f"user_ids ({len(users)}) and item_ids ({len(items)}) differ in length")
        hists = as_histories(histories, len(items))
        out = np.empty(len(items), dtype=np.float32)
        bs = int(batch_size or self.batch_size)
        with torch.inference_mode():
            for s in range(0, len(items), bs):
                u = torch.as_tensor(users[s : s + bs], dtype=torch.long, device=self.device)
                i = torch.as_tensor(items[s : s + bs], dtype=torch.long, device=self.device)
                h = torch.from_numpy(pad_histories(hists[s : s + bs], self.history_len)).to(self.device)
                out[s : s + bs] = self.backbone.score(u, i, h).detach().float().cpu().numpy().reshape(-1)
                if progress is not None:
                    progress(len(u))
        return out

    def score_rows(self, rows: dict[str, Any], **kwargs: Any) -> np.ndarray:
        return self.score(rows["user_id"], rows["item_id"], rows.get("history"), **kwargs)
