"""Jobmon's ``requested_resources`` in nbdist's terms (memory in GiB, keys nbdist does not use).

Jobmon hands a distributor every key of a task's compute resources: ``cores``, ``memory`` (a
number of GiB, where a request under 1 GiB has been rounded down to 0), ``runtime`` (seconds),
``queue``, ``stdout``/``stderr`` (folders for the *command's* logs, which Jobmon's worker writes
itself) and whatever else a user set for another cluster (``project``, ``constraints``, ...).
nbdist's own API keeps refusing unknown keys; here they are dropped with a debug log.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

__all__ = ["GIB_IN_MB", "JOBMON_HANDLED_KEYS", "PASSED_KEYS", "make_log_folders", "nbdist_resources"]

logger = logging.getLogger(__name__)

GIB_IN_MB = 1024.0
# Keys nbdist enforces for a task started by Jobmon.
PASSED_KEYS = ("cores", "memory", "runtime", "queue")
# Keys Jobmon's worker node handles itself: it opens the command's log files in these folders.
JOBMON_HANDLED_KEYS = ("stdout", "stderr")


def nbdist_memory(value: Any) -> Any:
    """Jobmon's memory (GiB as a number; 0 means "under 1 GiB") as nbdist's (MB, or a string with a unit).

    0 becomes 1 GiB, the most a request rounded down to 0 can have meant: the limit nbdist enforces
    is never below what the user asked for. Strings with a unit (``"512M"``) pass through as they are.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return value  # a string: nbdist's parse_memory reads its unit, or says clearly what is wrong
    if value == 0:
        return GIB_IN_MB
    return value * GIB_IN_MB


def nbdist_resources(requested: Mapping[str, Any] | None) -> dict[str, Any]:
    """The part of Jobmon's ``requested_resources`` nbdist enforces, in nbdist's units."""
    requested = dict(requested or {})
    ignored = sorted(set(requested) - set(PASSED_KEYS) - set(JOBMON_HANDLED_KEYS))
    if ignored:
        logger.debug("resource(s) %s are not used by nbdist's distributor: ignored", ignored)
    resources = {key: requested[key] for key in PASSED_KEYS if requested.get(key) is not None}
    if "memory" in resources:
        resources["memory"] = nbdist_memory(resources["memory"])
    return resources


def make_log_folders(requested: Mapping[str, Any] | None) -> None:
    """Create the ``stdout``/``stderr`` folders a task names, as nbdist's own sessions do.

    Jobmon's worker opens the command's log files itself: in a folder that does not exist it exits
    199 before the command runs, and Jobmon's error log says nothing of why. A folder that cannot be
    made raises ``ValueError``, which Jobmon records as the task instance's ``W`` with this line.
    """
    for key in JOBMON_HANDLED_KEYS:
        folder = (requested or {}).get(key)
        if not folder:
            continue
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as exc:
            raise ValueError(f"the {key} folder {folder!r} cannot be created ({exc.strerror}): "
                             "Jobmon's worker could not write the task's log there") from None
