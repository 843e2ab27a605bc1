"""Does a CoRA checkpoint use its collaborative input, and which cold-user rule scores better? Metrics with
each row's own G, another row's G, G = 0, and G generated / zeroed for users without train interactions.

    python jobs/cf_signal.py --checkpoint artifacts/demo/checkpoint --out results/cf_signal/demo

Samples the validation split by default (decisions are taken on validation rows, never on test rows:
docs/decisions.md). Writes <out>/cf_signal.json, <out>/cf_signal.md and manifest.json (atomically; --out
must not hold results unless --overwrite); the JSON records the checkpoint and the CF artifact it was trained
with (URI, hash, model config, validation AUC). Scores in this process (no Ray); see
cora_ray/eval/cf_signal.py for what each variant means.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def cf_artifact_info(record: dict | None) -> dict | None:
    """The CF artifact the checkpoint was trained with: URI, hash, backbone, model config (init_std, ...)
    and its validation AUC, read from the artifact's manifest (the scorer has checked the hash)."""
    if not record:
        return None
    from cora_ray.cf import read_cf_manifest
    from cora_ray.errors import StorageError

    m = read_cf_manifest(record["uri"])
    if record.get("hash") and m["hash"] != record["hash"]:
        raise StorageError(
            f"CF artifact {record['uri']} has hash {m['hash'][:12]}, the checkpoint was trained with "
            f"{record['hash'][:12]}: it changed after loading"
        )
    valid = (m.get("metrics") or {}).get("valid") or {}
    return {
        "uri": record["uri"],
        "hash": m["hash"],
        "backbone": m.get("backbone"),
        "model": m.get("model"),
        "lr": (m.get("training") or {}).get("lr"),
        "weight_decay": (m.get("training") or {}).get("weight_decay"),
        "valid_auc": valid.get("auc"),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, metavar="URI", help="a CoRA training checkpoint")
    p.add_argument("--data", default=None, metavar="URI", help="dataset (default: the checkpoint's)")
    p.add_argument("--split", default=None, help="split to sample (default: valid, a validation split)")
    p.add_argument("--limit", type=int, default=800, help="seeded rows of the split (default: %(default)s)")
    p.add_argument("--seed", type=int, default=42, help="seed of the sample (default: %(default)s)")
    p.add_argument(
        "--cf-uri",
        default=None,
        metavar="URI",
        help="the CF artifact, if not where the checkpoint says (its hash must be the checkpoint's)",
    )
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
    from cora_ray.eval.cf_signal import DEFAULT_SPLIT, cf_signal, cf_signal_markdown
    from cora_ray.infer.scorer import Scorer

    try:
        storage.refuse_existing(args.out, "results", args.overwrite)
        scorer = Scorer.from_checkpoint(
            args.checkpoint, data_uri=args.data, cf_uri=args.cf_uri, trust_remote_code=args.trust_remote_code
        )
        described = scorer.describe()
        record = described.get("cf_artifact")
        if record and args.cf_uri:
            record = {**record, "uri": args.cf_uri}
        # read now, while the artifact is the one just loaded (the scorer has checked its hash)
        cf_info = cf_artifact_info(record)
        doc = cf_signal(
            scorer,
            scorer.data_uri,
            split=args.split or DEFAULT_SPLIT,
            limit=args.limit,
            seed=args.seed,
            progress=not args.no_progress,
        )
        doc["checkpoint"] = args.checkpoint
        doc["scorer"] = described
        doc["cf_artifact"] = cf_info
        md = cf_signal_markdown(doc, f"CF signal of {args.checkpoint}")
        with storage.atomic_dir(args.out, overwrite=args.overwrite) as tmp:
            (tmp / "cf_signal.json").write_text(json.dumps(doc, indent=2) + "\n")
            (tmp / "cf_signal.md").write_text(md)
            manifest = {
                "kind": "cora_ray.cf_signal",
                "checkpoint": args.checkpoint,
                "checkpoint_hash": doc["scorer"].get("checkpoint_hash"),
                "cf_artifact_hash": (doc["cf_artifact"] or {}).get("hash"),
                "split": doc["split"],
            }
            (tmp / storage.MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    except CoraError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(md)
    print(f"written: {args.out}/cf_signal.json, {args.out}/cf_signal.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
