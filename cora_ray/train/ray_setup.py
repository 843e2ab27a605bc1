"""Set-up run in every Ray worker process of a local cluster this project starts (runtime_env hook).

Each line silenced here is one Ray itself emits about its own code, known harmless, matched narrowly (one
logger, one message); everything else Ray logs still reaches the driver:

- Ray Train V2's PlacementGroupCleaner, a safety actor that removes a run's placement group if its
  controller dies, polls Ray's state API about once a second; a local cluster here runs without the
  dashboard (docs/platform_notes.md: start-up time and memory on small machines), so every poll fails and
  logs a warning — hundreds of identical lines in a training log. Its warnings are raised to ERROR; training
  itself cleans up its placement group on every normal exit.
- Ray Data logs "Progress bars disabled. To enable, …" once per executor when progress bars are off. The
  project turns them off on purpose (its own progress lines replace them: cora_ray/train/progress.py).
- Ray Train's own `DataConfig` sets `ExecutionOptions.exclude_resources`, which Ray Data deprecates with a
  `RayDeprecationWarning` in the worker that builds the datasets; the project does not set that option.
- Ray Train's worker-group life cycle at INFO ("Requesting resources", "Attempting to start training worker
  group", "Started training worker group", "Setting up process group"): those three module loggers are
  raised to WARNING, so their warnings and errors still show. The project prints its own start-up line.
- Ray Data's "✔️  Dataset … execution finished in N seconds" (success only; a failed execution still logs).
"""

from __future__ import annotations

import logging
import re
import warnings

PLACEMENT_GROUP_CLEANER_LOGGER = "ray.train.v2._internal.execution.controller.placement_group_cleaner"
PROGRESS_BARS_LOGGER = "ray.data._internal.progress"
PROGRESS_BARS_DISABLED = "Progress bars disabled. To enable"
EXCLUDE_RESOURCES_DEPRECATION = r"`ExecutionOptions\.exclude_resources` is deprecated"
TRAIN_LIFECYCLE_LOGGERS = (
    "ray.train.v2._internal.execution.scaling_policy.scaling_policy",
    "ray.train.v2._internal.execution.worker_group.worker_group",
    "ray.train.torch.config",
)
STREAMING_EXECUTOR_LOGGER = "ray.data._internal.execution.streaming_executor"
DATASET_FINISHED = re.compile(r"^\S+\s+Dataset \S+ execution finished in ")
HOOK = f"{__name__}.quiet_known_harmless_ray_logs"


class _DropMatching(logging.Filter):
    """Drops the records of one logger whose message matches `pattern` (re.match); passes every other record."""

    def __init__(self, pattern: str | re.Pattern) -> None:
        super().__init__()
        self.pattern = re.compile(pattern)

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.match(record.getMessage())


class _DropBelow(logging.Filter):
    """Drops the records of one logger below `level`. A filter, not `setLevel`: Ray Train's own logging set-up
    (logging.config.dictConfig on "ray.train") resets the level of every existing "ray.train.*" logger, while
    it keeps their filters."""

    def __init__(self, level: int) -> None:
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= self.level


def _raise_to(logger_name: str, level: int) -> None:
    logger = logging.getLogger(logger_name)
    logger.setLevel(level)
    if not any(isinstance(f, _DropBelow) for f in logger.filters):
        logger.addFilter(_DropBelow(level))


def _drop(logger_name: str, pattern: str | re.Pattern) -> None:
    logger = logging.getLogger(logger_name)
    if not any(isinstance(f, _DropMatching) for f in logger.filters):
        logger.addFilter(_DropMatching(pattern))


def quiet_known_harmless_ray_logs() -> None:
    """The worker-process set-up: silence the known-harmless Ray messages of the module docstring."""
    _raise_to(PLACEMENT_GROUP_CLEANER_LOGGER, logging.ERROR)
    for name in TRAIN_LIFECYCLE_LOGGERS:
        _raise_to(name, logging.WARNING)
    _drop(PROGRESS_BARS_LOGGER, re.escape(PROGRESS_BARS_DISABLED))
    _drop(STREAMING_EXECUTOR_LOGGER, DATASET_FINISHED)
    warnings.filterwarnings("ignore", message=EXCLUDE_RESOURCES_DEPRECATION)
