"""Benchmarks of the CoRA model on the bundled SmolLM2-135M (fp32, CPU): docs/architecture.md §5 rules 1–3, measured.

    .venv/bin/python bench/bench_model.py                  # ~5 min on 2 cores; `make bench` runs it too
    .venv/bin/python bench/bench_model.py --reps 5         # more repetitions (median is reported)
    .venv/bin/python bench/bench_model.py --quick          # smoke run: tiny batch, 2 layers, numbers meaningless
    .venv/bin/python bench/bench_model.py --train-only --tokens 190   # the training-step ratios + profile only
    .venv/bin/python bench/bench_model.py --score-only --tokens 190   # scoring: shared vs per-layer x·G

Same batch for every variant: 8 rows, left-padded prompts of 130–150 tokens of random token ids (the cost
does not depend on which tokens), torch threads 2. Timings are medians of `--reps` round-robin runs after
one warm-up; peak memory is measured once per variant in a fresh process (Linux VmHWM).

Results (bench/results/<name>.json + .md):
  cora_train_step_vs_frozen          CoRA step (fwd+bwd+AdamW) / frozen LLM fwd+bwd through activations  (goal ≤ 1.05)
  cora_score_vs_frozen               CoRA scoring forward (G generated) / frozen LLM forward                (goal ≤ 1.10)
  naive_merge_vs_cora_train_time     per-row materialised W+ΔW, per-row matmuls / CoRA bmm path, training
  naive_merge_vs_cora_train_memory   the same, peak memory of forward+backward
  naive_merge_vs_cora_infer_time     the same, inference (G given to both)
  peft_mixed_batch_vs_cora_infer_time  peft LoRA with adapter_names (one adapter per row) / CoRA, inference
  full_vocab_vs_yes_row_time         forward with [B, T, vocab] logits / forward with the "Yes"-row head
  full_vocab_vs_yes_row_memory       the same, peak memory
and an overview bench/results/model.md. `--train-only` writes model_train_step_t<tokens>.{json,md} instead:
the CoRA step against the frozen floor, the naive
merge, the generator's and the optimizer's share, and a torch.profiler breakdown of one step of each.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import common
import torch
import torch.nn.functional as F
from common import (
    interleaved_wall_and_cpu_times,
    load_average,
    median,
    memory_child_env,
    peak_memory_bytes,
    summary_table,
    write_result,
)
from torch import nn
from torch.utils import flop_counter

from cora_ray.cf.base import CFBackbone
from cora_ray.config import LLMConfig, ModelConfig, TrainConfig
from cora_ray.llm.loaded import LoadedLLM
from cora_ray.model.base import RecModel, last_hidden_state, position_ids_from_mask
from cora_ray.model.baselines import ZeroShotModel
from cora_ray.model.collab_linear import CollabLinear
from cora_ray.model.cora import CoRAModel
from cora_ray.train.deepspeed_config import build_optimizer

CF_DIM = 256  # the paper's CF width: 2 x 256 = 512 = the generator width, as in the paper
MEMORY_CASES = ("train_frozen", "train_cora", "train_naive", "infer_yes_row", "infer_full_vocab")


# ---------------------------------------------------------------------------------------------------------
# the pieces under test
# ---------------------------------------------------------------------------------------------------------


class RandomTableCF(CFBackbone):
    """Random user / item vectors; every user known (the CF model's cost is a table lookup either way)."""

    name = "random-table"

    def __init__(self, n: int = 64, dim: int = CF_DIM) -> None:
        super().__init__()
        self.dim = dim
        self.users, self.items = nn.Embedding(n, dim), nn.Embedding(n, dim)

    def user_vectors(self, user_ids: torch.Tensor, history: torch.Tensor | None = None) -> torch.Tensor:
        return self.users(user_ids)

    def item_vectors(self, item_ids: torch.Tensor) -> torch.Tensor:
        return self.items(item_ids)

    def knows_user(self, user_ids: torch.Tensor) -> torch.Tensor:
        return torch.ones_like(user_ids, dtype=torch.bool)


class NaiveMergeLinear(CollabLinear):
    """The path CoRA avoids: materialise W_b = W + (alpha/r)·P·G_bᵀ for every row b, then B separate matmuls.

    Same parameters and G as `CollabLinear` (the class of a layer is swapped for the measurement). No
    dropout on the delta (it cannot be separated from W x once merged): a little less work than CoRA."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        G = self.context.G
        if G is None:
            return self.base_layer(x)
        rows = [F.linear(x[b], self.merged_weight(G[b]), self.base_layer.bias) for b in range(x.shape[0])]
        return torch.stack(rows)  # (B, T, out)


class PerLayerDownLinear(CollabLinear):
    """The path before the shared down-projection: every layer computes its own bmm(x, G), dropout or not (a
    bmm per projection both ways). Same parameters, same draws; the rest of `forward` is CollabLinear's."""

    def down_product(self, x: torch.Tensor, x3: torch.Tensor, Gd: torch.Tensor) -> tuple[torch.Tensor, float]:
        return self.own_product(x3, Gd)  # in eval zero_dropped is the identity: bmm(x, Gd), 1.0


def naive_merge(model: CoRAModel) -> contextlib.AbstractContextManager:
    return layer_class(model, NaiveMergeLinear)


@contextlib.contextmanager
def layer_class(model: CoRAModel, cls: type[CollabLinear]) -> Iterator[None]:
    """Swap the class of every collaborative layer for the duration of the block."""
    for layer in model.collab_layers.values():
        layer.__class__ = cls
    try:
        yield
    finally:
        for layer in model.collab_layers.values():
            layer.__class__ = CollabLinear


def load(quick: bool) -> LoadedLLM:
    """The bundled SmolLM2-135M (fp32, CPU); --quick: a 2-layer random LLaMA of the same width."""
    if quick:
        from cora_ray.llm.tiny import tiny_llm

        return tiny_llm(hidden_size=576, num_layers=2, num_heads=9, num_kv_heads=3, intermediate_size=1536)
    from cora_ray.llm.loading import load_llm

    return load_llm(LLMConfig(), device="cpu", dtype="float32")


def make_batch(llm: LoadedLLM, B: int, T: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """B left-padded prompts of T-20..T random tokens, with ids for the CF table and 0/1 labels."""
    g = torch.Generator().manual_seed(seed)
    vocab = llm.model.config.vocab_size
    lengths = torch.randint(max(1, T - 20), T + 1, (B,), generator=g)
    lengths[0] = T
    mask = (torch.arange(T)[None, :] >= (T - lengths)[:, None]).long()  # (B, T)
    ids = torch.randint(min(100, vocab - 1), vocab, (B, T), generator=g).masked_fill(mask == 0, 0)
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "user_id": torch.arange(B) % 64,
        "item_id": (torch.arange(B) * 7) % 64,
        "label": (torch.arange(B) % 2).float(),
    }


def build_cora(llm: LoadedLLM, seed: int = 0) -> CoRAModel:
    """CoRA with the paper's defaults (r 16, alpha 32, q/k/v/o, 8-block generator) and a random P."""
    torch.manual_seed(seed)
    model = CoRAModel(llm, RandomTableCF(), ModelConfig())
    with torch.no_grad():
        for layer in model.collab_layers.values():
            layer.P.normal_(std=0.02)  # a trained-looking P, so that the delta is not zero
    return model


def training_optimizer(model: RecModel) -> torch.optim.Optimizer:
    """The optimizer training builds (cora_ray/train/deepspeed_config.py build_optimizer: torch's fused CPU AdamW,
    training's parameter groups, betas and weight decay) over the model's trainable parameters. The frozen set is
    what the model froze itself; lr is the run's warm-up start (the update's cost does not depend on it)."""
    frozen = {id(p) for p in model.parameters() if not p.requires_grad}
    return build_optimizer(model, TrainConfig(), frozen)


def frozen_train_step(model: ZeroShotModel, batch: dict) -> None:
    """The floor: frozen LLM forward + backward through every layer's activations, no trainable part."""
    embeds = model.lm.get_input_embeddings()(batch["input_ids"]).detach().requires_grad_(True)
    h = last_hidden_state(model.lm, batch["attention_mask"], inputs_embeds=embeds)
    F.binary_cross_entropy_with_logits(model.score_hidden(h), batch["label"]).backward()


def cora_train_step(model: RecModel, opt: torch.optim.Optimizer, batch: dict) -> None:
    opt.zero_grad(set_to_none=True)
    model.loss(batch).backward()
    opt.step()


def cora_train_step_without_dropout(model: CoRAModel, opt: torch.optim.Optimizer, batch: dict) -> None:
    """The same step with the collaborative layers' dropout switched off (its share of the step)."""
    for layer in model.collab_layers.values():
        layer.dropout.eval()
    cora_train_step(model, opt, batch)
    for layer in model.collab_layers.values():
        layer.dropout.train()


def full_vocab_score(model: ZeroShotModel, batch: dict) -> torch.Tensor:
    """What docs/architecture.md §5.2 forbids: the LM head over every position and the whole vocabulary."""
    mask = batch["attention_mask"]
    logits = model.lm(
        input_ids=batch["input_ids"],
        attention_mask=mask,
        position_ids=position_ids_from_mask(mask),
        use_cache=False,
    ).logits  # (B, T, vocab)
    score = logits[:, -1, model.answer_token_id]
    return score if model.negative_token_id is None else score - logits[:, -1, model.negative_token_id]


def build_peft(llm: LoadedLLM, B: int):
    """peft LoRA with B adapters (r 16, alpha 32 on q/k/v/o), random B factors; one adapter per row."""
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(
        r=16, lora_alpha=32, lora_dropout=0.0, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]
    )
    torch.manual_seed(1)
    peft_model = get_peft_model(llm.model, cfg, adapter_name="row0")
    for b in range(1, B):
        peft_model.add_adapter(f"row{b}", cfg)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.02)
    return peft_model.eval()


