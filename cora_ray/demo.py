"""`make demo`: the whole pipeline on real MovieLens-1M on a CPU machine, as the user's own commands.

Steps (each one is the job a user would type, run as a subprocess and printed first; a step whose output
already exists — a directory with its manifest — is reused, so a second `make demo` only re-evaluates):

1. prepare_data   real ML-1M from the installed package          → artifacts/ml-1m   (cora_ray/bootstrap.py,
2. pretrain_cf    MF                                            → artifacts/cf/mf    as `python jobs/train.py`)
3. train          CoRA-MF with configs/demo.yaml (Ray Train + DeepSpeed, ~10 min on 2 cores)
                  → runs/<run>/...; the best checkpoint is published at artifacts/demo/checkpoint
                    (what serve.local.config serves)
4. evaluate       MF, the zero-shot LLM and CoRA-MF on the same seeded sample of the test split
5. a table of AUC / UAUC, beside the paper's values (docs/method.md §7), and the wall time of every step.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from cora_ray import storage
from cora_ray.bootstrap import build_missing_demo_inputs, run_step
from cora_ray.eval.report import paper_values

PAPER_NAMES = {"MF": "MF", "Zero-shot": "ICL", "CoRA-MF": "CoRA-MF"}


@dataclass
class DemoPlan:
    root: Path
    config: str = "configs/demo.yaml"
    data: str = "artifacts/ml-1m"
    cf: str = "artifacts/cf/mf"
    checkpoint: str = "artifacts/demo/checkpoint"
    eval_root: str = "artifacts/demo/eval"
    limit: int = 300
    seed: int = 42
    train_overrides: list[str] = field(default_factory=list)
    python: str = sys.executable


def _complete(root: Path, rel: str) -> bool:
    return (root / rel / storage.MANIFEST).is_file()


def _checkpoint_matches_cf(root: Path, plan: DemoPlan) -> bool:
    """Whether the published checkpoint was trained with the MF artifact now at `plan.cf` (else: retrain)."""
    ckpt = json.loads((root / plan.checkpoint / storage.MANIFEST).read_text())
    cf = json.loads((root / plan.cf / storage.MANIFEST).read_text())
    recorded = (ckpt.get("cf_artifact") or {}).get("hash")
    if recorded != cf.get("hash"):
        print(
            f"[demo] {plan.checkpoint} was trained with another MF artifact ({recorded} != {cf.get('hash')}): retraining"
        )
        return False
    return True


def _publish_checkpoint(src: str, dest: Path) -> None:
    """Copy the best checkpoint to the stable demo path, atomically (temp sibling + rename)."""
    with storage.atomic_dir(str(dest), overwrite=True) as tmp:
        for f in Path(src).iterdir():
            if f.is_file():
                shutil.copy2(f, tmp / f.name)


def run_demo(plan: DemoPlan) -> dict:
    root = plan.root
    py = plan.python
    timings: dict[str, float] = {}
    t_start = time.perf_counter()

    build_missing_demo_inputs(root, plan.data, plan.cf, python=py, timings=timings)

    if _complete(root, plan.checkpoint) and not plan.train_overrides and _checkpoint_matches_cf(root, plan):
        print(f"[demo] reusing the CoRA-MF checkpoint at {plan.checkpoint} (delete it to train again)")
    else:
        run_name = time.strftime("demo-%Y%m%d-%H%M%S")
        overrides = [f"train.run_name={run_name}", f"data.uri={plan.data}", f"model.cf_artifact={plan.cf}"]
        run_step(
            [py, "jobs/train.py", "--config", plan.config, *overrides, *plan.train_overrides],
            root,
            timings,
            "train",
        )
        summary_file = root / "runs" / run_name / "summary.json"
        if not summary_file.is_file():
            raise SystemExit(f"[demo] training finished but wrote no {summary_file}")
        summary = json.loads(summary_file.read_text())
        if not summary.get("best_checkpoint"):
            raise SystemExit(f"[demo] training reported no best checkpoint ({summary_file})")
        _publish_checkpoint(summary["best_checkpoint"], root / plan.checkpoint)
        print(f"[demo] best checkpoint {summary['best_checkpoint']} published at {plan.checkpoint}")

    methods = {
        "MF": ["--cf-artifact", plan.cf],
        "Zero-shot": ["--zero-shot", "--config", plan.config],
        "CoRA-MF": ["--checkpoint", plan.checkpoint],
    }
    results: dict[str, dict] = {}
    for name, args in methods.items():
        out = f"{plan.eval_root}/{name.lower()}"
        cmd = [
            py, "jobs/evaluate.py", *args, "--data", plan.data, "--splits", "test",
            "--limit", str(plan.limit), "--seed", str(plan.seed), "--out", out, "--overwrite", "--name", name,
        ]  # fmt: skip
        run_step(cmd, root, timings, f"evaluate {name}")
        results[name] = json.loads((root / out / "metrics.json").read_text())["splits"]["test"]

    total = time.perf_counter() - t_start
    print(format_table(results, plan, timings, total))
    return {"results": results, "timings": timings, "total_s": total}


def format_table(results: dict[str, dict], plan: DemoPlan, timings: dict[str, float], total: float) -> str:
    rows = next(iter(results.values()))["rows"] if results else 0
    lines = [
        "",
        "=" * 78,
        f" cora_ray demo: real MovieLens-1M, bundled SmolLM2-135M, CPU — {rows} seeded test rows (seed {plan.seed})",
        "-" * 78,
        f" {'method':<12}{'AUC':>9}{'UAUC':>9}{'users':>8}   {'paper AUC / UAUC (Vicuna-7B, full test)':<40}",
    ]
    for name, m in results.items():
        paper = paper_values(PAPER_NAMES[name], "ml-1m")
        p = f"{paper[0]:.4f} / {paper[1]:.4f}" if paper else "-"
        uauc = f"{m['uauc']:.4f}" if m.get("uauc") is not None else "-"
        lines.append(f" {name:<12}{m['auc']:>9.4f}{uauc:>9}{m.get('users_used', 0):>8}   {p}")
    lines.append("-" * 78)
    lines.append(
        " " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()) + f"; total {total / 60:.1f} min"
    )
    lines.append(f" checkpoint: {plan.checkpoint}  (serve it: serve run serve.local.config)")
    lines.append("=" * 78)
    return "\n".join(lines)
