"""Convert a Hugging Face model directory whose weights are PyTorch `.bin` files into safetensors.

Many hub models (Vicuna-7B v1.5 among them) publish only `pytorch_model-XXXXX-of-YYYYY.bin` shards. Those
are pickles, so they are read with `torch.load(weights_only=True, mmap=True)`: the restricted unpickler
accepts tensors and plain containers only, and refuses anything else (code, custom classes) with a
ModelError that names the file; mmap keeps one shard's bytes in the page cache instead of in memory.

    convert_bin_dir(src, out)      # out/: model-00001-of-00002.safetensors, ..., model.safetensors.index.json,
                                   #       config.json, tokenizer files (copied)

Each input shard becomes one output shard, so memory stays at about one shard. Tensors that share storage
(tied input embeddings and LM head) are written once under the first name when config.json says
`tie_word_embeddings: true` (as `save_pretrained` does), else each as its own copy. Every written tensor
is compared with the one read from the `.bin` file before the conversion counts.
"""

from __future__ import annotations

import json
import pickle
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from cora_ray.errors import ModelError
from cora_ray.llm.hashing import safetensors_weight_hash

BIN_INDEX = "pytorch_model.bin.index.json"
BIN_SINGLE = "pytorch_model.bin"
SAFE_INDEX = "model.safetensors.index.json"
SAFE_SINGLE = "model.safetensors"
# files of a model directory copied next to the converted weights (config, tokenizer, chat template)
SIDE_FILE_SUFFIXES = (".json", ".model", ".txt", ".jinja", ".tiktoken", ".py")


def bin_weight_files(directory: Path) -> list[Path]:
    """The `.bin` weight files of a model directory: those its `pytorch_model.bin.index.json` names, else
    `pytorch_model.bin`; [] when there are none. A file the index names but the directory lacks is an error."""
    directory = Path(directory)
    index = directory / BIN_INDEX
    if index.is_file():
        weight_map = _read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ModelError(f"{index}: no weight_map")
        files = [directory / name for name in sorted(set(weight_map.values()))]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise ModelError(f"{index} names shards that are not in {directory}: {missing}")
        return files
    single = directory / BIN_SINGLE
    return [single] if single.is_file() else []


def needs_conversion(directory: Path) -> bool:
    """True when a model directory holds `.bin` weights and no `*.safetensors`."""
    directory = Path(directory)
    return not any(directory.glob("*.safetensors")) and bool(bin_weight_files(directory))


def load_bin_shard(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of one `.bin` file, read with the restricted unpickler (`weights_only=True`) and mmap.

    Raises ModelError naming the file when it holds anything but a flat dict of name -> tensor."""
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(
            f"{path}: refused to load: it holds more than tensors (torch.load weights_only=True said: {first}). "
            "Only plain tensor state dicts are converted; nothing in it was executed"
        ) from None
    except RuntimeError as exc:
        raise ModelError(f"{path}: not a readable PyTorch weight file ({exc})") from None
    if not isinstance(obj, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    ):
        kinds = (
            sorted({type(v).__name__ for v in obj.values()})
            if isinstance(obj, dict)
            else [type(obj).__name__]
        )
        raise ModelError(f"{path}: expected a dict of tensor name -> tensor, found {kinds}")
    return obj


def convert_bin_dir(src: Path, out: Path) -> dict[str, Any]:
    """Write the safetensors version of the model directory `src` into the existing directory `out`.

    Returns a summary (the marker content of the cache): source files, shared tensors, seconds, weight hash.
    """
    src, out = Path(src), Path(out)
    t0 = time.perf_counter()
    files = bin_weight_files(src)
    if not files:
        raise ModelError(f"{src}: no {BIN_INDEX} or {BIN_SINGLE} to convert")
    config = _read_json(src / "config.json") if (src / "config.json").is_file() else {}
    tied = config.get("tie_word_embeddings") is True
    n = len(files)
    names = [SAFE_SINGLE] if n == 1 else [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]
    weight_map: dict[str, str] = {}
    dropped: dict[str, str] = {}  # tied duplicate -> the name it is stored under
    copied: list[str] = []
    total_size = 0
    for bin_file, name in zip(files, names, strict=True):
        tensors = load_bin_shard(bin_file)
        to_write: dict[str, torch.Tensor] = {}
        owner: dict[tuple[int, int, tuple[int, ...], tuple[int, ...]], str] = {}
        for key, t in tensors.items():
            if key in weight_map or key in to_write:
                raise ModelError(
                    f"tensor '{key}' is stored twice in {src} ({bin_file.name} and another shard)"
                )
            ident = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()))
            if t.numel() and ident in owner:
                if tied:
                    dropped[key] = owner[ident]
                    continue
                copied.append(key)
                to_write[key] = t.clone()
                continue
            owner[ident] = key
            to_write[key] = t.contiguous()
        _save_shard(to_write, out / name, bin_file)
        for key, t in to_write.items():
            weight_map[key] = name
            total_size += t.numel() * t.element_size()
        del tensors, to_write
    if n > 1:
        index = {"metadata": {"total_size": total_size}, "weight_map": dict(sorted(weight_map.items()))}
        (out / SAFE_INDEX).write_text(json.dumps(index, indent=2) + "\n")
    side_files = _copy_side_files(src, out)
    return {
        "source_format": "pytorch .bin (torch.load weights_only=True)",
        "bin_files": [f.name for f in files],
        "safetensors_files": names,
        "tied_not_stored": dropped,
        "shared_stored_as_copies": sorted(copied),
        "copied_files": side_files,
        "conversion_seconds": round(time.perf_counter() - t0, 1),
        "weight_hash": safetensors_weight_hash(out),
    }


def _save_shard(tensors: dict[str, torch.Tensor], path: Path, source: Path) -> None:
    """Write one safetensors file and check every tensor in it equals its source (dtype, shape, values)."""
    save_file(tensors, str(path), metadata={"format": "pt"})
    with safe_open(str(path), framework="pt") as written:
        if set(written.keys()) != set(tensors):
            raise ModelError(f"converting {source}: {path.name} does not hold the tensors it was given")
        for key, t in tensors.items():
            back = written.get_tensor(key)
            if back.dtype != t.dtype or back.shape != t.shape or not torch.equal(back, t):
                raise ModelError(f"converting {source}: tensor '{key}' differs after writing {path.name}")


def _copy_side_files(src: Path, out: Path) -> list[str]:
    copied = []
    for f in sorted(src.iterdir()):
        if not f.is_file() or f.name in (BIN_INDEX, SAFE_INDEX) or not f.name.endswith(SIDE_FILE_SUFFIXES):
            continue
        shutil.copyfile(f, out / f.name)
        copied.append(f.name)
    if "config.json" not in copied:
        raise ModelError(f"{src}: not a Hugging Face model directory (no config.json)")
    return copied


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(f"{path}: not readable JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ModelError(f"{path}: expected a JSON object")
    return data
