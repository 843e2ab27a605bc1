"""load_llm draws no "Loading weights" progress bar (every Ray worker and scoring actor would print one)
and leaves transformers' progress-bar switch as it found it."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers.utils import logging as hf_logging

from cora_ray.config import LLMConfig
from cora_ray.llm.loading import load_llm
from cora_ray.llm.tiny import tiny_llm


@pytest.fixture
def tiny_dir(tmp_path) -> Path:
    llm = tiny_llm(seed=1)
    path = tmp_path / "tiny-model"
    llm.model.save_pretrained(path)
    llm.tokenizer.save_pretrained(path)
    return path


@pytest.fixture
def bars_on():
    was = hf_logging.is_progress_bar_enabled()
    hf_logging.enable_progress_bar()
    yield
    (hf_logging.enable_progress_bar if was else hf_logging.disable_progress_bar)()


def test_loading_draws_no_weight_bar_and_restores_the_switch(tiny_dir, tmp_path, capfd, bars_on):
    cfg = LLMConfig(name_or_path=str(tiny_dir), cache_dir=str(tmp_path / "cache"))
    load_llm(cfg)
    assert "Loading weights" not in capfd.readouterr().err
    assert hf_logging.is_progress_bar_enabled()  # restored: other bars (downloads) still show
    # what the load would print without the switch: the check above can fail
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(str(tiny_dir), local_files_only=True)
    assert "Loading weights" in capfd.readouterr().err


def test_bars_the_user_turned_off_stay_off(tiny_dir, tmp_path, bars_on):
    hf_logging.disable_progress_bar()
    load_llm(LLMConfig(name_or_path=str(tiny_dir), cache_dir=str(tmp_path / "cache")))
    assert not hf_logging.is_progress_bar_enabled()
