"""Weight hashes that identify a base LLM: sha256 over its state-dict tensors in a canonical order.

For every tensor, sorted by name, the hash takes the name, the dtype, the shape and the raw bytes. The
hash of a model directory is computed from its stored weights (the `*.safetensors` files), so a model run
in bf16 on a GPU and in fp32 on a CPU has the same hash: it names the weights, not how they are run.
`model_weight_hash` computes the same quantity from a model in memory (tied tensors counted once, under
the name of the module that owns them, as `save_pretrained` stores them); it equals the file hash when the
model holds the stored dtype.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
from safetensors import safe_open

from cora_ray.errors import ModelError

HASH_SCHEME = "sha256/name-dtype-shape-bytes/v1"


def _sha256_sorted(items: Iterable[tuple[str, torch.Tensor]]) -> str:
    h = hashlib.sha256(HASH_SCHEME.encode())
    for name, t in items:
        header = [name, str(t.dtype).removeprefix("torch."), list(t.shape)]
        h.update(json.dumps(header, separators=(",", ":")).encode())
        # bytes through a uint8 view: works for every dtype (bf16 has no numpy equivalent)
        h.update(t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def state_dict_sha256(named_tensors: Iterable[tuple[str, torch.Tensor]]) -> str:
    """sha256 hex over (name, dtype, shape, bytes) of each tensor, in name order. Names must be unique."""
    items = sorted(named_tensors, key=lambda kv: kv[0])
    names = [k for k, _ in items]
    if len(set(names)) != len(names):
        raise ModelError("cannot hash weights: duplicate tensor names")
    return _sha256_sorted(items)


def _unique_state_dict(model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """The state dict with tied (shared-storage) tensors kept once, under their first name in module order."""
    seen: set[tuple[int, tuple[int, ...], tuple[int, ...]]] = set()
    for name, t in model.state_dict().items():
        key = (t.data_ptr(), tuple(t.shape), tuple(t.stride()))
        if t.numel() and key in seen:
            continue
        seen.add(key)
        yield name, t


def model_weight_hash(model: torch.nn.Module) -> str:
    """`state_dict_sha256` of a model in memory (tied weights counted once), in the dtype it holds."""
    return state_dict_sha256(_unique_state_dict(model))


def safetensors_files(directory: Path) -> list[Path]:
    """The weight files of a Hugging Face model directory (sharded or not), sorted."""
    return sorted(Path(directory).glob("*.safetensors"))


def safetensors_weight_hash(directory: Path) -> str:
    """`state_dict_sha256` over the tensors of the `*.safetensors` files in `directory`, read one at a time."""
    files = safetensors_files(directory)
    if not files:
        raise ModelError(f"no *.safetensors files in {directory}")
    with contextlib.ExitStack() as stack:
        where = {}
        for f in files:
            sf = stack.enter_context(safe_open(str(f), framework="pt"))
            for name in sf.keys():
                if name in where:
                    raise ModelError(
                        f"tensor '{name}' is stored twice in {directory} ({f.name} and another shard)"
                    )
                where[name] = sf
        return _sha256_sorted((name, where[name].get_tensor(name)) for name in sorted(where))


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    """sha256 hex of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
