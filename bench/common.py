"""Shared helpers of the benchmarks: interleaved timing, peak memory of one call, and the result files.

Every result is `bench/results/<name>.json` with the fields name, value, baseline, ratio (= value /
baseline), unit, config, command, machine (plus goal / goal_met / notes where they apply), and a
markdown summary `bench/results/<name>.md` beside it.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shlex
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).resolve().parent / "results"
REPO = RESULTS.parents[1]
# a directory a benchmark made under the temp dir (tempfile.mkdtemp): machine-specific, so not recorded
_TEMP_DIR = re.compile(re.escape(tempfile.gettempdir().rstrip("/")) + r"/[^/\s\"'`]+")


def portable(text: str) -> str:
    """`text` with this machine's paths taken out, as committed results must be: the repository's root
    becomes relative (`runs/...`), a benchmark's own temp directory `<tmp>`
    (tests/test_committed_records.py checks every committed record)."""
    return _TEMP_DIR.sub("<tmp>", text.replace(f"{REPO}/", "").replace(str(REPO), "."))


def machine() -> dict[str, Any]:
    """Where the numbers were measured: CPU model, cores, torch threads, library versions."""
    cpu = platform.processor() or "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        found = re.search(r"model name\s*:\s*(.+)", cpuinfo.read_text())
        cpu = found.group(1).strip() if found else cpu
    import transformers

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "load_average_1m": round(load_average(), 2),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }


def command_line() -> str:
    return " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv])


def interleaved_times(
    fns: dict[str, Callable[[], Any]], reps: int, warmup: int = 1
) -> dict[str, list[float]]:
    """Wall-clock seconds of each function, `reps` times, run round-robin (A B C A B C ...).

    Round-robin keeps slow drifts of a shared machine (other jobs, thermal) out of the ratios."""
    return interleaved_wall_and_cpu_times(fns, reps, warmup)[0]


def interleaved_wall_and_cpu_times(
    fns: dict[str, Callable[[], Any]], reps: int, warmup: int = 1
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """(wall, cpu): as `interleaved_times`, plus the process-CPU seconds of each run (all threads).

    CPU time is less sensitive than wall time to other processes taking the cores of a shared machine."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    wall: dict[str, list[float]] = {name: [] for name in fns}
    cpu: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            c0, t0 = time.process_time(), time.perf_counter()
            fn()
            wall[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    return wall, cpu


def load_average() -> float:
    """1-minute load average (how busy the shared machine was)."""
    return os.getloadavg()[0]


# Every process this benchmark starts — Ray's GCS, raylet and the workers the raylet forks included, which are
# not all its descendants (Ray detaches some) — inherits this variable: ForeignCPU tells them apart by it.
BENCH_TREE_ENV = "CORA_BENCH_TREE"
os.environ.setdefault(BENCH_TREE_ENV, str(os.getpid()))


class ForeignCPU:
    """CPU time used on this machine by processes that are not this benchmark's, over a span.

    The load average cannot say whether a run was disturbed: it counts the benchmark's own threads (a 2-thread
    training step alone is a load of 2 on 2 cores) and lags by a minute. This counts what others used: the
    machine's busy CPU seconds minus those of the processes carrying this benchmark's `BENCH_TREE_ENV` value
    (this process, and Ray's processes and workers started from it).

    Processes of the benchmark that end within the span (Ray Train's workers, the raylet at `ray.shutdown()`)
    take their CPU time with them, and their reaper may be gone too; so a daemon thread samples every
    benchmark process's CPU seconds each `interval_s`, and a process that ends counts with its last sample (up to
    `interval_s` of its CPU missed, counted as foreign: the figure errs towards "disturbed"). Reaped children's
    times (`children_*`) are not added: a process sampled alive and later reaped would count twice.

        foreign = ForeignCPU(); ...run...; foreign.cores()   # mean cores used by others since construction
    """

    def __init__(self, interval_s: float = 1.0) -> None:
        self._interval_s = interval_s
        self._t0, self._wall0, self._busy0 = time.monotonic(), time.time(), self._busy()
        self._first: dict[tuple[int, float], float] = {}  # (pid, create time) -> CPU s at the span's start
        self._last: dict[tuple[int, float], float] = {}  # the same -> CPU s at its latest sample
        self._names: dict[
            tuple[int, float], str
        ] = {}  # the same -> its process title (ray::..., raylet, ...)
        # -> [(wall time, CPU s, involuntary context switches of all its threads so far)]
        self._series: dict[tuple[int, float], list[tuple[float, float, int]]] = {}
        self._lock = threading.Lock()
        self._sample()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample_until_stopped, name="foreign-cpu", daemon=True)
        self._thread.start()

    @staticmethod
    def _busy() -> float:
        import psutil

        c = psutil.cpu_times()
        return c.user + c.nice + c.system + getattr(c, "irq", 0.0) + getattr(c, "softirq", 0.0)

    def _sample(self) -> None:
        import psutil

        tree = os.environ[BENCH_TREE_ENV]
        seen: dict[tuple[int, float], float] = {}
        for proc in psutil.process_iter():
            try:
                if proc.pid != os.getpid() and proc.environ().get(BENCH_TREE_ENV) != tree:
                    continue
                t = proc.cpu_times()
                key = (proc.pid, proc.create_time())
                # the latest title: a Ray worker renames itself to its actor once it has one
                self._names[key] = _process_title(proc)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue  # gone meanwhile (its last sample stands) or not ours to read
            seen[key] = (t.user + t.system, preemptions(proc.pid))
        now = time.time()
        with self._lock:
            for key, (cpu, preempted) in seen.items():
                # a process born within the span used 0 s at its start
                self._first.setdefault(key, cpu if key[1] < self._wall0 else 0.0)
                self._last[key] = cpu
                self._series.setdefault(key, []).append((now, cpu, preempted))

    def _sample_until_stopped(self) -> None:
        while not self._stop.wait(self._interval_s):
            self._sample()

    def own_seconds(self) -> float:
        """CPU seconds the benchmark's own processes used since construction (as sampled so far, plus now)."""
        self._sample()
        with self._lock:
            return sum(self._last[k] - self._first[k] for k in self._last)

    def own_cores_by_process(self, start: float, end: float) -> dict[str, float]:
        """Mean cores each of the benchmark's own processes used between wall times `start` and `end`
        (time.time()), from the samples nearest inside the window; grouped by process title, largest first.
        Shows where a run's CPU went besides its compute (Ray's raylet, GCS, driver, data actors)."""
        return self._rate_by_process(start, end, 1, 3)

    def own_preemptions_by_process(self, start: float, end: float) -> dict[str, float]:
        """Involuntary context switches per second of each of the benchmark's own processes (all its threads)
        between wall times `start` and `end`, grouped by process title, largest first: how often something
        else took a core from a computing thread (`preemptions`)."""
        return self._rate_by_process(start, end, 2, 1)

    def _rate_by_process(self, start: float, end: float, field: int, digits: int) -> dict[str, float]:
        """The change of sample `field` between the first and last sample inside the window, per second of
        the window, summed by process title."""
        span = max(end - start, 1e-9)
        by_name: dict[str, float] = {}
        with self._lock:
            for key, series in self._series.items():
                inside = [sample for sample in series if start <= sample[0] <= end]
                if len(inside) < 2:
                    continue
                name = self._names.get(key, "?")
                by_name[name] = by_name.get(name, 0.0) + (inside[-1][field] - inside[0][field]) / span
        return {k: round(v, digits) for k, v in sorted(by_name.items(), key=lambda kv: -kv[1])}

    def cores(self) -> float:
        """Mean number of cores others used since construction (never below 0); stops the sampler."""
        own = self.own_seconds()
        seconds = max(time.monotonic() - self._t0, 1e-9)
        self._stop.set()
        return max(0.0, ((self._busy() - self._busy0) - own) / seconds)


