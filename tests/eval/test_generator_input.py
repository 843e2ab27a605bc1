"""cora_ray/eval/generator_input.py: how much G varies from row to row, and memory_norm's effect on it."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from cora_ray.cf.base import CFBackbone
from cora_ray.config import GeneratorConfig
from cora_ray.eval.cf_signal import g_similarity
from cora_ray.eval.generator_input import SampledRows, generator_input_signal, varying_share
from cora_ray.model.generator import CollaborativeWeightGenerator

GEN = GeneratorConfig(num_queries=2, num_layers=2, hidden_size=128, num_heads=4, ffn_size=256, dropout=0.1)


class OffsetCF(CFBackbone):
    """SASRec-like vectors: users = a large common vector + small per-user variation; items centred and small."""

    name = "offset-table"

    def __init__(self, n: int = 64, dim: int = 64, offset: float = 5.0, spread: float = 0.05) -> None:
        super().__init__()
        self.dim = dim
        g = torch.Generator().manual_seed(0)
        common = offset * torch.randn(dim, generator=g)
        self.users = nn.Embedding.from_pretrained(common + spread * torch.randn(n, dim, generator=g))
        self.items = nn.Embedding.from_pretrained(spread * torch.randn(n, dim, generator=g))

    def user_vectors(self, user_ids: torch.Tensor, history: torch.Tensor | None = None) -> torch.Tensor:
        return self.users(user_ids)

    def item_vectors(self, item_ids: torch.Tensor) -> torch.Tensor:
        return self.items(item_ids)


def _rows(n: int = 64) -> SampledRows:
    ids = torch.arange(n)
    return SampledRows(
        users=ids, items=ids.flip(0), histories=torch.zeros(n, 10, dtype=torch.long), split="x", seed=0
    )


def test_varying_share_and_pair_cosine_read_identical_and_centred_rows():
    same = torch.ones(10, 4)
    assert varying_share(same) == 0.0 and abs(g_similarity(same)["mean"] - 1.0) < 1e-6
    centred = torch.randn(500, 8, generator=torch.Generator().manual_seed(0))
    centred = centred - centred.mean(0)
    assert abs(varying_share(centred) - 1.0) < 1e-9
    assert abs(g_similarity(centred)["mean"]) < 0.1


def test_memory_norm_lets_the_item_half_move_G_beside_offset_user_vectors():
    cf, rows = OffsetCF(), _rows()
    torch.manual_seed(0)
    plain = generator_input_signal(cf, rows, CollaborativeWeightGenerator(cf.dim, 24, 4, GEN))
    torch.manual_seed(0)
    normed = generator_input_signal(
        cf, rows, CollaborativeWeightGenerator(cf.dim, 24, 4, dataclasses.replace(GEN, memory_norm=True))
    )
    assert plain["user_varying_share"] < 0.01  # the common part dominates the user vectors
    assert plain["item_varying_share"] > 0.9
    assert normed["g_varying_share"] > 10 * plain["g_varying_share"]
    assert normed["g_pair_cosine"] < plain["g_pair_cosine"]
    assert plain["rows"] == 64 and plain["cf_dim"] == 64


def test_the_trace_follows_the_rows_differences_through_the_blocks_to_g():
    cf, rows = OffsetCF(), _rows()
    torch.manual_seed(0)
    generator = CollaborativeWeightGenerator(cf.dim, 24, 4, GEN)
    with torch.no_grad():
        generator.to_weights.bias.fill_(0.5)  # a trained-looking bias, so that its norm is read, not assumed
    r = generator_input_signal(cf, rows, generator)
    # the memory token as the generator builds it: here 2D = 128 = d, so c itself (no projection)
    e_u, e_i = cf.user_vectors(rows.users), cf.item_vectors(rows.items)
    c = torch.cat([e_u, e_i], dim=-1).double()
    assert abs(r["memory_rms"] - float(c.pow(2).mean().sqrt())) < 1e-5
    assert len(r["query_varying_shares"]) == GEN.num_layers
    assert all(0.0 <= s <= 1.0 for s in r["query_varying_shares"])
    assert abs(r["g_bias_norm"] - 0.5 * (24 * 4) ** 0.5) < 1e-6
    # g's common and varying parts, against the generator's own output before normalisation
    states: list[torch.Tensor] = []
    with torch.no_grad():
        generator.eval()
        generator(e_u, e_i, states=states)
        g = generator.to_weights(states[-1].mean(dim=1)).double() - generator.to_weights.bias.double()
    assert abs(r["g_common_norm"] - float(g.mean(dim=0).norm())) < 1e-6
    assert abs(r["g_varying_norm"] - float((g - g.mean(dim=0)).norm(dim=-1).mean())) < 1e-6
    # the trace does not change what the generator computes
    with torch.no_grad():
        assert torch.equal(generator(e_u, e_i), generator(e_u, e_i, states=[]))
