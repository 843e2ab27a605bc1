"""Input checks of a CF pretraining run that need neither torch nor Ray, so bad input fails in a second."""

from __future__ import annotations

from cora_ray import storage
from cora_ray.cf.config import CFTrainConfig
from cora_ray.data import protocol
from cora_ray.errors import DataError


def check_inputs(data_uri: str, cfg: CFTrainConfig, endpoint: str | None = None) -> dict:
    """The dataset is complete (has a valid manifest) and the splits the run uses are not empty."""
    manifest = protocol.read_manifest(data_uri, endpoint)  # StorageError when there is no manifest
    counts = manifest.get("counts") or {}
    for split in dict.fromkeys(("train", cfg.train.eval_split, "valid", "test")):
        if split not in counts:
            raise DataError(f"{data_uri}: the manifest lists no split '{split}' (counts: {counts})")
        if int(counts[split]) == 0:
            raise DataError(
                f"{data_uri}: split '{split}' is empty; a CF model cannot be trained/evaluated on it"
            )
    for key in ("users", "items"):
        if int(manifest.get(key) or 0) < 1:
            raise DataError(f"{data_uri}: the manifest counts {manifest.get(key)!r} {key}")
    return manifest


def check_out(out_uri: str, overwrite: bool, endpoint: str | None = None) -> None:
    """Refuse to start a run whose result could not be published."""
    storage.refuse_existing(out_uri, "a complete artifact", overwrite, endpoint)
