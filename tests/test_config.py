"""Typed configs: YAML + dotted overrides; unknown keys and wrong types name the key and the file."""

from __future__ import annotations

import pytest

from cora_ray.config import ExperimentConfig, load_config, parse_override, to_dict
from cora_ray.errors import ConfigError


def write(tmp_path, text: str):
    p = tmp_path / "exp.yaml"
    p.write_text(text)
    return p


def test_defaults_follow_the_spec():
    cfg = load_config(ExperimentConfig)
    assert (cfg.model.rank, cfg.model.alpha, cfg.model.dropout) == (16, 32.0, 0.05)
    assert cfg.model.targets == ["q_proj", "k_proj", "v_proj", "o_proj"]
    g = cfg.model.generator
    assert (g.num_queries, g.num_layers, g.hidden_size, g.num_heads, g.ffn_size) == (4, 8, 512, 8, 3072)
    assert (cfg.train.lr, cfg.train.warmup_steps, cfg.train.min_lr, cfg.train.seed) == (1e-3, 200, 8e-5, 42)


def test_yaml_and_overrides_merge(tmp_path):
    p = write(tmp_path, "name: x\ntrain:\n  lr: 0.01\n  max_steps: 5\nmodel:\n  rank: 4\n")
    cfg = load_config(
        ExperimentConfig, p, ["train.lr=1e-4", "model.targets=[q_proj, v_proj]", "train.use_gpu=true"]
    )
    assert cfg.name == "x"
    assert cfg.train.lr == pytest.approx(1e-4)
    assert cfg.train.max_steps == 5
    assert cfg.model.rank == 4
    assert cfg.model.targets == ["q_proj", "v_proj"]
    assert cfg.train.use_gpu is True
    assert to_dict(cfg)["model"]["generator"]["num_layers"] == 8


def test_int_widens_to_float_but_float_does_not_narrow(tmp_path):
    assert load_config(ExperimentConfig, write(tmp_path, "train:\n  lr: 1\n")).train.lr == 1.0
    with pytest.raises(ConfigError, match=r"train.max_steps.*expects an int"):
        load_config(ExperimentConfig, write(tmp_path, "train:\n  max_steps: 2.5\n"))


def test_unknown_key_in_file_names_key_and_file(tmp_path):
    p = write(tmp_path, "train:\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError) as exc:
        load_config(ExperimentConfig, p)
    assert "train.learning_rate" in str(exc.value) and str(p) in str(exc.value)


def test_wrong_type_names_key_and_file(tmp_path):
    p = write(tmp_path, "model:\n  generator:\n    num_layers: eight\n")
    with pytest.raises(ConfigError) as exc:
        load_config(ExperimentConfig, p)
    assert "model.generator.num_layers" in str(exc.value) and str(p) in str(exc.value)


def test_unknown_override_key_is_named():
    with pytest.raises(ConfigError, match=r"override 'train.lrr=1'.*unknown key 'train.lrr'"):
        load_config(ExperimentConfig, None, ["train.lrr=1"])


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.rank=0", "model.rank must be > 0"),
        ("train.lr=0", "train.lr must be > 0"),
        ("train.zero_stage=4", "zero_stage must be 0, 1, 2 or 3"),
        ("model.method=bert", "model.method' must be one of"),
        ("llm.dtype=int3", "llm.dtype' must be one of"),
        ("train.global_batch_size=0", "train.global_batch_size must be > 0"),
        ("train.micro_batch_size=0", "train.micro_batch_size must be > 0"),
        ("train.max_micro_batch_size=-1", "train.max_micro_batch_size must be > 0"),
    ],
)
def test_out_of_range_values_are_refused(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(ExperimentConfig, None, [override])


def test_override_syntax_errors():
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        parse_override("train.lr")
    with pytest.raises(ConfigError, match="empty key part"):
        parse_override("train..lr=1")


def test_missing_file_and_non_mapping(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(ExperimentConfig, tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(ExperimentConfig, write(tmp_path, "- a\n- b\n"))


def test_prompt_template_must_have_slots():
    with pytest.raises(ConfigError, match=r"\{target\}"):
        load_config(ExperimentConfig, None, ["prompt.template=no slots {history}"])


def test_every_shipped_config_loads():
    from pathlib import Path

    # compare_*.yaml and curve_*.yaml are job configs of their own (tests/eval/test_compare.py, test_curve.py)
    configs = sorted(
        p
        for p in (Path(__file__).resolve().parents[1] / "configs").glob("*.yaml")
        if not p.name.startswith(("compare", "curve"))
    )
    assert len(configs) >= 10
    for p in configs:
        t = load_config(ExperimentConfig, p).train
        # every config resolves to one batch split (cora_ray/train/batch.py), written back into the config
        assert t.global_batch_size == t.micro_batch_size * t.num_workers * t.grad_accum_steps, p.name


def test_batch_keys_resolve_when_the_config_is_built(tmp_path):
    p = write(tmp_path, "train:\n  global_batch_size: 8\n  num_workers: 2\n")
    t = load_config(ExperimentConfig, p).train
    assert (t.micro_batch_size, t.grad_accum_steps) == (4, 1)
    t = load_config(ExperimentConfig, p, ["train.max_micro_batch_size=2"]).train
    assert (t.micro_batch_size, t.grad_accum_steps) == (2, 2)
    with pytest.raises(ConfigError, match="train.global_batch_size=8 must equal") as exc:
        load_config(ExperimentConfig, p, ["train.micro_batch_size=2", "train.grad_accum_steps=1"])
    assert str(p) in str(exc.value)  # the file the keys came from is named too


def test_scientific_notation_without_dot_is_a_number(tmp_path):
    # PyYAML reads `1e-3` as a string; in files and inside list overrides it must still be a float
    cfg = load_config(ExperimentConfig, write(tmp_path, "train:\n  lr: 1e-3\n"), ["train.min_lr=5e-5"])
    assert cfg.train.lr == pytest.approx(1e-3) and cfg.train.min_lr == pytest.approx(5e-5)
    with pytest.raises(ConfigError, match="expects a number"):
        load_config(ExperimentConfig, write(tmp_path, "train:\n  lr: fast\n"))
