"""Zero-shot, TALLRec and CoLLM through the RecModel interface, and `build_model`'s dispatch."""

from __future__ import annotations

import pytest
import torch

from cora_ray.errors import ModelError
from cora_ray.model.base import RecModel
from cora_ray.model.baselines import CoLLMModel, TALLRecModel, ZeroShotModel
from cora_ray.model.build import build_model
from cora_ray.model.cora import CoRAModel
from cora_ray.model.lora_linear import LoRALinear


def _build(tiny, method: str, seed: int = 0) -> RecModel:
    return build_model(tiny.config(method), tiny.llm(seed), tiny.cf())


def _train(model: RecModel, batch: dict, steps: int, lr: float) -> list[float]:
    """A few AdamW steps on one fixed batch; the losses seen before each step, then the final one."""
    model.train()
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=lr, weight_decay=0.0)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = model.loss(batch)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    model.eval()
    with torch.no_grad():
        losses.append(model.loss(batch).item())
    return losses


def _synthetic_batch(tiny, B: int = 16) -> dict:
    """Labels that a model can fit: a user's label is fixed by the user id (and marked in the prompt)."""
    batch = tiny.batch(B=B, T=10, seed=3)
    batch["label"] = (batch["user_id"] % 2).float()
    batch["input_ids"][:, -2] = 10 + batch["user_id"] % 2  # the text carries it too, for TALLRec
    return batch


@pytest.mark.parametrize(
    ("method", "cls", "lr"),
    [("cora", CoRAModel, 3e-3), ("tallrec", TALLRecModel, 1e-2), ("collm", CoLLMModel, 1e-2)],
)
def test_each_trainable_method_fits_a_small_synthetic_task(tiny, method, cls, lr):
    model = _build(tiny, method)
    assert isinstance(model, cls) and model.method == method
    frozen = {n: p.clone() for n, p in model.lm.named_parameters() if not p.requires_grad}
    losses = _train(model, _synthetic_batch(tiny), steps=40, lr=lr)
    assert losses[-1] < 0.8 * losses[0], str([round(v, 3) for v in losses])
    assert all(torch.equal(p, frozen[n]) for n, p in model.lm.named_parameters() if not p.requires_grad)


def test_zero_shot_trains_nothing_and_is_the_frozen_llm(tiny):
    model = _build(tiny, "zero_shot")
    assert isinstance(model, ZeroShotModel)
    assert model.trainable_parameters() == [] and model.trainable_state_dict() == {}
    assert not model.needs_cf and not model.needs_placeholders
    batch = tiny.batch()
    cora = _build(tiny, "cora").eval()  # P = 0: the same frozen LLM
    with torch.no_grad():
        torch.testing.assert_close(model(batch), cora(batch), atol=1e-5, rtol=0)
        assert model.loss(batch).isfinite()


def test_tallrec_has_one_shared_lora_on_q_and_v(tiny):
    model = _build(tiny, "tallrec")
    names = sorted(model.trainable_state_dict())
    assert len(names) == 2 * 2 * 2  # 2 layers x (q_proj, v_proj) x (A, B)
    assert all(".q_proj.lora_" in n or ".v_proj.lora_" in n for n in names)
    layer = model.lm.model.layers[0].self_attn.q_proj
    assert (
        isinstance(layer, LoRALinear) and layer.rank == 8 and layer.scaling == 2.0
    )  # the r = 8, alpha = 16 default
    assert model.lm.model.layers[0].self_attn.k_proj.__class__.__name__ == "Linear"
    assert not model.needs_cf and not model.needs_placeholders


def test_tallrec_ignores_the_cf_vectors(tiny):
    model = _build(tiny, "tallrec").eval()
    batch = tiny.batch()
    other = dict(batch, user_id=batch["user_id"].flip(0), item_id=batch["item_id"].flip(0))
    with torch.no_grad():
        torch.testing.assert_close(model(batch), model(other), atol=0, rtol=0)


def test_collm_writes_cf_tokens_at_the_placeholders(tiny):
    model = _build(tiny, "collm").eval()
    assert model.needs_cf and model.needs_placeholders
    batch = tiny.batch()
    with torch.no_grad():
        scores = model(batch)
        # the token ids under the placeholders do not matter: their embeddings are replaced
        replaced = dict(batch, input_ids=batch["input_ids"].clone())
        rows = torch.arange(len(scores))
        replaced["input_ids"][rows, batch["user_pos"]] = 1
        replaced["input_ids"][rows, batch["item_pos"]] = 2
        torch.testing.assert_close(model(replaced), scores, atol=1e-6, rtol=0)
        # the CF vectors do
        other = dict(batch, user_id=batch["user_id"] % (tiny.N_USERS - 1) + 1)
        assert not torch.allclose(model(other), scores)


def test_collm_gradient_reaches_the_projector_only(tiny):
    model = _build(tiny, "collm").train()
    model.loss(tiny.batch()).backward()
    assert {n for n, p in model.named_parameters() if p.grad is not None} == set(model.trainable_state_dict())
    assert all(n.startswith("projector.") for n in model.trainable_state_dict())


@pytest.mark.parametrize("method", ["cora", "collm"])
def test_methods_that_need_cf_refuse_to_build_without_it(tiny, method):
    with pytest.raises(ModelError, match="needs a CF backbone"):
        build_model(tiny.config(method), tiny.llm(), None)


def test_methods_without_cf_build_without_it(tiny):
    assert isinstance(build_model(tiny.config("tallrec"), tiny.llm(), None), TALLRecModel)
    assert isinstance(build_model(tiny.config("zero_shot"), tiny.llm(), None), ZeroShotModel)


def test_cf_backbone_stays_in_eval_mode(tiny):
    model = _build(tiny, "cora").train()
    assert model.generator.training and not model.cf.training
