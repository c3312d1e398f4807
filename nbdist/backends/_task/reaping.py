"""Making sure nothing a task started outlives it: the child subreaper, strays, and a kill by task id.

A process that runs tasks (a consumer, ``nbdist-worker``) becomes a child subreaper, so daemons a
task detaches with ``setsid`` re-parent to it instead of to init; once the task ends, :func:`reap_strays`
kills and reaps whatever came back. :func:`kill_tasks_by_id` is the fallback after a fault, when the
process that knew the task's pids is gone.
"""

from __future__ import annotations

import os
import signal

from .system import SYSTEM

__all__ = ["become_subreaper", "keep_child", "kill_tasks_by_id", "reap_strays", "release_child"]

# Children this process keeps between tasks (a consumer's warm workers): never strays.
_kept: set[int] = set()


def keep_child(pid: int) -> None:
    """``pid`` is a child this process keeps across tasks: :func:`reap_strays` leaves it alone."""
    _kept.add(pid)


def release_child(pid: int) -> None:
    """``pid`` is no longer kept (it was retired and reaped)."""
    _kept.discard(pid)


def become_subreaper() -> bool:
    """Make orphaned descendants of this process re-parent to it, so none can escape a kill (where the
    system can: :mod:`.system`); False elsewhere: a task's process group is still killed."""
    return SYSTEM.become_subreaper()


def reap_strays() -> None:
    """Kill and reap the children left behind by a finished task (this process runs one at a time)."""
    for pid in SYSTEM.children():
        if pid in _kept:
            continue
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass


def kill_tasks_by_id(distributor_ids: list[str]) -> None:
    """SIGKILL every process whose environment says it belongs to one of these tasks.

    For tasks whose consumer died: their pids may never have reached the distributor and their
    daemons may have left the task's group, but every descendant inherits ``NBDIST_DISTRIBUTOR_ID``.
    Scanning all processes is slow-ish; it only happens after a fault.
    """
    import psutil

    wanted = set(distributor_ids)
    if not wanted:
        return
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("NBDIST_DISTRIBUTOR_ID") in wanted:
                proc.kill()
        except psutil.Error:
            pass
