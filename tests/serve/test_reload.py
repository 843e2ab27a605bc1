"""Reload in place (cora_ray/infer/reload.py): no second LLM, same scores as a fresh load, refusals.

Memory is measured as tensor bytes: at each stage of the reload (after the checks, after reading each
tensor, after applying) the bytes of every live torch tensor storage in the process (gc-reachable, each
storage counted once) plus the peak of Python allocations (tracemalloc: the streamed file chunks) during
the reload. The serving footprint is the model's own tensor bytes (LLM + CF + trainable parts).
"""

from __future__ import annotations

import gc
import tracemalloc

import numpy as np
import pytest
import torch

from cora_ray.errors import ArtifactMismatchError
from cora_ray.infer.scorer import Scorer
from cora_ray.infer.service import ScoreJob, ScorerOptions, ScoringEngine


def live_tensor_bytes() -> int:
    seen: set[int] = set()
    total = 0
    for obj in gc.get_objects():
        try:
            if not isinstance(obj, torch.Tensor):
                continue
            storage = obj.untyped_storage()
        except (ReferenceError, RuntimeError):
            continue
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            total += storage.nbytes()
    return total


def model_bytes(scorer) -> int:
    seen: set[int] = set()
    total = 0
    for t in [*scorer.model.parameters(), *scorer.model.buffers()]:
        if t.untyped_storage().data_ptr() not in seen:
            seen.add(t.untyped_storage().data_ptr())
            total += t.untyped_storage().nbytes()
    return total


def rows(setup):
    jobs = [ScoreJob("u", u, [1, 2, 3, 4], [5, 6]) for u in (1, 2, 3)]
    return jobs


def test_reload_swaps_trainables_in_place_with_the_scores_of_a_fresh_load(tiny_setup):
    engine = ScoringEngine(
        Scorer.from_checkpoint(tiny_setup.checkpoint_uri), ScorerOptions(cache_bytes=1 << 20)
    )
    llm_weight = engine.adapter.scorer.llm  # the same LLM object before and after
    before = [r.scores for r in engine.score_jobs(rows(tiny_setup))]
    engine.reload(tiny_setup.checkpoint2_uri)
    after = [r.scores for r in engine.score_jobs(rows(tiny_setup))]
    fresh = ScoringEngine(Scorer.from_checkpoint(tiny_setup.checkpoint2_uri), ScorerOptions(cache_bytes=0))
    expected = [r.scores for r in fresh.score_jobs(rows(tiny_setup))]
    assert engine.adapter.scorer.llm is llm_weight
    assert np.allclose(after, expected, atol=1e-5) and not np.allclose(before, after, atol=1e-4)
    info = engine.describe()
    assert info["checkpoint"] == tiny_setup.checkpoint2_uri and info["step"] == 20
    assert info["cache"]["version"] == info["model"] and info["cache"]["resets"] == 1


def test_reload_peak_memory_stays_below_1_2x_the_serving_footprint(tmp_path):
    from tests.serve.artifacts import build_tiny_setup

    # the tiny LLaMA at d_model 256 (16 MB): large enough that the fixed ~0.3 MB of Python I/O buffers of a
    # reload (manifest and file reads) do not decide the ratio; a second LLM would be +100 %
    setup = build_tiny_setup(
        tmp_path / "mem",
        llm={"hidden_size": 256, "intermediate_size": 1024, "num_layers": 4},
        generator={"hidden_size": 64, "ffn_size": 128},
    )
    scorer = Scorer.from_checkpoint(setup.checkpoint_uri)
    engine = ScoringEngine(scorer, ScorerOptions(cache_bytes=0))
    engine.score_jobs(rows(setup))
    engine.reload(setup.checkpoint2_uri)  # a first reload imports what reloading needs (code, not data)
    engine.reload(setup.checkpoint_uri)
    footprint = model_bytes(scorer)

    # tensor bytes held at each stage (the probe's own object list is not part of the reload)
    gc.collect()
    baseline = live_tensor_bytes()
    samples: list[int] = []
    engine.reload(setup.checkpoint2_uri, probe=lambda stage: samples.append(live_tensor_bytes()))
    assert len(samples) >= 3  # checked, one per tensor, applied
    tensor_extra = max(samples) - baseline

    # Python allocations of the same reload (file chunks, manifest, config), without the probe
    engine.reload(setup.checkpoint_uri)
    tracemalloc.start()
    try:
        engine.reload(setup.checkpoint2_uri)
        _, python_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    extra = tensor_extra + python_peak
    assert footprint + extra < 1.2 * footprint, (footprint, tensor_extra, python_peak)
    assert engine.describe()["checkpoint"] == setup.checkpoint2_uri


def test_a_checkpoint_of_another_base_llm_is_refused_naming_both_hashes(tiny_setup, tmp_path):
    from tests.serve.artifacts import build_tiny_setup

    other = build_tiny_setup(tmp_path / "other", seed=1)  # another random tiny LLM
    scorer = Scorer.from_checkpoint(tiny_setup.checkpoint_uri)
    engine = ScoringEngine(scorer, ScorerOptions(cache_bytes=0))
    before = [r.scores for r in engine.score_jobs(rows(tiny_setup))]
    served = scorer.manifest["base_llm"]["weight_hash"]
    import json
    from pathlib import Path

    theirs = json.loads((Path(other.checkpoint_uri) / "manifest.json").read_text())["base_llm"]["weight_hash"]
    assert served != theirs
    with pytest.raises(ArtifactMismatchError) as exc:
        engine.reload(other.checkpoint_uri)
    assert served in str(exc.value) and theirs in str(exc.value)
    assert engine.describe()["checkpoint"] == tiny_setup.checkpoint_uri
    assert [r.scores for r in engine.score_jobs(rows(tiny_setup))] == before


def test_a_corrupted_trainable_file_is_refused_before_anything_changes(tiny_setup, tmp_path):
    import shutil

    from cora_ray.errors import StorageError

    bad = tmp_path / "bad"
    shutil.copytree(tiny_setup.checkpoint2_uri, bad)
    f = bad / "trainable.safetensors"
    blob = bytearray(f.read_bytes())
    blob[-1] ^= 0xFF
    f.write_bytes(bytes(blob))
    engine = ScoringEngine(Scorer.from_checkpoint(tiny_setup.checkpoint_uri), ScorerOptions(cache_bytes=0))
    before = [r.scores for r in engine.score_jobs(rows(tiny_setup))]
    with pytest.raises(StorageError, match="sha256"):
        engine.reload(str(bad))
    assert [r.scores for r in engine.score_jobs(rows(tiny_setup))] == before
    assert engine.describe()["checkpoint"] == tiny_setup.checkpoint_uri
