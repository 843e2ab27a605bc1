"""The comparison job: runs or collects every method, writes comparison.md + comparison.png."""

from __future__ import annotations

import dataclasses
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
    # `--only A,B@42` splits on ',' and '@', so a name holding them could not be selected
    data = yaml.safe_load(write_config(tmp_path, tiny_artifacts).read_text())
    data["methods"][0]["name"] = "MF, grouped"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match="'MF, grouped': a name must not contain ','"):
        load_compare_config(str(path))


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


# --- training seeds, protocols, differences ------------------------------------------------------------

COPY = f'{sys.executable} -c "import shutil, sys; shutil.copytree(sys.argv[1], sys.argv[2])"'


def seeded_config(tmp_path, art, *, seeds=(1, 2), produce_extra="", **top):
    """MF and a CoRA row whose seed s (1 or 2) is a copy of tmp/src_s<s> (two different tiny checkpoints);
    `seeds=()`: the row without seeds, seed 1's checkpoint."""
    import shutil

    for s, src in ((1, art.checkpoints["cora"]), (2, f"{art.run_dir}/checkpoint_000000")):
        if not (tmp_path / f"src_s{s}").exists():
            shutil.copytree(src, tmp_path / f"src_s{s}")
    cora = {
        "name": "CoRA-MF",
        "kind": "checkpoint",
        "uri": str(tmp_path / "ck_s{seed}"),
        "produce": [f"{COPY} {tmp_path}/src_s{{seed}} {tmp_path}/ck_s{{seed}}{produce_extra}"],
    }
    if seeds:
        cora["seeds"] = list(seeds)
    else:
        cora["uri"] = cora["uri"].replace("{seed}", "1")
        cora["produce"] = [c.replace("{seed}", "1") for c in cora["produce"]]
    cfg = {
        "name": "tiny",
        "dataset": "ml-1m",
        "data": art.data_uri,
        "out": str(tmp_path / "cmp"),
        "splits": ["test", "test_warm"],
        "num_actors": 0,
        "methods": [{"name": "MF", "kind": "cf", "uri": art.cf_uri}, cora],
        "differences": [["CoRA-MF", "MF"]],
        "bootstrap_resamples": 200,
        **top,
    }
    path = tmp_path / "seeded.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return load_compare_config(str(path))


def test_seeded_method_reports_mean_and_std_over_seeds_and_differences(tiny_artifacts, tmp_path):
    import numpy as np

    cfg = seeded_config(tmp_path, tiny_artifacts)
    logs: list[str] = []
    summary = run_compare(cfg, progress=False, log=logs.append)
    out = tmp_path / "cmp"
    for s in (1, 2):  # one evaluation per seed, in its own directory, with the protocol it was made with
        run = out / "runs" / "cora-mf" / f"seed{s}"
        assert read_results(str(run))["source"]["uri"] == str(tmp_path / f"ck_s{s}")
        recorded = json.loads((run / "protocol.json").read_text())
        assert recorded == cfg.methods[1].for_seed(s).protocol() and str(s) in recorded["produce"][0]
    cora = summary["methods"][1]
    per_seed = [cora["per_seed"][s]["metrics"]["test"]["auc"] for s in ("1", "2")]
    assert per_seed[0] != per_seed[1]  # two different checkpoints
    test = cora["metrics"]["test"]
    assert test["auc"] == pytest.approx(np.mean(per_seed)) and test["n"] == 2
    assert test["auc_std"] == pytest.approx(np.std(per_seed, ddof=1))
    md = (out / "comparison.md").read_text()
    line = next(x for x in md.splitlines() if x.startswith("| CoRA-MF"))
    assert f"{test['auc']:.4f} ± {test['auc_std']:.4f} (n=2)" in line
    # the paired difference: observed = mean over CoRA's seeds minus MF, on the same test rows
    diff = summary["differences"][0]
    mf_auc = summary["methods"][0]["metrics"]["test"]["auc"]
    assert diff["a"] == "CoRA-MF" and diff["seeds"] == {"CoRA-MF": 2, "MF": 1}
    assert diff["auc"]["observed"] == pytest.approx(test["auc"] - mf_auc)
    assert diff["auc"]["ci"][0] <= diff["auc"]["observed"] <= diff["auc"]["ci"][1]
    assert diff["uauc"]["resampled"] == "users"
    assert "### Differences" in md and "| CoRA-MF − MF | 2 / 1 |" in md
    assert json.loads((out / "comparison.json").read_text())["differences"][0]["auc"]["resamples"] == 200

    logs.clear()  # everything is collected the second time
    again = run_compare(cfg, progress=False, log=logs.append)
    assert sum("collected" in x for x in logs) == 3 and again["methods"][1]["metrics"] == cora["metrics"]


