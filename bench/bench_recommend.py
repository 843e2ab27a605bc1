"""Catalogue-wide recommendation (POST /v1/recommend without candidates) for one user, end to end, split into
CF retrieval and LLM re-ranking.

    python bench/bench_recommend.py                                    # the tiny test model, K = 20
    python bench/bench_recommend.py --checkpoint artifacts/demo/checkpoint --catalogue-k 100 --users 5

In this process, no Serve: the same functions the replica and the batch job run (cora_ray/infer/catalogue.py
`recommend_one`: retrieval by the checkpoint's CF backbone over every item, then the K rows through the
serving engine, then the top k). Per measured user (known users with train interactions, the first
`--users` of the dataset): retrieval seconds, re-ranking seconds, end to end. The dataset index (each
user's train items) is built once before the measurement, as a replica builds it once; its build time is
reported beside. Result: bench/results/recommend_catalogue.{json,md} — value = median end-to-end seconds
per user, baseline = median re-ranking seconds (ratio - 1 = what retrieval adds); `--no-write` prints
only. Run it on a quiet machine; the load average is recorded.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from bench.common import load_average, write_result  # noqa: E402


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default=None, help="default: the tiny test setup, built in a temp dir")
    p.add_argument("--data", default=None, help="dataset (default: the checkpoint's)")
    p.add_argument("--catalogue-k", type=int, default=None, help="K (default: 100, or 20 on the tiny model)")
    p.add_argument("--k", type=int, default=10, help="items returned per user (default: %(default)s)")
    p.add_argument("--users", type=int, default=5, help="users measured (default: %(default)s)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default=None)
    p.add_argument("--no-write", action="store_true", help="print the numbers, write no bench/results file")
    return p.parse_args(argv)


def measure(args: argparse.Namespace, checkpoint: str, data_uri: str | None, k_retrieve: int) -> dict:
    import torch

    from cora_ray.data import protocol
    from cora_ray.infer.catalogue import CatalogueRetriever, recommend_one
    from cora_ray.infer.scorer import Scorer
    from cora_ray.infer.service import Catalog, ScoreJob, ScorerOptions, ScoringEngine

    if args.threads:
        torch.set_num_threads(args.threads)
    scorer = Scorer.from_checkpoint(checkpoint, data_uri, device=args.device, dtype=args.dtype)
    catalog = Catalog.from_dataset(scorer.data_uri)
    engine = ScoringEngine(scorer, ScorerOptions(max_rows_per_forward=scorer.batch_size))
    retriever = CatalogueRetriever()
    t0 = time.perf_counter()
    retriever.index(scorer)
    index_s = time.perf_counter() - t0
    train = protocol.read_split(scorer.data_uri, "train", columns=["user_id"])
    users = sorted(set(train["user_id"].to_pylist()))[: args.users]
    raw = {v: k for k, v in catalog.user_ids.items()}
    # warm-up: one user (first forward passes allocate)
    recommend_one(engine, retriever, ScoreJob(raw[users[0]], users[0], [], []), k_retrieve, args.k)
    retrieval, rerank, total, rows = [], [], [], []
    for u in users:
        job = ScoreJob(raw[u], u, [], list(catalog.histories.get(u, [])))
        t0 = time.perf_counter()
        res = recommend_one(engine, retriever, job, k_retrieve, args.k)
        total.append(time.perf_counter() - t0)
        retrieval.append(res.retrieval_s)
        rerank.append(res.rerank_s)
        rows.append(len(res.retrieval.item_ids))
    return {
        "users": len(users),
        "rows_per_user": rows,
        "index_build_s": index_s,
        "retrieval_s": retrieval,
        "rerank_s": rerank,
        "total_s": total,
        "num_items": len(catalog.item_ids),
        "model": engine.adapter.model_id,
        "batch_size": scorer.batch_size,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    load_before = load_average()
    with tempfile.TemporaryDirectory(prefix="bench_recommend_") as tmp:
        checkpoint, data_uri = args.checkpoint, args.data
        if checkpoint is None:
            from tests.serve.artifacts import build_tiny_setup

            setup = build_tiny_setup(Path(tmp) / "tiny")
            checkpoint, data_uri = setup.checkpoint_uri, setup.data_uri
        k_retrieve = args.catalogue_k or (100 if args.checkpoint else 20)
        m = measure(args, checkpoint, data_uri, k_retrieve)
    med = {k: statistics.median(m[k]) for k in ("retrieval_s", "rerank_s", "total_s")}
    rows = statistics.median(m["rows_per_user"])
    print(
        f"catalogue recommend, K={k_retrieve} (median {rows:.0f} rows), k={args.k}, {m['users']} users, "
        f"{m['num_items']} items: end to end {med['total_s']:.4f} s = retrieval {med['retrieval_s']:.5f} s "
        f"({med['retrieval_s'] / med['total_s']:.2%}) + re-ranking {med['rerank_s']:.4f} s "
        f"({rows / med['rerank_s']:.2f} rows/s); dataset index built once in {m['index_build_s']:.3f} s; "
        f"load average {load_before:.1f} before, {load_average():.1f} after"
    )
    if args.no_write:
        return 0
    write_result(
        "recommend_catalogue",
        value=med["total_s"],
        baseline=med["rerank_s"],
        unit="s",
        config={
            "checkpoint": args.checkpoint or "tests/serve/artifacts.py tiny setup",
            "catalogue_k": k_retrieve,
            "k": args.k,
            "users": m["users"],
            "items": m["num_items"],
            "median_retrieval_s": med["retrieval_s"],
            "index_build_s": m["index_build_s"],
            "rows_per_forward": m["batch_size"],
            "load_average_before": load_before,
        },
        title="Catalogue recommend, one user: end to end vs its LLM re-ranking",
        value_label="end to end (retrieval + re-ranking), median s per user",
        baseline_label="LLM re-ranking of the K retrieved rows, median s per user",
        notes="ratio - 1 is what the CF retrieval adds to the LLM re-ranking of its K rows.",
        samples={k: m[k] for k in ("retrieval_s", "rerank_s", "total_s")},
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
