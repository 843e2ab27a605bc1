"""cluster.yaml, the node images and runtime_env.yaml: what `ray up`, `docker build` and `ray job submit`
would accept, checked offline.

- The JSON schema that ships inside the installed ray package (ray/autoscaler/ray-schema.json), applied
  to the file as written, then Ray's own `prepare_config` + `validate_config` — the steps `ray up` runs
  before it contacts AWS (it merges the provider's defaults and checks head type and worker counts).
- Logic the schema cannot express: a head that schedules nothing, worker types that scale from zero, GPU
  resources that match the instance type, a ZeRO-3 type with room for a frozen 7B LLM, instance
  profiles instead of credentials, the Serve and dashboard ports.
- The node images: every runtime dependency pinned (requirements/lock.txt, torch per image like
  pyproject.toml), a CPU image without CUDA torch for CPU nodes, the GPU image for GPU nodes, both built
  from the shipped Dockerfile as docs/deploy.md §2 builds them, and nothing installed at boot.
  (`docker build` itself cannot run here: no registry access is assumed.)
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
DOCKERFILE = REPO / "Dockerfile"
REQUIREMENTS = REPO / "requirements"
LOCK = REQUIREMENTS / "lock.txt"
RUNBOOK = REPO / "docs" / "deploy.md"
DEV_ONLY = {"pytest", "moto", "ruff", "peft"}
INSTALLS = re.compile(r"\b(pip3?|uv pip|conda|mamba|apt-get|apt|yum|dnf)\s+install\b")

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


def _pyproject_torch_version() -> str:
    # regex: tomllib is 3.11+, the project supports 3.10
    pin = re.search(r'"torch==([^"]+)"', (REPO / "pyproject.toml").read_text())
    assert pin, "pyproject.toml pins no torch version"
    return pin.group(1)


def _pyproject_version() -> str:
    found = re.search(r'^version = "([^"]+)"', (REPO / "pyproject.toml").read_text(), re.M)
    assert found, "pyproject.toml has no [project] version"
    return found.group(1)


def _requirement_lines(path: Path) -> list[str]:
    return [ln.split("#")[0].strip() for ln in path.read_text().splitlines() if ln.split("#")[0].strip()]


def _all_setup_commands(cluster: dict) -> list[str]:
    cmds = []
    for key in ("initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands"):
        cmds += cluster.get(key) or []
    for t in cluster["available_node_types"].values():
        cmds += (t.get("initialization_commands") or []) + (t.get("worker_setup_commands") or [])
    return cmds


def test_the_lock_pins_every_runtime_dependency_exactly():
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    lines = _requirement_lines(LOCK)
    pins = {}
    for line in lines:
        m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9.+!_-]+)", line)
        assert m, f"requirements/lock.txt: {line!r} is not a name==version pin"
        pins[canonicalize_name(m.group(1))] = m.group(2)
    assert len(pins) == len(lines), "a package is pinned twice"
    assert "torch" not in pins and not any(n.startswith("nvidia-") for n in pins), (
        "torch is chosen per image (requirements/torch-*.txt), not in the lock"
    )
    assert not DEV_ONLY & set(pins), f"dev-only tools in the runtime lock: {sorted(DEV_ONLY & set(pins))}"
    deps = re.search(r"^dependencies = \[(.*?)^\]", (REPO / "pyproject.toml").read_text(), re.M | re.S)
    assert deps
    for spec in re.findall(r'"([^"]+)"', deps.group(1)):
        req = Requirement(spec)
        name = canonicalize_name(req.name)
        if name == "torch":
            continue
        regenerate = "make setup, then regenerate it: .venv/bin/python requirements/lock.py"
        assert name in pins, f"pyproject.toml's {spec} is not in requirements/lock.txt; {regenerate}"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"requirements/lock.txt pins {name}=={pins[name]}, outside pyproject.toml's {spec}; {regenerate}"
        )
    # the closure: what the pinned packages themselves need (ray's extras, deepspeed's hjson, ...)
    for name in ("ray", "deepspeed", "transformers", "tokenizers", "huggingface-hub", "numpy", "fastapi"):
        assert name in pins, f"{name} is missing from the lock"
    assert "requirements/lock.py" in LOCK.read_text(), "the lock must say how to regenerate it"


def test_torch_per_image_is_pyprojects_pin_and_the_cpu_image_gets_the_cpu_build():
    version = _pyproject_torch_version()
    cpu = _requirement_lines(REQUIREMENTS / "torch-cpu.txt")
    gpu = _requirement_lines(REQUIREMENTS / "torch-gpu.txt")
    assert [ln for ln in cpu if not ln.startswith("--")] == [f"torch=={version}+cpu"]
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in cpu
    assert gpu == [f"torch=={version}"], "the GPU image installs PyPI's CUDA build of pyproject's torch"


def test_the_dockerfile_installs_only_pinned_files_and_checks_the_torch_build():
    text = DOCKERFILE.read_text()
    body = "\n".join(ln for ln in text.splitlines() if not ln.lstrip().startswith("#"))
    assert re.search(r"^ARG VARIANT=(cpu|gpu)$", body, re.M), "the variant is a build arg"
    base = re.search(r"^ARG PYTHON_IMAGE=python:(\d+\.\d+)\.\d+-slim-\w+$", body, re.M)
    assert base, "the base image pins a Python patch release"
    locked_py = re.search(r"Python (\d+\.\d+)", LOCK.read_text())
    assert locked_py and base.group(1) == locked_py.group(1), "the image's Python is not the lock's"
    installs = re.findall(r"pip install ([^&\n\\]+)", body)
    assert installs, "the Dockerfile installs nothing"
    for args in installs:
        for token in args.split():
            if token.startswith("-") or token == "/home/ubuntu/cora_ray":
                continue
            if token.startswith("/tmp/requirements/"):
                name = token[len("/tmp/requirements/") :].replace("${VARIANT}", "{}")
                for variant in ("cpu", "gpu"):
                    assert (REQUIREMENTS / name.format(variant)).is_file(), f"no requirements/{name}"
                continue
            assert re.fullmatch(r"[A-Za-z0-9._-]+==[A-Za-z0-9.+_-]+", token), f"unpinned install: {token!r}"
    assert "torch-${VARIANT}.txt" in body and "lock.txt" in body
    assert "--no-deps --no-build-isolation -e /home/ubuntu/cora_ray" in body, (
        "the package goes in without touching the pinned set"
    )
    # the build fails when the torch build does not match the variant (CUDA in a CPU image or the reverse)
    assert "torch.version.cuda" in body and "'$VARIANT' == 'cpu'" in body
    assert "COPY requirements/" in body and ".venv" in (REPO / ".dockerignore").read_text()


def test_cpu_nodes_run_the_cpu_image_and_gpu_nodes_the_gpu_image(cluster):
    docker = cluster["docker"]
    version = _pyproject_version()
    images = {}
    for name, t in cluster["available_node_types"].items():
        if name == cluster["head_node_type"]:
            images[name] = docker["head_image"]
        else:
            images[name] = (t.get("docker") or {}).get("worker_image") or docker["worker_image"]
    repos = {img.rsplit(":", 1)[0] for img in images.values()}
    assert len(repos) == 1, f"all node images come from one repository: {repos}"
    for name, image in images.items():
        gpus = cluster["available_node_types"][name]["resources"].get("GPU", 0)
        want = f":{version}-{'gpu' if gpus else 'cpu'}"
        assert image.endswith(want), f"{name} ({gpus} GPUs) runs {image}, expected a tag ending {want}"
    # docs/deploy.md §2 builds and pushes exactly these tags from the shipped Dockerfile
    runbook = RUNBOOK.read_text()
    for variant in ("cpu", "gpu"):
        assert re.search(
            rf"docker build [^\n]*--build-arg VARIANT={variant} [^\n]*-t \$IMAGE_REPO:{version}-{variant} \.",
            runbook,
        ), f"docs/deploy.md does not build the {variant} image"
        assert f"docker push $IMAGE_REPO:{version}-{variant}" in runbook
    # the hosts log in to the registry the images are in before Ray pulls them
    registry = next(iter(repos)).split("/", 1)[0]
    init = " ".join(cluster["initialization_commands"])
    assert "docker login" in init and registry in init


def test_no_node_installs_packages_at_boot(cluster):
    for cmd in _all_setup_commands(cluster):
        assert not INSTALLS.search(cmd), f"a setup command installs packages at boot: {cmd!r}"
    gpu_types = [n for n, t in cluster["available_node_types"].items() if t["resources"].get("GPU", 0)]
    for name in gpu_types:
        checks = " ".join(cluster["available_node_types"][name].get("worker_setup_commands") or [])
        assert "torch.cuda.is_available()" in checks, f"{name} does not check that its image has CUDA"
    start = " ".join(cluster["head_start_ray_commands"] + cluster["worker_start_ray_commands"])
    assert "~/cora/bin" not in start, "Ray comes from the image, not from a venv made at boot"


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
    dockerfile = DOCKERFILE.read_text()
    # the image copies the repository where `ray up` mounts it and puts that directory on sys.path
    assert f"COPY --chown=ubuntu:ubuntu . {repo_mount}" in dockerfile
    assert ".pth" in dockerfile and f"write_text('{repo_mount}" in dockerfile
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
