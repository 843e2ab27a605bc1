"""Autoscaling the scorer deployment on queued rows, not on requests.

Serve's default policy scales on ongoing requests per replica, but a request's cost is its rows (1 to
`max_items`): 32 one-item requests and 32 thousand-item requests are the same signal to it. Each scorer
replica reports the rows it has accepted and not yet answered (`CoRAScorer.record_autoscaling_stats` →
`queued_rows`), and this policy asks for as many replicas as keep that at `target_queued_rows` per replica:

    desired = current_replicas × (sum of queued_rows over replicas) / (target_queued_rows × current_replicas)

Serve applies min/max replicas, the upscale/downscale delays and factors around it. Set in a serve config:

    autoscaling_config:
      policy:
        policy_function: serve.autoscaling:QueuedRowsPolicy
        policy_kwargs: {target_queued_rows: 50}   # ceil(max_queued_rows / 2), docs/deploy.md §6
"""

from __future__ import annotations

from typing import Any

METRIC = "queued_rows"


def desired_replicas(
    queued_rows: dict[Any, float], current_replicas: int, target_queued_rows: float
) -> float:
    """Replicas that would hold `target_queued_rows` each for the rows queued now (fractional; Serve rounds)."""
    if current_replicas <= 0:
        return 0.0
    total = float(sum(queued_rows.values()))
    return total / float(target_queued_rows)


class QueuedRowsPolicy:
    """Serve custom autoscaling policy (a class: Serve builds it once with `policy_kwargs`)."""

    def __init__(self, target_queued_rows: float) -> None:
        if target_queued_rows <= 0:
            raise ValueError(f"target_queued_rows must be > 0, got {target_queued_rows}")
        self.target_queued_rows = float(target_queued_rows)

    def __call__(self, ctx: Any) -> tuple[float, dict]:
        metrics = (ctx.aggregated_metrics or {}).get(METRIC)
        if not metrics:  # no report yet (replicas starting): keep the current target
            return ctx.target_num_replicas, {}
        return desired_replicas(metrics, ctx.current_num_replicas, self.target_queued_rows), {}