def peft_score(peft_model, llm: LoadedLLM, batch: dict) -> torch.Tensor:
    mask = batch["attention_mask"]
    out = peft_model(
        input_ids=batch["input_ids"],
        attention_mask=mask,
        position_ids=position_ids_from_mask(mask),
        adapter_names=[f"row{b}" for b in range(mask.shape[0])],
        logits_to_keep=1,  # (B, 1, vocab): as close to a one-row head as peft's forward allows
        use_cache=False,
    )
    score = out.logits[:, -1, llm.answer_token_id]
    return score if llm.negative_token_id is None else score - out.logits[:, -1, llm.negative_token_id]


# ---------------------------------------------------------------------------------------------------------
# peak memory: one case per fresh process
# ---------------------------------------------------------------------------------------------------------


def memory_case(case: str, args: argparse.Namespace) -> int:
    llm = load(args.quick)
    batch = make_batch(llm, args.batch, args.tokens)
    if case == "train_frozen":
        model = ZeroShotModel(llm).train()
        return peak_memory_bytes(lambda: frozen_train_step(model, batch))
    if case in ("train_cora", "train_naive"):
        cora = build_cora(llm).train()
        if case == "train_cora":
            return peak_memory_bytes(lambda: cora.loss(batch).backward())
        with naive_merge(cora):
            return peak_memory_bytes(lambda: cora.loss(batch).backward())
    model = ZeroShotModel(llm).eval()
    with torch.inference_mode():
        if case == "infer_yes_row":
            return peak_memory_bytes(lambda: model(batch))
        if case == "infer_full_vocab":
            return peak_memory_bytes(lambda: full_vocab_score(model, batch))
    raise ValueError(f"unknown memory case {case!r}; expected one of {MEMORY_CASES}")


