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
import json
import os
import sys
import time

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


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

    from cora_ray.eval.generator_input import (
        fresh_generator_signals,
        generator_input_markdown,
        sample_train_rows,
        trained_generator_signals,
    )
    from cora_ray.storage import MANIFEST, atomic_dir

    t0 = time.perf_counter()
    rows = sample_train_rows(args.data, args.rows, args.seed)
    results = fresh_generator_signals(args.cf, rows, args.d_model, args.seed) + trained_generator_signals(
        args.checkpoint, rows
    )
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
        (tmp / "generator_input.md").write_text(generator_input_markdown(doc))
        manifest = {
            "kind": doc["kind"],
            "version": 1,
            "files": ["generator_input.json", "generator_input.md"],
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    print(generator_input_markdown(doc))
    print(f"generator_input: {len(results)} result(s) in {time.perf_counter() - t0:.1f} s -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
