"""Training progress on rank 0: one console line per log interval, the same record as JSON lines next to the
checkpoints (`<storage>/<run>/progress.jsonl`), and TensorBoard event files when a writer is installed.

    progress = Progress(run_uri, max_steps=1000, eval_every=100, samples_per_step=16)
    progress.train_step(step, loss, lr)          # prints every `log_every` steps
    progress.validation(step, {"valid_auc": ..., "valid_uauc": ...}, seconds=...)
    progress.close()

On s3:// the JSONL file is kept locally and uploaded whole at each validation and at the end.
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

PROGRESS_FILE = "progress.jsonl"
TENSORBOARD_DIR = "tensorboard"


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


def _tensorboard_writer(logdir: str) -> Any | None:
    """A SummaryWriter from torch (needs `tensorboard`) or tensorboardX; None when neither is installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: PLC0415

        return SummaryWriter(logdir)
    except ImportError:
        pass
    try:
        from tensorboardX import SummaryWriter  # noqa: PLC0415

        return SummaryWriter(logdir)
    except ImportError:
        return None


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
        tensorboard: bool = True,
        endpoint: str | None = None,
    ) -> None:
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
        if not enabled:
            return
        if self.remote_jsonl:
            self._local_dir = Path(tempfile.mkdtemp(prefix="cora_progress_"))
            self.jsonl_path = self._local_dir / PROGRESS_FILE
            # a restarted worker group continues the file it finds
            if storage.exists(self.remote_jsonl, endpoint):
                self.jsonl_path.write_bytes(storage.read_bytes(self.remote_jsonl, endpoint))
        else:
            Path(run_uri).mkdir(parents=True, exist_ok=True)
            self.jsonl_path = Path(run_uri) / PROGRESS_FILE
        if tensorboard:
            tb_dir = (self._local_dir or Path(run_uri)) / TENSORBOARD_DIR
            self._writer = _tensorboard_writer(str(tb_dir))

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
    def train_step(self, step: int, loss: float, lr: float, step_seconds: float) -> None:
        """Record one optimizer step (`step` = steps done, 1-based after the update)."""
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
        self._write(record)
        if self._writer is not None:
            self._writer.add_scalar("train/loss", loss, step)
            self._writer.add_scalar("train/lr", lr, step)
            self._writer.add_scalar("train/samples_per_s", record["samples_per_s"], step)
        if step % self.log_every == 0 or step == self.max_steps or step == self._start_step + 1:
            say(self.line(step, loss, lr))

    def line(self, step: int, loss: float, lr: float) -> str:
        valid = "valid auc -"
        if self.last_valid:
            valid = (
                f"valid auc {self.last_valid.get('valid_auc', float('nan')):.4f} "
                f"uauc {self.last_valid.get('valid_uauc', float('nan')):.4f} "
                f"(best {self.best_auc:.4f} @ {self.best_step})"
            )
        return (
            f"[train] step {step}/{self.max_steps} | {self.samples_per_second():.2f} samples/s | loss {loss:.4f} | "
            f"lr {lr:.2e} | {valid} | eta {format_duration(self.eta_seconds(step))}"
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
