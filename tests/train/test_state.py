"""Training state beyond the model contract: counters as JSON, AdamW moments per rank as safetensors."""

from __future__ import annotations

import torch
from torch import nn

from cora_ray.train.state import TrainState, load_optimizer_state, save_optimizer_state


def _stepped(seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 3), nn.LayerNorm(3))
    opt = torch.optim.AdamW(
        [
            {"params": [model[0].weight]},
            {"params": [model[0].bias, *model[1].parameters()], "weight_decay": 0.0},
        ]
    )
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(5, 4)).pow(2).sum().backward()
        opt.step()
    return model, opt


def test_train_state_round_trips_through_json():
    s = TrainState(step=12, best_auc=0.71, best_step=8, bad_evals=1, world_size=2, zero_stage=3)
    assert TrainState.from_json(s.to_json()) == s
    fresh = TrainState()
    assert TrainState.from_json(fresh.to_json()).best_auc == float("-inf")


def test_adam_moments_are_restored_exactly(tmp_path):
    model, opt = _stepped()
    save_optimizer_state(tmp_path, 0, opt)
    other = torch.optim.AdamW(
        [
            {"params": [model[0].weight]},
            {"params": [model[0].bias, *model[1].parameters()], "weight_decay": 0.0},
        ]
    )
    assert load_optimizer_state(tmp_path, 0, other) is None
    for p in model.parameters():
        for k in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(other.state[p][k], opt.state[p][k])


def test_a_different_layout_is_refused_and_nothing_changes(tmp_path):
    _, opt = _stepped()
    save_optimizer_state(tmp_path, 0, opt)
    bigger = torch.optim.AdamW([nn.Parameter(torch.zeros(5, 4))])
    assert "shape" in load_optimizer_state(tmp_path, 0, bigger) and not bigger.state
    assert "no optimizer state for rank 1" in load_optimizer_state(tmp_path, 1, bigger)
