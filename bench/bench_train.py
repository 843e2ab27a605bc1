"""Training throughput (1 vs 2 workers) and the Ray Data pipeline's rows/s against what training consumes.

    python bench/bench_train.py                      # real ML-1M + bundled SmolLM2 (configs/demo.yaml settings)
    python bench/bench_train.py --steps 6 --skip-pipeline

Writes bench/results/train_throughput.{json,md} (samples/s of 2 workers vs 1 worker, same global batch per
worker) and bench/results/train_pipeline.{json,md} (Ray Data read + prompt building + tokenisation rows/s vs
the training samples/s of the faster layout; goal: the pipeline at least 20x faster than training, so that
data is never what the trainer waits for).

Each training run is a real `jobs/train.py` run (TorchTrainer, DeepSpeed ZeRO-2, fp32 on CPU) of `--steps`
optimizer steps; samples/s is the steady state reported in its progress.jsonl (the first step, which waits for
the data pipeline's start-up, is excluded). Needs artifacts/ml-1m and artifacts/cf/mf (make demo makes them).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")

from common import RESULTS, markdown, write_result  # noqa: E402

from cora_ray.ray_local import init_local_cluster, shutdown_local_cluster  # noqa: E402
from cora_ray.storage import display_uri  # noqa: E402


def train_run(config: str, workers: int, steps: int, storage: Path, extra: list[str]) -> dict:
    """One TorchTrainer run; returns its steady-state samples/s and timings from progress.jsonl."""
    from cora_ray.config import ExperimentConfig, load_config
    from cora_ray.train.trainer import prepare_run, resolve_local_paths, run_training

    overrides = [
        f"train.num_workers={workers}",
        f"train.cpu_threads_per_worker={max(1, (os.cpu_count() or 1) // workers)}",
        f"train.max_steps={steps}",
        f"train.eval_every={steps}",
        "train.eval_limit=16",
        "train.log_every=1",
        f"train.storage_path={storage}",
        *extra,
    ]
    cfg = resolve_local_paths(load_config(ExperimentConfig, config, overrides), REPO)
    t0 = time.perf_counter()
    summary = run_training(prepare_run(cfg), quiet=True)
    wall = time.perf_counter() - t0
    records = [json.loads(x) for x in Path(summary.run_uri, "progress.jsonl").read_text().splitlines()]
    train = [r for r in records if r["type"] == "train"]
    start = next(r for r in records if r["type"] == "start")
    step_times = [b["elapsed_s"] - a["elapsed_s"] for a, b in zip(train, train[1:], strict=False)]
    return {
        "workers": workers,
        "samples_per_s": train[-1]["samples_per_s"],
        "samples_per_step": cfg.train.micro_batch_size * cfg.train.grad_accum_steps * workers,
        "median_step_s": sorted(step_times)[len(step_times) // 2] if step_times else None,
        "first_step_s": train[0]["elapsed_s"],
        "setup_s": start["setup_s"],
        "wall_s": round(wall, 1),
        "steps": len(train),
    }


def pipeline_rate(config: str, rows: int) -> dict:
    """Rows/s of the training dataset alone (read + shuffle + prompts + tokenisation), after its first batch."""
    from cora_ray.config import ExperimentConfig, load_config
    from cora_ray.train.trainer import build_datasets, prepare_run, resolve_local_paths

    cfg = resolve_local_paths(
        load_config(ExperimentConfig, config, ["train.storage_path=/tmp/cora_bench_runs"]), REPO
    )
    plan = prepare_run(cfg)
    init_local_cluster(num_cpus=4, include_dashboard=False)
    try:
        from ray.data import DataContext

        DataContext.get_current().enable_progress_bars = False
        ds = build_datasets(plan)["train"]
        t0 = time.perf_counter()
        it = ds.iter_batches(batch_size=256, batch_format="numpy")
        first = next(iter(it))
        t_first = time.perf_counter() - t0
        n, t1 = 0, time.perf_counter()
        for batch in it:
            n += len(batch["label"])
            if n >= rows:
                break
        seconds = time.perf_counter() - t1
        width = first["input_ids"].shape[1]
    finally:
        shutdown_local_cluster()
    return {
        "rows": n,
        "seconds": round(seconds, 2),
        "rows_per_s": n / seconds,
        "first_batch_s": round(t_first, 1),
        "padded_width": int(width),
    }


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(REPO / "configs" / "demo.yaml"))
    p.add_argument("--steps", type=int, default=10)
    p.add_argument(
        "--repeats", type=int, default=2, help="runs per layout, in A B B A order (shared machine)"
    )
    p.add_argument("--pipeline-rows", type=int, default=8000)
    p.add_argument("--skip-pipeline", action="store_true")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args(argv)

    storage = Path(tempfile.mkdtemp(prefix="cora_bench_train_"))
    order = ([1, 2, 2, 1] * args.repeats)[: 2 * args.repeats]
    all_runs: dict[int, list[dict]] = {1: [], 2: []}
    for i, w in enumerate(order):
        r = train_run(
            args.config, w, args.steps, storage, [*args.overrides, f"train.run_name=bench-{w}w-{i}"]
        )
        all_runs[w].append(r)
        print(
            f"[bench] {w} worker(s): {r['samples_per_s']:.2f} samples/s (median step {r['median_step_s']:.2f} s)"
        )
    # per layout, the best run: a shared machine only ever slows a run down
    runs = {w: max(rs, key=lambda r: r["samples_per_s"]) for w, rs in all_runs.items()}
    config = {
        "config": display_uri(args.config, REPO),
        "steps": args.steps,
        "overrides": args.overrides,
        "runs": all_runs,
    }
    write_result(
        "train_throughput",
        value=runs[2]["samples_per_s"],
        baseline=runs[1]["samples_per_s"],
        unit="samples/s",
        config=config,
        title="Training throughput: 2 workers vs 1 worker (DeepSpeed ZeRO-2, fp32, CPU)",
        value_label="2 workers x 1 thread",
        baseline_label="1 worker x 2 threads",
        notes=(
            "Both layouts use the machine's cores (torch threads = cores / workers); ratio > 1 means data "
            "parallelism beats intra-op threading here. Each step = micro-batch x workers samples."
        ),
    )
    if not args.skip_pipeline:
        best = max(runs.values(), key=lambda r: r["samples_per_s"])
        pipe = pipeline_rate(args.config, args.pipeline_rows)
        print(
            f"[bench] pipeline: {pipe['rows_per_s']:.0f} rows/s vs training {best['samples_per_s']:.2f} samples/s"
        )
        record = write_result(
            "train_pipeline",
            value=pipe["rows_per_s"],
            baseline=best["samples_per_s"],
            unit="rows/s",
            config={"config": display_uri(args.config, REPO), "pipeline": pipe, "training": best},
            title="Ray Data ingest rows/s vs training consumption (samples/s)",
            value_label="Ray Data: read_parquet + random_shuffle + prompts + tokenise (map_batches)",
            baseline_label=f"training, {best['workers']} worker(s)",
            notes="Goal: the pipeline at least 20x faster than training consumes, so training never waits for data.",
        )
        record["goal"] = "ratio >= 20"
        record["goal_met"] = record["ratio"] >= 20
        (RESULTS / "train_pipeline.json").write_text(json.dumps(record, indent=2) + "\n")
        (RESULTS / "train_pipeline.md").write_text(markdown(record))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
