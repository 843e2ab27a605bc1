"""The learning-curve job (cora_ray/eval/curve.py): a run's checkpoints at chosen steps scored on test once each,
its validations tabulated, the plan checked against what the curve needs, a stopped run continued in place."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from cora_ray.checkpoint import read_checkpoint_manifest
from cora_ray.config import to_dict
from cora_ray.errors import ConfigError
from cora_ray.eval import curve as curve_mod
from cora_ray.eval.curve import CurveConfig, load_curve_config, run_curve, train_argv, training_config


def _setup(tiny_artifacts, tmp_path: Path, steps=(2, 4, 6), keep: int = 3, curve_steps=(2, 6)) -> CurveConfig:
    from tiny_setup import write_tiny_checkpoint

    exp_yaml = tmp_path / "exp.yaml"
    exp_yaml.write_text(yaml.safe_dump(to_dict(tiny_artifacts.config("cora"))))
    run = tmp_path / "runs" / "r"
    for k, step in enumerate(steps):
        write_tiny_checkpoint(
            tiny_artifacts, str(run / f"checkpoint_{k:06d}"), "cora", seed=20 + k, step=step
        )
    lines = []
    for step in range(1, max(steps) + 1):
        lines.append({"type": "train", "step": step, "loss": 0.7 - 0.01 * step, "samples": 8 * step})
        if step in steps:
            lines.append(
                {
                    "type": "valid",
                    "step": step,
                    "samples": 8 * step,
                    "loss": 0.7 - 0.01 * step,
                    "valid_auc": 0.5 + 0.01 * step,
                    "valid_uauc": 0.5 + 0.005 * step,
                    "valid_rows": 40,
                }
            )
    (run / "progress.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    (run / curve_mod.SNAPSHOT_FILE).write_text("{}")
    command = (
        f"{{python}} jobs/train.py --config {exp_yaml} train.max_steps=6 train.eval_every=2 "
        f"train.checkpoints_to_keep={keep} train.storage_path={tmp_path / 'runs'} train.run_name=r"
    )
    return CurveConfig(
        name="tiny curve",
        data=tiny_artifacts.data_uri,
        run=str(run),
        train=command,
        steps=list(curve_steps),
        out=str(tmp_path / "curve"),
        splits=["test"],
        num_actors=0,
        batch_size=8,
    )


def test_curve_scores_each_step_once_and_tabulates_every_validation(tiny_artifacts, tmp_path):
    from tiny_setup import write_tiny_checkpoint

    cfg = _setup(tiny_artifacts, tmp_path)
    logs: list[str] = []
    summary = run_curve(cfg, do_train=False, progress=False, log=logs.append)
    assert [t["step"] for t in summary["test"]] == [2, 6]
    for step, k in ((2, 0), (6, 2)):
        doc = json.loads((Path(cfg.out) / "runs" / f"step{step}" / "metrics.json").read_text())
        ckpt = Path(cfg.run) / f"checkpoint_{k:06d}"
        assert doc["source"]["hash"] == read_checkpoint_manifest(str(ckpt))["hash"]
        assert summary["test"][0 if step == 2 else 1]["test_auc"] == doc["splits"]["test"]["auc"]
    assert [v["step"] for v in summary["validation"]] == [2, 4, 6]
    assert summary["validation"][1]["valid_auc"] == pytest.approx(0.54)
    md = (Path(cfg.out) / "curve.md").read_text()
    table = [line for line in md.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert (
        len(table) == 3 and "| 4 | 32 |" in table[1] and table[1].endswith("| — | — |")
    )  # 4: validated only
    assert (Path(cfg.out) / "curve.png").stat().st_size > 0
    assert json.loads((Path(cfg.out) / "curve.json").read_text())["steps"] == [2, 6]

    logs.clear()  # again: both collected, nothing scored
    run_curve(cfg, do_train=False, progress=False, log=logs.append)
    assert sum("collected" in line for line in logs) == 2 and not any("scoring" in line for line in logs)

    # a step's checkpoint replaced (another run in the same place): that step is scored again, the other kept
    write_tiny_checkpoint(tiny_artifacts, str(Path(cfg.run) / "checkpoint_000000"), "cora", seed=99, step=2)
    logs.clear()
    run_curve(cfg, do_train=False, progress=False, log=logs.append)
    assert any(line.startswith("[step 2] results at") and "scoring again" in line for line in logs)
    assert any(line.startswith("[step 6] collected") for line in logs)


def test_a_step_without_checkpoint_is_reported_not_scored(tiny_artifacts, tmp_path):
    cfg = _setup(tiny_artifacts, tmp_path, steps=(2, 4), curve_steps=(2, 6))
    logs: list[str] = []
    summary = run_curve(cfg, do_train=False, progress=False, log=logs.append)
    assert [t["step"] for t in summary["test"]] == [2]
    assert any("[step 6] no checkpoint" in line for line in logs)
    assert "Not scored yet (no checkpoint): steps 6." in (Path(cfg.out) / "curve.md").read_text()


def test_the_plan_must_keep_and_validate_every_scored_step(tiny_artifacts, tmp_path):
    cfg = _setup(tiny_artifacts, tmp_path, keep=2)
    with pytest.raises(ConfigError, match=r"train.checkpoints_to_keep=2 .* keep at least 3"):
        training_config(cfg)
    cfg = _setup(tiny_artifacts, tmp_path, curve_steps=(3,))
    with pytest.raises(ConfigError, match=r"steps \[3\] have no checkpoint.*train.eval_every=2"):
        training_config(cfg)
    cfg = _setup(tiny_artifacts, tmp_path, curve_steps=(8,))
    with pytest.raises(ConfigError, match=r"past the command's train.max_steps=6"):
        training_config(cfg)
    cfg = _setup(tiny_artifacts, tmp_path)
    cfg.run = str(tmp_path / "elsewhere")
    with pytest.raises(ConfigError, match="train.run_name"):
        training_config(cfg)
    with pytest.raises(ConfigError, match="increasing"):
        CurveConfig(run="r", train="x", steps=[4, 2])


def test_an_existing_run_is_continued_and_a_finished_one_not_trained(tiny_artifacts, tmp_path, monkeypatch):
    cfg = _setup(tiny_artifacts, tmp_path)
    assert train_argv(cfg)[-2:] == ["--resume", cfg.run]
    (Path(cfg.run) / curve_mod.SNAPSHOT_FILE).unlink()
    assert "--resume" not in train_argv(cfg)
    calls = []
    monkeypatch.setattr(curve_mod.subprocess, "call", lambda argv: calls.append(argv) or 0)
    logs: list[str] = []
    curve_mod.train(cfg, training_config(cfg), logs.append)  # the step-6 checkpoint exists: nothing to do
    assert calls == [] and "nothing to train" in logs[0]
    cfg.train = cfg.train.replace("train.max_steps=6", "train.max_steps=8").replace(
        "train.checkpoints_to_keep=3", "train.checkpoints_to_keep=4"
    )
    curve_mod.train(cfg, training_config(cfg), logs.append)
    assert len(calls) == 1 and "train.max_steps=8" in calls[0]


def test_shipped_curve_config_keeps_every_checkpoint_it_scores(monkeypatch):
    repo = Path(__file__).resolve().parents[2]
    monkeypatch.chdir(repo)
    cfg = load_curve_config("configs/curve_ml1m_cpu.yaml")
    exp = training_config(cfg)
    assert cfg.steps == [250, 500, 1000, 2000] and exp.train.max_steps == 2000
    assert (exp.train.global_batch_size, exp.train.eval_every, exp.train.eval_limit) == (8, 250, 1000)
    assert exp.train.save_optimizer_state  # a continued run resumes the AdamW moments
