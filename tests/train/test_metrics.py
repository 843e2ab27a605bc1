"""Training metrics for Prometheus (`ray.util.metrics`, recorded by rank 0 every `log_every` steps) and
TensorBoard as a declared optional dependency."""

from __future__ import annotations

import builtins
from collections import defaultdict

import pytest

from cora_ray.errors import ConfigError
from cora_ray.train.progress import (
    STEP_SECONDS_BOUNDARIES,
    TENSORBOARD_EXTRA,
    Progress,
    TrainMetrics,
    run_name_of,
)


class FakeMetrics:
    """Stands in for `ray.util.metrics`: the same constructors and record methods; keeps every call."""

    def __init__(self) -> None:
        self.created: dict[str, dict] = {}
        self.calls: dict[str, list[tuple[float, dict]]] = defaultdict(list)
        fake = self

        class _Metric:
            kind = ""

            def __init__(self, name, description="", *args):
                # Histogram(name, description, boundaries, tag_keys); Gauge/Counter(name, description, tag_keys)
                assert name not in fake.created, f"metric {name} created twice"
                tag_keys = args[-1] if args else None
                boundaries = args[0] if len(args) == 2 else None
                fake.created[name] = {
                    "kind": self.kind,
                    "description": description,
                    "tag_keys": tag_keys,
                    "boundaries": boundaries,
                }
                self.name = name

            def _record(self, value, tags=None):
                assert set(tags or {}) == set(fake.created[self.name]["tag_keys"] or ())
                fake.calls[self.name].append((value, dict(tags or {})))

        class Gauge(_Metric):
            kind = "gauge"

            def set(self, value, tags=None):
                self._record(value, tags)

        class Counter(_Metric):
            kind = "counter"

            def inc(self, value=1.0, tags=None):
                assert value > 0
                self._record(value, tags)

        class Histogram(_Metric):
            kind = "histogram"

            def observe(self, value, tags=None):
                self._record(value, tags)

        self.Gauge, self.Counter, self.Histogram = Gauge, Counter, Histogram

    def values(self, name: str) -> list[float]:
        return [v for v, _ in self.calls[name]]


def test_rank0_exports_step_time_rate_loss_and_lr_every_log_every_steps(tmp_path):
    fake = FakeMetrics()
    run_uri = str(tmp_path / "runs" / "tiny-20260101-000000")
    progress = Progress(
        run_uri,
        max_steps=10,
        eval_every=100,
        samples_per_step=16,
        log_every=4,
        metrics=TrainMetrics(run_name_of(run_uri), fake),
    )
    step_seconds = [0.5, 0.25, 0.25, 0.5, 1.0, 1.0, 1.0, 1.0, 2.0, 2.0]
    for step, sec in enumerate(step_seconds, start=1):
        progress.train_step(step, loss=1.0 / step, lr=1e-4 * step, step_seconds=sec)
    progress.close()

    # exported at steps 4, 8 and the last step (10): one value per log interval
    assert fake.values("cora_train_step") == [4, 8, 10]
    assert fake.values("cora_train_loss") == pytest.approx([1 / 4, 1 / 8, 1 / 10])
    assert fake.values("cora_train_learning_rate") == pytest.approx([4e-4, 8e-4, 1e-3])
    # the window's mean step time and its samples/s (16 samples per step)
    assert fake.values("cora_train_step_seconds") == pytest.approx([1.5 / 4, 4.0 / 4, 4.0 / 2])
    assert fake.values("cora_train_step_time_seconds") == pytest.approx([1.5 / 4, 1.0, 2.0])
    assert fake.values("cora_train_samples_per_second") == pytest.approx([64 / 1.5, 64 / 4.0, 32 / 4.0])
    assert fake.values("cora_train_optimizer_steps") == [4, 4, 2]
    assert fake.values("cora_train_samples_consumed") == [64, 64, 32]
    # every value is tagged with the run's name; the kinds are what Prometheus expects
    assert {tags["run"] for calls in fake.calls.values() for _, tags in calls} == {"tiny-20260101-000000"}
    kinds = {name: c["kind"] for name, c in fake.created.items()}
    assert kinds["cora_train_optimizer_steps"] == kinds["cora_train_samples_consumed"] == "counter"
    assert kinds["cora_train_step_time_seconds"] == "histogram"
    assert fake.created["cora_train_step_time_seconds"]["boundaries"] == STEP_SECONDS_BOUNDARIES
    assert kinds["cora_train_loss"] == kinds["cora_train_learning_rate"] == "gauge"


