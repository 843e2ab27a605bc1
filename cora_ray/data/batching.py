"""Rows → model batch, in one place (docs/architecture.md): history padding, prompt tokens, left padding to the
batch's own longest row, and length bucketing. Training ingest (cora_ray/train/pipeline.py), the scorer
(cora_ray/infer/scorer.py), the CF scorer, evaluation and serving all go through these functions, so the
same rows give the same input_ids everywhere.

    rows (user_id, item_id, label, history)
      │ encode_rows(encoder, rows)          prompt text + tokens (cora_ray/data/prompts.py), NOT padded:
      ▼                                     input_ids list<int32> per row, user_pos/item_pos in the row
    token rows  ── Ray Data object store (training) or in process (scoring) ──
      │ collate(rows, pad_id)               one model batch: left-padded to ITS longest row, positions
      ▼                                     shifted by each row's padding, torch tensors
    {input_ids (B, T), attention_mask (B, T), user_id, item_id (B,), history (B, H), label (B,), [user_pos, item_pos]}

Nothing is padded to a fixed maximum (`prompt.max_prompt_tokens` only caps a prompt's length): a batch is
as wide as its longest prompt. `length_order` sorts rows by an estimate of their prompt length so that a
batch of neighbours pads little.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import torch

from cora_ray.data.protocol import HISTORY_LEN
from cora_ray.errors import DataError

if TYPE_CHECKING:
    from cora_ray.data.prompts import PromptEncoder

# token indices inside a row's input_ids, shifted by the padding when rows are padded into a batch:
# user_pos / item_pos the CoLLM placeholders, suffix_pos the first item-dependent token (a shared prefix)
POSITION_COLUMNS = ("user_pos", "item_pos", "suffix_pos")
ROW_COLUMNS = ("user_id", "item_id", "label", "history")  # the protocol columns a row carries


# ---------------------------------------------------------------------------------------------------------
# histories
# ---------------------------------------------------------------------------------------------------------


def history_arrays(histories: Any) -> list[np.ndarray]:
    """Item-id histories as a list of int64 arrays with the padding id 0 removed, oldest first.

    Accepts a list of lists/arrays (None = empty), a 2-D array or tensor (left-padded with 0), a numpy
    object array of arrays (Ray Data's form of a list column) or a pyarrow list array.
    """
    if isinstance(histories, torch.Tensor):
        histories = histories.detach().cpu().numpy()
    if isinstance(histories, pa.ChunkedArray):
        histories = histories.combine_chunks()
    if isinstance(histories, (pa.ListArray, pa.LargeListArray)):
        if histories.null_count:
            histories = pa.compute.fill_null(histories, pa.scalar([], type=histories.type))
        offsets = histories.offsets.to_numpy()
        values = histories.flatten().to_numpy(zero_copy_only=False).astype(np.int64)
        out = [values[offsets[i] : offsets[i + 1]] for i in range(len(histories))]
    elif isinstance(histories, np.ndarray) and histories.ndim == 2:
        out = list(histories.astype(np.int64, copy=False))
    else:
        out = [np.asarray(h if h is not None else [], dtype=np.int64).reshape(-1) for h in histories]
    return [h[h != 0] for h in out]


def pad_histories(histories: Any, length: int = HISTORY_LEN) -> np.ndarray:
    """(B, length) int64: the last `length` ids of each history (oldest first), left-padded with 0.

    The one history padding of the project (model batches, CF training data, the CF scorer). A pyarrow list
    column without padding ids is padded in one vectorised step (CF training reads whole splits)."""
    if isinstance(histories, pa.ChunkedArray):
        histories = histories.combine_chunks()
    if isinstance(histories, (pa.ListArray, pa.LargeListArray)) and len(histories):
        if histories.null_count:
            histories = pa.compute.fill_null(histories, pa.scalar([], type=histories.type))
        offsets = histories.offsets.to_numpy().astype(np.int64)
        values = histories.values.to_numpy(zero_copy_only=False).astype(np.int64)
        values = values[offsets[0] : offsets[-1]]
        offsets = offsets - offsets[0]
        if length and not (values == 0).any():
            start, end = offsets[:-1], offsets[1:]
            idx = end[:, None] - length + np.arange(length)[None, :]
            valid = idx >= start[:, None]
            out = np.zeros((len(histories), length), dtype=np.int64)
            out[valid] = values[idx[valid]]
            return out
    rows = history_arrays(histories)
    out = np.zeros((len(rows), length), dtype=np.int64)
    for i, h in enumerate(rows):
        h = h[max(0, len(h) - length) :] if length else h[:0]
        if len(h):
            out[i, length - len(h) :] = h
    return out


# ---------------------------------------------------------------------------------------------------------
# tokens: rows → unpadded token rows → one left-padded batch
# ---------------------------------------------------------------------------------------------------------


def left_pad(
    token_rows: Sequence[Sequence[int]], pad_id: int, positions: dict[str, Sequence[int]] | None = None
) -> dict[str, np.ndarray]:
    """Token rows of any lengths → input_ids, attention_mask (B, T) int64 left-padded to the longest row
    (T = that row's length), and each position column (an index into its row) shifted by the row's padding.
    """
    lengths = np.fromiter((len(r) for r in token_rows), dtype=np.int64, count=len(token_rows))
    width = int(lengths.max()) if len(lengths) else 0
    input_ids = np.full((len(token_rows), width), pad_id, dtype=np.int64)
    attention_mask = np.zeros((len(token_rows), width), dtype=np.int64)
    for i, row in enumerate(token_rows):
        if len(row):
            input_ids[i, width - len(row) :] = row
            attention_mask[i, width - len(row) :] = 1
    out = {"input_ids": input_ids, "attention_mask": attention_mask}
    for name, pos in (positions or {}).items():
        out[name] = np.asarray(pos, dtype=np.int64) + (width - lengths)
    return out


def encode_rows(encoder: PromptEncoder, rows: dict[str, Any]) -> dict[str, Any]:
    """Protocol rows (user_id, item_id, history; label when present) → token rows, not padded.

    Returns `input_ids` (a list of int32 arrays, one per row: the prompt's tokens), `user_id`, `item_id`
    (B,) int64, `history` (B, 25) int64 left-padded, `label` (B,) float32 where given, and for CoLLM
    `user_pos`, `item_pos` (B,) int64 — token indices inside each row (before any padding)."""
    for col in ("user_id", "item_id", "history"):
        if col not in rows:
            raise DataError(f"prompt encoding: rows have no '{col}' column (have {sorted(rows)})")
    tokens = encoder.token_rows(rows["history"], rows["item_id"])
    out: dict[str, Any] = {
        "input_ids": [np.asarray(r, dtype=np.int32) for r in tokens.ids],
        "user_id": np.asarray(rows["user_id"], dtype=np.int64),
        "item_id": np.asarray(rows["item_id"], dtype=np.int64),
        "history": pad_histories(rows["history"], HISTORY_LEN),
    }
    if "label" in rows:
        out["label"] = np.asarray(rows["label"], dtype=np.float32)
    for name, pos in tokens.positions.items():
        out[name] = np.asarray(pos, dtype=np.int64)
    return out


def to_arrow(token_rows: dict[str, Any]) -> pa.Table:
    """`encode_rows`' output as an Arrow table for Ray Data's object store: input_ids list<int32> (each row
    its own length), history list<int64>, the rest plain columns."""
    columns = {}
    for name, value in token_rows.items():
        if name == "input_ids":
            columns[name] = pa.array(
                [np.asarray(r, dtype=np.int32) for r in value], type=pa.list_(pa.int32())
            )
        elif name == "history":
            columns[name] = pa.array(list(np.asarray(value, dtype=np.int64)), type=pa.list_(pa.int64()))
        else:
            columns[name] = pa.array(np.asarray(value))
    return pa.table(columns)


def _row_list(column: Any) -> list[np.ndarray]:
    """A token column as a list of 1-D arrays (a list, an object array of ragged rows or a 2-D array)."""
    if isinstance(column, (pa.Array, pa.ChunkedArray)):
        column = column.to_numpy(zero_copy_only=False)
    return [np.asarray(r) for r in column]


def collate(token_rows: dict[str, Any], pad_id: int) -> dict[str, torch.Tensor]:
    """Token rows (`encode_rows`' output, or a Ray Data numpy batch of it) → one model batch of tensors:
    input_ids / attention_mask (B, T) left-padded to this batch's longest row, positions shifted with the
    padding, ids and history int64, label float32."""
    if "attention_mask" in token_rows:
        raise DataError(
            "collate takes unpadded token rows (cora_ray/data/batching.py encode_rows: input_ids one array "
            "per row, no attention_mask); got an already padded batch"
        )
    ids = _row_list(token_rows["input_ids"])
    positions = {k: token_rows[k] for k in POSITION_COLUMNS if k in token_rows}
    out: dict[str, torch.Tensor] = {
        k: torch.from_numpy(v) for k, v in left_pad(ids, pad_id, positions).items()
    }
    for name, value in token_rows.items():
        if name in out or name == "input_ids":
            continue
        if name == "history":
            out[name] = torch.from_numpy(
                np.stack(_row_list(value)).astype(np.int64, copy=False).reshape(len(ids), -1)
            )
        elif name == "label":
            out[name] = torch.from_numpy(np.array(value, dtype=np.float32))  # a writable copy
        else:
            out[name] = torch.from_numpy(np.array(value, dtype=np.int64))
    return out


def model_batch(
    encoder: PromptEncoder, user_ids: Any, item_ids: Any, histories: Any
) -> dict[str, torch.Tensor]:
    """Rows → one model batch in process (scorer, serving): `collate(encode_rows(...))`, exactly the tensors
    the training path builds from the same rows."""
    rows = {"user_id": user_ids, "item_id": item_ids, "history": histories}
    return collate(encode_rows(encoder, rows), encoder.tokenizer.pad_token_id)


def table_batch(encoder: PromptEncoder, table: pa.Table, idx: Any) -> dict[str, torch.Tensor]:
    """Rows `idx` of a protocol split table (user_id, item_id, label, history) → one labelled model batch on
    CPU: `collate(encode_rows(...))`, as the training ingest builds it (for the scripts that train without Ray)."""
    idx = np.asarray(idx, dtype=np.int64)
    rows = {
        "user_id": table["user_id"].to_numpy()[idx],
        "item_id": table["item_id"].to_numpy()[idx],
        "label": table["label"].to_numpy()[idx],
        "history": [table["history"][int(i)].as_py() for i in idx],
    }
    return collate(encode_rows(encoder, rows), encoder.tokenizer.pad_token_id)


# ---------------------------------------------------------------------------------------------------------
# length bucketing
# ---------------------------------------------------------------------------------------------------------


def title_char_costs(titles: Sequence[str]) -> np.ndarray:
    """A per-item length estimate from titles alone (characters + quotes and separator), for callers without
    a tokenizer; index = item id, with one extra entry for ids past the end."""
    return np.array([len(t) + 4 for t in titles] + [4], dtype=np.int64)


def prompt_lengths(costs: np.ndarray, item_ids: Any, histories: Any, max_history: int) -> np.ndarray:
    """(n,) estimated prompt length of each row: the target's cost plus its last `max_history` history items'
    (costs per item id: `PromptEncoder.title_costs` in tokens, or `title_char_costs`)."""
    costs = np.asarray(costs, dtype=np.int64)
    hi = len(costs) - 1
    items = np.clip(np.asarray(item_ids, dtype=np.int64).reshape(-1), 0, hi)
    k = int(max_history)
    hist = [h[max(0, len(h) - k) :] if k else h[:0] for h in history_arrays(histories)]
    if len(hist) != len(items):
        raise DataError(f"{len(hist)} histories for {len(items)} rows")
    return costs[items] + np.fromiter(
        (int(costs[np.clip(h, 0, hi)].sum()) for h in hist), dtype=np.int64, count=len(items)
    )


def length_order(lengths: np.ndarray) -> np.ndarray:
    """A stable row order by length: consecutive rows (one batch) have similar prompt lengths."""
    return np.argsort(np.asarray(lengths), kind="stable")


def fixed_chunks(n: int, max_rows: int) -> list[np.ndarray]:
    """Row indices 0..n-1 in the given order, `max_rows` per forward pass (the last one shorter)."""
    return [np.arange(s, min(s + max_rows, n)) for s in range(0, n, max_rows)]


# A forward pass's fixed cost in prompt tokens' worth of compute: measured on the replica's path (SmolLM2-135M,
# one CPU thread, rows of equal length): 20 rows as 10 + 10 took 0.05 s less than as 5 × 4 and 0.07 s per
# forward less than as 2 × 10, where a row of ~140 tokens costs ~0.2 s — about 40 tokens per forward
# (docs/deploy.md §6). It only decides where `length_chunks` cuts; a different value changes speed, not scores.
FORWARD_OVERHEAD_TOKENS = 40


def length_chunks(
    sorted_lengths: np.ndarray, max_rows: int, overhead_tokens: float = FORWARD_OVERHEAD_TOKENS
) -> list[tuple[int, int]]:
    """Forward chunks [start, end) over rows already in length order (`length_order`), at most `max_rows`
    rows each, chosen to minimise the tokens the chunks compute — each chunk pads to its longest row —
    plus `overhead_tokens` per forward pass. Fixed chunks of `max_rows` pad a short row to a long neighbour
    across a jump in length; this cuts at the jump when the saved padding outweighs one more forward."""
    lengths = np.asarray(sorted_lengths, dtype=np.float64).reshape(-1)
    n, cap = len(lengths), int(max_rows)
    if cap < 1:
        raise ValueError(f"max_rows must be >= 1, got {max_rows}")
    if n and np.any(np.diff(lengths) < 0):
        raise ValueError("length_chunks needs rows in ascending length order (length_order)")
    best = np.full(n + 1, np.inf)
    best[0] = 0.0
    cut = np.zeros(n + 1, dtype=np.int64)
    for end in range(1, n + 1):
        # rows [start, end) pad to lengths[end - 1]; the longest chunk first, so ties keep fewer forwards
        for start in range(max(0, end - cap), end):
            cost = best[start] + (end - start) * lengths[end - 1] + overhead_tokens
            if cost < best[end]:
                best[end], cut[end] = cost, start
    chunks: list[tuple[int, int]] = []
    end = n
    while end > 0:
        chunks.append((int(cut[end]), end))
        end = int(cut[end])
    return chunks[::-1]
