"""Tiny in-process models for the model tests: a random 2-layer LLaMA, a random CF table, random batches."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from cora_ray.cf.base import CFBackbone
from cora_ray.config import GeneratorConfig, ModelConfig
from cora_ray.llm.loaded import LoadedLLM

VOCAB, YES, NO, PAD = 100, 7, 8, 0
N_USERS, N_ITEMS, CF_DIM = 12, 20, 16
COLD_USER = N_USERS  # ids 1..N_USERS-1 are known to the CF table; N_USERS is a cold user


def tiny_llama(seed: int = 0, tie: bool = False) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=PAD,
        tie_word_embeddings=tie,
    )
    return LlamaForCausalLM(config).eval()


def tiny_llm(seed: int = 0, negative: bool = False, tie: bool = False) -> LoadedLLM:
    """A random LLaMA as a LoadedLLM (no tokenizer: the tests feed random token ids)."""
    lm = tiny_llama(seed, tie).requires_grad_(False)
    return LoadedLLM(
        model=lm,
        tokenizer=None,
        answer_token_id=YES,
        negative_token_id=NO if negative else None,
        identity=f"tiny-llama-seed{seed}",
        weight_hash="0" * 64,
        hidden_size=lm.config.hidden_size,
        dtype=torch.float32,
    )


class TableCF(CFBackbone):
    """Random user / item tables; users 1..N_USERS-1 are known, anything else is cold."""

    name = "table"

    def __init__(self, dim: int = CF_DIM, seed: int = 0) -> None:
        super().__init__()
        self.dim = dim
        g = torch.Generator().manual_seed(seed)
        self.users = nn.Embedding(N_USERS + 1, dim, _weight=torch.randn(N_USERS + 1, dim, generator=g))
        self.items = nn.Embedding(N_ITEMS + 1, dim, _weight=torch.randn(N_ITEMS + 1, dim, generator=g))

    def user_vectors(self, user_ids: torch.Tensor, history: torch.Tensor | None = None) -> torch.Tensor:
        return self.users(user_ids)

    def item_vectors(self, item_ids: torch.Tensor) -> torch.Tensor:
        return self.items(item_ids)

    def knows_user(self, user_ids: torch.Tensor) -> torch.Tensor:
        return (user_ids >= 1) & (user_ids < N_USERS)


def small_model_config(method: str = "cora", **overrides: Any) -> ModelConfig:
    gen = GeneratorConfig(num_queries=2, num_layers=2, hidden_size=32, num_heads=4, ffn_size=64, dropout=0.1)
    return ModelConfig(
        **{"method": method, "rank": 4, "alpha": 8.0, "generator": gen, "collm_hidden": 32, **overrides}
    )


def make_batch(B: int = 6, T: int = 12, seed: int = 0, min_len: int = 5) -> dict[str, torch.Tensor]:
    """Random left-padded prompts; placeholders at the first two real tokens; known users."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(min_len, T + 1, (B,), generator=g)
    lengths[0] = T  # one row without padding
    input_ids = torch.randint(1, VOCAB, (B, T), generator=g)
    attention_mask = (torch.arange(T)[None, :] >= (T - lengths)[:, None]).long()  # (B, T) left padding
    input_ids = input_ids.masked_fill(attention_mask == 0, PAD)
    start = T - lengths
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "user_id": torch.randint(1, N_USERS, (B,), generator=g),
        "item_id": torch.randint(1, N_ITEMS + 1, (B,), generator=g),
        "history": torch.randint(0, N_ITEMS + 1, (B, 3), generator=g),
        "label": torch.randint(0, 2, (B,), generator=g).float(),
        "user_pos": start,
        "item_pos": start + 1,
    }


def randomize_P(model: nn.Module, std: float = 0.5, seed: int = 0) -> None:
    """Give every collaborative P random values (a trained-looking model without training)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in model.collab_layers.values():
            layer.P.copy_(torch.randn(layer.P.shape, generator=g) * std)


@pytest.fixture()
def tiny() -> SimpleNamespace:
    """The helpers above, for test modules (importlib import mode: tests cannot import conftest)."""
    torch.manual_seed(0)
    return SimpleNamespace(
        llm=tiny_llm,
        cf=TableCF,
        config=small_model_config,
        batch=make_batch,
        randomize_P=randomize_P,
        VOCAB=VOCAB,
        YES=YES,
        NO=NO,
        PAD=PAD,
        COLD_USER=COLD_USER,
        N_USERS=N_USERS,
        N_ITEMS=N_ITEMS,
    )
