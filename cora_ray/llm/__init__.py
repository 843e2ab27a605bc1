"""The frozen base LLM: loading (HF directory, hub id, s3:// prefix, bundled SmolLM2), answer-token ids,
weight hashes, and the tiny in-process LLaMA the tests use.

    from cora_ray.llm import load_llm, tiny_llm
    llm = load_llm(cfg.llm)          # LoadedLLM: model, tokenizer, answer_token_id, weight_hash, ...

Names are imported on first use (PEP 562) so that `cora_ray.llm.cache` & co. load without transformers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cora_ray.llm.loaded import LoadedLLM, single_token_id
    from cora_ray.llm.loading import load_llm
    from cora_ray.llm.tiny import tiny_llm, tiny_tokenizer

_EXPORTS = {
    "LoadedLLM": "cora_ray.llm.loaded",
    "single_token_id": "cora_ray.llm.loaded",
    "load_llm": "cora_ray.llm.loading",
    "tiny_llm": "cora_ray.llm.tiny",
    "tiny_tokenizer": "cora_ray.llm.tiny",
}
__all__ = ["LoadedLLM", "load_llm", "single_token_id", "tiny_llm", "tiny_tokenizer"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'cora_ray.llm' has no attribute {name!r}")