def test_two_seeded_methods_are_compared_on_the_seeds_both_have(tiny_artifacts, tmp_path):
    """A seed one method lacks must not pass for a difference between the methods: with CoRA-MF at seeds 1, 2
    and CoRA-B at seed 1 only, the difference is seed 1 against seed 1."""
    cfg = seeded_config(tmp_path, tiny_artifacts)
    other = dataclasses.replace(
        cfg.methods[1],
        name="CoRA-B",
        uri=str(tmp_path / "ckb_s{seed}"),
        produce=[p.replace("/ck_s{seed}", "/ckb_s{seed}") for p in cfg.methods[1].produce],
    )
    cfg = dataclasses.replace(cfg, methods=[*cfg.methods, other], differences=[["CoRA-MF", "CoRA-B"]])
    summary = run_compare(cfg, progress=False, log=lambda _: None, only=["CoRA-MF", "MF", "CoRA-B@1"])
    by_name = {m["name"]: m for m in summary["methods"]}
    auc = {
        (n, s): by_name[n]["per_seed"][s]["metrics"]["test"]["auc"]
        for n, s in (("CoRA-MF", "1"), ("CoRA-B", "1"))
    }
    diff = summary["differences"][0]
    assert diff["paired_seeds"] == [1] and diff["seeds"] == {"CoRA-MF": 1, "CoRA-B": 1}
    assert diff["auc"]["observed"] == pytest.approx(auc["CoRA-MF", "1"] - auc["CoRA-B", "1"])
    assert "| 1 / 1 (seeds 1) |" in (tmp_path / "cmp" / "comparison.md").read_text()


def test_a_changed_protocol_is_labelled_or_rerun_never_silently_collected(tiny_artifacts, tmp_path):
    first = seeded_config(tmp_path, tiny_artifacts)
    before = run_compare(first, progress=False, log=lambda _: None)["methods"][1]["metrics"]
    changed = seeded_config(tmp_path, tiny_artifacts, produce_extra=" --v2")  # another produce command
    logs: list[str] = []
    summary = run_compare(changed, collect_only=True, progress=False, log=logs.append)
    cora = summary["methods"][1]
    assert "other protocol" in cora["note"] and cora["metrics"] == before
    assert "| CoRA-MF (other protocol) |" in (tmp_path / "cmp" / "comparison.md").read_text()
    assert sum("other protocol; not re-run" in x for x in logs) == 2
    # running one seed again: it gets the new protocol; the other seed is left out of the row, not mixed in
    logs.clear()
    summary = run_compare(changed, only=["CoRA-MF@2"], progress=False, log=logs.append)
    assert any("CoRA-MF seed 2" in x and "other protocol: re-running" in x for x in logs)
    cora = summary["methods"][1]
    assert cora["metrics"]["test"]["n"] == 1 and cora["per_seed"]["1"]["used"] is False
    assert (
        cora["per_seed"]["2"]["protocol"] == "current"
        and "seed 1 of another protocol left out" in cora["note"]
    )
    with pytest.raises(ConfigError, match="has no seed 3"):
        run_compare(changed, only=["CoRA-MF@3"], progress=False, log=lambda _: None)


def test_results_from_before_seeds_are_collected_as_old_protocol(tiny_artifacts, tmp_path):
    single = seeded_config(tmp_path, tiny_artifacts, seeds=())
    before = run_compare(single, progress=False, log=lambda _: None)["methods"][1]["metrics"]["test"]
    assert (tmp_path / "cmp" / "runs" / "cora-mf" / "protocol.json").is_file()
    seeded = seeded_config(tmp_path, tiny_artifacts)
    summary = run_compare(seeded, collect_only=True, progress=False, log=lambda _: None)
    cora = summary["methods"][1]
    assert cora["note"] == "old protocol" and cora["protocol"] == ["old protocol"]
    assert cora["metrics"]["test"]["auc"] == before["auc"] and cora["metrics"]["test"]["n"] == 1
    assert list(cora["per_seed"]) == ["before_seeds"] and cora["runs"] == [str(tmp_path / "cmp/runs/cora-mf")]
    assert not (tmp_path / "ck_s2").exists()  # collect-only produced nothing
    # once the seeds ran, an evaluation without seeds would overwrite them: refused
    run_compare(seeded, only=["CoRA-MF@1"], progress=False, log=lambda _: None)
    with pytest.raises(StorageError, match="holds per-seed results \\(seed1\\)"):
        run_compare(single, rerun=True, only=["CoRA-MF"], progress=False, log=lambda _: None)


