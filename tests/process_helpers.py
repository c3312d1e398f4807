"""Processes a test started: which survive it, and whether a pid still runs (shared by every test folder).

Kept out of ``conftest.py`` so test modules can import it by a name no other folder's conftest shadows.
"""

from __future__ import annotations

import time

import psutil

__all__ = ["ALLOWED_SURVIVORS", "pid_alive", "surviving_processes"]

# Pids of long-lived helpers started by session-scoped fixtures (e.g. JupyterLab), with their trees.
ALLOWED_SURVIVORS: set[int] = set()


def _descendants() -> list[psutil.Process]:
    found = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
            parents = {p.pid for p in proc.parents()}
        except psutil.NoSuchProcess:
            continue
        if proc.pid in ALLOWED_SURVIVORS or parents & ALLOWED_SURVIVORS:
            continue
        found.append(proc)
    return found


def _orphaned_tasks() -> list[psutil.Process]:
    """nbdist tasks this test run started that are no longer anyone's descendant here: a task whose
    owner and consumer died is adopted by init, out of :func:`_descendants`' sight (the after-a-restart
    tutorial's ``sleep 600`` once ran on that way). Slurm's tasks (under slurmstepd) are Slurm's to end."""
    mine = {proc.pid for proc in psutil.Process().children(recursive=True)}
    started = psutil.Process().create_time()
    found = []
    for proc in psutil.process_iter(["pid", "create_time"]):
        try:
            if proc.pid in mine or proc.info["create_time"] < started or proc.status() == psutil.STATUS_ZOMBIE:
                continue
            env = proc.environ()
            if "NBDIST_DISTRIBUTOR_ID" not in env or "PYTEST_VERSION" not in env:
                continue
            ancestors = proc.parents()
            if any(parent.name() == "slurmstepd" for parent in ancestors):
                continue
            if {parent.pid for parent in ancestors} & ALLOWED_SURVIVORS:
                continue
        except psutil.Error:
            continue
        found.append(proc)
    return found


def surviving_processes(timeout: float = 3.0) -> list[str]:
    """Descriptions of this process's descendants, and of the tasks it started that lost their owner,
    still alive after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        alive = _descendants() + _orphaned_tasks()
        if not alive or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    described = []
    for proc in alive:
        try:
            described.append(f"{proc.pid} {' '.join(proc.cmdline())[:120]}")
        except psutil.Error:
            pass
    return described


def pid_alive(pid: int) -> bool:
    """True if ``pid`` runs and is not a zombie."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
