"""Zero-shot, TALLRec and CoLLM through the RecModel interface, and `build_model`'s dispatch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cora_ray.config import ModelConfig, from_dict
from cora_ray.errors import ArtifactMismatchError, ConfigError, ModelError
from cora_ray.model.base import RecModel
from cora_ray.model.baselines import AUTHORS_HIDDEN_TIMES, CoLLMModel, TALLRecModel, ZeroShotModel
from cora_ray.model.build import build_model
from cora_ray.model.cora import CoRAModel
from cora_ray.model.lora_linear import LoRALinear

DATA = Path(__file__).resolve().parent / "data"


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


# --- CoLLM as its authors train it (model.collm_variant=faithful) and the mapping-only ablation -------------


def _faithful(tiny, seed: int = 0, **overrides) -> CoLLMModel:
    settings = {"collm_variant": "faithful", "collm_hidden": None, "init_from": "stage1", **overrides}
    cfg = tiny.config("collm", **settings)
    model = build_model(cfg, tiny.llm(seed), tiny.cf())
    assert isinstance(model, CoLLMModel)
    return model


def _trained_tallrec_state(tiny, seed: int = 0) -> tuple[dict, dict]:
    """A stage-1 checkpoint's trainable state (LoRA with non-zero B) and its config's model section."""
    cfg = tiny.config("tallrec")
    model = build_model(cfg, tiny.llm(seed), None)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in model.trainable_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return {k: v.clone() for k, v in model.trainable_state_dict().items()}, {
        "lora_rank": cfg.lora_rank,
        "lora_alpha": cfg.lora_alpha,
    }


def _input_embeds(model: CoLLMModel, batch: dict) -> torch.Tensor:
    """The inputs_embeds the decoder stack receives for `batch`."""
    seen = {}

    def grab(_module, _args, kwargs):
        seen["embeds"] = kwargs["inputs_embeds"].detach().clone()

    handle = model.lm.base_model.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad():
            model(batch)
    finally:
        handle.remove()
    return seen["embeds"]


def test_faithful_collm_is_a_tallrec_lora_plus_the_authors_mapping(tiny):
    model = _faithful(tiny)
    state = model.trainable_state_dict()
    lora = {n for n in state if ".lora_" in n}
    assert lora == set(_trained_tallrec_state(tiny)[0])  # the same LoRA tensors as a TALLRec model's
    assert set(state) - lora == {
        "projector.0.weight",
        "projector.0.bias",
        "projector.2.weight",
        "projector.2.bias",
    }
    d, h = tiny.cf().dim, AUTHORS_HIDDEN_TIMES * tiny.cf().dim  # D -> 10 D -> d_model
    assert tuple(state["projector.0.weight"].shape) == (h, d)
    assert tuple(state["projector.2.weight"].shape) == (model.d_model, h)
    layer = model.lm.model.layers[0].self_attn.v_proj
    assert isinstance(layer, LoRALinear) and layer.rank == 8 and layer.scaling == 2.0


def test_frozen_stage1_lora_gets_no_gradient_and_the_optimizer_never_sees_it(tiny):
    model = _faithful(tiny).train()
    model.loss(tiny.batch()).backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad == {n for n in model.trainable_state_dict() if n.startswith("projector.")}
    assert all(not p.requires_grad for n, p in model.named_parameters() if ".lora_" in n)
    # unfrozen (model.collm_freeze_lora=false): the LoRA trains with the mapping
    free = _faithful(tiny, collm_freeze_lora=False, init_from=None).train()
    free.loss(tiny.batch()).backward()
    assert {n for n, p in free.named_parameters() if p.grad is not None} == set(free.trainable_state_dict())


def test_stage2_init_loads_the_stage1_lora_exactly_and_scores_like_tallrec_without_cf_tokens(tiny):
    stage1, stage1_cfg = _trained_tallrec_state(tiny)
    model = _faithful(tiny).eval()
    before = {n: p.clone() for n, p in model.named_parameters() if n.startswith("projector.")}
    model.load_stage1_lora(stage1, stage1_cfg, "stage1")
    state = model.trainable_state_dict()
    assert all(torch.equal(state[n], t) for n, t in stage1.items())
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters() if n in before)  # MLP untouched
    # the same LLM + LoRA as the TALLRec model: with the placeholders' rows equal, the scores are TALLRec's
    tallrec = build_model(tiny.config("tallrec"), tiny.llm(0), None).eval()
    tallrec.load_trainable_state_dict(stage1)
    batch = tiny.batch()
    embeds = _input_embeds(model, batch)
    with torch.no_grad():
        from cora_ray.model.base import last_hidden_state

        h = last_hidden_state(tallrec.lm, batch["attention_mask"], inputs_embeds=embeds)
        torch.testing.assert_close(model(batch), tallrec.score_hidden(h), atol=1e-6, rtol=0)


def test_stage2_init_refuses_what_is_not_this_models_lora(tiny):
    stage1, stage1_cfg = _trained_tallrec_state(tiny)
    model = _faithful(tiny)
    with pytest.raises(ArtifactMismatchError, match="alpha 32.*alpha 16"):
        model.load_stage1_lora(stage1, {**stage1_cfg, "lora_alpha": 32.0}, "s1")
    cora_state = build_model(tiny.config("cora"), tiny.llm(), tiny.cf()).trainable_state_dict()
    with pytest.raises(ArtifactMismatchError, match="not a stage-1 LoRA checkpoint.*unexpected"):
        model.load_stage1_lora(cora_state, stage1_cfg, "s1")
    with pytest.raises(ArtifactMismatchError, match="missing"):
        model.load_stage1_lora(dict(list(stage1.items())[:-1]), stage1_cfg, "s1")
    bad = {n: (t[:1] if n.endswith("lora_A") else t) for n, t in stage1.items()}
    with pytest.raises(ArtifactMismatchError, match="shape"):
        model.load_stage1_lora(bad, stage1_cfg, "s1")
    mapping_only = _build(tiny, "collm")
    with pytest.raises(ModelError, match="no LoRA"):
        mapping_only.load_stage1_lora(stage1, stage1_cfg, "s1")


@pytest.mark.parametrize("variant", ["faithful", "mapping_only"])
def test_collm_placeholder_positions_hold_the_mapped_cf_embeddings(tiny, variant):
    model = _faithful(tiny) if variant == "faithful" else _build(tiny, "collm")
    model.eval()
    batch = tiny.batch()
    embeds = _input_embeds(model, batch)
    rows = torch.arange(len(batch["label"]))
    with torch.no_grad():
        e_u, e_i = model.cf.embed(batch["user_id"], batch["item_id"], batch["history"])
        torch.testing.assert_close(embeds[rows, batch["user_pos"]], model.projector(e_u), atol=0, rtol=0)
        torch.testing.assert_close(embeds[rows, batch["item_pos"]], model.projector(e_i), atol=0, rtol=0)
        # every other position is the token's own (frozen) embedding
        plain = model.lm.get_input_embeddings()(batch["input_ids"])
    keep = torch.ones_like(batch["input_ids"], dtype=torch.bool)
    keep[rows, batch["user_pos"]] = False
    keep[rows, batch["item_pos"]] = False
    assert torch.equal(embeds[keep], plain[keep])


def test_a_stage2_checkpoint_scores_alone_lora_included(tiny):
    stage1, stage1_cfg = _trained_tallrec_state(tiny)
    trained = _faithful(tiny).eval()
    trained.load_stage1_lora(stage1, stage1_cfg, "stage1")
    with torch.no_grad():
        for n, p in trained.named_parameters():
            if n.startswith("projector."):
                p.add_(0.1)
    state = {k: v.clone() for k, v in trained.trainable_state_dict().items()}
    torch.manual_seed(99)  # another init: everything must come from the state
    reloaded = _faithful(tiny).eval()
    reloaded.load_trainable_state_dict(state)
    batch = tiny.batch()
    with torch.no_grad():
        assert torch.equal(reloaded(batch), trained(batch))
    with pytest.raises(ArtifactMismatchError, match="missing"):
        reloaded.load_trainable_state_dict({k: v for k, v in state.items() if ".lora_" not in k})


def test_a_mapping_only_checkpoint_made_before_collm_variant_loads_and_scores_as_before(tiny):
    """tests/model/data/collm_mapping_only_v0.*: made by the CoLLM code before this change (see its maker)."""
    record = json.loads((DATA / "collm_mapping_only_v0.json").read_text())
    state = load_file(str(DATA / "collm_mapping_only_v0.safetensors"))
    cfg = from_dict(ModelConfig, record["model_config"])  # an old config: no collm_variant, no init_from
    assert cfg.collm_variant == "mapping_only" and not cfg.collm_uses_lora
    llm = tiny.llm(record["llm_seed"])
    model = build_model(cfg, llm, tiny.cf()).eval()
    assert sorted(model.trainable_state_dict()) == record["names"] == sorted(state)
    model.load_trainable_state_dict(state)
    fingerprint = float(sum(p.double().sum() for p in llm.model.parameters()))
    if abs(fingerprint - record["llm_fingerprint"]) > 1e-6:
        pytest.skip(
            "the tiny test LLM's random init differs from when the fixture was made (another torch / "
            "transformers): the names and shapes were checked; rerun tests/model/data/make_collm_mapping_only_v0.py"
        )
    with torch.no_grad():
        scores = model(tiny.batch(**record["batch"]))
    torch.testing.assert_close(scores, torch.tensor(record["scores"]), atol=1e-6, rtol=0)


def test_collm_config_refuses_a_frozen_stage2_without_stage1_and_init_from_elsewhere():
    with pytest.raises(ConfigError, match="needs model.init_from"):
        ModelConfig(method="collm", collm_variant="faithful")
    with pytest.raises(ConfigError, match="only model.method=collm with model.collm_variant=faithful"):
        ModelConfig(method="tallrec", init_from="runs/x/best")
    with pytest.raises(ConfigError, match="only model.method=collm with model.collm_variant=faithful"):
        ModelConfig(method="collm", init_from="runs/x/best")  # mapping_only has no LoRA to start from
    assert ModelConfig(method="collm", collm_variant="faithful", collm_freeze_lora=False).collm_uses_lora


@pytest.mark.parametrize("name", ["demo_collm_mf.yaml", "ml1m_collm_mf.yaml", "book_collm_mf.yaml"])
def test_the_collm_configs_prompt_is_the_authors_with_the_placeholders_at_their_id_fields(name):
    """configs/*collm_mf.yaml choose the authors' CoLLM wording (their prompts/collm_*.txt) by prompt.template;
    the placeholders sit where the authors' <UserID> and <TargetItemID> are."""
    from cora_ray.config import ExperimentConfig, load_config
    from cora_ray.data.prompts import PromptEncoder
    from cora_ray.llm.tiny import tiny_tokenizer

    cfg = load_config(ExperimentConfig, Path(__file__).resolve().parents[2] / "configs" / name)
    assert cfg.model.collm_uses_lora and cfg.model.collm_freeze_lora and cfg.model.init_from
    tok = tiny_tokenizer()
    enc = PromptEncoder(tok, cfg.prompt, ["", "Toy Story", "Heat"], collab_placeholders=True)
    out = enc.encode([[1]], [2], return_tensors="pt", return_text=True)
    ph, d = tok.unk_token, cfg.prompt.domain
    text = out["text"][0]
    assert (
        f'A user has given high ratings to the following {cfg.prompt.domain_plural}: "Toy Story". Additionally, '
        f"we have information about the user's preferences encoded in the feature {ph}. Using all available "
        f'information, make a prediction about whether the user would enjoy the {d} titled "Heat" with the '
        f'feature {ph}? Answer with "Yes" or "No". \\n#Answer:'
    ) in text
    ids = out["input_ids"][0]
    assert int(ids[out["user_pos"][0]]) == int(ids[out["item_pos"][0]]) == tok.unk_token_id
    assert out["user_pos"][0] < out["item_pos"][0]
