"""Loading the frozen base LLM: tiny in-process models, HF directories, s3:// prefixes, hub ids, the
bundled SmolLM2 (slow), weight hashes and the convert-once cache."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cora_ray import storage
from cora_ray.config import LLMConfig
from cora_ray.errors import ModelError
from cora_ray.llm import cache as llm_cache
from cora_ray.llm import hashing, loading
from cora_ray.llm.cache import MARKER, build_once
from cora_ray.llm.hashing import model_weight_hash, safetensors_weight_hash
from cora_ray.llm.loaded import prepare_tokenizer, resolve_dtype, single_token_id
from cora_ray.llm.loading import load_llm
from cora_ray.llm.tiny import tiny_llm, tiny_tokenizer
from tests.llm.hub_cache import fake_hub_cache

# ------------------------------------------------------------------------------------------------------
# tiny model
# ------------------------------------------------------------------------------------------------------


def test_tiny_llm_is_deterministic_and_frozen():
    llm = tiny_llm(seed=3)
    again = tiny_llm(seed=3)
    assert llm.weight_hash == again.weight_hash == model_weight_hash(again.model)
    assert tiny_llm(seed=4).weight_hash != llm.weight_hash
    assert not llm.model.training
    assert all(not p.requires_grad for p in llm.model.parameters())
    assert llm.hidden_size == 64 and llm.num_layers == 2 and llm.dtype == torch.float32
    names = {n.rsplit(".", 1)[-1] for n, _ in llm.model.named_modules()}
    assert {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"} <= names


def test_tiny_llm_does_not_touch_the_global_rng():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    tiny_llm(seed=0)
    assert torch.equal(torch.rand(3), expected)


def test_tiny_tokenizer_answer_tokens_padding_and_chat_template():
    llm = tiny_llm()
    tok = llm.tokenizer
    assert tok.padding_side == "left" and tok.pad_token == "[PAD]"
    assert llm.answer_token_id == single_token_id(tok, "Yes") == tok.convert_tokens_to_ids("Yes")
    assert llm.negative_token_id == tok.convert_tokens_to_ids("No")
    ids = tok('Answer with "Yes" or "No". \\n#Answer: 1995')["input_ids"]
    assert ids[0] == tok.bos_token_id and tok.unk_token_id not in ids
    batch = tok(["A user", "A user has given"], padding=True, return_tensors="pt")
    assert batch["attention_mask"][0, 0] == 0 and batch["attention_mask"][:, -1].all()
    chat = tok.apply_chat_template(
        [{"role": "user", "content": "Yes"}], add_generation_prompt=True, tokenize=False
    )
    assert chat.endswith("<|im_start|>assistant\n")


def test_answer_token_that_is_not_one_token_is_a_clear_error():
    with pytest.raises(
        ModelError, match=r"answer token ' Toy Story' must encode to exactly one token.*\['Toy', 'Story'\]"
    ):
        tiny_llm(answer_token=" Toy Story")
    with pytest.raises(ModelError, match="negative token"):
        tiny_llm(negative_token="No No")


def test_single_token_id_suggests_the_variant_that_is_one_token():
    class Spaced:  # a tokenizer where " Yes" is two tokens but "Yes" is one (SentencePiece-like)
        def encode(self, text, add_special_tokens=False):
            return [7, 8] if text.startswith(" ") else [8]

        def convert_ids_to_tokens(self, ids):
            return ["▁", "▁Yes"][: len(ids)]

    with pytest.raises(ModelError, match=r"'Yes' is one token \(id 8\)"):
        single_token_id(Spaced(), " Yes")


def test_pad_token_falls_back_to_eos():
    tok = tiny_tokenizer()
    tok.pad_token = None
    prepare_tokenizer(tok)
    assert tok.pad_token == tok.eos_token and tok.padding_side == "left"


def test_dtype_auto_is_fp32_on_cpu_and_bf16_on_cuda():
    assert resolve_dtype("auto", "cpu") == torch.float32
    assert resolve_dtype("auto", "cuda") == torch.bfloat16
    assert resolve_dtype("float16", "cpu") == torch.float16
    assert resolve_dtype(torch.bfloat16, "cpu") == torch.bfloat16
    with pytest.raises(ModelError, match="unknown dtype"):
        resolve_dtype("fp8", "cpu")


# ------------------------------------------------------------------------------------------------------
# directories, hashes, s3, hub
# ------------------------------------------------------------------------------------------------------


@pytest.fixture()
def tiny_dir(tmp_path) -> Path:
    llm = tiny_llm(seed=1)
    path = tmp_path / "tiny-model"
    llm.model.save_pretrained(path)
    llm.tokenizer.save_pretrained(path)
    return path


def test_file_hash_equals_in_memory_hash_of_the_same_weights(tiny_dir):
    assert safetensors_weight_hash(tiny_dir) == tiny_llm(seed=1).weight_hash


def test_load_local_directory(tiny_dir, tmp_path):
    llm = load_llm(LLMConfig(name_or_path=str(tiny_dir), cache_dir=str(tmp_path / "cache")))
    assert llm.identity == str(tiny_dir.resolve()) and llm.local_dir == tiny_dir.resolve()
    assert llm.weight_hash == tiny_llm(seed=1).weight_hash
    assert all(not p.requires_grad for p in llm.model.parameters()) and not llm.model.training
    assert llm.tokenizer.padding_side == "left"
    assert llm.answer_token_id == llm.tokenizer.convert_tokens_to_ids("Yes") and llm.negative_token_id is None
    assert llm.hidden_size == 64 and llm.dtype == torch.float32
    reference = tiny_llm(seed=1).model
    ids = torch.tensor([[2, 10, 11, 12]])
    torch.testing.assert_close(llm.model(ids).logits, reference(ids).logits, rtol=0, atol=0)


def test_weight_hash_names_the_stored_weights_whatever_the_runtime_dtype(tiny_dir, tmp_path):
    cfg = LLMConfig(name_or_path=str(tiny_dir), cache_dir=str(tmp_path / "cache"))
    fp32 = load_llm(cfg)
    bf16 = load_llm(cfg, dtype="bfloat16")
    assert bf16.dtype == torch.bfloat16 and next(bf16.model.parameters()).dtype == torch.bfloat16
    assert bf16.weight_hash == fp32.weight_hash


def test_weight_hash_is_computed_once_per_directory(tiny_dir, tmp_path, monkeypatch):
    cfg = LLMConfig(name_or_path=str(tiny_dir), cache_dir=str(tmp_path / "cache"))
    first = load_llm(cfg).weight_hash
    assert len(list((tmp_path / "cache" / "hashes").glob("*.json"))) == 1

    def fail(directory):
        raise AssertionError("hashed again")

    monkeypatch.setattr(llm_cache, "safetensors_weight_hash", fail)
    assert load_llm(cfg).weight_hash == first


def test_weight_hash_is_deterministic_and_sensitive_to_every_byte():
    model = tiny_llm(seed=0).model
    before = model_weight_hash(model)
    assert model_weight_hash(model) == before
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight[3, 5] += 1e-6
    assert model_weight_hash(model) != before
    # names and order: the same tensors under another order hash the same
    sd = list(model.state_dict().items())
    assert hashing.state_dict_sha256(sd) == hashing.state_dict_sha256(list(reversed(sd)))


def test_load_from_s3_prefix_downloads_once(tiny_dir, s3_bucket, tmp_path, monkeypatch):
    uri = f"{s3_bucket}/models/tiny"
    storage.upload_dir(tiny_dir, uri)
    cfg = LLMConfig(name_or_path=uri, cache_dir=str(tmp_path / "cache"))
    llm = load_llm(cfg)
    assert llm.identity == uri
    assert llm.weight_hash == tiny_llm(seed=1).weight_hash
    assert llm.local_dir is not None and (llm.local_dir / MARKER).is_file()

    def fail(*args, **kwargs):
        raise AssertionError("downloaded twice")

    monkeypatch.setattr(storage, "download_dir", fail)
    assert load_llm(cfg).weight_hash == llm.weight_hash


def test_s3_prefix_without_a_model_is_a_clear_error(s3_bucket, tmp_path):
    with pytest.raises(ModelError, match="not a Hugging Face model directory on S3"):
        load_llm(LLMConfig(name_or_path=f"{s3_bucket}/nothing", cache_dir=str(tmp_path)))


def test_hub_id_loads_from_the_hf_cache_when_offline(tiny_dir, tmp_path, monkeypatch):
    from huggingface_hub import constants

    hub = tmp_path / "hub"
    fake_hub_cache(hub, "someorg/tiny-llama", tiny_dir, commit="0123456789abcdef0123456789abcdef01234567")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub))
    monkeypatch.setattr(constants, "is_offline_mode", lambda: True)
    llm = load_llm(LLMConfig(name_or_path="someorg/tiny-llama", cache_dir=str(tmp_path / "cache")))
    assert llm.identity == "hf:someorg/tiny-llama@0123456789abcdef0123456789abcdef01234567"
    assert llm.weight_hash == tiny_llm(seed=1).weight_hash


def test_hub_id_missing_from_the_cache_offline_is_a_clear_error(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    monkeypatch.setattr(constants, "is_offline_mode", lambda: True)
    with pytest.raises(
        ModelError, match=r"'nobody/no-model' is not in the Hugging Face cache.*HF_HUB_OFFLINE"
    ):
        load_llm(LLMConfig(name_or_path="nobody/no-model", cache_dir=str(tmp_path)))


def test_unknown_name_is_a_clear_error(tmp_path):
    with pytest.raises(ModelError, match="no such directory"):
        load_llm(LLMConfig(name_or_path="./not/here", cache_dir=str(tmp_path)))
    with pytest.raises(ModelError, match="unknown bundled model"):
        load_llm(LLMConfig(name_or_path="bundled:gpt-5", cache_dir=str(tmp_path)))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="no config.json"):
        load_llm(LLMConfig(name_or_path=str(tmp_path / "empty"), cache_dir=str(tmp_path)))


def test_remote_code_is_not_trusted_unless_configured(tiny_dir, tmp_path, monkeypatch):
    seen = []
    original = loading.AutoModelForCausalLM.from_pretrained

    def spy(*args, **kwargs):
        seen.append(kwargs["trust_remote_code"])
        return original(*args, **kwargs)

    monkeypatch.setattr(loading.AutoModelForCausalLM, "from_pretrained", spy)
    load_llm(LLMConfig(name_or_path=str(tiny_dir), cache_dir=str(tmp_path)))
    load_llm(LLMConfig(name_or_path=str(tiny_dir), cache_dir=str(tmp_path), trust_remote_code=True))
    assert seen == [False, True]


# ------------------------------------------------------------------------------------------------------
# build once: lock + atomic publish
# ------------------------------------------------------------------------------------------------------


REPO = Path(__file__).resolve().parents[2]

# Run in separate interpreters (spawned pool workers cannot import test modules under importlib mode).
_SLOW_BUILD = """
import sys, time
from pathlib import Path
from cora_ray.llm.cache import build_once

