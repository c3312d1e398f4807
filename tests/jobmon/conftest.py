"""Jobmon tests: the ``jobmon`` marker and the cached Jobmon venv (skipped where ../shared/jobmon is absent)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import jobmon_env  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line("markers", "jobmon: runs Jobmon itself (../shared/jobmon) against nbdist's plugin")


@pytest.fixture(scope="session")
def jobmon_root() -> Path:
    """The cached venv with Jobmon's snapshot and this nbdist (built on first use, ~2 min)."""
    archive = jobmon_env.tarball()
    if archive is None:
        pytest.skip(f"Jobmon's snapshot is not there ({jobmon_env.SHARED_JOBMON}/jobmon-*.tar.gz)")
    return jobmon_env.jobmon_venv(archive)
