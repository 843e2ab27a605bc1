"""SparseMaskDropout: the same random function as nn.Dropout, sampled through the dropped positions."""

from __future__ import annotations

import math

import pytest
import torch

from cora_ray.model.dropout import SparseMaskDropout, bernoulli_positions


@pytest.mark.parametrize("p", [0.05, 0.3])
def test_positions_are_sorted_unique_in_range_and_at_rate_p(p):
    n = 2_000_000
    idx = bernoulli_positions(n, p)
    assert idx.dtype == torch.int64 and bool((idx[1:] > idx[:-1]).all())
    assert int(idx.min()) >= 0 and int(idx.max()) < n
    sd = (p * (1 - p) / n) ** 0.5
    assert abs(idx.numel() / n - p) < 6 * sd
    # every region of the tensor is dropped at the same rate (no drift along the renewal process)
    counts = torch.bincount(idx // (n // 10), minlength=10)[:10].double()
    assert ((counts / (n // 10) - p).abs() < 6 * (p * (1 - p) / (n // 10)) ** 0.5).all()


def test_gaps_follow_the_geometric_law():
    p = 0.1
    idx = bernoulli_positions(1_000_000, p)
    gaps = torch.diff(idx) - 1  # kept elements between two drops
    for k in range(4):
        expected = (1 - p) ** k * p
        assert abs(float((gaps == k).double().mean()) - expected) < 0.01


def test_small_tensors_and_the_loop_over_chunks():
    torch.manual_seed(0)
    assert bernoulli_positions(0, 0.05).numel() == 0
    for _ in range(200):  # tiny n: the first chunk often falls short of the end, the loop continues
        idx = bernoulli_positions(7, 0.5)
        assert idx.numel() == idx.unique().numel() and (idx < 7).all()


def test_dropout_drops_scales_and_passes_gradients_like_nn_dropout():
    drop = SparseMaskDropout(0.2).train()
    x = torch.randn(64, 100, 32, requires_grad=True)
    y = drop(x)
    dropped = y == 0
    assert abs(float(dropped.double().mean()) - 0.2) < 0.01
    torch.testing.assert_close(y[~dropped], x[~dropped] / 0.8)
    y.sum().backward()
    torch.testing.assert_close(x.grad, (~dropped).float() / 0.8)


def test_dropout_is_identity_in_eval_and_at_p_zero():
    x = torch.randn(4, 5)
    assert SparseMaskDropout(0.5).eval()(x) is x
    assert SparseMaskDropout(0.0).train()(x) is x
    with pytest.raises(ValueError, match="\\[0, 1\\)"):
        SparseMaskDropout(1.0)


def test_zero_dropped_times_its_scale_is_the_forward():
    d = SparseMaskDropout(0.2).train()
    x = torch.randn(64, 33)
    torch.manual_seed(3)
    zeroed, scale = d.zero_dropped(x)
    torch.manual_seed(3)
    assert scale == pytest.approx(1 / 0.8) and torch.equal(zeroed * scale, d(x))
    kept = zeroed != 0
    assert torch.equal(zeroed[kept], x[kept]) and 0 < int((~kept).sum()) < x.numel()
    d.eval()
    same, one = d.zero_dropped(x)
    assert same is x and one == 1.0  # eval: nothing dropped, nothing copied
    assert SparseMaskDropout(0.0).train().zero_dropped(x)[1] == 1.0


def _positions_out_of_place(numel: int, p: float) -> torch.Tensor:
    """The first implementation of `bernoulli_positions` (out-of-place ops): the draws training runs were made
    with. The in-place version must give the same positions and leave the generator in the same state."""
    log_keep = math.log1p(-p)
    chunks, start = [torch.empty(0, dtype=torch.long)], 0
    while start < numel:
        expected = (numel - start) * p
        n = int(expected + 6.0 * math.sqrt(expected) + 16)
        u = torch.rand(n, dtype=torch.float64)
        positions = start + torch.cumsum(torch.floor(torch.log1p(-u) / log_keep).long() + 1, dim=0) - 1
        chunks.append(positions[positions < numel])
        start = int(positions[-1]) + 1
    return torch.cat(chunks)


@pytest.mark.parametrize("p", [0.05, 0.3, 0.9])
@pytest.mark.parametrize("numel", [1, 37, 1000, 8 * 190 * 576])
def test_positions_are_the_draws_of_the_out_of_place_formula(numel, p):
    for seed in range(5):
        torch.manual_seed(seed)
        got, after = bernoulli_positions(numel, p), torch.rand(3)
        torch.manual_seed(seed)
        want, want_after = _positions_out_of_place(numel, p), torch.rand(3)
        assert torch.equal(got, want)
        assert torch.equal(after, want_after)  # the generator advanced by the same draws