def measure_memory(case: str, args: argparse.Namespace) -> int:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--memory-case", case, *child_args(args)]
    out = subprocess.run(cmd, env=memory_child_env(args.threads), capture_output=True, text=True, check=True)
    return int(json.loads(out.stdout.strip().splitlines()[-1])["peak_bytes"])


def child_args(args: argparse.Namespace) -> list[str]:
    extra = ["--batch", str(args.batch), "--tokens", str(args.tokens), "--threads", str(args.threads)]
    return [*extra, "--quick"] if args.quick else extra


# ---------------------------------------------------------------------------------------------------------
# --train-only: where the CoRA training step's time over the frozen floor goes
# ---------------------------------------------------------------------------------------------------------


def profile_table(fn, top: int = 15) -> list[dict]:
    """torch.profiler over one call of `fn`: the `top` ops by self CPU time, with their share of the total."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    events.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
    return [
        {
            "op": e.key,
            "calls": e.count,
            "self_cpu_s": e.self_cpu_time_total / 1e6,
            "share": e.self_cpu_time_total / total,
        }
        for e in events[:top]
    ] + [{"op": "(all ops)", "calls": sum(e.count for e in events), "self_cpu_s": total / 1e6, "share": 1.0}]


def _sdpa_cpu_flops(query_shape, key_shape, value_shape, *args, out_val=None, **kwargs) -> int:
    """torch's SDPA FLOP formula for the CPU flash kernel, which FlopCounterMode does not map (grouped KV heads
    included: the kernel broadcasts them)."""
    return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)


def _sdpa_cpu_backward_flops(
    grad_out_shape, query_shape, key_shape, value_shape, *args, out_val=None, **kwargs
) -> int:
    return flop_counter.sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


def count_flops(fn) -> dict[str, float]:
    """FLOPs of one call of `fn` by op (torch.utils.flop_counter: matmuls and attention, forward and backward;
    elementwise work, dropout's random draws and the optimizer's update count 0), plus "total"."""
    aten = torch.ops.aten
    mode = flop_counter.FlopCounterMode(
        display=False,
        custom_mapping={
            aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu_flops,
            aten._scaled_dot_product_flash_attention_for_cpu_backward: _sdpa_cpu_backward_flops,
        },
    )
    with mode:
        fn()
    by_op = {str(op): float(n) for op, n in mode.get_flop_counts().get("Global", {}).items()}
    return {**by_op, "total": float(mode.get_total_flops())}


def ratio_stats(
    wall: dict[str, list[float]], base: str, cpu: dict[str, list[float]] | None = None
) -> tuple[dict[str, dict[str, float]], list[str]]:
    """Median / min wall seconds of each variant and their ratios to variant `base` (the CPU-time ratio too when
    `cpu` is given): the JSON fields and one markdown table row per variant, in `wall`'s order."""
    stats = {
        "median_wall_s": {k: median(v) for k, v in wall.items()},
        "min_wall_s": {k: min(v) for k, v in wall.items()},
        "median_ratio": {k: median(v) / median(wall[base]) for k, v in wall.items()},
        "min_ratio": {k: min(v) / min(wall[base]) for k, v in wall.items()},
        # each round runs every variant once, in turn: a round's ratio compares runs minutes apart at most
        "round_ratios": {k: [a / b for a, b in zip(v, wall[base], strict=True)] for k, v in wall.items()},
    }
    if cpu is not None:
        stats["cpu_time_median_ratio"] = {k: median(v) / median(cpu[base]) for k, v in cpu.items()}
    rows = []
    for k in wall:
        cells = [stats[f][k] for f in ("median_wall_s", "min_wall_s", "median_ratio", "min_ratio")]
        if cpu is not None:
            cells.append(stats["cpu_time_median_ratio"][k])
        rows.append(f"| {k} | " + " | ".join(f"{x:.3f}" for x in cells) + " |")
    return stats, rows


