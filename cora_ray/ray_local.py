"""Shutting down a local Ray cluster that this process started, without leaving worker processes behind.

`ray.shutdown()` stops the raylet, which normally takes its worker processes with it. But a worker can hang
after its task loop has ended: seen here on a `ray::TrainController` after a normal 2-worker fit (its core
worker logged "Shutdown completed successfully", then its main thread blocked for good on a mutex in the
pubsub Publisher's destructor — a deadlock inside Ray's C++ core, 1 of 3 fits in one test session). Such a
process is orphaned (parent pid 1), holds ~400 MB, and outlives the job that started it.

`init_local_cluster(**ray_init_kwargs)` starts the cluster and registers the same clean-up for interpreter
exit (for jobs that leave shutdown to exit); `shutdown_local_cluster()` records the raylet's pid before shutting down, then finds the processes that
raylet started (every Ray worker has `RAY_RAYLET_PID=<pid>` in its environment), gives them a grace period
to exit and kills the rest with SIGKILL, reporting each one. It touches only processes of that raylet, so
other clusters on the machine are safe; on a cluster it did not start (RAY_ADDRESS) it only disconnects.
"""

from __future__ import annotations

import atexit
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

PROC = Path("/proc")


def raylet_pid() -> int | None:
    """Pid of the raylet of the local node this driver started, else None (not connected, or not local)."""
    import ray

    node = getattr(ray._private.worker, "_global_node", None)
    if node is None:
        return None
    from ray._private import ray_constants

    procs = getattr(node, "all_processes", {}).get(ray_constants.PROCESS_TYPE_RAYLET) or []
    return procs[0].process.pid if procs else None


def worker_pids(raylet: int, proc: Path = PROC) -> list[int]:
    """Pids of live processes started by the raylet `raylet` (RAY_RAYLET_PID in their environment)."""
    marker = f"RAY_RAYLET_PID={raylet}".encode()
    found = []
    for entry in proc.iterdir() if proc.is_dir() else []:
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            env = (entry / "environ").read_bytes()
        except OSError:  # gone meanwhile, or another user's process
            continue
        if marker in env.split(b"\0"):
            found.append(int(entry.name))
    return sorted(found)


def reap_workers(
    raylet: int,
    grace_s: float = 5.0,
    proc: Path = PROC,
    log: Callable[[str], None] | None = None,
) -> list[int]:
    """Wait up to `grace_s` for the raylet's workers to exit; SIGKILL those still alive. Returns their pids."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    deadline = time.monotonic() + grace_s
    left = worker_pids(raylet, proc)
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = worker_pids(raylet, proc)
    for pid in left:
        name = _process_name(pid, proc)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue
        log(
            f"warning: killed Ray worker pid {pid} ({name}) that was still alive {grace_s:.0f} s after "
            "ray.shutdown() (a worker hung on exit; see cora_ray/ray_local.py)"
        )
    return left


def init_local_cluster(**ray_init_kwargs) -> int | None:
    """`ray.init(**ray_init_kwargs)` for a new local cluster, reaped at interpreter exit (see the module
    docstring) unless `shutdown_local_cluster()` did it earlier. Returns the raylet's pid."""
    import ray

    ray.init(**ray_init_kwargs)
    raylet = raylet_pid()
    if raylet is not None:
        atexit.register(_shutdown_at_exit, raylet)
    return raylet


def _shutdown_at_exit(raylet: int) -> None:
    import ray

    if ray.is_initialized() and raylet_pid() == raylet:
        ray.shutdown()
    reap_workers(raylet)  # also after a plain ray.shutdown() elsewhere: its workers may still hang


def shutdown_local_cluster(grace_s: float = 5.0, log: Callable[[str], None] | None = None) -> list[int]:
    """`ray.shutdown()`, then reap the workers of the raylet this process started. Returns the pids killed."""
    import ray

    atexit.unregister(_shutdown_at_exit)  # done now; a process that starts clusters again registers anew
    raylet = raylet_pid()
    ray.shutdown()
    if raylet is None:
        return []
    return reap_workers(raylet, grace_s=grace_s, log=log)


def _process_name(pid: int, proc: Path) -> str:
    try:
        return (proc / str(pid) / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace") or "?"
    except OSError:
        return "?"
