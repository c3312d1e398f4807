"""What a running task knows about itself: the worker-node half of the protocol, shared by backends.

A backend's node class says only how its scheduler names the task (:attr:`WorkerNode.distributor_id`,
:attr:`WorkerNode.array_step_id`); log naming, exit info and usage are the same everywhere.
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import sys
import time
from typing import Any

from ...cluster_protocol import TaskInstanceStatus as Status
from ...cluster_protocol.naming import array_id, log_file
from .runner import exit_message
from .system import SYSTEM

__all__ = ["WorkerNode", "current_distributor_id", "worker_entry_point"]

LOG_KINDS = {"stdout": "o", "stderr": "e"}


def current_distributor_id() -> str | None:
    """The running task's distributor id, read from the scheduler's environment."""
    env = os.environ
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        return array_id(env["SLURM_ARRAY_JOB_ID"], int(env["SLURM_ARRAY_TASK_ID"]))
    if env.get("SLURM_JOB_ID"):
        return env["SLURM_JOB_ID"]
    if env.get("JOB_ID"):
        step = env.get("ARRAY_STEP_ID")
        return array_id(env["JOB_ID"], int(step) if step else None)
    return None


def worker_entry_point() -> str:
    """Path of ``nbdist-worker`` in this Python environment (next to ``sys.executable``, so a venv works)."""
    candidate = os.path.join(os.path.dirname(sys.executable), "nbdist-worker")
    if os.access(candidate, os.X_OK):
        return candidate
    return shutil.which("nbdist-worker") or candidate


class WorkerNode:
    """The ``ClusterWorkerNode`` half every backend shares; subclasses say how the task is named."""

    def __init__(self) -> None:
        self._start = time.time()

    @property
    def distributor_id(self) -> str | None:
        """This task's distributor id, None outside a task."""
        raise NotImplementedError

    @property
    def array_step_id(self) -> int | None:
        """This task's array step, None for a plain job."""
        raise NotImplementedError

    def initialize_logfile(self, log_type: str, log_dir: str, name: str) -> str:
        """``{log_dir}/{name}.o{id}`` for ``stdout``, ``.e{id}`` for ``stderr``."""
        if log_type not in LOG_KINDS:
            raise ValueError(f"log_type must be 'stdout' or 'stderr', not {log_type!r}")
        return log_file(log_dir, name, LOG_KINDS[log_type], str(self.distributor_id))

    def get_exit_info(self, exit_code: int, error_msg: str) -> tuple[str, str]:
        """``(D, …)`` for exit 0, ``(K, …)`` for SIGTERM/SIGKILL, ``(E, error_msg)`` otherwise."""
        if exit_code == 0:
            return Status.DONE, "exit code 0"
        signum = -exit_code if exit_code < 0 else (exit_code - 128 if exit_code > 128 else None)
        if signum in (signal.SIGTERM, signal.SIGKILL):
            return Status.KILL_SELF, error_msg or exit_message(None, signum)
        return Status.ERROR, error_msg or exit_message(exit_code, None)

    def get_usage_stats(self) -> dict[str, Any]:
        """Wall seconds since this node object was made, CPU and max RSS of this process and its children."""
        own = resource.getrusage(resource.RUSAGE_SELF)
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        return {
            "wall_s": round(time.time() - self._start, 4),
            "cpu_s": round(own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime, 4),
            "max_rss_mb": round(SYSTEM.max_rss_mb(max(own.ru_maxrss, children.ru_maxrss)), 2),
        }
