"""docs/method.md §3 prompts: exact text, history selection, token budget, chat template, CoLLM placeholders,
left padding, and the Ray Data batch form."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from cora_ray.config import PromptConfig
from cora_ray.data.batching import history_arrays
from cora_ray.data.prompts import PromptEncoder, build_prompt, format_history
from cora_ray.errors import ConfigError, DataError
from cora_ray.llm.tiny import tiny_tokenizer

SPEC_EXAMPLE = (
    '#Question: A user has given high ratings to the following movies: "Toy Story (1995)", "Heat (1995)". '
    "Leverage the information to predict whether the user would enjoy the movie titled "
    '"Jumanji (1995)"? Answer with "Yes" or "No". \\n#Answer:'
)
# id -> title; 0 is padding. Words the tiny tokenizer knows, so that every title has a distinct length.
TITLES = [
    "",
    "Toy Story (1995)",
    "Jumanji (1995)",
    "Heat (1995)",
    "Star Wars (1977)",
    "The Last King",
    "Love Story 2",
    "Blue Moon",
    "The Dark Night (2008)",
    "Life",
    "Big City Girl",
    "Red Sky",
    "Old Man",
]


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


def tokens(tokenizer, text: str, special: bool = True) -> list[int]:
    return tokenizer(text, add_special_tokens=special)["input_ids"]


# ------------------------------------------------------------------------------------------------------
# text
# ------------------------------------------------------------------------------------------------------


def test_build_prompt_is_the_spec_text():
    prompt = build_prompt(["Toy Story (1995)", "Heat (1995)"], "Jumanji (1995)", PromptConfig())
    assert prompt == SPEC_EXAMPLE
    assert "\\n#Answer:" in prompt and "\n" not in prompt  # a literal backslash-n, as the authors wrote


def test_book_domain_and_custom_placeholder():
    cfg = PromptConfig(domain="book", domain_plural="books", empty_history="none")
    prompt = build_prompt([], "Dune", cfg)
    assert "the following books: none. Leverage" in prompt
    assert 'enjoy the book titled "Dune"?' in prompt


def test_named_template_target_last_puts_only_the_title_after_the_split(tokenizer):
    """`prompt.template: target_last` resolves to the title-last question; split at the target, the per-item
    suffix is the quoted title and the final stop (chat tail aside), a third of the authors' suffix."""
    cfg = PromptConfig(template="target_last", chat_template=True)
    assert cfg.template.endswith("The {domain} is titled {target}.")
    prompt = build_prompt(["Toy Story (1995)"], "Jumanji (1995)", cfg)
    assert prompt.endswith('answer with "Yes" or "No". The movie is titled "Jumanji (1995)".')
    assert PromptConfig(template="authors").template == PromptConfig().template
    suffix_len = {}
    for name in ("authors", "target_last"):
        enc = PromptEncoder(
            tokenizer, PromptConfig(template=name, chat_template=True), TITLES, split_suffix=True
        )
        rows = enc.token_rows([np.array([2, 3])], [1])
        suffix = tokenizer.decode(rows.ids[0][rows.positions["suffix_pos"][0] :])
        assert suffix.startswith('" Toy Story ( 1 9 9 5 ) "'), suffix
        suffix_len[name] = len(rows.ids[0]) - rows.positions["suffix_pos"][0]
    assert suffix_len["target_last"] < suffix_len["authors"] - 10


def test_empty_history_uses_the_placeholder():
    assert "the following movies: unkow. Leverage" in build_prompt([], "Heat (1995)", PromptConfig())
    assert format_history(["A", "B"], PromptConfig(max_history=0)) == "unkow"


def test_history_keeps_the_last_max_history_titles_oldest_first():
    titles = [f"T{i}" for i in range(12)]
    assert format_history(titles, PromptConfig()) == ", ".join(f'"T{i}"' for i in range(2, 12))
    # fewer than max_history: all of them (9 of 10 once kept only the last one)
    assert format_history(titles[:9], PromptConfig()) == ", ".join(f'"T{i}"' for i in range(9))
    assert format_history(titles[:9], PromptConfig(max_history=3)) == '"T6", "T7", "T8"'


def test_template_fields_are_checked():
    bad = PromptConfig(template="{history} {target} {age}")
    with pytest.raises(ConfigError, match=r"unsupported field \{age\}"):
        build_prompt([], "x", bad)


