"""model.delta_scope: the prompt split at the target title, and the prefix-shared forward (a user's prefix
computed once, each row's suffix against its keys/values) against the same scope's full-prompt forward."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cora_ray.config import ConfigError, PromptConfig
from cora_ray.data.batching import model_batch
from cora_ray.data.prompts import PromptEncoder
from cora_ray.llm.tiny import tiny_llm
from cora_ray.model.build import build_model
from cora_ray.model.prefix import PrefixState

TITLES = [
    "",
    "Toy Story (1995)",
    "Star Wars (1977)",
    "The Lost World (1997)",
    "Heat (1995)",
    "Blue Sky (1994)",
    "The Last King (2001)",
    "A Little Love Story (1990)",
    "Dark City (1998)",
    "Big (1988)",
]
# rows: user, target item, history — users 1 and 2 have several candidates each; user 3 an empty history
ROWS = [
    (1, 3, [1, 2]),
    (2, 4, [5, 6, 7, 8]),
    (1, 9, [1, 2]),
    (3, 5, []),
    (2, 1, [5, 6, 7, 8]),
    (1, 7, [1, 2]),
    (2, 2, [5, 6, 7, 8]),
]


def _encoder(llm, chat: bool, split: bool = True) -> PromptEncoder:
    cfg = PromptConfig(chat_template=chat, max_history=5, max_prompt_tokens=192)
    return PromptEncoder(llm.tokenizer, cfg, TITLES, split_suffix=split)


def _batch(enc: PromptEncoder, rows=ROWS) -> dict[str, torch.Tensor]:
    users, items, hists = zip(*rows, strict=True)
    return model_batch(enc, np.array(users), np.array(items), list(hists))


def _model(tiny, scope: str, seed: int = 0):
    llm = tiny_llm(seed=0)
    model = build_model(tiny.config("cora", delta_scope=scope), llm, tiny.cf()).eval()
    tiny.randomize_P(model, std=0.3, seed=seed)
    if scope == "user_prefix":
        with torch.no_grad():
            model.no_item.normal_(generator=torch.Generator().manual_seed(seed))
    return model, llm


@pytest.mark.parametrize("chat", [False, True])
def test_split_encoding_puts_the_target_title_first_in_the_suffix_and_shares_the_prefix(chat):
    llm = tiny_llm(seed=0)
    enc = _encoder(llm, chat)
    tokens = enc.token_rows([h for _, _, h in ROWS], [i for _, i, _ in ROWS])
    pos = tokens.positions["suffix_pos"]
    prefixes = [tuple(ids[:p]) for ids, p in zip(tokens.ids, pos, strict=True)]
    # the same user + history: the same prefix tokens whatever the target
    assert prefixes[0] == prefixes[2] == prefixes[5] and prefixes[1] == prefixes[4] == prefixes[6]
    assert prefixes[0] != prefixes[1]
    for (_, item, _), ids, p in zip(ROWS, tokens.ids, pos, strict=True):
        title = llm.tokenizer.encode(f' "{TITLES[item]}"', add_special_tokens=False)
        assert list(ids[p : p + len(title)]) == title  # the suffix begins at the target title
    # the text is the unsplit encoder's text
    whole = _encoder(llm, chat, split=False).token_rows([h for _, _, h in ROWS], [i for _, i, _ in ROWS])
    assert tokens.texts == whole.texts


def test_split_encoding_refuses_a_template_with_the_history_after_the_target():
    llm = tiny_llm(seed=0)
    cfg = PromptConfig(template="Would a user enjoy {target}? They liked {history}. #Answer:")
    with pytest.raises(ConfigError, match="shared prefix"):
        PromptEncoder(llm.tokenizer, cfg, TITLES, split_suffix=True)


@pytest.mark.parametrize("scope", ["user_prefix", "suffix"])
@pytest.mark.parametrize("chat", [False, True])
def test_prefix_shared_forward_equals_the_full_prompt_forward(tiny, scope, chat):
    model, llm = _model(tiny, scope)
    batch = _batch(_encoder(llm, chat))
    assert not batch["attention_mask"].all()  # left padding, prefixes of different lengths
    with torch.no_grad():
        model.share_prefix_in_forward = False
        full = model(batch)
        model.share_prefix_in_forward = True
        shared = model(batch)
    torch.testing.assert_close(shared, full, atol=1e-4, rtol=0)
    # and each row alone, unpadded, gives its batch score
    with torch.no_grad():
        alone = torch.stack([model(_batch(_encoder(llm, chat), [row]))[0] for row in ROWS])
    torch.testing.assert_close(alone, full, atol=1e-4, rtol=0)


def test_the_scopes_differ_where_they_should(tiny):
    torch.manual_seed(0)
    scores = {}
    for scope in ("all", "user_prefix", "suffix"):
        model, llm = _model(tiny, scope)
        with torch.no_grad():
            scores[scope] = model(_batch(_encoder(llm, chat=False, split=scope != "all")))
    assert not torch.allclose(scores["user_prefix"], scores["suffix"], atol=1e-3)
    assert not torch.allclose(scores["all"], scores["suffix"], atol=1e-3)


def test_suffix_scope_prefix_is_the_plain_llm(tiny):
    """Suffix scope: the prefix's keys/values do not depend on the user or on the trained parts."""
    model, llm = _model(tiny, "suffix")
    batch = _batch(_encoder(llm, chat=False), ROWS[:1])
    p = int(batch["suffix_pos"][0])
    prefix = {k: batch[k][:, :p] for k in ("input_ids", "attention_mask")}
    with torch.no_grad():
        a = model.encode_prefix(prefix, torch.tensor([1]), batch["history"])
        b = model.encode_prefix(prefix, torch.tensor([2]), batch["history"])
    assert a.prefix_G is None
    for (ka, va), (kb, vb) in zip(a.layers, b.layers, strict=True):
        torch.testing.assert_close(ka, kb, atol=0, rtol=0)
        torch.testing.assert_close(va, vb, atol=0, rtol=0)


