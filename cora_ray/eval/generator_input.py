"""How much a CF backbone's vectors make the collaborative weights G differ from row to row — for a fresh
generator (what training starts from) or a trained checkpoint's.

CoRA's delta is rank r per row; if G is nearly the same for every row, the delta is one shared LoRA and the
collaborative signal has no way in. The generator reads one memory token c = [e_u ; e_i] through
Linear(2D → d) initialised N(0, 0.02) (docs/method.md §2.2), so how much G moves at the start of training
depends on how much the backbone's vectors move across rows relative to their common part. Measured here:

- `user_varying_share`, `item_varying_share`: the share of the vectors' energy (sum of squares) in their
  deviation from the mean vector over the sampled rows (1 = centred, 0 = every row the same vector);
- `g_varying_share`: the same for G (each G has unit norm, so this is 1 − ‖mean G‖²);
- `g_pair_cosine`: the mean cosine between the G of two different rows (1 = a shared LoRA;
  `cora_ray/eval/cf_signal.py` `g_similarity`);
- where the rows' differences go inside the generator: `memory_rms` (the memory token's root mean square per
  entry; the query stream it is added to is LayerNorm'd, about 1 per entry), `query_varying_shares` (the
  varying share of the query states after each block) and, for g = W·q̄ + b before G's normalisation,
  `g_common_norm` (‖mean over rows of W·q̄‖), `g_varying_norm` (mean ‖W·q̄ − its row mean‖) and `g_bias_norm`.

    rows = sample_train_rows("artifacts/ml-1m", 2048, seed=42)
    doc = generator_input_signal(cf, rows, generator)
    records = fresh_generator_signals(["artifacts/cf/sasrec"], rows, d_model=576, seed=42)   # jobs/generator_input.py

No labels are read: the rows are a seeded sample of the train split. No Ray.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from cora_ray.cf import load_cf_artifact, read_cf_manifest
from cora_ray.cf.base import CFBackbone
from cora_ray.config import ModelConfig
from cora_ray.data import protocol
from cora_ray.data.batching import pad_histories
from cora_ray.errors import ModelError
from cora_ray.eval.cf_signal import g_similarity
from cora_ray.model.generator import CollaborativeWeightGenerator


@dataclass(frozen=True)
class SampledRows:
    """Seeded rows of a split: user ids, item ids, padded histories (n, HISTORY_LEN)."""

    users: torch.Tensor
    items: torch.Tensor
    histories: torch.Tensor
    split: str
    seed: int


def sample_train_rows(data_uri: str, n: int, seed: int, split: str = "train") -> SampledRows:
    """`n` rows of `split` drawn without replacement with `seed`."""
    t = protocol.read_split(data_uri, split, columns=["user_id", "item_id", "history"])
    n = min(n, len(t))
    idx = np.sort(np.random.default_rng(seed).choice(len(t), n, replace=False))
    histories = t["history"].to_pylist()
    return SampledRows(
        users=torch.as_tensor(t["user_id"].to_numpy()[idx].copy(), dtype=torch.long),
        items=torch.as_tensor(t["item_id"].to_numpy()[idx].copy(), dtype=torch.long),
        histories=torch.from_numpy(pad_histories([histories[k] for k in idx])),
        split=split,
        seed=seed,
    )


def varying_share(x: torch.Tensor) -> float:
    """Share of the rows' energy in their deviation from the mean row (0: all rows equal)."""
    x = x.flatten(1).double()
    total = float(x.pow(2).sum())
    return float((x - x.mean(0)).pow(2).sum()) / total if total > 0 else 0.0


@torch.no_grad()
def generator_input_signal(
    cf: CFBackbone, rows: SampledRows, generator: CollaborativeWeightGenerator
) -> dict[str, Any]:
    """The measures of the module docstring for `generator` (in eval mode: no dropout) fed by `cf`."""
    was_training = generator.training
    generator.eval()
    try:
        e_u = cf.user_vectors(rows.users, rows.histories).float()
        e_i = cf.item_vectors(rows.items).float()
        states: list[torch.Tensor] = []
        G = generator(e_u, e_i, states=states)
        memory = generator.memory(e_u, e_i)
        wq = states[-1].mean(dim=1) @ generator.to_weights.weight.T  # (B, d_model·r): g without its bias
    finally:
        generator.train(was_training)
    return {
        "rows": int(rows.users.shape[0]),
        "cf_dim": int(e_u.shape[-1]),
        "user_varying_share": varying_share(e_u),
        "item_varying_share": varying_share(e_i),
        "user_norm": float(e_u.norm(dim=-1).mean()),
        "item_norm": float(e_i.norm(dim=-1).mean()),
        "g_varying_share": varying_share(G),
        "g_pair_cosine": g_similarity(G)["mean"],
        "memory_rms": float(memory.double().pow(2).mean().sqrt()),
        "query_varying_shares": [varying_share(q) for q in states],
        "g_common_norm": float(wq.double().mean(dim=0).norm()),
        "g_varying_norm": float((wq.double() - wq.double().mean(dim=0)).norm(dim=-1).mean()),
        "g_bias_norm": float(generator.to_weights.bias.double().norm()),
    }


