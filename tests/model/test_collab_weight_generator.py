"""The models' answer to "which module makes G?" and the collapse monitor on a real (tiny) CoRA model."""

from __future__ import annotations

import pytest
import torch

from cora_ray.model.build import build_model
from cora_ray.train.delta_spread import DeltaSpread


def population_share(G: torch.Tensor) -> float:
    g = G.flatten(1).double()
    deviation = (g - g.mean(dim=0)).square().sum(dim=1).mean()
    return float(deviation / g.square().sum(dim=1).mean())


def test_cora_names_its_generator_and_the_monitor_sees_every_training_G(tiny):
    model = build_model(tiny.config("cora"), tiny.llm(), tiny.cf())
    assert model.collab_weight_generator() is model.generator
    spread = DeltaSpread(model.collab_weight_generator())
    batch = tiny.batch(B=6)
    model.train()
    G = model.compute_G(batch["user_id"], batch["item_id"], batch["history"])
    n = G.shape[0]
    assert spread.take() == pytest.approx(n / (n - 1) * population_share(G.detach()), rel=1e-6)
    model.eval()
    with torch.no_grad():
        model(batch)
    assert spread.take() is None
    for method in ("tallrec", "zero_shot"):
        assert build_model(tiny.config(method), tiny.llm(), None).collab_weight_generator() is None
