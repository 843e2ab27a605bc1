"""Does a CoRA checkpoint use its collaborative input? Metrics with each row's own G, another row's G, and G = 0.

    python jobs/cf_signal.py --checkpoint artifacts/demo/checkpoint --limit 300 --out results/cf_signal/demo

Writes <out>/cf_signal.json and <out>/cf_signal.md (atomically; --out must not hold results unless
--overwrite). Scores in this process (no Ray); see cora_ray/eval/cf_signal.py for what each variant means.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, metavar="URI", help="a CoRA training checkpoint")
    p.add_argument("--data", default=None, metavar="URI", help="dataset (default: the checkpoint's)")
    p.add_argument("--split", default="test", help="split to sample (default: %(default)s)")
    p.add_argument("--limit", type=int, default=300, help="seeded rows of the split (default: %(default)s)")
    p.add_argument("--seed", type=int, default=42, help="seed of the sample (default: %(default)s)")
    p.add_argument("--out", required=True, metavar="URI", help="output directory (local or s3://)")
    p.add_argument("--overwrite", action="store_true", help="replace results already at --out")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="allow a base LLM whose config asks for trust_remote_code (refused without this flag)",
    )
    args = p.parse_args(sys.argv[1:] if argv is None else argv)

    from cora_ray import storage
    from cora_ray.errors import CoraError
    from cora_ray.eval.cf_signal import cf_signal, cf_signal_markdown
    from cora_ray.infer.scorer import Scorer

    try:
        storage.refuse_existing(args.out, "results", args.overwrite)
        scorer = Scorer.from_checkpoint(
            args.checkpoint, data_uri=args.data, trust_remote_code=args.trust_remote_code
        )
        doc = cf_signal(
            scorer,
            scorer.data_uri,
            split=args.split,
            limit=args.limit,
            seed=args.seed,
            progress=not args.no_progress,
        )
        doc["checkpoint"] = args.checkpoint
        md = cf_signal_markdown(doc, f"CF signal of {args.checkpoint}")
        with storage.atomic_dir(args.out, overwrite=args.overwrite) as tmp:
            (tmp / "cf_signal.json").write_text(json.dumps(doc, indent=2) + "\n")
            (tmp / "cf_signal.md").write_text(md)
            manifest = {"kind": "cora_ray.cf_signal", "checkpoint": args.checkpoint}
            (tmp / storage.MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    except CoraError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(md)
    print(f"written: {args.out}/cf_signal.json, {args.out}/cf_signal.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
