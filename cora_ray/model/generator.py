"""The collaborative weight generator (docs/method.md §2.2): CF vectors of a (user, item) pair → one G per sample.

    c  = [e_u ; e_i]                                   (B, 2·D)  one memory token (projected to d if 2·D ≠ d)
    q⁰ = LayerNorm(Q) , Q ∈ R^{k × d} learned           (B, k, d) the collaborative queries
    qⁿ = Block(qⁿ⁻¹, c)  for n = 1..N                   self-attn among queries, cross-attn to c, FFN
    g  = mean_k(Linear(q^N))                            (B, d_model·r)
    G  = reshape(g / ‖g‖₂)                              (B, d_model, r), ‖G_b‖_F = 1

The blocks follow BLIP-2's Q-Former (BERT-style, post-LayerNorm, GELU FFN, dropout on attention
probabilities and on each sub-layer's output). It is written out here rather than taken from
`transformers.Blip2QFormerModel` because that class is a PreTrainedModel built around text+query inputs
and output recorders; the part CoRA needs is the ~40 lines below.

With a single memory token the cross-attention softmax is 1 everywhere, so cross-attention reduces to
`W_o W_v c` and its query/key projections receive no gradient. That is the paper's architecture and is
kept as such (the dead weights cost 2·d² per block, nothing at run time worth measuring).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cora_ray.config import GeneratorConfig


class MultiHeadAttention(nn.Module):
    """Scaled dot-product attention of `x` (B, Q, d) over `memory` (B, M, d), no mask (nothing is padded)."""

    def __init__(self, d: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.query = nn.Linear(d, d)
        self.key = nn.Linear(d, d)
        self.value = nn.Linear(d, d)
        self.out = nn.Linear(d, d)
        self.attn_dropout = dropout

    def forward(self, x: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        B, Q, d = x.shape
        M, h = memory.shape[1], self.num_heads
        q = self.query(x).view(B, Q, h, d // h).transpose(1, 2)  # (B, h, Q, d/h)
        k = self.key(memory).view(B, M, h, d // h).transpose(1, 2)  # (B, h, M, d/h)
        v = self.value(memory).view(B, M, h, d // h).transpose(1, 2)  # (B, h, M, d/h)
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_dropout if self.training else 0.0)
        return self.out(y.transpose(1, 2).reshape(B, Q, d))  # (B, Q, d)


class QueryBlock(nn.Module):
    """One Q-Former block: self-attention among the queries, cross-attention to the memory, feed-forward."""

    def __init__(self, d: int, num_heads: int, ffn_size: int, dropout: float) -> None:
        super().__init__()
        self.self_attn = MultiHeadAttention(d, num_heads, dropout)
        self.ln_self = nn.LayerNorm(d, eps=1e-12)
        self.cross_attn = MultiHeadAttention(d, num_heads, dropout)
        self.ln_cross = nn.LayerNorm(d, eps=1e-12)
        self.ffn = nn.Sequential(nn.Linear(d, ffn_size), nn.GELU(), nn.Linear(ffn_size, d))
        self.ln_ffn = nn.LayerNorm(d, eps=1e-12)
        self.dropout = nn.Dropout(dropout)

    def forward(self, q: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        q = self.ln_self(q + self.dropout(self.self_attn(q, q)))  # (B, k, d)
        q = self.ln_cross(q + self.dropout(self.cross_attn(q, memory)))  # (B, k, d)
        return self.ln_ffn(q + self.dropout(self.ffn(q)))  # (B, k, d)


class CollaborativeWeightGenerator(nn.Module):
    """(e_u, e_i) → G: (B, D), (B, D) → (B, d_model, r), each G_b of unit Frobenius norm.

    `cf_dim` is D (the CF backbone's vector size), `d_model` the LLM's hidden size, `rank` r; the block
    sizes come from `GeneratorConfig` (k queries, N blocks, width d, heads, FFN size, dropout).
    """

    def __init__(self, cf_dim: int, d_model: int, rank: int, cfg: GeneratorConfig) -> None:
        super().__init__()
        d = cfg.hidden_size
        self.d_model, self.rank = d_model, rank
        # memory_norm: e_u and e_i each standardised per row (own learned scale and shift) before they form c;
        # apart, so that a backbone whose user vectors share a large common part (SASRec's) cannot drown the
        # item half's variation in one joint normalisation
        self.norm_user = nn.LayerNorm(cf_dim) if cfg.memory_norm else nn.Identity()
        self.norm_item = nn.LayerNorm(cf_dim) if cfg.memory_norm else nn.Identity()
        # the paper has 2·D = d (256 + 256 = 512); otherwise a linear map brings c to the blocks' width
        self.memory_proj = nn.Linear(2 * cf_dim, d) if 2 * cf_dim != d else nn.Identity()
        self.queries = nn.Parameter(torch.empty(cfg.num_queries, d))
        self.ln_queries = nn.LayerNorm(d, eps=1e-12)
        self.dropout = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(
            [QueryBlock(d, cfg.num_heads, cfg.ffn_size, cfg.dropout) for _ in range(cfg.num_layers)]
        )
        self.to_weights = nn.Linear(d, d_model * rank)
        self.apply(self._init_weights)
        nn.init.normal_(self.queries, std=0.02)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        # BERT / BLIP-2 initialisation
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def memory(self, e_u: torch.Tensor, e_i: torch.Tensor) -> torch.Tensor:
        """(B, D), (B, D) → the one memory token the blocks read, (B, 1, d)."""
        dtype = self.queries.dtype
        c = torch.cat([self.norm_user(e_u.to(dtype)), self.norm_item(e_i.to(dtype))], dim=-1)  # (B, 2D)
        return self.memory_proj(c).unsqueeze(1)  # (B, 1, d)

    def forward(
        self, e_u: torch.Tensor, e_i: torch.Tensor, states: list[torch.Tensor] | None = None
    ) -> torch.Tensor:
        """`states`, when given, receives the query states after each block (B, k, d): what
        cora_ray/eval/generator_input.py traces to see where the rows' differences fade."""
        B = e_u.shape[0]
        memory = self.memory(e_u, e_i)  # (B, 1, d)
        q = self.dropout(self.ln_queries(self.queries).expand(B, -1, -1))  # (B, k, d)
        for block in self.blocks:
            q = block(q, memory)  # (B, k, d)
            if states is not None:
                states.append(q)
        # mean-pooling the k outputs of a linear map = mapping the mean query (k times cheaper)
        g = self.to_weights(q.mean(dim=1))  # (B, d_model·r)
        g = F.normalize(g, dim=-1)  # unit L2 norm of the whole vector
        return g.view(B, self.d_model, self.rank)  # (B, d_model, r)
