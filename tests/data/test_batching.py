"""cora_ray/data/batching.py owns rows → model batch: padding to the batch's own longest row, one history
padding, one length bucketing, and the same input_ids on the training path (Ray Data) and the scorer's."""

from __future__ import annotations

import ast
import types
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from cora_ray.config import PromptConfig
from cora_ray.data.batching import (
    collate,
    encode_rows,
    fixed_chunks,
    history_arrays,
    left_pad,
    length_chunks,
    length_order,
    pad_histories,
    prompt_lengths,
    table_batch,
    title_char_costs,
    to_arrow,
)
from cora_ray.data.prompts import PromptEncoder
from cora_ray.errors import DataError
from cora_ray.infer.scorer import Scorer
from cora_ray.llm.tiny import tiny_tokenizer
from cora_ray.train.pipeline import EncodePrompts, collate_left_padded

ROOT = Path(__file__).resolve().parents[2]
TITLES = ["", "Toy Story (1995)", "Jumanji (1995)", "Heat (1995)", "Star Wars (1977)", "The Last King", "Up"]
ROWS = {
    "user_id": np.array([5, 6, 7, 8], dtype=np.int64),
    "item_id": np.array([2, 6, 4, 1], dtype=np.int64),
    "label": np.array([1, 0, 1, 0], dtype=np.int8),
    "history": [[1, 3, 4, 5, 2], [], [6], [2, 3]],
}


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


def _ray_numpy_batch(table: pa.Table) -> dict[str, np.ndarray]:
    """What Ray Data's numpy batch format hands a collate_fn for an Arrow block (list columns → object arrays)."""
    return {name: table[name].to_numpy(zero_copy_only=False) for name in table.column_names}


@pytest.mark.parametrize("placeholders", [False, True])
def test_a_batch_is_left_padded_to_its_own_longest_row_not_to_max_prompt_tokens(tokenizer, placeholders):
    enc = PromptEncoder(
        tokenizer, PromptConfig(max_prompt_tokens=200), TITLES, collab_placeholders=placeholders
    )
    rows = encode_rows(enc, ROWS)
    lengths = [len(r) for r in rows["input_ids"]]
    assert len(set(lengths)) > 1  # mixed lengths
    batch = collate(rows, tokenizer.pad_token_id)
    width = batch["input_ids"].shape[1]
    assert width == max(lengths) < 200
    for r, row in enumerate(rows["input_ids"]):
        n = len(row)
        assert batch["input_ids"][r, width - n :].tolist() == row.tolist()
        assert (batch["input_ids"][r, : width - n] == tokenizer.pad_token_id).all()
        assert batch["attention_mask"][r].tolist() == [0] * (width - n) + [1] * n
    if placeholders:  # positions follow the padding and still point at the placeholder token
        for r in range(len(lengths)):
            for key in ("user_pos", "item_pos"):
                assert int(batch["input_ids"][r, batch[key][r]]) == enc.placeholder_id
    assert batch["label"].dtype == torch.float32 and batch["history"].shape == (4, 25)


@pytest.mark.parametrize("placeholders", [False, True])
def test_the_train_path_and_the_scorer_path_build_identical_batches(tokenizer, placeholders):
    enc = PromptEncoder(
        tokenizer, PromptConfig(max_prompt_tokens=200), TITLES, collab_placeholders=placeholders
    )
    # training: the Ray Data UDF → Arrow block in the object store → the worker's collate_fn
    table = EncodePrompts(lambda: enc)({k: v for k, v in ROWS.items()})
    assert table.schema.field("input_ids").type == pa.list_(pa.int32())
    train = collate_left_padded(_ray_numpy_batch(table), tokenizer.pad_token_id)
    # scoring: Scorer.encode on the same rows (only the encoder and titles of a scorer are involved)
    scorer = types.SimpleNamespace(encoder=enc, titles=TITLES)
    scorer._check_items = types.MethodType(Scorer._check_items, scorer)
    scorer._encode = types.MethodType(Scorer._encode, scorer)
    scored = Scorer.encode(scorer, ROWS["user_id"], ROWS["item_id"], ROWS["history"])
    assert set(scored) == set(train) - {"label"}
    for key, value in scored.items():
        assert torch.equal(value, train[key]), key
    # and PromptEncoder.encode (the prompts' own batch form) gives the same ids
    assert np.array_equal(
        enc.encode(ROWS["history"], ROWS["item_id"])["input_ids"], scored["input_ids"].numpy()
    )


