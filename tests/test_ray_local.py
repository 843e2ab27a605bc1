"""Reaping worker processes a local Ray cluster left behind (cora_ray/ray_local.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cora_ray import ray_local

FAKE_RAYLET = 2_000_000_001  # above any real pid limit: matches only the processes started here


def fake_proc(root: Path, procs: dict[str, bytes]) -> Path:
    for pid, env in procs.items():
        (root / pid).mkdir(parents=True)
        (root / pid / "environ").write_bytes(env)
        (root / pid / "cmdline").write_bytes(b"ray::TrainController\0")
    (root / "self").mkdir()
    return root


def test_worker_pids_match_the_raylet_exactly(tmp_path):
    proc = fake_proc(
        tmp_path,
        {
            "101": b"A=1\0RAY_RAYLET_PID=77\0B=2\0",
            "102": b"RAY_RAYLET_PID=770\0",  # another raylet whose pid starts the same way
            "103": b"PATH=/bin\0",
            "104": b"RAY_RAYLET_PID=77\0",
        },
    )
    assert ray_local.worker_pids(77, proc) == [101, 104]
    assert ray_local.worker_pids(770, proc) == [102]
    assert ray_local.worker_pids(5, proc) == []


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs Linux /proc")
def test_a_worker_still_alive_after_the_grace_period_is_killed_and_reported():
    env = {**os.environ, "RAY_RAYLET_PID": str(FAKE_RAYLET)}
    hung = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], env=env)
    # `quick` exits when its stdin closes: a fixed sleep raced the listing below on a loaded machine
    quick = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], env=env, stdin=subprocess.PIPE
    )
    try:
        assert sorted(ray_local.worker_pids(FAKE_RAYLET)) == sorted([hung.pid, quick.pid])
        quick.stdin.close()
        quick.wait(timeout=30)  # exits on its own within the grace period (reaped so it is no zombie)
        logs: list[str] = []
        killed = ray_local.reap_workers(FAKE_RAYLET, grace_s=1.0, log=logs.append)
        assert killed == [hung.pid]
        assert hung.wait(timeout=30) == -9
        assert len(logs) == 1 and f"pid {hung.pid}" in logs[0] and "hung on exit" in logs[0]
        assert ray_local.worker_pids(FAKE_RAYLET) == []
    finally:
        for p in (hung, quick):
            if p.poll() is None:
                p.kill()
                p.wait()


def test_nothing_to_reap_returns_at_once_without_logging():
    logs: list[str] = []
    assert ray_local.reap_workers(FAKE_RAYLET + 1, grace_s=30.0, log=logs.append) == []
    assert logs == []


def test_the_shared_test_cluster_knows_its_raylet(ray_cluster):
    raylet = ray_local.raylet_pid()
    assert raylet is not None and Path(f"/proc/{raylet}").exists()

    @ray_cluster.remote
    def env_raylet() -> str:
        return os.environ.get("RAY_RAYLET_PID", "")

    # the marker the reaper looks for is what Ray sets in its workers
    assert ray_cluster.get(env_raylet.remote()) == str(raylet)
