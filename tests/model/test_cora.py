"""CoRAModel on a tiny random LLaMA: the per-row path, the frozen LLM, row independence, the score head."""

from __future__ import annotations

import pytest
import torch

from cora_ray.errors import ArtifactMismatchError, ModelError
from cora_ray.model.base import position_ids_from_mask
from cora_ray.model.cora import CoRAModel


def _cora(tiny, seed: int = 0, negative: bool = False, **cfg) -> CoRAModel:
    return CoRAModel(tiny.llm(seed, negative=negative), tiny.cf(), tiny.config("cora", **cfg)).eval()


def _frozen_yes_logits(tiny, batch, seed: int = 0, negative: bool = False) -> torch.Tensor:
    """The untouched LLM's full logits at the last position (the reference the head shortcut must equal)."""
    lm = tiny.llm(seed).model
    mask = batch["attention_mask"]
    logits = lm(
        input_ids=batch["input_ids"], attention_mask=mask, position_ids=position_ids_from_mask(mask)
    ).logits
    yes = logits[:, -1, tiny.YES]
    return yes - logits[:, -1, tiny.NO] if negative else yes


def test_every_llm_and_cf_parameter_is_frozen(tiny):
    model = _cora(tiny)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(model.trainable_state_dict())
    assert all(n.startswith("generator.") or n.endswith(".P") for n in trainable)
    assert not any(p.requires_grad for p in model.cf.parameters())
    assert sum(n.endswith(".P") for n in trainable) == 2 * 4  # 2 layers x q/k/v/o


def test_per_row_path_equals_merged_weight_reference(tiny):
    """Batched bmm path vs. W + (alpha/r)·P·G_bᵀ materialised for each row, run one row at a time."""
    model = _cora(tiny)
    tiny.randomize_P(model)
    batch = tiny.batch()
    with torch.no_grad():
        G = model.compute_G(batch["user_id"], batch["item_id"], batch["history"])
        scores = model(batch)
        for b in range(len(scores)):
            originals = {name: layer.base_layer.weight.clone() for name, layer in model.collab_layers.items()}
            for layer in model.collab_layers.values():
                layer.base_layer.weight.copy_(layer.merged_weight(G[b]))
            row = {k: v[b : b + 1] for k, v in batch.items()}
            merged = model(row, G=torch.zeros_like(G[b : b + 1]))  # zero G: only the merged W acts
            for name, layer in model.collab_layers.items():
                layer.base_layer.weight.copy_(originals[name])
            torch.testing.assert_close(scores[b : b + 1], merged, atol=1e-5, rtol=0)
    assert G.abs().sum() > 0 and scores.std() > 0


def test_zero_P_scores_equal_the_frozen_llm_yes_logit(tiny):
    batch = tiny.batch()
    with torch.no_grad():
        scores = _cora(tiny)(batch)
    torch.testing.assert_close(scores, _frozen_yes_logits(tiny, batch), atol=1e-5, rtol=0)


@pytest.mark.parametrize("negative", [False, True])
def test_head_shortcut_equals_full_logits_at_last_position(tiny, negative):
    model = _cora(tiny, negative=negative)
    tiny.randomize_P(model)
    batch = tiny.batch()
    with torch.no_grad():
        G = model.compute_G(batch["user_id"], batch["item_id"], batch["history"])
        scores = model(batch, G=G)
        with model.collab.use(G):
            mask = batch["attention_mask"]
            logits = model.lm(
                input_ids=batch["input_ids"], attention_mask=mask, position_ids=position_ids_from_mask(mask)
            ).logits  # (B, T, vocab): the thing the model itself never builds
    full = logits[:, -1, tiny.YES] - (logits[:, -1, tiny.NO] if negative else 0)
    torch.testing.assert_close(scores, full, atol=1e-5, rtol=0)


def test_training_changes_generator_and_P_and_never_the_llm(tiny):
    model = _cora(tiny).train()
    llm_before = {n: p.clone() for n, p in model.lm.named_parameters() if not n.endswith(".P")}
    cf_before = {n: p.clone() for n, p in model.cf.named_parameters()}
    trainable_before = {n: p.clone() for n, p in model.trainable_state_dict().items()}
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=1e-2, weight_decay=0.0)
    batch = tiny.batch()
    for _ in range(3):  # P is zero at step 1, so the generator's first gradient arrives at step 2
        opt.zero_grad()
        model.loss(batch).backward()
        opt.step()
    for n, p in model.lm.named_parameters():
        if not n.endswith(".P"):
            assert torch.equal(p, llm_before[n]), f"LLM weight {n} changed"
            assert p.grad is None, f"LLM weight {n} got a gradient"
    assert all(torch.equal(p, cf_before[n]) for n, p in model.cf.named_parameters())
    after = model.trainable_state_dict()
    for n in after:
        if n.endswith(".P"):
            assert not torch.equal(after[n], trainable_before[n]), f"{n} did not change"
    changed = [
        n for n in after if n.startswith("generator.") and not torch.equal(after[n], trainable_before[n])
    ]
    # with one memory token the cross-attention softmax is constant: its query/key weights get no gradient
    frozen_by_math = {n for n in after if ".cross_attn.query." in n or ".cross_attn.key." in n}
    assert set(changed) == {n for n in after if n.startswith("generator.")} - frozen_by_math


