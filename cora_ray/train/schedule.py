"""docs/method.md §4 learning-rate schedule: linear warm-up from `warmup_start_lr` to `lr`, then cosine down to `min_lr`.

    step s = optimizer steps already taken (0 before the first update)

    s <  W:  lr(s) = start + (peak - start) · s / W
    s >= W:  lr(s) = min + ½ (peak - min) (1 + cos(π · min(1, (s - W) / (S - W))))

with W = warmup_steps and S = max_steps. The schedule is a pure function of the step so that a resumed run
(or a worker group restarted after a failure) continues on exactly the same curve.
"""

from __future__ import annotations

import math
from typing import Any


def lr_at(
    step: int, *, lr: float, warmup_steps: int, warmup_start_lr: float, min_lr: float, max_steps: int
) -> float:
    """The learning rate used for the update that follows `step` completed updates."""
    if step < warmup_steps:
        return warmup_start_lr + (lr - warmup_start_lr) * step / warmup_steps
    decay_steps = max(1, max_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress))


class WarmupCosineSchedule:
    """The schedule as a DeepSpeed client scheduler: DeepSpeed calls `step()` after each optimizer update.

    Works on any object with torch-style `param_groups` (a torch optimizer or a DeepSpeed ZeRO optimizer,
    which is not a `torch.optim.Optimizer`, hence no `torch.optim.lr_scheduler.LambdaLR`).
    """

    def __init__(
        self,
        optimizer: Any,
        *,
        lr: float,
        warmup_steps: int,
        warmup_start_lr: float,
        min_lr: float,
        max_steps: int,
        last_step: int = 0,
    ) -> None:
        self.optimizer = optimizer
        self.params = dict(
            lr=lr,
            warmup_steps=warmup_steps,
            warmup_start_lr=warmup_start_lr,
            min_lr=min_lr,
            max_steps=max_steps,
        )
        self.last_step = last_step
        self._apply()

    @classmethod
    def for_train(cls, optimizer: Any, train: Any, last_step: int = 0) -> WarmupCosineSchedule:
        """The schedule a `TrainConfig` describes (lr, warm-up, min_lr, max_steps), resumed at `last_step`."""
        return cls(
            optimizer,
            lr=train.lr,
            warmup_steps=train.warmup_steps,
            warmup_start_lr=train.warmup_start_lr,
            min_lr=train.min_lr,
            max_steps=train.max_steps,
            last_step=last_step,
        )

    def lr(self, step: int | None = None) -> float:
        return lr_at(self.last_step if step is None else step, **self.params)

    def _apply(self) -> None:
        value = self.lr()
        for group in self.optimizer.param_groups:
            group["lr"] = value

    def step(self, increment: int = 1, **_: Any) -> None:
        self.last_step += increment
        self._apply()

    def get_lr(self) -> list[float]:
        return [self.lr()] * len(self.optimizer.param_groups)

    def get_last_lr(self) -> list[float]:
        return self.get_lr()

    def state_dict(self) -> dict:
        return {"last_step": self.last_step, **self.params}

    def load_state_dict(self, state: dict) -> None:
        self.last_step = int(state["last_step"])
        self._apply()
