"""The comparison job (docs/method.md §8): every method on one dataset → comparison.md + comparison.png.

    cfg = load_config(CompareConfig, "configs/compare_ml1m_cpu.yaml", overrides)
    summary = run_compare(cfg)

For each method of the config, in order (for each of its training `seeds` when it has them):
1. results already at `<out>/runs/<slug>` (`<out>/runs/<slug>/seed<seed>` per seed) made with the same data,
   splits, limit and seed and the same protocol → collected. The protocol is what `protocol.json` beside the
   results records: the method's kind, uri, config, overrides and produce commands (seed substituted). Results
   with another protocol, or none recorded (made before records), are evaluated again when the method runs,
   and otherwise (`collect_only`, not in `only`) collected with that label in the table. A method of kind
   `results` points at an evaluation made elsewhere (e.g. on a GPU cluster);
2. otherwise its artifact (CF artifact, checkpoint — or a training run directory, whose best checkpoint by
   validation AUC is used — or the base LLM for zero-shot) is evaluated with `evaluate()`; a checkpoint whose
   recorded training config disagrees with the method's `jobs/train.py` produce command is refused;
3. an artifact that does not exist yet is first produced by the method's `produce` commands (pretraining,
   training), run in order; without them the row is reported as "not run" (`strict` makes it an error).

The table puts the measured AUC / UAUC beside the paper's (docs/method.md §7): a method with several seeds
shows mean ± sample std over its seeds (n shown; each seed's values in comparison.json). `differences` adds
paired bootstrap intervals of AUC / UAUC differences on the same test rows (cora_ray/eval/bootstrap.py).
comparison.json holds everything.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from cora_ray import storage
from cora_ray.checkpoint import KIND as CHECKPOINT_KIND
from cora_ray.config import ExperimentConfig, TrainConfig, _check, load_config, load_yaml, to_dict
from cora_ray.data import protocol
from cora_ray.errors import ConfigError, CoraError, StorageError
from cora_ray.eval.evaluate import evaluate, parse_splits, read_results, read_scores, summary_table
from cora_ray.eval.report import (
    ComparisonRow,
    comparison_markdown,
    dataset_label,
    differences_markdown,
    paper_row,
    plot_comparison,
)
from cora_ray.infer.source import ScorerSource

PROTOCOL_FILE = "protocol.json"  # beside an evaluation's manifest: the method settings it was made with
CURRENT = "current"
EXTERNAL = "external"  # kind results: an evaluation made elsewhere, taken as it is
OTHER_PROTOCOL = "other protocol"
NOT_RECORDED = "protocol not recorded"
OLD_LAYOUT = "old protocol"  # a seeded method's single result from before it had seeds (runs/<slug>/)
# train.* keys that do not change what a run learns (where it is stored, logging, resources): not compared
# between a checkpoint's recorded config and the produce command that should have made it
LOGISTICS_KEYS = frozenset(
    {
        "storage_path",
        "run_name",
        "checkpoints_to_keep",
        "max_failures",
        "log_every",
        "tensorboard",
        "accelerator_type",
        "cpu_threads_per_worker",
        "save_optimizer_state",
        "eval_batch_size",
    }
)


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
    )  # commands that create `uri` if missing ({python}: this Python; {seed}: the training seed)
    note: str = ""
    # training seeds: one artifact (uri with {seed}) and one evaluation per seed, the row their mean ± std
    seeds: list[int] | None = None

    def __post_init__(self) -> None:
        _check(bool(self.name.strip()), "methods[].name must not be empty")
        _check(
            "," not in self.name and "@" not in self.name,
            f"method {self.name!r}: a name must not contain ',' or '@' (`--only A,B@42` splits on them)",
        )
        if self.kind in ("cf", "checkpoint", "results"):
            _check(bool(self.uri), f"method {self.name!r}: kind {self.kind} needs a uri")
        if self.seeds is None:
            for text in [self.uri or "", *self.produce]:
                _check(
                    "{seed}" not in text,
                    f"method {self.name!r}: {{seed}} in {text!r} needs a list of seeds (seeds: [42, 43, 44])",
                )
            return
        _check(
            len(self.seeds) > 0, f"method {self.name!r}: seeds must list at least one seed (or be left out)"
        )
        _check(
            len(set(self.seeds)) == len(self.seeds),
            f"method {self.name!r}: seeds repeat a value: {self.seeds}",
        )
        _check(self.kind != "zero_shot", f"method {self.name!r}: a zero_shot method trains nothing: no seeds")
        _check(
            "{seed}" in (self.uri or ""),
            f"method {self.name!r}: with seeds, uri must contain {{seed}} (one artifact per seed), got {self.uri!r}",
        )

    def for_seed(self, seed: int) -> CompareMethod:
        """This method with `{seed}` filled in (uri, produce commands): one seed's artifact and commands."""
        return dataclasses.replace(
            self,
            uri=self.uri.replace("{seed}", str(seed)) if self.uri else self.uri,
            produce=[c.replace("{seed}", str(seed)) for c in self.produce],
            seeds=None,
        )

    def protocol(self) -> dict:
        """What an evaluation of this method is made with (recorded in protocol.json), with its hash."""
        record = {
            "kind": self.kind,
            "uri": self.uri,
            "config": self.config,
            "overrides": list(self.overrides),
            "produce": list(self.produce),
        }
        digest = hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()
        return {**record, "hash": digest}


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
    seed: int = 42  # the test-row sample's seed (with `limit`), not a training seed
    num_actors: int | None = None  # None = one per CPU (GPU with use_gpu); 0 = no Ray
    use_gpu: bool = False
    device: str = "cpu"
    dtype: str | None = None
    batch_size: int | None = None  # rows per forward pass inside a scorer
    s3_endpoint: str | None = None
    methods: list[CompareMethod] = field(default_factory=list)
    # [A, B] pairs: the paired bootstrap interval of AUC(A) − AUC(B) (and UAUC) on report_split's rows
    differences: list[list[str]] = field(default_factory=list)
    bootstrap_resamples: int = 1000
    bootstrap_seed: int = 42

    def __post_init__(self) -> None:
        _check(len(self.methods) > 0, "methods must list at least one method")
        names = [m.name for m in self.methods]
        _check(len(set(names)) == len(names), f"method names must be unique, got {names}")
        check_rows(self.splits, self.report_split, self.limit)
        _check(self.dataset in ("ml-1m", "amazon-book") or bool(self.dataset), "dataset must be named")
        for k, pair in enumerate(self.differences):
            _check(len(pair) == 2, f"differences[{k}] must be a pair [A, B], got {pair}")
            unknown = [n for n in pair if n not in names]
            _check(not unknown, f"differences[{k}]: unknown method(s) {unknown}; the config has {names}")
            _check(pair[0] != pair[1], f"differences[{k}] compares {pair[0]!r} with itself")
        _check(
            self.bootstrap_resamples > 0, f"bootstrap_resamples must be > 0, got {self.bootstrap_resamples}"
        )
        if self.use_gpu and self.device == "cpu":
            self.device = "cuda"