def test_placeholders_go_after_a_user_and_after_the_target():
    prompt = build_prompt(["Heat (1995)"], "Jumanji (1995)", PromptConfig(), placeholders=("<U>", "<I>"))
    assert prompt.startswith("#Question: A user <U> has given high ratings")
    assert 'titled "Jumanji (1995)" <I>? Answer' in prompt
    explicit = PromptConfig(template="{user} liked {history}; {target} is {item}.")
    assert build_prompt(["a"], "b", explicit, placeholders=("<U>", "<I>")) == '<U> liked "a"; "b" is <I>.'
    assert build_prompt(["a"], "b", explicit) == 'liked "a"; "b" is.'


# ------------------------------------------------------------------------------------------------------
# encoding
# ------------------------------------------------------------------------------------------------------


def test_encode_left_pads_and_each_row_is_its_prompt(tokenizer):
    enc = PromptEncoder(tokenizer, PromptConfig(), TITLES)
    out = enc.encode([[1, 3], [], [4, 5, 6, 7]], [2, 1, 8])
    ids, mask = out["input_ids"], out["attention_mask"]
    assert ids.dtype == np.int64 and mask.dtype == np.int64 and ids.shape == mask.shape
    expected = [
        build_prompt(["Toy Story (1995)", "Heat (1995)"], "Jumanji (1995)", PromptConfig()),
        build_prompt([], "Toy Story (1995)", PromptConfig()),
        build_prompt([TITLES[i] for i in (4, 5, 6, 7)], TITLES[8], PromptConfig()),
    ]
    assert expected[0] == SPEC_EXAMPLE
    for row, text in enumerate(expected):
        want = tokens(tokenizer, text)
        n = len(want)
        assert mask[row].sum() == n and mask[row, -n:].all() and not mask[row, :-n].any()
        assert ids[row, -n:].tolist() == want
        assert (ids[row, :-n] == tokenizer.pad_token_id).all()
    assert ids.shape[1] == max(len(tokens(tokenizer, t)) for t in expected)
    assert tokenizer.convert_ids_to_tokens(ids[:, -2:].tolist()[0]) == ["Answer", ":"]


def test_encode_accepts_padded_2d_object_and_arrow_histories(tokenizer):
    enc = PromptEncoder(tokenizer, PromptConfig(), TITLES)
    lists = [[1, 3], [], [4, 5, 6]]
    padded = np.array([[0, 1, 3], [0, 0, 0], [4, 5, 6]], dtype=np.int32)
    objects = np.empty(3, dtype=object)
    objects[:] = [np.array(h, dtype=np.int32) for h in lists]
    arrow = pa.array(lists, type=pa.list_(pa.int32()))
    ref = enc.encode(lists, [2, 1, 8])["input_ids"]
    for form in (padded, objects, arrow, pa.chunked_array([arrow])):
        assert np.array_equal(enc.encode(form, np.array([2, 1, 8]))["input_ids"], ref)
    assert [h.tolist() for h in history_arrays(padded)] == lists


def test_encode_returns_torch_tensors_on_request(tokenizer):
    out = PromptEncoder(tokenizer, PromptConfig(), TITLES).encode([[1]], [2], return_tensors="pt")
    assert isinstance(out["input_ids"], torch.Tensor) and out["input_ids"].dtype == torch.int64


def test_unknown_item_id_is_a_data_error(tokenizer):
    enc = PromptEncoder(tokenizer, PromptConfig(), TITLES)
    with pytest.raises(DataError, match="item id 99 has no title"):
        enc.encode([[1, 99]], [2])


def test_truncation_drops_the_oldest_titles_and_keeps_target_and_question(tokenizer):
    history = list(range(3, 13))  # 10 titles
    full = len(tokens(tokenizer, build_prompt([TITLES[i] for i in history], TITLES[1], PromptConfig())))
    limit = full - 12
    cfg = PromptConfig(max_prompt_tokens=limit)
    out = PromptEncoder(tokenizer, cfg, TITLES).encode([history], [1], return_text=True)
    text = out["text"][0]
    assert out["attention_mask"].sum() <= limit and out["input_ids"].shape[1] <= limit
    assert text.endswith('titled "Toy Story (1995)"? Answer with "Yes" or "No". \\n#Answer:')
    assert text.startswith("#Question: A user has given high ratings to the following movies: ")

    def newest(k: int) -> str:
        return build_prompt([TITLES[i] for i in history[len(history) - k :]], TITLES[1], cfg)

    # the kept titles are the newest ones, in order, and one more would not fit
    kept = next(k for k in range(len(history), 0, -1) if newest(k) == text)
    assert 0 < kept < len(history)
    assert len(tokens(tokenizer, newest(kept + 1))) > limit


