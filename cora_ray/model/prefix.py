"""A shared prompt prefix: compute a user's prefix keys/values once, score many suffixes against them.

With `model.delta_scope` user_prefix or suffix (docs/method.md §2.5), or a model whose prefix is per user
(TALLRec, zero-shot, CoLLM: `RecModel.prefix_per_user`), the tokens before the target title — the
instruction and the user's history — see a delta that depends on the user alone (G_u, CoLLM's user token)
or none at all.
Their keys and values are then the same for every candidate item of that user, so

    rows ──split_rows──▶ unique prefixes (one per user, history)      suffix tokens per row
                           │ model.encode_prefix (one pass)               │
                           ▼                                               ▼
                         PrefixState (n, kv_heads, P, head_dim) ──select(group of each row)──▶ model.score_suffix

runs the ~150-token prefix once per user instead of once per row; each row runs only its ~30 suffix tokens,
attending to the prefix through the LLM's KV cache. The result equals the same scope's full-prompt forward
(`CoRAModel.forward` with the prefix/suffix mask) within float tolerance (tests/model/test_prefix.py).

Shapes: a prefix batch is left-padded to its longest prefix P; `attention_mask` (n, P) marks the real
tokens. Each row's suffix is left-padded too, so a row reads [pad… prefix | pad… suffix]: the padding in
the middle is masked, and position ids count real tokens only (the prefix's length + the suffix's own).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from cora_ray.data.batching import left_pad
from cora_ray.errors import ModelError


@dataclasses.dataclass
class PrefixState:
    """Computed prefixes: per decoder layer (keys, values), each (n, kv_heads, P, head_dim); the prefix
    mask (n, P) (left padding = 0); `prefix_G` (n, d_model, r) the user-only delta the prefix saw (None for
    the suffix scope, whose prefix is the plain LLM)."""

    layers: list[tuple[torch.Tensor, torch.Tensor]]
    attention_mask: torch.Tensor
    prefix_G: torch.Tensor | None

    def __len__(self) -> int:
        return int(self.attention_mask.shape[0])

    @property
    def nbytes(self) -> int:
        """Bytes held by the keys, values, mask and G."""
        tensors = [t for kv in self.layers for t in kv] + [self.attention_mask]
        if self.prefix_G is not None:
            tensors.append(self.prefix_G)
        return int(sum(t.numel() * t.element_size() for t in tensors))

    def select(self, index: torch.Tensor) -> PrefixState:
        """Rows `index` (B,) of this state (repeats allowed: one prefix per row of a suffix batch)."""
        index = index.to(self.attention_mask.device)
        return PrefixState(
            [(k.index_select(0, index), v.index_select(0, index)) for k, v in self.layers],
            self.attention_mask.index_select(0, index),
            None if self.prefix_G is None else self.prefix_G.index_select(0, index),
        )

    def entry(self, i: int) -> PrefixState:
        """Prefix `i` alone, without its left padding (what a per-user cache stores)."""
        mask = self.attention_mask[i]
        start = int(mask.shape[0] - int(mask.sum()))
        return PrefixState(
            [(k[i : i + 1, :, start:].clone(), v[i : i + 1, :, start:].clone()) for k, v in self.layers],
            mask[None, start:].clone(),
            None if self.prefix_G is None else self.prefix_G[i : i + 1].clone(),
        )

    @staticmethod
    def stack(entries: Sequence[PrefixState]) -> PrefixState:
        """Single-prefix entries (`entry`) → one state, right-aligned (left-padded) to the longest."""
        if not entries:
            raise ModelError("no prefixes to stack")
        width = max(e.attention_mask.shape[1] for e in entries)
        n = len(entries)
        layers = []
        for layer in range(len(entries[0].layers)):
            k0, v0 = entries[0].layers[layer]
            keys = k0.new_zeros((n, k0.shape[1], width, k0.shape[3]))
            values = v0.new_zeros((n, v0.shape[1], width, v0.shape[3]))
            for j, e in enumerate(entries):
                k, v = e.layers[layer]
                keys[j, :, width - k.shape[2] :] = k[0]
                values[j, :, width - v.shape[2] :] = v[0]
            layers.append((keys, values))
        mask = entries[0].attention_mask.new_zeros((n, width))
        for j, e in enumerate(entries):
            mask[j, width - e.attention_mask.shape[1] :] = 1
        has_g = [e.prefix_G is not None for e in entries]
        if any(has_g) and not all(has_g):
            raise ModelError("cannot stack prefixes with and without a user delta (different scopes)")
        prefix_G = torch.cat([e.prefix_G for e in entries]) if all(has_g) else None  # type: ignore[misc]
        return PrefixState(layers, mask, prefix_G)


@dataclasses.dataclass
class SplitRows:
    """Rows split at their suffix: `prefixes` the unique prefix token lists, `groups` (n_rows,) the prefix of
    each row, `suffixes` each row's suffix tokens, `first_row` (n_prefixes,) a row of each prefix (its user
    and history drive the prefix's delta). Token positions the rows carried (CoLLM's user_pos, item_pos) land
    where they point: `prefix_positions` {name: (n_prefixes,)} indices into the prefix, `suffix_positions`
    {name: (n_rows,)} indices into the row's suffix."""

    prefixes: list[list[int]]
    groups: np.ndarray
    suffixes: list[list[int]]
    first_row: np.ndarray
    prefix_positions: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    suffix_positions: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)