def preemptions(pid: int, proc: Path = Path("/proc")) -> int:
    """Involuntary context switches so far of every live thread of process `pid` (Linux; 0 elsewhere or once
    it is gone): each is a moment the scheduler took a core from a runnable thread for another task. A thread
    of a torch intra-op team that is preempted holds up its partner at the team's next barrier."""
    total = 0
    for status in (proc / str(pid) / "task").glob("*/status"):
        try:
            found = re.search(r"^nonvoluntary_ctxt_switches:\s+(\d+)", status.read_text(), re.M)
        except OSError:  # the thread ended between the listing and the read: its switches go with it
            continue
        total += int(found.group(1)) if found else 0
    return total


def _process_title(proc: Any) -> str:
    """A short label of a process: Ray's title (`ray::RayTrainWorker`, `raylet`, `gcs_server`) or the script."""
    cmd = proc.cmdline()
    if not cmd:
        return proc.name()
    first = cmd[0].split()[0] if cmd[0].startswith("ray::") else Path(cmd[0]).name
    if first.startswith("python") and len(cmd) > 1:  # a Python process: name the script or module it runs
        if cmd[1] in ("-c", "-m"):
            return f"python {cmd[1]} {cmd[2] if cmd[1] == '-m' and len(cmd) > 2 else ''}".strip()[:60]
        script = next((c for c in cmd[1:] if not c.startswith("-")), "")
        return f"python {Path(script).name}"[:60]
    return first[:60]


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def _proc_status_kib(key: str) -> int:
    found = re.search(rf"^{key}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    if found is None:
        raise RuntimeError(f"/proc/self/status has no {key} (peak memory needs Linux)")
    return int(found.group(1))


def peak_memory_bytes(fn: Callable[[], Any]) -> int:
    """Peak resident memory that `fn()` adds on top of what the process holds before it (Linux, CPU).

    Resets the kernel's high-water mark (/proc/self/clear_refs = 5), runs `fn`, reads VmHWM. Run it in a
    fresh process started with MALLOC_MMAP_THRESHOLD_ set low, so that freed tensors go back to the
    kernel instead of staying in malloc's heap (see `memory_child_env`)."""
    before = _proc_status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")
    fn()
    return (_proc_status_kib("VmHWM") - before) * 1024


def memory_child_env(threads: int) -> dict[str, str]:
    """Environment of a peak-memory child process: fixed malloc mmap threshold, fixed thread count."""
    return {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": str(threads)}


def save_record(record: dict[str, Any]) -> None:
    """(Re)write `results/<record name>.json` and `.md` from a record, e.g. after a caller amended its notes."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{record['name']}.json").write_text(portable(json.dumps(record, indent=2) + "\n"))
    (RESULTS / f"{record['name']}.md").write_text(portable(markdown(record)))


def write_result(
    name: str,
    *,
    value: float,
    baseline: float,
    unit: str,
    config: dict[str, Any],
    title: str,
    value_label: str,
    baseline_label: str,
    goal: float | None = None,
    notes: str = "",
    samples: dict[str, list[float]] | None = None,
) -> dict[str, Any]:
    """Write `results/<name>.json` and `results/<name>.md`; return the JSON record.

    `goal` is an upper bound on the ratio value / baseline (lower is better for every benchmark here)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    ratio = value / baseline
    record: dict[str, Any] = {
        "name": name,
        "value": value,
        "baseline": baseline,
        "ratio": ratio,
        "unit": unit,
        "config": config,
        "command": command_line(),
        "machine": machine(),
        "title": title,
        "value_label": value_label,
        "baseline_label": baseline_label,
    }
    if goal is not None:
        record["goal"] = f"ratio <= {goal}"
        record["goal_met"] = ratio <= goal
    if notes:
        record["notes"] = notes
    if samples:
        record["samples"] = samples
    save_record(record)
    return record


def _fmt(x: float, unit: str) -> str:
    if unit == "bytes":
        return f"{x / 2**20:,.1f} MiB"
    if unit == "s":
        return f"{x:.3f} s"
    return f"{x:.4g} {unit}"


def markdown(record: dict[str, Any]) -> str:
    """One result as a small markdown page."""
    unit = record["unit"]
    lines = [
        f"# {record['title']}",
        "",
        "| | |",
        "|---|---|",
        f"| {record['value_label']} | {_fmt(record['value'], unit)} |",
        f"| {record['baseline_label']} (baseline) | {_fmt(record['baseline'], unit)} |",
        f"| ratio | **{record['ratio']:.3f}** |",
    ]
    if "goal" in record:
        lines.append(f"| goal | {record['goal']} — {'met' if record['goal_met'] else 'NOT met'} |")
    m = record["machine"]
    lines += [
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores (1-min load average {m['load_average_1m']} when written), "
        f"torch threads {m['torch_threads']}, "
        f"torch {m['torch']}, transformers {m['transformers']}.",
        "",
        f"Command: `{record['command']}`",
        "",
    ]
    if record.get("notes"):
        lines += [record["notes"], ""]
    lines += ["Config:", "", "```json", json.dumps(record["config"], indent=2), "```", ""]
    return "\n".join(lines)


def summary_table(records: list[dict[str, Any]]) -> str:
    """A markdown table of several results (for a bench's overview page)."""
    lines = ["| benchmark | value | baseline | ratio | goal |", "|---|---|---|---|---|"]
    for r in records:
        goal = f"{r['goal']} ({'met' if r['goal_met'] else 'NOT met'})" if "goal" in r else ""
        lines.append(
            f"| {r['title']} | {_fmt(r['value'], r['unit'])} | {_fmt(r['baseline'], r['unit'])} "
            f"| **{r['ratio']:.3f}** | {goal} |"
        )
    return "\n".join(lines) + "\n"
