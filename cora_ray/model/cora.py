"""CoRA: a frozen LLM whose targeted projections see a per-sample collaborative weight delta (docs/method.md §2).

    (user_id, item_id, history) ──frozen CF──▶ (e_u, e_i) ──generator──▶ G (B, d_model, r)
                                                                            │  via CollabContext
    input_ids ──frozen LLM, q/k/v/o: W x + (alpha/r)·P(bmm(x, G))──▶ h_last (B, d) ──· W_head[yes]──▶ score (B,)

Trained: the generator and every P (zero-initialised: step 0 is the plain LLM). Frozen: the whole LLM and
the CF backbone. Rows whose user the CF backbone does not know (cold start) get G = 0 with
`model.zero_delta_for_cold_users`, else a G from their (untrained) CF vector.

`model.delta_scope` (docs/method.md §2.5) confines G(u, i) to the prompt's suffix (the target title and the
answer cue): `user_prefix` gives the prefix a user-only G_u = generator(e_u, learned "no item" vector),
`suffix` gives it nothing. The prefix then depends on the user alone and is computed once per user
(cora_ray/model/prefix.py): `encode_prefix` + `score_suffix`. Batches carry `suffix_pos` (the encoder's
`split_suffix`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from cora_ray.cf.base import CFBackbone
from cora_ray.config import ModelConfig
from cora_ray.errors import ModelError
from cora_ray.model.base import RecModel, freeze, last_hidden_state
from cora_ray.model.collab_linear import inject_collab_layers
from cora_ray.model.generator import CollaborativeWeightGenerator
from cora_ray.model.prefix import (
    PrefixState,
    left_padded_tensors,
    split_rows,
    unpad_rows,
)

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
        self.delta_scope = cfg.delta_scope
        if self.delta_scope == "user_prefix":  # the item side of G_u: learned, starts at 0
            self.no_item = nn.Parameter(torch.zeros(cf.dim, device=device))
        # False: run a shared-prefix scope as one full-prompt pass with the prefix/suffix mask (the reference
        # the prefix-shared path is tested against; also what gradient checkpointing needs)
        self.share_prefix_in_forward = True

    @property
    def shares_prefix(self) -> bool:
        """The prompt prefix depends on (user, history) only: `encode_prefix` once, `score_suffix` per row."""
        return self.delta_scope != "all"

    @contextlib.contextmanager
    def full_prompt_pass(self) -> Iterator[None]:
        """Within the block `forward` runs each row's whole prompt with the prefix/suffix mask (the reference
        the prefix-shared path is checked against) instead of sharing prefixes within the batch."""
        previous = self.share_prefix_in_forward
        self.share_prefix_in_forward = False
        try:
            yield
        finally:
            self.share_prefix_in_forward = previous

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
        if self._zeroes_cold_users(zero_cold_users):
            known = self.cf.knows_user(user_id).to(device=G.device, dtype=G.dtype)  # (B,) 1 known, 0 cold
            G = G * known[:, None, None]
        return G

    def collab_weight_generator(self) -> nn.Module:
        """The generator: every G this model makes, G(u, i) and user_prefix's G_u, is its output."""
        return self.generator

    def _zeroes_cold_users(self, zero_cold_users: bool | None) -> bool:
        """The cold-user rule of one call: `zero_cold_users`, else the configured `zero_delta_for_cold_users`."""
        return self.cfg.zero_delta_for_cold_users if zero_cold_users is None else zero_cold_users

    def compute_G_user(
        self, user_id: torch.Tensor, history: torch.Tensor | None = None, zero_cold_users: bool | None = None
    ) -> torch.Tensor | None:
        """The prefix's delta: (B,), (B, H) → G_u (B, d_model, r) for user_prefix (the generator fed the
        user's CF vector and the learned "no item" vector), None for the suffix scope (a plain prefix).

        User id 0 (the padding id: serving's user the dataset does not know) always gets G_u = 0, the plain
        LLM, as its suffix gets G = 0 from serving; dataset users the CF model does not know follow
        `zero_delta_for_cold_users` like G(u, i)."""
        if self.delta_scope != "user_prefix":
            return None
        with torch.no_grad():
            e_u, _ = self.cf.embed(user_id, torch.zeros_like(user_id), history)  # (B, D); item 0 = padding
        G = self.generator(e_u, self.no_item.expand(e_u.shape[0], -1))  # (B, d_model, r)
        keep = user_id != 0
        if self._zeroes_cold_users(zero_cold_users):
            keep = keep & self.cf.knows_user(user_id).to(keep.device)
        return G * keep.to(device=G.device, dtype=G.dtype)[:, None, None]

    def forward(self, batch: Mapping[str, torch.Tensor], G: torch.Tensor | None = None) -> torch.Tensor:
        """batch → (B,) scores. G (B, d_model, r) given: skip the CF backbone and the generator."""
        if G is None:
            G = self.compute_G(batch["user_id"], batch["item_id"], batch.get("history"))
        if not self.shares_prefix:
            with self.collab.use(G):
                h = last_hidden_state(
                    self.lm, batch["attention_mask"], input_ids=batch["input_ids"]
                )  # (B, d)
            return self.score_hidden(h)  # (B,)
        if "suffix_pos" not in batch:
            raise ModelError(
                f"model.delta_scope={self.delta_scope} needs each row's suffix position (batch['suffix_pos']): "
                "encode the prompts with PromptEncoder(split_suffix=True)"
            )
        if self.share_prefix_in_forward and not self.gradient_checkpointing:
            return self._forward_shared(batch, G)
        return self._forward_masked(batch, G)

    def _forward_masked(self, batch: Mapping[str, torch.Tensor], G: torch.Tensor) -> torch.Tensor:
        """One full-prompt pass; G(u, i) from each row's suffix position on, G_u (or nothing) before it."""
        mask = batch["attention_mask"]
        positions = torch.arange(mask.shape[1], device=mask.device)[None, :]  # (1, T)
        suffix_mask = positions >= batch["suffix_pos"].to(mask.device)[:, None]  # (B, T)
        prefix_G = self.compute_G_user(batch["user_id"], batch.get("history"))
        with self.collab.use(G, suffix_mask=suffix_mask, prefix_G=prefix_G):
            h = last_hidden_state(self.lm, mask, input_ids=batch["input_ids"])  # (B, d)
        return self.score_hidden(h)

    def _forward_shared(self, batch: Mapping[str, torch.Tensor], G: torch.Tensor) -> torch.Tensor:
        """Rows of one (user, history, prefix) run their prefix once: `encode_prefix` on the unique prefixes,
        then every row's suffix against its prefix's keys/values (autograd flows through both)."""
        device = batch["input_ids"].device
        history = batch.get("history")
        hist_np = history.cpu().numpy() if history is not None else np.zeros((len(G), 0), dtype=np.int64)
        users = batch["user_id"]
        split = split_rows(
            unpad_rows(batch["input_ids"], batch["attention_mask"]),
            (batch["suffix_pos"] - (batch["attention_mask"] == 0).sum(1)).tolist(),  # in-row positions
            users.tolist(),
            hist_np,
        )
        pad_id = int(self.loaded_llm.tokenizer.pad_token_id)
        first = torch.as_tensor(split.first_row, device=device)
        prefix = self.encode_prefix(
            left_padded_tensors(split.prefixes, pad_id, device),
            users.index_select(0, first.to(users.device)),
            None if history is None else history.index_select(0, first.to(history.device)),
        )
        rows = prefix.select(torch.as_tensor(split.groups, device=device))
        return self.score_suffix(rows, left_padded_tensors(split.suffixes, pad_id, device), G)

    def encode_prefix(
        self, prefix: Mapping[str, torch.Tensor], user_id: torch.Tensor, history: torch.Tensor | None
    ) -> PrefixState:
        """Prefix tokens (input_ids, attention_mask (n, P), left-padded) of n (user, history) → their keys and
        values at every layer, computed with G_u (user_prefix) or the plain LLM (suffix)."""
        prefix_G = self.compute_G_user(user_id, history)
        with self.collab.use(prefix_G):
            state = super().encode_prefix(prefix, user_id, history)
        state.prefix_G = prefix_G
        return state

    def score_suffix(
        self, prefix: PrefixState, suffix: Mapping[str, torch.Tensor], G: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(B,) scores of suffix rows against their prefixes (`RecModel.score_suffix`), each with its own
        G(u, i) (B, d_model, r)."""
        if G is None:
            raise ModelError("CoRA's suffix rows need their G(u, i) (compute_G)")
        with self.collab.use(G):
            return super().score_suffix(prefix, suffix)

    def checkpoint_kwargs(self) -> dict:
        # the recompute of a checkpointed layer runs in backward, after `forward` has left `collab.use(G)`:
        # the context_fn replays it with the G of its original forward
        return {"use_reentrant": False, "context_fn": self.collab.checkpoint_context_fn}