def test_table_batch_is_the_ingest_batch_of_the_chosen_rows(tokenizer):
    """The Ray-free scripts' batches (rows of a split table) equal the training ingest's for the same rows."""
    enc = PromptEncoder(tokenizer, PromptConfig(max_prompt_tokens=200), TITLES)
    table = pa.table(
        {k: (pa.array(v, type=pa.list_(pa.int64())) if k == "history" else v) for k, v in ROWS.items()}
    )
    idx = np.array([2, 0, 3])
    got = table_batch(enc, table, idx)
    picked = {k: (np.asarray(v)[idx] if k != "history" else [v[i] for i in idx]) for k, v in ROWS.items()}
    want = collate(encode_rows(enc, picked), tokenizer.pad_token_id)
    assert set(got) == set(want) and "label" in got
    for key, value in want.items():
        assert torch.equal(got[key], value), key
    assert got["user_id"].tolist() == [7, 5, 8]


def test_left_pad_shifts_positions_by_each_rows_padding():
    out = left_pad([[5, 6, 7], [8, 9, 10, 11], [12]], pad_id=0, positions={"user_pos": [0, 1, 0]})
    assert out["input_ids"].tolist() == [[0, 5, 6, 7], [8, 9, 10, 11], [0, 0, 0, 12]]
    assert out["attention_mask"].tolist() == [[0, 1, 1, 1], [1, 1, 1, 1], [0, 0, 0, 1]]
    assert out["user_pos"].tolist() == [1, 1, 3]


def test_bucketing_groups_rows_by_length(tokenizer):
    enc = PromptEncoder(tokenizer, PromptConfig(max_prompt_tokens=200), TITLES)
    rng = np.random.default_rng(0)
    items = rng.integers(1, len(TITLES), 64)
    hists = [list(rng.integers(1, len(TITLES), rng.integers(0, 12))) for _ in range(64)]
    est = prompt_lengths(enc.title_costs, items, hists, enc.cfg.max_history)
    order = length_order(est)
    assert np.all(np.diff(est[order]) >= 0)
    # batches of neighbours in that order pad less than batches in the given order
    real = np.array([len(r) for r in enc.token_rows(hists, items).ids])

    def padding(idx: np.ndarray) -> int:
        return sum(int(real[b].max() * len(b) - real[b].sum()) for b in np.split(idx, 8))

    assert padding(order) < padding(np.arange(64)) / 2
    # stable: equal lengths keep their given order
    assert length_order(np.array([3, 1, 3, 1])).tolist() == [1, 3, 0, 2]
    # the title-character estimate (the evaluation driver has no tokenizer) saves padding too
    chars = prompt_lengths(title_char_costs(TITLES), items, hists, enc.cfg.max_history)
    assert padding(length_order(chars)) < padding(np.arange(64)) / 2


def test_history_padding_has_one_implementation_for_every_input_form():
    lists = [[3, 4], [], [1, 2, 3, 4, 5], [7]]
    want = [[0, 0, 3, 4], [0, 0, 0, 0], [2, 3, 4, 5], [0, 0, 0, 7]]
    arrow = pa.array(lists, type=pa.list_(pa.int32()))
    padded = np.array([[0, 0, 3, 4], [0, 0, 0, 0], [2, 3, 4, 5], [0, 0, 0, 7]])
    objects = np.empty(4, dtype=object)
    objects[:] = [np.array(h, dtype=np.int64) for h in lists]
    for form in (
        lists,
        arrow,
        arrow.slice(0),
        pa.chunked_array([arrow.slice(0, 2), arrow.slice(2)]),
        padded,
        objects,
    ):
        assert pad_histories(form, 4).tolist() == want
    assert pad_histories(torch.as_tensor(padded), 4).tolist() == want
    # an Arrow column holding padding zeros drops them like the other forms
    assert pad_histories(pa.array([[0, 3, 4]], type=pa.list_(pa.int64())), 4).tolist() == [[0, 0, 3, 4]]
    assert pad_histories(lists, 0).shape == (4, 0)
    assert [h.tolist() for h in history_arrays(padded)] == [h[-4:] for h in lists]