def test_differences_refuse_methods_scored_on_different_rows(tiny_artifacts, tmp_path):
    from cora_ray.errors import DataError
    from cora_ray.eval.evaluate import evaluate
    from cora_ray.infer.source import ScorerSource

    sample = str(tmp_path / "mf_sample")
    evaluate(
        ScorerSource("cf", uri=tiny_artifacts.cf_uri, data_uri=tiny_artifacts.data_uri),
        sample,
        splits=["test", "test_warm"],
        limit=10,
        num_actors=0,
        progress=False,
    )
    cfg = seeded_config(
        tmp_path,
        tiny_artifacts,
        differences=[["MF", "MF-sample"]],
        methods=[
            {"name": "MF", "kind": "cf", "uri": tiny_artifacts.cf_uri},
            {"name": "MF-sample", "kind": "results", "uri": sample},
        ],
    )
    with pytest.raises(DataError, match="MF and MF-sample scored different rows"):
        run_compare(cfg, progress=False, log=lambda _: None)


def test_seed_and_difference_settings_are_checked(tiny_artifacts, tmp_path):
    path = write_config(tmp_path, tiny_artifacts)
    data = yaml.safe_load(path.read_text())

    def load(edit):
        d = json.loads(json.dumps(data))
        edit(d)
        path.write_text(yaml.safe_dump(d))
        return load_compare_config(str(path))

    with pytest.raises(ConfigError, match="with seeds, uri must contain \\{seed\\}"):
        load(lambda d: d["methods"][4].update(seeds=[1, 2]))
    with pytest.raises(ConfigError, match="needs a list of seeds"):
        load(lambda d: d["methods"][4].update(uri=d["methods"][4]["uri"] + "_{seed}"))
    with pytest.raises(ConfigError, match="seeds repeat"):
        load(lambda d: d["methods"][4].update(seeds=[1, 1], uri="x_{seed}"))
    with pytest.raises(ConfigError, match="zero_shot method trains nothing"):
        load(lambda d: d["methods"][3].update(seeds=[1]))
    with pytest.raises(ConfigError, match="unknown method\\(s\\) \\['Nope'\\]"):
        load(lambda d: d.update(differences=[["MF", "Nope"]]))
    with pytest.raises(ConfigError, match="with itself"):
        load(lambda d: d.update(differences=[["MF", "MF"]]))


def test_a_checkpoint_not_trained_as_its_command_says_is_refused(tiny_artifacts, tmp_path):
    from cora_ray.eval.compare import CompareMethod, check_trained_as

    exp = tmp_path / "exp.yaml"
    exp.write_text(yaml.safe_dump(to_dict(tiny_artifacts.config("cora"))))
    ckpt = tiny_artifacts.checkpoints["cora"]

    def method(*overrides):
        cmd = f"{{python}} jobs/train.py --config {exp} {' '.join(overrides)} train.run_name=x train.storage_path=y"
        return CompareMethod("CoRA-MF", "checkpoint", uri=ckpt, produce=[cmd])

    check_trained_as(method(), ckpt)  # the command's config is the checkpoint's (run name and storage aside)
    check_trained_as(method("train.eval_seed=42"), ckpt)  # a key's default counts where a checkpoint lacks it
    with pytest.raises(ConfigError, match="train.eval_limit=None \\(the command: 1000\\)"):
        check_trained_as(method("train.eval_limit=1000"), ckpt)
    with pytest.raises(ConfigError, match="model.method='cora' \\(the command: 'tallrec'\\)"):
        check_trained_as(method("model.method=tallrec", "model.cf_artifact=null"), ckpt)
    # commands that are not jobs/train.py are not compared
    check_trained_as(CompareMethod("X", "checkpoint", uri=ckpt, produce=["cp -r a b"]), ckpt)


