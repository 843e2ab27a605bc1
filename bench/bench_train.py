"""Training throughput (1 vs 2 workers), the Ray Data pipeline's rows/s against what training consumes, and
the end-to-end ratio: what the Ray Train loop delivers against the model's own training step.

    python bench/bench_train.py                      # real ML-1M + bundled SmolLM2 (configs/demo.yaml settings)
    python bench/bench_train.py --steps 6 --skip-pipeline
    python bench/bench_train.py --e2e --steps 12     # bench/results/train_e2e.{json,md} only
    python bench/bench_train.py --e2e --steps 12 train.cpu_threads_per_worker=1   # ... train_e2e_t1.*
    python bench/bench_train.py --noise --steps 8    # bench/results/train_noise.{json,md} only

`--e2e` (one process, one run): the model-only step — the same model, AdamW and clipping as the worker, in
plain PyTorch (no Ray, no DeepSpeed, no data pipeline) — on micro-batches drawn from the run's own training
dataset (Ray Data prompts, shuffle, tokenisation and the worker's collate: same rows' lengths, same batch
size, same torch threads), then a 1-worker Ray Train run (`jobs/train.py`'s path) of as many steps; goal:
end-to-end samples/s / model-only samples/s >= 0.9. End-to-end samples/s is taken from progress.jsonl's
wall-clock times between the first and last training step (the first step, which waits for the pipeline's
start-up, is excluded), so every per-step cost of the loop — data wait, DeepSpeed, the loss all-reduce,
progress writes — is in it.

`--noise` (one process): how much the model-only step loses when another process keeps a small share of one
core busy in short bursts, as Ray's own processes do beside a training worker (0.06 cores in train_e2e.json).
The step runs one OpenMP team of as many threads as cores; when any one of them is descheduled, the others
wait at the next barrier, so a small foreign load costs the team more than its share. Conditions in one run, in
the order quiet, bursts of 0.2 ms, bursts of 2 ms, quiet; ratio = the noisy steps' samples/s / the quiet ones'.

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
import subprocess
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

from common import ForeignCPU, median, save_record, write_result  # noqa: E402

FOREIGN_CPU_LIMIT = 0.25  # cores other processes may use during a half of --e2e before it is not judged

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
    wall_span = train[-1]["elapsed_s"] - train[0]["elapsed_s"] if len(train) > 1 else float("nan")
    samples_per_step = cfg.train.micro_batch_size * cfg.train.grad_accum_steps * workers
    return {
        "workers": workers,
        "samples_per_s": train[-1]["samples_per_s"],
        "wall_samples_per_s": (len(train) - 1) * samples_per_step / wall_span,
        "samples_per_step": samples_per_step,
        "median_step_s": median(step_times) if step_times else None,
        # what of each steady step rank 0 spent waiting for its micro-batches (the data pipeline's share)
        "median_data_wait_s": median([r["data_wait_s"] for r in train[1:]]) if len(train) > 1 else None,
        "first_step_s": train[0]["elapsed_s"],
        "setup_s": start["setup_s"],
        "wall_s": round(wall, 1),
        "steps": len(train),
        "steady_window": (train[0]["time"], train[-1]["time"]),  # wall times of the first and last step's end
    }


def _e2e_overrides(steps: int, storage: Path, extra: list[str]) -> list[str]:
    return [
        "train.num_workers=1",
        f"train.cpu_threads_per_worker={os.cpu_count() or 1}",
        f"train.max_steps={steps}",
        f"train.eval_every={steps}",
        "train.eval_limit=16",
        "train.log_every=1",
        f"train.storage_path={storage}",
        *extra,
    ]


def training_batches(cfg: object, steps: int) -> list[dict]:
    """The first `steps` x grad_accum micro-batches of the run's training dataset, as the worker collates them."""
    from cora_ray.train.pipeline import iter_model_batches
    from cora_ray.train.trainer import build_datasets, prepare_run

    plan = prepare_run(cfg)
    init_local_cluster(num_cpus=2, include_dashboard=False)
    try:
        from ray.data import DataContext

        DataContext.get_current().enable_progress_bars = False
        t = cfg.train
        it = iter_model_batches(
            build_datasets(plan)["train"], batch_size=t.micro_batch_size, pad_id=plan.pad_id, drop_last=True
        )
        batches = [next(it) for _ in range(steps * t.grad_accum_steps)]
        it.close()  # while Ray is up: the iterator reports its stats on close
        return batches
    finally:
        shutdown_local_cluster()


