"""The three CF backbones behind `CFBackbone` (docs/method.md §2.1). Pure torch: importable without Ray.

Every backbone holds `known_users` (which users had train interactions: `knows_user`) and reports the
hyper-parameters that rebuild it (`spec()`), so an artifact is `spec` + safetensors state and nothing else.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from cora_ray.cf.base import CFBackbone
from cora_ray.errors import DataError, ModelError

if TYPE_CHECKING:
    from cora_ray.cf.config import CFModelConfig
    from cora_ray.cf.data import CFData


class _Base(CFBackbone):
    def __init__(self, num_users: int, num_items: int, dim: int, known_users: torch.Tensor | None) -> None:
        super().__init__()
        if num_users < 1 or num_items < 1 or dim < 1:
            raise ModelError(
                f"{self.name}: num_users, num_items and dim must be >= 1, got {num_users}, {num_items}, {dim}"
            )
        self.num_users, self.num_items, self.dim = int(num_users), int(num_items), int(dim)
        if known_users is None:
            known_users = torch.ones(num_users + 1, dtype=torch.bool)
            known_users[0] = False
        if known_users.shape != (num_users + 1,):
            raise ModelError(
                f"{self.name}: known_users must have shape ({num_users + 1},), got {tuple(known_users.shape)}"
            )
        self.register_buffer("known_users", known_users.to(torch.bool).clone())

    @classmethod
    def for_data(cls, cfg: CFModelConfig, data: CFData) -> _Base:
        """A freshly initialised backbone of this kind, sized for `data` (cf.train's `make_backbone`)."""
        raise NotImplementedError

    @classmethod
    def from_spec(cls, spec: dict, state: dict[str, torch.Tensor] | None) -> _Base:
        """The backbone a `spec()` (less its "backbone" key) describes; weights are loaded by the caller."""
        known = state.get("known_users") if state is not None else None
        return cls(known_users=known, **spec)

    def knows_user(self, user_ids: torch.Tensor) -> torch.Tensor:
        ids = user_ids.to(self.known_users.device).long()
        in_range = (ids >= 1) & (ids <= self.num_users)
        return self.known_users[ids.clamp(0, self.num_users)] & in_range

    def spec(self) -> dict:
        """What `build_backbone(**spec)` needs (plus the state dict) to rebuild this model."""
        return {
            "backbone": self.name,
            "num_users": self.num_users,
            "num_items": self.num_items,
            "dim": self.dim,
        }

    def _check_ids(self, ids: torch.Tensor, hi: int, what: str) -> None:
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) > hi):
            raise ModelError(
                f"{self.name}: {what} ids must be in 0..{hi}, got {int(ids.min())}..{int(ids.max())}"
            )


class MF(_Base):
    """Matrix factorisation: one table per side, score = <e_u, e_i>."""

    name = "mf"

    def __init__(
        self,
        num_users: int,
        num_items: int,
        dim: int = 256,
        init_std: float = 0.1,
        known_users: torch.Tensor | None = None,
    ) -> None:
        super().__init__(num_users, num_items, dim, known_users)
        self.init_std = float(init_std)
        self.user_emb = nn.Embedding(num_users + 1, dim, padding_idx=0)
        self.item_emb = nn.Embedding(num_items + 1, dim, padding_idx=0)
        for emb in (self.user_emb, self.item_emb):
            nn.init.normal_(emb.weight, std=init_std)
            with torch.no_grad():
                emb.weight[0].zero_()

    @classmethod
    def for_data(cls, cfg: CFModelConfig, data: CFData) -> MF:
        return cls(data.num_users, data.num_items, cfg.dim, cfg.init_std, data.known_users())

    def spec(self) -> dict:
        return {**super().spec(), "init_std": self.init_std}

    def user_vectors(self, user_ids: torch.Tensor, history: torch.Tensor | None = None) -> torch.Tensor:
        self._check_ids(user_ids, self.num_users, "user")
        return self.user_emb(user_ids.long())

    def item_vectors(self, item_ids: torch.Tensor) -> torch.Tensor:
        self._check_ids(item_ids, self.num_items, "item")
        return self.item_emb(item_ids.long())


