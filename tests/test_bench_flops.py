"""bench/bench_model.py count_flops: the matmul and attention work of a call, forward and backward, counted by
torch.utils.flop_counter — with the CPU flash-attention kernel, which torch's own table does not map, included."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]


def _bench_model():
    sys.path.insert(0, str(REPO / "bench"))  # bench_model imports its neighbour `common`
    try:
        spec = importlib.util.spec_from_file_location(
            "bench_model_under_test", REPO / "bench" / "bench_model.py"
        )
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(REPO / "bench"))
    return module


def test_a_linear_layer_counts_its_forward_and_both_backward_products():
    count_flops = _bench_model().count_flops
    M, K, N = 12, 32, 24
    layer = torch.nn.Linear(K, N, bias=False)
    x = torch.randn(M, K, requires_grad=True)
    counted = count_flops(lambda: layer(x).sum().backward())
    # forward x·Wᵀ, backward dx = dy·W and dW = dyᵀ·x: three M·K·N products of 2 FLOPs per multiply-add
    assert counted["total"] == 3 * 2 * M * K * N
    frozen_input = torch.randn(M, K)  # no input gradient wanted: only the weight's product runs backward
    assert count_flops(lambda: layer(frozen_input).sum().backward())["total"] == 2 * 2 * M * K * N


def test_cpu_flash_attention_is_counted_forward_and_backward_with_grouped_kv_heads():
    count_flops = _bench_model().count_flops
    b, h, h_kv, s, d = 2, 6, 2, 16, 8
    q = torch.randn(b, h, s, d, requires_grad=True)
    k = torch.randn(b, h_kv, s, d, requires_grad=True)
    v = torch.randn(b, h_kv, s, d, requires_grad=True)
    forward = count_flops(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True))
    assert "aten._scaled_dot_product_flash_attention_for_cpu" in forward
    assert forward["total"] == 2 * (2 * b * h * s * s * d)  # q·kᵀ and p·v, every query head
    both = count_flops(
        lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True).sum().backward()
    )
    assert "aten._scaled_dot_product_flash_attention_for_cpu_backward" in both
    # backward: the scores again, then dP, dV, dQ and dK — five products of the forward's size
    assert both["total"] == forward["total"] + 5 * (2 * b * h * s * s * d)