def check_rows(splits: list[str], report_split: str, limit: int | None) -> None:
    """The test rows a job scores (compare, curve): known splits, the reported one among them, a positive limit."""
    try:
        parse_splits(splits)
    except ConfigError as exc:
        raise ConfigError(f"splits: {exc}") from None
    _check(report_split in splits, f"report_split {report_split!r} must be one of splits")
    _check(limit is None or limit > 0, f"limit must be > 0, got {limit}")


def results_fit(doc: dict, data_hash: str | None, splits: list[str], limit: int | None, seed: int) -> bool:
    """Stored results (metrics.json) made on the same data, splits, limit and sample seed: reusable."""
    return (
        doc.get("data", {}).get("hash") == data_hash
        and doc.get("limit") == limit
        and doc.get("seed") == seed
        and all(s in doc.get("splits", {}) for s in splits)
    )


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


def train_command_config(command: str) -> ExperimentConfig | None:
    """The experiment config a `jobs/train.py --config FILE KEY=VALUE...` command trains with (None for other
    commands, or without --config)."""
    argv = shlex.split(command)
    at = next((k for k, a in enumerate(argv) if Path(a).name == "train.py"), None)
    if at is None:
        return None
    config, overrides, rest, k = None, [], argv[at + 1 :], 0
    while k < len(rest):
        arg = rest[k]
        if arg == "--config" and k + 1 < len(rest):
            config, k = rest[k + 1], k + 2
            continue
        if arg.startswith("--config="):
            config = arg.split("=", 1)[1]
        elif arg in ("--resume", "--base-dir", "--num-cpus", "--mfu"):
            k += 1  # a flag with a value
        elif not arg.startswith("-") and "=" in arg:
            overrides.append(arg)
        k += 1
    return None if config is None else load_config(ExperimentConfig, config, overrides)


