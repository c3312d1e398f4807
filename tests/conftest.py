"""Shared test fixtures: no process may survive a test, and under CI no test may skip."""

from __future__ import annotations

import os
import time

import psutil
import pytest

REQUIRE_ALL = os.environ.get("NBDIST_REQUIRE_ALL") == "1"

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


@pytest.fixture(autouse=True)
def no_process_left_behind():
    """Every test: no process it started may outlive it."""
    yield
    survivors = surviving_processes()
    for line in survivors:
        try:
            psutil.Process(int(line.split()[0])).kill()
        except psutil.Error:
            pass
    assert not survivors, f"processes left behind: {survivors}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if REQUIRE_ALL and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.longrepr = f"skipped under NBDIST_REQUIRE_ALL=1 (a required component is missing): {reason}"
