"""The Slurm tutorial notebook runs under strict nbval against a real Slurm (``scripts/slurm-local.sh start``).

Like ``tests/test_notebooks.py``: a fresh kernel, a temporary copy of the notebook (its ``.nbdist/``
registry starts empty, as when the saved outputs were made), a child ``pytest --nbval`` that does not see
this suite's conftest. Without a reachable Slurm it skips with the reason (a failure under
``NBDIST_REQUIRE_ALL=1``). Afterwards no Slurm job of the notebook may be left in ``squeue``: the
notebook's jobs are recognised by their working directory, the temporary copy, so jobs of other runs on
the same cluster are neither counted nor cancelled.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
from nbval_helpers import CELL_TIMEOUT_S, ROOT, run_nbval
from slurm_helpers import use_local_slurm

pytestmark = pytest.mark.slurm

NOTEBOOK = ROOT / "notebooks" / "slurm-quickstart.ipynb"


slurm_cluster = pytest.fixture(scope="module", autouse=True)(use_local_slurm)


def jobs_under(folder: Path) -> list[str]:
    """Live Slurm jobs (pending, running, completing) whose working directory is ``folder`` or below it."""
    result = subprocess.run(["squeue", "-h", "-r", "-o", "%i %T %Z"], check=False, capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 0, f"squeue failed: {result.stderr.strip()}"
    prefix = str(folder.resolve())
    found = []
    for line in result.stdout.splitlines():
        parts = line.split(maxsplit=2)
        if len(parts) == 3 and (parts[2] == prefix or parts[2].startswith(prefix + os.sep)):
            found.append(line)
    return found


def test_slurm_quickstart_under_nbval(tmp_path: Path) -> None:
    pytest.importorskip("nbval")
    workdir = tmp_path / "nb"
    workdir.mkdir()
    try:
        result = run_nbval(NOTEBOOK, workdir, tmp_path, timeout=CELL_TIMEOUT_S * 5)
    finally:
        # Slurm jobs outlive the kernel: wait for the notebook's own jobs to leave squeue, and cancel
        # what is still there after 30 s (a failed cell must not leave work on the cluster).
        deadline = time.monotonic() + 30
        left = jobs_under(workdir)
        while left and time.monotonic() < deadline:
            time.sleep(0.5)
            left = jobs_under(workdir)
        if left:
            subprocess.run(["scancel", *sorted({line.split()[0].split("_")[0] for line in left})],
                           check=False, capture_output=True, timeout=30)
    assert result.returncode == 0, (f"nbval failed for {NOTEBOOK.name}:\n{result.stdout[-6000:]}\n"
                                    f"{result.stderr[-2000:]}")
    assert not left, f"Slurm jobs of the notebook left in squeue: {left}"