def split_rows(
    token_rows: Sequence[Sequence[int]],
    suffix_pos: Sequence[int],
    user_ids: Sequence[int],
    histories: np.ndarray,
    positions: dict[str, Sequence[int]] | None = None,
) -> SplitRows:
    """Unpadded token rows + each row's suffix position → unique prefixes and per-row suffixes; `positions`
    {name: (n_rows,) token indices} each lie in every row's prefix or in every row's suffix.

    Two rows share a prefix when their user, their (padded) history and their prefix tokens are equal: the
    user and history decide G_u (the CF vector of a sequence backbone is its history's encoding), the tokens
    the text (the token budget may have cut a different number of titles for a long target)."""
    keys: dict[tuple, int] = {}
    prefixes: list[list[int]] = []
    first: list[int] = []
    groups = np.empty(len(token_rows), dtype=np.int64)
    suffixes: list[list[int]] = []
    for r, (row, at) in enumerate(zip(token_rows, suffix_pos, strict=True)):
        at = int(at)
        if not 0 < at < len(row):
            raise ModelError(
                f"row {r}: suffix position {at} is outside its {len(row)} tokens (the prefix and the suffix "
                "must both be non-empty)"
            )
        prefix = [int(t) for t in row[:at]]
        key = (int(user_ids[r]), np.asarray(histories[r]).tobytes(), tuple(prefix))
        g = keys.get(key)
        if g is None:
            g = keys[key] = len(prefixes)
            prefixes.append(prefix)
            first.append(r)
        groups[r] = g
        suffixes.append([int(t) for t in row[at:]])
    first_row = np.asarray(first, dtype=np.int64)
    in_prefix: dict[str, np.ndarray] = {}
    in_suffix: dict[str, np.ndarray] = {}
    at_all = np.asarray(suffix_pos, dtype=np.int64)
    for name, pos in (positions or {}).items():
        pos = np.asarray(pos, dtype=np.int64)
        before = pos < at_all
        if before.all():
            in_prefix[name] = pos[first_row]  # rows of one prefix share its tokens, so its positions
        elif not before.any():
            in_suffix[name] = pos - at_all
        else:
            raise ModelError(
                f"{name} lies in the prefix of some rows and in the suffix of others (rows "
                f"{np.flatnonzero(before)[:3].tolist()} vs {np.flatnonzero(~before)[:3].tolist()}): it cannot be "
                "placed in a shared prefix"
            )
    return SplitRows(prefixes, groups, suffixes, first_row, in_prefix, in_suffix)


def left_padded_tensors(
    token_rows: Sequence[Sequence[int]],
    pad_id: int,
    device: torch.device | str,
    positions: dict[str, Sequence[int]] | None = None,
) -> dict[str, torch.Tensor]:
    """Token rows → input_ids, attention_mask (n, T) left-padded to the longest row (`batching.left_pad`), and
    each of `positions` shifted by its row's padding, as tensors on `device`: a prefix batch or a suffix batch."""
    return {k: torch.from_numpy(v).to(device) for k, v in left_pad(token_rows, pad_id, positions).items()}


def unpad_rows(batch_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[list[int]]:
    """A left-padded (B, T) batch → each row's real tokens."""
    lengths = attention_mask.sum(1).tolist()
    width = batch_ids.shape[1]
    ids = batch_ids.tolist()
    return [row[width - int(n) :] for row, n in zip(ids, lengths, strict=True)]


@functools.cache
def _cache_argument(forward_owner: type) -> str:
    """The decoder's keyword for a KV cache: `cache` (transformers >= 5.2x) or `past_key_values` (older,
    e.g. a GPU image's transformers)."""
    params = inspect.signature(forward_owner.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def cache_kwarg(decoder: Any, cache: Any) -> dict[str, Any]:
    """{keyword: cache} for `decoder(...)` in this transformers version."""
    return {_cache_argument(type(decoder)): cache}


def kv_layers(output: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per-layer (keys, values) of a decoder output computed with use_cache=True."""
    name = "cache" if "cache" in output else "past_key_values"
    cache = output[name]
    if cache is None:
        raise ModelError("the decoder returned no KV cache (use_cache=True was ignored)")
    return [(layer.keys, layer.values) for layer in cache.layers]