def test_permuting_the_batch_permutes_the_scores(tiny):
    model = _cora(tiny)
    tiny.randomize_P(model)
    batch = tiny.batch(B=6)
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    with torch.no_grad():
        scores = model(batch)
        permuted = model({k: v[perm] for k, v in batch.items()})
    torch.testing.assert_close(permuted, scores[perm], atol=1e-5, rtol=0)


def test_extra_left_padding_does_not_change_a_rows_score(tiny):
    model = _cora(tiny)
    tiny.randomize_P(model)
    batch = tiny.batch(B=4, T=10)
    extra = 7
    padded = dict(batch)
    padded["input_ids"] = torch.cat([torch.full((4, extra), tiny.PAD), batch["input_ids"]], dim=1)
    padded["attention_mask"] = torch.cat(
        [torch.zeros(4, extra, dtype=torch.long), batch["attention_mask"]], dim=1
    )
    with torch.no_grad():
        torch.testing.assert_close(model(padded), model(batch), atol=1e-5, rtol=0)
        alone = model({k: v[2:3] for k, v in padded.items()})  # and a row scored alone, in its own padding
    torch.testing.assert_close(alone, model(batch)[2:3].detach(), atol=1e-5, rtol=0)


def test_precomputed_G_gives_the_same_scores(tiny):
    model = _cora(tiny)
    tiny.randomize_P(model)
    batch = tiny.batch()
    with torch.no_grad():
        G = model.compute_G(batch["user_id"], batch["item_id"], batch["history"])
        torch.testing.assert_close(model(batch, G=G), model(batch), atol=0, rtol=0)
        assert G.shape == (6, 64, 4)


def test_cold_users_get_a_zero_delta_when_configured(tiny):
    model = _cora(tiny, zero_delta_for_cold_users=True)
    tiny.randomize_P(model)
    batch = tiny.batch()
    batch["user_id"][[1, 4]] = tiny.COLD_USER
    with torch.no_grad():
        G = model.compute_G(batch["user_id"], batch["item_id"], batch["history"])
        scores = model(batch)
    assert torch.count_nonzero(G[[1, 4]]) == 0 and torch.count_nonzero(G[0]) > 0
    frozen = _frozen_yes_logits(tiny, batch)
    torch.testing.assert_close(scores[[1, 4]], frozen[[1, 4]], atol=1e-5, rtol=0)
    assert not torch.allclose(scores[[0, 2]], frozen[[0, 2]], atol=1e-3)


def test_cold_users_get_a_generated_delta_by_default(tiny):
    model = _cora(tiny)
    assert model.cfg.zero_delta_for_cold_users is False
    user = torch.tensor([tiny.COLD_USER])
    with torch.no_grad():
        assert torch.count_nonzero(model.compute_G(user, torch.tensor([1]))) > 0


def test_trainable_state_round_trips_into_a_fresh_model(tiny):
    model = _cora(tiny, seed=0)
    tiny.randomize_P(model)
    fresh = _cora(tiny, seed=0)
    fresh.load_trainable_state_dict({k: v.clone() for k, v in model.trainable_state_dict().items()})
    batch = tiny.batch()
    with torch.no_grad():
        torch.testing.assert_close(fresh(batch), model(batch), atol=0, rtol=0)


def test_trainable_state_of_another_shape_is_refused(tiny):
    state = _cora(tiny).trainable_state_dict()
    with pytest.raises(ArtifactMismatchError, match="shape"):
        _cora(tiny, rank=8).load_trainable_state_dict(state)
    state.pop("generator.queries")
    with pytest.raises(ArtifactMismatchError, match="missing \\['generator.queries'\\]"):
        _cora(tiny).load_trainable_state_dict(state)


def test_gradient_checkpointing_gives_the_same_gradients(tiny):
    batch = tiny.batch()
    grads = []
    for checkpointing in (False, True):
        model = _cora(tiny, dropout=0.0)
        tiny.randomize_P(model)
        if checkpointing:
            model.enable_gradient_checkpointing()
        model.train()
        model.generator.eval()  # no generator dropout: the two runs must see the same G
        model.loss(batch).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
    assert model.lm.model.layers[0].gradient_checkpointing
    for n, g in grads[0].items():
        torch.testing.assert_close(grads[1][n], g, atol=1e-6, rtol=1e-5, msg=n)


def test_right_padded_batch_is_refused(tiny):
    batch = tiny.batch()
    batch["attention_mask"][1, -1] = 0
    with pytest.raises(ModelError, match="left-padded"):
        _cora(tiny)(batch)


def test_bad_target_in_config_is_a_model_error(tiny):
    with pytest.raises(ModelError, match="down_proj"):
        _cora(tiny, targets=["q_proj", "down_proj"])