def test_truncation_can_drop_every_title(tokenizer):
    bare = len(tokens(tokenizer, build_prompt([], TITLES[8], PromptConfig())))  # the longest title
    cfg = PromptConfig(max_prompt_tokens=bare)
    out = PromptEncoder(tokenizer, cfg, TITLES).encode([[3, 4, 5]], [8], return_text=True)
    assert out["text"][0] == build_prompt([], TITLES[8], cfg)


def test_a_budget_too_small_for_the_target_fails_at_construction(tokenizer):
    with pytest.raises(DataError, match=r"item 8 .*even with no history; raise prompt.max_prompt_tokens"):
        PromptEncoder(tokenizer, PromptConfig(max_prompt_tokens=40), TITLES)


def test_chat_template_wraps_the_question(tokenizer):
    cfg = PromptConfig(chat_template=True)
    enc = PromptEncoder(tokenizer, cfg, TITLES)
    out = enc.encode([[1, 3]], [2], return_text=True)
    question = build_prompt(["Toy Story (1995)", "Heat (1995)"], "Jumanji (1995)", cfg)
    chat = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=False
    )
    assert out["text"][0] == chat
    assert out["input_ids"][0].tolist() == tokens(tokenizer, chat, special=False)  # no second BOS
    tail = tokenizer.convert_ids_to_tokens(out["input_ids"][0, -3:].tolist())
    assert tail == ["<|im_end|>", "<|im_start|>", "assistant"]


def test_chat_template_counts_toward_the_budget(tokenizer):
    history = list(range(3, 13))
    plain = PromptEncoder(tokenizer, PromptConfig(max_prompt_tokens=90), TITLES).encode([history], [1])
    chat = PromptEncoder(tokenizer, PromptConfig(max_prompt_tokens=90, chat_template=True), TITLES).encode(
        [history], [1], return_text=True
    )
    assert chat["attention_mask"].sum() <= 90 and plain["attention_mask"].sum() <= 90
    assert chat["text"][0].count('", "') < 9


@pytest.mark.parametrize("chat", [False, True])
def test_collab_placeholders_positions_point_at_the_placeholder_tokens(tokenizer, chat):
    cfg = PromptConfig(chat_template=chat, max_prompt_tokens=90)
    # titles with unknown words make [UNK] tokens too (the placeholder's own text): positions must not
    # be found by token id alone
    titles = [*TITLES, "Zorro Xanadu"]
    enc = PromptEncoder(tokenizer, cfg, titles, collab_placeholders=True)
    out = enc.encode([[13, 1, 3], [], list(range(3, 13))], [2, 13, 1], return_text=True)
    ids, mask = out["input_ids"], out["attention_mask"]
    rows = np.arange(3)
    assert (ids[rows, out["user_pos"]] == tokenizer.unk_token_id).all()
    assert (ids[rows, out["item_pos"]] == tokenizer.unk_token_id).all()
    assert (mask[rows, out["user_pos"]] == 1).all() and (out["user_pos"] < out["item_pos"]).all()
    for r in range(3):
        before_user = tokenizer.convert_ids_to_tokens(
            ids[r, out["user_pos"][r] - 2 : out["user_pos"][r]].tolist()
        )
        assert before_user == ["A", "user"]
        after_item = tokenizer.convert_ids_to_tokens([int(ids[r, out["item_pos"][r] + 1])])
        assert after_item == ["?"]
        assert tokenizer.convert_ids_to_tokens([int(ids[r, out["item_pos"][r] - 1])]) == ['"']
    assert "A user [UNK] has" in out["text"][0]
    assert mask.sum(1).max() <= 90


