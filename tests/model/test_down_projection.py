"""The shared down-projection: x·G once per input when no dropout is drawn — the same values and gradients as
bmm(dropout(x), G) per layer (with the same random draws when dropout is on), and fewer bmm's."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from cora_ray.model.collab_linear import CollabContext, CollabLinear


class _ReferenceCollab(CollabLinear):
    """The per-layer formula: W x + (alpha/r)·P·mask(bmm(dropout(x), G)), nothing shared between layers."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        delta = self.context.delta
        B, d = x.shape[0], x.shape[-1]
        x_kept = self.dropout(x.reshape(B, -1, d))  # the module's own dropout: the same draws
        if delta.suffix_mask is None:
            u = torch.bmm(x_kept, delta.G)
        else:
            mask = delta.suffix_mask.reshape(B, -1, 1)
            prefix = 0.0 if delta.prefix_G is None else torch.bmm(x_kept, delta.prefix_G)
            u = torch.where(mask, torch.bmm(x_kept, delta.G), prefix)
        return self.base_layer(x) + self.scaling * (u @ self.P.t()).view(*x.shape[:-1], -1)


class _CountBmm(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket is torch.ops.aten.bmm:
            self.calls += 1
        return func(*args, **(kwargs or {}))


def _siblings(dropout: float, d: int = 8, rank: int = 3) -> tuple[list[CollabLinear], CollabContext]:
    """q/k/v-like layers: three projections of one input, one context (one G)."""
    torch.manual_seed(0)
    ctx = CollabContext()
    layers = []
    for out in (6, 4, 4):
        layer = CollabLinear(nn.Linear(d, out), ctx, rank=rank, alpha=6.0, dropout=dropout)
        layer.base_layer.requires_grad_(False)
        with torch.no_grad():
            layer.P.normal_()
        layers.append(layer.train())
    return layers, ctx


def _run(layers, ctx, x, G, suffix_mask, prefix_G, seed: int, cls=None) -> list[torch.Tensor]:
    if cls is not None:
        for layer in layers:
            layer.__class__ = cls
    try:
        torch.manual_seed(seed)
        with ctx.use(G, suffix_mask=suffix_mask, prefix_G=prefix_G):
            return [layer(x) for layer in layers]
    finally:
        for layer in layers:
            layer.__class__ = CollabLinear


@pytest.mark.parametrize("scope", ["all", "suffix", "user_prefix"])
@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_shared_input_layers_equal_the_per_layer_formula_with_the_same_draws(scope, dropout):
    layers, ctx = _siblings(dropout)
    x = torch.randn(4, 7, 8, requires_grad=True)
    G = torch.randn(4, 8, 3, requires_grad=True)
    suffix_mask = prefix_G = None
    if scope != "all":
        suffix_mask = torch.arange(7)[None, :] >= torch.tensor([2, 3, 0, 6])[:, None]
    if scope == "user_prefix":
        prefix_G = torch.randn(4, 8, 3, requires_grad=True)
    ys = _run(layers, ctx, x, G, suffix_mask, prefix_G, seed=5)
    refs = _run(layers, ctx, x, G, suffix_mask, prefix_G, seed=5, cls=_ReferenceCollab)
    inputs = [x, G] + [layer.P for layer in layers] + ([prefix_G] if prefix_G is not None else [])
    weights = [torch.randn_like(y) for y in ys]
    loss = sum((y * w).sum() for y, w in zip(ys, weights, strict=True))
    loss_ref = sum((y * w).sum() for y, w in zip(refs, weights, strict=True))
    for y, ref in zip(ys, refs, strict=True):
        torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-5)
    grads = torch.autograd.grad(loss, inputs)
    grads_ref = torch.autograd.grad(loss_ref, inputs)
    for g, r in zip(grads, grads_ref, strict=True):  # u₀ − c vs a zeroed x: float32 rounding apart
        torch.testing.assert_close(g, r, atol=1e-4, rtol=1e-4)
    if dropout:  # the layers drew different masks: their outputs differ from the undropped ones
        with torch.no_grad(), ctx.use(G, suffix_mask=suffix_mask, prefix_G=prefix_G):
            plain = [layer.eval()(x) for layer in layers]
        assert all(not torch.allclose(y, p) for y, p in zip(ys, plain, strict=True))


@pytest.mark.parametrize("train", [False, True])
def test_three_projections_of_one_input_run_one_bmm_forward_and_two_backward(train):
    layers, ctx = _siblings(dropout=0.0 if train else 0.3)  # eval: the 0.3 is not drawn
    for layer in layers:
        layer.train(train)
    x = torch.randn(4, 7, 8, requires_grad=True)
    G = torch.randn(4, 8, 3, requires_grad=True)
    with _CountBmm() as counter, ctx.use(G):
        loss = sum(layer(x).sum() for layer in layers)
        forward_calls = counter.calls
        loss.backward()
    assert forward_calls == 1  # x·G once, not once per projection
    assert counter.calls == 3  # + the gradients of x and of G, once each
    with _CountBmm() as counter, ctx.use(G):  # three different inputs: nothing to share
        for layer in layers:
            layer(torch.randn(4, 7, 8))
    assert counter.calls == 3


def test_layers_that_draw_dropout_each_multiply_their_own_kept_input():
    layers, ctx = _siblings(dropout=0.3)
    x, G = torch.randn(4, 7, 8), torch.randn(4, 8, 3)
    with _CountBmm() as counter, ctx.use(G):
        for layer in layers:
            layer(x)
    assert counter.calls == 3


def test_the_shared_product_is_dropped_when_its_scope_ends():
    layers, ctx = _siblings(dropout=0.0)
    x, G = torch.randn(2, 3, 8), torch.randn(2, 8, 3)
    with ctx.use(G):
        layers[0](x)
        assert ctx.down_cache._entry is not None and ctx.down_cache._entry.x is x
    assert ctx.down_cache is None  # outside any scope: no tensors held


def test_gradient_checkpointing_with_dropout_gives_the_same_gradients(tiny):
    """Recomputing a checkpointed layer replays its dropout draws: the same gradients."""
    from cora_ray.model.cora import CoRAModel

    batch = tiny.batch()
    grads = []
    for checkpointing in (False, True):
        model = CoRAModel(tiny.llm(0), tiny.cf(), tiny.config("cora", dropout=0.2))
        tiny.randomize_P(model)
        if checkpointing:
            model.enable_gradient_checkpointing()
        model.train()
        model.generator.eval()  # no generator dropout: the two runs must see the same G
        torch.manual_seed(3)
        model.loss(batch).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
    for n, g in grads[0].items():
        torch.testing.assert_close(grads[1][n], g, atol=1e-6, rtol=1e-5, msg=n)
