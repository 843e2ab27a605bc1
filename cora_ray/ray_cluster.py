"""Start or join Ray — the one way every job of this project does it, with one rule for the environment.

    started = start_or_join(num_cpus=4, env={"DS_ACCELERATOR": "cpu"})   # True: this process started Ray
    ...
    if started:
        shutdown_local_cluster()                                          # cora_ray/ray_local.py

- Already initialised in this process: nothing happens (False).
- `RAY_ADDRESS` set (`ray job submit`, a cluster node): joins that cluster (False); the cluster keeps the
  runtime environment it was started with.
- Otherwise: a new local cluster through `cora_ray.ray_local.init_local_cluster` (True), without the
  dashboard, with a `runtime_env` holding `forwarded_env()` and this repository on PYTHONPATH.

The environment rule (`forwarded_env`): a `runtime_env` carries only non-secret settings — threads, the
S3 endpoint and region, Hugging Face offline flags and caches. Credentials
(`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `HF_TOKEN`, ...) are never put there: a
runtime_env is stored by Ray's GCS and shown by its dashboard and state API. Workers of a local cluster
inherit them from the driver's own environment (the raylet is started from this process); nodes of a real
cluster get theirs from the instance profile (cluster.yaml).

Logs: workers' output reaches the driver (`log_to_driver`) except the lines in `KNOWN_HARMLESS_WORKER_LINES`,
which Ray prints about its own internals on every run (each entry says why it is harmless); the worker
processes of a local cluster also run the `setup_hook` (cora_ray/train/ray_setup.py for training).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path

from cora_ray.errors import ConfigError
from cora_ray.ray_local import init_local_cluster
from cora_ray.train.ray_setup import quiet_known_harmless_ray_logs

REPO = Path(__file__).resolve().parents[1]

# Settings every worker gets, whatever the driver has.
BASE_ENV = {
    "OMP_NUM_THREADS": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "RAY_USAGE_STATS_ENABLED": "0",
}
# Copied from the driver's environment when set there: none of them is a secret.
FORWARDED = (
    "AWS_ENDPOINT_URL",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "HF_HOME",
    "HF_HUB_OFFLINE",
    "TRANSFORMERS_OFFLINE",
    "CORA_RAY_CACHE_DIR",
    "XDG_CACHE_HOME",
)
# Worker log lines dropped on the driver: each is Ray's remark about its own code, printed on every run.
KNOWN_HARMLESS_WORKER_LINES = (
    # Ray Train V2 creates its PreemptionWatcher actor with max_restarts=-1 and the train workers' actor
    # handles as constructor arguments; core_worker warns that a restart could lose such arguments
    # (Ray issue 53727). The watcher only observes node preemption; the project's own actors are not matched.
    re.compile(
        r"core_worker\.cc:\d+: Actor with class name: 'PreemptionWatcher' and ID: '[0-9a-f]+' has constructor "
        r"arguments in the object store and max_restarts > 0"
    ),
    # Ray Data's actor pools (map_batches with a class) start every MapWorker with max_restarts=-1 and the
    # operator's map transformer (the UDF and its constructor arguments) as an object-store reference
    # (ray/data/_internal/execution/operators/actor_pool_map_operator.py), whatever the arguments' size. The
    # operator holds that reference for as long as the dataset runs, so a restarted MapWorker finds it.
    re.compile(
        r"core_worker\.cc:\d+: Actor with class name: 'MapWorker\(MapBatches\([A-Za-z_][A-Za-z0-9_]*\)\)' and "
        r"ID: '[0-9a-f]+' has constructor arguments in the object store and max_restarts > 0"
    ),
)
PRINT_LOGS_HANDLER = "ray_print_logs"  # the name ray.init gives its worker-log printer


def is_known_harmless(line: str) -> bool:
    """True for a worker log line matched by `KNOWN_HARMLESS_WORKER_LINES`."""
    return any(pattern.search(line) for pattern in KNOWN_HARMLESS_WORKER_LINES)


def filter_worker_logs(dispatcher=None) -> bool:
    """Wrap Ray's driver-side worker-log printer so that known-harmless lines are dropped; True when wrapped.

    `dispatcher` is Ray's worker stdout/stderr dispatcher (default: the process's own). Nothing is wrapped
    when ray.init did not install a printer (log_to_driver=False) or it is already wrapped."""
    if dispatcher is None:
        from ray._private.worker import global_worker_stdstream_dispatcher as dispatcher

        # Ray Data executes in the driver too (evaluation): the same narrow silencing as in the workers
        quiet_known_harmless_ray_logs()
    printers = [handler for name, handler in dispatcher.handlers if name == PRINT_LOGS_HANDLER]
    if len(printers) != 1 or getattr(printers[0], "filters_known_harmless", False):
        return False
    dispatcher.remove_handler(PRINT_LOGS_HANDLER)
    dispatcher.add_handler(PRINT_LOGS_HANDLER, _without_known_harmless(printers[0]))
    return True


def _without_known_harmless(print_logs: Callable[[dict], None]) -> Callable[[dict], None]:
    def print_filtered(data: dict) -> None:
        lines = [line for line in data.get("lines", []) if not is_known_harmless(line)]
        if lines:
            print_logs({**data, "lines": lines})

    print_filtered.filters_known_harmless = True  # type: ignore[attr-defined]
    return print_filtered


# Never in a runtime_env, even when a caller asks for it.
SECRET_ENV = frozenset(
    {
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_SECURITY_TOKEN",
        "HF_TOKEN",
        "HUGGING_FACE_HUB_TOKEN",
    }
)
SECRET_MARKERS = ("SECRET", "TOKEN", "PASSWORD", "CREDENTIAL")
NOT_SECRET = frozenset({"TOKENIZERS_PARALLELISM"})  # has "TOKEN" in its name, holds true/false


def is_secret(name: str) -> bool:
    """True for a variable that must never travel in a runtime_env (credentials, tokens, passwords)."""
    upper = name.upper()
    if upper in NOT_SECRET:
        return False
    return upper in SECRET_ENV or any(marker in upper for marker in SECRET_MARKERS)


def forwarded_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment variables a runtime_env of this project carries: BASE_ENV, the FORWARDED ones set in
    this process, then `extra`. A secret in `extra` is a ConfigError (a programming error, never silently
    forwarded)."""
    env = dict(BASE_ENV)
    env.update({k: os.environ[k] for k in FORWARDED if os.environ.get(k)})
    for key, value in (extra or {}).items():
        if is_secret(key):
            raise ConfigError(
                f"refusing to put {key} into a Ray runtime_env (credentials are never forwarded: local "
                "workers inherit them from the driver, cluster nodes use their instance profile)"
            )
        env[key] = str(value)
    return env


