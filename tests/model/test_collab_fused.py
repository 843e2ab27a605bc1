"""The fused CPU collaborative path (`_CollabLinearFn`) against the autograd reference path, dropout included."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cora_ray.model.collab_linear import CollabContext, CollabLinear, _CollabLinearFn
from cora_ray.model.dropout import bernoulli_positions


def _layer(dropout: float, bias: bool = True) -> tuple[CollabLinear, CollabContext]:
    torch.manual_seed(0)
    ctx = CollabContext()
    layer = CollabLinear(nn.Linear(16, 12, bias=bias), ctx, rank=4, alpha=8.0, dropout=dropout)
    layer.base_layer.requires_grad_(False)
    with torch.no_grad():
        layer.P.normal_()
    return layer, ctx


def _output_and_grads(layer: CollabLinear, ctx: CollabContext, x: torch.Tensor, G: torch.Tensor, fused: bool):
    x, G = x.clone().requires_grad_(True), G.clone().requires_grad_(True)
    layer.P.grad = None
    torch.manual_seed(123)  # both paths draw the same dropped positions from this state
    with ctx.use(G):
        if fused:
            y = layer(x)
        else:
            y = layer._forward_unfused(x, x.reshape(x.shape[0], -1, x.shape[-1]), G, layer.P)
    weights = torch.randn(y.shape, generator=torch.Generator().manual_seed(7))
    (y * weights).sum().backward()
    return y.detach(), x.grad, G.grad, layer.P.grad.clone()


@pytest.mark.parametrize("dropout", [0.0, 0.3])
@pytest.mark.parametrize("shape", [(3, 16), (3, 5, 16), (3, 2, 4, 16)])
@pytest.mark.parametrize("bias", [True, False])
def test_fused_path_equals_autograd_path_with_the_same_dropout_mask(dropout, shape, bias):
    layer, ctx = _layer(dropout, bias)
    layer.train()
    x, G = torch.randn(*shape), torch.randn(3, 16, 4)
    fused = _output_and_grads(layer, ctx, x, G, fused=True)
    reference = _output_and_grads(layer, ctx, x, G, fused=False)
    for a, b in zip(fused, reference, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    if dropout:  # the mask did something: the dropout-free output differs
        layer.eval()
        with ctx.use(G):
            assert not torch.allclose(layer(x), fused[0])


def test_fused_function_passes_gradcheck_with_dropped_positions():
    torch.manual_seed(1)
    B, T, d, out, r = 2, 3, 5, 4, 2
    x = torch.randn(B, T, d, dtype=torch.float64, requires_grad=True)
    G = torch.randn(B, d, r, dtype=torch.float64, requires_grad=True)
    P = torch.randn(out, r, dtype=torch.float64, requires_grad=True)
    W, bias = torch.randn(out, d, dtype=torch.float64), torch.randn(out, dtype=torch.float64)
    dropped = bernoulli_positions(B * T * d, 0.3)
    assert dropped.numel() > 0
    torch.autograd.gradcheck(lambda x, G, P: _CollabLinearFn.apply(x, W, bias, G, P, 1.7, dropped), (x, G, P))


def test_trainable_base_layer_keeps_its_gradients():
    layer, ctx = _layer(0.0)
    layer.base_layer.requires_grad_(True)
    with ctx.use(torch.randn(3, 16, 4)):
        layer(torch.randn(3, 5, 16)).sum().backward()
    assert layer.base_layer.weight.grad is not None and layer.P.grad is not None


class _AutogradPath(CollabLinear):
    """The reference: the same layer through autograd's own ops."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        G = self.context.G
        if G is None:
            return self.base_layer(x)
        return self._forward_unfused(x, x.reshape(x.shape[0], -1, x.shape[-1]), G, self.P)


@pytest.mark.parametrize("checkpointing", [False, True])
def test_cora_scores_and_gradients_equal_the_autograd_path_with_dropout(tiny, checkpointing):
    from cora_ray.model.cora import CoRAModel

    batch = tiny.batch()
    results = []
    for cls in (CollabLinear, _AutogradPath):
        model = CoRAModel(tiny.llm(0), tiny.cf(), tiny.config("cora", dropout=0.2))
        tiny.randomize_P(model)
        if checkpointing:
            model.enable_gradient_checkpointing()
        model.train()
        model.generator.eval()  # the collaborative layers' dropout only: both paths draw the same positions
        for layer in model.collab_layers.values():
            layer.__class__ = cls
        torch.manual_seed(5)
        scores = model(batch)
        scores.sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        results.append((scores.detach(), grads))
    torch.testing.assert_close(results[0][0], results[1][0], atol=1e-5, rtol=1e-5)
    for n, g in results[1][1].items():
        torch.testing.assert_close(results[0][1][n], g, atol=1e-5, rtol=1e-4, msg=n)