def train_step_bench(args: argparse.Namespace) -> int:
    """The training-step ratios at one prompt length, interleaved in one run, plus the component shares."""
    t_start = time.perf_counter()
    frozen = ZeroShotModel(load(args.quick)).train()
    cora = build_cora(load(args.quick)).train()
    batch = make_batch(frozen.loaded_llm, args.batch, args.tokens)
    opt = training_optimizer(cora)
    # the same update (same groups, lr, betas, weight decay) with torch's default foreach AdamW (a chain of ops)
    opt_foreach = torch.optim.AdamW(
        [{"params": g["params"], "weight_decay": g["weight_decay"]} for g in opt.param_groups],
        lr=opt.defaults["lr"],
        betas=opt.defaults["betas"],
    )

    def under(cls: type[CollabLinear]):
        def run() -> None:
            with layer_class(cora, cls):
                cora_train_step(cora, opt, batch)

        return run

    def generator_fwd_bwd() -> None:
        G = cora.compute_G(batch["user_id"], batch["item_id"])
        (G * grad_G).sum().backward()

    grad_G = torch.randn(args.batch, cora.d_model, cora.cfg.rank)
    variants = {
        "frozen_fwd_bwd": lambda: frozen_train_step(frozen, batch),
        "cora_step": lambda: cora_train_step(cora, opt, batch),
        "cora_step_no_dropout": lambda: cora_train_step_without_dropout(cora, opt, batch),
        "naive_step": under(NaiveMergeLinear),
        "cora_step_per_layer_down": under(PerLayerDownLinear),
        "cora_step_foreach_adamw": lambda: cora_train_step(cora, opt_foreach, batch),
        "generator_fwd_bwd": generator_fwd_bwd,
        "optimizer_step": opt.step,
        "optimizer_step_foreach_adamw": opt_foreach.step,
    }
    loads = [round(load_average(), 2)]
    wall, cpu = interleaved_wall_and_cpu_times(variants, reps=args.reps)
    loads.append(round(load_average(), 2))
    opt.zero_grad(set_to_none=True)
    opt_foreach.zero_grad(set_to_none=True)
    print("train wall:", {k: round(median(v), 3) for k, v in wall.items()}, flush=True)
    profiles = {
        "cora_step": profile_table(lambda: cora_train_step(cora, opt, batch)),
        "frozen_fwd_bwd": profile_table(lambda: frozen_train_step(frozen, batch)),
    }
    loads.append(round(load_average(), 2))
    counted = ("frozen_fwd_bwd", "cora_step", "cora_step_no_dropout", "generator_fwd_bwd")
    flops = {name: count_flops(variants[name]) for name in counted}
    opt.zero_grad(set_to_none=True)
    stats, rows = ratio_stats(wall, "frozen_fwd_bwd", cpu)
    ratios = stats["median_ratio"]
    flop_ratio = {k: flops[k]["total"] / flops["frozen_fwd_bwd"]["total"] for k in counted}
    gflop_per_s = {k: flops[k]["total"] / median(wall[k]) / 1e9 for k in counted}
    flop_rows = [
        f"| {k} | {flops[k]['total'] / 1e9:.2f} | {flop_ratio[k]:.3f} | {ratios[k]:.3f} | {gflop_per_s[k]:.0f} |"
        for k in counted
    ]
    # the work the CoRA step adds to the frozen one, and how fast it runs: (extra FLOPs) / (extra seconds)
    extra_s = median(wall["cora_step"]) - median(wall["frozen_fwd_bwd"])
    extra_gflop = (flops["cora_step"]["total"] - flops["frozen_fwd_bwd"]["total"]) / 1e9
    queries = cora.cfg.generator.num_queries
    config = {
        "llm": frozen.loaded_llm.identity,
        "dtype": "float32",
        "batch": args.batch,
        "tokens": args.tokens,
        "torch_threads": args.threads,
        "reps": args.reps,
        "statistic": "median (and min) of round-robin reps after 1 warm-up; ratios to frozen_fwd_bwd",
        "cora": {
            "rank": 16,
            "alpha": 32,
            "targets": ["q_proj", "k_proj", "v_proj", "o_proj"],
            "dropout": 0.05,
        },
        "load_average_1m_before_after_timing_after_profile": loads,
        **stats,
        "flops": flops,
        "flop_ratio_to_frozen": flop_ratio,
        "achieved_gflop_per_s": gflop_per_s,
        "profile_top_ops": profiles,
    }
    extra = ratios["cora_step"] - 1.0

    def round_spread(name: str) -> str:
        r = stats["round_ratios"][name]
        return f"median {median(r):.3f}, range {min(r):.3f}–{max(r):.3f}"

    def prof_rows(name: str) -> list[str]:
        return [
            f"| {e['op']} | {e['calls']} | {e['self_cpu_s']:.3f} | {100 * e['share']:.1f}% |"
            for e in profiles[name]
        ]

    notes = "\n".join(
        [
            "| variant | median s | min s | median / frozen | min / min frozen | CPU-time / frozen |",
            "|---|---|---|---|---|---|",
            *rows,
            "",
            "Ratio to the frozen step within each round (every variant runs once per round, in turn), "
            f"{args.reps} rounds: {round_spread('cora_step')}; without the layers' dropout "
            f"{round_spread('cora_step_no_dropout')}.",
            "",
            f"The CoRA step's time over the frozen floor: {100 * extra:.1f}% of it (median); of that, the "
            f"generator's forward+backward {100 * ratios['generator_fwd_bwd']:.1f}% and the AdamW step "
            f"{100 * ratios['optimizer_step']:.1f}% of the frozen step, measured alone (the fused CPU AdamW "
            f"training uses; torch's default foreach AdamW: {100 * ratios['optimizer_step_foreach_adamw']:.1f}%); "
            f"the collaborative layers' dropout {100 * (ratios['cora_step'] - ratios['cora_step_no_dropout']):.1f}% "
            "(the step with and without it); the rest is the 120 collaborative layers' rank-r paths.",
            "",
            "Work against time (torch.utils.flop_counter over one call of each: matmuls and attention, forward and "
            "backward; elementwise ops, dropout's draws and the AdamW update count 0 FLOPs):",
            "",
            "| variant | GFLOP | FLOP / frozen | time / frozen | GFLOP/s |",
            "|---|---|---|---|---|",
            *flop_rows,
            "",
            f"At the frozen step's rate the CoRA step would take {flop_ratio['cora_step']:.3f}x the frozen one (its "
            f"FLOPs); it takes {ratios['cora_step']:.3f}x. The {extra_gflop:.1f} GFLOP it adds run at "
            f"{extra_gflop / extra_s:.0f} GFLOP/s against the frozen step's {gflop_per_s['frozen_fwd_bwd']:.0f}: "
            f"small matrices — the generator's {args.batch * queries}-row matmuls ({args.batch} rows x {queries} "
            f"queries) at {gflop_per_s['generator_fwd_bwd']:.0f} GFLOP/s, the rank-{cora.cfg.rank} products, the "
            "optimizer's and dropout's memory passes that do no FLOPs.",
            "",
            f"Load average (1 min) before / after timing / after profiling: {loads} on "
            f"{os.cpu_count()} cores — a shared machine; the min ratio is the contention-robust cross-check.",
            "",
            "torch.profiler, one CoRA step (self CPU time, top ops):",
            "",
            "| op | calls | self CPU s | share |",
            "|---|---|---|---|",
            *prof_rows("cora_step"),
            "",
            "torch.profiler, one frozen forward+backward:",
            "",
            "| op | calls | self CPU s | share |",
            "|---|---|---|---|",
            *prof_rows("frozen_fwd_bwd"),
        ]
    )
    write_result(
        f"model_train_step_t{args.tokens}",
        value=median(wall["cora_step"]),
        baseline=median(wall["frozen_fwd_bwd"]),
        unit="s",
        config=config,
        samples=wall,
        goal=1.05,
        title=f"CoRA training step / frozen-LLM forward+backward, batch {args.batch} x {args.tokens} tokens",
        value_label="CoRA step: generator + LLM with collaborative layers (fused CPU path), fwd + bwd + AdamW",
        baseline_label="frozen LLM fwd + bwd through activations (to the input embeddings), Yes-row head",
        notes=notes,
    )
    print(notes)
    print(f"total {time.perf_counter() - t_start:.0f} s")
    return 0


