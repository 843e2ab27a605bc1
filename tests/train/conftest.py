"""Tiny, real training inputs built once per session: a synthetic protocol dataset, an MF artifact pretrained
on it, and the tiny random LLaMA of cora_ray.llm.tiny saved as a Hugging Face directory (so the workers load it
with the real `load_llm`, hashes and all).

The tiny LLaMA is made to answer "Yes" too eagerly: its "Yes" row of the (tied) LM head is set so that
logit(Yes) - logit(No) is about +3 on these prompts. The labels are balanced, so its loss starts near 1.3
and the trainable parts (generator + P) bring it towards 0.69 within a few steps — a quick, robust signal
that the training loop optimises (a plain random tiny LLaMA scores ~0 and leaves little to learn in 12
steps)."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from cora_ray.config import ExperimentConfig, load_config

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # helper modules beside the tests (reload_check.py)
    sys.path.insert(0, str(HERE))

# ~16k train rows (one epoch is never finished), ~2.4k valid_small rows (validation scores a fixed 48)
SYN = {"users": 400, "items": 100, "seed": 0, "interactions_per_user": 60}
CF_FAST = [
    "model.dim=16",
    "model.init_std=0.01",
    "train.lr=1e-2",
    "train.batch_size=256",
    "train.max_epochs=6",
    "train.patience=3",
]
YES_BIAS = 3.0
# a small generator and short prompts: a step of the tiny model takes ~0.1 s
SMALL_MODEL = [
    "model.rank=4",
    "model.alpha=8",
    "model.generator.num_queries=2",
    "model.generator.num_layers=1",
    "model.generator.hidden_size=32",
    "model.generator.num_heads=2",
    "model.generator.ffn_size=64",
    "prompt.max_prompt_tokens=160",
    "prompt.max_history=5",
]


@dataclass
class TinyInputs:
    root: Path
    data_uri: str
    data_hash: str
    cf_uri: str
    llm_dir: str

    def overrides(self, storage: Path, **train) -> list[str]:
        base = {
            "max_steps": 12,
            "eval_every": 6,
            "micro_batch_size": 8,
            "warmup_steps": 2,
            "lr": 1e-2,
            "min_lr": 2e-3,
            "warmup_start_lr": 1e-3,
            "eval_limit": 48,
            "log_every": 4,
            "num_workers": 1,
            "zero_stage": 2,
            "storage_path": str(storage),
        }
        base.update(train)
        return [
            f"data.uri={self.data_uri}",
            f"model.cf_artifact={self.cf_uri}",
            f"llm.name_or_path={self.llm_dir}",
            "llm.answer_token=' Yes'",
            "llm.negative_token=' No'",
            *SMALL_MODEL,
            *(f"train.{k}={v}" for k, v in base.items()),
        ]

    def config(self, storage: Path, *extra: str, **train) -> ExperimentConfig:
        return load_config(ExperimentConfig, None, ["name=tiny", *self.overrides(storage, **train), *extra])


@pytest.fixture(scope="session")
def tiny_inputs(tmp_path_factory) -> TinyInputs:
    from cora_ray.cf.config import load_cf_config
    from cora_ray.cf.pretrain import pretrain_local
    from cora_ray.data.synthetic import prepare_synthetic
    from cora_ray.llm.tiny import tiny_llm

    root = tmp_path_factory.mktemp("train_inputs")
    data_uri = str(root / "data")
    manifest = prepare_synthetic(data_uri, **SYN)
    cf_uri = str(root / "cf_mf")
    pretrain_local(load_cf_config(None, CF_FAST), data_uri, cf_uri, log=None)
    llm_dir = root / "llm"
    llm = tiny_llm(seed=0)
    _bias_towards_yes(llm, data_uri, YES_BIAS)
    llm.model.save_pretrained(llm_dir)
    llm.tokenizer.save_pretrained(llm_dir)
    return TinyInputs(root, data_uri, manifest["hash"], cf_uri, str(llm_dir))


def _bias_towards_yes(llm, data_uri: str, bias: float) -> None:
    """Set W[yes] = W[no] + bias · h̄ / |h̄|² (h̄: the mean last hidden state of 64 train prompts)."""
    import numpy as np
    import torch

    from cora_ray.data import protocol
    from cora_ray.data.prompts import PromptEncoder
    from cora_ray.model.base import last_hidden_state
    from cora_ray.train.pipeline import collate_left_padded

    cfg = load_config(ExperimentConfig, None, SMALL_MODEL)
    enc = PromptEncoder(llm.tokenizer, cfg.prompt, protocol.titles_by_id(protocol.read_items(data_uri)))
    rows = protocol.read_split(data_uri, "train").slice(0, 64)
    batch = enc(
        {
            "user_id": rows["user_id"].to_numpy(),
            "item_id": rows["item_id"].to_numpy(),
            "label": rows["label"].to_numpy(),
            "history": rows["history"].to_pylist(),
        }
    )
    tensors = collate_left_padded(batch, llm.tokenizer.pad_token_id)
    with torch.no_grad():
        h = last_hidden_state(llm.model, tensors["attention_mask"], input_ids=tensors["input_ids"]).mean(0)
        head = llm.model.get_output_embeddings().weight
        head[llm.answer_token_id] = head[llm.negative_token_id] + bias * h / h.dot(h)
    assert np.isfinite(head.sum().item())


def read_progress(run_uri: str) -> list[dict]:
    return [
        json.loads(line) for line in Path(run_uri, "progress.jsonl").read_text().splitlines() if line.strip()
    ]


@pytest.fixture(scope="session")
def progress_records():
    """`progress_records(run_uri)` → the run's progress.jsonl as a list of dicts (a fixture: test modules
    cannot import conftest under importlib import mode)."""
    return read_progress
