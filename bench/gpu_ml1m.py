"""Real MovieLens-1M with the real bundled SmolLM2-135M on a lent GPU, without Ray (its image has neither Ray nor
DeepSpeed; DeepSpeed travels as wheels, see bench/gpu_check.sh). One prepared run, in this order:

1. **Zero-shot parity across hardware**: the Scorer over the whole ML-1M test split in fp32 (TF32 off) on the GPU,
   row by row against the CPU's committed fp32 scores (results/compare_ml1m_cpu/runs/zero-shot): the frozen-LLM
   path, prompts and tokenizer agree across machines when nothing trained is involved.
2. **CoRA-MF learning curve in bf16**: the curve run's settings (configs/curve_ml1m_cpu.yaml: the table's CoRA-MF
   seed-42 command with train.max_steps=2000, validation on the same fixed 1,000 valid_small rows every 250 steps)
   trained through the pieces a Ray Train worker uses (cora_ray.train: DeepSpeed config at the configured ZeRO
   stage, AdamW over trainable parameters only, warm-up + cosine schedule, the model's own loss, lockstep
   validation; nccl), the frozen LLM in bf16 and the trainable parts fp32; the test split scored by the Scorer
   in bf16 at each step of `--score-at`.
3. **bf16 vs fp32 on a trained CoRA**: the last trained state scored over the whole test split once more with the
   LLM in fp32 (TF32 off): |AUC(bf16) - AUC(fp32)| on the same 7,331 rows.
4. **Zero-shot in bf16** against phase 1's fp32 rows.

Each phase is skipped, with its reason recorded, when `--deadline-s` would not leave time for it; the JSON is
rewritten after every phase, so a run cut short still returns what it measured. Rows are drawn in a seeded order
of the train split (not Ray Data's shuffle): the curve is the same run's, not the same batches'.

    bash bench/gpu_ml1m.sh                                   # on the GPU machine (see that file)
    python bench/gpu_ml1m.py --cpu-smoke                     # this script end to end on CPU, tiny sizes

Writes <out>/gpu_ml1m.json (every metric, timings, peak GPU memory) and <out>/gpu_ml1m_scores.parquet (the test
rows' scores of every scored model, one column each, in test-split order).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

ZERO_SHOT_REF = "results/compare_ml1m_cpu/runs/zero-shot/scores/test.parquet"


def curve_overrides(args: argparse.Namespace, cpu: bool) -> list[str]:
    """configs/demo.yaml + the curve command's overrides (configs/curve_ml1m_cpu.yaml), on one GPU worker."""
    return [
        f"data.uri={args.data}",
        "model.method=cora",
        f"model.cf_artifact={args.cf}",
        f"train.max_steps={args.steps}",
        "train.num_workers=1",
        f"train.eval_every={args.eval_every}",
        f"train.eval_limit={args.eval_limit}",
        f"train.eval_batch_size={args.batch}",
        f"train.seed={args.seed}",
        "train.eval_seed=42",
        f"train.use_gpu={'false' if cpu else 'true'}",
        f"llm.dtype={'float32' if cpu else 'bfloat16'}",
    ]


