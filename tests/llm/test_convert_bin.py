"""Base LLMs whose weights are PyTorch `.bin` shards (Vicuna-7B v1.5): converted once per machine into a
safetensors cache with the restricted unpickler, from a local directory, an s3:// prefix or the HF hub
cache; the driver's tokenizer-only load fetches no weights."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cora_ray import storage
from cora_ray.config import LLMConfig
from cora_ray.errors import ModelError
from cora_ray.llm import loading
from cora_ray.llm.cache import MARKER
from cora_ray.llm.convert_bin import BIN_INDEX, convert_bin_dir, needs_conversion
from cora_ray.llm.loading import load_llm, load_tokenizer
from cora_ray.llm.tiny import tiny_llm
from tests.llm.hub_cache import fake_hub_cache

REPO = Path(__file__).resolve().parents[2]
IDS = torch.tensor([[2, 10, 11, 12, 13], [2, 20, 21, 22, 23]])
SHARDS = ["pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin"]


def write_bin_model(path: Path, seed: int = 1) -> Path:
    """The tiny LLaMA as a hub repo publishes Vicuna: config, tokenizer, two `.bin` shards + their index.

    Input embeddings and LM head are tied (one storage); both names go into the first shard, as
    `torch.save` of a tied state dict writes them (shared)."""
    llm = tiny_llm(seed=seed)
    path.mkdir(parents=True)
    llm.model.config.save_pretrained(path)
    llm.tokenizer.save_pretrained(path)
    sd = llm.model.state_dict()
    assert sd["lm_head.weight"].data_ptr() == sd["model.embed_tokens.weight"].data_ptr()
    names = [n for n in sd if n != "lm_head.weight"]
    first = names[: len(names) // 2] + ["lm_head.weight"]
    weight_map = {}
    for shard, keys in zip(SHARDS, [first, names[len(names) // 2 :]], strict=True):
        torch.save({k: sd[k] for k in keys}, path / shard)
        weight_map.update(dict.fromkeys(keys, shard))
    (path / BIN_INDEX).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return path


@pytest.fixture()
def bin_dir(tmp_path) -> Path:
    return write_bin_model(tmp_path / "tiny-bin")


def reference_logits() -> torch.Tensor:
    with torch.no_grad():
        return tiny_llm(seed=1).model(IDS).logits


def logits(llm) -> torch.Tensor:
    with torch.no_grad():
        return llm.model(IDS).logits


def _no_second_conversion(monkeypatch) -> None:
    def fail(*args, **kwargs):
        raise AssertionError("converted again")

    monkeypatch.setattr(loading, "convert_bin_dir", fail)


def test_local_bin_directory_is_converted_once_and_gives_the_same_logits(bin_dir, tmp_path, monkeypatch):
    assert needs_conversion(bin_dir)
    cfg = LLMConfig(name_or_path=str(bin_dir), cache_dir=str(tmp_path / "cache"))
    llm = load_llm(cfg)
    torch.testing.assert_close(logits(llm), reference_logits(), rtol=0, atol=0)
    converted = llm.local_dir
    assert converted is not None and converted.parent == tmp_path / "cache" / "converted"
    assert llm.identity == str(bin_dir.resolve())  # the source names the model, not the cache path
    assert sorted(p.name for p in converted.glob("*.safetensors")) == [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ]
    index = json.loads((converted / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == {p.name for p in converted.glob("*.safetensors")}
    assert not list(converted.glob("*.bin")) and (converted / "tokenizer.json").is_file()
    marker = json.loads((converted / MARKER).read_text())
    # the tied LM head is stored once, as save_pretrained stores it: the hash equals the in-memory model's
    assert marker["tied_not_stored"] == {"lm_head.weight": "model.embed_tokens.weight"}
    assert llm.weight_hash == tiny_llm(seed=1).weight_hash == marker["weight_hash"]

    _no_second_conversion(monkeypatch)
    again = load_llm(cfg)
    assert again.local_dir == converted and again.weight_hash == llm.weight_hash
    torch.testing.assert_close(logits(again), reference_logits(), rtol=0, atol=0)


def test_shared_tensors_without_tied_config_are_stored_as_copies(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "config.json").write_text(json.dumps({"model_type": "llama", "tie_word_embeddings": False}))
    w = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    torch.save({"a.weight": w, "b.weight": w, "c.weight": w[1:].t()}, src / "pytorch_model.bin")
    out = tmp_path / "out"
    out.mkdir()
    summary = convert_bin_dir(src, out)
    assert summary["shared_stored_as_copies"] == ["b.weight"] and summary["tied_not_stored"] == {}
    from safetensors.torch import load_file

    back = load_file(str(out / "model.safetensors"))  # a single .bin becomes model.safetensors, no index
    assert (
        sorted(back) == ["a.weight", "b.weight", "c.weight"]
        and not (out / "model.safetensors.index.json").exists()
    )
    assert torch.equal(back["a.weight"], w) and torch.equal(back["b.weight"], w)
    assert torch.equal(back["c.weight"], w[1:].t())  # a non-contiguous view is written by value


def test_s3_prefix_with_bin_weights_downloads_and_converts_once(bin_dir, s3_bucket, tmp_path, monkeypatch):
    uri = f"{s3_bucket}/models/tiny-bin"
    storage.upload_dir(bin_dir, uri)
    cfg = LLMConfig(name_or_path=uri, cache_dir=str(tmp_path / "cache"))
    llm = load_llm(cfg)
    torch.testing.assert_close(logits(llm), reference_logits(), rtol=0, atol=0)
    assert llm.identity == uri and llm.weight_hash == tiny_llm(seed=1).weight_hash
    cached = llm.local_dir
    assert cached is not None and cached.parent == tmp_path / "cache" / "s3"
    assert not list(cached.glob("*.bin")) and len(list(cached.glob("*.safetensors"))) == 2
    # nothing but the published entry and its lock is left beside it (the .bin download is gone)
    assert sorted(p.name for p in cached.parent.iterdir()) == sorted([cached.name, f".{cached.name}.lock"])

    def fail(*args, **kwargs):
        raise AssertionError("downloaded again")

    monkeypatch.setattr(storage, "download_dir", fail)
    _no_second_conversion(monkeypatch)
    assert load_llm(cfg).weight_hash == llm.weight_hash


def test_s3_download_that_fails_midway_is_never_used_as_the_cache(bin_dir, s3_bucket, tmp_path, monkeypatch):
    uri = f"{s3_bucket}/models/tiny-bin"
    storage.upload_dir(bin_dir, uri)
    cfg = LLMConfig(name_or_path=uri, cache_dir=str(tmp_path / "cache"))
    original = storage._download_range
    calls = []

    def flaky(fs, info, dest, offset, length, source):
        calls.append(info.path)
        if info.path.endswith(SHARDS[1]):
            raise OSError("connection reset (simulated)")
        return original(fs, info, dest, offset, length, source)

    monkeypatch.setattr(storage, "_download_range", flaky)
    with pytest.raises(OSError, match="simulated"):
        load_llm(cfg)
    s3_cache = tmp_path / "cache" / "s3"
    assert [p.name for p in s3_cache.iterdir() if not p.name.endswith(".lock")] == []
    monkeypatch.setattr(storage, "_download_range", original)
    torch.testing.assert_close(logits(load_llm(cfg)), reference_logits(), rtol=0, atol=0)


def test_hub_id_with_bin_weights_from_the_offline_cache(bin_dir, tmp_path, monkeypatch):
    from huggingface_hub import constants

    hub = tmp_path / "hub"
    commit = fake_hub_cache(
        hub, "someorg/tiny-bin", bin_dir, commit="89abcdef0123456789abcdef0123456789abcdef"
    )
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub))
    monkeypatch.setattr(constants, "is_offline_mode", lambda: True)
    cfg = LLMConfig(name_or_path="someorg/tiny-bin", cache_dir=str(tmp_path / "cache"))
    llm = load_llm(cfg)
    assert llm.identity == f"hf:someorg/tiny-bin@{commit}"
    assert llm.local_dir is not None and llm.local_dir.parent == tmp_path / "cache" / "converted"
    torch.testing.assert_close(logits(llm), reference_logits(), rtol=0, atol=0)
    _no_second_conversion(monkeypatch)
    assert load_llm(cfg).local_dir == llm.local_dir


def test_a_bin_file_with_a_non_tensor_payload_is_refused_naming_the_file(bin_dir, tmp_path):
    # a pickle that would build an arbitrary object: the restricted unpickler refuses the global
    shard = torch.load(bin_dir / SHARDS[1], weights_only=True)
    torch.save({**shard, "training_args": argparse.Namespace(lr=1e-4)}, bin_dir / SHARDS[1])
    cfg = LLMConfig(name_or_path=str(bin_dir), cache_dir=str(tmp_path / "cache"))
    with pytest.raises(ModelError, match=rf"{SHARDS[1]}: refused to load.*weights_only=True"):
        load_llm(cfg)
    converted = tmp_path / "cache" / "converted"
    assert [p.name for p in converted.iterdir() if not p.name.endswith(".lock")] == []
    # allowed by the unpickler but not a weight: refused too
    torch.save({**shard, "step": 3}, bin_dir / SHARDS[1])
    with pytest.raises(ModelError, match=rf"{SHARDS[1]}: expected a dict of tensor name -> tensor"):
        load_llm(cfg)


_CONVERT_IN_PROCESS = """
import sys
from cora_ray.config import LLMConfig
from cora_ray.llm import loading

