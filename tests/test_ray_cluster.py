"""Starting or joining Ray (cora_ray/ray_cluster.py): one environment rule, no credential in a runtime_env.

The unit tests set credentials in this process's environment and capture what each job's start-up would hand
to Ray (no cluster is started); the last test starts a real local cluster in a subprocess and looks at a
worker: it has the credentials (inherited from the driver) while its runtime_env carries none."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cora_ray import ray_cluster
from cora_ray.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "AKIATESTRAYCLUSTER01",
    "AWS_SECRET_ACCESS_KEY": "ray-cluster-test-secret",
    "AWS_SESSION_TOKEN": "ray-cluster-test-session-token",
    "HF_TOKEN": "hf_raycluster_test_token",
}
SETTINGS = {
    "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
    "AWS_REGION": "eu-west-1",
    "AWS_DEFAULT_REGION": "eu-west-1",
    "HF_HUB_OFFLINE": "1",
}


@pytest.fixture()
def driver_env(monkeypatch):
    """A driver environment holding credentials and non-secret settings; no RAY_ADDRESS."""
    for k, v in {**CREDENTIALS, **SETTINGS}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)


def assert_no_credentials(env: dict) -> None:
    leaked = sorted(k for k in env if k in CREDENTIALS)
    assert not leaked, f"credentials in the runtime_env: {leaked}"
    text = json.dumps(env)
    assert not any(v in text for v in CREDENTIALS.values()), "a credential's value is in the runtime_env"


def test_forwarded_env_keeps_settings_and_drops_credentials(driver_env):
    env = ray_cluster.forwarded_env()
    assert_no_credentials(env)
    for k, v in SETTINGS.items():
        assert env[k] == v
    assert env["OMP_NUM_THREADS"] == "1" and env["TOKENIZERS_PARALLELISM"] == "false"


def test_a_credential_asked_for_explicitly_is_refused(driver_env):
    for key in ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "MY_SERVICE_PASSWORD", "GITHUB_TOKEN"):
        with pytest.raises(ConfigError, match=key):
            ray_cluster.forwarded_env({key: "x"})
    assert ray_cluster.forwarded_env({"DS_ACCELERATOR": "cpu"})["DS_ACCELERATOR"] == "cpu"
    assert not ray_cluster.is_secret("TOKENIZERS_PARALLELISM")


class FakeRay:
    """Records what start_or_join does instead of starting Ray."""

    def __init__(self) -> None:
        self.local: list[dict] = []
        self.joined: list[dict] = []

    def install(self, monkeypatch) -> None:
        import ray

        monkeypatch.setattr(ray, "is_initialized", lambda: False)
        monkeypatch.setattr(ray, "init", lambda **kw: self.joined.append(kw))
        monkeypatch.setattr(ray_cluster, "init_local_cluster", lambda **kw: self.local.append(kw))


def start_each_job() -> list[str]:
    """The start-up of the trainer, the evaluator and the CF runner, in turn (what each passes is recorded)."""
    from cora_ray.cf.runner import init_ray
    from cora_ray.config import ExperimentConfig
    from cora_ray.eval.evaluate import ensure_ray as evaluate_ray
    from cora_ray.train.trainer import ensure_ray as train_ray

    train_ray(ExperimentConfig())
    evaluate_ray()
    init_ray(num_cpus=2)
    return ["train", "evaluate", "cf"]


def test_every_job_starts_a_local_cluster_without_credentials_in_its_runtime_env(driver_env, monkeypatch):
    fake = FakeRay()
    fake.install(monkeypatch)
    jobs = start_each_job()
    assert len(fake.local) == len(jobs) and not fake.joined
    for job, kwargs in zip(jobs, fake.local, strict=True):
        env = kwargs["runtime_env"]["env_vars"]
        assert_no_credentials(env)
        assert env["AWS_ENDPOINT_URL"] == SETTINGS["AWS_ENDPOINT_URL"], job
        assert env["PYTHONPATH"].split(os.pathsep)[0] == str(REPO), job
        assert kwargs["include_dashboard"] is False
    assert fake.local[0]["runtime_env"]["worker_process_setup_hook"].startswith("cora_ray.train.ray_setup.")
    assert fake.local[0]["num_cpus"] == 4 and fake.local[2]["num_cpus"] == 2


def test_the_trainers_worker_env_has_no_credentials(driver_env):
    from cora_ray.config import ExperimentConfig
    from cora_ray.train.trainer import worker_env

    env = worker_env(ExperimentConfig())
    assert_no_credentials(env)
    assert env["DS_ACCELERATOR"] == "cpu" and env["AWS_REGION"] == SETTINGS["AWS_REGION"]


def test_with_ray_address_every_job_joins_and_passes_no_runtime_env(driver_env, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")
    fake = FakeRay()
    fake.install(monkeypatch)
    start_each_job()
    assert not fake.local and len(fake.joined) == 3
    assert all("runtime_env" not in kw for kw in fake.joined)


WORKER_PROBE = """
import json, os, ray
from cora_ray.ray_cluster import start_or_join
from cora_ray.ray_local import shutdown_local_cluster

assert start_or_join(num_cpus=1)

@ray.remote(num_cpus=1)
def probe():
    ctx = ray.get_runtime_context()
    return {"env": {k: os.environ.get(k) for k in %(keys)r},
            "runtime_env": ctx.runtime_env.get("env_vars", {})}

try:
    print("PROBE " + json.dumps(ray.get(probe.remote())))
finally:
    shutdown_local_cluster()
"""


@pytest.mark.slow
@pytest.mark.ray
def test_local_workers_inherit_credentials_that_their_runtime_env_does_not_carry(driver_env):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]), RAY_AUTH_MODE="disabled")
    keys = sorted([*CREDENTIALS, *SETTINGS])
    proc = subprocess.run(
        [sys.executable, "-c", WORKER_PROBE % {"keys": keys}],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("PROBE "))
    seen = json.loads(line[len("PROBE ") :])
    assert {k: seen["env"][k] for k in CREDENTIALS} == CREDENTIALS  # inherited from the driver
    assert seen["runtime_env"]["AWS_ENDPOINT_URL"] == SETTINGS["AWS_ENDPOINT_URL"]
    assert_no_credentials(seen["runtime_env"])
