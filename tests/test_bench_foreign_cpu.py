"""bench/common.py ForeignCPU: CPU seconds of the benchmark's own processes that end within the span — Ray Train's
workers, reaped by a raylet that is itself gone by then — count as the benchmark's, not as foreign."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]

BURN = "import time\nt = time.process_time()\nwhile time.process_time() - t < 1.5:\n    pass\n"
# the child starts the burner in its own session and exits at once: the burner is nobody's child of ours
LAUNCH = (
    "import subprocess, sys\n"
    f"p = subprocess.Popen([sys.executable, '-c', {BURN!r}], start_new_session=True)\n"
    "print(p.pid)\n"
)


def _bench_common():
    spec = importlib.util.spec_from_file_location("bench_common_under_test", REPO / "bench" / "common.py")
    module = importlib.util.module_from_spec(spec)
    had_marker = "CORA_BENCH_TREE" in os.environ
    spec.loader.exec_module(module)  # sets the marker for this process (and what it starts)
    return module, had_marker


def test_an_ended_detached_process_of_the_benchmark_is_its_own_cpu():
    common, had_marker = _bench_common()
    try:
        foreign = common.ForeignCPU(interval_s=0.1)
        out = subprocess.run([sys.executable, "-c", LAUNCH], check=True, capture_output=True, text=True)
        burner = psutil.Process(int(out.stdout.strip()))
        gone, alive = psutil.wait_procs([burner], timeout=60)
        assert not alive, "the CPU burner did not end within 60 s"
        own = foreign.own_seconds()
        foreign.cores()
        # the burner used 1.5 s of CPU; sampling every 0.1 s misses at most its last 0.1 s
        assert own >= 1.2, f"own CPU {own:.2f} s: the ended burner's 1.5 s were not counted"
    finally:
        if not had_marker:
            os.environ.pop("CORA_BENCH_TREE", None)


def test_cpu_by_process_names_the_process_that_used_it():
    common, had_marker = _bench_common()
    try:
        foreign = common.ForeignCPU(interval_s=0.1)
        start = time.time()
        subprocess.run([sys.executable, "-c", BURN], check=True)  # 1.5 s of CPU in a child of ours
        time.sleep(0.3)  # a sample after the burner's end
        by_process = foreign.own_cores_by_process(start, time.time())
        foreign.cores()
        assert list(by_process)[0] == "python -c", by_process  # the largest user comes first
        # 1.5 CPU s over a window of ~1.8-2.5 s; the burner's part of the window counts, nothing beside it
        assert 0.4 <= by_process["python -c"] <= 1.05, by_process
    finally:
        if not had_marker:
            os.environ.pop("CORA_BENCH_TREE", None)


SPIN = "while True:\n    pass\n"


def test_preemptions_count_a_core_taken_from_a_runnable_process():
    common, had_marker = _bench_common()
    # the sleeper says when it is asleep: its start-up beside the spinners could itself be preempted
    sleeper = subprocess.Popen(
        [sys.executable, "-c", "import time; print('asleep', flush=True); time.sleep(30)"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert sleeper.stdout.readline().strip() == "asleep"
    time.sleep(0.1)  # from print to sleep
    asleep_before = common.preemptions(sleeper.pid)
    burners = [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range((os.cpu_count() or 1) + 1)]
    try:
        foreign = common.ForeignCPU(interval_s=0.1)
        start = time.time()
        time.sleep(1.5)  # more spinning processes than cores: the scheduler must take cores from them
        by_process = foreign.own_preemptions_by_process(start, time.time())
        foreign.cores()
        spinning = sum(common.preemptions(p.pid) for p in burners)
        assert spinning >= 20, f"{spinning} involuntary switches of {len(burners)} spinners on fewer cores"
        assert by_process.get("python -c", 0.0) >= 10, by_process  # per second, spinners and sleeper together
        # asleep all along: never runnable, so never preempted while the spinners were
        assert common.preemptions(sleeper.pid) == asleep_before
        assert common.preemptions(2**22 + 12345) == 0  # no such process: nothing counted
    finally:
        for p in [*burners, sleeper]:
            p.kill()
            p.wait()
        if not had_marker:
            os.environ.pop("CORA_BENCH_TREE", None)
