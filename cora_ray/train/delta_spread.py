"""How much the collaborative weights G vary from row to row while a run trains: the generator's collapse monitor.

CoRA's generator can end a run producing one and the same G for every row — a shared LoRA, no collaborative
signal — and at the README's budget that is what separates a seed that learns from one that does not
(varying share 0.0000, pair cosine 1.0000 for CoRA-SASRec without memory_norm and 0.0557 for CoRA-LightGCN
seed 42, which learned: results/generator_input/; 0.0000 for CoRA-LightGCN seed 43:
results/generator_input_seeds/). `DeltaSpread` measures that share along the run from the G's the training
forward passes make anyway, so a collapsing run shows it in its progress line long before its validation:

    spread = DeltaSpread(model.collab_weight_generator())   # None for methods without G: takes nothing
    ...training steps...
    spread.take()   # the varying share over the rows since the last take, or None

Varying share of n rows g_1..g_n (each G flattened): the share of their energy in the deviation from their mean,
    s = n/(n-1) · (mean_b ‖g_b‖² − ‖ḡ‖²) / mean_b ‖g_b‖²
(the n/(n-1) makes the deviation term unbiased, so a window of a few rows is not read as collapse; s = 0: one G
for every row). jobs/generator_input.py reports the same quantity over 2,048 rows. Only forward passes in
training mode count (validation's are left out); the sums stay on the device until `take`, the one host sync.
"""

from __future__ import annotations

import torch
from torch import nn


class DeltaSpread:
    """Accumulates the G's a module outputs in training mode; `take()` → their varying share (see above)."""

    def __init__(self, module: nn.Module | None) -> None:
        self._handle = None if module is None else module.register_forward_hook(self._hook)
        self._reset()

    def _reset(self) -> None:
        self._sum: torch.Tensor | None = None  # Σ_b g_b  (d_model·r,), float64
        self._energy: torch.Tensor | None = None  # Σ_b ‖g_b‖²  (), float64
        self._rows = 0

    def _hook(self, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        if not module.training:
            return
        g = output.detach().flatten(1).to(torch.float64)  # (B, d_model·r)
        row_sum, energy = g.sum(dim=0), g.square().sum()
        self._sum = row_sum if self._sum is None else self._sum + row_sum
        self._energy = energy if self._energy is None else self._energy + energy
        self._rows += g.shape[0]

    def take(self) -> float | None:
        """The varying share over the rows seen since the last take (None with fewer than 2, or all-zero G's);
        starts a new window."""
        n, total, energy = self._rows, self._sum, self._energy
        self._reset()
        if n < 2 or total is None or energy is None:
            return None
        mean_energy = float(energy) / n
        if mean_energy == 0.0:
            return None
        mean_norm_sq = float(total.square().sum()) / n**2  # ‖ḡ‖²
        return n / (n - 1) * (mean_energy - mean_norm_sq) / mean_energy

    def close(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