class LightGCN(_Base):
    """LightGCN (He et al. 2020): K propagation layers over the symmetric-normalised user–item graph,
    final vectors = mean of the layer outputs 0..K. The graph (train edges) is a buffer of the model, so a
    saved model reproduces its vectors exactly.

    Node layout of the (U+1+I+1)-node graph: users 0..U, then items U+1..U+1+I (row 0 of each side is the
    padding id, never connected)."""

    name = "lightgcn"

    def __init__(
        self,
        num_users: int,
        num_items: int,
        edge_users: torch.Tensor,
        edge_items: torch.Tensor,
        dim: int = 256,
        num_layers: int = 2,
        init_std: float = 0.1,
        known_users: torch.Tensor | None = None,
    ) -> None:
        super().__init__(num_users, num_items, dim, known_users)
        if edge_users.shape != edge_items.shape or edge_users.dim() != 1:
            raise ModelError("lightgcn: edge_users and edge_items must be 1-D tensors of the same length")
        self._check_ids(edge_users, self.num_users, "edge user")
        self._check_ids(edge_items, self.num_items, "edge item")
        self.num_layers, self.init_std = int(num_layers), float(init_std)
        self.user_emb = nn.Embedding(num_users + 1, dim, padding_idx=0)
        self.item_emb = nn.Embedding(num_items + 1, dim, padding_idx=0)
        for emb in (self.user_emb, self.item_emb):
            nn.init.normal_(emb.weight, std=init_std)
            with torch.no_grad():
                emb.weight[0].zero_()
        self.register_buffer("edge_users", edge_users.long().clone())
        self.register_buffer("edge_items", edge_items.long().clone())
        self._adj: torch.Tensor | None = None
        self._adj_key: tuple | None = None
        self._tables: tuple[torch.Tensor, torch.Tensor] | None = None
        self._tables_key: tuple | None = None

    @classmethod
    def for_data(cls, cfg: CFModelConfig, data: CFData) -> LightGCN:
        eu, ei = data.train_edges(cfg.graph)
        if eu.numel() == 0:
            raise DataError(
                f"lightgcn: the train split has no {cfg.graph} interactions to build the graph from"
            )
        return cls(
            data.num_users, data.num_items, eu, ei, cfg.dim, cfg.num_layers, cfg.init_std, data.known_users()
        )

    @classmethod
    def from_spec(cls, spec: dict, state: dict[str, torch.Tensor] | None) -> LightGCN:
        if state is None or "edge_users" not in state:
            raise ModelError(
                "lightgcn: building from a spec needs the state dict holding the graph (edge_users, edge_items)"
            )
        return cls(
            edge_users=state["edge_users"],
            edge_items=state["edge_items"],
            known_users=state.get("known_users"),
            **spec,
        )

    def spec(self) -> dict:
        return {
            **super().spec(),
            "num_layers": self.num_layers,
            "init_std": self.init_std,
            "edges": int(self.edge_users.numel()),
        }

    def adjacency(self) -> torch.Tensor:
        """The normalised adjacency D^-1/2 A D^-1/2 as a sparse (N, N) tensor (cached per device)."""
        key = (self.edge_users.device, self.edge_users._version, self.edge_items._version)
        if self._adj is None or self._adj_key != key:
            u = self.edge_users
            i = self.edge_items + self.num_users + 1
            n = self.num_users + self.num_items + 2
            rows = torch.cat([u, i])
            cols = torch.cat([i, u])
            deg = torch.bincount(rows, minlength=n).float()
            inv_sqrt = deg.pow(-0.5)
            inv_sqrt[deg == 0] = 0.0
            vals = inv_sqrt[rows] * inv_sqrt[cols]
            self._adj = torch.sparse_coo_tensor(
                torch.stack([rows, cols]), vals, (n, n), check_invariants=False
            ).coalesce()
            self._adj_key = key
        return self._adj

    def propagate(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(user table, item table) after propagation; cached while no gradient is needed and weights are unchanged."""
        key = (self.user_emb.weight.device, self.user_emb.weight._version, self.item_emb.weight._version)
        if not torch.is_grad_enabled() and self._tables is not None and self._tables_key == key:
            return self._tables
        x = torch.cat([self.user_emb.weight, self.item_emb.weight])
        adj = self.adjacency()
        acc = x
        for _ in range(self.num_layers):
            x = torch.sparse.mm(adj, x)
            acc = acc + x
        out = acc / (self.num_layers + 1)
        tables = (out[: self.num_users + 1], out[self.num_users + 1 :])
        if not torch.is_grad_enabled():
            self._tables, self._tables_key = tables, key
        else:
            self._tables = self._tables_key = None
        return tables

    def _apply(self, fn, recurse=True):  # .to(device) etc.: drop the caches
        self._adj = self._adj_key = self._tables = self._tables_key = None
        return super()._apply(fn, recurse)

    def user_vectors(self, user_ids: torch.Tensor, history: torch.Tensor | None = None) -> torch.Tensor:
        self._check_ids(user_ids, self.num_users, "user")
        return self.propagate()[0][user_ids.long()]

    def item_vectors(self, item_ids: torch.Tensor) -> torch.Tensor:
        self._check_ids(item_ids, self.num_items, "item")
        return self.propagate()[1][item_ids.long()]

    def score(
        self, user_ids: torch.Tensor, item_ids: torch.Tensor, history: torch.Tensor | None = None
    ) -> torch.Tensor:
        self._check_ids(user_ids, self.num_users, "user")
        self._check_ids(item_ids, self.num_items, "item")
        users, items = self.propagate()  # one propagation for both sides
        return (users[user_ids.long()] * items[item_ids.long()]).sum(-1)

    def score_all_items(self, user_ids: torch.Tensor, history: torch.Tensor | None = None) -> torch.Tensor:
        self._check_ids(user_ids, self.num_users, "user")
        users, items = self.propagate()  # one propagation for both sides (also with gradients on)
        out = users[user_ids.long()] @ items.T
        out[:, 0] = float("-inf")
        return out


class _Block(nn.Module):
    """One SASRec block (Kang & McAuley 2018): Q = LN(x); x = Q + MHA(Q, x, x); x = LN(x); x = x + FFN(x)."""

    def __init__(self, dim: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.attn_norm = nn.LayerNorm(dim, eps=1e-8)
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.attn_dropout = nn.Dropout(dropout)
        self.ffn_norm = nn.LayerNorm(dim, eps=1e-8)
        self.ffn = nn.Sequential(
            nn.Linear(dim, dim), nn.Dropout(dropout), nn.ReLU(), nn.Linear(dim, dim), nn.Dropout(dropout)
        )
        self.dropout_p = dropout

    def forward(self, x: torch.Tensor, allowed: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        """x (B, T, D), allowed (B, T, T) → (B, T, D); with `last_only`, only the last position's output
        (B, 1, D) is computed (keys and values still come from every position): what the final block needs."""
        b, t, d = x.shape
        h = self.num_heads
        q_in = self.attn_norm(x[:, -1:] if last_only else x)
        if last_only:
            allowed = allowed[:, -1:]
        tq = q_in.shape[1]
        att = F.scaled_dot_product_attention(
            self.q(q_in).view(b, tq, h, d // h).transpose(1, 2),
            self.k(x).view(b, t, h, d // h).transpose(1, 2),
            self.v(x).view(b, t, h, d // h).transpose(1, 2),
            attn_mask=allowed[:, None],
            dropout_p=self.dropout_p if self.training else 0.0,
        )
        x = q_in + self.attn_dropout(self.o(att.transpose(1, 2).reshape(b, tq, d)))
        x = self.ffn_norm(x)
        return x + self.ffn(x)


class SASRec(_Base):
    """Self-attentive sequential recommender used point-wise: the user vector is the encoding (last position)
    of the user's last <= `max_history` positive items; the item vector is the same item embedding table
    that encodes the sequence (shared). The user id is not used (any user with a history can be scored)."""

    name = "sasrec"
    uses_history = True

    def __init__(
        self,
        num_users: int,
        num_items: int,
        dim: int = 256,
        max_history: int = 25,
        num_blocks: int = 2,
        num_heads: int = 1,
        dropout: float = 0.2,
        init_std: float = 0.1,
        known_users: torch.Tensor | None = None,
    ) -> None:
        super().__init__(num_users, num_items, dim, known_users)
        if dim % num_heads:
            raise ModelError(f"sasrec: dim {dim} is not divisible by num_heads {num_heads}")
        self.max_history, self.num_blocks, self.num_heads = int(max_history), int(num_blocks), int(num_heads)
        self.dropout_p, self.init_std = float(dropout), float(init_std)
        self.item_emb = nn.Embedding(num_items + 1, dim, padding_idx=0)
        self.pos_emb = nn.Embedding(max_history, dim)
        nn.init.normal_(self.item_emb.weight, std=init_std)
        nn.init.normal_(self.pos_emb.weight, std=init_std)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()
        self.emb_dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(_Block(dim, num_heads, dropout) for _ in range(num_blocks))
        self.last_norm = nn.LayerNorm(dim, eps=1e-8)

    @classmethod
    def for_data(cls, cfg: CFModelConfig, data: CFData) -> SASRec:
        return cls(
            data.num_users,
            data.num_items,
            cfg.dim,
            cfg.max_history,
            cfg.num_blocks,
            cfg.num_heads,
            cfg.dropout,
            cfg.init_std,
            data.known_users(),
        )

    def spec(self) -> dict:
        return {
            **super().spec(),
            "max_history": self.max_history,
            "num_blocks": self.num_blocks,
            "num_heads": self.num_heads,
            "dropout": self.dropout_p,
            "init_std": self.init_std,
        }

    def _fit_history(self, history: torch.Tensor) -> torch.Tensor:
        history = history.long()
        if history.dim() != 2:
            raise ModelError(f"sasrec: history must be (B, H), got shape {tuple(history.shape)}")
        h = history.shape[1]
        if h >= self.max_history:
            return history[:, h - self.max_history :]
        return F.pad(history, (self.max_history - h, 0))

    def user_vectors(self, user_ids: torch.Tensor, history: torch.Tensor | None = None) -> torch.Tensor:
        if history is None:
            raise ModelError(
                "sasrec: the user vector encodes the user's positive history; pass `history` (B, H)"
            )
        seq = self._fit_history(history.to(self.item_emb.weight.device))
        self._check_ids(seq, self.num_items, "history item")
        if seq.shape[0] != user_ids.shape[0]:
            raise ModelError(f"sasrec: {user_ids.shape[0]} users but {seq.shape[0]} history rows")
        return self.encode(seq)

    def encode(self, seq: torch.Tensor, last_only: bool = True) -> torch.Tensor:
        """(B, T) left-padded item ids → (B, D): the last position's output. `last_only=False` runs the final
        block on every position too (same result, the textbook computation; kept for tests)."""
        t = seq.shape[1]
        real = seq != 0  # (B, T)
        x = self.item_emb(seq) * math.sqrt(self.dim) + self.pos_emb.weight[None, -t:]
        x = self.emb_dropout(x) * real[..., None]
        causal = torch.ones(t, t, dtype=torch.bool, device=seq.device).tril()
        eye = torch.eye(t, dtype=torch.bool, device=seq.device)
        # a query attends to earlier real items and always to itself (so padded rows never see an empty set)
        allowed = (causal[None] & real[:, None, :]) | eye[None]
        for j, block in enumerate(self.blocks):
            final = last_only and j == len(self.blocks) - 1
            x = block(x, allowed, last_only=final) * (real[:, -1:, None] if final else real[..., None])
        return self.last_norm(x)[:, -1]

    def item_vectors(self, item_ids: torch.Tensor) -> torch.Tensor:
        self._check_ids(item_ids, self.num_items, "item")
        return self.item_emb(item_ids.long())


BACKBONE_CLASSES: dict[str, type[_Base]] = {cls.name: cls for cls in (MF, LightGCN, SASRec)}


def backbone_class(name: str) -> type[_Base]:
    """A backbone's name (`cf.model.backbone`, an artifact's spec) → its class, whose class attributes
    (`uses_history`) answer questions about it without building it."""
    if name not in BACKBONE_CLASSES:
        raise ModelError(f"unknown CF backbone {name!r}; expected one of {sorted(BACKBONE_CLASSES)}")
    return BACKBONE_CLASSES[name]


def build_backbone(spec: dict, state: dict[str, torch.Tensor] | None = None) -> CFBackbone:
    """A backbone from its `spec()` (and, to restore it, its state dict: LightGCN takes its graph from it)."""
    spec = dict(spec)
    name = spec.pop("backbone", None)
    cls = backbone_class(name)
    spec.pop("edges", None)
    model = cls.from_spec(spec, state)
    if state is not None:
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ModelError(
                f"{name}: weights do not fit the model (missing {missing}, unexpected {unexpected})"
            )
    return model
