"""The baselines of docs/method.md §8, through the same `RecModel` interface as CoRA.

- `ZeroShotModel`: the frozen LLM and the prompt; nothing trained.
- `TALLRecModel`: one shared LoRA (A and B learned; r = 8, alpha = 16 on q_proj, v_proj), text only.
- `CoLLMModel`: an MLP maps the CF vectors e_u, e_i to two token embeddings that replace the input
  embeddings at the prompt's user and item placeholders. `model.collm_variant=faithful` (the authors'
  recipe, docs/method.md §8) puts a TALLRec LoRA under it, loaded from a stage-1 checkpoint and kept frozen;
  `mapping_only` (an ablation) trains the MLP on the plain frozen LLM.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch
from torch import nn

from cora_ray.cf.base import CFBackbone
from cora_ray.config import ModelConfig
from cora_ray.errors import ArtifactMismatchError, ModelError
from cora_ray.model.base import RecModel, copy_named_tensors, freeze, last_hidden_state
from cora_ray.model.lora_linear import LoRALinear, inject_lora_layers

if TYPE_CHECKING:
    from cora_ray.llm.loaded import LoadedLLM


class ZeroShotModel(RecModel):
    """In-context zero-shot: score = the frozen LLM's "Yes" logit for the prompt."""

    method = "zero_shot"
    trainable = False
    prefix_per_user = True

    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        h = last_hidden_state(self.lm, batch["attention_mask"], input_ids=batch["input_ids"])  # (B, d)
        return self.score_hidden(h)  # (B,)


class TALLRecModel(RecModel):
    """TALLRec: a shared LoRA on `cfg.lora_targets` (both factors trained), text-only prompts.

    The LLM is modified in place (targets become LoRALinear), so one LoadedLLM backs one model."""

    method = "tallrec"
    prefix_per_user = True  # one LoRA for every row: a user's prompt prefix is the same for all candidates

    def __init__(self, llm: LoadedLLM, cfg: ModelConfig) -> None:
        super().__init__(llm)
        self.lora_layers = inject_lora_layers(
            self.lm, cfg.lora_targets, cfg.lora_rank, cfg.lora_alpha, cfg.dropout
        )

    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        h = last_hidden_state(self.lm, batch["attention_mask"], input_ids=batch["input_ids"])  # (B, d)
        return self.score_hidden(h)  # (B,)


# The authors' mapping: Linear(D, D·10) → ReLU → Linear(D·10, d_model) ("proj_mid_times: 10" in their configs)
AUTHORS_HIDDEN_TIMES = 10
# the mapping-only width when model.collm_hidden is null (its default before it could be)
MAPPING_ONLY_HIDDEN = 1024


