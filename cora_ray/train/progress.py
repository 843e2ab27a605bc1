"""Training progress on rank 0: one console line per log interval, the same record as JSON lines next to the
checkpoints (`<storage>/<run>/progress.jsonl`), Prometheus metrics through `ray.util.metrics`, and TensorBoard
event files when `train.tensorboard` asks for them.

    progress = Progress(run_uri, max_steps=1000, eval_every=100, samples_per_step=16)
    progress.train_step(step, loss, lr, step_seconds)   # prints and exports metrics every `log_every` steps
    progress.validation(step, {"valid_auc": ..., "valid_uauc": ...}, seconds=...)
    progress.close()

On s3:// the JSONL file is kept locally and uploaded whole at each validation and at the end.

Prometheus (`TrainMetrics`, tag `run` = the run's directory name): every `log_every` steps the window's mean
step time (`cora_train_step_seconds`, also observed in the histogram `cora_train_step_time_seconds`), its
samples/s (`cora_train_samples_per_second`), the last loss (`cora_train_loss`) and learning rate
(`cora_train_learning_rate`), the optimizer steps done (`cora_train_step`), and the counters
`cora_train_optimizer_steps` / `cora_train_samples_consumed`. Ray's metrics agent on each node exports them for
Prometheus to scrape (docs/training.md, "Metrics").
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from cora_ray import storage
from cora_ray.errors import ConfigError

PROGRESS_FILE = "progress.jsonl"
TENSORBOARD_DIR = "tensorboard"
TENSORBOARD_EXTRA = "pip install 'cora_ray[tensorboard]'"
# step-time histogram buckets (s): a tiny CPU model's ~0.1 s up to a large model's accumulation of minutes
STEP_SECONDS_BOUNDARIES = [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0]


def say(text: str) -> None:
    """One console line. Written to stdout directly: inside a Train worker Ray patches `print` into a logger
    that shows every line twice on the driver's console."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def format_duration(seconds: float) -> str:
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def tensorboard_writer_class() -> type:
    """SummaryWriter from torch (needs the `tensorboard` package) or from tensorboardX.

    Raises ConfigError naming the `tensorboard` extra when neither is installed: a run that asked for
    TensorBoard (`train.tensorboard: true`) does not go on silently without it."""
    try:
        from torch.utils.tensorboard import SummaryWriter

        return SummaryWriter
    except ImportError:
        pass
    try:
        from tensorboardX import SummaryWriter

        return SummaryWriter
    except ImportError:
        raise ConfigError(
            "train.tensorboard is true but neither tensorboard nor tensorboardX is installed: "
            f"{TENSORBOARD_EXTRA} (or set train.tensorboard=false)"
        ) from None


def run_name_of(run_uri: str) -> str:
    """The run's directory name (`<storage>/<run name>`, local or s3://): the `run` tag of its metrics."""
    return run_uri.rstrip("/").rsplit("/", 1)[-1]


class TrainMetrics:
    """The training metrics exported to Prometheus, tagged with the run name.

    `metrics` is the module providing Gauge / Counter / Histogram with `ray.util.metrics`'s signatures; the
    default is `ray.util.metrics` itself (which records from inside any Ray process, e.g. a Train worker).
    Tests pass a recording stand-in."""

    def __init__(self, run_name: str, metrics: Any = None) -> None:
        if metrics is None:
            import ray.util.metrics as metrics
        self.tags = {"run": run_name}
        keys = ("run",)
        self.step_seconds = metrics.Gauge(
            "cora_train_step_seconds", "mean optimizer-step time over the last log interval (s)", keys
        )
        self.step_time = metrics.Histogram(
            "cora_train_step_time_seconds",
            "optimizer-step time, the mean of each log interval (s)",
            STEP_SECONDS_BOUNDARIES,
            keys,
        )
        self.samples_per_second = metrics.Gauge(
            "cora_train_samples_per_second", "training samples per second over the last log interval", keys
        )
        self.loss = metrics.Gauge("cora_train_loss", "training loss (mean over ranks) at the last step", keys)
        self.learning_rate = metrics.Gauge("cora_train_learning_rate", "learning rate at the last step", keys)
        self.step = metrics.Gauge("cora_train_step", "optimizer steps done", keys)
        self.steps_total = metrics.Counter(
            "cora_train_optimizer_steps", "optimizer steps taken by this run", keys
        )
        self.samples_total = metrics.Counter(
            "cora_train_samples_consumed", "training samples consumed by this run (all workers)", keys
        )

    def record(
        self, *, step: int, steps: int, samples: int, seconds: float, loss: float, lr: float
    ) -> dict[str, float]:
        """One log interval: `steps` optimizer steps of `samples` samples in `seconds`, ending at `step`
        with `loss` and `lr`. Returns the values set (for the record)."""
        mean_step = seconds / steps if steps > 0 else 0.0
        rate = samples / seconds if seconds > 0 else 0.0
        t = self.tags
        self.step_seconds.set(mean_step, tags=t)
        self.step_time.observe(mean_step, tags=t)
        self.samples_per_second.set(rate, tags=t)
        self.loss.set(float(loss), tags=t)
        self.learning_rate.set(float(lr), tags=t)
        self.step.set(step, tags=t)
        if steps > 0:
            self.steps_total.inc(steps, tags=t)
        if samples > 0:
            self.samples_total.inc(samples, tags=t)
        return {"step_seconds": mean_step, "samples_per_s": rate, "loss": float(loss), "lr": float(lr)}