class Clock:
    """Seconds since start and what is left before the deadline."""

    def __init__(self, deadline_s: float) -> None:
        self.t0, self.deadline_s = time.perf_counter(), deadline_s

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def left(self) -> float:
        return self.deadline_s - self.elapsed()


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="artifacts/ml-1m")
    p.add_argument("--cf", default="artifacts/cf/mf")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--score-at", default="250,500,1000,2000")
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--eval-limit", type=int, default=1000)
    p.add_argument("--test-limit", type=int, default=None, help="score only the first N test rows (smoke)")
    p.add_argument("--batch", type=int, default=64, help="scoring / validation batch size")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--deadline-s", type=float, default=540.0)
    p.add_argument("--out", default=os.environ.get("OUT") or str(REPO / "bench" / "results"))
    p.add_argument("--engine", choices=["deepspeed", "torch"], default="deepspeed")
    p.add_argument("--cpu-smoke", action="store_true", help="gloo + fp32 on CPU, for checking this script")
    args = p.parse_args(argv)
    cpu = args.cpu_smoke
    if cpu:
        sys.modules["ray"] = None  # type: ignore[assignment]  # the GPU image has no Ray: prove it is not imported
    clock = Clock(args.deadline_s)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    import importlib

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch
    from gpu_check import init_distributed

    if cpu:
        os.environ["DS_ACCELERATOR"] = "cpu"
    else:
        torch.backends.cuda.matmul.allow_tf32 = False  # "fp32" below means fp32, not TF32
        torch.backends.cudnn.allow_tf32 = False
    from cora_ray.cf import load_cf_artifact
    from cora_ray.config import ExperimentConfig, load_config
    from cora_ray.data import protocol
    from cora_ray.data.batching import table_batch
    from cora_ray.data.prompts import PromptEncoder
    from cora_ray.eval.metrics import auc_uauc
    from cora_ray.infer.scorer import Scorer
    from cora_ray.llm.loading import load_llm
    from cora_ray.model.build import build_model
    from cora_ray.train.deepspeed_config import (
        build_optimizer,
        check_precision,
        deepspeed_config,
        register_external_params,
        resolve_precision,
        torch_dtype,
    )
    from cora_ray.train.pipeline import read_split_keys, row_keys, sample_keys
    from cora_ray.train.schedule import WarmupCosineSchedule
    from cora_ray.train.state import gathered_trainable_state
    from cora_ray.train.validation import validate

    rank, world, device = init_distributed(cpu)
    sync = (lambda: None) if cpu else (lambda: torch.cuda.synchronize(device))
    cfg = load_config(ExperimentConfig, REPO / "configs" / "demo.yaml", curve_overrides(args, cpu))
    t = cfg.train
    result: dict = {
        "name": "gpu_ml1m",
        "device": "cpu (smoke)" if cpu else torch.cuda.get_device_name(device),
        "torch": torch.__version__,
        "engine": args.engine,
        "world_size": world,
        "config": "configs/demo.yaml + " + " ".join(curve_overrides(args, cpu)),
        "phases": {},
        "skipped": {},
    }
    columns: dict[str, np.ndarray] = {}

    def write() -> None:
        if rank != 0:
            return
        result["elapsed_s"] = round(clock.elapsed(), 1)
        if not cpu:
            result["peak_gpu_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 3)
        tmp = out / "gpu_ml1m.json.tmp"
        tmp.write_text(json.dumps(result, indent=2) + "\n")
        tmp.replace(out / "gpu_ml1m.json")
        if columns:
            pq.write_table(pa.table(dict(columns)), out / "gpu_ml1m_scores.parquet.tmp")
            (out / "gpu_ml1m_scores.parquet.tmp").replace(out / "gpu_ml1m_scores.parquet")

    def say(msg: str) -> None:
        if rank == 0:
            print(f"[gpu_ml1m {clock.elapsed():6.1f}s] {msg}", flush=True)

    # --- the test split and its warm / cold subsets -------------------------------------------------------
    test = protocol.read_split(args.data, "test")
    if args.test_limit:
        test = test.slice(0, args.test_limit)
    tu, ti = test["user_id"].to_numpy().astype(np.int64), test["item_id"].to_numpy().astype(np.int64)
    ty, th = test["label"].to_numpy(), [test["history"][i].as_py() for i in range(test.num_rows)]
    tkeys = row_keys(tu, ti)
    subsets = {"test": np.ones(len(tkeys), dtype=bool)}
    for name in ("test_warm", "test_cold"):
        subsets[name] = np.isin(tkeys, read_split_keys(args.data, name))
    columns.update(user_id=tu, item_id=ti, label=ty)

    def test_metrics(scores: np.ndarray) -> dict:
        return {n: auc_uauc(tu[m], ty[m], scores[m]) for n, m in subsets.items()}

    def score_test(scorer: Scorer, name: str) -> dict:
        sync()
        t0 = time.perf_counter()
        s = scorer.score(tu, ti, th, batch_size=args.batch)
        sync()
        secs = time.perf_counter() - t0
        columns[name] = s
        m = test_metrics(s)
        say(
            f"{name}: test AUC {m['test']['auc']:.4f} UAUC {m['test']['uauc']:.4f} ({len(s) / secs:.1f} rows/s)"
        )
        return {"metrics": m, "seconds": round(secs, 2), "rows_per_s": round(len(s) / secs, 2)}

    # --- phase 1: zero-shot fp32 against the CPU's committed fp32 rows --------------------------------------
    ref = pq.read_table(REPO / ZERO_SHOT_REF)
    ref_score = dict(
        zip(
            row_keys(ref["user_id"].to_numpy(), ref["item_id"].to_numpy()),
            ref["score"].to_numpy(),
            strict=True,
        )
    )
    cpu_zs = np.array([ref_score[k] for k in tkeys], dtype=np.float32)

    def parity(a: np.ndarray, b: np.ndarray) -> dict:
        ma, mb = test_metrics(a), test_metrics(b)
        return {
            "auc_diff": float(ma["test"]["auc"] - mb["test"]["auc"]),
            "uauc_diff": float(ma["test"]["uauc"] - mb["test"]["uauc"]),
            "max_abs_score_diff": float(np.max(np.abs(a - b))),
            "mean_abs_score_diff": float(np.mean(np.abs(a - b))),
            "pearson": float(np.corrcoef(a, b)[0, 1]),
        }

    t0 = time.perf_counter()
    zs32 = Scorer.from_base_llm(cfg, args.data, device=device, dtype=torch.float32, batch_size=args.batch)
    load_s = time.perf_counter() - t0
    r = score_test(zs32, "zero_shot_fp32")
    columns["zero_shot_cpu_fp32"] = cpu_zs
    result["phases"]["zero_shot_fp32"] = {
        **r,
        "load_s": round(load_s, 1),
        "vs_cpu_fp32": parity(columns["zero_shot_fp32"], cpu_zs),
        "cpu_fp32_metrics": test_metrics(cpu_zs),
    }
    llm_identity, llm_hash = zs32.llm.identity, zs32.llm.weight_hash
    del zs32
    write()

    # --- phase 2: the curve, bf16 -------------------------------------------------------------------------
    precision = resolve_precision(cfg.llm.dtype, t.use_gpu)
    llm_dtype = torch_dtype(precision)
    torch.manual_seed(t.seed)
    t0 = time.perf_counter()
    llm = load_llm(cfg.llm, device, llm_dtype)
    dataset_hash = protocol.manifest_hash(protocol.read_manifest(args.data))
    cf = load_cf_artifact(cfg.model.cf_artifact, expected_dataset_hash=dataset_hash).to(device)
    frozen = {id(q) for m in (llm.model, cf) for q in m.parameters()}
    model = build_model(cfg.model, llm, cf).to(device)
    check_precision(model, llm_dtype, when="model built")
    optimizer = build_optimizer(model, t, frozen)
    zero = t.effective_zero_stage(world)
    if args.engine == "deepspeed":
        importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None
        import deepspeed

        result["deepspeed"] = deepspeed.__version__
        if zero == 3:
            register_external_params(model)
        engine, _, _, sched = deepspeed.initialize(
            model=model,
            optimizer=optimizer,
            config=deepspeed_config(t, world_size=world, precision=precision),
            lr_scheduler=lambda o: WarmupCosineSchedule.for_train(o, t),
        )
        backward, opt_step = engine.backward, engine.step
        if world == 1 and zero == 0:
            engine.enable_backward_allreduce = False
    else:  # plain PyTorch, the same optimizer, schedule and clipping (when DeepSpeed cannot be imported there)
        zero, engine, sched = 0, model, WarmupCosineSchedule.for_train(optimizer, t)
        clipped = [q for q in model.parameters() if q.requires_grad]

        def backward(loss):
            loss.backward()

        def opt_step():
            torch.nn.utils.clip_grad_norm_(clipped, t.grad_clip)
            optimizer.step()
            sched.step()
            optimizer.zero_grad(set_to_none=True)

    check_precision(model, llm_dtype, when="after deepspeed.initialize")
    titles = protocol.titles_by_id(protocol.read_items(args.data))
    encoder = PromptEncoder(
        llm.tokenizer,
        cfg.prompt,
        titles,
        collab_placeholders=model.needs_placeholders,
        split_suffix=cfg.model.shares_prefix,
    )

    def to_batch(table, idx) -> dict:
        return {k: v.to(device, non_blocking=True) for k, v in table_batch(encoder, table, idx).items()}

    train = protocol.read_split(args.data, "train")
    valid_all = protocol.read_split(args.data, "valid_small")
    vkeys = sample_keys(read_split_keys(args.data, "valid_small"), t.eval_limit, t.eval_seed)
    valid = valid_all.filter(
        pa.array(np.isin(row_keys(valid_all["user_id"].to_numpy(), valid_all["item_id"].to_numpy()), vkeys))
    )
    mine = np.arange(valid.num_rows)[rank::world]
    valid_batches = [to_batch(valid, mine[i : i + args.batch]) for i in range(0, len(mine), args.batch)]
    mb = t.micro_batch_size
    samples_per_step = mb * t.grad_accum_steps * world
    result["phases"]["curve"] = curve = {
        "precision": precision,
        "zero_stage": zero,
        "zero_stage_configured": t.zero_stage,
        "micro_batch": mb,
        "grad_accum": t.grad_accum_steps,
        "samples_per_step": samples_per_step,
        "max_steps": t.max_steps,
        "valid_rows": int(valid.num_rows),
        "setup_s": round(time.perf_counter() - t0, 1),
        "trainable_parameters": sum(q.numel() for q in model.trainable_parameters() if q.requires_grad),
        "points": [],
        "log": [],
    }
    say(
        f"curve: {t.max_steps} steps x {samples_per_step} rows, ZeRO-{zero}, {precision}; setup {curve['setup_s']} s"
    )
    score_at = {int(s) for s in args.score_at.split(",") if s}
    order, pos, epoch = None, 0, 0

    def next_indices() -> np.ndarray:
        """This rank's rows of the next micro-batch: a seeded permutation of train per epoch."""
        nonlocal order, pos, epoch
        if order is None or pos + mb * world > len(order):
            epoch += order is not None
            order, pos = np.random.default_rng(t.seed + 7919 * epoch).permutation(train.num_rows), 0
        idx = order[pos + rank * mb : pos + (rank + 1) * mb]
        pos += mb * world
        return idx

    engine.train()
    step, step_times, last_batch, loss_sum = 0, [], None, 0.0
    eval_cost = None  # seconds of one validation, measured
    while step < t.max_steps:
        sync()
        t_step = time.perf_counter()
        for _ in range(t.grad_accum_steps):
            last_batch = to_batch(train, next_indices())
            loss = model.loss(last_batch, logits=engine(last_batch))
            backward(loss)
            opt_step()
            loss_sum += float(loss.detach())
        sync()
        step += 1
        step_times.append(time.perf_counter() - t_step)
        if step % 50 == 0:
            curve["log"].append(
                {"step": step, "loss": loss_sum / (50 * t.grad_accum_steps), "lr": sched.lr(step - 1)}
            )
            say(
                f"step {step} loss {curve['log'][-1]['loss']:.4f} lr {sched.lr(step - 1):.2e} "
                f"{np.median(step_times[-50:]) * 1000:.0f} ms/step"
            )
            loss_sum = 0.0
        if step % t.eval_every == 0 or step == t.max_steps:
            sync()
            te = time.perf_counter()
            rows: dict = {}
            vm = validate(engine, iter(valid_batches), last_batch, vkeys, device, rows)
            eval_cost = time.perf_counter() - te
            point = {
                "step": step,
                "rows": step * samples_per_step,
                "lr": sched.lr(step - 1),
                **vm,
                "valid_s": round(eval_cost, 2),
            }
            say(
                f"step {step}: valid AUC {vm['valid_auc']:.4f} UAUC {vm['valid_uauc']:.4f} ({eval_cost:.1f} s)"
            )
            if step in score_at:
                # scoring costs ~ (test rows / valid rows) validations; skip it if it would pass the deadline
                need = eval_cost * len(tkeys) / max(1, valid.num_rows) * 1.5
                if clock.left() < need:
                    result["skipped"][f"test_at_{step}"] = f"{clock.left():.0f} s left, ~{need:.0f} s needed"
                else:
                    scorer = Scorer.from_model(
                        model, llm, cfg, titles, device=device, batch_size=args.batch, cf=cf
                    )
                    point["test"] = score_test(scorer, f"cora_mf_bf16_step{step}")
                    engine.train()
            curve["points"].append(point)
            curve["median_step_s"] = float(np.median(step_times))
            curve["samples_per_s"] = samples_per_step / curve["median_step_s"]
            write()
            left_steps = t.max_steps - step
            next_cost = min(left_steps, t.eval_every) * curve["median_step_s"] + eval_cost
            if left_steps and clock.left() < next_cost * 1.2:
                result["skipped"]["curve_after"] = f"stopped at step {step}: {clock.left():.0f} s left"
                break
    curve["steps_done"], curve["epochs"] = step, step * samples_per_step / train.num_rows
    write()

    # --- phase 3: the same trained state in fp32 ----------------------------------------------------------
    last = [k for k in columns if k.startswith("cora_mf_bf16_step")]
    need = (result["phases"]["zero_shot_fp32"]["seconds"] * 2 + 20) if last else None
    if not last:
        result["skipped"]["cora_fp32"] = "no bf16 test scores to compare with"
    elif clock.left() < need:
        result["skipped"]["cora_fp32"] = f"{clock.left():.0f} s left, ~{need:.0f} s needed"
    else:
        state = gathered_trainable_state(model, zero)
        llm32 = load_llm(cfg.llm, device, torch.float32)
        model32 = build_model(cfg.model, llm32, cf).to(device)
        model32.load_trainable_state_dict(state)
        model32.to(device)
        s32 = Scorer.from_model(model32, llm32, cfg, titles, device=device, batch_size=args.batch, cf=cf)
        r = score_test(s32, f"cora_mf_fp32_step{step}")
        r["vs_bf16"] = (
            parity(columns[f"cora_mf_bf16_step{step}"], columns[f"cora_mf_fp32_step{step}"])
            if (f"cora_mf_bf16_step{step}" in columns)
            else None
        )
        result["phases"]["cora_fp32"] = r
        del s32, model32, llm32
        write()

    # --- phase 4: zero-shot bf16 --------------------------------------------------------------------------
    need = result["phases"]["zero_shot_fp32"]["seconds"] + 20
    if clock.left() < need:
        result["skipped"]["zero_shot_bf16"] = f"{clock.left():.0f} s left, ~{need:.0f} s needed"
    else:
        zs16 = Scorer.from_base_llm(
            cfg, args.data, device=device, dtype=torch.bfloat16, batch_size=args.batch
        )
        r = score_test(zs16, "zero_shot_bf16")
        r["vs_fp32"] = parity(columns["zero_shot_bf16"], columns["zero_shot_fp32"])
        result["phases"]["zero_shot_bf16"] = r
    result["llm"] = {"identity": llm_identity, "weight_hash": llm_hash}
    write()
    say("done: " + json.dumps({k: v for k, v in result.items() if k not in ("phases",)}, default=str)[:2000])
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
