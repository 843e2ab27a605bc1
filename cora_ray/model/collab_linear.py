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
import threading
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from cora_ray.errors import ModelError
from cora_ray.model.dropout import SparseMaskDropout, bernoulli_positions
from cora_ray.model.targets import replace_targets


class CollabContext:
    """Holds the current batch's G (B, d_model, r) for the collaborative layers of one model.

    Thread-local, so two threads scoring with one model never see each other's G. `checkpoint_context_fn`
    makes activation checkpointing replay a layer with the G of its original forward (the recompute runs
    during backward, after `use` has exited).
    """

    def __init__(self) -> None:
        self._local = threading.local()

    @property
    def G(self) -> torch.Tensor | None:
        return getattr(self._local, "G", None)

    @contextlib.contextmanager
    def use(self, G: torch.Tensor | None) -> Iterator[None]:
        """Set G for the duration of the block (nesting restores the outer one)."""
        previous = self.G
        self._local.G = G
        try:
            yield
        finally:
            self._local.G = previous

    def checkpoint_context_fn(
        self,
    ) -> tuple[contextlib.AbstractContextManager, contextlib.AbstractContextManager]:
        """`context_fn` for torch.utils.checkpoint (non-reentrant): replay with the forward's G."""
        return contextlib.nullcontext(), self.use(self.G)


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
        self.dropout = (
            SparseMaskDropout(dropout) if dropout > 0 else nn.Identity()
        )  # = nn.Dropout, cheaper on CPU
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
        G = self.context.G
        if G is None:
            return self.base_layer(x)
        B, d = x.shape[0], x.shape[-1]
        if G.shape != (B, d, self.rank):
            raise ModelError(
                f"collaborative layer got G of shape {tuple(G.shape)} for an input of shape {tuple(x.shape)}; "
                f"expected ({B}, {d}, {self.rank})"
            )
        x3 = x.reshape(B, -1, d)  # (B, T, d): a 2-D input is T = 1
        G, P = G.to(x.dtype), self.P.to(x.dtype)  # no-ops when the dtypes already agree
        drop = isinstance(self.dropout, SparseMaskDropout) and self.dropout.training and self.dropout.p > 0
        base = self.base_layer
        if x.is_cuda or base.weight.requires_grad or (base.bias is not None and base.bias.requires_grad):
            return self._forward_unfused(x, x3, G, P)  # F.dropout on CUDA; a trainable base needs its grads
        dropped = bernoulli_positions(x3.numel(), self.dropout.p, x.device) if drop else None
        keep_scale = 1.0 / (1.0 - self.dropout.p) if drop else 1.0
        y = _CollabLinearFn.apply(x3, base.weight, base.bias, G, P, self.scaling * keep_scale, dropped)
        return y.view(*x.shape[:-1], self.out_features)

    def _forward_unfused(
        self, x: torch.Tensor, x3: torch.Tensor, G: torch.Tensor, P: torch.Tensor
    ) -> torch.Tensor:
        """The same function from autograd's own ops: dropout on a copy of x, bmm, addmm (CUDA, trainable W)."""
        y = self.base_layer(x)  # (B, ..., out): one dense matmul for the whole batch
        u = torch.bmm(self.dropout(x3), G)  # (B, T, r): each row through its own G
        # y += scaling · u Pᵀ as one fused matmul-add over all B·T positions
        out = torch.addmm(
            y.reshape(-1, self.out_features), u.reshape(-1, self.rank), P.t(), alpha=self.scaling
        )
        return out.view_as(y)

    def merged_weight(self, G_row: torch.Tensor) -> torch.Tensor:
        """W + (alpha/r)·P·Gᵀ for one row's G (d_model, r): (out, d_model). A reference, never on the hot path."""
        return self.base_layer.weight + self.scaling * self.P.to(G_row.dtype) @ G_row.t()

    def extra_repr(self) -> str:
        return f"rank={self.rank}, scaling={self.scaling:g}"


