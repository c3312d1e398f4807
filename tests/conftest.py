"""Shared test fixtures: no process may survive a test, and under CI no test may skip."""

from __future__ import annotations

import os

import psutil
import pytest
from process_helpers import surviving_processes

REQUIRE_ALL = os.environ.get("NBDIST_REQUIRE_ALL") == "1"


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
    # A test that needs a GPU skips on CI's machines, which have none: that skip is expected.
    if REQUIRE_ALL and report.skipped and not hasattr(report, "wasxfail") \
            and item.get_closest_marker("gpu") is None:
        report.outcome = "failed"
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.longrepr = f"skipped under NBDIST_REQUIRE_ALL=1 (a required component is missing): {reason}"
