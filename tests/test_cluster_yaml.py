"""cluster.yaml and runtime_env.yaml: what `ray up` and `ray job submit` would accept, checked offline.

- The JSON schema that ships inside the installed ray package (ray/autoscaler/ray-schema.json), applied
  to the file as written, then Ray's own `prepare_config` + `validate_config` — the steps `ray up` runs
  before it contacts AWS (it merges the provider's defaults and checks head type and worker counts).
- Logic the schema cannot express: a head that schedules nothing, worker types that scale from zero, GPU
  resources that match the instance type, a ZeRO-3 type with room for a frozen 7B LLM, instance
  profiles instead of credentials, the CUDA torch pinned like pyproject.toml, the Serve and dashboard ports.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CLUSTER_YAML = REPO / "cluster.yaml"
RUNTIME_ENV_YAML = REPO / "runtime_env.yaml"

# What AWS sells under each instance type we allow: vCPUs, GPUs, GB of memory per GPU, and the name
# Ray gives the GPU (its `accelerator_type:<name>` resource). Add a row to use another type.
INSTANCE_TYPES = {
    "m6i.xlarge": (4, 0, 0, None),
    "m6i.2xlarge": (8, 0, 0, None),
    "m6i.4xlarge": (16, 0, 0, None),
    "m6i.8xlarge": (32, 0, 0, None),
    "g5.xlarge": (4, 1, 24, "A10G"),
    "g5.2xlarge": (8, 1, 24, "A10G"),
    "g5.4xlarge": (16, 1, 24, "A10G"),
    "g5.12xlarge": (48, 4, 24, "A10G"),
    "g5.48xlarge": (192, 8, 24, "A10G"),
    "p4d.24xlarge": (96, 8, 40, "A100"),
    "p4de.24xlarge": (96, 8, 80, "A100"),
    "p5.48xlarge": (192, 8, 80, "H100"),
}

# Vicuna-7B (LLaMA-7B): 6.74e9 parameters in bf16.
LLM_WEIGHTS_GB = 6.74e9 * 2 / 1e9  # 13.5 GB
# Per training GPU beside the weights: activations of a micro-batch of 8 × ~190 tokens kept for the
# backward through the frozen layers (~8 GB), generator + P_m in fp32 with AdamW state (~85M × 16 B),
# CUDA context and allocator slack.
TRAIN_EXTRA_GB = 8.0 + 1.4 + 1.5
# Per serving GPU beside the weights: batched-scoring activations, G cache, CUDA context.
SERVE_EXTRA_GB = 4.0


def _schema_path() -> Path:
    spec = importlib.util.find_spec("ray")
    assert spec is not None and spec.submodule_search_locations, "the ray package is not installed"
    path = Path(next(iter(spec.submodule_search_locations))) / "autoscaler" / "ray-schema.json"
    assert path.is_file(), f"ray ships no cluster schema at {path}"
    return path


@pytest.fixture(scope="module")
def cluster() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


@pytest.fixture(scope="module")
def node_types(cluster) -> dict:
    return cluster["available_node_types"]


@pytest.fixture(scope="module")
def workers(cluster, node_types) -> dict:
    return {name: t for name, t in node_types.items() if name != cluster["head_node_type"]}


def test_cluster_yaml_is_valid_against_the_schema_shipped_with_ray(cluster):
    schema = json.loads(_schema_path().read_text())
    try:
        import jsonschema
    except ImportError:  # ray's validator needs it too; then only prepare/validate below can speak
        pytest.skip("jsonschema is not installed")
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(cluster), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors)


def test_cluster_yaml_passes_the_checks_ray_up_runs_before_contacting_aws(cluster):
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(cluster))  # merges ray/autoscaler/aws/defaults.yaml
    validate_config(prepared)
    # our values survived the merge with the defaults
    assert prepared["head_node_type"] == cluster["head_node_type"]
    assert set(prepared["available_node_types"]) == set(cluster["available_node_types"])
    assert prepared["provider"]["type"] == "aws"


def test_head_node_type_exists_and_schedules_no_work(cluster, node_types):
    head = cluster["head_node_type"]
    assert head in node_types, f"head_node_type {head!r} is not among {sorted(node_types)}"
    resources = node_types[head]["resources"]
    assert resources.get("CPU") == 0, "the head must advertise CPU: 0 so no training or scoring lands there"
    assert resources.get("GPU", 0) == 0
    vcpus, gpus, _, _ = INSTANCE_TYPES[node_types[head]["node_config"]["InstanceType"]]
    assert gpus == 0, "a GPU head would bill GPUs that nothing may use"


def test_worker_types_autoscale_from_zero_within_the_global_limit(cluster, workers):
    assert cluster["idle_timeout_minutes"] > 0
    total_max = cluster["max_workers"]
    assert workers, "no worker types"
    for name, t in workers.items():
        lo, hi = t.get("min_workers", 0), t.get("max_workers")
        assert hi is not None, f"{name}: set max_workers"
        assert lo == 0, f"{name}: min_workers must be 0 (nothing billed while idle), got {lo}"
        assert 0 <= lo <= hi <= total_max, f"{name}: need 0 <= min ({lo}) <= max ({hi}) <= {total_max}"
    assert sum(t["max_workers"] for t in workers.values()) <= total_max


def test_declared_resources_match_each_instance_type(node_types, cluster):
    for name, t in node_types.items():
        itype = t["node_config"]["InstanceType"]
        assert itype in INSTANCE_TYPES, f"{name}: {itype} is not in INSTANCE_TYPES (add its row)"
        vcpus, gpus, _, accel = INSTANCE_TYPES[itype]
        res = t["resources"]
        assert res.get("GPU", 0) == gpus, (
            f"{name}: {itype} has {gpus} GPUs, resources say {res.get('GPU', 0)}"
        )
        if name != cluster["head_node_type"]:
            assert res.get("CPU") == vcpus, (
                f"{name}: {itype} has {vcpus} vCPUs, resources say {res.get('CPU')}"
            )
        declared = {k.split(":", 1)[1] for k in res if k.startswith("accelerator_type:")}
        assert declared == ({accel} if accel else set()), (
            f"{name}: accelerator_type resource should be {accel}"
        )


def test_gpu_types_cover_zero3_training_of_a_7b_llm_and_single_gpu_serving(workers):
    gpu_types = {n: t for n, t in workers.items() if t["resources"].get("GPU", 0) > 0}
    assert gpu_types, "no GPU worker type"
    fits_zero3 = []
    fits_serving = []
    for name, t in gpu_types.items():
        _, gpus, gb, _ = INSTANCE_TYPES[t["node_config"]["InstanceType"]]
        # ZeRO-3 keeps 1/n of the frozen weights per GPU between the per-layer all-gathers
        if gpus >= 4 and LLM_WEIGHTS_GB / gpus + TRAIN_EXTRA_GB <= gb:
            fits_zero3.append(name)
        if gpus == 1 and LLM_WEIGHTS_GB + SERVE_EXTRA_GB <= gb:
            fits_serving.append(name)
    assert fits_zero3, f"no multi-GPU type has room for ZeRO-3 over a 7B LLM: {sorted(gpu_types)}"
    assert fits_serving, f"no single-GPU type holds a bf16 7B replica: {sorted(gpu_types)}"
    cpu_types = [n for n, t in workers.items() if t["resources"].get("GPU", 0) == 0]
    assert cpu_types, (
        "CPU-only jobs (prepare_data, pretrain_cf) need a GPU-free type, or they wake a GPU node"
    )


def test_every_node_reaches_s3_through_an_instance_profile_and_no_credentials_are_written():
    text = CLUSTER_YAML.read_text()
    cluster = yaml.safe_load(text)
    for name, t in cluster["available_node_types"].items():
        profile = t["node_config"].get("IamInstanceProfile")
        assert profile and (profile.get("Name") or profile.get("Arn")), f"{name}: no IamInstanceProfile"
    for needle in (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "aws_secret_access_key",
        "AWS_SESSION_TOKEN",
    ):
        assert needle not in text, f"cluster.yaml mentions {needle}: use instance profiles"
    assert not re.search(r"\bAKIA[0-9A-Z]{16}\b", text), "an access key id is written in cluster.yaml"


def test_spot_is_offered_commented_out_and_nodes_are_on_demand_by_default(cluster):
    text = CLUSTER_YAML.read_text()
    assert re.search(r"^\s*#\s*InstanceMarketOptions:", text, re.M), "document the spot option (commented)"
    for name, t in cluster["available_node_types"].items():
        assert "InstanceMarketOptions" not in t["node_config"], f"{name}: spot is on; keep it commented"


def test_setup_installs_this_package_after_the_cuda_torch_pinned_like_pyproject(cluster):
    # the pin in pyproject.toml's dependencies (regex: tomllib is 3.11+, the project supports 3.10)
    pin = re.search(r'"(torch==[^"]+)"', (REPO / "pyproject.toml").read_text())
    assert pin, "pyproject.toml pins no torch version"
    torch_pin = pin.group(1)
    cmds = cluster["setup_commands"]
    torch_at = [
        i for i, c in enumerate(cmds) if f"pip install -q {torch_pin}" in c or f"pip install {torch_pin}" in c
    ]
    assert torch_at, f"setup_commands must install {torch_pin} (the CUDA build from PyPI)"
    assert not any("whl/cpu" in c or "+cpu" in c.split("#")[0] for c in cmds), "a CPU torch on GPU nodes"
    mounts = cluster["file_mounts"]
    repo_mount = next(remote for remote, local in mounts.items() if local in (".", "./"))
    pkg_at = [i for i, c in enumerate(cmds) if "pip install" in c and repo_mount in c]
    assert pkg_at, f"setup_commands must pip install the repository mounted at {repo_mount}"
    assert torch_at[0] < pkg_at[0], "install torch before the package, or deepspeed may pull another torch"


def test_ports_for_serve_and_the_dashboard(cluster):
    rules = cluster["provider"]["security_group"]["IpPermissions"]
    opened = {r["FromPort"]: [ip["CidrIp"] for ip in r.get("IpRanges", [])] for r in rules}
    serve_config = REPO / "serve.config"
    serve_port = 8000
    if serve_config.is_file():
        serve_port = (yaml.safe_load(serve_config.read_text()).get("http_options") or {}).get("port", 8000)
    assert serve_port in opened, f"Serve's HTTP port {serve_port} is not opened"
    assert 8265 in opened, "the dashboard port 8265 is not opened (inside the VPC)"
    assert "0.0.0.0/0" not in opened[8265], "the Jobs API on 8265 runs arbitrary code: never open it to all"
    head_start = " ".join(cluster["head_start_ray_commands"])
    assert "--dashboard-host=0.0.0.0" in head_start and "--dashboard-port=8265" in head_start
    assert "RAY_AUTH_MODE=token" in head_start
    assert "RAY_AUTH_MODE=token" in " ".join(cluster["worker_start_ray_commands"])


def test_serve_config_imports_resolve_from_the_repository_on_every_node(cluster):
    serve_config = REPO / "serve.config"
    if not serve_config.is_file():
        pytest.skip("serve.config is not there yet")
    repo_mount = next(remote for remote, local in cluster["file_mounts"].items() if local in (".", "./"))
    cmds = cluster["setup_commands"]
    assert any(".pth" in c and repo_mount in c for c in cmds), "put the repository mount on the nodes' path"
    for app in yaml.safe_load(serve_config.read_text()).get("applications", []):
        module = app["import_path"].split(":")[0]
        assert (REPO / (module.replace(".", "/") + ".py")).is_file(), f"{module} is not in the repository"
        working_dir = (app.get("runtime_env") or {}).get("working_dir")
        if working_dir and working_dir.startswith("local://"):
            assert working_dir[len("local://") :].rstrip("/") == repo_mount.rstrip("/")


def test_runtime_env_file_is_what_ray_job_submit_accepts():
    from ray.dashboard.modules.dashboard_sdk import parse_runtime_env_args
    from ray.runtime_env import RuntimeEnv

    env = parse_runtime_env_args(runtime_env=str(RUNTIME_ENV_YAML), working_dir=".")
    RuntimeEnv(**env)  # raises on an unknown field or a wrong type
    excludes = set(env["excludes"])
    assert {".git", ".venv", "artifacts", "runs"} <= excludes, "the upload must skip the venv, data and runs"
    for key in env.get("env_vars", {}):
        assert not key.startswith(("AWS_ACCESS", "AWS_SECRET", "AWS_SESSION")), (
            f"credentials in env_vars: {key}"
        )
