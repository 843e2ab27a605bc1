"""The comparison job: runs or collects every method, writes comparison.md + comparison.png."""

from __future__ import annotations

import json
import sys

import pytest
import yaml

from cora_ray.config import to_dict
from cora_ray.errors import ConfigError, StorageError
from cora_ray.eval.compare import find_best_checkpoint, load_compare_config, run_compare
from cora_ray.eval.evaluate import read_results


def write_config(tmp_path, art, **top):
    llm = to_dict(art.config())
    zs_cfg = tmp_path / "zero_shot.yaml"
    zs_cfg.write_text(yaml.safe_dump({"data": llm["data"], "llm": llm["llm"], "prompt": llm["prompt"]}))
    copy_cmd = f"{sys.executable} -c \"import shutil; shutil.copytree('{art.cf_uri}', '{tmp_path / 'produced_cf'}')\""
    cfg = {
        "name": "tiny",
        "dataset": "ml-1m",
        "data": art.data_uri,
        "out": str(tmp_path / "cmp"),
        "splits": ["test", "test_warm"],
        "num_actors": 0,
        "methods": [
            {"name": "MF", "kind": "cf", "uri": art.cf_uri},
            {
                "name": "LightGCN",
                "kind": "cf",
                "uri": str(tmp_path / "produced_cf"),
                "produce": [copy_cmd],
                "note": "an MF copy standing in",
            },
            {"name": "SASRec", "kind": "cf", "uri": str(tmp_path / "missing")},
            {"name": "Zero-shot", "kind": "zero_shot", "config": str(zs_cfg)},
            {"name": "TALLRec", "kind": "checkpoint", "uri": art.checkpoints["tallrec"]},
            {"name": "CoRA-MF", "kind": "checkpoint", "uri": art.run_dir},
        ],
        **top,
    }
    path = tmp_path / "compare.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def test_compare_writes_both_files_and_collects_existing_results(tiny_artifacts, tmp_path):
    cfg = load_compare_config(str(write_config(tmp_path, tiny_artifacts)))
    logs: list[str] = []
    summary = run_compare(cfg, progress=False, log=logs.append)
    out = tmp_path / "cmp"
    md = (out / "comparison.md").read_text()
    assert (out / "comparison.png").read_bytes()[:4] == b"\x89PNG"
    data = json.loads((out / "comparison.json").read_text())
    assert [m["name"] for m in data["methods"]] == [
        "MF",
        "LightGCN",
        "SASRec",
        "Zero-shot",
        "TALLRec",
        "CoRA-MF",
    ]
    # measured beside the paper's: the MF row carries the paper's 0.6486 / 0.6396
    mf_line = next(line for line in md.splitlines() if line.startswith("| MF "))
    auc = read_results(str(out / "runs" / "mf"))["splits"]["test"]["auc"]
    assert f"{auc:.4f}" in mf_line and "0.6486" in mf_line and "0.6396" in mf_line
    assert "| SASRec (not run)" in md and any("SASRec" in line and "not run" in line for line in logs)
    assert (tmp_path / "produced_cf" / "manifest.json").is_file()  # the produce command ran
    # the run directory's best checkpoint by validation AUC was evaluated
    cora = read_results(str(out / "runs" / "cora-mf"))
    assert cora["source"]["uri"].endswith("checkpoint_000001")
    assert summary["methods"][3]["paper"] == "ICL"

    # a second run collects instead of evaluating again
    logs.clear()
    again = run_compare(cfg, progress=False, log=logs.append)
    assert sum("collected" in line for line in logs) == 5
    assert "evaluated in it: MF, LightGCN, Zero-shot, TALLRec, CoRA-MF (" in md
    assert "evaluated in it: none (other rows collected" in (out / "comparison.md").read_text()
    assert again["methods"][0]["metrics"] == summary["methods"][0]["metrics"]
    # other settings (a --limit) make the stored results stale: re-evaluated
    logs.clear()
    limited = load_compare_config(str(write_config(tmp_path, tiny_artifacts)), ["limit=10"])
    run_compare(limited, progress=False, log=logs.append)
    assert sum("re-running" in line for line in logs) == 5
    assert read_results(str(out / "runs" / "mf"))["splits"]["test"]["rows"] == 10