class Progress:
    """Rank-0 progress reporter. `enabled=False` makes every method a no-op (other ranks)."""

    def __init__(
        self,
        run_uri: str,
        *,
        max_steps: int,
        eval_every: int,
        samples_per_step: int,
        start_step: int = 0,
        log_every: int = 1,
        enabled: bool = True,
        tensorboard: bool = False,
        endpoint: str | None = None,
        metrics: TrainMetrics | None = None,
    ) -> None:
        """`tensorboard`: write event files (ConfigError naming the extra when not installed). `metrics`: the
        Prometheus sink (default: a `TrainMetrics` on `ray.util.metrics`, tagged with the run's name)."""
        self.enabled = enabled
        self.max_steps = max_steps
        self.eval_every = eval_every
        self.samples_per_step = samples_per_step
        self.log_every = max(1, log_every)
        self.endpoint = endpoint
        self.run_uri = run_uri
        self.remote_jsonl = storage.join(run_uri, PROGRESS_FILE) if storage.is_s3(run_uri) else None
        self.last_valid: dict[str, float] = {}
        self.best_auc = float("-inf")
        self.best_step: int | None = None
        self._start_step = start_step
        self._t_start = time.perf_counter()
        self._t_window = self._t_start
        self._window_steps = 0
        self._train_seconds = 0.0  # time spent in training steps (excludes validation), for samples/s and ETA
        self._train_steps = 0
        self._valid_seconds: list[float] = []
        self._warmup_pending = True
        self._first_step_seconds = 0.0
        self._writer = None
        self._local_dir: Path | None = None
        self.metrics: TrainMetrics | None = None
        self._metric_window = [0, 0.0]  # steps, seconds since the last export
        if not enabled:
            return
        writer_class = tensorboard_writer_class() if tensorboard else None  # fail before writing anything
        self.metrics = metrics if metrics is not None else TrainMetrics(run_name_of(run_uri))
        if self.remote_jsonl:
            self._local_dir = Path(tempfile.mkdtemp(prefix="cora_progress_"))
            self.jsonl_path = self._local_dir / PROGRESS_FILE
            # a restarted worker group continues the file it finds
            if storage.exists(self.remote_jsonl, endpoint):
                self.jsonl_path.write_bytes(storage.read_bytes(self.remote_jsonl, endpoint))
        else:
            Path(run_uri).mkdir(parents=True, exist_ok=True)
            self.jsonl_path = Path(run_uri) / PROGRESS_FILE
        if writer_class is not None:
            tb_dir = (self._local_dir or Path(run_uri)) / TENSORBOARD_DIR
            self._writer = writer_class(str(tb_dir))

    # ------------------------------------------------------------------------------------------------------
    def _write(self, record: dict) -> None:
        with open(self.jsonl_path, "a") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")

    def _sync(self) -> None:
        if self.remote_jsonl and self.jsonl_path.exists():
            storage.write_bytes(self.remote_jsonl, self.jsonl_path.read_bytes(), self.endpoint)
            if self._writer is not None and self._local_dir is not None:
                self._writer.flush()
                tb_local = self._local_dir / TENSORBOARD_DIR
                for p in tb_local.rglob("*"):
                    if p.is_file():
                        rel = p.relative_to(self._local_dir).as_posix()
                        storage.write_bytes(storage.join(self.run_uri, rel), p.read_bytes(), self.endpoint)

    def samples_per_second(self) -> float:
        return (
            self._train_steps * self.samples_per_step / self._train_seconds
            if self._train_seconds > 0
            else 0.0
        )

    def eta_seconds(self, step: int) -> float:
        if self._train_steps == 0:
            return float("nan")
        per_step = self._train_seconds / self._train_steps
        remaining = self.max_steps - step
        valid = (sum(self._valid_seconds) / len(self._valid_seconds)) if self._valid_seconds else 0.0
        remaining_valids = remaining // self.eval_every + 1
        return remaining * per_step + remaining_valids * valid

    # ------------------------------------------------------------------------------------------------------
    def logs_at(self, step: int) -> bool:
        """Whether `train_step(step, ...)` prints a progress line (every log_every steps, the last and the first)."""
        return step % self.log_every == 0 or step == self.max_steps or step == self._start_step + 1

    def train_step(
        self,
        step: int,
        loss: float,
        lr: float,
        step_seconds: float,
        g_spread: float | None = None,
        data_wait_s: float | None = None,
    ) -> None:
        """Record one optimizer step (`step` = steps done, 1-based after the update). `g_spread`: the varying
        share of G over the rows since the last logged step (cora_ray/train/delta_spread.py), for methods with G;
        `data_wait_s`: the part of `step_seconds` spent waiting for the step's micro-batches."""
        if not self.enabled:
            return
        if self._warmup_pending:
            # the first step after a (re)start includes the data pipeline's start-up: not a training rate
            self._warmup_pending = False
            self._first_step_seconds = step_seconds
        else:
            self._train_seconds += step_seconds
            self._train_steps += 1
        record = {
            "type": "train",
            "step": step,
            "loss": float(loss),
            "lr": float(lr),
            "samples_per_s": round(self.samples_per_second(), 4),
            "elapsed_s": round(time.perf_counter() - self._t_start, 3),
            "time": time.time(),
        }
        if g_spread is not None:
            record["g_varying_share"] = round(g_spread, 6)
        if data_wait_s is not None:
            record["data_wait_s"] = round(data_wait_s, 4)
        self._write(record)
        if self._writer is not None:
            self._writer.add_scalar("train/loss", loss, step)
            if g_spread is not None:
                self._writer.add_scalar("train/g_varying_share", g_spread, step)
            self._writer.add_scalar("train/lr", lr, step)
            self._writer.add_scalar("train/samples_per_s", record["samples_per_s"], step)
        self._metric_window[0] += 1
        self._metric_window[1] += step_seconds
        if step % self.log_every == 0 or step == self.max_steps:
            steps, seconds = self._metric_window
            assert self.metrics is not None
            self.metrics.record(
                step=step,
                steps=steps,
                samples=steps * self.samples_per_step,
                seconds=seconds,
                loss=loss,
                lr=lr,
            )
            self._metric_window = [0, 0.0]
        if self.logs_at(step):
            say(self.line(step, loss, lr, g_spread))

    def line(self, step: int, loss: float, lr: float, g_spread: float | None = None) -> str:
        valid = "valid auc -"
        if self.last_valid:
            valid = (
                f"valid auc {self.last_valid.get('valid_auc', float('nan')):.4f} "
                f"uauc {self.last_valid.get('valid_uauc', float('nan')):.4f} "
                f"(best {self.best_auc:.4f} @ {self.best_step})"
            )
        # the first step after a (re)start includes the pipeline's start-up and is not counted: no rate yet
        rate = f"{self.samples_per_second():.2f}" if self._train_steps else "-"
        # how much G varies between rows: near 0 means the generator gives every row one G (a collapse)
        spread = "" if g_spread is None else f"G spread {g_spread:.4f} | "
        return (
            f"[train] step {step}/{self.max_steps} | {rate} samples/s | loss {loss:.4f} | "
            f"lr {lr:.2e} | {spread}{valid} | eta {format_duration(self.eta_seconds(step))}"
        )

    def validation(self, step: int, metrics: dict[str, Any], seconds: float) -> None:
        if not self.enabled:
            return
        self._valid_seconds.append(seconds)
        self.last_valid = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
        auc = float(metrics.get("valid_auc", float("nan")))
        if auc > self.best_auc:
            self.best_auc, self.best_step = auc, step
        record = {"type": "valid", "step": step, "seconds": round(seconds, 3), "time": time.time(), **metrics}
        self._write(record)
        if self._writer is not None:
            for k, v in self.last_valid.items():
                if math.isfinite(v):  # UAUC is NaN when no user has both labels in a small sample
                    self._writer.add_scalar(f"valid/{k.removeprefix('valid_')}", v, step)
        say(
            f"[valid] step {step}/{self.max_steps} | auc {auc:.4f} | uauc {metrics.get('valid_uauc', float('nan')):.4f} "
            f"| rows {metrics.get('valid_rows')} | best {self.best_auc:.4f} @ {self.best_step} | {seconds:.1f} s"
        )
        self._sync()

    def event(self, kind: str, **fields: Any) -> None:
        """A free-form record (start, resume, early stop, end)."""
        if not self.enabled:
            return
        self._write({"type": kind, "time": time.time(), **fields})

    def close(self) -> None:
        if not self.enabled:
            return
        if self._writer is not None:
            self._writer.flush()
        self._sync()
        if self._writer is not None:
            self._writer.close()
