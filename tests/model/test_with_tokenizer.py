"""CoRA on LLMs loaded the project's way (real tokenizer, tied head, left padding): the tiny in-process
LLaMA of `cora_ray.llm.tiny`, and the bundled SmolLM2-135M (slow)."""

from __future__ import annotations

import pytest
import torch

from cora_ray.config import LLMConfig
from cora_ray.model.base import position_ids_from_mask
from cora_ray.model.build import build_model

PROMPTS = [
    '#Question: A user has given high ratings to the following movies: "Toy Story (1995)", "Star Wars (1977)". '
    "Leverage the information to predict whether the user would enjoy the movie titled "
    '"The Lost World (1997)"? Answer with "Yes" or "No". \\n#Answer:',
    "#Question: A user has given high ratings to the following movies: unkow. Leverage the information to predict "
    'whether the user would enjoy the movie titled "Heat (1995)"? Answer with "Yes" or "No". \\n#Answer:',
]


def _load(which: str):
    if which == "tiny":
        from cora_ray.llm.tiny import tiny_llm

        return tiny_llm(seed=0), 1e-5
    from cora_ray.llm.loading import load_llm

    return load_llm(LLMConfig(negative_token=" No"), device="cpu", dtype="float32"), 1e-4


@pytest.mark.parametrize("which", ["tiny", pytest.param("smollm2", marks=pytest.mark.slow)])
def test_cora_score_is_the_answer_logit_of_the_full_head_on_a_real_tokenizer(tiny, which):
    llm, atol = _load(which)
    assert llm.negative_token_id is not None
    enc = llm.tokenizer(PROMPTS, return_tensors="pt", padding=True)
    assert enc["attention_mask"][:, -1].all() and not enc["attention_mask"][:, 0].all()  # left-padded
    batch = {**enc, "user_id": torch.tensor([1, 2]), "item_id": torch.tensor([3, 4])}
    model = build_model(tiny.config("cora"), llm, tiny.cf()).eval()
    mask = enc["attention_mask"]

    def full_head(G):
        with torch.no_grad(), model.collab.use(G):
            logits = model.lm(
                input_ids=enc["input_ids"], attention_mask=mask, position_ids=position_ids_from_mask(mask)
            ).logits
        return logits[:, -1, llm.answer_token_id] - logits[:, -1, llm.negative_token_id]

    with torch.no_grad():
        G = model.compute_G(batch["user_id"], batch["item_id"])
        torch.testing.assert_close(
            model(batch, G=G), full_head(None), atol=atol, rtol=0
        )  # P = 0: the plain LLM
        tiny.randomize_P(model, std=0.2)
        scores = model(batch, G=G)
        torch.testing.assert_close(scores, full_head(G), atol=atol, rtol=0)
        assert not torch.allclose(scores, full_head(None), atol=1e-3)
        # the shorter prompt scored alone, without padding, matches its padded row
        alone = {k: v[1:] for k, v in batch.items()}
        real = int(mask[1].sum())
        alone["input_ids"], alone["attention_mask"] = enc["input_ids"][1:, -real:], mask[1:, -real:]
        torch.testing.assert_close(model(alone, G=G[1:]), scores[1:], atol=atol, rtol=0)
