"""A plain shared LoRA layer (TALLRec's adapter): one learned low-rank delta for every row.

    y = W x + (alpha / r) · B (A dropout(x))        A ∈ R^{r × in} (Kaiming-uniform), B ∈ R^{out × r} (zeros)

Same wrapping convention as peft's `LoraLayer` and our `CollabLinear`: the frozen layer stays as
`base_layer`; B starts at zero so training starts from the plain LLM.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from cora_ray.model.dropout import SparseMaskDropout
from cora_ray.model.targets import replace_targets


class LoRALinear(nn.Module):
    """Frozen `base_layer` + trainable `lora_A` (r × in), `lora_B` (out × r); input (..., in) → (..., out)."""

    def __init__(self, base_layer: nn.Linear, rank: int, alpha: float, dropout: float) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.rank = rank
        self.scaling = alpha / rank
        self.dropout = SparseMaskDropout(dropout)  # = nn.Dropout, cheaper on CPU; p = 0: the identity
        device = base_layer.weight.device
        self.lora_A = nn.Parameter(torch.empty(rank, base_layer.in_features, device=device))
        self.lora_B = nn.Parameter(torch.zeros(base_layer.out_features, rank, device=device))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # nn.Linear's (and peft's) default init

    @property
    def weight(self) -> torch.Tensor:
        return self.base_layer.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base_layer(x)  # (..., out)
        x_kept, keep_scale = self.dropout.zero_dropped(x)  # dropout(x) = x_kept · keep_scale
        u = x_kept @ self.lora_A.to(x.dtype).t()  # (..., r)
        return y + (self.scaling * keep_scale) * (u @ self.lora_B.to(x.dtype).t())  # (..., out)

    def extra_repr(self) -> str:
        return f"rank={self.rank}, scaling={self.scaling:g}"


def inject_lora_layers(
    model: nn.Module, targets: Sequence[str], rank: int, alpha: float, dropout: float
) -> dict[str, LoRALinear]:
    """Wrap every linear layer whose name ends with a target suffix in a `LoRALinear`, in place."""
    return replace_targets(model, targets, lambda _name, linear: LoRALinear(linear, rank, alpha, dropout))  # type: ignore[return-value]