def build(tmp):
    with open(sys.argv[2], "a") as f:
        f.write("built\\n")
    time.sleep(0.5)
    (tmp / "weights.bin").write_bytes(b"x" * 1000)
    return {"built_at": time.time()}

print(build_once(Path(sys.argv[1]), build, what="test build")["built_at"])
"""


def _run_concurrently(script: str, args: list[str], n: int, timeout: float) -> list[str]:
    """Start `n` interpreters running `script` at once; their stdout lines, each checked for success."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, *args], cwd=REPO, env=env, stdout=subprocess.PIPE, text=True
        )
        for _ in range(n)
    ]
    outs = [p.communicate(timeout=timeout)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * n
    return [o.strip().splitlines()[-1] for o in outs]


def test_build_once_builds_once_across_processes(tmp_path):
    dest, counter = tmp_path / "cache" / "model", tmp_path / "counter.txt"
    stamps = _run_concurrently(_SLOW_BUILD, [str(dest), str(counter)], n=3, timeout=120)
    assert counter.read_text().count("built") == 1
    assert len(set(stamps)) == 1  # every process got the one build's marker
    assert (dest / "weights.bin").stat().st_size == 1000
    assert str(json.loads((dest / MARKER).read_text())["built_at"]) == stamps[0]
    assert [p.name for p in dest.parent.iterdir() if p.name.startswith(".model.tmp")] == []


def test_build_once_failure_publishes_nothing_and_the_next_call_builds(tmp_path):
    dest = tmp_path / "model"

    def broken(tmp: Path) -> dict:
        (tmp / "half.bin").write_bytes(b"x")
        raise RuntimeError("conversion failed")

    with pytest.raises(RuntimeError, match="conversion failed"):
        build_once(dest, broken, what="test")
    assert not dest.exists() and not list(tmp_path.glob(".model.tmp-*"))
    assert build_once(dest, lambda tmp: {"ok": 1}, what="test") == {"ok": 1}
    assert build_once(dest, broken, what="test") == {"ok": 1}  # complete: not rebuilt


# ------------------------------------------------------------------------------------------------------
# the bundled SmolLM2-135M-Instruct (slow: GGUF conversion ~30 s, then loads in seconds)
# ------------------------------------------------------------------------------------------------------


_CONVERT_BUNDLED = """
import json, sys
from cora_ray.llm.bundled import bundled_dir
print(json.dumps(bundled_dir("smollm2-135m", sys.argv[1])[1], sort_keys=True))
"""


@pytest.fixture(scope="module")
def bundled_cache(tmp_path_factory) -> tuple[str, list[dict], float]:
    """A fresh cache converted by two processes racing for it (one converts, the other waits)."""
    cache_dir = str(tmp_path_factory.mktemp("llm-cache"))
    t0 = time.perf_counter()
    markers = [
        json.loads(line) for line in _run_concurrently(_CONVERT_BUNDLED, [cache_dir], n=2, timeout=600)
    ]
    return cache_dir, markers, time.perf_counter() - t0


@pytest.mark.slow
def test_bundled_conversion_happens_once_under_the_lock(bundled_cache):
    cache_dir, markers, seconds = bundled_cache
    assert markers[0] == markers[1]  # the second process read the first one's marker
    dirs = [p for p in (Path(cache_dir) / "bundled").iterdir() if not p.name.endswith(".lock")]
    assert [p.name for p in dirs] == [f"smollm2-135m-{markers[0]['gguf_sha256'][:12]}"]
    assert {p.name for p in dirs[0].iterdir()} >= {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        MARKER,
    }
    print(
        f"GGUF conversion (2 racing processes): {seconds:.1f} s; in-process {markers[0]['conversion_seconds']} s"
    )


@pytest.mark.slow
def test_bundled_smollm2_loads_fast_with_the_design_facts(bundled_cache, monkeypatch):
    from cora_ray.llm import bundled

    cache_dir = bundled_cache[0]

    def fail(*args, **kwargs):
        raise AssertionError("converted again")

    monkeypatch.setattr(bundled, "convert_gguf", fail)
    t0 = time.perf_counter()
    llm = load_llm(LLMConfig(name_or_path="bundled:smollm2-135m", negative_token=" No", cache_dir=cache_dir))
    seconds = time.perf_counter() - t0
    print(f"cached load of the bundled model: {seconds:.1f} s")
    assert type(llm.model).__name__ == "LlamaForCausalLM"
    assert llm.num_layers == 30 and llm.hidden_size == 576
    assert llm.answer_token_id == 9230 and llm.negative_token_id == 2838
    assert llm.with_answer_tokens("Yes", "No").answer_token_id == single_token_id(llm.tokenizer, "Yes")
    assert sum(p.numel() for p in llm.model.parameters()) == pytest.approx(134.5e6, rel=0.01)
    assert all(not p.requires_grad for p in llm.model.parameters())
    assert llm.tokenizer.padding_side == "left" and llm.tokenizer.pad_token is not None
    assert llm.tokenizer.chat_template and "<|im_start|>" in llm.tokenizer.chat_template
    assert llm.identity.startswith("bundled:smollm2-135m@gguf-sha256:")
    assert llm.weight_hash == bundled_cache[1][0]["weight_hash"] == model_weight_hash(llm.model)
    names = {n.rsplit(".", 1)[-1] for n, _ in llm.model.named_modules()}
    assert {"q_proj", "k_proj", "v_proj", "o_proj"} <= names


@pytest.mark.slow
def test_converted_model_equals_the_gguf_model(bundled_cache):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cora_ray.llm.bundled import bundled_gguf_path

    gguf = bundled_gguf_path("smollm2-135m")
    ref_tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    ref = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
    ).eval()
    llm = load_llm(LLMConfig(name_or_path="bundled:smollm2-135m", cache_dir=bundled_cache[0]))
    prompt = (
        '#Question: A user has given high ratings to the following movies: "Toy Story (1995)", "Heat (1995)". '
        "Leverage the information to predict whether the user would enjoy the movie titled "
        '"Jumanji (1995)"? Answer with "Yes" or "No". \\n#Answer:'
    )
    chat = llm.tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
    )
    assert chat == ref_tok.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
    )
    for text in (prompt, chat):
        ids = llm.tokenizer(text, return_tensors="pt")["input_ids"]
        assert torch.equal(ids, ref_tok(text, return_tensors="pt")["input_ids"])
        with torch.no_grad():
            ours, theirs = llm.model(ids).logits, ref(ids).logits
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
        assert torch.isfinite(ours).all()
