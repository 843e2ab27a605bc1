"""docs/method.md §4 schedule: linear warm-up from warmup_start_lr to lr, then cosine down to min_lr at max_steps."""

from __future__ import annotations

import math

import pytest
import torch

from cora_ray.train.schedule import WarmupCosineSchedule, lr_at

P = dict(lr=1e-3, warmup_steps=200, warmup_start_lr=1e-5, min_lr=8e-5, max_steps=1000)


def test_warmup_starts_at_warmup_start_lr_and_reaches_lr_linearly():
    assert lr_at(0, **P) == pytest.approx(1e-5)
    assert lr_at(100, **P) == pytest.approx(1e-5 + (1e-3 - 1e-5) / 2)
    assert lr_at(200, **P) == pytest.approx(1e-3)


def test_cosine_decays_to_min_lr_and_stays_there():
    assert lr_at(600, **P) == pytest.approx(8e-5 + 0.5 * (1e-3 - 8e-5))  # half-way: the mean of the two
    assert lr_at(1000, **P) == pytest.approx(8e-5)
    assert lr_at(5000, **P) == pytest.approx(8e-5)
    values = [lr_at(s, **P) for s in range(200, 1001)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))


def test_no_warmup_starts_at_peak():
    assert lr_at(0, **{**P, "warmup_steps": 0}) == pytest.approx(1e-3)


def test_scheduler_sets_param_groups_and_resumes_on_the_same_curve():
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=0.5)
    sched = WarmupCosineSchedule(opt, **P)
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-5)
    for _ in range(250):
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(lr_at(250, **P))
    resumed = WarmupCosineSchedule(
        torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))]), **P, last_step=250
    )
    assert resumed.get_last_lr() == sched.get_last_lr()
    state = sched.state_dict()
    other = WarmupCosineSchedule(torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))]), **P)
    other.load_state_dict(state)
    assert other.lr() == pytest.approx(sched.lr())
    assert math.isfinite(other.lr())


def test_for_train_reads_the_schedule_from_a_train_config():
    from cora_ray.config import TrainConfig

    train = TrainConfig(lr=2e-3, warmup_steps=10, warmup_start_lr=1e-4, min_lr=5e-5, max_steps=100)
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))])
    sched = WarmupCosineSchedule.for_train(opt, train, last_step=40)
    want = dict(lr=2e-3, warmup_steps=10, warmup_start_lr=1e-4, min_lr=5e-5, max_steps=100)
    assert sched.params == want and sched.last_step == 40
    assert opt.param_groups[0]["lr"] == pytest.approx(lr_at(40, **want))
