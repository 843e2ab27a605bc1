"""The baselines of docs/method.md §8, through the same `RecModel` interface as CoRA.

- `ZeroShotModel`: the frozen LLM and the prompt; nothing trained.
- `TALLRecModel`: one shared LoRA (A and B learned; r = 8, alpha = 16 on q_proj, v_proj), text only.
- `CoLLMModel`: an MLP maps the CF vectors e_u, e_i to two token embeddings that replace the input
  embeddings at the prompt's user and item placeholders; the LLM stays frozen.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch
from torch import nn

from cora_ray.cf.base import CFBackbone
from cora_ray.config import ModelConfig
from cora_ray.errors import ModelError
from cora_ray.model.base import RecModel, freeze, last_hidden_state
from cora_ray.model.lora_linear import inject_lora_layers

if TYPE_CHECKING:
    from cora_ray.llm.loaded import LoadedLLM


class ZeroShotModel(RecModel):
    """In-context zero-shot: score = the frozen LLM's "Yes" logit for the prompt."""

    method = "zero_shot"
    trainable = False

    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        h = last_hidden_state(self.lm, batch["attention_mask"], input_ids=batch["input_ids"])  # (B, d)
        return self.score_hidden(h)  # (B,)


class TALLRecModel(RecModel):
    """TALLRec: a shared LoRA on `cfg.lora_targets` (both factors trained), text-only prompts.

    The LLM is modified in place (targets become LoRALinear), so one LoadedLLM backs one model."""

    method = "tallrec"

    def __init__(self, llm: LoadedLLM, cfg: ModelConfig) -> None:
        super().__init__(llm)
        self.lora_layers = inject_lora_layers(
            self.lm, cfg.lora_targets, cfg.lora_rank, cfg.lora_alpha, cfg.dropout
        )

    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        h = last_hidden_state(self.lm, batch["attention_mask"], input_ids=batch["input_ids"])  # (B, d)
        return self.score_hidden(h)  # (B,)


class CoLLMModel(RecModel):
    """CoLLM: CF vectors as prompt tokens.

        x_u = MLP(e_u), x_i = MLP(e_i)      (B, d_model) each, one MLP shared by users and items
        embeds[b, user_pos[b]] = x_u[b];  embeds[b, item_pos[b]] = x_i[b]

    then the frozen LLM runs on the edited `inputs_embeds`. Placeholder positions come with the batch
    (the prompt builder knows where it put them; left padding is already included).
    """

    method = "collm"
    needs_cf = True
    needs_placeholders = True

    def __init__(self, llm: LoadedLLM, cf: CFBackbone, cfg: ModelConfig) -> None:
        super().__init__(llm)
        if cf is None:
            raise ModelError(
                "CoLLM needs a CF backbone (model.cf_artifact): its vectors become prompt tokens"
            )
        self.cf = freeze(cf).eval()
        device = next(self.lm.parameters()).device
        self.projector = nn.Sequential(
            nn.Linear(cf.dim, cfg.collm_hidden), nn.ReLU(), nn.Linear(cfg.collm_hidden, self.d_model)
        ).to(device)

    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        with torch.no_grad():
            e_u, e_i = self.cf.embed(batch["user_id"], batch["item_id"], batch.get("history"))  # (B, D) each
        dtype = self.projector[0].weight.dtype
        x_u, x_i = self.projector(e_u.to(dtype)), self.projector(e_i.to(dtype))  # (B, d_model) each
        embeds = self.lm.get_input_embeddings()(batch["input_ids"])  # (B, T, d_model), frozen
        rows = torch.arange(embeds.shape[0], device=embeds.device)
        # index_put out of place: the placeholders' embeddings are replaced, the gradient reaches the MLP
        embeds = embeds.index_put((rows, batch["user_pos"].to(embeds.device)), x_u.to(embeds.dtype))
        embeds = embeds.index_put((rows, batch["item_pos"].to(embeds.device)), x_i.to(embeds.dtype))
        h = last_hidden_state(self.lm, batch["attention_mask"], inputs_embeds=embeds)  # (B, d)
        return self.score_hidden(h)  # (B,)
