"""The exit-info file ``{name}.x{id}``: how ``nbdist-worker`` tells a backend how its task ended.

JSON ``{"status", "message", "exit_code", "signal", "limit", "usage", "started", "ended", "host",
"distributor_id"}``, written atomically beside the task's stdout, so a reader sees all of it or none.
"""

from __future__ import annotations

import json
from typing import Any

from ...cluster_protocol.naming import exit_info_path, write_json_atomic

__all__ = ["exit_info_path", "read_exit_info", "write_exit_info"]


def write_exit_info(stdout_dir: str, name: str, distributor_id: str, info: dict[str, Any]) -> None:
    """Write a task's exit info (atomically)."""
    write_json_atomic(exit_info_path(stdout_dir, name, distributor_id), info)


def read_exit_info(path: str) -> dict | None:
    """The exit info written by ``nbdist-worker``, or None when it is not there (yet)."""
    try:
        with open(path) as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None
