"""The committed GPU records (bench/gpu_ml1m.py on a lent H200) hold together: every metric the JSON reports is
recomputed from the committed per-row scores, the parity limits hold, and bench/results/gpu_ml1m.md is exactly what
bench/gpu_ml1m_report.py renders from the committed files (nothing edited by hand)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from cora_ray.eval.metrics import auc_uauc

REPO = Path(__file__).resolve().parents[1]
CURVE = json.loads((REPO / "bench/results/gpu_ml1m_curve.json").read_text())
S42 = json.loads((REPO / "bench/results/gpu_ml1m_s42.json").read_text())


def _report():
    spec = importlib.util.spec_from_file_location("gpu_ml1m_report", REPO / "bench" / "gpu_ml1m_report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _recomputed(scores_file: str, column: str) -> dict:
    t = pq.read_table(REPO / "results/gpu_ml1m" / scores_file)
    return auc_uauc(t["user_id"].to_numpy(), t["label"].to_numpy(), t[column].to_numpy())


@pytest.mark.parametrize(
    ("record", "scores_file", "column", "metrics"),
    [
        (CURVE, "scores_curve.parquet", f"cora_mf_bf16_step{p['step']}", p["test"]["metrics"])
        for p in CURVE["phases"]["curve"]["points"]
        if "test" in p
    ]
    + [
        (
            S42,
            "scores_s42.parquet",
            "cora_mf_bf16_step250",
            S42["phases"]["curve"]["points"][-1]["test"]["metrics"],
        ),
        (S42, "scores_s42.parquet", "cora_mf_fp32_step250", S42["phases"]["cora_fp32"]["metrics"]),
        (S42, "scores_s42.parquet", "zero_shot_fp32", S42["phases"]["zero_shot_fp32"]["metrics"]),
        (S42, "scores_s42.parquet", "zero_shot_bf16", S42["phases"]["zero_shot_bf16"]["metrics"]),
    ],
)
def test_reported_metrics_recompute_from_the_rows(record, scores_file, column, metrics):
    got = _recomputed(scores_file, column)
    assert got["rows"] == 7331 == metrics["test"]["rows"]
    assert got["auc"] == pytest.approx(metrics["test"]["auc"], abs=1e-9)
    assert got["uauc"] == pytest.approx(metrics["test"]["uauc"], abs=1e-9)


def test_curve_is_complete_and_scored_at_the_issue_steps():
    c = CURVE["phases"]["curve"]
    assert c["steps_done"] == c["max_steps"] == 2000
    assert [p["step"] for p in c["points"]] == list(range(250, 2001, 250))
    assert [p["step"] for p in c["points"] if "test" in p] == [250, 500, 1000, 2000]
    assert c["precision"] == "bf16" and CURVE["engine"] == "deepspeed"


def test_parity_limits():
    # the GPU's fp32 path reproduces the CPU's committed zero-shot rows
    v = S42["phases"]["zero_shot_fp32"]["vs_cpu_fp32"]
    assert abs(v["auc_diff"]) < 1e-4 and v["max_abs_score_diff"] < 1e-3
    # bf16 scoring of a trained CoRA moves the full-test AUC by at most 0.005 (issue 13, item 13b)
    assert abs(S42["phases"]["cora_fp32"]["vs_bf16"]["auc_diff"]) <= 0.005
    t = pq.read_table(REPO / "results/gpu_ml1m/scores_s42.parquet")
    ref = pq.read_table(REPO / "results/compare_ml1m_cpu/runs/zero-shot/scores/test.parquet")
    key = {
        (u, i): s
        for u, i, s in zip(*(ref[c].to_pylist() for c in ("user_id", "item_id", "score")), strict=True)
    }
    cpu = [key[(u, i)] for u, i in zip(t["user_id"].to_pylist(), t["item_id"].to_pylist(), strict=True)]
    assert cpu == pytest.approx(t["zero_shot_cpu_fp32"].to_pylist(), abs=0.0)


def test_markdown_is_rendered_from_the_committed_files():
    committed = (REPO / "bench/results/gpu_ml1m.md").read_text()
    assert committed == _report().render(REPO)
