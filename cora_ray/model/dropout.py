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
        u = torch.rand(n, dtype=torch.float64, device=device)
        gaps = torch.floor(torch.log1p(-u) / log_keep).long()  # (n,) kept elements before each drop
        positions = start + torch.cumsum(gaps + 1, dim=0) - 1  # (n,) increasing
        chunks.append(positions[positions < numel])
        start = int(positions[-1]) + 1
    return torch.cat(chunks)


class _DroppedBmm(torch.autograd.Function):
    """u = bmm(x ⊙ m, G) for the 0/1 mask m whose zeros are `dropped` (flat indices into x), without a copy of x.

    x (B, T, d), G (B, d, r) → u (B, T, r). Forward: the dense bmm(x, G), then each dropped element's
    contribution x[b,t,j]·G[b,j,:] taken back out (K ≈ p·B·T·d rows of r). Backward, the same way: the dense
    products minus the dropped elements' terms, added in place into the fresh gradient tensors. Only x — the
    tensor the frozen projection already keeps for its own backward — and the K indices are saved; a dropout
    copy of x per projection (120 of them per step on SmolLM2, ~3.5 MB each at batch 8 × 190 tokens) is not."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, G: torch.Tensor, dropped: torch.Tensor) -> torch.Tensor:  # noqa: D102
        u = torch.bmm(x, G)
        row, g_row, x_val = _dropped_terms(x, G, dropped)
        r = G.shape[-1]
        u.view(-1, r).index_add_(0, row, G.reshape(-1, r)[g_row] * x_val.neg().unsqueeze(1))
        ctx.save_for_backward(x, G, dropped)
        return u

    @staticmethod
    def backward(ctx, grad_u: torch.Tensor):  # noqa: D102
        x, G, dropped = ctx.saved_tensors
        row, g_row, x_val = _dropped_terms(x, G, dropped)
        r = G.shape[-1]
        grad_rows = grad_u.reshape(-1, r)[row]  # (K, r): ∂u of each dropped element's (b, t) row
        grad_x = grad_G = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.bmm(grad_u, G.transpose(1, 2))  # (B, T, d), fresh and contiguous
            grad_x.view(-1).index_add_(0, dropped, (grad_rows * G.reshape(-1, r)[g_row]).sum(1).neg())
        if ctx.needs_input_grad[1]:
            grad_G = torch.bmm(x.transpose(1, 2), grad_u)  # (B, d, r)
            grad_G.view(-1, r).index_add_(0, g_row, grad_rows * x_val.neg().unsqueeze(1))
        return grad_x, grad_G, None


def _dropped_terms(
    x: torch.Tensor, G: torch.Tensor, dropped: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For flat indices into x (B, T, d): the (b·T + t) row of u, the (b·d + j) row of G, and x's values."""
    _, T, d = x.shape
    row = dropped // d
    g_row = (dropped // (T * d)) * d + dropped % d
    return row, g_row, x.reshape(-1)[dropped]


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

    def project(self, x: torch.Tensor, G: torch.Tensor) -> tuple[torch.Tensor, float]:
        """(bmm(x ⊙ mask, G), scale) with dropout(x) @ G = result · scale, for x (B, T, d) and G (B, d, r).

        On CPU in training the dropped elements are taken out of the product (`_DroppedBmm`): no copy of x is
        made or kept. The draw is the one `forward` / `zero_dropped` would make from the same RNG state."""
        if not self.training or self.p == 0.0:
            return torch.bmm(x, G), 1.0
        if x.is_cuda:
            return torch.bmm(F.dropout(x, self.p, training=True), G), 1.0
        dropped = bernoulli_positions(x.numel(), self.p, x.device)
        return _DroppedBmm.apply(x, G, dropped), 1.0 / (1.0 - self.p)

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
