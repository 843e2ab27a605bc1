"""A learning curve: one training run validated every `train.eval_every` steps, its checkpoints at chosen steps
scored on test once each — what more training rows buy.

    cfg = load_curve_config("configs/curve_ml1m_cpu.yaml")
    summary = run_curve(cfg)      # trains (or continues) the run, scores the chosen steps, writes the curve

1. Training: the config's `train` command (a `jobs/train.py` command). When the run directory exists it is
   continued in place (`--resume <run>`: the latest checkpoint, its step and optimizer state when saved), so a
   run longer than one sitting is finished by running the job again. The command's config must validate at every
   scored step and keep every checkpoint (`train.checkpoints_to_keep` >= the number of validations): Ray Train
   keeps the best checkpoints by validation AUC and would otherwise delete steps the curve needs.
2. Scoring: each step of `steps` whose checkpoint exists is evaluated (`evaluate()`) into <out>/runs/step<N>,
   once: results there made from the same checkpoint (its content hash), data, splits, limit and sample seed are
   collected, not re-scored. Reporting a curve is not selection: nothing here picks a step from test rows.
3. Output: <out>/curve.md (validation at every validated step; test at the scored ones), curve.json, curve.png.

The learning rate follows the run's own schedule (warm-up, cosine to `train.min_lr` at `train.max_steps`), so an
early point of the curve is a model in mid-schedule, not a shorter run trained to its end; curve.md says so.
"""

from __future__ import annotations

import json
import math
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from cora_ray import storage
from cora_ray.checkpoint import KIND as CHECKPOINT_KIND
from cora_ray.checkpoint import read_checkpoint_manifest
from cora_ray.config import ExperimentConfig, _check, load_config
from cora_ray.data import protocol
from cora_ray.errors import ConfigError, CoraError, StorageError
from cora_ray.eval.compare import check_rows, results_fit, train_command_config
from cora_ray.eval.evaluate import evaluate, read_results
from cora_ray.eval.report import paper_values
from cora_ray.infer.source import ScorerSource
from cora_ray.train.progress import PROGRESS_FILE  # the run's per-step log, one JSON object per line
from cora_ray.train.trainer import SNAPSHOT_FILE  # present once Ray Train has started the run directory


@dataclass
class CurveConfig:
    """One run, the steps whose checkpoints are scored on test, where the curve is written."""

    name: str = "learning curve"
    data: str = "artifacts/ml-1m"
    run: str = ""  # the training run directory: <train.storage_path>/<train.run_name> of the command
    train: str = ""  # the jobs/train.py command that makes the run ({python} = this interpreter)
    steps: list[int] = field(default_factory=list)  # checkpoints scored on test
    out: str = "results/learning_curve"
    splits: list[str] = field(default_factory=lambda: ["test", "test_warm", "test_cold"])
    report_split: str = "test"
    limit: int | None = None
    seed: int = 42  # the test-row sample's seed (with `limit`)
    num_actors: int | None = None  # None: one scorer actor per CPU; 0: no Ray
    batch_size: int | None = None
    paper: str | None = "CoRA-MF"  # the docs/method.md §7 row drawn as a reference line (None: none)
    dataset: str = "ml-1m"

    def __post_init__(self) -> None:
        _check(bool(self.run), "run must name the training run directory")
        _check(bool(self.train), "train must be the jobs/train.py command that makes the run")
        _check(len(self.steps) > 0, "steps must list at least one step to score on test")
        _check(
            all(isinstance(s, int) and s > 0 for s in self.steps), f"steps must be positive, got {self.steps}"
        )
        _check(
            self.steps == sorted(set(self.steps)), f"steps must be increasing and distinct, got {self.steps}"
        )
        check_rows(self.splits, self.report_split, self.limit)


def load_curve_config(path: str, overrides: list[str] | tuple[str, ...] = ()) -> CurveConfig:
    return load_config(CurveConfig, path, list(overrides))


