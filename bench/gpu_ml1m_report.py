"""The report of the GPU runs of bench/gpu_ml1m.py: tables, paired bootstrap intervals against the CPU's committed
runs, and the learning-curve plot. Reads only committed files:

    bench/results/gpu_ml1m_curve.json   results/gpu_ml1m/scores_curve.parquet   the 2,000-step curve run
    bench/results/gpu_ml1m_s42.json     results/gpu_ml1m/scores_s42.parquet     the table's 250-step CoRA-MF, seed 42
    results/compare_ml1m_cpu/runs/cora-mf/seed4{2,3,4}/scores/test.parquet    the CPU table's CoRA-MF (fp32)
    results/learning_curve_ml1m_cpu/curve.json                                the CPU curve's first half

and writes bench/results/gpu_ml1m.md (and results/gpu_ml1m/curve.png unless --no-plot):

    python bench/gpu_ml1m_report.py
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cora_ray.eval.bootstrap import align_scores, paired_bootstrap  # noqa: E402

CURVE_JSON = "bench/results/gpu_ml1m_curve.json"
S42_JSON = "bench/results/gpu_ml1m_s42.json"
CURVE_SCORES = "results/gpu_ml1m/scores_curve.parquet"
S42_SCORES = "results/gpu_ml1m/scores_s42.parquet"
CPU_CORA = "results/compare_ml1m_cpu/runs/cora-mf/seed{seed}/scores/test.parquet"
CPU_CURVE = "results/learning_curve_ml1m_cpu/curve.json"
OUT_MD = "bench/results/gpu_ml1m.md"
OUT_PNG = "results/gpu_ml1m/curve.png"
PAPER = (0.7361, 0.6884)  # CoRA-MF with Vicuna-7B, the paper's ML-1M table
RESAMPLES, SEED = 1000, 42


def _read(root: Path, rel: str) -> dict:
    return json.loads((root / rel).read_text())


def cpu_table(root: Path) -> dict:
    """The CPU table's CoRA-MF (fp32, 250 steps) per seed from its committed records, and the mean / std."""
    seeds = {}
    for seed in (42, 43, 44):
        m = _read(root, f"results/compare_ml1m_cpu/runs/cora-mf/seed{seed}/metrics.json")
        splits = _read(root, f"results/compare_ml1m_cpu/runs/cora-mf/seed{seed}/manifest.json")["splits"]
        tm = m["source"]["train_metrics"]
        seeds[seed] = {
            "valid_auc": tm["valid_auc"],
            "valid_uauc": tm["valid_uauc"],
            **{f"{k}_{x}": splits[k][x] for k in ("test", "test_warm", "test_cold") for x in ("auc", "uauc")},
        }
    keys = seeds[42].keys()
    mean = {k: float(np.mean([v[k] for v in seeds.values()])) for k in keys}
    std = {k: float(np.std([v[k] for v in seeds.values()], ddof=1)) for k in keys}
    return {"seeds": seeds, "mean": mean, "std": std}


def _scores(table, column: str) -> dict:
    return {
        "user_id": table["user_id"].to_numpy(),
        "item_id": table["item_id"].to_numpy(),
        "label": table["label"].to_numpy(),
        "score": table[column].to_numpy(),
    }


def differences(root: Path) -> list[dict]:
    """Paired bootstrap 95% intervals (1,000 resamples, seed 42) on the same 7,331 test rows."""
    curve = pq.read_table(root / CURVE_SCORES)
    s42 = pq.read_table(root / S42_SCORES)
    cpu = {seed: pq.read_table(root / CPU_CORA.format(seed=seed)) for seed in (42, 43, 44)}
    tables = {
        "GPU bf16, 250 steps (s42)": [_scores(s42, "cora_mf_bf16_step250")],
        "GPU fp32 scoring of the same state": [_scores(s42, "cora_mf_fp32_step250")],
        "CPU fp32, 250 steps (s42)": [_scores(cpu[42], "score")],
        "CPU fp32, 250 steps (s42, s43, s44)": [_scores(cpu[s], "score") for s in (42, 43, 44)],
        "GPU curve, step 250 of 2,000": [_scores(curve, "cora_mf_bf16_step250")],
        "GPU curve, step 2,000": [_scores(curve, "cora_mf_bf16_step2000")],
    }
    aligned = align_scores(tables)
    pairs = [
        ("GPU bf16, 250 steps (s42)", "GPU fp32 scoring of the same state"),
        ("GPU bf16, 250 steps (s42)", "CPU fp32, 250 steps (s42)"),
        ("GPU bf16, 250 steps (s42)", "CPU fp32, 250 steps (s42, s43, s44)"),
        ("GPU curve, step 2,000", "GPU bf16, 250 steps (s42)"),
        ("GPU curve, step 2,000", "GPU curve, step 250 of 2,000"),
    ]
    return [paired_bootstrap(aligned, a, b, resamples=RESAMPLES, seed=SEED) for a, b in pairs]