def model_only_rate(cfg: object, batches: list[dict]) -> dict:
    """Samples/s of the bare training step on `batches` (the first optimizer step is a warm-up, not timed)."""
    import torch

    from cora_ray.cf import load_cf_artifact
    from cora_ray.llm.loading import load_llm
    from cora_ray.model.build import build_model, model_class
    from cora_ray.train.deepspeed_config import build_optimizer

    t = cfg.train
    torch.set_num_threads(t.cpu_threads_per_worker)
    torch.manual_seed(t.seed)
    llm = load_llm(cfg.llm, "cpu", torch.float32)
    cf = None
    if model_class(cfg.model.method).needs_cf:
        cf = load_cf_artifact(cfg.model.cf_artifact)
    frozen = {id(p) for m in (llm.model, cf) if m is not None for p in m.parameters()}
    model = build_model(cfg.model, llm, cf)
    optimizer = build_optimizer(model, t, frozen)
    params = model.trainable_parameters()
    model.train()
    step_seconds, step_ends = [], []
    for s in range(len(batches) // t.grad_accum_steps):
        t0 = time.perf_counter()
        for b in batches[s * t.grad_accum_steps : (s + 1) * t.grad_accum_steps]:
            (model.loss(b) / t.grad_accum_steps).backward()
        if t.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, t.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step_seconds.append(time.perf_counter() - t0)
        step_ends.append(time.time())
    timed = step_seconds[1:]
    samples = t.micro_batch_size * t.grad_accum_steps
    widths = [int(b["input_ids"].shape[1]) for b in batches]
    return {
        "samples_per_s": samples * len(timed) / sum(timed),
        "step_s": [round(x, 3) for x in step_seconds],
        "median_step_s": median(timed),
        "timed_window": (step_ends[0], step_ends[-1]),  # wall times: the warm-up step's end, the last's
        "mean_padded_width": sum(widths) / len(widths),
        "mean_real_tokens": float(sum(int(b["attention_mask"].sum()) for b in batches))
        / sum(len(b["label"]) for b in batches),
    }


def e2e(config: str, steps: int, overrides: list[str]) -> dict:
    """Model-only step vs the 1-worker Ray Train run, measured one after the other in this process."""
    from cora_ray.config import ExperimentConfig, load_config
    from cora_ray.train.trainer import resolve_local_paths

    storage = Path(tempfile.mkdtemp(prefix="cora_bench_e2e_"))
    cfg = resolve_local_paths(
        load_config(ExperimentConfig, config, _e2e_overrides(steps, storage, overrides)), REPO
    )
    threads = cfg.train.cpu_threads_per_worker
    # with fewer torch threads than cores (train.cpu_threads_per_worker=1 on 2 cores) Ray's own processes get a
    # core of their own: train_e2e_t<threads>, beside the committed all-cores record
    name = "train_e2e" if threads == os.cpu_count() else f"train_e2e_t{threads}"
    load = [round(os.getloadavg()[0], 2)]
    batches = training_batches(cfg, steps)
    foreign = ForeignCPU()
    model_only = model_only_rate(cfg, batches)
    # how often the scheduler took a core from a computing thread (bench/common.py preemptions): here this
    # process's threads, in the Ray run the worker's beside Ray's own processes
    model_only["preemptions_per_s"] = foreign.own_preemptions_by_process(*model_only.pop("timed_window"))
    foreign_cores = [round(foreign.cores(), 3)]
    print(f"[bench] model-only step: {model_only['samples_per_s']:.3f} samples/s", flush=True)
    load.append(round(os.getloadavg()[0], 2))
    foreign = ForeignCPU()
    run = train_run(config, 1, steps, storage, [*overrides, "train.run_name=bench-e2e"])
    # where the CPU went while the steps ran (the first step's start-up left out): the worker's compute and
    # what Ray's own processes took beside it on the same cores
    window = run.pop("steady_window")
    run["own_cores_by_process"] = foreign.own_cores_by_process(*window)
    run["preemptions_per_s"] = foreign.own_preemptions_by_process(*window)
    foreign_cores.append(round(foreign.cores(), 3))
    load.append(round(os.getloadavg()[0], 2))
    print(f"[bench] Ray Train, 1 worker: {run['wall_samples_per_s']:.3f} samples/s", flush=True)
    worker = max(run["own_cores_by_process"], key=run["own_cores_by_process"].get)  # the one computing
    worker_preempted = run["preemptions_per_s"].get(worker, 0.0)
    others_preempted = sum(run["preemptions_per_s"].values()) - worker_preempted
    record = write_result(
        name,
        value=run["wall_samples_per_s"],
        baseline=model_only["samples_per_s"],
        unit="samples/s",
        config={
            "config": display_uri(config, REPO),
            "steps": steps,
            "overrides": overrides,
            "micro_batch_size": cfg.train.micro_batch_size,
            "grad_accum_steps": cfg.train.grad_accum_steps,
            "torch_threads": cfg.train.cpu_threads_per_worker,
            "zero_stage": cfg.train.zero_stage,
            "load_average_1m_before_model_only_before_run_after": load,
            "foreign_cpu_cores_model_only_ray_run": foreign_cores,
            "model_only": model_only,
            "ray_train": run,
        },
        title="End to end: Ray Train samples/s / the model-only training step's samples/s (1 worker, CPU)",
        value_label="Ray Train + DeepSpeed run, 1 worker (wall clock between steps)",
        baseline_label="model-only step: fwd + bwd + clip + AdamW, plain PyTorch, same rows and batch",
        notes=(
            "Goal: ratio >= 0.9 (issue 16 item 7). Higher is better. Both on the same shared 2-core machine, "
            "one after the other. Foreign CPU: mean cores used by processes outside this benchmark's own "
            f"tree during each half (bench/common.py ForeignCPU, which samples the Ray workers' CPU while they "
            f"run): model-only {foreign_cores[0]:.2f}, Ray run {foreign_cores[1]:.2f}; a half above "
            f"{FOREIGN_CPU_LIMIT} cores makes the measurement invalid. Preemptions (involuntary context "
            f"switches of all a process's threads, per second; bench/common.py preemptions): the model-only "
            f"process {sum(model_only['preemptions_per_s'].values()):.0f}; in the Ray run the training worker "
            f"({worker}) {worker_preempted:.0f}, Ray's other processes {others_preempted:.0f}."
        ),
    )
    record["goal"] = "ratio >= 0.9"
    record["goal_met"] = record["ratio"] >= 0.9
    disturbed = [
        half
        for half, cores in zip(("model-only", "Ray run"), foreign_cores, strict=True)
        if cores > FOREIGN_CPU_LIMIT
    ]
    if disturbed:  # other jobs took CPU from a half: the ratio says nothing
        record["valid"], record["goal_met"] = False, False  # not judged: never reported as met
        record["goal"] = "ratio >= 0.9 (not judged: invalid measurement)"
        record["notes"] += (
            f" NOT A VALID MEASUREMENT: other processes used more than {FOREIGN_CPU_LIMIT} cores during the "
            f"{' and '.join(disturbed)} half (foreign cores {foreign_cores}; model-only step times "
            f"{min(model_only['step_s'])}-{max(model_only['step_s'])} s); re-run on a quiet machine."
        )
    save_record(record)
    return record


NOISE_SCRIPT = """
import sys, time
share, burst = float(sys.argv[1]), float(sys.argv[2])
pause = burst * (1 - share) / share
while True:
    t = time.perf_counter()
    while time.perf_counter() - t < burst:
        pass
    time.sleep(pause)
"""


class BurstLoad:
    """A process that keeps `share` of one core busy in bursts of `burst_ms` (with `share` <= 0: none);
    `.cores` is what it actually used, measured from its own CPU time."""

    def __init__(self, share: float, burst_ms: float) -> None:
        self.share, self.burst_ms, self.cores = share, burst_ms, 0.0

    def __enter__(self) -> BurstLoad:
        import psutil

        if self.share > 0:
            args = [sys.executable, "-c", NOISE_SCRIPT, str(self.share), str(self.burst_ms / 1000)]
            self._popen = subprocess.Popen(args)
            self._proc, self._t0 = psutil.Process(self._popen.pid), time.monotonic()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.share > 0:
            t = self._proc.cpu_times()
            self.cores = (t.user + t.system) / (time.monotonic() - self._t0)
            self._popen.kill()
            self._popen.wait()


def noise(config: str, steps: int, share: float, overrides: list[str]) -> dict:
    """The model-only step quiet and beside a `BurstLoad` of `share` cores (0.2 ms and 2 ms bursts)."""
    from cora_ray.config import ExperimentConfig, load_config
    from cora_ray.train.trainer import resolve_local_paths

    storage = Path(tempfile.mkdtemp(prefix="cora_bench_noise_"))
    cfg = resolve_local_paths(
        load_config(ExperimentConfig, config, _e2e_overrides(steps, storage, overrides)), REPO
    )
    batches = training_batches(cfg, steps)
    runs = []
    for label, burst_ms in (("quiet", 0.0), ("bursts 0.2 ms", 0.2), ("bursts 2 ms", 2.0), ("quiet", 0.0)):
        foreign = ForeignCPU()
        with BurstLoad(share if burst_ms else 0.0, burst_ms) as load:
            r = model_only_rate(cfg, batches)
        r["preemptions_per_s"] = foreign.own_preemptions_by_process(*r.pop("timed_window"))
        r.update(label=label, load_cores=round(load.cores, 3), foreign_cores=round(foreign.cores(), 3))
        runs.append(r)
        print(f"[bench] model-only step, {label}: {r['samples_per_s']:.3f} samples/s", flush=True)
    quiet = [r["samples_per_s"] for r in runs if r["label"] == "quiet"]
    noisy = [r["samples_per_s"] for r in runs if r["label"] != "quiet"]
    record = write_result(
        "train_noise",
        value=sum(noisy) / len(noisy),
        baseline=sum(quiet) / len(quiet),
        unit="samples/s",
        config={
            "config": display_uri(config, REPO),
            "steps": steps,
            "overrides": overrides,
            "load_share_of_one_core": share,
            "torch_threads": cfg.train.cpu_threads_per_worker,
            "cpus": os.cpu_count(),
            "runs": runs,
        },
        title="The model-only training step beside a small bursty load (what Ray's own processes add)",
        value_label=f"beside a process using {share} of one core in bursts (0.2 ms and 2 ms; mean of the two)",
        baseline_label="quiet (mean of the first and last run)",
        notes=(
            "Ratio below 1 - share / cores means the team loses more than the CPU the load takes: with as many "
            "torch threads as cores, a descheduled thread holds the others at the next barrier. Quiet runs' "
            f"spread: {min(quiet):.3f}-{max(quiet):.3f} samples/s. The model-only rates beside each load, their "
            "measured load cores and the foreign CPU of each run are in config.runs."
        ),
    )
    disturbed = [r["label"] for r in runs if r["foreign_cores"] > FOREIGN_CPU_LIMIT]
    if disturbed:  # other jobs took CPU from a run: the ratio says nothing
        record["valid"] = False
        record["notes"] += (
            f" NOT A VALID MEASUREMENT: other processes used more than {FOREIGN_CPU_LIMIT} cores during "
            f"{', '.join(disturbed)}; re-run on a quiet machine."
        )
        save_record(record)
    return record


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
    p.add_argument("--e2e", action="store_true", help="only the end-to-end ratio: bench/results/train_e2e.*")
    p.add_argument(
        "--noise", action="store_true", help="only the step beside a bursty load: bench/results/train_noise.*"
    )
    p.add_argument("--noise-share", type=float, default=0.06, help="the load's share of one core")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args(argv)
    if args.noise:
        r = noise(args.config, args.steps, args.noise_share, args.overrides)
        print(f"[bench] beside the load / quiet: {r['ratio']:.3f} (share {args.noise_share} of one core)")
        return 0
    if args.e2e:
        r = e2e(args.config, args.steps, args.overrides)
        print(f"[bench] end-to-end / model-only: {r['ratio']:.3f} (goal >= 0.9)")
        return 0

    storage = Path(tempfile.mkdtemp(prefix="cora_bench_train_"))
    order = ([1, 2, 2, 1] * args.repeats)[: 2 * args.repeats]
    all_runs: dict[int, list[dict]] = {1: [], 2: []}
    for i, w in enumerate(order):
        r = train_run(
            args.config, w, args.steps, storage, [*args.overrides, f"train.run_name=bench-{w}w-{i}"]
        )
        r.pop("steady_window")
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
        save_record(record)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
