"""Deploy the serving application the way `serve run FILE` / `serve deploy FILE` does, on 127.0.0.1.

The app is deployed from a config (a dict in the serve.config schema): `import_path` + `args` go through
the same builder as the config files, and a later `deploy` that changes only a deployment's
`user_config` is Serve's in-place update (replicas `reconfigure`, no restart) — the reload path.
Used by the serving tests and bench/bench_serve.py.
"""

from __future__ import annotations

import copy
import json
import socket
import time
import urllib.error
import urllib.request
from typing import Any

APP = "cora"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def app_config(
    port: int,
    checkpoint_uri: str,
    data_uri: str,
    scorer: dict[str, Any] | None = None,
    limits: dict[str, Any] | None = None,
    scorer_replicas: int = 1,
    route_by_user: bool = True,
) -> dict[str, Any]:
    """A serve.local.config-shaped config for the given artifacts."""
    user_config = {
        "checkpoint_uri": checkpoint_uri,  # named here only, as in the shipped configs
        "max_batch_rows": 64,
        "batch_wait_timeout_s": 0.005,
        "max_rows_per_forward": 32,
        "cache_bytes": 0,
        "max_queued_rows": 10_000,  # tests of admission lower it
    }
    user_config.update(scorer or {})
    return {
        "proxy_location": "HeadOnly",
        "http_options": {"host": "127.0.0.1", "port": port, "request_timeout_s": 60},
        "applications": [
            {
                "name": APP,
                "route_prefix": "/",
                "import_path": "serve.app:build_app",
                "args": {
                    "data_uri": data_uri,
                    "device": "cpu",
                    "route_by_user": route_by_user,
                    "limits": limits or {},
                },
                "deployments": [
                    {
                        "name": "CoRAScorer",
                        "num_replicas": scorer_replicas,
                        "max_ongoing_requests": 64,
                        "health_check_period_s": 2,
                        "health_check_timeout_s": 30,
                        "graceful_shutdown_timeout_s": 10,
                        "ray_actor_options": {"num_cpus": 0.5},
                        "user_config": user_config,
                    },
                    {
                        "name": "CoRAIngress",
                        "num_replicas": 1,
                        "max_ongoing_requests": 512,
                        "ray_actor_options": {"num_cpus": 0.5},
                    },
                ],
            }
        ],
    }


def with_user_config(config: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """A copy of `config` with CoRAScorer's user_config keys changed."""
    out = copy.deepcopy(config)
    for d in out["applications"][0]["deployments"]:
        if d["name"] == "CoRAScorer":
            d["user_config"].update(changes)
    return out


def start_serve(port: int) -> None:
    from ray import serve

    serve.start(http_options={"host": "127.0.0.1", "port": port}, proxy_location="HeadOnly")


def deploy(config: dict[str, Any], timeout_s: float = 180.0) -> None:
    """Apply a config (like `serve deploy`) and wait until the application is RUNNING with every replica."""
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    client = _get_global_client()
    client.deploy_apps(ServeDeploySchema.model_validate(config))
    wait_running(timeout_s)


def wait_running(timeout_s: float = 180.0) -> None:
    from ray import serve

    deadline = time.time() + timeout_s
    status = None
    while time.time() < deadline:
        status = serve.status().applications.get(APP)
        if status is not None and status.status == "RUNNING":
            if all(d.status == "HEALTHY" for d in status.deployments.values()):
                return
        if status is not None and status.status == "DEPLOY_FAILED":
            raise RuntimeError(f"deploy failed: {status.message}")
        time.sleep(0.5)
    raise TimeoutError(f"application not RUNNING after {timeout_s} s: {status}")


def request(
    base: str,
    method: str,
    path: str,
    body: Any = None,
    raw: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 60,
) -> tuple[int, Any]:
    """(status, parsed JSON or text) of one HTTP request; 4xx/5xx are returned, not raised."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    hdrs = {"content-type": "application/json", **(headers or {})}
    req = urllib.request.Request(base + path, data=data, method=method, headers=hdrs)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            status, text = r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        status, text = e.code, e.read().decode()
    try:
        return status, json.loads(text)
    except json.JSONDecodeError:
        return status, text


def wait_http(base: str, timeout_s: float = 60.0) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        try:
            if request(base, "GET", "/healthz", timeout=5)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{base}/healthz did not answer in {timeout_s} s")