def _ci(d: dict | None) -> str:
    if d is None or d["ci"] is None:
        return "—"
    return f"{d['observed']:+.4f} [{d['ci'][0]:+.4f}, {d['ci'][1]:+.4f}]"


def render(root: Path) -> str:
    curve, s42 = _read(root, CURVE_JSON), _read(root, S42_JSON)
    c, t = curve["phases"]["curve"], s42["phases"]
    zs = t["zero_shot_fp32"]
    lines = [
        "# Real ML-1M on one H200: the learning curve, bf16 against fp32, and the GPU against the CPU",
        "",
        f"Device {curve['device']}, torch {curve['torch']}, DeepSpeed {curve.get('deepspeed', '—')} (engine "
        f"{curve['engine']}), nccl, one worker. Base LLM {curve['llm']['identity']} (weight hash "
        f"{curve['llm']['weight_hash'][:12]}), real MovieLens-1M, the full test split (7,331 rows). Produced by "
        "`bash bench/gpu_ml1m.sh` (two calls: `--stash`, then the run) with `--deadline-s 480` (the curve) and "
        "`--steps 250 --eval-every 250 --score-at 250 --deadline-s 215` (the table's run); this file by "
        "`python bench/gpu_ml1m_report.py`.",
        "",
        "## The training path on the GPU",
        "",
        f"- Config: `{curve['config']}`.",
        f"- Frozen LLM {c['precision']}, trainable parts fp32 ({c['trainable_parameters']:,} parameters), ZeRO "
        f"stage configured {c['zero_stage_configured']} → {c['zero_stage']} on one worker, micro-batch "
        f"{c['micro_batch']} × accumulation {c['grad_accum']} = {c['samples_per_step']} rows per step.",
        f"- Median step {c['median_step_s'] * 1000:.0f} ms = **{c['samples_per_s']:.1f} training rows/s** "
        f"(2,000-step run; {t['curve']['samples_per_s']:.1f} rows/s in the 250-step run); the CPU's "
        "2-worker run trains ~1.2–2.5 rows/s.",
        f"- Peak GPU memory **{curve['peak_gpu_memory_gib']:.2f} GiB** (training, validation and scoring).",
        f"- Scoring the test split: zero-shot fp32 {zs['rows_per_s']:.0f} rows/s (prefix-shared), CoRA-MF bf16 "
        + ", ".join(f"{p['test']['rows_per_s']:.0f}" for p in c["points"] if "test" in p)
        + " rows/s (batch 64).",
        f"- Whole run: {curve['elapsed_s']:.0f} s for 2,000 steps, 8 validations of 1,000 rows, 4 test scorings "
        "and two zero-shot scorings.",
        "",
        "## Parity",
        "",
        "| check | AUC | UAUC | max abs score diff | Pearson |",
        "|---|---|---|---|---|",
    ]
    v = zs["vs_cpu_fp32"]
    lines.append(
        f"| zero-shot: GPU fp32 (TF32 off) − CPU fp32 (committed rows) | {v['auc_diff']:+.1e} | "
        f"{v['uauc_diff']:+.1e} | {v['max_abs_score_diff']:.1e} | {v['pearson']:.9f} |"
    )
    v = t["cora_fp32"]["vs_bf16"]
    lines.append(
        f"| CoRA-MF (trained on the GPU, 250 steps): bf16 − fp32 scoring of the same state | {v['auc_diff']:+.4f} | "
        f"{v['uauc_diff']:+.4f} | {v['max_abs_score_diff']:.3f} | {v['pearson']:.4f} |"
    )
    v = t["zero_shot_bf16"]["vs_fp32"]
    lines.append(
        f"| zero-shot: bf16 − fp32 | {v['auc_diff']:+.4f} | {v['uauc_diff']:+.4f} | "
        f"{v['max_abs_score_diff']:.3f} | {v['pearson']:.4f} |"
    )
    lines += [
        "",
        "The fp32 GPU scores reproduce the CPU's committed zero-shot rows (the same prompts, tokenizer and weights on "
        "another machine). No CPU-trained CoRA checkpoint could travel (its trainable parts are 182 MB; a call carries "
        "64 MiB), so the bf16 check on a trained CoRA scores the GPU-trained state twice, in bf16 and in fp32.",
        "",
        "## The table's CoRA-MF run (250 steps, seed 42) on the GPU",
        "",
        "| run | valid AUC / UAUC (1,000 rows) | test AUC | test UAUC | test_warm AUC | test_cold AUC |",
        "|---|---|---|---|---|---|",
    ]
    p = t["curve"]["points"][-1]
    m = p["test"]["metrics"]
    lines.append(
        f"| GPU, bf16 LLM (this run) | {p['valid_auc']:.4f} / {p['valid_uauc']:.4f} | {m['test']['auc']:.4f} | "
        f"{m['test']['uauc']:.4f} | {m['test_warm']['auc']:.4f} | {m['test_cold']['auc']:.4f} |"
    )
    m32 = t["cora_fp32"]["metrics"]
    lines.append(
        f"| the same state scored in fp32 | — | {m32['test']['auc']:.4f} | {m32['test']['uauc']:.4f} | "
        f"{m32['test_warm']['auc']:.4f} | {m32['test_cold']['auc']:.4f} |"
    )
    cpu = cpu_table(root)
    a, mean = cpu["seeds"][42], cpu["mean"]
    lines.append(
        f"| CPU, fp32 (README table, seed 42 / mean of 42–44) | {a['valid_auc']:.4f} / {a['valid_uauc']:.4f} | "
        f"{a['test_auc']:.4f} / {mean['test_auc']:.4f} | {a['test_uauc']:.4f} / {mean['test_uauc']:.4f} | "
        f"{a['test_warm_auc']:.4f} / {mean['test_warm_auc']:.4f} | {a['test_cold_auc']:.4f} / {mean['test_cold_auc']:.4f} |"
    )
    lines += [
        "",
        "The GPU run draws its rows from a seeded permutation of the train split (not Ray Data's shuffle over two "
        "workers) and trains the frozen LLM in bf16, so it is another run of the same recipe, not a replay.",
        "",
        "## The learning curve (one run, 2,000 steps of 8 rows, cosine to step 2,000)",
        "",
        "| step | rows trained | epochs | lr | valid AUC | valid UAUC | test AUC | test UAUC | test_warm AUC | "
        "test_cold AUC |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p in c["points"]:
        row = f"| {p['step']} | {p['rows']:,} | {p['rows'] / 33891:.3f} | {p['lr']:.2e} | {p['valid_auc']:.4f} | {p['valid_uauc']:.4f} |"
        if "test" in p:
            m = p["test"]["metrics"]
            row += f" {m['test']['auc']:.4f} | {m['test']['uauc']:.4f} | {m['test_warm']['auc']:.4f} | {m['test_cold']['auc']:.4f} |"
        else:
            row += " | | | |"
        lines.append(row)
    lines += [
        "",
        "Test is scored at steps 250, 500, 1,000 and 2,000 only (reporting a curve, nothing chosen on it).",
        "",
        f"## Paired bootstrap, 95% ({RESAMPLES:,} resamples, seed {SEED}; rows for AUC, users for UAUC)",
        "",
        "| A − B | AUC | UAUC |",
        "|---|---|---|",
    ]
    for d in differences(root):
        lines.append(f"| {d['a']} − {d['b']} | {_ci(d['auc'])} | {_ci(d.get('uauc'))} |")
    lines += [
        "",
        "A method with several seeds counts as the mean of its seeds' AUCs on each resample. The CPU table's "
        f"seed-to-seed spread of CoRA-MF is {cpu['std']['test_auc']:.4f} AUC (sample std over 42–44).",
        "",
    ]
    return "\n".join(lines)


def plot(root: Path, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c = _read(root, CURVE_JSON)["phases"]["curve"]
    cpu = _read(root, CPU_CURVE)
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    steps = [p["step"] for p in c["points"]]
    ax.plot(
        steps,
        [p["valid_auc"] for p in c["points"]],
        "o-",
        color="tab:blue",
        alpha=0.5,
        label="GPU bf16: valid AUC (1,000 rows)",
    )
    tested = [p for p in c["points"] if "test" in p]
    ax.plot(
        [p["step"] for p in tested],
        [p["test"]["metrics"]["test"]["auc"] for p in tested],
        "s-",
        color="tab:blue",
        label="GPU bf16: test AUC",
    )
    ax.plot(
        [p["step"] for p in tested],
        [p["test"]["metrics"]["test"]["uauc"] for p in tested],
        "s--",
        color="tab:green",
        label="GPU bf16: test UAUC",
    )
    ax.plot(
        [p["step"] for p in cpu["test"]],
        [p["test_auc"] for p in cpu["test"]],
        "^:",
        color="tab:red",
        label="CPU fp32 (2 workers): test AUC",
    )
    ax.axhline(PAPER[0], color="grey", ls="--", lw=1, label=f"paper CoRA-MF (Vicuna-7B) AUC {PAPER[0]}")
    ax.axhline(
        0.7170, color="tab:orange", ls=":", lw=1, label="README table: CoRA-MF, 250 steps, 3 seeds (CPU)"
    )
    ax.set_xlabel("optimizer steps of 8 rows (cosine schedule to step 2,000)")
    ax.set_ylabel("AUC / UAUC")
    ax.set_title("CoRA-MF on ML-1M, SmolLM2-135M: what more training rows buy")
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    tmp.replace(path)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", default=str(REPO))
    p.add_argument("--no-plot", action="store_true")
    args = p.parse_args(argv)
    root = Path(args.root)
    md = root / OUT_MD
    tmp = md.with_suffix(".md.tmp")
    tmp.write_text(render(root))
    tmp.replace(md)
    if not args.no_plot:
        plot(root, root / OUT_PNG)
    print(md.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
