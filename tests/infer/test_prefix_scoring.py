"""Prefix-shared scoring (model.delta_scope user_prefix / suffix): each (user, history) prefix runs once, every
row only its suffix — equal to the same checkpoint's full-prompt scores; the per-user prefix cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_setup import write_tiny_checkpoint

from cora_ray.data import protocol
from cora_ray.errors import ModelError
from cora_ray.infer.prefix_cache import PrefixCache
from cora_ray.infer.scorer import Scorer


def rows(art, split="test"):
    t = protocol.read_split(art.data_uri, split)
    return t["user_id"].to_numpy(), t["item_id"].to_numpy(), t["history"].to_pylist()


@pytest.fixture(scope="module", params=["user_prefix", "suffix"])
def scoped(request, tiny_artifacts, tmp_path_factory):
    uri = str(tmp_path_factory.mktemp("ckpt") / request.param)
    write_tiny_checkpoint(tiny_artifacts, uri, model_overrides={"delta_scope": request.param}, seed=3)
    return Scorer.from_checkpoint(uri, batch_size=5)


def test_prefix_shared_scores_equal_full_prompt_scores(scoped, tiny_artifacts):
    u, i, h = rows(tiny_artifacts)
    assert scoped.shares_prefix
    assert len(set(u.tolist())) < len(u)  # users with several rows: prefixes are shared
    shared = scoped.score(u, i, h)
    full = scoped.score(u, i, h, share_prefix=False)  # every row's whole prompt, the masked delta
    np.testing.assert_allclose(shared, full, atol=1e-4)
    assert np.std(shared) > 0
    # one user's candidates alone and in another order: the same scores
    user = u[0]
    mine = np.flatnonzero(u == user)[::-1]
    np.testing.assert_allclose(scoped.score(u[mine], i[mine], [h[k] for k in mine]), full[mine], atol=1e-4)


def test_the_prefix_cache_is_hit_by_a_returning_user_and_gives_the_same_scores(scoped, tiny_artifacts):
    u, i, h = rows(tiny_artifacts)
    cache = PrefixCache(max_bytes=64 << 20, version=scoped.cache_version)
    first = scoped.score(u, i, h, prefix_cache=cache)
    stats = cache.stats()
    users = len(set(u.tolist()))
    assert stats.misses >= users and stats.hits == 0 and len(cache) == stats.misses  # one entry per prefix
    again = scoped.score(u[::-1], i[::-1], h[::-1], prefix_cache=cache)  # users come back, other order
    np.testing.assert_allclose(again, first[::-1], atol=1e-5)
    assert cache.stats().hits == stats.misses and cache.stats().misses == stats.misses
    np.testing.assert_allclose(first, scoped.score(u, i, h), atol=1e-5)


def test_a_cache_of_another_checkpoint_is_never_used(scoped, tiny_artifacts):
    u, i, h = rows(tiny_artifacts)
    cache = PrefixCache(max_bytes=64 << 20, version="another-checkpoint")
    scores = scoped.score(u[:6], i[:6], h[:6], prefix_cache=cache)
    assert cache.stats().hits == 0 and len(cache) == 0  # nothing read from nor written to it
    np.testing.assert_allclose(scores, scoped.score(u[:6], i[:6], h[:6]), atol=1e-5)
    cache.reset(scoped.cache_version)  # a reload to this checkpoint: now it fills
    scoped.score(u[:6], i[:6], h[:6], prefix_cache=cache)
    assert len(cache) > 0


def test_the_prefix_cache_stays_within_its_byte_budget(scoped, tiny_artifacts):
    u, i, h = rows(tiny_artifacts)
    probe = PrefixCache(max_bytes=64 << 20, version=scoped.cache_version)
    scoped.score(u[:1], i[:1], h[:1], prefix_cache=probe)
    one = probe.stats().bytes
    cache = PrefixCache(max_bytes=int(2.5 * one), version=scoped.cache_version)
    scores = scoped.score(u, i, h, prefix_cache=cache)
    stats = cache.stats()
    assert 0 < stats.bytes <= int(2.5 * one) and stats.evictions > 0
    np.testing.assert_allclose(scores, scoped.score(u, i, h), atol=1e-5)


def test_supplied_G_is_used_for_the_suffix(scoped, tiny_artifacts):
    u, i, h = rows(tiny_artifacts)
    G = scoped.compute_G(u[:8], i[:8], h[:8])
    np.testing.assert_allclose(
        scoped.score(u[:8], i[:8], h[:8], G=G), scoped.score(u[:8], i[:8], h[:8]), atol=1e-5
    )
    zero = scoped.score(u[:8], i[:8], h[:8], G=torch.zeros_like(G))
    assert not np.allclose(zero, scoped.score(u[:8], i[:8], h[:8]), atol=1e-4)


# ---- prefixes per user whatever the config: TALLRec, zero-shot and CoLLM share them with their trained tokens --


@pytest.fixture(scope="module", params=["tallrec", "zero_shot", "collm", "collm_faithful"])
def per_user(request, tiny_artifacts, tmp_path_factory):
    if request.param == "zero_shot":
        return Scorer.from_base_llm(tiny_artifacts.config("cora"), tiny_artifacts.data_uri, batch_size=5)
    uri = str(tmp_path_factory.mktemp("ckpt") / request.param)
    method, _, variant = request.param.partition("_")
    overrides = {"collm_variant": "faithful", "collm_freeze_lora": False} if variant else None
    write_tiny_checkpoint(tiny_artifacts, uri, method=method, seed=5, model_overrides=overrides)
    return Scorer.from_checkpoint(uri, batch_size=5)


def test_a_per_user_prefix_model_shares_prefixes_with_its_full_prompt_scores(per_user, tiny_artifacts):
    u, i, h = rows(tiny_artifacts)
    assert per_user.shares_prefix and per_user.encoder.split_from_whole
    shared = per_user.score(u, i, h)
    full = per_user.score(u, i, h, share_prefix=False)
    np.testing.assert_allclose(shared, full, atol=1e-4)
    assert np.std(shared) > 0
    # a prefix cache works for it as for CoRA's shared scopes: a returning user hits it, same scores
    cache = PrefixCache(max_bytes=64 << 20, version=per_user.cache_version)
    np.testing.assert_allclose(per_user.score(u, i, h, prefix_cache=cache), full, atol=1e-4)
    again = per_user.score(u[::-1], i[::-1], h[::-1], prefix_cache=cache)
    np.testing.assert_allclose(again, full[::-1], atol=1e-4)
    assert cache.stats().hits > 0
    with pytest.raises(ModelError, match="no collaborative weights"):
        per_user.score(u[:2], i[:2], h[:2], G=torch.zeros(2, 4, 2))


def test_the_whole_prompt_split_keeps_the_trained_tokens(per_user, tiny_artifacts):
    """The model was trained on whole prompts: the split marks a position in those tokens, it does not
    tokenise the prefix and the suffix apart; CoLLM's user token lies in the prefix, its item token in the
    suffix."""
    from cora_ray.data.prompts import PromptEncoder

    u, i, h = rows(tiny_artifacts)
    tok, prompt, titles = per_user.encoder.tokenizer, per_user.config.prompt, per_user.titles
    collab = per_user.model.needs_placeholders
    split = per_user.encoder.token_rows(h, i)
    whole = PromptEncoder(tok, prompt, titles, collab_placeholders=collab).token_rows(h, i)
    assert split.ids == whole.ids
    at = np.asarray(split.positions["suffix_pos"])
    assert ((at > 0) & (at < [len(r) for r in split.ids])).all()
    if collab:
        assert split.positions["user_pos"] == whole.positions["user_pos"]
        assert split.positions["item_pos"] == whole.positions["item_pos"]
        assert (np.asarray(split.positions["user_pos"]) < at).all()
        assert (np.asarray(split.positions["item_pos"]) >= at).all()
        return
    # where prefix and suffix tokenised apart give the same tokens (this tokenizer), the split is at the same
    # token as the shared-scope encoder's
    parts = PromptEncoder(tok, prompt, titles, split_suffix=True).token_rows(h, i)
    assert parts.ids == whole.ids
    assert split.positions["suffix_pos"] == parts.positions["suffix_pos"]


def test_a_text_only_template_that_cannot_be_split_scores_full_prompts(tiny_artifacts, tmp_path):
    import dataclasses

    cfg = tiny_artifacts.config("cora")
    template = "Would a user enjoy {target}? They liked {history}. Answer:"
    cfg = dataclasses.replace(cfg, prompt=dataclasses.replace(cfg.prompt, template=template))
    scorer = Scorer.from_base_llm(cfg, tiny_artifacts.data_uri, batch_size=5)
    assert not scorer.shares_prefix  # the history follows the target: nothing to share, nothing refused
    u, i, h = rows(tiny_artifacts)
    assert np.isfinite(scorer.score(u[:6], i[:6], h[:6])).all()