class CoLLMModel(RecModel):
    """CoLLM: CF vectors as prompt tokens.

        x_u = MLP(e_u), x_i = MLP(e_i)      (B, d_model) each, one MLP shared by users and items
        embeds[b, user_pos[b]] = x_u[b];  embeds[b, item_pos[b]] = x_i[b]

    then the LLM runs on the edited `inputs_embeds`: with `cfg.collm_uses_lora` (the faithful variant)
    through a TALLRec LoRA on `cfg.lora_targets` — loaded from the stage-1 checkpoint by `load_stage1_lora`
    and frozen when `cfg.collm_freeze_lora` — otherwise the plain frozen LLM. Placeholder positions come
    with the batch (the prompt builder knows where it put them; left padding is already included).

    Its checkpoint state ("trainable" in the RecModel contract: what is not the base LLM) is the MLP and,
    in the faithful variant, the LoRA factors even while frozen, so that a stage-2 checkpoint scores alone;
    the optimizer takes only the parameters that require grad (cora_ray/train/deepspeed_config.py).
    """

    method = "collm"
    needs_cf = True
    needs_placeholders = True
    prefix_per_user = True  # the user's CF token lies before the target title, the item's after it

    def __init__(self, llm: LoadedLLM, cf: CFBackbone, cfg: ModelConfig) -> None:
        super().__init__(llm)
        if cf is None:
            raise ModelError(
                "CoLLM needs a CF backbone (model.cf_artifact): its vectors become prompt tokens"
            )
        self.cf = freeze(cf).eval()
        self.lora_layers: dict[str, LoRALinear] = {}
        self._lora_names: set[str] = set()
        self.lora_targets = list(cfg.lora_targets)
        if cfg.collm_uses_lora:
            self.lora_layers = inject_lora_layers(
                self.lm, cfg.lora_targets, cfg.lora_rank, cfg.lora_alpha, cfg.dropout
            )
            self._lora_names = {n for n, _ in self.named_parameters() if ".lora_" in n}
            if cfg.collm_freeze_lora:
                for layer in self.lora_layers.values():
                    freeze(layer)  # lora_A, lora_B (its base_layer is frozen already)
        hidden = cfg.collm_hidden or (
            AUTHORS_HIDDEN_TIMES * cf.dim if cfg.collm_uses_lora else MAPPING_ONLY_HIDDEN
        )
        device = next(self.lm.parameters()).device
        self.projector = nn.Sequential(
            nn.Linear(cf.dim, hidden), nn.ReLU(), nn.Linear(hidden, self.d_model)
        ).to(device)

    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        with torch.no_grad():
            e_u, e_i = self.cf.embed(batch["user_id"], batch["item_id"], batch.get("history"))  # (B, D) each
        embeds = self._with_cf_tokens(
            batch["input_ids"], (batch["user_pos"], e_u), (batch["item_pos"], e_i)
        )  # (B, T, d_model)
        h = last_hidden_state(self.lm, batch["attention_mask"], inputs_embeds=embeds)  # (B, d)
        return self.score_hidden(h)  # (B,)

    def _with_cf_tokens(
        self, input_ids: torch.Tensor, *placed: tuple[torch.Tensor, torch.Tensor]
    ) -> torch.Tensor:
        """The token embeddings of `input_ids` (B, T), frozen, with MLP(e) written at position pos of each row
        for every (pos (B,), e (B, D)) in `placed`."""
        dtype = self.projector[0].weight.dtype
        embeds = self.lm.get_input_embeddings()(input_ids)  # (B, T, d_model)
        rows = torch.arange(embeds.shape[0], device=embeds.device)
        for pos, e in placed:
            x = self.projector(e.to(dtype))  # (B, d_model)
            # index_put out of place: the placeholder's embedding is replaced, the gradient reaches the MLP
            embeds = embeds.index_put((rows, pos.to(embeds.device)), x.to(embeds.dtype))
        return embeds

    # --- the shared prefix: the user's token in the prefix, the item's in the suffix ----------------------
    def prefix_inputs(
        self, prefix: Mapping[str, torch.Tensor], user_id: torch.Tensor, history: torch.Tensor | None
    ) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            e_u, _ = self.cf.embed(user_id, torch.zeros_like(user_id), history)  # item 0 = padding
        return {"inputs_embeds": self._with_cf_tokens(prefix["input_ids"], (prefix["user_pos"], e_u))}

    def suffix_inputs(self, suffix: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            _, e_i = self.cf.embed(suffix["user_id"], suffix["item_id"], suffix.get("history"))
        return {"inputs_embeds": self._with_cf_tokens(suffix["input_ids"], (suffix["item_pos"], e_i))}

    # --- checkpoint state: the MLP and the LoRA (frozen or not) ----------------------------------------------
    def _state_parameters(self) -> dict[str, nn.Parameter]:
        return {n: p for n, p in self.named_parameters() if p.requires_grad or n in self._lora_names}

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The checkpointed parameters (MLP + LoRA); ZeRO-3 gathers these to write a checkpoint."""
        return list(self._state_parameters().values())

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return {n: p.detach() for n, p in self._state_parameters().items()}

    def load_trainable_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        copy_named_tensors(
            self._state_parameters(), state, f"trainable state does not fit this {self.method} model"
        )

    def load_stage1_lora(self, state: Mapping[str, torch.Tensor], model_config: Mapping, source: str) -> None:
        """Stage 2 starts here: copy a stage-1 checkpoint's LoRA tensors (`state`, its `trainable`; its
        config's model section `model_config`) into this model's LoRA. They must be exactly this model's
        LoRA tensors, of the same rank and alpha; `source` names the checkpoint in errors."""
        if not self.lora_layers:
            raise ModelError(
                "this CoLLM has no LoRA to initialise (model.collm_variant=faithful puts one on the LLM)"
            )
        layer = next(iter(self.lora_layers.values()))
        theirs = (int(model_config.get("lora_rank", -1)), float(model_config.get("lora_alpha", -1.0)))
        if theirs != (layer.rank, layer.scaling * layer.rank):
            raise ArtifactMismatchError(
                f"model.init_from {source}: its LoRA has rank {theirs[0]}, alpha {theirs[1]:g}; this model's "
                f"rank {layer.rank}, alpha {layer.scaling * layer.rank:g} (set model.lora_rank / lora_alpha "
                "to the stage-1 run's)"
            )
        lora = {n: p for n, p in self.named_parameters() if n in self._lora_names}
        copy_named_tensors(
            lora,
            state,
            f"model.init_from {source} is not a stage-1 LoRA checkpoint for this model (expected exactly the "
            f"LoRA tensors of a method tallrec run with lora_targets {self.lora_targets})",
        )
