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
    assert scorer.max_ongoing_requests >= options.max_batch_size  # a batch can fill
    assert scorer.health_check_period_s and scorer.health_check_timeout_s


def test_cloud_config_has_gpu_replicas_autoscaling_and_placeholders():
    data, schema = load("serve.config")
    scorer = {d.name: d for d in schema.applications[0].deployments}["CoRAScorer"]
    assert scorer.ray_actor_options.num_gpus == 1
    auto = scorer.autoscaling_config
    assert auto["min_replicas"] >= 1 and auto["max_replicas"] > auto["min_replicas"]
    assert auto["target_ongoing_requests"] > 0
    args = data["applications"][0]["args"]
    assert args["checkpoint_uri"].startswith("s3://") and args["data_uri"].startswith("s3://")
    assert schema.http_options.host == "0.0.0.0"


def test_local_config_is_cpu_one_replica_on_loopback_with_the_demo_checkpoint():
    data, schema = load("serve.local.config")
    assert schema.http_options.host == "127.0.0.1"
    scorer = {d.name: d for d in schema.applications[0].deployments}["CoRAScorer"]
    assert scorer.num_replicas == 1 and not scorer.ray_actor_options.num_gpus
    args = data["applications"][0]["args"]
    assert args["checkpoint_uri"] == "artifacts/demo/checkpoint" and args["device"] == "cpu"


def test_building_the_app_without_a_checkpoint_says_how_to_get_one(tmp_path):
    from cora_ray.errors import ConfigError
    from serve.app import build_app

    with pytest.raises(ConfigError, match=r"no checkpoint at .*make demo"):
        build_app({"checkpoint_uri": str(tmp_path / "missing")})
    with pytest.raises(ConfigError, match="unknown key 'checkpoint'"):
        build_app({"checkpoint": "x"})