def fresh_generator_signals(cf_uris: list[str], rows: SampledRows, d_model: int, seed: int) -> list[dict]:
    """One record per (CF artifact, memory_norm off / on) for a generator as training initialises it."""
    model_cfg = ModelConfig()
    out = []
    for uri in cf_uris:
        cf = load_cf_artifact(uri)
        manifest = read_cf_manifest(uri)
        for memory_norm in (False, True):
            torch.manual_seed(seed)
            gen_cfg = dataclasses.replace(model_cfg.generator, memory_norm=memory_norm)
            gen = CollaborativeWeightGenerator(cf.dim, d_model, model_cfg.rank, gen_cfg)
            out.append(
                {
                    "source": uri,
                    "backbone": manifest.get("backbone"),
                    "cf_hash": manifest["hash"],
                    "generator": "fresh",
                    "memory_norm": memory_norm,
                    **generator_input_signal(cf, rows, gen),
                }
            )
    return out


def trained_generator_signals(checkpoints: list[str], rows: SampledRows) -> list[dict]:
    """One record per checkpoint: its trained generator fed by its own CF artifact."""
    from cora_ray.infer.scorer import Scorer  # loads the base LLM: only for checkpoints

    out = []
    for uri in checkpoints:
        scorer = Scorer.from_checkpoint(uri)
        generator = scorer.model.collab_weight_generator()
        if generator is None:
            raise ModelError(f"checkpoint {uri} ({scorer.method}) has no collaborative weight generator")
        described = scorer.describe()
        cf_artifact = described["cf_artifact"] or {}
        out.append(
            {
                "source": uri,
                "backbone": cf_artifact.get("backbone"),
                "cf_hash": cf_artifact.get("hash"),
                "generator": f"trained (step {described['step']})",
                "memory_norm": bool(scorer.config.model.generator.memory_norm),
                **generator_input_signal(scorer.model.cf, rows, generator),
            }
        )
    return out


def generator_input_markdown(doc: dict) -> str:
    """The report of jobs/generator_input.py's document: one table row per record."""
    lines = [
        "# How much G varies from row to row (jobs/generator_input.py)",
        "",
        f"Rows: {doc['rows']} of the `{doc['split']}` split of `{doc['data']}` (seed {doc['seed']}). Varying share: "
        "the share of the vectors' energy in their deviation from the mean over these rows (0 = the same for every "
        "row); G pair cosine: mean cosine between two rows' G (1 = one shared LoRA).",
        "",
        "| source | generator | memory_norm | CF dim | user varying share | item varying share | G varying share "
        "| G pair cosine |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in doc["results"]:
        lines.append(
            f"| `{r['source']}` | {r['generator']} | {r['memory_norm']} | {r['cf_dim']} | "
            f"{r['user_varying_share']:.3f} | {r['item_varying_share']:.3f} | {r['g_varying_share']:.4f} | "
            f"{r['g_pair_cosine']:.4f} |"
        )
    lines += [
        "",
        "Inside the generator: the memory token's RMS per entry (the LayerNorm'd query stream it joins: ~1), the "
        "varying share of the query states after block 1 and after the last block, and g = W·q̄ + b before G's "
        "normalisation: ‖row mean of W·q̄‖, mean ‖W·q̄ − row mean‖, ‖b‖.",
        "",
        "| source | generator | memory_norm | memory RMS | queries varying, block 1 | last block | ‖common g‖ "
        "| ‖varying g‖ | ‖b‖ |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in doc["results"]:
        if "memory_rms" not in r:  # a document written before these were measured
            continue
        shares = r["query_varying_shares"]
        lines.append(
            f"| `{r['source']}` | {r['generator']} | {r['memory_norm']} | {r['memory_rms']:.4f} | "
            f"{shares[0]:.5f} | {shares[-1]:.5f} | {r['g_common_norm']:.2f} | {r['g_varying_norm']:.3f} | "
            f"{r['g_bias_norm']:.3f} |"
        )
    lines += ["", f"Command: `{doc['command']}`", ""]
    return "\n".join(lines)
