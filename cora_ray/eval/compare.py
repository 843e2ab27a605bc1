"""The comparison job (docs/method.md §8): every method on one dataset → comparison.md + comparison.png.

    cfg = load_config(CompareConfig, "configs/compare_ml1m_cpu.yaml", overrides)
    summary = run_compare(cfg)

For each method of the config, in order:
1. results already at `<out>/runs/<slug>` made with the same data, splits, limit and seed → collected;
   a method of kind `results` points at an evaluation made elsewhere (e.g. on a GPU cluster);
2. otherwise its artifact (CF artifact, checkpoint — or a training run directory, whose best checkpoint by
   validation AUC is used — or the base LLM for zero-shot) is evaluated with `evaluate()`;
3. an artifact that does not exist yet is first produced by the method's `produce` commands (pretraining,
   training), run in order; without them the row is reported as "not run" (`strict` makes it an error).

The table puts the measured AUC / UAUC beside the paper's (docs/method.md §7); comparison.json holds everything.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Literal

from cora_ray import storage
from cora_ray.checkpoint import KIND as CHECKPOINT_KIND
from cora_ray.config import ExperimentConfig, _check, load_config, load_yaml, to_dict
from cora_ray.data import protocol
from cora_ray.errors import ConfigError, CoraError, StorageError
from cora_ray.eval.evaluate import evaluate, parse_splits, read_results, summary_table
from cora_ray.eval.report import ComparisonRow, comparison_markdown, dataset_label, paper_row, plot_comparison
from cora_ray.infer.source import ScorerSource


@dataclass
class CompareMethod:
    """One row of the comparison."""

    name: str  # the row label, e.g. "CoRA-MF"
    kind: Literal["cf", "checkpoint", "zero_shot", "results"]
    uri: str | None = None  # CF artifact | checkpoint or training run dir | an evaluation's output dir
    config: str | None = None  # zero_shot: experiment YAML whose llm + prompt sections are used
    overrides: list[str] = field(default_factory=list)  # dotted overrides of `config` (zero_shot)
    paper: str | None = None  # docs/method.md §7 row (default: looked up from `name`)
    produce: list[str] = field(
        default_factory=list
    )  # commands that create `uri` if missing ({python}: this Python)
    note: str = ""

    def __post_init__(self) -> None:
        _check(bool(self.name.strip()), "methods[].name must not be empty")
        if self.kind in ("cf", "checkpoint", "results"):
            _check(bool(self.uri), f"method {self.name!r}: kind {self.kind} needs a uri")


@dataclass
class CompareConfig:
    """A comparison run: one dataset, several methods, the same rows for all."""

    name: str = "comparison"
    dataset: str = "ml-1m"  # the paper's column: ml-1m | amazon-book
    data: str = "artifacts/ml-1m"  # protocol dataset URI
    out: str = "results/comparison"
    splits: list[str] = field(default_factory=lambda: ["test"])
    report_split: str = "test"
    limit: int | None = None  # None = the full split(s)
    seed: int = 42
    num_actors: int | None = None  # None = one per CPU (GPU with use_gpu); 0 = no Ray
    use_gpu: bool = False
    device: str = "cpu"
    dtype: str | None = None
    batch_size: int | None = None  # rows per forward pass inside a scorer
    s3_endpoint: str | None = None
    methods: list[CompareMethod] = field(default_factory=list)

    def __post_init__(self) -> None:
        _check(len(self.methods) > 0, "methods must list at least one method")
        names = [m.name for m in self.methods]
        _check(len(set(names)) == len(names), f"method names must be unique, got {names}")
        try:
            parse_splits(self.splits)
        except ConfigError as exc:
            raise ConfigError(f"splits: {exc}") from None
        _check(self.report_split in self.splits, f"report_split {self.report_split!r} must be one of splits")
        _check(self.limit is None or self.limit > 0, f"limit must be > 0, got {self.limit}")
        _check(self.dataset in ("ml-1m", "amazon-book") or bool(self.dataset), "dataset must be named")
        if self.use_gpu and self.device == "cpu":
            self.device = "cuda"


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_").lower() or "method"


def find_best_checkpoint(uri: str, endpoint: str | None = None) -> str:
    """`uri` itself when it is a checkpoint; else the checkpoint below it (a training run directory) with
    the best validation AUC (then the latest step). StorageError when there is none."""
    top = storage.join(uri, storage.MANIFEST)
    if storage.exists(top, endpoint):
        m = storage.read_json(top, endpoint)
        if isinstance(m, dict) and m.get("kind") == CHECKPOINT_KIND:
            return uri
    best: tuple[float, int, str] | None = None
    for f in storage.list_files(uri, endpoint, suffix="/" + storage.MANIFEST):
        try:
            m = storage.read_json(f, endpoint)
        except StorageError:
            continue
        if not isinstance(m, dict) or m.get("kind") != CHECKPOINT_KIND:
            continue
        auc = (m.get("metrics") or {}).get("valid_auc")
        key = (float(auc) if isinstance(auc, (int, float)) else float("-inf"), int(m.get("step") or 0), f)
        if best is None or key[:2] > best[:2]:
            best = key
    if best is None:
        raise StorageError(f"no checkpoint (manifest.json of kind {CHECKPOINT_KIND}) at or below {uri}")
    path = best[2][: -len("/" + storage.MANIFEST)]
    return path


def _artifact_exists(method: CompareMethod, endpoint: str | None) -> bool:
    if method.kind == "zero_shot":
        return True
    try:
        if method.kind == "checkpoint":
            find_best_checkpoint(method.uri, endpoint)
            return True
        return storage.exists(storage.join(method.uri, storage.MANIFEST), endpoint)
    except StorageError:
        return False


def _produce(method: CompareMethod, log) -> None:
    for cmd in method.produce:
        argv = [sys.executable if a == "{python}" else a for a in shlex.split(cmd)]
        log(f"[{method.name}] producing: {' '.join(argv)}")
        t0 = time.perf_counter()
        rc = subprocess.call(argv)
        if rc != 0:
            raise CoraError(f"method {method.name!r}: command failed with exit code {rc}: {cmd}")
        log(f"[{method.name}] done in {time.perf_counter() - t0:.0f} s")


def _source(cfg: CompareConfig, method: CompareMethod, trust_remote_code: bool = False) -> ScorerSource:
    common = dict(
        trust_remote_code=trust_remote_code,
        data_uri=cfg.data,
        device=cfg.device,
        dtype=cfg.dtype,
        batch_size=cfg.batch_size,
        endpoint=cfg.s3_endpoint,
        name=method.name,
    )
    if method.kind == "cf":
        return ScorerSource("cf", uri=method.uri, **common)
    if method.kind == "checkpoint":
        return ScorerSource("checkpoint", uri=find_best_checkpoint(method.uri, cfg.s3_endpoint), **common)
    exp = (
        load_config(ExperimentConfig, method.config, method.overrides)
        if method.config
        else load_config(ExperimentConfig, None, method.overrides)
    )
    return ScorerSource("zero_shot", config=to_dict(exp), **common)


def _reusable(doc: dict, cfg: CompareConfig, data_hash: str | None) -> bool:
    return (
        doc.get("data", {}).get("hash") == data_hash
        and doc.get("limit") == cfg.limit
        and doc.get("seed") == cfg.seed
        and all(s in doc.get("splits", {}) for s in cfg.splits)
    )


def run_compare(
    cfg: CompareConfig,
    *,
    rerun: bool = False,
    collect_only: bool = False,
    strict: bool = False,
    progress: bool = True,
    log=None,
    only: list[str] | tuple[str, ...] | None = None,
    trust_remote_code: bool = False,
) -> dict:
    """Run or collect every method, write comparison.md / .png / .json under `cfg.out`. Returns the summary.

    `only`: names of the methods that may be evaluated (or produced) in this run; the others are only
    collected from earlier results. Unknown names are a ConfigError. `trust_remote_code`: the operator's
    consent for a method whose config asks for it (cora_ray/infer/remote_code.py)."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    names = [m.name for m in cfg.methods]
    unknown = [n for n in (only or []) if n not in names]
    if unknown:
        raise ConfigError(f"--only: unknown method(s) {unknown}; the config has {names}")
    t0 = time.perf_counter()
    endpoint = cfg.s3_endpoint
    data_manifest = protocol.read_manifest(cfg.data, endpoint)
    data_hash = data_manifest.get("hash")
    rows: list[ComparisonRow] = []
    results: dict[str, dict | None] = {}
    evaluated: list[str] = []
    for method in cfg.methods:
        run_uri = storage.join(cfg.out, "runs", slug(method.name))
        doc = None
        note = method.note
        if method.kind == "results":
            doc = read_results(method.uri, endpoint)
            log(f"[{method.name}] collected from {method.uri}")
        else:
            if not rerun and storage.exists(storage.join(run_uri, storage.MANIFEST), endpoint):
                prev = read_results(run_uri, endpoint)
                if _reusable(prev, cfg, data_hash):
                    doc = prev
                    log(f"[{method.name}] collected from {run_uri}")
                else:
                    log(
                        f"[{method.name}] results at {run_uri} were made with other data/splits/limit/seed: re-running"
                    )
            if doc is None and not collect_only and (only is None or method.name in only):
                if not _artifact_exists(method, endpoint) and method.produce:
                    _produce(method, log)
                if _artifact_exists(method, endpoint):
                    log(f"[{method.name}] evaluating {method.kind} {method.uri or ''}".rstrip())
                    doc = evaluate(
                        _source(cfg, method, trust_remote_code),
                        run_uri,
                        splits=cfg.splits,
                        limit=cfg.limit,
                        seed=cfg.seed,
                        num_actors=cfg.num_actors,
                        use_gpu=cfg.use_gpu,
                        overwrite=True,
                        progress=progress,
                        name=method.name,
                        paper=method.paper or method.name,
                        endpoint=endpoint,
                    )
                    evaluated.append(method.name)
                    log(summary_table(doc))
                else:
                    msg = f"method {method.name!r}: {method.kind} artifact {method.uri} does not exist"
                    if strict:
                        raise StorageError(msg + " (and no produce commands made it)")
                    log(f"warning: {msg}; reported as not run")
            if doc is None:
                note = (note + "; " if note else "") + "not run"
        results[method.name] = doc
        metrics = (doc or {}).get("splits", {}).get(cfg.report_split)
        rows.append(ComparisonRow(method.name, metrics, paper=method.paper, note=note))

    wall = time.perf_counter() - t0
    notes = _notes(cfg, data_manifest, results, wall, evaluated)
    md = comparison_markdown(
        rows, cfg.dataset, cfg.report_split, title=f"{cfg.name}: {dataset_label(cfg.dataset)}", notes=notes
    )
    summary = {
        "name": cfg.name,
        "dataset": cfg.dataset,
        "data": {"uri": cfg.data, "hash": data_hash},
        "splits": cfg.splits,
        "report_split": cfg.report_split,
        "limit": cfg.limit,
        "seed": cfg.seed,
        "wall_s": round(wall, 1),
        "config": to_dict(cfg),
        "methods": [
            {
                "name": r.name,
                "paper": paper_row(r.paper or r.name),
                "metrics": results[r.name] and results[r.name]["splits"],
                "wall_s": (results[r.name] or {}).get("wall_s"),
                "note": r.note,
            }
            for r in rows
        ],
    }
    storage.write_text(storage.join(cfg.out, "comparison.md"), md, endpoint)
    storage.write_json(storage.join(cfg.out, "comparison.json"), summary, endpoint)
    if storage.is_s3(cfg.out):
        import tempfile
        from pathlib import Path

        with tempfile.TemporaryDirectory() as d:
            png = plot_comparison(rows, cfg.dataset, Path(d) / "comparison.png", cfg.report_split)
            storage.write_bytes(storage.join(cfg.out, "comparison.png"), png.read_bytes(), endpoint)
    else:
        from pathlib import Path

        Path(cfg.out).mkdir(parents=True, exist_ok=True)
        tmp = Path(cfg.out) / ".comparison.png.tmp.png"
        plot_comparison(rows, cfg.dataset, tmp, cfg.report_split)
        tmp.replace(Path(cfg.out) / "comparison.png")
    summary["markdown"] = md
    return summary


