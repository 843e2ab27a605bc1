"""The whole pipeline on s3://, against a real S3 server (moto on 127.0.0.1, endpoint via AWS_ENDPOINT_URL).

    prepare_data --out s3://…  →  pretrain_cf --data s3://… --out s3://…  →  base LLM from an s3:// prefix
    →  train with train.storage_path on s3://  →  evaluate from the s3:// checkpoint  →  Serve loading it

The jobs run as the user runs them: `python jobs/<step>.py …` in a subprocess whose only S3 settings are the
standard AWS environment variables. The stages share one bucket and run in file order; a stage whose input
is missing is skipped with the reason. Until `jobs/train.py` exists, evaluation and serving use a checkpoint
built in-process from the S3 artifacts (random generator and P, the same files training writes) — the
stage says so in its skip/pass output. Also: a server stopped mid-upload leaves nothing a reader accepts,
and the credentials the jobs ran with appear in no object of the bucket and in no job output.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from cora_ray import storage
from cora_ray.errors import CoraError, StorageError

pytestmark = [pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
# distinctive credentials (moto accepts any): if they leak into an object or a log, the last test finds them
ACCESS_KEY = "AKIA" + uuid.uuid4().hex[:16].upper()
SECRET_KEY = "cora-pipeline-secret-" + uuid.uuid4().hex
SMALL_GENERATOR = {"num_queries": 2, "num_layers": 2, "hidden_size": 32, "num_heads": 4, "ffn_size": 64}

STATE: dict = {"outputs": []}  # what the stages produced, in order


@pytest.fixture(scope="module")
def bucket(s3_server) -> str:
    import boto3

    name = f"pipeline-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=name)
    return f"s3://{name}"


@pytest.fixture(scope="module")
def job_env(s3_server) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RAY_ADDRESS"))}
    env.update(
        AWS_ENDPOINT_URL=s3_server,
        AWS_ACCESS_KEY_ID=ACCESS_KEY,
        AWS_SECRET_ACCESS_KEY=SECRET_KEY,
        AWS_REGION="us-east-1",
        PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]),
        OMP_NUM_THREADS="1",
        RAY_AUTH_MODE="disabled",
        RAY_USAGE_STATS_ENABLED="0",
        DS_ACCELERATOR="cpu",
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        PYTHONUNBUFFERED="1",
    )
    return env


def run_job(env: dict, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """`python jobs/<args>` from the repository root, as a user would; output kept for the leak check."""
    if not (REPO / args[0]).is_file():
        pytest.skip(f"missing: {args[0]}")
    started = time.time()
    proc = subprocess.run(
        [sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )
    STATE["outputs"].append(proc.stdout + proc.stderr)
    print(f"{' '.join(args[:1])}: {time.time() - started:.1f} s, exit {proc.returncode}")
    assert proc.returncode == 0, f"{' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def need(*keys: str) -> None:
    missing = [k for k in keys if k not in STATE]
    if missing:
        pytest.skip(f"an earlier stage did not produce {', '.join(missing)}")


def test_prepare_data_job_writes_the_protocol_dataset_to_s3(bucket, job_env):
    from cora_ray.data import protocol

    uri = f"{bucket}/cora_ray/data/synthetic"
    run_job(
        job_env,
        "jobs/prepare_data.py",
        "--dataset",
        "synthetic",
        "--users",
        "40",
        "--items",
        "60",
        "--out",
        uri,
    )
    manifest = protocol.read_manifest(uri)
    assert manifest["counts"]["train"] > 0 and manifest["users"] == 40
    assert storage.list_files(f"{uri}/interactions/train", suffix=".parquet")
    STATE["data_uri"], STATE["data_manifest"] = uri, manifest


def test_pretrain_cf_job_reads_and_writes_s3(bucket, job_env):
    from cora_ray.cf.artifact import load_cf_artifact

    need("data_uri")
    uri = f"{bucket}/cora_ray/cf/synthetic/mf"
    run_job(
        job_env,
        "jobs/pretrain_cf.py",
        "--data",
        STATE["data_uri"],
        "--backbone",
        "mf",
        "--out",
        uri,
        "--num-cpus",
        "2",
        "model.dim=16",
        "train.max_epochs=3",
        "train.patience=3",
    )
    cf = load_cf_artifact(uri, expected_dataset_hash=STATE["data_manifest"]["hash"])
    assert cf is not None
    STATE["cf_uri"] = uri


def test_base_llm_loads_from_an_s3_prefix(bucket, tmp_path_factory):
    from cora_ray.config import LLMConfig
    from cora_ray.llm.loading import load_llm
    from cora_ray.llm.tiny import tiny_llm

    local = tmp_path_factory.mktemp("tiny_llm")
    tiny = tiny_llm(seed=0)
    tiny.model.save_pretrained(local)
    tiny.tokenizer.save_pretrained(local)
    uri = f"{bucket}/cora_ray/models/tiny-llama"
    storage.upload_dir(local, uri)
    cfg = LLMConfig(name_or_path=uri, answer_token=" Yes", negative_token=" No", dtype="float32")
    loaded = load_llm(cfg, "cpu")
    assert (
        loaded.weight_hash
        == load_llm(
            LLMConfig(name_or_path=str(local), answer_token=" Yes", negative_token=" No", dtype="float32"),
            "cpu",
        ).weight_hash
    ), "the model loaded from S3 is not the one uploaded"
    STATE["llm_uri"] = uri


def _experiment(bucket: str) -> dict:
    return {
        "name": "s3-pipeline",
        "data": {"uri": STATE["data_uri"]},
        "llm": {
            "name_or_path": STATE["llm_uri"],
            "answer_token": " Yes",
            "negative_token": " No",
            "dtype": "float32",
        },
        "model": {
            "method": "cora",
            "cf_artifact": STATE["cf_uri"],
            "rank": 4,
            "alpha": 8.0,
            "generator": SMALL_GENERATOR,
        },
        "train": {
            "micro_batch_size": 4,
            "max_steps": 4,
            "eval_every": 2,
            "eval_limit": 16,
            "warmup_steps": 1,
            "num_workers": 1,
            "zero_stage": 0,
            "storage_path": f"{bucket}/cora_ray/runs",
            "run_name": "s3-pipeline",
        },
    }


def _checkpoints_under(uri: str) -> list[tuple[str, dict]]:
    found = []
    for f in storage.list_files(uri, suffix="manifest.json"):
        try:
            manifest = storage.read_json(f)
        except StorageError:
            continue
        if isinstance(manifest, dict) and manifest.get("kind") == "cora_ray.checkpoint":
            found.append((f.rsplit("/", 1)[0], manifest))
    return found


def test_train_job_with_storage_path_on_s3(bucket, job_env, tmp_path_factory):
    need("data_uri", "cf_uri", "llm_uri")
    if not (REPO / "jobs" / "train.py").is_file():  # then evaluation and serving use an in-process checkpoint
        pytest.skip("missing: jobs/train.py")
    import yaml

    config = tmp_path_factory.mktemp("train") / "s3_pipeline.yaml"
    config.write_text(yaml.safe_dump(_experiment(bucket)))
    proc = run_job(job_env, "jobs/train.py", "--config", str(config), timeout=900)
    alias = f"{bucket}/cora_ray/runs/s3-pipeline/best"
    found = [c for c in _checkpoints_under(f"{bucket}/cora_ray/runs") if c[0] != alias]
    assert found, f"no checkpoint (manifest.json of kind cora_ray.checkpoint) under {bucket}/cora_ray/runs"
    best = max(found, key=lambda c: (c[1].get("metrics") or {}).get("valid_auc", 0.0))
    # the stable alias the docs and serve.config name: a copy of the best checkpoint, published during the run
    alias_manifest = storage.read_json(f"{alias}/manifest.json")
    assert alias_manifest.pop("alias_of") in [c[0] for c in found]
    assert alias_manifest["metrics"]["valid_auc"] == best[1]["metrics"]["valid_auc"]
    output = proc.stdout + proc.stderr  # the controller's line comes through Ray's log forwarding
    assert f"best alias:      {alias}" in output and f"[train] best alias {alias} = " in output
    STATE["checkpoint_uri"], STATE["checkpoint_source"] = alias, "jobs/train.py (the run's best alias)"


def _write_checkpoint_in_process(bucket: str) -> str:
    """The files training writes (random generator and P ≠ 0), built from the S3 artifacts and published on S3."""
    import torch

    from cora_ray.cf.artifact import load_cf_artifact
    from cora_ray.checkpoint import write_checkpoint_files
    from cora_ray.config import ExperimentConfig, from_dict, to_dict
    from cora_ray.llm.loading import load_llm
    from cora_ray.model.build import build_model

    cfg = from_dict(ExperimentConfig, _experiment(bucket))
    loaded = load_llm(cfg.llm, "cpu")
    cf = load_cf_artifact(cfg.model.cf_artifact, expected_dataset_hash=STATE["data_manifest"]["hash"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        model = build_model(cfg.model, loaded, cf)
        with torch.no_grad():
            for layer in model.collab_layers.values():
                layer.P.copy_(torch.randn(layer.P.shape) * 0.5)
    uri = f"{bucket}/cora_ray/runs/in-process/checkpoint"
    with storage.atomic_dir(uri, overwrite=True) as tmp:
        write_checkpoint_files(
            tmp,
            model.trainable_state_dict(),
            method="cora",
            config=to_dict(cfg),
            base_llm={"identity": loaded.identity, "weight_hash": loaded.weight_hash},
            answer_token_id=loaded.answer_token_id,
            negative_token_id=loaded.negative_token_id,
            cf_artifact={"uri": cfg.model.cf_artifact, "hash": cf.artifact_hash, "backbone": "mf"},
            dataset_hash=STATE["data_manifest"]["hash"],
            metrics={"valid_auc": 0.5, "valid_uauc": 0.5},
            step=1,
        )
    return uri


@pytest.fixture()
def checkpoint_uri(bucket) -> str:
    need("data_uri", "cf_uri", "llm_uri")
    if "checkpoint_uri" not in STATE:
        STATE["checkpoint_uri"] = _write_checkpoint_in_process(bucket)
        STATE["checkpoint_source"] = "in-process (jobs/train.py missing or failed)"
    print(f"checkpoint: {STATE['checkpoint_uri']} from {STATE['checkpoint_source']}")
    return STATE["checkpoint_uri"]


def test_evaluate_job_scores_the_s3_checkpoint_and_writes_metrics_to_s3(bucket, job_env, checkpoint_uri):
    out = f"{bucket}/cora_ray/eval/s3-pipeline"
    run_job(
        job_env,
        "jobs/evaluate.py",
        "--checkpoint",
        checkpoint_uri,
        "--out",
        out,
        "--num-actors",
        "0",
        "--limit",
        "40",
        "--splits",
        "test",
        "--no-progress",
    )
    metrics = storage.read_json(f"{out}/metrics.json")
    text = json.dumps(metrics)
    assert "auc" in text.lower(), f"metrics.json has no AUC: {text[:500]}"
    STATE["eval_uri"] = out


@pytest.mark.ray
def test_serve_app_loads_the_checkpoint_from_s3(ray_cluster, s3_server, checkpoint_uri):
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))  # the top-level serve/ package, as `serve run` from the root sees it
    import socket
    import urllib.request

    from ray import serve
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    from cora_ray.data import protocol

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env_vars = {
        "AWS_ENDPOINT_URL": s3_server,
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_REGION": "us-east-1",
        "PYTHONPATH": str(REPO),
    }
    config = {
        "proxy_location": "HeadOnly",
        "http_options": {"host": "127.0.0.1", "port": port},
        "applications": [
            {
                "name": "cora",
                "route_prefix": "/",
                "import_path": "serve.app:build_app",
                "runtime_env": {"env_vars": env_vars},
                "args": {"checkpoint_uri": checkpoint_uri, "device": "cpu"},  # data_uri: from the checkpoint
                "deployments": [
                    {"name": "CoRAScorer", "num_replicas": 1, "ray_actor_options": {"num_cpus": 0.5}},
                    {"name": "CoRAIngress", "num_replicas": 1, "ray_actor_options": {"num_cpus": 0.5}},
                ],
            }
        ],
    }
    serve.start(http_options={"host": "127.0.0.1", "port": port}, proxy_location="HeadOnly")
    try:
        _get_global_client().deploy_apps(ServeDeploySchema.model_validate(config))
        deadline, status = time.time() + 240, None
        while time.time() < deadline:
            status = serve.status().applications.get("cora")
            if status is not None and status.status in ("RUNNING", "DEPLOY_FAILED"):
                break
            time.sleep(1)
        assert status is not None and status.status == "RUNNING", f"Serve app not running: {status}"
        users = protocol.read_users(STATE["data_uri"]).column("raw_id").to_pylist()
        items = protocol.read_items(STATE["data_uri"]).column("raw_id").to_pylist()
        body = json.dumps({"user_id": users[0], "item_ids": items[:3]}).encode()
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/score", data=body, headers={"content-type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=60) as r:
            answer = json.loads(r.read())
        assert len(answer["scores"]) == 3
        assert checkpoint_uri in answer["model"], f"served another model: {answer['model']}"
    finally:
        serve.shutdown()


def test_server_stopped_mid_upload_leaves_nothing_a_reader_accepts(s3_server, monkeypatch):
    """An S3 server that stops after a few objects of an upload; back up, the prefix is refused as incomplete."""
    import socket

    import boto3
    from moto.server import ThreadedMotoServer

    from cora_ray.data import protocol
    from cora_ray.data.prepare import prepare

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    endpoint = f"http://127.0.0.1:{port}"
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    name = f"crash-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=name)
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    uri = f"s3://{name}/data/synthetic"

    real_write, calls = storage.write_bytes, {"n": 0}

    def write_then_server_dies(target, data, endpoint=None):
        calls["n"] += 1
        if calls["n"] == 4:
            server.stop()  # the server goes away in the middle of the upload
        return real_write(target, data, endpoint)

    monkeypatch.setattr(storage, "write_bytes", write_then_server_dies)
    try:
        with pytest.raises((CoraError, OSError)):
            prepare("synthetic", uri, progress=lambda _: None)
    finally:
        monkeypatch.setattr(storage, "write_bytes", real_write)
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        server.start()  # back up, with what it had received (moto keeps its state in this process)
    try:
        assert calls["n"] >= 4
        assert storage.list_files(uri), "nothing was uploaded before the server stopped"
        assert not storage.exists(f"{uri}/manifest.json"), "the commit marker was written"
        with pytest.raises(StorageError, match="incomplete"):
            protocol.read_manifest(uri)
    finally:
        server.stop()


def test_credentials_appear_in_no_object_and_no_job_output(bucket):
    import boto3

    assert STATE["outputs"], "no job ran"
    for text in STATE["outputs"]:
        assert SECRET_KEY not in text and ACCESS_KEY not in text, "a job printed the AWS credentials"
    s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    name = bucket[len("s3://") :]
    keys = [
        o["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=name)
        for o in page.get("Contents", [])
    ]
    assert keys
    for key in keys:
        data = s3.get_object(Bucket=name, Key=key)["Body"].read()
        assert SECRET_KEY.encode() not in data and ACCESS_KEY.encode() not in data, f"credentials in {key}"
