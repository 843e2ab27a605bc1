"""The collaborative linear layer: a frozen projection plus a per-row rank-r delta (docs/method.md §2.3).

For sample b and a targeted projection with frozen weight W (out × d_model) and learned P (out × r):

    y_b = W x_b + (alpha / r) · P (G_bᵀ dropout(x_b))          G_b ∈ R^{d_model × r}, one per row

which is the sample seeing the merged weight W + (alpha/r)·P·G_bᵀ. The delta is never materialised: the
batch goes through W as one dense matmul, then through one batched matmul into rank r (bmm with every row's
own G) and one matmul back out with P (docs/architecture.md §5.1; Punica / S-LoRA with an adapter per row).

G is not an argument of `forward` (transformers calls `self.q_proj(hidden_states)`), so it travels through
a `CollabContext` that every layer of one model shares and that the CoRA model sets around the LLM's
forward pass. No G (None) means the plain frozen layer: the cold-start / zero-delta path.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from cora_ray.errors import ModelError
from cora_ray.model.down_projection import DownCache
from cora_ray.model.dropout import SparseMaskDropout
from cora_ray.model.targets import replace_targets


@dataclasses.dataclass(frozen=True)
class Delta:
    """What the collaborative layers apply to one batch (docs/method.md §2.5, `model.delta_scope`).

    G (B, d_model, r): the per-row weights. Without `suffix_mask` they apply at every position (the paper's
    method). With `suffix_mask` (B, T) bool — True from each row's target title on — G applies only there, and
    the positions before it see `prefix_G` (B, d_model, r) (user_prefix) or nothing (suffix scope).
    """

    G: torch.Tensor
    suffix_mask: torch.Tensor | None = None
    prefix_G: torch.Tensor | None = None


class CollabContext:
    """Holds the current batch's `Delta` for the collaborative layers of one model.

    Thread-local, so two threads scoring with one model never see each other's G. `checkpoint_context_fn`
    makes activation checkpointing replay a layer with the delta of its original forward (the recompute runs
    during backward, after `use` has exited).
    """

    def __init__(self) -> None:
        self._local = threading.local()

    @property
    def delta(self) -> Delta | None:
        return getattr(self._local, "delta", None)

    @property
    def G(self) -> torch.Tensor | None:
        delta = self.delta
        return None if delta is None else delta.G

    @contextlib.contextmanager
    def use(
        self,
        G: torch.Tensor | Delta | None,
        suffix_mask: torch.Tensor | None = None,
        prefix_G: torch.Tensor | None = None,
    ) -> Iterator[None]:
        """Set the delta for the duration of the block (nesting restores the outer one). `G` None: the plain
        frozen layers."""
        previous, previous_cache = self.delta, self.down_cache
        if G is None or isinstance(G, Delta):
            self._local.delta = G
        else:
            self._local.delta = Delta(G, suffix_mask, prefix_G)
        self._local.down_cache = DownCache()
        try:
            yield
        finally:
            self._local.delta, self._local.down_cache = previous, previous_cache

    @property
    def down_cache(self) -> DownCache | None:
        """The scope's shared down-projections (cora_ray/model/down_projection.py); None outside `use`."""
        return getattr(self._local, "down_cache", None)

    def checkpoint_context_fn(
        self,
    ) -> tuple[contextlib.AbstractContextManager, contextlib.AbstractContextManager]:
        """`context_fn` for torch.utils.checkpoint (non-reentrant): replay with the forward's delta."""
        return contextlib.nullcontext(), self.use(self.delta)