def test_other_ranks_export_nothing(tmp_path):
    fake = FakeMetrics()
    progress = Progress(
        str(tmp_path / "run"),
        max_steps=4,
        eval_every=2,
        samples_per_step=8,
        log_every=1,
        enabled=False,
        metrics=TrainMetrics("run", fake),
    )
    for step in range(1, 5):
        progress.train_step(step, 0.7, 1e-4, 0.1)
    assert not fake.calls


def test_run_name_of_local_and_s3_run_uris():
    assert run_name_of("/data/runs/tiny-1") == "tiny-1"
    assert run_name_of("s3://bucket/runs/tiny-2/") == "tiny-2"


def test_ray_util_metrics_accepts_the_metrics_definitions_and_values():
    """The real `ray.util.metrics` classes take these constructors and tagged values (outside a connected Ray
    process they record nothing, inside a Train worker they are exported by the node's metrics agent)."""
    metrics = TrainMetrics("tiny-run")
    out = metrics.record(step=3, steps=3, samples=48, seconds=1.5, loss=0.69, lr=1e-4)
    assert out == pytest.approx({"step_seconds": 0.5, "samples_per_s": 32.0, "loss": 0.69, "lr": 1e-4})


def hide_tensorboard(monkeypatch) -> None:
    """Make `torch.utils.tensorboard` and `tensorboardX` fail to import, installed or not."""
    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name in ("torch.utils.tensorboard", "tensorboardX"):
            raise ImportError(f"No module named {name!r} (hidden by the test)")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)


def test_tensorboard_requested_but_missing_is_an_error_naming_the_extra(tmp_path, monkeypatch):
    hide_tensorboard(monkeypatch)
    with pytest.raises(ConfigError) as err:
        Progress(
            str(tmp_path / "run"),
            max_steps=4,
            eval_every=2,
            samples_per_step=8,
            tensorboard=True,
            metrics=TrainMetrics("run", FakeMetrics()),
        )
    assert TENSORBOARD_EXTRA in str(err.value) and "train.tensorboard" in str(err.value)
    assert not (tmp_path / "run" / "progress.jsonl").exists()  # refused before writing anything
    # not asked for: no TensorBoard, no error
    Progress(
        str(tmp_path / "run2"),
        max_steps=4,
        eval_every=2,
        samples_per_step=8,
        metrics=TrainMetrics("run2", FakeMetrics()),
    ).close()


def test_the_driver_refuses_a_tensorboard_run_before_ray_starts(monkeypatch):
    from cora_ray.config import ExperimentConfig, load_config
    from cora_ray.train.trainer import _check_config

    cfg = load_config(ExperimentConfig, None, ["model.cf_artifact=/nowhere/cf", "train.tensorboard=true"])
    if _tensorboard_installed():
        _check_config(cfg, local_cluster=False)  # installed: accepted
    hide_tensorboard(monkeypatch)
    with pytest.raises(ConfigError, match=r"cora_ray\[tensorboard\]"):
        _check_config(cfg, local_cluster=False)
    off = load_config(ExperimentConfig, None, ["model.cf_artifact=/nowhere/cf"])
    _check_config(off, local_cluster=False)  # not asked for: nothing to install


def _tensorboard_installed() -> bool:
    import importlib.util

    return any(importlib.util.find_spec(m) is not None for m in ("tensorboard", "tensorboardX"))


def test_the_tensorboard_extra_is_declared():
    from pathlib import Path

    tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")

    project = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())["project"]
    extra = project["optional-dependencies"]["tensorboard"]
    assert any(req.split(">")[0].split("=")[0].strip() == "tensorboard" for req in extra)
    assert "cora_ray[tensorboard]" in TENSORBOARD_EXTRA
