"""CollabLinear: the per-row low-rank path against merged weights; injection and its errors."""

from __future__ import annotations

import threading

import pytest
import torch
from torch import nn

from cora_ray.errors import ModelError
from cora_ray.model.collab_linear import CollabContext, CollabLinear, inject_collab_layers


def _layer(
    d_in: int = 8, d_out: int = 6, rank: int = 3, dropout: float = 0.0
) -> tuple[CollabLinear, CollabContext]:
    ctx = CollabContext()
    layer = CollabLinear(nn.Linear(d_in, d_out), ctx, rank=rank, alpha=6.0, dropout=dropout)
    layer.base_layer.requires_grad_(False)
    return layer, ctx


@pytest.mark.parametrize("shape", [(4, 8), (4, 5, 8), (4, 2, 3, 8)])
def test_collab_linear_equals_merged_weight_row_by_row(shape):
    layer, ctx = _layer()
    with torch.no_grad():
        layer.P.normal_()
    x, G = torch.randn(*shape), torch.randn(4, 8, 3)
    with ctx.use(G):
        y = layer(x)
    for b in range(4):
        ref = x[b] @ layer.merged_weight(G[b]).t() + layer.base_layer.bias  # W_b = W + (alpha/r)·P·G_bᵀ
        torch.testing.assert_close(y[b], ref, atol=1e-5, rtol=1e-5)


def test_collab_linear_without_G_is_the_frozen_layer():
    layer, ctx = _layer()
    with torch.no_grad():
        layer.P.normal_()
    x = torch.randn(4, 5, 8)
    assert torch.equal(layer(x), layer.base_layer(x))
    with ctx.use(None):
        assert torch.equal(layer(x), layer.base_layer(x))


def test_collab_linear_starts_at_zero_delta():
    layer, ctx = _layer()
    x = torch.randn(4, 5, 8)
    assert torch.count_nonzero(layer.P) == 0
    with ctx.use(torch.randn(4, 8, 3)):
        torch.testing.assert_close(layer(x), layer.base_layer(x))


def test_collab_linear_rejects_G_for_another_batch():
    layer, ctx = _layer()
    with ctx.use(torch.randn(3, 8, 3)), pytest.raises(ModelError, match="expected \\(4, 8, 3\\)"):
        layer(torch.randn(4, 5, 8))


def test_collab_linear_dropout_only_in_training():
    layer, ctx = _layer(dropout=0.5)
    with torch.no_grad():
        layer.P.normal_()
    x, G = torch.randn(4, 5, 8), torch.randn(4, 8, 3)
    with ctx.use(G):
        layer.eval()
        assert torch.equal(layer(x), layer(x))
        layer.train()
        assert not torch.equal(layer(x), layer(x))


def test_context_is_per_thread_and_nests():
    ctx = CollabContext()
    G1, G2 = torch.zeros(1), torch.ones(1)
    seen = []
    with ctx.use(G1):
        thread = threading.Thread(target=lambda: seen.append(ctx.G))
        thread.start()
        thread.join()
        with ctx.use(G2):
            assert ctx.G is G2
        assert ctx.G is G1
    assert ctx.G is None and seen == [None]


def test_inject_replaces_targets_by_suffix(tiny):
    lm = tiny.llm().model
    ctx, layers = inject_collab_layers(lm, ["q_proj", "o_proj"], rank=4, alpha=8.0, dropout=0.0)
    assert sorted(layers) == sorted(
        f"model.layers.{i}.self_attn.{p}" for i in range(2) for p in ("q_proj", "o_proj")
    )
    assert all(layer.context is ctx for layer in layers.values())
    assert isinstance(lm.model.layers[1].self_attn.q_proj, CollabLinear)
    assert type(lm.model.layers[1].self_attn.k_proj) is nn.Linear


def test_inject_ffn_targets_that_take_d_model(tiny):
    lm = tiny.llm().model
    _, layers = inject_collab_layers(lm, ["gate_proj", "up_proj"], rank=4, alpha=8.0, dropout=0.0)
    assert len(layers) == 4


@pytest.mark.parametrize(
    ("targets", "message"),
    [
        (["down_proj"], "model.layers.0.mlp.down_proj' takes 128 inputs"),
        (["mlp"], "model.layers.0.mlp' is a LlamaMLP"),
        (["qproj"], "target 'qproj' matches no module"),
    ],
)
def test_inject_bad_target_is_a_model_error_naming_the_module(tiny, targets, message):
    with pytest.raises(ModelError, match=message):
        inject_collab_layers(tiny.llm().model, targets, rank=4, alpha=8.0, dropout=0.0)


def test_inject_twice_is_refused(tiny):
    lm = tiny.llm().model
    inject_collab_layers(lm, ["q_proj"], rank=4, alpha=8.0, dropout=0.0)
    with pytest.raises(ModelError, match="is a CollabLinear, not a plain torch.nn.Linear"):
        inject_collab_layers(lm, ["q_proj"], rank=4, alpha=8.0, dropout=0.0)


def test_training_dropout_is_the_dropout_of_x_with_its_scale_folded_into_the_rank_r_path():
    """CollabLinear zeroes the dropped inputs and applies 1/(1-p) on the rank-r side (no scaled copy of x): the
    output and every gradient equal W x + s·P Gᵀ dropout(x) drawn with the same random numbers."""
    layer, ctx = _layer(dropout=0.3)
    with torch.no_grad():
        layer.P.normal_()
    layer.train()
    x = torch.randn(4, 5, 8, requires_grad=True)
    G = torch.randn(4, 8, 3, requires_grad=True)
    torch.manual_seed(11)
    with ctx.use(G):
        y = layer(x)
    torch.manual_seed(11)
    x_drop = layer.dropout(x)  # the module's own forward: zeroed · 1/(1-p), the same draw
    assert 0 < int((x_drop == 0).sum()) < x.numel()
    ref = layer.base_layer(x) + layer.scaling * torch.bmm(x_drop, G) @ layer.P.t()
    torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-5)
    w = torch.randn_like(y)
    grads = torch.autograd.grad((y * w).sum(), [x, G, layer.P])
    grads_ref = torch.autograd.grad((ref * w).sum(), [x, G, layer.P])
    for g, r in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(g, r, atol=1e-5, rtol=1e-5)