def _drop_coords(dropped: torch.Tensor, B: int, T: int, d: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat indices into x (B, T, d) → (row index into the (B·T) positions, row index into G as (B·d, r)).

    The divisions run in int32 when the indices fit: int64 division is not vectorised on CPU and costs more
    than the whole correction (~20x here); int32 is exact below 2³¹."""
    small = B * T * d < 2**31
    flat = dropped.int() if small else dropped
    position = torch.div(flat, d, rounding_mode="trunc")  # b·T + t (indices are non-negative: trunc = floor)
    b = torch.div(position, T, rounding_mode="trunc")
    g_row = b * d + (flat - position * d)  # b·d + j
    return position.long(), g_row.long()


class _CollabLinearFn(torch.autograd.Function):
    """y = x Wᵀ + bias + s · (dropout-masked x ⊙ G) Pᵀ for a frozen W, with hand-written backward.

    Same function and gradients as `base_layer(x) + s·(dropout(x) @ G) @ Pᵀ` (docs/architecture.md §5.1), with
    less memory traffic on CPU, where one pass over the (B, T, d) activation costs about as much as the
    rank-r products themselves:
    - dropout never copies x: with `dropped` the K ≈ p·B·T·d flat positions of x that the mask zeroes,
      (mask ⊙ x) G = x G − Σ_dropped x[b,t,j] G[b,j,:], a K × r correction gathered and index-added into
      the (B·T, r) product; the same correction in backward for ∂G and ∂x. `s` includes 1 / (1 − p).
    - the rank-r output is added into y in place (addmm_), and ∂x is accumulated in place into
      ∂y·W (baddbmm_) instead of autograd summing two (B, T, d) gradients;
    - the frozen W and bias get no gradient (callers fall back to autograd when they require one).
    """

    @staticmethod
    def forward(ctx, x, weight, bias, G, P, scale, dropped):  # noqa: D102 - see the class docstring
        B, T, d = x.shape
        r, out_features = G.shape[-1], weight.shape[0]
        x = x.contiguous()
        y = F.linear(x, weight, bias).view(B * T, out_features)  # (B·T, out)
        u = torch.bmm(x, G).view(B * T, r)  # (B·T, r)
        if dropped is not None and dropped.numel():
            position, g_row = _drop_coords(dropped, B, T, d)
            x_dropped = x.reshape(-1).index_select(0, dropped)[:, None]  # (K, 1)
            G_dropped = G.reshape(B * d, r).index_select(
                0, g_row
            )  # (K, r): G[b, j, :] per dropped x[b, t, j]
            u.index_add_(0, position, G_dropped * -x_dropped)
            # kept for backward: K-sized index and value vectors (G_dropped, K × r, is gathered again instead)
            sparse = (dropped, position, g_row, x_dropped)
        else:
            sparse = ()
        y.addmm_(u, P.t(), alpha=scale)
        ctx.save_for_backward(x, weight, G, P, u, *sparse)
        ctx.scale = scale
        ctx.has_bias = bias is not None
        return y.view(B, T, out_features)

    @staticmethod
    def backward(ctx, grad_y):  # noqa: D102
        x, weight, G, P, u, *sparse = ctx.saved_tensors
        B, T, d = x.shape
        r = G.shape[-1]
        g2 = grad_y.reshape(B * T, -1)  # (B·T, out)
        grad_u = torch.mm(g2, P).mul_(ctx.scale)  # (B·T, r): ∂loss/∂(masked x G)
        grad_P = torch.mm(g2.t(), u).mul_(ctx.scale) if ctx.needs_input_grad[4] else None  # (out, r)
        grad_x = grad_G = None
        if sparse:
            dropped, position, g_row, x_dropped = sparse
            grad_u_dropped = grad_u.index_select(0, position)  # (K, r)
        if ctx.needs_input_grad[0]:
            grad_x = torch.mm(g2, weight).view(B, T, d)  # the frozen layer's part
            grad_x.baddbmm_(grad_u.view(B, T, r), G.transpose(1, 2))  # + the rank-r part, in place
            if sparse:  # the dropped positions got no rank-r gradient
                G_dropped = G.reshape(B * d, r).index_select(0, g_row)  # (K, r)
                grad_x.view(-1).index_add_(0, dropped, (grad_u_dropped * G_dropped).sum(1).neg_())
        if ctx.needs_input_grad[3]:
            grad_G = torch.bmm(x.transpose(1, 2), grad_u.view(B, T, r))  # (B, d, r)
            if sparse:
                grad_G.view(B * d, r).index_add_(0, g_row, grad_u_dropped * -x_dropped)
        return grad_x, None, None, grad_G, grad_P, None, None


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