def test_shipped_cpu_config_trains_every_llm_row_with_one_protocol(monkeypatch):
    from pathlib import Path

    from cora_ray.config import ExperimentConfig, load_config
    from cora_ray.eval.compare import train_command_config

    repo = Path(__file__).resolve().parents[2]
    monkeypatch.chdir(repo)  # the commands name configs/demo.yaml relative to the repository
    cfg = load_compare_config(str(repo / "configs" / "compare_ml1m_cpu.yaml"))
    seeded = {m.name: m for m in cfg.methods if m.seeds}
    assert set(seeded) == {
        "TALLRec",
        "CoLLM-MF (faithful)",
        "CoRA-MF",
        "CoRA-MF (user_prefix)",
        "CoRA-MF (suffix)",
        "CoRA-MF (user_prefix; target_last)",
        "CoRA-LightGCN",
        "CoRA-SASRec",
        "CoRA-MF (memory_norm)",
        "CoRA-LightGCN (memory_norm)",
        "CoRA-SASRec (memory_norm)",
    }
    for m in seeded.values():
        assert m.seeds == [42, 43, 44]
        for s in m.seeds:
            t = train_command_config(m.for_seed(s).produce[0]).train
            assert (t.max_steps, t.global_batch_size, t.num_workers, t.micro_batch_size) == (250, 8, 2, 4)
            assert (t.eval_every, t.eval_limit, t.eval_seed, t.seed) == (250, 1000, 42, s)
            assert t.shuffle == "global", m.name
    # the delta-scope rows differ from CoRA-MF in the scope alone (same data, artifact, budget and seeds)
    for scope in ("all", "user_prefix", "suffix"):
        name = "CoRA-MF" if scope == "all" else f"CoRA-MF ({scope})"
        model = train_command_config(seeded[name].for_seed(42).produce[0]).model
        assert (model.method, model.cf_artifact, model.delta_scope) == ("cora", "artifacts/cf/mf", scope)
    # ... and the title-last row from CoRA-MF (user_prefix) in the prompt alone
    base, tl = (
        train_command_config(seeded[n].for_seed(42).produce[0])
        for n in ("CoRA-MF (user_prefix)", "CoRA-MF (user_prefix; target_last)")
    )
    assert tl.prompt == dataclasses.replace(base.prompt, template="target_last")
    assert (
        tl.model == base.model and dataclasses.replace(tl.train, run_name=base.train.run_name) == base.train
    )
    # each memory_norm row differs from its backbone's row in the generator's memory_norm alone
    for row in ("CoRA-MF", "CoRA-LightGCN", "CoRA-SASRec"):
        plain, normed = (
            train_command_config(seeded[n].for_seed(42).produce[0]) for n in (row, f"{row} (memory_norm)")
        )
        assert normed.model.generator.memory_norm and not plain.model.generator.memory_norm
        assert normed.model == dataclasses.replace(
            plain.model, generator=dataclasses.replace(plain.model.generator, memory_norm=True)
        )
        assert dataclasses.replace(normed.train, run_name=plain.train.run_name) == plain.train
    # faithful CoLLM's stage 2 starts from the TALLRec run of the same seed
    for s in seeded["CoLLM-MF (faithful)"].seeds:
        model = train_command_config(seeded["CoLLM-MF (faithful)"].for_seed(s).produce[0]).model
        assert model.collm_variant == "faithful" and model.init_from.endswith(
            f"runs/ml1m_cpu/tallrec_s{s}/best"
        )
    # CoRA-SASRec seed 42 is exactly the run trained by hand for it (so that the run is collected)
    by_hand = (
        "model.method=cora model.cf_artifact=artifacts/cf/sasrec train.max_steps=250 train.num_workers=2 "
        "train.micro_batch_size=4 train.eval_every=250 train.eval_limit=1000 train.storage_path=runs/ml1m_cpu "
        "train.run_name=cora_sasrec_s42"
    ).split()
    want = load_config(ExperimentConfig, str(repo / "configs" / "demo.yaml"), by_hand)
    assert train_command_config(seeded["CoRA-SASRec"].for_seed(42).produce[0]) == want
    assert seeded["CoRA-SASRec"].for_seed(42).uri == "runs/ml1m_cpu/cora_sasrec_s42"
    assert [list(p) for p in cfg.differences] == [
        ["CoRA-MF", "CoLLM-MF (faithful)"],
        ["CoRA-MF", "CoLLM-MF"],
        ["CoRA-MF", "SASRec"],
        ["CoRA-MF", "MF"],
        ["CoRA-LightGCN", "LightGCN"],
        ["CoRA-MF", "CoRA-LightGCN"],
        ["CoRA-SASRec", "SASRec"],
        ["CoRA-SASRec (memory_norm)", "SASRec"],
        ["CoRA-MF (memory_norm)", "CoRA-MF"],
        ["CoRA-MF (user_prefix)", "CoRA-MF"],
        ["CoRA-MF (suffix)", "CoRA-MF"],
        ["CoRA-MF (user_prefix; target_last)", "CoRA-MF (user_prefix)"],
    ]
