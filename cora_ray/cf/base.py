"""The one interface every CF backbone offers, and that CoRA, CoLLM, evaluation and serving rely on."""

from __future__ import annotations

import torch
from torch import nn


class CFBackbone(nn.Module):
    """A collaborative-filtering model over protocol ids (1..n, 0 = padding).

    Subclasses: MF, LightGCN, SASRec (cora_ray.cf). Shapes: B rows, H history length, D = `dim`.
    """

    name: str = "base"
    dim: int
    """D, the width of the user and item vectors (what CoRA's generator and CoLLM's projector take in)."""
    num_items: int
    """Item ids are 1..num_items (0 = padding): the catalogue `score_all_items` scores."""
    uses_history: bool = False
    """The user vector encodes the user's positive history (so it needs `history`, and anything cached per
    user vector — serving's G cache — must be keyed by the history too). Asked instead of the backbone name."""

    def __init__(self) -> None:
        super().__init__()
        # The CF artifact's manifest when the backbone was loaded from one (cora_ray/cf/artifact.py
        # load_cf_artifact sets it); None for a backbone built in memory (pretraining, tests).
        self.manifest: dict | None = None

    @property
    def artifact_hash(self) -> str | None:
        """The loaded artifact's content hash (what checkpoints record as `cf_artifact.hash`), or None."""
        return None if self.manifest is None else self.manifest["hash"]

    def user_vectors(self, user_ids: torch.Tensor, history: torch.Tensor | None = None) -> torch.Tensor:
        """(B,) user ids [+ (B, H) left-padded positive history, oldest first] → (B, D).

        MF / LightGCN ignore `history`; SASRec encodes it (and ignores the id)."""
        raise NotImplementedError

    def item_vectors(self, item_ids: torch.Tensor) -> torch.Tensor:
        """(B,) item ids → (B, D)."""
        raise NotImplementedError

    def score(
        self, user_ids: torch.Tensor, item_ids: torch.Tensor, history: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(B,) logits of "user likes item": dot product of the two vectors."""
        return (self.user_vectors(user_ids, history) * self.item_vectors(item_ids)).sum(-1)

    def score_all_items(self, user_ids: torch.Tensor, history: torch.Tensor | None = None) -> torch.Tensor:
        """(B,) user ids [+ (B, H) history, as for `user_vectors`] → (B, num_items + 1): every item id's logit
        for each user — what `score` gives each (user, item) pair, as one matrix product (catalogue-wide
        retrieval, cora_ray/infer/catalogue.py). Column 0, the padding id, is -inf so that it never ranks."""
        users = self.user_vectors(user_ids, history)
        items = self.item_vectors(torch.arange(self.num_items + 1, device=users.device))
        out = users @ items.T
        out[:, 0] = float("-inf")
        return out

    def embed(
        self, user_ids: torch.Tensor, item_ids: torch.Tensor, history: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(e_u, e_i), each (B, D): what CoRA's generator and CoLLM's projector consume."""
        return self.user_vectors(user_ids, history), self.item_vectors(item_ids)

    def knows_user(self, user_ids: torch.Tensor) -> torch.Tensor:
        """(B,) bool: the user had interactions in the train split (False → cold start in serving)."""
        raise NotImplementedError
