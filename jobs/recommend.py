"""Recommend from the whole catalogue for many users: CF retrieval of K unseen items, LLM re-ranking, top k.

    python jobs/recommend.py --checkpoint artifacts/demo/checkpoint --users 1m_19,1m_20 --k 10 --out results/recs
    python jobs/recommend.py --checkpoint runs/<run>/best --users-file users.txt --catalogue-k 100 --out results/recs
    ray job submit --working-dir . -- python jobs/recommend.py --checkpoint s3://bucket/runs/<run>/best \
        --all-users --use-gpu --out s3://bucket/recs

The batch form of `POST /v1/recommend` without candidates (README "Serving"): the same retrieval, exclusions,
fallback and scoring, per user, on a Ray Data actor pool (the cluster in RAY_ADDRESS or a local one). Users
are the dataset's raw ids (users.parquet). Writes <out>/recommendations/*.parquet (one row per (user, rank):
user_id, rank, item_id, title, score, cf_rank, cf_score, fallback), summary.json and manifest.json,
atomically; prints progress (users done, ETA) and a summary. The logic is cora_ray/infer/recommend_job.py.
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--checkpoint", required=True, metavar="URI", help="a training checkpoint with a CF backbone"
    )
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--users", metavar="ID,ID,...", help="comma-separated raw user ids")
    who.add_argument("--users-file", metavar="URI", help="raw user ids, one per line ('#' comments)")
    who.add_argument("--all-users", action="store_true", help="every user of the dataset")
    p.add_argument("--k", type=int, default=10, help="recommendations per user (default: %(default)s)")
    p.add_argument(
        "--catalogue-k",
        type=int,
        default=100,
        metavar="K",
        help="items CF retrieves and the LLM re-ranks per user: K LLM rows each (default: %(default)s)",
    )
    p.add_argument("--out", required=True, metavar="URI", help="output directory (local or s3://)")
    p.add_argument("--overwrite", action="store_true", help="replace recommendations already at --out")
    p.add_argument("--data", metavar="URI", help="protocol dataset (default: the checkpoint's)")
    p.add_argument("--cf-uri", metavar="URI", help="the CF artifact, if not where the checkpoint says")
    p.add_argument("--num-actors", type=int, default=None, metavar="N", help="default: one per CPU (GPU)")
    p.add_argument("--use-gpu", action="store_true", help="one GPU per actor; the LLM in bf16 unless --dtype")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"], help="LLM dtype")
    p.add_argument("--batch-size", type=int, default=None, help="rows per forward (default: 16 CPU / 64 GPU)")
    p.add_argument("--s3-endpoint", default=None, help="S3 endpoint URL (default: AWS_ENDPOINT_URL)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="allow a base LLM whose config asks for trust_remote_code (refused without this flag)",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from cora_ray.errors import CoraError
    from cora_ray.infer.recommend_job import UserSelection, read_users_file, recommend_users, summary_text
    from cora_ray.infer.source import ScorerSource

    try:
        if args.users is not None:
            users = [u.strip() for u in args.users.split(",") if u.strip()]
        elif args.users_file:
            users = read_users_file(args.users_file, args.s3_endpoint)
        else:
            users = None
        source = ScorerSource(
            "checkpoint",
            uri=args.checkpoint,
            data_uri=args.data,
            device="cuda" if args.use_gpu else "cpu",
            dtype=args.dtype,
            batch_size=args.batch_size,
            endpoint=args.s3_endpoint,
            cf_uri=args.cf_uri,
            trust_remote_code=args.trust_remote_code,
        )
        summary = recommend_users(
            source,
            UserSelection(users=users, all_users=args.all_users),
            k=args.k,
            k_retrieve=args.catalogue_k,
            out=args.out,
            num_actors=args.num_actors,
            use_gpu=args.use_gpu,
            progress=not args.no_progress,
            overwrite=args.overwrite,
        )
    except CoraError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(summary_text(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
