"""CollaborativeWeightGenerator: shapes, normalisation, the memory projection, gradients."""

from __future__ import annotations

import dataclasses

import torch

from cora_ray.config import GeneratorConfig
from cora_ray.model.generator import CollaborativeWeightGenerator

GEN = GeneratorConfig(num_queries=3, num_layers=2, hidden_size=32, num_heads=4, ffn_size=64, dropout=0.1)


def test_generator_output_is_one_unit_norm_G_per_row():
    gen = CollaborativeWeightGenerator(cf_dim=16, d_model=24, rank=4, cfg=GEN).eval()
    e_u, e_i = torch.randn(5, 16), torch.randn(5, 16)
    G = gen(e_u, e_i)
    assert G.shape == (5, 24, 4)
    torch.testing.assert_close(G.flatten(1).norm(dim=-1), torch.ones(5))
    assert not torch.allclose(G[0], G[1])  # rows with other CF vectors get other deltas


def test_generator_rows_do_not_interact():
    gen = CollaborativeWeightGenerator(cf_dim=16, d_model=24, rank=4, cfg=GEN).eval()
    e_u, e_i = torch.randn(5, 16), torch.randn(5, 16)
    G = gen(e_u, e_i)
    torch.testing.assert_close(gen(e_u[2:3], e_i[2:3])[0], G[2])


def test_generator_projects_the_memory_token_when_widths_differ():
    same = CollaborativeWeightGenerator(cf_dim=16, d_model=24, rank=4, cfg=GEN)  # 2·16 = 32 = d
    other = CollaborativeWeightGenerator(cf_dim=10, d_model=24, rank=4, cfg=GEN)
    assert isinstance(same.memory_proj, torch.nn.Identity)
    assert other.memory_proj.in_features == 20 and other.memory_proj.out_features == 32
    assert other(torch.randn(2, 10), torch.randn(2, 10)).shape == (2, 24, 4)


def test_generator_paper_defaults_build():
    gen = CollaborativeWeightGenerator(cf_dim=256, d_model=64, rank=16, cfg=GeneratorConfig())
    assert len(gen.blocks) == 8 and gen.queries.shape == (4, 512)
    assert gen.blocks[0].ffn[0].out_features == 3072


def test_generator_queries_and_blocks_receive_gradients():
    gen = CollaborativeWeightGenerator(cf_dim=16, d_model=24, rank=4, cfg=GEN)
    G = gen(torch.randn(4, 16), torch.randn(4, 16))
    (G * torch.randn_like(G)).sum().backward()
    assert gen.queries.grad is not None and gen.queries.grad.abs().sum() > 0
    assert gen.blocks[0].ffn[0].weight.grad.abs().sum() > 0
    assert gen.blocks[0].cross_attn.value.weight.grad.abs().sum() > 0


def test_generator_memory_norm_is_off_by_default_and_leaves_the_paper_generator_unchanged():
    torch.manual_seed(0)
    plain = CollaborativeWeightGenerator(cf_dim=16, d_model=24, rank=4, cfg=GEN).eval()
    torch.manual_seed(0)
    normed = CollaborativeWeightGenerator(
        cf_dim=16, d_model=24, rank=4, cfg=dataclasses.replace(GEN, memory_norm=True)
    ).eval()
    assert isinstance(plain.norm_user, torch.nn.Identity) and isinstance(plain.norm_item, torch.nn.Identity)
    # the same initialisation otherwise (a LayerNorm draws no random numbers): checkpoints without it load as before
    assert set(normed.state_dict()) - set(plain.state_dict()) == {
        "norm_user.weight",
        "norm_user.bias",
        "norm_item.weight",
        "norm_item.bias",
    }
    for name, tensor in plain.state_dict().items():
        torch.testing.assert_close(normed.state_dict()[name], tensor)


def test_generator_memory_norm_makes_G_independent_of_the_cf_vectors_scale_and_offset():
    cfg = dataclasses.replace(GEN, memory_norm=True)
    gen = CollaborativeWeightGenerator(cf_dim=16, d_model=24, rank=4, cfg=cfg).eval()
    e_u, e_i = torch.randn(5, 16), torch.randn(5, 16)
    # a backbone whose vectors are 10x larger and offset (user and item differently) gives the same deltas
    scaled = gen(10 * e_u + 3.0, 0.1 * e_i - 2.0)
    torch.testing.assert_close(scaled, gen(e_u, e_i), atol=1e-5, rtol=1e-4)
    plain = CollaborativeWeightGenerator(cf_dim=16, d_model=24, rank=4, cfg=GEN).eval()
    assert not torch.allclose(plain(10 * e_u + 3.0, 0.1 * e_i - 2.0), plain(e_u, e_i), atol=1e-3)