class CollabLinear(nn.Module):
    """A frozen `nn.Linear` (`base_layer`) plus the per-row collaborative path `(alpha/r) · P(bmm(x, G))`.

    Parameters: `P` (out_features × r), zero-initialised so the wrapped model starts as the plain LLM.
    Input x: (B, d_model), (B, T, d_model) or (B, ..., d_model); G from the context: (B, d_model, r).
    """

    def __init__(
        self, base_layer: nn.Linear, context: CollabContext, rank: int, alpha: float, dropout: float
    ) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.context = context
        self.rank = rank
        self.scaling = alpha / rank
        self.dropout = SparseMaskDropout(dropout)  # = nn.Dropout, cheaper on CPU; p = 0: the identity
        w = base_layer.weight
        self.P = nn.Parameter(
            torch.zeros(base_layer.out_features, rank, device=w.device, dtype=torch.float32)
        )

    @property
    def in_features(self) -> int:
        return self.base_layer.in_features

    @property
    def out_features(self) -> int:
        return self.base_layer.out_features

    @property
    def weight(self) -> torch.Tensor:
        """The frozen weight, for code that inspects `module.weight` (dtype / device checks)."""
        return self.base_layer.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        delta = self.context.delta
        if delta is None:
            return self.base_layer(x)
        B, d = x.shape[0], x.shape[-1]
        if delta.G.shape != (B, d, self.rank):
            raise ModelError(
                f"collaborative layer got G of shape {tuple(delta.G.shape)} for an input of shape "
                f"{tuple(x.shape)}; expected ({B}, {d}, {self.rank})"
            )
        y = self.base_layer(x)  # (B, ..., out): one dense matmul for the whole batch
        x3 = x.reshape(B, -1, d)  # (B, T, d); a 2-D input is T = 1
        Gd = self.context.down_cache.weights(
            delta, x.dtype
        )  # G (B, d, r), or [G | G_u] (B, d, 2r): user_prefix
        both, keep_scale = self.down_product(x, x3, Gd)  # (B, T, r or 2r)
        if delta.suffix_mask is None:
            u = both  # (B, T, r): each row through its own G
        elif delta.prefix_G is None:  # suffix scope: nothing before the target title
            u = both * delta.suffix_mask.reshape(B, -1, 1).to(x.dtype)
        else:  # user_prefix: each position keeps its half of [G | G_u]
            u = torch.where(
                delta.suffix_mask.reshape(B, -1, 1), both[..., : self.rank], both[..., self.rank :]
            )
        # y += scaling · u Pᵀ as one fused matmul-add over all B·T positions
        out = torch.addmm(
            y.reshape(-1, self.out_features),
            u.reshape(-1, self.rank),
            self.P.to(x.dtype).t(),
            alpha=self.scaling * keep_scale,
        )
        return out.view_as(y)

    def down_product(self, x: torch.Tensor, x3: torch.Tensor, Gd: torch.Tensor) -> tuple[torch.Tensor, float]:
        """(x·Gd, the dropout scale still owed). A layer that draws dropout multiplies its own kept copy of x;
        otherwise the scope's `DownCache` computes x·Gd once per input tensor (q/k/v share it)."""
        if self.dropout.training and self.dropout.p > 0:
            return self.own_product(x3, Gd)
        return self.context.down_cache.product(x3, x, Gd), 1.0

    def own_product(self, x3: torch.Tensor, Gd: torch.Tensor) -> tuple[torch.Tensor, float]:
        """(bmm(x3 with this layer's dropped elements zeroed, Gd) (B, T, r or 2r), the scale still owed): dropout's
        1/(1-p) is folded into the final addmm's alpha (rank r wide) instead of scaling a copy of x."""
        x_kept, keep_scale = self.dropout.zero_dropped(x3)
        return torch.bmm(x_kept, Gd), keep_scale

    def merged_weight(self, G_row: torch.Tensor) -> torch.Tensor:
        """W + (alpha/r)·P·Gᵀ for one row's G (d_model, r): (out, d_model). A reference, never on the hot path."""
        return self.base_layer.weight + self.scaling * self.P.to(G_row.dtype) @ G_row.t()

    def extra_repr(self) -> str:
        return f"rank={self.rank}, scaling={self.scaling:g}"


def inject_collab_layers(
    model: nn.Module,
    targets: Sequence[str],
    rank: int,
    alpha: float,
    dropout: float,
    context: CollabContext | None = None,
) -> tuple[CollabContext, dict[str, CollabLinear]]:
    """Wrap every linear layer of `model` whose name ends with a target suffix in a `CollabLinear`, in place.

    Every target must be an `nn.Linear` with d_model (the text config's hidden_size) inputs: G is d_model × r.
    Returns the shared context and {module name: CollabLinear}.
    """
    config = getattr(model, "config", None)
    if config is None:
        raise ModelError(
            f"{type(model).__name__} has no config: cannot read d_model for the collaborative layers"
        )
    d_model = int(config.get_text_config().hidden_size)
    context = context or CollabContext()
    replaced = replace_targets(
        model,
        targets,
        lambda _name, linear: CollabLinear(linear, context, rank, alpha, dropout),
        in_features=d_model,
    )
    return context, replaced  # type: ignore[return-value]