def training_config(cfg: CurveConfig) -> ExperimentConfig:
    """The experiment config of the `train` command, checked against what the curve needs from it."""
    exp = train_command_config(cfg.train)
    if exp is None:
        raise ConfigError(f"train must be a `jobs/train.py --config FILE ...` command, got {cfg.train!r}")
    t = exp.train
    run = str(Path(t.storage_path) / (t.run_name or ""))
    if storage.is_s3(cfg.run) or not t.run_name or Path(run) != Path(cfg.run):
        raise ConfigError(
            f"run {cfg.run!r} is not where the train command writes ({t.storage_path}/{t.run_name}): set "
            "train.storage_path and train.run_name in the command to match"
        )
    late = [s for s in cfg.steps if s > t.max_steps]
    _check(not late, f"steps {late} lie past the command's train.max_steps={t.max_steps}")
    unvalidated = [s for s in cfg.steps if s % t.eval_every and s != t.max_steps]
    _check(
        not unvalidated,
        f"steps {unvalidated} have no checkpoint: the command validates (and saves) every "
        f"train.eval_every={t.eval_every} steps and at train.max_steps",
    )
    validations = math.ceil(t.max_steps / t.eval_every)
    _check(
        t.checkpoints_to_keep >= validations,
        f"train.checkpoints_to_keep={t.checkpoints_to_keep} would delete checkpoints the curve scores: the run "
        f"validates {validations} times (train.max_steps={t.max_steps} / train.eval_every={t.eval_every}); "
        f"keep at least {validations}",
    )
    return exp


def checkpoints_by_step(run: str) -> dict[int, str]:
    """Step → checkpoint directory of every checkpoint in the run (the `best` alias left out; a step saved twice,
    by a continued run, is the later directory)."""
    found: dict[int, str] = {}
    for f in sorted(storage.list_files(run, None, suffix="/" + storage.MANIFEST)):
        try:
            m = storage.read_json(f, None)
        except StorageError:
            continue
        if not isinstance(m, dict) or m.get("kind") != CHECKPOINT_KIND or m.get("alias_of"):
            continue
        found[int(m.get("step") or 0)] = f[: -len("/" + storage.MANIFEST)]
    return found


def validation_points(run: str) -> list[dict]:
    """The run's validations from progress.jsonl, one per step (a step validated twice: the later line)."""
    path = Path(run) / PROGRESS_FILE
    if not path.exists():
        return []
    by_step: dict[int, dict] = {}
    for k, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise StorageError(f"{path}: line {k} is not JSON ({exc.msg})") from None
        if rec.get("type") == "valid":
            by_step[int(rec["step"])] = {
                key: rec.get(key)
                for key in ("step", "samples", "loss", "valid_auc", "valid_uauc", "valid_rows")
            }
    return [by_step[s] for s in sorted(by_step)]


def train_argv(cfg: CurveConfig) -> list[str]:
    """The train command as argv; `--resume <run>` added when the run directory already exists."""
    argv = [sys.executable if a == "{python}" else a for a in shlex.split(cfg.train)]
    if (Path(cfg.run) / SNAPSHOT_FILE).exists():
        argv += ["--resume", cfg.run]
    return argv


def train(cfg: CurveConfig, exp: ExperimentConfig, log=print) -> None:
    """Run (or continue) the training run unless it has its last checkpoint already."""
    if exp.train.max_steps in checkpoints_by_step(cfg.run):
        log(f"[train] {cfg.run} has its step-{exp.train.max_steps} checkpoint: nothing to train")
        return
    argv = train_argv(cfg)
    log(f"[train] {' '.join(argv)}")
    t0 = time.perf_counter()
    rc = subprocess.call(argv)
    if rc != 0:
        raise CoraError(f"the train command failed with exit code {rc}: {' '.join(argv)}")
    log(f"[train] done in {time.perf_counter() - t0:.0f} s")