def test_no_other_module_pads_histories_pads_tokens_or_orders_by_length():
    """The duplicates this module replaced stay gone: no function of these names outside batching.py."""
    owned = {"pad_history", "pad_histories", "left_pad", "collate", "trim_left_padding", "length_order"}
    found = []
    for path in sorted((ROOT / "cora_ray").rglob("*.py")):
        if path.name == "batching.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name in owned:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}")
    assert not found, found


def test_arrow_rows_round_trip_without_padding(tokenizer):
    enc = PromptEncoder(tokenizer, PromptConfig(max_prompt_tokens=200), TITLES, collab_placeholders=True)
    rows = encode_rows(enc, ROWS)
    table = to_arrow(rows)
    back = _ray_numpy_batch(table)
    assert [r.tolist() for r in back["input_ids"]] == [r.tolist() for r in rows["input_ids"]]
    assert table["input_ids"].combine_chunks().value_lengths().to_pylist() == [
        len(r) for r in rows["input_ids"]
    ]


def test_collate_refuses_an_already_padded_batch():
    padded = {
        "input_ids": np.array([[0, 5, 6]]),
        "attention_mask": np.array([[0, 1, 1]]),
        "user_id": np.array([1]),
    }
    with pytest.raises(DataError, match="unpadded token rows"):
        collate(padded, pad_id=0)


def _chunk_cost(lengths: np.ndarray, chunks: list[tuple[int, int]], overhead: float) -> float:
    return sum((b - a) * lengths[b - 1] + overhead for a, b in chunks)


def test_length_chunks_cut_at_a_jump_in_length_and_never_exceed_max_rows():
    short, long_ = [60] * 6, [100] * 4
    lengths = np.array(short + long_)
    # fixed chunks of 10 pad the six short rows to 100; a cut at the jump saves 6 × 40 = 240 > one forward (40)
    assert length_chunks(lengths, 10, overhead_tokens=40) == [(0, 6), (6, 10)]
    # when a forward costs more than the padding it saves, one chunk
    assert length_chunks(lengths, 10, overhead_tokens=1_000) == [(0, 10)]
    # equal lengths: as few forwards as max_rows allows
    assert length_chunks(np.full(20, 75), 10) == [(0, 10), (10, 20)]
    assert length_chunks(np.array([], dtype=np.int64), 10) == []


def test_length_chunks_is_the_cheapest_cut_by_brute_force():
    import itertools

    rng = np.random.default_rng(0)
    for _ in range(30):
        n, cap, overhead = int(rng.integers(1, 9)), int(rng.integers(1, 5)), float(rng.integers(0, 80))
        lengths = np.sort(rng.integers(20, 140, size=n))
        got = length_chunks(lengths, cap, overhead)
        assert [b - a for a, b in got] and all(0 < b - a <= cap for a, b in got)
        assert (
            got[0][0] == 0
            and got[-1][1] == n
            and all(x[1] == y[0] for x, y in zip(got, got[1:], strict=False))
        )
        best = min(
            _chunk_cost(lengths, list(zip((0, *cuts), (*cuts, n), strict=True)), overhead)
            for k in range(n)
            for cuts in itertools.combinations(range(1, n), k)
            if all(b - a <= cap for a, b in zip((0, *cuts), (*cuts, n), strict=True))
        )
        assert _chunk_cost(lengths, got, overhead) == pytest.approx(best)


def test_length_chunks_refuse_unsorted_rows_and_fixed_chunks_cover_every_row_once():
    with pytest.raises(ValueError, match="ascending length order"):
        length_chunks(np.array([5, 3]), 4)
    with pytest.raises(ValueError, match="max_rows must be >= 1"):
        length_chunks(np.array([3, 5]), 0)
    chunks = fixed_chunks(7, 3)
    assert [c.tolist() for c in chunks] == [[0, 1, 2], [3, 4, 5], [6]]
