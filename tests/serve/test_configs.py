"""serve.config and serve.local.config: valid for Ray's own schema and for the application's arguments."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from cora_ray.config import from_dict
from cora_ray.infer.service import ScorerOptions

REPO = Path(__file__).resolve().parents[2]


def load(name: str) -> tuple[dict, ServeDeploySchema]:
    data = yaml.safe_load((REPO / name).read_text())
    return data, ServeDeploySchema.model_validate(data)


@pytest.mark.parametrize("name", ["serve.config", "serve.local.config"])
def test_config_is_valid_for_serve_and_for_the_app(name):
    from serve.app import AppArgs, CoRAIngress, CoRAScorer

    data, schema = load(name)
    (app,) = schema.applications
    assert app.import_path == "serve.app:build_app"
    from_dict(AppArgs, data["applications"][0]["args"], source=name)  # every arg known, right types
    deployments = {d.name: d for d in app.deployments}
    assert set(deployments) == {CoRAScorer.name, CoRAIngress.name}
    scorer = deployments["CoRAScorer"]
    options = ScorerOptions.from_user_config(scorer.user_config)
    limits = data["applications"][0]["args"]["limits"]
    assert limits["max_items"] <= options.max_batch_rows  # any request fits one batch
    assert scorer.max_ongoing_requests >= options.max_queued_rows  # the row bound refuses first
    assert scorer.health_check_period_s and scorer.health_check_timeout_s


def test_cloud_config_has_gpu_replicas_autoscaling_and_placeholders():
    data, schema = load("serve.config")
    scorer = {d.name: d for d in schema.applications[0].deployments}["CoRAScorer"]
    assert scorer.ray_actor_options.num_gpus == 1
    auto = scorer.autoscaling_config
    assert auto["min_replicas"] >= 1 and auto["max_replicas"] > auto["min_replicas"]
    args = data["applications"][0]["args"]
    assert scorer.user_config["checkpoint_uri"].startswith("s3://") and args["data_uri"].startswith("s3://")
    assert scorer.user_config["checkpoint_uri"].endswith("/best")  # the run's stable best alias
    assert schema.http_options.host == "0.0.0.0"


def test_local_config_is_cpu_one_replica_on_loopback_with_the_demo_checkpoint():
    data, schema = load("serve.local.config")
    assert schema.http_options.host == "127.0.0.1"
    scorer = {d.name: d for d in schema.applications[0].deployments}["CoRAScorer"]
    assert scorer.num_replicas == 1 and not scorer.ray_actor_options.num_gpus
    args = data["applications"][0]["args"]
    assert scorer.user_config["checkpoint_uri"] == "artifacts/demo/checkpoint" and args["device"] == "cpu"


def test_building_the_app_without_a_checkpoint_says_how_to_get_one(tmp_path):
    from cora_ray.errors import ConfigError
    from serve.app import build_app

    with pytest.raises(ConfigError, match=r"no checkpoint at .*make demo"):
        build_app({"checkpoint_uri": str(tmp_path / "missing")})
    with pytest.raises(ConfigError, match="unknown key 'checkpoint'"):
        build_app({"checkpoint": "x"})


def _count_key(node, key: str) -> int:
    if isinstance(node, dict):
        return sum((k == key) + _count_key(v, key) for k, v in node.items())
    if isinstance(node, list):
        return sum(_count_key(v, key) for v in node)
    return 0


@pytest.mark.parametrize("name", ["serve.config", "serve.local.config"])
def test_the_checkpoint_is_named_once_in_the_scorers_user_config(name):
    data, _ = load(name)
    assert _count_key(data, "checkpoint_uri") == 1
    (app,) = data["applications"]
    scorer = {d["name"]: d for d in app["deployments"]}["CoRAScorer"]
    assert scorer["user_config"]["checkpoint_uri"] and "checkpoint_uri" not in app["args"]
    assert app["args"]["data_uri"]  # the ingress needs it without a checkpoint in the args


def test_naming_the_checkpoint_twice_in_args_is_refused(tmp_path):
    from cora_ray.errors import ConfigError
    from serve.app import build_app

    with pytest.raises(ConfigError, match="checkpoint_uri is given twice"):
        build_app({"checkpoint_uri": "a", "scorer": {"checkpoint_uri": "b"}, "data_uri": str(tmp_path)})
    with pytest.raises(ConfigError, match="set data_uri"):
        build_app({})


def doc_sizing_inputs() -> dict[str, dict[str, float]]:
    """docs/deploy.md §6's input table: {config file: {rows_per_s, latency_target_s, rows_per_forward}}."""
    text = (REPO / "docs" / "deploy.md").read_text()
    section = text[text.index("### Sizing: admission in rows") : text.index("## 7.")]
    lines = [ln for ln in section.splitlines() if ln.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header[0] == "input", header
    out: dict[str, dict[str, float]] = {name: {} for name in header[1:]}
    for ln in lines[2:]:
        cells = [c.strip() for c in ln.strip("|").split("|")]
        if cells[0] not in ("rows_per_s", "latency_target_s", "rows_per_forward"):
            break
        for name, value in zip(header[1:], cells[1:], strict=True):
            out[name][cells[0]] = float(value)
    return out


def doc_limits_table() -> dict[str, dict[str, str]]:
    """The §6 limits table: {limit key (first backticked name): {config file: value}}."""
    text = (REPO / "docs" / "deploy.md").read_text()
    section = text[text.index("### Sizing: admission in rows") : text.index("## 7.")]
    start = section.index("| limit | rule |")
    lines = []
    for ln in section[start:].splitlines():  # the table: its contiguous "|" lines
        if not ln.startswith("|"):
            break
        lines.append(ln)
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    out = {}
    for ln in lines[2:]:
        cells = [c.strip() for c in ln.strip("|").split("|")]
        key = cells[0].split("`")[1] if "`" in cells[0] else cells[0]
        out[key] = dict(zip(header[2:], cells[2:], strict=True))
    return out


@pytest.mark.parametrize("name", ["serve.config", "serve.local.config"])
def test_serving_limits_follow_from_the_docs_rate_and_latency_target(name):
    from cora_ray.infer.admission import derive_serving_limits

    inputs = doc_sizing_inputs()[name]
    lim = derive_serving_limits(
        inputs["rows_per_s"], inputs["latency_target_s"], int(inputs["rows_per_forward"])
    )
    data, schema = load(name)
    (app,) = data["applications"]
    scorer = {d["name"]: d for d in app["deployments"]}["CoRAScorer"]
    uc = scorer["user_config"]
    assert uc["max_queued_rows"] == lim.max_queued_rows
    assert uc["max_batch_rows"] == lim.max_batch_rows
    assert uc["max_rows_per_forward"] == lim.rows_per_forward
    assert app["args"]["limits"]["max_items"] == lim.max_items <= lim.max_queued_rows
    assert scorer["max_ongoing_requests"] == lim.max_ongoing_requests
    assert data["http_options"]["request_timeout_s"] == lim.request_timeout_s
    if "autoscaling_config" in scorer:
        policy = scorer["autoscaling_config"]["policy"]
        assert policy["policy_function"] == "serve.autoscaling:QueuedRowsPolicy"
        assert policy["policy_kwargs"]["target_queued_rows"] == lim.target_queued_rows
    # the doc's limits table shows the same numbers
    table = doc_limits_table()
    expected = {
        "user_config.max_queued_rows": lim.max_queued_rows,
        "args.limits.max_items": lim.max_items,
        "user_config.max_batch_rows": lim.max_batch_rows,
        "user_config.max_rows_per_forward": lim.rows_per_forward,
        "max_ongoing_requests": lim.max_ongoing_requests,
        "http_options.request_timeout_s": lim.request_timeout_s,
    }
    for key, value in expected.items():
        assert table[key][name] == str(value), (key, table[key])
    if "autoscaling_config" in scorer:
        assert table["target_queued_rows"][name] == str(lim.target_queued_rows)


def test_the_cloud_autoscaling_policy_resolves_in_serve():
    from ray.serve.config import AutoscalingConfig

    from serve.autoscaling import QueuedRowsPolicy

    data, _ = load("serve.config")
    scorer = {d["name"]: d for d in data["applications"][0]["deployments"]}["CoRAScorer"]
    config = AutoscalingConfig(**scorer["autoscaling_config"])
    assert config.policy.get_policy() is QueuedRowsPolicy
