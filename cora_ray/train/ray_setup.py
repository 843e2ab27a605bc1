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
"""

from __future__ import annotations

import logging
import warnings

PLACEMENT_GROUP_CLEANER_LOGGER = "ray.train.v2._internal.execution.controller.placement_group_cleaner"
PROGRESS_BARS_LOGGER = "ray.data._internal.progress"
PROGRESS_BARS_DISABLED = "Progress bars disabled. To enable"
EXCLUDE_RESOURCES_DEPRECATION = r"`ExecutionOptions\.exclude_resources` is deprecated"
HOOK = f"{__name__}.quiet_known_harmless_ray_logs"


class _DropMessagesStartingWith(logging.Filter):
    """Drops the records of one logger whose message starts with `prefix`; passes every other record."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefix)


def quiet_known_harmless_ray_logs() -> None:
    """The worker-process set-up: silence the three known-harmless Ray messages of the module docstring."""
    logging.getLogger(PLACEMENT_GROUP_CLEANER_LOGGER).setLevel(logging.ERROR)
    progress_logger = logging.getLogger(PROGRESS_BARS_LOGGER)
    if not any(isinstance(f, _DropMessagesStartingWith) for f in progress_logger.filters):
        progress_logger.addFilter(_DropMessagesStartingWith(PROGRESS_BARS_DISABLED))
    warnings.filterwarnings("ignore", message=EXCLUDE_RESOURCES_DEPRECATION)