def test_strict_compare_fails_on_a_missing_artifact(tiny_artifacts, tmp_path):
    cfg = load_compare_config(str(write_config(tmp_path, tiny_artifacts)))
    cfg.methods = [m for m in cfg.methods if m.name == "SASRec"]
    with pytest.raises(StorageError, match="SASRec"):
        run_compare(cfg, strict=True, progress=False, log=lambda _: None)


def test_collect_only_evaluates_nothing(tiny_artifacts, tmp_path):
    cfg = load_compare_config(str(write_config(tmp_path, tiny_artifacts, out=str(tmp_path / "empty"))))
    summary = run_compare(cfg, collect_only=True, progress=False, log=lambda _: None)
    assert all(m["metrics"] is None for m in summary["methods"])
    assert (tmp_path / "empty" / "comparison.md").is_file() and (
        tmp_path / "empty" / "comparison.png"
    ).is_file()
    assert not (tmp_path / "empty" / "runs").exists()


def test_config_errors_name_the_key(tmp_path, tiny_artifacts):
    path = write_config(tmp_path, tiny_artifacts)
    with pytest.raises(ConfigError, match="unknown key 'methods\\[0\\].urii'|unknown key"):
        data = yaml.safe_load(path.read_text())
        data["methods"][0]["urii"] = "x"
        path.write_text(yaml.safe_dump(data))
        load_compare_config(str(path))
    with pytest.raises(ConfigError, match="split"):
        load_compare_config(str(write_config(tmp_path, tiny_artifacts)), ["splits=[test,tset]"])


def test_find_best_checkpoint(tiny_artifacts):
    assert find_best_checkpoint(tiny_artifacts.checkpoints["cora"]) == tiny_artifacts.checkpoints["cora"]
    assert find_best_checkpoint(tiny_artifacts.run_dir).endswith("checkpoint_000001")
    with pytest.raises(StorageError, match="no checkpoint"):
        find_best_checkpoint(tiny_artifacts.data_uri)


@pytest.mark.parametrize(
    "name", ["compare_ml1m_cpu.yaml", "compare_ml1m_paper.yaml", "compare_book_paper.yaml"]
)
def test_shipped_compare_configs_load(name):
    from pathlib import Path

    cfg = load_compare_config(str(Path(__file__).resolve().parents[2] / "configs" / name))
    names = [m.name for m in cfg.methods]
    for required in ("MF", "LightGCN", "SASRec", "Zero-shot", "TALLRec", "CoLLM-MF", "CoRA-MF"):
        assert required in names


def test_only_runs_the_named_methods_and_collects_the_rest(tiny_artifacts, tmp_path):
    cfg = load_compare_config(str(write_config(tmp_path, tiny_artifacts, out=str(tmp_path / "only"))))
    summary = run_compare(cfg, only=["MF", "TALLRec"], progress=False, log=lambda _: None)
    ran = {m["name"] for m in summary["methods"] if m["metrics"] is not None}
    assert ran == {"MF", "TALLRec"}
    with pytest.raises(ConfigError, match="unknown method"):
        run_compare(cfg, only=["MFF"], progress=False, log=lambda _: None)


@pytest.mark.slow
def test_command_line_runs_only_the_named_methods(tiny_artifacts, tmp_path):
    import os
    import subprocess
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    path = write_config(tmp_path, tiny_artifacts, out=str(tmp_path / "cli"))
    r = subprocess.run(
        [
            sys.executable,
            str(repo / "jobs" / "compare.py"),
            "--config",
            str(path),
            "--only",
            "MF",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        cwd=repo,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert r.returncode == 0, r.stderr
    data = json.loads((tmp_path / "cli" / "comparison.json").read_text())
    assert [m["name"] for m in data["methods"] if m["metrics"]] == ["MF"]
    assert "| Zero-shot (not run)" in r.stdout
    bad = subprocess.run(
        [sys.executable, str(repo / "jobs" / "compare.py"), "--config", str(path), "--only", "Nope"],
        capture_output=True,
        text=True,
        cwd=repo,
        timeout=300,
    )
    assert bad.returncode == 2 and "unknown method" in bad.stderr
