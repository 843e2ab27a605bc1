"""Dropout for small p that draws one random number per *dropped* element instead of one per element.

`nn.Dropout(p)` on CPU draws a Bernoulli variable for every element. In CoRA's collaborative layers it
runs on the full activation (B, T, d_model) of four projections per decoder layer, and the random number
generation alone costs about as much as the frozen projection's matmul: ~13% of a training step on the
bundled SmolLM2 (bench/bench_model.py). With p = 0.05 only one element in twenty is dropped, so this
module samples the dropped positions directly.

The positions dropped by i.i.d. Bernoulli(p) trials form a renewal process: the number of kept elements
before the next dropped one is Geometric(p) on {0, 1, ...}, and

    K = floor(log(1 − U) / log(1 − p)),   U ~ Uniform[0, 1)

has exactly that law. Positions are the running sum of K + 1, minus 1. The output is the same random
function as `nn.Dropout(p)` (drop each element independently with probability p, scale the rest by
1 / (1 − p)), with ~p·n random numbers instead of n. On CUDA the fused `F.dropout` kernel is used.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def bernoulli_positions(numel: int, p: float, device: torch.device | str | None = None) -> torch.Tensor:
    """Sorted flat indices in [0, numel), each included independently with probability p (int64)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"dropout probability must be in (0, 1), got {p}")
    log_keep = math.log1p(-p)
    chunks = [torch.empty(0, dtype=torch.long, device=device)]
    start = 0  # the first position not decided yet
    while start < numel:
        expected = (numel - start) * p
        n = int(expected + 6.0 * math.sqrt(expected) + 16)  # enough for all but ~1e-9 of draws: else loop
        # in place, in float64 (exact for integers below 2^53): gaps + 1 = floor(log(1 − U) / log(1 − p)) + 1,
        # then their running sum; the same values as the out-of-place chain at half its time
        steps = torch.rand(n, dtype=torch.float64, device=device)
        steps.neg_().log1p_().div_(log_keep).floor_().add_(1.0)
        positions = steps.cumsum_(0).long().add_(start - 1)  # (n,) increasing
        inside = int(torch.searchsorted(positions, numel))  # positions[:inside] < numel
        chunks.append(positions[:inside])
        start = int(positions[-1]) + 1
    return chunks[1] if len(chunks) == 2 else torch.cat(chunks)


class SparseMaskDropout(nn.Module):
    """Drop-in `nn.Dropout(p)` that samples only the dropped positions (see the module docstring)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        zeroed, scale = self.zero_dropped(x)
        return zeroed if scale == 1.0 else zeroed * scale

    def zero_dropped(self, x: torch.Tensor) -> tuple[torch.Tensor, float]:
        """(x with the dropped elements zeroed, the scale still owed to the kept ones): dropout(x) = zeroed ·
        scale. A caller whose next step is linear applies the scale to its (smaller) output instead of to x —
        one pass over x and one activation copy fewer, in forward and backward. On CUDA the fused kernel
        scales itself (scale 1.0); in eval: (x, 1.0)."""
        if not self.training or self.p == 0.0:
            return x, 1.0
        if x.is_cuda:
            return F.dropout(x, self.p, training=True), 1.0
        dropped = bernoulli_positions(x.numel(), self.p, x.device)
        return x.reshape(-1).index_fill(0, dropped, 0.0).view(x.shape), 1.0 / (1.0 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}"