original = loading.convert_bin_dir

def counting(src, out):
    with open(sys.argv[3], "a") as f:
        f.write("converted\\n")
    return original(src, out)

loading.convert_bin_dir = counting
llm = loading.load_llm(LLMConfig(name_or_path=sys.argv[1], cache_dir=sys.argv[2]))
print(llm.weight_hash)
"""


@pytest.mark.slow
def test_two_processes_on_one_node_convert_once(bin_dir, tmp_path):
    counter = tmp_path / "conversions.txt"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    args = [str(bin_dir), str(tmp_path / "cache"), str(counter)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _CONVERT_IN_PROCESS, *args],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=300)[0].strip().splitlines()[-1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert counter.read_text().count("converted") == 1
    assert outs[0] == outs[1] == tiny_llm(seed=1).weight_hash


# ------------------------------------------------------------------------------------------------------
# the driver: tokenizer only
# ------------------------------------------------------------------------------------------------------


def test_driver_tokenizer_from_s3_fetches_no_weights(bin_dir, s3_bucket, tmp_path, monkeypatch):
    uri = f"{s3_bucket}/models/tiny-bin"
    storage.upload_dir(bin_dir, uri)

    def fail(*args, **kwargs):
        raise AssertionError("the driver downloaded the model directory")

    monkeypatch.setattr(storage, "download_dir", fail)
    tokenizer = load_tokenizer(LLMConfig(name_or_path=uri, cache_dir=str(tmp_path / "cache")))
    assert tokenizer.convert_tokens_to_ids("Yes") == tiny_llm(seed=1).tokenizer.convert_tokens_to_ids("Yes")
    fetched = [p for p in (tmp_path / "cache" / "tokenizers").iterdir() if p.is_dir()]
    assert len(fetched) == 1
    names = sorted(p.name for p in fetched[0].iterdir())
    assert "tokenizer.json" in names and "config.json" in names
    assert not [n for n in names if n.endswith((".bin", ".safetensors"))], names
    assert not (tmp_path / "cache" / "s3").exists() and not (tmp_path / "cache" / "converted").exists()


def test_driver_tokenizer_from_the_hub_asks_for_no_weight_files(bin_dir, tmp_path, monkeypatch):
    import fnmatch

    import huggingface_hub

    asked = []

    def snapshot_download(repo_id, local_files_only, allow_patterns):
        asked.append(list(allow_patterns))
        return str(bin_dir)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    tokenizer = load_tokenizer(LLMConfig(name_or_path="someorg/tiny-bin", cache_dir=str(tmp_path / "cache")))
    assert tokenizer.convert_tokens_to_ids("Yes") == tiny_llm(seed=1).tokenizer.convert_tokens_to_ids("Yes")
    assert len(asked) == 1
    weights = [*SHARDS, "model.safetensors", "model-00001-of-00002.safetensors", "consolidated.00.pth"]
    matched = [w for w in weights if any(fnmatch.fnmatch(w, p) for p in asked[0])]
    assert matched == [], f"tokenizer-only patterns {asked[0]} would fetch {matched}"
    assert not (tmp_path / "cache" / "converted").exists()
