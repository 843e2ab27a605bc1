"""`LoadedLLM`: a frozen base causal LM, its tokenizer and the ids of its answer tokens.

Everything that holds a base LLM (the CoRA model, the baselines, training workers, serving replicas) gets
it in this form, from `load_llm` (real models) or `tiny_llm` (tests).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from cora_ray.errors import ModelError

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class LoadedLLM:
    """A frozen causal LM ready for scoring.

    model: `AutoModelForCausalLM` in eval mode; every parameter has `requires_grad=False`.
    tokenizer: pads on the left, with a pad token (the eos token when the model has none).
    answer_token_id / negative_token_id: vocabulary rows of the answer tokens (" Yes", optionally " No").
    identity: what was loaded (bundled name + GGUF digest, absolute directory, hub id + commit, s3 URI).
    weight_hash: sha256 of the stored weights (see `cora_ray.llm.hashing`); checkpoints record it.
    hidden_size: d_model.  dtype: the dtype the weights are held in.
    local_dir: the Hugging Face directory the weights came from (None for in-process models).
    """

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    answer_token_id: int
    negative_token_id: int | None
    identity: str
    weight_hash: str
    hidden_size: int
    dtype: torch.dtype
    local_dir: Path | None = None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def num_layers(self) -> int:
        return int(self.model.config.get_text_config().num_hidden_layers)

    def with_answer_tokens(self, answer_token: str, negative_token: str | None = None) -> LoadedLLM:
        """The same model with other answer tokens (e.g. "Yes"/"No" for a chat-templated prompt)."""
        return dataclasses.replace(
            self,
            answer_token_id=single_token_id(self.tokenizer, answer_token, "answer token"),
            negative_token_id=(
                None
                if negative_token is None
                else single_token_id(self.tokenizer, negative_token, "negative token")
            ),
        )

    def describe(self) -> dict[str, Any]:
        """JSON-serialisable facts for manifests: identity, weight hash, answer-token ids, sizes, dtype."""
        return {
            "identity": self.identity,
            "weight_hash": self.weight_hash,
            "answer_token_id": self.answer_token_id,
            "negative_token_id": self.negative_token_id,
            "hidden_size": self.hidden_size,
            "num_layers": self.num_layers,
            "vocab_size": int(self.model.config.get_text_config().vocab_size),
            "dtype": str(self.dtype).removeprefix("torch."),
        }


def resolve_dtype(dtype: str | torch.dtype, device: torch.device | str) -> torch.dtype:
    """`auto` → fp32 on CPU, bf16 on CUDA; names ("bfloat16") and torch dtypes pass through."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    if dtype not in _DTYPES:
        raise ModelError(f"unknown dtype '{dtype}'; expected auto, {', '.join(_DTYPES)}")
    return _DTYPES[dtype]


def single_token_id(tokenizer: PreTrainedTokenizerBase, text: str, what: str = "answer token") -> int:
    """The id of `text` when it encodes to exactly one token (no special tokens added); else ModelError."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    if len(ids) == 1:
        return int(ids[0])
    pieces = tokenizer.convert_ids_to_tokens(ids)
    hint = ""
    alternative = text.strip() if text != text.strip() else f" {text}"
    alt_ids = tokenizer.encode(alternative, add_special_tokens=False)
    if len(alt_ids) == 1:
        hint = f"; {alternative!r} is one token (id {alt_ids[0]}) for this tokenizer"
    raise ModelError(
        f"{what} {text!r} must encode to exactly one token, but it becomes {len(ids)} tokens "
        f"{ids} = {pieces}{hint}"
    )


def prepare_tokenizer(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Left padding (the last position is the answer position for every row) and a pad token."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ModelError(
                f"tokenizer {tokenizer.name_or_path!r} has neither a pad nor an eos token to pad with"
            )
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def freeze(model: PreTrainedModel) -> PreTrainedModel:
    """Eval mode and `requires_grad=False` on every parameter: nothing of the base LLM trains."""
    model.eval()
    model.requires_grad_(False)
    return model


def finish_loading(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    answer_token: str,
    negative_token: str | None,
    identity: str,
    weight_hash: str,
    local_dir: Path | None = None,
) -> LoadedLLM:
    """Freeze the model, prepare the tokenizer, resolve the answer tokens: the common end of every loader."""
    freeze(model)
    prepare_tokenizer(tokenizer)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    answer_id = single_token_id(tokenizer, answer_token, "answer token")
    negative_id = (
        None if negative_token is None else single_token_id(tokenizer, negative_token, "negative token")
    )
    return LoadedLLM(
        model=model,
        tokenizer=tokenizer,
        answer_token_id=answer_id,
        negative_token_id=negative_id,
        identity=identity,
        weight_hash=weight_hash,
        hidden_size=int(model.config.get_text_config().hidden_size),
        dtype=next(model.parameters()).dtype,
        local_dir=local_dir,
    )