def score(cfg: CurveConfig, log=print, progress: bool = True) -> dict[int, dict]:
    """Test metrics per scored step (steps without a checkpoint yet are left out, and said so)."""
    data_hash = protocol.read_manifest(cfg.data)["hash"]
    by_step = checkpoints_by_step(cfg.run) if Path(cfg.run).exists() else {}
    docs: dict[int, dict] = {}
    for step in cfg.steps:
        ckpt = by_step.get(step)
        if ckpt is None:
            log(f"[step {step}] no checkpoint in {cfg.run} yet: not scored")
            continue
        out = storage.join(cfg.out, "runs", f"step{step}")
        checkpoint_hash = read_checkpoint_manifest(ckpt)["hash"]
        if storage.exists(storage.join(out, storage.MANIFEST), None):
            prev = read_results(out)
            if (prev.get("source") or {}).get("hash") == checkpoint_hash and results_fit(
                prev, data_hash, cfg.splits, cfg.limit, cfg.seed
            ):
                log(f"[step {step}] collected from {out}")
                docs[step] = prev
                continue
            log(f"[step {step}] results at {out} were made from another checkpoint or rows: scoring again")
        log(f"[step {step}] scoring {ckpt}")
        source = ScorerSource(
            "checkpoint",
            uri=ckpt,
            data_uri=cfg.data,
            batch_size=cfg.batch_size,
            name=f"{cfg.name} step {step}",
        )
        docs[step] = evaluate(
            source,
            out,
            splits=cfg.splits,
            limit=cfg.limit,
            seed=cfg.seed,
            num_actors=cfg.num_actors,
            overwrite=True,
            progress=progress,
            name=f"{cfg.name} step {step}",
        )
    return docs


# ---------------------------------------------------------------------------------------------------------
# the curve
# ---------------------------------------------------------------------------------------------------------


def summarize(cfg: CurveConfig, exp: ExperimentConfig, points: list[dict], docs: dict[int, dict]) -> dict:
    """curve.json's content: the run's validations, and test metrics (report split and the others) per step."""
    train_rows = int((protocol.read_manifest(cfg.data).get("counts") or {}).get("train") or 0)
    batch = exp.train.global_batch_size
    test = []
    for step, doc in sorted(docs.items()):
        splits = doc.get("splits", {})
        test.append(
            {
                "step": step,
                "rows_trained": step * batch,
                "checkpoint": (doc.get("source") or {}).get("uri"),
                **{f"{s}_{k}": (splits.get(s) or {}).get(k) for s in cfg.splits for k in ("auc", "uauc")},
                "rows": (splits.get(cfg.report_split) or {}).get("rows"),
            }
        )
    return {
        "name": cfg.name,
        "run": cfg.run,
        "train_command": cfg.train,
        "max_steps": exp.train.max_steps,
        "global_batch_size": batch,
        "eval_every": exp.train.eval_every,
        "eval_limit": exp.train.eval_limit,
        "train_split_rows": train_rows,
        "report_split": cfg.report_split,
        "splits": list(cfg.splits),
        "steps": list(cfg.steps),
        "paper": cfg.paper,
        "dataset": cfg.dataset,
        "validation": [{**p, "rows_trained": p["step"] * batch} for p in points],
        "test": test,
    }


def _f(v, digits: int = 4) -> str:
    return "—" if v is None else f"{v:.{digits}f}"


