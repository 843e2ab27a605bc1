"""Known-harmless Ray log lines: dropped narrowly on the driver (cora_ray/ray_cluster.py) and in workers
(cora_ray/train/ray_setup.py); every other line still gets through."""

from __future__ import annotations

import logging
import logging.config
import warnings

from ray._private.ray_logging import WorkerStandardStreamDispatcher

from cora_ray import ray_cluster
from cora_ray.train import ray_setup

WATCHER = (
    "[2026-12-02 15:25:25,680 E 5486 5643] core_worker.cc:2465: Actor with class name: 'PreemptionWatcher' and "
    "ID: 'd5cf15acac389f0d098a77eb01000000' has constructor arguments in the object store and max_restarts > 0."
)
DATA_POOL = WATCHER.replace("'PreemptionWatcher'", "'MapWorker(MapBatches(EncodePrompts))'")
OWN_ACTOR = WATCHER.replace("'PreemptionWatcher'", "'ScoringEngine'")  # an actor the project starts itself


def test_only_rays_own_actor_lines_are_dropped_on_the_driver():
    dispatcher = WorkerStandardStreamDispatcher()
    printed: list[dict] = []
    dispatcher.add_handler(ray_cluster.PRINT_LOGS_HANDLER, printed.append)
    assert ray_cluster.filter_worker_logs(dispatcher)
    assert not ray_cluster.filter_worker_logs(dispatcher)  # wrapped once, not twice
    dispatcher.emit({"pid": 1, "is_err": True, "lines": [WATCHER]})
    assert printed == []  # a batch of only harmless lines prints nothing
    dispatcher.emit({"pid": 1, "is_err": True, "lines": [WATCHER, DATA_POOL, OWN_ACTOR, "[train] step 1"]})
    assert printed == [{"pid": 1, "is_err": True, "lines": [OWN_ACTOR, "[train] step 1"]}]


def test_nothing_is_wrapped_without_rays_printer():
    dispatcher = WorkerStandardStreamDispatcher()
    assert not ray_cluster.filter_worker_logs(dispatcher)
    assert dispatcher.handlers == []


def test_worker_hook_drops_the_progress_bar_notice_and_the_deprecation_only(caplog):
    with warnings.catch_warnings():
        ray_setup.quiet_known_harmless_ray_logs()
        ray_setup.quiet_known_harmless_ray_logs()  # idempotent: one filter
        logger = logging.getLogger(ray_setup.PROGRESS_BARS_LOGGER)
        assert len(logger.filters) == 1
        with caplog.at_level(logging.WARNING, logger=ray_setup.PROGRESS_BARS_LOGGER):
            logger.warning("Progress bars disabled. To enable, set `...enable_progress_bars = True`.")
            logger.warning("Progress bars for operators disabled.")
        assert [r.getMessage() for r in caplog.records] == ["Progress bars for operators disabled."]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("default")
            ray_setup.quiet_known_harmless_ray_logs()  # filters go in front of "default"
            warnings.warn(
                "`ExecutionOptions.exclude_resources` is deprecated and will be removed", stacklevel=1
            )
            warnings.warn("`ExecutionOptions.other` is deprecated", stacklevel=1)
        assert [str(w.message) for w in caught] == ["`ExecutionOptions.other` is deprecated"]
    assert logging.getLogger(ray_setup.PLACEMENT_GROUP_CLEANER_LOGGER).level == logging.ERROR
    logger.filters.clear()


def test_worker_hook_quiets_rays_life_cycle_info_but_not_its_warnings_or_failures(caplog):
    ray_setup.quiet_known_harmless_ray_logs()
    executor = logging.getLogger(ray_setup.STREAMING_EXECUTOR_LOGGER)
    group = logging.getLogger(ray_setup.TRAIN_LIFECYCLE_LOGGERS[1])
    with caplog.at_level(logging.INFO, logger=ray_setup.STREAMING_EXECUTOR_LOGGER):
        executor.info("✔️  Dataset train_0357_0 execution finished in 61.54 seconds")
        executor.info("⚠️  Dataset train_0357_0 execution failed")
    assert [r.getMessage() for r in caplog.records] == ["⚠️  Dataset train_0357_0 execution failed"]
    logging.config.dictConfig(
        {
            "version": 1,
            "incremental": False,
            "disable_existing_loggers": False,
            "loggers": {"ray.train": {"level": "INFO"}},
        }
    )  # what Ray Train's set-up does
    caplog.clear()
    with caplog.at_level(logging.INFO, logger=ray_setup.TRAIN_LIFECYCLE_LOGGERS[1]):
        group.info("Started training worker group of size 1")
        group.warning("worker group failed to start")
    assert [r.getMessage() for r in caplog.records] == ["worker group failed to start"]
    group.filters.clear()
    executor.filters.clear()
    logging.getLogger(ray_setup.PROGRESS_BARS_LOGGER).filters.clear()
