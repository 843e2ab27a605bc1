"""CoRA: a frozen LLM whose targeted projections see a per-sample collaborative weight delta (docs/method.md §2).

    (user_id, item_id, history) ──frozen CF──▶ (e_u, e_i) ──generator──▶ G (B, d_model, r)
                                                                            │  via CollabContext
    input_ids ──frozen LLM, q/k/v/o: W x + (alpha/r)·P(bmm(x, G))──▶ h_last (B, d) ──· W_head[yes]──▶ score (B,)

Trained: the generator and every P (zero-initialised: step 0 is the plain LLM). Frozen: the whole LLM and
the CF backbone. Rows whose user the CF backbone does not know (cold start) get G = 0, i.e. the plain LLM.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch

from cora_ray.cf.base import CFBackbone
from cora_ray.config import ModelConfig
from cora_ray.errors import ModelError
from cora_ray.model.base import RecModel, freeze, last_hidden_state
from cora_ray.model.collab_linear import inject_collab_layers
from cora_ray.model.generator import CollaborativeWeightGenerator

if TYPE_CHECKING:
    from cora_ray.llm.loaded import LoadedLLM


class CoRAModel(RecModel):
    """Frozen LLM + frozen CF backbone + trainable generator and collaborative layers.

    `forward(batch)` → (B,) "Yes" logits; `forward(batch, G=...)` reuses G from `compute_G` (serving caches
    G per (user, item)). The LLM is modified in place (its targeted nn.Linear become CollabLinear), so one
    LoadedLLM backs one CoRA model.
    """

    method = "cora"
    needs_cf = True
    uses_collab_weights = True

    def __init__(self, llm: LoadedLLM, cf: CFBackbone, cfg: ModelConfig) -> None:
        super().__init__(llm)
        if cf is None:
            raise ModelError("CoRA needs a CF backbone (model.cf_artifact): its vectors drive the generator")
        self.cfg = cfg
        self.cf = freeze(cf).eval()
        device = next(self.lm.parameters()).device
        self.generator = CollaborativeWeightGenerator(cf.dim, self.d_model, cfg.rank, cfg.generator).to(
            device
        )
        self.collab, self.collab_layers = inject_collab_layers(
            self.lm, cfg.targets, cfg.rank, cfg.alpha, cfg.dropout
        )

    def compute_G(
        self,
        user_id: torch.Tensor,
        item_id: torch.Tensor,
        history: torch.Tensor | None = None,
        zero_cold_users: bool | None = None,
    ) -> torch.Tensor:
        """(B,), (B,), (B, H) → G (B, d_model, r); zero for rows whose user is cold when `zero_cold_users`
        (None: the configured `zero_delta_for_cold_users`)."""
        with torch.no_grad():  # frozen CF: its vectors are inputs, not something to differentiate
            e_u, e_i = self.cf.embed(user_id, item_id, history)  # (B, D) each
        G = self.generator(e_u, e_i)  # (B, d_model, r)
        if self.cfg.zero_delta_for_cold_users if zero_cold_users is None else zero_cold_users:
            known = self.cf.knows_user(user_id).to(device=G.device, dtype=G.dtype)  # (B,) 1 known, 0 cold
            G = G * known[:, None, None]
        return G

    def forward(self, batch: Mapping[str, torch.Tensor], G: torch.Tensor | None = None) -> torch.Tensor:
        """batch → (B,) scores. G (B, d_model, r) given: skip the CF backbone and the generator."""
        if G is None:
            G = self.compute_G(batch["user_id"], batch["item_id"], batch.get("history"))
        with self.collab.use(G):
            h = last_hidden_state(self.lm, batch["attention_mask"], input_ids=batch["input_ids"])  # (B, d)
        return self.score_hidden(h)  # (B,)

    def checkpoint_kwargs(self) -> dict:
        # the recompute of a checkpointed layer runs in backward, after `forward` has left `collab.use(G)`:
        # the context_fn replays it with the G of its original forward
        return {"use_reentrant": False, "context_fn": self.collab.checkpoint_context_fn}
