"""Evaluation throughput with the bundled SmolLM2-135M: rows/s of the scorer, and what length bucketing saves.

    python bench/bench_evaluate.py                      # 128 seeded ML-1M test rows, batch 16, fp32 CPU
    python bench/bench_evaluate.py --rows 64 --reps 1   # quicker

Writes bench/results/eval_bucketing.json (+ .md): seconds to score the rows with length bucketing (value)
vs the same rows batched in their stored order (baseline); the config records rows/s and tokens of padding
per row of each. The model is the zero-shot SmolLM2 with its chat template (what every LLM method runs:
CoRA adds its collaborative layers on top of the same forward). Needs artifacts/ml-1m
(python jobs/prepare_data.py --dataset ml-1m --out artifacts/ml-1m).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from common import interleaved_times, median, write_result  # noqa: E402


def padding_per_row(scorer, users, items, hists, bucket: bool) -> float:
    """Mean pad tokens per row of the batches `score` would build."""
    from cora_ray.data.batching import fixed_chunks

    n, bs = len(items), scorer.batch_size
    chunks = scorer.forward_chunks(items, hists, bs) if bucket else fixed_chunks(n, bs)
    pad = 0
    for idx in chunks:
        mask = scorer.encode(users[idx], items[idx], [hists[j] for j in idx])["attention_mask"]
        pad += int((mask == 0).sum())
    return pad / n


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(HERE.parent / "artifacts" / "ml-1m"))
    p.add_argument("--rows", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds first (kernel set-up, caches)")
    args = p.parse_args(argv)

    import torch

    from cora_ray.config import ExperimentConfig, load_config
    from cora_ray.data import protocol
    from cora_ray.eval.evaluate import sample_positions
    from cora_ray.infer.scorer import Scorer

    # quoted: YAML reads a bare Yes / No as a boolean
    cfg = load_config(
        ExperimentConfig,
        None,
        ["prompt.chat_template=true", "llm.answer_token='Yes'", "llm.negative_token='No'"],
    )
    scorer = Scorer.from_base_llm(cfg, args.data, batch_size=args.batch_size)
    test = protocol.read_split(args.data, "test")
    pos = sample_positions(np.ones(test.num_rows, dtype=bool), args.rows, args.seed)
    rows = test.take(pos)
    users, items = rows["user_id"].to_numpy(), rows["item_id"].to_numpy()
    hists = rows["history"].to_pylist()

    times = interleaved_times(
        {
            "bucketed": lambda: scorer.score(users, items, hists, bucket=True),
            "stored_order": lambda: scorer.score(users, items, hists, bucket=False),
        },
        reps=args.reps,
        warmup=args.warmup,
    )
    a = scorer.score(users, items, hists, bucket=True)
    b = scorer.score(users, items, hists, bucket=False)
    t_b, t_s = median(times["bucketed"]), median(times["stored_order"])
    lengths = scorer.encode(users, items, hists)["attention_mask"].sum(1).float()
    write_result(
        "eval_bucketing",
        value=t_b,
        baseline=t_s,
        unit="s",
        goal=1.0,
        title="Scoring with length bucketing / in stored order (SmolLM2-135M, fp32 CPU)",
        value_label=f"{args.rows} rows, length-bucketed batches of {args.batch_size}",
        baseline_label=f"{args.rows} rows, batches of {args.batch_size} in stored order",
        config={
            "llm": scorer.describe()["base_llm"],
            "rows": args.rows,
            "batch_size": args.batch_size,
            "sample": f"seeded (seed {args.seed}) sample of the ML-1M test split",
            "prompt_tokens_mean": float(lengths.mean()),
            "prompt_tokens_max": int(lengths.max()),
            "rows_per_s_bucketed": args.rows / t_b,
            "rows_per_s_stored_order": args.rows / t_s,
            "s_per_row_bucketed": t_b / args.rows,
            "pad_tokens_per_row_bucketed": padding_per_row(scorer, users, items, hists, True),
            "pad_tokens_per_row_stored_order": padding_per_row(scorer, users, items, hists, False),
            "max_abs_score_diff": float(np.abs(a - b).max()),
            "torch_threads": torch.get_num_threads(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "reps": args.reps,
            "warmup": args.warmup,
            "load_average_at_end": os.getloadavg()[0],
        },
        notes="Same scores either way (max_abs_score_diff); bucketing only removes padding work. "
        "Measured on a shared 2-core machine: see load_average_at_end.",
        samples=times,
    )
    print(
        f"bucketed {args.rows / t_b:.2f} rows/s, stored order {args.rows / t_s:.2f} rows/s, ratio {t_b / t_s:.3f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
