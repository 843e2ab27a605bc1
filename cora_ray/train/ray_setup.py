"""Set-up run in every Ray worker process of a local cluster this project starts (runtime_env hook).

A local cluster here runs without the dashboard (docs/platform_notes.md: start-up time and memory on small machines),
so Ray's state API is unavailable. Ray Train V2's PlacementGroupCleaner, a safety actor that removes a
run's placement group if its controller dies, polls that API about once a second and logs a warning on
every failed poll — hundreds of identical lines in a training log. Its warnings are raised to ERROR here;
nothing else is silenced, and training itself cleans up its placement group on every normal exit.
"""

from __future__ import annotations

import logging

PLACEMENT_GROUP_CLEANER_LOGGER = "ray.train.v2._internal.execution.controller.placement_group_cleaner"
HOOK = f"{__name__}.quiet_placement_group_cleaner"


def quiet_placement_group_cleaner() -> None:
    logging.getLogger(PLACEMENT_GROUP_CLEANER_LOGGER).setLevel(logging.ERROR)
