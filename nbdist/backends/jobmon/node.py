"""The worker node of cluster type ``nbdist``: what Jobmon's worker asks inside a task.

Differences from :class:`nbdist.multiprocess.MultiprocessWorkerNode`, for Jobmon only:

- ``initialize_logfile(log_type, None, name)`` (a task without ``stdout``/``stderr`` folders) is
  ``/dev/null``, as Jobmon's own nodes answer;
- ``get_exit_info`` answers ``E`` for every failed command, signals included: Jobmon's server refuses
  a worker's ``K`` (a task instance goes ``K`` only when Jobmon itself kills it). The message carries
  the exit code (or the signal), the command's usage and its stderr, so all of it is in Jobmon's
  error log.
"""

from __future__ import annotations

import resource
import signal
import time
from typing import Any

from ...cluster_protocol import TaskInstanceStatus as S
from ..multiprocess import MultiprocessWorkerNode
from .reports import describe_usage

__all__ = ["JobmonWorkerNode", "describe_exit"]


def describe_exit(exit_code: int) -> str:
    """``"exit code 3"``; ``"killed by signal 9 (SIGKILL)"`` for a negative code or a shell's 128 + N."""
    signum = -exit_code if exit_code < 0 else (exit_code - 128 if 128 < exit_code < 128 + 65 else None)
    if signum is None:
        return f"exit code {exit_code}"
    try:
        name = signal.Signals(signum).name
    except ValueError:
        name = f"signal {signum}"
    how = f"killed by signal {signum} ({name})"
    return how if exit_code < 0 else f"exit code {exit_code}, {how}"


class JobmonWorkerNode(MultiprocessWorkerNode):
    """A task started by the ``nbdist`` cluster, as Jobmon's worker sees it."""

    def __init__(self) -> None:
        super().__init__()
        self._created = time.time()

    def initialize_logfile(self, log_type: str, log_dir: str | None, name: str) -> str:
        """``{log_dir}/{name}.o{id}`` / ``.e{id}``; ``/dev/null`` when the task names no folder."""
        if not log_dir:
            return "/dev/null"
        return super().initialize_logfile(log_type, log_dir, name)

    def command_usage(self) -> dict[str, Any]:
        """Wall seconds since the worker started and CPU seconds of the finished command.

        No max RSS: Jobmon's worker forks itself to start the command, so the children's high-water
        mark is the worker's own size (~100 MB), not the command's. nbdist's triage reports the
        task's real peak (sampled by the consumer) when a task ends over its memory limit.
        """
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        return {
            "wall_s": round(time.time() - self._created, 4),
            "cpu_s": round(children.ru_utime + children.ru_stime, 4),
        }

    def get_exit_info(self, exit_code: int, error_msg: str) -> tuple[str, str]:
        """``(D, …)`` for exit 0, else ``(E, "exit code N (usage); stderr: …")`` — never ``K``."""
        if exit_code == 0:
            return S.DONE, "exit code 0"
        message = f"{describe_exit(exit_code)} ({describe_usage(self.command_usage())})"
        if error_msg and error_msg.strip():
            message += f"; stderr:\n{error_msg.rstrip()}"
        return S.ERROR, message