def _local(path: str | None) -> str | None:
    if path is None or storage.is_s3(path) or "://" in path:
        return path
    return os.path.normpath(os.path.abspath(path))


def check_trained_as(method: CompareMethod, checkpoint_uri: str, endpoint: str | None = None) -> None:
    """A ConfigError when the checkpoint's recorded training config disagrees with the config of the method's
    `jobs/train.py` produce command (train.* apart from LOGISTICS_KEYS, model.method, model.cf_artifact):
    results from it would be recorded as made with a protocol they were not. Keys a checkpoint predates
    count with TrainConfig's default."""
    expected = next((c for c in map(train_command_config, method.produce) if c is not None), None)
    if expected is None:
        return
    from cora_ray.checkpoint import read_checkpoint_manifest

    recorded = read_checkpoint_manifest(checkpoint_uri, endpoint).get("config") or {}
    train, model = recorded.get("train") or {}, recorded.get("model") or {}
    differ = []
    for f in dataclasses.fields(TrainConfig):
        if f.name in LOGISTICS_KEYS:
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        have, want = train.get(f.name, default), getattr(expected.train, f.name)
        if have != want:
            differ.append(f"train.{f.name}={have!r} (the command: {want!r})")
    if model.get("method") != expected.model.method:
        differ.append(f"model.method={model.get('method')!r} (the command: {expected.model.method!r})")
    if _local(model.get("cf_artifact")) != _local(expected.model.cf_artifact):
        differ.append(
            f"model.cf_artifact={model.get('cf_artifact')!r} (the command: {expected.model.cf_artifact!r})"
        )
    if differ:
        raise ConfigError(
            f"method {method.name!r}: checkpoint {checkpoint_uri} was trained with {'; '.join(differ)}, not as "
            "its produce command says: move the run away so that the command trains it again, or point uri "
            "at a run made with the command"
        )


@dataclass
class SeedResult:
    """One evaluation behind a row: the method's only one, or one training seed's."""

    seed: int | None
    doc: dict | None  # metrics.json content; None: not run
    run_uri: str | None  # where its metrics and per-row scores are
    status: str  # CURRENT | EXTERNAL | OTHER_PROTOCOL | NOT_RECORDED | OLD_LAYOUT | "not run"
    evaluated: bool = False  # evaluated by this comparison run


@dataclass
class _Run:
    cfg: CompareConfig
    data_hash: str | None
    log: object
    rerun: bool = False
    strict: bool = False
    progress: bool = True
    trust_remote_code: bool = False
    evaluated: list[str] = field(default_factory=list)

    @property
    def endpoint(self) -> str | None:
        return self.cfg.s3_endpoint