def test_prefix_shared_training_gradients_equal_the_full_prompt_gradients(tiny):
    model, llm = _model(tiny, "user_prefix")
    batch = {**_batch(_encoder(llm, chat=True)), "label": torch.tensor([1.0, 0, 1, 0, 0, 1, 1])}
    grads = {}
    for shared in (False, True):
        model.share_prefix_in_forward = shared
        model.zero_grad(set_to_none=True)
        model.eval()  # no dropout: the two passes must see the same function
        model.loss(batch).backward()
        grads[shared] = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    assert grads[True]["no_item"].abs().sum() > 0  # the prefix's G_u is trained through the shared prefix
    for name, g in grads[False].items():
        torch.testing.assert_close(grads[True][name], g, atol=1e-5, rtol=1e-3, msg=name)


def test_prefix_state_entries_restack_to_the_same_scores(tiny):
    """A per-user cache stores `entry(i)` (unpadded); stacking entries of different lengths again scores the
    same as the batch they came from."""
    model, llm = _model(tiny, "user_prefix")
    enc = _encoder(llm, chat=False)
    batch = _batch(enc)
    with torch.no_grad():
        reference = model(batch)
    from cora_ray.model.prefix import split_rows, unpad_rows

    ids = unpad_rows(batch["input_ids"], batch["attention_mask"])
    pad = (batch["attention_mask"] == 0).sum(1)
    split = split_rows(
        ids, (batch["suffix_pos"] - pad).tolist(), batch["user_id"].tolist(), batch["history"].numpy()
    )
    assert len(split.prefixes) == 3  # three users
    from cora_ray.data.batching import left_pad

    pre = {k: torch.from_numpy(v) for k, v in left_pad(split.prefixes, 0).items()}
    first = torch.from_numpy(split.first_row)
    with torch.no_grad():
        state = model.encode_prefix(pre, batch["user_id"][first], batch["history"][first])
        entries = [state.entry(i) for i in range(len(state))]
        assert len({e.attention_mask.shape[1] for e in entries}) == 3  # different prefix lengths
        restacked = PrefixState.stack(entries).select(torch.from_numpy(split.groups))
        suffix = {k: torch.from_numpy(v) for k, v in left_pad(split.suffixes, 0).items()}
        G = model.compute_G(batch["user_id"], batch["item_id"], batch["history"])
        scores = model.score_suffix(restacked, suffix, G)
    torch.testing.assert_close(scores, reference, atol=1e-4, rtol=0)
    assert state.nbytes > 0


def test_user_zero_gets_no_prefix_delta_and_cold_users_follow_the_rule(tiny):
    """User id 0 (serving's unknown user) gets G_u = 0; a dataset user unknown to the CF model gets a
    generated G_u unless zero_delta_for_cold_users."""
    llm = tiny_llm(seed=0)
    users = torch.tensor([0, 1, tiny.COLD_USER])
    for zero_cold in (False, True):
        model = build_model(
            tiny.config("cora", delta_scope="user_prefix", zero_delta_for_cold_users=zero_cold),
            llm,
            tiny.cf(),
        )
        with torch.no_grad():
            G = model.compute_G_user(users, None)
        norms = G.flatten(1).norm(dim=1)
        assert norms[0] == 0 and norms[1] > 0
        assert (norms[2] == 0) == zero_cold
        llm = tiny_llm(seed=0)  # the collaborative layers were injected into the last one


def test_placeholders_split_only_where_whole_prompts_are_split():
    """CoLLM's placeholders are found through the whole prompt's offsets: tokenising prefix and suffix apart
    is refused for them, the whole-prompt split places the user's before the suffix and the item's after."""
    llm = tiny_llm(seed=0)
    cfg = PromptConfig(max_history=5, max_prompt_tokens=192)
    with pytest.raises(ConfigError, match="shared prefix"):
        PromptEncoder(llm.tokenizer, cfg, TITLES, collab_placeholders=True, split_suffix=True)
    enc = PromptEncoder(
        llm.tokenizer, cfg, TITLES, collab_placeholders=True, split_suffix=True, split_from_whole=True
    )
    tokens = enc.token_rows([h for _, _, h in ROWS], [i for _, i, _ in ROWS])
    at = np.asarray(tokens.positions["suffix_pos"])
    assert (np.asarray(tokens.positions["user_pos"]) < at).all()
    assert (np.asarray(tokens.positions["item_pos"]) >= at).all()
    # a template with the item's placeholder before the target title cannot share a prefix
    early = PromptConfig(template="{item} Would a user {user} who liked {history} enjoy {target}? Answer:")
    with pytest.raises(ConfigError, match="shared prefix"):
        PromptEncoder(
            llm.tokenizer, early, TITLES, collab_placeholders=True, split_suffix=True, split_from_whole=True
        )
