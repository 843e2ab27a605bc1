"""`ray job submit --working-dir . -- python jobs/train.py ...` against a head node started with `ray start --head`.

One slow test: the head node (with its dashboard, which serves job submission) takes ~20-30 s to come up, the
job ~60 s. The head runs under `ray start --block` in its own process group, and the whole group is ended
at the end: this test never touches another Ray cluster on the machine."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
EXCLUDES = [
    ".git",
    ".venv",
    "artifacts",
    "runs",
    "results",
    "bench/results",
    "**/__pycache__",
    ".pytest_cache",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def head_node():
    """A local head node (`ray start --head --block`); yields (dashboard address, env for the CLI)."""
    bin_dir = Path(sys.executable).parent
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", RAY_AUTH_MODE="disabled")
    env.pop("RAY_ADDRESS", None)
    port, dash = free_port(), free_port()
    temp_dir = f"/tmp/crjob-{uuid.uuid4().hex[:8]}"  # short: Ray's unix socket paths must stay < 108 chars
    head = subprocess.Popen(
        [
            str(bin_dir / "ray"),
            "start",
            "--head",
            f"--port={port}",
            "--num-cpus=4",
            "--include-dashboard=true",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dash}",
            # fixed defaults (agent 52365, client 10001) collide with the test session's own cluster
            f"--dashboard-agent-listen-port={free_port()}",
            f"--ray-client-server-port={free_port()}",
            f"--temp-dir={temp_dir}",
            "--disable-usage-stats",
            "--block",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    address = f"http://127.0.0.1:{dash}"
    ray_cli = str(bin_dir / "ray")
    try:
        # ready = a trivial job runs: the job server answers first, the agent that runs jobs comes a little later
        deadline, out = time.time() + 300, ""
        while time.time() < deadline:
            assert head.poll() is None, "ray start --head exited"
            r = subprocess.run(
                [ray_cli, "job", "submit", "--address", address, "--", "python", "-c", "print('ready')"],
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
            )
            out = r.stdout + r.stderr
            if r.returncode == 0:
                break
            time.sleep(3)
        else:
            agent_log = Path(temp_dir, "session_latest", "logs", "dashboard_agent.log")
            tail = agent_log.read_text()[-2000:] if agent_log.is_file() else "(no agent log)"
            pytest.fail(f"the head node did not run a job within 300 s:\n{out[-1500:]}\nagent log:\n{tail}")
        yield address, env
    finally:
        try:
            os.killpg(head.pid, signal.SIGTERM)
            head.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)  # every process of this head node, none of any other
            head.wait(timeout=30)
        except ProcessLookupError:
            pass
        subprocess.run(["rm", "-rf", temp_dir], check=False)


def test_ray_job_submit_trains_and_prints_the_best_checkpoint(head_node, tiny_inputs, tmp_path):
    address, env = head_node
    root = Path(tiny_inputs.root)
    # relative paths, resolved against --base-dir: the job itself runs in an uploaded copy of the repository
    cfg = tmp_path / "job.yaml"
    cfg.write_text("name: tiny-job\n")
    overrides = [
        o.replace(str(root) + "/", "")
        for o in tiny_inputs.overrides(Path("runs"), num_workers=2, max_steps=6, eval_every=3)
    ]
    assert "data.uri=data" in overrides and "train.storage_path=runs" in overrides
    cmd = [
        str(Path(sys.executable).parent / "ray"),
        "job",
        "submit",
        "--address",
        address,
        "--working-dir",
        str(REPO),
        "--runtime-env-json",
        json.dumps({"excludes": EXCLUDES}),
        "--",
        "python",
        "jobs/train.py",
        "--config",
        str(cfg),
        "--base-dir",
        str(root),
        *overrides,
    ]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, cwd=REPO)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    assert "succeeded" in out
    assert "best checkpoint:" in out
    runs = sorted((root / "runs").glob("tiny-job-*"))
    assert runs, out[-2000:]
    summary = json.loads((runs[-1] / "summary.json").read_text())
    assert summary["last_metrics"]["step"] == 6
    assert Path(summary["best_checkpoint"], "manifest.json").is_file()
    assert summary["best_checkpoint"] in out