def test_ray_batch_call_gives_unpadded_rows(tokenizer):
    cfg = PromptConfig(max_prompt_tokens=120)
    enc = PromptEncoder(tokenizer, cfg, TITLES, collab_placeholders=True)
    history = np.empty(3, dtype=object)
    history[:] = [np.array([1, 3], dtype=np.int32), np.array([], dtype=np.int32), np.arange(1, 31) % 12 + 1]
    batch = {
        "user_id": np.array([5, 6, 7], dtype=np.int32),
        "item_id": np.array([2, 1, 8], dtype=np.int32),
        "label": np.array([1, 0, 1], dtype=np.int8),
        "ts": np.array([1, 2, 3]),
        "history": history,
    }
    out = enc(batch)
    assert set(out) == {
        "input_ids",
        "user_id",
        "item_id",
        "label",
        "history",
        "user_pos",
        "item_pos",
    }
    # unpadded: one token array per row, its own length (batching.collate pads a training batch)
    assert len(out["input_ids"]) == 3 and all(r.dtype == np.int32 for r in out["input_ids"])
    assert out["history"].shape == (3, 25) and out["history"].dtype == np.int64
    assert out["history"][0].tolist() == [0] * 23 + [1, 3] and not out["history"][1].any()
    assert out["history"][2].tolist() == (np.arange(6, 31) % 12 + 1).tolist()  # the last 25
    assert out["label"].dtype == np.float32 and out["label"].tolist() == [1.0, 0.0, 1.0]
    assert out["user_id"].dtype == np.int64 and out["item_id"].tolist() == [2, 1, 8]
    small = enc.encode(batch["history"], batch["item_id"])
    for row, padded, mask in zip(out["input_ids"], small["input_ids"], small["attention_mask"], strict=True):
        assert row.tolist() == padded[mask.astype(bool)].tolist()
    shift = small["input_ids"].shape[1] - np.array([len(r) for r in out["input_ids"]])
    assert (out["user_pos"] + shift).tolist() == small["user_pos"].tolist()
    assert (out["item_pos"] + shift).tolist() == small["item_pos"].tolist()
    with pytest.raises(DataError, match="no 'label' column"):
        enc({k: v for k, v in batch.items() if k != "label"})


def test_encoding_a_large_varied_batch_respects_the_token_limit(tokenizer):
    # its speed is measured in bench/ (bench_train.py: Ray Data ingest rows/s vs training samples/s)
    rng = np.random.default_rng(0)
    histories = [rng.integers(1, len(TITLES), size=rng.integers(0, 25)) for _ in range(512)]
    targets = rng.integers(1, len(TITLES), size=512)
    enc = PromptEncoder(tokenizer, PromptConfig(max_prompt_tokens=80), TITLES)
    out = enc.encode(histories, targets)
    assert out["attention_mask"].sum(1).max() <= 80


@pytest.mark.parametrize("chat", [False, True])
def test_split_from_whole_keeps_a_real_tokenizers_whole_prompt_tokens(chat):
    """The bundled SmolLM2 tokenizer (BPE: ` "` merges across the title's boundary): a text-only model's split
    marks the suffix inside the whole prompt's tokens; there the prefix and suffix tokenised apart coincide
    with them too, so both splits start the suffix at the same token."""
    from cora_ray.config import LLMConfig
    from cora_ray.llm.loading import load_tokenizer

    tok = load_tokenizer(LLMConfig())
    titles = [
        "",
        *(t for t in TITLES[1:]),
        "Il Postino (The Postman) (1994)",
        "8 1/2 (1963)",
        "M*A*S*H (1970)",
    ]
    cfg = PromptConfig(chat_template=chat, max_history=10)
    hists = [np.array([2, 3, 4]), np.array([], dtype=np.int64), np.array([13, 14, 15, 1, 5])]
    targets = [13, 15, 6]
    whole = PromptEncoder(tok, cfg, titles).token_rows(hists, targets)
    split = PromptEncoder(tok, cfg, titles, split_suffix=True, split_from_whole=True).token_rows(
        hists, targets
    )
    parts = PromptEncoder(tok, cfg, titles, split_suffix=True).token_rows(hists, targets)
    assert split.ids == whole.ids
    assert split.positions["suffix_pos"] == parts.positions["suffix_pos"]
    for ids, p, item in zip(split.ids, split.positions["suffix_pos"], targets, strict=True):
        assert tok.decode(ids[p:]).lstrip().startswith(f'"{titles[item]}"')
        assert titles[item] not in tok.decode(ids[:p])
