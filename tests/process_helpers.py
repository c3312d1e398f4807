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


def surviving_processes(timeout: float = 3.0) -> list[str]:
    """Descriptions of this process's descendants still alive after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        alive = _descendants()
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