def _stored(run: _Run, method: CompareMethod, run_uri: str) -> tuple[dict | None, str | None]:
    """Results at `run_uri` usable for this comparison (same data, splits, limit, sample seed) and their
    protocol status against `method`; (None, reason) when there are none or they do not fit."""
    if run.rerun or not storage.exists(storage.join(run_uri, storage.MANIFEST), run.endpoint):
        return None, None
    prev = read_results(run_uri, run.endpoint)
    if not results_fit(prev, run.data_hash, run.cfg.splits, run.cfg.limit, run.cfg.seed):
        return None, "made with other data/splits/limit/seed"
    path = storage.join(run_uri, PROTOCOL_FILE)
    recorded = storage.read_json(path, run.endpoint) if storage.exists(path, run.endpoint) else None
    if not isinstance(recorded, dict):
        return prev, NOT_RECORDED
    return prev, CURRENT if recorded.get("hash") == method.protocol()["hash"] else OTHER_PROTOCOL


def _seed_dirs(run_uri: str, endpoint: str | None) -> list[str]:
    """The per-seed result directories (seed<N>) right below `run_uri`."""
    name = run_uri.rstrip("/").rsplit("/", 1)[-1]
    found = set()
    for f in storage.list_files(run_uri, endpoint, suffix="/" + storage.MANIFEST):
        parts = f.rstrip("/").split("/")
        if len(parts) >= 3 and parts[-3] == name and re.fullmatch(r"seed-?\d+", parts[-2]):
            found.add(parts[-2])
    return sorted(found)


def _evaluate(run: _Run, method: CompareMethod, run_uri: str, label: str) -> dict | None:
    """Produce the artifact if it is missing, check it, evaluate it into `run_uri` and record the protocol."""
    log, endpoint = run.log, run.endpoint
    if method.seeds is None and storage.exists(run_uri, endpoint) and _seed_dirs(run_uri, endpoint):
        raise StorageError(
            f"method {method.name!r}: {run_uri} holds per-seed results ({', '.join(_seed_dirs(run_uri, endpoint))}); "
            "an evaluation without seeds would replace them: give the method its seeds, or another name"
        )
    if not _artifact_exists(method, endpoint) and method.produce:
        _produce(method, log)
    if not _artifact_exists(method, endpoint):
        msg = f"method {label!r}: {method.kind} artifact {method.uri} does not exist"
        if run.strict:
            raise StorageError(msg + " (and no produce commands made it)")
        log(f"warning: {msg}; reported as not run")
        return None
    if method.kind == "checkpoint":
        check_trained_as(method, find_best_checkpoint(method.uri, endpoint), endpoint)
    log(f"[{label}] evaluating {method.kind} {method.uri or ''}".rstrip())
    doc = evaluate(
        _source(run.cfg, method, run.trust_remote_code),
        run_uri,
        splits=run.cfg.splits,
        limit=run.cfg.limit,
        seed=run.cfg.seed,
        num_actors=run.cfg.num_actors,
        use_gpu=run.cfg.use_gpu,
        overwrite=True,
        progress=run.progress,
        name=method.name,
        paper=method.paper or method.name,
        endpoint=endpoint,
    )
    storage.write_json(storage.join(run_uri, PROTOCOL_FILE), method.protocol(), endpoint)
    run.evaluated.append(label)
    log(summary_table(doc))
    return doc


def _run_one(run: _Run, method: CompareMethod, run_uri: str, seed: int | None, selected: bool) -> SeedResult:
    """One evaluation of the row: collected, evaluated now (when `selected`), collected with a protocol
    label, or not run."""
    label = method.name if seed is None else f"{method.name} seed {seed}"
    if method.kind == "results":
        run.log(f"[{label}] collected from {method.uri}")
        return SeedResult(seed, read_results(method.uri, run.endpoint), method.uri, EXTERNAL)
    doc, status = _stored(run, method, run_uri)
    if status == CURRENT:
        run.log(f"[{label}] collected from {run_uri}")
        return SeedResult(seed, doc, run_uri, CURRENT)
    if selected:
        if status is not None:
            run.log(f"[{label}] results at {run_uri}: {status}: re-running")
        new = _evaluate(run, method, run_uri, label)
        return SeedResult(seed, new, run_uri if new else None, CURRENT if new else "not run", new is not None)
    if doc is not None:
        run.log(f"[{label}] collected from {run_uri} ({status}; not re-run: not selected)")
        return SeedResult(seed, doc, run_uri, status)
    if status is not None:
        run.log(f"[{label}] results at {run_uri} were {status}: not collected")
    return SeedResult(seed, None, None, "not run")


