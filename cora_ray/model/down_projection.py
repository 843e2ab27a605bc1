"""The collaborative layers' down-projection u = x · G, computed once per input tensor (`DownCache`).

Every collaborative layer of a CoRA model multiplies its input by the same per-row G (B, d_model, r) — G is one
per sample, not one per layer (docs/method.md §2.2) — and q, k and v read the same normed hidden state. So
without dropout (scoring, serving, a run with `model.dropout: 0`) the three compute the same product: the
first computes bmm(x, G) and the other two reuse it, forward and backward (autograd sums their gradients into
the one product, so its two backward bmm's run once too).

With dropout active each layer draws its own mask and multiplies its own kept copy of x (nothing to share).
Subtracting each layer's dropped terms from one shared product instead was measured twice (docs/architecture.md
§5.1): on a CPU the scattered corrections (index_add of ~5% of x's elements, r numbers each, both ways) cost
more than the two bmm's per layer they save.
"""

from __future__ import annotations

import dataclasses

import torch


@dataclasses.dataclass
class _Entry:
    x: torch.Tensor
    G: torch.Tensor
    grad_enabled: bool
    u: torch.Tensor


class DownCache:
    """bmm(x, G) of the last input seen, reused while the same tensor object comes back with the same G.

    One per `CollabContext.use` scope and thread, dropped when the scope ends, so it holds its tensors for one
    forward pass at most. A different x (the next layer's input, o_proj's input) replaces the entry; the key is
    the tensor's identity, held by the entry, so it cannot be a recycled id.
    """

    def __init__(self) -> None:
        self._entry: _Entry | None = None
        self._weights: tuple[object, torch.dtype, torch.Tensor] | None = None

    def weights(self, delta, dtype: torch.dtype) -> torch.Tensor:
        """The matrix x is multiplied by for `delta` (a collab_linear.Delta): G (B, d, r), or [G | G_u]
        (B, d, 2r) when a user_prefix delta gives the prefix its own G_u; in `dtype`. Built once per scope."""
        w = self._weights
        if w is not None and w[0] is delta and w[1] == dtype:
            return w[2]
        G = delta.G.to(dtype)  # a no-op when the dtypes already agree
        if delta.suffix_mask is not None and delta.prefix_G is not None:
            G = torch.cat([G, delta.prefix_G.to(dtype)], dim=-1)
        self._weights = (delta, dtype, G)
        return G

    def product(self, x3: torch.Tensor, x_key: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
        """bmm(x3, G) (B, T, r): x3 (B, T, d) is the caller's input `x_key` reshaped; the same `x_key` object
        with the same G (and grad mode) gets the tensor computed the first time."""
        grad_enabled = torch.is_grad_enabled()
        e = self._entry
        if e is not None and e.x is x_key and e.G is G and e.grad_enabled == grad_enabled:
            return e.u
        u = torch.bmm(x3, G)
        self._entry = _Entry(x_key, G, grad_enabled, u)
        return u
