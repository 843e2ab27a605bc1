"""The global batch is the configured quantity; micro-batch and gradient accumulation follow from it.

    global_batch_size = micro_batch_size × num_workers × grad_accum_steps          (rows per optimizer step)

`resolve_batch` is the one place this is decided (`TrainConfig.__post_init__` calls it, so the trainer, the
workers and `jobs/train.py --plan` all read the resolved values):

- `global_batch_size` unset: the legacy way — micro_batch_size (default 8) × num_workers × grad_accum_steps
  (default 1) *is* the global batch, so it grows with the worker count.
- `global_batch_size` set: each worker takes `global_batch_size / num_workers` rows per step (it must
  divide); of those, an explicit `micro_batch_size` or `grad_accum_steps` fixes the split, otherwise the
  micro-batch is the largest divisor of the per-worker rows that is ≤ `max_micro_batch_size` (unset: no cap)
  and accumulation makes up the rest. Global 8: 8 workers → micro 1 × accum 1; 1 worker → micro 8 × accum 1,
  or micro 4 × accum 2 with `max_micro_batch_size: 4`.
- An explicit combination that does not multiply to `global_batch_size` is a ConfigError naming the three
  keys.
"""

from __future__ import annotations

from dataclasses import dataclass

from cora_ray.errors import ConfigError

DEFAULT_MICRO_BATCH_SIZE = 8  # the legacy default when nothing else decides it


@dataclass(frozen=True)
class BatchSplit:
    """How one optimizer step's rows are split: global = micro × workers × accumulation."""

    global_batch_size: int
    micro_batch_size: int
    num_workers: int
    grad_accum_steps: int
    derived: bool  # True: micro-batch and accumulation were derived from global_batch_size


def _largest_divisor_at_most(n: int, cap: int) -> int:
    return max(d for d in range(1, min(n, cap) + 1) if n % d == 0)


def resolve_batch(
    *,
    global_batch_size: int | None,
    micro_batch_size: int | None,
    grad_accum_steps: int | None,
    num_workers: int,
    max_micro_batch_size: int | None = None,
) -> BatchSplit:
    """Resolve the batch keys of `train:` for `num_workers` workers; a ConfigError when they cannot agree."""
    w = num_workers
    if global_batch_size is None:
        micro = micro_batch_size or DEFAULT_MICRO_BATCH_SIZE
        accum = grad_accum_steps or 1
        if max_micro_batch_size is not None and micro > max_micro_batch_size:
            raise ConfigError(
                f"train.micro_batch_size={micro} > train.max_micro_batch_size={max_micro_batch_size}"
            )
        return BatchSplit(micro * w * accum, micro, w, accum, derived=False)

    g = global_batch_size
    product = "train.micro_batch_size × train.num_workers × train.grad_accum_steps"
    if micro_batch_size is not None and grad_accum_steps is not None:
        if micro_batch_size * w * grad_accum_steps != g:
            raise ConfigError(
                f"train.global_batch_size={g} must equal {product} = {micro_batch_size} × {w} × "
                f"{grad_accum_steps} = {micro_batch_size * w * grad_accum_steps}: drop train.micro_batch_size and "
                "train.grad_accum_steps to derive them, or make them agree"
            )
        micro, accum = micro_batch_size, grad_accum_steps
    else:
        if g % w:
            raise ConfigError(
                f"train.global_batch_size={g} cannot be split as {product} with train.num_workers={w}: "
                f"{g} rows per step are not a multiple of {w} workers (use a num_workers that divides {g})"
            )
        per_worker = g // w
        if micro_batch_size is not None:
            if per_worker % micro_batch_size:
                raise ConfigError(
                    f"train.global_batch_size={g} cannot be split as {product} = {micro_batch_size} × {w} × "
                    f"accumulation: {per_worker} rows per worker are not a multiple of micro-batch {micro_batch_size}"
                )
            micro, accum = micro_batch_size, per_worker // micro_batch_size
        elif grad_accum_steps is not None:
            if per_worker % grad_accum_steps:
                raise ConfigError(
                    f"train.global_batch_size={g} cannot be split as {product} = micro × {w} × {grad_accum_steps}: "
                    f"{per_worker} rows per worker are not a multiple of {grad_accum_steps} accumulation steps"
                )
            micro, accum = per_worker // grad_accum_steps, grad_accum_steps
        else:
            micro = _largest_divisor_at_most(per_worker, max_micro_batch_size or per_worker)
            accum = per_worker // micro
    if max_micro_batch_size is not None and micro > max_micro_batch_size:
        raise ConfigError(
            f"train.micro_batch_size={micro} (from train.global_batch_size={g} over {w} worker(s)) > "
            f"train.max_micro_batch_size={max_micro_batch_size}: set train.grad_accum_steps or drop "
            "train.micro_batch_size"
        )
    return BatchSplit(g, micro, w, accum, derived=micro_batch_size is None or grad_accum_steps is None)