def _run_method(run: _Run, method: CompareMethod, selected: set[int] | bool) -> list[SeedResult]:
    """Every evaluation behind one row (`selected`: run it now — True/False, or the seeds to run)."""
    run_uri = storage.join(run.cfg.out, "runs", slug(method.name))
    if method.seeds is None:
        return [_run_one(run, method, run_uri, None, bool(selected))]
    results = [
        _run_one(
            run,
            method.for_seed(s),
            storage.join(run_uri, f"seed{s}"),
            s,
            selected is True or (isinstance(selected, set) and s in selected),
        )
        for s in method.seeds
    ]
    if any(r.doc for r in results) or method.kind == "results":
        return results
    doc, status = _stored(run, method, run_uri)  # results from before the method had seeds
    if doc is not None:
        run.log(f"[{method.name}] collected from {run_uri} ({OLD_LAYOUT}: one run from before its seeds)")
        return [SeedResult(None, doc, run_uri, OLD_LAYOUT)]
    return results


def _aggregate(method: CompareMethod, results: list[SeedResult], splits: list[str]):
    """(split metrics for the row, spread over seeds or None, the results used, note parts)."""
    collected = [r for r in results if r.doc is not None]
    current = [r for r in collected if r.status in (CURRENT, EXTERNAL)]
    used = current or collected
    notes = sorted({r.status for r in used if r.status not in (CURRENT, EXTERNAL)})
    if not used:
        return None, None, [], ["not run"]
    if method.seeds is None:
        return used[0].doc["splits"], None, used, notes
    missing = [str(r.seed) for r in results if r.doc is None] if used[0].status != OLD_LAYOUT else []
    left_out = [str(r.seed) for r in collected if r not in used]
    if missing:
        notes.append(f"seed{'s' if len(missing) > 1 else ''} {', '.join(missing)} not run")
    if left_out:
        notes.append(
            f"seed{'s' if len(left_out) > 1 else ''} {', '.join(left_out)} of another protocol left out"
        )
    metrics = {}
    for split in splits:
        per = [r.doc["splits"][split] for r in used]
        m = dict(per[0])  # rows, users: the same test rows for every seed
        for key in ("auc", "uauc"):  # a seed without the value (no user qualifies for UAUC): None
            values = np.array([np.nan if p.get(key) is None else p[key] for p in per], dtype=np.float64)
            std = values.std(ddof=1) if len(values) > 1 else np.nan
            m[key] = float(values.mean()) if np.isfinite(values).all() else None
            m[f"{key}_std"] = float(std) if np.isfinite(std) else None
        m["n"] = len(per)
        metrics[split] = m
    return metrics, {"n": len(used), "of": len(method.seeds)}, used, notes


def _differences(run: _Run, used: dict[str, list[SeedResult]], labels: dict[str, str]) -> list[dict]:
    from cora_ray.eval.bootstrap import align_scores, paired_bootstrap

    cfg, out = run.cfg, []
    for a, b in cfg.differences:
        entry = {"a": a, "b": b, "a_label": labels[a], "b_label": labels[b], "split": cfg.report_split}
        absent = [n for n in (a, b) if not used[n]]
        if absent:
            entry["skipped"] = f"{' and '.join(absent)} not run"
            out.append(entry)
            continue
        chosen = {n: used[n] for n in (a, b)}
        seeds = {n: {r.seed for r in used[n]} for n in (a, b)}
        common = seeds[a] & seeds[b] - {None}
        if common and (seeds[a] != common or seeds[b] != common):
            # two seeded methods: compare the seeds both have, so that a seed one side lacks does not pass
            # for a difference between the methods (the interval covers test rows, not training seeds)
            chosen = {n: [r for r in used[n] if r.seed in common] for n in (a, b)}
        if common:
            entry["paired_seeds"] = sorted(common)
        tables = {
            n: [read_scores(r.run_uri, cfg.report_split, run.endpoint) for r in chosen[n]] for n in (a, b)
        }
        aligned = align_scores(tables)
        entry.update(
            paired_bootstrap(aligned, a, b, resamples=cfg.bootstrap_resamples, seed=cfg.bootstrap_seed)
        )
        out.append(entry)
    return out