def start_or_join(
    *,
    num_cpus: int | None = None,
    env: Mapping[str, str] | None = None,
    setup_hook: str | None = None,
    log_to_driver: bool = True,
) -> bool:
    """Join the cluster of RAY_ADDRESS (or the Ray this process already runs), else start a local one.

    Returns True only when this call started a local cluster (the caller then stops it with
    `cora_ray.ray_local.shutdown_local_cluster()`). `env` adds to `forwarded_env()`; `setup_hook` is a
    `worker_process_setup_hook` ("module.function") run in every worker of the local cluster."""
    import ray

    if ray.is_initialized():
        return False
    if os.environ.get("RAY_ADDRESS"):
        ray.init(log_to_driver=log_to_driver, logging_level=logging.WARNING)
        filter_worker_logs()
        return False
    # a local cluster's workers import this repository (on a cluster: the job's working_dir or the image)
    pythonpath = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    runtime_env: dict = {"env_vars": {**forwarded_env(env), "PYTHONPATH": pythonpath}}
    if setup_hook:
        runtime_env["worker_process_setup_hook"] = setup_hook
    init_local_cluster(
        num_cpus=num_cpus,
        logging_level=logging.WARNING,  # the driver's "ray" logger: no INFO start-up chatter
        include_dashboard=False,
        log_to_driver=log_to_driver,
        runtime_env=runtime_env,
    )
    filter_worker_logs()
    return True