def curve_markdown(summary: dict) -> str:
    rows_per_epoch = summary["train_split_rows"] or None
    lines = [
        f"# {summary['name']}",
        "",
        f"One run (`{summary['run']}`), global batch {summary['global_batch_size']}, validated every "
        f"{summary['eval_every']} steps on {summary['eval_limit'] or 'all'} valid_small rows; test scored at "
        f"steps {', '.join(map(str, summary['steps']))} (each checkpoint once; nothing is chosen on test). The "
        f"learning rate follows the run's schedule to step {summary['max_steps']}: an early point is a model in "
        "mid-schedule, not a shorter run trained to its end.",
        "",
        f"    {summary['train_command']}",
        "",
        "| step | rows trained | epochs | train loss | valid AUC | valid UAUC | "
        + " | ".join(f"{s} AUC | {s} UAUC" for s in summary["splits"])
        + " |",
        "|---:|---:|---:|---:|---:|---:|" + "---:|---:|" * len(summary["splits"]),
    ]
    tests = {t["step"]: t for t in summary["test"]}
    for p in summary["validation"]:
        t = tests.get(p["step"], {})
        epochs = p["rows_trained"] / rows_per_epoch if rows_per_epoch else None
        cells = [
            str(p["step"]),
            f"{p['rows_trained']:,}",
            _f(epochs, 3),
            _f(p.get("loss")),
            _f(p.get("valid_auc")),
            _f(p.get("valid_uauc")),
        ] + [_f(t.get(f"{s}_{k}")) for s in summary["splits"] for k in ("auc", "uauc")]
        lines.append("| " + " | ".join(cells) + " |")
    missing = [s for s in summary["steps"] if s not in tests]
    if missing:
        lines += ["", f"Not scored yet (no checkpoint): steps {', '.join(map(str, missing))}."]
    paper = paper_values(summary.get("paper"), summary["dataset"])
    if paper:
        lines += [
            "",
            f"The paper's {summary['paper']} (Vicuna-7B): AUC {paper[0]:.4f}, UAUC {paper[1]:.4f} (docs/method.md §7).",
        ]
    return "\n".join(lines) + "\n"


def plot_curve(summary: dict, path: str | Path) -> Path:
    """AUC and UAUC against rows trained (log axis): validation as lines, test as markers, the paper dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # imported here: matplotlib loads only when a plot is drawn

    path = Path(path)
    fig, ax = plt.subplots(figsize=(7.0, 4.2))
    v = summary["validation"]
    t = summary["test"]
    split = summary["report_split"]
    for key, color, label in (("auc", "#3b75af", "AUC"), ("uauc", "#ef8636", "UAUC")):
        vx = [p["rows_trained"] for p in v if p.get(f"valid_{key}") is not None]
        vy = [p[f"valid_{key}"] for p in v if p.get(f"valid_{key}") is not None]
        if vx:
            ax.plot(vx, vy, "-", color=color, alpha=0.6, label=f"valid {label}")
        tx = [p["rows_trained"] for p in t if p.get(f"{split}_{key}") is not None]
        ty = [p[f"{split}_{key}"] for p in t if p.get(f"{split}_{key}") is not None]
        if tx:
            ax.plot(tx, ty, "o", color=color, label=f"{split} {label}")
            for x, y in zip(tx, ty, strict=True):
                ax.annotate(f"{y:.3f}", (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        paper = paper_values(summary.get("paper"), summary["dataset"])
        if paper:
            ax.axhline(paper[0 if key == "auc" else 1], color=color, ls="--", lw=0.8, label=f"paper {label}")
    ax.set_xscale("log")
    ticks = sorted({p["rows_trained"] for p in v} | {p["rows_trained"] for p in t})
    if ticks:
        ax.set_xticks(ticks, [f"{x:,}" for x in ticks], fontsize=7)
        ax.minorticks_off()
    ax.set_xlabel("training rows seen")
    ax.set_ylabel("AUC / UAUC")
    ax.set_title(summary["name"])
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)
    return path


def write_curve(cfg: CurveConfig, summary: dict) -> None:
    storage.write_json(storage.join(cfg.out, "curve.json"), summary, None)
    storage.write_text(storage.join(cfg.out, "curve.md"), curve_markdown(summary), None)
    if summary["validation"] or summary["test"]:
        plot_curve(summary, Path(cfg.out) / "curve.png")


def run_curve(
    cfg: CurveConfig, *, do_train: bool = True, do_score: bool = True, progress: bool = True, log=print
) -> dict:
    """Train (or continue) the run, score the steps it has, write curve.{md,json,png}; returns the summary."""
    exp = training_config(cfg)
    if do_train:
        train(cfg, exp, log)
    if do_score:
        docs = score(cfg, log, progress)
    else:  # collect what is there, score nothing
        docs = {}
        for step in cfg.steps:
            out = storage.join(cfg.out, "runs", f"step{step}")
            if storage.exists(storage.join(out, storage.MANIFEST), None):
                docs[step] = read_results(out)
    summary = summarize(cfg, exp, validation_points(cfg.run), docs)
    write_curve(cfg, summary)
    return summary