def _selection(
    only: list[str] | tuple[str, ...] | None, methods: list[CompareMethod]
) -> dict[str, set | bool]:
    """`only` entries (NAME, or NAME@SEED for one seed of a seeded method) → method name → what to run."""
    by_name = {m.name: m for m in methods}
    if only is None:
        return {n: True for n in by_name}
    chosen: dict[str, set | bool] = {n: False for n in by_name}
    unknown = []
    for entry in only:
        name, _, seed = entry.rpartition("@") if "@" in entry else (entry, "", "")  # names hold no '@'
        method = by_name.get(name)
        if method is None:
            unknown.append(entry)
        elif not seed:
            chosen[name] = True
        elif method.seeds is None or not seed.lstrip("-").isdigit() or int(seed) not in method.seeds:
            raise ConfigError(
                f"--only {entry}: method {name!r} has no seed {seed} (its seeds: {method.seeds})"
            )
        elif chosen[name] is not True:
            chosen[name] = (chosen[name] or set()) | {int(seed)}
    if unknown:
        raise ConfigError(f"--only: unknown method(s) {unknown}; the config has {list(by_name)}")
    return chosen


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

    `only`: names of the methods that may be evaluated (or produced) in this run (NAME@SEED: one seed of a
    seeded method); the others are only collected from earlier results. Unknown names are a ConfigError.
    `trust_remote_code`: the operator's consent for a method whose config asks for it
    (cora_ray/infer/remote_code.py)."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    selection = _selection(only, cfg.methods)
    t0 = time.perf_counter()
    data_manifest = protocol.read_manifest(cfg.data, cfg.s3_endpoint)
    run = _Run(cfg, data_manifest.get("hash"), log, rerun, strict, progress, trust_remote_code)
    rows: list[ComparisonRow] = []
    entries: list[dict] = []
    used: dict[str, list[SeedResult]] = {}
    labels: dict[str, str] = {}
    for method in cfg.methods:
        results = _run_method(run, method, False if collect_only else selection[method.name])
        metrics, spread, used[method.name], notes = _aggregate(method, results, cfg.splits)
        note = "; ".join([method.note] * bool(method.note) + notes)
        labels[method.name] = method.name + (f" ({'; '.join(notes)})" if notes else "")
        rows.append(
            ComparisonRow(
                method.name,
                (metrics or {}).get(cfg.report_split),
                paper=method.paper,
                note=note,
                spread=spread,
            )
        )
        entries.append(_method_entry(method, results, used[method.name], metrics, note))
    diffs = _differences(run, used, labels) if cfg.differences else []

    wall = time.perf_counter() - t0
    notes = _notes(cfg, data_manifest, used, wall, run.evaluated)
    md = comparison_markdown(
        rows, cfg.dataset, cfg.report_split, title=f"{cfg.name}: {dataset_label(cfg.dataset)}", notes=notes
    )
    if diffs:
        md += "\n" + differences_markdown(
            diffs, cfg.report_split, cfg.bootstrap_resamples, cfg.bootstrap_seed
        )
    summary = {
        "name": cfg.name,
        "dataset": cfg.dataset,
        "data": {"uri": cfg.data, "hash": run.data_hash},
        "splits": cfg.splits,
        "report_split": cfg.report_split,
        "limit": cfg.limit,
        "seed": cfg.seed,
        "wall_s": round(wall, 1),
        "config": to_dict(cfg),
        "methods": entries,
        "differences": diffs,
    }
    _write_outputs(cfg, rows, md, summary)
    summary["markdown"] = md
    return summary


