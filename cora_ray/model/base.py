"""What every recommender model shares: the frozen LLM, the "Yes" score, the loss, the trainable-only state.

Score (docs/method.md §3, docs/architecture.md §5.2). With h = the final hidden state at the last prompt position (left padding
makes that position -1) and W the LM head:

    score = h · W[yes] (+ b[yes])                 or, with a negative token,  h · (W[yes] − W[no]) (+ ...)

which is exactly `logits[:, -1, yes]` (minus `logits[:, -1, no]`) without building the [B, T, vocab]
logits. Loss = binary cross-entropy with logits of the score against the 0/1 label.

Batches are dicts of tensors: input_ids (B, T) long, left-padded; attention_mask (B, T); label (B,);
user_id, item_id (B,) and history (B, H) where the method needs CF vectors; user_pos, item_pos (B,) where
it needs placeholder positions (CoLLM).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn
from transformers import DynamicCache

from cora_ray.errors import ArtifactMismatchError, ModelError
from cora_ray.model.prefix import PrefixState, cache_kwarg, kv_layers

if TYPE_CHECKING:
    from cora_ray.llm.loaded import LoadedLLM


def freeze(module: nn.Module) -> nn.Module:
    """requires_grad=False on every parameter: no weight gradients, activations still carry them."""
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T) 0/1 mask, left-padded → (B, T) positions counting real tokens only (pads get 0).

    The model's own default is 0..T-1 for every row, which would shift a row's positions by its padding."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def last_hidden_state(
    lm: nn.Module,
    attention_mask: torch.Tensor,
    input_ids: torch.Tensor | None = None,
    inputs_embeds: torch.Tensor | None = None,
) -> torch.Tensor:
    """Run the causal LM's decoder stack (no LM head) and return the last position's hidden state (B, d)."""
    if not bool(attention_mask[:, -1].all()):
        raise ModelError(
            "the batch is right-padded (attention_mask[:, -1] has zeros): prompts must be left-padded so that "
            "position -1 is every row's last prompt token (tokenizer.padding_side = 'left')"
        )
    out = lm.base_model(
        input_ids=input_ids,
        inputs_embeds=inputs_embeds,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
        use_cache=False,
    )
    return out.last_hidden_state[:, -1]  # (B, d): final-norm'd state at the last prompt token


def answer_score(
    lm: nn.Module, h: torch.Tensor, answer_token_id: int, negative_token_id: int | None
) -> torch.Tensor:
    """(B, d) last hidden states → (B,) logit of the answer token (minus the negative token's logit)."""
    head = lm.get_output_embeddings()  # nn.Linear (vocab, d); tied to the input embeddings in SmolLM2
    w = head.weight[answer_token_id]  # (d,)
    b = head.bias[answer_token_id] if head.bias is not None else None
    if negative_token_id is not None:
        w = w - head.weight[negative_token_id]
        b = b - head.bias[negative_token_id] if b is not None else None
    score = h @ w.to(h.dtype)  # (B,)
    return score + b if b is not None else score


def copy_named_tensors(
    params: Mapping[str, nn.Parameter], state: Mapping[str, torch.Tensor], what: str, hint: str = ""
) -> None:
    """Copy `state` into `params`; names and shapes must match exactly, else ArtifactMismatchError starting
    with `what` (the missing / unexpected names, or the tensor whose shape differs, then `hint`)."""
    missing, unexpected = sorted(set(params) - set(state)), sorted(set(state) - set(params))
    if missing or unexpected:
        raise ArtifactMismatchError(
            f"{what}: missing {missing[:3]}{' ...' if len(missing) > 3 else ''} ({len(missing)}), "
            f"unexpected {unexpected[:3]}{' ...' if len(unexpected) > 3 else ''} ({len(unexpected)})"
        )
    for name, p in params.items():
        if tuple(state[name].shape) != tuple(p.shape):
            raise ArtifactMismatchError(
                f"{what}: tensor '{name}' has shape {tuple(state[name].shape)} in the state, "
                f"{tuple(p.shape)} in the model{hint}"
            )
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(state[name])


class RecModel(nn.Module):
    """Base class of CoRA and the baselines: a frozen LLM scoring "Yes", plus method-specific trainable parts.

    Subclasses implement `forward(batch) -> (B,)` logits. Trainable = parameters with requires_grad; the LLM
    (registered as `lm`) and the CF backbone (`cf`, where used) are frozen here and stay in eval mode.
    """

    method: str = "base"

    # --- capabilities: what the data pipeline, trainer, scorer and serving ask of a method ---------------
    # Class attributes, so that `model_class(method)` (cora_ray.model.build) answers them before any model
    # exists (the driver plans a run without loading the LLM). Nothing outside cora_ray/model/build.py and
    # cora_ray/config.py compares a method name to decide behaviour: it asks these instead.
    needs_cf: bool = False
    """Batches carry user_id, item_id and history for the frozen CF backbone (model.cf_artifact required)."""
    needs_placeholders: bool = False
    """Prompts carry user/item placeholder tokens and batches their positions user_pos, item_pos (CoLLM)."""
    uses_collab_weights: bool = False
    """The model takes per-row collaborative weights G (B, d_model, r): `compute_G`, `forward(batch, G=...)`."""
    trainable: bool = True
    """The method has parameters to train (False: zero-shot, evaluated as it is)."""
    prefix_per_user: bool = False
    """Whatever the config, every row's prompt prefix (before the target title) depends on (user, history)
    only — no per-row delta (TALLRec, zero-shot), or a user token before the title and the item's after it
    (CoLLM) — so scoring may run it once per user (`shares_prefix`) with exactly the full prompt's result."""

    def __init__(self, llm: LoadedLLM) -> None:
        super().__init__()
        self.loaded_llm = llm
        self.lm = freeze(llm.model)
        self.answer_token_id = int(llm.answer_token_id)
        self.negative_token_id = None if llm.negative_token_id is None else int(llm.negative_token_id)
        self.d_model = int(llm.hidden_size)
        self.gradient_checkpointing = False  # set by enable_gradient_checkpointing

    def collab_weight_generator(self) -> nn.Module | None:
        """The module whose forward output is the rows' collaborative weights G (B, d_model, r), for monitors
        that watch G while training (cora_ray/train/delta_spread.py); None for methods without G."""
        return None

    @property
    def answer_tokens(self) -> tuple[int, int | None]:
        """(answer token id, negative token id or None): the score is logit[yes] (− logit[no])."""
        return self.answer_token_id, self.negative_token_id

    # --- scoring -------------------------------------------------------------------------------------------
    def score_hidden(self, h: torch.Tensor) -> torch.Tensor:
        """(B, d) last hidden states → (B,) scores (the "Yes" row of the LM head)."""
        return answer_score(self.lm, h, self.answer_token_id, self.negative_token_id)

    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    # --- the shared prompt prefix (cora_ray/model/prefix.py) ----------------------------------------------
    @property
    def shares_prefix(self) -> bool:
        """The prompt prefix (before the target title) depends on (user, history) only, so scoring computes
        it once per user: `encode_prefix` + `score_suffix` (`prefix_per_user` methods; CoRA with model.delta_scope
        user_prefix / suffix, which overrides this)."""
        return self.prefix_per_user

    @contextlib.contextmanager
    def full_prompt_pass(self) -> Iterator[None]:
        """Within the block `forward` runs every row's whole prompt (the reference the prefix-shared path is
        checked against). A baseline's forward always does; CoRA overrides this."""
        yield

    def encode_prefix(
        self, prefix: Mapping[str, torch.Tensor], user_id: torch.Tensor, history: torch.Tensor | None
    ) -> PrefixState:
        """Prefix tokens (input_ids, attention_mask (n, P), left-padded; user_pos for CoLLM) of n (user,
        history) → their keys and values at every layer through the LLM as it is (CoRA runs this under its
        user-only delta)."""
        mask = prefix["attention_mask"]
        out = self.lm.base_model(
            **self.prefix_inputs(prefix, user_id, history),
            attention_mask=mask,
            position_ids=position_ids_from_mask(mask),
            use_cache=True,
        )
        return PrefixState(kv_layers(out), mask, None)

    def prefix_inputs(
        self, prefix: Mapping[str, torch.Tensor], user_id: torch.Tensor, history: torch.Tensor | None
    ) -> dict[str, torch.Tensor]:
        """What the decoder reads for a prefix batch: its tokens (CoLLM: embeddings with the user's CF token)."""
        return {"input_ids": prefix["input_ids"]}

    def suffix_inputs(self, suffix: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """What the decoder reads for a suffix batch: its tokens (CoLLM: embeddings with the item's CF token)."""
        return {"input_ids": suffix["input_ids"]}

    def score_suffix(
        self, prefix: PrefixState, suffix: Mapping[str, torch.Tensor], G: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(B,) scores of suffix rows (input_ids, attention_mask (B, S), left-padded; user_id, item_id, history
        and item_pos for CoLLM) against their prefixes (`prefix` row-aligned: B prefixes, e.g.
        `state.select(groups)`). `G`: only for a model with collaborative weights (CoRA runs this under each
        row's G(u, i))."""
        if G is not None:
            raise ModelError(f"method {self.method!r} has no collaborative weights: G cannot be supplied")
        suffix_mask = suffix["attention_mask"]
        if len(prefix) != suffix_mask.shape[0]:
            raise ModelError(f"{len(prefix)} prefixes for {suffix_mask.shape[0]} suffix rows")
        lengths = prefix.attention_mask.sum(1, keepdim=True)  # (B, 1) real prefix tokens
        cache = DynamicCache(ddp_cache_data=prefix.layers, config=self.lm.config)
        mask = torch.cat([prefix.attention_mask, suffix_mask], dim=1)  # (B, P + S)
        out = self.lm.base_model(
            **self.suffix_inputs(suffix),
            attention_mask=mask,
            position_ids=lengths + position_ids_from_mask(suffix_mask),
            use_cache=True,
            **cache_kwarg(self.lm.base_model, cache),
        )
        return self.score_hidden(out.last_hidden_state[:, -1])  # (B,)

    def loss(self, batch: Mapping[str, torch.Tensor], logits: torch.Tensor | None = None) -> torch.Tensor:
        """Mean binary cross-entropy with logits of the scores against batch["label"] (0/1): the one loss.

        `logits`: this batch's (B,) scores when the caller already computed them — the training recipe runs
        the forward through the DeepSpeed engine (ZeRO-3's parameter hooks, its loss scaling and timers)."""
        logits = self(batch) if logits is None else logits  # (B,)
        return F.binary_cross_entropy_with_logits(logits.float(), batch["label"].to(logits.device).float())

    def train(self, mode: bool = True) -> RecModel:
        super().train(mode)
        cf = getattr(self, "cf", None)
        if isinstance(cf, nn.Module):
            cf.eval()  # frozen: no dropout in the CF encoder, ever
        return self

    # --- memory ------------------------------------------------------------------------------------------
    def checkpoint_kwargs(self) -> dict:
        """Keyword arguments for torch.utils.checkpoint (subclasses add what their layers need)."""
        return {"use_reentrant": False}

    def enable_gradient_checkpointing(self) -> None:
        """Recompute each decoder layer in backward instead of storing its activations (train.gradient_checkpointing)."""
        self.gradient_checkpointing = True
        enable = getattr(self.lm, "activation_checkpointing_enable", None)
        if enable is not None:  # transformers >= 5.2x
            enable(activation_checkpointing_kwargs=self.checkpoint_kwargs())
        else:
            self.lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs=self.checkpoint_kwargs())

    # --- trainable state -----------------------------------------------------------------------------------
    def trainable_parameters(self) -> list[nn.Parameter]:
        """The parameters the optimizer updates (never an LLM or CF weight)."""
        return [p for p in self.parameters() if p.requires_grad]

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """{name: tensor} of the trainable parameters only (detached, sharing storage with the model)."""
        return {name: p.detach() for name, p in self.named_parameters() if p.requires_grad}

    def load_trainable_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Copy a `trainable_state_dict()` back in; names and shapes must match exactly."""
        params = {name: p for name, p in self.named_parameters() if p.requires_grad}
        copy_named_tensors(
            params,
            state,
            f"trainable state does not fit this {self.method} model",
            hint=" (another rank, LLM or generator size?)",
        )
