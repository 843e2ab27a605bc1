"""bf16 on a CPU: the frozen LLM in bfloat16 (`llm.dtype=bfloat16`, trainable parts fp32) against fp32.

    python bench/bench_cpu_bf16.py                       # bundled SmolLM2-135M, real ML-1M prompts (demo config)
    python bench/bench_cpu_bf16.py --rows 32 --reps 2    # shorter

On a CPU with AMX (Intel Xeon since Sapphire Rapids: the `amx_bf16` flag, recorded below) PyTorch runs bf16
matmuls on its tile units, several times the fp32 rate; without it bf16 is not faster. Two interleaved
measurements in one process (bench/common.py), each with the same real rows:

  cpu_bf16_score   scoring (Scorer.score, batches of 16, length-bucketed): rows/s fp32 ÷ bf16, and the two
                   precisions' scores of the same rows side by side (max |diff|; the AUC parity of a trained
                   checkpoint is a separate check: jobs/evaluate.py --dtype bfloat16, README)
  cpu_bf16_train   the CoRA training step (forward + backward of 8 rows, the loss of the demo config):
                   samples/s fp32 ÷ bf16

The trained parts are random (speed does not depend on their values). Needs artifacts/ml-1m and artifacts/cf/mf
(README quick start).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import interleaved_times, load_average, median, write_result  # noqa: E402
from cora_ray.cf import load_cf_artifact  # noqa: E402
from cora_ray.config import ExperimentConfig, load_config  # noqa: E402
from cora_ray.data import protocol  # noqa: E402
from cora_ray.data.batching import model_batch  # noqa: E402
from cora_ray.infer.scorer import Scorer  # noqa: E402
from cora_ray.llm.loading import load_llm  # noqa: E402
from cora_ray.model.build import build_model  # noqa: E402

DTYPES = ("float32", "bfloat16")


def cpu_flags() -> dict[str, bool]:
    """Whether the CPU has the instructions bf16 speed depends on (from /proc/cpuinfo)."""
    info = Path("/proc/cpuinfo")
    words = set(info.read_text().split()) if info.exists() else set()
    return {flag: flag in words for flag in ("amx_bf16", "amx_tile", "avx512_bf16", "avx512f")}


def scorers(cfg: ExperimentConfig, titles: list[str], cf) -> dict[str, Scorer]:
    """One CoRA Scorer per dtype over the bundled LLM, with the same random trained parts (fp32)."""
    out = {}
    for dtype in DTYPES:
        llm = load_llm(cfg.llm, device="cpu", dtype=dtype)
        model = build_model(cfg.model, llm, cf)
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for p in model.trainable_parameters():
                p.add_(torch.randn(p.shape, generator=g) * 0.02)
        out[dtype] = Scorer.from_model(model.eval(), llm, cfg, titles, cf=cf, batch_size=16)
    return out


def bench_score(args, scorer: dict[str, Scorer], rows) -> dict:
    u, i, h = rows["user_id"].to_numpy(), rows["item_id"].to_numpy(), rows["history"].to_pylist()
    scores = {d: scorer[d].score(u, i, h) for d in DTYPES}
    max_diff = float(np.abs(scores["float32"] - scores["bfloat16"]).max())
    corr = float(np.corrcoef(scores["float32"], scores["bfloat16"])[0, 1])
    load0 = load_average()
    times = interleaved_times({d: (lambda d=d: scorer[d].score(u, i, h)) for d in DTYPES}, reps=args.reps)
    rate = {d: len(u) / median(times[d]) for d in DTYPES}
    print(f"score {len(u)} rows: rows/s {rate}; bf16 / fp32 {rate['bfloat16'] / rate['float32']:.2f}x")
    return write_result(
        "cpu_bf16_score",
        value=median(times["float32"]),
        baseline=median(times["bfloat16"]),
        unit="s",
        config={
            "rows": len(u),
            "batch_size": 16,
            "threads": torch.get_num_threads(),
            "reps": args.reps,
            "cpu_flags": cpu_flags(),
            "rows_per_s": {d: round(r, 2) for d, r in rate.items()},
            "max_abs_score_diff": max_diff,
            "score_correlation": round(corr, 6),
            "load_average": [round(load0, 2), round(load_average(), 2)],
        },
        title=f"Scoring {len(u)} real ML-1M rows, the frozen LLM in fp32 vs bf16 (bundled SmolLM2, CoRA, CPU)",
        value_label="fp32 LLM (s)",
        baseline_label="bf16 LLM, fp32 trainable parts (s)",
        notes=(
            f"rows/s: fp32 {rate['float32']:.2f}, bf16 {rate['bfloat16']:.2f} ({rate['bfloat16'] / rate['float32']:.2f}x). "
            f"Scores of the same rows: max |fp32 - bf16| {max_diff:.3f} (logits), correlation {corr:.5f}. "
            f"CPU flags: {cpu_flags()}."
        ),
        samples=times,
    )


def bench_train(args, cfg: ExperimentConfig, titles: list[str], cf, rows) -> dict:
    batches, models = {}, {}
    for dtype in DTYPES:
        llm = load_llm(cfg.llm, device="cpu", dtype=dtype)
        model = build_model(cfg.model, llm, cf)
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for p in model.trainable_parameters():
                p.add_(torch.randn(p.shape, generator=g) * 0.02)
        model.train()
        scorer = Scorer.from_model(model, llm, cfg, titles, cf=cf)  # its encoder: the model's prompts
        batch = model_batch(
            scorer.encoder,
            rows["user_id"].to_numpy(),
            rows["item_id"].to_numpy(),
            rows["history"].to_pylist(),
        )
        batch["label"] = torch.as_tensor(rows["label"].to_numpy().astype(np.float32))
        batches[dtype], models[dtype] = batch, model

    def step(dtype: str) -> None:
        model = models[dtype]
        model.loss(batches[dtype]).backward()
        model.zero_grad(set_to_none=True)

    load0 = load_average()
    times = interleaved_times({d: (lambda d=d: step(d)) for d in DTYPES}, reps=args.reps)
    rate = {d: len(rows) / median(times[d]) for d in DTYPES}
    print(
        f"train step {len(rows)} rows: samples/s {rate}; bf16 / fp32 {rate['bfloat16'] / rate['float32']:.2f}x"
    )
    return write_result(
        "cpu_bf16_train",
        value=median(times["float32"]),
        baseline=median(times["bfloat16"]),
        unit="s",
        config={
            "rows": len(rows),
            "threads": torch.get_num_threads(),
            "reps": args.reps,
            "cpu_flags": cpu_flags(),
            "samples_per_s": {d: round(r, 2) for d, r in rate.items()},
            "trainable_dtypes": sorted({str(p.dtype) for p in models["bfloat16"].trainable_parameters()}),
            "load_average": [round(load0, 2), round(load_average(), 2)],
        },
        title=f"CoRA training step ({len(rows)} real ML-1M rows, forward + backward), frozen LLM fp32 vs bf16 (CPU)",
        value_label="fp32 LLM (s)",
        baseline_label="bf16 LLM, fp32 trainable parts (s)",
        notes=(
            f"samples/s: fp32 {rate['float32']:.2f}, bf16 {rate['bfloat16']:.2f} "
            f"({rate['bfloat16'] / rate['float32']:.2f}x); the optimizer step is not timed (fp32 in both). "
            f"CPU flags: {cpu_flags()}."
        ),
        samples=times,
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/demo.yaml")
    ap.add_argument("--rows", type=int, default=64, help="valid rows scored per repetition")
    ap.add_argument("--train-rows", type=int, default=8, help="rows of the timed training step")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", choices=["score", "train"], default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = load_config(ExperimentConfig, args.config, [])
    data = cfg.data.uri
    titles = protocol.titles_by_id(protocol.read_items(data))
    cf = load_cf_artifact(cfg.model.cf_artifact)
    if args.only in (None, "score"):
        rows = protocol.read_split(data, "valid").slice(0, args.rows)
        bench_score(args, scorers(cfg, titles, cf), rows)
    if args.only in (None, "train"):
        rows = protocol.read_split(data, "train").slice(0, args.train_rows)
        bench_train(args, cfg, titles, cf, rows)


if __name__ == "__main__":
    main()