# ---------------------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------------------


def score_bench(args: argparse.Namespace) -> int:
    """The scoring forward (inference mode) against the frozen LLM, with G given and generated, and with q/k/v
    each computing their own x·G (the path before `DownCache`), interleaved in one run."""
    frozen = ZeroShotModel(load(args.quick)).eval()
    cora = build_cora(load(args.quick)).eval()
    batch = make_batch(frozen.loaded_llm, args.batch, args.tokens)
    with torch.inference_mode():
        G = cora.compute_G(batch["user_id"], batch["item_id"])
        shared = cora(batch, G=G)
        with layer_class(cora, PerLayerDownLinear):
            per_layer = cora(batch, G=G)
    max_diff = float((shared - per_layer).abs().max())

    def per_layer_down() -> None:
        with layer_class(cora, PerLayerDownLinear):
            cora(batch, G=G)

    variants = {
        "frozen": lambda: frozen(batch),
        "cora_given_G": lambda: cora(batch, G=G),
        "cora_given_G_per_layer_down": per_layer_down,
        "cora": lambda: cora(batch),
    }
    loads = [round(load_average(), 2)]
    with torch.inference_mode():
        wall, cpu = interleaved_wall_and_cpu_times(variants, reps=args.reps)
    loads.append(round(load_average(), 2))
    stats, rows = ratio_stats(wall, "frozen")
    print("score wall:", {k: round(median(v), 3) for k, v in wall.items()}, flush=True)
    notes = "\n".join(
        [
            "| variant | median s | min s | median / frozen | min / min frozen |",
            "|---|---|---|---|---|",
            *rows,
            "",
            "cora_given_G: q, k and v share one bmm(x, G) per layer (cora_ray/model/down_projection.py); "
            "cora_given_G_per_layer_down: each of the 120 layers computes its own. Scores of the two: max |diff| "
            f"{max_diff:.2e}. Load average (1 min) before / after: {loads} on {os.cpu_count()} cores.",
        ]
    )
    write_result(
        f"model_score_t{args.tokens}",
        value=median(wall["cora_given_G"]),
        baseline=median(wall["cora_given_G_per_layer_down"]),
        unit="s",
        config={
            "llm": frozen.loaded_llm.identity,
            "dtype": "float32",
            "batch": args.batch,
            "tokens": args.tokens,
            "torch_threads": args.threads,
            "reps": args.reps,
            "statistic": "median (and min) of round-robin reps after 1 warm-up; ratios to frozen",
            **stats,
            "max_abs_diff_shared_vs_per_layer": max_diff,
            "load_average_1m_before_after": loads,
        },
        title=f"CoRA scoring forward, shared x·G / per-layer x·G (G given), batch {args.batch} x {args.tokens}",
        value_label="CoRA forward, q/k/v share bmm(x, G)",
        baseline_label="CoRA forward, every layer its own bmm(x, G)",
        notes=notes,
    )
    return 0


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--tokens", type=int, default=150)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="smoke run on a 2-layer model (numbers meaningless)")
    p.add_argument(
        "--train-only",
        action="store_true",
        help="only the training-step ratios and profile (model_train_step_t<T>)",
    )
    p.add_argument(
        "--score-only",
        action="store_true",
        help="only the scoring-forward ratios, shared vs per-layer x·G (model_score_t<T>)",
    )
    p.add_argument("--memory-case", choices=MEMORY_CASES, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.quick:  # a smoke run's numbers are meaningless: they never replace the committed results
        common.RESULTS = Path(tempfile.mkdtemp(prefix="cora_bench_quick_"))
        print(f"[bench] --quick: results go to {common.RESULTS}", flush=True)

    if args.memory_case:
        print(json.dumps({"case": args.memory_case, "peak_bytes": memory_case(args.memory_case, args)}))
        return 0

    if args.train_only:
        return train_step_bench(args)
    if args.score_only:
        return score_bench(args)

    t_start = time.perf_counter()
    # three copies of the LLM: CoRA and peft modify theirs in place; the frozen one stays untouched
    frozen = ZeroShotModel(load(args.quick))
    cora = build_cora(load(args.quick))
    llm_peft = load(args.quick)
    peft_model = build_peft(llm_peft, args.batch)
    batch = make_batch(frozen.loaded_llm, args.batch, args.tokens)
    llm_name = frozen.loaded_llm.identity
    config = {
        "llm": llm_name,
        "dtype": "float32",
        "device": "cpu",
        "batch": args.batch,
        "tokens": args.tokens,
        "real_tokens_per_row": "tokens-20..tokens, left-padded",
        "torch_threads": args.threads,
        "reps": args.reps,
        "statistic": "median of round-robin reps after 1 warm-up",
        "cora": {
            "rank": 16,
            "alpha": 32,
            "targets": ["q_proj", "k_proj", "v_proj", "o_proj"],
            "dropout": 0.05,
        },
        "generator": {"k": 4, "N": 8, "d": 512, "heads": 8, "ffn": 3072, "cf_dim": CF_DIM},
        "generator_params": sum(p.numel() for p in cora.generator.parameters()),
        "P_params": sum(layer.P.numel() for layer in cora.collab_layers.values()),
    }
    print(
        f"setup {time.perf_counter() - t_start:.0f} s: {llm_name}, batch {args.batch} x {args.tokens}",
        flush=True,
    )
    records = []

    # --- sanity: the paths agree before they are timed -----------------------------------------------
    with torch.inference_mode():
        G = cora.eval().compute_G(batch["user_id"], batch["item_id"])
        s_cora = cora(batch, G=G)
        with naive_merge(cora):
            s_naive = cora(batch, G=G)
        s_frozen, s_full = frozen.eval()(batch), full_vocab_score(frozen, batch)
    config["max_abs_diff_naive_vs_cora"] = float((s_naive - s_cora).abs().max())
    config["max_abs_diff_full_vocab_vs_yes_row"] = float((s_full - s_frozen).abs().max())
    print(
        f"checks: {config['max_abs_diff_naive_vs_cora']=:.2e} {config['max_abs_diff_full_vocab_vs_yes_row']=:.2e}"
    )

    def timing_result(name: str, a: str, b: str, wall: dict, cpu: dict, **kw) -> dict:
        """value = median wall time of `a`, baseline = of `b`; the CPU-time view goes into the config."""
        extra = kw.pop("config", {})
        cpu_view = {"cpu_time_median_s": {a: median(cpu[a]), b: median(cpu[b])}}
        cpu_view["cpu_time_ratio"] = median(cpu[a]) / median(cpu[b])
        # contention by other processes only ever adds time: the ratio of minima is the robust cross-check
        cpu_view["min_wall_ratio"] = min(wall[a]) / min(wall[b])
        cpu_view["load_average_1m_during"] = loads
        return write_result(
            name,
            value=median(wall[a]),
            baseline=median(wall[b]),
            unit="s",
            config={**config, **extra, **cpu_view},
            samples={a: wall[a], b: wall[b]},
            **kw,
        )

    # --- training: CoRA step vs the frozen floor vs naive merge -----------------------------------------
    cora.train()
    frozen.train()
    opt = training_optimizer(cora)

    def naive_train_step() -> None:
        with naive_merge(cora):
            cora_train_step(cora, opt, batch)

    loads = [round(load_average(), 2)]
    wall, cpu = interleaved_wall_and_cpu_times(
        {
            "frozen_fwd_bwd": lambda: frozen_train_step(frozen, batch),
            "cora_step": lambda: cora_train_step(cora, opt, batch),
            "cora_fwd_bwd": lambda: cora.loss(batch).backward(),
            "cora_step_no_dropout": lambda: cora_train_step_without_dropout(cora, opt, batch),
            "naive_step": naive_train_step,
        },
        reps=args.reps,
    )
    loads.append(round(load_average(), 2))
    print("train wall:", {k: round(median(v), 3) for k, v in wall.items()}, flush=True)
    print("train cpu:", {k: round(median(v), 3) for k, v in cpu.items()}, flush=True)
    opt.zero_grad(set_to_none=True)
    fwd_bwd = median(wall["cora_fwd_bwd"])
    records.append(
        timing_result(
            "cora_train_step_vs_frozen",
            "cora_step",
            "frozen_fwd_bwd",
            wall,
            cpu,
            goal=1.05,  # issue 16 item 7
            config={
                "cora_fwd_bwd_s": fwd_bwd,
                "cora_fwd_bwd_samples": wall["cora_fwd_bwd"],
                "cora_step_no_dropout_s": median(wall["cora_step_no_dropout"]),
                "cora_step_no_dropout_samples": wall["cora_step_no_dropout"],
            },
            title="CoRA training step / frozen-LLM forward+backward",
            value_label="CoRA step: generator + LLM with collaborative layers, fwd + bwd + AdamW",
            baseline_label="frozen LLM fwd + bwd through activations (to the input embeddings), Yes-row head",
            notes=(
                f"CoRA forward+backward alone (no optimizer step): {fwd_bwd:.3f} s, ratio "
                f"{fwd_bwd / median(wall['frozen_fwd_bwd']):.3f}; the step adds the AdamW update (torch's fused CPU "
                f"kernel, as training) of {config['generator_params'] + config['P_params']:,} trainable parameters, 98% of "
                "them the paper-size generator, a small part of it. The same step without the collaborative "
                f"layers' dropout (p = 0.05 on x, docs/method.md §2.3 default): {median(wall['cora_step_no_dropout']):.3f} s, "
                f"ratio {median(wall['cora_step_no_dropout']) / median(wall['frozen_fwd_bwd']):.3f}. "
                "Where the rest goes on a 2-core CPU: the 120 per-row rank-r paths (a bmm and a matmul each way, "
                "plus one more gradient summed into every projection's input), the dropout copies of x, and the "
                "forward+backward of the 47M-parameter generator, each a few percent. The rank-r path costs "
                "about r / d_model of a projection in FLOPs: 16 / 576 here, 16 / 4096 on the paper's 7B model."
            ),
        )
    )
    records.append(
        timing_result(
            "naive_merge_vs_cora_train_time",
            "naive_step",
            "cora_step",
            wall,
            cpu,
            title="Naive per-row merge / CoRA bmm path: training step time",
            value_label="naive: W + (alpha/r)·P·G_bᵀ materialised per row and module, per-row matmuls",
            baseline_label="CoRA: one dense W x + bmm(x, G) + P",
        )
    )

    # --- inference ----------------------------------------------------------------------------------------
    cora.eval()
    frozen.eval()

    def under_inference(fn):
        def run():
            with torch.inference_mode():
                fn()

        return run

    def naive_infer() -> None:
        with naive_merge(cora):
            cora(batch, G=G)

    def per_layer_down_infer() -> None:
        with layer_class(cora, PerLayerDownLinear):
            cora(batch, G=G)

    loads = [round(load_average(), 2)]
    wall, cpu = interleaved_wall_and_cpu_times(
        {
            "frozen": under_inference(lambda: frozen(batch)),
            "cora": under_inference(lambda: cora(batch)),
            "cora_given_G": under_inference(lambda: cora(batch, G=G)),
            "naive_given_G": under_inference(naive_infer),
            "cora_given_G_per_layer_down": under_inference(per_layer_down_infer),
            "peft_mixed_batch": under_inference(lambda: peft_score(peft_model, llm_peft, batch)),
            "full_vocab": under_inference(lambda: full_vocab_score(frozen, batch)),
        },
        reps=args.reps,
    )
    loads.append(round(load_average(), 2))
    print("inference wall:", {k: round(median(v), 3) for k, v in wall.items()}, flush=True)
    print("inference cpu:", {k: round(median(v), 3) for k, v in cpu.items()}, flush=True)
    given = median(wall["cora_given_G"])
    records.append(
        timing_result(
            "cora_score_vs_frozen",
            "cora",
            "frozen",
            wall,
            cpu,
            goal=1.10,
            config={"cora_given_G_s": given, "cora_given_G_samples": wall["cora_given_G"]},
            title="CoRA scoring forward / frozen-LLM forward",
            value_label="CoRA forward: CF lookup + generator + LLM with collaborative layers, Yes-row head",
            baseline_label="frozen LLM forward, Yes-row head",
            notes=(
                f"With G given (the serving cache's hit path): {given:.3f} s, ratio "
                f"{given / median(wall['frozen']):.3f}; the same with every layer computing its own x·G "
                f"(before q/k/v shared it): {median(wall['cora_given_G_per_layer_down']):.3f} s, ratio "
                f"{median(wall['cora_given_G_per_layer_down']) / median(wall['frozen']):.3f}."
            ),
        )
    )
    records.append(
        timing_result(
            "naive_merge_vs_cora_infer_time",
            "naive_given_G",
            "cora_given_G",
            wall,
            cpu,
            title="Naive per-row merge / CoRA bmm path: inference time (G given)",
            value_label="naive per-row merged weights",
            baseline_label="CoRA bmm path",
        )
    )
    records.append(
        timing_result(
            "peft_mixed_batch_vs_cora_infer_time",
            "peft_mixed_batch",
            "cora_given_G",
            wall,
            cpu,
            config={"peft": "LoraConfig(r=16, lora_alpha=32, q/k/v/o), 8 adapters, adapter_names per row"},
            title="peft mixed-batch LoRA (one adapter per row) / CoRA bmm path: inference time",
            value_label="peft forward(adapter_names=[row0..row7], logits_to_keep=1)",
            baseline_label="CoRA forward with G given",
            notes="peft loops over the distinct adapters of the batch in every layer (a gather, two small "
            "matmuls and a scatter per adapter); CoRA does one bmm into rank r and one matmul back out.",
        )
    )
    records.append(
        timing_result(
            "full_vocab_vs_yes_row_time",
            "full_vocab",
            "frozen",
            wall,
            cpu,
            title="Full-vocab logits / Yes-row head: forward time",
            value_label="LM head over [B, T, vocab], then logits[:, -1, yes]",
            baseline_label="last hidden state · W_head[yes]",
        )
    )

    # --- peak memory, each case in its own process -------------------------------------------------------
    mem = {case: measure_memory(case, args) for case in MEMORY_CASES}
    print("peak MiB:", {k: round(v / 2**20, 1) for k, v in mem.items()}, flush=True)
    records.append(
        write_result(
            "naive_merge_vs_cora_train_memory",
            value=mem["train_naive"],
            baseline=mem["train_cora"],
            unit="bytes",
            config={**config, "frozen_fwd_bwd_peak_bytes": mem["train_frozen"]},
            title="Naive per-row merge / CoRA bmm path: peak memory of a training forward+backward",
            value_label="naive per-row merged weights",
            baseline_label="CoRA bmm path",
            notes=(
                "Peak resident memory added by one forward+backward (no optimizer state), fresh process each. "
                f"Frozen-LLM forward+backward for reference: {mem['train_frozen'] / 2**20:,.1f} MiB."
            ),
        )
    )
    records.append(
        write_result(
            "full_vocab_vs_yes_row_memory",
            value=mem["infer_full_vocab"],
            baseline=mem["infer_yes_row"],
            unit="bytes",
            config=config,
            title="Full-vocab logits / Yes-row head: peak memory of a scoring forward",
            value_label="LM head over [B, T, vocab]",
            baseline_label="Yes-row head",
            notes="Peak resident memory added by one inference-mode forward, fresh process each.",
        )
    )

    overview = [
        "# Model benchmarks (bench/bench_model.py)",
        "",
        f"{llm_name}, fp32 CPU, batch {args.batch} x {args.tokens} tokens, {args.threads} torch threads, "
        f"median of {args.reps}. Total bench time {time.perf_counter() - t_start:.0f} s.",
        "",
        summary_table(records),
    ]
    (common.RESULTS / "model.md").write_text("\n".join(overview))
    print("\n".join(overview))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
