"""The global batch is the configured quantity (cora_ray/train/batch.py), `jobs/train.py --plan` reports the
resolved run without starting anything (cora_ray/train/plan.py), every shipped GPU config keeps validation
under 10 % of compute, and the demo's inputs are built when missing (cora_ray/bootstrap.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cora_ray.config import ExperimentConfig, from_dict, load_config, to_dict
from cora_ray.errors import ConfigError
from cora_ray.train.batch import resolve_batch
from cora_ray.train.plan import KNOWN_LLMS, build_plan

REPO = Path(__file__).resolve().parents[2]
GPU_CONFIGS = sorted(
    p.name for p in (REPO / "configs").glob("*.yaml") if p.name.startswith(("ml1m_", "book_"))
)
PAPER_BATCH = {"ml1m": 8, "book": 4}  # docs/method.md §4


def split(**kw) -> tuple[int, int, int, int]:
    s = resolve_batch(**kw)
    return s.global_batch_size, s.micro_batch_size, s.num_workers, s.grad_accum_steps


# --- batch resolution -------------------------------------------------------------------------------------


@pytest.mark.parametrize("workers, micro", [(1, 8), (2, 4), (4, 2), (8, 1)])
def test_global_batch_is_kept_for_any_worker_count(workers, micro):
    assert split(global_batch_size=8, micro_batch_size=None, grad_accum_steps=None, num_workers=workers) == (
        8,
        micro,
        workers,
        1,
    )


def test_a_micro_batch_cap_turns_into_accumulation():
    kw = dict(global_batch_size=8, micro_batch_size=None, grad_accum_steps=None, num_workers=1)
    assert split(**kw, max_micro_batch_size=4) == (8, 4, 1, 2)
    assert split(**kw, max_micro_batch_size=3) == (8, 2, 1, 4)  # the largest divisor of 8 that is <= 3
    assert split(**{**kw, "global_batch_size": 12, "num_workers": 2}, max_micro_batch_size=4) == (12, 3, 2, 2)


def test_one_explicit_key_fixes_the_other():
    assert split(global_batch_size=8, micro_batch_size=2, grad_accum_steps=None, num_workers=2) == (
        8,
        2,
        2,
        2,
    )
    assert split(global_batch_size=8, micro_batch_size=None, grad_accum_steps=4, num_workers=1) == (
        8,
        2,
        1,
        4,
    )


def test_inconsistent_explicit_combination_names_the_three_keys():
    with pytest.raises(ConfigError) as exc:
        load_config(
            ExperimentConfig,
            None,
            [
                "train.global_batch_size=8",
                "train.micro_batch_size=1",
                "train.grad_accum_steps=1",
                "train.num_workers=1",
            ],
        )
    msg = str(exc.value)
    for key in (
        "train.global_batch_size",
        "train.micro_batch_size",
        "train.num_workers",
        "train.grad_accum_steps",
    ):
        assert key in msg, msg
    assert "1 × 1 × 1 = 1" in msg


def test_global_batch_not_divisible_by_workers_is_refused():
    with pytest.raises(ConfigError, match=r"train.global_batch_size=4 .*train.num_workers=8"):
        load_config(ExperimentConfig, REPO / "configs" / "book_cora_mf.yaml", ["train.num_workers=8"])
    with pytest.raises(ConfigError, match="not a multiple of micro-batch 3"):
        resolve_batch(global_batch_size=8, micro_batch_size=3, grad_accum_steps=None, num_workers=1)


def test_without_a_global_batch_the_legacy_product_holds():
    assert split(global_batch_size=None, micro_batch_size=None, grad_accum_steps=None, num_workers=2) == (
        16,
        8,
        2,
        1,
    )
    cfg = load_config(ExperimentConfig, None, ["train.micro_batch_size=4", "train.num_workers=2"])
    assert (cfg.train.global_batch_size, cfg.train.grad_accum_steps) == (8, 1)


def test_a_resolved_config_survives_the_trip_to_the_workers():
    """The worker rebuilds the config from `to_dict`: the resolved split must load back unchanged."""
    cfg = load_config(ExperimentConfig, REPO / "configs" / "ml1m_cora_mf.yaml", ["train.num_workers=2"])
    again = from_dict(ExperimentConfig, to_dict(cfg))
    t = again.train
    assert (t.global_batch_size, t.micro_batch_size, t.num_workers, t.grad_accum_steps) == (8, 4, 2, 1)


# --- the plan ---------------------------------------------------------------------------------------------


def test_validation_share_follows_the_stated_arithmetic(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "manifest.json").write_text(json.dumps({"counts": {"train": 50, "valid_small": 30}}))
    over = [
        f"data.uri={tmp_path / 'data'}",
        "train.global_batch_size=2",
        "train.max_steps=12",
        "train.eval_every=5",  # validations at steps 5, 10 and the last one, 12
        "train.eval_limit=4",
        "llm.num_parameters=1000",
        "prompt.max_prompt_tokens=100",
    ]
    p = build_plan(load_config(ExperimentConfig, None, over), tokens_per_row=10)
    assert (p.training_rows, p.validations, p.validation_rows) == (24, 3, 12)
    assert p.epochs == pytest.approx(24 / 50)
    assert p.validation_compute_share == pytest.approx(12 / (12 + 2 * 24))
    forward = 2 * 1000 * 10
    assert p.total_flop == pytest.approx((2 * 24 + 12) * forward)
    ckpt = build_plan(load_config(ExperimentConfig, None, [*over, "train.gradient_checkpointing=true"]))
    assert ckpt.validation_compute_share == pytest.approx(12 / (12 + 3 * 24))
    whole = build_plan(load_config(ExperimentConfig, None, [*over, "train.eval_limit=null"]))
    assert whole.validation_rows_per_validation == 30  # all of valid_small, from the manifest


def test_unreadable_inputs_leave_the_counts_unknown_and_say_so():
    p = build_plan(load_config(ExperimentConfig, REPO / "configs" / "ml1m_cora_mf.yaml"))
    assert p.train_split_rows is None and p.epochs is None
    assert any("not read" in n for n in p.notes)
    p = build_plan(load_config(ExperimentConfig, None, ["llm.name_or_path=some-org/unknown-model"]))
    assert p.llm_matmul_parameters is None and p.total_flop is None


def test_llm_size_from_a_local_config_json_and_the_table(tmp_path):
    (tmp_path / "config.json").write_text(
        json.dumps(
            {
                "num_hidden_layers": 2,
                "hidden_size": 64,
                "intermediate_size": 128,
                "num_attention_heads": 4,
                "num_key_value_heads": 2,
            }
        )
    )
    p = build_plan(load_config(ExperimentConfig, None, [f"llm.name_or_path={tmp_path}"]))
    assert p.llm_matmul_parameters == 2 * (64 * (2 * 64 + 2 * 32) + 3 * 64 * 128)
    # the numbers docs/deploy.md §8 derives by hand
    assert KNOWN_LLMS["vicuna-7b"].matmul_parameters == 32 * (4 * 4096**2 + 3 * 4096 * 11008)
    assert KNOWN_LLMS["smollm2-135m"].matmul_parameters == 30 * (
        576 * (576 + 192 + 192 + 576) + 3 * 576 * 1536
    )


@pytest.mark.parametrize("name", GPU_CONFIGS)
def test_every_shipped_gpu_config_keeps_the_paper_batch_and_validates_within_budget(name):
    batch = PAPER_BATCH[name.split("_")[0]]
    for workers in sorted({1, 2, batch, 8} - ({8} if batch == 4 else set())):
        cfg = load_config(ExperimentConfig, REPO / "configs" / name, [f"train.num_workers={workers}"])
        p = build_plan(cfg)
        assert p.global_batch_size == batch, (name, workers)
        assert p.micro_batch_size * p.num_workers * p.grad_accum_steps == batch
        assert p.validation_compute_share is not None and p.validation_compute_share <= 0.10, (name, workers)


def test_plan_cli_prints_json_and_starts_nothing():
    """`jobs/train.py --plan --json` in a fresh interpreter: the JSON keys, and neither Ray nor torch imported."""
    code = (
        "import sys, runpy; sys.argv = ['jobs/train.py', '--config', 'configs/ml1m_cora_mf.yaml', "
        "'train.num_workers=1', '--plan', '--json']\n"
        "try:\n    runpy.run_path('jobs/train.py', run_name='__main__')\n"
        "except SystemExit as e:\n    assert not e.code, e.code\n"
        "heavy = sorted(m for m in ('ray', 'torch', 'transformers', 'deepspeed') if m in sys.modules)\n"
        "print('IMPORTED', heavy, file=sys.stderr)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    plan = json.loads(r.stdout)
    assert plan["global_batch_size"] == 8 and plan["num_workers"] == 1 and plan["micro_batch_size"] == 8
    assert 0 < plan["validation_compute_share"] <= 0.10
    assert "IMPORTED []" in r.stderr, r.stderr


# --- missing inputs ---------------------------------------------------------------------------------------


def test_missing_inputs_are_named_with_the_commands_that_make_them(tmp_path):
    from cora_ray.bootstrap import missing_inputs_message

    data, cf = tmp_path / "ml", tmp_path / "cf" / "ml1m_sasrec"
    cfg = load_config(ExperimentConfig, None, [f"data.uri={data}", f"model.cf_artifact={cf}"])
    msg = missing_inputs_message(cfg)
    assert f"`python jobs/prepare_data.py --dataset ml-1m --out {data}`" in msg
    assert f"`python jobs/pretrain_cf.py --data {data} --backbone sasrec --out {cf}`" in msg
    book = load_config(ExperimentConfig, REPO / "configs" / "book_cora_lightgcn.yaml")
    assert "--dataset amazon-book --source" in book_msg(book)
    assert "--backbone lightgcn" in book_msg(book)


def book_msg(cfg: ExperimentConfig) -> str:
    from cora_ray.bootstrap import prepare_data_command, pretrain_cf_command

    return prepare_data_command(cfg, cfg.data.uri) + " " + pretrain_cf_command(cfg)


@pytest.mark.slow
def test_demo_bootstrap_builds_the_real_dataset_and_an_mf_artifact_for_it(tmp_path):
    """What `python jobs/train.py` (no arguments) runs first on a fresh checkout, into a temp dir."""
    from cora_ray.bootstrap import build_missing_demo_inputs, missing_inputs_message

    data, cf = str(tmp_path / "ml-1m"), str(tmp_path / "cf" / "mf")
    cfg = load_config(
        ExperimentConfig, REPO / "configs" / "demo.yaml", [f"data.uri={data}", f"model.cf_artifact={cf}"]
    )
    assert missing_inputs_message(cfg) is not None
    built = build_missing_demo_inputs(REPO, data, cf, prefix="[test]")
    assert built == [data, cf]
    assert missing_inputs_message(cfg) is None
    manifest = json.loads((tmp_path / "ml-1m" / "manifest.json").read_text())
    assert manifest["counts"]["train"] == 33_891 and manifest["counts"]["valid_small"] == 5_200
    cf_manifest = json.loads((tmp_path / "cf" / "mf" / "manifest.json").read_text())
    assert cf_manifest["dataset_hash"] == manifest["hash"] and cf_manifest["backbone"] == "mf"
    assert build_missing_demo_inputs(REPO, data, cf, prefix="[test]") == []  # a second call reuses both
