"""jobs/pretrain_cf.py and the Ray Tune runner: the grid as trials, the best kept, bad input refused early."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cora_ray.cf import load_cf_artifact, read_cf_manifest
from cora_ray.errors import TrainingError

REPO = Path(__file__).resolve().parents[2]
JOB = str(REPO / "jobs" / "pretrain_cf.py")


def _job(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    env = {
        "PATH": "/usr/bin:/bin",
        "OMP_NUM_THREADS": "1",
        "RAY_AUTH_MODE": "disabled",
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    return subprocess.run(
        [sys.executable, JOB, *args], capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env
    )


def test_cli_unknown_backbone(tmp_path):
    r = _job("--data", str(tmp_path), "--backbone", "bpr", "--out", str(tmp_path / "out"))
    assert r.returncode == 2 and "invalid choice: 'bpr'" in r.stderr


def test_cli_dataset_without_manifest_fails_before_ray(tmp_path):
    (tmp_path / "data").mkdir()
    r = _job("--data", str(tmp_path / "data"), "--backbone", "mf", "--out", str(tmp_path / "out"))
    assert r.returncode == 2, r.stderr
    assert "incomplete dataset" in r.stderr and "manifest.json" in r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists()


def test_cli_bad_override_and_existing_output(tmp_path, syn_uri):
    r = _job("--data", syn_uri, "--backbone", "mf", "--out", str(tmp_path / "out"), "train.lrr=1")
    assert r.returncode == 2 and "unknown key 'train.lrr'" in r.stderr
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "manifest.json").write_text("{}")
    r = _job("--data", syn_uri, "--backbone", "mf", "--out", str(tmp_path / "out"))
    assert r.returncode == 2 and "--overwrite" in r.stderr


@pytest.mark.slow
@pytest.mark.ray
def test_grid_of_two_tiny_trials_keeps_the_best(ray_cluster, syn_uri, syn_data, fast_cfg, tmp_path):
    from cora_ray.cf.runner import run_pretrain

    cfg = fast_cfg("mf", "train.max_epochs=3", "grid.lrs=[0.01, 0.001]", "grid.weight_decays=[0.0001]")
    out = str(tmp_path / "mf")
    lines: list[str] = []
    manifest = run_pretrain(cfg, syn_uri, out, grid=True, log=lines.append)
    sel = manifest["selection"]
    assert sel["grid"] is True and len(sel["trials"]) == 2
    assert all(t["status"] == "ok" for t in sel["trials"])
    best = max(sel["trials"], key=lambda t: t["valid_auc"])
    assert sel["chosen"] == {"lr": best["lr"], "weight_decay": best["weight_decay"]}
    assert manifest["training"]["lr"] == best["lr"]
    assert manifest["metrics"]["valid"]["auc"] == pytest.approx(best["valid_auc"])
    model = load_cf_artifact(out, expected_dataset_hash=syn_data.dataset_hash)
    assert model.artifact_hash == read_cf_manifest(out)["hash"]
    text = "\n".join(lines)
    assert "summary" in text and "test " in text and "lr=0.01" in text


@pytest.mark.slow
@pytest.mark.ray
def test_single_run_nan_loss_is_reported_and_nothing_is_published(ray_cluster, syn_uri, fast_cfg, tmp_path):
    from cora_ray.cf.runner import run_pretrain

    out = tmp_path / "mf"
    with pytest.raises(TrainingError, match=r"at step \d+ .*lr=1e\+30"):
        run_pretrain(fast_cfg("mf", "train.lr=1e30"), syn_uri, str(out), log=lambda s: None)
    assert not (out / "manifest.json").exists()


@pytest.mark.slow
def test_cli_end_to_end_on_a_local_ray(tmp_path, syn_uri):
    out = tmp_path / "sasrec"
    rel = os.path.relpath(syn_uri, REPO)  # relative to the job's cwd, while Tune runs trials elsewhere
    r = _job(
        "--data", rel, "--backbone", "sasrec", "--out", str(out), "--num-cpus", "2",
        "model.dim=16", "train.max_epochs=2", "train.batch_size=512",
        timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out_text = r.stdout + r.stderr
    assert "epoch 1/2" in out_text and "epoch 2/2" in out_text  # progress per epoch
    assert "CF pretraining summary" in out_text and "artifact:" in out_text
    m = read_cf_manifest(str(out))
    assert m["backbone"] == "sasrec" and m["model"]["max_history"] == 25 and m["model"]["num_blocks"] == 2
