"""trust_remote_code needs the operator's consent (cora_ray/infer/remote_code.py): a checkpoint's stored config
asking for it is refused by the scorer, jobs/evaluate.py, jobs/cf_signal.py and the Serve app's loader unless
the operator passed the flag / app arg; with it, the same checkpoint loads and scores as usual."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np
import pytest
from tiny_setup import write_tiny_checkpoint

from cora_ray import storage
from cora_ray.config import to_dict
from cora_ray.errors import ConfigError
from cora_ray.infer.scorer import Scorer

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def remote_code_checkpoint(tiny_artifacts, tmp_path_factory) -> str:
    """A CoRA checkpoint whose stored config says llm.trust_remote_code: true (the tiny LLaMA ships no code,
    so loading it with consent is harmless)."""
    cfg = tiny_artifacts.config("cora")
    cfg = dataclasses.replace(cfg, llm=dataclasses.replace(cfg.llm, trust_remote_code=True))
    uri = str(tmp_path_factory.mktemp("remote_code") / "ckpt")
    return write_tiny_checkpoint(tiny_artifacts, uri, "cora", seed=1, config=to_dict(cfg))


def test_the_scorer_refuses_a_checkpoint_asking_for_remote_code_without_consent(remote_code_checkpoint):
    with pytest.raises(ConfigError) as err:
        Scorer.from_checkpoint(remote_code_checkpoint)
    message = str(err.value)
    assert remote_code_checkpoint in message and "--trust-remote-code" in message
    assert "trust_remote_code: true" in message  # the serve app arg is named too


def test_with_consent_it_loads_and_scores_like_the_same_weights_without_the_request(
    tiny_artifacts, remote_code_checkpoint
):
    consented = Scorer.from_checkpoint(remote_code_checkpoint, trust_remote_code=True)
    assert consented.config.llm.trust_remote_code is True
    # checkpoint_cora was written with the same seed and config except the flag: the same trainable tensors
    plain = Scorer.from_checkpoint(tiny_artifacts.checkpoints["cora"])
    users, items = np.array([1, 2, 3]), np.array([4, 5, 6])
    hist = [[1, 2], [3], []]
    np.testing.assert_array_equal(consented.score(users, items, hist), plain.score(users, items, hist))


def test_a_zero_shot_config_asking_for_remote_code_needs_consent_too(tiny_artifacts):
    cfg = tiny_artifacts.config("cora")
    cfg = dataclasses.replace(cfg, llm=dataclasses.replace(cfg.llm, trust_remote_code=True))
    with pytest.raises(ConfigError, match="--trust-remote-code"):
        Scorer.from_base_llm(cfg)
    assert Scorer.from_base_llm(cfg, trust_remote_code=True).method == "zero_shot"


def test_evaluate_job_refuses_before_writing_anything_and_runs_with_the_flag(
    remote_code_checkpoint, tmp_path, capsys
):
    sys.path.insert(0, str(REPO / "jobs"))
    try:
        import evaluate as evaluate_job
    finally:
        sys.path.remove(str(REPO / "jobs"))
    out = str(tmp_path / "eval")
    argv = ["--checkpoint", remote_code_checkpoint, "--out", out, "--num-actors", "0", "--limit", "8"]
    argv += ["--splits", "test", "--no-progress"]
    assert evaluate_job.main(argv) == 2
    err = capsys.readouterr().err
    assert "trust_remote_code" in err and "--trust-remote-code" in err and remote_code_checkpoint in err
    assert not Path(out).exists()
    assert evaluate_job.main([*argv, "--trust-remote-code"]) == 0
    assert storage.read_json(f"{out}/metrics.json")["splits"]["test"]["rows"] == 8


def test_cf_signal_job_refuses_without_the_flag(remote_code_checkpoint, tmp_path, capsys):
    sys.path.insert(0, str(REPO / "jobs"))
    try:
        import cf_signal as cf_signal_job
    finally:
        sys.path.remove(str(REPO / "jobs"))
    out = tmp_path / "cf_signal"
    assert (
        cf_signal_job.main(["--checkpoint", remote_code_checkpoint, "--out", str(out), "--limit", "8"]) == 2
    )
    assert "--trust-remote-code" in capsys.readouterr().err and not out.exists()


def test_the_serve_loader_takes_consent_from_the_app_args(remote_code_checkpoint, tiny_artifacts):
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from cora_ray.config import from_dict
    from serve.app import AppArgs, load_scorer

    assert from_dict(AppArgs, {}).trust_remote_code is False
    assert from_dict(AppArgs, {"trust_remote_code": True}).trust_remote_code is True
    with pytest.raises(ConfigError, match="trust_remote_code: true"):
        load_scorer(remote_code_checkpoint, tiny_artifacts.data_uri, "cpu", None)
    scorer = load_scorer(remote_code_checkpoint, tiny_artifacts.data_uri, "cpu", None, trust_remote_code=True)
    assert scorer.uri == remote_code_checkpoint
