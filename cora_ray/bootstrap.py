"""The inputs a training run needs — a protocol dataset and, for CoRA / CoLLM, a CF artifact — and the exact
commands that make them.

- `prepare_data_command` / `pretrain_cf_command`: the job a user types, for error messages and hints.
- `build_missing_demo_inputs`: what `python jobs/train.py` (no arguments) and `make demo` run first: real ML-1M
  from the installed package (seconds) and an MF artifact on it (Ray start-up + MF epochs: 1-3 min on 2 shared
  cores), each only when its directory has no manifest.json. Each step is the job a user would type, printed
  first and run as a subprocess.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
import time
from pathlib import Path

from cora_ray import storage
from cora_ray.capabilities import capabilities
from cora_ray.config import ExperimentConfig

CF_BACKBONES = ("lightgcn", "sasrec", "mf")  # looked for in this order (a name holding "mf" may be "..._mf")


def prepare_data_command(cfg: ExperimentConfig, out: str, python: str = "python") -> str:
    """The `jobs/prepare_data.py` command that writes the dataset `cfg` trains on to `out`."""
    if cfg.prompt.domain == "book":
        dataset = "amazon-book --source <DIR with Books_5.json.gz and meta_Books.json.gz>"
    else:
        dataset = "ml-1m"
    return f"{python} jobs/prepare_data.py --dataset {dataset} --out {out}"


def guess_backbone(cfg: ExperimentConfig) -> str:
    """The CF backbone a config's artifact was meant to be (from its URI, else the config name), else the
    one the method's paper pairs it with (CoLLM: MF; cora_ray/capabilities.py), else the three choices."""
    uri = (cfg.model.cf_artifact or "").rstrip("/")
    for text in (uri.rsplit("/", 1)[-1].lower(), cfg.name.lower()):
        for backbone in CF_BACKBONES:
            if backbone in text:
                return backbone
    return capabilities(cfg.model.method).paper_cf_backbone or "mf|lightgcn|sasrec"


def pretrain_cf_command(cfg: ExperimentConfig, python: str = "python") -> str:
    """The `jobs/pretrain_cf.py` command that writes the CF artifact `cfg` names."""
    return (
        f"{python} jobs/pretrain_cf.py --data {cfg.data.uri} --backbone {guess_backbone(cfg)} "
        f"--out {cfg.model.cf_artifact}"
    )


def has_manifest(uri: str, endpoint: str | None = None, root: Path | None = None) -> bool:
    """Whether `uri` is a complete artifact directory (its manifest.json, written last, exists); a relative
    local path is taken relative to `root` when given."""
    if root is not None and not storage.is_s3(uri) and not Path(uri).is_absolute():
        uri = str(root / uri)
    return storage.exists(storage.join(uri, storage.MANIFEST), endpoint)


def run_step(
    cmd: list[str], root: Path, timings: dict[str, float], name: str, prefix: str = "[demo]"
) -> None:
    """Run one job as a subprocess in `root` (printed first); SystemExit naming it when it fails."""
    print(f"\n{prefix} $ {shlex.join(cmd)}", flush=True)
    t0 = time.perf_counter()
    rc = subprocess.call(cmd, cwd=root)
    timings[name] = time.perf_counter() - t0
    if rc != 0:
        raise SystemExit(f"{prefix} step '{name}' failed with exit code {rc}: {shlex.join(cmd)}")


def build_missing_demo_inputs(
    root: Path,
    data: str,
    cf: str | None,
    *,
    python: str = sys.executable,
    timings: dict[str, float] | None = None,
    prefix: str = "[demo]",
) -> list[str]:
    """Make the demo's ML-1M dataset at `data` and MF artifact at `cf` where missing; return what was built.

    `root` is the repository (the jobs run there, so relative paths are relative to it); `data` and `cf` are
    local paths or s3:// URIs; `cf` None: a method without CF vectors (TALLRec, zero-shot) needs no artifact."""
    timings = {} if timings is None else timings
    built: list[str] = []
    if has_manifest(data, root=root):
        print(f"{prefix} reusing the dataset at {data}", flush=True)
    else:
        run_step(
            [python, "jobs/prepare_data.py", "--dataset", "ml-1m", "--out", data],
            root,
            timings,
            "prepare_data",
            prefix,
        )
        built.append(data)
    if cf is None:
        pass
    elif has_manifest(cf, root=root):
        print(f"{prefix} reusing the MF artifact at {cf}", flush=True)
    else:
        run_step(
            [python, "jobs/pretrain_cf.py", "--data", data, "--backbone", "mf", "--out", cf],
            root,
            timings,
            "pretrain_cf",
            prefix,
        )
        built.append(cf)
    return built


def missing_inputs_message(cfg: ExperimentConfig) -> str | None:
    """None when the dataset (and the CF artifact CoRA / CoLLM need) are complete; else one message naming
    each missing input and the exact command that makes it."""
    endpoint = cfg.data.s3_endpoint
    problems = []

    def state(uri: str) -> str:
        return (
            "incomplete (no manifest.json: a write did not finish?)"
            if storage.exists(uri, endpoint)
            else ("(no manifest.json)")
        )

    if not has_manifest(cfg.data.uri, endpoint):
        problems.append(
            f"dataset not found: {cfg.data.uri} {state(cfg.data.uri)}; make it with "
            f"`{prepare_data_command(cfg, cfg.data.uri)}`"
        )
    uri = cfg.model.cf_artifact
    if capabilities(cfg.model.method).needs_cf and uri and not has_manifest(uri, endpoint):
        problems.append(
            f"CF artifact not found: {uri} {state(uri)}; make it with `{pretrain_cf_command(cfg)}`"
        )
    return "; ".join(problems) or None
