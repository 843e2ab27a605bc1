"""How much each CF backbone's vectors make CoRA's collaborative weights G vary from row to row — for a fresh
generator, with and without `model.generator.memory_norm`, and for trained checkpoints' generators.

    python jobs/generator_input.py --cf artifacts/cf/mf --cf artifacts/cf/lightgcn --cf artifacts/cf/sasrec \
        --out results/generator_input
    python jobs/generator_input.py --checkpoint runs/ml1m_cpu/cora_sasrec_s42/best --out results/generator_input/trained

Rows: a seeded sample of the train split (no labels read). Writes <out>/generator_input.json, .md and
manifest.json atomically (an existing <out> only with --overwrite). No Ray; seconds on CPU for fresh
generators (a checkpoint loads its base LLM too). What each measure means: cora_ray/eval/generator_input.py.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def fresh_rows(cf_uris: list[str], rows, d_model: int, seed: int) -> list[dict]:
    """One record per (artifact, memory_norm) for a generator as training initialises it."""
    import torch

    from cora_ray.cf import load_cf_artifact, read_cf_manifest
    from cora_ray.config import ModelConfig
    from cora_ray.eval.generator_input import generator_input_signal
    from cora_ray.model.generator import CollaborativeWeightGenerator

    out = []
    model_cfg = ModelConfig()
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


def trained_rows(checkpoints: list[str], rows) -> list[dict]:
    """One record per checkpoint: its trained generator fed by its own CF artifact."""
    from cora_ray.eval.generator_input import generator_input_signal
    from cora_ray.infer.scorer import Scorer

    out = []
    for uri in checkpoints:
        scorer = Scorer.from_checkpoint(uri)
        model = scorer.model
        if getattr(model, "generator", None) is None:
            raise SystemExit(f"generator_input: checkpoint {uri} has no collaborative weight generator")
        cf_artifact = scorer.describe()["cf_artifact"] or {}
        out.append(
            {
                "source": uri,
                "backbone": cf_artifact.get("backbone"),
                "cf_hash": cf_artifact.get("hash"),
                "generator": f"trained (step {scorer.describe()['step']})",
                "memory_norm": bool(scorer.config.model.generator.memory_norm),
                **generator_input_signal(model.cf, rows, model.generator),
            }
        )
    return out


def markdown(doc: dict) -> str:
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
    lines += ["", f"Command: `{doc['command']}`", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="artifacts/ml-1m", metavar="URI", help="dataset (default: %(default)s)")
    p.add_argument("--cf", action="append", default=[], metavar="URI", help="a CF artifact (repeatable)")
    p.add_argument("--checkpoint", action="append", default=[], metavar="URI", help="a CoRA checkpoint")
    p.add_argument("--rows", type=int, default=2048, help="sampled train rows (default: %(default)s)")
    p.add_argument("--seed", type=int, default=42, help="seed of the sample and the fresh generators")
    p.add_argument("--d-model", type=int, default=576, help="LLM width of fresh generators (SmolLM2: 576)")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--overwrite", action="store_true", help="replace an existing <out>")
    args = p.parse_args(argv)
    if not args.cf and not args.checkpoint:
        p.error("give at least one --cf or --checkpoint")

    from cora_ray.eval.generator_input import sample_train_rows
    from cora_ray.storage import atomic_dir

    t0 = time.perf_counter()
    rows = sample_train_rows(args.data, args.rows, args.seed)
    results = fresh_rows(args.cf, rows, args.d_model, args.seed) + trained_rows(args.checkpoint, rows)
    doc = {
        "kind": "cora_ray.generator_input",
        "version": 1,
        "data": args.data,
        "split": rows.split,
        "rows": int(rows.users.shape[0]),
        "seed": args.seed,
        "results": results,
        "command": "python jobs/generator_input.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    with atomic_dir(args.out, overwrite=args.overwrite) as tmp:
        (tmp / "generator_input.json").write_text(json.dumps(doc, indent=2) + "\n")
        (tmp / "generator_input.md").write_text(markdown(doc))
        manifest = {
            "kind": doc["kind"],
            "version": 1,
            "files": ["generator_input.json", "generator_input.md"],
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(markdown(doc))
    print(f"generator_input: {len(results)} result(s) in {time.perf_counter() - t0:.1f} s -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
