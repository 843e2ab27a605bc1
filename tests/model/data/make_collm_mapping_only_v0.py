"""Writes collm_mapping_only_v0.{safetensors,json}: a CoLLM checkpoint state made by the code before
`model.collm_variant` existed (cora_ray/model/baselines.py at commit 7b584ba), and its scores on a fixed
batch. tests/model/test_baselines.py checks that today's code loads it under the same names and scores it
the same. Run from the repository root (it reads the old file with `git show`):

    .venv/bin/python tests/model/data/make_collm_mapping_only_v0.py
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

HERE = Path(__file__).resolve().parent
OLD_COMMIT = "7b584ba"


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def main() -> None:
    source = subprocess.run(
        ["git", "show", f"{OLD_COMMIT}:cora_ray/model/baselines.py"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "old_baselines.py").write_text(source)
        old = _load("old_baselines", Path(tmp) / "old_baselines.py")
    tiny = _load("tiny_conftest", HERE.parent / "conftest.py")
    torch.manual_seed(0)
    cfg = tiny.small_model_config("collm")  # collm_hidden 32
    llm = tiny.tiny_llm(0)
    model = old.CoLLMModel(llm, tiny.TableCF(), cfg).eval()
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for p in model.trainable_parameters():  # a trained-looking state, not the init
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        scores = model(tiny.make_batch(B=6, T=12, seed=5))
    state = {k: v.contiguous() for k, v in model.trainable_state_dict().items()}
    save_file(state, str(HERE / "collm_mapping_only_v0.safetensors"))
    record = {
        "made_by": f"cora_ray/model/baselines.py CoLLMModel at commit {OLD_COMMIT} (before model.collm_variant)",
        "model_config": {"method": "collm", "collm_hidden": 32},
        "batch": {"B": 6, "T": 12, "seed": 5},
        "llm_seed": 0,
        "llm_fingerprint": float(sum(p.double().sum() for p in llm.model.parameters())),
        "names": sorted(state),
        "scores": [float(x) for x in scores],
    }
    (HERE / "collm_mapping_only_v0.json").write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