def _notes(cfg: CompareConfig, data_manifest: dict, results: dict, wall: float, evaluated: list[str]) -> str:
    sample = (
        f"a seeded sample of at most {cfg.limit} rows (seed {cfg.seed})" if cfg.limit else "the full split"
    )
    lines = [
        f"Data: `{cfg.data}` ({data_manifest.get('dataset')}, {data_manifest.get('counts', {}).get(cfg.report_split, '?')} "
        f"{cfg.report_split} rows, hash `{str(data_manifest.get('hash'))[:12]}`); evaluated on {sample}.",
    ]
    for name, doc in results.items():
        if doc and doc.get("wall_s") is not None:
            lines.append(
                f"- {name}: evaluated in {doc['wall_s']:.0f} s ({doc.get('rows_per_s') or 0:.2f} rows/s)"
            )
    here = ", ".join(evaluated) if evaluated else "none"
    lines.append(
        f"\nThis comparison run took {wall:.0f} s; evaluated in it: {here} (other rows collected from earlier runs "
        f"under `{storage.join(cfg.out, 'runs')}`)."
    )
    return "\n".join(lines)


def load_compare_config(path: str, overrides: list[str] | tuple[str, ...] = ()) -> CompareConfig:
    """The comparison YAML with dotted overrides (e.g. `limit=400`, `out=results/x`)."""
    load_yaml(path)  # a clear error for a missing or malformed file before the schema check
    return load_config(CompareConfig, path, list(overrides))


def dump_summary(summary: dict) -> str:
    return json.dumps({k: v for k, v in summary.items() if k != "markdown"}, indent=2, sort_keys=True)