def _method_entry(method: CompareMethod, results: list[SeedResult], used, metrics, note: str) -> dict:
    entry = {
        "name": method.name,
        "paper": paper_row(method.paper or method.name),
        "metrics": metrics,
        "wall_s": used[0].doc.get("wall_s") if len(used) == 1 else None,
        "note": note,
        "protocol": sorted({r.status for r in used}) or None,
        "runs": [r.run_uri for r in used],
        "seeds": method.seeds,
    }
    if method.seeds is not None:
        entry["per_seed"] = {
            (str(r.seed) if r.seed is not None else "before_seeds"): {
                "metrics": r.doc and r.doc["splits"],
                "protocol": r.status,
                "run": r.run_uri,
                "wall_s": (r.doc or {}).get("wall_s"),
                "used": r in used,
                "evaluated_now": r.evaluated,
            }
            for r in results
        }
    return entry


def _write_outputs(cfg: CompareConfig, rows: list[ComparisonRow], md: str, summary: dict) -> None:
    endpoint = cfg.s3_endpoint
    storage.write_text(storage.join(cfg.out, "comparison.md"), md, endpoint)
    storage.write_json(storage.join(cfg.out, "comparison.json"), summary, endpoint)
    if storage.is_s3(cfg.out):
        import tempfile

        with tempfile.TemporaryDirectory() as d:
            png = plot_comparison(rows, cfg.dataset, Path(d) / "comparison.png", cfg.report_split)
            storage.write_bytes(storage.join(cfg.out, "comparison.png"), png.read_bytes(), endpoint)
    else:
        Path(cfg.out).mkdir(parents=True, exist_ok=True)
        tmp = Path(cfg.out) / ".comparison.png.tmp.png"
        plot_comparison(rows, cfg.dataset, tmp, cfg.report_split)
        tmp.replace(Path(cfg.out) / "comparison.png")


def _notes(
    cfg: CompareConfig,
    data_manifest: dict,
    used: dict[str, list[SeedResult]],
    wall: float,
    evaluated: list[str],
) -> str:
    sample = (
        f"a seeded sample of at most {cfg.limit} rows (seed {cfg.seed})" if cfg.limit else "the full split"
    )
    lines = [
        f"Data: `{cfg.data}` ({data_manifest.get('dataset')}, {data_manifest.get('counts', {}).get(cfg.report_split, '?')} "
        f"{cfg.report_split} rows, hash `{str(data_manifest.get('hash'))[:12]}`); evaluated on {sample}.",
    ]
    if any(m.seeds for m in cfg.methods):
        lines.append(
            "Rows with several training seeds: mean ± sample standard deviation over the seeds (n = seeds "
            "evaluated); each seed's values are in comparison.json."
        )
    labelled = sorted(
        {r.status for rs in used.values() for r in rs} & {OTHER_PROTOCOL, NOT_RECORDED, OLD_LAYOUT}
    )
    if labelled:
        lines.append(
            f"Labelled {', '.join(repr(s) for s in labelled)}: results made with settings other than the "
            f"method's entry in this config, or before settings were recorded ({PROTOCOL_FILE}); collected, not "
            "re-run: `--only NAME` evaluates them again."
        )
    for name, rs in used.items():
        for r in rs:
            if r.doc and r.doc.get("wall_s") is not None:
                who = name if r.seed is None or r.status == OLD_LAYOUT else f"{name} seed {r.seed}"
                lines.append(
                    f"- {who}: evaluated in {r.doc['wall_s']:.0f} s ({r.doc.get('rows_per_s') or 0:.2f} rows/s)"
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
