"""GPU check of the training path without Ray: bf16 + nccl + DeepSpeed ZeRO-3 for a few steps on a SmolLM2-shaped
LLaMA, with the same pieces the Ray Train workers use (cora_ray.train: DeepSpeed config, AdamW over trainable
parameters only, warm-up + cosine schedule, external-parameter registration for ZeRO-3, exactly-once
validation, ZeRO-3 gather of the trainable state).

    bash bench/gpu_check.sh                          # what to run on a lent GPU machine
    torchrun --nproc_per_node=2 bench/gpu_check.py   # several GPUs: ZeRO-3 really partitions

The GPU image has neither Ray nor DeepSpeed and cannot download: DeepSpeed travels as a wheel (.whl/, see
gpu_check.sh). The bundled SmolLM2 weights (98 MB GGUF) exceed what travels, so the model is SmolLM2-135M's
architecture (30 layers, d_model 576, 9 heads / 3 KV heads, vocab 49,152) with random weights, driven by the
in-process tiny tokenizer; the answer logit is made informative the same way as in tests/train (a "Yes" bias
that the trainable parts must learn to cancel), so the loss must fall.

Writes <out>/gpu_check.json: per-step loss and time, samples/s, peak GPU memory, validation AUC, whether the
loss fell, whether the LLM stayed bit-identical, the trainable tensors gathered from ZeRO-3.
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

SMOLLM2_135M = dict(
    vocab_size=49152,
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    max_position_embeddings=2048,
    rms_norm_eps=1e-5,
    rope_theta=100000.0,
    tie_word_embeddings=True,
)


def init_distributed(cpu: bool):
    import torch
    import torch.distributed as dist

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29517")
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("LOCAL_RANK", "0")
    local_rank = int(os.environ["LOCAL_RANK"])
    if cpu:
        dist.init_process_group(backend="gloo")
        return dist.get_rank(), dist.get_world_size(), torch.device("cpu")
    torch.cuda.set_device(local_rank)
    dist.init_process_group(backend="nccl", device_id=torch.device("cuda", local_rank))
    return dist.get_rank(), dist.get_world_size(), torch.device("cuda", local_rank)


def smollm2_shaped_llm(device, dtype, layers: int):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from cora_ray.llm.hashing import model_weight_hash
    from cora_ray.llm.loaded import finish_loading
    from cora_ray.llm.tiny import tiny_tokenizer

    tok = tiny_tokenizer()
    config = LlamaConfig(
        **{**SMOLLM2_135M, "num_hidden_layers": layers},
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # the same frozen weights on every rank
        model = LlamaForCausalLM(config)
    model.to(device=device, dtype=dtype)
    return finish_loading(model, tok, " Yes", " No", "smollm2-135m-shaped:random", model_weight_hash(model))


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--micro-batch", type=int, default=8)
    p.add_argument("--zero-stage", type=int, default=3)
    p.add_argument("--layers", type=int, default=SMOLLM2_135M["num_hidden_layers"])
    p.add_argument("--out", default=os.environ.get("OUT") or str(REPO / "bench" / "results"))
    p.add_argument(
        "--cpu-smoke", action="store_true", help="gloo + fp32 on CPU: checks this script without a GPU"
    )
    args = p.parse_args(argv)
    cpu = args.cpu_smoke
    precision = "fp32" if cpu else "bf16"

    import importlib

    import numpy as np
    import torch
    import torch.nn.functional as F

    if cpu:
        os.environ["DS_ACCELERATOR"] = "cpu"
    importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None
    import deepspeed

    from cora_ray.cf.models import MF
    from cora_ray.config import ExperimentConfig, load_config
    from cora_ray.data import protocol
    from cora_ray.data.batching import table_batch
    from cora_ray.data.prompts import PromptEncoder
    from cora_ray.data.synthetic import prepare_synthetic
    from cora_ray.llm.hashing import model_weight_hash
    from cora_ray.model.base import last_hidden_state
    from cora_ray.model.build import build_model
    from cora_ray.train.deepspeed_config import build_optimizer, deepspeed_config, register_external_params
    from cora_ray.train.pipeline import row_keys
    from cora_ray.train.schedule import WarmupCosineSchedule
    from cora_ray.train.state import gathered_trainable_state
    from cora_ray.train.validation import validate

    rank, world, device = init_distributed(cpu)
    t_start = time.perf_counter()
    cfg = load_config(
        ExperimentConfig,
        None,
        [
            "prompt.max_history=10",
            f"train.zero_stage={args.zero_stage}",
            f"train.micro_batch_size={args.micro_batch}",
            f"train.max_steps={args.steps}",
            "train.warmup_steps=2",
            "train.lr=1e-2",
            "train.warmup_start_lr=1e-3",
            "train.min_lr=1e-3",
            f"train.use_gpu={'false' if cpu else 'true'}",
        ],
    )
    data_dir = Path(tempfile.mkdtemp(prefix="gpu_check_")) / "data"
    manifest = prepare_synthetic(str(data_dir), users=400, items=100, seed=0, interactions_per_user=60)
    llm = smollm2_shaped_llm(device, torch.float32 if cpu else torch.bfloat16, args.layers)
    enc = PromptEncoder(llm.tokenizer, cfg.prompt, protocol.titles_by_id(protocol.read_items(str(data_dir))))
    train = protocol.read_split(str(data_dir), "train")
    valid = protocol.read_split(str(data_dir), "valid_small").slice(0, 64 * world)

    def batch_of(table, idx):
        return {k: v.to(device) for k, v in table_batch(enc, table, idx).items()}

    with torch.no_grad():  # a "Yes"-biased head: logit(Yes) - logit(No) ~ +3, which training must undo
        b = batch_of(train, np.arange(32))
        h = last_hidden_state(llm.model, b["attention_mask"], input_ids=b["input_ids"]).float().mean(0)
        head = llm.model.get_output_embeddings().weight
        head[llm.answer_token_id] = (head[llm.negative_token_id].float() + 3.0 * h / h.dot(h)).to(head.dtype)
    llm_hash_before = model_weight_hash(llm.model)

    known = torch.ones(manifest["users"] + 1, dtype=torch.bool)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        cf = MF(manifest["users"], manifest["items"], dim=256, init_std=0.1, known_users=known).to(device)
    cf.requires_grad_(False)
    frozen = {id(p) for p in llm.model.parameters()} | {id(p) for p in cf.parameters()}
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model, llm, cf).to(device)
    optimizer = build_optimizer(model, cfg.train, frozen)
    trainable = {k: tuple(v.shape) for k, v in model.trainable_state_dict().items()}
    if args.zero_stage == 3:
        register_external_params(model)
    t = cfg.train
    engine, ds_opt, _, sched = deepspeed.initialize(
        model=model,
        optimizer=optimizer,
        config=deepspeed_config(t, world_size=world, precision=precision),
        lr_scheduler=lambda o: WarmupCosineSchedule.for_train(o, t),
    )
    setup_s = time.perf_counter() - t_start

    rng = np.random.default_rng(rank)
    steps = []
    sync = (lambda: None) if cpu else (lambda: torch.cuda.synchronize(device))
    if not cpu:
        torch.cuda.reset_peak_memory_stats(device)
    for step in range(1, args.steps + 1):
        batch = batch_of(train, rng.choice(train.num_rows, args.micro_batch, replace=False))
        sync()
        t0 = time.perf_counter()
        logits = engine(batch)
        loss = F.binary_cross_entropy_with_logits(logits.float(), batch["label"].float())
        engine.backward(loss)
        engine.step()
        sync()
        steps.append(
            {"step": step, "loss": float(loss), "seconds": time.perf_counter() - t0, "lr": sched.lr(step - 1)}
        )
        if rank == 0:
            print(f"[gpu_check] step {step} loss {float(loss):.4f} {steps[-1]['seconds']:.3f} s", flush=True)

    # validation: each rank scores its half of 64*world rows, exactly once overall
    mine = np.arange(valid.num_rows)[rank::world]
    local = [batch_of(valid, mine[i : i + 16]) for i in range(0, len(mine), 16)]
    keys = row_keys(valid["user_id"].to_numpy(), valid["item_id"].to_numpy())
    metrics = validate(engine, iter(local), local[0], keys, device)
    state = gathered_trainable_state(model, args.zero_stage)
    gathered_ok = {k: tuple(v.shape) for k, v in state.items()} == trainable

    if rank == 0:
        times = [s["seconds"] for s in steps[1:]] or [steps[0]["seconds"]]
        first, last = np.mean([s["loss"] for s in steps[:3]]), np.mean([s["loss"] for s in steps[-3:]])
        result = {
            "name": "gpu_check",
            "device": "cpu (smoke)" if cpu else torch.cuda.get_device_name(device),
            "world_size": world,
            "zero_stage": args.zero_stage,
            "precision": precision,
            "backend": "gloo" if cpu else "nccl",
            "model": f"SmolLM2-135M architecture ({args.layers} layers), random weights",
            "micro_batch": args.micro_batch,
            "setup_s": round(setup_s, 2),
            "median_step_s": float(np.median(times)),
            "samples_per_s": args.micro_batch * world / float(np.median(times)),
            "peak_gpu_memory_gib": None if cpu else torch.cuda.max_memory_allocated(device) / 2**30,
            "loss_first3": float(first),
            "loss_last3": float(last),
            "loss_fell": bool(last < first),
            "llm_unchanged": model_weight_hash(llm.model) == llm_hash_before
            if args.zero_stage != 3
            else None,
            "trainable_gathered": gathered_ok,
            "valid": metrics,
            "steps": steps,
            "torch": torch.__version__,
            "deepspeed": deepspeed.__version__,
        }
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "gpu_check.json").write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps({k: v for k, v in result.items() if k != "steps"}, indent=2))
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
